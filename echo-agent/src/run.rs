//! `echo-agent run`: the daemon. Loads the programs over the pinned maps, attaches them,
//! serves metrics, follows the interface through restarts, and detaches on SIGTERM/SIGINT.

use std::{
    net::TcpListener,
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use echo_common::{
    MAP_CLASS_COUNTERS, MAP_DEST_STATS, MAP_EVENT_DROPS, MAP_FLOWS, MAP_INSERTS,
    MAP_MARKER_PINGS, MAP_SNIPPET_DROPS,
};
use prometheus::Registry;
use thiserror::Error;

use crate::{
    api::Web,
    attach::{self, Links, XdpMode},
    cli::RunArgs,
    events,
    exporter::{Health, MapCollector},
    live::Live,
    store::Store,
    loader::{Programs, TC_PROGRAM, TC_UPLOAD_PROGRAM, XDP_PROGRAM},
    netlink, pins,
};

/// Bad flags or environment found before anything is attached: one line, exit code 2.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error("cannot create state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("--web.telemetry-path must start with '/' and not be '/', got {0:?}")]
    TelemetryPath(String),
}

/// How often the main loop looks at the interface without a netlink wake-up.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

fn log(msg: impl AsRef<str>) {
    eprintln!("echo-agent: {}", msg.as_ref());
}

pub fn run(args: RunArgs) -> Result<()> {
    if !args.telemetry_path.starts_with('/') || args.telemetry_path == "/" {
        return Err(RunError::TelemetryPath(args.telemetry_path.clone()).into());
    }
    if !crate::loader::has_privileges() {
        return Err(crate::loader::LoadError::Privileges.into());
    }
    // Everything that can be wrong with the flags is checked before touching the kernel.
    let web_config = args.web_config.as_deref().map(crate::web_config::WebConfig::load).transpose()?;
    let listener = TcpListener::bind(args.listen).map_err(|e| RunError::Listen(args.listen, e))?;
    if attach::ifindex(&args.iface).is_none() {
        return Err(attach::AttachError::NoSuchInterface(args.iface.clone()).into());
    }
    if let Ok(kernel) = aya::util::KernelVersion::current() {
        attach::check_kernel(kernel)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
        .map_err(|e| RunError::StateDir(args.state_dir.clone(), e))?;

    let (store, loaded) = Store::open(&args.state_dir)?;
    if loaded.skipped > 0 {
        log(format!("skipped {} unreadable line(s) of the interaction log", loaded.skipped));
    }

    let dir = pins::prepare_for(&args.iface)?;
    let keys: Vec<_> = args.markers.iter().map(|m| m.key()).collect();
    let (mut progs, notes) = Programs::load_pinned(&dir, &keys)?;
    notes.iter().for_each(log);
    let macs: Vec<_> = args.devices.iter().map(|d| d.mac).collect();
    let indices = progs.set_devices(&macs)?;
    let _stats_fd = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?)
    } else {
        None
    };

    let mut program_ids = vec![
        (XDP_PROGRAM, progs.xdp().info().map(|i| i.id()).unwrap_or(0)),
        (TC_PROGRAM, progs.tc().info().map(|i| i.id()).unwrap_or(0)),
    ];
    if args.xdp_mode == XdpMode::TcIngress {
        progs.load_tc_up()?;
        program_ids.push((TC_UPLOAD_PROGRAM, progs.tc_up_mut().info().map(|i| i.id()).unwrap_or(0)));
    }
    let health = Arc::new(Health::new(&args.iface, program_ids, args.bpf_stats));
    let mut links = Some(attach_logged(&mut progs, &args, &dir, &health)?);

    let rings = progs.rings()?;
    let maps = Arc::new(progs.take_maps(&[MAP_DEST_STATS, MAP_CLASS_COUNTERS, MAP_INSERTS, MAP_FLOWS, MAP_EVENT_DROPS, MAP_SNIPPET_DROPS, MAP_MARKER_PINGS]));
    let devices: Vec<(u32, String)> = indices.iter().zip(&args.devices).map(|(i, d)| (*i, d.name.clone())).collect();
    let registry = Registry::new();
    registry.register(Box::new(MapCollector::new(maps.clone(), devices.clone(), args.markers.clone(), health.clone(), args.max_destinations)))?;
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    let config = args.activation.config(args.markers.clone(), args.arms.clone(), Vec::new());
    let live = Arc::new(Live::new(&registry, config, &devices, (store, loaded), args.api_history, Some(maps))?);
    let sink = live.clone();
    events::spawn(rings, move |item| sink.on_item(item)).context("starting the event reader")?;
    let scheme = if web_config.as_ref().is_some_and(|c| c.tls.is_some()) { "https" } else { "http" };
    Web { registry, telemetry_path: args.telemetry_path.clone(), api: Some(live.clone()), config: web_config }
        .spawn(listener)
        .context("starting the HTTP listener")?;
    log(format!("serving metrics on {scheme}://{}{}", args.listen, args.telemetry_path));

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing signal handlers")?;
    }
    let wake = netlink::watch_links().context("watching interfaces (netlink)")?;
    let mut gone_since: Option<Instant> = None;
    while !term.load(Ordering::Relaxed) {
        let _ = wake.recv_timeout(CHECK_INTERVAL);
        while wake.try_recv().is_ok() {}
        follow_interface(&mut progs, &args, &dir, &health, &mut links, &mut gone_since);
    }
    live.finish();
    if let Some(l) = links.take() {
        l.release(args.keep_attached);
    }
    log(if args.keep_attached {
        "exiting; programs left attached (--keep-attached)".to_string()
    } else {
        format!("detached from {}", args.iface)
    });
    Ok(())
}

fn attach_logged(progs: &mut Programs, args: &RunArgs, dir: &std::path::Path, health: &Health) -> Result<Links> {
    let links = attach::attach(progs, &args.iface, args.xdp_mode, dir)?;
    let upload = if links.xdp_mode == attach::TC_INGRESS_MODE { "TC ingress".to_string() } else { format!("XDP ({} mode)", links.xdp_mode) };
    log(format!(
        "{} {upload} and TC egress on {} (ifindex {}); pins in {}",
        if links.reused { "took over" } else { "attached" },
        args.iface,
        links.ifindex,
        dir.display()
    ));
    *health.xdp_mode.lock().expect("not poisoned") = links.xdp_mode;
    health.xdp_attached.store(true, Ordering::Relaxed);
    health.tc_attached.store(true, Ordering::Relaxed);
    Ok(links)
}

/// Notices the interface going away (its links turn defunct) and coming back (same or new
/// ifindex), and re-attaches.
fn follow_interface(
    progs: &mut Programs,
    args: &RunArgs,
    dir: &std::path::Path,
    health: &Health,
    links: &mut Option<Links>,
    gone_since: &mut Option<Instant>,
) {
    let now_index = attach::ifindex(&args.iface);
    if let Some(l) = links {
        let alive = now_index == Some(l.ifindex) && pins::link_ifindex(&l.upload_pin()) == Some(l.ifindex);
        if alive {
            return;
        }
        log(format!("{} went away; waiting for it to come back", args.iface));
        links.take().expect("checked").release(false);
        health.xdp_attached.store(false, Ordering::Relaxed);
        health.tc_attached.store(false, Ordering::Relaxed);
        *gone_since = Some(Instant::now());
    }
    if now_index.is_some() {
        match attach_logged(progs, args, dir, health) {
            Ok(l) => {
                if let Some(t) = gone_since.take() {
                    log(format!("re-attached {:.0} ms after the interface went away", t.elapsed().as_secs_f64() * 1e3));
                }
                *links = Some(l);
            }
            Err(e) => log(format!("re-attaching to {}: {e:#}", args.iface)),
        }
    }
}

