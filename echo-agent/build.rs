use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Compiles echo-ebpf for the BPF target into OUT_DIR (embedded by `loader.rs`). Needs
/// RUSTC_BOOTSTRAP=1 on a stable toolchain, rust-src and bpf-linker: `cargo xtask build`
/// provides all three.
/// Under `cargo fuzz` (`--cfg fuzzing`) the fuzz targets exercise user-space parsers only, and
/// the sanitizer flags in RUSTFLAGS must not reach the BPF build: an empty object stands in.
fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("echo-ebpf"), [])?;
        return Ok(());
    }
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
