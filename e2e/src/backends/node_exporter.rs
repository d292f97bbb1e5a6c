//! node_exporter with its default collectors, the reference the node-agent's
//! host metrics are compared with.

use std::path::Path;

use tempfile::TempDir;

use super::{command, send, spawn_http_ready, temp_dir};
use crate::Error;
use crate::process::{Process, free_port};

pub struct NodeExporter {
    // Field order is drop order: the process goes before its dir.
    process: Process,
    url: String,
    http: reqwest::Client,
    dir: TempDir,
}

impl NodeExporter {
    /// Starts node_exporter on a free loopback port, reading this machine's
    /// /proc and /sys, and waits until it serves `/metrics`.
    pub async fn start() -> Result<Self, Error> {
        let dir = temp_dir("vispyr-node-exporter-")?;
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = command("node_exporter", dir.path())?;
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let (process, http) =
            spawn_http_ready("node_exporter", cmd, dir.path(), &format!("{url}/metrics")).await?;
        Ok(Self {
            process,
            url,
            http,
            dir,
        })
    }

    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.url)
    }

    /// One scrape of `/metrics`, in the Prometheus text format.
    pub async fn scrape(&self) -> Result<String, Error> {
        let what = "node_exporter scrape";
        send(what, self.http.get(self.metrics_url()))
            .await?
            .text()
            .await
            .map_err(|e| Error::http(what, e))
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
