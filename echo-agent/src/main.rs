use std::process::ExitCode;

use clap::Parser as _;
use echo_agent::{
    capture::CaptureError,
    cli::{Cli, Command, Format},
    loader::LoadError,
    replay,
};

/// Bad input (flags, files, privileges) exits with 2, other failures with 1; both print one
/// line, never a panic or a backtrace.
fn exit_code(e: &anyhow::Error) -> u8 {
    let bad_input = e.chain().any(|c| {
        c.downcast_ref::<CaptureError>().is_some()
            || matches!(c.downcast_ref::<LoadError>(), Some(LoadError::Privileges | LoadError::TooManyDevices(_)))
    });
    if bad_input { 2 } else { 1 }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay { pcap, devices, format } => {
            let report = replay::replay(&pcap, &devices)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&report)?),
                Format::Table => print!("{}", replay::table(&report)),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the first line of each cause (a verifier log stays out of it).
            let msg: Vec<String> = e.chain().map(|c| c.to_string().lines().next().unwrap_or("").to_string()).collect();
            eprintln!("echo-agent: {}", msg.join(": "));
            ExitCode::from(exit_code(&e))
        }
    }
}
