//! Rebuild when the bpf-linker binary changes (it is an undeclared build tool of this
//! crate); fail with a clear message when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!(
            "bpf-linker not found ({err}): run `cargo xtask setup` (see README.md) to install it"
        ),
    }
}
