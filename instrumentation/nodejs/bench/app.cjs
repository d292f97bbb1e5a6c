'use strict';
// The application under load: a plain node:http server whose one route does
// a little CPU work (about 0.2 ms on the reference machine, see
// docs/benchmarks.md) and answers with a small JSON document. The same file
// runs in every variant; only NODE_OPTIONS differs (no preload, the preload,
// the preload plus the profiler's V8 perf-map flags).
//
// Prints one line `{"port":N,"workUs":X}` on stdout once listening: the
// port, and the time the work takes here, measured after a short warmup, so
// the report can show how large the per-request work is on this machine.

const http = require('node:http');

// Inner loop iterations per item, 20 items: fixed (not calibrated per run),
// so that every variant does exactly the same work.
const ITERATIONS = Number(process.env.BENCH_WORK_ITERATIONS) || 7800;

function work(seed) {
  let x = seed >>> 0;
  const items = [];
  for (let i = 0; i < 20; i++) {
    let acc = 0;
    for (let j = 0; j < ITERATIONS; j++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      acc += x & 0xff;
    }
    items.push({ id: i, score: acc, tag: `item-${(x % 1000).toString(36)}` });
  }
  items.sort((a, b) => a.score - b.score);
  return JSON.stringify({ seed, items });
}

function measureWorkUs() {
  for (let i = 0; i < 500; i++) work(i);
  const n = 1000;
  const t0 = process.hrtime.bigint();
  let len = 0;
  for (let i = 0; i < n; i++) len += work(i).length;
  const us = Number(process.hrtime.bigint() - t0) / n / 1000;
  return len > 0 ? us : NaN;
}

let counter = 0;
const server = http.createServer((req, res) => {
  if (req.method !== 'GET' || !req.url.startsWith('/work')) {
    res.writeHead(404).end();
    return;
  }
  counter = (counter + 1) >>> 0;
  const body = work(counter);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 60000;

const workUs = measureWorkUs();
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port, workUs: Math.round(workUs * 10) / 10 })}\n`);
});

// No SIGTERM handler of our own: with the preload, telemetry is flushed and
// the process ends by the signal, as it would in a pod.
