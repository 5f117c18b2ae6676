//! `echo-agent replay`: runs a capture through the same programs the live agent attaches,
//! with BPF_PROG_TEST_RUN, then reads the same maps.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::Result;
use echo_common::{DestKey, DestStats, CLASS_NAMES, DIR_DOWNLOAD, DIR_UPLOAD, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

use crate::{
    activation::{Interaction, Reason, Unexpected},
    analysis::{Config, Record, Session},
    clock::Clock,
    counters,
    device::Mac,
    frames::Frame,
    loader::{Programs, TableSizes},
    names::{NameTable, Source},
    stats::ArmStats,
    testrun,
};

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub frames: u64,
    /// Frames shorter than an Ethernet header, not run.
    pub short_frames: u64,
    /// Entries the LRU tables pushed out even at the live agent's sizes: a flow seen again
    /// after its eviction is picked up unsynced (its bytes up to the next record boundary
    /// count as `unsynced_bytes`), an evicted destination's counters are lost. Zero unless
    /// the capture held more flows or destinations at once than the tables do.
    pub evicted_flows: u64,
    pub evicted_destinations: u64,
    pub devices: Vec<DeviceReport>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DeviceReport {
    pub mac: String,
    pub destinations: Vec<Destination>,
    /// Packet classes per direction ("upload", "download").
    pub classes: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Activation windows found in the device's app-data events (see `activation`).
    pub interactions: Vec<Interaction>,
    /// Heartbeats: app-data upload outside interactions that fits the heartbeat pattern.
    pub background_upload_bytes: u64,
    /// App-data upload above the heartbeat pattern, by reason, and its runs.
    pub unexpected_upload_bytes: BTreeMap<&'static str, u64>,
    pub unexpected: Vec<Unexpected>,
    /// Marker-framed trials and their per-arm statistics (with `--marker`).
    pub frames: Vec<Frame>,
    pub arms: Vec<ArmStats>,
}

/// One remote endpoint (address, port, protocol) of a device.
#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// The address's name (SNI or DNS) at the end of the capture, and where it came from.
    pub name: Option<String>,
    pub name_source: Option<Source>,
    pub upload: Counts,
    pub download: Counts,
}

/// One direction's counters; zero when nothing went that way.
#[derive(Debug, Serialize, PartialEq, Clone, Default)]
pub struct Counts {
    pub tls_app_bytes: u64,
    pub tls_records: u64,
    pub handshake_bytes: u64,
    pub ccs_bytes: u64,
    pub alert_bytes: u64,
    pub tcp_payload_bytes: u64,
    pub packets: u64,
    pub wire_bytes: u64,
    pub retransmit_bytes: u64,
    pub unsynced_bytes: u64,
    /// Capture time (epoch seconds) of the first and last packet; 0 when none.
    pub first_seen: f64,
    pub last_seen: f64,
}

impl From<&DestStats> for Counts {
    fn from(s: &DestStats) -> Self {
        Counts {
            tls_app_bytes: s.tls_app_bytes,
            tls_records: s.tls_app_records,
            handshake_bytes: s.handshake_bytes,
            ccs_bytes: s.ccs_bytes,
            alert_bytes: s.alert_bytes,
            tcp_payload_bytes: s.tcp_payload_bytes,
            packets: s.packets,
            wire_bytes: s.wire_bytes,
            retransmit_bytes: s.retransmit_bytes,
            unsynced_bytes: s.unsynced_bytes,
            first_seen: s.first_seen_ns as f64 / 1e9,
            last_seen: s.last_seen_ns as f64 / 1e9,
        }
    }
}

pub fn key_ip(k: &DestKey) -> IpAddr {
    addr_ip(&k.addr, k.family)
}

/// An address as the programs store it: IPv4 in the first 4 bytes, or IPv6.
pub fn addr_ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(<[u8; 4]>::try_from(&addr[..4]).expect("4 bytes"))
    } else {
        IpAddr::from(*addr)
    }
}

pub fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        echo_common::PROTO_ICMP | echo_common::PROTO_ICMPV6 => "icmp".into(),
        p => p.to_string(),
    }
}

/// Destinations of `device`, both directions merged per (address, port, protocol).
fn destinations(snap: &counters::Snapshot, names: &NameTable, device: u32) -> Vec<Destination> {
    let mut out: BTreeMap<(IpAddr, u16, u8), Destination> = BTreeMap::new();
    for (k, s) in snap.dests.iter().filter(|(k, _)| k.device as u32 == device) {
        let d = out.entry((key_ip(k), k.port, k.proto)).or_insert_with(|| Destination {
            ip: key_ip(k),
            port: k.port,
            protocol: protocol_name(k.proto),
            name: names.get(device as u8, &key_ip(k)).map(|e| e.name.clone()),
            name_source: names.get(device as u8, &key_ip(k)).map(|e| e.source),
            upload: Counts::default(),
            download: Counts::default(),
        });
        *(if k.direction == DIR_UPLOAD { &mut d.upload } else { &mut d.download }) = Counts::from(s);
    }
    out.into_values().collect()
}

/// Builds the replay document from the counters read after `run` and its events.
pub fn report(snap: &counters::Snapshot, devices: &[Mac], run: &testrun::Run, config: &Config) -> Result<Report> {
    let names: Vec<(u8, String, usize)> = devices.iter().enumerate().map(|(i, mac)| (i as u8, mac.to_string(), 0)).collect();
    let mut session = Session::new(config.clone(), Clock::Capture, &names);
    run.items.iter().for_each(|i| session.item(i));
    session.finish();
    let records = session.take();
    let devices = devices
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let name = mac.to_string();
            let state = session.device(i as u8).expect("every device has a state");
            let classes = [("upload", DIR_UPLOAD), ("download", DIR_DOWNLOAD)]
                .into_iter()
                .map(|(name, dir)| (name, CLASS_NAMES.iter().copied().zip(snap.classes_of(i as u32, dir)).collect()))
                .collect();
            let mut report = DeviceReport {
                destinations: destinations(snap, &session.names, i as u32),
                classes,
                interactions: Vec::new(),
                background_upload_bytes: state.tracker.background_bytes,
                unexpected_upload_bytes: Reason::ALL.iter().map(|&r| (r.name(), state.unexpected_bytes(r))).collect(),
                unexpected: Vec::new(),
                frames: Vec::new(),
                arms: Vec::new(),
                mac: name,
            };
            for r in &records {
                match r {
                    Record::Interaction(x) if x.device == report.mac => report.interactions.push(x.clone()),
                    Record::Frame(x) if x.device == report.mac => report.frames.push(x.clone()),
                    Record::Unexpected(x) if x.device == report.mac => report.unexpected.push(x.clone()),
                    _ => {}
                }
            }
            report.arms = crate::stats::arm_stats(&report.frames);
            report
        })
        .collect();
    Ok(Report {
        frames: run.frames,
        short_frames: run.short_frames,
        evicted_flows: snap.flow_evictions(),
        evicted_destinations: snap.dest_evictions(),
        devices,
    })
}

/// The tables a replay loads first: room for a household's day (its speakers keep a few
/// long-lived connections and talk to some dozens of addresses) at a sixteenth of the full
/// tables' allocation: created in 0.7 ms instead of 13–21 ms (BENCHMARKS.md). A capture
/// that pushes anything out of them is replayed again at full size, so the report is the
/// same either way.
pub const FIRST_SIZES: TableSizes = TableSizes { flows: 4_096, destinations: 1_024 };

/// Loads the programs, replays `path` for `devices`, and reports.
pub fn replay(path: &Path, devices: &[Mac], config: &Config) -> Result<Report> {
    let keys: Vec<_> = config.markers.iter().map(|m| m.key()).collect();
    let run_with = |sizes| -> Result<(testrun::Run, counters::Snapshot)> {
        // The maps only: `run_capture` loads the programs while it runs the first frames.
        let mut progs = Programs::open(&keys, Clock::Capture, sizes)?;
        progs.set_devices(devices)?;
        let run = testrun::run_capture(&mut progs, path, devices)?;
        Ok((run, counters::read(&progs.ebpf)?))
    };
    let (mut run, mut snap) = run_with(FIRST_SIZES)?;
    if snap.flow_evictions() > 0 || snap.dest_evictions() > 0 {
        // The first programs and their maps are gone by now: one set of tables at a time.
        (run, snap) = run_with(TableSizes::FULL)?;
    }
    report(&snap, devices, &run, config)
}

/// A fixed-width table for people.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if r.evicted_flows > 0 || r.evicted_destinations > 0 {
        let _ = writeln!(
            s,
            "warning: the tables pushed out {} flows and {} destinations: counts are short (see evicted_* in the JSON)",
            r.evicted_flows, r.evicted_destinations
        );
    }
    for d in &r.devices {
        let _ = writeln!(s, "device {}", d.mac);
        let _ = writeln!(
            s,
            "  {:<40} {:<30} {:>5} {:>12} {:>8} {:>12} {:>8} {:>10} {:>10} {:>10}",
            "destination", "name", "proto", "upload_tls", "records", "download_tls", "records", "handshake", "retransmit", "unsynced"
        );
        for x in &d.destinations {
            let _ = writeln!(
                s,
                "  {:<40} {:<30} {:>5} {:>12} {:>8} {:>12} {:>8} {:>10} {:>10} {:>10}",
                format!("{}:{}", x.ip, x.port),
                x.name.as_deref().unwrap_or("-"),
                x.protocol,
                x.upload.tls_app_bytes,
                x.upload.tls_records,
                x.download.tls_app_bytes,
                x.download.tls_records,
                x.upload.handshake_bytes + x.download.handshake_bytes,
                x.upload.retransmit_bytes + x.download.retransmit_bytes,
                x.upload.unsynced_bytes + x.download.unsynced_bytes
            );
        }
        for (dir, classes) in &d.classes {
            let classes: Vec<String> = classes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  {dir} packets: {}", classes.join(" "));
        }
        let _ = writeln!(s, "  interactions: {}", d.interactions.len());
        for i in &d.interactions {
            let top = i.top_destination.map_or("-".to_string(), |ip| ip.to_string());
            let top = match (&i.top_destination_name, &i.top_group) {
                (Some(n), Some(g)) => format!("{top} {n} [{g}: {} B]", i.top_group_upload_bytes),
                (Some(n), None) => format!("{top} {n}"),
                (None, Some(g)) => format!("{top} [{g}: {} B]", i.top_group_upload_bytes),
                (None, None) => top,
            };
            let muted = if i.muted { "  while muted" } else { "" };
            let _ = writeln!(
                s,
                "    {:.3}  {:>6.2} s  upload {:>9} B  download {:>9} B  top {top} ({} B){muted}",
                i.start, i.duration, i.upload_bytes, i.download_bytes, i.top_destination_upload_bytes
            );
        }
        let _ = writeln!(s, "  background upload (heartbeats): {} B", d.background_upload_bytes);
        for u in &d.unexpected {
            let _ = writeln!(s, "  unexpected upload {:.3}..{:.3}: {} B, {}", u.start, u.end, u.bytes, u.reason.name());
        }
        for f in &d.frames {
            let _ = writeln!(s, "  frame {:>3} arm {:<6} {:.3}..{:.3}  upload {:>9} B", f.index, f.arm, f.start, f.end, f.upload_bytes);
        }
        if !d.arms.is_empty() {
            let _ = writeln!(s, "  {:<8} {:>4} {:>5} {:>11} {:>10} {:>11}", "arm", "n", "kept", "mean", "sd", "median");
            for a in &d.arms {
                let _ = writeln!(s, "  {:<8} {:>4} {:>5} {:>11.1} {:>10.1} {:>11.1}", a.arm, a.n, a.kept, a.mean, a.sd, a.median);
            }
        }
    }
    s
}
