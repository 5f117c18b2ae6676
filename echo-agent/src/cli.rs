//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::device::Mac;

#[derive(Parser, Debug)]
#[command(name = "echo-agent", version, about = "What does my smart speaker upload, and when?")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pcap/pcapng capture through the XDP program (BPF_PROG_TEST_RUN) and report.
    Replay {
        /// Capture file of Ethernet frames (pcap or pcapng).
        #[arg(long)]
        pcap: PathBuf,
        /// MAC address of a monitored device; repeat for several.
        #[arg(long = "device", required = true)]
        devices: Vec<Mac>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Json,
    Table,
}
