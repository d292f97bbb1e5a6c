//! vispyr-gateway: OTLP in, Tempo out. See the library for the parts.

use std::process::ExitCode;

use clap::Parser;
use vispyr_common::config::CommonArgs;

// Every span is decoded into a few dozen small allocations and freed soon
// after, across threads: with glibc's allocator malloc/free took about a
// fifth of the gateway's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
