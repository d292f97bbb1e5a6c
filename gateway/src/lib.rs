//! vispyr-gateway: OTLP receivers (gRPC and HTTP) for traces, metrics, logs
//! and profiles; the hash ring that sends each span to the replica owning
//! its trace ID; span metrics and service graph, each series written by its
//! owner on the ring; exporters of traces to an OTLP/gRPC backend (Tempo),
//! of metrics to Prometheus remote write and of profiles to Pyroscope.

pub mod config;
pub mod exporter;
pub mod grpc;
pub mod http;
pub mod http_exporter;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod profiles;
pub mod queue;
pub mod remote_write;
pub mod ring;
pub mod spanmetrics;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vispyr_common::admin::{self, Health};
use vispyr_common::app::BoxError;

pub use config::Config;

use crate::exporter::{TraceExporter, TraceQueue};
use crate::http_exporter::HttpExporter;
use crate::pipeline::Pipeline;
use crate::queue::Queue;
use crate::ring::{Ring, RingRouter};
use crate::spanmetrics::{DeltaRouter, Generator, LocalOnly};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot bind the {what} receiver to {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {0} receiver failed")]
    Serve(&'static str, #[source] BoxError),
}

/// Runs the gateway until `shutdown`, then drains: readiness false, it
/// leaves the ring (other members route around it; new forwards and deltas
/// to it are refused as UNAVAILABLE), the receivers stop taking requests
/// (finishing those in flight, forwards included), the span metrics hand
/// this member's series and waiting edge halves to their new owners, the
/// queues are flushed to the backends for up to `drain_timeout_ms` (spans
/// are never handed to another member, so nothing is handed off twice),
/// then the ring service and the admin server stop.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BoxError> {
    let mut registry = Registry::default();
    admin::register_build_info(&mut registry, VERSION);
    let metrics = metrics::Metrics::register(&mut registry);

    let traces = &config.exporters.traces;
    let exporter = match &traces.endpoint {
        Some(endpoint) => {
            let exporter_metrics = metrics.spans.exporter("traces");
            let queue = Arc::new(TraceQueue::new(
                traces.queue_spans,
                exporter_metrics.clone(),
            ));
            let exporter = TraceExporter::new(endpoint, traces.clone(), exporter_metrics)?;
            Some((queue, exporter))
        }
        None => {
            tracing::warn!("exporters.traces.endpoint is not set: received spans are dropped");
            None
        }
    };
    let ring = match config.ring.enabled() {
        // The ring service takes twice that (see below): a coalesced
        // forward stays within it.
        true => {
            Some(Ring::start(&config.ring, config.max_request_bytes, metrics.ring.clone()).await?)
        }
        false => None,
    };
    let metrics_config = &config.exporters.metrics;
    let metrics_export = match &metrics_config.endpoint {
        Some(url) => {
            let queue = Arc::new(Queue::new(
                metrics_config.queue_samples,
                metrics.samples.exporter("metrics"),
            ));
            Some((queue, remote_write::exporter(metrics_config, url)?))
        }
        None => {
            tracing::warn!(
                "exporters.metrics.endpoint is not set: received metrics are dropped, span metrics are not written"
            );
            None
        }
    };
    let profiles_config = &config.exporters.profiles;
    let profiles_export = match &profiles_config.endpoint {
        Some(url) => {
            let queue = Arc::new(Queue::new(
                profiles_config.queue_profiles,
                metrics.profiles.exporter("profiles"),
            ));
            Some((queue, profiles::exporter(profiles_config, url)?))
        }
        None => {
            tracing::warn!("exporters.profiles.endpoint is not set: received profiles are dropped");
            None
        }
    };
    let generator = match config.span_metrics.enabled {
        true => Some(Arc::new(Generator::new(
            &config.span_metrics,
            match &ring {
                Some(ring) => Arc::new(RingRouter::new(ring.clone())) as Arc<dyn DeltaRouter>,
                None => Arc::new(LocalOnly),
            },
            metrics_export.as_ref().map(|(q, _)| q.clone()),
            metrics.generator.clone(),
        )?)),
        false => None,
    };
    let mut pipeline = Pipeline::new(metrics, exporter.as_ref().map(|(q, _)| q.clone()));
    if let Some(ring) = &ring {
        pipeline = pipeline.with_ring(ring.clone());
    }
    if let Some(generator) = &generator {
        pipeline = pipeline
            .with_observer(generator.clone())
            .with_deltas_handler(generator.clone());
    }
    if let Some((queue, _)) = &metrics_export {
        pipeline = pipeline.with_metrics_queue(queue.clone());
    }
    if let Some((queue, _)) = &profiles_export {
        pipeline = pipeline.with_profiles_queue(queue.clone());
    }
    let pipeline = Arc::new(pipeline);

    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { what, addr, source })
    };
    let grpc_listener = bind("OTLP/gRPC", config.grpc_addr).await?;
    let http_listener = bind("OTLP/HTTP", config.http_addr).await?;
    let ring_listener = match ring {
        Some(_) => Some(bind("ring", config.ring.addr).await?),
        None => None,
    };

    let health = Health::new();
    let admin_stop = CancellationToken::new();
    let (_, admin_task) = admin::serve(
        config.admin_addr,
        Arc::new(registry),
        health.clone(),
        admin_stop.clone(),
    )
    .await?;

    let abort = CancellationToken::new();
    let exporter_task = exporter.map(|(queue, exporter)| {
        let abort = abort.clone();
        let task_queue = queue.clone();
        let task = tokio::spawn(async move { exporter.run(&task_queue, abort).await });
        (queue, task)
    });

    let linger = std::time::Duration::from_millis(metrics_config.batch_timeout_ms);
    let metrics_task = metrics_export.map(|(queue, exporter)| {
        let max = metrics_config.batch_samples;
        spawn_http(exporter, queue, max, linger, remote_write::encode, &abort)
    });
    let profiles_task = profiles_export.map(|(queue, exporter)| {
        let linger = std::time::Duration::ZERO;
        spawn_http(
            exporter,
            queue,
            profiles::BATCH,
            linger,
            profiles::encode,
            &abort,
        )
    });
    let generator_stop = CancellationToken::new();
    let generator_task = generator.map(|g| tokio::spawn(g.run(generator_stop.clone())));

    let receivers_stop = CancellationToken::new();
    let max = config.max_request_bytes;
    let grpc_task = {
        let stop = receivers_stop.clone();
        let server = tonic::transport::Server::builder()
            .add_service(grpc::OtlpGrpc::<otlp::Traces>::new(pipeline.clone(), max))
            .add_service(grpc::OtlpGrpc::<otlp::Metrics>::new(pipeline.clone(), max))
            .add_service(grpc::OtlpGrpc::<otlp::Logs>::new(pipeline.clone(), max))
            .add_service(grpc::OtlpGrpc::<otlp::Profiles>::new(pipeline.clone(), max));
        tokio::spawn(async move {
            server
                // Without TCP_NODELAY a small answer can wait for the
                // client's delayed ACK (~40 ms on Linux): the bench's p99.
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await
                .map_err(|e| GatewayError::Serve("OTLP/gRPC", e.into()))
        })
    };
    let http_task = {
        let stop = receivers_stop.clone();
        let app = http::router(pipeline.clone(), max);
        tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .map_err(|e| GatewayError::Serve("OTLP/HTTP", e.into()))
        })
    };
    let ring_stop = CancellationToken::new();
    let ring_task = ring_listener.map(|listener| {
        let stop = ring_stop.clone();
        // A part of a request may carry more resource copies than the request.
        let service = ring::server::RingService::new(pipeline.clone(), max.saturating_mul(2));
        let server = tonic::transport::Server::builder().add_service(service);
        tokio::spawn(async move {
            server
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await
                .map_err(|e| GatewayError::Serve("ring", e.into()))
        })
    });
    tracing::info!(
        grpc = %config.grpc_addr,
        http = %config.http_addr,
        traces_endpoint = config.exporters.traces.endpoint.as_deref().unwrap_or("none"),
        "OTLP receivers listening"
    );
    health.set_ready(true);

    shutdown.cancelled().await;
    tracing::info!("draining");
    health.set_ready(false);
    if let Some(ring) = &ring {
        ring.leave();
    }
    let deadline = tokio::time::Instant::now() + config.drain_timeout();
    receivers_stop.cancel();
    for (what, task) in [("OTLP/gRPC", grpc_task), ("OTLP/HTTP", http_task)] {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %vispyr_common::app::chain(&e), "{what} receiver")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} receiver task"),
            Err(_) => tracing::warn!("{what} receiver still had requests at the drain deadline"),
        }
    }
    // After leaving the ring: the span metrics' last interval and every
    // series this member owned go to their new owners (it owns none now, so
    // it writes nothing more); alone, they go to the metrics queue before it
    // closes.
    generator_stop.cancel();
    if let Some(task) = generator_task
        && tokio::time::timeout_at(deadline, task).await.is_err()
    {
        tracing::warn!("span metrics still flushing at the drain deadline");
    }
    if let Some((queue, task)) = exporter_task {
        drain("traces", &queue, task, deadline, &abort).await;
    }
    if let Some((queue, task)) = metrics_task {
        drain("metrics", &queue, task, deadline, &abort).await;
    }
    if let Some((queue, task)) = profiles_task {
        drain("profiles", &queue, task, deadline, &abort).await;
    }
    // Forwards this member took were answered once the queue settled them.
    ring_stop.cancel();
    if let Some(task) = ring_task {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %vispyr_common::app::chain(&e), "ring service")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "ring service task"),
            Err(_) => tracing::warn!("ring service still had calls at the drain deadline"),
        }
    }
    if let Some(ring) = &ring {
        ring.stop();
    }
    admin_stop.cancel();
    admin_task.await??;
    Ok(())
}

type Exporting<T> = (Arc<Queue<T>>, tokio::task::JoinHandle<()>);

/// Starts `exporter` on `queue`.
fn spawn_http<T: Send + 'static>(
    exporter: HttpExporter,
    queue: Arc<Queue<T>>,
    max: u64,
    linger: std::time::Duration,
    encode: fn(Vec<T>) -> bytes::Bytes,
    abort: &CancellationToken,
) -> Exporting<T> {
    let abort = abort.clone();
    let task_queue = queue.clone();
    let task =
        tokio::spawn(async move { exporter.run(&task_queue, max, linger, encode, abort).await });
    (queue, task)
}

/// Closes `queue` and lets its exporter flush it until `deadline`; then
/// aborts (what is left is dropped and counted).
async fn drain<T>(
    what: &'static str,
    queue: &Queue<T>,
    mut task: tokio::task::JoinHandle<()>,
    deadline: tokio::time::Instant,
    abort: &CancellationToken,
) {
    queue.close();
    let held = queue.held();
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        abort.cancel();
        let _ = task.await;
    }
    tracing::info!(flushed_or_dropped = held, "{what} queue drained");
}
