//! The DNS state file (`<state_dir>/<iface>/dns.json`), rewritten atomically by the
//! daemon every few seconds and read by `tagwall dns` and `tagwall explain`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    config::{DnsMode, Unmatched},
    service::Shared,
    stats::StatsSnapshot,
    table::{AddrState, HeldReport, NameReport},
};
use crate::state::Paths;

/// Schema tag of the state file.
pub const SCHEMA: &str = "tagwall.dns/v1";

/// `dns.json` beside the interface's `policy.json`.
#[must_use]
pub fn state_path(paths: &Paths) -> PathBuf {
    paths.state_file.with_file_name("dns.json")
}

/// The settings in effect, as recorded in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// `auto` decided.
    pub mode: DnsMode,
    /// Bound proxy addresses (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub unmatched: Unmatched,
    pub min_ttl: u32,
    pub max_ttl: u32,
    pub grace: u32,
    pub max_stale: u32,
    pub max_ips_per_name: u32,
    pub rate_limit_qps: u32,
    /// Exact names the resolver keeps resolved.
    pub exact_names: usize,
    /// Wildcard patterns (only the proxy can serve them).
    pub wildcards: Vec<String>,
}

/// The content of `dns.json`. Times in names/addresses are relative to
/// `written_at_unix_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsState {
    pub schema: String,
    pub written_at_unix_ms: u64,
    pub settings: Settings,
    pub stats: StatsSnapshot,
    /// Addresses evicted by `max_ips_per_name`; answers larger than it (kept whole).
    pub evicted: u64,
    pub over_cap: u64,
    pub names: Vec<NameReport>,
    /// Due for revocation but used by tracked connections.
    pub held: Vec<HeldReport>,
}

impl DnsState {
    pub(crate) fn new(
        sh: &Shared,
        written_at_unix_ms: u64,
        names: Vec<NameReport>,
        held: Vec<HeldReport>,
        evicted: u64,
        over_cap: u64,
    ) -> Self {
        let c = &sh.cfg;
        Self {
            schema: SCHEMA.to_owned(),
            written_at_unix_ms,
            settings: Settings {
                mode: sh.mode,
                listen: sh.bound.clone(),
                upstreams: c.upstreams.clone(),
                unmatched: c.unmatched,
                min_ttl: c.min_ttl,
                max_ttl: c.max_ttl,
                grace: c.grace,
                max_stale: c.max_stale,
                max_ips_per_name: c.max_ips_per_name,
                rate_limit_qps: c.rate_limit_qps,
                exact_names: sh.matcher.exact_names().len(),
                wildcards: sh.matcher.wildcard_patterns(),
            },
            stats: sh.stats.snapshot(),
            evicted,
            over_cap,
            names,
            held,
        }
    }

    /// Write atomically (temp file + rename).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::state::save_json(self, path)
    }

    /// # Errors
    /// I/O or JSON errors (a file of another schema is an error).
    pub fn load(path: &Path) -> std::io::Result<Self> {
        crate::state::load_schema(path, SCHEMA, |s: &Self| s.schema.as_str())
    }

    /// The names (and rule ids) through which `addr` was allowed when written.
    #[must_use]
    pub fn who(&self, addr: &IpAddr) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .names
            .iter()
            .filter(|n| n.addresses.iter().any(|a| a.addr == *addr))
            .flat_map(|n| n.rules.iter().map(|r| (n.name.clone(), *r)))
            .chain(
                self.held
                    .iter()
                    .filter(|h| h.addr == *addr)
                    .flat_map(|h| h.rules.iter().map(|(r, n)| (n.clone(), *r))),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The table `tagwall dns` prints. `now_unix_ms` ages the file's relative times;
    /// `rule_name` labels rule ids when the applied policy is known.
    #[must_use]
    pub fn render(&self, now_unix_ms: u64, rule_name: &dyn Fn(u32) -> Option<String>) -> String {
        let age_ms =
            i64::try_from(now_unix_ms.saturating_sub(self.written_at_unix_ms)).unwrap_or(i64::MAX);
        let s = &self.settings;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "dns mode {}{}, upstreams {}; state written {} ago",
            s.mode.as_str(),
            if s.listen.is_empty() {
                String::new()
            } else {
                format!(
                    ", proxy on {} (udp+tcp), unmatched names: {}",
                    s.listen
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    match s.unmatched {
                        Unmatched::Answer => "answered",
                        Unmatched::Refuse => "refused",
                    }
                )
            },
            s.upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            human_ms(age_ms)
        );
        if s.mode == DnsMode::Off {
            let _ = writeln!(o, "DNS is off: host-name rules allow nothing.");
        }
        if !s.wildcards.is_empty() && !s.mode.proxy() {
            let _ = writeln!(
                o,
                "wildcards without the proxy (denied): {}",
                s.wildcards.join(" ")
            );
        }
        let label = |r: u32| match rule_name(r) {
            Some(n) => format!("{r} {n}"),
            None => r.to_string(),
        };
        let _ = writeln!(
            o,
            "\n{:<40} {:<39} {:<7} {:>9} {:>6}  RULES",
            "NAME", "ADDRESS", "STATE", "EXPIRES", "HITS"
        );
        for n in &self.names {
            let rules: Vec<String> = n.rules.iter().map(|r| label(*r)).collect();
            if n.addresses.is_empty() {
                let _ = writeln!(
                    o,
                    "{:<40} {:<39} {:<7} {:>9} {:>6}  {}",
                    n.name,
                    "-",
                    if n.stale { "stale" } else { "-" },
                    "-",
                    n.hits,
                    rules.join(", ")
                );
            }
            for (i, a) in n.addresses.iter().enumerate() {
                let state = match a.state {
                    AddrState::Live => "live",
                    AddrState::Stale => "stale",
                    AddrState::Grace => "grace",
                };
                let _ = writeln!(
                    o,
                    "{:<40} {:<39} {:<7} {:>9} {:>6}  {}",
                    if i == 0 { n.name.as_str() } else { "" },
                    a.addr.to_string(),
                    state,
                    human_ms(a.expires_in_ms.saturating_sub(age_ms)),
                    if i == 0 {
                        n.hits.to_string()
                    } else {
                        String::new()
                    },
                    if i == 0 {
                        rules.join(", ")
                    } else {
                        String::new()
                    }
                );
            }
            if let Some(e) = &n.last_error {
                let _ = writeln!(o, "{:<40} last error ({} failures): {e}", "", n.failures);
            }
        }
        if !self.held.is_empty() {
            let _ = writeln!(o, "\nheld (expired, in use by tracked connections):");
            for h in &self.held {
                let rules: Vec<String> = h
                    .rules
                    .iter()
                    .map(|(r, n)| format!("{} via {n}", label(*r)))
                    .collect();
                let _ = writeln!(o, "  {:<39} {}", h.addr.to_string(), rules.join(", "));
            }
        }
        let counters: BTreeMap<&str, u64> = self.stats.pairs().into_iter().collect();
        let _ = writeln!(
            o,
            "\ncounters: {}",
            self.stats
                .pairs()
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if counters.values().all(|v| *v == 0) {
            let _ = writeln!(o, "(all counters zero)");
        }
        if self.evicted > 0 || self.over_cap > 0 {
            let _ = writeln!(
                o,
                "max_ips_per_name: {} addresses evicted, {} answers larger than the cap",
                self.evicted, self.over_cap
            );
        }
        o
    }
}

/// `42s`, `3m12s`, `-5s` (past).
#[must_use]
pub fn human_ms(ms: i64) -> String {
    let neg = ms < 0;
    let s = ms.unsigned_abs() / 1000;
    let body = if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    };
    if neg { format!("-{body}") } else { body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(42_900), "42s");
        assert_eq!(human_ms(192_000), "3m12s");
        assert_eq!(human_ms(-5_000), "-5s");
        assert_eq!(human_ms(7_260_000), "2h01m");
    }
}
