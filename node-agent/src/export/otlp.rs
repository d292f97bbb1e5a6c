//! A generic OTLP/gRPC exporter: a buffer bounded in bytes that drops its
//! oldest requests when full, and one worker that sends them in order,
//! retrying retryable failures with exponential backoff.
//!
//! Requests arrive encoded, so one exporter serves any signal (profiles,
//! metrics): the [`Signal`] names the gRPC method and how to read the
//! partial success of its response. An item is what the signal's partial
//! success counts (profiles, data points).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use vispyr_common::rpc_status::retryable;

/// One OTLP signal: its gRPC method and the rejected count of its response.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    /// Metrics label and log field, e.g. `profiles`.
    pub name: &'static str,
    path: &'static str,
    rejected: RejectedFn,
}

/// `(rejected items, message)` of an encoded response's partial success.
type RejectedFn = fn(&[u8]) -> Result<(u64, String), prost::DecodeError>;

pub const PROFILES: Signal = Signal {
    name: "profiles",
    path: "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
    rejected: |body| {
        let p = ExportProfilesServiceResponse::decode(body)?.partial_success;
        Ok(p.map_or((0, String::new()), |p| {
            (p.rejected_profiles.max(0) as u64, p.error_message)
        }))
    },
};

pub const METRICS: Signal = Signal {
    name: "metrics",
    path: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    rejected: |body| {
        let p = ExportMetricsServiceResponse::decode(body)?.partial_success;
        Ok(p.map_or((0, String::new()), |p| {
            (p.rejected_data_points.max(0) as u64, p.error_message)
        }))
    },
};

/// Config keys of one exporter (e.g. under `profiles.exporter`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `http://host:port` of an OTLP/gRPC receiver (plaintext HTTP/2).
    pub endpoint: String,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Encoded requests waiting to be sent, at most; the oldest go first.
    pub buffer_bytes: u64,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// A request still failing this long after its first attempt is dropped.
    pub retry_max_elapsed_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoint: "http://vispyr-gateway:4317".to_owned(),
            timeout_ms: 10_000,
            buffer_bytes: 32 << 20,
            retry_initial_backoff_ms: 500,
            retry_max_backoff_ms: 30_000,
            retry_max_elapsed_ms: 300_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("{signal} exporter endpoint {endpoint:?}: {reason}")]
    Endpoint {
        signal: &'static str,
        endpoint: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    signal: &'static str,
    reason: &'static str,
}

/// Why items were dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Pushed out of a full buffer, oldest first.
    BufferFull,
    /// The receiver refused them (partial success, or a non-retryable code).
    Rejected,
    /// Retryable failures for longer than `retry_max_elapsed_ms`.
    RetriesExhausted,
    /// Still buffered when the shutdown ran out of time.
    Shutdown,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::BufferFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The exporters' metrics, under `vispyr_node_agent_exporter_`, one series
/// per signal. Register once and clone into every exporter.
#[derive(Clone, Default, Debug)]
pub struct Metrics {
    sent: Family<SignalLabels, Counter>,
    retried: Family<SignalLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    buffered_bytes: Family<SignalLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("vispyr_node_agent_exporter");
        r.register(
            "sent_items",
            "Items (profiles, data points) the receiver accepted",
            m.sent.clone(),
        );
        r.register(
            "retried_items",
            "Items of failed attempts that were sent again",
            m.retried.clone(),
        );
        r.register(
            "dropped_items",
            "Items given up, by reason",
            m.dropped.clone(),
        );
        r.register(
            "buffered_bytes",
            "Encoded requests waiting to be sent",
            m.buffered_bytes.clone(),
        );
        m
    }

    /// Every series of `signal` at zero, so that a dashboard reads "none
    /// dropped" rather than no data before the first drop.
    fn start_at_zero(&self, signal: &Signal) {
        drop(self.sent.get_or_create(&labels(signal)));
        drop(self.retried.get_or_create(&labels(signal)));
        for reason in DropReason::ALL {
            drop(self.dropped.get_or_create(&drop_labels(signal, reason)));
        }
    }

    pub fn sent(&self, signal: &Signal) -> u64 {
        self.sent.get_or_create(&labels(signal)).get()
    }

    pub fn retried(&self, signal: &Signal) -> u64 {
        self.retried.get_or_create(&labels(signal)).get()
    }

    pub fn dropped(&self, signal: &Signal, reason: DropReason) -> u64 {
        self.dropped
            .get_or_create(&drop_labels(signal, reason))
            .get()
    }

    fn drop(&self, signal: &Signal, reason: DropReason, items: u64) {
        self.dropped
            .get_or_create(&drop_labels(signal, reason))
            .inc_by(items);
    }
}

fn labels(signal: &Signal) -> SignalLabels {
    SignalLabels {
        signal: signal.name,
    }
}

fn drop_labels(signal: &Signal, reason: DropReason) -> DropLabels {
    DropLabels {
        signal: signal.name,
        reason: reason.as_str(),
    }
}

struct Request {
    body: Bytes,
    items: u64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Request>,
    bytes: u64,
    closed: bool,
}

struct Buffer {
    state: Mutex<State>,
    notify: Notify,
    capacity: u64,
    signal: Signal,
    metrics: Metrics,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_gauge(&self, bytes: u64) {
        self.metrics
            .buffered_bytes
            .get_or_create(&labels(&self.signal))
            .set(bytes as i64);
    }

    fn push(&self, request: Request) {
        let size = request.body.len() as u64;
        if size > self.capacity {
            tracing::warn!(
                signal = self.signal.name,
                bytes = size,
                capacity = self.capacity,
                "request larger than the whole buffer, dropping it"
            );
            self.metrics
                .drop(&self.signal, DropReason::BufferFull, request.items);
            return;
        }
        let mut state = self.lock();
        let mut dropped = 0;
        while state.bytes + size > self.capacity {
            let oldest = state.queue.pop_front().expect("bytes > 0 means a request");
            state.bytes -= oldest.body.len() as u64;
            dropped += oldest.items;
        }
        state.bytes += size;
        state.queue.push_back(request);
        self.set_gauge(state.bytes);
        drop(state);
        if dropped > 0 {
            tracing::warn!(
                signal = self.signal.name,
                items = dropped,
                "export buffer full, dropped the oldest requests"
            );
            self.metrics
                .drop(&self.signal, DropReason::BufferFull, dropped);
        }
        self.notify.notify_one();
    }

    /// The next request; `None` once closed and empty.
    async fn pop(&self) -> Option<Request> {
        loop {
            {
                let mut state = self.lock();
                if let Some(request) = state.queue.pop_front() {
                    state.bytes -= request.body.len() as u64;
                    self.set_gauge(state.bytes);
                    return Some(request);
                }
                if state.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// Empties the buffer; returns the items that were in it.
    fn discard(&self) -> u64 {
        let mut state = self.lock();
        let items = state.queue.drain(..).map(|r| r.items).sum();
        state.bytes = 0;
        self.set_gauge(0);
        items
    }
}

/// A running exporter: push requests; `shutdown` flushes.
pub struct Exporter {
    buffer: Arc<Buffer>,
    abort: CancellationToken,
    worker: JoinHandle<()>,
}

impl Exporter {
    /// Starts the worker on the current runtime. Connecting is lazy: an
    /// endpoint that is down now is retried like any other failure.
    pub fn start(signal: Signal, config: &Config, metrics: Metrics) -> Result<Self, ExporterError> {
        let invalid = |reason: String| ExporterError::Endpoint {
            signal: signal.name,
            endpoint: config.endpoint.clone(),
            reason,
        };
        let uri: http::Uri = config
            .endpoint
            .parse()
            .map_err(|e| invalid(format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(invalid(
                "expected http://host:port (plaintext OTLP/gRPC)".to_owned(),
            ));
        }
        metrics.start_at_zero(&signal);
        let channel = Endpoint::from(uri)
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let buffer = Arc::new(Buffer {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: config.buffer_bytes,
            signal,
            metrics: metrics.clone(),
        });
        buffer.set_gauge(0);
        let abort = CancellationToken::new();
        let worker = Worker {
            client: tonic::client::Grpc::new(channel),
            signal,
            config: config.clone(),
            metrics,
            abort: abort.clone(),
        };
        let worker = tokio::spawn(worker.run(buffer.clone()));
        Ok(Exporter {
            buffer,
            abort,
            worker,
        })
    }

    /// Buffers an encoded export request of `items` items; never waits.
    pub fn push(&self, body: Bytes, items: u64) {
        self.buffer.push(Request { body, items });
    }

    /// Sends what is buffered for at most `timeout`, then drops the rest.
    pub async fn shutdown(self, timeout: Duration) {
        self.buffer.close();
        let mut worker = self.worker;
        if tokio::time::timeout(timeout, &mut worker).await.is_err() {
            self.abort.cancel();
            let _ = worker.await;
        }
    }
}

struct Worker {
    client: tonic::client::Grpc<Channel>,
    signal: Signal,
    config: Config,
    metrics: Metrics,
    abort: CancellationToken,
}

impl Worker {
    async fn run(mut self, buffer: Arc<Buffer>) {
        loop {
            let next = tokio::select! {
                next = buffer.pop() => next,
                () = self.abort.cancelled() => None,
            };
            let Some(request) = next else { break };
            self.send(request).await;
        }
        let left = buffer.discard();
        if left > 0 {
            tracing::warn!(
                signal = self.signal.name,
                items = left,
                "shutdown timed out, dropping buffered requests"
            );
            self.metrics.drop(&self.signal, DropReason::Shutdown, left);
        }
    }

    /// Sends one request until it is accepted, refused, or out of retries.
    async fn send(&mut self, request: Request) {
        let signal = self.signal;
        let items = request.items;
        let started = Instant::now();
        let max_elapsed = Duration::from_millis(self.config.retry_max_elapsed_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let mut attempts = 0u32;
        loop {
            let status = match self.attempt(request.body.clone()).await {
                Ok(body) => {
                    let (rejected, message) = (signal.rejected)(&body).unwrap_or_else(|e| {
                        tracing::warn!(signal = signal.name, error = %e, "undecodable export response");
                        (0, String::new())
                    });
                    let rejected = rejected.min(items);
                    if rejected > 0 {
                        tracing::warn!(signal = signal.name, items = rejected, %message, "receiver rejected items");
                        self.metrics.drop(&signal, DropReason::Rejected, rejected);
                    }
                    self.metrics
                        .sent
                        .get_or_create(&labels(&signal))
                        .inc_by(items - rejected);
                    return;
                }
                Err(status) => status,
            };
            let (retry, hint) = retryable(&status);
            let out_of_time = started.elapsed() >= max_elapsed;
            if !retry || out_of_time || self.abort.is_cancelled() {
                let reason = if !retry {
                    DropReason::Rejected
                } else if out_of_time {
                    DropReason::RetriesExhausted
                } else {
                    DropReason::Shutdown
                };
                tracing::warn!(
                    signal = signal.name,
                    items,
                    code = ?status.code(),
                    message = status.message(),
                    reason = reason.as_str(),
                    "dropping a request the receiver did not take"
                );
                self.metrics.drop(&signal, reason, items);
                return;
            }
            attempts += 1;
            let delay = hint.unwrap_or(backoff);
            // The first failure of a request warns; its retries log at debug.
            if attempts == 1 {
                tracing::warn!(signal = signal.name, items, code = ?status.code(), message = status.message(), "export failed, retrying with backoff");
            } else {
                tracing::debug!(signal = signal.name, items, code = ?status.code(), ?delay, "export failed again");
            }
            self.metrics
                .retried
                .get_or_create(&labels(&signal))
                .inc_by(items);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.abort.cancelled() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    async fn attempt(&mut self, body: Bytes) -> Result<Bytes, Status> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let call = async {
            self.client
                .ready()
                .await
                .map_err(|e| Status::unavailable(format!("receiver not reachable: {e}")))?;
            let mut request = tonic::Request::new(body);
            request.set_timeout(timeout);
            let path = http::uri::PathAndQuery::from_static(self.signal.path);
            self.client
                .unary(request, path, Raw)
                .await
                .map(tonic::Response::into_inner)
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, call) => r.unwrap_or_else(|_| Err(Status::deadline_exceeded("export timed out"))),
            () = self.abort.cancelled() => Err(Status::cancelled("shutdown timed out")),
        }
    }
}

/// Sends the encoded request as it is and hands back the encoded response.
#[derive(Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoint_must_be_plain_http() {
        for endpoint in ["https://gw:4317", "gw:4317", "not a url"] {
            let config = Config {
                endpoint: endpoint.to_owned(),
                ..Config::default()
            };
            let err = Exporter::start(PROFILES, &config, Metrics::default())
                .err()
                .unwrap_or_else(|| panic!("{endpoint} accepted"));
            assert!(err.to_string().contains(endpoint), "{err}");
        }
    }
}
