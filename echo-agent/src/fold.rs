//! Folding the programs' pending destination counts into `DEST_STATS` before user space
//! reads it. Each CPU keeps the counts of its last destination per direction in
//! `PENDING_DESTS` and folds them into `DEST_STATS` only when its frames move to another
//! destination (or after a second), which saves a hash lookup on most frames
//! (`echo-ebpf/src/accounting.rs`, `touch`). So that a read is exact, `echo_fold` (an XDP
//! program that only folds) runs once on every CPU first: from this thread, pinned to that
//! CPU in turn, by `BPF_PROG_TEST_RUN`. The kernel runs XDP and TC test runs with bottom
//! halves disabled, as its live hooks run, so a fold cannot interleave with a frame on that
//! CPU. (`BPF_F_TEST_RUN_ON_CPU` is no substitute: it runs the program from an interrupt
//! on the other CPU, which can land in the middle of a frame.)

use std::{io, mem, os::fd::{AsRawFd, BorrowedFd}};

use thiserror::Error;

/// Why some CPUs' pending counts could not be folded: a read then lacks what their frames
/// added since their last fold (one destination per direction), until that CPU's next frame
/// for another destination, or a second later, folds it.
#[derive(Debug, Error)]
pub enum FoldError {
    #[error("the object has no loaded {} program", crate::loader::FOLD_PROGRAM)]
    NoProgram,
    #[error("cannot list the online CPUs")]
    OnlineCpus(#[source] io::Error),
    #[error("cannot fold pending counts on {failed} CPU(s), CPU {cpu} first (outside this process's CPU set?)")]
    Cpus { failed: u32, cpu: u32, source: io::Error },
}

/// `union bpf_attr`'s `test` member (`BPF_PROG_TEST_RUN`), up to `batch_size`. aya's
/// `TestRun` needs the program object, which the scrape thread does not have: it only
/// holds the program's fd (`MapSet`).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `echo_fold` (`prog`) once on the CPU this thread is on.
fn run_once(prog: BorrowedFd<'_>) -> io::Result<()> {
    // XDP test runs need at least an Ethernet header; the program reads nothing of it.
    let frame = [0u8; 64];
    let attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_in: frame.as_ptr() as u64,
        data_size_in: frame.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: a valid attr of the size passed, pointing at a live buffer.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &attr as *const TestRunAttr, mem::size_of::<TestRunAttr>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn cpu_set(cpus: impl IntoIterator<Item = usize>) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for c in cpus {
        // SAFETY: CPU_SET bounds-checks against the set's size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is this thread; a valid set of the size passed.
    if unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn affinity() -> io::Result<libc::cpu_set_t> {
    let mut set = cpu_set([]);
    // SAFETY: pid 0 is this thread; a valid set of the size passed.
    if unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// Moves the calling thread to `cpu`, and keeps it there.
pub fn pin_this_thread(cpu: u32) -> io::Result<()> {
    set_affinity(&cpu_set([cpu as usize]))
}

/// The CPUs the calling thread may run on.
pub fn this_thread_cpus() -> io::Result<Vec<u32>> {
    let set = affinity()?;
    // SAFETY: CPU_ISSET bounds-checks against the set's size.
    Ok((0..libc::CPU_SETSIZE as u32).filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) }).collect())
}

/// Runs `echo_fold` on every online CPU, from this thread pinned to each in turn, then
/// gives the thread its CPU set back. Tries every CPU; the error counts those that failed.
pub fn on_every_cpu(prog: BorrowedFd<'_>) -> Result<(), FoldError> {
    let cpus = aya::util::online_cpus().map_err(|(_, e)| FoldError::OnlineCpus(e))?;
    let saved = affinity();
    let mut err: Option<FoldError> = None;
    for cpu in cpus {
        let r = pin_this_thread(cpu).and_then(|()| run_once(prog));
        match (r, &mut err) {
            (Ok(()), _) => {}
            (Err(_), Some(FoldError::Cpus { failed, .. })) => *failed += 1,
            (Err(source), _) => err = Some(FoldError::Cpus { failed: 1, cpu, source }),
        }
    }
    if let Ok(saved) = &saved {
        // Our own set from a moment ago: cannot fail but for a CPU going offline meanwhile.
        let _ = set_affinity(saved);
    }
    err.map_or(Ok(()), Err)
}

impl FoldError {
    /// CPUs whose pending counts were not folded (all of them when none could be tried).
    pub fn unfolded_cpus(&self) -> u32 {
        match self {
            FoldError::Cpus { failed, .. } => *failed,
            _ => aya::util::online_cpus().map_or(1, |c| c.len() as u32),
        }
    }
}
