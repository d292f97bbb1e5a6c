//! node_exporter with its default collectors, the reference the node-agent's
//! host metrics are compared with.

use tempfile::TempDir;

use super::{command, spawn_http_ready, temp_dir};
use crate::Error;
use crate::process::{Process, free_port};

pub struct NodeExporter {
    // Field order is drop order: the process goes before its dir.
    _process: Process,
    url: String,
    _dir: TempDir,
}

impl NodeExporter {
    /// Starts node_exporter on a free loopback port, reading this machine's
    /// /proc and /sys, and waits until it serves `/metrics`.
    pub async fn start() -> Result<Self, Error> {
        let dir = temp_dir("vispyr-node-exporter-")?;
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut cmd = command("node_exporter", dir.path())?;
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let (process, _) = spawn_http_ready("node_exporter", cmd, dir.path(), &url).await?;
        Ok(Self {
            _process: process,
            url,
            _dir: dir,
        })
    }

    /// Where Prometheus would scrape it.
    pub fn metrics_url(&self) -> &str {
        &self.url
    }
}
