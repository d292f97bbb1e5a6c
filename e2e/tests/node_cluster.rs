//! A real node: containerd, runc, CNI and a kubelet under the harness's
//! control plane run a pod from an image built here, the pod reaches the
//! apiserver over the pod network, another reaches a third through a
//! ClusterIP Service by its DNS name (kube-proxy + CoreDNS), and the teardown
//! leaves nothing behind (kube-proxy's chains included). Root only (CI runs as
//! root); fails, not skips, otherwise.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use vispyr_e2e::{NODE_NAME, NodeCluster, eventually};

const POD_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn runs_a_pod_from_a_local_image_and_leaves_nothing_behind() {
    let started = Instant::now();
    let cluster = NodeCluster::start().await.expect("node cluster comes up");
    let ready = started.elapsed();

    let built = Instant::now();
    let report = cluster
        .import_images(&["hello"])
        .await
        .expect("hello image builds and imports");
    let imported = built.elapsed();
    assert!(
        report.contains("imported vispyr.local/hello:dev"),
        "{report}"
    );

    let control = cluster.control_plane();
    let apiserver = control
        .server()
        .strip_prefix("https://")
        .expect("the apiserver serves https")
        .to_string();
    let client = control.client();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hello"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "hello",
                "image": "vispyr.local/hello:dev",
                "imagePullPolicy": "Never",
                // Over the pod network to the node: what every in-cluster
                // client of the apiserver needs.
                "args": [apiserver],
            }],
        },
    }))
    .expect("static pod");
    // The default ServiceAccount appears once the controller-manager has
    // seen the namespace; until then admission refuses the pod.
    eventually(POD_TIMEOUT, || async {
        pods.create(&PostParams::default(), &pod).await
    })
    .await
    .expect("pod created");
    let ran = eventually(POD_TIMEOUT, || async {
        let pod = pods.get("hello").await.map_err(|e| e.to_string())?;
        let status = pod.status.unwrap_or_default();
        match status.phase.as_deref() {
            Some("Succeeded") => Ok(pod.spec.and_then(|s| s.node_name)),
            phase => Err(format!(
                "phase {phase:?}, containers {:?}",
                status.container_statuses
            )),
        }
    })
    .await
    .expect("pod runs to completion");
    assert_eq!(ran.as_deref(), Some(NODE_NAME));

    // Through the apiserver, which fetches it from the kubelet: the pod's
    // host name and the image's non-root user prove what ran where.
    let log = pods
        .logs("hello", &LogParams::default())
        .await
        .expect("pod log");
    assert_eq!(
        log.trim(),
        format!("vispyr-hello host=hello uid=65532 reached={apiserver}")
    );

    let by_name = Instant::now();
    cluster
        .import_images(&["demo-app"])
        .await
        .expect("demo-app image builds and imports");
    let services: Api<Service> = Api::namespaced(control.client(), "default");
    let backend: Pod = serde_json::from_value(json!({
        "metadata": {"name": "backend", "labels": {"app": "backend"}},
        "spec": {"containers": [{
            "name": "backend",
            "image": "vispyr.local/demo-app:dev",
            "imagePullPolicy": "Never",
            "env": [{"name": "ROLE", "value": "backend"}],
        }]},
    }))
    .expect("static pod");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "backend"},
        "spec": {
            "selector": {"app": "backend"},
            // Not the container's port: only kube-proxy's DNAT gets there.
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    }))
    .expect("static service");
    // The short name: the search path the kubelet writes into the pod's
    // resolv.conf, answered by cluster DNS, then the Service's ClusterIP.
    let client: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": "client",
                "image": "vispyr.local/demo-app:dev",
                "imagePullPolicy": "Never",
                "command": ["node", "-e", "fetch('http://backend/price?items=1').then(r => r.text()).then(t => console.log(t), e => { console.error(e.cause ?? e); process.exit(1); })"],
            }],
        },
    }))
    .expect("static pod");
    pods.create(&PostParams::default(), &backend)
        .await
        .expect("backend pod created");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("service created");
    pods.create(&PostParams::default(), &client)
        .await
        .expect("client pod created");
    let answer = eventually(POD_TIMEOUT, || async {
        let pod = pods.get("client").await.map_err(|e| e.to_string())?;
        match pod.status.unwrap_or_default().phase.as_deref() {
            Some("Succeeded") => pods
                .logs("client", &LogParams::default())
                .await
                .map_err(|e| e.to_string()),
            phase => Err(format!("client phase {phase:?}")),
        }
    })
    .await
    .expect("client reaches the backend through its Service by name");
    assert_eq!(answer.trim(), r#"{"items":1,"price":3.57}"#);
    let reached_by_name = by_name.elapsed();

    let stopping = Instant::now();
    cluster
        .shutdown()
        .await
        .expect("teardown leaves nothing behind");
    eprintln!(
        "node cluster: Ready after {ready:?}, hello image built and imported in {imported:?}, \
         Service reached by name in {reached_by_name:?}, torn down in {:?}",
        stopping.elapsed()
    );
}
