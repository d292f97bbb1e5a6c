//! Renders the VispyrInstrumentation CustomResourceDefinition.
//!
//! `crdgen` prints it; `crdgen <dir>` writes `<dir>/vispyr.io_vispyrinstrumentations.yaml`
//! (`make crds` runs `crdgen crds`).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (dir, extra) = (args.next(), args.next());
    if extra.is_some() {
        eprintln!("usage: crdgen [output-dir]");
        return ExitCode::from(64);
    }
    let result = match dir {
        Some(dir) => vispyr_operator::crd::write_crd(Path::new(&dir))
            .map(|path| eprintln!("wrote {}", path.display())),
        None => vispyr_operator::crd::crd_yaml().map(|yaml| print!("{yaml}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("crdgen: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
