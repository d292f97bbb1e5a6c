//! The life of every Vispyr binary, written once: load the config (exit 64
//! naming the bad key), start logging, run the service on a Tokio runtime
//! until SIGTERM/SIGINT, and turn a failure into its error chain and exit 1.

use std::error::Error;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::CommonArgs;
use crate::{shutdown, telemetry};

pub type BoxError = Box<dyn Error + Send + Sync>;

/// Runs `service(config, shutdown)` for the binary whose env overrides start
/// with `env_prefix` (e.g. `VISPYR_GATEWAY_`).
pub fn main<C, F, Fut>(args: &CommonArgs, env_prefix: &str, service: F) -> ExitCode
where
    C: DeserializeOwned,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let config: C = match args.load(env_prefix) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::from(e.exit_code());
        }
    };
    if let Err(e) = telemetry::init(args.log_format, &args.log_level) {
        eprintln!("error: {}", chain(&e));
        return ExitCode::from(crate::config::EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let token = shutdown::on_signal()?;
        service(config, token).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %chain(e.as_ref()), "exiting");
            eprintln!("error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// "outer: middle: inner", the way an operator reads an error in a log line.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let outer = crate::admin::AdminError::Bind {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: inner,
        };
        assert_eq!(
            chain(&outer),
            "cannot bind the admin server to 127.0.0.1:1: connection refused"
        );
    }
}
