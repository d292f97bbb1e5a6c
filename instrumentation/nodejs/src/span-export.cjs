'use strict';
// The trace export path for the default configuration (OTLP over HTTP with
// protobuf): a batch span processor that encodes each span to OTLP protobuf
// when it ends (src/otlp-encode.cjs) and keeps only the bytes until the
// batch is exported.
//
// Why: the SDK's BatchSpanProcessor keeps every ended span object, with its
// attributes, events and context, until its batch is exported (512 spans or
// 5 s), long enough for V8 to promote them to the old generation, whose
// collection then shows as a large part of the preload's cost on a small
// handler (docs/benchmarks.md). Encoded at once, a span dies young.
//
// Same behaviour as the SDK's processor and exporter, from the same
// variables: OTEL_BSP_SCHEDULE_DELAY, _MAX_QUEUE_SIZE, _MAX_EXPORT_BATCH_SIZE,
// _EXPORT_TIMEOUT for batching (a batch is sent when it is full or when the
// delay has passed since its first span, one export at a time, spans beyond
// the queue size dropped and counted); OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT,
// _HEADERS, _TIMEOUT, _COMPRESSION and the retries through the upstream
// OTLP/HTTP transport itself (@opentelemetry/otlp-exporter-base). Any other
// exporter or protocol keeps the SDK's own path (see fromEnv).

const api = require('@opentelemetry/api');
const core = require('@opentelemetry/core');
const { OTLPExporterBase } = require('@opentelemetry/otlp-exporter-base');
const { createOtlpHttpExportDelegate, convertLegacyHttpOptions } = require('@opentelemetry/otlp-exporter-base/node-http');
const { ProtobufTraceSerializer } = require('@opentelemetry/otlp-transformer');
const { ProtoWriter, writeSpan, encodeResource, encodeScope, encodeRequest } = require('./otlp-encode.cjs');

// The SDK's defaults (BatchSpanProcessorBase).
const DEFAULTS = { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMillis: 5000, exportTimeoutMillis: 30000 };

/** A batch ready to be sent: the spans of each scope, encoded. */
class Batch {
  constructor(scopes, length) {
    this.scopes = scopes; // [{ scope: InstrumentationScope, spans: Buffer }]
    this.length = length; // spans; the name the exporter's metrics count by
  }
}

/** The OTLP/HTTP protobuf exporter of upstream, sending pre-encoded batches. */
function createExporter(encodeBatch) {
  const serializer = {
    serializeRequest: encodeBatch,
    deserializeResponse: ProtobufTraceSerializer.deserializeResponse,
  };
  const options = convertLegacyHttpOptions({}, 'TRACES', 'v1/traces', { 'Content-Type': 'application/x-protobuf' });
  const metricsHelper = { name: 'span', countItems: (batch) => batch.length };
  return new OTLPExporterBase(createOtlpHttpExportDelegate(options, serializer, 'otlp_http_span_exporter', metricsHelper));
}

class EncodingSpanProcessor {
  /**
   * @param {object} [options] maxQueueSize, maxExportBatchSize,
   *   scheduledDelayMillis, exportTimeoutMillis (the SDK's defaults), and
   *   exporter: something with export(batch, callback), forceFlush(),
   *   shutdown() (the OTLP/HTTP exporter by default).
   */
  constructor(options = {}) {
    this.maxQueueSize = options.maxQueueSize ?? DEFAULTS.maxQueueSize;
    this.maxExportBatchSize = options.maxExportBatchSize ?? DEFAULTS.maxExportBatchSize;
    if (this.maxExportBatchSize > this.maxQueueSize) {
      api.diag.warn('BatchSpanProcessor: maxExportBatchSize must be smaller or equal to maxQueueSize, setting maxExportBatchSize to match maxQueueSize');
      this.maxExportBatchSize = this.maxQueueSize;
    }
    this.scheduledDelayMillis = options.scheduledDelayMillis ?? DEFAULTS.scheduledDelayMillis;
    this.exportTimeoutMillis = options.exportTimeoutMillis ?? DEFAULTS.exportTimeoutMillis;
    this.exporter = options.exporter || createExporter((batch) => this._encodeRequest(batch));
    /** Spans dropped since start because the queue was full. */
    this.droppedSpans = 0;
    this._droppedSinceWarning = 0;
    // The batch being filled: a writer per instrumentation scope.
    this._writers = new Map(); // InstrumentationScope -> { writer, count }
    this._current = 0;
    this._sealed = []; // Batches waiting for their export
    this._queued = 0; // spans in _sealed and the batch being filled
    this._inflight = null; // the export under way, a promise that never rejects
    this._timer = undefined;
    this._resource = null;
    this._resourceBytes = null;
    this._scopeBytes = new Map(); // InstrumentationScope -> encodeScope output
    this._shutdown = null;
  }

  onStart() {}

  onEnd(span) {
    if (this._shutdown !== null) return;
    if ((span.spanContext().traceFlags & api.TraceFlags.SAMPLED) === 0) return;
    if (this._queued >= this.maxQueueSize) {
      this.droppedSpans++;
      this._droppedSinceWarning++;
      return;
    }
    if (this._droppedSinceWarning > 0) {
      api.diag.warn(`Dropped ${this._droppedSinceWarning} spans because maxQueueSize reached`);
      this._droppedSinceWarning = 0;
    }
    if (this._resource === null) this._resource = span.resource;
    const scope = span.instrumentationScope;
    let entry = this._writers.get(scope);
    if (entry === undefined) {
      entry = { writer: new ProtoWriter(), count: 0 };
      this._writers.set(scope, entry);
    }
    const w = entry.writer;
    const before = w.pos;
    try {
      writeSpan(w, span);
    } catch (err) {
      // A span the encoder cannot handle is lost, not the batch.
      w.pos = before;
      core.globalErrorHandler(err);
      return;
    }
    entry.count++;
    this._current++;
    this._queued++;
    if (this._current >= this.maxExportBatchSize) {
      this._seal();
      this._next();
    } else if (this._timer === undefined) {
      this._timer = setTimeout(() => {
        this._timer = undefined;
        this._seal();
        this._next();
      }, this.scheduledDelayMillis);
      this._timer.unref();
    }
  }

  forceFlush() {
    if (this._shutdown !== null) return this._shutdown;
    return this._flush();
  }

  shutdown() {
    if (this._shutdown === null) {
      this._shutdown = this._flush().then(() => this.exporter.shutdown());
    }
    return this._shutdown;
  }

  /** Moves the batch being filled to the export queue. */
  _seal() {
    if (this._timer !== undefined) {
      clearTimeout(this._timer);
      this._timer = undefined;
    }
    if (this._current === 0) return;
    const scopes = [];
    for (const [scope, entry] of this._writers) {
      if (entry.count === 0) continue;
      scopes.push({ scope, spans: entry.writer.take() });
      entry.writer.reset();
      entry.count = 0;
    }
    this._sealed.push(new Batch(scopes, this._current));
    this._current = 0;
  }

  /** Starts the next export unless one is under way. */
  _next() {
    if (this._inflight !== null || this._sealed.length === 0) return;
    const batch = this._sealed.shift();
    this._queued -= batch.length;
    this._inflight = this._export(batch)
      .catch((err) => core.globalErrorHandler(err))
      .then(() => {
        this._inflight = null;
        this._next();
      });
  }

  _export(batch) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('Timeout')), this.exportTimeoutMillis);
      const send = () => {
        try {
          // The exporter's own requests must not be traced.
          api.context.with(core.suppressTracing(api.context.active()), () => {
            this.exporter.export(batch, (result) => {
              clearTimeout(timer);
              if (result.code === core.ExportResultCode.SUCCESS) resolve();
              else reject(result.error || new Error('span export failed'));
            });
          });
        } catch (err) {
          clearTimeout(timer);
          reject(err);
        }
      };
      const resource = this._resource;
      if (resource && resource.asyncAttributesPending && resource.waitForAsyncAttributes) {
        resource.waitForAsyncAttributes().then(send, (err) => {
          clearTimeout(timer);
          reject(err);
        });
      } else {
        send();
      }
    });
  }

  /** Exports everything queued, resolves once no export is under way. */
  async _flush() {
    this._seal();
    for (;;) {
      if (this._inflight !== null) {
        await this._inflight;
        continue;
      }
      if (this._sealed.length === 0) return;
      this._next();
    }
  }

  /** The ExportTraceServiceRequest of a batch (the exporter's serializer). */
  _encodeRequest(batch) {
    const resource = this._resource;
    if (this._resourceBytes === null) this._resourceBytes = encodeResource(resource);
    const scopes = batch.scopes.map(({ scope, spans }) => {
      let bytes = this._scopeBytes.get(scope);
      if (bytes === undefined) {
        bytes = encodeScope(scope);
        this._scopeBytes.set(scope, bytes);
      }
      return { scope: bytes, schemaUrl: scope.schemaUrl, spans };
    });
    return encodeRequest(this._resourceBytes, resource.schemaUrl, scopes);
  }
}

/**
 * The processor for the traces exporter the OTEL_* variables ask for, when
 * that is OTLP over HTTP with protobuf (the default); null otherwise (the
 * SDK then builds its own processors from the same variables).
 */
function fromEnv() {
  // Read as the SDK reads them, so both agree on which path is taken.
  const exporters = (core.getStringListFromEnv('OTEL_TRACES_EXPORTER') || []).filter((s) => s !== 'null');
  if (exporters.length > 0 && !(exporters.length === 1 && exporters[0] === 'otlp')) return null;
  const protocol = (core.getStringFromEnv('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ?? core.getStringFromEnv('OTEL_EXPORTER_OTLP_PROTOCOL') ?? 'http/protobuf').trim();
  if (protocol !== 'http/protobuf') return null;
  return new EncodingSpanProcessor({
    maxQueueSize: positiveFromEnv('OTEL_BSP_MAX_QUEUE_SIZE'),
    maxExportBatchSize: positiveFromEnv('OTEL_BSP_MAX_EXPORT_BATCH_SIZE'),
    scheduledDelayMillis: positiveFromEnv('OTEL_BSP_SCHEDULE_DELAY'),
    exportTimeoutMillis: positiveFromEnv('OTEL_BSP_EXPORT_TIMEOUT'),
  });
}

// As the SDK reads the OTEL_BSP_* variables (getNonNegativeNumberFromEnv of
// sdk-node): a number greater than 0, else its default, with a warning.
function positiveFromEnv(name) {
  const n = core.getNumberFromEnv(name);
  if (n !== undefined && n <= 0) {
    api.diag.warn(`${name} (${n}) is invalid, expected number greater than 0, using default.`);
    return undefined;
  }
  return n;
}

module.exports = { EncodingSpanProcessor, fromEnv };
