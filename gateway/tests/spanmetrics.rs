//! Span metrics and service graph from the gateway binary, read back from a
//! real Prometheus (remote write receiver): exact counts, Tempo's names and
//! label values, edges between services with their request and failure counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;
use vispyr_e2e::{Prometheus, eventually};

mod common;
use common::{Gateway, WAIT};

/// Traces sent; each has 6 spans over 3 services.
const TRACES: u64 = 12;
const SPANS: u64 = TRACES * 6;
/// Payments fails in every 4th trace.
const FAILED: u64 = TRACES / 4;

fn service(name: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![common::resource_spans(name, spans)],
    }
}

/// Trace `i`: frontend (root SERVER, CLIENT) -> checkout (SERVER, CLIENT,
/// INTERNAL) -> payments (SERVER: ERROR when i % 4 == 0, OK when 1, else
/// UNSET); one request per service, payments first, so halves of an edge
/// arrive in different requests and in either order.
fn trace(i: u64) -> Vec<ExportTraceServiceRequest> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let trace_id = (u128::from(i) + 1).to_be_bytes().to_vec();
    let span = |id: u8, parent: Option<u8>, name: &str, kind: SpanKind, ms: u64| Span {
        trace_id: trace_id.clone(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: now,
        end_time_unix_nano: now + ms * 1_000_000,
        ..Default::default()
    };
    let mut charge = span(6, Some(4), "charge", SpanKind::Server, 10);
    charge.status = match i % 4 {
        0 => Some(Status {
            code: StatusCode::Error as i32,
            message: "card declined".into(),
        }),
        1 => Some(Status {
            code: StatusCode::Ok as i32,
            ..Default::default()
        }),
        _ => None,
    };
    vec![
        service("payments", vec![charge]),
        service(
            "checkout",
            vec![
                span(3, Some(2), "POST /api/checkout", SpanKind::Server, 20),
                span(4, Some(3), "charge", SpanKind::Client, 12),
                span(5, Some(3), "compute-total", SpanKind::Internal, 3),
            ],
        ),
        service(
            "frontend",
            vec![
                span(1, None, "GET /checkout", SpanKind::Server, 30),
                span(2, Some(1), "POST /api/checkout", SpanKind::Client, 25),
            ],
        ),
    ]
}

/// `promql`'s result as (chosen label values) -> value.
async fn query(prometheus: &Prometheus, promql: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
    prometheus
        .query(promql)
        .await
        .unwrap()
        .into_iter()
        .map(|(labels, v)| {
            let key = by
                .iter()
                .map(|l| labels.get(*l).cloned().unwrap_or_default())
                .collect();
            (key, v)
        })
        .collect()
}

fn expect(pairs: &[(&[&str], f64)]) -> BTreeMap<Vec<String>, f64> {
    pairs
        .iter()
        .map(|(k, v)| (k.iter().map(|s| s.to_string()).collect(), *v))
        .collect()
}

#[tokio::test]
async fn exact_span_metrics_and_service_graph_reach_prometheus() {
    let prometheus = Prometheus::start().await.unwrap();
    let gateway = Gateway::start(&[
        format!(
            "exporters.metrics.endpoint={}",
            prometheus.remote_write_url()
        ),
        "exporters.metrics.batch_timeout_ms=20".into(),
        "span_metrics.interval_ms=300".into(),
    ])
    .await;
    let mut client = TraceServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    for i in 0..TRACES {
        for request in trace(i) {
            let answer = client.export(request).await.unwrap().into_inner();
            assert_eq!(answer.partial_success, None);
        }
    }

    let total = "sum(traces_spanmetrics_calls_total)";
    eventually(WAIT, || async {
        let got = query(&prometheus, total, &[]).await;
        if got.values().next() == Some(&(SPANS as f64)) {
            Ok(())
        } else {
            Err(got)
        }
    })
    .await
    .unwrap();
    // Several more intervals are written: totals stay exact (cumulative, one writer).
    let written = r#"vispyr_gateway_exporter_sent_samples_total{exporter="metrics"}"#;
    let before = gateway.metric(written).await;
    eventually(WAIT, || async {
        let now = gateway.metric(written).await;
        if now >= before * 3.0 {
            Ok(())
        } else {
            Err(now)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        query(&prometheus, total, &[]).await,
        expect(&[(&[], SPANS as f64)])
    );

    let by_service = query(
        &prometheus,
        "sum by (service) (traces_spanmetrics_calls_total)",
        &["service"],
    )
    .await;
    let t = TRACES as f64;
    assert_eq!(
        by_service,
        expect(&[
            (&["checkout"], 3.0 * t),
            (&["frontend"], 2.0 * t),
            (&["payments"], t)
        ])
    );
    assert_eq!(
        query(&prometheus, "sum(traces_spanmetrics_latency_count)", &[]).await,
        expect(&[(&[], SPANS as f64)])
    );
    let payments = query(
        &prometheus,
        r#"traces_spanmetrics_calls_total{service="payments"}"#,
        &["span_name", "span_kind", "status_code"],
    )
    .await;
    // As many OK (i % 4 == 1) as ERROR (i % 4 == 0) traces.
    let f = FAILED as f64;
    assert_eq!(
        payments,
        expect(&[
            (&["charge", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"], f),
            (&["charge", "SPAN_KIND_SERVER", "STATUS_CODE_OK"], f),
            (
                &["charge", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"],
                t - 2.0 * f
            ),
        ])
    );
    // 10 ms spans: none up to 8 ms, all up to 16 ms (Tempo's default buckets).
    let buckets = query(
        &prometheus,
        r#"sum by (le) (traces_spanmetrics_latency_bucket{service="payments", le=~"0.008|0.016|\\+Inf"})"#,
        &["le"],
    )
    .await;
    assert_eq!(
        buckets,
        expect(&[(&["+Inf"], t), (&["0.008"], 0.0), (&["0.016"], t)])
    );

    let edges = ["client", "server", "connection_type"];
    assert_eq!(
        query(&prometheus, "traces_service_graph_request_total", &edges).await,
        expect(&[
            (&["checkout", "payments", ""], t),
            (&["frontend", "checkout", ""], t),
            (&["user", "frontend", "virtual_node"], t),
        ])
    );
    assert_eq!(
        query(
            &prometheus,
            "traces_service_graph_request_failed_total",
            &edges
        )
        .await,
        expect(&[(&["checkout", "payments", ""], f)])
    );
    for side in ["server", "client"] {
        let promql =
            format!("sum by (client, server) (traces_service_graph_request_{side}_seconds_count)");
        assert_eq!(
            query(&prometheus, &promql, &["client", "server"])
                .await
                .values()
                .sum::<f64>(),
            3.0 * t,
            "{promql}"
        );
    }
    assert_eq!(
        gateway
            .metric("vispyr_gateway_spanmetrics_spans_total")
            .await,
        SPANS as f64
    );
    assert_eq!(
        gateway
            .metric(r#"vispyr_gateway_exporter_dropped_samples_total{exporter="metrics"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn span_metrics_are_written_once_more_on_sigterm() {
    let prometheus = Prometheus::start().await.unwrap();
    let mut gateway = Gateway::start(&[
        format!(
            "exporters.metrics.endpoint={}",
            prometheus.remote_write_url()
        ),
        // No interval passes: only the drain writes.
        "span_metrics.interval_ms=600000".into(),
    ])
    .await;
    // Over OTLP/HTTP this time.
    for request in trace(0) {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/traces", gateway.http))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let status = gateway
        .process
        .terminate(Duration::from_secs(20))
        .expect("exits");
    assert!(status.success(), "{status}: {}", gateway.process.log_tail());
    assert_eq!(
        query(&prometheus, "sum(traces_spanmetrics_calls_total)", &[]).await,
        expect(&[(&[], 6.0)])
    );
}

const SPANMETRICS_SERIES: &str = r#"vispyr_gateway_spanmetrics_series{family="spanmetrics"}"#;
const SERVICE_GRAPH_SERIES: &str = r#"vispyr_gateway_spanmetrics_series{family="service_graph"}"#;

async fn sum_over(members: &[&Gateway], series: &str) -> f64 {
    let mut total = 0.0;
    for m in members {
        total += m.metric(series).await;
    }
    total
}

/// Sends trace `i`'s three requests (one per service) to `members` in turn
/// from `i`, so the halves of each edge reach different members; retries a
/// request another member until one acknowledges it.
async fn send_trace(clients: &mut [TraceServiceClient<tonic::transport::Channel>], i: u64) {
    for (j, request) in trace(i).into_iter().enumerate() {
        let mut attempt = 0;
        loop {
            let client = &mut clients[(i as usize + j + attempt) % clients.len()];
            match client.export(request.clone()).await {
                Ok(answer) => {
                    assert_eq!(answer.into_inner().partial_success, None);
                    break;
                }
                Err(status) => {
                    let (retry, _) = vispyr_gateway::otlp::retryable(&status);
                    assert!(retry && attempt < 100, "{status:?}");
                    attempt += 1;
                }
            }
        }
    }
}

/// The totals Prometheus shows for `traces` traces of [`trace`]: every span
/// counted once, per service, per edge; and no series ever went down.
async fn assert_exact(prometheus: &Prometheus, traces: u64) {
    let spans = (traces * 6) as f64;
    eventually(WAIT, || async {
        let got = query(prometheus, "sum(traces_spanmetrics_calls_total)", &[]).await;
        match got.values().next() == Some(&spans) {
            true => Ok(()),
            false => Err(got),
        }
    })
    .await
    .unwrap();
    let t = traces as f64;
    let by_service = query(
        prometheus,
        "sum by (service) (traces_spanmetrics_calls_total)",
        &["service"],
    )
    .await;
    assert_eq!(
        by_service,
        expect(&[
            (&["checkout"], 3.0 * t),
            (&["frontend"], 2.0 * t),
            (&["payments"], t)
        ])
    );
    let edges = ["client", "server", "connection_type"];
    // Edges complete when both halves met on the trace's owner: the last
    // ones may still be on their way.
    eventually(WAIT, || async {
        let got = query(prometheus, "traces_service_graph_request_total", &edges).await;
        let want = expect(&[
            (&["checkout", "payments", ""], t),
            (&["frontend", "checkout", ""], t),
            (&["user", "frontend", "virtual_node"], t),
        ]);
        match got == want {
            true => Ok(()),
            false => Err(got),
        }
    })
    .await
    .unwrap();
    // A second writer of a series, or a new owner starting again from zero,
    // shows as a reset: a sample lower than the one before.
    for family in [
        "traces_spanmetrics_calls_total",
        "traces_service_graph_request_total",
    ] {
        let resets = format!("sum(resets({family}[10m]))");
        assert_eq!(
            query(prometheus, &resets, &[]).await,
            expect(&[(&[], 0.0)]),
            "{resets}"
        );
    }
}

/// Each member writes exactly the series it owns (its `spanmetrics_series`
/// gauges); a series, once written, stays owned by some member (handed over
/// whole when its owner changes). So the owned counts summing to the series
/// Prometheus holds means no series has two owners, i.e. two writers.
async fn assert_one_writer_per_series(prometheus: &Prometheus, members: &[&Gateway]) {
    for (gauge, series) in [
        (SPANMETRICS_SERIES, "traces_spanmetrics_calls_total"),
        (SERVICE_GRAPH_SERIES, "traces_service_graph_request_total"),
    ] {
        let count = format!("count({series})");
        let in_prometheus = query(prometheus, &count, &[]).await;
        eventually(WAIT, || async {
            let owned = sum_over(members, gauge).await;
            match in_prometheus.values().next() == Some(&owned) {
                true => Ok(()),
                false => Err((owned, in_prometheus.clone())),
            }
        })
        .await
        .unwrap();
    }
}

// Multi-threaded: the clients keep sending while this thread waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_writes_each_series_once_and_hands_series_over_on_sigterm() {
    const FIRST: u64 = 24;
    /// Traces sent before the stop starts, and again once it is over.
    const AROUND: u64 = 12;
    let prometheus = Prometheus::start().await.unwrap();
    let mut members = common::ring(
        3,
        &[
            format!(
                "exporters.metrics.endpoint={}",
                prometheus.remote_write_url()
            ),
            "exporters.metrics.batch_timeout_ms=20".into(),
            "span_metrics.interval_ms=300".into(),
            "drain_timeout_ms=10000".into(),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for m in &members {
        clients.push(TraceServiceClient::connect(m.grpc.clone()).await.unwrap());
    }
    for i in 0..FIRST {
        send_trace(&mut clients, i).await;
    }
    assert_exact(&prometheus, FIRST).await;
    let all: Vec<&Gateway> = members.iter().collect();
    assert_one_writer_per_series(&prometheus, &all).await;
    // Each span was observed once, by the owner of its trace.
    assert_eq!(
        sum_over(&all, "vispyr_gateway_spanmetrics_spans_total").await,
        (FIRST * 6) as f64
    );
    // The member that owns the most series is stopped: it has some to hand
    // over, whatever the hashing of this run's addresses.
    let mut owned = Vec::new();
    for m in &members {
        owned.push(m.metric(SPANMETRICS_SERIES).await);
    }
    let stop = (0..owned.len())
        .max_by(|a, b| owned[*a].total_cmp(&owned[*b]))
        .unwrap();
    assert!(owned[stop] > 0.0, "{owned:?}");
    eprintln!("span metrics series owned by each member: {owned:?}");
    let mut leaving = members.remove(stop);
    clients.remove(stop);

    // The survivors keep taking traces while the other member drains.
    let mut survivors = clients;
    let sent = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(AtomicU64::new(u64::MAX));
    let sender = tokio::spawn({
        let (sent, stopped) = (sent.clone(), stopped.clone());
        async move {
            let mut i = FIRST;
            while sent.load(Ordering::Relaxed)
                < stopped.load(Ordering::Relaxed).saturating_add(AROUND)
            {
                send_trace(&mut survivors, i).await;
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }
    });
    eventually(WAIT, || async {
        match sent.load(Ordering::Relaxed) {
            n if n >= AROUND => Ok(()),
            n => Err(n),
        }
    })
    .await
    .unwrap();
    let before_stop = sent.load(Ordering::Relaxed);
    let status = leaving
        .process
        .terminate(Duration::from_secs(20))
        .expect("exits within the drain timeout");
    assert!(status.success(), "{status}: {}", leaving.process.log_tail());
    stopped.store(sent.load(Ordering::Relaxed), Ordering::Relaxed);
    sender.await.unwrap();
    let second = sent.load(Ordering::Relaxed);
    eprintln!(
        "traces: {FIRST} before the stop, {second} after it began, {} of them while the member drained",
        second - before_stop - AROUND
    );
    for m in &members {
        common::wait_members(m, 2).await;
    }

    assert_exact(&prometheus, FIRST + second).await;
    let survivors: Vec<&Gateway> = members.iter().collect();
    assert_one_writer_per_series(&prometheus, &survivors).await;
    // Several more intervals: the totals stay exact.
    let written = r#"vispyr_gateway_exporter_sent_samples_total{exporter="metrics"}"#;
    let before = sum_over(&survivors, written).await;
    eventually(WAIT, || async {
        match sum_over(&survivors, written).await {
            now if now >= before * 2.0 => Ok(()),
            now => Err(now),
        }
    })
    .await
    .unwrap();
    assert_exact(&prometheus, FIRST + second).await;
}
