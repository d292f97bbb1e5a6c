//! /proc/stat: per-CPU time (node_exporter's `cpu` collector) and the
//! kernel-wide counters (its `stat` collector).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

pub(super) const BOOT_TIME: &str = "node_boot_time_seconds";

/// Clock ticks per second of /proc/stat. Linux fixes USER_HZ at 100 for
/// user space on every architecture, and node_exporter (procfs) assumes it.
const USER_HZ: f64 = 100.0;

/// The columns of a `cpuN` line in order, as node_exporter names the modes.
const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];
/// Guest time follows the modes; it is also counted in user and nice.
const GUEST_MODES: [&str; 2] = ["user", "nice"];
const IDLE: usize = 3;
/// Idle time stepping back this far means the CPU was unplugged and
/// plugged again (node_exporter's jumpBackSeconds).
const JUMP_BACK_SECONDS: f64 = 3.0;

/// The columns of one `cpuN` line, modes then guest modes, in seconds.
type CpuTimes = [f64; MODES.len() + GUEST_MODES.len()];

#[derive(Debug)]
struct Stat {
    cpus: BTreeMap<u32, CpuTimes>,
    kernel: Vec<Family>,
}

/// The last CPU times exported. The kernel's idle and iowait times can step
/// back a little (nohz idle accounting); a counter must not, or rate() sees
/// a reset. As node_exporter does, a column that steps back keeps its last
/// value, and a CPU whose idle time jumps far back starts over.
#[derive(Debug, Default)]
pub(super) struct CpuHistory(Mutex<BTreeMap<u32, CpuTimes>>);

impl CpuHistory {
    fn monotonic(&self, read: BTreeMap<u32, CpuTimes>) -> BTreeMap<u32, CpuTimes> {
        // The map stays consistent whatever panicked while holding it.
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // CPUs gone offline are forgotten.
        last.retain(|cpu, _| read.contains_key(cpu));
        for (cpu, times) in read {
            let kept = last.entry(cpu).or_insert([0.0; 10]);
            if kept[IDLE] - times[IDLE] >= JUMP_BACK_SECONDS {
                *kept = [0.0; 10];
            }
            for (kept, now) in kept.iter_mut().zip(times) {
                *kept = kept.max(now);
            }
        }
        last.clone()
    }
}

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let stat = read_parsed(&metrics.proc("stat"), parse)?;
    let cpus = metrics.cpu_history.monotonic(stat.cpus);
    let mut cpu = Family::new(
        Kind::Counter,
        "node_cpu_seconds_total",
        "Seconds the CPUs spent in each mode.",
    );
    let mut guest = Family::new(
        Kind::Counter,
        "node_cpu_guest_seconds_total",
        "Seconds the CPUs spent in guests (VMs) for each mode.",
    );
    for (id, times) in cpus {
        let labels = |mode: &str| vec![("cpu", id.to_string()), ("mode", mode.to_owned())];
        for (mode, seconds) in MODES.iter().zip(times) {
            cpu.push(labels(mode), seconds);
        }
        for (mode, seconds) in GUEST_MODES.iter().zip(&times[MODES.len()..]) {
            guest.push(labels(mode), *seconds);
        }
    }
    let mut families = vec![cpu, guest];
    families.extend(stat.kernel);
    Ok(families)
}

fn parse(text: &str) -> Result<Stat, Malformed> {
    let mut cpus = BTreeMap::new();
    let mut kernel = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let fields: Vec<&str> = fields.collect();
        if let Some(id) = key.strip_prefix("cpu").filter(|id| !id.is_empty()) {
            let id: u32 = number(id, "cpu number")?;
            if fields.len() < 4 {
                return Err(Malformed(format!(
                    "{key} has {} columns, want at least 4",
                    fields.len()
                )));
            }
            // Kernels before 2.6.33 lack the later columns: they read as 0.
            let mut times: CpuTimes = [0.0; 10];
            for (seconds, field) in times.iter_mut().zip(&fields) {
                *seconds = number::<u64>(field, key)? as f64 / USER_HZ;
            }
            cpus.insert(id, times);
            continue;
        }
        let (kind, name, help) = match key {
            "intr" => (
                Kind::Counter,
                "node_intr_total",
                "Total number of interrupts serviced.",
            ),
            "ctxt" => (
                Kind::Counter,
                "node_context_switches_total",
                "Total number of context switches.",
            ),
            "processes" => (Kind::Counter, "node_forks_total", "Total number of forks."),
            "btime" => (Kind::Gauge, BOOT_TIME, "Node boot time, in unixtime."),
            "procs_running" => (
                Kind::Gauge,
                "node_procs_running",
                "Number of processes in runnable state.",
            ),
            "procs_blocked" => (
                Kind::Gauge,
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
            ),
            _ => continue,
        };
        // `intr` is followed by one count per interrupt line: the first is the total.
        let first = fields
            .first()
            .ok_or_else(|| Malformed(format!("{key} has no value")))?;
        kernel.push(Family::single(
            kind,
            name,
            help,
            number::<u64>(first, key)? as f64,
        ));
    }
    if cpus.is_empty() {
        return Err(Malformed("no cpuN lines".to_owned()));
    }
    Ok(Stat { cpus, kernel })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_cpu_modes_and_kernel_counters_from_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        let cpu = &families[0];
        assert_eq!(cpu.name, "node_cpu_seconds_total");
        // 2 CPUs x 8 modes; the aggregate `cpu` line is not exported.
        assert_eq!(cpu.samples.len(), 16);
        assert_eq!(
            value(
                &families,
                "node_cpu_seconds_total",
                &[("cpu", "1"), ("mode", "user")]
            ),
            312.82
        );
        assert_eq!(
            value(
                &families,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "steal")]
            ),
            1.71
        );
        assert_eq!(
            value(
                &families,
                "node_cpu_guest_seconds_total",
                &[("cpu", "0"), ("mode", "nice")]
            ),
            0.0
        );
        assert_eq!(value(&families, "node_intr_total", &[]), 889275.0);
        assert_eq!(
            value(&families, "node_context_switches_total", &[]),
            1472600.0
        );
        assert_eq!(value(&families, "node_forks_total", &[]), 23296.0);
        assert_eq!(value(&families, BOOT_TIME, &[]), 1795438371.0);
        assert_eq!(value(&families, "node_procs_running", &[]), 10.0);
        assert_eq!(value(&families, "node_procs_blocked", &[]), 0.0);
    }

    #[test]
    fn old_kernels_without_steal_and_guest_read_as_zero() {
        let cpu0 = parse("cpu0 100 0 50 1000\n").unwrap().cpus[&0];
        assert_eq!(cpu0, [1.0, 0.0, 0.5, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn cpu_times_never_step_back_unless_the_cpu_was_replugged() {
        let history = CpuHistory::default();
        let times = |idle: f64, iowait: f64| -> CpuTimes {
            let mut t = [1.0; 10];
            (t[IDLE], t[4]) = (idle, iowait);
            t
        };
        let read = |cpus: &[(u32, CpuTimes)]| history.monotonic(cpus.iter().copied().collect());
        read(&[(0, times(100.0, 5.0)), (1, times(100.0, 5.0))]);
        // iowait steps back: the last value stays.
        let now = read(&[(0, times(100.5, 4.9)), (1, times(101.0, 5.0))]);
        assert_eq!(now[&0][4], 5.0);
        assert_eq!(now[&0][IDLE], 100.5);
        // CPU 0 replugged (idle far back), CPU 1 offline.
        let now = read(&[(0, times(2.0, 0.1))]);
        assert_eq!(now.keys().collect::<Vec<_>>(), [&0]);
        assert_eq!(now[&0][IDLE], 2.0);
        assert_eq!(now[&0][4], 0.1);
    }

    #[test]
    fn garbage_is_an_error_naming_the_field() {
        let err = parse("cpu0 1 2 x 4\n").unwrap_err();
        assert!(err.0.contains("\"x\""), "{err:?}");
        assert!(parse("intr\n").unwrap_err().0.contains("intr"));
        assert!(parse("ctxt 5\n").unwrap_err().0.contains("no cpuN"));
    }
}
