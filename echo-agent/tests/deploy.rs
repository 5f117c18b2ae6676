//! deploy/ verified with real parts: the systemd unit (verify, security score, and the agent
//! running under exactly its capabilities), the Prometheus config and rules (promtool, rule
//! unit tests, and a real Prometheus scraping an agent under simulated traffic: every
//! recording rule and dashboard query returns data, the muted-upload alert fires when it
//! should and nothing fires otherwise), and a lint of the Grafana dashboard.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{atomic::AtomicBool, Arc},
    thread,
    time::{Duration, Instant},
};

use echo_agent::device::Mac;
use serde_json::Value;
use xtask::{
    agent::Agent,
    echo_sim::{self, Hooks, Household},
    http,
    netns::{server_v4, tls_addr, Topology},
    packets::DEVICE_MAC,
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const DEVICE: &str = "echo";

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(rel)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn promtool_checks_config_rules_and_rule_unit_tests() {
    let dir = deploy("prometheus");
    run(Command::new("promtool").args(["check", "config", "prometheus.yml"]).current_dir(&dir));
    let rules = run(Command::new("promtool").args(["check", "rules", "echo-agent.rules.yml"]).current_dir(&dir));
    assert!(rules.contains("SUCCESS: 13 rules found"), "{rules}");
    let tests = run(Command::new("promtool").args(["test", "rules", "echo-agent.rules.test.yml"]).current_dir(&dir));
    assert!(tests.contains("SUCCESS"), "{tests}");
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy("systemd/echo-agent.service")).unwrap()
}

/// The unit with ExecStart pointing at the binary under test (verify checks it exists).
fn unit_under_test() -> (PathBuf, String) {
    let text = unit_text();
    let dir = std::env::temp_dir().join(format!("echo-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo-agent.service");
    std::fs::write(&path, text.replace("/usr/local/bin/echo-agent", BIN)).unwrap();
    (path, text)
}

/// The capabilities the unit grants, e.g. ["bpf", "net_admin"].
fn unit_capabilities(text: &str) -> Vec<String> {
    let line = text.lines().find(|l| l.starts_with("AmbientCapabilities=")).expect("AmbientCapabilities");
    let caps: Vec<String> = line["AmbientCapabilities=".len()..].split_whitespace().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect();
    let bounding = text.lines().find(|l| l.starts_with("CapabilityBoundingSet=")).expect("CapabilityBoundingSet");
    assert_eq!(bounding["CapabilityBoundingSet=".len()..], line["AmbientCapabilities=".len()..], "bounding set = ambient set");
    caps
}

#[test]
fn systemd_unit_verifies_and_scores_at_most_3() {
    let (path, text) = unit_under_test();
    run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let out = run(Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&path));
    let score: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for echo-agent.service: ").map(|(_, r)| r.split_whitespace().next().unwrap().parse().unwrap()))
        .unwrap_or_else(|| panic!("no score: {out}"));
    eprintln!("systemd-analyze security: {score}");
    assert!(score <= 3.0, "exposure {score}: {out}");
    assert_eq!(unit_capabilities(&text), ["bpf", "net_admin"]);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// `setpriv` arguments that give an unprivileged user exactly `caps`, as the unit does.
fn setpriv(caps: &[String]) -> Vec<String> {
    let set = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs", "--inh-caps", &set, "--ambient-caps", &set, "--bounding-set", &set]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "net_admin" => 12,
            "perfmon" => 38,
            "bpf" => 39,
            other => panic!("unexpected capability {other}"),
        })
        .fold(0u64, |m, bit| m | 1 << bit)
}

/// A topology with the simulated Echo's cloud, for the agent run as the unit runs it: the
/// unit's capabilities, user nobody, the pin and state directories owned by that user (the
/// unit's `install -d` and `StateDirectory=` do the same). The state directory goes on drop.
struct AsTheUnit {
    caps: Vec<String>,
    server: std::net::SocketAddr,
    // Fields drop in order: the cloud's servers before the namespaces they run in.
    _cloud: echo_sim::Cloud,
    topo: Topology,
    state: PathBuf,
}

impl AsTheUnit {
    fn new() -> Self {
        let topo = Topology::new(1500).expect("topology");
        let server = tls_addr(server_v4(0));
        let _cloud = echo_sim::Cloud::start(&topo, server).expect("cloud");
        let pins = Path::new("/sys/fs/bpf/echo-agent/v1").join(&topo.hotspot_lan_if);
        let state = xtask::agent::state_dir(&format!("{}-caps", topo.id));
        for d in [&pins, &state] {
            std::fs::create_dir_all(d).unwrap();
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        AsTheUnit { caps: unit_capabilities(&unit_text()), server, _cloud, topo, state }
    }

    /// `run` arguments: the device, the state directory, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let base = ["--device".to_string(), format!("{}={DEVICE}", Mac(DEVICE_MAC)), "--state-dir".into(), self.state.display().to_string()];
        base.into_iter().chain(extra.iter().map(|a| a.to_string())).collect()
    }

    /// The agent under `setpriv` with exactly the unit's capabilities.
    fn start(&self, extra: &[&str]) -> Agent {
        let (wrap, args) = (setpriv(&self.caps), self.args(extra));
        let (wrap, args): (Vec<&str>, Vec<&str>) = (wrap.iter().map(String::as_str).collect(), args.iter().map(String::as_str).collect());
        Agent::start_wrapped(Path::new(BIN), &self.topo, &wrap, &args).expect("agent")
    }
}

impl Drop for AsTheUnit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// One command of the simulated Echo to `server`: the agent finds its interaction, with the
/// simulated Echo's upload bytes, and counts every upload byte.
fn counts_one_command(topo: &Topology, agent: &Agent, server: std::net::SocketAddr) {
    let house = Household { lead_in: Duration::from_secs(2), commands: 1, muted_upload: false, trickle: false, ..Default::default() };
    let hooks = Hooks::controller(topo, Box::new(|_| Ok(())), Arc::new(AtomicBool::new(false)));
    let truth = echo_sim::run(topo, server, house.plan(), hooks).unwrap().join().unwrap().expect("simulated Echo");
    thread::sleep(Duration::from_millis(3_000));
    let r = agent.get("/api/interactions").unwrap();
    let found: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    assert_eq!(found.len(), 1, "{}", r.body);
    assert_eq!(found[0]["upload_bytes"], truth.commands[0].upload_bytes);
    let m = agent.scrape().unwrap();
    let total = truth.commands[0].upload_bytes + truth.heartbeat_bytes + truth.protocol_bytes;
    assert_eq!(m.value("echo_upload_tls_bytes_total", &[("device", DEVICE)]) as u64, total);
}

/// `--xdp-mode tc-ingress` with the unit's capabilities alone: the verifier takes echo_tc_up
/// (its in-place reads at constant offsets) without CAP_PERFMON, TCX attaches it, and it
/// counts as echo_xdp does.
#[test]
fn tc_ingress_runs_with_the_units_capabilities() {
    let unit = AsTheUnit::new();
    let agent = unit.start(&["--xdp-mode", "tc-ingress"]);
    let m = agent.scrape().unwrap();
    assert_eq!(m.value("echo_xdp_attached", &[("mode", "tc-ingress")]), 1.0, "{}", agent.log_text());
    assert_eq!(m.value("echo_tc_attached", &[]), 1.0);
    counts_one_command(&unit.topo, &agent, unit.server);
}

/// The agent as the unit runs it: user nobody, the unit's capabilities and nothing else, the
/// pin and state directories owned by the user (ExecStartPre and StateDirectory). It counts,
/// and finds the interaction, exactly: CAP_BPF and CAP_NET_ADMIN are enough (no CAP_PERFMON).
/// Without CAP_NET_ADMIN it cannot attach, so the agent says so in one line before touching
/// anything.
#[test]
fn runs_with_exactly_the_units_capabilities() {
    let unit = AsTheUnit::new();
    let caps = &unit.caps;

    let without: Vec<String> = caps.iter().filter(|c| *c != "net_admin").cloned().collect();
    let out = xtask::netns::nsenter(&unit.topo.hotspot_ns)
        .args(setpriv(&without))
        .arg(BIN)
        .args(["run", "--iface", &unit.topo.hotspot_lan_if])
        .args(unit.args(&[]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "echo-agent: loading eBPF programs needs root, or CAP_BPF and CAP_NET_ADMIN");

    let agent = unit.start(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid().unwrap())).unwrap();
    let field = |name: &str| {
        let v = status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
        u64::from_str_radix(v, 16).unwrap()
    };
    assert_eq!((field("CapEff:"), field("CapPrm:"), field("CapBnd:")), (cap_mask(caps), cap_mask(caps), cap_mask(caps)), "{status}");
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("65534")), "{status}");

    counts_one_command(&unit.topo, &agent, unit.server);
    let log = unit.state.join(echo_agent::store::LOG_FILE);
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o600));
}

/// Characters a URL query value may carry unescaped.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PROMETHEUS: &str = "127.0.0.1:9090";

impl Prometheus {
    /// The shipped config and rules, in `ns` (where the agent listens on loopback), with
    /// 1-second scrape and evaluation intervals so the test takes seconds, not minutes.
    fn start(topo: &Topology) -> Self {
        let dir = std::env::temp_dir().join(format!("echo-{}-prometheus", topo.id));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
        assert!(config.contains("scrape_interval: 15s") && config.contains("evaluation_interval: 15s"));
        let config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::copy(deploy("prometheus/echo-agent.rules.yml"), dir.join("echo-agent.rules.yml")).unwrap();
        let child = xtask::netns::nsenter(&topo.hotspot_ns)
            .arg("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus");
        let p = Prometheus { child, dir, ns: topo.hotspot_ns.clone() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "Prometheus not ready: {}", std::fs::read_to_string(p.dir.join("prometheus.log")).unwrap_or_default());
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> Option<http::Response> {
        http::request(&self.ns, PROMETHEUS.parse().unwrap(), "GET", path, "").ok()
    }

    fn api(&self, path: &str) -> Value {
        let r = self.get(path).expect("Prometheus answers");
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body));
        assert_eq!(v["status"], "success", "{path}: {}", r.body);
        v["data"].clone()
    }

    fn query(&self, expr: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", urlencode(expr)))["result"].as_array().cloned().unwrap_or_default()
    }

    fn firing(&self) -> Vec<String> {
        let alerts = self.api("/api/v1/alerts")["alerts"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<String> = alerts.iter().filter(|a| a["state"] == "firing").map(|a| a["labels"]["alertname"].as_str().unwrap().to_string()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Grafana's variables as a dashboard with every option selected would send them.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$__interval", "15s").replace("$instance", ".*").replace("$device", ".*")
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana/dashboards/echo-agent.json")).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard: panel targets, annotations, variable queries.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((format!("panel {:?}", p["title"]), t["expr"].as_str().unwrap().to_string()));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        out.push((format!("annotation {:?}", a["name"]), a["expr"].as_str().unwrap().to_string()));
    }
    out
}

#[test]
fn prometheus_evaluates_every_rule_and_panel_and_alerts_on_muted_upload() {
    let topo = Topology::new(1500).expect("topology");
    let server = tls_addr(server_v4(0));
    let _cloud = echo_sim::Cloud::start(&topo, server).expect("cloud");
    let state = xtask::agent::state_dir(&format!("{}-prom-state", topo.id));
    let args = echo_sim::agent_flags(&state);
    let agent = Agent::start(Path::new(BIN), &topo, &args.iter().map(String::as_str).collect::<Vec<_>>()).expect("agent");
    let prom = Prometheus::start(&topo);

    let mute = echo_sim::mute_via_api(&agent);
    // Two framed commands, then an upload while muted (the household plan's order).
    let house = Household { lead_in: Duration::from_secs(4), commands: 2, trickle: false, ..Default::default() };
    let plan = house.plan();
    let muted_at = plan.steps.iter().find_map(|(at, s)| matches!(s, echo_sim::Step::Mute(true)).then_some(*at)).unwrap();
    let sim = echo_sim::run(&topo, server, plan, Hooks::controller(&topo, mute, Arc::new(AtomicBool::new(false)))).unwrap();
    let t0 = Instant::now();

    // Before the muted upload: data flowing, nothing firing.
    thread::sleep(muted_at.saturating_sub(Duration::from_millis(500)));
    assert!(!prom.query("echo_interactions_total > 0").is_empty(), "scraped an interaction before the muted upload");
    assert_eq!(prom.firing(), Vec::<String>::new(), "no alert before the muted upload");

    let truth = sim.join().unwrap().expect("simulated Echo");
    eprintln!("prometheus: simulator done after {:.1} s: {} commands", t0.elapsed().as_secs_f64(), truth.commands.len());
    thread::sleep(Duration::from_secs(4));

    // Every recording rule is healthy and has data.
    let groups = prom.api("/api/v1/rules")["groups"].as_array().cloned().unwrap();
    let mut recorded = 0;
    for g in &groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
            if r["type"] == "recording" {
                let name = r["name"].as_str().unwrap();
                assert!(!prom.query(name).is_empty(), "recording rule {name} has no data");
                recorded += 1;
            }
        }
    }
    assert_eq!(recorded, 7);
    // Every dashboard query returns data.
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    for (what, expr) in &exprs {
        let result = prom.query(&grafana_expr(expr));
        assert!(!result.is_empty(), "{what}: {expr} returned nothing");
    }
    for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        let q = grafana_expr(v["definition"].as_str().unwrap());
        let (metric, label) = q.trim_start_matches("label_values(").trim_end_matches(')').rsplit_once(", ").unwrap();
        let values = prom.api(&format!("/api/v1/label/{label}/values?match[]={}", urlencode(metric)));
        assert!(!values.as_array().unwrap().is_empty(), "variable {}: {q}", v["name"]);
    }
    // The traffic panels name the Echo's cloud (its SNI) through echo_destination_info.
    for title in ["Upload rate per destination", "Download rate per destination"] {
        let (_, expr) = exprs.iter().find(|(what, _)| what.contains(title)).expect(title);
        let series = prom.query(&grafana_expr(expr));
        assert!(series.iter().any(|s| s["metric"]["name"] == echo_sim::ECHO_HOST), "{title}: {series:?}");
    }
    eprintln!("prometheus: {recorded} recording rules and {} dashboard queries returned data", exprs.len());
    // The muted upload fires its alert, and nothing else fires.
    assert_eq!(prom.firing(), vec!["EchoUploadWhileMuted".to_string()]);
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}

/// Rules after grafana's dashboard-linter: one datasource variable that everything uses,
/// `$__rate_interval` in every rate, a unit on every panel, no hard-coded instance, every
/// query filtered by the instance variable.
#[test]
fn dashboard_lint() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds: Vec<&Value> = vars.iter().filter(|v| v["type"] == "datasource").collect();
    assert_eq!(ds.len(), 1, "one datasource variable");
    assert_eq!((ds[0]["name"].as_str(), ds[0]["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let uses_var = |v: &Value| v["uid"] == "${datasource}" && v["type"] == "prometheus";
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(uses_var(&v["datasource"]), "variable {}", v["name"]);
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        assert!(uses_var(&a["datasource"]), "annotation {}", a["name"]);
    }
    let mut panels = 0;
    for p in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        panels += 1;
        let title = &p["title"];
        assert!(uses_var(&p["datasource"]), "panel {title}: datasource");
        assert!(p["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()), "panel {title}: unit");
        assert!(p["description"].as_str().is_some_and(|s| !s.is_empty()), "panel {title}: description");
        for t in p["targets"].as_array().unwrap() {
            assert!(uses_var(&t["datasource"]), "panel {title}: target datasource");
        }
    }
    assert!(panels >= 15, "{panels} panels");
    for (what, expr) in dashboard_exprs(&d) {
        assert!(!expr.contains("instance=\""), "{what}: hard-coded instance: {expr}");
        assert!(expr.contains("instance=~\"$instance\""), "{what}: not filtered by $instance: {expr}");
        for f in ["rate(", "irate("] {
            for (i, _) in expr.match_indices(f) {
                let rest = &expr[i..];
                let window = &rest[rest.find('[').unwrap()..=rest.find(']').unwrap()];
                assert_eq!(window, "[$__rate_interval]", "{what}: {expr}");
            }
        }
        for (i, _) in expr.match_indices("increase(") {
            let rest = &expr[i..];
            let window = &rest[rest.find('[').unwrap()..=rest.find(']').unwrap()];
            assert!(window == "[$__rate_interval]" || window == "[$__range]", "{what}: {expr}");
        }
    }
}
