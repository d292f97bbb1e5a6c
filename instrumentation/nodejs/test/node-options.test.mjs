// An application that has NODE_OPTIONS of its own: the webhook appends the
// preload, and the application's flags must still apply.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { OtlpReceiver } from './support/otlp-receiver.mjs';
import { App, fastExport, REGISTER_CJS } from './support/app.mjs';

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
