//! The simulated Echo, shared by the tests and the demo: a real TLS 1.3 client (rustls) in
//! the device namespace that resolves its cloud's name (`ECHO_HOST`, a CNAME, through the
//! topology's DNS server) and holds one long-lived connection to it, with that name as SNI,
//! following a plan
//! of heartbeats, voice commands, a trickle upload and a muted upload, with the controller's
//! marker pings around each framed command. It records the ground truth of what it sent.
//!
//! Sizes are TLS record payloads, as Wireshark's `tls.record.length` shows them. The suite is
//! pinned to TLS_AES_128_GCM_SHA256 so every record costs exactly `RECORD_OVERHEAD` bytes
//! beyond its plaintext, and the client's one encrypted handshake record (Finished) is
//! exactly `FINISHED_RECORD` bytes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::ServerName;

use crate::{
    dns::{self, dns_addr, DnsServer, Rr},
    netns::{marker_v4, spawn_in, Topology},
    tls::{client_config, provider_with, TlsServer, Version},
};

/// The cloud endpoint as the device knows it: a name it resolves, then connects to with that
/// name as SNI (real Echos talk to avs-alexa-*-na.amazon.com). Resolved only by the
/// topology's own DNS server.
pub const ECHO_HOST: &str = "avs-alexa-12-na.amazon.com";
/// The name `ECHO_HOST` is a CNAME for, which holds the address.
pub const ECHO_CNAME: &str = "pitangui.amazon.com";
/// The `--group` flag value that gathers the Echo's cloud.
pub const GROUP: &str = "amazon.com=alexa";
/// TTL of the zone's records, seconds.
pub const ZONE_TTL: u32 = 60;

/// The DNS zone naming the cloud at `ip`.
pub fn zone(ip: std::net::IpAddr) -> Vec<Rr> {
    vec![
        Rr::Cname { name: ECHO_HOST.into(), target: ECHO_CNAME.into(), ttl: ZONE_TTL },
        Rr::Addr { name: ECHO_CNAME.into(), ip, ttl: ZONE_TTL },
    ]
}

/// TLS 1.3 with AES-128-GCM: the inner content-type byte and the 16-byte tag.
pub const RECORD_OVERHEAD: u64 = 17;
/// The client's Finished (4-byte header + 32-byte SHA-256 verify_data) sealed as app data.
pub const FINISHED_RECORD: u64 = 36 + RECORD_OVERHEAD;
/// The client's close_notify alert (2 bytes) sealed as app data.
pub const CLOSE_NOTIFY_RECORD: u64 = 2 + RECORD_OVERHEAD;
/// Largest TLS plaintext per record.
const MAX_PLAINTEXT: usize = 16_384;

/// The simulator's messages inside TLS: kind, body length, response length (u32), and the
/// cloud's thinking time before it answers, in milliseconds (u16; all big endian).
const HEADER: usize = 11;
const KIND_DATA: u8 = 1;
/// The last message of a command: the cloud answers with the response length.
const KIND_LAST: u8 = 2;
/// The cloud's "thinking" time before it answers a household's command.
const RESPONSE_DELAY: Duration = Duration::from_millis(300);

/// Marker roles by index: the agent's `--marker` flags (`marker_flags`) and the pings agree.
pub const COMMAND_START: usize = 0;
pub const COMMAND_END: usize = 1;
pub const RESPONSE_START: usize = 2;
pub const RESPONSE_END: usize = 3;
pub const ROLES: [&str; 4] = ["command_start", "command_end", "response_start", "response_end"];

/// The simulated Echo's name in the agent's flags, metrics and API.
pub const DEVICE_NAME: &str = "echo";
/// Arms the household's framed commands rotate over.
pub const ARMS: [&str; 2] = ["I_1", "I_2"];

/// `echo-agent run` flags for watching the simulated household: the Echo as `DEVICE_NAME`,
/// the four markers, the arms, and a heartbeat interval that fits heartbeats 10× faster than
/// real (every 3 s and 9.1 s).
pub fn agent_flags(state: &std::path::Path) -> Vec<String> {
    let mac = crate::packets::DEVICE_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mut f: Vec<String> =
        ["--device", &format!("{mac}={DEVICE_NAME}"), "--state-dir", &state.display().to_string(), "--arms", &ARMS.join(","), "--heartbeat-min-interval", "1", "--group", GROUP]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for m in marker_flags() {
        f.extend(["--marker".to_string(), m]);
    }
    f
}

/// A mute hook that reports the switch to `agent`'s API, as a household automation would.
pub fn mute_via_api(agent: &crate::agent::Agent) -> Box<dyn FnMut(bool) -> Result<()> + Send> {
    let (ns, listen) = (agent.ns.clone(), agent.listen);
    Box::new(move |m: bool| {
        let r = crate::http::request(&ns, listen, "POST", &format!("/api/devices/{DEVICE_NAME}/muted"), if m { "true" } else { "false" })?;
        if r.status != 200 {
            bail!("mute: {} {}", r.status, r.body);
        }
        Ok(())
    })
}

/// `--marker IP=ROLE` values for the four marker addresses of a topology.
pub fn marker_flags() -> Vec<String> {
    ROLES.iter().enumerate().map(|(i, r)| format!("{}={r}", marker_v4(i))).collect()
}

/// Time between a marker ping and what it marks, so the ping is seen first.
const MARKER_LEAD: Duration = Duration::from_millis(50);
/// Pace of the wake-word burst (audio buffered before the wake word was recognised).
const BURST_PACE: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct Command {
    pub arm: usize,
    /// Record payload sizes sent back to back, then streamed every `pace`.
    pub burst: Vec<usize>,
    pub stream: Vec<usize>,
    pub pace: Duration,
    /// Response plaintext bytes (0: none).
    pub response: usize,
    /// Whether the controller pings the markers around it (a framed trial).
    pub framed: bool,
}

#[derive(Clone, Debug)]
pub enum Step {
    /// One record of this payload size.
    Heartbeat(usize),
    Command(Command),
    /// Records of these sizes, one every `every`: upload that is neither a heartbeat nor
    /// enough to open an interaction.
    Trickle { records: Vec<usize>, every: Duration },
    /// The household's automation reports the microphone state to the agent.
    Mute(bool),
}

/// Steps at offsets from the start.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub steps: Vec<(Duration, Step)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommandTruth {
    pub arm: usize,
    /// Epoch seconds just before the first and just after the last write.
    pub start: f64,
    pub end: f64,
    pub upload_bytes: u64,
    pub upload_records: u64,
    /// Response record payload bytes.
    pub download_bytes: u64,
    pub framed: bool,
    pub muted: bool,
}

/// What the simulator sent, in record payload bytes.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    pub commands: Vec<CommandTruth>,
    pub heartbeats: usize,
    pub heartbeat_bytes: u64,
    pub trickle_bytes: u64,
    /// When the mute switch was reported (epoch seconds) and to what.
    pub mutes: Vec<(f64, bool)>,
    /// Encrypted records that are not data (Finished, close_notify): app data on the wire.
    pub protocol_bytes: u64,
}

/// What the simulator calls out to: marker pings and the mute switch.
pub struct Hooks {
    pub marker: Box<dyn FnMut(usize) -> Result<()> + Send>,
    pub mute: Box<dyn FnMut(bool) -> Result<()> + Send>,
    /// Set to stop between steps (demo: Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

impl Hooks {
    /// Marker pings from the topology's controller namespace.
    pub fn controller(topo: &Topology, mute: Box<dyn FnMut(bool) -> Result<()> + Send>, stop: Arc<AtomicBool>) -> Self {
        let ns = topo.controller_ns.clone();
        let mut seq = 0u16;
        let marker = Box::new(move |i: usize| {
            seq = seq.wrapping_add(1);
            let std::net::IpAddr::V4(ip) = marker_v4(i) else { bail!("markers are IPv4") };
            crate::ping::echo_request(&ns, ip, seq)
        });
        Hooks { marker, mute, stop }
    }
}

/// The simulated cloud: accepts the Echo's connection and answers commands. Stops when
/// dropped.
/// The simulated cloud at `addr`, and the DNS server that names it.
pub struct Cloud {
    _server: TlsServer,
    _dns: DnsServer,
}

impl Cloud {
    pub fn start(topo: &Topology, addr: SocketAddr) -> Result<Self> {
        Ok(Cloud { _server: TlsServer::with(topo, vec![addr], answer)?, _dns: DnsServer::start(topo, dns_addr(), zone(addr.ip()))? })
    }
}

fn answer(sock: TcpStream, config: Arc<rustls::ServerConfig>, stop: &AtomicBool) -> Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config)?, sock);
    let mut header = [0u8; HEADER];
    loop {
        match read_full(&mut tls, &mut header, stop) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        let response = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
        let think = Duration::from_millis(u16::from_be_bytes([header[9], header[10]]) as u64);
        let mut body = vec![0u8; len];
        if !read_full(&mut tls, &mut body, stop)? {
            return Ok(());
        }
        if header[0] == KIND_LAST && response > 0 {
            thread::sleep(think);
            tls.write_all(&vec![0x5a; response])?;
            tls.flush()?;
        }
    }
}

/// Fills `buf`; false at the end of the stream or when stopped.
fn read_full(r: &mut impl Read, buf: &mut [u8], stop: &AtomicBool) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

pub(crate) fn epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// Response records and their payload bytes for `plaintext` bytes in one write.
pub fn sealed(plaintext: usize) -> (u64, u64) {
    let records = plaintext.div_ceil(MAX_PLAINTEXT) as u64;
    (records, plaintext as u64 + records * RECORD_OVERHEAD)
}

pub(crate) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A message that is not the last of a command.
pub(crate) fn send_data(tls: &mut Tls, record: usize) -> Result<()> {
    send(tls, KIND_DATA, record, 0, Duration::ZERO)
}

/// The last message of a command: the cloud answers `response` plaintext bytes (none when 0)
/// after `think`.
pub(crate) fn send_last(tls: &mut Tls, record: usize, response: usize, think: Duration) -> Result<()> {
    send(tls, KIND_LAST, record, response, think)
}

/// Sends one message as exactly one record of `record` payload bytes.
fn send(tls: &mut Tls, kind: u8, record: usize, response: usize, think: Duration) -> Result<()> {
    let plaintext = record.checked_sub(RECORD_OVERHEAD as usize).filter(|p| (HEADER..=MAX_PLAINTEXT).contains(p));
    let Some(plaintext) = plaintext else { bail!("record size {record} out of range") };
    let mut msg = vec![0u8; plaintext];
    msg[0] = kind;
    msg[1..5].copy_from_slice(&((plaintext - HEADER) as u32).to_be_bytes());
    msg[5..9].copy_from_slice(&(response as u32).to_be_bytes());
    msg[9..11].copy_from_slice(&(think.as_millis().min(u16::MAX as u128) as u16).to_be_bytes());
    tls.write_all(&msg)?;
    tls.flush()?;
    Ok(())
}

/// From the device namespace: resolves `ECHO_HOST`, checks it names `server`, and opens the
/// long-lived TLS connection (handshake done).
pub(crate) fn connect(server: SocketAddr) -> Result<Tls> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let config = client_config(Version::Tls13, provider_with(suite))?;
    let resolved = dns::resolve(dns_addr(), ECHO_HOST, server.is_ipv4())?;
    if !resolved.contains(&server.ip()) {
        bail!("{ECHO_HOST} resolved to {resolved:?}, not {}", server.ip());
    }
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(ECHO_HOST)?)?;
    let sock = TcpStream::connect_timeout(&server, Duration::from_secs(5)).with_context(|| format!("connect {server}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Ends the connection with close_notify; returns its record's payload bytes.
pub(crate) fn close(tls: &mut Tls) -> Result<u64> {
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(CLOSE_NOTIFY_RECORD)
}

/// Runs `plan` from the device namespace against the cloud at `server`.
pub fn run(topo: &Topology, server: SocketAddr, plan: Plan, mut hooks: Hooks) -> Result<thread::JoinHandle<Result<Truth>>> {
    spawn_in(&topo.device_ns, move || -> Result<Truth> {
        let mut tls = connect(server)?;
        let mut truth = Truth { protocol_bytes: FINISHED_RECORD, ..Default::default() };
        let mut muted = false;
        let t0 = Instant::now();
        for (at, step) in plan.steps {
            while Instant::now() < t0 + at {
                if hooks.stop.load(Ordering::Relaxed) {
                    truth.protocol_bytes += close(&mut tls)?;
                    return Ok(truth);
                }
                thread::sleep((t0 + at).saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
            }
            match step {
                Step::Heartbeat(size) => {
                    send_data(&mut tls, size)?;
                    truth.heartbeats += 1;
                    truth.heartbeat_bytes += size as u64;
                }
                Step::Trickle { records, every } => {
                    for (i, size) in records.iter().enumerate() {
                        if i > 0 {
                            thread::sleep(every);
                        }
                        send_data(&mut tls, *size)?;
                        truth.trickle_bytes += *size as u64;
                    }
                }
                Step::Mute(m) => {
                    truth.mutes.push((epoch(), m));
                    (hooks.mute)(m)?;
                    muted = m;
                }
                Step::Command(c) => truth.commands.push(command(&mut tls, &c, muted, &mut hooks)?),
            }
        }
        truth.protocol_bytes += close(&mut tls)?;
        Ok(truth)
    })
}

fn command(tls: &mut Tls, c: &Command, muted: bool, hooks: &mut Hooks) -> Result<CommandTruth> {
    if c.framed {
        (hooks.marker)(COMMAND_START)?;
        thread::sleep(MARKER_LEAD);
    }
    let sizes: Vec<(usize, Duration)> = c.burst.iter().map(|&s| (s, BURST_PACE)).chain(c.stream.iter().map(|&s| (s, c.pace))).collect();
    let start = epoch();
    for (i, &(size, pace)) in sizes.iter().enumerate() {
        let last = i + 1 == sizes.len();
        if last {
            send_last(tls, size, c.response, RESPONSE_DELAY)?;
        } else {
            send_data(tls, size)?;
        }
        if !last {
            thread::sleep(pace);
        }
    }
    let end = epoch();
    if c.framed {
        thread::sleep(MARKER_LEAD);
        (hooks.marker)(COMMAND_END)?;
    }
    if c.response > 0 {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = tls.read(&mut buf)?;
        if c.framed {
            (hooks.marker)(RESPONSE_START)?;
        }
        while got < c.response {
            let n = tls.read(&mut buf)?;
            if n == 0 {
                bail!("the cloud closed mid-response");
            }
            got += n;
        }
        if c.framed {
            (hooks.marker)(RESPONSE_END)?;
        }
    }
    Ok(CommandTruth {
        arm: c.arm,
        start,
        end,
        upload_bytes: sizes.iter().map(|s| s.0 as u64).sum(),
        upload_records: sizes.len() as u64,
        download_bytes: if c.response > 0 { sealed(c.response).1 } else { 0 },
        framed: c.framed,
        muted,
    })
}

/// The published heartbeats: record payload bytes and period in seconds.
pub const HEARTBEATS: [(usize, f64); 2] = [(100, 30.002), (99, 90.820)];
/// A voice command's wake-word burst: audio buffered before the wake word was recognised.
pub(crate) const BURST: [usize; 8] = [1_217; 8];
/// Streamed audio record size.
pub(crate) const STREAM_RECORD: usize = 1_467;
/// The published voice command (~2.5 s) uploads ~45 kB: the burst plus ~24 streamed records.
pub(crate) const STREAM_RECORDS: usize = 24;
/// Records streamed by the outlier command (a long query, ~98 kB).
const OUTLIER_RECORDS: usize = 60;
/// Response plaintext bytes (a spoken answer, downloaded).
const RESPONSE: usize = 20_000;
/// A trickle: 10 records of 717 B, 200 ms apart (~3.6 kB/s, below the activation rate).
const TRICKLE: [usize; 10] = [717; 10];
const TRICKLE_EVERY: Duration = Duration::from_millis(200);
/// Heartbeats stay this far from commands, so no interaction swallows one (the agent's
/// default idle gap is 2 s).
const QUIET: Duration = Duration::from_millis(3_500);
/// Heartbeats only, after the last slot.
const TAIL: Duration = Duration::from_secs(8);

/// A household's day, time-compressed: heartbeats, framed voice commands alternating over
/// arms, one upload while muted, one trickle.
#[derive(Clone, Debug)]
pub struct Household {
    /// Heartbeat periods are divided by this.
    pub compress: f64,
    /// Heartbeats only, before the first command.
    pub lead_in: Duration,
    /// Framed voice commands; their arms rotate over `arms`.
    pub commands: usize,
    pub arms: usize,
    /// From one command (or muted upload, or trickle) to the next.
    pub every: Duration,
    /// Pace of the streamed part of a command.
    pub pace: Duration,
    /// This command (index among the framed ones) streams `OUTLIER_RECORDS` records.
    pub outlier: Option<usize>,
    pub muted_upload: bool,
    pub trickle: bool,
}

impl Default for Household {
    fn default() -> Self {
        Household {
            compress: 10.0,
            lead_in: Duration::from_secs(8),
            commands: 6,
            arms: 2,
            every: Duration::from_secs(7),
            pace: Duration::from_millis(60),
            outlier: Some(4),
            muted_upload: true,
            trickle: true,
        }
    }
}

impl Household {
    /// The plan: slots `every` apart after the lead-in, heartbeats wherever they keep clear.
    pub fn plan(&self) -> Plan {
        #[derive(Clone, Copy)]
        enum Slot {
            Framed(usize),
            Muted,
            Trickle,
        }
        let mut slots: Vec<Slot> = (0..self.commands).map(Slot::Framed).collect();
        if self.muted_upload {
            slots.insert(slots.len().min(2), Slot::Muted);
        }
        if self.trickle {
            slots.insert(slots.len().min(5), Slot::Trickle);
        }
        let mut steps = Vec::new();
        let mut busy = Vec::new();
        for (k, slot) in slots.iter().enumerate() {
            let at = self.lead_in + self.every * k as u32;
            let step = match *slot {
                Slot::Framed(i) => {
                    // Arms differ in length (a longer phrasing), trials within an arm by a record or two.
                    let n = if self.outlier == Some(i) { OUTLIER_RECORDS } else { STREAM_RECORDS + 6 * (i % self.arms.max(1)) + (i * 5 % 7) };
                    Step::Command(self.command(i % self.arms.max(1), n, RESPONSE, true))
                }
                Slot::Muted => {
                    steps.push((at.saturating_sub(Duration::from_secs(1)), Step::Mute(true)));
                    steps.push((at + Duration::from_secs(4), Step::Mute(false)));
                    Step::Command(self.command(0, STREAM_RECORDS, 0, false))
                }
                Slot::Trickle => Step::Trickle { records: TRICKLE.to_vec(), every: TRICKLE_EVERY },
            };
            busy.push((at.saturating_sub(QUIET), at + self.every.min(Duration::from_secs(5)) + QUIET));
            steps.push((at, step));
        }
        let end = self.duration();
        for (j, (size, period)) in HEARTBEATS.iter().enumerate() {
            let period = Duration::from_secs_f64(period / self.compress);
            let mut at = Duration::from_millis(500 + 1_100 * j as u64);
            while at < end {
                if !busy.iter().any(|(a, b)| at >= *a && at <= *b) {
                    steps.push((at, Step::Heartbeat(*size)));
                }
                at += period;
            }
        }
        steps.sort_by_key(|(at, _)| *at);
        Plan { steps }
    }

    fn command(&self, arm: usize, stream: usize, response: usize, framed: bool) -> Command {
        Command { arm, burst: BURST.to_vec(), stream: vec![STREAM_RECORD; stream], pace: self.pace, response, framed }
    }

    /// How long the plan runs.
    pub fn duration(&self) -> Duration {
        let slots = self.commands + self.muted_upload as usize + self.trickle as usize;
        self.lead_in + self.every * slots as u32 + TAIL
    }
}
