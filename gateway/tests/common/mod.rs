//! The gateway binary under test, started on free loopback ports.

use std::process::Command;
use std::time::Duration;

use vispyr_e2e::process::{Process, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_vispyr-gateway");
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Gateway {
    pub process: Process,
    pub grpc: String,
    pub http: String,
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(sets: &[String]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        let mut cmd = Command::new(BIN);
        for set in [
            format!("grpc_addr=127.0.0.1:{grpc}"),
            format!("http_addr=127.0.0.1:{http}"),
            format!("admin_addr=127.0.0.1:{admin}"),
        ]
        .iter()
        .chain(sets)
        {
            cmd.arg("--set").arg(set);
        }
        cmd.env("VISPYR_LOG", "info,vispyr_gateway=debug");
        let mut process =
            Process::spawn("vispyr-gateway", cmd, &dir.path().join("gateway.log")).unwrap();
        let client = reqwest::Client::new();
        let readyz = format!("http://127.0.0.1:{admin}/readyz");
        process
            .wait_ready(WAIT, || {
                let req = client.get(&readyz).send();
                async move { req.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await
            .expect("gateway becomes ready");
        Gateway {
            process,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("http://127.0.0.1:{http}"),
            admin: format!("http://127.0.0.1:{admin}"),
            _dir: dir,
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of `/metrics`, 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}
