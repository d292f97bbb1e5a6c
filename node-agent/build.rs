//! Builds the eBPF program (`ebpf/vispyr-ebpf`) for `bpfel-unknown-none` and
//! leaves the object at `$OUT_DIR/vispyr-ebpf` for `include_bytes!`.
//!
//! It is a separate cargo build, in a workspace and target directory of its
//! own: the host workspace never compiles it, so `cargo clippy --workspace`
//! stays a host build. It needs what `scripts/deps.sh` installs: `rust-src`
//! (for `-Z build-std=core`, enabled on stable with `RUSTC_BOOTSTRAP=1`) and
//! `bpf-linker`, looked up in `VISPYR_BPF_LINKER_DIR`, then in the cache
//! directory deps.sh installs it to, then on `PATH`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAM: &str = "vispyr-ebpf";
const TARGET: &str = "bpfel-unknown-none";
/// Keep in step with `scripts/deps.sh`, which installs bpf-linker into
/// `~/.cache/vispyr/bpf-linker-<version>-llvm<major of rustc's LLVM>`.
const BPF_LINKER_VERSION: &str = "0.10.1";

fn main() {
    if let Err(message) = build() {
        // A build script reports through its exit status and stderr.
        eprintln!("error: building the eBPF program: {message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf");
    let crate_dir = ebpf_dir.join(PROGRAM);
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-env-changed=VISPYR_BPF_LINKER_DIR");

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: sharing one eBPF
    // target dir per host target dir lets `cargo build`, `cargo test` and
    // `cargo clippy` (each with its own OUT_DIR) reuse one build of `core`.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("vispyr-ebpf");

    let linker_dir = bpf_linker_dir()?;
    let mut path = OsString::from(&linker_dir);
    if let Some(rest) = env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1")
        // The bindings aya-ebpf uses follow the host architecture; BTF lets
        // the loader and bpftool show the program's types.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!(
                "--cfg=bpf_target_arch=\"{}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
                var("CARGO_CFG_TARGET_ARCH")?
            ),
        );
    // What the outer build set for the host must not leak into this one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status}); see its output above"));
    }

    let object = target_dir.join(TARGET).join("release").join(PROGRAM);
    let dest = out_dir.join(PROGRAM);
    std::fs::copy(&object, &dest).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            object.display(),
            dest.display()
        )
    })?;
    Ok(())
}

fn var(key: &str) -> Result<String, String> {
    env::var(key).map_err(|_| format!("cargo did not set {key}"))
}

/// The major version of the LLVM inside the rustc that builds us.
fn llvm_major() -> Result<String, String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rustc.display()))?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("{} -vV names no LLVM version", rustc.display()))
}

fn bpf_linker_dir() -> Result<PathBuf, String> {
    let cache = format!(
        ".cache/vispyr/bpf-linker-{BPF_LINKER_VERSION}-llvm{}/bin",
        llvm_major()?
    );
    let candidates = env::var_os("VISPYR_BPF_LINKER_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(env::var_os("HOME").map(|home| Path::new(&home).join(&cache)))
        .chain(
            env::var_os("PATH")
                .into_iter()
                .flat_map(|p| env::split_paths(&p).collect::<Vec<_>>()),
        );
    for dir in candidates {
        if dir.join("bpf-linker").is_file() {
            return Ok(dir);
        }
    }
    Err(format!(
        "bpf-linker not found in VISPYR_BPF_LINKER_DIR, ~/{cache} or PATH; \
         run scripts/deps.sh (or `make deps`) to install it"
    ))
}
