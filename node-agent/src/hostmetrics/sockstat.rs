//! /proc/net/sockstat{,6}: sockets in use per protocol, as node_exporter's
//! `sockstat` collector exports them.

use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_host_view};

/// The per-protocol fields node_exporter knows.
const FIELDS: [&str; 6] = ["inuse", "orphan", "tw", "alloc", "mem", "memory"];

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    let mut families = Vec::new();
    // Either file is missing when its IP version is off.
    for file in ["net/sockstat", "net/sockstat6"] {
        match read_host_view(metrics, file, |text| parse(text, page_size)) {
            Ok(read) => families.extend(read),
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(families)
}

/// `sockets: used 20` and `TCP: inuse 4 orphan 2 tw 141 alloc 4 mem 0` lines.
fn parse(text: &str, page_size: f64) -> Result<Vec<Family>, Malformed> {
    let mut families = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (protocol, pairs) = line
            .split_once(':')
            .ok_or_else(|| Malformed(format!("no protocol in {line:?}")))?;
        let pairs: Vec<&str> = pairs.split_whitespace().collect();
        if !pairs.len().is_multiple_of(2) {
            return Err(Malformed(format!(
                "{protocol}: keys and values do not pair up"
            )));
        }
        for pair in pairs.chunks(2) {
            let (key, value) = (pair[0], number::<i64>(pair[1], protocol)? as f64);
            if protocol == "sockets" {
                if key == "used" {
                    families.push(Family::single(
                        Kind::Gauge,
                        "node_sockstat_sockets_used",
                        "Number of IPv4 sockets in use.",
                        value,
                    ));
                }
                continue;
            }
            if !FIELDS.contains(&key) {
                continue;
            }
            let gauge = |field: &str, value| {
                Family::single(
                    Kind::Gauge,
                    format!("node_sockstat_{protocol}_{field}"),
                    format!("Number of {protocol} sockets in state {field}."),
                    value,
                )
            };
            families.push(gauge(key, value));
            // `mem` counts pages.
            if key == "mem" {
                families.push(gauge("mem_bytes", value * page_size));
            }
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_both_real_files() {
        let families = read(&fixture_metrics()).unwrap();
        assert!(value(&families, "node_sockstat_sockets_used", &[]) > 0.0);
        assert!(families.iter().any(|f| f.name == "node_sockstat_TCP_tw"));
        assert!(
            families
                .iter()
                .any(|f| f.name == "node_sockstat_TCP6_inuse")
        );
        assert!(
            families
                .iter()
                .any(|f| f.name == "node_sockstat_FRAG6_memory")
        );
        let pages = parse("UDP: inuse 1 mem 3\n", 4096.0).unwrap();
        assert_eq!(
            value(&pages, "node_sockstat_UDP_mem_bytes", &[]),
            3.0 * 4096.0
        );
        assert!(parse("TCP: inuse\n", 4096.0).unwrap_err().0.contains("TCP"));
    }
}
