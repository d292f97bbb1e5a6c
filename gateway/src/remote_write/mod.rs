//! Metrics to Prometheus with remote write v1: the span metrics and service
//! graph this gateway owns, and OTLP metrics from node-agents and SDKs
//! (converted in [`convert`]).

pub mod convert;
pub mod proto;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

pub use convert::ConverterMetrics;
pub use proto::{Label, TimeSeries};

use crate::config::MetricsExporter;
use crate::http_exporter::{HttpExporter, HttpExporterError};
use crate::queue::Queue;

/// Series waiting for remote write, weighed in samples.
pub type SeriesQueue = Queue<Vec<TimeSeries>>;

pub fn exporter(config: &MetricsExporter, url: &str) -> Result<HttpExporter, HttpExporterError> {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
        (
            "user-agent",
            concat!("vispyr-gateway/", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    HttpExporter::new(
        "metrics",
        "exporters.metrics.endpoint",
        url,
        headers,
        config.retry(),
    )
}

/// One request body from queued batches, in queue order, so a series'
/// samples stay in time order.
pub fn encode(batch: Vec<Vec<TimeSeries>>) -> Bytes {
    proto::encode(batch.into_iter().flatten().collect()).into()
}
