// This file exists so that echo-agent can build-depend on echo-ebpf (its build script compiles
// the programs for the BPF target). The programs themselves live in main.rs and its modules.
#![no_std]
