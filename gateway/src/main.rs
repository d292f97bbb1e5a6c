//! vispyr-gateway: OTLP receivers, the hash ring, span metrics and exporters
//! arrive with their issue; today it serves its admin endpoints on :8888.

fn main() -> std::process::ExitCode {
    vispyr_common::app::admin_only("VISPYR_GATEWAY_", 8888, env!("CARGO_PKG_VERSION"))
}
