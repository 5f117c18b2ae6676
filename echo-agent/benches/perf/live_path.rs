//! The live path: a UDP flood at the highest rate one sender thread reaches, from a
//! namespace whose interface has the monitored device's MAC, over a veth pair into a
//! namespace where echo-agent is attached (skb or driver mode, or at TC ingress) or not (the
//! baseline).
//! The rate is what the receiver's stack processed (UDP NoPorts), and CPU is the busy share
//! of all cores, both over the same interval.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use echo_agent::{
    clock::Clock,
    device::Mac,
    loader::{BASELINE_PROGRAM, TC_UPLOAD_PROGRAM, XDP_PROGRAM},
};
use xtask::{
    netns::{ip, nsenter, spawn_in},
    packets::DEVICE_MAC,
};

use crate::{fmt3, goal, spread, Scale};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");

pub struct Pair {
    pub sender: String,
    pub sink: String,
    pub sink_if: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.sink] {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/echo-agent/v1").join(&self.sink_if));
    }
}

pub fn pair() -> Result<Pair> {
    let id = format!("{:x}", std::process::id());
    let p = Pair { sender: format!("eabgen-{id}"), sink: format!("eabsnk-{id}"), sink_if: format!("bs{id}") };
    let gen_if = format!("bg{id}");
    ip(&["netns", "add", &p.sender])?;
    ip(&["netns", "add", &p.sink])?;
    ip(&["link", "add", &gen_if, "netns", &p.sender, "address", &Mac(DEVICE_MAC).to_string(), "type", "veth", "peer", "name", &p.sink_if, "netns", &p.sink])?;
    ip(&["-n", &p.sender, "addr", "add", "10.99.0.2/24", "dev", &gen_if])?;
    ip(&["-n", &p.sink, "addr", "add", "10.99.0.1/24", "dev", &p.sink_if])?;
    ip(&["-n", &p.sender, "link", "set", &gen_if, "up"])?;
    ip(&["-n", &p.sink, "link", "set", "lo", "up"])?;
    ip(&["-n", &p.sink, "link", "set", &p.sink_if, "up"])?;
    ip(&["-n", &p.sender, "neigh", "replace", "10.99.0.1", "lladdr", "02:ec:40:99:00:01", "dev", &gen_if])?;
    ip(&["-n", &p.sink, "link", "set", &p.sink_if, "address", "02:ec:40:99:00:01"])?;
    Ok(p)
}

/// UDP datagrams the sink's stack processed so far (no socket listens: NoPorts).
fn processed(ns: &str) -> Result<u64> {
    let out = nsenter(ns).args(["cat", "/proc/net/snmp"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().context("Udp header")?, udp.next().context("Udp values")?);
    let i = names.split_whitespace().position(|n| n == "NoPorts").context("NoPorts")?;
    Ok(values.split_whitespace().nth(i).context("value")?.parse()?)
}

/// (busy, kernel: system + irq + softirq, total) jiffies of all CPUs.
fn cpu() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    (total - at(3) - at(4), at(2) + at(5) + at(6), total)
}

/// Floods for `secs`; returns (packets per second processed, busy share of all cores,
/// kernel CPU ns per packet: the sender's syscalls and the receiver's processing, and when
/// `program` names the XDP program attached, its mean run time in ns from the kernel's BPF
/// statistics, turned on for `STATS_SECS` after the measured interval only: they add two
/// clock reads to every run, which would lower the rate measured).
fn flood(p: &Pair, secs: f64, program: Option<&str>) -> Result<(f64, f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let sender = spawn_in(&p.sender, move || -> Result<()> {
        let s = UdpSocket::bind("10.99.0.2:0")?;
        s.connect("10.99.0.1:9")?;
        let buf = [0x5au8; 18];
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..256 {
                let _ = s.send(&buf);
            }
        }
        Ok(())
    })?;
    thread::sleep(Duration::from_millis(300)); // warm-up
    let (n0, c0, t0) = (processed(&p.sink)?, cpu(), Instant::now());
    thread::sleep(Duration::from_secs_f64(secs));
    let (n1, c1, dt) = (processed(&p.sink)?, cpu(), t0.elapsed().as_secs_f64());
    let run_ns = match program {
        Some(name) => {
            let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF statistics")?;
            let (r0, ns0) = run_stats(name);
            thread::sleep(Duration::from_secs_f64(STATS_SECS));
            let (r1, ns1) = run_stats(name);
            (ns1 - ns0) as f64 / (r1 - r0).max(1) as f64
        }
        None => f64::NAN,
    };
    stop.store(true, Ordering::Relaxed);
    sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let packets = (n1 - n0).max(1) as f64;
    Ok((packets / dt, (c1.0 - c0.0) as f64 / (c1.2 - c0.2).max(1) as f64, (c1.1 - c0.1) as f64 * 1e9 / tck / packets, run_ns))
}

/// Seconds of each program run's flood with the kernel's BPF statistics on.
const STATS_SECS: f64 = 1.0;

/// (run count, total run time in ns) of every loaded program named `name`, summed: one is
/// attached, and any other (the agent's object loads echo_xdp with echo_tc) has not run.
fn run_stats(name: &str) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(r, ns), p| (r + p.run_count(), ns + p.run_time().as_nanos() as u64))
}

pub fn run(scale: Scale) -> Result<String> {
    let p = pair()?;
    let state = xtask::agent::state_dir(&format!("bench-state-{}", std::process::id()));
    // The full run has twice the rounds of shorter floods: the rate swings by tens of percent
    // within seconds, so more pairs settle a median more than longer floods do.
    let (rounds, secs) = if scale.quick { (scale.rounds, 2.0) } else { (scale.rounds * 2, 3.0) };
    let mut out = format!("## Live path: UDP flood from the device over a veth pair\n\n{rounds} rounds of {secs} s floods.\n\n| program | packets/s processed | ratio to no program | CPU busy (all cores) | kernel CPU ns/packet | program ns/run (BPF stats) |\n|---|---|---|---|---|---|\n");
    let names = [
        "none (baseline)",
        "pass-only XDP program, skb mode",
        "echo_xdp alone (no agent process), skb mode",
        "echo-agent, skb mode",
        "echo-agent, driver mode",
        "echo-agent, TC ingress (`--xdp-mode tc-ingress`)",
    ];
    // The upload program each configuration attaches, whose run time the kernel reports.
    let programs = [None, Some(BASELINE_PROGRAM), Some(XDP_PROGRAM), Some(XDP_PROGRAM), Some(XDP_PROGRAM), Some(TC_UPLOAD_PROGRAM)];
    // Each program's runs, one a round (the baseline's, one more).
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); names.len()];
    let t0 = Instant::now();
    let mut flood_at = |k: usize| -> Result<()> {
        let start = t0.elapsed().as_secs_f64();
        let (pps, busy, ns, run_ns) = flood(&p, secs, programs[k])?;
        runs[k].push(Run { pps, busy, ns, run_ns, at: start + secs / 2.0 });
        Ok(())
    };
    for _ in 0..rounds {
        flood_at(0)?;
        // The pass-only program and echo_xdp, each attached by the bench alone.
        for k in [1, 2] {
            let attached = attach_alone(&p, programs[k].expect("a program"))?;
            let r = flood_at(k);
            attached.stop()?;
            r?;
        }
        for (k, mode) in [(3, "skb"), (4, "driver"), (5, "tc-ingress")] {
            let mut agent = nsenter(&p.sink)
                .arg(BIN)
                .args(["run", "--iface", &p.sink_if, "--device", &Mac(DEVICE_MAC).to_string(), "--xdp-mode", mode, "--web.listen-address", "127.0.0.1:9979", "--state-dir"])
                .arg(&state)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            thread::sleep(Duration::from_millis(1_500));
            let r = flood_at(k);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            agent.wait()?;
            r?;
        }
    }
    // One more baseline closes the last round, so that every program run lies between two.
    flood_at(0)?;
    let _ = std::fs::remove_dir_all(&state);
    let ratios: Vec<Vec<f64>> = runs.iter().map(|r| r.iter().enumerate().map(|(i, x)| x.pps / baseline_at(&runs[0], i.min(runs[0].len() - 2), x.at)).collect()).collect();
    let (hook_ratio, skb_ratio, tc_ratio) = (spread(ratios[1].clone()).1, spread(ratios[3].clone()).1, spread(ratios[5].clone()).1);
    // Configuration k's min / median / max of one figure.
    let col = |k: usize, f: fn(&Run) -> f64| spread(runs[k].iter().map(f).collect());
    for (k, name) in names.iter().enumerate() {
        let run_ns = if programs[k].is_some() { fmt3(col(k, |r| r.run_ns), 0) } else { "–".into() };
        let _ = writeln!(out, "| {name} | {} | {} | {} | {} | {run_ns} |", fmt3(col(k, |r| r.pps), 0), fmt3(spread(ratios[k].clone()), 3), fmt3(col(k, |r| r.busy), 2), fmt3(col(k, |r| r.ns), 0));
    }
    let median = |k: usize, f: fn(&Run) -> f64| col(k, f).1;
    // The program's own cost live: its run time over the pass-only program's (both carry
    // the statistics' clock reads), against a packet's whole cost at the no-program rate.
    let (program_ns, packet_ns) = (median(3, |r| r.run_ns) - median(1, |r| r.run_ns), 1e9 / median(0, |r| r.pps));
    let _ = writeln!(
        out,
        "\nA veth hands the packet to the receiving stack on the sending CPU, so sender and receiver share one core (CPU busy 0.5 of 2): the program's cost lowers the rate directly, and the kernel CPU per packet (sender's syscall included) shows it. The program's run time comes from the kernel's BPF statistics (`BPF_ENABLE_STATS`), on for {STATS_SECS} s after each measured interval only, since they add two clock reads to every run (the pass-only program's figure is mostly those). In the agent in skb mode, `echo_xdp` ran {program_ns:.0} ns longer than the pass-only program (medians): {:.1}% of a packet's {packet_ns:.0} ns at the no-program rate, so the program alone would leave {:.1}% of that rate. Each ratio is to the no-program rate interpolated, at the run's middle, between the round's baseline run and the next one's (one more closes the last round). The pass-only program (`echo_baseline`, attached in skb mode) shows what the generic XDP hook costs by itself: {:.1}% of the no-program rate; `echo_xdp` attached alone (loaded by the bench, the flood's MAC monitored, no agent process) what the program costs without the agent around it. With `--xdp-mode tc-ingress` the agent counts uploads at TC ingress instead of XDP (echo_tc_up): no copy of the frame first, headers read in place from the skb's linear area as XDP reads them: median {:.1}% of the no-program rate. Goal: ≥ 95% of the no-program rate in skb mode: median {:.1}%, {}.\n",
        program_ns / packet_ns * 100.0,
        packet_ns / (packet_ns + program_ns) * 100.0,
        hook_ratio * 100.0,
        tc_ratio * 100.0,
        skb_ratio * 100.0,
        goal(skb_ratio >= 0.95)
    );
    Ok(out)
}

/// One flood's figures, and when it ran.
#[derive(Clone, Copy)]
struct Run {
    pps: f64,
    busy: f64,
    ns: f64,
    /// The attached program's mean run time, ns (NaN without one).
    run_ns: f64,
    /// Seconds since the measurement began, at the flood's middle.
    at: f64,
}

/// The no-program rate at time `at`, interpolated between baseline runs `i` and `i + 1` (the
/// round's and the next one's): the machine's rate drifts within a round, and a program run
/// compared with one baseline alone takes the drift for its own cost.
fn baseline_at(base: &[Run], i: usize, at: f64) -> f64 {
    let (a, b) = (base[i], base[i + 1]);
    let w = ((at - a.at) / (b.at - a.at)).clamp(0.0, 1.0);
    a.pps + (b.pps - a.pps) * w
}

/// An XDP program of the agent's object attached alone in skb mode to the sink's interface,
/// with the flood's MAC as the monitored device, until `stop`.
struct Attached {
    stop: std::sync::mpsc::Sender<()>,
    thread: thread::JoinHandle<Result<()>>,
}

impl Attached {
    fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| anyhow::anyhow!("attaching thread panicked"))?
    }
}

fn attach_alone(p: &Pair, program: &'static str) -> Result<Attached> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready) = std::sync::mpsc::channel::<Result<()>>();
    let iface = p.sink_if.clone();
    let thread = spawn_in(&p.sink, move || -> Result<()> {
        let attached = (|| -> Result<_> {
            let mut progs = echo_agent::loader::Programs::load(&[], Clock::Monotonic)?;
            progs.set_devices(&[Mac(DEVICE_MAC)])?;
            let prog: &mut aya::programs::Xdp = progs.ebpf.program_mut(program).context(program)?.try_into()?;
            // `Programs::load` loaded echo_xdp already, not the baseline.
            if prog.fd().is_err() {
                prog.load()?;
            }
            let link = prog.attach(&iface, aya::programs::XdpMode::Skb)?;
            Ok((progs, link))
        })();
        let (_progs, _link) = match attached {
            Ok(a) => {
                let _ = ready_tx.send(Ok(()));
                a
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                return Ok(());
            }
        };
        let _ = stopped.recv();
        Ok(())
    })?;
    ready.recv().context("attaching thread")??;
    Ok(Attached { stop, thread })
}
