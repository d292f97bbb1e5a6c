//! The product as a user runs it: a real one-node cluster, `helm install
//! vispyr` from the images built here, the annotated demo app under load (the
//! same bring-up as `make demo`: `vispyr_e2e::demo`), then telemetry in every
//! backend, and `helm uninstall` leaving nothing of the release. Root only.
//!
//! The backends are queried from the host at their ClusterIPs (kube-proxy
//! routes the host's own connections too).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use vispyr_e2e::dashboards::{self, Subject};
use vispyr_e2e::{NODE_NAME, NodeCluster, PrometheusApi, PyroscopeApi, TempoApi, demo, eventually};

/// The whole pipeline on a loaded 2-core machine: export intervals, the
/// gateway's flush, Pyroscope's ingestion.
const TELEMETRY_TIMEOUT: Duration = Duration::from_secs(120);
const POD_TIMEOUT: Duration = Duration::from_secs(90);
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
/// The instrumentation's init container, as the webhook names it.
const INIT_CONTAINER: &str = "vispyr-instrumentation-nodejs";

#[tokio::test]
async fn helm_install_instruments_the_demo_app_and_uninstall_leaves_nothing() {
    let started = Instant::now();
    let cluster = NodeCluster::start().await.expect("node cluster comes up");
    demo::install(&cluster)
        .await
        .expect("images, chart and demo app install");
    let installed = started.elapsed();
    let client = cluster.control_plane().client();

    // The webhook injected both app pods.
    let pods: Api<Pod> = Api::namespaced(client.clone(), demo::APP_NAMESPACE);
    let mut app_pods = BTreeMap::new();
    for service in demo::APP_SERVICES {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={service}")))
            .await
            .expect("app pods listed");
        let [pod] = list.items.as_slice() else {
            panic!("one {service} pod, found {}", list.items.len());
        };
        let spec = pod.spec.clone().expect("pod spec");
        let inits: Vec<String> = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(
            inits.iter().any(|n| n == INIT_CONTAINER),
            "{service}: {inits:?}"
        );
        let env: BTreeMap<String, String> = spec.containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        assert!(
            env.get("NODE_OPTIONS")
                .is_some_and(|o| o.contains("--require /vispyr-instrumentation/")),
            "{service}: {env:?}"
        );
        assert_eq!(
            env.get("OTEL_SERVICE_NAME").map(String::as_str),
            Some(service)
        );
        app_pods.insert(service, pod.metadata.name.clone().expect("pod name"));
    }

    let services: Api<Service> = Api::namespaced(client.clone(), demo::NAMESPACE);
    let mut url = BTreeMap::new();
    for (name, port) in [
        ("vispyr-tempo", 3200),
        ("vispyr-prometheus", 9090),
        ("vispyr-pyroscope", 4040),
    ] {
        let svc = services.get(name).await.expect("backend service");
        let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
        url.insert(name, format!("http://{ip}:{port}"));
    }
    let traces = TempoApi::new(&url["vispyr-tempo"]);
    let prometheus = PrometheusApi::new(&url["vispyr-prometheus"]);
    let pyroscope = PyroscopeApi::new(&url["vispyr-pyroscope"]);
    let frontend = services_url(&client, "frontend").await;

    // Freshness of traces: one request of our own, with a trace ID we chose,
    // until both services' spans of it are stored, each naming its pod.
    let trace_id = format!("{:032x}", rand_u128());
    // The Services may take a moment to route (kube-proxy's sync): until
    // then the frontend answers 502, or the host's default route takes the
    // ClusterIP elsewhere. A new connection per attempt, so that one made
    // before the rules existed is not reused after.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let mut sent = Instant::now();
    eventually(POD_TIMEOUT, || {
        sent = Instant::now();
        let request = http
            .get(format!("{frontend}/checkout?items=5"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send();
        async move {
            let response = request.await.map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("{response:?}"))
            }
        }
    })
    .await
    .expect("the frontend answers through the backend");
    let pods_in_trace = eventually(TELEMETRY_TIMEOUT, || async {
        let trace = traces
            .trace(&trace_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("trace not stored yet")?;
        let found = pods_by_service(&trace);
        if demo::APP_SERVICES.iter().all(|s| found.contains_key(*s)) {
            Ok(found)
        } else {
            Err(format!("services so far: {found:?}"))
        }
    })
    .await
    .expect("the request's trace has frontend and backend spans");
    let trace_freshness = sent.elapsed();
    for service in demo::APP_SERVICES {
        assert_eq!(
            pods_in_trace[service], app_pods[service],
            "k8s.pod.name of {service}'s spans"
        );
    }

    // Span metrics, the service graph edge, and the node's host metrics.
    for query in [
        r#"sum(traces_spanmetrics_calls_total{service="backend", span_kind="SPAN_KIND_SERVER"})"#,
        r#"sum(traces_service_graph_request_total{client="frontend", server="backend"})"#,
        &format!(r#"sum(node_cpu_seconds_total{{instance="{NODE_NAME}"}})"#),
    ] {
        eventually(TELEMETRY_TIMEOUT, || async {
            match prometheus.query(query).await {
                Ok(r) if r.first().is_some_and(|(_, v)| *v > 0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    }

    // Profiles of the backend pod naming its hot function; freshness: from
    // now until samples taken after now are queryable.
    let since = SystemTime::now();
    let profiled = Instant::now();
    let selector = format!(
        r#"{{service_name="backend", k8s_pod_name="{}"}}"#,
        app_pods["backend"]
    );
    eventually(TELEMETRY_TIMEOUT, || async {
        let graph = pyroscope
            .merged_profile(CPU, &selector, since, SystemTime::now())
            .await
            .map_err(|e| e.to_string())?;
        match graph.total_of("computePrice") {
            0 => Err(format!(
                "no computePrice yet among {} names",
                graph.names.len()
            )),
            n => Ok(n),
        }
    })
    .await
    .expect("the backend pod's profile names computePrice");
    let profile_freshness = profiled.elapsed();

    // Every query of every Grafana dashboard returns data from what the
    // pipeline wrote, with the dashboards' service set to the backend (the
    // components' event counters, such as refusals and drops, start at zero).
    let subject = Subject {
        service: "backend",
        span_name: "GET",
    };
    let queries = dashboards::queries(&subject);
    eventually(TELEMETRY_TIMEOUT, || async {
        let failures = dashboards::without_data(&queries, &prometheus, &pyroscope, since).await;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    })
    .await
    .expect("every dashboard query has data");

    // helm uninstall: nothing of the release is left, and pods are admitted.
    demo::uninstall(&cluster).expect("helm uninstall");
    let kube = cluster.control_plane();
    let leftovers = eventually(POD_TIMEOUT, || async {
        let mut left: Vec<String> = kube
            .kubectl(&[
                "-n",
                demo::NAMESPACE,
                "get",
                "all,configmap,secret,serviceaccount,role,rolebinding,lease",
                "-o",
                "name",
            ])
            .map_err(|e| vec![e.to_string()])?
            .lines()
            .filter(|l| !matches!(*l, "configmap/kube-root-ca.crt" | "serviceaccount/default"))
            .map(str::to_string)
            .collect();
        left.extend(
            kube.kubectl(&[
                "get",
                "mutatingwebhookconfiguration,validatingwebhookconfiguration,clusterrole,clusterrolebinding",
                "-o",
                "name",
            ])
            .map_err(|e| vec![e.to_string()])?
            .lines()
            .filter(|l| l.contains("vispyr"))
            .map(str::to_string),
        );
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .await;

    let probe: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "after-uninstall",
            "annotations": {"vispyr.io/inject-nodejs": "vispyr-system/default"},
        },
        "spec": {"containers": [{
            "name": "app",
            "image": "vispyr.local/demo-app:dev",
            "imagePullPolicy": "Never",
            "env": [{"name": "ROLE", "value": "backend"}],
        }]},
    }))
    .expect("static pod");
    pods.create(&PostParams::default(), &probe)
        .await
        .expect("a pod is admitted after the uninstall");
    eventually(POD_TIMEOUT, || async {
        let pod = pods
            .get("after-uninstall")
            .await
            .map_err(|e| e.to_string())?;
        match pod.status.and_then(|s| s.phase).as_deref() {
            Some("Running") => Ok(()),
            phase => Err(format!("phase {phase:?}")),
        }
    })
    .await
    .expect("the new pod runs, uninstrumented");

    cluster.shutdown().await.expect("teardown leaves nothing");
    eprintln!(
        "demo e2e: installed in {installed:?}; span stored {trace_freshness:?} after its request; \
         profile samples queryable {profile_freshness:?} after they were taken; total {:?}",
        started.elapsed()
    );
    assert_eq!(
        leftovers,
        Ok(()),
        "helm uninstall left objects of the release"
    );
}

/// `http://<ClusterIP>:<port>` of a demo app Service.
async fn services_url(client: &kube::Client, name: &str) -> String {
    let services: Api<Service> = Api::namespaced(client.clone(), demo::APP_NAMESPACE);
    let spec = services
        .get(name)
        .await
        .expect("app service")
        .spec
        .expect("spec");
    let port = spec.ports.expect("ports")[0].port;
    format!("http://{}:{port}", spec.cluster_ip.expect("a ClusterIP"))
}

/// `service.name` -> `k8s.pod.name` of the resources in an OTLP JSON trace.
fn pods_by_service(trace: &Value) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for rs in trace["resourceSpans"].as_array().into_iter().flatten() {
        let attrs: BTreeMap<&str, &str> = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["key"].as_str()?, a["value"]["stringValue"].as_str()?)))
            .collect();
        if let (Some(service), Some(pod)) = (attrs.get("service.name"), attrs.get("k8s.pod.name")) {
            found.insert(service.to_string(), pod.to_string());
        }
    }
    found
}

/// A trace ID no other request has: the clock's nanoseconds and the pid.
fn rand_u128() -> u128 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    (nanos << 32) | u128::from(std::process::id())
}
