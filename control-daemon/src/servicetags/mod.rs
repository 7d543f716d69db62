//! Azure Service Tags: parse, validate, resolve and store the weekly
//! "Azure IP Ranges and Service Tags" files (`ServiceTags_<Cloud>_<date>.json`) and the
//! equivalent Service Tag Discovery API response.
//!
//! * [`ServiceTags::parse`] / [`ServiceTags::load`] read one file (downloadable-file schema;
//!   the API schema is accepted too: string `changeNumber`s, extra keys ignored).
//! * [`ServiceTags::resolve`] maps a name as written in the Azure Machine Learning docs to the
//!   tag in the file: case-insensitive first, then the documented [`ALIASES`].
//! * [`store`] keeps validated files under `<dir>/servicetags-<cloud>-<changeNumber>.json`.
//! * [`fetch`] downloads the current list from Azure Resource Manager.
//!
//! Validation policy (see `docs/servicetags.md`): every prefix must be a canonical CIDR. A prefix
//! with host bits set (e.g. `10.0.0.1/8`) is an error, not silently normalised: Microsoft's files
//! never contain one, so it means the file is corrupt or hand-edited, and a firewall must not
//! guess which network was meant. The whole file is rejected and nothing is stored.

pub mod fetch;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// All Service Tags of one cloud at one `changeNumber`.
#[derive(Debug, Clone)]
pub struct ServiceTags {
    /// `cloud` as spelled in the file: `Public`, `AzureGovernment`, `China`.
    pub cloud: String,
    /// File-level `changeNumber` (increases with every published change).
    pub change_number: u64,
    /// Tags in file order.
    pub tags: Vec<ServiceTag>,
    /// Lower-case tag name -> position in `tags`.
    index: HashMap<String, usize>,
    /// Where the data came from (path or URL), for error messages.
    origin: String,
}

/// One service tag (`values[]` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTag {
    pub name: String,
    pub id: String,
    pub change_number: u64,
    /// Lower-case Azure region (`westus2`); `None` for global tags (`""` in the file).
    pub region: Option<String>,
    /// `None` when the file has `""`.
    pub system_service: Option<String>,
    /// IPv4 and IPv6 prefixes, in file order, all canonical (no host bits).
    pub prefixes: Vec<IpNet>,
    /// `None` when the file has `null` (most regional tags) or omits the key.
    pub network_features: Option<Vec<String>>,
}

impl ServiceTag {
    /// (IPv4, IPv6) prefix counts.
    #[must_use]
    pub fn prefix_counts(&self) -> (usize, usize) {
        let v4 = self
            .prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)))
            .count();
        (v4, self.prefixes.len() - v4)
    }
}

/// The result of [`ServiceTags::resolve`].
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    /// The name as asked for.
    pub requested: String,
    /// The tag name as spelled in the file.
    pub resolved_name: String,
    /// The alias that mapped `requested` to `resolved_name`, if one did.
    pub alias: Option<&'static Alias>,
    pub tag: &'a ServiceTag,
}

/// A documented difference between a tag name in the Azure docs and the name in the
/// Service Tags file. A `doc_name` ending in `.*` is a pattern: `Keyvault.*` maps
/// `Keyvault.westus2` to `AzureKeyVault.westus2` (the region part is kept, and then matched
/// case-insensitively).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alias {
    pub doc_name: &'static str,
    pub file_name: &'static str,
    pub why: &'static str,
}

impl Alias {
    /// The file name `name` maps to through this alias, if this alias applies
    /// (case-insensitive).
    #[must_use]
    pub fn apply(&self, name: &str) -> Option<String> {
        if let (Some(doc_prefix), Some(file_prefix)) = (
            self.doc_name.strip_suffix('*'),
            self.file_name.strip_suffix('*'),
        ) {
            let head = name.get(..doc_prefix.len())?;
            let rest = &name[doc_prefix.len()..];
            (head.eq_ignore_ascii_case(doc_prefix) && !rest.is_empty())
                .then(|| format!("{file_prefix}{rest}"))
        } else {
            name.eq_ignore_ascii_case(self.doc_name)
                .then(|| self.file_name.to_string())
        }
    }
}

/// Names used in the Azure Machine Learning network docs that are spelled differently in the
/// Service Tags files (checked against the Public, AzureGovernment and China files). Keep
/// `docs/servicetags.md` in step (a unit test checks every entry appears there).
pub static ALIASES: &[Alias] = &[
    Alias {
        doc_name: "AzureFrontDoor.FrontEnd",
        file_name: "AzureFrontDoor.Frontend",
        why: "docs capitalise the E; the files in all clouds spell it Frontend (case only)",
    },
    Alias {
        doc_name: "Frontdoor.FirstParty",
        file_name: "AzureFrontDoor.FirstParty",
        why: "one docs table drops the Azure prefix; the other table and the files use AzureFrontDoor.FirstParty",
    },
    Alias {
        doc_name: "Keyvault",
        file_name: "AzureKeyVault",
        why: "docs write Keyvault; the file tag is AzureKeyVault",
    },
    Alias {
        doc_name: "Keyvault.*",
        file_name: "AzureKeyVault.*",
        why: "docs write Keyvault.<region>; the regional file tags are AzureKeyVault.<Region>",
    },
    Alias {
        doc_name: "ContainerRegistry",
        file_name: "AzureContainerRegistry",
        why: "older docs write ContainerRegistry; the file tag is AzureContainerRegistry",
    },
    Alias {
        doc_name: "ContainerRegistry.*",
        file_name: "AzureContainerRegistry.*",
        why: "older docs write ContainerRegistry.<region>; the regional file tags are AzureContainerRegistry.<Region>",
    },
    Alias {
        doc_name: "BatchNodeManagement.uswest",
        file_name: "BatchNodeManagement.WestUS",
        why: "the docs' example for the US West region reverses the words; the region is westus",
    },
];

/// Tags that exist only inside Azure (NSG / firewall "default tags") and are never in the
/// downloadable file or the discovery API: name -> what it means.
pub static NOT_DOWNLOADABLE: &[(&str, &str)] = &[
    (
        "VirtualNetwork",
        "the address space of your own virtual network(s), peered networks and on-premises ranges; \
         write those CIDRs into the policy instead",
    ),
    (
        "Internet",
        "all public address space outside the virtual network; a firewall that allows it allows everything",
    ),
    (
        "AzureLoadBalancer",
        "the health-probe source 168.63.129.16; write that address instead",
    ),
];

/// Errors of this module. Every message says what to do about it.
#[derive(thiserror::Error, Debug)]
pub enum TagsError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "{origin}:{line}:{column}: not a valid Service Tags JSON file: {msg} \
         (download the ServiceTags_<Cloud>_<date>.json file again, or use `tagwall tags fetch`)"
    )]
    Json {
        origin: String,
        line: usize,
        column: usize,
        msg: String,
    },

    #[error("{origin}: {}{field}: {msg}", tag_prefix(.tag))]
    Invalid {
        origin: String,
        tag: String,
        field: String,
        msg: String,
    },

    #[error(
        "service tag {name:?} is not in {origin}{}; names are case-insensitive, \
         run `tagwall tags list` to see them all",
        did_you_mean(.suggestions)
    )]
    UnknownTag {
        name: String,
        origin: String,
        suggestions: Vec<String>,
    },

    #[error(
        "{name:?} is an Azure-internal default tag and is never in the Service Tags files \
         ({origin}): it means {meaning}"
    )]
    NotDownloadable {
        name: String,
        origin: String,
        meaning: String,
    },

    #[error("fetching service tags failed: {0}")]
    Fetch(String),

    #[error(
        "Azure Resource Manager answered HTTP {status} for {url}: the access token is missing, \
         expired or lacks read access to the subscription ({detail}). Get a fresh one with \
         `az account get-access-token --resource https://management.azure.com --query accessToken -o tsv` \
         and pass it with --token or AZURE_TOKEN"
    )]
    Unauthorized {
        status: u16,
        url: String,
        detail: String,
    },

    #[error("Azure Resource Manager answered HTTP {status} for {url}: {body}")]
    Http {
        status: u16,
        url: String,
        body: String,
    },

    #[error("service tags store {dir}: {msg}")]
    Store { dir: PathBuf, msg: String },
}

fn tag_prefix(tag: &str) -> String {
    if tag.is_empty() {
        String::new()
    } else {
        format!("tag {tag:?}, ")
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

impl TagsError {
    fn invalid(origin: &str, tag: &str, field: impl Into<String>, msg: impl Into<String>) -> Self {
        TagsError::Invalid {
            origin: origin.to_string(),
            tag: tag.to_string(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    fn json(origin: &str, e: &serde_json::Error) -> Self {
        TagsError::Json {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (wire) schema. Everything optional so that a missing field is reported with the tag name.

/// `changeNumber` is a JSON number in the downloadable file and a string in the API.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    change_number: Option<NumOrStr>,
    cloud: Option<String>,
    values: Option<Vec<RawTag>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTag {
    name: Option<String>,
    id: Option<String>,
    /// API only: per-tag change number next to `properties`.
    service_tag_change_number: Option<NumOrStr>,
    properties: Option<RawProps>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProps {
    change_number: Option<NumOrStr>,
    region: Option<String>,
    system_service: Option<String>,
    address_prefixes: Option<Vec<String>>,
    network_features: Option<Vec<String>>,
}

fn change_number(
    v: Option<NumOrStr>,
    origin: &str,
    tag: &str,
    field: &str,
) -> Result<u64, TagsError> {
    match v {
        Some(NumOrStr::Num(n)) => Ok(n),
        Some(NumOrStr::Str(s)) => s.trim().parse().map_err(|_| {
            TagsError::invalid(
                origin,
                tag,
                field,
                format!("expected a whole number, got {s:?}"),
            )
        }),
        None => Err(TagsError::invalid(origin, tag, field, "missing")),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != '\\')
}

/// Cloud names become part of store file names.
fn valid_cloud(cloud: &str) -> bool {
    !cloud.is_empty()
        && cloud.len() <= 64
        && cloud.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_prefix(s: &str, origin: &str, tag: &str, i: usize) -> Result<IpNet, TagsError> {
    let field = || format!("properties.addressPrefixes[{i}]");
    let net: IpNet = s.parse().map_err(|_| {
        TagsError::invalid(
            origin,
            tag,
            field(),
            format!("{s:?} is not an IPv4/IPv6 CIDR prefix (like 10.1.0.0/16 or 2603:1000::/40)"),
        )
    })?;
    if net.trunc() != net {
        return Err(TagsError::invalid(
            origin,
            tag,
            field(),
            format!(
                "{s} has host bits set (did you mean {}?); the file is corrupt or was edited, \
                 download it again",
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

impl ServiceTags {
    /// Parses and validates a Service Tags document (downloadable file or API response).
    ///
    /// # Errors
    /// [`TagsError::Json`] (with line/column) for malformed JSON or wrong types,
    /// [`TagsError::Invalid`] naming the tag and field for missing fields, bad or non-canonical
    /// prefixes, duplicate tag names (case-insensitive) or an empty `values` list.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, TagsError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let raw: RawFile =
            serde_json::from_slice(bytes).map_err(|e| TagsError::json(origin, &e))?;
        let change = change_number(raw.change_number, origin, "", "changeNumber")?;
        let cloud = raw
            .cloud
            .ok_or_else(|| TagsError::invalid(origin, "", "cloud", "missing"))?;
        if !valid_cloud(&cloud) {
            return Err(TagsError::invalid(
                origin,
                "",
                "cloud",
                format!(
                    "{cloud:?} is not a cloud name (expected e.g. Public, AzureGovernment, China)"
                ),
            ));
        }
        let values = raw
            .values
            .ok_or_else(|| TagsError::invalid(origin, "", "values", "missing"))?;
        if values.is_empty() {
            return Err(TagsError::invalid(
                origin,
                "",
                "values",
                "the list of service tags is empty; refusing to replace real data with nothing",
            ));
        }
        let mut tags = Vec::with_capacity(values.len());
        let mut index = HashMap::with_capacity(values.len());
        for (pos, v) in values.into_iter().enumerate() {
            let Some(name) = v.name else {
                return Err(TagsError::invalid(
                    origin,
                    "",
                    format!("values[{pos}].name"),
                    "missing",
                ));
            };
            if !valid_name(&name) {
                return Err(TagsError::invalid(
                    origin,
                    "",
                    format!("values[{pos}].name"),
                    format!("{name:?} is not a service tag name"),
                ));
            }
            let Some(props) = v.properties else {
                return Err(TagsError::invalid(origin, &name, "properties", "missing"));
            };
            let tag_change = match props.change_number {
                Some(c) => change_number(Some(c), origin, &name, "properties.changeNumber")?,
                None => change_number(
                    v.service_tag_change_number,
                    origin,
                    &name,
                    "properties.changeNumber",
                )?,
            };
            let Some(raw_prefixes) = props.address_prefixes else {
                return Err(TagsError::invalid(
                    origin,
                    &name,
                    "properties.addressPrefixes",
                    "missing",
                ));
            };
            let prefixes = raw_prefixes
                .iter()
                .enumerate()
                .map(|(i, s)| parse_prefix(s, origin, &name, i))
                .collect::<Result<Vec<_>, _>>()?;
            if prefixes.is_empty() {
                tracing::debug!(origin, tag = %name, "service tag has no prefixes");
            }
            let key = name.to_ascii_lowercase();
            if let Some(&first) = index.get(&key) {
                let first: &ServiceTag = &tags[first];
                return Err(TagsError::invalid(
                    origin,
                    &name,
                    format!("values[{pos}].name"),
                    format!(
                        "duplicate tag name (already defined as {:?}; names are case-insensitive)",
                        first.name
                    ),
                ));
            }
            index.insert(key, tags.len());
            let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
            tags.push(ServiceTag {
                id: non_empty(v.id).unwrap_or_else(|| name.clone()),
                name,
                change_number: tag_change,
                region: non_empty(props.region).map(|r| r.to_ascii_lowercase()),
                system_service: non_empty(props.system_service),
                prefixes,
                network_features: props.network_features,
            });
        }
        Ok(ServiceTags {
            cloud,
            change_number: change,
            tags,
            index,
            origin: origin.to_string(),
        })
    }

    /// Reads and parses a file.
    ///
    /// # Errors
    /// [`TagsError::Io`] if it cannot be read, else as [`ServiceTags::parse`].
    pub fn load(path: &Path) -> Result<Self, TagsError> {
        let bytes = std::fs::read(path).map_err(|source| TagsError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Where this data came from (path or URL).
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tag spelled exactly `name`, ignoring ASCII case; no aliases.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&ServiceTag> {
        self.index
            .get(&name.trim().to_ascii_lowercase())
            .map(|&i| &self.tags[i])
    }

    /// Resolves a tag name as written in docs or a policy: case-insensitively
    /// (`Storage.westus2` finds `Storage.WestUS2`), then through [`ALIASES`].
    ///
    /// # Errors
    /// [`TagsError::NotDownloadable`] for `VirtualNetwork`/`Internet`/`AzureLoadBalancer`;
    /// [`TagsError::UnknownTag`] with up to 3 suggestions otherwise.
    pub fn resolve(&self, name: &str) -> Result<Resolved<'_>, TagsError> {
        let requested = name.trim();
        if let Some(tag) = self.get(requested) {
            // Report a (case-only) alias when the docs' spelling was used.
            let alias = (requested != tag.name)
                .then(|| {
                    ALIASES.iter().find(|a| {
                        a.apply(requested)
                            .is_some_and(|t| t.eq_ignore_ascii_case(&tag.name))
                    })
                })
                .flatten();
            return Ok(Resolved {
                requested: requested.to_string(),
                resolved_name: tag.name.clone(),
                alias,
                tag,
            });
        }
        for alias in ALIASES {
            if let Some(tag) = alias.apply(requested).and_then(|target| self.get(&target)) {
                return Ok(Resolved {
                    requested: requested.to_string(),
                    resolved_name: tag.name.clone(),
                    alias: Some(alias),
                    tag,
                });
            }
        }
        if let Some((n, meaning)) = NOT_DOWNLOADABLE
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(requested))
        {
            return Err(TagsError::NotDownloadable {
                name: (*n).to_string(),
                origin: self.origin.clone(),
                meaning: (*meaning).to_string(),
            });
        }
        Err(TagsError::UnknownTag {
            name: requested.to_string(),
            origin: self.origin.clone(),
            suggestions: self.suggest(requested, 3),
        })
    }

    /// Up to `max` tag names close to `name`: small edit distance, the same region words in
    /// another order (`uswest` ~ `WestUS`), or the same service with another region.
    #[must_use]
    pub fn suggest(&self, name: &str, max: usize) -> Vec<String> {
        let wanted = name.trim().to_ascii_lowercase();
        // Also compare against what the aliases would turn the name into.
        let mut variants = vec![wanted.clone()];
        variants.extend(
            ALIASES
                .iter()
                .filter_map(|a| a.apply(&wanted))
                .map(|s| s.to_ascii_lowercase()),
        );
        let limit = (wanted.chars().count() / 4).max(2);
        let mut scored: Vec<(usize, bool, &str)> = Vec::new();
        for tag in &self.tags {
            let cand = tag.name.to_ascii_lowercase();
            let mut best = usize::MAX;
            let mut same_service = false;
            for w in &variants {
                best = best.min(distance(w, &cand));
                let (wb, ws) = split_tag(w);
                let (cb, cs) = split_tag(&cand);
                if wb == cb {
                    same_service = true;
                    if let (Some(ws), Some(cs)) = (ws, cs)
                        && sorted_chars(ws) == sorted_chars(cs)
                    {
                        best = 0;
                    }
                }
            }
            if best <= limit || same_service {
                scored.push((best, !same_service, &tag.name));
            }
        }
        scored.sort_by(|a, b| (a.0 > limit, a.1, a.0, a.2).cmp(&(b.0 > limit, b.1, b.0, b.2)));
        scored
            .into_iter()
            .take(max)
            .map(|(_, _, n)| n.to_string())
            .collect()
    }

    /// Tag names as spelled in the file, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| t.name.as_str())
    }

    /// Lower-case region names seen in the file (global tags excluded).
    #[must_use]
    pub fn regions(&self) -> BTreeSet<String> {
        self.tags.iter().filter_map(|t| t.region.clone()).collect()
    }

    /// (IPv4, IPv6) prefix counts over all tags (a prefix in two tags counts twice).
    #[must_use]
    pub fn total_prefixes(&self) -> (usize, usize) {
        self.tags
            .iter()
            .map(ServiceTag::prefix_counts)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// One-line summary: cloud, changeNumber, counts.
    #[must_use]
    pub fn summary(&self) -> String {
        let (v4, v6) = self.total_prefixes();
        let mut s = String::new();
        let _ = write!(
            s,
            "cloud {} changeNumber {}: {} tags, {v4} IPv4 + {v6} IPv6 prefixes",
            self.cloud,
            self.change_number,
            self.tags.len()
        );
        s
    }
}

fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.split_once('.') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    }
}

fn sorted_chars(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.chars().collect();
    v.sort_unstable();
    v
}

/// Levenshtein distance (ASCII-lower-cased inputs expected).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A Service Tags file (downloadable-file schema) for labs and tests: `tags` are
/// `(name, region, IPv4 prefix, IPv6 prefix)` (an empty prefix is left out). The demo and tests write their own addresses this way
/// instead of copying Microsoft's files.
#[must_use]
pub fn lab_file_json(cloud: &str, change_number: u64, tags: &[(&str, &str, &str, &str)]) -> String {
    let values: Vec<serde_json::Value> = tags
        .iter()
        .map(|(name, region, v4, v6)| {
            let prefixes: Vec<&str> = [*v4, *v6].into_iter().filter(|p| !p.is_empty()).collect();
            serde_json::json!({
                "name": name,
                "id": name,
                "properties": {
                    "changeNumber": 1,
                    "region": region,
                    "regionId": 0,
                    "platform": "Azure",
                    "systemService": "",
                    "addressPrefixes": prefixes,
                    "networkFeatures": null,
                },
            })
        })
        .collect();
    serde_json::json!({"changeNumber": change_number, "cloud": cloud, "values": values}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(values: &str) -> String {
        format!(r#"{{"changeNumber": 7, "cloud": "Public", "values": [{values}]}}"#)
    }

    fn tag(name: &str, region: &str, prefixes: &[&str]) -> String {
        let p: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
        format!(
            r#"{{"name": "{name}", "id": "{name}", "properties": {{"changeNumber": 1, "region": "{region}",
            "regionId": 0, "platform": "Azure", "systemService": "", "addressPrefixes": [{}],
            "networkFeatures": null}}}}"#,
            p.join(",")
        )
    }

    fn sample() -> ServiceTags {
        let names = [
            ("AzureKeyVault", ""),
            ("AzureKeyVault.WestUS2", "westus2"),
            ("AzureKeyVault.WestUS", "westus"),
            ("AzureContainerRegistry", ""),
            ("AzureContainerRegistry.WestUS2", "westus2"),
            ("AzureFrontDoor.Frontend", ""),
            ("AzureFrontDoor.FirstParty", ""),
            ("BatchNodeManagement.WestUS", "westus"),
            ("Storage.WestUS", "westus"),
            ("Storage.WestUS2", "westus2"),
            ("Storage.EastUS", "eastus"),
            ("AzureMachineLearning", ""),
        ];
        let values: Vec<String> = names
            .iter()
            .map(|(n, r)| tag(n, r, &["10.0.0.0/24", "2603:1000::/40"]))
            .collect();
        ServiceTags::parse(doc(&values.join(",")).as_bytes(), "sample.json").expect("sample parses")
    }

    #[test]
    fn alias_pattern_and_exact() {
        let kv = ALIASES.iter().find(|a| a.doc_name == "Keyvault.*").unwrap();
        assert_eq!(
            kv.apply("Keyvault.westus2").as_deref(),
            Some("AzureKeyVault.westus2")
        );
        assert_eq!(
            kv.apply("KEYVAULT.WestUS2").as_deref(),
            Some("AzureKeyVault.WestUS2")
        );
        assert_eq!(kv.apply("Keyvault."), None);
        assert_eq!(kv.apply("Keyvault"), None);
        assert_eq!(kv.apply("AzureKeyVault.westus2"), None);
        assert_eq!(kv.apply("Key"), None);
        assert_eq!(kv.apply("Keyvaulté.x"), None);
        let fd = ALIASES
            .iter()
            .find(|a| a.doc_name == "Frontdoor.FirstParty")
            .unwrap();
        assert_eq!(
            fd.apply("frontdoor.firstparty").as_deref(),
            Some("AzureFrontDoor.FirstParty")
        );
        assert_eq!(fd.apply("frontdoor.firstparty2"), None);
    }

    #[test]
    fn resolve_case_and_aliases() {
        let t = sample();
        let r = t.resolve("storage.westus2").unwrap();
        assert_eq!(r.resolved_name, "Storage.WestUS2");
        assert!(r.alias.is_none());
        let r = t.resolve("Storage.WestUS2").unwrap();
        assert!(r.alias.is_none());

        let r = t.resolve("AzureFrontDoor.FrontEnd").unwrap();
        assert_eq!(r.resolved_name, "AzureFrontDoor.Frontend");
        assert_eq!(r.alias.unwrap().doc_name, "AzureFrontDoor.FrontEnd");
        // The file's own spelling needs no alias.
        assert!(
            t.resolve("AzureFrontDoor.Frontend")
                .unwrap()
                .alias
                .is_none()
        );

        for (asked, want, alias) in [
            ("Keyvault.westus2", "AzureKeyVault.WestUS2", "Keyvault.*"),
            ("Keyvault", "AzureKeyVault", "Keyvault"),
            (
                "ContainerRegistry.WestUS2",
                "AzureContainerRegistry.WestUS2",
                "ContainerRegistry.*",
            ),
            (
                "containerregistry",
                "AzureContainerRegistry",
                "ContainerRegistry",
            ),
            (
                "Frontdoor.FirstParty",
                "AzureFrontDoor.FirstParty",
                "Frontdoor.FirstParty",
            ),
            (
                "BatchNodeManagement.uswest",
                "BatchNodeManagement.WestUS",
                "BatchNodeManagement.uswest",
            ),
        ] {
            let r = t.resolve(asked).unwrap_or_else(|e| panic!("{asked}: {e}"));
            assert_eq!(r.resolved_name, want, "{asked}");
            assert_eq!(r.requested, asked);
            assert_eq!(r.alias.map(|a| a.doc_name), Some(alias), "{asked}");
            assert_eq!(r.tag.name, want);
        }
    }

    #[test]
    fn unknown_and_not_downloadable() {
        let t = sample();
        match t.resolve("Storage.WestUS22") {
            Err(TagsError::UnknownTag {
                name,
                origin,
                suggestions,
            }) => {
                assert_eq!(name, "Storage.WestUS22");
                assert_eq!(origin, "sample.json");
                assert_eq!(
                    suggestions.first().map(String::as_str),
                    Some("Storage.WestUS2")
                );
                assert!(suggestions.len() <= 3);
            }
            other => panic!("expected UnknownTag, got {other:?}"),
        }
        // Region words in the other order.
        let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("Storage.uswest") else {
            panic!("expected UnknownTag")
        };
        assert_eq!(suggestions[0], "Storage.WestUS");
        let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("AzureMachineLearnin")
        else {
            panic!("expected UnknownTag")
        };
        assert_eq!(suggestions, vec!["AzureMachineLearning".to_string()]);
        // Through an alias: Keyvault.WestUS3 -> AzureKeyVault.WestUS*
        let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("Keyvault.WestUS3") else {
            panic!("expected UnknownTag")
        };
        assert!(
            suggestions.iter().all(|s| s.starts_with("AzureKeyVault")),
            "{suggestions:?}"
        );
        let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("Zzzzzzzzzzzzzzzzz") else {
            panic!("expected UnknownTag")
        };
        assert!(suggestions.is_empty(), "{suggestions:?}");

        let e = t.resolve("virtualnetwork").unwrap_err();
        assert!(matches!(e, TagsError::NotDownloadable { .. }), "{e:?}");
        assert!(e.to_string().contains("VirtualNetwork"));
    }

    #[test]
    fn distance_basics() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
    }

    #[test]
    fn api_shape_string_change_numbers() {
        let json = r#"{"name":"Public","id":"/subscriptions/x/providers/Microsoft.Network/serviceTags/Public",
            "type":"Microsoft.Network/serviceTags","changeNumber":"63","cloud":"Public",
            "values":[{"name":"ApiManagement","id":"ApiManagement","serviceTagChangeNumber":"9",
              "properties":{"changeNumber":"9","region":"","state":"GA","systemService":"AzureApiManagement",
              "addressPrefixes":["13.64.39.16/32"],"networkFeatures":["API","NSG"]}},
              {"name":"X.WestUS","id":"X.WestUS","serviceTagChangeNumber":"4",
              "properties":{"region":"westus","addressPrefixes":["10.0.0.0/8"]}}]}"#;
        let t = ServiceTags::parse(json.as_bytes(), "api").unwrap();
        assert_eq!(t.change_number, 63);
        assert_eq!(t.tags[0].change_number, 9);
        assert_eq!(
            t.tags[0].system_service.as_deref(),
            Some("AzureApiManagement")
        );
        assert_eq!(t.tags[1].change_number, 4);
        assert_eq!(t.tags[1].network_features, None);
        assert_eq!(t.tags[1].system_service, None);
        let bad = json.replace(r#""changeNumber":"63""#, r#""changeNumber":"6x""#);
        let e = ServiceTags::parse(bad.as_bytes(), "api").unwrap_err();
        assert!(
            matches!(&e, TagsError::Invalid { field, .. } if field == "changeNumber"),
            "{e}"
        );
    }

    #[test]
    fn aliases_documented() {
        let doc = include_str!("../../../docs/servicetags.md");
        for a in ALIASES {
            let row = format!("| `{}` | `{}` |", a.doc_name, a.file_name);
            assert!(
                doc.contains(&row),
                "docs/servicetags.md lacks the alias row {row:?}"
            );
        }
        for (n, _) in NOT_DOWNLOADABLE {
            assert!(
                doc.contains(&format!("`{n}`")),
                "docs/servicetags.md does not mention {n}"
            );
        }
        // and no stale rows: every alias-looking row in the table is in ALIASES
        let table = doc
            .split("<!-- aliases:begin -->")
            .nth(1)
            .and_then(|s| s.split("<!-- aliases:end -->").next())
            .expect("alias table markers in docs/servicetags.md");
        let rows = table.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, ALIASES.len(), "alias table rows vs ALIASES");
    }
}
