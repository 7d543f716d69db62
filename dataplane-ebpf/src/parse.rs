//! Header parsing. Every read goes through [`Cursor::bytes`], which checks
//! `data + off + N <= data_end` before the pointer is formed (the verifier needs that
//! exact shape). Header structs are byte arrays, so no unaligned multi-byte loads.
//!
//! The parse result is a [`Parsed`] or an error code that becomes a drop reason; no
//! path reads past `data_end`, and every path ends in a defined verdict.

use tagwall_common::{
    policy::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    verdict::{REASON_EXT_HDR_LIMIT, REASON_MALFORMED},
};

pub const ETH_HDR: usize = 14;
pub const VLAN_HDR: usize = 4;
pub const IPV4_HDR: usize = 20;
pub const IPV6_HDR: usize = 40;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// VLAN tags the parser strips (802.1Q, QinQ). A third tag is malformed: passing it
/// as "non-IP" would let tagged IP traffic around the policy.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up with `REASON_EXT_HDR_LIMIT`.
pub const MAX_EXT_HDRS: usize = 8;
/// Largest L3/L4 offset the parser follows; keeps offsets bounded for the verifier.
const MAX_OFF: usize = 4096;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

#[derive(Clone, Copy)]
pub struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// `N` bytes at `off`, or `Err` if they are not all inside the packet.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Result<&[u8; N], u8> {
        if off > MAX_OFF {
            return Err(REASON_MALFORMED);
        }
        let p = self.start + off;
        if p + N > self.end {
            return Err(REASON_MALFORMED);
        }
        // SAFETY: bounds checked against data_end just above.
        Ok(unsafe { &*(p as *const [u8; N]) })
    }
}

#[inline(always)]
fn be16(b: &[u8; 2]) -> u16 {
    u16::from_be_bytes(*b)
}

pub enum L3 {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub struct Parsed {
    pub src: L3,
    pub dst: L3,
    /// Final IP protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Destination port, for TCP/UDP packets that carry one.
    pub dport: Option<u16>,
    /// The flow identity of the L4 header: TCP/UDP ports, or the identifier of an
    /// ICMP/ICMPv6 echo request or reply as both. `None`: not trackable (other
    /// protocols, other ICMP types, later fragments).
    pub flow_ports: Option<(u16, u16)>,
    /// ICMP/ICMPv6 echo request (may open a flow; a reply may only continue one).
    pub echo_request: bool,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for other protocols.
    pub tcp_flags: u8,
    /// Non-first fragment: no L4 header, no ports.
    pub later_fragment: bool,
}

pub enum Outcome {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NonIp,
    Ip(Parsed),
}

/// Parse Ethernet, up to two VLAN tags, IPv4/IPv6 and the L4 ports.
#[inline(always)]
pub fn parse(c: &Cursor) -> Result<Outcome, u8> {
    let eth = c.bytes::<ETH_HDR>(0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HDR;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        let tag = c.bytes::<VLAN_HDR>(off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_HDR;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => parse_v4(c, off).map(Outcome::Ip),
        ETH_P_IPV6 => parse_v6(c, off).map(Outcome::Ip),
        ETH_P_8021Q | ETH_P_8021AD => Err(REASON_MALFORMED),
        _ => Ok(Outcome::NonIp),
    }
}

#[inline(always)]
fn parse_v4(c: &Cursor, off: usize) -> Result<Parsed, u8> {
    let ip = c.bytes::<IPV4_HDR>(off)?;
    if ip[0] >> 4 != 4 {
        return Err(REASON_MALFORMED);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_HDR {
        return Err(REASON_MALFORMED);
    }
    let frag = be16(&[ip[6], ip[7]]);
    let later_fragment = frag & 0x1fff != 0;
    let proto = ip[9];
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    // The options (if any) must be inside the packet even when we skip them.
    let l4 = off + ihl;
    if ihl > IPV4_HDR {
        c.bytes::<1>(l4 - 1)?;
    }
    let l4h = if later_fragment {
        L4::NONE
    } else {
        l4_header(c, l4, proto)?
    };
    Ok(Parsed {
        src: L3::V4(src),
        dst: L3::V4(dst),
        proto,
        dport: l4h.dport,
        flow_ports: l4h.flow_ports,
        echo_request: l4h.echo_request,
        tcp_flags: l4h.tcp_flags,
        later_fragment,
    })
}

#[inline(always)]
fn parse_v6(c: &Cursor, off: usize) -> Result<Parsed, u8> {
    let ip = c.bytes::<IPV6_HDR>(off)?;
    if ip[0] >> 4 != 6 {
        return Err(REASON_MALFORMED);
    }
    let src = *c.bytes::<16>(off + 8)?;
    let dst = *c.bytes::<16>(off + 24)?;
    let mut nh = ip[6];
    let mut l4 = off + IPV6_HDR;
    let mut later_fragment = false;
    let mut i = 0;
    loop {
        match nh {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                if i >= MAX_EXT_HDRS {
                    return Err(REASON_EXT_HDR_LIMIT);
                }
                let h = c.bytes::<2>(l4)?;
                let len = if nh == IPPROTO_AH {
                    (h[1] as usize + 2) * 4
                } else {
                    (h[1] as usize + 1) * 8
                };
                // The whole extension header must be present.
                c.bytes::<1>(l4 + len - 1)?;
                nh = h[0];
                l4 += len;
            }
            IPPROTO_FRAGMENT => {
                if i >= MAX_EXT_HDRS {
                    return Err(REASON_EXT_HDR_LIMIT);
                }
                let h = c.bytes::<8>(l4)?;
                if be16(&[h[2], h[3]]) >> 3 != 0 {
                    later_fragment = true;
                }
                nh = h[0];
                l4 += 8;
            }
            _ => break,
        }
        i += 1;
    }
    let l4h = if later_fragment {
        L4::NONE
    } else {
        l4_header(c, l4, nh)?
    };
    Ok(Parsed {
        src: L3::V6(src),
        dst: L3::V6(dst),
        proto: nh,
        dport: l4h.dport,
        flow_ports: l4h.flow_ports,
        echo_request: l4h.echo_request,
        tcp_flags: l4h.tcp_flags,
        later_fragment,
    })
}

/// What the parser takes from an L4 header.
struct L4 {
    dport: Option<u16>,
    flow_ports: Option<(u16, u16)>,
    echo_request: bool,
    tcp_flags: u8,
}

impl L4 {
    const NONE: Self = Self {
        dport: None,
        flow_ports: None,
        echo_request: false,
        tcp_flags: 0,
    };
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The L4 header at `l4`; checks the minimal header of the protocols we know (TCP 20
/// bytes with a sane data offset, UDP 8, ICMP/ICMPv6 4, echo 8).
#[inline(always)]
fn l4_header(c: &Cursor, l4: usize, proto: u8) -> Result<L4, u8> {
    match proto {
        PROTO_TCP => {
            let t = c.bytes::<20>(l4)?;
            if t[12] >> 4 < 5 {
                return Err(REASON_MALFORMED);
            }
            let (sport, dport) = (be16(&[t[0], t[1]]), be16(&[t[2], t[3]]));
            Ok(L4 {
                dport: Some(dport),
                flow_ports: Some((sport, dport)),
                echo_request: false,
                tcp_flags: t[13],
            })
        }
        PROTO_UDP => {
            let u = c.bytes::<8>(l4)?;
            let (sport, dport) = (be16(&[u[0], u[1]]), be16(&[u[2], u[3]]));
            Ok(L4 {
                dport: Some(dport),
                flow_ports: Some((sport, dport)),
                echo_request: false,
                tcp_flags: 0,
            })
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h = c.bytes::<4>(l4)?;
            let ty = h[0];
            let (request, reply) = if proto == PROTO_ICMP {
                (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            } else {
                (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            };
            if ty == request || ty == reply {
                let e = c.bytes::<8>(l4)?;
                let id = be16(&[e[4], e[5]]);
                return Ok(L4 {
                    dport: None,
                    flow_ports: Some((id, id)),
                    echo_request: ty == request,
                    tcp_flags: 0,
                });
            }
            Ok(L4::NONE)
        }
        _ => Ok(L4::NONE),
    }
}
