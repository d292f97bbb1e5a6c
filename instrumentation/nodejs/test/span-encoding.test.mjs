// The span export path of src/span-export.cjs: its encoder against the
// upstream OTLP serializer (byte for byte, on spans made by the real SDK),
// and its batching against a real OTLP/HTTP receiver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { OtlpReceiver } from './support/otlp-receiver.mjs';

const require = createRequire(import.meta.url);
const api = require('@opentelemetry/api');
const core = require('@opentelemetry/core');
const { BasicTracerProvider, SimpleSpanProcessor, InMemorySpanExporter, SamplingDecision } = require('@opentelemetry/sdk-trace-base');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { ProtobufTraceSerializer } = require('@opentelemetry/otlp-transformer');
const { EncodingSpanProcessor, fromEnv: processorFromEnv } = require('../src/span-export.cjs');
const { withEnv } = require('../src/start.cjs');

// The processor and its exporter read the real process environment.
const fromEnv = (env) => withEnv(env, processorFromEnv);

const RESOURCE = resourceFromAttributes({
  'service.name': 'encoding-test',
  'k8s.pod.name': 'pod-ü-1',
  'process.pid': 4242,
  'host.arch': 'amd64',
});

/** Ends a varied set of spans with the real SDK; returns them as ReadableSpans. */
function makeSpans() {
  const memory = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ resource: RESOURCE, spanProcessors: [new SimpleSpanProcessor(memory)] });
  const http = provider.getTracer('@opentelemetry/instrumentation-http', '0.223.0');
  const other = provider.getTracer('custom', undefined, { schemaUrl: 'https://opentelemetry.io/schemas/1.30.0' });
  const remote = api.trace.setSpanContext(api.ROOT_CONTEXT, {
    traceId: '0af7651916cd43dd8448eb211c80319c',
    spanId: 'b7ad6b7169203331',
    traceFlags: api.TraceFlags.SAMPLED,
    isRemote: true,
    traceState: new core.TraceState('vendor=a,other=b'),
  });

  const server = http.startSpan('GET /users/:id', {
    kind: api.SpanKind.SERVER,
    attributes: {
      'http.request.method': 'GET',
      'url.path': '/users/42',
      'server.port': 8080,
      'http.response.status_code': 503,
      ratio: 0.25,
      big: 2 ** 60,
      negative: -17,
      flag: false,
      tags: ['a', 'b', 'ü'],
      numbers: [1, 2.5, -3],
      bytes: new Uint8Array([0, 1, 254]),
    },
  }, remote);
  server.addEvent('exception', { 'exception.type': 'Error', 'exception.message': 'boom — ünïcode', 'exception.stacktrace': 'x'.repeat(300) });
  server.addEvent('plain');
  server.setStatus({ code: api.SpanStatusCode.ERROR, message: 'Service Unavailable' });
  const child = http.startSpan('GET', { kind: api.SpanKind.CLIENT, attributes: { long: 'y'.repeat(20000) } }, api.trace.setSpan(api.ROOT_CONTEXT, server));
  child.end();
  server.end();

  const linked = other.startSpan('work', {
    links: [
      { context: server.spanContext(), attributes: { reason: 'fan-in' } },
      { context: { traceId: 'ffffffffffffffffffffffffffffffff', spanId: '0000000000000001', traceFlags: 0, isRemote: true } },
    ],
  });
  linked.setStatus({ code: api.SpanStatusCode.OK });
  linked.end([2 ** 33, 999999999]); // a start after the end: encoded as given
  const internal = other.startSpan('internal', { startTime: [1700000000, 5] });
  internal.end([1700000001, 123456789]);
  return memory.getFinishedSpans();
}

/** The processor's encoding of spans, through its real exporter path up to the bytes. */
function encodeWithProcessor(spans) {
  const sent = [];
  const processor = new EncodingSpanProcessor({
    exporter: { export: (batch, done) => (sent.push(batch), done({ code: core.ExportResultCode.SUCCESS })), shutdown: async () => {} },
  });
  for (const span of spans) processor.onEnd(span);
  processor._seal();
  assert.equal(processor._sealed.length, 1);
  return Buffer.from(processor._encodeRequest(processor._sealed[0]));
}

test('span encoding: byte for byte what the upstream OTLP serializer writes', () => {
  const spans = makeSpans();
  assert.equal(spans.length, 4);
  const upstream = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans));
  const ours = encodeWithProcessor(spans);
  assert.equal(ours.length, upstream.length);
  assert.ok(ours.equals(upstream), 'encodings differ');
});

test('span encoding: one span at a time equals the upstream encoding of each', () => {
  for (const span of makeSpans()) {
    const upstream = Buffer.from(ProtobufTraceSerializer.serializeRequest([span]));
    assert.ok(encodeWithProcessor([span]).equals(upstream), `span ${span.name} differs`);
  }
});

async function withReceiver(fn) {
  const receiver = await new OtlpReceiver().start();
  try {
    await fn(receiver);
  } finally {
    await receiver.stop();
  }
}

function providerWith(processor) {
  return new BasicTracerProvider({ resource: RESOURCE, spanProcessors: [processor] });
}

test('span export: full batches go out at once, the rest on flush, decoded by a real receiver', async () => {
  await withReceiver(async (receiver) => {
    const processor = fromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '4', OTEL_BSP_SCHEDULE_DELAY: '600000' });
    assert.ok(processor instanceof EncodingSpanProcessor);
    const tracer = providerWith(processor).getTracer('batch-test');
    for (let i = 0; i < 10; i++) tracer.startSpan(`span-${i}`, { attributes: { i } }).end();
    // Two full batches of 4 are sent without waiting for the delay.
    await receiver.waitFor('two full batches', (r) => r.spans.length === 8);
    assert.equal(receiver.requests.traces, 2);
    await processor.forceFlush();
    assert.equal(receiver.spans.length, 10);
    assert.equal(receiver.requests.traces, 3);
    assert.deepEqual(receiver.spans.map((s) => s.attributes.i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(receiver.spans[0].resource['service.name'], 'encoding-test');
    assert.equal(receiver.spans[0].scope, 'batch-test');
    assert.deepEqual(receiver.errors, []);
    await processor.shutdown();
  });
});

test('span export: the schedule delay sends a partial batch', async () => {
  await withReceiver(async (receiver) => {
    const processor = fromEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.endpoint}/v1/traces`, OTEL_BSP_SCHEDULE_DELAY: '50' });
    providerWith(processor).getTracer('delay-test').startSpan('lonely').end();
    const [span] = await receiver.waitFor('the span', (r) => r.spans.length === 1 && r.spans);
    assert.equal(span.name, 'lonely');
    await processor.shutdown();
  });
});

test('span export: spans beyond the queue size are dropped and counted; shutdown flushes the rest', async () => {
  await withReceiver(async (receiver) => {
    const processor = fromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
      OTEL_BSP_MAX_QUEUE_SIZE: '5',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '5',
      OTEL_BSP_SCHEDULE_DELAY: '600000',
    });
    const tracer = providerWith(processor).getTracer('drop-test');
    // The first 5 fill a batch whose export starts (and leaves the queue);
    // 5 more fill the queue while it is under way, the last 2 are dropped.
    for (let i = 0; i < 12; i++) tracer.startSpan(`s${i}`).end();
    assert.equal(processor.droppedSpans, 2);
    await processor.shutdown();
    assert.equal(receiver.spans.length, 10);
    // Nothing is accepted after shutdown.
    tracer.startSpan('late').end();
    assert.equal(receiver.spans.length, 10);
  });
});

test('span export: recorded but unsampled spans are not exported', async () => {
  await withReceiver(async (receiver) => {
    const processor = fromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint });
    // Records every span, samples only those named "kept".
    const sampler = {
      shouldSample: (_ctx, _traceId, name) => ({ decision: name === 'kept' ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.RECORD }),
      toString: () => 'by-name',
    };
    const tracer = new BasicTracerProvider({ resource: RESOURCE, spanProcessors: [processor], sampler }).getTracer('sampling-test');
    tracer.startSpan('recorded-only').end();
    tracer.startSpan('kept').end();
    await processor.forceFlush();
    assert.deepEqual(receiver.spans.map((s) => s.name), ['kept']);
    await processor.shutdown();
  });
});

test('span export: only OTLP over HTTP/protobuf takes this path', () => {
  assert.ok(fromEnv({}) instanceof EncodingSpanProcessor);
  assert.ok(fromEnv({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' }) instanceof EncodingSpanProcessor);
  assert.equal(fromEnv({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), null);
  assert.equal(fromEnv({ OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json' }), null);
  assert.equal(fromEnv({ OTEL_TRACES_EXPORTER: 'console' }), null);
  assert.equal(fromEnv({ OTEL_TRACES_EXPORTER: 'otlp,zipkin' }), null);
  assert.equal(fromEnv({ OTEL_TRACES_EXPORTER: 'none' }), null);
});

test('span export: OTEL_BSP_* values as the SDK reads them, its defaults otherwise', () => {
  const p = fromEnv({ OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '500', OTEL_BSP_SCHEDULE_DELAY: '0', OTEL_BSP_EXPORT_TIMEOUT: 'soon' });
  assert.equal(p.maxQueueSize, 100);
  assert.equal(p.maxExportBatchSize, 100, 'a batch is at most the queue');
  assert.equal(p.scheduledDelayMillis, 5000);
  assert.equal(p.exportTimeoutMillis, 30000);
});

test('span export: a span the encoder rejects and a failing exporter are reported, never thrown', async () => {
  const reported = [];
  core.setGlobalErrorHandler((err) => reported.push(String(err && err.message)));
  try {
    const processor = new EncodingSpanProcessor({
      exporter: {
        export: () => {
          throw new Error('exporter broke');
        },
        shutdown: async () => {},
      },
    });
    const tracer = providerWith(processor).getTracer('failure-test');
    tracer.startSpan('good').end();
    const bad = tracer.startSpan('bad');
    bad.status = null; // not a span the SDK makes: the encoder throws
    bad.end();
    assert.equal(reported.length, 1, 'the bad span is reported');
    await processor.forceFlush(); // resolves: the exporter's exception is reported
    assert.equal(reported.length, 2);
    assert.match(reported[1], /exporter broke/);
    await processor.shutdown();
  } finally {
    core.setGlobalErrorHandler(core.loggingErrorHandler());
  }
});
