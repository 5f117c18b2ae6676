//! echo-agent: user space of the echo eBPF programs.
pub mod attach;
pub mod capture;
pub mod cli;
pub mod counters;
pub mod device;
pub mod gso;
pub mod loader;
pub mod pins;
pub mod replay;
