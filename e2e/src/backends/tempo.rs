//! Tempo 1.5 in single-binary mode on local storage, with OTLP gRPC and HTTP
//! receivers; the newest release the module registry serves (see
//! `e2e/tools/README.md`). Queries by trace ID answer from the ingester as soon
//! as a span is pushed, and search (`search_enabled`) covers recent traces.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{
    START_TIMEOUT, checked, command, http_client, http_ok, json, tcp_open, temp_dir, write_file,
};
use crate::Error;
use crate::process::{Process, free_port};

pub struct Tempo {
    // Field order is drop order: the process goes before its dir.
    process: Process,
    otlp_grpc_port: u16,
    otlp_http_port: u16,
    api: TempoApi,
    dir: TempDir,
}

/// The query API of a Tempo: the harness's own (a [`Tempo`] derefs to it) or
/// one running elsewhere, e.g. in a `NodeCluster`.
pub struct TempoApi {
    url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for Tempo {
    type Target = TempoApi;

    fn deref(&self) -> &TempoApi {
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

impl Tempo {
    /// Starts Tempo and waits for `/ready` (every module running, the
    /// ingester ACTIVE in its ring) and for both OTLP receivers.
    pub async fn start() -> Result<Self, Error> {
        let dir = temp_dir("vispyr-tempo-")?;
        let root = dir.path();
        let ports = Ports {
            http: free_port(),
            grpc: free_port(),
            otlp_grpc: free_port(),
            otlp_http: free_port(),
        };
        let config = write_file(&root.join("tempo.yaml"), &config(&ports, root))?;

        let mut cmd = command("tempo", root)?;
        cmd.arg(format!("-config.file={}", config.display()));
        let mut process = Process::spawn("tempo", cmd, &root.join("tempo.log"))?;

        let http = http_client();
        let url = format!("http://127.0.0.1:{}", ports.http);
        let ready = format!("{url}/ready");
        process
            .wait_ready(START_TIMEOUT, || {
                let up = http_ok(&http, &ready);
                async move { up.await && tcp_open(ports.otlp_grpc) && tcp_open(ports.otlp_http) }
            })
            .await?;
        Ok(Self {
            process,
            otlp_grpc_port: ports.otlp_grpc,
            otlp_http_port: ports.otlp_http,
            api: TempoApi { url, http },
            dir,
        })
    }

    /// OTLP/gRPC endpoint, `http://127.0.0.1:<port>`.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_grpc_port)
    }

    /// OTLP/HTTP base URL; traces go to `<this>/v1/traces`. Tempo 1.5's
    /// receiver takes protobuf, and JSON only in the OTLP JSON of its day
    /// (`instrumentationLibrarySpans`, not `scopeSpans`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http_port)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Flattens OTLP JSON traces (as returned by [`TempoApi::trace`]) into spans.
    pub fn spans_of(traces: &Value) -> Vec<TraceSpan> {
        spans_of(traces)
    }
}

impl TempoApi {
    /// The query API at `url` (Tempo's HTTP port, `http://host:3200`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            http: http_client(),
        }
    }

    /// Base URL of the query API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The trace as stored, in today's OTLP JSON (`{"resourceSpans": [...]}`,
    /// IDs in hex, enums as numbers); `None` if Tempo does not know it (yet).
    pub async fn trace(&self, trace_id_hex: &str) -> Result<Option<Value>, Error> {
        let what = format!("trace {trace_id_hex}");
        let url = format!("{}/api/traces/{trace_id_hex}", self.url);
        let Some(body) = self.get(&what, url).await? else {
            return Ok(None);
        };
        otlp_json(body)
            .map(Some)
            .map_err(|e| Error::backend(&what, e))
    }

    /// The spans of a trace, flattened; empty if the trace is not stored (yet).
    pub async fn spans(&self, trace_id_hex: &str) -> Result<Vec<TraceSpan>, Error> {
        Ok(self
            .trace(trace_id_hex)
            .await?
            .map(|t| spans_of(&t))
            .unwrap_or_default())
    }

    /// IDs (lowercase hex, 32 digits) of up to `limit` recent traces with a
    /// span of `service`, whatever their timestamps: without a time range,
    /// Tempo searches what its ingester holds.
    pub async fn find_traces(&self, service: &str, limit: usize) -> Result<Vec<String>, Error> {
        let what = format!("traces of service {service}");
        // `tags` is logfmt; a JSON string is a valid logfmt quoted value.
        let tags = format!("service.name={}", Value::from(service));
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/search", self.url),
            &[("tags", tags), ("limit", limit.max(1).to_string())],
        )
        .map_err(|e| Error::backend(&what, e.to_string()))?;
        let Some(body) = self.get(&what, url).await? else {
            return Ok(Vec::new());
        };
        let found = body["traces"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Search answers IDs without their leading zeros.
        Ok(found
            .iter()
            .filter_map(|t| t["traceID"].as_str())
            .map(|id| format!("{:0>32}", id.to_ascii_lowercase()))
            .collect())
    }

    /// GET a query as JSON; `None` for Tempo's 404 (an unknown trace ID).
    async fn get(&self, what: &str, url: impl reqwest::IntoUrl) -> Result<Option<Value>, Error> {
        let resp = self
            .http
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| Error::http(what, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(json(what, checked(what, resp).await?).await?))
    }
}

/// Tempo 1.5 answers a trace as `{"batches": [...]}` in the OTLP JSON of
/// 2022 (`instrumentationLibrarySpans`, `instrumentationLibrary`), with IDs
/// in base64 (the protobuf JSON mapping of bytes) and enums by name. This is
/// the same trace in today's OTLP JSON, which the helpers and tests read.
fn otlp_json(mut tempo: Value) -> Result<Value, String> {
    let mut resource_spans = Vec::new();
    for mut batch in take_list(&mut tempo, "batches") {
        let mut scope_spans = Vec::new();
        for mut ils in take_list(&mut batch, "instrumentationLibrarySpans") {
            let spans = take_list(&mut ils, "spans")
                .into_iter()
                .map(otlp_span)
                .collect::<Result<Vec<_>, _>>()?;
            scope_spans
                .push(json!({"scope": ils["instrumentationLibrary"].take(), "spans": spans}));
        }
        resource_spans
            .push(json!({"resource": batch["resource"].take(), "scopeSpans": scope_spans}));
    }
    Ok(json!({ "resourceSpans": resource_spans }))
}

fn otlp_span(mut span: Value) -> Result<Value, String> {
    hex_ids(&mut span, &["traceId", "spanId", "parentSpanId"])?;
    for link in span
        .get_mut("links")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        hex_ids(link, &["traceId", "spanId"])?;
    }
    if let Some(kind) = span.get_mut("kind")
        && let Some(k) = kind.as_str().and_then(span::SpanKind::from_str_name)
    {
        *kind = json!(k as i32);
    }
    if let Some(code) = span.pointer_mut("/status/code")
        && let Some(c) = code.as_str().and_then(status::StatusCode::from_str_name)
    {
        *code = json!(c as i32);
    }
    Ok(span)
}

/// Rewrites the base64 IDs at `keys` (those present) in lowercase hex.
fn hex_ids(holder: &mut Value, keys: &[&str]) -> Result<(), String> {
    for key in keys {
        let Some(id) = holder.get_mut(*key) else {
            continue;
        };
        let text = id.as_str().unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("{key} {text:?} is not base64: {e}"))?;
        *id = Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }
    Ok(())
}

fn take_list(v: &mut Value, key: &str) -> Vec<Value> {
    match v.get_mut(key).map(Value::take) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    }
}

fn spans_of(traces: &Value) -> Vec<TraceSpan> {
    fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
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
fn attributes(holder: &Value) -> BTreeMap<String, String> {
    let Some(attrs) = holder["attributes"].as_array() else {
        return BTreeMap::new();
    };
    attrs
        .iter()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?;
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key, value))
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    grpc: u16,
    otlp_grpc: u16,
    otlp_http: u16,
}

/// Tempo 1.5 single binary: OTLP in, local blocks and WAL in `root`, every
/// listener on loopback, nothing else.
/// - the rings in memory: one process, no memberlist (which would bind :7946);
/// - the ingester's address given: else it looks one up on eth0/en0;
/// - `min_ready_duration: 0s`: else `/ready` waits 15 s after the ingester
///   joined its ring;
/// - usage reports off: on by default, they go to Grafana's servers.
fn config(ports: &Ports, root: &Path) -> String {
    let path = |p: &str| root.join(p).display().to_string();
    let (blocks, wal) = (path("blocks"), path("wal"));
    let Ports {
        http,
        grpc,
        otlp_grpc,
        otlp_http,
    } = ports;
    format!(
        r#"server:
  http_listen_address: 127.0.0.1
  http_listen_port: {http}
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: {grpc}
search_enabled: true
usage_report:
  reporting_enabled: false
distributor:
  receivers:
    otlp:
      protocols:
        grpc:
          endpoint: 127.0.0.1:{otlp_grpc}
        http:
          endpoint: 127.0.0.1:{otlp_http}
  ring:
    kvstore:
      store: inmemory
ingester:
  lifecycler:
    address: 127.0.0.1
    min_ready_duration: 0s
    ring:
      kvstore:
        store: inmemory
      replication_factor: 1
storage:
  trace:
    backend: local
    local:
      path: {blocks}
    wal:
      path: {wal}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_flatten_otlp_json() {
        let t = json!({"resourceSpans": [{
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

    /// Tempo 1.5's answer, verbatim but for the parent, status and link added.
    #[test]
    fn tempo_json_becomes_todays_otlp_json() {
        let tempo = json!({"batches": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
            "instrumentationLibrarySpans": [{"instrumentationLibrary": {"name": "probe"}, "spans": [{
                "traceId": "CvdlGRbNQ92ESOshHIAxnA==", "spanId": "t61rcWkgMzE=",
                "parentSpanId": "AQIDBAUGBwg=", "name": "GET /cart", "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": "1795449622346421541",
                "attributes": [{"key": "http.route", "value": {"stringValue": "/cart"}}],
                "links": [{"traceId": "CvdlGRbNQ92ESOshHIAxnA==", "spanId": "AQIDBAUGBwg="}],
                "status": {"code": "STATUS_CODE_ERROR"}
            }]}]
        }]});
        let otlp = otlp_json(tempo).unwrap();
        let span = &otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(
            otlp["resourceSpans"][0]["scopeSpans"][0]["scope"]["name"],
            "probe"
        );
        assert_eq!(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span["spanId"], "b7ad6b7169203331");
        assert_eq!(span["parentSpanId"], "0102030405060708");
        assert_eq!(span["links"][0]["spanId"], "0102030405060708");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["status"]["code"], 2);
        let spans = spans_of(&otlp);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].service, "checkout");
        assert_eq!(spans[0].attributes["http.route"], "/cart");
    }

    #[test]
    fn bad_ids_are_named() {
        let tempo = json!({"batches": [{"instrumentationLibrarySpans": [{"spans": [
            {"traceId": "not base64!"}]}]}]});
        let err = otlp_json(tempo).unwrap_err();
        assert!(err.contains("traceId \"not base64!\""), "{err}");
    }
}
