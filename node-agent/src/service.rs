//! The agent's life: start the sampler (failing fast with what is missing),
//! serve the admin endpoints, drain and symbolize every drain interval, and
//! every interval hand a [`Batch`] to export; on SIGTERM, one last drain so
//! the partial interval is not lost.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use vispyr_common::admin::{self, Health};
use vispyr_common::app::BoxError;

use crate::attribution;
use crate::config::{Config, Profiling};
use crate::export::host_metrics::HostMetricsExport;
use crate::export::{ProfileExport, otlp};
use crate::hostmetrics::{self, HostMetrics};
use crate::metrics::ProfilerMetrics;
use crate::sampler::{Sampler, SamplerError};
use crate::stack::Batch;
use crate::symbolize::{Merged, Symbolizer};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Batches waiting for the exporter; beyond, the newest is dropped (and
/// counted) rather than letting the kernel maps fill up.
pub const BATCH_QUEUE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("cannot start the profiler thread")]
    Thread(#[source] std::io::Error),
    #[error("the profiler thread died")]
    Died,
}

/// Sampler + symbolizer: everything between the kernel maps and a [`Batch`].
pub struct Profiler {
    sampler: Sampler,
    symbolizer: Symbolizer,
    metrics: ProfilerMetrics,
    frequency_hz: u64,
    since: SystemTime,
    pending: Merged,
}

impl Profiler {
    pub fn start(config: &Profiling, metrics: ProfilerMetrics) -> Result<Self, SamplerError> {
        let sampler = Sampler::start(config)?;
        Ok(Profiler {
            sampler,
            symbolizer: Symbolizer::new(),
            metrics,
            frequency_hz: config.frequency_hz.0,
            since: SystemTime::now(),
            pending: Merged::default(),
        })
    }

    /// Everything sampled since the previous call (or the start), named.
    /// Blocking: syscalls and file reads.
    pub fn collect(&mut self) -> Result<Batch, SamplerError> {
        self.drain()?;
        Ok(self.take_batch())
    }

    /// Empties the kernel maps into the pending batch.
    pub fn drain(&mut self) -> Result<(), SamplerError> {
        let started = Instant::now();
        let drained = self.sampler.drain()?;
        let drain_time = started.elapsed();
        self.metrics.drain_seconds.observe(drain_time.as_secs_f64());
        self.metrics.record_drain(&drained.counters);

        let started = Instant::now();
        let stats = self
            .symbolizer
            .symbolize(&drained.samples, &mut self.pending);
        self.metrics
            .symbolize_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.record_symbolization(&stats);
        tracing::debug!(
            ?drain_time,
            symbolize_time = ?started.elapsed(),
            samples = drained.counters.samples,
            stacks = drained.samples.len(),
            ?stats,
            "drained"
        );
        Ok(())
    }

    /// What was drained since the previous batch.
    pub fn take_batch(&mut self) -> Batch {
        let end = SystemTime::now();
        Batch {
            start: std::mem::replace(&mut self.since, end),
            end,
            frequency_hz: self.frequency_hz,
            samples: self.pending.take(),
        }
    }

    /// Starts a profiler on a thread of its own (blazesym's symbolizer
    /// cannot move between threads) that collects every `interval` and
    /// sends each batch to `batches` until `shutdown`, then collects once
    /// more. Returns once the sampler is attached, or with why it is not.
    pub async fn spawn(
        config: Profiling,
        metrics: ProfilerMetrics,
        batches: mpsc::Sender<Batch>,
        shutdown: CancellationToken,
    ) -> Result<ProfilerTask, ServiceError> {
        let runtime = tokio::runtime::Handle::current();
        let (started_tx, started) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("profiler".into())
            .spawn(move || {
                let profiler = match Profiler::start(&config, metrics) {
                    Ok(profiler) => profiler,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let result = profiler.run(&runtime, &config, &batches, &shutdown);
                let _ = done_tx.send(result);
            })
            .map_err(ServiceError::Thread)?;
        started.await.map_err(|_| ServiceError::Died)??;
        Ok(ProfilerTask { done })
    }

    fn run(
        mut self,
        runtime: &tokio::runtime::Handle,
        config: &Profiling,
        batches: &mpsc::Sender<Batch>,
        shutdown: &CancellationToken,
    ) -> Result<(), SamplerError> {
        let now = tokio::time::Instant::now();
        let (mut next_drain, mut next_batch) =
            (now + config.drain_interval(), now + config.interval());
        loop {
            let last = runtime.block_on(async {
                tokio::select! {
                    () = tokio::time::sleep_until(next_drain) => false,
                    () = shutdown.cancelled() => true,
                }
            });
            self.drain()?;
            let now = tokio::time::Instant::now();
            // After a slow drain, skip the missed ticks rather than catch up.
            next_drain = (next_drain + config.drain_interval()).max(now);
            if !last && now < next_batch {
                continue;
            }
            next_batch = (next_batch + config.interval()).max(now);
            match batches.try_send(self.take_batch()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("the exporter is behind: dropping a profile batch");
                    self.metrics.batches_dropped.inc();
                }
                // Nobody exports any more: the agent is stopping.
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
            if last {
                return Ok(());
            }
        }
    }
}

/// A running profiler thread.
pub struct ProfilerTask {
    done: oneshot::Receiver<Result<(), SamplerError>>,
}

impl ProfilerTask {
    /// Waits until the profiler has sent its last batch.
    pub async fn wait(self) -> Result<(), ServiceError> {
        Ok(self.done.await.map_err(|_| ServiceError::Died)??)
    }
}

/// The node-agent binary's service (see `main.rs`).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BoxError> {
    let mut registry = Registry::default();
    admin::register_build_info(&mut registry, VERSION);
    let metrics = ProfilerMetrics::register(&mut registry);
    let export_metrics = otlp::Metrics::register(&mut registry);
    let host = Arc::new(HostMetrics::new(&config.host_metrics)?);
    // Unprefixed: node_exporter's names, so community dashboards work.
    hostmetrics::register(&mut registry, host.clone());

    // A bad exporter endpoint is refused before the eBPF program is loaded.
    let profiles = ProfileExport::start(
        &config,
        attribution::kube_client().await,
        export_metrics.clone(),
    )?;
    let host_export = HostMetricsExport {
        host,
        exporter: otlp::Exporter::start(otlp::METRICS, &config.exporter, export_metrics)?,
        host_name: attribution::host_name(),
        node_name: config.attribution.node_name.clone(),
        every: config.profiling.interval(),
        shutdown_timeout: config.shutdown_timeout(),
    };

    let (tx, rx) = mpsc::channel(BATCH_QUEUE);
    // Before anything listens: a missing capability ends the process at once.
    let profiler = Profiler::spawn(config.profiling.clone(), metrics, tx, shutdown).await?;

    let health = Health::new();
    let admin_stop = CancellationToken::new();
    let (_, admin_task) = admin::serve(
        config.admin_addr,
        Arc::new(registry),
        health.clone(),
        admin_stop.clone(),
    )
    .await?;

    // Both end with the profiler: the profiles consumer when its last batch
    // is in (it drops the sender), the host metrics when told so.
    let consumer = tokio::spawn(profiles.run(rx));
    let host_stop = CancellationToken::new();
    let host_task = tokio::spawn(host_export.run(host_stop.clone()));
    health.set_ready(true);
    let result = profiler.wait().await;
    health.set_ready(false);
    host_stop.cancel();
    consumer.await?;
    host_task.await?;
    admin_stop.cancel();
    admin_task.await??;
    Ok(result?)
}
