//! Test support shared by echo-agent's tests, the demo and the benchmarks: hand-built frames,
//! network-namespace topologies, real TLS peers, captures and Wireshark ground truth.
pub mod agent;
pub mod capture;
pub mod demo;
pub mod dns;
pub mod echo_sim;
pub mod fuzz;
pub mod http;
pub mod lab;
pub mod listening;
pub mod netns;
pub mod packets;
pub mod ping;
pub mod soak;
pub mod tls;
pub mod tshark;
