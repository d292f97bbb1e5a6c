//! OTLP/gRPC receiver: the four `Export` services, served by tonic.
//!
//! Each service decodes the protobuf itself (tonic's codec would answer a
//! malformed message with INTERNAL; OTLP wants INVALID_ARGUMENT) and turns an
//! over-size message into RESOURCE_EXHAUSTED without retry hint (tonic says
//! OUT_OF_RANGE, which OTLP clients would retry forever).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{
    Body, BoxFuture, CompressionEncoding, Context, EnabledCompressionEncodings, Poll, Service,
    StdError,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};

use crate::otlp::{Refusal, Signal};
use crate::pipeline::Pipeline;

/// The `transport` label of what arrives here.
pub const TRANSPORT: &str = "grpc";

pub struct OtlpGrpc<S> {
    pipeline: Arc<Pipeline>,
    max_request_bytes: usize,
    signal: PhantomData<fn() -> S>,
}

impl<S> OtlpGrpc<S> {
    pub fn new(pipeline: Arc<Pipeline>, max_request_bytes: usize) -> Self {
        OtlpGrpc {
            pipeline,
            max_request_bytes,
            signal: PhantomData,
        }
    }
}

impl<S> Clone for OtlpGrpc<S> {
    fn clone(&self) -> Self {
        OtlpGrpc::new(self.pipeline.clone(), self.max_request_bytes)
    }
}

impl<S: Signal> NamedService for OtlpGrpc<S> {
    const NAME: &'static str = S::GRPC_SERVICE;
}

impl<S, B> Service<http::Request<B>> for OtlpGrpc<S>
where
    S: Signal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let export = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix("/Export"))
            == Some(S::GRPC_SERVICE);
        let this = self.clone();
        Box::pin(async move {
            if !export {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(RawCodec::<S::Response>::new())
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(this.max_request_bytes), None);
            let pipeline = this.pipeline.clone();
            let mut response = grpc
                .unary(
                    Export::<S> {
                        pipeline,
                        signal: PhantomData,
                    },
                    req,
                )
                .await;
            tonic_refusals_as_otlp(&this, response.headers_mut());
            Ok(response)
        })
    }
}

/// Tonic refuses an over-size message with OUT_OF_RANGE (retryable for OTLP
/// clients) and a malformed frame (truncated, missing, bad compression) with
/// INTERNAL: make them the permanent RESOURCE_EXHAUSTED and INVALID_ARGUMENT
/// that OTLP wants for bad requests, and count them. The compressed flag
/// without a `grpc-encoding` stays INTERNAL, as the gRPC compression spec
/// requires.
fn tonic_refusals_as_otlp<S: Signal>(svc: &OtlpGrpc<S>, headers: &mut http::HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let over_size = matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted)
        && (message.contains("too large") || message.contains("size limit"));
    let malformed = status.code() == Code::Internal
        && [
            "Unexpected EOF decoding stream",
            "Missing request message",
            "Error decompressing",
            "received message with invalid compression flag",
        ]
        .iter()
        .any(|m| message.contains(m));
    let refusal = if over_size {
        Refusal::TooLarge {
            size: None,
            limit: svc.max_request_bytes,
        }
    } else if malformed {
        Refusal::Malformed(format!("invalid gRPC message: {message}"))
    } else {
        return;
    };
    let refusal = svc.pipeline.refused(S::NAME, TRANSPORT, refusal);
    let text = match &refusal {
        Refusal::TooLarge { .. } => format!("{refusal} ({message})"),
        _ => refusal.to_string(),
    };
    let replacement = Status::new(refusal.grpc_code(), text);
    let _ = replacement.add_header(headers);
}

struct Export<S> {
    pipeline: Arc<Pipeline>,
    signal: PhantomData<fn() -> S>,
}

impl<S: Signal> UnaryService<Bytes> for Export<S> {
    type Response = S::Response;
    type Future = BoxFuture<tonic::Response<S::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let result = match S::from_protobuf(request.into_inner()) {
                Ok(request) => pipeline.accept::<S>(request, TRANSPORT).await,
                Err(refusal) => Err(pipeline.refused(S::NAME, TRANSPORT, refusal)),
            };
            result
                .map(tonic::Response::new)
                .map_err(|refusal| refusal.to_grpc())
        })
    }
}

/// Hands the message bytes to the service undecoded; encodes responses with prost.
pub(crate) struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R> RawCodec<R> {
    pub(crate) fn new() -> Self {
        RawCodec(PhantomData)
    }
}

impl<R: Message + Send + 'static> Codec for RawCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = RawCodec<R>;
    type Decoder = RawCodec<R>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec(PhantomData)
    }
}

impl<R: Message> Encoder for RawCodec<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl<R> Decoder for RawCodec<R> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}
