//! Header parsing. Every read goes through [`Cursor::bytes`], which checks
//! `data + off + N <= data_end` before the pointer is formed (the verifier needs that
//! exact shape). Header structs are byte arrays, read byte by byte, except the
//! address words (see [`word`]).
//!
//! The parse result is written into a [`Headers`] (stage 2's `FACTS`), or it is an
//! error code that becomes a drop reason; no path reads past `data_end`, and every
//! path ends in a defined verdict.

use tagwall_common::{
    ct::V4_MAPPED_WORD,
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

/// Four header bytes at `I` as a key word (the bytes in memory order, as the maps
/// hold them), in one load. Written in Rust, the BPF target splits a word load it
/// cannot prove aligned into four byte loads, three shifts and three ors (an IPv6
/// address behind a 14-byte Ethernet header is only 2-byte aligned), so the load is
/// spelled out. The verifier accepts an unaligned packet load on architectures with
/// efficient unaligned access (x86-64, arm64); elsewhere it refuses the program at
/// load time, it never misreads.
#[inline(always)]
fn word<const N: usize, const I: usize>(b: &[u8; N]) -> u32 {
    const { assert!(I + 4 <= N) };
    let w: u64;
    // SAFETY: the four bytes are inside `b`, a bounds-checked slice of the packet.
    unsafe {
        core::arch::asm!(
            "{w} = *(u32 *)({p} + {i})",
            w = lateout(reg) w,
            p = in(reg) b.as_ptr(),
            i = const I,
            options(readonly, nostack, preserves_flags),
        );
    }
    w as u32
}

/// What the parser learns of an IP packet. It is written in place (stage 1 passes
/// the `Headers` inside this CPU's `FACTS` slot) as each header is read: returned
/// as a value at the end, the addresses and ports stayed live across the rest of the
/// parse, and the BPF target's five free registers spilled them to the stack and
/// read them back before the copy into `FACTS` (docs/profiling.md, sixth round).
#[repr(C)]
pub struct Headers {
    /// Source and destination as key words: IPv6 as is, IPv4 as IPv4-mapped IPv6
    /// (`::ffff:a.b.c.d`).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The flow identity of the L4 header, valid when `has_flow`: TCP/UDP ports, or
    /// the identifier of an ICMP/ICMPv6 echo request or reply as both. Both 0 when
    /// the packet is not trackable (other protocols, other ICMP types, later
    /// fragments).
    pub sport: u16,
    pub dport: u16,
    pub v6: u8,
    /// Final IP protocol (after IPv6 extension headers).
    pub proto: u8,
    /// The packet carries a destination port (TCP/UDP, not a later fragment).
    pub has_dport: u8,
    pub has_flow: u8,
    /// Non-first fragment: no L4 header, no ports.
    pub later_fragment: u8,
    /// ICMP/ICMPv6 echo request (may open a flow; a reply may only continue one).
    pub echo_request: u8,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for other protocols.
    pub tcp_flags: u8,
    /// The program's hook (`Hook` as `u8`), written by the caller, not the parser.
    pub hook: u8,
}

// `FACTS` is a pinned map, adopted across upgrades when its size matches: these
// fields keep the offsets they had there before `Headers` existed.
const _: () = assert!(core::mem::size_of::<Headers>() == 44);

/// Parse Ethernet, up to two VLAN tags, IPv4/IPv6 and the L4 header into `h`:
/// `Ok(true)` for an IP packet (every field of `h` written), `Ok(false)` for another
/// ethertype (ARP, LLDP, ...; `h` untouched). On `Err`, `h` may be partly written.
#[inline(always)]
pub fn parse(c: &Cursor, h: &mut Headers) -> Result<bool, u8> {
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
        ETH_P_IP => parse_v4(c, off, h).map(|()| true),
        ETH_P_IPV6 => parse_v6(c, off, h).map(|()| true),
        ETH_P_8021Q | ETH_P_8021AD => Err(REASON_MALFORMED),
        _ => Ok(false),
    }
}

#[inline(always)]
fn parse_v4(c: &Cursor, off: usize, h: &mut Headers) -> Result<(), u8> {
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
    h.src = [0, 0, V4_MAPPED_WORD, word::<IPV4_HDR, 12>(ip)];
    h.dst = [0, 0, V4_MAPPED_WORD, word::<IPV4_HDR, 16>(ip)];
    h.v6 = 0;
    h.proto = proto;
    h.later_fragment = u8::from(later_fragment);
    // The options (if any) must be inside the packet even when we skip them.
    let l4 = off + ihl;
    if ihl > IPV4_HDR {
        c.bytes::<1>(l4 - 1)?;
    }
    if later_fragment {
        no_l4(h);
        Ok(())
    } else {
        l4_header(c, l4, proto, h)
    }
}

#[inline(always)]
fn parse_v6(c: &Cursor, off: usize, h: &mut Headers) -> Result<(), u8> {
    let ip = c.bytes::<IPV6_HDR>(off)?;
    if ip[0] >> 4 != 6 {
        return Err(REASON_MALFORMED);
    }
    h.src = [
        word::<IPV6_HDR, 8>(ip),
        word::<IPV6_HDR, 12>(ip),
        word::<IPV6_HDR, 16>(ip),
        word::<IPV6_HDR, 20>(ip),
    ];
    h.dst = [
        word::<IPV6_HDR, 24>(ip),
        word::<IPV6_HDR, 28>(ip),
        word::<IPV6_HDR, 32>(ip),
        word::<IPV6_HDR, 36>(ip),
    ];
    h.v6 = 1;
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
                let e = c.bytes::<2>(l4)?;
                let len = if nh == IPPROTO_AH {
                    (e[1] as usize + 2) * 4
                } else {
                    (e[1] as usize + 1) * 8
                };
                // The whole extension header must be present.
                c.bytes::<1>(l4 + len - 1)?;
                nh = e[0];
                l4 += len;
            }
            IPPROTO_FRAGMENT => {
                if i >= MAX_EXT_HDRS {
                    return Err(REASON_EXT_HDR_LIMIT);
                }
                let e = c.bytes::<8>(l4)?;
                if be16(&[e[2], e[3]]) >> 3 != 0 {
                    later_fragment = true;
                }
                nh = e[0];
                l4 += 8;
            }
            _ => break,
        }
        i += 1;
    }
    h.proto = nh;
    h.later_fragment = u8::from(later_fragment);
    if later_fragment {
        no_l4(h);
        Ok(())
    } else {
        l4_header(c, l4, nh, h)
    }
}

/// The L4 fields of a packet without (or with an unknown) L4 header.
#[inline(always)]
fn no_l4(h: &mut Headers) {
    h.sport = 0;
    h.dport = 0;
    h.has_flow = 0;
    h.has_dport = 0;
    h.echo_request = 0;
    h.tcp_flags = 0;
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The L4 header at `l4`; checks the minimal header of the protocols we know (TCP 20
/// bytes with a sane data offset, UDP 8, ICMP/ICMPv6 4, echo 8).
#[inline(always)]
fn l4_header(c: &Cursor, l4: usize, proto: u8, h: &mut Headers) -> Result<(), u8> {
    match proto {
        PROTO_TCP => {
            let t = c.bytes::<20>(l4)?;
            if t[12] >> 4 < 5 {
                return Err(REASON_MALFORMED);
            }
            h.sport = be16(&[t[0], t[1]]);
            h.dport = be16(&[t[2], t[3]]);
            h.has_flow = 1;
            h.has_dport = 1;
            h.echo_request = 0;
            h.tcp_flags = t[13];
        }
        PROTO_UDP => {
            let u = c.bytes::<8>(l4)?;
            h.sport = be16(&[u[0], u[1]]);
            h.dport = be16(&[u[2], u[3]]);
            h.has_flow = 1;
            h.has_dport = 1;
            h.echo_request = 0;
            h.tcp_flags = 0;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let e = c.bytes::<4>(l4)?;
            let ty = e[0];
            let (request, reply) = if proto == PROTO_ICMP {
                (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            } else {
                (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            };
            if ty == request || ty == reply {
                let e = c.bytes::<8>(l4)?;
                let id = be16(&[e[4], e[5]]);
                h.sport = id;
                h.dport = id;
                h.has_flow = 1;
                h.has_dport = 0;
                h.echo_request = u8::from(ty == request);
                h.tcp_flags = 0;
            } else {
                no_l4(h);
            }
        }
        _ => no_l4(h),
    }
    Ok(())
}
