//! `tagwall report`: what the datapath did, per catalog requirement and user rule,
//! from its pinned maps and the daemon's state files (`docs/reports.md`).

use anyhow::Context as _;

use super::{Format, Location};
use crate::{
    dataplane::Counters,
    dns::{DnsState, state_path as dns_state_path},
    reports::{
        events::{LogState, state_path as events_state_path},
        maps::observe_pinned,
        report::{Inputs, Snapshot, build, render_table, snapshot_path},
        time::WallClock,
    },
    state::PolicyState,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub loc: Location,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also show what changed since the previous `tagwall report` of this interface.
    #[arg(long)]
    pub since_last: bool,
    /// Top denied entries (and rule suggestions) to show.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Do not record this report as the base of the next `--since-last`.
    #[arg(long)]
    pub no_save: bool,
}

/// # Errors
/// Nothing pinned for the interface, unreadable maps.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let paths = args.loc.paths();
    let counters = Counters::from_pins(&paths.pin_dir)?;
    let observed = observe_pinned(&paths.pin_dir).with_context(|| {
        format!(
            "reading the report maps under {} (a datapath loaded by an older tagwall has none: \
             `tagwall detach` and `tagwall run` again)",
            paths.pin_dir.display()
        )
    })?;
    let state = match PolicyState::load(&paths.state_file) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "no policy description at {} ({e}); rules shown by id, no coverage",
                paths.state_file.display()
            );
            None
        }
    };
    let dns = DnsState::load(&dns_state_path(&paths)).ok();
    let log = LogState::load(&events_state_path(&paths)).ok();
    let snap_path = snapshot_path(&paths);
    let previous = if args.since_last {
        match Snapshot::load(&snap_path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "tagwall: no previous report for {} ({}): showing totals only",
                    args.loc.iface,
                    snap_path.display()
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "tagwall: the previous report {} is unreadable ({e}): showing totals only",
                    snap_path.display()
                );
                None
            }
        }
    } else {
        None
    };
    let running = state
        .as_ref()
        .and_then(|s| s.pid)
        .is_some_and(super::lifecycle::alive);
    let (report, snap) = build(&Inputs {
        iface: &args.loc.iface,
        counters: &counters,
        observed: &observed,
        state: state.as_ref(),
        dns: dns.as_ref(),
        log,
        clock: WallClock::now(),
        now_unix_ms: crate::dns::unix_ms_now(),
        previous: previous.as_ref(),
        top_n: args.top,
        daemon_running: running,
    });
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", render_table(&report)),
    }
    if !args.no_save
        && let Err(e) = snap.save(&snap_path)
    {
        eprintln!(
            "tagwall: could not record this report for --since-last ({}: {e})",
            snap_path.display()
        );
    }
    Ok(())
}
