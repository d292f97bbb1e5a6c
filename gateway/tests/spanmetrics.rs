//! Span metrics and service graph from the gateway binary, read back from a
//! real Prometheus (remote write receiver): exact counts, Tempo's names and
//! label values, edges between services with their request and failure counts.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
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
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(name.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
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
