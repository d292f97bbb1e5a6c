//! /proc/pressure/{cpu,io,memory,irq}: total stall time (PSI), as
//! node_exporter's `pressure` collector exports it. Kernels before 4.20, or
//! booted with psi=0, have no such files: then there is nothing to export.

use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

/// (resource, line, metric, help). The `full` line of cpu (5.13+) is not
/// exported by node_exporter; irq (6.1+) has only `full`.
const SERIES: [(&str, &str, &str, &str); 6] = [
    (
        "cpu",
        "some",
        "node_pressure_cpu_waiting_seconds_total",
        "Total time in seconds that processes have waited for CPU time",
    ),
    (
        "io",
        "some",
        "node_pressure_io_waiting_seconds_total",
        "Total time in seconds that processes have waited due to IO congestion",
    ),
    (
        "io",
        "full",
        "node_pressure_io_stalled_seconds_total",
        "Total time in seconds no process could make progress due to IO congestion",
    ),
    (
        "memory",
        "some",
        "node_pressure_memory_waiting_seconds_total",
        "Total time in seconds that processes have waited for memory",
    ),
    (
        "memory",
        "full",
        "node_pressure_memory_stalled_seconds_total",
        "Total time in seconds no process could make progress due to memory congestion",
    ),
    (
        "irq",
        "full",
        "node_pressure_irq_stalled_seconds_total",
        "Total time in seconds no process could make progress due to IRQ congestion",
    ),
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mut families = Vec::new();
    for resource in ["cpu", "io", "memory", "irq"] {
        let totals = match read_parsed(&metrics.proc(&format!("pressure/{resource}")), parse) {
            Ok(totals) => totals,
            Err(Error::Read { source, .. }) if absent(&source) => continue,
            Err(err) => return Err(err),
        };
        for (_, line, name, help) in SERIES.iter().filter(|s| s.0 == resource) {
            let micros = totals
                .iter()
                .find(|(kind, _)| kind == line)
                .map(|(_, total)| *total)
                .ok_or_else(|| Error::Malformed {
                    path: metrics.proc(&format!("pressure/{resource}")),
                    reason: format!("no {line:?} line"),
                })?;
            families.push(Family::single(
                Kind::Counter,
                *name,
                *help,
                micros as f64 / 1e6,
            ));
        }
    }
    Ok(families)
}

/// No PSI in this kernel (ENOENT) or switched off at boot (EOPNOTSUPP).
fn absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` lines: (kind, total µs).
fn parse(text: &str) -> Result<Vec<(String, u64)>, Malformed> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            let kind = fields.next().unwrap_or_default().to_owned();
            let total = fields
                .find_map(|f| f.strip_prefix("total="))
                .ok_or_else(|| Malformed(format!("no total= in {line:?}")))?;
            Ok((kind, number(total, "total")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_stall_totals_from_real_files_and_skips_missing_irq() {
        let families = read(&fixture_metrics()).unwrap();
        // The fixture has no irq file, like a kernel built without it.
        assert_eq!(families.len(), 5);
        assert_eq!(
            value(&families, "node_pressure_cpu_waiting_seconds_total", &[]),
            391.659937
        );
        assert_eq!(
            value(&families, "node_pressure_io_stalled_seconds_total", &[]),
            2.808814
        );
        assert_eq!(
            value(&families, "node_pressure_memory_waiting_seconds_total", &[]),
            0.0
        );
    }

    #[test]
    fn lines_without_a_total_are_errors() {
        assert!(parse("some avg10=1.00\n").unwrap_err().0.contains("total="));
        assert!(parse("some total=x\n").unwrap_err().0.contains("\"x\""));
    }
}
