//! Host-name rules end to end: the real `tagwall run` with its DNS proxy and resolver
//! on the gateway, dnsmasq as the upstream in a lab namespace, `dig` and real TCP from
//! the client. A wildcard name is denied before the lookup and allowed on the very
//! first SYN after it; an exact name is resolved in advance; a learned address leaves
//! the datapath after TTL + grace.

use std::{net::SocketAddr, time::Duration};

use tagwall_tests::{lab::*, netns::wait_for};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

/// Addresses of inet-a that the test names resolve to.
const BLOB_ADDR: &str = "10.77.2.50";
const PYPI_ADDR: &str = "10.77.2.51";
const SHORT_ADDR: &str = "10.77.2.52";

fn dig(lab: &Lab, name: &str) -> String {
    let out: std::process::Output = lab
        .client
        .cmd("dig")
        .args([
            &format!("@{GW_V4}"),
            name,
            "A",
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_answers_open_the_datapath_before_the_client_connects() {
    let lab = Lab::new();
    for a in [BLOB_ADDR, PYPI_ADDR, SHORT_ADDR] {
        lab.add_inet_a_address(a);
    }
    let _dns = lab.start_dnsmasq(&[
        ("pypi.org", PYPI_ADDR, 30),
        ("foo.blob.core.windows.net", BLOB_ADDR, 30),
        ("short.blob.core.windows.net", SHORT_ADDR, 1),
    ]);
    let _blob = tcp_echo(&lab.inet_a, sa(BLOB_ADDR, 8080));
    let _pypi = tcp_echo(&lab.inet_a, sa(PYPI_ADDR, 8080));
    let _short = tcp_echo(&lab.inet_a, sa(SHORT_ADDR, 8080));
    let policy = lab.write_policy(
        "fqdn.toml",
        &format!(
            r#"
[dns]
mode = "both"
listen = ["{GW_V4}:53"]
clients = ["10.77.1.0/24"]
upstreams = ["{INET_B_V4}:53"]
min_ttl = 1
max_ttl = 30
grace = 1

[[rules]]
name = "blob"
fqdns = ["*.blob.core.windows.net", "pypi.org"]
protocol = "tcp"
ports = [8080]
"#
        ),
    );
    // On every gateway interface, so flows are seen both ways and close.
    let daemon = lab.start_tagwall(
        &policy,
        &["--also-iface", &lab.gw_a, "--also-iface", &lab.gw_b],
    );
    let (short, long) = (Duration::from_millis(800), Duration::from_secs(3));

    // Exact name, resolver mode: allowed without the client asking.
    let resolved = wait_for(Duration::from_secs(10), || {
        tcp_exchange(&lab.client, sa(PYPI_ADDR, 8080), short).ok()
    });
    assert!(
        resolved.is_some(),
        "pypi.org resolved in advance\n{}",
        daemon.log()
    );

    // Wildcard: denied before the lookup ...
    assert!(
        tcp_exchange(&lab.client, sa(BLOB_ADDR, 8080), short).is_err(),
        "a wildcard name's address must be denied before anyone looks it up"
    );
    // ... the proxy answers ...
    let answer = dig(&lab, "foo.blob.core.windows.net");
    assert!(
        answer.contains(BLOB_ADDR),
        "proxy answer: {answer}\n{}",
        daemon.log()
    );
    // ... and the very first SYN after the answer passes (no retry needed).
    let c0 = lab.counters();
    let drops0 = c0["actions"]["drop"]["packets"].as_u64().unwrap();
    tcp_exchange(&lab.client, sa(BLOB_ADDR, 8080), long)
        .unwrap_or_else(|e| panic!("first connection after the answer: {e}\n{}", daemon.log()));
    let c1 = lab.counters();
    assert_eq!(
        c1["actions"]["drop"]["packets"].as_u64().unwrap(),
        drops0,
        "no packet of the first connection may be dropped: {c1:#}"
    );
    // The apex is not matched by *.blob.core.windows.net, and other ports stay closed.
    assert!(tcp_exchange(&lab.client, sa(BLOB_ADDR, 9090), short).is_err());

    // `tagwall dns` lists what was learned (the daemon rewrites its state file
    // every few seconds).
    let listed = wait_for(Duration::from_secs(15), || {
        let out = lab.tagwall("dns", &["--format", "json"]);
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        (listing.contains("foo.blob.core.windows.net") && listing.contains(BLOB_ADDR))
            .then_some(listing)
    });
    assert!(
        listed.is_some(),
        "tagwall dns never listed foo.blob.core.windows.net"
    );
    // `tagwall explain` names the host name that brought the address in.
    let out = std::process::Command::new(tagwall_bin())
        .args(["explain", "--config"])
        .arg(&policy)
        .args(["--iface", &lab.gw_in, "--state-dir"])
        .arg(lab.dir.path.join("state"))
        .arg(format!("{BLOB_ADDR}:8080"))
        .output()
        .expect("tagwall explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("ALLOWED")
            && text.contains("foo.blob.core.windows.net"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A 1 s TTL: learned, then gone after TTL + grace (no flow keeps it).
    assert!(dig(&lab, "short.blob.core.windows.net").contains(SHORT_ADDR));
    tcp_exchange(&lab.client, sa(SHORT_ADDR, 8080), long).expect("just learned");
    // Poll with complete connections: each ends closed, so no live flow keeps the
    // address in use, and DNS may let it go after TTL + grace.
    let gone = wait_for(Duration::from_secs(30), || {
        tcp_exchange(&lab.client, sa(SHORT_ADDR, 8080), short)
            .is_err()
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "the address stayed after TTL + grace\n{}",
        daemon.log()
    );
    // The long-TTL names stay.
    tcp_exchange(&lab.client, sa(BLOB_ADDR, 8080), long).expect("foo.blob still allowed");
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}
