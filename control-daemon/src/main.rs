//! `tagwall`: eBPF/XDP egress enforcement for locked-down Azure ML networks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tagwall::cli;

#[derive(Parser)]
#[command(
    name = "tagwall",
    version,
    about = "eBPF/XDP firewall for Azure ML network requirements"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `tagwall=debug`.
    #[arg(long, global = true, env = "TAGWALL_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the datapath, apply the policy, attach to an interface, run until signalled.
    Run(cli::run::Args),
    /// Print the counters of a running datapath.
    Counters(cli::counters::Args),
    /// Report per requirement and rule: traffic, drops, top denied, coverage,
    /// suggested rules; totals and changes since the previous report.
    Report(cli::report::Args),
    /// Check the config again and make the running daemon switch to it atomically.
    Reload(cli::lifecycle::ReloadArgs),
    /// Stop the daemon and remove the datapath from the interface(s).
    Detach(cli::lifecycle::DetachArgs),
    /// Show what DNS (resolver/proxy) has allowed: names, addresses, rules, expiry.
    Dns(cli::dns::Args),
    /// Build the effective policy of a config and print a summary (no kernel needed).
    Compile(cli::policy::CompileArgs),
    /// Say whether an address/port is allowed by a config, and why.
    Explain(cli::policy::ExplainArgs),
    /// Export the compiled policy (nftables ruleset).
    Export(cli::policy::ExportArgs),
    /// List the built-in requirements catalog.
    Catalog(cli::catalog::Args),
    /// Manage Azure Service Tags files (validate, store, fetch).
    #[command(subcommand)]
    Tags(cli::tags::Cmd),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let res = match args.cmd {
        Cmd::Run(a) => cli::run::run(&a),
        Cmd::Counters(a) => cli::counters::run(&a),
        Cmd::Report(a) => cli::report::run(&a),
        Cmd::Reload(a) => cli::lifecycle::reload(&a),
        Cmd::Detach(a) => cli::lifecycle::detach(&a),
        Cmd::Dns(a) => cli::dns::run(&a),
        Cmd::Compile(a) => cli::policy::compile(&a),
        Cmd::Explain(a) => cli::policy::explain(&a),
        Cmd::Export(a) => cli::policy::export(&a),
        Cmd::Catalog(a) => cli::catalog::run(&a),
        Cmd::Tags(c) => cli::tags::run(&c),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tagwall: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
