//! The daemon's hold on the datapath: the applied policy plus the addresses DNS has
//! learned for host-name rules, kept consistent across reloads.
//!
//! - A learned address is written into the active slot at once, before the DNS
//!   answer goes out: a host entry (/32 or /128) whose port set is the union of the
//!   compiled entry that covered the address and the host-name rules' ports. One LPM
//!   update, so a packet sees the old or the new entry.
//! - A reload compiles the new rules *with* the learned addresses as prefixes of their
//!   rules, so the switched-to slot already holds them.
//! - A revoke (the DNS module lets an address go after TTL + grace, never while a
//!   tracked flow uses it) rebuilds the policy without it and switches, which also
//!   makes tracked flows check themselves against it again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tagwall_common::{ct::CtKey, policy::PortRule};

use crate::{
    compile::{CompileError, CompiledPolicy, compile, covering_set, normalize},
    dataplane::{ApplyStats, Dataplane, DataplaneError, Settings},
    dns::AddressSink,
    rules::{Direction, Rule},
};

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

struct Inner {
    dp: Dataplane,
    /// The policy's rules as built from the config (no learned addresses).
    rules: Vec<Rule>,
    settings: Settings,
    /// What the active slot holds (rules + learned addresses at the last rebuild).
    compiled: CompiledPolicy,
    /// Learned address -> the host-name rules it is allowed for.
    hosts: BTreeMap<IpAddr, BTreeSet<u32>>,
    /// Port sets written past the compiled ones in the active slot, by content.
    extra_sets: HashMap<Vec<PortRule>, u32>,
    next_set: u32,
    last: ApplyStats,
}

/// See the module docs. Shared (`Arc`) between the daemon and the DNS service.
pub struct Enforcer {
    inner: Mutex<Inner>,
    /// Addresses of tracked flows, refreshed at most once a second (DNS asks before
    /// letting an address go).
    in_use: Mutex<(Instant, HashSet<IpAddr>)>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn rules_with_hosts(&self) -> Vec<Rule> {
        let mut rules = self.rules.clone();
        for (addr, ids) in &self.hosts {
            for r in rules.iter_mut().filter(|r| ids.contains(&r.id)) {
                r.prefixes.push(IpNet::from(*addr));
            }
        }
        rules
    }

    fn rebuild(&mut self) -> Result<ApplyStats, EnforcerError> {
        let sets = self.dp.sets_per_slot() as usize;
        let compiled = compile(&self.rules_with_hosts(), sets)?;
        let stats = self.dp.apply(&compiled, &self.settings)?;
        self.compiled = compiled;
        self.extra_sets.clear();
        self.next_set = u32::try_from(self.compiled.sets.len()).expect("sets fit u32");
        self.last = stats;
        Ok(stats)
    }

    /// Write `addr`'s host entries for its current rules, one per direction.
    fn put(&mut self, addr: IpAddr) -> Result<(), EnforcerError> {
        let ids = self.hosts.get(&addr).cloned().unwrap_or_default();
        for dir in [Direction::Outbound, Direction::Inbound] {
            let own: Vec<PortRule> = self
                .rules
                .iter()
                .filter(|r| r.direction == dir && ids.contains(&r.id))
                .flat_map(|r| {
                    r.ports
                        .iter()
                        .map(move |p| PortRule::new(r.id, r.proto.0, p.lo, p.hi))
                })
                .collect();
            if own.is_empty() {
                continue;
            }
            let mut set: Vec<PortRule> = covering_set(&self.compiled, dir, addr)
                .map(<[PortRule]>::to_vec)
                .unwrap_or_default();
            set.extend(own);
            let set = normalize(set);
            if set.len() > tagwall_common::policy::MAX_PORT_RULES {
                // Too many rules meet at this address for one set: the compiler names
                // them.
                self.rebuild()?;
                return Ok(());
            }
            let index = if let Some(i) = self.extra_sets.get(&set) {
                *i
            } else {
                if self.next_set >= self.dp.sets_per_slot() {
                    // The slot's sets are used up: compile afresh (which dedups).
                    self.rebuild()?;
                    return Ok(());
                }
                let i = self.next_set;
                self.dp.write_active_set(i, &set)?;
                self.next_set += 1;
                self.extra_sets.insert(set, i);
                i
            };
            match self.dp.put_active_host(dir, addr, index) {
                // The active slot's lookup table is full: compile afresh; `apply`
                // moves a policy that does not fit to the LPM tries.
                Err(DataplaneError::LookupFull { .. }) => {
                    self.rebuild()?;
                    return Ok(());
                }
                r => r?,
            }
        }
        Ok(())
    }
}

impl Enforcer {
    /// Compile and apply `rules` on `dp`.
    ///
    /// # Errors
    /// Compile or map errors; nothing is switched then.
    pub fn new(
        dp: Dataplane,
        rules: Vec<Rule>,
        settings: Settings,
    ) -> Result<(Self, ApplyStats), EnforcerError> {
        let compiled = compile(&rules, dp.sets_per_slot() as usize)?;
        let mut inner = Inner {
            dp,
            rules,
            settings,
            compiled: CompiledPolicy::default(),
            hosts: BTreeMap::new(),
            extra_sets: HashMap::new(),
            next_set: 0,
            last: ApplyStats {
                slot: 0,
                generation: 0,
                prefixes: 0,
                sets: 0,
                removed_old: 0,
                lookup_nodes: None,
            },
        };
        let stats = inner.dp.apply(&compiled, &inner.settings)?;
        inner.next_set = u32::try_from(compiled.sets.len()).expect("sets fit u32");
        inner.compiled = compiled;
        inner.last = stats;
        Ok((
            Self {
                inner: Mutex::new(inner),
                in_use: Mutex::new((Instant::now() - Duration::from_secs(10), HashSet::new())),
            },
            stats,
        ))
    }

    /// Switch to a new policy (a reload). Learned addresses stay, for the rules whose
    /// ids they were learned for (`keep_hosts`), or are forgotten (the host-name rules
    /// changed, so DNS starts afresh).
    ///
    /// # Errors
    /// Compile or map errors; the old policy stays in force then.
    pub fn replace(
        &self,
        rules: Vec<Rule>,
        settings: Settings,
        keep_hosts: bool,
    ) -> Result<ApplyStats, EnforcerError> {
        let mut g = lock(&self.inner);
        let old = (
            std::mem::replace(&mut g.rules, rules),
            std::mem::replace(&mut g.settings, settings),
            if keep_hosts {
                g.hosts.clone()
            } else {
                std::mem::take(&mut g.hosts)
            },
        );
        match g.rebuild() {
            Ok(s) => Ok(s),
            Err(e) => {
                g.rules = old.0;
                g.settings = old.1;
                g.hosts = old.2;
                Err(e)
            }
        }
    }

    /// The last applied generation and its sizes.
    #[must_use]
    pub fn last(&self) -> ApplyStats {
        lock(&self.inner).last
    }

    /// Learned addresses and their rules.
    #[must_use]
    pub fn hosts(&self) -> BTreeMap<IpAddr, BTreeSet<u32>> {
        lock(&self.inner).hosts.clone()
    }

    /// Is a tracked flow using `addr`? From a snapshot of the flow table at most one
    /// second old.
    #[must_use]
    pub fn in_use(&self, addr: &IpAddr) -> bool {
        let mut snap = self
            .in_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if snap.0.elapsed() > Duration::from_secs(1) {
            let (flows, timeouts) = {
                let g = lock(&self.inner);
                (g.dp.flows().unwrap_or_default(), g.settings.conntrack)
            };
            let now = crate::reports::time::monotonic_ns();
            // Live flows only: not closed, not idle past their state's timeout (the
            // LRU table keeps dead entries until they are looked up or evicted).
            snap.1 = flows
                .iter()
                .filter(|(_, v)| {
                    v.state != tagwall_common::ct::CT_TCP_CLOSED
                        && timeouts.is_some_and(|t| !t.expired(v, v.proto, now))
                })
                .flat_map(|(k, _)| [key_addr(&k.addr_a), key_addr(&k.addr_b)])
                .collect();
            snap.0 = Instant::now();
        }
        snap.1.contains(addr)
    }

    /// Exclusive access to the datapath (attaching); DNS waits meanwhile.
    pub fn dataplane_mut(&self) -> DataplaneGuard<'_> {
        DataplaneGuard(lock(&self.inner))
    }

    /// Read access to the datapath (counters, flows).
    pub fn with_dataplane<T>(&self, f: impl FnOnce(&Dataplane) -> T) -> T {
        f(&lock(&self.inner).dp)
    }

    /// Give the datapath's aya-log reader to the caller.
    pub fn take_logger(&self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        lock(&self.inner).dp.take_logger()
    }

    /// Hand out as the DNS service's sink.
    #[must_use]
    pub fn sink(self: &Arc<Self>) -> Arc<dyn AddressSink> {
        self.clone()
    }
}

/// A flow-table address as an `IpAddr` (IPv4-mapped addresses as IPv4).
fn key_addr(words: &[u32; 4]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(CtKey::bytes(words));
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

impl AddressSink for Enforcer {
    fn allow(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        let mut g = lock(&self.inner);
        let entry = g.hosts.entry(addr).or_default();
        let before = entry.clone();
        entry.extend(rule_ids.iter().copied());
        if *entry == before {
            return Ok(());
        }
        g.put(addr).map_err(|e| e.to_string())
    }

    fn revoke(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        let mut g = lock(&self.inner);
        let Some(entry) = g.hosts.get_mut(&addr) else {
            return Ok(());
        };
        let before = entry.len();
        for id in rule_ids {
            entry.remove(id);
        }
        if entry.len() == before {
            return Ok(());
        }
        if entry.is_empty() {
            g.hosts.remove(&addr);
        }
        g.rebuild().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Exclusive access to the enforcer's datapath.
pub struct DataplaneGuard<'a>(MutexGuard<'a, Inner>);

impl std::ops::Deref for DataplaneGuard<'_> {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        &self.0.dp
    }
}

impl std::ops::DerefMut for DataplaneGuard<'_> {
    fn deref_mut(&mut self) -> &mut Dataplane {
        &mut self.0.dp
    }
}
