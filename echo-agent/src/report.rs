//! `echo-agent report`: the research report of an experiment, from the agent's interaction
//! log or a replay JSON. Per arm the seed paper's Table 1 (n, kept after the IQR filter,
//! mean, SD, median of upload bytes) and a Welch t-test against the first arm; upload against
//! every numeric arm parameter that varies; and the response classes (none, after the whole
//! input, early) per value of one parameter (the gap), with the download of each trial.
//! Output as a terminal table, JSON, CSV or self-contained HTML (see `plots`).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    analysis::Record,
    frames::{Frame, Response},
    stats::{self, ArmStats, Welch},
};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("reading {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    #[error("{0}: neither an interaction log (JSON lines) nor a replay report (JSON): {1}")]
    Format(std::path::PathBuf, String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmRow {
    pub arm: String,
    pub params: BTreeMap<String, f64>,
    pub n: usize,
    pub kept: usize,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    /// Welch's t-test of this arm's kept uploads against the first arm's (none for the first).
    pub welch_vs_first: Option<Welch>,
    /// Trials per response class, as `Response::ALL`.
    pub responses: [usize; 3],
    pub mean_download_bytes: f64,
}

/// Upload (kept values) against one numeric parameter: one point per arm, by value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamPoint {
    pub value: f64,
    pub arm: String,
    pub mean: f64,
    pub sd: f64,
}

/// Response classes per value of the class parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    pub value: f64,
    /// Trials per class, as `Response::ALL`.
    pub counts: [usize; 3],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub arm: String,
    pub value: f64,
    pub download_bytes: u64,
    pub response: Response,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub frames: usize,
    pub arms: Vec<ArmRow>,
    /// Parameter name → points, for every parameter that differs between arms.
    pub upload_by_param: BTreeMap<String, Vec<ParamPoint>>,
    /// The parameter responses are classified by, when the frames carry it.
    pub class_param: Option<String>,
    pub classes: Vec<ClassRow>,
    pub trials: Vec<Trial>,
}

/// The frames of a log (JSON lines of records) or of a replay report (a JSON object with
/// `frames`).
pub fn load_frames(path: &Path) -> Result<Vec<Frame>, ReportError> {
    let text = std::fs::read(path).map_err(|e| ReportError::Read(path.to_path_buf(), e))?;
    parse_frames(&text).map_err(|e| ReportError::Format(path.to_path_buf(), e))
}

/// The frames of log or replay text.
pub fn parse_frames(text: &[u8]) -> Result<Vec<Frame>, String> {
    #[derive(Deserialize)]
    struct Replay {
        frames: Vec<Frame>,
    }
    if let Ok(r) = serde_json::from_slice::<Replay>(text) {
        return Ok(r.frames);
    }
    let loaded = crate::store::Loaded::read(text).map_err(|e| e.to_string())?;
    if loaded.records.is_empty() && !text.iter().all(u8::is_ascii_whitespace) {
        return Err("no records in it".into());
    }
    Ok(loaded.records.into_iter().filter_map(|r| if let Record::Frame(f) = r { Some(f) } else { None }).collect())
}

/// Parameter sets compared name by name, then value by value (a set that is a prefix of
/// another comes first).
fn by_params(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> std::cmp::Ordering {
    let mut pairs = a.iter().zip(b).map(|((ka, va), (kb, vb))| ka.cmp(kb).then(va.total_cmp(vb)));
    pairs.find(|o| o.is_ne()).unwrap_or(a.len().cmp(&b.len()))
}

fn class_index(r: Response) -> usize {
    Response::ALL.iter().position(|&x| x == r).expect("listed")
}

/// The report of `frames` (arms ordered by parameters, then name); `class_param` names the parameter responses are classified by.
pub fn build(frames: &[Frame], class_param: &str) -> Report {
    // (summary, kept uploads, the arm's frames), arms ordered by their parameters, then name:
    // the first (the reference of the tests) is the smallest setting, e.g. no prefix.
    let mut summaries: Vec<(ArmStats, Vec<f64>, Vec<&Frame>)> = stats::uploads_by_arm(frames)
        .into_iter()
        .map(|(arm, values)| {
            let of_arm = frames.iter().filter(|f| f.arm == arm).collect();
            let (summary, kept) = stats::summarize(arm, &values);
            (summary, kept, of_arm)
        })
        .collect();
    summaries.sort_by(|a, b| by_params(&a.2[0].params, &b.2[0].params).then(a.0.arm.cmp(&b.0.arm)));
    let first_kept = summaries.first().map(|s| s.1.clone()).unwrap_or_default();
    let arms: Vec<ArmRow> = summaries
        .iter()
        .enumerate()
        .map(|(i, (s, kept, of_arm))| {
            let mut responses = [0; 3];
            of_arm.iter().for_each(|f| responses[class_index(f.response)] += 1);
            ArmRow {
                arm: s.arm.clone(),
                params: of_arm[0].params.clone(),
                n: s.n,
                kept: s.kept,
                mean: s.mean,
                sd: s.sd,
                median: s.median,
                welch_vs_first: if i == 0 { None } else { stats::welch(kept, &first_kept) },
                responses,
                mean_download_bytes: stats::mean(&of_arm.iter().map(|f| f.download_bytes as f64).collect::<Vec<_>>()),
            }
        })
        .collect();

    let mut upload_by_param: BTreeMap<String, Vec<ParamPoint>> = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = arms.iter().flat_map(|a| a.params.keys()).collect();
    for name in names {
        let with: Vec<&ArmRow> = arms.iter().filter(|a| a.params.contains_key(name)).collect();
        let mut values: Vec<f64> = with.iter().map(|a| a.params[name]).collect();
        values.sort_by(f64::total_cmp);
        values.dedup();
        if values.len() < 2 {
            continue;
        }
        let mut points: Vec<ParamPoint> = with.iter().map(|a| ParamPoint { value: a.params[name], arm: a.arm.clone(), mean: a.mean, sd: a.sd }).collect();
        points.sort_by(|a, b| a.value.total_cmp(&b.value));
        upload_by_param.insert(name.clone(), points);
    }

    let classed: Vec<&Frame> = frames.iter().filter(|f| f.params.contains_key(class_param)).collect();
    let mut classes: Vec<ClassRow> = Vec::new();
    for f in &classed {
        let value = f.params[class_param];
        let row = match classes.iter_mut().find(|r| r.value == value) {
            Some(r) => r,
            None => {
                classes.push(ClassRow { value, counts: [0; 3] });
                classes.last_mut().expect("pushed")
            }
        };
        row.counts[class_index(f.response)] += 1;
    }
    classes.sort_by(|a, b| a.value.total_cmp(&b.value));
    let trials = classed.iter().map(|f| Trial { arm: f.arm.clone(), value: f.params[class_param], download_bytes: f.download_bytes, response: f.response }).collect();
    Report { frames: frames.len(), arms, upload_by_param, class_param: (!classed.is_empty()).then(|| class_param.to_string()), classes, trials }
}

fn params_text(p: &BTreeMap<String, f64>) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn p_text(w: &Option<Welch>) -> String {
    w.map_or("-".into(), |w| format!("{:.4}", w.p))
}

/// The terminal table.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} frames. Upload bytes to the top destination per frame, outliers dropped by the 1.5·IQR rule; p: Welch's t-test against {}.\n", r.frames, r.arms.first().map_or("-", |a| a.arm.as_str()));
    let _ = writeln!(out, "{:<16} {:<28} {:>4} {:>5} {:>10} {:>9} {:>10} {:>8}  {:>5} {:>5} {:>5} {:>10}", "arm", "parameters", "n", "kept", "mean", "SD", "median", "p", "none", "after", "early", "download");
    for a in &r.arms {
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:>4} {:>5} {:>10.0} {:>9.0} {:>10.0} {:>8}  {:>5} {:>5} {:>5} {:>10.0}",
            a.arm,
            params_text(&a.params),
            a.n,
            a.kept,
            a.mean,
            a.sd,
            a.median,
            p_text(&a.welch_vs_first),
            a.responses[0],
            a.responses[1],
            a.responses[2],
            a.mean_download_bytes
        );
    }
    if let Some(p) = &r.class_param {
        let _ = writeln!(out, "\nResponses by {p}: share of trials answered early (the end of the command found)");
        for c in &r.classes {
            let n: usize = c.counts.iter().sum();
            let _ = writeln!(out, "  {p}={:<6} none {:>3}  after the input {:>3}  early {:>3}  ({:.0}% early)", c.value, c.counts[0], c.counts[1], c.counts[2], 100.0 * c.counts[2] as f64 / n.max(1) as f64);
        }
    }
    out
}

/// CSV: one row per arm, parameters as columns.
pub fn csv(r: &Report) -> String {
    let names: std::collections::BTreeSet<&String> = r.arms.iter().flat_map(|a| a.params.keys()).collect();
    let mut out = String::from("arm");
    names.iter().for_each(|n| out += &format!(",{n}"));
    out += ",n,kept,mean,sd,median,welch_t,welch_df,welch_p,responses_none,responses_after_input,responses_early,mean_download_bytes\n";
    for a in &r.arms {
        out += &a.arm.replace([',', '\n'], " ");
        for n in &names {
            out += &format!(",{}", a.params.get(*n).map_or(String::new(), |v| v.to_string()));
        }
        let (t, df, p) = a.welch_vs_first.map_or((String::new(), String::new(), String::new()), |w| (w.t.to_string(), w.df.to_string(), w.p.to_string()));
        out += &format!(",{},{},{},{},{},{t},{df},{p},{},{},{},{}\n", a.n, a.kept, a.mean, a.sd, a.median, a.responses[0], a.responses[1], a.responses[2], a.mean_download_bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(arm: &str, params: &[(&str, f64)], upload: u64, response: Response, download: u64) -> Frame {
        Frame { arm: arm.into(), params: params.iter().map(|(k, v)| (k.to_string(), *v)).collect(), upload_bytes: upload, response, download_bytes: download, ..Frame::default() }
    }

    #[test]
    fn arms_params_and_classes() {
        let mut f = Vec::new();
        for (i, up) in [45_000, 46_000, 44_000, 45_500].iter().enumerate() {
            f.push(frame("gap-0.1", &[("gap_s", 0.1)], *up, if i == 0 { Response::None } else { Response::AfterInput }, if i == 0 { 0 } else { 8_017 }));
            f.push(frame("gap-0.8", &[("gap_s", 0.8)], up - 10_000, Response::Early, 20_034));
        }
        let r = build(&f, "gap_s");
        assert_eq!(r.frames, 8);
        assert_eq!(r.arms.len(), 2);
        assert_eq!((r.arms[0].n, r.arms[0].mean, r.arms[0].responses), (4, 45_125.0, [1, 3, 0]));
        assert_eq!((r.arms[1].mean, r.arms[1].responses, r.arms[1].mean_download_bytes), (35_125.0, [0, 0, 4], 20_034.0));
        // Equal spreads, means 10,000 apart: t = −10,000 / sqrt(2·sd²/4).
        let w = r.arms[1].welch_vs_first.unwrap();
        let sd = r.arms[0].sd;
        assert!((w.t + 10_000.0 / (sd * sd / 2.0).sqrt()).abs() < 1e-9 && (w.df - 6.0).abs() < 1e-9, "{w:?}");
        assert_eq!(r.upload_by_param["gap_s"].iter().map(|p| p.value).collect::<Vec<_>>(), [0.1, 0.8]);
        assert_eq!(r.classes, vec![ClassRow { value: 0.1, counts: [1, 3, 0] }, ClassRow { value: 0.8, counts: [0, 0, 4] }]);
        assert_eq!(r.trials.len(), 8);
        let c = csv(&r);
        assert!(c.starts_with("arm,gap_s,n,kept,mean,sd,median,welch_t"), "{c}");
        assert!(c.lines().nth(1).unwrap().starts_with("gap-0.1,0.1,4,4,45125,"), "{c}");
        assert!(table(&r).contains("gap_s=0.8    none   0  after the input   0  early   4  (100% early)"), "{}", table(&r));
    }

    #[test]
    fn reads_a_log_or_a_replay_report() {
        let line = r#"{"type":"frame","device":"echo","index":0,"arm":"I_1","start":1.0,"end":2.0,"top_destination":"10.77.2.10","upload_bytes":45000}"#;
        let log = format!("{line}\n{{\"type\":\"muted\",\"device\":\"echo\",\"muted\":true,\"at\":3.0}}\n");
        let from_log = parse_frames(log.as_bytes()).unwrap();
        assert_eq!((from_log.len(), from_log[0].upload_bytes, from_log[0].response), (1, 45_000, Response::None));
        let replay = format!(r#"{{"devices": [], "frames": [{line}], "arms": []}}"#);
        assert_eq!(parse_frames(replay.as_bytes()).unwrap(), from_log);
        assert_eq!(parse_frames(b"not json"), Err("no records in it".to_string()));
    }
}
