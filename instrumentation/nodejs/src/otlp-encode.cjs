'use strict';
// OTLP protobuf encoding of ended spans, one span at a time, into a growing
// Buffer (see src/span-export.cjs for why). The output is byte for byte what
// @opentelemetry/otlp-transformer's ProtobufTraceSerializer writes for the
// same spans (same fields, same order, same defaults written, minimal length
// prefixes); test/span-encoding.test.mjs compares the two.
//
// Messages (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto):
//   ExportTraceServiceRequest { 1 resource_spans }
//   ResourceSpans { 1 resource, 2 scope_spans, 3 schema_url }
//   ScopeSpans    { 1 scope, 2 spans, 3 schema_url }
//   Span { 1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name,
//          6 kind, 7 start_time_unix_nano, 8 end_time_unix_nano,
//          9 attributes, 10 dropped_attributes_count, 11 events,
//          12 dropped_events_count, 13 links, 14 dropped_links_count,
//          15 status, 16 flags }
//   Event  { 1 time_unix_nano, 2 name, 3 attributes, 4 dropped_attributes_count }
//   Link   { 1 trace_id, 2 span_id, 3 trace_state, 4 attributes,
//            5 dropped_attributes_count, 6 flags }
//   Status { 2 message, 3 code }
//   Resource { 1 attributes, 2 dropped_attributes_count }
//   InstrumentationScope { 1 name, 2 version, 3 attributes, 4 dropped_attributes_count }
//   KeyValue { 1 key, 2 value }   KeyValueList { 1 values }   ArrayValue { 1 values }
//   AnyValue { 1 string, 2 bool, 3 int, 4 double, 5 array, 6 kvlist, 7 bytes }

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

// Span.flags: the W3C trace flags plus whether the parent was remote.
const FLAG_HAS_IS_REMOTE = 0x100;
const FLAG_IS_REMOTE = 0x200;

// int_value (int64) for integers in the int64 range, double_value otherwise.
const MIN_INT64 = -(2 ** 63);
const MAX_INT64 = 2 ** 63;

const NANOS_PER_SECOND = 1000000000;
const TWO_POW_32 = 0x100000000;

function varintSize(v) {
  if (v < 0x80) return 1;
  if (v < 0x4000) return 2;
  if (v < 0x200000) return 3;
  if (v < 0x10000000) return 4;
  return 5;
}

function hexDigit(c) {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  return c - 55; // A-F, as upstream
}

/**
 * A protobuf writer over one growing Buffer, reused from batch to batch:
 * encoding a span allocates nothing but what Buffer growth needs.
 */
class ProtoWriter {
  constructor(initialSize = 16384) {
    this.buf = Buffer.allocUnsafe(initialSize);
    this.pos = 0;
  }

  reset() {
    this.pos = 0;
  }

  ensure(n) {
    const needed = this.pos + n;
    if (needed <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < needed) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buf.copy(grown, 0, 0, this.pos);
    this.buf = grown;
  }

  /** A varint of any JS number in the int64 range (negative: two's complement, 10 bytes). */
  varint(value) {
    this.ensure(10);
    const buf = this.buf;
    if (value >= 0 && value <= 0xffffffff) {
      let v = value >>> 0;
      while (v > 0x7f) {
        buf[this.pos++] = (v & 0x7f) | 0x80;
        v >>>= 7;
      }
      buf[this.pos++] = v;
      return;
    }
    let low;
    let high;
    const abs = Math.abs(value);
    low = abs >>> 0;
    high = (abs / TWO_POW_32) >>> 0;
    if (value < 0) {
      low = ~low >>> 0;
      high = ~high >>> 0;
      low = (low + 1) >>> 0;
      if (low === 0) high = (high + 1) >>> 0;
    }
    while (high > 0 || low > 0x7f) {
      buf[this.pos++] = (low & 0x7f) | 0x80;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    buf[this.pos++] = low & 0x7f;
  }

  tag(field, wire) {
    this.varint((field << 3) | wire);
  }

  fixed32(value) {
    this.ensure(4);
    this.buf.writeUInt32LE(value >>> 0, this.pos);
    this.pos += 4;
  }

  fixed64(low, high) {
    this.ensure(8);
    this.buf.writeUInt32LE(low >>> 0, this.pos);
    this.buf.writeUInt32LE(high >>> 0, this.pos + 4);
    this.pos += 8;
  }

  double(value) {
    this.ensure(8);
    this.buf.writeDoubleLE(value, this.pos);
    this.pos += 8;
  }

  /** HrTime [seconds, nanoseconds] as fixed64 nanoseconds, exact beyond 2^53. */
  hrTime(t) {
    const seconds = t[0];
    const nanos = t[1];
    const lowerNanos = (seconds & 0xffff) * NANOS_PER_SECOND;
    const upperNanos = ((seconds / 0x10000) >>> 0) * NANOS_PER_SECOND;
    const low = (lowerNanos >>> 0) + (((upperNanos & 0xffff) * 0x10000) >>> 0) + nanos;
    const high = Math.floor(lowerNanos / TWO_POW_32) + ((upperNanos / 0x10000) >>> 0) + Math.floor(low / TWO_POW_32);
    this.fixed64(low >>> 0, high >>> 0);
  }

  /** A length-delimited string, UTF-8 (lone surrogates become U+FFFD, as with TextEncoder). */
  string(s) {
    const len = s.length;
    let ascii = true;
    for (let i = 0; i < len; i++) {
      if (s.charCodeAt(i) > 127) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      this.varint(len);
      this.ensure(len);
      const buf = this.buf;
      let p = this.pos;
      for (let i = 0; i < len; i++) buf[p++] = s.charCodeAt(i);
      this.pos = p;
      return;
    }
    const bytes = Buffer.byteLength(s, 'utf8');
    this.varint(bytes);
    this.ensure(bytes);
    this.pos += this.buf.write(s, this.pos, bytes, 'utf8');
  }

  bytes(u8) {
    this.varint(u8.length);
    this.ensure(u8.length);
    this.buf.set(u8, this.pos);
    this.pos += u8.length;
  }

  /** A trace or span id given in hex, as length-delimited bytes. */
  hexId(hex) {
    const n = hex.length >>> 1;
    this.varint(n);
    this.ensure(n);
    const buf = this.buf;
    let p = this.pos;
    for (let i = 0; i < hex.length; i += 2) {
      buf[p++] = (hexDigit(hex.charCodeAt(i)) << 4) | hexDigit(hex.charCodeAt(i + 1));
    }
    this.pos = p;
  }

  /** Starts a length-delimited message: reserves one byte for its length. */
  begin() {
    this.ensure(1);
    return this.pos++;
  }

  /** Ends the message begun at `start`, moving it when its length needs more than one byte. */
  end(start) {
    const len = this.pos - start - 1;
    const size = varintSize(len);
    if (size > 1) {
      this.ensure(size - 1);
      this.buf.copyWithin(start + size, start + 1, this.pos);
      this.pos += size - 1;
    }
    let p = start;
    let v = len;
    while (v > 0x7f) {
      this.buf[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[p] = v;
  }

  /** `value`, written by `write(w, value)`, as the length-delimited field `field`. */
  message(field, write, value) {
    this.tag(field, WIRE_LEN);
    const start = this.begin();
    write(this, value);
    this.end(start);
  }

  /** Appends a few bytes (by a loop: no native call for a short copy). */
  small(b) {
    const n = b.length;
    this.ensure(n);
    const buf = this.buf;
    let p = this.pos;
    for (let i = 0; i < n; i++) buf[p++] = b[i];
    this.pos = p;
  }

  /** Appends raw bytes. */
  raw(b) {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** A copy of what was written. */
  take() {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

function writeAnyValue(w, value) {
  const t = typeof value;
  if (t === 'string') {
    w.tag(1, WIRE_LEN);
    w.string(value);
  } else if (t === 'boolean') {
    w.tag(2, WIRE_VARINT);
    w.varint(value ? 1 : 0);
  } else if (t === 'number') {
    if (Number.isInteger(value) && value >= MIN_INT64 && value < MAX_INT64) {
      w.tag(3, WIRE_VARINT);
      w.varint(value);
    } else {
      w.tag(4, WIRE_FIXED64);
      w.double(value);
    }
  } else if (value instanceof Uint8Array) {
    w.tag(7, WIRE_LEN);
    w.bytes(value);
  } else if (Array.isArray(value)) {
    w.tag(5, WIRE_LEN);
    const array = w.begin();
    for (const item of value) w.message(1, writeAnyValue, item);
    w.end(array);
  } else if (t === 'object' && value !== null) {
    w.tag(6, WIRE_LEN);
    const list = w.begin();
    writeKeyValues(w, value, 1);
    w.end(list);
  }
  // Anything else (undefined, null, functions): no value, as upstream.
}

// Attribute keys are few and the same from span to span: each one's
// KeyValue.key field (tag, length, UTF-8) is encoded once. Bounded, for
// applications whose keys are not.
const MAX_CACHED_KEYS = 2048;
const keyFields = new Map();

function keyField(key) {
  let field = keyFields.get(key);
  if (field === undefined) {
    const w = new ProtoWriter(3 * key.length + 8);
    w.tag(1, WIRE_LEN);
    w.string(key);
    field = w.take();
    if (keyFields.size < MAX_CACHED_KEYS) keyFields.set(key, field);
  }
  return field;
}

/** Every own enumerable property of `attributes` as a repeated KeyValue field. */
function writeKeyValues(w, attributes, field) {
  for (const key in attributes) {
    if (!Object.prototype.hasOwnProperty.call(attributes, key)) continue;
    w.tag(field, WIRE_LEN);
    const kv = w.begin();
    w.small(keyField(key));
    w.tag(2, WIRE_LEN);
    const v = w.begin();
    writeAnyValue(w, attributes[key]);
    w.end(v);
    w.end(kv);
  }
}

function spanFlags(traceFlags, isRemote) {
  return (traceFlags & 0xff) | FLAG_HAS_IS_REMOTE | (isRemote ? FLAG_IS_REMOTE : 0);
}

function writeEvent(w, event) {
  w.tag(1, WIRE_FIXED64);
  w.hrTime(event.time);
  w.tag(2, WIRE_LEN);
  w.string(event.name);
  if (event.attributes) writeKeyValues(w, event.attributes, 3);
  w.tag(4, WIRE_VARINT);
  w.varint(event.droppedAttributesCount || 0);
}

function writeLink(w, link) {
  const ctx = link.context;
  w.tag(1, WIRE_LEN);
  w.hexId(ctx.traceId);
  w.tag(2, WIRE_LEN);
  w.hexId(ctx.spanId);
  const traceState = ctx.traceState && ctx.traceState.serialize();
  if (traceState) {
    w.tag(3, WIRE_LEN);
    w.string(traceState);
  }
  if (link.attributes) writeKeyValues(w, link.attributes, 4);
  w.tag(5, WIRE_VARINT);
  w.varint(link.droppedAttributesCount || 0);
  w.tag(6, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, ctx.isRemote));
}

/** One ended span (a ReadableSpan) as field 2 of ScopeSpans: tag, length, Span. */
function writeSpan(w, span) {
  w.tag(2, WIRE_LEN);
  const start = w.begin();
  const ctx = span.spanContext();
  w.tag(1, WIRE_LEN);
  w.hexId(ctx.traceId);
  w.tag(2, WIRE_LEN);
  w.hexId(ctx.spanId);
  const traceState = ctx.traceState && ctx.traceState.serialize();
  if (traceState) {
    w.tag(3, WIRE_LEN);
    w.string(traceState);
  }
  const parent = span.parentSpanContext;
  if (parent && parent.spanId) {
    w.tag(4, WIRE_LEN);
    w.hexId(parent.spanId);
  }
  w.tag(5, WIRE_LEN);
  w.string(span.name);
  // The API's SpanKind starts at INTERNAL = 0, OTLP's at UNSPECIFIED = 0.
  const kind = span.kind == null ? 0 : span.kind + 1;
  if (kind !== 0) {
    w.tag(6, WIRE_VARINT);
    w.varint(kind);
  }
  w.tag(7, WIRE_FIXED64);
  w.hrTime(span.startTime);
  w.tag(8, WIRE_FIXED64);
  w.hrTime(span.endTime);
  if (span.attributes) writeKeyValues(w, span.attributes, 9);
  w.tag(10, WIRE_VARINT);
  w.varint(span.droppedAttributesCount);
  for (const event of span.events) w.message(11, writeEvent, event);
  w.tag(12, WIRE_VARINT);
  w.varint(span.droppedEventsCount);
  for (const link of span.links) w.message(13, writeLink, link);
  w.tag(14, WIRE_VARINT);
  w.varint(span.droppedLinksCount);
  w.tag(15, WIRE_LEN);
  const status = w.begin();
  if (span.status.message) {
    w.tag(2, WIRE_LEN);
    w.string(span.status.message);
  }
  w.tag(3, WIRE_VARINT);
  w.varint(span.status.code);
  w.end(status);
  w.tag(16, WIRE_FIXED32);
  w.fixed32(spanFlags(ctx.traceFlags, parent && parent.isRemote));
  w.end(start);
}

/** Resource as field 1 of ResourceSpans. */
function encodeResource(resource) {
  const w = new ProtoWriter(1024);
  w.tag(1, WIRE_LEN);
  const r = w.begin();
  if (resource.attributes) writeKeyValues(w, resource.attributes, 1);
  w.tag(2, WIRE_VARINT);
  w.varint(0);
  w.end(r);
  return w.take();
}

/** InstrumentationScope as field 1 of ScopeSpans. */
function encodeScope(scope) {
  const w = new ProtoWriter(256);
  w.tag(1, WIRE_LEN);
  const s = w.begin();
  w.tag(1, WIRE_LEN);
  w.string(scope.name);
  if (scope.version) {
    w.tag(2, WIRE_LEN);
    w.string(scope.version);
  }
  if (scope.attributes) writeKeyValues(w, scope.attributes, 3);
  if (scope.droppedAttributesCount) {
    w.tag(4, WIRE_VARINT);
    w.varint(scope.droppedAttributesCount);
  }
  w.end(s);
  return w.take();
}

/**
 * The ExportTraceServiceRequest of one resource.
 * @param {Buffer} resource encodeResource's output
 * @param {string|undefined} resourceSchemaUrl
 * @param {{scope: Buffer, schemaUrl: string|undefined, spans: Buffer}[]} scopes
 *   encodeScope's output and writeSpan's output for each scope
 */
function encodeRequest(resource, resourceSchemaUrl, scopes) {
  let size = resource.length;
  for (const s of scopes) size += s.scope.length + s.spans.length + 16 + (s.schemaUrl ? 3 * s.schemaUrl.length + 8 : 0);
  const w = new ProtoWriter(size + 16 + (resourceSchemaUrl ? 3 * resourceSchemaUrl.length + 8 : 0));
  w.tag(1, WIRE_LEN);
  const rs = w.begin();
  w.raw(resource);
  for (const s of scopes) {
    w.tag(2, WIRE_LEN);
    const ss = w.begin();
    w.raw(s.scope);
    w.raw(s.spans);
    if (s.schemaUrl) {
      w.tag(3, WIRE_LEN);
      w.string(s.schemaUrl);
    }
    w.end(ss);
  }
  if (resourceSchemaUrl) {
    w.tag(3, WIRE_LEN);
    w.string(resourceSchemaUrl);
  }
  w.end(rs);
  return w.buf.subarray(0, w.pos);
}

module.exports = { ProtoWriter, writeSpan, encodeResource, encodeScope, encodeRequest };
