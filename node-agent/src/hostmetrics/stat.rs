//! /proc/stat: per-CPU time (node_exporter's `cpu` collector) and the
//! kernel-wide counters (its `stat` collector).

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

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("stat"), parse)
}

fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
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
            let ticks = |i: usize| -> Result<f64, Malformed> {
                fields.get(i).map_or(Ok(0.0), |f| {
                    number::<u64>(f, key).map(|t| t as f64 / USER_HZ)
                })
            };
            for (i, mode) in MODES.iter().enumerate() {
                cpu.push(
                    vec![("cpu", id.to_string()), ("mode", (*mode).to_owned())],
                    ticks(i)?,
                );
            }
            for (i, mode) in GUEST_MODES.iter().enumerate() {
                guest.push(
                    vec![("cpu", id.to_string()), ("mode", (*mode).to_owned())],
                    ticks(MODES.len() + i)?,
                );
            }
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
    if cpu.samples.is_empty() {
        return Err(Malformed("no cpuN lines".to_owned()));
    }
    let mut families = vec![cpu, guest];
    families.extend(kernel);
    Ok(families)
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
        let families = parse("cpu0 100 0 50 1000\n").unwrap();
        assert_eq!(
            value(
                &families,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "steal")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &families,
                "node_cpu_seconds_total",
                &[("cpu", "0"), ("mode", "idle")]
            ),
            10.0
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_field() {
        let err = parse("cpu0 1 2 x 4\n").unwrap_err();
        assert!(err.0.contains("\"x\""), "{err:?}");
        assert!(parse("intr\n").unwrap_err().0.contains("intr"));
        assert!(parse("ctxt 5\n").unwrap_err().0.contains("no cpuN"));
    }
}
