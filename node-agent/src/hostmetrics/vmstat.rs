//! /proc/vmstat: the paging, swapping and OOM-kill fields node_exporter's
//! `vmstat` collector exports by default, untyped as it exposes them.

use super::{Error, Family, HostMetrics, Kind, Malformed, number, read_parsed};

pub(super) fn read(metrics: &HostMetrics) -> Result<Vec<Family>, Error> {
    read_parsed(&metrics.proc("vmstat"), parse)
}

/// node_exporter's default `--collector.vmstat.fields`,
/// `^(oom_kill|pgpg|pswp|pg.*fault).*`, spelled out.
fn exported(field: &str) -> bool {
    ["oom_kill", "pgpg", "pswp"]
        .iter()
        .any(|p| field.starts_with(p))
        || field
            .strip_prefix("pg")
            .is_some_and(|rest| rest.contains("fault"))
}

fn parse(text: &str) -> Result<Vec<Family>, Malformed> {
    let mut families = Vec::new();
    for line in text.lines() {
        let Some((field, value)) = line.split_once(' ') else {
            continue;
        };
        if !exported(field) {
            continue;
        }
        families.push(Family::single(
            Kind::Untyped,
            format!("node_vmstat_{field}"),
            format!("/proc/vmstat information field {field}."),
            number::<u64>(value.trim(), field)? as f64,
        ));
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::{fixture_metrics, value};

    #[test]
    fn reads_the_default_fields_from_a_real_file() {
        let families = read(&fixture_metrics()).unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "node_vmstat_pgpgin",
                "node_vmstat_pgpgout",
                "node_vmstat_pswpin",
                "node_vmstat_pswpout",
                "node_vmstat_pgfault",
                "node_vmstat_pgmajfault",
                "node_vmstat_oom_kill",
            ]
        );
        assert!(value(&families, "node_vmstat_pgfault", &[]) > 0.0);
        assert!(parse("pgfault many\n").unwrap_err().0.contains("pgfault"));
    }
}
