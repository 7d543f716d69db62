//! `tagwall dns`: what the DNS resolver/proxy of a running daemon has allowed, from
//! its state file (`<state_dir>/<iface>/dns.json`): names -> addresses -> rules,
//! expiry, hits, and the counters.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;

use super::{Format, Location};
use crate::{
    dns::{DnsState, state_path, unix_ms_now},
    state::PolicyState,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub loc: Location,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only say which names (and rules) allow this address.
    #[arg(long)]
    pub who: Option<IpAddr>,
}

/// # Errors
/// No state file (the daemon is not running or DNS never started), unreadable file.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let paths = args.loc.paths();
    let path = state_path(&paths);
    let state = DnsState::load(&path).with_context(|| {
        format!(
            "reading {} (is `tagwall run --iface {}` running?)",
            path.display(),
            args.loc.iface
        )
    })?;
    let names: BTreeMap<u32, String> = PolicyState::load(&paths.state_file)
        .map(|s| s.rules.into_iter().map(|r| (r.id, r.name)).collect())
        .unwrap_or_default();
    let rule_name = |id: u32| names.get(&id).cloned();
    if let Some(addr) = args.who {
        let who = state.who(&addr);
        match args.format {
            Format::Json => {
                let v: Vec<serde_json::Value> = who
                    .iter()
                    .map(|(n, r)| serde_json::json!({"name": n, "rule_id": r, "rule": rule_name(*r)}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"addr": addr, "allowed_by": v})
                    )?
                );
            }
            Format::Table => {
                if who.is_empty() {
                    println!(
                        "{addr}: not allowed by any host-name rule (per {})",
                        path.display()
                    );
                }
                for (n, r) in who {
                    match rule_name(r) {
                        Some(rn) => println!("{addr}: {n} -> rule {r} ({rn})"),
                        None => println!("{addr}: {n} -> rule {r}"),
                    }
                }
            }
        }
        return Ok(());
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&state)?),
        Format::Table => print!("{}", state.render(unix_ms_now(), &rule_name)),
    }
    Ok(())
}
