//! Types shared by the tagwall datapath (eBPF, `no_std`) and the control daemon.
//!
//! Everything here is `#[repr(C)]` plain data: these structs *are* the map ABI. Field
//! order and padding are explicit so both sides agree byte for byte; booleans are `u8`
//! or `u32` flags, never `bool`. Userspace gets `aya::Pod` impls with the `user`
//! feature.
#![no_std]

pub mod counters;
pub mod ct;
pub mod policy;
pub mod reports;
pub mod stride;
pub mod verdict;

/// Names of the maps and programs in the eBPF object. Userspace looks them up by these
/// names, so they are the single source of truth for both sides.
pub mod names {
    pub const PROG_XDP: &str = "tagwall_xdp";
    /// An XDP program that only passes: the benchmark floor.
    pub const PROG_FLOOR: &str = "tagwall_floor";
    /// A TC classifier that only passes: the floor for the TC programs.
    pub const PROG_TC_FLOOR: &str = "tagwall_tc_floor";
    pub const MAP_POLICY_V4: &str = "POLICY_V4";
    pub const MAP_POLICY_V6: &str = "POLICY_V6";
    /// The multibit trie of the policy prefixes (`stride`), mmapped by userspace.
    pub const MAP_LOOKUP: &str = "LOOKUP";
    pub const MAP_PORT_SETS: &str = "PORT_SETS";
    /// The datapath's settings: the global `CONFIG` (`GLOBAL_CONFIG`) in a data
    /// section of its own, which the loader turns into a one-entry array map named
    /// after the section. The programs read it at an address fixed at load time,
    /// without a map lookup.
    pub const MAP_CONFIG: &str = ".bss.config";
    /// The symbol of the settings global, and the file its map is pinned as (the name
    /// the map had when it was an ordinary map, so pins from then are adopted).
    pub const GLOBAL_CONFIG: &str = "CONFIG";

    /// The file `map` is pinned as in a pin directory: its name, but for the
    /// settings (`MAP_CONFIG`), which keep their old name.
    #[must_use]
    pub fn pin_file(map: &str) -> &str {
        if map == MAP_CONFIG {
            GLOBAL_CONFIG
        } else {
            map
        }
    }
    pub const MAP_RULE_STATS: &str = "RULE_STATS";
    /// Per-packet verdict counters; the actions are summed from them (`counters`).
    pub const MAP_REASON_STATS: &str = "REASON_STATS";
    /// Flow tables, one per address family (`ct`).
    pub const MAP_CONNTRACK_V4: &str = "CONNTRACK_V4";
    pub const MAP_CONNTRACK_V6: &str = "CONNTRACK_V6";
    pub const MAP_CT_STATS: &str = "CT_STATS";
    /// Per-CPU flow cache in front of the flow tables (`ct`, "Flow cache").
    pub const MAP_FLOW_CACHE: &str = "FLOW_CACHE";
    /// Presence filter of the flow tables (`ct` module docs, "Presence filter").
    pub const MAP_CT_FILTER: &str = "CT_FILTER";
    /// Egress interfaces for gateway fast forwarding (devmap hash, keyed by ifindex).
    pub const MAP_FWD_PORTS: &str = "FWD_PORTS";
    /// Fast-forwarding outcomes (`FWD_*` counters).
    pub const MAP_FWD_STATS: &str = "FWD_STATS";
    /// TC programs for host mode (the host's own traffic, on its NIC).
    pub const PROG_TC_EGRESS: &str = "tagwall_tc_egress";
    pub const PROG_TC_INGRESS: &str = "tagwall_tc_ingress";
    /// Gateway mode: the gateway's own outbound traffic, on TC egress.
    pub const PROG_TC_LOCAL: &str = "tagwall_tc_local";
    /// Per-CPU scratch that carries a packet's parsed facts from stage 1 (parse) to
    /// stage 2 (policy and tracking) of a program.
    pub const MAP_FACTS: &str = "FACTS";
    /// Denied-flow events (ring buffer), their rate limit and counters.
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_EVENT_STATS: &str = "EVENT_STATS";
    pub const MAP_EVENT_BUCKET: &str = "EVENT_BUCKET";
    pub const MAP_REPORT_CONFIG: &str = "REPORT_CONFIG";
    /// Drops per remote address, port, protocol and direction (LRU hash).
    pub const MAP_TOP_DENIED: &str = "TOP_DENIED";
    /// Per-CPU direct-mapped slots in front of `TOP_DENIED` (`reports`).
    pub const MAP_TOP_SLOTS: &str = "TOP_SLOTS";
}

#[cfg(feature = "user")]
mod pod {
    use crate::{
        counters::{Counter, RuleCounter},
        ct::{CtKeyV4, CtKeyV6, CtTimeouts, CtValue, FlowCacheEntry},
        policy::{Config, PolicyKeyV4, PolicyKeyV6, PolicyValue, PortRule, PortSet},
        reports::{DenyEvent, ReportConfig, TokenBucket, TopKey, TopSlot, TopValue},
    };

    // SAFETY: all of these are #[repr(C)] structs made only of integers and integer
    // arrays, with explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for RuleCounter {}
    unsafe impl aya::Pod for PolicyKeyV4 {}
    unsafe impl aya::Pod for PolicyKeyV6 {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for CtKeyV4 {}
    unsafe impl aya::Pod for CtKeyV6 {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for CtTimeouts {}
    unsafe impl aya::Pod for FlowCacheEntry {}
    unsafe impl aya::Pod for ReportConfig {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for DenyEvent {}
    unsafe impl aya::Pod for TopKey {}
    unsafe impl aya::Pod for TopValue {}
    unsafe impl aya::Pod for TopSlot {}
}
