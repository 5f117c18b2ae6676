//! `echo-agent replay`: runs a capture through the same XDP program the live agent attaches,
//! with BPF_PROG_TEST_RUN, then reads the same maps.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use echo_common::{DestKey, DestStats, CLASS_NAMES, DIR_UPLOAD, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

use crate::{capture, counters, device::Mac, gso, loader::Programs};

/// Smallest frame XDP test_run accepts (an Ethernet header); shorter ones are counted apart.
const MIN_FRAME: usize = 14;

#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub frames: u64,
    /// Frames shorter than an Ethernet header, not run.
    pub short_frames: u64,
    pub devices: Vec<DeviceReport>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct DeviceReport {
    pub mac: String,
    pub destinations: Vec<Destination>,
    pub classes: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub upload_tls_app_bytes: u64,
    pub upload_tls_records: u64,
    pub upload_handshake_bytes: u64,
    pub upload_ccs_bytes: u64,
    pub upload_alert_bytes: u64,
    pub upload_tcp_payload_bytes: u64,
    pub upload_packets: u64,
    pub upload_wire_bytes: u64,
    pub upload_retransmit_bytes: u64,
    pub upload_unsynced_bytes: u64,
    /// Capture time (epoch seconds) of the first and last upload packet.
    pub first_seen: f64,
    pub last_seen: f64,
}

pub fn key_ip(k: &DestKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::from(<[u8; 4]>::try_from(&k.addr[..4]).expect("4 bytes"))
    } else {
        IpAddr::from(k.addr)
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

fn destination(k: &DestKey, s: &DestStats) -> Destination {
    Destination {
        ip: key_ip(k),
        port: k.port,
        protocol: protocol_name(k.proto),
        upload_tls_app_bytes: s.tls_app_bytes,
        upload_tls_records: s.tls_app_records,
        upload_handshake_bytes: s.handshake_bytes,
        upload_ccs_bytes: s.ccs_bytes,
        upload_alert_bytes: s.alert_bytes,
        upload_tcp_payload_bytes: s.tcp_payload_bytes,
        upload_packets: s.packets,
        upload_wire_bytes: s.wire_bytes,
        upload_retransmit_bytes: s.retransmit_bytes,
        upload_unsynced_bytes: s.unsynced_bytes,
        first_seen: s.first_seen_ns as f64 / 1e9,
        last_seen: s.last_seen_ns as f64 / 1e9,
    }
}

/// Runs every frame (cut into wire segments, see `gso`) through the XDP program.
pub fn run_frames(progs: &mut Programs, path: &Path) -> Result<(u64, u64)> {
    let mut short = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let mut last_ts = 0u64;
    let frames = capture::for_each_frame(path, |ts, frame| {
        if failure.is_some() {
            return;
        }
        if frame.len() < MIN_FRAME {
            short += 1;
            return;
        }
        if ts != last_ts {
            // The programs read "now" from the clock map: the capture's time, not ours.
            if let Err(e) = progs.set_clock(ts.max(1)) {
                failure = Some(e.into());
                return;
            }
            last_ts = ts;
        }
        gso::for_each_segment(frame, |seg| {
            if failure.is_none() {
                if let Err(e) = run_one(progs, seg) {
                    failure = Some(e);
                }
            }
        });
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    progs.set_clock(0)?;
    Ok((frames, short))
}

/// One frame through the XDP program; returns its verdict.
pub fn run_one(progs: &Programs, frame: &[u8]) -> Result<u32> {
    let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
    let r = progs.xdp().test_run(opts).with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
    Ok(r.return_value)
}

/// Builds the replay document from the maps.
pub fn report(progs: &Programs, devices: &[Mac], frames: u64, short_frames: u64) -> Result<Report> {
    let snap = counters::read(&progs.ebpf)?;
    let devices = devices
        .iter()
        .enumerate()
        .map(|(i, mac)| {
            let destinations = snap
                .dests
                .iter()
                .filter(|(k, _)| k.device as usize == i && k.direction == DIR_UPLOAD)
                .map(|(k, s)| destination(k, s))
                .collect();
            let classes = CLASS_NAMES.iter().copied().zip(snap.classes_of(i as u32, DIR_UPLOAD)).collect();
            DeviceReport { mac: mac.to_string(), destinations, classes }
        })
        .collect();
    Ok(Report { frames, short_frames, devices })
}

/// Loads the programs, replays `path` for `devices`, and reports.
pub fn replay(path: &Path, devices: &[Mac]) -> Result<Report> {
    let mut progs = Programs::load()?;
    progs.set_devices(devices)?;
    let (frames, short) = run_frames(&mut progs, path)?;
    report(&progs, devices, frames, short)
}

/// A fixed-width table for people.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for d in &r.devices {
        let _ = writeln!(s, "device {}", d.mac);
        let _ = writeln!(s, "  {:<40} {:>5} {:>14} {:>8} {:>10} {:>10} {:>10}", "destination", "proto", "tls_app_bytes", "records", "handshake", "retransmit", "unsynced");
        for x in &d.destinations {
            let _ = writeln!(
                s,
                "  {:<40} {:>5} {:>14} {:>8} {:>10} {:>10} {:>10}",
                format!("{}:{}", x.ip, x.port),
                x.protocol,
                x.upload_tls_app_bytes,
                x.upload_tls_records,
                x.upload_handshake_bytes,
                x.upload_retransmit_bytes,
                x.upload_unsynced_bytes
            );
        }
        let classes: Vec<String> = d.classes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "  packets: {}", classes.join(" "));
    }
    s
}
