//! Native user frames (the executable and its shared libraries) named from
//! ELF symbols, and DWARF where present (which also yields inlined
//! functions), by blazesym. Binaries are opened through
//! `/proc/<pid>/map_files`, so they resolve inside containers too.

use std::sync::Arc;

use blazesym::Pid;
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use crate::stack::{Frame, FrameKind};

pub struct Native {
    symbolizer: Symbolizer,
}

impl Native {
    pub fn new() -> Self {
        Native {
            // Source lines are not part of a frame; skipping them saves
            // reading line tables.
            symbolizer: Symbolizer::builder()
                .enable_code_info(false)
                .enable_inlined_fns(true)
                .build(),
        }
    }

    /// For each address of `pid`, its frames (the function, preceded by
    /// the functions inlined into it at that address, innermost first), or
    /// `None` when it cannot be named.
    pub fn symbolize(
        &self,
        pid: u32,
        addrs: &[u64],
    ) -> Result<Vec<Option<Vec<Frame>>>, blazesym::Error> {
        let mut process = Process::new(Pid::from(pid));
        // V8's perf map is read by our own cache, which follows containers.
        process.perf_map = false;
        let results = self
            .symbolizer
            .symbolize(&Source::Process(process), Input::AbsAddr(addrs))?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                Symbolized::Sym(sym) => {
                    let file: Option<Arc<str>> = sym
                        .module
                        .as_ref()
                        .map(|m| Arc::from(&*m.to_string_lossy()));
                    let frame = |name: &str| Frame {
                        kind: FrameKind::Native,
                        function: Arc::from(name),
                        file: file.clone(),
                        package: None,
                    };
                    // blazesym lists inlined functions outermost first.
                    let mut frames: Vec<Frame> =
                        sym.inlined.iter().rev().map(|f| frame(&f.name)).collect();
                    frames.push(frame(&sym.name));
                    Some(frames)
                }
                Symbolized::Unknown(_) => None,
            })
            .collect())
    }
}

impl Default for Native {
    fn default() -> Self {
        Native::new()
    }
}
