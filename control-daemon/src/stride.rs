//! Building the datapath's multibit trie (`LOOKUP`, see `tagwall_common::stride`) in
//! place, through a shared mapping of the array map.
//!
//! A slot is built while it is inactive: its roots are cleared, then prefixes go in
//! shortest first. A host entry added to the *active* slot (DNS learning) writes any
//! new child node completely before the one entry that links it, with a release
//! store, so a concurrent lookup sees the old or the new path, never half a node.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use ipnet::IpNet;
use tagwall_common::stride::{
    CHILD, FANOUT, FIRST_NODE, MAX_VALUE, SHORTCUT_BYTES, SHORTCUT_NODES, SHORTCUT_RECORD,
    SHORTCUTS_BELOW, child, child_node, result, result_value, root, shortcut_key, shortcut_node,
    shortcut_offset, shortcut_tag, slot_nodes,
};

/// The table has no free node left for the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the lookup table's {nodes} nodes per slot are all in use")]
pub struct Full {
    pub nodes: u32,
}

/// An IPv6 address's words as the datapath reads them.
fn words(b: &[u8; 16]) -> [u32; 4] {
    tagwall_common::ct::CtKey::words(b)
}

/// What [`Table::index_shortcuts`] wrote: records, and /112s left without one
/// because another /112 of the slot had taken their record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shortcuts {
    pub written: u32,
    pub collided: u32,
}

/// Node allocation of one slot: `next` is the first free node; `None` when unknown
/// (maps adopted from an earlier process, not built by this one).
#[derive(Debug, Clone, Copy, Default)]
struct SlotState {
    next: Option<u32>,
}

/// The entries of a table of `nodes` nodes, and the allocation state of both slots.
pub struct Table<'a> {
    entries: &'a [AtomicU32],
    nodes: u32,
    slots: [SlotState; 2],
}

impl<'a> Table<'a> {
    /// A table over `entries` (`nodes * FANOUT` of them).
    ///
    /// # Panics
    /// If `entries` is not a whole number of nodes, or has fewer than `FIRST_NODE + 2`
    /// (the roots, both slots' shortcut records and one node per slot).
    #[must_use]
    pub fn new(entries: &'a [AtomicU32]) -> Self {
        assert_eq!(entries.len() % FANOUT, 0, "whole nodes");
        let nodes = u32::try_from(entries.len() / FANOUT).expect("node count fits u32");
        assert!(
            nodes >= FIRST_NODE + 2,
            "room for the roots, the shortcuts and one node per slot"
        );
        Self {
            entries,
            nodes,
            slots: [SlotState::default(); 2],
        }
    }

    /// Nodes available to each slot (roots excluded).
    #[must_use]
    pub fn nodes_per_slot(&self) -> u32 {
        slot_nodes(0, self.nodes).1
    }

    /// Nodes `slot` uses beyond its roots (`None`: unknown).
    #[must_use]
    pub fn used(&self, slot: u8) -> Option<u32> {
        let (first, _) = slot_nodes(slot, self.nodes);
        self.slots[usize::from(slot & 1)].next.map(|n| n - first)
    }

    fn entry(&self, node: u32, i: usize) -> &'a AtomicU32 {
        let entries: &'a [AtomicU32] = self.entries;
        &entries[node as usize * FANOUT + i]
    }

    /// Forget everything in `slot`: its roots and shortcut records become empty, all
    /// its nodes free. Only for a slot no packet reads (the inactive one).
    pub fn clear(&mut self, slot: u8) {
        for dir in 0..4 {
            for v6 in 0..2 {
                let r = root(slot, dir, v6);
                for i in 0..FANOUT {
                    self.entry(r, i).store(0, Ordering::Release);
                }
            }
        }
        let first = shortcut_node(slot);
        for n in first..first + SHORTCUT_NODES {
            for i in 0..FANOUT {
                self.entry(n, i).store(0, Ordering::Release);
            }
        }
        self.slots[usize::from(slot & 1)].next = Some(slot_nodes(slot, self.nodes).0);
    }

    /// Write the IPv6 shortcut records of `slot` (`tagwall_common::stride`, "IPv6
    /// shortcuts"): one for each /112 whose walk reads a child entry at its 14th byte,
    /// unless another /112 took its record first. Only for a slot no packet reads,
    /// after its prefixes went in; host entries added later to the active slot get no
    /// records (their /112s walk from the root).
    pub fn index_shortcuts(&mut self, slot: u8) -> Shortcuts {
        let mut n = Shortcuts::default();
        for dir in 0..4 {
            let mut stack = vec![(root(slot, dir, 1), 0usize, [0u8; 16])];
            while let Some((node, depth, mut bytes)) = stack.pop() {
                for b in 0..=u8::MAX {
                    let e = self.entry(node, usize::from(b)).load(Ordering::Acquire);
                    if e & CHILD == 0 {
                        continue;
                    }
                    bytes[depth] = b;
                    if depth + 1 < SHORTCUT_BYTES {
                        stack.push((child_node(e), depth + 1, bytes));
                        continue;
                    }
                    let key = shortcut_key(&words(&bytes));
                    let rec = self.record(slot, dir, &key);
                    if rec[4].load(Ordering::Acquire) != 0 {
                        n.collided += 1;
                        continue;
                    }
                    for (r, v) in rec
                        .iter()
                        .zip(key.into_iter().chain([shortcut_tag(dir), e]))
                    {
                        r.store(v, Ordering::Release);
                    }
                    self.entry(root(slot, dir, 1), usize::from(bytes[0]))
                        .fetch_or(SHORTCUTS_BELOW, Ordering::Release);
                    n.written += 1;
                }
            }
        }
        n
    }

    /// The entries of the shortcut record for `key` in `slot`/`dir`.
    fn record(&self, slot: u8, dir: u8, key: &[u32; 4]) -> &'a [AtomicU32] {
        let entries: &'a [AtomicU32] = self.entries;
        let i = shortcut_offset(slot, dir, key) / 4;
        &entries[i..i + SHORTCUT_RECORD]
    }

    fn alloc(&mut self, slot: u8) -> Result<Option<u32>, Full> {
        let (first, count) = slot_nodes(slot, self.nodes);
        let st = &mut self.slots[usize::from(slot & 1)];
        let Some(next) = st.next else {
            return Ok(None);
        };
        if next >= first + count {
            return Err(Full { nodes: count });
        }
        st.next = Some(next + 1);
        Ok(Some(next))
    }

    /// Insert `net` -> `value` (as its `result` entry) under `slot`/`dir`.
    ///
    /// Prefixes must go in shortest first (a prefix's entries may not hold child
    /// nodes); a host route (/32, /128), the longest there is, can go in at any time.
    ///
    /// # Errors
    /// [`Full`] when the slot needs a node it does not have (the entries written so
    /// far stay; the caller falls back or reports).
    ///
    /// # Panics
    /// If `value + 1` would not fit the entry encoding, if `slot`'s allocation is
    /// unknown (not cleared by this table) or on a shorter prefix after a longer one
    /// below it: programming errors.
    pub fn insert(&mut self, slot: u8, dir: u8, net: IpNet, value: u32) -> Result<(), Full> {
        assert!(value < MAX_VALUE, "value {value} fits the entry encoding");
        let (bytes, v6): (Vec<u8>, u8) = match net.network() {
            IpAddr::V4(a) => (a.octets().to_vec(), 0),
            IpAddr::V6(a) => (a.octets().to_vec(), 1),
        };
        let len = usize::from(net.prefix_len());
        let mut node = root(slot, dir, v6);
        // The level whose node holds the prefix's entries.
        let level = len.saturating_sub(1) / 8;
        for &b in bytes.iter().take(level) {
            let e = self.entry(node, usize::from(b));
            let cur = e.load(Ordering::Acquire);
            if cur & CHILD != 0 {
                node = child_node(cur);
                continue;
            }
            let new_node = self
                .alloc(slot)?
                .expect("slot allocation known: cleared before building");
            // Leaf pushing: the child starts as copies of the entry it replaces.
            for i in 0..FANOUT {
                self.entry(new_node, i).store(cur, Ordering::Relaxed);
            }
            e.store(child(new_node), Ordering::Release);
            node = new_node;
        }
        let bits = len - level * 8;
        let span = 1usize << (8 - bits);
        let start = usize::from(bytes[level]) & !(span - 1);
        for i in start..start + span {
            let e = self.entry(node, i);
            assert!(
                e.load(Ordering::Acquire) & CHILD == 0,
                "{net} inserted after a longer prefix below it"
            );
            e.store(result(Some(value)), Ordering::Release);
        }
        Ok(())
    }

    /// The entry for `addr` in `slot`/`dir`, as the datapath reads it: `None` when no
    /// prefix covers it, else the inserted value.
    #[must_use]
    pub fn lookup(&self, slot: u8, dir: u8, addr: IpAddr) -> Option<u32> {
        let (bytes, v6): (Vec<u8>, u8) = match addr {
            IpAddr::V4(a) => (a.octets().to_vec(), 0),
            IpAddr::V6(a) => (a.octets().to_vec(), 1),
        };
        let mut node = root(slot, dir, v6);
        let mut from = 0;
        if let Ok(b16) = <[u8; 16]>::try_from(bytes.as_slice()) {
            let first = self
                .entry(node, usize::from(b16[0]))
                .load(Ordering::Acquire);
            if first & (CHILD | SHORTCUTS_BELOW) == CHILD | SHORTCUTS_BELOW {
                // As the datapath: the /112's shortcut record, when it has one.
                let key = shortcut_key(&words(&b16));
                let rec = self.record(slot, dir, &key);
                let r: [u32; SHORTCUT_RECORD] =
                    std::array::from_fn(|i| rec[i].load(Ordering::Acquire));
                if r[..5] == [key[0], key[1], key[2], key[3], shortcut_tag(dir)] {
                    node = child_node(r[5]);
                    from = SHORTCUT_BYTES;
                }
            }
        }
        for &b in &bytes[from..] {
            let e = self.entry(node, usize::from(b)).load(Ordering::Acquire);
            if e & CHILD == 0 {
                return result_value(e);
            }
            node = child_node(e);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn table(nodes: usize) -> Vec<AtomicU32> {
        (0..nodes * FANOUT).map(|_| AtomicU32::new(0)).collect()
    }

    /// The reference: longest prefix of `nets` containing `addr`.
    fn longest(nets: &[(IpNet, u32)], addr: IpAddr) -> Option<u32> {
        nets.iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, v)| *v)
    }

    fn sorted(mut nets: Vec<(IpNet, u32)>) -> Vec<(IpNet, u32)> {
        nets.sort_by_key(|(n, _)| n.prefix_len());
        nets
    }

    #[test]
    fn nested_prefixes_resolve_to_the_longest() {
        let mem = table(FIRST_NODE as usize + 48);
        let mut t = Table::new(&mem);
        t.clear(0);
        let nets = sorted(vec![
            ("0.0.0.0/0".parse().unwrap(), 1),
            ("10.0.0.0/8".parse().unwrap(), 2),
            ("10.1.0.0/16".parse().unwrap(), 3),
            ("10.1.2.0/23".parse().unwrap(), 4),
            ("10.1.2.128/25".parse().unwrap(), 5),
            ("10.1.2.129/32".parse().unwrap(), 6),
            ("2001:db8::/32".parse().unwrap(), 7),
            ("2001:db8:0:1::/64".parse().unwrap(), 8),
            ("2001:db8:0:1::5/128".parse().unwrap(), 9),
        ]);
        for (n, v) in &nets {
            t.insert(0, 0, *n, *v).unwrap();
        }
        assert_eq!(
            t.index_shortcuts(0),
            Shortcuts {
                written: 1,
                collided: 0
            },
            "one /112 with a longer prefix below it"
        );
        for a in [
            "9.9.9.9",
            "10.9.9.9",
            "10.1.9.9",
            "10.1.3.1",
            "10.1.2.1",
            "10.1.2.200",
            "10.1.2.129",
            "10.1.4.1",
            "2001:db8::1",
            "2001:db8:0:1::4",
            "2001:db8:0:1::5",
            "2001:db9::1",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(t.lookup(0, 0, addr), longest(&nets, addr), "{a}");
        }
        // Other directions and the other slot stay empty.
        assert_eq!(t.lookup(0, 1, "10.1.2.129".parse().unwrap()), None);
        assert_eq!(t.lookup(1, 0, "10.1.2.129".parse().unwrap()), None);
    }

    /// Random prefixes of every length, random addresses (half of them inside an
    /// inserted prefix): the table, shortcuts written, agrees with a linear
    /// longest-prefix search, and host routes added afterwards (as DNS learning does,
    /// half of the IPv6 ones in /112s of long prefixes, which have records) too.
    #[test]
    fn random_prefixes_match_a_linear_search() {
        let mut rng = StdRng::seed_from_u64(7);
        let mem = table(4096);
        let mut t = Table::new(&mem);
        t.clear(1);
        let mut nets = Vec::new();
        for i in 0..600u32 {
            let n = if rng.random_bool(0.6) {
                let a = std::net::Ipv4Addr::from(rng.random::<u32>() & 0x0fff_ffff);
                IpNet::new(a.into(), rng.random_range(0..=32))
                    .unwrap()
                    .trunc()
            } else {
                let a = std::net::Ipv6Addr::from(rng.random::<u128>() >> 12);
                IpNet::new(a.into(), rng.random_range(0..=128))
                    .unwrap()
                    .trunc()
            };
            nets.push((n, i));
        }
        let nets = sorted(nets);
        for (n, v) in &nets {
            t.insert(1, 2, *n, *v).unwrap();
        }
        let n = t.index_shortcuts(1);
        assert!(n.written > 5, "{n:?}");
        let long: Vec<u128> = nets
            .iter()
            .filter_map(|(n, _)| match n {
                IpNet::V6(n6) if n6.prefix_len() > 112 => Some(u128::from(n6.network())),
                _ => None,
            })
            .collect();
        let mut all = nets.clone();
        for i in 0..50u32 {
            let h: IpAddr = if i % 2 == 0 {
                std::net::Ipv4Addr::from(rng.random::<u32>() & 0x0fff_ffff).into()
            } else if i % 4 == 1 {
                std::net::Ipv6Addr::from(rng.random::<u128>() >> 12).into()
            } else {
                let under = long[rng.random_range(0..long.len())];
                std::net::Ipv6Addr::from(under ^ u128::from(rng.random::<u16>())).into()
            };
            let n = IpNet::from(h);
            t.insert(1, 2, n, 1000 + i).unwrap();
            all.retain(|(x, _)| *x != n);
            all.push((n, 1000 + i));
        }
        for _ in 0..20_000 {
            let addr: IpAddr = if rng.random_bool(0.5) {
                let (n, _) = all[rng.random_range(0..all.len())];
                match n {
                    IpNet::V4(n4) => {
                        let host = u32::from(n4.network())
                            | (rng.random::<u32>() & !u32::from(n4.netmask()));
                        std::net::Ipv4Addr::from(host).into()
                    }
                    IpNet::V6(n6) => {
                        let host = u128::from(n6.network())
                            | (rng.random::<u128>() & !u128::from(n6.netmask()));
                        std::net::Ipv6Addr::from(host).into()
                    }
                }
            } else if rng.random_bool(0.5) {
                std::net::Ipv4Addr::from(rng.random::<u32>() & 0x0fff_ffff).into()
            } else {
                std::net::Ipv6Addr::from(rng.random::<u128>() >> 12).into()
            };
            assert_eq!(t.lookup(1, 2, addr), longest(&all, addr), "{addr}");
        }
        assert!(t.used(1).unwrap() > 0);
        assert_eq!(t.used(0), None, "slot 0 never built");
    }

    fn key(a: &str) -> ([u32; 4], std::net::Ipv6Addr) {
        let a: std::net::Ipv6Addr = a.parse().unwrap();
        (shortcut_key(&words(&a.octets())), a)
    }

    fn empty(rec: &[AtomicU32]) -> bool {
        rec.iter().all(|e| e.load(Ordering::Relaxed) == 0)
    }

    /// The record of a /112 holds its address words, its tag and the entry the walk
    /// reads at the 14th byte; clearing the slot empties it.
    #[test]
    fn a_shortcut_record_holds_the_fourteenth_entry() {
        let mem = table(FIRST_NODE as usize + 64);
        let mut t = Table::new(&mem);
        t.clear(1);
        t.insert(1, 3, "2603:1000::/32".parse().unwrap(), 1)
            .unwrap();
        t.insert(1, 3, "2603:1000:4::300/122".parse().unwrap(), 2)
            .unwrap();
        assert_eq!(
            t.index_shortcuts(1),
            Shortcuts {
                written: 1,
                collided: 0
            }
        );
        let (k, a) = key("2603:1000:4::");
        let mut node = root(1, 3, 1);
        for b in &a.octets()[..SHORTCUT_BYTES - 1] {
            node = child_node(t.entry(node, usize::from(*b)).load(Ordering::Relaxed));
        }
        let fourteenth = t.entry(node, 0).load(Ordering::Relaxed);
        assert_ne!(fourteenth & CHILD, 0);
        let rec: Vec<u32> = t
            .record(1, 3, &k)
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .collect();
        assert_eq!(
            rec,
            [k[0], k[1], k[2], k[3], shortcut_tag(3), fourteenth, 0, 0]
        );
        // The root's entry for 2600::/8 says a record is below it; 2a00::/8 has none.
        let root6 = |t: &Table, b: usize| t.entry(root(1, 3, 1), b).load(Ordering::Relaxed);
        assert_eq!(root6(&t, 0x26) & SHORTCUTS_BELOW, SHORTCUTS_BELOW);
        t.insert(1, 3, "2a01:111::/32".parse().unwrap(), 3).unwrap();
        assert_eq!(root6(&t, 0x2a) & (CHILD | SHORTCUTS_BELOW), CHILD);
        // Another direction, the other slot: their records are elsewhere and empty.
        assert!(empty(t.record(1, 2, &k)));
        assert!(empty(t.record(0, 3, &k)));
        for (addr, want) in [
            ("2603:1000:4::301", Some(2)),
            ("2603:1000:4::3ff", Some(1)),
            ("2603:1000:4::1:300", Some(1)),
        ] {
            assert_eq!(t.lookup(1, 3, addr.parse().unwrap()), want, "{addr}");
        }
        t.clear(1);
        assert!(empty(t.record(1, 3, &k)));
        assert_eq!(t.lookup(1, 3, "2603:1000:4::301".parse().unwrap()), None);
    }

    /// Two /112s with the same record: the first keeps it, the second walks from the
    /// root, and both resolve correctly.
    #[test]
    fn a_taken_record_leaves_the_walk() {
        let mem = table(FIRST_NODE as usize + 64);
        let mut t = Table::new(&mem);
        t.clear(0);
        let (k, _) = key("2001:db8::");
        let want = shortcut_offset(0, 0, &k);
        let other = (1u32..)
            .map(|i| format!("2001:db8::{:x}:{:x}:0", i >> 16, i & 0xffff))
            .find(|a| shortcut_offset(0, 0, &key(a).0) == want)
            .unwrap();
        let other = other.trim_end_matches('0').to_owned();
        t.insert(0, 0, "2001:db8::1/128".parse().unwrap(), 1)
            .unwrap();
        t.insert(0, 0, format!("{other}1/128").parse().unwrap(), 2)
            .unwrap();
        assert_eq!(
            t.index_shortcuts(0),
            Shortcuts {
                written: 1,
                collided: 1
            }
        );
        assert_eq!(t.lookup(0, 0, "2001:db8::1".parse().unwrap()), Some(1));
        assert_eq!(
            t.lookup(0, 0, format!("{other}1").parse().unwrap()),
            Some(2)
        );
        assert_eq!(t.lookup(0, 0, format!("{other}2").parse().unwrap()), None);
    }

    #[test]
    fn a_full_slot_says_so_and_clearing_frees_it() {
        // The roots, the shortcut records and 2 nodes per slot.
        let mem = table(FIRST_NODE as usize + 4);
        let mut t = Table::new(&mem);
        t.clear(0);
        t.insert(0, 0, "10.1.2.0/24".parse().unwrap(), 1).unwrap();
        assert_eq!(t.used(0), Some(2));
        assert_eq!(
            t.insert(0, 0, "10.2.2.0/24".parse().unwrap(), 2),
            Err(Full { nodes: 2 })
        );
        // Slot 1 has its own half.
        t.clear(1);
        t.insert(1, 0, "10.2.2.0/24".parse().unwrap(), 2).unwrap();
        t.clear(0);
        assert_eq!(t.lookup(0, 0, "10.1.2.3".parse().unwrap()), None);
        t.insert(0, 0, "10.2.2.0/24".parse().unwrap(), 3).unwrap();
        assert_eq!(t.lookup(0, 0, "10.2.2.3".parse().unwrap()), Some(3));
        assert_eq!(t.lookup(1, 0, "10.2.2.3".parse().unwrap()), Some(2));
    }
}
