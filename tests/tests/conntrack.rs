//! Connection tracking, inbound and local rules, gateway direction and host mode,
//! through the real programs with BPF_PROG_TEST_RUN: sequences of frames whose
//! verdicts depend on the frames before them.

use std::time::Duration;

use tagwall::{
    dataplane::Settings,
    rules::{Direction, PortRange, Proto, Rule},
};
use tagwall_common::{
    counters::{ACTION_DROP, ACTION_PASS, DIR_EGRESS, DIR_INGRESS},
    ct::CtTimeouts,
    verdict::{REASON_ALLOWED, REASON_ESTABLISHED, REASON_NO_MATCH, REASON_PORT, reason_name},
};
use tagwall_tests::{
    harness::{Harness, Observed, Prog, pin_to_first_allowed_cpu},
    pkt::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, echo_msg, ip_frame, tcp_flags, udp},
};

const SYN: u8 = TCP_SYN;
const ACK: u8 = TCP_ACK;
const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
const RST: u8 = TCP_RST;
const FIN_ACK: u8 = TCP_FIN | TCP_ACK;

fn rule(id: u32, name: &str, dir: Direction, nets: &[&str], proto: Proto, ports: &[&str]) -> Rule {
    Rule {
        id,
        name: name.into(),
        direction: dir,
        prefixes: nets.iter().map(|n| n.parse().unwrap()).collect(),
        proto,
        ports: ports
            .iter()
            .map(|p| p.parse::<PortRange>().unwrap())
            .collect(),
        origin: "test".into(),
    }
}

const SSH: u32 = 1;
const WEB: u32 = 2;
const DNS: u32 = 3;
const AML_IN: u32 = 4;
const PING: u32 = 5;
const WEB6: u32 = 6;

fn rules() -> Vec<Rule> {
    vec![
        rule(
            SSH,
            "mgmt:ssh",
            Direction::Local,
            &["10.0.0.1/32"],
            Proto::TCP,
            &["22"],
        ),
        rule(
            WEB,
            "web",
            Direction::Outbound,
            &["203.0.113.0/24"],
            Proto::TCP,
            &["443"],
        ),
        rule(
            DNS,
            "dns",
            Direction::Outbound,
            &["198.51.100.53/32"],
            Proto::UDP,
            &["53"],
        ),
        // The seeds' inbound requirement: AzureMachineLearning -> compute, TCP 44224.
        rule(
            AML_IN,
            "aml-in",
            Direction::Inbound,
            &["20.0.0.0/16"],
            Proto::TCP,
            &["44224"],
        ),
        rule(
            PING,
            "ping",
            Direction::Outbound,
            &["192.0.2.0/24"],
            Proto::ICMP,
            &["any"],
        ),
        rule(
            WEB6,
            "web6",
            Direction::Outbound,
            &["2001:db8:1::/48"],
            Proto::TCP,
            &["443"],
        ),
    ]
}

fn settings(internal: &[&str], timeouts: CtTimeouts) -> Settings {
    Settings {
        audit: false,
        internal: internal.iter().map(|n| n.parse().unwrap()).collect(),
        conntrack: Some(timeouts),
        gateway_own: true,
        fast_forward: Vec::new(),
    }
}

fn gateway() -> Settings {
    gateway_with(CtTimeouts::default())
}

/// The gateway's settings with other tracking timeouts (or flow cache refresh).
fn gateway_with(timeouts: CtTimeouts) -> Settings {
    settings(&["10.0.0.0/8", "fd00::/8"], timeouts)
}

/// Default timeouts, flow cache off (`cache_refresh_ms = 0`): every tracked packet
/// takes the table path, and every packet of no flow meets the presence filter.
fn uncached() -> CtTimeouts {
    CtTimeouts {
        cache_refresh_ms: 0,
        ..CtTimeouts::default()
    }
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    ip_frame(src, dst, 6, &tcp_flags(sport, dport, flags))
}

fn udp_f(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    ip_frame(src, dst, 17, &udp(sport, dport, b"q"))
}

fn ping(src: &str, dst: &str, request: bool, id: u16) -> Vec<u8> {
    ip_frame(src, dst, 1, &echo_msg(false, request, id))
}

/// Open a TCP flow from `client` to `server:443`: the SYN allowed by `rule`, the
/// SYN-ACK back established (`label` prefixes the packets' names).
#[track_caller]
fn handshake(h: &mut Harness, prog: Prog, label: &str, ends: (&str, &str), sport: u16, rule: u32) {
    handshake_on(h, (prog, prog), label, ends, sport, rule);
}

/// As [`handshake`], the SYN through `progs.0` and the SYN-ACK through `progs.1`
/// (host mode: egress and ingress).
#[track_caller]
fn handshake_on(
    h: &mut Harness,
    progs: (Prog, Prog),
    label: &str,
    (client, server): (&str, &str),
    sport: u16,
    rule: u32,
) {
    let syn = tcp(client, sport, server, 443, SYN);
    expect(
        h,
        progs.0,
        &format!("{label}SYN"),
        &syn,
        REASON_ALLOWED,
        rule,
        DIR_EGRESS,
    );
    let syn_ack = tcp(server, 443, client, sport, SYN_ACK);
    let what = format!("{label}SYN-ACK");
    expect(
        h,
        progs.1,
        &what,
        &syn_ack,
        REASON_ESTABLISHED,
        rule,
        DIR_INGRESS,
    );
}

/// Run `f` and check reason, rule, pass/drop and direction.
#[track_caller]
fn expect(
    h: &mut Harness,
    prog: Prog,
    what: &str,
    f: &[u8],
    reason: u8,
    rule: u32,
    dir: u8,
) -> Observed {
    // The harness's rules only: reading every rule's counters takes long enough to
    // age flow cache entries between packets.
    let before = h.snapshot();
    let got = h.run_on(prog, f);
    let after = h.snapshot();
    assert_eq!(
        (reason_name(got.reason), got.rule_id),
        (reason_name(reason), rule),
        "{what}"
    );
    let want_slot = if reason >= tagwall_common::verdict::FIRST_DROP {
        ACTION_DROP
    } else {
        ACTION_PASS
    };
    assert_eq!(got.action_slot, want_slot, "{what}: action");
    assert_eq!(
        after.reason(dir, reason).packets,
        before.reason(dir, reason).packets + 1,
        "{what}: counted in direction {dir}"
    );
    got
}

/// An established `WEB` flow's packet out (`progs.0`, egress) and its reply back
/// (`progs.1`, ingress), each counted in its direction.
#[track_caller]
fn acks_both_ways(h: &mut Harness, progs: (Prog, Prog), frames: (&[u8], &[u8]), what: &str) {
    let out = format!("ACK out{what}");
    expect(
        h,
        progs.0,
        &out,
        frames.0,
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    let back = format!("ACK back{what}");
    expect(
        h,
        progs.1,
        &back,
        frames.1,
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
}

fn ct_stat(h: &Harness, name: &str) -> u64 {
    let c = h.dp.counters_for([]).unwrap();
    let i = tagwall::dataplane::CT_STAT_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap();
    c.conntrack[i]
}

#[test]
fn gateway_return_traffic_passes_and_unsolicited_inbound_is_dropped() {
    let mut h = Harness::with(rules(), &gateway());
    let x = Prog::Xdp;
    // Outbound TCP opens a flow; the reply and the rest of the handshake ride on it.
    handshake(&mut h, x, "", ("10.0.0.2", "203.0.113.10"), 40000, WEB);
    expect(
        &mut h,
        x,
        "client ACK",
        &tcp("10.0.0.2", 40000, "203.0.113.10", 443, ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    // Unsolicited inbound: another port of the same client, and a SYN from outside.
    expect(
        &mut h,
        x,
        "unsolicited SYN-ACK",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40001, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "unsolicited SYN",
        &tcp("198.51.100.7", 5000, "10.0.0.2", 80, SYN),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    // The same server address is not a source that inbound rules open.
    expect(
        &mut h,
        x,
        "server-initiated SYN",
        &tcp("203.0.113.10", 443, "10.0.0.2", 22, SYN),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    // Inbound rule: AzureMachineLearning (20.0/16) -> compute TCP 44224, and its reply.
    expect(
        &mut h,
        x,
        "AML inbound SYN",
        &tcp("20.0.5.5", 5555, "10.0.0.7", 44224, SYN),
        REASON_ALLOWED,
        AML_IN,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "compute reply",
        &tcp("10.0.0.7", 44224, "20.0.5.5", 5555, SYN_ACK),
        REASON_ESTABLISHED,
        AML_IN,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "AML inbound, wrong port",
        &tcp("20.0.5.5", 5556, "10.0.0.7", 44225, SYN),
        REASON_PORT,
        0,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "other source to 44224",
        &tcp("20.1.0.1", 5557, "10.0.0.7", 44224, SYN),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    // Inbound rules open the internal prefixes only, not transit to elsewhere.
    expect(
        &mut h,
        x,
        "AML source to a non-internal address",
        &tcp("20.0.5.5", 5558, "203.0.113.99", 44224, SYN),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    // Local (management) rules match the destination in both directions.
    expect(
        &mut h,
        x,
        "SSH to the gateway from outside",
        &tcp("198.51.100.7", 6000, "10.0.0.1", 22, SYN),
        REASON_ALLOWED,
        SSH,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "SSH to the gateway from inside",
        &tcp("10.0.0.9", 6001, "10.0.0.1", 22, SYN),
        REASON_ALLOWED,
        SSH,
        DIR_EGRESS,
    );

    // UDP: the reply from the server's port passes, from another port it does not.
    expect(
        &mut h,
        x,
        "DNS query",
        &udp_f("10.0.0.2", 5353, "198.51.100.53", 53),
        REASON_ALLOWED,
        DNS,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "DNS answer",
        &udp_f("198.51.100.53", 53, "10.0.0.2", 5353),
        REASON_ESTABLISHED,
        DNS,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "UDP from another port",
        &udp_f("198.51.100.53", 54, "10.0.0.2", 5353),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    // ICMP echo: the reply with the request's identifier passes; others do not.
    expect(
        &mut h,
        x,
        "echo request",
        &ping("10.0.0.2", "192.0.2.5", true, 7),
        REASON_ALLOWED,
        PING,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "echo reply",
        &ping("192.0.2.5", "10.0.0.2", false, 7),
        REASON_ESTABLISHED,
        PING,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "unsolicited echo reply",
        &ping("192.0.2.5", "10.0.0.2", false, 8),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    // IPv6 the same way.
    handshake(&mut h, x, "v6 ", ("fd00::2", "2001:db8:1::5"), 40000, WEB6);
    expect(
        &mut h,
        x,
        "v6 unsolicited",
        &tcp("2001:db8:1::5", 443, "fd00::2", 40001, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    let flows = h.dp.flows().unwrap();
    // web, AML inbound, SSH x2, DNS, ping, web6.
    assert_eq!(flows.len(), 7, "seven flows opened: {flows:?}");
    assert_eq!(ct_stat(&h, "new"), 7);
    // SYN-ACK, ACK, compute reply, DNS answer, echo reply, v6 SYN-ACK.
    assert_eq!(ct_stat(&h, "hit"), 6);
}

#[test]
fn closed_and_idle_flows_end() {
    let t = CtTimeouts {
        tcp_closed: 1,
        udp_unreplied: 1,
        ..CtTimeouts::default()
    };
    let mut h = Harness::with(rules(), &settings(&["10.0.0.0/8"], t));
    let x = Prog::Xdp;
    handshake(&mut h, x, "", ("10.0.0.2", "203.0.113.10"), 40010, WEB);
    expect(
        &mut h,
        x,
        "RST",
        &tcp("10.0.0.2", 40010, "203.0.113.10", 443, RST),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(ct_stat(&h, "closed"), 1);
    // A late packet within the closed timeout still passes; after it, the flow is gone.
    expect(
        &mut h,
        x,
        "late ACK",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40010, ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
    std::thread::sleep(Duration::from_millis(1300));
    expect(
        &mut h,
        x,
        "after the closed timeout",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40010, ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    assert_eq!(ct_stat(&h, "expired"), 1);

    // FIN from both sides closes too.
    handshake(
        &mut h,
        x,
        "second ",
        ("10.0.0.2", "203.0.113.10"),
        40011,
        WEB,
    );
    expect(
        &mut h,
        x,
        "FIN client",
        &tcp("10.0.0.2", 40011, "203.0.113.10", 443, FIN_ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "FIN server",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40011, FIN_ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
    assert_eq!(ct_stat(&h, "closed"), 2);

    // An unanswered UDP flow times out.
    expect(
        &mut h,
        x,
        "query",
        &udp_f("10.0.0.2", 5354, "198.51.100.53", 53),
        REASON_ALLOWED,
        DNS,
        DIR_EGRESS,
    );
    std::thread::sleep(Duration::from_millis(1300));
    expect(
        &mut h,
        x,
        "late answer",
        &udp_f("198.51.100.53", 53, "10.0.0.2", 5354),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
}

#[test]
fn a_reload_ends_the_flows_its_new_policy_denies() {
    let mut h = Harness::with(rules(), &gateway());
    let x = Prog::Xdp;
    expect(
        &mut h,
        x,
        "web SYN",
        &tcp("10.0.0.2", 40020, "203.0.113.10", 443, SYN),
        REASON_ALLOWED,
        WEB,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "dns query",
        &udp_f("10.0.0.2", 5355, "198.51.100.53", 53),
        REASON_ALLOWED,
        DNS,
        DIR_EGRESS,
    );
    // New policy without the web rule.
    let without_web: Vec<Rule> = rules().into_iter().filter(|r| r.id != WEB).collect();
    h.reapply_with(without_web, &gateway());
    expect(
        &mut h,
        x,
        "web reply after the reload",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40020, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "web from the client after the reload",
        &tcp("10.0.0.2", 40020, "203.0.113.10", 443, ACK),
        REASON_NO_MATCH,
        0,
        DIR_EGRESS,
    );
    assert_eq!(ct_stat(&h, "revoked"), 1);
    // The DNS flow is still allowed: checked again once, then carried on.
    expect(
        &mut h,
        x,
        "dns answer after the reload",
        &udp_f("198.51.100.53", 53, "10.0.0.2", 5355),
        REASON_ESTABLISHED,
        DNS,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "dns again",
        &udp_f("10.0.0.2", 5355, "198.51.100.53", 53),
        REASON_ESTABLISHED,
        DNS,
        DIR_EGRESS,
    );
    assert_eq!(ct_stat(&h, "revalidated"), 1);
}

/// The state of the one flow with an endpoint on `port`, if there is one.
fn flow_on_port(h: &Harness, port: u16) -> Option<&'static str> {
    let flows: Vec<_> =
        h.dp.flows()
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.port_a == port || k.port_b == port)
            .collect();
    assert!(flows.len() <= 1, "one flow on port {port}: {flows:?}");
    flows
        .first()
        .map(|(_, v)| tagwall_common::ct::state_name(v.state))
}

/// A connection attempt (a SYN without ACK) is judged by the rules first: one they
/// deny is dropped whatever the flow table holds for its key, and one they allow
/// continues a live flow of its key or replaces whatever else the key holds.
#[test]
fn a_connection_attempt_is_judged_by_the_rules_before_the_flow_table() {
    let t = CtTimeouts {
        tcp_closed: 1,
        ..CtTimeouts::default()
    };
    let gw = settings(&["10.0.0.0/8"], t);
    let mut h = Harness::with(rules(), &gw);
    let (c, s) = ("10.0.0.2", "203.0.113.10");
    // A packet of the client's (`out`) or the server's (`back`) end, its verdict and
    // rule (the web rule unless nothing matched).
    let send = |h: &mut Harness, what: &str, out: bool, flags: u8, reason: u8| {
        let rule = if reason == REASON_NO_MATCH { 0 } else { WEB };
        let (f, dir) = if out {
            (tcp(c, 40030, s, 443, flags), DIR_EGRESS)
        } else {
            (tcp(s, 443, c, 40030, flags), DIR_INGRESS)
        };
        expect(h, Prog::Xdp, what, &f, reason, rule, dir);
    };

    // A SYN from the responder's side of a live flow (the other half of a
    // simultaneous open) is an attempt of its own, which no inbound rule allows;
    // before the rules came first, the flow passed it and became established.
    send(&mut h, "SYN", true, SYN, REASON_ALLOWED);
    let hits = ct_stat(&h, "hit");
    send(
        &mut h,
        "SYN from the responder",
        false,
        SYN,
        REASON_NO_MATCH,
    );
    assert_eq!(
        ct_stat(&h, "hit"),
        hits,
        "the flow did not see the denied SYN"
    );
    assert_eq!(flow_on_port(&h, 40030), Some("syn_sent"));
    // With every presence-filter slot stamped (each one looks the table up), the
    // same: the denied attempt never gets there.
    tagwall_tests::harness::stamp_ct_filter(&h.dp, u64::MAX).unwrap();
    let what = "SYN from the responder, filter slots taken";
    send(&mut h, what, false, SYN, REASON_NO_MATCH);
    assert_eq!(ct_stat(&h, "hit"), hits);
    // The flow carries on: the SYN-ACK and a retransmitted SYN from the initiator
    // (allowed, a live flow of its key) pass as established.
    send(&mut h, "SYN-ACK", false, SYN_ACK, REASON_ESTABLISHED);
    send(&mut h, "SYN again", true, SYN, REASON_ESTABLISHED);
    assert_eq!(flow_on_port(&h, 40030), Some("established"));
    tagwall_tests::harness::stamp_ct_filter(&h.dp, 0).unwrap();

    // Closed: an attempt on the same ports opens a new flow (within the closed
    // timeout), and after it an attempt replaces the expired entry.
    send(&mut h, "RST", true, RST, REASON_ESTABLISHED);
    assert_eq!(flow_on_port(&h, 40030), Some("closed"));
    let new = ct_stat(&h, "new");
    send(&mut h, "SYN reusing the ports", true, SYN, REASON_ALLOWED);
    assert_eq!(flow_on_port(&h, 40030), Some("syn_sent"));
    assert_eq!(ct_stat(&h, "new"), new + 1);
    send(&mut h, "RST again", true, RST, REASON_ESTABLISHED);
    std::thread::sleep(Duration::from_millis(1300));
    let expired = ct_stat(&h, "expired");
    send(
        &mut h,
        "SYN after the closed timeout",
        true,
        SYN,
        REASON_ALLOWED,
    );
    assert_eq!(ct_stat(&h, "expired"), expired + 1);
    assert_eq!(ct_stat(&h, "new"), new + 2);
    assert_eq!(flow_on_port(&h, 40030), Some("syn_sent"));

    // A flow of an older policy generation: a retransmitted SYN the new rules allow
    // opens the flow anew (not `revalidated`); one they deny is dropped and leaves
    // the old entry to its timeout, which no packet of it outlives (the next
    // packet of the flow revokes it).
    h.reapply_with(rules(), &gw);
    let revalidated = ct_stat(&h, "revalidated");
    send(&mut h, "SYN after a reload", true, SYN, REASON_ALLOWED);
    assert_eq!(ct_stat(&h, "new"), new + 3);
    assert_eq!(ct_stat(&h, "revalidated"), revalidated);
    let without_web: Vec<Rule> = rules().into_iter().filter(|r| r.id != WEB).collect();
    h.reapply_with(without_web, &gw);
    let what = "SYN after a reload without the rule";
    send(&mut h, what, true, SYN, REASON_NO_MATCH);
    assert_eq!(flow_on_port(&h, 40030), Some("syn_sent"));
    let revoked = ct_stat(&h, "revoked");
    send(
        &mut h,
        "the responder's SYN-ACK",
        false,
        SYN_ACK,
        REASON_NO_MATCH,
    );
    assert_eq!(ct_stat(&h, "revoked"), revoked + 1);
    assert_eq!(flow_on_port(&h, 40030), None);
}

/// The protocol is kept in the flow's value, not in its key (tagwall_common::ct): a
/// packet of another protocol between the same ends and ports is not of the flow,
/// and a flow the policy allows replaces another protocol's flow of the same key.
#[test]
fn a_flow_belongs_to_its_protocol() {
    const DNS_TCP: u32 = 7;
    let mut r = rules();
    r.push(rule(
        DNS_TCP,
        "dns-tcp",
        Direction::Outbound,
        &["198.51.100.53/32"],
        Proto::TCP,
        &["53"],
    ));
    let mut h = Harness::with(r, &gateway());
    let x = Prog::Xdp;
    let server = "198.51.100.53";
    expect(
        &mut h,
        x,
        "UDP query",
        &udp_f("10.0.0.2", 40050, server, 53),
        REASON_ALLOWED,
        DNS,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "TCP from the server on the UDP flow's ends and ports",
        &tcp(server, 53, "10.0.0.2", 40050, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "UDP answer",
        &udp_f(server, 53, "10.0.0.2", 40050),
        REASON_ESTABLISHED,
        DNS,
        DIR_INGRESS,
    );
    // TCP on the same ends and ports, allowed: its flow replaces the UDP one.
    expect(
        &mut h,
        x,
        "TCP SYN",
        &tcp("10.0.0.2", 40050, server, 53, SYN),
        REASON_ALLOWED,
        DNS_TCP,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "TCP SYN-ACK",
        &tcp(server, 53, "10.0.0.2", 40050, SYN_ACK),
        REASON_ESTABLISHED,
        DNS_TCP,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "UDP answer after the TCP flow replaced it",
        &udp_f(server, 53, "10.0.0.2", 40050),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    // IPv6: a UDP packet on a TCP flow's ends and ports.
    expect(
        &mut h,
        x,
        "v6 SYN",
        &tcp("fd00::2", 40051, "2001:db8:1::5", 443, SYN),
        REASON_ALLOWED,
        WEB6,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "v6 UDP on the TCP flow's ends and ports",
        &udp_f("2001:db8:1::5", 443, "fd00::2", 40051),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );

    // Listed from both tables with their protocol (the ends in the key's canonical
    // order, which is not numeric: sorted here); cleared from both.
    let addr = |a: &[u32; 4]| std::net::Ipv6Addr::from(tagwall_common::ct::CtKey::bytes(a));
    let mut listed: Vec<_> =
        h.dp.flows()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let mut ends = [addr(&k.addr_a).to_string(), addr(&k.addr_b).to_string()];
                ends.sort();
                assert_eq!(k.proto, v.proto);
                (ends, k.proto)
            })
            .collect();
    listed.sort();
    let ends = |a: &str, b: &str| [a.to_owned(), b.to_owned()];
    assert_eq!(
        listed,
        [
            (ends("2001:db8:1::5", "fd00::2"), 6),
            (ends("::ffff:10.0.0.2", "::ffff:198.51.100.53"), 6),
        ]
    );
    assert_eq!(h.dp.clear_flows().unwrap(), 2);
    assert!(h.dp.flows().unwrap().is_empty());
    expect(
        &mut h,
        x,
        "TCP SYN-ACK after the flows were cleared",
        &tcp(server, 53, "10.0.0.2", 40050, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
}

#[test]
fn without_internal_prefixes_every_packet_is_outbound_and_replies_still_pass() {
    let mut h = Harness::with(rules(), &settings(&[], CtTimeouts::default()));
    let x = Prog::Xdp;
    // The reply (SYN-ACK) is tracked, so it passes; its direction is the flow's
    // reverse.
    handshake(&mut h, x, "", ("10.0.0.2", "203.0.113.10"), 40030, WEB);
    // Unsolicited: judged as outbound to 10.0.0.2, which no rule covers.
    expect(
        &mut h,
        x,
        "unsolicited",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40031, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_EGRESS,
    );
}

#[test]
fn stateless_mode_judges_every_packet_alone() {
    let mut h = Harness::with(rules(), &Settings::stateless(false));
    let x = Prog::Xdp;
    expect(
        &mut h,
        x,
        "SYN",
        &tcp("10.0.0.2", 40040, "203.0.113.10", 443, SYN),
        REASON_ALLOWED,
        WEB,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "reply, not tracked",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40040, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_EGRESS,
    );
    assert!(h.dp.flows().unwrap().is_empty());
}

#[test]
fn host_mode_tc_programs_enforce_the_same_policy() {
    // Host mode: the hook gives the direction; internal prefixes play no part.
    let mut h = Harness::with(rules(), &settings(&[], CtTimeouts::default()));
    let (eg, ing) = (Prog::TcEgress, Prog::TcIngress);
    expect(
        &mut h,
        eg,
        "host SYN out",
        &tcp("10.0.0.2", 40050, "203.0.113.10", 443, SYN),
        REASON_ALLOWED,
        WEB,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        ing,
        "reply in",
        &tcp("203.0.113.10", 443, "10.0.0.2", 40050, SYN_ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        eg,
        "host out, denied port",
        &tcp("10.0.0.2", 40051, "203.0.113.10", 444, SYN),
        REASON_PORT,
        0,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        ing,
        "unsolicited in",
        &tcp("198.51.100.7", 5000, "10.0.0.2", 80, SYN),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        ing,
        "AML inbound",
        &tcp("20.0.5.5", 5555, "10.0.0.2", 44224, SYN),
        REASON_ALLOWED,
        AML_IN,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        eg,
        "host's reply to AML",
        &tcp("10.0.0.2", 44224, "20.0.5.5", 5555, SYN_ACK),
        REASON_ESTABLISHED,
        AML_IN,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        ing,
        "SSH to the host",
        &tcp("198.51.100.7", 6000, "10.0.0.1", 22, SYN),
        REASON_ALLOWED,
        SSH,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        ing,
        "v6 in, unsolicited",
        &tcp("2001:db8:1::5", 443, "fd00::2", 40052, SYN_ACK),
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
}

#[test]
fn the_gateways_own_traffic_is_allowed_and_its_replies_come_back() {
    let mut h = Harness::with(rules(), &gateway());
    // The gateway (10.0.0.1) queries its upstream DNS: no rule needed, tracked.
    expect(
        &mut h,
        Prog::TcLocal,
        "gateway's own query",
        &udp_f("10.0.0.1", 40000, "198.18.0.53", 53),
        REASON_ALLOWED,
        0,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        Prog::Xdp,
        "the answer",
        &udp_f("198.18.0.53", 53, "10.0.0.1", 40000),
        REASON_ESTABLISHED,
        0,
        DIR_INGRESS,
    );
    // SSH into the gateway (a local rule), and the gateway's reply on TC egress.
    expect(
        &mut h,
        Prog::Xdp,
        "SSH in",
        &tcp("198.51.100.7", 6000, "10.0.0.1", 22, SYN),
        REASON_ALLOWED,
        SSH,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        Prog::TcLocal,
        "SSH reply",
        &tcp("10.0.0.1", 22, "198.51.100.7", 6000, SYN_ACK),
        REASON_ESTABLISHED,
        SSH,
        DIR_EGRESS,
    );
    // With the allowance off, the gateway's own traffic is judged by the rules.
    let strict = Settings {
        gateway_own: false,
        ..gateway()
    };
    h.reapply_with(rules(), &strict);
    expect(
        &mut h,
        Prog::TcLocal,
        "own traffic, judged",
        &udp_f("10.0.0.1", 40001, "198.18.0.53", 53),
        REASON_NO_MATCH,
        0,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        Prog::TcLocal,
        "own traffic, allowed by a rule",
        &tcp("10.0.0.1", 40002, "203.0.113.10", 443, SYN),
        REASON_ALLOWED,
        WEB,
        DIR_EGRESS,
    );
}

/// The per-CPU flow cache (tagwall_common::ct, "Flow cache"): a flow's packets are
/// served from it once the table path has seen the flow live, in both directions and
/// with the flow's rule, but never a packet that changes the flow's state, never
/// after a reload, a `clear_flows`, or once the entry is older than the refresh time.
/// The refresh time is the longest allowed (1 s), so that a slow test machine does
/// not age entries between packets.
#[test]
fn the_flow_cache_serves_only_what_the_table_would_say() {
    pin_to_first_allowed_cpu();
    let refresh_ms = tagwall_common::ct::MAX_FLOW_CACHE_REFRESH_MS;
    let with_cache = gateway_with(CtTimeouts {
        cache_refresh_ms: refresh_ms,
        ..CtTimeouts::default()
    });
    let mut h = Harness::with(rules(), &with_cache);
    let x = Prog::Xdp;
    let (c, s) = ("10.0.0.2", "203.0.113.10");
    let out = |flags| tcp(c, 40060, s, 443, flags);
    let back = |flags| tcp(s, 443, c, 40060, flags);
    let cached = |h: &Harness| ct_stat(h, "cached");

    expect(&mut h, x, "SYN", &out(SYN), REASON_ALLOWED, WEB, DIR_EGRESS);
    // SYN_SENT: the table path caches the flow for the initiator's packets only.
    let n = cached(&h);
    expect(
        &mut h,
        x,
        "SYN again (table)",
        &out(SYN),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n, "the first repeat takes the table path");
    expect(
        &mut h,
        x,
        "SYN again (table again)",
        &out(SYN),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(
        cached(&h),
        n,
        "a SYN (a connection attempt) is never served from the cache"
    );
    // The initiator's other packets are (as after a SYN-ACK on another CPU), once
    // the table path cached the flow: an attempt's table visit does not fill the
    // cache.
    expect(
        &mut h,
        x,
        "ACK in SYN_SENT (table)",
        &out(ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n, "the first ACK takes the table path");
    expect(
        &mut h,
        x,
        "ACK in SYN_SENT (cache)",
        &out(ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(
        cached(&h),
        n + 1,
        "the initiator's ACK is served from the cache"
    );
    // The responder's first packet changes the state: the table's, not the cache's.
    expect(
        &mut h,
        x,
        "SYN-ACK",
        &back(SYN_ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
    assert_eq!(
        cached(&h),
        n + 1,
        "the SYN-ACK is not served from the cache"
    );
    let state = |h: &Harness| {
        let flows = h.dp.flows().unwrap();
        assert_eq!(flows.len(), 1);
        tagwall_common::ct::state_name(flows[0].1.state)
    };
    assert_eq!(state(&h), "established");
    // Established: both directions from the cache, each with its own direction.
    acks_both_ways(&mut h, (x, x), (&out(ACK), &back(ACK)), "");
    assert_eq!(
        cached(&h),
        n + 3,
        "established packets both ways from the cache"
    );
    let hits = ct_stat(&h, "hit");

    // Older than the refresh time: the table again (which refreshes its time).
    let before = h.dp.flows().unwrap()[0].1.last_seen_ns;
    std::thread::sleep(Duration::from_millis(u64::from(refresh_ms) * 2));
    expect(
        &mut h,
        x,
        "ACK after the refresh time",
        &out(ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 3, "a stale entry is not served");
    assert_eq!(ct_stat(&h, "hit"), hits + 1);
    assert!(
        h.dp.flows().unwrap()[0].1.last_seen_ns > before,
        "the table saw the packet"
    );
    expect(
        &mut h,
        x,
        "ACK, fresh again",
        &out(ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 4);

    // FIN changes the state: the table path, which sees it.
    expect(
        &mut h,
        x,
        "FIN",
        &out(FIN_ACK),
        REASON_ESTABLISHED,
        WEB,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 4, "a FIN is not served from the cache");
    assert_eq!(state(&h), "closing");
    // A closing flow is not cached any more.
    for i in 0..2 {
        let what = format!("ACK back {i}, closing");
        expect(
            &mut h,
            x,
            &what,
            &back(ACK),
            REASON_ESTABLISHED,
            WEB,
            DIR_INGRESS,
        );
    }
    assert_eq!(cached(&h), n + 4, "closing flows are not cached");

    // UDP: the answer changes UNREPLIED to REPLIED through the table; then cached.
    let (q, a) = (
        udp_f(c, 5356, "198.51.100.53", 53),
        udp_f("198.51.100.53", 53, c, 5356),
    );
    expect(&mut h, x, "query", &q, REASON_ALLOWED, DNS, DIR_EGRESS);
    expect(
        &mut h,
        x,
        "query again (table)",
        &q,
        REASON_ESTABLISHED,
        DNS,
        DIR_EGRESS,
    );
    expect(
        &mut h,
        x,
        "answer",
        &a,
        REASON_ESTABLISHED,
        DNS,
        DIR_INGRESS,
    );
    assert_eq!(
        cached(&h),
        n + 4,
        "the first answer is not served from the cache"
    );
    expect(
        &mut h,
        x,
        "answer again (cache)",
        &a,
        REASON_ESTABLISHED,
        DNS,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "query again (cache)",
        &q,
        REASON_ESTABLISHED,
        DNS,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 6);

    // IPv6, the same way (the SYN-ACK's table path caches the established flow).
    let (cl, sv) = ("fd00::2", "2001:db8:1::5");
    let ack6 = tcp(sv, 443, cl, 40061, ACK);
    let ack6_out = tcp(cl, 40061, sv, 443, ACK);
    handshake(&mut h, x, "v6 ", (cl, sv), 40061, WEB6);
    expect(
        &mut h,
        x,
        "v6 ACK back",
        &ack6,
        REASON_ESTABLISHED,
        WEB6,
        DIR_INGRESS,
    );
    expect(
        &mut h,
        x,
        "v6 ACK out",
        &ack6_out,
        REASON_ESTABLISHED,
        WEB6,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 8);
    // Another flow of the same hosts is not the cached one.
    let other = tcp(cl, 40062, sv, 443, ACK);
    expect(
        &mut h,
        x,
        "v6 other ports",
        &other,
        REASON_ALLOWED,
        WEB6,
        DIR_EGRESS,
    );
    // Nor are other hosts whose addresses differ from the cached ends in one word:
    // words 1 or 2 of either end (word 3, which picks the cache slot, is the same,
    // so these packets meet the cached flow's slot). Each is checked both ways,
    // the reply first, while no flow of these ends exists.
    let cached_before = cached(&h);
    for (client, server, allowed) in [
        ("fd00:0:1::2", sv, true),
        ("fd00::1:0:2", sv, true),
        (cl, "2001:db8:2::5", false),
        (cl, "2001:db8:1::1:0:5", true),
    ] {
        expect(
            &mut h,
            x,
            &format!("v6 {server} -> {client}, no flow"),
            &tcp(server, 443, client, 40061, ACK),
            REASON_NO_MATCH,
            0,
            DIR_INGRESS,
        );
        let (reason, rule) = if allowed {
            (REASON_ALLOWED, WEB6)
        } else {
            (REASON_NO_MATCH, 0)
        };
        expect(
            &mut h,
            x,
            &format!("v6 {client} -> {server}, a new flow"),
            &tcp(client, 40061, server, 443, ACK),
            reason,
            rule,
            DIR_EGRESS,
        );
    }
    assert_eq!(
        cached(&h),
        cached_before,
        "no packet of other ends was served from the cache"
    );

    // A reload: cached flows are checked again through the table, and the DNS flow
    // (its rule gone) is revoked, although its entry was fresh.
    let without_dns: Vec<Rule> = rules().into_iter().filter(|r| r.id != DNS).collect();
    h.reapply_with(without_dns, &with_cache);
    expect(
        &mut h,
        x,
        "answer after the reload",
        &a,
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    assert_eq!(ct_stat(&h, "revoked"), 1);
    expect(
        &mut h,
        x,
        "v6 ACK after the reload",
        &ack6_out,
        REASON_ESTABLISHED,
        WEB6,
        DIR_EGRESS,
    );
    assert_eq!(ct_stat(&h, "revalidated"), 1);
    assert_eq!(
        cached(&h),
        n + 8,
        "nothing served from the cache after the reload"
    );
    expect(
        &mut h,
        x,
        "v6 ACK back (cache)",
        &ack6,
        REASON_ESTABLISHED,
        WEB6,
        DIR_INGRESS,
    );
    assert_eq!(cached(&h), n + 9);

    // Cleared flows are gone from the caches too.
    h.dp.clear_flows().unwrap();
    expect(
        &mut h,
        x,
        "v6 ACK back after clear_flows",
        &ack6,
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    assert_eq!(cached(&h), n + 9);
}

/// `cache_refresh_ms = 0`: no packet is served from the flow cache.
/// Host mode serves a flow from the cache as the gateway does (stage 1 of the TC
/// programs, before the policy, for a TCP packet with ACK and without SYN, FIN or
/// RST): both hooks, each packet counted for its rule and direction.
#[test]
fn host_mode_serves_established_packets_from_the_flow_cache() {
    pin_to_first_allowed_cpu();
    let with_cache = settings(
        &[],
        CtTimeouts {
            cache_refresh_ms: tagwall_common::ct::MAX_FLOW_CACHE_REFRESH_MS,
            ..CtTimeouts::default()
        },
    );
    let mut h = Harness::with(rules(), &with_cache);
    let (eg, ing) = (Prog::TcEgress, Prog::TcIngress);
    let (c, s) = ("10.0.0.2", "203.0.113.10");
    let out = |flags| tcp(c, 40075, s, 443, flags);
    let back = |flags| tcp(s, 443, c, 40075, flags);
    let cached = |h: &Harness| ct_stat(h, "cached");
    handshake_on(&mut h, (eg, ing), "", (c, s), 40075, WEB);
    let n = cached(&h);
    for i in 0..2 {
        acks_both_ways(&mut h, (eg, ing), (&out(ACK), &back(ACK)), &format!(" {i}"));
    }
    assert_eq!(
        cached(&h),
        n + 4,
        "established packets both ways from the cache"
    );
    // An unrelated packet that meets no cached flow is still judged by the policy.
    expect(
        &mut h,
        eg,
        "ACK to a denied port",
        &tcp("10.0.0.2", 40071, "203.0.113.10", 444, ACK),
        REASON_PORT,
        0,
        DIR_EGRESS,
    );
    assert_eq!(cached(&h), n + 4);
}

#[test]
fn without_the_flow_cache_every_packet_takes_the_table_path() {
    pin_to_first_allowed_cpu();
    let off = gateway_with(uncached());
    let mut h = Harness::with(rules(), &off);
    let x = Prog::Xdp;
    let (c, s) = ("10.0.0.2", "203.0.113.10");
    handshake(&mut h, x, "", (c, s), 40070, WEB);
    for i in 0..4 {
        let what = format!("ACK {i}");
        let ack = tcp(c, 40070, s, 443, ACK);
        expect(&mut h, x, &what, &ack, REASON_ESTABLISHED, WEB, DIR_EGRESS);
    }
    assert_eq!(ct_stat(&h, "hit"), 5);
    assert_eq!(ct_stat(&h, "cached"), 0);
}

#[test]
fn a_packet_skips_the_table_only_where_the_presence_filter_has_passed() {
    pin_to_first_allowed_cpu();
    // Cache off: every packet reaches the filter check.
    let timeouts = uncached();
    let off = gateway_with(timeouts);
    let mut h = Harness::with(rules(), &off);
    let x = Prog::Xdp;
    for (c, s, rule) in [
        ("10.0.0.2", "203.0.113.10", WEB),
        ("fd00::2", "2001:db8:1::10", WEB6),
    ] {
        // The opening stamps the slot both directions share.
        handshake(&mut h, x, "", (c, s), 40080, rule);
    }
    // Stamps gone, flows still in the tables: the replies are judged without a
    // lookup, as packets of no flow (what the daemon must prevent for flows it
    // cannot vouch for).
    tagwall_tests::harness::stamp_ct_filter(&h.dp, 0).unwrap();
    let hits = ct_stat(&h, "hit");
    for (c, s) in [("10.0.0.2", "203.0.113.10"), ("fd00::2", "2001:db8:1::10")] {
        let reply = tcp(s, 443, c, 40080, ACK);
        expect(
            &mut h,
            x,
            "unstamped reply",
            &reply,
            REASON_NO_MATCH,
            0,
            DIR_INGRESS,
        );
    }
    assert_eq!(ct_stat(&h, "hit"), hits, "no lookup found the flows");
    assert_eq!(
        h.dp.flows().unwrap().len(),
        2,
        "the flows stay in the tables"
    );
    // A reload with the same timeouts trusts the filter on.
    h.reapply_with(rules(), &off);
    let reply = tcp("203.0.113.10", 443, "10.0.0.2", 40080, ACK);
    expect(
        &mut h,
        x,
        "same timeouts",
        &reply,
        REASON_NO_MATCH,
        0,
        DIR_INGRESS,
    );
    // A reload that raises a timeout: flows may outlive their stamps, so every
    // packet looks the tables up until the longest timeout has passed.
    let longer = gateway_with(CtTimeouts {
        tcp_established: timeouts.tcp_established + 1,
        ..timeouts
    });
    h.reapply_with(rules(), &longer);
    for (c, s, rule) in [
        ("10.0.0.2", "203.0.113.10", WEB),
        ("fd00::2", "2001:db8:1::10", WEB6),
    ] {
        let reply = tcp(s, 443, c, 40080, ACK);
        expect(
            &mut h,
            x,
            "after the raise",
            &reply,
            REASON_ESTABLISHED,
            rule,
            DIR_INGRESS,
        );
    }
}

/// A restart that finds the flow tables pinned but not their presence filter (pins
/// of a tagwall without one, or a filter pin removed by hand) must not hide the
/// pinned flows behind the new, empty filter: their replies still pass.
#[test]
fn flows_adopted_without_their_filter_are_still_found() {
    use tagwall::dataplane::LoadOptions;
    use tagwall_common::names;

    pin_to_first_allowed_cpu();
    let fs = tagwall_tests::netns::Bpffs::new();
    let pins = fs.path.join("tw");
    let opts = LoadOptions {
        pin_dir: Some(pins.clone()),
        ..LoadOptions::default()
    };
    let off = gateway_with(uncached());
    let x = Prog::Xdp;
    let (c, s) = ("10.0.0.2", "203.0.113.10");
    let mut h = Harness::with_load(rules(), &off, &opts);
    expect(
        &mut h,
        x,
        "SYN",
        &tcp(c, 40090, s, 443, SYN),
        REASON_ALLOWED,
        WEB,
        DIR_EGRESS,
    );
    drop(h);
    // Same pins again: the filter comes along, the reply passes.
    let mut h = Harness::with_load(rules(), &off, &opts);
    let back = tcp(s, 443, c, 40090, SYN_ACK);
    expect(
        &mut h,
        x,
        "SYN-ACK",
        &back,
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
    drop(h);
    std::fs::remove_file(pins.join(names::MAP_CT_FILTER)).expect("unpin CT_FILTER");
    let mut h = Harness::with_load(rules(), &off, &opts);
    assert!(
        pins.join(names::MAP_CT_FILTER).exists(),
        "a new filter is pinned"
    );
    let ack = tcp(s, 443, c, 40090, ACK);
    expect(
        &mut h,
        x,
        "reply after",
        &ack,
        REASON_ESTABLISHED,
        WEB,
        DIR_INGRESS,
    );
}
