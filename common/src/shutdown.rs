//! Turns SIGTERM (Kubernetes stopping the pod) and SIGINT (Ctrl-C) into a
//! `CancellationToken` that every long-running task watches to drain.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[error("cannot install a handler for {signal}")]
pub struct ShutdownError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// Returns a token cancelled by the first SIGTERM or SIGINT. Must be called
/// inside a Tokio runtime. The handlers are installed before this returns, so
/// a signal that arrives right after is not lost.
///
/// A second signal exits at once with 128 + the signal number: installing
/// the handlers replaced the default action for good, so without this a
/// stuck drain could not be interrupted short of SIGKILL.
pub fn on_signal() -> Result<CancellationToken, ShutdownError> {
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = tokio::select! {
            Some(()) = term.recv() => "SIGTERM",
            Some(()) = int.recv() => "SIGINT",
            // The runtime is shutting down; nobody is left to drain.
            else => return,
        };
        tracing::info!(signal, "shutting down");
        cancel.cancel();

        let (signal, code) = tokio::select! {
            Some(()) = term.recv() => ("SIGTERM", 128 + 15),
            Some(()) = int.recv() => ("SIGINT", 128 + 2),
            else => return,
        };
        tracing::warn!(signal, "second signal, exiting without finishing the drain");
        std::process::exit(code);
    });
    Ok(token)
}

fn install(kind: SignalKind, name: &'static str) -> Result<Signal, ShutdownError> {
    signal(kind).map_err(|source| ShutdownError {
        signal: name,
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let token = on_signal().unwrap();
        assert!(!token.is_cancelled());
        // Only this test signals the test process, and the handler is installed by now.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(5), token.cancelled())
            .await
            .expect("token cancelled after SIGTERM");
    }
}
