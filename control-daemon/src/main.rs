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
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tagwall: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
