//! FQDN enforcement end to end: dnsmasq serving test zones in an "upstream"
//! namespace, tagwall's DNS service (proxy or resolver) in a gateway namespace with a
//! recording sink in place of the datapath, and real clients (`dig`, and sockets for
//! exact timing) in a client namespace. Root only; everything is removed on drop.
//!
//! Nothing here asserts a duration from above: waits poll with generous deadlines,
//! and the only time comparisons are lower bounds the table guarantees (an address is
//! never revoked before its TTL, staleness and grace have run out) and causal order
//! (allow returned before the client got the answer).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tagwall::dns::{
    AddressSink, DnsConfig, DnsMode, RecordingSink, SinkEvent, SinkOp, Unmatched, wire,
};
use tagwall_tests::{dnslab::*, netns::wait_for};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn rules_of(sink: &RecordingSink, a: &str) -> Option<BTreeSet<u32>> {
    sink.allowed().get(&ip(a)).cloned()
}

fn events(sink: &RecordingSink, op: SinkOp, a: &str) -> Vec<SinkEvent> {
    sink.events()
        .into_iter()
        .filter(|e| e.ok && e.op == op && e.addr == ip(a))
        .collect()
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn proxy_allows_matching_answers_before_they_leave() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let mut cfg = proxy_config();
    cfg.max_ttl = 120;
    let dns = lab.start_dns(cfg, seed_rules(), sink.clone(), None);

    // An exact name: allowed for its rule, TTL capped at max_ttl in the answer.
    let d = lab.ask("pypi.org", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.addrs(), [ip("10.99.0.1")]);
    assert!(
        d.answers.iter().all(|a| a.1 <= 120),
        "TTL not capped: {}",
        d.raw
    );
    assert_eq!(rules_of(&sink, "10.99.0.1"), Some(BTreeSet::from([1])));

    // Over IPv6 to the proxy, from a socket: the allow returned before the answer
    // arrived, and the client's message id came back.
    let q = wire::build_query(0x4242, "pypi.org.", RecordType::AAAA, true);
    let (got_at, resp) = udp_query(&lab.client, None, sa(GW6, 53), q, Duration::from_secs(5))
        .expect("an answer over IPv6");
    let m = Message::from_vec(&resp).expect("answer decodes");
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let allow = sink
        .first(SinkOp::Allow, ip("fd99::1"))
        .expect("fd99::1 allowed");
    assert!(
        allow.at < got_at,
        "allow must return before the answer is sent"
    );
    assert_eq!(allow.rule_ids, [1]);

    // A wildcard name behind a two-link CNAME chain: the chain end's address is
    // allowed for the wildcard's rule.
    let d = lab.ask("conda.anaconda.org", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.addrs(), [ip("10.99.0.5")]);
    assert_eq!(
        d.answers.iter().filter(|a| a.2 == "CNAME").count(),
        2,
        "{}",
        d.raw
    );
    assert_eq!(rules_of(&sink, "10.99.0.5"), Some(BTreeSet::from([3])));

    // The query name matches nothing, its CNAME target does.
    let d = lab.ask("alias.example", "A", &[]);
    assert_eq!(d.addrs(), [ip("10.99.0.3")], "{}", d.raw);
    assert_eq!(rules_of(&sink, "10.99.0.3"), Some(BTreeSet::from([4])));

    // One label under a wildcard matches; the wildcard's apex does not.
    let d = lab.ask("foo.blob.core.windows.net", "A", &[]);
    assert_eq!(d.addrs(), [ip("10.99.0.4")]);
    assert_eq!(rules_of(&sink, "10.99.0.4"), Some(BTreeSet::from([5])));
    let d = lab.ask("blob.core.windows.net", "A", &[]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.addrs(), [ip("10.99.0.9")]);
    assert_eq!(
        rules_of(&sink, "10.99.0.9"),
        None,
        "apex must not match *.blob..."
    );

    // Unmatched names are answered untouched (unmatched = "answer"), nothing allowed.
    let d = lab.ask("other.example", "A", &[]);
    assert_eq!(d.addrs(), [ip("10.99.0.7")]);
    assert_eq!(
        d.answers[0].1, 300,
        "unmatched answers keep their TTL: {}",
        d.raw
    );
    assert_eq!(rules_of(&sink, "10.99.0.7"), None);

    // Nothing else was ever allowed, and explain's view agrees.
    let allowed: BTreeSet<IpAddr> = sink.allowed().into_keys().collect();
    let want: BTreeSet<IpAddr> = [
        "10.99.0.1",
        "fd99::1",
        "10.99.0.5",
        "10.99.0.3",
        "10.99.0.4",
    ]
    .iter()
    .map(|a| ip(a))
    .collect();
    assert_eq!(allowed, want);
    assert_eq!(
        dns.handle.who(&ip("10.99.0.5")),
        [("conda.anaconda.org".to_owned(), 3)]
    );
    assert_eq!(
        dns.handle.who(&ip("10.99.0.3")),
        [("graph.windows.net".to_owned(), 4)]
    );
    assert!(dns.handle.who(&ip("10.99.0.7")).is_empty());
    let st = dns.handle.stats();
    assert_eq!(st.matched, 5, "{st:?}");
    assert_eq!(st.unmatched, 2, "{st:?}");
    assert_eq!(st.answered, 7, "{st:?}");
    assert_eq!(st.servfail + st.malformed + st.upstream_errors, 0, "{st:?}");
    let state = dns.handle.state();
    let pypi = state
        .names
        .iter()
        .find(|n| n.name == "pypi.org")
        .expect("pypi.org");
    assert_eq!(pypi.hits, 2);
    assert_eq!(pypi.addresses.len(), 2);
}

/// A sink whose `allow` blocks until the test opens the gate.
struct GateSink {
    inner: RecordingSink,
    open: Mutex<bool>,
    cv: Condvar,
    entered: AtomicUsize,
}

impl GateSink {
    fn open(&self) {
        *self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.cv.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test cannot leave the proxy blocked in
/// `allow` (its guard joins the proxy thread on drop).
struct OpenOnDrop(Arc<GateSink>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl AddressSink for GateSink {
    fn allow(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().expect("gate lock");
        while !*open {
            open = self.cv.wait(open).expect("gate wait");
        }
        self.inner.allow(addr, rule_ids)
    }

    fn revoke(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        self.inner.revoke(addr, rule_ids)
    }
}

#[test]
fn no_answer_leaves_while_the_datapath_is_being_programmed() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(GateSink {
        inner: RecordingSink::new(),
        open: Mutex::new(false),
        cv: Condvar::new(),
        entered: AtomicUsize::new(0),
    });
    let _dns = lab.start_dns(proxy_config(), seed_rules(), sink.clone(), None);
    let _gate = OpenOnDrop(sink.clone());
    let got: Mutex<Option<(Instant, Vec<u8>)>> = Mutex::new(None);
    let released_at = std::thread::scope(|s| {
        s.spawn(|| {
            let q = wire::build_query(7, "files.pythonhosted.org.", RecordType::A, false);
            let r = udp_query(&lab.client, None, sa(GW, 53), q, Duration::from_secs(20));
            *got.lock().expect("lock") = r;
        });
        wait_for(LONG, || {
            (sink.entered.load(Ordering::SeqCst) > 0).then_some(())
        })
        .expect("the proxy called allow");
        // The proxy is inside allow(): no answer may reach the client meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            got.lock().expect("lock").is_none(),
            "answer sent before allow returned"
        );
        let released_at = Instant::now();
        sink.open();
        released_at
    });
    let (at, resp) = got
        .into_inner()
        .expect("lock")
        .expect("an answer after the gate opened");
    assert!(at > released_at);
    let m = Message::from_vec(&resp).expect("decodes");
    assert_eq!(m.metadata.id, 7);
    assert_eq!(m.answers.len(), 1);
    let allow = sink
        .inner
        .first(SinkOp::Allow, ip("10.99.0.2"))
        .expect("allowed");
    assert!(allow.at < at);
}

#[test]
fn refusals_non_clients_and_sink_failures() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let mut cfg = proxy_config();
    cfg.unmatched = Unmatched::Refuse;
    let dns = lab.start_dns(cfg, seed_rules(), sink.clone(), None);

    assert_eq!(lab.ask("pypi.org", "A", &[]).status, "NOERROR");
    // unmatched = "refuse": not forwarded at all.
    for name in [
        "other.example",
        "blob.core.windows.net",
        "7.0.99.10.in-addr.arpa",
    ] {
        let d = lab.ask(name, "A", &[]);
        assert_eq!(d.status, "REFUSED", "{name}: {}", d.raw);
        assert!(d.answers.is_empty());
    }
    assert!(
        !lab.dnsmasq_log().contains("other.example"),
        "refused names must not reach the upstream"
    );
    // A source outside `clients` (same interface, other address): REFUSED, and it
    // allows nothing.
    let before = sink.events().len();
    let d = lab.dig(&[&format!("@{GW}"), "-b", OUTSIDER, "graph.windows.net", "A"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    assert_eq!(sink.events().len(), before);
    assert_eq!(rules_of(&sink, "10.99.0.3"), None);
    // Other classes and zone transfers are not served.
    let d = lab.dig(&[&format!("@{GW}"), "version.bind", "TXT", "CH"]);
    assert_eq!(d.status, "REFUSED", "{}", d.raw);
    let axfr = wire::build_query(9, "pypi.org.", RecordType::AXFR, false);
    let r = tcp_query(&lab.client, sa(GW, 53), axfr, Duration::from_secs(5)).expect("answer");
    let m = Message::from_vec(&r).expect("decodes");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.metadata.id, 9);

    // The datapath refuses: the client gets SERVFAIL, not an address it cannot reach.
    sink.set_failing(true);
    let d = lab.ask("files.pythonhosted.org", "A", &[]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    sink.set_failing(false);
    let d = lab.ask("files.pythonhosted.org", "A", &[]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(rules_of(&sink, "10.99.0.2"), Some(BTreeSet::from([2])));

    let st = dns.handle.stats();
    assert_eq!(st.refused_unmatched, 3, "{st:?}");
    assert_eq!(st.refused_client, 1, "{st:?}");
    assert_eq!(st.refused_other, 2, "{st:?}");
    assert_eq!(st.servfail, 1, "{st:?}");
    assert!(st.sink_errors >= 1, "{st:?}");
}

#[test]
fn tcp_and_truncated_answers() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let dns = lab.start_dns(proxy_config(), seed_rules(), sink.clone(), None);

    let d = lab.ask("pypi.org", "A", &["+tcp"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.addrs(), [ip("10.99.0.1")]);
    assert_eq!(rules_of(&sink, "10.99.0.1"), Some(BTreeSet::from([1])));

    // 60 A records do not fit 512 bytes: the upstream sets TC, the client sees TC.
    let d = lab.ask("big.example", "A", &["+noedns", "+ignore"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.has_flag("tc"), "TC must pass through: {}", d.raw);
    // dig retries over TCP on TC, through the proxy, and gets all of them.
    let d = lab.ask("big.example", "A", &["+noedns"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(!d.has_flag("tc"));
    assert_eq!(d.addrs().len(), 60, "{}", d.raw);
    for i in 1..=60 {
        assert_eq!(
            rules_of(&sink, &format!("10.98.0.{i}")),
            Some(BTreeSet::from([6])),
            "10.98.0.{i}"
        );
    }
    let st = dns.handle.stats();
    assert!(st.truncated >= 1, "{st:?}");
    assert!(st.tcp_queries >= 2, "{st:?}");
}

#[test]
fn upstream_down_keeps_the_last_good_answer_until_max_stale() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(5, &[]);
    let sink = Arc::new(RecordingSink::new());
    let mut cfg = proxy_config();
    cfg.min_ttl = 5;
    cfg.max_ttl = 5;
    cfg.grace = 1;
    cfg.max_stale = 5;
    // The first upstream does not exist (queries to it time out): every query fails
    // over to dnsmasq.
    cfg.upstreams = vec![sa("10.53.0.99", 53), sa(UPSTREAM, 53)];
    cfg.upstream_timeout_ms = 500;
    let dns = lab.start_dns(cfg, seed_rules(), sink.clone(), None);

    assert_eq!(lab.ask("pypi.org", "A", &[]).addrs(), [ip("10.99.0.1")]);
    assert!(
        dns.handle.stats().upstream_timeouts >= 1,
        "the dead upstream was tried first"
    );
    assert_eq!(
        lab.ask("graph.windows.net", "A", &[]).addrs(),
        [ip("10.99.0.3")]
    );
    lab.stop_dnsmasq();
    // The refresh fails while the answer is still within its TTL: SERVFAIL, and the
    // name turns stale (its last good answer is kept).
    let d = lab.ask("pypi.org", "A", &[]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    let state = dns.handle.state();
    let pypi = state
        .names
        .iter()
        .find(|n| n.name == "pypi.org")
        .expect("pypi.org");
    assert!(pypi.stale, "{pypi:?}");
    // dnsmasq's host answers "port unreachable" (the dead one timed out before it).
    assert!(
        pypi.last_error.as_deref().unwrap_or("").contains("refused"),
        "{pypi:?}"
    );
    let graph = state
        .names
        .iter()
        .find(|n| n.name == "graph.windows.net")
        .expect("graph");
    assert!(!graph.stale);

    let revoked = |a: &str| events(&sink, SinkOp::Revoke, a).first().cloned();
    let rg = wait_for(LONG, || revoked("10.99.0.3")).expect("graph.windows.net revoked");
    let rp = wait_for(LONG, || revoked("10.99.0.1")).expect("pypi.org revoked");
    let ag = events(&sink, SinkOp::Allow, "10.99.0.3")
        .last()
        .cloned()
        .expect("allowed");
    let ap = events(&sink, SinkOp::Allow, "10.99.0.1")
        .last()
        .cloned()
        .expect("allowed");
    // Never earlier than TTL (+ staleness) + grace after the answer.
    let slack = Duration::from_millis(50);
    assert!(
        rg.at - ag.at + slack >= Duration::from_secs(5 + 1),
        "{:?}",
        rg.at - ag.at
    );
    assert!(
        rp.at - ap.at + slack >= Duration::from_secs(5 + 5 + 1),
        "{:?}",
        rp.at - ap.at
    );
    assert!(
        rg.at < rp.at,
        "the fresh name goes first, the stale one is kept"
    );
    assert_eq!(rp.rule_ids, [1]);
    assert!(sink.allowed().is_empty(), "{:?}", sink.allowed());
    let st = dns.handle.stats();
    assert!(st.upstream_errors > st.upstream_timeouts, "{st:?}");
    assert!(st.sink_revokes >= 2, "{st:?}");
}

#[test]
fn malformed_queries_get_formerr_or_nothing_and_service_goes_on() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let dns = lab.start_dns(proxy_config(), seed_rules(), sink.clone(), None);
    let good = wire::build_query(0x1111, "pypi.org.", RecordType::A, false);
    let header = |id: u16, qd: u16| {
        let mut h = vec![0u8; 12];
        h[..2].copy_from_slice(&id.to_be_bytes());
        h[2] = 0x01;
        h[4..6].copy_from_slice(&qd.to_be_bytes());
        h
    };
    let mut loop_ = header(0x2222, 1);
    loop_.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    let mut forward_ptr = header(0x2323, 1);
    forward_ptr.extend_from_slice(&[0xc0, 0x20, 0x00, 0x01, 0x00, 0x01]);
    let mut two = good.clone();
    two[..2].copy_from_slice(&0x3333u16.to_be_bytes());
    two[5] = 2;
    let mut resp = good.clone();
    resp[2] |= 0x80;
    let mut trailing = good.clone();
    trailing[..2].copy_from_slice(&0x4444u16.to_be_bytes());
    trailing.extend_from_slice(&[0xde, 0xad]);
    let mut long_label = header(0x5555, 1);
    long_label.push(64);
    long_label.extend_from_slice(&[b'a'; 64]);
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    // (what, bytes, expected: Some(id) = FORMERR with that id, None = no answer)
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("runt", vec![1, 2, 3, 4, 5], None),
        (
            "header promising a question",
            header(0x6666, 1),
            Some(0x6666),
        ),
        ("compression loop", loop_, Some(0x2222)),
        ("forward compression pointer", forward_ptr, Some(0x2323)),
        ("two questions", two, Some(0x3333)),
        ("a response", resp, None),
        ("trailing bytes", trailing, Some(0x4444)),
        ("64-byte label", long_label, Some(0x5555)),
    ];
    let n_cases = cases.len();
    for (what, bytes, want) in cases {
        let r = udp_query(
            &lab.client,
            None,
            sa(GW, 53),
            bytes,
            Duration::from_millis(700),
        );
        match (want, r) {
            (None, None) => {}
            (Some(id), Some((_, r))) => {
                assert!(r.len() >= 12, "{what}: {r:?}");
                assert_eq!(u16::from_be_bytes([r[0], r[1]]), id, "{what}");
                assert_eq!(r[2] & 0x80, 0x80, "{what}: QR");
                assert_eq!(
                    r[3] & 0x0f,
                    1,
                    "{what}: FORMERR expected, got rcode {}",
                    r[3] & 0x0f
                );
            }
            (w, r) => panic!("{what}: expected {w:?}, got {r:?}"),
        }
    }
    // A few thousand random and mutated datagrams, fire and forget.
    lab.client.run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let mut rng = StdRng::seed_from_u64(53);
        let good = wire::build_query(1, "graph.windows.net.", RecordType::A, true);
        for i in 0..3000 {
            let b: Vec<u8> = if i % 2 == 0 {
                (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            } else {
                let mut b = good.clone();
                let j = rng.random_range(0..b.len());
                b[j] = rng.random();
                b.truncate(rng.random_range(12..=b.len()));
                b
            };
            let _ = s.send_to(&b, sa(GW, 53));
        }
    });
    // Garbage over TCP: FORMERR or the connection closes; nothing else.
    let junk = header(0x7777, 1);
    if let Some(r) = tcp_query(&lab.client, sa(GW, 53), junk, Duration::from_secs(3)) {
        assert_eq!(r[3] & 0x0f, 1, "{r:?}");
    }
    // Still serving, over both transports.
    let d = lab.ask("pypi.org", "A", &[]);
    assert_eq!(d.addrs(), [ip("10.99.0.1")], "{}", d.raw);
    let r = tcp_query(&lab.client, sa(GW, 53), good, Duration::from_secs(5)).expect("TCP answer");
    assert_eq!(Message::from_vec(&r).expect("decodes").answers.len(), 1);
    let st = dns.handle.stats();
    assert!(st.malformed >= n_cases as u64, "{st:?}");
    // Mutations may produce valid queries for odd names: whatever was allowed came
    // from the zone.
    for a in sink.allowed().keys() {
        assert!(
            a.to_string().starts_with("10.99.") || a.to_string().starts_with("fd99:"),
            "{a}"
        );
    }
}

#[test]
fn rate_limit_per_client() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let mut cfg = proxy_config();
    cfg.rate_limit_qps = 5;
    let dns = lab.start_dns(cfg, seed_rules(), sink, None);
    let answers = lab.client.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for i in 0..100u16 {
            let q = wire::build_query(i, "other.example.", RecordType::A, false);
            s.send_to(&q, sa(GW, 53)).expect("send");
        }
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 1500];
        let mut n = 0;
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let st = dns.handle.stats();
    assert!(answers >= 1, "the burst allowance is answered");
    assert!(answers < 100, "{answers} answers: the limit did not apply");
    assert!(st.rate_limited >= 1, "{st:?}");
    assert_eq!(st.rate_limited + st.queries, 100, "{st:?}");
}

#[test]
fn resolver_mode_resolves_refreshes_and_keeps_last_good() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(2, &[]);
    let sink = Arc::new(RecordingSink::new());
    let mut cfg = DnsConfig::default();
    cfg.mode = DnsMode::Resolver;
    cfg.upstreams = vec![sa(UPSTREAM, 53)];
    cfg.upstream_timeout_ms = 500;
    cfg.min_ttl = 2;
    cfg.max_ttl = 2;
    cfg.grace = 2;
    cfg.max_stale = 4;
    cfg.tuning.sweep_interval = Duration::from_millis(100);
    let rules = fqdn_rules(&[
        ("pypi.org", 1),
        ("conda.anaconda.org", 3),
        ("*.blob.core.windows.net", 5),
    ]);
    let dns = lab.start_dns(cfg, rules, sink.clone(), None);
    assert_eq!(dns.handle.mode(), DnsMode::Resolver);
    wait_for(LONG, || {
        let a = sink.allowed();
        (a.get(&ip("10.99.0.1")) == Some(&BTreeSet::from([1]))
            && a.get(&ip("fd99::1")) == Some(&BTreeSet::from([1]))
            && a.get(&ip("10.99.0.5")) == Some(&BTreeSet::from([3]))
            && a.get(&ip("fd99::5")) == Some(&BTreeSet::from([3])))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("resolver did not allow the names: {:?}", sink.allowed()));
    // Re-resolved on expiry (every 2 s here).
    wait_for(LONG, || {
        (events(&sink, SinkOp::Allow, "10.99.0.1").len() >= 3).then_some(())
    })
    .expect("re-resolution");
    assert!(
        lab.dnsmasq_log().matches("query[A] pypi.org").count() >= 3,
        "each refresh asks the upstream"
    );
    // Wildcards cannot be resolved ahead of time.
    assert_eq!(rules_of(&sink, "10.99.0.4"), None);

    lab.stop_dnsmasq();
    wait_for(LONG, || {
        dns.handle
            .state()
            .names
            .iter()
            .any(|n| n.name == "pypi.org" && n.stale)
            .then_some(())
    })
    .expect("pypi.org turns stale when the upstream is gone");
    let rp = wait_for(LONG, || {
        events(&sink, SinkOp::Revoke, "10.99.0.1").first().cloned()
    })
    .expect("revoked after max_stale");
    let ap = events(&sink, SinkOp::Allow, "10.99.0.1")
        .last()
        .cloned()
        .expect("allowed");
    assert!(
        rp.at - ap.at + Duration::from_millis(50) >= Duration::from_secs(2 + 4 + 2),
        "revoked {:?} after the last good answer",
        rp.at - ap.at
    );
    wait_for(LONG, || sink.allowed().is_empty().then_some(()))
        .unwrap_or_else(|| panic!("all revoked in the end: {:?}", sink.allowed()));
    let state = dns.handle.state();
    let pypi = state
        .names
        .iter()
        .find(|n| n.name == "pypi.org")
        .expect("kept (pinned)");
    assert!(pypi.addresses.is_empty());
    assert!(pypi.failures >= 1);
    let st = dns.handle.stats();
    assert!(st.resolver_failures >= 1, "{st:?}");
}

#[test]
fn state_file_and_tagwall_dns() {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(RecordingSink::new());
    let state_dir = lab.dir.join("state");
    let file = state_dir.join("ifx").join("dns.json");
    let dns = lab.start_dns(proxy_config(), seed_rules(), sink, Some(file.clone()));
    assert_eq!(
        lab.ask("conda.anaconda.org", "A", &[]).addrs(),
        [ip("10.99.0.5")]
    );
    wait_for(LONG, || {
        let s = std::fs::read_to_string(&file).ok()?;
        s.contains("conda.anaconda.org").then_some(())
    })
    .expect("state file written");
    let dir = state_dir.to_str().expect("utf-8");
    let out = tagwall(&[
        "dns",
        "--iface",
        "ifx",
        "--state-dir",
        dir,
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["schema"], "tagwall.dns/v1");
    assert_eq!(v["settings"]["mode"], "proxy");
    let n = v["names"]
        .as_array()
        .expect("names")
        .iter()
        .find(|n| n["name"] == "conda.anaconda.org")
        .expect("name listed");
    assert_eq!(n["rules"], serde_json::json!([3]));
    assert_eq!(n["hits"], 1);
    assert_eq!(n["addresses"][0]["addr"], "10.99.0.5");
    assert_eq!(n["addresses"][0]["state"], "live");
    assert_eq!(v["stats"]["matched"], 1);

    let out = tagwall(&["dns", "--iface", "ifx", "--state-dir", dir]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("conda.anaconda.org") && table.contains("10.99.0.5"),
        "{table}"
    );
    assert!(table.contains("dns mode proxy"), "{table}");

    let out = tagwall(&[
        "dns",
        "--iface",
        "ifx",
        "--state-dir",
        dir,
        "--who",
        "10.99.0.5",
    ]);
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(who.contains("conda.anaconda.org -> rule 3"), "{who}");
    let out = tagwall(&["dns", "--iface", "nope", "--state-dir", dir]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `tagwall run --iface nope` running?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dns.stop();
    let last = tagwall::dns::DnsState::load(&file).expect("final state readable");
    assert_eq!(last.stats.matched, 1);
}
