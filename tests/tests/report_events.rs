//! Denied-flow events and the top-denied table through BPF_PROG_TEST_RUN: a dropped
//! packet produces exactly one event with its fields, an allowed one none; audit
//! mode reports would-drops as audit; the in-kernel rate limit counts what it
//! suppresses; the top-denied table counts drops per remote address and port.

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use tagwall::{
    dataplane::Settings,
    reports::{
        events::{Event, decode},
        maps::{EventCounters, observe_loaded},
    },
    rules::{Direction, Proto, Rule},
};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, DIR_EGRESS, DIR_INGRESS},
    reports::{REPORT_F_EVENTS, REPORT_F_TOP, ReportConfig},
    verdict::{REASON_ALLOWED, REASON_MALFORMED, REASON_NO_MATCH, REASON_PORT},
};
use tagwall_tests::{
    harness::{Harness, Prog, XDP_DROP, XDP_PASS},
    pkt::*,
};

fn rule(id: u32, name: &str, dir: Direction, net: &str, proto: Proto, port: &str) -> Rule {
    Rule {
        id,
        name: name.into(),
        direction: dir,
        prefixes: vec![net.parse().unwrap()],
        proto,
        ports: vec![port.parse().unwrap()],
        origin: "test".into(),
    }
}

fn rules() -> Vec<Rule> {
    vec![
        rule(
            1,
            "web",
            Direction::Outbound,
            "203.0.113.0/24",
            Proto::TCP,
            "443",
        ),
        rule(
            2,
            "in",
            Direction::Inbound,
            "198.51.100.0/24",
            Proto::TCP,
            "22",
        ),
        rule(
            3,
            "v6",
            Direction::Outbound,
            "2001:db8:1::/48",
            Proto::TCP,
            "443",
        ),
    ]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cpus() -> u32 {
    u32::try_from(aya::util::nr_cpus().expect("nr_cpus")).unwrap()
}

/// A datapath with events and top-denied on, and its ring.
fn harness(settings: &Settings, rate: u32, burst: u32) -> (Harness, RingBuf<MapData>) {
    let mut h = Harness::with(rules(), settings);
    h.dp.set_report_config(ReportConfig::new(
        REPORT_F_EVENTS | REPORT_F_TOP,
        rate,
        burst,
        cpus(),
    ))
    .expect("report config");
    let ring = h.dp.take_events().expect("event ring");
    (h, ring)
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(decode(&item).expect("an event-sized record"));
    }
    out
}

fn events(h: &Harness) -> EventCounters {
    observe_loaded(&h.dp).expect("observe").events
}

#[test]
fn a_drop_makes_exactly_one_event_and_an_allowed_packet_none() {
    let (mut h, mut ring) = harness(&Settings::stateless(false), 1_000_000, 1_000_000);
    let allowed = ip_frame("10.0.0.2", "203.0.113.5", 6, &tcp(40000, 443));
    let o = h.run(&allowed);
    assert_eq!((o.action, o.reason), (XDP_PASS, REASON_ALLOWED));
    assert!(
        drain(&mut ring).is_empty(),
        "an allowed packet has no event"
    );

    let denied = ip_frame("10.0.0.2", "192.0.2.9", 17, &udp(40001, 5300, b"hello"));
    let o = h.run(&denied);
    assert_eq!((o.action, o.reason), (XDP_DROP, REASON_NO_MATCH));
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = &ev[0];
    assert_eq!(e.src, ip("10.0.0.2"));
    assert_eq!(e.dst, ip("192.0.2.9"));
    assert_eq!((e.sport, e.dport, e.proto), (40001, 5300, 17));
    assert_eq!((e.dir, e.reason), (DIR_EGRESS, REASON_NO_MATCH));
    assert_eq!(u32::from(e.action), ACTION_DROP);
    assert_eq!(e.len as usize, denied.len());
    let now = tagwall::reports::time::monotonic_ns();
    assert!(
        e.time_ns <= now && now - e.time_ns < 10_000_000_000,
        "{e:?}"
    );

    // Covered address, wrong port; IPv6.
    let port = ip_frame("10.0.0.2", "203.0.113.5", 6, &tcp(40002, 444));
    assert_eq!(h.run(&port).reason, REASON_PORT);
    let v6 = ip_frame("fd00::2", "2001:db8:9::1", 6, &tcp(40003, 443));
    assert_eq!(h.run(&v6).reason, REASON_NO_MATCH);
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        (ev[0].reason, ev[0].dport, ev[0].proto),
        (REASON_PORT, 444, 6)
    );
    assert_eq!((ev[1].src, ev[1].dst), (ip("fd00::2"), ip("2001:db8:9::1")));

    // Stage-1 drops (unparsable headers) have no 5-tuple and no event.
    let mut bad = ip_frame("10.0.0.2", "192.0.2.9", 6, &tcp(1, 2));
    bad.truncate(ETH_HDR + IPV4_HDR + 10);
    assert_eq!(h.run(&bad).reason, REASON_MALFORMED);
    assert!(drain(&mut ring).is_empty());

    // Every drop stage 2 judged is accounted for exactly once.
    let c = events(&h);
    assert_eq!(c.emitted.packets, 3);
    assert_eq!(c.covered(), 3);

    // The top-denied table: one entry per remote address, port, protocol and direction.
    for _ in 0..4 {
        assert_eq!(h.run(&denied).reason, REASON_NO_MATCH);
    }
    let top = observe_loaded(&h.dp).expect("observe").top;
    assert_eq!(top.len(), 3, "{top:?}");
    assert_eq!(top[0].remote, ip("192.0.2.9"));
    assert_eq!((top[0].port, top[0].proto, top[0].packets), (5300, 17, 5));
    assert_eq!(top[0].bytes, 5 * denied.len() as u64);
    assert_eq!(top[0].local, ip("10.0.0.2"));
    assert!(top[0].first_seen_ns <= top[0].last_seen_ns && top[0].first_seen_ns > 0);
    assert!(
        top.iter()
            .any(|t| t.remote == ip("2001:db8:9::1") && t.port == 443)
    );
    assert_eq!(drain(&mut ring).len(), 4);
}

#[test]
fn audit_mode_reports_would_drops_as_audit_and_inbound_by_source() {
    let mut s = Settings::stateless(true);
    s.internal = vec!["10.0.0.0/8".parse().unwrap()];
    let (mut h, mut ring) = harness(&s, 1_000_000, 1_000_000);
    let denied = ip_frame("10.0.0.2", "192.0.2.9", 6, &tcp(40000, 80));
    let o = h.run(&denied);
    assert_eq!((o.action, o.reason), (XDP_PASS, REASON_NO_MATCH));
    // Inbound from an address no inbound rule names: keyed by its source.
    let inbound = ip_frame("192.0.2.50", "10.0.0.2", 6, &tcp(50000, 22));
    assert_eq!(h.run(&inbound).reason, REASON_NO_MATCH);
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|e| u32::from(e.action) == ACTION_AUDIT_PASS));
    assert_eq!((ev[1].dir, ev[1].remote()), (DIR_INGRESS, ip("192.0.2.50")));
    let top = observe_loaded(&h.dp).unwrap().top;
    let t = top
        .iter()
        .find(|t| t.dir == DIR_INGRESS)
        .expect("inbound entry");
    assert_eq!(
        (t.remote, t.port, t.local),
        (ip("192.0.2.50"), 22, ip("10.0.0.2"))
    );
}

#[test]
fn tc_programs_report_too() {
    let (mut h, mut ring) = harness(&Settings::stateless(false), 1_000_000, 1_000_000);
    let denied = ip_frame("10.0.0.2", "192.0.2.9", 17, &udp(1000, 53, b"q"));
    assert_eq!(h.run_on(Prog::TcEgress, &denied).reason, REASON_NO_MATCH);
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].dir, ev[0].dport), (DIR_EGRESS, 53));
}

#[test]
fn the_rate_limit_counts_what_it_suppresses() {
    // One event per second per CPU, burst one: of a quick run of drops at most one
    // per CPU becomes an event, every other one is counted as rate-limited.
    let n = cpus();
    let (mut h, mut ring) = harness(&Settings::stateless(false), n, 1);
    let denied = ip_frame("10.0.0.2", "192.0.2.9", 17, &udp(40001, 5300, b"x"));
    let sent = 50u64;
    for _ in 0..sent {
        assert_eq!(h.run(&denied).reason, REASON_NO_MATCH);
    }
    let c = events(&h);
    let got = drain(&mut ring).len() as u64;
    assert_eq!(c.emitted.packets, got);
    assert!(
        got >= 1 && got <= u64::from(n),
        "{got} events from {n} CPUs"
    );
    assert_eq!(c.emitted.packets + c.rate_limited.packets, sent, "{c:?}");
    assert_eq!(c.ring_full.packets, 0);
    // The top-denied table is not rate limited.
    assert_eq!(observe_loaded(&h.dp).unwrap().top[0].packets, sent);
}

#[test]
fn events_off_means_no_events_and_no_counts() {
    let mut h = Harness::with(rules(), &Settings::stateless(false));
    let mut ring = h.dp.take_events().unwrap();
    // Never configured (all zero): nothing.
    let denied = ip_frame("10.0.0.2", "192.0.2.9", 17, &udp(1, 2, b""));
    h.run(&denied);
    assert!(drain(&mut ring).is_empty());
    assert_eq!(events(&h).covered(), 0);
    assert!(observe_loaded(&h.dp).unwrap().top.is_empty());
    // Top only: counted in the table, no event.
    h.dp.set_report_config(ReportConfig::new(REPORT_F_TOP, 100, 100, cpus()))
        .unwrap();
    h.run(&denied);
    assert!(drain(&mut ring).is_empty());
    assert_eq!(events(&h).covered(), 0);
    assert_eq!(observe_loaded(&h.dp).unwrap().top[0].packets, 1);
}
