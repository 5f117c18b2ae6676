//! `cargo xtask demo`: a small simulated household, captured on the hotspot and replayed
//! through the XDP program. (The live agent replaces the capture step when it lands.)

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Result};

use crate::{
    capture::Capture,
    netns::{server_v4, tls_addr, Topology},
    packets::DEVICE_MAC,
    tls::{rustls_upload, TlsServer, Version},
};

/// One voice command: ~45 kB uploaded in 1,500-byte writes every 50 ms (the published
/// per-command upload, time-compressed).
const COMMAND_WRITES: usize = 30;
const COMMAND_WRITE_BYTES: usize = 1_500;
/// Heartbeats: a ~100-byte record on a long-lived connection.
const HEARTBEAT_BYTES: usize = 100;

pub fn run() -> Result<()> {
    let topo = Topology::new(1500)?;
    let _server = TlsServer::start(&topo, (0..2).map(|i| tls_addr(server_v4(i))).collect(), 20_000)?;
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "demo")?;
    eprintln!("demo: household in namespaces {} / {} / {}", topo.device_ns, topo.hotspot_ns, topo.cloud_ns);
    let heartbeat = rustls_upload(&topo, tls_addr(server_v4(1)), Version::Tls13, vec![HEARTBEAT_BYTES; 6], Duration::from_millis(500))?;
    for n in 1..=3 {
        eprintln!("demo: voice command {n}");
        let cmd = rustls_upload(&topo, tls_addr(server_v4(0)), Version::Tls12, vec![COMMAND_WRITE_BYTES; COMMAND_WRITES], Duration::from_millis(50))?;
        cmd.join().expect("client thread")?;
    }
    heartbeat.join().expect("client thread")?;
    std::thread::sleep(Duration::from_millis(200));
    let pcap = cap.stop()?;
    let result = replay(&pcap);
    let _ = std::fs::remove_file(&pcap);
    result
}

fn replay(pcap: &Path) -> Result<()> {
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/echo-agent");
    let mac = DEVICE_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let status = Command::new(agent).args(["replay", "--format", "table", "--device", &mac, "--pcap"]).arg(pcap).status()?;
    if !status.success() {
        bail!("echo-agent replay failed: {status}");
    }
    Ok(())
}
