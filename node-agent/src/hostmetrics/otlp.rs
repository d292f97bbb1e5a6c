//! One snapshot as OTLP metrics, named so that the OpenTelemetry-to-
//! Prometheus translation (OTel spec "Prometheus and OpenMetrics
//! Compatibility", as Prometheus's own OTLP receiver does it) gives back
//! node_exporter's names:
//!
//! - the name is node_exporter's full name, `_total` included: translators
//!   that add suffixes drop a trailing `total` and append `_total` to
//!   monotonic sums, and translators that add none keep it as it is;
//! - the unit is set only where its Prometheus suffix already ends the name
//!   (`s` for `_seconds`, `By` for `_bytes`), so no suffix is added twice and
//!   none is invented (a unit of `1` would append `_ratio` to node_load1);
//! - counters are cumulative monotonic sums starting at boot; gauges, and
//!   node_exporter's untyped vmstat fields, are gauges (a sum would gain
//!   `_total`).

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{Family, Kind, Snapshot};

const SCOPE: &str = "vispyr-node-agent/hostmetrics";
/// The `job` of host metrics in Prometheus.
pub const SERVICE_NAME: &str = "vispyr-node-agent";

/// The snapshot under a resource naming the host (`host.name`) and, inside
/// Kubernetes, the node (`k8s.node.name`).
pub fn to_resource_metrics(
    snapshot: &Snapshot,
    host_name: &str,
    node_name: Option<&str>,
) -> ResourceMetrics {
    // service.name and service.instance.id become `job` and `instance` in
    // Prometheus, as if it had scraped the agent: one instance per node.
    let mut attributes = vec![
        string_attribute("service.name", SERVICE_NAME),
        string_attribute("service.instance.id", node_name.unwrap_or(host_name)),
        string_attribute("host.name", host_name),
    ];
    if let Some(node) = node_name {
        attributes.push(string_attribute("k8s.node.name", node));
    }
    let time = nanos(snapshot.at);
    let start = snapshot.boot_time.map(nanos).unwrap_or_default();
    ResourceMetrics {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope {
                name: SCOPE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }),
            metrics: snapshot
                .families
                .iter()
                .map(|f| metric(f, start, time))
                .collect(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn metric(family: &Family, start: u64, time: u64) -> Metric {
    let points = family
        .samples
        .iter()
        .map(|sample| NumberDataPoint {
            attributes: sample
                .labels
                .iter()
                .map(|(k, v)| string_attribute(k, v))
                .collect(),
            start_time_unix_nano: if family.kind == Kind::Counter {
                start
            } else {
                0
            },
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(sample.value)),
            ..Default::default()
        })
        .collect();
    let data = match family.kind {
        Kind::Counter => metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        Kind::Gauge | Kind::Untyped => metric::Data::Gauge(Gauge {
            data_points: points,
        }),
    };
    Metric {
        name: family.name.clone(),
        description: family.help.clone(),
        unit: unit(&family.name).to_owned(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// The UCUM unit whose Prometheus suffix the name already carries.
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    if base.ends_with("_seconds") {
        "s"
    } else if base.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmetrics::tests::fixture_metrics;

    /// The OTel spec's OTLP-to-Prometheus naming with suffixes, as Prometheus's
    /// OTLP receiver applies it by default: drop `total` tokens of monotonic
    /// sums, append the unit's suffix unless the name has it, then `_total`.
    fn prometheus_name(metric: &Metric) -> String {
        let monotonic = matches!(
            metric.data,
            Some(metric::Data::Sum(Sum {
                is_monotonic: true,
                ..
            }))
        );
        let mut tokens: Vec<&str> = metric.name.split('_').filter(|t| !t.is_empty()).collect();
        if monotonic {
            tokens.retain(|t| *t != "total");
        }
        let suffix = match metric.unit.as_str() {
            "s" => Some("seconds"),
            "By" => Some("bytes"),
            "1" if !monotonic => Some("ratio"),
            "" => None,
            other => panic!("unit {other} not covered by this test"),
        };
        if let Some(suffix) = suffix.filter(|s| !tokens.contains(s)) {
            tokens.push(suffix);
        }
        if monotonic {
            tokens.push("total");
        }
        tokens.join("_")
    }

    #[test]
    fn every_family_round_trips_to_its_node_exporter_name() {
        let snapshot = fixture_metrics().collect();
        let resource = to_resource_metrics(&snapshot, "host-a", Some("node-a"));
        let metrics = &resource.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), snapshot.families.len());
        for (metric, family) in metrics.iter().zip(&snapshot.families) {
            assert_eq!(prometheus_name(metric), family.name);
            let points = match (&metric.data, family.kind) {
                (Some(metric::Data::Sum(sum)), Kind::Counter) => {
                    assert!(sum.is_monotonic, "{}", family.name);
                    assert_eq!(
                        sum.aggregation_temporality,
                        AggregationTemporality::Cumulative as i32
                    );
                    &sum.data_points
                }
                (Some(metric::Data::Gauge(gauge)), Kind::Gauge | Kind::Untyped) => {
                    &gauge.data_points
                }
                (data, kind) => panic!("{}: {kind:?} became {data:?}", family.name),
            };
            assert_eq!(points.len(), family.samples.len());
            for (point, sample) in points.iter().zip(&family.samples) {
                assert_eq!(
                    point.value,
                    Some(number_data_point::Value::AsDouble(sample.value))
                );
                let keys: Vec<&str> = point.attributes.iter().map(|a| a.key.as_str()).collect();
                let labels: Vec<&str> = sample.labels.iter().map(|(k, _)| *k).collect();
                assert_eq!(keys, labels);
                assert_eq!(point.time_unix_nano, nanos(snapshot.at));
            }
        }
        let counter = metrics
            .iter()
            .find(|m| m.name == "node_cpu_seconds_total")
            .unwrap();
        let Some(metric::Data::Sum(sum)) = &counter.data else {
            unreachable!()
        };
        // Counters count from boot (the fixture's btime).
        assert_eq!(
            sum.data_points[0].start_time_unix_nano,
            1795438371 * 1_000_000_000
        );
        assert_eq!(counter.unit, "s");
        let load = metrics.iter().find(|m| m.name == "node_load1").unwrap();
        assert_eq!(load.unit, "");
    }

    #[test]
    fn resource_names_the_agent_the_host_and_the_node_when_known() {
        let snapshot = fixture_metrics().collect();
        let keys = |r: &ResourceMetrics| -> Vec<(String, String)> {
            r.resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|a| match &a.value.as_ref().unwrap().value {
                    Some(any_value::Value::StringValue(v)) => (a.key.clone(), v.clone()),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(
            keys(&to_resource_metrics(&snapshot, "host-a", Some("node-a"))),
            [
                ("service.name".into(), SERVICE_NAME.into()),
                ("service.instance.id".into(), "node-a".into()),
                ("host.name".into(), "host-a".into()),
                ("k8s.node.name".into(), "node-a".into())
            ]
        );
        assert_eq!(
            keys(&to_resource_metrics(&snapshot, "host-a", None)),
            [
                ("service.name".into(), SERVICE_NAME.into()),
                ("service.instance.id".into(), "host-a".into()),
                ("host.name".into(), "host-a".into())
            ]
        );
    }
}
