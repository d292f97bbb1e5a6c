//! The node-agent's host metrics against the real node_exporter on this
//! machine (same names, label sets and values), and their OTLP form through
//! Prometheus's real OTLP receiver (same names again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use vispyr_common::admin::{self, Health};
use vispyr_e2e::{NodeExporter, Prometheus, eventually};
use vispyr_node_agent::hostmetrics::{self, Config, HostMetrics};

/// Names both must expose on any Linux host; `node_pressure_*` only where
/// the kernel has PSI (4.20+, not booted with psi=0).
const REQUIRED: &[&str] = &[
    "node_cpu_seconds_total",
    "node_memory_MemTotal_bytes",
    "node_memory_MemFree_bytes",
    "node_memory_MemAvailable_bytes",
    "node_memory_Buffers_bytes",
    "node_memory_Cached_bytes",
    "node_load1",
    "node_load5",
    "node_load15",
    "node_filesystem_size_bytes",
    "node_filesystem_free_bytes",
    "node_filesystem_avail_bytes",
    "node_filesystem_files",
    "node_filesystem_files_free",
    "node_filesystem_readonly",
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_io_time_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_network_receive_errs_total",
    "node_network_transmit_errs_total",
    "node_network_receive_drop_total",
    "node_network_transmit_drop_total",
    "node_network_up",
    "node_network_info",
    "node_network_mtu_bytes",
    "node_pressure_cpu_waiting_seconds_total",
    "node_pressure_memory_waiting_seconds_total",
    "node_pressure_io_waiting_seconds_total",
    "node_boot_time_seconds",
    "node_context_switches_total",
    "node_intr_total",
    "node_procs_running",
    "node_procs_blocked",
    "node_uname_info",
    "node_time_seconds",
    "node_entropy_available_bits",
    "node_netstat_Tcp_InSegs",
    "node_sockstat_TCP_inuse",
];

const MIB: f64 = 1024.0 * 1024.0;

type Labels = BTreeMap<String, String>;

/// One scrape: series by name, and the declared type of each name.
#[derive(Debug, Default)]
struct Exposition {
    series: BTreeMap<String, BTreeMap<Labels, f64>>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// The type of a sample name; OpenMetrics declares counters without
    /// `_total` and calls untyped `unknown`.
    fn type_of(&self, name: &str) -> &str {
        match self
            .types
            .get(name)
            .or_else(|| self.types.get(name.strip_suffix("_total")?))
            .map(String::as_str)
        {
            None | Some("unknown") => "untyped",
            Some(kind) => kind,
        }
    }
}

/// The Prometheus text format and OpenMetrics, as far as both servers use them.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration
                .split_once(' ')
                .ok_or_else(|| format!("bad TYPE line {line:?}"))?;
            exposition.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("bad line {line:?}"))?;
        let (name, mut rest) = line.split_at(name_end);
        let mut labels = Labels::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = parse_labels(inner, &mut labels).map_err(|e| format!("{e} in {line:?}"))?;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no value in {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|e| format!("bad value in {line:?}: {e}"))?,
        };
        exposition
            .series
            .entry(name.to_owned())
            .or_default()
            .insert(labels, value);
    }
    Ok(exposition)
}

/// `a="x",b="y\"z"} rest` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Labels) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let (key, rest) = s.split_once("=\"").ok_or("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        s = &rest[end + 1..];
    }
}

/// How far node_exporter's value may lie outside the range our reads just
/// before and after it span. Counters must be bracketed, but /proc/stat's
/// idle and iowait can step back slightly (nohz idle accounting), and each
/// exporter holds them at its own last read. Gauges may
/// move either way between reads a few milliseconds apart on a busy 2-core
/// machine; so may the untyped Tcp_CurrEstab.
fn slack(name: &str, kind: &str, value: f64) -> f64 {
    let gauge = kind == "gauge" || name == "node_netstat_Tcp_CurrEstab";
    let absolute = match name {
        "node_procs_running" | "node_procs_blocked" | "node_disk_io_now" => 16.0,
        n if n.starts_with("node_memory_") => 64.0 * MIB,
        n if n.starts_with("node_sockstat_") || n == "node_netstat_Tcp_CurrEstab" => 64.0,
        "node_nf_conntrack_entries" | "node_arp_entries" => 64.0,
        "node_udp_queues" => MIB,
        n if n.starts_with("node_cpu_") => 0.5,
        _ => 0.0,
    };
    let relative = if gauge { 0.05 } else { 1e-9 };
    absolute.max(relative * value.abs())
}

/// Series projected on the given label names.
fn project(
    series: &BTreeMap<Labels, f64>,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<Labels, f64>, String> {
    let mut projected = BTreeMap::new();
    for (labels, value) in series {
        let key: Labels = labels
            .iter()
            .filter(|(k, _)| names.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if projected.insert(key.clone(), *value).is_some() {
            return Err(format!("two series share {key:?}"));
        }
    }
    Ok(projected)
}

fn label_names(series: &BTreeMap<Labels, f64>) -> BTreeSet<String> {
    series.keys().flat_map(|l| l.keys().cloned()).collect()
}

/// Everything that disagrees between our scrapes (`before`, `after`) and
/// node_exporter's, read in between.
fn disagreements(before: &Exposition, theirs: &Exposition, after: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    let psi = std::fs::read_to_string("/proc/pressure/cpu").is_ok();
    for name in REQUIRED
        .iter()
        .filter(|n| psi || !n.starts_with("node_pressure_"))
    {
        for (who, exposition) in [("node-agent", before), ("node_exporter", theirs)] {
            if !exposition.series.contains_key(*name) {
                problems.push(format!("{who} lacks {name}"));
            }
        }
    }
    for (name, ours) in before.series.iter().filter(|(n, _)| n.starts_with("node_")) {
        let Some(reference) = theirs.series.get(name) else {
            problems.push(format!("{name} is not a node_exporter metric here"));
            continue;
        };
        if before.type_of(name) != theirs.type_of(name) {
            problems.push(format!(
                "{name}: type {} here, {} in node_exporter",
                before.type_of(name),
                theirs.type_of(name)
            ));
        }
        let shared: BTreeSet<String> = label_names(ours)
            .intersection(&label_names(reference))
            .cloned()
            .collect();
        let projections = (
            project(ours, &shared),
            project(reference, &shared),
            project(after.series.get(name).unwrap_or(&BTreeMap::new()), &shared),
        );
        let (Ok(b), Ok(t), Ok(a)) = projections else {
            problems.push(format!("{name}: {projections:?}"));
            continue;
        };
        let (ours_keys, their_keys): (BTreeSet<_>, BTreeSet<_>) =
            (b.keys().collect(), t.keys().collect());
        if ours_keys != their_keys {
            problems.push(format!(
                "{name}: only here {:?}; only in node_exporter {:?}",
                ours_keys.difference(&their_keys).collect::<Vec<_>>(),
                their_keys.difference(&ours_keys).collect::<Vec<_>>()
            ));
            continue;
        }
        for (labels, theirs_value) in &t {
            let first = b[labels];
            let second = a.get(labels).copied().unwrap_or(first);
            let (low, high) = (first.min(second), first.max(second));
            let slack = slack(name, theirs.type_of(name), high);
            if !(low - slack..=high + slack).contains(theirs_value) {
                problems.push(format!(
                    "{name}{labels:?}: node_exporter {theirs_value}, ours {first} then {second}"
                ));
            }
        }
    }
    problems
}

async fn scrape(http: &reqwest::Client, url: &str) -> Result<Exposition, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
    parse(&text)
}

/// The host metrics served the way the node-agent serves them: the admin
/// server of vispyr-common with the collector in its registry.
async fn serve_host_metrics(shutdown: &CancellationToken) -> SocketAddr {
    let mut registry = Registry::default();
    let metrics = HostMetrics::new(&Config::default()).expect("default config is valid");
    hostmetrics::register(&mut registry, Arc::new(metrics));
    let (addr, _task) = admin::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(registry),
        Health::new(),
        shutdown.clone(),
    )
    .await
    .expect("admin server binds a free port");
    addr
}

#[tokio::test]
async fn agrees_with_node_exporter_on_every_shared_metric() {
    let node_exporter = NodeExporter::start().await.expect("node_exporter starts");
    let shutdown = CancellationToken::new();
    let ours = format!("http://{}/metrics", serve_host_metrics(&shutdown).await);
    let http = reqwest::Client::new();

    // Devices and mounts may come and go between two scrapes on a shared
    // machine: a disagreement must persist to fail the test.
    let theirs = node_exporter.metrics_url();
    let (ours, theirs, took) = eventually(Duration::from_secs(30), || async {
        let start = Instant::now();
        let before = scrape(&http, &ours).await?;
        let ours_took = start.elapsed();
        let reference = scrape(&http, theirs).await?;
        let theirs_took = start.elapsed() - ours_took;
        let after = scrape(&http, &ours).await?;
        let problems = disagreements(&before, &reference, &after);
        if problems.is_empty() {
            Ok((before, reference, (ours_took, theirs_took)))
        } else {
            Err(problems.join("\n"))
        }
    })
    .await
    .expect("the node-agent's host metrics agree with node_exporter's");
    shutdown.cancel();

    let shared = ours
        .series
        .keys()
        .filter(|n| theirs.series.contains_key(*n))
        .count();
    let ours_series: usize = ours.series.values().map(BTreeMap::len).sum();
    let missing: Vec<&str> = theirs
        .series
        .keys()
        .filter(|n| n.starts_with("node_") && !ours.series.contains_key(*n))
        .map(String::as_str)
        .collect();
    eprintln!(
        "{shared} metric names ({ours_series} series) agree; one scrape took {:?} here, {:?} in node_exporter; node_exporter's not produced here: {}",
        took.0,
        took.1,
        missing.join(" ")
    );
    assert!(shared >= REQUIRED.len());
}

#[tokio::test]
async fn otlp_names_come_back_from_prometheus_as_node_exporter_names() {
    let prometheus = Prometheus::start().await.expect("prometheus starts");
    let snapshot = HostMetrics::new(&Config::default()).unwrap().collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![hostmetrics::to_resource_metrics(
            &snapshot,
            "test-host",
            Some("test-node"),
        )],
    };
    prometheus
        .push_otlp_metrics(&request)
        .await
        .expect("prometheus accepts the host metrics over OTLP");

    let want: BTreeSet<String> = snapshot.families.iter().map(|f| f.name.clone()).collect();
    eventually(Duration::from_secs(10), || {
        stored_names(&prometheus, r#"{__name__=~"node_.+"}"#, &want)
    })
    .await
    .expect("every OTLP metric comes back under its node_exporter name");

    // Labels and values survive too.
    let cpu = snapshot.family("node_cpu_seconds_total").unwrap();
    let sample = &cpu.samples[0];
    let selector: Vec<String> = sample
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    let result = prometheus
        .query(&format!("node_cpu_seconds_total{{{}}}", selector.join(",")))
        .await
        .unwrap();
    assert_eq!(result.len(), 1, "{result:?}");
    assert_eq!(result[0].1, sample.value);
}

#[tokio::test]
async fn prometheus_scrapes_the_admin_endpoint_under_the_same_names() {
    let shutdown = CancellationToken::new();
    let addr = serve_host_metrics(&shutdown).await;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: node-agent\n    static_configs:\n      - targets: ['{addr}']\n"
    );
    let prometheus = Prometheus::start_with_config(&config)
        .await
        .expect("prometheus starts");
    let want: BTreeSet<String> = HostMetrics::new(&Config::default())
        .unwrap()
        .collect()
        .families
        .into_iter()
        .map(|f| f.name)
        .collect();
    // Prometheus parses the OpenMetrics text strictly: one bad line fails
    // the whole scrape, and nothing would be stored.
    eventually(Duration::from_secs(20), || {
        stored_names(
            &prometheus,
            r#"{job="node-agent",__name__=~"node_.+"}"#,
            &want,
        )
    })
    .await
    .expect("Prometheus stores every host metric it scrapes, under its node_exporter name");
    shutdown.cancel();
}

/// `Ok` once the names of the series `selector` selects are exactly `want`.
async fn stored_names(
    prometheus: &Prometheus,
    selector: &str,
    want: &BTreeSet<String>,
) -> Result<(), String> {
    let names: BTreeSet<String> = prometheus
        .query(&format!("group by (__name__) ({selector})"))
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(labels, _)| labels.get("__name__").cloned())
        .collect();
    if &names == want {
        Ok(())
    } else {
        Err(format!(
            "only in prometheus: {:?}; only here: {:?}",
            names.difference(want).collect::<Vec<_>>(),
            want.difference(&names).collect::<Vec<_>>()
        ))
    }
}

#[test]
fn the_parser_reads_both_formats() {
    let text = "# TYPE node_cpu_seconds counter\nnode_cpu_seconds_total{cpu=\"0\",mode=\"a \\\"b\\\"\"} 1.5e+06\n# TYPE node_load1 gauge\nnode_load1 0.5\n# EOF\n";
    let exposition = parse(text).unwrap();
    assert_eq!(exposition.type_of("node_cpu_seconds_total"), "counter");
    let cpu = &exposition.series["node_cpu_seconds_total"];
    let labels: Labels = [("cpu", "0"), ("mode", "a \"b\"")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(cpu[&labels], 1.5e6);
    assert_eq!(exposition.series["node_load1"][&Labels::new()], 0.5);
    assert!(parse("node_x{a=\"b} 1\n").is_err());
}
