//! `cargo xtask setup | build | test | fuzz | soak | bench | demo`.

use std::process::{Command, ExitCode};

use anyhow::{bail, Result};
use setup::run_checked;
use clap::{Parser, Subcommand};

mod setup;

#[derive(Parser)]
#[command(about = "echo-agent's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (idempotent; a second run takes seconds).
    Setup,
    /// Build the eBPF programs and echo-agent (release).
    Build,
    /// Run every test: unit, test_run fixtures, namespace integration and differential tests,
    /// then (when no test filter is given) each fuzz target for a few seconds and a 3-minute
    /// soak.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks against baselines measured in the same run; writes target/bench/report.md (--quick: report-quick.md).
    Bench {
        /// A shorter run (under 3 minutes).
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz one target (see fuzz/) for longer than the test run does.
    Fuzz {
        /// sni, dns, capture, log, flags or api.
        target: String,
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// The demo household time-compressed with connection churn for N minutes: agent RSS,
    /// descriptors, threads and map entries must stay flat (report in target/soak/report.md).
    Soak {
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
    },
    /// Run the simulated household: the agent live on a simulated hotspot, a simulated Echo.
    Demo {
        /// Seconds to run (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Where the agent's metrics and API are forwarded to on this machine.
        #[arg(long, default_value = "127.0.0.1:9977")]
        listen: std::net::SocketAddr,
        /// Instead of the household: a short gap experiment (`echo-agent experiment` against the
        /// listening simulated Echo) and its HTML report in target/experiment/.
        #[arg(long)]
        experiment: bool,
    },
}

/// The repository root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// `cargo` with what the eBPF build needs: RUSTC_BOOTSTRAP for -Z build-std on stable.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("RUSTC_BOOTSTRAP", "1");
    c
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root: it loads eBPF programs and creates network namespaces");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Build => setup::run().and_then(|()| {
            let mut c = cargo();
            c.args(["build", "--release", "-p", "echo-agent"]);
            run_checked(&mut c)
        }),
        Cmd::Test { args } => setup::run().and_then(|()| require_root("cargo xtask test")).and_then(|()| {
            xtask::netns::remove_stale();
            let mut c = cargo();
            // echo-ebpf builds only for the BPF target (echo-agent's build script builds it).
            let filtered = !args.is_empty();
            c.args(["test", "--workspace", "--exclude", "echo-ebpf", "--release", "--"]).args(args);
            run_checked(&mut c)?;
            if !filtered {
                let root = workspace_root();
                for t in xtask::fuzz::TARGETS {
                    xtask::fuzz::run(&root, t, xtask::fuzz::TEST_SECONDS)?;
                }
                xtask::soak::run_and_report(&root, xtask::soak::TEST_MINUTES)?;
            }
            Ok(())
        }),
        Cmd::Soak { minutes } => setup::run().and_then(|()| require_root("cargo xtask soak")).and_then(|()| {
            let mut c = cargo();
            c.args(["build", "--release", "-p", "echo-agent"]);
            run_checked(&mut c)?;
            xtask::netns::remove_stale();
            xtask::soak::run_and_report(&workspace_root(), minutes)
        }),
        Cmd::Fuzz { target, seconds } => setup::run().and_then(|()| xtask::fuzz::run(&workspace_root(), &target, seconds)),
        Cmd::Bench { quick } => setup::run().and_then(|()| require_root("cargo xtask bench")).and_then(|()| {
            xtask::netns::remove_stale();
            let mut c = cargo();
            c.args(["bench", "-p", "echo-agent", "--bench", "perf", "--"]);
            if quick {
                c.arg("--quick");
            }
            run_checked(&mut c)
        }),
        Cmd::Demo { duration, listen, experiment } => setup::run().and_then(|()| require_root("cargo xtask demo")).and_then(|()| {
            let mut c = cargo();
            c.args(["build", "--release", "-p", "echo-agent"]);
            run_checked(&mut c)?;
            xtask::netns::remove_stale();
            if experiment {
                let root = workspace_root();
                return xtask::lab::demo(&root.join("target/release/echo-agent"), &root.join("target/experiment")).map(|_| ());
            }
            xtask::demo::run(xtask::demo::Options { duration: duration.map(std::time::Duration::from_secs), listen })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
