//! Encoded `ExportTraceServiceRequest`s read in place, not decoded into
//! owned structs. One reader serves two uses:
//!
//! - [`split`] takes a client's request (untrusted bytes): it refuses what
//!   prost would refuse (the same messages: bad varints and keys, lengths
//!   past the end, wrong wire types for known fields, strings that are not
//!   UTF-8, nesting past prost's recursion limit), skips unknown fields as
//!   prost does, drops spans a trace backend cannot store, and splits the
//!   rest by the owner of each span's trace ID into one encoded request
//!   per owner by copying byte ranges: no decoding, no re-encoding.
//! - [`resources`] reads the fields span metrics and the service graph
//!   need from a request [`split`] made (on this member, or on the one that
//!   forwarded it): the owner of a trace exports the bytes it got as they
//!   came. It checks only what reading needs: a structure that does not
//!   parse is an error naming the problem, never a panic.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::remote_write::convert::value_string;

/// How deep prost lets messages (and groups of unknown fields) nest.
const RECURSION_LIMIT: u32 = 100;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("truncated message")]
    Truncated,
    #[error("invalid varint")]
    Varint,
    #[error("invalid field key {0}")]
    Key(u64),
    #[error("wire type {0} is not valid")]
    WireType(u64),
    #[error("a group ends that was not started")]
    EndGroup,
    #[error("messages nested more than {RECURSION_LIMIT} deep")]
    TooDeep,
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
    /// A group (a proto2 encoding prost skips in unknown fields), skipped.
    Group,
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
struct Fields<'a> {
    rest: &'a [u8],
    /// prost's recursion budget in this message: a nested message, a
    /// group or an unknown field needs one left.
    depth: u32,
}

impl<'a> Fields<'a> {
    /// A message read without tracking how deep it is (what [`split`]
    /// wrote): groups still stop at the limit, so skipping them cannot
    /// exhaust the stack.
    fn new(message: &'a [u8]) -> Self {
        Fields {
            rest: message,
            depth: RECURSION_LIMIT,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or(WireError::Truncated)?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte holds the 64th bit only.
                return if i == 9 && byte > 1 {
                    Err(WireError::Varint)
                } else {
                    Ok(value)
                };
            }
        }
        Err(WireError::Varint)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    /// A field key: its number and wire type.
    fn key(&mut self) -> Result<(u32, u64), WireError> {
        let key = self.varint()?;
        match u32::try_from(key) {
            Ok(k) if k >> 3 != 0 => Ok((k >> 3, key & 7)),
            _ => Err(WireError::Key(key)),
        }
    }

    fn value(&mut self, number: u32, wire_type: u64) -> Result<Value<'a>, WireError> {
        Ok(match wire_type {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated)?;
                Value::Bytes(self.take(len)?)
            }
            3 => {
                let depth = self.depth.checked_sub(1).ok_or(WireError::TooDeep)?;
                self.skip_group(number, depth)?;
                Value::Group
            }
            4 => return Err(WireError::EndGroup),
            5 => Value::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(WireError::WireType(other)),
        })
    }

    /// Skips the fields of group `number` up to its end, as prost does:
    /// each needs `depth` left, a nested group one more.
    fn skip_group(&mut self, number: u32, depth: u32) -> Result<(), WireError> {
        loop {
            let (inner, wire_type) = self.key()?;
            if wire_type == 4 {
                return if inner == number {
                    Ok(())
                } else {
                    Err(WireError::EndGroup)
                };
            }
            if depth == 0 {
                return Err(WireError::TooDeep);
            }
            if wire_type == 3 {
                self.skip_group(inner, depth - 1)?;
            } else {
                self.value(inner, wire_type)?;
            }
        }
    }

    fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (number, wire_type) = self.key()?;
        Ok(Some((number, self.value(number, wire_type)?)))
    }

    /// [`Self::next_field`], with the field's whole encoding.
    fn next_field_bytes(&mut self) -> Result<Option<Encoded<'a>>, WireError> {
        let before = self.rest;
        let field = self.next_field()?;
        Ok(field.map(|(n, v)| (n, v, &before[..before.len() - self.rest.len()])))
    }
}

/// A field's number, value and whole encoding (key included).
type Encoded<'a> = (u32, Value<'a>, &'a [u8]);

/// Calls `each` with every field of `message`.
fn for_each_field<'a>(
    message: &'a [u8],
    mut each: impl FnMut(u32, Value<'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut fields = Fields::new(message);
    while let Some((number, value)) = fields.next_field()? {
        each(number, value)?;
    }
    Ok(())
}

/// The messages of a trace export request, for checking them as prost
/// decodes them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Schema {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a known field holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Integers, enums and booleans: prost truncates, never refuses.
    Varint,
    Fixed64,
    Fixed32,
    Bytes,
    Str,
    Message(Schema),
}

impl Schema {
    /// Field `number`'s name and kind (opentelemetry-proto 0.33); `None`
    /// for a field prost skips.
    fn field(self, number: u32) -> Option<(&'static str, Kind)> {
        use Kind as K;
        use Schema as S;
        Some(match (self, number) {
            (S::Request, 1) => (
                "ExportTraceServiceRequest.resource_spans",
                K::Message(S::ResourceSpans),
            ),
            (S::ResourceSpans, 1) => ("ResourceSpans.resource", K::Message(S::Resource)),
            (S::ResourceSpans, 2) => ("ResourceSpans.scope_spans", K::Message(S::ScopeSpans)),
            (S::ResourceSpans, 3) => ("ResourceSpans.schema_url", K::Str),
            (S::Resource, 1) => ("Resource.attributes", K::Message(S::KeyValue)),
            (S::Resource, 2) => ("Resource.dropped_attributes_count", K::Varint),
            (S::Resource, 3) => ("Resource.entity_refs", K::Message(S::EntityRef)),
            (S::EntityRef, 1) => ("EntityRef.schema_url", K::Str),
            (S::EntityRef, 2) => ("EntityRef.type", K::Str),
            (S::EntityRef, 3) => ("EntityRef.id_keys", K::Str),
            (S::EntityRef, 4) => ("EntityRef.description_keys", K::Str),
            (S::ScopeSpans, 1) => ("ScopeSpans.scope", K::Message(S::Scope)),
            (S::ScopeSpans, 2) => ("ScopeSpans.spans", K::Message(S::Span)),
            (S::ScopeSpans, 3) => ("ScopeSpans.schema_url", K::Str),
            (S::Scope, 1) => ("InstrumentationScope.name", K::Str),
            (S::Scope, 2) => ("InstrumentationScope.version", K::Str),
            (S::Scope, 3) => ("InstrumentationScope.attributes", K::Message(S::KeyValue)),
            (S::Scope, 4) => ("InstrumentationScope.dropped_attributes_count", K::Varint),
            (S::Span, 1) => ("Span.trace_id", K::Bytes),
            (S::Span, 2) => ("Span.span_id", K::Bytes),
            (S::Span, 3) => ("Span.trace_state", K::Str),
            (S::Span, 4) => ("Span.parent_span_id", K::Bytes),
            (S::Span, 5) => ("Span.name", K::Str),
            (S::Span, 6) => ("Span.kind", K::Varint),
            (S::Span, 7) => ("Span.start_time_unix_nano", K::Fixed64),
            (S::Span, 8) => ("Span.end_time_unix_nano", K::Fixed64),
            (S::Span, 9) => ("Span.attributes", K::Message(S::KeyValue)),
            (S::Span, 10) => ("Span.dropped_attributes_count", K::Varint),
            (S::Span, 11) => ("Span.events", K::Message(S::Event)),
            (S::Span, 12) => ("Span.dropped_events_count", K::Varint),
            (S::Span, 13) => ("Span.links", K::Message(S::Link)),
            (S::Span, 14) => ("Span.dropped_links_count", K::Varint),
            (S::Span, 15) => ("Span.status", K::Message(S::Status)),
            (S::Span, 16) => ("Span.flags", K::Fixed32),
            (S::Event, 1) => ("Event.time_unix_nano", K::Fixed64),
            (S::Event, 2) => ("Event.name", K::Str),
            (S::Event, 3) => ("Event.attributes", K::Message(S::KeyValue)),
            (S::Event, 4) => ("Event.dropped_attributes_count", K::Varint),
            (S::Link, 1) => ("Link.trace_id", K::Bytes),
            (S::Link, 2) => ("Link.span_id", K::Bytes),
            (S::Link, 3) => ("Link.trace_state", K::Str),
            (S::Link, 4) => ("Link.attributes", K::Message(S::KeyValue)),
            (S::Link, 5) => ("Link.dropped_attributes_count", K::Varint),
            (S::Link, 6) => ("Link.flags", K::Fixed32),
            (S::Status, 2) => ("Status.message", K::Str),
            (S::Status, 3) => ("Status.code", K::Varint),
            (S::KeyValue, 1) => ("KeyValue.key", K::Str),
            (S::KeyValue, 2) => ("KeyValue.value", K::Message(S::AnyValue)),
            (S::KeyValue, 3) => ("KeyValue.key_strindex", K::Varint),
            (S::AnyValue, 1) => ("AnyValue.string_value", K::Str),
            (S::AnyValue, 2) => ("AnyValue.bool_value", K::Varint),
            (S::AnyValue, 3) => ("AnyValue.int_value", K::Varint),
            (S::AnyValue, 4) => ("AnyValue.double_value", K::Fixed64),
            (S::AnyValue, 5) => ("AnyValue.array_value", K::Message(S::ArrayValue)),
            (S::AnyValue, 6) => ("AnyValue.kvlist_value", K::Message(S::KeyValueList)),
            (S::AnyValue, 7) => ("AnyValue.bytes_value", K::Bytes),
            (S::AnyValue, 8) => ("AnyValue.string_value_strindex", K::Varint),
            (S::ArrayValue, 1) => ("ArrayValue.values", K::Message(S::AnyValue)),
            (S::KeyValueList, 1) => ("KeyValueList.values", K::Message(S::KeyValue)),
            _ => return None,
        })
    }
}

/// Checks field `number` of a `schema` message with `depth` left, as prost
/// decodes it (nested messages included).
fn check_field(schema: Schema, number: u32, value: Value<'_>, depth: u32) -> Result<(), WireError> {
    let Some((name, kind)) = schema.field(number) else {
        // Skipped, if the message may still nest.
        return if depth == 0 {
            Err(WireError::TooDeep)
        } else {
            Ok(())
        };
    };
    match (kind, value) {
        (Kind::Varint, Value::Varint(_))
        | (Kind::Fixed64, Value::Fixed64(_))
        | (Kind::Fixed32, Value::Fixed32(_))
        | (Kind::Bytes, Value::Bytes(_)) => Ok(()),
        (Kind::Str, value) => value.str(name).map(drop),
        (Kind::Message(inner), Value::Bytes(message)) => {
            check(message, inner, nested(depth)?, |_, _| {})
        }
        _ => Err(WireError::Type(name)),
    }
}

/// The depth left inside a message nested in one with `depth` left.
fn nested(depth: u32) -> Result<u32, WireError> {
    depth.checked_sub(1).ok_or(WireError::TooDeep)
}

/// Checks a `schema` message with `depth` left as prost decodes it,
/// calling `each` with every field.
fn check<'a>(
    message: &'a [u8],
    schema: Schema,
    depth: u32,
    mut each: impl FnMut(u32, Value<'a>),
) -> Result<(), WireError> {
    let mut fields = Fields {
        rest: message,
        depth,
    };
    while let Some((number, value)) = fields.next_field()? {
        check_field(schema, number, value, depth)?;
        each(number, value);
    }
    Ok(())
}

/// The attributes (`repeated KeyValue`) of a message: field `number` of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attributes<'a> {
    message: &'a [u8],
    number: u32,
    /// Set when they are field `inner` of each message in field `number`:
    /// a resource sent in parts, which decoding merges into one.
    inner: Option<u32>,
}

impl<'a> Attributes<'a> {
    /// The first attribute named `key` as text (other types than strings
    /// as the Prometheus conversion writes them); `None` when absent or
    /// empty. Attributes are not read by [`resources`]: one that does not
    /// parse counts as absent (the member that split it had checked it).
    pub fn string(&self, key: &str) -> Option<Cow<'a, str>> {
        self.find_string(key).ok().flatten()
    }

    fn find_string(&self, key: &str) -> Result<Option<Cow<'a, str>>, WireError> {
        let mut found = None;
        let mut named = |kv: &'a [u8]| {
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
            }
            Ok::<_, WireError>(name == key)
        };
        let mut fields = Fields::new(self.message);
        'fields: while let Some((number, value)) = fields.next_field()? {
            if number != self.number {
                continue;
            }
            let bytes = value.bytes("attributes")?;
            let Some(inner) = self.inner else {
                if named(bytes)? {
                    break;
                }
                continue;
            };
            let mut fields = Fields::new(bytes);
            while let Some((number, value)) = fields.next_field()? {
                if number == inner && named(value.bytes("attributes")?)? {
                    break 'fields;
                }
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
    let mut parts = 0;
    for_each_field(message, |n, v| {
        match n {
            1 => {
                let part = v.bytes("ResourceSpans.resource")?;
                parts += 1;
                resource.attributes = if parts == 1 {
                    Attributes {
                        message: part,
                        number: 1,
                        inner: None,
                    }
                } else {
                    Attributes {
                        message,
                        number: 1,
                        inner: Some(1),
                    }
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
    // Where the attributes are (encoders write them together; fields in
    // between are skipped): a lookup reads them only, and a span without
    // any needs no reading at all.
    let mut attributes: Option<(usize, usize)> = None;
    let mut fields = Fields::new(message);
    loop {
        let at = message.len() - fields.rest.len();
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
                let end = message.len() - fields.rest.len();
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
            inner: None,
        };
    }
    Ok(span)
}

/// A client's request after [`split`].
#[derive(Debug)]
pub struct Split<K> {
    /// Spans in the request, valid or not.
    pub spans: u64,
    /// Spans dropped for IDs a trace backend cannot store.
    pub rejected: u64,
    /// What was wrong with the first one dropped; empty when none was.
    pub message: String,
    /// One per owner, in the order owners first appear; none without a
    /// valid span.
    pub parts: Vec<Part<K>>,
}

/// The spans of one owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Part<K> {
    pub owner: K,
    pub spans: u64,
    /// An encoded `ExportTraceServiceRequest`.
    pub request: Bytes,
}

/// Checks an encoded `ExportTraceServiceRequest` as prost decodes it,
/// drops the spans a trace backend cannot store (see [`span_problem`]) and
/// splits the others by `owner` of their trace ID, each under its own
/// resource and scope (resource and scope without a span left are left
/// out). A request with one owner and nothing left out is passed on as it
/// came, without a copy.
pub fn split<K: PartialEq + Copy>(
    request: &Bytes,
    mut owner: impl FnMut(&[u8]) -> K,
) -> Result<Split<K>, WireError> {
    let input: &[u8] = request;
    let mut layout = Layout::default();
    let mut owners: Vec<K> = Vec::new();
    // Spans of one trace usually sit together: look each trace ID up once.
    let mut last: Option<(&[u8], usize)> = None;
    let (mut spans, mut rejected, mut first) = (0u64, 0u64, None);
    // Nothing left out: the request can be passed on as it came.
    let mut whole = true;
    let at = |field: &[u8]| {
        let start = field.as_ptr() as usize - input.as_ptr() as usize;
        start..start + field.len()
    };
    let mut top = Fields {
        rest: input,
        depth: RECURSION_LIMIT,
    };
    while let Some((n, v)) = top.next_field()? {
        let (1, Value::Bytes(message)) = (n, v) else {
            check_field(Schema::Request, n, v, RECURSION_LIMIT)?;
            continue;
        };
        let depth = nested(RECURSION_LIMIT)?;
        let resource = layout.resources.len();
        let header = layout.resource_headers.len();
        let scopes = layout.scopes.len();
        let mut fields = Fields {
            rest: message,
            depth,
        };
        while let Some((n, v, field)) = fields.next_field_bytes()? {
            let (2, Value::Bytes(message)) = (n, v) else {
                check_field(Schema::ResourceSpans, n, v, depth)?;
                header_range(&mut layout.resource_headers, header, at(field));
                continue;
            };
            let depth = nested(depth)?;
            let scope = layout.scopes.len();
            let scope_header = layout.scope_headers.len();
            let before = layout.spans.len();
            let mut fields = Fields {
                rest: message,
                depth,
            };
            while let Some((n, v, field)) = fields.next_field_bytes()? {
                let (2, Value::Bytes(message)) = (n, v) else {
                    check_field(Schema::ScopeSpans, n, v, depth)?;
                    header_range(&mut layout.scope_headers, scope_header, at(field));
                    continue;
                };
                let ids = SpanIds::check(message, nested(depth)?)?;
                spans += 1;
                if let Some(problem) = span_problem(ids.trace_id, ids.span_id, ids.parent_span_id) {
                    rejected += 1;
                    whole = false;
                    first.get_or_insert_with(|| {
                        format!("span {:?}: {problem}", String::from_utf8_lossy(ids.name))
                    });
                    continue;
                }
                let part = match last {
                    Some((id, part)) if id == ids.trace_id => part,
                    _ => {
                        let k = owner(ids.trace_id);
                        let part = owners.iter().position(|o| *o == k).unwrap_or_else(|| {
                            owners.push(k);
                            owners.len() - 1
                        });
                        last = Some((ids.trace_id, part));
                        part
                    }
                };
                layout.spans.push(SpanAt {
                    scope,
                    part,
                    field: at(field),
                });
            }
            whole &= layout.spans.len() > before;
            layout.scopes.push(ScopeAt {
                resource,
                header: scope_header..layout.scope_headers.len(),
            });
        }
        whole &= layout.scopes.len() > scopes;
        layout.resources.push(header..layout.resource_headers.len());
    }
    let message = match first {
        None => String::new(),
        Some(first) => format!("{rejected} invalid span(s) rejected; first: {first}"),
    };
    let parts = match owners[..] {
        [owner] if whole => vec![Part {
            owner,
            spans: spans - rejected,
            request: request.clone(),
        }],
        _ => (0..owners.len())
            .map(|part| layout.part(input, part, owners[part]))
            .collect(),
    };
    Ok(Split {
        spans,
        rejected,
        message,
        parts,
    })
}

/// Why a trace backend cannot store a span with these IDs (of the wrong
/// length, or all zero), if it cannot.
pub fn span_problem(trace_id: &[u8], span_id: &[u8], parent_span_id: &[u8]) -> Option<String> {
    let id = |bytes: &[u8], len: usize, what: &str| -> Option<String> {
        if bytes.len() != len {
            Some(format!("{what} has {} bytes, must have {len}", bytes.len()))
        } else if bytes.iter().all(|b| *b == 0) {
            Some(format!("{what} is all zeroes"))
        } else {
            None
        }
    };
    id(trace_id, 16, "trace_id")
        .or_else(|| id(span_id, 8, "span_id"))
        .or_else(|| {
            (!parent_span_id.is_empty())
                .then(|| id(parent_span_id, 8, "parent_span_id"))
                .flatten()
        })
}

/// What [`split`] needs of a span, which it checks whole.
#[derive(Default)]
struct SpanIds<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a [u8],
}

impl<'a> SpanIds<'a> {
    fn check(span: &'a [u8], depth: u32) -> Result<Self, WireError> {
        let mut ids = SpanIds::default();
        check(span, Schema::Span, depth, |n, v| {
            // The last of a repeated field counts, as when prost decodes.
            if let Value::Bytes(b) = v {
                match n {
                    1 => ids.trace_id = b,
                    2 => ids.span_id = b,
                    4 => ids.parent_span_id = b,
                    5 => ids.name = b,
                    _ => {}
                }
            }
        })?;
        Ok(ids)
    }
}

/// Where [`split`] found what it copies: byte ranges of the request.
#[derive(Default)]
struct Layout {
    /// The fields of each `ResourceSpans` but its scopes (resource,
    /// schema URL, unknown fields), merged where they follow each other.
    resource_headers: Vec<Range<usize>>,
    /// The same of each `ScopeSpans`, but its spans.
    scope_headers: Vec<Range<usize>>,
    /// Each `ResourceSpans`: its `resource_headers`.
    resources: Vec<Range<usize>>,
    scopes: Vec<ScopeAt>,
    /// The spans kept, in order.
    spans: Vec<SpanAt>,
}

struct ScopeAt {
    resource: usize,
    /// Its `scope_headers`.
    header: Range<usize>,
}

struct SpanAt {
    scope: usize,
    part: usize,
    /// The span's field, key included.
    field: Range<usize>,
}

/// `ResourceSpans` field 1 of a request, `ScopeSpans` field 2 of a
/// `ResourceSpans`: both length-delimited.
const RESOURCE_SPANS_KEY: u8 = 1 << 3 | 2;
const SCOPE_SPANS_KEY: u8 = 2 << 3 | 2;

/// Adds `field` to `headers`, of a message whose first is at `first`.
fn header_range(headers: &mut Vec<Range<usize>>, first: usize, field: Range<usize>) {
    let count = headers.len();
    match headers.last_mut() {
        Some(last) if count > first && last.end == field.start => last.end = field.end,
        _ => headers.push(field),
    }
}

fn headers_len(headers: &[Range<usize>]) -> usize {
    headers.iter().map(Range::len).sum()
}

impl Layout {
    /// The encoded request of the spans of `part`.
    fn part<K>(&self, input: &[u8], part: usize, owner: K) -> Part<K> {
        // Lengths come before what they measure: sizes first. Each scope
        // with spans of the part, with its length; then each resource.
        let mut scopes: Vec<(usize, usize)> = Vec::new();
        let mut spans = 0;
        for span in self.spans.iter().filter(|s| s.part == part) {
            spans += 1;
            match scopes.last_mut() {
                Some((scope, len)) if *scope == span.scope => *len += span.field.len(),
                _ => scopes.push((
                    span.scope,
                    headers_len(&self.scope_headers[self.scopes[span.scope].header.clone()])
                        + span.field.len(),
                )),
            }
        }
        let mut resources: Vec<(usize, usize)> = Vec::new();
        for &(scope, len) in &scopes {
            let field = 1 + encoded_len_varint(len as u64) + len;
            let resource = self.scopes[scope].resource;
            match resources.last_mut() {
                Some((r, len)) if *r == resource => *len += field,
                _ => resources.push((
                    resource,
                    headers_len(&self.resource_headers[self.resources[resource].clone()]) + field,
                )),
            }
        }
        let total = resources
            .iter()
            .map(|(_, len)| 1 + encoded_len_varint(*len as u64) + len)
            .sum();
        let mut out = Vec::with_capacity(total);
        let copy = |out: &mut Vec<u8>, headers: &[Range<usize>]| {
            for range in headers {
                out.extend_from_slice(&input[range.clone()]);
            }
        };
        let mut scopes = scopes.into_iter().peekable();
        let mut kept = self.spans.iter().filter(|s| s.part == part).peekable();
        for (resource, len) in resources {
            out.push(RESOURCE_SPANS_KEY);
            encode_varint(len as u64, &mut out);
            copy(
                &mut out,
                &self.resource_headers[self.resources[resource].clone()],
            );
            while let Some((scope, len)) =
                scopes.next_if(|(s, _)| self.scopes[*s].resource == resource)
            {
                out.push(SCOPE_SPANS_KEY);
                encode_varint(len as u64, &mut out);
                copy(
                    &mut out,
                    &self.scope_headers[self.scopes[scope].header.clone()],
                );
                while let Some(span) = kept.next_if(|s| s.scope == scope) {
                    out.extend_from_slice(&input[span.field.clone()]);
                }
            }
        }
        debug_assert_eq!(out.len(), total);
        Part {
            owner,
            spans,
            request: Bytes::from(out),
        }
    }
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
        assert_eq!(resources(&[0x0e]).unwrap_err(), WireError::WireType(6));
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

    /// `split` over owners by the trace ID's first byte, after checking
    /// that it takes the request exactly when prost decodes it.
    fn like_prost(bytes: &[u8]) -> Result<Split<u8>, WireError> {
        let split = split(&Bytes::copy_from_slice(bytes), |id| id[0]);
        let decoded = ExportTraceServiceRequest::decode(bytes);
        assert_eq!(
            split.is_ok(),
            decoded.is_ok(),
            "split: {:?}, prost: {:?}, on {bytes:02x?}",
            split.as_ref().err(),
            decoded.err()
        );
        split
    }

    #[test]
    fn a_resource_sent_in_parts_is_read_merged_as_prost_decodes_it() {
        let attribute = |key: &str, value: &str| ResourceProto {
            attributes: vec![kv(key, any_value::Value::StringValue(value.into()))],
            ..Default::default()
        };
        let scope = ScopeSpans {
            spans: vec![SpanProto {
                trace_id: vec![1; 16],
                span_id: vec![1; 8],
                ..Default::default()
            }],
            ..Default::default()
        };
        let resource_spans = [
            delimited(1, &attribute("service.name", "shop").encode_to_vec()),
            delimited(2, &scope.encode_to_vec()),
            delimited(1, &attribute("host.name", "h1").encode_to_vec()),
            delimited(1, &attribute("service.name", "other").encode_to_vec()),
        ]
        .concat();
        let bytes = delimited(1, &resource_spans);
        let merged = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let attributes = &merged.resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes;
        assert_eq!(attributes.len(), 3);
        let read = resources(&bytes).unwrap();
        let attributes = read[0].attributes;
        assert_eq!(attributes.string("service.name").as_deref(), Some("shop"));
        assert_eq!(attributes.string("host.name").as_deref(), Some("h1"));
        assert_eq!(attributes.string("absent"), None);
        assert_eq!(read[0].spans.len(), 1);
    }

    fn decoded(part: &Part<impl Copy>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(part.request.clone()).expect("a part decodes")
    }

    /// Spans of several traces, with every kind of field OTLP has.
    fn rich() -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, EntityRef, KeyValueList};
        use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
        let nested = any_value::Value::KvlistValue(KeyValueList {
            values: vec![kv(
                "list",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::BytesValue(vec![0xff, 0])),
                    }],
                }),
            )],
        });
        let span = |trace: u8, id: u8| SpanProto {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: vec![id + 100; 8],
            name: format!("op {id}"),
            trace_state: "x=1".into(),
            kind: 2,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![kv("nested", nested.clone())],
            events: vec![Event {
                name: "e".into(),
                attributes: vec![kv("k", any_value::Value::DoubleValue(1.5))],
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![9; 16],
                span_id: vec![9; 8],
                trace_state: "y=2".into(),
                flags: 1,
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: "bad".into(),
            }),
            flags: 0x100,
            dropped_events_count: 3,
            ..Default::default()
        };
        let resource = |name: &str| ResourceProto {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(name.into()),
            )],
            entity_refs: vec![EntityRef {
                r#type: "service".into(),
                id_keys: vec!["service.name".into()],
                ..Default::default()
            }],
            dropped_attributes_count: 1,
        };
        let scope = |name: &str, spans| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                version: "1".into(),
                attributes: vec![kv("a", any_value::Value::BoolValue(true))],
                dropped_attributes_count: 0,
            }),
            spans,
            schema_url: format!("{name}-schema"),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(resource("frontend")),
                    scope_spans: vec![
                        scope("a", vec![span(1, 1), span(2, 2), span(1, 3)]),
                        scope("b", vec![span(2, 4)]),
                    ],
                    schema_url: "r1".into(),
                },
                ResourceSpans {
                    resource: Some(resource("checkout")),
                    scope_spans: vec![scope("c", vec![span(3, 5), span(1, 6)])],
                    schema_url: "r2".into(),
                },
            ],
        }
    }

    #[test]
    fn split_parts_are_the_decoded_request_split() {
        let request = rich();
        let bytes = Bytes::from(request.encode_to_vec());
        // Traces 1 and 3 belong to owner 0, trace 2 to owner 1.
        let split = split(&bytes, |id| u8::from(id[0] == 2)).unwrap();
        assert_eq!((split.spans, split.rejected), (6, 0));
        assert_eq!(split.parts.len(), 2);
        let rs = &request.resource_spans;
        let with = |ri: usize, scopes: Vec<ScopeSpans>| ResourceSpans {
            scope_spans: scopes,
            ..rs[ri].clone()
        };
        let scope = |ri: usize, si: usize, spans: &[usize]| ScopeSpans {
            spans: spans
                .iter()
                .map(|&i| rs[ri].scope_spans[si].spans[i].clone())
                .collect(),
            ..rs[ri].scope_spans[si].clone()
        };
        let p0 = &split.parts[0];
        assert_eq!((p0.owner, p0.spans), (0, 4));
        assert_eq!(
            decoded(p0).resource_spans,
            [
                with(0, vec![scope(0, 0, &[0, 2])]),
                with(1, vec![scope(1, 0, &[0, 1])]),
            ]
        );
        let p1 = &split.parts[1];
        assert_eq!((p1.owner, p1.spans), (1, 2));
        assert_eq!(
            decoded(p1).resource_spans,
            [with(0, vec![scope(0, 0, &[1]), scope(0, 1, &[0])])]
        );
    }

    #[test]
    fn one_owner_passes_the_request_on_as_it_came() {
        let bytes = Bytes::from(rich().encode_to_vec());
        let whole = split(&bytes, |_| 7u8).unwrap();
        assert_eq!(whole.parts.len(), 1);
        let part = &whole.parts[0];
        assert_eq!((part.owner, part.spans), (7, 6));
        // The same bytes, not a copy.
        assert_eq!(part.request.as_ptr(), bytes.as_ptr());
        assert_eq!(part.request.len(), bytes.len());

        // With something left out, a copy without it.
        let mut request = rich();
        request.resource_spans[0].scope_spans[1].spans.clear();
        let bytes = Bytes::from(request.encode_to_vec());
        let copied = split(&bytes, |_| 7u8).unwrap();
        assert_ne!(copied.parts[0].request.as_ptr(), bytes.as_ptr());
        request.resource_spans[0].scope_spans.pop();
        assert_eq!(decoded(&copied.parts[0]), request);

        let empty = split(&Bytes::new(), |_| 0u8).unwrap();
        assert_eq!((empty.spans, empty.parts.len()), (0, 0));
    }

    fn span(trace: Vec<u8>, id: Vec<u8>, parent: Vec<u8>) -> SpanProto {
        SpanProto {
            trace_id: trace,
            span_id: id,
            parent_span_id: parent,
            name: "s".into(),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_spans_are_removed_and_counted() {
        let good = span(vec![1; 16], vec![2; 8], vec![]);
        let req = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![
                            good.clone(),
                            span(vec![1; 15], vec![2; 8], vec![]),
                            span(vec![1; 16], vec![0; 8], vec![]),
                            span(vec![1; 16], vec![2; 8], vec![3; 4]),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span(vec![0; 16], vec![2; 8], vec![])],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let split = like_prost(&req.encode_to_vec()).unwrap();
        assert_eq!((split.spans, split.rejected), (5, 4));
        assert!(
            split.message.starts_with(
                "4 invalid span(s) rejected; first: span \"s\": trace_id has 15 bytes"
            ),
            "{}",
            split.message
        );
        assert_eq!(split.parts.len(), 1);
        let part = decoded(&split.parts[0]);
        assert_eq!(part.resource_spans.len(), 1);
        assert_eq!(part.resource_spans[0].scope_spans[0].spans, vec![good]);
    }

    #[test]
    fn every_truncated_prefix_is_refused_like_prost() {
        let bytes = rich().encode_to_vec();
        // Where a top-level field ends, a prefix is a whole request.
        let mut ends = Vec::new();
        let mut fields = Fields::new(&bytes);
        while fields.next_field().unwrap().is_some() {
            ends.push(bytes.len() - fields.rest.len());
        }
        for end in 0..bytes.len() {
            let split = like_prost(&bytes[..end]);
            assert_eq!(split.is_ok(), end == 0 || ends.contains(&end), "{end}");
        }
    }

    /// `request` encoded, with each `from` in it replaced by `to` (of the
    /// same length).
    fn patched(request: &ExportTraceServiceRequest, from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut bytes = request.encode_to_vec();
        let mut found = false;
        for i in 0..=bytes.len() - from.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                found = true;
            }
        }
        assert!(found, "{from:?} is not in the request");
        bytes
    }

    #[test]
    fn strings_that_are_not_utf8_are_refused_like_prost() {
        let not_utf8 = [0xc3, 0x28, 0xff, 0xfe];
        // A string of each message; the nested one deep in attributes.
        type Set = fn(&mut ExportTraceServiceRequest, String);
        let strings: [(&str, Set); 8] = [
            ("ResourceSpans.schema_url", |r, s| {
                r.resource_spans[1].schema_url = s
            }),
            ("InstrumentationScope.name", |r, s| {
                r.resource_spans[0].scope_spans[1]
                    .scope
                    .as_mut()
                    .unwrap()
                    .name = s
            }),
            ("EntityRef.id_keys", |r, s| {
                r.resource_spans[0].resource.as_mut().unwrap().entity_refs[0].id_keys[0] = s
            }),
            ("Span.name", |r, s| {
                r.resource_spans[1].scope_spans[0].spans[1].name = s
            }),
            ("Status.message", |r, s| {
                r.resource_spans[0].scope_spans[0].spans[2]
                    .status
                    .as_mut()
                    .unwrap()
                    .message = s
            }),
            ("Link.trace_state", |r, s| {
                r.resource_spans[0].scope_spans[0].spans[0].links[0].trace_state = s
            }),
            ("Event.name", |r, s| {
                r.resource_spans[0].scope_spans[0].spans[0].events[0].name = s
            }),
            ("KeyValue.key", |r, s| {
                let span = &mut r.resource_spans[0].scope_spans[0].spans[0];
                let Some(any_value::Value::KvlistValue(list)) =
                    &mut span.attributes[0].value.as_mut().unwrap().value
                else {
                    unreachable!("rich() has a list there")
                };
                list.values[0].key = s
            }),
        ];
        for (field, set) in strings {
            let mut request = rich();
            set(&mut request, "\u{1}MRK".into());
            let bytes = patched(&request, b"\x01MRK", &not_utf8);
            assert_eq!(like_prost(&bytes).unwrap_err(), WireError::Utf8(field));
        }
        // In a bytes field, anything goes.
        let bytes = patched(&rich(), &[0xff, 0], &[0xff, 0xfe]);
        assert_eq!(like_prost(&bytes).unwrap().spans, 6);
    }

    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(value, &mut out);
        out
    }

    /// Field `number` of wire type 2 holding `content`.
    fn delimited(number: u32, content: &[u8]) -> Vec<u8> {
        [
            varint(u64::from(number) << 3 | 2),
            varint(content.len() as u64),
            content.to_vec(),
        ]
        .concat()
    }

    /// One of each wire type under unknown numbers, a group with a nested
    /// group among them.
    fn unknown_fields() -> Vec<u8> {
        [
            varint(99 << 3),
            varint(300),
            varint(98 << 3 | 1),
            vec![1; 8],
            delimited(97, b"abc"),
            varint(96 << 3 | 5),
            vec![2; 4],
            varint(95 << 3 | 3),
            varint(1 << 3),
            vec![1],
            varint(94 << 3 | 3),
            varint(94 << 3 | 4),
            varint(95 << 3 | 4),
        ]
        .concat()
    }

    #[test]
    fn unknown_fields_are_skipped_like_prost_and_kept() {
        let request = rich();
        let unknown = unknown_fields();
        let first = request.resource_spans[0].scope_spans[0].spans[0].clone();
        let second = request.resource_spans[0].scope_spans[0].spans[1].clone();
        let span = |s: &SpanProto| [s.encode_to_vec(), unknown.clone()].concat();
        let scope = [
            unknown.clone(),
            delimited(2, &span(&first)),
            delimited(2, &span(&second)),
            request.resource_spans[0].scope_spans[0]
                .scope
                .as_ref()
                .unwrap()
                .encode_to_vec(),
        ]
        .concat();
        // The scope's own field, after the spans and the unknown fields.
        let scope = [
            scope[..scope.len()
                - request.resource_spans[0].scope_spans[0]
                    .scope
                    .as_ref()
                    .unwrap()
                    .encoded_len()]
                .to_vec(),
            delimited(
                1,
                &request.resource_spans[0].scope_spans[0]
                    .scope
                    .as_ref()
                    .unwrap()
                    .encode_to_vec(),
            ),
        ]
        .concat();
        let resource_spans = [delimited(2, &scope), unknown.clone()].concat();
        let bytes = [
            unknown.clone(),
            delimited(1, &resource_spans),
            unknown.clone(),
        ]
        .concat();
        let expected = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(
            expected.resource_spans[0].scope_spans[0].spans,
            [first.clone(), second.clone()]
        );

        // One owner: passed on as it came, unknown fields and all.
        let whole = split(&Bytes::from(bytes.clone()), |_| 0).unwrap();
        assert_eq!(whole.parts.len(), 1);
        assert_eq!(whole.parts[0].request, bytes);
        // Two: each span with its unknown fields, under its scope.
        let two = split(&Bytes::from(bytes.clone()), |id| id[0]).unwrap();
        assert_eq!(two.parts.len(), 2);
        for (part, span_proto) in two.parts.iter().zip([&first, &second]) {
            assert!(part.request.windows(unknown.len()).any(|w| w == unknown));
            let mut want = expected.clone();
            want.resource_spans[0].scope_spans[0].spans = vec![span_proto.clone()];
            assert_eq!(decoded(part), want);
        }
        // A group that ends with another number is refused, like prost.
        let bad = [delimited(1, &[]), varint(95 << 3 | 3), varint(94 << 3 | 4)].concat();
        assert_eq!(like_prost(&bad).unwrap_err(), WireError::EndGroup);
    }

    #[test]
    fn varints_keys_and_wire_types_are_checked_like_prost() {
        // Field 2: unknown, skipped.
        let ten = |last: u8| [&[0x10][..], &[0x80; 9], &[last]].concat();
        let cases: [(&[u8], Option<WireError>); 10] = [
            // A varint of ten bytes holds one bit in the last.
            (&ten(1), None),
            (&ten(2), Some(WireError::Varint)),
            (&[0x08; 1], Some(WireError::Truncated)),
            // Field number 0.
            (&[0x00, 0x00], Some(WireError::Key(0))),
            (&[0x07, 0x00], Some(WireError::Key(7))),
            // A key over 32 bits.
            (
                &[0x88, 0x80, 0x80, 0x80, 0x10, 0x00],
                Some(WireError::Key(1 << 32 | 8)),
            ),
            (&[0x0e], Some(WireError::WireType(6))),
            (&[0x0c], Some(WireError::EndGroup)),
            // resource_spans as a varint.
            (
                &[0x08, 0x01],
                Some(WireError::Type("ExportTraceServiceRequest.resource_spans")),
            ),
            // A length past the end.
            (&[0x0a, 0x05, 0x00], Some(WireError::Truncated)),
        ];
        for (bytes, error) in cases {
            assert_eq!(like_prost(bytes).err(), error, "{bytes:02x?}");
        }
        // Known fields of a span with the wrong wire type.
        for (field, name) in [
            (varint(6 << 3 | 2), "Span.kind"),
            (varint(7 << 3), "Span.start_time_unix_nano"),
            (varint(16 << 3 | 1), "Span.flags"),
            (varint(1 << 3 | 5), "Span.trace_id"),
        ] {
            let value = match name {
                "Span.kind" => vec![0],
                "Span.start_time_unix_nano" => vec![1],
                "Span.flags" => vec![0; 8],
                _ => vec![0; 4],
            };
            let span = [field, value].concat();
            let bytes = delimited(1, &delimited(2, &delimited(2, &span)));
            assert_eq!(like_prost(&bytes).unwrap_err(), WireError::Type(name));
        }
    }

    #[test]
    fn nesting_stops_where_prost_stops() {
        let (mut accepted, mut refused) = (0, 0);
        for levels in 40..=52 {
            let mut value = AnyValue {
                value: Some(any_value::Value::IntValue(1)),
            };
            for _ in 0..levels {
                value = AnyValue {
                    value: Some(any_value::Value::ArrayValue(
                        opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![value],
                        },
                    )),
                };
            }
            let mut request = rich();
            request.resource_spans[0].scope_spans[0].spans[0].attributes[0].value = Some(value);
            match like_prost(&request.encode_to_vec()) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert_eq!(e, WireError::TooDeep);
                    refused += 1;
                }
            }
        }
        assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
        // Groups in unknown fields count as prost counts them.
        let (mut accepted, mut refused) = (0, 0);
        for levels in 95..=105 {
            let open: Vec<u8> = (0..levels).flat_map(|_| varint(9 << 3 | 3)).collect();
            let close: Vec<u8> = (0..levels).flat_map(|_| varint(9 << 3 | 4)).collect();
            match like_prost(&[open, close].concat()) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert_eq!(e, WireError::TooDeep);
                    refused += 1;
                }
            }
        }
        assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    }
}
