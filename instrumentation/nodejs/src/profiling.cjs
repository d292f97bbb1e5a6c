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
// By default V8 keeps its own inlining: the profile is then what every
// perf-map profiler shows, at no cost. A limit gives every function larger
// than it a frame of its own, but it is dear: with 27 bytes (V8's "small
// function" size, which it inlines anyway) an HTTP service served 2-3%
// fewer requests per CPU-second than with V8's inlining alone on a CPU,
// 5-9% fewer when sharing one; limits of 60-200 bytes cost about 4% there,
// and setting V8's own 460 through the flag 1.3% (docs/benchmarks.md, "The
// inlining limit"). So it is an opt-in for the workloads whose profile
// needs the extra frames.
//
// Same old-syntax rule as register.cjs.

var LIMIT_VARIABLE = 'VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE';
// --perf-basic-prof, --perf-basic-prof-only-functions, --perf-prof (not
// --perf-prof-unwinding-info, which writes no names).
var PERF_MAP_FLAG = /(^|\s)--perf-(basic-prof(-only-functions)?|prof)(?=\s|$)/;

// The V8 flag to set for a process started with `execArgv` and `env`, and a
// problem with the setting, if any: { flag: string | null, problem: string | null }.
// `VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE`: bytes of bytecode up to
// which functions are still inlined while a perf map is written, or "v8"
// (the default) for V8's own inlining (no flag set).
function inliningFlag(execArgv, env) {
  var writesPerfMap = PERF_MAP_FLAG.test(execArgv.join(' ')) || PERF_MAP_FLAG.test(env.NODE_OPTIONS || '');
  if (!writesPerfMap) return { flag: null, problem: null };
  var raw = String(env[LIMIT_VARIABLE] || '').trim();
  if (raw === '' || raw === 'v8') return { flag: null, problem: null };
  if (/^[0-9]{1,6}$/.test(raw)) return { flag: '--max-inlined-bytecode-size=' + Number(raw), problem: null };
  return { flag: null, problem: LIMIT_VARIABLE + ' "' + raw + '" is neither a number of bytes nor "v8"; keeping V8\'s own inlining' };
}

module.exports = { inliningFlag: inliningFlag, LIMIT_VARIABLE: LIMIT_VARIABLE };
