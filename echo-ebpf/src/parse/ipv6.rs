//! IPv6 with a bounded chain of extension headers.
use super::{L3, Packet};
use echo_common::FAMILY_V6;

const HLEN: usize = 40;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AUTH: u8 = 51;
const NEXT_DEST_OPTS: u8 = 60;
/// RFC 8200 §4.1 orders at most one of each extension header except Destination Options,
/// which may appear twice: hop-by-hop, dest opts, routing, fragment, AH, dest opts = 6.
/// Two more allow for unusual but legal stacks; a longer chain is classified `other`.
const MAX_EXT_HEADERS: usize = 8;

#[inline(always)]
pub fn parse<P: Packet>(pkt: &P, off: usize) -> Option<L3> {
    let h: [u8; HLEN] = pkt.read(off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4 = off + HLEN;
    let mut later_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                let e: [u8; 2] = pkt.read(l4)?;
                next = e[0];
                (e[1] as usize + 1) * 8
            }
            NEXT_FRAGMENT => {
                let e: [u8; 4] = pkt.read(l4)?;
                next = e[0];
                later_fragment = u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0;
                8
            }
            NEXT_AUTH => {
                let e: [u8; 2] = pkt.read(l4)?;
                next = e[0];
                (e[1] as usize + 2) * 4
            }
            _ => break,
        };
        l4 += len;
    }
    if matches!(next, NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_AUTH | NEXT_DEST_OPTS) {
        return None;
    }
    let l3_end = off + HLEN + payload;
    if l4 > l3_end {
        return None;
    }
    Some(L3 { family: FAMILY_V6, src, dst, proto: next, l4_off: l4, l3_end, later_fragment })
}
