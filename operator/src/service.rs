//! The operator process: admin server, webhook (every replica), certificate
//! upkeep (every replica), controller (the leader only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vispyr_common::admin::{self, Health};

use crate::Error;
use crate::certs::{self, CertPolicy, CertTarget, ServingCert};
use crate::controller::{self, ControllerMetrics};
use crate::crd::VispyrInstrumentation;
use crate::leader::{self, LeaseConfig};
use crate::webhook::{self, AdmissionMetrics, Webhook};

/// `operator.yaml`; every key has a default that works inside the Helm chart.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub admin_addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    /// Namespace of the operator's Secret and Lease (the chart sets it from
    /// the downward API).
    pub namespace: String,
    /// DNS names the serving certificate is valid for: the webhook Service.
    pub webhook_dns_names: Vec<String>,
    pub webhook_configuration: String,
    pub tls_secret: String,
    /// Days a webhook certificate is valid, and days before expiry to renew it.
    pub cert_validity_days: u64,
    pub cert_renew_before_days: u64,
    /// Seconds between checks that the certificate in the Secret is current.
    pub cert_check_interval_secs: u64,
    pub lease_name: String,
    /// Unique per replica; the chart sets the pod name.
    pub identity: String,
}

impl Default for Config {
    fn default() -> Self {
        let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "vispyr-system".into());
        Self {
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], 9443)),
            webhook_dns_names: vec![
                format!("vispyr-operator.{namespace}.svc"),
                format!("vispyr-operator.{namespace}.svc.cluster.local"),
            ],
            webhook_configuration: "vispyr-operator".into(),
            tls_secret: "vispyr-operator-webhook-tls".into(),
            cert_validity_days: 90,
            cert_renew_before_days: 30,
            cert_check_interval_secs: 300,
            lease_name: "vispyr-operator".into(),
            identity: std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("vispyr-operator-{}", std::process::id())),
            namespace,
        }
    }
}

/// Runs the operator with `client` until `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let (_, _, done) = start(client, config, shutdown).await?;
    done.await;
    Ok(())
}

/// Starts everything and returns the bound admin and webhook addresses and a
/// future that ends when the operator has shut down.
pub async fn start(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, SocketAddr, impl Future<Output = ()>), Error> {
    let mut registry = Registry::default();
    admin::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
    let admission_metrics = AdmissionMetrics::register(&mut registry);
    let controller_metrics = ControllerMetrics::register(&mut registry);
    let health = Health::new();
    let (admin_addr, admin_task) = admin::serve(
        config.admin_addr,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    // The webhook answers only once it has a certificate and its caches.
    let serving = Arc::new(ServingCert::default());
    let policy = CertPolicy {
        validity: Duration::from_secs(config.cert_validity_days * 86_400),
        renew_before: Duration::from_secs(config.cert_renew_before_days * 86_400),
    };
    let target = CertTarget {
        namespace: config.namespace.clone(),
        secret_name: config.tls_secret.clone(),
        webhook_config_name: config.webhook_configuration.clone(),
        dns_names: config.webhook_dns_names.clone(),
    };
    certs::ensure(&client, &target, &policy, &serving).await?;
    let cert_upkeep = {
        let (client, serving, shutdown) = (client.clone(), serving.clone(), shutdown.clone());
        let every = Duration::from_secs(config.cert_check_interval_secs.max(1));
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = shutdown.cancelled() => return,
                }
                if let Err(e) = certs::ensure(&client, &target, &policy, &serving).await {
                    tracing::warn!(error = %e, "webhook certificate upkeep failed; retrying");
                }
            }
        }
    };

    let (instrumentations, vi_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();
    let vi_watch = reflector::reflector(
        vi_writer,
        watcher(
            Api::<VispyrInstrumentation>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| async {});
    let ns_watch = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| async {});

    let reporter = Reporter {
        controller: "vispyr-operator".into(),
        instance: Some(config.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let hook = Arc::new(Webhook {
        client: client.clone(),
        instrumentations: instrumentations.clone(),
        namespaces: namespaces.clone(),
        recorder: recorder.clone(),
        metrics: admission_metrics,
    });
    let (webhook_addr, webhook_task) = webhook::serve_tls(
        config.webhook_addr,
        serving,
        webhook::router(hook),
        shutdown.clone(),
    )
    .await?;

    let ctx = Arc::new(controller::Context {
        client: client.clone(),
        namespaces: namespaces.clone(),
        recorder,
        metrics: controller_metrics,
    });
    let lease = LeaseConfig {
        namespace: config.namespace.clone(),
        name: config.lease_name.clone(),
        identity: config.identity.clone(),
        duration: Duration::from_secs(15),
    };
    let leading = leader::run_as_leader(client, lease, shutdown.clone(), move |stop| {
        controller::run(ctx.clone(), stop)
    });

    let ready = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            tokio::select! {
                _ = async { tokio::join!(instrumentations.wait_until_ready(), namespaces.wait_until_ready()) } => {
                    health.set_ready(true);
                    tracing::info!("caches synced; ready");
                }
                () = shutdown.cancelled() => {}
            }
        }
    };

    let done = async move {
        let watches = async {
            tokio::select! {
                _ = async { tokio::join!(vi_watch, ns_watch) } => {}
                () = shutdown.cancelled() => {}
            }
        };
        let (_, _, _, leading, _) = tokio::join!(ready, watches, cert_upkeep, leading, async {
            shutdown.cancelled().await;
            health.set_ready(false);
        });
        if let Err(e) = leading {
            tracing::warn!(error = %e, "leader election ended with an error");
        }
        let _ = webhook_task.await;
        let _ = admin_task.await;
    };
    Ok((admin_addr, webhook_addr, done))
}
