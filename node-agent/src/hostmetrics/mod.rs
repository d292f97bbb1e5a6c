//! Host metrics read from the node's /proc and /sys, with node_exporter's metric
//! names, label sets, types and units, so community dashboards built for
//! node_exporter work unchanged.
//!
//! One [`HostMetrics::collect`] reads every source into a [`Snapshot`]; the
//! same snapshot is served on the admin `/metrics` ([`register`]) and
//! converted to OTLP ([`to_resource_metrics`]). Each module reads one kernel
//! source and mirrors the node_exporter collector of the same data.

mod arp;
mod conntrack;
mod disk;
mod filefd;
mod filesystem;
mod kernel;
mod load;
mod memory;
mod netclass;
mod netstat;
mod network;
mod os;
mod otlp;
mod pressure;
mod prometheus;
mod sockstat;
mod softnet;
mod stat;
mod time;
mod timex;
mod udp;
mod uname;
mod vmstat;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use regex::Regex;
use serde::Deserialize;

pub use otlp::to_resource_metrics;
pub use prometheus::register;

/// Where the host's filesystems are and which devices to leave out. The
/// defaults read the current machine; a DaemonSet mounts the host's at e.g.
/// `/host/proc`, `/host/sys` and `/host/root`. Filters are node_exporter's
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The host's procfs (node_exporter's `--path.procfs`).
    pub proc_path: PathBuf,
    /// The host's sysfs (node_exporter's `--path.sysfs`).
    pub sys_path: PathBuf,
    /// The host's root filesystem (node_exporter's `--path.rootfs`):
    /// mount points are statted below it and reported without it.
    pub rootfs_path: PathBuf,
    /// Mount points left out of `node_filesystem_*` (a regular expression).
    pub mount_points_exclude: String,
    /// Filesystem types left out of `node_filesystem_*`.
    pub fs_types_exclude: String,
    /// Block devices left out of `node_disk_*`.
    pub disk_devices_exclude: String,
    /// Network devices left out of `node_network_*`; empty keeps all.
    pub network_devices_exclude: String,
    /// `<Protocol>_<field>`s of /proc/net/{netstat,snmp,snmp6} exported as
    /// `node_netstat_*`.
    pub netstat_fields: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proc_path: PathBuf::from("/proc"),
            sys_path: PathBuf::from("/sys"),
            rootfs_path: PathBuf::from("/"),
            mount_points_exclude: filesystem::DEFAULT_MOUNT_POINTS_EXCLUDE.to_owned(),
            fs_types_exclude: filesystem::DEFAULT_FS_TYPES_EXCLUDE.to_owned(),
            disk_devices_exclude: disk::DEFAULT_DEVICES_EXCLUDE.to_owned(),
            network_devices_exclude: String::new(),
            netstat_fields: netstat::DEFAULT_FIELDS.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} is not a valid regular expression")]
    Regex {
        key: &'static str,
        #[source]
        source: Box<regex::Error>,
    },
}

/// Why one source could not be read; the others are still collected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// What a parser says about text it cannot use; the reader adds the path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

/// node_exporter's sample types. `Untyped` is what node_exporter exposes for
/// `/proc/vmstat`, whose fields mix counters and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Untyped,
}

/// One metric name with its samples. `name` is node_exporter's full name,
/// `_total` included for counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Family {
    pub(crate) fn new(kind: Kind, name: impl Into<String>, help: impl Into<String>) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one sample without labels.
    pub(crate) fn single(
        kind: Kind,
        name: impl Into<String>,
        help: impl Into<String>,
        value: f64,
    ) -> Self {
        Family::new(kind, name, help).with(Vec::new(), value)
    }

    pub(crate) fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push(Sample { labels, value });
    }

    pub(crate) fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Self {
        self.push(labels, value);
        self
    }
}

/// Everything one collection read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When the sources were read.
    pub at: SystemTime,
    /// When the host booted (from /proc/stat): the start of every counter.
    pub boot_time: Option<SystemTime>,
    pub families: Vec<Family>,
}

impl Snapshot {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// The readers with their compiled filters; cheap to call on every scrape.
#[derive(Debug)]
pub struct HostMetrics {
    proc_path: PathBuf,
    sys_path: PathBuf,
    rootfs_path: PathBuf,
    mount_points_exclude: Pattern,
    fs_types_exclude: Pattern,
    disk_devices_exclude: Pattern,
    network_devices_exclude: Pattern,
    netstat_fields: Pattern,
    stuck_mounts: filesystem::StuckMounts,
    cpu_history: stat::CpuHistory,
}

/// A configured regular expression; empty matches nothing.
#[derive(Debug)]
pub(crate) struct Pattern(Option<Regex>);

impl Pattern {
    fn new(key: &'static str, pattern: &str) -> Result<Self, ConfigError> {
        if pattern.is_empty() {
            return Ok(Pattern(None));
        }
        Regex::new(pattern)
            .map(|r| Pattern(Some(r)))
            .map_err(|source| ConfigError::Regex {
                key,
                source: Box::new(source),
            })
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|r| r.is_match(name))
    }
}

type Reader = fn(&HostMetrics) -> Result<Vec<Family>, Error>;

impl HostMetrics {
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(HostMetrics {
            proc_path: config.proc_path.clone(),
            sys_path: config.sys_path.clone(),
            rootfs_path: config.rootfs_path.clone(),
            mount_points_exclude: Pattern::new(
                "mount_points_exclude",
                &config.mount_points_exclude,
            )?,
            fs_types_exclude: Pattern::new("fs_types_exclude", &config.fs_types_exclude)?,
            disk_devices_exclude: Pattern::new(
                "disk_devices_exclude",
                &config.disk_devices_exclude,
            )?,
            network_devices_exclude: Pattern::new(
                "network_devices_exclude",
                &config.network_devices_exclude,
            )?,
            netstat_fields: Pattern::new("netstat_fields", &config.netstat_fields)?,
            stuck_mounts: filesystem::StuckMounts::default(),
            cpu_history: stat::CpuHistory::default(),
        })
    }

    /// Reads every source. A source that fails is logged and left out, as
    /// node_exporter leaves out a failing collector; a source the kernel does
    /// not have (pressure before 4.20) is left out silently.
    pub fn collect(&self) -> Snapshot {
        const READERS: [(&str, Reader); 22] = [
            ("stat", stat::read),
            ("meminfo", memory::read),
            ("loadavg", load::read),
            ("filesystem", filesystem::read),
            ("diskstats", disk::read),
            ("netdev", network::read),
            ("netclass", netclass::read),
            ("netstat", netstat::read),
            ("sockstat", sockstat::read),
            ("softnet", softnet::read),
            ("udp_queues", udp::read),
            ("arp", arp::read),
            ("conntrack", conntrack::read),
            ("pressure", pressure::read),
            ("vmstat", vmstat::read),
            ("filefd", filefd::read),
            ("kernel", kernel::read),
            ("time", time::read),
            ("clocksource", time::clock_sources),
            ("timex", timex::read),
            ("uname", uname::read),
            ("os", os::read),
        ];
        let at = SystemTime::now();
        let mut families = Vec::new();
        for (collector, read) in READERS {
            match read(self) {
                Ok(read) => families.extend(read.into_iter().filter(|f| !f.samples.is_empty())),
                Err(err) => {
                    tracing::warn!(
                        collector,
                        error = vispyr_common::app::chain(&err),
                        "cannot collect host metrics"
                    )
                }
            }
        }
        let boot_time = families
            .iter()
            .find(|f| f.name == stat::BOOT_TIME)
            .and_then(|f| f.samples.first())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s.value));
        Snapshot {
            at,
            boot_time,
            families,
        }
    }

    fn proc(&self, rel: &str) -> PathBuf {
        self.proc_path.join(rel)
    }
}

/// Reads a file and parses it, naming the file in any error.
fn read_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, Malformed>,
) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|Malformed(reason)| Error::Malformed {
        path: path.to_owned(),
        reason,
    })
}

/// Reads a per-process proc file as the host's init (pid 1) sees it, which
/// in a hostPID pod is the host's mount and network namespace, falling back
/// to our own view when pid 1 is hidden (hidepid) as node_exporter does.
fn read_host_view<T>(
    metrics: &HostMetrics,
    rel: &str,
    parse: impl Fn(&str) -> Result<T, Malformed>,
) -> Result<T, Error> {
    match read_parsed(&metrics.proc(&format!("1/{rel}")), &parse) {
        Err(Error::Read { source, .. })
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            read_parsed(&metrics.proc(&format!("self/{rel}")), parse)
        }
        other => other,
    }
}

/// Parses one whitespace-separated number of a kernel file.
fn number<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, Malformed> {
    field
        .parse()
        .map_err(|_| Malformed(format!("{what}: {field:?} is not a number")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Readers over real /proc text copied into tests/fixtures/proc.
    pub(crate) fn fixture_metrics() -> HostMetrics {
        HostMetrics::new(&Config {
            proc_path: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proc"),
            sys_path: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sys"),
            rootfs_path: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rootfs"),
            ..Config::default()
        })
        .unwrap()
    }

    /// The value of the one sample of `name` with exactly `labels`.
    pub(crate) fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        let matching: Vec<f64> = family
            .samples
            .iter()
            .filter(|s| {
                let mut have: Vec<(&str, &str)> =
                    s.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                have.sort();
                have == want
            })
            .map(|s| s.value)
            .collect();
        match matching[..] {
            [v] => v,
            _ => panic!(
                "{} samples of {name}{labels:?} in {family:#?}",
                matching.len()
            ),
        }
    }

    #[test]
    fn collects_every_source_of_a_fixture_host() {
        let snapshot = fixture_metrics().collect();
        assert_eq!(
            snapshot.boot_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1795438371))
        );
        for name in [
            "node_cpu_seconds_total",
            "node_memory_MemTotal_bytes",
            "node_load1",
            "node_filesystem_size_bytes",
            "node_disk_read_bytes_total",
            "node_network_receive_bytes_total",
            "node_network_up",
            "node_netstat_Tcp_CurrEstab",
            "node_sockstat_TCP_inuse",
            "node_arp_entries",
            "node_softnet_processed_total",
            "node_udp_queues",
            "node_nf_conntrack_entries",
            "node_pressure_cpu_waiting_seconds_total",
            "node_vmstat_pgfault",
            "node_filefd_allocated",
            "node_uname_info",
            "node_entropy_available_bits",
            "node_time_seconds",
            "node_timex_sync_status",
            "node_os_info",
        ] {
            assert!(snapshot.family(name).is_some(), "no {name}");
        }
        let mut names: Vec<&str> = snapshot.families.iter().map(|f| f.name.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a metric name is produced twice");
    }

    #[test]
    fn a_missing_proc_is_logged_not_fatal_and_bad_filters_are_named() {
        let metrics = HostMetrics::new(&Config {
            proc_path: PathBuf::from("/nonexistent"),
            sys_path: PathBuf::from("/nonexistent"),
            rootfs_path: PathBuf::from("/nonexistent"),
            ..Config::default()
        })
        .unwrap();
        let snapshot = metrics.collect();
        // Only what comes from system calls is left.
        assert!(
            snapshot.families.iter().all(|f| f.name == "node_uname_info"
                || f.name.starts_with("node_timex_")
                || f.name.starts_with("node_time_")),
            "{snapshot:#?}"
        );
        assert_eq!(snapshot.boot_time, None);
        let err = stat::read(&metrics).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/stat"), "{err}");

        let err = HostMetrics::new(&Config {
            fs_types_exclude: "(".to_owned(),
            ..Config::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("fs_types_exclude"), "{err}");
    }
}
