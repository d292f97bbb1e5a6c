//! The traces exporter: a queue bounded in spans, one worker that batches
//! queued requests and sends them to an OTLP/gRPC endpoint, retrying with
//! exponential backoff on retryable errors only.
//!
//! A span counts against the capacity from the moment room for a client's
//! request is reserved until the backend accepted it or it was dropped, so
//! the queue bounds memory, and a full queue is what clients see as
//! backpressure. A request may ask for a [`Receipt`]: it resolves once the
//! spans are settled (how the owner of forwarded spans acknowledges them only
//! after export).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use crate::config::TracesExporter;
use crate::metrics::{ExporterLabels, Metrics};
use crate::otlp::{Refusal, retryable, span_count};

const LABELS: ExporterLabels = ExporterLabels { exporter: "traces" };

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("exporters.traces.endpoint {endpoint:?} is not a valid URL")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

struct Item {
    spans: u64,
    resource_spans: Vec<ResourceSpans>,
    settled: Option<oneshot::Sender<bool>>,
}

/// Resolves to `true` once the backend took the spans or refused them for
/// good (retrying would not help), `false` when they were given up while
/// retryable (retries exhausted, drain timeout): the sender may retry.
pub type Receipt = oneshot::Receiver<bool>;

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Spans of `items`.
    queued: u64,
    /// Reserved, queued or being sent: what counts against the capacity.
    held: u64,
    /// Queued items whose sender waits for their receipt.
    waiting: usize,
    closed: bool,
}

pub struct TraceQueue {
    state: Mutex<State>,
    notify: Notify,
    capacity: u64,
    metrics: Metrics,
}

impl TraceQueue {
    pub fn new(capacity: u64, metrics: Metrics) -> Self {
        metrics
            .queue_capacity_spans
            .get_or_create(&LABELS)
            .set(capacity as i64);
        metrics.queue_spans.get_or_create(&LABELS).set(0);
        TraceQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one client request; once this returns `Ok` the spans are the
    /// exporter's responsibility and the client may be acknowledged.
    pub fn push(&self, resource_spans: Vec<ResourceSpans>) -> Result<(), Refusal> {
        self.reserve(span_count(&resource_spans))?
            .commit(resource_spans, false);
        Ok(())
    }

    /// Makes room for `spans` spans, or says why not; the room is given back
    /// if the reservation is dropped uncommitted.
    pub fn reserve(&self, spans: u64) -> Result<Reservation<'_>, Refusal> {
        if spans > self.capacity {
            return Err(Refusal::OverCapacity {
                spans,
                capacity: self.capacity,
            });
        }
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::Draining);
        }
        if state.held + spans > self.capacity {
            return Err(Refusal::QueueFull {
                queued: state.held,
                capacity: self.capacity,
                retry_after: Duration::from_secs(1),
            });
        }
        state.held += spans;
        self.set_gauge(&state);
        Ok(Reservation {
            queue: self,
            spans,
            committed: false,
        })
    }

    fn set_gauge(&self, state: &State) {
        self.metrics
            .queue_spans
            .get_or_create(&LABELS)
            .set(state.held as i64);
    }

    /// Refuses further pushes; what is queued is still sent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// Takes the next batch: waits for a first request, then up to
    /// `linger` for `max_spans` to gather (not when closed). `None` once
    /// closed and empty, with no reservation left to commit.
    async fn take(&self, max_spans: u64, linger: Duration) -> Option<Batch> {
        loop {
            {
                let state = self.lock();
                if !state.items.is_empty() {
                    break;
                }
                if state.closed && state.held == 0 {
                    return None;
                }
            }
            self.notify.notified().await;
        }
        let deadline = Instant::now() + linger;
        loop {
            {
                let state = self.lock();
                // Someone waits for a receipt (another member holding its
                // client): send now; batches still form while a send is
                // in flight.
                if state.closed || state.queued >= max_spans || state.waiting > 0 {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let mut state = self.lock();
        let mut batch = Batch::default();
        while let Some(front) = state.items.front() {
            if batch.spans > 0 && batch.spans + front.spans > max_spans {
                break;
            }
            let item = state.items.pop_front().expect("front exists");
            batch.spans += item.spans;
            batch.resource_spans.extend(item.resource_spans);
            if let Some(tx) = item.settled {
                state.waiting -= 1;
                batch.settled.push(tx);
            }
        }
        state.queued -= batch.spans;
        Some(batch)
    }

    /// The spans of a taken batch are gone: sent or dropped.
    fn release(&self, spans: u64) {
        let mut state = self.lock();
        state.held -= spans;
        self.set_gauge(&state);
        if state.closed && state.held == 0 {
            // The worker may wait for the last reservation.
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Drops everything still queued (drain timed out); returns the span count.
    fn discard(&self) -> u64 {
        let mut state = self.lock();
        let spans = state.queued;
        // Dropping the items drops their receipts' senders: "given up".
        state.items.clear();
        state.waiting = 0;
        state.queued = 0;
        state.held -= spans;
        self.set_gauge(&state);
        spans
    }
}

/// Room in the queue for one request, held until committed or dropped.
pub struct Reservation<'a> {
    queue: &'a TraceQueue,
    spans: u64,
    committed: bool,
}

impl Reservation<'_> {
    /// Queues the spans (as many as reserved); with `receipt`, returns what
    /// resolves once they are settled.
    pub fn commit(mut self, resource_spans: Vec<ResourceSpans>, receipt: bool) -> Option<Receipt> {
        let (settled, receipt) = match receipt {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.committed = true;
        let mut state = self.queue.lock();
        state.queued += self.spans;
        state.waiting += usize::from(settled.is_some());
        state.items.push_back(Item {
            spans: self.spans,
            resource_spans,
            settled,
        });
        drop(state);
        self.queue.notify.notify_one();
        receipt
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.queue.release(self.spans);
        }
    }
}

#[derive(Default)]
struct Batch {
    spans: u64,
    resource_spans: Vec<ResourceSpans>,
    settled: Vec<oneshot::Sender<bool>>,
}

pub struct TraceExporter {
    client: tonic::client::Grpc<Channel>,
    config: TracesExporter,
    metrics: Metrics,
}

impl TraceExporter {
    pub fn new(
        endpoint: &str,
        config: TracesExporter,
        metrics: Metrics,
    ) -> Result<Self, ExporterError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|source| ExporterError::Endpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(TraceExporter {
            client: tonic::client::Grpc::new(channel).max_decoding_message_size(16 << 20),
            config,
            metrics,
        })
    }

    /// Sends batches until the queue is closed and empty, or `abort` is
    /// cancelled (the drain ran out of time): then whatever is left is dropped
    /// and counted.
    pub async fn run(mut self, queue: &TraceQueue, abort: CancellationToken) {
        let linger = Duration::from_millis(self.config.batch_timeout_ms);
        loop {
            let next = tokio::select! {
                next = queue.take(self.config.batch_spans.max(1), linger) => next,
                () = abort.cancelled() => break,
            };
            let Some(batch) = next else {
                break;
            };
            let settled = self.send(batch.spans, batch.resource_spans, &abort).await;
            queue.release(batch.spans);
            for tx in batch.settled {
                let _ = tx.send(settled);
            }
        }
        let left = queue.discard();
        if left > 0 {
            self.metrics
                .dropped_spans
                .get_or_create(&LABELS)
                .inc_by(left);
            tracing::warn!(spans = left, "drain timed out, dropping queued spans");
        }
    }

    /// Sends one batch, retrying retryable failures; counts the outcome.
    /// `false` when it was given up while the error was still retryable.
    async fn send(
        &mut self,
        spans: u64,
        resource_spans: Vec<ResourceSpans>,
        abort: &CancellationToken,
    ) -> bool {
        // Encoded once: a retry resends these bytes instead of a deep copy of
        // the batch.
        let request = Bytes::from(ExportTraceServiceRequest { resource_spans }.encode_to_vec());
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let started = Instant::now();
        let max_elapsed = Duration::from_millis(self.config.retry_max_elapsed_ms);
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let mut attempts = 0u32;
        loop {
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(timeout);
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, self.export(req)) => r.unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded("export timed out"))
                }),
                () = abort.cancelled() => Err(tonic::Status::cancelled("drain timed out")),
            };
            let status = match result {
                Ok(response) => {
                    let rejected = response
                        .into_inner()
                        .partial_success
                        .map(|p| (p.rejected_spans.max(0) as u64, p.error_message))
                        .filter(|(n, _)| *n > 0);
                    let rejected_spans = match rejected {
                        Some((n, message)) => {
                            let n = n.min(spans);
                            tracing::warn!(spans = n, %message, "backend rejected spans");
                            self.metrics.dropped_spans.get_or_create(&LABELS).inc_by(n);
                            n
                        }
                        None => 0,
                    };
                    self.metrics
                        .sent_spans
                        .get_or_create(&LABELS)
                        .inc_by(spans - rejected_spans);
                    return true;
                }
                Err(status) => status,
            };
            let (retry, hint) = retryable(&status);
            let give_up = abort.is_cancelled() || started.elapsed() >= max_elapsed;
            if !retry || give_up {
                tracing::warn!(
                    spans,
                    code = ?status.code(),
                    message = status.message(),
                    retryable = retry,
                    "dropping spans the backend did not take"
                );
                self.metrics
                    .dropped_spans
                    .get_or_create(&LABELS)
                    .inc_by(spans);
                return !retry;
            }
            let delay = hint.unwrap_or(backoff);
            attempts += 1;
            if attempts == 1 {
                // The first failure of this batch; later attempts log at debug.
                tracing::warn!(
                    spans,
                    code = ?status.code(),
                    message = status.message(),
                    "export failed, retrying with backoff"
                );
            }
            tracing::debug!(
                spans,
                code = ?status.code(),
                message = status.message(),
                ?delay,
                "export failed, retrying"
            );
            self.metrics
                .retried_spans
                .get_or_create(&LABELS)
                .inc_by(spans);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => {}
            }
            backoff = (backoff * 2).min(max_backoff);
        }
    }
}

impl TraceExporter {
    async fn export(
        &mut self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        self.client
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("trace backend not reachable: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        );
        self.client.unary(request, path, PreEncoded::new()).await
    }
}

/// Sends an already encoded request; decodes the response with prost.
pub(crate) struct PreEncoded<R>(std::marker::PhantomData<fn() -> R>);

impl<R> PreEncoded<R> {
    pub(crate) fn new() -> Self {
        PreEncoded(std::marker::PhantomData)
    }
}

impl<R: Message + Default + Send + 'static> Codec for PreEncoded<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = PreEncoded<R>;
    type Decoder = PreEncoded<R>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded(std::marker::PhantomData)
    }
}

impl<R> Encoder for PreEncoded<R> {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl<R: Message + Default> Decoder for PreEncoded<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src.copy_to_bytes(src.remaining()))
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the backend's response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    use super::*;

    fn spans(n: usize) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    #[tokio::test]
    async fn queue_bounds_held_spans_until_released() {
        let q = TraceQueue::new(10, Metrics::default());
        q.push(spans(4)).unwrap();
        q.push(spans(4)).unwrap();
        assert!(matches!(
            q.push(spans(4)),
            Err(Refusal::QueueFull { queued: 8, .. })
        ));
        assert!(matches!(
            q.push(spans(11)),
            Err(Refusal::OverCapacity { .. })
        ));
        // A batch of at most 5 spans takes one request of 4 (never splits one).
        let n = q.take(5, Duration::ZERO).await.unwrap().spans;
        assert_eq!(n, 4);
        // Taken but not yet sent still counts.
        assert!(q.push(spans(4)).is_err());
        q.release(n);
        q.push(spans(4)).unwrap();
        let batch = q.take(100, Duration::ZERO).await.unwrap();
        assert_eq!((batch.spans, batch.resource_spans.len()), (8, 2));
        q.release(batch.spans);
        q.close();
        assert_eq!(q.push(spans(1)), Err(Refusal::Draining));
        assert!(q.take(100, Duration::ZERO).await.is_none());
        assert_eq!(q.held(), 0);
    }

    #[tokio::test]
    async fn reservations_count_and_receipts_settle() {
        let q = TraceQueue::new(10, Metrics::default());
        let r = q.reserve(6).unwrap();
        assert!(matches!(q.reserve(5), Err(Refusal::QueueFull { .. })));
        drop(r);
        assert_eq!(
            q.held(),
            0,
            "an uncommitted reservation gives its room back"
        );

        let receipt = q.reserve(3).unwrap().commit(spans(3), true).unwrap();
        // Nobody waits an hour's linger when a sender waits for its receipt.
        let batch = tokio::time::timeout(
            Duration::from_secs(10),
            q.take(100, Duration::from_secs(3600)),
        )
        .await
        .expect("no linger")
        .unwrap();
        for tx in batch.settled {
            tx.send(true).unwrap();
        }
        assert_eq!(receipt.await, Ok(true));

        // Closed with a reservation still open: the worker waits for it.
        let r = q.reserve(2).unwrap();
        q.release(3);
        q.close();
        let late = r.commit(spans(2), true).unwrap();
        let batch = q.take(100, Duration::ZERO).await.unwrap();
        assert_eq!(batch.spans, 2);
        drop(batch);
        assert!(late.await.is_err(), "a dropped batch is not settled");
    }
}
