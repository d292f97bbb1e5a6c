'use strict';
// The application under load: a plain node:http server whose one route does
// a little CPU work (about 0.2 ms on the reference machine, see
// docs/benchmarks.md) and answers with a small JSON document. The same file
// runs in every variant; only NODE_OPTIONS differs (no preload, the preload,
// the preload plus the profiler's V8 perf-map flags).
//
// Started by run.mjs with an IPC channel: sends {type:'ready', port} once
// listening, and answers {type:'stats'} with cumulative counters: requests
// served, the time spent inside the work itself, and the event loop's busy
// and idle time (performance.eventLoopUtilization). The
// time inside the work is the yardstick run.mjs uses to take out the speed
// of a shared, noisy CPU (see there). Writes nothing on stdout: whatever
// appears there came from the preload, which must never write to it.

const http = require('node:http');
const { performance } = require('node:perf_hooks');

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

let counter = 0;
let requests = 0;
let workNs = 0n;
const server = http.createServer((req, res) => {
  if (req.method !== 'GET' || !req.url.startsWith('/work')) {
    res.writeHead(404).end();
    return;
  }
  counter = (counter + 1) >>> 0;
  const t0 = process.hrtime.bigint();
  const body = work(counter);
  workNs += process.hrtime.bigint() - t0;
  requests += 1;
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 60000;

process.on('message', (msg) => {
  if (!msg || msg.type !== 'stats') return;
  const elu = performance.eventLoopUtilization();
  process.send({
    type: 'stats',
    requests,
    workMs: Number(workNs) / 1e6,
    activeMs: elu.active,
    idleMs: elu.idle,
  });
});

server.listen(0, '127.0.0.1', () => {
  process.send({ type: 'ready', port: server.address().port });
});

// No SIGTERM handler of our own: with the preload, telemetry is flushed and
// the process ends by the signal, as it would in a pod.
