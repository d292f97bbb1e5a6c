// Flushing at the end of a process: on SIGTERM/SIGINT without breaking the
// application's own signal handling, and at beforeExit. Batches are held for
// a minute here (OTEL_BSP_SCHEDULE_DELAY), so spans reach the receiver only
// if the preload flushes them when the process ends.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import { App } from './support/app.mjs';

let receiver;
before(async () => {
  receiver = await new OtlpReceiver().start();
});
after(() => receiver.stop());

const holdBatches = (service) => ({
  OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
  OTEL_SERVICE_NAME: service,
  OTEL_BSP_SCHEDULE_DELAY: '60000',
  OTEL_METRIC_EXPORT_INTERVAL: '60000',
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  test(`${signal}, no handler in the app: spans flushed, then the process ends by ${signal} as it would without the preload`, async (t) => {
    const service = `no-handler-${signal}`;
    const app = new App('cjs-server.cjs', { env: holdBatches(service) });
    t.after(() => app.kill());
    await app.start();
    assert.equal((await app.get('/')).status, 200);
    const exit = await app.stop(signal);
    assert.deepEqual(exit, { code: null, signal });
    assert.ok(receiver.spansOf(service).some((s) => s.kind === 'SPAN_KIND_SERVER'), 'server span flushed before exit');
    assert.ok(receiver.metricNamesOf(service).has('v8js.memory.heap.used'), 'metrics flushed before exit');
    assert.equal(app.stderr, '');
  });
}

test("SIGTERM with the app's own handler: the handler runs, the app drains and exits 0, spans flushed", async (t) => {
  const service = 'own-handler';
  const app = new App('cjs-server.cjs', { env: { ...holdBatches(service), FIXTURE_HANDLES_SIGTERM: '1' } });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/')).status, 200);
  const exit = await app.stop('SIGTERM');
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.equal(app.stderr, 'app: SIGTERM received, draining\n');
  assert.ok(receiver.spansOf(service).some((s) => s.kind === 'SPAN_KIND_SERVER'));
});

test('an app using signal-exit (re-raises when alone) still ends by SIGTERM, after the flush', async (t) => {
  const service = 'signal-exit';
  const app = new App('signal-exit-app.cjs', { env: holdBatches(service) });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/')).status, 200);
  const exit = await app.stop('SIGTERM');
  assert.deepEqual(exit, { code: null, signal: 'SIGTERM' });
  assert.equal(app.stderr, 'app: onExit null SIGTERM\n');
  assert.ok(receiver.spansOf(service).some((s) => s.kind === 'SPAN_KIND_SERVER'), 'server span flushed before exit');
});

test('a library handler that re-raises SIGTERM only when alone still ends the process', async (t) => {
  const app = new App('cjs-server.cjs', { env: { ...holdBatches('reraise-if-alone'), FIXTURE_HANDLES_SIGTERM: 'reraise-if-alone' } });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/')).status, 200);
  const exit = await app.stop('SIGTERM');
  assert.deepEqual(exit, { code: null, signal: 'SIGTERM' });
  assert.equal(app.stderr, 'app: cleanup\n');
});

test('a process that ends on its own: spans flushed at beforeExit, exit code 0', async (t) => {
  const service = 'oneshot';
  const app = new App('oneshot.cjs', { env: holdBatches(service) });
  t.after(() => app.kill());
  await app.start();
  const exit = await app.waitExit();
  assert.deepEqual(exit, { code: 0, signal: null });
  const spans = receiver.spansOf(service);
  const server = spans.find((s) => s.kind === 'SPAN_KIND_SERVER');
  const client = spans.find((s) => s.kind === 'SPAN_KIND_CLIENT');
  assert.ok(server && client, `client and server spans flushed; got ${spans.map((s) => s.kind)}`);
  assert.equal(server.parentSpanId, client.spanId);
  assert.deepEqual(app.foreignStdout(), []);
  assert.equal(app.stderr, '');
});

test('worker threads inherit the preload but do not start a second SDK', async (t) => {
  const app = new App('worker-app.cjs', { env: holdBatches('workers') });
  t.after(() => app.kill());
  await app.start();
  const { worker, main } = JSON.parse((await app.get('/')).body);
  assert.equal(main.status, 'running');
  assert.ok(worker === null || worker.status === 'skipped', JSON.stringify(worker));
  await app.stop();
  assert.equal(app.stderr, '');
});
