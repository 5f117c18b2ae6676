//! Destination names. The programs send snippets (see `echo_common::snippets`): the
//! ClientHello opening each TLS stream of a device, whose server_name extension (SNI) names the
//! server it connects to, and DNS responses to a device, whose A/AAAA answers (after CNAMEs)
//! name addresses it is about to use. Parsing is done by maintained crates (`tls-parser`,
//! `simple-dns`); only the name and the address are kept.
//!
//! Per device, a bounded table maps addresses to names. SNI wins over DNS (it is what the
//! device asked that very server for), DNS over nothing. A DNS name lives for its TTL; any name
//! also lives while its address carries traffic and `NAME_IDLE` after, so a connection that
//! outlasts the TTL (the Echo keeps its cloud connection open for hours) stays named.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use echo_common::{Snippet, SNIPPET_CLIENT_HELLO, SNIPPET_DNS};
use serde::Serialize;
use simple_dns::rdata::RData;
use tls_parser::{SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};

use crate::replay::addr_ip;

/// Where a name came from. SNI wins over DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Dns,
    Sni,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Dns => "dns",
            Source::Sni => "sni",
        }
    }
}

/// A name learned for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub ip: IpAddr,
    pub name: String,
    pub source: Source,
    /// DNS TTL in seconds; `None` for SNI.
    pub ttl: Option<u32>,
}

/// Longest DNS name (RFC 1035 §2.3.4, in text form without the final dot).
const MAX_NAME_LEN: usize = 253;

/// CNAME links followed from an address record back to the name asked for; real chains have
/// two or three, and a loop must end.
const MAX_CNAME_CHAIN: usize = 8;

/// A host name as exported: lower case, no final dot, letters, digits, '-', '_' and '.' only.
/// `None` for anything else, so a hostile packet cannot put arbitrary text into labels.
pub fn clean_name(raw: &str) -> Option<String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.split('.').any(str::is_empty);
    ok.then_some(name)
}

/// The names a snippet teaches; empty when it does not parse.
pub fn learn(s: &Snippet) -> Vec<Learned> {
    match s.kind {
        SNIPPET_CLIENT_HELLO => sni(s.payload())
            .map(|name| Learned { ip: addr_ip(&s.addr, s.family), name, source: Source::Sni, ttl: None })
            .into_iter()
            .collect(),
        SNIPPET_DNS => dns_answers(s.payload()),
        _ => Vec::new(),
    }
}

/// The host name in a ClientHello record's server_name extension. `payload` may be cut
/// short (a ClientHello longer than one segment): extensions are then read as far as they go.
pub fn sni(payload: &[u8]) -> Option<String> {
    if let Ok((_, record)) = tls_parser::parse_tls_plaintext(payload) {
        for msg in &record.msg {
            if let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = msg {
                let (_, exts) = tls_parser::parse_tls_client_hello_extensions(ch.ext?).ok()?;
                return exts.iter().find_map(host_name);
            }
        }
        return None;
    }
    // Cut short: skip the fixed fields by their lengths and parse whole extensions.
    let mut rest = extensions_of_cut_client_hello(payload)?;
    while let Ok((next, ext)) = tls_parser::parse_tls_client_hello_extension(rest) {
        if let Some(name) = host_name(&ext) {
            return Some(name);
        }
        rest = next;
    }
    None
}

fn host_name(ext: &TlsExtension) -> Option<String> {
    let TlsExtension::SNI(names) = ext else { return None };
    names.iter().find(|(t, _)| *t == SNIType::HostName).and_then(|(_, n)| clean_name(std::str::from_utf8(n).ok()?))
}

/// The extension bytes present in a ClientHello record cut short (RFC 8446 §4.1.2): record
/// header (5), handshake header (4), version (2), random (32), then the session id, cipher
/// suites and compression methods, each behind its length, and the extensions' length (2).
fn extensions_of_cut_client_hello(p: &[u8]) -> Option<&[u8]> {
    let mut at = 5 + 4 + 2 + 32;
    for width in [1usize, 2, 1] {
        let len = p.get(at..at + width)?.iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        at += width + len;
    }
    p.get(at + 2..)
}

/// Addresses and names in a DNS response: each A/AAAA answer, named by the start of its
/// CNAME chain (the name the device asked for).
pub fn dns_answers(payload: &[u8]) -> Vec<Learned> {
    let Ok(packet) = simple_dns::Packet::parse(payload) else { return Vec::new() };
    if !packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return Vec::new();
    }
    // target -> alias, from "alias CNAME target".
    let mut alias_of: HashMap<String, String> = HashMap::new();
    for rr in &packet.answers {
        if let RData::CNAME(target) = &rr.rdata {
            alias_of.insert(target.0.to_string().to_ascii_lowercase(), rr.name.to_string().to_ascii_lowercase());
        }
    }
    let mut out = Vec::new();
    for rr in &packet.answers {
        let ip = match &rr.rdata {
            RData::A(a) => IpAddr::from(a.address.to_be_bytes()),
            RData::AAAA(a) => IpAddr::from(a.address.to_be_bytes()),
            _ => continue,
        };
        let mut name = rr.name.to_string().to_ascii_lowercase();
        for _ in 0..MAX_CNAME_CHAIN {
            match alias_of.get(&name) {
                Some(alias) => name = alias.clone(),
                None => break,
            }
        }
        if let Some(name) = clean_name(&name) {
            out.push(Learned { ip, name, source: Source::Dns, ttl: Some(rr.ttl) });
        }
    }
    out
}

/// Names kept per device: a household device talks to a few dozen hosts; a device resolving
/// thousands (a scan, a hostile DNS server) pushes out the entries that would expire first.
pub const MAX_NAMES_PER_DEVICE: usize = 4096;

/// How long a name outlives the last traffic to its address (and, for DNS, its TTL).
pub const NAME_IDLE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub source: Source,
    /// Session-clock nanoseconds: the end of the DNS TTL (0 for SNI), and the last time the
    /// name was learned or its address carried traffic.
    ttl_end: u64,
    last_used: u64,
}

impl Entry {
    fn expires(&self) -> u64 {
        self.ttl_end.max(self.last_used.saturating_add(NAME_IDLE.as_nanos() as u64))
    }
}

/// Address-to-name tables, per device index.
#[derive(Default)]
pub struct NameTable {
    devices: HashMap<u8, HashMap<IpAddr, Entry>>,
    /// Changes on every insertion, rename and removal (so exporters refresh only then).
    pub version: u64,
}

impl NameTable {
    /// Takes `l` for `device` at `now` (session-clock nanoseconds).
    pub fn learn(&mut self, device: u8, l: Learned, now: u64) {
        let table = self.devices.entry(device).or_default();
        let ttl_end = l.ttl.map_or(0, |t| now.saturating_add(t as u64 * 1_000_000_000));
        if let Some(e) = table.get_mut(&l.ip) {
            if e.source > l.source && now < e.expires() {
                return; // SNI wins over DNS.
            }
            if e.name != l.name || e.source != l.source {
                self.version += 1;
            }
            *e = Entry { name: l.name, source: l.source, ttl_end, last_used: now };
            return;
        }
        if table.len() >= MAX_NAMES_PER_DEVICE {
            if let Some(ip) = table.iter().min_by_key(|(_, e)| e.expires()).map(|(ip, _)| *ip) {
                table.remove(&ip);
            }
        }
        table.insert(l.ip, Entry { name: l.name, source: l.source, ttl_end, last_used: now });
        self.version += 1;
    }

    /// Traffic to `ip` at `now` keeps its name alive.
    pub fn touch(&mut self, device: u8, ip: IpAddr, now: u64) {
        if let Some(e) = self.devices.get_mut(&device).and_then(|t| t.get_mut(&ip)) {
            e.last_used = e.last_used.max(now);
        }
    }

    pub fn get(&self, device: u8, ip: &IpAddr) -> Option<&Entry> {
        self.devices.get(&device)?.get(ip)
    }

    /// Forgets names expired at `now`.
    pub fn sweep(&mut self, now: u64) {
        for table in self.devices.values_mut() {
            let before = table.len();
            table.retain(|_, e| e.expires() > now);
            if table.len() != before {
                self.version += 1;
            }
        }
    }

    /// Every (device, address, entry).
    pub fn iter(&self) -> impl Iterator<Item = (u8, &IpAddr, &Entry)> {
        self.devices.iter().flat_map(|(d, t)| t.iter().map(move |(ip, e)| (*d, ip, e)))
    }
}

/// `--group SUFFIX=GROUP`: destinations whose name is SUFFIX or ends in ".SUFFIX" belong to
/// GROUP, so a service is followed across its changing addresses. The longest suffix wins;
/// several suffixes may form one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Groups {
    /// (suffix, index into `names`), longest suffix first.
    rules: Vec<(String, u16)>,
    names: Vec<String>,
}

/// Index of a group in `Groups`, or `NO_GROUP`.
pub const NO_GROUP: u16 = u16::MAX;

impl Groups {
    pub fn new(rules: Vec<(String, String)>) -> Self {
        let mut g = Groups::default();
        for (suffix, group) in rules {
            let i = g.names.iter().position(|n| *n == group).unwrap_or_else(|| {
                g.names.push(group);
                g.names.len() - 1
            });
            g.rules.push((suffix, i as u16));
        }
        g.rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        g
    }

    /// Index of the group of `name`, or `NO_GROUP`.
    pub fn of(&self, name: &str) -> u16 {
        self.rules
            .iter()
            .find(|(suffix, _)| name == suffix || name.strip_suffix(suffix.as_str()).is_some_and(|head| head.ends_with('.')))
            .map_or(NO_GROUP, |(_, i)| *i)
    }

    pub fn name(&self, index: u16) -> Option<&str> {
        self.names.get(index as usize).map(String::as_str)
    }
}

/// Parses `SUFFIX=GROUP`.
pub fn parse_group(s: &str) -> Result<(String, String), String> {
    let (suffix, group) = s.split_once('=').ok_or_else(|| format!("expected SUFFIX=GROUP, got {s:?}"))?;
    let suffix = clean_name(suffix).ok_or_else(|| format!("{suffix:?} is not a DNS name suffix"))?;
    if group.is_empty() || !group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(format!("group name must be letters, digits, '-', '_' or '.', got {group:?}"));
    }
    Ok((suffix, group.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A ClientHello record with only a server_name extension (RFC 8446 §4.1.2, RFC 6066 §3).
    fn client_hello(host: &str) -> Vec<u8> {
        let mut sni = vec![0, 0];
        let list_len = (host.len() + 3) as u16;
        sni.extend((list_len + 2).to_be_bytes());
        sni.extend(list_len.to_be_bytes());
        sni.push(0);
        sni.extend((host.len() as u16).to_be_bytes());
        sni.extend(host.as_bytes());
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend((sni.len() as u16).to_be_bytes());
        body.extend(&sni);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(&hs);
        rec
    }

    #[test]
    fn sni_from_whole_and_cut_client_hellos() {
        let ch = client_hello("Avs-Alexa-12-NA.amazon.com");
        assert_eq!(sni(&ch).as_deref(), Some("avs-alexa-12-na.amazon.com"));
        // Cut inside a later extension: the record claims more than is there.
        let mut long = ch.clone();
        long.extend([0, 21, 0, 100]);
        long.extend([0u8; 20]);
        let grow = |at: usize, by: u16, v: &mut Vec<u8>| {
            let n = u16::from_be_bytes([v[at], v[at + 1]]) + by;
            v[at..at + 2].copy_from_slice(&n.to_be_bytes());
        };
        grow(3, 104, &mut long);
        grow(7, 104, &mut long);
        grow(5 + 4 + 2 + 32 + 1 + 2 + 2 + 2, 104, &mut long);
        assert_eq!(sni(&long).as_deref(), Some("avs-alexa-12-na.amazon.com"));
        assert_eq!(sni(&ch[..30]), None);
        assert_eq!(sni(&client_hello("bad name\n.com")), None);
        assert_eq!(sni(b""), None);
    }

    #[test]
    fn dns_answers_follow_cnames_to_the_question() {
        use simple_dns::{rdata, Name, Packet, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE};
        let mut p = Packet::new_reply(7);
        p.questions.push(Question::new(Name::new_unchecked("avs-alexa-12-na.amazon.com"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
        let cname = rdata::CNAME(Name::new_unchecked("pitangui.amazon.com"));
        p.answers.push(ResourceRecord::new(Name::new_unchecked("avs-alexa-12-na.amazon.com"), CLASS::IN, 60, RData::CNAME(cname)));
        p.answers.push(ResourceRecord::new(Name::new_unchecked("pitangui.amazon.com"), CLASS::IN, 30, RData::A(rdata::A { address: 0x0a4d020a })));
        p.answers.push(ResourceRecord::new(Name::new_unchecked("other.example"), CLASS::IN, 5, RData::AAAA(rdata::AAAA { address: 1 })));
        let bytes = p.build_bytes_vec().unwrap();
        let got = dns_answers(&bytes);
        assert_eq!(
            got,
            vec![
                Learned { ip: ip("10.77.2.10"), name: "avs-alexa-12-na.amazon.com".into(), source: Source::Dns, ttl: Some(30) },
                Learned { ip: ip("::1"), name: "other.example".into(), source: Source::Dns, ttl: Some(5) },
            ]
        );
        // A query (not a response), and a response cut short, teach nothing.
        let mut q = bytes.clone();
        q[2] &= 0x7f;
        assert!(dns_answers(&q).is_empty());
        assert!(dns_answers(&bytes[..bytes.len() - 3]).is_empty());
    }

    /// Mutated and cut ClientHellos and DNS responses: the parsers never panic, and whatever
    /// name they return is a clean one.
    #[test]
    fn parsers_survive_mutated_input() {
        let mut p = simple_dns::Packet::new_reply(1);
        let cname = simple_dns::rdata::CNAME(simple_dns::Name::new_unchecked("b.example"));
        p.answers.push(simple_dns::ResourceRecord::new(simple_dns::Name::new_unchecked("a.example"), simple_dns::CLASS::IN, 9, RData::CNAME(cname)));
        let a = simple_dns::rdata::A { address: 1 };
        p.answers.push(simple_dns::ResourceRecord::new(simple_dns::Name::new_unchecked("b.example"), simple_dns::CLASS::IN, 9, RData::A(a)));
        let seeds = [client_hello("avs-alexa-12-na.amazon.com"), p.build_bytes_vec_compressed().unwrap()];
        let mut next = xtask::packets::xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut names = 0;
        for i in 0..200_000u64 {
            let mut v = seeds[(i % 2) as usize].clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() % v.len() as u64) as usize;
                v[at] = next() as u8;
            }
            v.truncate(1 + (next() % v.len() as u64) as usize);
            let found: Vec<String> = if i % 2 == 0 { sni(&v).into_iter().collect() } else { dns_answers(&v).into_iter().map(|l| l.name).collect() };
            for n in found {
                assert_eq!(clean_name(&n).as_deref(), Some(n.as_str()));
                names += 1;
            }
        }
        assert!(names > 0, "some mutations still parse");
    }

    #[test]
    fn sni_wins_and_names_expire() {
        let s = 1_000_000_000u64;
        let l = |name: &str, source, ttl| Learned { ip: ip("10.0.0.1"), name: name.into(), source, ttl };
        let mut t = NameTable::default();
        t.learn(0, l("a.example", Source::Dns, Some(60)), 0);
        t.learn(0, l("b.example", Source::Sni, None), s);
        t.learn(0, l("c.example", Source::Dns, Some(60)), 2 * s);
        assert_eq!(t.get(0, &ip("10.0.0.1")).map(|e| (e.name.as_str(), e.source)), Some(("b.example", Source::Sni)));
        // Kept while traffic flows, forgotten NAME_IDLE after it stops.
        t.touch(0, ip("10.0.0.1"), 1000 * s);
        t.sweep(1000 * s + NAME_IDLE.as_nanos() as u64 - 1);
        assert!(t.get(0, &ip("10.0.0.1")).is_some());
        t.sweep(1000 * s + NAME_IDLE.as_nanos() as u64);
        assert!(t.get(0, &ip("10.0.0.1")).is_none());
        // A DNS name lives for its TTL even without traffic; an expired SNI gives way to DNS.
        t.learn(0, l("d.example", Source::Dns, Some(3600)), 0);
        t.sweep(3000 * s);
        assert_eq!(t.get(0, &ip("10.0.0.1")).map(|e| e.name.as_str()), Some("d.example"));
        t.learn(0, l("e.example", Source::Sni, None), 0);
        t.learn(0, l("f.example", Source::Dns, Some(1)), 700 * s);
        assert_eq!(t.get(0, &ip("10.0.0.1")).map(|e| e.name.as_str()), Some("f.example"));
    }

    #[test]
    fn tables_are_bounded() {
        let mut t = NameTable::default();
        for i in 0..(MAX_NAMES_PER_DEVICE as u32 + 10) {
            let l = Learned { ip: IpAddr::from(i.to_be_bytes()), name: format!("h{i}.example"), source: Source::Dns, ttl: Some(0) };
            t.learn(3, l, i as u64 * 1_000_000_000);
        }
        assert_eq!(t.iter().count(), MAX_NAMES_PER_DEVICE);
        // The ones expiring first went.
        assert!(t.get(3, &IpAddr::from(9u32.to_be_bytes())).is_none());
        assert!(t.get(3, &IpAddr::from(10u32.to_be_bytes())).is_some());
    }

    #[test]
    fn groups_match_whole_labels_longest_first() {
        let rules = ["amazon.com=alexa", "avs.amazon.com=avs", "amazonalexa.com=alexa"];
        let g = Groups::new(rules.iter().map(|r| parse_group(r).unwrap()).collect());
        assert_eq!(g.name(g.of("avs-alexa-12-na.amazon.com")), Some("alexa"));
        // Two suffixes, one group.
        assert_eq!(g.of("api.amazonalexa.com"), g.of("amazon.com"));
        assert_eq!(g.name(g.of("x.avs.amazon.com")), Some("avs"));
        assert_eq!(g.name(g.of("amazon.com")), Some("alexa"));
        assert_eq!(g.of("notamazon.com"), NO_GROUP);
        assert!(parse_group("amazon.com").is_err());
        assert!(parse_group("amazon.com=").is_err());
        assert!(parse_group("bad name=x").is_err());
        assert!(parse_group("a.com=x y").is_err());
        assert_eq!(clean_name("Example.COM."), Some("example.com".into()));
        assert_eq!(clean_name("a..b"), None);
    }
}
