//! The trace store: Jaeger v2 (an OpenTelemetry Collector distribution) with
//! OTLP receivers and in-memory storage, standing in for Tempo, whose Go
//! module the registry here does not serve. Helpers speak OTLP JSON so that a
//! Tempo-backed implementation can replace this one.

use std::collections::BTreeMap;
use std::path::Path;

use tempfile::TempDir;

use super::{
    START_TIMEOUT, checked, command, http_client, http_ok, json, tcp_open, temp_dir, write_file,
};
use crate::Error;
use crate::process::{Process, free_port};

pub struct TraceStore {
    // Field order is drop order: the process goes before its dir.
    process: Process,
    otlp_grpc_port: u16,
    otlp_http_port: u16,
    api: TraceQuery,
    dir: TempDir,
}

/// The query API of a trace store: the harness's own (a [`TraceStore`]
/// derefs to it) or one running elsewhere, e.g. in a `NodeCluster`.
pub struct TraceQuery {
    query_url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for TraceStore {
    type Target = TraceQuery;

    fn deref(&self) -> &TraceQuery {
        &self.api
    }
}

/// One span of a stored trace, flattened from OTLP JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSpan {
    /// Lowercase hex, 32 digits.
    pub trace_id: String,
    /// Lowercase hex, 16 digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The `service.name` resource attribute.
    pub service: String,
    pub name: String,
    /// OTLP `SpanKind` number (1 internal, 2 server, 3 client, ...).
    pub kind: i64,
    /// Span attributes; non-string values in their JSON spelling.
    pub attributes: BTreeMap<String, String>,
}

impl TraceStore {
    /// Starts the trace store and waits until the query API answers and both
    /// OTLP receivers accept connections (the collector starts receivers last).
    pub async fn start() -> Result<Self, Error> {
        let dir = temp_dir("vispyr-traces-")?;
        let root = dir.path();
        let (otlp_grpc_port, otlp_http_port, query_port, query_grpc_port) =
            (free_port(), free_port(), free_port(), free_port());
        let config = write_file(
            &root.join("jaeger.yaml"),
            &config(otlp_grpc_port, otlp_http_port, query_port, query_grpc_port),
        )?;

        let mut cmd = command("jaeger", root)?;
        cmd.arg(format!("--config={}", config.display()));
        let mut process = Process::spawn("jaeger", cmd, &root.join("jaeger.log"))?;

        let http = http_client();
        let query_url = format!("http://127.0.0.1:{query_port}");
        let services = format!("{query_url}/api/v3/services");
        process
            .wait_ready(START_TIMEOUT, || {
                let up = http_ok(&http, &services);
                async move { up.await && tcp_open(otlp_grpc_port) && tcp_open(otlp_http_port) }
            })
            .await?;
        Ok(Self {
            process,
            otlp_grpc_port,
            otlp_http_port,
            api: TraceQuery { query_url, http },
            dir,
        })
    }

    /// OTLP/gRPC endpoint, `http://127.0.0.1:<port>`.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc_port)
    }

    /// OTLP/HTTP base URL; traces go to `<this>/v1/traces`.
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http_port)
    }

    /// Base URL of the query API.
    pub fn query_url(&self) -> &str {
        &self.query_url
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Flattens OTLP JSON traces (as returned by [`Self::trace`]) into spans.
    pub fn spans_of(traces: &serde_json::Value) -> Vec<TraceSpan> {
        spans_of(traces)
    }
}

impl TraceQuery {
    /// The query API at `url` (Jaeger's, `http://host:16686`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            query_url: url.into(),
            http: http_client(),
        }
    }

    /// The trace as stored, in OTLP JSON (`{"resourceSpans": [...]}`, IDs in
    /// hex, enums as numbers); `None` if the store does not know it (yet).
    pub async fn trace(&self, trace_id_hex: &str) -> Result<Option<serde_json::Value>, Error> {
        let what = format!("trace {trace_id_hex}");
        // raw_traces: what was stored, without Jaeger's display adjusters.
        let url = format!(
            "{}/api/v3/traces/{trace_id_hex}?raw_traces=true",
            self.query_url
        );
        Ok(self
            .get_result(&what, url)
            .await?
            .map(|mut body| body["result"].take()))
    }

    /// The spans of a trace, flattened; empty if the trace is not stored (yet).
    pub async fn spans(&self, trace_id_hex: &str) -> Result<Vec<TraceSpan>, Error> {
        Ok(self
            .trace(trace_id_hex)
            .await?
            .map(|t| spans_of(&t))
            .unwrap_or_default())
    }

    /// IDs (lowercase hex) of up to `limit` traces with a span of `service`.
    pub async fn find_traces(&self, service: &str, limit: usize) -> Result<Vec<String>, Error> {
        let what = format!("traces of service {service}");
        let limit = limit.max(1).to_string();
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v3/traces", self.query_url),
            &[
                ("query.service_name", service),
                // Any time: tests may stamp spans in the past or the future.
                ("query.start_time_min", "2000-01-01T00:00:00Z"),
                ("query.start_time_max", "2200-01-01T00:00:00Z"),
                ("query.num_traces", &limit),
                ("query.raw_traces", "true"),
            ],
        )
        .map_err(|e| Error::backend(&what, e.to_string()))?;
        let Some(body) = self.get_result(&what, url).await? else {
            return Ok(Vec::new());
        };
        let mut ids: Vec<String> = Vec::new();
        for span in spans_of(&body["result"]) {
            if !ids.contains(&span.trace_id) {
                ids.push(span.trace_id);
            }
        }
        Ok(ids)
    }

    /// GET a query as JSON; `None` for Jaeger's 404, its answer when nothing
    /// matches (an unknown trace ID, an empty search).
    async fn get_result(
        &self,
        what: &str,
        url: impl reqwest::IntoUrl,
    ) -> Result<Option<serde_json::Value>, Error> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Error::http(what, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(json(what, checked(what, resp).await?).await?))
    }
}

fn spans_of(traces: &serde_json::Value) -> Vec<TraceSpan> {
    fn list<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
        v[key].as_array().map(Vec::as_slice).unwrap_or_default()
    }
    let mut out = Vec::new();
    for rs in list(traces, "resourceSpans") {
        let service = attributes(&rs["resource"])
            .remove("service.name")
            .unwrap_or_default();
        for ss in list(rs, "scopeSpans") {
            for span in list(ss, "spans") {
                let text = |k: &str| span[k].as_str().unwrap_or_default().to_ascii_lowercase();
                out.push(TraceSpan {
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    attributes: attributes(span),
                });
            }
        }
    }
    out
}

/// `[{"key": k, "value": {"stringValue": v}}, ...]` as a map; other value
/// kinds keep their JSON spelling (`intValue` is a string in OTLP JSON).
fn attributes(holder: &serde_json::Value) -> BTreeMap<String, String> {
    let Some(attrs) = holder["attributes"].as_array() else {
        return BTreeMap::new();
    };
    attrs
        .iter()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?;
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key, value))
        })
        .collect()
}

/// Jaeger v2 config: OTLP in, memory store, query API; nothing else listens.
/// - no processors: spans are stored as they arrive, no batching delay;
/// - `jaeger_query.enable_tracing: false`: on by default in v2, it would send
///   Jaeger's own spans to `localhost:4317`, possibly a gateway under test;
/// - `telemetry.metrics.level: none`: else a Prometheus exporter binds :8888;
/// - query gRPC gets a port too: it listens (default :16685) regardless.
fn config(otlp_grpc: u16, otlp_http: u16, query_http: u16, query_grpc: u16) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_flatten_otlp_json() {
        let t = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
            "scopeSpans": [{"scope": {}, "spans": [{
                "traceId": "0AF7651916CD43DD8448EB211C80319C", "spanId": "B7AD6B7169203331",
                "name": "GET /cart", "kind": 2,
                "attributes": [{"key": "http.status_code", "value": {"intValue": "200"}},
                               {"key": "http.route", "value": {"stringValue": "/cart"}}]
            }]}]
        }]});
        let spans = spans_of(&t);
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s.service, "checkout");
        assert_eq!((s.name.as_str(), s.kind), ("GET /cart", 2));
        assert_eq!(s.parent_span_id, "");
        assert_eq!(s.attributes["http.status_code"], "200");
        assert_eq!(s.attributes["http.route"], "/cart");
    }
}
