//! IPv6 with a bounded chain of extension headers.
use super::{ethernet::ETH_HLEN, L3, Packet};
use aya_ebpf::cty::c_void;
use echo_common::FAMILY_V6;

pub const HLEN: usize = 40;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_AUTH: u8 = 51;
const NEXT_DEST_OPTS: u8 = 60;
/// RFC 8200 §4.1 orders at most one of each extension header except Destination Options,
/// which may appear twice: hop-by-hop, dest opts, routing, fragment, AH, dest opts = 6.
/// Two more allow for unusual but legal stacks; a longer chain is classified `other`.
const MAX_EXT_HEADERS: usize = 8;

/// State of the extension-header walk, handed to `ext_step` by `bpf_loop` (the verifier
/// checks one step instead of `MAX_EXT_HEADERS` unrolled ones, whose branches it would
/// otherwise explore, speculative paths included, state by state).
#[repr(C)]
struct ExtCtx<P: Packet> {
    pkt: P,
    /// Offset of the header `next` names.
    l4: u64,
    next: u8,
    later_fragment: u8,
    /// An extension header did not fit in the packet.
    cut: u8,
    _pad: [u8; 5],
}

fn is_extension(next: u8) -> bool {
    matches!(next, NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_AUTH | NEXT_DEST_OPTS)
}

/// One extension header: its next-header and length fields (and the fragment offset).
/// Returns 0 to go on, 1 to stop (bpf_loop's convention).
extern "C" fn ext_step<P: Packet>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the ExtCtx<P> given by `parse`.
    let c = unsafe { &mut *(ctx as *mut ExtCtx<P>) };
    if !is_extension(c.next) {
        return 1;
    }
    // Every extension header is at least 8 bytes; its first 4 say all we need.
    let Some(e) = c.pkt.read::<[u8; 4]>(c.l4 as usize) else {
        c.cut = 1;
        return 1;
    };
    let len = match c.next {
        NEXT_FRAGMENT => {
            c.later_fragment = (u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0) as u8;
            8
        }
        NEXT_AUTH => (e[1] as u64 + 2) * 4,
        _ => (e[1] as u64 + 1) * 8,
    };
    c.next = e[0];
    c.l4 += len;
    0
}

#[inline(always)]
pub fn parse<P: Packet>(pkt: &P, off: usize) -> Option<L3> {
    let h: [u8; HLEN] = pkt.read_usual::<_, ETH_HLEN>(off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    let (cut, next, l4, later_fragment) = if is_extension(h[6]) {
        let mut c = ExtCtx { pkt: *pkt, l4: (off + HLEN) as u64, next: h[6], later_fragment: 0, cut: 0, _pad: [0; 5] };
        // SAFETY: `ext_step::<P>` reads its context as an ExtCtx<P>.
        unsafe { super::run_loop(MAX_EXT_HEADERS as u32, ext_step::<P>, &mut c, |c| (c.cut != 0, c.next, c.l4 as usize, c.later_fragment != 0)) }
    } else {
        (false, h[6], off + HLEN, false)
    };
    if cut || is_extension(next) {
        return None;
    }
    let l3_end = off + HLEN + payload;
    if l4 > l3_end {
        return None;
    }
    Some(L3 { family: FAMILY_V6, src, dst, proto: next, l4_off: l4, l3_end, later_fragment })
}
