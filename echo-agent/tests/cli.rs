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
    assert_eq!(err.trim(), "echo-agent: loading eBPF programs needs root or CAP_BPF and CAP_NET_ADMIN");
}
