//! /proc/sys/fs/file-nr: allocated and maximum file handles.

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("sys/fs/file-nr"), parse)
}

/// `<allocated> <unused, always 0 since 2.6> <maximum>`.
fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [allocated, _, maximum] = fields[..] else {
        return Err(Malformed(format!("want 3 fields, got {:?}", text.trim())));
    };
    Ok(vec![
        Family::single(
            Kind::Gauge,
            "node_filefd_allocated",
            "File descriptor statistics: allocated.",
            number::<u64>(allocated, "allocated")? as f64,
        ),
        Family::single(
            Kind::Gauge,
            "node_filefd_maximum",
            "File descriptor statistics: maximum.",
            number::<u64>(maximum, "maximum")? as f64,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_allocated_and_maximum_from_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        assert_eq!(value(&families, "node_filefd_allocated", &[]), 1511.0);
        assert_eq!(value(&families, "node_filefd_maximum", &[]), 2466170.0);
        assert!(parse("1 2\n").is_err());
    }
}
