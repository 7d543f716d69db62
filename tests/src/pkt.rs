//! Crafted frames for BPF_PROG_TEST_RUN. Sizes are named sums
//! (`ETH_HDR + IPV4_HDR + TCP_HDR`); checksums are left zero (XDP does not check them).

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_HDR: usize = 14;
pub const VLAN_HDR: usize = 4;
pub const IPV4_HDR: usize = 20;
pub const IPV6_HDR: usize = 40;
pub const TCP_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
pub const ICMP_HDR: usize = 8;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// An untagged Ethernet frame from `src` to `dst` (addresses of one family) carrying
/// the L4 header `l4` of IP protocol `proto`.
///
/// # Panics
/// On an unparsable address or mixed families.
#[must_use]
pub fn ip_frame(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    let parse = |s: &str| -> std::net::IpAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
    match (parse(src), parse(dst)) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            eth(&[], ETH_P_IP, &ipv4(s, d, proto, &V4Opts::default(), l4))
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            eth(&[], ETH_P_IPV6, &ipv6(s, d, proto, l4))
        }
        _ => panic!("mixed families: {src} -> {dst}"),
    }
}

/// Ethernet header (+ VLAN tags, outermost first: `(tpid, vid)`) followed by `payload`.
#[must_use]
pub fn eth(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    // dst 02:00:00:00:00:02, src 02:00:00:00:00:01, then [TPID TCI]* and the type.
    let mut out = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (tpid, vid) in vlans {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// IPv4 header knobs.
#[derive(Clone, Debug, Default)]
pub struct V4Opts {
    /// Raw options (padded to 4 bytes by the caller).
    pub options: Vec<u8>,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Override the IHL nibble (for malformed headers).
    pub ihl: Option<u8>,
    /// Override the version nibble.
    pub version: Option<u8>,
}

#[must_use]
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, opts: &V4Opts, payload: &[u8]) -> Vec<u8> {
    assert!(
        opts.options.len().is_multiple_of(4),
        "IPv4 options must be padded to 4 bytes"
    );
    let hlen = IPV4_HDR + opts.options.len();
    let ihl = opts
        .ihl
        .unwrap_or(u8::try_from(hlen / 4).expect("ihl fits"));
    let version = opts.version.unwrap_or(4);
    let total = u16::try_from(hlen + payload.len()).expect("small packet");
    let frag = (opts.frag_offset & 0x1fff) | if opts.more_fragments { 0x2000 } else { 0 };
    let mut h = vec![(version << 4) | (ihl & 0xf), 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts.options);
    h.extend_from_slice(payload);
    h
}

#[must_use]
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options) of
/// `8 * (units + 1)` bytes, followed by `rest`.
#[must_use]
pub fn ext(next: u8, units: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, units];
    h.resize(8 * (usize::from(units) + 1), 0);
    h.extend_from_slice(rest);
    h
}

/// An AH header of `4 * (units + 2)` bytes.
#[must_use]
pub fn ah(next: u8, units: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, units];
    h.resize(4 * (usize::from(units) + 2), 0);
    h.extend_from_slice(rest);
    h
}

/// An IPv6 fragment header.
#[must_use]
pub fn frag6(next: u8, offset_units: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let off = (offset_units << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h.extend_from_slice(rest);
    h
}

/// TCP flags (see [`tcp_flags`]); [`tcp`] sets SYN.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// TCP header with SYN set.
#[must_use]
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(TCP_HDR);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    h.extend_from_slice(&[0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

#[must_use]
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(UDP_HDR + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(
        &u16::try_from(UDP_HDR + payload.len())
            .expect("small")
            .to_be_bytes(),
    );
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// ICMP/ICMPv6 echo request.
#[must_use]
pub fn echo(v6: bool) -> Vec<u8> {
    vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]
}

/// Convenience: Ethernet + IPv4 + TCP SYN.
#[must_use]
pub fn tcp4(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp4_flags(dst, dport, TCP_SYN)
}

/// As [`tcp4`], with the given TCP flags (see [`tcp_flags`]).
#[must_use]
pub fn tcp4_flags(dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(
            Ipv4Addr::new(10, 0, 0, 2),
            dst,
            IPPROTO_TCP,
            &V4Opts::default(),
            &tcp_flags(40000, dport, flags),
        ),
    )
}

/// Convenience: Ethernet + IPv4 + UDP.
#[must_use]
pub fn udp4(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(
            Ipv4Addr::new(10, 0, 0, 2),
            dst,
            IPPROTO_UDP,
            &V4Opts::default(),
            &udp(40000, dport, b"x"),
        ),
    )
}

/// Convenience: Ethernet + IPv6 + TCP SYN.
#[must_use]
pub fn tcp6(dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    tcp6_flags(dst, dport, TCP_SYN)
}

/// As [`tcp6`], with the given TCP flags (see [`tcp_flags`]).
#[must_use]
pub fn tcp6_flags(dst: Ipv6Addr, dport: u16, flags: u8) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV6,
        &ipv6(
            "fd00::2".parse().expect("literal"),
            dst,
            IPPROTO_TCP,
            &tcp_flags(40000, dport, flags),
        ),
    )
}

/// Convenience: Ethernet + IPv6 + UDP.
#[must_use]
pub fn udp6(dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IPV6,
        &ipv6(
            "fd00::2".parse().expect("literal"),
            dst,
            IPPROTO_UDP,
            &udp(40000, dport, b"x"),
        ),
    )
}

/// An ARP request frame.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    eth(&[], ETH_P_ARP, &p)
}

/// TCP header with the given flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
#[must_use]
pub fn tcp_flags(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = tcp(sport, dport);
    h[13] = flags;
    h
}

/// ICMP/ICMPv6 echo request or reply with identifier `id`.
#[must_use]
pub fn echo_msg(v6: bool, request: bool, id: u16) -> Vec<u8> {
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let id = id.to_be_bytes();
    vec![ty, 0, 0, 0, id[0], id[1], 0, 1]
}
