//! Where receivers hand over what they decoded: traces go to the exporter's
//! queue, other signals are counted as not exported (no exporter yet).

use std::sync::Arc;

use crate::exporter::TraceQueue;
use crate::metrics::{Metrics, ReceiverLabels, RefusedLabels, SignalLabels};
use crate::otlp::{Refusal, Signal, retain_valid_spans};

pub struct Pipeline {
    metrics: Metrics,
    traces: Option<Arc<TraceQueue>>,
}

impl Pipeline {
    pub fn new(metrics: Metrics, traces: Option<Arc<TraceQueue>>) -> Self {
        Pipeline { metrics, traces }
    }

    /// Takes a decoded request; `Ok` means the client may consider it
    /// delivered (the response says which items were rejected, if any).
    pub fn accept<S: Signal>(
        &self,
        request: S::Request,
        transport: &'static str,
    ) -> Result<S::Response, Refusal> {
        let items = S::items(&request);
        let outcome = match S::into_traces(request) {
            Some(mut traces) => {
                let (rejected, message) = retain_valid_spans(&mut traces);
                match &self.traces {
                    // Nothing valid left: nothing to queue, nothing to send.
                    _ if traces.resource_spans.is_empty() => Ok((rejected, message)),
                    Some(queue) => queue
                        .push(traces.resource_spans)
                        .map(|()| (rejected, message)),
                    None => {
                        self.not_exported(S::NAME, items - rejected);
                        Ok((rejected, message))
                    }
                }
            }
            None => {
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
        let queue = Arc::new(TraceQueue::new(10, Metrics::default()));
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
