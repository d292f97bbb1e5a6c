//! The admin HTTP server every binary runs: `/metrics` for Prometheus and
//! the `/healthz` (liveness) and `/readyz` (readiness) probes for the kubelet.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the probes report. Clones share state, so the component that knows
/// (e.g. the drain on SIGTERM) flips the flag the server reads.
#[derive(Debug, Clone)]
pub struct Health(Arc<Flags>);

#[derive(Debug)]
struct Flags {
    live: AtomicBool,
    ready: AtomicBool,
}

impl Health {
    /// Live but not ready: a process starts serving traffic only once it says so.
    pub fn new() -> Self {
        Health(Arc::new(Flags {
            live: AtomicBool::new(true),
            ready: AtomicBool::new(false),
        }))
    }

    pub fn set_ready(&self, ready: bool) {
        // Each flag stands alone and guards no other data, so no ordering is needed.
        self.0.ready.store(ready, Ordering::Relaxed);
    }

    /// `false` makes the kubelet restart the container.
    pub fn set_live(&self, live: bool) {
        self.0.live.store(live, Ordering::Relaxed);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot bind the admin server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the admin server failed")]
    Serve(#[source] io::Error),
}

/// Registers `vispyr_build_info{version="..."} 1`, so dashboards can tell
/// which release each pod runs. Use the unprefixed root registry.
pub fn register_build_info(registry: &mut Registry, version: &str) {
    registry.register(
        "vispyr_build",
        "Release of this binary; the value is always 1",
        Info::new(vec![("version", version.to_owned())]),
    );
}

/// Binds `addr` and serves in a spawned task until `shutdown` is cancelled,
/// then finishes in-flight requests and ends. Returns once bound, with the
/// actual address (so `127.0.0.1:0` works) and the task's handle.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<Result<(), AdminError>>), AdminError> {
    let bind_error = |source| AdminError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;

    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Admin { registry, health });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(AdminError::Serve)
    });
    tracing::info!(%bound, "admin server listening");
    Ok((bound, task))
}

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    health: Health,
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &admin.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(err) => {
            tracing::error!(%err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn healthz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.health.0.live.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    let flags = &admin.health.0;
    if !flags.live.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    } else if !flags.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::metrics::counter::Counter;

    use super::*;

    async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
        let response = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_and_probes_until_cancelled() {
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        registry.register(
            "test_requests",
            "Requests seen by the test",
            requests.clone(),
        );
        requests.inc_by(3);
        register_build_info(&mut registry, "1.2.3");
        let health = Health::new();
        let shutdown = CancellationToken::new();

        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();

        let response = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let body = response.text().await.unwrap();
        assert!(body.contains("\ntest_requests_total 3\n"), "{body}");
        assert!(
            body.contains("\nvispyr_build_info{version=\"1.2.3\"} 1\n"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");

        assert_eq!(get(&client, addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(&client, addr, "/readyz").await,
            (503, "not ready\n".into())
        );
        health.set_ready(true);
        assert_eq!(get(&client, addr, "/readyz").await, (200, "ready\n".into()));

        health.set_live(false);
        assert_eq!(
            get(&client, addr, "/healthz").await,
            (503, "not live\n".into())
        );
        assert_eq!(
            get(&client, addr, "/readyz").await,
            (503, "not live\n".into())
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server ends after cancellation")
            .unwrap()
            .unwrap();
        assert!(
            client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(
            addr,
            Arc::new(Registry::default()),
            Health::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
