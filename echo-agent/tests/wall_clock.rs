//! A wall-clock step in the middle of a voice command (NTP on a router without a real-time
//! clock steps the time by hours at boot) neither splits nor merges interactions: windows are
//! measured in CLOCK_MONOTONIC. The agent runs under libfaketime, which moves only its
//! CLOCK_REALTIME, by an hour, mid-command; the programs' clock is the kernel's and never moves.

use std::{path::Path, sync::atomic::AtomicBool, sync::Arc, thread, time::Duration};

use echo_agent::activation::Interaction;
use xtask::{
    agent::Agent,
    echo_sim::{self, Hooks, Household},
    netns::{server_v4, tls_addr, Topology},
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const STEP: f64 = 3600.0;

#[test]
fn a_wall_clock_step_mid_command_splits_and_merges_nothing() {
    let topo = Topology::new(1500).expect("topology");
    let server = tls_addr(server_v4(0));
    let _cloud = echo_sim::Cloud::start(&topo, server).expect("cloud");
    let state = xtask::agent::state_dir(&format!("{}-clock", topo.id));
    let offset = state.with_extension("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let wrap = [
        "env".to_string(),
        format!("LD_PRELOAD={LIBFAKETIME}"),
        format!("FAKETIME_TIMESTAMP_FILE={}", offset.display()),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_string(),
        "FAKETIME_NO_CACHE=1".to_string(),
    ];
    let flags = echo_sim::agent_flags(&state);
    let agent = Agent::start_wrapped(
        Path::new(BIN),
        &topo,
        &wrap.iter().map(String::as_str).collect::<Vec<_>>(),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .expect("agent");

    // Two commands 7 s apart; the step comes 0.8 s into the first one's upload.
    let house = Household { lead_in: Duration::from_secs(2), commands: 2, outlier: None, muted_upload: false, trickle: false, ..Default::default() };
    let step_at = house.lead_in + Duration::from_millis(800);
    let sim = echo_sim::run(&topo, server, house.plan(), Hooks::controller(&topo, Box::new(|_| Ok(())), Arc::new(AtomicBool::new(false)))).unwrap();
    thread::sleep(step_at);
    std::fs::write(&offset, format!("+{STEP}\n")).unwrap();
    let truth = sim.join().unwrap().expect("simulated Echo");
    thread::sleep(Duration::from_millis(3_500));

    let found: Vec<Interaction> = serde_json::from_str(&agent.get("/api/interactions").unwrap().body).unwrap();
    assert_eq!(found.len(), truth.commands.len(), "{found:#?}");
    for (i, (f, t)) in found.iter().zip(&truth.commands).enumerate() {
        eprintln!("clock: interaction {i}: start {:+.3} s, end {:+.3} s from the truth, duration {:.3} s", f.start - t.start, f.end - t.end, f.duration);
        assert_eq!((f.upload_bytes, f.upload_records), (t.upload_bytes, t.upload_records), "interaction {i}");
        assert!((f.duration - (t.end - t.start)).abs() < 0.1, "interaction {i}: {f:?}");
        // Reported in the agent's (stepped) wall clock: the truth's plus the step.
        assert!((f.start - t.start - STEP).abs() < 0.1 && (f.end - t.end - STEP).abs() < 0.1, "interaction {i}: {f:?} vs {t:?}");
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&offset);
}
