'use strict';
// Where the OpenTelemetry SDK's own messages go. The SDK's default console
// logger writes info/debug to stdout, which applications pipe: everything
// here goes to stderr, one line per message, prefixed "vispyr: ".
//
// - While the SDK starts, warnings and errors are collected, not printed:
//   start.cjs folds them into the single startup line.
// - Once running, only errors are shown by default (OTEL_LOG_LEVEL raises or
//   lowers that), and repeated errors (an unreachable endpoint fails every
//   export) are rate limited: the first is printed, the following ones are
//   counted and summarised at most once per REPEAT_WINDOW_MS.

const fs = require('node:fs');
const util = require('node:util');

const REPEAT_WINDOW_MS = 5 * 60 * 1000;
const MAX_LINE = 600;

function writeLine(line) {
  try {
    fs.writeSync(2, `vispyr: ${line}\n`);
  } catch {
    // stderr closed: nothing else to do.
  }
}

/** One line of text from a message and its arguments. */
function oneLine(message, args) {
  const parts = [message, ...args].map((a) => {
    if (a instanceof Error) return a.message || a.name;
    if (typeof a === 'string') return a;
    return util.inspect(a, { breakLength: Infinity, depth: 2 });
  });
  let text = parts.join(' ').replace(/\s*[\r\n]+\s*/g, ' ').trim();
  if (text.length > MAX_LINE) text = `${text.slice(0, MAX_LINE - 3)}...`;
  return text;
}

/**
 * An error handed to the SDK's global error handler, in one line. Export
 * failures arrive here as Error objects, sometimes JSON-encoded by the SDK.
 */
function describeError(err) {
  if (err instanceof Error) {
    const code = err.code ? ` (${err.code})` : '';
    const msg = err.message || err.name || 'unknown error';
    return oneLine(msg.includes(String(err.code)) ? msg : `${msg}${code}`, []);
  }
  if (typeof err === 'string') {
    try {
      const parsed = JSON.parse(err);
      if (parsed && typeof parsed.message === 'string') return oneLine(parsed.message, []);
    } catch {
      // not JSON
    }
    return oneLine(err, []);
  }
  return oneLine('', [err]);
}

class Log {
  /**
   * @param {object} opts
   * @param {boolean} opts.verbose the user set OTEL_LOG_LEVEL: print every
   *   message the level lets through, without rate limiting.
   * @param {string} opts.endpoint where telemetry goes, named in export errors.
   */
  constructor({ verbose, endpoint }) {
    this.verbose = verbose;
    this.endpoint = endpoint;
    this.starting = true;
    this.captured = [];
    this.lastReport = -Infinity;
    this.suppressed = 0;
  }

  /** The DiagLogger given to @opentelemetry/api's diag.setLogger. */
  diagLogger() {
    const emit = (level) => (message, ...args) => this.diag(level, message, args);
    return {
      error: emit('error'),
      warn: emit('warn'),
      info: emit('info'),
      debug: emit('debug'),
      verbose: emit('verbose'),
    };
  }

  diag(level, message, args) {
    const text = oneLine(String(message), args);
    if (this.starting && (level === 'error' || level === 'warn')) {
      this.captured.push(text);
      return;
    }
    if (level === 'error' || level === 'warn') {
      this.report(this.exportFailure(text) ? `export to ${this.endpoint} failed: ${text}` : `OpenTelemetry ${level}: ${text}`);
    } else {
      writeLine(`otel ${level}: ${text}`);
    }
  }

  /** The global error handler given to @opentelemetry/core. */
  errorHandler() {
    return (err) => {
      const text = describeError(err);
      if (this.starting) {
        this.captured.push(text);
        return;
      }
      this.report(this.exportFailure(text) ? `export to ${this.endpoint} failed: ${text}` : `OpenTelemetry error: ${text}`);
    };
  }

  exportFailure(text) {
    return /export|ECONN|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|socket hang up|timed? ?out/i.test(text);
  }

  report(line) {
    if (this.verbose) {
      writeLine(line);
      return;
    }
    const now = Date.now();
    if (now - this.lastReport < REPEAT_WINDOW_MS) {
      this.suppressed += 1;
      return;
    }
    const repeats = this.suppressed > 0 ? ` (and ${this.suppressed} more errors since the last report)` : '';
    this.suppressed = 0;
    this.lastReport = now;
    writeLine(`${line}${repeats}; further errors are reported at most every ${REPEAT_WINDOW_MS / 60000} min`);
  }

  /** Ends the startup phase and returns what was collected during it. */
  endStartup() {
    this.starting = false;
    const captured = this.captured;
    this.captured = [];
    return captured;
  }
}

module.exports = { Log, oneLine, describeError, writeLine };
