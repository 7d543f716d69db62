//! Outbound-network-dependencies API responses as a rule source.
//!
//! Several Azure services publish the hosts their managed compute must reach
//! (`.../outboundNetworkDependenciesEndpoints`): Azure Machine Learning, AKS, Batch, API
//! Management, App Service Environment. They share one idea with two shapes:
//!
//! * wrapped (AML 2024-04-01 and later, and the AML docs' real-response excerpt):
//!   `value[].properties.{category, endpoints}`
//! * flat (AML 2021-07-01, AKS, Batch, APIM, ASE): `value[].{category, endpoints}`
//!
//! with `endpoints[].{domainName, description?, endpointDetails[].{port, protocol?,
//! description?, region?, ipAddress?, latency?, isAccessible?}}`.
//!
//! [`parse`] accepts a full azure-rest-api-specs example file (`{parameters, responses: {"200":
//! {body}}}`), a bare body (`{value, nextLink?}`) or a bare `value` array, and merges entries
//! with the same category and domain (ports, protocols and addresses are united).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// One (category, domain) the service must reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DepEndpoint {
    pub category: String,
    /// Lower-case, without a trailing dot, as given: an exact host (`mcr.microsoft.com`), a
    /// wildcard (`*.data.mcr.microsoft.com`) or a bare suffix (`core.windows.net`, meaning any
    /// host under it, as AML 2021-07-01 writes them).
    pub domain: String,
    /// Sorted, unique.
    pub ports: Vec<u16>,
    /// As given (`Https`, `UDP`), unique ignoring case, in first-seen order; empty if none given.
    pub protocols: Vec<String>,
    /// Endpoint-level description, else the details' descriptions joined with "; ".
    pub description: Option<String>,
    /// Addresses the service reported for the domain (App Service Environment); sorted, unique.
    pub ip_addresses: Vec<IpAddr>,
}

/// [`parse_doc`]'s result: the merged endpoints plus counts of what the document held.
#[derive(Debug, Clone, Default)]
pub struct DepsDoc {
    pub endpoints: Vec<DepEndpoint>,
    /// `value[]` entries (a category may occur in several).
    pub entries: usize,
    /// `endpoints[]` items before merging.
    pub raw_endpoints: usize,
    /// How often each port occurs over all `endpointDetails[]` before merging.
    pub port_occurrences: BTreeMap<u16, usize>,
    /// Shape seen: `true` when entries were wrapped in `properties`.
    pub wrapped: bool,
    /// A non-null `nextLink`: the response is only the first page.
    pub next_link: Option<String>,
}

/// Errors of this module.
#[derive(thiserror::Error, Debug)]
pub enum DepsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{origin}:{line}:{column}: not valid JSON: {msg}")]
    Json {
        origin: String,
        line: usize,
        column: usize,
        msg: String,
    },

    #[error(
        "{origin}: {msg}; expected an outbound-dependencies response ({{\"value\": [...]}}), its \
         value array, or an API example file ({{\"responses\": {{\"200\": {{\"body\": ...}}}}}})"
    )]
    Shape { origin: String, msg: String },

    #[error("{origin}: {path}: {msg}")]
    Invalid {
        origin: String,
        path: String,
        msg: String,
    },
}

fn invalid(origin: &str, path: &str, msg: impl Into<String>) -> DepsError {
    DepsError::Invalid {
        origin: origin.to_string(),
        path: path.to_string(),
        msg: msg.into(),
    }
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// Valid domain (after lower-casing): labels of `[a-z0-9-_]`, optionally starting with `*.`.
fn valid_domain(d: &str) -> bool {
    let rest = d.strip_prefix("*.").unwrap_or(d);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    origin: &str,
    path: &str,
) -> Result<Option<&'a str>, DepsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(origin, &join(path, key), "expected a string")),
    }
}

fn array<'a>(v: Option<&'a Value>, origin: &str, path: &str) -> Result<&'a [Value], DepsError> {
    match v {
        Some(Value::Array(a)) => Ok(a),
        None | Some(Value::Null) => Err(invalid(origin, path, "missing (expected a list)")),
        Some(_) => Err(invalid(origin, path, "expected a list")),
    }
}

/// Parses and merges an outbound-dependencies document; see the module docs for the shapes.
///
/// # Errors
/// [`DepsError::Json`] with line/column for malformed JSON, [`DepsError::Shape`] when the
/// document is none of the accepted shapes, [`DepsError::Invalid`] with the JSON path of a bad
/// item (e.g. `value[3].endpoints[0].endpointDetails[1].port: expected 1-65535`).
pub fn parse_doc(bytes: &[u8], origin: &str) -> Result<DepsDoc, DepsError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let root: Value = serde_json::from_slice(bytes).map_err(|e| DepsError::Json {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let shape = |msg: &str| DepsError::Shape {
        origin: origin.to_string(),
        msg: msg.to_string(),
    };
    let (body, base) = match &root {
        Value::Object(o) if o.contains_key("responses") => {
            let body = o
                .get("responses")
                .and_then(|r| r.get("200"))
                .and_then(|r| r.get("body"))
                .ok_or_else(|| shape("the example file has no responses.200.body"))?;
            (body, "responses.200.body".to_string())
        }
        _ => (&root, String::new()),
    };
    let mut doc = DepsDoc::default();
    let (items, items_path) = match body {
        Value::Array(a) => (a.as_slice(), base.clone()),
        Value::Object(o) => {
            match o.get("nextLink") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::String(s)) => {
                    tracing::warn!(
                        origin,
                        next_link = %s,
                        "outbound-dependencies response has a nextLink: this is only the first \
                         page; fetch the others and import them too"
                    );
                    doc.next_link = Some(s.clone());
                }
                Some(_) => {
                    return Err(invalid(
                        origin,
                        &join(&base, "nextLink"),
                        "expected a string or null",
                    ));
                }
            }
            let path = join(&base, "value");
            match o.get("value") {
                Some(Value::Array(a)) => (a.as_slice(), path),
                Some(_) => return Err(invalid(origin, &path, "expected a list")),
                None => return Err(shape("no \"value\" list")),
            }
        }
        _ => return Err(shape("the document is neither an object nor a list")),
    };

    let mut merged: Vec<DepEndpoint> = Vec::new();
    let mut by_key: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let mut path = format!("{items_path}[{i}]");
        let Some(mut obj) = item.as_object() else {
            return Err(invalid(origin, &path, "expected an object"));
        };
        if let Some(props) = obj.get("properties") {
            let Value::Object(p) = props else {
                return Err(invalid(
                    origin,
                    &join(&path, "properties"),
                    "expected an object",
                ));
            };
            obj = p;
            path = join(&path, "properties");
            doc.wrapped = true;
        }
        doc.entries += 1;
        let category = opt_str(obj, "category", origin, &path)?
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid(origin, &join(&path, "category"), "missing or empty"))?;
        let ep_path = join(&path, "endpoints");
        for (j, ep) in array(obj.get("endpoints"), origin, &ep_path)?
            .iter()
            .enumerate()
        {
            let path = format!("{ep_path}[{j}]");
            let Value::Object(ep) = ep else {
                return Err(invalid(origin, &path, "expected an object"));
            };
            doc.raw_endpoints += 1;
            let raw_domain = opt_str(ep, "domainName", origin, &path)?
                .ok_or_else(|| invalid(origin, &join(&path, "domainName"), "missing"))?;
            let domain = raw_domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&domain) {
                return Err(invalid(
                    origin,
                    &join(&path, "domainName"),
                    format!("{raw_domain:?} is not a host name, *.wildcard or domain suffix"),
                ));
            }
            let mut out = DepEndpoint {
                category: category.to_string(),
                domain,
                ports: Vec::new(),
                protocols: Vec::new(),
                description: opt_str(ep, "description", origin, &path)?
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
                ip_addresses: Vec::new(),
            };
            let mut detail_descriptions: Vec<String> = Vec::new();
            let det_path = join(&path, "endpointDetails");
            let details = array(ep.get("endpointDetails"), origin, &det_path)?;
            if details.is_empty() {
                return Err(invalid(origin, &det_path, "empty: no port to allow"));
            }
            for (k, d) in details.iter().enumerate() {
                let path = format!("{det_path}[{k}]");
                let Value::Object(d) = d else {
                    return Err(invalid(origin, &path, "expected an object"));
                };
                let port = d
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                    .ok_or_else(|| invalid(origin, &join(&path, "port"), "expected 1-65535"))?;
                out.ports.push(port);
                *doc.port_occurrences.entry(port).or_default() += 1;
                if let Some(p) = opt_str(d, "protocol", origin, &path)?.map(str::trim)
                    && !p.is_empty()
                {
                    push_protocol(&mut out.protocols, p);
                }
                if let Some(s) = opt_str(d, "description", origin, &path)?.map(str::trim)
                    && !s.is_empty()
                    && !detail_descriptions.iter().any(|x| x == s)
                {
                    detail_descriptions.push(s.to_string());
                }
                if let Some(ip) = opt_str(d, "ipAddress", origin, &path)? {
                    let ip: IpAddr = ip.trim().parse().map_err(|_| {
                        invalid(
                            origin,
                            &join(&path, "ipAddress"),
                            format!("{ip:?} is not an IP address"),
                        )
                    })?;
                    out.ip_addresses.push(ip);
                }
            }
            if out.description.is_none() && !detail_descriptions.is_empty() {
                out.description = Some(detail_descriptions.join("; "));
            }
            let key = (out.category.clone(), out.domain.clone());
            if let Some(&at) = by_key.get(&key) {
                let into = &mut merged[at];
                into.ports.extend(out.ports);
                for p in out.protocols {
                    push_protocol(&mut into.protocols, &p);
                }
                into.ip_addresses.extend(out.ip_addresses);
                if into.description.is_none() {
                    into.description = out.description;
                }
            } else {
                by_key.insert(key, merged.len());
                merged.push(out);
            }
        }
    }
    for e in &mut merged {
        e.ports.sort_unstable();
        e.ports.dedup();
        e.ip_addresses.sort_unstable();
        e.ip_addresses.dedup();
    }
    doc.endpoints = merged;
    Ok(doc)
}

fn push_protocol(list: &mut Vec<String>, p: &str) {
    if !list.iter().any(|x| x.eq_ignore_ascii_case(p)) {
        list.push(p.to_string());
    }
}

/// [`parse_doc`] without the counts.
///
/// # Errors
/// As [`parse_doc`].
pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<DepEndpoint>, DepsError> {
    parse_doc(bytes, origin).map(|d| d.endpoints)
}

/// Reads and parses a file.
///
/// # Errors
/// [`DepsError::Io`], else as [`parse_doc`].
pub fn load(path: &Path) -> Result<Vec<DepEndpoint>, DepsError> {
    load_doc(path).map(|d| d.endpoints)
}

/// Reads and parses a file, with counts.
///
/// # Errors
/// [`DepsError::Io`], else as [`parse_doc`].
pub fn load_doc(path: &Path) -> Result<DepsDoc, DepsError> {
    let bytes = std::fs::read(path).map_err(|source| DepsError::Io {
        path: path.into(),
        source,
    })?;
    parse_doc(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_merge() {
        let flat = r#"[{"category":"C","endpoints":[{"domainName":"A.example.com.","endpointDetails":[{"port":443,"protocol":"Https"}]}]},
                      {"category":"C","endpoints":[{"domainName":"a.example.com","endpointDetails":[{"port":80,"protocol":"HTTPS","description":"d"}]}]}]"#;
        let d = parse_doc(flat.as_bytes(), "t").unwrap();
        assert_eq!(d.entries, 2);
        assert_eq!(d.raw_endpoints, 2);
        assert!(!d.wrapped);
        assert_eq!(d.endpoints.len(), 1);
        let e = &d.endpoints[0];
        assert_eq!(e.domain, "a.example.com");
        assert_eq!(e.ports, vec![80, 443]);
        assert_eq!(e.protocols, vec!["Https".to_string()]);
        assert_eq!(e.description.as_deref(), Some("d"));

        let wrapped = r#"{"value":[{"properties":{"category":"C","endpoints":[{"domainName":"*.x.net","endpointDetails":[{"port":1}]}]}}],"nextLink":null}"#;
        let d = parse_doc(wrapped.as_bytes(), "t").unwrap();
        assert!(d.wrapped);
        assert_eq!(d.endpoints[0].domain, "*.x.net");
        assert_eq!(d.next_link, None);
    }

    #[test]
    fn bad_items_name_their_path() {
        let cases = [
            (
                r#"{"value":[{"category":"C","endpoints":[{"domainName":"a.b","endpointDetails":[{"port":443},{"port":70000}]}]}]}"#,
                "value[0].endpoints[0].endpointDetails[1].port: expected 1-65535",
            ),
            (
                r#"{"value":[{"category":"C","endpoints":[{"domainName":"a.b","endpointDetails":[{"port":0}]}]}]}"#,
                "value[0].endpoints[0].endpointDetails[0].port: expected 1-65535",
            ),
            (
                r#"{"value":[{"category":"C","endpoints":[{"domainName":"a.b","endpointDetails":[{"port":"443"}]}]}]}"#,
                "value[0].endpoints[0].endpointDetails[0].port: expected 1-65535",
            ),
            (
                r#"{"value":[{"properties":{"category":"C","endpoints":[{"domainName":"https://a.b/","endpointDetails":[{"port":1}]}]}}]}"#,
                "value[0].properties.endpoints[0].domainName:",
            ),
            (
                r#"{"value":[{"endpoints":[]}]}"#,
                "value[0].category: missing",
            ),
            (
                r#"{"value":[{"category":"C"}]}"#,
                "value[0].endpoints: missing",
            ),
            (
                r#"{"value":[{"category":"C","endpoints":[{"domainName":"a.b","endpointDetails":[]}]}]}"#,
                "value[0].endpoints[0].endpointDetails: empty",
            ),
            (
                r#"{"value":[{"category":"C","endpoints":[{"domainName":"a.b","endpointDetails":[{"port":1,"ipAddress":"1.2.3"}]}]}]}"#,
                "value[0].endpoints[0].endpointDetails[0].ipAddress:",
            ),
            (
                r#"{"responses":{"200":{"body":{"value":[{"category":"C","endpoints":[{"endpointDetails":[]}]}]}}}}"#,
                "responses.200.body.value[0].endpoints[0].domainName: missing",
            ),
        ];
        for (json, want) in cases {
            let e = parse(json.as_bytes(), "f.json").unwrap_err().to_string();
            assert!(e.starts_with("f.json: "), "{e}");
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
        let e = parse(b"{\"value\": [", "f.json").unwrap_err();
        assert!(matches!(e, DepsError::Json { line: 1, .. }), "{e:?}");
        let e = parse(b"{\"x\": 1}", "f.json").unwrap_err();
        assert!(matches!(e, DepsError::Shape { .. }), "{e:?}");
        let e = parse(b"{\"responses\": {}}", "f.json").unwrap_err();
        assert!(matches!(e, DepsError::Shape { .. }), "{e:?}");
    }
}
