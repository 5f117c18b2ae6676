//! Experiment plans (`echo-agent experiment --plan PLAN.toml`): arms, repetitions, the reset
//! pause between trials and their interleaving, and how a response is recognised. The
//! schedule is a pure function of the plan (its seed included), so an interrupted run
//! resumes where it stopped.
//!
//! ```toml
//! repetitions = 150
//! reset_s = [30.0, 60.0]          # pause between trials, uniformly random in this range
//! interleave = "round-robin"      # or "shuffled-blocks": each block of arms shuffled
//! seed = 1
//! player = "aplay {file}"         # {file}: the arm's audio, shell-quoted
//!
//! [response]                      # the device's answer, as app data it downloads
//! min_bytes = 1                   # downloaded after command_start that start a response
//! quiet_s = 1.0                   # no download for this long ends it
//! timeout_s = 10.0                # none this long after command_end: no response
//! # hook = "listen-for-speech"    # or: a command printing "start"/"end" lines marks it
//!
//! [[arms]]
//! name = "I_1"
//! audio = "command.wav"           # relative to the plan file
//! prefix_s = 0.0                  # any other key: a numeric parameter of the arm
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading plan {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("plan {0}: {1}")]
    Parse(PathBuf, String),
    #[error("plan {0}: {1}")]
    Invalid(PathBuf, String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interleave {
    /// Every repetition plays the arms in the plan's order.
    #[default]
    RoundRobin,
    /// Every repetition plays the arms in a random order of its own.
    ShuffledBlocks,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    #[serde(default = "one")]
    pub min_bytes: u64,
    #[serde(default = "one_f")]
    pub quiet_s: f64,
    #[serde(default = "ten")]
    pub timeout_s: f64,
    /// A microphone hook: a command that prints `start` and `end` as the device speaks;
    /// when given, it marks the response instead of the download.
    #[serde(default)]
    pub hook: Option<String>,
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}

impl Default for ResponseRule {
    fn default() -> Self {
        ResponseRule { min_bytes: one(), quiet_s: one_f(), timeout_s: ten(), hook: None }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Arm {
    pub name: String,
    pub audio: PathBuf,
    /// Every other key: the arm's numeric parameters (prefix_s, postfix_s, gap_s, ...).
    #[serde(flatten)]
    pub params: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub repetitions: usize,
    #[serde(default = "default_reset")]
    pub reset_s: [f64; 2],
    #[serde(default)]
    pub interleave: Interleave,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_player")]
    pub player: String,
    #[serde(default)]
    pub response: ResponseRule,
    pub arms: Vec<Arm>,
}

fn default_reset() -> [f64; 2] {
    [30.0, 60.0]
}

fn default_player() -> String {
    "aplay {file}".to_string()
}

/// One trial of the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub index: usize,
    /// Index into `Plan::arms`.
    pub arm: usize,
    /// Pause after the trial, seconds.
    pub reset_s: f64,
}

impl Plan {
    /// Reads and checks a plan; audio paths become relative to the plan's directory.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Read(path.to_path_buf(), e))?;
        let mut plan = Plan::parse(&text).map_err(|e| PlanError::Parse(path.to_path_buf(), e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for a in &mut plan.arms {
            a.audio = dir.join(&a.audio);
        }
        Ok(plan)
    }

    /// Parses and checks plan text.
    pub fn parse(text: &str) -> Result<Plan, String> {
        let plan: Plan = toml::from_str(text).map_err(|e| e.message().to_string())?;
        plan.check()?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), String> {
        if self.arms.is_empty() {
            return Err("no [[arms]]".into());
        }
        if self.repetitions == 0 {
            return Err("repetitions must be at least 1".into());
        }
        let [lo, hi] = self.reset_s;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
            return Err(format!("reset_s must be [LOW, HIGH] seconds with 0 <= LOW <= HIGH, got {:?}", self.reset_s));
        }
        let r = &self.response;
        if !(r.quiet_s.is_finite() && r.quiet_s > 0.0 && r.timeout_s.is_finite() && r.timeout_s > 0.0) {
            return Err("response quiet_s and timeout_s must be positive seconds".into());
        }
        if !self.player.contains("{file}") {
            return Err(format!("player {:?} has no {{file}}", self.player));
        }
        for (i, a) in self.arms.iter().enumerate() {
            if a.name.is_empty() || self.arms[..i].iter().any(|b| b.name == a.name) {
                return Err(format!("arm names must be unique and not empty: {:?}", a.name));
            }
            if let Some((k, v)) = a.params.iter().find(|(_, v)| !v.is_finite()) {
                return Err(format!("arm {:?}: {k} = {v} is not a finite number", a.name));
            }
        }
        Ok(())
    }

    pub fn trials(&self) -> usize {
        self.repetitions * self.arms.len()
    }

    /// Every trial in order: repetitions of the arms, interleaved as the plan says, each with
    /// its reset pause.
    pub fn schedule(&self) -> Vec<Trial> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let [lo, hi] = self.reset_s;
        let mut out = Vec::with_capacity(self.trials());
        for _ in 0..self.repetitions {
            let mut block: Vec<usize> = (0..self.arms.len()).collect();
            if self.interleave == Interleave::ShuffledBlocks {
                rng.shuffle(&mut block);
            }
            for arm in block {
                out.push(Trial { index: out.len(), arm, reset_s: lo + (hi - lo) * rng.f64() });
            }
        }
        out
    }

    /// A fingerprint of what the schedule and the trials depend on, so a resumed run refuses
    /// a plan that changed.
    pub fn fingerprint(&self) -> String {
        let arms: Vec<String> = self.arms.iter().map(|a| format!("{}={}:{:?}", a.name, a.audio.display(), a.params)).collect();
        format!("{}|{:?}|{:?}|{}|{}", self.repetitions, self.reset_s, self.interleave, self.seed, arms.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
        repetitions = 3
        reset_s = [1.0, 2.0]
        interleave = "shuffled-blocks"
        seed = 7
        player = "play {file}"
        [response]
        quiet_s = 0.5
        [[arms]]
        name = "I_1"
        audio = "a.wav"
        prefix_s = 0
        [[arms]]
        name = "I_2"
        audio = "b.wav"
        prefix_s = 9.0
    "#;

    #[test]
    fn parses_and_schedules() {
        let p = Plan::parse(PLAN).unwrap();
        assert_eq!(p.arms[1].params, BTreeMap::from([("prefix_s".to_string(), 9.0)]));
        assert_eq!(p.response, ResponseRule { min_bytes: 1, quiet_s: 0.5, timeout_s: 10.0, hook: None });
        let s = p.schedule();
        assert_eq!(s.len(), 6);
        // Each block holds every arm once; the schedule is the same every time.
        for block in s.chunks(2) {
            let mut arms: Vec<usize> = block.iter().map(|t| t.arm).collect();
            arms.sort();
            assert_eq!(arms, [0, 1]);
        }
        assert_eq!(s, p.schedule());
        assert!(s.iter().all(|t| (1.0..=2.0).contains(&t.reset_s)));
        let rr = Plan::parse(&PLAN.replace("shuffled-blocks", "round-robin")).unwrap();
        assert_eq!(rr.schedule().iter().map(|t| t.arm).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn refuses_bad_plans() {
        for (bad, why) in [
            (PLAN.replace("repetitions = 3", "repetitions = 0"), "repetitions must be at least 1"),
            (PLAN.replace("[1.0, 2.0]", "[2.0, 1.0]"), "reset_s must be"),
            (PLAN.replace("play {file}", "play"), "has no {file}"),
            (PLAN.replace("\"I_2\"", "\"I_1\""), "must be unique"),
            (PLAN.replace("prefix_s = 9.0", "prefix_s = \"long\""), "invalid type"),
            (PLAN.replace("seed = 7", "seed = 7\nsed = 1"), "unknown field"),
            (PLAN.replace("quiet_s = 0.5", "quiet_s = 0"), "must be positive"),
        ] {
            let e = Plan::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
