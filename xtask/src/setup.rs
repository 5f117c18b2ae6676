//! `cargo xtask setup`: installs what building and testing need, idempotently.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Debian packages: LLVM 22 for bpf-linker, tshark (ground truth), tcpdump (captures),
/// iproute2 (namespaces), openssl (the second real TLS stack), ethtool, util-linux (nsenter,
/// setpriv), prometheus (promtool checks the exposition format; deploy/ is verified against a
/// real Prometheus), systemd (systemd-analyze verifies the unit), g++ (libFuzzer, for the fuzz
/// targets), libfaketime (a wall-clock step under the agent's feet, in a test), python3-scipy
/// (the experiment report's statistics recomputed independently), chromium (the HTML report
/// rendered headless).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "tshark",
    "tcpdump",
    "iproute2",
    "openssl",
    "ethtool",
    "util-linux",
    "prometheus",
    "systemd",
    "g++",
    "libfaketime",
    "python3-scipy",
    "chromium",
];
const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg]).is_some_and(|s| s.contains("install ok installed"))
}

/// Runs `cmd`, failing on a non-zero exit.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn install() -> Result<Vec<String>> {
    let mut done = Vec::new();
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
        run_checked(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        done.push(format!("apt-get installed {}", missing.join(" ")));
    }
    let components = output("rustup", &["component", "list", "--installed"]).unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run_checked(Command::new("rustup").args(["component", "add", "rust-src"]))?;
        done.push("rustup added rust-src".into());
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
        run_checked(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", &format!("~{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path))?;
        done.push(format!("cargo installed bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"));
    }
    if output("cargo", &["fuzz", "--version"]).is_none() {
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
        done.push("cargo installed cargo-fuzz".into());
    }
    Ok(done)
}

pub fn run() -> Result<()> {
    let done = install()?;
    if done.is_empty() {
        eprintln!("setup: all prerequisites present");
    } else {
        for d in done {
            eprintln!("setup: {d}");
        }
    }
    Ok(())
}
