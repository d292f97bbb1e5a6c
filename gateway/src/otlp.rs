//! What every OTLP signal has in common for the receivers: its request and
//! response types, how many items a request holds, and the errors a receiver
//! answers with, mapped once to HTTP and gRPC.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

/// One OTLP signal as the receivers see it.
/// Every `signal` label.
pub const SIGNALS: [&str; 4] = [Traces::NAME, Metrics::NAME, Logs::NAME, Profiles::NAME];

pub trait Signal: Send + Sync + 'static {
    /// `traces`, `metrics`, `logs`, `profiles`: the `signal` label.
    const NAME: &'static str;
    /// Fully qualified gRPC service.
    const GRPC_SERVICE: &'static str;
    /// OTLP/HTTP path.
    const HTTP_PATH: &'static str;
    type Request: Message + Default + serde::de::DeserializeOwned + Send + 'static;
    type Response: Message + Default + serde::Serialize + Send + 'static;
    /// A success response, partial when `rejected > 0`.
    fn response(rejected: u64, message: String) -> Self::Response;
    /// A decoded request (OTLP JSON), as the pipeline takes it.
    fn route(request: Self::Request) -> Routed;
    /// A request message in protobuf (a gRPC message, an OTLP/HTTP
    /// protobuf body), as the pipeline takes it: decoded; a malformed one
    /// is refused with prost's reason.
    fn from_protobuf(bytes: Bytes) -> Result<Routed, Refusal> {
        Self::Request::decode(bytes)
            .map(Self::route)
            .map_err(|e| Refusal::Malformed(format!("invalid protobuf: {e}")))
    }
}

/// A request of any signal, as the pipeline takes it.
pub enum Routed {
    /// An encoded `ExportTraceServiceRequest`, not checked yet: the
    /// pipeline checks and splits it in one pass (`wire::split`).
    Traces(Bytes),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    Profiles(ExportProfilesServiceRequest),
}

pub struct Traces;
pub struct Metrics;
pub struct Logs;
pub struct Profiles;

impl Signal for Traces {
    const NAME: &'static str = "traces";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const HTTP_PATH: &'static str = "/v1/traces";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    /// Encoded once, to go the way of protobuf requests.
    fn route(request: Self::Request) -> Routed {
        Routed::Traces(Bytes::from(request.encode_to_vec()))
    }
    fn from_protobuf(bytes: Bytes) -> Result<Routed, Refusal> {
        Ok(Routed::Traces(bytes))
    }
    fn response(rejected: u64, error_message: String) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message,
            }),
        }
    }
}

impl Signal for Metrics {
    const NAME: &'static str = "metrics";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const HTTP_PATH: &'static str = "/v1/metrics";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    fn route(request: Self::Request) -> Routed {
        Routed::Metrics(request)
    }
    fn response(rejected: u64, error_message: String) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message,
            }),
        }
    }
}

/// The data points of a metrics request.
pub fn data_points(r: &ExportMetricsServiceRequest) -> u64 {
    let points = |d: &Data| match d {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    };
    r.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.data.as_ref().map_or(0, points) as u64)
        .sum()
}

impl Signal for Logs {
    const NAME: &'static str = "logs";
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const HTTP_PATH: &'static str = "/v1/logs";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    fn route(request: Self::Request) -> Routed {
        Routed::Logs(request)
    }
    fn response(rejected: u64, error_message: String) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected as i64,
                error_message,
            }),
        }
    }
}

impl Signal for Profiles {
    const NAME: &'static str = "profiles";
    const GRPC_SERVICE: &'static str =
        "opentelemetry.proto.collector.profiles.v1development.ProfilesService";
    const HTTP_PATH: &'static str = "/v1development/profiles";
    type Request = ExportProfilesServiceRequest;
    type Response = ExportProfilesServiceResponse;
    fn route(request: Self::Request) -> Routed {
        Routed::Profiles(request)
    }
    fn response(rejected: u64, error_message: String) -> Self::Response {
        ExportProfilesServiceResponse {
            partial_success: (rejected > 0).then_some(ExportProfilesPartialSuccess {
                rejected_profiles: rejected as i64,
                error_message,
            }),
        }
    }
}

/// The log records of a logs request.
pub fn log_records(r: &ExportLogsServiceRequest) -> u64 {
    r.resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len() as u64)
        .sum()
}

/// The profiles of a profiles request.
pub fn profile_count(r: &ExportProfilesServiceRequest) -> u64 {
    r.resource_profiles
        .iter()
        .flat_map(|rp| &rp.scope_profiles)
        .map(|sp| sp.profiles.len() as u64)
        .sum()
}

/// Encoded export requests one after the other: the encoding of one
/// request with all their items, as a message is its repeated top-level
/// field (`resource_spans`, ...). How batches are made without encoding
/// anything again.
pub fn concat_encoded(parts: &[Bytes]) -> Bytes {
    if let [only] = parts {
        return only.clone();
    }
    let mut all = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in parts {
        all.extend_from_slice(part);
    }
    all.freeze()
}

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error(
        "request is over the limit of {limit} bytes{}",
        size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        /// When known (a Content-Length).
        size: Option<u64>,
        limit: usize,
    },
    #[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}; use gzip or none")]
    UnsupportedEncoding(String),
    #[error(
        "export queue is full ({queued} of {capacity} items in flight); retry after {}s",
        retry_after.as_secs()
    )]
    QueueFull {
        queued: u64,
        capacity: u64,
        retry_after: Duration,
    },
    #[error("request has {spans} items, more than the queue holds ({capacity}); split it")]
    OverCapacity { spans: u64, capacity: u64 },
    #[error("the gateway is shutting down; retry on another replica")]
    Draining,
    /// The ring member owning some of the spans answered with an error.
    #[error("ring member {member}, the owner of some of these spans, refused them: {message}")]
    OwnerRefused {
        member: String,
        code: tonic::Code,
        message: String,
        /// Set when the owner's error is retryable.
        retry_after: Option<Duration>,
    },
    #[error("no ring member took some of these spans within {0:?}; retry")]
    Unplaced(Duration),
    #[error("the trace backend did not take these spans in time; retry")]
    NotExported,
}

impl Refusal {
    /// Every `reason` label, so that each count starts at zero.
    pub const REASONS: [&'static str; 10] = [
        "malformed",
        "too_large",
        "unsupported_media_type",
        "unsupported_encoding",
        "queue_full",
        "over_capacity",
        "draining",
        "owner_refused",
        "unplaced",
        "not_exported",
    ];

    /// The `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::TooLarge { .. } => "too_large",
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::UnsupportedEncoding(_) => "unsupported_encoding",
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::OverCapacity { .. } => "over_capacity",
            Refusal::Draining => "draining",
            Refusal::OwnerRefused { .. } => "owner_refused",
            Refusal::Unplaced(_) => "unplaced",
            Refusal::NotExported => "not_exported",
        }
    }

    /// The client should retry after this long (HTTP Retry-After, gRPC RetryInfo).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::QueueFull { retry_after, .. } => Some(*retry_after),
            Refusal::Draining | Refusal::Unplaced(_) | Refusal::NotExported => {
                Some(Duration::from_secs(1))
            }
            Refusal::OwnerRefused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Refusal::Malformed(_) => S::BAD_REQUEST,
            Refusal::TooLarge { .. } | Refusal::OverCapacity { .. } => S::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedMediaType(_) | Refusal::UnsupportedEncoding(_) => {
                S::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::QueueFull { .. }
            | Refusal::Draining
            | Refusal::Unplaced(_)
            | Refusal::NotExported => S::SERVICE_UNAVAILABLE,
            Refusal::OwnerRefused {
                retry_after: Some(_),
                ..
            } => S::SERVICE_UNAVAILABLE,
            Refusal::OwnerRefused { .. } => S::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            Refusal::Malformed(_) | Refusal::UnsupportedEncoding(_) => C::InvalidArgument,
            Refusal::UnsupportedMediaType(_) => C::InvalidArgument,
            // Without RetryInfo, RESOURCE_EXHAUSTED is permanent for OTLP clients.
            Refusal::TooLarge { .. } | Refusal::OverCapacity { .. } => C::ResourceExhausted,
            // With RetryInfo: retryable, after the hinted delay.
            Refusal::QueueFull { .. } => C::ResourceExhausted,
            Refusal::Draining | Refusal::Unplaced(_) => C::Unavailable,
            Refusal::NotExported => C::Aborted,
            Refusal::OwnerRefused { code, .. } => *code,
        }
    }

    /// The owner's error as the client should see it (same code, retry hint kept).
    pub fn owner_refused(member: &str, status: &tonic::Status) -> Refusal {
        let (retry, hint) = retryable(status);
        Refusal::OwnerRefused {
            member: member.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
            retry_after: retry.then(|| hint.unwrap_or(Duration::from_secs(1))),
        }
    }

    pub fn to_grpc(&self) -> tonic::Status {
        let code = self.grpc_code();
        match self.retry_after() {
            Some(delay) => tonic::Status::with_details(
                code,
                self.to_string(),
                rpc_status_with_retry_info(code as i32, &self.to_string(), delay),
            ),
            None => tonic::Status::new(code, self.to_string()),
        }
    }
}

pub use vispyr_common::rpc_status::{
    Any, ProtoDuration, RETRY_INFO_TYPE, RetryInfo, RpcStatus, retry_info, retryable,
};

fn rpc_status_with_retry_info(code: i32, message: &str, delay: Duration) -> Bytes {
    vispyr_common::rpc_status::with_retry_info(code, message, delay).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_is_listed_once() {
        let every = [
            Refusal::Malformed(String::new()),
            Refusal::TooLarge {
                size: None,
                limit: 1,
            },
            Refusal::UnsupportedMediaType(String::new()),
            Refusal::UnsupportedEncoding(String::new()),
            Refusal::QueueFull {
                queued: 1,
                capacity: 1,
                retry_after: Duration::from_secs(1),
            },
            Refusal::OverCapacity {
                spans: 2,
                capacity: 1,
            },
            Refusal::Draining,
            Refusal::OwnerRefused {
                member: String::new(),
                code: tonic::Code::Unavailable,
                message: String::new(),
                retry_after: None,
            },
            Refusal::Unplaced(Duration::from_secs(1)),
            Refusal::NotExported,
        ];
        let reasons: Vec<&str> = every.iter().map(Refusal::reason).collect();
        assert_eq!(reasons, Refusal::REASONS);
    }

    #[test]
    fn otlp_json_ids_are_hex_and_enums_ints() {
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}}]},
          "scopeSpans":[{"scope":{"name":"t"},"spans":[{
            "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174",
            "parentSpanId":"","name":"GET /","kind":2,
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"}],
            "status":{"code":2},"unknownField":1}]}]}]}"#;
        let req: ExportTraceServiceRequest = serde_json::from_str(json).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.trace_id,
            [
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(
            span.span_id,
            [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.links[0].span_id[7], 0x75);
        assert_eq!(span.status.as_ref().unwrap().code, 2);

        // Base64 (the protobuf JSON default) is not OTLP JSON: refused, not misread.
        let b64 = json.replace("eee19b7ec3c1b174", "7uGbfsPBsXQ=");
        assert!(serde_json::from_str::<ExportTraceServiceRequest>(&b64).is_err());
    }

    #[test]
    fn response_json_is_camel_case() {
        let r = Traces::response(2, "bad".into());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["partialSuccess"]["rejectedSpans"], 2);
        assert_eq!(json["partialSuccess"]["errorMessage"], "bad");
    }

    #[test]
    fn retry_classification_follows_the_otlp_spec() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(retryable(&Status::new(code, "x")).0, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Internal,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert!(!retryable(&Status::new(code, "x")).0, "{code:?}");
        }
        let full = Refusal::QueueFull {
            queued: 1,
            capacity: 1,
            retry_after: Duration::from_millis(1500),
        }
        .to_grpc();
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(retryable(&full), (true, Some(Duration::from_millis(1500))));
        let over = Refusal::OverCapacity {
            spans: 2,
            capacity: 1,
        }
        .to_grpc();
        assert_eq!(retryable(&over), (false, None));
    }
}
