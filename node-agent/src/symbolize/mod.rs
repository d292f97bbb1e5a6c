//! Raw stacks of addresses in, [`Sample`]s of named, kind-tagged frames out:
//! kernel frames from kallsyms, JavaScript from V8's perf map, everything
//! else in user space from the binaries (blazesym).
//!
//! A process that exited before the drain keeps its samples: its kernel
//! frames are still named, its user frames become `[unknown]`.

mod cache;
pub mod js;
pub mod kallsyms;
pub mod native;
pub mod perfmap;
pub mod process;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::sampler::{RawSample, RawStack};
use crate::stack::{Frame, FrameKind, Sample};
use cache::Cache;
use native::Named;
use process::{FileKey, Identity, Maps, Place};

/// Drains a process may go unsampled before what is cached for it is dropped.
const KEEP_UNUSED_DRAINS: u64 = 6;
/// Kernel addresses named; kernel text does not move, so only the bound
/// ever evicts one.
const KERNEL_CACHE_ENTRIES: usize = 16 * 1024;

/// Symbolized samples, merged by process and frames.
#[derive(Debug, Default)]
pub struct Merged(HashMap<(u32, Vec<Frame>), u64>);

impl Merged {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Empties it into samples.
    pub fn take(&mut self) -> Vec<Sample> {
        let merged = std::mem::take(&mut self.0);
        merged
            .into_iter()
            .map(|((pid, frames), count)| Sample { pid, frames, count })
            .collect()
    }
}

/// What one drain's symbolization found, for the self metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Distinct (process, address) pairs looked up, per kind of stack.
    pub kernel_addresses: u64,
    pub user_addresses: u64,
    /// Of those, the ones left unnamed.
    pub kernel_misses: u64,
    pub user_misses: u64,
    /// Processes whose binaries could not be read (most often: exited).
    pub processes_unreadable: u64,
    /// Native addresses not named in an earlier drain, read from the
    /// binaries this time, and the binaries opened for them.
    pub native_resolved: u64,
    pub native_files: u64,
}

/// What the symbolizer knows of one process between drains.
struct Process {
    identity: Identity,
    /// Read when a native address first needs it, and again (at most once
    /// a drain) when an address falls outside every mapping read: the
    /// process mapped something since.
    maps: Option<Maps>,
    maps_read: u64,
    last_used: u64,
}

impl Process {
    fn new(identity: Identity, generation: u64) -> Self {
        Process {
            identity,
            maps: None,
            maps_read: 0,
            last_used: generation,
        }
    }

    fn place(&mut self, pid: u32, addr: u64, generation: u64) -> Place<'_> {
        let stale = self.maps_read < generation
            && self
                .maps
                .as_ref()
                .is_none_or(|m| m.place(addr) == Place::Outside);
        if stale {
            self.maps_read = generation;
            match Maps::read(pid) {
                Ok(Some(maps)) => self.maps = Some(maps),
                // Gone: what was read while it lived still names its samples.
                Ok(None) => {}
                Err(err) => tracing::debug!(pid, %err, "cannot read the memory map"),
            }
        }
        self.maps.as_ref().map_or(Place::Outside, |m| m.place(addr))
    }
}

/// The name of one user address, or where it will come from once the
/// native addresses of the drain are resolved.
enum UserName {
    Named(Arc<[Frame]>),
    Native((FileKey, u64)),
    Unknown,
}

pub struct Symbolizer {
    kernel: Option<kallsyms::Kallsyms>,
    kernel_names: Cache<u64, Named>,
    native: native::Native,
    perf_maps: perfmap::PerfMaps,
    processes: HashMap<u32, Process>,
    generation: u64,
    unknown_kernel: Frame,
    unknown_user: Frame,
    collision: Frame,
    lost: Frame,
}

impl Symbolizer {
    pub fn new() -> Self {
        let kernel = match kallsyms::Kallsyms::load() {
            Ok(k) if !k.is_empty() => Some(k),
            Ok(_) => {
                tracing::warn!(
                    "{} shows no addresses (kptr_restrict): kernel frames stay unnamed",
                    kallsyms::PATH
                );
                None
            }
            Err(err) => {
                tracing::warn!(%err, "cannot read {}: kernel frames stay unnamed", kallsyms::PATH);
                None
            }
        };
        let placeholder = |kind, name: &str| Frame {
            kind,
            function: Arc::from(name),
            file: None,
            package: None,
        };
        Symbolizer {
            kernel,
            kernel_names: Cache::new(KERNEL_CACHE_ENTRIES),
            native: native::Native::new(),
            perf_maps: perfmap::PerfMaps::default(),
            processes: HashMap::new(),
            generation: 0,
            unknown_kernel: placeholder(FrameKind::Kernel, "[unknown]"),
            unknown_user: placeholder(FrameKind::Native, "[unknown]"),
            collision: placeholder(FrameKind::Native, "[stack id collision]"),
            lost: placeholder(FrameKind::Native, "[stack lost]"),
        }
    }

    /// Names every frame and adds the samples to `into`, where samples of
    /// one process whose frames come out the same (different addresses in
    /// the same functions, or a later drain) are merged.
    pub fn symbolize(&mut self, raw: &[RawSample], into: &mut Merged) -> Stats {
        self.next_generation();
        let mut stats = Stats::default();
        let mut by_pid: HashMap<u32, Vec<&RawSample>> = HashMap::new();
        for sample in raw {
            by_pid.entry(sample.tgid).or_default().push(sample);
        }
        // Every process's user addresses first, so that native ones named in
        // no earlier drain are read from each binary once for all processes.
        let mut pending = Vec::with_capacity(by_pid.len());
        for (pid, samples) in by_pid {
            let user = self.user_names(pid, &samples, &mut stats);
            pending.push((pid, samples, user));
        }
        let resolved = self.native.resolve();
        stats.native_resolved += resolved.addresses;
        stats.native_files += resolved.files;
        for (pid, samples, user) in pending {
            let user = self.user_frames(user, &mut stats);
            let kernel = self.kernel_frames(&samples, &mut stats);
            for sample in samples {
                let mut frames = Vec::new();
                self.push_frames(&sample.kernel, &kernel, &self.unknown_kernel, &mut frames);
                self.push_frames(&sample.user, &user, &self.unknown_user, &mut frames);
                *into.0.entry((pid, frames)).or_default() += sample.count;
            }
        }
        stats
    }

    /// Starts a drain: what is cached for processes not seen for a while
    /// (most often: exited) is dropped, and names unused for long are
    /// evicted if there are too many.
    fn next_generation(&mut self) {
        self.generation += 1;
        let horizon = self.generation.saturating_sub(KEEP_UNUSED_DRAINS);
        self.processes.retain(|_, p| p.last_used >= horizon);
        self.perf_maps.next_generation();
        self.native.next_generation();
        self.kernel_names.next_generation();
    }

    fn push_frames(
        &self,
        stack: &RawStack,
        named: &HashMap<u64, Arc<[Frame]>>,
        unknown: &Frame,
        out: &mut Vec<Frame>,
    ) {
        match stack {
            RawStack::Frames(ips) => {
                for (depth, &ip) in ips.iter().enumerate() {
                    match named.get(&lookup_address(depth, ip)) {
                        Some(frames) => out.extend(frames.iter().cloned()),
                        None => out.push(unknown.clone()),
                    }
                }
            }
            RawStack::Absent => {}
            RawStack::Collision => out.push(self.collision.clone()),
            RawStack::Lost => out.push(self.lost.clone()),
        }
    }

    fn kernel_frames(
        &mut self,
        samples: &[&RawSample],
        stats: &mut Stats,
    ) -> HashMap<u64, Arc<[Frame]>> {
        let addrs = addresses(samples.iter().map(|s| &s.kernel));
        stats.kernel_addresses += addrs.len() as u64;
        let mut named = HashMap::with_capacity(addrs.len());
        for addr in addrs {
            let frames = match self.kernel_names.get(&addr) {
                Some(frames) => frames.clone(),
                None => {
                    let frames: Named = self
                        .kernel
                        .as_ref()
                        .and_then(|k| k.lookup(addr))
                        .map(|frame| Arc::from([frame]));
                    self.kernel_names.insert(addr, frames.clone());
                    frames
                }
            };
            match frames {
                Some(frames) => {
                    named.insert(addr, frames);
                }
                None => stats.kernel_misses += 1,
            }
        }
        named
    }

    /// The cached state of `pid`, dropped first when the pid now runs
    /// another program (a new process on a reused pid, or an exec); `None`
    /// when it is gone and nothing is cached.
    fn process(&mut self, pid: u32) -> Option<&mut Process> {
        let identity = Identity::read(pid).unwrap_or_else(|err| {
            tracing::debug!(pid, %err, "cannot read the process's identity");
            None
        });
        let generation = self.generation;
        let process = match (self.processes.entry(pid), identity) {
            (Entry::Occupied(entry), _) => entry.into_mut(),
            (Entry::Vacant(entry), Some(identity)) => {
                entry.insert(Process::new(identity, generation))
            }
            (Entry::Vacant(_), None) => return None,
        };
        if let Some(identity) = identity
            && identity != process.identity
        {
            *process = Process::new(identity, generation);
            self.perf_maps.forget(pid);
        }
        process.last_used = generation;
        Some(process)
    }

    /// Where the name of each user address of `pid` comes from: its perf
    /// map, the cache of native names, or the binaries it maps (queued in
    /// `native`).
    fn user_names(
        &mut self,
        pid: u32,
        samples: &[&RawSample],
        stats: &mut Stats,
    ) -> Vec<(u64, UserName)> {
        let addrs = addresses(samples.iter().map(|s| &s.user));
        stats.user_addresses += addrs.len() as u64;
        if addrs.is_empty() {
            return Vec::new();
        }
        let generation = self.generation;
        let known = self.process(pid).is_some();
        if !known {
            stats.processes_unreadable += 1;
        }
        // After `process`, which forgets the perf map of another program.
        let has_perf_map = self.perf_maps.refresh(pid);
        let mut out = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if has_perf_map && let Some(frame) = self.perf_maps.lookup(pid, addr) {
                out.push((addr, UserName::Named(Arc::from([frame]))));
                continue;
            }
            let process = self.processes.get_mut(&pid).filter(|_| known);
            let name = match process.map(|p| p.place(pid, addr, generation)) {
                Some(Place::File(mapping)) => match self.native.lookup(pid, mapping, addr) {
                    Ok(Some(frames)) => UserName::Named(frames),
                    Ok(None) => UserName::Unknown,
                    Err(key) => UserName::Native(key),
                },
                _ => UserName::Unknown,
            };
            out.push((addr, name));
        }
        out
    }

    /// The frames of each user address, now that native ones are resolved.
    fn user_frames(
        &mut self,
        names: Vec<(u64, UserName)>,
        stats: &mut Stats,
    ) -> HashMap<u64, Arc<[Frame]>> {
        let mut frames = HashMap::with_capacity(names.len());
        for (addr, name) in names {
            let named = match name {
                UserName::Named(named) => Some(named),
                UserName::Native(key) => self.native.get(&key),
                UserName::Unknown => None,
            };
            match named {
                Some(named) => {
                    frames.insert(addr, named);
                }
                None => stats.user_misses += 1,
            }
        }
        frames
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

/// Every frame but the leaf holds a return address, which points after the
/// call: look up the byte before it, inside the call, or a call that ends a
/// function would be blamed on the next one.
fn lookup_address(depth: usize, ip: u64) -> u64 {
    if depth == 0 { ip } else { ip.saturating_sub(1) }
}

/// The distinct lookup addresses of some stacks.
fn addresses<'a>(stacks: impl Iterator<Item = &'a RawStack>) -> Vec<u64> {
    let mut addrs: Vec<u64> = stacks
        .filter_map(|s| match s {
            RawStack::Frames(ips) => Some(ips),
            _ => None,
        })
        .flat_map(|ips| {
            ips.iter()
                .enumerate()
                .map(|(depth, &ip)| lookup_address(depth, ip))
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(tgid: u32, user: RawStack, kernel: RawStack, count: u64) -> RawSample {
        RawSample {
            tgid,
            user,
            kernel,
            count,
        }
    }

    #[test]
    fn a_gone_process_keeps_its_samples() {
        // No process has pid u32::MAX - 1 (above pid_max): nothing to read.
        let pid = u32::MAX - 1;
        let mut symbolizer = Symbolizer::new();
        let mut merged = Merged::default();
        let stats = symbolizer.symbolize(
            &[
                raw(
                    pid,
                    RawStack::Frames(Arc::from(vec![0x1000, 0x2001])),
                    RawStack::Absent,
                    3,
                ),
                raw(pid, RawStack::Collision, RawStack::Absent, 2),
            ],
            &mut merged,
        );
        let samples = merged.take();
        assert_eq!(samples.len(), 2);
        let unknown = samples.iter().find(|s| s.count == 3).unwrap();
        assert_eq!(unknown.frames.len(), 2);
        assert!(unknown.frames.iter().all(|f| &*f.function == "[unknown]"));
        let collided = samples.iter().find(|s| s.count == 2).unwrap();
        assert_eq!(&*collided.frames[0].function, "[stack id collision]");
        assert_eq!(stats.user_addresses, 2);
        assert_eq!(stats.user_misses, 2);
        assert_eq!(stats.processes_unreadable, 1);
    }

    #[test]
    fn same_frames_are_merged_and_callers_looked_up_inside_the_call() {
        let pid = u32::MAX - 1;
        let mut symbolizer = Symbolizer::new();
        let mut merged = Merged::default();
        let lost = |count| raw(pid, RawStack::Lost, RawStack::Absent, count);
        symbolizer.symbolize(&[lost(1), lost(4)], &mut merged);
        symbolizer.symbolize(&[lost(2)], &mut merged);
        let samples = merged.take();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].count, 7);
        assert!(merged.is_empty());
        assert_eq!(lookup_address(0, 0x10), 0x10);
        assert_eq!(lookup_address(1, 0x10), 0xf);
        let stacks = [RawStack::Frames(Arc::from(vec![0x10, 0x21, 0x10]))];
        assert_eq!(addresses(stacks.iter()), vec![0xf, 0x10, 0x20]);
    }

    /// A function of this test binary with a name the symbolizer can find.
    #[inline(never)]
    #[unsafe(no_mangle)]
    extern "C" fn vispyr_symbolize_marker() -> u64 {
        std::hint::black_box(42)
    }

    fn leaf(pid: u32, addr: u64) -> RawSample {
        raw(
            pid,
            RawStack::Frames(Arc::from(vec![addr])),
            RawStack::Absent,
            1,
        )
    }

    #[test]
    fn native_names_are_read_once_then_cached() {
        let pid = std::process::id();
        let addr = vispyr_symbolize_marker as *const () as usize as u64;
        let mut symbolizer = Symbolizer::new();
        for drain in 0..3 {
            let mut merged = Merged::default();
            let stats = symbolizer.symbolize(&[leaf(pid, addr)], &mut merged);
            let samples = merged.take();
            assert_eq!(&*samples[0].frames[0].function, "vispyr_symbolize_marker");
            assert_eq!(samples[0].frames[0].kind, FrameKind::Native);
            let expected = if drain == 0 { 1 } else { 0 };
            assert_eq!(stats.native_resolved, expected, "drain {drain}: {stats:?}");
            assert_eq!(stats.user_misses, 0);
        }
    }

    #[test]
    fn a_pid_running_another_program_is_read_afresh() {
        let pid = std::process::id();
        let addr = vispyr_symbolize_marker as *const () as usize as u64;
        let mut symbolizer = Symbolizer::new();
        symbolizer.symbolize(&[leaf(pid, addr)], &mut Merged::default());
        assert!(symbolizer.processes[&pid].maps.is_some());
        // Same program: what was read stays.
        assert!(symbolizer.process(pid).unwrap().maps.is_some());
        // As if the pid had run another program when it was cached.
        let stale =
            Identity::parse("1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0 7 0 9").unwrap();
        symbolizer.processes.get_mut(&pid).unwrap().identity = stale;
        let process = symbolizer.process(pid).unwrap();
        assert!(
            process.maps.is_none(),
            "the old program's mappings are dropped"
        );
        assert_ne!(process.identity, stale);
    }
}
