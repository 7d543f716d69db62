//! `dnsbench`: the DNS proxy's added latency and queries/s (see
//! `tagwall_tests::dnsbench`). Root (namespaces); prints Markdown.
//!
//! Usage: `dnsbench [--queries N] [--seconds S] [--clients C] [--window W]`

use std::{process::ExitCode, time::Duration};

use tagwall_tests::dnsbench::{DnsBenchOpts, run};

fn main() -> ExitCode {
    let mut o = DnsBenchOpts::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> Option<u64> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("dnsbench: {what} needs a number");
            }
            v
        };
        let ok = match a.as_str() {
            "--queries" => num("--queries").map(|v| o.queries = v as usize),
            "--seconds" => num("--seconds").map(|v| o.duration = Duration::from_secs(v)),
            "--clients" => num("--clients").map(|v| o.clients = v.max(1) as usize),
            "--window" => num("--window").map(|v| o.window = v.max(1) as usize),
            _ => {
                eprintln!("usage: dnsbench [--queries N] [--seconds S] [--clients C] [--window W]");
                None
            }
        };
        if ok.is_none() {
            return ExitCode::FAILURE;
        }
    }
    print!("{}", run(&o).markdown());
    ExitCode::SUCCESS
}
