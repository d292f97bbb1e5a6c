//! /proc/net/softnet_stat: per-CPU packet processing, as node_exporter's
//! `softnet` collector exports it.

use super::{Error, Family, HostMetrics, Kind, Malformed, read_host_view};

/// (column, metric, type, help). Kernels before 2.6.39, 4.18 and 5.14 lack
/// the later columns, which then read as 0, as in node_exporter.
const COLUMNS: [(usize, &str, Kind, &str); 7] = [
    (
        0,
        "node_softnet_processed_total",
        Kind::Counter,
        "Number of processed packets",
    ),
    (
        1,
        "node_softnet_dropped_total",
        Kind::Counter,
        "Number of dropped packets",
    ),
    (
        2,
        "node_softnet_times_squeezed_total",
        Kind::Counter,
        "Number of times processing packets ran out of quota",
    ),
    (
        8,
        "node_softnet_cpu_collision_total",
        Kind::Counter,
        "Number of collision occur while obtaining device lock while transmitting",
    ),
    (
        9,
        "node_softnet_received_rps_total",
        Kind::Counter,
        "Number of times cpu woken up received_rps",
    ),
    (
        10,
        "node_softnet_flow_limit_count_total",
        Kind::Counter,
        "Number of times flow limit has been reached",
    ),
    (
        11,
        "node_softnet_backlog_len",
        Kind::Gauge,
        "Softnet backlog status",
    ),
];
/// The CPU number column (5.14+); before, rows are numbered in order.
const CPU_COLUMN: usize = 12;

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_host_view(metrics, "net/softnet_stat", parse)
}

fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
    let mut families: Vec<Family> = COLUMNS
        .iter()
        .map(|(_, name, kind, help)| Family::new(*kind, *name, *help))
        .collect();
    for (row, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let columns = line
            .split_whitespace()
            .map(|c| {
                u32::from_str_radix(c, 16)
                    .map_err(|_| Malformed(format!("{c:?} is not a hex number")))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if columns.len() < 9 {
            return Err(Malformed(format!(
                "{} columns, want at least 9",
                columns.len()
            )));
        }
        let cpu = columns
            .get(CPU_COLUMN)
            .map_or(row as u32, |c| *c)
            .to_string();
        for (family, (column, ..)) in families.iter_mut().zip(COLUMNS) {
            let value = columns.get(column).copied().unwrap_or_default();
            family.push(vec![("cpu", cpu.clone())], value as f64);
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_every_cpu_of_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(families[0].samples.len(), 2);
        assert!(value(&families, "node_softnet_processed_total", &[("cpu", "1")]) > 0.0);
        assert_eq!(
            value(
                &families,
                "node_softnet_times_squeezed_total",
                &[("cpu", "1")]
            ),
            2.0
        );
        let old = parse("a 1 0 0 0 0 0 0 0\n").unwrap();
        assert_eq!(
            value(&old, "node_softnet_processed_total", &[("cpu", "0")]),
            10.0
        );
        assert_eq!(
            value(&old, "node_softnet_backlog_len", &[("cpu", "0")]),
            0.0
        );
        assert!(parse("1 2\n").unwrap_err().0.contains("at least 9"));
    }
}
