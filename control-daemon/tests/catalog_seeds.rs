//! The 2021 catalog against its sources: every host name, wildcard, URL, service tag,
//! port and port range in the markdown tables of the two seed documents, and the
//! requirements their prose states, must be carried by a catalog entry whose
//! `source.doc` names that document. The seeds are read at test time from
//! `/work/shared/seeds` (`$CARGO_MANIFEST_DIR/../../shared/seeds`); a missing seed is a
//! failure, never a skip. All missing items are reported in one failure.
//!
//! Also: `tagwall catalog --format json` run as a process, checked against the
//! documented schema.

use std::{
    fmt,
    path::PathBuf,
    process::{Command, Output},
};

use tagwall::{
    catalog::{Catalog, Cloud, Condition, Edition, Requirement, Scenario, Target},
    rules::{Direction, PortRange, Proto},
};

const SEED_000: &str = "000_c3ce8697b574863e.txt";
const SEED_003: &str = "003_91ea23d36c338e6a.txt";

fn seed(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "shared",
        "seeds",
        name,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "seed document {} is missing or unreadable ({e}); the catalog tests check the \
             catalog against it and are never skipped",
            path.display()
        )
    })
}

// ---------------------------------------------------------------------------------------
// Markdown tables
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Tag,
    Host,
    Port,
    Proto,
    Text,
}

struct Table {
    /// The anchor of the `##`/`###` heading the table is under.
    anchor: String,
    /// The bold line (`**...**`) the table is under, if any since that heading.
    subheading: String,
    /// The cloud tab the table is under (`# <a name="azure-public">` ... `---`).
    cloud: Option<Cloud>,
    cols: Vec<Col>,
    /// (1-based line, cells)
    rows: Vec<(usize, Vec<String>)>,
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_owned()).collect()
}

fn col_kind(header: &str) -> Col {
    let h = header.replace(['*', '_'], "").to_lowercase();
    if h.contains("서비스 태그") || h.contains("service tag") {
        Col::Tag
    } else if h.contains("호스트") || h.contains("대상 엔드포인트") {
        Col::Host
    } else if h.contains("포트") || h.contains("port") {
        Col::Port
    } else if h.contains("프로토콜") || h.contains("protocol") {
        Col::Proto
    } else {
        Col::Text
    }
}

fn tables(text: &str) -> Vec<Table> {
    let mut out = Vec::new();
    let mut cloud = None;
    let mut anchor = String::new();
    let mut subheading = String::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if t.starts_with("# <a name=\"azure-public\"") {
            cloud = Some(Cloud::Public);
        } else if t.starts_with("# <a name=\"azure-government\"") {
            cloud = Some(Cloud::Government);
        } else if t.starts_with("# <a name=\"azure-china") {
            cloud = Some(Cloud::China);
        } else if t == "---" {
            cloud = None;
        } else if t.starts_with("## ") || t.starts_with("### ") {
            if let Some(rest) = t.split_once("<a name=\"").map(|(_, r)| r) {
                rest.split('"')
                    .next()
                    .unwrap_or_default()
                    .clone_into(&mut anchor);
                subheading.clear();
            }
        } else if t.len() > 4 && t.starts_with("**") && t.ends_with("**") {
            t.trim_matches('*').trim().clone_into(&mut subheading);
        }
        if !t.starts_with('|') {
            i += 1;
            continue;
        }
        let start = i;
        while i < lines.len() && lines[i].trim().starts_with('|') {
            i += 1;
        }
        let block = &lines[start..i];
        assert!(
            block.len() >= 2
                && cells(block[1])
                    .iter()
                    .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' '))),
            "line {}: a table without a separator row",
            start + 1
        );
        out.push(Table {
            anchor: anchor.clone(),
            subheading: subheading.clone(),
            cloud,
            cols: cells(block[0]).iter().map(|h| col_kind(h)).collect(),
            rows: block[2..]
                .iter()
                .enumerate()
                .map(|(k, l)| (start + 3 + k, cells(l)))
                .collect(),
        });
    }
    out
}

/// Markdown and HTML removed: `**`, backticks, `\`, `<br>`/`<li>`..., `[text](link)`
/// becomes `text`. Placeholders such as `<storage>` stay.
fn clean(cell: &str) -> String {
    let mut s = cell.to_owned();
    for tag in ["</br>", "<br>", "<br/>", "<ul>", "</ul>", "<li>", "</li>"] {
        s = s.replace(tag, " ");
    }
    let s = s.replace("**", "").replace(['`', '\\'], "");
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Spaces the translation put around dots and placeholders removed:
/// `*.workspace. <region> . api.azureml.ms` becomes `*.workspace.<region>.api.azureml.ms`.
fn collapse(s: &str) -> String {
    let mut s = s.to_owned();
    loop {
        let n = s
            .replace(". ", ".")
            .replace(" .", ".")
            .replace("< ", "<")
            .replace(" >", ">");
        if n == s {
            return s;
        }
        s = n;
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Tag(String),
    Fqdn(String),
    Wildcard(String),
    Url { host: String, path: String },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => write!(f, "service tag {t}"),
            Self::Fqdn(h) | Self::Wildcard(h) => f.write_str(h),
            Self::Url { host, path } => write!(f, "{host}{path}"),
        }
    }
}

fn host_like(t: &str) -> bool {
    let host = t.split('/').next().unwrap_or(t);
    t.contains('.')
        && !t.starts_with(['.', '/'])
        && !t.to_ascii_lowercase().ends_with(".md")
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*<>/".contains(c))
        && host
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.is_empty() && tld.chars().all(|c| c.is_ascii_lowercase()))
}

/// A host-name token as an item. `*name` without a dot (`*pytorch.org`,
/// `*blob.core.chinacloudapi.cn`) is read as `*.name`: the catalog must carry the
/// wildcard (and may add the bare name).
fn host_item(token: &str) -> Item {
    if let Some((host, path)) = token.split_once('/') {
        return Item::Url {
            host: host.to_owned(),
            path: format!("/{path}"),
        };
    }
    match token.strip_prefix('*') {
        Some(rest) => Item::Wildcard(format!("*.{}", rest.trim_start_matches('.'))),
        None => Item::Fqdn(token.to_owned()),
    }
}

fn tokens(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .map(|t| {
            t.trim_matches(|c: char| ",;()".contains(c))
                .to_ascii_lowercase()
        })
        .filter(|t| !t.is_empty())
}

/// `80, 443`, `https:443`, `http:80`, `29876-29877`.
fn port_tokens(cell: &str) -> Result<Vec<(Option<Proto>, PortRange)>, String> {
    tokens(cell)
        .map(|t| {
            let (proto, p) = match t.split_once(':') {
                Some(("http" | "https", p)) => (Some(Proto::TCP), p.to_owned()),
                _ => (None, t.clone()),
            };
            p.parse::<PortRange>()
                .map(|r| (proto, r))
                .map_err(|e| format!("{t}: {e}"))
        })
        .collect()
}

/// `포트 44224`, `포트 29876-29877` in running text.
fn text_ports(s: &str) -> Vec<PortRange> {
    s.match_indices("포트 ")
        .filter_map(|(i, m)| {
            let rest = &s[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Matching against the catalog
// ---------------------------------------------------------------------------------------

fn norm_tag(t: &str) -> String {
    t.replace(['<', '>'], "").to_ascii_lowercase()
}

fn carries(r: &Requirement, item: &Item) -> bool {
    match (item, &r.target) {
        (Item::Tag(t), Target::ServiceTag { tag }) => norm_tag(t) == norm_tag(tag),
        (Item::Fqdn(h), Target::Fqdn { name }) => h == name,
        (Item::Wildcard(p), Target::WildcardFqdn { pattern }) => p == pattern,
        (Item::Url { host, path }, Target::Url { host: h, path: p }) => host == h && path == p,
        _ => false,
    }
}

fn covers(r: &Requirement, proto: Option<Proto>, port: PortRange) -> bool {
    proto.is_none_or(|p| r.proto == p || r.proto == Proto::ANY)
        && r.ports
            .iter()
            .any(|pr| pr.lo <= port.lo && port.hi <= pr.hi)
}

struct Check<'a> {
    doc: &'static str,
    reqs: Vec<&'a Requirement>,
    missing: Vec<String>,
    items: usize,
}

impl<'a> Check<'a> {
    fn new(catalog: &'a Catalog, doc: &'static str) -> Self {
        let reqs: Vec<&Requirement> = catalog
            .requirements
            .iter()
            .filter(|r| r.source.doc.contains(doc))
            .collect();
        Self {
            doc,
            reqs,
            missing: Vec::new(),
            items: 0,
        }
    }

    /// `item` (with `ports`) from the table under heading `#anchor` and bold line
    /// `sub`, in the `cloud` tab: carried by an entry of this document whose section
    /// names that heading and bold line, for that cloud.
    fn target(
        &mut self,
        (line, anchor, sub, cloud): (usize, &str, &str, Option<Cloud>),
        item: &Item,
        ports: &[(Option<Proto>, PortRange)],
    ) {
        self.items += 1;
        let section = if sub.is_empty() {
            format!("#{anchor}")
        } else {
            format!("#{anchor} > {sub}")
        };
        let carriers: Vec<&&Requirement> = self
            .reqs
            .iter()
            .filter(|r| {
                carries(r, item)
                    && r.source.section.contains(&format!("#{anchor}"))
                    && r.source.section.contains(sub)
                    && cloud.is_none_or(|c| r.clouds.contains(&c))
            })
            .collect();
        let where_ = match cloud {
            Some(c) => format!("{}:{line} ({section}, {c})", self.doc),
            None => format!("{}:{line} ({section})", self.doc),
        };
        if carriers.is_empty() {
            self.missing.push(format!("{where_}: {item}"));
            return;
        }
        for &(proto, port) in ports {
            if !carriers.iter().any(|r| covers(r, proto, port)) {
                self.missing.push(format!(
                    "{where_}: {item} port {port}{}",
                    proto.map(|p| format!("/{p}")).unwrap_or_default()
                ));
            }
        }
    }

    fn port(&mut self, line: usize, port: PortRange) {
        self.items += 1;
        if !self.reqs.iter().any(|r| covers(r, None, port)) {
            self.missing
                .push(format!("{}:{line}: port {port}", self.doc));
        }
    }

    fn tables(&mut self, text: &str) {
        for table in tables(text) {
            for (line, row) in &table.rows {
                let mut targets = Vec::new();
                let mut text_hosts = Vec::new();
                let mut ports = Vec::new();
                let mut proto = None;
                let mut loose_ports = Vec::new();
                for (cell, col) in row.iter().zip(&table.cols) {
                    let c = clean(cell);
                    match col {
                        Col::Tag => {
                            let c = collapse(&c.replace("지역", "region"));
                            let tag = c.split_whitespace().next().unwrap_or_default();
                            targets.push(Item::Tag(tag.to_owned()));
                        }
                        Col::Host => {
                            for t in tokens(&collapse(&c)) {
                                if host_like(&t) {
                                    targets.push(host_item(&t));
                                } else {
                                    self.missing.push(format!(
                                        "{}:{line}: cannot read host cell token {t:?} (test parser)",
                                        self.doc
                                    ));
                                }
                            }
                        }
                        Col::Port => match port_tokens(&c) {
                            Ok(p) => ports = p,
                            Err(e) => self.missing.push(format!(
                                "{}:{line}: cannot read port cell: {e} (test parser)",
                                self.doc
                            )),
                        },
                        Col::Proto => {
                            proto = Some(c.parse::<Proto>().unwrap_or_else(|e| {
                                panic!("{}:{line}: protocol cell {c:?}: {e}", self.doc)
                            }));
                        }
                        Col::Text => {
                            text_hosts
                                .extend(tokens(&c).filter(|t| host_like(t)).map(|t| host_item(&t)));
                            loose_ports.extend(text_ports(&c));
                        }
                    }
                }
                let ports: Vec<(Option<Proto>, PortRange)> =
                    ports.into_iter().map(|(p, r)| (p.or(proto), r)).collect();
                if targets.is_empty() {
                    // A table of ports only (well-known ports).
                    for &(_, p) in &ports {
                        self.port(*line, p);
                    }
                }
                let at = (
                    *line,
                    table.anchor.as_str(),
                    table.subheading.as_str(),
                    table.cloud,
                );
                for t in &targets {
                    self.target(at, t, &ports);
                }
                for t in &text_hosts {
                    self.target(at, t, &[]);
                }
                for p in loose_ports {
                    self.port(*line, p);
                }
            }
        }
    }

    /// Some entry from this document satisfies `ok`.
    fn some(&mut self, what: &str, ok: impl Fn(&Requirement) -> bool) {
        self.items += 1;
        if !self.reqs.iter().any(|r| ok(r)) {
            self.missing.push(format!("{} (prose): {what}", self.doc));
        }
    }

    /// Every entry from this document that `applies` satisfies `ok`, and there is one.
    fn every(
        &mut self,
        what: &str,
        applies: impl Fn(&Requirement) -> bool,
        ok: impl Fn(&Requirement) -> bool,
    ) {
        self.items += 1;
        let hits: Vec<&&Requirement> = self.reqs.iter().filter(|r| applies(r)).collect();
        if hits.is_empty() {
            self.missing
                .push(format!("{} (prose): {what}: no entry", self.doc));
        }
        for r in hits.into_iter().filter(|r| !ok(r)) {
            self.missing
                .push(format!("{} (prose): {what}: {} does not", self.doc, r.id));
        }
    }
}

fn tag(r: &Requirement, name: &str) -> bool {
    matches!(&r.target, Target::ServiceTag { tag } if tag == name)
}

fn host(r: &Requirement, name: &str) -> bool {
    r.target.to_string() == name
}

fn ports_are(r: &Requirement, ports: &[u16]) -> bool {
    ports
        .iter()
        .all(|&p| r.ports.iter().any(|pr| pr.contains(p)))
}

fn out(r: &Requirement, scenario: Scenario) -> bool {
    r.direction == Direction::Outbound && r.scenario == scenario
}

fn prose_000(c: &mut Check) {
    c.some(
        "inbound from AzureMachineLearning on TCP 44224 (compute)",
        |r| {
            r.direction == Direction::Inbound
                && r.scenario == Scenario::Compute
                && tag(r, "AzureMachineLearning")
                && r.proto == Proto::TCP
                && ports_are(r, &[44224])
        },
    );
    c.some(
        "inbound from Azure Batch management on TCP 29876-29877 (compute)",
        |r| {
            r.direction == Direction::Inbound
                && tag(r, "BatchNodeManagement")
                && r.proto == Proto::TCP
                && r.ports
                    == [PortRange {
                        lo: 29876,
                        hi: 29877,
                    }]
        },
    );
    for t in [
        "Storage.<region>",
        "Keyvault.<region>",
        "AzureActiveDirectory",
        "AzureResourceManager",
        "AzureMachineLearning",
    ] {
        c.some(&format!("compute outbound to {t}"), |r| {
            out(r, Scenario::Compute) && tag(r, t)
        });
    }
    for t in [
        "AzureActiveDirectory",
        "AzureFrontDoor.FrontEnd",
        "AzureMachineLearning",
        "AzureResourceManager",
    ] {
        c.some(&format!("studio outbound to {t}"), |r| {
            out(r, Scenario::Studio) && tag(r, t)
        });
    }
    c.some("Docker images from Microsoft Container Registry", |r| {
        out(r, Scenario::DockerImages) && host(r, "mcr.microsoft.com")
    });
    c.some("Docker images from viennaglobal.azurecr.io", |r| {
        out(r, Scenario::DockerImages) && host(r, "viennaglobal.azurecr.io")
    });
}

fn prose_003(c: &mut Check) {
    c.every(
        "compute instance ports 8787 and 18881 only with a workspace private endpoint",
        |r| {
            r.ports
                .iter()
                .any(|p| p.contains(8787) || p.contains(18881))
        },
        |r| r.conditions == [Condition::PrivateEndpoint] && ports_are(r, &[8787, 18881]),
    );
    c.some("*.instances.azureml.ms on 443 without condition", |r| {
        host(r, "*.instances.azureml.ms") && ports_are(r, &[443]) && r.conditions.is_empty()
    });
    c.every(
        "Key Vault (tag and hosts) only for hbi_workspace workspaces",
        |r| tag(r, "Keyvault.<region>") || r.target.to_string().contains(".vault."),
        |r| r.conditions.contains(&Condition::HbiWorkspace),
    );
    c.every(
        "ContainerRegistry.<region> only for custom images",
        |r| tag(r, "ContainerRegistry.<region>"),
        |r| r.conditions.contains(&Condition::CustomImages),
    );
    c.every(
        "MicrosoftContainerRegistry.<region> only for Microsoft images with user-managed deps",
        |r| tag(r, "MicrosoftContainerRegistry.<region>"),
        |r| r.conditions.contains(&Condition::MicrosoftImagesUserDeps),
    );
    c.every(
        "AzureFrontDoor.FrontEnd not needed in Azure China",
        |r| tag(r, "AzureFrontDoor.FrontEnd"),
        |r| !r.clouds.contains(&Cloud::China),
    );
    c.some("AKS: outbound to mcr.microsoft.com", |r| {
        out(r, Scenario::Aks) && host(r, "mcr.microsoft.com")
    });
    for h in [
        "dc.applicationinsights.azure.com",
        "dc.applicationinsights.microsoft.com",
        "dc.services.visualstudio.com",
        "*.in.applicationinsights.azure.com",
    ] {
        c.some(&format!("monitoring host {h}"), |r| {
            out(r, Scenario::Monitoring) && host(r, h)
        });
    }
    c.every(
        "application rules (Python, R, VS Code hosts) use http and https",
        |r| {
            matches!(
                r.scenario,
                Scenario::Python | Scenario::R | Scenario::Vscode
            )
        },
        |r| r.proto == Proto::TCP && ports_are(r, &[80, 443]),
    );
    c.every(
        "*.pythonhosted.org only when the pip index is overridden",
        |r| host(r, "*.pythonhosted.org"),
        |r| r.conditions == [Condition::PipIndexOverridden],
    );
    for h in [
        "*.azurecr.io",
        "*.blob.core.windows.net",
        "*.workspace.<region>.api.azureml.ms",
        "<region>.experiments.azureml.net",
        "<region>.api.azureml.ms",
    ] {
        for s in [Scenario::ArcTraining, Scenario::ArcInference] {
            c.some(&format!("training-and-inference table: {h} for {s}"), |r| {
                out(r, s) && host(r, h) && ports_are(r, &[443])
            });
        }
    }
    c.some("Dependencies API: login.microsoftonline.com 80, 443", |r| {
        host(r, "login.microsoftonline.com") && ports_are(r, &[80, 443])
    });
    c.some("Dependencies API: management.azure.com 443", |r| {
        host(r, "management.azure.com") && ports_are(r, &[443])
    });
}

#[test]
fn every_seed_table_cell_and_prose_requirement_is_carried() {
    let catalog = Catalog::embedded();
    let mut missing = Vec::new();
    let mut counts = Vec::new();

    let mut c000 = Check::new(catalog, SEED_000);
    c000.tables(&seed(SEED_000));
    prose_000(&mut c000);
    let mut c003 = Check::new(catalog, SEED_003);
    c003.tables(&seed(SEED_003));
    prose_003(&mut c003);

    for c in [c000, c003] {
        assert!(!c.reqs.is_empty(), "no catalog entry names {}", c.doc);
        counts.push((c.doc, c.items));
        missing.extend(c.missing);
    }
    assert!(
        missing.is_empty(),
        "{} seed items are not carried by a catalog entry that names their document:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    // The parser really read the documents (a broken parser must not pass vacuously).
    assert!(counts[0].1 >= 16, "{counts:?}");
    assert!(counts[1].1 >= 136, "{counts:?}");
}

#[test]
fn the_seed_parser_reads_what_the_documents_write() {
    let t = tables(&seed(SEED_003));
    assert!(t.len() >= 18, "{} tables", t.len());
    assert!(t.iter().any(|t| t.cloud == Some(Cloud::China)));
    assert_eq!(
        tokens(&collapse(&clean(
            r"*.workspace. \<region\> . api.azureml.ms ,  \<region\> .experiments.azureml.net"
        )))
        .collect::<Vec<_>>(),
        [
            "*.workspace.<region>.api.azureml.ms",
            "<region>.experiments.azureml.net"
        ]
    );
    assert_eq!(
        host_item("*pytorch.org"),
        Item::Wildcard("*.pytorch.org".into())
    );
    assert_eq!(
        host_item("raw.githubusercontent.com/a/b/*"),
        Item::Url {
            host: "raw.githubusercontent.com".into(),
            path: "/a/b/*".into()
        }
    );
    assert_eq!(
        port_tokens("https:443").expect("port"),
        [(Some(Proto::TCP), PortRange::single(443))]
    );
    assert_eq!(
        text_ports("포트 29876-29877에서"),
        [PortRange {
            lo: 29876,
            hi: 29877
        }]
    );
    assert_eq!(
        clean("[사용자 지정 DNS](how-to-custom-dns.md)을"),
        "사용자 지정 DNS을"
    );
    assert!(!host_like("how-to-custom-dns.md") && !host_like("사용됩니다."));
}

// ---------------------------------------------------------------------------------------
// Edition 2026 against the newer documents
// ---------------------------------------------------------------------------------------

/// How the newer documents write the catalog's placeholders.
const SPELLINGS: &[(&str, &[&str])] = &[
    ("<acr>", &["<your ACR name>"]),
    ("<storage>", &["<storage>", "<your storage account name>"]),
    ("<workspace-id>", &["<your workspace ID>"]),
    ("<region>", &["<region>", "region"]),
];

/// The ways `text` may be written in a document, placeholders spelled out.
fn spellings(text: &str) -> Vec<String> {
    let mut out = vec![text.to_owned()];
    for (token, alternatives) in SPELLINGS {
        out = out
            .into_iter()
            .flat_map(|s| {
                if s.contains(token) {
                    alternatives.iter().map(|a| s.replace(token, a)).collect()
                } else {
                    vec![s]
                }
            })
            .collect();
    }
    out
}

#[test]
fn every_2026_entry_is_found_in_its_cited_document() {
    // Entries whose target the cited text names by another word (checked by hand).
    let worded: &[(&str, &str)] = &[(
        "compute-in-batch-pip",
        "the concept doc says \"Azure Batch (TCP on ports 29876-29877)\"",
    )];
    let shared: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "..", "shared"]
        .iter()
        .collect();
    let mut missing = Vec::new();
    let mut n = 0;
    for r in Catalog::embedded()
        .requirements
        .iter()
        .filter(|r| r.edition == Edition::E2026)
    {
        n += 1;
        let file = r.source.doc.split_whitespace().next().unwrap_or_default();
        let path = shared.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: cited document {} unreadable: {e}",
                    r.id,
                    path.display()
                )
            })
            .replace(['`', '\\'], "");
        if worded.iter().any(|(id, _)| *id == r.id) {
            continue;
        }
        let written = match &r.target {
            Target::ServiceTag { tag } => tag.clone(),
            t => t.to_string(),
        };
        if !spellings(&written)
            .iter()
            .any(|s| text.contains(s.as_str()))
        {
            missing.push(format!("{}: {written} not in {file}", r.id));
        }
        let heading = r
            .source
            .section
            .split(['>', ';'])
            .next()
            .unwrap_or_default()
            .trim();
        if !text.contains(heading) {
            missing.push(format!("{}: section {heading:?} not in {file}", r.id));
        }
    }
    assert!(n >= 40, "{n} entries of edition 2026");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

fn tagwall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagwall"))
        .args(args)
        .env_remove("TAGWALL_LOG")
        .output()
        .expect("run tagwall")
}

fn sorted_keys(v: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// One element of `requirements` (china, 2021) against docs/catalog.md; true if it
/// is host-level.
fn check_json_requirement(r: &serde_json::Value) -> bool {
    assert_eq!(
        sorted_keys(r),
        [
            "clouds",
            "conditions",
            "description",
            "direction",
            "edition",
            "enforcement",
            "id",
            "ports",
            "protocol",
            "replaces",
            "scenario",
            "source",
            "target"
        ]
    );
    assert_eq!(r["edition"], "2021");
    assert!(
        r["clouds"]
            .as_array()
            .expect("clouds")
            .contains(&"china".into())
    );
    assert!(matches!(
        r["direction"].as_str(),
        Some("outbound" | "inbound")
    ));
    assert!(matches!(
        r["protocol"].as_str(),
        Some("tcp" | "udp" | "any")
    ));
    for p in r["ports"].as_array().expect("ports") {
        p.as_str()
            .expect("ports are strings")
            .parse::<PortRange>()
            .expect("port range");
    }
    let t = &r["target"];
    let mut want: Vec<&str> = match t["kind"].as_str() {
        Some("service_tag") => vec!["kind", "tag"],
        Some("fqdn") => vec!["kind", "name"],
        Some("wildcard_fqdn") => vec!["kind", "pattern"],
        Some("url") => vec!["kind", "host", "path"],
        k => panic!("target kind {k:?}"),
    };
    want.sort_unstable();
    assert_eq!(sorted_keys(t), want);
    assert_ne!(t["tag"], "AzureFrontDoor.FrontEnd", "not in Azure China");
    let src = &r["source"];
    assert_eq!(sorted_keys(src), ["doc", "note", "section"]);
    assert!(src["doc"].as_str().is_some_and(|d| d.starts_with("seeds/")));
    assert!(src["section"].is_string());
    assert!(src["note"].is_string() || src["note"].is_null());
    match (t["kind"].as_str(), r["enforcement"]["kind"].as_str()) {
        (Some("url"), Some("host_level")) => {
            let reason = r["enforcement"]["reason"].as_str();
            assert!(reason.is_some_and(|s| s.contains("URL path")), "{reason:?}");
            true
        }
        (Some(_), Some("network")) => {
            assert_eq!(sorted_keys(&r["enforcement"]), ["kind"]);
            false
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cli_json_follows_the_documented_schema() {
    let o = tagwall(&[
        "catalog",
        "--format",
        "json",
        "--cloud",
        "AzureChinaCloud",
        "--edition",
        "2021",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        sorted_keys(&v),
        ["cloud", "edition", "requirements", "schema"]
    );
    assert_eq!(v["schema"], "tagwall.catalog/v1");
    assert_eq!(v["cloud"], "china");
    assert_eq!(v["edition"], "2021");

    let reqs = v["requirements"].as_array().expect("array");
    let expected: Vec<&str> = Catalog::embedded()
        .select(Cloud::China, Edition::E2021)
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    let ids: Vec<&str> = reqs.iter().map(|r| r["id"].as_str().expect("id")).collect();
    assert_eq!(ids, expected);
    let host_level = reqs.iter().filter(|r| check_json_requirement(r)).count();
    assert_eq!(host_level, 1, "the raw.githubusercontent.com websocket row");
}

#[test]
fn cli_table_and_errors() {
    let o = tagwall(&["catalog", "--scenario", "python"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).expect("utf-8");
    assert!(text.lines().all(|l| l.chars().count() <= 120), "{text}");
    assert!(
        text.contains("*.pythonhosted.org") && text.contains("pip-index-overridden"),
        "{text}"
    );
    assert!(!text.contains("mcr.microsoft.com"), "{text}");

    let o = tagwall(&["catalog", "--scenario", "gaming"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("gaming"));
    let o = tagwall(&["catalog", "--edition", "2022"]);
    assert!(!o.status.success());
}
