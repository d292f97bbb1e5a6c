//! /proc/loadavg: node_load1, node_load5 and node_load15.

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("loadavg"), parse)
}

fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return Err(Malformed(format!(
            "want 3 load averages, got {:?}",
            text.trim()
        )));
    }
    [("1", "1m"), ("5", "5m"), ("15", "15m")]
        .iter()
        .zip(fields)
        .map(|((minutes, help), field)| {
            Ok(Family::single(
                Kind::Gauge,
                format!("node_load{minutes}"),
                format!("{help} load average."),
                number(field, "load average")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_the_three_averages_from_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(value(&families, "node_load1", &[]), 10.46);
        assert_eq!(value(&families, "node_load5", &[]), 6.69);
        assert_eq!(value(&families, "node_load15", &[]), 3.02);
    }

    #[test]
    fn short_or_garbled_lines_are_errors() {
        assert!(parse("0.1 0.2\n").is_err());
        assert!(parse("0.1 x 0.3 1/2 3\n").unwrap_err().0.contains("\"x\""));
    }
}
