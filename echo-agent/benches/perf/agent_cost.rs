//! The agent's own cost: CPU share and memory while the demo household runs 10× faster than
//! real (against the same agent idle), and scrape latency with 16 devices × 50 destinations
//! (against the same agent before any destination exists).

use std::{
    fmt::Write as _,
    path::Path,
    sync::{atomic::AtomicBool, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use echo_agent::device::Mac;
use xtask::{
    agent::Agent,
    echo_sim::{self, Hooks, Household},
    http,
    netns::{server_v4, spawn_in, tls_addr, Topology},
    packets::{tls_stream, Ip, TcpFrame, ACK, PSH, SYN},
};

use crate::{fmt3, goal, live_path, spread, Scale};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");

/// (CPU seconds so far, resident MiB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks / tck, rss / 1024.0)
}

/// Share of one core and peak RSS over `secs`, sampled every second.
fn watch(pid: u32, secs: u64) -> (f64, f64) {
    let (c0, mut peak) = usage(pid);
    let t0 = Instant::now();
    while t0.elapsed().as_secs() < secs {
        thread::sleep(Duration::from_secs(1));
        peak = peak.max(usage(pid).1);
    }
    ((usage(pid).0 - c0) / t0.elapsed().as_secs_f64(), peak)
}

fn household(secs: u64) -> Result<String> {
    let topo = Topology::new(1500).context("topology")?;
    let server = tls_addr(server_v4(0));
    let _cloud = echo_sim::Cloud::start(&topo, server).context("cloud")?;
    let state = xtask::agent::state_dir(&format!("{}-bench", topo.id));
    let args = echo_sim::agent_flags(&state);
    let agent = Agent::start(Path::new(BIN), &topo, &args.iter().map(String::as_str).collect::<Vec<_>>()).context("agent")?;
    let pid = agent.pid().expect("running");
    let idle = watch(pid, (secs / 4).max(10));
    let house = Household { commands: ((secs.saturating_sub(16)) / 7).max(1) as usize, ..Default::default() };
    let sim = echo_sim::run(&topo, server, house.plan(), Hooks::controller(&topo, Box::new(|_| Ok(())), Arc::new(AtomicBool::new(false))))?;
    let busy = watch(pid, house.duration().as_secs());
    let truth = sim.join().map_err(|_| anyhow::anyhow!("simulator panicked"))?.context("simulated Echo")?;
    let found: Vec<serde_json::Value> = serde_json::from_str(&agent.get("/api/interactions").context("API")?.body)?;
    let _ = std::fs::remove_dir_all(&state);
    let mut out = format!("## Agent cost: the demo household, 10× faster than real, {} s\n\n", house.duration().as_secs());
    let _ = writeln!(out, "| agent | CPU (share of one core) | peak RSS MiB |\n|---|---|---|");
    let _ = writeln!(out, "| idle (baseline) | {:.4} | {:.1} |", idle.0, idle.1);
    let _ = writeln!(out, "| household ({} commands, {} heartbeats) | {:.4} | {:.1} |", truth.commands.len(), truth.heartbeats, busy.0, busy.1);
    let _ = writeln!(
        out,
        "\n{} interactions found for {} commands. Goals: < 1% of one core: {}; RSS < 30 MB: {}.\n",
        found.len(),
        truth.commands.len(),
        goal(busy.0 < 0.01),
        goal(busy.1 * 1.048_576 < 30.0)
    );
    Ok(out)
}

/// Frames from 16 device MACs to 50 destinations each, through an AF_PACKET socket.
fn inject(ns: &str, iface: &str, devices: &[[u8; 6]], dests: u8) -> Result<()> {
    let (ns, iface, devices) = (ns.to_string(), iface.to_string(), devices.to_vec());
    spawn_in(&ns, move || -> Result<()> {
        // SAFETY: plain socket calls with buffers we own.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let name = std::ffi::CString::new(iface)?;
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            for (d, mac) in devices.iter().enumerate() {
                for j in 0..dests {
                    for (seq, flags, payload) in [(1000u32, SYN, Vec::new()), (1001, ACK | PSH, tls_stream(&[(23, 500)]))] {
                        let mut f = TcpFrame::upload_v4(seq, flags, payload);
                        f.src_mac = *mac;
                        f.ip = Ip::V4 { src: [10, 99, 0, 2], dst: [10, 200, d as u8, j], options: Vec::new() };
                        let frame = f.build();
                        libc::sendto(fd, frame.as_ptr() as *const _, frame.len(), 0, &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
                    }
                }
            }
            libc::close(fd);
        }
        Ok(())
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("injector panicked"))?
}

fn scrape_ms(ns: &str, n: usize) -> Result<(Vec<f64>, usize)> {
    let mut times = Vec::new();
    let mut series = 0;
    for _ in 0..n {
        let t = Instant::now();
        let r = http::request(ns, "127.0.0.1:9978".parse()?, "GET", "/metrics", "")?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        series = r.body.lines().filter(|l| l.starts_with("echo_upload_tls_bytes_total{")).count();
    }
    Ok((times, series))
}

fn scrape(scale: Scale) -> Result<String> {
    let p = live_path::pair()?;
    let devices: Vec<[u8; 6]> = (0..16u8).map(|i| [0x02, 0xec, 0x40, 0x00, 0x10, i]).collect();
    let state = xtask::agent::state_dir(&format!("bench-scrape-{}", std::process::id()));
    let mut cmd = xtask::netns::nsenter(&p.sink);
    cmd.arg(BIN).args(["run", "--iface", &p.sink_if, "--web.listen-address", "127.0.0.1:9978", "--state-dir"]).arg(&state);
    for (i, d) in devices.iter().enumerate() {
        cmd.args(["--device", &format!("{}=speaker-{i:02}", Mac(*d))]);
    }
    let mut agent = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
    thread::sleep(Duration::from_millis(1_500));
    let n = if scale.quick { 30 } else { 100 };
    let result = (|| -> Result<String> {
        let (empty, _) = scrape_ms(&p.sink, n)?;
        let gen_if = p.sink_if.replacen("bs", "bg", 1);
        inject(&p.sender, &gen_if, &devices, 50)?;
        thread::sleep(Duration::from_millis(300));
        let (full, series) = scrape_ms(&p.sink, n)?;
        let med = spread(full.clone()).1;
        Ok(format!(
            "## Scrape latency: 16 devices × 50 destinations\n\n| agent | /metrics latency ms | upload series |\n|---|---|---|\n| 16 devices, no destination (baseline) | {} | 0 |\n| 16 devices × 50 destinations | {} | {series} |\n\nGoal: scrape < 10 ms: median {med:.2} ms, {}.\n\n",
            fmt3(spread(empty), 2),
            fmt3(spread(full), 2),
            goal(med < 10.0)
        ))
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait()?;
    let _ = std::fs::remove_dir_all(&state);
    result
}

pub fn run(scale: Scale) -> Result<String> {
    let secs = if scale.quick { 40 } else { 300 };
    Ok(format!("{}{}", household(secs)?, scrape(scale)?))
}
