//! Three gateway processes on loopback in one hash ring (static peers), with
//! the real trace store behind them: the spans of a trace, sent to different
//! members in different requests, meet on the one member that owns the trace
//! ID and reach the store whole and once; a member killed mid-stream loses
//! no span the ring acknowledged; a member stopped with SIGTERM leaves the
//! ring and hands nothing off twice; the trace store stopped for 30 s under
//! load costs bounded memory and retryable errors, and loses nothing
//! acknowledged. With Kubernetes membership, the ring follows the ready
//! endpoints of the Service's EndpointSlices on a real apiserver.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, TestTrace, WAIT, hex, wait_members};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::Mutex;
use vispyr_e2e::process::{free_port, status_bytes};
use vispyr_e2e::{Tempo, TestCluster, eventually};
use vispyr_gateway::otlp::retryable;

const SENT: &str = r#"vispyr_gateway_exporter_sent_spans_total{exporter="traces"}"#;
const RECEIVED: &str = "vispyr_gateway_ring_received_spans_total";
const REMOTE: &str = r#"vispyr_gateway_ring_routed_spans_total{owner="remote"}"#;

/// `n` members that all see each other, exporting to `store`; `sets` go to
/// every member.
async fn ring(store: &Tempo, n: usize, sets: &[&str]) -> Vec<Gateway> {
    let mut all = vec![
        "ring.forward_timeout_ms=5000".into(),
        format!("exporters.traces.endpoint={}", store.otlp_grpc_endpoint()),
        "exporters.traces.batch_timeout_ms=20".into(),
        "drain_timeout_ms=5000".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    common::ring(n, &all).await
}

/// One request holding the spans at `index` of each of `traces`.
fn request(traces: &[&TestTrace], index: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: traces
            .iter()
            .flat_map(|t| t.proto_of([index]).resource_spans)
            .collect(),
    }
}

async fn client(member: &Gateway) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(member.grpc.clone())
        .await
        .unwrap()
}

async fn sum(members: &[Gateway], series: &str) -> f64 {
    let mut total = 0.0;
    for m in members {
        total += m.metric(series).await;
    }
    total
}

#[tokio::test]
async fn spans_sent_to_different_members_meet_whole_on_one() {
    const TRACES: usize = 60;
    const SPANS: usize = 6;
    let store = Tempo::start().await.unwrap();
    let members = ring(&store, 3, &[]).await;
    let traces: Vec<TestTrace> = (0..TRACES)
        .map(|i| TestTrace::new(&format!("svc-{}", i % 4), SPANS - 1))
        .collect();
    let mut clients = Vec::new();
    for m in &members {
        clients.push(client(m).await);
    }

    // Span r of trace i goes to member (i + r) % 3: each trace's spans are
    // spread over every member, several traces per request.
    let started = Instant::now();
    for r in 0..SPANS {
        for (m, client) in clients.iter_mut().enumerate() {
            let batch: Vec<&TestTrace> = traces
                .iter()
                .enumerate()
                .filter(|(i, _)| (i + r) % 3 == m)
                .map(|(_, t)| t)
                .collect();
            let answer = client.export(request(&batch, r)).await.unwrap();
            assert_eq!(answer.into_inner().partial_success, None);
        }
    }
    let elapsed = started.elapsed();

    for trace in &traces {
        trace.assert_stored(&store).await;
    }
    // Each span exported by exactly one member: the sums match exactly.
    let total = (TRACES * SPANS) as f64;
    eventually(WAIT, || async {
        match sum(&members, SENT).await {
            n if n == total => Ok(()),
            n => Err(n),
        }
    })
    .await
    .unwrap();
    let forwarded = sum(&members, REMOTE).await;
    assert_eq!(sum(&members, RECEIVED).await, forwarded);
    for m in &members {
        assert!(
            m.metric(RECEIVED).await > 0.0,
            "{} owns no trace: {}",
            m.admin,
            m.metrics().await
        );
    }
    eprintln!(
        "{total} spans through a 3-member ring in {elapsed:?} (one request at a time, each answered after the owners exported); {:.0}% forwarded",
        100.0 * forwarded / total
    );
}

/// Sends `request` to the members in turn, from `first`, until one
/// acknowledges it within `patience`; non-retryable errors fail the test.
/// Returns the retryable errors it was answered with.
async fn send_until_acknowledged(
    clients: &mut [TraceServiceClient<tonic::transport::Channel>],
    first: usize,
    request: ExportTraceServiceRequest,
    patience: Duration,
) -> Vec<tonic::Code> {
    let deadline = Instant::now() + patience;
    let mut refusals = Vec::new();
    for attempt in 0.. {
        let client = &mut clients[(first + attempt) % clients.len()];
        let mut req = tonic::Request::new(request.clone());
        req.set_timeout(Duration::from_secs(10));
        match client.export(req).await {
            Ok(_) => break,
            Err(status) => {
                let (retry, _) = retryable(&status);
                assert!(retry, "permanent error: {status:?}");
                assert!(Instant::now() < deadline, "never acknowledged: {status:?}");
                refusals.push(status.code());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    refusals
}

/// Four clients send traces to `senders` (each trace's spans in two
/// requests to two members) while `stop` runs once `after` requests were
/// acknowledged; returns the acknowledged spans of each trace.
async fn send_while(
    senders: &[&Gateway],
    requests: usize,
    after: usize,
    stop: impl AsyncFnOnce(),
) -> BTreeMap<String, BTreeSet<String>> {
    let acked: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let mut clients = Vec::new();
        for s in senders {
            clients.push(client(s).await);
        }
        let (acked, done) = (acked.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..requests / 4 / 2 {
                let traces: Vec<TestTrace> =
                    (0..5).map(|_| TestTrace::new("svc-kill", 3)).collect();
                let batch: Vec<&TestTrace> = traces.iter().collect();
                for half in 0..2 {
                    let req = ExportTraceServiceRequest {
                        resource_spans: batch
                            .iter()
                            .flat_map(|t| t.proto_of([2 * half, 2 * half + 1]).resource_spans)
                            .collect(),
                    };
                    send_until_acknowledged(&mut clients, task + i + half, req, WAIT).await;
                    let mut acked = acked.lock().await;
                    for t in &traces {
                        let ids = acked.entry(t.trace_id()).or_default();
                        ids.insert(hex(&t.spans[2 * half].0));
                        ids.insert(hex(&t.spans[2 * half + 1].0));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually(WAIT, || async {
        match done.load(Ordering::Relaxed) {
            n if n >= after => Ok(()),
            n => Err(n),
        }
    })
    .await
    .unwrap();
    stop().await;
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner()
}

/// Every acknowledged span is stored; with `exactly_once`, nothing else
/// and nothing twice.
async fn assert_acknowledged_stored(
    store: &Tempo,
    acked: &BTreeMap<String, BTreeSet<String>>,
    exactly_once: bool,
) {
    for (trace, want) in acked {
        eventually(WAIT, || async {
            let stored = store.spans(trace).await.map_err(|e| e.to_string())?;
            let got: BTreeSet<String> = stored.iter().map(|s| s.span_id.clone()).collect();
            let whole = match exactly_once {
                true => got == *want && stored.len() == want.len(),
                false => got.is_superset(want),
            };
            match whole {
                true => Ok(()),
                false => Err(format!(
                    "trace {trace}: acknowledged {want:?}, stored {} spans: {got:?}",
                    stored.len()
                )),
            }
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_no_acknowledged_span() {
    let store = Tempo::start().await.unwrap();
    let mut members = ring(&store, 3, &[]).await;
    let mut dead = members.pop().unwrap();
    let acked = send_while(&[&members[0], &members[1]], 160, 40, async || {
        // It owned some of what was sent before: the kill can lose them.
        assert!(dead.metric(RECEIVED).await > 0.0);
        dead.process.kill();
    })
    .await;
    assert_eq!(
        acked.values().map(BTreeSet::len).sum::<usize>(),
        160 * 5 * 2
    );
    // The survivors found out and took over the dead member's traces.
    for m in &members {
        wait_members(m, 2).await;
    }
    assert_acknowledged_stored(&store, &acked, false).await;
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_bytes(pid, "VmRSS").expect("VmRSS of a running member") as f64 / (1 << 20) as f64
}

/// Tempo stopped (SIGSTOP: its connections hang rather than fail, the harder
/// case for an exporter) for 30 s while clients keep sending: every member
/// stays up with its memory bounded by its queue, clients are told to retry
/// once the queues are full, and when Tempo is back every acknowledged span
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempo_stopped_for_30_s_under_load_loses_nothing_acknowledged() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const QUEUE_SPANS: usize = 400;
    let mut store = Tempo::start().await.unwrap();
    let queue = format!("exporters.traces.queue_spans={QUEUE_SPANS}");
    let mut members = ring(
        &store,
        3,
        &[
            &queue,
            // Forwards wait for their owner's export: give up on them sooner
            // so that clients move on to the owner and fill its queue.
            "ring.forward_timeout_ms=1000",
            "exporters.traces.timeout_ms=1000",
            "exporters.traces.retry_max_backoff_ms=1000",
        ],
    )
    .await;
    let pids: Vec<u32> = members.iter().map(|m| m.process.id()).collect();
    let before: Vec<f64> = pids.iter().map(|&p| rss_mib(p)).collect();

    // Eight clients, a trace of 20 spans every 50 ms each, each retried (for
    // longer than the outage) until acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let mut clients = Vec::new();
        for m in &members {
            clients.push(client(m).await);
        }
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refusals) = (BTreeMap::new(), Vec::new());
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let trace = TestTrace::new("svc-outage", 19);
                refusals.extend(
                    send_until_acknowledged(&mut clients, task + i, trace.proto(), 2 * OUTAGE)
                        .await,
                );
                let ids: BTreeSet<String> = trace.spans.iter().map(|s| hex(&s.0)).collect();
                acked.insert(trace.trace_id(), ids);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (acked, refusals)
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let tempo = store.process().id();
    signal(tempo, "STOP");
    let stopped = Instant::now();
    let (mut peak, mut queued) = (before.clone(), vec![0.0; members.len()]);
    let mut at_third = Vec::new();
    while stopped.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for (i, m) in members.iter().enumerate() {
            peak[i] = peak[i].max(rss_mib(pids[i]));
            let held = m
                .metric(r#"vispyr_gateway_exporter_queue_spans{exporter="traces"}"#)
                .await;
            queued[i] = f64::max(queued[i], held);
        }
        if at_third.is_empty() && stopped.elapsed() >= OUTAGE / 3 {
            at_third = peak.clone();
        }
    }
    signal(tempo, "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut acked, mut refusals) = (BTreeMap::new(), Vec::new());
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refusals.extend(r);
    }
    eprintln!(
        "{} traces acknowledged; {} retryable refusals; most spans queued during the outage {queued:?}; \
         VmRSS MiB before {before:.1?}, peak at a third of the outage {at_third:.1?}, peak {peak:.1?}",
        acked.len(),
        refusals.len(),
    );
    // Queues filled (a request is queued whole or not at all; forwarded
    // parts whose caller gave up leave again, so a member that owns fewer
    // traces may stay just below its capacity).
    assert!(
        queued.iter().any(|&q| q >= (QUEUE_SPANS - 20) as f64),
        "no queue filled: {queued:?}"
    );
    assert!(
        refusals.contains(&tonic::Code::ResourceExhausted),
        "no client was told the queues are full: {refusals:?}"
    );
    for (i, member) in members.iter_mut().enumerate() {
        // No crash: every member is still running and exporting again.
        member
            .process
            .check_running()
            .unwrap_or_else(|e| panic!("member {i}: {e}"));
        assert!(member.metric(SENT).await > 0.0, "member {i} exported");
        // Bounded: no growth once the queues are full (a third into the
        // outage), and a modest total over the start.
        assert!(
            peak[i] - at_third[i] < 8.0 && peak[i] - before[i] < 64.0,
            "member {i}: VmRSS {:.1} MiB before, {:.1} a third into the outage, {:.1} at its peak",
            before[i],
            at_third[i],
            peak[i]
        );
    }
    assert_acknowledged_stored(&store, &acked, false).await;
}

// Multi-threaded: the clients keep sending while this thread waits for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_with_sigterm_leaves_and_hands_nothing_off_twice() {
    let store = Tempo::start().await.unwrap();
    let mut members = ring(&store, 3, &[]).await;
    let mut leaving = members.pop().unwrap();
    let acked = send_while(&[&members[0], &members[1]], 160, 40, async || {
        assert!(leaving.metric(RECEIVED).await > 0.0);
        let status = leaving
            .process
            .terminate(Duration::from_secs(10))
            .expect("exits within the drain timeout");
        assert!(status.success(), "{status}: {}", leaving.process.log_tail());
    })
    .await;
    for m in &members {
        wait_members(m, 2).await;
    }
    assert_acknowledged_stored(&store, &acked, true).await;
}

/// This machine's address on its default route: EndpointSlices refuse
/// loopback addresses. Connecting a UDP socket sends nothing.
fn host_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .expect("a default route (EndpointSlices need a non-loopback address)");
    socket.local_addr().unwrap().ip()
}

/// An EndpointSlice of the ring's Service with one endpoint, this host on
/// its own `ring` port (one slice per member: they share the address).
fn slice(name: &str, port: u16, ready: bool, terminating: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "vispyr-gateway-ring"}},
        "addressType": "IPv4",
        "ports": [{"name": "otlp", "port": 4317}, {"name": "ring", "port": port}],
        "endpoints": [{
            "addresses": [host_ip().to_string()],
            "conditions": {"ready": ready, "serving": ready, "terminating": terminating}
        }]
    })
}

#[tokio::test]
async fn kubernetes_membership_follows_ready_endpoints() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch, PatchParams, PostParams};

    let cluster = TestCluster::start().await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client(), "default");
    let ports = [free_port(), free_port()];
    let mut members = Vec::new();
    for port in ports {
        members.push(
            Gateway::start_with_env(
                &[
                    format!("ring.addr={}:{port}", host_ip()),
                    "ring.service=vispyr-gateway-ring".into(),
                    "ring.namespace=default".into(),
                ],
                &[("KUBECONFIG", cluster.kubeconfig())],
            )
            .await,
        );
    }
    let create = async |name, port, ready, terminating| {
        let s = serde_json::from_value(slice(name, port, ready, terminating)).unwrap();
        slices.create(&PostParams::default(), &s).await.unwrap();
    };
    let replace = async |name: &str, port, ready, terminating| {
        let patch = Patch::Merge(slice(name, port, ready, terminating));
        slices
            .patch(name, &PatchParams::default(), &patch)
            .await
            .unwrap();
    };

    // A not-ready endpoint is not a member; a ready one is.
    create("gw-a", ports[0], true, false).await;
    create("gw-b", ports[1], false, false).await;
    for m in &members {
        wait_members(m, 1).await;
    }
    replace("gw-b", ports[1], true, false).await;
    for m in &members {
        wait_members(m, 2).await;
    }
    // Both members own traces: spans sent to one reach the other.
    let mut first = client(&members[0]).await;
    let traces: Vec<TestTrace> = (0..20).map(|_| TestTrace::new("svc-k8s", 1)).collect();
    first
        .export(request(&traces.iter().collect::<Vec<_>>(), 0))
        .await
        .unwrap();
    assert!(members[1].metric(RECEIVED).await > 0.0);

    // Terminating (still ready while it drains): out of the ring.
    replace("gw-b", ports[1], true, true).await;
    for m in &members {
        wait_members(m, 1).await;
    }
    slices.delete("gw-a", &Default::default()).await.unwrap();
    wait_members(&members[1], 0).await;
}
