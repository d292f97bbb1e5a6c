//! OTLP profiles from the node-agent's exporter to a real Pyroscope over
//! gRPC, read back through Pyroscope's query API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use vispyr_e2e::process::free_port;
use vispyr_e2e::{Pyroscope, eventually};
use vispyr_node_agent::attribution::{
    CONTAINER_NAME, EXECUTABLE_NAME, NAMESPACE, NODE_NAME, POD_NAME, SERVICE_NAME, Target,
};
use vispyr_node_agent::config::Config;
use vispyr_node_agent::export::ProfileExport;
use vispyr_node_agent::export::otlp::{self, DropReason, Exporter, Metrics, PROFILES};
use vispyr_node_agent::export::profiles::{self, PYROSCOPE_PROFILE_TYPE};
use vispyr_node_agent::stack::{Batch, Frame, FrameKind, Sample};

const WAIT: Duration = Duration::from_secs(60);
const HZ: u64 = 99;

fn frame(kind: FrameKind, function: &str, package: Option<&str>) -> Frame {
    Frame {
        kind,
        function: Arc::from(function),
        file: Some(Arc::from(match kind {
            FrameKind::Kernel => "[kernel]",
            FrameKind::Native => "/usr/bin/node",
            _ => "file:///app/server.js",
        })),
        package: package.map(Arc::from),
    }
}

/// Two stacks of a Node.js request handler, leaf first.
fn samples(pid: u32, hot: u64, cold: u64) -> Vec<Sample> {
    let handler = vec![
        frame(FrameKind::Js, "handleCheckout", None),
        frame(
            FrameKind::NodeInternal,
            "node:internal/process/task_queues.processTicksAndRejections",
            None,
        ),
        frame(FrameKind::Native, "uv_run", None),
    ];
    let mut hot_stack = vec![
        frame(FrameKind::Kernel, "copy_user_generic", None),
        frame(
            FrameKind::NodeModules,
            "stringify",
            Some("fast-json-stringify"),
        ),
    ];
    hot_stack.extend(handler.clone());
    vec![
        Sample {
            pid,
            frames: hot_stack,
            count: hot,
        },
        Sample {
            pid,
            frames: handler,
            count: cold,
        },
    ]
}

fn batch(samples: Vec<Sample>) -> Batch {
    let end = SystemTime::now();
    Batch {
        start: end - Duration::from_secs(10),
        end,
        frequency_hz: HZ,
        samples,
    }
}

fn pod_target(service: &str, pod: &str) -> Target {
    [
        (SERVICE_NAME, service.to_owned()),
        (NAMESPACE, "shop".to_owned()),
        (POD_NAME, pod.to_owned()),
        (CONTAINER_NAME, "app".to_owned()),
        (NODE_NAME, "node-1".to_owned()),
        (EXECUTABLE_NAME, "node".to_owned()),
    ]
    .into_iter()
    .collect()
}

/// An encoded request of one pod's batch, and its profile count.
fn encoded(service: &str, hot: u64, cold: u64) -> (Bytes, u64) {
    let batch = batch(samples(1, hot, cold));
    let groups = vec![(
        pod_target(service, &format!("{service}-pod")),
        batch.samples.iter().collect(),
    )];
    let (request, n) = profiles::request(&batch, &groups);
    (Bytes::from(request.encode_to_vec()), n)
}

fn fast_retries(endpoint: String, buffer_bytes: u64) -> otlp::Config {
    otlp::Config {
        endpoint,
        timeout_ms: 5_000,
        buffer_bytes,
        retry_initial_backoff_ms: 100,
        retry_max_backoff_ms: 500,
        retry_max_elapsed_ms: 120_000,
    }
}

/// The merged CPU profile of `service` over the last hour.
async fn cpu_of(pyroscope: &Pyroscope, service: &str) -> vispyr_e2e::Flamegraph {
    selected(pyroscope, &format!("service_name=\"{service}\"")).await
}

/// The merged CPU profile of the series `matchers` select, over the last hour.
async fn selected(pyroscope: &Pyroscope, matchers: &str) -> vispyr_e2e::Flamegraph {
    let now = SystemTime::now();
    pyroscope
        .merged_profile(
            PYROSCOPE_PROFILE_TYPE,
            &format!("{{{matchers}}}"),
            now - Duration::from_secs(3600),
            now + Duration::from_secs(60),
        )
        .await
        .unwrap()
}

/// Waits until `service`'s total reaches `want` ns and returns its flame graph.
async fn arrived(pyroscope: &Pyroscope, service: &str, want: i64) -> vispyr_e2e::Flamegraph {
    eventually(WAIT, || async {
        let fg = cpu_of(pyroscope, service).await;
        if fg.total == want {
            Ok(fg)
        } else {
            Err(format!("{service}: total {} of {want}", fg.total))
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_reach_pyroscope_with_labels_functions_and_totals() {
    let pyroscope = Pyroscope::start().await.unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let config = Config {
        exporter: fast_retries(pyroscope.otlp_grpc_endpoint().to_owned(), 1 << 20),
        ..Config::default()
    };

    // A pod's profile, as attribution hands it over.
    let exporter = Exporter::start(PROFILES, &config.exporter, metrics.clone()).unwrap();
    let (body, n) = encoded("checkout", 30, 12);
    exporter.push(body, n);
    let period = profiles::period_ns(HZ);
    let fg = arrived(&pyroscope, "checkout", 42 * period).await;
    assert_eq!(fg.total_of("copy_user_generic"), 30 * period);
    assert_eq!(fg.total_of("stringify"), 30 * period);
    assert_eq!(fg.total_of("handleCheckout"), 42 * period);
    assert_eq!(fg.total_of("uv_run"), 42 * period);
    // The leaf frame's kind is a series label, so dashboards can select by it.
    for (kind, want) in [("kernel", 30), ("js", 12), ("node_internal", 0)] {
        let fg = selected(
            &pyroscope,
            &format!("service_name=\"checkout\",frame_kind=\"{kind}\""),
        )
        .await;
        assert_eq!(fg.total, want * period, "frame_kind={kind}");
    }
    for (label, value) in [
        ("service_name", "checkout"),
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "checkout-pod"),
        ("k8s_container_name", "app"),
        ("k8s_node_name", "node-1"),
        ("process_executable_name", "node"),
    ] {
        let values = pyroscope.label_values(label).await.unwrap();
        assert!(values.iter().any(|v| v == value), "{label}: {values:?}");
    }
    exporter.shutdown(Duration::from_secs(5)).await;

    // The whole consumer, as the service loop runs it: outside Kubernetes
    // this test process is a host process named after its executable.
    let export = ProfileExport::start(&config, None, metrics.clone()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(export.run(rx));
    tx.send(batch(samples(std::process::id(), 5, 2)))
        .await
        .unwrap();
    drop(tx);
    running.await.unwrap();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let service = comm.trim();
    let fg = arrived(&pyroscope, service, 7 * period).await;
    assert_eq!(fg.total_of("handleCheckout"), 7 * period);
    let hosts = pyroscope.label_values("vispyr_host_process").await.unwrap();
    assert_eq!(hosts, vec!["true".to_owned()]);

    assert_eq!(metrics.sent(&PROFILES), 2);
    assert_eq!(metrics.retried(&PROFILES), 0);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("vispyr_node_agent_exporter_sent_items_total{signal=\"profiles\"} 2"),
        "{text}"
    );
}

/// Relays every connection on `listener` to `to`: the exporter's address of
/// Pyroscope. Before it runs, nothing listens there and the exporter sees
/// what a stopped Pyroscope looks like: connection refused.
fn relay(listener: TcpListener, to: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_retried_and_a_full_buffer_drops_the_oldest() {
    let pyroscope = Pyroscope::start().await.unwrap();
    let pyroscope_addr: SocketAddr = pyroscope
        .url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // Pyroscope's address as the exporter knows it; down for now.
    let port = free_port();
    let requests: Vec<(Bytes, u64)> = (1..=4)
        .map(|i| encoded(&format!("outage-{i}"), 10 * i, 1))
        .collect();
    let largest = requests.iter().map(|(b, _)| b.len() as u64).max().unwrap();
    // Room for two requests waiting behind the one being retried.
    let metrics = Metrics::default();
    let config = fast_retries(
        format!("http://127.0.0.1:{port}"),
        2 * largest + largest / 2,
    );
    let exporter = Exporter::start(PROFILES, &config, metrics.clone()).unwrap();

    let (first, n) = requests[0].clone();
    exporter.push(first, n);
    eventually(WAIT, || {
        let retried = metrics.retried(&PROFILES);
        std::future::ready(if retried >= 2 { Ok(()) } else { Err(retried) })
    })
    .await
    .unwrap();
    for (body, n) in &requests[1..] {
        exporter.push(body.clone(), *n);
    }
    // outage-2 was the oldest waiting when outage-4 did not fit.
    assert_eq!(metrics.dropped(&PROFILES, DropReason::BufferFull), 1);
    assert_eq!(metrics.sent(&PROFILES), 0);

    // Back: everything still buffered or in flight arrives.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let _relay = relay(listener, pyroscope_addr);
    let period = profiles::period_ns(HZ);
    for i in [1, 3, 4] {
        arrived(&pyroscope, &format!("outage-{i}"), (10 * i + 1) * period).await;
    }
    eventually(WAIT, || {
        let sent = metrics.sent(&PROFILES);
        std::future::ready(if sent == 3 { Ok(()) } else { Err(sent) })
    })
    .await
    .unwrap();
    assert_eq!(cpu_of(&pyroscope, "outage-2").await.total, 0);
    for reason in [
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::Shutdown,
    ] {
        assert_eq!(metrics.dropped(&PROFILES, reason), 0, "{reason:?}");
    }
    exporter.shutdown(Duration::from_secs(5)).await;
}
