//! Native user frames (the executable and its shared libraries) named from
//! ELF symbols, and DWARF where present (which also yields inlined
//! functions), by blazesym.
//!
//! Names are cached by (mapped file, file offset), so an address is named
//! once for every process that maps the same file, and again only after it
//! went unused long enough to be evicted. Binaries are opened through
//! `/proc/<pid>/map_files`, so they resolve inside containers too, and
//! blazesym lets go of a binary once no drain has needed it for a while: it
//! maps whole files and keeps their parsed (and decompressed) symbols, the
//! binaries of every process on the node, which would otherwise stay in the
//! agent's RSS for good.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::Pid;
use blazesym::symbolize::source::{Elf, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer, evict};

use super::cache::Cache;
use super::process::{self, FileKey, Mapping};
use crate::stack::{Frame, FrameKind};

/// The function at an address, preceded by the functions inlined into it
/// there, innermost first; `None` when the address cannot be named.
pub type Named = Option<Arc<[Frame]>>;

/// Distinct (file, offset) names kept. A busy node's hot code is a few
/// thousand addresses; each entry is about 100 bytes plus its names, which
/// are shared with the frames already exported.
const CACHE_ENTRIES: usize = 64 * 1024;
/// Drains a binary may go without an address to name before blazesym lets
/// go of it. Parsing it again costs more than naming from it (sorting its
/// symbols, inflating compressed debug sections), so a binary that keeps
/// running new code stays open; one whose hot code is all cached goes.
const KEEP_FILE_DRAINS: u64 = 10;
/// The agent's resident file pages (its own code included, about 10 MiB)
/// above which the pages of the binaries blazesym read are dropped. Each
/// release costs unmapping them, and the next reads fault them back in, so
/// it is done only when they add up.
const FILE_RSS_BUDGET: u64 = 24 << 20;

pub struct Native {
    names: Cache<(FileKey, u64), Named>,
    /// Addresses of this drain not in the cache, by the mapping (of some
    /// process) they were found in.
    pending: HashMap<FileKey, Pending>,
    symbolizer: Symbolizer,
    /// The binaries blazesym holds: by the path it last opened each
    /// through, and the drain that last read it.
    open: HashMap<FileKey, (PathBuf, u64)>,
    generation: u64,
}

struct Pending {
    pid: u32,
    mapping: Mapping,
    offsets: Vec<u64>,
}

/// What a drain's [`Native::resolve`] did, for the self metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Files opened to name addresses not named before.
    pub files: u64,
    pub addresses: u64,
}

impl Native {
    pub fn new() -> Self {
        Native {
            names: Cache::new(CACHE_ENTRIES),
            pending: HashMap::new(),
            symbolizer: symbolizer(),
            open: HashMap::new(),
            generation: 0,
        }
    }

    /// The name of `addr` of `pid`, which lies in `mapping`, if it was named
    /// before; otherwise it is queued for [`Native::resolve`], and its key
    /// for [`Native::get`] returned.
    pub fn lookup(
        &mut self,
        pid: u32,
        mapping: &Mapping,
        addr: u64,
    ) -> Result<Named, (FileKey, u64)> {
        let key = (mapping.key, addr - mapping.start + mapping.offset);
        if let Some(named) = self.names.get(&key) {
            return Ok(named.clone());
        }
        self.pending
            .entry(mapping.key)
            .or_insert_with(|| Pending {
                pid,
                mapping: mapping.clone(),
                offsets: Vec::new(),
            })
            .offsets
            .push(key.1);
        Err(key)
    }

    /// The name of an address queued by [`Native::lookup`], once resolved.
    pub fn get(&mut self, key: &(FileKey, u64)) -> Named {
        self.names.get(key).cloned().flatten()
    }

    /// Names every queued address (a [`Native::get`] of it now answers).
    pub fn resolve(&mut self) -> Resolved {
        let mut resolved = Resolved::default();
        if self.pending.is_empty() {
            return resolved;
        }
        let pending: Vec<(FileKey, Pending)> = self.pending.drain().collect();
        for (key, mut pending) in pending {
            pending.offsets.sort_unstable();
            pending.offsets.dedup();
            resolved.files += 1;
            resolved.addresses += pending.offsets.len() as u64;
            let names = match self.name(key, &pending) {
                Ok(names) => names,
                Err(err) => {
                    tracing::debug!(
                        pid = pending.pid,
                        file = %pending.mapping.path,
                        %err,
                        "cannot symbolize native frames"
                    );
                    // The file may be readable through another process
                    // next time: only a live process's failure is final.
                    if !Path::new(&format!("/proc/{}", pending.pid)).exists() {
                        continue;
                    }
                    vec![None; pending.offsets.len()]
                }
            };
            for (offset, named) in pending.offsets.into_iter().zip(names) {
                self.names.insert((key, offset), named);
            }
        }
        // Right away, not at the next drain: until then they would be RSS
        // for nothing.
        if file_rss().is_some_and(|rss| rss > FILE_RSS_BUDGET) {
            release_file_pages();
        }
        resolved
    }

    /// Starts a drain: names unused for long are evicted if there are too
    /// many, and binaries no drain needed for a while are let go of.
    pub fn next_generation(&mut self) {
        self.generation += 1;
        self.names.next_generation();
        let horizon = self.generation.saturating_sub(KEEP_FILE_DRAINS);
        let symbolizer = &mut self.symbolizer;
        let open = self.open.len();
        self.open.retain(|_, (path, last_used)| {
            if *last_used >= horizon {
                return true;
            }
            if let Err(err) = symbolizer.evict(&evict::Elf::new(path.as_path()).into()) {
                tracing::debug!(%err, "cannot release a binary");
            }
            false
        });
        if self.open.len() < open {
            trim_heap();
        }
    }

    /// Names the offsets of one pending binary.
    fn name(&mut self, key: FileKey, pending: &Pending) -> Result<Vec<Named>, blazesym::Error> {
        let mapping = &pending.mapping;
        let named = |results: Vec<Symbolized<'_>>| -> Vec<Named> {
            results
                .into_iter()
                .map(|r| frames(r, &mapping.path))
                .collect()
        };
        match key {
            FileKey::File { .. } => {
                let path = mapping.open_path(pending.pid);
                let names = named(self.symbolizer.symbolize(
                    &Source::Elf(Elf::new(path.clone())),
                    Input::FileOffset(&pending.offsets),
                )?);
                let generation = self.generation;
                match self.open.insert(key, (path.clone(), generation)) {
                    // The new path holds the parsed binary now; the old one,
                    // often of an exited process, is let go of.
                    Some((old, _)) if old != path => {
                        let _ = self.symbolizer.evict(&evict::Elf::new(old).into());
                    }
                    _ => {}
                }
                Ok(names)
            }
            // The vDSO is read from the agent's own memory (the same image),
            // found through the process's maps at its addresses.
            FileKey::Vdso => {
                let addrs: Vec<u64> = pending
                    .offsets
                    .iter()
                    .map(|offset| offset - mapping.offset + mapping.start)
                    .collect();
                let pid = Pid::from(pending.pid);
                let mut process = Process::new(pid);
                process.perf_map = false;
                let names = self
                    .symbolizer
                    .symbolize(&Source::Process(process), Input::AbsAddr(&addrs))
                    .map(named);
                // Its memory map, which blazesym keeps per process.
                let _ = self.symbolizer.evict(&evict::Process::new(pid).into());
                names
            }
        }
    }
}

impl Default for Native {
    fn default() -> Self {
        Native::new()
    }
}

/// The frames of one blazesym result for an address in `file`.
fn frames(result: Symbolized<'_>, file: &Arc<str>) -> Named {
    match result {
        Symbolized::Sym(sym) => {
            let frame = |name: &str| Frame {
                kind: FrameKind::Native,
                function: Arc::from(name),
                file: Some(file.clone()),
                package: None,
            };
            // blazesym lists inlined functions outermost first.
            let frames: Arc<[Frame]> = sym
                .inlined
                .iter()
                .rev()
                .map(|f| frame(&f.name))
                .chain(std::iter::once(frame(&sym.name)))
                .collect();
            Some(frames)
        }
        Symbolized::Unknown(_) => None,
    }
}

/// Drops the agent's resident pages of the binaries blazesym has mapped.
/// blazesym maps files
/// shared and read-only, which the dynamic loader never does, so those
/// mappings are its. The next drain that reads a binary faults its pages
/// back in from the page cache, where they stay: until then they are not the
/// agent's RSS.
fn release_file_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines().filter_map(process::parse_line) {
        if line.perms != "r--s" || !line.path.is_some_and(|p| p.starts_with('/')) {
            continue;
        }
        // SAFETY: a read-only shared file mapping: dropping its pages
        // changes no byte anyone reads from it (they come back from the
        // file), and nothing written is lost.
        unsafe {
            libc::madvise(
                line.start as *mut libc::c_void,
                (line.end - line.start) as usize,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// Returns to the kernel the heap memory of the binaries blazesym let go
/// of (symbol tables, inflated debug sections): glibc keeps freed memory
/// for reuse, in every thread's arena, unless told.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The agent's resident file-backed (and shared) memory, in bytes: the third
/// field of `/proc/self/statm`, in pages.
fn file_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

fn symbolizer() -> Symbolizer {
    // Source lines are not part of a frame; skipping them saves reading
    // line tables.
    Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(true)
        .build()
}
