//! The owner's cumulative series as Prometheus samples, with Tempo's names.

use super::delta::{Buckets, Entry, Family, SeriesKey};
use crate::remote_write::convert::format_float;
use crate::remote_write::{Label, TimeSeries};

/// Every series of `entry` at `ts_ms`. A series written for the first time
/// also gets a 0 just before, as Tempo does, so that `increase()` sees its
/// first interval.
pub fn series(
    key: &SeriesKey,
    entry: &Entry,
    buckets: &Buckets,
    ts_ms: i64,
    out: &mut Vec<TimeSeries>,
) {
    let family = key.family;
    let labels: Vec<Label> = if key.is_overflow() {
        vec![Label::new("metric_overflow", "true")]
    } else {
        family
            .label_names()
            .iter()
            .zip(&key.labels)
            // An empty value is no label at all for Prometheus.
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| Label::new(*n, v.as_str()))
            .collect()
    };
    let mut push = |name: &str, extra: Option<Label>, value: f64| {
        let mut l = labels.clone();
        l.extend(extra);
        let mut s = TimeSeries::new(name, l, value, ts_ms);
        if !entry.written {
            let mut zero = s.samples[0].clone();
            zero.value = 0.0;
            zero.timestamp -= 1;
            s.samples.insert(0, zero);
        }
        out.push(s);
    };
    for (name, value) in family.counter_names().iter().zip(&entry.value.counters) {
        // Tempo writes a failed-requests series only once a request failed.
        if family == Family::ServiceGraph && name.ends_with("_failed_total") && *value == 0 {
            continue;
        }
        push(name, None, *value as f64);
    }
    let bounds = buckets.of(family);
    for (name, h) in family.histogram_names().iter().zip(&entry.value.histograms) {
        let mut cumulative = 0;
        for (i, count) in h.buckets.iter().enumerate() {
            cumulative += count;
            let le = bounds.get(i).map_or("+Inf".into(), |b| format_float(*b));
            push(
                &format!("{name}_bucket"),
                Some(Label::new("le", le)),
                cumulative as f64,
            );
        }
        push(&format!("{name}_sum"), None, h.sum);
        push(&format!("{name}_count"), None, cumulative as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::delta::Value;
    use super::*;

    #[test]
    fn span_metrics_render_with_tempo_names_buckets_and_a_first_zero() {
        let buckets = Buckets {
            span_metrics: vec![0.002, 0.004],
            service_graph: vec![1.0],
        };
        let mut value = Value::zero(Family::SpanMetrics, &buckets);
        value.counters[0] = 2;
        value.histograms[0].observe(&buckets.span_metrics, 0.003);
        value.histograms[0].observe(&buckets.span_metrics, 0.5);
        let key = SeriesKey {
            family: Family::SpanMetrics,
            labels: vec![
                "cart".into(),
                "GET /".into(),
                "SPAN_KIND_SERVER".into(),
                "STATUS_CODE_UNSET".into(),
            ],
        };
        let mut entry = Entry {
            value,
            updated_ms: 0,
            written: false,
        };
        let mut out = Vec::new();
        series(&key, &entry, &buckets, 1000, &mut out);
        let got: Vec<(BTreeMap<_, _>, Vec<(f64, i64)>)> = out
            .iter()
            .map(|s| {
                (
                    s.labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect(),
                    s.samples.iter().map(|x| (x.value, x.timestamp)).collect(),
                )
            })
            .collect();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0].0["__name__"], "traces_spanmetrics_calls_total");
        assert_eq!(got[0].0["span_kind"], "SPAN_KIND_SERVER");
        assert_eq!(got[0].1, [(0.0, 999), (2.0, 1000)]);
        let le: Vec<_> = got[1..4]
            .iter()
            .map(|(l, s)| (l["le"].as_str(), s[1].0))
            .collect();
        assert_eq!(le, [("0.002", 0.0), ("0.004", 1.0), ("+Inf", 2.0)]);
        assert_eq!(got[4].0["__name__"], "traces_spanmetrics_latency_sum");
        assert_eq!(got[5].0["__name__"], "traces_spanmetrics_latency_count");
        assert_eq!(got[5].1[1].0, 2.0);

        entry.written = true;
        out.clear();
        series(
            &SeriesKey::overflow(Family::ServiceGraph),
            &Entry {
                value: Value::zero(Family::ServiceGraph, &buckets),
                ..entry
            },
            &buckets,
            2000,
            &mut out,
        );
        // request_total, no failed_total, 2 histograms of 2 buckets + sum + count.
        assert_eq!(out.len(), 1 + 2 * 4);
        assert!(out.iter().all(|s| s.samples.len() == 1));
        assert!(
            out[0]
                .labels
                .iter()
                .any(|l| l.name == "metric_overflow" && l.value == "true")
        );
    }
}
