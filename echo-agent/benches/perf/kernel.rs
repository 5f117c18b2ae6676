//! Per-packet cost of the programs, with BPF_PROG_TEST_RUN, against an XDP program that only
//! passes the frame (the baseline), on the same frames in the same round.
//!
//! Stateless classes (another MAC, a pure ACK) run one frame `packets` times (the kernel
//! reports whole nanoseconds per run; a call's wall time is no finer measure: over 100,000
//! repeats it came to ~150 ns a run above the kernel's figure, ~15 ms per call). TLS
//! segments cannot be repeated (the second copy is a retransmission, counted as such and
//! skipped), so each of those runs `packets` distinct segments of one flow once each, and
//! sums the kernel-measured durations; the baseline is measured the same way. Baseline and
//! ours alternate within a round (a segment each, or a call of `packets / CHUNKS` repeats
//! each), so that the ratio compares them under the same noise: on these shared machines a
//! round's figures drift by 2x.

use std::{fmt::Write as _, sync::Arc};

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use echo_agent::{
    clock::Clock,
    device::Mac,
    events::{self, Rings},
    loader::{Programs, BASELINE_PROGRAM},
};
use echo_common::FLOW_TABLE_ENTRIES;
use xtask::packets::{tls_stream, Ip, TcpFrame, ACK, DEVICE_MAC, PSH, SYN};

use crate::{fmt3, goal, spread, Scale};

const APP: u8 = 23;
const ISN: u32 = 1_000;

/// A flow's segments: a template frame whose sequence number and payload are patched.
struct Segments {
    frame: Vec<u8>,
    seq_at: usize,
    payload_at: usize,
    /// The payload stream is periodic: segment i carries stream[(i·len) % period ..][..len].
    stream: Arc<Vec<u8>>,
    period: usize,
    len: usize,
    next: u64,
}

impl Segments {
    fn new(shape: impl Fn(&mut TcpFrame), stream: Arc<Vec<u8>>, period: usize, len: usize) -> (Vec<u8>, Self) {
        let mut f = TcpFrame::upload_v4(ISN, SYN, Vec::new());
        shape(&mut f);
        let syn = f.build();
        f.flags = ACK | PSH;
        f.payload = stream[..len].to_vec();
        f.seq = 0;
        let a = f.build();
        f.seq = 0x0102_0304;
        let b = f.build();
        let seq_at = (0..a.len()).find(|&i| a[i] != b[i]).expect("the sequence number differs");
        let payload_at = a.len() - len;
        (syn, Segments { frame: a, seq_at, payload_at, stream, period, len, next: 0 })
    }

    fn next(&mut self) -> &[u8] {
        let seq = ISN.wrapping_add(1).wrapping_add((self.next * self.len as u64) as u32);
        let from = (self.next as usize * self.len) % self.period;
        self.frame[self.seq_at..self.seq_at + 4].copy_from_slice(&seq.to_be_bytes());
        self.frame[self.payload_at..].copy_from_slice(&self.stream[from..from + self.len]);
        self.next += 1;
        &self.frame
    }
}

/// A stream of `records` app-data records, repeated so any window of `len` bytes exists.
fn periodic(records: &[(u8, usize)], len: usize) -> (Arc<Vec<u8>>, usize) {
    let one = tls_stream(records);
    let period = one.len();
    let stream: Vec<u8> = one.iter().copied().cycle().take(period * (len / period + 2)).collect();
    (Arc::new(stream), period)
}

/// Runs `frame` `repeat` times; returns the kernel's duration per run, in whole nanoseconds.
fn run_once(p: &Xdp, frame: &[u8], repeat: u32) -> u64 {
    let r = p.test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() }).expect("test_run");
    r.duration.as_nanos() as u64
}

/// Segments between two drains of the event ring buffer: their events (48 B each with the
/// ring's header) fill less than the quarter of `EVENTS` past which the programs wake the
/// reader, as the agent's reader keeps it live. Without draining, the ring is full after
/// 21,845 events and every later one takes the cheaper "ring full, count a drop" path.
const DRAIN_EVERY: u64 = 4_096;

/// Runs one segment, draining the events ring every `DRAIN_EVERY` runs (outside the timed
/// run, which the kernel times by itself).
fn run_segment(p: &Xdp, frame: &[u8], rings: &mut Rings, i: u64) -> u64 {
    if i.is_multiple_of(DRAIN_EVERY) {
        events::drain_all(rings, |_| ());
    }
    run_once(p, frame, 1)
}

/// Mean ns per packet of `n` distinct segments through the baseline and through ours, one
/// of each in turn, so that both meet the same moments of a noisy machine. Ours take the
/// flows of `segs` in turn.
fn distinct(base: &Xdp, base_seg: &mut Segments, ours: &Xdp, segs: &mut [Segments], rings: &mut Rings, n: u64) -> (f64, f64) {
    let (mut b, mut o) = (0u64, 0u64);
    for i in 0..n {
        b += run_once(base, base_seg.next(), 1);
        let seg = &mut segs[(i % segs.len() as u64) as usize];
        o += run_segment(ours, seg.next(), rings, i);
    }
    (b as f64 / n as f64, o as f64 / n as f64)
}

/// Calls per round of a repeated frame, alternating the baseline and ours, for the same
/// reason. Each call takes ~15 ms of wall time beyond the runs it times, so few.
const CHUNKS: u32 = 20;

/// Mean ns per packet of `repeat` runs of `frame` through the baseline and through ours, in
/// `CHUNKS` alternating calls each.
fn repeated(base: &Xdp, ours: &Xdp, frame: &[u8], repeat: u32) -> (f64, f64) {
    let per_call = repeat / CHUNKS;
    let (mut b, mut o) = (0u64, 0u64);
    for _ in 0..CHUNKS {
        b += run_once(base, frame, per_call);
        o += run_once(ours, frame, per_call);
    }
    (b as f64 / CHUNKS as f64, o as f64 / CHUNKS as f64)
}

/// One figure's rounds: ours, the baseline's, and their ratio, ns per packet.
struct Rounds {
    ours: Vec<f64>,
    bases: Vec<f64>,
    ratios: Vec<f64>,
}

/// Runs `one` (which returns the baseline's and our ns per packet) `n` times.
fn rounds(n: usize, mut one: impl FnMut() -> (f64, f64)) -> Rounds {
    let mut r = Rounds { ours: Vec::new(), bases: Vec::new(), ratios: Vec::new() };
    for _ in 0..n {
        let (b, o) = one();
        r.bases.push(b);
        r.ours.push(o);
        r.ratios.push(o / b);
    }
    r
}

struct Class {
    name: &'static str,
    shape: fn(&mut TcpFrame),
    records: Vec<(u8, usize)>,
    len: usize,
}

fn plain(_: &mut TcpFrame) {}

pub fn run(scale: Scale) -> Result<String> {
    let mut progs = Programs::load(&[], Clock::Monotonic)?;
    progs.set_devices(&[Mac(DEVICE_MAC)])?;
    let mut rings = progs.rings()?;
    let baseline: &mut Xdp = progs.ebpf.program_mut(BASELINE_PROGRAM).expect("baseline program").try_into()?;
    baseline.load()?;
    fn base(progs: &Programs) -> &Xdp {
        progs.ebpf.program(BASELINE_PROGRAM).expect("loaded").try_into().expect("XDP")
    }
    let mut out = String::from("## Kernel: per-packet cost (BPF_PROG_TEST_RUN)\n\n");
    // With markers the verifier also follows the marker check, which it drops without them.
    let marker: echo_agent::markers::MarkerSpec = "192.0.2.1=command_start".parse()?;
    let with_markers = Programs::load(&[marker.key()], Clock::Monotonic)?;
    // Replay's programs take every record step through bpf_loop: less to verify.
    let replay = Programs::load(&[], Clock::Capture)?;
    let _ = writeln!(
        out,
        "Verifier: {} instructions processed for echo_xdp, {} for echo_tc (loaded with a marker address: {} and {}; loaded for replay: {} and {}). The fixtures run without markers.\n",
        progs.xdp_verified_insns().unwrap_or(0),
        progs.tc_verified_insns().unwrap_or(0),
        with_markers.xdp_verified_insns().unwrap_or(0),
        with_markers.tc_verified_insns().unwrap_or(0),
        replay.xdp_verified_insns().unwrap_or(0),
        replay.tc_verified_insns().unwrap_or(0)
    );
    drop((with_markers, replay));
    let _ = writeln!(out, "| fixture | ns/packet | baseline ns/packet | ratio to baseline |\n|---|---|---|---|");

    // Stateless: one frame, repeated.
    let repeat = scale.packets as u32;
    let mut other = TcpFrame::upload_v4(ISN, ACK | PSH, tls_stream(&[(APP, 1395)]));
    other.src_mac = [0x02, 0xaa, 0, 0, 0, 9];
    let ack = TcpFrame::upload_v4(ISN + 1, ACK, Vec::new());
    let mut ratios_other = Vec::new();
    let only = std::env::var(crate::FIXTURE_VAR).ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    for (name, frame) in [("another MAC (not monitored)", other.build()), ("device: pure ACK", ack.build())] {
        if !wanted(name) {
            continue;
        }
        let Rounds { ours, bases, ratios } = rounds(scale.rounds, || repeated(base(&progs), progs.xdp(), &frame, repeat));
        if name.starts_with("another") {
            ratios_other = ratios.clone();
        }
        let _ = writeln!(out, "| {name} (repeat {repeat}) | {} | {} | {} |", fmt3(spread(ours), 1), fmt3(spread(bases), 1), fmt3(spread(ratios), 2));
    }

    // Stateful: distinct segments of one flow per class.
    let classes = [
        Class { name: "TLS segment, 1 record", shape: plain, records: vec![(APP, 1395)], len: 1400 },
        Class { name: "TLS segment, 4 records", shape: plain, records: vec![(APP, 345); 4], len: 1400 },
        Class { name: "TLS segment, 60 records", shape: plain, records: vec![(APP, 18); 60], len: 1380 },
        Class { name: "records across segments (headers split)", shape: plain, records: vec![(APP, 697)], len: 1400 },
        Class { name: "inside 16 KiB records (bulk upload)", shape: plain, records: vec![(APP, 16_384)], len: 1400 },
        Class {
            name: "IPv6 + hop-by-hop + destination options, 1 record",
            shape: |f| f.ip = Ip::V6 { src: [0xfd, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], dst: [0xfd, 0x77, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10], ext: vec![(0, vec![1, 4, 0, 0, 0, 0]), (60, vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])] },
            records: vec![(APP, 1395)],
            len: 1400,
        },
        Class { name: "VLAN-tagged, 1 record", shape: |f| f.vlans = vec![(0x8100, 7)], records: vec![(APP, 1395)], len: 1400 },
    ];
    let mut one_record_ratios = Vec::new();
    for (k, c) in classes.iter().enumerate() {
        if !wanted(c.name) {
            continue;
        }
        let (stream, period) = periodic(&c.records, c.len);
        let port_shape = |f: &mut TcpFrame| {
            (c.shape)(f);
            f.sport = 41_000 + k as u16;
        };
        let (syn, mut seg) = Segments::new(port_shape, stream.clone(), period, c.len);
        run_once(progs.xdp(), &syn, 1);
        let (_, mut base_seg) = Segments::new(port_shape, stream, period, c.len);
        let Rounds { ours, bases, ratios } =
            rounds(scale.rounds, || distinct(base(&progs), &mut base_seg, progs.xdp(), std::slice::from_mut(&mut seg), &mut rings, scale.packets));
        if k == 0 {
            one_record_ratios = ratios.clone();
        }
        let _ = writeln!(out, "| {} ({} distinct segments) | {} | {} | {} |", c.name, scale.packets, fmt3(spread(ours), 1), fmt3(spread(bases), 1), fmt3(spread(ratios), 2));
    }
    let counted = echo_agent::counters::read(&progs.ebpf)?;
    let unsynced: u64 = counted.dests.iter().map(|(_, s)| s.unsynced_bytes + s.retransmit_bytes).sum();
    let dropped = echo_agent::counters::per_cpu_sum(&progs.ebpf, echo_common::MAP_EVENT_DROPS, 0)?;
    if only.is_some() {
        let _ = writeln!(out, "\n(ECHO_BENCH_FIXTURE: only fixtures naming {only:?}; retransmitted + unsynced bytes: {unsynced}; events dropped: {dropped}.)\n");
        return Ok(out);
    }
    let (_, other_med, _) = spread(ratios_other);
    let (_, one_med, _) = spread(one_record_ratios);
    let _ = writeln!(
        out,
        "\nGoals: frames of other MACs ≤ 1.2× baseline: median {other_med:.2}×, {}; a one-record TLS segment ≤ 2.5× baseline: median {one_med:.2}×, {}. (Retransmitted + unsynced bytes over all fixtures: {unsynced}, so every segment took the counting path; events dropped: {dropped}, so every app-data event was written to a live ring.)\n",
        goal(other_med <= 1.2),
        goal(one_med <= 2.5)
    );
    out.push_str(&scaling(&progs, base(&progs), &mut rings, scale)?);
    Ok(out)
}

/// Cost of a one-record segment with many flows in the table (LRU, `FLOW_TABLE_ENTRIES`),
/// alternating with the baseline as `distinct` does, in rounds. Segments go round robin over
/// the most recently opened `active` flows (still in the table); the others only occupy it.
/// Rows with the same active flows and more in the table show the table's size alone; rows
/// with more active flows, the working set's (what the caches must hold).
fn scaling(progs: &Programs, base: &Xdp, rings: &mut Rings, scale: Scale) -> Result<String> {
    let mut out = String::from("### Per-packet cost vs flows in the table and active flows\n\nOne-record segments, round robin over the active flows (the most recently opened), alternating with the baseline segment by segment.\n\n| flows in the table | active flows | destinations | ns/packet | baseline ns/packet | ratio to baseline |\n|---|---|---|---|---|---|\n");
    let rows: &[(u32, u32)] = if scale.quick {
        &[(1, 1), (1_000, 1_000), (100_000, 1_000), (100_000, 20_000)]
    } else {
        &[(1, 1), (1_000, 1_000), (100_000, 1_000), (1_000_000, 1_000), (100_000, 20_000), (1_000_000, 20_000)]
    };
    let mut medians = Vec::new();
    for (k, &(flows, active)) in rows.iter().enumerate() {
        let dests = flows.min(4_096);
        let (stream, period) = periodic(&[(APP, 1395)], 1400);
        // Each flow: its own source port and address pair; distinct from the other rows.
        let shape_of = |i: u32| {
            move |f: &mut TcpFrame| {
                f.sport = 1024 + (i % 60_000) as u16;
                f.ip = Ip::V4 { src: [10, 100 + k as u8, (i / 60_000) as u8, 2], dst: [10, 200, ((i % dests) >> 8) as u8, (i % dests) as u8], options: Vec::new() };
            }
        };
        let mut segs: Vec<Segments> = Vec::with_capacity(active as usize);
        for i in 0..flows {
            let (syn, seg) = Segments::new(shape_of(i), stream.clone(), period, 1400);
            run_once(progs.xdp(), &syn, 1);
            if i >= flows - active {
                segs.push(seg);
            }
        }
        let (_, mut base_seg) = Segments::new(plain, stream, period, 1400);
        let n = scale.packets.min(200_000);
        let Rounds { ours, bases, ratios } = rounds(scale.rounds, || distinct(base, &mut base_seg, progs.xdp(), &mut segs, rings, n));
        medians.push(spread(ratios.clone()).1);
        let _ = writeln!(out, "| {flows} | {active} | {dests} | {} | {} | {} |", fmt3(spread(ours), 1), fmt3(spread(bases), 1), fmt3(spread(ratios), 2));
    }
    let (&(big, _), &(_, many)) = (rows.iter().rfind(|r| r.1 == 1_000).expect("rows"), rows.last().expect("rows"));
    let at = |row: (u32, u32)| medians[rows.iter().position(|&r| r == row).expect("row")];
    let _ = writeln!(
        out,
        "\nMedian ratios relative to each other: {big} flows in the table over 1000, both with 1000 active: {:.2}; {many} active flows over 1000, both with {big} in the table: {:.2}. Beyond {FLOW_TABLE_ENTRIES} flows the LRU evicts the least recently used; a segment of an evicted flow is picked up mid-stream and resynchronised (counted unsynced until the next record header).\n",
        at((big, 1_000)) / at((1_000, 1_000)),
        at((big, many)) / at((big, 1_000)),
    );
    Ok(out)
}
