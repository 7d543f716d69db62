//! The address table both modes feed: which addresses each matched name resolved to,
//! until when, and for which rules. Pure: no I/O, no clock (callers pass `now`, a
//! monotonic time since an origin of their choosing), no sink calls (methods return
//! what to allow and revoke; the service calls the sink with the table locked).
//!
//! Lifetimes, per (name, address):
//! - an answer sets `expires = now + clamp(TTL, min_ttl, max_ttl)`; a later answer
//!   only ever moves it later (a client may still hold the earlier, longer answer);
//! - while the name's refreshes fail (upstream down), it is *stale* and the entry
//!   stays for up to `max_stale` past `expires` (the last good answer is kept);
//! - then `grace` more, and [`AddressTable::sweep`] removes it;
//! - a name keeps at most `max_ips_per_name` addresses: the least recently seen ones
//!   not in the latest answer are evicted first (logged). A single answer larger than
//!   the cap is kept whole (the client was given all of it) and counted.
//!
//! An address is revoked for a rule only when no other live name of that rule still
//! maps to it, and never while the `in_use` hook says a tracked connection uses it
//! (such addresses are *held* and re-checked on every sweep).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Time limits and caps of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub grace: Duration,
    pub max_stale: Duration,
    pub max_ips_per_name: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        let d = super::config::DnsConfig::default();
        d.table()
    }
}

/// "Is this address used by a tracked connection?" (conntrack supplies it; the
/// default says no).
pub type InUse = Arc<dyn Fn(&IpAddr) -> bool + Send + Sync>;

/// Address -> rule ids, sorted by address.
pub type AddrRules = Vec<(IpAddr, Vec<u32>)>;

#[derive(Clone, Copy, Debug)]
struct AddrEntry {
    first_seen: Duration,
    last_seen: Duration,
    expires: Duration,
}

#[derive(Clone, Debug, Default)]
struct NameEntry {
    rules: Vec<u32>,
    addrs: BTreeMap<IpAddr, AddrEntry>,
    /// Client queries (proxy) answered with addresses of this name.
    hits: u64,
    /// Good answers recorded (proxy and resolver).
    answers: u64,
    /// Kept even without addresses (resolver-managed names).
    pinned: bool,
    last_ok: Option<Duration>,
    stale_since: Option<Duration>,
    failures: u64,
    last_error: Option<String>,
}

/// What a change requires of the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Every address of the answer with all its live rule ids (allow is idempotent).
    pub allow: AddrRules,
    /// Evicted addresses whose rule ids are no longer live.
    pub revoke: AddrRules,
}

/// The state of one address of a name, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrState {
    /// Within its TTL.
    Live,
    /// Past its TTL, kept because the name's refreshes fail (at most `max_stale`).
    Stale,
    /// Past its TTL (and staleness), within the grace period.
    Grace,
}

/// One address of a name, for reports. Times are relative to the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrReport {
    pub addr: IpAddr,
    pub state: AddrState,
    /// Milliseconds until the TTL-based expiry (negative: past it).
    pub expires_in_ms: i64,
    /// Milliseconds until the sweep removes (and revokes) it.
    pub removed_in_ms: i64,
    pub first_seen_ago_ms: u64,
    pub last_seen_ago_ms: u64,
}

/// One name, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameReport {
    pub name: String,
    pub rules: Vec<u32>,
    pub hits: u64,
    pub answers: u64,
    /// Resolver-managed (kept without addresses).
    pub pinned: bool,
    pub stale: bool,
    pub stale_for_ms: Option<u64>,
    pub last_ok_ago_ms: Option<u64>,
    pub failures: u64,
    pub last_error: Option<String>,
    pub addresses: Vec<AddrReport>,
}

/// An address due for revocation but used by a tracked connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReport {
    pub addr: IpAddr,
    /// Rule id -> the name it was allowed through.
    pub rules: BTreeMap<u32, String>,
}

/// See the module documentation.
pub struct AddressTable {
    cfg: TableConfig,
    names: BTreeMap<String, NameEntry>,
    by_addr: HashMap<IpAddr, BTreeSet<String>>,
    held: BTreeMap<IpAddr, BTreeMap<u32, String>>,
    in_use: InUse,
    evicted: u64,
    over_cap: u64,
}

impl std::fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressTable")
            .field("cfg", &self.cfg)
            .field("names", &self.names.len())
            .field("addresses", &self.by_addr.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v.dedup();
    v
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn signed_ms(to: Duration, from: Duration) -> i64 {
    if to >= from {
        i64::try_from(ms(to - from)).unwrap_or(i64::MAX)
    } else {
        -i64::try_from(ms(from - to)).unwrap_or(i64::MAX)
    }
}

impl AddressTable {
    #[must_use]
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            cfg,
            names: BTreeMap::new(),
            by_addr: HashMap::new(),
            held: BTreeMap::new(),
            in_use: Arc::new(|_| false),
            evicted: 0,
            over_cap: 0,
        }
    }

    #[must_use]
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// Replace the "in use by a tracked connection" hook consulted by sweeps.
    pub fn set_in_use(&mut self, f: InUse) {
        self.in_use = f;
    }

    /// `now + clamp(ttl, min_ttl, max_ttl)`.
    #[must_use]
    pub fn deadline(&self, now: Duration, ttl: u32) -> Duration {
        let max = self.cfg.max_ttl.max(self.cfg.min_ttl);
        now + Duration::from_secs(u64::from(ttl)).clamp(self.cfg.min_ttl, max)
    }

    /// Keep `name` even while it has no addresses (resolver-managed names).
    pub fn pin(&mut self, name: &str, rules: &[u32]) {
        let e = self.names.entry(name.to_owned()).or_default();
        e.rules = sorted(rules.to_vec());
        e.pinned = true;
    }

    /// Record a good answer: `name` (matched by `rules`) resolved to `addrs` (address,
    /// TTL in seconds, the smallest along the CNAME chain). An empty `addrs` is a good
    /// negative answer: it clears staleness, existing addresses expire normally.
    pub fn record(
        &mut self,
        now: Duration,
        name: &str,
        rules: &[u32],
        addrs: &[(IpAddr, u32)],
    ) -> Change {
        let cap = self.cfg.max_ips_per_name.max(1);
        let deadlines: Vec<(IpAddr, Duration)> = addrs
            .iter()
            .map(|&(a, ttl)| (a, self.deadline(now, ttl)))
            .collect();
        if addrs.is_empty() && !self.names.contains_key(name) {
            return Change::default();
        }
        let e = self.names.entry(name.to_owned()).or_default();
        e.rules = sorted(rules.to_vec());
        e.answers += 1;
        e.last_ok = Some(now);
        e.stale_since = None;
        e.last_error = None;
        for &(a, exp) in &deadlines {
            let ae = e.addrs.entry(a).or_insert(AddrEntry {
                first_seen: now,
                last_seen: now,
                expires: exp,
            });
            ae.last_seen = now;
            ae.expires = ae.expires.max(exp);
        }
        let mut evicted = Vec::new();
        if e.addrs.len() > cap {
            let fresh: BTreeSet<IpAddr> = addrs.iter().map(|a| a.0).collect();
            let mut old: Vec<(Duration, Duration, IpAddr)> = e
                .addrs
                .iter()
                .filter(|(a, _)| !fresh.contains(a))
                .map(|(a, ae)| (ae.last_seen, ae.expires, *a))
                .collect();
            old.sort_unstable();
            let excess = e.addrs.len() - cap;
            for (_, _, a) in old.into_iter().take(excess) {
                e.addrs.remove(&a);
                evicted.push(a);
            }
            if e.addrs.len() > cap {
                self.over_cap += 1;
                tracing::warn!(
                    %name,
                    addresses = e.addrs.len(),
                    max_ips_per_name = cap,
                    "one answer holds more addresses than max_ips_per_name: all kept (the client got all of them)"
                );
            }
        }
        let rules = e.rules.clone();
        for &(a, _) in addrs {
            self.by_addr.entry(a).or_default().insert(name.to_owned());
        }
        for a in &evicted {
            self.unlink(*a, name);
            self.evicted += 1;
            tracing::info!(%name, addr = %a, max_ips_per_name = cap, "address evicted (oldest beyond max_ips_per_name)");
        }
        let mut allow: AddrRules = deadlines
            .iter()
            .map(|&(a, _)| (a, self.live_rules(&a)))
            .collect();
        allow.sort();
        allow.dedup();
        let revoke = self.revocations(
            evicted
                .into_iter()
                .map(|a| (a, rules.clone(), name.to_owned())),
        );
        Change { allow, revoke }
    }

    /// A refresh of `name` failed (upstream error or timeout): its addresses become
    /// stale (kept up to `max_stale` past their expiry). Returns whether the name just
    /// became stale. Unknown names are ignored.
    pub fn record_failure(&mut self, now: Duration, name: &str, error: &str) -> bool {
        let Some(e) = self.names.get_mut(name) else {
            return false;
        };
        e.failures += 1;
        e.last_error = Some(error.to_owned());
        if e.stale_since.is_none() {
            e.stale_since = Some(now);
            return true;
        }
        false
    }

    /// How many addresses `name` has now.
    #[must_use]
    pub fn address_count(&self, name: &str) -> usize {
        self.names.get(name).map_or(0, |e| e.addrs.len())
    }

    /// Count a client query answered with addresses of `name`.
    pub fn hit(&mut self, name: &str) {
        if let Some(e) = self.names.get_mut(name) {
            e.hits += 1;
        }
    }

    /// Every rule id live for `addr` (through any name), sorted.
    #[must_use]
    pub fn live_rules(&self, addr: &IpAddr) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .by_addr
            .get(addr)
            .into_iter()
            .flatten()
            .filter_map(|n| self.names.get(n))
            .flat_map(|e| e.rules.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn unlink(&mut self, addr: IpAddr, name: &str) {
        if let Some(s) = self.by_addr.get_mut(&addr) {
            s.remove(name);
            if s.is_empty() {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Of `(addr, rules, name)` removed from names, what to revoke now: rule ids no
    /// longer live through another name; held instead while `in_use(addr)`.
    fn revocations(
        &mut self,
        removed: impl IntoIterator<Item = (IpAddr, Vec<u32>, String)>,
    ) -> AddrRules {
        let mut per: BTreeMap<IpAddr, BTreeMap<u32, String>> = BTreeMap::new();
        for (a, rules, name) in removed {
            let m = per.entry(a).or_default();
            for r in rules {
                m.entry(r).or_insert_with(|| name.clone());
            }
        }
        let mut out = Vec::new();
        for (a, mut rules) in per {
            let live = self.live_rules(&a);
            rules.retain(|r, _| !live.contains(r));
            if rules.is_empty() {
                continue;
            }
            if (self.in_use)(&a) {
                tracing::debug!(addr = %a, "expired address held: in use by a tracked connection");
                self.held.entry(a).or_default().extend(rules);
            } else {
                // Revoked now: an older hold of the same rules is settled too.
                if let Some(h) = self.held.get_mut(&a) {
                    h.retain(|r, _| !rules.contains_key(r));
                    if h.is_empty() {
                        self.held.remove(&a);
                    }
                }
                out.push((a, rules.into_keys().collect()));
            }
        }
        out
    }

    /// Remove what has run out (TTL, staleness and grace), and return what to revoke:
    /// rule ids per address that no live name still maps to and that no tracked
    /// connection uses. Held addresses are re-checked.
    pub fn sweep(&mut self, now: Duration) -> AddrRules {
        let cfg = self.cfg;
        let mut removed: Vec<(IpAddr, Vec<u32>, String)> = Vec::new();
        for (name, e) in &mut self.names {
            let extra = if e.stale_since.is_some() {
                cfg.max_stale
            } else {
                Duration::ZERO
            };
            e.addrs.retain(|a, ae| {
                let keep = now < ae.expires + extra + cfg.grace;
                if !keep {
                    removed.push((*a, e.rules.clone(), name.clone()));
                }
                keep
            });
        }
        for (a, _, name) in &removed {
            self.unlink(*a, name);
        }
        self.names.retain(|_, e| e.pinned || !e.addrs.is_empty());
        // Held addresses first: those no longer in use (or live again) are settled.
        let mut out: AddrRules = Vec::new();
        let held = std::mem::take(&mut self.held);
        for (a, mut rules) in held {
            let live = self.live_rules(&a);
            rules.retain(|r, _| !live.contains(r));
            if rules.is_empty() {
                continue;
            }
            if (self.in_use)(&a) {
                self.held.insert(a, rules);
            } else {
                out.push((a, rules.into_keys().collect()));
            }
        }
        out.extend(self.revocations(removed));
        out.sort();
        // The same address may come from both lists: merge.
        let mut merged: AddrRules = Vec::with_capacity(out.len());
        for (a, r) in out {
            match merged.last_mut() {
                Some((la, lr)) if *la == a => {
                    lr.extend(r);
                    lr.sort_unstable();
                    lr.dedup();
                }
                _ => merged.push((a, r)),
            }
        }
        merged
    }

    /// The names (and their rule ids) through which `addr` is allowed now, held
    /// addresses included.
    #[must_use]
    pub fn who(&self, addr: &IpAddr) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = Vec::new();
        for n in self.by_addr.get(addr).into_iter().flatten() {
            if let Some(e) = self.names.get(n) {
                v.extend(e.rules.iter().map(|r| (n.clone(), *r)));
            }
        }
        if let Some(h) = self.held.get(addr) {
            v.extend(h.iter().map(|(r, n)| (n.clone(), *r)));
        }
        v.sort();
        v.dedup();
        v
    }

    /// What the datapath should hold: address -> rule ids (live and held).
    #[must_use]
    pub fn allowed(&self) -> BTreeMap<IpAddr, BTreeSet<u32>> {
        let mut out: BTreeMap<IpAddr, BTreeSet<u32>> = BTreeMap::new();
        for a in self.by_addr.keys() {
            out.entry(*a).or_default().extend(self.live_rules(a));
        }
        for (a, rules) in &self.held {
            out.entry(*a).or_default().extend(rules.keys());
        }
        out
    }

    /// Number of names and of distinct live addresses.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.names.len(), self.by_addr.len())
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.held.is_empty()
    }

    /// Addresses evicted by the per-name cap so far, and answers larger than the cap.
    #[must_use]
    pub fn cap_counts(&self) -> (u64, u64) {
        (self.evicted, self.over_cap)
    }

    /// Every name with its addresses, times relative to `now`.
    #[must_use]
    pub fn snapshot(&self, now: Duration) -> (Vec<NameReport>, Vec<HeldReport>) {
        let cfg = self.cfg;
        let names = self
            .names
            .iter()
            .map(|(name, e)| {
                let extra = if e.stale_since.is_some() {
                    cfg.max_stale
                } else {
                    Duration::ZERO
                };
                NameReport {
                    name: name.clone(),
                    rules: e.rules.clone(),
                    hits: e.hits,
                    answers: e.answers,
                    pinned: e.pinned,
                    stale: e.stale_since.is_some(),
                    stale_for_ms: e.stale_since.map(|s| ms(now.saturating_sub(s))),
                    last_ok_ago_ms: e.last_ok.map(|s| ms(now.saturating_sub(s))),
                    failures: e.failures,
                    last_error: e.last_error.clone(),
                    addresses: e
                        .addrs
                        .iter()
                        .map(|(a, ae)| AddrReport {
                            addr: *a,
                            state: if now < ae.expires {
                                AddrState::Live
                            } else if now < ae.expires + extra {
                                AddrState::Stale
                            } else {
                                AddrState::Grace
                            },
                            expires_in_ms: signed_ms(ae.expires, now),
                            removed_in_ms: signed_ms(ae.expires + extra + cfg.grace, now),
                            first_seen_ago_ms: ms(now.saturating_sub(ae.first_seen)),
                            last_seen_ago_ms: ms(now.saturating_sub(ae.last_seen)),
                        })
                        .collect(),
                }
            })
            .collect();
        let held = self
            .held
            .iter()
            .map(|(a, r)| HeldReport {
                addr: *a,
                rules: r.clone(),
            })
            .collect();
        (names, held)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> TableConfig {
        TableConfig {
            min_ttl: 5 * S,
            max_ttl: 100 * S,
            grace: 10 * S,
            max_stale: 50 * S,
            max_ips_per_name: 3,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn ttl_is_clamped_and_grace_applies() {
        let mut t = AddressTable::new(cfg());
        let a = ip("10.0.0.1");
        let c = t.record(secs(0), "pypi.org", &[1], &[(a, 1)]);
        assert_eq!(c.allow, vec![(a, vec![1])]);
        assert!(c.revoke.is_empty());
        // TTL 1 clamped up to min_ttl 5, then grace 10: removed at 15.
        assert!(t.sweep(secs(14)).is_empty());
        assert_eq!(t.who(&a), vec![("pypi.org".into(), 1)]);
        assert_eq!(t.sweep(secs(15)), vec![(a, vec![1])]);
        assert!(t.who(&a).is_empty());
        assert!(t.is_empty());
        // TTL 1000 clamped down to max_ttl 100.
        t.record(secs(0), "pypi.org", &[1], &[(a, 1000)]);
        assert!(t.sweep(secs(109)).is_empty());
        assert_eq!(t.sweep(secs(110)), vec![(a, vec![1])]);
    }

    #[test]
    fn expiry_only_moves_later() {
        let mut t = AddressTable::new(cfg());
        let a = ip("10.0.0.1");
        t.record(secs(0), "n", &[1], &[(a, 60)]);
        t.record(secs(1), "n", &[1], &[(a, 5)]);
        // The client of the first answer may use it until 60.
        assert!(t.sweep(secs(69)).is_empty());
        assert_eq!(t.sweep(secs(70)).len(), 1);
    }

    #[test]
    fn shared_addresses_are_revoked_per_rule_only_when_no_name_needs_them() {
        let mut t = AddressTable::new(cfg());
        let cdn = ip("192.0.2.7");
        t.record(secs(0), "a.example", &[1], &[(cdn, 10)]);
        let c = t.record(secs(0), "b.example", &[1, 2], &[(cdn, 50)]);
        assert_eq!(c.allow, vec![(cdn, vec![1, 2])]);
        // a.example runs out at 20, b.example still maps rule 1 and 2 to it.
        assert!(t.sweep(secs(25)).is_empty());
        assert_eq!(
            t.who(&cdn),
            vec![("b.example".into(), 1), ("b.example".into(), 2)]
        );
        assert_eq!(t.sweep(secs(60)), vec![(cdn, vec![1, 2])]);

        // Different rules: only the rule of the expired name goes.
        t.record(secs(100), "a.example", &[1], &[(cdn, 10)]);
        t.record(secs(100), "c.example", &[3], &[(cdn, 50)]);
        assert_eq!(t.sweep(secs(120)), vec![(cdn, vec![1])]);
        assert_eq!(t.allowed()[&cdn], BTreeSet::from([3]));
    }

    #[test]
    fn stale_names_keep_the_last_good_answer_up_to_max_stale() {
        let mut t = AddressTable::new(cfg());
        let a = ip("10.0.0.1");
        t.record(secs(0), "n", &[1], &[(a, 20)]);
        assert!(t.record_failure(secs(18), "n", "timeout"));
        assert!(!t.record_failure(secs(19), "n", "timeout"));
        assert!(!t.record_failure(secs(0), "unknown", "timeout"));
        // expires 20 + max_stale 50 + grace 10 = 80.
        assert!(t.sweep(secs(79)).is_empty());
        let (names, _) = t.snapshot(secs(30));
        assert_eq!(names[0].addresses[0].state, AddrState::Stale);
        assert!(names[0].stale);
        assert_eq!(names[0].failures, 2);
        assert_eq!(names[0].last_error.as_deref(), Some("timeout"));
        let (names, _) = t.snapshot(secs(75));
        assert_eq!(names[0].addresses[0].state, AddrState::Grace);
        assert_eq!(t.sweep(secs(80)), vec![(a, vec![1])]);

        // Recovery clears staleness: old addresses then expire normally.
        t.record(secs(100), "n", &[1], &[(a, 20)]);
        t.record_failure(secs(121), "n", "servfail");
        let b = ip("10.0.0.2");
        t.record(secs(122), "n", &[1], &[(b, 20)]);
        assert_eq!(t.sweep(secs(130)), vec![(a, vec![1])]);
    }

    #[test]
    fn cap_evicts_least_recently_seen_not_in_the_latest_answer() {
        let mut t = AddressTable::new(cfg());
        let addrs: Vec<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        t.record(secs(0), "n", &[1], &[(addrs[0], 60)]);
        t.record(secs(1), "n", &[1], &[(addrs[1], 60)]);
        t.record(secs(2), "n", &[1], &[(addrs[2], 60)]);
        t.record(secs(3), "n", &[1], &[(addrs[0], 60)]); // seen again: now the newest
        let c = t.record(secs(4), "n", &[1], &[(addrs[3], 60)]);
        assert_eq!(c.revoke, vec![(addrs[1], vec![1])], "oldest last_seen goes");
        assert_eq!(t.cap_counts(), (1, 0));
        // An answer larger than the cap is kept whole.
        let big: Vec<(IpAddr, u32)> = addrs.iter().map(|a| (*a, 60)).collect();
        let c = t.record(secs(5), "n", &[1], &big);
        assert!(c.revoke.is_empty());
        assert_eq!(c.allow.len(), 5);
        assert_eq!(t.cap_counts(), (1, 1));
        // An evicted address another name still maps is not revoked.
        let mut t = AddressTable::new(cfg());
        t.record(secs(0), "other", &[1], &[(addrs[0], 60)]);
        for (i, a) in addrs.iter().enumerate().take(4) {
            let c = t.record(secs(i as u64), "n", &[1], &[(*a, 60)]);
            assert!(c.revoke.is_empty(), "{c:?}");
        }
        assert_eq!(t.cap_counts(), (1, 0));
    }

    #[test]
    fn in_use_addresses_are_held_until_released() {
        let mut t = AddressTable::new(cfg());
        let busy = Arc::new(AtomicBool::new(true));
        let b2 = busy.clone();
        let a = ip("10.0.0.1");
        t.set_in_use(Arc::new(move |x| {
            *x == "10.0.0.1".parse::<IpAddr>().unwrap() && b2.load(Ordering::SeqCst)
        }));
        t.record(secs(0), "n", &[1], &[(a, 5)]);
        assert!(t.sweep(secs(100)).is_empty());
        assert_eq!(t.who(&a), vec![("n".into(), 1)]);
        assert_eq!(t.snapshot(secs(100)).1.len(), 1);
        assert!(t.sweep(secs(101)).is_empty());
        busy.store(false, Ordering::SeqCst);
        assert_eq!(t.sweep(secs(102)), vec![(a, vec![1])]);
        assert!(t.sweep(secs(103)).is_empty());
        assert!(t.is_empty());

        // Held, then answered again: live again, nothing to revoke.
        busy.store(true, Ordering::SeqCst);
        t.record(secs(200), "n", &[1], &[(a, 5)]);
        assert!(t.sweep(secs(300)).is_empty());
        t.record(secs(301), "n", &[1], &[(a, 5)]);
        busy.store(false, Ordering::SeqCst);
        assert!(t.sweep(secs(302)).is_empty());
        assert_eq!(t.sweep(secs(316)), vec![(a, vec![1])]);
    }

    #[test]
    fn pinned_names_stay_and_hits_count() {
        let mut t = AddressTable::new(cfg());
        t.pin("pypi.org", &[4]);
        assert!(t.sweep(secs(1000)).is_empty());
        assert_eq!(t.len(), (1, 0));
        t.record(secs(0), "pypi.org", &[4], &[]);
        t.hit("pypi.org");
        t.hit("nothing.example");
        let (names, _) = t.snapshot(secs(1));
        assert_eq!(names[0].hits, 1);
        assert_eq!(names[0].answers, 1);
        // A negative answer for an unknown name creates nothing.
        assert_eq!(
            t.record(secs(0), "nx.example", &[1], &[]),
            Change::default()
        );
        assert_eq!(t.len(), (1, 0));
    }

    /// Random operations; after each step the table's own view must equal what its
    /// changes and sweeps told the sink, and nothing still live may ever be revoked.
    #[test]
    fn sink_view_matches_the_table_under_random_operations() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..150 {
            let mut t = AddressTable::new(TableConfig {
                max_ips_per_name: rng.random_range(1..4),
                ..cfg()
            });
            let in_use = Arc::new(AtomicBool::new(false));
            let iu = in_use.clone();
            t.set_in_use(Arc::new(move |a: &IpAddr| {
                iu.load(Ordering::SeqCst) && a.to_string().ends_with(".1")
            }));
            let names = ["a", "b", "c", "d"];
            let rules_of = |n: &str| -> Vec<u32> {
                match n {
                    "a" => vec![1],
                    "b" => vec![1, 2],
                    "c" => vec![3],
                    _ => vec![2],
                }
            };
            let mut sink: BTreeMap<IpAddr, BTreeSet<u32>> = BTreeMap::new();
            let mut now = secs(0);
            for step in 0..300 {
                now += Duration::from_millis(rng.random_range(0..20_000));
                match rng.random_range(0..10) {
                    0..=5 => {
                        let n = names[rng.random_range(0..names.len())];
                        let k = rng.random_range(0..4);
                        let addrs: Vec<(IpAddr, u32)> = (0..k)
                            .map(|_| {
                                (
                                    ip(&format!("10.0.0.{}", rng.random_range(1..6))),
                                    rng.random_range(0..40),
                                )
                            })
                            .collect();
                        let c = t.record(now, n, &rules_of(n), &addrs);
                        for (a, r) in c.allow {
                            sink.entry(a).or_default().extend(r);
                        }
                        for (a, r) in c.revoke {
                            let live = t.live_rules(&a);
                            assert!(r.iter().all(|x| !live.contains(x)), "revoked live rule");
                            let s = sink.entry(a).or_default();
                            r.iter().for_each(|x| {
                                s.remove(x);
                            });
                        }
                    }
                    6 => {
                        let n = names[rng.random_range(0..names.len())];
                        t.record_failure(now, n, "x");
                    }
                    7 => in_use.store(rng.random_bool(0.5), Ordering::SeqCst),
                    _ => {
                        for (a, r) in t.sweep(now) {
                            let live = t.live_rules(&a);
                            assert!(r.iter().all(|x| !live.contains(x)), "revoked live rule");
                            let s = sink.entry(a).or_default();
                            r.iter().for_each(|x| {
                                s.remove(x);
                            });
                        }
                    }
                }
                sink.retain(|_, s| !s.is_empty());
                assert_eq!(sink, t.allowed(), "round {round} step {step}");
            }
            in_use.store(false, Ordering::SeqCst);
            for (a, r) in t.sweep(now + secs(10_000)) {
                let s = sink.entry(a).or_default();
                r.iter().for_each(|x| {
                    s.remove(x);
                });
            }
            sink.retain(|_, s| !s.is_empty());
            assert!(sink.is_empty(), "everything revoked in the end: {sink:?}");
            assert!(t.is_empty());
        }
    }
}
