//! Leader election on a `coordination.k8s.io/v1` Lease, so that one replica
//! runs the controller while every replica serves the webhook.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

use crate::Error;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Holds the lease while `work` runs: waits to acquire it, runs `work` with a
/// token cancelled when the lease is lost or on shutdown, and releases it on
/// shutdown so a successor takes over at once instead of after expiry.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    shutdown: CancellationToken,
    work: F,
) -> Result<(), Error>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let leases: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let renew_every = cfg.duration / 3;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let acquired = try_acquire(&leases, &cfg).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, lease = %cfg.name, "cannot acquire the lease");
            false
        });
        if !acquired {
            tokio::select! {
                () = tokio::time::sleep(renew_every) => continue,
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
        let lost = shutdown.child_token();
        let renewer = {
            let (leases, cfg, lost) = (leases.clone(), cfg.clone(), lost.clone());
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(renew_every) => {}
                        () = lost.cancelled() => return,
                    }
                    if !matches!(try_acquire(&leases, &cfg).await, Ok(true)) {
                        tracing::warn!(lease = %cfg.name, "lost leadership");
                        lost.cancel();
                        return;
                    }
                }
            }
        };
        tokio::join!(work(lost.clone()), renewer);
        if shutdown.is_cancelled() {
            release(&leases, &cfg).await;
            return Ok(());
        }
    }
}

/// Takes or renews the lease when it is free, expired or ours. Optimistic
/// concurrency (resourceVersion) makes two replicas racing for it safe.
async fn try_acquire(leases: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, Error> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match leases.get_opt(&cfg.name).await? {
        None => {
            let mut lease = Lease::default();
            lease.metadata.name = Some(cfg.name.clone());
            lease.spec = Some(spec(0, None));
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            let ours = current.holder_identity.as_deref() == Some(&cfg.identity);
            let expired = current.renew_time.as_ref().is_none_or(|t| {
                let ttl = current.lease_duration_seconds.unwrap_or(0).max(0) as i64;
                t.0.as_second() + ttl < now.as_second()
            }) || current.holder_identity.is_none();
            if !ours && !expired {
                return Ok(false);
            }
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
            lease.spec = Some(spec(
                transitions,
                if ours { current.acquire_time } else { None },
            ));
            match leases
                .replace(&cfg.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn release(leases: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = leases.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(&cfg.identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(e) = leases
        .replace(&cfg.name, &PostParams::default(), &lease)
        .await
    {
        tracing::warn!(error = %e, "cannot release the lease");
    }
}
