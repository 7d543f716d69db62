//! Differential test: random policies and thousands of random frames through the real
//! XDP program (BPF_PROG_TEST_RUN) and through the userspace reference classifier,
//! which scans the uncompiled rules naively. Verdict, reason and credited rule must be
//! identical for every frame: 0 mismatches.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tagwall::{
    compile::compile,
    dataplane::{LoadOptions, Settings},
    reference,
    rules::{Direction, PortRange, Proto, Rule},
};
use tagwall_common::{
    policy::DEFAULT_SETS_PER_SLOT,
    verdict::{REASON_ALLOWED, is_drop, reason_name},
};
use tagwall_tests::{
    harness::{Harness, XDP_DROP, XDP_PASS},
    pkt::*,
};

/// Addresses come from a small space so random prefixes overlap and frames hit them.
fn rand_v4(rng: &mut StdRng) -> Ipv4Addr {
    Ipv4Addr::from(
        0x0a00_0000 | u32::from(rng.random_range(0u8..4)) << 16 | rng.random_range(0..0x200),
    )
}

fn rand_v6(rng: &mut StdRng) -> Ipv6Addr {
    Ipv6Addr::from(
        0xfd00u128 << 112
            | u128::from(rng.random_range(0u8..4)) << 96
            | u128::from(rng.random_range(0u32..0x200)),
    )
}

fn rand_rule(rng: &mut StdRng, id: u32) -> Rule {
    let prefixes = (0..rng.random_range(1..4))
        .map(|_| {
            if rng.random_bool(0.5) {
                let len = rng.random_range(8..=32);
                IpNet::V4(Ipv4Net::new(rand_v4(rng), len).unwrap().trunc())
            } else {
                let len = rng.random_range(16..=128);
                IpNet::V6(Ipv6Net::new(rand_v6(rng), len).unwrap().trunc())
            }
        })
        .collect();
    let proto = [
        Proto::ANY,
        Proto::TCP,
        Proto::UDP,
        Proto::ICMP,
        Proto::ICMPV6,
        Proto(47),
    ][rng.random_range(0..6)];
    let ports = if !proto.has_ports() || rng.random_bool(0.15) {
        vec![PortRange::ANY]
    } else {
        (0..rng.random_range(1..3))
            .map(|_| {
                let lo = rng.random_range(1..60);
                PortRange {
                    lo,
                    hi: lo + rng.random_range(0..4),
                }
            })
            .collect()
    };
    Rule {
        id,
        name: format!("r{id}"),
        direction: Direction::Outbound,
        prefixes,
        proto,
        ports,
        origin: "differential".into(),
    }
}

fn l4(rng: &mut StdRng, proto: u8, v6: bool) -> Vec<u8> {
    let port = rng.random_range(0..64);
    match proto {
        IPPROTO_TCP => tcp(rng.random(), port),
        IPPROTO_UDP => udp(rng.random(), port, b"payload"),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => echo(v6),
        _ => vec![0xab; rng.random_range(0..12)],
    }
}

fn rand_proto(rng: &mut StdRng, v6: bool) -> u8 {
    [
        IPPROTO_TCP,
        IPPROTO_TCP,
        IPPROTO_UDP,
        IPPROTO_UDP,
        if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP },
        47,
        IPPROTO_ESP,
    ][rng.random_range(0..7)]
}

fn rand_frame(rng: &mut StdRng) -> Vec<u8> {
    let vlans: Vec<(u16, u16)> = (0..[0, 0, 0, 1, 2, 3][rng.random_range(0..6)])
        .map(|_| {
            (
                [ETH_P_8021Q, ETH_P_8021AD][rng.random_range(0..2)],
                rng.random_range(0..4096),
            )
        })
        .collect();
    let mut frame = match rng.random_range(0..10) {
        0 => eth(
            &vlans,
            [ETH_P_ARP, 0x88cc, 0x0842][rng.random_range(0..3)],
            &[0; 28],
        ),
        1..=5 => {
            let proto = rand_proto(rng, false);
            let opts = V4Opts {
                options: vec![
                    1;
                    4 * rng.random_range(0..=10usize) * usize::from(rng.random_bool(0.3))
                ],
                frag_offset: if rng.random_bool(0.15) {
                    rng.random_range(1..100)
                } else {
                    0
                },
                more_fragments: rng.random_bool(0.15),
                ihl: if rng.random_bool(0.03) {
                    Some(rng.random_range(0..16))
                } else {
                    None
                },
                version: if rng.random_bool(0.02) {
                    Some(rng.random_range(0..16))
                } else {
                    None
                },
            };
            let payload = l4(rng, proto, false);
            eth(
                &vlans,
                ETH_P_IP,
                &ipv4(
                    Ipv4Addr::new(172, 16, 0, 1),
                    rand_v4(rng),
                    proto,
                    &opts,
                    &payload,
                ),
            )
        }
        _ => {
            let proto = rand_proto(rng, true);
            let mut payload = l4(rng, proto, true);
            let mut next = proto;
            for _ in 0..[0, 0, 1, 2, 3, 8, 9][rng.random_range(0..7)] {
                let kind = [
                    IPPROTO_HOPOPTS,
                    IPPROTO_ROUTING,
                    IPPROTO_DSTOPTS,
                    IPPROTO_AH,
                    IPPROTO_FRAGMENT,
                ][rng.random_range(0..5)];
                payload = match kind {
                    IPPROTO_AH => ah(next, rng.random_range(1..4), &payload),
                    IPPROTO_FRAGMENT => frag6(
                        next,
                        if rng.random_bool(0.4) {
                            rng.random_range(1..50)
                        } else {
                            0
                        },
                        rng.random(),
                        &payload,
                    ),
                    _ => ext(next, rng.random_range(0..3), &payload),
                };
                next = kind;
            }
            eth(
                &vlans,
                ETH_P_IPV6,
                &ipv6("fd99::1".parse().unwrap(), rand_v6(rng), next, &payload),
            )
        }
    };
    // Sometimes truncate or corrupt (never below the Ethernet header: the kernel
    // refuses shorter XDP test frames).
    if rng.random_bool(0.15) && frame.len() > ETH_HDR {
        let len = rng.random_range(ETH_HDR..frame.len());
        frame.truncate(len);
    }
    if rng.random_bool(0.1) {
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(12..frame.len());
            frame[i] = rng.random();
        }
    }
    frame
}

/// The multibit trie (the default lookup table).
#[test]
fn datapath_equals_reference_on_random_policies_and_frames() {
    differential(&LoadOptions::default(), false);
}

/// The kernel LPM tries, which a slot falls back to when its prefixes do not fit the
/// lookup table (here: a table with one node per slot).
#[test]
fn lpm_fallback_equals_reference_on_random_policies_and_frames() {
    let opts = LoadOptions {
        lookup_nodes: tagwall_common::stride::FIRST_NODE + 2,
        ..LoadOptions::default()
    };
    differential(&opts, true);
}

fn lpm_fallback(h: &Harness) -> bool {
    let m =
        h.dp.map(tagwall_common::names::MAP_CONFIG)
            .expect("CONFIG map");
    let arr: aya::maps::Array<&aya::maps::MapData, tagwall_common::policy::Config> =
        aya::maps::Array::try_from(m).expect("array");
    arr.get(&0, 0).expect("config").flags & tagwall_common::policy::CONFIG_F_LPM_FALLBACK != 0
}

fn differential(opts: &LoadOptions, fallback: bool) {
    let mut rng = StdRng::seed_from_u64(0x7a67_a11d);
    let mut h = Harness::with_load(
        vec![rand_rule(&mut rng, 1)],
        &Settings::stateless(false),
        opts,
    );
    let (mut frames, mut policies, mut allowed, mut mismatches) = (0, 0, 0, Vec::new());
    let mut fell_back = 0;
    let mut reasons_seen = std::collections::BTreeSet::new();
    while policies < 40 {
        let n = rng.random_range(1..14);
        let rules: Vec<Rule> = (1..=n).map(|id| rand_rule(&mut rng, id)).collect();
        if compile(&rules, DEFAULT_SETS_PER_SLOT as usize).is_err() {
            continue;
        }
        h.reapply(rules.clone(), false);
        fell_back += usize::from(lpm_fallback(&h));
        policies += 1;
        for _ in 0..150 {
            let frame = rand_frame(&mut rng);
            let got = h.run(&frame);
            let want = reference::classify(&frame, &rules);
            let want_action = if is_drop(want.reason) {
                XDP_DROP
            } else {
                XDP_PASS
            };
            if (got.reason, got.rule_id, got.action) != (want.reason, want.rule_id, want_action) {
                mismatches.push(format!(
                    "datapath {} rule {} action {} vs reference {} rule {}; frame {:02x?}; rules {:?}",
                    reason_name(got.reason), got.rule_id, got.action, reason_name(want.reason), want.rule_id, frame, rules
                ));
            }
            reasons_seen.insert(want.reason);
            allowed += usize::from(want.reason == REASON_ALLOWED);
            frames += 1;
        }
    }
    println!(
        "{frames} frames, {policies} policies ({fell_back} in the LPM tries), {allowed} allowed, \
         reasons {reasons_seen:?}"
    );
    if fallback {
        // Nearly every policy needs more than the small table's one node per slot.
        assert!(fell_back >= 30, "{fell_back} of 40 policies fell back");
    } else {
        assert_eq!(fell_back, 0, "the default table holds every policy here");
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first: {}",
        mismatches.len(),
        mismatches[0]
    );
    // The generator must exercise every verdict path, or the comparison proves little.
    assert_eq!(reasons_seen.len(), 7, "reasons covered: {reasons_seen:?}");
    assert!(
        allowed > frames / 10,
        "too few allowed frames: {allowed} of {frames}"
    );
}
