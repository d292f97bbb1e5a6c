//! The mutating admission webhook: AdmissionReview v1 in, the patch of
//! [`inject::mutate`] out, over TLS with the operator's own certificate.
//!
//! It never refuses a pod. A pod whose opt-in cannot be honoured is admitted
//! unmodified but for one annotation that says why, with an admission warning
//! and an Event, so `kubectl describe` tells the user what to fix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::certs::ServingCert;
use crate::crd::VispyrInstrumentation;
use crate::inject::{self, Outcome, Rejection};
use crate::namespaces;

/// Path the MutatingWebhookConfiguration calls.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
/// How long in-flight admission reviews get to finish on shutdown.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Set on a pod whose opt-in could not be honoured: the reason, for humans.
pub const SKIPPED_ANNOTATION: &str = "vispyr.io/injection-skipped";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Admission metrics: what was decided, and how long it took.
#[derive(Clone)]
pub struct AdmissionMetrics {
    admissions: Family<OutcomeLabels, prometheus_client::metrics::counter::Counter>,
    latency: Histogram,
}

impl AdmissionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            admissions: Family::default(),
            // 50 µs .. ~0.4 s: the mutation alone is well under a millisecond.
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 14)),
        };
        registry.register(
            "vispyr_operator_admissions",
            "Pod admission reviews by outcome (injected, not_requested, already_injected, skipped, invalid)",
            m.admissions.clone(),
        );
        registry.register(
            "vispyr_operator_admission_duration_seconds",
            "Time to answer one admission review",
            m.latency.clone(),
        );
        m
    }
}

/// What the handler needs: the caches it reads and where it reports.
pub struct Webhook {
    pub client: Client,
    pub instrumentations: Store<VispyrInstrumentation>,
    pub namespaces: Store<Namespace>,
    pub recorder: Recorder,
    pub metrics: AdmissionMetrics,
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .with_state(webhook)
}

async fn mutate_pods(
    State(webhook): State<Arc<Webhook>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let started = Instant::now();
    let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
    let (response, outcome) = match request {
        Ok(request) => webhook.review(&request).await,
        Err(e) => (
            AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}")),
            "invalid",
        ),
    };
    webhook
        .metrics
        .admissions
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    webhook
        .metrics
        .latency
        .observe(started.elapsed().as_secs_f64());
    Json(response.into_review())
}

impl Webhook {
    async fn review(&self, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, &'static str) {
        let allow = AdmissionResponse::from(request);
        let Some(pod) = request.object.as_ref() else {
            return (allow, "not_requested");
        };
        let namespace = self.namespace(request, pod).await;
        let mut outcome = inject::mutate(pod, &namespace, &self.instrumentations);
        if matches!(
            outcome,
            Outcome::Rejected(
                Rejection::InstrumentationNotFound { .. } | Rejection::NoInstrumentation { .. }
            )
        ) {
            // The cache may lag an instrumentation created a moment ago.
            if let Ok(fresh) = Api::<VispyrInstrumentation>::all(self.client.clone())
                .list(&ListParams::default())
                .await
            {
                let fresh: Vec<_> = fresh.items.into_iter().map(Arc::new).collect();
                outcome = inject::mutate(pod, &namespace, fresh.as_slice());
            }
        }
        let pod_name = pod
            .metadata
            .name
            .clone()
            .or(pod.metadata.generate_name.clone())
            .unwrap_or_default();
        match outcome {
            Outcome::NotRequested => (allow, "not_requested"),
            Outcome::AlreadyInjected { .. } => (allow, "already_injected"),
            Outcome::Patched(injection) => {
                tracing::info!(
                    namespace = request.namespace.as_deref().unwrap_or_default(),
                    pod = %pod_name,
                    instrumentation = %injection.instrumentation,
                    containers = ?injection.containers,
                    "injecting Node.js instrumentation"
                );
                for warning in &injection.warnings {
                    self.event(
                        pod,
                        request,
                        EventType::Warning,
                        "InjectionWarning",
                        warning,
                    );
                }
                match allow.with_patch(injection.patch) {
                    Ok(r) => (with_warnings(r, injection.warnings), "injected"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialize the injection patch");
                        (AdmissionResponse::from(request), "invalid")
                    }
                }
            }
            Outcome::Rejected(why) => {
                let message = format!("Node.js instrumentation not injected: {why}");
                tracing::warn!(namespace = request.namespace.as_deref().unwrap_or_default(), pod = %pod_name, reason = why.reason(), "{message}");
                self.event(pod, request, EventType::Warning, why.reason(), &message);
                let patch = skipped_patch(pod, &message);
                let response = allow
                    .with_patch(patch)
                    .unwrap_or_else(|_| AdmissionResponse::from(request));
                (with_warnings(response, vec![message]), "skipped")
            }
        }
    }

    async fn namespace(&self, request: &AdmissionRequest<Pod>, pod: &Pod) -> Arc<Namespace> {
        let name = request
            .namespace
            .clone()
            .or(pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        match namespaces::get(&self.client, &self.namespaces, &name).await {
            Ok(ns) => ns,
            Err(e) => {
                // Without the namespace its annotation cannot opt the pod in;
                // the pod's own annotation still can.
                tracing::warn!(namespace = %name, error = %e, "cannot read namespace");
                let mut ns = Namespace::default();
                ns.metadata.name = Some(name);
                Arc::new(ns)
            }
        }
    }

    /// Records an Event about the pod's owner, or the pod when it has none:
    /// at admission the pod does not exist yet, and a pod of a ReplicaSet has
    /// no name before it is stored, while its owner is where users look.
    fn event(
        &self,
        pod: &Pod,
        request: &AdmissionRequest<Pod>,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let namespace = request.namespace.clone().or(pod.metadata.namespace.clone());
        let reference = match pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        {
            Some(owner) => ObjectReference {
                api_version: Some(owner.api_version.clone()),
                kind: Some(owner.kind.clone()),
                name: Some(owner.name.clone()),
                uid: Some(owner.uid.clone()),
                namespace,
                ..Default::default()
            },
            None => ObjectReference {
                api_version: Some(Pod::api_version(&()).into_owned()),
                kind: Some(Pod::kind(&()).into_owned()),
                name: pod
                    .metadata
                    .name
                    .clone()
                    .or_else(|| Some(request.name.clone()).filter(|n| !n.is_empty())),
                namespace,
                ..Default::default()
            },
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1024).collect()),
            action: "InjectNodejs".to_string(),
            secondary: None,
        };
        // Published after the review is answered: the apiserver waits for the
        // webhook, and an Event write is one more apiserver round trip.
        let recorder = self.recorder.clone();
        let reason = event.reason.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, reason, "cannot record Event");
            }
        });
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response
            .warnings
            .get_or_insert_with(Vec::new)
            .extend(warnings);
    }
    response
}

fn skipped_patch(pod: &Pod, message: &str) -> json_patch::Patch {
    let op = if pod.metadata.annotations.is_some() {
        json!({"op": "add", "path": format!("/metadata/annotations/{}", SKIPPED_ANNOTATION.replace('/', "~1")), "value": message})
    } else {
        json!({"op": "add", "path": "/metadata/annotations", "value": {SKIPPED_ANNOTATION: message}})
    };
    serde_json::from_value(json!([op])).expect("a well-formed JSON patch")
}

/// Serves `router` over TLS on `addr` with the certificate `serving` holds at
/// each handshake, so rotation needs no restart. Returns once bound.
pub async fn serve_tls(
    addr: SocketAddr,
    serving: Arc<ServingCert>,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(serving);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    tracing::info!(%bound, "webhook listening");
    let task = tokio::spawn(async move {
        // Tracks open connections: the apiserver keeps them alive, and a
        // stopped operator must not go on answering through them.
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                () = shutdown.cancelled() => break,
            };
            // An answer is one small write after the apiserver's request;
            // Nagle's algorithm would hold it back behind a delayed ACK.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
            }
            let (acceptor, router, watcher) =
                (acceptor.clone(), router.clone(), graceful.watcher());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let conn = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "webhook connection ended");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("webhook connections still open after {DRAIN_TIMEOUT:?}; dropping them");
        }
    });
    Ok((bound, task))
}
