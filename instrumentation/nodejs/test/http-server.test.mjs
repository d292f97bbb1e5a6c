// src/http-server.cjs: the attributes of plain requests, computed without
// parsing a URL, against upstream's function on the same real requests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { plainRequestAttributes } = require('../src/http-server.cjs');
const utils = require('@opentelemetry/instrumentation-http/build/src/utils.js');

const diag = { verbose() {}, debug() {}, info() {}, warn() {}, error() {} };

/** Sends raw request heads to a real server; returns what both functions made of each. */
async function attributesOf(heads) {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push({
      plain: plainRequestAttributes(req, 'http'),
      upstream: utils.getIncomingRequestAttributes(req, { component: 'http', enableSyntheticSourceDetection: false }, diag),
    });
    res.end();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    for (const head of heads) {
      await new Promise((resolve, reject) => {
        const socket = net.connect(server.address().port, '127.0.0.1', () => socket.end(`${head}\r\n\r\n`));
        socket.on('data', () => {});
        socket.on('end', resolve);
        socket.on('error', reject);
      });
    }
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  assert.equal(seen.length, heads.length, 'every request reached the handler');
  return seen;
}

test('plain requests: same attributes as upstream, same order, without parsing a URL', async () => {
  const heads = [
    'GET /work HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: autocannon',
    'GET / HTTP/1.1\r\nHost: example.com',
    'POST /api/v1/users/42 HTTP/1.1\r\nHost: svc.ns.svc.cluster.local:80\r\nContent-Length: 0',
    "DELETE /a//b/c-d_e~f!$&'()*+,;=:@%41 HTTP/1.0\r\nHost: my-host",
    'PATCH /x HTTP/1.1\r\nHost: 10.0.0.1:65535',
    'HEAD /file.txt HTTP/1.1\r\nHost: EXAMPLE.com.',
    // Hosts seen before (parsed once): the same attributes again.
    'GET /again HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: other',
    'PUT /x HTTP/1.1\r\nHost: my-host',
  ];
  for (const { plain, upstream } of await attributesOf(heads)) {
    assert.notEqual(plain, null, `${JSON.stringify(upstream)} should be plain`);
    assert.deepEqual(Object.entries(plain), Object.entries(upstream));
  }
});

test('other requests are left to upstream, whose attributes differ or need parsing', async () => {
  const heads = [
    'GET /search?q=1 HTTP/1.1\r\nHost: a', // query (redacted by upstream)
    'GET /a/../b HTTP/1.1\r\nHost: a', // dot segments
    'GET /a/%2e%2E/b HTTP/1.1\r\nHost: a',
    'GET /.well-known/x HTTP/1.1\r\nHost: a',
    'GET //evil/x HTTP/1.1\r\nHost: a', // a host for URL
    'GET /a|b^c{d} HTTP/1.1\r\nHost: a', // percent-encoded by URL
    'GET /x HTTP/1.1\r\nHost: 10.0.0.300', // not an address: no url.path upstream
    'GET /x HTTP/1.1\r\nHost: a:99999', // no such port: no url.path upstream
    'GET /x HTTP/1.1\r\nHost: [::1]:8080', // IPv6
    'GET /x HTTP/1.1\r\nHost: a_b', // underscore
    'GET /x HTTP/1.1\r\nHost: xn--abc', // punycode (this one invalid: no url.path upstream)
    'GET /x HTTP/1.0', // no Host
    'GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4',
    'GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: b:81',
    'GET /x HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4;host=b',
    'PURGE /x HTTP/1.1\r\nHost: a', // normalised to _OTHER upstream
    'GET * HTTP/1.1\r\nHost: a',
    // Hosts seen before, still not plain.
    'GET /y HTTP/1.1\r\nHost: 10.0.0.300',
    'GET /y HTTP/1.1\r\nHost: a:99999',
  ];
  for (const { plain } of await attributesOf(heads)) assert.equal(plain, null);
});

test('the request and response emit patches are removed with the instrumentation', () => {
  const { LeanServerHttpInstrumentation } = require('../src/http-server.cjs');
  const protos = [http.IncomingMessage.prototype, http.ServerResponse.prototype];
  const before = protos.map((p) => Object.getOwnPropertyDescriptor(p, 'emit'));
  const inst = new LeanServerHttpInstrumentation({ enabled: false });
  inst._incomingRequestFunction('http', () => false);
  for (const p of protos) assert.ok(Object.hasOwn(p, 'emit'), 'emit patched');
  inst.disable();
  assert.deepEqual(protos.map((p) => Object.getOwnPropertyDescriptor(p, 'emit')), before);
});

test('server duration attribute sets: built once per set, frozen, upstream order, hashed as the SDK hashes them', async () => {
  const { MetricAttributeSets, NO_ERROR } = require('../src/http-server.cjs');
  const sdkNode = path.dirname(require.resolve('@opentelemetry/sdk-node'));
  const metricsRequire = createRequire(path.join(sdkNode, 'index.js'));
  const sdkMetrics = metricsRequire('@opentelemetry/sdk-metrics');
  const metricsUtils = metricsRequire('@opentelemetry/sdk-metrics/build/src/utils.js');
  const { AttributeHashMap } = metricsRequire('@opentelemetry/sdk-metrics/build/src/state/HashMap.js');
  // The SDK's maps of data points use the memoizing hash (an SDK version
  // that hashes elsewhere fails here).
  assert.equal(metricsUtils.hashAttributes.vispyrMemoized, true);
  assert.equal(new AttributeHashMap()._hash, metricsUtils.hashAttributes);

  const sets = new MetricAttributeSets();
  const ok = sets.get('GET', 'http', '1.1', 200, undefined, NO_ERROR);
  assert.equal(sets.get('GET', 'http', '1.1', 200, undefined, NO_ERROR), ok, 'one object per set');
  assert.ok(Object.isFrozen(ok));
  assert.deepEqual(Object.entries(ok), [['http.request.method', 'GET'], ['url.scheme', 'http'], ['network.protocol.version', '1.1'], ['http.response.status_code', 200]]);
  const routed = sets.get('POST', 'https', '2.0', 503, '/users/:id', '503');
  assert.deepEqual(Object.entries(routed), [
    ['http.request.method', 'POST'], ['url.scheme', 'https'], ['network.protocol.version', '2.0'],
    ['http.response.status_code', 503], ['http.route', '/users/:id'], ['error.type', '503'],
  ]);
  // Sets that differ only in an absent, undefined or look-alike value stay apart.
  const distinct = [
    ok,
    routed,
    sets.get('GET', 'http', undefined, 200, undefined, NO_ERROR),
    sets.get('GET', 'http', '1.1', 200, 'undefined', NO_ERROR),
    sets.get('GET', 'http', '1.1', 200, undefined, undefined),
    sets.get('GET', 'http', '1.1', 200, '-', NO_ERROR),
    sets.get('GET', 'http', '1.1', 200, '1 2', '3'),
    sets.get('GET', 'http', '1.1', 200, '1', '2 3'),
  ];
  assert.equal(new Set(distinct.map((a) => JSON.stringify(Object.entries(a)))).size, distinct.length);
  assert.ok(Object.hasOwn(distinct[4], 'error.type') && distinct[4]['error.type'] === undefined, 'an error without a name, as upstream');
  assert.ok(!Object.isFrozen(sets.get('GET', 'http', '1.1', '200', undefined, NO_ERROR)), 'a status code that is not a number is not cached');

  // Through a real MeterProvider: a cached set and an equal fresh object are
  // one data point, with the set's attributes.
  const exporter = new sdkMetrics.InMemoryMetricExporter(sdkMetrics.AggregationTemporality.CUMULATIVE);
  const reader = new sdkMetrics.PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3600000 });
  const provider = new sdkMetrics.MeterProvider({ readers: [reader] });
  const histogram = provider.getMeter('t').createHistogram('d');
  histogram.record(1, ok);
  histogram.record(2, { ...ok });
  histogram.record(3, routed);
  await reader.forceFlush();
  const points = exporter.getMetrics()[0].scopeMetrics[0].metrics[0].dataPoints;
  assert.deepEqual(points.map((p) => [Object.entries(p.attributes), p.value.count, p.value.sum]), [
    [Object.entries(ok), 2, 3],
    [Object.entries(routed), 1, 3],
  ]);
  await provider.shutdown();
});

test("ending a request's span: the route names it only when not empty; an error gives the error alone, as upstream", () => {
  const { ServerRequest, MetricAttributeSets } = require('../src/http-server.cjs');
  const end = (route, error) => {
    const calls = [];
    const span = {
      setAttribute: (k, v) => calls.push(['attribute', k, v]),
      updateName: (n) => calls.push(['name', n]),
      setStatus: (s) => calls.push(['status', s.code]),
      recordException: (e) => calls.push(['exception', e.message]),
      end: () => calls.push(['end']),
    };
    const recorded = [];
    const inst = { _metricAttributeSets: new MetricAttributeSets(), _recordServerDuration: (ms, attributes) => recorded.push({ ...attributes }) };
    const attributes = { 'http.request.method': 'GET', 'url.scheme': 'http', 'network.protocol.version': '1.1' };
    const request = new ServerRequest(inst, 'GET', attributes, 0, span, { route }, { statusCode: 200 });
    request.end(error);
    request.end(error); // once only
    return { calls, recorded };
  };
  const base = { 'http.request.method': 'GET', 'url.scheme': 'http', 'network.protocol.version': '1.1' };

  const named = end('/users/:id');
  assert.deepEqual(named.calls, [
    ['attribute', 'http.response.status_code', 200],
    ['attribute', 'http.route', '/users/:id'],
    ['name', 'GET /users/:id'],
    ['status', 0],
    ['end'],
  ]);
  assert.deepEqual(named.recorded, [{ ...base, 'http.response.status_code': 200, 'http.route': '/users/:id' }]);

  const empty = end('');
  assert.ok(empty.calls.some(([kind, k]) => kind === 'attribute' && k === 'http.route'));
  assert.ok(!empty.calls.some(([kind]) => kind === 'name'), 'an empty route does not rename the span');

  const failed = end('/users/:id', new TypeError('boom'));
  assert.deepEqual(failed.calls, [
    ['attribute', 'error.type', 'TypeError'],
    ['status', 2],
    ['exception', 'boom'],
    ['end'],
  ]);
  assert.deepEqual(failed.recorded, [{ ...base, 'error.type': 'TypeError' }]);
});
