//! Builds the XDP program (`ebpf/portcullis-ebpf`) with the BPF toolchain
//! that `scripts/setup.sh` installs (Debian's rustc with a BPF core, and
//! bpf-linker in `.tools/bin`), and hands the object to the loader.
//!
//! Without that toolchain the dataplane still builds — laptops and CI jobs
//! without root need no BPF tooling — and `portcullisctl filter attach`
//! explains what to run instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.ancestors().nth(2).expect("dataplane/xdp/ is two levels down").to_path_buf();
    let ebpf = root.join("ebpf/portcullis-ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("portcullis-xdp.o");
    for path in ["ebpf/portcullis-ebpf/src", "ebpf/portcullis-ebpf/Cargo.toml", "ebpf/common/src", ".tools/bin"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    for var in ["PORTCULLIS_BPF_RUSTC", "PORTCULLIS_BPF_CARGO", "PORTCULLIS_BPF_LINKER_DIR", "PORTCULLIS_SKIP_EBPF"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let status = if std::env::var_os("PORTCULLIS_SKIP_EBPF").is_some() {
        Err("PORTCULLIS_SKIP_EBPF is set".to_string())
    } else {
        build(&root, &ebpf, &out)
    };
    match status {
        Ok(()) => println!("cargo:rustc-env=PORTCULLIS_XDP_BUILT=1"),
        Err(why) => {
            println!("cargo:warning=the XDP program was not built ({why}); run ./scripts/setup.sh to install the BPF toolchain");
            std::fs::write(&out, b"").expect("write placeholder");
            println!("cargo:rustc-env=PORTCULLIS_XDP_BUILT=0");
            println!("cargo:rustc-env=PORTCULLIS_XDP_MISSING={why}");
        }
    }
}

fn build(root: &Path, ebpf: &Path, out: &Path) -> Result<(), String> {
    let rustc = std::env::var("PORTCULLIS_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = std::env::var("PORTCULLIS_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let linker_dir =
        std::env::var("PORTCULLIS_BPF_LINKER_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join(".tools/bin"));
    for (what, path) in [("BPF rustc", PathBuf::from(&rustc)), ("cargo", cargo.clone().into())] {
        if !path.exists() {
            return Err(format!("{what} {} is missing", path.display()));
        }
    }
    if !linker_dir.join("bpf-linker").exists() {
        return Err(format!("bpf-linker is missing from {}", linker_dir.display()));
    }
    let path = format!("{}:/usr/bin:/bin", linker_dir.display());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let target_dir = ebpf.join("target");
    // A clean environment: nothing of the outer cargo leaks into the BPF build.
    let output = Command::new(&cargo)
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("RUSTC", &rustc)
        .env("RUSTDOC", PathBuf::from(&rustc).with_file_name("rustdoc"))
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--release", "--locked", "--quiet"])
        .current_dir(ebpf)
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(format!(
            "building ebpf/portcullis-ebpf failed: {}",
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release/portcullis-xdp");
    std::fs::copy(&object, out).map_err(|e| format!("cannot copy {}: {e}", object.display()))?;
    Ok(())
}
