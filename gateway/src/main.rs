//! vispyr-gateway: OTLP in, Tempo out. See the library for the parts.

use std::process::ExitCode;

use clap::Parser;
use vispyr_common::config::CommonArgs;

#[derive(Parser)]
#[command(version, about = "Vispyr gateway: OTLP receivers and exporters")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vispyr_common::app::main(&cli.common, "VISPYR_GATEWAY_", vispyr_gateway::run)
}
