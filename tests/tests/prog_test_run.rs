//! Table-driven BPF_PROG_TEST_RUN tests of the XDP program with crafted frames. Every
//! case checks the XDP action, the reason counter and the credited rule counter, and
//! that the userspace reference classifier agrees.

use std::net::{Ipv4Addr, Ipv6Addr};

use tagwall::{
    reference,
    rules::{Direction, Proto, Rule},
};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, ACTION_PASS, DIR_EGRESS},
    verdict::{
        REASON_ALLOWED, REASON_EXT_HDR_LIMIT, REASON_FRAGMENT, REASON_MALFORMED, REASON_NO_MATCH,
        REASON_NON_IP, REASON_PORT, is_drop, reason_name,
    },
};
use tagwall_tests::{
    harness::{Harness, XDP_DROP, XDP_PASS},
    pkt::*,
};

fn rule(id: u32, name: &str, nets: &[&str], proto: Proto, ports: &[&str]) -> Rule {
    Rule {
        id,
        name: name.into(),
        direction: Direction::Outbound,
        prefixes: nets.iter().map(|s| s.parse().unwrap()).collect(),
        proto,
        ports: ports.iter().map(|s| s.parse().unwrap()).collect(),
        origin: "test".into(),
    }
}

fn policy() -> Vec<Rule> {
    vec![
        rule(1, "web", &["203.0.113.0/24"], Proto::TCP, &["443"]),
        rule(
            2,
            "batch",
            &["203.0.113.0/24"],
            Proto::TCP,
            &["29876-29877"],
        ),
        rule(3, "dns", &["198.51.100.53/32"], Proto::UDP, &["53"]),
        rule(4, "any-host", &["198.51.100.7/32"], Proto::ANY, &["any"]),
        rule(
            5,
            "v6web",
            &["2001:db8:1::/48"],
            Proto::TCP,
            &["443", "8000-8080"],
        ),
        rule(6, "icmp", &["192.0.2.0/24"], Proto::ICMP, &["any"]),
        rule(7, "v6-any", &["2001:db8:2::1/128"], Proto::ANY, &["any"]),
        rule(8, "nested", &["203.0.113.128/25"], Proto::UDP, &["5000"]),
    ]
}

const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WEB_HI: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
const DNS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const ANY_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ICMP_NET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn v4frame(dst: Ipv4Addr, proto: u8, opts: &V4Opts, l4: &[u8]) -> Vec<u8> {
    eth(&[], ETH_P_IP, &ipv4(SRC, dst, proto, opts, l4))
}

fn v6frame(dst: &str, next: u8, payload: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV6,
        &ipv6(v6("fd00::2"), v6(dst), next, payload),
    )
}

struct Case {
    what: &'static str,
    frame: Vec<u8>,
    reason: u8,
    rule: u32,
}

fn case(what: &'static str, frame: Vec<u8>, reason: u8, rule: u32) -> Case {
    Case {
        what,
        frame,
        reason,
        rule,
    }
}

fn cases() -> Vec<Case> {
    let nop_opts = V4Opts {
        options: vec![1, 1, 1, 0],
        ..V4Opts::default()
    };
    let max_opts = V4Opts {
        options: vec![1; 40],
        ..V4Opts::default()
    };
    let first_frag = V4Opts {
        more_fragments: true,
        ..V4Opts::default()
    };
    let later_frag = V4Opts {
        frag_offset: 100,
        ..V4Opts::default()
    };
    let dstopts8 = (0..8).fold(tcp(1, 443), |inner, i| {
        ext(
            if i == 0 { IPPROTO_TCP } else { IPPROTO_DSTOPTS },
            0,
            &inner,
        )
    });
    let dstopts9 = ext(IPPROTO_DSTOPTS, 0, &dstopts8);
    vec![
        // Destinations, protocols and ports.
        case("v4 tcp allowed port", tcp4(WEB, 443), REASON_ALLOWED, 1),
        case("v4 tcp port not allowed", tcp4(WEB, 444), REASON_PORT, 0),
        case("v4 range low end", tcp4(WEB, 29876), REASON_ALLOWED, 2),
        case("v4 range high end", tcp4(WEB, 29877), REASON_ALLOWED, 2),
        case("v4 below range", tcp4(WEB, 29875), REASON_PORT, 0),
        case("v4 above range", tcp4(WEB, 29878), REASON_PORT, 0),
        case(
            "v4 udp where only tcp allowed",
            udp4(WEB, 443),
            REASON_PORT,
            0,
        ),
        case(
            "v4 nested prefix own rule",
            udp4(WEB_HI, 5000),
            REASON_ALLOWED,
            8,
        ),
        case(
            "v4 nested prefix inherits covering rule",
            tcp4(WEB_HI, 443),
            REASON_ALLOWED,
            1,
        ),
        case(
            "v4 no covering rule",
            tcp4(OUTSIDE, 443),
            REASON_NO_MATCH,
            0,
        ),
        case("v4 udp /32", udp4(DNS, 53), REASON_ALLOWED, 3),
        case("v4 tcp to udp-only /32", tcp4(DNS, 53), REASON_PORT, 0),
        case(
            "v4 any proto any port tcp",
            tcp4(ANY_HOST, 1),
            REASON_ALLOWED,
            4,
        ),
        case(
            "v4 any proto icmp",
            v4frame(ANY_HOST, IPPROTO_ICMP, &V4Opts::default(), &echo(false)),
            REASON_ALLOWED,
            4,
        ),
        case(
            "v4 icmp rule",
            v4frame(ICMP_NET, IPPROTO_ICMP, &V4Opts::default(), &echo(false)),
            REASON_ALLOWED,
            6,
        ),
        case(
            "v4 tcp to icmp-only net",
            tcp4(ICMP_NET, 443),
            REASON_PORT,
            0,
        ),
        case(
            "v4 gre (portless) to tcp-only net",
            v4frame(WEB, 47, &V4Opts::default(), &[0; 4]),
            REASON_PORT,
            0,
        ),
        case(
            "v6 tcp allowed",
            tcp6(v6("2001:db8:1::5"), 443),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 tcp range",
            tcp6(v6("2001:db8:1:ffff::1"), 8080),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 tcp port denied",
            tcp6(v6("2001:db8:1::5"), 8081),
            REASON_PORT,
            0,
        ),
        case(
            "v6 no covering rule",
            tcp6(v6("2001:db8:3::1"), 443),
            REASON_NO_MATCH,
            0,
        ),
        case(
            "v6 udp to any /128",
            udp6(v6("2001:db8:2::1"), 53),
            REASON_ALLOWED,
            7,
        ),
        case(
            "v6 neighbour of /128 not covered",
            udp6(v6("2001:db8:2::2"), 53),
            REASON_NO_MATCH,
            0,
        ),
        case(
            "v6 icmpv6 to any /128",
            v6frame("2001:db8:2::1", IPPROTO_ICMPV6, &echo(true)),
            REASON_ALLOWED,
            7,
        ),
        // VLAN and QinQ.
        case(
            "802.1Q tagged allowed",
            eth(
                &[(ETH_P_8021Q, 10)],
                ETH_P_IP,
                &ipv4(SRC, WEB, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 443)),
            ),
            REASON_ALLOWED,
            1,
        ),
        case(
            "802.1Q tagged denied",
            eth(
                &[(ETH_P_8021Q, 10)],
                ETH_P_IP,
                &ipv4(SRC, OUTSIDE, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 443)),
            ),
            REASON_NO_MATCH,
            0,
        ),
        case(
            "QinQ allowed",
            eth(
                &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)],
                ETH_P_IP,
                &ipv4(SRC, WEB, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 443)),
            ),
            REASON_ALLOWED,
            1,
        ),
        case(
            "QinQ denied port",
            eth(
                &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)],
                ETH_P_IP,
                &ipv4(SRC, WEB, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 22)),
            ),
            REASON_PORT,
            0,
        ),
        case(
            "QinQ v6",
            eth(
                &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 10)],
                ETH_P_IPV6,
                &ipv6(
                    v6("fd00::2"),
                    v6("2001:db8:1::9"),
                    IPPROTO_TCP,
                    &tcp(1, 443),
                ),
            ),
            REASON_ALLOWED,
            5,
        ),
        case(
            "three tags is malformed, not non-IP",
            eth(
                &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
                ETH_P_IP,
                &ipv4(SRC, WEB, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 443)),
            ),
            REASON_MALFORMED,
            0,
        ),
        case(
            "tagged ARP is non-IP",
            eth(&[(ETH_P_8021Q, 10)], ETH_P_ARP, &[0; 28]),
            REASON_NON_IP,
            0,
        ),
        // IPv4 header variants.
        case(
            "ip options (ihl 6)",
            v4frame(WEB, IPPROTO_TCP, &nop_opts, &tcp(1, 443)),
            REASON_ALLOWED,
            1,
        ),
        case(
            "ip options (ihl 15)",
            v4frame(WEB, IPPROTO_TCP, &max_opts, &tcp(1, 443)),
            REASON_ALLOWED,
            1,
        ),
        case(
            "ip options, denied port",
            v4frame(WEB, IPPROTO_TCP, &max_opts, &tcp(1, 80)),
            REASON_PORT,
            0,
        ),
        case(
            "ihl 4 is malformed",
            v4frame(
                WEB,
                IPPROTO_TCP,
                &V4Opts {
                    ihl: Some(4),
                    ..V4Opts::default()
                },
                &tcp(1, 443),
            ),
            REASON_MALFORMED,
            0,
        ),
        case(
            "ihl 15 without options present",
            v4frame(
                WEB,
                IPPROTO_UDP,
                &V4Opts {
                    ihl: Some(15),
                    ..V4Opts::default()
                },
                &udp(1, 53, b""),
            ),
            REASON_MALFORMED,
            0,
        ),
        case(
            "version 5 in an IPv4 frame",
            v4frame(
                WEB,
                IPPROTO_TCP,
                &V4Opts {
                    version: Some(5),
                    ..V4Opts::default()
                },
                &tcp(1, 443),
            ),
            REASON_MALFORMED,
            0,
        ),
        case(
            "tcp data offset < 5",
            v4frame(WEB, IPPROTO_TCP, &V4Opts::default(), &{
                let mut t = tcp(1, 443);
                t[12] = 0x40;
                t
            }),
            REASON_MALFORMED,
            0,
        ),
        // IPv4 fragments.
        case(
            "first fragment is classified by ports",
            v4frame(WEB, IPPROTO_TCP, &first_frag, &tcp(1, 443)),
            REASON_ALLOWED,
            1,
        ),
        case(
            "first fragment denied port",
            v4frame(WEB, IPPROTO_TCP, &first_frag, &tcp(1, 80)),
            REASON_PORT,
            0,
        ),
        case(
            "tiny first fragment without full tcp header",
            v4frame(WEB, IPPROTO_TCP, &first_frag, &tcp(1, 443)[..8]),
            REASON_MALFORMED,
            0,
        ),
        case(
            "later fragment to port-limited dest",
            v4frame(WEB, IPPROTO_TCP, &later_frag, &[0xde; 16]),
            REASON_FRAGMENT,
            0,
        ),
        case(
            "later fragment to any-port dest",
            v4frame(ANY_HOST, IPPROTO_UDP, &later_frag, &[0xde; 16]),
            REASON_ALLOWED,
            4,
        ),
        case(
            "later fragment to uncovered dest",
            v4frame(OUTSIDE, IPPROTO_UDP, &later_frag, &[0xde; 16]),
            REASON_NO_MATCH,
            0,
        ),
        case(
            "later fragment bytes are not ports",
            v4frame(WEB, IPPROTO_TCP, &later_frag, &tcp(1, 443)),
            REASON_FRAGMENT,
            0,
        ),
        // IPv6 extension headers.
        case(
            "v6 hop-by-hop",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_HOPOPTS,
                &ext(IPPROTO_TCP, 0, &tcp(1, 443)),
            ),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 hbh+routing+dstopts",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_HOPOPTS,
                &ext(
                    IPPROTO_ROUTING,
                    1,
                    &ext(IPPROTO_DSTOPTS, 0, &ext(IPPROTO_TCP, 2, &tcp(1, 8000))),
                ),
            ),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 hbh, denied port",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_HOPOPTS,
                &ext(IPPROTO_TCP, 0, &tcp(1, 22)),
            ),
            REASON_PORT,
            0,
        ),
        case(
            "v6 AH",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_AH,
                &ah(IPPROTO_TCP, 4, &tcp(1, 443)),
            ),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 atomic fragment (offset 0)",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_FRAGMENT,
                &frag6(IPPROTO_TCP, 0, true, &tcp(1, 443)),
            ),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 later fragment",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_FRAGMENT,
                &frag6(IPPROTO_TCP, 10, false, &tcp(1, 443)),
            ),
            REASON_FRAGMENT,
            0,
        ),
        case(
            "v6 later fragment to any-port",
            v6frame(
                "2001:db8:2::1",
                IPPROTO_FRAGMENT,
                &frag6(IPPROTO_UDP, 10, false, &[0; 8]),
            ),
            REASON_ALLOWED,
            7,
        ),
        case(
            "v6 eight extension headers",
            v6frame("2001:db8:1::5", IPPROTO_DSTOPTS, &dstopts8),
            REASON_ALLOWED,
            5,
        ),
        case(
            "v6 nine extension headers",
            v6frame("2001:db8:1::5", IPPROTO_DSTOPTS, &dstopts9),
            REASON_EXT_HDR_LIMIT,
            0,
        ),
        case(
            "v6 ESP is portless",
            v6frame("2001:db8:1::5", IPPROTO_ESP, &[0; 16]),
            REASON_PORT,
            0,
        ),
        case(
            "v6 no-next-header to any",
            v6frame("2001:db8:2::1", IPPROTO_NONE, &[]),
            REASON_ALLOWED,
            7,
        ),
        case(
            "v6 ext header longer than frame",
            v6frame(
                "2001:db8:1::5",
                IPPROTO_HOPOPTS,
                &[IPPROTO_TCP, 1, 0, 0, 0, 0, 0, 0],
            ),
            REASON_MALFORMED,
            0,
        ),
        case(
            "v6 version nibble wrong",
            {
                let mut f = tcp6(v6("2001:db8:1::5"), 443);
                f[ETH_HDR] = 0x40;
                f
            },
            REASON_MALFORMED,
            0,
        ),
        // Not IP.
        case("ARP", arp(), REASON_NON_IP, 0),
        case("LLDP", eth(&[], 0x88cc, &[0; 32]), REASON_NON_IP, 0),
        case(
            "bare ethernet header",
            eth(&[], ETH_P_IP, &[]),
            REASON_MALFORMED,
            0,
        ),
    ]
}

fn expected_action(reason: u8) -> u32 {
    if is_drop(reason) { XDP_DROP } else { XDP_PASS }
}

#[test]
fn table_of_crafted_frames() {
    let rules = policy();
    let mut h = Harness::new(rules.clone(), false);
    let mut failures = Vec::new();
    for c in cases() {
        let got = h.run(&c.frame);
        let reference = reference::classify(&c.frame, &rules);
        let want = (expected_action(c.reason), c.reason, c.rule);
        if (got.action, got.reason, got.rule_id) != want
            || (reference.reason, reference.rule_id) != (c.reason, c.rule)
        {
            failures.push(format!(
                "{}: want {} rule {} action {}; datapath {} rule {} action {}; reference {} rule {}",
                c.what,
                reason_name(c.reason),
                c.rule,
                want.0,
                reason_name(got.reason),
                got.rule_id,
                got.action,
                reason_name(reference.reason),
                reference.rule_id
            ));
        }
        let slot = if is_drop(c.reason) {
            ACTION_DROP
        } else {
            ACTION_PASS
        };
        assert_eq!(got.action_slot, slot, "{}", c.what);
    }
    assert!(
        failures.is_empty(),
        "{} of the cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Cut frames at every length from the Ethernet header up: while a required header
/// byte is missing the verdict is `malformed`; once all are present it is the full
/// frame's verdict. The datapath never reads out of bounds (the verifier guarantees
/// that) and never aborts.
#[test]
fn truncated_headers_at_every_offset() {
    let rules = policy();
    let mut h = Harness::new(rules.clone(), false);
    let qinq_v6 = eth(
        &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
        ETH_P_IPV6,
        &ipv6(
            v6("fd00::2"),
            v6("2001:db8:1::5"),
            IPPROTO_HOPOPTS,
            &ext(
                IPPROTO_FRAGMENT,
                1,
                &frag6(IPPROTO_TCP, 0, true, &tcp(1, 443)),
            ),
        ),
    );
    let bases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("v4 tcp", tcp4(WEB, 443), ETH_HDR + IPV4_HDR + TCP_HDR),
        ("v4 udp", udp4(DNS, 53), ETH_HDR + IPV4_HDR + UDP_HDR),
        (
            "v4 options tcp",
            v4frame(
                WEB,
                IPPROTO_TCP,
                &V4Opts {
                    options: vec![1; 12],
                    ..V4Opts::default()
                },
                &tcp(1, 443),
            ),
            ETH_HDR + IPV4_HDR + 12 + TCP_HDR,
        ),
        (
            "v4 icmp",
            v4frame(ICMP_NET, IPPROTO_ICMP, &V4Opts::default(), &echo(false)),
            // An echo message carries its identifier: 8 bytes of ICMP header.
            ETH_HDR + IPV4_HDR + 8,
        ),
        (
            "vlan v4 tcp",
            eth(
                &[(ETH_P_8021Q, 7)],
                ETH_P_IP,
                &ipv4(SRC, WEB, IPPROTO_TCP, &V4Opts::default(), &tcp(1, 443)),
            ),
            ETH_HDR + VLAN_HDR + IPV4_HDR + TCP_HDR,
        ),
        (
            "v6 tcp",
            tcp6(v6("2001:db8:1::5"), 443),
            ETH_HDR + IPV6_HDR + TCP_HDR,
        ),
        ("qinq v6 hbh frag tcp", qinq_v6.clone(), qinq_v6.len()),
        (
            "v6 icmpv6",
            v6frame("2001:db8:2::1", IPPROTO_ICMPV6, &echo(true)),
            // An echo request carries its identifier: 8 bytes of ICMPv6 header.
            ETH_HDR + IPV6_HDR + 8,
        ),
    ];
    let mut checked = 0;
    for (what, full, hdr_len) in bases {
        let full_verdict = h.run(&full);
        assert_eq!(
            full_verdict.reason, REASON_ALLOWED,
            "{what}: full frame must be allowed"
        );
        // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
        for len in ETH_HDR..full.len() {
            let frame = &full[..len];
            let got = h.run(frame);
            let want = if len < hdr_len {
                REASON_MALFORMED
            } else {
                REASON_ALLOWED
            };
            assert_eq!(
                got.reason,
                want,
                "{what} cut at {len}: got {}",
                reason_name(got.reason)
            );
            assert_eq!(got.action, expected_action(want), "{what} cut at {len}");
            assert_eq!(
                reference::classify(frame, &rules).reason,
                want,
                "{what} cut at {len}: reference"
            );
            checked += 1;
        }
        for len in 0..ETH_HDR {
            assert_eq!(
                reference::classify(&full[..len], &rules).reason,
                REASON_MALFORMED
            );
        }
    }
    assert!(checked > 300, "only {checked} truncations checked");
}

#[test]
fn audit_mode_counts_but_passes() {
    let mut h = Harness::new(policy(), true);
    let denied = h.run(&tcp4(OUTSIDE, 443));
    assert_eq!(
        (denied.action, denied.reason, denied.action_slot),
        (XDP_PASS, REASON_NO_MATCH, ACTION_AUDIT_PASS)
    );
    let port = h.run(&tcp4(WEB, 22));
    assert_eq!(
        (port.action, port.reason, port.action_slot),
        (XDP_PASS, REASON_PORT, ACTION_AUDIT_PASS)
    );
    let allowed = h.run(&tcp4(WEB, 443));
    assert_eq!(
        (
            allowed.action,
            allowed.reason,
            allowed.rule_id,
            allowed.action_slot
        ),
        (XDP_PASS, REASON_ALLOWED, 1, ACTION_PASS)
    );
    // Switching audit off through a reapply makes the same packet drop.
    h.reapply(policy(), false);
    let denied = h.run(&tcp4(OUTSIDE, 443));
    assert_eq!((denied.action, denied.action_slot), (XDP_DROP, ACTION_DROP));

    // One counter per (reason, direction, audit mode): the reason's total spans both
    // modes, the actions split them, and every packet is in exactly one action.
    let c = h.dp.counters().expect("counters");
    let no_match = c.reason(DIR_EGRESS, REASON_NO_MATCH).packets;
    assert_eq!(no_match, 2, "{c:?}");
    let packets = |slot: u32| c.actions[slot as usize].packets;
    assert_eq!(
        (
            packets(ACTION_PASS),
            packets(ACTION_AUDIT_PASS),
            packets(ACTION_DROP)
        ),
        (1, 2, 1),
        "{c:?}"
    );
    let reasons: u64 = c.reasons.values().map(|r| r.packets).sum();
    assert_eq!(reasons, 4, "{c:?}");
}

/// The packets a rule allowed are counted by the rule only, and the reasons read
/// them from every rule's counters (one batch syscall per 1,024 ids): rules far
/// apart in the id range, the last id included, are all found, and a read listing
/// one rule counts only its packets as allowed.
#[test]
fn allowed_packets_count_in_the_reasons_through_every_rule() {
    use tagwall_common::{counters::MAX_RULES, verdict::REASON_ALLOWED};
    let last = MAX_RULES - 1;
    let rules = vec![
        rule(3, "low", &["203.0.113.0/26"], Proto::TCP, &["443"]),
        rule(5000, "mid", &["203.0.113.64/26"], Proto::TCP, &["443"]),
        rule(last, "last", &["203.0.113.128/25"], Proto::TCP, &["443"]),
    ];
    let mut h = Harness::new(rules, false);
    let sent = [
        (Ipv4Addr::new(203, 0, 113, 10), 3, 1),
        (Ipv4Addr::new(203, 0, 113, 70), 5000, 2),
        (Ipv4Addr::new(203, 0, 113, 200), last, 3),
    ];
    for (addr, id, n) in sent {
        for _ in 0..n {
            let o = h.run(&tcp4(addr, 443));
            assert_eq!((o.reason, o.rule_id), (REASON_ALLOWED, id));
        }
    }
    let all = h.dp.counters().expect("counters");
    for (_, id, n) in sent {
        assert_eq!(all.rule(id).packets, n, "rule {id}: {all:?}");
    }
    assert_eq!(all.reason(DIR_EGRESS, REASON_ALLOWED).packets, 6, "{all:?}");
    assert_eq!(all.actions[ACTION_PASS as usize].packets, 6, "{all:?}");
    let one = h.dp.counters_for([5000]).expect("counters");
    assert_eq!(one.rules.keys().copied().collect::<Vec<_>>(), [5000]);
    assert_eq!(one.reason(DIR_EGRESS, REASON_ALLOWED).packets, 2, "{one:?}");
}

#[test]
fn reapply_switches_the_whole_policy() {
    let mut h = Harness::new(policy(), false);
    assert_eq!(h.run(&tcp4(WEB, 443)).reason, REASON_ALLOWED);
    assert_eq!(h.run(&tcp4(OUTSIDE, 443)).reason, REASON_NO_MATCH);
    let next = vec![rule(
        9,
        "only-outside",
        &["8.8.8.0/24"],
        Proto::TCP,
        &["443"],
    )];
    for _ in 0..3 {
        h.reapply(next.clone(), false);
        assert_eq!(
            h.run(&tcp4(WEB, 443)).reason,
            REASON_NO_MATCH,
            "old policy must be gone"
        );
        let o = h.run(&tcp4(OUTSIDE, 443));
        assert_eq!((o.reason, o.rule_id), (REASON_ALLOWED, 9));
        h.reapply(policy(), false);
        assert_eq!(h.run(&tcp4(WEB, 443)).rule_id, 1);
        assert_eq!(h.run(&tcp4(OUTSIDE, 443)).reason, REASON_NO_MATCH);
    }
}

/// A policy without local (management) rules lets the datapath skip the local lookup
/// (`CONFIG_F_LOCAL_RULES` clear). A local host entry added later (DNS learning) must
/// turn the lookup on: the packet it allows passes, credited to its set's rule.
#[test]
fn local_host_added_later_is_looked_up() {
    use tagwall_common::policy::{CONFIG_F_LOCAL_RULES, PROTO_TCP, PortRule};
    let mut h = Harness::new(policy(), false);
    let target = Ipv4Addr::new(100, 64, 0, 77);
    assert_eq!(h.run(&tcp4(target, 22)).reason, REASON_NO_MATCH);
    let flags = |h: &Harness| {
        let m =
            h.dp.map(tagwall_common::names::MAP_CONFIG)
                .expect("CONFIG map");
        let arr: aya::maps::Array<&aya::maps::MapData, tagwall_common::policy::Config> =
            aya::maps::Array::try_from(m).expect("array");
        arr.get(&0, 0).expect("config").flags
    };
    assert_eq!(flags(&h) & CONFIG_F_LOCAL_RULES, 0, "no local rules yet");
    // A fresh set past the compiled ones, naming rule 8 for TCP/22.
    let index = h.dp.sets_per_slot() - 1;
    h.dp.write_active_set(index, &[PortRule::new(8, PROTO_TCP, 22, 22)])
        .expect("write set");
    h.dp.put_active_host(Direction::Local, target.into(), index)
        .expect("put host");
    assert_ne!(flags(&h) & CONFIG_F_LOCAL_RULES, 0, "flag set by the put");
    let o = h.run(&tcp4(target, 22));
    assert_eq!(
        (o.action, o.reason, o.rule_id),
        (XDP_PASS, REASON_ALLOWED, 8)
    );
    assert_eq!(h.run(&tcp4(target, 23)).reason, REASON_PORT);
}

/// The XDP program's return value for `frame` on the enforcer's datapath.
fn enforced(e: &tagwall::enforcer::Enforcer, frame: &[u8]) -> u32 {
    use aya::programs::{TestRun, TestRunOptions};
    e.dataplane_mut()
        .xdp()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("test run")
        .return_value
}

/// A DNS-learned host that does not fit the active slot's lookup table (here: one
/// node per slot, which the compiled policy already uses) makes the enforcer apply
/// the policy again with the host compiled in; the new slot falls back to the LPM
/// tries, and the learned address is allowed all the same.
#[test]
fn learned_host_that_does_not_fit_falls_back_to_the_lpm_tries() {
    use tagwall::{
        dataplane::{Dataplane, LoadOptions, Settings},
        dns::sink::AddressSink,
        enforcer::Enforcer,
    };
    tagwall_tests::netns::require_root();
    let opts = LoadOptions {
        lookup_nodes: tagwall_common::stride::FIRST_NODE + 2,
        ..LoadOptions::default()
    };
    let dp = Dataplane::load(&opts).expect("load");
    let rules = vec![
        rule(1, "net", &["10.1.0.0/16"], Proto::TCP, &["80"]),
        // A host-name rule: no prefixes until DNS learns one.
        rule(2, "by-name", &[], Proto::TCP, &["443"]),
    ];
    let (enforcer, first) = Enforcer::new(dp, rules, Settings::stateless(false)).expect("enforcer");
    assert_eq!(
        first.lookup_nodes,
        Some(1),
        "the /16 takes the slot's one node"
    );
    let host = Ipv4Addr::new(198, 51, 100, 9);
    let verdict = |e: &Enforcer, dst: Ipv4Addr, port: u16| enforced(e, &tcp4(dst, port));
    assert_eq!(verdict(&enforcer, host, 443), XDP_DROP, "not learned yet");
    enforcer.allow(host.into(), &[2]).expect("learn");
    let after = enforcer.last();
    assert_eq!(after.lookup_nodes, None, "re-applied in the LPM tries");
    assert!(after.generation > first.generation);
    assert_eq!(
        verdict(&enforcer, host, 443),
        XDP_PASS,
        "learned host allowed"
    );
    assert_eq!(verdict(&enforcer, host, 80), XDP_DROP);
    assert_eq!(verdict(&enforcer, Ipv4Addr::new(10, 1, 2, 3), 80), XDP_PASS);
}

/// DNS-learned IPv6 hosts added to the active slot after its shortcut records were
/// written (`tagwall_common::stride`, "IPv6 shortcuts"): one in a /112 whose record
/// leads below the /122, one in another /112 of the same /8 (the walk from the
/// root), one under a /8 without records. Each is found, and the record still leads
/// to the /122.
#[test]
fn learned_v6_hosts_next_to_shortcut_records_are_found() {
    use tagwall::{dataplane::Settings, dns::sink::AddressSink, enforcer::Enforcer};
    tagwall_tests::netns::require_root();
    let dp = tagwall::dataplane::Dataplane::load(&tagwall::dataplane::LoadOptions::default())
        .expect("load");
    let rules = vec![
        rule(1, "aml", &["2603:1000:4::300/122"], Proto::TCP, &["443"]),
        rule(2, "by-name", &[], Proto::TCP, &["8443"]),
    ];
    let (enforcer, _) = Enforcer::new(dp, rules, Settings::stateless(false)).expect("enforcer");
    let verdict = |dst: &str, port: u16| enforced(&enforcer, &tcp6(v6(dst), port));
    let hosts = ["2603:1000:4::5", "2603:1000:5::7", "2a01:111::9"];
    for h in hosts {
        assert_eq!(verdict(h, 8443), XDP_DROP, "{h} not learned yet");
    }
    for h in hosts {
        enforcer.allow(v6(h).into(), &[2]).expect("learn");
    }
    assert_eq!(enforcer.last().lookup_nodes.map(|n| n > 0), Some(true));
    for h in hosts {
        assert_eq!(verdict(h, 8443), XDP_PASS, "{h} learned");
        assert_eq!(verdict(h, 443), XDP_DROP, "{h} only for its rule");
    }
    for (dst, port, want) in [
        ("2603:1000:4::6", 8443, XDP_DROP),
        ("2603:1000:4::301", 443, XDP_PASS),
        ("2603:1000:4::33f", 443, XDP_PASS),
        ("2603:1000:4::340", 443, XDP_DROP),
        ("2603:1000:5::8", 8443, XDP_DROP),
    ] {
        assert_eq!(verdict(dst, port), want, "{dst} port {port}");
    }
}
