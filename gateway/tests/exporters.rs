//! The metrics and profiles exporters of the gateway binary against real
//! backends: OTLP metrics converted to Prometheus names and queryable there,
//! a remote write target that is down and comes back, OTLP profiles
//! queryable in Pyroscope by service name.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::profiles::v1development::{
    Function, Line, Location, Mapping, Profile, ProfilesDictionary, ResourceProfiles, Sample,
    ScopeProfiles, Stack, ValueType,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use vispyr_e2e::process::free_port;
use vispyr_e2e::{Prometheus, Pyroscope, eventually};

mod common;
use common::{Gateway, WAIT, kv};

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource {
        attributes,
        ..Default::default()
    })
}

fn metrics_request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(vec![
                kv("service.name", service),
                kv("service.instance.id", &format!("{service}-7")),
                kv("k8s.pod.name", &format!("{service}-7")),
            ]),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "vispyr-test".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gauge(name: &str, unit: &str, value: f64, attributes: Vec<KeyValue>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                attributes,
                time_unix_nano: now_nanos(),
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

async fn value(prometheus: &Prometheus, promql: &str) -> Result<f64, String> {
    let result = prometheus.query(promql).await.map_err(|e| e.to_string())?;
    match result.as_slice() {
        [(_, v)] => Ok(*v),
        other => Err(format!("{promql}: {other:?}")),
    }
}

#[tokio::test]
async fn otlp_metrics_are_queryable_in_prometheus_under_their_converted_names() {
    let prometheus = Prometheus::start().await.unwrap();
    let gateway = Gateway::start(&[
        format!(
            "exporters.metrics.endpoint={}",
            prometheus.remote_write_url()
        ),
        "exporters.metrics.batch_timeout_ms=20".into(),
    ])
    .await;
    let t = now_nanos();
    let request = metrics_request(
        "cart",
        vec![
            gauge("queue.depth", "{item}", 5.0, vec![kv("queue", "orders")]),
            Metric {
                name: "http.server.requests".into(),
                unit: "{request}".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![NumberDataPoint {
                        attributes: vec![kv("http.route", "/pay")],
                        time_unix_nano: t,
                        value: Some(number_data_point::Value::AsInt(42)),
                        ..Default::default()
                    }],
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "http.server.request.duration".into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        time_unix_nano: t,
                        count: 6,
                        sum: Some(1.75),
                        bucket_counts: vec![3, 2, 1],
                        explicit_bounds: vec![0.1, 0.5],
                        ..Default::default()
                    }],
                    aggregation_temporality: CUMULATIVE,
                })),
                ..Default::default()
            },
            Metric {
                name: "http.client.duration".into(),
                data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![Default::default()],
                    aggregation_temporality: CUMULATIVE,
                })),
                ..Default::default()
            },
        ],
    );
    let mut client = MetricsServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    let answer = client.export(request).await.unwrap().into_inner();
    let partial = answer
        .partial_success
        .expect("the exponential histogram is rejected");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial.error_message.contains("exponential histograms"),
        "{}",
        partial.error_message
    );

    let common = r#"job="cart",instance="cart-7",otel_scope_name="vispyr-test""#;
    for (promql, want) in [
        (format!(r#"queue_depth{{{common},queue="orders"}}"#), 5.0),
        (
            format!(r#"http_server_requests_total{{{common},http_route="/pay"}}"#),
            42.0,
        ),
        (
            format!(r#"http_server_request_duration_seconds_bucket{{{common},le="0.1"}}"#),
            3.0,
        ),
        (
            format!(r#"http_server_request_duration_seconds_bucket{{{common},le="0.5"}}"#),
            5.0,
        ),
        (
            format!(r#"http_server_request_duration_seconds_bucket{{{common},le="+Inf"}}"#),
            6.0,
        ),
        (
            format!(r#"http_server_request_duration_seconds_count{{{common}}}"#),
            6.0,
        ),
        (
            format!(r#"http_server_request_duration_seconds_sum{{{common}}}"#),
            1.75,
        ),
        (
            r#"target_info{job="cart",instance="cart-7",k8s_pod_name="cart-7"}"#.into(),
            1.0,
        ),
    ] {
        let got = eventually(WAIT, || value(&prometheus, &promql)).await;
        assert_eq!(got, Ok(want), "{promql}");
    }
    assert_eq!(
        gateway
            .metric(r#"vispyr_gateway_metrics_converter_rejected_points_total{reason="exponential_histogram"}"#)
            .await,
        1.0
    );

    // A point 3 hours old is out of Prometheus' bounds: HTTP 400, permanent,
    // so dropped without retry.
    let mut old = gauge("old.reading", "", 1.0, vec![]);
    if let Some(Data::Gauge(g)) = &mut old.data {
        g.data_points[0].time_unix_nano = now_nanos() - 3 * 3600 * 1_000_000_000;
    }
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(vec![kv("service.name", "cart")]),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![old],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    client.export(request).await.unwrap();
    let dropped = r#"vispyr_gateway_exporter_dropped_samples_total{exporter="metrics"}"#;
    eventually(WAIT, || async {
        let n = gateway.metric(dropped).await;
        if n == 1.0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    let retried = r#"vispyr_gateway_exporter_retried_samples_total{exporter="metrics"}"#;
    assert_eq!(gateway.metric(retried).await, 0.0);
}

#[tokio::test]
async fn metrics_queued_while_prometheus_is_down_arrive_when_it_is_back() {
    let port = free_port();
    let mut gateway = Gateway::start(&[
        format!("exporters.metrics.endpoint=http://127.0.0.1:{port}/api/v1/write"),
        "exporters.metrics.batch_timeout_ms=20".into(),
        "exporters.metrics.retry_initial_backoff_ms=50".into(),
        "exporters.metrics.retry_max_backoff_ms=300".into(),
        "span_metrics.enabled=false".into(),
    ])
    .await;
    let request = metrics_request("door", vec![gauge("door.open", "", 1.0, vec![])]);
    let mut client = MetricsServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    let answer = client.export(request).await.unwrap().into_inner();
    assert_eq!(answer.partial_success, None);

    let retried = r#"vispyr_gateway_exporter_retried_samples_total{exporter="metrics"}"#;
    eventually(WAIT, || async {
        let n = gateway.metric(retried).await;
        if n >= 2.0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    gateway.process.check_running().unwrap();

    let prometheus = Prometheus::start_on(port).await.unwrap();
    let got = eventually(WAIT, || {
        value(&prometheus, r#"door_open{job="door",instance="door-7"}"#)
    })
    .await;
    assert_eq!(got, Ok(1.0));
    // The gauge and its target_info, each sent once, nothing dropped.
    let sent = r#"vispyr_gateway_exporter_sent_samples_total{exporter="metrics"}"#;
    assert_eq!(gateway.metric(sent).await, 2.0);
    let dropped = r#"vispyr_gateway_exporter_dropped_samples_total{exporter="metrics"}"#;
    assert_eq!(gateway.metric(dropped).await, 0.0);
}

/// A CPU profile of `service`: 5 samples of `work` called from `main`, at
/// 100 Hz, with every table of the dictionary an exporter fills.
fn profile(service: &str) -> ExportProfilesServiceRequest {
    let strings = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        "app.js",
    ];
    let dictionary = ProfilesDictionary {
        string_table: strings.iter().map(|s| s.to_string()).collect(),
        // Index 0 of every table is the zero value, as the format requires.
        mapping_table: vec![
            Mapping::default(),
            Mapping {
                memory_start: 0x1000,
                memory_limit: 0x9000,
                filename_strindex: 7,
                ..Default::default()
            },
        ],
        function_table: vec![
            Function::default(),
            Function {
                name_strindex: 5,
                filename_strindex: 7,
                ..Default::default()
            },
            Function {
                name_strindex: 6,
                filename_strindex: 7,
                ..Default::default()
            },
        ],
        location_table: vec![
            Location::default(),
            Location {
                mapping_index: 1,
                address: 0x1100,
                lines: vec![Line {
                    function_index: 1,
                    line: 10,
                    ..Default::default()
                }],
                ..Default::default()
            },
            Location {
                mapping_index: 1,
                address: 0x1200,
                lines: vec![Line {
                    function_index: 2,
                    line: 20,
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        // Leaf first: work, called by main.
        stack_table: vec![
            Stack::default(),
            Stack {
                location_indices: vec![2, 1],
            },
        ],
        ..Default::default()
    };
    ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            resource: resource(vec![kv("service.name", service)]),
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![Profile {
                    sample_type: Some(ValueType {
                        type_strindex: 1,
                        unit_strindex: 2,
                    }),
                    period_type: Some(ValueType {
                        type_strindex: 3,
                        unit_strindex: 4,
                    }),
                    period: 10_000_000,
                    time_unix_nano: now_nanos() - 1_000_000_000,
                    duration_nano: 1_000_000_000,
                    samples: vec![Sample {
                        stack_index: 1,
                        values: vec![5],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(dictionary),
    }
}

#[tokio::test]
async fn profiles_are_queryable_in_pyroscope_by_service_name() {
    let pyroscope = Pyroscope::start().await.unwrap();
    let gateway =
        Gateway::start(&[format!("exporters.profiles.endpoint={}", pyroscope.url())]).await;
    // Over OTLP/HTTP, as the node-agent's exporter may send them.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1development/profiles", gateway.http))
        .header("content-type", "application/x-protobuf")
        .body(profile("profiled-cart").encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let sent = r#"vispyr_gateway_exporter_sent_profiles_total{exporter="profiles"}"#;
    eventually(WAIT, || async {
        let n = gateway.metric(sent).await;
        if n == 1.0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    let now = SystemTime::now();
    let flamegraph = eventually(WAIT, || async {
        let fg = pyroscope
            .merged_profile(
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
                r#"{service_name="profiled-cart"}"#,
                now - Duration::from_secs(3600),
                now + Duration::from_secs(60),
            )
            .await
            .map_err(|e| e.to_string())?;
        if fg.total > 0 {
            Ok(fg)
        } else {
            Err(format!("{fg:?}"))
        }
    })
    .await
    .unwrap();
    // 5 samples at 10 ms each, all in work under main.
    assert_eq!(flamegraph.total, 50_000_000, "{flamegraph:?}");
    assert_eq!(flamegraph.total_of("work"), 50_000_000);
    assert_eq!(flamegraph.total_of("main"), 50_000_000);
    let services = pyroscope.label_values("service_name").await.unwrap();
    assert!(
        services.contains(&"profiled-cart".to_string()),
        "{services:?}"
    );
}
