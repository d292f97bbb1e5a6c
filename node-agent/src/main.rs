//! vispyr-node-agent: samples every CPU with eBPF and hands symbolized
//! stacks to export. See the library for the parts.

use std::process::ExitCode;

use clap::Parser;
use vispyr_common::config::CommonArgs;

#[derive(Parser)]
#[command(version, about = "Vispyr node-agent: eBPF CPU profiler")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vispyr_common::app::main(
        &cli.common,
        "VISPYR_NODE_AGENT_",
        vispyr_node_agent::service::run,
    )
}
