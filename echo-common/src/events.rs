//! Events the programs send to user space through the `EVENTS` ring buffer, and the marker
//! table that decides which pings are markers. Counters in maps stay the source of truth;
//! events carry timing, and may be dropped under overload (drops are counted in
//! `EVENT_DROPS`).

/// Ring buffer size in bytes (a power of two and a multiple of the page size). One event is
/// 48 bytes with the ring buffer's 8-byte header, so 1 MiB holds ~21,000 events: a voice
/// command produces a few dozen, a bulk download of 100 MB about 2,000 (one per GSO
/// super-packet), and user space drains the buffer continuously.
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Bytes waiting in `EVENTS` that make the programs wake the reader (a quarter of the ring);
/// below it the reader finds events on its timer (`events::POLL_INTERVAL` in user space).
pub const EVENTS_WAKEUP_BYTES: u32 = EVENTS_BYTES / 4;

/// The programs check how full `EVENTS` is (for `EVENTS_WAKEUP_BYTES`) at every this many
/// events of a CPU, not at each: the ring's positions sit on cache lines user space and the
/// other CPUs write, so the check (`bpf_ringbuf_query`) on every event cost 9–15 ns of a
/// one-record segment (A/B; BENCHMARKS.md). A CPU writes at most 63 events (3 KiB) past the
/// mark before it wakes the reader.
pub const EVENTS_FILL_CHECK_EVERY: u64 = 64;

/// Most marker addresses. Bounds `MARKERS` and `MARKER_PINGS`.
pub const MAX_MARKERS: u32 = 64;

/// `Event::kind`: a segment of a monitored device's flow carried new TLS application-data
/// payload bytes (`bytes`, `records` headers completed in it).
pub const EVENT_APP_DATA: u8 = 1;
/// `Event::kind`: an ICMP/ICMPv6 echo request to a marker address (`marker` is its slot).
pub const EVENT_MARKER: u8 = 2;

/// ICMP types of an echo request: the only packets to a marker address that mark time.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;

pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_EVENT_DROPS: &str = "EVENT_DROPS";
pub const MAP_MARKERS: &str = "MARKERS";
/// Symbol of the programs' load-time switch for markers (`echo-ebpf/src/markers.rs`): a
/// `u32` in `.rodata`, non-zero when `MARKERS` holds any address. User space sets it before
/// loading (`EbpfLoader::override_global`). The map is frozen, so the verifier knows the
/// value and drops the marker check of an agent without markers from every frame's path.
pub const GLOBAL_MARKERS_ENABLED: &str = "MARKERS_ENABLED";
pub const MAP_MARKER_PINGS: &str = "MARKER_PINGS";

/// One event. For app data the sum of `bytes` over a flow equals the growth of its
/// destination's `tls_app_bytes`: one event per segment rather than per record, so that
/// bytes are placed at the time they crossed the interface, and a 16 KiB record spanning a
/// marker is split where the wire split it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Live, CLOCK_MONOTONIC for markers (`bpf_ktime_get_ns`) and CLOCK_MONOTONIC_COARSE
    /// for app data (`bpf_ktime_get_coarse_ns`, up to a tick earlier); in replay the capture
    /// time.
    pub ts_ns: u64,
    /// Remote address of the flow (app data) or the marker address; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// App-data payload bytes, or the ICMP packet length for a marker.
    pub bytes: u32,
    /// App-data record headers completed in this segment.
    pub records: u16,
    /// Remote port (app data), 0 for markers.
    pub port: u16,
    pub kind: u8,
    /// Device index (app data), 0 for markers.
    pub device: u8,
    /// `DIR_UPLOAD` (seen at XDP ingress) or `DIR_DOWNLOAD` (TC egress).
    pub direction: u8,
    pub family: u8,
    /// Marker slot (index into `MARKER_PINGS`; user space maps it to a role).
    pub marker: u8,
    pub _pad: [u8; 3],
}

/// Key of `MARKERS`: an address that marks time when pinged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MarkerKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `MARKERS`: the marker's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerInfo {
    pub slot: u32,
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Event>() == 8 + 16 + 4 + 2 + 2 + 5 + 3);
    assert!(size_of::<MarkerKey>() == 16 + 1 + 3);
    assert!(size_of::<MarkerInfo>() == 4);
    assert!(EVENTS_BYTES.is_power_of_two());
    assert!(EVENTS_FILL_CHECK_EVERY.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C), padding-free (checked above) and valid for any bit pattern.
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for MarkerKey {}
    unsafe impl aya::Pod for MarkerInfo {}
}
