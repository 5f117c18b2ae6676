//! A live `echo-agent run` in a topology's hotspot namespace, for tests and the demo.
//!
//! The agent is started with `nsenter --net` (not `ip netns exec`, which gives each process
//! a private /sys and so a private bpffs): successive agents must share the pin directory,
//! as they do on a real box.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    http,
    netns::{nsenter, Topology},
};

pub const LISTEN: &str = "127.0.0.1:9977";

/// A state directory for an agent under test, on tmpfs (/dev/shm) when there is one. The
/// agent syncs its log to disk per record; on a small VM a disk flush can stall the CPUs
/// long enough for the test topology's veth rings to overflow, and the lost packets then
/// test the walker's loss handling instead of what the test is about.
pub fn state_dir(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("echo-{name}"))
}

pub struct Agent {
    child: Option<Child>,
    bin: PathBuf,
    pub ns: String,
    pub iface: String,
    pub listen: SocketAddr,
    args: Vec<String>,
    /// A command the agent runs under, inside the namespace (e.g. setpriv dropping privileges).
    wrap: Vec<String>,
    pub log: PathBuf,
    /// How to reach its listener (TLS, credentials).
    pub http: http::Options,
}

impl Agent {
    /// Starts `bin run --iface <hotspot LAN> <args>` and waits until it serves metrics.
    pub fn start(bin: &Path, topo: &Topology, args: &[&str]) -> Result<Self> {
        Self::start_wrapped(bin, topo, &[], args)
    }

    /// As `start`, with the agent run under `wrap` (a command line ending where the agent's
    /// begins, such as `setpriv --reuid ... --`).
    pub fn start_wrapped(bin: &Path, topo: &Topology, wrap: &[&str], args: &[&str]) -> Result<Self> {
        Self::start_full(bin, topo, wrap, args, http::Options::default())
    }

    /// As `start`, reached over `http` (for `--web.config.file`).
    pub fn start_web(bin: &Path, topo: &Topology, args: &[&str], http: http::Options) -> Result<Self> {
        Self::start_full(bin, topo, &[], args, http)
    }

    /// As `start`, listening on `listen` (e.g. the hotspot's LAN address, for a runner in the
    /// controller namespace).
    pub fn start_on(bin: &Path, topo: &Topology, listen: SocketAddr, args: &[&str]) -> Result<Self> {
        Self::start_full_on(bin, topo, &[], args, http::Options::default(), listen)
    }

    fn start_full(bin: &Path, topo: &Topology, wrap: &[&str], args: &[&str], http: http::Options) -> Result<Self> {
        Self::start_full_on(bin, topo, wrap, args, http, LISTEN.parse().expect("valid"))
    }

    fn start_full_on(bin: &Path, topo: &Topology, wrap: &[&str], args: &[&str], http: http::Options, listen: SocketAddr) -> Result<Self> {
        let mut a = Agent {
            wrap: wrap.iter().map(|s| s.to_string()).collect(),
            child: None,
            bin: bin.to_path_buf(),
            ns: topo.hotspot_ns.clone(),
            iface: topo.hotspot_lan_if.clone(),
            listen,
            args: args.iter().map(|s| s.to_string()).collect(),
            log: std::env::temp_dir().join(format!("echo-{}-agent.log", topo.id)),
            http,
        };
        let _ = std::fs::remove_file(&a.log);
        a.spawn()?;
        Ok(a)
    }

    fn command(&self, sub: &[&str]) -> Command {
        let mut c = nsenter(&self.ns);
        c.arg(&self.bin).args(sub);
        c
    }

    /// Starts the agent process (again) and waits for its metrics endpoint.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut c = nsenter(&self.ns);
        c.args(&self.wrap).arg(&self.bin).args(["run", "--iface", &self.iface, "--web.listen-address", &self.listen.to_string()]);
        c.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.child = Some(c.spawn().context("starting echo-agent")?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut().expect("spawned").try_wait()? {
                bail!("echo-agent exited with {st}: {}", self.log_text());
            }
            if self.get("/metrics").map(|r| r.status == 200).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("echo-agent did not serve metrics within 20 s: {}", self.log_text())
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<http::Response> {
        http::request_with(&self.ns, self.listen, "GET", path, "", &self.http)
    }

    pub fn post(&self, path: &str, body: &str) -> Result<http::Response> {
        http::request_with(&self.ns, self.listen, "POST", path, body, &self.http)
    }

    pub fn scrape(&self) -> Result<Metrics> {
        let r = self.get("/metrics")?;
        if r.status != 200 {
            bail!("/metrics answered {}", r.status);
        }
        Ok(Metrics::parse(&r.body))
    }

    /// SIGKILL: no clean-up at all, as when the OOM killer or a power cut strikes.
    pub fn kill9(&mut self) -> Result<()> {
        let mut c = self.child.take().context("not running")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        Ok(c.wait()?)
    }

    /// `echo-agent detach --iface` for this agent's interface.
    pub fn detach(&self) -> Result<String> {
        let out = self.command(&["detach", "--iface", &self.iface]).output()?;
        if !out.status.success() {
            bail!("detach: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.detach();
    }
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Metrics(pub Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or((line, "nan"));
            let value = value.parse().unwrap_or(f64::NAN);
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Metrics(out)
    }

    /// The sample of `name` whose labels include all of `labels`; 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sum(name, labels)
    }

    /// The sum over samples of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Every sample of `name`.
    pub fn series(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.0.iter().filter(|(n, _, _)| n == name).map(|(_, l, v)| (l, *v)).collect()
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, r)) = rest.split_once("=\"") {
        let Some(end) = r.find('"') else { break };
        out.insert(k.trim_start_matches(',').to_string(), r[..end].to_string());
        rest = &r[end + 1..];
    }
    out
}
