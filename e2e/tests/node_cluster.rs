//! A real node: containerd, runc, CNI and a kubelet under the harness's
//! control plane run a pod from an image built here, the pod reaches the
//! apiserver over the pod network, and the teardown leaves nothing behind.
//! Root only (CI runs as root); fails, not skips, otherwise.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
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

    let stopping = Instant::now();
    cluster
        .shutdown()
        .await
        .expect("teardown leaves nothing behind");
    eprintln!(
        "node cluster: Ready after {ready:?}, hello image built and imported in {imported:?}, \
         torn down in {:?}",
        stopping.elapsed()
    );
}
