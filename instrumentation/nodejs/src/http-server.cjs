'use strict';
// The http instrumentation with a leaner handling of incoming requests.
//
// @opentelemetry/instrumentation-http wraps http(s).Server#emit and, for every
// 'request' event, builds the server span through layers of optional hooks
// (ignore/start/request/response hooks, header capture, custom-attribute
// callbacks, parent requirements), each guarded by safeExecuteInTheMiddle
// with fresh closures and argument arrays, plus a WeakSet of unended spans.
// This package configures the SDK only through OTEL_* variables, which set
// none of those hooks, so that per-request machinery is pure overhead; on a
// small handler it measured as a large part of the preload's cost
// (docs/benchmarks.md).
//
// This subclass replaces only that incoming-request function. It produces the
// same span: same tracer (scope @opentelemetry/instrumentation-http), name
// "<METHOD>" or "<METHOD> <route>" once a framework instrumentation has set
// the route in the RPC metadata, kind SERVER, the upstream request
// attributes, http.response.status_code and http.route, error status on 5xx,
// or the error alone when the handler throws or the response fails, W3C
// trace context extracted from the headers, and the span active while the
// application handles the request and in the events of the request and the
// response. The http.server.request.duration histogram is recorded as
// upstream (but for one aliasing bug of upstream's, see test/cjs.test.mjs).
// Outgoing requests, https and everything else are the upstream class's
// code, unchanged. The package pins the upstream version, and the
// tests assert the span shape, so an upgrade that changes the internals this
// relies on (the _incomingRequestFunction hook, the utils module) fails them.

const api = require('@opentelemetry/api');
const core = require('@opentelemetry/core');
const { performance } = require('node:perf_hooks');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const utils = require('@opentelemetry/instrumentation-http/build/src/utils.js');

const ATTR_STATUS_CODE = 'http.response.status_code';
const ATTR_ROUTE = 'http.route';

// The SDK's attribute hashing (sdk-metrics, the copy NodeSDK uses): every
// histogram record sorts the attribute set's keys and serialises it to a
// string, the key of the data point. The server duration's attribute sets
// are few (method, scheme, version, status, route, error type), so each is
// built once, frozen, and carries its hash: the SDK's hashAttributes is
// replaced by one that returns that hash for these objects and computes it
// as before for any other. Same data points, same attributes, same order.
const metricsUtils = require(
  require.resolve('@opentelemetry/sdk-metrics/build/src/utils.js', {
    paths: [require('node:path').dirname(require.resolve('@opentelemetry/sdk-node'))],
  }),
);
const kHash = Symbol('vispyr.metric-attributes.hash');
const computeHash = metricsUtils.hashAttributes;
if (computeHash.vispyrMemoized !== true) {
  const hashAttributes = (attributes) => {
    const hash = attributes[kHash];
    return hash !== undefined ? hash : computeHash(attributes);
  };
  hashAttributes.vispyrMemoized = true;
  metricsUtils.hashAttributes = hashAttributes;
}
// Attribute sets kept per instrumentation; beyond this many (an application
// with unbounded routes or error names), new sets are built per request.
const MAX_METRIC_ATTRIBUTE_SETS = 1000;

const NO_ERROR = Symbol('no error');

/** A value's part of a set's key: '-' for undefined, null for values not cached. */
function keyPart(value) {
  if (value === undefined) return '-';
  if (typeof value === 'string') return `${value.length}:${value}`;
  return null;
}

/**
 * The http.server.request.duration attributes, as upstream builds them
 * (same keys, same order), one frozen object per distinct set.
 */
class MetricAttributeSets {
  constructor() {
    this._sets = new Map();
  }

  /**
   * code and route: undefined when there is none (upstream records neither
   * for an error of the response or of the handler); errorType: NO_ERROR
   * when there is none (an error without a name gives the key with an
   * undefined value, as upstream).
   */
  get(method, scheme, version, code, route, errorType) {
    const routePart = keyPart(route);
    const errorPart = errorType === NO_ERROR ? '-' : errorType === undefined ? '?' : keyPart(errorType);
    // Method (normalised), scheme, version and code hold no space, the two
    // free strings are length-prefixed: distinct sets have distinct keys.
    const cacheable = routePart !== null && errorPart !== null && (typeof code === 'number' || code === undefined);
    const key = !cacheable ? null : `${method} ${scheme} ${version || ''} ${code} ${routePart} ${errorPart}`;
    let attributes = key === null ? undefined : this._sets.get(key);
    if (attributes !== undefined) return attributes;
    attributes = { 'http.request.method': method, 'url.scheme': scheme };
    if (version) attributes['network.protocol.version'] = version;
    if (code !== undefined) attributes[ATTR_STATUS_CODE] = code;
    if (route !== undefined) attributes[ATTR_ROUTE] = route;
    if (errorType !== NO_ERROR) attributes['error.type'] = errorType;
    if (key === null || this._sets.size >= MAX_METRIC_ATTRIBUTE_SETS) return attributes;
    Object.defineProperty(attributes, kHash, { value: computeHash(attributes) });
    Object.freeze(attributes);
    this._sets.set(key, attributes);
    return attributes;
  }
}

const SERVER_SPAN = Object.freeze({ kind: api.SpanKind.SERVER });

// Request methods whose upstream normalisation is the method itself.
const PLAIN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH']);
// A request target that new URL() leaves as it is for the pathname: an
// absolute path of characters it does not percent-encode or rewrite, no
// query, no "." or ".." segment (no "/." at all, no encoded dot), not
// "//..." (a host for URL).
const PLAIN_PATH = /^\/(?!\/)[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/;
const DOT_SEGMENT = /\/\.|%2e/i;
// A Host header of a name or IPv4 address and an optional port.
const PLAIN_HOST = /^([A-Za-z0-9\-.]+)(?::(\d{1,5}))?$/;

// An IPv4 address as new URL() accepts it (a host ending in a number must be one).
const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const ENDS_IN_NUMBER = /(?:^|\.)(?:\d+|0x[0-9a-f]*)\.?$/i;
// Punycode labels, which new URL() decodes and may reject.
const PUNYCODE = /(?:^|\.)xn--/i;

// Host headers seen, parsed: a service is called under a few names.
const MAX_CACHED_HOSTS = 256;
const plainHosts = new Map();

/**
 * The name and explicit port (or undefined) of a Host header naming a host
 * or an IPv4 address that new URL() takes as it is, with a valid port; null
 * for any other.
 */
function plainHost(header) {
  let host = plainHosts.get(header);
  if (host !== undefined) return host;
  host = null;
  const match = PLAIN_HOST.exec(header);
  if (match !== null) {
    const name = match[1];
    const port = match[2] !== undefined ? Number(match[2]) : undefined;
    // Hosts new URL() rejects leave upstream without url.path.
    const rejected = (ENDS_IN_NUMBER.test(name) && !IPV4.test(name)) || PUNYCODE.test(name) || port > 65535;
    if (!rejected) host = { name, port };
  }
  if (plainHosts.size < MAX_CACHED_HOSTS) plainHosts.set(header, host);
  return host;
}

/**
 * The span attributes of a plain incoming request (absolute path without
 * query, a host name or IPv4 address, no forwarding headers, a common
 * method), as upstream's getIncomingRequestAttributes computes them (same
 * keys, same order) but without parsing a URL and a host; null for any
 * other request. test/http-server.test.mjs compares both on real requests.
 */
function plainRequestAttributes(request, component) {
  const headers = request.headers;
  const url = request.url;
  const hostHeader = headers.host;
  const host = typeof hostHeader === 'string' ? plainHost(hostHeader) : null;
  if (
    host === null ||
    !PLAIN_METHODS.has(request.method) ||
    typeof url !== 'string' ||
    !PLAIN_PATH.test(url) ||
    DOT_SEGMENT.test(url) ||
    headers.forwarded !== undefined ||
    headers['x-forwarded-host'] !== undefined ||
    headers['x-forwarded-for'] !== undefined
  ) {
    return null;
  }
  const port = host.port !== undefined ? host.port : component === 'https' ? 443 : 80;
  const socket = request.socket;
  const attributes = {
    'http.request.method': request.method,
    'url.scheme': component,
    'server.address': host.name,
    'network.peer.address': socket.remoteAddress,
    'network.peer.port': socket.remotePort,
    'network.protocol.version': request.httpVersion,
    'user_agent.original': headers['user-agent'],
    'url.path': url,
  };
  if (socket.remoteAddress) attributes['client.address'] = socket.remoteAddress;
  attributes['server.port'] = port;
  return attributes;
}

// The context of the request an IncomingMessage or ServerResponse belongs to.
const kContext = Symbol('vispyr.http-server.context');
// The ServerRequest of a ServerResponse: its span, until the response ends.
const kServerRequest = Symbol('vispyr.http-server.request');

/** One incoming request's span and what ending it needs. */
class ServerRequest {
  constructor(inst, method, attributes, startTime, span, rpc, response) {
    this.inst = inst;
    this.method = method;
    this.attributes = attributes;
    this.startTime = startTime;
    this.span = span;
    this.rpc = rpc; // framework instrumentations (express, koa, ...) set rpc.route
    this.response = response;
    this.ended = false;
  }

  /**
   * Ends the span (once) and records the request's duration. As upstream: a
   * response that ends gives the status code and the route; an error of
   * the response or of the handler gives only the error.
   */
  end(error) {
    if (this.ended) return;
    this.ended = true;
    const span = this.span;
    let code;
    let route;
    let errorType = NO_ERROR;
    if (error) {
      utils.setSpanWithError(span, error);
      errorType = error.name;
    } else {
      code = this.response.statusCode;
      route = this.rpc.route;
      span.setAttribute(ATTR_STATUS_CODE, code);
      if (route !== undefined) span.setAttribute(ATTR_ROUTE, route);
      // As upstream: an empty route is an attribute, not a name.
      if (route) span.updateName(`${this.method} ${route}`);
      span.setStatus({ code: utils.parseResponseStatus(api.SpanKind.SERVER, code) });
      if (code >= 500 && code < 600) errorType = String(code);
    }
    span.end();
    const attributes = this.attributes;
    const metricAttributes = this.inst._metricAttributeSets.get(
      attributes['http.request.method'],
      attributes['url.scheme'],
      attributes['network.protocol.version'],
      code,
      route,
      errorType,
    );
    this.inst._recordServerDuration(performance.now() - this.startTime, metricAttributes);
  }
}

/**
 * Patches the emit of a server's requests and responses (IncomingMessage,
 * ServerResponse), for two things upstream does per request with closures
 * and listeners:
 * - the events of both run in the request's context, as upstream's binding
 *   of both emitters does (context.bind): the request's 'data' and 'end',
 *   emitted from the socket outside the handler's async context, must see
 *   the server span, e.g. for a call to another service made once the body
 *   is read. Upstream patches seven methods on each of the two objects per
 *   request and wraps every listener added later; here emit looks the
 *   context up once per event that has listeners, and switches to it only
 *   when it is not the active one already (events emitted from the handler,
 *   or from callbacks it scheduled, are);
 * - a response's 'error' or 'close' ends its span before the event's
 *   listeners run, as upstream's errorMonitor and 'close' listeners, added
 *   first, do (after 'error' only 'close' follows: the error ends the span).
 * Returns the function that restores the prototypes.
 */
function patchServerEmits() {
  const http = require('node:http');
  const restores = [];
  for (const proto of [http.IncomingMessage.prototype, http.ServerResponse.prototype]) {
    const own = Object.getOwnPropertyDescriptor(proto, 'emit');
    const original = proto.emit;
    const endsSpan = proto === http.ServerResponse.prototype;
    proto.emit = function emit(type) {
      const ctx = this[kContext];
      if (ctx === undefined) return original.apply(this, arguments);
      if (endsSpan && (type === 'close' || type === 'error')) {
        this[kServerRequest].end(type === 'error' ? arguments[1] : undefined);
      }
      // An event nobody listens to runs no code that could see the context
      // (about half of a request's events: 'resume', 'readable', 'socket',
      // 'prefinish', ...); an 'error' that nobody listens to throws, in any
      // context.
      const events = this._events;
      if (events === undefined || events[type] === undefined || api.context.active() === ctx) {
        return original.apply(this, arguments);
      }
      return api.context.with(ctx, original, this, ...arguments);
    };
    restores.push(() => {
      if (own) Object.defineProperty(proto, 'emit', own);
      else delete proto.emit;
    });
  }
  return () => restores.forEach((restore) => restore());
}

/** The server's 'request' listeners, in the request's context; an exception they throw ends the span. */
function handleRequest(original, server, event, request, response) {
  try {
    return original.call(server, event, request, response);
  } catch (error) {
    response[kServerRequest].end(error);
    throw error;
  }
}

class LeanServerHttpInstrumentation extends HttpInstrumentation {
  disable() {
    super.disable();
    if (this._restoreEmits) {
      this._restoreEmits();
      this._restoreEmits = undefined;
    }
  }

  _incomingRequestFunction(component, original) {
    const inst = this;
    if (!this._metricAttributeSets) this._metricAttributeSets = new MetricAttributeSets();
    if (!this._restoreEmits) this._restoreEmits = patchServerEmits();
    const attributeOptions = { component, enableSyntheticSourceDetection: false };
    return function incomingRequest(event, request, response) {
      if (event !== 'request') return original.apply(this, arguments);

      const method = request.method || 'GET';
      const attributes =
        plainRequestAttributes(request, component) || utils.getIncomingRequestAttributes(request, attributeOptions, inst._diag);
      const startTime = performance.now();
      const parent = api.propagation.extract(api.ROOT_CONTEXT, request.headers);
      // The attributes are set after the start: the SDK copies start
      // attributes twice more for the sampler, and none of the samplers the
      // OTEL_* variables can choose looks at them.
      const span = inst.tracer.startSpan(method, SERVER_SPAN, parent);
      span.setAttributes(attributes);
      const rpc = { type: core.RPCType.HTTP, span };
      const ctx = core.setRPCMetadata(api.trace.setSpan(parent, span), rpc);
      response[kServerRequest] = new ServerRequest(inst, method, attributes, startTime, span, rpc, response);
      request[kContext] = ctx;
      response[kContext] = ctx;
      return api.context.with(ctx, handleRequest, undefined, original, this, event, request, response);
    };
  }
}

module.exports = { LeanServerHttpInstrumentation, ServerRequest, plainRequestAttributes, MetricAttributeSets, NO_ERROR };
