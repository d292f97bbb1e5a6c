//! Pyroscope v1 in single-binary mode (`-target=all`) on filesystem storage.
//!
//! Its HTTP port takes OTLP profiles both as OTLP/HTTP
//! (`/v1development/profiles`) and as OTLP/gRPC (h2c on the same port), and
//! answers queries over the Connect protocol.

use std::path::Path;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message;
use tempfile::TempDir;

use super::{command, http_client, json, millis, post_otlp, send, spawn_http_ready, temp_dir};
use crate::Error;
use crate::process::{Process, free_port};

pub struct Pyroscope {
    // Field order is drop order: the process goes before its dir.
    process: Process,
    api: PyroscopeApi,
    dir: TempDir,
}

/// The query API of a Pyroscope: the harness's own (a [`Pyroscope`] derefs
/// to it) or one running elsewhere, e.g. in a `NodeCluster`.
pub struct PyroscopeApi {
    url: String,
    http: reqwest::Client,
}

impl std::ops::Deref for Pyroscope {
    type Target = PyroscopeApi;

    fn deref(&self) -> &PyroscopeApi {
        &self.api
    }
}

/// A merged profile in Pyroscope's flame graph encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Flamegraph {
    /// Function names; `names[0]` is "total", the root.
    pub names: Vec<String>,
    /// One entry per depth; each node is 4 numbers: x offset from the previous
    /// node's end, total, self, index into `names`.
    pub levels: Vec<Vec<i64>>,
    /// Sum of all samples, in the profile type's unit (ns for CPU).
    pub total: i64,
    pub max_self: i64,
}

impl Flamegraph {
    /// Total of every node named `name` (0 if absent).
    pub fn total_of(&self, name: &str) -> i64 {
        self.nodes()
            .filter(|n| self.names.get(n[3] as usize).is_some_and(|s| s == name))
            .map(|n| n[1])
            .sum()
    }

    fn nodes(&self) -> impl Iterator<Item = &[i64]> {
        self.levels.iter().flat_map(|l| l.chunks_exact(4))
    }
}

impl Pyroscope {
    /// Starts Pyroscope and waits for `/ready` (all modules running, the
    /// ingester ACTIVE in its ring).
    pub async fn start() -> Result<Self, Error> {
        let dir = temp_dir("vispyr-pyroscope-")?;
        let root = dir.path();
        let (http_port, grpc_port, memberlist_port) = (free_port(), free_port(), free_port());
        let url = format!("http://127.0.0.1:{http_port}");
        let path = |p: &str| root.join(p).display().to_string();
        // Its retention loop logs errors until the ingester first writes here.
        std::fs::create_dir(root.join("data")).map_err(|e| Error::io(&root.join("data"), e))?;

        let mut cmd = command("pyroscope", root)?;
        cmd.arg("-target=all")
            .arg("-config.show_banner=false")
            .arg("-server.http-listen-address=127.0.0.1")
            .arg(format!("-server.http-listen-port={http_port}"))
            .arg("-server.grpc-listen-address=127.0.0.1")
            .arg(format!("-server.grpc-listen-port={grpc_port}"))
            // The rings live in memberlist; one member, nobody to join.
            .arg("-memberlist.bind-addr=127.0.0.1")
            .arg(format!("-memberlist.bind-port={memberlist_port}"))
            .arg("-memberlist.advertise-addr=127.0.0.1")
            .arg(format!("-memberlist.advertise-port={memberlist_port}"))
            // Ring members otherwise look their address up on eth0/en0.
            .arg("-distributor.ring.instance-addr=127.0.0.1")
            .arg("-ingester.lifecycler.addr=127.0.0.1")
            .arg("-query-frontend.instance-addr=127.0.0.1")
            .arg("-query-scheduler.ring.instance-addr=127.0.0.1")
            .arg("-store-gateway.sharding-ring.instance-addr=127.0.0.1")
            .arg("-compactor.ring.instance-addr=127.0.0.1")
            .arg("-overrides-exporter.ring.instance-addr=127.0.0.1")
            // Ready as soon as the ingester is ACTIVE (default: 15 s later).
            .arg("-ingester.min-ready-duration=0s")
            // Every path into the temp dir.
            .arg("-storage.backend=filesystem")
            .arg(format!("-storage.filesystem.dir={}", path("bucket")))
            .arg(format!("-pyroscopedb.data-path={}", path("data")))
            .arg(format!("-compactor.data-dir={}", path("compactor")))
            .arg(format!(
                "-blocks-storage.bucket-store.sync-dir={}",
                path("sync")
            ))
            // Nothing that talks to the network or to itself.
            .arg("-self-profiling.disable-push=true")
            .arg("-usage-stats.enabled=false")
            .arg("-tracing.enabled=false");
        let (process, http) =
            spawn_http_ready("pyroscope", cmd, root, &format!("{url}/ready")).await?;
        Ok(Self {
            process,
            api: PyroscopeApi { url, http },
            dir,
        })
    }

    /// Base URL: HTTP API, OTLP/HTTP profiles and OTLP/gRPC profiles (h2c).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// OTLP/gRPC endpoint for profiles; the HTTP port serves gRPC too.
    pub fn otlp_grpc_endpoint(&self) -> &str {
        &self.url
    }

    /// Full OTLP/HTTP path for profiles.
    pub fn otlp_profiles_url(&self) -> String {
        format!("{}/v1development/profiles", self.url)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes OTLP profiles over OTLP/HTTP (protobuf). A partial success that
    /// rejects profiles is an error.
    pub async fn push_otlp(&self, request: &ExportProfilesServiceRequest) -> Result<(), Error> {
        post_otlp(
            &self.http,
            "pyroscope OTLP profiles push",
            self.otlp_profiles_url(),
            request.encode_to_vec(),
            |resp: &ExportProfilesServiceResponse| {
                let p = resp.partial_success.as_ref()?;
                Some((p.rejected_profiles, p.error_message.clone()))
            },
        )
        .await
    }
}

impl PyroscopeApi {
    /// The API at `url` (`http://host:4040`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            http: http_client(),
        }
    }

    /// The merged profile of `profile_type_id` (e.g.
    /// `process_cpu:cpu:nanoseconds:cpu:nanoseconds`) over the series that
    /// match `label_selector` (e.g. `{service_name="checkout"}`) in
    /// `[start, end]` (at most 1 day long: Pyroscope's default query length
    /// limit). No data is an empty flame graph with total 0.
    pub async fn merged_profile(
        &self,
        profile_type_id: &str,
        label_selector: &str,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Flamegraph, Error> {
        let what = format!("pyroscope merged profile {profile_type_id}{label_selector}");
        let body = serde_json::json!({
            "profileTypeID": profile_type_id,
            "labelSelector": label_selector,
            "start": millis(start),
            "end": millis(end),
        });
        let resp = self.connect("SelectMergeStacktraces", &what, &body).await?;
        parse_flamegraph(&resp["flamegraph"]).map_err(|m| Error::backend(&what, m))
    }

    /// Values of label `name` over the last 12 hours (and the next hour).
    /// That spans everything ingestible (by default Pyroscope rejects profiles
    /// more than 1 h old or 10 min ahead) within the 1-day query length limit.
    pub async fn label_values(&self, name: &str) -> Result<Vec<String>, Error> {
        let what = format!("pyroscope values of label {name}");
        let now = SystemTime::now();
        let body = serde_json::json!({
            "name": name,
            "start": millis(now - Duration::from_secs(12 * 3600)),
            "end": millis(now + Duration::from_secs(3600)),
        });
        let resp = self.connect("LabelValues", &what, &body).await?;
        Ok(strings(&resp["names"]))
    }

    /// A unary Connect call with JSON bodies to the querier service.
    async fn connect(
        &self,
        method: &str,
        what: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let req = self
            .http
            .post(format!("{}/querier.v1.QuerierService/{method}", self.url))
            .header("Content-Type", "application/json")
            .json(body);
        json(what, send(what, req).await?).await
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// protojson spells int64 as a string; accept a number too.
fn int64(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::Null => Ok(0),
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| format!("not an int64: {n}")),
        serde_json::Value::String(s) => s.parse().map_err(|e| format!("not an int64: {s:?}: {e}")),
        other => Err(format!("not an int64: {other}")),
    }
}

fn parse_flamegraph(fg: &serde_json::Value) -> Result<Flamegraph, String> {
    let levels = fg["levels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|l| {
            l["values"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(int64)
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok(Flamegraph {
        names: strings(&fg["names"]),
        levels,
        total: int64(&fg["total"])?,
        max_self: int64(&fg["maxSelf"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flamegraph_parses_protojson() {
        let v = serde_json::json!({
            "names": ["total", "main", "work"],
            "levels": [{"values": ["0", "30", "0", "0"]}, {"values": [0, 30, 10, 1]}, {"values": ["0", "20", "20", "2"]}],
            "total": "30",
            "maxSelf": "20",
        });
        let fg = parse_flamegraph(&v).unwrap();
        assert_eq!(fg.total, 30);
        assert_eq!(fg.max_self, 20);
        assert_eq!(fg.total_of("work"), 20);
        assert_eq!(fg.total_of("main"), 30);
        assert_eq!(fg.total_of("absent"), 0);
        assert!(parse_flamegraph(&serde_json::json!({"total": "x"})).is_err());
    }
}
