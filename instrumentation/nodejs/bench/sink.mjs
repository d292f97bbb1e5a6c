// The OTLP/HTTP endpoint the instrumented variants export to: accepts
// POST [/<prefix>]/v1/traces, /v1/metrics and /v1/logs, reads the whole body and
// discards it, answering like a collector (200, an empty protobuf Export*
// ServiceResponse, which is zero bytes). It does not decode: that is the
// gateway's cost, not the application's, and decoding every span of a
// load test here (test/support/otlp-receiver.mjs keeps them all in memory)
// would only add noise on the CPU the load generator uses. It counts
// requests and bytes per signal, so the run can show that the exporter did
// real work.
//
// Runs in its own process (started by run.mjs, pinned with the load
// generator, away from the application's CPU). IPC: sends
// {type:'ready', endpoint}; answers {type:'stats'} with the counters.

import http from 'node:http';

// Counters per endpoint path prefix: run.mjs gives every variant an
// endpoint of its own (http://sink/<variant>), so that variants running at
// the same time (--concurrent) are counted apart.
const stats = {};
const counters = (prefix) =>
  (stats[prefix] ||= { traces: { requests: 0, bytes: 0 }, metrics: { requests: 0, bytes: 0 }, logs: { requests: 0, bytes: 0 } });
const ROUTE = /^(?:\/([^/]+))?\/v1\/(traces|metrics|logs)$/;
let other = 0;

const server = http.createServer((req, res) => {
  const route = req.method === 'POST' ? ROUTE.exec(req.url) : null;
  if (!route) {
    other += 1;
    req.resume();
    res.writeHead(404).end();
    return;
  }
  const counter = counters(decodeURIComponent(route[1] || ''))[route[2]];
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    counter.requests += 1;
    counter.bytes += bytes;
    res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 }).end();
  });
  req.on('error', () => {});
});
server.keepAliveTimeout = 60000;

server.listen(0, '127.0.0.1', () => {
  process.send({ type: 'ready', endpoint: `http://127.0.0.1:${server.address().port}` });
});

process.on('message', (msg) => {
  if (msg && msg.type === 'stats') process.send({ type: 'stats', stats: { ...stats, other } });
});
process.on('disconnect', () => process.exit(0));
