//! `cargo xtask bench`: per-packet cost of the XDP program with BPF_PROG_TEST_RUN
//! against the floor (an XDP program that only passes) measured in the same run, and
//! control-plane costs (compile, map load) for the same policies. Writes a Markdown
//! report (BENCHMARKS.md) with the command and the machine.
//!
//! Figures are ratios against a baseline of the same run; nothing here asserts a time.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tagwall::{
    compile::{CompiledPolicy, compile},
    dataplane::{Dataplane, LoadOptions, Settings},
    rules::{Direction, PortRange, Proto, Rule},
};
use tagwall_common::reports::{REPORT_F_SLOTS, ReportConfig};
use tagwall_tests::pkt::{TCP_ACK, tcp4, tcp4_flags, tcp6, tcp6_flags, udp4, udp6};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

#[derive(Clone)]
struct Opts {
    repeat: u32,
    runs: usize,
    output: Option<PathBuf>,
    max_synthetic: usize,
    /// `xdp` (per-packet and control plane, the default), `throughput`, or `all`.
    section: String,
    /// Only the per-packet cases and throughput policies whose name contains this
    /// (quick iterations while profiling; the committed BENCHMARKS.md is made
    /// without it).
    case: Option<String>,
    /// Throughput: only the filters whose label contains this (and the baselines).
    filter: Option<String>,
}

/// A policy to measure and the packets to send through it.
struct Case {
    name: String,
    rules: Vec<Rule>,
    /// (label, frame, expected XDP action)
    frames: Vec<(String, Vec<u8>, u32)>,
}

struct Row {
    case: String,
    /// Program and state: "XDP stateless", "XDP conntrack", "TC conntrack".
    mode: &'static str,
    packet: String,
    ns: f64,
    floor_ns: f64,
    /// Median of the per-run ratios program / floor (each pair measured back to
    /// back, so slow drifts of the machine cancel out).
    ratio: f64,
    /// The lowest and highest of the passes' ratios (`ratio` each with one pass):
    /// how far the machine's slow stretches moved the row.
    ratio_range: (f64, f64),
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-packet nanoseconds of one test run of `repeat` packets.
fn measure<P>(prog: &P, frame: &[u8], expect: u32, o: &Opts) -> anyhow::Result<f64>
where
    P: TestRun<Result = TestRunResult> + for<'a> TestRun<Opts<'a> = TestRunOptions<'a>>,
{
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat: o.repeat,
        ..TestRunOptions::default()
    })?;
    anyhow::ensure!(
        r.return_value == expect,
        "program returned {} where {expect} was expected: the benchmark packet is wrong",
        r.return_value
    );
    // The kernel reports the mean duration of one repetition.
    Ok(r.duration.as_nanos() as f64)
}

/// Unreported runs after each change of the datapath's state (load, apply).
const WARM_UP_RUNS: usize = 5;
/// Warm-up time after a load, before the first reported row.
const WARM_UP_AFTER_LOAD: Duration = Duration::from_secs(3);
/// Mode of the rows that measure tracking with the flow cache off (the table path).
const NO_CACHE: &str = "XDP conntrack, no flow cache";
/// Mode of the rows that measure denied packets with the default drop reporting.
const REPORTS_ON: &str = "XDP conntrack, top-denied on";
/// Mode of the rows that measure drop reporting without the slots (as the daemon
/// runs it on a CPU that does not keep the slots' order, and about what a drop
/// whose key takes another's slot pays for the table).
const REPORTS_NO_SLOTS: &str = "XDP conntrack, top-denied, no slots";
/// Modes of the rows that measure a gateway with internal prefixes (directional).
const DIRECTIONAL_STATELESS: &str = "XDP stateless, directional";
const DIRECTIONAL_CONNTRACK: &str = "XDP conntrack, directional";
/// Mode of the rows that measure denied packets whose presence-filter slot a live
/// flow has stamped (every slot stamped, as in a table far fuller than the filter).
const FILTER_TAKEN: &str = "XDP conntrack, filter slot taken";

/// Which tagwall program a row measures, against the floor of its type.
#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    TcEgress,
}

/// `runs` pairs of (floor run, program run), back to back: the medians of the floor
/// and program times and of the per-pair ratios.
fn measure_pair(
    dp: &mut Dataplane,
    hook: Hook,
    frame: &[u8],
    expect_xdp: u32,
    o: &Opts,
) -> anyhow::Result<(f64, f64, f64)> {
    let (mut progs, mut floors, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let (floor, prog) = match hook {
            Hook::Xdp => (
                measure(dp.floor()?, frame, XDP_PASS, o)?,
                measure(dp.xdp(), frame, expect_xdp, o)?,
            ),
            Hook::TcEgress => {
                let want = if expect_xdp == XDP_PASS {
                    TC_ACT_OK
                } else {
                    TC_ACT_SHOT
                };
                (
                    measure(dp.tc_floor()?, frame, TC_ACT_OK, o)?,
                    measure(dp.tc(tagwall_common::names::PROG_TC_EGRESS), frame, want, o)?,
                )
            }
        };
        progs.push(prog);
        floors.push(floor);
        ratios.push(prog / floor);
    }
    Ok((median(progs), median(floors), median(ratios)))
}

fn rule(id: u32, name: &str, prefixes: Vec<IpNet>, ports: &[u16]) -> Rule {
    Rule {
        id,
        name: name.to_owned(),
        direction: Direction::Outbound,
        prefixes,
        proto: Proto::TCP,
        ports: ports.iter().map(|p| PortRange::single(*p)).collect(),
        origin: "bench".into(),
    }
}

/// `n` random prefixes (80% v4 /12../32, 20% v6 /32../128) spread over 64 rules, all
/// outside 198.18.0.0/15 and 2001:db8::/32 (the miss addresses).
fn synthetic(n: usize, seed: u64) -> (Vec<Rule>, Ipv4Addr, Ipv6Addr) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut per_rule: Vec<Vec<IpNet>> = vec![Vec::new(); 64];
    let (mut hit4, mut hit6) = (None, None);
    for i in 0..n {
        let miss4 = Ipv4Addr::new(198, 18, 0, 1);
        let net = loop {
            let net = if rng.random_bool(0.8) {
                let a: u32 = rng.random();
                IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(a), rng.random_range(12..=32))
                        .expect("len")
                        .trunc(),
                )
            } else {
                let a: u128 = (0x2a01u128 << 112) | (rng.random::<u128>() >> 16);
                IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(a), rng.random_range(32..=128))
                        .expect("len")
                        .trunc(),
                )
            };
            // Keep the miss address uncovered.
            if !net.contains(&std::net::IpAddr::V4(miss4)) {
                break net;
            }
        };
        match net {
            IpNet::V4(n4) if hit4.is_none() && n4.prefix_len() == 32 => hit4 = Some(n4.addr()),
            IpNet::V6(n6) if hit6.is_none() && n6.prefix_len() == 128 => hit6 = Some(n6.addr()),
            _ => {}
        }
        per_rule[i % 64].push(net);
    }
    // Guarantee a known host in each family.
    let h4 = hit4.unwrap_or(Ipv4Addr::new(100, 64, 0, 1));
    let h6 = hit6.unwrap_or("2a01::1".parse().expect("literal"));
    per_rule[0].push(IpNet::V4(Ipv4Net::new(h4, 32).expect("len")));
    per_rule[0].push(IpNet::V6(Ipv6Net::new(h6, 128).expect("len")));
    let rules = per_rule
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            rule(
                u32::try_from(i + 1).expect("small"),
                &format!("syn{i}"),
                p,
                &[443, 8443],
            )
        })
        .collect();
    (rules, h4, h6)
}

/// The allowed packets carry ACK, as the packets of an established connection do
/// (with tracking on they are served as one after the first); the denied ones are
/// SYNs, connection attempts.
fn frames(hit4: Ipv4Addr, hit6: Ipv6Addr) -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "v4 hit tcp/443".into(),
            tcp4_flags(hit4, 443, TCP_ACK),
            XDP_PASS,
        ),
        (
            "v4 miss".into(),
            tcp4(Ipv4Addr::new(198, 18, 0, 1), 443),
            XDP_DROP,
        ),
        (
            "v6 hit tcp/443".into(),
            tcp6_flags(hit6, 443, TCP_ACK),
            XDP_PASS,
        ),
        (
            "v6 miss".into(),
            tcp6("2001:db8::1".parse().expect("literal"), 443),
            XDP_DROP,
        ),
    ]
}

/// Denied packets that are not connection attempts: UDP datagrams (QUIC) to the miss
/// addresses. With tracking on, such a packet may be a reply of a flow, so unlike a
/// denied SYN it meets the flow cache (in stage 1) and the presence filter, and on a
/// taken filter slot the flow table. Measured where tracking is on.
fn denied_datagrams() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "v4 miss udp/443".into(),
            udp4(Ipv4Addr::new(198, 18, 0, 1), 443),
            XDP_DROP,
        ),
        (
            "v6 miss udp/443".into(),
            udp6("2001:db8::1".parse().expect("literal"), 443),
            XDP_DROP,
        ),
    ]
}

struct Control {
    case: String,
    rules: usize,
    prefixes_in: usize,
    entries: usize,
    compile: Duration,
    load: Duration,
    /// Median time of applying the policy again (write the inactive slot, switch,
    /// clear the old one), as a reload does after compiling.
    reswitch: Duration,
    /// Multibit-trie nodes the policy uses; `None`: it fell back to the LPM tries.
    lookup_nodes: Option<u32>,
}

fn bench_case(
    case: &Case,
    o: &Opts,
    rows: &mut Vec<Row>,
    control: &mut Vec<Control>,
    verifier: &mut Vec<(String, Option<u32>)>,
) -> anyhow::Result<()> {
    let prefixes_in: usize = case.rules.iter().map(|r| r.prefixes.len()).sum();
    let t = Instant::now();
    let policy: CompiledPolicy = compile(&case.rules, 1 << 16)?;
    let compile_t = t.elapsed();
    let opts = LoadOptions {
        // Both slots live in the trie during a switch.
        max_prefixes: u32::try_from(2 * policy.prefixes() + 1024).expect("fits"),
        sets_per_slot: u32::try_from(policy.sets.len() + 1024).expect("fits"),
        ..LoadOptions::default()
    };
    let mut dp = Dataplane::load(&opts)?;
    let loaded = Instant::now();
    if verifier.is_empty() {
        *verifier = dp.verified_insns();
    }
    let t = Instant::now();
    let applied = dp.apply(&policy, &Settings::stateless(false))?;
    let load_t = t.elapsed();
    let mut switches = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        dp.apply(&policy, &Settings::stateless(false))?;
        switches.push(t.elapsed().as_secs_f64());
    }
    control.push(Control {
        case: case.name.clone(),
        rules: case.rules.len(),
        prefixes_in,
        entries: policy.prefixes(),
        compile: compile_t,
        load: load_t,
        reswitch: Duration::from_secs_f64(median(switches)),
        lookup_nodes: applied.lookup_nodes,
    });
    let mut row = |mode: &'static str, label: &str, (ns, floor_ns, ratio): (f64, f64, f64)| {
        eprintln!(
            "bench: {:<28} {mode:<14} {label:<16} {ns:>7.1} ns  floor {floor_ns:>6.1} ns  \
             {ratio:.2}x",
            case.name
        );
        rows.push(Row {
            case: case.name.clone(),
            mode,
            packet: label.to_owned(),
            ns,
            floor_ns,
            ratio,
            ratio_range: (ratio, ratio),
        });
    };
    // Runs not reported, after every change of the datapath's state below: the first
    // row after a load or an apply measured up to half again as slow as the
    // same row later (docs/profiling.md, "Noise").
    let warm_up = |dp: &mut Dataplane| -> anyhow::Result<()> {
        let warm = Opts {
            runs: WARM_UP_RUNS,
            ..o.clone()
        };
        if let Some((_, frame, expect)) = case.frames.first() {
            measure_pair(dp, Hook::Xdp, frame, *expect, &warm)?;
        }
        Ok(())
    };
    warm_up(&mut dp)?;
    // After the load, for a while longer: the first rows measured in the two seconds
    // after it ran up to 40% slower, floor included, in some passes (with five runs
    // of warm-up only; docs/profiling.md, "Noise").
    while loaded.elapsed() < WARM_UP_AFTER_LOAD {
        warm_up(&mut dp)?;
    }
    for (label, frame, expect) in &case.frames {
        let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
        row("XDP stateless", label, m);
    }
    // Connection tracking on (the default): a repeated allowed packet is a tracked
    // flow after the first; a denied one looks the flow table up, then the policy.
    let tracked = Settings {
        conntrack: Some(tagwall_common::ct::CtTimeouts::default()),
        ..Settings::stateless(false)
    };
    dp.apply(&policy, &tracked)?;
    warm_up(&mut dp)?;
    let datagrams = denied_datagrams();
    for (label, frame, expect) in case.frames.iter().chain(&datagrams) {
        let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
        row("XDP conntrack", label, m);
    }
    for (label, frame, expect) in case.frames.iter().chain(&datagrams) {
        let m = measure_pair(&mut dp, Hook::TcEgress, frame, *expect, o)?;
        row("TC conntrack", label, m);
    }
    // The flow table path every tracked packet took before the per-CPU flow cache,
    // and a packet still takes when the cache misses (a flow's first packets on a
    // CPU, every refresh time, slot collisions): the cache turned off.
    let uncached = Settings {
        conntrack: Some(tagwall_common::ct::CtTimeouts {
            cache_refresh_ms: 0,
            ..tagwall_common::ct::CtTimeouts::default()
        }),
        ..Settings::stateless(false)
    };
    dp.apply(&policy, &uncached)?;
    warm_up(&mut dp)?;
    for (label, frame, expect) in &case.frames {
        let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
        row(NO_CACHE, label, m);
    }
    // A denied packet finds no flow through the presence filter unless a live flow
    // stamped its slot; then it pays the table lookup as every denied packet did
    // before the filter. A denied connection attempt (SYN) never gets that far: the
    // rules judge it first.
    dp.apply(&policy, &tracked)?;
    tagwall_tests::harness::stamp_ct_filter(&dp, u64::MAX)?;
    warm_up(&mut dp)?;
    let denied = case.frames.iter().filter(|f| f.2 == XDP_DROP);
    for (label, frame, expect) in denied.chain(&datagrams) {
        let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
        row(FILTER_TAKEN, label, m);
    }
    tagwall_tests::harness::stamp_ct_filter(&dp, 0)?;
    // A gateway with `internal_prefixes`, as the README's example sets it up: the
    // direction of a packet that connection tracking does not serve comes from a walk
    // of the internal prefixes first (the benchmark's sources are internal, so every
    // packet is outbound, with the verdicts of the rows above).
    let internal: Vec<IpNet> = vec![
        "10.0.0.0/16".parse().expect("literal"),
        "fd00::/16".parse().expect("literal"),
    ];
    for (mode, settings) in [
        (DIRECTIONAL_STATELESS, Settings::stateless(false)),
        (DIRECTIONAL_CONNTRACK, tracked.clone()),
    ] {
        let settings = Settings {
            internal: internal.clone(),
            ..settings
        };
        dp.apply(&policy, &settings)?;
        warm_up(&mut dp)?;
        for (label, frame, expect) in &case.frames {
            let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
            row(mode, label, m);
        }
    }
    // A denied packet as `tagwall run` handles it by default: counted in the
    // top-denied table (on x86-64 in its key's per-CPU slot, in front of the LRU
    // hash). The rows above leave reporting off, as `[reports] top_denied_entries =
    // 0` does; allowed packets never report. Then the same without the slots: each
    // drop looks its key up in the table.
    dp.apply(&policy, &tracked)?;
    let reports = tagwall::reports::config::ReportsConfig::default()
        .datapath(tagwall::reports::config::online_cpus());
    let no_slots = ReportConfig {
        flags: reports.flags & !REPORT_F_SLOTS,
        ..reports
    };
    for (mode, rc) in [(REPORTS_ON, reports), (REPORTS_NO_SLOTS, no_slots)] {
        dp.set_report_config(rc)?;
        warm_up(&mut dp)?;
        for (label, frame, expect) in case.frames.iter().filter(|f| f.2 == XDP_DROP) {
            let m = measure_pair(&mut dp, Hook::Xdp, frame, *expect, o)?;
            row(mode, label, m);
        }
    }
    dp.set_report_config(ReportConfig::default())?;
    Ok(())
}

/// The AML default policy (catalog, public cloud, westus2) and the full Public
/// Service Tags file as one TCP/443 rule, from the real 2025-09-08 file in
/// ../shared/testdata (read, never copied).
fn azure_cases() -> anyhow::Result<Vec<Case>> {
    use tagwall::{catalog::Catalog, config::Config, policy, servicetags::ServiceTags};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/servicetags/ServiceTags_Public_20250908.json"
    );
    let tags = ServiceTags::load(std::path::Path::new(path))?;
    let aml_tag = tags.resolve("AzureMachineLearning")?.tag;
    let hit4 = aml_tag.prefixes.iter().find_map(|p| match p {
        IpNet::V4(n) => Some(n.network()),
        IpNet::V6(_) => None,
    });
    let hit6 = aml_tag.prefixes.iter().find_map(|p| match p {
        IpNet::V6(n) => Some(n.network()),
        IpNet::V4(_) => None,
    });
    let (Some(hit4), Some(hit6)) = (hit4, hit6) else {
        anyhow::bail!("AzureMachineLearning has no v4 or v6 prefix in {path}");
    };
    let cfg = Config::parse(
        "[azureml]\ncloud = \"public\"\nregion = \"westus2\"\n",
        "bench-aml.toml",
    )?;
    let eff = policy::build(&cfg, Catalog::embedded(), Some(&tags), &[])?;
    let all: Vec<IpNet> = tags
        .tags
        .iter()
        .flat_map(|t| t.prefixes.iter().copied())
        .collect();
    Ok(vec![
        Case {
            name: "AML default (public, westus2)".into(),
            rules: eff.rules,
            frames: frames(hit4, hit6),
        },
        Case {
            name: format!("full Public tags ({} prefixes)", all.len()),
            rules: vec![rule(1, "all-public-tags", all, &[443])],
            frames: frames(hit4, hit6),
        },
    ])
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cpu}, {ncpu} CPUs, Linux {}", kernel.trim())
}

fn report(
    rows: &[Row],
    control: &[Control],
    verifier: &[(String, Option<u32>)],
    o: &Opts,
    cmd: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# tagwall benchmarks\n");
    let _ = writeln!(s, "Command: `{cmd}`  ");
    let _ = writeln!(s, "Machine: {}  ", machine());
    let _ = writeln!(
        s,
        "Method: BPF_PROG_TEST_RUN, repeat {} per run, {} runs, each run in its own pass \
         over all the cases (so a row's runs are spread over the section, minutes apart, \
         not taken within a second); the floor is a program of \
         the same type that only passes (XDP_PASS / TC_ACT_OK), run on the same packet \
         right before each tagwall run. ns columns: medians of the runs; ratio: median of \
         the per-run ratios tagwall / floor (pairs measured back to back, so the machine's \
         slow drifts cancel out); runs' ratios: the lowest and the highest of them, which \
         shows how far the machine's slow stretches of seconds (docs/profiling.md, \
         \"Noise\") moved the row. \"stateless\": \
         connection tracking off; \"conntrack\": on (the default), so a repeated allowed \
         packet is a tracked flow after the first, and from the second repeat on it is \
         served from this CPU's flow cache (refreshed from the flow table every 50 ms, \
         about once per run); \"no flow cache\": the same with the cache off \
         (`cache_refresh_ms = 0`), i.e. every tracked packet looks its flow table up, as \
         a packet does when the cache misses. Allowed packets are ACKs of an \
         established connection, denied ones SYNs (connection attempts), which the \
         rules judge before connection tracking, so a denied one never reaches the flow \
         cache, the presence filter or the flow table; \"miss udp/443\": a denied \
         datagram, which may be a flow's reply, so it meets the flow cache (stage 1) and \
         skips the flow-table lookup when the presence filter says no live flow can be \
         in it (its slot holds no stamp of a live flow: the benchmark's tables hold a few \
         flows only); \"filter slot taken\": the denied packets with every slot stamped, \
         as in a table far fuller than the filter, so each datagram looks the table up \
         (the cost before the filter). Drop reporting is off in these rows \
         (`[reports] top_denied_entries = 0`); \"top-denied on\": denied packets with \
         the default reporting of `tagwall run` (each drop counted in its key's per-CPU \
         slot in front of the top-denied LRU table; a repeated drop, as here, stays in \
         the slot); \"top-denied, no slots\": the same without the slots, as on a CPU \
         that does not keep the slots' store order (arm64): each drop looks its key up \
         in the table, about what a drop whose key takes another key's slot pays for \
         the table. \"directional\": a gateway with internal prefixes (10.0.0.0/16 \
         and fd00::/16, which hold the packets' sources), as the README's example sets \
         one up: a packet that connection tracking does not serve first walks the \
         internal prefixes for its direction. The targets below are judged on the \
         default datapath with reporting off, for the denied packets also with every \
         filter slot taken, and on the directional gateway; the other rows are shown \
         for what the table path and the reporting cost.\n",
        o.repeat, o.runs
    );
    let _ = writeln!(s, "## Per-packet cost (XDP and TC)\n");
    let _ = writeln!(
        s,
        "| policy | mode | packet | tagwall ns/pkt | floor ns/pkt | ratio | runs' ratios |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        let (lo, hi) = r.ratio_range;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.2}x | {lo:.2}-{hi:.2}x |",
            r.case, r.mode, r.packet, r.ns, r.floor_ns, r.ratio
        );
    }
    let _ = writeln!(s, "\n### Targets (worst packet of the policy)\n");
    for (prefix, target) in [("AML default", 2.0), ("full Public tags", 4.0)] {
        for mode in [
            "XDP stateless",
            "XDP conntrack",
            "TC conntrack",
            FILTER_TAKEN,
            DIRECTIONAL_STATELESS,
            DIRECTIONAL_CONNTRACK,
        ] {
            let Some(worst) = rows
                .iter()
                .filter(|r| r.case.starts_with(prefix) && r.mode == mode)
                .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
            else {
                // Left out with --case: no verdict on what was not measured.
                let _ = writeln!(s, "- {prefix}, {mode}: not measured in this run");
                continue;
            };
            let (ratio, (lo, hi)) = (worst.ratio, worst.ratio_range);
            let verdict = if ratio <= target { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "- {prefix}, {mode}: worst {ratio:.2}x floor ({}, its runs {lo:.2}-{hi:.2}x), \
                 target <= {target:.0}x: **{verdict}**",
                worst.packet
            );
        }
    }
    if !verifier.is_empty() {
        let _ = writeln!(
            s,
            "\n### Verifier headroom\n\nInstructions the verifier processed to load each \
             program (the kernel's limit is 1,000,000 per program; a change that adds \
             branches to stage 2 multiplies the paths it walks):\n"
        );
        let _ = writeln!(s, "| program | instructions processed | of the limit |");
        let _ = writeln!(s, "|---|---:|---:|");
        for (name, n) in verifier {
            match n {
                Some(n) => {
                    let _ = writeln!(s, "| {name} | {n} | {:.0}% |", f64::from(*n) / 10_000.0);
                }
                None => {
                    let _ = writeln!(s, "| {name} | (not reported by the kernel) | |");
                }
            }
        }
    }
    let _ = writeln!(s, "\n## Control plane\n");
    let _ = writeln!(
        s,
        "| policy | rules | prefixes in | entries (flattened) | lookup structure | compile | \
         map load | reload (compile + switch) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|---:|");
    for c in control {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            c.case,
            c.rules,
            c.prefixes_in,
            c.entries,
            match c.lookup_nodes {
                Some(n) => format!("multibit trie, {n} nodes ({} KiB)", n),
                None => "LPM tries (did not fit the default lookup table)".to_owned(),
            },
            c.compile.as_secs_f64() * 1e3,
            c.load.as_secs_f64() * 1e3,
            (c.compile + c.reswitch).as_secs_f64() * 1e3
        );
    }
    let _ = writeln!(
        s,
        "\nReload = compile + applying to the inactive slot, one CONFIG write to switch, \
         clearing the old slot (which includes a 5 ms grace before clearing); the median \
         of 5 switches. The daemon's SIGHUP path also re-reads the config and the tags \
         file; `tagwall reload` reports the whole time it took (microseconds in its output)."
    );
    for (prefix, target_ms) in [("AML default", 100.0)] {
        if let Some(c) = control.iter().find(|c| c.case.starts_with(prefix)) {
            let ms = (c.compile + c.reswitch).as_secs_f64() * 1e3;
            let verdict = if ms < target_ms { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "- {prefix} reload {ms:.1} ms, target < {target_ms:.0} ms: **{verdict}**"
            );
        }
    }
    if let Some(c) = control
        .iter()
        .find(|c| c.case.starts_with("full Public tags"))
    {
        let s_total = (c.compile + c.load).as_secs_f64();
        let verdict = if s_total < 2.0 { "met" } else { "MISSED" };
        let _ = writeln!(
            s,
            "- full Public tags compile + load {:.0} ms, target < 2 s: **{verdict}**",
            s_total * 1e3
        );
    }
    if o.section != "all" {
        let _ = writeln!(
            s,
            "\n## Not measured here\n\n\
             - Throughput through veth pairs against nftables, iptables + ipset and \
             xdp-filter, daemon RSS and map memory: `--section throughput` (or `all`).\n\
             - DNS proxy latency and queries/s: `--section dns` (or `all`)."
        );
    }
    let _ = writeln!(
        s,
        "\n## Where a per-packet target is missed\n\n\
         docs/profiling.md has the profile (perf \
         cpu-clock samples of the JIT-compiled programs, experiments, the object code), \
         what it led to (a multibit trie in place of the kernel LPM trie, port sets \
         scanned to their count, the clock read once per tick, one flow table per \
         address family with small keys, no BPF-to-BPF calls on a packet's path, no \
         memset calls, a per-CPU flow cache in front of the flow tables, IPv6 shortcut \
         records, a flow key built only for the flow table, one counter update per \
         packet, the settings read without a map lookup, connection attempts judged by \
         the rules before connection tracking, both stages in one program, the BPF v3 \
         instruction set) and what is left. Parsing alone measured 1.4-1.5x the floor \
         while the stages were two programs (the last time it could be measured apart), \
         which leaves the 2x target little room for the decision."
    );
    s
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        repeat: 1_000_000,
        runs: 5,
        output: None,
        max_synthetic: 1_000_000,
        section: "xdp".into(),
        case: None,
        filter: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--repeat" => {
                o.repeat = val("--repeat")?
                    .parse()
                    .map_err(|e| format!("--repeat: {e}"))?
            }
            "--runs" => o.runs = val("--runs")?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--output" => o.output = Some(PathBuf::from(val("--output")?)),
            "--max-synthetic" => {
                o.max_synthetic = val("--max-synthetic")?
                    .parse()
                    .map_err(|e| format!("--max-synthetic: {e}"))?;
            }
            "--section" => o.section = val("--section")?,
            "--case" => o.case = Some(val("--case")?),
            "--filter" => o.filter = Some(val("--filter")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (--repeat N --runs N --output FILE --max-synthetic N --section xdp|throughput|dns|all --case NAME --filter LABEL)"
                ));
            }
        }
    }
    if !["xdp", "throughput", "dns", "all"].contains(&o.section.as_str()) {
        return Err(format!(
            "--section {:?}: xdp, throughput, dns or all",
            o.section
        ));
    }
    if o.runs == 0 || o.repeat == 0 {
        return Err("--runs and --repeat must be positive".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    tagwall_tests::netns::require_root();
    let cmd = std::env::var("TAGWALL_BENCH_CMD").unwrap_or_else(|_| "cargo xtask bench".into());
    if o.section == "throughput" {
        return match throughput(&o, &cmd) {
            Some(t) => emit(&o, &format!("# tagwall benchmarks\n\n{t}")),
            None => ExitCode::FAILURE,
        };
    }
    if o.section == "dns" {
        return emit(
            &o,
            &format!("# tagwall benchmarks\n\n{}", dns_section(&cmd)),
        );
    }
    let mut cases = Vec::new();
    for n in [1_000usize, 100_000, 1_000_000] {
        if n > o.max_synthetic {
            continue;
        }
        let (rules, h4, h6) = synthetic(n, n as u64);
        cases.push(Case {
            name: format!("synthetic {n} prefixes"),
            rules,
            frames: frames(h4, h6),
        });
    }
    match azure_cases() {
        Ok(mut c) => {
            c.append(&mut cases);
            cases = c;
        }
        Err(e) => {
            eprintln!("bench: Azure cases: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(want) = &o.case {
        cases.retain(|c| c.name.contains(want.as_str()));
        if cases.is_empty() {
            eprintln!("bench: --case {want:?} matches no case");
            return ExitCode::FAILURE;
        }
    }
    // Each run of a row is taken in its own pass over all the cases, so that a row's
    // runs are spread over the whole section instead of over half a second: this VM
    // has slow phases that last minutes, and a row measured inside one stood out
    // from its neighbours (docs/profiling.md, "Noise").
    let one_run = Opts {
        runs: 1,
        ..o.clone()
    };
    let (mut passes, mut controls, mut verifier) = (Vec::new(), Vec::new(), Vec::new());
    for pass in 1..=o.runs {
        eprintln!("bench: pass {pass} of {}", o.runs);
        let (mut rows, mut control) = (Vec::new(), Vec::new());
        for c in &cases {
            if let Err(e) = bench_case(c, &one_run, &mut rows, &mut control, &mut verifier) {
                eprintln!("bench: {}: {e:#}", c.name);
                return ExitCode::FAILURE;
            }
        }
        passes.push(rows);
        controls.push(control);
    }
    let (rows, control) = (merge_rows(passes), merge_control(controls));
    let mut md = report(&rows, &control, &verifier, &o, &cmd);
    if o.section == "all" {
        match throughput(&o, &cmd) {
            Some(t) => md = format!("{md}\n{t}"),
            None => return ExitCode::FAILURE,
        }
        md = format!("{md}\n{}", dns_section(&cmd));
    }
    emit(&o, &md)
}

/// Items of passes that each produced the same items in the same order, merged:
/// `combine(first pass's item, every pass's item)`.
fn merge<T>(passes: Vec<Vec<T>>, combine: impl Fn(&T, &[&T]) -> T) -> Vec<T> {
    let Some(first) = passes.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let all: Vec<&T> = passes.iter().map(|p| &p[i]).collect();
            combine(all[0], &all)
        })
        .collect()
}

/// The rows of the passes: the medians over the passes.
fn merge_rows(passes: Vec<Vec<Row>>) -> Vec<Row> {
    merge(passes, |r, all| {
        assert!(
            all.iter()
                .all(|x| x.case == r.case && x.mode == r.mode && x.packet == r.packet),
            "passes measured rows in different orders"
        );
        let med = |f: fn(&Row) -> f64| median(all.iter().map(|x| f(x)).collect());
        Row {
            case: r.case.clone(),
            mode: r.mode,
            packet: r.packet.clone(),
            ns: med(|x| x.ns),
            floor_ns: med(|x| x.floor_ns),
            ratio: med(|x| x.ratio),
            ratio_range: all.iter().fold((f64::INFINITY, 0.0), |(lo, hi), x| {
                (lo.min(x.ratio_range.0), hi.max(x.ratio_range.1))
            }),
        }
    })
}

/// The control-plane figures of the passes: the median time of each.
fn merge_control(passes: Vec<Vec<Control>>) -> Vec<Control> {
    merge(passes, |c, all| {
        let med = |f: fn(&Control) -> Duration| {
            Duration::from_secs_f64(median(all.iter().map(|x| f(x).as_secs_f64()).collect()))
        };
        Control {
            case: c.case.clone(),
            rules: c.rules,
            prefixes_in: c.prefixes_in,
            entries: c.entries,
            compile: med(|x| x.compile),
            load: med(|x| x.load),
            reswitch: med(|x| x.reswitch),
            lookup_nodes: c.lookup_nodes,
        }
    })
}

/// The DNS proxy section (`tagwall_tests::dnsbench`): added latency per query against
/// dnsmasq queried directly, and queries/s, in one run.
fn dns_section(cmd: &str) -> String {
    let report = tagwall_tests::dnsbench::run(&tagwall_tests::dnsbench::DnsBenchOpts::default());
    format!(
        "{}\nCommand: `{cmd}`  \nMachine: {}\n",
        report.markdown(),
        machine()
    )
}

/// The throughput section (`tagwall_tests::throughput`); `--runs` rounds of
/// `TAGWALL_TPUT_SECS` (default 2) seconds per figure.
fn throughput(o: &Opts, cmd: &str) -> Option<String> {
    let secs = std::env::var("TAGWALL_TPUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let opts = tagwall_tests::throughput::Options {
        runs: o.runs,
        secs,
        policy: o.case.clone(),
        filter: o.filter.clone(),
    };
    tagwall_tests::throughput::run(&opts, cmd, &machine())
        .inspect_err(|e| eprintln!("bench: throughput: {e:#}"))
        .ok()
}

fn emit(o: &Opts, md: &str) -> ExitCode {
    match &o.output {
        Some(p) => {
            if let Err(e) = std::fs::write(p, md) {
                eprintln!("bench: writing {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            eprintln!("bench: wrote {}", p.display());
        }
        None => print!("{md}"),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64) -> Row {
        Row {
            case: "c".into(),
            mode: "XDP stateless",
            packet: "v4 hit tcp/443".into(),
            ns: 20.0 * ratio,
            floor_ns: 20.0,
            ratio,
            ratio_range: (ratio, ratio),
        }
    }

    #[test]
    fn merged_rows_keep_the_median_and_the_range_of_the_passes() {
        let passes = vec![vec![row(2.0)], vec![row(1.5)], vec![row(3.0)]];
        let merged = merge_rows(passes);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].ratio, 2.0);
        assert_eq!(merged[0].ns, 40.0);
        assert_eq!(merged[0].ratio_range, (1.5, 3.0));
    }
}
