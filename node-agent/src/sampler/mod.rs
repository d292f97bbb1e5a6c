//! The eBPF CPU sampler: loads the program built from `ebpf/vispyr-ebpf`,
//! attaches it to a software cpu-clock event on every online CPU and drains
//! its maps into [`Drained`] stacks of raw addresses.
//!
//! Draining swaps the two map sets (see `vispyr-ebpf-common`): the program
//! moves on to the other set while this one is read and emptied, so no sample
//! is lost between a read and a delete, and none is read twice.

pub mod preflight;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, StackTraceMap};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::{PerfEvent, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};
use vispyr_ebpf_common::{self as shared, Counter, StackKey};

pub use preflight::PreflightError;

use crate::config::Profiling;

/// The object `build.rs` compiled for bpfel-unknown-none.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vispyr-ebpf"));
const PROGRAM_NAME: &str = "sample";

/// How long a drain waits for CPUs still inside the program with the old
/// map set. A run takes microseconds; this only bounds a pathological case.
const QUIESCE_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("loading the eBPF program into the kernel")]
    Program(#[source] ProgramError),
    #[error("cannot read the online CPUs from {path}")]
    OnlineCpus {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach to the cpu-clock perf event of CPU {cpu}")]
    Attach {
        cpu: u32,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> SamplerError {
    move |source| SamplerError::Map { map, source }
}

/// A stack as the kernel recorded it: addresses, leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawStack {
    Frames(Arc<[u64]>),
    /// No stack: the sample hit user mode (kernel stack) or a kernel thread
    /// (user stack).
    Absent,
    /// The stack id was taken by another stack (hash collision).
    Collision,
    /// The stack id is gone or the kernel returned another error.
    Lost,
}

/// One key of the counts map with its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    pub tgid: u32,
    pub user: RawStack,
    pub kernel: RawStack,
    pub count: u64,
}

/// What the program counted since the previous drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterDeltas {
    pub samples: u64,
    pub user_collisions: u64,
    pub kernel_collisions: u64,
    pub user_errors: u64,
    pub counts_full: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Drained {
    pub samples: Vec<RawSample>,
    pub counters: CounterDeltas,
}

struct MapSet {
    counts: BpfHashMap<MapData, StackKey, u64>,
    stacks: StackTraceMap<MapData>,
    names: (&'static str, &'static str),
}

pub struct Sampler {
    // Owns the program and its perf event links: dropping it detaches.
    _ebpf: Ebpf,
    sets: [MapSet; 2],
    control: Array<MapData, u32>,
    busy: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    active: u32,
    totals: [u64; shared::COUNTER_SLOTS as usize],
}

impl Sampler {
    /// Checks the kernel and capabilities, loads the program and attaches
    /// it on every online CPU at `config.frequency_hz`. CPUs brought online
    /// later are not sampled until the agent restarts.
    pub fn start(config: &Profiling) -> Result<Self, SamplerError> {
        preflight::check()?;
        let mut loader = EbpfLoader::new();
        for name in shared::COUNTS {
            loader.map_max_entries(name, config.counts_entries.0);
        }
        for name in shared::STACKS {
            loader.map_max_entries(name, config.stacks_entries.0);
        }
        let mut ebpf = loader.load(PROGRAM).map_err(SamplerError::Load)?;

        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(SamplerError::Missing("program `sample`"))?
            .try_into()
            .map_err(SamplerError::Program)?;
        program.load().map_err(SamplerError::Program)?;
        let cpus = aya::util::online_cpus()
            .map_err(|(path, source)| SamplerError::OnlineCpus { path, source })?;
        for &cpu in &cpus {
            program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(config.frequency_hz.0),
                    false,
                )
                .map_err(|source| SamplerError::Attach { cpu, source })?;
        }
        tracing::info!(
            cpus = cpus.len(),
            frequency_hz = config.frequency_hz.0,
            "sampler attached"
        );

        let set = |ebpf: &mut Ebpf, i: usize| -> Result<MapSet, SamplerError> {
            let names = (shared::COUNTS[i], shared::STACKS[i]);
            Ok(MapSet {
                counts: take(ebpf, names.0)?,
                stacks: take(ebpf, names.1)?,
                names,
            })
        };
        Ok(Sampler {
            sets: [set(&mut ebpf, 0)?, set(&mut ebpf, 1)?],
            control: take(&mut ebpf, shared::CONTROL)?,
            busy: take(&mut ebpf, shared::BUSY)?,
            counters: take(&mut ebpf, shared::COUNTERS)?,
            _ebpf: ebpf,
            active: 0,
            totals: [0; shared::COUNTER_SLOTS as usize],
        })
    }

    /// Everything counted since the previous drain (or the start).
    pub fn drain(&mut self) -> Result<Drained, SamplerError> {
        let drained_set = self.active as usize;
        self.swap()?;
        let samples = self.sets[drained_set].empty()?;
        let counters = self.counter_deltas()?;
        Ok(Drained { samples, counters })
    }

    /// Points the program at the other set and waits until no CPU can still
    /// be writing to the one it left.
    fn swap(&mut self) -> Result<(), SamplerError> {
        let next = 1 - self.active;
        self.control
            .set(0, next, 0)
            .map_err(map_err(shared::CONTROL))?;
        self.active = next;
        // Pairs with the program's exchange on BUSY before it reads CONTROL:
        // either it sees the new set, or we see it busy (Dekker's handshake).
        fence(Ordering::SeqCst);
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        loop {
            let busy = self.busy.get(&0, 0).map_err(map_err(shared::BUSY))?;
            if busy.iter().all(|&b| b == 0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "a CPU stayed inside the sampler for {QUIESCE_TIMEOUT:?}; draining anyway"
                );
                return Ok(());
            }
            std::thread::yield_now();
        }
    }

    fn counter_deltas(&mut self) -> Result<CounterDeltas, SamplerError> {
        let mut deltas = [0; shared::COUNTER_SLOTS as usize];
        for counter in Counter::ALL {
            let slot = counter as usize;
            let total: u64 = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(map_err(shared::COUNTERS))?
                .iter()
                .sum();
            deltas[slot] = total.wrapping_sub(self.totals[slot]);
            self.totals[slot] = total;
        }
        let get = |c: Counter| deltas[c as usize];
        Ok(CounterDeltas {
            samples: get(Counter::Samples),
            user_collisions: get(Counter::UserStackCollisions),
            kernel_collisions: get(Counter::KernelStackCollisions),
            user_errors: get(Counter::UserStackErrors),
            counts_full: get(Counter::CountsFull),
        })
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SamplerError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(SamplerError::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

impl MapSet {
    /// Reads every count and stack of this (idle) set, then deletes them.
    fn empty(&mut self) -> Result<Vec<RawSample>, SamplerError> {
        let (counts_name, stacks_name) = self.names;
        let ids = self
            .stacks
            .stack_ids()
            .collect::<Result<Vec<u32>, _>>()
            .map_err(map_err(stacks_name))?;
        let mut stacks = HashMap::with_capacity(ids.len());
        for id in ids {
            match self.stacks.get(&id, 0) {
                Ok(trace) => {
                    let ips: Arc<[u64]> = trace.frames().iter().map(|f| f.ip).collect();
                    stacks.insert(id, ips);
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(stacks_name)(e)),
            }
            self.stacks
                .remove(&id)
                .or_else(ignore_not_found)
                .map_err(map_err(stacks_name))?;
        }

        let keys = self
            .counts
            .keys()
            .collect::<Result<Vec<StackKey>, _>>()
            .map_err(map_err(counts_name))?;
        let mut samples = Vec::with_capacity(keys.len());
        for key in keys {
            let count = match self.counts.get(&key, 0) {
                Ok(count) => count,
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(counts_name)(e)),
            };
            self.counts
                .remove(&key)
                .or_else(ignore_not_found)
                .map_err(map_err(counts_name))?;
            samples.push(RawSample {
                tgid: key.tgid,
                user: raw_stack(&stacks, key.user_stack_id),
                kernel: raw_stack(&stacks, key.kernel_stack_id),
                count,
            });
        }
        Ok(samples)
    }
}

fn ignore_not_found(e: MapError) -> Result<(), MapError> {
    match e {
        MapError::KeyNotFound => Ok(()),
        e => Err(e),
    }
}

fn raw_stack(stacks: &HashMap<u32, Arc<[u64]>>, id: i32) -> RawStack {
    match u32::try_from(id) {
        Ok(id) => stacks
            .get(&id)
            .map_or(RawStack::Lost, |ips| RawStack::Frames(ips.clone())),
        Err(_) if id == -shared::EFAULT => RawStack::Absent,
        Err(_) if id == -shared::EEXIST => RawStack::Collision,
        Err(_) => RawStack::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_stack_ids_keep_their_meaning() {
        let stacks = HashMap::from([(7, Arc::from(vec![1u64, 2]))]);
        assert_eq!(
            raw_stack(&stacks, 7),
            RawStack::Frames(Arc::from(vec![1u64, 2]))
        );
        assert_eq!(raw_stack(&stacks, 8), RawStack::Lost);
        assert_eq!(raw_stack(&stacks, -14), RawStack::Absent);
        assert_eq!(raw_stack(&stacks, -17), RawStack::Collision);
        assert_eq!(raw_stack(&stacks, -12), RawStack::Lost);
    }
}
