//! Reconciles each `VispyrInstrumentation`: its status (Ready, observed
//! generation, instrumented pods, crash-looping injected pods) and, in rollout
//! mode `automatic`, restarts the opted-in workloads whose pods were not
//! injected with the instrumentation's current generation.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::crd::{RolloutMode, VispyrInstrumentation, VispyrInstrumentationStatus};
use crate::inject::{self, INJECTED_ANNOTATION, INJECTED_LABEL, Outcome};
use crate::{Error, namespaces};

/// Pod-template annotation the controller sets to roll a workload: the
/// instrumentation and generation its pods must be injected with.
pub const ROLLOUT_ANNOTATION: &str = "vispyr.io/rollout-for";
/// Everything is reconciled this often even when nothing we watch changes:
/// the workloads a rollout restarts are not watched.
const RESYNC: Duration = Duration::from_secs(30);
/// Injected pods that change trigger a status refresh at most this often: a
/// rollout of many pods costs one status write a second, not one a pod.
const POD_TRIGGER_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: Counter,
    errors: Counter,
    duration: Histogram,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            errors: Counter::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        registry.register(
            "vispyr_operator_reconciles",
            "VispyrInstrumentation reconciliations",
            m.reconciles.clone(),
        );
        registry.register(
            "vispyr_operator_reconcile_errors",
            "Failed reconciliations",
            m.errors.clone(),
        );
        registry.register(
            "vispyr_operator_reconcile_duration_seconds",
            "Time of one reconciliation",
            m.duration.clone(),
        );
        m
    }
}

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    /// The namespace cache the webhook also reads.
    pub namespaces: Store<Namespace>,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
}

/// What the reconciler reads during one term as leader.
struct Term {
    ctx: Arc<Context>,
    /// The injected pods (label [`INJECTED_LABEL`]), trimmed by [`trim`].
    pods: Store<Pod>,
}

/// Runs the controller until `stop` is cancelled.
pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let client = ctx.client.clone();
    // One watch of the injected pods feeds every reconcile, instead of a
    // cluster-wide list of them per instrumentation and resync, whose decoding
    // also held up the webhook sharing this runtime.
    let (pods, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let pod_watch = {
        let changed = changed.clone();
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true")),
        )
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .touched_objects()
        .for_each(move |pod| {
            if pod.is_ok() {
                changed.notify_one();
            }
            async {}
        })
    };
    // Changes during the pause leave one stored permit: the next refresh
    // follows the pause, so none is lost and bursts coalesce.
    let pod_changes = futures::stream::unfold(changed, |changed| async move {
        changed.notified().await;
        tokio::time::sleep(POD_TRIGGER_INTERVAL).await;
        Some(((), changed))
    });
    let instrumentations: Api<VispyrInstrumentation> = Api::all(client.clone());
    let controller = Controller::new(instrumentations, watcher::Config::default())
        .reconcile_all_on(pod_changes)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(Term { ctx, pods }))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        });
    // The pod watch never ends by itself; it stops with the controller.
    tokio::select! {
        () = controller => {}
        () = pod_watch => {}
    }
}

/// What the status needs of a pod: metadata (owner, annotations) and the
/// container states; the spec and managed fields are most of its size.
fn trim(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
}

fn error_policy(_vi: Arc<VispyrInstrumentation>, error: &Error, term: Arc<Term>) -> Action {
    term.ctx.metrics.errors.inc();
    tracing::warn!(error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(vi: Arc<VispyrInstrumentation>, term: Arc<Term>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    term.ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&vi, &term).await;
    term.ctx
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(vi: &VispyrInstrumentation, term: &Term) -> Result<Action, Error> {
    let ctx = &*term.ctx;
    // Before the watch's first list the cache is empty, not the cluster.
    term.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::PodCacheClosed)?;
    let key = format!("{}/{}", vi.namespace().unwrap_or_default(), vi.name_any());
    let injected: Vec<Arc<Pod>> = term
        .pods
        .state()
        .into_iter()
        .filter(|p| p.annotations().get(INJECTED_ANNOTATION) == Some(&key))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let looping: Vec<&Pod> = injected
        .iter()
        .map(|p| &**p)
        .filter(|p| crash_looping(p))
        .collect();
    let looping_names: Vec<String> = looping.iter().map(|p| p.name_any()).collect();

    let mut rolled = Vec::new();
    if vi.spec.rollout.mode == RolloutMode::Automatic {
        let marker = rollout_marker(vi);
        rolled.extend(
            roll::<Deployment>(ctx, vi, &key, &marker, |d| {
                d.spec.as_mut().map(|s| &mut s.template)
            })
            .await?,
        );
        rolled.extend(
            roll::<StatefulSet>(ctx, vi, &key, &marker, |d| {
                d.spec.as_mut().map(|s| &mut s.template)
            })
            .await?,
        );
        rolled.extend(
            roll::<DaemonSet>(ctx, vi, &key, &marker, |d| {
                d.spec.as_mut().map(|s| &mut s.template)
            })
            .await?,
        );
    }
    for workload in &rolled {
        tracing::info!(instrumentation = %key, %workload, "rolled workload to (re)inject it");
    }
    if vi.spec.rollout.rollback_on_crash_loop {
        for pod in &looping {
            roll_back(ctx, pod, &key).await?;
        }
    }

    let generation = vi.metadata.generation;
    let previous = vi.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        // lastTransitionTime moves only when the status does.
        let since = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        }
    };
    let healthy = looping.is_empty();
    let status = VispyrInstrumentationStatus {
        conditions: vec![
            condition(
                "Ready",
                true,
                "Reconciled",
                format!("{} pod(s) instrumented", injected.len()),
            ),
            condition(
                "InjectedPodsHealthy",
                healthy,
                if healthy {
                    "NoCrashLoop"
                } else {
                    "CrashLoopBackOff"
                },
                if healthy {
                    "no injected pod is crash-looping".to_string()
                } else {
                    format!("injected pods crash-looping: {}", looping_names.join(", "))
                },
            ),
        ],
        observed_generation: generation,
        instrumented_pods: injected.len().try_into().unwrap_or(i32::MAX),
    };
    if vi.status.as_ref() != Some(&status) {
        let api: Api<VispyrInstrumentation> =
            Api::namespaced(ctx.client.clone(), &vi.namespace().unwrap_or_default());
        api.patch_status(
            &vi.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    if !healthy
        && previous
            .conditions
            .iter()
            .all(|c| c.type_ != "InjectedPodsHealthy" || c.status == "True")
    {
        publish(
            ctx,
            vi.object_ref(&()),
            EventType::Warning,
            "CrashLoopBackOff",
            format!("injected pods crash-looping: {}", looping_names.join(", ")),
        )
        .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// What the rollout annotation must say for pods injected with `vi` as it is now.
fn rollout_marker(vi: &VispyrInstrumentation) -> String {
    format!(
        "{}/{}@{}",
        vi.namespace().unwrap_or_default(),
        vi.name_any(),
        vi.metadata.generation.unwrap_or(0)
    )
}

/// Sets the rollout annotation on the pod template of every workload of kind
/// `K` that opts into `vi` and does not carry the current marker yet.
async fn roll<K>(
    ctx: &Context,
    vi: &VispyrInstrumentation,
    key: &str,
    marker: &str,
    template: impl Fn(&mut K) -> Option<&mut PodTemplateSpec>,
) -> Result<Vec<String>, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let mut rolled = Vec::new();
    for mut workload in Api::<K>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let ns_name = workload.namespace().unwrap_or_default();
        let name = workload.name_any();
        let Some(tpl) = template(&mut workload) else {
            continue;
        };
        let annotations = tpl
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        if annotations.get(ROLLOUT_ANNOTATION).map(String::as_str) == Some(marker) {
            continue;
        }
        let namespace = namespaces::get(&ctx.client, &ctx.namespaces, &ns_name).await?;
        if !opts_into(tpl, &ns_name, &namespace, vi, key) {
            continue;
        }
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: marker}}}}});
        Api::<K>::namespaced(ctx.client.clone(), &ns_name)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let what = format!("{}/{ns_name}/{name}", K::kind(&()));
        publish(
            ctx,
            workload.object_ref(&()),
            EventType::Normal,
            "RolloutTriggered",
            format!("restarting to inject Node.js instrumentation {marker}"),
        )
        .await;
        rolled.push(what);
    }
    Ok(rolled)
}

/// Whether a pod made from `template` would be injected from `vi`: asks the
/// webhook's own pure function, so the two can never disagree.
fn opts_into(
    template: &PodTemplateSpec,
    ns_name: &str,
    namespace: &Namespace,
    vi: &VispyrInstrumentation,
    key: &str,
) -> bool {
    let mut pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    pod.metadata.namespace = Some(ns_name.to_string());
    // The marker of a previous rollout must not look like an injection.
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.remove(INJECTED_ANNOTATION);
    }
    let candidates = [Arc::new(vi.clone())];
    matches!(inject::mutate(&pod, namespace, candidates.as_slice()), Outcome::Patched(i) if i.instrumentation == key)
}

/// Opts the workload of a crash-looping injected pod out (template annotation
/// `vispyr.io/inject-nodejs: "false"`), which rolls it back to uninstrumented pods.
async fn roll_back(ctx: &Context, pod: &Pod, key: &str) -> Result<(), Error> {
    let ns = pod.namespace().unwrap_or_default();
    let Some(owner) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned()
    else {
        return Ok(());
    };
    let (kind, name) = if owner.kind == "ReplicaSet" {
        let rs = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .get(&owner.name)
            .await?;
        match rs
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        {
            Some(d) => ("Deployment".to_string(), d.name.clone()),
            None => return Ok(()),
        }
    } else {
        (owner.kind.clone(), owner.name.clone())
    };
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {inject::INJECT_NODEJS_ANNOTATION: "false"}}}}});
    let pp = PatchParams::default();
    let reference = match kind.as_str() {
        "Deployment" => Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(&patch))
            .await?
            .object_ref(&()),
        "StatefulSet" => Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(&patch))
            .await?
            .object_ref(&()),
        "DaemonSet" => Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &pp, &Patch::Merge(&patch))
            .await?
            .object_ref(&()),
        _ => return Ok(()),
    };
    tracing::warn!(instrumentation = key, workload = %format!("{kind}/{ns}/{name}"), "rolled back: injected pods crash-loop");
    publish(
        ctx,
        reference,
        EventType::Warning,
        "RolledBack",
        format!("pod {} crash-loops after injection of {key}; opted the workload out (vispyr.io/inject-nodejs: \"false\")", pod.name_any()),
    )
    .await;
    Ok(())
}

fn crash_looping(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    statuses.into_iter().flatten().any(|c| {
        c.state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    })
}

async fn publish(
    ctx: &Context,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(error = %e, reason, "cannot record Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_instrumentation_and_generation() {
        let mut vi: VispyrInstrumentation = serde_json::from_value(json!({
            "apiVersion": "vispyr.io/v1alpha1", "kind": "VispyrInstrumentation",
            "metadata": {"name": "node", "namespace": "shop", "generation": 3},
            "spec": {"exporter": {"endpoint": "http://gw:4318"}, "nodejs": {"image": "img"}}
        }))
        .unwrap();
        assert_eq!(rollout_marker(&vi), "shop/node@3");
        vi.metadata.generation = Some(4);
        assert_eq!(rollout_marker(&vi), "shop/node@4");
    }
}
