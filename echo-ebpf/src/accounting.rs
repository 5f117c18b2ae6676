//! The per-packet pipeline shared by the XDP (upload) and TC (download) programs: device
//! filter, header parsing, destination counters, packet class, TLS record walking.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    Global,
};
use echo_common::{
    class_counter_index, device_home_slot, mac_word_of_u16s, DestKey, DestStats, DeviceSlot, Event, FlowKey, FlowState,
    PacketClass, CLOCK_CAPTURE, CLOCK_KERNEL, DEVICE_SLOTS, DIR_DOWNLOAD, DIR_UPLOAD, DNS_PORT, EVENTS_FILL_CHECK_EVERY, EVENTS_WAKEUP_BYTES, EVENT_APP_DATA,
    FLOW_STREAM_START, INSERTS_DEST_STATS, INSERTS_FLOWS, MAX_DEVICES, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    flow_lock,
    maps::{
        PendingDest, CLASS_COUNTERS, DEST_STATS, DEVICE_TABLE, EVENTS, EVENT_DROPS, FLOWS,
        MAP_INSERTS, PENDING_DESTS, SCRATCH,
    },
    markers,
    parse::{ethernet, ipv4, ipv6, tcp, udp, Packet, L3},
    snippets,
    tls_records::{self, Segment, Tally},
};

/// Accounts one frame, in the direction its hook sees (`Packet::DIRECTION`). Never fails and
/// never touches the frame.
#[inline(always)]
pub fn account<P: Packet>(pkt: &P) {
    let direction = P::DIRECTION;
    // A plain index with a sentinel, not an Option: the compiler may read an Option's payload
    // on paths where it is None, an uninitialised stack read the verifier refuses without
    // CAP_PERFMON.
    let device = device_of(pkt, direction).unwrap_or(NO_DEVICE);
    let markers = markers::enabled();
    if device == NO_DEVICE && !markers {
        return;
    }
    let mut l3 = parse_l3(pkt);
    if markers {
        if let Some(l3) = &l3 {
            markers::check(pkt, l3, direction);
        }
    }
    if device == NO_DEVICE {
        return;
    }
    let class = match &mut l3 {
        Some(l3) => {
            // Replay: one verifier state for every parse path from here on.
            if replaying() {
                launder_l3(l3);
            }
            account_ip(pkt, l3, device, direction)
        }
        None => PacketClass::Other,
    };
    count_class(device, direction, class);
}

/// `account`'s "no monitored device" (device indices are below `MAX_DEVICES`).
const NO_DEVICE: u32 = u32::MAX;

/// The monitored device this frame belongs to: its source when uploading, its destination
/// when downloading. Probes `DEVICE_TABLE` from the MAC's home slot; a frame of another MAC
/// almost always stops at that first slot, empty.
#[inline(always)]
fn device_of<P: Packet>(pkt: &P, direction: u8) -> Option<u32> {
    // Three 16-bit words, not six bytes: even offsets, so aligned loads (`read_head`).
    let mac = if direction == DIR_UPLOAD { pkt.read_head::<[u16; 3], { ethernet::SRC_MAC_OFF }>()? } else { pkt.read_head::<[u16; 3], { ethernet::DST_MAC_OFF }>()? };
    let word = mac_word_of_u16s(mac);
    let (want, home) = (DeviceSlot::probe_key(word), device_home_slot(word));
    // At most MAX_DEVICES slots are used, so a device sits within MAX_DEVICES slots of its
    // home (user space placed it at the first free one, with at most MAX_DEVICES - 1 in the
    // way): a probe that found neither it nor an empty slot by then is for another MAC.
    for i in 0..MAX_DEVICES {
        let slot = DEVICE_TABLE.get_ptr((home + i) & (DEVICE_SLOTS - 1))?;
        // SAFETY: a valid map value; DeviceSlot is 8 plain bytes aligned as a u64 (checked in
        // echo-common), read as one load (a copy of the struct is read field by field).
        let v = unsafe { (slot as *const u64).read() };
        if v & DeviceSlot::PROBE_MASK == want {
            return Some(DeviceSlot::index_of(v));
        }
        if v & DeviceSlot::USED_BIT == 0 {
            return None;
        }
    }
    None
}

#[inline(always)]
fn parse_l3<P: Packet>(pkt: &P) -> Option<L3> {
    let (proto, off) = ethernet::parse(pkt)?;
    match proto {
        ethernet::ETH_P_IPV4 => ipv4::parse(pkt, off),
        ethernet::ETH_P_IPV6 => ipv6::parse(pkt, off),
        _ => None,
    }
}

#[inline(always)]
fn account_ip<P: Packet>(pkt: &P, l3: &L3, device: u32, direction: u8) -> PacketClass {
    let upload = direction == DIR_UPLOAD;
    let now = coarse_now_ns(pkt);
    // Read once: at XDP the length is a helper call (~20 ns here, see BENCHMARKS.md).
    let frame_len = pkt.len();
    let mut key = DestKey {
        addr: if upload { l3.dst } else { l3.src },
        port: 0,
        device: device as u8,
        direction,
        family: l3.family,
        proto: l3.proto,
        _pad: [0; 2],
    };
    if l3.later_fragment {
        touch::<P>(&key, now, frame_len);
        return PacketClass::Other;
    }
    // The transport parsers read their header in place when it sits at its usual offset
    // (`Packet::read_usual`), a branch on the offset. The verifier would follow everything
    // after that branch once per layer-3 parse path (VLAN tags, IP options, IPv6 extension
    // headers): 440,000 instructions instead of 150,000 for echo_xdp. Through `forget`,
    // those paths converge first.
    let [l4_off, l3_end, frame_len] = forget([l3.l4_off as u32, l3.l3_end as u32, frame_len as u32]);
    let (l4_off, l3_end, frame_len) = (l4_off as usize, l3_end as usize, frame_len as usize);
    match l3.proto {
        PROTO_TCP => {
            let Some(seg) = tcp::parse(pkt, l4_off, l3_end, frame_len) else { return PacketClass::Other };
            key.port = if upload { seg.dport } else { seg.sport };
            account_tcp(pkt, l3, &seg, &key, now, frame_len)
        }
        PROTO_UDP => {
            let Some(u) = udp::parse(pkt, l4_off) else { return PacketClass::Other };
            key.port = if upload { u.dport } else { u.sport };
            touch::<P>(&key, now, frame_len);
            if P::DIRECTION == DIR_DOWNLOAD && u.sport == DNS_PORT && u.payload_off < l3_end {
                snippets::dns(pkt, &key, u.payload_off, (l3_end - u.payload_off) as u32);
            }
            if u.sport == DNS_PORT || u.dport == DNS_PORT { PacketClass::Dns } else { PacketClass::Other }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            touch::<P>(&key, now, frame_len);
            PacketClass::Icmp
        }
        _ => {
            touch::<P>(&key, now, frame_len);
            PacketClass::Other
        }
    }
}

#[inline(always)]
fn account_tcp<P: Packet>(pkt: &P, l3: &L3, seg: &tcp::Tcp, key: &DestKey, coarse_now: u64, frame_len: usize) -> PacketClass {
    let Some(stats) = touch::<P>(key, coarse_now, frame_len) else { return PacketClass::OtherTcp };
    stats.tcp_payload_bytes += seg.payload_len as u64;
    let fkey = FlowKey {
        src: l3.src,
        dst: l3.dst,
        sport: seg.sport,
        dport: seg.dport,
        family: l3.family,
        direction: key.direction,
        _pad: [0; 2],
    };
    if seg.flags & tcp::SYN != 0 && !tls_records::same_stream(FLOWS.get_ptr(&fkey), seg.seq) {
        let mut fresh = FlowState::default();
        tls_records::on_syn(&mut fresh, seg.seq);
        if FLOWS.insert(&fkey, &fresh, 0).is_ok() {
            count_insert(INSERTS_FLOWS);
        }
    }
    if seg.payload_len == 0 {
        return if seg.flags & (tcp::SYN | tcp::FIN | tcp::RST) != 0 {
            PacketClass::OtherTcp
        } else {
            PacketClass::Ack
        };
    }
    // Payload after a SYN (TCP Fast Open) starts one past the ISN.
    let seq = if seg.flags & tcp::SYN != 0 { seg.seq.wrapping_add(1) } else { seg.seq };
    let Some(flow_ptr) = flow_state(&fkey, seq) else { return PacketClass::OtherTcp };
    if !flow_lock::lock_flow(flow_ptr) {
        // Another CPU held the flow past every try (see `flow_lock`): its bytes are not
        // walked, so they count as unsynced, and the flow stays as the holder leaves it.
        stats.unsynced_bytes += seg.payload_len as u64;
        return PacketClass::OtherTcp;
    }
    // SAFETY: a valid map value pointer, which this program alone writes until it unlocks.
    let flow = unsafe { &mut *flow_ptr };
    if P::DIRECTION == DIR_UPLOAD && flow.flags & FLOW_STREAM_START != 0 && seq == flow.main.next_hdr && seq == flow.seq_high {
        // The first bytes of a TLS stream the device opens: its ClientHello names the server.
        snippets::client_hello(pkt, key, seg.payload_off, seg.payload_len);
    }
    let (app_bytes, app_records) = (stats.tls_app_bytes, stats.tls_app_records);
    let mut t = Tally { stats, new_app: false, new_handshake: false, retransmitted: 0 };
    let s = Segment { seq, len: seg.payload_len, payload_off: seg.payload_off };
    let s = launder(s);
    tls_records::on_segment(flow, pkt, &s, &mut t);
    flow_lock::unlock_flow(flow_ptr);
    let added = t.stats.tls_app_bytes.wrapping_sub(app_bytes);
    if added != 0 {
        emit(&Event {
            ts_ns: coarse_now,
            addr: key.addr,
            bytes: added as u32,
            records: t.stats.tls_app_records.wrapping_sub(app_records) as u16,
            port: key.port,
            kind: EVENT_APP_DATA,
            device: key.device,
            direction: key.direction,
            family: key.family,
            ..Event::default()
        });
    }
    if t.retransmitted == seg.payload_len {
        PacketClass::Retransmit
    } else if t.new_app {
        PacketClass::AppData
    } else if t.new_handshake {
        PacketClass::Handshake
    } else {
        PacketClass::OtherTcp
    }
}

/// The flow's state, created unsynced at `seq` when the flow's SYN was not seen. A pointer:
/// the caller takes the flow's lock (`flow_lock`) before it reads or writes the state.
#[inline(always)]
fn flow_state(key: &FlowKey, seq: u32) -> Option<*mut FlowState> {
    if let Some(p) = FLOWS.get_ptr_mut(key) {
        return Some(p);
    }
    let mut fresh = FlowState::default();
    tls_records::on_pickup(&mut fresh, seq);
    if FLOWS.insert(key, &fresh, BPF_NOEXIST as u64).is_ok() {
        count_insert(INSERTS_FLOWS);
    }
    FLOWS.get_ptr_mut(key)
}

/// A new destination's counters, all zero, in .rodata. Inserting from here rather than
/// from a `DestStats::default()` on the stack saves 56 bytes of the 512-byte stack and
/// part of the verification: echo_xdp 178k -> 144k instructions, echo_tc 141k -> 116k
/// (replay 67k -> 59k), most likely because those slots were written on the insert branch
/// only, so the states with and without an insert pruned each other less. Per packet: no
/// change (A/B).
// SAFETY: DestStats is plain integers (echo-common, repr(C)); all-zero is a valid value.
static ZERO_STATS: DestStats = unsafe { core::mem::zeroed() };

/// How long a CPU's frames for one destination may add to its pending counts before the next
/// frame folds them into `DEST_STATS` (`touch`): keeps a busy destination's entry recent for
/// the LRU, which only sees folds, and bounds what a CPU that user space cannot fold on
/// holds back. One second: a fold per second and CPU costs nothing measurable.
const PENDING_MAX_AGE_NS: u64 = 1_000_000_000;

/// The destination's pending counts (see `PENDING_DESTS`) with this frame (`frame_len` bytes
/// long) counted. A frame for another destination than the pending one, or one that comes
/// `PENDING_MAX_AGE_NS` after the pending counts began, first folds them into `DEST_STATS`.
/// Out of line, like `fold`: in line, the main frame and the record walker's calls exceed
/// the 512-byte stack ("combined stack size of 3 calls is 560").
#[inline(never)]
fn touch<P: Packet>(key: &DestKey, now: u64, frame_len: usize) -> Option<&'static mut DestStats> {
    let p = PENDING_DESTS.get_ptr_mut(P::DIRECTION as u32)?;
    // SAFETY: per-CPU value, used by this CPU only; user space folds it only from a test
    // run on this CPU, which cannot interleave with this one (see `fold_pending`).
    let p = unsafe { &mut *p };
    if !same_key(&p.key, key) || now.saturating_sub(p.stats.first_seen_ns) >= PENDING_MAX_AGE_NS {
        fold(p);
        p.key = *key;
    }
    let s = &mut p.stats;
    // The earliest and latest times, not the first and last written: a replay on several
    // threads hands one CPU frames of different flows out of capture order (live, the
    // monotonic clock makes both the same).
    if s.first_seen_ns == 0 || now < s.first_seen_ns {
        s.first_seen_ns = now;
    }
    if now > s.last_seen_ns {
        s.last_seen_ns = now;
    }
    s.packets += 1;
    s.wire_bytes += frame_len as u64;
    Some(s)
}

/// Whether two keys are equal, compared as twelve 16-bit words.
#[inline(always)]
fn same_key(a: &DestKey, b: &DestKey) -> bool {
    let (a, b) = (a as *const DestKey as *const u16, b as *const DestKey as *const u16);
    let mut d = 0u16;
    for i in 0..size_of::<DestKey>() / 2 {
        // SAFETY: DestKey is 24 plain bytes, 2-aligned (echo-common), read as u16 words.
        d |= unsafe { a.add(i).read() ^ b.add(i).read() };
    }
    d == 0
}

/// Adds pending counts into their destination's `DEST_STATS` entry (created on first use)
/// and zeroes them.
#[inline(never)]
fn fold(p: &mut PendingDest) {
    if p.stats.packets == 0 {
        return;
    }
    let d = match DEST_STATS.get_ptr_mut(&p.key) {
        Some(d) => Some(d),
        None => {
            if DEST_STATS.insert(&p.key, &ZERO_STATS, BPF_NOEXIST as u64).is_ok() {
                count_insert(INSERTS_DEST_STATS);
            }
            DEST_STATS.get_ptr_mut(&p.key)
        }
    };
    if let Some(d) = d {
        // SAFETY: a valid per-CPU map value pointer, only used by this CPU.
        unsafe { (*d).merge(&p.stats) };
    }
    // SAFETY: plain integers; all-zero is a valid value.
    unsafe { core::ptr::write_bytes(&raw mut p.stats, 0, 1) };
}

/// Folds this CPU's pending counts, both directions, into `DEST_STATS` (`echo_fold`).
#[inline(always)]
pub fn fold_pending() {
    for direction in [DIR_UPLOAD, DIR_DOWNLOAD] {
        if let Some(p) = PENDING_DESTS.get_ptr_mut(direction as u32) {
            // SAFETY: per-CPU value, used by this CPU only. User space runs this program
            // with BPF_PROG_TEST_RUN from a thread pinned to the CPU; the kernel runs XDP
            // and TC test runs with bottom halves disabled, as the live hooks run, so
            // neither can interrupt the other on one CPU.
            fold(unsafe { &mut *p });
        }
    }
}

#[inline(always)]
fn count_class(device: u32, direction: u8, class: PacketClass) {
    if let Some(c) = CLASS_COUNTERS.get_ptr_mut(class_counter_index(device, direction, class as u8)) {
        // SAFETY: per-CPU value, used by this CPU only.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn count_insert(slot: u32) {
    if let Some(c) = MAP_INSERTS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, used by this CPU only.
        unsafe { *c += 1 };
    }
}

/// Sends an event to user space, or counts it as dropped when the ring buffer is full.
/// User space is woken only once `EVENTS_WAKEUP_BYTES` are waiting (it also reads on a
/// timer): a wake-up per event would cost a context switch per packet. The fill level is
/// checked at every `EVENTS_FILL_CHECK_EVERY`-th event of a CPU.
#[inline(always)]
pub fn emit(ev: &Event) {
    let check = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU value, used by this CPU only.
        Some(s) => unsafe {
            (*s).events_written += 1;
            (*s).events_written.is_multiple_of(EVENTS_FILL_CHECK_EVERY)
        },
        None => true,
    };
    let wake = check && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= EVENTS_WAKEUP_BYTES as u64;
    let flags = if wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    if EVENTS.output::<Event>(ev, flags as u64).is_err() {
        if let Some(c) = EVENT_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU value, used by this CPU only.
            unsafe { *c += 1 };
        }
    }
}

/// Now, in nanoseconds, for marker events and snippets: the monotonic clock, or in replay the
/// frame's capture time. Markers a few milliseconds apart (a command's end and the response's
/// start) must keep their order and their gap.
#[inline(always)]
pub fn now_ns<P: Packet>(pkt: &P) -> u64 {
    clock_ns::<P, false>(pkt)
}

/// Now, in nanoseconds, for what every counted frame carries (the first and last times of
/// `DEST_STATS`, app-data events): the coarse monotonic clock (the timekeeper's last tick,
/// 4 ms resolution at HZ=250), or in replay the frame's capture time. `bpf_ktime_get_ns`
/// reads the clock source on every call, ~30 ns of a ~180 ns one-record segment here.
/// Windows and frames need no finer times for uploads than their 0.7 s gaps; user space
/// keeps an app-data event from falling before a marker ring-buffered ahead of it (see
/// `analysis::Session::event`).
#[inline(always)]
fn coarse_now_ns<P: Packet>(pkt: &P) -> u64 {
    clock_ns::<P, true>(pkt)
}

/// Which clock `clock_ns` reads: `CLOCK_KERNEL` or `CLOCK_CAPTURE`, set at load time
/// (`echo_common::GLOBAL_CLOCK`, its symbol). In frozen `.rodata`, so the verifier drops the
/// other clock's code.
#[unsafe(no_mangle)]
static CLOCK: Global<u64> = Global::new(CLOCK_KERNEL);

/// Whether the programs were loaded for replay (`CLOCK_CAPTURE`). The verifier knows, and
/// drops the code of the other mode: the other clock's, the record walker's in-line steps.
#[inline(always)]
pub fn replaying() -> bool {
    CLOCK.load() == CLOCK_CAPTURE
}

#[inline(always)]
fn clock_ns<P: Packet, const COARSE: bool>(pkt: &P) -> u64 {
    if replaying() {
        pkt.capture_time_ns()
    } else if COARSE {
        coarse_kernel_ns()
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

/// The coarse monotonic clock, read once per tick and CPU: it only moves when the tick
/// moves jiffies, so while `bpf_jiffies64` (which the verifier inlines as a load) reads what
/// it read at the last call, the time cached with it in `SCRATCH` is the clock's. The helper
/// cost ~19 ns of a one-record segment in the bench's cold caches (BENCHMARKS.md). In the
/// ~1 µs between the tick's jiffies update and its clock update a call caches the tick
/// before's time, so the times of that CPU's packets lag by one more tick until the next.
#[inline(always)]
fn coarse_kernel_ns() -> u64 {
    // SAFETY: helpers without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return unsafe { bpf_ktime_get_coarse_ns() } };
    // SAFETY: per-CPU value, used by this CPU only.
    unsafe {
        if (*s).coarse_ns == 0 || (*s).coarse_jiffies != jiffies {
            (*s).coarse_ns = bpf_ktime_get_coarse_ns();
            (*s).coarse_jiffies = jiffies;
        }
        (*s).coarse_ns
    }
}

/// Passes the segment through a per-CPU scratch slot, so that the verifier sees unknown
/// scalars afterwards and verifies the record walker once, not once per parse path.
#[inline(always)]
fn launder(s: Segment) -> Segment {
    let [seq, len, payload_off] = forget([s.seq, s.len, s.payload_off as u32]);
    Segment { seq, len, payload_off: payload_off as usize }
}

/// Returns `v` through a per-CPU scratch slot: the same values, but unknown scalars to the
/// verifier, so the states of every parse path that reach the caller converge (are pruned)
/// instead of each being verified through what follows.
#[inline(always)]
pub fn forget(v: [u32; 3]) -> [u32; 3] {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return v };
    // SAFETY: per-CPU value, used by this CPU only; volatile so the round trip stays.
    unsafe {
        let p = &raw mut (*s).words;
        core::ptr::write_volatile(p, [v[0], v[1], v[2], 0]);
        let r = core::ptr::read_volatile(p);
        [r[0], r[1], r[2]]
    }
}

/// Passes `l3`'s family and addresses through [`forget`], three words at a time.
/// IPv4's family and its twelve zero address bytes are constants to the verifier, IPv6's
/// are not, so without this every parse path (IPv4, IPv6, VLAN, each extension header) is
/// verified on through the accounting separately. Replay only (`replaying()`): its programs
/// are verified on every run, the live ones once (replay verification 59k/58k -> 48k/31k
/// instructions, BENCHMARKS.md). In place and out of line: the main frame has no room for
/// a second `L3` or for these temporaries (512-byte stack limit); and a second `L3` chosen
/// by pointer, tried first, cost the live path ~12 ns per one-record segment (A/B).
#[inline(never)]
fn launder_l3(l3: &mut L3) {
    let mut w = [0u32; 9];
    for i in 0..4 {
        w[i] = u32::from_ne_bytes([l3.src[4 * i], l3.src[4 * i + 1], l3.src[4 * i + 2], l3.src[4 * i + 3]]);
        w[4 + i] = u32::from_ne_bytes([l3.dst[4 * i], l3.dst[4 * i + 1], l3.dst[4 * i + 2], l3.dst[4 * i + 3]]);
    }
    w[8] = l3.family as u32;
    for c in w.chunks_exact_mut(3) {
        c.copy_from_slice(&forget([c[0], c[1], c[2]]));
    }
    for i in 0..4 {
        l3.src[4 * i..4 * i + 4].copy_from_slice(&w[i].to_ne_bytes());
        l3.dst[4 * i..4 * i + 4].copy_from_slice(&w[4 + i].to_ne_bytes());
    }
    l3.family = w[8] as u8;
}
