//! The host metrics on the admin `/metrics`: a prometheus-client collector
//! that reads the host on every scrape, as node_exporter does.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{HostMetrics, Kind, Snapshot};

/// Adds the host metrics to `registry`, which must be the root registry
/// (not a prefixed sub-registry): the names are node_exporter's as they are.
pub fn register(registry: &mut Registry, metrics: Arc<HostMetrics>) {
    registry.register_collector(Box::new(HostCollector(metrics)));
}

#[derive(Debug)]
struct HostCollector(Arc<HostMetrics>);

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode(&self.0.collect(), &mut encoder)
    }
}

fn encode(snapshot: &Snapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    for family in &snapshot.families {
        // OpenMetrics names a counter family without `_total`; the encoder
        // appends it to each sample, giving node_exporter's sample names.
        let (name, metric_type) = match family.kind {
            Kind::Counter => (
                family.name.strip_suffix("_total").unwrap_or(&family.name),
                MetricType::Counter,
            ),
            Kind::Gauge => (family.name.as_str(), MetricType::Gauge),
            Kind::Untyped => (family.name.as_str(), MetricType::Unknown),
        };
        let mut metric = encoder.encode_descriptor(name, &family.help, None, metric_type)?;
        for sample in &family.samples {
            // An empty label set would print as `name{}`.
            if sample.labels.is_empty() {
                encode_value(&mut metric, family.kind, sample.value)?;
            } else {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                encode_value(
                    &mut metric.encode_family(&labels)?,
                    family.kind,
                    sample.value,
                )?;
            }
        }
    }
    Ok(())
}

fn encode_value(encoder: &mut MetricEncoder, kind: Kind, value: f64) -> fmt::Result {
    match kind {
        Kind::Counter => encoder.encode_counter::<NoLabelSet, _, f64>(&value, None),
        Kind::Gauge | Kind::Untyped => encoder.encode_gauge(&value),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use prometheus_client::encoding::text::encode as encode_text;

    use super::*;
    use crate::hostmetrics::Family;

    #[derive(Debug)]
    struct Fixed(Snapshot);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
            encode(&self.0, &mut encoder)
        }
    }

    #[test]
    fn samples_carry_node_exporter_names_labels_and_types() {
        let snapshot = Snapshot {
            at: SystemTime::now(),
            boot_time: None,
            families: vec![
                Family::new(
                    Kind::Counter,
                    "node_cpu_seconds_total",
                    "Seconds the CPUs spent in each mode.",
                )
                .with(vec![("cpu", "0".into()), ("mode", "idle".into())], 12.5),
                Family::single(Kind::Gauge, "node_load1", "1m load average.", 0.25),
                Family::single(
                    Kind::Untyped,
                    "node_vmstat_pgfault",
                    "/proc/vmstat information field pgfault.",
                    7.0,
                ),
                Family::new(
                    Kind::Gauge,
                    "node_filesystem_readonly",
                    "Filesystem read-only status.",
                )
                .with(vec![("mountpoint", "/a \"b\"".into())], 1.0),
            ],
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(snapshot)));
        let mut text = String::new();
        encode_text(&mut text, &registry).unwrap();
        for line in [
            "# TYPE node_cpu_seconds counter",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5",
            "# TYPE node_load1 gauge",
            "node_load1 0.25",
            "# TYPE node_vmstat_pgfault unknown",
            "node_vmstat_pgfault 7.0",
            "node_filesystem_readonly{mountpoint=\"/a \\\"b\\\"\"} 1.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
