//! The harness's control plane is a real one: it stores objects, serves CRDs,
//! enforces RBAC and calls admission webhooks served by the test process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use vispyr_e2e::{TestCluster, eventually};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn creates_namespace_and_serves_a_crd() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let client = cluster.client();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "smoke"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    assert_eq!(namespaces.get("smoke").await.unwrap().name_any(), "smoke");

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "widgets.e2e.vispyr.io"},
        "spec": {
            "group": "e2e.vispyr.io",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"type": "object",
                        "properties": {"size": {"type": "integer", "minimum": 1}}}}
                }}
            }]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("CRD created");

    let gvk = GroupVersionKind::gvk("e2e.vispyr.io", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "smoke", &ApiResource::from_gvk(&gvk));
    let widget = |name: &str, size: i64| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "e2e.vispyr.io/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}
        }))
        .unwrap()
    };
    // The CRD is served only once it is Established; until then creates 404.
    let (ok, pp) = (widget("ok", 3), PostParams::default());
    eventually(WAIT, || widgets.create(&pp, &ok))
        .await
        .expect("custom resource created once the CRD is established");

    let err = widgets
        .create(&PostParams::default(), &widget("bad", 0))
        .await
        .expect_err("schema validation refuses size 0");
    assert!(
        err.to_string().contains("spec.size"),
        "error names the field: {err}"
    );

    let listed = cluster
        .kubectl(&["get", "widgets", "-n", "smoke", "-o", "name"])
        .expect("kubectl works");
    assert_eq!(listed.trim(), "widget.e2e.vispyr.io/ok");
}

#[tokio::test]
async fn enforces_rbac_for_impersonated_identities() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let nobody = cluster
        .client_as(
            "system:serviceaccount:default:nobody",
            &["system:serviceaccounts"],
        )
        .await
        .unwrap();
    let err = Api::<Secret>::namespaced(nobody, "default")
        .list(&ListParams::default())
        .await
        .expect_err("a service account with no role cannot list secrets");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected a 403 from RBAC, got {other}"),
    }
    // The admin identity is allowed the same call.
    Api::<Secret>::namespaced(cluster.client(), "default")
        .list(&ListParams::default())
        .await
        .expect("cluster-admin lists secrets");
}

/// The apiserver reaches a webhook served by the test process over TLS at a
/// URL on loopback, and stores what the webhook's patch made of the object.
#[tokio::test]
async fn calls_a_webhook_served_by_the_test_process() {
    let cluster = TestCluster::start().await.expect("control plane starts");
    let (addr, ca) = serve_labelling_webhook().await;

    let config: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "e2e-labeller"},
        "webhooks": [{
            "name": "labeller.e2e.vispyr.io",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://{addr}/mutate"), "caBundle": base64(&ca)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"e2e": "label-me"}}
        }]
    }))
    .unwrap();
    let gvk = GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
    );
    Api::<DynamicObject>::all_with(cluster.client(), &ApiResource::from_gvk(&gvk))
        .create(&PostParams::default(), &config)
        .await
        .expect("webhook configuration created");

    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    // The apiserver picks up new webhook configurations asynchronously.
    let stored = eventually(WAIT, || async {
        let name = format!(
            "cm-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"e2e": "label-me"}}}),
        )
        .unwrap();
        let created = configmaps
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| e.to_string())?;
        match created.labels().get("mutated-by") {
            Some(_) => Ok(created),
            None => Err(format!("not mutated yet: {:?}", created.labels())),
        }
    })
    .await
    .expect("the webhook's patch is applied");
    assert_eq!(
        stored.labels().get("mutated-by").map(String::as_str),
        Some("e2e-webhook")
    );
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Serves `POST /mutate` over TLS on 127.0.0.1, answering every AdmissionReview
/// with a JSON patch that adds a label. Returns its address and CA PEM.
async fn serve_labelling_webhook() -> (SocketAddr, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.self_signed(&key).unwrap();

    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let app = axum::Router::new().route(
        "/mutate",
        axum::routing::post(|axum::Json(review): axum::Json<serde_json::Value>| async move {
            let patch = json!([{"op": "add", "path": "/metadata/labels/mutated-by", "value": "e2e-webhook"}]);
            axum::Json(json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64(&patch.to_string()),
                }
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, cert.pem())
}
