use std::path::PathBuf;

use crate::Error;

/// Path of a pinned upstream tool built by `make tools` (e2e/tools/build.sh).
/// `VISPYR_TOOLS_BIN` points elsewhere, e.g. at a shared cache.
pub fn tool(name: &str) -> Result<PathBuf, Error> {
    let dir = std::env::var_os("VISPYR_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin"));
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingTool {
            name: name.to_string(),
            dir,
        })
    }
}

/// Runs the pinned helm, returning its stdout; a failure quotes its stderr.
pub fn helm(args: &[&str]) -> Result<String, Error> {
    let out = std::process::Command::new(tool("helm")?)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            name: "helm".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::backend(
            format!("helm {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
