//! The demo: Vispyr installed with `helm install` on a [`NodeCluster`] from
//! the images built here, and the annotated demo app under load.
//! `node-cluster --demo` (what `make demo` runs) and the end-to-end test
//! (`e2e/tests/demo.rs`) share this one bring-up.
//!
//! Files: `e2e/demo/values.yaml` (image overrides and the deviations from a
//! real install, with why), `e2e/demo-app/demo.yaml`.

use std::path::{Path, PathBuf};

use crate::{Error, NodeCluster, helm};

/// The release's namespace; the demo app opts in to its default
/// VispyrInstrumentation as `vispyr-system/default`.
pub const NAMESPACE: &str = "vispyr-system";
pub const RELEASE: &str = "vispyr";
/// Where the demo app runs: Deployments `frontend`, `backend`, `load`.
pub const APP_NAMESPACE: &str = "demo";
/// The instrumented Deployments, which are also their service names.
pub const APP_SERVICES: [&str; 2] = ["frontend", "backend"];
/// Every image the demo runs (`e2e/images/build.sh`).
pub const IMAGES: [&str; 8] = [
    "operator",
    "gateway",
    "node-agent",
    "nodejs-payload",
    "demo-app",
    "prometheus",
    "tempo",
    "pyroscope",
];
/// Pulls nothing, but a cold node starts a dozen containers on 2 cores.
const ROLLOUT_TIMEOUT: &str = "--timeout=300s";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Imports the images, installs the chart, then the demo app, and waits
/// until every Deployment has rolled out. The chart is installed before the
/// app so that its webhook sees the app's pods.
pub async fn install(cluster: &NodeCluster) -> Result<(), Error> {
    cluster.import_images(&IMAGES).await?;
    let kube = cluster.control_plane();
    kube.kubectl(&["create", "namespace", NAMESPACE])?;
    helm(&[
        "install",
        RELEASE,
        &path(&repo_file("charts/vispyr")),
        "--kubeconfig",
        &path(kube.kubeconfig()),
        "--namespace",
        NAMESPACE,
        "--values",
        &path(&repo_file("e2e/demo/values.yaml")),
        "--wait",
        "--timeout=300s",
    ])?;
    kube.kubectl(&["apply", "-f", &path(&repo_file("e2e/demo-app/demo.yaml"))])?;
    for deployment in APP_SERVICES.iter().chain(&["load"]) {
        kube.kubectl(&[
            "-n",
            APP_NAMESPACE,
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            ROLLOUT_TIMEOUT,
        ])?;
    }
    Ok(())
}

/// `helm uninstall`, waiting until the release's resources are gone.
pub fn uninstall(cluster: &NodeCluster) -> Result<String, Error> {
    helm(&[
        "uninstall",
        RELEASE,
        "--kubeconfig",
        &path(cluster.control_plane().kubeconfig()),
        "--namespace",
        NAMESPACE,
        "--wait",
        "--timeout=120s",
    ])
}

/// What to open and what to ask, for a human at a shell on this machine.
pub fn instructions(cluster: &NodeCluster) -> String {
    let kubeconfig = path(cluster.control_plane().kubeconfig());
    format!(
        r#"Vispyr is running on a one-node cluster, with the demo app under load.

  export KUBECONFIG={kubeconfig}
  kubectl -n {APP_NAMESPACE} get pods              # frontend, backend (instrumented), load
  kubectl -n {APP_NAMESPACE} get pod -l app=backend -o yaml | grep -A3 vispyr   # what the webhook injected
  kubectl -n {NAMESPACE} get pods

Traces (Tempo 1.5, the newest release buildable here: found by trace ID, no search):
  kubectl -n {NAMESPACE} port-forward svc/vispyr-tempo 3200:3200 &
  kubectl -n {APP_NAMESPACE} port-forward svc/frontend 8080:8080 &
  id=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  curl -s -H "traceparent: 00-$id-00f067aa0ba902b7-01" 'http://127.0.0.1:8080/checkout?items=5'
  curl -s -H 'Accept: application/json' http://127.0.0.1:3200/api/traces/$id   # frontend and backend spans

Metrics (Prometheus):
  kubectl -n {NAMESPACE} port-forward svc/vispyr-prometheus 9090:9090
  open http://127.0.0.1:9090 and try:
    sum by (service, span_name) (rate(traces_spanmetrics_calls_total[1m]))
    histogram_quantile(0.95, sum by (service, le) (rate(traces_spanmetrics_latency_bucket[1m])))
    traces_service_graph_request_total
    node_load1

CPU profiles (Pyroscope, API only: the release has no embedded UI):
  kubectl -n {NAMESPACE} port-forward svc/vispyr-pyroscope 4040:4040
  curl -s -H 'Content-Type: application/json' http://127.0.0.1:4040/querier.v1.QuerierService/LabelValues -d '{{"name":"service_name"}}'
  curl -s -H 'Content-Type: application/json' http://127.0.0.1:4040/querier.v1.QuerierService/SelectMergeStacktraces \
    -d '{{"profileTypeID":"process_cpu:cpu:nanoseconds:cpu:nanoseconds","labelSelector":"{{service_name=\"backend\"}}","start":'$(( ($(date +%s) - 600) * 1000 ))',"end":'$(( $(date +%s) * 1000 ))'}}' \
    | grep -o computePrice | head -1    # the backend's hot JavaScript function

Grafana is not part of the demo (it cannot be built here; see e2e/images/README.md).
Stop and clean up everything with: make demo-down
"#
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
