//! One program at a time walks a flow's TLS records.
//!
//! Two CPUs can run the programs on segments of one flow at the same moment: a sender's
//! segments reach the hook from whichever CPU transmitted them (on a veth from the sender's
//! own CPUs, on a router from the CPU each one was received or queued on), and the hooks run
//! in parallel on every CPU. Without mutual exclusion, the second program reads the flow's
//! state before the first has written its new position: it takes its own segment for one
//! after a gap, opens a hole, and the record walk loses sync. Seen live: about one run in
//! fifteen of the skb-mode live test lost 78 to 7,218 bytes of a flow to `unsynced`; a build
//! that counted overlapping walks saw one in the single failing run of 30, none in the rest.
//!
//! `FlowState::lock` is a spin lock: compare-and-exchange from 0 to `FLOW_LOCK_HELD`,
//! exchange back to 0. Both are fully ordered BPF atomics, so everything the holder wrote is
//! seen by the next holder (the kernel has both since 5.12). 64-bit: LLVM emits those for
//! the generic target CPU these programs are built for, the 32-bit ones only from v3; and
//! `core` has no atomic types for the BPF target, hence the intrinsics. A program holds at
//! most one flow's lock, and the hooks run with bottom halves disabled, so a program never
//! waits for a holder on its own CPU and no two wait for each other in a cycle.

use core::intrinsics::{atomic_cxchg, atomic_xchg, AtomicOrdering::SeqCst};

use aya_ebpf::cty::c_void;
use echo_common::{FlowState, FLOW_LOCK_HELD};

use crate::parse::run_loop;

/// Tries `lock_flow` makes while another program holds the flow, one per `bpf_loop` step:
/// ~8.5 ns each on a line no one else writes (65,536 took 0.56 ms in a test run on a held
/// flow, `tests/flow_lock.rs`), more while the holder writes it, so at least ~2.2 ms. That
/// is above the longest walk a program can take, estimated at ~1.3 ms: a resync scan over a
/// whole 64 KiB super-packet (`tls_records::MAX_RESYNC_SCAN` offsets, each a header read of
/// ~20 ns). A holder runs with bottom halves disabled and cannot be preempted; the bound
/// only matters on kernels where it can be (PREEMPT_RT), and there the waiter gives up
/// rather than spins on.
const FLOW_LOCK_SPINS: u32 = 1 << 18;

/// One attempt: a plain read first, so that a waiter does not take the line from the holder
/// at every step, then the exchange.
#[inline(always)]
fn try_lock(lock: *mut u64) -> bool {
    // SAFETY: `lock` points into a valid flow entry (map value, 8-aligned: echo-common).
    unsafe { core::ptr::read_volatile(lock) == 0 && atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(lock, 0, FLOW_LOCK_HELD).1 }
}

/// `lock_flow`'s spin, handed to `spin_step` by `bpf_loop`.
#[repr(C)]
struct SpinCtx {
    lock: *mut u64,
    won: u64,
}

extern "C" fn spin_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the SpinCtx given by `lock_flow`.
    let c = unsafe { &mut *(ctx as *mut SpinCtx) };
    if try_lock(c.lock) {
        c.won = 1;
        return 1;
    }
    0
}

/// Takes `f`'s lock, waiting up to `FLOW_LOCK_SPINS` tries for its holder; false when it
/// could not (the caller must then leave the flow alone).
#[inline(always)]
pub fn lock_flow(f: *mut FlowState) -> bool {
    // SAFETY: a valid map value pointer; only its address is taken.
    let lock = unsafe { &raw mut (*f).lock };
    if try_lock(lock) {
        return true;
    }
    let mut c = SpinCtx { lock, won: 0 };
    // SAFETY: `spin_step` reads its context as a SpinCtx.
    unsafe { run_loop(FLOW_LOCK_SPINS, spin_step, &mut c, |c| c.won != 0) }
}

/// Releases the lock `lock_flow` took. Every write to the flow must come before this.
#[inline(always)]
pub fn unlock_flow(f: *mut FlowState) {
    // SAFETY: as in `lock_flow`.
    unsafe { atomic_xchg::<u64, { SeqCst }>(&raw mut (*f).lock, 0) };
}
