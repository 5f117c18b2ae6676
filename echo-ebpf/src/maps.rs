//! The programs' maps. Keys and values are defined in `echo-common`, sizes too.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use echo_common::{
    DestKey, DestStats, DeviceSlot, FlowKey, FlowState, MarkerInfo, MarkerKey,
    DEVICE_SLOTS, DIRECTIONS, DEST_STATS_ENTRIES, EVENTS_BYTES, FLOW_TABLE_ENTRIES, INSERTS_SLOTS, MAX_DEVICES,
    MAX_MARKERS, PACKET_CLASSES, SNIPPETS_BYTES,
};

/// Monitored devices: an open-addressing table of MACs with linear probing (see
/// `echo_common::DeviceSlot`). Key: slot number; value: MAC, `used`, device index. Every
/// frame probes it from its MAC's home slot: inlined array reads, where a hash lookup cost
/// ~17 ns a frame. Written by user space at start-up; read by the programs. Fixed size,
/// `DEVICE_SLOTS`.
#[map]
pub static DEVICE_TABLE: Array<DeviceSlot> = Array::with_max_entries(DEVICE_SLOTS, 0);

/// TCP flow table: where each direction of each connection stands in its TLS record stream.
/// Key: the 5-tuple as the packet carries it plus the direction; value: walker state.
/// Written and read by the programs on every TCP segment of a device; user space only counts
/// its entries. LRU, bounded by `FLOW_TABLE_ENTRIES`; insertions counted in `MAP_INSERTS`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// Byte and packet counters per (device, direction, remote address, port, protocol), one
/// copy per CPU so that updates need no atomics. Written by the programs; read and summed by
/// user space at scrape or replay time. LRU, bounded by `DEST_STATS_ENTRIES`; insertions
/// counted in `MAP_INSERTS`.
#[map]
pub static DEST_STATS: LruPerCpuHashMap<DestKey, DestStats> =
    LruPerCpuHashMap::with_max_entries(DEST_STATS_ENTRIES, 0);

/// Packets per class, index `class_counter_index(device, direction, class)`, per CPU.
/// Written by the programs; read and summed by user space. Fixed size.
#[map]
pub static CLASS_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_DEVICES * DIRECTIONS * PACKET_CLASSES as u32, 0);

/// Successful insertions into each LRU map (index `INSERTS_*`), per CPU. User space derives
/// evictions as insertions minus live entries. Written by the programs only.
#[map]
pub static MAP_INSERTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(INSERTS_SLOTS, 0);

/// The program's private per-CPU slot, index 0: the words `accounting::forget` passes
/// through; the events this CPU wrote to `EVENTS` (at every `EVENTS_FILL_CHECK_EVERY`-th
/// the programs check whether to wake the reader, see `accounting::emit`); and the coarse
/// clock cached with the jiffies it was read at (`accounting::coarse_kernel_ns`). One value
/// and one cache line for all three, which a one-record segment touches anyway. Private to
/// the programs.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `SCRATCH`'s value.
#[repr(C)]
pub struct Scratch {
    pub words: [u32; 4],
    pub events_written: u64,
    /// The coarse clock and the jiffies it was read at (`accounting::coarse_kernel_ns`).
    pub coarse_ns: u64,
    pub coarse_jiffies: u64,
}

/// Each CPU's pending destination per direction (index `DIR_UPLOAD`, `DIR_DOWNLOAD`): the
/// destination of that CPU's last counted frame and what its frames added since they were
/// last folded into `DEST_STATS`. A frame for the same destination adds here and skips the
/// `DEST_STATS` lookup (~35 ns of a one-record segment, BENCHMARKS.md); a frame for another
/// one, or one more than `PENDING_MAX_AGE_NS` after the pending counts began, folds them
/// first (`accounting::touch`). User space folds every CPU before it reads `DEST_STATS`
/// (`echo_fold`, run on each CPU). Written by the programs only; pinned with the counters,
/// so that counts a stopped agent's programs left pending are folded by the next one's.
/// Fixed size.
#[map]
pub static PENDING_DESTS: PerCpuArray<PendingDest> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

/// `PENDING_DESTS`'s value: `stats.packets == 0` when nothing is pending.
#[repr(C)]
pub struct PendingDest {
    pub key: DestKey,
    pub stats: DestStats,
}

/// Events to user space (`echo_common::Event`): app-data segments of monitored devices and
/// marker pings. Written by the programs; drained by the agent (live) or after each test run
/// (replay). Bounded by `EVENTS_BYTES`; a full buffer drops the event and counts it in
/// `EVENT_DROPS`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Events that did not fit in `EVENTS`, index 0, per CPU. Written by the programs; read and
/// summed by user space.
#[map]
pub static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Marker addresses: an ICMP/ICMPv6 echo request to one of them, from any host, is a marker.
/// Key: address and family; value: the marker's slot. Written by user space at start-up;
/// read by the programs for echo requests only. Bounded by `MAX_MARKERS`.
#[map]
pub static MARKERS: HashMap<MarkerKey, MarkerInfo> = HashMap::with_max_entries(MAX_MARKERS, 0);

/// Echo requests seen per marker slot, per CPU: exact even when events are dropped.
/// Written by the programs; read and summed by user space. Bounded by `MAX_MARKERS`.
#[map]
pub static MARKER_PINGS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_MARKERS, 0);

/// Snippets to user space (`echo_common::Snippet`): the first segment of each TLS stream a
/// device opens with a ClientHello, and DNS responses to devices, for naming destinations.
/// Written by the programs (a ring buffer of its own, so that a burst of names never crowds
/// out byte events and the reverse); drained by the agent with `EVENTS`. Bounded by
/// `SNIPPETS_BYTES`; a full buffer drops the snippet and counts it in `SNIPPET_DROPS`.
#[map]
pub static SNIPPETS: RingBuf = RingBuf::with_byte_size(SNIPPETS_BYTES, 0);

/// Snippets that did not fit in `SNIPPETS`, index 0, per CPU. Written by the programs; read
/// and summed by user space.
#[map]
pub static SNIPPET_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
