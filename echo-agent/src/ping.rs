//! Marker pings of the experiment runner: one ICMP (or ICMPv6) echo request through a raw
//! socket, no wait for the reply; what the research controller did with `ping` at each
//! moment of a trial. Needs CAP_NET_RAW.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

/// Bytes after the 8-byte ICMP header.
const PAYLOAD: &[u8] = b"echo-agent marker";

pub struct Pinger {
    v4: Option<socket2::Socket>,
    v6: Option<socket2::Socket>,
    id: u16,
    seq: u16,
}

impl Pinger {
    pub fn new() -> Self {
        Pinger { v4: None, v6: None, id: std::process::id() as u16, seq: 0 }
    }

    /// Sends one echo request to `ip`.
    pub fn ping(&mut self, ip: IpAddr) -> io::Result<()> {
        use socket2::{Domain, Protocol, Socket, Type};
        self.seq = self.seq.wrapping_add(1);
        let (slot, domain, proto, ty) = match ip {
            IpAddr::V4(_) => (&mut self.v4, Domain::IPV4, Protocol::ICMPV4, 8u8),
            IpAddr::V6(_) => (&mut self.v6, Domain::IPV6, Protocol::ICMPV6, 128u8),
        };
        if slot.is_none() {
            *slot = Some(Socket::new(domain, Type::RAW, Some(proto))?);
        }
        let mut pkt = vec![ty, 0, 0, 0];
        pkt.extend(self.id.to_be_bytes());
        pkt.extend(self.seq.to_be_bytes());
        pkt.extend(PAYLOAD);
        if ip.is_ipv4() {
            // The kernel fills in the ICMPv6 checksum itself (it covers a pseudo-header).
            let sum = crate::checksum::internet(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let n = slot.as_ref().expect("opened").send_to(&pkt, &SocketAddr::new(ip, 0).into())?;
        if n != pkt.len() {
            return Err(io::Error::other(format!("sent {n} of {} bytes", pkt.len())));
        }
        Ok(())
    }
}

impl Default for Pinger {
    fn default() -> Self {
        Self::new()
    }
}
