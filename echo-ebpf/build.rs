use which::which;

/// Rebuilds the eBPF programs when bpf-linker changes (it is not a cargo dependency).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().expect("path is UTF-8"));
}
