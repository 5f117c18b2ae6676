use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Compiles echo-ebpf for the BPF target into OUT_DIR (embedded by `loader.rs`). Needs
/// RUSTC_BOOTSTRAP=1 on a stable toolchain, rust-src and bpf-linker: `cargo xtask build`
/// provides all three.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "echo-ebpf")
        .ok_or_else(|| anyhow!("echo-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::Custom("stable"))
}
