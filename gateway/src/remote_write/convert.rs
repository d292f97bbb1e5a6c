//! OTLP metrics to Prometheus series, after the OpenTelemetry specification's
//! "Prometheus and OpenMetrics Compatibility" (the collector's default,
//! underscore-escaping translation with suffixes):
//!
//! - names: characters outside `[a-zA-Z0-9_:]` become `_`, the unit is added
//!   as a suffix (`s` -> `_seconds`, `By` -> `_bytes`, `By/s` ->
//!   `_bytes_per_second`, `{requests}` dropped, `1` on a gauge -> `_ratio`),
//!   monotonic sums end in `_total`;
//! - resource: `job` = `service.namespace/service.name` (or `service.name`),
//!   `instance` = `service.instance.id`, every other resource attribute goes
//!   to a `target_info` series (value 1) with the same job and instance;
//! - scope: `otel_scope_name`, `otel_scope_version` labels;
//! - gauges, sums, histograms (`_bucket{le}` cumulative, `_sum`, `_count`) and
//!   summaries (`{quantile}`, `_sum`, `_count`).
//!
//! Cumulative temporality only: delta sums and histograms would need a writer
//! that keeps running totals per series, so they are rejected (partial
//! success, naming the fix: SDKs export cumulative by default). Exponential
//! histograms have no remote write v1 form and are rejected too.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, NumberDataPoint, SummaryDataPoint, metric::Data,
    number_data_point,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::proto::{Label, STALE_NAN, TimeSeries};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Default)]
pub struct ConverterMetrics {
    pub rejected_points: Family<ReasonLabels, Counter>,
}

impl ConverterMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "metrics_converter_rejected_points",
            "OTLP data points with no Prometheus form, by reason (reported to the client as partial success)",
            self.rejected_points.clone(),
        );
    }
}

/// Why a data point was not converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Delta,
    ExponentialHistogram,
    NoData,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Delta => "delta_temporality",
            Rejection::ExponentialHistogram => "exponential_histogram",
            Rejection::NoData => "no_data",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Rejection::Delta => {
                "delta temporality is not supported: export cumulative metrics \
                 (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative)"
            }
            Rejection::ExponentialHistogram => {
                "exponential histograms have no Prometheus remote write v1 form: use explicit buckets"
            }
            Rejection::NoData => "metric has no data (no gauge, sum, histogram or summary)",
        }
    }
}

/// The series of a request, and what was left out.
#[derive(Debug, Default)]
pub struct Converted {
    pub series: Vec<TimeSeries>,
    /// Data points rejected, and the first reason as a client-facing message.
    pub rejected: u64,
    pub message: String,
}

impl Converted {
    fn reject(&mut self, metric: &str, points: usize, why: Rejection, metrics: &ConverterMetrics) {
        self.rejected += points as u64;
        // A metric without data has no points, but is counted all the same.
        metrics
            .rejected_points
            .get_or_create(&ReasonLabels {
                reason: why.reason(),
            })
            .inc_by(points.max(1) as u64);
        if self.message.is_empty() {
            self.message = format!("metric {metric:?}: {}", why.message());
        }
    }
}

/// Milliseconds since the epoch of an OTLP timestamp; a point without one
/// is stamped now (Prometheus would refuse time 0, and the whole batch with it).
fn millis(unix_nano: u64) -> i64 {
    if unix_nano == 0 {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    }
    (unix_nano / 1_000_000) as i64
}

pub fn convert(request: &ExportMetricsServiceRequest, metrics: &ConverterMetrics) -> Converted {
    let mut out = Converted::default();
    for rm in &request.resource_metrics {
        let resource = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let target = Target::of(resource);
        let mut latest = 0u64;
        for sm in &rm.scope_metrics {
            let mut common = target.labels.clone();
            if let Some(scope) = &sm.scope {
                if !scope.name.is_empty() {
                    common.push(Label::new("otel_scope_name", &scope.name));
                }
                if !scope.version.is_empty() {
                    common.push(Label::new("otel_scope_version", &scope.version));
                }
            }
            for metric in &sm.metrics {
                let Some(data) = &metric.data else {
                    out.reject(&metric.name, 0, Rejection::NoData, metrics);
                    continue;
                };
                let kind = match data {
                    Data::Gauge(_) => Kind::Gauge,
                    Data::Sum(s) if s.is_monotonic => Kind::Counter,
                    Data::Sum(_) => Kind::Gauge,
                    Data::Histogram(_) | Data::ExponentialHistogram(_) => Kind::Histogram,
                    Data::Summary(_) => Kind::Summary,
                };
                let name = metric_name(&metric.name, &metric.unit, kind);
                let cumulative = |t: i32| t == AggregationTemporality::Cumulative as i32;
                match data {
                    Data::Gauge(g) => {
                        for p in &g.data_points {
                            latest = latest.max(p.time_unix_nano);
                            out.series.push(number(&name, &common, p));
                        }
                    }
                    Data::Sum(s) if !cumulative(s.aggregation_temporality) => {
                        out.reject(&metric.name, s.data_points.len(), Rejection::Delta, metrics)
                    }
                    Data::Sum(s) => {
                        for p in &s.data_points {
                            latest = latest.max(p.time_unix_nano);
                            out.series.push(number(&name, &common, p));
                        }
                    }
                    Data::Histogram(h) if !cumulative(h.aggregation_temporality) => {
                        out.reject(&metric.name, h.data_points.len(), Rejection::Delta, metrics)
                    }
                    Data::Histogram(h) => {
                        for p in &h.data_points {
                            latest = latest.max(p.time_unix_nano);
                            histogram(&mut out.series, &name, &common, p);
                        }
                    }
                    Data::ExponentialHistogram(h) => out.reject(
                        &metric.name,
                        h.data_points.len(),
                        Rejection::ExponentialHistogram,
                        metrics,
                    ),
                    Data::Summary(s) => {
                        for p in &s.data_points {
                            latest = latest.max(p.time_unix_nano);
                            summary(&mut out.series, &name, &common, p);
                        }
                    }
                }
            }
        }
        if let Some(info) = target.info(latest) {
            out.series.push(info);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
    Summary,
}

/// `job`/`instance` from the resource, and the rest for `target_info`.
struct Target {
    labels: Vec<Label>,
    other: Vec<Label>,
}

impl Target {
    fn of(resource: &[KeyValue]) -> Target {
        let get = |key: &str| {
            resource
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| value_string(kv.value.as_ref()))
        };
        let mut labels = Vec::new();
        match (get("service.namespace"), get("service.name")) {
            (Some(ns), Some(name)) => labels.push(Label::new("job", format!("{ns}/{name}"))),
            (None, Some(name)) => labels.push(Label::new("job", name)),
            _ => {}
        }
        if let Some(id) = get("service.instance.id") {
            labels.push(Label::new("instance", id));
        }
        let other = attributes(resource.iter().filter(|kv| {
            !matches!(
                kv.key.as_str(),
                "service.name" | "service.namespace" | "service.instance.id"
            )
        }));
        Target { labels, other }
    }

    /// `target_info`, when there is something to say and a series to join.
    fn info(self, latest_unix_nano: u64) -> Option<TimeSeries> {
        if self.other.is_empty() || self.labels.is_empty() || latest_unix_nano == 0 {
            return None;
        }
        let mut labels = self.labels;
        labels.extend(self.other);
        Some(TimeSeries::new(
            "target_info",
            labels,
            1.0,
            millis(latest_unix_nano),
        ))
    }
}

fn with(common: &[Label], attributes: &[KeyValue], extra: Option<Label>) -> Vec<Label> {
    let mut labels = self::attributes(attributes.iter());
    // Resource and scope labels win over a data point attribute of the same name.
    labels.retain(|l| !common.iter().any(|c| c.name == l.name));
    labels.extend(common.iter().cloned());
    labels.extend(extra);
    labels
}

fn sample_value(flags: u32, value: f64) -> f64 {
    // FLAG_NO_RECORDED_VALUE: the series ended; Prometheus' staleness marker says so.
    if flags & 1 == 1 {
        f64::from_bits(STALE_NAN)
    } else {
        value
    }
}

fn number(name: &str, common: &[Label], p: &NumberDataPoint) -> TimeSeries {
    let value = match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => 0.0,
    };
    TimeSeries::new(
        name,
        with(common, &p.attributes, None),
        sample_value(p.flags, value),
        millis(p.time_unix_nano),
    )
}

fn histogram(out: &mut Vec<TimeSeries>, name: &str, common: &[Label], p: &HistogramDataPoint) {
    let ts = millis(p.time_unix_nano);
    let value = |v: f64| sample_value(p.flags, v);
    let mut cumulative = 0u64;
    for (i, count) in p.bucket_counts.iter().enumerate() {
        cumulative += count;
        // The last bucket has no bound: it is +Inf, written from `count` below.
        let Some(bound) = p.explicit_bounds.get(i) else {
            break;
        };
        out.push(TimeSeries::new(
            &format!("{name}_bucket"),
            with(
                common,
                &p.attributes,
                Some(Label::new("le", format_float(*bound))),
            ),
            value(cumulative as f64),
            ts,
        ));
    }
    out.push(TimeSeries::new(
        &format!("{name}_bucket"),
        with(common, &p.attributes, Some(Label::new("le", "+Inf"))),
        value(p.count as f64),
        ts,
    ));
    if let Some(sum) = p.sum {
        out.push(TimeSeries::new(
            &format!("{name}_sum"),
            with(common, &p.attributes, None),
            value(sum),
            ts,
        ));
    }
    out.push(TimeSeries::new(
        &format!("{name}_count"),
        with(common, &p.attributes, None),
        value(p.count as f64),
        ts,
    ));
}

fn summary(out: &mut Vec<TimeSeries>, name: &str, common: &[Label], p: &SummaryDataPoint) {
    let ts = millis(p.time_unix_nano);
    let value = |v: f64| sample_value(p.flags, v);
    for q in &p.quantile_values {
        out.push(TimeSeries::new(
            name,
            with(
                common,
                &p.attributes,
                Some(Label::new("quantile", format_float(q.quantile))),
            ),
            value(q.value),
            ts,
        ));
    }
    for (suffix, v) in [("_sum", p.sum), ("_count", p.count as f64)] {
        out.push(TimeSeries::new(
            &format!("{name}{suffix}"),
            with(common, &p.attributes, None),
            value(v),
            ts,
        ));
    }
}

/// A float as Prometheus spells it in `le` and `quantile`.
pub fn format_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Attributes as labels: names sanitized; attributes whose names collide
/// after sanitizing are joined with `;` in the order of their original keys.
fn attributes<'a>(kvs: impl Iterator<Item = &'a KeyValue>) -> Vec<Label> {
    let mut by_name: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for kv in kvs {
        if kv.key.is_empty() {
            continue;
        }
        by_name
            .entry(label_name(&kv.key))
            .or_default()
            .push((&kv.key, value_string(kv.value.as_ref())));
    }
    by_name
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_by(|a, b| a.0.cmp(b.0));
            let joined: Vec<_> = values.into_iter().map(|(_, v)| v).collect();
            Label::new(name, joined.join(";"))
        })
        .collect()
}

/// A label name: invalid characters become `_`, a leading digit gets a `key_`
/// prefix, and `__` stays reserved for Prometheus.
pub fn label_name(key: &str) -> String {
    let mut name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "key_");
    } else if name.starts_with("__") && !key.starts_with("__") {
        name.insert_str(0, "key");
    }
    name
}

pub fn value_string(v: Option<&AnyValue>) -> String {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(V::StringValue(s)) => s.clone(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::DoubleValue(d)) => format_float(*d),
        Some(V::BytesValue(b)) => b.iter().map(|b| format!("{b:02x}")).collect(),
        Some(V::ArrayValue(a)) => {
            let items: Vec<_> = a.values.iter().map(|v| value_string(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(V::KvlistValue(l)) => {
            let items: Vec<_> = l
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, value_string(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(V::StringValueStrindex(i)) => i.to_string(),
    }
}

/// The unit as name words: `s` -> `seconds`, `By/s` -> `bytes_per_second`;
/// annotations (`{requests}`) and unknown units in braces vanish.
fn unit_words(unit: &str) -> Vec<String> {
    let unit = unit.trim();
    if unit.is_empty() || unit.starts_with('{') {
        return Vec::new();
    }
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m, Some(p)),
        None => (unit, None),
    };
    let main = match main {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tebibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => "",
        other if other.starts_with('{') => "",
        other => other,
    };
    let mut words: Vec<String> = words_of(main);
    if let Some(per) = per {
        let per = match per {
            "s" => "second",
            "m" => "minute",
            "h" => "hour",
            "d" => "day",
            "w" => "week",
            "mo" => "month",
            "y" => "year",
            other if other.starts_with('{') => "",
            other => other,
        };
        if !per.is_empty() {
            words.push("per".into());
            words.extend(words_of(per));
        }
    }
    words
}

fn words_of(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The Prometheus name of an OTLP metric.
fn metric_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut words = words_of(name);
    let mut suffix = unit_words(unit);
    // A suffix already spelt out in the name is not repeated.
    let already = suffix.len() <= words.len() && words.ends_with(&suffix);
    if already || suffix.iter().all(|w| words.contains(w)) {
        suffix.clear();
    }
    words.extend(suffix);
    if kind == Kind::Counter {
        words.retain(|w| w != "total");
        words.push("total".into());
    }
    if kind == Kind::Gauge && unit.trim() == "1" && !words.iter().any(|w| w == "ratio") {
        words.push("ratio".into());
    }
    let mut out = words.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    #[test]
    fn names_follow_the_compatibility_spec() {
        assert_eq!(
            metric_name("http.server.request.duration", "s", Kind::Histogram),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            metric_name("http.server.requests", "{request}", Kind::Counter),
            "http_server_requests_total"
        );
        assert_eq!(
            metric_name("system.network.io", "By", Kind::Counter),
            "system_network_io_bytes_total"
        );
        assert_eq!(
            metric_name("throughput", "By/s", Kind::Gauge),
            "throughput_bytes_per_second"
        );
        assert_eq!(
            metric_name("cpu.utilization", "1", Kind::Gauge),
            "cpu_utilization_ratio"
        );
        assert_eq!(
            metric_name("node_cpu_seconds_total", "s", Kind::Counter),
            "node_cpu_seconds_total"
        );
        assert_eq!(
            metric_name(
                "process.runtime.nodejs.memory.heap.total",
                "By",
                Kind::Gauge
            ),
            "process_runtime_nodejs_memory_heap_total_bytes"
        );
        assert_eq!(metric_name("2xx", "", Kind::Gauge), "_2xx");
        assert_eq!(label_name("http.method"), "http_method");
        assert_eq!(label_name("0day"), "key_0day");
        assert_eq!(label_name("_.x"), "key__x");
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn labels_of(s: &TimeSeries) -> BTreeMap<&str, &str> {
        s.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn a_request_becomes_series_with_job_instance_and_target_info() {
        let t = 1_700_000_000_123_000_000u64;
        let point = |v: f64, attrs: Vec<KeyValue>| NumberDataPoint {
            attributes: attrs,
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let metric = |name: &str, unit: &str, data: Data| Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(data),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "cart"),
                        kv("service.instance.id", "pod-1"),
                        kv("k8s.pod.name", "cart-1"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "meter".into(),
                        ..Default::default()
                    }),
                    metrics: vec![
                        metric(
                            "queue.depth",
                            "{item}",
                            Data::Gauge(Gauge {
                                data_points: vec![point(3.0, vec![kv("queue", "a")])],
                            }),
                        ),
                        metric(
                            "requests",
                            "1",
                            Data::Sum(Sum {
                                data_points: vec![point(7.0, vec![])],
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                                is_monotonic: true,
                            }),
                        ),
                        metric(
                            "deltas",
                            "",
                            Data::Sum(Sum {
                                data_points: vec![point(1.0, vec![]), point(2.0, vec![])],
                                aggregation_temporality: AggregationTemporality::Delta as i32,
                                is_monotonic: true,
                            }),
                        ),
                        metric(
                            "latency",
                            "ms",
                            Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    time_unix_nano: t,
                                    count: 6,
                                    sum: Some(60.0),
                                    bucket_counts: vec![1, 2, 3],
                                    explicit_bounds: vec![5.0, 10.0],
                                    ..Default::default()
                                }],
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            }),
                        ),
                        metric(
                            "exp",
                            "",
                            Data::ExponentialHistogram(ExponentialHistogram {
                                data_points: vec![Default::default()],
                                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            }),
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let metrics = ConverterMetrics::default();
        let out = convert(&request, &metrics);
        assert_eq!(out.rejected, 3);
        assert!(
            out.message.contains("\"deltas\": delta temporality"),
            "{}",
            out.message
        );
        let got: Vec<_> = out
            .series
            .iter()
            .map(|s| (labels_of(s), s.samples[0].value, s.samples[0].timestamp))
            .collect();
        let ts = 1_700_000_000_123i64;
        let gauge = &got[0];
        assert_eq!(
            gauge.0,
            BTreeMap::from([
                ("__name__", "queue_depth"),
                ("instance", "pod-1"),
                ("job", "cart"),
                ("otel_scope_name", "meter"),
                ("queue", "a"),
            ])
        );
        assert_eq!((gauge.1, gauge.2), (3.0, ts));
        assert_eq!(got[1].0["__name__"], "requests_total");
        assert_eq!(got[1].1, 7.0);
        let buckets: Vec<_> = got[2..5]
            .iter()
            .map(|(l, v, _)| (l["__name__"], l["le"], *v))
            .collect();
        assert_eq!(
            buckets,
            [
                ("latency_milliseconds_bucket", "5", 1.0),
                ("latency_milliseconds_bucket", "10", 3.0),
                ("latency_milliseconds_bucket", "+Inf", 6.0),
            ]
        );
        assert_eq!(got[5].0["__name__"], "latency_milliseconds_sum");
        assert_eq!(got[5].1, 60.0);
        assert_eq!(got[6].0["__name__"], "latency_milliseconds_count");
        let info = got.last().unwrap();
        assert_eq!(
            info.0,
            BTreeMap::from([
                ("__name__", "target_info"),
                ("instance", "pod-1"),
                ("job", "cart"),
                ("k8s_pod_name", "cart-1"),
            ])
        );
        assert_eq!(
            metrics
                .rejected_points
                .get_or_create(&ReasonLabels {
                    reason: "delta_temporality"
                })
                .get(),
            2
        );
    }
}
