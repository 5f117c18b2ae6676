//! The seed paper's three experiments end to end, time-compressed: `echo-agent experiment`
//! in the controller namespace drives the listening simulated Echo through prefix, postfix
//! and gap plans; the agent frames the trials; `echo-agent report` summarises them. Frames
//! equal what the Echo sent; the report's statistics equal scipy's on the same log.

use std::{path::Path, process::Command};

use echo_agent::{frames::Response, report::Report};
use xtask::{
    lab::{self, Lab},
    listening::{Heard, CORRECT_RESPONSE},
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");

fn report(log: &Path, since: f64, format: &str) -> String {
    let out = Command::new(BIN).args(["report", "--input"]).arg(log).args(["--since", &since.to_string(), "--format", format]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

type Expected = Vec<(String, usize, usize, f64, f64, f64, Option<f64>)>;

/// Runs a plan; returns its start time and report, checked against scipy on the same log.
fn run_plan(lab: &Lab, name: &str, arms: &[lab::LabArm], repetitions: usize) -> (f64, Report) {
    let plan = lab::write_plan(&lab.dir, name, arms, repetitions, 11).unwrap();
    let since = now();
    let out = lab.run(Path::new(BIN), &plan).unwrap();
    assert!(out.status.success(), "{name}: {}\n{}", String::from_utf8_lossy(&out.stderr), lab.agent.log_text());
    // The last trial's frame closes when its response ends.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r: Report = serde_json::from_str(&report(&lab.log(), since, "json")).unwrap();
    assert_matches_scipy(name, &r, &scipy(&lab.log(), since));
    eprintln!("{}", report(&lab.log(), since, "table"));
    (since, r)
}

/// Per arm in the log since `since`: n, kept, mean, sd, median, Welch p against the first arm,
/// computed by numpy and scipy from the log itself.
fn scipy(log: &Path, since: f64) -> Expected {
    let script = r#"
import json, sys
import numpy as np
from scipy import stats
arms, params = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("type") == "frame" and r["start"] >= float(sys.argv[2]):
        arms.setdefault(r["arm"], []).append(r["upload_bytes"])
        params[r["arm"]] = sorted(r.get("params", {}).items())
def kept(v):
    q1, q3 = np.percentile(v, [25, 75])
    iqr = q3 - q1
    return [x for x in v if (q1 - 1.5 * iqr < x < q3 + 1.5 * iqr) or (q1 <= x <= q3)]
first = None
for arm in sorted(arms, key=lambda a: (params[a], a)):
    v = arms[arm]
    k = kept(v)
    p = "-" if first is None else repr(stats.ttest_ind(k, first, equal_var=False).pvalue)
    first = k if first is None else first
    print(arm, len(v), len(k), repr(np.mean(k)), repr(np.std(k, ddof=1)), repr(np.median(k)), p)
"#;
    let out = Command::new("/usr/bin/python3").args(["-c", script]).arg(log).arg(since.to_string()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let num = |i: usize| f[i].parse::<f64>().unwrap();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), num(3), num(4), num(5), f[6].parse().ok())
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_matches_scipy(name: &str, r: &Report, expected: &Expected) {
    assert_eq!(r.arms.len(), expected.len(), "{name}");
    for (a, e) in r.arms.iter().zip(expected) {
        assert_eq!((&a.arm, a.n, a.kept), (&e.0, e.1, e.2), "{name}");
        assert!(close(a.mean, e.3) && close(a.sd, e.4) && close(a.median, e.5), "{name} {}: {a:?} vs {e:?}", a.arm);
        match (a.welch_vs_first, e.6) {
            (None, None) => {}
            (Some(w), Some(p)) => assert!((w.p - p).abs() < 1e-9, "{name} {}: p {} vs scipy {p}", a.arm, w.p),
            other => panic!("{name} {}: {other:?}", a.arm),
        }
    }
}

/// The frames since `since` equal what the Echo heard and sent, trial by trial.
fn assert_frames_are_truth(log: &Path, since: f64, heard: &[Heard]) {
    let frames: Vec<_> = echo_agent::report::load_frames(log).unwrap().into_iter().filter(|f| f.start >= since).collect();
    assert_eq!(frames.len(), heard.len());
    for (f, h) in frames.iter().zip(heard) {
        // An answer comes early when the end was found while a postfix still played.
        let class = match (h.decision.end_found && h.audio.postfix_s > 0.0, h.decision.response) {
            (_, 0) => Response::None,
            (true, CORRECT_RESPONSE) => Response::Early,
            _ => Response::AfterInput,
        };
        assert_eq!((f.upload_bytes, f.download_bytes, f.response), (h.upload_bytes, h.download_bytes, class), "{f:?} vs {h:?}");
        assert!(!f.degraded);
    }
}

#[test]
fn prefix_postfix_and_gap_experiments() {
    let mut lab = Lab::start(Path::new(BIN), 5).unwrap();
    let (prefix_since, prefix) = run_plan(&lab, "prefix", &lab::prefix_arms(), 6);
    let (_, postfix) = run_plan(&lab, "postfix", &lab::postfix_arms(), 4);
    let (_, gap) = run_plan(&lab, "gap", &lab::gap_arms(), 4);
    let log = lab.log();
    let heard = lab.heard().unwrap();
    assert_eq!(heard.len(), 24 + 16 + 32);

    // Every frame is the Echo's trial, exactly; the arm comes from the plan.
    assert_frames_are_truth(&log, prefix_since, &heard);
    assert_eq!(prefix.arms.iter().map(|a| a.n).sum::<usize>(), 24);

    // Prefix: nothing before the wake word is uploaded, so no arm differs from no prefix.
    for a in &prefix.arms[1..] {
        let w = a.welch_vs_first.unwrap();
        assert!(w.p > 0.05, "{}: {w:?}", a.arm);
    }
    assert_eq!(prefix.upload_by_param["prefix_s"].iter().map(|p| p.value).collect::<Vec<_>>(), [0.0, 3.0, 6.0, 9.0]);

    // Postfix without a pause: the upload grows with the postfix (~14 kB per second).
    let means: Vec<f64> = postfix.upload_by_param["postfix_s"].iter().map(|p| p.mean).collect();
    assert!(means.windows(2).all(|w| w[1] > w[0] + 10_000.0), "{means:?}");

    // Gap: never an early (correct) answer below 0.5 s, always from 0.7 s.
    assert_eq!(gap.class_param.as_deref(), Some("gap_s"));
    for c in &gap.classes {
        let n: usize = c.counts.iter().sum();
        assert_eq!(n, 4, "{c:?}");
        if c.value < 0.5 {
            assert_eq!(c.counts[2], 0, "{c:?}");
        }
        if c.value >= 0.7 {
            assert_eq!(c.counts[2], 4, "{c:?}");
        }
    }
}

/// `cargo xtask demo --experiment` writes an HTML report whose every plot headless Chromium
/// renders with data: each figure declares the data marks drawn (`data-marks`), and the
/// page's script records the shapes the browser laid out (`data-rendered`).
#[test]
fn demo_report_renders_in_chromium() {
    let out = std::env::temp_dir().join(format!("echo-demo-report-{}", std::process::id()));
    let html = xtask::lab::demo(Path::new(BIN), &out).unwrap();
    let dom = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[start..start + tag[start..].find('"')?].to_string())
    };
    let figures: Vec<(String, usize, usize)> = dom
        .split("<figure ")
        .skip(1)
        .map(|f| {
            let tag = &f[..f.find('>').unwrap()];
            let n = |name| attr(tag, name).and_then(|v| v.parse().ok()).unwrap_or(0);
            (attr(tag, "id").unwrap_or_default(), n("data-marks"), n("data-rendered"))
        })
        .collect();
    let ids: Vec<&str> = figures.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(ids, ["upload-gap_s", "responses", "downloads"], "{dom}");
    for (id, marks, rendered) in &figures {
        assert!(*marks > 0 && rendered >= marks, "{id}: {marks} data marks, {rendered} shapes rendered");
    }
    // 8 gaps: a point and an error bar each; 16 trials in the download plot.
    assert_eq!((figures[0].1, figures[2].1), (16, 16));
}

/// An interrupted run (SIGINT) stops between trials and resumes where it stopped: every
/// trial of the plan is played exactly once. A device the agent does not monitor is bad
/// input.
#[test]
fn interrupted_experiment_resumes() {
    let mut lab = Lab::start(Path::new(BIN), 9).unwrap();
    let arms = &lab::prefix_arms()[..2];
    let plan = lab::write_plan(&lab.dir, "resume", arms, 4, 2).unwrap();

    let out = lab.command(Path::new(BIN), &plan, "nobody").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), format!("echo-agent: the agent at {} does not monitor a device named \"nobody\"", lab.agent.listen));

    let since = now();
    let runner = lab.command(Path::new(BIN), &plan, xtask::echo_sim::DEVICE_NAME).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let progress = lab.dir.join("experiment-resume.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&progress).is_ok_and(|p| p.contains("\"done\":2")) {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(runner.id() as i32, libc::SIGINT) };
    let out = runner.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let stopped: usize = err.split("interrupted after ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{err}"));
    assert!((2..8).contains(&stopped), "{err}");

    let again = lab.run(Path::new(BIN), &plan).unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = lab.log();
    let heard = lab.heard().unwrap();
    assert_eq!(heard.len(), 8);
    assert_frames_are_truth(&log, since, &heard);
    let r: Report = serde_json::from_str(&report(&log, since, "json")).unwrap();
    assert_eq!(r.arms.iter().map(|a| (a.arm.as_str(), a.n)).collect::<Vec<_>>(), [("prefix-0", 4), ("prefix-3", 4)]);

    // The saved progress belongs to this plan: a changed plan is refused, not resumed.
    std::fs::write(&plan, std::fs::read_to_string(&plan).unwrap().replace("repetitions = 4", "repetitions = 5")).unwrap();
    let changed = lab.run(Path::new(BIN), &plan).unwrap();
    assert_eq!(changed.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&changed.stderr).trim(), format!("echo-agent: {} holds progress of a different plan; use --restart to start over", progress.display()));
}

/// With a microphone hook in the plan, its `start` and `end` lines mark the response, not the
/// download: here it "hears" speech 0.3–0.6 s into the 1.15 s audio, well before the Echo's
/// real answer, so every frame is early with nothing downloaded in it.
#[test]
fn microphone_hook_marks_the_response() {
    let lab = Lab::start(Path::new(BIN), 4).unwrap();
    let plan = lab::write_plan(&lab.dir, "hook", &lab::prefix_arms()[3..], 2, 1).unwrap();
    let text = std::fs::read_to_string(&plan).unwrap().replace("[response]\n", "[response]\nhook = \"sleep 0.3; echo start; sleep 0.3; echo end; sleep 30\"\n");
    std::fs::write(&plan, text).unwrap();
    let since = now();
    let out = lab.run(Path::new(BIN), &plan).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let frames: Vec<_> = echo_agent::report::load_frames(&lab.log()).unwrap().into_iter().filter(|f| f.start >= since).collect();
    assert_eq!(frames.len(), 2);
    for f in &frames {
        let (rs, re, ce) = (f.response_start.unwrap() - f.start, f.response_end.unwrap() - f.start, f.command_end.unwrap() - f.start);
        assert!((0.25..0.5).contains(&rs) && (0.55..0.9).contains(&re) && ce > 1.1, "{f:?}");
        assert_eq!((f.response, f.download_bytes, f.arm.as_str()), (Response::Early, 0, "prefix-9"), "{f:?}");
    }
}
