//! What the fuzz targets check, one function per receiver path, each driving
//! the gateway's own decoding: `http::decode_http` (what the OTLP/HTTP handler
//! does with a body) and the OTLP/gRPC service itself (tonic's framing,
//! decompression and size limit, then the gateway's decode). Also compiled
//! into the gateway's test `fuzz`, which replays the seeds and random
//! mutations of them on stable, so `make test` checks the same invariants:
//!
//! - nothing panics;
//! - allocation stays bounded: a body is refused past [`LIMIT`] bytes before
//!   or after decompression (gzip bombs included), and a decoded request is
//!   at most a fixed multiple of that;
//! - every refusal is a permanent client error naming its problem.
//!
//! Input layout: the first byte picks the signal (and, where a target has
//! them, the body format and compression); the rest is the body.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::Code;
use tonic::codegen::Service;
use vispyr_gateway::grpc::OtlpGrpc;
use vispyr_gateway::http::{Format, decode_http};
use vispyr_gateway::metrics::Metrics as GatewayMetrics;
use vispyr_gateway::otlp::{
    Logs, Metrics, Profiles, Refusal, Routed, Signal, Traces, retain_valid_spans,
};
use vispyr_gateway::pipeline::Pipeline;

/// The receivers' size limit here: small, so that bombs reach it quickly.
pub const LIMIT: usize = 64 * 1024;

/// A decoded request may hold more than its encoding (OTLP JSON's `1,` is a
/// protobuf fixed64), but never more than this many times the limit.
const AMPLIFICATION: usize = 8;

pub fn http_protobuf(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    http(selector, Format::Protobuf, None, body);
}

pub fn http_json(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    http(selector, Format::Json, None, body);
}

/// Selector bit 2: the body is OTLP JSON, else protobuf.
pub fn http_gzip(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 4 == 0 {
        Format::Protobuf
    } else {
        Format::Json
    };
    http(selector, format, Some(b"gzip"), body);
}

fn http(selector: u8, format: Format, encoding: Option<&[u8]>, body: &[u8]) {
    match selector % 4 {
        0 => http_signal::<Traces>(format, encoding, body),
        1 => http_signal::<Metrics>(format, encoding, body),
        2 => http_signal::<Logs>(format, encoding, body),
        _ => http_signal::<Profiles>(format, encoding, body),
    }
}

fn http_signal<S: Signal>(format: Format, encoding: Option<&[u8]>, body: &[u8]) {
    match decode_http::<S>(format, encoding, body, LIMIT) {
        Ok(request) => accepted::<S>(request),
        Err(refusal) => refused(&refusal),
    }
}

/// What the pipeline does first with a decoded request: count its items
/// and, for traces, drop the spans a backend cannot store.
fn accepted<S: Signal>(request: S::Request) {
    let size = request.encoded_len();
    assert!(
        size <= AMPLIFICATION * LIMIT,
        "a request within the limit decoded to {size} bytes"
    );
    let items = S::items(&request);
    if let Routed::Traces(mut traces) = S::route(request) {
        let (rejected, message) = retain_valid_spans(&mut traces);
        assert!(rejected <= items, "{rejected} of {items} spans rejected");
        assert_eq!(rejected == 0, message.is_empty(), "{message:?}");
    }
}

fn refused(refusal: &Refusal) {
    let reason = match refusal {
        Refusal::Malformed(reason) => reason.as_str(),
        Refusal::TooLarge { .. } | Refusal::UnsupportedEncoding(_) => "",
        other => panic!("decoding refused with {other:?}"),
    };
    assert!(
        !matches!(refusal, Refusal::Malformed(_)) || !reason.is_empty(),
        "malformed without a reason"
    );
    assert!(refusal.http_status().is_client_error(), "{refusal:?}");
    assert_eq!(refusal.retry_after(), None, "{refusal:?}");
}

/// Selector bit 2: the request says `grpc-encoding: gzip`. The body is the
/// HTTP/2 request body: length-prefixed gRPC messages. Returns the answer's
/// status code.
pub fn grpc(data: &[u8]) -> Option<Code> {
    let (&selector, body) = data.split_first()?;
    let gzip = selector & 4 != 0;
    let body = Bytes::copy_from_slice(body);
    let (code, message) = match selector % 4 {
        0 => grpc_signal::<Traces>(gzip, body),
        1 => grpc_signal::<Metrics>(gzip, body),
        2 => grpc_signal::<Logs>(gzip, body),
        _ => grpc_signal::<Profiles>(gzip, body),
    };
    // The gRPC compression spec wants INTERNAL for a compressed message
    // without an encoding; anything else wrong is the client's to fix.
    let spec_internal = code == Code::Internal && message.contains("no grpc-encoding");
    assert!(
        spec_internal
            || matches!(
                code,
                Code::Ok | Code::InvalidArgument | Code::ResourceExhausted
            ),
        "gRPC answered {code:?}: {message}"
    );
    Some(code)
}

/// One Export call through the real service: its answer's status.
/// Without a ring or exporters, the pipeline accepts whatever decodes.
fn grpc_signal<S: Signal>(gzip: bool, body: Bytes) -> (Code, String) {
    static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();
    let pipeline = PIPELINE.get_or_init(|| {
        let mut registry = prometheus_client::registry::Registry::default();
        Arc::new(Pipeline::new(GatewayMetrics::register(&mut registry), None))
    });
    let mut request = http::Request::post(format!("/{}/Export", S::GRPC_SERVICE))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if gzip {
        request = request.header("grpc-encoding", "gzip");
    }
    let request = request
        .body(Full::new(body))
        .expect("a request from constant parts");
    let mut service = OtlpGrpc::<S>::new(pipeline.clone(), LIMIT);
    runtime().block_on(async move {
        let response = match service.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if let Some(status) = tonic::Status::from_header_map(response.headers()) {
            return status_code(&status);
        }
        let trailers = response
            .into_body()
            .collect()
            .await
            .expect("the response body is in memory")
            .trailers()
            .cloned()
            .unwrap_or_default();
        match tonic::Status::from_header_map(&trailers) {
            Some(status) => status_code(&status),
            None => panic!("a gRPC answer without grpc-status"),
        }
    })
}

fn status_code(status: &tonic::Status) -> (Code, String) {
    let (retryable, _) = vispyr_gateway::otlp::retryable(status);
    assert!(
        status.code() == Code::Ok || !retryable,
        "bad input answered as retryable: {status:?}"
    );
    assert!(
        status.code() == Code::Ok || !status.message().is_empty(),
        "an error without a reason: {status:?}"
    );
    (status.code(), status.message().to_owned())
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}
