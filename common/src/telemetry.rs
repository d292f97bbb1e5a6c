//! Process-wide logging: `tracing` events to stderr, as text or as one JSON
//! object per line.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::{EnvFilter, fmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {directives:?} (from {from})")]
    Filter {
        directives: String,
        from: &'static str,
        #[source]
        source: ParseError,
    },
    #[error("cannot install the global tracing subscriber")]
    Install(#[source] TryInitError),
}

/// Installs the global subscriber. `filter` uses EnvFilter directive syntax
/// (e.g. `info,vispyr_gateway=debug`); a non-empty RUST_LOG replaces it, so
/// a developer can turn on debugging without editing the deployment's flags.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = env_filter(filter, rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(TelemetryError::Install)
}

fn env_filter(flag: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let (directives, from) = match rust_log {
        Some(rust_log) if !rust_log.trim().is_empty() => (rust_log, "RUST_LOG"),
        _ => (flag, "--log-level or VISPYR_LOG"),
    };
    EnvFilter::try_new(directives).map_err(|source| TelemetryError::Filter {
        directives: directives.to_owned(),
        from,
        source,
    })
}

fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // Fields at the top level, so log pipelines can index them without
        // digging into a nested `fields` object.
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, filter: &str) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = subscriber(
            format,
            env_filter(filter, None).unwrap(),
            move || sink.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "10.0.0.7:4319", "ring member joined\nsecond line");
            tracing::debug!("hidden at info");
            tracing::warn!(dropped = 3, "queue full");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_is_one_object_per_line() {
        let output = capture(LogFormat::Json, "info");
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{output}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "ring member joined\nsecond line");
        assert_eq!(lines[0]["peer"], "10.0.0.7:4319");
        assert_eq!(lines[1]["dropped"], 3);
    }

    #[test]
    fn text_honours_the_filter() {
        let output = capture(LogFormat::Text, "warn");
        assert!(output.contains("queue full"), "{output}");
        assert!(!output.contains("ring member joined"), "{output}");
    }

    #[test]
    fn rust_log_wins_unless_empty() {
        let filter = env_filter("info", Some("debug")).unwrap();
        assert_eq!(filter.to_string(), "debug");
        let filter = env_filter("info", Some(" ")).unwrap();
        assert_eq!(filter.to_string(), "info");
    }

    #[test]
    fn bad_filter_names_its_source() {
        let err = env_filter("info", Some("=[")).unwrap_err();
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
        let err = env_filter("info,foo=loud", None).unwrap_err();
        assert!(err.to_string().contains("--log-level"), "{err}");
    }
}
