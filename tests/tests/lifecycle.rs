//! Stateful enforcement in namespaces (gateway and host mode), and the daemon's life:
//! SIGKILL and restart, reloads under traffic, a rejected reload. The real `tagwall`
//! binary, real sockets, streams of numbered datagrams counted at both ends.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tagwall_tests::{lab::*, netns::wait_for};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn reason(c: &Value, dir: &str, name: &str) -> u64 {
    c["reasons"]
        .as_array()
        .expect("reasons array")
        .iter()
        .find(|r| r["direction"] == dir && r["reason"] == name)
        .map_or(0, |r| r["packets"].as_u64().expect("packets"))
}

fn rule_packets(c: &Value, name: &str) -> u64 {
    c["rules"]
        .as_array()
        .expect("rules array")
        .iter()
        .find(|r| r["name"] == name)
        .map_or(0, |r| r["packets"].as_u64().expect("packets"))
}

/// A client-side server for inbound tests.
const CLIENT_PORT_OPEN: u16 = 7000;
const CLIENT_PORT_CLOSED: u16 = 7001;

const STATEFUL: &str = r#"
internal_prefixes = ["10.77.1.0/24", "fd77:1::/64"]

[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]

# inet-b may open connections to the clients' port 7000 (like AzureMachineLearning
# -> compute on 44224).
[[rules]]
name = "from-b"
direction = "inbound"
to = ["10.77.3.0/24"]
protocol = "tcp"
ports = [7000]
"#;

#[test]
fn gateway_lets_replies_in_and_drops_unsolicited_inbound() {
    let lab = Lab::new();
    let (short, long) = (Duration::from_millis(800), Duration::from_secs(3));
    let _web_a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let _open = tcp_echo(&lab.client, sa(CLIENT_V4, CLIENT_PORT_OPEN));
    let _closed = tcp_echo(&lab.client, sa(CLIENT_V4, CLIENT_PORT_CLOSED));
    let policy = lab.write_policy("stateful.toml", STATEFUL);
    // The datapath on every gateway interface, so replies from the internet side
    // are seen (and tracked) too.
    let daemon = lab.start_tagwall(
        &policy,
        &["--also-iface", &lab.gw_a, "--also-iface", &lab.gw_b],
    );

    // Outbound connection; its replies come in on gw-a and pass as established.
    tcp_exchange(&lab.client, sa(INET_A_V4, 8080), long)
        .unwrap_or_else(|e| panic!("outbound allowed: {e}\n{}", daemon.log()));
    // Unsolicited inbound from inet-a: no inbound rule for it.
    assert!(
        tcp_exchange(&lab.inet_a, sa(CLIENT_V4, CLIENT_PORT_OPEN), short).is_err(),
        "inet-a must not reach the client"
    );
    // The inbound rule: inet-b may reach the client's port 7000, not 7001.
    tcp_exchange(&lab.inet_b, sa(CLIENT_V4, CLIENT_PORT_OPEN), long)
        .unwrap_or_else(|e| panic!("inbound allowed by rule: {e}"));
    assert!(
        tcp_exchange(&lab.inet_b, sa(CLIENT_V4, CLIENT_PORT_CLOSED), short).is_err(),
        "the inbound rule opens port 7000 only"
    );
    // Outbound to what no rule allows stays denied.
    assert!(tcp_exchange(&lab.client, sa(INET_B_V4, 8080), short).is_err());

    let c = lab.counters();
    assert!(reason(&c, "inbound", "established") >= 2, "{c:#}");
    assert!(reason(&c, "outbound", "established") >= 2, "{c:#}");
    assert!(reason(&c, "inbound", "no_match") >= 1, "{c:#}");
    assert!(reason(&c, "inbound", "port") >= 1, "{c:#}");
    assert!(c["conntrack"]["new"].as_u64().unwrap() >= 2, "{c:#}");
    // Both directions of each allowed connection are credited to its rule.
    assert!(rule_packets(&c, "user:web-a") >= 6, "{c:#}");
    assert!(rule_packets(&c, "user:from-b") >= 6, "{c:#}");
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

#[test]
fn host_mode_enforces_the_hosts_own_traffic() {
    let lab = Lab::new();
    let (short, long) = (Duration::from_millis(800), Duration::from_secs(3));
    let _web_a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let web_b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    let _open = tcp_echo(&lab.client, sa(CLIENT_V4, CLIENT_PORT_OPEN));
    let policy = lab.write_policy(
        "host.toml",
        r#"
[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]

[[rules]]
name = "from-b"
direction = "inbound"
to = ["10.77.3.0/24"]
protocol = "tcp"
ports = [7000]
"#,
    );
    // tagwall on the client itself (self-managed compute), TC on its NIC.
    let daemon = lab.start_tagwall_in(&lab.client, &lab.c0, &policy, &["--host"]);
    assert!(daemon.log().contains("TC attached"), "{}", daemon.log());
    tcp_exchange(&lab.client, sa(INET_A_V4, 8080), long)
        .unwrap_or_else(|e| panic!("host outbound allowed: {e}"));
    assert!(tcp_exchange(&lab.client, sa(INET_B_V4, 8080), short).is_err());
    assert_eq!(
        web_b.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the denied SYN must not leave the host"
    );
    assert!(
        tcp_exchange(&lab.inet_a, sa(CLIENT_V4, CLIENT_PORT_OPEN), short).is_err(),
        "unsolicited inbound to the host"
    );
    tcp_exchange(&lab.inet_b, sa(CLIENT_V4, CLIENT_PORT_OPEN), long)
        .unwrap_or_else(|e| panic!("inbound allowed by rule: {e}"));
    let c = lab.counters_of(&lab.c0);
    assert!(reason(&c, "inbound", "established") >= 2, "{c:#}");
    assert!(reason(&c, "outbound", "no_match") >= 1, "{c:#}");
    // The host's own address is covered by the SSH allowance (port 22), so the
    // unsolicited SYN to port 7000 is a port drop.
    assert!(reason(&c, "inbound", "port") >= 1, "{c:#}");
    daemon.stop();
    let out = lab.tagwall_raw(&lab.c0, "detach", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Detached: the host reaches inet-b again.
    tcp_exchange(&lab.client, sa(INET_B_V4, 8080), long)
        .unwrap_or_else(|e| panic!("after detach: {e}"));
}

const STREAMS: &str = r#"
[[rules]]
name = "echo-a"
to = ["10.77.2.2/32"]
protocol = "udp"
ports = [5300]
"#;

/// An allowed stream (client -> inet-a:5300) and a denied one (client -> inet-b:5300).
struct Streams {
    allowed: UdpStream,
    denied: UdpStream,
    denied_server: Server,
    _allowed_server: Server,
}

fn start_streams(lab: &Lab) -> Streams {
    let allowed_server = udp_echo(&lab.inet_a, sa(INET_A_V4, 5300));
    let denied_server = udp_echo(&lab.inet_b, sa(INET_B_V4, 5300));
    let every = Duration::from_millis(2);
    Streams {
        allowed: UdpStream::start(&lab.client, sa(INET_A_V4, 5300), every),
        denied: UdpStream::start(&lab.client, sa(INET_B_V4, 5300), every),
        denied_server,
        _allowed_server: allowed_server,
    }
}

impl Streams {
    /// Stop; assert no allowed datagram was lost and no denied one arrived.
    fn check(self) -> u64 {
        let (sent, echoed) = self.allowed.stop();
        let (dsent, decho) = self.denied.stop();
        assert!(sent > 100, "the stream ran ({sent} sent)");
        assert_eq!(
            echoed,
            sent,
            "allowed datagrams lost: {} of {sent}",
            sent - echoed
        );
        assert!(dsent > 100);
        assert_eq!(decho, 0);
        assert_eq!(
            self.denied_server
                .hits
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a denied datagram got through"
        );
        sent
    }
}

#[test]
fn sigkill_and_restart_under_traffic_lose_nothing_and_let_nothing_through() {
    let lab = Lab::new();
    let policy = lab.write_policy("streams.toml", STREAMS);
    let daemon = lab.start_tagwall(&policy, &[]);
    let streams = start_streams(&lab);
    std::thread::sleep(Duration::from_millis(400));
    let c0 = lab.counters();
    // No goodbye: the pinned links keep enforcing while no daemon runs.
    let _ = daemon.kill9();
    std::thread::sleep(Duration::from_millis(400));
    let gap = lab.counters();
    assert!(
        rule_packets(&gap, "user:echo-a") > rule_packets(&c0, "user:echo-a"),
        "enforcement and counting go on without a daemon"
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    let log = daemon.log();
    assert!(log.contains("adopted the pinned link"), "{log}");
    std::thread::sleep(Duration::from_millis(400));
    let sent = streams.check();
    // Counters carried on across the restart: every datagram of the stream (and
    // nothing else matches that rule) is counted once.
    let c = lab.counters();
    assert_eq!(rule_packets(&c, "user:echo-a"), sent, "{c:#}");
    assert!(c["generation"].as_u64().unwrap() > c0["generation"].as_u64().unwrap());
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

#[test]
fn reloads_under_traffic_switch_atomically_and_a_bad_one_changes_nothing() {
    let lab = Lab::new();
    let policy = lab.write_policy("streams.toml", STREAMS);
    let daemon = lab.start_tagwall(&policy, &[]);
    let newly = udp_echo(&lab.inet_a, sa(INET_A_V4, 5301));
    let streams = start_streams(&lab);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        udp_exchange(
            &lab.client,
            sa(INET_A_V4, 5301),
            2,
            16,
            Duration::from_millis(300)
        ),
        0,
        "5301 is not allowed yet"
    );
    let gen0 = lab.counters()["generation"].as_u64().unwrap();
    // Reload a few times, alternating policies that both keep the stream allowed.
    for i in 0..6 {
        let extra = if i % 2 == 0 {
            "\n[[rules]]\nname = \"echo-a-5301\"\nto = [\"10.77.2.2/32\"]\nprotocol = \"udp\"\nports = [5301]\n"
        } else {
            ""
        };
        std::fs::write(&policy, format!("{STREAMS}{extra}")).unwrap();
        let out = lab.tagwall_raw(&lab.gw_in, "reload", &[]);
        assert!(
            out.status.success(),
            "reload {i}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded"));
        let allowed_5301 = udp_exchange(
            &lab.client,
            sa(INET_A_V4, 5301),
            2,
            16,
            Duration::from_millis(300),
        );
        assert_eq!(allowed_5301, if i % 2 == 0 { 2 } else { 0 }, "reload {i}");
    }
    let gen1 = lab.counters()["generation"].as_u64().unwrap();
    assert_eq!(gen1, gen0 + 6);

    // A bad config: `tagwall reload` refuses it and says why; nothing changes.
    std::fs::write(
        &policy,
        format!("{STREAMS}\n[[rules]]\nname = \"bad\"\nto = [\"10.77.2.300/32\"]\n"),
    )
    .unwrap();
    let out = lab.tagwall_raw(&lab.gw_in, "reload", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stays in force") && err.contains("streams.toml"),
        "{err}"
    );
    // The same bad config by SIGHUP straight to the daemon: rejected, logged, kept.
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            lab.dir
                .path
                .join("state")
                .join(&lab.gw_in)
                .join("policy.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pid = i32::try_from(state["pid"].as_u64().unwrap()).unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc_kill(pid) };
    let rejected = wait_for(Duration::from_secs(10), || {
        daemon.log().contains("reload rejected").then_some(())
    });
    assert!(rejected.is_some(), "{}", daemon.log());
    assert_eq!(lab.counters()["generation"].as_u64().unwrap(), gen1);
    std::thread::sleep(Duration::from_millis(200));
    streams.check();
    drop(newly);
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

unsafe fn libc_kill(pid: i32) {
    // SAFETY: the caller passes a pid it owns.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
}

/// Maps pinned by a tagwall whose layout differs (an upgrade across a layout change)
/// are refused with an error that names the map and says what to do, before aya
/// adopts them; maps of the same layout are adopted.
#[test]
fn pinned_maps_of_another_layout_are_refused_by_name() {
    use tagwall::dataplane::{Dataplane, LoadOptions};
    use tagwall_common::names;

    let fs = tagwall_tests::netns::Bpffs::new();
    let pins = fs.path.join("tw");
    let opts = LoadOptions {
        pin_dir: Some(pins.clone()),
        ..LoadOptions::default()
    };
    drop(Dataplane::load(&opts).expect("first load pins the maps"));
    assert!(pins.join(names::MAP_FACTS).exists());
    drop(Dataplane::load(&opts).expect("the same layout is adopted"));

    // CONFIG's pin where FACTS' belongs: another value size, as after a layout change.
    std::fs::remove_file(pins.join(names::MAP_FACTS)).expect("unpin FACTS");
    std::fs::rename(pins.join(names::GLOBAL_CONFIG), pins.join(names::MAP_FACTS))
        .expect("move CONFIG's pin");
    assert_refused(&opts, names::MAP_FACTS, "FACTS");

    // Same key and value sizes, fewer entries: CT_STATS' pin where REASON_STATS'
    // belongs, as a REASON_STATS from before the audit mode was one of its keys.
    std::fs::remove_dir_all(&pins).expect("unpin all");
    drop(Dataplane::load(&opts).expect("pins again"));
    std::fs::remove_file(pins.join(names::MAP_REASON_STATS)).expect("unpin REASON_STATS");
    std::fs::rename(
        pins.join(names::MAP_CT_STATS),
        pins.join(names::MAP_REASON_STATS),
    )
    .expect("move CT_STATS' pin");
    let expected = format!("{} entries", tagwall_common::counters::REASON_STATS_LEN);
    assert_refused(&opts, names::MAP_REASON_STATS, &expected);
}

/// Loading with `opts` fails with `IncompatiblePin` for map `name`, and the message
/// says what to do (`tagwall detach`) and contains `detail`.
fn assert_refused(opts: &tagwall::dataplane::LoadOptions, name: &str, detail: &str) {
    use tagwall::dataplane::{Dataplane, DataplaneError};
    let err = Dataplane::load(opts)
        .err()
        .expect("a pin of another layout is refused");
    assert!(
        matches!(&err, DataplaneError::IncompatiblePin { name: n, .. } if *n == name),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tagwall detach") && msg.contains(detail),
        "{msg}"
    );
}

/// Maps whose sizes match but whose contents a tagwall of another map layout wrote
/// (the multibit trie's entry encoding changed once without a size change) are
/// refused by `CONFIG`'s layout; the same layout, and a `CONFIG` nobody wrote yet, are
/// adopted.
#[test]
fn pinned_maps_written_in_another_layout_are_refused() {
    use aya::maps::{Array, Map, MapData};
    use tagwall::dataplane::{Dataplane, LoadOptions, Settings};
    use tagwall_common::{
        names,
        policy::{Config, MAP_LAYOUT},
    };

    let fs = tagwall_tests::netns::Bpffs::new();
    let pins = fs.path.join("tw");
    let opts = LoadOptions {
        pin_dir: Some(pins.clone()),
        ..LoadOptions::default()
    };
    let pinned_config = || -> Array<MapData, Config> {
        let map = MapData::from_pin(pins.join(names::GLOBAL_CONFIG)).expect("CONFIG pinned");
        Array::try_from(Map::Array(map)).expect("array")
    };
    let write_layout = |layout: u32, generation: u32| {
        let mut cfg = pinned_config();
        let old = cfg.get(&0, 0).expect("CONFIG[0]");
        cfg.set(
            0,
            Config {
                layout,
                generation,
                ..old
            },
            0,
        )
        .expect("write CONFIG");
    };
    let read_layout = || pinned_config().get(&0, 0).expect("CONFIG[0]").layout;

    let mut dp = Dataplane::load(&opts).expect("first load pins the maps");
    let policy = tagwall::compile::compile(&[], 16).expect("empty policy");
    dp.apply(&policy, &Settings::stateless(false))
        .expect("apply");
    drop(dp);
    assert_eq!(
        read_layout(),
        MAP_LAYOUT,
        "apply records this build's layout"
    );
    // `CONFIG` is a global, which the loader writes when it adopts its map: with
    // the pinned value, so what the attached programs read stays as it was.
    let before = pinned_config().get(&0, 0).expect("CONFIG[0]");
    assert_ne!(before.generation, 0, "applied");
    drop(Dataplane::load(&opts).expect("the same layout is adopted"));
    assert_eq!(
        pinned_config().get(&0, 0).expect("CONFIG[0]"),
        before,
        "a load that adopts CONFIG keeps its settings"
    );

    // As an older tagwall left them: applied (generation 3), layout 0.
    write_layout(0, 3);
    assert_refused(&opts, names::MAP_CONFIG, "map layout 0");
    // A CONFIG never written (a daemon that stopped before its first apply).
    write_layout(0, 0);
    drop(Dataplane::load(&opts).expect("an unwritten CONFIG is adopted"));
}

/// `tagwall run` has the verifier check only its mode's programs (about half a
/// second each), and attaching loads a program that the load left out.
#[test]
fn a_load_verifies_its_modes_programs_and_attaching_loads_the_others() {
    use tagwall::dataplane::{AttachMode, Attached, Dataplane, LoadOptions, Programs};
    use tagwall_common::names;
    use tagwall_tests::netns::{Netns, veth};

    let loaded = |dp: &Dataplane| -> Vec<String> {
        dp.verified_insns().into_iter().map(|(n, _)| n).collect()
    };
    let load = |programs| {
        Dataplane::load(&LoadOptions {
            programs,
            ..LoadOptions::default()
        })
        .expect("load")
    };
    let (gw, local) = (names::PROG_XDP, names::PROG_TC_LOCAL);
    let (egress, ingress) = (names::PROG_TC_EGRESS, names::PROG_TC_INGRESS);
    let mut all = vec![gw, local, egress, ingress];
    all.sort_unstable();
    assert_eq!(loaded(&load(Programs::All)), all);
    assert_eq!(loaded(&load(Programs::Gateway)), [local, gw]);
    assert_eq!(loaded(&load(Programs::Host)), [egress, ingress]);

    // A host-mode load attached as a gateway: XDP and the TC program for the
    // gateway's own traffic are loaded by the attach.
    let (a, b) = (Netns::new("twla"), Netns::new("twlb"));
    veth(&a, "twl0", &["10.77.0.1/24"], &b, "twl1", &["10.77.0.2/24"]);
    let got = a.run(move || {
        let mut dp = load(Programs::Host);
        let attached = dp.attach("twl0", AttachMode::Generic).expect("attach");
        (matches!(attached, Attached::Xdp(_)), loaded(&dp))
    });
    assert!(got.0, "attached as XDP");
    assert_eq!(got.1, all);
}
