//! tagwall datapath: XDP program (gateway mode) that allows or denies every packet by
//! destination prefix, protocol and port, and counts every verdict.
//!
//! Flow: `tagwall_xdp` -> [`classify`] (parse + policy lookup) -> [`finish`], the one
//! exit that records counters and turns the verdict into an XDP action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use aya_log_ebpf::debug;
    use tagwall_common::{
        counters::{
            ACTION_AUDIT_PASS, ACTION_DROP, ACTION_MAX, ACTION_PASS, Counter, DIR_EGRESS,
            MAX_RULES, REASON_STATS_LEN, reason_index,
        },
        policy::{
            Config, DEFAULT_MAX_PREFIXES, DEFAULT_SETS_PER_SLOT, KEY_HDR_BITS, MAX_PORT_RULES,
            PolicyKeyV4, PolicyKeyV6, PolicyValue, PortSet,
        },
        verdict::{
            REASON_ALLOWED, REASON_FRAGMENT, REASON_NO_MATCH, REASON_NON_IP, REASON_PORT, is_drop,
        },
    };

    use crate::parse::{Cursor, L3, Outcome, Parsed, parse};

    #[map]
    static POLICY_V4: LpmTrie<PolicyKeyV4, PolicyValue> =
        LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
    #[map]
    static POLICY_V6: LpmTrie<PolicyKeyV6, PolicyValue> =
        LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
    #[map]
    static PORT_SETS: Array<PortSet> = Array::with_max_entries(2 * DEFAULT_SETS_PER_SLOT, 0);
    #[map]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
    #[map]
    static RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);
    #[map]
    static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_STATS_LEN, 0);
    #[map]
    static ACTION_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(ACTION_MAX, 0);

    /// The outcome of classification: why, in which direction, credited to which rule.
    struct Verdict {
        reason: u8,
        dir: u8,
        rule_id: u32,
    }

    impl Verdict {
        const fn new(reason: u8, dir: u8) -> Self {
            Self {
                reason,
                dir,
                rule_id: 0,
            }
        }
    }

    /// The floor for benchmarks: an XDP program that only passes. tagwall's per-packet
    /// cost is reported as a ratio against it, measured in the same run.
    #[xdp]
    pub fn tagwall_floor(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[xdp]
    pub fn tagwall_xdp(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        let end = ctx.data_end();
        let len = (end - start) as u64;
        let (slot, audit) = match CONFIG.get(0) {
            Some(c) => (c.slot as u8, c.audit != 0),
            None => (0, false),
        };
        let verdict = classify(&ctx, &Cursor::new(start, end), slot);
        finish(&verdict, len, audit)
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext, c: &Cursor, slot: u8) -> Verdict {
        match parse(c) {
            Ok(Outcome::NonIp) => Verdict::new(REASON_NON_IP, DIR_EGRESS),
            Ok(Outcome::Ip(p)) => lookup(&p, slot, DIR_EGRESS),
            Err(reason) => {
                debug!(
                    ctx,
                    "tagwall: dropping unparsable packet, reason {}", reason
                );
                Verdict::new(reason, DIR_EGRESS)
            }
        }
    }

    #[inline(always)]
    fn lookup(p: &Parsed, slot: u8, dir: u8) -> Verdict {
        let value = match p.dst {
            L3::V4(addr) => POLICY_V4.get(Key::new(
                KEY_HDR_BITS + 32,
                PolicyKeyV4 {
                    slot,
                    dir,
                    _pad: [0; 2],
                    addr,
                },
            )),
            L3::V6(addr) => POLICY_V6.get(Key::new(
                KEY_HDR_BITS + 128,
                PolicyKeyV6 {
                    slot,
                    dir,
                    _pad: [0; 2],
                    addr,
                },
            )),
        };
        let Some(value) = value else {
            return Verdict::new(REASON_NO_MATCH, dir);
        };
        let Some(set) = PORT_SETS.get(value.set_id) else {
            return Verdict::new(REASON_NO_MATCH, dir);
        };
        let count = set.count as usize;
        let mut i = 0;
        while i < MAX_PORT_RULES && i < count {
            let r = &set.rules[i];
            if r.matches(p.proto, p.dport) {
                return Verdict {
                    reason: REASON_ALLOWED,
                    dir,
                    rule_id: r.rule_id,
                };
            }
            i += 1;
        }
        Verdict::new(
            if p.later_fragment {
                REASON_FRAGMENT
            } else {
                REASON_PORT
            },
            dir,
        )
    }

    #[inline(always)]
    fn bump(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
        if let Some(c) = map.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += bytes;
            }
        }
    }

    /// The one exit: record the verdict, then act on it.
    #[inline(always)]
    fn finish(v: &Verdict, len: u64, audit: bool) -> u32 {
        bump(&REASON_STATS, reason_index(v.dir, v.reason), len);
        if v.reason == REASON_ALLOWED {
            bump(&RULE_STATS, v.rule_id, len);
        }
        let (action, ret) = if !is_drop(v.reason) {
            (ACTION_PASS, xdp_action::XDP_PASS)
        } else if audit {
            (ACTION_AUDIT_PASS, xdp_action::XDP_PASS)
        } else {
            (ACTION_DROP, xdp_action::XDP_DROP)
        };
        bump(&ACTION_STATS, action, len);
        ret
    }

    /// Dual licensed so the kernel lets the program use GPL-only helpers.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
