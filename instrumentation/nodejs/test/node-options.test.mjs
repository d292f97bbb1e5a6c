// An application that has NODE_OPTIONS of its own: the webhook appends the
// preload, and the application's flags must still apply.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { App, eventually, fastExport, REGISTER_CJS } from './support/app.mjs';

let receiver;
before(async () => {
  receiver = await new OtlpReceiver().start();
});
after(() => receiver.stop());

const MiB = 1024 * 1024;

for (const [label, nodeOptions, preload] of [
  ['app options first (as the webhook merges them)', '--max-old-space-size=96 --trace-uncaught', undefined],
  ['preload first', '', `--require "${REGISTER_CJS}" --max-old-space-size=96 --trace-uncaught`],
]) {
  test(`NODE_OPTIONS of the application still apply: ${label}`, async (t) => {
    const service = `heap-${label.split(' ')[0]}`;
    const app = new App('cjs-server.cjs', {
      env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: service },
      nodeOptions,
      preload,
    });
    t.after(() => app.kill());
    await app.start();
    const { heapSizeLimit } = JSON.parse((await app.get('/heap')).body);
    // --max-old-space-size=96 caps the heap near 96 MiB (plus the young
    // generation); the default on this machine is several GiB.
    assert.ok(heapSizeLimit >= 96 * MiB && heapSizeLimit < 200 * MiB, `heap_size_limit ${heapSizeLimit / MiB} MiB`);
    await receiver.waitFor(`a server span of ${service}`, (r) => r.spansOf(service).some((s) => s.attributes['url.path'] === '/heap'));
    await app.stop();
    assert.deepEqual(app.foreignStdout(), []);
    assert.deepEqual(app.vispyrLines(), []);
  });
}

test("the webhook's NODE_OPTIONS with the profiler's V8 perf-map flags: accepted, traced, perf map written", async (t) => {
  // Exactly what the operator sets (see operator/tests/golden/*/patched.yaml).
  const service = 'perf-flags';
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'vispyr-perf-'));
  t.after(() => fs.rmSync(cwd, { recursive: true, force: true }));
  const app = new App('cjs-server.cjs', {
    env: { ...fastExport(receiver.endpoint), OTEL_SERVICE_NAME: service },
    preload: `--require "${REGISTER_CJS}" --perf-basic-prof-only-functions --interpreted-frames-native-stack`,
    cwd,
  });
  t.after(() => app.kill());
  await app.start();
  const perfMap = `/tmp/perf-${app.child.pid}.map`;
  t.after(() => fs.rmSync(perfMap, { force: true }));
  assert.equal((await app.get('/')).status, 200);
  await receiver.waitFor(`a server span of ${service}`, (r) => r.spansOf(service).some((s) => s.kind === 'SPAN_KIND_SERVER'));
  await eventually('the V8 perf map', () => fs.existsSync(perfMap) && fs.statSync(perfMap).size > 0);
  await app.stop();
  assert.deepEqual(app.foreignStdout(), []);
  assert.equal(app.stderr, '');
});
