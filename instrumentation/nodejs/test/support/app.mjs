// Starts a fixture application in a child process, the way the Vispyr
// webhook does: NODE_OPTIONS carries `--require <payload>/register.cjs`
// (after the application's own options), OTEL_* and VISPYR_* in the env.

import { spawn } from 'node:child_process';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

export const PKG_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
// The preload under test: this package, or a built payload directory
// (VISPYR_TEST_PAYLOAD=dist/payload, see `npm run test:payload`).
export const PRELOAD_DIR = process.env.VISPYR_TEST_PAYLOAD ? path.resolve(PKG_DIR, process.env.VISPYR_TEST_PAYLOAD) : PKG_DIR;
export const REGISTER_CJS = path.join(PRELOAD_DIR, 'register.cjs');
export const REGISTER_MJS = path.join(PRELOAD_DIR, 'register.mjs');
export const FIXTURES = path.join(PKG_DIR, 'test', 'fixtures');

/** Settings that make the SDK export quickly, for tests. */
export function fastExport(endpoint) {
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
    OTEL_BSP_SCHEDULE_DELAY: '100',
    OTEL_METRIC_EXPORT_INTERVAL: '1000',
    OTEL_METRIC_EXPORT_TIMEOUT: '1000',
  };
}

/** The test runner's env without anything that would configure the preload. */
function cleanEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('OTEL_') || k.startsWith('VISPYR_') || k === 'NODE_OPTIONS' || k.startsWith('NODE_TEST')) continue;
    env[k] = v;
  }
  return env;
}

export class App {
  /**
   * @param {string} script fixture file name (in test/fixtures) or absolute path
   * @param {object} [opts]
   * @param {object} [opts.env] extra environment
   * @param {string} [opts.nodeOptions] the application's own NODE_OPTIONS
   * @param {string|null} [opts.preload] NODE_OPTIONS fragment that loads the
   *   instrumentation (default `--require register.cjs`); null for none
   * @param {string} [opts.cwd]
   */
  constructor(script, { env = {}, nodeOptions = '', preload, cwd } = {}) {
    this.script = path.isAbsolute(script) ? script : path.join(FIXTURES, script);
    const load = preload === undefined ? `--require "${REGISTER_CJS}"` : preload || '';
    this.env = { ...cleanEnv(), ...env, NODE_OPTIONS: `${nodeOptions} ${load}`.trim() };
    this.cwd = cwd || PKG_DIR;
    this.stdout = '';
    this.stderr = '';
  }

  /** Spawns the app and waits for the {"port": N} line it prints when listening. */
  async start(timeoutMs = 15000) {
    this.child = spawn(process.execPath, [this.script], { env: this.env, cwd: this.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d) => (this.stderr += d));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({ code, signal }));
    const port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.script} did not listen within ${timeoutMs} ms; stderr: ${this.stderr}`)), timeoutMs);
      this.child.stdout.on('data', (d) => {
        this.stdout += d;
        const m = /^\{"port":(\d+)\}$/m.exec(this.stdout);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      this.exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`${this.script} exited (code ${code}, signal ${signal}) before listening; stderr: ${this.stderr}`));
      });
    });
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  /** GET a path of the app; resolves with {status, body}. */
  async get(p) {
    const res = await fetch(`${this.url}${p}`);
    return { status: res.status, body: await res.text() };
  }

  /** POST a body to a path of the app; resolves with {status, body}. */
  async post(p, body) {
    const res = await fetch(`${this.url}${p}`, { method: 'POST', body });
    return { status: res.status, body: await res.text() };
  }

  /** Sends a signal and waits for the exit; resolves with {code, signal}. */
  async stop(signal = 'SIGTERM', timeoutMs = 15000) {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.waitExit(timeoutMs);
  }

  async waitExit(timeoutMs = 15000) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        this.child.kill('SIGKILL');
        reject(new Error(`${this.script} did not exit within ${timeoutMs} ms; stderr: ${this.stderr}`));
      }, timeoutMs);
    });
    try {
      return await Promise.race([this.exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Lines the preload wrote (stderr lines starting with "vispyr:"). */
  vispyrLines() {
    return this.stderr.split('\n').filter((l) => l.startsWith('vispyr:'));
  }

  /** Stdout lines other than the fixture's own {"port": N} line. */
  foreignStdout() {
    return this.stdout.split('\n').filter((l) => l !== '' && !/^\{"port":\d+\}$/.test(l));
  }

  kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** Polls fn until it returns a truthy value or timeoutMs passes. */
export async function eventually(what, fn, timeoutMs = 10000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
