//! vispyr-operator: see the library for what it does; this only wires flags,
//! config and the Kubernetes client together.

use std::process::ExitCode;

use clap::Parser;
use vispyr_common::config::CommonArgs;
use vispyr_operator::service::{self, Config};

#[derive(Parser)]
#[command(
    version,
    about = "Vispyr operator: VispyrInstrumentation controller and Node.js injection webhook"
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vispyr_common::app::main(
        &cli.common,
        "VISPYR_OPERATOR_",
        |config: Config, shutdown| async move {
            let client = kube::Client::try_default().await?;
            service::run(client, config, shutdown).await?;
            Ok(())
        },
    )
}
