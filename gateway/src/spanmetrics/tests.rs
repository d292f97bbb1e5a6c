use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use super::*;
use crate::queue::{ExporterMetrics, Queue};

/// As the pipeline hands spans over: encoded, read in place.
fn observe(generator: &Generator, request: &ExportTraceServiceRequest) {
    let encoded = request.encode_to_vec();
    generator.observe(&crate::wire::resources(&encoded).unwrap());
}

fn config() -> Config {
    Config {
        interval_ms: 10,
        latency_buckets: vec![0.1, 1.0],
        ..Config::default()
    }
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

struct S {
    service: &'static str,
    id: u8,
    parent: Option<u8>,
    kind: SpanKind,
    error: bool,
    ms: u64,
    attrs: Vec<KeyValue>,
}

fn span(service: &'static str, id: u8, parent: Option<u8>, kind: SpanKind) -> S {
    S {
        service,
        id,
        parent,
        kind,
        error: false,
        ms: 50,
        attrs: Vec::new(),
    }
}

fn request(trace: u8, spans: Vec<S>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: spans
            .into_iter()
            .map(|s| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s.service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![trace; 16],
                        span_id: vec![s.id; 8],
                        parent_span_id: s.parent.map(|p| vec![p; 8]).unwrap_or_default(),
                        name: format!("op-{}", s.service),
                        kind: s.kind as i32,
                        start_time_unix_nano: 1_000_000_000,
                        end_time_unix_nano: 1_000_000_000 + s.ms * 1_000_000,
                        status: s.error.then(|| Status {
                            code: StatusCode::Error as i32,
                            ..Default::default()
                        }),
                        attributes: s.attrs,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

type Written = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// The latest value of every series written to `queue`.
async fn written(queue: &SeriesQueue) -> Written {
    let mut out = BTreeMap::new();
    while queue.held() > 0 {
        let (n, batch, _) = queue.take(u64::MAX, Duration::ZERO).await.unwrap();
        for s in batch.into_iter().flatten() {
            let mut labels: BTreeMap<_, _> =
                s.labels.into_iter().map(|l| (l.name, l.value)).collect();
            let name = labels.remove("__name__").unwrap();
            out.insert((name, labels), s.samples.last().unwrap().value);
        }
        queue.release(n);
    }
    out
}

fn value(w: &Written, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    w.get(&(name.to_string(), labels)).copied()
}

#[tokio::test]
async fn spans_become_tempo_span_metrics_and_service_graph_edges() {
    let queue = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let metrics = GeneratorMetrics::default();
    let generator = Generator::new(
        &config(),
        Arc::new(LocalOnly),
        Some(queue.clone()),
        metrics.clone(),
    )
    .unwrap();
    // web (root server) -> web client -> api server (failed) -> api client to a database.
    let mut failed = span("api", 3, Some(2), SpanKind::Server);
    failed.error = true;
    let mut db = span("api", 4, Some(3), SpanKind::Client);
    db.attrs = vec![kv("db.system", "postgresql"), kv("db.name", "orders")];
    observe(
        &generator,
        &request(
            1,
            vec![
                span("web", 1, None, SpanKind::Server),
                span("web", 2, Some(1), SpanKind::Client),
            ],
        ),
    );
    // The server half arrives in a later request: it still pairs.
    observe(&generator, &request(1, vec![failed, db]));
    // A producer and its consumer; and a client whose server never reports.
    let mut lonely = span("web", 7, None, SpanKind::Client);
    lonely.attrs = vec![kv("peer.service", "stripe")];
    observe(
        &generator,
        &request(
            2,
            vec![
                span("orders", 5, None, SpanKind::Producer),
                span("mailer", 6, Some(5), SpanKind::Consumer),
                span("web", 8, None, SpanKind::Internal),
                lonely,
            ],
        ),
    );
    generator.flush(Instant::now()).await;
    let w = written(&queue).await;

    let calls = |service, kind, status| {
        value(
            &w,
            "traces_spanmetrics_calls_total",
            &[
                ("service", service),
                ("span_name", &format!("op-{service}")),
                ("span_kind", kind),
                ("status_code", status),
            ],
        )
    };
    assert_eq!(
        calls("web", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"),
        Some(1.0)
    );
    assert_eq!(
        calls("web", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"),
        Some(2.0)
    );
    assert_eq!(
        calls("api", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"),
        Some(1.0)
    );
    assert_eq!(
        calls("web", "SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET"),
        Some(1.0)
    );
    let total: f64 = w
        .iter()
        .filter(|((n, _), _)| n == "traces_spanmetrics_calls_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 8.0);
    let count: f64 = w
        .iter()
        .filter(|((n, _), _)| n == "traces_spanmetrics_latency_count")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(count, 8.0);

    let edge = |client, server, ctype: &str| {
        let mut labels = vec![("client", client), ("server", server)];
        if !ctype.is_empty() {
            labels.push(("connection_type", ctype));
        }
        (
            value(&w, "traces_service_graph_request_total", &labels),
            value(&w, "traces_service_graph_request_failed_total", &labels),
        )
    };
    assert_eq!(edge("user", "web", "virtual_node"), (Some(1.0), None));
    assert_eq!(edge("web", "api", ""), (Some(1.0), Some(1.0)));
    assert_eq!(edge("api", "orders", "database"), (Some(1.0), None));
    assert_eq!(
        edge("orders", "mailer", "messaging_system"),
        (Some(1.0), None)
    );
    assert_eq!(
        edge("web", "stripe", "virtual_node"),
        (None, None),
        "not yet expired"
    );
    let mut server_seconds = vec![("client", "web"), ("server", "api"), ("le", "0.1")];
    assert_eq!(
        value(
            &w,
            "traces_service_graph_request_server_seconds_bucket",
            &server_seconds
        ),
        Some(1.0)
    );
    server_seconds.pop();
    assert_eq!(
        value(
            &w,
            "traces_service_graph_request_client_seconds_sum",
            &server_seconds
        ),
        Some(0.05)
    );

    // After the wait, the lonely client expires into a virtual edge.
    let later = Instant::now() + Duration::from_secs(11);
    generator.flush(later).await;
    let w = written(&queue).await;
    assert_eq!(
        value(
            &w,
            "traces_service_graph_request_total",
            &[
                ("client", "web"),
                ("server", "stripe"),
                ("connection_type", "virtual_node")
            ]
        ),
        Some(1.0)
    );
    // Cumulative: the first edge is still written, with its total.
    assert_eq!(
        value(
            &w,
            "traces_service_graph_request_total",
            &[("client", "web"), ("server", "api")]
        ),
        Some(1.0)
    );
    assert_eq!(metrics.expired_edges.get(), 1);
    assert_eq!(metrics.spans.get(), 8);
}

/// Stands in for the ring between two generators: every series belongs to `b`.
struct ToB(Arc<Generator>);

impl DeltaRouter for ToB {
    fn owner(&self, _series_key: &[u8]) -> Owner {
        Owner::Remote("b".into())
    }

    fn send(&self, member: &str, batch: Bytes) -> SendFuture {
        assert_eq!(member, "b");
        let result = self.0.receive(&batch).map(|_| ()).map_err(BoxError::from);
        Box::pin(async move { result })
    }
}

#[tokio::test]
async fn only_the_owner_writes_a_series_with_every_member_counts() {
    let queue_a = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let queue_b = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let b = Arc::new(
        Generator::new(
            &config(),
            Arc::new(LocalOnly),
            Some(queue_b.clone()),
            Default::default(),
        )
        .unwrap(),
    );
    let a = Generator::new(
        &config(),
        Arc::new(ToB(b.clone())),
        Some(queue_a.clone()),
        Default::default(),
    )
    .unwrap();
    observe(
        &a,
        &request(1, vec![span("web", 1, None, SpanKind::Server)]),
    );
    observe(
        &b,
        &request(2, vec![span("web", 1, None, SpanKind::Server)]),
    );
    a.flush(Instant::now()).await;
    b.flush(Instant::now()).await;
    assert!(
        written(&queue_a).await.is_empty(),
        "a owns nothing, writes nothing"
    );
    let w = written(&queue_b).await;
    let labels = [
        ("service", "web"),
        ("span_name", "op-web"),
        ("span_kind", "SPAN_KIND_SERVER"),
        ("status_code", "STATUS_CODE_UNSET"),
    ];
    assert_eq!(
        value(&w, "traces_spanmetrics_calls_total", &labels),
        Some(2.0)
    );
    assert_eq!(
        value(
            &w,
            "traces_service_graph_request_total",
            &[
                ("client", "user"),
                ("server", "web"),
                ("connection_type", "virtual_node")
            ]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn series_beyond_max_series_are_counted_into_the_overflow_series() {
    let queue = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let metrics = GeneratorMetrics::default();
    let config = Config {
        max_series: 2,
        ..config()
    };
    let generator = Generator::new(
        &config,
        Arc::new(LocalOnly),
        Some(queue.clone()),
        metrics.clone(),
    )
    .unwrap();
    let services = ["a", "b", "c", "d", "e"];
    for (i, service) in services.into_iter().enumerate() {
        observe(
            &generator,
            &request(
                i as u8 + 1,
                vec![span(service, 1, None, SpanKind::Internal)],
            ),
        );
    }
    generator.flush(Instant::now()).await;
    let w = written(&queue).await;
    let calls: Vec<_> = w
        .iter()
        .filter(|((n, _), _)| n == "traces_spanmetrics_calls_total")
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        value(
            &w,
            "traces_spanmetrics_calls_total",
            &[("metric_overflow", "true")]
        ),
        Some(3.0)
    );
    let overflowed = metrics
        .overflow
        .get_or_create(&OverflowLabels {
            family: "spanmetrics",
            stage: "delta",
        })
        .get();
    assert_eq!(overflowed, 3);
}

#[test]
fn bad_buckets_are_refused_by_key() {
    let config = Config {
        latency_buckets: vec![1.0, 0.5],
        ..config()
    };
    let err = Generator::new(&config, Arc::new(LocalOnly), None, Default::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("span_metrics.latency_buckets"),
        "{err}"
    );
}

#[test]
fn a_delta_batch_that_does_not_decode_is_refused_as_malformed() {
    let generator =
        Generator::new(&config(), Arc::new(LocalOnly), None, Default::default()).unwrap();
    let handler: &dyn DeltasHandler = &generator;
    let refusal = handler
        .deltas(Bytes::from_static(b"\xff\xff\xff"))
        .unwrap_err();
    assert!(
        matches!(&refusal, Refusal::Malformed(m) if m.starts_with("span metrics deltas: ")),
        "{refusal:?}"
    );
    // The sender gets INVALID_ARGUMENT: it keeps the deltas, and they are
    // not applied here.
    assert_eq!(refusal.to_grpc().code(), tonic::Code::InvalidArgument);
    let refused = OutcomeLabels { outcome: "refused" };
    assert_eq!(
        generator
            .metrics
            .delta_batches
            .get_or_create(&refused)
            .get(),
        1
    );
    handler
        .deltas(delta::encode(&[], false))
        .expect("an empty batch decodes");
}

/// Owner of every series: `a` until `moved`, then `b`.
struct Moving {
    b: Arc<Generator>,
    moved: std::sync::atomic::AtomicBool,
}

impl DeltaRouter for Moving {
    fn owner(&self, _series_key: &[u8]) -> Owner {
        if self.moved.load(std::sync::atomic::Ordering::SeqCst) {
            Owner::Remote("b".into())
        } else {
            Owner::Local
        }
    }

    fn send(&self, _member: &str, batch: Bytes) -> SendFuture {
        let result = self.b.receive(&batch).map(|_| ()).map_err(BoxError::from);
        Box::pin(async move { result })
    }
}

#[tokio::test]
async fn a_series_whose_owner_changes_is_handed_over_whole() {
    let queue_a = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let queue_b = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let b = Arc::new(
        Generator::new(
            &config(),
            Arc::new(LocalOnly),
            Some(queue_b.clone()),
            Default::default(),
        )
        .unwrap(),
    );
    let router = Arc::new(Moving {
        b: b.clone(),
        moved: Default::default(),
    });
    let a = Generator::new(
        &config(),
        router.clone(),
        Some(queue_a.clone()),
        Default::default(),
    )
    .unwrap();
    let calls = |w: &Written| {
        value(
            w,
            "traces_spanmetrics_calls_total",
            &[
                ("service", "web"),
                ("span_name", "op-web"),
                ("span_kind", "SPAN_KIND_INTERNAL"),
                ("status_code", "STATUS_CODE_UNSET"),
            ],
        )
    };
    for trace in 1..=3 {
        observe(
            &a,
            &request(trace, vec![span("web", 1, None, SpanKind::Internal)]),
        );
    }
    a.flush(Instant::now()).await;
    assert_eq!(calls(&written(&queue_a).await), Some(3.0));

    router
        .moved
        .store(true, std::sync::atomic::Ordering::SeqCst);
    observe(
        &a,
        &request(4, vec![span("web", 1, None, SpanKind::Internal)]),
    );
    a.flush(Instant::now()).await;
    b.flush(Instant::now()).await;
    assert!(written(&queue_a).await.is_empty(), "a no longer writes it");
    assert!(queue_b.held() > 0);
    assert_eq!(
        calls(&written(&queue_b).await),
        Some(4.0),
        "b continues from a's total"
    );
}

#[tokio::test]
async fn a_large_write_is_queued_in_chunks_and_every_series_is_written() {
    let queue = Arc::new(Queue::new(1_000_000, ExporterMetrics::default()));
    let generator = Generator::new(
        &config(),
        Arc::new(LocalOnly),
        Some(queue.clone()),
        Default::default(),
    )
    .unwrap();
    let mut many = request(1, vec![span("web", 1, None, SpanKind::Internal)]);
    let spans = &mut many.resource_spans[0].scope_spans[0].spans;
    let one = spans.remove(0);
    spans.extend((0..1000).map(|i| Span {
        name: format!("op-{i}"),
        ..one.clone()
    }));
    observe(&generator, &many);
    generator.flush(Instant::now()).await;
    // 1000 series of 6 series each (calls, 3 buckets, sum, count), 2 samples
    // each the first time: 12000 samples, in chunks of at most about 5000.
    let mut items = 0;
    let mut samples = 0;
    while queue.held() > 0 {
        let (n, batch, _) = queue.take(1, Duration::ZERO).await.unwrap();
        assert!(n < WRITE_CHUNK_SAMPLES + 12, "{n}");
        items += batch.len();
        samples += n;
        queue.release(n);
    }
    assert_eq!((items, samples), (3, 12_000));
    // Every series was marked written: no initial zeros the next time.
    generator.flush(Instant::now()).await;
    assert_eq!(queue.held(), 6_000);
}

#[tokio::test]
async fn a_leaving_member_hands_waiting_edge_halves_to_the_traces_new_owner() {
    let queue_b = Arc::new(Queue::new(100_000, ExporterMetrics::default()));
    let b = Arc::new(
        Generator::new(
            &config(),
            Arc::new(LocalOnly),
            Some(queue_b.clone()),
            Default::default(),
        )
        .unwrap(),
    );
    let router = Arc::new(Moving {
        b: b.clone(),
        moved: Default::default(),
    });
    let a = Arc::new(Generator::new(&config(), router.clone(), None, Default::default()).unwrap());
    // The client half reaches `a`, which owns the trace; then `a` leaves
    // and the server half reaches `b`, the trace's new owner.
    observe(
        &a,
        &request(7, vec![span("web", 1, None, SpanKind::Client)]),
    );
    router
        .moved
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let stop = CancellationToken::new();
    stop.cancel();
    a.clone().run(stop).await;
    observe(
        &b,
        &request(7, vec![span("api", 2, Some(1), SpanKind::Server)]),
    );
    b.flush(Instant::now()).await;
    let edge = value(
        &written(&queue_b).await,
        "traces_service_graph_request_total",
        &[("client", "web"), ("server", "api")],
    );
    assert_eq!(edge, Some(1.0), "the halves paired on b");
    assert_eq!(a.metrics.expired_edges.get(), 0);
}
