//! `tagwall reload` and `tagwall detach`: act on a running (or pinned) datapath.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::Location;
use crate::{dataplane::remove_pins, netif, state::PolicyState};

#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub loc: Location,
    /// How long to wait for the daemon to switch.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct DetachArgs {
    #[command(flatten)]
    pub loc: Location,
}

pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Check the config the daemon would read, then SIGHUP it and wait for the outcome.
///
/// # Errors
/// No running daemon, a config that does not build (nothing is signalled then), or a
/// reload the daemon rejected.
pub fn reload(args: &ReloadArgs) -> anyhow::Result<()> {
    let paths = args.loc.paths();
    let state = PolicyState::load(&paths.state_file).with_context(|| {
        format!(
            "no running tagwall for {} (no {})",
            args.loc.iface,
            paths.state_file.display()
        )
    })?;
    let Some(pid) = state.pid.filter(|p| alive(*p)) else {
        bail!(
            "the tagwall daemon for {} is not running (the pinned datapath keeps enforcing \
             generation {}); start `tagwall run` to apply a new policy",
            args.loc.iface,
            state.generation
        );
    };
    // Validate first, so a bad config is reported here and the daemon is not bothered.
    let addrs: Vec<_> = state
        .ifaces
        .iter()
        .flat_map(|i| netif::addresses(i).unwrap_or_default())
        .collect();
    super::run::prepare(
        &state.policy_path,
        state.tags.as_deref(),
        &state.tags_dir,
        &addrs,
        state.host,
    )
    .with_context(|| {
        format!(
            "the new policy is rejected; generation {} stays in force",
            state.generation
        )
    })?;
    let before = state.reloads;
    signal(pid, libc::SIGHUP).with_context(|| format!("signalling tagwall (pid {pid})"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        if let Ok(now) = PolicyState::load(&paths.state_file)
            && now.reloads > before
        {
            let r = now.last_reload.unwrap_or(crate::state::ReloadStatus {
                at_unix: 0,
                ok: false,
                error: Some("no reload status recorded".into()),
                micros: 0,
            });
            if r.ok {
                println!(
                    "reloaded: generation {} -> {} in {} us",
                    state.generation, now.generation, r.micros
                );
                return Ok(());
            }
            bail!(
                "the daemon rejected the reload; generation {} stays in force: {}",
                now.generation,
                r.error.unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "tagwall (pid {pid}) did not report the reload within {} s",
                args.timeout_secs
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop the daemon (if running), then remove the pinned links and maps: the programs
/// detach and nothing of tagwall stays on the interface.
///
/// # Errors
/// The daemon does not stop, or pins cannot be removed.
pub fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let paths = args.loc.paths();
    if let Ok(state) = PolicyState::load(&paths.state_file)
        && let Some(pid) = state.pid.filter(|p| alive(*p))
    {
        signal(pid, libc::SIGTERM).with_context(|| format!("stopping tagwall (pid {pid})"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() > deadline {
                bail!("tagwall (pid {pid}) did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("stopped tagwall (pid {pid})");
    }
    let links = remove_pins(&paths.pin_dir)
        .with_context(|| format!("removing {}", paths.pin_dir.display()))?;
    let _ = std::fs::remove_file(&paths.state_file);
    // The reports' files describe maps that are gone now.
    let _ = std::fs::remove_file(crate::reports::events::state_path(&paths));
    let _ = std::fs::remove_file(crate::reports::report::snapshot_path(&paths));
    if let Some(dir) = paths.state_file.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    if links.is_empty() {
        println!(
            "nothing attached for {} under {}",
            args.loc.iface,
            paths.pin_dir.display()
        );
    } else {
        println!("detached: {}", links.join(", "));
    }
    Ok(())
}
