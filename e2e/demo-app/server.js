// The demo app: two services calling each other, plus a load generator, in
// one file with no dependencies (Node's own http only, so the instrumentation
// the operator injects is the only OpenTelemetry code in the pod).
//
//   ROLE=frontend  GET /checkout?items=N  calls the backend once per request
//   ROLE=backend   GET /price?items=N     CPU-heavy: computePrice(), whose
//                                         CPU time grows with N, is the hot
//                                         function a profile should name;
//                                         one request in FAIL_EVERY (default
//                                         25) fails with 500, so that error
//                                         rates have something to show
//   ROLE=load      calls TARGET_URL every INTERVAL_MS, forever
//
// Every role answers GET /healthz. PORT (default 8080); BACKEND_URL (default
// http://backend:8080) for the frontend.
'use strict';

const http = require('node:http');

const role = process.env.ROLE || 'frontend';
const port = Number(process.env.PORT || 8080);

// Deliberately slow: trial division over a range sized by `items`, so CPU
// time grows with the request and the function stays on the stack long
// enough for a 99 Hz sampler to see it.
function computePrice(items) {
  let primes = 0;
  const limit = 2000 + items * 400;
  for (let n = 2; n < limit; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) {
      if (n % d === 0) {
        prime = false;
        break;
      }
    }
    if (prime) primes++;
  }
  return primes / 100;
}

function items(url) {
  const n = Number(new URL(url, 'http://x').searchParams.get('items') || 50);
  return Number.isInteger(n) && n > 0 && n <= 10000 ? n : null;
}

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function get(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () =>
        res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`${url}: HTTP ${res.statusCode} ${body}`)),
      );
    });
    req.setTimeout(10000, () => req.destroy(new Error(`${url}: timed out`)));
    req.on('error', reject);
  });
}

const failEvery = Number(process.env.FAIL_EVERY || 25);
let priced = 0;

const routes = {
  backend: {
    '/price': (req, res) => {
      const n = items(req.url);
      if (n === null) return reply(res, 400, { error: 'items must be an integer in 1..10000' });
      if (++priced % failEvery === 0) return reply(res, 500, { error: 'pricing is temporarily unavailable' });
      reply(res, 200, { items: n, price: computePrice(n) });
    },
  },
  frontend: {
    '/checkout': async (req, res) => {
      const n = items(req.url);
      if (n === null) return reply(res, 400, { error: 'items must be an integer in 1..10000' });
      const backend = process.env.BACKEND_URL || 'http://backend:8080';
      try {
        const quote = await get(`${backend}/price?items=${n}`);
        reply(res, 200, { items: n, total: quote.price });
      } catch (err) {
        reply(res, 502, { error: err.message });
      }
    },
  },
  load: {},
};

if (!(role in routes)) {
  console.error(`ROLE must be one of ${Object.keys(routes).join(', ')}, not '${role}'`);
  process.exit(64);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path === '/healthz') return reply(res, 200, { role });
  const route = routes[role][path];
  if (!route) return reply(res, 404, { error: `no route ${path} on the ${role}` });
  route(req, res);
});
server.listen(port, () => console.log(`${role} listening on :${port}`));

if (role === 'load') {
  const target = process.env.TARGET_URL || 'http://frontend:8080/checkout?items=50';
  const interval = Number(process.env.INTERVAL_MS || 200);
  let ok = 0;
  let failed = 0;
  setInterval(() => {
    get(target).then(() => ok++, (err) => {
      failed++;
      console.error(err.message);
    });
  }, interval);
  setInterval(() => console.log(`load: ${ok} ok, ${failed} failed`), 10000);
}

process.on('SIGTERM', () => server.close(() => process.exit(0)));
