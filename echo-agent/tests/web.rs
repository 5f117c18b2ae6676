//! `--web.config.file` with the shipped example (deploy/web/web-config.yml: TLS, and the
//! user "prometheus" with the password "change-me"): promtool accepts it, and the agent then
//! serves HTTPS only, to that user only, the API's switches included.

use std::{path::{Path, PathBuf}, process::Command};

use xtask::{
    agent::Agent,
    http::{self, Options},
    netns::Topology,
};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const MAC: &str = "02:ec:40:00:00:01";

/// The example next to a fresh self-signed certificate, where it expects them.
fn example_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("echo-web-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/web/web-config.yml");
    std::fs::copy(example, dir.join("web-config.yml")).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["hotspot".to_string(), "127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("echo-agent.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("echo-agent.key"), cert.key_pair.serialize_pem()).unwrap();
    dir
}

#[test]
fn promtool_accepts_the_example() {
    let dir = example_dir("promtool");
    let out = Command::new("promtool").arg("check").arg("web-config").arg(dir.join("web-config.yml")).output().expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn https_and_basic_auth_guard_metrics_and_switches() {
    let topo = Topology::new(1500).expect("topology");
    let dir = example_dir("agent");
    let state = xtask::agent::state_dir(&format!("{}-web", topo.id));
    let config = dir.join("web-config.yml");
    let device = format!("{MAC}=echo");
    let args = ["--device", &device, "--state-dir", state.to_str().unwrap(), "--web.config.file", config.to_str().unwrap()];
    let right = Options { tls: true, basic: Some(("prometheus".into(), "change-me".into())) };
    let agent = Agent::start_web(Path::new(BIN), &topo, &args, right.clone()).expect("agent over HTTPS");

    let get = |opts: &Options, path: &str| http::request_with(&agent.ns, agent.listen, "GET", path, "", opts);
    let post = |opts: &Options, path: &str, body: &str| http::request_with(&agent.ns, agent.listen, "POST", path, body, opts);
    let anonymous = Options { tls: true, basic: None };
    let wrong = Options { tls: true, basic: Some(("prometheus".into(), "Change-me".into())) };
    let stranger = Options { tls: true, basic: Some(("root".into(), "change-me".into())) };

    let m = get(&right, "/metrics").unwrap();
    assert_eq!((m.status, m.content_type.as_str()), (200, "text/plain; version=0.0.4; charset=utf-8"));
    assert!(m.body.contains("echo_build_info{version="), "{}", m.body);
    for (who, opts) in [("anonymous", &anonymous), ("wrong password", &wrong), ("unknown user", &stranger)] {
        for path in ["/metrics", "/api/interactions", "/"] {
            assert_eq!(get(opts, path).unwrap().status, 401, "{who} GET {path}");
        }
        assert_eq!(post(opts, "/api/devices/echo/muted", "true").unwrap().status, 401, "{who} POST");
    }
    assert_eq!(post(&right, "/api/devices/echo/muted", "true").unwrap().status, 200);
    assert_eq!(get(&right, "/metrics").unwrap().body.lines().find(|l| l.starts_with("echo_device_muted{")), Some("echo_device_muted{device=\"echo\"} 1"));
    // Plain HTTP gets no answer from a TLS listener.
    assert!(http::request(&agent.ns, agent.listen, "GET", "/metrics", "").is_err(), "plain HTTP must not be served");
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_web_config_is_one_line_and_exit_2() {
    let dir = example_dir("bad");
    std::fs::remove_file(dir.join("echo-agent.key")).unwrap();
    let config = dir.join("web-config.yml");
    let out = Command::new(BIN).args(["run", "--iface", "lo", "--device", MAC, "--web.config.file", config.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!("echo-agent: web config {}: key_file {}: ", config.display(), dir.join("echo-agent.key").display());
    assert!(err.starts_with(&want) && err.lines().count() == 1, "{err}");
}
