//! echo-agent: user space of the echo eBPF programs.
pub mod activation;
pub mod api;
pub mod attach;
pub mod capture;
pub mod cli;
pub mod counters;
pub mod device;
pub mod events;
pub mod exporter;
pub mod frames;
pub mod gso;
pub mod loader;
pub mod markers;
pub mod netlink;
pub mod pins;
pub mod replay;
pub mod run;
