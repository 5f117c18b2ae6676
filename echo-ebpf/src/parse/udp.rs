//! UDP: ports and where the payload starts.
use super::{Packet, USUAL_L4_OFF};

const HLEN: usize = 8;

pub struct Udp {
    pub sport: u16,
    pub dport: u16,
    pub payload_off: usize,
}

#[inline(always)]
pub fn parse<P: Packet>(pkt: &P, off: usize) -> Option<Udp> {
    let h: [u8; 4] = pkt.read_usual::<_, USUAL_L4_OFF>(off)?;
    Some(Udp { sport: u16::from_be_bytes([h[0], h[1]]), dport: u16::from_be_bytes([h[2], h[3]]), payload_off: off + HLEN })
}
