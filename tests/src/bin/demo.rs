//! `cargo xtask demo`: a lab of namespaces (client, gateway with tagwall on its
//! client-facing veth, two "internet" hosts), allowed and denied connections, the
//! counters, and cleanup. Needs root.
//!
//! The embedded default is an Azure ML workspace policy: the built-in catalog's
//! workspace and compute requirements (public cloud, westus2), resolved against a
//! lab Service Tags file that this demo writes itself, in which AzureMachineLearning
//! is inet-a's network. `--policy FILE` runs your own policy instead.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use tagwall_tests::lab::*;

const DEFAULT_POLICY: &str = r#"# tagwall demo: an Azure ML workspace in westus2 (catalog requirements), plus one
# rule of our own.
service_tags = "lab-servicetags.json"

[azureml]
cloud = "public"
region = "westus2"
scenarios = ["workspace", "compute"]

[[rules]]
name = "inet-a-web"
to = ["10.77.2.2/32"]
protocol = "tcp"
ports = [8080]
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
    let servers = [
        tcp_echo(&lab.inet_a, sa(INET_A_V4, 443)),
        tcp_echo(&lab.inet_a, sa(INET_A_V6, 443)),
        tcp_echo(&lab.inet_a, sa(INET_A_V4, 444)),
        tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080)),
        tcp_echo(&lab.inet_b, sa(INET_B_V4, 443)),
    ];

    let policy = match &policy_file {
        Some(p) => p.clone(),
        None => {
            std::fs::write(
                lab.dir.path.join("lab-servicetags.json"),
                lab_service_tags(),
            )
            .expect("write lab tags");
            lab.write_policy("demo.toml", DEFAULT_POLICY)
        }
    };
    if policy_file.is_none() {
        let out = std::process::Command::new(tagwall_bin())
            .args(["compile", "--config"])
            .arg(&policy)
            .output()
            .expect("tagwall compile");
        println!(
            "== tagwall compile\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "== policy {}:\n{}",
        policy.display(),
        std::fs::read_to_string(&policy).unwrap_or_default()
    );
    let daemon = lab.start_tagwall(&policy, &[]);
    println!("== tagwall run attached");

    let mut ok = true;
    for (what, to, expect) in [
        ("AzureMachineLearning tcp/443 ", sa(INET_A_V4, 443), true),
        ("AzureMachineLearning v6 443  ", sa(INET_A_V6, 443), true),
        ("user rule inet-a-web 8080    ", sa(INET_A_V4, 8080), true),
        ("AzureMachineLearning tcp/444 ", sa(INET_A_V4, 444), false),
        ("no requirement (inet-b)      ", sa(INET_B_V4, 443), false),
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
    drop(servers);
    if policy_file.is_none() {
        for target in [
            format!("{INET_A_V4}:443"),
            format!("{INET_A_V4}:444"),
            format!("{INET_B_V4}:443"),
        ] {
            let out = std::process::Command::new(tagwall_bin())
                .args(["explain", "--config"])
                .arg(&policy)
                .arg(&target)
                .output()
                .expect("tagwall explain");
            println!(
                "== tagwall explain {target}\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
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
