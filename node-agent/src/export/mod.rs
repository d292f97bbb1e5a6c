//! The consumer of the profiler's batches: attributes each batch to pods and
//! processes, turns it into one OTLP profiles request and hands it to the
//! OTLP exporter (optionally also writing pprof files for debugging).

pub mod host_metrics;
pub mod otlp;
pub mod pprof;
pub mod profiles;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc::Receiver;

use crate::attribution::Attributor;
use crate::config::Config;
use crate::stack::Batch;

pub struct ProfileExport {
    attributor: Attributor,
    exporter: otlp::Exporter,
    pprof_dir: Option<PathBuf>,
    shutdown_timeout: Duration,
}

impl ProfileExport {
    /// Starts the pod watch (with a client) and the exporter on the current runtime.
    pub fn start(
        config: &Config,
        client: Option<kube::Client>,
        metrics: otlp::Metrics,
    ) -> Result<Self, otlp::ExporterError> {
        let exporter = otlp::Exporter::start(otlp::PROFILES, &config.exporter, metrics)?;
        Ok(ProfileExport {
            attributor: Attributor::new(&config.attribution, client),
            exporter,
            pprof_dir: config.pprof_dir.clone(),
            shutdown_timeout: config.shutdown_timeout(),
        })
    }

    /// Exports batches until the sender is dropped, then flushes.
    pub async fn run(mut self, mut batches: Receiver<Batch>) {
        while let Some(batch) = batches.recv().await {
            self.export(&batch);
        }
        self.exporter.shutdown(self.shutdown_timeout).await;
    }

    /// Attributes and buffers one batch.
    fn export(&mut self, batch: &Batch) {
        let groups = self.attributor.attribute(batch);
        if groups.is_empty() {
            return;
        }
        let (request, profiles) = profiles::request(batch, &groups);
        if let Some(dir) = &self.pprof_dir {
            // Debug output only: a slow disk delays this task, not the sampler.
            if let Err(e) = pprof::write(dir, &request) {
                tracing::warn!(error = %vispyr_common::app::chain(&e), "debug pprof output");
            }
        }
        self.exporter
            .push(Bytes::from(request.encode_to_vec()), profiles);
    }
}
