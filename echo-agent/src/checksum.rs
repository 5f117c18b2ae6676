//! The Internet checksum (RFC 1071), for the IPv4 headers of cut GSO frames and the ICMP
//! echo requests of marker pings.

/// The one's complement of the one's complement sum of `b` as 16-bit big-endian words (an
/// odd last byte padded with zero).
pub fn internet(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_echo_request_and_an_odd_length() {
        // Type 8, code 0, id 0x1234, seq 1, no payload: ~(0x0800 + 0x1234 + 0x0001).
        assert_eq!(super::internet(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]), !(0x0800u16 + 0x1234 + 1));
        assert_eq!(super::internet(&[0xff, 0xff, 0x01]), !0x0100u16);
    }
}
