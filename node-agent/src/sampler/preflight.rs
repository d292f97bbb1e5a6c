//! What the sampler needs from the kernel and the container, checked before
//! anything is loaded, so a misconfigured DaemonSet says exactly what to fix
//! instead of failing somewhere inside a syscall.

use std::fmt;
use std::path::Path;

/// BPF atomics (exchange) arrived in 5.12; CAP_BPF and CAP_PERFMON in 5.8.
pub const MIN_KERNEL: (u32, u32) = (5, 12);

/// Capabilities by their number in `linux/capability.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    SysPtrace = 19,
    SysAdmin = 21,
    Syslog = 34,
    Perfmon = 38,
    Bpf = 39,
    CheckpointRestore = 40,
}

impl Capability {
    /// What the sampler cannot run without, and why.
    pub const REQUIRED: [(Capability, &'static str); 4] = [
        (Capability::Bpf, "load the eBPF program and read its maps"),
        (
            Capability::Perfmon,
            "open the cpu-clock perf events and read stacks",
        ),
        (
            Capability::SysPtrace,
            "read other processes' memory maps and /proc/<pid>/root",
        ),
        (
            Capability::CheckpointRestore,
            "open binaries through /proc/<pid>/map_files in other mount namespaces",
        ),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
            Capability::CheckpointRestore => "CAP_CHECKPOINT_RESTORE",
        }
    }

    /// CAP_SYS_ADMIN still grants what the narrower capabilities split off it.
    fn held_in(self, effective: u64) -> bool {
        let has = |cap: Capability| effective & (1 << cap as u64) != 0;
        has(self)
            || (matches!(
                self,
                Capability::Bpf | Capability::Perfmon | Capability::CheckpointRestore
            ) && has(Capability::SysAdmin))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities: {}; add them to the container's securityContext.capabilities.add \
         (privileged is not needed). Without them the agent cannot {}",
        list(.missing.iter().map(|(c, _)| c.name())),
        list(.missing.iter().map(|(_, why)| *why))
    )]
    MissingCapabilities {
        missing: Vec<(Capability, &'static str)>,
    },
    #[error(
        "kernel {release} is not supported: the sampler needs Linux >= {}.{} (BPF atomics, CAP_BPF)",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    UnsupportedKernel { release: String },
    #[error(
        "the kernel has no BTF ({path} is missing): run a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: &'static str },
    #[error(
        "the kernel has no perf events ({path} is missing): run a kernel built with CONFIG_PERF_EVENTS=y"
    )]
    NoPerfEvents { path: &'static str },
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the effective capabilities in {path}: {line:?}")]
    CapEff { path: &'static str, line: String },
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

const STATUS: &str = "/proc/self/status";
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const BTF: &str = "/sys/kernel/btf/vmlinux";
const PERF_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";
const KPTR_RESTRICT: &str = "/proc/sys/kernel/kptr_restrict";

/// Checks the kernel, then this process's capabilities; the first problem wins.
pub fn check() -> Result<(), PreflightError> {
    let release = read(OSRELEASE)?;
    check_kernel(release.trim())?;
    if !Path::new(BTF).exists() {
        return Err(PreflightError::NoBtf { path: BTF });
    }
    if !Path::new(PERF_PARANOID).exists() {
        return Err(PreflightError::NoPerfEvents {
            path: PERF_PARANOID,
        });
    }
    let effective = effective_capabilities(&read(STATUS)?)?;
    check_capabilities(effective)?;
    // Without CAP_SYSLOG, kptr_restrict=1 hides kernel addresses in
    // kallsyms: profiles still work, kernel frames stay unnamed.
    let restricted = read(KPTR_RESTRICT).is_ok_and(|v| v.trim() != "0");
    if restricted && !Capability::Syslog.held_in(effective) {
        tracing::warn!(
            "kernel.kptr_restrict is set and CAP_SYSLOG is missing: kernel frames will be unnamed"
        );
    }
    Ok(())
}

fn read(path: &'static str) -> Result<String, PreflightError> {
    std::fs::read_to_string(path).map_err(|source| PreflightError::Read { path, source })
}

pub(crate) fn check_kernel(release: &str) -> Result<(), PreflightError> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= MIN_KERNEL => Ok(()),
        _ => Err(PreflightError::UnsupportedKernel {
            release: release.to_owned(),
        }),
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub(crate) fn effective_capabilities(status: &str) -> Result<u64, PreflightError> {
    let line = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_default();
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).map_err(|_| {
        PreflightError::CapEff {
            path: STATUS,
            line: line.to_owned(),
        }
    })
}

pub(crate) fn check_capabilities(effective: u64) -> Result<(), PreflightError> {
    let missing: Vec<_> = Capability::REQUIRED
        .into_iter()
        .filter(|(cap, _)| !cap.held_in(effective))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[Capability]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << *c as u64)
    }

    #[test]
    fn names_every_missing_capability() {
        let err = check_capabilities(mask(&[Capability::SysPtrace])).unwrap_err();
        let message = err.to_string();
        assert!(
            message
                .starts_with("missing capabilities: CAP_BPF, CAP_PERFMON, CAP_CHECKPOINT_RESTORE;"),
            "{message}"
        );
        assert!(message.contains("privileged is not needed"), "{message}");
    }

    #[test]
    fn explicit_capabilities_or_sys_admin_suffice() {
        let explicit = mask(&[
            Capability::Bpf,
            Capability::Perfmon,
            Capability::SysPtrace,
            Capability::CheckpointRestore,
        ]);
        check_capabilities(explicit).unwrap();
        check_capabilities(mask(&[Capability::SysAdmin, Capability::SysPtrace])).unwrap();
        let err = check_capabilities(mask(&[Capability::SysAdmin])).unwrap_err();
        assert!(err.to_string().contains("CAP_SYS_PTRACE"), "{err}");
    }

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status).unwrap(), 0x1ff_ffff_ffff);
        assert!(matches!(
            effective_capabilities("Name:\tx\n"),
            Err(PreflightError::CapEff { .. })
        ));
    }

    #[test]
    fn kernel_versions() {
        check_kernel("6.18.44-fc-v669").unwrap();
        check_kernel("5.12.0").unwrap();
        let err = check_kernel("5.4.0-150-generic").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.4.0-150-generic is not supported: the sampler needs Linux >= 5.12 (BPF atomics, CAP_BPF)"
        );
        assert!(check_kernel("garbage").is_err());
    }
}
