'use strict';
// Starts the OpenTelemetry SDK for the whole process. Called once, by
// register.cjs, in the main thread, before the application's code runs.
// Everything here may throw: register.cjs turns that into one warning line.

const { pathToFileURL } = require('node:url');
const config = require('./config.cjs');
const { Log } = require('./log.cjs');

// How long a shutdown (final export) may delay the exit of the process.
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 5000;

// When OTEL_NODE_RESOURCE_DETECTORS is unset: no cloud detectors (they probe
// metadata endpoints over the network at startup), the environment last so
// that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
const DEFAULT_RESOURCE_DETECTORS = 'container,host,os,process,env';

// Instrumentations that send log records to the OTel logs SDK; when logs are
// not exported they keep only the trace-context injection into log records.
const LOG_SENDING_INSTRUMENTATIONS = [
  '@opentelemetry/instrumentation-bunyan',
  '@opentelemetry/instrumentation-pino',
  '@opentelemetry/instrumentation-winston',
];

/** Runs fn with some variables of process.env replaced, then restores them. */
function withEnv(overrides, fn) {
  const saved = {};
  for (const [k, v] of Object.entries(overrides)) {
    saved[k] = Object.prototype.hasOwnProperty.call(process.env, k) ? process.env[k] : undefined;
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

function envValue(name) {
  const v = process.env[name];
  return typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined;
}

function positiveInt(name, fallback) {
  const v = Number(envValue(name));
  return Number.isFinite(v) && v > 0 ? Math.floor(v) : fallback;
}

/**
 * host:port of the OTLP endpoints, so the http instrumentation leaves the
 * exporter's own requests alone (their spans are suppressed by the SDK, but
 * they would still be measured as the application's http.client calls).
 */
function otlpTargets() {
  const targets = new Set();
  const names = ['', 'TRACES_', 'METRICS_', 'LOGS_'].map((s) => `OTEL_EXPORTER_OTLP_${s}ENDPOINT`);
  for (const name of names) {
    const v = envValue(name);
    if (!v) continue;
    try {
      const u = new URL(v);
      targets.add(`${u.hostname.replace(/^\[|\]$/g, '')}:${u.port || (u.protocol === 'https:' ? '443' : '80')}`);
    } catch {
      // reported by config.check
    }
  }
  if (!envValue('OTEL_EXPORTER_OTLP_ENDPOINT')) {
    targets.add('localhost:4318'); // the SDK's defaults
    targets.add('localhost:4317');
  }
  return targets;
}

function isOtlpRequest(targets) {
  return (req) => {
    if (!req || (req.method && String(req.method).toUpperCase() !== 'POST')) return false;
    let host = String(req.hostname || req.host || 'localhost');
    if (!req.hostname && /^[^:]+:\d+$/.test(host)) host = host.split(':')[0];
    host = host.replace(/^\[|\]$/g, '');
    const port = String(req.port || (req.protocol === 'https:' ? 443 : 80));
    return targets.has(`${host}:${port}`);
  };
}

/**
 * Fastify: the OpenTelemetry fastify instrumentation was retired from the
 * auto-instrumentations in favour of @fastify/otel, maintained by the fastify
 * team. It hooks fastify through the 'fastify.initialization' diagnostics
 * channel (no module patching, so ESM needs nothing more). Honours
 * OTEL_NODE_ENABLED_INSTRUMENTATIONS / OTEL_NODE_DISABLED_INSTRUMENTATIONS
 * with the name "fastify". Returns a problem sentence, or null.
 */
function addFastify(instrumentations) {
  const list = (name) => require('@opentelemetry/core').getStringListFromEnv(name) || [];
  const enabled = list('OTEL_NODE_ENABLED_INSTRUMENTATIONS');
  if (list('OTEL_NODE_DISABLED_INSTRUMENTATIONS').includes('fastify')) return null;
  if (enabled.length > 0 && !enabled.includes('fastify')) return null;
  try {
    const { FastifyOtelInstrumentation } = require('@fastify/otel');
    instrumentations.push(new FastifyOtelInstrumentation({ registerOnInitialization: true }));
    return null;
  } catch (err) {
    return `fastify instrumentation ignored: ${String((err && err.message) || err).split('\n')[0]}`;
  }
}

/**
 * Swaps the http instrumentation (when enabled) for the subclass with the
 * leaner incoming-request handling (src/http-server.cjs), same config.
 */
function useLeanServerHandling(instrumentations, instrumentationConfig) {
  const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
  const { LeanServerHttpInstrumentation } = require('./http-server.cjs');
  const i = instrumentations.findIndex((inst) => inst instanceof HttpInstrumentation);
  if (i < 0) return;
  // Constructed, the upstream instance has registered its module hooks;
  // disabled, they patch nothing, so only the subclass wraps http(s).
  instrumentations[i].disable();
  instrumentations[i] = new LeanServerHttpInstrumentation(instrumentationConfig['@opentelemetry/instrumentation-http']);
}

/** Module names the enabled instrumentations patch, for the ESM hook's include list. */
function hookedModuleNames(instrumentations) {
  const names = new Set();
  for (const inst of instrumentations) {
    const modules = inst && inst._modules; // InstrumentationBase's module definitions
    if (!Array.isArray(modules)) return null;
    for (const m of modules) {
      if (m && typeof m.name === 'string') names.add(m.name);
    }
  }
  return [...names];
}

/**
 * ESM support: Node's module customization hooks, registered from this CJS
 * preload, let import-in-the-middle wrap the ES modules the instrumentations
 * patch. Only those modules are wrapped (include list), so the rest of an
 * ESM application is loaded exactly as without the preload.
 * Returns a problem sentence, or null.
 */
function registerEsmHook(instrumentations) {
  const nodeModule = require('node:module');
  if (typeof nodeModule.register !== 'function') {
    return `ESM instrumentation ignored: Node.js v${process.versions.node} has no module.register`;
  }
  const include = hookedModuleNames(instrumentations);
  const hookUrl = pathToFileURL(require.resolve('import-in-the-middle/hook.mjs')).href;
  // Without an include list (unknown instrumentation internals) every ES
  // module would be wrapped: still correct, but more intrusive.
  const data = include ? { include } : {};
  nodeModule.register(hookUrl, pathToFileURL(__filename).href, { data });
  return null;
}

/** Flush on SIGTERM/SIGINT and on a normal end of the event loop. */
function installExitHooks(api, sdk, timeoutMs) {
  let shutdown = null;
  const shutdownOnce = () => {
    if (!shutdown) {
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeoutMs);
      });
      shutdown = Promise.race([sdk.shutdown().then(() => 'done', () => 'failed'), timeout]).then((r) => {
        clearTimeout(timer);
        return r;
      });
    }
    return shutdown;
  };

  const flush = () => {
    const work = [];
    const tp = api.trace.getTracerProvider();
    const delegate = tp && typeof tp.getDelegate === 'function' ? tp.getDelegate() : tp;
    if (delegate && typeof delegate.forceFlush === 'function') work.push(delegate.forceFlush());
    const mp = api.metrics.getMeterProvider();
    if (mp && typeof mp.forceFlush === 'function') work.push(mp.forceFlush());
    return Promise.allSettled(work);
  };

  const handlers = {};
  for (const signal of ['SIGTERM', 'SIGINT']) {
    const handler = () => {
      const others = process.listeners(signal).filter((l) => l !== handler).length;
      // signal-exit's handlers (one per loaded copy) only re-raise the signal
      // when they are alone: with nothing else listening, the process ends by
      // the signal as with Node's default, so flush first as below.
      const appHandles = others > 0 && others !== signalExitListeners();
      if (appHandles) {
        // The application (or a library of it) has its own handler and
        // decides when to exit (it may drain first): export what is pending
        // now, the rest at beforeExit or with the next periodic export.
        flush().catch(() => {});
        // Step aside for the rest of this signal's delivery: libraries such
        // as signal-exit re-raise the signal only when their handlers are
        // the only listeners, and must still see that. Back in place for
        // the next signal.
        process.removeListener(signal, handler);
        setImmediate(() => {
          if (!process.listeners(signal).includes(handler)) process.prependListener(signal, handler);
        });
        return;
      }
      if (shutdown) {
        // Second signal while flushing: stop waiting.
        reraise(signal, handler);
        return;
      }
      // No handler of the application: Node.js would terminate the process
      // with this signal. Do the same, once telemetry is flushed.
      shutdownOnce().then(() => reraise(signal, handler));
    };
    handlers[signal] = handler;
    process.on(signal, handler);
  }

  process.once('beforeExit', () => {
    shutdownOnce().then((r) => {
      // A final export stuck on an unreachable endpoint must not hold the
      // process: it was about to exit anyway.
      if (r === 'timeout') process.exit();
    });
  });
  return handlers;
}

/** How many SIGTERM (or SIGINT) listeners the loaded copies of signal-exit (v3, v4) hold. */
function signalExitListeners() {
  let n = 0;
  const v4 = global[Symbol.for('signal-exit emitter')];
  if (v4 && typeof v4.count === 'number') n += v4.count;
  const v3 = process.__signal_exit_emitter__;
  if (v3 && typeof v3.count === 'number') n += v3.count;
  return n;
}

// Ends the process by the signal, as Node's default action would: with our
// handler gone, any handler left (signal-exit's) runs and re-raises it itself.
function reraise(signal, handler) {
  process.removeListener(signal, handler);
  process.kill(process.pid, signal);
}

function start() {
  const api = require('@opentelemetry/api');
  const core = require('@opentelemetry/core');

  const levelProblems = [];
  const userLevel = envValue('OTEL_LOG_LEVEL');
  let runtimeLevel = api.DiagLogLevel.ERROR;
  if (userLevel !== undefined) {
    const known = Object.keys(api.DiagLogLevel).filter((k) => Number.isNaN(Number(k)));
    if (known.includes(userLevel.toUpperCase())) {
      runtimeLevel = api.DiagLogLevel[userLevel.toUpperCase()];
    } else {
      levelProblems.push(`OTEL_LOG_LEVEL ignored: ${JSON.stringify(userLevel)} is not one of ${known.join(', ').toLowerCase()}; using error`);
    }
  }
  const endpoint = envValue('OTEL_EXPORTER_OTLP_ENDPOINT') || 'the default OTLP endpoint (localhost)';
  const log = new Log({ verbose: runtimeLevel > api.DiagLogLevel.ERROR, endpoint });
  const diagLogger = log.diagLogger();
  // During startup at least warnings are collected, whatever the level.
  api.diag.setLogger(diagLogger, {
    logLevel: Math.max(runtimeLevel, api.DiagLogLevel.WARN),
    suppressOverrideMessage: true,
  });
  core.setGlobalErrorHandler(log.errorHandler());

  const checked = config.check(process.env);
  if (checked.fatal) {
    api.diag.disable();
    return { status: 'disabled', reason: checked.fatal, problems: [] };
  }

  let sdk;
  let instrumentations = [];
  const startProblems = [];
  try {
    const { NodeSDK } = require('@opentelemetry/sdk-node');
    const { defaultResource, resourceFromAttributes } = require('@opentelemetry/resources');
    const auto = require('@opentelemetry/auto-instrumentations-node');

    const logsExported = envValue('OTEL_LOGS_EXPORTER') !== undefined;
    const instrumentationConfig = {
      '@opentelemetry/instrumentation-http': { ignoreOutgoingRequestHook: isOtlpRequest(otlpTargets()) },
    };
    if (!logsExported) {
      for (const name of LOG_SENDING_INSTRUMENTATIONS) instrumentationConfig[name] = { disableLogSending: true };
    }
    instrumentations = auto.getNodeAutoInstrumentations(instrumentationConfig);
    if (!checked.upstreamHttpServer) useLeanServerHandling(instrumentations, instrumentationConfig);
    const fastifyProblem = addFastify(instrumentations);
    if (fastifyProblem) startProblems.push(fastifyProblem);
    const resourceDetectors = withEnv(
      { OTEL_NODE_RESOURCE_DETECTORS: envValue('OTEL_NODE_RESOURCE_DETECTORS') || DEFAULT_RESOURCE_DETECTORS },
      () => auto.getResourceDetectors(),
    );

    const options = {
      instrumentations,
      resourceDetectors,
      resource: defaultResource().merge(resourceFromAttributes(config.k8sAttributes(process.env))),
    };
    // Logs are exported only when asked for (OTEL_LOGS_EXPORTER): the
    // gateway forwards them only when it has a logs backend.
    if (!logsExported) options.logRecordProcessors = [];
    if (checked.skipSignals.traces) {
      options.spanProcessors = [];
    } else if (!checked.upstreamSpanExport) {
      const encoding = require('./span-export.cjs').fromEnv();
      if (encoding) options.spanProcessors = [encoding];
    }
    if (checked.skipSignals.metrics) options.metricReaders = [];

    // NodeSDK installs a console logger (info and debug on stdout) when
    // OTEL_LOG_LEVEL is set: hide the variable from it, ours is in place.
    sdk = withEnv({ OTEL_LOG_LEVEL: undefined }, () => new NodeSDK(options));
    sdk.start();
  } catch (err) {
    for (const inst of instrumentations) {
      try {
        inst.disable();
      } catch {
        // best effort
      }
    }
    log.endStartup();
    api.diag.disable();
    throw err;
  }

  const problems = [...levelProblems, ...checked.problems, ...startProblems];
  const esmProblem = (() => {
    try {
      return registerEsmHook(instrumentations);
    } catch (err) {
      return `ESM instrumentation ignored: ${String((err && err.message) || err).split('\n')[0]}`;
    }
  })();
  if (esmProblem) problems.push(esmProblem);

  installExitHooks(api, sdk, positiveInt('VISPYR_SHUTDOWN_TIMEOUT_MS', DEFAULT_SHUTDOWN_TIMEOUT_MS));

  // The SDK's own startup messages about variables checked above repeat
  // what config.check said; anything else is passed on.
  for (const text of log.endStartup()) {
    if (!config.aboutHandledVariable(text)) problems.push(`setting ignored: ${text.replace(/\.$/, '')}`);
  }
  api.diag.setLogger(diagLogger, { logLevel: runtimeLevel, suppressOverrideMessage: true });

  return { status: 'running', reason: undefined, problems };
}

module.exports = { start, withEnv, hookedModuleNames };
