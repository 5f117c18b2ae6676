//! Marker pings: one ICMP echo request from a namespace, through a raw socket (what the
//! research controller did with `ping` at each moment of a trial).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

use crate::netns::spawn_in;

/// Sends one echo request to `dst` from namespace `ns` (no wait for the reply).
pub fn echo_request(ns: &str, dst: Ipv4Addr, seq: u16) -> Result<()> {
    echo_requests(ns, dst, seq, 1)
}

/// Sends `count` echo requests to `dst` from namespace `ns`, sequence numbers from `seq` on,
/// as fast as the socket takes them (a flood, when `count` is large), without waiting for
/// replies.
pub fn echo_requests(ns: &str, dst: Ipv4Addr, seq: u16, count: u32) -> Result<()> {
    spawn_in(ns, move || -> Result<()> {
        // SAFETY: plain socket calls on a buffer we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP);
            if fd < 0 {
                bail!("raw ICMP socket: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            for i in 0..count {
                let seq = seq.wrapping_add(i as u16);
                let mut pkt = [8u8, 0, 0, 0, 0x45, 0x43, (seq >> 8) as u8, seq as u8, b'e', b'c', b'h', b'o'];
                let sum = checksum(&pkt);
                pkt[2..4].copy_from_slice(&sum.to_be_bytes());
                let n = libc::sendto(fd, pkt.as_ptr() as *const _, pkt.len(), 0, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_in>() as u32);
                if n != pkt.len() as isize {
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    bail!("sending echo request {i} to {dst}: {err}");
                }
            }
            libc::close(fd);
        }
        Ok(())
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
