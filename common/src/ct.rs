//! Connection tracking: one LRU hash entry per flow, shared by both directions, in
//! one table per address family (`CONNTRACK_V4`, `CONNTRACK_V6`).
//!
//! # Key
//! A flow's two endpoints `(address, port)` are stored in a canonical order (the
//! smaller endpoint first, comparing address words then port), so a packet and its
//! reply find the same entry with one lookup. ICMP and ICMPv6 echo flows use the echo
//! identifier as both ports.
//!
//! The keys are as small as the kernel's hash allows ([`CtKeyV4`]: 12 bytes,
//! [`CtKeyV6`]: 36): the table hashes the whole key with jhash on every lookup, and
//! that hash was the largest cost of a tracked packet after the clock. The protocol
//! is therefore kept in the value ([`CtValue::proto`]): a packet whose entry belongs
//! to another protocol of the same addresses and ports is not of that flow (it is
//! judged by the policy), and if the policy allows it, its flow replaces the other
//! one. Both ends would have to use the same port pair for TCP and UDP at once.
//!
//! Listings see both tables as [`CtKey`]s (addresses as IPv6, IPv4 mapped).
//!
//! # Value
//! [`CtValue::initiator`] says which endpoint opened the flow, so the datapath knows
//! whether a packet goes the flow's way (original) or comes back (reply), and
//! [`CtValue::dir`] is the direction the policy allowed the flow in. A flow is checked
//! against the policy again when the policy generation changes (a reload), so a reload
//! that removes a rule also ends the flows it allowed.
//!
//! # States and timeouts
//! TCP: `SYN_SENT` (initiator's SYN seen) -> `ESTABLISHED` (any reply) -> `CLOSING` (a
//! FIN) -> `CLOSED` (RST, or FINs from both sides). UDP: `UNREPLIED` -> `REPLIED`.
//! ICMP echo: `UNREPLIED` -> `REPLIED`. Each state has a timeout in
//! [`CtTimeouts`]; an entry idle longer than its state's timeout is dead: the next
//! packet removes it and is judged by the policy as a new flow.
//!
//! # Connection attempts
//! A TCP SYN without ACK, which only an initiator sends, is judged by the policy
//! before the tables: one the policy denies is dropped without the flow cache, the
//! presence filter or a lookup, so denied attempts (the common drop, and a SYN flood
//! to a denied destination) cost the same with tracking on or off, however full the
//! tables. A live flow could hold such a packet only as a retransmission of an attempt
//! the same policy allowed (a reload since then revokes it, and a learned address
//! does not expire while a flow uses it) or as the responder's SYN of a simultaneous
//! open, which the policy judges like any other attempt. An allowed attempt continues
//! a live flow of its key of the current generation that is not closed (a
//! retransmission, passed as established) and otherwise opens its flow, replacing
//! whatever entry the key held (closed, expired, of another protocol or generation).
//!
//! # Flow cache
//! A lookup in a kernel hash table costs several calls inside the kernel (hash,
//! bucket walk, key compare), and on machines with return-stack mitigations every
//! call is expensive. So each CPU keeps a small direct-mapped cache of the flows it
//! saw (`FLOW_CACHE`, [`FlowCacheEntry`], [`FLOW_CACHE_ENTRIES`] slots indexed by a
//! hash of the key). A packet is served from it, without touching the table, when its
//! slot holds its flow (whole key and protocol compared), the policy generation is
//! unchanged, the packet would not change the flow's state (no FIN or RST; in
//! `SYN_SENT` and `UNREPLIED` only the initiator's packets), it is not a SYN without
//! ACK (a connection attempt, see above: a retransmitted SYN takes the table path)
//! and the entry is fresh: at
//! most [`CtTimeouts::cache_refresh_ms`] (or half the state's timeout, if shorter)
//! since the table was last consulted; 0 turns the cache off. Every other packet
//! takes the table path, which refills the slot. The parsing stage (stage 1)
//! probes the cache itself for a packet an established flow sends (TCP with ACK and
//! without SYN, FIN or RST; UDP; ICMP echo) and passes it there, without stage 2's
//! entry; every packet while fast forwarding is on (which stage 2 does) is probed by
//! stage 2, which also does the table path. So what the table shows is at most
//! that long behind this CPU: a flow's
//! `last_seen_ns` lags by up to the refresh time (the table path takes the cache's
//! newer time), and a flow removed on another CPU or by the daemon (LRU eviction,
//! RST, `clear_flows` clears the caches too) may still pass on this CPU that long.
//!
//! # Presence filter
//! A packet of no flow (a denied packet that is not a connection attempt, every
//! flow's first packet) would pay
//! the table lookup only to find nothing: for an IPv6 key, jhash over 36 bytes and a
//! bucket walk, the largest single cost of such a packet. `CT_FILTER` is one array of
//! [`CT_FILTER_SLOTS`] stamps shared by all CPUs, indexed by a hash of the flow that
//! both directions share (the flow cache's, wider). Whenever the datapath writes a
//! flow's `last_seen_ns` (a new flow, the table path of a live one) it raises the
//! slot's stamp to cover the flow's expiry in its state ([`ct_filter_stamp`]); a
//! stamp never goes down (raised with an atomic add of the difference, which can only
//! overshoot when CPUs race). A packet whose slot's stamp has passed
//! ([`ct_filter_passed`]) cannot have a live entry, because every entry of the slot
//! would be judged expired by the table path at this time, so it skips the lookup.
//! Collisions only cost lookups. An expired entry that is no longer looked up stays
//! in the table until the LRU evicts it (it is dead either way), so `expired` counts
//! the dead flows a lookup still found.
//!
//! The stamps assume the timeouts the datapath runs with. When a reload raises a
//! timeout, or the daemon adopts pinned flow tables without their pinned filter,
//! entries may be live longer than their stamps say: the daemon then sets
//! `Config::ct_filter_from_ns` to the clock plus the longest timeout, and until then
//! every packet looks the table up (by then every entry written before is dead under
//! the new timeouts).

/// Third word of an IPv4-mapped address (bytes `00 00 ff ff`), as in [`CtKey`].
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Default maximum number of tracked flows (LRU: the least recently used flow is
/// evicted when full).
pub const DEFAULT_CT_MAX_ENTRIES: u32 = 262_144;

pub const CT_TCP_SYN_SENT: u8 = 1;
pub const CT_TCP_ESTABLISHED: u8 = 2;
pub const CT_TCP_CLOSING: u8 = 3;
pub const CT_TCP_CLOSED: u8 = 4;
pub const CT_UNREPLIED: u8 = 5;
pub const CT_REPLIED: u8 = 6;

/// `CtValue::fin` bits: FIN seen from endpoint A / B.
pub const CT_FIN_A: u8 = 1;
pub const CT_FIN_B: u8 = 2;

/// Key of the `CONNTRACK_V4` map (12 bytes: jhash2's final mix alone, no round).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV4 {
    /// The smaller endpoint's address, network order.
    pub addr_a: u32,
    pub addr_b: u32,
    pub port_a: u16,
    pub port_b: u16,
}

/// Key of the `CONNTRACK_V6` map (36 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKeyV6 {
    /// The smaller endpoint's address: 16 bytes in network order.
    pub addr_a: [u32; 4],
    pub addr_b: [u32; 4],
    pub port_a: u16,
    pub port_b: u16,
}

/// A tracked flow as the daemon lists it, from either table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    /// The smaller endpoint's address: 16 bytes in network order, IPv4 mapped.
    pub addr_a: [u32; 4],
    pub addr_b: [u32; 4],
    pub port_a: u16,
    pub port_b: u16,
    /// IP protocol.
    pub proto: u8,
}

impl CtKey {
    /// The listing form of a `CONNTRACK_V4` entry.
    #[must_use]
    pub const fn from_v4(k: &CtKeyV4, proto: u8) -> Self {
        Self {
            addr_a: [0, 0, V4_MAPPED_WORD, k.addr_a],
            addr_b: [0, 0, V4_MAPPED_WORD, k.addr_b],
            port_a: k.port_a,
            port_b: k.port_b,
            proto,
        }
    }

    /// The listing form of a `CONNTRACK_V6` entry.
    #[must_use]
    pub const fn from_v6(k: &CtKeyV6, proto: u8) -> Self {
        Self {
            addr_a: k.addr_a,
            addr_b: k.addr_b,
            port_a: k.port_a,
            port_b: k.port_b,
            proto,
        }
    }
}

/// Value of the `CONNTRACK_V4` and `CONNTRACK_V6` maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_coarse_ns()` of the last packet (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` when the flow was opened.
    pub created_ns: u64,
    /// The rule that allowed the flow; later packets are credited to it.
    pub rule_id: u32,
    /// Policy generation the flow was last checked against.
    pub generation: u32,
    /// `CT_*` state.
    pub state: u8,
    /// 0: endpoint A opened the flow; 1: endpoint B did.
    pub initiator: u8,
    /// Direction the policy allowed the flow in (`DIR_EGRESS`/`DIR_INGRESS`).
    pub dir: u8,
    /// `CT_FIN_*` bits.
    pub fin: u8,
    /// IP protocol of the flow (not in the key, see the module docs).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Slots of each CPU's flow cache (a power of two).
pub const FLOW_CACHE_BITS: u32 = 10;
pub const FLOW_CACHE_ENTRIES: u32 = 1 << FLOW_CACHE_BITS;
/// Default of [`CtTimeouts::cache_refresh_ms`].
pub const DEFAULT_FLOW_CACHE_REFRESH_MS: u32 = 50;
/// Largest [`CtTimeouts::cache_refresh_ms`] the daemon accepts.
pub const MAX_FLOW_CACHE_REFRESH_MS: u32 = 1000;

/// Slots of the presence filter `CT_FILTER` (module docs, "Presence filter"): 4 MiB
/// of stamps, as many slots as the default tables (both families) hold flows. (The
/// stamps are `u64` because the BPF target has 64-bit atomics only.)
pub const CT_FILTER_BITS: u32 = 19;
pub const CT_FILTER_SLOTS: u32 = 1 << CT_FILTER_BITS;
/// A stamp counts units of `1 << CT_FILTER_SHIFT` ns (about a second) of the coarse
/// monotonic clock, so a flow raises its slot's stamp about once a second, not at
/// every table visit.
pub const CT_FILTER_SHIFT: u32 = 30;

/// The stamp that covers a flow live until `until_ns` (its `last_seen_ns` plus its
/// state's timeout): the first unit that starts after it.
#[inline(always)]
#[must_use]
pub const fn ct_filter_stamp(until_ns: u64) -> u64 {
    (until_ns >> CT_FILTER_SHIFT) + 1
}

/// Whether, at `now_ns`, a slot stamped `stamp` can hold no live flow: `now_ns` is at
/// or past the start of the stamp's unit, so it is past the expiry of every flow the
/// stamp covers.
#[inline(always)]
#[must_use]
pub const fn ct_filter_passed(now_ns: u64, stamp: u64) -> bool {
    now_ns >> CT_FILTER_SHIFT >= stamp
}

/// A slot of the per-CPU flow cache (module docs, "Flow cache").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    /// The flow's key words: a `CtKeyV6` as is, a `CtKeyV4` in the first three
    /// (addresses, then `port_a | port_b << 16`).
    pub key: [u32; 9],
    /// `FLOW_CACHE_VALID | v6 << 8 | proto`; 0: empty.
    pub tag: u32,
    /// As in the flow's `CtValue`.
    pub rule_id: u32,
    pub generation: u32,
    /// Hits are served while the coarse clock is below this.
    pub until_ns: u64,
    /// Time of the last packet served from the slot.
    pub last_ns: u64,
    /// Verdict direction of a packet from endpoint A, from endpoint B.
    pub dir_a: u8,
    pub dir_b: u8,
    /// Whose packets may be served: `FLOW_CACHE_FROM_A` and/or `FLOW_CACHE_FROM_B`.
    pub from: u8,
    pub _pad: [u8; 5],
}

pub const FLOW_CACHE_VALID: u32 = 1 << 16;
pub const FLOW_CACHE_FROM_B: u8 = 1;
pub const FLOW_CACHE_FROM_A: u8 = 2;

const _: () = assert!(core::mem::size_of::<FlowCacheEntry>() == 72);

// The kernel hashes the whole key (jhash2, a round per 12 bytes): the sizes are the
// point of the keys.
const _: () = assert!(core::mem::size_of::<CtKeyV4>() == 12);
const _: () = assert!(core::mem::size_of::<CtKeyV6>() == 36);
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);

/// Timeouts in seconds, per state, and the flow cache's refresh time. Part of the
/// datapath `Config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_syn_sent: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_closed: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub icmp: u32,
    /// Not a timeout: the longest time in milliseconds a CPU serves a flow from its
    /// flow cache before it consults the table again (module docs, "Flow cache"); 0:
    /// no cache.
    pub cache_refresh_ms: u32,
}

impl Default for CtTimeouts {
    /// Close to Linux nf_conntrack's defaults, with a shorter established timeout.
    fn default() -> Self {
        Self {
            tcp_syn_sent: 60,
            tcp_established: 3600,
            tcp_closing: 60,
            tcp_closed: 10,
            udp_unreplied: 30,
            udp_replied: 180,
            icmp: 30,
            cache_refresh_ms: DEFAULT_FLOW_CACHE_REFRESH_MS,
        }
    }
}

impl CtTimeouts {
    /// Every state's timeout, in seconds (the cache refresh is not one).
    const fn by_state(&self) -> [u32; 7] {
        [
            self.tcp_syn_sent,
            self.tcp_established,
            self.tcp_closing,
            self.tcp_closed,
            self.udp_unreplied,
            self.udp_replied,
            self.icmp,
        ]
    }

    /// The longest timeout of any state, in nanoseconds.
    #[must_use]
    pub fn max_ns(&self) -> u64 {
        u64::from(self.by_state().into_iter().max().unwrap_or(0)) * 1_000_000_000
    }

    /// Whether any state's timeout is longer in `self` than in `old` (flows stamped
    /// under `old` may then outlive their stamps, module docs "Presence filter").
    #[must_use]
    pub fn raises(&self, old: &Self) -> bool {
        self.by_state()
            .into_iter()
            .zip(old.by_state())
            .any(|(new, old)| new > old)
    }

    /// The timeout of a state, in nanoseconds.
    #[inline(always)]
    #[must_use]
    pub const fn for_state_ns(&self, state: u8, proto: u8) -> u64 {
        let s = match state {
            CT_TCP_SYN_SENT => self.tcp_syn_sent,
            CT_TCP_ESTABLISHED => self.tcp_established,
            CT_TCP_CLOSING => self.tcp_closing,
            CT_TCP_CLOSED => self.tcp_closed,
            CT_REPLIED if proto == crate::policy::PROTO_UDP => self.udp_replied,
            CT_UNREPLIED if proto == crate::policy::PROTO_UDP => self.udp_unreplied,
            _ => self.icmp,
        };
        (s as u64) * 1_000_000_000
    }

    /// Whether the flow `v` of protocol `proto` (its `v.proto`, passed apart so
    /// that a caller which holds it already need not load it again) has been idle
    /// at `now` for longer than its state's timeout. The difference saturates:
    /// another CPU's clock cache may be a tick ahead of `now` (`last_seen_ns` later
    /// than it).
    #[inline(always)]
    #[must_use]
    pub const fn expired(&self, v: &CtValue, proto: u8, now: u64) -> bool {
        now.saturating_sub(v.last_seen_ns) > self.for_state_ns(v.state, proto)
    }
}

impl CtKey {
    /// An address of the key as bytes (network order).
    #[must_use]
    pub fn bytes(words: &[u32; 4]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// An address (network order bytes) as the key's words: the inverse of
    /// [`CtKey::bytes`].
    #[must_use]
    pub fn words(b: &[u8; 16]) -> [u32; 4] {
        let mut out = [0u32; 4];
        for (i, w) in out.iter_mut().enumerate() {
            *w = u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        out
    }
}

/// Stable name of a state, for listings.
#[must_use]
pub const fn state_name(state: u8) -> &'static str {
    match state {
        CT_TCP_SYN_SENT => "syn_sent",
        CT_TCP_ESTABLISHED => "established",
        CT_TCP_CLOSING => "closing",
        CT_TCP_CLOSED => "closed",
        CT_UNREPLIED => "unreplied",
        CT_REPLIED => "replied",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u64 = 1 << CT_FILTER_SHIFT;

    #[test]
    fn a_flow_expires_after_its_states_timeout_and_not_before() {
        let t = CtTimeouts::default();
        let udp = CtValue {
            last_seen_ns: 1_000,
            state: CT_REPLIED,
            proto: crate::policy::PROTO_UDP,
            ..CtValue::default()
        };
        let limit = t.for_state_ns(CT_REPLIED, crate::policy::PROTO_UDP);
        assert_ne!(limit, t.for_state_ns(CT_REPLIED, crate::policy::PROTO_ICMP));
        assert!(!t.expired(&udp, udp.proto, 1_000 + limit));
        assert!(t.expired(&udp, udp.proto, 1_000 + limit + 1));
        // Seen later than `now` (another CPU's clock a tick ahead): not expired.
        assert!(!t.expired(&udp, udp.proto, 0));
        // The same state of an ICMP flow has the ICMP timeout.
        let icmp = CtValue {
            proto: crate::policy::PROTO_ICMP,
            ..udp
        };
        let icmp_limit = t.for_state_ns(CT_REPLIED, crate::policy::PROTO_ICMP);
        assert!(!t.expired(&icmp, icmp.proto, 1_000 + icmp_limit));
        assert!(t.expired(&icmp, icmp.proto, 1_000 + icmp_limit + 1));
    }

    #[test]
    fn a_stamp_has_passed_only_after_the_expiry_it_covers() {
        for until in [
            0,
            1,
            UNIT - 1,
            UNIT,
            UNIT + 1,
            5 * UNIT + 17,
            3600 * 1_000_000_000,
        ] {
            let stamp = ct_filter_stamp(until);
            // Live at its expiry (the table path keeps a flow while
            // `now - last_seen <= timeout`), so never passed up to it ...
            assert!(!ct_filter_passed(until, stamp), "until {until}");
            assert!(!ct_filter_passed(until.saturating_sub(1), stamp));
            // ... and passed within one unit after it.
            assert!(ct_filter_passed(until + UNIT, stamp), "until {until}");
        }
        // An untouched slot (stamp 0) has always passed.
        assert!(ct_filter_passed(0, 0));
    }

    #[test]
    fn timeouts_raise_only_when_a_state_gets_longer() {
        let d = CtTimeouts::default();
        assert_eq!(d.max_ns(), 3600 * 1_000_000_000);
        assert!(!d.raises(&d));
        let shorter = CtTimeouts {
            tcp_established: 60,
            cache_refresh_ms: 0,
            ..d
        };
        assert!(!shorter.raises(&d));
        assert!(d.raises(&shorter));
        let icmp = CtTimeouts { icmp: 31, ..d };
        assert!(icmp.raises(&d));
        // The cache refresh is not a timeout.
        let refresh = CtTimeouts {
            cache_refresh_ms: 1000,
            ..d
        };
        assert!(!refresh.raises(&d));
    }
}
