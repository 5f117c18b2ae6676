//! `cargo xtask bench [--quick]`: echo-agent's speed and memory, each figure next to a
//! baseline measured in the same run (these machines are noisy), as min/median/max over
//! rounds. Nothing here asserts a time; goals are reported as met or not. The report is
//! printed and written to target/bench/report.md (BENCHMARKS.md quotes it); a `--quick` run to
//! report-quick.md and a run narrowed by `ECHO_BENCH_*` to report-partial.md, so that neither
//! overwrites the last full run's report.

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
    if let Some((r, p)) = std::env::var(ROUNDS_VAR).ok().and_then(|v| v.split_once(',').and_then(|(r, p)| Some((r.parse().ok()?, p.parse().ok()?)))) {
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
        if std::env::var(ONLY_VAR).is_ok_and(|only| !only.split(',').any(|o| o == name)) {
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
    let path = dir.join(report_name(quick, ENV_OVERRIDES.iter().any(|v| std::env::var_os(v).is_some())));
    let _ = std::fs::write(&path, &report);
    eprintln!("bench: report written to {}", path.display());
}

/// The environment variables that narrow a run to part of the bench: sections (`main`),
/// kernel fixtures (`kernel::run`), rounds and packets per round (`main`).
pub const ONLY_VAR: &str = "ECHO_BENCH_ONLY";
pub const FIXTURE_VAR: &str = "ECHO_BENCH_FIXTURE";
pub const ROUNDS_VAR: &str = "ECHO_BENCH_ROUNDS";
const ENV_OVERRIDES: [&str; 3] = [ONLY_VAR, FIXTURE_VAR, ROUNDS_VAR];

/// The report's file in target/bench: only a full, unnarrowed run writes report.md.
fn report_name(quick: bool, narrowed: bool) -> &'static str {
    if narrowed {
        "report-partial.md"
    } else if quick {
        "report-quick.md"
    } else {
        "report.md"
    }
}
