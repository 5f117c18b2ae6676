//! `echo-agent experiment`: runs a plan's trials against a running agent, as the seed paper's
//! desktop server did overnight. Per trial it announces the arm to the agent
//! (`POST /api/devices/{name}/trial`, so the frame carries the arm and its parameters), pings
//! `command_start`, plays the arm's audio through the player command, pings `command_end`
//! when the player exits, and pings `response_start`/`response_end` when the device's TLS
//! download (`GET /api/devices`, read from the counter maps) starts growing and goes quiet.
//! Progress (trials done) is saved in the state directory after every trial, so an
//! interrupted run resumes.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    frames::Frame,
    markers::{MarkerSpec, Role},
    ping::Pinger,
    plan::{Plan, PlanError},
    stats::arm_stats,
};

/// How often the runner reads the device's download counter: the latency of a
/// `response_start` ping behind the response's first bytes.
const POLL: Duration = Duration::from_millis(10);

/// Bad input to the runner (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no --marker for {0}: the runner pings it")]
    MissingMarker(&'static str),
    #[error("--api {0:?}: expected http://HOST:PORT")]
    Api(String),
    #[error("the agent at {0} does not monitor a device named {1:?}")]
    UnknownDevice(SocketAddr, String),
    #[error("{0} holds progress of a different plan; use --restart to start over")]
    OtherPlan(PathBuf),
}

pub struct Options {
    pub plan: PathBuf,
    pub device: String,
    pub api: String,
    pub markers: Vec<MarkerSpec>,
    pub state_dir: PathBuf,
    pub restart: bool,
}

/// A minimal HTTP/1.1 client for the agent's API (plain HTTP, one request per connection).
pub struct ApiClient {
    addr: SocketAddr,
}

impl ApiClient {
    pub fn parse(url: &str) -> Result<Self, ExperimentError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| ExperimentError::Api(url.to_string()))?;
        let addr = rest.trim_end_matches('/').parse().map_err(|_| ExperimentError::Api(url.to_string()))?;
        Ok(ApiClient { addr })
    }

    pub fn request(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).with_context(|| format!("connecting to the agent at {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", self.addr, body.len())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).with_context(|| format!("reading the agent's answer to {method} {path}"))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("a malformed answer to {method} {path}"))?;
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("no status in the answer to {method} {path}"))?;
        Ok((status, body.to_string()))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.request("GET", path, "")?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: unexpected answer"))
    }
}

#[derive(Deserialize)]
struct DeviceCounters {
    device: String,
    download_tls_bytes: u64,
}

/// Progress saved after every trial.
#[derive(Serialize, Deserialize)]
struct Progress {
    fingerprint: String,
    done: usize,
    /// Epoch seconds the first trial started (frames since then are this experiment's).
    started: f64,
}

fn epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `s` quoted for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Markers([Option<IpAddr>; 4]);

impl Markers {
    fn new(specs: &[MarkerSpec]) -> Result<Self, ExperimentError> {
        let mut m = [None; 4];
        for s in specs {
            m[s.role as usize] = Some(s.ip);
        }
        for role in [Role::CommandStart, Role::CommandEnd] {
            if m[role as usize].is_none() {
                return Err(ExperimentError::MissingMarker(role.name()));
            }
        }
        Ok(Markers(m))
    }
}

/// What one trial has seen so far, seconds from its start.
#[derive(Default)]
struct Seen {
    audio_end: Option<f64>,
    response_start: Option<f64>,
    response_end: Option<f64>,
}

struct Runner {
    api: ApiClient,
    device: String,
    markers: Markers,
    pinger: Pinger,
}

impl Runner {
    fn mark(&mut self, role: Role) -> Result<()> {
        if let Some(ip) = self.markers.0[role as usize] {
            self.pinger.ping(ip).with_context(|| format!("pinging the {role} marker {ip}"))?;
        }
        Ok(())
    }

    /// The device's TLS download so far, or `None` when the agent does not monitor it.
    fn download(&self) -> Result<Option<u64>> {
        let devices: Vec<DeviceCounters> = self.api.get_json("/api/devices")?;
        Ok(devices.iter().find(|d| d.device == self.device).map(|d| d.download_tls_bytes))
    }

    /// The error for a device the agent does not monitor.
    fn unknown_device(&self) -> anyhow::Error {
        ExperimentError::UnknownDevice(self.api.addr, self.device.clone()).into()
    }

    /// Plays one trial; returns when its response ended, or none came within the timeout.
    fn trial(&mut self, plan: &Plan, arm: usize, index: usize) -> Result<()> {
        let a = &plan.arms[arm];
        let body = serde_json::json!({ "arm": a.name, "params": a.params }).to_string();
        let (status, answer) = self.api.request("POST", &format!("/api/devices/{}/trial", self.device), &body)?;
        if status == 404 {
            return Err(self.unknown_device());
        }
        if status != 200 {
            bail!("announcing trial {index}: {status} {answer}");
        }
        let mut ear = match &plan.response.hook {
            Some(hook) => Ear::Hook(Hook::start(hook, self.command(plan, arm, index, hook))?),
            None => {
                let base = self.download()?.ok_or_else(|| self.unknown_device())?;
                Ear::Download { base, last: base, changed: 0.0 }
            }
        };
        self.mark(Role::CommandStart)?;
        let t0 = Instant::now();
        let line = plan.player.replace("{file}", &shell_quote(&a.audio.display().to_string()));
        let mut player = self.command(plan, arm, index, &line).spawn().with_context(|| format!("starting the player: {line}"))?;
        let rule = &plan.response;
        let mut seen = Seen::default();
        loop {
            let now = t0.elapsed().as_secs_f64();
            let (start, end) = match &mut ear {
                Ear::Download { base, last, changed } => {
                    let dl = self.download()?.ok_or_else(|| self.unknown_device())?;
                    let start = seen.response_start.is_none() && dl.saturating_sub(*base) >= rule.min_bytes;
                    if start || dl != *last {
                        (*last, *changed) = (dl, now);
                    }
                    (start, seen.response_start.is_some() && now - *changed >= rule.quiet_s)
                }
                Ear::Hook(h) => h.heard(),
            };
            if start && seen.response_start.is_none() {
                self.mark(Role::ResponseStart)?;
                seen.response_start = Some(now);
            }
            let too_long = seen.response_start.is_some_and(|t| now - t >= rule.timeout_s);
            if (end || too_long) && seen.response_start.is_some() && seen.response_end.is_none() {
                self.mark(Role::ResponseEnd)?;
                seen.response_end = Some(now);
            }
            if seen.audio_end.is_none() {
                if let Some(st) = player.try_wait()? {
                    if !st.success() {
                        bail!("the player exited with {st} in trial {index} (arm {})", a.name);
                    }
                    self.mark(Role::CommandEnd)?;
                    seen.audio_end = Some(now);
                }
            }
            if let Some(end) = seen.audio_end {
                if seen.response_end.is_some() || (seen.response_start.is_none() && now - end >= rule.timeout_s) {
                    return Ok(());
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// `sh -c line` with the trial in its environment (`ECHO_ARM`, `ECHO_TRIAL`,
    /// `ECHO_PARAM_<NAME>`): the player, and the microphone hook. In a process group of its
    /// own: Ctrl-C at the terminal stops the runner between trials, not the audio mid-trial.
    fn command(&self, plan: &Plan, arm: usize, index: usize, line: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let a = &plan.arms[arm];
        let mut c = Command::new("sh");
        c.args(["-c", line]).env("ECHO_ARM", &a.name).env("ECHO_TRIAL", index.to_string()).process_group(0);
        for (k, v) in &a.params {
            c.env(format!("ECHO_PARAM_{}", k.to_uppercase()), v.to_string());
        }
        c
    }
}

/// How the runner learns of the device's response.
enum Ear {
    /// The device's TLS download, read from the agent: it started growing (by at least
    /// `min_bytes` over `base`) and was last seen changing at `changed` (seconds).
    Download { base: u64, last: u64, changed: f64 },
    /// The plan's microphone hook.
    Hook(Hook),
}

/// The microphone hook (`[response] hook`): a command run for each trial from just before
/// `command_start` that prints `start` when the device begins to speak and `end` when it
/// stops. Killed when the trial ends.
struct Hook {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Hook {
    fn start(line: &str, mut c: Command) -> Result<Self> {
        let mut child = c.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting the microphone hook: {line}"))?;
        let out = child.stdout.take().context("the hook's standard output")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Hook { child, lines })
    }

    /// Whether the hook has said `start`, and `end`, since last asked.
    fn heard(&mut self) -> (bool, bool) {
        let (mut start, mut end) = (false, false);
        while let Ok(l) = self.lines.try_recv() {
            match l.trim() {
                "start" => start = true,
                "end" => end = true,
                _ => {}
            }
        }
        (start, end)
    }
}

impl Drop for Hook {
    /// Kills the hook's whole process group (the shell and whatever it started).
    fn drop(&mut self) {
        // SAFETY: a signal to the group our child leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn progress_path(state_dir: &Path, plan: &Path) -> PathBuf {
    let stem = plan.file_stem().map_or("plan".into(), |s| s.to_string_lossy().into_owned());
    state_dir.join(format!("experiment-{stem}.json"))
}

fn save(path: &Path, p: &Progress) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string(p)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs the plan; returns the experiment's frames (as the agent reports them).
pub fn run(o: Options) -> Result<Vec<Frame>> {
    let plan = Plan::load(&o.plan).map_err(ExperimentError::from)?;
    let markers = Markers::new(&o.markers)?;
    let api = ApiClient::parse(&o.api)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    std::fs::create_dir_all(&o.state_dir).with_context(|| format!("creating {}", o.state_dir.display()))?;
    let path = progress_path(&o.state_dir, &o.plan);
    let fingerprint = plan.fingerprint();
    let mut progress = match std::fs::read_to_string(&path) {
        Ok(text) if !o.restart => {
            let p: Progress = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            if p.fingerprint != fingerprint {
                return Err(ExperimentError::OtherPlan(path).into());
            }
            p
        }
        _ => Progress { fingerprint, done: 0, started: epoch() },
    };
    let mut runner = Runner { api, device: o.device.clone(), markers, pinger: Pinger::new() };
    // Unreachable agent: its own error; reachable but not watching the device: bad input.
    runner.download()?.ok_or_else(|| runner.unknown_device())?;
    let schedule = plan.schedule();
    let t0 = Instant::now();
    let first = progress.done;
    for t in &schedule[first.min(schedule.len())..] {
        // A signal stops the run between trials: a trial once started is played out, so
        // every frame in the log is a whole trial.
        if stop.load(Ordering::Relaxed) {
            eprintln!();
            bail!("interrupted after {} of {} trials; run again to resume", progress.done, schedule.len());
        }
        runner.trial(&plan, t.arm, t.index)?;
        progress.done = t.index + 1;
        save(&path, &progress)?;
        let frames = frames_since(&runner.api, &o.device, progress.started)?;
        let per_trial = t0.elapsed().as_secs_f64() / (progress.done - first) as f64;
        eprint!("\r\x1b[K{}", status_line(&plan, &frames, progress.done, per_trial));
        if progress.done < schedule.len() {
            let until = Instant::now() + Duration::from_secs_f64(t.reset_s);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
            }
        }
    }
    eprintln!();
    // The last frame closes once the agent has read the last marker (its event reader polls).
    let deadline = Instant::now() + FINAL_FRAME_WAIT;
    loop {
        let frames = frames_since(&runner.api, &o.device, progress.started)?;
        if frames.len() >= progress.done || Instant::now() > deadline {
            return Ok(frames);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long the runner waits for the agent to report the last trial's frame.
const FINAL_FRAME_WAIT: Duration = Duration::from_secs(15);

fn frames_since(api: &ApiClient, device: &str, since: f64) -> Result<Vec<Frame>> {
    let frames: Vec<Frame> = api.get_json(&format!("/api/frames?since={since}"))?;
    Ok(frames.into_iter().filter(|f| f.device == device && f.start >= since).collect())
}

/// `[=====     ] done/total ETA · arm mean (n) ...` over the frames the agent reported so far.
fn status_line(plan: &Plan, frames: &[Frame], done: usize, per_trial: f64) -> String {
    const BAR: usize = 20;
    let eta = (plan.trials() - done) as f64 * per_trial;
    let filled = BAR * done / plan.trials().max(1);
    let mut line = format!("[{}{}] {done}/{} ETA {}m{:02}s", "=".repeat(filled), " ".repeat(BAR - filled), plan.trials(), (eta / 60.0) as u64, (eta % 60.0) as u64);
    for s in arm_stats(frames) {
        line += &format!(" · {} {:.0} B (n={})", s.arm, s.mean, s.n);
    }
    line
}
