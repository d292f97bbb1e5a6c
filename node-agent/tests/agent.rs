//! The node-agent binary: as root it profiles, exports what it sampled to a
//! real Pyroscope and serves its admin endpoints until SIGTERM; without the capabilities it needs it exits at
//! once naming each; a bad config exits 64 naming the key.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use vispyr_e2e::process::{Process, free_port};
use vispyr_e2e::{Pyroscope, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_vispyr-node-agent");

#[tokio::test]
async fn profiles_serves_metrics_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pyroscope = Pyroscope::start().await.unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["--set", &format!("admin_addr=127.0.0.1:{port}")])
        .args([
            "--set",
            &format!("exporter.endpoint={}", pyroscope.otlp_grpc_endpoint()),
        ])
        .args(["--set", "profiling.interval_ms=1000"])
        .args(["--set", "profiling.drain_interval_ms=250"]);
    let mut agent =
        Process::spawn("vispyr-node-agent", cmd, &dir.path().join("agent.log")).unwrap();

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let readyz = format!("{base}/readyz");
    agent
        .wait_ready(Duration::from_secs(30), || {
            let req = http.get(&readyz).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await
        .expect("the agent becomes ready");
    let metrics = format!("{base}/metrics");
    // This test process and the build around it keep the CPUs busy.
    eventually(Duration::from_secs(20), || {
        let req = http.get(&metrics).send();
        async move {
            let text = req
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let samples = text
                .lines()
                .find_map(|l| l.strip_prefix("vispyr_node_agent_profiler_samples_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let drains = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("vispyr_node_agent_profiler_drain_duration_seconds_count ")
                })
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if samples > 0 && drains >= 2 {
                Ok(())
            } else {
                Err(format!("samples {samples}, drains {drains}"))
            }
        }
    })
    .await
    .expect("samples counted over several drains");
    // Outside Kubernetes every process is a host process, named by its executable.
    eventually(Duration::from_secs(30), || {
        let pyroscope = &pyroscope;
        async move {
            let values = pyroscope
                .label_values("vispyr_host_process")
                .await
                .map_err(|e| e.to_string())?;
            if values.iter().any(|v| v == "true") {
                Ok(())
            } else {
                Err(format!("host process profiles in Pyroscope: {values:?}"))
            }
        }
    })
    .await
    .expect("the profiles of an interval reach Pyroscope");

    let status = agent
        .terminate(Duration::from_secs(10))
        .expect("the agent exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        agent.log_tail()
    );
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let out = Command::new(BIN)
        .env("VISPYR_NODE_AGENT_PROFILING__FREQUENCY_HZ", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("profiling.frequency_hz") && stderr.contains("out of range"),
        "{stderr}"
    );
}

/// `nobody` on Debian and most distributions.
const NOBODY: u32 = 65534;

#[tokio::test]
async fn unprivileged_start_names_the_missing_capabilities() {
    // The build's target dir may sit in a home directory the unprivileged
    // user cannot enter: run a copy from a directory it can.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("vispyr-node-agent");
    std::fs::copy(BIN, &bin).unwrap();

    let mut cmd = Command::new(&bin);
    cmd.args(["--set", "admin_addr=127.0.0.1:0"])
        .current_dir(dir.path());
    // SAFETY: setgroups/setgid/setuid are async-signal-safe; nothing else
    // runs between fork and exec. Dropping root clears every capability.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let log = dir.path().join("agent.log");
    let mut agent = Process::spawn("vispyr-node-agent", cmd, &log).unwrap();

    let exited = eventually(Duration::from_secs(20), || {
        let result = agent.check_running();
        async move {
            match result {
                Err(vispyr_e2e::Error::Exited { status, log, .. }) => Ok((status, log)),
                other => Err(format!("still running: {other:?}")),
            }
        }
    })
    .await
    .expect("the agent exits when it lacks capabilities");
    let (status, log) = exited;
    assert!(!status.contains("exit status: 0"), "{status}");
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_CHECKPOINT_RESTORE",
    ] {
        assert!(error.contains(cap), "{cap} is not named: {error}");
    }
    assert!(error.contains("privileged is not needed"), "{error}");
}
