//! Service Tags parsing, resolution and store against the real Microsoft files in
//! `../shared/testdata/servicetags` (see README.txt there; not copied into this repo).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use tagwall::servicetags::{ALIASES, ServiceTags, TagsError, store};

fn testdata(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/servicetags")
        .join(rel);
    assert!(
        p.is_file(),
        "test data {} is missing: these tests need the shared/ directory beside the repository \
         (shared/testdata/servicetags, see its README.txt)",
        p.display()
    );
    p
}

const PUBLIC: &str = "ServiceTags_Public_20250908.json";
const GOV: &str = "ServiceTags_AzureGovernment_20260720.json";

fn bytes(name: &str) -> &'static [u8] {
    static PUB: OnceLock<Vec<u8>> = OnceLock::new();
    static GOVB: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = if name == PUBLIC { &PUB } else { &GOVB };
    cell.get_or_init(|| std::fs::read(testdata(name)).expect("read test data"))
}

fn public() -> &'static ServiceTags {
    static T: OnceLock<ServiceTags> = OnceLock::new();
    T.get_or_init(|| ServiceTags::load(&testdata(PUBLIC)).expect("Public file parses"))
}

fn gov() -> &'static ServiceTags {
    static T: OnceLock<ServiceTags> = OnceLock::new();
    T.get_or_init(|| ServiceTags::load(&testdata(GOV)).expect("Government file parses"))
}

/// Counts computed independently of the crate: (tags, v4, v6, features null, features list).
fn independent_counts(raw: &[u8]) -> (usize, usize, usize, usize, usize) {
    let v: Value = serde_json::from_slice(raw).unwrap();
    let values = v["values"].as_array().unwrap();
    let (mut v4, mut v6, mut null, mut list) = (0, 0, 0, 0);
    for t in values {
        for p in t["properties"]["addressPrefixes"].as_array().unwrap() {
            if p.as_str().unwrap().contains(':') {
                v6 += 1
            } else {
                v4 += 1
            }
        }
        match &t["properties"]["networkFeatures"] {
            Value::Null => null += 1,
            Value::Array(_) => list += 1,
            other => panic!("unexpected networkFeatures {other}"),
        }
    }
    (values.len(), v4, v6, null, list)
}

#[test]
fn public_counts() {
    let t = public();
    assert_eq!(t.cloud, "Public");
    assert_eq!(t.change_number, 370);
    // Read off the file (README.txt: tags=3002; prefixes=91597 (IPv4 67580, IPv6 24017)).
    assert_eq!(t.tags.len(), 3002);
    assert_eq!(t.names().count(), 3002);
    assert_eq!(t.total_prefixes(), (67580, 24017));
    let (n, v4, v6, null, list) = independent_counts(bytes(PUBLIC));
    assert_eq!((t.tags.len(), t.total_prefixes()), (n, (v4, v6)));
    // networkFeatures: JSON null -> None, list -> Some.
    assert_eq!(
        t.tags
            .iter()
            .filter(|x| x.network_features.is_none())
            .count(),
        null
    );
    assert_eq!(
        t.tags
            .iter()
            .filter(|x| x.network_features.is_some())
            .count(),
        list
    );
    assert!(null > 1000 && list > 1000, "{null} {list}");

    let regions = t.regions();
    assert_eq!(regions.len(), 70);
    assert!(regions.contains("westus2") && regions.contains("westus"));
    assert!(!regions.contains(""));
    assert!(regions.iter().all(|r| *r == r.to_ascii_lowercase()));

    // Per-tag counts from README.txt.
    for (name, v4, v6) in [
        ("AzureMachineLearning", 252, 78),
        ("AzureActiveDirectory", 200, 16),
        ("AzureResourceManager", 210, 159),
        ("AzureFrontDoor.Frontend", 89, 102),
        ("Storage.WestUS2", 50, 1),
        ("MicrosoftContainerRegistry", 173, 179),
        ("BatchNodeManagement", 372, 77),
        ("AzureKeyVault", 329, 374),
    ] {
        let tag = t.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(tag.prefix_counts(), (v4, v6), "{name}");
    }
    let aml = t.get("AzureMachineLearning").unwrap();
    assert_eq!(aml.region, None);
    assert_eq!(aml.system_service.as_deref(), Some("AzureMachineLearning"));
    assert_eq!(aml.prefixes[0].to_string(), "4.171.27.64/27");
    assert_eq!(
        aml.network_features.as_deref(),
        Some(&["API", "NSG", "UDR", "FW"].map(String::from)[..])
    );
    // Prefixes are canonical and both families parse.
    assert!(
        t.tags
            .iter()
            .flat_map(|x| &x.prefixes)
            .all(|p| p.trunc() == *p)
    );
}

#[test]
fn case_insensitive_resolution() {
    let t = public();
    for asked in [
        "Storage.WestUS2",
        "storage.westus2",
        "STORAGE.WESTUS2",
        " Storage.westUS2 ",
    ] {
        let r = t.resolve(asked).unwrap_or_else(|e| panic!("{asked}: {e}"));
        assert_eq!(r.resolved_name, "Storage.WestUS2");
        assert!(r.alias.is_none(), "{asked}");
        assert_eq!(r.tag.region.as_deref(), Some("westus2"));
        assert_eq!(r.tag.system_service.as_deref(), Some("AzureStorage"));
        assert_eq!(r.tag.prefix_counts(), (50, 1));
        assert_eq!(r.tag.prefixes[0].to_string(), "13.66.176.16/28");
    }
}

#[test]
fn doc_names_resolve_through_aliases() {
    let t = public();
    for (asked, file, alias, counts) in [
        (
            "AzureFrontDoor.FrontEnd",
            "AzureFrontDoor.Frontend",
            "AzureFrontDoor.FrontEnd",
            (89, 102),
        ),
        (
            "Keyvault.WestUS2",
            "AzureKeyVault.WestUS2",
            "Keyvault.*",
            (6, 5),
        ),
        (
            "Keyvault.westus2",
            "AzureKeyVault.WestUS2",
            "Keyvault.*",
            (6, 5),
        ),
        (
            "ContainerRegistry.WestUS2",
            "AzureContainerRegistry.WestUS2",
            "ContainerRegistry.*",
            (12, 9),
        ),
        (
            "ContainerRegistry.westus2",
            "AzureContainerRegistry.WestUS2",
            "ContainerRegistry.*",
            (12, 9),
        ),
        (
            "Frontdoor.FirstParty",
            "AzureFrontDoor.FirstParty",
            "Frontdoor.FirstParty",
            (42, 26),
        ),
        ("Keyvault", "AzureKeyVault", "Keyvault", (329, 374)),
        (
            "ContainerRegistry",
            "AzureContainerRegistry",
            "ContainerRegistry",
            (584, 549),
        ),
        (
            "BatchNodeManagement.uswest",
            "BatchNodeManagement.WestUS",
            "BatchNodeManagement.uswest",
            (13, 1),
        ),
    ] {
        let r = t.resolve(asked).unwrap_or_else(|e| panic!("{asked}: {e}"));
        assert_eq!(r.resolved_name, file, "{asked}");
        assert_eq!(r.tag.name, file);
        assert_eq!(r.requested, asked);
        assert_eq!(r.alias.map(|a| a.doc_name), Some(alias), "{asked}");
        assert_eq!(r.tag.prefix_counts(), counts, "{asked}");
    }
    // Every alias target exists in the Public file (patterns: with westus2).
    for a in ALIASES {
        let file = a.file_name.replace('*', "WestUS2");
        assert!(
            t.get(&file).is_some(),
            "alias target {file} not in the Public file"
        );
        // and the docs name itself is not a file name (else the alias would be pointless),
        // except for case-only aliases.
        let docname = a.doc_name.replace('*', "WestUS2");
        if !docname.eq_ignore_ascii_case(&file) {
            assert!(t.get(&docname).is_none(), "{docname} exists in the file");
        }
    }
    // Government: same aliases, other regions.
    let g = gov();
    let r = g.resolve("Keyvault.usgovvirginia").unwrap();
    assert_eq!(r.resolved_name, "AzureKeyVault.USGovVirginia");
    let r = g.resolve("AzureFrontDoor.FrontEnd").unwrap();
    assert_eq!(r.resolved_name, "AzureFrontDoor.Frontend");
    assert_eq!(r.tag.prefix_counts(), (60, 8));
}

#[test]
fn unknown_tags_get_suggestions() {
    let t = public();
    let e = t.resolve("Storage.WestUS22").unwrap_err();
    let TagsError::UnknownTag {
        name,
        origin,
        suggestions,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(name, "Storage.WestUS22");
    assert!(origin.ends_with(PUBLIC), "{origin}");
    assert_eq!(
        suggestions.first().map(String::as_str),
        Some("Storage.WestUS2"),
        "{suggestions:?}"
    );
    assert!(suggestions.len() <= 3 && !suggestions.is_empty());
    let msg = e.to_string();
    assert!(
        msg.contains("did you mean Storage.WestUS2") && msg.contains(PUBLIC),
        "{msg}"
    );

    let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("AzureMachineLearnng") else {
        panic!()
    };
    assert_eq!(suggestions[0], "AzureMachineLearning");
    let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("Storage.uswest2") else {
        panic!()
    };
    assert_eq!(suggestions[0], "Storage.WestUS2", "{suggestions:?}");
    let Err(TagsError::UnknownTag { suggestions, .. }) = t.resolve("Keyvault.WestUS9") else {
        panic!()
    };
    assert!(
        suggestions.iter().all(|s| s.starts_with("AzureKeyVault.")),
        "{suggestions:?}"
    );

    // A Public region in the Government cloud: unknown, suggestions from that cloud.
    let Err(TagsError::UnknownTag {
        suggestions,
        origin,
        ..
    }) = gov().resolve("Storage.WestUS2")
    else {
        panic!()
    };
    assert!(origin.ends_with(GOV));
    assert!(!suggestions.is_empty());
    assert!(
        suggestions.iter().all(|s| s == "Storage"
            || s.starts_with("Storage.USGov")
            || s.starts_with("Storage.USDoD")),
        "{suggestions:?}"
    );

    // NSG-only tag.
    let e = t.resolve("VirtualNetwork").unwrap_err();
    assert!(matches!(e, TagsError::NotDownloadable { .. }), "{e:?}");
}

#[test]
fn government_file() {
    let g = gov();
    assert_eq!(
        (g.cloud.as_str(), g.change_number, g.tags.len()),
        ("AzureGovernment", 402, 299)
    );
    assert_eq!(g.total_prefixes(), (4859, 1732));
    let (n, v4, v6, null, _) = independent_counts(bytes(GOV));
    assert_eq!((n, v4, v6), (299, 4859, 1732));
    assert_eq!(
        g.tags
            .iter()
            .filter(|x| x.network_features.is_none())
            .count(),
        null
    );
    let want: BTreeSet<String> = [
        "usdodcentral",
        "usdodeast",
        "usgovarizona",
        "usgovtexas",
        "usgovvirginia",
    ]
    .map(String::from)
    .into();
    assert_eq!(g.regions(), want);
    assert_eq!(
        g.get("AzureMachineLearning").unwrap().prefix_counts(),
        (25, 15)
    );
}

fn expect_invalid(json: &str, tag: &str, field: &str, msg_part: &str) {
    match ServiceTags::parse(json.as_bytes(), "bad.json") {
        Err(e @ TagsError::Invalid { .. }) => {
            let TagsError::Invalid {
                origin,
                tag: t,
                field: f,
                msg,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(origin, "bad.json");
            assert_eq!(t, tag, "{e}");
            assert_eq!(f, field, "{e}");
            assert!(msg.contains(msg_part), "{e}");
            assert!(e.to_string().starts_with("bad.json: "), "{e}");
        }
        other => panic!("expected Invalid for {field}, got {other:?}"),
    }
}

/// The Government file with its first prefix replaced.
fn gov_with_first_prefix(p: &str) -> String {
    let s = std::str::from_utf8(bytes(GOV)).unwrap();
    assert!(s.contains("\"13.72.19.232/32\""));
    s.replacen("\"13.72.19.232/32\"", &format!("{p:?}"), 1)
}

#[test]
fn bad_inputs_are_rejected_with_location() {
    // Truncated in the middle: line/column of the end of input.
    let raw = bytes(GOV);
    let cut = &raw[..raw.len() / 2];
    let e = ServiceTags::parse(cut, "cut.json").unwrap_err();
    let TagsError::Json {
        origin,
        line,
        column,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    let lines = cut.iter().filter(|&&b| b == b'\n').count() + 1;
    assert_eq!((origin.as_str(), *line), ("cut.json", lines));
    assert!(*column > 0);
    assert!(
        e.to_string()
            .starts_with(&format!("cut.json:{line}:{column}: ")),
        "{e}"
    );

    // Wrong type: line/column too.
    let e = ServiceTags::parse(
        b"{\n \"changeNumber\": 1,\n \"cloud\": 5, \"values\": []}",
        "t.json",
    )
    .unwrap_err();
    assert!(matches!(e, TagsError::Json { line: 3, .. }), "{e:?}");

    // Bad CIDRs in the real file.
    let g = gov_with_first_prefix("13.72.19.232/33");
    expect_invalid(
        &g,
        "ActionGroup",
        "properties.addressPrefixes[0]",
        "not an IPv4/IPv6 CIDR",
    );
    let g = gov_with_first_prefix("13.72.19.232");
    expect_invalid(
        &g,
        "ActionGroup",
        "properties.addressPrefixes[0]",
        "not an IPv4/IPv6 CIDR",
    );
    let g = gov_with_first_prefix("not-an-ip/8");
    expect_invalid(
        &g,
        "ActionGroup",
        "properties.addressPrefixes[0]",
        "not an IPv4/IPv6 CIDR",
    );
    // Host bits set: an error (documented decision), naming the canonical form.
    let g = gov_with_first_prefix("13.72.19.232/24");
    expect_invalid(
        &g,
        "ActionGroup",
        "properties.addressPrefixes[0]",
        "did you mean 13.72.19.0/24",
    );
    let g = gov_with_first_prefix("2603:1000::1/40");
    expect_invalid(
        &g,
        "ActionGroup",
        "properties.addressPrefixes[0]",
        "host bits",
    );

    let tag = |name: &str, body: &str| {
        format!(r#"{{"name": "{name}", "id": "{name}", "properties": {{{body}}}}}"#)
    };
    let ok_props = r#""changeNumber": 1, "region": "", "systemService": "", "addressPrefixes": ["10.0.0.0/8"], "networkFeatures": null"#;
    let file = |values: &[String]| {
        format!(
            r#"{{"changeNumber": 3, "cloud": "China", "values": [{}]}}"#,
            values.join(",")
        )
    };

    // Duplicate (case-insensitive).
    let dup = file(&[
        tag("AzureCloud", ok_props),
        tag("Other", ok_props),
        tag("azurecloud", ok_props),
    ]);
    expect_invalid(&dup, "azurecloud", "values[2].name", "duplicate");
    // Missing fields.
    let no_prefixes = file(&[tag("A", r#""changeNumber": 1, "region": """#)]);
    expect_invalid(&no_prefixes, "A", "properties.addressPrefixes", "missing");
    let no_change = file(&[tag("A", r#""addressPrefixes": []"#)]);
    expect_invalid(&no_change, "A", "properties.changeNumber", "missing");
    let no_props = file(&[r#"{"name": "A", "id": "A"}"#.to_string()]);
    expect_invalid(&no_props, "A", "properties", "missing");
    let no_name = file(&[
        tag("A", ok_props),
        r#"{"id": "B", "properties": {}}"#.to_string(),
    ]);
    expect_invalid(&no_name, "", "values[1].name", "missing");
    expect_invalid(
        r#"{"changeNumber": 3, "values": []}"#,
        "",
        "cloud",
        "missing",
    );
    expect_invalid(
        r#"{"cloud": "Public", "values": []}"#,
        "",
        "changeNumber",
        "missing",
    );
    expect_invalid(
        r#"{"changeNumber": 3, "cloud": "Public"}"#,
        "",
        "values",
        "missing",
    );
    expect_invalid(&file(&[]), "", "values", "empty");
    expect_invalid(
        &file(&[tag("A", ok_props)]).replace("China", "../../etc"),
        "",
        "cloud",
        "not a cloud name",
    );
    // The real Government file without one field somewhere in the middle.
    let s = std::str::from_utf8(bytes(GOV)).unwrap();
    let at = s.find("\"name\": \"AzureMachineLearning\"").unwrap();
    let field_at = at + s[at..].find("\"addressPrefixes\"").unwrap();
    let mut broken = s.to_string();
    broken.replace_range(
        field_at..field_at + "\"addressPrefixes\"".len(),
        "\"addressPrefixez\"",
    );
    expect_invalid(
        &broken,
        "AzureMachineLearning",
        "properties.addressPrefixes",
        "missing",
    );
}

#[test]
fn synthetic_china_file() {
    let china = r#"{
  "changeNumber": 405,
  "cloud": "China",
  "values": [
    {"name": "AzureFrontDoor.Frontend", "id": "AzureFrontDoor.Frontend", "properties": {"changeNumber": 3,
      "region": "", "regionId": 0, "platform": "Azure", "systemService": "AzureFrontDoor",
      "addressPrefixes": ["40.72.0.0/27", "2406:e500:4440::/48"], "networkFeatures": ["API", "NSG"]}},
    {"name": "AzureKeyVault.ChinaNorth3", "id": "AzureKeyVault.ChinaNorth3", "properties": {"changeNumber": 2,
      "region": "chinanorth3", "regionId": 50, "platform": "Azure", "systemService": "AzureKeyVault",
      "addressPrefixes": ["52.131.0.0/26", "2406:e500:5a00::/56", "159.27.0.0/24"], "networkFeatures": null}},
    {"name": "AzureMachineLearning", "id": "AzureMachineLearning", "properties": {"changeNumber": 9,
      "region": "", "regionId": 0, "platform": "Azure", "systemService": "AzureMachineLearning",
      "addressPrefixes": ["40.73.107.0/28"], "networkFeatures": ["API", "NSG", "UDR", "FW"]}}
  ]
}"#;
    let t = ServiceTags::parse(china.as_bytes(), "china.json").unwrap();
    assert_eq!(
        (t.cloud.as_str(), t.change_number, t.tags.len()),
        ("China", 405, 3)
    );
    assert_eq!(t.total_prefixes(), (4, 2));
    assert_eq!(
        t.regions().into_iter().collect::<Vec<_>>(),
        vec!["chinanorth3".to_string()]
    );
    let r = t.resolve("Keyvault.chinanorth3").unwrap();
    assert_eq!(r.resolved_name, "AzureKeyVault.ChinaNorth3");
    assert_eq!(r.tag.network_features, None);
    assert_eq!(r.tag.change_number, 2);
    assert_eq!(
        r.tag
            .prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["52.131.0.0/26", "2406:e500:5a00::/56", "159.27.0.0/24"]
    );
    assert_eq!(
        t.resolve("AzureFrontDoor.FrontEnd").unwrap().resolved_name,
        "AzureFrontDoor.Frontend"
    );
    assert!(matches!(
        t.resolve("Storage.WestUS2"),
        Err(TagsError::UnknownTag { .. })
    ));
    assert_eq!(
        t.names().collect::<Vec<_>>(),
        vec![
            "AzureFrontDoor.Frontend",
            "AzureKeyVault.ChinaNorth3",
            "AzureMachineLearning"
        ]
    );
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("tagwall-st-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir_listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn store_round_trip() {
    let tmp = TempDir::new("store");
    let dir = tmp.0.join("nested/store");
    assert!(
        store::list(&dir).unwrap().is_empty(),
        "missing dir is an empty store"
    );
    assert!(
        store::load_latest(&dir, "AzureGovernment")
            .unwrap()
            .is_none()
    );

    let raw = bytes(GOV);
    let (path, saved) = store::save(&dir, raw, GOV).unwrap();
    assert_eq!(path, dir.join("servicetags-azuregovernment-402.json"));
    assert_eq!(std::fs::read(&path).unwrap(), raw, "stored byte for byte");
    assert_eq!(saved.total_prefixes(), (4859, 1732));
    let (p2, loaded) = store::load_latest(&dir, "AzureGovernment")
        .unwrap()
        .unwrap();
    assert_eq!(p2, path);
    assert_eq!(loaded.tags, gov().tags);
    assert!(
        store::load_latest(&dir, "azuregovernment")
            .unwrap()
            .is_some()
    );
    assert!(store::load_latest(&dir, "Public").unwrap().is_none());

    // Older and newer change numbers of the same cloud.
    let s = std::str::from_utf8(raw).unwrap();
    assert!(s.starts_with("{\n  \"changeNumber\": 402,"));
    let older = s.replacen("\"changeNumber\": 402,", "\"changeNumber\": 401,", 1);
    let (p_old, _) = store::save(&dir, older.as_bytes(), "older").unwrap(); // allowed, warns
    assert!(p_old.ends_with("servicetags-azuregovernment-401.json"));
    assert_eq!(
        store::load_latest(&dir, "AzureGovernment")
            .unwrap()
            .unwrap()
            .1
            .change_number,
        402
    );
    let newer = s.replacen("\"changeNumber\": 402,", "\"changeNumber\": 1000,", 1);
    store::save(&dir, newer.as_bytes(), "newer").unwrap();
    assert_eq!(
        store::load_latest(&dir, "AzureGovernment")
            .unwrap()
            .unwrap()
            .1
            .change_number,
        1000
    );

    let china = r#"{"changeNumber": 7, "cloud": "China", "values": [{"name": "A", "id": "A",
        "properties": {"changeNumber": 1, "addressPrefixes": ["10.0.0.0/8"]}}]}"#;
    store::save(&dir, china.as_bytes(), "china").unwrap();
    let listed: Vec<(String, u64)> = store::list(&dir)
        .unwrap()
        .into_iter()
        .map(|(c, n, _)| (c, n))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("azuregovernment".into(), 401),
            ("azuregovernment".into(), 402),
            ("azuregovernment".into(), 1000),
            ("china".into(), 7)
        ]
    );

    // Invalid input leaves the store exactly as it was (no new, changed or temporary files).
    let before = dir_listing(&dir);
    let cut = &raw[..raw.len() - 10];
    assert!(matches!(
        store::save(&dir, cut, "cut"),
        Err(TagsError::Json { .. })
    ));
    let hostbits = gov_with_first_prefix("13.72.19.232/24")
        .replace("\"changeNumber\": 402,", "\"changeNumber\": 2000,");
    assert!(matches!(
        store::save(&dir, hostbits.as_bytes(), "hb"),
        Err(TagsError::Invalid { .. })
    ));
    assert_eq!(dir_listing(&dir), before);
    assert_eq!(
        store::load_latest(&dir, "AzureGovernment")
            .unwrap()
            .unwrap()
            .1
            .change_number,
        1000
    );

    // Unrelated files are ignored; a stored file whose content does not match its name is an error.
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    assert_eq!(store::list(&dir).unwrap().len(), 4);
    std::fs::copy(&path, dir.join("servicetags-china-9.json")).unwrap();
    let e = store::load_latest(&dir, "China").unwrap_err();
    assert!(matches!(e, TagsError::Store { .. }), "{e:?}");
    // A damaged stored file is reported, not skipped.
    std::fs::write(dir.join("servicetags-china-10.json"), "{").unwrap();
    assert!(matches!(
        store::load_latest(&dir, "China"),
        Err(TagsError::Json { .. })
    ));
}
