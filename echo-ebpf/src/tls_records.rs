//! TLS record walking over the TCP segments of one flow direction.
//!
//! # State machine
//!
//! Each flow direction keeps a [`FlowState`]: `seq_high` (one past the highest payload byte
//! seen), a *main* [`Walker`] positioned at `seq_high`, and at most one *hole*: a gap
//! `[hole_start, hole_end)` left when a later segment arrived first, with its own walker
//! positioned at `hole_start`. A walker knows the sequence number of the next record header
//! (`next_hdr`), the type of the record whose payload runs up to it (`cur_type`), and up to
//! four bytes of a header split across segments (`hdr_buf`, `hdr_have`).
//!
//! A segment `[seq, end)` is cut into up to three parts:
//!
//! 1. Bytes before `seq_high` (`fill_old`). Those inside the hole are new: when they continue
//!    the hole exactly at `hole_start` the hole walker counts them exactly, else they are
//!    counted `unsynced`. All others were seen before: `retransmit_bytes`, never counted twice.
//! 2. A gap between `seq_high` and the segment (`open_gap`). With no hole open, the gap
//!    becomes the hole and the hole walker is a copy of the main walker. If the next header
//!    lies at or beyond the segment (the gap sits inside one record's payload, the usual case
//!    for bulk transfers) the main walker continues exactly; otherwise it loses sync
//!    (`FLOW_UNSYNC_AFTER_HOLE`). With a hole already open, a second gap is not remembered:
//!    the main walker goes on when it can, and the gap's bytes will count as retransmitted
//!    when they arrive (the one case where record bytes are knowingly missed).
//! 3. New bytes from `max(seq, seq_high)` to `end`. A synced main walker walks them
//!    (`walk`); an unsynced one first scans for a plausible record header (`resync`: type
//!    20–23, version 0x0301–0x0304, length ≤ 2^14+256, confirmed by the following header when
//!    that lies in the same segment; the scan covers a whole 64 KiB GSO super-packet) and
//!    counts the bytes before it as `unsynced_bytes`.
//!
//! When a hole is filled completely (`close_hole`) and the main walker had lost sync at its
//! end, the hole walker now knows where the next header really is: if no header fell inside
//! the bytes counted `unsynced` since, those bytes are moved to their record type and the main
//! walker takes the hole walker's position. So two swapped segments inside one record are
//! exact, and so are swapped segments whose first holds a header whenever the second does not.
//!
//! Programs on several CPUs may get segments of one flow at the same moment; each walks a
//! flow only while it holds the flow's lock (`crate::flow_lock`), so every segment sees the
//! state the last one left. A segment whose flow stays held past the lock's bound is not
//! walked: its bytes count as `unsynced_bytes` and the flow is left as it is.
//!
//! A flow seen from its SYN starts synced at `ISN + 1` with `FLOW_STREAM_START`; if its first
//! bytes are not a record header it is not TLS (`FLOW_NOT_TLS`) and only TCP counters are
//! kept. A flow first seen mid-stream (agent started during a connection) starts unsynced.

use echo_common::{
    seq_diff, seq_lt,
    tls::{
        plausible_header, CT_ALERT, CT_APPLICATION_DATA, CT_CHANGE_CIPHER_SPEC, CT_HANDSHAKE,
        HEADER_LEN, MAX_RECORD_LEN, MAX_RESYNC_RECORD_LEN,
    },
    DestStats, FlowState, Walker, FLOW_HAS_HOLE, FLOW_NOT_TLS, FLOW_STREAM_START,
    FLOW_UNSYNC_AFTER_HOLE,
};

use aya_ebpf::cty::c_void;

use crate::{
    accounting::replaying,
    parse::{run_loop, Packet, USUAL_PAYLOAD_OFF},
};

/// Steps one walk may take: one per record header plus one for the payload before the first.
/// The shortest AEAD record is 22 bytes (5 header, 1 inner type, 16 tag), so a 1460-byte
/// segment holds at most 66 records and a 64 KiB GSO super-packet (TC egress) 2,979. A
/// segment with more (possible only with bogus tiny records) loses sync after this many
/// steps and resyncs on a later segment.
pub const MAX_WALK_STEPS: u32 = 3072;

/// Steps of a walk taken in line, before `bpf_loop` takes the rest: a segment inside one
/// record's payload needs one, a segment holding one whole record from its start two (the
/// usual upload segments). `bpf_loop` costs its set-up plus an indirect call per step. Only
/// the main walker's walks: steps in line are verified once per call site and state that
/// reaches it (in both walkers' walks the verifier processed 259k instructions, in the main
/// walker's 150k, against 70k with none), and the hole walker's walks are rare. Programs
/// loaded for replay take none (see `walk_new`).
const INLINE_STEPS: u32 = 2;

/// Offsets tried by one resync scan: a whole 64 KiB GSO super-packet (TC egress sees those),
/// one offset per `bpf_loop` step. It only runs on a flow that lost sync (a gap spanning a
/// record header, or a flow picked up mid-stream), and `MAX_UNSYNCED_SCAN` stops a non-TLS
/// stream from being scanned forever.
pub const MAX_RESYNC_SCAN: u32 = 65_536;

/// Bytes a flow may be scanned without a plausible header before it is taken for not TLS
/// (and only its TCP counters kept): 1 MiB holds at least 60 records of any TLS stream.
pub const MAX_UNSYNCED_SCAN: u32 = 1 << 20;

/// Largest jump in sequence numbers still taken as the same stream: 64 MiB, above the
/// largest receive window Linux grants by default (`tcp_rmem` max 6 MiB, 32 MiB when tuned).
/// It also bounds every hole and every gap, so sequence comparisons never wrap.
pub const MAX_SEQ_JUMP: i32 = 1 << 26;

/// One TCP segment: sequence number of its first payload byte, payload length, and where
/// the payload starts in the packet.
pub struct Segment {
    pub seq: u32,
    pub len: u32,
    pub payload_off: usize,
}

impl Segment {
    #[inline(always)]
    fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }

    /// Packet offset of the payload byte with sequence number `pos`.
    #[inline(always)]
    fn off(&self, pos: u32) -> usize {
        self.payload_off + pos.wrapping_sub(self.seq) as usize
    }
}

/// Counts the bytes of one segment into a destination's counters and remembers what kind of
/// bytes it carried, for the packet class.
pub struct Tally<'a> {
    pub stats: &'a mut DestStats,
    pub new_app: bool,
    pub new_handshake: bool,
    pub retransmitted: u32,
}

/// `n` when `cond`, else 0, without a branch.
#[inline(always)]
fn when(cond: bool, n: u64) -> u64 {
    n & 0u64.wrapping_sub(cond as u64)
}

impl Tally<'_> {
    /// Adds `n` payload bytes of a record of `content_type` to its counter. Every counter gets
    /// an add (of 0 but one): a `match` choosing the field would be compiled into one add at
    /// a computed offset from the map value pointer, which the verifier refuses without
    /// CAP_PERFMON ("tried to add from different maps, paths or scalars").
    #[inline(always)]
    fn payload(&mut self, content_type: u8, n: u32) {
        let n = n as u64;
        let (app, handshake, ccs, alert) =
            (content_type == CT_APPLICATION_DATA, content_type == CT_HANDSHAKE, content_type == CT_CHANGE_CIPHER_SPEC, content_type == CT_ALERT);
        let s = &mut *self.stats;
        s.tls_app_bytes += when(app, n);
        s.handshake_bytes += when(handshake, n);
        s.ccs_bytes += when(ccs, n);
        s.alert_bytes += when(alert, n);
        s.unsynced_bytes += when(!(app || handshake || ccs || alert), n);
        self.new_app |= app;
        self.new_handshake |= handshake || ccs;
    }

    /// Counts a completed record header (branch-free, as `payload`).
    #[inline(always)]
    fn record(&mut self, content_type: u8) {
        self.stats.tls_app_records += when(content_type == CT_APPLICATION_DATA, 1);
        self.stats.handshake_records += when(content_type == CT_HANDSHAKE, 1);
    }

    #[inline(always)]
    fn unsynced(&mut self, n: u32) {
        self.stats.unsynced_bytes += n as u64;
    }

    #[inline(always)]
    fn retransmit(&mut self, n: u32) {
        self.stats.retransmit_bytes += n as u64;
        self.retransmitted += n;
    }
}

/// The low `bytes` bytes of a word set (`bytes` at most 8).
#[inline(always)]
fn low_bytes(bytes: u32) -> u64 {
    if bytes >= 8 { u64::MAX } else { (1u64 << (8 * bytes)) - 1 }
}

/// Completes the header at `w.next_hdr` from `w.hdr_buf` and the packet bytes at `off`.
/// `None` when the packet does not hold the rest of it. One load of the bytes still needed
/// (a length the verifier sees bounded, 1 to 5) and shifts, not a branch per split point:
/// branches inside the walk's loop body multiply the states the verifier explores. A whole
/// header at the start of a usual segment's payload (a record starting a segment, as small
/// records do) is read in place (`Packet::read_usual`), a helper call less (~20 ns); only in
/// a walk's `FIRST` step, since the branch adds states wherever it is verified. Its bytes
/// pass through `forget`, so that the states after either read converge: loading the
/// programs took 0.35 s without it, 0.28 s with it, 0.24 s with no in-place read (a
/// replay's start-up, measured at XDP).
#[inline(always)]
fn complete_header<P: Packet, const FIRST: bool>(w: &Walker, pkt: &P, off: usize) -> Option<[u8; 5]> {
    if FIRST && w.hdr_have == 0 {
        let h = pkt.read_usual::<[u8; 5], USUAL_PAYLOAD_OFF>(off)?;
        let [a, b, _] = crate::accounting::forget([u32::from_le_bytes([h[0], h[1], h[2], h[3]]), h[4] as u32, 0]);
        let a = a.to_le_bytes();
        return Some([a[0], a[1], a[2], a[3], b as u8]);
    }
    let have = (w.hdr_have as u32).min(HEADER_LEN - 1);
    let need = HEADER_LEN - have;
    let mut r = [0u8; 8];
    if !pkt.load_into(off, r.as_mut_ptr(), need) {
        return None;
    }
    let kept = u32::from_le_bytes(w.hdr_buf) as u64 & low_bytes(have);
    let b = (kept | (u64::from_le_bytes(r) & low_bytes(need)) << (8 * have)).to_le_bytes();
    Some([b[0], b[1], b[2], b[3], b[4]])
}

/// Why a walk stopped before the end of its bytes.
pub struct Lost {
    /// Sequence number of the implausible header (or of the first byte not walked).
    pub at: u32,
}

/// State of one walk, on the stack of the caller of `bpf_loop` and handed to `walk_step`.
/// Loops run through `bpf_loop` so that the verifier checks one step, not every iteration:
/// its scalars (positions) stay imprecise and the callback's states converge at once. So no
/// field may count steps: a count starts at a constant and stays one, each step's state
/// differs from the last, and the verifier walks the loop step by step. Without CAP_PERFMON
/// (kernel 6.18.44-fc-v1272) a count of headers here made it refuse both programs after ~950
/// steps ("the sequence of 8193 jumps is too complex"); whether a walk parsed a header is
/// told by the walker's `next_hdr` instead (see `walk_new`).
#[repr(C)]
struct WalkCtx<P: Packet> {
    pkt: P,
    w: *mut Walker,
    stats: *mut DestStats,
    seg_seq: u32,
    payload_off: u32,
    pos: u32,
    end: u32,
    /// 1: reached `end`; 2: lost sync at `pos`; 0: ran out of steps.
    outcome: u32,
    new_app: u8,
    new_handshake: u8,
    _pad: [u8; 2],
}

const WALK_RUNNING: u32 = 0;
const WALK_DONE: u32 = 1;
const WALK_LOST: u32 = 2;

/// Walks the bytes `[pos, end)` of `seg` with walker `w`, counting record payload bytes as
/// they pass and records as their headers complete. Returns where the walker lost sync, if
/// it did (it is then unsynced; the caller decides what the rest of the bytes are). The
/// first `INLINE` steps are taken in line (see `INLINE_STEPS`).
#[inline(always)]
fn walk<P: Packet, const INLINE: u32>(w: &mut Walker, pkt: &P, seg: &Segment, pos: u32, end: u32, t: &mut Tally) -> Result<(), Lost> {
    let (mut pos, mut outcome, mut taken) = (pos, WALK_RUNNING, 0);
    for i in 0..INLINE {
        let stop = if i == 0 {
            step::<P, true>(w, pkt, seg, &mut pos, end, t, &mut outcome)
        } else {
            step::<P, false>(w, pkt, seg, &mut pos, end, t, &mut outcome)
        };
        if stop {
            break;
        }
        taken += 1;
    }
    let (outcome, at) = if outcome == WALK_RUNNING { walk_loop(w, pkt, seg, pos, end, taken, t) } else { (outcome, pos) };
    match outcome {
        WALK_DONE => Ok(()),
        _ => {
            // Lost sync, or more records than one walk may pass: give up on the rest.
            w.synced = 0;
            w.hdr_have = 0;
            Err(Lost { at })
        }
    }
}

/// The steps of a walk after the first `taken` (in line, each of which parsed a header),
/// through `bpf_loop`, in the hook's global function (`Packet::walk_loop`): returns the
/// outcome and where the walk stopped. Behind the global function the loop's callback is
/// verified once per program instead of once per state reaching each walk (kernel
/// 6.18.44-fc-v1272: echo_xdp 138,601 -> 45,380 instructions, echo_tc 81,007 -> 29,105,
/// for replay 68,390 / 53,044 -> 24,837 / 19,331). Only the loop: the whole walk behind a
/// global function needed 576 bytes of stack with the steps in line (the caller's, its own
/// and the callback's frames), more than the 512 the kernel allows.
#[inline(always)]
fn walk_loop<P: Packet>(w: &mut Walker, pkt: &P, seg: &Segment, pos: u32, end: u32, taken: u32, t: &mut Tally) -> (u32, u32) {
    let seg_at = seg.seq as u64 | (seg.payload_off as u64 & PAYLOAD_OFF_MASK) << 32 | (taken as u64) << 56;
    let r = pkt.walk_loop(w as *mut Walker, t.stats as *mut DestStats, seg_at, pos as u64 | (end as u64) << 32);
    t.new_app |= r & LOOP_NEW_APP != 0;
    t.new_handshake |= r & LOOP_NEW_HANDSHAKE != 0;
    ((r & LOOP_OUTCOME) as u32, (r >> 32) as u32)
}

/// `walk_loop`'s arguments and result, packed for a global function's five arguments and
/// one return value: the segment's sequence number (bits 0..32), its payload's offset
/// (32..56) and the steps taken in line (56..64); the result's outcome, whether app data or
/// handshake bytes were counted, and where the walk stopped (32..64).
const PAYLOAD_OFF_MASK: u64 = 0xff_ffff;
const LOOP_OUTCOME: u64 = 3;
const LOOP_NEW_APP: u64 = 4;
const LOOP_NEW_HANDSHAKE: u64 = 8;

/// The body of the global functions behind `Packet::walk_loop` (`echo_walk_loop_xdp`,
/// `echo_walk_loop_tc`). Null pointers (the verifier makes a global function check) walk
/// nothing: outcome 0, taken as out of steps.
#[inline(always)]
pub fn walk_loop_global<P: Packet>(pkt: &P, w: *mut Walker, stats: *mut DestStats, seg_at: u64, span: u64) -> u64 {
    if w.is_null() || stats.is_null() {
        return 0;
    }
    let taken = (seg_at >> 56) as u32;
    let mut c = WalkCtx {
        pkt: *pkt,
        w,
        stats,
        seg_seq: seg_at as u32,
        payload_off: ((seg_at >> 32) & PAYLOAD_OFF_MASK) as u32,
        pos: span as u32,
        end: (span >> 32) as u32,
        outcome: WALK_RUNNING,
        new_app: 0,
        new_handshake: 0,
        _pad: [0; 2],
    };
    // SAFETY: `walk_step::<P>` reads its context as a WalkCtx<P>.
    let (new_app, new_handshake, outcome, at) =
        unsafe { run_loop(MAX_WALK_STEPS - taken.min(MAX_WALK_STEPS), walk_step::<P>, &mut c, |c| (c.new_app, c.new_handshake, c.outcome, c.pos)) };
    let flags = (if new_app != 0 { LOOP_NEW_APP } else { 0 }) | (if new_handshake != 0 { LOOP_NEW_HANDSHAKE } else { 0 });
    (outcome as u64 & LOOP_OUTCOME) | flags | (at as u64) << 32
}

/// One step of a walk: the payload up to the next header, then that header.
/// Returns 0 to go on, 1 to stop (bpf_loop's convention).
extern "C" fn walk_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the WalkCtx<P> given by `walk`, whose pointers are valid
    // map values for the duration of the program.
    let c = unsafe { &mut *(ctx as *mut WalkCtx<P>) };
    let w = unsafe { &mut *c.w };
    let stats = unsafe { &mut *c.stats };
    let seg = Segment { seq: c.seg_seq, len: c.end.wrapping_sub(c.seg_seq), payload_off: c.payload_off as usize };
    let mut t = Tally { stats, new_app: false, new_handshake: false, retransmitted: 0 };
    let stop = step::<P, false>(w, &c.pkt, &seg, &mut c.pos, c.end, &mut t, &mut c.outcome);
    c.new_app |= t.new_app as u8;
    c.new_handshake |= t.new_handshake as u8;
    stop as i64
}

/// One step of a walk; `FIRST` for a walk's first, the only one whose header can lie at the
/// start of the segment's payload (see `complete_header`).
#[inline(always)]
fn step<P: Packet, const FIRST: bool>(
    w: &mut Walker,
    pkt: &P,
    seg: &Segment,
    pos: &mut u32,
    end: u32,
    t: &mut Tally,
    outcome: &mut u32,
) -> bool {
    // Payload of the record in progress.
    if seq_lt(*pos, w.next_hdr) {
        let to_hdr = w.next_hdr.wrapping_sub(*pos);
        let left = end.wrapping_sub(*pos);
        let n = if to_hdr < left { to_hdr } else { left };
        t.payload(w.cur_type, n);
        *pos = pos.wrapping_add(n);
    }
    let left = end.wrapping_sub(*pos);
    if left == 0 {
        *outcome = WALK_DONE;
        return true;
    }
    // A header: `pos` is `next_hdr + hdr_have`.
    let need = HEADER_LEN - w.hdr_have as u32;
    if left < need {
        // Split header: keep its first bytes (have + left <= 4, as left < need = 5 - have),
        // appended to those kept before as one little-endian word.
        let have = w.hdr_have as u32 & 3;
        let n = ((left - 1) & 3) + 1;
        let mut b = [0u8; 4];
        if pkt.load_into(seg.off(*pos), b.as_mut_ptr(), n) {
            let kept = u32::from_le_bytes(w.hdr_buf) as u64 & low_bytes(have);
            let word = kept | (u32::from_le_bytes(b) as u64 & low_bytes(n)) << (8 * have);
            w.hdr_buf = (word as u32).to_le_bytes();
        }
        w.hdr_have = (have + left) as u8;
        *pos = end;
        *outcome = WALK_DONE;
        return true;
    }
    let h = match complete_header::<P, FIRST>(w, pkt, seg.off(*pos)) {
        Some(h) if plausible_header(&h, MAX_RECORD_LEN) => h,
        _ => {
            *outcome = WALK_LOST;
            return true;
        }
    };
    let len = u16::from_be_bytes([h[3], h[4]]) as u32;
    t.record(h[0]);
    w.cur_type = h[0];
    w.next_hdr = w.next_hdr.wrapping_add(HEADER_LEN + len);
    w.hdr_have = 0;
    *pos = pos.wrapping_add(need);
    false
}

/// State of one resync scan, handed to `resync_step` by `bpf_loop`.
#[repr(C)]
struct ResyncCtx<P: Packet> {
    pkt: P,
    seg_seq: u32,
    payload_off: u32,
    pos: u32,
    end: u32,
    found: u32,
    _pad: u32,
}

/// Scans `[pos, end)` for a plausible record header; returns its sequence number, or `end`.
#[inline(always)]
fn resync<P: Packet>(pkt: &P, seg: &Segment, pos: u32, end: u32) -> u32 {
    let mut c = ResyncCtx { pkt: *pkt, seg_seq: seg.seq, payload_off: seg.payload_off as u32, pos, end, found: end, _pad: 0 };
    // SAFETY: `resync_step::<P>` reads its context as a ResyncCtx<P>.
    unsafe { run_loop(MAX_RESYNC_SCAN, resync_step::<P>, &mut c, |c| c.found) }
}

/// Tries the header candidate at `pos`; stops when it is plausible and confirmed by the next
/// header (when this segment holds it), or when no header fits.
extern "C" fn resync_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the ResyncCtx<P> given by `resync`.
    let c = unsafe { &mut *(ctx as *mut ResyncCtx<P>) };
    let p = c.pos;
    if seq_diff(c.end, p) < HEADER_LEN as i32 {
        return 1;
    }
    let seg = Segment { seq: c.seg_seq, len: c.end.wrapping_sub(c.seg_seq), payload_off: c.payload_off as usize };
    c.pos = p.wrapping_add(1);
    let Some(h) = c.pkt.read::<[u8; 5]>(seg.off(p)) else { return 1 };
    if !plausible_header(&h, MAX_RESYNC_RECORD_LEN) {
        return 0;
    }
    let next = p.wrapping_add(HEADER_LEN + u16::from_be_bytes([h[3], h[4]]) as u32);
    let confirmed = seq_diff(c.end, next) < HEADER_LEN as i32
        || matches!(c.pkt.read::<[u8; 5]>(seg.off(next)), Some(h2) if plausible_header(&h2, MAX_RESYNC_RECORD_LEN));
    if confirmed {
        c.found = p;
        return 1;
    }
    0
}

/// A fresh flow seen from its SYN: synced at the first payload byte.
#[inline(always)]
pub fn on_syn(f: &mut FlowState, isn: u32) {
    let first = isn.wrapping_add(1);
    reset(f);
    f.main.next_hdr = first;
    f.main.synced = 1;
    f.seq_high = first;
    f.flags = FLOW_STREAM_START;
}

/// Whether a SYN with initial sequence number `isn` belongs to the flow already tracked at
/// `f`: a retransmitted or late-delivered duplicate (its stream starts at or before where the
/// flow stands) rather than a new connection on the same 4-tuple (whose random ISN lies far
/// away). A duplicate must not reset a flow that has moved on.
#[inline(always)]
pub fn same_stream(f: Option<*const FlowState>, isn: u32) -> bool {
    let Some(f) = f else { return false };
    // SAFETY: a valid map value pointer; a racing update can only make this check stale.
    let seq_high = unsafe { (*f).seq_high };
    let ahead = seq_diff(seq_high, isn.wrapping_add(1));
    ahead > 0 && ahead < MAX_SEQ_JUMP
}

/// A flow first seen in the middle of its stream: unsynced from `seq` on.
#[inline(always)]
pub fn on_pickup(f: &mut FlowState, seq: u32) {
    reset(f);
    f.seq_high = seq;
}

/// Forgets everything but the flow's lock, which its holder (the caller) keeps.
#[inline(always)]
fn reset(f: &mut FlowState) {
    *f = FlowState { lock: f.lock, ..FlowState::default() };
}

/// Accounts one segment with payload. See the module documentation.
#[inline(always)]
pub fn on_segment<P: Packet>(f: &mut FlowState, pkt: &P, seg: &Segment, t: &mut Tally) {
    let end = seg.end();
    let mut pos = seg.seq;
    let ahead = seq_diff(pos, f.seq_high);
    if ahead > MAX_SEQ_JUMP || ahead < -MAX_SEQ_JUMP {
        // No window is this large: a new stream on the same 4-tuple whose SYN we missed, or
        // garbage. Start over as a mid-stream pickup.
        on_pickup(f, pos);
    }
    if seq_lt(pos, f.seq_high) {
        let old_end = if seq_lt(end, f.seq_high) { end } else { f.seq_high };
        fill_old(f, pkt, seg, pos, old_end, t);
        pos = old_end;
        if pos == end {
            return;
        }
    }
    if f.flags & FLOW_NOT_TLS != 0 {
        f.seq_high = end;
        return;
    }
    if seq_lt(f.seq_high, pos) {
        open_gap(f, pos);
    }
    f.seq_high = end;
    walk_new(f, pkt, seg, pos, end, t);
}

/// Part 3: new bytes `[pos, end)` for the main walker.
#[inline(always)]
fn walk_new<P: Packet>(f: &mut FlowState, pkt: &P, seg: &Segment, pos: u32, end: u32, t: &mut Tally) {
    let mut pos = pos;
    if f.main.synced == 0 {
        let found = resync(pkt, seg, pos, end);
        t.unsynced(found.wrapping_sub(pos));
        if f.flags & FLOW_UNSYNC_AFTER_HOLE != 0 {
            f.unsync_end = found;
        }
        if found == end {
            f.unsynced_run = f.unsynced_run.saturating_add(end.wrapping_sub(pos));
            if f.unsynced_run > MAX_UNSYNCED_SCAN {
                f.flags |= FLOW_NOT_TLS;
            }
            return;
        }
        f.unsynced_run = 0;
        f.main = Walker { next_hdr: found, synced: 1, ..Walker::default() };
        pos = found;
    }
    // Replay takes every step through `bpf_loop`: the same steps, so the same counts, and its
    // programs verify in half the time (67k and 64k instructions instead of 180k and 147k;
    // verification is most of a replay's start-up), while a test run's ~2 µs syscall dwarfs
    // the loop's set-up. The verifier drops the other branch (see `replaying`).
    // Each header parsed moves `next_hdr` on by 5 bytes or more, and a walk passes less than
    // 2^32 bytes: it moved iff the walk parsed a header.
    let first_hdr = f.main.next_hdr;
    let walked = if replaying() {
        walk::<P, 0>(&mut f.main, pkt, seg, pos, end, t)
    } else {
        walk::<P, INLINE_STEPS>(&mut f.main, pkt, seg, pos, end, t)
    };
    let parsed = f.main.next_hdr != first_hdr;
    let at_start = f.flags & FLOW_STREAM_START != 0;
    if parsed {
        f.flags &= !FLOW_STREAM_START;
    }
    if let Err(Lost { at }) = walked {
        if at_start && !parsed {
            // The stream did not start with a record: not TLS.
            f.flags = (f.flags & !FLOW_STREAM_START) | FLOW_NOT_TLS;
        } else {
            t.unsynced(end.wrapping_sub(at));
        }
    }
}

/// Part 1: bytes `[from, to)`, all before `seq_high`.
#[inline(always)]
fn fill_old<P: Packet>(f: &mut FlowState, pkt: &P, seg: &Segment, from: u32, to: u32, t: &mut Tally) {
    let total = to.wrapping_sub(from);
    if f.flags & FLOW_HAS_HOLE == 0 {
        t.retransmit(total);
        return;
    }
    let lo = if seq_lt(from, f.hole_start) { f.hole_start } else { from };
    let hi = if seq_lt(f.hole_end, to) { f.hole_end } else { to };
    if !seq_lt(lo, hi) {
        t.retransmit(total);
        return;
    }
    let fill = hi.wrapping_sub(lo);
    t.retransmit(total - fill);
    if lo != f.hole_start {
        // A piece from the middle of the hole: one walker cannot follow two gaps. It counts
        // as unsynced and the hole shrinks to its head; bytes between this piece and the old
        // hole end will count as retransmitted.
        t.unsynced(fill);
        f.hole_end = lo;
        return;
    }
    if f.hole.synced != 0 {
        if let Err(Lost { at, .. }) = walk::<P, 0>(&mut f.hole, pkt, seg, lo, hi, t) {
            t.unsynced(hi.wrapping_sub(at));
        }
    } else {
        t.unsynced(fill);
    }
    f.hole_start = hi;
    if hi == f.hole_end {
        close_hole(f, t);
    }
}

/// Part 2: the bytes `[seq_high, pos)` have not arrived yet.
#[inline(always)]
fn open_gap(f: &mut FlowState, pos: u32) {
    let m = &mut f.main;
    // The gap lies inside the payload of the record in progress: the main walker stays exact.
    let inside_record = m.synced != 0 && m.hdr_have == 0 && !seq_lt(m.next_hdr, pos);
    if f.flags & FLOW_HAS_HOLE == 0 {
        f.hole = *m;
        f.hole_start = f.seq_high;
        f.hole_end = pos;
        f.flags |= FLOW_HAS_HOLE;
        if m.synced != 0 && !inside_record {
            m.synced = 0;
            f.flags |= FLOW_UNSYNC_AFTER_HOLE;
            f.unsync_start = pos;
            f.unsync_end = pos;
        }
        return;
    }
    // A second gap while the hole is open: one hole is all a flow keeps. The main walker
    // goes on when it can; the gap's bytes will count as retransmitted when they arrive.
    if !inside_record {
        m.synced = 0;
    }
}

/// The hole is filled: re-attribute bytes counted unsynced after it, if the hole walker
/// proves they were payload of one record.
#[inline(always)]
fn close_hole(f: &mut FlowState, t: &mut Tally) {
    let after_hole = f.flags & FLOW_UNSYNC_AFTER_HOLE != 0;
    f.flags &= !(FLOW_HAS_HOLE | FLOW_UNSYNC_AFTER_HOLE);
    let h = f.hole;
    if !after_hole || h.synced == 0 || h.hdr_have != 0 || f.unsync_start != f.hole_end {
        return;
    }
    if seq_lt(h.next_hdr, f.unsync_end) {
        // A header fell inside the unsynced bytes: they stay unsynced.
        return;
    }
    let main_lost = f.main.synced == 0;
    if !main_lost && h.next_hdr != f.unsync_end {
        return;
    }
    let n = f.unsync_end.wrapping_sub(f.unsync_start);
    t.stats.unsynced_bytes = t.stats.unsynced_bytes.wrapping_sub(n as u64);
    t.payload(h.cur_type, n);
    if main_lost {
        f.main = h;
    }
}
