//! TCP with options (data offset up to 15 words).
use super::{Packet, USUAL_L4_OFF};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
const MIN_HLEN: usize = 20;

pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload_off: usize,
    pub payload_len: u32,
}

/// `l3_end` bounds the segment (IP length); a header or payload running past it or past the
/// frame (`frame_len`, `Packet::len`) is malformed and yields `None`.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &P, off: usize, l3_end: usize, frame_len: usize) -> Option<Tcp> {
    let h: [u8; MIN_HLEN] = pkt.read_usual::<_, USUAL_L4_OFF>(off)?;
    let hlen = ((h[12] >> 4) as usize) * 4;
    let payload_off = off + hlen;
    if hlen < MIN_HLEN || payload_off > l3_end || l3_end > frame_len {
        return None;
    }
    Some(Tcp {
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        flags: h[13],
        payload_off,
        payload_len: (l3_end - payload_off) as u32,
    })
}
