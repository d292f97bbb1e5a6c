//! Smoke tests of the backends the gateway writes to: each starts the real
//! binary it needs, writes through the protocol the gateway will use, and
//! reads the data back through the query helpers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use vispyr_e2e::fixtures::{CPU_PROFILE_FUNCTIONS, cpu_profile, string_attr};
use vispyr_e2e::{Backends, Prometheus, Pyroscope, Tempo, eventually};

const WAIT: Duration = Duration::from_secs(30);
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

/// A name no other test (or earlier run against the same backend) uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn prometheus_remote_write_reads_back_by_promql() {
    let started = Instant::now();
    let prom = Prometheus::start().await.unwrap();
    eprintln!(
        "prometheus ready in {:?} at {}",
        started.elapsed(),
        prom.url()
    );

    let name = unique("vispyr_e2e_smoke");
    let written = labels(&[("__name__", &name), ("job", "smoke"), ("pod", "web-0")]);
    let other = labels(&[("__name__", &name), ("job", "smoke"), ("pod", "web-1")]);
    prom.remote_write(&[(written.clone(), 42.5), (other.clone(), -1.0)])
        .await
        .unwrap();

    let selector = format!(r#"{name}{{pod="web-0"}}"#);
    let got = eventually(WAIT, || async {
        let r = prom.query(&selector).await.map_err(|e| e.to_string())?;
        if r.is_empty() {
            Err("no series yet".to_string())
        } else {
            Ok(r)
        }
    })
    .await
    .unwrap();
    assert_eq!(got, vec![(written, 42.5)]);

    let sum = prom.query(&format!("sum({name})")).await.unwrap();
    assert_eq!(sum, vec![(BTreeMap::new(), 41.5)]);
}

#[tokio::test]
async fn prometheus_rejects_a_bad_query_with_its_own_message() {
    let prom = Prometheus::start().await.unwrap();
    let err = prom.query("sum(").await.unwrap_err().to_string();
    assert!(
        err.contains("bad_data") && err.contains("parse error"),
        "{err}"
    );
}

#[tokio::test]
async fn prometheus_bad_config_fails_start_with_its_log() {
    let err = match Prometheus::start_with_config("scrape_configs:\n  - job_nam: typo\n").await {
        Ok(_) => panic!("Prometheus started with a config it must reject"),
        Err(e) => e.to_string(),
    };
    eprintln!("{err}");
    // Prometheus' own words, from its log, not ours.
    assert!(err.contains("prometheus exited"), "{err}");
    assert!(err.contains("job_nam"), "{err}");
}

#[tokio::test]
async fn tempo_keeps_an_otlp_grpc_span_by_trace_id() {
    let started = Instant::now();
    let store = Tempo::start().await.unwrap();
    eprintln!(
        "tempo ready in {:?}, OTLP gRPC at {}",
        started.elapsed(),
        store.otlp_grpc_endpoint()
    );

    let service = unique("checkout");
    let trace_id: [u8; 16] = *b"vispyr-e2e-trace";
    let trace_hex: String = trace_id.iter().map(|b| format!("{b:02x}")).collect();
    let span_id = [1, 2, 3, 4, 5, 6, 7, 8];
    let start = now_nanos();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_attr("service.name", &service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "vispyr-e2e".into(),
                    ..Default::default()
                }),
                spans: vec![Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    name: "GET /cart".into(),
                    kind: span::SpanKind::Server as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + 1_500_000,
                    attributes: vec![string_attr("http.route", "/cart")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = TraceServiceClient::connect(store.otlp_grpc_endpoint())
        .await
        .unwrap();
    let resp = client.export(request).await.unwrap().into_inner();
    assert!(
        resp.partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_spans == 0),
        "{resp:?}"
    );

    let spans = eventually(WAIT, || async {
        let spans = store.spans(&trace_hex).await.map_err(|e| e.to_string())?;
        if spans.is_empty() {
            Err("trace not stored yet".to_string())
        } else {
            Ok(spans)
        }
    })
    .await
    .unwrap();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let s = &spans[0];
    assert_eq!(s.trace_id, trace_hex);
    assert_eq!(s.span_id, "0102030405060708");
    assert_eq!(s.service, service);
    assert_eq!(s.name, "GET /cart");
    assert_eq!(s.kind, span::SpanKind::Server as i64);
    assert_eq!(
        s.attributes.get("http.route").map(String::as_str),
        Some("/cart")
    );

    assert_eq!(
        store.find_traces(&service, 10).await.unwrap(),
        vec![trace_hex]
    );
    assert!(
        store
            .trace("0123456789abcdef0123456789abcdef")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_traces(&unique("nobody"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Waits until `service`'s CPU profile is queryable; its total and the totals
/// of the three functions of [`cpu_profile`].
async fn wait_for_cpu_profile(
    pyro: &Pyroscope,
    service: &str,
) -> (i64, BTreeMap<&'static str, i64>) {
    let selector = format!(r#"{{service_name="{service}"}}"#);
    let now = SystemTime::now();
    let (from, to) = (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(3600),
    );
    let fg = eventually(WAIT, || async {
        let fg = pyro
            .merged_profile(CPU, &selector, from, to)
            .await
            .map_err(|e| e.to_string())?;
        if fg.total == 0 {
            Err("profile not queryable yet".to_string())
        } else {
            Ok(fg)
        }
    })
    .await
    .unwrap();
    eprintln!("flame graph of {service}: {fg:?}");
    let functions = CPU_PROFILE_FUNCTIONS
        .into_iter()
        .map(|f| (f, fg.total_of(f)))
        .collect();
    (fg.total, functions)
}

#[tokio::test]
async fn pyroscope_merges_an_otlp_profile() {
    let started = Instant::now();
    let pyro = Pyroscope::start().await.unwrap();
    eprintln!(
        "pyroscope ready in {:?} at {}",
        started.elapsed(),
        pyro.url()
    );

    let service = unique("checkout");
    pyro.push_otlp(&cpu_profile(&[("service.name", &service)], &[], 3))
        .await
        .unwrap();

    let (total, functions) = wait_for_cpu_profile(&pyro, &service).await;
    // 3 samples x 10 ms period, all of them in each function of the stack.
    assert_eq!(total, 30_000_000);
    assert_eq!(
        functions,
        BTreeMap::from([
            ("main", 30_000_000),
            ("handle_request", 30_000_000),
            ("compute_hash", 30_000_000)
        ])
    );
    assert!(
        pyro.label_values("service_name")
            .await
            .unwrap()
            .contains(&service)
    );
}

#[tokio::test]
async fn pyroscope_takes_otlp_grpc_on_its_http_port() {
    let pyro = Pyroscope::start().await.unwrap();
    let service = unique("grpc");
    let mut client = ProfilesServiceClient::connect(pyro.otlp_grpc_endpoint().to_string())
        .await
        .unwrap();
    client
        .export(cpu_profile(&[("service.name", &service)], &[], 2))
        .await
        .unwrap();

    let (total, functions) = wait_for_cpu_profile(&pyro, &service).await;
    assert_eq!(total, 20_000_000);
    assert_eq!(functions["compute_hash"], 20_000_000);
}

#[tokio::test]
async fn all_backends_start_together() {
    let started = Instant::now();
    let b = Backends::start().await.unwrap();
    eprintln!("all backends ready in {:?}", started.elapsed());
    assert_eq!(
        b.prometheus.query("vector(1)").await.unwrap(),
        vec![(BTreeMap::new(), 1.0)]
    );
    assert!(
        b.traces
            .trace("00000000000000000000000000000001")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.pyroscope
            .label_values("service_name")
            .await
            .unwrap()
            .is_empty()
    );
}
