//! Verdict reasons shared by the datapath and userspace (Cilium-style named drop
//! reasons). Reason 0 means "allowed by a rule"; reasons below [`FIRST_DROP`] pass the
//! packet, reasons from [`FIRST_DROP`] on drop it (or, in audit mode, would drop it).
//!
//! The numbers are ABI: they index counter maps that outlive a daemon restart. Add new
//! reasons at the end of their group; never renumber.

/// Allowed: the destination and protocol/port matched a policy rule.
pub const REASON_ALLOWED: u8 = 0;
/// Passed: not an IP packet (ARP, LLDP, ...). The policy is an IP policy.
pub const REASON_NON_IP: u8 = 1;
/// Passed: a later packet of a flow that an earlier packet opened through the policy
/// (connection tracking: return traffic, and packets of a flow after its first).
pub const REASON_ESTABLISHED: u8 = 2;

/// First reason that drops.
pub const FIRST_DROP: u8 = 8;
/// Dropped: no policy entry covers the destination.
pub const REASON_NO_MATCH: u8 = 8;
/// Dropped: the destination is covered, but not for this protocol/port.
pub const REASON_PORT: u8 = 9;
/// Dropped: truncated or invalid headers (bad IHL, short L4 header, ...).
pub const REASON_MALFORMED: u8 = 10;
/// Dropped: a non-first fragment whose destination is not allowed on every port of
/// its protocol (a non-first fragment carries no ports, so it cannot be classified).
pub const REASON_FRAGMENT: u8 = 11;
/// Dropped: an IPv6 extension-header chain longer than the datapath walks.
pub const REASON_EXT_HDR_LIMIT: u8 = 12;

/// Dropped: the datapath could not finish (the lookup of its per-CPU scratch or of a
/// flow cache slot failed). Never expected; counted so it cannot go unnoticed.
pub const REASON_INTERNAL: u8 = 13;

/// Number of reason slots per direction and audit mode in `REASON_STATS`.
pub const REASON_MAX: u32 = 16;

/// Is this reason a drop (or an audit-mode would-drop)?
#[must_use]
pub const fn is_drop(reason: u8) -> bool {
    reason >= FIRST_DROP
}

/// Stable lowercase name of a reason, as used in reports and JSON.
#[must_use]
pub const fn reason_name(reason: u8) -> &'static str {
    match reason {
        REASON_ALLOWED => "allowed",
        REASON_NON_IP => "non_ip",
        REASON_ESTABLISHED => "established",
        REASON_NO_MATCH => "no_match",
        REASON_PORT => "port",
        REASON_MALFORMED => "malformed",
        REASON_FRAGMENT => "fragment",
        REASON_EXT_HDR_LIMIT => "ext_hdr_limit",
        REASON_INTERNAL => "internal",
        _ => "unknown",
    }
}

/// Every defined reason, in numeric order.
pub const ALL_REASONS: [u8; 9] = [
    REASON_ALLOWED,
    REASON_NON_IP,
    REASON_ESTABLISHED,
    REASON_NO_MATCH,
    REASON_PORT,
    REASON_MALFORMED,
    REASON_FRAGMENT,
    REASON_EXT_HDR_LIMIT,
    REASON_INTERNAL,
];
