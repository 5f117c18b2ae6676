//! Offline analysis: `echo-agent replay` against the incumbent, tshark, computing the same
//! per-destination TLS app-data totals from the same capture (tshark with the lightest
//! output that yields them: two fields per record).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use echo_agent::device::Mac;
use xtask::packets::{tls_stream, Ip, TcpFrame, ACK, DEVICE_MAC, HOTSPOT_MAC, PSH, SYN};

use crate::{fmt3, goal, spread, Scale};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const DESTS: u8 = 4;

/// A capture of about `bytes`: four TLS upload flows of one-record 1,400-byte segments,
/// each answered by an ACK, 100 µs apart.
fn write_capture(path: &Path, bytes: u64) -> Result<u64> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    w.write_all(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0])?;
    let mut ts = 1_795_000_000_000_000u64; // µs
    let mut written = 24u64;
    let put = |w: &mut std::io::BufWriter<std::fs::File>, frame: &[u8], ts: u64| -> Result<u64> {
        w.write_all(&((ts / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((ts % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(frame)?;
        Ok(16 + frame.len() as u64)
    };
    let payload = tls_stream(&[(23, 1395)]);
    let flow = |d: u8, seq: u32, flags: u8, payload: Vec<u8>| {
        let mut f = TcpFrame::upload_v4(seq, flags, payload);
        f.sport = 40_000 + d as u16;
        f.ip = Ip::V4 { src: [10, 77, 1, 2], dst: [10, 77, 2, 10 + d], options: Vec::new() };
        f
    };
    for d in 0..DESTS {
        written += put(&mut w, &flow(d, 0, SYN, Vec::new()).build(), ts)?;
    }
    let mut i = 0u64;
    while written < bytes {
        let d = (i % DESTS as u64) as u8;
        let seq = 1 + (i / DESTS as u64) as u32 * payload.len() as u32;
        ts += 100;
        written += put(&mut w, &flow(d, seq, ACK | PSH, payload.clone()).build(), ts)?;
        // The server's ACK: from the hotspot's MAC to the device.
        let mut ack = flow(d, 1, ACK, Vec::new());
        ack.src_mac = HOTSPOT_MAC;
        ack.dst_mac = DEVICE_MAC;
        ack.ip = Ip::V4 { src: [10, 77, 2, 10 + d], dst: [10, 77, 1, 2], options: Vec::new() };
        (ack.sport, ack.dport) = (443, 40_000 + d as u16);
        written += put(&mut w, &ack.build(), ts + 10)?;
        i += 1;
    }
    // On disk before the first round, so that no write-back runs under the measurements.
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(written)
}

/// The argument that makes this binary the launcher (`launch`) instead of the bench.
pub const PEAK_RSS_ARG: &str = "--peak-rss-of";
const PEAK_RSS_PREFIX: &str = "peak-rss-kib ";

/// Wall seconds and peak RSS (MiB) of `program args`, and its standard output. The program
/// runs under this binary's launcher mode (`launch`, see there why); the launcher's own
/// start-up (1.4 ms more than a direct spawn) is in the wall time of both tools.
fn measure(program: &str, args: &[&str]) -> Result<(f64, f64, String)> {
    let t = Instant::now();
    let out = Command::new(std::env::current_exe()?).arg(PEAK_RSS_ARG).arg(program).args(args).stdin(Stdio::null()).output()?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{program} {args:?} failed ({})", out.status);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib: f64 = stderr
        .lines()
        .last()
        .and_then(|l| l.strip_prefix(PEAK_RSS_PREFIX)?.parse().ok())
        .with_context(|| format!("no peak RSS from the launcher: {stderr}"))?;
    Ok((wall, kib / 1024.0, String::from_utf8(out.stdout)?))
}

/// Launcher mode: runs `cmd` with this process's standard output (its standard error
/// discarded: tshark warns about running as root), then writes its peak RSS to standard
/// error and exits with its status. Linux carries the peak RSS of the process that calls
/// exec over into the new program's `ru_maxrss` (`exec_mmap`), so a tool spawned straight
/// from the bench, which holds the kernel section's fixtures by then, reported the bench's
/// peak (64.9 MiB for a replay that peaks at 22.8). Forked from this small, fresh process,
/// a tool reports its own.
pub fn launch(cmd: &[String]) -> i32 {
    let Some((program, args)) = cmd.split_first() else { return 2 };
    let child = match Command::new(program).args(args).stdin(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
            return 2;
        }
    };
    let mut status = 0;
    // SAFETY: waiting for our own child with a zeroed rusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) } < 0 {
        eprintln!("wait4: {}", std::io::Error::last_os_error());
        return 2;
    }
    eprintln!("{PEAK_RSS_PREFIX}{}", usage.ru_maxrss);
    if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 1 }
}

pub fn run(scale: Scale) -> Result<String> {
    let size = if scale.quick { 20_000_000 } else { 100_000_000 };
    let path = std::env::temp_dir().join(format!("echo-bench-{}.pcap", std::process::id()));
    let bytes = write_capture(&path, size)?;
    let mac = Mac(DEVICE_MAC).to_string();
    let pcap = path.to_str().context("temporary directory's path is not UTF-8")?;
    // Five in a full run: replay's wall time spreads by a quarter from run to run here.
    let rounds = if scale.quick { 2 } else { 5 };
    let (mut ours, mut theirs, mut ratios, mut mem) = (Vec::new(), Vec::new(), Vec::new(), (0f64, 0f64));
    let mut check = String::new();
    for _ in 0..rounds {
        let (t_ours, rss_ours, json) = measure(BIN, &["replay", "--device", &mac, "--pcap", pcap])?;
        let filter = format!("eth.src == {mac} && tls.record.content_type == 23");
        let (t_tshark, rss_tshark, fields) =
            measure("tshark", &["-r", pcap, "-n", "-Y", &filter, "-T", "fields", "-e", "ip.dst", "-e", "tls.record.length"])?;
        ours.push(t_ours);
        theirs.push(t_tshark);
        ratios.push(t_tshark / t_ours);
        mem = (rss_ours, rss_tshark);
        // The same totals, or the comparison means nothing.
        let mut by_ip: BTreeMap<String, u64> = BTreeMap::new();
        for l in fields.lines() {
            let (ip, lens) = l.split_once('\t').unwrap_or((l, ""));
            *by_ip.entry(ip.to_string()).or_default() += lens.split(',').filter_map(|x| x.parse::<u64>().ok()).sum::<u64>();
        }
        let report: serde_json::Value = serde_json::from_str(&json)?;
        for d in report["devices"][0]["destinations"].as_array().into_iter().flatten() {
            let ip = d["ip"].as_str().unwrap_or_default();
            let n = d["upload"]["tls_app_bytes"].as_u64().unwrap_or(0);
            if by_ip.get(ip).copied().unwrap_or(0) != n {
                bail!("replay and tshark disagree on {ip}: {n} vs {:?}", by_ip.get(ip));
            }
        }
        check = format!("{} destinations, {} B of TLS app data, equal in both", by_ip.len(), by_ip.values().sum::<u64>());
    }
    let _ = std::fs::remove_file(&path);
    let (_, med, _) = spread(ratios.clone());
    let mut out = format!("## Offline: replay vs tshark on a {:.0} MB capture\n\n", bytes as f64 / 1e6);
    let _ = writeln!(out, "| tool | wall s | peak RSS MiB |\n|---|---|---|");
    let _ = writeln!(out, "| echo-agent replay | {} | {:.1} |", fmt3(spread(ours), 2), mem.0);
    let _ = writeln!(out, "| tshark -T fields (baseline) | {} | {:.1} |", fmt3(spread(theirs), 2), mem.1);
    let _ = writeln!(
        out,
        "\nSpeed-up {} (min/median/max); {check}. Goals: ≥ 20× faster: {}; less memory: {}.\n",
        fmt3(spread(ratios), 1),
        goal(med >= 20.0),
        goal(mem.0 < mem.1)
    );
    Ok(out)
}
