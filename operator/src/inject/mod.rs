//! Node.js injection: what the mutating webhook does to a pod, as a pure function.
//!
//! [`mutate`] takes the pod being created, its namespace and the
//! `VispyrInstrumentation`s known to the operator, and returns an [`Outcome`]:
//! nothing asked, already injected, a [`Rejection`] (the webhook admits the pod
//! unmodified and records an Event with [`Rejection::reason`] and the message),
//! or an RFC 6902 JSON patch.
//!
//! The patch adds an emptyDir volume, an init container (restricted Pod
//! Security compatible) copying the instrumentation package from the
//! instrumentation image into it, and for each targeted container a read-only
//! mount plus the environment described in the `env` module: `NODE_OPTIONS` (merged with
//! the container's own), `OTEL_*` (never overriding the container's own) and
//! downward-API resource attributes. It only ever appends to lists or edits
//! entries it points at by index, so fields of the pod this crate's Kubernetes
//! types do not know survive.

mod env;
mod request;
mod workload;

use std::fmt;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, Namespace, Pod, PodSpec, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};

use crate::crd::{NodejsSpec, VispyrInstrumentation};

pub use request::{AnnotatedObject, Rejection};

/// Opt-in annotation on a pod (template) or namespace: `"true"`, `"<name>"`,
/// `"<namespace>/<name>"` or `"false"`. The pod's wins over the namespace's.
pub const INJECT_NODEJS_ANNOTATION: &str = "vispyr.io/inject-nodejs";
/// Pod annotation naming the containers to instrument, `"a,b"`; default: every app container.
pub const CONTAINER_NAMES_ANNOTATION: &str = "vispyr.io/container-names";
/// Pod annotation overriding the derived `OTEL_SERVICE_NAME`.
pub const SERVICE_NAME_ANNOTATION: &str = "vispyr.io/service-name";
/// Set on injected pods: `<namespace>/<name>` of the instrumentation used.
pub const INJECTED_ANNOTATION: &str = "vispyr.io/injected";
/// Label `"true"` on injected pods, so the controller and the node-agent can
/// select them without reading every pod.
pub const INJECTED_LABEL: &str = "vispyr.io/injected";
/// The emptyDir volume holding the instrumentation package.
pub const VOLUME_NAME: &str = "vispyr-instrumentation";
/// The init container copying the package into [`VOLUME_NAME`].
pub const INIT_CONTAINER_NAME: &str = "vispyr-instrumentation-nodejs";
/// Where [`VOLUME_NAME`] is mounted, read-only in the app containers.
pub const MOUNT_PATH: &str = "/vispyr-instrumentation";
/// Directory of the instrumentation image whose content the init container copies.
pub const IMAGE_PACKAGE_DIR: &str = "/instrumentation";
/// The preload given to `--require`: a CommonJS file that starts the SDK and
/// registers the ESM loader hooks itself (`module.register`), so this one flag
/// instruments CommonJS and ESM applications alike.
pub const PRELOAD_PATH: &str = "/vispyr-instrumentation/register.cjs";
/// V8 flags that let the node-agent name JavaScript frames (perf map).
pub const PROFILING_FLAGS: &str =
    "--perf-basic-prof-only-functions --interpreted-frames-native-stack";
/// User and group the init container runs as (any non-root id works).
pub const INIT_CONTAINER_UID: i64 = 65532;

/// Where [`mutate`] finds `VispyrInstrumentation`s.
pub trait InstrumentationLookup {
    /// Every `VispyrInstrumentation` of `namespace`.
    fn instrumentations_in(&self, namespace: &str) -> Vec<Arc<VispyrInstrumentation>>;
}

impl InstrumentationLookup for [Arc<VispyrInstrumentation>] {
    fn instrumentations_in(&self, namespace: &str) -> Vec<Arc<VispyrInstrumentation>> {
        self.iter()
            .filter(|vi| vi.namespace().as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
}

/// The webhook's reflector cache.
impl InstrumentationLookup for Store<VispyrInstrumentation> {
    fn instrumentations_in(&self, namespace: &str) -> Vec<Arc<VispyrInstrumentation>> {
        self.state_filter(|vi| vi.namespace().as_deref() == Some(namespace))
    }
}

/// What the webhook does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No opt-in annotation on the pod or its namespace, or it says `"false"`.
    NotRequested,
    /// The pod already carries Vispyr's annotation, init container or volume.
    AlreadyInjected {
        /// `<namespace>/<name>` from [`INJECTED_ANNOTATION`], when present.
        instrumentation: Option<String>,
    },
    /// The pod asked for injection but it cannot be done: admit it unmodified
    /// and record an Event (reason [`Rejection::reason`], message its `Display`).
    Rejected(Rejection),
    /// Apply this patch.
    Patched(Injection),
}

/// A successful injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// `<namespace>/<name>` of the instrumentation used.
    pub instrumentation: String,
    /// The containers instrumented, in pod order.
    pub containers: Vec<String>,
    /// The RFC 6902 patch for the AdmissionReview response.
    pub patch: Patch,
    /// Things the pod's owner should know (e.g. an `envFrom` Vispyr cannot read):
    /// admission warnings and an Event.
    pub warnings: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRequested => f.write_str("not requested"),
            Self::AlreadyInjected {
                instrumentation: Some(by),
            } => write!(f, "already injected by {by}"),
            Self::AlreadyInjected {
                instrumentation: None,
            } => f.write_str("already injected"),
            Self::Rejected(why) => write!(f, "rejected ({}): {why}", why.reason()),
            Self::Patched(injection) => write!(
                f,
                "injected {} into {}",
                injection.instrumentation,
                injection.containers.join(", ")
            ),
        }
    }
}

/// Decides what to do with `pod`, being created in `namespace`.
///
/// The pod's namespace is `namespace`'s name (a pod in an AdmissionReview may
/// not carry it yet), else the pod's own, else `default`.
pub fn mutate<L>(pod: &Pod, namespace: &Namespace, instrumentations: &L) -> Outcome
where
    L: InstrumentationLookup + ?Sized,
{
    let pod_namespace = namespace
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    let Some(request) = request::requested(pod, namespace) else {
        return Outcome::NotRequested;
    };
    if let Some(instrumentation) = already_injected(pod) {
        return Outcome::AlreadyInjected { instrumentation };
    }
    let resolved = request.and_then(|request| request.resolve(pod_namespace, instrumentations));
    let instrumentation = match resolved {
        Ok(instrumentation) => instrumentation,
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    let Some(spec) = pod.spec.as_ref().filter(|spec| !spec.containers.is_empty()) else {
        return Outcome::Rejected(Rejection::NoContainer);
    };
    match request::target_containers(pod, &spec.containers) {
        Ok(targets) => Outcome::Patched(inject(pod, spec, &instrumentation, &targets)),
        Err(rejection) => Outcome::Rejected(rejection),
    }
}

/// `Some` when the pod bears any mark of a previous injection.
fn already_injected(pod: &Pod) -> Option<Option<String>> {
    let annotation = pod.annotations().get(INJECTED_ANNOTATION).cloned();
    let spec = pod.spec.as_ref();
    let has_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == INIT_CONTAINER_NAME));
    let has_volume = spec
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == VOLUME_NAME));
    (annotation.is_some() || has_init || has_volume).then_some(annotation)
}

/// The patch for `targets` (indices into `pod_spec.containers`).
fn inject(
    pod: &Pod,
    pod_spec: &PodSpec,
    instrumentation: &VispyrInstrumentation,
    targets: &[usize],
) -> Injection {
    let id = format!(
        "{}/{}",
        instrumentation.namespace().unwrap_or_default(),
        instrumentation.name_any()
    );
    let spec = &instrumentation.spec;
    let mut ops = Vec::new();

    let annotations = PointerBuf::from_tokens(["metadata", "annotations"]);
    if pod.metadata.annotations.is_some() {
        ops.push(add(child(&annotations, &[INJECTED_ANNOTATION]), json!(id)));
    } else {
        ops.push(add(annotations, json!({ INJECTED_ANNOTATION: id })));
    }
    let labels = PointerBuf::from_tokens(["metadata", "labels"]);
    if pod.metadata.labels.is_some() {
        ops.push(add(child(&labels, &[INJECTED_LABEL]), json!("true")));
    } else {
        ops.push(add(labels, json!({ INJECTED_LABEL: "true" })));
    }
    let volumes = PointerBuf::from_tokens(["spec", "volumes"]);
    append(
        &mut ops,
        volumes,
        pod_spec.volumes.is_some(),
        vec![json!(volume(&spec.nodejs))],
    );
    let init_containers = PointerBuf::from_tokens(["spec", "initContainers"]);
    let init = vec![json!(init_container(&spec.nodejs))];
    append(
        &mut ops,
        init_containers,
        pod_spec.init_containers.is_some(),
        init,
    );

    let settings = env::Settings::new(spec, workload::identify(pod));
    let mut containers = Vec::new();
    let mut warnings = Vec::new();
    for &index in targets {
        let container = &pod_spec.containers[index];
        let base = PointerBuf::from_tokens(["spec", "containers", &index.to_string()]);
        let mounts = child(&base, &["volumeMounts"]);
        append(
            &mut ops,
            mounts,
            container.volume_mounts.is_some(),
            vec![json!(mount())],
        );
        let plan = env::plan(container, &settings);
        for edit in plan.edits {
            let path = child(&base, &["env", &edit.index.to_string(), edit.field]);
            ops.push(add(path, json!(edit.value)));
        }
        let appended = plan.appended.iter().map(|var| json!(var)).collect();
        append(
            &mut ops,
            child(&base, &["env"]),
            container.env.is_some(),
            appended,
        );
        warnings.extend(plan.warnings);
        containers.push(container.name.clone());
    }
    Injection {
        instrumentation: id,
        containers,
        patch: Patch(ops),
        warnings,
    }
}

/// `base` extended with `tokens` (unescaped).
fn child(base: &PointerBuf, tokens: &[&str]) -> PointerBuf {
    let mut path = base.clone();
    for token in tokens {
        path.push_back(*token);
    }
    path
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Appends `items` to the array at `path`, creating it when it does not exist.
fn append(ops: &mut Vec<PatchOperation>, path: PointerBuf, exists: bool, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if exists {
        let end = child(&path, &["-"]);
        ops.extend(items.into_iter().map(|item| add(end.clone(), item)));
    } else {
        ops.push(add(path, Value::Array(items)));
    }
}

fn volume(nodejs: &NodejsSpec) -> Volume {
    Volume {
        name: VOLUME_NAME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(nodejs.volume_size_limit.clone()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME_NAME.to_owned(),
        mount_path: MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Copies the package; non-root, read-only root filesystem, no privilege, no
/// capability, default seccomp: admitted under the `restricted` Pod Security level.
fn init_container(nodejs: &NodejsSpec) -> Container {
    Container {
        name: INIT_CONTAINER_NAME.to_owned(),
        image: Some(nodejs.image.clone()),
        command: Some(vec![
            "cp".to_owned(),
            "-r".to_owned(),
            format!("{IMAGE_PACKAGE_DIR}/."),
            format!("{MOUNT_PATH}/"),
        ]),
        resources: Some(nodejs.resources.clone()),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME_NAME.to_owned(),
            mount_path: MOUNT_PATH.to_owned(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(INIT_CONTAINER_UID),
            run_as_group: Some(INIT_CONTAINER_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};

    use super::*;

    fn instrumentation(namespace: &str, name: &str) -> VispyrInstrumentation {
        serde_json::from_value(json!({
            "apiVersion": "vispyr.io/v1alpha1",
            "kind": "VispyrInstrumentation",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"exporter": {"endpoint": "http://gateway:4318"}, "nodejs": {"image": "x"}},
        }))
        .unwrap()
    }

    #[test]
    fn reflector_store_lists_one_namespace() {
        let (store, mut writer) = reflector::store();
        for (namespace, name) in [("shop", "node"), ("shop", "canary"), ("other", "node")] {
            writer.apply_watcher_event(&watcher::Event::Apply(instrumentation(namespace, name)));
        }
        let mut names: Vec<String> = store
            .instrumentations_in("shop")
            .iter()
            .map(|vi| vi.name_any())
            .collect();
        names.sort();
        assert_eq!(names, ["canary", "node"]);
    }
}
