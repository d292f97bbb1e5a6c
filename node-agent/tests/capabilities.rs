//! Started without the capabilities it needs (as an unprivileged user), the
//! agent exits at once, non-zero, naming each missing capability.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use vispyr_e2e::eventually;
use vispyr_e2e::process::Process;

/// `nobody` on Debian and most distributions.
const NOBODY: u32 = 65534;

#[tokio::test]
async fn unprivileged_start_names_the_missing_capabilities() {
    // The build's target dir may sit in a home directory the unprivileged
    // user cannot enter: run a copy from a directory it can.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("vispyr-node-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_vispyr-node-agent"), &bin).unwrap();

    let mut cmd = Command::new(&bin);
    cmd.args(["--set", "admin_addr=127.0.0.1:0"])
        .current_dir(dir.path());
    // SAFETY: setgroups/setgid/setuid are async-signal-safe; nothing else
    // runs between fork and exec. Dropping root clears every capability.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let log = dir.path().join("agent.log");
    let mut agent = Process::spawn("vispyr-node-agent", cmd, &log).unwrap();

    let exited = eventually(Duration::from_secs(20), || {
        let result = agent.check_running();
        async move {
            match result {
                Err(vispyr_e2e::Error::Exited { status, log, .. }) => Ok((status, log)),
                other => Err(format!("still running: {other:?}")),
            }
        }
    })
    .await
    .expect("the agent exits when it lacks capabilities");
    let (status, log) = exited;
    assert!(!status.contains("exit status: 0"), "{status}");
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_CHECKPOINT_RESTORE",
    ] {
        assert!(error.contains(cap), "{cap} is not named: {error}");
    }
    assert!(error.contains("privileged is not needed"), "{error}");
}
