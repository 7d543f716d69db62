//! Policy maps: LPM-trie keys and values, port sets and the datapath config.
//!
//! # Lookup
//! For a packet leaving the protected network the datapath looks its *destination* up
//! in `POLICY_V4`/`POLICY_V6` (LPM tries). The key starts with a 32-bit header
//! `[slot, dir, 0, 0]` followed by the address, so the trie prefix length of an entry
//! for `a.b.c.d/n` is `KEY_HDR_BITS + n`:
//!
//! - `slot` (0 or 1) is the policy generation slot. A reload writes the new policy into
//!   the inactive slot, then flips `Config::slot` in one map write, so a packet sees
//!   either the whole old or the whole new policy, never a mix.
//! - `dir` is [`crate::counters::DIR_EGRESS`] (match destination) or
//!   [`crate::counters::DIR_INGRESS`] (match source, for inbound rules).
//!
//! Overlapping prefixes are flattened by the compiler: the longest match carries the
//! union of all rules whose prefixes cover it, because an LPM trie returns one entry.
//!
//! # Value
//! A [`PolicyValue`] names a [`PortSet`] (an index into `PORT_SETS`, already offset by
//! the slot). The set lists `(proto, port range, rule id)` entries ordered by rule id;
//! the first entry that matches allows the packet and is credited with it.
//!
//! # Matching an entry
//! - `proto == PROTO_ANY` matches every protocol, otherwise the IP protocol must equal.
//! - TCP and UDP packets carry a destination port that must lie in `port_lo..=port_hi`.
//! - Packets without ports (ICMP, ICMPv6, ESP, ..., and non-first fragments) match an
//!   entry only if it covers every port (`0..=65535`).

/// Bits of the key header in front of the address (`[slot, dir, 0, 0]`).
pub const KEY_HDR_BITS: u32 = 32;

/// Maximum entries in one [`PortSet`]. The compiler rejects a policy whose flattened
/// set for some prefix needs more, naming the prefix and the rules.
pub const MAX_PORT_RULES: usize = 16;

/// `PortRule::proto` value that matches every IP protocol.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Default capacity of each LPM trie (`BPF_F_NO_PREALLOC`, so this is a cap, not an
/// allocation). Both slots share it. The loader can raise it.
pub const DEFAULT_MAX_PREFIXES: u32 = 1 << 21;
/// Default number of port sets per slot; `PORT_SETS` holds two slots' worth.
pub const DEFAULT_SETS_PER_SLOT: u32 = 8192;

/// Key of `POLICY_V4` (the data part of an LPM key; the prefix length precedes it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV4 {
    pub slot: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    /// Network byte order.
    pub addr: [u8; 4],
}

/// Key of `POLICY_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyV6 {
    pub slot: u8,
    pub dir: u8,
    pub _pad: [u8; 2],
    /// Network byte order.
    pub addr: [u8; 16],
}

/// Value of `POLICY_V4`/`POLICY_V6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Index into `PORT_SETS` (slot offset included).
    pub set_id: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// One allowed `(protocol, destination port range)` credited to a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRule {
    pub rule_id: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl PortRule {
    #[must_use]
    pub const fn new(rule_id: u32, proto: u8, port_lo: u16, port_hi: u16) -> Self {
        Self {
            rule_id,
            port_lo,
            port_hi,
            proto,
            _pad: [0; 3],
        }
    }

    /// Does this entry cover every port?
    #[must_use]
    pub const fn any_port(&self) -> bool {
        self.port_lo == 0 && self.port_hi == u16::MAX
    }

    /// Does this entry allow a packet of `proto` to `port` (`None`: the packet has no
    /// ports, see the module docs)?
    #[inline(always)]
    #[must_use]
    pub const fn matches(&self, proto: u8, port: Option<u16>) -> bool {
        if self.proto != PROTO_ANY && self.proto != proto {
            return false;
        }
        match port {
            Some(p) => self.port_lo <= p && p <= self.port_hi,
            None => self.any_port(),
        }
    }
}

/// Value of `PORT_SETS`: up to [`MAX_PORT_RULES`] entries, ordered by rule id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl Default for PortSet {
    fn default() -> Self {
        Self {
            count: 0,
            rules: [PortRule::new(0, 0, 0, 0); MAX_PORT_RULES],
        }
    }
}

/// `Config::flags`: internal prefixes are configured, so the XDP program decides the
/// direction of a packet by its source (internal: outbound, else inbound). Without it
/// every packet the XDP program sees is outbound.
pub const CONFIG_F_DIRECTIONAL: u32 = 1;
/// `Config::flags`: connection tracking is on.
pub const CONFIG_F_CONNTRACK: u32 = 2;
/// `Config::flags`: the gateway's own outbound traffic (TC egress, not forwarded) is
/// allowed and tracked without consulting the rules.
pub const CONFIG_F_GATEWAY_OWN: u32 = 4;
/// `Config::flags`: the active slot has local (management) entries. Without it the
/// datapath skips the local lookup, so a policy without management rules pays one
/// LPM lookup per denied packet, not two.
pub const CONFIG_F_LOCAL_RULES: u32 = 8;
/// `Config::flags`: the active slot's prefixes are in the LPM tries (`POLICY_V4`,
/// `POLICY_V6`), not in the multibit trie (`LOOKUP`), which was too small for them.
pub const CONFIG_F_LPM_FALLBACK: u32 = 16;
/// `Config::flags`: gateway fast forwarding (`[fast_forward]`): the XDP program
/// forwards an allowed packet itself (FIB lookup, TTL, MAC rewrite, redirect) when the
/// route leaves through an interface in `FWD_PORTS`; anything else goes up the stack.
pub const CONFIG_F_FAST_FORWARD: u32 = 32;

/// Capacity of `FWD_PORTS` (egress interfaces for fast forwarding).
pub const FWD_PORTS_MAX: u32 = 64;

/// Value of `CONFIG[0]`, read once per packet. Written in one map update, so the slot,
/// flags and timeouts of a policy switch together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Active policy slot (0 or 1).
    pub slot: u32,
    /// 1: audit mode: count what would be dropped, but pass it.
    pub audit: u32,
    /// Policy generation (increments on each applied policy). Tracked flows remember
    /// the generation that allowed them and are checked again when it changes.
    pub generation: u32,
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Connection-tracking timeouts.
    pub ct: crate::ct::CtTimeouts,
    /// [`MAP_LAYOUT`] of the userspace that wrote this (0: never written). Not read by
    /// the datapath: it lets a later tagwall refuse pinned maps whose sizes match but
    /// whose contents mean something else.
    pub layout: u32,
    pub _pad: u32,
    /// Until this coarse-clock time the datapath ignores the flow tables' presence
    /// filter and looks every packet up (`ct` module docs, "Presence filter"); set
    /// by the daemon when a reload raises a timeout or it adopts flow tables the
    /// filter has not seen.
    pub ct_filter_from_ns: u64,
}

impl Config {
    /// Whether a daemon ever wrote this value (an all-zero `CONFIG` is the map's
    /// initial state: nothing applied yet).
    #[must_use]
    pub const fn written(&self) -> bool {
        self.layout != 0 || self.generation != 0
    }
}

/// What the maps' contents mean, as this build writes and reads them. Bumped when a
/// map keeps its key and value sizes but changes its encoding (an upgrade across such
/// a change must not adopt the old pins; sizes are checked separately).
/// 1: the multibit trie's child entries are byte offsets with the child flag in bit 0.
/// 2: `LOOKUP` holds IPv6 shortcut records after its roots (`stride::FIRST_NODE`).
pub const MAP_LAYOUT: u32 = 2;
