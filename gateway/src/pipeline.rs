//! Where receivers hand over what they received. Spans go to the member of
//! the ring that owns their trace ID (this one, or another reached over the
//! ring service), where span observers (the span metrics) see them and the
//! traces exporter's queue takes them; metrics (converted) and profiles go
//! to their exporters' queues; a signal without an exporter is counted as
//! not exported.
//!
//! A client's request is acknowledged once every part of it is accepted by
//! its owner: queued here, or, on another member, exported (so a member that
//! dies loses nothing it acknowledged to a forwarder). A part whose owner is
//! unreachable goes to the owner in the next view of the ring, until
//! `ring.forward_timeout_ms`; a part that cannot be placed, or that its owner
//! refuses, makes the whole request fail with the owner's (retryable) error.
//! A retried request may repeat parts already accepted: delivery is at least
//! once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;
use tokio::time::Instant;

use crate::exporter::TraceQueue;
use crate::metrics::{
    ForwardErrorLabels, Metrics, OwnerLabels, ReceiverLabels, RefusedLabels, SignalLabels,
};
use crate::otlp::{
    Refusal, Routed, Signal, concat_encoded, data_points, log_records, profile_count,
};
use crate::profiles::ProfileQueue;
use crate::remote_write::{SeriesQueue, TimeSeries, convert};
use crate::ring::membership::View;
use crate::ring::{ForwardError, Ring};
use crate::wire;

/// Sees the spans this member owns, once each, as they are accepted for
/// export (before any sampling): where span metrics are computed. Called
/// on the request path, so it must be quick.
pub trait SpanObserver: Send + Sync + 'static {
    fn observe(&self, spans: &[wire::Resource<'_>]);
}

/// Takes the body of a `/vispyr.ring.v1.Ring/Deltas` call from another
/// member (series deltas this member owns, in the handler's own encoding).
/// An `Err` goes back to the sender as its gRPC status.
pub trait DeltasHandler: Send + Sync + 'static {
    fn deltas(&self, body: Bytes) -> Result<(), Refusal>;
}

pub struct Pipeline {
    metrics: Metrics,
    traces: Option<Arc<TraceQueue>>,
    ring: Option<Arc<Ring>>,
    observers: Vec<Arc<dyn SpanObserver>>,
    deltas: Option<Arc<dyn DeltasHandler>>,
    series: Option<Arc<SeriesQueue>>,
    profiles: Option<Arc<ProfileQueue>>,
}

impl Pipeline {
    pub fn new(metrics: Metrics, traces: Option<Arc<TraceQueue>>) -> Self {
        Pipeline {
            metrics,
            traces,
            ring: None,
            observers: Vec::new(),
            deltas: None,
            series: None,
            profiles: None,
        }
    }

    /// Routes spans by trace ID over `ring`.
    pub fn with_ring(mut self, ring: Arc<Ring>) -> Self {
        self.ring = Some(ring);
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn SpanObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    pub fn with_deltas_handler(mut self, handler: Arc<dyn DeltasHandler>) -> Self {
        self.deltas = Some(handler);
        self
    }

    pub fn ring(&self) -> Option<&Arc<Ring>> {
        self.ring.as_ref()
    }

    /// Received metrics are converted and queued for remote write here.
    pub fn with_metrics_queue(mut self, queue: Arc<SeriesQueue>) -> Self {
        self.series = Some(queue);
        self
    }

    pub fn with_profiles_queue(mut self, queue: Arc<ProfileQueue>) -> Self {
        self.profiles = Some(queue);
        self
    }

    /// Takes a request; `Ok` means the client may consider it delivered
    /// (the response says which items were rejected, if any).
    pub async fn accept<S: Signal>(
        &self,
        request: Routed,
        transport: &'static str,
    ) -> Result<S::Response, Refusal> {
        let outcome = match request {
            Routed::Traces(request) => self.accept_traces(request).await,
            Routed::Metrics(request) => self.accept_metrics(request),
            Routed::Profiles(request) => self.accept_profiles(request),
            Routed::Logs(request) => {
                let items = log_records(&request);
                self.not_exported(S::NAME, items);
                Ok(Accepted::all(items))
            }
        };
        let labels = ReceiverLabels {
            signal: S::NAME,
            transport,
        };
        match outcome {
            Ok(Accepted {
                items,
                rejected,
                message,
            }) => {
                self.metrics
                    .accepted_items
                    .get_or_create(&labels)
                    .inc_by(items - rejected);
                if rejected > 0 {
                    self.metrics
                        .rejected_items
                        .get_or_create(&labels)
                        .inc_by(rejected);
                }
                Ok(S::response(rejected, message))
            }
            Err(refusal) => Err(self.refused(S::NAME, transport, refusal)),
        }
    }

    /// Checks a client's encoded spans, drops those a trace backend cannot
    /// store (partial success) and hands each of the others to the owner
    /// of its trace.
    async fn accept_traces(&self, request: Bytes) -> Result<Accepted, Refusal> {
        let ring = self.ring.as_ref().map(|ring| (ring, ring.view()));
        let split = split(&request, ring.as_ref().map(|(_, view)| &**view))?;
        match ring {
            Some((ring, view)) => self.route(ring, view, split.parts).await?,
            // Without a ring, all is this member's: one part at most.
            None => {
                for part in split.parts {
                    self.own(part.request, false).await?;
                }
            }
        }
        Ok(Accepted {
            items: split.spans,
            rejected: split.rejected,
            message: split.message,
        })
    }

    /// Hands every part to its owner; `Ok` once all took theirs.
    async fn route(
        &self,
        ring: &Arc<Ring>,
        mut view: Arc<View>,
        mut parts: Vec<wire::Part<Option<usize>>>,
    ) -> Result<(), Refusal> {
        let timeout = ring.forward_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let mut local = Vec::new();
            let mut remote: Vec<(usize, Vec<Bytes>, u64)> = Vec::new();
            for part in parts.drain(..) {
                match part.owner {
                    None => local.push(part.request),
                    Some(i) => match remote.iter_mut().find(|(o, _, _)| *o == i) {
                        Some((_, requests, spans)) => {
                            requests.push(part.request);
                            *spans += part.spans;
                        }
                        None => remote.push((i, vec![part.request], part.spans)),
                    },
                }
            }
            // Local first: if this member's queue is full, nothing is
            // forwarded that the client's retry would send again.
            if !local.is_empty() {
                let spans = self.own(concat_encoded(&local), false).await?;
                self.routed("local", spans);
            }
            if remote.is_empty() {
                return Ok(());
            }
            let forwards = remote.into_iter().map(|(i, requests, spans)| {
                let peer = ring.peer(&view.members()[i].addr);
                let body = concat_encoded(&requests);
                async move { (ring.forward_spans(&peer, body.clone()).await, body, spans) }
            });
            let mut pending = Vec::new();
            let mut refusal = None;
            for (result, body, spans) in futures::future::join_all(forwards).await {
                match result {
                    Ok(()) => self.routed("remote", spans),
                    Err(ForwardError::Unreachable { .. }) => {
                        self.forward_error(ForwardErrorLabels::UNREACHABLE);
                        pending.push(body);
                    }
                    Err(ForwardError::Refused { peer, status }) => {
                        self.forward_error(ForwardErrorLabels::REFUSED);
                        tracing::debug!(peer = %peer, code = ?status.code(), message = status.message(), "owner refused spans");
                        refusal.get_or_insert(Refusal::owner_refused(&peer, &status));
                    }
                }
            }
            if let Some(refusal) = refusal {
                return Err(refusal);
            }
            if pending.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                self.forward_error(ForwardErrorLabels::UNPLACED);
                return Err(Refusal::Unplaced(timeout));
            }
            // The unreachable owner is out of the view by now, unless the
            // view has not moved on: then do not spin.
            if Arc::ptr_eq(&view, &ring.view()) {
                tokio::time::sleep((deadline - now).min(Duration::from_millis(50))).await;
            }
            view = ring.view();
            for request in pending {
                parts.extend(split(&request, Some(&view))?.parts);
            }
        }
    }

    /// Spans this member owns, encoded (an `ExportTraceServiceRequest`):
    /// observed, then queued for export as they are. With `settled`,
    /// returns only once the exporter is done with them. `Ok` says how many
    /// spans they were.
    async fn own(&self, encoded: Bytes, settled: bool) -> Result<u64, Refusal> {
        let reservation = {
            let resources = wire::resources(&encoded)
                .map_err(|e| Refusal::Malformed(format!("invalid protobuf: {e}")))?;
            let spans = wire::span_count(&resources);
            let Some(queue) = &self.traces else {
                self.observe(&resources);
                self.not_exported("traces", spans);
                return Ok(spans);
            };
            let reservation = queue.reserve(spans)?;
            // After the reservation: a refused request is not observed, so
            // the client's retry is not counted twice.
            self.observe(&resources);
            reservation
        };
        let spans = reservation.weight();
        if !settled {
            reservation.push(encoded);
            return Ok(spans);
        }
        match reservation.push_settled(encoded).await {
            Ok(true) => Ok(spans),
            Ok(false) | Err(_) => Err(Refusal::NotExported),
        }
    }

    fn observe(&self, resources: &[wire::Resource<'_>]) {
        for observer in &self.observers {
            observer.observe(resources);
        }
    }

    /// Spans another member forwarded: this member owns them. Answered once
    /// they are exported (or refused for good by the backend). They are
    /// read without a copy and exported as they came: the forwarder checked
    /// them (`wire::split`).
    pub async fn accept_forwarded(&self, body: Bytes) -> Result<(), tonic::Status> {
        let spans = self.own(body, true).await.map_err(|r| r.to_grpc())?;
        self.metrics.ring.received_spans.inc_by(spans);
        Ok(())
    }

    /// Series deltas another member sent to this one, their owner.
    pub fn accept_deltas(&self, body: Bytes) -> Result<(), tonic::Status> {
        match &self.deltas {
            Some(handler) => handler.deltas(body).map_err(|r| r.to_grpc()),
            None => Err(tonic::Status::unimplemented(
                "this member takes no series deltas",
            )),
        }
    }

    fn routed(&self, owner: &'static str, spans: u64) {
        self.metrics
            .ring
            .routed_spans
            .get_or_create(&OwnerLabels { owner })
            .inc_by(spans);
    }

    fn forward_error(&self, reason: &'static str) {
        self.metrics
            .ring
            .forward_errors
            .get_or_create(&ForwardErrorLabels { reason })
            .inc();
    }

    /// Converts to Prometheus series and queues them; data points with no
    /// Prometheus form are rejected (partial success).
    fn accept_metrics(&self, request: ExportMetricsServiceRequest) -> Result<Accepted, Refusal> {
        let items = data_points(&request);
        let Some(queue) = &self.series else {
            self.not_exported(crate::otlp::Metrics::NAME, items);
            return Ok(Accepted::all(items));
        };
        let converted = convert::convert(&request, &self.metrics.converter);
        let samples = TimeSeries::samples(&converted.series);
        if samples > 0 {
            queue.push(samples, converted.series)?;
        }
        Ok(Accepted {
            items,
            rejected: converted.rejected,
            message: converted.message,
        })
    }

    /// Queues the request as it came, for Pyroscope.
    fn accept_profiles(&self, request: ExportProfilesServiceRequest) -> Result<Accepted, Refusal> {
        let items = profile_count(&request);
        match &self.profiles {
            None => self.not_exported(crate::otlp::Profiles::NAME, items),
            Some(_) if items == 0 => {}
            Some(queue) => queue.push(items, Bytes::from(request.encode_to_vec()))?,
        }
        Ok(Accepted::all(items))
    }

    /// Counts a request refused as a whole and hands the refusal back.
    pub fn refused(
        &self,
        signal: &'static str,
        transport: &'static str,
        refusal: Refusal,
    ) -> Refusal {
        self.metrics
            .refused_requests
            .get_or_create(&RefusedLabels {
                signal,
                transport,
                reason: refusal.reason(),
            })
            .inc();
        tracing::debug!(signal, transport, %refusal, "request refused");
        refusal
    }

    fn not_exported(&self, signal: &'static str, items: u64) {
        if items == 0 {
            return;
        }
        self.metrics
            .not_exported_items
            .get_or_create(&SignalLabels { signal })
            .inc_by(items);
        tracing::debug!(signal, items, "no exporter for this signal, dropping");
    }
}

/// The items of a request the pipeline took, and those it rejected
/// (partial success) with why.
struct Accepted {
    items: u64,
    rejected: u64,
    message: String,
}

impl Accepted {
    fn all(items: u64) -> Self {
        Accepted {
            items,
            rejected: 0,
            message: String::new(),
        }
    }
}

/// [`wire::split`] of a client's encoded spans by their owner in `view`
/// (`None`: this member, as without a ring).
fn split(request: &Bytes, view: Option<&View>) -> Result<wire::Split<Option<usize>>, Refusal> {
    wire::split(request, |id| view.and_then(|v| v.owner_index(id)))
        .map_err(|e| Refusal::Malformed(format!("invalid protobuf: {e}")))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::otlp::Traces;

    #[tokio::test]
    async fn a_request_of_only_invalid_spans_queues_nothing() {
        let queue = Arc::new(TraceQueue::new(10, Default::default()));
        let pipeline = Pipeline::new(Metrics::default(), Some(queue.clone()));
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let response = pipeline
            .accept::<Traces>(Traces::route(request), "grpc")
            .await
            .unwrap();
        assert_eq!(response.partial_success.unwrap().rejected_spans, 1);
        assert_eq!(queue.held(), 0);
    }
}
