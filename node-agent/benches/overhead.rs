//! `make bench` (as root): what the node-agent costs.
//!
//! 1. Throughput of a CPU-bound Node.js process (`workload.js`, started with
//!    the webhook's perf-map flags) with and without the agent running,
//!    in alternating rounds within one run; one long-lived process serves
//!    every round, so only the agent differs (a fresh process per round would
//!    add V8's process-to-process variance in code placement).
//! 2. The agent's own CPU (utime + stime over wall time, as a share of one
//!    core) and memory while it profiles 50 more busy Node.js processes at
//!    99 Hz, the rest of the machine included.
//!
//! It exports to a real Pyroscope, whose CPU is measured apart. A missed
//! target prints `MISS`; the exit status is non-zero only when the benchmark
//! could not run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vispyr_e2e::Pyroscope;
use vispyr_e2e::process::{Process, cpu_seconds, free_port, status_bytes};

/// The agent measured, unless `NODE_AGENT` names another build of it (to
/// compare two versions on the same machine).
const AGENT: &str = env!("CARGO_BIN_EXE_vispyr-node-agent");
const WORKLOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/workload.js");
/// What the webhook adds to NODE_OPTIONS so that V8 writes its perf map.
const PERF_MAP_FLAGS: [&str; 2] = [
    "--perf-basic-prof-only-functions",
    "--interpreted-frames-native-stack",
];
const FREQUENCY_HZ: u32 = 99;

const ROUNDS: usize = 6;
const WARMUP: Duration = Duration::from_secs(3);
const WINDOW: Duration = Duration::from_secs(5);
/// After the agent is ready: its first drain and perf-map reads are start-up.
const SETTLE: Duration = Duration::from_secs(2);

const BUSY_PROCESSES: usize = 50;
/// Two export intervals (10 s each), so exporting is inside the window.
const BUSY_WINDOW: Duration = Duration::from_secs(25);
const BUSY_SETTLE: Duration = Duration::from_secs(5);

const MIN_THROUGHPUT_RATIO: f64 = 0.995;
const MAX_CPU_SHARE: f64 = 0.01;
const MAX_RSS_BYTES: u64 = 64 << 20;

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the node-agent benchmark loads eBPF programs: run it as root");
        std::process::exit(2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut pyroscope = Pyroscope::start().await.expect("Pyroscope starts");
    let endpoint = pyroscope.otlp_grpc_endpoint().to_string();
    let pyroscope_pid = pyroscope.process().id();
    let http = reqwest::Client::new();

    println!(
        "node-agent overhead: {ROUNDS} rounds of {} s each way, {FREQUENCY_HZ} Hz, {} CPUs",
        WINDOW.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let workload_log = dir.path().join("workload.log");
    let workload = Process::spawn("workload", node_command(), &workload_log)
        .expect("node starts (is it on PATH?)");
    tokio::time::sleep(WARMUP).await;

    let (mut with, mut without, mut agent_share) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternating which goes first cancels a drift of the machine's load.
        for agent_on in [round % 2 == 1, round % 2 == 0] {
            if agent_on {
                let mut agent = Agent::start(&http, &endpoint, dir.path(), round).await;
                tokio::time::sleep(SETTLE).await;
                let before = CpuTime::of(agent.pid());
                let rate = throughput(&workload_log).await;
                agent_share.push(CpuTime::of(agent.pid()).share_since(&before));
                agent.stop();
                with.push(rate);
            } else {
                without.push(throughput(&workload_log).await);
            }
        }
        println!(
            "  round {}: without {:>8.1} it/s ({:>6.1} per CPU s), with {:>8.1} it/s ({:>6.1} per CPU s)",
            round + 1,
            without[round].wall,
            without[round].cpu,
            with[round].wall,
            with[round].cpu,
        );
    }
    remove_perf_map(workload);

    println!("starting {BUSY_PROCESSES} busy Node.js processes (nice 19)");
    let busy: Vec<Process> = (0..BUSY_PROCESSES)
        .map(|_| {
            let mut cmd = Command::new("nice");
            cmd.args(["-n", "19"])
                .arg(node_program())
                .args(PERF_MAP_FLAGS)
                .arg(WORKLOAD);
            Process::spawn("busy", cmd, Path::new("/dev/null")).expect("node starts")
        })
        .collect();
    let mut agent = Agent::start(&http, &endpoint, dir.path(), ROUNDS).await;
    tokio::time::sleep(BUSY_SETTLE).await;
    let counters_before = agent.counters().await;
    let (agent_before, pyroscope_before) = (CpuTime::of(agent.pid()), CpuTime::of(pyroscope_pid));
    let mut peak_rss = 0;
    let started = Instant::now();
    while started.elapsed() < BUSY_WINDOW {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(Memory::of(agent.pid()).rss);
    }
    let busy_share = CpuTime::of(agent.pid()).share_since(&agent_before);
    let pyroscope_share = CpuTime::of(pyroscope_pid).share_since(&pyroscope_before);
    let elapsed = started.elapsed().as_secs_f64();
    let counters = agent.counters().await;
    let per_second = |f: fn(&Counters) -> f64| (f(&counters) - f(&counters_before)) / elapsed;
    let memory = Memory::of(agent.pid());
    agent.stop();
    busy.into_iter().for_each(remove_perf_map);

    let wall = Summary::of(&with, &without, |t| t.wall);
    let cpu = Summary::of(&with, &without, |t| t.cpu);
    let share_median = median(&mut agent_share);
    println!();
    println!("| measure | value | target | |");
    println!("|---|---|---|---|");
    wall.print("it/s");
    println!(
        "| throughput ratio, with / without | {:.4} | >= {MIN_THROUGHPUT_RATIO} | {} |",
        wall.ratio,
        verdict(wall.ratio >= MIN_THROUGHPUT_RATIO)
    );
    cpu.print("it per CPU s");
    println!(
        "| throughput ratio per CPU second, with / without | {:.4} | | |",
        cpu.ratio
    );
    println!(
        "| agent CPU, profiling the workload (median of rounds) | {:.2}% of a core | | |",
        share_median * 100.0
    );
    println!(
        "| agent CPU, profiling {BUSY_PROCESSES} busy processes ({} s) | {:.2}% of a core | < {:.0}% | {} |",
        BUSY_WINDOW.as_secs(),
        busy_share * 100.0,
        MAX_CPU_SHARE * 100.0,
        verdict(busy_share < MAX_CPU_SHARE)
    );
    println!(
        "| agent VmRSS at the end (peak) | {:.1} MiB ({:.1} MiB) | < {} MiB | {} |",
        mib(memory.rss),
        mib(peak_rss),
        MAX_RSS_BYTES >> 20,
        verdict(peak_rss.max(memory.rss) < MAX_RSS_BYTES)
    );
    println!(
        "| agent RssAnon / RssFile at the end | {:.1} MiB / {:.1} MiB | | |",
        mib(memory.rss_anon),
        mib(memory.rss_file)
    );
    println!(
        "| samples profiled (whole machine) | {:.0} /s | | |",
        per_second(|c| c.samples)
    );
    println!(
        "| agent time draining / symbolizing (wall, waits for a CPU included) | {:.2}% / {:.2}% of the time | | |",
        per_second(|c| c.drain_seconds) * 100.0,
        per_second(|c| c.symbolize_seconds) * 100.0
    );
    println!(
        "| Pyroscope CPU, not counted above | {:.2}% of a core | | |",
        pyroscope_share * 100.0
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Medians and ranges of one measure of the rounds with and without the agent.
struct Summary {
    with: (f64, f64, f64),
    without: (f64, f64, f64),
    ratio: f64,
}

impl Summary {
    fn of(with: &[Throughput], without: &[Throughput], measure: fn(&Throughput) -> f64) -> Self {
        let spread = |rounds: &[Throughput]| {
            let mut values: Vec<f64> = rounds.iter().map(measure).collect();
            let m = median(&mut values);
            (m, values[0], values[values.len() - 1])
        };
        let (with, without) = (spread(with), spread(without));
        Self {
            with,
            without,
            ratio: with.0 / without.0,
        }
    }

    fn print(&self, unit: &str) {
        for (name, (m, lo, hi)) in [("without", self.without), ("with", self.with)] {
            println!(
                "| workload {unit} {name} agent, median (range) | {m:.1} ({lo:.1}..{hi:.1}) | | |"
            );
        }
    }
}

/// Sorts `values` and returns their median.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Stops a Node.js process and deletes the perf map V8 left in /tmp.
fn remove_perf_map(node: Process) {
    let map = format!("/tmp/perf-{}.map", node.id());
    drop(node);
    let _ = std::fs::remove_file(map);
}

fn node_program() -> PathBuf {
    std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

fn node_command() -> Command {
    let mut cmd = Command::new(node_program());
    cmd.args(PERF_MAP_FLAGS).arg(WORKLOAD);
    cmd
}

/// The workload's iterations over the next `WINDOW`, per second of its own
/// clock and per second of its CPU time: the difference of its progress
/// lines at both ends.
async fn throughput(log: &Path) -> Throughput {
    let start = Progress::last(log);
    tokio::time::sleep(WINDOW).await;
    let end = Progress::last(log);
    let iterations = (end.iterations - start.iterations) as f64;
    Throughput {
        wall: iterations / ((end.ns - start.ns) as f64 / 1e9),
        cpu: iterations / ((end.cpu_us - start.cpu_us) as f64 / 1e6),
    }
}

struct Throughput {
    /// Iterations per second: what the target is about.
    wall: f64,
    /// Iterations per CPU second: blind to the rest of the machine taking
    /// CPU from the workload, so steadier on a shared machine; it still sees
    /// the sampling interrupts, which run on the workload's time.
    cpu: f64,
}

/// One progress line of the workload.
struct Progress {
    ns: u64,
    iterations: u64,
    cpu_us: u64,
}

impl Progress {
    /// The last complete line in the workload's log.
    fn last(log: &Path) -> Self {
        let text = std::fs::read_to_string(log).expect("the workload's log");
        let line = text
            .lines()
            .rev()
            .find(|l| l.split(' ').count() == 4)
            .expect("the workload reports its progress");
        let fields: Vec<u64> = line
            .split(' ')
            .map(|f| {
                f.parse()
                    .unwrap_or_else(|_| panic!("workload line {line:?}"))
            })
            .collect();
        Self {
            ns: fields[0],
            iterations: fields[1],
            cpu_us: fields[2],
        }
    }
}

struct Agent {
    process: Process,
    metrics_url: String,
    http: reqwest::Client,
}

impl Agent {
    async fn start(http: &reqwest::Client, endpoint: &str, dir: &Path, n: usize) -> Self {
        let port = free_port();
        let agent =
            std::env::var_os("NODE_AGENT").map_or_else(|| PathBuf::from(AGENT), PathBuf::from);
        let mut cmd = Command::new(agent);
        cmd.args(["--set", &format!("admin_addr=127.0.0.1:{port}")])
            .args(["--set", &format!("exporter.endpoint={endpoint}")])
            .args(["--set", &format!("profiling.frequency_hz={FREQUENCY_HZ}")])
            .env("RUST_LOG", "warn");
        let mut process = Process::spawn(
            "vispyr-node-agent",
            cmd,
            &dir.join(format!("agent-{n}.log")),
        )
        .expect("the agent starts");
        let readyz = format!("http://127.0.0.1:{port}/readyz");
        process
            .wait_ready(Duration::from_secs(60), || {
                let req = http.get(&readyz).send();
                async move { req.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await
            .expect("the agent becomes ready");
        Self {
            process,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            http: http.clone(),
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The agent's self metrics that say where its time goes.
    async fn counters(&self) -> Counters {
        let text = self
            .http
            .get(&self.metrics_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("the agent serves /metrics")
            .text()
            .await
            .expect("the agent's metrics");
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in the agent's metrics"))
        };
        Counters {
            samples: value("vispyr_node_agent_profiler_samples_total"),
            drain_seconds: value("vispyr_node_agent_profiler_drain_duration_seconds_sum"),
            symbolize_seconds: value("vispyr_node_agent_profiler_symbolize_duration_seconds_sum"),
        }
    }

    fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(15));
    }
}

/// A process's CPU time, and when it was read.
struct CpuTime {
    seconds: f64,
    at: Instant,
}

impl CpuTime {
    fn of(pid: u32) -> Self {
        Self {
            seconds: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// CPU time since `earlier` over wall time: the share of one core.
    fn share_since(&self, earlier: &CpuTime) -> f64 {
        (self.seconds - earlier.seconds) / (self.at - earlier.at).as_secs_f64()
    }
}

struct Counters {
    samples: f64,
    drain_seconds: f64,
    symbolize_seconds: f64,
}

struct Memory {
    rss: u64,
    rss_anon: u64,
    rss_file: u64,
}

impl Memory {
    fn of(pid: u32) -> Self {
        let bytes =
            |key: &str| status_bytes(pid, key).unwrap_or_else(|| panic!("{key} of pid {pid}"));
        Self {
            rss: bytes("VmRSS"),
            rss_anon: bytes("RssAnon"),
            rss_file: bytes("RssFile"),
        }
    }
}
