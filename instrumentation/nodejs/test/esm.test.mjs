// An ESM express application: the instrumentation of ES modules goes through
// the module hooks the CommonJS preload registers (module.register).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import { App, fastExport, REGISTER_MJS } from './support/app.mjs';

let receiver;
before(async () => {
  receiver = await new OtlpReceiver().start();
});
after(() => receiver.stop());

async function exerciseExpress(t, service, preload) {
  const app = new App('esm-express.mjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: service, OTEL_RESOURCE_ATTRIBUTES: `k8s.pod.name=${service}-0` },
    preload,
  });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/users/42')).status, 200);
  assert.equal((await app.get('/error')).status, 500);

  const spans = await receiver.waitFor(`express spans of ${service}`, (r) => {
    const s = r.spansOf(service);
    const server = s.filter((x) => x.kind === 'SPAN_KIND_SERVER');
    const express = s.filter((x) => x.scope === '@opentelemetry/instrumentation-express');
    return server.length >= 2 && express.length >= 2 && s;
  });
  const server = spans.filter((s) => s.kind === 'SPAN_KIND_SERVER');
  const users = server.find((s) => s.attributes['url.path'] === '/users/42');
  const error = server.find((s) => s.attributes['url.path'] === '/error');
  // The route in the server span's name comes from the express instrumentation,
  // which sees ESM-imported express only through the module hooks.
  assert.equal(users.name, 'GET /users/:id');
  assert.equal(users.attributes['http.route'], '/users/:id');
  assert.equal(users.status, 'STATUS_CODE_UNSET');
  assert.equal(error.name, 'GET /error');
  assert.equal(error.status, 'STATUS_CODE_ERROR');
  assert.equal(error.attributes['http.response.status_code'], 500);
  const handler = spans.find((s) => s.scope === '@opentelemetry/instrumentation-express' && s.traceId === users.traceId);
  assert.ok(handler, 'an express span in the trace of GET /users/:id');
  assert.equal(users.resource['k8s.pod.name'], `${service}-0`);

  const exit = await app.stop('SIGTERM');
  assert.equal(exit.signal, 'SIGTERM');
  assert.deepEqual(app.foreignStdout(), []);
  assert.equal(app.stderr, '', 'no warnings, no experimental-loader notices');
}

test('ESM express app with --require register.cjs', (t) => exerciseExpress(t, 'esm-require', undefined));

test('ESM express app with --import register.mjs', (t) => exerciseExpress(t, 'esm-import', `--import "${REGISTER_MJS}"`));

test('ESM fastify app: route spans from @fastify/otel, 500 is an error', async (t) => {
  const service = 'esm-fastify';
  const app = new App('esm-fastify.mjs', { env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: service } });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/items/7')).status, 200);
  assert.equal((await app.get('/fail')).status, 500);
  const spans = await receiver.waitFor('fastify spans', (r) => {
    const s = r.spansOf(service);
    return s.filter((x) => x.kind === 'SPAN_KIND_SERVER').length >= 2 && s.filter((x) => x.scope === '@fastify/otel').length >= 2 && s;
  });
  const server = spans.filter((s) => s.kind === 'SPAN_KIND_SERVER');
  const items = server.find((s) => s.attributes['url.path'] === '/items/7');
  const fail = server.find((s) => s.attributes['url.path'] === '/fail');
  assert.equal(items.name, 'GET /items/:id');
  assert.equal(items.status, 'STATUS_CODE_UNSET');
  assert.equal(fail.name, 'GET /fail');
  assert.equal(fail.status, 'STATUS_CODE_ERROR');
  const request = spans.find((s) => s.scope === '@fastify/otel' && s.name === 'request' && s.traceId === items.traceId);
  assert.ok(request, 'a @fastify/otel request span in the trace of GET /items/:id');
  assert.equal(request.parentSpanId, items.spanId);
  await app.stop();
  assert.deepEqual(app.foreignStdout(), []);
  assert.equal(app.stderr, '');
});
