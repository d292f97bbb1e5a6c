//! `make bench`: what the webhook costs.
//!
//! 1. The mutate function alone, next to decoding the same pod from JSON
//!    (which any webhook does for every review) as the baseline.
//! 2. Pod creates through the real kube-apiserver, alternating between a
//!    namespace the webhook sees (the pod is injected) and one its
//!    namespaceSelector excludes (no webhook call): the difference of the
//!    percentiles is the latency the webhook adds. A fourth kind, the
//!    injected pod's final shape created where no webhook is called, splits
//!    that difference into the webhook round trip and the cost of storing a
//!    bigger pod.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use vispyr_e2e::TestCluster;
use vispyr_e2e::process::free_port;
use vispyr_operator::crd::VispyrInstrumentation;
use vispyr_operator::inject::{self, Outcome};

#[path = "../tests/support/mod.rs"]
mod support;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/deployment-pod");
const MUTATE_ROUNDS: usize = 20_000;
const CREATES: usize = 1000;

fn main() {
    mutate_cost();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(create_latency());
}

fn mutate_cost() {
    let pod_yaml = std::fs::read_to_string(format!("{GOLDEN}/pod.yaml")).unwrap();
    let pod: Pod = serde_yaml::from_str(&pod_yaml).unwrap();
    let pod_json = serde_json::to_vec(&pod).unwrap();
    let vi: VispyrInstrumentation = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{GOLDEN}/instrumentation.yaml")).unwrap(),
    )
    .unwrap();
    let mut namespace = Namespace::default();
    namespace.metadata.name = pod.metadata.namespace.clone();
    let candidates = [Arc::new(vi)];
    assert!(matches!(
        inject::mutate(&pod, &namespace, candidates.as_slice()),
        Outcome::Patched(_)
    ));

    // Interleaved rounds so that machine noise hits both alike.
    let (mut mutate, mut decode) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..MUTATE_ROUNDS / 10 {
            black_box(inject::mutate(
                black_box(&pod),
                &namespace,
                candidates.as_slice(),
            ));
        }
        mutate += t.elapsed();
        let t = Instant::now();
        for _ in 0..MUTATE_ROUNDS / 10 {
            black_box(serde_json::from_slice::<Pod>(black_box(&pod_json)).unwrap());
        }
        decode += t.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / MUTATE_ROUNDS as f64;
    println!("mutate (golden deployment-pod):  {:8.2} µs/op", per(mutate));
    println!("baseline, decode the pod JSON:   {:8.2} µs/op", per(decode));
    println!(
        "ratio mutate / decode:           {:8.2}",
        per(mutate) / per(decode)
    );
}

async fn create_latency() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let port = free_port();
    support::install(&cluster, port).await;
    let operator = support::start_operator(&cluster, port).await;
    let client = cluster.client();
    Api::<VispyrInstrumentation>::namespaced(client.clone(), "shop")
        .create(
            &PostParams::default(),
            &support::instrumentation("shop", "node", "manual"),
        )
        .await
        .unwrap();

    let annotated = support::replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"}));
    let unannotated = support::replicaset_pod(json!({}));
    let injected_shape = injected_shape(&annotated, &cluster).await;
    let (hooked, plain): (Api<Pod>, Api<Pod>) = (
        Api::namespaced(client.clone(), "shop"),
        Api::namespaced(client.clone(), "plain"),
    );
    // Warm both paths (TLS session, caches) before measuring.
    for _ in 0..20 {
        hooked
            .create(&PostParams::default(), &annotated)
            .await
            .unwrap();
        plain
            .create(&PostParams::default(), &annotated)
            .await
            .unwrap();
    }
    let (mut with, mut called, mut without, mut shaped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let pp = PostParams::default();
    let collections_before = apiserver_gc_cycles(&client).await;
    let answered_before = answer_time_buckets(operator.admin).await;
    for _ in 0..CREATES {
        let t = Instant::now();
        let pod = hooked.create(&pp, &annotated).await.unwrap();
        with.push(t.elapsed());
        assert!(
            pod.spec.unwrap().init_containers.is_some(),
            "the measured pods are injected"
        );
        let t = Instant::now();
        hooked.create(&pp, &unannotated).await.unwrap();
        called.push(t.elapsed());
        let t = Instant::now();
        plain.create(&pp, &annotated).await.unwrap();
        without.push(t.elapsed());
        let t = Instant::now();
        plain.create(&pp, &injected_shape).await.unwrap();
        shaped.push(t.elapsed());
    }
    let collections = apiserver_gc_cycles(&client).await - collections_before;
    let answered: Vec<(f64, u64)> = answer_time_buckets(operator.admin)
        .await
        .into_iter()
        .zip(answered_before)
        .map(|((le, after), (_, before))| (le, after - before))
        .collect();
    operator.stop().await;

    let rows = [
        (
            "no webhook call (namespace not selected)",
            percentiles(&mut without),
        ),
        ("webhook called, pod not opted in", percentiles(&mut called)),
        ("webhook called, pod injected", percentiles(&mut with)),
        (
            "no webhook call, pod already in injected shape",
            percentiles(&mut shaped),
        ),
    ];
    println!(
        "kube-apiserver garbage collections during the creates: {collections} (one per {:.0} creates)",
        (4 * CREATES) as f64 / collections.max(1) as f64
    );
    let total = answered.last().map_or(0, |&(_, n)| n);
    let bound = |q: f64| {
        answered
            .iter()
            .find(|&&(_, n)| n as f64 >= q * total as f64)
            .map_or(f64::INFINITY, |&(le, _)| le * 1e3)
    };
    println!(
        "the webhook's own answer time ({total} reviews): p50 <= {:.2} ms, p99 <= {:.2} ms",
        bound(0.50),
        bound(0.99)
    );
    let (b50, b99) = rows[0].1;
    println!("pod create through kube-apiserver ({CREATES} each, interleaved):");
    for (what, (p50, p99)) in rows {
        println!(
            "  {what:<42} p50 {:7.3} ms (+{:6.3})  p99 {:7.3} ms (+{:6.3})",
            ms(p50),
            ms(p50) - ms(b50),
            ms(p99),
            ms(p99) - ms(b99)
        );
    }
}

/// `pod` as the webhook leaves it, to be created where no webhook is called.
async fn injected_shape(pod: &Pod, cluster: &TestCluster) -> Pod {
    let namespace: Namespace = Api::all(cluster.client()).get("shop").await.unwrap();
    let instrumentations: Vec<Arc<VispyrInstrumentation>> =
        vec![Arc::new(support::instrumentation("shop", "node", "manual"))];
    let Outcome::Patched(injection) = inject::mutate(pod, &namespace, instrumentations.as_slice())
    else {
        panic!("the annotated pod is injected");
    };
    let mut value = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut value, &injection.patch).unwrap();
    serde_json::from_value(value).unwrap()
}

/// Completed GC cycles of the apiserver: a create's tail is often the
/// collector's, and a bigger request allocates more.
async fn apiserver_gc_cycles(client: &kube::Client) -> u64 {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .expect("the apiserver serves /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("go_gc_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the apiserver reports go_gc_duration_seconds_count")
}

/// The cumulative buckets (upper bound in seconds, count) of the operator's
/// `vispyr_operator_admission_duration_seconds`: the time the webhook itself
/// takes, as opposed to what the apiserver adds around the call.
async fn answer_time_buckets(admin: std::net::SocketAddr) -> Vec<(f64, u64)> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("the operator serves /metrics")
        .text()
        .await
        .unwrap();
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("vispyr_operator_admission_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            Some((le.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    assert!(!buckets.is_empty(), "the operator reports its answer time");
    buckets
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
