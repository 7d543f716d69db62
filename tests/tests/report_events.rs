//! Denied-flow events and the top-denied table through BPF_PROG_TEST_RUN: a dropped
//! packet produces exactly one event with its fields, an allowed one none; audit
//! mode reports would-drops as audit; the in-kernel rate limit counts what it
//! suppresses; the top-denied table counts drops per remote address and port, every
//! drop once, also when keys take each other's per-CPU slot.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use aya::{
    TestRunResult,
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use tagwall::{
    dataplane::Settings,
    reports::{
        events::{Event, decode},
        maps::{EventCounters, key_addr, observe_loaded, read_table},
    },
    rules::{Direction, Proto, Rule},
};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, DIR_EGRESS, DIR_INGRESS},
    names,
    reports::{REPORT_F_EVENTS, REPORT_F_SLOTS, REPORT_F_TOP, ReportConfig},
    verdict::{REASON_ALLOWED, REASON_MALFORMED, REASON_NO_MATCH, REASON_PORT},
};
use tagwall_tests::{
    harness::{
        Harness, Prog, TC_ACT_SHOT, XDP_DROP, XDP_PASS, pin_to_first_allowed_cpu, udp_top_slot,
    },
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

/// Packets per remote address: as the reports see them (slots and table), and in
/// the table alone.
fn top_counts(h: &Harness) -> (BTreeMap<IpAddr, u64>, BTreeMap<IpAddr, u64>) {
    let seen = observe_loaded(&h.dp).expect("observe");
    assert_eq!(seen.top_torn, 0);
    let reported = seen.top.iter().map(|t| (t.remote, t.packets)).collect();
    let table = read_table(h.dp.map(names::MAP_TOP_DENIED).expect("table"))
        .expect("read the table")
        .into_iter()
        .map(|(k, v)| (key_addr(&k.addr, false), v.iter().map(|x| x.packets).sum()))
        .collect();
    (reported, table)
}

/// The remote address of the slot tests' first key (drops to port 5300).
const SLOT_KEY_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);

/// Addresses in 198.18.0.0/16 whose keys (drops to port 5300) are, or are not
/// (`same` false), in the slot of [`SLOT_KEY_A`]'s key.
fn in_a_slot(same: bool) -> impl Iterator<Item = Ipv4Addr> {
    let slot = udp_top_slot(SLOT_KEY_A, 5300);
    (1..=u32::from(u16::MAX))
        .map(|i| Ipv4Addr::from(0xc612_0000 + i))
        .filter(move |x| (udp_top_slot(*x, 5300) == slot) == same)
}

/// Remote addresses of drops to port 5300: `a`, `b` whose key shares `a`'s slot,
/// and `c` whose key does not.
fn slot_keys() -> (Ipv4Addr, Ipv4Addr, Ipv4Addr) {
    let b = in_a_slot(true)
        .next()
        .expect("an address whose key shares a's slot");
    let c = in_a_slot(false).next().expect("an address in another slot");
    (SLOT_KEY_A, b, c)
}

/// A UDP packet from 10.0.0.2 to `to` port 5300, which the rules drop.
fn drop_frame(to: Ipv4Addr) -> Vec<u8> {
    ip_frame("10.0.0.2", &to.to_string(), 17, &udp(40001, 5300, b"x"))
}

/// Send `n` UDP drops from 10.0.0.2 to `to` port 5300.
fn send(h: &mut Harness, to: Ipv4Addr, n: u64) {
    let frame = drop_frame(to);
    for _ in 0..n {
        assert_eq!(h.run(&frame).reason, REASON_NO_MATCH);
    }
}

fn counts(pairs: &[(Ipv4Addr, u64)]) -> BTreeMap<IpAddr, u64> {
    pairs.iter().map(|(a, n)| (IpAddr::V4(*a), *n)).collect()
}

/// A repeated drop is counted in its key's per-CPU slot; when another key's drop
/// takes the slot, the slot's drops move into the table first. Every drop is
/// reported once whichever of the two holds it.
#[test]
fn keys_sharing_a_slot_move_into_the_table_and_count_once() {
    // One CPU: the slots are per CPU, and which drops moved depends on it.
    pin_to_first_allowed_cpu();
    let mut h = top_harness(REPORT_F_SLOTS);
    let (a, b, c) = slot_keys();
    send(&mut h, a, 3);
    let (reported, table) = top_counts(&h);
    assert_eq!(reported, counts(&[(a, 3)]));
    assert_eq!(table, counts(&[]), "a repeated drop stays in its slot");

    send(&mut h, b, 2);
    let (reported, table) = top_counts(&h);
    assert_eq!(reported, counts(&[(a, 3), (b, 2)]));
    assert_eq!(table, counts(&[(a, 3)]), "b took a's slot: a's drops moved");

    send(&mut h, a, 4);
    send(&mut h, c, 5);
    let (reported, table) = top_counts(&h);
    assert_eq!(reported, counts(&[(a, 7), (b, 2), (c, 5)]));
    assert_eq!(table, counts(&[(a, 3), (b, 2)]), "c has a slot of its own");

    send(&mut h, b, 1);
    let (reported, table) = top_counts(&h);
    assert_eq!(reported, counts(&[(a, 7), (b, 3), (c, 5)]));
    assert_eq!(table, counts(&[(a, 7), (b, 2)]));
    let top = observe_loaded(&h.dp).expect("observe").top;
    let ta = top.iter().find(|t| t.remote == IpAddr::V4(a)).unwrap();
    assert!(ta.first_seen_ns > 0 && ta.first_seen_ns <= ta.last_seen_ns);
    assert_eq!(ta.local, ip("10.0.0.2"));
}

/// Drops per test run in [`reads_during_slot_moves`]: a batch is one run's drops.
const MAX_RUN: u32 = 4;

/// Reports read while drops of three keys that share a slot keep taking it from
/// each other on another CPU: no read counts a drop that had not begun when it
/// ended, so none twice; each counts every drop finished before it began but a
/// batch that was moving from the slot into the table (at most one run's drops);
/// and the last read counts all. `run` sends a frame `repeat` times through one
/// program and returns its verdict. Returns the reads, and those that dipped.
fn reads_during_slot_moves(
    h: &Harness,
    rounds: u32,
    drop: u32,
    run: &(dyn Fn(&[u8], u32) -> u32 + Sync),
) -> (u32, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let mut keys = vec![SLOT_KEY_A];
    keys.extend(in_a_slot(true).take(2));
    assert_eq!(keys.len(), 3);
    let frames: Vec<Vec<u8>> = keys.iter().map(|to| drop_frame(*to)).collect();
    let started: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let done: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
    let finished = AtomicBool::new(false);
    let load =
        |v: &[AtomicU64]| -> Vec<u64> { v.iter().map(|x| x.load(Ordering::SeqCst)).collect() };
    let reported = |h: &Harness| -> (Vec<u64>, u64) {
        let seen = observe_loaded(&h.dp).expect("observe");
        let n = keys
            .iter()
            .map(|k| {
                seen.top
                    .iter()
                    .find(|t| t.remote == IpAddr::V4(*k))
                    .map_or(0, |t| t.packets)
            })
            .collect();
        (n, seen.top_torn)
    };
    let (reads, dips) = std::thread::scope(|s| {
        s.spawn(|| {
            // The sender's runs on one CPU: its batches are that CPU's slot's.
            pin_to_first_allowed_cpu();
            for round in 0..rounds {
                let k = (round % 3) as usize;
                let n = 1 + round % MAX_RUN;
                started[k].fetch_add(u64::from(n), Ordering::SeqCst);
                assert_eq!(run(&frames[k], n), drop);
                done[k].fetch_add(u64::from(n), Ordering::SeqCst);
            }
            finished.store(true, Ordering::SeqCst);
        });
        let (mut reads, mut dips) = (0u32, 0u64);
        while !finished.load(Ordering::SeqCst) {
            let lo = load(&done);
            let (got, torn) = reported(h);
            let hi = load(&started);
            for i in 0..keys.len() {
                assert!(
                    got[i] <= hi[i],
                    "key {i}: {got:?} counted more than the {hi:?} sent"
                );
                if torn == 0 {
                    assert!(
                        got[i] + u64::from(MAX_RUN) >= lo[i],
                        "key {i}: {got:?} missed more than a batch of {lo:?}"
                    );
                    dips += u64::from(got[i] < lo[i]);
                }
            }
            reads += 1;
        }
        (reads, dips)
    });
    assert!(reads > 0, "no report was read during the drops");
    let (got, torn) = reported(h);
    assert_eq!(torn, 0);
    assert_eq!(got, load(&done), "the last read counts every drop");
    (reads, dips)
}

/// One BPF_PROG_TEST_RUN of `frame`, `repeat` times: the program's verdict.
fn run_repeated<P>(prog: &P, frame: &[u8], repeat: u32) -> u32
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    })
    .expect("BPF_PROG_TEST_RUN")
    .return_value
}

/// A harness that reports drops in the top-denied table, with `flags` besides
/// `REPORT_F_TOP`.
fn top_harness(flags: u32) -> Harness {
    let mut h = Harness::with(rules(), &Settings::stateless(false));
    h.dp.set_report_config(ReportConfig::new(REPORT_F_TOP | flags, 1, 1, cpus()))
        .expect("report config");
    h
}

/// [`reads_during_slot_moves`] through the XDP program. Each XDP test run of more
/// than one repeat swaps the XDP dispatcher and waits for an RCU grace period
/// (about 15 ms), so this one sends few rounds; the wait lines the program's runs
/// up with the ends of the reader's map reads, which is where an earlier design
/// (slots read before the table) counted drops twice.
#[test]
fn xdp_reports_read_during_slot_moves_count_every_drop_at_most_once() {
    let h = top_harness(REPORT_F_SLOTS);
    let prog: &Xdp = h.dp.program_shared(names::PROG_XDP);
    let run = |frame: &[u8], repeat: u32| run_repeated(prog, frame, repeat);
    let (reads, dips) = reads_during_slot_moves(&h, 2_000, XDP_DROP, &run);
    eprintln!("{reads} reads, {dips} dipped");
}

/// [`reads_during_slot_moves`] through the TC egress program, whose test runs do
/// not wait: many more rounds.
#[test]
fn tc_reports_read_during_slot_moves_count_every_drop_at_most_once() {
    let h = top_harness(REPORT_F_SLOTS);
    let prog: &SchedClassifier = h.dp.program_shared(names::PROG_TC_EGRESS);
    let run = |frame: &[u8], repeat: u32| run_repeated(prog, frame, repeat);
    let (reads, dips) = reads_during_slot_moves(&h, 200_000, TC_ACT_SHOT, &run);
    eprintln!("{reads} reads, {dips} dipped");
}

/// Without `REPORT_F_SLOTS` (a CPU that does not keep the slots' store order) each
/// drop goes to the table itself, and a batch the slots held before they were
/// turned off is still reported, once.
#[test]
fn without_slots_each_drop_goes_to_the_table() {
    pin_to_first_allowed_cpu();
    let mut h = top_harness(REPORT_F_SLOTS);
    let (a, b, c) = slot_keys();
    send(&mut h, a, 3);
    assert_eq!(top_counts(&h), (counts(&[(a, 3)]), counts(&[])));
    h.dp.set_report_config(ReportConfig::new(REPORT_F_TOP, 1, 1, cpus()))
        .expect("report config");
    send(&mut h, a, 2);
    send(&mut h, b, 4);
    send(&mut h, c, 1);
    let (reported, table) = top_counts(&h);
    assert_eq!(reported, counts(&[(a, 5), (b, 4), (c, 1)]));
    assert_eq!(
        table,
        counts(&[(a, 2), (b, 4), (c, 1)]),
        "a's batch stays in its slot"
    );
    let top = observe_loaded(&h.dp).expect("observe").top;
    let tb = top.iter().find(|t| t.remote == IpAddr::V4(b)).unwrap();
    assert!(tb.first_seen_ns > 0 && tb.first_seen_ns <= tb.last_seen_ns);
    assert_eq!(tb.local, ip("10.0.0.2"));
}

/// [`reads_during_slot_moves`] without the slots: every finished drop is in the
/// table, so no read dips.
#[test]
fn tc_reports_read_without_slots_count_every_finished_drop() {
    let h = top_harness(0);
    let prog: &SchedClassifier = h.dp.program_shared(names::PROG_TC_EGRESS);
    let run = |frame: &[u8], repeat: u32| run_repeated(prog, frame, repeat);
    let (reads, dips) = reads_during_slot_moves(&h, 50_000, TC_ACT_SHOT, &run);
    assert_eq!(dips, 0, "{reads} reads");
}
