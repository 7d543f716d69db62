//! tagwall datapath: XDP program (gateway mode) that allows or denies every packet by
//! destination prefix, protocol and port, and counts every verdict.
//!
//! Flow: `tagwall_xdp` -> [`classify`] (parse + policy lookup) -> [`finish`], the one
//! exit that records counters and turns the verdict into an XDP action.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_xadd` (`filter_cover`): the only atomic add the BPF target has.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
// `asm!` on BPF (`parse::word`: one load for an unaligned packet word).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::{BPF_F_MMAPABLE, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup, xdp_action},
        helpers::{bpf_fib_lookup as fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns},
        macros::{classifier, map, xdp},
        maps::{
            Array, DevMapHash, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf,
            lpm_trie::Key,
        },
        programs::{TcContext, XdpContext},
    };
    use aya_log_ebpf::debug;
    use core::intrinsics::AtomicOrdering;
    use core::sync::atomic::{Ordering, compiler_fence};
    use tagwall_common::{
        counters::{
            CT_CACHED, CT_CLOSED, CT_EXPIRED, CT_HIT, CT_INSERT_FAILED, CT_NEW, CT_REVALIDATED,
            CT_REVOKED, CT_STATS_LEN, Counter, DIR_EGRESS, DIR_INGRESS, FWD_FRAG_NEEDED,
            FWD_NO_NEIGH, FWD_NOT_FORWARDED, FWD_OTHER_PORT, FWD_REDIRECTED, FWD_STATS_LEN,
            FWD_TTL, FWD_UNSUPPORTED, KEY_DIR_INTERNAL, KEY_DIR_LOCAL, MAX_RULES, REASON_STATS_LEN,
            RULE_CLASSES, RuleCounter, action_of, reason_index, rule_class,
        },
        ct::{
            CT_FILTER_BITS, CT_FILTER_SLOTS, CT_FIN_A, CT_FIN_B, CT_REPLIED, CT_TCP_CLOSED,
            CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT, CT_UNREPLIED, CtKeyV4, CtKeyV6,
            CtValue, DEFAULT_CT_MAX_ENTRIES, FLOW_CACHE_BITS, FLOW_CACHE_ENTRIES,
            FLOW_CACHE_FROM_A, FLOW_CACHE_FROM_B, FLOW_CACHE_VALID, FlowCacheEntry,
            ct_filter_passed, ct_filter_stamp,
        },
        policy::{
            CONFIG_F_CONNTRACK, CONFIG_F_DIRECTIONAL, CONFIG_F_FAST_FORWARD, CONFIG_F_GATEWAY_OWN,
            CONFIG_F_LOCAL_RULES, CONFIG_F_LPM_FALLBACK, Config, DEFAULT_MAX_PREFIXES,
            DEFAULT_SETS_PER_SLOT, FWD_PORTS_MAX, KEY_HDR_BITS, MAX_PORT_RULES, PROTO_ANY,
            PROTO_TCP, PROTO_UDP, PolicyKeyV4, PolicyKeyV6, PolicyValue, PortSet,
        },
        reports::{
            DEFAULT_TOP_DENIED_ENTRIES, DenyEvent, EV_EMITTED, EV_RATE_LIMITED, EV_RING_FULL,
            EVENT_STATS_LEN, EVENTS_RING_BYTES, REPORT_F_EVENTS, REPORT_F_SLOTS, REPORT_F_TOP,
            ReportConfig, TOP_SLOTS_LEN, TokenBucket, TopKey, TopSlot, TopValue, next_batch,
            top_slot,
        },
        stride::{
            CHILD, SHORTCUT_RECORD, SHORTCUTS_BELOW, Table, child, entry_offset, result_value,
            root, shortcut_key, shortcut_offset, shortcut_tag,
        },
        verdict::{
            REASON_ALLOWED, REASON_ESTABLISHED, REASON_FRAGMENT, REASON_INTERNAL, REASON_MALFORMED,
            REASON_NO_MATCH, REASON_NON_IP, REASON_PORT, is_drop,
        },
    };

    use crate::parse::{Cursor, ETH_HDR, ETH_P_IP, ETH_P_IPV6, Headers, IPV4_HDR, IPV6_HDR, parse};

    #[map]
    static POLICY_V4: LpmTrie<PolicyKeyV4, PolicyValue> =
        LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
    #[map]
    static POLICY_V6: LpmTrie<PolicyKeyV6, PolicyValue> =
        LpmTrie::with_max_entries(DEFAULT_MAX_PREFIXES, 0);
    /// The policy prefixes as a multibit trie (`tagwall_common::stride`); userspace
    /// writes it through a shared mapping.
    #[map]
    static LOOKUP: Array<Table> = Array::with_max_entries(1, BPF_F_MMAPABLE);
    #[map]
    static PORT_SETS: Array<PortSet> = Array::with_max_entries(2 * DEFAULT_SETS_PER_SLOT, 0);
    #[map]
    static RULE_STATS: PerCpuArray<RuleCounter> = PerCpuArray::with_max_entries(MAX_RULES, 0);
    #[map]
    static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_STATS_LEN, 0);
    #[map]
    static CONNTRACK_V4: LruHashMap<CtKeyV4, CtValue> =
        LruHashMap::with_max_entries(DEFAULT_CT_MAX_ENTRIES, 0);
    #[map]
    static CONNTRACK_V6: LruHashMap<CtKeyV6, CtValue> =
        LruHashMap::with_max_entries(DEFAULT_CT_MAX_ENTRIES, 0);
    /// This CPU's cache of flows in front of the two tables (`tagwall_common::ct`,
    /// "Flow cache").
    #[map]
    static FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
        PerCpuArray::with_max_entries(FLOW_CACHE_ENTRIES, 0);
    /// Expiry stamps in front of the two tables, shared by all CPUs
    /// (`tagwall_common::ct`, "Presence filter").
    #[map]
    static CT_FILTER: Array<u64> = Array::with_max_entries(CT_FILTER_SLOTS, 0);
    #[map]
    static CT_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(CT_STATS_LEN, 0);
    /// Egress interfaces for fast forwarding (`[fast_forward] interfaces`), keyed by
    /// ifindex; written by the daemon.
    #[map]
    static FWD_PORTS: DevMapHash = DevMapHash::with_max_entries(FWD_PORTS_MAX, 0);
    #[map]
    static FWD_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(FWD_STATS_LEN, 0);
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
    #[map]
    static EVENT_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(EVENT_STATS_LEN, 0);
    #[map]
    static EVENT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);
    #[map]
    static REPORT_CONFIG: Array<ReportConfig> = Array::with_max_entries(1, 0);
    #[map]
    /// Per-CPU values (summed by userspace), so updates need no atomics, which the
    /// BPF target of this toolchain does not offer for 64-bit read-modify-write.
    static TOP_DENIED: LruPerCpuHashMap<TopKey, TopValue> =
        LruPerCpuHashMap::with_max_entries(DEFAULT_TOP_DENIED_ENTRIES, 0);
    /// Each CPU's drops of recent keys, in front of `TOP_DENIED` (see
    /// `tagwall_common::reports`).
    #[map]
    static TOP_SLOTS: PerCpuArray<TopSlot> = PerCpuArray::with_max_entries(TOP_SLOTS_LEN, 0);

    /// The outcome of classification: why, in which direction, credited to which rule.
    #[derive(Clone, Copy)]
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

    /// Where the program runs, which decides how a packet's direction is found.
    #[derive(Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    enum Hook {
        /// XDP on a gateway NIC: by source prefix when internal prefixes are set,
        /// otherwise every packet is outbound.
        Gateway = 0,
        /// TC egress of a host's NIC: the host's own outbound traffic.
        HostEgress = 1,
        /// TC ingress of a host's NIC: traffic to the host.
        HostIngress = 2,
        /// TC egress of a gateway's NIC, packets the gateway itself sends.
        GatewayLocal = 3,
    }

    /// The floor for benchmarks: an XDP program that only passes. tagwall's per-packet
    /// cost is reported as a ratio against it, measured in the same run.
    #[xdp]
    pub fn tagwall_floor(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// The floor for the TC programs: a classifier that only passes.
    #[classifier]
    pub fn tagwall_tc_floor(_ctx: TcContext) -> i32 {
        TC_ACT_OK as i32
    }

    /// The datapath's settings, written by userspace. A global in its own data
    /// section: the loader makes it a one-entry array map, and the program reads it
    /// through an address the verifier fixes at load time, without a lookup.
    /// Zero (slot 0, stateless, enforcing) until userspace writes it, which it does
    /// before attaching; a load that adopts a pinned `CONFIG` keeps its value
    /// (`Dataplane::load`).
    #[unsafe(no_mangle)]
    #[unsafe(link_section = ".bss.config")]
    static mut CONFIG: Config = Config {
        slot: 0,
        audit: 0,
        generation: 0,
        flags: 0,
        ct: tagwall_common::ct::CtTimeouts {
            tcp_syn_sent: 0,
            tcp_established: 0,
            tcp_closing: 0,
            tcp_closed: 0,
            udp_unreplied: 0,
            udp_replied: 0,
            icmp: 0,
            cache_refresh_ms: 0,
        },
        layout: 0,
        _pad: 0,
        ct_filter_from_ns: 0,
    };

    #[inline(always)]
    fn config() -> &'static Config {
        let mut p = &raw const CONFIG;
        // SAFETY: a register moved onto itself. It hides from LLVM that `p` is
        // `CONFIG`, which this program never writes: nothing then allows LLVM to
        // take its reads for the zero it starts as (its link-time optimisation may
        // treat a global nobody writes as a constant), and the address is loaded once
        // per program instead of once per use. Not an empty instruction (a comment):
        // that emitted a line-info record at the offset of the next instruction,
        // which has one too, and the kernel rejects a program whose line info
        // repeats an offset ("Invalid line_info").
        unsafe {
            core::arch::asm!("{p} = {p}", p = inout(reg) p, options(nostack, preserves_flags))
        };
        // SAFETY: a live static; userspace rewrites it whole with a map update.
        unsafe { &*p }
    }

    /// Gateway mode. Stage 1 parses: non-IP and unparsable packets get their verdict
    /// there, and so do packets this CPU's flow cache serves (see [`stage1`]); other
    /// IP packets go on to stage 2, the policy and tracking ([`xdp_stage2`]).
    #[xdp]
    // The macro wraps this body in the program's entry; inlined into it, the
    // packet pays no BPF-to-BPF call (each costs ~5 ns here, docs/profiling.md).
    #[inline(always)]
    pub fn tagwall_xdp(ctx: XdpContext) -> u32 {
        let verdict = match stage1(|| Cursor::new(ctx.data(), ctx.data_end()), Hook::Gateway) {
            Stage1::Ends(v) => v,
            Stage1::Served(v) => {
                count_rule(&v, (ctx.data_end() - ctx.data()) as u64);
                return xdp_action::XDP_PASS;
            }
            Stage1::Decide => return xdp_stage2(&ctx),
        };
        if verdict.reason == REASON_MALFORMED {
            debug!(&ctx, "tagwall: dropping unparsable packet");
        }
        let len = (ctx.data_end() - ctx.data()) as u64;
        xdp_act(finish_stage1(&verdict, len, config().audit != 0))
    }

    /// Gateway mode, stage 2: policy and connection tracking on `FACTS`.
    #[inline(always)]
    fn xdp_stage2(ctx: &XdpContext) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        let cfg = config();
        let v = decide(cfg);
        let pass = finish(&v, len, cfg.audit != 0);
        if is_drop(v.reason) {
            report_drop(v.reason, v.dir, len, pass);
            return xdp_act(pass);
        }
        if cfg.flags & CONFIG_F_FAST_FORWARD != 0 {
            return fast_forward(ctx, len);
        }
        xdp_act(pass)
    }

    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const FIB_SUCCESS: i64 = 0;
    const FIB_NO_NEIGH: i64 = 7;
    const FIB_FRAG_NEEDED: i64 = 8;

    /// Pass the packet up the stack (which forwards it as usual), counting why.
    #[inline(always)]
    fn to_stack(why: u32, len: u64) -> u32 {
        bump(&FWD_STATS, why, len);
        xdp_action::XDP_PASS
    }

    /// Gateway fast forwarding of a packet the policy allowed (`CONFIG_F_FAST_FORWARD`),
    /// after xdp-tools' xdp-forward: ask the kernel's FIB for the route and the next
    /// hop, and when it leaves through an interface in `FWD_PORTS`, decrement the TTL
    /// (hop limit), rewrite the MACs and redirect the frame there, skipping the stack.
    /// Whatever the FIB does not resolve (local address, no route, unresolved
    /// neighbour, MTU, expiring TTL, other interfaces, VLAN tags) goes up the stack
    /// untouched, counted in `FWD_STATS`.
    #[inline(always)]
    fn fast_forward(ctx: &XdpContext, len: u64) -> u32 {
        let Some(f) = FACTS.get(0) else {
            return to_stack(FWD_UNSUPPORTED, len);
        };
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + ETH_HDR + IPV4_HDR > end {
            return to_stack(FWD_UNSUPPORTED, len);
        }
        let eth = start as *mut u8;
        let ip = (start + ETH_HDR) as *mut u8;
        // SAFETY: bounds checked against data_end above (and below for IPv6).
        let ethertype = unsafe { u16::from_be_bytes([*eth.add(12), *eth.add(13)]) };
        // SAFETY: all-zero is a valid bpf_fib_lookup (integers and unions of them).
        let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        let v6 = if ethertype == ETH_P_IP && f.h.v6 == 0 {
            // SAFETY: inside the IPv4 header checked above.
            unsafe {
                p.family = AF_INET;
                p.__bindgen_anon_2.tos = *ip.add(1);
                p.__bindgen_anon_1.tot_len = u16::from_be_bytes([*ip.add(2), *ip.add(3)]);
                p.__bindgen_anon_3.ipv4_src = f.h.src[3];
                p.__bindgen_anon_4.ipv4_dst = f.h.dst[3];
            }
            false
        } else if ethertype == ETH_P_IPV6 && f.h.v6 != 0 {
            if start + ETH_HDR + IPV6_HDR > end {
                return to_stack(FWD_UNSUPPORTED, len);
            }
            // SAFETY: inside the IPv6 header checked just above.
            unsafe {
                p.family = AF_INET6;
                // Traffic class and flow label, without the version.
                p.__bindgen_anon_2.flowinfo =
                    u32::from_ne_bytes([*ip & 0x0f, *ip.add(1), *ip.add(2), *ip.add(3)]);
                let payload = u16::from_be_bytes([*ip.add(4), *ip.add(5)]);
                p.__bindgen_anon_1.tot_len = payload.saturating_add(IPV6_HDR as u16);
                p.__bindgen_anon_3.ipv6_src = f.h.src;
                p.__bindgen_anon_4.ipv6_dst = f.h.dst;
            }
            true
        } else {
            // VLAN-tagged (the parser stripped the tags, this rewrite does not).
            return to_stack(FWD_UNSUPPORTED, len);
        };
        p.l4_protocol = f.h.proto;
        if f.h.has_flow != 0 {
            p.sport = f.h.sport.to_be();
            p.dport = f.h.dport.to_be();
        }
        p.ifindex = ctx.ingress_ifindex() as u32;
        // SAFETY: `p` is a whole bpf_fib_lookup on this stack frame.
        let rc = unsafe {
            fib_lookup(
                ctx.ctx.cast(),
                &mut p,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        };
        match rc {
            FIB_SUCCESS => {}
            FIB_NO_NEIGH => return to_stack(FWD_NO_NEIGH, len),
            FIB_FRAG_NEEDED => return to_stack(FWD_FRAG_NEEDED, len),
            _ => return to_stack(FWD_NOT_FORWARDED, len),
        }
        if FWD_PORTS.get_ifindex(p.ifindex).is_none() {
            return to_stack(FWD_OTHER_PORT, len);
        }
        // Packet pointers again: the helper call invalidated the verifier's checks.
        // Every byte written below (MACs, TTL and checksum, hop limit) lies in the
        // first ETH_HDR + IPV4_HDR bytes.
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + ETH_HDR + IPV4_HDR > end {
            return to_stack(FWD_UNSUPPORTED, len);
        }
        let eth = start as *mut u8;
        let ip = (start + ETH_HDR) as *mut u8;
        // SAFETY: inside the headers checked just above.
        unsafe {
            // Only now, for a packet the FIB would forward through a listed port: a
            // TTL-1 packet for the local link (an MLD report to ff02::16, say) is not
            // forwarded anyway and counts as `not_forwarded`, not as expiring.
            if *ip.add(if v6 { 7 } else { 8 }) <= 1 {
                return to_stack(FWD_TTL, len);
            }
            if v6 {
                *ip.add(7) -= 1;
            } else {
                // Incremental checksum update for TTL - 1 (RFC 1624), as the kernel's
                // ip_decrease_ttl: the checksum's high byte goes up by one, with the
                // end-around carry.
                let check = u32::from(u16::from_be_bytes([*ip.add(10), *ip.add(11)])) + 0x0100;
                let check = (check + u32::from(check >= 0xFFFF)) as u16;
                let [hi, lo] = check.to_be_bytes();
                *ip.add(10) = hi;
                *ip.add(11) = lo;
                *ip.add(8) -= 1;
            }
            for i in 0..6 {
                *eth.add(i) = p.dmac[i];
                *eth.add(6 + i) = p.smac[i];
            }
        }
        match FWD_PORTS.redirect(p.ifindex, u64::from(xdp_action::XDP_PASS)) {
            Ok(action) => {
                bump(&FWD_STATS, FWD_REDIRECTED, len);
                action
            }
            // Removed from FWD_PORTS since the check above: the stack forwards it.
            Err(_) => to_stack(FWD_OTHER_PORT, len),
        }
    }

    #[inline(always)]
    fn xdp_act(pass: bool) -> u32 {
        if pass {
            xdp_action::XDP_PASS
        } else {
            xdp_action::XDP_DROP
        }
    }

    #[inline(always)]
    fn tc_act(pass: bool) -> i32 {
        if pass {
            TC_ACT_OK as i32
        } else {
            TC_ACT_SHOT as i32
        }
    }

    /// Host mode, the host's own outbound traffic.
    #[classifier]
    // Inlined into the macro's entry, as `tagwall_xdp`.
    #[inline(always)]
    pub fn tagwall_tc_egress(ctx: TcContext) -> i32 {
        tc(&ctx, Hook::HostEgress)
    }

    /// Host mode, traffic to the host.
    #[classifier]
    // Inlined into the macro's entry, as `tagwall_xdp`.
    #[inline(always)]
    pub fn tagwall_tc_ingress(ctx: TcContext) -> i32 {
        tc(&ctx, Hook::HostIngress)
    }

    /// Gateway mode, on the egress of the gateway's interfaces: the gateway's *own*
    /// outbound traffic (its DNS upstream queries, SSH replies, ...). Forwarded packets
    /// were judged by XDP where they came in and pass untouched and uncounted here.
    #[classifier]
    // Inlined into the macro's entry, as `tagwall_xdp`.
    #[inline(always)]
    pub fn tagwall_tc_local(ctx: TcContext) -> i32 {
        // SAFETY: the context's skb pointer is valid for the program's run.
        let ingress_ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
        if ingress_ifindex != 0 {
            return TC_ACT_OK as i32;
        }
        tc(&ctx, Hook::GatewayLocal)
    }

    /// TC programs, stage 2: policy and connection tracking on `FACTS` (the hook is
    /// there too).
    #[inline(always)]
    fn tc_stage2(ctx: &TcContext) -> i32 {
        let cfg = config();
        let len = u64::from(ctx.len());
        let v = decide(cfg);
        let pass = finish(&v, len, cfg.audit != 0);
        if is_drop(v.reason) {
            report_drop(v.reason, v.dir, len, pass);
        }
        tc_act(pass)
    }

    /// Headers the parser may need: Ethernet + 2 VLAN tags + IPv6 + 8 extension
    /// headers is more than this, but such packets are rare and get pulled in full.
    const TC_PULL: u32 = 256;

    #[inline(always)]
    fn tc(ctx: &TcContext, hook: Hook) -> i32 {
        let len = ctx.len();
        // An skb's headers can sit outside its linear part (GSO, some drivers): make
        // the first bytes linear so direct packet access sees them.
        let want = if len < TC_PULL { len } else { TC_PULL };
        if ((ctx.data_end() - ctx.data()) as u32) < want {
            let _ = ctx.pull_data(want);
        }
        let verdict = match stage1(|| Cursor::new(ctx.data(), ctx.data_end()), hook) {
            Stage1::Ends(v) => v,
            Stage1::Served(v) => {
                count_rule(&v, u64::from(len));
                return TC_ACT_OK as i32;
            }
            Stage1::Decide => return tc_stage2(ctx),
        };
        tc_act(finish_stage1(&verdict, u64::from(len), config().audit != 0))
    }

    #[inline(always)]
    fn hook_dir(hook: Hook) -> u8 {
        if hook == Hook::HostIngress {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        }
    }

    /// Parse into `FACTS` for stage 2, or return the verdict of a packet that ends
    /// here. A packet an established flow sends is first looked for in this CPU's
    /// flow cache: served there, it skips stage 2's entry (when a tail call joined
    /// the stages, that saved about 3 ns of the 40 such a packet cost,
    /// docs/profiling.md, eleventh round).
    /// `packet` reads the packet's bounds after the `FACTS` lookup:
    /// read before it, they stayed live across the helper call, which clobbers the
    /// argument registers, and went through the stack.
    #[inline(always)]
    fn stage1(packet: impl FnOnce() -> Cursor, hook: Hook) -> Stage1 {
        let Some(f) = FACTS.get_ptr_mut(0) else {
            return Stage1::Ends(Verdict::new(REASON_INTERNAL, hook_dir(hook)));
        };
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        let f = unsafe { &mut *f };
        match parse(&packet(), &mut f.h) {
            Ok(true) => {
                f.h.hook = hook as u8;
                f.probe = PROBE_NONE;
                let cfg = config();
                // Fast forwarding happens in stage 2, so with it on the cache is
                // probed there; so it is with the cache off, and for TCP packets with
                // SYN (connection attempts), FIN or RST.
                if cfg.flags & (CONFIG_F_CONNTRACK | CONFIG_F_FAST_FORWARD) == CONFIG_F_CONNTRACK
                    && f.h.has_flow != 0
                    && f.h.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
                    && cfg.ct.cache_refresh_ms != 0
                {
                    flow_slots(f);
                    let now = coarse_now(f);
                    let Some(c) = FLOW_CACHE.get_ptr_mut(f.cache_slot) else {
                        return Stage1::Decide;
                    };
                    // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
                    match cache_serve(unsafe { &mut *c }, f, cfg, now) {
                        Cached::Served(v) => return Stage1::Served(v),
                        Cached::Held => f.probe = PROBE_HELD,
                        Cached::Miss => f.probe = PROBE_MISS,
                    }
                }
                Stage1::Decide
            }
            Ok(false) => Stage1::Ends(Verdict::new(REASON_NON_IP, hook_dir(hook))),
            Err(reason) => Stage1::Ends(Verdict::new(reason, hook_dir(hook))),
        }
    }

    /// How stage 1 leaves a packet.
    enum Stage1 {
        /// Its verdict (non-IP, unparsable, internal error), counted by the caller.
        Ends(Verdict),
        /// Passed: this CPU's flow cache served it (established), its flow counters
        /// updated; the caller counts it for its rule.
        Served(Verdict),
        /// Parsed into `FACTS` for stage 2.
        Decide,
    }

    /// `Facts::probe`: stage 1 did not probe the flow cache (tracking or the cache
    /// off, no flow, a TCP SYN, FIN or RST, fast forwarding on): stage 2 computes the
    /// slots and the clock and probes it.
    const PROBE_NONE: u8 = 0;
    /// Stage 1 computed the slots and the clock, and the cache slot does not hold the
    /// packet's flow.
    const PROBE_MISS: u8 = 1;
    /// As `PROBE_MISS`, but the slot holds the flow and may not serve this packet
    /// (stale, another generation, a state change): stage 2 probes it again and
    /// decides with the flow table.
    const PROBE_HELD: u8 = 2;

    /// What stage 2 (policy, tracking) needs from a packet, passed from stage 1
    /// (parse) in the per-CPU `FACTS` map. Both stages are one program, and stage 2
    /// reads every fact back from the map, so where the parse paths (VLAN tags x
    /// extension headers x protocols) meet, the verifier finds the same state on
    /// each (only the context and the map are live) and walks stage 2 once, not once
    /// per path: about the two stages' counts added (BENCHMARKS.md, "Verifier
    /// headroom"). Until the thirteenth round (docs/profiling.md) a tail call
    /// joined two programs, which cost 1-3 ns per packet.
    #[repr(C)]
    pub struct Facts {
        /// The packet's headers, as stage 1 parsed them, and its hook.
        h: Headers,
        /// The flow's canonical key in the table of the packet's family (stage 2
        /// fills it when tracking needs it, see [`fill_ct_key`]); map helpers read it
        /// in place.
        key4: CtKeyV4,
        /// As `key4`, for IPv6 packets.
        key6: CtKeyV6,
        /// The packet's source is endpoint A of its key (with the key).
        src_is_a: u8,
        /// What stage 1's flow cache probe found (`PROBE_*`).
        probe: u8,
        /// The flow's slot in `FLOW_CACHE` (stage 1 or 2, see [`flow_slots`] and
        /// `probe`).
        cache_slot: u32,
        /// The flow's slot in `CT_FILTER` (as `cache_slot`).
        filter_slot: u32,
        /// This CPU's clock cache, see [`coarse_now`]: `jiffies` when `clock_ns` was
        /// read (not written by stage 1, so it lives on between packets).
        clock_jiffies: u64,
        clock_ns: u64,
    }

    // `FACTS` is pinned, and a load adopts its pin only when the value size matches:
    // fields added since (`probe`) live in padding, so the size stays.
    const _: () = assert!(core::mem::size_of::<Facts>() == 120);

    #[map]
    static FACTS: PerCpuArray<Facts> = PerCpuArray::with_max_entries(1, 0);

    /// `CLOCK_MONOTONIC` in nanoseconds, coarse (`bpf_ktime_get_coarse_ns`), from this
    /// CPU's cache in `FACTS`, read again only when `jiffies` moved. The verifier
    /// inlines `bpf_jiffies64` into one load, while the clock helper was the largest
    /// single cost of a tracked packet (a call into the kernel, ~16 ns on the benchmark
    /// machine, see docs/profiling.md). The coarse clock itself only moves at a tick,
    /// so the cache is at most one tick behind it, and another CPU's cache may be a
    /// tick ahead: differences of these times must saturate, never wrap.
    #[inline(always)]
    fn coarse_now(f: &mut Facts) -> u64 {
        // SAFETY: helpers without arguments.
        let j = unsafe { bpf_jiffies64() };
        if f.clock_jiffies != j {
            f.clock_ns = unsafe { bpf_ktime_get_coarse_ns() };
            f.clock_jiffies = j;
        }
        f.clock_ns
    }

    /// The verdict on the packet in `FACTS`.
    #[inline(always)]
    fn decide(cfg: &Config) -> Verdict {
        let Some(f) = FACTS.get_ptr_mut(0) else {
            return Verdict::new(REASON_INTERNAL, DIR_EGRESS);
        };
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        let f = unsafe { &mut *f };
        let hook = match f.h.hook {
            1 => Hook::HostEgress,
            2 => Hook::HostIngress,
            3 => Hook::GatewayLocal,
            _ => Hook::Gateway,
        };
        let slot = cfg.slot as u8;
        let tracking = cfg.flags & CONFIG_F_CONNTRACK != 0;
        // A connection attempt (a TCP SYN without ACK, which only an initiator sends)
        // is judged by the rules first, and one they deny is dropped without touching
        // connection tracking: no slot hash, no clock, no presence filter, no table
        // lookup, however full the table. The table could only hold a flow for it as
        // a retransmission of an attempt the same rules allowed (a reload since then
        // revokes the flow, and a learned host name's address does not expire while a
        // flow uses it), as a closed connection whose ports are reused, which is
        // judged anew anyway, or as the responder's SYN of a simultaneous open, which
        // the rules judge like any other attempt. An allowed attempt goes on to the
        // table (`ct_attempt`).
        let attempt = is_attempt(f);
        let mut now = 0;
        if tracking && f.h.has_flow != 0 && !attempt {
            if f.probe == PROBE_NONE {
                flow_slots(f);
                now = coarse_now(f);
            } else {
                // Stage 1 did both for its probe.
                now = f.clock_ns;
            }
        }
        if tracking && !attempt {
            if let Some(v) = ct_continue(f, cfg, now) {
                return v;
            }
        }
        let v = if hook == Hook::GatewayLocal && cfg.flags & CONFIG_F_GATEWAY_OWN != 0 {
            // The gateway's own traffic is allowed (and tracked, so its replies come
            // back in); credited to rule 0, "the gateway itself".
            Verdict {
                reason: REASON_ALLOWED,
                dir: DIR_EGRESS,
                rule_id: 0,
            }
        } else {
            // `rules`: may the rules of the packet's direction apply? An inbound
            // packet on a gateway must be headed for the protected network (inbound
            // rules open the internal prefixes to their sources, not the whole
            // world); local rules apply regardless.
            let (dir, rules) = match hook {
                Hook::HostEgress | Hook::GatewayLocal => (DIR_EGRESS, true),
                Hook::HostIngress => (DIR_INGRESS, true),
                Hook::Gateway => {
                    if cfg.flags & CONFIG_F_DIRECTIONAL == 0
                        || is_internal(&f.h.src, f.h.v6, slot, cfg.flags)
                    {
                        (DIR_EGRESS, true)
                    } else {
                        (DIR_INGRESS, is_internal(&f.h.dst, f.h.v6, slot, cfg.flags))
                    }
                }
            };
            let dport = if f.h.has_dport != 0 {
                Some(f.h.dport)
            } else {
                None
            };
            policy(
                &f.h.src,
                &f.h.dst,
                f.h.v6,
                f.h.proto,
                dport,
                f.h.later_fragment != 0,
                slot,
                dir,
                rules,
                cfg.flags,
            )
        };
        if tracking && v.reason == REASON_ALLOWED {
            if attempt {
                // Once per connection, beside the insert: laid out away from the
                // paths of the packets of a flow.
                core::hint::cold_path();
                flow_slots(f);
                now = coarse_now(f);
                return ct_attempt(f, &v, cfg, now);
            }
            ct_open(f, &v, cfg, now);
        }
        v
    }

    #[inline(always)]
    fn lpm(addr: &[u32; 4], v6: u8, slot: u8, dir: u8) -> Option<&'static PolicyValue> {
        if v6 == 0 {
            POLICY_V4.get(Key::new(
                KEY_HDR_BITS + 32,
                PolicyKeyV4 {
                    slot,
                    dir,
                    _pad: [0; 2],
                    addr: addr[3].to_ne_bytes(),
                },
            ))
        } else {
            let (a, b, c, d) = (
                addr[0].to_ne_bytes(),
                addr[1].to_ne_bytes(),
                addr[2].to_ne_bytes(),
                addr[3].to_ne_bytes(),
            );
            POLICY_V6.get(Key::new(
                KEY_HDR_BITS + 128,
                PolicyKeyV6 {
                    slot,
                    dir,
                    _pad: [0; 2],
                    addr: [
                        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3],
                        d[0], d[1], d[2], d[3],
                    ],
                },
            ))
        }
    }

    /// One step of a multibit-trie walk from the node at byte offset `node` (a child
    /// entry): `Ok(the next node's child entry)` or `Err(result entry)`. The entry's
    /// offset is the node's plus the byte's, so the dependent read waits on a mask,
    /// an or and an add only.
    #[inline(always)]
    fn step(t: &Table, node: u32, byte: u8) -> Result<u32, u32> {
        // SAFETY: `entry_offset` is below the table's size and 4-aligned.
        let e = unsafe {
            t.as_ptr()
                .cast::<u8>()
                .add(entry_offset(node, byte))
                .cast::<u32>()
                .read()
        };
        if e & CHILD == 0 { Err(e) } else { Ok(e) }
    }

    /// The multibit-trie result entry for `addr` (`result_value`: the port-set index,
    /// if a prefix covers it). Inlined like everything on a packet's path: a BPF-to-BPF call
    /// cost ~5 ns per packet on the benchmark machine, and the verifier took less
    /// time over the inlined program than over the subprograms (docs/profiling.md).
    #[inline(always)]
    fn stride_find(addr: &[u32; 4], v6: u8, slot: u8, dir: u8) -> u32 {
        let Some(t) = LOOKUP.get(0) else {
            return 0;
        };
        let mut node = child(root(slot, dir, v6));
        if v6 == 0 {
            for b in addr[3].to_ne_bytes() {
                match step(t, node, b) {
                    Ok(n) => node = n,
                    Err(e) => return e,
                }
            }
            return 0;
        }
        let [w0, w1, w2, w3] = *addr;
        let [b0, b1, b2, b3] = w0.to_ne_bytes();
        let [b12, b13, b14, b15] = w3.to_ne_bytes();
        match step(t, node, b0) {
            Ok(n) => node = n,
            Err(e) => return e,
        }
        // Under a /8 with shortcut records, the /112's record, if it has one, holds
        // the entry the walk reads at byte 14 (`tagwall_common::stride`, "IPv6
        // shortcuts"); the record's address does not depend on the walk.
        let mut resume = false;
        if node & SHORTCUTS_BELOW != 0 {
            let key = shortcut_key(addr);
            // SAFETY: `shortcut_offset` is a whole record inside the table, 32-aligned.
            let r = unsafe {
                t.as_ptr()
                    .cast::<u8>()
                    .add(shortcut_offset(slot, dir, &key))
                    .cast::<[u32; SHORTCUT_RECORD]>()
                    .read()
            };
            if (r[0] == w0)
                & (r[1] == w1)
                & (r[2] == w2)
                & (r[3] == key[3])
                & (r[4] == shortcut_tag(dir))
            {
                node = r[5];
                resume = true;
            }
        }
        if !resume {
            for b in [b1, b2, b3] {
                match step(t, node, b) {
                    Ok(n) => node = n,
                    Err(e) => return e,
                }
            }
            for w in [w1, w2] {
                for b in w.to_ne_bytes() {
                    match step(t, node, b) {
                        Ok(n) => node = n,
                        Err(e) => return e,
                    }
                }
            }
            for b in [b12, b13] {
                match step(t, node, b) {
                    Ok(n) => node = n,
                    Err(e) => return e,
                }
            }
        }
        for b in [b14, b15] {
            match step(t, node, b) {
                Ok(n) => node = n,
                Err(e) => return e,
            }
        }
        0
    }

    /// The port-set index of the longest prefix of `slot`/`dir` covering `addr`,
    /// from the multibit trie or, for a slot that did not fit it, the LPM trie.
    #[inline(always)]
    fn find(addr: &[u32; 4], v6: u8, slot: u8, dir: u8, flags: u32) -> Option<u32> {
        if flags & CONFIG_F_LPM_FALLBACK != 0 {
            return lpm(addr, v6, slot, dir).map(|v| v.set_id);
        }
        result_value(stride_find(addr, v6, slot, dir))
    }

    #[inline(always)]
    fn is_internal(addr: &[u32; 4], v6: u8, slot: u8, flags: u32) -> bool {
        find(addr, v6, slot, KEY_DIR_INTERNAL, flags).is_some()
    }

    /// The first rule of a port set that allows `proto`/`dport` (rule ids start at 1,
    /// so 0 means none).
    ///
    /// Same semantics as `PortRule::matches`, written for the verifier: a packet
    /// without ports is the range 0..=65535, which only an any-port entry contains.
    /// The scan stops at `count` or at the first match.
    #[inline(always)]
    fn port_match(set_id: u32, proto: u8, dport: Option<u16>) -> u32 {
        let Some(set) = PORT_SETS.get(set_id) else {
            return 0;
        };
        let (lo, hi) = match dport {
            Some(p) => (p, p),
            None => (0, u16::MAX),
        };
        let count = set.count as usize;
        let mut i = 0;
        while i < MAX_PORT_RULES && i < count {
            let r = &set.rules[i];
            if ((r.proto == PROTO_ANY) | (r.proto == proto)) & (r.port_lo <= lo) & (hi <= r.port_hi)
            {
                return r.rule_id;
            }
            i += 1;
        }
        0
    }

    /// The policy's verdict on a packet of direction `dir`: outbound packets are
    /// matched by destination, inbound ones by source (`rules`: whether the rules of
    /// the direction may apply at all); either way, local rules (management) by
    /// destination (when the slot has any, `CONFIG_F_LOCAL_RULES`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn policy(
        src: &[u32; 4],
        dst: &[u32; 4],
        v6: u8,
        proto: u8,
        dport: Option<u16>,
        later_fragment: bool,
        slot: u8,
        dir: u8,
        rules: bool,
        flags: u32,
    ) -> Verdict {
        let (peer, key_dir) = if dir == DIR_INGRESS {
            (src, DIR_INGRESS)
        } else {
            (dst, DIR_EGRESS)
        };
        let mut covered = false;
        let primary = if rules {
            find(peer, v6, slot, key_dir, flags)
        } else {
            None
        };
        if let Some(set_id) = primary {
            covered = true;
            let rule_id = port_match(set_id, proto, dport);
            if rule_id != 0 {
                return Verdict {
                    reason: REASON_ALLOWED,
                    dir,
                    rule_id,
                };
            }
        }
        let local_entry = if flags & CONFIG_F_LOCAL_RULES != 0 {
            find(dst, v6, slot, KEY_DIR_LOCAL, flags)
        } else {
            None
        };
        if let Some(set_id) = local_entry {
            covered = true;
            let rule_id = port_match(set_id, proto, dport);
            if rule_id != 0 {
                return Verdict {
                    reason: REASON_ALLOWED,
                    dir,
                    rule_id,
                };
            }
        }
        let reason = if !covered {
            REASON_NO_MATCH
        } else if later_fragment {
            REASON_FRAGMENT
        } else {
            REASON_PORT
        };
        Verdict::new(reason, dir)
    }

    /// `Some(a > b)` for the first differing word, `None` when equal.
    #[inline(always)]
    fn words_after(a: &[u32; 4], b: &[u32; 4]) -> Option<bool> {
        if a[0] != b[0] {
            return Some(a[0] > b[0]);
        }
        if a[1] != b[1] {
            return Some(a[1] > b[1]);
        }
        if a[2] != b[2] {
            return Some(a[2] > b[2]);
        }
        if a[3] != b[3] {
            return Some(a[3] > b[3]);
        }
        None
    }

    /// The flow's slots in `FLOW_CACHE` and `CT_FILTER`: Fibonacci hashing of the
    /// words in which flows differ most (last address words, ports), mixed
    /// symmetrically so that the order of the ends does not matter, and without the
    /// canonical key, which a denied packet that the filter clears never needs.
    /// Collisions only cost table lookups.
    #[inline(always)]
    fn flow_slots(f: &mut Facts) {
        let (sport, dport) = (f.h.sport, f.h.dport);
        let ports = u32::from(sport ^ dport) | u32::from(sport.wrapping_add(dport)) << 16;
        let mix = (f.h.src[3] ^ f.h.dst[3] ^ ports).wrapping_mul(0x9E37_79B1);
        f.cache_slot = mix >> (32 - FLOW_CACHE_BITS);
        f.filter_slot = mix >> (32 - CT_FILTER_BITS);
    }

    /// Write the canonical key of the packet's flow into `f.key4` or `f.key6`, and
    /// whether the packet's source is endpoint A (the smaller one). Field by field, in
    /// place: a struct literal made LLVM copy the key twice and call `memset`.
    #[inline(always)]
    fn fill_ct_key(f: &mut Facts) {
        let (sport, dport) = (f.h.sport, f.h.dport);
        let swap = match words_after(&f.h.src, &f.h.dst) {
            Some(after) => after,
            None => sport > dport,
        };
        let (pa, pb) = if swap { (dport, sport) } else { (sport, dport) };
        if f.h.v6 == 0 {
            let (a, b) = if swap {
                (f.h.dst[3], f.h.src[3])
            } else {
                (f.h.src[3], f.h.dst[3])
            };
            let k = &mut f.key4;
            k.addr_a = a;
            k.addr_b = b;
            k.port_a = pa;
            k.port_b = pb;
        } else {
            let (a, b) = if swap {
                (f.h.dst, f.h.src)
            } else {
                (f.h.src, f.h.dst)
            };
            let k = &mut f.key6;
            k.addr_a = a;
            k.addr_b = b;
            k.port_a = pa;
            k.port_b = pb;
        }
        f.src_is_a = u8::from(!swap);
    }

    /// The packet's entry in its family's flow table.
    #[inline(always)]
    fn ct_get(f: &Facts) -> Option<*mut CtValue> {
        if f.h.v6 == 0 {
            CONNTRACK_V4.get_ptr_mut(&f.key4)
        } else {
            CONNTRACK_V6.get_ptr_mut(&f.key6)
        }
    }

    #[inline(always)]
    fn ct_remove(f: &Facts) {
        let _ = if f.h.v6 == 0 {
            CONNTRACK_V4.remove(&f.key4)
        } else {
            CONNTRACK_V6.remove(&f.key6)
        };
    }

    const TCP_FIN: u8 = 0x01;
    const TCP_SYN: u8 = 0x02;
    const TCP_RST: u8 = 0x04;
    const TCP_ACK: u8 = 0x10;

    #[inline(always)]
    fn ct_bump(index: u32) {
        if let Some(c) = CT_STATS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { (*c).packets += 1 };
        }
    }

    /// The packet's flow key as cache words (`FlowCacheEntry::key`; a `CtKeyV4` in
    /// the first three), read from `FACTS` with volatile loads: LLVM otherwise keeps
    /// all nine words in registers across the slot lookup, spilling them to the stack
    /// and back, which cost more than reading them again.
    #[inline(always)]
    fn cache_key(f: &Facts) -> [u32; 9] {
        // SAFETY: reads of fields of a live reference.
        let r = |p: &u32| unsafe { core::ptr::read_volatile(p) };
        let r16 = |p: &u16| u32::from(unsafe { core::ptr::read_volatile(p) });
        if f.h.v6 == 0 {
            let k = &f.key4;
            let ports = r16(&k.port_a) | r16(&k.port_b) << 16;
            [r(&k.addr_a), r(&k.addr_b), ports, 0, 0, 0, 0, 0, 0]
        } else {
            let k = &f.key6;
            let ports = r16(&k.port_a) | r16(&k.port_b) << 16;
            [
                r(&k.addr_a[0]),
                r(&k.addr_a[1]),
                r(&k.addr_a[2]),
                r(&k.addr_a[3]),
                r(&k.addr_b[0]),
                r(&k.addr_b[1]),
                r(&k.addr_b[2]),
                r(&k.addr_b[3]),
                ports,
            ]
        }
    }

    /// How a cache slot whose tag matched compares with the packet's ends:
    /// `(forward, reverse)`, the first 0 when the slot's key is the packet's flow with
    /// the packet's source as endpoint A, the second 0 when with its source as B.
    /// Compared word by word from the headers, without branches or a `memcmp` call,
    /// so a packet the cache serves never builds the canonical key (the slot holds
    /// the canonical key, which is one of the two orders). Volatile loads as in
    /// [`cache_key`].
    #[inline(always)]
    fn cache_diffs(c: &FlowCacheEntry, f: &Facts) -> (u32, u32) {
        // SAFETY: reads of fields of a live reference.
        let r = |p: &u32| unsafe { core::ptr::read_volatile(p) };
        let r16 = |p: &u16| u32::from(unsafe { core::ptr::read_volatile(p) });
        let k = &c.key;
        let (sport, dport) = (r16(&f.h.sport), r16(&f.h.dport));
        let (ports_fwd, ports_rev) = (sport | dport << 16, dport | sport << 16);
        if f.h.v6 == 0 {
            let (s, d) = (r(&f.h.src[3]), r(&f.h.dst[3]));
            let fwd = (k[0] ^ s) | (k[1] ^ d) | (k[2] ^ ports_fwd);
            let rev = (k[0] ^ d) | (k[1] ^ s) | (k[2] ^ ports_rev);
            (fwd, rev)
        } else {
            // Double words, each order's loads next to their use (volatile, so the
            // second order reads them again). Word by word, LLVM loaded the sixteen
            // key and address words once and kept them live across both orders, which
            // spilled some to the stack: 79 instructions, 16 of them stack accesses,
            // against about 50 and 7 this way.
            let fwd = words64_differ(&c.key, &f.h.src, &f.h.dst) | u64::from(k[8] ^ ports_fwd);
            let rev = words64_differ(&c.key, &f.h.dst, &f.h.src) | u64::from(k[8] ^ ports_rev);
            (u32::from(fwd != 0), u32::from(rev != 0))
        }
    }

    // `words64_differ` reads the key words and the addresses as double words: they
    // start at offsets that are multiples of 8 in 8-aligned map values.
    const _: () = {
        assert!(core::mem::offset_of!(Facts, h) == 0);
        assert!(core::mem::offset_of!(Headers, src) % 8 == 0);
        assert!(core::mem::offset_of!(Headers, dst) % 8 == 0);
        assert!(core::mem::align_of::<Facts>() == 8);
        assert!(core::mem::offset_of!(FlowCacheEntry, key) == 0);
        assert!(core::mem::align_of::<FlowCacheEntry>() == 8);
    };

    /// Non-zero when the first eight key words are not `a` then `b`, compared as
    /// double words with volatile loads (see [`cache_diffs`]).
    #[inline(always)]
    fn words64_differ(key: &[u32; 9], a: &[u32; 4], b: &[u32; 4]) -> u64 {
        // SAFETY: the only caller passes fields of `FlowCacheEntry` and `Facts` in map
        // values, which the kernel aligns to 8, at offsets the assertions above make
        // multiples of 8; the double words read lie inside the arrays.
        let r =
            |p: *const u32, i: usize| unsafe { core::ptr::read_volatile(p.cast::<u64>().add(i)) };
        let (k, a, b) = (key.as_ptr(), a.as_ptr(), b.as_ptr());
        (r(k, 0) ^ r(a, 0)) | (r(k, 1) ^ r(a, 1)) | (r(k, 2) ^ r(b, 0)) | (r(k, 3) ^ r(b, 1))
    }

    /// The other direction (a flow's replies go the other way).
    #[inline(always)]
    fn reverse(dir: u8) -> u8 {
        if dir == DIR_EGRESS {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        }
    }

    /// The `FlowCacheEntry::from` bit of endpoint A or B.
    #[inline(always)]
    fn endpoint_bit(is_a: bool) -> u8 {
        if is_a {
            FLOW_CACHE_FROM_A
        } else {
            FLOW_CACHE_FROM_B
        }
    }

    /// Remember a flow the table path just found live, if its state lets later packets
    /// be served from the cache (see `tagwall_common::ct`, "Flow cache").
    #[inline(always)]
    fn cache_fill(
        c: &mut FlowCacheEntry,
        tag: u32,
        f: &Facts,
        e: &CtValue,
        cfg: &Config,
        now: u64,
    ) {
        let from = match e.state {
            CT_TCP_ESTABLISHED | CT_REPLIED => FLOW_CACHE_FROM_A | FLOW_CACHE_FROM_B,
            // The responder's first packet changes the state: only the table path
            // does that.
            CT_TCP_SYN_SENT | CT_UNREPLIED => endpoint_bit(e.initiator == 0),
            // Closing flows change state or end soon: not worth a slot.
            _ => return,
        };
        let refresh = u64::from(cfg.ct.cache_refresh_ms) * 1_000_000;
        let half_timeout = cfg.ct.for_state_ns(e.state, e.proto) / 2;
        let fresh = if half_timeout < refresh {
            half_timeout
        } else {
            refresh
        };
        if fresh == 0 {
            // The cache is off.
            return;
        }
        c.key = cache_key(f);
        c.tag = tag;
        c.rule_id = e.rule_id;
        c.generation = e.generation;
        c.until_ns = now + fresh;
        c.last_ns = now;
        (c.dir_a, c.dir_b) = if e.initiator == 0 {
            (e.dir, reverse(e.dir))
        } else {
            (reverse(e.dir), e.dir)
        };
        c.from = from;
    }

    /// The `FlowCacheEntry::tag` of the packet's flow.
    #[inline(always)]
    fn cache_tag(f: &Facts) -> u32 {
        FLOW_CACHE_VALID | u32::from(f.h.v6) << 8 | u32::from(f.h.proto)
    }

    /// What a flow cache slot can do for a packet.
    enum Cached {
        /// Served: the verdict of the packet (established), the slot and the flow
        /// counters updated.
        Served(Verdict),
        /// The slot holds the packet's flow but may not serve this packet: stale,
        /// from another generation, a FIN or RST, or from an end it may not serve.
        Held,
        /// The slot does not hold the packet's flow.
        Miss,
    }

    /// Serve the packet from the cache slot `c` of its flow, if it can (the one place
    /// both stages do so: stage 1 before the policy, stage 2 when stage 1 did not
    /// probe or found the slot `Held`).
    #[inline(always)]
    fn cache_serve(c: &mut FlowCacheEntry, f: &Facts, cfg: &Config, now: u64) -> Cached {
        if c.tag != cache_tag(f) {
            return Cached::Miss;
        }
        let (fwd, rev) = cache_diffs(c, f);
        if (fwd != 0) & (rev != 0) {
            return Cached::Miss;
        }
        let src_is_a = fwd == 0;
        if now < c.until_ns
            && c.generation == cfg.generation
            && f.h.tcp_flags & (TCP_FIN | TCP_RST) == 0
            && c.from & endpoint_bit(src_is_a) != 0
        {
            c.last_ns = now;
            ct_bump(CT_HIT);
            ct_bump(CT_CACHED);
            return Cached::Served(Verdict {
                reason: REASON_ESTABLISHED,
                dir: if src_is_a { c.dir_a } else { c.dir_b },
                rule_id: c.rule_id,
            });
        }
        Cached::Held
    }

    /// A packet of a tracked flow: its verdict (established), after updating the
    /// flow's state. `None`: no live flow, judge the packet by the policy.
    ///
    /// This CPU's flow cache first: a fresh slot of the flow serves a packet that
    /// would not change the flow's state, without the table lookup.
    #[inline(always)]
    fn ct_continue(f: &mut Facts, cfg: &Config, now: u64) -> Option<Verdict> {
        if f.h.has_flow == 0 {
            return None;
        }
        let mut cached_last = 0;
        let mut held = false;
        // This CPU's cache slot, probed again unless stage 1 found it without the
        // flow (a connection attempt never comes here: `ct_attempt`). The lookup never
        // fails (the slot number is below the map's size); if it did, the packet
        // would drop as `internal`. The probe runs with the cache off too
        // (`cache_refresh_ms = 0`): nothing fills a slot then, and what an earlier
        // setting filled has an older generation, so it misses.
        if f.probe != PROBE_MISS {
            let Some(c) = FLOW_CACHE.get_ptr_mut(f.cache_slot) else {
                return Some(Verdict::new(REASON_INTERNAL, DIR_EGRESS));
            };
            // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
            let c = unsafe { &mut *c };
            match cache_serve(c, f, cfg, now) {
                Cached::Served(v) => return Some(v),
                Cached::Held => {
                    // Stale or a state change: the table decides, and refills the slot
                    // if the flow lives on.
                    held = true;
                    cached_last = c.last_ns;
                    c.tag = 0;
                }
                Cached::Miss => {}
            }
        }
        if !held && filter_clears(f, cfg, now) {
            return None;
        }
        // The canonical key only now, for the table: neither a packet the cache
        // serves nor a denied packet that the filter clears (a denied attempt does
        // not come here at all) needs it.
        fill_ct_key(f);
        let f = &*f;
        let src_is_a = f.src_is_a != 0;
        let e = ct_get(f)?;
        // SAFETY: a pointer into the map value; concurrent updates from other CPUs can
        // interleave field writes, which at worst mis-times one state change.
        let e = unsafe { &mut *e };
        if e.proto != f.h.proto {
            // Another protocol's flow between the same ends and ports (not in the key):
            // not this packet's flow.
            return None;
        }
        if e.last_seen_ns < cached_last {
            // Packets this CPU served from its cache since the table last saw one.
            e.last_seen_ns = cached_last;
        }
        // `e.proto` is the packet's (checked above).
        if cfg.ct.expired(e, f.h.proto, now) {
            ct_remove(f);
            ct_bump(CT_EXPIRED);
            return None;
        }
        let from_initiator = (e.initiator == 0) == src_is_a;
        if e.generation != cfg.generation {
            // A reload happened since this flow was allowed: check it again as it was
            // opened (initiator -> responder, to the responder's port).
            let (isrc, idst, rport) = if from_initiator {
                (&f.h.src, &f.h.dst, f.h.dport)
            } else {
                (&f.h.dst, &f.h.src, f.h.sport)
            };
            let port = if f.h.proto == PROTO_TCP || f.h.proto == PROTO_UDP {
                Some(rport)
            } else {
                None
            };
            let v = policy(
                isrc,
                idst,
                f.h.v6,
                f.h.proto,
                port,
                false,
                cfg.slot as u8,
                e.dir,
                true,
                cfg.flags,
            );
            if v.reason != REASON_ALLOWED {
                ct_remove(f);
                ct_bump(CT_REVOKED);
                return None;
            }
            e.generation = cfg.generation;
            e.rule_id = v.rule_id;
            ct_bump(CT_REVALIDATED);
        }
        if f.h.proto == PROTO_TCP {
            let fl = f.h.tcp_flags;
            if fl & TCP_RST != 0 {
                if e.state != CT_TCP_CLOSED {
                    ct_bump(CT_CLOSED);
                }
                e.state = CT_TCP_CLOSED;
            } else if e.state == CT_TCP_CLOSED {
                // Stays closed until it expires. An attempt that reuses the ports
                // never comes here (`ct_attempt` replaces the entry).
            } else if fl & TCP_FIN != 0 {
                e.fin |= if src_is_a { CT_FIN_A } else { CT_FIN_B };
                if e.fin == CT_FIN_A | CT_FIN_B {
                    e.state = CT_TCP_CLOSED;
                    ct_bump(CT_CLOSED);
                } else {
                    e.state = CT_TCP_CLOSING;
                }
            } else if e.state == CT_TCP_SYN_SENT && !from_initiator {
                e.state = CT_TCP_ESTABLISHED;
            }
        } else if e.state == CT_UNREPLIED && !from_initiator {
            e.state = CT_REPLIED;
        }
        ct_touch(f, e, f.h.proto, cfg, now);
        // The slot is looked up again here, not carried from the probe above (which
        // stage 1 may have done instead): a maybe-missing slot kept across the table
        // path made the verifier walk it twice. Not at all with the cache off.
        if cfg.ct.cache_refresh_ms != 0 {
            if let Some(c) = FLOW_CACHE.get_ptr_mut(f.cache_slot) {
                // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
                cache_fill(unsafe { &mut *c }, cache_tag(f), f, e, cfg, now);
            }
        }
        Some(established(e, from_initiator))
    }

    /// The table visit of a live flow's packet: its last-seen time, its presence
    /// filter stamp (by the timeout of its state in `proto`) and the `hit` counter.
    #[inline(always)]
    fn ct_touch(f: &Facts, e: &mut CtValue, proto: u8, cfg: &Config, now: u64) {
        e.last_seen_ns = now;
        filter_cover(f.filter_slot, now + cfg.ct.for_state_ns(e.state, proto));
        ct_bump(CT_HIT);
    }

    /// The verdict on a packet of the live flow `e`: established, in the direction
    /// the flow was allowed in (from its initiator) or the reverse, credited to the
    /// flow's rule.
    #[inline(always)]
    fn established(e: &CtValue, from_initiator: bool) -> Verdict {
        Verdict {
            reason: REASON_ESTABLISHED,
            dir: if from_initiator {
                e.dir
            } else {
                reverse(e.dir)
            },
            rule_id: e.rule_id,
        }
    }

    /// A connection attempt: a TCP SYN without ACK, which only an initiator sends
    /// (`tcp_flags` is 0 for other protocols).
    #[inline(always)]
    fn is_attempt(f: &Facts) -> bool {
        f.h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A connection attempt (TCP SYN without ACK) that the rules allowed as `v`: the
    /// verdict on it, after opening its flow or continuing the live one it belongs
    /// to. A live flow of the current generation that is not closed holds the attempt
    /// as a retransmission (or, from the responder, the other half of a simultaneous
    /// open) and passes it as `established`, as `ct_continue` would. Any other entry
    /// under its key (expired, closed, allowed under an older generation, of another
    /// protocol) is replaced by the new flow (the insert overwrites it): the rules
    /// that would judge it again have just allowed the attempt, which opens a new
    /// connection. Counted as `new` (and an expired one as `expired`), where
    /// `ct_continue` counted a flow of an older generation as `revalidated`.
    #[inline(always)]
    fn ct_attempt(f: &mut Facts, v: &Verdict, cfg: &Config, now: u64) -> Verdict {
        if !filter_clears(f, cfg, now) {
            fill_ct_key(f);
            if let Some(e) = ct_get(f) {
                // SAFETY: a pointer into the map value, as in `ct_continue`.
                let e = unsafe { &mut *e };
                if cfg.ct.expired(e, e.proto, now) {
                    ct_bump(CT_EXPIRED);
                } else if e.proto == PROTO_TCP
                    && e.generation == cfg.generation
                    && e.state != CT_TCP_CLOSED
                {
                    let from_initiator = (e.initiator == 0) == (f.src_is_a != 0);
                    if e.state == CT_TCP_SYN_SENT && !from_initiator {
                        e.state = CT_TCP_ESTABLISHED;
                    }
                    ct_touch(f, e, PROTO_TCP, cfg, now);
                    return established(e, from_initiator);
                }
            }
        }
        ct_open(f, v, cfg, now);
        *v
    }

    /// Track a flow the policy just allowed (TCP, UDP, ICMP echo requests). A
    /// subprogram: once per flow, not per packet, and its map insert costs far more
    /// than the call. It fills the flow's key itself: a new flow's packet usually
    /// left `ct_continue` before it was needed.
    #[inline(never)]
    fn ct_open(f: &mut Facts, v: &Verdict, cfg: &Config, now: u64) {
        if f.h.has_flow == 0 {
            return;
        }
        fill_ct_key(f);
        let state = if f.h.proto == PROTO_TCP {
            if f.h.tcp_flags & TCP_RST != 0 {
                return;
            }
            if is_attempt(f) {
                CT_TCP_SYN_SENT
            } else {
                // Picked up mid-stream (e.g. started after the connection was).
                CT_TCP_ESTABLISHED
            }
        } else if f.h.proto == PROTO_UDP || f.h.echo_request != 0 {
            CT_UNREPLIED
        } else {
            return;
        };
        let src_is_a = f.src_is_a != 0;
        // Field by field on a zeroed value: a literal's padding became a `memset` call.
        // SAFETY: all-zero is a valid CtValue (plain integers).
        let mut value: CtValue = unsafe { core::mem::zeroed() };
        value.last_seen_ns = now;
        value.created_ns = now;
        value.rule_id = v.rule_id;
        value.generation = cfg.generation;
        value.state = state;
        value.initiator = u8::from(!src_is_a);
        value.dir = v.dir;
        value.proto = f.h.proto;
        // Stamped first: a reply handled on another CPU must not find the stamp
        // behind the entry.
        filter_cover(f.filter_slot, now + cfg.ct.for_state_ns(state, f.h.proto));
        let inserted = if f.h.v6 == 0 {
            CONNTRACK_V4.insert(&f.key4, &value, 0)
        } else {
            CONNTRACK_V6.insert(&f.key6, &value, 0)
        };
        if inserted.is_ok() {
            ct_bump(CT_NEW);
        } else {
            ct_bump(CT_INSERT_FAILED);
        }
    }

    /// Whether the presence filter says that no live flow of the packet's filter
    /// slot can be in the tables, so the packet need not look them up (a slot this
    /// CPU's cache held may be live on the cache's time, which the stamp does not
    /// cover: such a packet is looked up).
    #[inline(always)]
    fn filter_clears(f: &Facts, cfg: &Config, now: u64) -> bool {
        now >= cfg.ct_filter_from_ns && filter_passed(f.filter_slot, now)
    }

    /// Whether the `CT_FILTER` stamp of `slot` has passed at `now`: no live flow of
    /// the slot is in the tables.
    #[inline(always)]
    fn filter_passed(slot: u32, now: u64) -> bool {
        match CT_FILTER.get(slot) {
            Some(stamp) => ct_filter_passed(now, *stamp),
            None => false,
        }
    }

    /// Raise the `CT_FILTER` stamp of `slot` to cover a flow live until `until_ns`.
    /// Stamps only grow: the difference is added atomically, so CPUs that race add
    /// both differences (a later stamp than needed, never an earlier one).
    #[inline(always)]
    fn filter_cover(slot: u32, until_ns: u64) {
        let Some(p) = CT_FILTER.get_ptr_mut(slot) else {
            return;
        };
        let want = ct_filter_stamp(until_ns);
        // SAFETY: a pointer to a map value, valid for the program's run; other CPUs
        // only add to it atomically.
        let have = unsafe { core::ptr::read_volatile(p) };
        if want > have {
            // `lock xadd`, its result unused: the one atomic every BPF kernel runs
            // (compare-and-swap needs Linux 5.12 and the v3 instruction set), and
            // rustc's BPF target gives atomics loads and stores only.
            // SAFETY: as above; the array's values are 8-aligned.
            unsafe {
                core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    p,
                    want - have,
                );
            }
        }
    }

    #[inline(always)]
    fn bump(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
        if let Some(c) = map.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            count(unsafe { &mut *c }, bytes);
        }
    }

    /// Count one packet of `bytes` in `c`.
    #[inline(always)]
    fn count(c: &mut Counter, bytes: u64) {
        c.packets += 1;
        c.bytes += bytes;
    }

    /// The exit of stage 2: record the verdict in one counter, then say whether the
    /// packet passes. A packet a rule allowed (or its flow's) is counted by its rule,
    /// direction and reason, any other by its reason, direction and the audit mode;
    /// userspace adds the first to the reasons, and the actions follow from the
    /// reasons (`counters::action_of`).
    #[inline(always)]
    fn finish(v: &Verdict, len: u64, audit: bool) -> bool {
        if v.reason == REASON_ALLOWED || v.reason == REASON_ESTABLISHED {
            count_rule(v, len);
        } else {
            bump(&REASON_STATS, reason_index(v.dir, v.reason, audit), len);
        }
        audit || !is_drop(v.reason)
    }

    /// Count a packet that a rule allowed, or its flow's, for the rule, its direction
    /// and its reason.
    #[inline(always)]
    fn count_rule(v: &Verdict, len: u64) {
        if let Some(c) = RULE_STATS.get_ptr_mut(v.rule_id) {
            let class = rule_class(v.dir, v.reason) & (RULE_CLASSES - 1);
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            count(unsafe { &mut (*c).classes[class] }, len);
        }
    }

    /// The exit of stage 1, whose verdicts are never a rule's (non-IP, malformed,
    /// internal): [`finish`] without the rule counters. LLVM merged the rule branch
    /// into stage 1's context handling in a way the verifier refused ("dereference
    /// of modified ctx ptr").
    #[inline(always)]
    fn finish_stage1(v: &Verdict, len: u64, audit: bool) -> bool {
        bump(&REASON_STATS, reason_index(v.dir, v.reason, audit), len);
        audit || !is_drop(v.reason)
    }

    /// Add a drop to the batch `e` (not empty) in this CPU's slot of its key.
    #[inline(always)]
    fn top_add(e: &mut TopValue, len: u64, now: u64, local: [u32; 4], reason: u8, action: u8) {
        e.packets += 1;
        e.bytes += len;
        e.last_seen_ns = now;
        e.local = local;
        e.reason = reason;
        e.action = action;
    }

    /// Make `v` the counts of one drop: a batch that starts with it, or (with the
    /// slots off) the drop to add to the table. Field by field: a literal's padding
    /// became a `memset` call.
    #[inline(always)]
    fn top_one(v: &mut TopValue, len: u64, now: u64, local: [u32; 4], reason: u8, action: u8) {
        v.packets = 1;
        v.bytes = len;
        v.first_seen_ns = now;
        v.last_seen_ns = now;
        v.local = local;
        v.reason = reason;
        v.action = action;
    }

    /// Add a batch that left its slot (or one drop, with the slots off) to this
    /// CPU's value of its key's `TOP_DENIED` entry (created if there is none).
    #[inline(always)]
    fn top_move(key: &TopKey, b: &TopValue) {
        let merge = |e: *mut TopValue| {
            // SAFETY: this CPU's value of the entry; nothing else runs on this CPU.
            let e = unsafe { &mut *e };
            if e.packets == 0 {
                e.first_seen_ns = b.first_seen_ns;
            }
            e.packets += b.packets;
            e.bytes += b.bytes;
            e.last_seen_ns = b.last_seen_ns;
            e.local = b.local;
            e.reason = b.reason;
            e.action = b.action;
        };
        if let Some(e) = TOP_DENIED.get_ptr_mut(key) {
            merge(e);
            return;
        }
        // BPF_NOEXIST: another CPU may have inserted the key meanwhile (its insert
        // zeroed this CPU's value); then add to this CPU's value.
        if TOP_DENIED.insert(key, b, 1).is_err() {
            if let Some(e) = TOP_DENIED.get_ptr_mut(key) {
                merge(e);
            }
        }
    }

    #[inline(always)]
    fn same_top_key(a: &TopKey, b: &TopKey) -> bool {
        a.addr[3] == b.addr[3]
            && a.addr[2] == b.addr[2]
            && a.addr[1] == b.addr[1]
            && a.addr[0] == b.addr[0]
            && a.port == b.port
            && a.proto == b.proto
            && a.dir == b.dir
            && a.v6 == b.v6
    }

    #[inline(always)]
    fn ev_bump(index: u32, bytes: u64) {
        bump(&EVENT_STATS, index, bytes);
    }

    /// Stage 2, a dropped (or audit-passed would-drop) packet: count it in
    /// `TOP_DENIED` and emit a rate-limited event (see `tagwall_common::reports`).
    #[inline(always)]
    fn report_drop(reason: u8, dir: u8, len: u64, passed: bool) {
        let Some(rc) = REPORT_CONFIG.get(0) else {
            return;
        };
        if rc.flags == 0 {
            return;
        }
        let Some(f) = FACTS.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        let now = coarse_now(unsafe { &mut *f });
        let f = unsafe { &*f };
        // A drop reason: dropped, or passed in audit mode.
        let action = action_of(reason, passed) as u8;
        let dport = if f.h.has_dport != 0 { f.h.dport } else { 0 };
        if rc.flags & REPORT_F_TOP != 0 {
            let (remote, local) = if dir == DIR_INGRESS {
                (f.h.src, f.h.dst)
            } else {
                (f.h.dst, f.h.src)
            };
            // Zeroed, then field by field (literals' padding became `memset` calls).
            // SAFETY: all-zero is a valid TopKey/TopValue/DenyEvent (plain integers).
            let mut key: TopKey = unsafe { core::mem::zeroed() };
            key.addr = remote;
            key.port = dport;
            key.proto = f.h.proto;
            key.dir = dir;
            key.v6 = f.h.v6;
            if rc.flags & REPORT_F_SLOTS == 0 {
                // Where the slots' order does not hold: each drop to the table.
                // SAFETY: as above.
                let mut one: TopValue = unsafe { core::mem::zeroed() };
                top_one(&mut one, len, now, local, reason, action);
                top_move(&key, &one);
            } else if let Some(s) = TOP_SLOTS.get_ptr_mut(top_slot(&key)) {
                // A repeated drop is counted in its key's slot. A drop of another
                // key takes the slot first and then adds the old batch, copied to
                // the stack, to `TOP_DENIED`: the order a reader relies on
                // (`tagwall_common::reports`).
                // SAFETY: this CPU's slot; nothing else runs on this CPU meanwhile.
                let s = unsafe { &mut *s };
                if s.value.packets != 0 && same_top_key(&s.key, &key) {
                    top_add(&mut s.value, len, now, local, reason, action);
                } else {
                    let old_key = s.key;
                    let old = s.value;
                    let b = next_batch(s.batch_first);
                    // SAFETY: a field of this CPU's slot.
                    unsafe { core::ptr::write_volatile(&mut s.batch_first, b) };
                    compiler_fence(Ordering::SeqCst);
                    s.key = key;
                    top_one(&mut s.value, len, now, local, reason, action);
                    compiler_fence(Ordering::SeqCst);
                    // SAFETY: as above.
                    unsafe { core::ptr::write_volatile(&mut s.batch_last, b) };
                    compiler_fence(Ordering::SeqCst);
                    if old.packets != 0 {
                        top_move(&old_key, &old);
                    }
                }
            }
        }
        if rc.flags & REPORT_F_EVENTS == 0 {
            return;
        }
        let Some(b) = EVENT_BUCKET.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's bucket; nothing else runs on this CPU meanwhile.
        let b = unsafe { &mut *b };
        let mut credit = b.credit_ns.saturating_add(now.saturating_sub(b.last_ns));
        if credit > rc.burst_ns {
            credit = rc.burst_ns;
        }
        b.last_ns = now;
        if credit < rc.cost_ns {
            b.credit_ns = credit;
            ev_bump(EV_RATE_LIMITED, len);
            return;
        }
        b.credit_ns = credit - rc.cost_ns;
        match EVENTS.reserve::<DenyEvent>(0) {
            Some(mut e) => {
                // SAFETY: as above.
                let mut ev: DenyEvent = unsafe { core::mem::zeroed() };
                ev.time_ns = now;
                ev.src = f.h.src;
                ev.dst = f.h.dst;
                ev.len = len as u32;
                ev.sport = if f.h.has_dport != 0 { f.h.sport } else { 0 };
                ev.dport = dport;
                ev.proto = f.h.proto;
                ev.dir = dir;
                ev.reason = reason;
                ev.action = action;
                ev.v6 = f.h.v6;
                e.write(ev);
                e.submit(0);
                ev_bump(EV_EMITTED, len);
            }
            None => ev_bump(EV_RING_FULL, len),
        }
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
