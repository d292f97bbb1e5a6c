//! Who a sampled process is: pid -> cgroup -> container -> pod -> service,
//! as the resource attributes its profile is exported with.
//!
//! The cgroup of a pid is read once and cached for as long as the pid keeps
//! showing up in batches (a pid reused by a new process is noticed by its
//! start time). The pod side is looked up again for every batch, so a pod
//! deleted, or one the watch sees only later, is reflected within an interval.

mod cgroup;
mod pods;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;

use crate::stack::{Batch, Sample};

pub use cgroup::{ContainerRef, parse_path, parse_proc_cgroup};
pub use pods::{INJECTED, PodContainer, PodIndex, PodWatch};

pub const SERVICE_NAME: &str = "service.name";
pub const NAMESPACE: &str = "k8s.namespace.name";
pub const POD_NAME: &str = "k8s.pod.name";
pub const POD_UID: &str = "k8s.pod.uid";
pub const CONTAINER_NAME: &str = "k8s.container.name";
pub const CONTAINER_ID: &str = "container.id";
pub const NODE_NAME: &str = "k8s.node.name";
pub const HOST_NAME: &str = "host.name";
pub const EXECUTABLE_NAME: &str = "process.executable.name";
/// `"true"` on processes outside any container.
pub const HOST_PROCESS: &str = "vispyr.host_process";
/// Service name of a process that exited before it could be looked up.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Which processes are profiled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every process of the node, host processes included.
    #[default]
    All,
    /// Only containers of pods the webhook instrumented (`vispyr.io/injected`).
    OptedIn,
}

/// Config keys under `attribution`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    /// This node's name as the apiserver knows it (the chart passes
    /// `spec.nodeName`); default: the host name.
    pub node_name: Option<String>,
}

/// Resource attributes of one profiled process, in a fixed key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    attributes: BTreeMap<&'static str, String>,
}

impl Target {
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.attributes.iter().map(|(k, v)| (*k, v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn service_name(&self) -> &str {
        self.get(SERVICE_NAME).unwrap_or(UNKNOWN_SERVICE)
    }

    fn set(&mut self, key: &'static str, value: impl Into<String>) {
        let value = value.into();
        if !value.is_empty() {
            self.attributes.insert(key, value);
        }
    }
}

impl FromIterator<(&'static str, String)> for Target {
    fn from_iter<I: IntoIterator<Item = (&'static str, String)>>(iter: I) -> Self {
        let mut target = Target::default();
        for (key, value) in iter {
            target.set(key, value);
        }
        target
    }
}

/// What is cached per pid.
#[derive(Debug, Clone)]
struct Process {
    /// Start time in clock ticks since boot, field 22 of `/proc/<pid>/stat`.
    start_time: u64,
    comm: String,
    container: Option<ContainerRef>,
}

pub struct Attributor {
    mode: Mode,
    node_name: String,
    /// `None` outside Kubernetes.
    pods: Option<PodWatch>,
    proc_root: PathBuf,
    cache: HashMap<u32, Process>,
}

impl Attributor {
    /// With a client, watches the pods of this node (on the current tokio
    /// runtime); without one, every process is attributed by its name.
    pub fn new(config: &Config, client: Option<kube::Client>) -> Self {
        let node_name = config.node_name.clone().unwrap_or_else(host_name);
        if client.is_none() && config.mode == Mode::OptedIn {
            tracing::warn!(
                "attribution.mode is opted-in but there is no Kubernetes API: nothing will be profiled"
            );
        }
        let pods = client.map(|client| PodWatch::start(client, &node_name));
        Attributor {
            mode: config.mode,
            node_name,
            pods,
            proc_root: PathBuf::from("/proc"),
            cache: HashMap::new(),
        }
    }

    /// Waits until the pod watch has listed the pods once (at once outside Kubernetes).
    pub async fn ready(&self) {
        if let Some(pods) = &self.pods {
            pods.ready().await;
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The samples of `batch` by the process they belong to; samples of
    /// processes the mode leaves out are not returned. Pids absent from the
    /// batch are forgotten: most have exited, and one that comes back is read
    /// again.
    pub fn attribute<'b>(&mut self, batch: &'b Batch) -> Vec<(Target, Vec<&'b Sample>)> {
        let index = self.pods.as_ref().map(PodWatch::snapshot);
        let mut targets: HashMap<u32, Option<Target>> = HashMap::new();
        let mut groups: BTreeMap<Target, Vec<&Sample>> = BTreeMap::new();
        for sample in &batch.samples {
            let target = targets
                .entry(sample.pid)
                .or_insert_with(|| self.target(sample.pid, index.as_ref()));
            if let Some(target) = target {
                groups.entry(target.clone()).or_default().push(sample);
            }
        }
        self.cache.retain(|pid, _| targets.contains_key(pid));
        groups.into_iter().collect()
    }

    fn target(&mut self, pid: u32, index: Option<&PodIndex>) -> Option<Target> {
        let process = self.process(pid);
        let mut target = Target::default();
        let node_key = if index.is_some() {
            NODE_NAME
        } else {
            HOST_NAME
        };
        target.set(node_key, self.node_name.clone());
        let Some(process) = process else {
            // Exited before this batch was attributed: its cgroup is gone.
            if self.mode == Mode::OptedIn {
                return None;
            }
            target.set(SERVICE_NAME, UNKNOWN_SERVICE);
            return Some(target);
        };
        target.set(EXECUTABLE_NAME, process.comm.clone());
        let Some(container) = &process.container else {
            if self.mode == Mode::OptedIn {
                return None;
            }
            target.set(SERVICE_NAME, process.comm.clone());
            target.set(HOST_PROCESS, "true");
            return Some(target);
        };
        let pod =
            index.and_then(|i| i.lookup(&container.container_id, container.pod_uid.as_deref()));
        match pod {
            Some(pod) => {
                if self.mode == Mode::OptedIn && !pod.opted_in {
                    return None;
                }
                target.set(SERVICE_NAME, pod.service_name);
                target.set(NAMESPACE, pod.namespace);
                target.set(POD_NAME, pod.pod);
                if let Some(name) = pod.container {
                    target.set(CONTAINER_NAME, name);
                }
            }
            // A container of no pod the watch knows (yet), or no Kubernetes.
            None => {
                if self.mode == Mode::OptedIn {
                    return None;
                }
                target.set(SERVICE_NAME, process.comm.clone());
                target.set(CONTAINER_ID, container.container_id.clone());
                if let Some(uid) = &container.pod_uid {
                    target.set(POD_UID, uid.clone());
                }
            }
        }
        Some(target)
    }

    /// The cached process, re-read when the pid now belongs to another one;
    /// `None` when it has exited.
    fn process(&mut self, pid: u32) -> Option<Process> {
        let dir = self.proc_root.join(pid.to_string());
        let start_time = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| start_time(&stat));
        let Some(start_time) = start_time else {
            return self.cache.get(&pid).cloned();
        };
        if let Some(p) = self.cache.get(&pid).filter(|p| p.start_time == start_time) {
            return Some(p.clone());
        }
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
        let process = Process {
            start_time,
            comm: comm.trim_end_matches('\n').to_owned(),
            container: parse_proc_cgroup(&cgroup),
        };
        self.cache.insert(pid, process.clone());
        Some(process)
    }
}

/// Field 22 of `/proc/<pid>/stat`; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A client for the cluster this runs in (in-cluster config, else
/// `KUBECONFIG` or `~/.kube/config`); `None` outside Kubernetes.
pub async fn kube_client() -> Option<kube::Client> {
    match kube::Client::try_default().await {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::info!(%error, "no Kubernetes API configured: attributing profiles by process name");
            None
        }
    }
}

/// The kernel's host name: the node's, as the agent runs with the host's UTS
/// namespace or reads it through hostPID.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_skips_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("42 (x) S 1"), None);
        assert_eq!(start_time("no paren"), None);
    }

    #[test]
    fn mode_parses_kebab_case() {
        let c: Config = serde_json::from_str(r#"{"mode":"opted-in"}"#).unwrap();
        assert_eq!(c.mode, Mode::OptedIn);
        assert!(serde_json::from_str::<Config>(r#"{"mode":"some"}"#).is_err());
    }
}
