//! Test support shared by echo-agent's tests, the demo and the benchmarks: hand-built frames,
//! network-namespace topologies, real TLS peers, and Wireshark ground truth.
pub mod packets;
