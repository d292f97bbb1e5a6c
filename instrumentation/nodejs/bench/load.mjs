// The load generator: autocannon (programmatic API) in a process of its own,
// pinned by run.mjs to a CPU other than the application's. IPC: sends
// {type:'ready'}; for each {type:'run', id, url, connections, duration}
// runs autocannon and answers {type:'result', id, result} with the figures
// run.mjs uses (or {type:'result', id, error}).

import autocannon from 'autocannon';

/** The q-quantile of sorted values (nearest rank). */
function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

// autocannon's own latency histogram has whole-millisecond resolution, too
// coarse for sub-millisecond requests: the latencies of the 2xx responses are
// kept here as measured (process.hrtime, fractional ms) instead.
function summary(r, latencies) {
  const ok = r['2xx'];
  const sorted = Float64Array.from(latencies).sort();
  return {
    duration: r.duration, // seconds, as measured by autocannon
    ok,
    rps: r.duration > 0 ? ok / r.duration : 0,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    latency: {
      p50: quantile(sorted, 0.5),
      p90: quantile(sorted, 0.9),
      p99: quantile(sorted, 0.99),
      max: sorted.length ? sorted[sorted.length - 1] : NaN,
      samples: sorted.length,
    },
  };
}

process.on('message', async (msg) => {
  if (!msg || msg.type !== 'run') return;
  try {
    const latencies = [];
    const instance = autocannon({
      url: msg.url,
      connections: msg.connections,
      pipelining: 1,
      duration: msg.duration,
      timeout: 10,
    });
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
    });
    const result = await instance;
    process.send({ type: 'result', id: msg.id, result: summary(result, latencies) });
  } catch (err) {
    process.send({ type: 'result', id: msg.id, error: String((err && err.message) || err) });
  }
});
process.on('disconnect', () => process.exit(0));
process.send({ type: 'ready' });
