//! The real eBPF program in the running kernel (run as root), sampling real
//! processes: a native program with known functions, a Node.js app with hot
//! JavaScript, node internals and an npm package.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use vispyr_node_agent::config::{Frequency, Profiling};
use vispyr_node_agent::metrics::ProfilerMetrics;
use vispyr_node_agent::sampler::Sampler;
use vispyr_node_agent::service::Profiler;
use vispyr_node_agent::stack::{FrameKind, Sample};

const HZ: u64 = 99;

fn config() -> Profiling {
    Profiling {
        frequency_hz: Frequency(HZ),
        ..Profiling::default()
    }
}

fn profiler() -> Profiler {
    let metrics = ProfilerMetrics::register(&mut Registry::default());
    Profiler::start(&config(), metrics).expect("the sampler starts (these tests run as root)")
}

/// A child killed and reaped when the test ends, however it ends, with the
/// perf map Node.js leaves behind removed.
struct Guard(Child);

impl Guard {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(format!("/tmp/perf-{}.map", self.pid()));
    }
}

/// Starts `cmd` and waits for its first line on stdout, its "warmed up".
fn start(mut cmd: Command) -> Guard {
    let mut child = Guard(
        cmd.stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "{cmd:?} exited before it was ready");
    child
}

/// CPU time `pid` has run, from the scheduler's nanosecond account.
fn cpu_time(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

/// The samples of `pid`, collected until they add up to `want` (or the
/// deadline passes), and the CPU time it ran over exactly those drains.
fn sample(profiler: &mut Profiler, pid: u32, want: u64) -> (Vec<Sample>, Duration) {
    profiler.collect().unwrap(); // what came before the window
    let cpu_start = cpu_time(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut samples = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let batch = profiler.collect().unwrap();
        let cpu = cpu_time(pid) - cpu_start;
        samples.extend(batch.samples.into_iter().filter(|s| s.pid == pid));
        let total: u64 = samples.iter().map(|s| s.count).sum();
        if total >= want || Instant::now() > deadline {
            return (samples, cpu);
        }
    }
}

fn total(samples: &[Sample]) -> u64 {
    samples.iter().map(|s| s.count).sum()
}

/// Share of the samples (weighted by count) for which `pred` holds.
fn share(samples: &[Sample], pred: impl Fn(&Sample) -> bool) -> f64 {
    let hits: u64 = samples.iter().filter(|s| pred(s)).map(|s| s.count).sum();
    hits as f64 / total(samples).max(1) as f64
}

const SPIN_C: &str = r#"
#include <stdio.h>
__attribute__((noinline)) unsigned long vispyr_spin_leaf(unsigned long n) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < n; i++) x += i * i;
    return x;
}
__attribute__((noinline)) unsigned long vispyr_spin_outer(unsigned long n) {
    return vispyr_spin_leaf(n) + 1;
}
int main(void) {
    puts("ready");
    fflush(stdout);
    unsigned long t = 0;
    for (;;) t += vispyr_spin_outer(100000000UL);
    return (int)t;
}
"#;

/// Compiles the spinning C program, with frame pointers and DWARF.
fn spin_binary(dir: &Path) -> PathBuf {
    let src = dir.join("spin.c");
    let bin = dir.join("vispyr-spin");
    std::fs::write(&src, SPIN_C).unwrap();
    let status = Command::new("cc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (build-essential, installed by scripts/deps.sh)");
    assert!(status.success());
    bin
}

fn names(sample: &Sample) -> Vec<&str> {
    sample.frames.iter().map(|f| &*f.function).collect()
}

#[test]
fn native_functions_are_named_and_exited_processes_keep_their_samples() {
    let dir = tempfile::tempdir().unwrap();
    let bin = spin_binary(dir.path());
    let mut profiler = profiler();
    let mut spin = start(Command::new(&bin));
    let pid = spin.pid();

    let (samples, _) = sample(&mut profiler, pid, 200);
    let leaf = share(&samples, |s| {
        s.frames
            .iter()
            .any(|f| &*f.function == "vispyr_spin_leaf" && f.kind == FrameKind::Native)
    });
    let outer = share(&samples, |s| names(s).contains(&"vispyr_spin_outer"));
    eprintln!(
        "native: {} samples, {:.1}% with vispyr_spin_leaf, {:.1}% with vispyr_spin_outer",
        total(&samples),
        leaf * 100.0,
        outer * 100.0
    );
    assert!(total(&samples) >= 100, "{samples:#?}");
    assert!(
        leaf >= 0.9,
        "{:.3} of samples name the leaf: {samples:#?}",
        leaf
    );
    assert!(outer >= 0.9, "{:.3} name the caller", outer);

    // Samples of a process that exits before the drain are kept.
    profiler.collect().unwrap();
    let before = cpu_time(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cpu_time(pid) - before < Duration::from_millis(200) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    spin.0.kill().unwrap();
    spin.0.wait().unwrap();
    let batch = profiler
        .collect()
        .expect("a drain after the process exited");
    let gone: Vec<_> = batch.samples.iter().filter(|s| s.pid == pid).collect();
    let count: u64 = gone.iter().map(|s| s.count).sum();
    assert!(count > 0, "the exited process's samples are kept");
    assert!(
        gone.iter().all(|s| !s.frames.is_empty()),
        "each keeps at least a placeholder frame: {gone:#?}"
    );
}

#[test]
fn kernel_frames_are_named() {
    let mut profiler = profiler();
    // dd from /dev/zero to /dev/null spends its time in read and write
    // system calls.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo ready; exec dd if=/dev/zero of=/dev/null bs=64k"]);
    let dd = start(cmd);

    let (samples, _) = sample(&mut profiler, dd.pid(), 100);
    let syscall = share(&samples, |s| {
        s.frames.iter().any(|f| {
            f.kind == FrameKind::Kernel && matches!(&*f.function, "vfs_read" | "vfs_write")
        })
    });
    let kernel = |s: &Sample| -> Vec<bool> {
        s.frames
            .iter()
            .filter(|f| f.kind == FrameKind::Kernel)
            .map(|f| &*f.function != "[unknown]")
            .collect()
    };
    let in_kernel = share(&samples, |s| !kernel(s).is_empty());
    let all_named = share(&samples, |s| {
        !kernel(s).is_empty() && kernel(s).iter().all(|&n| n)
    });
    eprintln!(
        "kernel: {} samples, {:.1}% in the kernel, {:.1}% with every kernel frame named, {:.1}% in vfs_read or vfs_write",
        total(&samples),
        in_kernel * 100.0,
        all_named * 100.0,
        syscall * 100.0
    );
    assert!(in_kernel >= 0.5, "{in_kernel:.3}: {samples:#?}");
    assert!(
        all_named >= in_kernel * 0.99,
        "{all_named:.3}: {samples:#?}"
    );
    assert!(syscall >= 0.5, "{syscall:.3}: {samples:#?}");
}

#[test]
fn samples_per_cpu_second_match_the_frequency() {
    let dir = tempfile::tempdir().unwrap();
    let bin = spin_binary(dir.path());
    // The raw sampler: a drain only swaps and reads maps, so the CPU time
    // read right after it bounds the same window as the samples.
    let mut sampler = Sampler::start(&config()).unwrap();
    // SCHED_FIFO gives the spinner a CPU of its own (less the kernel's 5%
    // real-time throttling) however busy the machine is. On a shared CPU
    // the count skews: timers are coalesced, so tasks woken by timers run
    // right after each sampling interrupt, and a CPU-bound task is caught
    // more often than its share of CPU time (up to +40% measured here).
    let mut cmd = Command::new(&bin);
    // SAFETY: sched_setscheduler is async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spin = start(cmd);
    let pid = spin.pid();

    sampler.drain().unwrap();
    let (cpu_start, wall_start) = (cpu_time(pid), Instant::now());
    let (mut count, mut drained_total, mut counted_total) = (0, 0, 0);
    while count < 300 && wall_start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        let drained = sampler.drain().unwrap();
        drained_total += drained.samples.iter().map(|s| s.count).sum::<u64>();
        counted_total += drained.counters.samples;
        count += drained
            .samples
            .iter()
            .filter(|s| s.tgid == pid)
            .map(|s| s.count)
            .sum::<u64>();
    }
    let cpu = cpu_time(pid) - cpu_start;
    let rate = count as f64 / cpu.as_secs_f64();
    let error = (rate - HZ as f64).abs() / HZ as f64;
    eprintln!(
        "rate: {count} samples over {:.2} s of CPU ({:.2} s wall) = {rate:.1}/s at {HZ} Hz ({:.1}% off)",
        cpu.as_secs_f64(),
        wall_start.elapsed().as_secs_f64(),
        error * 100.0
    );
    assert!(error <= 0.10, "{rate:.1} samples per CPU second at {HZ} Hz");
    // Every sample the program counted was drained once: the totals differ
    // only by what sat in the active set at either end of the window.
    let slack = counted_total / 20;
    assert!(
        drained_total.abs_diff(counted_total) <= slack,
        "drained {drained_total} samples, the program counted {counted_total}"
    );
    eprintln!("drained {drained_total} samples, the program counted {counted_total}");
}

const APP_JS: &str = r#"
const util = require('node:util');
const fixture = require('@vispyr-test/fixture');
function vispyrHot(n) {
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.sqrt(i);
  s += fixture.fixtureWork(n / 4);
  s += util.inspect({ a: 1, b: [1, 2, { c: 'x' }] }).length;
  return s;
}
let t = 0;
const warm = Date.now() + 300;
while (Date.now() < warm) t += vispyrHot(20000);
console.log('ready');
for (;;) t += vispyrHot(20000);
"#;

const FIXTURE_JS: &str = r#"
exports.fixtureWork = function fixtureWork(n) {
  let s = 0;
  for (let i = 0; i < n; i++) s += i % 7;
  return s;
};
"#;

/// The samples of the Node.js app above, started as an injected pod starts
/// it: the operator's NODE_OPTIONS with profiling on (the preload from the
/// init container's payload, then the perf-map flags), plus
/// `VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE` when `inlining_limit` is
/// given. Only the profiler is under test here: the SDK stays off.
fn node_app_samples(inlining_limit: Option<&str>) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("node_modules/@vispyr-test/fixture");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("index.js"), FIXTURE_JS).unwrap();
    let app = dir.path().join("app.js");
    std::fs::write(&app, APP_JS).unwrap();

    let payload = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../instrumentation/nodejs/dist/payload/register.cjs");
    assert!(
        payload.exists(),
        "{} is missing: run `make nodejs-payload`",
        payload.display()
    );
    let mut profiler = profiler();
    let mut cmd = Command::new("node");
    cmd.env(
        "NODE_OPTIONS",
        format!(
            "--require {} --perf-basic-prof-only-functions --interpreted-frames-native-stack",
            payload.display()
        ),
    )
    .env("OTEL_SDK_DISABLED", "true")
    .env_remove("VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE")
    .arg(&app)
    .current_dir(dir.path());
    if let Some(limit) = inlining_limit {
        cmd.env("VISPYR_PROFILING_MAX_INLINED_BYTECODE_SIZE", limit);
    }
    let node = start(cmd);
    sample(&mut profiler, node.pid(), 200).0
}

/// Checks what every inlining limit must give (the hot function named in at
/// least 90% of samples, node:internal frames tagged so) and returns the
/// share of samples with the npm package's frame, which depends on the limit.
fn assert_javascript_named(samples: &[Sample], limit: &str) -> f64 {
    let hot = share(samples, |s| {
        s.frames
            .iter()
            .any(|f| &*f.function == "vispyrHot" && f.kind == FrameKind::Js)
    });
    let internal = share(samples, |s| {
        s.frames.iter().any(|f| {
            f.kind == FrameKind::NodeInternal
                && f.file
                    .as_deref()
                    .is_some_and(|p| p.starts_with("node:internal/"))
        })
    });
    let package = share(samples, |s| {
        s.frames.iter().any(|f| {
            f.kind == FrameKind::NodeModules
                && &*f.function == "fixtureWork"
                && f.package.as_deref() == Some("@vispyr-test/fixture")
        })
    });
    eprintln!(
        "node, inlining limit {limit}: {} samples, {:.1}% name vispyrHot, {:.1}% node:internal, {:.1}% @vispyr-test/fixture",
        total(samples),
        hot * 100.0,
        internal * 100.0,
        package * 100.0
    );
    assert!(
        hot >= 0.9,
        "{hot:.3} of samples name vispyrHot: {samples:#?}"
    );
    assert!(internal > 0.0, "no node:internal frame: {samples:#?}");
    package
}

/// The default: the preload limits inlining to functions of at most 60
/// bytes of bytecode, so the hot function (102 bytes) keeps its frame; the
/// npm package's one-line loop (35 bytes) is inlined into it (0% of samples
/// name it).
#[test]
fn javascript_functions_are_named_with_their_kind() {
    assert_javascript_named(&node_app_samples(None), "60 (default)");
}

/// With a lower limit, smaller functions keep frames of their own too: the
/// npm package's.
#[test]
fn a_lower_inlining_limit_gives_small_functions_frames_of_their_own() {
    let package = assert_javascript_named(&node_app_samples(Some("27")), "27");
    assert!(package > 0.0, "no node_modules frame");
}
