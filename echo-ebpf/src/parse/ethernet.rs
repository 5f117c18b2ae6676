//! Ethernet II with up to two VLAN tags (802.1Q, 802.1ad QinQ).
use super::Packet;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Offsets of the addresses in the Ethernet header.
pub const DST_MAC_OFF: usize = 0;
pub const SRC_MAC_OFF: usize = 6;
/// Offset of the (outermost) EtherType.
const ETHERTYPE_OFF: usize = 12;
/// Tags we look through: 802.1ad puts an outer S-tag before an inner C-tag, so two are
/// enough for every standard stacking; deeper stacks are classified `other`.
const MAX_VLAN_TAGS: usize = 2;
const VLAN_HLEN: usize = 4;

/// Returns the ethertype after any VLAN tags and the offset of the layer-3 header.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &P) -> Option<(u16, usize)> {
    let mut proto = u16::from_be(pkt.read_head::<u16, ETHERTYPE_OFF>()?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // The tag's TCI (2 bytes) is followed by the encapsulated ethertype.
        proto = u16::from_be(pkt.read::<u16>(off + 2)?);
        off += VLAN_HLEN;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return None;
    }
    Some((proto, off))
}
