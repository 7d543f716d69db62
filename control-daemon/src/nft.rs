//! The compiled policy as an nftables ruleset, for users without eBPF and for
//! like-for-like benchmarks. The LPM layout is turned into disjoint address ranges
//! (each carrying the port set of its longest prefix), so the interval sets never
//! overlap and one set lookup decides, as in the datapath:
//!
//! * `allow4_any` / `allow6_any`: ranges where some rule allows any protocol;
//! * `allow4_proto` / `allow6_proto`: `addr . l4proto` for protocol rules with any port;
//! * `allow4_port` / `allow6_port`: `addr . l4proto . dport-range` for TCP/UDP ports.
//!
//! Local (management) rules get their own `local*` sets, checked after the `allow*`
//! ones. Inbound rules are left out (a comment says so): they belong to tagwall's
//! inbound mode, not to a destination-matching forward chain.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::{
    compile::CompiledPolicy,
    rules::{Direction, Proto},
};
use tagwall_common::policy::PROTO_ANY;

/// A disjoint address range `[lo, hi]` and the port-set index that governs it.
type Segment = (u128, u128, u32);

/// Append `[lo, hi]` governed by `set`, merging with an adjacent range of the same set.
fn push_segment(out: &mut Vec<Segment>, lo: u128, hi: u128, set: u32) {
    if let Some(last) = out.last_mut()
        && last.2 == set
        && last.1.checked_add(1) == Some(lo)
    {
        last.1 = hi;
        return;
    }
    out.push((lo, hi, set));
}

/// Close the open prefixes that end before `lo` (all of them for `None`), emitting
/// what is left of each from `cur` on. `cur` is the first address not yet emitted
/// (`None` once past the end of the address space).
fn close_until(
    stack: &mut Vec<Segment>,
    cur: &mut Option<u128>,
    out: &mut Vec<Segment>,
    lo: Option<u128>,
) {
    while let Some(&(_, top_hi, top_set)) = stack.last() {
        if lo.is_some_and(|l| top_hi >= l) {
            break;
        }
        stack.pop();
        if let Some(c) = *cur
            && c <= top_hi
        {
            push_segment(out, c, top_hi, top_set);
            *cur = top_hi.checked_add(1);
        }
    }
}

/// Disjoint ranges from nested-or-disjoint prefixes (`(lo, hi, prefix_len, set)`):
/// every address gets the set of its longest covering prefix.
pub fn segments(mut prefixes: Vec<(u128, u128, u8, u32)>) -> Vec<Segment> {
    prefixes.sort_by_key(|&(lo, _, len, _)| (lo, len));
    let mut out: Vec<Segment> = Vec::new();
    let mut stack: Vec<Segment> = Vec::new();
    let mut cur: Option<u128> = Some(0);
    for (lo, hi, _, set) in prefixes {
        close_until(&mut stack, &mut cur, &mut out, Some(lo));
        if let (Some(&(_, _, top_set)), Some(c)) = (stack.last(), cur)
            && c < lo
        {
            push_segment(&mut out, c, lo - 1, top_set);
        }
        stack.push((lo, hi, set));
        cur = Some(lo);
    }
    close_until(&mut stack, &mut cur, &mut out, None);
    out
}

fn v4(x: u128) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(x).expect("v4 range"))
}

fn range4(lo: u128, hi: u128) -> String {
    if lo == hi {
        v4(lo).to_string()
    } else {
        format!("{}-{}", v4(lo), v4(hi))
    }
}

fn range6(lo: u128, hi: u128) -> String {
    if lo == hi {
        Ipv6Addr::from(lo).to_string()
    } else {
        format!("{}-{}", Ipv6Addr::from(lo), Ipv6Addr::from(hi))
    }
}

#[derive(Default)]
struct Sets {
    any: Vec<String>,
    proto: Vec<String>,
    port: Vec<String>,
}

fn fill(segs: &[Segment], policy: &CompiledPolicy, fmt_range: fn(u128, u128) -> String) -> Sets {
    let mut s = Sets::default();
    for &(lo, hi, set) in segs {
        let r = fmt_range(lo, hi);
        let entries = &policy.sets[set as usize];
        let any_port =
            |e: &tagwall_common::policy::PortRule| e.port_lo == 0 && e.port_hi == u16::MAX;
        if entries.iter().any(|e| e.proto == PROTO_ANY && any_port(e)) {
            s.any.push(r);
            continue;
        }
        for e in entries {
            // "any protocol, port P" can only match where ports exist: TCP and UDP.
            let protos: &[u8] = if e.proto == PROTO_ANY {
                &[6, 17]
            } else {
                std::slice::from_ref(&e.proto)
            };
            for &proto in protos {
                if Proto(proto).has_ports() && !any_port(e) {
                    let ports = if e.port_lo == e.port_hi {
                        e.port_lo.to_string()
                    } else {
                        format!("{}-{}", e.port_lo, e.port_hi)
                    };
                    s.port.push(format!("{r} . {proto} . {ports}"));
                } else {
                    s.proto.push(format!("{r} . {proto}"));
                }
            }
        }
    }
    s
}

fn set_block(out: &mut String, name: &str, ty: &str, elements: &[String]) {
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{");
        for chunk in elements.chunks(8) {
            let _ = writeln!(out, "\t\t\t{},", chunk.join(", "));
        }
        let _ = writeln!(out, "\t\t}}");
    }
    let _ = writeln!(out, "\t}}");
}

/// Render the outbound part of `policy` as a complete `nft -f` file: table
/// `inet <table>`, a chain on `hook` (`forward` for a gateway, `output` for a host)
/// with policy drop (accept when `audit`). With `iif`, only packets entering that
/// interface are filtered (as tagwall's XDP program on it does); without, return
/// traffic of connections is let through by conntrack (`ct state established,related`).
#[must_use]
pub fn render(
    policy: &CompiledPolicy,
    table: &str,
    hook: &str,
    iif: Option<&str>,
    audit: bool,
    header: &str,
) -> String {
    let inbound = policy
        .v4
        .iter()
        .filter(|(d, _, _)| *d == Direction::Inbound)
        .count()
        + policy
            .v6
            .iter()
            .filter(|(d, _, _)| *d == Direction::Inbound)
            .count();
    let mut out = String::new();
    for l in header.lines() {
        let _ = writeln!(out, "# {l}");
    }
    if inbound > 0 {
        let _ = writeln!(
            out,
            "# {inbound} inbound LPM entries are not exported (tagwall inbound mode only)"
        );
    }
    let _ = writeln!(out, "table inet {table}");
    let _ = writeln!(out, "delete table inet {table}");
    let _ = writeln!(out, "table inet {table} {{");
    // Outbound rules, then local (management) rules: both match the destination; as
    // in the datapath, a packet passes if either group allows it.
    let mut groups = Vec::new();
    for (dir, name) in [(Direction::Outbound, "allow"), (Direction::Local, "local")] {
        let p4: Vec<_> = policy
            .v4
            .iter()
            .filter(|(d, _, _)| *d == dir)
            .map(|(_, n, s)| {
                (
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                    n.prefix_len(),
                    *s,
                )
            })
            .collect();
        let p6: Vec<_> = policy
            .v6
            .iter()
            .filter(|(d, _, _)| *d == dir)
            .map(|(_, n, s)| {
                (
                    u128::from(n.network()),
                    u128::from(n.broadcast()),
                    n.prefix_len(),
                    *s,
                )
            })
            .collect();
        if dir == Direction::Local && p4.is_empty() && p6.is_empty() {
            continue;
        }
        let s4 = fill(&segments(p4), policy, range4);
        let s6 = fill(&segments(p6), policy, range6);
        set_block(&mut out, &format!("{name}4_any"), "ipv4_addr", &s4.any);
        set_block(
            &mut out,
            &format!("{name}4_proto"),
            "ipv4_addr . inet_proto",
            &s4.proto,
        );
        set_block(
            &mut out,
            &format!("{name}4_port"),
            "ipv4_addr . inet_proto . inet_service",
            &s4.port,
        );
        set_block(&mut out, &format!("{name}6_any"), "ipv6_addr", &s6.any);
        set_block(
            &mut out,
            &format!("{name}6_proto"),
            "ipv6_addr . inet_proto",
            &s6.proto,
        );
        set_block(
            &mut out,
            &format!("{name}6_port"),
            "ipv6_addr . inet_proto . inet_service",
            &s6.port,
        );
        groups.push(name);
    }
    let _ = writeln!(
        out,
        "\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy {};",
        if audit { "accept" } else { "drop" }
    );
    match iif {
        Some(i) => {
            let _ = writeln!(out, "\t\tiifname != \"{i}\" accept");
        }
        None => {
            let _ = writeln!(out, "\t\tct state established,related accept");
        }
    }
    for name in groups {
        for line in [
            format!("ip daddr @{name}4_any counter accept"),
            format!("ip daddr . meta l4proto @{name}4_proto counter accept"),
            format!("ip daddr . meta l4proto . th dport @{name}4_port counter accept"),
            format!("ip6 daddr @{name}6_any counter accept"),
            format!("ip6 daddr . meta l4proto @{name}6_proto counter accept"),
            format!("ip6 daddr . meta l4proto . th dport @{name}6_port counter accept"),
        ] {
            let _ = writeln!(out, "\t\t{line}");
        }
    }
    let _ = writeln!(out, "\t\tcounter comment \"not allowed\"");
    let _ = writeln!(out, "\t}}\n}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_prefixes_become_disjoint_ranges() {
        // 10.0.0.0/8 (set 0) with 10.1.0.0/16 (set 1) inside, and 10.1.2.0/24 (set 0).
        let p = |a: [u8; 4], len: u8, set: u32| {
            let n = ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap();
            (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
                len,
                set,
            )
        };
        let segs = segments(vec![
            p([10, 1, 2, 0], 24, 0),
            p([10, 0, 0, 0], 8, 0),
            p([10, 1, 0, 0], 16, 1),
            p([192, 168, 0, 0], 16, 2),
        ]);
        let shown: Vec<(String, u32)> = segs
            .iter()
            .map(|&(lo, hi, s)| (range4(lo, hi), s))
            .collect();
        assert_eq!(
            shown,
            [
                ("10.0.0.0-10.0.255.255".to_owned(), 0),
                ("10.1.0.0-10.1.1.255".to_owned(), 1),
                ("10.1.2.0-10.1.2.255".to_owned(), 0),
                ("10.1.3.0-10.1.255.255".to_owned(), 1),
                ("10.2.0.0-10.255.255.255".to_owned(), 0),
                ("192.168.0.0-192.168.255.255".to_owned(), 2),
            ]
        );
        // The whole space, with a hole punched at the very end.
        let all = segments(vec![(0, u128::MAX, 0, 0), (u128::MAX, u128::MAX, 128, 1)]);
        assert_eq!(all, vec![(0, u128::MAX - 1, 0), (u128::MAX, u128::MAX, 1)]);
    }
}
