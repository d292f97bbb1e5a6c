//! The gateway's configuration: one YAML file + `VISPYR_GATEWAY_*` env +
//! `--set`, loaded by `vispyr_common`. Every default works inside the chart.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::queue::RetryPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// OTLP/gRPC receiver.
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP receiver.
    pub http_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// Largest accepted request, in bytes, after decompression; larger ones
    /// get HTTP 413 / gRPC RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// How long the drain on SIGTERM may take to flush the queues.
    pub drain_timeout_ms: u64,
    pub exporters: Exporters,
    pub ring: Ring,
    pub span_metrics: SpanMetrics,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 4317)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 4318)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8888)),
            max_request_bytes: 8 * 1024 * 1024,
            drain_timeout_ms: 20_000,
            exporters: Exporters::default(),
            ring: Ring::default(),
            span_metrics: SpanMetrics::default(),
        }
    }
}

impl Config {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// The hash ring: off unless `peers` or `service` names the members.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ring {
    /// Where the ring service (forwarded spans, series deltas) listens.
    pub addr: SocketAddr,
    /// This member's `host:port` as the others reach it (in Kubernetes
    /// `$(POD_IP):4319`); defaults to `addr` when that is not a wildcard.
    pub advertise: Option<String>,
    /// Static membership: every member's `host:port`, this one included or not.
    pub peers: Vec<String>,
    /// Kubernetes membership: the headless Service whose EndpointSlices list
    /// the members (ready endpoints only; the port named `ring`, else `addr`'s).
    pub service: Option<String>,
    /// The Service's namespace; defaults to the pod's own.
    pub namespace: Option<String>,
    /// Deadline of one forward, which the owner answers once it exported the spans.
    pub forward_timeout_ms: u64,
    /// How often an unreachable member is probed until it answers again.
    pub probe_interval_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            addr: SocketAddr::from(([0, 0, 0, 0], 4319)),
            advertise: None,
            peers: Vec::new(),
            service: None,
            namespace: None,
            forward_timeout_ms: 15_000,
            probe_interval_ms: 500,
            connect_timeout_ms: 1_000,
        }
    }
}

impl Ring {
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.service.is_some()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Exporters {
    pub traces: TracesExporter,
    pub metrics: MetricsExporter,
    pub profiles: ProfilesExporter,
}

/// Traces to an OTLP/gRPC endpoint (Tempo's distributor in production).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesExporter {
    /// `http://host:4317`; without it, received spans are counted as not
    /// exported and dropped.
    pub endpoint: Option<String>,
    /// Spans held (queued or being sent) at most; beyond, clients are told
    /// to retry later.
    pub queue_spans: u64,
    /// Spans per export request, at most (one client request is never split).
    pub batch_spans: u64,
    /// How long a batch waits to fill up.
    pub batch_timeout_ms: u64,
    /// Deadline of one export request.
    pub timeout_ms: u64,
    /// First retry delay; doubles up to `retry_max_backoff_ms`.
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// A batch still failing with retryable errors after this long is dropped.
    pub retry_max_elapsed_ms: u64,
}

impl Default for TracesExporter {
    fn default() -> Self {
        TracesExporter {
            endpoint: None,
            queue_spans: 100_000,
            batch_spans: 8192,
            batch_timeout_ms: 200,
            timeout_ms: 10_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 5_000,
            retry_max_elapsed_ms: 300_000,
        }
    }
}

/// Span metrics, service graph and OTLP metrics to Prometheus remote write v1.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsExporter {
    /// `http://prometheus:9090/api/v1/write`; without it, received metrics
    /// are counted as not exported and dropped, and span metrics are
    /// computed but not written.
    pub endpoint: Option<String>,
    /// Samples held (queued or being sent) at most; beyond, OTLP clients are
    /// told to retry later.
    pub queue_samples: u64,
    /// Samples per remote write request, at most (one client request or one
    /// span metrics write is never split).
    pub batch_samples: u64,
    pub batch_timeout_ms: u64,
    pub timeout_ms: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub retry_max_elapsed_ms: u64,
}

impl Default for MetricsExporter {
    fn default() -> Self {
        MetricsExporter {
            endpoint: None,
            queue_samples: 500_000,
            batch_samples: 10_000,
            batch_timeout_ms: 200,
            timeout_ms: 10_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 5_000,
            retry_max_elapsed_ms: 300_000,
        }
    }
}

impl MetricsExporter {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_millis(
            self.timeout_ms,
            self.retry_initial_backoff_ms,
            self.retry_max_backoff_ms,
            self.retry_max_elapsed_ms,
        )
    }
}

/// OTLP profiles to Pyroscope's OTLP/HTTP ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilesExporter {
    /// Pyroscope's base URL, `http://pyroscope:4040`; profiles go to
    /// `<endpoint>/v1development/profiles`. Without it, received profiles are
    /// counted as not exported and dropped.
    pub endpoint: Option<String>,
    /// Profiles held (queued or being sent) at most.
    pub queue_profiles: u64,
    pub timeout_ms: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub retry_max_elapsed_ms: u64,
}

impl Default for ProfilesExporter {
    fn default() -> Self {
        ProfilesExporter {
            endpoint: None,
            queue_profiles: 10_000,
            timeout_ms: 10_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 5_000,
            retry_max_elapsed_ms: 300_000,
        }
    }
}

impl ProfilesExporter {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::from_millis(
            self.timeout_ms,
            self.retry_initial_backoff_ms,
            self.retry_max_backoff_ms,
            self.retry_max_elapsed_ms,
        )
    }
}

/// Span metrics and service graph (Tempo's metrics-generator names).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpanMetrics {
    pub enabled: bool,
    /// How often deltas go to their owners and owners write to Prometheus.
    pub interval_ms: u64,
    /// Series (label sets) held at most, per family (span metrics, service
    /// graph), in one interval's deltas and in the cumulative state; beyond,
    /// spans are counted into one series labelled `metric_overflow="true"`.
    pub max_series: usize,
    /// A series not updated for this long is no longer written.
    pub series_idle_ms: u64,
    /// Upper bounds of `traces_spanmetrics_latency`, seconds (Tempo's default).
    pub latency_buckets: Vec<f64>,
    pub service_graph: ServiceGraph,
}

impl Default for SpanMetrics {
    fn default() -> Self {
        SpanMetrics {
            enabled: true,
            interval_ms: 15_000,
            max_series: 10_000,
            series_idle_ms: 15 * 60 * 1000,
            latency_buckets: exponential_buckets(0.002, 2.0, 14),
            service_graph: ServiceGraph::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceGraph {
    /// How long a client or server span waits for its other half.
    pub wait_ms: u64,
    /// Unpaired spans held at most; beyond, new ones are dropped and counted.
    pub max_pending_edges: usize,
    /// Upper bounds of the `..._request_{server,client}_seconds` histograms
    /// (Tempo's default).
    pub buckets: Vec<f64>,
}

impl Default for ServiceGraph {
    fn default() -> Self {
        ServiceGraph {
            wait_ms: 10_000,
            max_pending_edges: 10_000,
            buckets: exponential_buckets(0.1, 2.0, 8),
        }
    }
}

fn exponential_buckets(start: f64, factor: f64, count: i32) -> Vec<f64> {
    (0..count).map(|i| start * factor.powi(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_chart_ports() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.grpc_addr.port(), 4317);
        assert_eq!(c.http_addr.port(), 4318);
        assert_eq!(c.admin_addr.port(), 8888);
        assert_eq!(c.max_request_bytes, 8 << 20);
        assert!(c.exporters.traces.endpoint.is_none());
        assert_eq!(c.ring.addr.port(), 4319);
        assert!(!c.ring.enabled());
        assert_eq!(
            c.span_metrics
                .latency_buckets
                .last()
                .map(|b| format!("{b}")),
            Some("16.384".into())
        );
        assert_eq!(c.span_metrics.service_graph.buckets.len(), 8);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"exporters": {"tempo": {}}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `tempo`"), "{err}");
    }
}
