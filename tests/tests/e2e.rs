//! End to end: the real `tagwall run` binary attached to a gateway's client-facing
//! veth, real TCP connections and UDP datagrams from a client namespace through the
//! gateway to "internet" namespaces, then `tagwall counters` checked against the
//! traffic this test sent.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tagwall_tests::lab::*;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn rule<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["rules"]
        .as_array()
        .expect("rules array")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in counters: {c:#}"))
}

fn reason(c: &Value, dir: &str, name: &str) -> u64 {
    c["reasons"]
        .as_array()
        .expect("reasons array")
        .iter()
        .find(|r| r["direction"] == dir && r["reason"] == name)
        .map_or(0, |r| r["packets"].as_u64().expect("packets"))
}

const POLICY: &str = r#"
[[rules]]
name = "web-a"
to = ["10.77.2.2/32", "fd77:2::2/128"]
protocol = "tcp"
ports = [8080]

[[rules]]
name = "dns-a"
to = ["10.77.2.2/32"]
protocol = "udp"
ports = ["5300-5301"]
"#;

#[test]
fn real_traffic_through_the_attached_gateway() {
    let lab = Lab::new();
    let short = Duration::from_millis(800);
    let long = Duration::from_secs(3);

    let _web_a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let _web_a6 = tcp_echo(&lab.inet_a, sa(INET_A_V6, 8080));
    let other_port_a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 9090));
    let web_b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    let web_b6 = tcp_echo(&lab.inet_b, sa(INET_B_V6, 8080));
    let dns_a = udp_echo(&lab.inet_a, sa(INET_A_V4, 5301));
    let udp_other = udp_echo(&lab.inet_a, sa(INET_A_V4, 5400));

    // Without tagwall everything is reachable: the denials below are tagwall's doing.
    for to in [
        sa(INET_A_V4, 9090),
        sa(INET_B_V4, 8080),
        sa(INET_B_V6, 8080),
    ] {
        tcp_exchange(&lab.client, to, long)
            .unwrap_or_else(|e| panic!("lab broken before tagwall: {e}"));
    }
    assert_eq!(
        udp_exchange(&lab.client, sa(INET_A_V4, 5400), 1, 64, long),
        1
    );
    let before_b = web_b.hits.load(std::sync::atomic::Ordering::Relaxed);

    let policy = lab.write_policy("policy.toml", POLICY);
    let daemon = lab.start_tagwall(&policy, &[]);
    let c0 = lab.counters();
    assert_eq!(c0["audit"], false);

    // Allowed: v4 and v6 TCP to the allowed port, UDP to the allowed range.
    for to in [sa(INET_A_V4, 8080), sa(INET_A_V6, 8080)] {
        tcp_exchange(&lab.client, to, long).unwrap_or_else(|e| panic!("allowed flow failed: {e}"));
    }
    assert_eq!(
        udp_exchange(&lab.client, sa(INET_A_V4, 5301), 5, 100, long),
        5
    );
    let udp_allowed_hits = dns_a.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(udp_allowed_hits, 5);

    // Denied: other host (v4 and v6), other port, other UDP port.
    for to in [
        sa(INET_B_V4, 8080),
        sa(INET_B_V6, 8080),
        sa(INET_A_V4, 9090),
    ] {
        let r = tcp_exchange(&lab.client, to, short);
        assert!(r.is_err(), "{to} must be denied, got a connection");
    }
    let udp_denied_before = udp_other.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        udp_exchange(&lab.client, sa(INET_A_V4, 5400), 3, 64, short),
        0
    );
    assert_eq!(
        udp_other.hits.load(std::sync::atomic::Ordering::Relaxed),
        udp_denied_before
    );
    // Nothing reached the denied servers after attach.
    assert_eq!(
        web_b.hits.load(std::sync::atomic::Ordering::Relaxed),
        before_b
    );
    assert_eq!(web_b6.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        other_port_a.hits.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let c = lab.counters();
    // UDP rule: exactly the 5 datagrams (14 + 20 + 8 + 100 bytes each) this test sent.
    let dns = rule(&c, "user:dns-a");
    assert_eq!(dns["packets"], 5, "{c:#}");
    assert_eq!(dns["bytes"], 5 * (14 + 20 + 8 + 100), "{c:#}");
    // TCP rule: at least SYN, ACK, data, FIN-ish of each of the two connections.
    let web = rule(&c, "user:web-a");
    assert!(web["packets"].as_u64().unwrap() >= 6, "{c:#}");
    // Drops: each denied connect sent at least one SYN; the 3 UDP datagrams to 5400 and
    // the SYN(s) to 9090 are port drops; inet-b's are no-match drops.
    assert!(reason(&c, "outbound", "no_match") >= 2, "{c:#}");
    assert!(reason(&c, "outbound", "port") >= 4, "{c:#}");
    let drops = c["actions"]["drop"]["packets"].as_u64().unwrap();
    assert_eq!(
        drops,
        reason(&c, "outbound", "no_match")
            + reason(&c, "outbound", "port")
            + reason(&c, "outbound", "malformed")
            + reason(&c, "outbound", "fragment")
            + reason(&c, "outbound", "ext_hdr_limit"),
        "drop action total must equal the sum of drop reasons: {c:#}"
    );
    // The policy generation does not change while the daemon just runs.
    assert_eq!(c["generation"], c0["generation"]);

    // Stopping the daemon leaves the pinned datapath enforcing (fail closed) ...
    let log = daemon.stop();
    assert!(log.contains("policy applied"), "{log}");
    assert!(
        tcp_exchange(&lab.client, sa(INET_B_V4, 8080), short).is_err(),
        "inet-b reachable after the daemon stopped: enforcement must continue"
    );
    tcp_exchange(&lab.client, sa(INET_A_V4, 8080), long)
        .unwrap_or_else(|e| panic!("allowed traffic after the daemon stopped: {e}"));
    // ... and `tagwall detach` removes it all: inet-b is reachable again.
    let out = lab.tagwall("detach", &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    tcp_exchange(&lab.client, sa(INET_B_V4, 8080), long)
        .unwrap_or_else(|e| panic!("after detach: {e}"));
    let pins = lab.bpffs.path.join("tagwall").join(&lab.gw_in);
    assert!(!pins.exists(), "pins left behind at {}", pins.display());
}

#[test]
fn audit_mode_passes_and_counts_would_be_drops() {
    let lab = Lab::new();
    let long = Duration::from_secs(3);
    let web_b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    let policy = lab.write_policy("audit.toml", &format!("audit = true\n{POLICY}"));
    let daemon = lab.start_tagwall(&policy, &[]);
    tcp_exchange(&lab.client, sa(INET_B_V4, 8080), long)
        .unwrap_or_else(|e| panic!("audit must pass: {e}"));
    assert_eq!(web_b.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    let c = lab.counters();
    assert_eq!(c["audit"], true);
    assert_eq!(c["actions"]["drop"]["packets"], 0, "{c:#}");
    assert!(
        c["actions"]["audit_pass"]["packets"].as_u64().unwrap() >= 3,
        "{c:#}"
    );
    assert!(reason(&c, "outbound", "no_match") >= 3, "{c:#}");
    daemon.stop();
}

#[test]
fn bad_policy_is_rejected_before_anything_is_attached() {
    let lab = Lab::new();
    let policy = lab.write_policy(
        "bad.toml",
        "[[rules]]\nname = \"x\"\nto = [\"10.77.2.300/32\"]\n",
    );
    let err = lab.run_rejected(&policy, &[]);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
    assert!(!lab.bpffs.path.join("tagwall").exists());
    // Nothing attached: traffic still flows.
    let _b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    tcp_exchange(&lab.client, sa(INET_B_V4, 8080), Duration::from_secs(3)).unwrap();
}

/// The real Public Service Tags file (read from ../shared at test time, never copied).
fn public_tags() -> String {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/servicetags/ServiceTags_Public_20250908.json"
    );
    assert!(std::path::Path::new(p).exists(), "test data missing: {p}");
    p.to_owned()
}

/// 4.171.27.64/27 is in AzureMachineLearning in the 2025-09-08 Public file; the test
/// gives this address to the lab's inet-a namespace.
const AML_ADDR: &str = "4.171.27.70";

fn aml_policy(tags: &str) -> String {
    format!(
        "service_tags = {tags:?}\n[azureml]\ncloud = \"public\"\nregion = \"westus2\"\nstorage_accounts = [\"labstorage\"]\n"
    )
}

#[test]
fn aml_catalog_policy_allows_azuremachinelearning_443_not_444() {
    let lab = Lab::new();
    lab.add_inet_a_address(AML_ADDR);
    let long = Duration::from_secs(3);
    let _s443 = tcp_echo(&lab.inet_a, sa(AML_ADDR, 443));
    let s444 = tcp_echo(&lab.inet_a, sa(AML_ADDR, 444));
    tcp_exchange(&lab.client, sa(AML_ADDR, 444), long)
        .unwrap_or_else(|e| panic!("lab broken before tagwall: {e}"));

    let policy = lab.write_policy("aml.toml", &aml_policy(&public_tags()));
    let daemon = lab.start_tagwall(&policy, &[]);
    tcp_exchange(&lab.client, sa(AML_ADDR, 443), long)
        .unwrap_or_else(|e| panic!("AzureMachineLearning 443 must pass: {e}"));
    assert!(
        tcp_exchange(&lab.client, sa(AML_ADDR, 444), Duration::from_millis(800)).is_err(),
        "444 must be dropped"
    );
    assert_eq!(
        s444.hits.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the pre-attach connection reached 444"
    );
    let c = lab.counters();
    let credited: u64 = c["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["name"].as_str().unwrap().starts_with("aml:")
                && r["name"].as_str().unwrap().contains("azuremachinelearning")
        })
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(
        credited >= 3,
        "AzureMachineLearning rules credited {credited} packets: {c:#}"
    );
    assert!(reason(&c, "outbound", "port") >= 1, "{c:#}");
    daemon.stop();
}

#[test]
fn nft_export_of_the_aml_policy_enforces_the_same_in_nftables() {
    let lab = Lab::new();
    lab.add_inet_a_address(AML_ADDR);
    let long = Duration::from_secs(3);
    let _s443 = tcp_echo(&lab.inet_a, sa(AML_ADDR, 443));
    let _s444 = tcp_echo(&lab.inet_a, sa(AML_ADDR, 444));
    let _b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    let policy = lab.write_policy("aml.toml", &aml_policy(&public_tags()));
    let nft = lab.dir.path.join("aml.nft");
    let out = std::process::Command::new(tagwall_bin())
        .args(["export", "--nft", "--config"])
        .arg(&policy)
        .args(["--iif", &lab.gw_in, "-o"])
        .arg(&nft)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.gw.exec(&["nft", "-f", nft.to_str().unwrap()]);
    tcp_exchange(&lab.client, sa(AML_ADDR, 443), long)
        .unwrap_or_else(|e| panic!("nft must pass 443: {e}"));
    assert!(tcp_exchange(&lab.client, sa(AML_ADDR, 444), Duration::from_millis(800)).is_err());
    assert!(tcp_exchange(&lab.client, sa(INET_B_V4, 8080), Duration::from_millis(800)).is_err());
}
