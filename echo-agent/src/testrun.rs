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
//! but the ring buffers, drained under a lock every `DRAIN_EVERY` runs. What they sent is put
//! back in capture-time order at the end.

use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::Path,
    sync::{mpsc, Condvar, Mutex, OnceLock},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use echo_common::{Event, Snippet, CAPTURE_TIME_META_LEN, EVENTS_BYTES, SKB_CB_OFF, SNIPPETS_BYTES};

use crate::{
    capture,
    clock::Clock,
    device::Mac,
    events::{self, Item},
    gso,
    loader::{self, Programs},
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

/// The program that sees a frame live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
    /// A frame to a device that TC egress never sees: the stack would not transmit it.
    Neither,
}

/// Frames from a device and any other frame arriving on the interface go to XDP, frames to
/// a device to TC egress.
fn hook_of(frame: &[u8], devices: &[Mac]) -> Hook {
    let to_device = frame.len() >= 6 && devices.iter().any(|m| m.0 == frame[..6]);
    let from_device = frame.len() >= 12 && devices.iter().any(|m| m.0 == frame[6..12]);
    match (to_device && !from_device, tc_test_run_accepts(frame)) {
        (false, _) => Hook::Xdp,
        (true, true) => Hook::Tc,
        (true, false) => Hook::Neither,
    }
}

/// One frame through the program that would see it live; returns its verdict. `ts_ns` is
/// the frame's capture time, which the programs read as "now" when loaded with
/// `Clock::Capture`.
pub fn run_one(progs: &Programs, frame: &[u8], ts_ns: u64, devices: &[Mac]) -> Result<u32> {
    match hook_of(frame, devices) {
        Hook::Xdp => run_xdp(progs.xdp(), frame, ts_ns),
        Hook::Tc => run_tc(progs.tc(), frame, ts_ns),
        Hook::Neither => Ok(TC_ACT_UNSPEC),
    }
}

fn run_tc(tc: &SchedClassifier, frame: &[u8], ts_ns: u64) -> Result<u32> {
    // struct __sk_buff up to cb[1]: zeros, but the time in cb[0] (low) and cb[1] (high).
    let mut skb = [0u8; SKB_CB_OFF + 8];
    skb[SKB_CB_OFF..].copy_from_slice(&ts_ns.to_le_bytes());
    let r = tc.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&skb), ..Default::default() });
    Ok(r.with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?.return_value)
}

fn run_xdp(xdp: &Xdp, frame: &[u8], ts_ns: u64) -> Result<u32> {
    let r = STAMPED.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(&ts_ns.to_le_bytes());
        buf.extend_from_slice(frame);
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the frame starts after the metadata.
        let mut md = [0u8; 6 * 4];
        md[..4].copy_from_slice(&(CAPTURE_TIME_META_LEN as u32).to_ne_bytes());
        md[4..8].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
        xdp.test_run(TestRunOptions { data_in: Some(buf), ctx_in: Some(&md), ..Default::default() })
    });
    Ok(r.with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?.return_value)
}

/// echo_xdp once loaded (`None`: its loading failed), for the replay threads, which run
/// frames through echo_tc before that and hold back the XDP ones.
struct XdpReady<'a> {
    value: OnceLock<Option<&'a Xdp>>,
    lock: Mutex<()>,
    set: Condvar,
}

impl<'a> XdpReady<'a> {
    fn new() -> Self {
        XdpReady { value: OnceLock::new(), lock: Mutex::new(()), set: Condvar::new() }
    }

    fn set(&self, xdp: Option<&'a Xdp>) {
        let _guard = self.lock.lock().expect("no thread panics holding it");
        let _ = self.value.set(xdp);
        self.set.notify_all();
    }

    fn get(&self) -> Option<Option<&'a Xdp>> {
        self.value.get().copied()
    }

    fn wait(&self) -> Result<&'a Xdp> {
        let mut guard = self.lock.lock().expect("no thread panics holding it");
        loop {
            if let Some(xdp) = self.get() {
                return xdp.ok_or_else(|| anyhow!("echo_xdp did not load"));
            }
            guard = self.set.wait(guard).expect("no thread panics holding it");
        }
    }
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
/// Runs a thread makes between drains of the ring buffers. A run sends at most one event
/// and one snippet, and any drain empties what every thread sent, so the rings hold at most
/// this many runs' worth per thread: they never fill (asserted below), and the lock is
/// taken once per 16 runs, not per run (~6% of a replay's samples).
const DRAIN_EVERY: usize = 16;
const _: () = {
    assert!(MAX_THREADS * DRAIN_EVERY * ring_record(size_of::<Snippet>()) <= SNIPPETS_BYTES as usize);
    assert!(MAX_THREADS * DRAIN_EVERY * ring_record(size_of::<Event>()) <= EVENTS_BYTES as usize);
};

/// A ring-buffer record's room: its value after an 8-byte header, rounded up to 8 bytes.
const fn ring_record(size: usize) -> usize {
    8 + size.div_ceil(8) * 8
}

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
///
/// Programs from `Programs::open` (maps only) are loaded here, both at once, and the
/// capture starts as soon as echo_tc is: echo_xdp takes twice as long to verify (90 against
/// 40 ms here), and the threads run the download frames meanwhile, holding back the upload
/// ones (each direction has its own flow and destination entries, so only each direction's
/// order matters; at most `MAX_HELD_BYTES` per thread, then it waits).
pub fn run_capture(progs: &mut Programs, path: &Path, devices: &[Mac]) -> Result<Run> {
    // Before anything is taken out of `progs`, so that a refused call leaves them whole.
    if progs.clock() != Clock::Capture {
        bail!("replaying a capture needs the programs loaded with the capture's clock");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
    let shared = Mutex::new((progs.rings()?, Vec::new()));
    let (xdp, tc) = progs.programs_mut();
    let xdp_ready = XdpReady::new();
    let counted = std::thread::scope(|s| -> Result<(u64, u64)> {
        let xdp_loading = if xdp.fd().is_ok() {
            xdp_ready.set(Some(xdp));
            None
        } else {
            let xdp_ready = &xdp_ready;
            Some(s.spawn(move || {
                let loaded = loader::load_xdp(xdp);
                xdp_ready.set(loaded.is_ok().then_some(&*xdp));
                loaded
            }))
        };
        if tc.fd().is_err() {
            if let Err(e) = loader::load_tc(tc) {
                // echo_xdp's failure first, if it failed too, as `Programs::load_programs`.
                if let Some(l) = xdp_loading {
                    l.join().expect("loading does not panic")?;
                }
                return Err(e.into());
            }
        }
        let tc: &SchedClassifier = tc;
        let mut queues = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<Batch>(BATCHES_QUEUED);
            queues.push(tx);
            let (shared, xdp_ready) = (&shared, &xdp_ready);
            workers.push(s.spawn(move || -> Result<()> {
                let mut worker = Worker::new(shared, xdp_ready, tc, MAX_HELD_BYTES);
                for batch in rx {
                    for (ts, frame) in batch.frames() {
                        let mut failure = Ok(());
                        gso::for_each_segment(frame, |seg| {
                            if failure.is_ok() {
                                failure = worker.run(seg, ts, hook_of(seg, devices));
                            }
                        });
                        failure?;
                    }
                }
                worker.finish()
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
        if let Some(l) = xdp_loading {
            l.join().expect("loading does not panic")?;
        }
        for w in workers {
            w.join().map_err(|_| anyhow!("a replay thread panicked"))??;
        }
        Ok((frames?, short))
    });
    let (frames, short_frames) = counted?;
    let (_, mut items) = shared.into_inner().expect("no thread panics holding it");
    // Snippets before events of the same time, as one thread drains them (`drain_all`), and
    // what one time sent by kind and direction, so that no tie depends on which thread ran
    // first, or on a thread's upload frames held back for echo_xdp (the sort is stable: one
    // flow's events of one time keep their order).
    items.sort_by_key(|item| match item {
        Item::Snippet(s) => (s.ts_ns, 0, s.kind),
        Item::Event(e) => (e.ts_ns, 1 + e.kind as u16, e.direction),
    });
    Ok(Run { frames, short_frames, items })
}

/// Most bytes of upload frames a replay thread holds back while echo_xdp is being verified.
const MAX_HELD_BYTES: usize = 16 << 20;

/// One replay thread's state.
struct Worker<'s, 'a> {
    shared: &'s Mutex<(events::Rings, Vec<Item>)>,
    xdp_ready: &'s XdpReady<'a>,
    tc: &'a SchedClassifier,
    /// Upload frames waiting for echo_xdp, in order.
    held: Batch,
    /// Most bytes `held` takes (`MAX_HELD_BYTES`); past them, the thread waits.
    max_held: usize,
    /// Runs since this thread last drained the ring buffers.
    undrained: usize,
    /// Whether the thread runs at `HELD_NICE`.
    niced: bool,
}

/// The niceness of replay threads while echo_xdp is being verified: its verification is the
/// start-up's critical path, and would otherwise share its core with them.
const HELD_NICE: i32 = 10;

/// Sets the calling thread's niceness; best effort (going back down needs CAP_SYS_NICE).
fn set_thread_nice(nice: i32) {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
}

impl<'s, 'a> Worker<'s, 'a> {
    fn new(shared: &'s Mutex<(events::Rings, Vec<Item>)>, xdp_ready: &'s XdpReady<'a>, tc: &'a SchedClassifier, max_held: usize) -> Self {
        let niced = xdp_ready.get().is_none();
        if niced {
            set_thread_nice(HELD_NICE);
        }
        Worker { shared, xdp_ready, tc, held: Batch::default(), max_held, undrained: 0, niced }
    }

    fn run(&mut self, frame: &[u8], ts: u64, hook: Hook) -> Result<()> {
        match hook {
            Hook::Tc => run_tc(self.tc, frame, ts)?,
            Hook::Xdp => match self.xdp_ready.get() {
                Some(xdp) => {
                    let xdp = xdp.ok_or_else(|| anyhow!("echo_xdp did not load"))?;
                    self.run_held(xdp)?;
                    run_xdp(xdp, frame, ts)?
                }
                None if self.held.bytes.len() + frame.len() <= self.max_held => {
                    self.held.push(ts, frame);
                    return Ok(());
                }
                None => {
                    let xdp = self.xdp_ready.wait()?;
                    self.run_held(xdp)?;
                    run_xdp(xdp, frame, ts)?
                }
            },
            Hook::Neither => return Ok(()),
        };
        self.ran();
        Ok(())
    }

    fn run_held(&mut self, xdp: &Xdp) -> Result<()> {
        if self.niced {
            set_thread_nice(0);
            self.niced = false;
        }
        if self.held.ts.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        for (ts, frame) in held.frames() {
            run_xdp(xdp, frame, ts)?;
            self.ran();
        }
        Ok(())
    }

    fn ran(&mut self) {
        self.undrained += 1;
        if self.undrained == DRAIN_EVERY {
            self.drain();
        }
    }

    fn drain(&mut self) {
        self.undrained = 0;
        let (rings, items) = &mut *self.shared.lock().expect("no thread panics holding it");
        events::drain_all(rings, |item| items.push(item));
    }

    /// Runs what is still held back, then drains.
    fn finish(mut self) -> Result<()> {
        if !self.held.ts.is_empty() {
            let xdp = self.xdp_ready.wait()?;
            self.run_held(xdp)?;
        }
        self.drain();
        Ok(())
    }
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
    use std::time::Duration;

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

    /// Programs for replay with echo_tc loaded and echo_xdp not, as `run_capture` starts.
    fn tc_only() -> Programs {
        let mut progs = Programs::open(&[], Clock::Capture, crate::replay::FIRST_SIZES).expect("maps (root needed)");
        progs.set_devices(&[Mac(xtask::packets::DEVICE_MAC)]).unwrap();
        loader::load_tc(progs.programs_mut().1).unwrap();
        progs
    }

    /// The destination's (app-data bytes, records, unsynced bytes, packets).
    fn tcp_counts(progs: &Programs) -> (u64, u64, u64, u64) {
        let snap = crate::counters::read(&progs.ebpf).unwrap();
        let (_, s) = snap.dests.iter().find(|(k, _)| k.proto == 6).expect("the flow's destination");
        (s.tls_app_bytes, s.tls_app_records, s.unsynced_bytes, s.packets)
    }

    /// An upload frame that would take a thread past its held bytes waits for echo_xdp, then
    /// runs after the frames held before it: the flow counts as if nothing had waited (run
    /// first, the last segment would start the flow unsynced).
    #[test]
    fn an_upload_frame_past_the_held_bytes_waits_for_echo_xdp_and_runs_after_the_held_ones() {
        // A device's SYN and three segments, each one 100-byte app-data record.
        let frames = xtask::packets::one_record_upload(1_000, 3, 100);
        let (last, before) = frames.split_last().unwrap();
        let max_held: usize = before.iter().map(Vec::len).sum();
        let mut progs = tc_only();
        let shared = Mutex::new((progs.rings().unwrap(), Vec::new()));
        let (xdp, tc) = progs.programs_mut();
        let tc: &SchedClassifier = tc;
        let xdp_ready = XdpReady::new();
        let ((held_tx, held), (done_tx, done)) = (mpsc::channel(), mpsc::channel());
        std::thread::scope(|s| {
            let xdp_ready = &xdp_ready;
            let shared = &shared;
            s.spawn(move || {
                let mut worker = Worker::new(shared, xdp_ready, tc, max_held);
                for (i, f) in before.iter().enumerate() {
                    worker.run(f, 1 + i as u64, Hook::Xdp).unwrap();
                }
                held_tx.send(worker.held.ts.len()).unwrap();
                // Returns only once echo_xdp is set: the frame is not held too.
                let r = worker.run(last, 1 + before.len() as u64, Hook::Xdp);
                assert_eq!(worker.held.ts.len(), 0, "the held frames ran");
                done_tx.send(r.map_err(|e| e.to_string())).unwrap();
                worker.finish().unwrap();
            });
            assert_eq!(held.recv().unwrap(), before.len(), "every frame but the last held");
            assert_eq!(done.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout), "did not wait");
            loader::load_xdp(xdp).unwrap();
            xdp_ready.set(Some(&*xdp));
            assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
        });
        assert_eq!(tcp_counts(&progs), (300, 3, 0, 4));
        let (_, items) = shared.into_inner().unwrap();
        assert_eq!(items.len(), 3, "one event per segment");
    }

    /// When echo_xdp failed to load, a thread's upload frames fail (the held ones at its
    /// end, later ones at once) and its download frames still run.
    #[test]
    fn upload_frames_fail_once_echo_xdp_failed_to_load_and_download_frames_still_run() {
        use xtask::packets::{udp_v4, DEVICE_MAC, HOTSPOT_MAC};
        // A device's SYN and three segments, each one 100-byte app-data record.
        let frames = xtask::packets::one_record_upload(1_000, 3, 100);
        let mut progs = tc_only();
        let shared = Mutex::new((progs.rings().unwrap(), Vec::new()));
        let tc: &SchedClassifier = progs.programs_mut().1;
        let xdp_ready = XdpReady::new();
        let download = udp_v4((HOTSPOT_MAC, DEVICE_MAC), [10, 77, 2, 10], [10, 77, 0, 2], (5_000, 40_000), &[0; 10]);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut holding = Worker::new(&shared, &xdp_ready, tc, MAX_HELD_BYTES);
                holding.run(&frames[0], 1, Hook::Xdp).unwrap();
                xdp_ready.set(None);
                assert_eq!(holding.run(&download, 2, Hook::Tc).map_err(|e| e.to_string()), Ok(()));
                assert_eq!(holding.finish().map_err(|e| e.to_string()), Err("echo_xdp did not load".to_string()));
                let mut late = Worker::new(&shared, &xdp_ready, tc, MAX_HELD_BYTES);
                assert_eq!(late.run(&frames[1], 3, Hook::Xdp).map_err(|e| e.to_string()), Err("echo_xdp did not load".to_string()));
            });
        });
        let snap = crate::counters::read(&progs.ebpf).unwrap();
        let directions: Vec<(u8, u64)> = snap.dests.iter().map(|(k, s)| (k.direction, s.packets)).collect();
        assert_eq!(directions, [(echo_common::DIR_DOWNLOAD, 1)], "only the download frame ran");
    }
}
