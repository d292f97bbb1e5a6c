//! The operator against a real kube-apiserver: the apiserver calls its
//! webhook over TLS (with the CA bundle the operator published itself),
//! stores what it injected, refuses bad CRs, and the controller keeps status
//! and rolls workloads.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vispyr_e2e::process::free_port;
use vispyr_e2e::{TestCluster, eventually};
use vispyr_operator::controller::ROLLOUT_ANNOTATION;
use vispyr_operator::crd::VispyrInstrumentation;
use vispyr_operator::inject::{INIT_CONTAINER_NAME, INJECTED_ANNOTATION, INJECTED_LABEL};
use vispyr_operator::webhook::SKIPPED_ANNOTATION;

mod support;
use support::*;

fn env_of(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[tokio::test]
async fn webhook_injects_through_the_real_apiserver() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let port = free_port();
    install(&cluster, port).await;
    let operator = start_operator(&cluster, port).await;
    let client = cluster.client();

    // The operator published its CA bundle into the configuration.
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("vispyr-operator")
        .await
        .unwrap();
    let bundle = config.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("caBundle published");
    assert!(String::from_utf8_lossy(&bundle.0).contains("BEGIN CERTIFICATE"));

    let vis: Api<VispyrInstrumentation> = Api::namespaced(client.clone(), "shop");
    vis.create(
        &PostParams::default(),
        &instrumentation("shop", "node", "manual"),
    )
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let injected = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .expect("annotated pod admitted");
    let spec = injected.spec.as_ref().unwrap();
    let init = spec
        .init_containers
        .as_ref()
        .expect("init container injected");
    assert_eq!(init[0].name, INIT_CONTAINER_NAME);
    assert_eq!(
        init[0].image.as_deref(),
        Some("vispyr/instrumentation-nodejs:test")
    );
    assert_eq!(
        injected
            .annotations()
            .get(INJECTED_ANNOTATION)
            .map(String::as_str),
        Some("shop/node")
    );
    assert_eq!(
        injected.labels().get(INJECTED_LABEL).map(String::as_str),
        Some("true")
    );
    let node_options = env_of(&injected, "NODE_OPTIONS").unwrap();
    assert!(
        node_options.starts_with("--require /vispyr-instrumentation/register.cjs"),
        "{node_options}"
    );
    assert!(
        node_options.ends_with("--max-old-space-size=256"),
        "the app's own flag is kept: {node_options}"
    );
    assert_eq!(
        env_of(&injected, "OTEL_SERVICE_NAME").as_deref(),
        Some("checkout")
    );
    assert_eq!(
        env_of(&injected, "OTEL_TRACES_SAMPLER_ARG").as_deref(),
        Some("0.5")
    );

    let plain = pods
        .create(&PostParams::default(), &replicaset_pod(json!({})))
        .await
        .unwrap();
    assert!(
        plain.spec.as_ref().unwrap().init_containers.is_none(),
        "unannotated pod untouched"
    );
    assert!(plain.annotations().is_empty() && !plain.labels().contains_key(INJECTED_LABEL));

    // A bad annotation: admitted, uninstrumented, and told why.
    let bad = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "yes please"})),
        )
        .await
        .unwrap();
    assert!(bad.spec.as_ref().unwrap().init_containers.is_none());
    let why = bad
        .annotations()
        .get(SKIPPED_ANNOTATION)
        .expect("the pod says why it was not injected");
    assert!(why.contains("yes please"), "{why}");
    let events: Api<Event> = Api::namespaced(client.clone(), "shop");
    let event = eventually(WAIT, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidAnnotation"))
            .ok_or_else(|| "no InvalidAnnotation event yet".to_string())
    })
    .await
    .expect("an Event records the skipped injection");
    assert_eq!(
        event.regarding.and_then(|r| r.kind).as_deref(),
        Some("ReplicaSet")
    );
    assert!(event.note.unwrap_or_default().contains("yes please"));

    // A missing instrumentation by name: admitted unmodified with a reason.
    let missing = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "nope"})),
        )
        .await
        .unwrap();
    assert!(missing.annotations()[SKIPPED_ANNOTATION].contains("shop/nope"));

    // The admin endpoint counts what happened.
    let metrics = reqwest::get(format!("http://{}/metrics", operator.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vispyr_operator_admissions_total{outcome=\"injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vispyr_operator_admissions_total{outcome=\"skipped\"} 2"),
        "{metrics}"
    );

    // Rotation: a certificate inside its renewal window is replaced; the
    // published bundle keeps the previous CA, and injection goes on.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NS);
    let soon = (std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let before = secrets.get("vispyr-operator-webhook-tls").await.unwrap();
    secrets
        .patch(
            "vispyr-operator-webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"vispyr.io/not-after": soon.to_string()}}}),
            ),
        )
        .await
        .unwrap();
    eventually(WAIT, || async {
        let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get("vispyr-operator")
            .await
            .map_err(|e| e.to_string())?;
        let bundle = config.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .clone()
            .unwrap_or_default();
        match String::from_utf8_lossy(&bundle.0)
            .matches("BEGIN CERTIFICATE")
            .count()
        {
            2 => Ok(()),
            n => Err(format!("{n} CA certificates published")),
        }
    })
    .await
    .expect("the rotated bundle holds the new and the previous CA");
    let after = secrets.get("vispyr-operator-webhook-tls").await.unwrap();
    assert_ne!(
        before.data.as_ref().unwrap()["tls.crt"],
        after.data.as_ref().unwrap()["tls.crt"],
        "a new certificate was issued"
    );
    let rotated = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .unwrap();
    assert!(
        rotated.spec.as_ref().unwrap().init_containers.is_some(),
        "injected with the rotated certificate"
    );

    // With the operator gone, pods are still admitted (failurePolicy Ignore).
    operator.stop().await;
    let after = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .expect("pods are admitted while the operator is down");
    assert!(after.spec.as_ref().unwrap().init_containers.is_none());
}

#[tokio::test]
async fn apiserver_refuses_invalid_instrumentations_naming_the_field() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    install(&cluster, free_port()).await;
    let vis: Api<VispyrInstrumentation> = Api::namespaced(cluster.client(), "shop");
    let mut bad = instrumentation("shop", "bad", "manual");
    bad.spec.exporter.endpoint = "gateway:4318".into();
    let created = eventually(WAIT, || async {
        match vis.create(&PostParams::default(), &bad).await {
            // 404 until the CRD is established.
            Err(kube::Error::Api(s)) if s.code == 404 => Err("CRD not served yet".to_string()),
            other => Ok(other),
        }
    })
    .await
    .unwrap();
    let err = created
        .expect_err("an endpoint without a scheme is refused")
        .to_string();
    assert!(err.contains("exporter.endpoint"), "{err}");

    let mut ratio = instrumentation("shop", "ratio", "manual");
    ratio.spec.sampler.as_mut().unwrap().argument = Some("1.5".into());
    let err = vis
        .create(&PostParams::default(), &ratio)
        .await
        .expect_err("ratio above 1 refused")
        .to_string();
    assert!(err.contains("sampler"), "{err}");
}

#[tokio::test]
async fn controller_reports_status_and_rolls_opted_in_workloads() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let port = free_port();
    install(&cluster, port).await;
    let client = cluster.client();

    // A Deployment that opted in before the operator and its CR existed.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "auto");
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .unwrap();
    let untouched = deployment("other", json!({}));
    deployments
        .create(&PostParams::default(), &untouched)
        .await
        .unwrap();

    let operator = start_operator(&cluster, port).await;
    let vis: Api<VispyrInstrumentation> = Api::namespaced(client.clone(), "auto");
    vis.create(
        &PostParams::default(),
        &instrumentation("auto", "node", "automatic"),
    )
    .await
    .unwrap();

    let template_annotation = |d: &Deployment| {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(ROLLOUT_ANNOTATION)
            .cloned()
    };
    let marker = eventually(WAIT, || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        template_annotation(&d).ok_or_else(|| "no rollout yet".to_string())
    })
    .await
    .expect("the opted-in Deployment gets a rollout annotation");
    assert_eq!(marker, "auto/node@1");
    assert_eq!(
        template_annotation(&deployments.get("other").await.unwrap()),
        None,
        "only opted-in workloads roll"
    );

    // An injected pod of the instrumentation is counted in its status.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "auto");
    pods.create(
        &PostParams::default(),
        &replicaset_pod(json!({"vispyr.io/inject-nodejs": "node"})),
    )
    .await
    .unwrap();
    let status = eventually(WAIT, || async {
        let vi = vis.get("node").await.map_err(|e| e.to_string())?;
        let status = vi.status.clone().ok_or("no status")?;
        if status.instrumented_pods == 1 && status.observed_generation == vi.metadata.generation {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
    .expect("status counts the injected pod");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True");

    // A change of the CR: observedGeneration follows and workloads roll again.
    vis.patch(
        "node",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"sampler": {"type": "always_on", "argument": null}}})),
    )
    .await
    .unwrap();
    eventually(WAIT, || async {
        let vi = vis.get("node").await.map_err(|e| e.to_string())?;
        let observed = vi.status.as_ref().and_then(|s| s.observed_generation);
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        match (observed, template_annotation(&d)) {
            (Some(2), Some(m)) if m == "auto/node@2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("generation 2 observed and rolled out");
    operator.stop().await;
}

/// Pods of a Deployment that crash-loop after injection: reported in the
/// status and, with rollbackOnCrashLoop, the Deployment is opted out.
#[tokio::test]
async fn crash_looping_injected_pods_are_reported_and_rolled_back() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let port = free_port();
    install(&cluster, port).await;
    let client = cluster.client();
    let operator = start_operator(&cluster, port).await;

    let mut vi = instrumentation("auto", "node", "automatic");
    vi.spec.rollout.rollback_on_crash_loop = true;
    let vis: Api<VispyrInstrumentation> = Api::namespaced(client.clone(), "auto");
    vis.create(&PostParams::default(), &vi).await.unwrap();

    // Deployment -> ReplicaSet -> Pod, as the controllers would create them.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "auto");
    let deployment = deployments
        .create(
            &PostParams::default(),
            &deployment("checkout", json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "checkout-5d9c7b8f4", "labels": {"app": "checkout", "pod-template-hash": "5d9c7b8f4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout",
                "uid": deployment.uid().unwrap(), "controller": true}]},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout", "pod-template-hash": "5d9c7b8f4"}},
            "template": {"metadata": {"labels": {"app": "checkout", "pod-template-hash": "5d9c7b8f4"}},
                "spec": {"containers": [{"name": "checkout", "image": "node:20"}]}}
        }
    }))
    .unwrap();
    Api::<ReplicaSet>::namespaced(client.clone(), "auto")
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "auto");
    let pod = pods
        .create(
            &PostParams::default(),
            &replicaset_pod(json!({"vispyr.io/inject-nodejs": "true"})),
        )
        .await
        .unwrap();
    assert!(
        pod.spec.as_ref().unwrap().init_containers.is_some(),
        "injected"
    );

    // What the kubelet would report for a container that keeps crashing.
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": "checkout", "image": "node:20", "imageID": "", "ready": false, "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting failed container"}}
        }]}})),
    )
    .await
    .unwrap();
    // Pods are not watched: a change of the CR makes the controller look now.
    vis.patch(
        "node",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
    )
    .await
    .unwrap();

    let condition = eventually(WAIT, || async {
        let vi = vis.get("node").await.map_err(|e| e.to_string())?;
        let conditions = vi.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .into_iter()
            .find(|c| c.type_ == "InjectedPodsHealthy" && c.status == "False")
            .ok_or_else(|| "crash loop not reported yet".to_string())
    })
    .await
    .expect("status reports the crash-looping pod");
    assert!(
        condition.message.contains(&pod.name_any()),
        "{}",
        condition.message
    );

    let opted_out = eventually(WAIT, || async {
        let d = deployments
            .get("checkout")
            .await
            .map_err(|e| e.to_string())?;
        let annotations = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        match annotations
            .get("vispyr.io/inject-nodejs")
            .map(String::as_str)
        {
            Some("false") => Ok(()),
            other => Err(format!("template opt-in is {other:?}")),
        }
    })
    .await;
    opted_out.expect("the Deployment is rolled back to uninstrumented pods");
    operator.stop().await;
}

/// One leader at a time; a leader that shuts down hands over at once.
#[tokio::test]
async fn leader_election_hands_over_on_shutdown() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use vispyr_operator::leader::{LeaseConfig, run_as_leader};

    let cluster = TestCluster::start().await.expect("control plane starts");
    let leading = Arc::new(AtomicUsize::new(0));
    let (first_led, second_led) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let candidate = |identity: &str, led: Arc<AtomicUsize>, stop: CancellationToken| {
        let cfg = LeaseConfig {
            namespace: "default".into(),
            name: "vispyr-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
        };
        let leading = leading.clone();
        tokio::spawn(run_as_leader(cluster.client(), cfg, stop, move |lost| {
            let (leading, led) = (leading.clone(), led.clone());
            async move {
                assert_eq!(
                    leading.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two leaders at once"
                );
                led.fetch_add(1, Ordering::SeqCst);
                lost.cancelled().await;
                leading.fetch_sub(1, Ordering::SeqCst);
            }
        }))
    };
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let first = candidate("first", first_led.clone(), stop_first.clone());
    eventually(WAIT, || async {
        if first_led.load(Ordering::SeqCst) == 1 {
            Ok(())
        } else {
            Err("first not leading yet")
        }
    })
    .await
    .unwrap();
    let second = candidate("second", second_led.clone(), stop_second.clone());
    // The lease is held and renewed: the second candidate waits.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        second_led.load(Ordering::SeqCst),
        0,
        "second must not lead while first holds the lease"
    );

    stop_first.cancel();
    first.await.unwrap().unwrap();
    // Released on shutdown: the second takes over well before the 15 s expiry.
    eventually(Duration::from_secs(12), || async {
        if second_led.load(Ordering::SeqCst) == 1 {
            Ok(())
        } else {
            Err("second not leading yet")
        }
    })
    .await
    .expect("the second candidate takes over after the first releases the lease");
    stop_second.cancel();
    second.await.unwrap().unwrap();
}
