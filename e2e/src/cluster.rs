//! A real Kubernetes control plane for tests: etcd + kube-apiserver, no
//! kubelet. Pods are stored, admitted and mutated, never run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::pki::{Pem, Pki};
use crate::process::{Process, free_port};
use crate::{Error, tool};

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(90);
/// ClusterIPs of Services; the first one is the `kubernetes` Service's.
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/24";

pub struct TestCluster {
    // Held to be killed when the cluster drops; field order is drop order,
    // so the apiserver goes before its etcd.
    _apiserver: Process,
    _etcd: Process,
    client: Client,
    server: String,
    kubeconfig: PathBuf,
    dir: TempDir,
}

/// Where and how the apiserver serves: [`TestCluster::start`] keeps it on
/// loopback with no nodes; a node cluster puts it where pods reach it and lets
/// kubelets in.
pub(crate) struct ApiserverSetup<'a> {
    pub address: IpAddr,
    pub pki: &'a Pki,
    /// Node authorizer, NodeRestriction and the ServiceAccount admission
    /// plugin (which needs a controller-manager), and a client certificate
    /// for the apiserver's calls to kubelets (logs, exec).
    pub nodes: bool,
}

impl TestCluster {
    /// Starts etcd and kube-apiserver with RBAC, service-account tokens and the
    /// admission webhook plugins, and waits until the apiserver is ready.
    pub async fn start() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("vispyr-cluster-")
            .tempdir()
            .map_err(|e| Error::io(Path::new("/tmp"), e))?;
        let pki = Pki::generate(&[])?;
        let setup = ApiserverSetup {
            address: Ipv4Addr::LOCALHOST.into(),
            pki: &pki,
            nodes: false,
        };
        Self::start_in(dir, &setup).await
    }

    pub(crate) async fn start_in(dir: TempDir, setup: &ApiserverSetup<'_>) -> Result<Self, Error> {
        let root = dir.path().to_path_buf();
        let etcd = start_etcd(&root).await?;
        let (mut apiserver, kubeconfig, server) = start_apiserver(&root, etcd.1, setup).await?;

        let client = Client::try_from(load_config(&kubeconfig).await?)?;
        let probe_client = client.clone();
        apiserver
            .wait_ready(START_TIMEOUT, || {
                let c = probe_client.clone();
                async move {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .expect("static request");
                    c.request_text(req)
                        .await
                        .is_ok_and(|body| body.trim() == "ok")
                }
            })
            .await?;
        Ok(Self {
            _apiserver: apiserver,
            _etcd: etcd.0,
            client,
            server,
            kubeconfig,
            dir,
        })
    }

    /// The apiserver's URL, `https://<address>:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A client authenticated as cluster-admin (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A kubeconfig file for kubectl and helm, as cluster-admin.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client that acts as `user` (and `groups`) through impersonation, so a
    /// test sees exactly what that identity's RBAC allows.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client, Error> {
        let mut config = load_config(&self.kubeconfig).await?;
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Ok(Client::try_from(config)?)
    }

    /// Runs the pinned kubectl against this cluster, returning its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, Error> {
        let out = Command::new(tool("kubectl")?)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                name: "kubectl".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::backend(
                format!("kubectl {}", args.join(" ")),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

async fn start_etcd(root: &Path) -> Result<(Process, u16), Error> {
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(tool("etcd")?);
    cmd.arg("--name=e2e")
        .arg(format!("--data-dir={}", root.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=e2e={peer_url}"))
        // Test data is thrown away: fsync only slows every write down.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let mut etcd = Process::spawn("etcd", cmd, &root.join("etcd.log"))?;
    let http = reqwest::Client::new();
    let health = format!("{client_url}/health");
    etcd.wait_ready(START_TIMEOUT, || {
        let req = http.get(&health).send();
        async move {
            match req.await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|b| b.contains("\"health\":\"true\"")),
                Err(_) => false,
            }
        }
    })
    .await?;
    Ok((etcd, client_port))
}

async fn start_apiserver(
    root: &Path,
    etcd_port: u16,
    setup: &ApiserverSetup<'_>,
) -> Result<(Process, PathBuf, String), Error> {
    let pki = setup.pki;
    let ca = write(root, "ca.crt", &pki.ca)?;
    let cert = write(root, "apiserver.crt", &pki.serving.cert)?;
    let key = write(root, "apiserver.key", &pki.serving.key)?;
    let sa_key = write(root, "service-account.key", &pki.service_account_key.key)?;
    let sa_pub = write(root, "service-account.pub", &pki.service_account_key.cert)?;

    let port = free_port();
    let url = format!("https://{}", SocketAddr::new(setup.address, port));
    let mut cmd = Command::new(tool("kube-apiserver")?);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--bind-address={}", setup.address))
        .arg(format!("--advertise-address={}", setup.address))
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", root.join("certs").display()))
        .arg(format!("--tls-cert-file={}", cert.display()))
        .arg(format!("--tls-private-key-file={}", key.display()))
        .arg(format!("--client-ca-file={}", ca.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg(format!("--service-account-key-file={}", sa_pub.display()))
        .arg(format!(
            "--service-account-signing-key-file={}",
            sa_key.display()
        ))
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        .arg("--enable-priority-and-fairness=false");
    if setup.nodes {
        let kubelet_cert = write(root, "apiserver-kubelet-client.crt", &pki.admin.cert)?;
        let kubelet_key = write(root, "apiserver-kubelet-client.key", &pki.admin.key)?;
        cmd.arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook")
            .arg(format!("--kubelet-client-certificate={}", kubelet_cert.display()))
            .arg(format!("--kubelet-client-key={}", kubelet_key.display()))
            .arg("--kubelet-preferred-address-types=InternalIP");
    } else {
        cmd.arg("--authorization-mode=RBAC")
            .arg("--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook")
            // With no controller-manager, no namespace ever gets its "default"
            // ServiceAccount, and this plugin would refuse every pod.
            .arg("--disable-admission-plugins=ServiceAccount");
    }
    let apiserver = Process::spawn("kube-apiserver", cmd, &root.join("kube-apiserver.log"))?;
    let kubeconfig = write_kubeconfig(&root.join("kubeconfig"), &url, &pki.ca, &pki.admin)?;
    Ok((apiserver, kubeconfig, url))
}

pub(crate) fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// A kubeconfig for `server` that authenticates with the client certificate
/// `user`, for kubectl, helm and the cluster's own components.
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &str,
    user: &Pem,
) -> Result<PathBuf, Error> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": "user", "user": {
            "client-certificate-data": b64(&user.cert),
            "client-key-data": b64(&user.key),
        }}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
        "current-context": "e2e",
    });
    let content = serde_yaml::to_string(&kubeconfig).expect("JSON value is YAML");
    std::fs::write(path, content).map_err(|e| Error::io(path, e))?;
    Ok(path.to_path_buf())
}

async fn load_config(kubeconfig: &Path) -> Result<kube::Config, Error> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Panics unless `result` is the apiserver's 403: what an identity must not do.
pub fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Panics with the apiserver's answer unless `result` is a success.
pub fn assert_allowed<T>(what: &str, result: Result<T, kube::Error>) {
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
}
