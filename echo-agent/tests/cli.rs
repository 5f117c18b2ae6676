//! Bad input gives one clear line and exit code 2, never a panic or a backtrace.

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_echo-agent")).args(args).output().expect("run echo-agent");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_line(stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unreadable_pcap() {
    let (code, err) = agent(&["replay", "--pcap", "/nonexistent/x.pcap", "--device", "02:ec:40:00:00:01"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), "echo-agent: cannot read capture /nonexistent/x.pcap: No such file or directory (os error 2)");
}

#[test]
fn not_a_capture() {
    let path = std::env::temp_dir().join(format!("echo-not-a-capture-{}", std::process::id()));
    std::fs::write(&path, b"hello, this is not a pcap file at all").unwrap();
    let (code, err) = agent(&["replay", "--pcap", path.to_str().unwrap(), "--device", "02:ec:40:00:00:01"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 2);
    assert!(err.starts_with(&format!("echo-agent: {} is not a pcap or pcapng capture", path.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn malformed_muted_span() {
    let (code, err) = agent(&["replay", "--pcap", "/dev/null", "--device", "02:ec:40:00:00:01", "--muted", "20..10"]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "echo-agent: invalid value '20..10' for '--muted <FROM..TO>': malformed span \"20..10\": expected FROM..TO in epoch seconds, either may be left out"
    );
}

#[test]
fn malformed_mac() {
    let (code, err) = agent(&["replay", "--pcap", "/dev/null", "--device", "02:ec:40:00:00"]);
    assert_eq!(code, 2);
    assert!(err.contains("malformed MAC address \"02:ec:40:00:00\""), "{err}");
    assert_one_line(&err);
}

#[test]
fn missing_privileges() {
    // Drop to nobody with no capabilities: loading BPF must fail with a clear line.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_echo-agent"))
        .args(["replay", "--pcap", "/dev/null", "--device", "02:ec:40:00:00:01"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim(), "echo-agent: loading eBPF programs needs root, or CAP_BPF and CAP_NET_ADMIN");
}

// `echo-agent run`: every flag and environment error, each in a private namespace.

use xtask::netns::{spawn_in, Scratch};

const BIN: &str = env!("CARGO_BIN_EXE_echo-agent");
const MAC: &str = "02:ec:40:00:00:01";

/// Runs `echo-agent run <args>` in `ns`, through `wrap` (a prefix command, possibly empty).
fn run_in(ns: &Scratch, wrap: &[&str], args: &[&str]) -> (i32, String) {
    let state = std::env::temp_dir().join(format!("echo-cli-{}", ns.name));
    let mut c = if wrap.is_empty() {
        ns.nsenter(BIN)
    } else {
        let mut c = ns.nsenter(wrap[0]);
        c.args(&wrap[1..]).arg(BIN);
        c
    };
    c.arg("run").args(["--state-dir", state.to_str().unwrap()]).args(args);
    let out = c.output().expect("run echo-agent");
    let _ = std::fs::remove_dir_all(&state);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn assert_exit2(got: (i32, String), want: &str) {
    assert_eq!(got.0, 2, "{}", got.1);
    assert_eq!(got.1, want);
}

#[test]
fn run_unknown_interface() {
    let ns = Scratch::new().unwrap();
    assert_exit2(run_in(&ns, &[], &["--iface", "nosuch0", "--device", MAC]), "echo-agent: no such interface: nosuch0");
}

#[test]
fn run_malformed_mac() {
    let ns = Scratch::new().unwrap();
    assert_exit2(
        run_in(&ns, &[], &["--iface", "lo", "--device", "02:ec:40=kitchen"]),
        "echo-agent: invalid value '02:ec:40=kitchen' for '--device <MAC[=NAME]>': malformed MAC address \"02:ec:40\": expected six hex byte pairs like 02:ec:40:00:00:01",
    );
}

#[test]
fn run_malformed_marker() {
    let ns = Scratch::new().unwrap();
    assert_exit2(
        run_in(&ns, &[], &["--iface", "lo", "--device", MAC, "--marker", "192.0.2.300=command_start"]),
        "echo-agent: invalid value '192.0.2.300=command_start' for '--marker <IP=ROLE>': malformed marker \"192.0.2.300=command_start\": expected IP=ROLE with ROLE one of command_start, command_end, response_start, response_end",
    );
}

#[test]
fn run_malformed_listen_address() {
    let ns = Scratch::new().unwrap();
    let (code, err) = run_in(&ns, &[], &["--iface", "lo", "--device", MAC, "--web.listen-address", "localhost"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("echo-agent: invalid value 'localhost' for '--web.listen-address <LISTEN>'"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn run_port_in_use() {
    let ns = Scratch::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let holder = spawn_in(&ns.name, move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let _ = hold_rx.recv();
    })
    .unwrap();
    let addr = rx.recv().unwrap().to_string();
    let got = run_in(&ns, &[], &["--iface", "lo", "--device", MAC, "--web.listen-address", &addr]);
    drop(hold_tx);
    holder.join().unwrap();
    assert_exit2(got, &format!("echo-agent: cannot listen on {addr}: Address already in use (os error 98)"));
}

#[test]
fn run_bad_telemetry_path() {
    let ns = Scratch::new().unwrap();
    assert_exit2(
        run_in(&ns, &[], &["--iface", "lo", "--device", MAC, "--web.telemetry-path", "metrics"]),
        "echo-agent: --web.telemetry-path must start with '/' and not be '/', got \"metrics\"",
    );
}

#[test]
fn run_without_privileges() {
    let ns = Scratch::new().unwrap();
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"];
    assert_exit2(
        run_in(&ns, &nobody, &["--iface", "lo", "--device", MAC]),
        "echo-agent: loading eBPF programs needs root, or CAP_BPF and CAP_NET_ADMIN",
    );
}

/// CAP_BPF and CAP_NET_ADMIN but not CAP_SYS_ADMIN, in a mount namespace where /sys/fs/bpf
/// is not bpffs: the agent cannot mount it and says so.
#[test]
fn run_bpffs_not_mountable() {
    let ns = Scratch::new().unwrap();
    let script = format!(
        "mount -t tmpfs none /sys/fs/bpf && exec nsenter --net=/var/run/netns/{} setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {BIN} run --state-dir /tmp/echo-cli-bpffs-{} --iface lo --device {MAC}",
        ns.name, ns.name
    );
    let out = std::process::Command::new("unshare").args(["-m", "sh", "-c", &script]).output().expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let _ = std::fs::remove_dir_all(format!("/tmp/echo-cli-bpffs-{}", ns.name));
    assert_exit2(
        (out.status.code().unwrap_or(-1), err),
        "echo-agent: bpffs is not mounted at /sys/fs/bpf and mounting it failed: Operation not permitted (os error 1)",
    );
}

/// A kernel older than 6.6 (here one that says it is 2.6.x: `setarch --uname-2.6`, which the
/// kernel version check reads through uname) has no TCX links: one line, before anything is
/// loaded.
#[test]
fn run_on_a_kernel_without_tcx() {
    let ns = Scratch::new().unwrap();
    let arch = std::env::consts::ARCH;
    let uname = Command::new("setarch").args([arch, "--uname-2.6", "uname", "-r"]).output().expect("setarch");
    let release = String::from_utf8_lossy(&uname.stdout).trim().to_string();
    let version: String = release.split(|c: char| !c.is_ascii_digit() && c != '.').next().unwrap().to_string();
    assert!(version.starts_with("2.6."), "{release}");
    let got = run_in(&ns, &["setarch", arch, "--uname-2.6"], &["--iface", "lo", "--device", MAC]);
    assert_exit2(got, &format!("echo-agent: Linux {version} has no TCX links, which the TC programs attach through: Linux 6.6 or later is needed"));
}

#[test]
fn run_driver_mode_without_native_xdp() {
    let ns = Scratch::new().unwrap();
    // Pins live in the one bpffs under the interface's name: none from before, none after.
    let detach = || Command::new(BIN).args(["detach", "--iface", "lo"]).output().expect("detach");
    detach();
    let got = run_in(&ns, &[], &["--iface", "lo", "--device", MAC, "--xdp-mode", "driver"]);
    detach();
    assert_exit2(got, "echo-agent: lo has no native XDP support (its driver refused driver mode): use --xdp-mode skb or auto");
}

#[test]
fn run_state_dir_not_creatable() {
    let ns = Scratch::new().unwrap();
    let out = ns.nsenter(BIN).args(["run", "--iface", "lo", "--device", MAC, "--state-dir", "/proc/echo-agent"]).output().unwrap();
    assert_exit2(
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string()),
        "echo-agent: cannot create state directory /proc/echo-agent: No such file or directory (os error 2)",
    );
}

#[test]
fn malformed_group() {
    for (arg, why) in [
        ("amazon.com", "expected SUFFIX=GROUP, got \"amazon.com\""),
        ("amazon..com=alexa", "\"amazon..com\" is not a DNS name suffix"),
        ("amazon.com=al exa", "group name must be letters, digits, '-', '_' or '.', got \"al exa\""),
    ] {
        let (code, err) = agent(&["replay", "--pcap", "/dev/null", "--device", MAC, "--group", arg]);
        assert_eq!((code, err.trim()), (2, format!("echo-agent: invalid value '{arg}' for '--group <SUFFIX=GROUP>': {why}").as_str()));
    }
}

#[test]
fn capture_of_another_link_type() {
    // A pcap header for LINKTYPE_LINUX_SLL (113): what `tcpdump -i any` writes.
    let path = std::env::temp_dir().join(format!("echo-sll-{}.pcap", std::process::id()));
    let header: Vec<u8> = [0xa1b2_c3d4u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4], 65_535u32.to_le_bytes(), 113u32.to_le_bytes()].concat();
    std::fs::write(&path, header).unwrap();
    let (code, err) = agent(&["replay", "--pcap", path.to_str().unwrap(), "--device", MAC]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        (code, err.trim()),
        (2, format!("echo-agent: {}: link type 113 is not supported (capture on the Ethernet interface, not 'any')", path.display()).as_str())
    );
}

#[test]
fn too_many_devices_and_markers() {
    let macs: Vec<String> = (0..17).map(|i| format!("02:ec:40:00:01:{i:02x}")).collect();
    let mut args = vec!["replay", "--pcap", "/dev/null"];
    macs.iter().for_each(|m| args.extend(["--device", m.as_str()]));
    assert_eq!(agent(&args), (2, "echo-agent: at most 16 devices can be monitored, 17 given\n".to_string()));
    let markers: Vec<String> = (0..65).map(|i| format!("198.51.100.{i}=command_start")).collect();
    let mut args = vec!["replay", "--pcap", "/dev/null", "--device", MAC];
    markers.iter().for_each(|m| args.extend(["--marker", m.as_str()]));
    assert_eq!(agent(&args), (2, "echo-agent: at most 64 marker addresses can be configured, 65 given\n".to_string()));
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("echo-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

const MARKERS: [&str; 4] = ["--marker", "192.0.2.1=command_start", "--marker", "192.0.2.2=command_end"];

#[test]
fn experiment_bad_plans() {
    let (code, err) = agent(&[&["experiment", "--plan", "/nonexistent/plan.toml", "--device", "echo"][..], &MARKERS].concat());
    assert_eq!((code, err.trim()), (2, "echo-agent: reading plan /nonexistent/plan.toml: No such file or directory (os error 2)"));
    let plan = temp_file("plan.toml", "repetitions = 2\n[[arms]]\nname = \"a\"\naudio = \"a.wav\"\nprefix_s = \"long\"\n");
    let (code, err) = agent(&[&["experiment", "--plan", plan.to_str().unwrap(), "--device", "echo"][..], &MARKERS].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with(&format!("echo-agent: plan {}: invalid type: string \"long\", expected f64", plan.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::write(&plan, "repetitions = 2\n[[arms]]\nname = \"a\"\naudio = \"a.wav\"\n").unwrap();
    let (code, err) = agent(&["experiment", "--plan", plan.to_str().unwrap(), "--device", "echo"]);
    assert_eq!((code, err.trim()), (2, "echo-agent: no --marker for command_start: the runner pings it"));
    let (code, err) = agent(&[&["experiment", "--plan", plan.to_str().unwrap(), "--device", "echo", "--api", "localhost:9977"][..], &MARKERS].concat());
    assert_eq!((code, err.trim()), (2, "echo-agent: --api \"localhost:9977\": expected http://HOST:PORT"));
    let _ = std::fs::remove_file(&plan);
}

#[test]
fn report_bad_inputs() {
    let (code, err) = agent(&["report", "--input", "/nonexistent/interactions.jsonl"]);
    assert_eq!((code, err.trim()), (2, "echo-agent: reading /nonexistent/interactions.jsonl: No such file or directory (os error 2)"));
    let junk = temp_file("junk.jsonl", "this is not a log\n");
    let (code, err) = agent(&["report", "--input", junk.to_str().unwrap()]);
    let _ = std::fs::remove_file(&junk);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim(), format!("echo-agent: {}: neither an interaction log (JSON lines) nor a replay report (JSON): no records in it", junk.display()));
}
