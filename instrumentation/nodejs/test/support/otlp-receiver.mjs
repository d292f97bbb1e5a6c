// An OTLP/HTTP receiver for the tests: POST /v1/traces and /v1/metrics with
// `application/x-protobuf` bodies (optionally gzip), decoded with protobufjs
// from the official opentelemetry-proto definitions (v1.10.0, vendored in
// ./proto, the same release the Rust gateway builds against). What the tests
// assert is therefore what a real OTLP receiver decodes from the wire, not
// what the SDK meant to send.
//
// It answers like a collector: 200 with an empty Export*ServiceResponse;
// 415 for other content types; 404 for other paths.

import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

const PROTO_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'proto');

function loadTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
  root.loadSync(
    [
      'opentelemetry/proto/collector/trace/v1/trace_service.proto',
      'opentelemetry/proto/collector/metrics/v1/metrics_service.proto',
    ],
    { keepCase: true },
  );
  return {
    traceRequest: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest'),
    traceResponse: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse'),
    metricsRequest: root.lookupType('opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest'),
    metricsResponse: root.lookupType('opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse'),
    spanKind: root.lookupEnum('opentelemetry.proto.trace.v1.Span.SpanKind'),
    statusCode: root.lookupEnum('opentelemetry.proto.trace.v1.Status.StatusCode'),
  };
}

const TYPES = loadTypes();
const TO_OBJECT = { longs: String, enums: String, bytes: Buffer, defaults: true, arrays: true, oneofs: true };

/** An OTLP AnyValue as a plain JS value. */
function anyValue(v) {
  if (!v || !v.value) return undefined;
  const field = v[v.value]; // `value` names the oneof member that is set
  if (v.value === 'int_value') return Number(field);
  if (v.value === 'array_value') return (field.values || []).map(anyValue);
  if (v.value === 'kvlist_value') return attributes(field.values);
  return field; // string_value, bool_value, double_value, bytes_value
}

function attributes(kvs) {
  const out = {};
  for (const kv of kvs || []) out[kv.key] = anyValue(kv.value);
  return out;
}

const hex = (b) => (b && b.length ? Buffer.from(b).toString('hex') : '');

/** Flattens a decoded ExportTraceServiceRequest into spans carrying their resource. */
function flattenSpans(req) {
  const spans = [];
  for (const rs of req.resource_spans) {
    const resource = attributes(rs.resource && rs.resource.attributes);
    for (const ss of rs.scope_spans) {
      for (const s of ss.spans) {
        spans.push({
          name: s.name,
          kind: s.kind, // e.g. 'SPAN_KIND_SERVER'
          traceId: hex(s.trace_id),
          spanId: hex(s.span_id),
          parentSpanId: hex(s.parent_span_id),
          status: (s.status && s.status.code) || 'STATUS_CODE_UNSET',
          attributes: attributes(s.attributes),
          scope: ss.scope ? ss.scope.name : '',
          resource,
        });
      }
    }
  }
  return spans;
}

/** Flattens a decoded ExportMetricsServiceRequest into metrics carrying their resource. */
function flattenMetrics(req) {
  const metrics = [];
  for (const rm of req.resource_metrics) {
    const resource = attributes(rm.resource && rm.resource.attributes);
    for (const sm of rm.scope_metrics) {
      for (const m of sm.metrics) {
        // Data points: their attributes in the order received, and the count (histograms).
        const points = ((m[m.data] && m[m.data].data_points) || []).map((p) => ({
          attributes: Object.entries(attributes(p.attributes)),
          count: p.count === undefined ? undefined : Number(p.count),
        }));
        metrics.push({ name: m.name, unit: m.unit, type: m.data, scope: sm.scope ? sm.scope.name : '', resource, points });
      }
    }
  }
  return metrics;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body = Buffer.concat(chunks);
      try {
        if ((req.headers['content-encoding'] || '').toLowerCase() === 'gzip') body = zlib.gunzipSync(body);
        resolve(body);
      } catch (err) {
        reject(err);
      }
    });
    req.on('error', reject);
  });
}

export class OtlpReceiver {
  constructor() {
    this.spans = [];
    this.metrics = [];
    this.requests = { traces: 0, metrics: 0, other: [] };
    this.errors = [];
    this.waiters = new Set();
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  /** Listens on 127.0.0.1, a free port. */
  async start() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async stop() {
    for (const w of this.waiters) w.reject(new Error('receiver stopped'));
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
  }

  async handle(req, res) {
    const route = { '/v1/traces': 'traces', '/v1/metrics': 'metrics' }[req.url];
    if (req.method !== 'POST' || !route) {
      this.requests.other.push(`${req.method} ${req.url}`);
      res.writeHead(404).end();
      return;
    }
    const type = (req.headers['content-type'] || '').split(';')[0].trim();
    if (type !== 'application/x-protobuf') {
      this.errors.push(`${route}: unsupported content-type ${type}`);
      res.writeHead(415).end();
      return;
    }
    try {
      const body = await readBody(req);
      let response;
      if (route === 'traces') {
        const decoded = TYPES.traceRequest.toObject(TYPES.traceRequest.decode(body), TO_OBJECT);
        this.spans.push(...flattenSpans(decoded));
        response = TYPES.traceResponse.encode(TYPES.traceResponse.create({})).finish();
      } else {
        const decoded = TYPES.metricsRequest.toObject(TYPES.metricsRequest.decode(body), TO_OBJECT);
        this.metrics.push(...flattenMetrics(decoded));
        response = TYPES.metricsResponse.encode(TYPES.metricsResponse.create({})).finish();
      }
      this.requests[route] += 1;
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(Buffer.from(response));
    } catch (err) {
      this.errors.push(`${route}: ${err.message}`);
      res.writeHead(400).end();
    }
    this.notify();
  }

  notify() {
    for (const w of this.waiters) {
      let value;
      try {
        value = w.predicate(this);
      } catch (err) {
        this.waiters.delete(w);
        clearTimeout(w.timer);
        w.reject(err);
        continue;
      }
      if (value) {
        this.waiters.delete(w);
        clearTimeout(w.timer);
        w.resolve(value);
      }
    }
  }

  /**
   * Resolves with predicate(receiver) once it is truthy, checked on every
   * export received; rejects after timeoutMs with `what` in the message.
   */
  waitFor(what, predicate, timeoutMs = 15000) {
    const now = predicate(this);
    if (now) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const w = { predicate, resolve, reject };
      w.timer = setTimeout(() => {
        this.waiters.delete(w);
        const seen = [...new Set(this.spans.map((s) => `${s.resource['service.name']}:${s.name}`))].join(', ');
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; spans seen: [${seen}]; decode errors: [${this.errors.join('; ')}]`));
      }, timeoutMs);
      this.waiters.add(w);
    });
  }

  spansOf(serviceName) {
    return this.spans.filter((s) => s.resource['service.name'] === serviceName);
  }

  metricNamesOf(serviceName) {
    return new Set(this.metrics.filter((m) => m.resource['service.name'] === serviceName).map((m) => m.name));
  }
}
