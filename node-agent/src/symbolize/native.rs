//! Native user frames (the executable and its shared libraries) named from
//! ELF symbols, and DWARF where present (which also yields inlined
//! functions), by blazesym. Binaries are opened through
//! `/proc/<pid>/map_files`, so they resolve inside containers too.

use std::collections::HashMap;
use std::sync::Arc;

use blazesym::Pid;
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer, evict};

use crate::stack::{Frame, FrameKind};

/// Drains a process may go unsampled before its cached memory map is dropped.
const KEEP_UNUSED_DRAINS: u64 = 6;
/// Processes forgotten before the symbolizer starts afresh: blazesym keeps a
/// small entry per `/proc/<pid>/map_files` path it opened, which only a new
/// symbolizer releases. Parsed binaries are shared by all processes mapping
/// them, so this costs a re-read of the binaries in use, rarely.
const RESET_AFTER_FORGOTTEN: usize = 4096;

pub struct Native {
    symbolizer: Symbolizer,
    /// pid -> the drain that last symbolized it.
    seen: HashMap<u32, u64>,
    generation: u64,
    forgotten: usize,
}

impl Native {
    pub fn new() -> Self {
        Native {
            symbolizer: symbolizer(),
            seen: HashMap::new(),
            generation: 0,
            forgotten: 0,
        }
    }

    /// Starts a drain: what is cached for processes not seen for a while
    /// (most often: exited) is released.
    pub fn next_generation(&mut self) {
        self.generation += 1;
        let horizon = self.generation.saturating_sub(KEEP_UNUSED_DRAINS);
        let gone: Vec<u32> = self
            .seen
            .iter()
            .filter(|&(_, &last)| last < horizon)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.seen.remove(&pid);
            let target = evict::Process::new(Pid::from(pid));
            if let Err(err) = self.symbolizer.evict(&target.into()) {
                tracing::debug!(pid, %err, "cannot release symbolization data");
            }
            self.forgotten += 1;
        }
        if self.forgotten >= RESET_AFTER_FORGOTTEN {
            self.symbolizer = symbolizer();
            self.forgotten = 0;
        }
    }

    /// For each address of `pid`, its frames (the function, preceded by
    /// the functions inlined into it at that address, innermost first), or
    /// `None` when it cannot be named.
    pub fn symbolize(
        &mut self,
        pid: u32,
        addrs: &[u64],
    ) -> Result<Vec<Option<Vec<Frame>>>, blazesym::Error> {
        self.seen.insert(pid, self.generation);
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

fn symbolizer() -> Symbolizer {
    // Source lines are not part of a frame; skipping them saves reading
    // line tables.
    Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(true)
        .build()
}

impl Default for Native {
    fn default() -> Self {
        Native::new()
    }
}
