//! Real upstream processes owned by a test: started with their output in a log
//! file, killed when the handle drops (also while a test unwinds from a panic),
//! and killed by the kernel if the test binary itself dies.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::Error;

/// How much of a tool's log an error quotes: enough for its last complaint.
const LOG_TAIL_BYTES: u64 = 4096;

/// A running child process; dropping it kills and reaps it.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, Error> {
        let out = File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = spawner().spawn(cmd).map_err(|source| Error::Spawn {
            name: name.to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, e.g. to read its CPU time and memory from /proc.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the tool wrote, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails with the tool's own last log lines if it has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
            Err(e) => Err(Error::io(&self.log, e)),
        }
    }

    /// Waits until `probe` succeeds, failing early if the process exits and
    /// with the tool's log after `timeout`.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut probe: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.check_running()?;
            if probe().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotReady {
                    name: self.name.clone(),
                    after: timeout,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the process now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it;
    /// `None` when it had to be killed.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid, which is reaped only below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// CPU time a process has used (user + system, all its threads), from
/// `/proc/<pid>/stat`; panics if the process is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // Fields after the command name, which may contain spaces: state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a number of ticks") };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (field(14) + field(15)) as f64 / hz
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, ...) in bytes;
/// `None` once the process is gone or without that line.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// A port on 127.0.0.1 that was free a moment ago. The tools we start take a
/// port number, not a listening socket, so the small race is unavoidable.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on any test machine")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// All children are spawned from one thread that lives as long as the test
/// binary: PR_SET_PDEATHSIG fires when the *spawning thread* exits, so
/// spawning from short-lived runtime threads would kill children early, while
/// this way they die exactly when the test binary does, even on SIGKILL.
struct Spawner(Mutex<mpsc::Sender<SpawnRequest>>);

fn spawner() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("vispyr-e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs
                    // between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // A process group of its own: Ctrl-C in a terminal
                            // signals the whole foreground group, and the
                            // harness, not the terminal, decides when and in
                            // which order its components stop.
                            if libc::setpgid(0, 0) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the process-spawner thread");
        Spawner(Mutex::new(tx))
    })
}

impl Spawner {
    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((cmd, tx))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readers_read_this_process() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_seconds(me) > 0.0);
        let rss = status_bytes(me, "VmRSS").expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        // A key is a whole name: "Rss" is not "RssAnon".
        assert_eq!(status_bytes(me, "Rss"), None);
        assert_eq!(status_bytes(u32::MAX, "VmRSS"), None);
    }
}
