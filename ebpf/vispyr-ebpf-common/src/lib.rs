//! What the eBPF program and the agent must agree on byte for byte: map
//! names, the layout of their keys and values, and the counter slots.
//!
//! Samples go to one of two map sets (`COUNTS_n` + `STACKS_n`); `CONTROL[0]`
//! says which set the program writes. The agent flips it, waits until no CPU
//! is still inside the program with the old value (`BUSY`), then drains the
//! idle set at leisure: nothing is lost to a read-then-delete race and
//! nothing is counted twice.

#![no_std]

/// Count per (process, user stack, kernel stack).
pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
/// `BPF_MAP_TYPE_STACK_TRACE` maps, the stacks the `COUNTS` keys refer to.
pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
/// `Array<u32>` of one element: the set the program writes (0 or 1).
pub const CONTROL: &str = "CONTROL";
/// `PerCpuArray<u64>` of one element: non-zero while the program runs on that CPU.
pub const BUSY: &str = "BUSY";
/// `PerCpuArray<u64>` indexed by [`Counter`], monotonic.
pub const COUNTERS: &str = "COUNTERS";

/// Entries of a `COUNTS` map unless the agent configures otherwise.
pub const DEFAULT_COUNTS_ENTRIES: u32 = 16_384;
/// Entries of a `STACKS` map unless the agent configures otherwise.
pub const DEFAULT_STACKS_ENTRIES: u32 = 16_384;
/// Frames the kernel records per stack (`PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Key of a `COUNTS` map. A negative stack id is the errno that
/// `bpf_get_stackid` returned instead: `-EFAULT` for the kernel stack of a
/// sample taken in user mode (the usual case), `-EEXIST` for a hash
/// collision with a different stack already stored under that id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Process id (the kernel's tgid) as the host sees it.
    pub tgid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
}

#[cfg(feature = "user")]
// SAFETY: three plain integers, no padding, any bit pattern is valid.
unsafe impl aya::Pod for StackKey {}

/// Slots of the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Samples the program recorded (excluding the idle task).
    Samples = 0,
    /// A user stack whose id was taken by a different stack.
    UserStackCollisions = 1,
    /// A kernel stack whose id was taken by a different stack.
    KernelStackCollisions = 2,
    /// A user stack that could not be recorded for another reason (map full,
    /// no user context).
    UserStackErrors = 3,
    /// A sample dropped because its `COUNTS` map was full.
    CountsFull = 4,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::Samples,
        Counter::UserStackCollisions,
        Counter::KernelStackCollisions,
        Counter::UserStackErrors,
        Counter::CountsFull,
    ];
}

/// Entries of the `COUNTERS` map.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

/// errno values the agent reads back out of negative stack ids.
pub const EFAULT: i32 = 14;
pub const EEXIST: i32 = 17;
