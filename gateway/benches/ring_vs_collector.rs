//! `make bench`: a 3-member gateway ring against the OpenTelemetry Collector
//! (contrib components, `e2e/tools/otelcol`) in its usual two tiers, doing
//! the same work on the same load in the same run:
//!
//! - **Vispyr**: 3 `vispyr-gateway` processes, static peers; each span goes
//!   to its trace's owner, which computes span metrics and the service graph
//!   (one writer per series) and exports the spans.
//! - **Collector**: tier 1, one collector with the `loadbalancing` exporter
//!   (routing by trace ID, static resolver) to tier 2, three collectors with
//!   the `spanmetrics` and `servicegraph` connectors; each exports the spans
//!   with `otlp` and the metrics with `prometheusremotewrite`
//!   (`memory_limiter` and `batch` as their docs recommend). Its `otlp`
//!   exporters send uncompressed, as the gateway does (the targets are
//!   judged on this like-for-like setup); the same Collector with their
//!   default gzip is measured too, for its cost per span only.
//!
//! Both export spans to an OTLP/gRPC sink in this process (one per system,
//! it counts spans and discards them) and metrics to one real Prometheus.
//! The load generator (also in this process) sends OTLP/gRPC export
//! requests of 20 traces x 5 spans of three services, with CLIENT/SERVER
//! pairs so the service graph has edges: first closed loop (the most each
//! system sustains on this machine, and the CPU seconds its processes spend
//! on it), then open loop at fixed rates, the same for both and for the bare
//! sink (the baseline of latency), then at twice each system's sustained
//! rate (memory). Before that last phase, the span metrics in Prometheus
//! must sum to exactly the spans in each system's sink, and the sink must
//! hold every span the system acknowledged, so neither wins by dropping work.
//!
//! A missed target prints `MISS`; the exit status is non-zero only when the
//! benchmark could not run. Loopback only; it ends by itself.
//!
//! `RING_BENCH_QUICK=1` runs only one round of the closed loop of Vispyr
//! and the like-for-like Collector (about 2 min), for trying a change: its
//! figures are not the benchmark's result.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use tonic::transport::Channel;
use vispyr_e2e::process::{Process, cpu_seconds, free_port, status_bytes};
use vispyr_e2e::{Prometheus, eventually, tool};

const TRACES_PER_REQUEST: u64 = 20;
const SPANS_PER_TRACE: u64 = 5;
const SPANS_PER_REQUEST: u64 = TRACES_PER_REQUEST * SPANS_PER_TRACE;
/// Requests in flight in the closed loop: a few, and enough that the
/// systems, not the round trips, set the pace. A system's sustained rate is
/// the better of the two (the Collector refuses much of the load at 32).
const CONCURRENCY: [usize; 2] = [8, 32];
/// Channels (HTTP/2 connections) of the load generator, spread over the
/// entry points: the three members, or the one tier-1 collector.
const CHANNELS: usize = 3;
const ROUNDS: usize = 3;
const WARMUP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(10);
const OPEN_WINDOW: Duration = Duration::from_secs(8);
/// Fixed rates of the latency phase, as shares of the lower sustained rate.
const OPEN_SHARES: [f64; 2] = [0.25, 0.5];
const OVERLOAD: f64 = 2.0;
/// In the open loop, requests beyond this many in flight are not sent (and
/// counted): a system that falls behind is not buried under a backlog the
/// load generator itself would hold.
const MAX_IN_FLIGHT: usize = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Both systems write span metrics and the service graph this often.
const FLUSH: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_secs(90);

const MIN_PER_CORE_RATIO: f64 = 3.0;
const MAX_RSS_BYTES: u64 = 256 << 20;

fn main() {
    if let Err(e) = tool("otelcol") {
        eprintln!("{e}: build it with `e2e/tools/build.sh otelcol` (make bench does)");
        std::process::exit(2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run());
}

async fn run() {
    let prometheus = Prometheus::start().await.expect("Prometheus starts");
    let (baseline_sink, vispyr_sink, collector_sink, gzip_sink) = (
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
        Sink::start().await,
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let vispyr = System::vispyr(&prometheus, &vispyr_sink).await;
    let collector =
        System::collector(&prometheus, &collector_sink, dir.path(), Compression::None).await;
    let gzip = System::collector(&prometheus, &gzip_sink, dir.path(), Compression::Gzip).await;
    let baseline = System::baseline(&baseline_sink).await;

    println!(
        "gateway ring vs OpenTelemetry Collector: {CPUS} CPUs, {SPANS_PER_REQUEST} spans per request, \
         {CONCURRENCY:?} in flight, {ROUNDS} rounds of {} s",
        WINDOW.as_secs(),
        CPUS = std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if std::env::var_os("RING_BENCH_QUICK").is_some() {
        // Each system at the concurrency where it is fastest, as below.
        let (mut v_best, mut c_best): (Option<Closed>, Option<Closed>) = (None, None);
        for concurrency in CONCURRENCY {
            let v = vispyr.closed_loop(concurrency).await;
            let c = collector.closed_loop(concurrency).await;
            println!(
                "  quick, {concurrency:>2} in flight: Vispyr {:.0} spans/s, {:.2} cores, {:.0} per core; \
                 Collector {:.0} spans/s, {:.2} cores, {:.0} per core ({:.0} exported)",
                v.rate, v.cores, v.per_core, c.rate, c.cores, c.per_core, c.exported_per_core,
            );
            for (best, run) in [(&mut v_best, v), (&mut c_best, c)] {
                if best.as_ref().is_none_or(|b| b.rate < run.rate) {
                    *best = Some(run);
                }
            }
        }
        let (v, c) = (v_best.expect("a run"), c_best.expect("a run"));
        println!(
            "  quick ratio of spans/s per core: {:.2}",
            v.per_core / c.per_core.max(c.exported_per_core)
        );
        return;
    }
    let baseline_closed = baseline.closed_loop(CONCURRENCY[1]).await;
    println!(
        "  bare sink: {:.0} spans/s (what the load generator can send)",
        baseline_closed.rate
    );
    // Per concurrency, per system (Vispyr, Collector, Collector with
    // gzip): each round's run.
    let mut closed: Vec<[Vec<Closed>; 3]> =
        CONCURRENCY.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        for (concurrency, runs) in CONCURRENCY.iter().zip(&mut closed) {
            // Rotating which goes first cancels a drift of the machine's load.
            let mut order = [0, 1, 2];
            order.rotate_left(round % 3);
            for i in order {
                let system = [&vispyr, &collector, &gzip][i];
                let run = system.closed_loop(*concurrency).await;
                println!(
                    "  round {}, {concurrency:>2} in flight: {:<14} {:>7.0} spans/s ({:>7.0} exported), {:.2} cores, \
                     {:>7.0} acknowledged / {:>7.0} exported spans/s per core, {} errors{}",
                    round + 1,
                    system.name,
                    run.rate,
                    run.exported_rate,
                    run.cores,
                    run.per_core,
                    run.exported_per_core,
                    run.errors,
                    run.first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
                runs[i].push(run);
            }
        }
    }
    // Each system at its better concurrency: medians over the rounds.
    let best = |i: usize| -> Sustained {
        closed
            .iter()
            .zip(CONCURRENCY)
            .map(|(runs, concurrency)| Sustained::of(concurrency, &runs[i]))
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .expect("a concurrency")
    };
    let (v, c, g) = (best(0), best(1), best(2));
    let (v_rate, c_rate) = (v.rate, c.rate);
    let (v_per_core, c_per_core, g_per_core) = (v.per_core, c.per_core, g.per_core);

    // Per rate, per system (bare sink, Vispyr, Collector): each round's run.
    let rates: Vec<f64> = OPEN_SHARES
        .iter()
        .map(|share| (share * v_rate.min(c_rate)).max(SPANS_PER_REQUEST as f64))
        .collect();
    let mut open: Vec<[Vec<Open>; 3]> = rates.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        for (rate, runs) in rates.iter().zip(&mut open) {
            let mut order = [0, 1, 2];
            order.rotate_left(round % 3);
            for i in order {
                let system = [&baseline, &vispyr, &collector][i];
                let run = system.open_loop(*rate, OPEN_WINDOW).await;
                system.count(&run);
                println!(
                    "  round {}: {:<14} at {:>7.0} spans/s: p50 {:>6.2} ms, p99 {:>6.2} ms, {:.2} cores, {} errors, {} not sent",
                    round + 1,
                    system.name,
                    rate,
                    run.p50_ms(),
                    run.p99_ms(),
                    run.cores,
                    run.errors,
                    run.not_sent
                );
                runs[i].push(run);
            }
        }
    }

    let v_check = vispyr.check(&prometheus).await;
    let c_check = collector.check(&prometheus).await;
    let g_check = gzip.check(&prometheus).await;

    let v_over = vispyr.open_loop(OVERLOAD * v_rate, OPEN_WINDOW).await;
    let c_over = collector.open_loop(OVERLOAD * c_rate, OPEN_WINDOW).await;

    // The Collector credited with all the work it did, also for requests
    // its client was told to retry: the ratio the verdict is on.
    let ratio = v_per_core / c.exported_per_core.max(c_per_core);
    println!();
    println!("| measure | Vispyr ring (3) | Collector (1 + 3) | target | |");
    println!("|---|---|---|---|---|");
    println!(
        "| sustained spans/s, closed loop (median of {ROUNDS}, at the better of {CONCURRENCY:?} in flight) | {v_rate:.0} ({} in flight) | {c_rate:.0} ({} in flight) | | |",
        v.concurrency, c.concurrency
    );
    println!(
        "| CPU of the system's processes at that rate | {:.2} cores | {:.2} cores | | |",
        v.cores, c.cores
    );
    println!(
        "| spans/s per core, acknowledged (exported) | {v_per_core:.0} ({:.0}) | {c_per_core:.0} ({:.0}) | | |",
        v.exported_per_core, c.exported_per_core
    );
    println!(
        "| ratio of spans/s per core, Vispyr / Collector | {ratio:.2} | | >= {MIN_PER_CORE_RATIO} | {} |",
        verdict(ratio >= MIN_PER_CORE_RATIO)
    );
    println!(
        "| the same against the Collector with its default gzip between the tiers and to the sink | {:.2} ({g_per_core:.0} spans/s per core at {} in flight) | | | |",
        v_per_core / g.exported_per_core.max(g_per_core),
        g.concurrency
    );
    for (rate, [bare, v, c]) in rates.iter().zip(&open) {
        for (p, at) in [
            ("p99", Open::p99_ms as fn(&Open) -> f64),
            ("p50", Open::p50_ms),
        ] {
            let bare = median(bare.iter().map(at));
            println!(
                "| {p} latency added at {rate:.0} spans/s, median of {ROUNDS} (bare sink {p} {bare:.2} ms) | {:.2} ms | {:.2} ms | | |",
                median(v.iter().map(at)) - bare,
                median(c.iter().map(at)) - bare,
            );
        }
    }
    for (name, check) in [
        ("Vispyr", &v_check),
        ("Collector", &c_check),
        ("Collector with gzip", &g_check),
    ] {
        println!(
            "| {name}: spans acknowledged / in the sink / counted in `calls_total` / service graph requests (expected from the sink) | {} / {} / {} / {} ({}) | | none missing, metrics = sink | {} |",
            check.acknowledged,
            check.exported,
            check.calls,
            check.edges,
            check.expected_edges(),
            verdict(check.exact())
        );
    }
    println!(
        "| offered at 2x sustained | {:.0} spans/s | {:.0} spans/s | | |",
        OVERLOAD * v_rate,
        OVERLOAD * c_rate
    );
    println!(
        "| acknowledged at 2x sustained | {:.0} spans/s ({} errors, {} not sent) | {:.0} spans/s ({} errors, {} not sent) | | |",
        v_over.rate, v_over.errors, v_over.not_sent, c_over.rate, c_over.errors, c_over.not_sent
    );
    let v_max = v_over.peak_rss.iter().map(|(_, r)| *r).max().unwrap_or(0);
    println!(
        "| peak VmRSS per process at 2x sustained | {} | {} | < {} MiB per member | {} |",
        rss_list(&v_over.peak_rss),
        rss_list(&c_over.peak_rss),
        MAX_RSS_BYTES >> 20,
        verdict(v_max < MAX_RSS_BYTES)
    );
    println!(
        "| peak VmRSS, all processes | {:.1} MiB | {:.1} MiB | | |",
        mib(v_over.peak_rss.iter().map(|(_, r)| r).sum()),
        mib(c_over.peak_rss.iter().map(|(_, r)| r).sum())
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn rss_list(peaks: &[(String, u64)]) -> String {
    peaks
        .iter()
        .map(|(name, rss)| format!("{name} {:.0}", mib(*rss)))
        .collect::<Vec<_>>()
        .join(", ")
        + " MiB"
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// An OTLP/gRPC trace endpoint that counts the spans it receives and
/// discards them: the trace store of both systems, and the baseline.
struct Sink {
    endpoint: String,
    spans: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Sink {
    async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the sink");
        let endpoint = format!(
            "127.0.0.1:{}",
            listener.local_addr().expect("its address").port()
        );
        let spans = Arc::new(AtomicU64::new(0));
        let service = TraceServiceServer::new(Counter(spans.clone()))
            .max_decoding_message_size(64 << 20)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        Sink { endpoint, spans }
    }
}

/// One system under load: where the load generator sends, and the
/// processes whose CPU and memory are its cost.
struct System {
    name: &'static str,
    clients: Vec<TraceServiceClient<Channel>>,
    pids: Vec<(String, u32)>,
    sink_spans: Arc<AtomicU64>,
    /// Spans acknowledged outside the overload phase, which the check expects.
    acknowledged: AtomicU64,
    /// The name of its span metrics' call counter in Prometheus, and the
    /// label matcher that selects its series there.
    calls_metric: &'static str,
    series: String,
    /// Held for the run: dropping them stops the processes.
    _processes: Processes,
}

enum Processes {
    None,
    Gateways(Vec<common::Gateway>),
    Collectors(Vec<(String, Process)>),
}

impl Processes {
    fn pids(&self) -> Vec<(String, u32)> {
        match self {
            Processes::None => Vec::new(),
            Processes::Gateways(members) => members
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("member {i}"), m.process.id()))
                .collect(),
            Processes::Collectors(collectors) => collectors
                .iter()
                .map(|(name, p)| (name.clone(), p.id()))
                .collect(),
        }
    }
}

impl System {
    async fn baseline(sink: &Sink) -> System {
        let endpoints = vec![format!("http://{}", sink.endpoint)];
        System::new(
            "bare sink",
            &endpoints,
            sink,
            Processes::None,
            "",
            String::new(),
        )
        .await
    }

    async fn vispyr(prometheus: &Prometheus, sink: &Sink) -> System {
        let sets = [
            format!("exporters.traces.endpoint=http://{}", sink.endpoint),
            format!(
                "exporters.metrics.endpoint={}",
                prometheus.remote_write_url()
            ),
            format!("span_metrics.interval_ms={}", FLUSH.as_millis()),
        ];
        let members = common::ring_with_env(3, &sets, &[("VISPYR_LOG", Path::new("warn"))]).await;
        let endpoints: Vec<String> = members.iter().map(|m| m.grpc.clone()).collect();
        System::new(
            "Vispyr",
            &endpoints,
            sink,
            Processes::Gateways(members),
            "traces_spanmetrics_calls_total",
            "collector=\"\"".into(),
        )
        .await
    }

    async fn collector(
        prometheus: &Prometheus,
        sink: &Sink,
        dir: &Path,
        compression: Compression,
    ) -> System {
        let c = compression.name();
        let tier2_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut processes = Vec::new();
        for (i, port) in tier2_ports.iter().enumerate() {
            let config = tier2_config(
                *port,
                &sink.endpoint,
                &prometheus.remote_write_url(),
                &format!("{c}-tier-2-{i}"),
                c,
            );
            let name = format!("tier-2 {i}");
            let process = start_collector(&name, &config, *port, &dir.join(c)).await;
            processes.push((name, process));
        }
        let port = free_port();
        let config = tier1_config(port, &tier2_ports, c);
        let process = start_collector("tier-1", &config, port, &dir.join(c)).await;
        processes.insert(0, ("tier-1".into(), process));
        let endpoints = vec![format!("http://127.0.0.1:{port}")];
        let name = match compression {
            Compression::None => "Collector",
            Compression::Gzip => "Collector+gzip",
        };
        System::new(
            name,
            &endpoints,
            sink,
            Processes::Collectors(processes),
            "traces_span_metrics_calls_total",
            format!("collector=~\"{c}-.*\""),
        )
        .await
    }

    async fn new(
        name: &'static str,
        endpoints: &[String],
        sink: &Sink,
        processes: Processes,
        calls_metric: &'static str,
        series: String,
    ) -> System {
        let mut clients = Vec::new();
        for i in 0..CHANNELS {
            let channel = Channel::from_shared(endpoints[i % endpoints.len()].clone())
                .expect("an endpoint URL")
                .tcp_nodelay(true)
                .timeout(REQUEST_TIMEOUT)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{name} accepts connections: {e}"));
            clients.push(TraceServiceClient::new(channel).max_decoding_message_size(16 << 20));
        }
        System {
            name,
            clients,
            pids: processes.pids(),
            sink_spans: sink.spans.clone(),
            acknowledged: AtomicU64::new(0),
            calls_metric,
            series,
            _processes: processes,
        }
    }

    /// `CONCURRENCY` requests in flight, each sent when the last returned:
    /// spans acknowledged per second and CPU seconds per span over `WINDOW`
    /// after `WARMUP`.
    async fn closed_loop(&self, concurrency: usize) -> Closed {
        let stop = Instant::now() + WARMUP + WINDOW;
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::OnceLock::new());
        let workers: Vec<_> = (0..concurrency)
            .map(|i| {
                let mut client = self.clients[i % self.clients.len()].clone();
                let (ok, errors, first_error) = (ok.clone(), errors.clone(), first_error.clone());
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        match client.export(request()).await {
                            Ok(_) => {
                                ok.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
                            }
                            Err(status) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                let _ = first_error.set(format!(
                                    "{:?}: {}",
                                    status.code(),
                                    status.message()
                                ));
                            }
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(WARMUP).await;
        let (ok_before, sink_before, cpu_before, at) = (
            ok.load(Ordering::Relaxed),
            self.sink_spans.load(Ordering::Relaxed),
            self.cpu_seconds(),
            Instant::now(),
        );
        tokio::time::sleep(WINDOW).await;
        let (spans, exported, cpu) = (
            ok.load(Ordering::Relaxed) - ok_before,
            self.sink_spans.load(Ordering::Relaxed) - sink_before,
            self.cpu_seconds() - cpu_before,
        );
        let wall = at.elapsed().as_secs_f64();
        for w in workers {
            w.await.expect("a load worker");
        }
        self.settle().await;
        self.acknowledged
            .fetch_add(ok.load(Ordering::Relaxed), Ordering::Relaxed);
        let cpu_seconds = cpu.max(f64::EPSILON);
        Closed {
            rate: spans as f64 / wall,
            exported_rate: exported as f64 / wall,
            cores: cpu_seconds / wall,
            per_core: spans as f64 / cpu_seconds,
            exported_per_core: exported as f64 / cpu_seconds,
            errors: errors.load(Ordering::Relaxed),
            first_error: first_error.get().cloned(),
        }
    }

    /// Waits until the system's sink has received nothing for a second (at
    /// most `SETTLE`): a system still working off a backlog after its run
    /// (the Collector's queues, full at 32 in flight) would otherwise take
    /// CPU from the next system's window.
    async fn settle(&self) {
        let deadline = Instant::now() + SETTLE;
        let mut last = self.sink_spans.load(Ordering::Relaxed);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.sink_spans.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Requests of `SPANS_PER_REQUEST` spans at `spans_per_second`, each
    /// timed from when it was due (so a stalled system is not hidden by the
    /// generator waiting for it); the processes' peak memory meanwhile.
    async fn open_loop(&self, spans_per_second: f64, window: Duration) -> Open {
        let period = Duration::from_secs_f64(SPANS_PER_REQUEST as f64 / spans_per_second);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut not_sent = 0;
        let mut peak_rss: BTreeMap<u32, u64> = BTreeMap::new();
        let mut rss_at = Instant::now();
        let (start, cpu_before) = (Instant::now(), self.cpu_seconds());
        let mut tasks = Vec::new();
        let mut n = 0usize;
        while start.elapsed() < window {
            let due = ticks.tick().await;
            if rss_at.elapsed() >= Duration::from_millis(250) {
                rss_at = Instant::now();
                for (_, pid) in &self.pids {
                    let peak = peak_rss.entry(*pid).or_default();
                    *peak = (*peak).max(status_bytes(*pid, "VmRSS").unwrap_or(0));
                }
            }
            if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                not_sent += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let mut client = self.clients[n % self.clients.len()].clone();
            n += 1;
            let (in_flight, ok, errors, latencies) = (
                in_flight.clone(),
                ok.clone(),
                errors.clone(),
                latencies.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let result = client.export(request()).await;
                let latency = due.elapsed();
                match result {
                    Ok(_) => {
                        ok.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
                        latencies.lock().expect("latencies").push(latency);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        for t in tasks {
            t.await.expect("a request task");
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu_seconds = self.cpu_seconds() - cpu_before;
        let ok = ok.load(Ordering::Relaxed);
        let mut latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
        latencies.sort();
        let peak_rss = self
            .pids
            .iter()
            .map(|(name, pid)| (name.clone(), peak_rss.get(pid).copied().unwrap_or(0)))
            .collect();
        Open {
            ok,
            rate: ok as f64 / wall,
            cores: cpu_seconds / wall,
            errors: errors.load(Ordering::Relaxed),
            not_sent,
            latencies,
            peak_rss,
        }
    }

    /// Records what an open loop acknowledged as work the check expects.
    fn count(&self, run: &Open) {
        self.acknowledged.fetch_add(run.ok, Ordering::Relaxed);
    }

    fn cpu_seconds(&self) -> f64 {
        self.pids.iter().map(|(_, pid)| cpu_seconds(*pid)).sum()
    }

    /// Waits until Prometheus and the sink have settled on what this system
    /// acknowledged.
    async fn check(&self, prometheus: &Prometheus) -> Check {
        let acknowledged = self.acknowledged.load(Ordering::Relaxed);
        let (calls_metric, collector) = (self.calls_metric, &self.series);
        let sum = |promql: String| async move {
            prometheus
                .query(&promql)
                .await
                .map_err(|e| e.to_string())
                .map(|r| r.first().map_or(0.0, |(_, v)| *v) as u64)
        };
        let read = || async {
            let calls = sum(format!("sum({calls_metric}{{{collector}}})")).await?;
            let edges = sum(format!(
                "sum(traces_service_graph_request_total{{{collector},client!=\"user\"}})"
            ))
            .await?;
            Ok::<_, String>(Check {
                acknowledged,
                exported: self.sink_spans.load(Ordering::Relaxed),
                calls,
                edges,
            })
        };
        let settled = eventually(SETTLE, || async {
            let check = read().await?;
            if check.exact() {
                Ok(check)
            } else {
                Err(format!("{check:?}"))
            }
        })
        .await;
        match settled {
            Ok(check) => check,
            Err(last) => {
                println!("  {}: span metrics did not settle: {last}", self.name);
                read().await.unwrap_or(Check {
                    acknowledged,
                    exported: 0,
                    calls: 0,
                    edges: 0,
                })
            }
        }
    }
}

struct Closed {
    /// Spans acknowledged per second.
    rate: f64,
    /// Spans that reached the sink per second, acknowledged or not: the
    /// work done, even for requests whose client was told to retry.
    exported_rate: f64,
    cores: f64,
    per_core: f64,
    exported_per_core: f64,
    errors: u64,
    first_error: Option<String>,
}

/// A system's closed-loop runs at one concurrency, as medians.
struct Sustained {
    concurrency: usize,
    rate: f64,
    cores: f64,
    per_core: f64,
    exported_per_core: f64,
}

impl Sustained {
    fn of(concurrency: usize, runs: &[Closed]) -> Self {
        Sustained {
            concurrency,
            rate: median(runs.iter().map(|r| r.rate)),
            cores: median(runs.iter().map(|r| r.cores)),
            per_core: median(runs.iter().map(|r| r.per_core)),
            exported_per_core: median(runs.iter().map(|r| r.exported_per_core)),
        }
    }
}

struct Open {
    ok: u64,
    rate: f64,
    cores: f64,
    errors: u64,
    not_sent: u64,
    /// Of the acknowledged requests, sorted.
    latencies: Vec<Duration>,
    peak_rss: Vec<(String, u64)>,
}

impl Open {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1].as_secs_f64() * 1e3
    }

    fn p50_ms(&self) -> f64 {
        self.percentile_ms(0.50)
    }

    fn p99_ms(&self) -> f64 {
        self.percentile_ms(0.99)
    }
}

#[derive(Debug)]
struct Check {
    acknowledged: u64,
    exported: u64,
    calls: u64,
    edges: u64,
}

impl Check {
    /// Two edges per exported trace that pair a CLIENT with its SERVER child.
    fn expected_edges(&self) -> u64 {
        self.exported / SPANS_PER_TRACE * 2
    }

    /// Nothing acknowledged is missing, and the metrics count exactly the
    /// spans exported (a request its client was told to retry may still
    /// have been processed, in part or whole: at least once).
    fn exact(&self) -> bool {
        self.exported >= self.acknowledged
            && self.calls == self.exported
            && self.edges == self.expected_edges()
    }
}

/// Trace IDs of the whole run: every trace is new to both systems.
static NEXT_TRACE: AtomicU64 = AtomicU64::new(1);

/// One export request: `TRACES_PER_REQUEST` traces of frontend (root
/// SERVER, CLIENT) -> checkout (SERVER, CLIENT) -> payments (SERVER, an
/// error in every 10th trace), over 4 routes, grouped by service as an SDK
/// behind each would send them.
fn request() -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos() as u64;
    let first = NEXT_TRACE.fetch_add(TRACES_PER_REQUEST, Ordering::Relaxed);
    let mut by_service: [Vec<Span>; 3] = Default::default();
    for t in first..first + TRACES_PER_REQUEST {
        let trace_id = (u128::from(t) * 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835).to_be_bytes();
        let route = t % 4;
        let span = |n: u64, parent: Option<u64>, name: String, kind: SpanKind, ms: u64| Span {
            trace_id: trace_id.to_vec(),
            span_id: (t << 8 | n).to_be_bytes().to_vec(),
            parent_span_id: parent
                .map(|p| (t << 8 | p).to_be_bytes().to_vec())
                .unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: now - ms * 1_000_000,
            end_time_unix_nano: now,
            ..Default::default()
        };
        let mut charge = span(5, Some(4), "charge".into(), SpanKind::Server, 8 + route);
        if t % 10 == 0 {
            charge.status = Some(Status {
                code: StatusCode::Error as i32,
                message: "card declined".into(),
            });
        }
        let api = format!("POST /api/checkout/{route}");
        by_service[0].push(span(
            1,
            None,
            format!("GET /checkout/{route}"),
            SpanKind::Server,
            30,
        ));
        by_service[0].push(span(2, Some(1), api.clone(), SpanKind::Client, 25));
        by_service[1].push(span(3, Some(2), api, SpanKind::Server, 20));
        by_service[1].push(span(4, Some(3), "charge".into(), SpanKind::Client, 12));
        by_service[2].push(charge);
    }
    let resource_spans = ["frontend", "checkout", "payments"]
        .into_iter()
        .zip(by_service)
        .map(|(service, spans)| common::resource_spans(service, spans))
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// Starts one collector and waits until its OTLP receiver's pipeline
/// accepts an (empty) export.
async fn start_collector(name: &str, config: &str, port: u16, dir: &Path) -> Process {
    std::fs::create_dir_all(dir).expect("a directory for the collectors' files");
    let file = dir.join(format!("{}.yaml", name.replace(' ', "-")));
    std::fs::write(&file, config).expect("a collector config file");
    let mut cmd = Command::new(tool("otelcol").expect("the otelcol tool"));
    cmd.arg(format!("--config={}", file.display()));
    let mut process = Process::spawn(
        name,
        cmd,
        &dir.join(format!("{}.log", name.replace(' ', "-"))),
    )
    .expect("the collector starts");
    let endpoint = format!("http://127.0.0.1:{port}");
    process
        .wait_ready(common::WAIT, || {
            let endpoint = endpoint.clone();
            async move {
                match TraceServiceClient::connect(endpoint).await {
                    Ok(mut c) => c.export(ExportTraceServiceRequest::default()).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{name} becomes ready: {e}"));
    process
}

/// What the `otlp` exporters of a Collector send: uncompressed, as the
/// gateway does (the like-for-like comparison), or with their default gzip.
#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        }
    }
}

/// What every collector shares: its own telemetry quiet and off any port.
const TELEMETRY: &str =
    "  telemetry:\n    logs:\n      level: warn\n    metrics:\n      level: none\n";

/// The load balancer: by trace ID, so that all spans of a trace reach the
/// same tier-2 collector (the service graph pairs them there).
fn tier1_config(port: u16, backends: &[u16], compression: &str) -> String {
    let hostnames: Vec<String> = backends.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 256
    spike_limit_mib: 64
exporters:
  load_balancing:
    routing_key: traceID
    protocol:
      otlp:
        compression: {compression}
        tls:
          insecure: true
    resolver:
      static:
        hostnames: [{}]
service:
{TELEMETRY}  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter]
      exporters: [load_balancing]
",
        hostnames.join(", ")
    )
}

/// A backend: span metrics and service graph with the gateway's buckets
/// and flush interval, written with a `collector` label so that the three
/// writers' series stay apart (they would overwrite each other otherwise).
fn tier2_config(
    port: u16,
    sink: &str,
    remote_write: &str,
    label: &str,
    compression: &str,
) -> String {
    let flush = FLUSH.as_secs();
    format!(
        "receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
processors:
  memory_limiter:
    check_interval: 1s
    limit_mib: 256
    spike_limit_mib: 64
  batch: {{}}
connectors:
  span_metrics:
    metrics_flush_interval: {flush}s
    histogram:
      explicit:
        buckets: [2ms, 4ms, 8ms, 16ms, 32ms, 64ms, 128ms, 256ms, 512ms, 1024ms, 2048ms, 4096ms, 8192ms, 16384ms]
  service_graph:
    metrics_flush_interval: {flush}s
    latency_histogram_buckets: [100ms, 200ms, 400ms, 800ms, 1600ms, 3200ms, 6400ms, 12800ms]
    store:
      ttl: 2s
      max_items: 100000
exporters:
  otlp_grpc:
    endpoint: {sink}
    compression: {compression}
    tls:
      insecure: true
  prometheus_remote_write:
    endpoint: {remote_write}
    external_labels:
      collector: {label}
service:
{TELEMETRY}  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [otlp_grpc, span_metrics, service_graph]
    metrics:
      receivers: [span_metrics, service_graph]
      processors: [batch]
      exporters: [prometheus_remote_write]
"
    )
}
