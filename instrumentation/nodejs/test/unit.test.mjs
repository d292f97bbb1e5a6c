// The pure parts: settings checks, resource attributes, guards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { App, PKG_DIR, PRELOAD_DIR, REGISTER_CJS } from './support/app.mjs';

const require = createRequire(import.meta.url);
const config = require('../src/config.cjs');
const guards = require('../src/guards.cjs');
const profiling = require('../src/profiling.cjs');

test('config.check: valid settings are quiet', () => {
  const r = config.check({
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://vispyr-gateway.vispyr.svc:4318',
    OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0.25',
  });
  assert.deepEqual(r, { fatal: null, problems: [], skipSignals: { traces: false, metrics: false }, upstreamHttpServer: false, upstreamSpanExport: false });
  assert.deepEqual(config.check({}), { fatal: null, problems: [], skipSignals: { traces: false, metrics: false }, upstreamHttpServer: false, upstreamSpanExport: false });
});

test('config.check: a bad general endpoint is fatal unless both signals have their own', () => {
  assert.match(config.check({ OTEL_EXPORTER_OTLP_ENDPOINT: 'ftp://x' }).fatal, /OTEL_EXPORTER_OTLP_ENDPOINT "ftp:\/\/x" is not an http/);
  const r = config.check({
    OTEL_EXPORTER_OTLP_ENDPOINT: 'nope',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4318/v1/traces',
  });
  assert.equal(r.fatal, null);
  assert.deepEqual(r.skipSignals, { traces: false, metrics: true });
  assert.match(r.problems[0], /^OTEL_EXPORTER_OTLP_ENDPOINT ignored: "nope" is not a URL; metrics are not exported$/);
  const both = config.check({
    OTEL_EXPORTER_OTLP_ENDPOINT: 'nope',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4318/v1/traces',
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://m:4318/v1/metrics',
  });
  assert.equal(both.fatal, null);
});

test('config.check: a bad signal endpoint drops that signal only', () => {
  const r = config.check({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: '::::' });
  assert.equal(r.fatal, null);
  assert.deepEqual(r.skipSignals, { traces: false, metrics: true });
  assert.equal(r.problems.length, 1);
});

test('config.check: sampler argument must be a number in [0, 1]', () => {
  for (const bad of ['x', '1.5', '-0.1', 'NaN']) {
    assert.equal(config.check({ OTEL_TRACES_SAMPLER_ARG: bad }).problems.length, 1, bad);
  }
  for (const good of ['0', '1', '0.001', ' 0.5 ', '']) {
    assert.equal(config.check({ OTEL_TRACES_SAMPLER_ARG: good }).problems.length, 0, good);
  }
});

test('config.check: VISPYR_HTTP_SERVER is lean (default) or upstream, VISPYR_SPAN_EXPORT encoded (default) or upstream', () => {
  assert.equal(config.check({ VISPYR_HTTP_SERVER: 'upstream' }).upstreamHttpServer, true);
  assert.deepEqual(config.check({ VISPYR_HTTP_SERVER: 'lean' }).problems, []);
  const r = config.check({ VISPYR_HTTP_SERVER: 'fast' });
  assert.equal(r.upstreamHttpServer, false);
  assert.deepEqual(r.problems, ['VISPYR_HTTP_SERVER ignored: "fast" is not one of lean, upstream; using lean']);
  assert.equal(config.check({ VISPYR_SPAN_EXPORT: 'upstream' }).upstreamSpanExport, true);
  assert.equal(config.check({ VISPYR_SPAN_EXPORT: 'encoded' }).upstreamSpanExport, false);
  const e = config.check({ VISPYR_SPAN_EXPORT: 'protobufjs' });
  assert.equal(e.upstreamSpanExport, false);
  assert.deepEqual(e.problems, ['VISPYR_SPAN_EXPORT ignored: "protobufjs" is not one of encoded, upstream; using encoded']);
});

test('k8sAttributes: downward-API variables as k8s.* attributes, blanks ignored', () => {
  assert.deepEqual(
    config.k8sAttributes({
      VISPYR_POD_NAME: 'web-0',
      VISPYR_POD_NAMESPACE: 'shop',
      VISPYR_NODE_NAME: 'n1',
      VISPYR_POD_UID: 'u-1',
      VISPYR_CONTAINER_NAME: 'app',
    }),
    {
      'k8s.pod.name': 'web-0',
      'k8s.namespace.name': 'shop',
      'k8s.node.name': 'n1',
      'k8s.pod.uid': 'u-1',
      'k8s.container.name': 'app',
      'service.instance.id': 'shop.web-0.app',
    },
  );
  assert.deepEqual(config.k8sAttributes({ VISPYR_POD_NAME: ' ', VISPYR_NODE_NAME: 'n1' }), { 'k8s.node.name': 'n1' });
});

test('guards.unsupportedNode follows the SDK engines (^18.19.0 || >=20.6.0)', () => {
  for (const v of ['18.19.0', '18.20.8', '20.6.0', '20.20.2', '22.11.0', '24.0.0']) assert.equal(guards.unsupportedNode(v), null, v);
  for (const v of ['14.21.3', '16.20.2', '18.18.2', '19.9.0', '20.5.1']) {
    assert.equal(guards.unsupportedNode(v), `Node.js v${v} is not supported (needs ^18.19.0 or >= 20.6.0)`);
  }
});

test('profiling.inliningFlag: inlining limited only while V8 writes a perf map', () => {
  const PERF = '--perf-basic-prof-only-functions --interpreted-frames-native-stack';
  const none = { flag: null, problem: null };
  const limit = (n) => ({ flag: `--max-inlined-bytecode-size=${n}`, problem: null });
  const env = (v, nodeOptions = PERF) => ({ NODE_OPTIONS: nodeOptions, VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE: v });
  // The operator's NODE_OPTIONS, and the same flags on the command line.
  assert.deepEqual(profiling.inliningFlag([], { NODE_OPTIONS: `--require /vispyr-instrumentation/register.cjs ${PERF}` }), limit(60));
  assert.deepEqual(profiling.inliningFlag(['--perf-basic-prof'], {}), limit(60));
  assert.deepEqual(profiling.inliningFlag(['--perf-prof'], {}), limit(60));
  // No perf map: V8's inlining untouched, whatever the setting.
  assert.deepEqual(profiling.inliningFlag([], {}), none);
  assert.deepEqual(profiling.inliningFlag(['--perf-prof-unwinding-info'], env('27', '--max-old-space-size=96')), none);
  // The setting.
  assert.deepEqual(profiling.inliningFlag([], env('27')), limit(27));
  assert.deepEqual(profiling.inliningFlag([], env(' 0 ')), limit(0));
  assert.deepEqual(profiling.inliningFlag([], env('v8')), none);
  assert.deepEqual(profiling.inliningFlag([], env('lots')), {
    flag: '--max-inlined-bytecode-size=60',
    problem: 'VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE "lots" is neither a number of bytes nor "v8"; using 60',
  });
});

test('the files parsed before the version check use no syntax older Node.js rejects', () => {
  for (const f of ['register.cjs', 'src/register.cjs', 'src/guards.cjs', 'src/profiling.cjs']) {
    const code = fs
      .readFileSync(path.join(PKG_DIR, f), 'utf8')
      .replace(/\/\/.*$/gm, '')
      .replace(/'[^'\n]*'/g, "''");
    for (const [what, re] of [
      ['optional chaining', /\?\./],
      ['nullish coalescing', /\?\?/],
      ['optional catch binding', /catch\s*\{/],
      ['class fields', /^\s*#\w+/m],
      ['globalThis (Node >= 12)', /globalThis/],
    ]) {
      assert.doesNotMatch(code, re, `${f} uses ${what}`);
    }
  }
});

test('package-manager launchers (npm start) are not instrumented, the app they start is', async (t) => {
  assert.ok(guards.launcher('/usr/lib/node_modules/npm/bin/npm-cli.js'));
  assert.ok(guards.launcher('/opt/yarn/bin/yarn.js'));
  assert.ok(guards.launcher('/usr/local/lib/node_modules/corepack/dist/pnpm.js'));
  assert.ok(!guards.launcher('/app/server.js'));
  assert.ok(!guards.launcher(undefined));

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vispyr-launcher-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fake = path.join(dir, 'node_modules', 'npm', 'bin', 'npm-cli.js');
  fs.mkdirSync(path.dirname(fake), { recursive: true });
  fs.copyFileSync(path.join(PKG_DIR, 'test', 'fixtures', 'cjs-server.cjs'), fake);
  const app = new App(fake, { env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' } });
  t.after(() => app.kill());
  await app.start();
  const state = JSON.parse((await app.get('/state')).body);
  assert.equal(state.status, 'skipped');
  assert.match(state.reason, /^package manager or launcher: /);
  await app.stop();
  assert.equal(app.stderr, '');
});

test('two copies of the preload in one process start one SDK', async (t) => {
  // A second, distinct copy (as when NODE_OPTIONS was merged twice with
  // different paths): Node's module cache does not dedupe it, the guard does.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vispyr-twice-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join(PRELOAD_DIR, 'src'), path.join(dir, 'src'), { recursive: true });
  fs.copyFileSync(path.join(PRELOAD_DIR, 'register.cjs'), path.join(dir, 'register.cjs'));
  fs.symlinkSync(path.join(PRELOAD_DIR, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
  const app = new App('cjs-server.cjs', {
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', VISPYR_SHUTDOWN_TIMEOUT_MS: '200' },
    preload: `--require "${REGISTER_CJS}" --require "${path.join(dir, 'register.cjs')}"`,
  });
  t.after(() => app.kill());
  await app.start();
  assert.equal(JSON.parse((await app.get('/state')).body).status, 'running');
  const exit = await app.stop();
  assert.equal(exit.signal, 'SIGTERM');
  assert.deepEqual(app.vispyrLines(), []);
  assert.equal(app.stderr, '');
});
