// Service A (ESM) calls service B (CommonJS) over http: one trace across both,
// B's server span a child of A's client span.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import { App, fastExport } from './support/app.mjs';

let receiver;
let a;
let b;
before(async () => {
  receiver = await new OtlpReceiver().start();
  b = await new App('service-b.cjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: 'svc-b', VISPYR_POD_NAME: 'svc-b-0' },
  }).start();
  a = await new App('service-a.mjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: 'svc-a', VISPYR_POD_NAME: 'svc-a-0', SERVICE_B_URL: b.url },
  }).start();
});
after(async () => {
  a?.kill();
  b?.kill();
  await receiver.stop();
});

function assertPropagated(path, clientScope) {
  const aServer = receiver.spansOf('svc-a').find((s) => s.kind === 'SPAN_KIND_SERVER' && s.attributes['url.path'] === path);
  assert.ok(aServer, `A's server span for ${path}`);
  const aClient = receiver.spansOf('svc-a').find((s) => s.kind === 'SPAN_KIND_CLIENT' && s.traceId === aServer.traceId);
  assert.ok(aClient, `A's client span in the trace of ${path}`);
  assert.equal(aClient.scope, clientScope);
  assert.equal(aClient.parentSpanId, aServer.spanId, "A's client span is a child of A's server span");
  const bServer = receiver.spansOf('svc-b').find((s) => s.kind === 'SPAN_KIND_SERVER' && s.traceId === aServer.traceId);
  assert.ok(bServer, "B's server span has A's trace id");
  assert.equal(bServer.parentSpanId, aClient.spanId, "B's server span is a child of A's client span");
  assert.equal(bServer.resource['k8s.pod.name'], 'svc-b-0');
  assert.equal(aServer.resource['k8s.pod.name'], 'svc-a-0');
  return { aServer, aClient, bServer };
}

const tracesDone = (path) => (r) => {
  const aServer = r.spansOf('svc-a').find((s) => s.kind === 'SPAN_KIND_SERVER' && s.attributes['url.path'] === path);
  return aServer && r.spansOf('svc-b').some((s) => s.traceId === aServer.traceId) && r.spansOf('svc-a').some((s) => s.kind === 'SPAN_KIND_CLIENT' && s.traceId === aServer.traceId);
};

test('A calls B with node:http: trace context propagated', async () => {
  const res = await a.get('/call');
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(res.body), { worked: '/work' });
  await receiver.waitFor('the /call trace in both services', tracesDone('/call'));
  const { aClient } = assertPropagated('/call', '@opentelemetry/instrumentation-http');
  assert.equal(aClient.attributes['http.response.status_code'], 200);
});

test("A calls B after reading the request body: the request's events run in the server span's context", async () => {
  const res = await a.post('/call-after-body', 'payload');
  assert.equal(res.status, 200);
  await receiver.waitFor('the /call-after-body trace in both services', tracesDone('/call-after-body'));
  assertPropagated('/call-after-body', '@opentelemetry/instrumentation-http');
});

test('A calls B with fetch (undici): trace context propagated', async () => {
  const res = await a.get('/call-fetch');
  assert.equal(res.status, 200);
  await receiver.waitFor('the /call-fetch trace in both services', tracesDone('/call-fetch'));
  assertPropagated('/call-fetch', '@opentelemetry/instrumentation-undici');
});

test('both services: nothing on stdout, no warnings', async () => {
  await a.stop();
  await b.stop();
  for (const app of [a, b]) {
    assert.deepEqual(app.foreignStdout(), []);
    assert.deepEqual(app.vispyrLines(), []);
  }
});
