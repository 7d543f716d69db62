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
    reports::{EV_EMITTED, EV_RATE_LIMITED, EV_RING_FULL, TopKey, TopValue},
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

/// The entries of `TOP_DENIED` (a per-CPU LRU hash), most packets first.
///
/// # Errors
/// Map errors.
pub fn read_top(map: &Map) -> Result<Vec<TopEntry>, MapError> {
    let m: PerCpuHashMap<&MapData, TopKey, TopValue> = PerCpuHashMap::try_from(map)?;
    let mut out: Vec<TopEntry> = m
        .iter()
        .filter_map(Result::ok)
        .map(|(k, v)| merge_top(&k, &v))
        .collect();
    out.sort_by(|a, b| {
        b.packets
            .cmp(&a.packets)
            .then(a.remote.cmp(&b.remote))
            .then(a.port.cmp(&b.port))
            .then(a.proto.cmp(&b.proto))
            .then(a.dir.cmp(&b.dir))
    });
    Ok(out)
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
    let ev = get(names::MAP_EVENT_STATS)?;
    let ct4 = get(names::MAP_CONNTRACK_V4)?;
    let ct6 = get(names::MAP_CONNTRACK_V6)?;
    Ok(Observed {
        top: read_top(top.map()).map_err(err(names::MAP_TOP_DENIED))?,
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
