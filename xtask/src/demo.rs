//! `cargo xtask demo`: a simulated household. Namespaces for the Echo, the controller, the
//! hotspot and the cloud; `echo-agent run` on the hotspot's device-facing interface; the
//! simulated Echo (real TLS) with heartbeats, voice commands, a muted upload and a trickle,
//! and the controller's marker pings. It prints what the agent finds as it happens, forwards
//! the agent's metrics and API to 127.0.0.1 on this machine, and cleans up on exit.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    agent::Agent,
    echo_sim::{self, Cloud, Hooks, Household, DEVICE_NAME as DEVICE},
    netns::{server_v4, spawn_in, tls_addr, Topology},
    packets::DEVICE_MAC,
};

/// Without --duration: slots for about an hour, until Ctrl-C.
const UNTIL_STOPPED: usize = 500;

pub struct Options {
    /// Stop after this long (Ctrl-C stops earlier).
    pub duration: Option<Duration>,
    /// Where this machine reaches the agent's metrics and API.
    pub listen: SocketAddr,
}

pub fn run(opts: Options) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/echo-agent");
    let topo = Topology::new(1500)?;
    let server = tls_addr(server_v4(0));
    let _cloud = Cloud::start(&topo, server)?;
    let state = crate::agent::state_dir(&format!("{}-demo", topo.id));
    let mac = DEVICE_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let flags = echo_sim::agent_flags(&state);
    let agent = Agent::start(&bin, &topo, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
    let listen = forward(opts.listen, agent.ns.clone(), agent.listen)?;

    let mut house = Household::default();
    if opts.duration.is_none_or(|d| d > Duration::from_secs(120)) {
        // Room for heartbeats between commands.
        house.every = Duration::from_secs(15);
    }
    let slots = match opts.duration {
        Some(d) => (d.saturating_sub(house.lead_in + Duration::from_secs(8)).as_secs_f64() / house.every.as_secs_f64()).floor() as usize,
        None => UNTIL_STOPPED,
    };
    house.muted_upload = slots >= 3;
    house.trickle = slots >= 6;
    house.commands = slots.saturating_sub(house.muted_upload as usize + house.trickle as usize).max(1);
    println!("echo-agent demo: a simulated household");
    println!("  device {mac} ({DEVICE}) in namespace {}, hotspot {} (interface {}), cloud {}", topo.device_ns, topo.hotspot_ns, topo.hotspot_lan_if, topo.cloud_ns);
    println!("  metrics  http://{listen}/metrics");
    println!("  API      http://{listen}/api/interactions  /api/frames  /api/arms  /api/unexpected  /api/devices  /api/destinations");
    println!(
        "  plan: heartbeats (100 B every {:.1} s, 99 B every {:.1} s: 10x time-compressed), {} voice commands framed by marker pings over arms {}{}{}",
        echo_sim::HEARTBEATS[0].1 / house.compress,
        echo_sim::HEARTBEATS[1].1 / house.compress,
        house.commands,
        echo_sim::ARMS.join(","),
        if house.muted_upload { ", one upload while muted" } else { "" },
        if house.trickle { ", one trickle outside any interaction" } else { "" },
    );
    println!("  {}", match opts.duration {
        Some(d) => format!("runs for {} s (Ctrl-C stops earlier)", d.as_secs()),
        None => "runs until Ctrl-C".to_string(),
    });
    println!();

    let t0 = Instant::now();
    let mut report = echo_sim::mute_via_api(&agent);
    let mute = Box::new(move |m: bool| -> Result<()> {
        println!("{:>7.1}s  household automation: microphone {}", t0.elapsed().as_secs_f64(), if m { "MUTED" } else { "unmuted" });
        report(m)
    });
    let sim = echo_sim::run(&topo, server, house.plan(), Hooks::controller(&topo, mute, stop.clone()))?;
    let deadline = opts.duration.map(|d| t0 + d);
    let mut table = Table::default();
    while !sim.is_finished() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(500));
        table.update(&agent, t0)?;
    }
    let truth = sim.join().map_err(|_| anyhow::anyhow!("the simulated Echo panicked"))??;
    // The last window closes after the idle gap.
    thread::sleep(Duration::from_millis(3_500));
    table.update(&agent, t0)?;
    table.summary(&agent)?;
    println!(
        "simulator sent {} commands, {} heartbeats ({} B), trickle {} B; cleaning up",
        truth.commands.len(),
        truth.heartbeats,
        truth.heartbeat_bytes,
        truth.trickle_bytes
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// Prints the agent's new records as they appear.
#[derive(Default)]
struct Table {
    seen: [usize; 3],
    wall0: Option<f64>,
}

fn api(agent: &Agent, path: &str) -> Result<Vec<Value>> {
    let r = agent.get(path)?;
    let v: Value = serde_json::from_str(&r.body).with_context(|| format!("{path}: {}", r.body))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

impl Table {
    fn update(&mut self, agent: &Agent, t0: Instant) -> Result<()> {
        let wall0 = *self.wall0.get_or_insert_with(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64() - t0.elapsed().as_secs_f64()
        });
        let at = |v: &Value| format!("{:>7.1}s", v["start"].as_f64().unwrap_or(0.0) - wall0);
        for (k, path) in ["/api/interactions", "/api/frames", "/api/unexpected"].iter().enumerate() {
            let rows = api(agent, path)?;
            for r in rows.iter().skip(self.seen[k]) {
                let line = match k {
                    0 => format!(
                        "interaction  upload {:>7} B  download {:>7} B  {:>5.2} s  top {} {} ({} B), group {}{}",
                        r["upload_bytes"],
                        r["download_bytes"],
                        r["duration"].as_f64().unwrap_or(0.0),
                        r["top_destination"].as_str().unwrap_or("-"),
                        r["top_destination_name"].as_str().unwrap_or("(unnamed)"),
                        r["top_destination_upload_bytes"],
                        r["top_group"].as_str().unwrap_or("-"),
                        if r["muted"].as_bool() == Some(true) { "  WHILE MUTED" } else { "" }
                    ),
                    1 => format!("frame #{:<3} arm {:<4} upload to top destination {:>7} B", r["index"], r["arm"].as_str().unwrap_or("?"), r["upload_bytes"]),
                    _ => format!("UNEXPECTED   {} B ({} uploads), reason {}", r["bytes"], r["uploads"], r["reason"].as_str().unwrap_or("?")),
                };
                println!("{}  {line}", at(r));
            }
            self.seen[k] = rows.len();
        }
        Ok(())
    }

    fn summary(&self, agent: &Agent) -> Result<()> {
        println!();
        println!("{:<6} {:>3} {:>5} {:>10} {:>9} {:>10}", "arm", "n", "kept", "mean B", "sd B", "median B");
        for a in api(agent, "/api/arms")? {
            let f = |k: &str| a[k].as_f64().unwrap_or(f64::NAN);
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            println!("{:<6} {:>3} {:>5} {:>10.0} {:>9.0} {:>10.0}", a["arm"].as_str().unwrap_or("?"), n("n"), n("kept"), f("mean"), f("sd"), f("median"));
        }
        let m = agent.scrape()?;
        println!();
        for name in [
            "echo_interactions_total",
            "echo_background_upload_bytes_total",
            "echo_unexpected_upload_bytes_total",
            "echo_upload_tls_bytes_total",
            "echo_destination_info",
            "echo_events_dropped_total",
        ] {
            for (labels, v) in m.series(name).into_iter().filter(|(_, v)| *v > 0.0 || name == "echo_events_dropped_total") {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                println!("{name}{{{}}} {v}", l.join(","));
            }
        }
        println!();
        Ok(())
    }
}

/// Forwards TCP connections to `listen` on this machine into namespace `ns`, to `target`
/// (the agent's loopback listener there). Falls back to any free port.
fn forward(listen: SocketAddr, ns: String, target: SocketAddr) -> Result<SocketAddr> {
    let l = TcpListener::bind(listen).or_else(|_| TcpListener::bind(SocketAddr::new(listen.ip(), 0))).context("binding the demo's forwarder")?;
    let addr = l.local_addr()?;
    thread::spawn(move || {
        for client in l.incoming().flatten() {
            let ns = ns.clone();
            let _ = spawn_in(&ns, move || {
                if let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    let _ = pipe(client, upstream);
                }
            });
        }
    });
    Ok(addr)
}

fn pipe(a: TcpStream, b: TcpStream) -> io::Result<()> {
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    let t = thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
    Ok(())
}
