//! The CPU sampler: a `perf_event` program the agent attaches to a software
//! cpu-clock event on every online CPU. Each sample counts one
//! (process, user stack, kernel stack) in the map set `CONTROL` selects; see
//! `vispyr-ebpf-common` for the protocol the agent drains it with.

#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// read-modify-write; the intrinsics lower to BPF's atomic add and exchange.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

use aya_ebpf::bindings::{BPF_F_USER_STACK, BPF_NOEXIST};
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::macros::{map, perf_event};
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, StackTrace};
use aya_ebpf::programs::PerfEventContext;
use aya_ebpf::programs::tracing::StackIdContext;
use vispyr_ebpf_common::{
    COUNTER_SLOTS, Counter, DEFAULT_COUNTS_ENTRIES, DEFAULT_STACKS_ENTRIES, EEXIST, EFAULT,
    StackKey,
};

#[map(name = "COUNTS_0")]
static COUNTS_0: HashMap<StackKey, u64> = HashMap::with_max_entries(DEFAULT_COUNTS_ENTRIES, 0);
#[map(name = "COUNTS_1")]
static COUNTS_1: HashMap<StackKey, u64> = HashMap::with_max_entries(DEFAULT_COUNTS_ENTRIES, 0);
// No BPF_F_REUSE_STACKID: a colliding stack gets -EEXIST instead of
// overwriting the stack that earlier samples in this interval point at.
#[map(name = "STACKS_0")]
static STACKS_0: StackTrace = StackTrace::with_max_entries(DEFAULT_STACKS_ENTRIES, 0);
#[map(name = "STACKS_1")]
static STACKS_1: StackTrace = StackTrace::with_max_entries(DEFAULT_STACKS_ENTRIES, 0);
#[map(name = "CONTROL")]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);
#[map(name = "BUSY")]
static BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[perf_event]
pub fn sample(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The idle task: no process to profile.
    if tgid == 0 {
        return 0;
    }
    let Some(busy) = BUSY.get_ptr_mut(0) else {
        return 0;
    };
    // Exchanges, not stores: BPF_XCHG is fully ordered, so the agent that
    // flipped CONTROL and then reads BUSY == 0 knows this run either has not
    // read CONTROL yet or has finished writing the old set.
    // SAFETY: a u64 map value of this CPU's own; the kernel never runs this
    // program twice at once on one CPU.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(busy, 1) };
    record(&ctx, tgid);
    // SAFETY: as above.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(busy, 0) };
    0
}

fn record(ctx: &PerfEventContext, tgid: u32) {
    let set = CONTROL
        .get_ptr_mut(0)
        // SAFETY: a u32 map value, written by the agent only; volatile so
        // the read stays after the exchange above.
        .map(|p| unsafe { core::ptr::read_volatile(p) })
        .unwrap_or(0);
    let (counts, stacks) = if set == 0 {
        (&COUNTS_0, &STACKS_0)
    } else {
        (&COUNTS_1, &STACKS_1)
    };
    let key = StackKey {
        tgid,
        user_stack_id: user_stack(ctx, stacks),
        kernel_stack_id: kernel_stack(ctx, stacks),
    };
    if try_count(counts, &key).is_err() {
        bump(Counter::CountsFull);
    } else {
        bump(Counter::Samples);
    }
}

fn user_stack(ctx: &PerfEventContext, stacks: &StackTrace) -> i32 {
    match ctx.get_stackid(stacks, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(e) => {
            if e == -EEXIST {
                bump(Counter::UserStackCollisions);
            } else if e != -EFAULT {
                // -EFAULT is a kernel thread: it has no user stack to lose.
                bump(Counter::UserStackErrors);
            }
            e
        }
    }
}

fn kernel_stack(ctx: &PerfEventContext, stacks: &StackTrace) -> i32 {
    match ctx.get_stackid(stacks, 0) {
        Ok(id) => id as i32,
        Err(e) => {
            // -EFAULT: the sample hit user mode, so there is no kernel stack.
            if e == -EEXIST {
                bump(Counter::KernelStackCollisions);
            }
            e
        }
    }
}

fn try_count(counts: &HashMap<StackKey, u64>, key: &StackKey) -> Result<(), i32> {
    if let Some(count) = counts.get_ptr_mut(key) {
        add_one(count);
        return Ok(());
    }
    match counts.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU inserted the same key since the lookup.
        Err(e) if e == -EEXIST => {
            let count = counts.get_ptr_mut(key).ok_or(e)?;
            add_one(count);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn add_one(count: *mut u64) {
    // SAFETY: a u64 map value; other CPUs add to it concurrently, hence atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
}

fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own slot, and the program does not nest on a CPU.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_get_stackid is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
