//! vispyr-node-agent: the eBPF profiler and host metrics arrive with their
//! issue; today it serves its admin endpoints on :9100.

fn main() -> std::process::ExitCode {
    vispyr_common::app::admin_only("VISPYR_NODE_AGENT_", 9100, env!("CARGO_PKG_VERSION"))
}
