//! The policy/config file (TOML). Unknown keys, bad CIDRs, protocols or ports are
//! errors that name the file, line and field; a file with any error applies nothing.
//!
//! ```toml
//! audit = false                      # true: count would-be drops, pass them
//!
//! [management]                       # always-allow, so nobody locks themselves out
//! ssh_port = 22                      # TCP to the gateway's own addresses
//! gateway_addresses = []             # default: the addresses of --iface
//! azure_platform = true              # 168.63.129.16, 169.254.169.254 (any port)
//! ipv6_neighbor_discovery = true     # ICMPv6 to fe80::/10, ff02::/16 and the gateway itself
//! dhcp = true                        # UDP 67 to 255.255.255.255
//!
//! service_tags = "/var/lib/tagwall/servicetags/servicetags-public-400.json" # default: newest stored
//! internal_prefixes = ["10.0.0.0/16"] # the protected VNet (VirtualNetwork tag)
//! outbound_dependencies = ["aml-outbound.json"] # `az ml workspace outbound-...` output
//!
//! [fast_forward]                     # gateway: XDP forwards allowed packets itself
//! interfaces = ["eth1"]              # egress interfaces; default [] (kernel forwards)
//!
//! [azureml]                          # the workspace: catalog requirements become rules
//! cloud = "public"                   # public | government | china
//! edition = "2026"                   # "2021" (seed docs) | "2026" (default)
//! region = "westus2"
//! storage_accounts = ["mystorage"]
//! container_registries = ["myacr"]
//! workspace_id = "0c6b..."
//! scenarios = ["workspace", "compute", "python"]  # omitted: all
//! conditions = ["custom-images"]     # see `tagwall catalog`
//! exclude = []                       # requirement ids to leave out
//!
//! [[rules]]
//! name = "web"
//! to = ["203.0.113.0/24", "2001:db8::/32"]
//! service_tags = ["Storage.WestEurope"]
//! fqdns = ["pypi.org", "*.anaconda.org"]
//! protocol = "tcp"                   # any | tcp | udp | icmp | icmpv6 | 1-255
//! ports = [443, "8000-8080"]         # omitted: any port
//! direction = "outbound"             # inbound: match the source instead
//! ```

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    catalog::{Cloud, Condition, Edition, Scenario},
    rules::{Direction, PortRange, Proto, Rule},
};

/// Management allowances. Written by hand: every field has a commented default.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Management {
    /// TCP port of SSH on the gateway itself; 0 disables the allowance.
    pub ssh_port: u16,
    /// The gateway's own addresses (SSH target). Empty: those of the attached interface.
    pub gateway_addresses: Vec<IpAddr>,
    /// Azure platform: 168.63.129.16 (DNS, DHCP, health probes) and 169.254.169.254
    /// (instance metadata), any protocol and port.
    pub azure_platform: bool,
    /// ICMPv6 to link-local and link-scope multicast (neighbor discovery).
    pub ipv6_neighbor_discovery: bool,
    /// DHCP requests (UDP 67 to the broadcast address).
    pub dhcp: bool,
    /// Gateway mode: the gateway's own outbound traffic (its DNS upstream queries,
    /// updates, agents) is allowed and tracked, so its replies come back in. Off: it is
    /// judged by the rules like forwarded traffic.
    pub gateway_own_traffic: bool,
}

impl Default for Management {
    fn default() -> Self {
        Self {
            // SSH is how operators reach a gateway VM; keep it open by default.
            ssh_port: 22,
            // Filled from the interface at attach time.
            gateway_addresses: Vec::new(),
            // Without 168.63.129.16 an Azure VM loses DNS, DHCP and health probes.
            azure_platform: true,
            // Without neighbor discovery IPv6 stops working on the link.
            ipv6_neighbor_discovery: true,
            dhcp: true,
            gateway_own_traffic: true,
        }
    }
}

/// Connection tracking. Written by hand: every field has a commented default.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Conntrack {
    /// Track flows: return traffic of allowed flows passes, unsolicited inbound is
    /// judged by inbound rules. Off: every packet is judged by the policy alone.
    pub enabled: bool,
    /// Capacity of each flow table, IPv4's and IPv6's (LRU: the least recently used
    /// flow is evicted).
    /// Read when the datapath is first loaded; a restart that adopts it keeps its size.
    pub max_entries: u32,
    /// Idle timeouts in seconds, per state.
    pub tcp_syn_sent: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_closed: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub icmp: u32,
    /// Milliseconds a CPU may serve a flow from its flow cache before it consults the
    /// flow table again (0: no cache; at most 1000).
    pub cache_refresh_ms: u32,
}

impl Default for Conntrack {
    fn default() -> Self {
        let t = tagwall_common::ct::CtTimeouts::default();
        Self {
            enabled: true,
            max_entries: tagwall_common::ct::DEFAULT_CT_MAX_ENTRIES,
            tcp_syn_sent: t.tcp_syn_sent,
            tcp_established: t.tcp_established,
            tcp_closing: t.tcp_closing,
            tcp_closed: t.tcp_closed,
            udp_unreplied: t.udp_unreplied,
            udp_replied: t.udp_replied,
            icmp: t.icmp,
            cache_refresh_ms: t.cache_refresh_ms,
        }
    }
}

impl Conntrack {
    /// The datapath timeouts, or `None` when tracking is off.
    #[must_use]
    pub fn timeouts(&self) -> Option<tagwall_common::ct::CtTimeouts> {
        self.enabled.then_some(tagwall_common::ct::CtTimeouts {
            tcp_syn_sent: self.tcp_syn_sent,
            tcp_established: self.tcp_established,
            tcp_closing: self.tcp_closing,
            tcp_closed: self.tcp_closed,
            udp_unreplied: self.udp_unreplied,
            udp_replied: self.udp_replied,
            icmp: self.icmp,
            cache_refresh_ms: self.cache_refresh_ms,
        })
    }

    fn check(&self) -> Result<(), String> {
        if self.max_entries == 0 {
            return Err("field `conntrack.max_entries`: must be at least 1".to_owned());
        }
        let max = tagwall_common::ct::MAX_FLOW_CACHE_REFRESH_MS;
        if self.cache_refresh_ms > max {
            return Err(format!(
                "field `conntrack.cache_refresh_ms`: {} ms is out of range (0, off, to {max} ms)",
                self.cache_refresh_ms
            ));
        }
        for (name, v) in [
            ("tcp_syn_sent", self.tcp_syn_sent),
            ("tcp_established", self.tcp_established),
            ("tcp_closing", self.tcp_closing),
            ("tcp_closed", self.tcp_closed),
            ("udp_unreplied", self.udp_unreplied),
            ("udp_replied", self.udp_replied),
            ("icmp", self.icmp),
        ] {
            if v == 0 || v > 7 * 24 * 3600 {
                return Err(format!(
                    "field `conntrack.{name}`: {v} s is out of range (1 s to 7 days)"
                ));
            }
        }
        Ok(())
    }
}

/// Sizes of the datapath's tables. Read when the datapath is first loaded; a restart
/// that adopts pinned maps keeps their sizes (`tagwall detach`, then `tagwall run`, to
/// resize).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Datapath {
    /// Port sets per policy slot: one per distinct combination of protocols and ports
    /// that overlapping rules give a prefix.
    pub port_sets: u32,
}

impl Default for Datapath {
    fn default() -> Self {
        Self {
            port_sets: tagwall_common::policy::DEFAULT_SETS_PER_SLOT,
        }
    }
}

impl Datapath {
    fn check(&self) -> Result<(), String> {
        if self.port_sets == 0 || self.port_sets > 1 << 20 {
            return Err(format!(
                "field `datapath.port_sets`: {} is out of range (1 to {})",
                self.port_sets,
                1 << 20
            ));
        }
        Ok(())
    }
}

/// Gateway fast forwarding: allowed packets whose route leaves through one of these
/// interfaces are forwarded by the XDP program itself (FIB lookup, TTL, MACs,
/// redirect), skipping the kernel's forwarding path, netfilter included. Off (empty)
/// by default: the kernel forwards what tagwall allows. Not for gateways that NAT or
/// filter with netfilter as well.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FastForward {
    /// Egress interfaces (names in the daemon's network namespace). They must be able
    /// to transmit XDP frames (`ndo_xdp_xmit`: mlx5, ixgbe, i40e, veth whose peer runs
    /// XDP or has GRO on, ...); the kernel drops a redirected frame an interface cannot
    /// send.
    pub interfaces: Vec<String>,
}

impl FastForward {
    fn check(&self) -> Result<(), String> {
        let max = tagwall_common::policy::FWD_PORTS_MAX as usize;
        if self.interfaces.len() > max {
            return Err(format!(
                "field `fast_forward.interfaces`: {} interfaces, at most {max}",
                self.interfaces.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for i in &self.interfaces {
            // IFNAMSIZ - 1 bytes, no slash or whitespace (dev_valid_name).
            if i.is_empty()
                || i.len() > 15
                || i == "."
                || i == ".."
                || i.bytes()
                    .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
            {
                return Err(format!(
                    "field `fast_forward.interfaces`: {i:?} is not an interface name"
                ));
            }
            if !seen.insert(i) {
                return Err(format!(
                    "field `fast_forward.interfaces`: {i:?} is listed twice"
                ));
            }
        }
        Ok(())
    }
}

/// A user rule as written in the file. Destinations are any mix of CIDRs (`to`),
/// service tags (`service_tags`, resolved against the Service Tags file) and host
/// names (`fqdns`, exact or `*.suffix`, resolved by DNS).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserRule {
    pub name: Spanned<String>,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub to: Vec<Spanned<IpNet>>,
    #[serde(default)]
    pub service_tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub fqdns: Vec<Spanned<String>>,
    #[serde(default = "any_proto")]
    pub protocol: Proto,
    #[serde(default = "any_ports")]
    pub ports: Vec<PortRange>,
}

fn any_proto() -> Proto {
    Proto::ANY
}

fn any_ports() -> Vec<PortRange> {
    vec![PortRange::ANY]
}

/// The Azure Machine Learning workspace whose documented requirements the catalog
/// turns into rules.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AzureMl {
    /// public | government | china.
    #[serde(default = "default_cloud")]
    pub cloud: Cloud,
    /// Catalog edition: "2021" (the seed documents) or "2026" (default: with the
    /// requirements added since).
    #[serde(default)]
    pub edition: Edition,
    /// Azure region of the workspace, e.g. "westus2" (fills `<region>`, regional tags).
    pub region: Spanned<String>,
    /// Storage account names (`<storage>`).
    #[serde(default)]
    pub storage_accounts: Vec<String>,
    /// Container registry names (`<acr>`).
    #[serde(default)]
    pub container_registries: Vec<String>,
    /// Workspace id (`<workspace-id>`).
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Scenarios in use; omitted: all of them.
    #[serde(default)]
    pub scenarios: Option<Vec<Scenario>>,
    /// Conditions that hold for this workspace (e.g. "hbi-workspace", "custom-images").
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Catalog requirement ids to leave out (they are reported as excluded).
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
}

fn default_cloud() -> Cloud {
    Cloud::Public
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub audit: bool,
    /// Service Tags JSON file; default: the newest stored one for the cloud
    /// (`tagwall tags update`).
    pub service_tags: Option<PathBuf>,
    /// The protected network's own prefixes (the `VirtualNetwork` tag; inbound
    /// targets).
    pub internal_prefixes: Vec<IpNet>,
    /// Outbound-dependencies API responses (AML, AKS, Batch, ...) whose endpoints
    /// become rules (relative paths: relative to the config file).
    pub outbound_dependencies: Vec<PathBuf>,
    pub management: Management,
    pub conntrack: Conntrack,
    pub datapath: Datapath,
    pub fast_forward: FastForward,
    pub azureml: Option<AzureMl>,
    pub rules: Vec<UserRule>,
    /// Host-name enforcement: resolver and/or DNS proxy (see `crate::dns::config`).
    #[serde(default)]
    pub dns: crate::dns::DnsConfig,
    /// Denied-flow log, its rate limit, top-denied table size, metrics endpoint.
    #[serde(default)]
    pub reports: crate::reports::ReportsConfig,
    /// Where the config came from, for error messages (file name and line starts).
    #[serde(skip)]
    pub origin: Origin,
}

/// The name and line table of a config text, to turn spans into line numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub name: String,
    line_starts: Vec<usize>,
}

impl Origin {
    #[must_use]
    pub fn new(name: &str, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name: name.to_owned(),
            line_starts,
        }
    }

    /// 1-based line of a byte offset.
    #[must_use]
    pub fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// `file line N, field F: message`.
    #[must_use]
    pub fn at<T>(
        &self,
        span: &Spanned<T>,
        field: &str,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.name.clone(),
            message: format!(
                "line {}, field `{field}`: {message}",
                self.line(span.span().start)
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: String, message: String },
}

/// Is `s` a host name (`a.b.c`) or a wildcard (`*.b.c`, one or more labels)?
///
/// # Errors
/// What is wrong with it.
pub fn check_fqdn(s: &str) -> Result<(), String> {
    let body = s.strip_prefix("*.").unwrap_or(s);
    if body.is_empty() || body.len() > 253 {
        return Err(format!("{s:?} is not a host name"));
    }
    if !body.contains('.') && s.starts_with("*.") {
        return Err(format!(
            "{s:?}: a wildcard needs a domain with a dot after `*.`"
        ));
    }
    for label in body.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{s:?}: label {label:?} is not a DNS label (letters, digits, '-'; `*.` only as the first label)"
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Parse and validate a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, and for syntax or field errors the line,
    /// column and field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate config text; `origin` names it in errors.
    ///
    /// # Errors
    /// See [`Config::load`].
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let mut cfg: Self = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        cfg.origin = Origin::new(origin, text);
        let o = &cfg.origin;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let field = |f: &str| format!("rules[{i}].{f}");
            let name = r.name.get_ref();
            if name.trim().is_empty() {
                return Err(o.at(&r.name, &field("name"), "must not be empty"));
            }
            if !seen.insert(name.as_str()) {
                return Err(o.at(
                    &r.name,
                    &field("name"),
                    format!("duplicate rule name {name:?}"),
                ));
            }
            if r.to.is_empty() && r.service_tags.is_empty() && r.fqdns.is_empty() {
                return Err(o.at(
                    &r.name,
                    &field("to"),
                    format!(
                        "rule {name:?} lists no destinations: give `to`, `service_tags` or `fqdns`"
                    ),
                ));
            }
            if r.ports.is_empty() {
                return Err(o.at(&r.name, &field("ports"), "empty; omit it for any port"));
            }
            if !r.protocol.has_ports() && r.ports.iter().any(|p| !p.is_any()) {
                return Err(o.at(
                    &r.name,
                    &field("ports"),
                    format!(
                        "protocol {} has no ports; remove `ports` or use tcp/udp",
                        r.protocol
                    ),
                ));
            }
            for net in &r.to {
                let n = net.get_ref();
                if n.trunc() != *n {
                    return Err(o.at(
                        net,
                        &field("to"),
                        format!("{n} has host bits set; did you mean {}?", n.trunc()),
                    ));
                }
            }
            for f in &r.fqdns {
                check_fqdn(f.get_ref()).map_err(|m| o.at(f, &field("fqdns"), m))?;
            }
            for t in &r.service_tags {
                if t.get_ref().trim().is_empty() {
                    return Err(o.at(t, &field("service_tags"), "empty tag name"));
                }
            }
        }
        cfg.conntrack.check().map_err(invalid)?;
        cfg.datapath.check().map_err(invalid)?;
        cfg.fast_forward.check().map_err(invalid)?;
        for net in &cfg.internal_prefixes {
            if net.trunc() != *net {
                return Err(invalid(format!(
                    "field `internal_prefixes`: {net} has host bits set; did you mean {}?",
                    net.trunc()
                )));
            }
        }
        cfg.dns.validate(&cfg.origin)?;
        cfg.reports.check().map_err(invalid)?;
        if let Some(az) = &cfg.azureml {
            let region = az.region.get_ref();
            if region.is_empty() || !region.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(o.at(
                    &az.region,
                    "azureml.region",
                    format!("{region:?} is not an Azure region name (e.g. \"westus2\")"),
                ));
            }
            for ex in &az.exclude {
                if crate::catalog::Catalog::embedded()
                    .get(ex.get_ref())
                    .is_none()
                {
                    return Err(o.at(
                        ex,
                        "azureml.exclude",
                        format!(
                            "{:?} is not a catalog requirement id (see `tagwall catalog`)",
                            ex.get_ref()
                        ),
                    ));
                }
            }
        }
        Ok(cfg)
    }
}

fn host(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

fn mgmt(name: &str, prefixes: Vec<IpNet>, proto: Proto, ports: Vec<PortRange>, why: &str) -> Rule {
    Rule {
        id: 0,
        name: format!("mgmt:{name}"),
        // Management traffic is matched by destination whichever way it goes (SSH to
        // the gateway comes in; platform DNS goes out).
        direction: Direction::Local,
        prefixes,
        proto,
        ports,
        origin: format!("management allowance: {why}"),
    }
}

/// The always-allow rules for management traffic.
#[must_use]
pub fn management_rules(m: &Management, iface_addrs: &[IpAddr]) -> Vec<Rule> {
    let mut out = Vec::new();
    let gw: Vec<IpAddr> = if m.gateway_addresses.is_empty() {
        iface_addrs.to_vec()
    } else {
        m.gateway_addresses.clone()
    };
    if m.ssh_port != 0 && !gw.is_empty() {
        out.push(mgmt(
            "ssh",
            gw.iter().copied().map(host).collect(),
            Proto::TCP,
            vec![PortRange::single(m.ssh_port)],
            "SSH to the gateway itself",
        ));
    }
    if m.azure_platform {
        out.push(mgmt(
            "azure-platform",
            vec!["168.63.129.16/32".parse().expect("literal"), "169.254.169.254/32".parse().expect("literal")],
            Proto::ANY,
            vec![PortRange::ANY],
            "Azure platform DNS/DHCP/health (168.63.129.16) and instance metadata (169.254.169.254)",
        ));
    }
    if m.ipv6_neighbor_discovery {
        // Neighbor advertisements answer the gateway's solicitations at the address
        // it solicited from, which may be a global one: allow ICMPv6 to the gateway's
        // own IPv6 addresses too, or the gateway could not resolve its clients.
        let mut prefixes: Vec<IpNet> = vec![
            "fe80::/10".parse().expect("literal"),
            "ff02::/16".parse().expect("literal"),
        ];
        prefixes.extend(gw.iter().filter(|a| a.is_ipv6()).copied().map(host));
        out.push(mgmt(
            "ipv6-nd",
            prefixes,
            Proto::ICMPV6,
            vec![PortRange::ANY],
            "IPv6 neighbor discovery",
        ));
    }
    if m.dhcp {
        out.push(mgmt(
            "dhcp",
            vec!["255.255.255.255/32".parse().expect("literal")],
            Proto::UDP,
            vec![PortRange::single(67)],
            "DHCP requests",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn parses_a_full_file() {
        let c = Config::parse(
            r#"
audit = true
[management]
ssh_port = 2222
[[rules]]
name = "web"
to = ["203.0.113.0/24", "2001:db8::/32"]
protocol = "tcp"
ports = [443, "8000-8080"]
[[rules]]
name = "ping"
to = ["198.51.100.1/32"]
protocol = "icmp"
"#,
            "t.toml",
        )
        .unwrap();
        assert!(c.audit);
        assert_eq!(c.management.ssh_port, 2222);
        assert_eq!(
            c.rules[0].ports,
            vec![PortRange::single(443), PortRange { lo: 8000, hi: 8080 }]
        );
        assert_eq!(c.rules[1].ports, vec![PortRange::ANY]);
        let eff = crate::policy::build(
            &c,
            crate::catalog::Catalog::embedded(),
            None,
            &["10.0.0.4".parse().unwrap()],
        )
        .unwrap();
        let rules = eff.rules;
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mgmt:ssh",
                "mgmt:azure-platform",
                "mgmt:ipv6-nd",
                "mgmt:dhcp",
                "user:web",
                "user:ping"
            ]
        );
        assert_eq!(
            rules.iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn datapath_sizes_parse_and_are_range_checked() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.datapath, Datapath::default());
        let c = Config::parse("[datapath]\nport_sets = 100\n", "t.toml").unwrap();
        assert_eq!(c.datapath.port_sets, 100);
        let e = err("[datapath]\nport_sets = 2000000\n");
        assert!(
            e.contains("datapath.port_sets") && e.contains("1 to"),
            "{e}"
        );
        let e = err("[datapath]\nport_sets = 0\n");
        assert!(e.contains("datapath.port_sets"), "{e}");
    }

    #[test]
    fn the_flow_cache_refresh_time_parses_and_is_range_checked() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(
            c.conntrack.timeouts().unwrap().cache_refresh_ms,
            tagwall_common::ct::DEFAULT_FLOW_CACHE_REFRESH_MS
        );
        let c = Config::parse("[conntrack]\ncache_refresh_ms = 0\n", "t.toml").unwrap();
        assert_eq!(c.conntrack.timeouts().unwrap().cache_refresh_ms, 0);
        let e = err("[conntrack]\ncache_refresh_ms = 1001\n");
        assert!(
            e.contains("conntrack.cache_refresh_ms") && e.contains("1000 ms"),
            "{e}"
        );
    }

    #[test]
    fn fast_forward_interfaces_are_checked() {
        let c = Config::parse(
            "[fast_forward]\ninterfaces = [\"eth1\", \"eth2\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.fast_forward.interfaces, ["eth1", "eth2"]);
        assert!(
            Config::parse("", "t.toml")
                .unwrap()
                .fast_forward
                .interfaces
                .is_empty()
        );
        for (bad, what) in [
            ("[\"eth1\", \"eth1\"]", "listed twice"),
            ("[\"\"]", "not an interface name"),
            ("[\"a-name-longer-than-15\"]", "not an interface name"),
            ("[\"eth 1\"]", "not an interface name"),
        ] {
            let e = err(&format!("[fast_forward]\ninterfaces = {bad}\n"));
            assert!(
                e.contains("fast_forward.interfaces") && e.contains(what),
                "{bad}: {e}"
            );
        }
        let e = err("[fast_forward]\nports = [\"eth1\"]\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[datapath]\nlookup = 3\n");
        assert!(e.contains("lookup"), "{e}");
    }

    #[test]
    fn bad_input_names_file_line_and_field() {
        let e = err("[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/33\"]\n");
        assert!(
            e.contains("t.toml") && e.contains("line 3") && e.contains("to"),
            "{e}"
        );
        let e = err("[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/8\"]\nports = [70000]\n");
        assert!(e.contains("line 4") && e.contains("70000"), "{e}");
        let e = err("[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"tcpp\"\n");
        assert!(
            e.contains("line 4") && e.contains("unknown protocol"),
            "{e}"
        );
        let e = err("audit = true\nbogus = 1\n");
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        let e = err("[[rules]]\nname = \"a\"\nto = [\"10.0.0.1/8\"]\n");
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        let e = err(
            "[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/8\"]\nprotocol = \"icmp\"\nports = [1]\n",
        );
        assert!(e.contains("has no ports"), "{e}");
        let e = err("[[rules]]\nname = \"a\"\nto = []\n");
        assert!(e.contains("no destinations"), "{e}");
        let e = err(
            "[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/8\"]\n[[rules]]\nname = \"a\"\nto = [\"10.0.0.0/8\"]\n",
        );
        assert!(e.contains("duplicate"), "{e}");
    }
}
