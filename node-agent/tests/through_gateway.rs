//! The node's whole path: the node-agent binary profiles this machine and
//! reads its host metrics, exports both over OTLP/gRPC to the real gateway
//! (run in-process, the same code as its binary), which writes the profiles
//! to a real Pyroscope and the host metrics to a real Prometheus, where they
//! arrive under node_exporter's names.

use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vispyr_e2e::process::{Process, free_port, loopback};
use vispyr_e2e::{Prometheus, Pyroscope, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_vispyr-node-agent");
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_host_metrics_reach_the_backends_through_the_gateway() {
    let (pyroscope, prometheus) = tokio::join!(Pyroscope::start(), Prometheus::start());
    let (pyroscope, prometheus) = (pyroscope.unwrap(), prometheus.unwrap());
    let grpc = free_port();
    let gateway_config: vispyr_gateway::Config = serde_json::from_value(serde_json::json!({
        "grpc_addr": loopback(grpc).to_string(),
        "http_addr": format!("127.0.0.1:{}", free_port()),
        "admin_addr": format!("127.0.0.1:{}", free_port()),
        "exporters": {
            "metrics": {"endpoint": prometheus.remote_write_url()},
            "profiles": {"endpoint": pyroscope.url()},
        },
    }))
    .unwrap();
    let stop = CancellationToken::new();
    let gateway = tokio::spawn(vispyr_gateway::run(gateway_config, stop.clone()));

    let dir = tempfile::tempdir().unwrap();
    let node = "node-under-test";
    let mut cmd = Command::new(BIN);
    cmd.args(["--set", &format!("admin_addr=127.0.0.1:{}", free_port())])
        .args([
            "--set",
            &format!("exporter.endpoint=http://{}", loopback(grpc)),
        ])
        .args(["--set", &format!("attribution.node_name={node}")])
        .args(["--set", "profiling.interval_ms=1000"])
        .args(["--set", "profiling.drain_interval_ms=250"]);
    let mut agent =
        Process::spawn("vispyr-node-agent", cmd, &dir.path().join("agent.log")).unwrap();

    // Host processes (this test, the build around it) profiled on the node.
    eventually(WAIT, || {
        let pyroscope = &pyroscope;
        async move {
            // Outside Kubernetes every process is a host process.
            let hosts = pyroscope
                .label_values("vispyr_host_process")
                .await
                .map_err(|e| e.to_string())?;
            let kinds = pyroscope
                .label_values("frame_kind")
                .await
                .map_err(|e| e.to_string())?;
            if hosts.iter().any(|h| h == "true") && kinds.iter().any(|k| k == "kernel") {
                Ok(())
            } else {
                Err(format!("host processes {hosts:?}, frame kinds {kinds:?}"))
            }
        }
    })
    .await
    .expect("profiles in Pyroscope, with their leaf frame kinds");

    // Host metrics under node_exporter's names, and a counter that counts.
    eventually(WAIT, || {
        let prometheus = &prometheus;
        async move {
            let cpu = prometheus
                .query("sum(node_cpu_seconds_total)")
                .await
                .map_err(|e| e.to_string())?;
            let memory = prometheus
                .query(&format!(
                    "node_memory_MemAvailable_bytes{{job=\"vispyr-node-agent\",instance=\"{node}\"}}"
                ))
                .await
                .map_err(|e| e.to_string())?;
            // Resource attributes land on target_info, per the OTLP to
            // Prometheus conversion.
            let target = prometheus
                .query(&format!("target_info{{k8s_node_name=\"{node}\"}}"))
                .await
                .map_err(|e| e.to_string())?;
            match (cpu.first(), memory.first()) {
                (Some((_, cpu)), Some((_, mem)))
                    if *cpu > 0.0 && *mem > 0.0 && !target.is_empty() =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "cpu {cpu:?}, memory {memory:?}, target_info {target:?}"
                )),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("host metrics in Prometheus: {e}\n{}", agent.log_tail()));

    let status = agent
        .terminate(Duration::from_secs(10))
        .expect("the agent exits");
    assert!(status.success(), "{status}:\n{}", agent.log_tail());
    stop.cancel();
    gateway.await.unwrap().expect("the gateway drains");
}
