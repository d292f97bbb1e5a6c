//! /proc/net/udp{,6}: bytes queued in UDP sockets, summed, as node_exporter's
//! `udp_queues` collector exports them.

use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, read_host_view};

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mut family = Family::new(
        Kind::Gauge,
        "node_udp_queues",
        "Number of allocated memory in the kernel for UDP datagrams in bytes.",
    );
    // Either file is missing when its IP version is off.
    for (file, ip) in [("net/udp", "v4"), ("net/udp6", "v6")] {
        let (tx, rx) = match read_host_view(metrics, file, parse) {
            Ok(queues) => queues,
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let labels = |queue: &str| vec![("queue", queue.to_owned()), ("ip", ip.to_owned())];
        family.push(labels("tx"), tx as f64);
        family.push(labels("rx"), rx as f64);
    }
    Ok(vec![family])
}

/// A header, then one socket per line with `tx_queue:rx_queue` (hex) in the
/// fifth column; returns both summed.
fn parse(text: &str) -> Result<(u64, u64), Malformed> {
    let (mut tx, mut rx) = (0, 0);
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let queues = line
            .split_whitespace()
            .nth(4)
            .and_then(|q| q.split_once(':'))
            .ok_or_else(|| Malformed(format!("no tx_queue:rx_queue in {line:?}")))?;
        let hex = |q: &str| {
            u64::from_str_radix(q, 16).map_err(|_| Malformed(format!("{q:?} is not a hex number")))
        };
        tx += hex(queues.0)?;
        rx += hex(queues.1)?;
    }
    Ok((tx, rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn sums_the_queues_of_real_files() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(families[0].samples.len(), 4);
        assert_eq!(
            value(
                &families,
                "node_udp_queues",
                &[("queue", "rx"), ("ip", "v6")]
            ),
            0.0
        );
        let two = "header\n 0: 0100007F:0035 00000000:0000 07 00000010:00000001 00:0 0 0 0 1 0 0 0\n 1: 0100007F:0036 00000000:0000 07 00000001:00000002 00:0 0 0 0 1 0 0 0\n";
        assert_eq!(parse(two).unwrap(), (0x11, 3));
        assert!(parse("header\n 0: x\n").unwrap_err().0.contains("tx_queue"));
    }
}
