//! Types and constants shared by `echo-ebpf` (kernel) and `echo-agent` (user space).
//!
//! Every type here is `#[repr(C)]` and free of implicit padding (checked at compile time
//! below), so the kernel and user space agree on every byte of every map key and value.
#![no_std]

pub mod events;
pub mod maps;
pub mod snippets;
pub mod tls;

pub use events::*;
pub use maps::*;
pub use snippets::*;

/// Direction of a packet relative to the monitored device.
pub const DIR_UPLOAD: u8 = 0;
/// Traffic towards the monitored device (TC egress on the hotspot interface).
pub const DIR_DOWNLOAD: u8 = 1;
/// Number of directions: size of the direction dimension of per-device arrays.
pub const DIRECTIONS: u32 = 2;

/// Address family tags used in keys (the numeric values of AF_INET / AF_INET6 on Linux).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers the programs classify.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// DNS runs on this UDP port; packets to or from it are classified `dns`.
pub const DNS_PORT: u16 = 53;

/// Per-packet classes, after the seed research's classification of outgoing Echo packets.
/// The discriminant is the index into [`ClassCounters::packets`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketClass {
    /// TCP segment carrying new TLS handshake or change-cipher-spec bytes and no app data.
    Handshake = 0,
    /// TCP segment carrying new TLS application-data bytes.
    AppData = 1,
    /// TCP segment with no payload and none of SYN, FIN, RST.
    Ack = 2,
    /// TCP segment whose payload was entirely seen before.
    Retransmit = 3,
    /// Any other TCP segment: SYN, FIN, RST, alerts, unsynced or non-TLS payload.
    OtherTcp = 4,
    /// UDP to or from port 53.
    Dns = 5,
    /// ICMP and ICMPv6.
    Icmp = 6,
    /// Everything else from a device, including frames too malformed to parse.
    Other = 7,
}

/// Number of packet classes.
pub const PACKET_CLASSES: usize = 8;

/// Class names as exported (JSON keys, Prometheus label values), indexed by discriminant.
pub const CLASS_NAMES: [&str; PACKET_CLASSES] = [
    "handshake",
    "app_data",
    "ack",
    "retransmit",
    "other_tcp",
    "dns",
    "icmp",
    "other",
];

/// A MAC as a number: its six bytes little-endian, the top two zero. `DEVICE_TABLE` probes
/// work on this word (`device_home_slot`, `DeviceSlot::probe_key`).
#[inline(always)]
pub const fn mac_word(mac: [u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// `mac_word` of a MAC read as three 16-bit words in memory order (each in the machine's byte
/// order, as a load gives them).
#[inline(always)]
pub const fn mac_word_of_u16s(h: [u16; 3]) -> u64 {
    u16::from_le(h[0]) as u64 | (u16::from_le(h[1]) as u64) << 16 | (u16::from_le(h[2]) as u64) << 32
}

// The two agree on every target: a MAC's bytes read as three 16-bit words give its word.
const _: () = {
    let mac = [0x02, 0xaa, 0x13, 0x37, 0xbe, 0xef];
    // SAFETY: both are 6 plain bytes.
    let words: [u16; 3] = unsafe { core::mem::transmute(mac) };
    assert!(mac_word_of_u16s(words) == mac_word(mac));
};

/// The slot of `DEVICE_TABLE` where the probe for the MAC `word` (`mac_word`) starts: the
/// word times a 64-bit odd constant (Fibonacci hashing), top bits. Devices of one vendor
/// share their first three bytes; the multiplication spreads the rest over every slot.
#[inline(always)]
pub const fn device_home_slot(word: u64) -> u32 {
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - DEVICE_SLOTS.trailing_zeros())) as u32
}

/// Signed distance `a - b` in TCP sequence space (RFC 1982 serial arithmetic).
#[inline(always)]
pub const fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// `a` comes strictly before `b` in TCP sequence space.
#[inline(always)]
pub const fn seq_lt(a: u32, b: u32) -> bool {
    seq_diff(a, b) < 0
}
