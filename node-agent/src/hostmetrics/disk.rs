//! /proc/diskstats as node_exporter's `diskstats` collector exports it
//! (without the udev-based info series).

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

/// node_exporter's `--collector.diskstats.device-exclude` default: partitions,
/// loop, ram and floppy devices.
pub(super) const DEFAULT_DEVICES_EXCLUDE: &str =
    r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$";

/// Sectors in /proc/diskstats are 512 bytes whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;
const MS: f64 = 1e-3;

/// The statistic columns after `major minor name`, in order: (metric, type,
/// help, scale). Kernels add columns over time (4.18 discards, 5.5 flushes);
/// a short line exports the columns it has.
const COLUMNS: [(&str, Kind, &str, f64); 17] = [
    (
        "node_disk_reads_completed_total",
        Kind::Counter,
        "The total number of reads completed successfully.",
        1.0,
    ),
    (
        "node_disk_reads_merged_total",
        Kind::Counter,
        "The total number of reads merged.",
        1.0,
    ),
    (
        "node_disk_read_bytes_total",
        Kind::Counter,
        "The total number of bytes read successfully.",
        SECTOR_BYTES,
    ),
    (
        "node_disk_read_time_seconds_total",
        Kind::Counter,
        "The total number of seconds spent by all reads.",
        MS,
    ),
    (
        "node_disk_writes_completed_total",
        Kind::Counter,
        "The total number of writes completed successfully.",
        1.0,
    ),
    (
        "node_disk_writes_merged_total",
        Kind::Counter,
        "The number of writes merged.",
        1.0,
    ),
    (
        "node_disk_written_bytes_total",
        Kind::Counter,
        "The total number of bytes written successfully.",
        SECTOR_BYTES,
    ),
    (
        "node_disk_write_time_seconds_total",
        Kind::Counter,
        "This is the total number of seconds spent by all writes.",
        MS,
    ),
    (
        "node_disk_io_now",
        Kind::Gauge,
        "The number of I/Os currently in progress.",
        1.0,
    ),
    (
        "node_disk_io_time_seconds_total",
        Kind::Counter,
        "Total seconds spent doing I/Os.",
        MS,
    ),
    (
        "node_disk_io_time_weighted_seconds_total",
        Kind::Counter,
        "The weighted # of seconds spent doing I/Os.",
        MS,
    ),
    (
        "node_disk_discards_completed_total",
        Kind::Counter,
        "The total number of discards completed successfully.",
        1.0,
    ),
    (
        "node_disk_discards_merged_total",
        Kind::Counter,
        "The total number of discards merged.",
        1.0,
    ),
    // Sectors, not bytes: node_exporter's name says so.
    (
        "node_disk_discarded_sectors_total",
        Kind::Counter,
        "The total number of sectors discarded successfully.",
        1.0,
    ),
    (
        "node_disk_discard_time_seconds_total",
        Kind::Counter,
        "This is the total number of seconds spent by all discards.",
        MS,
    ),
    (
        "node_disk_flush_requests_total",
        Kind::Counter,
        "The total number of flush requests completed successfully",
        1.0,
    ),
    (
        "node_disk_flush_requests_time_seconds_total",
        Kind::Counter,
        "This is the total number of seconds spent by all flush requests.",
        MS,
    ),
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("diskstats"), |text| {
        parse(text, &|device| metrics.disk_devices_exclude.matches(device))
    })
}

fn parse(text: &str, excluded: &dyn Fn(&str) -> bool) -> Result<Vec<Family>, Malformed> {
    let mut families: Vec<Family> = COLUMNS
        .iter()
        .map(|(name, kind, help, _)| Family::new(*kind, *name, *help))
        .collect();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_major, _minor, device, stats @ ..] = &fields[..] else {
            continue;
        };
        if stats.len() < 4 {
            return Err(Malformed(format!(
                "{device}: {} statistics, want at least 4",
                stats.len()
            )));
        }
        if excluded(device) {
            continue;
        }
        for (family, (stat, (.., scale))) in families.iter_mut().zip(stats.iter().zip(COLUMNS)) {
            let value: u64 = number(stat, device)?;
            family.push(vec![("device", (*device).to_owned())], value as f64 * scale);
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_every_column_of_a_real_file_and_skips_default_exclusions() {
        let families = read(&fixture_metrics()).unwrap();
        for family in &families {
            let devices: Vec<&str> = family
                .samples
                .iter()
                .map(|s| s.labels[0].1.as_str())
                .collect();
            // loop0..7 and zram0 are excluded by node_exporter's default.
            assert_eq!(devices, ["vda"], "{}", family.name);
        }
        let vda = [("device", "vda")];
        assert_eq!(
            value(&families, "node_disk_reads_completed_total", &vda),
            99802.0
        );
        assert_eq!(
            value(&families, "node_disk_read_bytes_total", &vda),
            5099250.0 * 512.0
        );
        assert_eq!(
            value(&families, "node_disk_write_time_seconds_total", &vda),
            94234.0 * MS
        );
        assert_eq!(value(&families, "node_disk_io_now", &vda), 0.0);
        assert_eq!(
            value(&families, "node_disk_io_time_seconds_total", &vda),
            17100.0 * MS
        );
        assert_eq!(
            value(&families, "node_disk_discarded_sectors_total", &vda),
            715000.0
        );
        assert_eq!(
            value(
                &families,
                "node_disk_flush_requests_time_seconds_total",
                &vda
            ),
            68.0 * MS
        );
    }

    #[test]
    fn old_kernels_export_the_columns_they_have() {
        let families = parse("8 1 sda1 1 2 3 4\n", &|_| false).unwrap();
        let filled: Vec<&str> = families
            .iter()
            .filter(|f| !f.samples.is_empty())
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(filled, COLUMNS[..4].iter().map(|c| c.0).collect::<Vec<_>>());
        assert!(
            parse("8 1 sda1 1 2\n", &|_| false)
                .unwrap_err()
                .0
                .contains("sda1")
        );
    }
}
