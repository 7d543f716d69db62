//! `tagwall compile`, `tagwall explain`, `tagwall export`: the effective policy of a
//! config, offline (no kernel needed).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::Format;
use crate::{
    catalog::{Catalog, Cloud},
    compile::{CompiledPolicy, lookup},
    config::Config,
    policy::{self, Effective, Summary},
    rules::{Direction, Proto},
    servicetags::{ServiceTags, store},
};

/// Where the config and the service tags come from.
#[derive(clap::Args, Debug, Clone)]
pub struct Source {
    /// Policy/config file (TOML).
    #[arg(long, alias = "policy")]
    pub config: PathBuf,
    /// Service Tags JSON file (overrides `service_tags` in the config).
    #[arg(long)]
    pub tags: Option<PathBuf>,
    /// Store of validated Service Tags files (`tagwall tags update`), used when
    /// neither --tags nor the config names a file.
    #[arg(long, env = "TAGWALL_TAGS_DIR", default_value = store::DEFAULT_DIR)]
    pub tags_dir: PathBuf,
    /// Addresses of the gateway itself (management allowances); default: none.
    #[arg(long = "gateway-address")]
    pub gateway_addresses: Vec<IpAddr>,
}

/// Load the config, then the Service Tags file it needs, then build the policy.
///
/// # Errors
/// Config, tags or policy errors, each naming the file and what to do.
pub fn load(
    config_path: &Path,
    tags: Option<&Path>,
    tags_dir: &Path,
    iface_addrs: &[IpAddr],
) -> anyhow::Result<(Config, Effective)> {
    let config = Config::load(config_path)?;
    let catalog = Catalog::embedded();
    let tags = match policy::needs_tags(&config, catalog) {
        None => None,
        Some(needed) => Some(
            load_tags(&config, config_path, tags, tags_dir)
                .with_context(|| format!("service tags needed by {needed}"))?,
        ),
    };
    let mut eff = policy::build(&config, catalog, tags.as_ref(), iface_addrs)?;
    for p in &config.outbound_dependencies {
        let p = beside(config_path, p);
        let endpoints = crate::deps::load(&p)
            .with_context(|| format!("outbound_dependencies in {}", config_path.display()))?;
        policy::add_dependencies(&mut eff, &endpoints, &p.display().to_string())?;
    }
    Ok((config, eff))
}

/// Paths in a config are relative to the config file.
fn beside(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    } else {
        p.to_path_buf()
    }
}

fn load_tags(
    config: &Config,
    config_path: &Path,
    tags: Option<&Path>,
    tags_dir: &Path,
) -> anyhow::Result<ServiceTags> {
    if let Some(p) = tags {
        return Ok(ServiceTags::load(p)?);
    }
    if let Some(p) = &config.service_tags {
        return Ok(ServiceTags::load(&beside(config_path, p))?);
    }
    let cloud = config.azureml.as_ref().map_or(Cloud::Public, |a| a.cloud);
    match store::load_latest(tags_dir, policy::tags_cloud_name(cloud))? {
        Some((_, t)) => Ok(t),
        None => bail!(
            "no Service Tags file for cloud {cloud} in {}: run `tagwall tags update --file ServiceTags_{}_<date>.json`, or set `service_tags = \"FILE\"` in the config, or pass --tags FILE",
            tags_dir.display(),
            policy::tags_cloud_name(cloud)
        ),
    }
}

fn build(src: &Source) -> anyhow::Result<(Config, Effective, CompiledPolicy)> {
    let (config, eff) = load(
        &src.config,
        src.tags.as_deref(),
        &src.tags_dir,
        &src.gateway_addresses,
    )?;
    let compiled = eff
        .compile(tagwall_common::policy::DEFAULT_SETS_PER_SLOT as usize)
        .with_context(|| format!("compiling {}", src.config.display()))?;
    Ok((config, eff, compiled))
}

#[derive(clap::Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub src: Source,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also list every rule (table format).
    #[arg(long)]
    pub rules: bool,
}

/// `tagwall compile`.
///
/// # Errors
/// See [`load`].
pub fn compile(a: &CompileArgs) -> anyhow::Result<()> {
    let (_, eff, compiled) = build(&a.src)?;
    let summary = Summary::new(&eff, &compiled);
    match a.format {
        Format::Json => {
            let v = serde_json::json!({
                "schema": "tagwall.compile/v1",
                "summary": summary,
                "service_tags": eff.tags.as_ref().map(|(cloud, change, origin)| serde_json::json!({"cloud": cloud, "change_number": change, "file": origin})),
                "rules": eff.rules.iter().zip(&eff.provenance).map(|(r, p)| serde_json::json!({
                    "id": r.id, "name": r.name, "direction": r.direction, "protocol": r.proto, "ports": r.ports,
                    "prefixes": r.prefixes.len(), "provenance": p,
                })).collect::<Vec<_>>(),
                "fqdns": eff.fqdns,
                "host_level": eff.host_level,
                "not_applied": eff.not_applied,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            if let Some((cloud, change, origin)) = &eff.tags {
                println!("service tags     {origin} (cloud {cloud}, changeNumber {change})");
            }
            println!("{summary}");
            if a.rules {
                println!(
                    "\n{:>5} {:<52} {:<8} {:<7} {:<22} {:>9}",
                    "ID", "RULE", "DIR", "PROTO", "PORTS", "PREFIXES"
                );
                for r in &eff.rules {
                    let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
                    let dir = match r.direction {
                        Direction::Inbound => "inbound",
                        Direction::Outbound => "outbound",
                        Direction::Local => "local",
                    };
                    println!(
                        "{:>5} {:<52} {:<8} {:<7} {:<22} {:>9}",
                        r.id,
                        r.name,
                        dir,
                        r.proto.to_string(),
                        ports.join(","),
                        r.prefixes.len()
                    );
                }
            }
            if !eff.host_level.is_empty() {
                println!(
                    "\nhost-level requirements (URL paths; allow the host with a rule of your own if you accept the whole host):"
                );
                for h in &eff.host_level {
                    println!("  {:<40} {}", h.requirement, h.url);
                }
            }
            if !eff.not_applied.is_empty() {
                println!("\nnot applied (use --format json for all):");
                for n in eff
                    .not_applied
                    .iter()
                    .filter(|n| !n.why.starts_with("scenario") && !n.why.starts_with("condition"))
                {
                    println!("  {:<40} {}", n.requirement, n.why);
                }
                let off = eff
                    .not_applied
                    .iter()
                    .filter(|n| n.why.starts_with("scenario") || n.why.starts_with("condition"))
                    .count();
                println!("  ... and {off} whose scenario or condition is not enabled");
            }
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub src: Source,
    /// `IP`, `IP:PORT`, `[IPv6]:PORT`, optionally `/tcp`, `/udp`, `/icmp`, ... (default tcp).
    pub target: String,
    /// Match as outbound (destination, default) or inbound (source) traffic.
    #[arg(long, value_enum, default_value = "outbound")]
    pub direction: DirArg,
    /// Also use what the running daemon on this interface learned from DNS (names
    /// whose answers brought the address in).
    #[arg(long)]
    pub iface: Option<String>,
    /// State directory of the running daemon (with --iface).
    #[arg(long, env = "TAGWALL_STATE_DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DirArg {
    Outbound,
    Inbound,
}

/// Parse `IP[:PORT][/proto]`.
///
/// # Errors
/// A message saying which part is wrong.
pub fn parse_target(s: &str) -> Result<(IpAddr, Option<u16>, Proto), String> {
    let (addr_port, proto) = match s.rsplit_once('/') {
        Some((a, p)) if p.parse::<u8>().is_err() || !a.contains(':') || a.starts_with('[') => {
            (a, p.parse::<Proto>()?)
        }
        _ => (s, Proto::TCP),
    };
    if let Ok(ip) = addr_port.parse::<IpAddr>() {
        return Ok((ip, None, proto));
    }
    match addr_port.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok((sa.ip(), Some(sa.port()), proto)),
        Ok(_) => Err(format!("port 0 in {s:?} is not a destination port")),
        Err(_) => Err(format!(
            "{s:?} is not IP, IP:PORT or [IPv6]:PORT (optionally followed by /tcp, /udp, /icmp, ...)"
        )),
    }
}

/// The explanation as text (also used by tests).
#[must_use]
pub fn explain_text(
    eff: &Effective,
    compiled: &CompiledPolicy,
    ip: IpAddr,
    port: Option<u16>,
    proto: Proto,
    dir: Direction,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let what = match port {
        Some(p) => format!("{ip} {proto}/{p}"),
        None => format!("{ip} {proto}"),
    };
    let dirs = if dir == Direction::Inbound {
        "inbound (from)"
    } else {
        "outbound (to)"
    };
    let port_for_lookup = if proto.has_ports() {
        Some(port.unwrap_or(0))
    } else {
        None
    };
    // Local (management) rules match the destination in either direction, after the
    // rules of the direction: for an outbound question they count too.
    let with_local =
        |d: Direction| d == dir || (dir == Direction::Outbound && d == Direction::Local);
    let covering: Vec<&crate::rules::Rule> = eff
        .rules
        .iter()
        .filter(|r| with_local(r.direction) && r.prefixes.iter().any(|n| n.contains(&ip)))
        .collect();
    let describe = |s: &mut String, id: u32| {
        if let Some(p) = eff.provenance(id) {
            let _ = writeln!(s, "  rule {id} {}", p.name);
            if let Some(req) = &p.requirement {
                let _ = writeln!(s, "    catalog requirement {req}: {}", p.description);
            }
            let _ = writeln!(s, "    source: {}", p.source);
            for t in &p.service_tags {
                let alias = t
                    .alias
                    .as_ref()
                    .map(|a| format!(", alias {a}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    service tag {} (file name {}, changeNumber {}{alias})",
                    t.requested, t.resolved, t.change_number
                );
            }
            if let Some(r) = eff.rules.iter().find(|r| r.id == id)
                && let Some(n) = r
                    .prefixes
                    .iter()
                    .filter(|n| n.contains(&ip))
                    .max_by_key(|n| n.prefix_len())
            {
                let _ = writeln!(
                    s,
                    "    prefix {n}, protocol {}, ports {}",
                    r.proto,
                    r.ports
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
    };
    let lookup_port = if port.is_some() || !proto.has_ports() {
        port_for_lookup
    } else {
        Some(0)
    };
    let mut verdict = lookup(compiled, dir, ip, proto.0, lookup_port);
    if dir == Direction::Outbound && !matches!(verdict, Some(Ok(_))) {
        match lookup(compiled, Direction::Local, ip, proto.0, lookup_port) {
            Some(Ok(id)) => verdict = Some(Ok(id)),
            Some(Err(())) => verdict = Some(Err(())),
            None => {}
        }
    }
    match verdict {
        Some(Ok(id)) => {
            let _ = writeln!(s, "ALLOWED: {what} {dirs}");
            describe(&mut s, id);
            let others: Vec<u32> = covering.iter().map(|r| r.id).filter(|&i| i != id).collect();
            if !others.is_empty() {
                let _ = writeln!(
                    s,
                    "  also covering this address: {}",
                    others
                        .iter()
                        .map(|i| eff.provenance(*i).map_or(i.to_string(), |p| p.name.clone()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Some(Err(())) => {
            let _ = writeln!(
                s,
                "DENIED (port): {what} {dirs}: the address is covered, but not for this protocol/port. Rules covering it:"
            );
            for r in &covering {
                describe(&mut s, r.id);
            }
        }
        None => {
            let _ = writeln!(s, "DENIED (no_match): no rule covers {ip} {dirs}");
            if !eff.fqdns.is_empty() {
                let _ = writeln!(
                    s,
                    "  ({} host-name rules are allowed only once DNS resolves them; this offline explain does not resolve)",
                    eff.fqdns.len()
                );
            }
        }
    }
    s
}

/// `tagwall explain`.
///
/// # Errors
/// See [`load`]; a target that does not parse.
pub fn explain(a: &ExplainArgs) -> anyhow::Result<()> {
    let (ip, port, proto) = parse_target(&a.target).map_err(anyhow::Error::msg)?;
    let (_, mut eff, mut compiled) = build(&a.src)?;
    let mut learned = Vec::new();
    if let Some(iface) = &a.iface {
        let paths =
            crate::state::Paths::new(Path::new(crate::state::DEFAULT_BPFFS), &a.state_dir, iface);
        let dns_file = crate::dns::state_path(&paths);
        let state = crate::dns::DnsState::load(&dns_file).with_context(|| {
            format!(
                "no DNS state of a daemon on {iface} at {} (is `tagwall run` using DNS there?)",
                dns_file.display()
            )
        })?;
        // The daemon's rule ids can differ from this build's (its management rules
        // depend on its interface addresses): match by rule name, from its state.
        let running = crate::state::PolicyState::load(&paths.state_file).with_context(|| {
            format!(
                "no policy state of a daemon on {iface} at {}",
                paths.state_file.display()
            )
        })?;
        learned = state
            .who(&ip)
            .into_iter()
            .map(|(name, id)| {
                let rule = running
                    .rules
                    .iter()
                    .find(|r| r.id == id)
                    .map_or_else(|| format!("rule#{id}"), |r| r.name.clone());
                (name, rule)
            })
            .collect();
        if !learned.is_empty() {
            for (_, rule) in &learned {
                if let Some(r) = eff.rules.iter_mut().find(|r| r.name == *rule) {
                    r.prefixes.push(ipnet::IpNet::from(ip));
                }
            }
            compiled = eff
                .compile(tagwall_common::policy::DEFAULT_SETS_PER_SLOT as usize)
                .context("compiling with the DNS-learned address")?;
        }
    }
    let dir = match a.direction {
        DirArg::Outbound => Direction::Outbound,
        DirArg::Inbound => Direction::Inbound,
    };
    print!("{}", explain_text(&eff, &compiled, ip, port, proto, dir));
    if let Some(iface) = &a.iface {
        if learned.is_empty() {
            println!("  DNS on {iface}: no host name resolved to {ip}");
        }
        for (name, rule) in &learned {
            println!("  DNS on {iface}: {name} resolved to {ip} (host-name rule {rule})");
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub src: Source,
    /// Write an nftables ruleset (`nft -f FILE`).
    #[arg(long)]
    pub nft: bool,
    /// nftables table name (family inet).
    #[arg(long, default_value = "tagwall")]
    pub table: String,
    /// Hook of the filter chain: forward (gateway) or output (host).
    #[arg(long, default_value = "forward", value_parser = ["forward", "output"])]
    pub hook: String,
    /// Filter only packets entering this interface (like tagwall's XDP on it);
    /// default: filter all, let conntrack pass return traffic.
    #[arg(long)]
    pub iif: Option<String>,
    /// Output file; default: standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `tagwall export`.
///
/// # Errors
/// See [`load`]; no format chosen; the output file cannot be written.
pub fn export(a: &ExportArgs) -> anyhow::Result<()> {
    if let Some(i) = &a.iif
        && (i.is_empty()
            || i.len() > 15
            || !i
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)))
    {
        bail!("--iif {i:?} is not an interface name");
    }
    if !a.nft {
        bail!("choose an export format: --nft");
    }
    let (_, eff, compiled) = build(&a.src)?;
    let header = format!(
        "generated by tagwall {} from {}\n{} rules, {} LPM entries; host-name rules need tagwall's DNS and are not included",
        env!("CARGO_PKG_VERSION"),
        a.src.config.display(),
        eff.rules.len(),
        compiled.prefixes()
    );
    let text = crate::nft::render(
        &compiled,
        &a.table,
        &a.hook,
        a.iif.as_deref(),
        eff.audit,
        &header,
    );
    match &a.output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
