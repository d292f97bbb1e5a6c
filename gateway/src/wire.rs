//! The fields of an encoded `ExportTraceServiceRequest` that span metrics
//! and the service graph read, borrowed from the message instead of decoded
//! into owned structs: the owner of a trace reads forwarded spans this way
//! and exports the bytes as they came, so a forwarded span is decoded with
//! allocations once (by the member that received it from the client), not
//! twice.
//!
//! It reads messages that prost encoded (the receiver decoded and checked
//! the client's request, then encoded its parts): fields of unknown numbers
//! are skipped, a repeated scalar keeps its last value, and a structure that
//! does not parse is an error naming the problem, never a panic.

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use crate::remote_write::convert::value_string;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("truncated message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    Varint,
    #[error("wire type {0} is not supported")]
    WireType(u64),
    #[error("field {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("field {0} has the wrong wire type")]
    Type(&'static str),
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    fn bytes(self, field: &'static str) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError::Type(field)),
        }
    }

    fn str(self, field: &'static str) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| WireError::Utf8(field))
    }

    fn varint(self, field: &'static str) -> Result<u64, WireError> {
        match self {
            Value::Varint(v) => Ok(v),
            _ => Err(WireError::Type(field)),
        }
    }

    fn fixed64(self, field: &'static str) -> Result<u64, WireError> {
        match self {
            Value::Fixed64(v) => Ok(v),
            _ => Err(WireError::Type(field)),
        }
    }
}

/// The fields of a message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.0.split_first().ok_or(WireError::Truncated)?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, WireError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(WireError::WireType(other)),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Calls `each` with every field of `message`.
fn for_each_field<'a>(
    message: &'a [u8],
    mut each: impl FnMut(u64, Value<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut fields = Fields(message);
    while let Some((number, value)) = fields.next_field()? {
        each(number, value)?;
    }
    Ok(())
}

/// The attributes (`repeated KeyValue`) of a message: field `number` of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    message: &'a [u8],
    number: u64,
}

impl<'a> Attributes<'a> {
    /// The first attribute named `key` as text (other types than strings
    /// as the Prometheus conversion writes them); `None` when absent or
    /// empty. Attributes are not read by [`resources`]: one that does not
    /// parse counts as absent (the member that encoded it had decoded it).
    pub fn string(&self, key: &str) -> Option<Cow<'a, str>> {
        self.find_string(key).ok().flatten()
    }

    fn find_string(&self, key: &str) -> Result<Option<Cow<'a, str>>, WireError> {
        let mut found = None;
        let mut fields = Fields(self.message);
        while let Some((number, value)) = fields.next_field()? {
            if number != self.number {
                continue;
            }
            let kv = value.bytes("attributes")?;
            let (mut name, mut any) = ("", None);
            for_each_field(kv, |n, v| {
                match n {
                    1 => name = v.str("KeyValue.key")?,
                    2 => any = Some(v.bytes("KeyValue.value")?),
                    _ => {}
                }
                Ok(())
            })?;
            if name == key {
                found = Some((kv, any));
                break;
            }
        }
        let Some((kv, any)) = found else {
            return Ok(None);
        };
        let mut string = None;
        let mut other = false;
        for_each_field(any.unwrap_or_default(), |n, v| {
            match n {
                1 => string = Some(v.str("AnyValue.string_value")?),
                _ => other = true,
            }
            Ok(())
        })?;
        let text = match (string, other) {
            (Some(s), false) => Cow::Borrowed(s),
            // Rare: the conversion of the decoded value, as elsewhere.
            _ => {
                let kv = KeyValue::decode(kv).map_err(|_| WireError::Type("KeyValue"))?;
                Cow::Owned(value_string(kv.value.as_ref()))
            }
        };
        Ok(Some(text).filter(|t| !t.is_empty()))
    }
}

/// The spans of one resource, flattened over their scopes.
#[derive(Debug, Default)]
pub struct Resource<'a> {
    pub attributes: Attributes<'a>,
    pub spans: Vec<Span<'a>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Span<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `status.code`, 0 (unset) without a status.
    pub status_code: i32,
    pub attributes: Attributes<'a>,
}

impl Span<'_> {
    pub fn seconds(&self) -> f64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano) as f64
            / 1e9
    }
}

/// The resources of an encoded `ExportTraceServiceRequest` and their spans.
pub fn resources(request: &[u8]) -> Result<Vec<Resource<'_>>, WireError> {
    let mut resources = Vec::new();
    for_each_field(request, |n, v| {
        if n == 1 {
            resources.push(resource_spans(v.bytes("resource_spans")?)?);
        }
        Ok(())
    })?;
    Ok(resources)
}

/// The number of spans of `resources`.
pub fn span_count(resources: &[Resource<'_>]) -> u64 {
    resources.iter().map(|r| r.spans.len() as u64).sum()
}

fn resource_spans(message: &[u8]) -> Result<Resource<'_>, WireError> {
    let mut resource = Resource::default();
    for_each_field(message, |n, v| {
        match n {
            1 => {
                resource.attributes = Attributes {
                    message: v.bytes("ResourceSpans.resource")?,
                    number: 1,
                }
            }
            2 => for_each_field(v.bytes("ResourceSpans.scope_spans")?, |n, v| {
                if n == 2 {
                    resource.spans.push(span(v.bytes("ScopeSpans.spans")?)?);
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(resource)
}

fn span(message: &[u8]) -> Result<Span<'_>, WireError> {
    let mut span = Span::default();
    // Where the attributes are (prost writes them together): a lookup
    // reads them only, and a span without any needs no reading at all.
    let mut attributes: Option<(usize, usize)> = None;
    let mut fields = Fields(message);
    loop {
        let at = message.len() - fields.0.len();
        let Some((n, v)) = fields.next_field()? else {
            break;
        };
        match n {
            1 => span.trace_id = v.bytes("Span.trace_id")?,
            2 => span.span_id = v.bytes("Span.span_id")?,
            4 => span.parent_span_id = v.bytes("Span.parent_span_id")?,
            5 => span.name = v.str("Span.name")?,
            // Enums are int32: a negative one is sign-extended to 64 bits.
            6 => span.kind = v.varint("Span.kind")? as i32,
            7 => span.start_time_unix_nano = v.fixed64("Span.start_time_unix_nano")?,
            8 => span.end_time_unix_nano = v.fixed64("Span.end_time_unix_nano")?,
            9 => {
                let end = message.len() - fields.0.len();
                attributes = Some((attributes.map_or(at, |(start, _)| start), end));
            }
            15 => for_each_field(v.bytes("Span.status")?, |n, v| {
                if n == 3 {
                    span.status_code = v.varint("Status.code")? as i32;
                }
                Ok(())
            })?,
            _ => {}
        }
    }
    if let Some((start, end)) = attributes {
        span.attributes = Attributes {
            message: &message[start..end],
            number: 9,
        };
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource as ResourceProto;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span as SpanProto, Status,
    };

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let span = |id: u8, kind: i32, code: Option<i32>| SpanProto {
            trace_id: vec![7; 16],
            span_id: vec![id; 8],
            parent_span_id: if id > 1 { vec![id - 1; 8] } else { vec![] },
            name: format!("op {id}"),
            kind,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_250_000_000,
            attributes: vec![
                kv(
                    "db.system",
                    any_value::Value::StringValue("postgresql".into()),
                ),
                kv("network.peer.port", any_value::Value::IntValue(5432)),
                kv("empty", any_value::Value::StringValue(String::new())),
            ],
            status: code.map(|code| Status {
                code,
                message: "m".into(),
            }),
            trace_state: "x=1".into(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(ResourceProto {
                        attributes: vec![kv(
                            "service.name",
                            any_value::Value::StringValue("shop".into()),
                        )],
                        ..Default::default()
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "lib".into(),
                                ..Default::default()
                            }),
                            spans: vec![span(1, 2, None), span(2, 3, Some(2))],
                            schema_url: "s".into(),
                        },
                        ScopeSpans {
                            spans: vec![span(3, -1, Some(1))],
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                },
                ResourceSpans::default(),
            ],
        }
    }

    #[test]
    fn reads_what_span_metrics_need_as_prost_decodes_it() {
        let bytes = request().encode_to_vec();
        let resources = resources(&bytes).unwrap();
        assert_eq!(resources.len(), 2);
        assert_eq!(span_count(&resources), 3);
        let r = &resources[0];
        assert_eq!(r.attributes.string("service.name").as_deref(), Some("shop"));
        assert_eq!(r.attributes.string("host.name"), None);
        let decoded = request();
        let spans = decoded.resource_spans[0]
            .scope_spans
            .iter()
            .flat_map(|s| &s.spans);
        for (view, span) in r.spans.iter().zip(spans) {
            assert_eq!(view.trace_id, span.trace_id);
            assert_eq!(view.span_id, span.span_id);
            assert_eq!(view.parent_span_id, span.parent_span_id);
            assert_eq!(view.name, span.name);
            assert_eq!(view.kind, span.kind);
            assert_eq!(view.status_code, span.status.as_ref().map_or(0, |s| s.code));
            assert_eq!(view.seconds(), 0.25);
            assert_eq!(
                view.attributes.string("db.system").as_deref(),
                Some("postgresql")
            );
            // Not a string: written as the Prometheus conversion does.
            assert_eq!(
                view.attributes.string("network.peer.port").as_deref(),
                Some("5432")
            );
            assert_eq!(view.attributes.string("empty"), None);
        }
        assert!(resources[1].spans.is_empty());
        assert_eq!(resources[1].attributes.string("service.name"), None);
    }

    #[test]
    fn a_broken_message_is_an_error_not_a_panic() {
        let bytes = request().encode_to_vec();
        for end in 0..bytes.len() {
            // Every prefix parses or fails; none panics.
            let _ = resources(&bytes[..end]);
        }
        assert_eq!(
            resources(&bytes[..bytes.len() - 1]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(resources(&[0x0b]).unwrap_err(), WireError::WireType(3));
        assert_eq!(resources(&[0x08, 0xff]).unwrap_err(), WireError::Truncated);
        assert_eq!(resources(&[0x08; 1]).unwrap_err(), WireError::Truncated);
        assert_eq!(
            resources(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .unwrap_err(),
            WireError::Varint
        );
        // resource_spans as a varint.
        assert_eq!(
            resources(&[0x08, 0x01]).unwrap_err(),
            WireError::Type("resource_spans")
        );
        // A span name that is not UTF-8.
        let span = [0x2a, 0x01, 0xff];
        let scope = [&[0x12, span.len() as u8][..], &span].concat();
        let rs = [&[0x12, scope.len() as u8][..], &scope].concat();
        let req = [&[0x0a, rs.len() as u8][..], &rs].concat();
        assert_eq!(resources(&req).unwrap_err(), WireError::Utf8("Span.name"));
    }
}
