//! `cargo xtask soak --minutes N`: the demo household, time-compressed, for N minutes, plus
//! churn (a new TLS connection every `CHURN_EVERY`, each after a DNS lookup and with its own
//! SNI, so flows, destinations, snippets and names keep coming). Every `SAMPLE_EVERY` it
//! samples the agent's RSS, open file descriptors and threads (from /proc) and its map and
//! name entries (from /metrics). After the warm-up threads must not change at all, nor the
//! floor of the descriptors (each minute's least: API connections come and go above it), the
//! heap (RssAnon) must be flat within noise, and map entries must stay within their
//! configured bounds.
//!
//! The heap, not all of RSS: RSS also counts the ring buffers' pages, mapped from the kernel
//! (1.25 MiB), which become resident one by one as events first pass through them, so RSS
//! climbs at the event rate until the rings have wrapped once (hours, for a household).

use std::{
    fmt::Write as _,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    agent::Agent,
    dns::{self, dns_addr},
    echo_sim::{self, Cloud, Hooks, Household},
    netns::{server_v4, spawn_in, tls_addr, Topology},
    tls::{rustls_upload_as, TlsServer, Version},
};

/// The soak `cargo xtask test` runs.
pub const TEST_MINUTES: f64 = 3.0;

/// Records of each kind the soaked agent keeps for its API: full within the warm-up.
const API_HISTORY: usize = 4;

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const CHURN_EVERY: Duration = Duration::from_secs(2);
/// Distinct SNI names the churn cycles through.
const CHURN_NAMES: usize = 50;
/// Warm-up: the first half of the run, at least this long (allocator arenas and the API's
/// bounded history fill, the first flows and names arrive; the heap's growth slows down).
const MIN_WARM_UP: Duration = Duration::from_secs(60);
/// Heap growth after the warm-up, at the fitted slope over that half, that still counts as
/// flat: 24 pages, twice what a warming allocator showed over a 3-minute soak's second half
/// (44 KiB). A leak of 150 bytes per event, at the ~9 events a second of this household and
/// its churn, grows the heap by ~115 KiB there.
const HEAP_NOISE_KIB: f64 = 96.0;
/// Descriptors above the floor that are API connections in flight (the household's controller
/// and this sampler talk to the agent's API while it is sampled).
const FDS_IN_FLIGHT: f64 = 4.0;

#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub at: f64,
    pub rss_kib: f64,
    pub heap_kib: f64,
    pub fds: f64,
    pub threads: f64,
    pub flows: f64,
    pub destinations: f64,
    pub names: f64,
}

/// Least-squares slope per second of `ys` over `xs`, and its standard error.
pub fn slope(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if sxx == 0.0 || n < 3.0 {
        return (0.0, 0.0);
    }
    let b = sxy / sxx;
    let residuals: f64 = xs.iter().zip(ys).map(|(x, y)| (y - my - b * (x - mx)).powi(2)).sum();
    (b, (residuals / (n - 2.0) / sxx).sqrt())
}

fn proc_status(pid: u32, key: &str) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in /proc/{pid}/status"))?;
    Ok(line[key.len()..].trim().trim_end_matches(" kB").trim().parse()?)
}

fn sample(agent: &Agent, t0: Instant) -> Result<Sample> {
    let pid = agent.pid().context("the agent runs")?;
    // /proc first: the scrape's own connection may still be open on the agent's side after.
    let (at, rss_kib, heap_kib) = (t0.elapsed().as_secs_f64(), proc_status(pid, "VmRSS:")?, proc_status(pid, "RssAnon:")?);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    let threads = proc_status(pid, "Threads:")?;
    let m = agent.scrape()?;
    Ok(Sample {
        at,
        rss_kib,
        heap_kib,
        fds,
        threads,
        flows: m.value("echo_map_entries", &[("map", "flows")]),
        destinations: m.value("echo_map_entries", &[("map", "destinations")]),
        names: m.series("echo_destination_info").len() as f64,
    })
}

/// Runs the soak; returns the report (markdown) and whether every series was flat.
pub fn run(bin: &Path, minutes: f64) -> Result<(String, bool)> {
    let duration = Duration::from_secs_f64(minutes * 60.0);
    let topo = Topology::new(1500)?;
    let server = tls_addr(server_v4(0));
    let _cloud = Cloud::start(&topo, server)?;
    let churn_server = tls_addr(server_v4(1));
    let _churn = TlsServer::start(&topo, vec![churn_server], 1_000)?;
    let state = crate::agent::state_dir(&format!("{}-soak", topo.id));
    // The API's history is bounded (`--api-history`); kept small here so it is full after the
    // warm-up and any growth left is a leak.
    let mut flags = echo_sim::agent_flags(&state);
    flags.extend(["--api-history".to_string(), API_HISTORY.to_string()]);
    let agent = Agent::start(bin, &topo, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;

    let house = Household { lead_in: Duration::from_secs(4), trickle: false, muted_upload: false, ..Default::default() };
    let house = Household { commands: (duration.as_secs_f64() / house.every.as_secs_f64()).ceil() as usize + 1, ..house };
    let stop = Arc::new(AtomicBool::new(false));
    let sim = echo_sim::run(&topo, server, house.plan(), Hooks::controller(&topo, Box::new(|_| Ok(())), stop.clone()))?;
    let churn_stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (samples, connections) = thread::scope(|scope| -> Result<(Vec<Sample>, u64)> {
        let churn = scope.spawn(|| -> Result<u64> {
            let mut n = 0u64;
            while !churn_stop.load(Ordering::Relaxed) {
                // A lookup of the cloud's name (a DNS snippet), then a new connection with a
                // name of its own as SNI (a ClientHello snippet, two flows, a name).
                spawn_in(&topo.device_ns, || dns::resolve(dns_addr(), echo_sim::ECHO_HOST, true))?
                    .join()
                    .map_err(|_| anyhow::anyhow!("lookup panicked"))??;
                let name = format!("churn-{}.example", n as usize % CHURN_NAMES);
                rustls_upload_as(&topo, churn_server, Some(&name), Version::Tls13, vec![2_000], Duration::ZERO)?
                    .join()
                    .map_err(|_| anyhow::anyhow!("churn connection panicked"))??;
                n += 1;
                let next = Instant::now() + CHURN_EVERY;
                while Instant::now() < next && !churn_stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            Ok(n)
        });
        let mut samples = Vec::new();
        while t0.elapsed() < duration {
            samples.push(sample(&agent, t0)?);
            thread::sleep(SAMPLE_EVERY.min(duration.saturating_sub(t0.elapsed())));
        }
        samples.push(sample(&agent, t0)?);
        churn_stop.store(true, Ordering::Relaxed);
        let connections = churn.join().map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        Ok((samples, connections))
    })?;
    stop.store(true, Ordering::Relaxed);
    let truth = sim.join().map_err(|_| anyhow::anyhow!("the simulated Echo panicked"))??;
    // The last command's window closes after the idle gap (2 s).
    thread::sleep(Duration::from_millis(3_500));
    let interactions = agent.scrape()?.value("echo_interactions_total", &[("device", echo_sim::DEVICE_NAME)]);
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
    Ok(verdict(&samples, minutes, truth.commands.len(), interactions, connections))
}

/// The distinct per-minute floors (least) of descriptor counts, and how far any count rose
/// above its minute's floor.
fn fd_floors(fds: &[f64]) -> (Vec<f64>, f64) {
    let per_minute = (60.0 / SAMPLE_EVERY.as_secs_f64()) as usize;
    let (mut floors, mut in_flight) = (Vec::new(), 0.0f64);
    for minute in fds.chunks(per_minute) {
        let floor = minute.iter().cloned().fold(f64::MAX, f64::min);
        in_flight = minute.iter().fold(in_flight, |m, f| m.max(f - floor));
        if !floors.contains(&floor) {
            floors.push(floor);
        }
    }
    (floors, in_flight)
}

fn verdict(samples: &[Sample], minutes: f64, commands: usize, interactions: f64, connections: u64) -> (String, bool) {
    let warm = MIN_WARM_UP.as_secs_f64().max(minutes * 60.0 / 2.0);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm).collect();
    let xs: Vec<f64> = after.iter().map(|s| s.at).collect();
    let col = |f: fn(&Sample) -> f64| after.iter().map(|s| f(s)).collect::<Vec<f64>>();
    let spread = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min);
    let (heap_slope, heap_se) = slope(&xs, &col(|s| s.heap_kib));
    let window = xs.last().copied().unwrap_or(0.0) - xs.first().copied().unwrap_or(0.0);
    let heap_growth = heap_slope * window;
    let heap_hour = heap_slope * 3600.0;
    let rss_hour = slope(&xs, &col(|s| s.rss_kib)).0 * 3600.0;
    let (fds, threads) = (col(|s| s.fds), col(|s| s.threads));
    let (floors, in_flight) = fd_floors(&fds);
    let max = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    let checks = [
        (
            format!(
                "heap (RssAnon) after warm-up ({warm:.0} s): {heap_growth:+.0} KiB over {window:.0} s at the fitted slope ({heap_hour:+.0} ± {:.0} KiB/hour; flat: at most +{HEAP_NOISE_KIB:.0} KiB); all of RSS: {rss_hour:+.0} KiB/hour",
                heap_se * 3600.0
            ),
            heap_growth <= HEAP_NOISE_KIB,
        ),
        (
            format!("open file descriptors after warm-up: each minute's floor within {floors:?}, at most {in_flight} above it (API connections in flight; at most {FDS_IN_FLIGHT})"),
            floors.len() == 1 && in_flight <= FDS_IN_FLIGHT,
        ),
        (format!("threads after warm-up: spread {}", spread(&threads)), spread(&threads) == 0.0),
        (
            format!("flow entries at most {} (bound {})", max(|s| s.flows), echo_common::FLOW_TABLE_ENTRIES),
            max(|s| s.flows) <= echo_common::FLOW_TABLE_ENTRIES as f64,
        ),
        (
            format!("destination entries at most {} (bound {})", max(|s| s.destinations), echo_common::DEST_STATS_ENTRIES),
            max(|s| s.destinations) <= echo_common::DEST_STATS_ENTRIES as f64,
        ),
        (format!("interactions found {interactions} of {commands} commands"), interactions as usize == commands),
    ];
    let mut r = String::new();
    let _ = writeln!(r, "# Soak: {minutes} minutes\n");
    let _ = writeln!(r, "The household time-compressed 10x ({commands} voice commands), plus {connections} churn connections (DNS lookup, new TLS connection, one of {CHURN_NAMES} SNI names).\n");
    let _ = writeln!(r, "| s | RSS KiB | heap KiB | fds | threads | flow entries | destination entries | names |\n|---|---|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            r,
            "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            s.at, s.rss_kib, s.heap_kib, s.fds, s.threads, s.flows, s.destinations, s.names
        );
    }
    let _ = writeln!(r);
    let mut ok = true;
    for (what, pass) in &checks {
        ok &= *pass;
        let _ = writeln!(r, "- {what}: {}", if *pass { "ok" } else { "FAILED" });
    }
    (r, ok)
}

/// Runs the soak, writes `target/soak/report.md`, fails unless every series was flat.
pub fn run_and_report(root: &Path, minutes: f64) -> Result<()> {
    let (report, ok) = run(&root.join("target/release/echo-agent"), minutes)?;
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), &report)?;
    println!("{report}");
    ensure!(ok, "soak: a series was not flat (see target/soak/report.md)");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line() {
        assert_eq!(super::slope(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 5.0, 7.0]), (2.0, 0.0));
        assert_eq!(super::slope(&[5.0, 5.0, 5.0], &[1.0, 2.0, 3.0]), (0.0, 0.0));
        let (b, se) = super::slope(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 0.0, 1.0]);
        assert!((b - 0.2).abs() < 1e-12 && (se - 0.08f64.sqrt()).abs() < 1e-12, "{b} {se}");
    }

    #[test]
    fn descriptor_floors() {
        let minute = |floor: f64, peak: f64| [vec![floor; 11], vec![peak]].concat();
        assert_eq!(super::fd_floors(&[minute(28.0, 30.0), minute(28.0, 29.0)].concat()), (vec![28.0], 2.0));
        // A descriptor leaked once a minute raises every floor.
        assert_eq!(super::fd_floors(&[minute(28.0, 28.0), minute(29.0, 29.0)].concat()), (vec![28.0, 29.0], 0.0));
    }
}
