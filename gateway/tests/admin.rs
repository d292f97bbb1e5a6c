//! The gateway binary as the chart runs it (no exporter configured): admin endpoints up, ready, clean
//! exit on SIGTERM, and a bad config refused with exit 64 naming the key.

use std::process::Command;
use std::time::Duration;

use vispyr_e2e::process::{Process, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_vispyr-gateway");

#[tokio::test]
async fn serves_admin_endpoints_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("--set").arg(format!("admin_addr=127.0.0.1:{port}"));
    // Not the chart's 4317/4318: other tests run alongside.
    cmd.arg("--set")
        .arg(format!("grpc_addr=127.0.0.1:{}", free_port()));
    cmd.arg("--set")
        .arg(format!("http_addr=127.0.0.1:{}", free_port()));
    let mut gateway =
        Process::spawn("vispyr-gateway", cmd, &dir.path().join("gateway.log")).unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let readyz = format!("{base}/readyz");
    gateway
        .wait_ready(Duration::from_secs(20), || {
            let req = http.get(&readyz).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .expect("gateway becomes ready");
    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(healthz.status().is_success());
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vispyr_build_info{version=\"0.1.0\"} 1"),
        "{metrics}"
    );

    let status = gateway
        .terminate(Duration::from_secs(10))
        .expect("gateway exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gateway.log_tail()
    );
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let out = Command::new(BIN)
        .env("VISPYR_GATEWAY_ADMIN_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin_addr") && stderr.contains("VISPYR_GATEWAY_ADMIN_ADDR"),
        "{stderr}"
    );
}

#[test]
fn a_ring_peer_without_a_port_is_refused_by_key() {
    let out = Command::new(BIN)
        .args(["--set", "ring.peers=[gw-0.gw, gw-1.gw:4319]"])
        .args(["--set", "ring.addr=127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"ring.peers: "gw-0.gw" is not host:port"#),
        "{stderr}"
    );
}
