use which::which;

/// Rebuilds the eBPF programs when bpf-linker changes (it is not a cargo dependency), and
/// tells bpf-linker not to pass `--bpf-expand-memcpy-in-order` to LLVM: with it, LLVM's BPF
/// backend expands no memset inline at all (it sets the inline store limits to zero and has
/// a target expander for memcpy only), so every zeroed struct or buffer became a call to one
/// shared `memset` function. The verifier checks such a function once per call site with
/// stack and map pointers at different offsets, which it refuses without CAP_PERFMON
/// ("pointer arithmetic with it prohibited for !root"). Inline stores also cost fewer
/// instructions than a byte loop.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().expect("path is UTF-8"));
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
