//! `tagwall counters`: the counters of a running datapath, from its pinned maps.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde_json::json;
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, ACTION_PASS, DIR_EGRESS},
    verdict::reason_name,
};

use super::{Format, Location};
use crate::{
    dataplane::{CT_STAT_NAMES, Counters, FWD_STAT_NAMES},
    state::PolicyState,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub loc: Location,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn dir_name(d: u8) -> &'static str {
    if d == DIR_EGRESS {
        "outbound"
    } else {
        "inbound"
    }
}

/// # Errors
/// Nothing pinned for the interface, unreadable maps.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let paths = args.loc.paths();
    let c = Counters::from_pins(&paths.pin_dir)?;
    let names: BTreeMap<u32, String> = match PolicyState::load(&paths.state_file) {
        Ok(s) => s.rules.into_iter().map(|r| (r.id, r.name)).collect(),
        Err(e) => {
            tracing::warn!(
                "no policy description at {} ({e}); rules shown by id",
                paths.state_file.display()
            );
            BTreeMap::new()
        }
    };
    let name = |id: u32| {
        if id == 0 {
            return "gateway:own-traffic".to_owned();
        }
        names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("rule#{id}"))
    };
    print!(
        "{}",
        render(&c, &name, args.format).context("rendering counters")?
    );
    Ok(())
}

/// Render counters as a terminal table or stable JSON.
///
/// # Errors
/// JSON serialisation errors.
pub fn render(
    c: &Counters,
    name: &dyn Fn(u32) -> String,
    format: Format,
) -> anyhow::Result<String> {
    let actions = [
        ("pass", c.actions[ACTION_PASS as usize]),
        ("drop", c.actions[ACTION_DROP as usize]),
        ("audit_pass", c.actions[ACTION_AUDIT_PASS as usize]),
    ];
    match format {
        Format::Json => {
            let v = json!({
                "generation": c.generation,
                "audit": c.audit,
                "actions": actions.iter().map(|(n, k)| (n.to_string(), json!({"packets": k.packets, "bytes": k.bytes}))).collect::<serde_json::Map<_, _>>(),
                "rules": c.rules.iter().map(|(id, k)| json!({"id": id, "name": name(*id), "packets": k.packets, "bytes": k.bytes})).collect::<Vec<_>>(),
                "reasons": c.reasons.iter().map(|((d, r), k)| json!({"direction": dir_name(*d), "reason": reason_name(*r), "packets": k.packets, "bytes": k.bytes})).collect::<Vec<_>>(),
                "conntrack": CT_STAT_NAMES.iter().zip(c.conntrack).map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "fast_forward": FWD_STAT_NAMES.iter().zip(c.fast_forward).map(|(n, k)| (n.to_string(), json!({"packets": k.packets, "bytes": k.bytes}))).collect::<serde_json::Map<_, _>>(),
            });
            Ok(serde_json::to_string_pretty(&v)? + "\n")
        }
        Format::Table => {
            use std::fmt::Write as _;
            let mut s = String::new();
            writeln!(
                s,
                "policy generation {}{}",
                c.generation,
                if c.audit { " (audit mode)" } else { "" }
            )?;
            writeln!(s, "\n{:<12} {:>14} {:>16}", "ACTION", "PACKETS", "BYTES")?;
            for (n, k) in actions {
                writeln!(s, "{n:<12} {:>14} {:>16}", k.packets, k.bytes)?;
            }
            writeln!(s, "\n{:<40} {:>14} {:>16}", "RULE", "PACKETS", "BYTES")?;
            for (id, k) in &c.rules {
                writeln!(s, "{:<40} {:>14} {:>16}", name(*id), k.packets, k.bytes)?;
            }
            writeln!(
                s,
                "\n{:<10} {:<16} {:>14} {:>16}",
                "DIRECTION", "REASON", "PACKETS", "BYTES"
            )?;
            for ((d, r), k) in &c.reasons {
                writeln!(
                    s,
                    "{:<10} {:<16} {:>14} {:>16}",
                    dir_name(*d),
                    reason_name(*r),
                    k.packets,
                    k.bytes
                )?;
            }
            writeln!(s, "\n{:<16} {:>14}", "CONNTRACK", "PACKETS")?;
            for (n, v) in CT_STAT_NAMES.iter().zip(c.conntrack) {
                writeln!(s, "{n:<16} {v:>14}")?;
            }
            // Only a gateway with [fast_forward] counts here.
            if c.fast_forward.iter().any(|k| k.packets != 0) {
                writeln!(
                    s,
                    "\n{:<16} {:>14} {:>16}",
                    "FAST FORWARD", "PACKETS", "BYTES"
                )?;
                for (n, k) in FWD_STAT_NAMES.iter().zip(c.fast_forward) {
                    writeln!(s, "{n:<16} {:>14} {:>16}", k.packets, k.bytes)?;
                }
            }
            Ok(s)
        }
    }
}
