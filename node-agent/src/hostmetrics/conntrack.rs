//! Connection tracking: table size (/proc/sys/net/netfilter) and the per-CPU
//! statistics of /proc/net/stat/nf_conntrack summed, as node_exporter's
//! `conntrack` collector exports them. Absent without the nf_conntrack module.

use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_host_view, read_parsed};

/// (column of /proc/net/stat/nf_conntrack, metric, help).
const STATS: [(&str, &str, &str); 8] = [
    (
        "found",
        "node_nf_conntrack_stat_found",
        "Number of searched entries which were successful.",
    ),
    (
        "invalid",
        "node_nf_conntrack_stat_invalid",
        "Number of packets seen which can not be tracked.",
    ),
    (
        "ignore",
        "node_nf_conntrack_stat_ignore",
        "Number of packets seen which are already connected to a conntrack entry.",
    ),
    (
        "insert",
        "node_nf_conntrack_stat_insert",
        "Number of entries inserted into the list.",
    ),
    (
        "insert_failed",
        "node_nf_conntrack_stat_insert_failed",
        "Number of entries for which list insertion was attempted but failed.",
    ),
    (
        "drop",
        "node_nf_conntrack_stat_drop",
        "Number of packets dropped due to conntrack failure.",
    ),
    (
        "early_drop",
        "node_nf_conntrack_stat_early_drop",
        "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached.",
    ),
    (
        "search_restart",
        "node_nf_conntrack_stat_search_restart",
        "Number of conntrack table lookups which had to be restarted due to hashtable resizes.",
    ),
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let uint = |text: &str| number::<u64>(text.trim(), "value").map(|v| v as f64);
    let count = read_parsed(&metrics.proc("sys/net/netfilter/nf_conntrack_count"), uint);
    let count = match count {
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new());
        }
        other => other?,
    };
    let limit = read_parsed(&metrics.proc("sys/net/netfilter/nf_conntrack_max"), uint)?;
    let stats = read_host_view(metrics, "net/stat/nf_conntrack", parse)?;
    let mut families = vec![
        Family::single(
            Kind::Gauge,
            "node_nf_conntrack_entries",
            "Number of currently allocated flow entries for connection tracking.",
            count,
        ),
        Family::single(
            Kind::Gauge,
            "node_nf_conntrack_entries_limit",
            "Maximum size of connection tracking table.",
            limit,
        ),
    ];
    // node_exporter calls these cumulative counts gauges.
    families.extend(
        STATS.iter().zip(stats).map(|((_, name, help), total)| {
            Family::single(Kind::Gauge, *name, *help, total as f64)
        }),
    );
    Ok(families)
}

/// A header naming the columns, then one row of hex numbers per CPU; the
/// [`STATS`] columns summed over CPUs (0 where a kernel lacks a column).
fn parse(text: &str) -> Result<Vec<u64>, Malformed> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| Malformed("empty".to_owned()))?
        .split_whitespace()
        .collect();
    let columns: Vec<Option<usize>> = STATS
        .iter()
        .map(|(column, ..)| header.iter().position(|h| h == column))
        .collect();
    let mut totals = vec![0u64; STATS.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let row: Vec<&str> = line.split_whitespace().collect();
        if row.len() != header.len() {
            return Err(Malformed(format!(
                "{} columns under a header of {}",
                row.len(),
                header.len()
            )));
        }
        for (total, column) in totals.iter_mut().zip(&columns) {
            if let Some(i) = column {
                *total += u64::from_str_radix(row[*i], 16)
                    .map_err(|_| Malformed(format!("{:?} is not a hex number", row[*i])))?;
            }
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_table_size_and_summed_statistics_from_real_files() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(
            value(&families, "node_nf_conntrack_entries_limit", &[]),
            262144.0
        );
        assert_eq!(value(&families, "node_nf_conntrack_stat_drop", &[]), 0.0);
        assert_eq!(families.len(), 10);
        let two_cpus =
            "entries found insert\n00000001 0000000a 00000002\n00000001 00000005 00000001\n";
        assert_eq!(parse(two_cpus).unwrap(), [15, 0, 0, 3, 0, 0, 0, 0]);
        assert!(parse("found\n1 2\n").unwrap_err().0.contains("columns"));
        assert!(parse("found\nzz\n").unwrap_err().0.contains("zz"));
    }
}
