//! /proc/net/{netstat,snmp,snmp6}: the protocol counters node_exporter's
//! `netstat` collector exports by default, untyped as it exposes them.

use std::io;

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_host_view};

/// node_exporter's default `--collector.netstat.fields`.
pub(super) const DEFAULT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    let mut stats = read_host_view(metrics, "net/netstat", parse_pairs)?;
    stats.extend(read_host_view(metrics, "net/snmp", parse_pairs)?);
    // No snmp6 when IPv6 is off.
    match read_host_view(metrics, "net/snmp6", parse_snmp6) {
        Ok(snmp6) => stats.extend(snmp6),
        Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(stats
        .into_iter()
        .filter(|(protocol, name, _)| {
            metrics
                .netstat_fields
                .matches(&format!("{protocol}_{name}"))
        })
        .map(|(protocol, name, value)| {
            Family::single(
                Kind::Untyped,
                format!("node_netstat_{protocol}_{name}"),
                format!("Statistic {protocol}{name}."),
                value,
            )
        })
        .collect())
}

/// Pairs of lines, names then values: `Tcp: RtoAlgorithm ...` /
/// `Tcp: 1 ...`; yields (protocol, name, value).
fn parse_pairs(text: &str) -> Result<Vec<(String, String, f64)>, Malformed> {
    let mut stats = Vec::new();
    let mut lines = text.lines().filter(|l| !l.is_empty());
    while let Some(names) = lines.next() {
        let values = lines
            .next()
            .ok_or_else(|| Malformed(format!("no values after {names:?}")))?;
        let names: Vec<&str> = names.split(' ').collect();
        let values: Vec<&str> = values.split(' ').collect();
        let protocol = names[0].trim_end_matches(':');
        if names.len() != values.len() || values[0].trim_end_matches(':') != protocol {
            return Err(Malformed(format!(
                "{protocol}: names and values do not pair up"
            )));
        }
        for (name, value) in names[1..].iter().zip(&values[1..]) {
            // Some counters (Tcp MaxConn) are -1: signed.
            let value: i64 = number(value, name)?;
            stats.push((protocol.to_owned(), (*name).to_owned(), value as f64));
        }
    }
    Ok(stats)
}

/// `Ip6InReceives    54` lines: the protocol ends at its `6`.
fn parse_snmp6(text: &str) -> Result<Vec<(String, String, f64)>, Malformed> {
    let mut stats = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [key, value, ..] = fields[..] else {
            continue;
        };
        let Some(six) = key.find('6') else { continue };
        let value: i64 = number(value, key)?;
        stats.push((
            key[..=six].to_owned(),
            key[six + 1..].to_owned(),
            value as f64,
        ));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_the_default_fields_from_real_files() {
        let families = read(&fixture_metrics()).unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        for name in [
            "node_netstat_TcpExt_ListenDrops",
            "node_netstat_IpExt_InOctets",
            "node_netstat_Tcp_CurrEstab",
            "node_netstat_Udp_InDatagrams",
            "node_netstat_Ip6_InOctets",
            "node_netstat_Icmp6_InMsgs",
            "node_netstat_Ip_Forwarding",
        ] {
            assert!(names.contains(&name), "no {name} in {names:?}");
        }
        assert!(!names.contains(&"node_netstat_Tcp_RtoAlgorithm"));
        assert_eq!(value(&families, "node_netstat_Ip_Forwarding", &[]), 2.0);
    }

    #[test]
    fn lines_that_do_not_pair_up_are_errors() {
        assert!(
            parse_pairs("Tcp: A B\nTcp: 1\n")
                .unwrap_err()
                .0
                .contains("Tcp")
        );
        assert!(
            parse_pairs("Tcp: A B\n")
                .unwrap_err()
                .0
                .contains("no values")
        );
        assert_eq!(parse_pairs("Tcp: MaxConn\nTcp: -1\n").unwrap()[0].2, -1.0);
        assert_eq!(
            parse_snmp6("Udp6InErrors \t 3\n").unwrap(),
            [("Udp6".to_owned(), "InErrors".to_owned(), 3.0)]
        );
    }
}
