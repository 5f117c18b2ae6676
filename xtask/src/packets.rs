//! Hand-built Ethernet frames for table-driven fixtures (test_run) and benchmarks.

/// The simulated Echo's MAC in every test topology and fixture.
pub const DEVICE_MAC: [u8; 6] = [0x02, 0xec, 0x40, 0x00, 0x00, 0x01];
/// The hotspot side of the device link.
pub const HOTSPOT_MAC: [u8; 6] = [0x02, 0xec, 0x40, 0x00, 0x01, 0x01];

#[derive(Clone, Debug)]
pub enum Ip {
    V4 { src: [u8; 4], dst: [u8; 4], options: Vec<u8> },
    /// `ext`: extension headers as (type, body); each body is padded to its header's length unit.
    V6 { src: [u8; 16], dst: [u8; 16], ext: Vec<(u8, Vec<u8>)> },
}

/// A TCP segment in an Ethernet frame, optionally VLAN-tagged.
#[derive(Clone, Debug)]
pub struct TcpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// (TPID, VID) per tag, outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub ip: Ip,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

impl TcpFrame {
    /// A device → 10.77.2.10:443 segment over IPv4.
    pub fn upload_v4(seq: u32, flags: u8, payload: Vec<u8>) -> Self {
        TcpFrame {
            src_mac: DEVICE_MAC,
            dst_mac: HOTSPOT_MAC,
            vlans: Vec::new(),
            ip: Ip::V4 { src: [10, 77, 1, 2], dst: [10, 77, 2, 10], options: Vec::new() },
            sport: 40000,
            dport: 443,
            seq,
            flags,
            payload,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64 + self.payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        let mut tcp = Vec::with_capacity(20 + self.payload.len());
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&1u32.to_be_bytes()); // ack number
        // Data offset 8 words: 12 bytes of options (NOP NOP timestamps), as Linux sends.
        tcp.push(8 << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        tcp.extend_from_slice(&self.payload);
        match &self.ip {
            Ip::V4 { src, dst, options } => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let hlen = 20 + options.len();
                assert!(hlen % 4 == 0 && hlen <= 60, "IPv4 options pad to 4 bytes, 40 at most");
                let total = (hlen + tcp.len()) as u16;
                f.push(0x40 | (hlen / 4) as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
                f.extend_from_slice(src);
                f.extend_from_slice(dst);
                f.extend_from_slice(options);
            }
            Ip::V6 { src, dst, ext } => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut chain = Vec::new();
                let first = ext.first().map_or(6, |e| e.0);
                for (i, (_, body)) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(6, |e| e.0);
                    // Body padded so that the header is a multiple of 8 bytes.
                    let len = (2 + body.len()).div_ceil(8) * 8;
                    chain.push(next);
                    chain.push((len / 8 - 1) as u8);
                    chain.extend_from_slice(body);
                    chain.resize(chain.len() + len - 2 - body.len(), 0);
                }
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((chain.len() + tcp.len()) as u16).to_be_bytes());
                f.push(first);
                f.push(64);
                f.extend_from_slice(src);
                f.extend_from_slice(dst);
                f.extend_from_slice(&chain);
            }
        }
        f.extend_from_slice(&tcp);
        f
    }
}

/// A TLS record: header with `content_type`, version 0x0303 and `len`, then `len` filler bytes.
pub fn tls_record(content_type: u8, len: usize) -> Vec<u8> {
    let mut r = vec![content_type, 3, 3];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    r.extend((0..len).map(|i| (i * 7 + 0x41) as u8));
    r
}

/// Concatenated records of `(content_type, len)`.
pub fn tls_stream(records: &[(u8, usize)]) -> Vec<u8> {
    records.iter().flat_map(|&(ct, len)| tls_record(ct, len)).collect()
}

/// A TLS application-data record's content type.
pub const TLS_APP_DATA: u8 = 23;

/// A device's upload: a SYN with `isn`, then `n` segments each carrying one `payload`-byte
/// application-data record (5-byte header and payload).
pub fn one_record_upload(isn: u32, n: usize, payload: usize) -> Vec<Vec<u8>> {
    let record = 5 + payload;
    let stream = tls_stream(&vec![(TLS_APP_DATA, payload); n]);
    let mut frames = vec![TcpFrame::upload_v4(isn, SYN, Vec::new()).build()];
    for (i, r) in stream.chunks(record).enumerate() {
        let seq = isn.wrapping_add(1).wrapping_add((i * record) as u32);
        frames.push(TcpFrame::upload_v4(seq, ACK | PSH, r.to_vec()).build());
    }
    frames
}

/// A UDP datagram over IPv4 in an Ethernet frame (checksums zero: the programs never check).
pub fn udp_v4(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&ports.0.to_be_bytes());
    f.extend_from_slice(&ports.1.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A xorshift64 generator from `seed` (non-zero): the deterministic mutations of the
/// fixtures' fuzz loops, reproducible run after run.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A legacy pcap file (link type Ethernet) of `frames`, one second apart from 1,700,000,000.
pub fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    // Magic, version 2.4, zone, sigfigs, snaplen, link type.
    for v in [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4], 65_535u32.to_le_bytes(), 1u32.to_le_bytes()] {
        out.extend(v);
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [(1_700_000_000 + i as u32).to_le_bytes(), 0u32.to_le_bytes(), (f.len() as u32).to_le_bytes(), (f.len() as u32).to_le_bytes()] {
            out.extend(v);
        }
        out.extend(f);
    }
    out
}
