//! `cargo xtask demo`: a lab of namespaces (client, gateway with tagwall on its
//! client-facing veth, two "internet" hosts), one allowed and one denied connection,
//! the counters, and cleanup. Needs root. The policy is the embedded default lab
//! policy unless `--policy FILE` is given.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use tagwall_tests::lab::*;

const DEFAULT_POLICY: &str = r#"# tagwall demo policy: the client may reach inet-a on TCP 443 and 8080 only.
[[rules]]
name = "inet-a-web"
to = ["10.77.2.2/32", "fd77:2::2/128"]
protocol = "tcp"
ports = [443, 8080]
"#;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut policy_file: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--policy" => policy_file = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: demo [--policy FILE]   (run as root; see README)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("demo: unknown argument {other:?}; try --help");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("== building the lab: client -- gateway(tagwall) -- inet-a / inet-b");
    let lab = Lab::new();
    println!(
        "   client {CLIENT_V4} / {CLIENT_V6}, gateway {GW_V4} (tagwall on {}), inet-a {INET_A_V4}, inet-b {INET_B_V4}",
        lab.gw_in
    );
    let _a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let _a6 = tcp_echo(&lab.inet_a, sa(INET_A_V6, 8080));
    let _b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));

    let policy = match &policy_file {
        Some(p) => p.clone(),
        None => lab.write_policy("demo.toml", DEFAULT_POLICY),
    };
    println!(
        "== policy {}:\n{}",
        policy.display(),
        std::fs::read_to_string(&policy).unwrap_or_default()
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    println!("== tagwall run attached");

    let mut ok = true;
    for (what, to, expect) in [
        ("allowed", sa(INET_A_V4, 8080), true),
        ("allowed", sa(INET_A_V6, 8080), true),
        ("denied ", sa(INET_B_V4, 8080), false),
    ] {
        let r = tcp_exchange(
            &lab.client,
            to,
            Duration::from_secs(if expect { 3 } else { 1 }),
        );
        let got = r.is_ok();
        println!(
            "   {what} client -> {to}: {}{}",
            match &r {
                Ok(()) => "connected, echo received".to_owned(),
                Err(e) => format!("no connection ({e})"),
            },
            if got == expect {
                ""
            } else {
                "   <-- UNEXPECTED"
            }
        );
        ok &= got == expect;
    }
    println!("== tagwall counters\n");
    print!(
        "{}",
        String::from_utf8_lossy(&lab.tagwall("counters", &[]).stdout)
    );
    daemon.stop();
    drop(lab);
    println!("\n== lab removed");
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("demo: a connection did not behave as the policy says");
        ExitCode::FAILURE
    }
}
