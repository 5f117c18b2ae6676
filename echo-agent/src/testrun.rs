//! Runs frames through the programs with BPF_PROG_TEST_RUN: one frame (`run_one`), or a
//! whole capture on several threads (`run_capture`), for `replay`, the fixtures and the
//! benchmarks.
//!
//! # Threads
//!
//! A frame costs one syscall and most of its time is the kernel's, so a capture replays on
//! one thread per core. Frames are dealt out by flow (`Dealer`): every frame of a TCP
//! connection goes to one thread, in capture order, which is all the record walker needs.
//! Everything else the programs keep is per CPU (counters) or per flow, and each frame
//! carries its own capture time (`echo_common::CLOCK_CAPTURE`), so threads share no state
//! but the ring buffers, drained under a lock after every run. What they sent is put back in
//! capture-time order at the end.

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::Path,
    sync::{mpsc, Mutex},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use echo_common::{CAPTURE_TIME_META_LEN, SKB_CB_OFF};

use crate::{
    capture,
    clock::Clock,
    device::Mac,
    events::{self, Item},
    gso,
    loader::Programs,
};

/// Smallest frame XDP test_run accepts (an Ethernet header); shorter ones are counted apart.
pub const MIN_FRAME: usize = 14;

/// TC egress's verdict: "no opinion" (TC_ACT_UNSPEC, -1), the frame goes on.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

/// BPF_PROG_TEST_RUN refuses an skb whose EtherType promises an IP header the frame does not
/// hold (the kernel's own rule for building the test skb).
pub fn tc_test_run_accepts(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.len() >= 14 + 20,
        Some([0x86, 0xdd]) => frame.len() >= 14 + 40,
        Some(_) => true,
        None => false,
    }
}

thread_local! {
    /// An XDP frame with its capture time as metadata before it: built per run, reused.
    static STAMPED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One frame through the program that would see it live; returns its verdict. `ts_ns` is
/// the frame's capture time, which the programs read as "now" when loaded with
/// `Clock::Capture`.
pub fn run_one(progs: &Programs, frame: &[u8], ts_ns: u64, devices: &[Mac]) -> Result<u32> {
    let to_device = frame.len() >= 6 && devices.iter().any(|m| m.0 == frame[..6]);
    let from_device = frame.len() >= 12 && devices.iter().any(|m| m.0 == frame[6..12]);
    let r = if to_device && !from_device {
        if !tc_test_run_accepts(frame) {
            // The stack never transmits such a frame, so TC egress never sees one.
            return Ok(TC_ACT_UNSPEC);
        }
        // struct __sk_buff up to cb[1]: zeros, but the time in cb[0] (low) and cb[1] (high).
        let mut skb = [0u8; SKB_CB_OFF + 8];
        skb[SKB_CB_OFF..].copy_from_slice(&ts_ns.to_le_bytes());
        progs.tc().test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&skb), ..Default::default() })
    } else {
        STAMPED.with_borrow_mut(|buf| {
            buf.clear();
            buf.extend_from_slice(&ts_ns.to_le_bytes());
            buf.extend_from_slice(frame);
            // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex }: the frame starts after the metadata.
            let mut md = [0u8; 6 * 4];
            md[..4].copy_from_slice(&(CAPTURE_TIME_META_LEN as u32).to_ne_bytes());
            md[4..8].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
            progs.xdp().test_run(TestRunOptions { data_in: Some(buf), ctx_in: Some(&md), ..Default::default() })
        })
    };
    let r = r.with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
    Ok(r.return_value)
}

/// What a capture's run produced.
pub struct Run {
    pub frames: u64,
    /// Frames shorter than an Ethernet header, not run.
    pub short_frames: u64,
    /// What the programs sent, in capture-time order.
    pub items: Vec<Item>,
}

/// Most replay threads: past the cores there is nothing to gain.
const MAX_THREADS: usize = 8;
/// Frames handed to a thread at once, and batches queued per thread: a few MiB in flight.
const BATCH_FRAMES: usize = 256;
const BATCHES_QUEUED: usize = 4;

/// Frames for one thread: capture times and the frames' bytes, end to end.
#[derive(Default)]
struct Batch {
    ts: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl Batch {
    fn push(&mut self, ts: u64, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.ts.push(ts);
        self.ends.push(self.bytes.len());
    }

    fn frames(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        self.ts.iter().zip(starts.zip(&self.ends)).map(|(&ts, (s, &e))| (ts, &self.bytes[s..e]))
    }
}

/// Runs every frame of `path` (cut into wire segments, see `gso`) through the program that
/// sees it live (XDP for frames from a device and any other frame arriving on the interface,
/// TC egress for frames to a device), on one thread per core.
pub fn run_capture(progs: &mut Programs, path: &Path, devices: &[Mac]) -> Result<Run> {
    // Before anything is taken out of `progs`, so that a refused call leaves them whole.
    if progs.clock() != Clock::Capture {
        bail!("replaying a capture needs the programs loaded with the capture's clock");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let shared = Mutex::new((progs.rings()?, Vec::new()));
    let progs_ref: &Programs = progs;
    let counted = std::thread::scope(|s| -> Result<(u64, u64)> {
        let mut queues = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<Batch>(BATCHES_QUEUED);
            queues.push(tx);
            let shared = &shared;
            workers.push(s.spawn(move || -> Result<()> {
                for batch in rx {
                    for (ts, frame) in batch.frames() {
                        let mut failure = Ok(());
                        gso::for_each_segment(frame, |seg| {
                            if failure.is_ok() {
                                failure = run_one(progs_ref, seg, ts, devices).map(drop);
                            }
                            // Drained after every run, so the ring buffers never fill.
                            let (rings, items) = &mut *shared.lock().expect("no thread panics holding it");
                            events::drain_all(rings, |item| items.push(item));
                        });
                        failure?;
                    }
                }
                Ok(())
            }));
        }
        let mut batches: Vec<Batch> = (0..threads).map(|_| Batch::default()).collect();
        let mut dealer = Dealer::new(threads);
        let mut short = 0u64;
        let mut stopped = false;
        let frames = capture::for_each_frame(path, |ts, frame| {
            if stopped {
                return;
            }
            if frame.len() < MIN_FRAME {
                short += 1;
                return;
            }
            let t = dealer.thread_of(frame);
            batches[t].push(ts.max(1), frame);
            if batches[t].ts.len() == BATCH_FRAMES {
                // A closed queue means its thread failed: its error is reported below.
                stopped = queues[t].send(std::mem::take(&mut batches[t])).is_err();
            }
        });
        for (queue, batch) in queues.iter().zip(batches) {
            let _ = queue.send(batch);
        }
        drop(queues);
        for w in workers {
            w.join().map_err(|_| anyhow!("a replay thread panicked"))??;
        }
        Ok((frames?, short))
    });
    let (frames, short_frames) = counted?;
    let (_, mut items) = shared.into_inner().expect("no thread panics holding it");
    // Snippets before events of the same time, as one thread drains them (`drain_all`), and
    // events of one time by kind, so that no tie between threads depends on which ran first
    // (the sort is stable: one flow's events of one time keep their order).
    items.sort_by_key(|item| match item {
        Item::Snippet(s) => (s.ts_ns, 0),
        Item::Event(e) => (e.ts_ns, 1 + e.kind as u16),
    });
    Ok(Run { frames, short_frames, items })
}

/// Slots frames are hashed into before slots are dealt to threads.
const DEALER_SLOTS: usize = 4096;

/// Deals frames to threads by flow: the host pair, and the port pair of TCP and UDP, both in
/// either order, hashed into one of `DEALER_SLOTS` slots; a slot goes to the next thread in
/// turn the first time it is used, so a handful of flows spreads evenly. A TCP connection's
/// frames all land in one slot, unless only some of them carry IPv6 extension headers (then
/// their ports are not looked for) or are IP fragments after the first; the walker's state
/// needs only the segments that carry the TCP header in order.
struct Dealer {
    threads: usize,
    slots: Vec<Option<u8>>,
    next: usize,
}

impl Dealer {
    fn new(threads: usize) -> Self {
        Dealer { threads, slots: vec![None; DEALER_SLOTS], next: 0 }
    }

    fn thread_of(&mut self, frame: &[u8]) -> usize {
        let slot = (flow_hash(frame) % DEALER_SLOTS as u64) as usize;
        *self.slots[slot].get_or_insert_with(|| {
            self.next += 1;
            ((self.next - 1) % self.threads) as u8
        }) as usize
    }
}

/// The flow a frame belongs to, direction-blind; 0 for frames that are not IP.
fn flow_hash(f: &[u8]) -> u64 {
    let Some((proto, l3)) = gso::l3_start(f) else { return 0 };
    let (addrs, next, l4) = match proto {
        gso::ETH_P_IPV4 => {
            let ihl = (f.get(l3).map_or(0, |b| b & 0xf) as usize) * 4;
            let first_fragment = f.get(l3 + 6..l3 + 8).is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff == 0);
            (f.get(l3 + 12..l3 + 20), f.get(l3 + 9).copied().filter(|_| first_fragment), l3 + ihl)
        }
        gso::ETH_P_IPV6 => (f.get(l3 + 8..l3 + 40), f.get(l3 + 6).copied(), l3 + 40),
        _ => return 0,
    };
    let Some(addrs) = addrs else { return 0 };
    let (a, b) = addrs.split_at(addrs.len() / 2);
    let ports = match next {
        Some(6 | 17) => f.get(l4..l4 + 4).map(|p| (&p[..2], &p[2..])),
        _ => None,
    };
    let mut h = DefaultHasher::new();
    match ports {
        Some((pa, pb)) => ((a, pa).min((b, pb)), (a, pa).max((b, pb))).hash(&mut h),
        None => (a.min(b), a.max(b)).hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_of_a_flow_go_to_one_thread_and_flows_spread() {
        let mut d = Dealer::new(2);
        let up = |i: u16| frame([10, 0, 0, 2], [10, 0, 0, 1], 40_000 + i, 443);
        let down = |i: u16| frame([10, 0, 0, 1], [10, 0, 0, 2], 443, 40_000 + i);
        let threads: Vec<usize> = (0..4).map(|i| d.thread_of(&up(i))).collect();
        for i in 0..4 {
            assert_eq!(d.thread_of(&down(i)), threads[i as usize], "flow {i}");
        }
        assert_eq!(threads, [0, 1, 0, 1], "slots are dealt in turn");
        assert_ne!(flow_hash(&up(0)), flow_hash(&up(1)));
        assert_eq!(flow_hash(&[0u8; 10]), 0);
    }
}
