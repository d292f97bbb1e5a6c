//! What the operator's cluster tests and benchmarks share: the chart's
//! objects on a test control plane, and the operator started in-process.
#![allow(dead_code)] // each test or bench binary uses its own subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vispyr_e2e::{TestCluster, eventually};
use vispyr_operator::crd::VispyrInstrumentation;
use vispyr_operator::service::{self, Config};
use vispyr_operator::webhook::MUTATE_PODS_PATH;

pub const WAIT: Duration = Duration::from_secs(30);
pub const SYSTEM_NS: &str = "vispyr-system";

pub struct Operator {
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.done)
            .await
            .expect("operator drains in time")
            .unwrap();
    }
}

/// CRD, namespaces and the webhook configuration as the chart installs them
/// (but with a URL on loopback and no caBundle: the operator publishes it).
pub async fn install(cluster: &TestCluster, webhook_port: u16) {
    let client = cluster.client();
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/vispyr.io_vispyrinstrumentations.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .unwrap();
    for ns in [SYSTEM_NS, "shop", "auto", "plain"] {
        create_namespace(&client, ns, BTreeMap::new()).await;
    }
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "vispyr-operator"},
        "webhooks": [{
            "name": "nodejs.inject.vispyr.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "reinvocationPolicy": "Never",
            "clientConfig": {"url": format!("https://127.0.0.1:{webhook_port}{MUTATE_PODS_PATH}")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", SYSTEM_NS, "plain"]}]}
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client)
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

pub async fn create_namespace(client: &Client, name: &str, annotations: BTreeMap<String, String>) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
            .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

pub async fn start_operator(cluster: &TestCluster, webhook_port: u16) -> Operator {
    start_operator_as(cluster.client(), webhook_port).await
}

/// The operator with the identity of `client` (e.g. the chart's ServiceAccount).
pub async fn start_operator_as(client: Client, webhook_port: u16) -> Operator {
    let config = Config {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        webhook_addr: SocketAddr::from(([127, 0, 0, 1], webhook_port)),
        namespace: SYSTEM_NS.into(),
        webhook_dns_names: vec!["localhost".into(), "127.0.0.1".into()],
        identity: "test-operator".into(),
        cert_check_interval_secs: 1,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let (admin, _, done) = service::start(client, config, shutdown.clone())
        .await
        .expect("operator starts");
    let done = tokio::spawn(done);
    let http = reqwest::Client::new();
    eventually(WAIT, || async {
        let r = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(r.status().to_string())
        }
    })
    .await
    .expect("operator becomes ready");
    Operator {
        admin,
        shutdown,
        done,
    }
}

pub fn instrumentation(ns: &str, name: &str, rollout: &str) -> VispyrInstrumentation {
    serde_json::from_value(json!({
        "apiVersion": "vispyr.io/v1alpha1", "kind": "VispyrInstrumentation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "exporter": {"endpoint": "http://vispyr-gateway.vispyr-system.svc:4318"},
            "nodejs": {"image": "vispyr/instrumentation-nodejs:test"},
            "sampler": {"type": "parentbased_traceidratio", "argument": "0.5"},
            "rollout": {"mode": rollout}
        }
    }))
    .unwrap()
}

/// A pod as a ReplicaSet of Deployment `app` would create it.
pub fn replicaset_pod(annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "generateName": "checkout-5d9c7b8f4-",
            "labels": {"app": "checkout", "pod-template-hash": "5d9c7b8f4"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-5d9c7b8f4",
                "uid": "0b5c2d8e-6a8f-4a53-9d7e-2f1c3b4a5d6e", "controller": true}]
        },
        "spec": {"containers": [{"name": "checkout", "image": "node:20", "env": [{"name": "NODE_OPTIONS", "value": "--max-old-space-size=256"}]}]}
    }))
    .unwrap()
}

/// A Deployment `name` whose pod template carries `annotations`.
pub fn deployment(name: &str, annotations: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": name, "image": "node:20"}]}
            }
        }
    }))
    .unwrap()
}
