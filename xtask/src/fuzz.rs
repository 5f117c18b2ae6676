//! Fuzzing (cargo-fuzz, libFuzzer with AddressSanitizer) of every parser of untrusted input in
//! user space; the targets live in `fuzz/`. Each run starts from seeds written here from the
//! same helpers the tests use (a real rustls ClientHello, the simulated household's DNS
//! answer, a capture of real frames, a log line, command lines, API requests, the example web
//! configuration, HTTPS requests, the lab's experiment plans, frames of a gap experiment),
//! so libFuzzer
//! mutates meaningful input from the first second.

use std::{path::{Path, PathBuf}, process::Command};

use anyhow::{Context as _, Result};

use crate::{dns, echo_sim, packets, tls};

/// Every target, in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["sni", "dns", "capture", "log", "flags", "api", "web_config", "https_request", "plan", "report"];

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 10;

/// Seed inputs per target.
fn seeds(target: &str) -> Result<Vec<Vec<u8>>> {
    let zone = echo_sim::zone(crate::netns::server_v4(0));
    let hello = tls::client_hello(echo_sim::ECHO_HOST)?;
    Ok(match target {
        "sni" => vec![hello],
        "dns" => vec![dns::reply_bytes(&zone, echo_sim::ECHO_HOST).context("a DNS reply")?],
        "capture" => {
            let mut syn = packets::TcpFrame::upload_v4(1000, packets::SYN, Vec::new());
            syn.vlans = vec![(0x8100, 7)];
            let data = packets::TcpFrame::upload_v4(1001, packets::PSH | packets::ACK, hello).build();
            vec![packets::pcap(&[syn.build(), data])]
        }
        "log" => vec![
            br#"{"type":"muted","device":"echo","muted":true,"at":1700000000.5}"#.to_vec(),
            br#"{"type":"frame","device":"echo","index":0,"arm":"I_1","start":1.0,"end":2.0,"top_destination":"10.77.2.10","upload_bytes":45000}"#.to_vec(),
        ],
        "flags" => vec![
            b"run\0--iface\0wlan0\0--device\002:ec:40:00:00:01=echo\0--marker\0192.0.2.1=command_start\0--group\0amazon.com=alexa\0--idle-gap\02".to_vec(),
            b"replay\0--pcap\0x.pcap\0--device\002:ec:40:00:00:01\0--muted\01700000000..1700000100\0--arms\0I_1,I_2".to_vec(),
        ],
        "api" => vec![b"\0/api/interactions\0since=1700000000\0".to_vec(), b"\x01/api/devices/echo/muted\0\0true".to_vec()],
        "web_config" => vec![std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/web/web-config.yml"))?],
        "https_request" => vec![
            b"GET /metrics HTTP/1.1\r\nHost: 192.168.1.1:9977\r\nAuthorization: Basic cHJvbWV0aGV1czpjaGFuZ2UtbWU=\r\n\r\n".to_vec(),
            b"POST /api/devices/echo/muted HTTP/1.1\r\nContent-Length: 4\r\n\r\ntrue".to_vec(),
        ],
        "plan" => {
            let dir = std::env::temp_dir().join(format!("echo-fuzz-plan-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let plan = crate::lab::write_plan(&dir, "gap", &crate::lab::gap_arms(), 2, 1).and_then(|p| Ok(std::fs::read(p)?));
            let _ = std::fs::remove_dir_all(&dir);
            vec![plan?]
        }
        "report" => vec![[
            r#"{"type":"frame","device":"echo","index":0,"arm":"gap-0.1","start":1.0,"end":2.0,"top_destination":"10.77.2.10","upload_bytes":85000,"params":{"gap_s":0.1},"command_end":1.9,"response_start":2.0,"response_end":2.2,"response":"after_input","download_bytes":6017}"#,
            r#"{"type":"frame","device":"echo","index":1,"arm":"gap-0.8","start":3.0,"end":3.5,"top_destination":"10.77.2.10","upload_bytes":45000,"params":{"gap_s":0.8},"command_end":3.9,"response_start":3.5,"response_end":3.7,"response":"early","download_bytes":20034}"#,
        ]
        .join("\n")
        .into_bytes()],
        other => anyhow::bail!("no fuzz target {other}"),
    })
}

/// Runs `target` for `seconds` from its seeds (and the corpus kept in `target/fuzz-corpus`);
/// a crash fails with libFuzzer's report, the reproducer saved under `fuzz/artifacts`.
pub fn run(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let corpus: PathBuf = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    for (i, s) in seeds(target)?.into_iter().enumerate() {
        std::fs::write(corpus.join(format!("seed-{i}")), s)?;
    }
    let status = Command::new("cargo")
        .current_dir(root)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "-O", target])
        .arg(&corpus)
        .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
        .status()
        .context("running cargo fuzz")?;
    anyhow::ensure!(status.success(), "fuzz target {target} failed: {status}");
    Ok(())
}
