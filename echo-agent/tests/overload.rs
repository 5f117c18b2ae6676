//! Event overload, live: while the agent's reader is stopped (SIGSTOP), a voice command's
//! upload and then a flood of 40,000 marker pings fill the 1 MiB event ring buffer. After
//! SIGCONT: the drops are counted, the per-destination counters still equal tshark's to the
//! byte, and the interaction found in the surviving events is marked degraded instead of
//! being reported as if complete.

use std::{net::IpAddr, path::Path, thread, time::Duration};

use echo_agent::{activation::Interaction, device::Mac};
use xtask::{
    agent::Agent,
    capture::Capture,
    echo_sim::{self, Cloud},
    netns::{marker_v4, server_v4, tls_addr, Topology},
    packets::DEVICE_MAC,
    ping,
    tls::{rustls_upload, TlsServer, Version},
    tshark::{self, Direction},
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
/// Marker pings in the flood: more events than the ring holds.
const FLOOD: u32 = 40_000;
/// Events the ring buffer holds: `EVENTS_BYTES` over 48 bytes (a 40-byte event and the ring
/// buffer's 8-byte header).
const RING_EVENTS: u32 = echo_common::EVENTS_BYTES / 48;

fn signal(agent: &Agent, sig: libc::c_int) {
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(agent.pid().expect("running") as i32, sig) }, 0);
}

#[test]
fn a_full_ring_buffer_degrades_the_interaction_and_keeps_counters_exact() {
    let topo = Topology::new(1500).expect("topology");
    let _cloud = Cloud::start(&topo, tls_addr(server_v4(0))).expect("cloud");
    let state = xtask::agent::state_dir(&format!("{}-overload", topo.id));
    let flags = echo_sim::agent_flags(&state);
    let agent = Agent::start(Path::new(BIN), &topo, &flags.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "overload").expect("tcpdump");

    let _server = TlsServer::start(&topo, vec![tls_addr(server_v4(1))], 1_000).expect("server");

    signal(&agent, libc::SIGSTOP);
    // A command-sized upload first (its events fit), then the flood (which does not).
    let upload = rustls_upload(&topo, tls_addr(server_v4(1)), Version::Tls13, vec![1_500; 30], Duration::from_millis(20)).expect("upload");
    upload.join().unwrap().expect("upload");
    // The capture holds the upload; tcpdump could not keep up with the flood anyway.
    thread::sleep(Duration::from_millis(200));
    let pcap = cap.stop().expect("capture");
    let IpAddr::V4(command_end) = marker_v4(echo_sim::COMMAND_END) else { unreachable!() };
    ping::echo_requests(&topo.controller_ns, command_end, 0, FLOOD).expect("flood");
    thread::sleep(Duration::from_millis(500));
    signal(&agent, libc::SIGCONT);
    // The window closes after the idle gap.
    thread::sleep(Duration::from_millis(3_500));

    let m = agent.scrape().unwrap();
    let dropped = m.value("echo_events_dropped_total", &[]);
    let pings = m.value("echo_marker_pings_total", &[("role", "command_end")]);
    // Every app-data segment and every marker ping made an event; the stopped reader had
    // emptied the ring, which holds exactly RING_EVENTS: the rest were dropped, and counted.
    let segments: f64 = ["upload", "download"].iter().map(|d| m.value("echo_packets_total", &[("direction", d), ("class", "app_data")])).sum();
    eprintln!("overload: {pings} marker pings, {segments} app-data segments, {dropped} events dropped");
    assert!(pings > RING_EVENTS as f64, "the flood overflows the ring: {pings}");
    assert_eq!(dropped, pings + segments - RING_EVENTS as f64);
    let truth = tshark::totals(&pcap, &Mac(DEVICE_MAC).to_string(), Direction::Upload).expect("tshark");
    let tls: u64 = truth.iter().filter(|((ip, _), _)| *ip == server_v4(1)).map(|(_, t)| t.app_bytes).sum();
    let ours = m.value("echo_upload_tls_bytes_total", &[("device", echo_sim::DEVICE_NAME), ("destination", &server_v4(1).to_string())]);
    assert_eq!(ours, tls as f64, "the counter equals tshark's total");
    let found: Vec<Interaction> = serde_json::from_str(&agent.get("/api/interactions").unwrap().body).unwrap();
    assert_eq!(found.iter().map(|i| (i.top_destination, i.degraded)).collect::<Vec<_>>(), vec![(Some(server_v4(1)), true)], "{found:#?}");
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&pcap);
}
