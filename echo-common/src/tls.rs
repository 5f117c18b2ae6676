//! TLS record-layer constants (RFC 5246 §6.2, RFC 8446 §5.1).

/// Every record starts with a 5-byte header: type (1), version (2), length (2).
pub const HEADER_LEN: u32 = 5;

pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;

/// Handshake message type of a ClientHello (RFC 8446 §4), the byte after the record header.
pub const HS_CLIENT_HELLO: u8 = 1;

/// Record-layer versions we accept: TLS 1.0 (0x0301) to 1.3's 0x0304. TLS 1.3 writes 0x0303
/// on the wire, and ClientHellos often 0x0301.
pub const MIN_VERSION: u16 = 0x0301;
pub const MAX_VERSION: u16 = 0x0304;

/// Longest record a conforming peer sends, for walking a synced stream: TLS 1.2 allows
/// 2^14 + 2048 bytes of ciphertext (RFC 5246 §6.2.3).
pub const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;

/// Longest record accepted when resynchronising on an unknown stream position: TLS 1.3's bound
/// of 2^14 + 256 (RFC 8446 §5.2), which real AEAD records in TLS 1.2 also respect.
pub const MAX_RESYNC_RECORD_LEN: u16 = (1 << 14) + 256;

/// Whether `hdr` looks like a record header, with `max_len` the length bound to apply.
#[inline(always)]
pub const fn plausible_header(hdr: &[u8; 5], max_len: u16) -> bool {
    let ct = hdr[0];
    let version = u16::from_be_bytes([hdr[1], hdr[2]]);
    let len = u16::from_be_bytes([hdr[3], hdr[4]]);
    ct >= CT_CHANGE_CIPHER_SPEC
        && ct <= CT_APPLICATION_DATA
        && version >= MIN_VERSION
        && version <= MAX_VERSION
        && len <= max_len
}
