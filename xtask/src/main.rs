//! `cargo xtask <task>`: setup, build, test, demo and bench for tagwall.
//!
//! Everything here is plain commands run in order, so a task can be read as the
//! recipe it is. `setup` is idempotent: it installs only what is missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Debian packages: the Rust eBPF toolchain (see ../shared/TOOLCHAIN.md) and the
/// tools tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    // eBPF build: rustc/cargo 1.96 with matching library sources for build-std, LLVM 22
    // for bpf-linker, bpftool for inspection.
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "bpftool",
    // Lab and tests: namespaces, packet tools, DNS servers, firewalls to compare with.
    "iproute2",
    "xdp-tools",
    "netsniff-ng",
    "nftables",
    "iptables",
    "ipset",
    "dnsmasq",
    "unbound",
    "bind9-dnsutils",
    "python3-scapy",
    "tcpdump",
    "tshark",
    "iperf3",
    "hping3",
    "socat",
    "curl",
    // Profiling for benchmarks.
    "linux-perf",
    "valgrind",
    "hyperfine",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "debian";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tagwall developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything a fresh machine needs (apt packages, the `debian` rustup
    /// toolchain link, bpf-linker on LLVM 22). Idempotent; needs root.
    Setup,
    /// Build the workspace (eBPF object included, through control-daemon's build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test, the kernel ones included (root: namespaces, BPF).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// A lab of namespaces with tagwall on the gateway: allowed and denied traffic,
    /// counters, cleanup. Needs root.
    Demo {
        /// Policy file for the gateway; default: the demo's embedded lab policy.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Benchmarks (release build): per-packet cost against an XDP_PASS floor measured
    /// in the same run, control-plane costs. Writes BENCHMARKS.md. Needs root.
    Bench {
        /// Report file.
        #[arg(long, default_value = "BENCHMARKS.md")]
        output: PathBuf,
        /// Extra arguments for the bench binary (e.g. `--repeat 2000000 --runs 7`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup(),
        Task::Build { release } => {
            let mut c = cargo(&root);
            c.args(["build", "--workspace"]);
            if release {
                c.arg("--release");
            }
            run(&mut c)
        }
        Task::Test { args } => {
            require_root("test")?;
            let mut c = cargo(&root);
            c.args(["test", "--workspace", "--no-fail-fast"]);
            if !args.is_empty() {
                c.arg("--").args(args);
            }
            run(&mut c)
        }
        Task::Demo { policy } => {
            require_root("demo")?;
            let mut c = cargo(&root);
            c.args([
                "run",
                "--quiet",
                "-p",
                "tagwall-tests",
                "--bin",
                "demo",
                "--",
            ]);
            if let Some(p) = policy {
                c.arg("--policy")
                    .arg(std::path::absolute(&p).with_context(|| format!("{}", p.display()))?);
            }
            run(&mut c)
        }
        Task::Bench { output, args } => {
            require_root("bench")?;
            let mut line = String::from("cargo xtask bench");
            if output != Path::new("BENCHMARKS.md") {
                line = format!("{line} --output {}", output.display());
            }
            if !args.is_empty() {
                line = format!("{line} -- {}", args.join(" "));
            }
            let mut c = cargo(&root);
            c.args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "tagwall-tests",
                "--bin",
                "bench",
                "--",
            ])
            .arg("--output")
            .arg(root.join(output))
            .args(args)
            .env("TAGWALL_BENCH_CMD", line);
            run(&mut c)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

fn run(c: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {c:?}");
    let st = c.status().with_context(|| format!("spawning {c:?}"))?;
    if !st.success() {
        bail!("{c:?} failed ({st})");
    }
    Ok(())
}

fn output(c: &mut Command) -> Option<String> {
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn require_root(task: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` needs root (BPF loading, network namespaces): run it as root or with sudo -E"
        );
    }
    Ok(())
}

fn setup() -> anyhow::Result<()> {
    require_root("setup")?;
    // 1. apt packages, only the missing ones.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages: all {} present", APT_PACKAGES.len());
    } else {
        eprintln!("xtask: apt packages missing: {}", missing.join(" "));
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing))?;
    }
    // 2. The `debian` rustup toolchain: Debian's rustc-web, whose library sources
    //    rust-web-src provides for -Z build-std=core.
    let linked = output(Command::new("rustup").args(["toolchain", "list"])).is_some_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().next() == Some(EBPF_TOOLCHAIN))
    });
    if linked {
        eprintln!("xtask: rustup toolchain {EBPF_TOOLCHAIN}: linked");
    } else {
        run(Command::new("rustup").args(["toolchain", "link", EBPF_TOOLCHAIN, "/usr"]))?;
    }
    let v = output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"]))
        .context("`rustup run debian rustc --version` failed after linking")?;
    if !v.contains("1.96") {
        bail!(
            "toolchain {EBPF_TOOLCHAIN} is {v:?}; expected Debian's rustc-web 1.96 (rust-web-src must match it)"
        );
    }
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "rust-web-src sources missing at /usr/lib/rustlib/src/rust/library: reinstall rust-web-src"
        );
    }
    // 3. bpf-linker on LLVM 22 (the same libLLVM as rustc-web).
    let have = output(Command::new("bpf-linker").arg("--version"));
    if have
        .as_deref()
        .is_some_and(|s| s.contains(BPF_LINKER_VERSION))
    {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION}: installed");
    } else {
        eprintln!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (found: {})",
            have.as_deref().map_or("none", str::trim)
        );
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ]),
        )?;
    }
    eprintln!("xtask: setup complete");
    Ok(())
}
