//! Builds the eBPF object (`dataplane-ebpf`) with the `debian` rustup toolchain
//! (rustc-web 1.96 + rust-web-src, see ../shared/TOOLCHAIN.md) and places it in
//! OUT_DIR, where `src/dataplane.rs` embeds it.
//!
//! Environment:
//! - `TAGWALL_EBPF_TOOLCHAIN`: rustup toolchain for the eBPF crate (default `debian`).
//! - `TAGWALL_EBPF_CPU`: BPF instruction set (default `v3`: 32-bit registers and jumps,
//!   Linux 5.1 and later; `v1`, `v2`, `v4` (Linux 6.6) or `generic`, what rustc asks for
//!   by default).
//! - `AYA_BUILD_SKIP=1`: skip the eBPF build (aya-build's switch; the embedded object
//!   is then empty and loading fails at run time with a clear error).
use std::{env, process::Command};

use aya_build::{Package, Toolchain};

const TOOLCHAIN_ENV: &str = "TAGWALL_EBPF_TOOLCHAIN";
const CPU_ENV: &str = "TAGWALL_EBPF_CPU";
/// BPF instruction sets LLVM can generate (`llc -march=bpf -mcpu=help`, without
/// `probe`, which would ask the build machine's kernel, not the target's).
const CPUS: [&str; 5] = ["v3", "v1", "v2", "v4", "generic"];

fn main() {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let toolchain = env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "debian".to_owned());
    println!("cargo:rerun-if-env-changed={CPU_ENV}");
    let cpu = env::var(CPU_ENV).unwrap_or_else(|_| CPUS[0].to_owned());
    assert!(
        CPUS.contains(&cpu.as_str()),
        "{CPU_ENV}={cpu:?} is not a BPF instruction set LLVM knows; use one of {CPUS:?}"
    );
    // For the test that checks the object was built for it.
    println!("cargo:rustc-env=TAGWALL_EBPF_CPU_BUILT={cpu}");

    let out_dir = std::path::PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Keep `include_bytes!` compiling; the loader reports the empty object.
        std::fs::write(out_dir.join("tagwall-dataplane"), []).expect("write stub object");
    } else {
        let ok = Command::new("rustup")
            .args(["run", &toolchain, "rustc", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "the `{toolchain}` rustup toolchain is missing: run `cargo xtask setup` \
             (it installs rustc-web + rust-web-src and runs `rustup toolchain link debian /usr`)"
        );
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .expect("cargo metadata");
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "dataplane-ebpf")
        .expect("dataplane-ebpf package in the workspace");
    // aya-build watches the eBPF crate's own directory only; the crates it takes by
    // path (`tagwall-common`: map layouts, constants, the trie's arithmetic) change
    // the object too, and without this a change there alone left the old object
    // embedded.
    for dep in &ebpf.dependencies {
        if let Some(path) = &dep.path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let root_dir = ebpf
        .manifest_path
        .parent()
        .expect("manifest dir")
        .as_str()
        .to_owned();
    // aya-build passes `-Z build-std=core` to a non-nightly rustc only when it sees
    // RUSTC_BOOTSTRAP=1 in its own environment. Set it here, in this build script
    // only: userspace crates probe for nightly features when it is set globally.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    // The BPF instruction set to generate: rustc hands bpf-linker `--cpu` from
    // `-C target-cpu`, and aya-build fixes rustc's flags (CARGO_ENCODED_RUSTFLAGS), so
    // it comes through cargo's profile rustflags, which are added to those (unstable,
    // allowed by RUSTC_BOOTSTRAP above). Build scripts and proc macros of the eBPF
    // build run on the host, where `v3` is no CPU: their override has no flags.
    // SAFETY: as above.
    unsafe {
        env::set_var("CARGO_UNSTABLE_PROFILE_RUSTFLAGS", "true");
        env::set_var(
            "CARGO_PROFILE_RELEASE_RUSTFLAGS",
            format!("-C target-cpu={cpu}"),
        );
        env::set_var("CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_RUSTFLAGS", "");
    }
    aya_build::build_ebpf(
        [Package {
            name: "dataplane-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .expect("building the eBPF datapath (dataplane-ebpf) failed; see the warnings above");
}
