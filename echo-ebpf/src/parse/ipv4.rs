//! IPv4 with options (IHL up to 15 words).
use super::{ethernet::ETH_HLEN, L3, Packet};
use echo_common::FAMILY_V4;

pub const MIN_HLEN: usize = 20;

#[inline(always)]
pub fn parse<P: Packet>(pkt: &P, off: usize) -> Option<L3> {
    let h: [u8; MIN_HLEN] = pkt.read_usual::<_, ETH_HLEN>(off)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let hlen = ((h[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if hlen < MIN_HLEN || total < hlen {
        return None;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h[12..16]);
    dst[..4].copy_from_slice(&h[16..20]);
    Some(L3 {
        family: FAMILY_V4,
        src,
        dst,
        proto: h[9],
        l4_off: off + hlen,
        l3_end: off + total,
        // Fragment offset (low 13 bits) non-zero: no transport header in this fragment.
        later_fragment: frag & 0x1fff != 0,
    })
}
