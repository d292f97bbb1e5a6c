//! The pods of this node, as a watch keeps them, and what a container of one
//! of them is called: its pod, namespace, container name and service name.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::task::JoinHandle;

/// Set by the webhook on the pods it instrumented (label `"true"`, and an
/// annotation naming the instrumentation).
pub const INJECTED: &str = "vispyr.io/injected";
/// Pod annotation the webhook takes the service name from.
const SERVICE_NAME_ANNOTATION: &str = "vispyr.io/service-name";
/// Label the Deployment controller puts on its ReplicaSets' pods; the
/// ReplicaSet's name is `<deployment>-<hash>`.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// A Job named `<cronjob>-<n>` with `n` at least this (minutes since the
/// epoch, 2017-07-14 on) belongs to a CronJob; the webhook uses the same bound.
const MIN_CRONJOB_MINUTES: u64 = 25_000_000;

/// A reflector of the pods bound to one node; the watch stops on drop.
pub struct PodWatch {
    store: Store<Pod>,
    task: JoinHandle<()>,
}

impl PodWatch {
    /// Starts watching the pods with `spec.nodeName=<node>` on the current
    /// runtime. Errors (apiserver away, RBAC) are logged and retried with
    /// backoff; until the first list arrives the store is empty.
    pub fn start(client: kube::Client, node: &str) -> Self {
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (store, writer) = reflector::store();
        let stream = watcher(api, config)
            .default_backoff()
            // Never read, and often the largest part of a pod.
            .modify(|pod: &mut Pod| pod.managed_fields_mut().clear())
            .reflect(writer)
            .applied_objects();
        let node = node.to_owned();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::warn!(%node, error = %error, "watching the pods of this node");
                }
            }
        });
        PodWatch { store, task }
    }

    /// What the watch knows now, indexed for lookups by container.
    pub fn snapshot(&self) -> PodIndex {
        PodIndex::new(self.store.state())
    }

    /// Waits for the first complete list of pods.
    pub async fn ready(&self) {
        // Fails only when the writer is gone, i.e. the watch task ended.
        let _ = self.store.wait_until_ready().await;
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pods of one moment, by container ID and by UID.
pub struct PodIndex {
    by_container: HashMap<String, (Arc<Pod>, String)>,
    by_uid: HashMap<String, Arc<Pod>>,
}

/// A container of a known pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    pub namespace: String,
    pub pod: String,
    /// `None` while the pod's status does not list the container yet.
    pub container: Option<String>,
    pub service_name: String,
    /// Instrumented by the webhook.
    pub opted_in: bool,
}

impl PodIndex {
    pub fn new(pods: Vec<Arc<Pod>>) -> Self {
        let mut by_container = HashMap::new();
        let mut by_uid = HashMap::new();
        for pod in pods {
            if let Some(status) = &pod.status {
                let statuses = [
                    &status.container_statuses,
                    &status.init_container_statuses,
                    &status.ephemeral_container_statuses,
                ];
                for s in statuses.into_iter().flatten().flatten() {
                    if let Some(id) = container_id(s) {
                        by_container.insert(id.to_owned(), (pod.clone(), s.name.clone()));
                    }
                }
            }
            if let Some(uid) = pod.uid() {
                by_uid.insert(uid, pod);
            }
        }
        PodIndex {
            by_container,
            by_uid,
        }
    }

    /// The pod container with this runtime ID, else (a container the status
    /// does not list yet) the pod with this UID.
    pub fn lookup(&self, container_id: &str, pod_uid: Option<&str>) -> Option<PodContainer> {
        if let Some((pod, name)) = self.by_container.get(container_id) {
            return Some(describe(pod, Some(name)));
        }
        let pod = self.by_uid.get(pod_uid?)?;
        Some(describe(pod, None))
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`.
fn container_id(status: &ContainerStatus) -> Option<&str> {
    let id = status.container_id.as_deref()?;
    let id = id.split_once("://").map_or(id, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

fn describe(pod: &Pod, container: Option<&str>) -> PodContainer {
    let spec = pod.spec.as_ref().and_then(|spec| {
        let name = container?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
    });
    let opted_in = pod.labels().get(INJECTED).is_some_and(|v| v == "true")
        || pod.annotations().contains_key(INJECTED);
    PodContainer {
        namespace: pod.namespace().unwrap_or_default(),
        pod: pod.name_any(),
        container: container.map(str::to_owned),
        service_name: service_name(pod, spec),
        opted_in,
    }
}

/// The service name the app's own telemetry carries, so profiles and traces
/// of one service meet: the container's `OTEL_SERVICE_NAME` (the webhook sets
/// it), else `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`, else the
/// webhook's own rule: the `vispyr.io/service-name` annotation, the workload's
/// name, the pod's name.
fn service_name(pod: &Pod, container: Option<&Container>) -> String {
    let env = |name: &str| {
        container?
            .env
            .iter()
            .flatten()
            .rev()
            .find(|e| e.name == name)?
            .value
            .clone()
    };
    let from_env = env("OTEL_SERVICE_NAME")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            env("OTEL_RESOURCE_ATTRIBUTES")?
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == "service.name")
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        });
    from_env
        .or_else(|| {
            pod.annotations()
                .get(SERVICE_NAME_ANNOTATION)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        })
        .or_else(|| workload_name(pod))
        .unwrap_or_else(|| pod.name_any())
}

/// The pod's workload: its controller owner, with a Deployment's ReplicaSet
/// and a CronJob's Job resolved to the Deployment and the CronJob.
fn workload_name(pod: &Pod) -> Option<String> {
    let refs = pod.owner_references();
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())?;
    let name = owner.name.as_str();
    let parent = match owner.kind.as_str() {
        "ReplicaSet" => pod
            .labels()
            .get(POD_TEMPLATE_HASH_LABEL)
            .filter(|hash| !hash.is_empty())
            .and_then(|hash| name.strip_suffix(hash.as_str())?.strip_suffix('-')),
        "Job" => name.rsplit_once('-').and_then(|(cronjob, minutes)| {
            let minutes: u64 = minutes.parse().ok()?;
            (minutes >= MIN_CRONJOB_MINUTES).then_some(cronjob)
        }),
        _ => None,
    };
    Some(parent.filter(|p| !p.is_empty()).unwrap_or(name).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Arc<Pod> {
        Arc::new(serde_json::from_str(json).expect("test pod parses"))
    }

    #[test]
    fn service_name_follows_env_annotation_owner_pod() {
        let p = pod(
            r#"{"metadata":{"name":"web-7d9f-abcde","namespace":"shop","uid":"u1",
                "labels":{"pod-template-hash":"7d9f","vispyr.io/injected":"true"},
                "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f","uid":"r","controller":true}]},
              "spec":{"containers":[
                {"name":"app","env":[{"name":"OTEL_SERVICE_NAME","value":"checkout"}]},
                {"name":"attrs","env":[{"name":"OTEL_RESOURCE_ATTRIBUTES","value":"a=b, service.name = cart"}]},
                {"name":"sidecar"}]},
              "status":{"containerStatuses":[
                {"name":"app","containerID":"containerd://c1","image":"i","imageID":"","ready":true,"restartCount":0},
                {"name":"attrs","containerID":"cri-o://c2","image":"i","imageID":"","ready":true,"restartCount":0},
                {"name":"sidecar","containerID":"docker://c3","image":"i","imageID":"","ready":true,"restartCount":0}]}}"#,
        );
        let index = PodIndex::new(vec![p]);
        let names = |cid| index.lookup(cid, None).map(|c| c.service_name);
        assert_eq!(names("c1").as_deref(), Some("checkout"));
        assert_eq!(names("c2").as_deref(), Some("cart"));
        // No env: the Deployment behind the ReplicaSet.
        assert_eq!(names("c3").as_deref(), Some("web"));
        let app = index.lookup("c1", None).unwrap();
        assert_eq!(
            (app.namespace.as_str(), app.pod.as_str(), app.opted_in),
            ("shop", "web-7d9f-abcde", true)
        );
        assert_eq!(app.container.as_deref(), Some("app"));
        // Unknown container of a known pod: the pod, no container name.
        let new = index.lookup("c9", Some("u1")).unwrap();
        assert_eq!((new.container, new.service_name.as_str()), (None, "web"));
        assert!(index.lookup("c9", Some("u2")).is_none());
        assert!(index.lookup("c9", None).is_none());
    }

    #[test]
    fn service_name_of_cronjob_annotation_and_bare_pods() {
        let job = pod(r#"{"metadata":{"name":"report-29000000-xyz","uid":"u",
                "ownerReferences":[{"apiVersion":"batch/v1","kind":"Job","name":"report-29000000","uid":"j","controller":true}]}}"#);
        assert_eq!(service_name(&job, None), "report");
        let annotated = pod(
            r#"{"metadata":{"name":"p","annotations":{"vispyr.io/service-name":" billing "}}}"#,
        );
        assert_eq!(service_name(&annotated, None), "billing");
        let bare = pod(r#"{"metadata":{"name":"lonely"}}"#);
        assert_eq!(service_name(&bare, None), "lonely");
        assert!(!describe(&bare, None).opted_in);
    }
}
