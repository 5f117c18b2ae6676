//! The research lab in namespaces, shared by the experiment tests and `cargo xtask demo
//! --experiment`: the simulated Echo listening (see `listening`), its cloud, an agent
//! listening on the hotspot's LAN address, and `echo-agent experiment` run from the
//! controller namespace with plans of the seed paper's three experiments, time-compressed.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{atomic::AtomicBool, Arc},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};

use crate::{
    agent::Agent,
    echo_sim::{self, Cloud},
    listening::{self, Audio, Heard, COMMAND_S},
    netns::{nsenter, server_v4, tls_addr, Topology, HOTSPOT_LAN_V4},
};

/// Time compression of the lab's audio and cloud.
pub const SPEED: f64 = 10.0;
/// Seconds the agent waits for a response before it closes a frame without one; longer than
/// the plans' `timeout_s`, so the runner decides.
const AGENT_RESPONSE_TIMEOUT: &str = "2";

/// One arm of a plan: name, audio, parameters written to the plan.
pub struct LabArm {
    pub name: String,
    pub audio: Audio,
    pub params: Vec<(&'static str, f64)>,
}

fn audio(prefix_s: f64, gap_s: f64, postfix_s: f64) -> Audio {
    Audio { prefix_s, command_s: COMMAND_S, gap_s, postfix_s, speed: SPEED }
}

/// The prefix experiment: 0 to 9 s of talk before the command.
pub fn prefix_arms() -> Vec<LabArm> {
    [0.0, 3.0, 6.0, 9.0].iter().map(|&p| LabArm { name: format!("prefix-{p}"), audio: audio(p, 0.0, 0.0), params: vec![("prefix_s", p)] }).collect()
}

/// The postfix experiment without a pause: 0 to 3 s of talk right after the command.
pub fn postfix_arms() -> Vec<LabArm> {
    [0.0, 1.0, 2.0, 3.0].iter().map(|&p| LabArm { name: format!("postfix-{p}"), audio: audio(0.0, 0.0, p), params: vec![("postfix_s", p)] }).collect()
}

/// The gap experiment: a pause of 0.1 to 0.8 s between the command and 3 s of talk.
pub fn gap_arms() -> Vec<LabArm> {
    (1..=8).map(|i| i as f64 / 10.0).map(|g| LabArm { name: format!("gap-{g}"), audio: audio(0.0, g, 3.0), params: vec![("gap_s", g)] }).collect()
}

/// Writes each arm's audio description and a plan `NAME.toml` into `dir`.
pub fn write_plan(dir: &Path, name: &str, arms: &[LabArm], repetitions: usize, seed: u64) -> Result<PathBuf> {
    let player = listening::player_script(dir)?;
    let mut plan = format!(
        "# {name}: time-compressed {SPEED}x for the simulated Echo.\nrepetitions = {repetitions}\nreset_s = [0.2, 0.4]\ninterleave = \"shuffled-blocks\"\nseed = {seed}\nplayer = \"{} {{file}}\"\n\n[response]\nmin_bytes = 1\nquiet_s = 0.15\ntimeout_s = 0.6\n",
        player.display()
    );
    for a in arms {
        let file = format!("{name}-{}.json", a.name);
        std::fs::write(dir.join(&file), a.audio.to_json())?;
        plan += &format!("\n[[arms]]\nname = \"{}\"\naudio = \"{file}\"\n", a.name);
        for (k, v) in &a.params {
            plan += &format!("{k} = {v:?}\n");
        }
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, plan)?;
    Ok(path)
}

/// Fields drop in order: the agent and the cloud before the topology they live in.
pub struct Lab {
    pub agent: Agent,
    /// The agent's state directory (its log: `interactions.jsonl`).
    pub state: PathBuf,
    /// Plans, audio descriptions, the player and the runner's progress.
    pub dir: PathBuf,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<Result<Vec<Heard>>>>,
    _cloud: Cloud,
    pub topo: Topology,
}

impl Lab {
    /// Builds the topology, the cloud, the agent and the listening Echo (decisions seeded).
    pub fn start(bin: &Path, seed: u64) -> Result<Self> {
        let topo = Topology::new(1500)?;
        let server = tls_addr(server_v4(0));
        let cloud = Cloud::start(&topo, server)?;
        let state = crate::agent::state_dir(&format!("{}-lab", topo.id));
        let dir = std::env::temp_dir().join(format!("echo-lab-{}", topo.id));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut flags = echo_sim::agent_flags(&state);
        flags.extend(["--response-timeout".to_string(), AGENT_RESPONSE_TIMEOUT.to_string()]);
        let listen = SocketAddr::from((HOTSPOT_LAN_V4, 9977));
        let agent = Agent::start_on(bin, &topo, listen, &flags.iter().map(String::as_str).collect::<Vec<_>>())?;
        let stop = Arc::new(AtomicBool::new(false));
        let echo = listening::listen(&topo, server, seed, stop.clone())?;
        Ok(Lab { agent, state, dir, stop, echo: Some(echo), _cloud: cloud, topo })
    }

    /// `echo-agent experiment` with `plan` for `device`, from the controller namespace
    /// (`nsenter` execs it: its process is the runner's).
    pub fn command(&self, bin: &Path, plan: &Path, device: &str) -> Command {
        let mut c = nsenter(&self.topo.controller_ns);
        c.arg(bin).args(["experiment", "--plan"]).arg(plan);
        c.args(["--device", device, "--api", &format!("http://{}", self.agent.listen), "--state-dir"]).arg(&self.dir);
        for m in echo_sim::marker_flags() {
            c.args(["--marker", &m]);
        }
        c
    }

    /// Runs `plan` for the simulated Echo.
    pub fn run(&self, bin: &Path, plan: &Path) -> Result<Output> {
        self.command(bin, plan, echo_sim::DEVICE_NAME).output().context("running echo-agent experiment")
    }

    /// The agent's interaction log.
    pub fn log(&self) -> PathBuf {
        self.state.join("interactions.jsonl")
    }

    /// Stops the Echo; returns what it heard, in order.
    pub fn heard(&mut self) -> Result<Vec<Heard>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let echo = self.echo.take().context("already stopped")?;
        echo.join().map_err(|_| anyhow::anyhow!("the listening Echo panicked"))?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(e) = self.echo.take() {
            let _ = e.join();
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `cargo xtask demo --experiment`: a short gap experiment (every gap twice) in a fresh lab,
/// its report written as `report.html` (and the table printed) in `out`. Returns the HTML's
/// path.
pub fn demo(bin: &Path, out: &Path) -> Result<PathBuf> {
    let lab = Lab::start(bin, 3)?;
    let plan = write_plan(&lab.dir, "gap", &gap_arms(), 2, 3)?;
    println!("running {} trials of {} (time-compressed {SPEED}x)...", 2 * gap_arms().len(), plan.display());
    let run = lab.run(bin, &plan)?;
    anyhow::ensure!(run.status.success(), "echo-agent experiment: {}", String::from_utf8_lossy(&run.stderr));
    print!("{}", String::from_utf8_lossy(&run.stdout));
    // The last frame closes when its response ends.
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::create_dir_all(out)?;
    let html = out.join("report.html");
    let report = std::process::Command::new(bin).args(["report", "--format", "html", "--input"]).arg(lab.log()).arg("--output").arg(&html).output()?;
    anyhow::ensure!(report.status.success(), "echo-agent report: {}", String::from_utf8_lossy(&report.stderr));
    println!("report: {}", html.display());
    Ok(html)
}
