// Whatever is wrong, the application serves; the preload says what and why in
// exactly one stderr line and nothing on stdout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import { App, PRELOAD_DIR, eventually, fastExport } from './support/app.mjs';

let receiver;
before(async () => {
  receiver = await new OtlpReceiver().start();
});
after(() => receiver.stop());

/** A loopback port nothing listens on. */
async function closedPort() {
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

async function assertServes(app) {
  for (const p of ['/', '/', '/']) assert.equal((await app.get(p)).status, 200);
}

test('unreachable endpoint: the app serves, one warning line', async (t) => {
  const endpoint = `http://127.0.0.1:${await closedPort()}`;
  const app = new App('cjs-server.cjs', {
    env: {
      ...fastExport(endpoint),
      OTEL_SERVICE_NAME: 'unreachable',
      OTEL_EXPORTER_OTLP_TIMEOUT: '500',
      VISPYR_SHUTDOWN_TIMEOUT_MS: '1000',
    },
  });
  t.after(() => app.kill());
  await app.start();
  await assertServes(app);
  // Failing exports (traces every 100 ms, metrics every second) are reported once.
  await eventually('the export failure warning', () => app.vispyrLines().length > 0, 10000);
  await assertServes(app);
  const exit = await app.stop('SIGTERM');
  assert.equal(exit.signal, 'SIGTERM');
  const lines = app.vispyrLines();
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], new RegExp(`^vispyr: export to ${endpoint} failed: .+`));
  assert.deepEqual(app.foreignStdout(), []);
  assert.equal(app.stderr, `${lines[0]}\n`);
});

test('unreachable endpoint: the final export holds the exit for VISPYR_SHUTDOWN_TIMEOUT_MS at most', async (t) => {
  // The OTLP/HTTP exporter retries a refused connection for
  // OTEL_EXPORTER_OTLP_TIMEOUT (10 s by default); the process ends sooner.
  const endpoint = `http://127.0.0.1:${await closedPort()}`;
  const app = new App('oneshot.cjs', {
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_SERVICE_NAME: 'unreachable-exit', VISPYR_SHUTDOWN_TIMEOUT_MS: '1000' },
  });
  t.after(() => app.kill());
  const started = Date.now();
  await app.start();
  const exit = await app.waitExit();
  const took = Date.now() - started;
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(took < 8000, `the process took ${took} ms to end`);
  assert.deepEqual(app.foreignStdout(), []);
});

test('garbage OTEL_TRACES_SAMPLER_ARG: one warning line, sampling falls back to 1, spans still exported', async (t) => {
  const app = new App('cjs-server.cjs', {
    env: {
      ...fastExport(receiver.endpoint),
      OTEL_SERVICE_NAME: 'garbage-sampler',
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: 'half of them',
    },
  });
  t.after(() => app.kill());
  await app.start();
  await assertServes(app);
  await receiver.waitFor('spans of garbage-sampler', (r) => r.spansOf('garbage-sampler').length >= 3);
  await app.stop();
  assert.deepEqual(app.vispyrLines(), [
    'vispyr: OTEL_TRACES_SAMPLER_ARG ignored: "half of them" is not a number between 0 and 1; using 1',
  ]);
  assert.equal(app.stderr, `${app.vispyrLines()[0]}\n`);
  assert.deepEqual(app.foreignStdout(), []);
});

test('several bad settings: still one line, naming each; the SDK runs on defaults', async (t) => {
  const app = new App('cjs-server.cjs', {
    env: {
      ...fastExport(receiver.endpoint),
      OTEL_SERVICE_NAME: 'bad-settings',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/xml',
      OTEL_TRACES_SAMPLER: 'sometimes',
      OTEL_BSP_MAX_QUEUE_SIZE: 'lots',
    },
  });
  t.after(() => app.kill());
  await app.start();
  await assertServes(app);
  await receiver.waitFor('spans of bad-settings', (r) => r.spansOf('bad-settings').length >= 3);
  await app.stop();
  const lines = app.vispyrLines();
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /^vispyr: OTEL_EXPORTER_OTLP_PROTOCOL ignored: "http\/xml" is not one of grpc, http\/protobuf, http\/json; using http\/protobuf; /);
  assert.match(lines[0], /; OTEL_TRACES_SAMPLER ignored: "sometimes" is not one of .*; using parentbased_always_on/);
  assert.match(lines[0], /; setting ignored: .*OTEL_BSP_MAX_QUEUE_SIZE/);
  assert.deepEqual(app.foreignStdout(), []);
});

test('bad VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE with the perf-map flags: one line, the app serves, spans exported', async (t) => {
  const app = new App('cjs-server.cjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: 'bad-inline-limit', VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE: '2k' },
    nodeOptions: '--perf-basic-prof-only-functions --interpreted-frames-native-stack',
  });
  t.after(() => app.kill());
  await app.start();
  t.after(() => fs.rmSync(`/tmp/perf-${app.child.pid}.map`, { force: true }));
  await assertServes(app);
  await receiver.waitFor('spans of bad-inline-limit', (r) => r.spansOf('bad-inline-limit').length >= 3);
  await app.stop();
  assert.deepEqual(app.vispyrLines(), [
    'vispyr: VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE "2k" is neither a number of bytes nor "v8"; using 60',
  ]);
  assert.deepEqual(app.foreignStdout(), []);
});

test('endpoint that is not a URL: instrumentation disabled with one line, the app serves', async (t) => {
  const app = new App('cjs-server.cjs', {
    env: { OTEL_SERVICE_NAME: 'bad-url', OTEL_EXPORTER_OTLP_ENDPOINT: 'vispyr-gateway:4318' },
  });
  t.after(() => app.kill());
  await app.start();
  await assertServes(app);
  const state = JSON.parse((await app.get('/state')).body);
  assert.equal(state.status, 'disabled');
  const exit = await app.stop();
  assert.equal(exit.signal, 'SIGTERM');
  assert.deepEqual(app.vispyrLines(), [
    'vispyr: instrumentation disabled: OTEL_EXPORTER_OTLP_ENDPOINT "vispyr-gateway:4318" is not an http:// or https:// URL',
  ]);
  assert.equal(app.stderr, `${app.vispyrLines()[0]}\n`);
});

test('payload without its dependencies: instrumentation disabled with one line, the app serves', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vispyr-nodeps-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join(PRELOAD_DIR, 'src'), path.join(dir, 'src'), { recursive: true });
  fs.copyFileSync(path.join(PRELOAD_DIR, 'register.cjs'), path.join(dir, 'register.cjs'));
  const app = new App('cjs-server.cjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: 'no-deps' },
    preload: `--require "${path.join(dir, 'register.cjs')}"`,
  });
  t.after(() => app.kill());
  await app.start();
  await assertServes(app);
  await app.stop();
  assert.deepEqual(app.vispyrLines(), [
    'vispyr: instrumentation disabled: missing dependency @opentelemetry/api (incomplete instrumentation payload?)',
  ]);
  assert.deepEqual(app.foreignStdout(), []);
});

test('OTEL_LOG_LEVEL=all: the SDK diagnostics go to stderr, prefixed, never to stdout', async (t) => {
  const app = new App('esm-express.mjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: 'log-all', OTEL_LOG_LEVEL: 'all' },
  });
  t.after(() => app.kill());
  await app.start();
  assert.equal((await app.get('/users/1')).status, 200);
  await receiver.waitFor('spans of log-all', (r) => r.spansOf('log-all').length > 0);
  await app.stop();
  assert.deepEqual(app.foreignStdout(), []);
  const lines = app.stderr.split('\n').filter(Boolean);
  assert.ok(lines.length > 10, `expected the SDK's debug output, got ${lines.length} lines`);
  assert.deepEqual(lines.filter((l) => !l.startsWith('vispyr: ')), []);
});
