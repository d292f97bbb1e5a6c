//! /proc/sys/kernel: the entropy pool (node_exporter's `entropy` collector)
//! and hung tasks (its `kernel_hung` collector).

use std::io;

use super::{Error, Family, HostMetrics, Kind, number, read_parsed};

/// (file below /proc/sys/kernel, metric, type, help).
const VALUES: [(&str, &str, Kind, &str); 3] = [
    (
        "random/entropy_avail",
        "node_entropy_available_bits",
        Kind::Gauge,
        "Bits of available entropy.",
    ),
    (
        "random/poolsize",
        "node_entropy_pool_size_bits",
        Kind::Gauge,
        "Bits of entropy pool.",
    ),
    (
        "hung_task_detect_count",
        "node_kernel_hung_tasks_total",
        Kind::Counter,
        "Total number of tasks that have been detected as hung since the system booted.",
    ),
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mut families = Vec::new();
    for (file, name, kind, help) in VALUES {
        let parse = |text: &str| number::<u64>(text.trim(), file).map(|v| v as f64);
        match read_parsed(&metrics.proc(&format!("sys/kernel/{file}")), parse) {
            Ok(value) => families.push(Family::single(kind, name, help, value)),
            // Hung-task detection is a kernel build option (6.6+ counts).
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_entropy_and_hung_tasks_from_real_files() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(value(&families, "node_entropy_available_bits", &[]), 256.0);
        assert_eq!(value(&families, "node_entropy_pool_size_bits", &[]), 256.0);
        assert_eq!(value(&families, "node_kernel_hung_tasks_total", &[]), 0.0);
    }
}
