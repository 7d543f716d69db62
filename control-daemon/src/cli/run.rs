//! `tagwall run`: load (or adopt), apply, attach, serve until SIGINT/SIGTERM; reload on
//! SIGHUP.
//!
//! Everything the datapath needs lives in bpffs under `<bpffs>/tagwall/<iface>/`: the
//! maps and the links that attach the programs. A daemon that dies, even by SIGKILL,
//! leaves enforcement running; the next `tagwall run` for the same interface adopts
//! the pinned links and maps instead of attaching again, so there is no gap and the
//! counters and tracked flows carry on. `tagwall detach` removes it all.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use super::Location;
use crate::{
    compile::{CompiledPolicy, compile},
    config::Config,
    dataplane::{AttachMode, Attached, Dataplane, LoadOptions, Programs, Settings, remove_pins},
    dns::{DnsMode, DnsService, state_path},
    enforcer::Enforcer,
    netif,
    policy::{Effective, FqdnRule},
    reports::Observability,
    state::{PolicyState, ReloadStatus, ensure_bpffs},
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub loc: Location,
    /// Policy/config file (TOML). Read again on SIGHUP / `tagwall reload`.
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
    /// More interfaces of the same gateway that get the same XDP program and maps
    /// (e.g. the NICs return traffic arrives on), so flows are tracked across them.
    #[arg(long = "also-iface")]
    pub also_iface: Vec<String>,
    /// Host mode: enforce the host's own traffic with TC programs on the interface's
    /// egress and ingress, instead of XDP (gateway mode).
    #[arg(long)]
    pub host: bool,
    /// On SIGINT/SIGTERM also detach and remove the pinned state. Default: leave the
    /// datapath enforcing (fail closed) for the next `tagwall run` to adopt.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// aya-log level of the datapath: 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    #[arg(long, default_value_t = 0)]
    pub datapath_log: u8,
}

/// A policy ready to apply: everything that can fail before the maps are touched.
pub struct Prepared {
    pub config: Config,
    pub effective: Effective,
    pub compiled: CompiledPolicy,
    pub settings: Settings,
}

/// Load, build and compile a config: what `run`, SIGHUP and `tagwall reload` share
/// (`host`: host mode, which cannot fast-forward).
///
/// # Errors
/// Config, tags or compile errors naming the file.
pub fn prepare(
    policy: &std::path::Path,
    tags: Option<&std::path::Path>,
    tags_dir: &std::path::Path,
    addrs: &[std::net::IpAddr],
    host: bool,
) -> anyhow::Result<Prepared> {
    let (config, effective) = super::policy::load(policy, tags, tags_dir, addrs)?;
    if host && !config.fast_forward.interfaces.is_empty() {
        bail!(
            "{}: [fast_forward] is for gateway mode (XDP); host mode does not forward",
            policy.display()
        );
    }
    let compiled = compile(&effective.rules, config.datapath.port_sets as usize)
        .with_context(|| format!("compiling {}", policy.display()))?;
    let mut fast_forward = Vec::new();
    for name in &config.fast_forward.interfaces {
        let Some(i) = crate::netif::index(name) else {
            bail!(
                "{}: [fast_forward] interfaces: no interface {name:?} in this network namespace",
                policy.display()
            );
        };
        fast_forward.push(i);
    }
    let settings = Settings {
        audit: config.audit,
        internal: config.internal_prefixes.clone(),
        conntrack: config.conntrack.timeouts(),
        gateway_own: config.management.gateway_own_traffic,
        fast_forward,
    };
    Ok(Prepared {
        config,
        effective,
        compiled,
        settings,
    })
}

/// # Errors
/// Anything that prevents enforcement, with what to do about it.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let iface = &args.loc.iface;
    let mut ifaces = vec![iface.clone()];
    ifaces.extend(args.also_iface.iter().cloned());
    if args.host && !args.also_iface.is_empty() {
        bail!("--also-iface is for gateway mode; host mode enforces one interface");
    }
    for i in &ifaces {
        if !netif::exists(i) {
            bail!("interface {i:?} does not exist in this network namespace");
        }
    }
    // The gateway's own addresses on every interface it enforces on (management
    // allowances: SSH to the gateway, neighbor discovery).
    let mut addrs = Vec::new();
    for i in &ifaces {
        addrs.extend(netif::addresses(i).with_context(|| format!("reading addresses of {i}"))?);
    }
    let prepared = prepare(
        &args.policy,
        args.tags.as_deref(),
        &args.tags_dir,
        &addrs,
        args.host,
    )?;
    let dns_mode = prepared
        .config
        .dns
        .mode
        .effective(!prepared.effective.fqdns.is_empty());
    if !prepared.effective.fqdns.is_empty() && dns_mode == DnsMode::Off {
        tracing::warn!(
            patterns = prepared.effective.fqdns.len(),
            "[dns] mode is off: host-name rules stay denied (no address is ever learned for them)"
        );
    }
    if prepared.settings.internal.is_empty() && !args.host {
        tracing::info!(
            "no internal_prefixes: every packet XDP sees is judged as outbound (by destination); \
             set internal_prefixes to enforce inbound rules on a one-NIC gateway"
        );
    }
    let paths = args.loc.paths();
    let opts = LoadOptions {
        pin_dir: Some(paths.pin_dir.clone()),
        log_level: args.datapath_log,
        ct_max_entries: prepared.config.conntrack.max_entries,
        top_denied_entries: prepared.config.reports.top_denied_entries,
        sets_per_slot: prepared.config.datapath.port_sets,
        programs: if args.host {
            Programs::Host
        } else {
            Programs::Gateway
        },
        ..LoadOptions::default()
    };
    ensure_bpffs(&args.loc.bpffs).map_err(anyhow::Error::msg)?;
    let dp = Dataplane::load(&opts)?;
    let fqdns = prepared.effective.fqdns.clone();
    let dns_cfg = prepared.config.dns.clone();
    let (enforcer, stats) = Enforcer::new(
        dp,
        prepared.effective.rules.clone(),
        prepared.settings.clone(),
    )?;
    let enforcer = Arc::new(enforcer);
    // Report settings go in before attaching, so the first drop is reported too.
    let obs = Observability::start(&prepared.config.reports, &enforcer, &paths, iface)?;
    tracing::info!(
        rules = prepared.effective.rules.len(),
        prefixes = stats.prefixes,
        sets = stats.sets,
        generation = stats.generation,
        audit = prepared.settings.audit,
        conntrack = prepared.settings.conntrack.is_some(),
        "policy applied"
    );
    let mut dp = enforcer.dataplane_mut();
    for i in &ifaces {
        if args.host {
            match dp.attach_tc(i)? {
                Attached::Adopted => {
                    tracing::info!(iface = %i, "TC attached (adopted the pinned links)");
                }
                _ => tracing::info!(iface = %i, "TC attached (egress and ingress)"),
            }
        } else {
            match dp.attach(i, args.mode)? {
                Attached::Adopted => {
                    tracing::info!(iface = %i, "XDP attached (adopted the pinned link)");
                }
                Attached::Xdp(mode) => tracing::info!(iface = %i, ?mode, "XDP attached"),
                Attached::Tc => {}
            }
        }
    }
    drop(dp);
    let mut state = PolicyState {
        iface: iface.clone(),
        ifaces: ifaces.clone(),
        host: args.host,
        pid: Some(std::process::id()),
        policy_path: std::fs::canonicalize(&args.policy).unwrap_or_else(|_| args.policy.clone()),
        tags: args.tags.clone(),
        tags_dir: args.tags_dir.clone(),
        generation: stats.generation,
        audit: prepared.settings.audit,
        rules: prepared.effective.rules,
        reloads: 0,
        last_reload: None,
        provenance: prepared.effective.provenance,
        not_applied: prepared.effective.not_applied,
    };
    state
        .save(&paths.state_file)
        .with_context(|| format!("writing {}", paths.state_file.display()))?;
    obs.publish(&state);

    let logger = enforcer.take_logger();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
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
        let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let dns_state = state_path(&paths);
        let mut dns = start_dns(&dns_cfg, &fqdns, &enforcer, &dns_state).await?;
        obs.set_dns(dns.as_ref().map(DnsService::handle));
        obs.serve_metrics().await?;
        // Every interface attached, state written, DNS and metrics serving.
        tracing::info!(ifaces = ?ifaces, "tagwall ready");
        let mut fqdns = fqdns;
        let result = loop {
            let dns_failed = async {
                match dns.as_mut() {
                    Some(d) => d.failed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break Ok(()),
                _ = term.recv() => break Ok(()),
                e = dns_failed => break Err(anyhow::anyhow!("DNS service failed: {e}")),
                _ = hup.recv() => {
                    if let Some(new) = reload(args, &addrs, &enforcer, &fqdns, &mut state, &paths.state_file, &obs) {
                        // Host-name rules changed: DNS starts afresh with the new ones.
                        obs.set_dns(None);
                        if let Some(d) = dns.take() {
                            d.shutdown().await;
                        }
                        dns = start_dns(&new.1, &new.0, &enforcer, &dns_state).await?;
                        obs.set_dns(dns.as_ref().map(DnsService::handle));
                        fqdns = new.0;
                    }
                }
            }
        };
        obs.set_dns(None);
        if let Some(d) = dns.take() {
            d.shutdown().await;
        }
        result
    })?;
    obs.stop();
    drop(enforcer);
    if args.detach_on_exit {
        tracing::info!("signal received: detaching and removing pinned state");
        remove_pins(&paths.pin_dir)
            .with_context(|| format!("removing {}", paths.pin_dir.display()))?;
        let _ = std::fs::remove_file(&paths.state_file);
        let _ = std::fs::remove_file(crate::reports::events::state_path(&paths));
        let _ = std::fs::remove_file(crate::reports::report::snapshot_path(&paths));
    } else {
        tracing::info!(
            "signal received: exiting; the datapath stays attached and enforcing \
             (`tagwall detach --iface {iface}` removes it, `tagwall run` adopts it)"
        );
        state.pid = None;
        let _ = state.save(&paths.state_file);
    }
    Ok(())
}

/// Start the DNS resolver/proxy for the host-name rules, if its mode is on.
async fn start_dns(
    cfg: &crate::dns::DnsConfig,
    fqdns: &[FqdnRule],
    enforcer: &Arc<Enforcer>,
    state_file: &std::path::Path,
) -> anyhow::Result<Option<DnsService>> {
    if cfg.mode.effective(!fqdns.is_empty()) == DnsMode::Off {
        return Ok(None);
    }
    let svc = DnsService::start(
        cfg.clone(),
        fqdns,
        enforcer.sink(),
        Some(state_file.to_path_buf()),
    )
    .await
    .context("starting the DNS service")?;
    let e = enforcer.clone();
    svc.handle()
        .set_in_use(Arc::new(move |addr: &std::net::IpAddr| e.in_use(addr)));
    tracing::info!(
        mode = svc.handle().mode().as_str(),
        names = fqdns.len(),
        "DNS service started"
    );
    Ok(Some(svc))
}

/// SIGHUP: build the new policy from the same files; apply it only if everything
/// succeeded (the old one stays in force otherwise). The outcome goes to the log and
/// to the state file, where `tagwall reload` reads it. Returns the new host-name
/// rules and DNS config when they changed (DNS must restart with them).
fn reload(
    args: &Args,
    addrs: &[std::net::IpAddr],
    enforcer: &Enforcer,
    fqdns: &[FqdnRule],
    state: &mut PolicyState,
    state_file: &std::path::Path,
    obs: &Observability,
) -> Option<(Vec<FqdnRule>, crate::dns::DnsConfig)> {
    let t0 = Instant::now();
    let res = prepare(
        &args.policy,
        args.tags.as_deref(),
        &args.tags_dir,
        addrs,
        args.host,
    )
    .and_then(|p| {
        let same_names = p.effective.fqdns == fqdns;
        let stats = enforcer.replace(p.effective.rules.clone(), p.settings.clone(), same_names)?;
        Ok((p, stats, same_names))
    });
    state.reloads += 1;
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut restart = None;
    match res {
        Ok((p, stats, same_names)) => {
            let micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
            tracing::info!(
                generation = stats.generation,
                prefixes = stats.prefixes,
                micros,
                "policy reloaded"
            );
            if !same_names {
                tracing::warn!(
                    "host-name rules changed: DNS-learned addresses are dropped and learned again"
                );
                restart = Some((p.effective.fqdns.clone(), p.config.dns.clone()));
            }
            obs.reload(Some(&p.config.reports));
            state.generation = stats.generation;
            state.audit = p.settings.audit;
            state.rules = p.effective.rules;
            state.provenance = p.effective.provenance;
            state.not_applied = p.effective.not_applied;
            state.last_reload = Some(ReloadStatus {
                at_unix: at,
                ok: true,
                error: None,
                micros,
            });
        }
        Err(e) => {
            obs.reload(None);
            tracing::error!(
                "reload rejected, generation {} stays in force: {e:#}",
                state.generation
            );
            state.last_reload = Some(ReloadStatus {
                at_unix: at,
                ok: false,
                error: Some(format!("{e:#}")),
                micros: 0,
            });
        }
    }
    if let Err(e) = state.save(state_file) {
        tracing::error!("writing {}: {e}", state_file.display());
    }
    obs.publish(state);
    restart
}
