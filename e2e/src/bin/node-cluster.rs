//! Runs a [`NodeCluster`] in the foreground until SIGINT or SIGTERM, then
//! tears it down and reports any trace it left (exit 1). For trying things by
//! hand and for `make demo`:
//!
//!   node-cluster [IMAGE...]   images to build and import once it is up
//!   node-cluster --demo       Vispyr and the demo app (vispyr_e2e::demo)
//!
//! Prints the kubeconfig and containerd socket to use while it runs, and
//! with --demo what to open, after a line `node-cluster: demo ready`.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use vispyr_e2e::{Error, NodeCluster, demo};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let (with_demo, images): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a == "--demo");
    let started = std::time::Instant::now();
    let cluster = NodeCluster::start().await?;
    println!("node-cluster: node Ready after {:?}", started.elapsed());
    if !images.is_empty() {
        let names: Vec<&str> = images.iter().map(String::as_str).collect();
        print!("{}", cluster.import_images(&names).await?);
    }
    if !with_demo.is_empty() {
        // A failed install still tears the cluster down (the drop sweeps).
        demo::install(&cluster).await?;
        println!(
            "node-cluster: demo ready after {:?}\n\n{}",
            started.elapsed(),
            demo::instructions(&cluster)
        );
    }
    println!(
        "node-cluster: export KUBECONFIG={}\nnode-cluster: containerd socket {}\nnode-cluster: Ctrl-C (or SIGTERM) stops and cleans up",
        cluster.control_plane().kubeconfig().display(),
        cluster.containerd_socket().display(),
    );
    let handler = |kind| {
        signal(kind).map_err(|source| Error::Spawn {
            name: "a signal handler".into(),
            source,
        })
    };
    let (mut int, mut term) = (
        handler(SignalKind::interrupt())?,
        handler(SignalKind::terminate())?,
    );
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    let stopping = std::time::Instant::now();
    cluster.shutdown().await?;
    println!(
        "node-cluster: torn down in {:?}, nothing left behind",
        stopping.elapsed()
    );
    Ok(())
}
