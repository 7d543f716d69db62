//! Reading the observability maps (`TOP_DENIED`, `EVENT_STATS`) and map occupancy,
//! from a loaded [`Dataplane`] or from the pins of a running one.

use std::{
    borrow::Borrow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use tagwall_common::{
    counters::Counter,
    ct::{CtKey, CtKeyV4, CtKeyV6, CtValue},
    names,
    reports::{EV_EMITTED, EV_RATE_LIMITED, EV_RING_FULL, TopKey, TopSlot, TopValue, top_slot},
};

use crate::dataplane::{Dataplane, DataplaneError};

/// `EVENT_STATS` summed over CPUs (`packets`: events, `bytes`: their packets' bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    pub emitted: Counter,
    pub rate_limited: Counter,
    pub ring_full: Counter,
}

impl EventCounters {
    /// Drops the datapath covered with an event or a count (all three).
    #[must_use]
    pub fn covered(&self) -> u64 {
        self.emitted.packets + self.rate_limited.packets + self.ring_full.packets
    }
}

/// One `TOP_DENIED` entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopEntry {
    pub dir: u8,
    /// The address a rule would name (destination outbound, source inbound).
    pub remote: IpAddr,
    /// Destination port (TCP/UDP), else 0.
    pub port: u16,
    pub proto: u8,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The local end of the last drop.
    pub local: IpAddr,
    pub reason: u8,
    pub action: u8,
}

/// What the observability maps hold now.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Sorted by packets, most first (ties: by remote, port).
    pub top: Vec<TopEntry>,
    /// Slot copies of `TOP_SLOTS` left out of `top` ([`merge_reads`]).
    pub top_torn: u64,
    pub top_capacity: u32,
    pub events: EventCounters,
    /// Entries in the flow tables (the LRU keeps expired flows until they are looked
    /// up again or evicted, so this counts them too).
    pub conntrack_entries: u64,
    pub conntrack_capacity: u32,
}

/// An address of a key (`CtKey` layout): IPv4 from the last word unless `v6`.
#[must_use]
pub fn key_addr(words: &[u32; 4], v6: bool) -> IpAddr {
    let b = CtKey::bytes(words);
    if v6 {
        IpAddr::V6(Ipv6Addr::from(b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    }
}

fn data(map: &Map) -> Option<&MapData> {
    match map {
        Map::LruHashMap(d)
        | Map::HashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::Array(d) => Some(d),
        _ => None,
    }
}

/// Capacity of a hash or array map.
#[must_use]
pub fn capacity(map: &Map) -> u32 {
    data(map)
        .and_then(|d| d.info().ok())
        .map_or(0, |i| i.max_entries())
}

/// One entry's per-CPU values merged: counts summed, first/last seen over the CPUs
/// that saw it, the last drop's details from the CPU that saw it last.
#[must_use]
pub fn merge_top(k: &TopKey, values: &[TopValue]) -> TopEntry {
    let seen = values.iter().filter(|v| v.packets > 0);
    let last = seen
        .clone()
        .max_by_key(|v| v.last_seen_ns)
        .copied()
        .unwrap_or_default();
    TopEntry {
        dir: k.dir,
        remote: key_addr(&k.addr, k.v6 != 0),
        port: k.port,
        proto: k.proto,
        packets: values.iter().map(|v| v.packets).sum(),
        bytes: values.iter().map(|v| v.bytes).sum(),
        first_seen_ns: seen.map(|v| v.first_seen_ns).min().unwrap_or(0),
        last_seen_ns: last.last_seen_ns,
        local: key_addr(&last.local, k.v6 != 0),
        reason: last.reason,
        action: last.action,
    }
}

/// Times a slot of `TOP_SLOTS` is read again when a CPU's copy was taken while a key
/// took the slot.
const SLOT_READ_TRIES: usize = 8;

/// One read of the top-denied maps, in the order the reader made them.
#[derive(Clone, Debug)]
pub enum TopRead {
    /// An entry of `TOP_DENIED` and its per-CPU values.
    Table(TopKey, Vec<TopValue>),
    /// A slot of `TOP_SLOTS`: each CPU's copy, `None` where it changed hands each
    /// time it was read ([`SLOT_READ_TRIES`]).
    Slot(u32, Vec<Option<TopSlot>>),
}

/// Read slot `index` of `TOP_SLOTS`, again while a CPU's copy is not whole.
///
/// # Errors
/// Map errors.
pub fn read_slot(arr: &PerCpuArray<&MapData, TopSlot>, index: u32) -> Result<TopRead, MapError> {
    let mut settled: Vec<Option<TopSlot>> = Vec::new();
    for _ in 0..SLOT_READ_TRIES {
        let values = arr.get(&index, 0)?;
        settled.resize(values.len(), None);
        for (cpu, v) in values.iter().enumerate() {
            if settled[cpu].is_none() && v.whole() {
                settled[cpu] = Some(*v);
            }
        }
        if settled.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(TopRead::Slot(index, settled))
}

/// The denied keys of a sequence of reads, most packets first (ties: by remote,
/// port, protocol, direction), and the number of (slot, CPU) copies whose last
/// read was never whole (their drops show in a later report).
///
/// A table entry's values are those of its last read. A slot's batch adds to its
/// key when the copy was read after the key's entry (or the key has none): the
/// program takes a slot before it adds the old batch to the table
/// (`tagwall_common::reports`), so such a batch was not in the table when the
/// entry was read, and no drop counts twice. A batch read in several copies counts
/// once (its copy with the most drops): a slot's batches are numbered.
#[must_use]
pub fn merge_reads(reads: &[TopRead]) -> (Vec<TopEntry>, u64) {
    use std::collections::BTreeMap;

    let mut table: BTreeMap<TopKey, (usize, &[TopValue])> = BTreeMap::new();
    for (at, r) in reads.iter().enumerate() {
        if let TopRead::Table(k, v) = r {
            table.insert(*k, (at, v.as_slice()));
        }
    }
    let mut batches: BTreeMap<(u32, usize, u32), TopSlot> = BTreeMap::new();
    let mut torn: BTreeMap<(u32, usize), bool> = BTreeMap::new();
    for (at, r) in reads.iter().enumerate() {
        let TopRead::Slot(index, copies) = r else {
            continue;
        };
        for (cpu, c) in copies.iter().enumerate() {
            torn.insert((*index, cpu), c.is_none());
            let Some(c) = c.filter(|c| c.value.packets > 0) else {
                continue;
            };
            if table.get(&c.key).is_some_and(|(t, _)| *t > at) {
                continue;
            }
            let b = batches.entry((*index, cpu, c.batch_last)).or_insert(c);
            if c.key == b.key && c.value.packets > b.value.packets {
                *b = c;
            }
        }
    }
    let mut keys: BTreeMap<TopKey, Vec<TopValue>> =
        table.iter().map(|(k, (_, v))| (*k, v.to_vec())).collect();
    for s in batches.values() {
        keys.entry(s.key).or_default().push(s.value);
    }
    let mut out: Vec<TopEntry> = keys.iter().map(|(k, v)| merge_top(k, v)).collect();
    out.sort_by(|a, b| {
        b.packets
            .cmp(&a.packets)
            .then(a.remote.cmp(&b.remote))
            .then(a.port.cmp(&b.port))
            .then(a.proto.cmp(&b.proto))
            .then(a.dir.cmp(&b.dir))
    });
    (out, torn.values().filter(|t| **t).count() as u64)
}

/// Read `TOP_DENIED` and, when there is one, `TOP_SLOTS`: each table entry and
/// right after it its key's slot, so that a batch moving meanwhile is missed
/// only for as long as those two reads take; then every slot. See
/// [`merge_reads`].
///
/// # Errors
/// Map errors, naming the map.
pub fn read_top_maps(table: &Map, slots: Option<&Map>) -> Result<Vec<TopRead>, DataplaneError> {
    let err = |name: &'static str| move |source| DataplaneError::Map { name, source };
    let m: PerCpuHashMap<&MapData, TopKey, TopValue> =
        PerCpuHashMap::try_from(table).map_err(err(names::MAP_TOP_DENIED))?;
    let arr: Option<PerCpuArray<&MapData, TopSlot>> = slots
        .map(PerCpuArray::try_from)
        .transpose()
        .map_err(err(names::MAP_TOP_SLOTS))?;
    let mut reads = Vec::new();
    for k in m.keys().filter_map(Result::ok) {
        match m.get(&k, 0) {
            Ok(v) => reads.push(TopRead::Table(k, v.to_vec())),
            // Evicted since its key was listed.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(err(names::MAP_TOP_DENIED)(e)),
        }
        if let Some(a) = &arr {
            reads.push(read_slot(a, top_slot(&k)).map_err(err(names::MAP_TOP_SLOTS))?);
        }
    }
    if let Some(a) = &arr {
        for i in 0..a.len() {
            reads.push(read_slot(a, i).map_err(err(names::MAP_TOP_SLOTS))?);
        }
    }
    Ok(reads)
}

/// The denied keys of `TOP_DENIED` and `TOP_SLOTS`, most packets first, and the
/// number of slot copies left out ([`merge_reads`]).
///
/// # Errors
/// Map errors, naming the map.
pub fn read_top(table: &Map, slots: Option<&Map>) -> Result<(Vec<TopEntry>, u64), DataplaneError> {
    Ok(merge_reads(&read_top_maps(table, slots)?))
}

/// The entries of `TOP_DENIED` (a per-CPU LRU hash), as keys and per-CPU values.
///
/// # Errors
/// Map errors.
pub fn read_table(map: &Map) -> Result<Vec<(TopKey, Vec<TopValue>)>, MapError> {
    let m: PerCpuHashMap<&MapData, TopKey, TopValue> = PerCpuHashMap::try_from(map)?;
    Ok(m.iter()
        .filter_map(Result::ok)
        .map(|(k, v)| (k, v.to_vec()))
        .collect())
}

fn sum<T: Borrow<MapData>>(arr: &PerCpuArray<T, Counter>, i: u32) -> Result<Counter, MapError> {
    Ok(arr
        .get(&i, 0)?
        .iter()
        .fold(Counter::default(), |acc, c| acc.add(*c)))
}

/// `EVENT_STATS`, summed over CPUs.
///
/// # Errors
/// Map errors.
pub fn read_events(map: &Map) -> Result<EventCounters, MapError> {
    let arr: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
    Ok(EventCounters {
        emitted: sum(&arr, EV_EMITTED)?,
        rate_limited: sum(&arr, EV_RATE_LIMITED)?,
        ring_full: sum(&arr, EV_RING_FULL)?,
    })
}

/// Number of entries of a hash map with keys `K` and values `V` (one syscall per
/// entry).
///
/// # Errors
/// Map errors.
pub fn count_entries<K: aya::Pod, V: aya::Pod>(map: &Map) -> Result<u64, MapError> {
    let m: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(map)?;
    Ok(m.keys().filter(Result::is_ok).count() as u64)
}

/// Number of entries of `TOP_DENIED`.
///
/// # Errors
/// Map errors.
pub fn count_top(map: &Map) -> Result<u64, MapError> {
    let m: PerCpuHashMap<&MapData, TopKey, TopValue> = PerCpuHashMap::try_from(map)?;
    Ok(m.keys().filter(Result::is_ok).count() as u64)
}

/// Number of entries of the flow tables (`CONNTRACK_V4`, `CONNTRACK_V6`).
///
/// # Errors
/// Map errors, naming the table.
pub fn count_flows(v4: &Map, v6: &Map) -> Result<u64, DataplaneError> {
    let err = |name: &'static str| move |source| DataplaneError::Map { name, source };
    Ok(
        count_entries::<CtKeyV4, CtValue>(v4).map_err(err(names::MAP_CONNTRACK_V4))?
            + count_entries::<CtKeyV6, CtValue>(v6).map_err(err(names::MAP_CONNTRACK_V6))?,
    )
}

fn observe<'a>(
    get: &dyn Fn(&'static str) -> Result<MapRef<'a>, DataplaneError>,
) -> Result<Observed, DataplaneError> {
    let err = |name: &'static str| move |source| DataplaneError::Map { name, source };
    let top = get(names::MAP_TOP_DENIED)?;
    // A datapath of a version before the slots has none: its table holds all.
    let slots = match get(names::MAP_TOP_SLOTS) {
        Ok(m) => Some(m),
        Err(DataplaneError::NotPinned { .. } | DataplaneError::MissingMap { .. }) => None,
        Err(e) => return Err(e),
    };
    let ev = get(names::MAP_EVENT_STATS)?;
    let ct4 = get(names::MAP_CONNTRACK_V4)?;
    let ct6 = get(names::MAP_CONNTRACK_V6)?;
    let (top_entries, top_torn) = read_top(top.map(), slots.as_ref().map(MapRef::map))?;
    Ok(Observed {
        top: top_entries,
        top_torn,
        top_capacity: capacity(top.map()),
        events: read_events(ev.map()).map_err(err(names::MAP_EVENT_STATS))?,
        conntrack_entries: count_flows(ct4.map(), ct6.map())?,
        conntrack_capacity: capacity(ct4.map()) + capacity(ct6.map()),
    })
}

/// A map owned (opened from a pin) or borrowed from a loaded object.
enum MapRef<'a> {
    Owned(Map),
    Borrowed(&'a Map),
}

impl MapRef<'_> {
    fn map(&self) -> &Map {
        match self {
            MapRef::Owned(m) => m,
            MapRef::Borrowed(m) => m,
        }
    }
}

/// Open one pinned map of a running datapath.
///
/// # Errors
/// [`DataplaneError::NotPinned`] when nothing is pinned there.
pub fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let path = pin_dir.join(names::pin_file(name));
    let not_pinned = |source| DataplaneError::NotPinned {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(not_pinned)?;
    Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
}

/// Read the observability maps of a running datapath from its pins.
///
/// # Errors
/// Nothing pinned (an older datapath without these maps says so too), map errors.
pub fn observe_pinned(pin_dir: &Path) -> Result<Observed, DataplaneError> {
    observe(&|name| open_pinned(pin_dir, name).map(MapRef::Owned))
}

/// Read the observability maps of a loaded datapath.
///
/// # Errors
/// Map errors.
pub fn observe_loaded(dp: &Dataplane) -> Result<Observed, DataplaneError> {
    observe(&|name| {
        dp.map(name)
            .map(MapRef::Borrowed)
            .ok_or(DataplaneError::MissingMap { name })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> TopKey {
        TopKey {
            addr: CtKey::words(&Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped().octets()),
            port: 53,
            proto: 17,
            ..TopKey::default()
        }
    }

    fn value(packets: u64, first: u64, last: u64) -> TopValue {
        TopValue {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            ..TopValue::default()
        }
    }

    fn slot(k: TopKey, v: TopValue) -> TopSlot {
        TopSlot {
            batch_first: 1,
            batch_last: 1,
            key: k,
            value: v,
            ..TopSlot::default()
        }
    }

    #[test]
    fn batches_add_to_their_keys() {
        let (a, b, c) = (key(1), key(2), key(3));
        let table = vec![
            (a, vec![value(10, 100, 200), TopValue::default()]),
            (b, vec![TopValue::default(), value(1, 150, 150)]),
        ];
        let slots = [
            // a's batches on both CPUs.
            slot(a, value(2, 250, 260)),
            slot(a, value(3, 300, 400)),
            slot(b, value(2, 500, 600)),
            // c only in a slot.
            slot(c, value(7, 50, 700)),
        ];
        let mut reads: Vec<TopRead> = table
            .into_iter()
            .map(|(k, v)| TopRead::Table(k, v))
            .collect();
        for (i, s) in slots.iter().enumerate() {
            let mut s = *s;
            s.batch_first = 1 + i as u32;
            s.batch_last = s.batch_first;
            reads.push(TopRead::Slot(0, vec![Some(s)]));
        }
        let (out, torn) = merge_reads(&reads);
        assert_eq!(torn, 0);
        let got: Vec<(IpAddr, u64, u64, u64, u64)> = out
            .iter()
            .map(|e| {
                (
                    e.remote,
                    e.packets,
                    e.bytes,
                    e.first_seen_ns,
                    e.last_seen_ns,
                )
            })
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            got,
            vec![
                (ip("192.0.2.1"), 15, 1500, 100, 400),
                (ip("192.0.2.3"), 7, 700, 50, 700),
                (ip("192.0.2.2"), 3, 300, 150, 600),
            ]
        );
        assert!(merge_reads(&[]).0.is_empty());
    }

    #[test]
    fn a_slot_copy_counts_only_after_its_keys_entry_and_once() {
        let (a, b) = (key(1), key(2));
        let numbered = |k: TopKey, packets: u64, batch: u32| {
            let mut s = slot(k, value(packets, 10, 20));
            s.batch_first = batch;
            s.batch_last = batch;
            s
        };
        let reads = [
            // a's batch 5 read before a's entry: it may have moved into it since.
            TopRead::Slot(3, vec![Some(numbered(a, 4, 5)), None]),
            TopRead::Table(a, vec![value(4, 1, 2)]),
            // After the entry: b's batch 6 (b has no entry), twice, growing.
            TopRead::Slot(3, vec![Some(numbered(b, 1, 6)), Some(numbered(a, 2, 9))]),
            TopRead::Slot(3, vec![Some(numbered(b, 3, 6)), None]),
        ];
        let (out, torn) = merge_reads(&reads);
        let got: Vec<(u64, IpAddr)> = out.iter().map(|e| (e.packets, e.remote)).collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // a: its entry (4) and CPU 1's batch 9 (2); b: batch 6 once, its last copy.
        assert_eq!(got, vec![(6, ip("192.0.2.1")), (3, ip("192.0.2.2"))]);
        // CPU 1's last copy of slot 3 was never whole.
        assert_eq!(torn, 1);
    }

    /// One CPU's slot and table as the program leaves them after each of its
    /// stores, in the order `dataplane-ebpf` makes them (`tagwall_common::reports`).
    #[derive(Clone, Default)]
    struct Memory {
        slot: TopSlot,
        table: std::collections::BTreeMap<TopKey, u64>,
    }

    /// The program's stores for `drops` (keys that share one slot), one state per
    /// store; for each state, the drops begun and finished per key, and the batch
    /// (key, packets) between its slot and the table then, if one is.
    #[allow(clippy::type_complexity)]
    fn program(
        drops: &[TopKey],
    ) -> Vec<(
        Memory,
        std::collections::BTreeMap<TopKey, u64>,
        std::collections::BTreeMap<TopKey, u64>,
        Option<(TopKey, u64)>,
    )> {
        let mut m = Memory::default();
        let (mut begun, mut done) = (
            std::collections::BTreeMap::new(),
            std::collections::BTreeMap::new(),
        );
        let mut states = vec![(m.clone(), begun.clone(), done.clone(), None)];
        for k in drops {
            *begun.entry(*k).or_insert(0) += 1;
            if m.slot.value.packets != 0 && m.slot.key == *k {
                m.slot.value.packets += 1;
                *done.entry(*k).or_insert(0) += 1;
                states.push((m.clone(), begun.clone(), done.clone(), None));
                continue;
            }
            let old = (m.slot.key, m.slot.value.packets);
            let moving = (old.1 != 0).then_some(old);
            let b = tagwall_common::reports::next_batch(m.slot.batch_first);
            m.slot.batch_first = b;
            states.push((m.clone(), begun.clone(), done.clone(), moving));
            // The key and value, between the two fences (a copy of them taken
            // while they change has two batch numbers that differ).
            m.slot.key = *k;
            m.slot.value.packets = 1;
            states.push((m.clone(), begun.clone(), done.clone(), moving));
            m.slot.batch_last = b;
            if moving.is_none() {
                *done.entry(*k).or_insert(0) += 1;
            }
            states.push((m.clone(), begun.clone(), done.clone(), moving));
            if let Some((ok, n)) = moving {
                *m.table.entry(ok).or_insert(0) += n;
                *done.entry(*k).or_insert(0) += 1;
                states.push((m.clone(), begun.clone(), done.clone(), None));
            }
        }
        states
    }

    /// Every nondecreasing sequence of `n` positions in `from..=last`.
    fn positions(from: usize, last: usize, n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        (from..=last)
            .flat_map(|p| {
                positions(p, last, n - 1).into_iter().map(move |mut rest| {
                    rest.insert(0, p);
                    rest
                })
            })
            .collect()
    }

    /// Every way a reader's loads can fall between the program's stores: the table's
    /// keys one at a time, then the slot from its start: its last batch number, its
    /// key and value, its first batch number (once more when the two differ). No
    /// read counts a drop that had not begun by its end, so none twice; each has
    /// every drop finished by its start but those of a batch that was moving during
    /// the read.
    #[test]
    fn every_interleaving_of_a_read_with_slot_moves_counts_each_drop_at_most_once() {
        let (a, b, c) = (key(1), key(2), key(3));
        let keys = [a, b, c];
        let states = program(&[a, a, b, a, c]);
        let last = states.len() - 1;
        let copy = |l: &[usize]| TopSlot {
            batch_last: states[l[0]].0.slot.batch_last,
            key: states[l[1]].0.slot.key,
            value: value(states[l[1]].0.slot.value.packets, 1, 1),
            batch_first: states[l[2]].0.slot.batch_first,
            ..TopSlot::default()
        };
        let (mut reads, mut torn, mut dips) = (0u64, 0u64, 0u64);
        for t in positions(0, last, 3) {
            let table: Vec<(TopKey, Vec<TopValue>)> = keys
                .iter()
                .zip(&t)
                .filter_map(|(k, at)| {
                    let n = states[*at].0.table.get(k)?;
                    Some((*k, vec![value(*n, 1, 1)]))
                })
                .collect();
            for first in positions(t[2], last, 3) {
                let c1 = copy(&first);
                let retries = if c1.whole() {
                    vec![first.clone()]
                } else {
                    positions(first[2], last, 3)
                };
                for l in retries {
                    let settled = Some(copy(&l)).filter(TopSlot::whole);
                    let end = l[2];
                    reads += 1;
                    torn += u64::from(settled.is_none());
                    let slots = vec![settled];
                    let mut reads: Vec<TopRead> = table
                        .iter()
                        .map(|(k, v)| TopRead::Table(*k, v.clone()))
                        .collect();
                    reads.push(TopRead::Slot(0, slots));
                    let (got, _) = merge_reads(&reads);
                    for k in keys {
                        let n = got
                            .iter()
                            .find(|e| e.remote == key_addr(&k.addr, false))
                            .map_or(0, |e| e.packets);
                        let begun = states[end].1.get(&k).copied().unwrap_or(0);
                        assert!(
                            n <= begun,
                            "{k:?}: {n} counted, {begun} begun ({t:?} {l:?})"
                        );
                        if settled.is_none() {
                            continue;
                        }
                        let done = states[t[0]].2.get(&k).copied().unwrap_or(0);
                        let moving = states[t[0]..=end]
                            .iter()
                            .filter_map(|s| s.3)
                            .filter(|(mk, _)| *mk == k)
                            .map(|(_, p)| p)
                            .max()
                            .unwrap_or(0);
                        assert!(
                            n + moving >= done,
                            "{k:?}: {n} counted, {done} done, {moving} moving ({t:?} {l:?})"
                        );
                        dips += u64::from(n < done);
                    }
                }
            }
        }
        // The enumeration reached the cases it is about.
        assert!(reads > 10_000, "{reads}");
        assert!(torn > 0 && dips > 0, "torn {torn}, dips {dips}");
    }
}
