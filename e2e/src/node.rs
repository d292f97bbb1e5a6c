//! A real single-node Kubernetes cluster on this machine: the control plane
//! of [`TestCluster`] plus kube-controller-manager, kube-scheduler,
//! containerd + runc and a kubelet, with pods on a bridge of their own.
//!
//! Everything lives in one temp dir (containerd's socket, root and state, the
//! kubelet's root, CNI state, logs), under a cgroup of its own and on a bridge
//! of its own, so that it collides with nothing else on the machine and its
//! teardown can find every trace it left: processes, mounts, cgroups,
//! interfaces, iptables rules, sysctls, scratch directories. Needs root.
//!
//! The apiserver serves on the bridge's address (not on loopback), the one
//! address both the host's components and the pods can reach.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};

use crate::cluster::{ApiserverSetup, START_TIMEOUT, write, write_kubeconfig};
use crate::pki::Pki;
use crate::process::{Process, free_port};
use crate::{Error, TestCluster, eventually, tool};

/// The node's name in the API.
pub const NODE_NAME: &str = "vispyr-node";
const BRIDGE: &str = "vispyr0";
/// State dirs are `<temp dir>/vispyr-node-XXXXXX`.
const STATE_PREFIX: &str = "vispyr-node-";
/// The bridge's address: gateway of the pods, the node's InternalIP and the
/// apiserver's address.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 217, 0, 1);
const POD_SUBNET: &str = "10.217.0.0/24";
/// Pods' DNS domain; CoreDNS serves it on the gateway address, port 53.
const CLUSTER_DOMAIN: &str = "cluster.local";
/// The `kubernetes` Service's ClusterIP (first address of the service range).
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The kubelet's `cgroupRoot`: pods go below `/sys/fs/cgroup/<hierarchy>/vispyr`.
const CGROUP_ROOT: &str = "vispyr";
const CGROUP_FS: &str = "/sys/fs/cgroup";
const CNI_BIN: &str = "/usr/lib/cni";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Fixed paths that containerd, libcni and kubelet use whatever their
/// configuration says; removed at teardown when they did not exist before.
const HOST_SCRATCH: [&str; 7] = [
    "/run/mount",
    "/run/containerd",
    "/var/lib/cni",
    "/run/netns",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/kubelet",
];
/// Binaries from the system's packages (e2e/cluster/deps.sh).
const SYSTEM_TOOLS: [&str; 7] = [
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "ip",
    "iptables-save",
    "ip6tables-save",
];
/// Where kubelet and containerd look for runc, mount and iptables.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const KEEP_LOGS_ENV: &str = "VISPYR_NODE_LOGS";
const STOP_GRACE: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct NodeCluster {
    // Field order is drop order: the node is swept (processes killed, mounts
    // gone) before the control plane drops and removes the state dir.
    node: NodeHost,
    control: TestCluster,
}

impl NodeCluster {
    /// Brings the cluster up and waits until the node reports Ready; imports
    /// the pause image first. Fails with the failing component's log.
    pub async fn start() -> Result<Self, Error> {
        preflight()?;
        let dir = tempfile::Builder::new()
            .prefix(STATE_PREFIX)
            .tempdir()
            .map_err(|e| Error::io(Path::new("/tmp"), e))?;
        let state = dir.path().to_path_buf();
        let mut node = NodeHost::snapshot(&state)?;
        node.create_network()?;
        let pki = Pki::generate(&[GATEWAY.into(), KUBERNETES_SERVICE_IP.into()])?;
        let setup = ApiserverSetup {
            address: GATEWAY.into(),
            pki: &pki,
            nodes: true,
        };
        let control = TestCluster::start_in(dir, &setup).await?;
        let mut cluster = Self { node, control };
        cluster.start_node(&pki).await?;
        Ok(cluster)
    }

    async fn start_node(&mut self, pki: &Pki) -> Result<(), Error> {
        let state = self.node.state.clone();
        let admin = self.control.kubeconfig().to_path_buf();

        let containerd = start_containerd(&state, &self.node.socket).await?;
        self.node.components.push(containerd);
        self.import_images(&["pause"]).await?;

        let mut cmd = Command::new(tool("kube-controller-manager")?);
        cmd.arg(format!("--kubeconfig={}", admin.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg(format!(
                "--service-account-private-key-file={}",
                state.join("service-account.key").display()
            ))
            // Publishes kube-root-ca.crt, which every service-account token
            // volume mounts.
            .arg(format!("--root-ca-file={}", state.join("ca.crt").display()))
            .arg(format!(
                "--service-cluster-ip-range={}",
                crate::cluster::SERVICE_CIDR
            ));
        let kcm = Process::spawn(
            "kube-controller-manager",
            cmd,
            &state.join("kube-controller-manager.log"),
        )?;
        self.node.components.push(kcm);

        let mut cmd = Command::new(tool("kube-scheduler")?);
        cmd.arg(format!("--kubeconfig={}", admin.display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0");
        let scheduler = Process::spawn("kube-scheduler", cmd, &state.join("kube-scheduler.log"))?;
        self.node.components.push(scheduler);

        let kubelet = start_kubelet(&state, &self.node.socket, self.control.server(), pki)?;
        self.node.components.push(kubelet);
        let nodes: Api<Node> = Api::all(self.control.client());
        let kubelet = self.node.components.last_mut().expect("just pushed");
        kubelet
            .wait_ready(START_TIMEOUT, || {
                let nodes = nodes.clone();
                async move {
                    nodes
                        .get_opt(NODE_NAME)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|n| is_ready(&n))
                }
            })
            .await?;
        // Services and their names, before `start` returns and so before any
        // pod of the caller's; kube-proxy waits for its Node object to exist.
        let kube_proxy = start_kube_proxy(&state, &admin).await?;
        self.node.components.push(kube_proxy);
        let coredns = start_coredns(&state, &admin).await?;
        self.node.components.push(coredns);
        // The controller-manager and the scheduler have no port to probe:
        // by the time the node is Ready they have had seconds to fail.
        for p in &mut self.node.components {
            p.check_running()?;
        }
        Ok(())
    }

    /// The control plane: API client, kubeconfig, kubectl.
    pub fn control_plane(&self) -> &TestCluster {
        &self.control
    }

    /// containerd's socket, for `ctr --address`.
    pub fn containerd_socket(&self) -> &Path {
        &self.node.socket
    }

    /// Builds the named images with `e2e/images/build.sh` (Rust binaries of
    /// the debug profile unless `PROFILE` says otherwise) and imports them
    /// into this node's containerd; returns the script's report, one line per
    /// image.
    pub async fn import_images(&self, names: &[&str]) -> Result<String, Error> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
        let out = tokio::process::Command::new("bash")
            .arg(&script)
            .arg("--import")
            .arg(&self.node.socket)
            .args(names)
            .env("PATH", path_with_system_dirs())
            // The Rust components from the debug build `cargo test` made (or
            // makes) rather than a release build of tens of minutes.
            .env(
                "PROFILE",
                std::env::var("PROFILE").unwrap_or_else(|_| "debug".into()),
            )
            .output()
            .await
            .map_err(|source| Error::Spawn {
                name: script.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::backend(
                format!("{} {}", script.display(), names.join(" ")),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the cluster the way an operator would (controllers first, then
    /// every pod deleted and torn down by the kubelet, then kubelet and
    /// containerd), sweeps whatever is left, and fails naming each trace it
    /// finds afterwards: processes, mounts, cgroups, interfaces, iptables
    /// rules, sysctls, files.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let client = self.control.client();
        // Controllers and scheduler first, so that nothing recreates the pods.
        for p in &mut self.node.components {
            if matches!(p.name(), "kube-controller-manager" | "kube-scheduler") {
                p.terminate(STOP_GRACE);
            }
        }
        let pods: Api<Pod> = Api::all(client.clone());
        delete_all_pods(client).await?;
        eventually(DRAIN_TIMEOUT, || async {
            match pods.list(&ListParams::default()).await?.items.len() {
                0 => Ok(()),
                n => Err(Error::backend(
                    "draining the node",
                    format!("{n} pods still terminating"),
                )),
            }
        })
        .await?;
        // kubelet, then containerd: each with a chance to exit cleanly.
        for p in self.node.components.iter_mut().rev() {
            p.terminate(STOP_GRACE);
        }
        self.node.sweep();
        let state = self.node.state.clone();
        let leftovers = eventually(Duration::from_secs(10), || async {
            match self.node.leftovers() {
                l if l.is_empty() => Ok(()),
                l => Err(l),
            }
        })
        .await;
        drop(self);
        let mut leftovers = leftovers.err().unwrap_or_default();
        if state.exists() {
            leftovers.push(format!("state directory {}", state.display()));
        }
        if leftovers.is_empty() {
            Ok(())
        } else {
            Err(Error::Leftovers(leftovers))
        }
    }
}

async fn delete_all_pods(client: kube::Client) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // A short grace: the test's pods have nothing to flush.
    let params = DeleteParams {
        grace_period_seconds: Some(1),
        ..DeleteParams::default()
    };
    for ns in namespaces.list(&ListParams::default()).await? {
        let name = ns.metadata.name.unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
        pods.delete_collection(&params, &ListParams::default())
            .await?;
    }
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn preflight() -> Result<(), Error> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    for name in SYSTEM_TOOLS {
        find_in_path(name)?;
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new(CNI_BIN).join(plugin);
        if !path.is_file() {
            return Err(Error::MissingSystemTool {
                name: path.display().to_string(),
            });
        }
    }
    Ok(())
}

fn path_with_system_dirs() -> String {
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM_PATH}"),
        _ => SYSTEM_PATH.to_string(),
    }
}

fn find_in_path(name: &str) -> Result<PathBuf, Error> {
    path_with_system_dirs()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingSystemTool {
            name: name.to_string(),
        })
}

async fn start_containerd(state: &Path, socket: &Path) -> Result<Process, Error> {
    let runc = find_in_path("runc")?;
    let cni_conf = state.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf).map_err(|e| Error::io(&cni_conf, e))?;
    let cni = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vispyr",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            // No masquerading: pods talk to each other and to the node, and
            // the cluster adds no iptables rule to the host.
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": state.join("cni/ipam"),
            },
        }],
    });
    write(&cni_conf, "10-vispyr.conflist", &cni.to_string())?;

    let d = state.join("containerd");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{run}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "vispyr.local/pause:dev"
  netns_mounts_under_state_dir = true
  # Pod sandboxes ask for oom_score_adj -998, which needs CAP_SYS_RESOURCE:
  # some machines' root (this VM's, containers') lacks it, and runc then fails
  # every pod. Never below containerd's own score instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
"#,
        root = d.join("root").display(),
        run = d.join("state").display(),
        socket = socket.display(),
        d = d.display(),
        runc = runc.display(),
        cni_conf = cni_conf.display(),
    );
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    let config = write(&d, "config.toml", &config)?;
    let mut cmd = Command::new(find_in_path("containerd")?);
    cmd.arg("--config")
        .arg(config)
        .env("PATH", path_with_system_dirs());
    let mut containerd = Process::spawn("containerd", cmd, &state.join("containerd.log"))?;
    containerd
        .wait_ready(START_TIMEOUT, || async {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        })
        .await?;
    Ok(containerd)
}

fn start_kubelet(state: &Path, socket: &Path, server: &str, pki: &Pki) -> Result<Process, Error> {
    let dir = state.join("kubelet");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let node_cert = pki.client(&format!("system:node:{NODE_NAME}"), "system:nodes")?;
    let kubeconfig = write_kubeconfig(&dir.join("kubeconfig"), server, &pki.ca, &node_cert)?;
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // cgroup v1 hosts (as CI's are) are refused from 1.35 on unless asked.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": format!("/{CGROUP_ROOT}"),
        "containerRuntimeEndpoint": format!("unix://{}", socket.display()),
        "address": GATEWAY.to_string(),
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": state.join("ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "podLogsDir": dir.join("pod-logs"),
        "makeIPTablesUtilChains": false,
        "failSwapOn": false,
        "resolvConf": "/etc/resolv.conf",
        "clusterDNS": [GATEWAY.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        // A node that shares its machine (CI, a laptop) must not evict or
        // refuse pods because the machine's disk or memory is low: "0%"
        // turns each eviction signal off (a DiskPressure taint would stop all
        // scheduling). Nor does it garbage-collect images a test imported.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
        "serializeImagePulls": false,
    });
    let config = write(&dir, "config.yaml", &config.to_string())?;
    let mut cmd = Command::new(tool("kubelet")?);
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--root-dir={}", dir.join("root").display()))
        .arg(format!("--cert-dir={}", dir.join("pki").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={GATEWAY}"))
        .env("PATH", path_with_system_dirs());
    Process::spawn("kubelet", cmd, &state.join("kubelet.log"))
}

/// kube-proxy in iptables mode, for ClusterIP Services. Every setting that
/// would change a host sysctl (conntrack sizes and timeouts, route_localnet
/// for localhost NodePorts) is off, so that teardown has only its chains to
/// remove (`kube-proxy --cleanup`, in [`remove_traces`]).
async fn start_kube_proxy(state: &Path, kubeconfig: &Path) -> Result<Process, Error> {
    let healthz = free_port();
    let config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": format!("127.0.0.1:{healthz}"),
        "metricsBindAddress": format!("127.0.0.1:{}", free_port()),
        "conntrack": {
            "maxPerCore": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": false},
        "nodePortAddresses": [format!("{GATEWAY}/32")],
    });
    let config = write(state, "kube-proxy.yaml", &config.to_string())?;
    let mut cmd = Command::new(tool("kube-proxy")?);
    cmd.arg(format!("--config={}", config.display()))
        .env("PATH", path_with_system_dirs());
    let mut proxy = Process::spawn("kube-proxy", cmd, &state.join("kube-proxy.log"))?;
    // healthz answers 200 once the first sync has written the rules.
    proxy
        .wait_ready(START_TIMEOUT, || {
            http_ok(format!("http://127.0.0.1:{healthz}/healthz"))
        })
        .await?;
    Ok(proxy)
}

/// Cluster DNS: CoreDNS as a host process on the gateway address (what the
/// kubelet gives pods as their nameserver), the kubernetes plugin watching
/// the apiserver with the admin kubeconfig, other names forwarded to the
/// host's resolvers.
async fn start_coredns(state: &Path, kubeconfig: &Path) -> Result<Process, Error> {
    let ready = free_port();
    let corefile = format!(
        r#".:53 {{
    bind {GATEWAY}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
    loadbalance
}}
"#,
        health = free_port(),
        kubeconfig = kubeconfig.display(),
    );
    let corefile = write(state, "Corefile", &corefile)?;
    let mut cmd = Command::new(tool("coredns")?);
    cmd.arg("-conf").arg(corefile);
    let mut coredns = Process::spawn("coredns", cmd, &state.join("coredns.log"))?;
    // /ready answers 200 once the kubernetes plugin has synced its caches.
    coredns
        .wait_ready(START_TIMEOUT, || {
            http_ok(format!("http://127.0.0.1:{ready}/ready"))
        })
        .await?;
    Ok(coredns)
}

async fn http_ok(url: String) -> bool {
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// What the cluster changes on the host, and what it was before.
struct NodeHost {
    /// Tells other clusters' [`sweep_stale`] that this one is alive.
    _lock: std::fs::File,
    state: PathBuf,
    socket: PathBuf,
    /// Started in this order, stopped in the reverse one.
    components: Vec<Process>,
    before: HostBefore,
    links: BTreeSet<String>,
    iptables: BTreeSet<String>,
    swept: bool,
}

/// Host settings the cluster changes, as they were before it started; also
/// saved in the state dir, so that [`sweep_stale`] can restore them after a
/// cluster that was killed.
struct HostBefore {
    ip_forward: String,
    /// `/` was a private mount, made shared for the cluster's lifetime: the
    /// node-agent mounts the host's root with HostToContainer propagation,
    /// which runc refuses from a private mount (as on every node whose init
    /// is not systemd; kind's node image does the same at boot).
    root_private: bool,
    /// The entries of HOST_SCRATCH that did not exist.
    scratch_created: Vec<PathBuf>,
}

impl HostBefore {
    const FILE: &str = "host-before";

    fn save(&self, state: &Path) -> Result<(), Error> {
        let mut text = format!(
            "ip_forward {}\nroot_private {}\n",
            self.ip_forward, self.root_private
        );
        for p in &self.scratch_created {
            text.push_str(&format!("created {}\n", p.display()));
        }
        write(state, Self::FILE, &text).map(drop)
    }

    fn load(state: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(state.join(Self::FILE)).ok()?;
        let mut before = Self {
            ip_forward: String::new(),
            root_private: false,
            scratch_created: Vec::new(),
        };
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("ip_forward", v)) => before.ip_forward = v.to_string(),
                Some(("root_private", v)) => before.root_private = v == "true",
                // Only the known scratch paths, whatever the file says.
                Some(("created", p)) if HOST_SCRATCH.contains(&p) => {
                    before.scratch_created.push(PathBuf::from(p))
                }
                _ => {}
            }
        }
        (!before.ip_forward.is_empty()).then_some(before)
    }

    fn restore(&self) {
        let _ = std::fs::write(IP_FORWARD, &self.ip_forward);
        if self.root_private {
            let _ = set_root_propagation(libc::MS_PRIVATE);
        }
        for path in &self.scratch_created {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

impl NodeHost {
    fn snapshot(state: &Path) -> Result<Self, Error> {
        let lock = lock_state(state)?;
        sweep_stale(state)?;
        let before = HostBefore {
            ip_forward: read_trimmed(Path::new(IP_FORWARD))?,
            root_private: root_is_private(),
            scratch_created: HOST_SCRATCH
                .into_iter()
                .filter(|p| !Path::new(p).exists())
                .map(PathBuf::from)
                .collect(),
        };
        before.save(state)?;
        Ok(Self {
            _lock: lock,
            state: state.to_path_buf(),
            socket: state.join("containerd/containerd.sock"),
            components: Vec::new(),
            before,
            links: links()?,
            iptables: iptables_rules()?,
            swept: false,
        })
    }

    /// The pod bridge with the gateway address (the apiserver binds to it
    /// before any pod exists), and the cgroup the kubelet puts pods under.
    fn create_network(&mut self) -> Result<(), Error> {
        if self.before.root_private {
            set_root_propagation(libc::MS_SHARED)?;
        }
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("{GATEWAY}/24"), "dev", BRIDGE],
        )?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        for hierarchy in cgroup_hierarchies() {
            let dir = hierarchy.join(CGROUP_ROOT);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            // A new cpuset has no CPUs or memory nodes until given its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(parent) = std::fs::read_to_string(hierarchy.join(file)) {
                    let path = dir.join(file);
                    std::fs::write(&path, parent.trim()).map_err(|e| Error::io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// Removes every trace of the cluster, whatever state it is in; safe to
    /// run twice. Errors are not returned: [`Self::leftovers`] reports what
    /// could not be removed.
    fn sweep(&mut self) {
        for p in self.components.iter_mut().rev() {
            p.kill();
        }
        remove_traces(&self.state);
        self.before.restore();
        self.keep_logs();
        self.swept = true;
    }

    /// With `VISPYR_NODE_LOGS=<dir>`, the components' logs are copied there
    /// before the state dir goes (CI keeps them as artifacts of a failure).
    fn keep_logs(&self) {
        let Some(to) = std::env::var_os(KEEP_LOGS_ENV).map(PathBuf::from) else {
            return;
        };
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(&self.state)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(&path, to.join(entry.file_name()));
            }
        }
    }

    /// Every trace of the cluster still on the host, described for a human.
    fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for pid in processes_of(&self.state) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
        found.extend(
            mounts_under(&self.state)
                .iter()
                .map(|m| format!("mount {}", m.display())),
        );
        found.extend(
            cluster_cgroups()
                .iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        match links() {
            Ok(now) => found.extend(
                now.difference(&self.links)
                    .map(|l| format!("interface {l}")),
            ),
            Err(e) => found.push(format!("listing interfaces: {e}")),
        }
        match iptables_rules() {
            Ok(now) => {
                found.extend(
                    now.difference(&self.iptables)
                        .map(|r| format!("iptables rule added: {r}")),
                );
                found.extend(
                    self.iptables
                        .difference(&now)
                        .map(|r| format!("iptables rule removed: {r}")),
                );
            }
            Err(e) => found.push(format!("listing iptables rules: {e}")),
        }
        match read_trimmed(Path::new(IP_FORWARD)) {
            Ok(v) if v == self.before.ip_forward => {}
            Ok(v) => found.push(format!(
                "{IP_FORWARD} is {v}, was {}",
                self.before.ip_forward
            )),
            Err(e) => found.push(e.to_string()),
        }
        if self.before.root_private && !root_is_private() {
            found.push("/ is a shared mount, was private".to_string());
        }
        found.extend(
            self.before
                .scratch_created
                .iter()
                .filter(|p| p.exists())
                .map(|p| format!("directory {}", p.display())),
        );
        found
    }
}

/// Kills what the cluster in `state` started and unmounts what it mounted,
/// then removes the cgroups and the bridge all clusters share (there is only
/// ever one live cluster). Best effort: the leftover check reports the rest.
fn remove_traces(state: &Path) {
    // Shims (found by the socket they were given) and the containers'
    // processes (found by cgroup), until none is left.
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let pids = processes_of(state);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on pids this cluster started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for mount in mounts_under(state) {
        if let Ok(path) = CString::new(mount.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; MNT_DETACH never blocks.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    for dir in cluster_cgroups() {
        let _ = std::fs::remove_dir(dir);
    }
    if links().is_ok_and(|l| l.contains(BRIDGE)) {
        let _ = run("ip", &["link", "del", BRIDGE]);
    }
    remove_kube_proxy_rules();
}

/// kube-proxy's own cleanup mode removes the chains and rules it wrote
/// (iptables and ip6tables); it is stopped by then. Only when its chains are
/// there: `--cleanup` on a clean host would still try every proxy mode.
/// (Other `KUBE-` chains, such as a host's KUBE-FIREWALL, are not its own.)
fn remove_kube_proxy_rules() {
    let has_chains =
        iptables_rules().is_ok_and(|rules| rules.iter().any(|r| r.contains("KUBE-SERVICES")));
    if !has_chains {
        return;
    }
    if let Ok(proxy) = tool("kube-proxy") {
        let _ = Command::new(proxy)
            .arg("--cleanup")
            .env("PATH", path_with_system_dirs())
            .output();
    }
}

/// A cluster whose process was killed (SIGKILL, a CI timeout) never ran its
/// teardown: remove what it left, so that the next one can start. Live
/// clusters hold a lock on their state dir, which dies with their process;
/// one that is still locked belongs to a running cluster, and is an error.
fn sweep_stale(own: &Path) -> Result<(), Error> {
    let tmp = std::env::temp_dir();
    let entries = std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(STATE_PREFIX))
        .map(|e| e.path())
        .filter(|p| p != own)
        .collect();
    for dir in &stale {
        if lock_state(dir).is_err() {
            return Err(Error::backend(
                "starting a node cluster",
                format!(
                    "another node cluster is running (state in {})",
                    dir.display()
                ),
            ));
        }
    }
    for dir in &stale {
        remove_traces(dir);
        if let Some(before) = HostBefore::load(dir) {
            before.restore();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    // A bridge or cgroups whose state dir is gone (the temp dir was cleaned).
    remove_traces(own);
    Ok(())
}

/// An exclusive lock on `state`, held as long as the returned file is open.
fn lock_state(state: &Path) -> Result<std::fs::File, Error> {
    let dir = std::fs::File::open(state).map_err(|e| Error::io(state, e))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        return Err(Error::io(state, std::io::Error::last_os_error()));
    }
    Ok(dir)
}

/// Processes started by the cluster in `state`: anything whose command line
/// names the state dir (containerd shims get its socket), or that lives in
/// the clusters' cgroup (the containers).
fn processes_of(state: &Path) -> Vec<libc::pid_t> {
    let state = state.as_os_str().as_bytes();
    let own = std::process::id() as libc::pid_t;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != own && !is_zombie(pid))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            cmdline.windows(state.len()).any(|w| w == state)
                || cgroups
                    .lines()
                    .any(|l| in_cgroup_root(l.rsplit(':').next().unwrap_or("")))
        })
        .collect()
}

/// A zombie is dead already (its parent, maybe init, has yet to reap it):
/// nothing to kill, and not a leftover.
fn is_zombie(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which may contain spaces.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
        })
        .is_some_and(|state| state == 'Z')
}

/// Mount points under the state dir, the deepest and newest first.
fn mounts_under(state: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(state))
        .collect();
    mounts.reverse();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// The clusters' cgroup directories in every hierarchy, children first.
fn cluster_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let root = hierarchy.join(CGROUP_ROOT);
        if root.is_dir() {
            walk(&root, &mut out);
        }
    }
    out
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        if !self.swept {
            self.sweep();
        }
    }
}

fn in_cgroup_root(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(CGROUP_ROOT))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let fs = Path::new(CGROUP_FS);
    // cgroup v2 only: one hierarchy, mounted right there.
    if fs.join("cgroup.controllers").exists() {
        return vec![fs.to_path_buf()];
    }
    // v1 or hybrid: one mount per controller (and name=systemd, unified).
    std::fs::read_dir(fs)
        .map(|entries| {
            entries
                .flatten()
                // cpu,cpuacct and friends appear once as a directory and
                // again as symlinks to it.
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `/` propagates no mount events: no `shared:` or `master:` tag
/// among the optional fields of its mountinfo line.
fn root_is_private() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split_once(" - ").map(|(head, _)| head))
        .rfind(|head| head.split(' ').nth(4) == Some("/"))
        .is_some_and(|head| {
            !head
                .split(' ')
                .skip(6)
                .any(|f| f.starts_with("shared:") || f.starts_with("master:"))
        })
}

/// Sets the propagation of the `/` mount alone (not its submounts).
fn set_root_propagation(flag: libc::c_ulong) -> Result<(), Error> {
    // SAFETY: static NUL-terminated strings; a propagation change only.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            flag,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::io(Path::new("/"), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let v = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

fn links() -> Result<BTreeSet<String>, Error> {
    let out = run("ip", &["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect())
}

/// The rules of every iptables table, without counters, for comparison.
fn iptables_rules() -> Result<BTreeSet<String>, Error> {
    let mut rules = BTreeSet::new();
    for cmd in ["iptables-save", "ip6tables-save"] {
        for line in run(cmd, &[])?.lines() {
            if line.starts_with('#') || line.starts_with("COMMIT") {
                continue;
            }
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            rules.insert(format!("{cmd}: {line}"));
        }
    }
    Ok(rules)
}

fn run(cmd: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(find_in_path(cmd)?)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            name: cmd.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::backend(
            format!("{cmd} {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_trimmed(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/tmp/a\040b"),
            PathBuf::from("/tmp/a b")
        );
        assert_eq!(unescape_mount_path(r"/x\\"), PathBuf::from(r"/x\\"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn host_settings_survive_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let before = HostBefore {
            ip_forward: "0".into(),
            root_private: true,
            scratch_created: vec![
                PathBuf::from("/run/containerd"),
                PathBuf::from("/var/lib/cni"),
            ],
        };
        before.save(dir.path()).unwrap();
        let loaded = HostBefore::load(dir.path()).expect("saved settings load");
        assert_eq!(loaded.ip_forward, "0");
        assert!(loaded.root_private);
        assert_eq!(loaded.scratch_created, before.scratch_created);
        // A path that is not one of the known scratch dirs is never removed.
        write(dir.path(), HostBefore::FILE, "ip_forward 1\ncreated /etc\n").unwrap();
        assert!(
            HostBefore::load(dir.path())
                .unwrap()
                .scratch_created
                .is_empty()
        );
    }

    #[test]
    fn cgroup_root_matches_only_itself_and_below() {
        assert!(in_cgroup_root("/vispyr"));
        assert!(in_cgroup_root("/vispyr/kubepods/pod1/abc"));
        assert!(!in_cgroup_root("/vispyr-other"));
        assert!(!in_cgroup_root("/"));
        assert!(!in_cgroup_root("/user.slice"));
    }
}
