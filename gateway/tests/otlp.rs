//! The gateway binary between OTLP clients and a real trace store (Tempo
//! from the harness): every transport delivers whole traces, bad requests get
//! the OTLP status codes with a reason, a dead backend turns into retryable
//! errors once the queue is full, and SIGTERM flushes the queue.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::{Gateway, TestTrace, WAIT};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use vispyr_e2e::{Tempo, eventually};
use vispyr_gateway::otlp::RpcStatus;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn post(
    gateway: &Gateway,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/traces", gateway.http))
        .header("content-type", content_type);
    if gzipped {
        req = req.header("content-encoding", "gzip");
    }
    req.body(body).send().await.unwrap()
}

#[tokio::test]
async fn traces_arrive_whole_over_grpc_and_http_protobuf_json_gzip() {
    let store = Tempo::start().await.unwrap();
    let gateway = Gateway::start(&[format!(
        "exporters.traces.endpoint={}",
        store.otlp_grpc_endpoint()
    )])
    .await;

    let over_grpc = TestTrace::new("svc-grpc", 3);
    let over_grpc_gzip = TestTrace::new("svc-grpc-gzip", 2);
    let mut client = TraceServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    let response = client.export(over_grpc.proto()).await.unwrap().into_inner();
    assert_eq!(response.partial_success, None);
    let mut gzip_client = client
        .clone()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    gzip_client.export(over_grpc_gzip.proto()).await.unwrap();

    let protobuf = TestTrace::new("svc-http-protobuf", 2);
    let resp = post(
        &gateway,
        "application/x-protobuf",
        false,
        protobuf.proto().encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let body =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
            resp.bytes().await.unwrap(),
        )
        .unwrap();
    assert_eq!(body.partial_success, None);

    let json = TestTrace::new("svc-http-json", 2);
    let resp = post(
        &gateway,
        "application/json",
        false,
        json.json().to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");

    let gz_proto = TestTrace::new("svc-http-gzip-protobuf", 1);
    let resp = post(
        &gateway,
        "application/x-protobuf",
        true,
        gzip(&gz_proto.proto().encode_to_vec()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let gz_json = TestTrace::new("svc-http-gzip-json", 1);
    let resp = post(
        &gateway,
        "application/json; charset=utf-8",
        true,
        gzip(gz_json.json().to_string().as_bytes()),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // A request with one invalid span: the rest is taken, the client is told.
    let partial = TestTrace::new("svc-partial", 1);
    let mut body = partial.json();
    body["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["spanId"] = "00ff".into();
    let resp = post(
        &gateway,
        "application/json",
        false,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], 1, "{answer}");
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("span_id has 2 bytes, must have 8"),
        "{message}"
    );

    for trace in [
        &over_grpc,
        &over_grpc_gzip,
        &protobuf,
        &json,
        &gz_proto,
        &gz_json,
    ] {
        trace.assert_stored(&store).await;
    }
    let partial_root = TestTrace {
        spans: partial.spans[..1].to_vec(),
        ..partial
    };
    partial_root.assert_stored(&store).await;

    // 4 + 3 + 3 + 3 + 2 + 2 + 1 spans exported, 1 rejected.
    let sent = r#"vispyr_gateway_exporter_sent_spans_total{exporter="traces"}"#;
    eventually(WAIT, || async {
        let n = gateway.metric(sent).await;
        if n == 18.0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    let metrics = gateway.metrics().await;
    for line in [
        r#"vispyr_gateway_receiver_accepted_items_total{signal="traces",transport="grpc"} 7"#,
        r#"vispyr_gateway_receiver_accepted_items_total{signal="traces",transport="http"} 11"#,
        r#"vispyr_gateway_receiver_rejected_items_total{signal="traces",transport="http"} 1"#,
        r#"vispyr_gateway_exporter_queue_spans{exporter="traces"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
}

fn status_of(body: &[u8]) -> RpcStatus {
    RpcStatus::decode(body).expect("a google.rpc.Status body")
}

#[tokio::test]
async fn bad_http_requests_get_otlp_errors_with_reasons() {
    let gateway = Gateway::start(&["max_request_bytes=4096".into()]).await;

    let resp = post(
        &gateway,
        "application/x-protobuf",
        false,
        b"\x0a\xff\xff\xff".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let status = status_of(&resp.bytes().await.unwrap());
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(
        status.message.contains("invalid protobuf"),
        "{}",
        status.message
    );

    let resp = post(
        &gateway,
        "application/json",
        false,
        br#"{"resourceSpans": 3}"#.to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"),
        "{body}"
    );

    let resp = post(
        &gateway,
        "application/x-protobuf",
        true,
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(
        status_of(&resp.bytes().await.unwrap())
            .message
            .contains("invalid gzip")
    );

    let resp = post(&gateway, "application/x-protobuf", false, vec![0; 5000]).await;
    assert_eq!(resp.status(), 413);
    let message = status_of(&resp.bytes().await.unwrap()).message;
    assert!(
        message.contains("over the limit of 4096 bytes"),
        "{message}"
    );

    // Small on the wire, too big once decompressed.
    let resp = post(
        &gateway,
        "application/x-protobuf",
        true,
        gzip(&[0; 100_000]),
    )
    .await;
    assert_eq!(resp.status(), 413);

    let resp = post(&gateway, "text/plain", false, b"hello".to_vec()).await;
    assert_eq!(resp.status(), 415);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/x-protobuf"),
        "{body}"
    );

    // Without an exporter, spans are accepted, counted and dropped, never claimed sent.
    let resp = post(
        &gateway,
        "application/x-protobuf",
        false,
        TestTrace::new("s", 1).proto().encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        gateway
            .metric(r#"vispyr_gateway_not_exported_items_total{signal="traces"}"#)
            .await,
        2.0
    );
    let refused = gateway.metrics().await;
    for reason in ["malformed", "too_large", "unsupported_media_type"] {
        assert!(
            refused.contains(&format!(
                r#"vispyr_gateway_receiver_refused_requests_total{{signal="traces",transport="http",reason="{reason}"}}"#
            )),
            "{reason}: {refused}"
        );
    }
}

/// Sends whatever bytes it is given as the request message.
#[derive(Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

#[tokio::test]
async fn bad_grpc_requests_get_invalid_argument_and_resource_exhausted() {
    let gateway = Gateway::start(&["max_request_bytes=4096".into()]).await;
    let channel = tonic::transport::Endpoint::from_shared(gateway.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let err = raw
        .unary(
            tonic::Request::new(Bytes::from_static(b"\x0a\xff\xff\xff")),
            http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("invalid protobuf"), "{err:?}");

    let mut client = TraceServiceClient::new(channel);
    let mut big = TestTrace::new("big", 0).proto();
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(5000);
    let err = client.export(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("4096"), "{err:?}");
    assert!(
        !vispyr_gateway::otlp::retryable(&err).0,
        "too large is permanent"
    );
}

#[tokio::test]
async fn dead_trace_store_fills_the_queue_and_clients_are_told_to_retry() {
    let mut store = Tempo::start().await.unwrap();
    let gateway = Gateway::start(&[
        format!("exporters.traces.endpoint={}", store.otlp_grpc_endpoint()),
        "exporters.traces.queue_spans=9".into(),
        "exporters.traces.batch_timeout_ms=10".into(),
        "exporters.traces.retry_initial_backoff_ms=50".into(),
        "exporters.traces.retry_max_backoff_ms=200".into(),
        "drain_timeout_ms=2000".into(),
    ])
    .await;
    store.process().kill();

    // 3 spans per request: at most 3 requests fit, then the queue is full.
    let mut accepted = 0;
    let refused = loop {
        let trace = TestTrace::new("svc-backpressure", 2);
        let resp = post(
            &gateway,
            "application/x-protobuf",
            false,
            trace.proto().encode_to_vec(),
        )
        .await;
        if resp.status() != 200 || accepted == 10 {
            break resp;
        }
        accepted += 1;
    };
    assert_eq!(accepted, 3);
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let message = status_of(&refused.bytes().await.unwrap()).message;
    assert!(message.contains("queue is full"), "{message}");

    let mut client = TraceServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    let err = client
        .export(TestTrace::new("svc-backpressure", 0).proto())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let (retry, delay) = vispyr_gateway::otlp::retryable(&err);
    assert!(retry, "{err:?}");
    assert_eq!(delay, Some(Duration::from_secs(1)));

    let retried = r#"vispyr_gateway_exporter_retried_spans_total{exporter="traces"}"#;
    eventually(WAIT, || async {
        let n = gateway.metric(retried).await;
        if n > 0.0 { Ok(()) } else { Err(n) }
    })
    .await
    .unwrap();
    assert_eq!(
        gateway
            .metric(r#"vispyr_gateway_exporter_queue_spans{exporter="traces"}"#)
            .await,
        9.0
    );

    // SIGTERM with the backend still gone: the drain gives up after its
    // timeout, counts what it dropped and exits cleanly.
    let mut gateway = gateway;
    let status = gateway
        .process
        .terminate(Duration::from_secs(20))
        .expect("exits");
    assert!(status.success(), "{status}: {}", gateway.process.log_tail());
    assert!(
        gateway.process.log_tail().contains("dropping"),
        "{}",
        gateway.process.log_tail()
    );
}

#[tokio::test]
async fn sigterm_flushes_queued_spans_before_exiting() {
    let store = Tempo::start().await.unwrap();
    let mut gateway = Gateway::start(&[
        format!("exporters.traces.endpoint={}", store.otlp_grpc_endpoint()),
        // Batches would wait a minute: only the drain sends them in time.
        "exporters.traces.batch_timeout_ms=60000".into(),
    ])
    .await;
    let trace = TestTrace::new("svc-drain", 2);
    let resp = post(
        &gateway,
        "application/x-protobuf",
        false,
        trace.proto().encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        gateway
            .metric(r#"vispyr_gateway_exporter_queue_spans{exporter="traces"}"#)
            .await,
        3.0
    );
    let status = gateway
        .process
        .terminate(Duration::from_secs(20))
        .expect("exits");
    assert!(status.success(), "{status}: {}", gateway.process.log_tail());
    trace.assert_stored(&store).await;
}

#[tokio::test]
async fn metrics_logs_and_profiles_are_accepted_and_counted_as_not_exported() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
    use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    };
    use opentelemetry_proto::tonic::profiles::v1development::{
        Profile, ResourceProfiles, ScopeProfiles,
    };

    let gateway = Gateway::start(&[]).await;
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "g".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default(); 2],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = MetricsServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    let answer = client.export(metrics.clone()).await.unwrap().into_inner();
    assert_eq!(answer.partial_success, None);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/metrics", gateway.http))
        .header("content-type", "application/x-protobuf")
        .body(metrics.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default(); 3],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/logs", gateway.http))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&logs).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let profiles = ExportProfilesServiceRequest {
        resource_profiles: vec![ResourceProfiles {
            scope_profiles: vec![ScopeProfiles {
                profiles: vec![Profile::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: None,
    };
    let mut client = ProfilesServiceClient::connect(gateway.grpc.clone())
        .await
        .unwrap();
    client.export(profiles.clone()).await.unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1development/profiles", gateway.http))
        .header("content-type", "application/x-protobuf")
        .body(profiles.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let text = gateway.metrics().await;
    for line in [
        r#"vispyr_gateway_receiver_accepted_items_total{signal="metrics",transport="grpc"} 2"#,
        r#"vispyr_gateway_receiver_accepted_items_total{signal="metrics",transport="http"} 2"#,
        r#"vispyr_gateway_receiver_accepted_items_total{signal="logs",transport="http"} 3"#,
        r#"vispyr_gateway_receiver_accepted_items_total{signal="profiles",transport="grpc"} 1"#,
        r#"vispyr_gateway_not_exported_items_total{signal="metrics"} 4"#,
        r#"vispyr_gateway_not_exported_items_total{signal="logs"} 3"#,
        r#"vispyr_gateway_not_exported_items_total{signal="profiles"} 2"#,
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
}
