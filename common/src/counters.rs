//! Counter layout. All counter maps are per-CPU arrays of [`Counter`] (`RULE_STATS`:
//! of [`RuleCounter`]); userspace sums the per-CPU values. Every packet updates
//! exactly one counter of `RULE_STATS` or `REASON_STATS`:
//!
//! - `RULE_STATS[rule_id]`: the packets and bytes each rule allowed, split by
//!   direction and by whether the verdict was `allowed` or `established`
//!   ([`rule_class`]). Rule 0 is the gateway's own traffic (`gateway_own`).
//! - `REASON_STATS[(audit * DIR_MAX + dir) * REASON_MAX + reason]` ([`reason_index`]):
//!   every other packet, keyed by the reason of its verdict (see [`crate::verdict`]),
//!   its direction and whether audit mode was on. Userspace adds the rules' classes
//!   to the `allowed` and `established` reasons, so the reasons still cover every
//!   packet. What actually happened to a packet (pass, drop, or pass in audit mode
//!   although the policy would drop it) follows from the reason and the audit bit
//!   ([`action_of`]; an allowed packet passes in either mode), so userspace sums the
//!   actions from these counters too. An allowed packet used to update both maps;
//!   updating one saved 2 ns per packet (docs/profiling.md, ninth round).

/// A packet and byte counter. Per-CPU, so updates need no atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    /// Sum of two counters, saturating (a counter never wraps into a small number).
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.saturating_add(other.packets),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

/// Size of `RULE_STATS`. Rule ids are `1..MAX_RULES` (0: the gateway's own traffic).
pub const MAX_RULES: u32 = 16384;

/// Classes of a rule's counters: direction x (`allowed`, `established`).
pub const RULE_CLASSES: usize = 4;

/// A rule's counters, one per [`rule_class`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    pub classes: [Counter; RULE_CLASSES],
}

impl RuleCounter {
    /// Sum of two rules' counters (per-CPU values), class by class.
    #[must_use]
    pub fn plus(mut self, other: &Self) -> Self {
        for (a, b) in self.classes.iter_mut().zip(other.classes.iter()) {
            *a = a.add(*b);
        }
        self
    }

    /// All classes together: what the rule allowed.
    #[must_use]
    pub fn total(&self) -> Counter {
        self.classes
            .iter()
            .fold(Counter::default(), |acc, c| acc.add(*c))
    }
}

/// The class in [`RuleCounter::classes`] of a packet of direction `dir` (`DIR_*`)
/// whose verdict has `reason`: `REASON_ESTABLISHED` or else `REASON_ALLOWED`.
#[must_use]
pub const fn rule_class(dir: u8, reason: u8) -> usize {
    (dir as usize & 1) * 2 + (reason == crate::verdict::REASON_ESTABLISHED) as usize
}

/// The direction and the reason of a [`rule_class`] (its inverse).
#[must_use]
pub const fn class_of(class: usize) -> (u8, u8) {
    let reason = if class & 1 == 0 {
        crate::verdict::REASON_ALLOWED
    } else {
        crate::verdict::REASON_ESTABLISHED
    };
    ((class >> 1) as u8, reason)
}

/// Number of packet directions in `REASON_STATS`.
pub const DIR_MAX: u32 = 2;
/// Traffic leaving the protected network (lookup by destination).
pub const DIR_EGRESS: u8 = 0;
/// Traffic entering the protected network (lookup by source).
pub const DIR_INGRESS: u8 = 1;
/// LPM key direction of rules that match the *destination* whichever way the packet
/// goes (management: SSH to the gateway itself, the Azure platform addresses). Only
/// a key code, never a packet direction.
pub const KEY_DIR_LOCAL: u8 = 2;
/// LPM key direction of the protected network's own prefixes (`internal_prefixes`):
/// on a one-NIC gateway a packet whose source is internal goes out, any other comes
/// in. Only a key code, never a packet direction.
pub const KEY_DIR_INTERNAL: u8 = 3;

/// Index into `REASON_STATS` of a packet of direction `dir` (`DIR_*`) whose verdict
/// has `reason`, judged with audit mode on or off.
#[must_use]
pub const fn reason_index(dir: u8, reason: u8, audit: bool) -> u32 {
    ((audit as u32) * DIR_MAX + (dir as u32)) * crate::verdict::REASON_MAX + (reason as u32)
}

/// Size of `REASON_STATS`: both audit modes, both directions, every reason.
pub const REASON_STATS_LEN: u32 = 2 * DIR_MAX * crate::verdict::REASON_MAX;

/// Actions: what happened to a packet ([`action_of`]).
pub const ACTION_PASS: u32 = 0;
pub const ACTION_DROP: u32 = 1;
/// Audit mode: the policy would have dropped the packet, but it was passed.
pub const ACTION_AUDIT_PASS: u32 = 2;
pub const ACTION_MAX: u32 = 3;

/// What happens to a packet whose verdict has `reason`, with audit mode on or off:
/// an allowed packet passes; a denied one is dropped, or in audit mode passed.
#[must_use]
pub const fn action_of(reason: u8, audit: bool) -> u32 {
    if !crate::verdict::is_drop(reason) {
        ACTION_PASS
    } else if audit {
        ACTION_AUDIT_PASS
    } else {
        ACTION_DROP
    }
}

/// Indices of `CT_STATS` (per-CPU packet counters of the connection tracker).
/// A new flow was opened by a policy-allowed packet.
pub const CT_NEW: u32 = 0;
/// A packet matched a live flow.
pub const CT_HIT: u32 = 1;
/// A packet found its flow timed out; the entry was removed and the packet judged anew.
pub const CT_EXPIRED: u32 = 2;
/// Inserting a new flow failed (the table is full and could not evict): the packet
/// still passed by policy, but its return traffic will be judged by policy too.
pub const CT_INSERT_FAILED: u32 = 3;
/// After a reload (new policy generation) a flow was checked again and still allowed.
pub const CT_REVALIDATED: u32 = 4;
/// After a reload a flow was checked again and is no longer allowed: entry removed.
pub const CT_REVOKED: u32 = 5;
/// A TCP RST or the second FIN closed a flow.
pub const CT_CLOSED: u32 = 6;
/// A packet of a live flow was served from this CPU's flow cache (`FLOW_CACHE`,
/// see `ct::FlowCacheEntry`) without a flow-table lookup; also counted in `CT_HIT`.
pub const CT_CACHED: u32 = 7;
pub const CT_STATS_LEN: u32 = 8;

/// Indices of `FWD_STATS` (per-CPU counters of gateway fast forwarding, see
/// `CONFIG_F_FAST_FORWARD`). Every allowed packet on a gateway with fast forwarding
/// lands in exactly one of them; all but `FWD_REDIRECTED` go up the kernel's stack,
/// which forwards (or answers) them as it would without fast forwarding.
/// Forwarded by XDP: FIB lookup, TTL/hop limit decremented, MACs rewritten, redirected.
pub const FWD_REDIRECTED: u32 = 0;
/// The FIB does not forward it: addressed to the gateway itself, no route,
/// unreachable/blackhole/prohibit routes, forwarding disabled on the interface.
pub const FWD_NOT_FORWARDED: u32 = 1;
/// The next hop's MAC address is not resolved yet (the stack resolves it).
pub const FWD_NO_NEIGH: u32 = 2;
/// Larger than the egress MTU (the stack fragments it or says so with ICMP).
pub const FWD_FRAG_NEEDED: u32 = 3;
/// TTL or hop limit would expire on a packet routed out of a fast-forward interface
/// (the stack sends the ICMP time-exceeded error).
pub const FWD_TTL: u32 = 4;
/// The route leaves through an interface not listed for fast forwarding.
pub const FWD_OTHER_PORT: u32 = 5;
/// VLAN-tagged frames and other encapsulations the fast path does not rewrite.
pub const FWD_UNSUPPORTED: u32 = 6;
pub const FWD_STATS_LEN: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{FIRST_DROP, REASON_ALLOWED, REASON_MAX, is_drop};

    #[test]
    fn every_reason_direction_and_audit_mode_has_its_own_counter() {
        let mut seen = [false; REASON_STATS_LEN as usize];
        for audit in [false, true] {
            for dir in [DIR_EGRESS, DIR_INGRESS] {
                for reason in 0..u8::try_from(REASON_MAX).unwrap() {
                    let i = reason_index(dir, reason, audit) as usize;
                    assert!(!seen[i], "index {i} taken twice");
                    seen[i] = true;
                }
            }
        }
        assert!(seen.iter().all(|s| *s), "every index used");
    }

    #[test]
    fn every_direction_and_allowing_reason_has_its_own_rule_class() {
        use crate::verdict::REASON_ESTABLISHED;
        let mut seen = [false; RULE_CLASSES];
        for dir in [DIR_EGRESS, DIR_INGRESS] {
            for reason in [REASON_ALLOWED, REASON_ESTABLISHED] {
                let class = rule_class(dir, reason);
                assert!(!seen[class], "class {class} taken twice");
                seen[class] = true;
                assert_eq!(class_of(class), (dir, reason));
            }
        }
        assert!(seen.iter().all(|s| *s), "every class used");
    }

    #[test]
    fn a_rules_total_is_the_sum_of_its_classes() {
        let one = |p, b| Counter {
            packets: p,
            bytes: b,
        };
        let a = RuleCounter {
            classes: [one(1, 10), one(2, 20), one(0, 0), one(4, 40)],
        };
        let b = RuleCounter {
            classes: [one(1, 1), one(0, 0), one(3, 3), one(0, 0)],
        };
        let sum = a.plus(&b);
        assert_eq!(sum.classes, [one(2, 11), one(2, 20), one(3, 3), one(4, 40)]);
        assert_eq!(sum.total(), one(11, 74));
    }

    #[test]
    fn action_follows_from_reason_and_audit() {
        assert_eq!(action_of(REASON_ALLOWED, false), ACTION_PASS);
        assert_eq!(action_of(REASON_ALLOWED, true), ACTION_PASS);
        assert_eq!(action_of(FIRST_DROP, false), ACTION_DROP);
        assert_eq!(action_of(FIRST_DROP, true), ACTION_AUDIT_PASS);
        for reason in 0..u8::try_from(REASON_MAX).unwrap() {
            assert_eq!(action_of(reason, false) == ACTION_DROP, is_drop(reason));
            assert_ne!(action_of(reason, true), ACTION_DROP);
        }
    }
}
