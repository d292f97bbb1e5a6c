//! The consumer of the profiler's batches: attributes each batch to pods and
//! processes, turns it into one OTLP profiles request and hands it to the
//! OTLP exporter (optionally also writing pprof files for debugging).

pub mod otlp;
pub mod pprof;
pub mod profiles;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use serde::Deserialize;
use tokio::sync::mpsc::Receiver;

use crate::attribution::{self, Attributor};
use crate::stack::Batch;

/// Config keys under `profiles`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub attribution: attribution::Config,
    pub exporter: otlp::Config,
    /// Also write every exported profile as `<dir>/<ms>-<n>-<service>.pb.gz`.
    pub pprof_dir: Option<PathBuf>,
    /// On shutdown, how long buffered profiles may take to be sent.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attribution: attribution::Config::default(),
            exporter: otlp::Config::default(),
            pprof_dir: None,
            shutdown_timeout_ms: 5_000,
        }
    }
}

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
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reach_the_chart_gateway_and_keys_are_checked() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.exporter.endpoint, "http://vispyr-gateway:4317");
        assert_eq!(c.attribution.mode, attribution::Mode::All);
        assert!(c.pprof_dir.is_none());
        let c: Config = serde_json::from_str(
            r#"{"attribution": {"mode": "opted-in", "node_name": "n1"},
                "exporter": {"buffer_bytes": 1024}, "pprof_dir": "/tmp/p"}"#,
        )
        .unwrap();
        assert_eq!(c.attribution.node_name.as_deref(), Some("n1"));
        assert_eq!(c.exporter.buffer_bytes, 1024);
        assert_eq!(c.exporter.timeout_ms, 10_000);
        let err = serde_json::from_str::<Config>(r#"{"exporter": {"bufer_bytes": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bufer_bytes"), "{err}");
    }
}
