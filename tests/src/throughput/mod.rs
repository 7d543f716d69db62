//! Throughput through a gateway namespace, side by side (issue #7 part 2): tagwall XDP
//! (native, native stateless, generic, fast forward) vs the same policy exported to
//! nftables vs iptables + ipset vs xdp-filter (what it can express) vs no filter, for
//! packets the policy allows and packets it denies, with the AML default policy and
//! the full Public Service Tags.
//!
//! ```text
//!  gen ──veth (one queue per CPU)──▶ gw: filter on its ingress veth ─route─▶ veth ──▶ sink
//! ```
//!
//! The sink is a veth whose far end (in a namespace of its own) drops every frame with
//! XDP: what the kernel forwards and what tagwall's fast forwarding redirects end the
//! same way (an XDP redirect needs a receiver that runs XDP).
//!
//! Every filter gets fresh namespaces (so no filter leaves hooks or tables behind for
//! the next), its own private bpffs, and everything goes when the guards drop. The
//! generator ([`livegen`]) injects XDP frames into the veth from one pinned thread per
//! CPU, each CPU's flows its own; the gateway processes them in the same softirq
//! context, so a figure is packets per CPU-second of generator + gateway work, and
//! ratios compare the gateway work.
//! Rounds interleave the filters; figures are medians over rounds, ratios medians of
//! per-round ratios against the no-filter (and nftables) measurement of that round.
//! Nothing here asserts a time.

pub mod livegen;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tagwall::{compile::CompiledPolicy, rules::Direction};

use crate::{
    lab::{TempDir, tagwall_bin},
    netns::{Bpffs, ChildGuard, Netns, sh, unique, wait_for},
};

const GEN_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 2);
const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 1);
const GEN_V6: Ipv6Addr = Ipv6Addr::new(0xfd78, 1, 0, 0, 0, 0, 0, 2);
const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd78, 1, 0, 0, 0, 0, 0, 1);
/// Destinations per family in each traffic set (a power of two: the generator's table).
const DESTS: usize = 1024;
const PORT: u16 = 443;
/// The first sending CPU's source port (the others' follow it).
const SPORT: u16 = 40_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rounds (each filter measured once per round); medians over rounds.
    pub runs: usize,
    /// Measured seconds per figure (after a warm-up of a quarter of it).
    pub secs: f64,
    /// Only the policies whose name contains this (`bench --case`).
    pub policy: Option<String>,
    /// Only the filters whose label contains this, plus the baselines (no filter,
    /// nftables) every ratio needs (`bench --filter`).
    pub filter: Option<String>,
}

/// The filters compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    None,
    TagwallNative,
    TagwallStateless,
    TagwallGeneric,
    TagwallFastForward,
    Nft,
    NftIngress,
    IptablesIpset,
    XdpFilter,
}

impl Filter {
    const ALL: [Filter; 9] = [
        Filter::None,
        Filter::TagwallNative,
        Filter::TagwallStateless,
        Filter::TagwallGeneric,
        Filter::TagwallFastForward,
        Filter::Nft,
        Filter::NftIngress,
        Filter::IptablesIpset,
        Filter::XdpFilter,
    ];

    fn label(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::TagwallNative => "tagwall (native XDP)",
            Filter::TagwallStateless => "tagwall (native XDP, stateless)",
            Filter::TagwallGeneric => "tagwall (generic XDP)",
            Filter::TagwallFastForward => "tagwall (native XDP, fast forward)",
            Filter::Nft => "nftables (tagwall export --nft)",
            Filter::NftIngress => "nftables, same sets at netdev ingress",
            Filter::IptablesIpset => "iptables-legacy + ipset",
            Filter::XdpFilter => "xdp-filter (exact dst addresses only)",
        }
    }
}

/// A policy under test: its config file, the compiled form every filter is built
/// from, and destination sets the policy allows (TCP/443) and denies (no prefix).
struct Policy {
    name: String,
    config: PathBuf,
    compiled: CompiledPolicy,
    rules: usize,
    allow: Vec<IpAddr>,
    deny: Vec<IpAddr>,
}

fn tags_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/servicetags/ServiceTags_Public_20250908.json"
    ))
}

/// Addresses that must not be used as destinations (not forwarded, or the lab's own).
fn special(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0
                || o[0] == 10
                || o[0] == 127
                || o[0] >= 224
                || (o[0] == 169 && o[1] == 254)
                || a.is_broadcast()
        }
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            (s & 0xffc0) == 0xfe80 || (s & 0xff00) == 0xff00 || (s & 0xfe00) == 0xfc00 || s == 0
        }
    }
}

fn random_in(rng: &mut StdRng, net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(
                u32::from(n.network()) | (rng.random::<u32>() & host),
            ))
        }
        IpNet::V6(n) => {
            let host = u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(
                u128::from(n.network()) | (rng.random::<u128>() & host),
            ))
        }
    }
}

fn verdict(p: &CompiledPolicy, a: IpAddr) -> Option<Result<u32, ()>> {
    tagwall::compile::lookup(p, Direction::Outbound, a, 6, Some(PORT))
}

/// `DESTS` allowed destinations per family, each in a different (random) LPM entry
/// where possible, and `DESTS` per family that no entry covers.
fn traffic(p: &CompiledPolicy, seed: u64) -> anyhow::Result<(Vec<IpAddr>, Vec<IpAddr>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut allow = Vec::new();
    let mut deny = Vec::new();
    for v6 in [false, true] {
        let nets: Vec<IpNet> = if v6 {
            p.v6.iter()
                .filter(|(d, _, _)| *d == Direction::Outbound)
                .map(|(_, n, _)| IpNet::V6(*n))
                .collect()
        } else {
            p.v4.iter()
                .filter(|(d, _, _)| *d == Direction::Outbound)
                .map(|(_, n, _)| IpNet::V4(*n))
                .collect()
        };
        let mut got = std::collections::BTreeSet::new();
        let mut tries = 0;
        while got.len() < DESTS && tries < 200 * DESTS {
            tries += 1;
            let net = nets[rng.random_range(0..nets.len())];
            let a = random_in(&mut rng, net);
            if !special(a) && matches!(verdict(p, a), Some(Ok(_))) {
                got.insert(a);
            }
        }
        ensure!(
            got.len() == DESTS,
            "found only {} allowed {} destinations",
            got.len(),
            if v6 { "IPv6" } else { "IPv4" }
        );
        allow.extend(got);
        let mut got = std::collections::BTreeSet::new();
        while got.len() < DESTS {
            let a = if v6 {
                // Global unicast 2000::/3.
                IpAddr::V6(Ipv6Addr::from(
                    (0x2u128 << 124) | (rng.random::<u128>() >> 3),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))
            };
            if !special(a) && verdict(p, a).is_none() {
                got.insert(a);
            }
        }
        deny.extend(got);
    }
    Ok((allow, deny))
}

fn policies(dir: &Path) -> anyhow::Result<Vec<Policy>> {
    let tags_file = tags_path();
    ensure!(
        tags_file.exists(),
        "Service Tags file missing: {}",
        tags_file.display()
    );
    let tags = tagwall::servicetags::ServiceTags::load(&tags_file)?;
    let names: Vec<String> = tags.tags.iter().map(|t| t.name.clone()).collect();
    let all_prefixes: usize = tags.tags.iter().map(|t| t.prefixes.len()).sum();
    let aml = format!(
        "service_tags = {tags_file:?}\n[azureml]\ncloud = \"public\"\nregion = \"westus2\"\n"
    );
    let full = format!(
        "service_tags = {tags_file:?}\n[[rules]]\nname = \"all-public-tags\"\nservice_tags = {names:?}\nprotocol = \"tcp\"\nports = [{PORT}]\n"
    );
    let mut out = Vec::new();
    for (i, (name, text)) in [
        ("AML default (public, westus2)".to_owned(), aml),
        (
            format!("full Public tags ({all_prefixes} prefixes, TCP 443)"),
            full,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let config = dir.join(format!("policy{i}.toml"));
        std::fs::write(&config, text)?;
        let (_, eff) = tagwall::cli::policy::load(
            &config,
            None,
            dir,
            &[IpAddr::V4(GW_V4), IpAddr::V6(GW_V6)],
        )?;
        let compiled = eff.compile(tagwall_common::policy::DEFAULT_SETS_PER_SLOT as usize)?;
        let (allow, deny) = traffic(&compiled, 7 + i as u64)?;
        out.push(Policy {
            name,
            config,
            rules: eff.rules.len(),
            compiled,
            allow,
            deny,
        });
    }
    Ok(out)
}

/// Interface counters (`ip -j -s link`).
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    rx_packets: u64,
    rx_dropped: u64,
    tx_packets: u64,
}

/// Counters of every interface of `ns`, read at one instant (one `ip` call).
fn stats(ns: &Netns) -> anyhow::Result<BTreeMap<String, Stats>> {
    let out = ns.ip(&["-j", "-s", "link", "show"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut m = BTreeMap::new();
    for l in v.as_array().context("ip -j link: not an array")? {
        let s = &l["stats64"];
        let n = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
        m.insert(
            l["ifname"].as_str().unwrap_or("").to_owned(),
            Stats {
                rx_packets: n("rx", "packets"),
                rx_dropped: n("rx", "dropped"),
                tx_packets: n("tx", "packets"),
            },
        );
    }
    Ok(m)
}

/// CPU time (ns) the threads `tids` of this process and the ksoftirqd threads have
/// run, from `schedstat` (without IRQ time accounting, softirq work done in a
/// thread's context is charged to that thread).
fn cpu_ns(tids: &[i32]) -> anyhow::Result<u64> {
    let read = |p: &str| -> Option<u64> {
        std::fs::read_to_string(p)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut total = 0;
    for t in tids {
        total += read(&format!("/proc/self/task/{t}/schedstat"))
            .with_context(|| format!("schedstat of thread {t}"))?;
    }
    for e in std::fs::read_dir("/proc")?.flatten() {
        let p = e.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            total += read(&p.join("schedstat").to_string_lossy()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Generator and gateway namespaces for one filter; removed on drop.
struct Topo {
    // Field order is drop order: the daemon before its namespace.
    daemon: Option<ChildGuard>,
    /// The XDP_DROP program on the sink's far end (detached on drop).
    _sink_link: OwnedFd,
    gen_ns: Netns,
    gw: Netns,
    _sink_ns: Netns,
    gen_if: String,
    gw_in: String,
    /// The gateway's end of the sink veth (where forwarded packets leave).
    sink: String,
    bpffs: Bpffs,
    dir: TempDir,
}

/// `ip link add` of a veth pair, each end `(name, namespace, MAC or None for a
/// random one)`, with `queues` TX and RX queues on both ends.
fn veth_pair(a: (&str, &Netns, Option<&str>), b: (&str, &Netns, Option<&str>), queues: &str) {
    let end = |(name, ns, mac): (&str, &Netns, Option<&str>)| {
        let mut v = vec![name.to_owned()];
        if let Some(m) = mac {
            v.extend(["address".to_owned(), m.to_owned()]);
        }
        v.extend(
            [
                "netns",
                &ns.name,
                "numtxqueues",
                queues,
                "numrxqueues",
                queues,
            ]
            .map(str::to_owned),
        );
        v
    };
    let mut args: Vec<String> = ["ip", "link", "add"].map(str::to_owned).to_vec();
    args.extend(end(a));
    args.extend(["type", "veth", "peer", "name"].map(str::to_owned));
    args.extend(end(b));
    sh(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

impl Topo {
    fn new(cpus: usize) -> anyhow::Result<Self> {
        let (gen_ns, gw) = (Netns::new("tg"), Netns::new("tw"));
        let (gen_if, gw_in, sink) = (unique("tg0"), unique("twi"), unique("tws"));
        let q = cpus.to_string();
        let (gen_mac, gw_mac) = (mac_str(GEN_MAC), mac_str(GW_MAC));
        veth_pair(
            (&gen_if, &gen_ns, Some(&gen_mac)),
            (&gw_in, &gw, Some(&gw_mac)),
            &q,
        );
        for (ns, dev, a4, a6) in [
            (&gen_ns, &gen_if, GEN_V4, GEN_V6),
            (&gw, &gw_in, GW_V4, GW_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // The sink: a veth to a namespace whose end drops every frame with XDP, reached
        // through one next hop with a permanent neighbour entry (as a gateway VM's
        // default route to the platform's router).
        let (sink_ns, sink_far) = (Netns::new("ts"), unique("tsf"));
        let sink_mac = mac_str(SINK_MAC);
        veth_pair(
            (&sink, &gw, None),
            (&sink_far, &sink_ns, Some(&sink_mac)),
            &q,
        );
        gw.ip(&["addr", "add", "10.78.9.1/24", "dev", &sink]);
        gw.ip(&["addr", "add", "fd78:9::1/64", "dev", &sink, "nodad"]);
        gw.ip(&["link", "set", &sink, "up"]);
        sink_ns.ip(&["link", "set", &sink_far, "up"]);
        for (fam, hop) in [("-4", "10.78.9.2"), ("-6", "fd78:9::2")] {
            gw.ip(&[
                fam,
                "neigh",
                "replace",
                hop,
                "lladdr",
                &sink_mac,
                "dev",
                &sink,
                "nud",
                "permanent",
            ]);
            gw.ip(&[fam, "route", "add", "default", "via", hop, "dev", &sink]);
        }
        let far = sink_far.clone();
        let sink_link = sink_ns.run(move || -> anyhow::Result<OwnedFd> {
            let idx = tagwall::netif::index(&far).context("sink veth vanished")?;
            livegen::attach_xdp_drop(idx)
        })?;
        gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        gw.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        crate::netns::set_gro(&gw, &gw_in)?;
        Ok(Self {
            daemon: None,
            _sink_link: sink_link,
            gen_ns,
            gw,
            _sink_ns: sink_ns,
            gen_if,
            gw_in,
            sink,
            bpffs: Bpffs::new(),
            dir: TempDir::new("tput"),
        })
    }

    /// Run a command in the gateway namespace; error with its output if it fails.
    fn gw_run(&self, c: &mut Command) -> anyhow::Result<String> {
        let out = c.output().with_context(|| format!("spawning {c:?}"))?;
        ensure!(
            out.status.success(),
            "{c:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn gw_cmd(&self, program: &str) -> Command {
        self.gw.cmd(program)
    }

    /// `tagwall <verb>` in the gateway namespace with this topology's location flags
    /// (interface, bpffs, state directory).
    fn tagwall(&self, verb: &str) -> anyhow::Result<Command> {
        let mut cmd = self.gw_cmd(tagwall_bin().to_str().context("utf-8 path")?);
        cmd.args([verb, "--iface", &self.gw_in, "--bpffs"])
            .arg(&self.bpffs.path)
            .arg("--state-dir")
            .arg(self.dir.path.join("state"));
        Ok(cmd)
    }
}

/// xdp-filter's address maps, through the pins it made in `bpffs`.
fn xdp_filter_maps(bpffs: &Path) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let pins = bpffs.join("xdp-filter");
    let open = |name: &str| {
        livegen::pinned_map(&pins.join(name)).with_context(|| {
            format!(
                "xdp-filter's map {name} is not pinned in {}",
                pins.display()
            )
        })
    };
    Ok((open("filter_ipv4")?, open("filter_ipv6")?))
}

/// Set a filter up in fresh namespaces. Returns the topology (which owns it).
fn setup(f: Filter, p: &Policy, cpus: usize) -> anyhow::Result<Topo> {
    let mut t = Topo::new(cpus)?;
    match f {
        Filter::None => {}
        Filter::TagwallNative
        | Filter::TagwallStateless
        | Filter::TagwallGeneric
        | Filter::TagwallFastForward => {
            let mode = if f == Filter::TagwallGeneric {
                "generic"
            } else {
                "native"
            };
            // The same policy, plus a setting of the variant (in a file next to the
            // original, whose relative paths it shares).
            let extra = match f {
                Filter::TagwallFastForward => {
                    Some(format!("[fast_forward]\ninterfaces = [\"{}\"]\n", t.sink))
                }
                Filter::TagwallStateless => Some("[conntrack]\nenabled = false\n".to_owned()),
                _ => None,
            };
            let config = match extra {
                Some(extra) => {
                    let text = std::fs::read_to_string(&p.config)?;
                    let c = p.config.with_file_name(format!("variant-{}.toml", t.sink));
                    std::fs::write(&c, format!("{text}\n{extra}"))?;
                    c
                }
                None => p.config.clone(),
            };
            let log = t.dir.path.join("tagwall.log");
            let mut cmd = t.tagwall("run")?;
            cmd.args(["--mode", mode])
                .arg("--policy")
                .arg(&config)
                .env("TAGWALL_LOG", "info");
            let mut guard = ChildGuard::spawn(cmd, &log);
            let attached = wait_for(Duration::from_secs(60), || {
                if guard.exited().is_some() {
                    return Some(false);
                }
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|s| s.contains("tagwall ready"))
                    .map(|_| true)
            });
            t.daemon = Some(guard);
            if attached != Some(true) {
                bail!(
                    "tagwall run did not attach ({mode}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        Filter::Nft | Filter::NftIngress => {
            let nft = t.dir.path.join("policy.nft");
            let out = Command::new(tagwall_bin())
                .args(["export", "--nft", "--config"])
                .arg(&p.config)
                .args(["--iif", &t.gw_in])
                .args(["--gateway-address", &GW_V4.to_string()])
                .args(["--gateway-address", &GW_V6.to_string()])
                .arg("-o")
                .arg(&nft)
                .output()?;
            ensure!(
                out.status.success(),
                "tagwall export --nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if f == Filter::NftIngress {
                let text = std::fs::read_to_string(&nft)?;
                std::fs::write(&nft, netdev_ingress(&text, &t.gw_in)?)?;
            }
            t.gw_run(t.gw_cmd("nft").arg("-f").arg(&nft))?;
        }
        Filter::IptablesIpset => {
            let (ipsets, v4, v6) = xtables::render(&p.compiled, &t.gw_in);
            let dir = &t.dir.path;
            std::fs::write(dir.join("ipset"), ipsets)?;
            std::fs::write(dir.join("ip4tables"), v4)?;
            std::fs::write(dir.join("ip6tables"), v6)?;
            t.gw_run(
                t.gw_cmd("ipset")
                    .arg("restore")
                    .arg("-file")
                    .arg(dir.join("ipset")),
            )?;
            t.gw_run(
                t.gw_cmd("iptables-legacy-restore")
                    .arg(dir.join("ip4tables")),
            )?;
            t.gw_run(
                t.gw_cmd("ip6tables-legacy-restore")
                    .arg(dir.join("ip6tables")),
            )?;
        }
        Filter::XdpFilter => {
            let bpffs = t.bpffs.path.clone();
            // xdp-filter pins its maps and programs under /sys/fs/bpf, or, where that
            // is not a bpffs (`ip netns exec` mounts a fresh /sys), under the first
            // bpffs in /proc/mounts, whosever it is (LIBXDP_BPFFS only moves libxdp's
            // own pins). So each run gets this topology's bpffs bound on /sys/fs/bpf
            // in the mount namespace of its `ip netns exec`, and nothing it pins can
            // outlive the topology.
            let xf = |args: &[&str]| {
                let mut c = t.gw_cmd("sh");
                c.args([
                    "-c",
                    r#"mount --bind "$0" /sys/fs/bpf && exec xdp-filter "$@""#,
                ])
                .arg(&bpffs)
                .args(args)
                .env("LIBXDP_BPFFS", &bpffs);
                t.gw_run(&mut c)
            };
            xf(&[
                "load",
                "--mode",
                "native",
                "--policy",
                "deny",
                "--features",
                "ipv4,ipv6",
                &t.gw_in,
            ])?;
            // The entries `xdp-filter ip --mode dst ADDR` writes (key: the address in
            // network order; value: MAP_FLAG_DST on every CPU), written through the
            // pinned maps opened once: 2048 `xdp-filter ip` runs took seconds.
            let (v4, v6) = xdp_filter_maps(&bpffs)?;
            const MAP_FLAG_DST: u64 = 1 << 1;
            let value: Vec<u8> = livegen::possible_cpus()?
                .iter()
                .flat_map(|_| MAP_FLAG_DST.to_ne_bytes())
                .collect();
            for a in &p.allow {
                match a {
                    IpAddr::V4(a) => livegen::map_update(&v4, &a.octets(), &value)?,
                    IpAddr::V6(a) => livegen::map_update(&v6, &a.octets(), &value)?,
                }
            }
        }
    }
    Ok(t)
}

/// The nft export moved to the earliest netfilter hook: a netdev table whose ingress
/// chain on `dev` has the same sets and rules (non-IP packets such as ARP accepted).
fn netdev_ingress(export: &str, dev: &str) -> anyhow::Result<String> {
    let fwd = "chain forward {\n\t\ttype filter hook forward priority filter; policy drop;";
    let iif = format!("\t\tiifname != \"{dev}\" accept\n");
    ensure!(
        export.contains(fwd) && export.contains(&iif),
        "unexpected nft export layout (forward chain with --iif):\n{export}"
    );
    Ok(export
        .replace("table inet ", "table netdev ")
        .replace(
            fwd,
            &format!(
                "chain ingress {{\n\t\ttype filter hook ingress device \"{dev}\" priority filter; policy drop;"
            ),
        )
        .replace(&iif, "\t\tmeta protocol != { ip, ip6 } accept\n"))
}

mod xtables {
    //! iptables + ipset from the compiled policy: the LPM entries become disjoint
    //! address ranges (each with the port set of its longest prefix, as in the nft
    //! export), and for every distinct (protocol, ports) entry one `hash:net` set holds
    //! the ranges (as CIDRs) whose port set has it; one ACCEPT rule per entry matches
    //! protocol and port first, then the set. Policy DROP on FORWARD for packets from
    //! the filtered interface, like the nft export with `--iif`.

    use std::{collections::BTreeMap, fmt::Write as _};

    use tagwall::{compile::CompiledPolicy, rules::Direction};
    use tagwall_common::policy::PROTO_ANY;

    /// `[lo, hi]` as the fewest CIDRs, `(network, prefix length)`; `bits` = 32 or 128.
    pub fn cidrs(mut lo: u128, hi: u128, bits: u32) -> Vec<(u128, u32)> {
        let mask = |k: u32| {
            if k >= 128 {
                u128::MAX
            } else {
                (1u128 << k) - 1
            }
        };
        let mut out = Vec::new();
        loop {
            // The most host bits k with lo aligned to 2^k and the block inside [lo, hi].
            let mut k = if lo == 0 {
                bits
            } else {
                lo.trailing_zeros().min(bits)
            };
            while k > 0 && lo.checked_add(mask(k)).is_none_or(|e| e > hi) {
                k -= 1;
            }
            out.push((lo, bits - k));
            let last = lo + mask(k);
            if last >= hi {
                return out;
            }
            lo = last + 1;
        }
    }

    fn fmt(a: u128, len: u32, v6: bool) -> String {
        if v6 {
            format!("{}/{len}", std::net::Ipv6Addr::from(a))
        } else {
            format!(
                "{}/{len}",
                std::net::Ipv4Addr::from(u32::try_from(a).expect("v4"))
            )
        }
    }

    /// (ipset restore file, iptables-restore file, ip6tables-restore file).
    pub fn render(p: &CompiledPolicy, iif: &str) -> (String, String, String) {
        let mut ipset = String::new();
        let mut tables = Vec::new();
        for v6 in [false, true] {
            let entries: Vec<(u128, u128, u8, u32)> = if v6 {
                p.v6.iter()
                    .filter(|(d, _, _)| *d == Direction::Outbound)
                    .map(|(_, n, s)| {
                        (
                            u128::from(n.network()),
                            u128::from(n.broadcast()),
                            n.prefix_len(),
                            *s,
                        )
                    })
                    .collect()
            } else {
                p.v4.iter()
                    .filter(|(d, _, _)| *d == Direction::Outbound)
                    .map(|(_, n, s)| {
                        (
                            u128::from(u32::from(n.network())),
                            u128::from(u32::from(n.broadcast())),
                            n.prefix_len(),
                            *s,
                        )
                    })
                    .collect()
            };
            let segs = tagwall::nft::segments(entries);
            // (proto, lo, hi) -> CIDRs of the ranges whose set has that entry.
            let mut by_entry: BTreeMap<(u8, u16, u16), Vec<String>> = BTreeMap::new();
            let bits = if v6 { 128 } else { 32 };
            for (lo, hi, set) in segs {
                let c: Vec<String> = cidrs(lo, hi, bits)
                    .into_iter()
                    .map(|(a, l)| fmt(a, l, v6))
                    .collect();
                let mut seen = std::collections::BTreeSet::new();
                for e in &p.sets[set as usize] {
                    if seen.insert((e.proto, e.port_lo, e.port_hi)) {
                        by_entry
                            .entry((e.proto, e.port_lo, e.port_hi))
                            .or_default()
                            .extend(c.iter().cloned());
                    }
                }
            }
            let fam = if v6 { "inet6" } else { "inet" };
            let mut rules = String::new();
            let _ = writeln!(
                rules,
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD ! -i {iif} -j ACCEPT"
            );
            for (i, ((proto, lo, hi), nets)) in by_entry.iter().enumerate() {
                let name = format!("tw{}_{i}", if v6 { 6 } else { 4 });
                let _ = writeln!(
                    ipset,
                    "create {name} hash:net family {fam} hashsize {} maxelem {}",
                    (nets.len().next_power_of_two()).max(64),
                    nets.len().max(64) * 2
                );
                for n in nets {
                    let _ = writeln!(ipset, "add {name} {n}");
                }
                let any_port = *lo == 0 && *hi == u16::MAX;
                let ports = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}:{hi}")
                };
                let set = format!("-m set --match-set {name} dst");
                let protos: Vec<u8> = if *proto == PROTO_ANY && !any_port {
                    vec![6, 17]
                } else {
                    vec![*proto]
                };
                for pr in protos {
                    let line = match (pr, any_port) {
                        (PROTO_ANY, _) => format!("-A FORWARD {set} -j ACCEPT"),
                        (6 | 17, false) => format!(
                            "-A FORWARD -p {pr} -m {} --dport {ports} {set} -j ACCEPT",
                            if pr == 6 { "tcp" } else { "udp" }
                        ),
                        _ => format!("-A FORWARD -p {pr} {set} -j ACCEPT"),
                    };
                    let _ = writeln!(rules, "{line}");
                }
            }
            let _ = writeln!(rules, "COMMIT");
            tables.push(rules);
        }
        let v6 = tables.pop().expect("two");
        let v4 = tables.pop().expect("two");
        (ipset, v4, v6)
    }

    #[cfg(test)]
    mod tests {
        use super::cidrs;

        #[test]
        fn ranges_become_fewest_cidrs() {
            assert_eq!(cidrs(0, u128::from(u32::MAX), 32), vec![(0, 0)]);
            assert_eq!(cidrs(10, 10, 32), vec![(10, 32)]);
            // 10.0.0.1 - 10.0.0.6: .1/32 .2/31 .4/31 .6/32
            let b = 0x0a00_0000u128;
            assert_eq!(
                cidrs(b + 1, b + 6, 32),
                vec![(b + 1, 32), (b + 2, 31), (b + 4, 31), (b + 6, 32)]
            );
            assert_eq!(cidrs(0, u128::MAX, 128), vec![(0, 0)]);
        }
    }
}

const GEN_MAC: [u8; 6] = [0x02, 0x78, 0, 0, 0, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0x78, 0, 0, 0, 0x01];
const SINK_MAC: [u8; 6] = [0x02, 0x78, 0, 0, 0, 0x09];

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Generator programs for a destination set (both families), for sending threads
/// on the CPUs numbered `cpus`. Each CPU sends from a source port of its own
/// (`SPORT + cpu`), so that no flow arrives on two CPUs, as a NIC's receive-side
/// scaling keeps a flow on one queue; with one port for all, both CPUs updated the
/// same connection-tracking entries and their cache lines went back and forth
/// between the CPUs.
fn generators(dsts: &[IpAddr], cpus: &[usize]) -> anyhow::Result<Arc<Vec<livegen::Family>>> {
    let mut fams = Vec::new();
    for src in [IpAddr::V4(GEN_V4), IpAddr::V6(GEN_V6)] {
        let d: Vec<IpAddr> = dsts
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == src.is_ipv4())
            .collect();
        let mut per_cpu = Vec::new();
        for &cpu in cpus {
            let sport = u16::try_from(cpu)
                .ok()
                .and_then(|c| SPORT.checked_add(c))
                .with_context(|| format!("CPU {cpu}: no source port {SPORT} + {cpu}"))?;
            let frames = d
                .iter()
                .map(|dst| livegen::template(GEN_MAC, GW_MAC, (src, sport), (*dst, PORT)))
                .collect();
            per_cpu.push((cpu, frames));
        }
        fams.push(livegen::Family::load(&per_cpu)?);
    }
    Ok(Arc::new(fams))
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Packets per second received on the gateway's ingress veth.
    pps: f64,
    /// The same per CPU-second of the sending threads (which also run the gateway's
    /// softirq work) and ksoftirqd.
    pps_cpu: f64,
    /// CPUs those threads got on average (of `cpus`; less when something else ran).
    cpu: f64,
    /// Fraction of them that reached the sink.
    forwarded: f64,
    /// Fraction dropped by the veth itself (ring full), not by the filter.
    ring_drops: f64,
}

fn measure(
    t: &Topo,
    gens: &Arc<Vec<livegen::Family>>,
    o: &Options,
    cpus: &[usize],
) -> anyhow::Result<Sample> {
    let sender = livegen::Sender::start(
        &format!("/var/run/netns/{}", t.gen_ns.name),
        &t.gen_if,
        gens.clone(),
        cpus,
    )?;
    std::thread::sleep(Duration::from_secs_f64((o.secs / 4.0).max(0.3)));
    let tids = sender.tids.lock().expect("not poisoned").clone();
    ensure!(tids.len() == cpus.len(), "sender threads did not start");
    let (c0, s0, t0) = (cpu_ns(&tids)?, stats(&t.gw)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(o.secs));
    let (c1, s1, t1) = (cpu_ns(&tids)?, stats(&t.gw)?, Instant::now());
    sender.finish()?;
    if std::env::var_os("TAGWALL_TPUT_DEBUG").is_some() {
        for c in [&["ip", "-s", "link"][..], &["nstat", "-a"][..]] {
            let out = t.gw.cmd(c[0]).args(&c[1..]).output()?;
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let get = |m: &BTreeMap<String, Stats>, d: &str| m.get(d).copied().unwrap_or_default();
    let (i0, i1) = (get(&s0, &t.gw_in), get(&s1, &t.gw_in));
    let (k0, k1) = (get(&s0, &t.sink), get(&s1, &t.sink));
    let rx = (i1.rx_packets - i0.rx_packets) as f64;
    ensure!(rx > 0.0, "no packets reached the gateway");
    let sunk = (k1.rx_packets + k1.tx_packets - k0.rx_packets - k0.tx_packets) as f64;
    Ok(Sample {
        pps: rx / (t1 - t0).as_secs_f64(),
        pps_cpu: rx / ((c1 - c0) as f64 / 1e9),
        cpu: (c1 - c0) as f64 / 1e9 / (t1 - t0).as_secs_f64(),
        forwarded: sunk / rx,
        ring_drops: (i1.rx_dropped - i0.rx_dropped) as f64 / rx,
    })
}

/// Memory of tagwall's maps (bpftool `bytes_memlock` of the maps its attached
/// program uses) and the daemon's VmRSS.
#[derive(Clone, Debug)]
struct Memory {
    maps: Vec<(String, String, u64)>,
    rss_kib: u64,
    /// The part of VmRSS that is the process's own anonymous memory (the rest is
    /// mapped files and shared memory, e.g. the mmapped `LOOKUP` map).
    anon_kib: u64,
}

fn json(c: &mut Command) -> anyhow::Result<serde_json::Value> {
    let out = c.output().with_context(|| format!("spawning {c:?}"))?;
    ensure!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn memory(t: &Topo) -> anyhow::Result<Memory> {
    let link = json(
        t.gw.cmd("ip")
            .args(["-j", "-d", "link", "show", "dev", &t.gw_in]),
    )?;
    let prog = link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| link[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
        .with_context(|| format!("no XDP program id in {link}"))?;
    // The attached program runs both stages: its maps are all of the datapath's.
    let p = json(Command::new("bpftool").args(["-j", "prog", "show", "id", &prog.to_string()]))?;
    let mut maps = Vec::new();
    for id in p["map_ids"].as_array().context("map_ids")? {
        let Some(id) = id.as_u64() else { continue };
        let m = json(Command::new("bpftool").args(["-j", "map", "show", "id", &id.to_string()]))?;
        maps.push((
            m["name"].as_str().unwrap_or("?").to_owned(),
            m["type"].as_str().unwrap_or("?").to_owned(),
            m["bytes_memlock"].as_u64().unwrap_or(0),
        ));
    }
    let pid = t
        .daemon
        .as_ref()
        .and_then(|d| d.child.as_ref())
        .map(std::process::Child::id)
        .context("no daemon")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| name.to_owned())
    };
    Ok(Memory {
        maps,
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Traffic {
    Allow,
    Deny,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

type Key = (usize, Filter, Traffic);

/// Everything measured: samples by (policy, filter, traffic) with their round, tagwall's
/// memory by policy, and failed setups by (policy, filter).
#[derive(Default)]
struct Results {
    samples: BTreeMap<Key, Vec<(usize, Sample)>>,
    mem: BTreeMap<usize, Memory>,
    failed: BTreeMap<(usize, Filter), usize>,
}

/// Run the rounds and return the Markdown section.
///
/// # Errors
/// A filter that cannot be set up, a generator that cannot run, or a filter that
/// does not enforce the policy on the benchmark traffic.
pub fn run(o: &Options, cmd: &str, machine: &str) -> anyhow::Result<String> {
    // One sender (and one veth queue) for each CPU this process may run on.
    let senders = crate::harness::allowed_cpus().context("sched_getaffinity")?;
    let cpus = senders.len();
    let dir = TempDir::new("tpp");
    // Build (or find) the daemon now, not between two measurements.
    let _ = tagwall_bin();
    let pols = policies(&dir.path)?;
    // Generators for the policies `--case` keeps (`None`: left out).
    let mut gens = Vec::new();
    for p in &pols {
        let keep = o
            .policy
            .as_ref()
            .is_none_or(|want| p.name.contains(want.as_str()));
        gens.push(if keep {
            Some((
                generators(&p.allow, &senders)?,
                generators(&p.deny, &senders)?,
            ))
        } else {
            None
        });
    }
    let filters: Vec<Filter> = Filter::ALL
        .into_iter()
        .filter(|f| {
            matches!(f, Filter::None | Filter::Nft)
                || o.filter
                    .as_ref()
                    .is_none_or(|w| f.label().contains(w.as_str()))
        })
        .collect();
    ensure!(
        filters.len() > 2 || o.filter.is_none(),
        "--filter {:?} matches no filter's label",
        o.filter
    );
    let mut res = Results::default();
    for round in 0..o.runs {
        for (pi, p) in pols.iter().enumerate() {
            let Some((allow, deny)) = &gens[pi] else {
                continue;
            };
            let n = filters.len();
            for k in 0..n {
                let f = filters[(k + round) % n];
                let t0 = Instant::now();
                // A setup that fails twice (fresh namespaces each time) costs this
                // filter its figure of the round, not the whole run; the report shows
                // how many rounds each figure has.
                let t = match setup(f, p, cpus).or_else(|e| {
                    eprintln!(
                        "tput: {}: {}: setup failed, once more: {e:#}",
                        p.name,
                        f.label()
                    );
                    setup(f, p, cpus)
                }) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!(
                            "tput: {}: {}: setup failed again, skipped: {e:#}",
                            p.name,
                            f.label()
                        );
                        *res.failed.entry((pi, f)).or_default() += 1;
                        continue;
                    }
                };
                eprintln!(
                    "tput: round {round} {:<40} {:<38} set up in {:.1} s",
                    p.name,
                    f.label(),
                    t0.elapsed().as_secs_f64()
                );
                if f == Filter::TagwallNative && !res.mem.contains_key(&pi) {
                    res.mem.insert(pi, memory(&t)?);
                }
                for (tr, g) in [(Traffic::Allow, allow), (Traffic::Deny, deny)] {
                    let s = measure(&t, g, o, &senders)
                        .with_context(|| format!("{}: {} {tr:?}", p.name, f.label()))?;
                    eprintln!(
                        "tput: round {round} {:<40} {:<38} {tr:?}: {:>6.3} Mpps, {:>6.3} Mpps/CPU ({:.2} CPUs), forwarded {:>5.1}%, ring drops {:.1}%",
                        p.name,
                        f.label(),
                        s.pps / 1e6,
                        s.pps_cpu / 1e6,
                        s.cpu,
                        s.forwarded * 100.0,
                        s.ring_drops * 100.0
                    );
                    let expect_fwd = match (tr, f) {
                        (Traffic::Allow, _) | (_, Filter::None) => true,
                        (Traffic::Deny, _) => false,
                    };
                    ensure!(
                        if expect_fwd {
                            s.forwarded > 0.95
                        } else {
                            s.forwarded < 0.01
                        },
                        "{}: {} {tr:?}: {:.1}% of the packets were forwarded: the filter does not \
                         do what the policy says (or the bench traffic is wrong)",
                        p.name,
                        f.label(),
                        s.forwarded * 100.0
                    );
                    if f == Filter::TagwallFastForward && tr == Traffic::Allow {
                        let share = redirected_share(&t)?;
                        ensure!(
                            share > 0.95,
                            "{}: fast forwarding redirected only {:.1}% of the allowed packets",
                            p.name,
                            share * 100.0
                        );
                    }
                    res.samples.entry((pi, f, tr)).or_default().push((round, s));
                }
                drop(t);
            }
        }
    }
    Ok(report(&pols, &res, o, cmd, machine, cpus))
}

/// Of the allowed packets tagwall's fast forwarding handled, the share it redirected
/// itself (the rest went up the stack), from `tagwall counters`.
fn redirected_share(t: &Topo) -> anyhow::Result<f64> {
    let c = json(t.tagwall("counters")?.args(["--format", "json"]))?;
    let ff = c["fast_forward"]
        .as_object()
        .context("no fast_forward in tagwall counters")?;
    let get = |k: &serde_json::Value| k["packets"].as_u64().unwrap_or(0) as f64;
    let all: f64 = ff.values().map(get).sum();
    ensure!(all > 0.0, "tagwall counted no fast-forward outcome");
    Ok(get(&ff["redirected"]) / all)
}

fn ratio_median(samples: &BTreeMap<Key, Vec<(usize, Sample)>>, a: Key, b: Key) -> f64 {
    let (Some(x), Some(y)) = (samples.get(&a), samples.get(&b)) else {
        return f64::NAN;
    };
    // Pair by round (a round whose setup failed has no figure).
    let y: BTreeMap<usize, f64> = y.iter().map(|(r, s)| (*r, s.pps_cpu)).collect();
    median(
        x.iter()
            .filter_map(|(r, s)| y.get(r).map(|b| s.pps_cpu / b))
            .collect(),
    )
}

fn report(
    pols: &[Policy],
    res: &Results,
    o: &Options,
    cmd: &str,
    machine: &str,
    cpus: usize,
) -> String {
    let (samples, mem, failed) = (&res.samples, &res.mem, &res.failed);
    let mut s = String::new();
    let _ = writeln!(s, "## Throughput through a veth gateway\n");
    let _ = writeln!(s, "Command: `{cmd}`  ");
    let _ = writeln!(s, "Machine: {machine}  ");
    let _ = writeln!(
        s,
        "Method: generator namespace --veth ({cpus} queues)--> gateway namespace (filter on \
         its ingress veth, IPv4/IPv6 forwarding, GRO on) --> veth to a sink namespace whose end \
         drops every frame with XDP (one next hop, permanent neighbour entry). The generator injects \
         TCP SYNs to port {PORT} as XDP frames (BPF_PROG_RUN live frames, XDP_TX out of the \
         generator's veth; one pinned thread per CPU, IPv4 and IPv6 in alternating chunks of \
         32768 frames, each CPU from a source port of its own so that no flow arrives on two \
         CPUs, as receive-side scaling would keep it), each to a destination drawn at random \
         from {DESTS} IPv4 + {DESTS} IPv6 addresses: *allow* = addresses in distinct \
         random LPM entries of the policy that allow TCP/{PORT}, *deny* = addresses no \
         entry covers. The gateway handles the frames \
         in the sending thread's softirq on the same CPU, and other processes may share the \
         CPUs, so the figures are *Mpps per CPU*: packets received on the gateway's veth per \
         CPU-second of the sending threads (schedstat; softirq work done in their context is \
         charged to them, as there is no IRQ time accounting) plus ksoftirqd. It includes the \
         generator's own cost (the same for every filter), so ratios understate the \
         difference between the filters themselves. *CPUs* = how many CPUs those threads got \
         on average; *Mpps (wall)* depends on it and is shown only for completeness. {} rounds, \
         filters interleaved (fresh namespaces for every filter), {:.1} s measured after a \
         warm-up; Mpps = median over rounds; ratios = median of per-round ratios against the \
         no-filter and nftables figures of the same round and traffic.\n",
        o.runs, o.secs
    );
    let _ = writeln!(
        s,
        "| policy | filter | traffic | Mpps per CPU | vs no filter | vs nftables | Mpps (wall) | CPUs | forwarded | rounds |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (pi, p) in pols.iter().enumerate() {
        for tr in [Traffic::Allow, Traffic::Deny] {
            for f in Filter::ALL {
                let Some(v) = samples.get(&(pi, f, tr)) else {
                    continue;
                };
                let mpps = median(v.iter().map(|(_, x)| x.pps / 1e6).collect());
                let per_cpu = median(v.iter().map(|(_, x)| x.pps_cpu / 1e6).collect());
                let fwd = median(v.iter().map(|(_, x)| x.forwarded * 100.0).collect());
                let used = median(v.iter().map(|(_, x)| x.cpu).collect());
                let base = ratio_median(samples, (pi, f, tr), (pi, Filter::None, tr));
                let nft = ratio_median(samples, (pi, f, tr), (pi, Filter::Nft, tr));
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {per_cpu:.3} | {base:.2}x | {nft:.2}x | {mpps:.3} | {used:.2} | {fwd:.1}% | {} |",
                    p.name,
                    f.label(),
                    match tr {
                        Traffic::Allow => "allow",
                        Traffic::Deny => "deny",
                    },
                    v.len()
                );
            }
        }
    }
    for ((pi, f), n) in failed {
        let _ = writeln!(
            s,
            "\n{}, {}: setup failed (twice) in {n} round(s); those rounds have no figure for it \
             (the bench's log says why).",
            pols[*pi].name,
            f.label()
        );
    }
    let _ = writeln!(
        s,
        "\n### Target: tagwall >= 2x nftables at the full-tags policy\n"
    );
    // Not with `--case` leaving the full-tags policy out (no figures, no verdict).
    if let Some(pi) = pols
        .iter()
        .position(|p| p.name.starts_with("full"))
        .filter(|pi| samples.contains_key(&(*pi, Filter::Nft, Traffic::Allow)))
    {
        let ceiling = ratio_median(
            samples,
            (pi, Filter::None, Traffic::Allow),
            (pi, Filter::Nft, Traffic::Allow),
        );
        let _ = writeln!(
            s,
            "- ceiling for allowed traffic through the kernel's forwarding path: no filter at \
             all is {ceiling:.2}x nftables (forwarding, not filtering, dominates an allowed \
             packet's cost here); only fast forwarding, which skips that path, can go past it"
        );
        for f in [
            Filter::TagwallNative,
            Filter::TagwallStateless,
            Filter::TagwallGeneric,
            Filter::TagwallFastForward,
        ] {
            for tr in [Traffic::Allow, Traffic::Deny] {
                if !samples.contains_key(&(pi, f, tr)) {
                    continue; // left out with --filter
                }
                let r = ratio_median(samples, (pi, f, tr), (pi, Filter::Nft, tr));
                let ri = ratio_median(samples, (pi, f, tr), (pi, Filter::NftIngress, tr));
                let ri = if ri.is_nan() {
                    "the same sets at netdev ingress not measured".to_owned()
                } else {
                    format!("{ri:.2}x the same sets at netdev ingress")
                };
                let _ = writeln!(
                    s,
                    "- {}, {} traffic: {r:.2}x nftables (export as is): **{}**; {ri}",
                    f.label(),
                    if tr == Traffic::Allow {
                        "allowed"
                    } else {
                        "denied"
                    },
                    if r >= 2.0 { "met" } else { "MISSED" }
                );
            }
        }
    } else {
        let _ = writeln!(
            s,
            "- the full-tags policy was not measured in this run (`--case`)"
        );
    }
    let _ = writeln!(
        s,
        "\n### Memory (tagwall run, native XDP, after applying the policy)\n"
    );
    let _ = writeln!(
        s,
        "| policy | rules | prefix entries | maps (bpftool bytes_memlock) | of which prefix \
         tables (LOOKUP + LPM tries) | daemon VmRSS | of which RssAnon |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for (pi, m) in mem {
        let p = &pols[*pi];
        let total: u64 = m.maps.iter().map(|x| x.2).sum();
        let lpm: u64 = m
            .maps
            .iter()
            .filter(|x| x.1 == "lpm_trie" || x.0 == tagwall_common::names::MAP_LOOKUP)
            .map(|x| x.2)
            .sum();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} KiB ({} maps) | {:.1} KiB | {:.1} MiB | {:.1} MiB |",
            p.name,
            p.rules,
            p.compiled.prefixes(),
            total as f64 / 1024.0,
            m.maps.len(),
            lpm as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0,
            m.anon_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        s,
        "\nThe daemon maps `LOOKUP` (the fixed 16 MiB multibit trie) into its address \
         space to build it, so those pages count in its VmRSS although they are the map's \
         memory, counted once above; RssAnon is the daemon's own memory."
    );
    for (pi, m) in mem {
        let list: Vec<String> = m
            .maps
            .iter()
            .map(|(n, t, b)| format!("{n} ({t}) {:.1} KiB", *b as f64 / 1024.0))
            .collect();
        let _ = writeln!(s, "\n{}: {}", pols[*pi].name, list.join(", "));
    }
    let _ = writeln!(s, "\n### What each filter is\n");
    let _ = writeln!(
        s,
        "- no filter: forwarding only (no netfilter hook, no XDP program).\n\
         - tagwall: `tagwall run --mode native|generic` on the gateway's ingress veth with the \
         policy file (native: in veth's NAPI poll on the XDP frame, before any sk_buff; \
         generic: after GRO, on the sk_buff). Connection tracking and drop reporting on, \
         as `tagwall run` has them by default: a repeated SYN of a tracked flow looks its \
         flow up and passes as a retransmission.\n\
         - tagwall stateless: native with `[conntrack] enabled = false`, every packet judged \
         by the rules alone, as the nftables and iptables exports judge it.\n\
         - tagwall fast forward: the same as native plus `[fast_forward] interfaces = \
         [<sink veth>]`: an allowed packet is forwarded by the XDP program itself (FIB \
         lookup, TTL, MACs, redirect to the sink veth) instead of by the kernel's IP stack; \
         netfilter never sees it. Opt-in, for gateways that do not also NAT or filter with \
         netfilter.\n\
         - nftables: `tagwall export --nft --iif <veth> --gateway-address ...` loaded with \
         `nft -f` (inet table, forward hook, interval sets, one lookup per set kind), \
         no conntrack.\n\
         - nftables at netdev ingress: the same export with the table in family netdev and \
         the chain on the ingress hook of the veth (the earliest netfilter hook, before IP \
         routing; ARP and other non-IP accepted), to give nftables its cheapest drop point.\n\
         - iptables + ipset: iptables-legacy/ip6tables-legacy FORWARD (policy DROP for \
         packets from the veth) with one hash:net set per distinct (protocol, ports) entry of \
         the compiled policy holding the disjoint ranges (as CIDRs) whose port set has it; \
         protocol and port are matched before the set. Same decisions as the nft export.\n\
         - xdp-filter: `xdp-filter load --mode native --policy deny --features ipv4,ipv6` \
         plus, for each of the {} allowed benchmark destinations, the entry `xdp-filter ip \
         --mode dst` makes, written into its maps directly. It cannot express prefixes (exact addresses only), nor address AND port (its rules \
         are OR-ed), nor per-rule protocols: it is a lower bound (one hash lookup per family), \
         not the policy.",
        2 * DESTS
    );
    s
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr, Ipv6Addr},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    use super::{PORT, SPORT, Topo, generators, livegen};

    /// TCP frames to port `PORT` received on `dev` (in the calling thread's
    /// namespace) until `n` arrived or 3 s passed: how many came from each source
    /// port.
    fn sports_received(dev: &str, n: usize) -> anyhow::Result<BTreeMap<u16, usize>> {
        let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: plain socket call; the descriptor is owned right below.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        anyhow::ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor the kernel just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields set are the ones bind reads.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        let idx =
            tagwall::netif::index(dev).ok_or_else(|| anyhow::anyhow!("no interface {dev}"))?;
        sll.sll_ifindex = i32::try_from(idx)?;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of_val(&sll) as u32,
            )
        };
        anyhow::ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        // SAFETY: a timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of_val(&tv) as u32,
            )
        };
        // Without the timeout a sender that sends nothing would hang the test.
        anyhow::ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        let mut got = BTreeMap::new();
        let mut buf = [0u8; 2048];
        while got.values().sum::<usize>() < n {
            // SAFETY: `buf` is writable for its length.
            let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                break; // the timeout
            }
            let f = &buf[..usize::try_from(r)?];
            let tcp = match u16::from_be_bytes([f[12], f[13]]) {
                0x0800 if f.len() >= 54 && f[23] == 6 => &f[34..],
                0x86dd if f.len() >= 74 && f[20] == 6 => &f[54..],
                _ => continue,
            };
            if u16::from_be_bytes([tcp[2], tcp[3]]) == PORT {
                *got.entry(u16::from_be_bytes([tcp[0], tcp[1]])).or_default() += 1;
            }
        }
        Ok(got)
    }

    /// The generator's tables are per CPU: a thread pinned to a CPU sends that CPU's
    /// flows only (its source port), so the throughput bench never has one flow
    /// arrive on two CPUs.
    #[test]
    fn each_sending_cpu_sends_flows_of_its_own() {
        crate::netns::require_root();
        let senders = crate::harness::allowed_cpus().expect("sched_getaffinity");
        let t = Topo::new(senders.len()).expect("topology");
        let dsts = [
            IpAddr::V4(Ipv4Addr::new(20, 1, 2, 3)),
            IpAddr::V4(Ipv4Addr::new(20, 1, 2, 4)),
            IpAddr::V6(Ipv6Addr::new(0x2603, 0x1000, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2603, 0x1000, 0, 0, 0, 0, 0, 2)),
        ];
        let gens = generators(&dsts, &senders).expect("generator programs");
        for &cpu in &senders {
            let sender = livegen::Sender::start(
                &format!("/var/run/netns/{}", t.gen_ns.name),
                &t.gen_if,
                gens.clone(),
                &[cpu],
            )
            .expect("sender");
            let dev = t.gw_in.clone();
            let got = t.gw.run(move || sports_received(&dev, 2000));
            sender.finish().expect("sender ran");
            let got = got.expect("capture");
            let want = SPORT + u16::try_from(cpu).unwrap();
            assert!(
                got.get(&want).copied().unwrap_or(0) >= 2000,
                "CPU {cpu}: frames by source port {got:?}, want 2000 from {want}"
            );
            assert_eq!(got.len(), 1, "CPU {cpu} sent other CPUs' flows: {got:?}");
        }
    }
}
