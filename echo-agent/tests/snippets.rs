//! Snippets through BPF_PROG_TEST_RUN: the programs copy exactly the ClientHello that opens
//! a device's stream and the DNS responses sent to it, nothing else; and mutated ClientHellos
//! and DNS responses never upset the programs or the user-space parsers.

use std::net::IpAddr;

use echo_agent::{
    clock::Clock,
    device::Mac,
    events::{self, Item, Rings},
    loader::Programs,
    names::{self, Learned, Source},
    testrun,
};
use echo_common::{Snippet, SNIPPET_BYTES, SNIPPET_CLIENT_HELLO, SNIPPET_DNS};
use simple_dns::{rdata, Name, Packet, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE};
use xtask::{
    packets::{udp_v4, TcpFrame, ACK, DEVICE_MAC, HOTSPOT_MAC, PSH, SYN},
    tls::client_hello,
};

const ISN: u32 = 1_000;
const HOST: &str = "avs-alexa-12-na.amazon.com";

/// Loaded programs and their ring buffers.
fn load() -> (Programs, Rings) {
    let mut progs = Programs::load(&[], Clock::Monotonic).expect("load programs (root needed)");
    progs.set_devices(&[Mac(DEVICE_MAC)]).unwrap();
    let rings = progs.rings().unwrap();
    (progs, rings)
}

/// Runs `frames` and returns the snippets they produced.
fn snippets((progs, rings): &mut (Programs, Rings), frames: &[Vec<u8>]) -> Vec<Snippet> {
    for f in frames {
        testrun::run_one(progs, f, 0, &[Mac(DEVICE_MAC)]).unwrap();
    }
    let mut out = Vec::new();
    events::drain_all(rings, |i| {
        if let Item::Snippet(s) = i {
            out.push(*s);
        }
    });
    out
}

fn segment(seq: u32, flags: u8, payload: Vec<u8>) -> Vec<u8> {
    TcpFrame::upload_v4(seq, flags, payload).build()
}

/// A DNS response to the device from 10.77.2.12:53: `HOST` is a CNAME for a name whose
/// address is 10.77.2.10.
fn dns_response() -> Vec<u8> {
    let mut p = Packet::new_reply(1);
    p.questions.push(Question::new(Name::new_unchecked(HOST), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
    let cname = rdata::CNAME(Name::new_unchecked("pitangui.amazon.com"));
    p.answers.push(ResourceRecord::new(Name::new_unchecked(HOST), CLASS::IN, 60, rdata::RData::CNAME(cname)));
    let a = rdata::A { address: u32::from_be_bytes([10, 77, 2, 10]) };
    p.answers.push(ResourceRecord::new(Name::new_unchecked("pitangui.amazon.com"), CLASS::IN, 60, rdata::RData::A(a)));
    p.build_bytes_vec_compressed().unwrap()
}

fn dns_frame(payload: &[u8], to_device: bool) -> Vec<u8> {
    if to_device {
        udp_v4((HOTSPOT_MAC, DEVICE_MAC), [10, 77, 2, 12], [10, 77, 1, 2], (53, 40_053), payload)
    } else {
        udp_v4((DEVICE_MAC, HOTSPOT_MAC), [10, 77, 1, 2], [10, 77, 2, 12], (40_053, 53), payload)
    }
}

#[test]
fn the_opening_client_hello_and_dns_responses_are_copied_exactly() {
    let mut progs = load();
    let ch = client_hello(HOST).unwrap();
    let next = ISN + 1 + ch.len() as u32;
    let dns = dns_response();
    let frames = [
        segment(ISN, SYN, Vec::new()),
        segment(ISN + 1, PSH | ACK, ch.clone()),
        // Not the stream's start: a retransmission, and a later segment that starts like one.
        segment(ISN + 1, PSH | ACK, ch.clone()),
        segment(next, PSH | ACK, ch.clone()),
        dns_frame(&dns, true),
        // The device's own DNS traffic upward (its queries) is not copied.
        dns_frame(&dns, false),
    ];
    let got = snippets(&mut progs, &frames);
    let summary: Vec<(u8, u32, u32, u16, u8)> = got.iter().map(|s| (s.kind, s.len, s.wire_len, s.port, s.device)).collect();
    assert_eq!(summary, vec![(SNIPPET_CLIENT_HELLO, ch.len() as u32, ch.len() as u32, 443, 0), (SNIPPET_DNS, dns.len() as u32, dns.len() as u32, 53, 0)]);
    assert_eq!(got[0].payload(), &ch[..]);
    assert_eq!(got[1].payload(), &dns[..]);
    let server: IpAddr = [10, 77, 2, 10].into();
    assert_eq!(names::learn(&got[0]), vec![Learned { ip: server, name: HOST.into(), source: Source::Sni, ttl: None }]);
    assert_eq!(names::learn(&got[1]), vec![Learned { ip: server, name: HOST.into(), source: Source::Dns, ttl: Some(60) }]);
}

#[test]
fn long_payloads_are_cut_at_the_snippet_size() {
    let mut progs = load();
    let mut ch = client_hello(HOST).unwrap();
    // The same ClientHello grown past one snippet by a padding extension the record claims.
    let pad = 2_000 - ch.len();
    let grow = |v: &mut Vec<u8>, at: usize, by: usize| {
        let n = u16::from_be_bytes([v[at], v[at + 1]]) as usize + by;
        v[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
    };
    grow(&mut ch, 3, pad);
    grow(&mut ch, 7, pad);
    ch.extend([0, 21]);
    ch.extend(((pad - 4) as u16).to_be_bytes());
    ch.resize(2_000, 0);
    let got = snippets(&mut progs, &[segment(ISN, SYN, Vec::new()), segment(ISN + 1, PSH | ACK, ch.clone())]);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].len, got[0].wire_len), (SNIPPET_BYTES as u32, 2_000));
    assert_eq!(got[0].payload(), &ch[..SNIPPET_BYTES]);
}

#[test]
fn mutated_client_hellos_and_dns_responses_are_harmless() {
    let mut progs = load();
    let ch = client_hello(HOST).unwrap();
    let dns = dns_response();
    let mut next = xtask::packets::xorshift(0x2545_f491_4f6c_dd1du64);
    let mut mutate = |seed: &[u8]| {
        let mut p = seed.to_vec();
        for _ in 0..(1 + next() % 6) {
            let pos = (next() % p.len() as u64) as usize;
            p[pos] = next() as u8;
        }
        if next() % 3 == 0 {
            p.truncate(1 + (next() % p.len() as u64) as usize);
        }
        p
    };
    const ROUNDS: u32 = 5_000;
    let (mut copied, mut named) = (0, 0);
    for round in 0..ROUNDS {
        // Each round a fresh flow (its own port), so every ClientHello opens a stream.
        let port = 10_000 + round as u16;
        let mut syn = TcpFrame::upload_v4(ISN, SYN, Vec::new());
        syn.sport = port;
        let mut hello = TcpFrame::upload_v4(ISN + 1, PSH | ACK, mutate(&ch));
        hello.sport = port;
        let payload = mutate(&dns);
        for s in snippets(&mut progs, &[syn.build(), hello.build(), dns_frame(&payload, true)]) {
            copied += 1;
            assert_eq!(s.len, s.wire_len.min(SNIPPET_BYTES as u32), "round {round}");
            for l in names::learn(&s) {
                assert_eq!(names::clean_name(&l.name).as_deref(), Some(l.name.as_str()), "round {round}");
                named += 1;
            }
        }
    }
    eprintln!("{ROUNDS} rounds: {copied} snippets copied, {named} names learned from mutated input");
    assert!(copied >= ROUNDS as usize, "every DNS response is copied: {copied}");
}
