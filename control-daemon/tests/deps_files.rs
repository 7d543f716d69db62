//! Outbound-network-dependencies imports against the azure-rest-api-specs example responses in
//! `../shared/testdata/deps` (not copied into this repo). Expected counts are read from that
//! directory's README.txt, which states them per file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tagwall::deps::{self, DepEndpoint, DepsError};

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/deps");
    assert!(
        d.join("README.txt").is_file(),
        "test data {} is missing: these tests need the shared/ directory beside the repository \
         (shared/testdata/deps, see its README.txt)",
        d.display()
    );
    d
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[derive(Debug, Default)]
struct Expect {
    file: String,
    wrapped: bool,
    entries: usize,
    endpoints: usize,
    categories: BTreeSet<String>,
    ports: BTreeMap<u16, usize>,
}

/// Parses README.txt: a file name at column 0, then indented `shape ...; N categories, M
/// endpoints; ...`, `categories: [...]` and `port counts: {...}` lines.
fn readme() -> Vec<Expect> {
    let text = std::fs::read_to_string(dir().join("README.txt")).unwrap();
    let mut out: Vec<Expect> = Vec::new();
    for line in text.lines() {
        if line.ends_with(".json") && !line.starts_with(' ') && !line.contains(' ') {
            out.push(Expect {
                file: line.to_string(),
                ..Expect::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("shape ") {
            let parts: Vec<&str> = rest.split(';').map(str::trim).collect();
            cur.wrapped = parts[0].contains("properties");
            let counts: Vec<usize> = parts[1]
                .split(',')
                .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
                .collect();
            assert!(
                parts[1].contains("categories") && parts[1].contains("endpoints"),
                "{l}"
            );
            (cur.entries, cur.endpoints) = (counts[0], counts[1]);
        } else if let Some(rest) = l.strip_prefix("categories: ") {
            cur.categories = rest
                .split('\'')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
        } else if let Some(rest) = l.strip_prefix("port counts: ") {
            cur.ports = rest
                .trim_matches(['{', '}'])
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once(':').unwrap();
                    (k.trim().parse().unwrap(), v.trim().parse().unwrap())
                })
                .collect();
        }
    }
    out
}

#[test]
fn every_file_matches_the_readme_counts() {
    let expect = readme();
    assert_eq!(expect.len(), 7, "README.txt describes 7 example files");
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let described: BTreeSet<String> = expect.iter().map(|e| e.file.clone()).collect();
    assert_eq!(
        on_disk, described,
        "every .json is described in README.txt and vice versa"
    );
    for e in &expect {
        assert!(
            e.entries > 0 && e.endpoints > 0 && !e.categories.is_empty() && !e.ports.is_empty(),
            "{e:?}"
        );
        let doc =
            deps::load_doc(&dir().join(&e.file)).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        assert_eq!(
            doc.entries, e.entries,
            "{}: categories (value entries)",
            e.file
        );
        assert_eq!(doc.raw_endpoints, e.endpoints, "{}: endpoints", e.file);
        assert_eq!(doc.wrapped, e.wrapped, "{}: shape", e.file);
        assert_eq!(doc.port_occurrences, e.ports, "{}: port counts", e.file);
        let cats: BTreeSet<String> = doc.endpoints.iter().map(|x| x.category.clone()).collect();
        assert_eq!(cats, e.categories, "{}: categories", e.file);
        assert_eq!(doc.next_link, None, "{}", e.file);
        for ep in &doc.endpoints {
            assert!(!ep.ports.is_empty(), "{ep:?}");
            assert!(ep.ports.windows(2).all(|w| w[0] < w[1]), "{ep:?}");
            assert_eq!(ep.domain, ep.domain.to_ascii_lowercase());
        }
        // Merging: one result per distinct (category, domain), computed independently.
        assert_eq!(
            doc.endpoints.len(),
            distinct_pairs(&read(&e.file)).len(),
            "{}",
            e.file
        );
        // load() and parse() agree with load_doc().
        assert_eq!(deps::load(&dir().join(&e.file)).unwrap(), doc.endpoints);
    }
}

/// (category, lower-case domain) -> (ports, ip addresses), straight from the JSON.
fn distinct_pairs(raw: &[u8]) -> BTreeMap<(String, String), (BTreeSet<u64>, BTreeSet<String>)> {
    let v: Value = serde_json::from_slice(raw).unwrap();
    let mut out: BTreeMap<_, (BTreeSet<u64>, BTreeSet<String>)> = BTreeMap::new();
    for item in v["responses"]["200"]["body"]["value"].as_array().unwrap() {
        let item = item.get("properties").unwrap_or(item);
        for ep in item["endpoints"].as_array().unwrap() {
            let key = (
                item["category"].as_str().unwrap().to_string(),
                ep["domainName"].as_str().unwrap().to_ascii_lowercase(),
            );
            let slot = out.entry(key).or_default();
            for d in ep["endpointDetails"].as_array().unwrap() {
                slot.0.insert(d["port"].as_u64().unwrap());
                if let Some(ip) = d["ipAddress"].as_str() {
                    slot.1.insert(ip.to_string());
                }
            }
        }
    }
    out
}

fn find<'a>(eps: &'a [DepEndpoint], category: &str, domain: &str) -> &'a DepEndpoint {
    eps.iter()
        .find(|e| e.category == category && e.domain == domain)
        .unwrap_or_else(|| panic!("{category} / {domain} not found in {eps:#?}"))
}

#[test]
fn ase_repeated_domains_are_merged() {
    let name = "ase_GetOutboundNetworkDependenciesEndpoints_2024-04-01.json";
    let raw = read(name);
    let doc = deps::parse_doc(&raw, name).unwrap();
    assert_eq!(doc.raw_endpoints, 43);
    assert_eq!(doc.endpoints.len(), 19);
    let want = distinct_pairs(&raw);
    for e in &doc.endpoints {
        let (ports, ips) = &want[&(e.category.clone(), e.domain.clone())];
        assert_eq!(
            e.ports
                .iter()
                .map(|&p| u64::from(p))
                .collect::<BTreeSet<_>>(),
            *ports,
            "{e:?}"
        );
        assert_eq!(
            e.ip_addresses
                .iter()
                .map(ToString::to_string)
                .collect::<BTreeSet<_>>(),
            *ips,
            "{e:?}"
        );
        assert!(e.protocols.is_empty());
    }
    let blob = find(&doc.endpoints, "Azure Storage", "blob.core.windows.net");
    assert_eq!(blob.ports, vec![80, 443]);
    assert_eq!(blob.ip_addresses.len(), 3);
    assert_eq!(
        find(&doc.endpoints, "Azure SQL Database", "database.windows.net").ports,
        vec![1433]
    );
}

#[test]
fn aml_2021_flat_with_suffixes_and_duplicate_category() {
    let name = "aml_ExternalFQDN_get_2021-07-01.json";
    let doc = deps::parse_doc(&read(name), name).unwrap();
    assert!(!doc.wrapped);
    assert_eq!(
        (doc.entries, doc.raw_endpoints, doc.endpoints.len()),
        (13, 20, 19)
    );
    // Non-FQDN domain names are kept as given (bare suffixes).
    for d in ["core.windows.net", "vault.azure.net", "azurecr.io"] {
        let e = doc
            .endpoints
            .iter()
            .find(|e| e.domain == d)
            .unwrap_or_else(|| panic!("{d}"));
        assert_eq!(e.ports, vec![443, 8787, 18881], "{d}");
    }
    assert_eq!(
        find(
            &doc.endpoints,
            "Compute instance",
            "*.instances.azureml.net"
        )
        .ports,
        vec![443]
    );
    // Same domain under two categories stays two entries.
    find(&doc.endpoints, "Azure portal", "management.azure.com");
    find(
        &doc.endpoints,
        "Azure Resource Manager",
        "management.azure.com",
    );
}

#[test]
fn wrapped_and_flat_aml_agree() {
    for name in [
        "aml_ExternalFQDN_get_2024-04-01.json",
        "aml_ExternalFQDN_get_2025-12-01.json",
    ] {
        let doc = deps::parse_doc(&read(name), name).unwrap();
        assert!(doc.wrapped, "{name}");
        let got: Vec<(&str, &str, &[u16])> = doc
            .endpoints
            .iter()
            .map(|e| (e.category.as_str(), e.domain.as_str(), e.ports.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "Azure Active Directory",
                    "login.microsoftonline.com",
                    &[443][..]
                ),
                ("Azure portal", "management.azure.com", &[443][..])
            ],
            "{name}"
        );
    }
    let flat = deps::parse(&read("aml_ExternalFQDN_get_2021-07-01.json"), "flat").unwrap();
    let wrapped = deps::parse(&read("aml_ExternalFQDN_get_2024-04-01.json"), "wrapped").unwrap();
    for w in &wrapped {
        assert!(flat.contains(w), "{w:?} also in the 2021 flat answer");
    }
}

#[test]
fn aks_protocols_and_batch_descriptions() {
    let aks = deps::parse(
        &read("aks_OutboundNetworkDependenciesEndpointsList_2022-01-01.json"),
        "aks",
    )
    .unwrap();
    let ntp = aks
        .iter()
        .find(|e| e.ports == [123])
        .expect("an NTP endpoint on port 123");
    assert_eq!(ntp.category, "time-sync");
    assert_eq!(ntp.protocols, vec!["UDP".to_string()]);
    let cdn = find(&aks, "images", "*.data.mcr.microsoft.com");
    assert_eq!(
        (cdn.ports.as_slice(), cdn.protocols.as_slice()),
        (&[443][..], &["Https".to_string()][..])
    );
    assert_eq!(cdn.description.as_deref(), Some("mcr cdn"));
    let protos: BTreeSet<&str> = aks
        .iter()
        .flat_map(|e| e.protocols.iter().map(String::as_str))
        .collect();
    assert_eq!(protos, BTreeSet::from(["Http", "Https", "TCP", "UDP"]));

    let batch = deps::parse(
        &read("batch_BatchAccountListOutboundNetworkDependenciesEndpoints_2023-05-01.json"),
        "batch",
    )
    .unwrap();
    let e = find(&batch, "Azure Batch", "japaneast.service.batch.azure.com");
    assert_eq!(
        e.description.as_deref(),
        Some("Applicable to all Azure Batch pools.")
    );
    assert!(
        batch
            .iter()
            .all(|e| e.protocols.is_empty() && e.ports == [443])
    );
}

#[test]
fn bare_body_and_bare_array_are_accepted() {
    for name in [
        "aks_OutboundNetworkDependenciesEndpointsList_2022-01-01.json",
        "aml_ExternalFQDN_get_2024-04-01.json",
        "ase_GetOutboundNetworkDependenciesEndpoints_2024-04-01.json",
    ] {
        let raw = read(name);
        let full = deps::parse(&raw, name).unwrap();
        let v: Value = serde_json::from_slice(&raw).unwrap();
        let body = &v["responses"]["200"]["body"];
        let from_body = deps::parse(body.to_string().as_bytes(), "body").unwrap();
        let from_array = deps::parse(body["value"].to_string().as_bytes(), "array").unwrap();
        assert_eq!(from_body, full, "{name}");
        assert_eq!(from_array, full, "{name}");
    }
}

#[test]
fn docs_excerpt_real_response() {
    // The docs' excerpt of a real AML answer is truncated with "..." as published: not JSON.
    for (name, category) in [
        (
            "aml_docs_excerpt_azure-ai-docs_2026.txt",
            "Microsoft Entra ID",
        ),
        (
            "aml_docs_excerpt_azure-docs_2023.txt",
            "Azure Active Directory",
        ),
    ] {
        let raw = String::from_utf8(read(name)).unwrap();
        let e = deps::parse(raw.as_bytes(), name).unwrap_err();
        assert!(
            matches!(e, DepsError::Json { line, .. } if line > 1),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&format!("{name}:")), "{e}");
        // Closed where it was cut, it is a wrapped-shape answer.
        let cut = raw
            .trim_end()
            .strip_suffix("...")
            .expect("ends with ...")
            .trim_end();
        let fixed = format!("{}\n]}}", cut.strip_suffix(',').unwrap());
        let doc = deps::parse_doc(fixed.as_bytes(), name).unwrap();
        assert!(doc.wrapped);
        let login = find(&doc.endpoints, category, "login.microsoftonline.com");
        assert_eq!(login.ports, vec![80, 443]);
        find(&doc.endpoints, "Azure portal", "management.azure.com");
    }
}

#[test]
fn bad_item_errors_name_the_json_path() {
    let name = "aks_OutboundNetworkDependenciesEndpointsList_2022-01-01.json";
    let mut v: Value = serde_json::from_slice(&read(name)).unwrap();
    // Find an endpoint with at least two details and break its last port.
    let value = v["responses"]["200"]["body"]["value"].as_array().unwrap();
    let (i, j) = value
        .iter()
        .enumerate()
        .find_map(|(i, item)| {
            item["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .position(|ep| ep["endpointDetails"].as_array().unwrap().len() > 1)
                .map(|j| (i, j))
        })
        .unwrap_or((3, 0));
    let details = v["responses"]["200"]["body"]["value"][i]["endpoints"][j]["endpointDetails"]
        .as_array_mut()
        .unwrap();
    let k = details.len() - 1;
    details[k]["port"] = 70000.into();
    let e = deps::parse(v.to_string().as_bytes(), "aks.json").unwrap_err();
    let want = format!(
        "aks.json: responses.200.body.value[{i}].endpoints[{j}].endpointDetails[{k}].port: expected 1-65535"
    );
    assert_eq!(e.to_string(), want);
    assert!(matches!(e, DepsError::Invalid { .. }));
    // The same body on its own reports the path from "value".
    let body = v["responses"]["200"]["body"].to_string();
    let e = deps::parse(body.as_bytes(), "body.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("body.json: value[{i}].endpoints[{j}].endpointDetails[{k}].port: expected 1-65535")
    );

    // Wrapped shape: the path goes through "properties".
    let mut w: Value =
        serde_json::from_slice(&read("aml_ExternalFQDN_get_2024-04-01.json")).unwrap();
    w["responses"]["200"]["body"]["value"][1]["properties"]["endpoints"][0]["domainName"] =
        "not a host".into();
    let e = deps::parse(w.to_string().as_bytes(), "aml.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("aml.json: responses.200.body.value[1].properties.endpoints[0].domainName: "),
        "{e}"
    );

    // ASE: a bad address.
    let mut a: Value = serde_json::from_slice(&read(
        "ase_GetOutboundNetworkDependenciesEndpoints_2024-04-01.json",
    ))
    .unwrap();
    a["responses"]["200"]["body"]["value"][0]["endpoints"][1]["endpointDetails"][1]["ipAddress"] =
        "52.183.104.256".into();
    let e = deps::parse(a.to_string().as_bytes(), "ase.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("value[0].endpoints[1].endpointDetails[1].ipAddress: \"52.183.104.256\" is not an IP address"), "{e}");

    // Truncated file: line and column.
    let raw = read(name);
    let e = deps::parse(&raw[..raw.len() / 2], "cut.json").unwrap_err();
    assert!(
        matches!(e, DepsError::Json { line, column, .. } if line > 10 && column > 0),
        "{e:?}"
    );

    // A nextLink is reported (only the first page).
    let mut n: Value = serde_json::from_slice(&read(
        "ase_GetOutboundNetworkDependenciesEndpoints_2024-04-01.json",
    ))
    .unwrap();
    n["responses"]["200"]["body"]["nextLink"] = "https://management.azure.com/next".into();
    let doc = deps::parse_doc(n.to_string().as_bytes(), "ase.json").unwrap();
    assert_eq!(
        doc.next_link.as_deref(),
        Some("https://management.azure.com/next")
    );
}
