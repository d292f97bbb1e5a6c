//! Attribution on the real kernel and a real apiserver: processes placed in
//! real cgroups named like the kubelet names them, pods stored in the
//! apiserver with the matching UID and container IDs, and the node-agent's
//! pod watch in between. Needs root (it writes cgroup.procs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use vispyr_e2e::{TestCluster, eventually};
use vispyr_node_agent::attribution::{
    self, Attributor, CONTAINER_ID, CONTAINER_NAME, EXECUTABLE_NAME, HOST_PROCESS, Mode, NAMESPACE,
    NODE_NAME, POD_NAME, POD_UID, SERVICE_NAME, Target,
};
use vispyr_node_agent::stack::{Batch, Frame, FrameKind, Sample};

const NODE: &str = "vispyr-test-node";
const WAIT: Duration = Duration::from_secs(30);

/// A `sleep` moved into a cgroup this test created; killed and its cgroup
/// directories removed on drop.
struct CgroupProcess {
    child: Child,
    /// Directories this test created, outermost first.
    created: Vec<PathBuf>,
}

impl CgroupProcess {
    fn spawn(hierarchy: &Path, path: &str) -> Self {
        let leaf = hierarchy.join(path.trim_start_matches('/'));
        let mut created = Vec::new();
        let mut dir = hierarchy.to_path_buf();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| {
                    panic!("creating cgroup {} (root needed): {e}", dir.display())
                });
                created.push(dir.clone());
            }
        }
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sleep");
        let process = CgroupProcess { child, created };
        std::fs::write(leaf.join("cgroup.procs"), process.pid().to_string())
            .unwrap_or_else(|e| panic!("moving pid into {}: {e}", leaf.display()));
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", process.pid())).unwrap();
        assert!(own.contains(path), "{own}");
        process
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for CgroupProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A cgroup can be removed once it has no processes; innermost first.
        for dir in self.created.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("removing cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// A v1 hierarchy of this hybrid host, else the unified one.
fn hierarchy(v1: &str) -> PathBuf {
    let dir = Path::new("/sys/fs/cgroup").join(v1);
    if dir.join("cgroup.procs").exists() {
        dir
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

fn container_id(seed: u8) -> String {
    format!("{:02x}", seed).repeat(32)
}

/// Creates a pod on `node` and reports `container` as running with `id`.
async fn create_pod(
    client: &Client,
    node: &str,
    pod: serde_json::Value,
    container: &str,
    id: &str,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let mut pod: Pod = serde_json::from_value(pod).unwrap();
    pod.spec.as_mut().unwrap().node_name = Some(node.to_owned());
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"containerStatuses": [{
        "name": container, "containerID": id, "image": "node:20", "imageID": "",
        "ready": true, "restartCount": 0, "state": {"running": {}}
    }]}});
    pods.patch_status(
        &created.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap()
}

fn batch(pids: &[u32]) -> Batch {
    let now = SystemTime::now();
    Batch {
        start: now - Duration::from_secs(10),
        end: now,
        frequency_hz: 99,
        samples: pids
            .iter()
            .map(|&pid| Sample {
                pid,
                frames: vec![Frame {
                    kind: FrameKind::Native,
                    function: Arc::from("main"),
                    file: None,
                    package: None,
                }],
                count: 1,
            })
            .collect(),
    }
}

/// The target of each pid in one batch.
fn targets(attributor: &mut Attributor, pids: &[u32]) -> Vec<(u32, Target)> {
    let batch = batch(pids);
    attributor
        .attribute(&batch)
        .into_iter()
        .flat_map(|(target, samples)| samples.into_iter().map(move |s| (s.pid, target.clone())))
        .collect()
}

fn target_of(targets: &[(u32, Target)], pid: u32) -> Option<&Target> {
    targets.iter().find(|(p, _)| *p == pid).map(|(_, t)| t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_resolve_to_pods_of_this_node_and_host() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let (cid_a, cid_b, cid_c) = (container_id(0xa1), container_id(0xb2), container_id(0xc3));
    // Instrumented by the webhook: its env names the service.
    let checkout = create_pod(
        &client,
        NODE,
        json!({
            "metadata": {"name": "checkout-7d9f-x1", "labels": {"vispyr.io/injected": "true"},
                         "annotations": {"vispyr.io/injected": "shop/node"}},
            "spec": {"containers": [{"name": "app", "image": "node:20",
                     "env": [{"name": "OTEL_SERVICE_NAME", "value": "checkout"}]}]}
        }),
        "app",
        &format!("containerd://{cid_a}"),
    )
    .await;
    // Not instrumented; a Deployment's pod, on the systemd cgroup driver.
    let cart = create_pod(
        &client,
        NODE,
        json!({
            "metadata": {"name": "cart-5c6d7e-y2", "labels": {"pod-template-hash": "5c6d7e"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-5c6d7e",
                                              "uid": "0b5c2d8e-6a8f-4a53-9d7e-2f1c3b4a5d6e", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "node:20"}]}
        }),
        "web",
        &format!("cri-o://{cid_b}"),
    )
    .await;
    // On another node: outside this node's watch.
    let elsewhere = create_pod(
        &client,
        "other-node",
        json!({"metadata": {"name": "elsewhere"}, "spec": {"containers": [{"name": "c", "image": "node:20"}]}}),
        "c",
        &format!("containerd://{cid_c}"),
    )
    .await;
    let (uid_a, uid_b, uid_c) = (
        checkout.uid().unwrap(),
        cart.uid().unwrap(),
        elsewhere.uid().unwrap(),
    );

    let a = CgroupProcess::spawn(
        &hierarchy("pids"),
        &format!("/kubepods/burstable/pod{uid_a}/{cid_a}"),
    );
    let b = CgroupProcess::spawn(
        &hierarchy("systemd"),
        &format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{cid_b}.scope",
            uid_b.replace('-', "_")
        ),
    );
    let c = CgroupProcess::spawn(&hierarchy("pids"), &format!("/kubepods/pod{uid_c}/{cid_c}"));
    let mut host = Command::new("sleep").arg("300").spawn().unwrap();
    let pids = [a.pid(), b.pid(), c.pid(), host.id()];

    let config = attribution::Config {
        mode: Mode::All,
        node_name: Some(NODE.to_owned()),
    };
    let mut all = Attributor::new(&config, Some(client.clone()));
    let mut opted_in = Attributor::new(
        &attribution::Config {
            mode: Mode::OptedIn,
            ..config.clone()
        },
        Some(client.clone()),
    );
    tokio::time::timeout(WAIT, async { tokio::join!(all.ready(), opted_in.ready()) })
        .await
        .expect("pod watch lists the pods");

    let got = targets(&mut all, &pids);
    assert_eq!(got.len(), 4, "{got:#?}");
    let expect = |pid, pairs: &[(&str, &str)]| {
        let t =
            target_of(&got, pid).unwrap_or_else(|| panic!("pid {pid} not attributed: {got:#?}"));
        let mut attrs: Vec<(&str, &str)> = t.attributes().collect();
        let mut want = pairs.to_vec();
        attrs.sort();
        want.sort();
        assert_eq!(attrs, want, "pid {pid}");
    };
    expect(
        a.pid(),
        &[
            (SERVICE_NAME, "checkout"),
            (NAMESPACE, "shop"),
            (POD_NAME, "checkout-7d9f-x1"),
            (CONTAINER_NAME, "app"),
            (NODE_NAME, NODE),
            (EXECUTABLE_NAME, "sleep"),
        ],
    );
    expect(
        b.pid(),
        &[
            (SERVICE_NAME, "cart"),
            (NAMESPACE, "shop"),
            (POD_NAME, "cart-5c6d7e-y2"),
            (CONTAINER_NAME, "web"),
            (NODE_NAME, NODE),
            (EXECUTABLE_NAME, "sleep"),
        ],
    );
    // A container of no pod of this node: what its cgroup says.
    expect(
        c.pid(),
        &[
            (SERVICE_NAME, "sleep"),
            (CONTAINER_ID, &cid_c),
            (POD_UID, &uid_c),
            (NODE_NAME, NODE),
            (EXECUTABLE_NAME, "sleep"),
        ],
    );
    expect(
        host.id(),
        &[
            (SERVICE_NAME, "sleep"),
            (HOST_PROCESS, "true"),
            (NODE_NAME, NODE),
            (EXECUTABLE_NAME, "sleep"),
        ],
    );

    // Opted in: only the instrumented pod's process.
    let got = targets(&mut opted_in, &pids);
    let only: Vec<u32> = got.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(only, vec![a.pid()], "{got:#?}");

    // Deleted: no longer attributed to the pod.
    Api::<Pod>::namespaced(client.clone(), "shop")
        .delete(
            &checkout.name_any(),
            &DeleteParams::default().grace_period(0),
        )
        .await
        .unwrap();
    eventually(WAIT, || {
        let got = targets(&mut all, &pids);
        let result = match target_of(&got, a.pid()) {
            Some(t) if t.get(POD_NAME).is_none() && t.get(CONTAINER_ID) == Some(cid_a.as_str()) => {
                Ok(())
            }
            other => Err(format!("still attributed as {other:?}")),
        };
        std::future::ready(result)
    })
    .await
    .unwrap();
    let got = targets(&mut opted_in, &pids);
    assert!(got.is_empty(), "{got:#?}");

    // Exited since the last batch: still known by what was read while it ran.
    let _ = host.kill();
    let _ = host.wait();
    let got = targets(&mut all, &[host.id()]);
    assert_eq!(
        target_of(&got, host.id()).and_then(|t| t.get(HOST_PROCESS)),
        Some("true"),
        "{got:#?}"
    );
    // Forgotten once a batch goes without it; then nothing is guessed.
    targets(&mut all, &[a.pid()]);
    let got = targets(&mut all, &[host.id()]);
    let t = target_of(&got, host.id()).expect("exited process still counted");
    assert_eq!(t.service_name(), attribution::UNKNOWN_SERVICE);
    assert_eq!(t.get(EXECUTABLE_NAME), None);
}
