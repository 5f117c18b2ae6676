//! Map keys, values, names and sizes. The comments above each map in `echo-ebpf/src/maps.rs`
//! say who writes and who reads; the sizes here are the single source for both sides.

/// Most devices one agent monitors. Bounds `DEVICE_TABLE`'s probes and the device dimension of
/// `CLASS_COUNTERS`; a household has a handful of smart speakers.
pub const MAX_DEVICES: u32 = 16;

/// Flow table size (LRU). 65,536 concurrent TCP flows × 104 bytes (key and value) ≈ 7 MiB of
/// kernel memory:
/// an Echo keeps a few long-lived connections, so this leaves room for the whole household.
pub const FLOW_TABLE_ENTRIES: u32 = 65_536;

/// Destination counter table size (LRU, per CPU): (device, direction, address, port, protocol).
pub const DEST_STATS_ENTRIES: u32 = 16_384;

/// Slots of `DEVICE_TABLE` (a power of two): 16 per possible device, so that the probe for a
/// frame of another MAC almost always ends at its first slot, empty.
pub const DEVICE_SLOTS: u32 = 256;

/// Map names as they appear in the object file and under the pin directory.
pub const MAP_DEVICE_TABLE: &str = "DEVICE_TABLE";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_DEST_STATS: &str = "DEST_STATS";
pub const MAP_CLASS_COUNTERS: &str = "CLASS_COUNTERS";
pub const MAP_INSERTS: &str = "MAP_INSERTS";
pub const MAP_PENDING_DESTS: &str = "PENDING_DESTS";
/// Symbol of the programs' load-time clock switch (`echo-ebpf/src/accounting.rs`): a `u64`
/// in `.rodata`, `CLOCK_KERNEL` or `CLOCK_CAPTURE`, set by user space before loading
/// (`EbpfLoader::override_global`). The map is frozen, so the verifier knows the value and
/// drops the other clock's code from every frame's path (a map read per counted frame
/// before).
pub const GLOBAL_CLOCK: &str = "CLOCK";

/// `CLOCK`'s value in live operation: the programs read `bpf_ktime_get_ns` for events and
/// `bpf_ktime_get_coarse_ns` (a tick's resolution, for a seventh of the cost) for the first
/// and last times in `DEST_STATS`.
pub const CLOCK_KERNEL: u64 = 0;
/// `CLOCK`'s value in replay: every frame carries its capture time in nanoseconds, which the
/// programs take as "now". An XDP frame carries it in `CAPTURE_TIME_META_LEN` bytes of XDP
/// metadata right before the frame; a TC frame in `__sk_buff.cb[0]` (low half) and `cb[1]`
/// (high half), at `SKB_CB_OFF`. No map update per frame, so replay costs one syscall a frame
/// and several threads may replay at once, each frame with its own time. The programs then
/// also walk every TLS record through `bpf_loop`, none in line: the same counts, verified in
/// half the time (`echo-ebpf/src/tls_records.rs`, `walk_new`).
pub const CLOCK_CAPTURE: u64 = 1;
/// Bytes of XDP metadata that carry a replayed frame's capture time (little-endian `u64`).
pub const CAPTURE_TIME_META_LEN: usize = 8;
/// Offset of `cb[0]` in `struct __sk_buff`: twelve `u32` fields precede it (UAPI, stable).
pub const SKB_CB_OFF: usize = 48;

/// Index into `MAP_INSERTS` for each LRU map whose insertions are counted.
/// Evictions = insertions − live entries (the programs never delete).
pub const INSERTS_FLOWS: u32 = 0;
pub const INSERTS_DEST_STATS: u32 = 1;
pub const INSERTS_SLOTS: u32 = 2;

/// One slot of `DEVICE_TABLE`, an open-addressing table of the monitored MACs with linear
/// probing: a device sits at `device_home_slot(mac_word(mac))` or at one of the next `MAX_DEVICES - 1`
/// slots (at most `MAX_DEVICES - 1` others can be in the way). A probe ends at the device's
/// slot or at an empty one. Read by the programs as one `u64`: the first seven bytes compared
/// at once (`DeviceSlot::probe_key`), the index taken from the eighth. Aligned as a `u64`, so
/// that reading one is one load, not eight.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceSlot {
    pub mac: [u8; 6],
    /// `SLOT_USED` when a device sits here, 0 for an empty slot.
    pub used: u8,
    /// The device's dense index (below `MAX_DEVICES`), used in every other key.
    pub index: u8,
}

/// `DeviceSlot::used` of an occupied slot.
pub const SLOT_USED: u8 = 1;

impl DeviceSlot {
    /// What a slot holding the MAC `word` (`mac_word`) reads as, as a `u64` masked with
    /// `PROBE_MASK` (its first seven bytes, little-endian: the MAC and `used`).
    #[inline(always)]
    pub const fn probe_key(word: u64) -> u64 {
        word | Self::USED_BIT
    }
    /// The bytes of a slot that `probe_key` covers.
    pub const PROBE_MASK: u64 = (1 << 56) - 1;
    /// The bit of a slot read as a `u64` that is `used` (`SLOT_USED`).
    pub const USED_BIT: u64 = (SLOT_USED as u64) << 48;
    /// `index` of a slot read as a `u64` (its eighth byte, little-endian).
    #[inline(always)]
    pub const fn index_of(v: u64) -> u32 {
        (v >> 56) as u32
    }
}

/// Key of `DEST_STATS`: one remote endpoint of one device in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// Remote address: IPv4 in the first 4 bytes (rest zero) or IPv6.
    pub addr: [u8; 16],
    /// Remote port (host byte order), 0 for protocols without ports.
    pub port: u16,
    /// Index from `DEVICE_TABLE`.
    pub device: u8,
    /// `DIR_UPLOAD` or `DIR_DOWNLOAD`.
    pub direction: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 2],
}

/// Value of `DEST_STATS` (one copy per CPU; user space sums them, min/max for the times).
/// TLS byte counts are record payload bytes, the 5-byte record header excluded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestStats {
    pub tls_app_bytes: u64,
    pub tls_app_records: u64,
    pub handshake_bytes: u64,
    pub handshake_records: u64,
    pub ccs_bytes: u64,
    pub alert_bytes: u64,
    /// TCP payload bytes on the wire, retransmissions included.
    pub tcp_payload_bytes: u64,
    pub packets: u64,
    /// Frame bytes from the Ethernet header on.
    pub wire_bytes: u64,
    /// Payload bytes of sequence ranges already seen.
    pub retransmit_bytes: u64,
    /// Payload bytes of TLS flows whose record boundary was unknown when they passed.
    pub unsynced_bytes: u64,
    /// Nanoseconds of the first and last packet: CLOCK_MONOTONIC_COARSE live (a scheduler
    /// tick's resolution), the capture's time in replay.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

impl DestStats {
    /// Adds another CPU's copy into this one.
    pub fn merge(&mut self, o: &DestStats) {
        self.tls_app_bytes = self.tls_app_bytes.wrapping_add(o.tls_app_bytes);
        self.tls_app_records = self.tls_app_records.wrapping_add(o.tls_app_records);
        self.handshake_bytes = self.handshake_bytes.wrapping_add(o.handshake_bytes);
        self.handshake_records = self.handshake_records.wrapping_add(o.handshake_records);
        self.ccs_bytes = self.ccs_bytes.wrapping_add(o.ccs_bytes);
        self.alert_bytes = self.alert_bytes.wrapping_add(o.alert_bytes);
        self.tcp_payload_bytes = self.tcp_payload_bytes.wrapping_add(o.tcp_payload_bytes);
        self.packets = self.packets.wrapping_add(o.packets);
        self.wire_bytes = self.wire_bytes.wrapping_add(o.wire_bytes);
        self.retransmit_bytes = self.retransmit_bytes.wrapping_add(o.retransmit_bytes);
        // Per-CPU copies of a byte counter may individually wrap below zero when a hole fix-up
        // moves bytes from `unsynced` to a record type on another CPU; the sum is exact.
        self.unsynced_bytes = self.unsynced_bytes.wrapping_add(o.unsynced_bytes);
        if o.packets != 0 || o.first_seen_ns != 0 {
            if self.first_seen_ns == 0 || (o.first_seen_ns != 0 && o.first_seen_ns < self.first_seen_ns) {
                self.first_seen_ns = o.first_seen_ns;
            }
            self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
        }
    }
}

/// Index into `CLASS_COUNTERS` (one `u64` per device, direction and packet class). The class
/// goes into the map key rather than indexing an array in one value: without CAP_PERFMON the
/// verifier refuses a variable offset on a map value pointer that differs between paths.
pub const fn class_counter_index(device: u32, direction: u8, class: u8) -> u32 {
    (device * crate::DIRECTIONS + direction as u32) * crate::PACKET_CLASSES as u32 + class as u32
}

/// Key of `FLOWS`: one direction of one TCP connection, as the packets carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Where a TLS record walker stands in one byte stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walker {
    /// Sequence number of the next record header's first byte. Bytes before it belong to the
    /// payload of the record of type `cur_type`.
    pub next_hdr: u32,
    /// Content type of the record whose payload ends at `next_hdr`.
    pub cur_type: u8,
    /// Header bytes at `next_hdr` already seen (0–4), kept in `hdr_buf`.
    pub hdr_have: u8,
    /// 1 when `next_hdr` is known; 0 when the position in the stream is unknown.
    pub synced: u8,
    pub _pad: u8,
    pub hdr_buf: [u8; 4],
}

/// Flow state flags (`FlowState::flags`).
/// The walker has not yet parsed the stream's first record (set on SYN).
pub const FLOW_STREAM_START: u8 = 1;
/// The stream's first bytes were not a TLS record: only TCP counters are kept.
pub const FLOW_NOT_TLS: u8 = 2;
/// `hole` describes an open gap in the stream.
pub const FLOW_HAS_HOLE: u8 = 4;
/// The main walker lost sync at `hole_end`; bytes `[unsync_start, unsync_end)` went to
/// `unsynced_bytes` and may be re-attributed once the hole is filled.
pub const FLOW_UNSYNC_AFTER_HOLE: u8 = 8;

/// Value of `FLOWS`. The state machine is documented in `echo-ebpf/src/tls_records.rs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Walker at `seq_high`.
    pub main: Walker,
    /// Walker at `hole_start`, valid with `FLOW_HAS_HOLE`.
    pub hole: Walker,
    /// Sequence number one past the highest payload byte seen.
    pub seq_high: u32,
    pub hole_start: u32,
    pub hole_end: u32,
    pub unsync_start: u32,
    pub unsync_end: u32,
    /// Payload bytes scanned for a header without finding one since sync was lost.
    pub unsynced_run: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
    pub _pad_lock: u32,
    /// `FLOW_LOCK_HELD` while a program walks this flow (`echo-ebpf/src/flow_lock.rs`), else 0.
    /// 64 bits: the width whose compare-and-exchange LLVM emits for the programs' target CPU.
    pub lock: u64,
}

/// `FlowState::lock` of a flow a program is walking.
pub const FLOW_LOCK_HELD: u64 = 1;

/// Compile-time proof that the shared types have no implicit padding: each size equals the
/// sum of its fields.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<DeviceSlot>() == 6 + 1 + 1);
    // A slot read as one u64 gives its probe key and its index.
    let mac = [0x02, 0xaa, 0x13, 0x37, 0xbe, 0xef];
    // SAFETY: DeviceSlot is 8 plain bytes.
    let v: u64 = unsafe { core::mem::transmute(DeviceSlot { mac, used: SLOT_USED, index: 5 }) };
    assert!(v & DeviceSlot::PROBE_MASK == DeviceSlot::probe_key(crate::mac_word(mac)) && DeviceSlot::index_of(v) == 5);
    assert!(DEVICE_SLOTS.is_power_of_two() && DEVICE_SLOTS >= MAX_DEVICES);
    assert!(size_of::<DestKey>() == 16 + 2 + 1 + 1 + 1 + 1 + 2);
    assert!(size_of::<DestStats>() == 13 * 8);
    assert!(size_of::<FlowKey>() == 16 + 16 + 2 + 2 + 1 + 1 + 2);
    assert!(size_of::<Walker>() == 4 + 1 + 1 + 1 + 1 + 4);
    assert!(size_of::<FlowState>() == 2 * size_of::<Walker>() + 6 * 4 + 1 + 3 + 4 + 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), padding-free (checked above) and valid for any bit pattern.
    unsafe impl aya::Pod for DeviceSlot {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for DestStats {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
}
