//! A userspace reference classifier with the datapath's semantics, written
//! independently of it: it parses with slices and scans the *uncompiled* rules
//! naively (no LPM, no flattening). The differential test runs random packets through
//! both and requires identical verdicts, so it checks the parser, the compiler and the
//! datapath at once.
//!
//! Semantics (README "Datapath semantics" says the same):
//! - Ethernet, then up to two VLAN tags (0x8100/0x88a8); a third tag is malformed.
//! - Not IPv4/IPv6: passed as `non_ip`.
//! - IPv4: version 4, IHL >= 5, options present; non-first fragments (offset != 0)
//!   carry no ports.
//! - IPv6: version 6; hop-by-hop, routing, destination options, AH and fragment headers
//!   are walked, at most 8, then `ext_hdr_limit`; a fragment header with offset != 0
//!   marks a non-first fragment.
//! - L4: TCP needs 20 bytes with data offset >= 5, UDP 8, ICMP/ICMPv6 4 (8 for echo
//!   request/reply); anything shorter is malformed. Only TCP and UDP have ports.
//! - No read starts beyond offset 4096 (malformed): it bounds offsets for the verifier.
//! - Lookup: the rules of the packet's direction covering its peer address
//!   (destination for outbound, source for inbound), then the `local` rules covering
//!   its destination; within each group the lowest-id rule that allows (protocol,
//!   port) wins: `allowed`. No rule of either group covers: `no_match`. Otherwise
//!   `fragment` for a non-first fragment, else `port`.
//! - Stateless: connection tracking is off in the differential test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tagwall_common::verdict::{
    REASON_ALLOWED, REASON_EXT_HDR_LIMIT, REASON_FRAGMENT, REASON_MALFORMED, REASON_NO_MATCH,
    REASON_NON_IP, REASON_PORT,
};

use crate::rules::{Direction, Rule};

/// What the reference decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefVerdict {
    pub reason: u8,
    /// Credited rule (only for `allowed`).
    pub rule_id: u32,
}

/// Facts parsed from a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dport: Option<u16>,
    pub later_fragment: bool,
}

const MAX_OFF: usize = 4096;

fn get(pkt: &[u8], off: usize, n: usize) -> Result<&[u8], u8> {
    if off > MAX_OFF {
        return Err(REASON_MALFORMED);
    }
    pkt.get(off..off + n).ok_or(REASON_MALFORMED)
}

/// Parse a frame. `Ok(None)`: not IP.
///
/// # Errors
/// The drop reason for frames that cannot be parsed.
pub fn parse(pkt: &[u8]) -> Result<Option<Facts>, u8> {
    let eth = get(pkt, 0, 14)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let tag = get(pkt, off, 4)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += 4;
    }
    match ethertype {
        0x0800 => parse_v4(pkt, off).map(Some),
        0x86dd => parse_v6(pkt, off).map(Some),
        0x8100 | 0x88a8 => Err(REASON_MALFORMED),
        _ => Ok(None),
    }
}

fn parse_v4(pkt: &[u8], off: usize) -> Result<Facts, u8> {
    let ip = get(pkt, off, 20)?;
    if ip[0] >> 4 != 4 || usize::from(ip[0] & 0xf) < 5 {
        return Err(REASON_MALFORMED);
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    // Options must be present (last byte of the header inside the frame).
    get(pkt, off + ihl - 1, 1)?;
    let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
    let proto = ip[9];
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let dport = if later_fragment {
        None
    } else {
        l4(pkt, off + ihl, proto)?
    };
    Ok(Facts {
        src,
        dst,
        proto,
        dport,
        later_fragment,
    })
}

fn parse_v6(pkt: &[u8], off: usize) -> Result<Facts, u8> {
    let ip = get(pkt, off, 40)?;
    if ip[0] >> 4 != 6 {
        return Err(REASON_MALFORMED);
    }
    let src = IpAddr::V6(Ipv6Addr::from(
        <[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"),
    ));
    let dst = IpAddr::V6(Ipv6Addr::from(
        <[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"),
    ));
    let mut nh = ip[6];
    let mut at = off + 40;
    let mut later_fragment = false;
    let mut walked = 0;
    while matches!(nh, 0 | 43 | 44 | 51 | 60) {
        if walked == 8 {
            return Err(REASON_EXT_HDR_LIMIT);
        }
        if nh == 44 {
            let h = get(pkt, at, 8)?;
            later_fragment |= u16::from_be_bytes([h[2], h[3]]) >> 3 != 0;
            nh = h[0];
            at += 8;
        } else {
            let h = get(pkt, at, 2)?;
            let len = if nh == 51 {
                (usize::from(h[1]) + 2) * 4
            } else {
                (usize::from(h[1]) + 1) * 8
            };
            get(pkt, at + len - 1, 1)?;
            nh = h[0];
            at += len;
        }
        walked += 1;
    }
    let dport = if later_fragment {
        None
    } else {
        l4(pkt, at, nh)?
    };
    Ok(Facts {
        src,
        dst,
        proto: nh,
        dport,
        later_fragment,
    })
}

fn l4(pkt: &[u8], off: usize, proto: u8) -> Result<Option<u16>, u8> {
    match proto {
        6 => {
            let t = get(pkt, off, 20)?;
            if t[12] >> 4 < 5 {
                return Err(REASON_MALFORMED);
            }
            Ok(Some(u16::from_be_bytes([t[2], t[3]])))
        }
        17 => Ok(Some(u16::from_be_bytes(
            get(pkt, off, 8)?[2..4].try_into().expect("2 bytes"),
        ))),
        // Echo request/reply (ICMP 8/0, ICMPv6 128/129) carry an identifier: 8 bytes.
        1 | 58 => {
            let h = get(pkt, off, 4)?;
            let echo = if proto == 1 {
                h[0] == 8 || h[0] == 0
            } else {
                h[0] == 128 || h[0] == 129
            };
            if echo {
                get(pkt, off, 8)?;
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Decide for parsed facts by scanning the rules of `dir`, then the local rules.
#[must_use]
pub fn decide(f: &Facts, rules: &[Rule], dir: Direction) -> RefVerdict {
    let peer = if dir == Direction::Inbound {
        f.src
    } else {
        f.dst
    };
    let group = |d: Direction, addr: IpAddr| -> Vec<&Rule> {
        let mut v: Vec<&Rule> = rules
            .iter()
            .filter(|r| r.direction == d && r.prefixes.iter().any(|n| n.contains(&addr)))
            .collect();
        v.sort_by_key(|r| r.id);
        v
    };
    let groups = [group(dir, peer), group(Direction::Local, f.dst)];
    if groups.iter().all(Vec::is_empty) {
        return RefVerdict {
            reason: REASON_NO_MATCH,
            rule_id: 0,
        };
    }
    for g in &groups {
        if let Some(r) = g.iter().find(|r| r.allows(f.proto, f.dport)) {
            return RefVerdict {
                reason: REASON_ALLOWED,
                rule_id: r.id,
            };
        }
    }
    RefVerdict {
        reason: if f.later_fragment {
            REASON_FRAGMENT
        } else {
            REASON_PORT
        },
        rule_id: 0,
    }
}

/// Classify a frame leaving the protected network.
#[must_use]
pub fn classify(pkt: &[u8], rules: &[Rule]) -> RefVerdict {
    match parse(pkt) {
        Ok(None) => RefVerdict {
            reason: REASON_NON_IP,
            rule_id: 0,
        },
        Ok(Some(f)) => decide(&f, rules, Direction::Outbound),
        Err(reason) => RefVerdict { reason, rule_id: 0 },
    }
}
