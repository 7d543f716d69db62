//! Rules -> LPM entries and port sets.
//!
//! An LPM trie returns one entry: the longest stored prefix containing the address.
//! The datapath allows a packet when *any* rule covering its address allows the
//! protocol/port, crediting the lowest rule id. So every stored prefix must carry the
//! union of the port rules of all rules whose prefixes cover it ("flattening"):
//!
//! 1. group port rules by prefix (identical prefixes merged);
//! 2. walk prefixes in address order (a parent sorts before its children) with a stack
//!    of ancestors: `set(p) = normalize(set(parent) ∪ own(p))`;
//! 3. drop entries whose set equals the set of their nearest stored ancestor (the
//!    ancestor answers the same), then merge sibling prefixes with equal sets into
//!    their parent, repeatedly (aggregation). Both keep the verdict of every address.
//!
//! A set is normalized: ordered by rule id, entries that an earlier entry fully
//! shadows removed, touching ranges of one rule and protocol merged. The property
//! test in this module checks the flattened LPM against a naive scan of the rules.

use std::collections::{BTreeMap, HashMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tagwall_common::policy::{MAX_PORT_RULES, PROTO_ANY, PortRule};

use crate::rules::{Direction, Rule};

/// A prefix of a `W`-bit address family, the address left-aligned in a `u128`
/// (bit 127 is the first bit of the address) so one code path serves v4 and v6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Pfx {
    addr: u128,
    len: u8,
}

impl Pfx {
    fn mask(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        }
    }

    fn new(addr: u128, len: u8) -> Self {
        Self {
            addr: addr & Self::mask(len),
            len,
        }
    }

    fn contains(self, other: Self) -> bool {
        self.len <= other.len && (other.addr & Self::mask(self.len)) == self.addr
    }

    fn parent(self) -> Self {
        Self::new(self.addr, self.len - 1)
    }

    fn sibling(self) -> Self {
        Self {
            addr: self.addr ^ (1u128 << (128 - u32::from(self.len))),
            len: self.len,
        }
    }
}

fn v4_pfx(n: Ipv4Net) -> Pfx {
    Pfx::new(u128::from(u32::from(n.network())) << 96, n.prefix_len())
}

fn v6_pfx(n: Ipv6Net) -> Pfx {
    Pfx::new(u128::from(n.network()), n.prefix_len())
}

/// A normalized port set (see the module docs).
pub type PortSetEntries = Vec<PortRule>;

/// Is `b` never the first match because `a` (earlier) matches everything `b` does?
fn shadows(a: &PortRule, b: &PortRule) -> bool {
    (a.proto == PROTO_ANY || a.proto == b.proto) && a.port_lo <= b.port_lo && b.port_hi <= a.port_hi
}

/// Order by rule id (first match = lowest id), drop shadowed entries, merge touching
/// ranges of the same rule and protocol.
#[must_use]
pub fn normalize(mut set: Vec<PortRule>) -> Vec<PortRule> {
    set.sort_unstable_by_key(|r| (r.rule_id, r.proto, r.port_lo, r.port_hi));
    let mut merged: Vec<PortRule> = Vec::with_capacity(set.len());
    for r in set {
        if let Some(last) = merged.last_mut()
            && last.rule_id == r.rule_id
            && last.proto == r.proto
            && u32::from(r.port_lo) <= u32::from(last.port_hi) + 1
        {
            last.port_hi = last.port_hi.max(r.port_hi);
            continue;
        }
        merged.push(r);
    }
    let mut out: Vec<PortRule> = Vec::with_capacity(merged.len());
    for r in merged {
        if !out.iter().any(|a| shadows(a, &r)) {
            out.push(r);
        }
    }
    out
}

/// Errors of the compiler. Each names what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "prefix {prefix} is covered by rules that together need {needed} port entries, more \
         than the datapath's {max} per prefix (rules: {rules}); merge port ranges or split \
         the overlapping rules"
    )]
    TooManyPortRules {
        prefix: String,
        needed: usize,
        max: usize,
        rules: String,
    },
    #[error(
        "the policy needs {needed} distinct port sets, more than the {max} a slot holds; \
         raise `datapath.port_sets` in the config"
    )]
    TooManySets { needed: usize, max: usize },
    #[error("rule id {id} of {name:?} is out of range 1..{max}")]
    BadRuleId { id: u32, name: String, max: u32 },
    #[error("rule id {id} is used by both {a:?} and {b:?}")]
    DuplicateRuleId { id: u32, a: String, b: String },
}

/// The flattened policy, ready to be written into the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `(direction, prefix, set index)`.
    pub v4: Vec<(Direction, Ipv4Net, u32)>,
    pub v6: Vec<(Direction, Ipv6Net, u32)>,
    /// Port sets, indexed by the set index above.
    pub sets: Vec<PortSetEntries>,
}

impl CompiledPolicy {
    /// Total LPM entries.
    #[must_use]
    pub fn prefixes(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

struct Interner {
    ids: HashMap<PortSetEntries, u32>,
    sets: Vec<PortSetEntries>,
}

impl Interner {
    fn intern(&mut self, set: &PortSetEntries) -> u32 {
        if let Some(&id) = self.ids.get(set) {
            return id;
        }
        let id = u32::try_from(self.sets.len()).expect("fewer than 2^32 sets");
        self.ids.insert(set.clone(), id);
        self.sets.push(set.clone());
        id
    }
}

/// Flatten one address family and direction: `entries` maps each stored prefix to its
/// own (unflattened) port rules. Returns the final prefix -> set map.
fn flatten(
    entries: BTreeMap<Pfx, Vec<PortRule>>,
    names: &HashMap<u32, &str>,
    show: &dyn Fn(Pfx) -> String,
) -> Result<BTreeMap<Pfx, PortSetEntries>, CompileError> {
    // 1+2: cumulative sets along the ancestor chain.
    let mut out: BTreeMap<Pfx, PortSetEntries> = BTreeMap::new();
    let mut stack: Vec<(Pfx, PortSetEntries)> = Vec::new();
    for (p, own) in entries {
        while stack.last().is_some_and(|(a, _)| !a.contains(p)) {
            stack.pop();
        }
        let mut all = stack.last().map(|(_, s)| s.clone()).unwrap_or_default();
        all.extend(own);
        let set = normalize(all);
        if set.len() > MAX_PORT_RULES {
            let mut ids: Vec<u32> = set.iter().map(|r| r.rule_id).collect();
            ids.dedup();
            let rules = ids
                .iter()
                .map(|id| names.get(id).copied().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CompileError::TooManyPortRules {
                prefix: show(p),
                needed: set.len(),
                max: MAX_PORT_RULES,
                rules,
            });
        }
        stack.push((p, set.clone()));
        out.insert(p, set);
    }
    // 3: aggregate siblings with equal sets, deepest first, then drop redundant ones.
    for len in (1..=128u8).rev() {
        let at_len: Vec<Pfx> = out.keys().filter(|p| p.len == len).copied().collect();
        for p in at_len {
            let Some(set) = out.get(&p) else { continue };
            let sib = p.sibling();
            if out.get(&sib) == Some(set) {
                let set = set.clone();
                out.remove(&p);
                out.remove(&sib);
                out.insert(p.parent(), set);
            }
        }
    }
    let mut stack: Vec<(Pfx, PortSetEntries)> = Vec::new();
    let mut kept = BTreeMap::new();
    for (p, set) in out {
        while stack.last().is_some_and(|(a, _)| !a.contains(p)) {
            stack.pop();
        }
        let redundant = stack.last().is_some_and(|(_, s)| *s == set);
        if !redundant {
            stack.push((p, set.clone()));
            kept.insert(p, set);
        }
    }
    Ok(kept)
}

/// Compile resolved rules into LPM entries and port sets.
///
/// # Errors
/// See [`CompileError`]: rule ids out of range or duplicated, a prefix that needs more
/// port entries than a set holds, more sets than `max_sets`.
pub fn compile(rules: &[Rule], max_sets: usize) -> Result<CompiledPolicy, CompileError> {
    let mut names: HashMap<u32, &str> = HashMap::new();
    for r in rules {
        if r.id == 0 || r.id >= tagwall_common::counters::MAX_RULES {
            return Err(CompileError::BadRuleId {
                id: r.id,
                name: r.name.clone(),
                max: tagwall_common::counters::MAX_RULES,
            });
        }
        if let Some(a) = names.insert(r.id, &r.name) {
            return Err(CompileError::DuplicateRuleId {
                id: r.id,
                a: a.to_owned(),
                b: r.name.clone(),
            });
        }
    }
    let mut interner = Interner {
        ids: HashMap::new(),
        sets: Vec::new(),
    };
    let mut policy = CompiledPolicy::default();
    for dir in [Direction::Outbound, Direction::Inbound, Direction::Local] {
        let mut v4: BTreeMap<Pfx, Vec<PortRule>> = BTreeMap::new();
        let mut v6: BTreeMap<Pfx, Vec<PortRule>> = BTreeMap::new();
        for r in rules.iter().filter(|r| r.direction == dir) {
            let port_rules: Vec<PortRule> = r
                .ports
                .iter()
                .map(|pr| PortRule::new(r.id, r.proto.0, pr.lo, pr.hi))
                .collect();
            for net in &r.prefixes {
                let (map, p) = match net {
                    IpNet::V4(n) => (&mut v4, v4_pfx(*n)),
                    IpNet::V6(n) => (&mut v6, v6_pfx(*n)),
                };
                map.entry(p).or_default().extend(port_rules.iter().copied());
            }
        }
        let show4 = |p: Pfx| {
            Ipv4Net::new(std::net::Ipv4Addr::from((p.addr >> 96) as u32), p.len)
                .map_or_else(|_| format!("{p:?}"), |n| n.to_string())
        };
        let show6 = |p: Pfx| {
            Ipv6Net::new(std::net::Ipv6Addr::from(p.addr), p.len)
                .map_or_else(|_| format!("{p:?}"), |n| n.to_string())
        };
        for (p, set) in flatten(v4, &names, &show4)? {
            let net = Ipv4Net::new(std::net::Ipv4Addr::from((p.addr >> 96) as u32), p.len)
                .expect("v4 prefix length <= 32");
            policy.v4.push((dir, net, interner.intern(&set)));
        }
        for (p, set) in flatten(v6, &names, &show6)? {
            let net = Ipv6Net::new(std::net::Ipv6Addr::from(p.addr), p.len)
                .expect("v6 prefix length <= 128");
            policy.v6.push((dir, net, interner.intern(&set)));
        }
    }
    if interner.sets.len() > max_sets {
        return Err(CompileError::TooManySets {
            needed: interner.sets.len(),
            max: max_sets,
        });
    }
    policy.sets = interner.sets;
    Ok(policy)
}

/// The port set of the longest entry of direction `dir` covering `addr`, as the
/// datapath's LPM lookup finds it.
#[must_use]
pub fn covering_set(
    policy: &CompiledPolicy,
    dir: Direction,
    addr: std::net::IpAddr,
) -> Option<&[PortRule]> {
    let set = match addr {
        std::net::IpAddr::V4(a) => policy
            .v4
            .iter()
            .filter(|(d, n, _)| *d == dir && n.contains(&a))
            .max_by_key(|(_, n, _)| n.prefix_len())
            .map(|(_, _, s)| *s),
        std::net::IpAddr::V6(a) => policy
            .v6
            .iter()
            .filter(|(d, n, _)| *d == dir && n.contains(&a))
            .max_by_key(|(_, n, _)| n.prefix_len())
            .map(|(_, _, s)| *s),
    }?;
    policy.sets.get(set as usize).map(Vec::as_slice)
}

/// The verdict of a compiled policy for one address, protocol and port, looked up the
/// way the datapath does (longest prefix, then the first matching set entry).
/// `None`: no entry covers the address; `Some(Err(()))`: covered but not allowed;
/// `Some(Ok(rule_id))`: allowed and credited to `rule_id`.
#[must_use]
pub fn lookup(
    policy: &CompiledPolicy,
    dir: Direction,
    addr: std::net::IpAddr,
    proto: u8,
    port: Option<u16>,
) -> Option<Result<u32, ()>> {
    Some(
        covering_set(policy, dir, addr)?
            .iter()
            .find(|r| r.matches(proto, port))
            .map(|r| r.rule_id)
            .ok_or(()),
    )
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::rules::{PortRange, Proto};

    fn rule(id: u32, nets: &[&str], proto: Proto, ports: &[PortRange]) -> Rule {
        Rule {
            id,
            name: format!("r{id}"),
            direction: Direction::Outbound,
            prefixes: nets.iter().map(|s| s.parse().unwrap()).collect(),
            proto,
            ports: ports.to_vec(),
            origin: "test".into(),
        }
    }

    /// The semantics the datapath must implement, as a naive scan over the rules.
    fn naive(
        rules: &[Rule],
        addr: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> Option<Result<u32, ()>> {
        let mut covering: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.prefixes.iter().any(|n| n.contains(&addr)))
            .collect();
        if covering.is_empty() {
            return None;
        }
        covering.sort_by_key(|r| r.id);
        Some(
            covering
                .iter()
                .find(|r| r.allows(proto, port))
                .map(|r| r.id)
                .ok_or(()),
        )
    }

    #[test]
    fn nested_prefixes_carry_the_union() {
        let rules = vec![
            rule(1, &["10.0.0.0/8"], Proto::TCP, &[PortRange::single(443)]),
            rule(2, &["10.1.0.0/16"], Proto::TCP, &[PortRange::single(445)]),
            rule(
                3,
                &["10.1.2.0/24"],
                Proto::UDP,
                &[PortRange {
                    lo: 29876,
                    hi: 29877,
                }],
            ),
        ];
        let p = compile(&rules, 1000).unwrap();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            lookup(&p, Direction::Outbound, a("10.1.2.3"), 6, Some(443)),
            Some(Ok(1))
        );
        assert_eq!(
            lookup(&p, Direction::Outbound, a("10.1.2.3"), 6, Some(445)),
            Some(Ok(2))
        );
        assert_eq!(
            lookup(&p, Direction::Outbound, a("10.1.2.3"), 17, Some(29877)),
            Some(Ok(3))
        );
        assert_eq!(
            lookup(&p, Direction::Outbound, a("10.2.0.1"), 6, Some(445)),
            Some(Err(()))
        );
        assert_eq!(
            lookup(&p, Direction::Outbound, a("11.0.0.1"), 6, Some(443)),
            None
        );
    }

    #[test]
    fn siblings_aggregate_and_redundant_children_vanish() {
        let rules = vec![
            rule(
                1,
                &["10.0.0.0/25", "10.0.0.128/25"],
                Proto::TCP,
                &[PortRange::single(443)],
            ),
            rule(
                2,
                &["10.0.0.0/24", "10.0.0.7/32"],
                Proto::TCP,
                &[PortRange::single(443)],
            ),
        ];
        let p = compile(&rules, 1000).unwrap();
        // /24 (rule 2) and the two /25s (rule 1 shadows rule 2 on 443 everywhere) ->
        // one /24 entry crediting rule 1; the /32 is redundant.
        assert_eq!(p.v4.len(), 1, "{:?}", p.v4);
        assert_eq!(p.v4[0].1.to_string(), "10.0.0.0/24");
        assert_eq!(
            p.sets[p.v4[0].2 as usize],
            vec![PortRule::new(1, 6, 443, 443)]
        );
    }

    #[test]
    fn too_many_port_rules_is_a_clear_error() {
        let ports: Vec<PortRange> = (1..=MAX_PORT_RULES as u16 + 1)
            .map(|p| PortRange::single(p * 2))
            .collect();
        let rules = vec![rule(7, &["192.0.2.0/24"], Proto::TCP, &ports)];
        let err = compile(&rules, 1000).unwrap_err();
        assert!(
            matches!(err, CompileError::TooManyPortRules { ref prefix, .. } if prefix == "192.0.2.0/24"),
            "{err}"
        );
        assert!(err.to_string().contains("r7"));
    }

    #[test]
    fn bad_rule_ids_are_rejected() {
        let rules = vec![rule(0, &["192.0.2.0/24"], Proto::TCP, &[PortRange::ANY])];
        assert!(matches!(
            compile(&rules, 10),
            Err(CompileError::BadRuleId { .. })
        ));
        let rules = vec![
            rule(3, &["192.0.2.0/24"], Proto::TCP, &[PortRange::ANY]),
            rule(3, &["192.0.3.0/24"], Proto::TCP, &[PortRange::ANY]),
        ];
        assert!(matches!(
            compile(&rules, 10),
            Err(CompileError::DuplicateRuleId { .. })
        ));
    }

    fn random_rules(rng: &mut StdRng, n: usize, v6: bool) -> Vec<Rule> {
        (1..=n as u32)
            .map(|id| {
                let nets: Vec<IpNet> = (0..rng.random_range(1..4))
                    .map(|_| {
                        if v6 {
                            // Few distinct high bits so prefixes overlap often.
                            let a = u128::from(rng.random_range(0u8..4)) << 120
                                | u128::from(rng.random::<u32>());
                            let len = rng.random_range(0..=128);
                            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc())
                        } else {
                            let a = u32::from(rng.random_range(0u8..4)) << 24
                                | rng.random_range(0..0x1_0000);
                            let len = rng.random_range(0..=32);
                            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc())
                        }
                    })
                    .collect();
                let proto =
                    [Proto::ANY, Proto::TCP, Proto::UDP, Proto::ICMP][rng.random_range(0..4)];
                let ports = if rng.random_bool(0.2) {
                    vec![PortRange::ANY]
                } else {
                    (0..rng.random_range(1..3))
                        .map(|_| {
                            let lo = rng.random_range(1..40);
                            PortRange {
                                lo,
                                hi: lo + rng.random_range(0..5),
                            }
                        })
                        .collect()
                };
                rule(id, &[], proto, &ports).with_prefixes(nets)
            })
            .collect()
    }

    impl Rule {
        fn with_prefixes(mut self, p: Vec<IpNet>) -> Self {
            self.prefixes = p;
            self
        }
    }

    /// Property: the flattened LPM gives the naive scan's verdict (and credited rule)
    /// for random addresses, protocols and ports.
    #[test]
    fn flattened_lpm_equals_naive_scan() {
        let mut rng = StdRng::seed_from_u64(0x7a6_3a11);
        let mut checked = 0;
        for round in 0..300 {
            let v6 = round % 2 == 1;
            let n = rng.random_range(1..12);
            let rules = random_rules(&mut rng, n, v6);
            let Ok(policy) = compile(&rules, 100_000) else {
                continue;
            };
            for _ in 0..200 {
                let addr = if v6 {
                    IpAddr::V6(Ipv6Addr::from(
                        u128::from(rng.random_range(0u8..4)) << 120
                            | u128::from(rng.random::<u32>()),
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(
                        u32::from(rng.random_range(0u8..4)) << 24 | rng.random_range(0..0x1_0000),
                    ))
                };
                let proto = [6u8, 17, 1, 47][rng.random_range(0..4)];
                let port = if proto == 6 || proto == 17 {
                    Some(rng.random_range(0..45))
                } else {
                    None
                };
                assert_eq!(
                    lookup(&policy, Direction::Outbound, addr, proto, port),
                    naive(&rules, addr, proto, port),
                    "addr {addr} proto {proto} port {port:?}\nrules {rules:#?}\npolicy {policy:#?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 30_000, "too few cases checked: {checked}");
    }
}
