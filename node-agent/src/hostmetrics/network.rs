//! /proc/net/dev with the metric names node_exporter gives the same numbers
//! (`node_network_receive_bytes_total{device}`, ...). node_exporter reads
//! them over netlink; the kernel prints /proc/net/dev from the same
//! counters, summed the way node_exporter's legacy names sum them (e.g.
//! `drop` is dropped + missed, `frame` adds length, over and CRC errors).

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_host_view, read_parsed};

/// The 16 columns after `<device>:`, as node_exporter names them.
const COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mut families = read_host_view(metrics, "net/dev", |text| {
        parse(text, &|device| {
            metrics.network_devices_exclude.matches(device)
        })
    })?;
    // /proc/net/dev has no column for packets dropped for want of a protocol
    // handler; netlink, which node_exporter reads, and sysfs have.
    let mut nohandler = Family::new(
        Kind::Counter,
        "node_network_receive_nohandler_total",
        "Network device statistic receive_nohandler.",
    );
    for sample in &families[0].samples {
        let device = &sample.labels[0].1;
        let path = metrics
            .sys_path
            .join("class/net")
            .join(device)
            .join("statistics/rx_nohandler");
        match read_parsed(&path, |text| number::<u64>(text.trim(), "rx_nohandler")) {
            Ok(packets) => nohandler.push(sample.labels.clone(), packets as f64),
            // Gone since, or sysfs shows another network namespace.
            Err(Error::Read { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    families.push(nohandler);
    Ok(families)
}

fn parse(text: &str, excluded: &dyn Fn(&str) -> bool) -> Result<Vec<Family>, Malformed> {
    let mut families: Vec<Family> = COLUMNS
        .iter()
        .map(|key| {
            Family::new(
                Kind::Counter,
                format!("node_network_{key}_total"),
                format!("Network device statistic {key}."),
            )
        })
        .collect();
    // Two header lines, then `<device>: <16 numbers>`; a large first number
    // may touch the colon.
    for line in text.lines().skip(2) {
        let Some((device, stats)) = line.split_once(':') else {
            return Err(Malformed(format!("no device name in {line:?}")));
        };
        let device = device.trim();
        let stats: Vec<&str> = stats.split_whitespace().collect();
        if stats.len() != COLUMNS.len() {
            return Err(Malformed(format!(
                "{device}: {} columns, want 16",
                stats.len()
            )));
        }
        if excluded(device) {
            continue;
        }
        for (family, stat) in families.iter_mut().zip(stats) {
            let value: u64 = number(stat, device)?;
            family.push(vec![("device", device.to_owned())], value as f64);
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_every_device_of_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(families.len(), 17);
        let nohandler = &families[16];
        assert_eq!(nohandler.name, "node_network_receive_nohandler_total");
        // Only eth0 and lo have statistics in the sysfs fixture.
        assert_eq!(nohandler.samples.len(), 2);
        let devices: Vec<&str> = families[0]
            .samples
            .iter()
            .map(|s| s.labels[0].1.as_str())
            .collect();
        assert_eq!(devices, ["lo", "ifb0", "ifb1", "eth0"]);
        assert_eq!(
            value(
                &families,
                "node_network_receive_bytes_total",
                &[("device", "eth0")]
            ),
            370320277.0
        );
        assert_eq!(
            value(
                &families,
                "node_network_transmit_packets_total",
                &[("device", "eth0")]
            ),
            13737.0
        );
        assert_eq!(
            value(
                &families,
                "node_network_receive_drop_total",
                &[("device", "lo")]
            ),
            0.0
        );
    }

    #[test]
    fn numbers_touching_the_colon_and_exclusions() {
        let text = "h1\nh2\neth0:123 1 0 0 0 0 0 0 456 2 0 0 0 0 0 0\nveth9: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        let families = parse(text, &|d| d.starts_with("veth")).unwrap();
        assert_eq!(
            value(
                &families,
                "node_network_receive_bytes_total",
                &[("device", "eth0")]
            ),
            123.0
        );
        assert_eq!(families[0].samples.len(), 1);
        assert!(
            parse("h1\nh2\neth0: 1 2\n", &|_| false)
                .unwrap_err()
                .0
                .contains("eth0")
        );
    }
}
