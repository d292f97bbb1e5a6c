//! What the gateway's integration tests share: the binary started on free
//! ports (alone or as a ring), and test traces with their checks against the
//! trace store.

// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use vispyr_e2e::process::{Process, free_port};
use vispyr_e2e::{Tempo, eventually};

pub const BIN: &str = env!("CARGO_BIN_EXE_vispyr-gateway");
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Gateway {
    pub process: Process,
    pub grpc: String,
    pub http: String,
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(sets: &[String]) -> Gateway {
        Gateway::start_with_env(sets, &[]).await
    }

    /// Like [`Self::start`], with extra environment variables.
    pub async fn start_with_env(sets: &[String], env: &[(&str, &std::path::Path)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(BIN);
        for set in [
            format!("grpc_addr=127.0.0.1:{grpc}"),
            format!("http_addr=127.0.0.1:{http}"),
            format!("admin_addr=127.0.0.1:{admin}"),
        ]
        .iter()
        .chain(sets)
        {
            cmd.arg("--set").arg(set);
        }
        cmd.env("VISPYR_LOG", "info,vispyr_gateway=debug");
        cmd.envs(env.iter().copied());
        let mut process =
            Process::spawn("vispyr-gateway", cmd, &dir.path().join("gateway.log")).unwrap();
        let client = reqwest::Client::new();
        let readyz = format!("http://127.0.0.1:{admin}/readyz");
        process
            .wait_ready(WAIT, || {
                let req = client.get(&readyz).send();
                async move { req.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await
            .expect("gateway becomes ready");
        Gateway {
            process,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
            admin: format!("http://127.0.0.1:{admin}"),
            _dir: dir,
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of `/metrics`, 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

pub const MEMBERS: &str = "vispyr_gateway_ring_members";

/// `n` gateways in one ring (static peers on loopback) that all see each
/// other; `sets` go to every member.
pub async fn ring(n: usize, sets: &[String]) -> Vec<Gateway> {
    ring_with_env(n, sets, &[]).await
}

/// Like [`ring`], with extra environment variables for every member.
pub async fn ring_with_env(
    n: usize,
    sets: &[String],
    env: &[(&str, &std::path::Path)],
) -> Vec<Gateway> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut members = Vec::new();
    for port in &ports {
        let mut all = vec![
            format!("ring.addr=127.0.0.1:{port}"),
            format!("ring.peers=[{}]", peers.join(",")),
            "ring.probe_interval_ms=100".into(),
        ];
        all.extend_from_slice(sets);
        members.push(Gateway::start_with_env(&all, env).await);
    }
    for m in &members {
        wait_members(m, n).await;
    }
    members
}

pub async fn wait_members(member: &Gateway, n: usize) {
    eventually(WAIT, || async {
        match member.metric(MEMBERS).await {
            v if v == n as f64 => Ok(()),
            v => Err(v),
        }
    })
    .await
    .unwrap_or_else(|v| panic!("{} sees {v} ring members, not {n}", member.admin));
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(8) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let v = RandomState::new().hash_one(nanos).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `spans` of the service `service` (its only resource attribute).
pub fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A trace of a root span and `children` children, all of `service`.
pub struct TestTrace {
    pub service: String,
    pub trace_id: [u8; 16],
    pub spans: Vec<([u8; 8], Option<[u8; 8]>, String)>,
}

impl TestTrace {
    pub fn new(service: &str, children: usize) -> TestTrace {
        let root = random_bytes::<8>();
        let mut spans = vec![(root, None, "root".to_string())];
        for i in 0..children {
            spans.push((random_bytes(), Some(root), format!("child-{i}")));
        }
        TestTrace {
            service: service.into(),
            trace_id: random_bytes(),
            spans,
        }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn proto(&self) -> ExportTraceServiceRequest {
        self.proto_of(0..self.spans.len())
    }

    /// A request with only the spans at `indices`.
    pub fn proto_of(&self, indices: impl IntoIterator<Item = usize>) -> ExportTraceServiceRequest {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let spans = indices
            .into_iter()
            .map(|i| &self.spans[i])
            .map(|(id, parent, name)| Span {
                trace_id: self.trace_id.to_vec(),
                span_id: id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: name.clone(),
                kind: 2,
                start_time_unix_nano: now,
                end_time_unix_nano: now + 1_000_000,
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![resource_spans(&self.service, spans)],
        }
    }

    /// OTLP JSON written by hand (not by the crate under test): hex IDs,
    /// upper case for the trace ID, enums as numbers, times as strings.
    pub fn json(&self) -> serde_json::Value {
        let spans: Vec<_> = self
            .spans
            .iter()
            .map(|(id, parent, name)| {
                serde_json::json!({
                    "traceId": hex(&self.trace_id).to_uppercase(),
                    "spanId": hex(id),
                    "parentSpanId": parent.map(|p| hex(&p)).unwrap_or_default(),
                    "name": name,
                    "kind": 2,
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": "1700000000001000000",
                })
            })
            .collect();
        serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": self.service}}]},
            "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]
        }]})
    }

    /// Waits until the store holds exactly this trace: every span once, its
    /// parent and the service name.
    pub async fn assert_stored(&self, store: &Tempo) {
        let want: BTreeSet<(String, String, String, String)> = self
            .spans
            .iter()
            .map(|(id, parent, name)| {
                (
                    hex(id),
                    parent.map(|p| hex(&p)).unwrap_or_default(),
                    name.clone(),
                    self.service.clone(),
                )
            })
            .collect();
        let id = self.trace_id();
        eventually(WAIT, || async {
            let stored = store.spans(&id).await.map_err(|e| e.to_string())?;
            let count = stored.len();
            let got: BTreeSet<_> = stored
                .into_iter()
                .map(|s| {
                    assert_eq!(s.trace_id, id);
                    (s.span_id, s.parent_span_id, s.name, s.service)
                })
                .collect();
            if got == want && count == want.len() {
                Ok(())
            } else {
                Err(format!(
                    "trace {id}: want {want:?}, stored {count} spans: {got:?}"
                ))
            }
        })
        .await
        .unwrap();
    }
}
