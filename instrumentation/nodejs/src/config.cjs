'use strict';
// Checks of the OTEL_* settings the SDK would otherwise degrade on quietly or
// noisily, turned into one clear sentence each. Pure functions of an env
// object, so they can be tested without starting anything.

const PROTOCOLS = ['grpc', 'http/protobuf', 'http/json'];
const DEFAULT_PROTOCOL = 'http/protobuf';
const SAMPLERS = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
];

// Switches back to the SDK's own code, the first mode being the default:
// VISPYR_HTTP_SERVER, how incoming http requests become spans
// (src/http-server.cjs); VISPYR_SPAN_EXPORT, how spans are batched and
// encoded for OTLP/HTTP protobuf (src/span-export.cjs).
const MODES = {
  VISPYR_HTTP_SERVER: ['lean', 'upstream'],
  VISPYR_SPAN_EXPORT: ['encoded', 'upstream'],
};

// Variables whose problems this module reports itself: the SDK's own diag
// messages about them are dropped so that each problem is said once.
const HANDLED = [
  'OTEL_EXPORTER_OTLP_ENDPOINT',
  'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
  'OTEL_EXPORTER_OTLP_METRICS_ENDPOINT',
  'OTEL_EXPORTER_OTLP_PROTOCOL',
  'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL',
  'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL',
  'OTEL_TRACES_SAMPLER',
  'OTEL_TRACES_SAMPLER_ARG',
];

// Downward-API variables the Vispyr webhook sets, as Kubernetes semantic
// convention attributes. OTEL_RESOURCE_ATTRIBUTES (also set by the webhook)
// wins over these when both name an attribute.
const K8S_ENV = [
  ['VISPYR_POD_NAME', 'k8s.pod.name'],
  ['VISPYR_POD_NAMESPACE', 'k8s.namespace.name'],
  ['VISPYR_NODE_NAME', 'k8s.node.name'],
  ['VISPYR_POD_UID', 'k8s.pod.uid'],
  ['VISPYR_CONTAINER_NAME', 'k8s.container.name'],
];

function value(env, name) {
  const v = env[name];
  if (typeof v !== 'string') return undefined;
  const t = v.trim();
  return t === '' ? undefined : t;
}

function quote(s) {
  return JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
}

/** Returns why `raw` is not usable as an OTLP endpoint, or null. */
function endpointProblem(raw) {
  let url;
  try {
    url = new URL(raw);
  } catch {
    return `${quote(raw)} is not a URL`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    return `${quote(raw)} is not an http:// or https:// URL`;
  }
  if (!url.hostname) return `${quote(raw)} has no host`;
  return null;
}

/**
 * @returns {{fatal: string|null, problems: string[], skipSignals: {traces: boolean, metrics: boolean}, upstreamHttpServer: boolean, upstreamSpanExport: boolean}}
 *   fatal: why the SDK must not start at all; problems: "<what> ignored: <why>"
 *   sentences for a degraded but running setup; skipSignals: signals that
 *   must not be exported; upstreamHttpServer: VISPYR_HTTP_SERVER=upstream
 *   (incoming requests handled by instrumentation-http's own code, see
 *   src/http-server.cjs); upstreamSpanExport: VISPYR_SPAN_EXPORT=upstream
 *   (the SDK's batch processor and OTLP exporter, see src/span-export.cjs).
 */
function check(env) {
  const problems = [];
  const skipSignals = { traces: false, metrics: false };
  let fatal = null;

  const general = value(env, 'OTEL_EXPORTER_OTLP_ENDPOINT');
  const generalProblem = general === undefined ? null : endpointProblem(general);
  for (const signal of ['traces', 'metrics']) {
    const name = `OTEL_EXPORTER_OTLP_${signal.toUpperCase()}_ENDPOINT`;
    const own = value(env, name);
    if (own !== undefined) {
      const p = endpointProblem(own);
      if (p) {
        problems.push(`${name} ignored: ${p}; ${signal} are not exported`);
        skipSignals[signal] = true;
      }
    } else if (generalProblem) {
      skipSignals[signal] = true;
    }
  }
  if (generalProblem) {
    if (skipSignals.traces && skipSignals.metrics) {
      fatal = `OTEL_EXPORTER_OTLP_ENDPOINT ${generalProblem}`;
    } else {
      const lost = skipSignals.traces ? 'traces' : 'metrics';
      problems.push(`OTEL_EXPORTER_OTLP_ENDPOINT ignored: ${generalProblem}; ${lost} are not exported`);
    }
  }

  for (const name of ['OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_METRICS_PROTOCOL']) {
    const p = value(env, name);
    if (p !== undefined && !PROTOCOLS.includes(p)) {
      problems.push(`${name} ignored: ${quote(p)} is not one of ${PROTOCOLS.join(', ')}; using ${DEFAULT_PROTOCOL}`);
    }
  }

  const sampler = value(env, 'OTEL_TRACES_SAMPLER');
  if (sampler !== undefined && !SAMPLERS.includes(sampler)) {
    problems.push(`OTEL_TRACES_SAMPLER ignored: ${quote(sampler)} is not one of ${SAMPLERS.join(', ')}; using parentbased_always_on`);
  }
  const arg = value(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (arg !== undefined) {
    const n = Number(arg);
    if (Number.isNaN(n) || n < 0 || n > 1) {
      problems.push(`OTEL_TRACES_SAMPLER_ARG ignored: ${quote(arg)} is not a number between 0 and 1; using 1`);
    }
  }

  const mode = (name) => {
    const v = value(env, name);
    const modes = MODES[name];
    if (v === undefined || modes.includes(v)) return v || modes[0];
    problems.push(`${name} ignored: ${quote(v)} is not one of ${modes.join(', ')}; using ${modes[0]}`);
    return modes[0];
  };
  const upstreamHttpServer = mode('VISPYR_HTTP_SERVER') === 'upstream';
  const upstreamSpanExport = mode('VISPYR_SPAN_EXPORT') === 'upstream';

  return { fatal, problems, skipSignals, upstreamHttpServer, upstreamSpanExport };
}

/** Kubernetes resource attributes from the VISPYR_* downward-API variables. */
function k8sAttributes(env) {
  const attrs = {};
  for (const [name, key] of K8S_ENV) {
    const v = value(env, name);
    if (v !== undefined) attrs[key] = v;
  }
  const ns = attrs['k8s.namespace.name'];
  const pod = attrs['k8s.pod.name'];
  const container = attrs['k8s.container.name'];
  if (ns && pod && container) {
    // As recommended by the semantic conventions for Kubernetes workloads.
    attrs['service.instance.id'] = `${ns}.${pod}.${container}`;
  }
  return attrs;
}

// The SDK's own wording for problems with those variables, where it does not
// name the variable.
const HANDLED_PHRASES = [/Unsupported OTLP (traces |metrics |logs )?protocol/i, /OTEL_TRACES_SAMPLER/];

// SDK warnings about deliberate settings, not problems (OTEL_TRACES_EXPORTER=none).
// "fastify" in OTEL_NODE_*_INSTRUMENTATIONS names @fastify/otel, which the
// auto-instrumentations package does not know.
const BENIGN_PHRASES = [/contains "none"/, /instrumentation name "@opentelemetry\/instrumentation-fastify" not found/];

/** Whether an SDK diag message is about a variable this module checks, or benign. */
function aboutHandledVariable(message) {
  return (
    HANDLED.some((name) => message.includes(name)) ||
    HANDLED_PHRASES.some((re) => re.test(message)) ||
    BENIGN_PHRASES.some((re) => re.test(message))
  );
}

module.exports = { check, k8sAttributes, aboutHandledVariable, endpointProblem, PROTOCOLS, SAMPLERS };
