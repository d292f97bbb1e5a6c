//! The Helm chart's operator objects on a real apiserver: they lint, render,
//! apply, and the operator does its real work with exactly the chart's RBAC
//! (impersonating its ServiceAccount), while being refused what it must not do.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vispyr_e2e::process::free_port;
use vispyr_e2e::{TestCluster, assert_forbidden, eventually};
use vispyr_operator::crd::VispyrInstrumentation;
use vispyr_operator::webhook::MUTATE_PODS_PATH;

mod support;
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/vispyr");
const SERVICE_ACCOUNT: &str = "system:serviceaccount:vispyr-system:vispyr-operator";

fn helm(args: &[&str]) -> String {
    vispyr_e2e::helm(args).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let generated = include_str!("../../crds/vispyr.io_vispyrinstrumentations.yaml");
    let in_chart = std::fs::read_to_string(format!(
        "{CHART}/crds/vispyr.io_vispyrinstrumentations.yaml"
    ))
    .unwrap();
    assert!(
        in_chart == generated,
        "charts/vispyr/crds differs from crds/: run `make crds`"
    );
}

#[tokio::test]
async fn operator_works_with_exactly_the_charts_rbac() {
    helm(&["lint", "--strict", CHART]);
    let rendered = helm(&[
        "template",
        "vispyr",
        CHART,
        "--namespace",
        SYSTEM_NS,
        "--include-crds",
        "--kube-version",
        "1.36.3",
        // Its VispyrInstrumentation cannot be applied in the same request as
        // the CRD (e2e/tests/chart.rs applies it after the CRD is established).
        "--set",
        "instrumentation.enabled=false",
    ]);

    let cluster = TestCluster::start().await.expect("control plane starts");
    let admin = cluster.client();
    create_namespace(&admin, SYSTEM_NS, Default::default()).await;
    let file = cluster.dir().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    cluster
        .kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .expect("every rendered object applies");

    // No kube-proxy here to reach the Service: point the chart's webhook at
    // the in-process operator instead, the only change to what was applied.
    let port = free_port();
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .patch(
            "vispyr-operator",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/webhooks/0/clientConfig",
                    "value": {"url": format!("https://127.0.0.1:{port}{MUTATE_PODS_PATH}")}}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();

    let operator_client = cluster
        .client_as(
            SERVICE_ACCOUNT,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:vispyr-system",
                "system:authenticated",
            ],
        )
        .await
        .unwrap();
    let operator = start_operator_as(operator_client.clone(), port).await;

    // Its real work: certificate Secret, CA bundle, injection, status, Events.
    create_namespace(&admin, "shop", Default::default()).await;
    let vis: Api<VispyrInstrumentation> = Api::namespaced(admin.clone(), "shop");
    vis.create(
        &PostParams::default(),
        &instrumentation("shop", "node", "manual"),
    )
    .await
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), "shop")
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .unwrap();
    assert!(
        pod.spec.unwrap().init_containers.is_some(),
        "injected by the operator running with the chart's RBAC"
    );
    let bad = Api::<Pod>::namespaced(admin.clone(), "shop")
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "nope"})),
        )
        .await
        .unwrap();
    assert!(
        bad.metadata
            .annotations
            .unwrap()
            .contains_key("vispyr.io/injection-skipped")
    );
    eventually(WAIT, || async {
        let status = vis
            .get("node")
            .await
            .map_err(|e| e.to_string())?
            .status
            .ok_or("no status")?;
        if status.instrumented_pods == 1 {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
    .expect("the controller writes status with the chart's RBAC");

    // What it must not do.
    assert_forbidden(
        "operator lists Secrets of another namespace",
        Api::<Secret>::namespaced(operator_client.clone(), "default")
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "operator reads a Secret of an instrumented namespace",
        Api::<Secret>::namespaced(operator_client.clone(), "shop")
            .get("anything")
            .await,
    );
    assert_forbidden(
        "operator lists webhook configurations other than its own",
        Api::<MutatingWebhookConfiguration>::all(operator_client.clone())
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "operator deletes a pod",
        Api::<Pod>::namespaced(operator_client.clone(), "shop")
            .delete("x", &Default::default())
            .await,
    );
    operator.stop().await;
}

#[test]
fn chart_refuses_bad_values_naming_them() {
    let err = vispyr_e2e::helm(&[
        "template",
        "vispyr",
        CHART,
        "--kube-version",
        "1.36.3",
        "--set",
        "operator.replica=2",
    ])
    .expect_err("a misspelt value must not render")
    .to_string();
    assert!(err.contains("replica"), "{err}");
}
