//! The household end to end: the simulated Echo (real TLS) runs a plan of heartbeats, framed
//! voice commands over two arms, an upload while muted and a trickle, with the controller's
//! marker pings, while `echo-agent run` watches the hotspot and tcpdump captures it. Then:
//! - the live agent's interactions equal the simulator's ground truth (count, start/end
//!   within 100 ms, bytes exact), muted and outside-window upload are flagged to the byte,
//!   heartbeats are background to the byte;
//! - the capture replayed through the same programs gives the same interactions and frames;
//! - frames and per-arm statistics equal an independent computation over tshark's
//!   per-record output of the same capture;
//! - the interaction log (0600) survives a restart, and frame numbering continues.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{atomic::AtomicBool, Arc},
    thread,
    time::Duration,
};

use echo_agent::{
    activation::{Interaction, Unexpected},
    analysis::Config,
    device::Mac,
    frames::{Frame, Response},
    stats::ArmStats,
    markers::MarkerSpec,
    names::{parse_group, Groups, Source},
    replay,
};
use serde_json::Value;
use xtask::{
    agent::Agent,
    capture::Capture,
    echo_sim::{self, marker_flags, CommandTruth, Hooks, Household, Truth},
    netns::{marker_v4, server_v4, tls_addr, Topology, MARKERS},
    packets::DEVICE_MAC,
    tshark::{self, Seen},
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const DEVICE: &str = echo_sim::DEVICE_NAME;
const ARMS: [&str; 2] = echo_sim::ARMS;

fn household() -> Household {
    // Four trials per arm; the outlier (trial 4, arm I_1) is dropped by the IQR filter.
    Household { lead_in: Duration::from_secs(12), commands: 8, ..Default::default() }
}


fn get<T: serde::de::DeserializeOwned>(agent: &Agent, path: &str) -> T {
    let r = agent.get(path).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(r.content_type, "application/json");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

/// Interactions equal the commands the simulator sent, one for one.
fn assert_interactions(name: &str, found: &[Interaction], truth: &[CommandTruth]) {
    assert_eq!(found.len(), truth.len(), "{name}: interactions {found:#?}");
    for (i, (f, t)) in found.iter().zip(truth).enumerate() {
        eprintln!(
            "{name}: interaction {i}: upload {} B ({} records) download {} B, start {:+.1} ms end {:+.1} ms, muted {}",
            f.upload_bytes,
            f.upload_records,
            f.download_bytes,
            (f.start - t.start) * 1e3,
            (f.end - t.end) * 1e3,
            f.muted
        );
        assert_eq!((f.upload_bytes, f.upload_records, f.download_bytes, f.muted), (t.upload_bytes, t.upload_records, t.download_bytes, t.muted), "{name}: interaction {i}");
        assert!((f.start - t.start).abs() < 0.1 && (f.end - t.end).abs() < 0.1, "{name}: interaction {i} times {f:?} vs {t:?}");
        assert_eq!(f.top_destination, Some(server_v4(0)), "{name}: interaction {i}");
        assert_eq!(f.top_destination_upload_bytes, t.upload_bytes);
        // Named by its SNI; the whole upload went to the group --group amazon.com=alexa.
        let top = (f.top_destination_name.as_deref(), f.top_group.as_deref(), f.top_group_upload_bytes);
        assert_eq!(top, (Some(echo_sim::ECHO_HOST), Some("alexa"), t.upload_bytes), "{name}: interaction {i}");
    }
}

fn assert_unexpected(name: &str, runs: &[Unexpected], truth: &Truth) {
    let muted: Vec<&CommandTruth> = truth.commands.iter().filter(|c| c.muted).collect();
    let summary: Vec<(&str, u64)> = runs.iter().map(|u| (if u.reason == echo_agent::activation::Reason::Muted { "muted" } else { "outside_interaction" }, u.bytes)).collect();
    assert_eq!(summary, vec![("muted", muted[0].upload_bytes), ("outside_interaction", truth.trickle_bytes)], "{name}: unexpected runs");
}

/// Frames and arm statistics computed here from tshark's records and pings alone.
fn independent_frames(pcap: &Path) -> (Vec<(f64, f64, IpAddr, u64)>, Vec<(String, usize, usize, f64, f64, f64)>) {
    let markers: Vec<IpAddr> = (0..MARKERS).map(marker_v4).collect();
    let timeline = tshark::timeline(pcap, &Mac(DEVICE_MAC).to_string(), &markers).expect("tshark");
    let mut frames = Vec::new();
    let mut open: Option<(f64, BTreeMap<IpAddr, u64>)> = None;
    for (ts, seen) in timeline {
        match seen {
            Seen::Marker(echo_sim::COMMAND_START) => open = Some((ts, BTreeMap::new())),
            Seen::Marker(echo_sim::RESPONSE_START) => {
                if let Some((start, by)) = open.take() {
                    let (ip, bytes) = by.into_iter().fold((None, 0), |b, (ip, n)| if n > b.1 { (Some(ip), n) } else { b });
                    frames.push((start, ts, ip.unwrap(), bytes));
                }
            }
            Seen::Marker(_) => {}
            Seen::Upload { dst, bytes } => {
                if let Some((_, by)) = open.as_mut() {
                    *by.entry(dst).or_default() += bytes;
                }
            }
        }
    }
    let mut arms = Vec::new();
    for (a, arm) in ARMS.iter().enumerate() {
        let mut v: Vec<f64> = frames.iter().enumerate().filter(|(i, _)| i % ARMS.len() == a).map(|(_, f)| f.3 as f64).collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let h = (v.len() - 1) as f64 * p;
            v[h.floor() as usize] + (h - h.floor()) * (v[h.ceil() as usize] - v[h.floor() as usize])
        };
        let (q1, q3) = (q(0.25), q(0.75));
        let kept: Vec<f64> = v.iter().copied().filter(|x| *x > q1 - 1.5 * (q3 - q1) && *x < q3 + 1.5 * (q3 - q1)).collect();
        let n = kept.len() as f64;
        let mean = kept.iter().sum::<f64>() / n;
        let sd = (kept.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let median = if kept.len() % 2 == 1 { kept[kept.len() / 2] } else { (kept[kept.len() / 2 - 1] + kept[kept.len() / 2]) / 2.0 };
        arms.push((arm.to_string(), v.len(), kept.len(), mean, sd, median));
    }
    (frames, arms)
}

fn assert_frames(name: &str, frames: &[Frame], arms: &[ArmStats], pcap: &Path, truth: &Truth) {
    let (want, want_arms) = independent_frames(pcap);
    assert_eq!(frames.len(), want.len(), "{name}: frames {frames:#?}");
    let framed: Vec<&CommandTruth> = truth.commands.iter().filter(|c| c.framed).collect();
    assert_eq!(frames.len(), framed.len(), "{name}: one frame per framed command");
    for (i, (f, (start, end, ip, bytes))) in frames.iter().zip(&want).enumerate() {
        assert_eq!((f.index, f.arm.as_str()), (i, ARMS[i % 2]), "{name}: frame {i}");
        assert_eq!((f.top_destination, f.upload_bytes), (Some(*ip), *bytes), "{name}: frame {i} vs tshark");
        assert_eq!(f.upload_bytes, framed[i].upload_bytes, "{name}: frame {i} vs the simulator");
        // The answer came after the command's end, and is all the app data downloaded.
        assert_eq!((f.response, f.download_bytes), (Response::AfterInput, framed[i].download_bytes), "{name}: frame {i}");
        let order = [Some(f.start), f.command_end, f.response_start, f.response_end];
        assert!(order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]), "{name}: frame {i} markers {order:?}");
        let top = (f.top_destination_name.as_deref(), f.top_group.as_deref(), f.top_group_upload_bytes);
        assert_eq!(top, (Some(echo_sim::ECHO_HOST), Some("alexa"), f.upload_bytes), "{name}: frame {i}");
        // The live clock and the capture's stamp the same packet microseconds apart.
        assert!((f.start - start).abs() < 0.01 && (f.end - end).abs() < 0.01, "{name}: frame {i} times {f:?} vs ({start}, {end})");
    }
    let got: Vec<(String, usize, usize, f64, f64, f64)> = arms.iter().map(|a| (a.arm.clone(), a.n, a.kept, a.mean, a.sd, a.median)).collect();
    for (g, w) in got.iter().zip(&want_arms) {
        eprintln!("{name}: arm {} n {} kept {} mean {:.1} sd {:.1} median {:.1}", g.0, g.1, g.2, g.3, g.4, g.5);
        assert_eq!((&g.0, g.1, g.2), (&w.0, w.1, w.2), "{name}: arm counts");
        for (x, y) in [(g.3, w.3), (g.4, w.4), (g.5, w.5)] {
            assert!((x - y).abs() < 1e-6, "{name}: arm {} statistics {g:?} vs {w:?}", g.0);
        }
    }
    assert_eq!(got.len(), want_arms.len());
}

#[test]
fn household_interactions_frames_and_flags() {
    let topo = Topology::new(1500).expect("topology");
    let server = tls_addr(server_v4(0));
    let _cloud = echo_sim::Cloud::start(&topo, server).expect("cloud");
    let state = xtask::agent::state_dir(&format!("{}-interactions", topo.id));
    let flags = echo_sim::agent_flags(&state);
    let mut agent = Agent::start(Path::new(BIN), &topo, &flags.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    let cap = Capture::start(&topo, &topo.hotspot_ns, &topo.hotspot_lan_if, "household").expect("tcpdump");

    let mute = echo_sim::mute_via_api(&agent);
    let hooks = Hooks::controller(&topo, mute, Arc::new(AtomicBool::new(false)));
    let plan = household().plan();
    let truth = echo_sim::run(&topo, server, plan, hooks).expect("simulator").join().unwrap().expect("simulated Echo");
    eprintln!("household: truth {truth:#?}");
    // Windows close after the idle gap (2 s); runs of unexpected upload a second later.
    thread::sleep(Duration::from_millis(3_800));
    let pcap = cap.stop().expect("capture");

    // Live.
    let live: Vec<Interaction> = get(&agent, "/api/interactions");
    assert_interactions("live", &live, &truth.commands);
    let unexpected: Vec<Unexpected> = get(&agent, "/api/unexpected");
    assert_unexpected("live", &unexpected, &truth);
    let frames: Vec<Frame> = get(&agent, "/api/frames");
    let arms: Vec<ArmStats> = get(&agent, "/api/arms");
    assert_frames("live", &frames, &arms, &pcap, &truth);
    assert_eq!(arms.iter().map(|a| (a.n, a.kept)).collect::<Vec<_>>(), vec![(4, 3), (4, 4)], "the outlier is dropped");
    let since = live[2].end;
    let later: Vec<Interaction> = get(&agent, &format!("/api/interactions?since={since}"));
    assert_eq!(later, live[2..].to_vec(), "since= keeps interactions ending at or after it");
    assert_eq!(agent.get("/api/interactions?since=noon").unwrap().status, 400);

    let m = agent.scrape().unwrap();
    let dev = [("device", DEVICE)];
    let muted_bytes = truth.commands.iter().filter(|c| c.muted).map(|c| c.upload_bytes).sum::<u64>() as f64;
    let cloud_ip = server_v4(0).to_string();
    let expect = [
        ("echo_interactions_total", &dev[..], truth.commands.len() as f64),
        ("echo_interaction_upload_bytes_count", &dev[..], truth.commands.len() as f64),
        ("echo_interaction_upload_bytes_sum", &dev[..], truth.commands.iter().map(|c| c.upload_bytes).sum::<u64>() as f64),
        ("echo_last_interaction_upload_bytes", &dev[..], truth.commands.last().unwrap().upload_bytes as f64),
        ("echo_activation_active", &dev[..], 0.0),
        ("echo_device_muted", &dev[..], 0.0),
        ("echo_background_upload_bytes_total", &dev[..], (truth.heartbeat_bytes + truth.protocol_bytes) as f64),
        ("echo_unexpected_upload_bytes_total", &[("device", DEVICE), ("reason", "muted")][..], muted_bytes),
        ("echo_unexpected_upload_bytes_total", &[("device", DEVICE), ("reason", "outside_interaction")][..], truth.trickle_bytes as f64),
        ("echo_frames_total", &[("arm", "I_1")][..], 4.0),
        ("echo_frames_total", &[("arm", "I_2")][..], 4.0),
        ("echo_frame_upload_bytes_sum", &[][..], frames.iter().map(|f| f.upload_bytes).sum::<u64>() as f64),
        ("echo_marker_pings_total", &[("role", "command_start")][..], 8.0),
        ("echo_events_dropped_total", &[][..], 0.0),
        ("echo_snippets_dropped_total", &[][..], 0.0),
        ("echo_unfolded_cpus", &[][..], 0.0),
        ("echo_destination_info", &[("device", DEVICE), ("destination", cloud_ip.as_str()), ("name", echo_sim::ECHO_HOST), ("source", "sni")][..], 1.0),
    ];
    for (name, labels, want) in expect {
        assert_eq!(m.value(name, labels), want, "metric {name}{labels:?}");
    }
    assert_eq!(m.series("echo_unfolded_cpus").len(), 1, "every scrape says whether it folded every CPU");
    let last_end = m.value("echo_last_interaction_end_timestamp_seconds", &dev);
    assert!((last_end - truth.commands.last().unwrap().end).abs() < 0.1, "{last_end}");
    for role in echo_sim::ROLES {
        let t = m.value("echo_marker_last_timestamp_seconds", &[("role", role)]);
        assert!(t > truth.commands[0].start && t < truth.commands.last().unwrap().end + 5.0, "{role}: {t}");
    }
    let devices: Value = get(&agent, "/api/devices");
    assert_eq!(devices[0]["device"], DEVICE);
    assert_eq!(devices[0]["background_upload_bytes"], truth.heartbeat_bytes + truth.protocol_bytes);
    assert_eq!(agent.post("/api/devices/nobody/muted", "true").unwrap().status, 404);
    assert_eq!(agent.post(&format!("/api/devices/{DEVICE}/muted"), "maybe").unwrap().status, 400);

    // Replay of the same capture: the same answers from the same code.
    let config = Config {
        markers: marker_flags().iter().map(|m| m.parse::<MarkerSpec>().unwrap()).collect(),
        arms: ARMS.iter().map(|a| a.to_string()).collect(),
        params: echo_agent::activation::Params {
            heartbeat: echo_agent::heartbeats::HeartbeatParams { min_interval: Duration::from_secs(1), ..Default::default() },
            ..Default::default()
        },
        groups: Groups::new(vec![parse_group(echo_sim::GROUP).unwrap()]),
        muted: truth.mutes.chunks(2).map(|s| (s[0].0, s[1].0)).collect(),
        ..Config::default()
    };
    assert_eq!(truth.mutes.iter().map(|m| m.1).collect::<Vec<_>>(), vec![true, false]);
    let report = replay::replay(&pcap, &[Mac(DEVICE_MAC)], &config).expect("replay");
    let d = &report.devices[0];
    assert_interactions("replay", &d.interactions, &truth.commands);
    assert_unexpected("replay", &d.unexpected, &truth);
    assert_frames("replay", &d.frames, &d.arms, &pcap, &truth);
    assert_eq!(d.background_upload_bytes, truth.heartbeat_bytes + truth.protocol_bytes);
    assert_eq!(d.unexpected_upload_bytes["muted"] as f64, muted_bytes);
    let cloud = d.destinations.iter().find(|x| x.ip == server_v4(0)).expect("the cloud");
    assert_eq!((cloud.name.as_deref(), cloud.name_source), (Some(echo_sim::ECHO_HOST), Some(Source::Sni)));

    // The log: 0600, one line per record; a restarted agent serves the same history.
    let log = state.join(echo_agent::store::LOG_FILE);
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    let lines = std::fs::read_to_string(&log).unwrap();
    let count = |ty: &str| lines.lines().filter(|l| l.contains(&format!("\"type\":\"{ty}\""))).count();
    assert_eq!((count("interaction"), count("frame"), count("unexpected"), count("muted")), (truth.commands.len(), 8, 2, 2));
    assert_eq!(agent.terminate().unwrap().code(), Some(0));
    agent.spawn().expect("restart");
    let again: Vec<Interaction> = get(&agent, "/api/interactions");
    assert_eq!(again, live, "history after a restart");
    let again: Vec<Frame> = get(&agent, "/api/frames");
    assert_eq!(again, frames);
    let _ = std::fs::remove_dir_all(&state);
    if std::env::var_os("ECHO_KEEP_PCAP").is_none() {
        let _ = std::fs::remove_file(&pcap);
    }
}
