//! /proc/meminfo as node_exporter's `meminfo` collector exposes it:
//! `node_memory_<Field>_bytes` for fields in kB, the bare field name for the
//! HugePages_* page counts.

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

/// The fields node_exporter exports (procfs knows them); newer kernel fields
/// such as FileHugePages or Hugetlb are not in it, and neither are we, so a
/// dashboard sees the same set from both.
const FIELDS: [&str; 51] = [
    "Active",
    "Active(anon)",
    "Active(file)",
    "AnonHugePages",
    "AnonPages",
    "Bounce",
    "Buffers",
    "Cached",
    "CmaFree",
    "CmaTotal",
    "CommitLimit",
    "Committed_AS",
    "DirectMap1G",
    "DirectMap2M",
    "DirectMap4k",
    "Dirty",
    "HardwareCorrupted",
    "HugePages_Free",
    "HugePages_Rsvd",
    "HugePages_Surp",
    "HugePages_Total",
    "Hugepagesize",
    "Inactive",
    "Inactive(anon)",
    "Inactive(file)",
    "KernelStack",
    "Mapped",
    "MemAvailable",
    "MemFree",
    "MemTotal",
    "Mlocked",
    "NFS_Unstable",
    "PageTables",
    "Percpu",
    "SReclaimable",
    "SUnreclaim",
    "Shmem",
    "ShmemHugePages",
    "ShmemPmdMapped",
    "Slab",
    "SwapCached",
    "SwapFree",
    "SwapTotal",
    "Unevictable",
    "VmallocChunk",
    "VmallocTotal",
    "VmallocUsed",
    "Writeback",
    "WritebackTmp",
    "Zswap",
    "Zswapped",
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("meminfo"), parse)
}

fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
    let mut families = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let key = key.trim_end_matches(':');
        if !FIELDS.contains(&key) {
            continue;
        }
        let value: u64 = number(value, key)?;
        let (suffix, value) = match fields.next() {
            None => ("", value as f64),
            Some("kB") => ("_bytes", value as f64 * 1024.0),
            Some(unit) => return Err(Malformed(format!("{key}: unknown unit {unit:?}"))),
        };
        let field = format!(
            "{}{suffix}",
            key.replace("(anon)", "_anon").replace("(file)", "_file")
        );
        families.push(Family::single(
            Kind::Gauge,
            format!("node_memory_{field}"),
            format!("Memory information field {field}."),
            value,
        ));
    }
    if families.is_empty() {
        return Err(Malformed("no known field".to_owned()));
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_node_exporter_fields_from_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        // Of the 54 fields of this kernel, node_exporter knows 48.
        assert_eq!(families.len(), 48);
        assert_eq!(
            value(&families, "node_memory_MemTotal_bytes", &[]),
            24684084.0 * 1024.0
        );
        assert_eq!(
            value(&families, "node_memory_MemAvailable_bytes", &[]),
            22895616.0 * 1024.0
        );
        assert_eq!(
            value(&families, "node_memory_Inactive_file_bytes", &[]),
            3014536.0 * 1024.0
        );
        assert_eq!(
            value(&families, "node_memory_Committed_AS_bytes", &[]),
            984732.0 * 1024.0
        );
        assert_eq!(value(&families, "node_memory_HugePages_Total", &[]), 0.0);
        // Not exported by node_exporter either.
        assert!(
            families
                .iter()
                .all(|f| !f.name.contains("FileHugePages") && !f.name.contains("KReclaimable"))
        );
    }

    #[test]
    fn unknown_units_and_numbers_are_errors() {
        assert!(parse("MemTotal: 1 MB\n").unwrap_err().0.contains("MB"));
        assert!(
            parse("MemTotal: lots kB\n")
                .unwrap_err()
                .0
                .contains("MemTotal")
        );
        assert!(parse("").is_err());
    }
}
