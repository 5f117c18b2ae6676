//! The live agent in a namespace topology: real TLS clients in the device namespace, real
//! servers in the cloud namespace, `echo-agent run` attached to the hotspot's LAN interface,
//! tcpdump on the same interface. Every per-destination counter scraped from /metrics equals
//! tshark's total on the capture, to the byte, in both directions.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use echo_agent::device::Mac;
use xtask::{
    agent::{Agent, Metrics},
    capture::Capture,
    netns::{server_v4, server_v6, tls_addr, Topology, SERVERS},
    packets::DEVICE_MAC,
    tls::{rustls_upload, TlsServer, Version},
    tshark::{self, Direction},
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");

const DEVICE: &str = "echo";
/// Bytes each server sends back per connection: enough for GSO super-packets on TC egress.
const RESPONSE: usize = 300_000;

fn device_flag() -> String {
    format!("{}={DEVICE}", Mac(DEVICE_MAC))
}

fn servers(topo: &Topology) -> TlsServer {
    let addrs = (0..SERVERS).flat_map(|i| [tls_addr(server_v4(i)), tls_addr(server_v6(i))]).collect();
    TlsServer::start(topo, addrs, RESPONSE).expect("servers")
}

/// tshark's app-data bytes per remote address (all ports), for the device, one direction.
fn truth(pcap: &Path, dir: Direction) -> BTreeMap<IpAddr, u64> {
    let mut out = BTreeMap::new();
    for ((ip, _), t) in tshark::totals(pcap, &Mac(DEVICE_MAC).to_string(), dir).expect("tshark") {
        *out.entry(ip).or_default() += t.app_bytes;
    }
    out
}

/// Asserts every destination counter equals tshark's, both directions; returns the totals.
fn assert_equal_to_tshark(name: &str, m: &Metrics, pcap: &Path, drops: &str) -> (u64, u64) {
    let mut totals = (0, 0);
    for (dir, metric) in [(Direction::Upload, "echo_upload_tls_bytes_total"), (Direction::Download, "echo_download_tls_bytes_total")] {
        let t = truth(pcap, dir);
        assert!(!t.is_empty(), "{name}: tshark saw no {dir:?} traffic");
        for (ip, bytes) in &t {
            let ours = m.value(metric, &[("device", DEVICE), ("destination", &ip.to_string())]) as u64;
            eprintln!("{name}: {dir:?} {ip}: tshark {bytes} echo {ours} diff {}", ours as i64 - *bytes as i64);
            if ours != *bytes {
                eprintln!("{name}: interface drops: {drops}");
                for n in ["echo_retransmit_bytes_total", "echo_unsynced_bytes_total", "echo_handshake_bytes_total", "echo_packets_total"] {
                    eprintln!("{name}: {n} {:?}", m.series(n));
                }
            }
            assert_eq!(ours, *bytes, "{name}: {dir:?} {ip}");
        }
        let ours_total = m.sum(metric, &[("device", DEVICE)]) as u64;
        let truth_total: u64 = t.values().sum();
        assert_eq!(ours_total, truth_total, "{name}: {dir:?} total, other destinations included");
        if dir == Direction::Upload { totals.0 = truth_total } else { totals.1 = truth_total }
    }
    assert_eq!(m.sum("echo_unsynced_bytes_total", &[("device", DEVICE)]), 0.0, "{name}: unsynced bytes");
    totals
}

fn upload(topo: &Topology, server: SocketAddr, version: Version, writes: Vec<usize>, pause: Duration) -> thread::JoinHandle<anyhow::Result<usize>> {
    rustls_upload(topo, server, version, writes, pause).expect("client")
}

fn run_mode(mode: &str) {
    let name = format!("live-{mode}");
    let topo = Topology::new(1500).expect("topology");
    let _srv = servers(&topo);
    let agent = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--xdp-mode", mode, "--state-dir", &state_dir(&topo), "--bpf-stats"])
        .expect("agent");
    check_endpoints(&agent);
    let m = agent.scrape().unwrap();
    assert_eq!(m.value("echo_xdp_attached", &[("mode", mode)]), 1.0, "{name}: attached in {mode} mode");
    assert_eq!(m.value("echo_tc_attached", &[]), 1.0);
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, &name).expect("tcpdump");
    let clients = vec![
        upload(&topo, tls_addr(server_v4(0)), Version::Tls13, vec![16 * 1024; 8], Duration::ZERO),
        upload(&topo, tls_addr(server_v4(1)), Version::Tls12, (0..150).map(|i| 1 + i * 37 % 300).collect(), Duration::ZERO),
        upload(&topo, tls_addr(server_v6(2)), Version::Tls13, vec![10_000; 10], Duration::ZERO),
        upload(&topo, tls_addr(server_v4(2)), Version::Tls12, vec![45_000], Duration::ZERO),
    ];
    for c in clients {
        assert_eq!(c.join().unwrap().expect("client"), RESPONSE);
    }
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().expect("capture");
    let m = agent.scrape().unwrap();
    let (up, down) = assert_equal_to_tshark(&name, &m, &pcap, &topo.drops());
    // Each response is RESPONSE bytes of plaintext plus per-record overhead.
    assert!(down > 4 * RESPONSE as u64, "{name}: the servers' responses");
    eprintln!("{name}: upload {up} B, download {down} B, difference 0");
    let upload_program = if mode == "tc-ingress" { "echo_tc_up" } else { "echo_xdp" };
    for program in [upload_program, "echo_tc"] {
        let runs = m.value("echo_bpf_runs_total", &[("program", program)]);
        let secs = m.value("echo_bpf_run_seconds_total", &[("program", program)]);
        eprintln!("{name}: {program} ran {runs} times, {:.0} ns per run", secs * 1e9 / runs);
        assert!(runs > 0.0 && secs > 0.0, "{name}: kernel BPF statistics for {program}");
    }
    cleanup(&pcap);
}

/// The landing page links the metrics; the metrics have Prometheus's content type and pass
/// `promtool check metrics` without a single remark.
fn check_endpoints(agent: &Agent) {
    let landing = agent.get("/").unwrap();
    assert_eq!((landing.status, landing.content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(landing.body.contains("<a href=\"/metrics\">"), "{}", landing.body);
    let metrics = agent.get("/metrics").unwrap();
    assert_eq!(metrics.content_type, "text/plain; version=0.0.4; charset=utf-8");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(metrics.body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let remarks = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && remarks.trim().is_empty(), "promtool: {remarks}");
    assert_eq!(agent.get("/nothing-here").unwrap().status, 404);
}

fn state_dir(topo: &Topology) -> String {
    xtask::agent::state_dir(&format!("{}-state", topo.id)).display().to_string()
}

fn cleanup(pcap: &Path) {
    if std::env::var_os("ECHO_KEEP_PCAP").is_none() {
        let _ = std::fs::remove_file(pcap);
    }
}

#[test]
fn counters_equal_tshark_in_skb_mode() {
    run_mode("skb");
}

#[test]
fn counters_equal_tshark_in_driver_mode() {
    run_mode("driver");
}

/// The upload program at TC ingress instead of XDP (`--xdp-mode tc-ingress`).
#[test]
fn counters_equal_tshark_at_tc_ingress() {
    run_mode("tc-ingress");
}

/// An agent left attached in skb mode, then one started with `--xdp-mode tc-ingress` over the
/// same pins: the XDP link is let go (no frame counted twice), TC ingress takes over, and the
/// counters carry on, equal to tshark's over both agents' traffic.
#[test]
fn switching_from_xdp_to_tc_ingress_keeps_counting() {
    let topo = Topology::new(1500).expect("topology");
    let _srv = servers(&topo);
    let state = state_dir(&topo);
    let dir = Path::new("/sys/fs/bpf/echo-agent/v1").join(&topo.hotspot_lan_if);
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "switch").expect("tcpdump");
    let mut first = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--xdp-mode", "skb", "--keep-attached", "--state-dir", &state]).expect("agent");
    let c = upload(&topo, tls_addr(server_v4(0)), Version::Tls13, vec![20_000; 4], Duration::ZERO);
    assert_eq!(c.join().unwrap().expect("client"), RESPONSE);
    assert_eq!(first.terminate().unwrap().code(), Some(0));
    assert!(dir.join("link_xdp_skb").exists(), "left attached");
    let second = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--xdp-mode", "tc-ingress", "--state-dir", &state]).expect("agent");
    assert!(second.log_text().contains("attached TC ingress and TC egress"), "{}", second.log_text());
    assert!(!dir.join("link_xdp_skb").exists() && dir.join("link_tc_ingress").exists());
    let link = topo.cmd(&topo.hotspot_ns, "ip").args(["link", "show", "dev", &topo.hotspot_lan_if]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(&topo.hotspot_lan_if), "{link}");
    assert!(!link.contains("xdp"), "no XDP program left on the interface: {link}");
    let c = upload(&topo, tls_addr(server_v6(1)), Version::Tls12, vec![30_000; 3], Duration::ZERO);
    assert_eq!(c.join().unwrap().expect("client"), RESPONSE);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().expect("capture");
    let m = second.scrape().unwrap();
    assert_eq!(m.value("echo_xdp_attached", &[("mode", "tc-ingress")]), 1.0);
    let (up, down) = assert_equal_to_tshark("switch", &m, &pcap, &topo.drops());
    eprintln!("switch: upload {up} B, download {down} B across XDP then TC ingress, difference 0");
    cleanup(&pcap);
}

/// SIGKILL mid-upload, restart: the pinned links kept counting into the pinned maps, and the
/// new agent swapped its programs in atomically. Not one byte lost.
#[test]
fn sigkill_mid_upload_loses_nothing() {
    let topo = Topology::new(1500).expect("topology");
    let _srv = servers(&topo);
    let state = state_dir(&topo);
    let mut agent = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--state-dir", &state]).expect("agent");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "sigkill").expect("tcpdump");
    // 80 writes of 4 KiB, 25 ms apart: two seconds of upload.
    let slow = upload(&topo, tls_addr(server_v4(0)), Version::Tls13, vec![4096; 80], Duration::from_millis(25));
    thread::sleep(Duration::from_millis(500));
    agent.kill9().unwrap();
    // Traffic while no agent runs.
    let during = upload(&topo, tls_addr(server_v6(1)), Version::Tls12, vec![20_000; 3], Duration::ZERO);
    assert_eq!(during.join().unwrap().expect("client"), RESPONSE);
    thread::sleep(Duration::from_millis(300));
    agent.spawn().expect("restart");
    assert!(agent.log_text().contains("took over XDP"), "{}", agent.log_text());
    assert_eq!(slow.join().unwrap().expect("client"), RESPONSE);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().expect("capture");
    let m = agent.scrape().unwrap();
    let (up, down) = assert_equal_to_tshark("sigkill", &m, &pcap, &topo.drops());
    eprintln!("sigkill: upload {up} B, download {down} B across a SIGKILL and restart, difference 0");
    assert_eq!(agent.terminate().unwrap().code(), Some(0));
    cleanup(&pcap);
}

/// The hotspot's interface is deleted and recreated (new ifindex): the agent keeps serving,
/// reports detached, re-attaches on its own, and counts again.
#[test]
fn interface_deleted_and_recreated() {
    let topo = Topology::new(1500).expect("topology");
    let _srv = servers(&topo);
    let agent = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--state-dir", &state_dir(&topo)]).expect("agent");
    let attached = |a: &Agent| a.scrape().map(|m| m.value("echo_xdp_attached", &[]) + m.value("echo_tc_attached", &[])).unwrap_or(-1.0);
    assert_eq!(attached(&agent), 2.0);
    topo.delete_hotspot_lan().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while attached(&agent) != 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(attached(&agent), 0.0, "detached while the interface is gone");
    let before = agent.scrape().unwrap().sum("echo_upload_tls_bytes_total", &[]);
    let t0 = Instant::now();
    topo.recreate_hotspot_lan().unwrap();
    while attached(&agent) != 2.0 && t0.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    eprintln!("recreate: re-attached {} ms after the interface came back", took.as_millis());
    assert_eq!(attached(&agent), 2.0, "re-attached: {}", agent.log_text());
    assert!(took <= Duration::from_secs(2), "re-attached within 2 s, took {took:?}");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "recreate").expect("tcpdump");
    let c = upload(&topo, tls_addr(server_v4(1)), Version::Tls13, vec![30_000; 3], Duration::ZERO);
    assert_eq!(c.join().unwrap().expect("client"), RESPONSE);
    thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().expect("capture");
    let t = truth(&pcap, Direction::Upload);
    let after = agent.scrape().unwrap().sum("echo_upload_tls_bytes_total", &[]);
    assert_eq!((after - before) as u64, t.values().sum::<u64>(), "counting resumed, exactly");
    cleanup(&pcap);
}

/// A pinned map whose layout is not this agent's is recreated, with a note saying so; SIGTERM
/// unpins the links (the programs detach) and keeps the maps; `detach` removes the rest.
#[test]
fn layout_mismatch_recreated_and_clean_detach() {
    let topo = Topology::new(1500).expect("topology");
    let dir = Path::new("/sys/fs/bpf/echo-agent/v1").join(&topo.hotspot_lan_if);
    std::fs::create_dir_all(&dir).unwrap();
    // A one-entry per-CPU array pinned where DEST_STATS belongs.
    let other = echo_agent::loader::Programs::load(&[], echo_agent::clock::Clock::Monotonic).unwrap();
    other.ebpf.map("EVENT_DROPS").unwrap().pin(dir.join("DEST_STATS")).unwrap();
    // And a map of an older agent's layout, which this agent no longer has.
    other.ebpf.map("SNIPPET_DROPS").unwrap().pin(dir.join("DEVICE_FILTER")).unwrap();
    drop(other);
    let mut agent = Agent::start(Path::new(BIN), &topo, &["--device", &device_flag(), "--state-dir", &state_dir(&topo)]).expect("agent");
    let log = agent.log_text();
    assert!(
        log.contains("echo-agent: pinned map DEST_STATS has layout key=4 value=8 entries=1, this agent needs key=24 value=104 entries=16384: recreated (its counts start over)"),
        "{log}"
    );
    assert!(log.contains("echo-agent: pinned map DEVICE_FILTER is not used by this agent: removed"), "{log}");
    assert!(!dir.join("DEVICE_FILTER").exists());
    assert_eq!(agent.terminate().unwrap().code(), Some(0));
    let left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with("link_")), "links unpinned on SIGTERM: {left:?}");
    assert!(left.contains(&"DEST_STATS".to_string()), "maps kept: {left:?}");
    let out = agent.detach().unwrap();
    assert!(out.starts_with("removed CLASS_COUNTERS, DEST_STATS,"), "{out}");
    assert!(!dir.exists());
}
