'use strict';
// The application under load: a plain node:http server whose one route does
// a little CPU work (about 0.2 ms on the reference machine, see
// docs/benchmarks.md) and answers with a small JSON document. The same file
// runs in every variant; only NODE_OPTIONS differs (no preload, the preload,
// the preload plus the profiler's V8 perf-map flags), and BENCH_ADDED_US for
// the calibration variant.
//
// Started by run.mjs with an IPC channel: sends {type:'ready', port} once
// listening, and answers {type:'stats'} with cumulative counters: requests
// served, the time spent inside the work itself and in the added cost, and
// the event loop's busy and idle time (performance.eventLoopUtilization). The
// time inside the work is the yardstick run.mjs uses to take out the speed
// of a shared, noisy CPU (see there). Writes nothing on stdout: whatever
// appears there came from the preload, which must never write to it.

const http = require('node:http');
const { performance } = require('node:perf_hooks');

// Records per request: fixed (not calibrated per run), so that every
// variant does exactly the same work; about 0.2 ms of CPU (0.18-0.20 ms on
// the reference machine, see docs/benchmarks.md).
const RECORDS = Number(process.env.BENCH_WORK_RECORDS) || 170;

// What a small JSON API handler does: build some records, serialise and
// parse them (as a cache or a downstream call would), aggregate, answer
// with a small JSON document. Typical JavaScript (objects, strings, JSON,
// a Map) rather than a tight arithmetic loop: the cost of such a loop
// depends on where V8 happens to place its code, up to 2.5x from one
// process to the next, which would drown the effect being measured.
function work(seed) {
  const records = [];
  for (let i = 0; i < RECORDS; i++) {
    const n = (seed * 31 + i * 17) % 1000;
    records.push({
      id: seed + i,
      name: `user-${n}`,
      email: `user${n}@example.com`,
      tags: [`t${n % 7}`, `t${n % 11}`],
      score: n / 10,
      active: (n & 1) === 0,
    });
  }
  const parsed = JSON.parse(JSON.stringify(records));
  const byTag = new Map();
  for (const r of parsed) {
    if (!r.active) continue;
    for (const t of r.tags) byTag.set(t, (byTag.get(t) || 0) + r.score);
  }
  const top = [...byTag]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 5)
    .map(([tag, total]) => ({ tag, total: Math.round(total * 10) / 10 }));
  return JSON.stringify({ seed, count: parsed.length, top });
}

// Microseconds of CPU added to every request outside the work (the
// calibration variant of run.mjs): a cost of known size, measured the same
// way as the preload's.
const ADDED_US = Number(process.env.BENCH_ADDED_US) || 0;

// The added cost: a busy loop on the clock, which allocates nothing (no
// garbage to collect beyond what it is charged for).
function spin(us) {
  const until = performance.now() + us / 1000;
  while (performance.now() < until);
}

let counter = 0;
let requests = 0;
let workNs = 0n;
let addedNs = 0n;
const server = http.createServer((req, res) => {
  if (req.method !== 'GET' || !req.url.startsWith('/work')) {
    res.writeHead(404).end();
    return;
  }
  counter = (counter + 1) % 1000000;
  const t0 = process.hrtime.bigint();
  const body = work(counter);
  const t1 = process.hrtime.bigint();
  workNs += t1 - t0;
  if (ADDED_US > 0) {
    spin(ADDED_US);
    addedNs += process.hrtime.bigint() - t1;
  }
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
    addedMs: Number(addedNs) / 1e6,
    activeMs: elu.active,
    idleMs: elu.idle,
  });
});

server.listen(0, '127.0.0.1', () => {
  process.send({ type: 'ready', port: server.address().port });
});

// No SIGTERM handler of our own: with the preload, telemetry is flushed and
// the process ends by the signal, as it would in a pod.
