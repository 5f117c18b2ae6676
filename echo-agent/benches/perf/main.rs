//! `cargo xtask bench [--quick]`: echo-agent's speed and memory, each figure next to a
//! baseline measured in the same run (these machines are noisy), as min/median/max over
//! rounds. Nothing here asserts a time; goals are reported as met or not. The report is
//! printed and written to target/bench/report.md (BENCHMARKS.md quotes it).

mod agent_cost;
mod kernel;
mod live_path;
mod offline;

use std::fmt::Write as _;

/// Sizes of a run.
#[derive(Clone, Copy)]
pub struct Scale {
    pub quick: bool,
    /// Rounds per figure (min/median/max over them).
    pub rounds: usize,
    /// Packets per round of the kernel fixtures.
    pub packets: u64,
}

/// min, median, max.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub fn fmt3((a, b, c): (f64, f64, f64), digits: usize) -> String {
    format!("{a:.digits$} / {b:.digits$} / {c:.digits$}")
}

pub fn goal(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(offline::PEAK_RSS_ARG) {
        std::process::exit(offline::launch(&args[2..]));
    }
    let quick = args.iter().any(|a| a == "--quick");
    // ECHO_BENCH_ONLY=kernel|offline|live path|agent cost runs one section (a comma-separated
    // list: those).
    let mut scale = if quick { Scale { quick, rounds: 3, packets: 100_000 } } else { Scale { quick, rounds: 5, packets: 1_000_000 } };
    // ECHO_BENCH_ROUNDS=R,PACKETS overrides the size (for A/B runs of one section).
    if let Some((r, p)) = std::env::var("ECHO_BENCH_ROUNDS").ok().and_then(|v| v.split_once(',').and_then(|(r, p)| Some((r.parse().ok()?, p.parse().ok()?)))) {
        scale.rounds = r;
        scale.packets = p;
    }
    let mut report = String::new();
    let uname = std::process::Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let _ = writeln!(report, "# echo-agent benchmarks ({})\n", if quick { "--quick" } else { "full" });
    let _ = writeln!(report, "Machine: {cpu}, {cores} cores; kernel {uname}. Figures are min / median / max over {} rounds.\n", scale.rounds);
    let mut printed = 0;
    for (name, section) in [
        ("kernel", kernel::run as fn(Scale) -> anyhow::Result<String>),
        ("offline", offline::run),
        ("live path", live_path::run),
        ("agent cost", agent_cost::run),
    ] {
        if std::env::var("ECHO_BENCH_ONLY").is_ok_and(|only| !only.split(',').any(|o| o == name)) {
            continue;
        }
        eprintln!("bench: {name}…");
        match section(scale) {
            Ok(text) => report.push_str(&text),
            Err(e) => {
                let _ = writeln!(report, "## {name}\n\nfailed: {e:#}\n");
            }
        }
        print!("{}", &report[printed..]);
        printed = report.len();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("report.md"), &report);
    eprintln!("bench: report written to {}", dir.join("report.md").display());
}
