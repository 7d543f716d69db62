//! The built-in requirements catalog: what Microsoft documents that a locked-down Azure
//! Machine Learning network must allow, as typed data with provenance.
//!
//! The data lives in `control-daemon/catalog/*.toml` (one file per *edition*) and is
//! embedded in the binary. Each [`Requirement`] names one target (a service tag, a host
//! name, a wildcard host name or a URL), a direction, a protocol and ports, the
//! [`Scenario`] it belongs to, the [`Condition`]s under which it applies, the clouds it
//! applies to, and the document and section it was taken from.
//!
//! - A requirement applies when its scenario is enabled and *all* its conditions hold.
//! - [`Catalog::select`] picks the requirements of one cloud and edition: those of that
//!   edition or older, minus those an entry in the selection `replaces`.
//! - Targets may contain placeholders (`<region>`, `<storage>`, `<acr>`,
//!   `<workspace-id>`); [`Requirement::instantiate`] substitutes them.
//! - Service tags are written as the documents write them (`Keyvault.<region>`,
//!   `AzureFrontDoor.FrontEnd`); mapping them to the names in a `ServiceTags` file is the
//!   service-tag module's job.
//!
//! See `docs/catalog.md` for the file format, the editions and the JSON schema of
//! `tagwall catalog --format json`.

use std::{fmt, str::FromStr, sync::OnceLock};

use serde::{Deserialize, Serialize};

use crate::rules::{Direction, PortRange, Proto};

mod parse;

/// The catalog files compiled into the binary: `(origin, TOML text)`, oldest edition
/// first. The origin is the path relative to the workspace root, used in errors.
pub const EMBEDDED_FILES: [(&str, &str); 2] = [
    (
        "control-daemon/catalog/2021.toml",
        include_str!("../../catalog/2021.toml"),
    ),
    (
        "control-daemon/catalog/2026.toml",
        include_str!("../../catalog/2026.toml"),
    ),
];

/// Why a URL row cannot be enforced as written.
pub const URL_HOST_LEVEL_REASON: &str = "L3/L4 cannot match a URL path; tagwall allows the host \
     only if another rule names it and reports this row as host-level";

// ---------------------------------------------------------------------------------------
// Editions and clouds
// ---------------------------------------------------------------------------------------

/// A catalog edition: the state of the documents at a point in time. Edition `N`
/// contains every entry of the editions before it, minus the entries its own entries
/// replace. The default is the latest edition.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Edition {
    /// The documents as published in late 2021 (the seed documents).
    #[serde(rename = "2021")]
    #[value(name = "2021")]
    E2021,
    /// The documents as of March 2026 (azure-ai-docs).
    #[default]
    #[serde(rename = "2026")]
    #[value(name = "2026")]
    E2026,
}

impl Edition {
    pub const ALL: [Self; 2] = [Self::E2021, Self::E2026];
    pub const LATEST: Self = Self::E2026;

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::E2021 => "2021",
            Self::E2026 => "2026",
        }
    }
}

impl fmt::Display for Edition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Edition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s.trim())
            .ok_or_else(|| format!("unknown catalog edition {s:?}: use 2021 or 2026"))
    }
}

/// An Azure cloud. The documents give separate host tables for each.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Azure public cloud (`AzureCloud`).
    #[value(alias = "AzureCloud")]
    Public,
    /// Azure Government (`AzureUSGovernment`).
    #[value(alias = "AzureUSGovernment")]
    Government,
    /// Microsoft Azure operated by 21Vianet (`AzureChinaCloud`).
    #[value(alias = "AzureChinaCloud")]
    China,
}

impl Cloud {
    pub const ALL: [Self; 3] = [Self::Public, Self::Government, Self::China];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Government => "government",
            Self::China => "china",
        }
    }

    /// The name Azure tooling uses (`az cloud list`).
    #[must_use]
    pub const fn azure_name(self) -> &'static str {
        match self {
            Self::Public => "AzureCloud",
            Self::Government => "AzureUSGovernment",
            Self::China => "AzureChinaCloud",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Cloud {
    type Err = String;

    /// `public`, `government`, `china`, or the Azure names `AzureCloud`,
    /// `AzureUSGovernment`, `AzureChinaCloud`; case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| s.eq_ignore_ascii_case(c.as_str()) || s.eq_ignore_ascii_case(c.azure_name()))
            .ok_or_else(|| {
                format!(
                    "unknown cloud {s:?}: use public, government or china \
                     (or AzureCloud, AzureUSGovernment, AzureChinaCloud)"
                )
            })
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios and conditions
// ---------------------------------------------------------------------------------------

/// Declares a unit enum whose variants each have a kebab-case name and a one-line
/// description, with `ALL`, `as_str`, `about`, `Display` and `FromStr`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[doc = $doc:literal])+ $variant:ident = $text:literal, )+ }
    ) => {
        $(#[$meta])*
        // The variant doc comments double as CLI and table text, so no backticks.
        #[allow(clippy::doc_markdown)]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            clap::ValueEnum,
        )]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $( $(#[doc = $doc])+ #[value(name = $text)] $variant, )+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }

            /// One-line description (the variant's doc comment).
            #[must_use]
            pub const fn about(self) -> &'static str {
                match self { $(Self::$variant => concat!($($doc),+).trim_ascii(),)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let s = s.trim();
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!(
                        "unknown {} {s:?}: use one of {}",
                        stringify!($name).to_ascii_lowercase(),
                        names.join(", ")
                    )
                })
            }
        }
    };
}

named_enum! {
    /// What the user does with the workspace; a requirement belongs to exactly one.
    pub enum Scenario {
        /// Core service tags every secured workspace needs (firewall network rules).
        Workspace = "workspace",
        /// Using the workspace from Azure Machine Learning studio (browser).
        Studio = "studio",
        /// Compute instances and compute clusters in the virtual network.
        Compute = "compute",
        /// Models deployed to Azure Kubernetes Service.
        Aks = "aks",
        /// Docker images that Azure Machine Learning provides and manages.
        DockerImages = "docker-images",
        /// Deploying the Azure Machine Learning extension to an Arc-enabled (2026: or AKS) cluster.
        ArcExtension = "arc-extension",
        /// Training workloads on a Kubernetes compute (Arc-enabled, 2026: or AKS).
        ArcTraining = "arc-training",
        /// Inference workloads on a Kubernetes compute (Arc-enabled, 2026: or AKS).
        ArcInference = "arc-inference",
        /// Installing Python packages (conda, pip, examples).
        Python = "python",
        /// Installing R (CRAN) packages.
        R = "r",
        /// Installing RStudio on a compute instance (image pull).
        Rstudio = "rstudio",
        /// Visual Studio Code connected to a compute instance.
        Vscode = "vscode",
        /// Azure Monitor / Application Insights metrics, logs and diagnostics.
        Monitoring = "monitoring",
        /// General Azure hosts (sign-in, portal, Resource Manager).
        AzureHosts = "azure-hosts",
        /// Azure Machine Learning hosts (studio, API, integrated notebooks).
        AmlHosts = "aml-hosts",
    }
}

named_enum! {
    /// A configuration choice a requirement depends on. A requirement applies only when
    /// every one of its conditions is enabled.
    pub enum Condition {
        /// The workspace was created with the `hbi_workspace` flag (Key Vault for Azure Batch).
        HbiWorkspace = "hbi-workspace",
        /// Custom Docker images, including small changes to Microsoft base images.
        CustomImages = "custom-images",
        /// Microsoft-provided base images with user-managed dependencies.
        MicrosoftImagesUserDeps = "microsoft-images-user-deps",
        /// The workspace has a private endpoint (compute instance ports 8787 and 18881).
        PrivateEndpoint = "private-endpoint",
        /// The pip index is overridden in user settings (`*.pythonhosted.org`).
        PipIndexOverridden = "pip-index-overridden",
        /// Some compute instance or cluster uses a public IP address (inbound from Azure).
        ComputePublicIp = "compute-public-ip",
        /// A firewall sits between the workspace VNet and the storage private endpoints (SMB 445).
        StorageFirewallSmb = "storage-firewall-smb",
        /// Azure Monitor / Application Insights is not reached over a private link.
        MonitoringWithoutPrivateLink = "monitoring-without-private-link",
        /// Private endpoints are present in the virtual network or peered virtual networks.
        PrivateEndpointsInVnet = "private-endpoints-in-vnet",
        /// AutoML NLP or Vision is used (public cloud only).
        AutomlNlpVision = "automl-nlp-vision",
        /// Visual Studio Code for the Web (vscode.dev) is used.
        VscodeWeb = "vscode-web",
        /// Visual Studio Code desktop is downloaded and installed.
        VscodeDesktop = "vscode-desktop",
        /// VS Code connects to interactive jobs (websocket server).
        InteractiveJobs = "interactive-jobs",
    }
}

// ---------------------------------------------------------------------------------------
// Targets, placeholders, enforcement
// ---------------------------------------------------------------------------------------

/// What a requirement allows traffic to (outbound) or from (inbound).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// An Azure service tag as the document writes it, e.g. `Storage.<region>`.
    ServiceTag { tag: String },
    /// An exact, lowercase host name, possibly with placeholders.
    Fqdn { name: String },
    /// `*.` followed by a host name: any name of one or more labels under it.
    WildcardFqdn { pattern: String },
    /// A URL with a path (`host` + `path`, `path` starting with `/`).
    Url { host: String, path: String },
}

impl Target {
    /// The strings of the target that may hold placeholders.
    fn texts(&self) -> Vec<&str> {
        match self {
            Self::ServiceTag { tag } => vec![tag],
            Self::Fqdn { name } => vec![name],
            Self::WildcardFqdn { pattern } => vec![pattern],
            Self::Url { host, path } => vec![host, path],
        }
    }

    /// The placeholders the target uses, in order of first appearance.
    #[must_use]
    pub fn placeholders(&self) -> Vec<Placeholder> {
        let mut out = Vec::new();
        for text in self.texts() {
            for token in placeholder_tokens(text) {
                if let Some(p) = Placeholder::from_token(token)
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    fn substitute(&self, values: &[(Placeholder, String)]) -> Self {
        let sub = |s: &str| {
            values
                .iter()
                .fold(s.to_owned(), |acc, (p, v)| acc.replace(p.token(), v))
        };
        match self {
            Self::ServiceTag { tag } => Self::ServiceTag { tag: sub(tag) },
            Self::Fqdn { name } => Self::Fqdn { name: sub(name) },
            Self::WildcardFqdn { pattern } => Self::WildcardFqdn {
                pattern: sub(pattern),
            },
            Self::Url { host, path } => Self::Url {
                host: sub(host),
                path: sub(path),
            },
        }
    }

    /// `service_tag`, `fqdn`, `wildcard_fqdn` or `url` (the JSON `kind`).
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::ServiceTag { .. } => "service_tag",
            Self::Fqdn { .. } => "fqdn",
            Self::WildcardFqdn { .. } => "wildcard_fqdn",
            Self::Url { .. } => "url",
        }
    }
}

impl fmt::Display for Target {
    /// `tag:Storage.<region>`, `pypi.org`, `*.anaconda.org`, `host/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServiceTag { tag } => write!(f, "tag:{tag}"),
            Self::Fqdn { name } => f.write_str(name),
            Self::WildcardFqdn { pattern } => f.write_str(pattern),
            Self::Url { host, path } => write!(f, "{host}{path}"),
        }
    }
}

/// `<...>` tokens in `s`, including the angle brackets.
fn placeholder_tokens(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let start = rest.find('<')?;
        let len = rest[start..].find('>')? + 1;
        let token = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(token)
    })
}

/// A value the user supplies for a target: the documents write `<region>`, `<storage>`
/// (`<your storage account name>`), `<your ACR name>` and `<your workspace ID>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placeholder {
    /// The workspace's Azure region, e.g. `westus2`.
    Region,
    /// Name of a storage account of the workspace (the default one at least).
    Storage,
    /// Name of the workspace's Azure Container Registry.
    Acr,
    /// The workspace ID (a GUID; portal: Properties, Workspace ID).
    WorkspaceId,
}

impl Placeholder {
    pub const ALL: [Self; 4] = [Self::Region, Self::Storage, Self::Acr, Self::WorkspaceId];

    /// The token as written in a target, e.g. `<region>`.
    #[must_use]
    pub const fn token(self) -> &'static str {
        match self {
            Self::Region => "<region>",
            Self::Storage => "<storage>",
            Self::Acr => "<acr>",
            Self::WorkspaceId => "<workspace-id>",
        }
    }

    #[must_use]
    pub fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.token() == token)
    }
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Values for the placeholders. `storage` and `acr` may list several accounts or
/// registries; a target then instantiates once per value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placeholders {
    pub region: Option<String>,
    pub storage: Vec<String>,
    pub acr: Vec<String>,
    pub workspace_id: Option<String>,
}

impl Placeholders {
    fn values(&self, p: Placeholder) -> Vec<&str> {
        match p {
            Placeholder::Region => self.region.iter().map(String::as_str).collect(),
            Placeholder::Storage => self.storage.iter().map(String::as_str).collect(),
            Placeholder::Acr => self.acr.iter().map(String::as_str).collect(),
            Placeholder::WorkspaceId => self.workspace_id.iter().map(String::as_str).collect(),
        }
    }
}

/// How a requirement can be enforced by an L3/L4 datapath.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Enforcement {
    /// Addresses (service-tag prefixes or resolved host names) plus protocol and ports.
    Network,
    /// Only the host part can be matched; the row is reported, never widened silently.
    HostLevel { reason: String },
}

// ---------------------------------------------------------------------------------------
// Requirements
// ---------------------------------------------------------------------------------------

/// Where an entry was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The document: file, article name, locale and date.
    pub doc: String,
    /// The heading (and table or tab) the entry comes from.
    pub section: String,
    /// How the entry was read from the text, when that needed judgement.
    pub note: Option<String>,
}

/// One documented network requirement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Stable, unique id (lowercase letters, digits and hyphens).
    pub id: String,
    /// The edition that introduced the entry.
    pub edition: Edition,
    /// Ids of entries of older editions this entry supersedes.
    pub replaces: Vec<String>,
    pub scenario: Scenario,
    pub direction: Direction,
    pub clouds: Vec<Cloud>,
    pub target: Target,
    #[serde(rename = "protocol")]
    pub proto: Proto,
    /// Destination ports (for inbound rules too: the ports on our side).
    pub ports: Vec<PortRange>,
    pub conditions: Vec<Condition>,
    pub source: Source,
    pub description: String,
}

impl Requirement {
    /// URL rows are host-level: an L3/L4 datapath cannot see the path.
    #[must_use]
    pub fn enforcement(&self) -> Enforcement {
        match self.target {
            Target::Url { .. } => Enforcement::HostLevel {
                reason: URL_HOST_LEVEL_REASON.to_owned(),
            },
            _ => Enforcement::Network,
        }
    }

    /// The placeholders the target uses, in order of first appearance.
    #[must_use]
    pub fn placeholders(&self) -> Vec<Placeholder> {
        self.target.placeholders()
    }

    /// Does the requirement apply when exactly `enabled` conditions hold?
    #[must_use]
    pub fn applies(&self, enabled: &[Condition]) -> bool {
        self.conditions.iter().all(|c| enabled.contains(c))
    }

    /// The target with every placeholder replaced; one target per combination of
    /// `storage` and `acr` values. Values are lowercased and must be DNS labels.
    ///
    /// # Errors
    /// [`CatalogError::MissingPlaceholder`] when the target uses a placeholder without a
    /// value, [`CatalogError::BadPlaceholderValue`] for a value that is not a DNS label.
    pub fn instantiate(&self, p: &Placeholders) -> Result<Vec<Target>, CatalogError> {
        let mut combos: Vec<Vec<(Placeholder, String)>> = vec![Vec::new()];
        for ph in self.placeholders() {
            let values = p.values(ph);
            if values.is_empty() {
                return Err(CatalogError::MissingPlaceholder {
                    id: self.id.clone(),
                    placeholder: ph,
                });
            }
            let mut checked = Vec::with_capacity(values.len());
            for v in values {
                let v = v.trim().to_ascii_lowercase();
                if let Err(reason) = check_label(&v) {
                    return Err(CatalogError::BadPlaceholderValue {
                        id: self.id.clone(),
                        placeholder: ph,
                        value: v,
                        reason,
                    });
                }
                if !checked.contains(&v) {
                    checked.push(v);
                }
            }
            combos = combos
                .into_iter()
                .flat_map(|combo| {
                    checked.iter().map(move |v| {
                        let mut c = combo.clone();
                        c.push((ph, v.clone()));
                        c
                    })
                })
                .collect();
        }
        Ok(combos.iter().map(|c| self.target.substitute(c)).collect())
    }
}

/// A DNS label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1-63 characters".to_owned());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only letters, digits and '-' are allowed".to_owned());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The catalog
// ---------------------------------------------------------------------------------------

/// All entries of all editions, in file order (oldest edition first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub requirements: Vec<Requirement>,
}

/// A position in a catalog file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Syntax, unknown key, bad value or a failed check of one field.
    #[error("{at}: {entry}: field `{field}`: {message}")]
    Invalid {
        at: Location,
        /// `requirement #3 (id "...")` or `file`.
        entry: String,
        field: String,
        message: String,
    },
    #[error("{at}: requirement {id:?}: field `id`: duplicate id, first defined at {first}")]
    DuplicateId {
        at: Location,
        id: String,
        first: Location,
    },
    #[error(
        "{at}: requirement {id:?}: field `replaces`: {replaced:?} is not the id of any requirement"
    )]
    DanglingReplaces {
        at: Location,
        id: String,
        replaced: String,
    },
    #[error("requirement {id:?}: no value for placeholder {placeholder}")]
    MissingPlaceholder {
        id: String,
        placeholder: Placeholder,
    },
    #[error("requirement {id:?}: value {value:?} for placeholder {placeholder}: {reason}")]
    BadPlaceholderValue {
        id: String,
        placeholder: Placeholder,
        value: String,
        reason: String,
    },
}

impl Catalog {
    /// The catalog compiled into the binary ([`EMBEDDED_FILES`]), parsed once.
    ///
    /// # Panics
    /// If the embedded data is broken; a unit test guarantees it is not.
    pub fn embedded() -> &'static Self {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            Self::parse(&EMBEDDED_FILES).unwrap_or_else(|e| panic!("embedded catalog: {e}"))
        })
    }

    /// Parse catalog files, `(origin, TOML text)`; `origin` names the file in errors.
    ///
    /// # Errors
    /// [`CatalogError`] naming the file, line, column and field: TOML syntax, unknown
    /// keys or values, bad ports, invalid targets, unknown doc keys, duplicate ids and
    /// `replaces` naming no entry or an entry that is not older.
    pub fn parse(files: &[(&str, &str)]) -> Result<Self, CatalogError> {
        parse::parse_files(files)
    }

    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Requirement> {
        self.requirements.iter().find(|r| r.id == id)
    }

    /// The entries for `cloud` whose edition is `edition` or older, minus those
    /// replaced by an entry of that selection. Catalog order.
    #[must_use]
    pub fn select(&self, cloud: Cloud, edition: Edition) -> Vec<&Requirement> {
        let candidates: Vec<&Requirement> = self
            .requirements
            .iter()
            .filter(|r| r.edition <= edition && r.clouds.contains(&cloud))
            .collect();
        let replaced: std::collections::HashSet<&str> = candidates
            .iter()
            .flat_map(|r| r.replaces.iter().map(String::as_str))
            .collect();
        candidates
            .into_iter()
            .filter(|r| !replaced.contains(r.id.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
