'use strict';
// @vispyr/node preload: the one file the Vispyr operator puts in front of an
// application, as
//
//   NODE_OPTIONS="--require /vispyr-instrumentation/register.cjs"
//
// (the payload's top-level register.cjs loads this file). It starts the
// OpenTelemetry SDK, configured only by OTEL_* variables, for CommonJS and ESM
// applications alike.
//
// Contract: it never breaks the application. Whatever goes wrong here is
// caught; the application runs, and at most one line starting with
// "vispyr: " is written to stderr. Nothing is ever written to stdout.
//
// This file is parsed by whatever Node.js the application runs on, so it is
// written in syntax old releases understand (no `?.`, `??`, optional catch
// binding): on an unsupported Node.js it must be able to say so rather than
// crash with a SyntaxError. The SDK is loaded only after the version check.

var STATE_KEY = Symbol.for('vispyr.node.state');

function warn(line) {
  try {
    require('fs').writeSync(2, 'vispyr: ' + String(line).replace(/[\r\n]+/g, ' ') + '\n');
  } catch (e) {
    // stderr closed: nothing else to do.
  }
}

function envTrue(name) {
  var v = process.env[name];
  return typeof v === 'string' && v.trim().toLowerCase() === 'true';
}

function main() {
  if (global[STATE_KEY]) return; // loaded twice (e.g. --require given twice)
  var guards = require('./guards.cjs');
  var state = { status: 'starting', reason: undefined, problems: [] };
  Object.defineProperty(global, STATE_KEY, { value: state, enumerable: false });

  var isMainThread = true;
  try {
    isMainThread = require('worker_threads').isMainThread;
  } catch (e) {
    // no worker_threads: a very old Node.js, refused below.
  }
  if (!isMainThread) {
    // Worker threads inherit the preload: the process-wide SDK lives in the
    // main thread only.
    state.status = 'skipped';
    state.reason = 'not the main thread';
    return;
  }
  // Before anything is compiled, and whether or not telemetry is on: the
  // profiler is independent of the SDK.
  var profiling = require('./profiling.cjs').inliningFlag(process.execArgv, process.env);
  if (profiling.flag) require('v8').setFlagsFromString(profiling.flag);
  if (profiling.problem) state.problems.push(profiling.problem);
  if (envTrue('OTEL_SDK_DISABLED')) {
    state.status = 'skipped';
    state.reason = 'OTEL_SDK_DISABLED=true';
    if (state.problems.length > 0) warn(state.problems.join('; '));
    return;
  }
  if (guards.launcher(process.argv[1])) {
    state.status = 'skipped';
    state.reason = 'package manager or launcher: ' + process.argv[1];
    return;
  }
  var bad = guards.unsupportedNode(process.versions.node);
  if (bad) {
    state.status = 'disabled';
    state.reason = bad;
    warn('instrumentation disabled: ' + bad);
    return;
  }

  var result;
  try {
    result = require('./start.cjs').start();
  } catch (err) {
    result = { status: 'disabled', reason: describe(err), problems: [] };
  }
  state.status = result.status;
  state.reason = result.reason;
  state.problems = state.problems.concat(result.problems || []);
  if (result.status === 'disabled') {
    warn('instrumentation disabled: ' + result.reason);
  } else if (state.problems.length > 0) {
    warn(state.problems.join('; '));
  }
}

function describe(err) {
  if (err && err.code === 'MODULE_NOT_FOUND') {
    var m = /Cannot find module '([^']+)'/.exec(String(err.message));
    return 'missing dependency ' + (m ? m[1] : String(err.message).split('\n')[0]) +
      ' (incomplete instrumentation payload?)';
  }
  var msg = err && err.message ? err.message : String(err);
  return String(msg).split('\n')[0];
}

try {
  main();
} catch (err) {
  warn('instrumentation disabled: ' + describe(err));
}
