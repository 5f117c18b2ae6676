//! A small authoritative DNS server for the test topology (UDP, in the cloud namespace) and
//! the stub resolver the simulated devices use. Names exist only inside the namespaces: the
//! server answers from its zone and never forwards, and the resolver only asks it.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use simple_dns::{
    rdata::{RData, A, AAAA, CNAME},
    Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE,
};

use crate::netns::{server_v4, Service, Topology};

/// Where the topology's DNS server listens: port 53 on the third cloud server address.
pub fn dns_addr() -> SocketAddr {
    SocketAddr::new(server_v4(2), 53)
}

/// One record of the zone.
#[derive(Clone, Debug)]
pub enum Rr {
    Addr { name: String, ip: IpAddr, ttl: u32 },
    Cname { name: String, target: String, ttl: u32 },
}

/// The server; stops when dropped.
pub struct DnsServer {
    _service: Service,
}

impl DnsServer {
    pub fn start(topo: &Topology, addr: SocketAddr, zone: Vec<Rr>) -> Result<Self> {
        let bind = move || UdpSocket::bind(addr).and_then(|s| s.set_read_timeout(Some(Duration::from_millis(100))).map(|()| s));
        let serve = move |sock: UdpSocket, stop: Arc<AtomicBool>| {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = answer(&buf[..n], &zone) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        };
        Ok(DnsServer { _service: Service::start(&topo.cloud_ns, "DNS server", bind, serve)? })
    }
}

fn owner(rr: &Rr) -> &str {
    match rr {
        Rr::Addr { name, .. } | Rr::Cname { name, .. } => name,
    }
}

/// The wire bytes of the reply to an A question for `name` from `zone` (a fuzzing seed).
pub fn reply_bytes(zone: &[Rr], name: &str) -> Option<Vec<u8>> {
    let mut q = Packet::new_query(1);
    q.questions.push(Question::new(Name::new(name).ok()?, QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
    answer(&q.build_bytes_vec().ok()?, zone)
}

/// The reply to `query`: the CNAME chain from the question's name, then the addresses of the
/// asked type at its end.
fn answer(query: &[u8], zone: &[Rr]) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let question = q.questions.first()?;
    let want_v4 = question.qtype == QTYPE::TYPE(TYPE::A);
    let mut reply = Packet::new_reply(q.id());
    reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
    reply.questions.push(question.clone());
    let mut name = question.qname.to_string();
    for _ in 0..8 {
        for rr in zone.iter().filter(|rr| owner(rr) == name) {
            match rr {
                Rr::Cname { target, ttl, .. } => {
                    reply.answers.push(ResourceRecord::new(Name::new_unchecked(owner(rr)), CLASS::IN, *ttl, RData::CNAME(CNAME(Name::new_unchecked(target)))));
                }
                Rr::Addr { ip: IpAddr::V4(ip), ttl, .. } if want_v4 => {
                    reply.answers.push(ResourceRecord::new(Name::new_unchecked(owner(rr)), CLASS::IN, *ttl, RData::A(A { address: u32::from(*ip) })));
                }
                Rr::Addr { ip: IpAddr::V6(ip), ttl, .. } if !want_v4 => {
                    reply.answers.push(ResourceRecord::new(Name::new_unchecked(owner(rr)), CLASS::IN, *ttl, RData::AAAA(AAAA { address: u128::from(*ip) })));
                }
                Rr::Addr { .. } => {}
            }
        }
        match zone.iter().find_map(|rr| match rr {
            Rr::Cname { name: n, target, .. } if *n == name => Some(target.clone()),
            _ => None,
        }) {
            Some(t) => name = t,
            None => break,
        }
    }
    reply.build_bytes_vec_compressed().ok()
}

/// Asks `server` for `name`'s addresses (A when `v4`, else AAAA), from the calling thread's
/// namespace, as a device's stub resolver does.
pub fn resolve(server: SocketAddr, name: &str, v4: bool) -> Result<Vec<IpAddr>> {
    let sock = UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut q = Packet::new_query(0x4543);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    let qtype = QTYPE::TYPE(if v4 { TYPE::A } else { TYPE::AAAA });
    q.questions.push(Question::new(Name::new(name)?, qtype, QCLASS::CLASS(CLASS::IN), false));
    sock.send_to(&q.build_bytes_vec()?, server)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).with_context(|| format!("no DNS answer from {server} for {name}"))?;
    let reply = Packet::parse(&buf[..n])?;
    let ips: Vec<IpAddr> = reply
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::from(a.address.to_be_bytes())),
            RData::AAAA(a) => Some(IpAddr::from(a.address.to_be_bytes())),
            _ => None,
        })
        .collect();
    if ips.is_empty() {
        bail!("{server} has no address for {name}");
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_cname_chain() {
        let zone = vec![
            Rr::Cname { name: "a.example".into(), target: "b.example".into(), ttl: 60 },
            Rr::Addr { name: "b.example".into(), ip: "10.0.0.1".parse().unwrap(), ttl: 30 },
            Rr::Addr { name: "b.example".into(), ip: "fd00::1".parse().unwrap(), ttl: 30 },
        ];
        let mut q = Packet::new_query(9);
        q.questions.push(Question::new(Name::new_unchecked("a.example"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        let reply = answer(&q.build_bytes_vec().unwrap(), &zone).unwrap();
        let p = Packet::parse(&reply).unwrap();
        assert_eq!(p.id(), 9);
        assert_eq!(p.answers.len(), 2);
        assert!(matches!(&p.answers[1].rdata, RData::A(a) if a.address == 0x0a000001));
    }
}
