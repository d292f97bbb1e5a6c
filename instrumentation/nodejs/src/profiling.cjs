'use strict';
// V8 settings for the Vispyr profiler (the node-agent), which names
// JavaScript frames from the perf map V8 writes when the operator adds
// --perf-basic-prof-only-functions. TurboFan inlines hot callees into their
// callers, and a perf map has one entry per compiled function, none per
// inlined one: an inlined function's samples are charged to its caller (in
// the node-agent's test, 27-34% of samples named the hot function instead
// of 99%). Neither the perf map nor V8's jitdump (--perf-prof) records
// inlining, and Node.js refuses --max-inlined-bytecode-size and
// --no-turbo-inlining in NODE_OPTIONS, so a limit can only come from the
// preload (v8.setFlagsFromString: TurboFan reads it at every compilation,
// so it applies to everything optimized after the preload).
//
// The limit keeps inlining for small functions (accessors, one-line
// helpers, small closures) and gives every larger function a frame of its
// own: a function with a loop and a few statements is larger (the demo's
// computePrice is 96 bytes, the node-agent test's hot function 102). Its
// price was measured against V8's own inlining (docs/benchmarks.md, "The
// inlining limit"): 60 bytes cost an HTTP service less than the scatter of
// runs alone on a CPU and 2-5% of its requests per CPU-second sharing one;
// 27 bytes (V8's "small function" size, which also keeps one-line loops)
// 2-3% alone and 5-6% shared. `VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE`
// sets another limit, or "v8" for V8's own inlining (no frames for inlined
// functions, no cost).
//
// Same old-syntax rule as register.cjs.

var LIMIT_VARIABLE = 'VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE';
var DEFAULT_LIMIT = 60;
// --perf-basic-prof, --perf-basic-prof-only-functions, --perf-prof (not
// --perf-prof-unwinding-info, which writes no names).
var PERF_MAP_FLAG = /(^|\s)--perf-(basic-prof(-only-functions)?|prof)(?=\s|$)/;

// The V8 flag to set for a process started with `execArgv` and `env`, and a
// problem with the setting, if any: { flag: string | null, problem: string | null }.
// `VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE`: bytes of bytecode up to
// which functions are still inlined while a perf map is written (default 60),
// or "v8" for V8's own inlining (no flag set).
function inliningFlag(execArgv, env) {
  var writesPerfMap = PERF_MAP_FLAG.test(execArgv.join(' ')) || PERF_MAP_FLAG.test(env.NODE_OPTIONS || '');
  if (!writesPerfMap) return { flag: null, problem: null };
  var raw = String(env[LIMIT_VARIABLE] || '').trim();
  if (raw === 'v8') return { flag: null, problem: null };
  var limit = DEFAULT_LIMIT;
  var problem = null;
  if (/^[0-9]{1,6}$/.test(raw)) {
    limit = Number(raw);
  } else if (raw !== '') {
    problem = LIMIT_VARIABLE + ' "' + raw + '" is neither a number of bytes nor "v8"; using ' + DEFAULT_LIMIT;
  }
  return { flag: '--max-inlined-bytecode-size=' + limit, problem: problem };
}

module.exports = { inliningFlag: inliningFlag, LIMIT_VARIABLE: LIMIT_VARIABLE };
