//! Host metrics to the gateway: a snapshot every interval, as OTLP metrics,
//! through the same buffered exporter as profiles. Prometheus also scrapes
//! them at `/metrics`; this path serves clusters that only run the gateway.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::otlp;
use crate::hostmetrics::{self, HostMetrics};

pub struct HostMetricsExport {
    pub host: Arc<HostMetrics>,
    pub exporter: otlp::Exporter,
    pub host_name: String,
    pub node_name: Option<String>,
    pub every: Duration,
    pub shutdown_timeout: Duration,
}

impl HostMetricsExport {
    /// Pushes a snapshot every `every` until `shutdown`, then flushes.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            // A statfs on a hung mount may block for seconds: off the runtime.
            let host = self.host.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || host.collect()).await else {
                continue;
            };
            let resource = hostmetrics::to_resource_metrics(
                &snapshot,
                &self.host_name,
                self.node_name.as_deref(),
            );
            let points = data_points(&resource);
            let request = ExportMetricsServiceRequest {
                resource_metrics: vec![resource],
            };
            self.exporter
                .push(Bytes::from(request.encode_to_vec()), points);
        }
        self.exporter.shutdown(self.shutdown_timeout).await;
    }
}

fn data_points(resource: &ResourceMetrics) -> u64 {
    let points = |data: &Option<metric::Data>| match data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    };
    resource
        .scope_metrics
        .iter()
        .flat_map(|scope| &scope.metrics)
        .map(|m| points(&m.data) as u64)
        .sum()
}
