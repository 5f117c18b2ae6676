use std::process::ExitCode;

use anyhow::Context as _;

use clap::Parser as _;
use echo_agent::{
    attach::AttachError,
    capture::CaptureError,
    cli::{Cli, Command, Format},
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
            || matches!(c.downcast_ref::<PinError>(), Some(PinError::Mount(_)))
            || matches!(c.downcast_ref::<AttachError>(), Some(AttachError::NoSuchInterface(_) | AttachError::Privileges | AttachError::NoDriverMode(_)))
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
        Command::Replay { pcap, devices, format, markers, arms, muted, activation } => {
            let muted = muted.iter().map(|s| (s.from, s.to)).collect();
            let analysis = echo_agent::analysis::Config { markers, arms, params: activation.params(), groups: activation.groups(), muted };
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
