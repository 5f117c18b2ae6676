//! Command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    attach::XdpMode,
    device::{DeviceSpec, Mac},
    markers::MarkerSpec,
};

#[derive(Parser, Debug)]
#[command(name = "echo-agent", version, about = "What does my smart speaker upload, and when?")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to the hotspot interface, count, and serve Prometheus metrics.
    Run(RunArgs),
    /// Remove everything an agent left on an interface (links, so the programs detach, and
    /// pinned maps).
    Detach {
        #[arg(long)]
        iface: String,
    },
    /// Read a password on standard input and print its bcrypt hash, for basic_auth_users in
    /// --web.config.file.
    WebPassword,
    /// Run a pcap/pcapng capture through the programs (BPF_PROG_TEST_RUN) and report.
    Replay {
        /// Capture file of Ethernet frames (pcap or pcapng).
        #[arg(long)]
        pcap: PathBuf,
        /// MAC address of a monitored device; repeat for several.
        #[arg(long = "device", required = true)]
        devices: Vec<Mac>,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// A marker address and its role, IP=ROLE; with markers the report adds frames.
        #[arg(long = "marker", value_name = "IP=ROLE")]
        markers: Vec<MarkerSpec>,
        /// Arm names assigned to frames in rotation, e.g. I_1,I_2.
        #[arg(long, value_delimiter = ',')]
        arms: Vec<String>,
        /// The microphone was muted from FROM to TO (epoch seconds; either may be left out,
        /// `..` is the whole capture). Repeat for several spans.
        #[arg(long = "muted", value_name = "FROM..TO")]
        muted: Vec<MutedSpan>,
        #[command(flatten)]
        activation: ActivationArgs,
    },
    /// Run an experiment plan's trials against a running agent: marker pings, the player,
    /// the device's response (see the plan format in the README).
    Experiment(ExperimentArgs),
    /// The research report of an experiment, from an interaction log or a replay JSON.
    Report {
        /// The agent's interaction log (STATE_DIR/interactions.jsonl) or `replay` JSON output.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Only frames of this device.
        #[arg(long)]
        device: Option<String>,
        /// Only frames that started at or after this time (epoch seconds).
        #[arg(long, default_value_t = 0.0)]
        since: f64,
        /// The arm parameter responses are classified by.
        #[arg(long, default_value = "gap_s")]
        class_by: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// The plan (TOML): arms, repetitions, reset pause, interleaving, player, response rule.
    #[arg(long)]
    pub plan: PathBuf,
    /// The device under test, by its name in the agent (`--device MAC=NAME`).
    #[arg(long)]
    pub device: String,
    /// The running agent's API.
    #[arg(long, default_value = "http://127.0.0.1:9977")]
    pub api: String,
    /// A marker address and its role, IP=ROLE, as given to the agent; command_start and
    /// command_end are needed, response_start and response_end are pinged when given.
    #[arg(long = "marker", value_name = "IP=ROLE")]
    pub markers: Vec<MarkerSpec>,
    /// Where progress is saved (experiment-PLAN.json), so an interrupted run resumes.
    #[arg(long, default_value = "/var/lib/echo-agent")]
    pub state_dir: PathBuf,
    /// Start from the first trial, whatever progress was saved.
    #[arg(long)]
    pub restart: bool,
}

/// Analysis parameters shared by `run` and `replay`: activation windows (see `activation`)
/// and destination groups (see `names`).
#[derive(clap::Args, Debug, Clone)]
pub struct ActivationArgs {
    /// App-data upload bytes within --activation-window that open an interaction.
    #[arg(long, default_value_t = 12_000)]
    pub activation_bytes: u64,
    /// Seconds over which --activation-bytes must be reached.
    #[arg(long, default_value_t = 1.0)]
    pub activation_window: f64,
    /// Seconds without app-data upload that close an interaction.
    #[arg(long, default_value_t = 2.0)]
    pub idle_gap: f64,
    /// Largest single-record upload (payload bytes) outside interactions that can be a
    /// heartbeat.
    #[arg(long, default_value_t = 256)]
    pub heartbeat_max_bytes: u64,
    /// Seconds: each heartbeat size may go up at most once per this interval; more is
    /// unexpected upload.
    #[arg(long, default_value_t = 10.0)]
    pub heartbeat_min_interval: f64,
    /// Destinations whose name (SNI or DNS) is SUFFIX or ends in .SUFFIX form GROUP, so the
    /// top destination of interactions and frames follows a service across its addresses,
    /// e.g. amazon.com=alexa. Repeat for several; the longest suffix wins.
    #[arg(long = "group", value_name = "SUFFIX=GROUP", value_parser = crate::names::parse_group)]
    pub groups: Vec<(String, String)>,
    /// Seconds a marker-framed trial waits for response_start after command_end (else: no
    /// response), and for response_end after response_start.
    #[arg(long, default_value_t = crate::analysis::DEFAULT_RESPONSE_TIMEOUT.as_secs_f64())]
    pub response_timeout: f64,
}

impl ActivationArgs {
    pub fn params(&self) -> crate::activation::Params {
        let d = |s: f64| std::time::Duration::from_secs_f64(s.max(0.0));
        crate::activation::Params {
            activation_bytes: self.activation_bytes,
            activation_window: d(self.activation_window),
            idle_gap: d(self.idle_gap),
            heartbeat: crate::heartbeats::HeartbeatParams {
                max_bytes: self.heartbeat_max_bytes,
                min_interval: d(self.heartbeat_min_interval),
            },
        }
    }

    /// The analysis configuration these flags and the given markers, arms and muted spans make.
    pub fn config(&self, markers: Vec<MarkerSpec>, arms: Vec<String>, muted: Vec<(f64, f64)>) -> crate::analysis::Config {
        let response_timeout = std::time::Duration::from_secs_f64(self.response_timeout.max(0.0));
        crate::analysis::Config { markers, arms, params: self.params(), groups: self.groups(), muted, response_timeout }
    }

    pub fn groups(&self) -> crate::names::Groups {
        crate::names::Groups::new(self.groups.clone())
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The hotspot's interface towards the devices (e.g. wlan0, or the bridge port).
    #[arg(long)]
    pub iface: String,
    /// A device to monitor, MAC[=NAME]; NAME labels its metrics. Repeat for several.
    #[arg(long = "device", required = true, value_name = "MAC[=NAME]")]
    pub devices: Vec<DeviceSpec>,
    /// A marker address and its role, IP=ROLE (command_start, command_end, response_start,
    /// response_end): echo requests to it mark time. Repeat for several.
    #[arg(long = "marker", value_name = "IP=ROLE")]
    pub markers: Vec<MarkerSpec>,
    /// Arm names assigned to marker-framed trials in rotation, e.g. I_1,I_2.
    #[arg(long, value_delimiter = ',')]
    pub arms: Vec<String>,
    #[command(flatten)]
    pub activation: ActivationArgs,
    /// Where metrics and the API listen. Loopback by default; see the README to expose it.
    #[arg(long = "web.listen-address", default_value = "127.0.0.1:9977")]
    pub listen: SocketAddr,
    #[arg(long = "web.telemetry-path", default_value = "/metrics")]
    pub telemetry_path: String,
    /// TLS and basic authentication for metrics and API, in the Prometheus exporter-toolkit
    /// format (tls_server_config: cert_file, key_file, min_version; basic_auth_users: bcrypt).
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Records of each kind (interactions, frames, unexpected runs) the API keeps in memory;
    /// the log on disk keeps all. About 1 KiB per interaction and its frame.
    #[arg(long, default_value_t = crate::live::DEFAULT_HISTORY)]
    pub api_history: usize,
    /// Durable state: the interaction log (interactions.jsonl).
    #[arg(long, default_value = "/var/lib/echo-agent")]
    pub state_dir: PathBuf,
    /// Leave the programs attached and counting when the agent exits.
    #[arg(long)]
    pub keep_attached: bool,
    /// Per device, destinations exported by name; the rest are summed into "other".
    #[arg(long, default_value_t = 50)]
    pub max_destinations: usize,
    /// Turn on the kernel's BPF run-time statistics while the agent runs (costs two clock
    /// reads per packet) for echo_bpf_run_seconds_total and echo_bpf_runs_total.
    #[arg(long)]
    pub bpf_stats: bool,
}

/// A span of time the microphone was muted, in epoch seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MutedSpan {
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed span {0:?}: expected FROM..TO in epoch seconds, either may be left out")]
pub struct SpanError(String);

impl std::str::FromStr for MutedSpan {
    type Err = SpanError;
    fn from_str(s: &str) -> Result<Self, SpanError> {
        let err = || SpanError(s.to_string());
        let (a, b) = s.split_once("..").ok_or_else(err)?;
        let end = |x: &str, open: f64| if x.is_empty() { Ok(open) } else { x.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(err) };
        let span = MutedSpan { from: end(a, f64::NEG_INFINITY)?, to: end(b, f64::INFINITY)? };
        if span.from > span.to {
            return Err(err());
        }
        Ok(span)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
    Html,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Json,
    Table,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muted_spans() {
        assert_eq!("10.5..20".parse(), Ok(MutedSpan { from: 10.5, to: 20.0 }));
        assert_eq!("..".parse(), Ok(MutedSpan { from: f64::NEG_INFINITY, to: f64::INFINITY }));
        assert_eq!("5..".parse::<MutedSpan>().unwrap().to, f64::INFINITY);
        for bad in ["", "5", "20..10", "a..b", "NaN..1"] {
            assert!(bad.parse::<MutedSpan>().is_err(), "{bad}");
        }
    }
}
