//! Cuts GRO/TSO super-frames into wire-sized TCP segments.
//!
//! tcpdump on a Linux host records received frames after GRO and sent ones before TSO, so a
//! capture holds TCP "frames" of up to 64 KiB that never crossed the wire as such. XDP sees
//! the wire segments, and BPF_PROG_TEST_RUN takes at most one page per XDP frame. Replay
//! therefore cuts every oversized TCP frame into segments of at most `WIRE_MTU` bytes of IP
//! packet, with consecutive sequence numbers and the same headers, just as TSO would have.
//! The record walker's counts do not depend on where segments are cut, so byte totals stay
//! exact; packet counts are those of an MTU-1500 link. A frags-aware (xdp.frags) program was
//! the alternative: it would need a second code path in the kernel for an offline-only case.

/// IP packet size of the segments produced: Ethernet's MTU.
pub const WIRE_MTU: usize = 1500;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

/// Calls `out` once per wire segment of `frame` (once with the frame itself when it needs no
/// cutting or is not a plain TCP frame).
pub fn for_each_segment(frame: &[u8], mut out: impl FnMut(&[u8])) {
    match split_points(frame) {
        Some(h) if frame.len() > h.l3_off + WIRE_MTU => cut(frame, &h, &mut out),
        _ => out(frame),
    }
}

struct Headers {
    l3_off: usize,
    v4: bool,
    /// Offset of the TCP payload (end of all headers).
    payload_off: usize,
    /// Offset of the TCP header.
    tcp_off: usize,
    /// End of the IP packet according to its length field.
    l3_end: usize,
}

fn be16(b: &[u8], off: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]) as usize)
}

pub const ETH_P_IPV4: usize = 0x0800;
pub const ETH_P_IPV6: usize = 0x86dd;

/// The EtherType after any VLAN tags, and the offset of the header it announces.
pub fn l3_start(f: &[u8]) -> Option<(usize, usize)> {
    let mut off = ETH_HLEN;
    let mut proto = be16(f, 12)?;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != 0x8100 && proto != 0x88a8 {
            break;
        }
        proto = be16(f, off + 2)?;
        off += VLAN_HLEN;
    }
    Some((proto, off))
}

fn split_points(f: &[u8]) -> Option<Headers> {
    let (proto, off) = l3_start(f)?;
    let (v4, tcp_off, l3_end) = match proto {
        ETH_P_IPV4 => {
            let ihl = (*f.get(off)? as usize & 0xf) * 4;
            if f.get(off + 9) != Some(&6) || be16(f, off + 6)? & 0x3fff != 0 {
                return None; // not TCP, or a fragment
            }
            let total = be16(f, off + 2)?;
            // GRO/TSO frames above 64 KiB (BIG TCP) carry 0 here: use the frame length.
            (true, off + ihl, if total == 0 { f.len() } else { off + total })
        }
        ETH_P_IPV6 => {
            if *f.get(off + 6)? != 6 {
                return None; // extension headers: not produced by GRO/TSO for TCP
            }
            let plen = be16(f, off + 4)?;
            (false, off + 40, if plen == 0 { f.len() } else { off + 40 + plen })
        }
        _ => return None,
    };
    let doff = (*f.get(tcp_off + 12)? as usize >> 4) * 4;
    let payload_off = tcp_off + doff;
    if payload_off > l3_end || l3_end > f.len() {
        return None;
    }
    Some(Headers { l3_off: off, v4, payload_off, tcp_off, l3_end })
}

fn cut(f: &[u8], h: &Headers, out: &mut impl FnMut(&[u8])) {
    let hdr = &f[..h.payload_off];
    let payload = &f[h.payload_off..h.l3_end];
    let mss = WIRE_MTU - (h.payload_off - h.l3_off);
    let seq0 = u32::from_be_bytes(f[h.tcp_off + 4..h.tcp_off + 8].try_into().expect("4 bytes"));
    let flags = f[h.tcp_off + 13];
    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    let chunks = payload.chunks(mss);
    let last = chunks.len() - 1;
    let mut buf = Vec::with_capacity(h.payload_off + mss);
    for (i, chunk) in chunks.enumerate() {
        buf.clear();
        buf.extend_from_slice(hdr);
        buf.extend_from_slice(chunk);
        let l3_len = buf.len() - h.l3_off;
        if h.v4 {
            buf[h.l3_off + 2..h.l3_off + 4].copy_from_slice(&(l3_len as u16).to_be_bytes());
            let ihl = (buf[h.l3_off] as usize & 0xf) * 4;
            buf[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&[0, 0]);
            let sum = crate::checksum::internet(&buf[h.l3_off..h.l3_off + ihl]);
            buf[h.l3_off + 10..h.l3_off + 12].copy_from_slice(&sum.to_be_bytes());
        } else {
            buf[h.l3_off + 4..h.l3_off + 6].copy_from_slice(&((l3_len - 40) as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        buf[h.tcp_off + 4..h.tcp_off + 8].copy_from_slice(&seq.to_be_bytes());
        if i != last {
            buf[h.tcp_off + 13] = flags & !(FIN | PSH);
        }
        out(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(payload: usize, seq: u32) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[14 + 9] = 6;
        f[34 + 4..34 + 8].copy_from_slice(&seq.to_be_bytes());
        f[34 + 12] = 5 << 4;
        f[34 + 13] = 0x19; // FIN PSH ACK
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn cuts_into_mss_segments_with_consecutive_seqs() {
        let f = tcp_frame(4000, u32::MAX - 10);
        let mut segs = Vec::new();
        for_each_segment(&f, |s| segs.push(s.to_vec()));
        assert_eq!(segs.len(), 3);
        let mss = 1460;
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(seq, (u32::MAX - 10).wrapping_add((i * mss) as u32));
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14);
            assert_eq!(crate::checksum::internet(&s[14..34]), 0, "header checksum verifies");
            assert_eq!(s[47] & 0x09, if i == 2 { 0x09 } else { 0 });
            payload.extend_from_slice(&s[54..]);
        }
        assert_eq!(payload, f[54..]);
        assert_eq!(segs.iter().map(|s| s.len() - 54).collect::<Vec<_>>(), [1460, 1460, 1080]);
    }

    #[test]
    fn leaves_wire_sized_frames_alone() {
        let f = tcp_frame(1460, 1);
        let mut n = 0;
        for_each_segment(&f, |s| {
            assert_eq!(s, &f[..]);
            n += 1;
        });
        assert_eq!(n, 1);
    }
}
