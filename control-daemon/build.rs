//! Builds the eBPF object (`dataplane-ebpf`) with the `debian` rustup toolchain
//! (rustc-web 1.96 + rust-web-src, see ../shared/TOOLCHAIN.md) and places it in
//! OUT_DIR, where `src/dataplane.rs` embeds it.
//!
//! Environment:
//! - `TAGWALL_EBPF_TOOLCHAIN`: rustup toolchain for the eBPF crate (default `debian`).
//! - `AYA_BUILD_SKIP=1`: skip the eBPF build (aya-build's switch; the embedded object
//!   is then empty and loading fails at run time with a clear error).
use std::{env, process::Command};

use aya_build::{Package, Toolchain};

const TOOLCHAIN_ENV: &str = "TAGWALL_EBPF_TOOLCHAIN";

fn main() {
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let toolchain = env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "debian".to_owned());

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
