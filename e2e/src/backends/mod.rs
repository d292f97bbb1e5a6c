//! The storage backends the gateway writes to, as real upstream binaries on
//! loopback: Prometheus (remote write v1 + OTLP receivers), Tempo (OTLP
//! traces, queried by trace ID) and Pyroscope (OTLP profiles). Also
//! node_exporter, the reference the node-agent's host metrics are checked on.
//!
//! Each backend has a temp dir and free ports of its own, so tests run in
//! parallel; dropping the handle kills the process before its dir goes away.

mod node_exporter;
mod prometheus;
mod pyroscope;
mod tempo;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::Error;
use crate::process::Process;

pub use node_exporter::NodeExporter;
pub use prometheus::{Prometheus, PrometheusApi};
pub use pyroscope::{Flamegraph, Pyroscope, PyroscopeApi};
pub use tempo::{Tempo, TempoApi, TraceSpan};

/// How long a backend may take to become ready on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Per-request timeout of the query helpers; waits belong in `eventually`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// All three backends, started concurrently.
pub struct Backends {
    pub prometheus: Prometheus,
    pub traces: Tempo,
    pub pyroscope: Pyroscope,
}

impl Backends {
    /// Starts Prometheus, Tempo and Pyroscope at once and waits until
    /// each is ready. If one fails, the others are killed and the error quotes
    /// the failing tool's own log.
    pub async fn start() -> Result<Self, Error> {
        let (prometheus, traces, pyroscope) =
            tokio::try_join!(Prometheus::start(), Tempo::start(), Pyroscope::start())?;
        Ok(Self {
            prometheus,
            traces,
            pyroscope,
        })
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir, Error> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| Error::io(&std::env::temp_dir(), e))
}

fn write_file(path: &Path, content: &str) -> Result<PathBuf, Error> {
    std::fs::write(path, content).map_err(|e| Error::io(path, e))?;
    Ok(path.to_path_buf())
}

/// A command for a pinned tool that runs in `dir` (so any relative default
/// path lands there) and does not inherit the test's OpenTelemetry or Jaeger
/// client settings: Tempo and Pyroscope would otherwise trace themselves to
/// whatever `OTEL_EXPORTER_OTLP_ENDPOINT` or `JAEGER_*` say, possibly our own
/// receivers.
fn command(tool: &str, dir: &Path) -> Result<Command, Error> {
    let mut cmd = Command::new(crate::tool(tool)?);
    cmd.current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("OTEL_") || k.starts_with("JAEGER_") {
            cmd.env_remove(&key);
        }
    }
    Ok(cmd)
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("a plain-HTTP reqwest client always builds")
}

/// Starts a tool whose readiness is `GET ready_url` answering 200, logging
/// to `<root>/<name>.log`; returns it with the client its helpers use.
async fn spawn_http_ready(
    name: &str,
    cmd: Command,
    root: &Path,
    ready_url: &str,
) -> Result<(Process, reqwest::Client), Error> {
    let mut process = Process::spawn(name, cmd, &root.join(format!("{name}.log")))?;
    let http = http_client();
    process
        .wait_ready(START_TIMEOUT, || http_ok(&http, ready_url))
        .await?;
    Ok((process, http))
}

/// Readiness probe: `GET url` answers 200.
async fn http_ok(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
}

/// Readiness probe: something accepts TCP connections on the loopback port.
fn tcp_open(port: u16) -> bool {
    TcpStream::connect_timeout(&crate::process::loopback(port), Duration::from_millis(200)).is_ok()
}

/// Sends `req`, failing with the backend's own words on a non-2xx answer.
async fn send(what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
    checked(what, req.send().await.map_err(|e| Error::http(what, e))?).await
}

/// `resp` if it is a 2xx, else an error quoting the backend's answer.
async fn checked(what: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(Error::backend(
        what,
        format!("HTTP {status}: {}", body.trim()),
    ))
}

/// POSTs an OTLP/HTTP protobuf request; a partial success that rejects
/// anything (`rejected` gives the count and the receiver's message) is an error.
async fn post_otlp<Response: prost::Message + Default>(
    http: &reqwest::Client,
    what: &str,
    url: String,
    body: Vec<u8>,
    rejected: impl Fn(&Response) -> Option<(i64, String)>,
) -> Result<(), Error> {
    let req = http
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .body(body);
    let body = send(what, req)
        .await?
        .bytes()
        .await
        .map_err(|e| Error::http(what, e))?;
    let resp = Response::decode(body.as_ref())
        .map_err(|e| Error::backend(what, format!("undecodable response: {e}")))?;
    match rejected(&resp) {
        Some((count, message)) if count > 0 => {
            Err(Error::backend(what, format!("{count} rejected: {message}")))
        }
        _ => Ok(()),
    }
}

async fn json(what: &str, resp: reqwest::Response) -> Result<serde_json::Value, Error> {
    resp.json().await.map_err(|e| Error::http(what, e))
}

fn millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
