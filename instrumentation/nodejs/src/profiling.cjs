'use strict';
// V8 settings for the Vispyr profiler (the node-agent), which names
// JavaScript frames from the perf map V8 writes when the operator adds
// --perf-basic-prof-only-functions. TurboFan inlines hot callees into their
// callers, and a perf map has one entry per compiled function, none per
// inlined one: a hot function inlined into its caller vanishes from the
// profile (in the node-agent's test, 35% of samples named the hot function
// instead of 98%). Neither the perf map nor V8's jitdump (--perf-prof)
// records inlining, and Node.js refuses --max-inlined-bytecode-size and
// --no-turbo-inlining in NODE_OPTIONS, so the preload sets the limit itself
// (v8.setFlagsFromString: TurboFan reads it at every compilation, so it
// applies to everything optimized after the preload).
//
// The limit keeps inlining for small functions (accessors, tiny helpers:
// V8 always inlines up to 27 bytes of bytecode when it inlines at all) and
// gives every larger function a frame of its own. Cost measured in
// docs/benchmarks.md ("The perf-map flags"); turning inlining off entirely
// cost 6-13% there.
//
// Same old-syntax rule as register.cjs.

var LIMIT_VARIABLE = 'VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE';
var DEFAULT_LIMIT = 27;
// --perf-basic-prof, --perf-basic-prof-only-functions, --perf-prof (not
// --perf-prof-unwinding-info, which writes no names).
var PERF_MAP_FLAG = /(^|\s)--perf-(basic-prof(-only-functions)?|prof)(?=\s|$)/;

// The V8 flag to set for a process started with `execArgv` and `env`, and a
// problem with the setting, if any: { flag: string | null, problem: string | null }.
// `VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE`: bytes of bytecode up to
// which functions are still inlined while a perf map is written (default 27),
// or "v8" for V8's own limit (no flag set).
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
