use std::process::ExitCode;

use anyhow::Context as _;

use clap::Parser as _;
use echo_agent::{
    attach::AttachError,
    capture::CaptureError,
    cli::{Cli, Command, ExperimentArgs, Format, ReportFormat},
    loader::LoadError,
    pins::{self, PinError},
    replay, run,
};

/// Bad input (flags, files, interface, privileges, environment) exits with 2, other failures
/// with 1; both print one line, never a panic or a backtrace.
fn exit_code(e: &anyhow::Error) -> u8 {
    let bad_input = e.chain().any(|c| {
        c.downcast_ref::<CaptureError>().is_some()
            || c.downcast_ref::<run::RunError>().is_some()
            || c.downcast_ref::<echo_agent::store::StoreError>().is_some()
            || c.downcast_ref::<echo_agent::web_config::WebConfigError>().is_some()
            || c.downcast_ref::<echo_agent::experiment::ExperimentError>().is_some()
            || c.downcast_ref::<echo_agent::report::ReportError>().is_some()
            || matches!(c.downcast_ref::<PinError>(), Some(PinError::Mount(_)))
            || matches!(c.downcast_ref::<AttachError>(), Some(AttachError::NoSuchInterface(_) | AttachError::Privileges | AttachError::NoDriverMode(_) | AttachError::NoTcx(_)))
            || matches!(
                c.downcast_ref::<LoadError>(),
                Some(LoadError::Privileges | LoadError::TooManyDevices(_) | LoadError::TooManyMarkers(_) | LoadError::Pins(PinError::Mount(_)))
            )
    });
    if bad_input { 2 } else { 1 }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args)?,
        Command::WebPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on standard input");
            println!("{}", bcrypt::hash(password, echo_agent::web_config::PASSWORD_COST)?);
        }
        Command::Detach { iface } => {
            let removed = pins::remove_all(&iface).map_err(|e| anyhow::anyhow!("removing {}: {e}", pins::dir_for(&iface).display()))?;
            if removed.is_empty() {
                println!("nothing pinned for {iface}");
            } else {
                println!("removed {} from {}", removed.join(", "), pins::dir_for(&iface).display());
            }
        }
        Command::Experiment(a) => {
            let ExperimentArgs { plan, device, api, markers, state_dir, restart } = a;
            let frames = echo_agent::experiment::run(echo_agent::experiment::Options { plan, device, api, markers, state_dir, restart })?;
            print!("{}", echo_agent::report::table(&echo_agent::report::build(&frames, "gap_s")));
        }
        Command::Report { input, format, output, device, since, class_by } => {
            use echo_agent::report;
            let frames: Vec<_> = report::load_frames(&input)?.into_iter().filter(|f| device.as_ref().is_none_or(|d| &f.device == d) && f.start >= since).collect();
            let r = report::build(&frames, &class_by);
            let text = match format {
                ReportFormat::Table => report::table(&r),
                ReportFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
                ReportFormat::Csv => report::csv(&r),
                ReportFormat::Html => echo_agent::plots::html(&r, &format!("echo-agent report: {}", input.display())).map_err(anyhow::Error::msg)?,
            };
            match output {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        Command::Replay { pcap, devices, format, markers, arms, muted, activation } => {
            let muted = muted.iter().map(|s| (s.from, s.to)).collect();
            let analysis = activation.config(markers, arms, muted);
            let report = replay::replay(&pcap, &devices, &analysis)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&report)?),
                Format::Table => print!("{}", replay::table(&report)),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first line ("error: invalid value ... for '--device <MAC>': why"), no usage.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ");
            eprintln!("echo-agent: {first}");
            return ExitCode::from(2);
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the first line of each cause (a verifier log stays out of it).
            let msg: Vec<String> = e.chain().map(|c| c.to_string().lines().next().unwrap_or("").to_string()).collect();
            eprintln!("echo-agent: {}", msg.join(": "));
            ExitCode::from(exit_code(&e))
        }
    }
}
