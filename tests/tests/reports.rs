//! Reports and observability end to end: the real `tagwall run` on the lab gateway
//! with `[reports]` on; the test sends known traffic (N allowed connections, M
//! denied datagrams from a known port) and checks `tagwall report --format json`,
//! the denied-flow JSON lines and a real HTTP scrape of `/metrics` against it; a
//! pasted suggestion really allows what was denied; a flood is rate limited in the
//! kernel with every suppressed event counted while `/metrics` keeps answering; a
//! DNS-learned name shows up in the events and the report; a top-denied entry the
//! LRU table evicted comes back with only its new drops.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::Value;
use tagwall::reports::time::{rfc3339, unix_ns};
use tagwall_tests::{
    harness::udp_top_slot,
    lab::*,
    netns::{Netns, wait_for},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

const METRICS_PORT: u16 = 9464;

/// `tagwall report --format json` (plus `extra`), parsed.
fn report(lab: &Lab, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let out = lab.tagwall("report", &args);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report JSON: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// GET /metrics with curl inside the gateway namespace (where the daemon listens).
fn scrape(ns: &Netns) -> Result<String, String> {
    let out = ns
        .cmd("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        ])
        .output()
        .map_err(|e| format!("spawn curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The value of the sample `name{...}` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
}

/// Send `count` datagrams from `from` (a fixed source port) to `to`; returns how many
/// the kernel accepted.
fn send_udp(ns: &Netns, from: SocketAddr, to: SocketAddr, count: usize) -> usize {
    ns.run(move || {
        let s = UdpSocket::bind(from).expect("bind sender");
        (0..count)
            .filter(|i| s.send_to(&(*i as u64).to_be_bytes(), to).is_ok())
            .count()
    })
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn find(arr: &Value, f: impl Fn(&Value) -> bool) -> Option<&Value> {
    arr.as_array().expect("array").iter().find(|v| f(v))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Packets of the stage-2 drop reasons (the ones events cover).
fn stage2_drops(r: &Value) -> u64 {
    r["drops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            ["no_match", "port", "fragment", "internal"].contains(&d["reason"].as_str().unwrap())
        })
        .map(|d| u(&d["packets"]))
        .sum()
}

fn drops(r: &Value, dir: &str, reason: &str) -> u64 {
    find(&r["drops"], |d| {
        d["direction"] == dir && d["reason"] == reason
    })
    .map_or(0, |d| u(&d["packets"]))
}

fn events_total(r: &Value) -> u64 {
    let e = &r["events"];
    u(&e["emitted"]["packets"]) + u(&e["rate_limited"]["packets"]) + u(&e["ring_full"]["packets"])
}

/// Wait until the log holds as many lines as the datapath emitted events, and the
/// daemon's counters (`events.json`, rewritten about once a second) say so too.
fn wait_for_log(lab: &Lab, path: &Path) -> (Value, Vec<Value>) {
    let got = wait_for(Duration::from_secs(10), || {
        let r = report(lab, &["--no-save"]);
        let lines = log_lines(path);
        let n = lines.len() as u64;
        (n == u(&r["events"]["emitted"]["packets"])
            && r["events"]["log"]["lines_written"].as_u64() == Some(n))
        .then_some((r, lines))
    });
    got.unwrap_or_else(|| {
        panic!(
            "the log never caught up with the emitted events: {} lines\n{:#}",
            log_lines(path).len(),
            report(lab, &["--no-save"])["events"]
        )
    })
}

const CATALOG_POLICY: &str = r#"
service_tags = "lab-servicetags.json"

[dns]
mode = "off"

[reports]
denied_log = "DENIED_LOG"
events_per_second = 10000
events_burst = 10000
metrics_listen = "127.0.0.1:9464"

[azureml]
cloud = "public"
region = "westus2"
scenarios = ["workspace", "compute"]

[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]
"#;

/// The catalog requirement whose rule is credited with TCP 443 to inet-a (the lab's
/// AzureMachineLearning network): the first rule, by id, of that address's port set.
const AML_REQ: &str = "compute-tag-azuremachinelearning";

#[test]
fn report_events_and_metrics_agree_with_the_traffic_sent() {
    let lab = Lab::new();
    let t0 = rfc3339(unix_ns() - 60_000_000_000);
    std::fs::write(
        lab.dir.path.join("lab-servicetags.json"),
        lab_service_tags(),
    )
    .unwrap();
    let log = lab.dir.path.join("log").join("denied.jsonl");
    let policy = lab.write_policy(
        "policy.toml",
        &CATALOG_POLICY.replace("DENIED_LOG", &log.display().to_string()),
    );
    let _s443 = tcp_echo(&lab.inet_a, sa(INET_A_V4, 443));
    let s444 = tcp_echo(&lab.inet_a, sa(INET_A_V4, 444));
    let _s8080 = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let b5300 = udp_echo(&lab.inet_b, sa(INET_B_V4, 5300));
    // On every gateway NIC: replies are seen too, and credited to the flow's rule.
    let daemon = lab.start_tagwall(
        &policy,
        &["--also-iface", &lab.gw_a, "--also-iface", &lab.gw_b],
    );
    let long = Duration::from_secs(3);

    // N allowed connections per rule; M denied datagrams from a known port; one
    // connection attempt to a covered address on a port no rule lists.
    const N_AML: u64 = 3;
    const N_WEB: u64 = 2;
    const M: usize = 7;
    for _ in 0..N_AML {
        tcp_exchange(&lab.client, sa(INET_A_V4, 443), long)
            .unwrap_or_else(|e| panic!("AzureMachineLearning 443: {e}\n{}", daemon.log()));
    }
    for _ in 0..N_WEB {
        tcp_exchange(&lab.client, sa(INET_A_V4, 8080), long)
            .unwrap_or_else(|e| panic!("web-a: {e}"));
    }
    let from = sa(CLIENT_V4, 40555);
    assert_eq!(send_udp(&lab.client, from, sa(INET_B_V4, 5300), M), M);
    assert!(tcp_exchange(&lab.client, sa(INET_A_V4, 444), Duration::from_millis(800)).is_err());
    assert_eq!(s444.hits.load(Ordering::Relaxed), 0);
    assert_eq!(
        b5300.hits.load(Ordering::Relaxed),
        0,
        "a denied datagram got through"
    );
    // Let closing handshakes finish, so nothing moves while we read.
    std::thread::sleep(Duration::from_secs(1));

    // The denied-flow log: exactly M lines for the datagrams, with their 5-tuple.
    let (r, lines) = wait_for_log(&lab, &log);
    let t1 = rfc3339(unix_ns() + 60_000_000_000);
    let udp: Vec<&Value> = lines
        .iter()
        .filter(|l| l["destination"] == INET_B_V4 && l["destination_port"] == 5300)
        .collect();
    assert_eq!(udp.len(), M, "{lines:#?}");
    for l in &udp {
        assert_eq!(l["source"], CLIENT_V4, "{l}");
        assert_eq!(l["source_port"], 40555, "{l}");
        assert_eq!(l["protocol"], "UDP", "{l}");
        assert_eq!(l["action"], "Deny", "{l}");
        assert_eq!(l["reason"], "no_match", "{l}");
        assert_eq!(l["direction"], "outbound", "{l}");
        assert_eq!(l["iface"], lab.gw_in.as_str(), "{l}");
        assert!(l["fqdn"].is_null(), "{l}");
        let t = l["time"].as_str().unwrap();
        assert!(
            t.ends_with('Z') && t > t0.as_str() && t < t1.as_str(),
            "{t} not in {t0}..{t1}"
        );
    }
    let syn444 = lines
        .iter()
        .filter(|l| l["destination_port"] == 444 && l["reason"] == "port" && l["protocol"] == "TCP")
        .count();
    assert!(syn444 >= 1, "{lines:#?}");

    // The report.
    assert_eq!(r["schema"], "tagwall.report/v1");
    assert_eq!(r["daemon"]["running"], true);
    // Every drop of stage 2 is an event, rate-limited or ring-full: nothing unaccounted.
    assert_eq!(events_total(&r), stage2_drops(&r), "{:#}", r["events"]);
    assert_eq!(u(&r["events"]["rate_limited"]["packets"]), 0);
    assert_eq!(u(&r["events"]["ring_full"]["packets"]), 0);
    assert_eq!(u(&r["events"]["log"]["lines_written"]), lines.len() as u64);
    assert_eq!(u(&r["events"]["log"]["write_errors"]), 0);
    // Rules: the requirement and the user rule, credited both ways, bounded by the
    // packets a short TCP exchange takes (handshake, data, echo, close).
    let aml = find(&r["rules"], |x| x["requirement"] == AML_REQ).expect("requirement row");
    assert_eq!(aml["kind"], "catalog");
    assert_eq!(aml["name"], format!("aml:{AML_REQ}"));
    let p = u(&aml["packets"]);
    assert!((6 * N_AML..=24 * N_AML).contains(&p), "{aml}");
    let web = find(&r["rules"], |x| x["name"] == "user:web-a").unwrap();
    assert_eq!(web["kind"], "user");
    let p = u(&web["packets"]);
    assert!((6 * N_WEB..=24 * N_WEB).contains(&p), "{web}");
    // Top denied: the datagrams exactly, and the covered address's other port.
    let top = &r["top_denied"]["top"];
    let t = find(top, |t| t["remote"] == INET_B_V4 && t["port"] == 5300).expect("udp entry");
    assert_eq!(
        (u(&t["packets"]), &t["protocol"], &t["direction"]),
        (M as u64, &Value::from("udp"), &Value::from("outbound"))
    );
    assert_eq!(t["last_reason"], "no_match");
    assert_eq!(t["local"], CLIENT_V4);
    assert!(t["covered_by"].as_array().unwrap().is_empty());
    let t444 = find(top, |t| t["remote"] == INET_A_V4 && t["port"] == 444).expect("444 entry");
    assert_eq!(t444["last_reason"], "port");
    assert!(
        t444["covered_by"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .starts_with(&format!("aml:{AML_REQ} (tcp 443)"))),
        "{t444}"
    );
    assert_eq!(
        drops(&r, "outbound", "no_match"),
        M as u64,
        "{:#}",
        r["drops"]
    );
    // Coverage: one requirement saw traffic, the others did not.
    let cov = &r["coverage"];
    let seen: Vec<&str> = cov["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["requirement"].as_str().unwrap())
        .collect();
    assert_eq!(seen, [AML_REQ], "{cov:#}");
    assert_eq!(u(&cov["requirements"]), 25, "{cov:#}");
    assert!(
        find(&cov["never"], |x| x["requirement"]
            == "ws-tag-azureactivedirectory")
        .is_some()
    );
    assert!(
        find(&cov["not_applied"], |x| x["requirement"]
            == "compute-storage-blob")
        .is_some()
    );
    // Suggestions: the denied destination, as a rule block.
    let sug = find(&r["suggestions"], |s| s["remote"] == INET_B_V4).expect("suggestion");
    let toml = sug["toml"].as_str().unwrap();
    for want in [
        "to = [\"10.77.3.2/32\"]",
        "protocol = \"udp\"",
        "ports = [5300]",
    ] {
        assert!(toml.contains(want), "{toml}");
    }
    assert!(
        sug["why"].as_str().unwrap().contains("no rule covers"),
        "{sug}"
    );
    let s444 = find(&r["suggestions"], |s| {
        s["remote"] == INET_A_V4 && s["port"] == 444
    })
    .expect("444 suggestion");
    assert!(
        s444["why"]
            .as_str()
            .unwrap()
            .contains(&format!("aml:{AML_REQ}")),
        "{s444}"
    );
    assert!(u(&r["conntrack"]["entries"]) >= 1);
    assert!(u(&r["conntrack"]["events"]["new"]) >= N_AML + N_WEB);

    // /metrics, scraped with a real HTTP client, says the same (nothing moved since).
    let m = scrape(&lab.gw).unwrap_or_else(|e| panic!("scrape: {e}\n{}", daemon.log()));
    assert_eq!(
        metric(
            &m,
            "tagwall_drops_total",
            &[("reason", "no_match"), ("direction", "outbound")]
        ),
        drops(&r, "outbound", "no_match")
    );
    assert_eq!(
        metric(
            &m,
            "tagwall_drops_total",
            &[("reason", "port"), ("direction", "outbound")]
        ),
        drops(&r, "outbound", "port")
    );
    assert_eq!(
        metric(
            &m,
            "tagwall_rule_packets_total",
            &[("rule", "user:web-a"), ("kind", "user")]
        ),
        u(&web["packets"])
    );
    assert_eq!(
        metric(
            &m,
            "tagwall_rule_packets_total",
            &[
                ("rule", &format!("aml:{AML_REQ}")),
                ("requirement", AML_REQ)
            ]
        ),
        u(&aml["packets"])
    );
    assert_eq!(
        metric(&m, "tagwall_action_packets_total", &[("action", "drop")]),
        u(&r["actions"]["drop"]["packets"])
    );
    assert_eq!(
        metric(&m, "tagwall_denied_events_total", &[("outcome", "emitted")]),
        u(&r["events"]["emitted"]["packets"])
    );
    assert_eq!(
        metric(&m, "tagwall_denied_log_lines_total", &[]),
        lines.len() as u64
    );
    assert_eq!(
        metric(&m, "tagwall_policy_generation", &[]),
        u(&r["daemon"]["generation"])
    );
    assert!(metric(&m, "tagwall_conntrack_entries", &[]) >= 1);
    assert!(metric(&m, "tagwall_policy_prefixes", &[]) >= 10);
    assert_eq!(metric(&m, "tagwall_reloads_total", &[]), 0);
    assert_eq!(metric(&m, "tagwall_dns_up", &[]), 0);

    // Deltas: a first report is the base; K more datagrams show as +K.
    let _ = report(&lab, &[]);
    const K: usize = 3;
    assert_eq!(
        send_udp(&lab.client, sa(CLIENT_V4, 40556), sa(INET_B_V4, 5300), K),
        K
    );
    assert_eq!(
        send_udp(&lab.client, sa(CLIENT_V4, 40557), sa(INET_B_V4, 5301), 5),
        5
    );
    let d = report(&lab, &["--since-last"]);
    assert_eq!(d["since_last"]["counters_reset"], false);
    let t = find(&d["top_denied"]["top"], |t| {
        t["remote"] == INET_B_V4 && t["port"] == 5300
    })
    .unwrap();
    assert_eq!(
        (u(&t["packets"]), u(&t["delta"]["packets"])),
        (M as u64 + K as u64, K as u64),
        "{t}"
    );
    let t = find(&d["top_denied"]["top"], |t| {
        t["remote"] == INET_B_V4 && t["port"] == 5301
    })
    .unwrap();
    assert_eq!(u(&t["delta"]["packets"]), 5, "{t}");
    let nm = find(&d["drops"], |x| x["reason"] == "no_match").unwrap();
    assert_eq!(u(&nm["delta"]["packets"]), K as u64 + 5, "{nm}");
    // The table form renders the same report.
    let table =
        String::from_utf8_lossy(&lab.tagwall("report", &["--since-last", "--no-save"]).stdout)
            .into_owned();
    eprintln!("{table}\nfirst log line: {}", udp[0]);
    for want in [
        "CATALOG COVERAGE",
        AML_REQ,
        "TOP DENIED",
        "10.77.3.2",
        "SUGGESTIONS",
        "+",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }

    // Pasting the suggestion into the config and reloading allows what was denied.
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push('\n');
    text.push_str(toml);
    std::fs::write(&policy, text).unwrap();
    let out = lab.tagwall_raw(&lab.gw_in, "reload", &[]);
    assert!(
        out.status.success(),
        "reload with the suggestion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        udp_exchange(&lab.client, sa(INET_B_V4, 5300), 2, 16, long),
        2
    );
    let m = scrape(&lab.gw).unwrap();
    assert_eq!(metric(&m, "tagwall_reloads_total", &[]), 1);
    assert_eq!(metric(&m, "tagwall_last_reload_success", &[]), 1);
    assert!(metric(&m, "tagwall_last_reload_timestamp_seconds", &[]) > 1_700_000_000);
    assert_eq!(
        metric(&m, "tagwall_policy_generation", &[]),
        u(&r["daemon"]["generation"]) + 1
    );
    assert!(
        metric(
            &m,
            "tagwall_rule_packets_total",
            &[("rule", "user:allow-10-77-3-2-udp-5300")]
        ) >= 2,
        "{m}"
    );
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

#[test]
fn a_flood_is_rate_limited_in_the_kernel_and_metrics_keep_answering() {
    let lab = Lab::new();
    let log = lab.dir.path.join("denied.jsonl");
    let policy = lab.write_policy(
        "flood.toml",
        &format!(
            r#"
[reports]
denied_log = "{}"
events_per_second = 20
events_burst = 20
metrics_listen = "127.0.0.1:{METRICS_PORT}"

[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]
"#,
            log.display()
        ),
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    let start = Instant::now();
    // At least 20k denied datagrams as fast as the client can send them, from a
    // thread, until this thread has scraped /metrics a few times meanwhile.
    const FLOOD: usize = 20_000;
    const SCRAPES: usize = 5;
    let scraped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ns = lab.client.name.clone();
    let sc = scraped.clone();
    let flood = std::thread::spawn(move || {
        tagwall_tests::netns::enter_netns(&ns);
        let s = UdpSocket::bind(sa(CLIENT_V4, 41000)).expect("bind");
        let to = sa(INET_B_V4, 5300);
        let mut sent = 0usize;
        let mut i = 0u64;
        while sent < FLOOD || sc.load(Ordering::Relaxed) < SCRAPES {
            sent += usize::from(s.send_to(&i.to_be_bytes(), to).is_ok());
            i += 1;
        }
        sent
    });
    while !flood.is_finished() {
        let t = Instant::now();
        let m = scrape(&lab.gw)
            .unwrap_or_else(|e| panic!("/metrics failed during the flood: {e}\n{}", daemon.log()));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(m.contains("tagwall_denied_events_total"));
        scraped.fetch_add(1, Ordering::Relaxed);
    }
    let scrapes = scraped.load(Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(sent >= FLOOD);
    std::thread::sleep(Duration::from_millis(500));
    let (r, lines) = wait_for_log(&lab, &log);
    let dropped = drops(&r, "outbound", "no_match");
    // Whatever reached the datapath was dropped and counted (veth may shed some
    // under load before XDP sees them).
    assert!(
        dropped > (FLOOD / 2) as u64 && dropped <= sent as u64,
        "{dropped} of {sent}"
    );
    let t = find(&r["top_denied"]["top"], |t| {
        t["remote"] == INET_B_V4 && t["port"] == 5300
    })
    .unwrap();
    assert_eq!(
        u(&t["packets"]),
        dropped,
        "the top-denied table is not rate limited"
    );
    // Every drop is an event or a counted suppression.
    let ev = &r["events"];
    assert_eq!(events_total(&r), stage2_drops(&r), "{ev:#}");
    let emitted = u(&ev["emitted"]["packets"]);
    let limited = u(&ev["rate_limited"]["packets"]);
    // At most the burst plus the rate over the run.
    let cap = 20.0 + 20.0 * (elapsed + 1.0);
    assert!(
        emitted >= 1 && (emitted as f64) <= cap,
        "emitted {emitted}, cap {cap:.0} after {elapsed:.1} s"
    );
    assert!(limited >= dropped - emitted, "{ev:#}");
    assert_eq!(lines.len() as u64, emitted);
    eprintln!(
        "flood: {sent} sent, {dropped} dropped in {elapsed:.2} s; {emitted} events, \
         {limited} rate-limited; {scrapes} scrapes during the flood"
    );
    let m = scrape(&lab.gw).unwrap();
    assert_eq!(
        metric(
            &m,
            "tagwall_denied_events_total",
            &[("outcome", "rate_limited")]
        ),
        limited
    );
    assert_eq!(metric(&m, "tagwall_denied_log_lines_total", &[]), emitted);
    assert!(scrapes >= SCRAPES);
    // Not an HTTP server for anything else.
    let out = lab
        .gw
        .cmd("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{METRICS_PORT}/nope"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let log_text = daemon.stop();
    assert!(log_text.contains("metrics served at"), "{log_text}");
    let _ = lab.tagwall("detach", &[]);
}

const PYPI_ADDR: &str = "10.77.2.51";

#[test]
fn dns_names_label_denied_flows_and_suggestions() {
    let lab = Lab::new();
    lab.add_inet_a_address(PYPI_ADDR);
    let _dns = lab.start_dnsmasq(&[("pypi.org", PYPI_ADDR, 300)]);
    let log = lab.dir.path.join("denied.jsonl");
    let policy = lab.write_policy(
        "dns.toml",
        &format!(
            r#"
[dns]
mode = "proxy"
listen = ["{GW_V4}:53"]
clients = ["10.77.1.0/24"]
upstreams = ["{INET_B_V4}:53"]

[reports]
denied_log = "{}"

[[rules]]
name = "pypi"
fqdns = ["pypi.org"]
protocol = "tcp"
ports = [8080]
"#,
            log.display()
        ),
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    let answer = lab
        .client
        .cmd("dig")
        .args([
            &format!("@{GW_V4}"),
            "pypi.org",
            "A",
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer.stdout).contains(PYPI_ADDR),
        "proxy answer: {}\n{}",
        String::from_utf8_lossy(&answer.stdout),
        daemon.log()
    );
    // The address is allowed for TCP 8080 only: UDP 5300 to it is a port drop.
    assert_eq!(
        send_udp(&lab.client, sa(CLIENT_V4, 40777), sa(PYPI_ADDR, 5300), 3),
        3
    );
    let (_, lines) = wait_for_log(&lab, &log);
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l["destination"] == PYPI_ADDR)
        .collect();
    assert_eq!(ours.len(), 3, "{lines:#?}");
    for l in ours {
        assert_eq!(l["fqdn"], "pypi.org", "{l}");
        assert_eq!(l["reason"], "port", "{l}");
        assert_eq!(l["source_port"], 40777, "{l}");
    }
    // The report reads the DNS state file, which the daemon rewrites every few
    // seconds.
    let r = wait_for(Duration::from_secs(20), || {
        let r = report(&lab, &["--no-save"]);
        let named = find(&r["top_denied"]["top"], |t| t["remote"] == PYPI_ADDR).is_some_and(|t| {
            t["fqdns"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "pypi.org"))
        });
        named.then_some(r)
    })
    .expect("the report never named pypi.org");
    let t = find(&r["top_denied"]["top"], |t| t["remote"] == PYPI_ADDR).unwrap();
    assert_eq!(
        (u(&t["packets"]), &t["last_reason"]),
        (3, &Value::from("port"))
    );
    assert!(
        t["covered_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "user:pypi (tcp 8080) via pypi.org"),
        "{t}"
    );
    let s = find(&r["suggestions"], |s| s["remote"] == PYPI_ADDR).unwrap();
    let toml = s["toml"].as_str().unwrap();
    assert!(
        toml.contains("fqdns = [\"pypi.org\"]") && toml.contains("ports = [5300]"),
        "{toml}"
    );
    assert_eq!(s["fqdn"], "pypi.org");
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

#[test]
fn events_of_a_datapath_without_daemon_are_written_by_the_next_one() {
    let lab = Lab::new();
    let log = lab.dir.path.join("denied.jsonl");
    let policy = lab.write_policy(
        "restart.toml",
        &format!(
            r#"
[reports]
denied_log = "{}"

[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]
"#,
            log.display()
        ),
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    assert_eq!(
        send_udp(&lab.client, sa(CLIENT_V4, 42000), sa(INET_B_V4, 5300), 2),
        2
    );
    let (_, before) = wait_for_log(&lab, &log);
    assert_eq!(before.len(), 2);
    // No goodbye; the pinned datapath keeps enforcing and queues events in its ring.
    let _ = daemon.kill9();
    const M: usize = 5;
    assert_eq!(
        send_udp(&lab.client, sa(CLIENT_V4, 42001), sa(INET_B_V4, 5300), M),
        M
    );
    std::thread::sleep(Duration::from_millis(300));
    let restarted_at = rfc3339(unix_ns());
    let daemon = lab.start_tagwall(&policy, &[]);
    assert!(
        daemon.log().contains("adopted the pinned link"),
        "{}",
        daemon.log()
    );
    let lines = wait_for(Duration::from_secs(10), || {
        let l = log_lines(&log);
        (l.len() == 2 + M).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "{} lines after the restart\n{}",
            log_lines(&log).len(),
            daemon.log()
        )
    });
    let queued: Vec<&Value> = lines.iter().filter(|l| l["source_port"] == 42001).collect();
    assert_eq!(queued.len(), M);
    for l in queued {
        // Stamped when dropped, not when written.
        assert!(l["time"].as_str().unwrap() < restarted_at.as_str(), "{l}");
    }
    // Counters carried on: all 2 + M drops, all emitted.
    let r = report(&lab, &["--no-save"]);
    assert_eq!(u(&r["events"]["emitted"]["packets"]), (2 + M) as u64);
    assert_eq!(drops(&r, "outbound", "no_match"), (2 + M) as u64);
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}

/// The top-denied table is an LRU: with a few entries, drops of keys that share a
/// per-CPU slot (so each one moves the one before it into the table) evict an
/// older key. When that key is denied again, the report shows only its new drops,
/// and `--since-last` counts them, not the difference from its old total.
#[test]
fn an_evicted_top_denied_entry_comes_back_with_only_its_new_drops() {
    const CAPACITY: usize = 16;
    let lab = Lab::new();
    let policy = lab.write_policy(
        "small-top.toml",
        &format!(
            r#"
[reports]
top_denied_entries = {CAPACITY}

[[rules]]
name = "web-a"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]
"#
        ),
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    let from = sa(CLIENT_V4, 41000);
    let key = sa(INET_B_V4, 5300);
    // Other destinations in inet-b's subnet (the gateway drops them all) whose keys
    // share the key's slot.
    let slot = udp_top_slot(INET_B_V4.parse().expect("IPv4 literal"), 5300);
    let mut others = (3..=250u8)
        .flat_map(|h| (1024..=u16::MAX).map(move |p| (Ipv4Addr::new(10, 77, 3, h), p)))
        .filter(|(a, p)| udp_top_slot(*a, *p) == slot)
        .map(|(a, p)| SocketAddr::new(a.into(), p));
    let row = |r: &Value, to: SocketAddr| {
        find(&r["top_denied"]["top"], |t| {
            t["remote"] == to.ip().to_string() && t["port"] == to.port()
        })
        .cloned()
    };

    assert_eq!(send_udp(&lab.client, from, key, 3), 3);
    let r1 = report(&lab, &["--top", "1000"]);
    assert_eq!(u(&r1["top_denied"]["capacity"]), CAPACITY as u64);
    let t = row(&r1, key).expect("the key reported");
    assert_eq!(u(&t["packets"]), 3, "{t}");

    // The kernel's LRU is approximate (a recently used entry survives a round of
    // evictions): new keys until the key has gone.
    let mut rounds = 0;
    loop {
        let batch: Vec<SocketAddr> = others.by_ref().take(3 * CAPACITY).collect();
        assert_eq!(batch.len(), 3 * CAPACITY, "keys that share the slot");
        for to in &batch {
            assert_eq!(send_udp(&lab.client, from, *to, 1), 1);
        }
        let r2 = report(&lab, &["--top", "1000", "--no-save"]);
        let entries = u(&r2["top_denied"]["entries"]);
        // The table's entries, plus what the slots hold (on x86-64 the last key's,
        // one per CPU at most).
        assert!(
            entries <= (CAPACITY + 2) as u64,
            "{entries} keys reported with a table of {CAPACITY}"
        );
        let last = row(&r2, *batch.last().unwrap()).expect("the latest key is reported");
        assert_eq!(u(&last["packets"]), 1);
        rounds += 1;
        if row(&r2, key).is_none() {
            break;
        }
        assert!(
            rounds < 10,
            "the key outlived {rounds} rounds: {}",
            r2["top_denied"]
        );
    }

    assert_eq!(send_udp(&lab.client, from, key, 2), 2);
    let r3 = report(&lab, &["--top", "1000", "--since-last"]);
    let t = row(&r3, key).expect("the key reported again");
    assert_eq!(
        (u(&t["packets"]), u(&t["delta"]["packets"])),
        (2, 2),
        "only the new entry's drops, all of them new: {t}"
    );
    eprintln!("evicted after {rounds} rounds of {} keys", 3 * CAPACITY);
    daemon.stop();
    let _ = lab.tagwall("detach", &[]);
}
