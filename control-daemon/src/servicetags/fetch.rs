//! Download the current Service Tags through the Azure Service Tag Discovery API:
//!
//! `GET {endpoint}/subscriptions/{subscription}/providers/Microsoft.Network/locations/{location}/serviceTags?api-version={v}`
//! with `Authorization: Bearer <token>`.
//!
//! The API answers `{name, id, type, changeNumber: "63", cloud, values: [{name, id,
//! serviceTagChangeNumber, properties: {changeNumber, region, state, systemService,
//! addressPrefixes, networkFeatures}}], nextLink?}`. Pages named by `nextLink` are followed (on
//! the same scheme/host/port only, so the token never goes elsewhere) and merged. The result is
//! re-written in the downloadable-file schema (`{changeNumber, cloud, values}` with numeric
//! change numbers) so that [`super::store::save`] takes it like a downloaded file.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::TagsError;

/// Azure Resource Manager of the public cloud. Government: `https://management.usgovcloudapi.net`,
/// China: `https://management.chinacloudapi.cn`.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";
/// Network resource provider API version used by default.
pub const DEFAULT_API_VERSION: &str = "2024-05-01";

const MAX_PAGES: usize = 100;
const MAX_BODY: u64 = 256 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(180);

/// What to fetch, from where, with which token.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// ARM endpoint, default [`DEFAULT_ENDPOINT`]. `http://` is refused except on loopback.
    pub endpoint: String,
    pub subscription: String,
    /// Any region of the cloud (the answer covers all regions; this only picks the version).
    pub location: String,
    /// ARM bearer token (`az account get-access-token --resource https://management.azure.com`).
    pub token: String,
    /// Default [`DEFAULT_API_VERSION`].
    pub api_version: String,
}

impl FetchRequest {
    /// A request with the default endpoint and API version.
    #[must_use]
    pub fn new(subscription: &str, location: &str, token: &str) -> Self {
        FetchRequest {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            subscription: subscription.to_string(),
            location: location.to_string(),
            token: token.to_string(),
            api_version: DEFAULT_API_VERSION.to_string(),
        }
    }

    /// The first page's URL.
    ///
    /// # Errors
    /// [`TagsError::Fetch`] for an unusable endpoint or parameter.
    pub fn url(&self) -> Result<String, TagsError> {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        origin_of(endpoint)?;
        let check = |what: &str, v: &str, ok: fn(char) -> bool| {
            if v.is_empty() || !v.chars().all(ok) {
                Err(TagsError::Fetch(format!(
                    "{what} {v:?} is empty or has characters it cannot have"
                )))
            } else {
                Ok(())
            }
        };
        check("subscription", &self.subscription, |c| {
            c.is_ascii_alphanumeric() || c == '-'
        })?;
        check("location", &self.location, |c| c.is_ascii_alphanumeric())?;
        check("api-version", &self.api_version, |c| {
            c.is_ascii_alphanumeric() || c == '-'
        })?;
        Ok(format!(
            "{endpoint}/subscriptions/{}/providers/Microsoft.Network/locations/{}/serviceTags?api-version={}",
            self.subscription, self.location, self.api_version
        ))
    }
}

/// `scheme://host[:port]` of `url`; refuses anything but https, or http to a loopback host.
fn origin_of(url: &str) -> Result<(String, bool), TagsError> {
    let bad = |why: &str| TagsError::Fetch(format!("endpoint {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not an http(s) URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or user info in the URL"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(bad(
                "plain http would send the bearer token unencrypted; use https",
            ));
        }
        _ => return Err(bad("not an http(s) URL")),
    }
    Ok((
        format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase()
        ),
        loopback,
    ))
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().take(200).collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// ARM error bodies are `{"error": {"code", "message"}}`.
fn arm_error(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(Value::as_str).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| snippet(body))
}

fn change_number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Fetches all pages and returns them as one document in the downloadable-file schema.
///
/// # Errors
/// [`TagsError::Unauthorized`] on 401/403 (with how to get a token), [`TagsError::Http`] on
/// other non-2xx answers (status and the start of the body), [`TagsError::Fetch`] for network
/// errors, bad parameters, unusable answers or a `nextLink` to another host.
pub fn fetch(req: &FetchRequest) -> Result<Vec<u8>, TagsError> {
    let token = req.token.trim();
    if token.is_empty() {
        return Err(TagsError::Fetch(
            "no access token: pass --token or set AZURE_TOKEN, e.g. \
             AZURE_TOKEN=$(az account get-access-token --resource https://management.azure.com \
             --query accessToken -o tsv)"
                .into(),
        ));
    }
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let first = req.url()?;
    let (origin, loopback) = origin_of(&first)?;
    let mut cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("tagwall/", env!("CARGO_PKG_VERSION")));
    if loopback {
        cfg = cfg.proxy(None);
    }
    let agent: ureq::Agent = cfg.build().into();

    let mut cloud: Option<String> = None;
    let mut change: Option<u64> = None;
    let mut values: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    let mut url = first;
    for page in 0.. {
        if page >= MAX_PAGES {
            return Err(TagsError::Fetch(format!(
                "more than {MAX_PAGES} pages; giving up"
            )));
        }
        if !seen.insert(url.clone()) {
            return Err(TagsError::Fetch(format!("nextLink loops back to {url}")));
        }
        let mut resp = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Accept", "application/json")
            .call()
            .map_err(|e| TagsError::Fetch(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| TagsError::Fetch(format!("GET {url}: reading the answer: {e}")))?;
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(TagsError::Unauthorized {
                    status,
                    url,
                    detail: arm_error(&body),
                });
            }
            _ => {
                return Err(TagsError::Http {
                    status,
                    url,
                    body: snippet(&body),
                });
            }
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| {
            TagsError::Fetch(format!(
                "GET {url}: answer is not JSON ({e}); it starts with: {}",
                snippet(&body)
            ))
        })?;
        let Value::Object(mut doc) = doc else {
            return Err(TagsError::Fetch(format!(
                "GET {url}: answer is not a JSON object"
            )));
        };
        if let Some(c) = doc.get("cloud").and_then(Value::as_str) {
            match &cloud {
                Some(prev) if prev != c => {
                    return Err(TagsError::Fetch(format!(
                        "page {page} is for cloud {c}, page 0 for {prev}"
                    )));
                }
                _ => cloud = Some(c.to_string()),
            }
        }
        if let Some(n) = change_number(doc.get("changeNumber")) {
            match change {
                Some(prev) if prev != n => {
                    return Err(TagsError::Fetch(format!(
                        "the service tags changed while paging (changeNumber {prev} then {n}); \
                         run the fetch again"
                    )));
                }
                _ => change = Some(n),
            }
        }
        match doc.remove("values") {
            Some(Value::Array(v)) => values.extend(v.into_iter().map(normalise_value)),
            Some(Value::Null) | None => {}
            Some(_) => {
                return Err(TagsError::Fetch(format!(
                    "GET {url}: \"values\" is not a list"
                )));
            }
        }
        match doc.get("nextLink") {
            Some(Value::String(next)) if !next.is_empty() => {
                let (next_origin, _) = origin_of(next)?;
                if next_origin != origin {
                    return Err(TagsError::Fetch(format!(
                        "nextLink {next} points away from {origin}; not sending the token there"
                    )));
                }
                url = next.clone();
            }
            _ => break,
        }
    }
    let cloud = cloud.ok_or_else(|| TagsError::Fetch("the answer names no cloud".into()))?;
    let change =
        change.ok_or_else(|| TagsError::Fetch("the answer has no usable changeNumber".into()))?;
    let mut out = Map::new();
    out.insert("changeNumber".into(), change.into());
    out.insert("cloud".into(), cloud.into());
    out.insert("values".into(), values.into());
    serde_json::to_vec_pretty(&Value::Object(out))
        .map_err(|e| TagsError::Fetch(format!("re-encoding the answer: {e}")))
}

/// One API `values[]` entry -> downloadable-file shape: numeric `properties.changeNumber`
/// (taken from `serviceTagChangeNumber` if properties lack it), no `serviceTagChangeNumber`.
/// Anything unusable is left as is for [`super::ServiceTags::parse`] to report.
fn normalise_value(v: Value) -> Value {
    let Value::Object(mut v) = v else { return v };
    let tag_change = v.remove("serviceTagChangeNumber");
    if let Some(Value::Object(props)) = v.get_mut("properties") {
        let n =
            change_number(props.get("changeNumber")).or_else(|| change_number(tag_change.as_ref()));
        if let Some(n) = n {
            props.insert("changeNumber".into(), n.into());
        }
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_origin_checks() {
        let r = FetchRequest::new("0000-11", "westus2", "t");
        assert_eq!(
            r.url().unwrap(),
            "https://management.azure.com/subscriptions/0000-11/providers/Microsoft.Network/locations/westus2/serviceTags?api-version=2024-05-01"
        );
        let mut bad = r.clone();
        bad.location = "west us".into();
        assert!(bad.url().is_err());
        bad = r.clone();
        bad.subscription = "x/../y".into();
        assert!(bad.url().is_err());
        bad = r.clone();
        bad.endpoint = "http://management.azure.com".into();
        assert!(bad.url().unwrap_err().to_string().contains("unencrypted"));
        bad.endpoint = "http://127.0.0.1:8080/".into();
        assert!(
            bad.url()
                .unwrap()
                .starts_with("http://127.0.0.1:8080/subscriptions/")
        );
        assert_eq!(
            origin_of("http://[::1]:9/x").unwrap(),
            ("http://[::1]:9".into(), true)
        );
        assert!(origin_of("https://user@evil/x").is_err());
        assert!(origin_of("ftp://x").is_err());
    }

    #[test]
    fn normalise() {
        let v: Value = serde_json::json!({"name":"A","id":"A","serviceTagChangeNumber":"5",
            "properties":{"addressPrefixes":[]}});
        let n = normalise_value(v);
        assert_eq!(n["properties"]["changeNumber"], 5);
        assert!(n.get("serviceTagChangeNumber").is_none());
    }

    #[test]
    fn empty_token_is_refused_before_any_request() {
        let mut r = FetchRequest::new("s", "westus", " ");
        r.endpoint = "http://127.0.0.1:1".into();
        let e = fetch(&r).unwrap_err().to_string();
        assert!(e.contains("az account get-access-token"), "{e}");
    }
}
