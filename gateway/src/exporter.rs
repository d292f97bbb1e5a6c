//! The traces exporter: one worker that batches queued client requests
//! (see [`crate::queue`]) and sends them to an OTLP/gRPC endpoint, retrying
//! with exponential backoff on retryable errors only.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use crate::config::TracesExporter;
use crate::otlp::{concat_encoded, retryable};
use crate::queue::{ExporterMetrics, Queue};

#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("exporters.traces.endpoint {endpoint:?} is not a valid URL")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Client requests (or their parts) waiting for the traces exporter,
/// encoded, weighed in spans: a batch is their concatenation, and spans
/// forwarded by another member are sent on as they came.
pub type TraceQueue = Queue<Bytes>;

pub struct TraceExporter {
    client: tonic::client::Grpc<Channel>,
    config: TracesExporter,
    metrics: ExporterMetrics,
}

impl TraceExporter {
    pub fn new(
        endpoint: &str,
        config: TracesExporter,
        metrics: ExporterMetrics,
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
            let Some((spans, batch, settle)) = next else {
                break;
            };
            let settled = self.send(spans, concat_encoded(&batch), &abort).await;
            queue.release(spans);
            settle.settle(settled);
        }
        let left = queue.discard();
        if left > 0 {
            tracing::warn!(spans = left, "drain timed out, dropping queued spans");
        }
    }

    /// Sends one batch, retrying retryable failures; counts the outcome.
    /// `false` when it was given up while the error was still retryable.
    async fn send(&mut self, spans: u64, request: Bytes, abort: &CancellationToken) -> bool {
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
                            self.metrics.dropped.inc_by(n);
                            n
                        }
                        None => 0,
                    };
                    self.metrics.sent.inc_by(spans - rejected_spans);
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
                self.metrics.dropped.inc_by(spans);
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
            self.metrics.retried.inc_by(spans);
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
