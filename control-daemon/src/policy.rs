//! The effective policy: config + catalog + service tags -> rules, each traceable to
//! where it came from. A pure function (no kernel, no network): `tagwall run`,
//! `compile`, `explain` and `export` all start here, then hand the rules to
//! [`crate::compile::compile`] for the LPM layout.
//!
//! Rule ids: management allowances first, then catalog requirements (catalog order),
//! then user rules (file order). Host-name rules (exact and wildcard FQDNs) get a rule
//! id too, with no prefixes: the DNS resolver/proxy fills them in and credits that id.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    catalog::{Catalog, Cloud, Enforcement, Placeholders, Requirement, Target},
    compile::{CompileError, CompiledPolicy, compile},
    config::{Config, ConfigError, management_rules},
    rules::{Direction, PortRange, Proto, Rule},
    servicetags::{ServiceTags, TagsError},
};

/// What kind of source a rule has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Management,
    Catalog,
    User,
}

/// One service tag a rule's prefixes came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagUse {
    /// As the catalog or config wrote it (placeholders filled in).
    pub requested: String,
    /// As the Service Tags file spells it.
    pub resolved: String,
    /// The documented alias that mapped one to the other, if any.
    pub alias: Option<String>,
    pub change_number: u64,
    pub v4: usize,
    pub v6: usize,
}

/// Where a rule came from: enough to answer "why is this allowed?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub rule_id: u32,
    pub name: String,
    pub kind: RuleKind,
    /// Catalog requirement id.
    pub requirement: Option<String>,
    /// Catalog source document and section, or config file and rule.
    pub source: String,
    pub description: String,
    pub service_tags: Vec<TagUse>,
    /// Host names (exact or `*.suffix`) whose resolved addresses this rule allows.
    pub fqdns: Vec<String>,
}

/// A host-name rule awaiting DNS (resolver or proxy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FqdnRule {
    pub rule_id: u32,
    /// Lowercase; `*.suffix` for wildcards (one or more labels, apex not included).
    pub pattern: String,
    pub direction: Direction,
    pub protocol: Proto,
    pub ports: Vec<PortRange>,
}

/// A catalog requirement of the selected cloud and edition that did not become a
/// rule, and why. Nothing is dropped silently: `tagwall compile` lists these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotApplied {
    pub requirement: String,
    pub why: String,
}

/// A URL-with-path requirement: an L3/L4 datapath cannot match a path, so it is
/// reported as host level and never widened to the whole host silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostLevel {
    pub requirement: String,
    pub url: String,
    pub reason: String,
}

/// The effective policy before the LPM layout.
#[derive(Clone, Debug, Serialize)]
pub struct Effective {
    pub rules: Vec<Rule>,
    pub provenance: Vec<Provenance>,
    pub fqdns: Vec<FqdnRule>,
    pub host_level: Vec<HostLevel>,
    pub not_applied: Vec<NotApplied>,
    /// `(cloud, changeNumber, origin)` of the Service Tags file used.
    pub tags: Option<(String, u64, String)>,
    pub audit: bool,
}

impl Effective {
    /// The provenance of a rule id.
    #[must_use]
    pub fn provenance(&self, id: u32) -> Option<&Provenance> {
        self.provenance.iter().find(|p| p.rule_id == id)
    }

    /// Lay the rules out for the datapath.
    ///
    /// # Errors
    /// [`CompileError`] (too many port rules on a prefix, too many sets).
    pub fn compile(&self, max_sets: usize) -> Result<CompiledPolicy, CompileError> {
        compile(&self.rules, max_sets)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "the policy needs service tags ({needed}) but no Service Tags file was given: set `service_tags = \"FILE\"` in the config, pass --tags FILE, or store one with `tagwall tags update --file ServiceTags_<Cloud>_<date>.json`"
    )]
    NoTags { needed: String },
    #[error(
        "the Service Tags file {origin} is for cloud {file_cloud:?} but the config says cloud = \"{cloud}\": use the {cloud} file (`tagwall tags update`)"
    )]
    CloudMismatch {
        origin: String,
        file_cloud: String,
        cloud: Cloud,
    },
    #[error(transparent)]
    Tags(#[from] TagsError),
    #[error(
        "too many rules ({0}): the datapath counts at most {max} rules",
        max = tagwall_common::counters::MAX_RULES - 1
    )]
    TooManyRules(usize),
}

/// The Service Tags `cloud` value of each cloud's file.
#[must_use]
pub fn tags_cloud_name(c: Cloud) -> &'static str {
    match c {
        Cloud::Public => "Public",
        Cloud::Government => "AzureGovernment",
        Cloud::China => "China",
    }
}

fn tags_match_cloud(file_cloud: &str, c: Cloud) -> bool {
    file_cloud.eq_ignore_ascii_case(tags_cloud_name(c))
        || file_cloud.eq_ignore_ascii_case(c.azure_name())
        || file_cloud.eq_ignore_ascii_case(c.as_str())
        || (c == Cloud::China && file_cloud.eq_ignore_ascii_case("AzureChina"))
}

fn tag_use(r: &crate::servicetags::Resolved<'_>) -> TagUse {
    let (v4, v6) = r.tag.prefix_counts();
    TagUse {
        requested: r.requested.clone(),
        resolved: r.resolved_name.clone(),
        alias: r
            .alias
            .map(|a| format!("{} -> {}", a.doc_name, a.file_name)),
        change_number: r.tag.change_number,
        v4,
        v6,
    }
}

/// Does the policy need a Service Tags file at all?
#[must_use]
pub fn needs_tags(config: &Config, catalog: &Catalog) -> Option<String> {
    if let Some(r) = config.rules.iter().find(|r| !r.service_tags.is_empty()) {
        return Some(format!("rule {:?}", r.name.get_ref()));
    }
    let az = config.azureml.as_ref()?;
    catalog
        .select(az.cloud, az.edition)
        .into_iter()
        .find(|r| matches!(r.target, Target::ServiceTag { .. }))
        .map(|r| format!("catalog requirement {}", r.id))
}

/// Append a rule with the next id; its provenance takes the id and name, and each
/// host name of the provenance becomes an [`FqdnRule`] with the rule's direction,
/// protocol and ports.
fn push_rule(eff: &mut Effective, mut rule: Rule, prov: Provenance) {
    let id = u32::try_from(eff.rules.len() + 1).unwrap_or(u32::MAX);
    rule.id = id;
    eff.fqdns.extend(prov.fqdns.iter().map(|f| FqdnRule {
        rule_id: id,
        pattern: f.clone(),
        direction: rule.direction,
        protocol: rule.proto,
        ports: rule.ports.clone(),
    }));
    eff.provenance.push(Provenance {
        rule_id: id,
        name: rule.name.clone(),
        ..prov
    });
    eff.rules.push(rule);
}

struct Builder<'a> {
    config: &'a Config,
    tags: Option<&'a ServiceTags>,
    out: Effective,
}

impl Builder<'_> {
    fn push(&mut self, rule: Rule, prov: Provenance) {
        push_rule(&mut self.out, rule, prov)
    }

    fn tags(&self, needed: &str) -> Result<&ServiceTags, PolicyError> {
        self.tags.ok_or_else(|| PolicyError::NoTags {
            needed: needed.to_owned(),
        })
    }

    /// One catalog requirement -> zero or one rule (or a reported reason).
    fn requirement(&mut self, req: &Requirement, ph: &Placeholders) -> Result<(), PolicyError> {
        if let Enforcement::HostLevel { reason } = req.enforcement() {
            let url = match &req.target {
                Target::Url { host, path } => format!("{host}{path}"),
                other => format!("{other:?}"),
            };
            self.out.host_level.push(HostLevel {
                requirement: req.id.clone(),
                url,
                reason,
            });
            return Ok(());
        }
        let targets = match req.instantiate(ph) {
            Ok(t) => t,
            Err(e) => {
                self.out.not_applied.push(NotApplied {
                    requirement: req.id.clone(),
                    why: format!("{e} (set it under [azureml])"),
                });
                return Ok(());
            }
        };
        let mut prefixes: Vec<IpNet> = Vec::new();
        let mut tag_uses = Vec::new();
        let mut fqdns = Vec::new();
        for t in &targets {
            match t {
                Target::ServiceTag { tag } => {
                    let tags = self.tags(&format!("catalog requirement {}", req.id))?;
                    match tags.resolve(tag) {
                        Ok(r) => {
                            prefixes.extend(r.tag.prefixes.iter().copied());
                            tag_uses.push(tag_use(&r));
                        }
                        Err(TagsError::NotDownloadable { name, .. })
                            if name.eq_ignore_ascii_case("VirtualNetwork") =>
                        {
                            if self.config.internal_prefixes.is_empty() {
                                self.out.not_applied.push(NotApplied {
                                    requirement: req.id.clone(),
                                    why: "VirtualNetwork means the protected network's own prefixes: set `internal_prefixes`".into(),
                                });
                                return Ok(());
                            }
                            prefixes.extend(self.config.internal_prefixes.iter().copied());
                            tag_uses.push(TagUse {
                                requested: tag.clone(),
                                resolved: "internal_prefixes".into(),
                                alias: None,
                                change_number: 0,
                                v4: self
                                    .config
                                    .internal_prefixes
                                    .iter()
                                    .filter(|p| matches!(p, IpNet::V4(_)))
                                    .count(),
                                v6: self
                                    .config
                                    .internal_prefixes
                                    .iter()
                                    .filter(|p| matches!(p, IpNet::V6(_)))
                                    .count(),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(requirement = %req.id, "service tag not applied: {e}");
                            self.out.not_applied.push(NotApplied {
                                requirement: req.id.clone(),
                                why: e.to_string(),
                            });
                            return Ok(());
                        }
                    }
                }
                Target::Fqdn { name } => fqdns.push(name.to_ascii_lowercase()),
                Target::WildcardFqdn { pattern } => fqdns.push(pattern.to_ascii_lowercase()),
                Target::Url { .. } => unreachable!("URL targets are host level"),
            }
        }
        let source = format!(
            "{} § {}{}",
            req.source.doc,
            req.source.section,
            req.source
                .note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        self.push(
            Rule {
                id: 0,
                name: format!("aml:{}", req.id),
                direction: req.direction,
                prefixes,
                proto: req.proto,
                ports: req.ports.clone(),
                origin: format!("catalog {} ({source})", req.id),
            },
            Provenance {
                rule_id: 0,
                name: String::new(),
                kind: RuleKind::Catalog,
                requirement: Some(req.id.clone()),
                source,
                description: req.description.clone(),
                service_tags: tag_uses,
                fqdns,
            },
        );
        Ok(())
    }
}

/// Build the effective policy.
///
/// `tags` must be given when the config or its catalog selection names service tags
/// ([`needs_tags`]). `iface_addrs` fill the management allowances when the config
/// names no gateway addresses.
///
/// # Errors
/// [`PolicyError`]: no or wrong-cloud tags, unknown tags in user rules (with the
/// config line), a region missing from the tags file, too many rules.
pub fn build(
    config: &Config,
    catalog: &Catalog,
    tags: Option<&ServiceTags>,
    iface_addrs: &[IpAddr],
) -> Result<Effective, PolicyError> {
    let mut b = Builder {
        config,
        tags,
        out: Effective {
            rules: Vec::new(),
            provenance: Vec::new(),
            fqdns: Vec::new(),
            host_level: Vec::new(),
            not_applied: Vec::new(),
            tags: tags.map(|t| (t.cloud.clone(), t.change_number, t.origin().to_owned())),
            audit: config.audit,
        },
    };
    let mut mgmt = management_rules(&config.management, iface_addrs);
    if config.dns.mode.proxy() && !config.dns.listen.is_empty() {
        // Clients must reach tagwall's own DNS proxy, or host-name rules never fill.
        let addrs: Vec<ipnet::IpNet> = config
            .dns
            .listen
            .iter()
            .map(|a| ipnet::IpNet::from(a.ip()))
            .collect();
        let ports: Vec<PortRange> = {
            let mut p: Vec<u16> = config
                .dns
                .listen
                .iter()
                .map(std::net::SocketAddr::port)
                .collect();
            p.sort_unstable();
            p.dedup();
            p.into_iter().map(PortRange::single).collect()
        };
        for (proto, name) in [(Proto::UDP, "dns-proxy-udp"), (Proto::TCP, "dns-proxy-tcp")] {
            mgmt.push(Rule {
                id: 0,
                name: format!("mgmt:{name}"),
                direction: Direction::Local,
                prefixes: addrs.clone(),
                proto,
                ports: ports.clone(),
                origin: "management allowance: clients reach tagwall's DNS proxy ([dns] listen)"
                    .into(),
            });
        }
    }
    for r in mgmt {
        let prov = Provenance {
            rule_id: 0,
            name: String::new(),
            kind: RuleKind::Management,
            requirement: None,
            source: format!("{} [management]", config.origin.name),
            description: r.origin.clone(),
            service_tags: vec![],
            fqdns: vec![],
        };
        b.push(r, prov);
    }
    if let Some(az) = &config.azureml {
        if let Some(t) = tags
            && !tags_match_cloud(&t.cloud, az.cloud)
        {
            return Err(PolicyError::CloudMismatch {
                origin: t.origin().to_owned(),
                file_cloud: t.cloud.clone(),
                cloud: az.cloud,
            });
        }
        let region = az.region.get_ref().to_ascii_lowercase();
        if let Some(t) = tags {
            let regions = t.regions();
            if !regions.is_empty() && !regions.contains(&region) {
                let near: Vec<&String> = regions
                    .iter()
                    .filter(|r| r.starts_with(&region[..region.len().min(4)]))
                    .take(5)
                    .collect();
                return Err(config
                    .origin
                    .at(
                        &az.region,
                        "azureml.region",
                        format!(
                            "{region:?} is not a region of the Service Tags file {} (cloud {}){}",
                            t.origin(),
                            t.cloud,
                            if near.is_empty() {
                                String::new()
                            } else {
                                format!("; close: {near:?}")
                            }
                        ),
                    )
                    .into());
            }
        }
        let ph = Placeholders {
            region: Some(region),
            storage: az.storage_accounts.clone(),
            acr: az.container_registries.clone(),
            workspace_id: az.workspace_id.clone(),
        };
        let excluded: Vec<&str> = az.exclude.iter().map(|e| e.get_ref().as_str()).collect();
        for req in catalog.select(az.cloud, az.edition) {
            if excluded.contains(&req.id.as_str()) {
                b.out.not_applied.push(NotApplied {
                    requirement: req.id.clone(),
                    why: "excluded in the config (azureml.exclude)".into(),
                });
                continue;
            }
            if let Some(sc) = &az.scenarios
                && !sc.contains(&req.scenario)
            {
                b.out.not_applied.push(NotApplied {
                    requirement: req.id.clone(),
                    why: format!("scenario {} not enabled", req.scenario),
                });
                continue;
            }
            if !req.applies(&az.conditions) {
                let missing: Vec<String> = req
                    .conditions
                    .iter()
                    .filter(|c| !az.conditions.contains(c))
                    .map(ToString::to_string)
                    .collect();
                b.out.not_applied.push(NotApplied {
                    requirement: req.id.clone(),
                    why: format!("condition {} not enabled", missing.join(", ")),
                });
                continue;
            }
            b.requirement(req, &ph)?;
        }
    }
    for (i, r) in config.rules.iter().enumerate() {
        let mut prefixes: Vec<IpNet> = r.to.iter().map(|n| *n.get_ref()).collect();
        let mut tag_uses = Vec::new();
        for t in &r.service_tags {
            let tags = b.tags(&format!("rule {:?}", r.name.get_ref()))?;
            match tags.resolve(t.get_ref()) {
                Ok(res) => {
                    prefixes.extend(res.tag.prefixes.iter().copied());
                    tag_uses.push(tag_use(&res));
                }
                Err(TagsError::NotDownloadable { name, .. })
                    if name.eq_ignore_ascii_case("VirtualNetwork")
                        && !config.internal_prefixes.is_empty() =>
                {
                    prefixes.extend(config.internal_prefixes.iter().copied());
                }
                Err(e) => {
                    return Err(config
                        .origin
                        .at(t, &format!("rules[{i}].service_tags"), e)
                        .into());
                }
            }
        }
        let fqdns: Vec<String> = r
            .fqdns
            .iter()
            .map(|f| f.get_ref().to_ascii_lowercase())
            .collect();
        let source = format!(
            "{} [[rules]] {:?} (line {})",
            config.origin.name,
            r.name.get_ref(),
            config.origin.line(r.name.span().start)
        );
        b.push(
            Rule {
                id: 0,
                name: format!("user:{}", r.name.get_ref()),
                direction: r.direction,
                prefixes,
                proto: r.protocol,
                ports: r.ports.clone(),
                origin: source.clone(),
            },
            Provenance {
                rule_id: 0,
                name: String::new(),
                kind: RuleKind::User,
                requirement: None,
                source,
                description: String::new(),
                service_tags: tag_uses,
                fqdns,
            },
        );
    }
    let max = tagwall_common::counters::MAX_RULES as usize - 1;
    if b.out.rules.len() > max {
        return Err(PolicyError::TooManyRules(b.out.rules.len()));
    }
    Ok(b.out)
}

/// Add the endpoints of an outbound-dependencies API response (`deps::load`) as
/// rules: one rule per endpoint, named `deps:<category>:<domain>`, allowing its host
/// name (exact, or `*.suffix`) on its ports, plus any IP addresses the response
/// lists. Protocols `Http`/`Https`/`TCP` map to TCP, `UDP` to UDP; none given: TCP.
///
/// # Errors
/// [`PolicyError::TooManyRules`].
pub fn add_dependencies(
    eff: &mut Effective,
    endpoints: &[crate::deps::DepEndpoint],
    origin: &str,
) -> Result<(), PolicyError> {
    for ep in endpoints {
        let mut protos: Vec<Proto> = ep
            .protocols
            .iter()
            .map(|p| {
                if p.eq_ignore_ascii_case("udp") {
                    Proto::UDP
                } else {
                    Proto::TCP
                }
            })
            .collect();
        protos.sort();
        protos.dedup();
        if protos.is_empty() {
            protos.push(Proto::TCP);
        }
        let ports: Vec<PortRange> = if ep.ports.is_empty() {
            vec![PortRange::ANY]
        } else {
            ep.ports.iter().map(|p| PortRange::single(*p)).collect()
        };
        for proto in protos {
            let name = format!(
                "deps:{}:{}{}",
                ep.category,
                ep.domain,
                if proto == Proto::UDP { ":udp" } else { "" }
            );
            let source = format!(
                "{origin} (outbound dependencies, category {:?})",
                ep.category
            );
            push_rule(
                eff,
                Rule {
                    id: 0,
                    name,
                    direction: Direction::Outbound,
                    prefixes: ep.ip_addresses.iter().map(|a| IpNet::from(*a)).collect(),
                    proto,
                    ports: ports.clone(),
                    origin: source.clone(),
                },
                Provenance {
                    rule_id: 0,
                    name: String::new(),
                    kind: RuleKind::User,
                    requirement: None,
                    source,
                    description: ep.description.clone().unwrap_or_default(),
                    service_tags: vec![],
                    fqdns: vec![ep.domain.clone()],
                },
            );
        }
    }
    if eff.rules.len() > tagwall_common::counters::MAX_RULES as usize - 1 {
        return Err(PolicyError::TooManyRules(eff.rules.len()));
    }
    Ok(())
}

/// Counts for `tagwall compile`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub rules: usize,
    pub rules_by_kind: BTreeMap<String, usize>,
    pub inbound_rules: usize,
    pub prefixes_in_v4: usize,
    pub prefixes_in_v6: usize,
    pub lpm_entries_v4: usize,
    pub lpm_entries_v6: usize,
    pub port_sets: usize,
    pub fqdn_patterns: usize,
    pub fqdn_exact: usize,
    pub fqdn_wildcard: usize,
    pub host_level: usize,
    pub not_applied: usize,
    pub map_bytes: usize,
}

impl Summary {
    #[must_use]
    pub fn new(e: &Effective, c: &CompiledPolicy) -> Self {
        use tagwall_common::policy::{PolicyKeyV4, PolicyKeyV6, PolicyValue, PortSet};
        let mut by_kind = BTreeMap::new();
        for p in &e.provenance {
            *by_kind
                .entry(format!("{:?}", p.kind).to_lowercase())
                .or_insert(0) += 1;
        }
        let (mut in4, mut in6) = (0, 0);
        for r in &e.rules {
            for p in &r.prefixes {
                match p {
                    IpNet::V4(_) => in4 += 1,
                    IpNet::V6(_) => in6 += 1,
                }
            }
        }
        let wild = e
            .fqdns
            .iter()
            .filter(|f| f.pattern.starts_with("*."))
            .count();
        // LPM trie nodes carry the key and value plus ~ 40 bytes of node overhead.
        let lpm = |key: usize, n: usize| n * (key + 4 + size_of::<PolicyValue>() + 40);
        Self {
            rules: e.rules.len(),
            rules_by_kind: by_kind,
            inbound_rules: e
                .rules
                .iter()
                .filter(|r| r.direction == Direction::Inbound)
                .count(),
            prefixes_in_v4: in4,
            prefixes_in_v6: in6,
            lpm_entries_v4: c.v4.len(),
            lpm_entries_v6: c.v6.len(),
            port_sets: c.sets.len(),
            fqdn_patterns: e.fqdns.len(),
            fqdn_exact: e.fqdns.len() - wild,
            fqdn_wildcard: wild,
            host_level: e.host_level.len(),
            not_applied: e.not_applied.len(),
            map_bytes: lpm(size_of::<PolicyKeyV4>(), c.v4.len())
                + lpm(size_of::<PolicyKeyV6>(), c.v6.len())
                + c.sets.len() * size_of::<PortSet>(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rules            {} ({})",
            self.rules,
            self.rules_by_kind
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(f, "inbound rules    {}", self.inbound_rules)?;
        writeln!(
            f,
            "prefixes in      {} IPv4, {} IPv6",
            self.prefixes_in_v4, self.prefixes_in_v6
        )?;
        writeln!(
            f,
            "LPM entries      {} IPv4, {} IPv6 (after merging and flattening overlaps)",
            self.lpm_entries_v4, self.lpm_entries_v6
        )?;
        writeln!(f, "port sets        {}", self.port_sets)?;
        writeln!(
            f,
            "host names       {} ({} exact, {} wildcard): allowed once DNS resolves them",
            self.fqdn_patterns, self.fqdn_exact, self.fqdn_wildcard
        )?;
        writeln!(
            f,
            "host level       {} URL-with-path requirements (not enforceable at L3/L4)",
            self.host_level
        )?;
        writeln!(
            f,
            "not applied      {} catalog requirements (scenario/condition off, placeholder missing, excluded)",
            self.not_applied
        )?;
        write!(
            f,
            "map memory       ~{} KiB for one policy slot",
            self.map_bytes.div_ceil(1024)
        )
    }
}
