//! Observability maps: denied-flow events, their in-kernel rate limit, and the top
//! denied destinations.
//!
//! # Events
//! Stage 2 (the part of the programs that knows a packet's addresses and ports) emits one
//! [`DenyEvent`] into the `EVENTS` ring buffer for every IP packet it drops, or
//! passes in audit mode although the policy would drop it. A per-CPU token bucket
//! ([`TokenBucket`], configured by [`ReportConfig`]) limits the rate, so a flood
//! cannot fill the ring faster than the daemon drains it. Every drop the events
//! cover ends in exactly one `EVENT_STATS` slot: [`EV_EMITTED`], [`EV_RATE_LIMITED`]
//! or [`EV_RING_FULL`]. Drops decided in stage 1 (`malformed`, `ext_hdr_limit`:
//! headers that could not be parsed, so there is no 5-tuple) have no event; they are
//! counted by reason only.
//!
//! # Top denied
//! `TOP_DENIED` (LRU hash) counts drops per ([`TopKey`]) remote address, destination
//! port, protocol and direction. The remote address is the one the policy looked up:
//! the destination of an outbound packet, the source of an inbound one, so an entry
//! says what a rule would have to name to allow it.
//!
//! A lookup in that table costs more than the rest of a drop's path, so a repeated
//! drop is counted in front of it: in `TOP_SLOTS`, a per-CPU array of
//! [`TOP_SLOTS_LEN`] direct-mapped slots ([`top_slot`]), each holding one key's
//! *batch* of drops ([`TopSlot`]). When another key's drop takes the slot, the
//! program copies the old batch to its stack, writes the new key over the slot
//! first, and only then adds the copy to this CPU's value of the old key's
//! `TOP_DENIED` entry. A reader reads a key's entry before it counts a batch of the
//! key from a slot, so it never counts a drop twice: a batch it finds in a slot
//! had not started to move when the slot was read, so none of it was in the entry
//! read before that. The price is a batch that moves between the two reads: it is
//! in neither copy, so that read misses it and the next one has it. The reader
//! makes the gap short (each entry, then right away its key's slot), and the
//! reports' deltas allow for a total that dips once. This order relies on the CPU
//! making the program's stores visible in program order and on the kernel copying
//! a value from its start (x86-64 does both). Elsewhere the daemon leaves
//! [`REPORT_F_SLOTS`] off and the program adds each drop to `TOP_DENIED` itself.

/// `ReportConfig::flags`: emit events into `EVENTS`.
pub const REPORT_F_EVENTS: u32 = 1;
/// `ReportConfig::flags`: count drops in `TOP_DENIED`.
pub const REPORT_F_TOP: u32 = 2;
/// `ReportConfig::flags`, with [`REPORT_F_TOP`]: count a repeated drop in its key's
/// `TOP_SLOTS` slot in front of `TOP_DENIED` ("Top denied" above). Without it each
/// drop is added to `TOP_DENIED` itself, which costs a table lookup per drop but
/// needs no ordering between the program's stores and a reader's copies: the
/// daemon sets it only where the slots' order holds (x86-64).
pub const REPORT_F_SLOTS: u32 = 4;

/// Size of the `EVENTS` ring buffer in bytes (a power-of-two number of pages). An
/// event takes 64 bytes in the ring (56 + the 8-byte record header): 4096 events.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Default capacity of `TOP_DENIED` (set at first load).
pub const DEFAULT_TOP_DENIED_ENTRIES: u32 = 4096;

/// log2 of the number of per-CPU slots of `TOP_SLOTS`.
pub const TOP_SLOTS_BITS: u32 = 9;
/// Number of per-CPU slots of `TOP_SLOTS`.
pub const TOP_SLOTS_LEN: u32 = 1 << TOP_SLOTS_BITS;

/// Indices of `EVENT_STATS` (per-CPU [`crate::counters::Counter`]s; `packets` counts
/// events, `bytes` the bytes of their packets).
/// An event was written into the ring.
pub const EV_EMITTED: u32 = 0;
/// The token bucket was empty: no event (the drop itself is counted as usual).
pub const EV_RATE_LIMITED: u32 = 1;
/// The ring was full (the daemon is not reading, or is behind): no event.
pub const EV_RING_FULL: u32 = 2;
pub const EVENT_STATS_LEN: u32 = 4;

/// Value of `REPORT_CONFIG[0]`, written by the daemon. All zero (never written):
/// no events, no top-denied counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportConfig {
    /// `REPORT_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// Nanoseconds of refill one event costs (one CPU's share of the rate).
    pub cost_ns: u64,
    /// Capacity of a CPU's bucket, in nanoseconds of refill (its burst).
    pub burst_ns: u64,
}

impl ReportConfig {
    /// A config for `rate` events per second and bursts of `burst` events, both for
    /// all `cpus` together: each CPU's bucket gets an equal share (at least one
    /// event of burst).
    #[must_use]
    pub fn new(flags: u32, rate: u32, burst: u32, cpus: u32) -> Self {
        let rate = if rate == 0 { 1 } else { rate } as u64;
        let cpus = if cpus == 0 { 1 } else { cpus } as u64;
        let cost_ns = 1_000_000_000u64.saturating_mul(cpus) / rate;
        let burst_ns = (burst as u64).saturating_mul(1_000_000_000) / rate;
        Self {
            flags,
            _pad: 0,
            cost_ns,
            burst_ns: if burst_ns < cost_ns {
                cost_ns
            } else {
                burst_ns
            },
        }
    }
}

/// Value of the per-CPU `EVENT_BUCKET[0]`: refill credit in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub credit_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last refill.
    pub last_ns: u64,
}

/// One denied (or audit would-deny) packet, as written into `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Addresses as in [`crate::ct::CtKey`]: network order, IPv4 as IPv4-mapped.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Bytes of the packet (frame length as the hook saw it).
    pub len: u32,
    /// TCP/UDP ports; 0 for other protocols and non-first fragments.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `DIR_EGRESS` / `DIR_INGRESS`.
    pub dir: u8,
    /// `REASON_*` (a drop reason).
    pub reason: u8,
    /// `ACTION_DROP` or `ACTION_AUDIT_PASS`.
    pub action: u8,
    /// 1: an IPv6 packet (the addresses are not IPv4-mapped).
    pub v6: u8,
    pub _pad: [u8; 3],
}

/// Key of `TOP_DENIED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopKey {
    /// The remote address (destination outbound, source inbound), as in `CtKey`.
    pub addr: [u32; 4],
    /// Destination port (TCP/UDP), else 0.
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
    pub v6: u8,
    pub _pad: [u8; 3],
}

/// Value of `TOP_DENIED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopValue {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The local end of the last drop (source outbound, destination inbound).
    pub local: [u32; 4],
    /// Reason and action of the last drop.
    pub reason: u8,
    pub action: u8,
    pub _pad: [u8; 6],
}

/// Value of `TOP_SLOTS`: one CPU's drops of one key that are not in `TOP_DENIED`
/// yet, or an empty slot (`value.packets == 0`).
///
/// A batch is the drops of one key since it took the slot; they move into the
/// table when another key takes it.
///
/// The program writes `batch_first`, then the key and value, then `batch_last`;
/// a reader copies the slot from its start, so it reads `batch_last` first. A copy
/// whose two numbers differ was taken while the slot changed hands: read it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopSlot {
    /// The batch's number, written last when a key takes the slot.
    pub batch_last: u32,
    pub _pad: u32,
    pub key: TopKey,
    /// The batch's counts.
    pub value: TopValue,
    /// The batch's number, written first when a key takes the slot. Numbers grow
    /// by one per batch of the slot and skip 0.
    pub batch_first: u32,
    pub _pad2: u32,
}

impl TopSlot {
    /// The copy was not taken while a key took the slot.
    #[must_use]
    pub fn whole(&self) -> bool {
        self.batch_first == self.batch_last
    }
}

/// The slot of `key` in `TOP_SLOTS`: Fibonacci hashing of the words in which the
/// remote addresses differ most, the port, protocol and direction.
#[inline(always)]
#[must_use]
pub fn top_slot(key: &TopKey) -> u32 {
    let mix = key.addr[1]
        ^ key.addr[2]
        ^ key.addr[3]
        ^ (u32::from(key.port) << 16)
        ^ (u32::from(key.proto) << 8)
        ^ u32::from(key.dir);
    mix.wrapping_mul(0x9E37_79B1) >> (32 - TOP_SLOTS_BITS)
}

/// The number of the batch after `batch` (never 0, which means "none").
#[inline(always)]
#[must_use]
pub fn next_batch(batch: u32) -> u32 {
    let n = batch.wrapping_add(1);
    if n == 0 { 1 } else { n }
}

// The layouts are ABI (pinned maps, ring records): fail the build if they move.
const _: () = {
    assert!(core::mem::size_of::<DenyEvent>() == 56);
    assert!(core::mem::size_of::<TopKey>() == 24);
    assert!(core::mem::size_of::<TopValue>() == 56);
    assert!(core::mem::size_of::<TopSlot>() == 96);
    assert!(core::mem::offset_of!(TopSlot, value) % 8 == 0);
    assert!(core::mem::size_of::<ReportConfig>() == 24);
    assert!(core::mem::size_of::<TokenBucket>() == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_skip_zero() {
        assert_eq!(next_batch(0), 1);
        assert_eq!(next_batch(7), 8);
        assert_eq!(next_batch(u32::MAX), 1);
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let mut seen = [false; TOP_SLOTS_LEN as usize];
        for i in 0..4096u32 {
            let mut k = TopKey::default();
            let a = core::net::Ipv4Addr::from(0xc000_0200 + i);
            k.addr = crate::ct::CtKey::words(&a.to_ipv6_mapped().octets());
            k.port = 443;
            k.proto = 6;
            let s = top_slot(&k);
            assert!(s < TOP_SLOTS_LEN);
            seen[s as usize] = true;
        }
        // 4096 consecutive addresses reach most slots.
        let used = seen.iter().filter(|s| **s).count();
        assert!(used > TOP_SLOTS_LEN as usize * 9 / 10, "{used}");
    }

    #[test]
    fn a_copy_is_whole_when_both_numbers_agree() {
        let mut s = TopSlot {
            batch_first: 3,
            batch_last: 3,
            ..TopSlot::default()
        };
        assert!(s.whole());
        s.batch_first = 4;
        assert!(!s.whole());
    }
}
