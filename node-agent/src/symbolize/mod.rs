//! Raw stacks of addresses in, [`Sample`]s of named, kind-tagged frames out:
//! kernel frames from kallsyms, JavaScript from V8's perf map, everything
//! else in user space from the binaries (blazesym).
//!
//! A process that exited before the drain keeps its samples: its kernel
//! frames are still named, its user frames become `[unknown]`.

pub mod js;
pub mod kallsyms;
pub mod native;
pub mod perfmap;

use std::collections::HashMap;
use std::sync::Arc;

use crate::sampler::{RawSample, RawStack};
use crate::stack::{Frame, FrameKind, Sample};

/// Symbolized samples, merged by process and frames.
#[derive(Debug, Default)]
pub struct Merged(HashMap<(u32, Vec<Frame>), u64>);

impl Merged {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Empties it into samples.
    pub fn take(&mut self) -> Vec<Sample> {
        self.0
            .drain()
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
}

pub struct Symbolizer {
    kernel: Option<kallsyms::Kallsyms>,
    native: native::Native,
    perf_maps: perfmap::PerfMaps,
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
            native: native::Native::new(),
            perf_maps: perfmap::PerfMaps::default(),
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
        self.perf_maps.next_generation();
        self.native.next_generation();
        let mut stats = Stats::default();
        let mut by_pid: HashMap<u32, Vec<&RawSample>> = HashMap::new();
        for sample in raw {
            by_pid.entry(sample.tgid).or_default().push(sample);
        }
        for (pid, samples) in by_pid {
            let user = self.user_frames(pid, &samples, &mut stats);
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

    fn push_frames(
        &self,
        stack: &RawStack,
        named: &HashMap<u64, Vec<Frame>>,
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

    fn kernel_frames(&self, samples: &[&RawSample], stats: &mut Stats) -> HashMap<u64, Vec<Frame>> {
        let addrs = addresses(samples.iter().map(|s| &s.kernel));
        stats.kernel_addresses += addrs.len() as u64;
        let mut named = HashMap::with_capacity(addrs.len());
        for addr in addrs {
            match self.kernel.as_ref().and_then(|k| k.lookup(addr)) {
                Some(frame) => {
                    named.insert(addr, vec![frame]);
                }
                None => stats.kernel_misses += 1,
            }
        }
        named
    }

    fn user_frames(
        &mut self,
        pid: u32,
        samples: &[&RawSample],
        stats: &mut Stats,
    ) -> HashMap<u64, Vec<Frame>> {
        let addrs = addresses(samples.iter().map(|s| &s.user));
        stats.user_addresses += addrs.len() as u64;
        let mut named = HashMap::with_capacity(addrs.len());
        let mut native = Vec::new();
        let has_perf_map = self.perf_maps.refresh(pid);
        for addr in addrs {
            match has_perf_map
                .then(|| self.perf_maps.lookup(pid, addr))
                .flatten()
            {
                Some(frame) => {
                    named.insert(addr, vec![frame]);
                }
                None => native.push(addr),
            }
        }
        if native.is_empty() {
            return named;
        }
        match self.native.symbolize(pid, &native) {
            Ok(results) => {
                for (addr, frames) in native.into_iter().zip(results) {
                    match frames {
                        Some(frames) => {
                            named.insert(addr, frames);
                        }
                        None => stats.user_misses += 1,
                    }
                }
            }
            Err(err) => {
                tracing::debug!(pid, %err, "cannot symbolize user frames");
                stats.processes_unreadable += 1;
                stats.user_misses += native.len() as u64;
            }
        }
        named
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
}
