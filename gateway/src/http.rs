//! OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` and
//! `/v1development/profiles`, protobuf or JSON, optionally gzip-compressed.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;

use crate::otlp::{Logs, Metrics, Profiles, Refusal, Routed, RpcStatus, Signal, Traces};
use crate::pipeline::Pipeline;

/// The `transport` label of what arrives here.
pub const TRANSPORT: &str = "http";

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct Receiver {
    pipeline: Arc<Pipeline>,
    max_request_bytes: usize,
}

pub fn router(pipeline: Arc<Pipeline>, max_request_bytes: usize) -> Router {
    Router::new()
        .route(Traces::HTTP_PATH, post(export::<Traces>))
        .route(Metrics::HTTP_PATH, post(export::<Metrics>))
        .route(Logs::HTTP_PATH, post(export::<Logs>))
        .route(Profiles::HTTP_PATH, post(export::<Profiles>))
        .with_state(Receiver {
            pipeline,
            max_request_bytes,
        })
}

/// The body formats OTLP/HTTP accepts.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

async fn export<S: Signal>(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Errors about the content type itself are answered in JSON, readable by anyone.
    let format = match format(headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes)) {
        Ok(format) => format,
        Err(refusal) => {
            let refusal = receiver.pipeline.refused(S::NAME, TRANSPORT, refusal);
            return error(Format::Json, &refusal);
        }
    };
    let limit = receiver.max_request_bytes;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes);
    let result = match read_body(&headers, body, limit).await {
        Ok(raw) => match decode_http::<S>(format, encoding, raw, limit) {
            Ok(request) => receiver.pipeline.accept::<S>(request, TRANSPORT).await,
            Err(refusal) => Err(receiver.pipeline.refused(S::NAME, TRANSPORT, refusal)),
        },
        Err(refusal) => Err(receiver.pipeline.refused(S::NAME, TRANSPORT, refusal)),
    };
    match result {
        Ok(response) => {
            let body = match format {
                Format::Protobuf => response.encode_to_vec(),
                Format::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                body,
            )
                .into_response()
        }
        Err(refusal) => error(format, &refusal),
    }
}

/// The body format a Content-Type names (parameters and case ignored).
pub fn format(content_type: Option<&[u8]>) -> Result<Format, Refusal> {
    let raw = String::from_utf8_lossy(content_type.unwrap_or_default()).into_owned();
    let essence = raw.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if essence.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(Refusal::UnsupportedMediaType(raw))
    }
}

/// The raw request body, refused as soon as it is known to be over `limit`
/// bytes (Content-Length, or while reading).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limit as u64
    {
        return Err(Refusal::TooLarge {
            size: Some(len),
            limit,
        });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Refusal::TooLarge { size: None, limit })
        }
        Err(e) => Err(Refusal::Malformed(format!("cannot read the body: {e}"))),
    }
}

/// Decodes an OTLP/HTTP request body as the receiver does: its
/// Content-Encoding (none, `identity` or `gzip`), at most `limit` bytes
/// before and after decompression, then protobuf or OTLP JSON, as the
/// pipeline takes it ([`Signal::from_protobuf`]: spans are checked by the
/// pipeline, in the pass that splits them). With that check, this is the
/// whole of what the receiver does with untrusted bytes (the fuzz targets
/// drive both), so every failure is a [`Refusal`] naming the problem.
pub fn decode_http<S: Signal>(
    format: Format,
    content_encoding: Option<&[u8]>,
    body: Bytes,
    limit: usize,
) -> Result<Routed, Refusal> {
    let gzip = match content_encoding {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"identity") => false,
        Some(v) if v.eq_ignore_ascii_case(b"gzip") => true,
        Some(v) => {
            return Err(Refusal::UnsupportedEncoding(
                String::from_utf8_lossy(v).into_owned(),
            ));
        }
    };
    if body.len() > limit {
        return Err(Refusal::TooLarge {
            size: Some(body.len() as u64),
            limit,
        });
    }
    let bytes = if gzip {
        Bytes::from(gunzip(&body, limit)?)
    } else {
        body
    };
    match format {
        Format::Protobuf => S::from_protobuf(bytes),
        Format::Json => serde_json::from_slice(&bytes)
            .map(S::route)
            .map_err(|e| Refusal::Malformed(format!("invalid OTLP JSON: {e}"))),
    }
}

fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refusal::Malformed(format!("invalid gzip body: {e}")))?;
    if out.len() > limit {
        return Err(Refusal::TooLarge { size: None, limit });
    }
    Ok(out)
}

/// An OTLP/HTTP error: the status code, `Retry-After` when retryable, and a
/// `google.rpc.Status` body in the request's format.
fn error(format: Format, refusal: &Refusal) -> Response {
    let status = RpcStatus {
        code: refusal.grpc_code() as i32,
        message: refusal.to_string(),
        details: Vec::new(),
    };
    let body = match format {
        Format::Protobuf => status.encode_to_vec(),
        Format::Json => serde_json::to_vec(&status).unwrap_or_default(),
    };
    let mut response = (
        refusal.http_status(),
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response();
    if let Some(after) = refusal.retry_after() {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn content_type_parameters_and_case_are_ignored() {
        assert_eq!(
            format(Some(b"Application/JSON; charset=utf-8")),
            Ok(Format::Json)
        );
        assert_eq!(
            format(Some(b"text/plain")),
            Err(Refusal::UnsupportedMediaType("text/plain".into()))
        );
        assert!(format(None).is_err());
    }

    #[test]
    fn gzip_bombs_stop_at_the_limit() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let small = enc.finish().unwrap();
        assert!(small.len() < 4096);
        assert_eq!(gunzip(&small, 1 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip(&small, 1000),
            Err(Refusal::TooLarge { .. })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(Refusal::Malformed(_))
        ));
    }
}
