//! Real DNS traffic from public captures (`../shared/testdata/pcaps`, read in place,
//! never copied; see README.txt there) through the proxy's parse-and-validate path:
//! every DNS message parses or is rejected with a typed error (never a panic), and
//! the answers yield the names and addresses the captures are documented to hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use hickory_proto::op::Message;
use tagwall::dns::{
    Matcher,
    wire::{self, ParsedQuery, matched_names},
};

fn pcap_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/pcaps");
    assert!(
        d.is_dir(),
        "test data missing: {} (the shared testdata must be beside the repo, see its README.txt)",
        d.display()
    );
    d
}

/// Classic pcap (either byte order, µs or ns): link type and frames.
fn read_pcap(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 24, "{}: short file", path.display());
    let magic = [b[0], b[1], b[2], b[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!(
            "{}: not a classic pcap (magic {magic:02x?})",
            path.display()
        ),
    };
    let u32_at = |i: usize| {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = u32_at(20);
    let mut frames = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let incl = u32_at(i + 8) as usize;
        let start = i + 16;
        assert!(
            start + incl <= b.len(),
            "{}: truncated record",
            path.display()
        );
        frames.push(b[start..start + incl].to_vec());
        i = start + incl;
    }
    (link, frames)
}

/// What a frame carried on port 53.
enum Dns {
    Udp(Vec<u8>),
    /// A TCP segment's payload (length-prefixed messages, possibly partial).
    Tcp(Vec<u8>),
    /// A non-first IP fragment or a fragmented datagram: not reassembled here.
    Fragment,
}

fn l4(proto: u8, p: &[u8]) -> Option<Dns> {
    match proto {
        17 if p.len() >= 8 => {
            let (sp, dp) = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            (sp == 53 || dp == 53).then(|| Dns::Udp(p[8..].to_vec()))
        }
        6 if p.len() >= 20 => {
            let (sp, dp) = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            let off = usize::from(p[12] >> 4) * 4;
            (sp == 53 || dp == 53).then(|| Dns::Tcp(p.get(off..).unwrap_or_default().to_vec()))
        }
        _ => None,
    }
}

fn ip(p: &[u8]) -> Option<Dns> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([p[6], p[7]]);
            if frag & 0x3fff != 0 {
                return Some(Dns::Fragment);
            }
            let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
            l4(p[9], p.get(ihl..total)?)
        }
        6 if p.len() >= 40 => {
            let mut next = p[6];
            let mut rest = &p[40..];
            loop {
                match next {
                    0 | 43 | 60 => {
                        let len = (usize::from(*rest.get(1)?) + 1) * 8;
                        next = rest[0];
                        rest = rest.get(len..)?;
                    }
                    44 => {
                        let fo = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
                        if fo & 0xfff9 != 0 {
                            return Some(Dns::Fragment);
                        }
                        next = rest[0];
                        rest = rest.get(8..)?;
                    }
                    n => return l4(n, rest),
                }
            }
        }
        _ => None,
    }
}

fn frame(link: u32, f: &[u8]) -> Option<Dns> {
    match link {
        1 => {
            let mut et = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
            let mut i = 14;
            while et == 0x8100 || et == 0x88a8 {
                et = u16::from_be_bytes([*f.get(i + 2)?, *f.get(i + 3)?]);
                i += 4;
            }
            matches!(et, 0x0800 | 0x86dd).then(|| ip(&f[i..])).flatten()
        }
        101 => ip(f),
        0 => ip(f.get(4..)?),
        113 => ip(f.get(16..)?),
        276 => ip(f.get(20..)?),
        other => panic!("link type {other} not handled"),
    }
}

#[derive(Default, Debug)]
struct Seen {
    queries: usize,
    responses: usize,
    rejected: Vec<String>,
    fragments: usize,
    partial_tcp: usize,
    /// matched name -> addresses
    names: BTreeMap<String, BTreeSet<IpAddr>>,
    /// matched names whose answers had no addresses
    empty: BTreeSet<String>,
}

fn matcher() -> Matcher {
    Matcher::from_patterns([
        ("static.programme-tv.net", 1),
        ("*.akamai.net", 2),
        ("google.com", 3),
        ("www.google.com", 4),
        ("www.cmu.edu", 5),
        ("cloudflare.com", 6),
        ("atlas.ripe.net", 7),
        ("ns1.weberdns.de", 8),
    ])
}

fn inspect(msg: &[u8], m: &Matcher, seen: &mut Seen) {
    if msg.len() >= 3 && msg[2] & 0x80 == 0 {
        seen.queries += 1;
        if let Err(e) = wire::parse_query(msg) {
            seen.rejected.push(format!("query: {e}"));
        }
        return;
    }
    seen.responses += 1;
    // Pair the answer with the query it echoes, as the proxy does with its own.
    let Ok(m0) = Message::from_vec(msg) else {
        seen.rejected.push("response: undecodable".into());
        return;
    };
    let Some(q0) = m0.queries.first() else {
        seen.rejected.push("response: no question".into());
        return;
    };
    let q = ParsedQuery {
        id: m0.metadata.id,
        name: q0.name().clone(),
        key: wire::name_key(q0.name()),
        qtype: q0.query_type(),
        qclass: q0.query_class(),
        msg: m0.clone(),
    };
    match wire::parse_response(msg, q.id, &q) {
        Ok(r) => {
            for mt in matched_names(m, &q.name, &r.msg.answers) {
                if mt.addrs.is_empty() {
                    seen.empty.insert(mt.name.clone());
                }
                seen.names
                    .entry(mt.name)
                    .or_default()
                    .extend(mt.addrs.iter().map(|a| a.0));
            }
            let mut bytes = msg.to_vec();
            assert!(
                wire::cap_answer_ttls(&mut bytes, 60).is_some(),
                "a decoded answer walks"
            );
            let capped = Message::from_vec(&bytes).expect("still decodes after the TTL cap");
            assert!(capped.answers.iter().all(|a| a.ttl <= 60));
        }
        Err(e) => seen.rejected.push(format!("response: {e}")),
    }
}

fn run(file: &str) -> Seen {
    let (link, frames) = read_pcap(&pcap_dir().join(file));
    let m = matcher();
    let mut seen = Seen::default();
    for f in frames {
        match frame(link, &f) {
            Some(Dns::Udp(p)) => inspect(&p, &m, &mut seen),
            Some(Dns::Tcp(p)) if !p.is_empty() => {
                let mut rest = &p[..];
                while rest.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if rest.len() < 2 + n {
                        seen.partial_tcp += 1;
                        break;
                    }
                    inspect(&rest[2..2 + n], &m, &mut seen);
                    rest = &rest[2 + n..];
                }
            }
            Some(Dns::Fragment) => seen.fragments += 1,
            _ => {}
        }
    }
    seen
}

fn addrs(s: &[&str]) -> BTreeSet<IpAddr> {
    s.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn every_dns_capture_parses_without_panic() {
    let mut files: Vec<String> = std::fs::read_dir(pcap_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            (n.starts_with("sv_dns-") || n.starts_with("zeek_dns-")) && n.ends_with(".pcap")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    for f in &files {
        let s = run(f);
        assert!(s.responses > 0, "{f}: no DNS responses found ({s:?})");
        assert!(s.rejected.is_empty(), "{f}: rejected {:?}", s.rejected);
    }
}

#[test]
fn cname_chain_to_akamai() {
    let s = run("sv_dns-cname-chain-akamai.pcap");
    let want = addrs(&["90.84.55.48", "90.84.55.64"]);
    assert_eq!(s.names["static.programme-tv.net"], want);
    assert_eq!(
        s.names["a1859.g.akamai.net"], want,
        "the chain end matches *.akamai.net"
    );
    assert_eq!(s.responses, 2);
}

#[test]
fn google_a_aaaa_mx_over_udp() {
    let s = run("sv_dns-udp-google.com-a-aaaa-mx.pcap");
    let g = &s.names["google.com"];
    assert_eq!(g.iter().filter(|a| a.is_ipv4()).count(), 12, "{g:?}");
    assert_eq!(g.iter().filter(|a| a.is_ipv6()).count(), 1, "{g:?}");
    assert!(g.contains(&"216.197.242.244".parse().unwrap()));
    assert!(
        s.empty.contains("google.com"),
        "the MX answer holds no address"
    );
    assert_eq!(s.responses, 3);
    assert_eq!(s.queries, 3);
}

#[test]
fn google_over_tcp() {
    let s = run("sv_dns-tcp-www-google-com.pcap");
    let g = &s.names["www.google.com"];
    assert_eq!(g.len(), 12, "{g:?}");
    assert!(g.contains(&"216.197.242.224".parse().unwrap()));
    assert_eq!(s.responses, 1);
}

#[test]
fn duplicate_response_with_rrsig() {
    let s = run("zeek_dns-two-responses.pcap");
    assert_eq!(s.names["www.cmu.edu"], addrs(&["128.2.10.163"]));
    assert_eq!(s.responses, 2);
}

#[test]
fn https_record_has_no_addresses() {
    let s = run("zeek_dns-https.pcap");
    assert!(s.empty.contains("cloudflare.com"), "{s:?}");
    assert!(s.names["cloudflare.com"].is_empty());
}

#[test]
fn mixed_edns_traffic_with_fragments() {
    let s = run("zeek_dns-edns-ecs.pcap");
    assert_eq!(
        s.names["atlas.ripe.net"],
        addrs(&["193.0.6.158"]),
        "via CNAME atlas-ui"
    );
    assert!(s.names["ns1.weberdns.de"].contains(&"80.154.108.230".parse().unwrap()));
    assert_eq!(s.fragments, 8, "IPv4 fragments are not reassembled here");
    assert!(s.responses >= 50, "{}", s.responses);
}
