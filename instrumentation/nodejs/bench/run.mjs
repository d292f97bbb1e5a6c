// Overhead of the @vispyr/node preload on a small HTTP app: requests/s and
// p99 latency without the preload, with it, and with it plus the V8 perf-map
// flags the Vispyr profiler needs, side by side in one run.
//
//   npm run bench [-- options]          (make bench runs this)
//
// Options (or the BENCH_* variables):
//   --rounds N        BENCH_ROUNDS       rounds of every variant      (7)
//   --duration S      BENCH_DURATION     measured seconds per slot    (4)
//   --warmup S        BENCH_WARMUP       warmup seconds per slot      (1.5)
//   --connections N   BENCH_CONNECTIONS  autocannon connections       (10)
//   --variants a,b,c  BENCH_VARIANTS     which variants (keys below)  (baseline,preload,preload+perf)
//   --extra           BENCH_EXTRA=1      add the diagnostic variants (perf-inlining-limit, perf-map-only, native-stack-only, upstream-http-server, upstream-span-export, sampled-10, no-metrics, no-traces, http-only, no-http)
//   --known-cost US   BENCH_KNOWN_COST   CPU microseconds the calibration variant adds per request (30)
//   --inlining-limit N BENCH_INLINING_LIMIT variant perf-inlining-limit's limit: bytes of bytecode, or v8 (27)
//   --concurrent      BENCH_CONCURRENT=1 run a round's variants at the same time on the app's CPU (below)
//   --json FILE                          also write every round's figures as JSON
//   --compare DIR     BENCH_COMPARE      add a variant "compare": the preload of another copy of this
//                                        package (e.g. a checkout of an earlier version, with its node_modules)
//   BENCH_NO_PIN=1                       do not pin processes to CPUs
//   VISPYR_BENCH_PAYLOAD=dist/payload    measure a built payload instead of this directory
//
// How: every slot starts a fresh application process (bench/app.cjs) for one
// variant, warms it up, measures it with autocannon, stops it (SIGTERM: the
// preload flushes, as in a pod). Variants are interleaved round by round
// (A B C, A B C, ...) so that drift of a noisy machine affects all alike, and
// the report gives medians over the rounds. The application is pinned to one
// CPU with taskset; the load generator (its own process), the OTLP sink (its
// own process, bench/sink.mjs) and this script share the other CPU(s).
//
// Two measures per variant:
//  - req/s (wall clock, from autocannon): what the issue's targets are
//    stated in, but on a shared machine it moves with whatever else runs;
//  - the work share: the part of the app's CPU time spent in its own fixed
//    work (bench/app.cjs measures the time inside it and its event loop's
//    busy time; the CPU time of its threads comes from /proc). Other load
//    slows the work and the rest alike, so the ratio of two variants' work
//    shares is their throughput ratio on a dedicated CPU, with much less
//    noise. Both are printed, with each target's verdict on both;
//  - requests per CPU-second of the app: what the perf-map flags' verdict
//    is normalised by, as they change the speed of the work itself.
//
// --concurrent: every round starts all its variants together, pinned to the
// same CPU, and loads them at the same time (warmup and measured time
// multiplied by their number, so that each gets about the CPU time it gets
// alone), in an order that turns every round. The scheduler shares the CPU
// between them, so a change of the host's speed hits every variant alike,
// at every instant: the per-round ratios of their requests per CPU-second
// scatter by 1-3% (an A/A run of one variant against itself: 0.995), where
// those of the default mode scatter by 5-15%. What it measures is the cost
// with the CPU shared, caches and all, as on a busy node: costs that touch
// more code or memory measure larger than alone (docs/benchmarks.md, "The
// inlining limit"). Verdicts are then on requests per CPU-second.
//
// Calibration (variant known-cost, in the default set): the baseline app
// plus a busy loop of a known length per request, outside the work. Its
// cost is known (the app times the loop), so the run shows how a cost of
// that size measures here, next to the preload's. It measures larger than
// it is: on loopback the app's CPU pays for waking the load generator with
// every response, and the slower the app answers, the more often the load
// generator has gone to sleep in between and the dearer the wake-up
// (docs/benchmarks.md, "Calibration"). The targets' verdicts are on the
// measured figures; the calibration says how much of a cost is the setup's.
//
// A benchmark, not a test: a missed target is printed as MISS, the exit
// status is 0 unless the benchmark itself could not run.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const PKG_DIR = path.resolve(BENCH_DIR, '..');
const PRELOAD_DIR = process.env.VISPYR_BENCH_PAYLOAD ? path.resolve(PKG_DIR, process.env.VISPYR_BENCH_PAYLOAD) : PKG_DIR;
const REGISTER = path.join(PRELOAD_DIR, 'register.cjs');
// Exactly the flags the operator adds for the profiler (operator/src/inject/mod.rs);
// seeing them, the preload limits V8's inlining (src/profiling.cjs).
const PERF_FLAGS = '--perf-basic-prof-only-functions --interpreted-frames-native-stack';

// Targets of issue 5.
const TARGET_PRELOAD = 0.9; // preload / baseline throughput, at least
const TARGET_FLAGS_COST = 0.02; // 1 - (preload+perf / preload), under

const PRELOAD = `--require "${REGISTER}"`;
const VARIANTS = {
  baseline: { label: 'baseline (no preload)', nodeOptions: '' },
  preload: { label: 'preload', nodeOptions: PRELOAD, exports: true },
  // The webhook's exact NODE_OPTIONS: preload, then the perf-map flags.
  'preload+perf': { label: 'preload + perf-map flags', nodeOptions: `${PRELOAD} ${PERF_FLAGS}`, exports: true, perfMap: true },
  // Diagnostic variants (--extra): where the cost of the preload goes.
  'sampled-10': {
    label: 'preload, parentbased_traceidratio 0.1',
    nodeOptions: PRELOAD,
    env: { OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' },
    exports: true,
  },
  'no-metrics': { label: 'preload, OTEL_METRICS_EXPORTER=none', nodeOptions: PRELOAD, env: { OTEL_METRICS_EXPORTER: 'none' }, exports: true },
  'no-traces': { label: 'preload, OTEL_TRACES_EXPORTER=none', nodeOptions: PRELOAD, env: { OTEL_TRACES_EXPORTER: 'none' } },
  'no-http': {
    label: 'preload, OTEL_NODE_DISABLED_INSTRUMENTATIONS=http',
    nodeOptions: PRELOAD,
    env: { OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'http' },
  },
  // Each of the two flags alone: which of them costs.
  'perf-map-only': { label: 'preload + --perf-basic-prof-only-functions', nodeOptions: `${PRELOAD} --perf-basic-prof-only-functions`, exports: true, perfMap: true },
  'native-stack-only': { label: 'preload + --interpreted-frames-native-stack', nodeOptions: `${PRELOAD} --interpreted-frames-native-stack`, exports: true },
  'upstream-http-server': {
    label: 'preload, VISPYR_HTTP_SERVER=upstream',
    nodeOptions: PRELOAD,
    env: { VISPYR_HTTP_SERVER: 'upstream' },
    exports: true,
  },
  'upstream-span-export': {
    label: 'preload, VISPYR_SPAN_EXPORT=upstream',
    nodeOptions: PRELOAD,
    env: { VISPYR_SPAN_EXPORT: 'upstream' },
    exports: true,
  },
  'known-cost': { label: 'baseline + a known cost per request (calibration)', nodeOptions: '', calibration: true },
  'http-only': {
    label: 'preload, OTEL_NODE_ENABLED_INSTRUMENTATIONS=http',
    nodeOptions: PRELOAD,
    env: { OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'http' },
    exports: true,
  },
};
const DEFAULT_VARIANTS = ['baseline', 'preload', 'preload+perf', 'known-cost'];
const EXTRA_VARIANTS = ['perf-inlining-limit', 'perf-map-only', 'native-stack-only', 'upstream-http-server', 'upstream-span-export', 'sampled-10', 'no-metrics', 'no-traces', 'http-only', 'no-http'];

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const env = process.env;
  const opts = {
    rounds: Number(env.BENCH_ROUNDS) || 7,
    duration: Number(env.BENCH_DURATION) || 4,
    warmup: Number(env.BENCH_WARMUP) || 1.5,
    connections: Number(env.BENCH_CONNECTIONS) || 10,
    knownCost: Number(env.BENCH_KNOWN_COST) || 30,
    inliningLimit: env.BENCH_INLINING_LIMIT || '27',
    variants: env.BENCH_VARIANTS ? env.BENCH_VARIANTS.split(',') : [...DEFAULT_VARIANTS],
    extra: env.BENCH_EXTRA === '1',
    json: null,
    pin: env.BENCH_NO_PIN !== '1',
    compare: env.BENCH_COMPARE || null,
    concurrent: env.BENCH_CONCURRENT === '1',
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--rounds': opts.rounds = Number(value()); break;
      case '--duration': opts.duration = Number(value()); break;
      case '--warmup': opts.warmup = Number(value()); break;
      case '--connections': opts.connections = Number(value()); break;
      case '--known-cost': opts.knownCost = Number(value()); break;
      case '--inlining-limit': opts.inliningLimit = value(); break;
      case '--variants': opts.variants = value().split(','); break;
      case '--extra': opts.extra = true; break;
      case '--json': opts.json = value(); break;
      case '--no-pin': opts.pin = false; break;
      case '--compare': opts.compare = value(); break;
      case '--concurrent': opts.concurrent = true; break;
      default:
        console.error(`unknown option ${argv[i]} (see the head of bench/run.mjs)`);
        process.exit(2);
    }
  }
  if (!/^([0-9]+|v8)$/.test(opts.inliningLimit)) {
    console.error('--inlining-limit must be a number of bytes or v8');
    process.exit(2);
  }
  // The flags with another inlining limit than the preload's default.
  VARIANTS['perf-inlining-limit'] = {
    label: `preload + perf-map flags, inlining limit ${opts.inliningLimit === 'v8' ? "V8's own" : `${opts.inliningLimit} bytes`}`,
    nodeOptions: `${PRELOAD} ${PERF_FLAGS}`,
    env: { VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE: opts.inliningLimit },
    exports: true,
    perfMap: true,
  };
  if (opts.extra) for (const v of EXTRA_VARIANTS) if (!opts.variants.includes(v)) opts.variants.push(v);
  if (opts.compare) {
    const register = path.join(path.resolve(opts.compare), 'register.cjs');
    if (!fs.existsSync(register)) {
      console.error(`--compare: ${register} not found`);
      process.exit(2);
    }
    VARIANTS.compare = { label: `preload of ${opts.compare}`, nodeOptions: `--require "${register}"`, exports: true };
    if (!opts.variants.includes('compare')) opts.variants.push('compare');
  }
  for (const v of opts.variants) {
    if (!VARIANTS[v]) {
      console.error(`unknown variant ${v}; known: ${Object.keys(VARIANTS).join(', ')}`);
      process.exit(2);
    }
  }
  for (const k of ['rounds', 'duration', 'warmup', 'connections', 'knownCost']) {
    if (!(opts[k] > 0)) {
      console.error(`--${k} must be a positive number`);
      process.exit(2);
    }
  }
  return opts;
}

// ---------------------------------------------------------------- CPU pinning

/** CPUs this process may run on, from taskset; null without taskset. */
function allowedCpus() {
  const r = spawnSync('taskset', ['-pc', String(process.pid)], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const m = /list:\s*([\d,\-\s]+)$/m.exec(r.stdout);
  if (!m) return null;
  const cpus = [];
  for (const part of m[1].trim().split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b === undefined ? a : b); c++) cpus.push(c);
  }
  return cpus;
}

function pinPlan(wanted) {
  if (!wanted) return { app: null, rest: null, why: 'not pinned (BENCH_NO_PIN=1)' };
  const cpus = allowedCpus();
  if (!cpus) return { app: null, rest: null, why: 'not pinned (taskset not available)' };
  if (cpus.length < 2) return { app: null, rest: null, why: `not pinned (only CPU ${cpus.join(',')} available)` };
  const app = String(cpus[0]);
  const rest = cpus.slice(1).join(',');
  // This orchestrator too, all its threads, away from the application.
  spawnSync('taskset', ['-a', '-pc', rest, String(process.pid)], { stdio: 'ignore' });
  return { app, rest, why: `taskset: app on CPU ${app}; load generator, OTLP sink and orchestrator on CPU ${rest}` };
}

/** spawn(), prefixed with `taskset -c cpus` when pinning. */
function spawnPinned(cpus, args, options) {
  if (cpus) return spawn('taskset', ['-c', cpus, process.execPath, ...args], options);
  return spawn(process.execPath, args, options);
}

// ---------------------------------------------------------------- helper processes

/** A forked helper (sink or load generator) speaking IPC. */
class Helper {
  constructor(name, script, cpus) {
    this.name = name;
    this.child = spawnPinned(cpus, [script], { cwd: PKG_DIR, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: cleanEnv() });
    this.pending = new Map();
    this.nextId = 1;
    this.ready = new Promise((resolve, reject) => {
      this.child.once('exit', (code, signal) => reject(new Error(`${name} exited (code ${code}, signal ${signal})`)));
      this.child.on('message', (msg) => {
        if (msg.type === 'ready') resolve(msg);
        else if (msg.type === 'result' && this.pending.has(msg.id)) {
          this.pending.get(msg.id)(msg);
          this.pending.delete(msg.id);
        } else if (msg.type === 'stats' && this.pending.has('stats')) {
          this.pending.get('stats')(msg.stats);
          this.pending.delete('stats');
        }
      });
    });
  }

  request(msg) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.send({ ...msg, id });
    });
  }

  stats() {
    return new Promise((resolve) => {
      this.pending.set('stats', resolve);
      this.child.send({ type: 'stats' });
    });
  }

  stop() {
    if (this.child.connected) this.child.disconnect();
  }
}

// ---------------------------------------------------------------- the application

/** The environment without anything that would configure Node.js or the preload. */
function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('OTEL_') || k.startsWith('VISPYR_') || k === 'NODE_OPTIONS' || k.startsWith('BENCH_') || k.startsWith('npm_')) continue;
    env[k] = v;
  }
  return env;
}

// The apps running, killed if this script ends early.
const liveApps = new Set();

/** Starts bench/app.cjs for a variant; resolves once it listens. */
function startApp(variant, sinkEndpoint, cpu, knownCostUs) {
  const env = {
    ...cleanEnv(),
    NODE_OPTIONS: variant.nodeOptions,
    // What the webhook sets, with the SDK defaults for everything else
    // (sampler parentbased_always_on: every request is a span).
    OTEL_SERVICE_NAME: 'vispyr-bench',
    OTEL_EXPORTER_OTLP_ENDPOINT: sinkEndpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_PROPAGATORS: 'tracecontext,baggage',
    VISPYR_POD_NAMESPACE: 'bench',
    VISPYR_POD_NAME: 'vispyr-bench-0',
    VISPYR_NODE_NAME: os.hostname(),
    VISPYR_CONTAINER_NAME: 'app',
    ...(variant.env || {}),
    ...(variant.calibration ? { BENCH_ADDED_US: String(knownCostUs) } : {}),
  };
  const child = spawnPinned(cpu, [path.join(BENCH_DIR, 'app.cjs')], { cwd: os.tmpdir(), env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  const app = { child, stdout: '', stderr: '', exited: new Promise((r) => child.once('exit', (code, signal) => r({ code, signal }))) };
  liveApps.add(app);
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => (app.stdout += d));
  child.stderr.on('data', (d) => (app.stderr += d));
  app.statsWaiters = [];
  child.on('message', (msg) => {
    if (msg && msg.type === 'stats' && app.statsWaiters.length) app.statsWaiters.shift()(msg);
  });
  /** The app's cumulative counters (requests, work, event loop, CPU). */
  app.stats = () =>
    new Promise((resolve) => {
      app.statsWaiters.push(resolve);
      child.send({ type: 'stats' });
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`app did not listen within 30 s; stderr: ${app.stderr}`)), 30000);
    child.on('message', (msg) => {
      if (msg && msg.type === 'ready' && !app.port) {
        clearTimeout(timer);
        app.port = msg.port;
        resolve(app);
      }
    });
    app.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`app exited (code ${code}, signal ${signal}) before listening; stderr: ${app.stderr}`));
    });
  });
}

/** SIGTERM (the preload flushes, as in a pod), SIGKILL after 10 s. */
async function stopApp(app) {
  const pid = app.child.pid;
  app.child.kill('SIGTERM');
  const timer = setTimeout(() => app.child.kill('SIGKILL'), 10000);
  await app.exited;
  clearTimeout(timer);
  liveApps.delete(app);
  // The perf map V8 writes for --perf-basic-prof-only-functions.
  const perfMap = `/tmp/perf-${pid}.map`;
  let perfMapBytes = null;
  try {
    perfMapBytes = fs.statSync(perfMap).size;
    fs.rmSync(perfMap, { force: true });
  } catch {
    // not written (variant without the flags)
  }
  return perfMapBytes;
}

function killApps() {
  for (const app of liveApps) {
    app.child.kill('SIGKILL');
    fs.rmSync(`/tmp/perf-${app.child.pid}.map`, { force: true });
  }
}
process.on('exit', killApps);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killApps();
    process.exit(130);
  });
}

// ---------------------------------------------------------------- CPU time of the app

/**
 * Milliseconds on CPU of a process, {main, total}: its main thread and all its
 * threads (V8's GC and compiler threads, libuv's pool, the ESM hooks thread),
 * from /proc/<pid>/task/<tid>/schedstat; null where /proc lacks it.
 */
function cpuMs(pid) {
  try {
    let total = 0;
    let main = 0;
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
        total += ns;
        if (tid === String(pid)) main = ns;
      } catch {
        // the thread ended meanwhile
      }
    }
    return main > 0 ? { main: main / 1e6, total: total / 1e6 } : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- statistics

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmt = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const pct = (x) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)}%` : 'n/a');
const mb = (b) => `${(b / 1e6).toFixed(1)} MB`;

// ---------------------------------------------------------------- main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(REGISTER)) throw new Error(`${REGISTER} not found`);
  const nproc = os.availableParallelism ? os.availableParallelism() : os.cpus().length; // before pinning ourselves
  const pin = pinPlan(opts.pin);
  const cpuModel = (os.cpus()[0] && os.cpus()[0].model) || 'unknown';
  const slotGuess = opts.warmup + opts.duration + 1.5;
  console.log('# @vispyr/node overhead benchmark');
  console.log(`node ${process.version}, ${os.platform()} ${os.release()}, nproc ${nproc} (${cpuModel})`);
  console.log(`preload: ${REGISTER}`);
  console.log(`pinning: ${pin.why}`);
  console.log(
    `load: autocannon, ${opts.connections} connections, pipelining 1, ${opts.warmup} s warmup + ${opts.duration} s measured per app, fresh app processes per round` +
      (opts.concurrent ? `; --concurrent: the round's ${opts.variants.length} variants at the same time on CPU ${pin.app ?? 'any'}` : ''),
  );
  console.log(`variants: ${opts.variants.join(', ')}; ${opts.rounds} interleaved rounds (about ${Math.round(opts.rounds * opts.variants.length * slotGuess)} s)`);
  console.log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  console.log('');

  const sink = new Helper('OTLP sink', path.join(BENCH_DIR, 'sink.mjs'), pin.rest);
  const load = new Helper('load generator', path.join(BENCH_DIR, 'load.mjs'), pin.rest);
  const { endpoint } = await sink.ready;
  await load.ready;

  const results = Object.fromEntries(opts.variants.map((v) => [v, []]));
  const problems = [];
  const started = Date.now();
  for (let round = 1; round <= opts.rounds; round++) {
    // A slot: the variants measured together, one at a time or, with
    // --concurrent, the whole round, started and loaded in an order that
    // turns by one every round (the first one started measured 1-5% apart
    // from the others).
    const turn = (round - 1) % opts.variants.length;
    const turned = [...opts.variants.slice(turn), ...opts.variants.slice(0, turn)];
    const slots = opts.concurrent ? [turned] : opts.variants.map((key) => [key]);
    for (const slot of slots) {
      const before = await sink.stats();
      const apps = [];
      for (const key of slot) {
        const t0 = performance.now();
        // An endpoint of its own, so that the sink counts its exports apart.
        const app = await startApp(VARIANTS[key], `${endpoint}/${key}`, pin.app, opts.knownCost);
        apps.push({ key, app, startMs: performance.now() - t0, url: `http://127.0.0.1:${app.port}/work` });
      }
      // Each app gets about the CPU time it would get alone.
      const loadAll = async (seconds) => {
        const runs = await Promise.all(
          apps.map((a) => load.request({ type: 'run', url: a.url, connections: opts.connections, duration: seconds * apps.length })),
        );
        for (const run of runs) if (run.error) throw new Error(`autocannon: ${run.error}`);
        return runs;
      };
      await loadAll(opts.warmup);
      // The apps' counters around the measured run (they are idle before and
      // after): what the measured requests cost them.
      const s0 = await Promise.all(apps.map((a) => a.app.stats()));
      const c0 = apps.map((a) => cpuMs(a.app.child.pid));
      const runs = await loadAll(opts.duration);
      const c1 = apps.map((a) => cpuMs(a.app.child.pid));
      const s1 = await Promise.all(apps.map((a) => a.app.stats()));
      const perfMaps = await Promise.all(apps.map((a) => stopApp(a.app)));
      const after = await sink.stats();
      apps.forEach(({ key, app, startMs }, i) => {
        const variant = VARIANTS[key];
        const d = {
          requests: s1[i].requests - s0[i].requests,
          workMs: s1[i].workMs - s0[i].workMs,
          addedMs: s1[i].addedMs - s0[i].addedMs,
          activeMs: s1[i].activeMs - s0[i].activeMs,
          idleMs: s1[i].idleMs - s0[i].idleMs,
          mainCpuMs: c0[i] && c1[i] ? c1[i].main - c0[i].main : NaN,
          cpuMs: c0[i] && c1[i] ? c1[i].total - c0[i].total : NaN,
        };
        const perfMapBytes = perfMaps[i];
        const exported = (stats, signal, field) => (stats[key] ? stats[key][signal][field] : 0);
        const r = runs[i].result;
        const row = {
          round,
          // spawn to listening: Node.js startup, plus the preload's.
          startMs,
          rps: r.rps,
          p50: r.latency.p50,
          p99: r.latency.p99,
          latencySamples: r.latency.samples,
          ok: r.ok,
          failed: r.non2xx + r.errors + r.timeouts,
          // Time inside the fixed work per request, as measured (wall clock):
          // about 0.2 ms on a quiet CPU, more when the CPU is shared.
          workUs: (d.workMs / d.requests) * 1000,
          // Time in the calibration's busy loop per request, as measured.
          addedUs: (d.addedMs / d.requests) * 1000,
          // Event loop utilisation while measured: near 100% when the load
          // generator keeps the app saturated.
          elu: d.activeMs / (d.activeMs + d.idleMs),
          // The share of the app's CPU time spent in the fixed work itself:
          // (work / event-loop busy time) x (main thread CPU / all threads'
          // CPU). The rest is Node's HTTP handling, GC and, with the preload,
          // the instrumentation and its exporter. Work and busy time are wall
          // clock of the same busy periods, so a CPU that is shared or slowed
          // (other processes, a busy host) stretches both alike; the ratio of
          // two variants' work shares is then their throughput ratio on a
          // steady, dedicated CPU: the figure a noisy machine moves least.
          workShare: (d.workMs / d.activeMs) * (Number.isFinite(d.cpuMs) && d.cpuMs > 0 ? d.mainCpuMs / d.cpuMs : 1),
          // Requests per second of the app's own CPU time (all its threads):
          // what a CPU of the current speed would serve.
          reqPerCpuSec: d.requests / (d.cpuMs / 1000),
          // CPU the app used (all threads) per second of the measured window.
          cpuShare: d.cpuMs / (d.activeMs + d.idleMs),
          helperCpuShare: (d.cpuMs - d.mainCpuMs) / d.cpuMs,
          traceExports: exported(after, 'traces', 'requests') - exported(before, 'traces', 'requests'),
          traceBytes: exported(after, 'traces', 'bytes') - exported(before, 'traces', 'bytes'),
          metricExports: exported(after, 'metrics', 'requests') - exported(before, 'metrics', 'requests'),
          perfMapBytes,
          stderr: app.stderr.trim(),
        };
        results[key].push(row);
        if (row.failed > 0) problems.push(`${key} round ${round}: ${row.failed} failed requests (non-2xx ${r.non2xx}, errors ${r.errors}, timeouts ${r.timeouts})`);
        if (app.stdout) problems.push(`${key} round ${round}: something wrote to the app's stdout: ${app.stdout.split('\n')[0]}`);
        if (row.stderr) problems.push(`${key} round ${round}: app stderr: ${row.stderr.split('\n')[0]}`);
        if (variant.exports && row.traceExports === 0) problems.push(`${key} round ${round}: the sink received no trace export: the preload did not run?`);
        if (variant.perfMap && !row.perfMapBytes) problems.push(`${key} round ${round}: no perf map written: the V8 flags were not applied?`);
        console.log(
          `round ${round}/${opts.rounds}  ${key.padEnd(13)} start ${fmt(row.startMs).padStart(4)} ms ${fmt(row.rps).padStart(6)} req/s  p99 ${fmt(row.p99, 2).padStart(6)} ms` +
            `  ELU ${pct(row.elu)}  work ${fmt(row.workUs, 0)} us, ${pct(row.workShare)} of CPU` +
            `  CPU ${pct(row.cpuShare)} (${pct(row.helperCpuShare)} off-main)  exports: ${row.traceExports} trace (${mb(row.traceBytes)}), ${row.metricExports} metrics` +
            (row.perfMapBytes ? `  perf map ${(row.perfMapBytes / 1024).toFixed(0)} KiB` : ''),
        );
      });
    }
  }
  sink.stop();
  load.stop();
  const elapsed = (Date.now() - started) / 1000;

  // ---- report
  const summarise = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
  const med = {};
  for (const key of opts.variants) {
    const rows = results[key];
    med[key] = {
      rps: summarise(rows.map((r) => r.rps)),
      workShare: summarise(rows.map((r) => r.workShare)),
      reqPerCpuSec: summarise(rows.map((r) => r.reqPerCpuSec)),
      workUs: median(rows.map((r) => r.workUs)),
      helper: median(rows.map((r) => r.helperCpuShare)),
      elu: median(rows.map((r) => r.elu)),
      p50: median(rows.map((r) => r.p50)),
      p99: median(rows.map((r) => r.p99)),
      startMs: median(rows.map((r) => r.startMs)),
    };
  }
  /** Per-round ratios a/b of a metric (same round: neighbours in time). */
  const paired = (a, b, metric) => summarise(results[a].map((r, i) => r[metric] / results[b][i][metric]));
  const ratio = (a, b, metric) => med[a][metric].median / med[b][metric].median;
  const base = opts.variants.includes('baseline') ? 'baseline' : null;
  const range = (x, d = 0) => `${fmt(x.min, d)}–${fmt(x.max, d)}`;
  const pctRange = (x) => `${pct(x.min)}–${pct(x.max)}`;

  console.log('');
  console.log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; measured in ${elapsed.toFixed(0)} s`);
  console.log('');
  console.log(`Throughput (req/s, wall clock) and latency, medians of ${opts.rounds} rounds:`);
  console.log('');
  console.log('| variant | req/s | rounds min–max | vs baseline | per-round ratio min–max | p50 ms | p99 ms | ELU | startup ms |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const key of opts.variants) {
    const m = med[key];
    const vs = base && key !== base ? ratio(key, base, 'rps').toFixed(3) : '';
    const pr = base && key !== base ? range(paired(key, base, 'rps'), 3) : '';
    console.log(`| ${VARIANTS[key].label} | ${fmt(m.rps.median)} | ${range(m.rps)} | ${vs} | ${pr} | ${fmt(m.p50, 2)} | ${fmt(m.p99, 2)} | ${pct(m.elu)} | ${fmt(m.startMs)} |`);
  }
  console.log('');
  console.log("Normalised to the speed of the CPU at the time: the share of the app's CPU time spent in the fixed work (its ratio");
  console.log('to the baseline is the throughput ratio on a steady, dedicated CPU), and requests per CPU-second of the app:');
  console.log('');
  console.log('| variant | work share | rounds min–max | vs baseline | per-round ratio min–max | work µs/req | CPU off main thread | req/CPU-s | vs baseline |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const key of opts.variants) {
    const m = med[key];
    const other = base && key !== base;
    console.log(
      `| ${VARIANTS[key].label} | ${pct(m.workShare.median)} | ${pctRange(m.workShare)} | ${other ? ratio(key, base, 'workShare').toFixed(3) : ''} | ` +
        `${other ? range(paired(key, base, 'workShare'), 3) : ''} | ${fmt(m.workUs)} | ${pct(m.helper)} | ${fmt(m.reqPerCpuSec.median)} | ${other ? ratio(key, base, 'reqPerCpuSec').toFixed(3) : ''} |`,
    );
  }
  console.log('');

  // ---- calibration: how a cost of known size measures in this run. Per
  // round, against the same round's baseline: the busy loop's time per
  // request in units of the work (a speed-free ratio) gives the throughput
  // ratio if costs simply added up, 1 / (1 + loop/work x baseline work
  // share); the work shares give the measured one.
  if (base && med['known-cost'] && opts.concurrent) {
    console.log('calibration: not computed with --concurrent (the busy loop runs for a time on the wall clock, which a shared CPU stretches)');
    console.log('');
  } else if (base && med['known-cost']) {
    const rows = results['known-cost'];
    const expected = rows.map((r, i) => 1 - 1 / (1 + (r.addedUs / r.workUs) * results[base][i].workShare));
    const measured = rows.map((r, i) => 1 - r.workShare / results[base][i].workShare);
    const factor = median(measured.map((m, i) => m / expected[i]));
    console.log(
      `calibration: a known ${fmt(median(rows.map((r) => r.addedUs)))} µs per request costs ${pct(median(expected))} of the baseline's throughput; ` +
        `measured ${pct(median(measured))} (per-round ${pctRange(summarise(measured))}): a cost measures ${factor.toFixed(2)}x its size here`,
    );
    if (med.preload) {
      const cost = 1 - ratio('preload', base, 'workShare');
      console.log(`  the preload's measured cost, ${pct(cost)}, at that factor: ${pct(cost / factor)}`);
    }
    console.log('');
  }

  // ---- targets: on wall-clock req/s, as the issue states them, with the
  // normalised figure alongside: the work share, or with --concurrent
  // requests per CPU-second, which needs no normalising there.
  const normalised = opts.concurrent ? 'reqPerCpuSec' : 'workShare';
  const verdict = (ok) => (ok ? 'PASS' : 'MISS');
  // One more digit than the tables: a ratio of 0.8997 reads 0.8997 MISS, not 0.900 MISS.
  const exact = (x) => x.toFixed(4);
  const exactPct = (x) => `${(x * 100).toFixed(2)}%`;
  if (base && med.preload) {
    const r = ratio('preload', base, 'rps');
    const n = ratio('preload', base, normalised);
    console.log(
      `target 1: preload >= ${TARGET_PRELOAD.toFixed(2)} of baseline throughput: ${exact(r)} (per-round ${range(paired('preload', base, 'rps'), 3)})  ${verdict(r >= TARGET_PRELOAD)}` +
        `   [${opts.concurrent ? 'per CPU-second' : 'normalised'}: ${exact(n)} (per-round ${range(paired('preload', base, normalised), 3)})  ${verdict(n >= TARGET_PRELOAD)}]`,
    );
  } else {
    console.log('target 1: not measured (needs the baseline and preload variants)');
  }
  if (med.preload && med['preload+perf']) {
    const r = ratio('preload+perf', 'preload', 'rps');
    // Normalised by requests per CPU-second, not by the work share: the flags
    // (and the inlining limit the preload sets with them, src/profiling.cjs)
    // change the speed of the work itself, which the work share cannot see.
    const n = ratio('preload+perf', 'preload', 'reqPerCpuSec');
    console.log(
      `target 2: perf-map flags cost < ${pct(TARGET_FLAGS_COST)}: preload+perf / preload = ${exact(r)}, cost ${exactPct(1 - r)} (per-round ${range(paired('preload+perf', 'preload', 'rps'), 3)})  ${verdict(1 - r < TARGET_FLAGS_COST)}` +
        `   [per CPU-second: ${exact(n)}, cost ${exactPct(1 - n)} (per-round ${range(paired('preload+perf', 'preload', 'reqPerCpuSec'), 3)})  ${verdict(1 - n < TARGET_FLAGS_COST)}]`,
    );
  } else {
    console.log('target 2: not measured (needs the preload and preload+perf variants)');
  }
  if (problems.length) {
    console.log('');
    console.log('problems (the figures above may not mean what they say):');
    for (const p of problems) console.log(`  - ${p}`);
  }

  if (opts.json) {
    fs.writeFileSync(
      opts.json,
      `${JSON.stringify({ node: process.version, nproc, pinning: pin.why, opts, medians: med, results }, null, 2)}\n`,
    );
    console.log(`\nper-round figures written to ${opts.json}`);
  }
}

main().catch((err) => {
  console.error(`bench: ${err.stack || err}`);
  killApps();
  process.exit(1);
});
