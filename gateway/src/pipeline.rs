//! Where receivers hand over what they decoded: traces go to the exporter's
//! queue and to the span metrics, metrics (converted) and profiles to their
//! exporters' queues; a signal without an exporter is counted as not exported.

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::exporter::TraceQueue;
use crate::metrics::{Metrics, ReceiverLabels, RefusedLabels, SignalLabels};
use crate::otlp::{Refusal, Routed, Signal, retain_valid_spans, span_count};
use crate::profiles::ProfileQueue;
use crate::remote_write::{SeriesQueue, TimeSeries, convert};

/// Sees the spans this member owns, once each, as they are accepted for
/// export (before any sampling): where span metrics are computed. Called on
/// the request path, so it must be quick.
pub trait SpanObserver: Send + Sync + 'static {
    fn observe(&self, spans: &ExportTraceServiceRequest);
}

pub struct Pipeline {
    metrics: Metrics,
    traces: Option<Arc<TraceQueue>>,
    observers: Vec<Arc<dyn SpanObserver>>,
    series: Option<Arc<SeriesQueue>>,
    profiles: Option<Arc<ProfileQueue>>,
}

impl Pipeline {
    pub fn new(metrics: Metrics, traces: Option<Arc<TraceQueue>>) -> Self {
        Pipeline {
            metrics,
            traces,
            observers: Vec::new(),
            series: None,
            profiles: None,
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn SpanObserver>) -> Self {
        self.observers.push(observer);
        self
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

    /// Takes a decoded request; `Ok` means the client may consider it
    /// delivered (the response says which items were rejected, if any).
    pub fn accept<S: Signal>(
        &self,
        request: S::Request,
        transport: &'static str,
    ) -> Result<S::Response, Refusal> {
        let items = S::items(&request);
        let outcome = match S::route(request) {
            Routed::Traces(mut traces) => {
                let (rejected, message) = retain_valid_spans(&mut traces);
                match &self.traces {
                    // Nothing valid left: nothing to queue, nothing to send.
                    _ if traces.resource_spans.is_empty() => Ok((rejected, message)),
                    Some(queue) => queue
                        .reserve(span_count(&traces.resource_spans))
                        .map(|room| {
                            // Observed only once accepted: a refused request
                            // comes again and would be counted twice.
                            self.observe(&traces);
                            room.push(traces.resource_spans);
                            (rejected, message)
                        }),
                    None => {
                        self.observe(&traces);
                        self.not_exported(S::NAME, items - rejected);
                        Ok((rejected, message))
                    }
                }
            }
            Routed::Metrics(request) => self.accept_metrics(request, items),
            Routed::Profiles(request) => self.accept_profiles(request, items),
            Routed::Logs => {
                self.not_exported(S::NAME, items);
                Ok((0, String::new()))
            }
        };
        let labels = ReceiverLabels {
            signal: S::NAME,
            transport,
        };
        match outcome {
            Ok((rejected, message)) => {
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

    fn observe(&self, spans: &ExportTraceServiceRequest) {
        for observer in &self.observers {
            observer.observe(spans);
        }
    }

    /// Converts to Prometheus series and queues them; data points with no
    /// Prometheus form are rejected (partial success).
    fn accept_metrics(
        &self,
        request: ExportMetricsServiceRequest,
        items: u64,
    ) -> Result<(u64, String), Refusal> {
        let Some(queue) = &self.series else {
            self.not_exported(crate::otlp::Metrics::NAME, items);
            return Ok((0, String::new()));
        };
        let converted = convert::convert(&request, &self.metrics.converter);
        let samples = TimeSeries::samples(&converted.series);
        if samples > 0 {
            queue.push(samples, converted.series)?;
        }
        Ok((converted.rejected, converted.message))
    }

    /// Queues the request as it came, for Pyroscope.
    fn accept_profiles(
        &self,
        request: ExportProfilesServiceRequest,
        items: u64,
    ) -> Result<(u64, String), Refusal> {
        match &self.profiles {
            None => self.not_exported(crate::otlp::Profiles::NAME, items),
            Some(_) if items == 0 => {}
            Some(queue) => queue.push(items, Bytes::from(request.encode_to_vec()))?,
        }
        Ok((0, String::new()))
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;
    use crate::otlp::Traces;

    #[test]
    fn a_request_of_only_invalid_spans_queues_nothing() {
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
        let response = pipeline.accept::<Traces>(request, "grpc").unwrap();
        assert_eq!(response.partial_success.unwrap().rejected_spans, 1);
        assert_eq!(queue.held(), 0);
    }
}
