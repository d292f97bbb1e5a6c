//! /sys/class/net/<device>/*: link state and properties, as node_exporter's
//! `netclass` collector exports them (`node_network_up`, `_info`,
//! `_mtu_bytes`, `_speed_bytes`, ...).

use std::io;
use std::path::Path;

use super::{Error, Family, HostMetrics, Kind};

/// (attribute file, metric name after `node_network_`, type). A device
/// without an attribute, or whose driver refuses to say (EINVAL,
/// EOPNOTSUPP: e.g. the speed of a virtual device), has no sample.
const NUMBERS: [(&str, &str, Kind); 17] = [
    ("addr_assign_type", "address_assign_type", Kind::Gauge),
    ("carrier", "carrier", Kind::Gauge),
    ("carrier_changes", "carrier_changes_total", Kind::Counter),
    (
        "carrier_up_count",
        "carrier_up_changes_total",
        Kind::Counter,
    ),
    (
        "carrier_down_count",
        "carrier_down_changes_total",
        Kind::Counter,
    ),
    ("dev_id", "device_id", Kind::Gauge),
    ("dormant", "dormant", Kind::Gauge),
    ("flags", "flags", Kind::Gauge),
    ("ifindex", "iface_id", Kind::Gauge),
    ("iflink", "iface_link", Kind::Gauge),
    ("link_mode", "iface_link_mode", Kind::Gauge),
    ("mtu", "mtu_bytes", Kind::Gauge),
    ("name_assign_type", "name_assign_type", Kind::Gauge),
    ("netdev_group", "net_dev_group", Kind::Gauge),
    ("speed", "speed_bytes", Kind::Gauge),
    ("tx_queue_len", "transmit_queue_length", Kind::Gauge),
    ("type", "protocol_type", Kind::Gauge),
];

/// IFF_UP in `flags`.
const IFF_UP: i64 = 1;

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let dir = metrics.sys_path.join("class/net");
    let read_error = |source| Error::Read {
        path: dir.clone(),
        source,
    };
    let mut devices = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        // Devices are symlinks; `bonding_masters` is a regular file.
        if entry.file_type().map_err(read_error)?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if !metrics.network_devices_exclude.matches(&name) {
            devices.push(name);
        }
    }
    devices.sort();

    let mut up = Family::new(
        Kind::Gauge,
        "node_network_up",
        "Value is 1 if operstate is 'up', 0 otherwise.",
    );
    let mut info = Family::new(
        Kind::Gauge,
        "node_network_info",
        "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
    );
    let mut numbers: Vec<Family> = NUMBERS
        .iter()
        .map(|(_, name, kind)| {
            Family::new(
                *kind,
                format!("node_network_{name}"),
                format!("Network device property: {name}"),
            )
        })
        .collect();
    for device in devices {
        let path = dir.join(&device);
        let text = |attribute| attribute_text(&path, attribute).map(Option::unwrap_or_default);
        let label = || vec![("device", device.clone())];
        let operstate = text("operstate")?;
        let flags = attribute_text(&path, "flags")?.and_then(|f| int(&f));
        up.push(label(), if operstate == "up" { 1.0 } else { 0.0 });
        let adminstate = match flags {
            None => "unknown",
            Some(f) if f & IFF_UP != 0 => "up",
            Some(_) => "down",
        };
        info.push(
            vec![
                ("device", device.clone()),
                ("address", text("address")?),
                ("broadcast", text("broadcast")?),
                ("duplex", text("duplex")?),
                ("operstate", operstate),
                ("adminstate", adminstate.to_owned()),
                ("ifalias", text("ifalias")?),
            ],
            1.0,
        );
        for (family, (attribute, ..)) in numbers.iter_mut().zip(NUMBERS) {
            let Some(value) = attribute_text(&path, attribute)?.and_then(|v| int(&v)) else {
                continue;
            };
            // Mbit/s to bytes/s in integers, as node_exporter computes it
            // (an unknown speed, -1, becomes -125000 there too).
            let value = if attribute == "speed" {
                (value * 1000 * 1000 / 8) as f64
            } else {
                value as f64
            };
            family.push(label(), value);
        }
    }
    let mut families = vec![up, info];
    families.extend(numbers);
    Ok(families)
}

/// An attribute's trimmed text; `None` when the device has no such
/// attribute or its driver does not support it.
fn attribute_text(device: &Path, attribute: &str) -> Result<Option<String>, Error> {
    let path = device.join(attribute);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
            ) || matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Read { path, source }),
    }
}

/// An integer in C notation (`0x1003` for flags, `-1` for an unknown
/// speed), as Go's strconv.ParseInt with base 0 reads it; else `None`.
fn int(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_real_device_attributes() {
        let families = read(&fixture_metrics()).unwrap();
        let eth0 = [("device", "eth0")];
        let lo = [("device", "lo")];
        assert_eq!(value(&families, "node_network_up", &eth0), 1.0);
        // lo's operstate is "unknown".
        assert_eq!(value(&families, "node_network_up", &lo), 0.0);
        assert_eq!(value(&families, "node_network_flags", &eth0), 0x1003 as f64);
        assert_eq!(value(&families, "node_network_mtu_bytes", &eth0), 1400.0);
        assert_eq!(
            value(&families, "node_network_speed_bytes", &eth0),
            -125000.0
        );
        assert_eq!(
            value(&families, "node_network_carrier_changes_total", &eth0),
            2.0
        );
        assert_eq!(
            value(&families, "node_network_transmit_queue_length", &eth0),
            1000.0
        );
        assert_eq!(
            value(
                &families,
                "node_network_info",
                &[
                    ("device", "lo"),
                    ("address", "00:00:00:00:00:00"),
                    ("broadcast", "00:00:00:00:00:00"),
                    ("duplex", ""),
                    ("operstate", "unknown"),
                    ("adminstate", "up"),
                    ("ifalias", ""),
                ]
            ),
            1.0
        );
        // lo has no speed (EINVAL when the fixture was copied); the
        // bonding_masters file is not a device.
        let speed = families
            .iter()
            .find(|f| f.name == "node_network_speed_bytes")
            .unwrap();
        assert_eq!(speed.samples.len(), 1);
        assert_eq!(families[0].samples.len(), 2);
    }

    #[test]
    fn integers_read_as_go_reads_them() {
        assert_eq!(int("1500"), Some(1500));
        assert_eq!(int("-1"), Some(-1));
        assert_eq!(int("0x1003"), Some(0x1003));
        assert_eq!(int("010"), Some(8));
        assert_eq!(int("0"), Some(0));
        assert_eq!(int("up"), None);
    }
}
