//! `tagwall run`: load, apply, attach, serve until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::Location;
use crate::{
    compile::compile,
    dataplane::{AttachMode, Dataplane, LoadOptions},
    netif,
    state::{PolicyState, ensure_bpffs},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub loc: Location,
    /// Policy/config file (TOML).
    #[arg(long, alias = "config")]
    pub policy: PathBuf,
    /// Service Tags JSON file (overrides `service_tags` in the config).
    #[arg(long)]
    pub tags: Option<PathBuf>,
    /// Store of validated Service Tags files, used when neither --tags nor the config
    /// names a file.
    #[arg(long, env = "TAGWALL_TAGS_DIR", default_value = crate::servicetags::store::DEFAULT_DIR)]
    pub tags_dir: PathBuf,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: AttachMode,
    /// aya-log level of the datapath: 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    #[arg(long, default_value_t = 0)]
    pub datapath_log: u8,
}

/// # Errors
/// Anything that prevents enforcement, with what to do about it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let iface = &args.loc.iface;
    if !netif::exists(iface) {
        bail!("interface {iface:?} does not exist in this network namespace");
    }
    let addrs = netif::addresses(iface).with_context(|| format!("reading addresses of {iface}"))?;
    let (config, eff) =
        super::policy::load(&args.policy, args.tags.as_deref(), &args.tags_dir, &addrs)?;
    if !eff.fqdns.is_empty() {
        tracing::warn!(
            patterns = eff.fqdns.len(),
            "host-name rules are not enforced yet (no DNS resolver/proxy): their addresses stay denied"
        );
    }
    let rules = eff.rules.clone();
    let opts = LoadOptions {
        pin_dir: Some(args.loc.paths().pin_dir),
        log_level: args.datapath_log,
        ..LoadOptions::default()
    };
    let policy = compile(&rules, opts.sets_per_slot as usize)
        .with_context(|| format!("compiling {}", args.policy.display()))?;
    ensure_bpffs(&args.loc.bpffs).map_err(anyhow::Error::msg)?;
    let paths = args.loc.paths();
    let mut dp = Dataplane::load(&opts)?;
    let stats = dp.apply(&policy, config.audit)?;
    tracing::info!(
        rules = rules.len(),
        prefixes = stats.prefixes,
        sets = stats.sets,
        generation = stats.generation,
        audit = config.audit,
        "policy applied"
    );
    let mode = dp.attach(iface, args.mode)?;
    tracing::info!(%iface, ?mode, "XDP attached");
    PolicyState {
        iface: iface.clone(),
        generation: stats.generation,
        audit: config.audit,
        rules,
    }
    .save(&paths.state_file)
    .with_context(|| format!("writing {}", paths.state_file.display()))?;

    let logger = dp.take_logger();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        if let Some(logger) = logger {
            // SAFETY: the ring buffer fd is owned by `logger`, which the AsyncFd owns, so
            // it stays open and the same for the AsyncFd's whole life.
            let mut fd =
                unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .map_err(|e| anyhow::anyhow!("watching the datapath log ring buffer: {e}"))?;
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        break;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("signal received: detaching and removing pinned state");
    drop(dp);
    // A clean stop leaves nothing behind; counters die with the datapath.
    let _ = std::fs::remove_dir_all(&paths.pin_dir);
    let _ = std::fs::remove_file(&paths.state_file);
    Ok(())
}
