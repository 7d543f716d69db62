//! `tagwall report`: counters grouped by catalog requirement and user rule, drops by
//! reason and direction, the top denied destinations, conntrack and event counters,
//! catalog coverage and rule suggestions; totals since the datapath was loaded and
//! deltas since the previous report. The JSON form is `tagwall.report/v1`
//! (`docs/reports.md`); [`build`] is pure so it is tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, ACTION_PASS, Counter, DIR_EGRESS, DIR_INGRESS},
    policy::{PROTO_TCP, PROTO_UDP},
    verdict::{REASON_NO_MATCH, REASON_PORT, is_drop, reason_name},
};

use super::{
    events::{LogState, action_name, dir_name},
    maps::{Observed, TopEntry},
    time::{WallClock, rfc3339_ms},
};
use crate::{
    catalog::{Catalog, Target},
    dataplane::{CT_STAT_NAMES, Counters},
    dns::DnsState,
    policy::RuleKind,
    rules::{Direction, Proto, Rule},
    state::PolicyState,
};

/// Schema tag of the JSON report.
pub const SCHEMA: &str = "tagwall.report/v1";
/// Schema tag of the stored snapshot (`report-last.json`).
pub const SNAPSHOT_SCHEMA: &str = "tagwall.report-snapshot/v1";

/// A packet and byte count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Delta {
    pub packets: u64,
    pub bytes: u64,
}

/// Totals, and the change since the previous report when asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
    pub delta: Option<Delta>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DaemonInfo {
    pub pid: Option<u32>,
    pub running: bool,
    pub generation: u32,
    pub audit: bool,
    pub reloads: u64,
    pub last_reload: Option<crate::state::ReloadStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SinceLast {
    pub previous_at: String,
    pub seconds: f64,
    /// The counters went down since (the datapath was detached and loaded again):
    /// deltas are the totals.
    pub counters_reset: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleRow {
    pub id: u32,
    pub name: String,
    /// `management`, `catalog`, `user`, `gateway` (rule 0, the gateway's own
    /// traffic) or `unknown` (an id the applied policy does not have).
    pub kind: String,
    pub requirement: Option<String>,
    pub source: Option<String>,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Clone, Debug, Serialize)]
pub struct DropRow {
    pub direction: &'static str,
    pub reason: &'static str,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopRow {
    pub direction: &'static str,
    /// The address a rule would name: destination outbound, source inbound.
    pub remote: IpAddr,
    /// Destination port (TCP/UDP); `None` for other protocols.
    pub port: Option<u16>,
    pub protocol: String,
    #[serde(flatten)]
    pub count: Count,
    pub first_seen: String,
    pub last_seen: String,
    pub last_reason: &'static str,
    pub last_action: &'static str,
    /// The local end of the last drop.
    pub local: IpAddr,
    /// Host names DNS resolved to `remote` (from `dns.json`).
    pub fqdns: Vec<String>,
    /// Rules whose addresses cover `remote` (for a `port` drop: the rules that allow
    /// it on other protocols/ports).
    pub covered_by: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopSection {
    pub capacity: u32,
    /// Per-CPU slot copies that changed hands each time they were read: their drops
    /// are left out of this report and show in a later one.
    pub unread_slots: u64,
    /// Denied keys, of the table and the per-CPU slots in front of it (the report
    /// shows the first `shown`).
    pub entries: usize,
    pub shown: usize,
    pub top: Vec<TopRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConntrackSection {
    pub entries: u64,
    pub capacity: u32,
    pub events: BTreeMap<String, u64>,
    pub events_delta: Option<BTreeMap<String, u64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventsSection {
    /// Events written into the ring / not, by the datapath.
    pub emitted: Count,
    pub rate_limited: Count,
    pub ring_full: Count,
    /// The daemon's log writer (`events.json`); `None` when it never ran.
    pub log: Option<LogState>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequirementRow {
    pub requirement: String,
    pub rule: String,
    pub rule_id: u32,
    #[serde(flatten)]
    pub count: Count,
}

#[derive(Clone, Debug, Serialize)]
pub struct Coverage {
    /// Catalog requirements applied as rules.
    pub requirements: usize,
    /// Applied requirements whose rule saw traffic since the datapath was loaded.
    pub seen: Vec<RequirementRow>,
    /// Applied requirements whose rule never saw a packet.
    pub never: Vec<RequirementRow>,
    /// Requirements of the selection that did not become rules, and why.
    pub not_applied: Vec<crate::policy::NotApplied>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    pub direction: &'static str,
    pub remote: IpAddr,
    pub port: Option<u16>,
    pub protocol: String,
    pub packets: u64,
    pub reason: &'static str,
    /// The host name the rule names instead of the address, when DNS knows one.
    pub fqdn: Option<String>,
    /// Why this looks like something missing (covering rules, a catalog requirement
    /// that was not applied, or none).
    pub why: String,
    /// A `[[rules]]` block to paste into the config.
    pub toml: String,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub iface: String,
    pub generated_at: String,
    pub daemon: DaemonInfo,
    pub since_last: Option<SinceLast>,
    pub rules: Vec<RuleRow>,
    pub actions: BTreeMap<String, Count>,
    pub drops: Vec<DropRow>,
    pub top_denied: TopSection,
    pub conntrack: ConntrackSection,
    pub events: EventsSection,
    pub coverage: Coverage,
    pub suggestions: Vec<Suggestion>,
}

/// Counter values of one report, kept for the next one's deltas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub schema: String,
    pub taken_unix_ms: u64,
    /// Rule id -> [packets, bytes].
    pub rules: BTreeMap<u32, [u64; 2]>,
    /// `direction/reason` -> [packets, bytes].
    pub reasons: BTreeMap<String, [u64; 2]>,
    /// `pass`, `drop`, `audit_pass` -> [packets, bytes].
    pub actions: BTreeMap<String, [u64; 2]>,
    pub conntrack: BTreeMap<String, u64>,
    /// `emitted`, `rate_limited`, `ring_full` -> [events, bytes].
    pub events: BTreeMap<String, [u64; 2]>,
    /// `direction|remote|port|protocol` -> [packets, bytes].
    pub top: BTreeMap<String, [u64; 2]>,
    /// `direction|remote|port|protocol` -> first seen (monotonic ns).
    pub top_first_seen: BTreeMap<String, u64>,
    /// `direction|remote|port|protocol` -> the latest last-seen time read (monotonic
    /// ns): an entry the table evicted and created again was first seen after it,
    /// and its count starts from zero.
    pub top_last_seen: BTreeMap<String, u64>,
    /// Keys of `top` that the read of this report lacked, kept from the previous
    /// snapshot (a batch of their drops may have been moving); not kept again.
    pub top_carried: BTreeSet<String>,
}

impl Snapshot {
    /// # Errors
    /// I/O or JSON errors, another schema.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        crate::state::load_schema(path, SNAPSHOT_SCHEMA, |s: &Self| s.schema.as_str())
    }

    /// Write atomically.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::state::save_json(self, path)
    }
}

/// `report-last.json` beside the interface's `policy.json`.
#[must_use]
pub fn snapshot_path(paths: &crate::state::Paths) -> std::path::PathBuf {
    paths.state_file.with_file_name("report-last.json")
}

/// Everything a report is made of.
pub struct Inputs<'a> {
    pub iface: &'a str,
    pub counters: &'a Counters,
    pub observed: &'a Observed,
    pub state: Option<&'a PolicyState>,
    pub dns: Option<&'a DnsState>,
    pub log: Option<LogState>,
    pub clock: WallClock,
    pub now_unix_ms: u64,
    /// The previous report's counters, when deltas are wanted.
    pub previous: Option<&'a Snapshot>,
    /// Top denied entries (and suggestions) to show.
    pub top_n: usize,
    pub daemon_running: bool,
}

/// Protocol as the config spells it (`tcp`, `udp`, `icmp`, `icmpv6`, a number).
#[must_use]
pub fn proto_config_name(p: u8) -> String {
    Proto(p).to_string()
}

fn top_key(e: &TopEntry) -> String {
    format!(
        "{}|{}|{}|{}",
        dir_name(e.dir),
        e.remote,
        e.port,
        proto_config_name(e.proto)
    )
}

fn has_ports(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

fn kind_name(k: RuleKind) -> &'static str {
    match k {
        RuleKind::Management => "management",
        RuleKind::Catalog => "catalog",
        RuleKind::User => "user",
    }
}

/// Kind of a rule by its name, for state files without provenance.
fn kind_from_name(name: &str) -> &'static str {
    if name.starts_with("aml:") {
        "catalog"
    } else if name.starts_with("mgmt:") {
        "management"
    } else {
        "user"
    }
}

fn rule_dir_matches(r: &Rule, dir: u8) -> bool {
    match r.direction {
        Direction::Outbound => dir == DIR_EGRESS,
        Direction::Inbound => dir == DIR_INGRESS,
        Direction::Local => false,
    }
}

/// Rules whose prefixes cover a denied entry: the direction's rules by the remote
/// address, local rules by the destination.
fn covering_rules<'r>(rules: &'r [Rule], e: &TopEntry) -> Vec<&'r Rule> {
    let dst = if e.dir == DIR_EGRESS {
        e.remote
    } else {
        e.local
    };
    rules
        .iter()
        .filter(|r| {
            (rule_dir_matches(r, e.dir) && r.prefixes.iter().any(|p| p.contains(&e.remote)))
                || (r.direction == Direction::Local && r.prefixes.iter().any(|p| p.contains(&dst)))
        })
        .collect()
}

fn describe_rule(r: &Rule) -> String {
    let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
    if r.proto.has_ports() {
        format!("{} ({} {})", r.name, r.proto, ports.join(","))
    } else {
        format!("{} ({})", r.name, r.proto)
    }
}

/// Does a catalog host pattern (`*.suffix`, `<placeholder>` labels) match `name`?
/// A placeholder matches one or more characters within a label; `*.` one or more
/// labels.
#[must_use]
pub fn host_pattern_matches(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'<') => {
                let Some(close) = p.iter().position(|c| *c == b'>') else {
                    return false;
                };
                let rest = &p[close + 1..];
                (1..=n.len())
                    .take_while(|i| n[i - 1] != b'.')
                    .any(|i| m(rest, &n[i..]))
            }
            Some(c) => n.first().is_some_and(|d| d.eq_ignore_ascii_case(c)) && m(&p[1..], &n[1..]),
        }
    }
    let name = name.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        // One or more labels, then `.suffix`.
        name.match_indices('.')
            .any(|(i, _)| i > 0 && m(suffix.as_bytes(), &name.as_bytes()[i + 1..]))
    } else {
        m(pattern.as_bytes(), name.as_bytes())
    }
}

/// Catalog requirements that were not applied and whose host names match `fqdn`.
fn not_applied_matching(state: &PolicyState, fqdn: &str) -> Vec<(String, String)> {
    let catalog = Catalog::embedded();
    state
        .not_applied
        .iter()
        .filter(|na| {
            catalog
                .get(&na.requirement)
                .is_some_and(|req| match &req.target {
                    Target::Fqdn { name } => host_pattern_matches(name, fqdn),
                    Target::WildcardFqdn { pattern } => host_pattern_matches(pattern, fqdn),
                    Target::Url { host, .. } => host_pattern_matches(host, fqdn),
                    Target::ServiceTag { .. } => false,
                })
        })
        .map(|na| (na.requirement.clone(), na.why.clone()))
        .collect()
}

fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// A `[[rules]]` block allowing one denied entry.
#[must_use]
pub fn suggestion_toml(
    dir: u8,
    remote: IpAddr,
    port: Option<u16>,
    proto: u8,
    fqdn: Option<&str>,
) -> String {
    let proto_s = proto_config_name(proto);
    let what = fqdn.map_or_else(|| remote.to_string(), ToOwned::to_owned);
    let name = match port {
        Some(p) => format!("allow-{}-{proto_s}-{p}", sanitize(&what)),
        None => format!("allow-{}-{proto_s}", sanitize(&what)),
    };
    let mut s = String::new();
    let _ = writeln!(s, "[[rules]]");
    let _ = writeln!(s, "name = \"{name}\"");
    if dir == DIR_INGRESS {
        let _ = writeln!(s, "direction = \"inbound\"");
    }
    match fqdn {
        // Inbound rules match sources by address; a host name only helps outbound.
        Some(f) if dir == DIR_EGRESS => {
            let _ = writeln!(s, "fqdns = [\"{f}\"]");
        }
        _ => {
            let bits = if remote.is_ipv4() { 32 } else { 128 };
            let _ = writeln!(s, "to = [\"{remote}/{bits}\"]");
        }
    }
    let _ = writeln!(s, "protocol = \"{proto_s}\"");
    if let Some(p) = port {
        let _ = writeln!(s, "ports = [{p}]");
    }
    s
}

fn pair(c: Counter) -> [u64; 2] {
    [c.packets, c.bytes]
}

struct Deltas<'a> {
    prev: Option<&'a Snapshot>,
    reset: bool,
}

impl Deltas<'_> {
    fn count(&self, now: Counter, prev: Option<&[u64; 2]>) -> Count {
        let delta = self.prev.map(|_| match prev {
            Some(p) if !self.reset => Delta {
                packets: now.packets.saturating_sub(p[0]),
                bytes: now.bytes.saturating_sub(p[1]),
            },
            _ => Delta {
                packets: now.packets,
                bytes: now.bytes,
            },
        });
        Count {
            packets: now.packets,
            bytes: now.bytes,
            delta,
        }
    }
}

/// Build the report, and the snapshot the next report's deltas start from.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn build(inp: &Inputs<'_>) -> (Report, Snapshot) {
    let c = inp.counters;
    let o = inp.observed;
    let action_names = [
        ("pass", ACTION_PASS),
        ("drop", ACTION_DROP),
        ("audit_pass", ACTION_AUDIT_PASS),
    ];
    let mut snap = Snapshot {
        schema: SNAPSHOT_SCHEMA.into(),
        taken_unix_ms: inp.now_unix_ms,
        ..Snapshot::default()
    };
    for (n, i) in action_names {
        snap.actions.insert(n.into(), pair(c.actions[i as usize]));
    }
    // Counters only grow while the maps live; fewer packets than last time means
    // they were created anew (detach + run).
    let total = |m: &BTreeMap<String, [u64; 2]>| m.values().map(|v| v[0]).sum::<u64>();
    let reset = inp
        .previous
        .is_some_and(|p| total(&snap.actions) < total(&p.actions));
    let d = Deltas {
        prev: inp.previous,
        reset,
    };
    let prev_get = |f: &dyn Fn(&Snapshot) -> Option<[u64; 2]>| inp.previous.and_then(f);

    let actions = action_names
        .iter()
        .map(|(n, i)| {
            let now = c.actions[*i as usize];
            let p = prev_get(&|s| s.actions.get(*n).copied());
            ((*n).to_owned(), d.count(now, p.as_ref()))
        })
        .collect();

    // Rules: every rule of the applied policy, rule 0, and counted ids it lacks.
    let state_rules: &[Rule] = inp.state.map_or(&[], |s| s.rules.as_slice());
    let prov: BTreeMap<u32, &crate::policy::Provenance> = inp
        .state
        .map(|s| s.provenance.iter().map(|p| (p.rule_id, p)).collect())
        .unwrap_or_default();
    let mut ids: BTreeSet<u32> = state_rules.iter().map(|r| r.id).collect();
    ids.insert(0);
    ids.extend(c.rules.keys().copied());
    let names: BTreeMap<u32, &str> = state_rules
        .iter()
        .map(|r| (r.id, r.name.as_str()))
        .collect();
    let mut rules = Vec::new();
    for id in ids {
        let now = c.rule(id);
        snap.rules.insert(id, pair(now));
        let p = prev_get(&|s| s.rules.get(&id).copied());
        let (name, kind) = match (id, names.get(&id)) {
            (0, _) => ("gateway:own-traffic".to_owned(), "gateway".to_owned()),
            (_, Some(n)) => (
                (*n).to_owned(),
                prov.get(&id)
                    .map_or_else(|| kind_from_name(n), |p| kind_name(p.kind))
                    .to_owned(),
            ),
            (_, None) => (format!("rule#{id}"), "unknown".to_owned()),
        };
        rules.push(RuleRow {
            id,
            name,
            kind,
            requirement: prov.get(&id).and_then(|p| p.requirement.clone()),
            source: prov.get(&id).map(|p| p.source.clone()),
            count: d.count(now, p.as_ref()),
        });
    }

    let mut drops = Vec::new();
    for ((dir, reason), k) in &c.reasons {
        let key = format!("{}/{}", dir_name(*dir), reason_name(*reason));
        snap.reasons.insert(key.clone(), pair(*k));
        if is_drop(*reason) {
            let p = prev_get(&|s| s.reasons.get(&key).copied());
            drops.push(DropRow {
                direction: dir_name(*dir),
                reason: reason_name(*reason),
                count: d.count(*k, p.as_ref()),
            });
        }
    }

    let who = |a: &IpAddr| -> Vec<(String, u32)> { inp.dns.map(|s| s.who(a)).unwrap_or_default() };
    let mut top = Vec::new();
    for e in &o.top {
        let key = top_key(e);
        let now = Counter {
            packets: e.packets,
            bytes: e.bytes,
        };
        // Created again since the last report (first seen after the last drop that
        // report saw): all of its count is new. Not merely first seen later than
        // before: a read that meets the batch holding the key's earliest drops
        // moving into the table sees a later first drop, but the drops it does see
        // include counted ones. A snapshot of a version without last-seen times
        // compares first-seen times, one without either compares totals.
        let recreated = inp.previous.is_some_and(|s| {
            match (s.top_last_seen.get(&key), s.top_first_seen.get(&key)) {
                (Some(last), _) => e.first_seen_ns > *last,
                (None, Some(first)) => e.first_seen_ns > *first,
                (None, None) => false,
            }
        });
        let p = prev_get(&|s| s.top.get(&key).copied()).filter(|_| !recreated && !reset);
        let last_seen = match inp.previous.and_then(|s| s.top_last_seen.get(&key)) {
            Some(l) if p.is_some() => e.last_seen_ns.max(*l),
            _ => e.last_seen_ns,
        };
        // A batch of drops moving from a per-CPU slot into the table is in neither
        // place for the read that meets it (`tagwall_common::reports`): the total
        // dips for that report. The next deltas start from the highest total seen,
        // so that they do not count the batch twice.
        let base = p.map_or(pair(now), |p| [p[0].max(now.packets), p[1].max(now.bytes)]);
        snap.top.insert(key.clone(), base);
        snap.top_first_seen.insert(key.clone(), e.first_seen_ns);
        snap.top_last_seen.insert(key.clone(), last_seen);
        if top.len() >= inp.top_n {
            continue;
        }
        let mut fqdns: Vec<String> = who(&e.remote).into_iter().map(|(n, _)| n).collect();
        fqdns.dedup();
        let mut covered_by: Vec<String> = covering_rules(state_rules, e)
            .into_iter()
            .map(describe_rule)
            .collect();
        for (n, id) in who(&e.remote) {
            if let Some(r) = state_rules.iter().find(|r| r.id == id) {
                covered_by.push(format!("{} via {n}", describe_rule(r)));
            }
        }
        covered_by.dedup();
        top.push(TopRow {
            direction: dir_name(e.dir),
            remote: e.remote,
            port: has_ports(e.proto).then_some(e.port),
            protocol: proto_config_name(e.proto),
            count: d.count(now, p.as_ref()),
            first_seen: inp.clock.rfc3339(e.first_seen_ns),
            last_seen: inp.clock.rfc3339(e.last_seen_ns),
            last_reason: reason_name(e.reason),
            last_action: action_name(e.action),
            local: e.local,
            fqdns,
            covered_by,
        });
    }

    // A key missing from this read may be a batch moving into the table (above):
    // its baseline is kept for one more report. A key missing twice is gone (the
    // table evicted it).
    if let Some(p) = inp.previous.filter(|_| !reset) {
        for (key, v) in &p.top {
            if !snap.top.contains_key(key) && !p.top_carried.contains(key) {
                snap.top.insert(key.clone(), *v);
                if let Some(f) = p.top_first_seen.get(key) {
                    snap.top_first_seen.insert(key.clone(), *f);
                }
                if let Some(l) = p.top_last_seen.get(key) {
                    snap.top_last_seen.insert(key.clone(), *l);
                }
                snap.top_carried.insert(key.clone());
            }
        }
    }

    let mut ct_events = BTreeMap::new();
    for (n, v) in CT_STAT_NAMES.iter().zip(c.conntrack) {
        ct_events.insert((*n).to_owned(), v);
        snap.conntrack.insert((*n).to_owned(), v);
    }
    let ct_delta = inp.previous.map(|p| {
        ct_events
            .iter()
            .map(|(n, v)| {
                let before = if reset {
                    0
                } else {
                    p.conntrack.get(n).copied().unwrap_or(0)
                };
                (n.clone(), v.saturating_sub(before))
            })
            .collect()
    });

    let ev = o.events;
    let mut event_count = |name: &str, k: Counter| {
        snap.events.insert(name.into(), pair(k));
        let p = prev_get(&|s| s.events.get(name).copied());
        d.count(k, p.as_ref())
    };
    let events = EventsSection {
        emitted: event_count("emitted", ev.emitted),
        rate_limited: event_count("rate_limited", ev.rate_limited),
        ring_full: event_count("ring_full", ev.ring_full),
        log: inp.log.clone(),
    };

    // Coverage: applied catalog requirements, seen or never.
    let (mut seen, mut never) = (Vec::new(), Vec::new());
    for r in &rules {
        let Some(req) = &r.requirement else { continue };
        let row = RequirementRow {
            requirement: req.clone(),
            rule: r.name.clone(),
            rule_id: r.id,
            count: r.count,
        };
        if r.count.packets > 0 {
            seen.push(row);
        } else {
            never.push(row);
        }
    }
    let coverage = Coverage {
        requirements: seen.len() + never.len(),
        seen,
        never,
        not_applied: inp.state.map(|s| s.not_applied.clone()).unwrap_or_default(),
    };

    // Suggestions for the denied entries shown that a rule could allow.
    let mut suggestions = Vec::new();
    for (e, row) in o.top.iter().zip(&top) {
        if e.reason != REASON_NO_MATCH && e.reason != REASON_PORT {
            continue;
        }
        let fqdn = row.fqdns.first().cloned();
        let port = has_ports(e.proto).then_some(e.port);
        let mut why = Vec::new();
        if row.covered_by.is_empty() {
            why.push(format!("no rule covers {}", e.remote));
        } else {
            why.push(format!(
                "{} is covered by {}, but not for {}{}",
                e.remote,
                row.covered_by.join("; "),
                proto_config_name(e.proto),
                port.map(|p| format!(" {p}")).unwrap_or_default()
            ));
        }
        if let (Some(f), Some(s)) = (&fqdn, inp.state) {
            for (req, reason) in not_applied_matching(s, f) {
                why.push(format!(
                    "{f} matches catalog requirement {req}, which is not applied: {reason}"
                ));
            }
        }
        suggestions.push(Suggestion {
            direction: row.direction,
            remote: e.remote,
            port,
            protocol: row.protocol.clone(),
            packets: e.packets,
            reason: reason_name(e.reason),
            fqdn: fqdn.clone(),
            why: why.join("; "),
            toml: suggestion_toml(e.dir, e.remote, port, e.proto, fqdn.as_deref()),
        });
    }

    let since_last = inp.previous.map(|p| SinceLast {
        previous_at: rfc3339_ms(p.taken_unix_ms),
        seconds: inp.now_unix_ms.saturating_sub(p.taken_unix_ms) as f64 / 1000.0,
        counters_reset: reset,
    });
    let report = Report {
        schema: SCHEMA,
        iface: inp.iface.to_owned(),
        generated_at: rfc3339_ms(inp.now_unix_ms),
        daemon: DaemonInfo {
            pid: inp.state.and_then(|s| s.pid),
            running: inp.daemon_running,
            generation: c.generation,
            audit: c.audit,
            reloads: inp.state.map_or(0, |s| s.reloads),
            last_reload: inp.state.and_then(|s| s.last_reload.clone()),
        },
        since_last,
        rules,
        actions,
        drops,
        top_denied: TopSection {
            capacity: o.top_capacity,
            unread_slots: o.top_torn,
            entries: o.top.len(),
            shown: top.len(),
            top,
        },
        conntrack: ConntrackSection {
            entries: o.conntrack_entries,
            capacity: o.conntrack_capacity,
            events: ct_events,
            events_delta: ct_delta,
        },
        events,
        coverage,
        suggestions,
    };
    (report, snap)
}

fn delta_cell(c: &Count, packets: bool) -> String {
    match c.delta {
        Some(d) => format!("+{}", if packets { d.packets } else { d.bytes }),
        None => String::new(),
    }
}

/// The report as terminal tables.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn render_table(r: &Report) -> String {
    let mut s = String::new();
    let deltas = r.since_last.is_some();
    let dh = if deltas { "  +PACKETS" } else { "" };
    let d = |c: &Count| {
        if deltas {
            format!("  {:>9}", delta_cell(c, true))
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        s,
        "tagwall report for {} at {}: policy generation {}{}, daemon {}",
        r.iface,
        r.generated_at,
        r.daemon.generation,
        if r.daemon.audit { " (audit mode)" } else { "" },
        match (r.daemon.running, r.daemon.pid) {
            (true, Some(p)) => format!("running (pid {p})"),
            _ => "not running (the pinned datapath keeps enforcing)".into(),
        }
    );
    let _ = writeln!(
        s,
        "totals since the datapath was loaded{}",
        match &r.since_last {
            Some(sl) => format!(
                "; +: since the previous report ({}, {:.0} s ago){}",
                sl.previous_at,
                sl.seconds,
                if sl.counters_reset {
                    ", counters were reset since"
                } else {
                    ""
                }
            ),
            None => String::new(),
        }
    );

    let _ = writeln!(
        s,
        "\n{:<12} {:>14} {:>16}{dh}",
        "ACTION", "PACKETS", "BYTES"
    );
    for (n, c) in &r.actions {
        let _ = writeln!(s, "{n:<12} {:>14} {:>16}{}", c.packets, c.bytes, d(c));
    }

    for (title, kinds) in [
        ("CATALOG REQUIREMENT", &["catalog"][..]),
        ("USER RULE", &["user"][..]),
        (
            "MANAGEMENT / OTHER",
            &["management", "gateway", "unknown"][..],
        ),
    ] {
        let rows: Vec<&RuleRow> = r
            .rules
            .iter()
            .filter(|x| kinds.contains(&x.kind.as_str()))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n{title:<44} {:>14} {:>16}{dh}", "PACKETS", "BYTES");
        for x in rows {
            let label = x.requirement.as_deref().unwrap_or(&x.name);
            let _ = writeln!(
                s,
                "{label:<44} {:>14} {:>16}{}",
                x.count.packets,
                x.count.bytes,
                d(&x.count)
            );
        }
    }

    let _ = writeln!(
        s,
        "\n{:<10} {:<16} {:>14} {:>16}{dh}",
        "DIRECTION", "DROP REASON", "PACKETS", "BYTES"
    );
    if r.drops.is_empty() {
        let _ = writeln!(s, "(no drops)");
    }
    for x in &r.drops {
        let _ = writeln!(
            s,
            "{:<10} {:<16} {:>14} {:>16}{}",
            x.direction,
            x.reason,
            x.count.packets,
            x.count.bytes,
            d(&x.count)
        );
    }

    let t = &r.top_denied;
    let _ = writeln!(
        s,
        "\nTOP DENIED ({} of {} entries; table holds {})",
        t.shown, t.entries, t.capacity
    );
    if t.unread_slots > 0 {
        let _ = writeln!(
            s,
            "({} per-CPU slot copies changed while read: their drops show in a later report)",
            t.unread_slots
        );
    }
    if !t.top.is_empty() {
        let _ = writeln!(
            s,
            "{:<9} {:<40} {:<10} {:>10}{dh} {:<10} {:<24} DNS NAME",
            "DIRECTION", "REMOTE", "PROTO/PORT", "PACKETS", "REASON", "LAST SEEN"
        );
    }
    for x in &t.top {
        let pp = match x.port {
            Some(p) => format!("{}/{p}", x.protocol),
            None => x.protocol.clone(),
        };
        let _ = writeln!(
            s,
            "{:<9} {:<40} {:<10} {:>10}{} {:<10} {:<24} {}",
            x.direction,
            x.remote.to_string(),
            pp,
            x.count.packets,
            d(&x.count),
            x.last_reason,
            x.last_seen.get(..19).unwrap_or(&x.last_seen),
            x.fqdns.join(",")
        );
    }

    let ct = &r.conntrack;
    let _ = writeln!(
        s,
        "\nCONNTRACK  {} entries of {} (expired ones included until reused or evicted)",
        ct.entries, ct.capacity
    );
    for (n, v) in &ct.events {
        let delta = ct
            .events_delta
            .as_ref()
            .and_then(|m| m.get(n))
            .map(|v| format!("  +{v}"))
            .unwrap_or_default();
        let _ = writeln!(s, "  {n:<16} {v:>14}{delta}");
    }

    let e = &r.events;
    let ev = |c: &Count| match c.delta {
        Some(d) => format!("{} (+{})", c.packets, d.packets),
        None => c.packets.to_string(),
    };
    let _ = writeln!(
        s,
        "\nDENIED-FLOW EVENTS  emitted {}, rate-limited {}, ring full {}",
        ev(&e.emitted),
        ev(&e.rate_limited),
        ev(&e.ring_full)
    );
    match &e.log {
        Some(l) => {
            let _ = writeln!(
                s,
                "  log {}: {} lines written, {} lost to write errors, {} undecodable, {} discarded (no log configured); since the daemon started",
                l.path
                    .as_ref()
                    .map_or_else(|| "(off)".to_owned(), |p| p.display().to_string()),
                l.lines_written,
                l.write_errors,
                l.decode_errors,
                l.discarded
            );
        }
        None => {
            let _ = writeln!(s, "  log: no reader has run (set [reports] denied_log)");
        }
    }

    let cv = &r.coverage;
    let _ = writeln!(
        s,
        "\nCATALOG COVERAGE  {} requirements applied: {} saw traffic, {} never did",
        cv.requirements,
        cv.seen.len(),
        cv.never.len()
    );
    for x in &cv.seen {
        let _ = writeln!(
            s,
            "  seen   {:<44} {:>12} packets{}",
            x.requirement,
            x.count.packets,
            d(&x.count)
        );
    }
    for x in &cv.never {
        let _ = writeln!(s, "  never  {}", x.requirement);
    }
    // Scenario/condition choices are deliberate; list what may be an oversight first.
    let (chosen, other): (Vec<_>, Vec<_>) = cv
        .not_applied
        .iter()
        .partition(|x| x.why.starts_with("scenario ") || x.why.starts_with("condition "));
    for x in &other {
        let _ = writeln!(s, "  not applied  {}: {}", x.requirement, x.why);
    }
    if !chosen.is_empty() {
        let _ = writeln!(
            s,
            "  not applied  {} more whose scenario or condition is not enabled (--format json lists them)",
            chosen.len()
        );
    }

    if !r.suggestions.is_empty() {
        let _ = writeln!(
            s,
            "\nSUGGESTIONS  rules that would allow the top denied traffic (check before pasting):"
        );
        for x in &r.suggestions {
            let _ = writeln!(
                s,
                "\n# {} denied packet(s), {}: {}",
                x.packets, x.reason, x.why
            );
            s.push_str(&x.toml);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagwall_common::policy::{PROTO_ICMP, PROTO_ICMPV6};

    #[test]
    fn host_patterns() {
        assert!(host_pattern_matches("pypi.org", "PyPI.org."));
        assert!(!host_pattern_matches("pypi.org", "files.pypi.org"));
        assert!(host_pattern_matches("*.anaconda.org", "conda.anaconda.org"));
        assert!(host_pattern_matches("*.anaconda.org", "a.b.anaconda.org"));
        assert!(!host_pattern_matches("*.anaconda.org", "anaconda.org"));
        assert!(host_pattern_matches(
            "<storage>.blob.core.windows.net",
            "mystore.blob.core.windows.net"
        ));
        assert!(!host_pattern_matches(
            "<storage>.blob.core.windows.net",
            "a.b.blob.core.windows.net"
        ));
        assert!(host_pattern_matches(
            "<region>.api.azureml.ms",
            "westus2.api.azureml.ms"
        ));
    }

    #[test]
    fn suggestions_are_valid_config() {
        let t = suggestion_toml(
            DIR_EGRESS,
            "10.77.3.2".parse().unwrap(),
            Some(5300),
            PROTO_UDP,
            None,
        );
        assert!(
            t.contains("to = [\"10.77.3.2/32\"]") && t.contains("ports = [5300]"),
            "{t}"
        );
        let t2 = suggestion_toml(
            DIR_EGRESS,
            "2001:db8::1".parse().unwrap(),
            Some(443),
            PROTO_TCP,
            Some("pypi.org"),
        );
        assert!(
            t2.contains("fqdns = [\"pypi.org\"]") && t2.contains("allow-pypi-org-tcp-443"),
            "{t2}"
        );
        let t3 = suggestion_toml(
            DIR_INGRESS,
            "192.0.2.9".parse().unwrap(),
            None,
            PROTO_ICMP,
            None,
        );
        assert!(
            t3.contains("direction = \"inbound\"") && !t3.contains("ports"),
            "{t3}"
        );
        let t4 = suggestion_toml(
            DIR_EGRESS,
            "2001:db8::1".parse().unwrap(),
            None,
            PROTO_ICMPV6,
            None,
        );
        // Every block parses as a config.
        let cfg =
            crate::config::Config::parse(&format!("{t}\n{t2}\n{t3}\n{t4}"), "s.toml").unwrap();
        assert_eq!(cfg.rules.len(), 4);
    }

    fn inputs_fixture() -> (Counters, Observed, PolicyState) {
        use crate::policy::{Provenance, RuleKind};
        use tagwall_common::verdict::REASON_ALLOWED;
        let rule = |id: u32, name: &str, net: &str, proto: Proto, port: u16| Rule {
            id,
            name: name.into(),
            direction: Direction::Outbound,
            prefixes: vec![net.parse().unwrap()],
            proto,
            ports: vec![crate::rules::PortRange::single(port)],
            origin: "t".into(),
        };
        let rules = vec![
            rule(1, "aml:seen", "10.0.2.0/24", Proto::TCP, 443),
            rule(2, "aml:never", "10.0.9.0/24", Proto::TCP, 443),
            rule(3, "user:web", "10.0.3.0/24", Proto::TCP, 80),
        ];
        let prov = |id: u32, kind: RuleKind, req: Option<&str>| Provenance {
            rule_id: id,
            name: String::new(),
            kind,
            requirement: req.map(Into::into),
            source: "doc".into(),
            description: String::new(),
            service_tags: vec![],
            fqdns: vec![],
        };
        let state = PolicyState {
            iface: "eth1".into(),
            ifaces: vec!["eth1".into()],
            host: false,
            pid: None,
            policy_path: "p.toml".into(),
            tags: None,
            tags_dir: "t".into(),
            generation: 1,
            audit: false,
            rules,
            reloads: 0,
            last_reload: None,
            provenance: vec![
                prov(1, RuleKind::Catalog, Some("seen")),
                prov(2, RuleKind::Catalog, Some("never")),
                prov(3, RuleKind::User, None),
            ],
            not_applied: vec![],
        };
        let mut c = Counters::default();
        c.rules.insert(
            1,
            Counter {
                packets: 10,
                bytes: 1000,
            },
        );
        c.reasons.insert(
            (DIR_EGRESS, REASON_ALLOWED),
            Counter {
                packets: 10,
                bytes: 1000,
            },
        );
        c.reasons.insert(
            (DIR_EGRESS, REASON_NO_MATCH),
            Counter {
                packets: 5,
                bytes: 300,
            },
        );
        c.reasons.insert(
            (DIR_EGRESS, REASON_PORT),
            Counter {
                packets: 2,
                bytes: 120,
            },
        );
        c.actions[ACTION_PASS as usize] = Counter {
            packets: 10,
            bytes: 1000,
        };
        c.actions[ACTION_DROP as usize] = Counter {
            packets: 7,
            bytes: 420,
        };
        let e = |remote: &str, port: u16, proto: u8, packets: u64, reason: u8| TopEntry {
            dir: DIR_EGRESS,
            remote: remote.parse().unwrap(),
            port,
            proto,
            packets,
            bytes: packets * 60,
            first_seen_ns: 1,
            last_seen_ns: 2,
            local: "10.0.1.2".parse().unwrap(),
            reason,
            action: 1,
        };
        let o = Observed {
            top: vec![
                e("10.0.7.7", 5300, PROTO_UDP, 5, REASON_NO_MATCH),
                e("10.0.3.3", 8080, PROTO_TCP, 2, REASON_PORT),
            ],
            top_capacity: 4096,
            ..Observed::default()
        };
        (c, o, state)
    }

    /// The report of `o` with the fixture's counters and state.
    fn report_of(
        o: &Observed,
        previous: Option<&Snapshot>,
        now_unix_ms: u64,
    ) -> (Report, Snapshot) {
        let (c, _, state) = inputs_fixture();
        build(&Inputs {
            iface: "eth1",
            counters: &c,
            observed: o,
            state: Some(&state),
            dns: None,
            log: None,
            clock: WallClock::with_offset(0),
            now_unix_ms,
            previous,
            top_n: 20,
            daemon_running: false,
        })
    }

    #[test]
    fn report_groups_covers_and_suggests() {
        let (c, o, state) = inputs_fixture();
        let inp = Inputs {
            iface: "eth1",
            counters: &c,
            observed: &o,
            state: Some(&state),
            dns: None,
            log: None,
            clock: WallClock::with_offset(0),
            now_unix_ms: 1_000_000,
            previous: None,
            top_n: 20,
            daemon_running: false,
        };
        let (r, snap) = build(&inp);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(r.coverage.seen.len(), 1);
        assert_eq!(r.coverage.seen[0].requirement, "seen");
        assert_eq!(r.coverage.never[0].requirement, "never");
        assert_eq!(r.suggestions.len(), 2);
        assert!(r.suggestions[0].toml.contains("10.0.7.7/32"));
        assert!(r.suggestions[0].why.contains("no rule covers"));
        assert!(
            r.suggestions[1].why.contains("user:web (tcp 80)"),
            "{}",
            r.suggestions[1].why
        );
        assert!(v["rules"][0]["delta"].is_null());
        assert_eq!(v["drops"].as_array().unwrap().len(), 2);
        let table = render_table(&r);
        assert!(
            table.contains("CATALOG COVERAGE") && table.contains("10.0.7.7"),
            "{table}"
        );

        // A second report with more traffic: deltas.
        let (mut c2, mut o2, _) = inputs_fixture();
        c2.rules.insert(
            1,
            Counter {
                packets: 15,
                bytes: 1500,
            },
        );
        c2.actions[ACTION_PASS as usize] = Counter {
            packets: 15,
            bytes: 1500,
        };
        o2.top[0].packets = 9;
        let inp2 = Inputs {
            counters: &c2,
            observed: &o2,
            previous: Some(&snap),
            now_unix_ms: 1_010_000,
            ..inp
        };
        let (r2, _) = build(&inp2);
        let sl = r2.since_last.as_ref().unwrap();
        assert!(!sl.counters_reset);
        assert!((sl.seconds - 10.0).abs() < 1e-9);
        let seen = r2.rules.iter().find(|x| x.id == 1).unwrap();
        assert_eq!(seen.count.delta.unwrap().packets, 5);
        assert_eq!(r2.top_denied.top[0].count.delta.unwrap().packets, 4);
        assert!(render_table(&r2).contains("+5"));

        // The table evicted the entry and created it again: fewer packets than last
        // time, but all of them new.
        let (_, mut o3, _) = inputs_fixture();
        o3.top[0].packets = 3;
        o3.top[0].first_seen_ns = 50;
        o3.top[0].last_seen_ns = 60;
        let (r3, snap3) = report_later(&o3, Some(&snap));
        assert_eq!(top_delta(&r3), 3);
        assert_eq!(snap3.top_first_seen.get(FIXTURE_TOP_KEY), Some(&50));
        // The same entry again: deltas from its new total.
        o3.top[0].packets = 7;
        let (r4, _) = report_later(&o3, Some(&snap3));
        assert_eq!(top_delta(&r4), 4);
        // A snapshot without last-seen times (an older version's) compares
        // first-seen times; one without either compares totals.
        let mut old = snap.clone();
        old.top_last_seen.clear();
        let (r5, _) = report_later(&o3, Some(&old));
        assert_eq!(top_delta(&r5), 7);
        old.top_first_seen.clear();
        let (r5, _) = report_later(&o3, Some(&old));
        assert_eq!(top_delta(&r5), 2);
    }

    /// A read that meets the batch holding a key's earliest drops moving into the
    /// table sees the key first seen later than before, but not after the last drop
    /// the previous report saw: not a new entry, and its drops not new.
    #[test]
    fn a_later_first_drop_within_the_counted_ones_is_not_a_new_entry() {
        let key = FIXTURE_TOP_KEY;
        let (_, mut o, _) = inputs_fixture();
        // CPU 0's batch (drops at 10..=20) and CPU 1's value (drops at 15..=40).
        o.top[0].packets = 30;
        o.top[0].first_seen_ns = 10;
        o.top[0].last_seen_ns = 40;
        let (_, s1) = report_later(&o, None);
        assert_eq!(s1.top_last_seen.get(key), Some(&40));
        // CPU 0's batch of 12 moves: CPU 1's 18 only, first seen at 15, plus 2 new
        // drops at 41 and 42, which also move the last drop on.
        o.top[0].packets = 20;
        o.top[0].first_seen_ns = 15;
        o.top[0].last_seen_ns = 42;
        let (r2, s2) = report_later(&o, Some(&s1));
        assert_eq!(top_delta(&r2), 0, "a dip, not 20 new drops");
        assert_eq!(s2.top.get(key).map(|v| v[0]), Some(30));
        assert_eq!(s2.top_last_seen.get(key), Some(&42));
        // The batch is back: 32 in all, 2 of them new.
        o.top[0].packets = 32;
        o.top[0].first_seen_ns = 10;
        let (r3, s3) = report_later(&o, Some(&s2));
        assert_eq!(top_delta(&r3), 2);
        // A dip whose last drop is earlier keeps the latest one read.
        o.top[0].last_seen_ns = 30;
        let (_, s4) = report_later(&o, Some(&s3));
        assert_eq!(s4.top_last_seen.get(key), Some(&42));
        // Evicted and created again after the last drop read: all new.
        o.top[0].packets = 3;
        o.top[0].first_seen_ns = 43;
        o.top[0].last_seen_ns = 45;
        let (r5, s5) = report_later(&o, Some(&s4));
        assert_eq!(top_delta(&r5), 3);
        assert_eq!(s5.top_last_seen.get(key), Some(&45));
    }

    /// The top-denied key of `inputs_fixture`'s first entry.
    const FIXTURE_TOP_KEY: &str = "outbound|10.0.7.7|5300|udp";

    /// The report of `o` 10 s after the fixture's first one.
    fn report_later(o: &Observed, previous: Option<&Snapshot>) -> (Report, Snapshot) {
        report_of(o, previous, 1_010_000)
    }

    /// The packets delta of the report's first top-denied row.
    fn top_delta(r: &Report) -> u64 {
        r.top_denied.top[0].count.delta.unwrap().packets
    }

    /// A read that meets a batch of drops moving from a per-CPU slot into the table
    /// lacks it: the key's total dips, or the key is missing. The deltas after it
    /// count the batch once.
    #[test]
    fn a_dip_or_a_missing_key_does_not_count_a_batch_twice() {
        let key = FIXTURE_TOP_KEY;
        let (_, mut o, _) = inputs_fixture();
        o.top[0].packets = 10;
        o.top[0].bytes = 1000;
        let (_, s1) = report_later(&o, None);
        // A batch of 4 is moving: the total dips to 6, no delta.
        o.top[0].packets = 6;
        o.top[0].bytes = 600;
        let (r2, s2) = report_later(&o, Some(&s1));
        assert_eq!(top_delta(&r2), 0);
        assert_eq!(
            s2.top.get(key),
            Some(&[10, 1000]),
            "the highest total is kept"
        );
        // The batch arrived, with 3 new drops: 13 in all, 3 of them new.
        o.top[0].packets = 13;
        o.top[0].bytes = 1300;
        let (r3, s3) = report_later(&o, Some(&s2));
        assert_eq!(top_delta(&r3), 3);
        assert_eq!(s3.top.get(key), Some(&[13, 1300]));

        // The key is missing from a read: its baseline is kept once.
        let mut gone = o.clone();
        gone.top.clear();
        let (r4, s4) = report_later(&gone, Some(&s3));
        assert!(r4.top_denied.top.is_empty());
        assert_eq!(s4.top.get(key), Some(&[13, 1300]));
        assert!(s4.top_carried.contains(key));
        // Back with 2 more: 2 new, not 15.
        o.top[0].packets = 15;
        o.top[0].bytes = 1500;
        let (r5, s5) = report_later(&o, Some(&s4));
        assert_eq!(top_delta(&r5), 2);
        assert!(!s5.top_carried.contains(key));
        // Missing twice: the table evicted it, and the baseline goes.
        let (_, s6) = report_later(&gone, Some(&s4));
        assert!(!s6.top.contains_key(key));
        assert!(!s6.top_first_seen.contains_key(key));
    }

    #[test]
    fn unread_slot_copies_are_said() {
        let (_, mut o, _) = inputs_fixture();
        o.top_torn = 2;
        let (r, _) = report_of(&o, None, 1_000_000);
        assert_eq!(r.top_denied.unread_slots, 2);
        assert!(render_table(&r).contains("2 per-CPU slot copies changed while read"));
    }
}
