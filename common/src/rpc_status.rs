//! `google.rpc.Status` and `google.rpc.RetryInfo`, the two messages the
//! OTLP spec uses for errors, and what a client makes of them: written here
//! once for the gateway (which sends and reads them) and the node-agent
//! (which reads them), rather than pulling in a googleapis crate.

use std::time::Duration;

use prost::Message;

/// `google.rpc.Status`, the body of an OTLP/HTTP error response.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Any>,
}

#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct Any {
    #[prost(string, tag = "1")]
    #[serde(rename = "@type")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(skip)]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// An encoded `google.rpc.Status` asking the client to retry after `delay`.
pub fn with_retry_info(code: i32, message: &str, delay: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code,
        message: message.to_owned(),
        details: vec![Any {
            type_url: RETRY_INFO_TYPE.to_owned(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// The RetryInfo delay a gRPC status carries, if any.
pub fn retry_info(status: &tonic::Status) -> Option<Duration> {
    let details = RpcStatus::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .filter(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|any| RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// Whether an export that failed with `status` may succeed if sent again
/// (OTLP spec, "Failures"), and the delay the server asked for.
pub fn retryable(status: &tonic::Status) -> (bool, Option<Duration>) {
    use tonic::Code as C;
    match status.code() {
        C::Unavailable
        | C::Cancelled
        | C::DeadlineExceeded
        | C::Aborted
        | C::OutOfRange
        | C::DataLoss => (true, retry_info(status)),
        C::ResourceExhausted => match retry_info(status) {
            Some(delay) => (true, Some(delay)),
            None => (false, None),
        },
        _ => (false, None),
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    #[test]
    fn only_otlp_retryable_codes_retry() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert!(retryable(&Status::new(code, "")).0, "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::ResourceExhausted,
        ] {
            assert!(!retryable(&Status::new(code, "")).0, "{code:?}");
        }
        let hint = RpcStatus {
            code: 0,
            message: String::new(),
            details: vec![Any {
                type_url: RETRY_INFO_TYPE.to_owned(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: 2,
                        nanos: 0,
                    }),
                }
                .encode_to_vec(),
            }],
        }
        .encode_to_vec();
        let status = Status::with_details(Code::ResourceExhausted, "slow down", hint.into());
        assert_eq!(retryable(&status), (true, Some(Duration::from_secs(2))));
    }
}
