//! /proc/net/arp: neighbour entries per device (node_exporter's `arp`
//! collector; the kernel leaves NOARP entries out of the file as node_exporter
//! leaves them out of its netlink count).

use std::collections::BTreeMap;

use super::{Error, Family, HostMetrics, Kind, Malformed, read_host_view};

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let entries = read_host_view(metrics, "net/arp", parse)?;
    let mut family = Family::new(Kind::Gauge, "node_arp_entries", "ARP entries by device");
    for (device, count) in entries {
        if !metrics.network_devices_exclude.matches(&device) {
            family.push(vec![("device", device)], count as f64);
        }
    }
    Ok(vec![family])
}

/// `IP address  HW type  Flags  HW address  Mask  Device` rows: entries per device.
fn parse(text: &str) -> Result<BTreeMap<String, u64>, Malformed> {
    let mut entries = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let device = line
            .split_whitespace()
            .nth(5)
            .ok_or_else(|| Malformed(format!("no device in {line:?}")))?;
        *entries.entry(device.to_owned()).or_default() += 1;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn counts_entries_per_device_of_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(
            value(&families, "node_arp_entries", &[("device", "eth0")]),
            1.0
        );
        let two =
            parse("header\n10.0.0.1 0x1 0x2 aa * eth1\n10.0.0.2 0x1 0x2 bb * eth1\n").unwrap();
        assert_eq!(two["eth1"], 2);
        assert!(
            parse("header\n10.0.0.1 0x1\n")
                .unwrap_err()
                .0
                .contains("10.0.0.1")
        );
    }
}
