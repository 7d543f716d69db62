//! Catalog files (TOML) to [`Requirement`]s. Every error names the file, line, column,
//! the entry and the field.
//!
//! ```toml
//! edition = "2021"                       # the edition of every entry in the file
//!
//! [docs]                                 # short keys for `source.doc`
//! seed003 = "seeds/003_... how-to-access-azureml-behind-firewall (ko-KR, 2021-11-30)"
//!
//! [[requirement]]
//! id = "ws-tag-storage-region"           # unique over all files
//! replaces = []                          # ids of older entries (optional)
//! scenario = "workspace"
//! direction = "outbound"                 # outbound | inbound
//! clouds = ["public", "government", "china"]
//! target = { service_tag = "Storage.<region>" }   # or fqdn, wildcard_fqdn, url
//! protocol = "tcp"
//! ports = [443, "29876-29877"]
//! conditions = []                        # optional
//! source = { doc = "seed003", section = "heading text", note = "optional" }
//! description = "What the traffic is for."
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    Catalog, CatalogError, Cloud, Condition, Edition, Location, Placeholder, Requirement, Scenario,
    Source, Target,
};
use crate::rules::{Direction, PortRange, Proto};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    edition: Edition,
    #[serde(default)]
    docs: BTreeMap<String, String>,
    #[serde(default, rename = "requirement")]
    requirements: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    id: Spanned<String>,
    #[serde(default)]
    replaces: Vec<Spanned<String>>,
    scenario: Scenario,
    direction: Direction,
    clouds: Spanned<Vec<Cloud>>,
    target: Spanned<RawTarget>,
    protocol: Spanned<Proto>,
    ports: Spanned<Vec<PortRange>>,
    #[serde(default)]
    conditions: Option<Spanned<Vec<Condition>>>,
    source: RawSource,
    description: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    doc: Spanned<String>,
    section: Spanned<String>,
    #[serde(default)]
    note: Option<Spanned<String>>,
}

/// `target = { fqdn = "pypi.org" }`: exactly one key.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawTarget {
    ServiceTag(String),
    Fqdn(String),
    WildcardFqdn(String),
    Url(String),
}

/// One catalog file being parsed: turns byte offsets into locations.
struct File<'a> {
    origin: &'a str,
    text: &'a str,
}

/// Where the `id` and each `replaces` item of a parsed entry were written.
struct Spans {
    id: Location,
    replaces: Vec<Location>,
}

pub(super) fn parse_files(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
    let mut requirements = Vec::new();
    let mut spans = Vec::new();
    let mut first_seen: HashMap<String, Location> = HashMap::new();
    for &(origin, text) in files {
        let file = File { origin, text };
        let raw: RawFile = toml::from_str(text).map_err(|e| file.toml_error(&e))?;
        for r in raw.requirements {
            let (req, at) = file.convert(r, raw.edition, &raw.docs)?;
            if let Some(first) = first_seen.get(&req.id) {
                return Err(CatalogError::DuplicateId {
                    at: at.id,
                    id: req.id,
                    first: first.clone(),
                });
            }
            first_seen.insert(req.id.clone(), at.id.clone());
            requirements.push(req);
            spans.push(at);
        }
    }
    let by_id: HashMap<&str, &Requirement> =
        requirements.iter().map(|r| (r.id.as_str(), r)).collect();
    for (req, at) in requirements.iter().zip(&spans) {
        for (replaced, loc) in req.replaces.iter().zip(&at.replaces) {
            let Some(old) = by_id.get(replaced.as_str()) else {
                return Err(CatalogError::DanglingReplaces {
                    at: loc.clone(),
                    id: req.id.clone(),
                    replaced: replaced.clone(),
                });
            };
            if old.edition >= req.edition {
                return Err(CatalogError::Invalid {
                    at: loc.clone(),
                    entry: format!("requirement {:?}", req.id),
                    field: "replaces".to_owned(),
                    message: format!(
                        "{replaced:?} is of edition {}; an entry of edition {} can only \
                         replace entries of older editions",
                        old.edition, req.edition
                    ),
                });
            }
        }
    }
    Ok(Catalog { requirements })
}

impl File<'_> {
    fn location(&self, offset: usize) -> Location {
        let offset = floor_char_boundary(self.text, offset);
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            origin: self.origin.to_owned(),
            line: before.matches('\n').count() + 1,
            column: self.text[line_start..offset].chars().count() + 1,
        }
    }

    /// `requirement #N (id "...")` for an offset inside the N-th `[[requirement]]`.
    fn entry_at(&self, offset: usize) -> String {
        let mut headers = Vec::new();
        let mut pos = 0;
        for line in self.text.split_inclusive('\n') {
            if line.trim_start().starts_with("[[requirement]]") {
                headers.push(pos);
            }
            pos += line.len();
        }
        let n = headers.iter().filter(|&&h| h <= offset).count();
        if n == 0 {
            return "file header".to_owned();
        }
        let end = headers.get(n).copied().unwrap_or(self.text.len());
        let block = &self.text[headers[n - 1]..end];
        let id = block.lines().find_map(|l| {
            let rest = l
                .trim_start()
                .strip_prefix("id")?
                .trim_start()
                .strip_prefix('=')?;
            let rest = rest.trim_start().strip_prefix('"')?;
            rest.find('"').map(|e| rest[..e].to_owned())
        });
        match id {
            Some(id) => format!("requirement #{n} (id {id:?})"),
            None => format!("requirement #{n}"),
        }
    }

    /// The dotted key whose value contains `offset` (`ports`, `source.doc`), found from
    /// the text so that it also works for errors of values that failed to parse.
    fn field_at(&self, offset: usize) -> String {
        let offset = floor_char_boundary(self.text, offset);
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let keys = keys_before(&self.text[line_start..line_end], offset - line_start);
        if !keys.is_empty() {
            return keys.join(".");
        }
        // A continuation line of a multi-line array: the key is on an earlier line.
        for prev in self.text[..line_start].lines().rev() {
            let keys = keys_before(prev, prev.len());
            if let Some(k) = keys.first() {
                return k.clone();
            }
            if prev.trim_start().starts_with('[') {
                break;
            }
        }
        "?".to_owned()
    }

    fn at(&self, span: &Range<usize>, field: &str, message: String) -> CatalogError {
        CatalogError::Invalid {
            at: self.location(span.start),
            entry: self.entry_at(span.start),
            field: field.to_owned(),
            message,
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> CatalogError {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().to_owned();
        // `missing field `x``, `unknown field `x``: the key is in the message.
        let field = message
            .split_once("field `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map_or_else(|| self.field_at(offset), |(name, _)| name.to_owned());
        CatalogError::Invalid {
            at: self.location(offset),
            entry: self.entry_at(offset),
            field,
            message,
        }
    }

    fn convert(
        &self,
        r: RawRequirement,
        edition: Edition,
        docs: &BTreeMap<String, String>,
    ) -> Result<(Requirement, Spans), CatalogError> {
        check_id(r.id.get_ref()).map_err(|m| self.at(&r.id.span(), "id", m))?;

        let mut replaces = Vec::new();
        let mut replaces_at = Vec::new();
        for item in &r.replaces {
            let name = item.get_ref();
            if name == r.id.get_ref() {
                return Err(self.at(
                    &item.span(),
                    "replaces",
                    "an entry cannot replace itself".into(),
                ));
            }
            if replaces.contains(name) {
                return Err(self.at(
                    &item.span(),
                    "replaces",
                    format!("{name:?} is listed twice"),
                ));
            }
            replaces.push(name.clone());
            replaces_at.push(self.location(item.span().start));
        }

        let clouds = r.clouds.get_ref().clone();
        if clouds.is_empty() {
            return Err(self.at(&r.clouds.span(), "clouds", "lists no cloud".into()));
        }
        if let Some(c) = first_duplicate(&clouds) {
            return Err(self.at(&r.clouds.span(), "clouds", format!("{c} is listed twice")));
        }

        let target = check_target(r.target.get_ref())
            .map_err(|(kind, m)| self.at(&r.target.span(), &format!("target.{kind}"), m))?;

        let proto = *r.protocol.get_ref();
        let ports = r.ports.get_ref().clone();
        check_ports(proto, &ports).map_err(|m| self.at(&r.ports.span(), "ports", m))?;

        let conditions = match &r.conditions {
            None => Vec::new(),
            Some(c) => {
                if let Some(d) = first_duplicate(c.get_ref()) {
                    return Err(self.at(&c.span(), "conditions", format!("{d} is listed twice")));
                }
                c.get_ref().clone()
            }
        };

        let doc = docs.get(r.source.doc.get_ref()).ok_or_else(|| {
            let keys: Vec<&str> = docs.keys().map(String::as_str).collect();
            self.at(
                &r.source.doc.span(),
                "source.doc",
                format!(
                    "unknown doc key {:?}; the [docs] table of this file defines: {}",
                    r.source.doc.get_ref(),
                    if keys.is_empty() {
                        "nothing".to_owned()
                    } else {
                        keys.join(", ")
                    }
                ),
            )
        })?;
        let nonempty = |s: &Spanned<String>, field: &str| {
            if s.get_ref().trim().is_empty() {
                Err(self.at(&s.span(), field, "must not be empty".into()))
            } else {
                Ok(s.get_ref().trim().to_owned())
            }
        };
        let section = nonempty(&r.source.section, "source.section")?;
        let note = r
            .source
            .note
            .as_ref()
            .map(|n| nonempty(n, "source.note"))
            .transpose()?;
        let description = nonempty(&r.description, "description")?;

        let id_at = self.location(r.id.span().start);
        let req = Requirement {
            id: r.id.into_inner(),
            edition,
            replaces,
            scenario: r.scenario,
            direction: r.direction,
            clouds,
            target,
            proto,
            ports,
            conditions,
            source: Source {
                doc: doc.clone(),
                section,
                note,
            },
            description,
        };
        Ok((
            req,
            Spans {
                id: id_at,
                replaces: replaces_at,
            },
        ))
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

const fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The keys (`key = ...`, nested through inline tables) whose key starts at or before
/// byte `col` of `line`, as a path from the outermost: `source = { doc = "x" }` with
/// `col` inside `"x"` gives `["source", "doc"]`.
fn keys_before(line: &str, col: usize) -> Vec<String> {
    let b = line.as_bytes();
    let mut path: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut expect_key = true;
    let mut i = 0;
    while i < b.len() && i <= col {
        match b[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    if q == b'"' && b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                expect_key = false;
            }
            b'#' => break,
            b'{' => {
                depth += 1;
                expect_key = true;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                expect_key = false;
            }
            b',' => expect_key = true,
            b' ' | b'\t' => {}
            c if expect_key && is_key_byte(c) => {
                let start = i;
                while i < b.len() && is_key_byte(b[i]) {
                    i += 1;
                }
                let mut j = i;
                while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'=' {
                    path.truncate(depth);
                    path.push(line[start..i].to_owned());
                }
                expect_key = false;
                continue;
            }
            _ => expect_key = false,
        }
        i += 1;
    }
    path
}

fn first_duplicate<T: PartialEq + Copy>(items: &[T]) -> Option<T> {
    items
        .iter()
        .enumerate()
        .find(|(i, x)| items[..*i].contains(x))
        .map(|(_, x)| *x)
}

fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid id: use 1-64 characters of lowercase letters and digits \
             in hyphen-separated words"
        ))
    }
}

fn check_ports(proto: Proto, ports: &[PortRange]) -> Result<(), String> {
    if ports.is_empty() {
        return Err("lists no ports; write [\"any\"] for every port".to_owned());
    }
    if let Some(p) = first_duplicate(ports) {
        return Err(format!("{p} is listed twice"));
    }
    if ports.len() > 1 && ports.iter().any(|p| p.is_any()) {
        return Err("\"any\" covers every port and must be the only entry".to_owned());
    }
    if proto != Proto::ANY && !proto.has_ports() && !ports[0].is_any() {
        return Err(format!(
            "protocol {proto} has no ports; write [\"any\"] or use tcp, udp or any"
        ));
    }
    Ok(())
}

const PLACEHOLDER_HELP: &str = "use <region>, <storage>, <acr> or <workspace-id>";

/// Validate a target; the error carries the target kind (for the field name).
fn check_target(raw: &RawTarget) -> Result<Target, (&'static str, String)> {
    match raw {
        RawTarget::ServiceTag(tag) => check_tag(tag)
            .map(|()| Target::ServiceTag { tag: tag.clone() })
            .map_err(|m| ("service_tag", m)),
        RawTarget::Fqdn(name) => check_host(name)
            .map(|()| Target::Fqdn { name: name.clone() })
            .map_err(|m| ("fqdn", m)),
        RawTarget::WildcardFqdn(pattern) => match pattern.strip_prefix("*.") {
            Some(rest) => check_host(rest)
                .map(|()| Target::WildcardFqdn {
                    pattern: pattern.clone(),
                })
                .map_err(|m| ("wildcard_fqdn", m)),
            None => Err((
                "wildcard_fqdn",
                format!("{pattern:?} must start with \"*.\""),
            )),
        },
        RawTarget::Url(url) => check_url(url).map_err(|m| ("url", m)),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    if !tag.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("service tag {tag:?} must start with a letter"));
    }
    for token in super::placeholder_tokens(tag) {
        if token != Placeholder::Region.token() {
            return Err(format!(
                "service tag {tag:?}: {token} is not allowed; a service tag can only use <region>"
            ));
        }
    }
    let bare = tag.replace(Placeholder::Region.token(), "x");
    if !bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "service tag {tag:?} may only contain letters, digits, '.', '-' and <region>"
        ));
    }
    Ok(())
}

/// A lowercase host name of two or more labels; a label may be a placeholder.
fn check_host(host: &str) -> Result<(), String> {
    if host.contains('*') {
        return Err(format!(
            "{host:?}: '*' is only allowed as the first label of a wildcard_fqdn"
        ));
    }
    if host != host.to_ascii_lowercase() {
        return Err(format!("{host:?} must be lowercase"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("{host:?} is not a host name of two or more labels"));
    }
    for label in &labels {
        if label.starts_with('<') {
            if Placeholder::from_token(label).is_none() {
                return Err(format!(
                    "{host:?}: unknown placeholder {label}; {PLACEHOLDER_HELP} as a whole label"
                ));
            }
            continue;
        }
        if label.is_empty()
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{host:?}: bad label {label:?} (letters, digits, '-'; or a placeholder: \
                 {PLACEHOLDER_HELP})"
            ));
        }
    }
    let tld = labels[labels.len() - 1];
    if !tld.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(format!("{host:?}: the last label must be letters"));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<Target, String> {
    if url.contains("://") {
        return Err(format!("{url:?}: write the URL without a scheme"));
    }
    let Some((host, path)) = url.split_once('/') else {
        return Err(format!("{url:?} has no path; use fqdn for a host"));
    };
    check_host(host)?;
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{url:?}: the path must be non-empty, printable ASCII without spaces"
        ));
    }
    Ok(Target::Url {
        host: host.to_owned(),
        path: format!("/{path}"),
    })
}
