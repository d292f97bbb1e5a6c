//! What the fuzz targets check, one function per receiver path, each driving
//! the gateway's own decoding: `http::decode_http` (what the OTLP/HTTP handler
//! does with a body), the OTLP/gRPC service itself (tonic's framing,
//! decompression and size limit, then the gateway's decode), and
//! `wire::split`, which reads clients' spans in place instead of decoding
//! them. Also compiled into the gateway's test `fuzz`, which replays the
//! seeds and random mutations of them on stable, so `make test` checks the
//! same invariants:
//!
//! - nothing panics;
//! - allocation stays bounded: a body is refused past [`LIMIT`] bytes before
//!   or after decompression (gzip bombs included), and a decoded request is
//!   at most a fixed multiple of that;
//! - every refusal is a permanent client error naming its problem;
//! - `wire::split` takes exactly the trace requests prost decodes, and its
//!   parts, decoded, are what splitting the decoded request gives
//!   ([`reference_split`]).
//!
//! Input layout: the first byte picks the signal (and, where a target has
//! them, the body format and compression); the rest is the body.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tonic::Code;
use tonic::codegen::Service;
use vispyr_gateway::grpc::OtlpGrpc;
use vispyr_gateway::http::{Format, decode_http};
use vispyr_gateway::metrics::Metrics as GatewayMetrics;
use vispyr_gateway::otlp::{Logs, Metrics, Profiles, Refusal, Routed, Signal, Traces};
use vispyr_gateway::pipeline::Pipeline;
use vispyr_gateway::wire;

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
    match decode_http::<S>(format, encoding, Bytes::copy_from_slice(body), LIMIT) {
        Ok(request) => accepted(request),
        Err(refusal) => refused(&refusal),
    }
}

/// What the pipeline does first with a request: for traces, check and
/// split them (see [`split_like_prost`]).
fn accepted(request: Routed) {
    let size = match &request {
        Routed::Traces(encoded) => encoded.len(),
        Routed::Metrics(r) => r.encoded_len(),
        Routed::Logs(r) => r.encoded_len(),
        Routed::Profiles(r) => r.encoded_len(),
    };
    assert!(
        size <= AMPLIFICATION * LIMIT,
        "a request within the limit decoded to {size} bytes"
    );
    if let Routed::Traces(encoded) = request {
        split_like_prost(&encoded, 3);
    }
}

/// Selector: over how many owners (1 to 4) the spans are split; the rest
/// is an encoded `ExportTraceServiceRequest`.
pub fn trace_split(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    split_like_prost(&Bytes::copy_from_slice(body), usize::from(selector % 4) + 1);
}

/// `wire::split` refuses what prost refuses and takes what it takes; then
/// each part, decoded, is what [`reference_split`] makes of the decoded
/// request for that owner, and the counts and message agree.
pub fn split_like_prost(request: &Bytes, owners: usize) {
    let owner = |id: &[u8]| {
        id.iter().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(*b))
        }) % owners
    };
    let split = wire::split(request, owner);
    let decoded = ExportTraceServiceRequest::decode(request.clone());
    let (split, decoded) = match (split, decoded) {
        (Ok(split), Ok(decoded)) => (split, decoded),
        (Err(_), Err(_)) => return,
        (Ok(_), Err(e)) => panic!("split took a request prost refuses ({e})"),
        (Err(e), Ok(_)) => panic!("split refused a request prost takes ({e})"),
    };
    let spans: usize = decoded
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    let (parts, rejected, message) = reference_split(decoded, owner);
    assert_eq!(split.spans, spans as u64);
    assert_eq!(split.rejected, rejected);
    assert_eq!(split.message, message);
    let got: Vec<(usize, u64, ExportTraceServiceRequest)> = split
        .parts
        .iter()
        .map(|p| {
            let part = ExportTraceServiceRequest::decode(p.request.clone())
                .unwrap_or_else(|e| panic!("a part that prost refuses: {e}"));
            (p.owner, p.spans, part)
        })
        .collect();
    let want: Vec<(usize, u64, ExportTraceServiceRequest)> = parts
        .into_iter()
        .map(|(owner, part)| {
            let spans = part
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len() as u64)
                .sum();
            (owner, spans, part)
        })
        .collect();
    assert!(got == want, "split into {got:?}, not {want:?}");
}

/// The model of `wire::split` on a decoded request: spans a backend
/// cannot store (`wire::span_problem`) dropped and counted, the first
/// named; the others by owner, in the order owners first appear, each
/// under a copy of its resource and scope, opened again wherever a part's
/// previous span came from another one; nothing empty.
pub fn reference_split<K: PartialEq + Copy>(
    request: ExportTraceServiceRequest,
    owner: impl Fn(&[u8]) -> K,
) -> (Vec<(K, ExportTraceServiceRequest)>, u64, String) {
    // Per owner: its part, and where (resource, scope) its last span was.
    type Last = Option<(usize, usize)>;
    let mut parts: Vec<(K, ExportTraceServiceRequest, Last)> = Vec::new();
    let (mut rejected, mut first) = (0u64, None);
    for (ri, rs) in request.resource_spans.iter().enumerate() {
        for (si, ss) in rs.scope_spans.iter().enumerate() {
            for span in &ss.spans {
                if let Some(problem) =
                    wire::span_problem(&span.trace_id, &span.span_id, &span.parent_span_id)
                {
                    rejected += 1;
                    first.get_or_insert_with(|| format!("span {:?}: {problem}", span.name));
                    continue;
                }
                let k = owner(&span.trace_id);
                let at = match parts.iter().position(|p| p.0 == k) {
                    Some(at) => at,
                    None => {
                        parts.push((k, ExportTraceServiceRequest::default(), None));
                        parts.len() - 1
                    }
                };
                let (_, part, last) = &mut parts[at];
                if last.is_none_or(|(r, _)| r != ri) {
                    part.resource_spans.push(ResourceSpans {
                        scope_spans: Vec::new(),
                        ..rs.clone()
                    });
                }
                let resource = part.resource_spans.last_mut().expect("pushed above");
                if *last != Some((ri, si)) {
                    resource.scope_spans.push(ScopeSpans {
                        spans: Vec::new(),
                        ..ss.clone()
                    });
                }
                let scope = resource.scope_spans.last_mut().expect("pushed above");
                scope.spans.push(span.clone());
                *last = Some((ri, si));
            }
        }
    }
    let message = match first {
        None => String::new(),
        Some(first) => format!("{rejected} invalid span(s) rejected; first: {first}"),
    };
    let parts = parts.into_iter().map(|(k, part, _)| (k, part)).collect();
    (parts, rejected, message)
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
