//! The node-agent's configuration: one YAML file, `VISPYR_NODE_AGENT_*` env
//! and `--set`, loaded by `vispyr_common`. Every default works inside the
//! chart. Values out of range are refused while loading, naming the key
//! (exit 64).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{attribution, export, hostmetrics};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `/metrics` (self metrics and host metrics), `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    pub profiling: Profiling,
    /// Which processes are profiled and the labels they get.
    pub attribution: attribution::Config,
    /// The OTLP/gRPC receiver (the gateway) of profiles and host metrics.
    pub exporter: export::otlp::Config,
    pub host_metrics: hostmetrics::Config,
    /// Also write every exported profile as `<dir>/<ms>-<n>-<service>.pb.gz`.
    pub pprof_dir: Option<PathBuf>,
    /// On shutdown, how long buffered profiles and metrics may take to be sent.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 9100)),
            profiling: Profiling::default(),
            attribution: attribution::Config::default(),
            exporter: export::otlp::Config::default(),
            host_metrics: hostmetrics::Config::default(),
            pprof_dir: None,
            shutdown_timeout_ms: 5_000,
        }
    }
}

impl Config {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// The eBPF CPU sampler.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profiling {
    /// Samples per second on each CPU (software cpu-clock). 99, not 100, so
    /// sampling does not run in lockstep with timers of the profiled code.
    pub frequency_hz: Frequency,
    /// How often the samples are handed to export.
    pub interval_ms: IntervalMs,
    /// How often the kernel maps are drained (and symbolized) in between.
    /// A stack map is a hash table without chaining: a stack whose slot is
    /// taken is lost, so the fewer stacks it holds when a sample arrives,
    /// the fewer collide. Draining often keeps it nearly empty.
    pub drain_interval_ms: IntervalMs,
    /// Distinct (process, user stack, kernel stack) per drain interval; samples
    /// beyond are dropped and counted.
    pub counts_entries: MapEntries,
    /// Distinct stacks per drain interval; keep it well above the samples
    /// of one drain interval (CPUs x frequency x drain interval). Each costs 1 KiB of kernel memory
    /// (charged to the pod's memory cgroup), twice: there are two map sets.
    pub stacks_entries: MapEntries,
}

impl Default for Profiling {
    fn default() -> Self {
        Profiling {
            frequency_hz: Frequency(99),
            interval_ms: IntervalMs(10_000),
            drain_interval_ms: IntervalMs(1_000),
            counts_entries: MapEntries(vispyr_ebpf_common::DEFAULT_COUNTS_ENTRIES),
            stacks_entries: MapEntries(vispyr_ebpf_common::DEFAULT_STACKS_ENTRIES),
        }
    }
}

impl Profiling {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.0)
    }

    pub fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms.0)
    }
}

/// Defines a `u*` newtype that serde builds through `TryFrom`, so an out of
/// range value fails while the config is loaded, with the key in the message.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident($int:ty), $min:expr, $max:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = $what)]
        pub struct $name(pub $int);

        impl TryFrom<$int> for $name {
            type Error = String;

            fn try_from(value: $int) -> Result<Self, String> {
                if ($min..=$max).contains(&value) {
                    Ok($name(value))
                } else {
                    Err(format!("{value} is out of range {}..={}", $min, $max))
                }
            }
        }
    };
}

bounded!(
    /// Per-CPU sampling frequency in Hz; the kernel's default
    /// `perf_event_max_sample_rate` is far above the maximum.
    Frequency(u64), 1, 1000, "u64"
);
bounded!(
    /// An interval; below 100 ms the drain itself would dominate.
    IntervalMs(u64), 100, 3_600_000, "u64"
);
bounded!(
    /// Entries of one eBPF map.
    MapEntries(u32), 64, 1 << 20, "u32"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.admin_addr.port(), 9100);
        assert_eq!(c.profiling.frequency_hz, Frequency(99));
        assert_eq!(c.profiling.interval(), Duration::from_secs(10));
        assert_eq!(c.profiling.drain_interval(), Duration::from_secs(1));
        assert_eq!(c.profiling.counts_entries, MapEntries(16_384));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"profiling": {"frequency_hz": 0}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 is out of range 1..=1000"), "{err}");
        let err = serde_json::from_str::<Config>(r#"{"profiling": {"stacks_entries": 10}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10 is out of range"), "{err}");
    }

    #[test]
    fn export_defaults_reach_the_chart_gateway() {
        let c: Config = serde_json::from_str("{}").unwrap();
        assert_eq!(c.exporter.endpoint, "http://vispyr-gateway:4317");
        assert_eq!(c.attribution.mode, attribution::Mode::All);
        assert!(c.pprof_dir.is_none());
        let c: Config = serde_json::from_str(
            r#"{"attribution": {"mode": "opted-in", "node_name": "n1"},
                "exporter": {"buffer_bytes": 1024}, "pprof_dir": "/tmp/p"}"#,
        )
        .unwrap();
        assert_eq!(c.attribution.node_name.as_deref(), Some("n1"));
        assert_eq!(c.exporter.buffer_bytes, 1024);
        assert_eq!(c.exporter.timeout_ms, 10_000);
        let err = serde_json::from_str::<Config>(r#"{"exporter": {"bufer_bytes": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bufer_bytes"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"profiling": {"hz": 9}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `hz`"), "{err}");
    }
}
