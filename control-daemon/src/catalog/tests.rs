use std::collections::HashSet;

use super::*;

fn embedded() -> &'static Catalog {
    Catalog::embedded()
}

/// A minimal valid entry; `extra` lines are appended inside the `[[requirement]]`.
fn entry(id: &str, extra: &str) -> String {
    format!(
        r#"
[[requirement]]
id = "{id}"
scenario = "workspace"
direction = "outbound"
clouds = ["public"]
target = {{ fqdn = "example.com" }}
protocol = "tcp"
ports = [443]
source = {{ doc = "d", section = "s" }}
description = "x"
{extra}"#
    )
}

fn file(edition: &str, entries: &str) -> String {
    format!("edition = \"{edition}\"\n[docs]\nd = \"doc\"\n{entries}")
}

fn parse_one(text: &str) -> Result<Catalog, CatalogError> {
    Catalog::parse(&[("t.toml", text)])
}

fn err_one(text: &str) -> String {
    parse_one(text).expect_err("must be rejected").to_string()
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        + 1
}

fn targets(sel: &[&Requirement]) -> Vec<String> {
    sel.iter().map(|r| r.target.to_string()).collect()
}

fn has(sel: &[&Requirement], pred: impl Fn(&Requirement) -> bool) -> bool {
    sel.iter().any(|r| pred(r))
}

fn is_tag(r: &Requirement, name: &str) -> bool {
    matches!(&r.target, Target::ServiceTag { tag } if tag == name)
}

#[test]
fn embedded_catalog_parses_with_both_editions() {
    let c = embedded();
    let n2021 = c
        .requirements
        .iter()
        .filter(|r| r.edition == Edition::E2021)
        .count();
    let n2026 = c.requirements.len() - n2021;
    assert!(n2021 >= 100, "2021 entries: {n2021}");
    assert!(n2026 >= 40, "2026 entries: {n2026}");
    // The file order is kept: every 2021 entry comes before every 2026 entry.
    let first_2026 = c
        .requirements
        .iter()
        .position(|r| r.edition == Edition::E2026)
        .expect("2026 entries");
    assert!(
        c.requirements[first_2026..]
            .iter()
            .all(|r| r.edition == Edition::E2026)
    );
    assert_eq!(Catalog::parse(&EMBEDDED_FILES).expect("reparse"), *c);
}

#[test]
fn ids_are_unique_and_fit_the_table() {
    let mut seen = HashSet::new();
    for r in &embedded().requirements {
        assert!(seen.insert(r.id.as_str()), "duplicate id {}", r.id);
        assert!(r.id.len() <= 34, "id {} is longer than 34 characters", r.id);
        assert!(embedded().get(&r.id).is_some_and(|g| std::ptr::eq(g, r)));
    }
    assert!(embedded().get("no-such-id").is_none());
}

#[test]
fn url_targets_are_host_level_and_nothing_else_is() {
    let mut urls = 0;
    for r in &embedded().requirements {
        match (&r.target, r.enforcement()) {
            (Target::Url { path, .. }, Enforcement::HostLevel { reason }) => {
                urls += 1;
                assert!(path.starts_with('/'), "{}: path {path:?}", r.id);
                assert!(reason.contains("URL path"), "{reason}");
            }
            (Target::Url { .. }, e) => panic!("{}: URL target enforced as {e:?}", r.id),
            (_, Enforcement::Network) => {}
            (_, e) => panic!("{}: non-URL target enforced as {e:?}", r.id),
        }
    }
    assert!(urls >= 2, "the VS Code websocket rows are URLs");
}

#[test]
fn every_entry_has_provenance_and_valid_ports() {
    for r in &embedded().requirements {
        let doc = &r.source.doc;
        match r.edition {
            Edition::E2021 => assert!(doc.starts_with("seeds/00"), "{}: {doc}", r.id),
            Edition::E2026 => assert!(doc.starts_with("testdata/docs/"), "{}: {doc}", r.id),
        }
        assert!(!r.source.section.is_empty() && !r.description.is_empty());
        assert!(!r.ports.is_empty() && !r.clouds.is_empty(), "{}", r.id);
        assert!(
            r.proto == Proto::TCP || r.proto == Proto::UDP || r.proto == Proto::ANY,
            "{}: {}",
            r.id,
            r.proto
        );
    }
}

#[test]
fn china_has_no_front_door_frontend() {
    for edition in Edition::ALL {
        let china = embedded().select(Cloud::China, edition);
        assert!(
            !has(&china, |r| is_tag(r, "AzureFrontDoor.FrontEnd")),
            "{edition}"
        );
        assert!(has(&china, |r| is_tag(r, "AzureMachineLearning")));
        for cloud in [Cloud::Public, Cloud::Government] {
            let sel = embedded().select(cloud, edition);
            assert!(
                has(&sel, |r| is_tag(r, "AzureFrontDoor.FrontEnd")),
                "{cloud} {edition}"
            );
        }
    }
}

#[test]
fn clouds_get_their_own_hosts() {
    let gov = targets(&embedded().select(Cloud::Government, Edition::E2026));
    assert!(gov.contains(&"login.microsoftonline.us".to_owned()));
    assert!(!gov.contains(&"login.microsoftonline.com".to_owned()));
    let china = targets(&embedded().select(Cloud::China, Edition::E2021));
    assert!(china.contains(&"studio.ml.azure.cn".to_owned()));
    assert!(!china.contains(&"ml.azure.com".to_owned()));
    // AutoML NLP/Vision hosts: public cloud only.
    assert!(
        !targets(&embedded().select(Cloud::China, Edition::E2026)).contains(&"aka.ms".to_owned())
    );
}

#[test]
fn editions_differ_as_the_changes_say() {
    let c = embedded();
    let old = c.select(Cloud::Public, Edition::E2021);
    let new = c.select(Cloud::Public, Edition::E2026);
    let aml_udp_5831 = |r: &Requirement| {
        is_tag(r, "AzureMachineLearning")
            && r.direction == Direction::Outbound
            && r.proto == Proto::UDP
            && r.ports.contains(&PortRange::single(5831))
    };
    assert!(!has(&old, aml_udp_5831) && has(&new, aml_udp_5831));

    // AzureMachineLearning TCP: 443 only in 2021; 443, 8787, 18881 in 2026 (workspace).
    let ws_aml_tcp = |sel: &[&Requirement]| -> Vec<PortRange> {
        sel.iter()
            .filter(|r| {
                r.scenario == Scenario::Workspace
                    && is_tag(r, "AzureMachineLearning")
                    && r.proto == Proto::TCP
            })
            .flat_map(|r| r.ports.clone())
            .collect()
    };
    assert_eq!(ws_aml_tcp(&old), [PortRange::single(443)]);
    assert_eq!(
        ws_aml_tcp(&new),
        [443, 8787, 18881].map(PortRange::single).to_vec()
    );

    let batch_out = |r: &Requirement| {
        is_tag(r, "BatchNodeManagement.<region>") && r.direction == Direction::Outbound
    };
    assert!(!has(&old, batch_out) && has(&new, batch_out));

    for tag in [
        "AzureFrontDoor.FirstParty",
        "AzureMonitor",
        "VirtualNetwork",
        "MicrosoftContainerRegistry",
    ] {
        assert!(!has(&old, |r| is_tag(r, tag)), "{tag} in 2021");
        assert!(has(&new, |r| is_tag(r, tag)), "{tag} missing in 2026");
    }
    // Replaced or dropped in 2026.
    for tag in [
        "MicrosoftContainerRegistry.<region>",
        "ContainerRegistry.<region>",
    ] {
        assert!(has(&old, |r| is_tag(r, tag)), "{tag} missing in 2021");
        assert!(!has(&new, |r| is_tag(r, tag)), "{tag} still in 2026");
    }
    let vienna = |r: &Requirement| r.target.to_string() == "viennaglobal.azurecr.io";
    assert!(has(&old, vienna) && !has(&new, vienna));

    // Storage SMB 445 via the tag, only behind a storage firewall, only in 2026.
    let storage_445 = |r: &Requirement| {
        is_tag(r, "Storage.<region>") && r.ports.contains(&PortRange::single(445))
    };
    assert!(!has(&old, storage_445));
    assert!(
        new.iter()
            .filter(|r| storage_445(r))
            .all(|r| r.conditions == [Condition::StorageFirewallSmb])
    );
    assert!(has(&new, storage_445));

    // Inbound 44224 became conditional on a public IP.
    let inbound_44224: Vec<&&Requirement> = new
        .iter()
        .filter(|r| {
            r.direction == Direction::Inbound && r.ports.contains(&PortRange::single(44224))
        })
        .collect();
    assert_eq!(inbound_44224.len(), 1);
    assert_eq!(inbound_44224[0].conditions, [Condition::ComputePublicIp]);
    assert!(old.iter().any(|r| r.direction == Direction::Inbound
        && r.ports.contains(&PortRange::single(44224))
        && r.conditions.is_empty()));

    // MCR: conditional in 2021, always needed in 2026.
    let mcr = |sel: &[&Requirement]| -> Vec<Vec<Condition>> {
        sel.iter()
            .filter(|r| r.target.to_string() == "mcr.microsoft.com" && r.scenario != Scenario::Aks)
            .map(|r| r.conditions.clone())
            .collect()
    };
    assert!(
        mcr(&old)
            .iter()
            .all(|c| c == &[Condition::MicrosoftImagesUserDeps])
    );
    assert_eq!(mcr(&new), [Vec::<Condition>::new()]);

    // Kubernetes wildcards narrowed to your resources.
    let new_t = targets(&new);
    let old_t = targets(&old);
    assert!(
        old_t.contains(&"*.azurecr.io".to_owned()) && !new_t.contains(&"*.azurecr.io".to_owned())
    );
    assert!(new_t.contains(&"<acr>.<region>.data.azurecr.io".to_owned()));
    assert!(new_t.contains(&"<workspace-id>.workspace.<region>.api.azureml.ms".to_owned()));

    // Everything 2026 adds is an entry of edition 2026; nothing of 2021 appears anew.
    let old_ids: HashSet<&str> = old.iter().map(|r| r.id.as_str()).collect();
    for r in &new {
        assert!(
            old_ids.contains(r.id.as_str()) || r.edition == Edition::E2026,
            "{}",
            r.id
        );
    }
}

#[test]
fn select_drops_only_what_a_selected_entry_replaces() {
    let text = file(
        "2021",
        &(entry("a", "")
            + &entry("b", "").replace("clouds = [\"public\"]", "clouds = [\"china\"]")),
    );
    let newer = file("2026", &entry("c", "replaces = [\"a\", \"b\"]"));
    let c = Catalog::parse(&[("old.toml", &text), ("new.toml", &newer)]).expect("parses");
    let ids =
        |cloud, ed| -> Vec<&str> { c.select(cloud, ed).iter().map(|r| r.id.as_str()).collect() };
    assert_eq!(ids(Cloud::Public, Edition::E2021), ["a"]);
    assert_eq!(ids(Cloud::Public, Edition::E2026), ["c"]);
    // `c` is not a china entry, so it replaces nothing there.
    assert_eq!(ids(Cloud::China, Edition::E2026), ["b"]);
    assert_eq!(
        c.get("c").map(|r| r.replaces.clone()),
        Some(vec!["a".into(), "b".into()])
    );
}

#[test]
fn unknown_key_names_file_line_and_field() {
    let text = file("2021", &entry("a", "colour = \"red\""));
    let e = err_one(&text);
    let line = line_of(&text, "colour");
    assert!(e.starts_with(&format!("t.toml:{line}:")), "{e}");
    assert!(e.contains("`colour`") && e.contains("unknown field"), "{e}");
    assert!(e.contains("requirement #1 (id \"a\")"), "{e}");
}

#[test]
fn bad_port_names_file_line_and_field() {
    let text = file(
        "2021",
        &entry("a", "").replace("ports = [443]", "ports = [443, 70000]"),
    );
    let e = err_one(&text);
    let line = line_of(&text, "70000");
    assert!(e.starts_with(&format!("t.toml:{line}:")), "{e}");
    assert!(e.contains("field `ports`") && e.contains("70000"), "{e}");

    let text = file(
        "2021",
        &entry("a", "").replace("ports = [443]", "ports = [\"20-10\"]"),
    );
    let e = err_one(&text);
    assert!(e.contains("field `ports`") && e.contains("reversed"), "{e}");

    // A multi-line array: toml points at the array, on the line of the key.
    let text = file(
        "2021",
        &entry("a", "").replace("ports = [443]", "ports = [\n  443,\n  0,\n]"),
    );
    let e = err_one(&text);
    let line = line_of(&text, "ports = [");
    assert!(
        e.starts_with(&format!("t.toml:{line}:")) && e.contains("field `ports`"),
        "{e}"
    );

    // An element error on a continuation line: the key is found on an earlier line.
    let text = file(
        "2021",
        &entry("a", "").replace(
            "clouds = [\"public\"]",
            "clouds = [\n  \"public\",\n  \"mars\",\n]",
        ),
    );
    let e = err_one(&text);
    let line = line_of(&text, "\"mars\"");
    assert!(
        e.starts_with(&format!("t.toml:{line}:")) && e.contains("field `clouds`"),
        "{e}"
    );

    let text = file(
        "2021",
        &entry("a", "").replace("ports = [443]", "ports = []"),
    );
    assert!(err_one(&text).contains("lists no ports"));
    let text = file(
        "2021",
        &entry("a", "").replace("ports = [443]", "ports = [443, 443]"),
    );
    assert!(err_one(&text).contains("listed twice"));
}

#[test]
fn duplicate_id_names_both_places() {
    let text = file(
        "2021",
        &(entry("a", "") + &entry("b", "") + &entry("a", "")),
    );
    let e = parse_one(&text).expect_err("duplicate");
    let CatalogError::DuplicateId { at, id, first } = &e else {
        panic!("{e}")
    };
    assert_eq!(id, "a");
    assert_eq!(first.line, line_of(&text, "id = \"a\""));
    assert!(at.line > first.line);
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("t.toml:{}:", at.line)) && msg.contains("field `id`"),
        "{msg}"
    );

    // Across files too.
    let e = Catalog::parse(&[
        ("one.toml", &file("2021", &entry("a", ""))),
        ("two.toml", &file("2026", &entry("a", ""))),
    ])
    .expect_err("duplicate across files")
    .to_string();
    assert!(e.starts_with("two.toml:") && e.contains("one.toml:"), "{e}");
}

#[test]
fn dangling_or_bad_replaces_are_rejected() {
    let text = file("2026", &entry("a", "replaces = [\"ghost\"]"));
    let e = parse_one(&text).expect_err("dangling");
    assert!(matches!(&e, CatalogError::DanglingReplaces { replaced, .. } if replaced == "ghost"));
    let msg = e.to_string();
    let line = line_of(&text, "ghost");
    assert!(msg.starts_with(&format!("t.toml:{line}:")), "{msg}");
    assert!(
        msg.contains("field `replaces`") && msg.contains("\"ghost\""),
        "{msg}"
    );

    // Only older entries can be replaced.
    let text = file(
        "2021",
        &(entry("a", "") + &entry("b", "replaces = [\"a\"]")),
    );
    let msg = err_one(&text);
    assert!(
        msg.contains("field `replaces`") && msg.contains("older editions"),
        "{msg}"
    );
    let text = file("2026", &entry("a", "replaces = [\"a\"]"));
    assert!(err_one(&text).contains("cannot replace itself"));
}

#[test]
fn unknown_enum_values_and_bad_targets_are_rejected() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "scenario = \"workspace\"",
            "scenario = \"gaming\"",
            "scenario",
        ),
        ("clouds = [\"public\"]", "clouds = [\"mars\"]", "clouds"),
        (
            "direction = \"outbound\"",
            "direction = \"sideways\"",
            "direction",
        ),
        ("protocol = \"tcp\"", "protocol = \"tcpp\"", "protocol"),
        ("doc = \"d\"", "doc = \"nope\"", "source.doc"),
        (
            "fqdn = \"example.com\"",
            "fqdn = \"Example.com\"",
            "target.fqdn",
        ),
        (
            "fqdn = \"example.com\"",
            "fqdn = \"*.example.com\"",
            "target.fqdn",
        ),
        (
            "fqdn = \"example.com\"",
            "fqdn = \"<tenant>.example.com\"",
            "target.fqdn",
        ),
        (
            "fqdn = \"example.com\"",
            "wildcard_fqdn = \"example.com\"",
            "target.wildcard_fqdn",
        ),
        (
            "fqdn = \"example.com\"",
            "url = \"example.com\"",
            "target.url",
        ),
        (
            "fqdn = \"example.com\"",
            "url = \"https://example.com/x\"",
            "target.url",
        ),
        (
            "fqdn = \"example.com\"",
            "service_tag = \"Storage.<storage>\"",
            "target.service_tag",
        ),
        (
            "fqdn = \"example.com\"",
            "host = \"example.com\"",
            "target.host",
        ),
        ("protocol = \"tcp\"", "protocol = \"icmp\"", "ports"),
        ("id = \"a\"", "id = \"Not_Valid\"", "id"),
        ("description = \"x\"", "description = \" \"", "description"),
    ];
    for (from, to, field) in cases {
        let text = file("2021", &entry("a", "").replacen(from, to, 1));
        let e = err_one(&text);
        // The line of the offending value; icmp with ports is reported at `ports`.
        let key = if *field == "ports" {
            "ports"
        } else {
            to.split(" =").next().unwrap_or(to)
        };
        let needle = format!("{key} =");
        let line = line_of(&text, &needle);
        assert!(
            e.starts_with(&format!("t.toml:{line}:")) && e.contains(&format!("field `{field}`")),
            "{to}: {e}"
        );
    }
    let e = err_one("edition = \"2020\"\n");
    assert!(
        e.starts_with("t.toml:1:") && e.contains("field `edition`"),
        "{e}"
    );
    let e = err_one("[docs]\n");
    assert!(
        e.contains("missing field") && e.contains("`edition`"),
        "{e}"
    );
    let e = err_one(&file(
        "2021",
        &entry("a", "").replace("description = \"x\"\n", ""),
    ));
    assert!(
        e.contains("field `description`") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn instantiate_substitutes_and_multiplies() {
    let c = embedded();
    let p = Placeholders {
        region: Some("WestUS2".into()),
        storage: vec!["acct1".into(), "acct2".into(), "acct1".into()],
        acr: vec!["myacr".into()],
        workspace_id: Some("0f1e2d3c-0000-4000-8000-123456789abc".into()),
    };
    let file_share = c.get("compute-storage-file").expect("entry");
    assert_eq!(file_share.placeholders(), [Placeholder::Storage]);
    assert_eq!(
        file_share.instantiate(&p).expect("ok"),
        [
            Target::Fqdn {
                name: "acct1.file.core.windows.net".into()
            },
            Target::Fqdn {
                name: "acct2.file.core.windows.net".into()
            },
        ]
    );
    let tag = c.get("ws-tag-storage-region").expect("entry");
    assert_eq!(
        tag.instantiate(&p).expect("ok"),
        [Target::ServiceTag {
            tag: "Storage.westus2".into()
        }]
    );
    let api = c.get("arc-train-workspace-id-api").expect("entry");
    assert_eq!(
        api.placeholders(),
        [Placeholder::WorkspaceId, Placeholder::Region]
    );
    assert_eq!(
        api.instantiate(&p).expect("ok"),
        [Target::Fqdn {
            name: "0f1e2d3c-0000-4000-8000-123456789abc.workspace.westus2.api.azureml.ms".into()
        }]
    );
    let plain = c.get("py-pypi-org").expect("entry");
    assert!(plain.placeholders().is_empty());
    assert_eq!(
        plain.instantiate(&Placeholders::default()).expect("ok"),
        std::slice::from_ref(&plain.target)
    );

    let e = file_share
        .instantiate(&Placeholders {
            region: Some("westus2".into()),
            ..Placeholders::default()
        })
        .expect_err("no storage");
    assert!(
        matches!(&e, CatalogError::MissingPlaceholder { id, placeholder: Placeholder::Storage }
            if id == "compute-storage-file"),
        "{e}"
    );
    assert!(e.to_string().contains("<storage>"));
    let e = api
        .instantiate(&Placeholders {
            workspace_id: Some("w".into()),
            ..Placeholders::default()
        })
        .expect_err("no region");
    assert!(matches!(
        e,
        CatalogError::MissingPlaceholder {
            placeholder: Placeholder::Region,
            ..
        }
    ));
    let e = tag
        .instantiate(&Placeholders {
            region: Some("west us".into()),
            ..Placeholders::default()
        })
        .expect_err("bad value");
    assert!(matches!(
        e,
        CatalogError::BadPlaceholderValue {
            placeholder: Placeholder::Region,
            ..
        }
    ));
}

#[test]
fn every_placeholder_in_the_catalog_can_be_filled() {
    let p = Placeholders {
        region: Some("eastus".into()),
        storage: vec!["st".into()],
        acr: vec!["reg".into()],
        workspace_id: Some("ws".into()),
    };
    for r in &embedded().requirements {
        for t in r.instantiate(&p).unwrap_or_else(|e| panic!("{e}")) {
            assert!(!t.to_string().contains('<'), "{}: {t}", r.id);
        }
    }
}

#[test]
fn conditions_must_all_hold() {
    let pe = embedded()
        .get("compute-any-instances-ms-pe")
        .expect("entry");
    assert_eq!(pe.conditions, [Condition::PrivateEndpoint]);
    assert!(!pe.applies(&[]));
    assert!(pe.applies(&[Condition::HbiWorkspace, Condition::PrivateEndpoint]));
    assert!(embedded().get("py-pypi-org").expect("entry").applies(&[]));
}

#[test]
fn names_parse_print_and_serialize_alike() {
    assert_eq!(Edition::default(), Edition::E2026);
    assert_eq!(Edition::LATEST, Edition::E2026);
    for e in Edition::ALL {
        assert_eq!(e.to_string().parse::<Edition>(), Ok(e));
        assert_eq!(serde_json::to_string(&e).expect("json"), format!("\"{e}\""));
    }
    assert!("2022".parse::<Edition>().is_err());
    assert!(Edition::E2021 < Edition::E2026);
    for c in Cloud::ALL {
        assert_eq!(c.as_str().parse::<Cloud>(), Ok(c));
        assert_eq!(c.azure_name().to_uppercase().parse::<Cloud>(), Ok(c));
        assert_eq!(serde_json::to_string(&c).expect("json"), format!("\"{c}\""));
    }
    assert_eq!("azurechinacloud".parse::<Cloud>(), Ok(Cloud::China));
    assert_eq!("Government".parse::<Cloud>(), Ok(Cloud::Government));
    assert!("mars".parse::<Cloud>().is_err());
    for s in Scenario::ALL {
        assert_eq!(s.as_str().parse::<Scenario>(), Ok(*s));
        assert_eq!(serde_json::to_string(s).expect("json"), format!("\"{s}\""));
        assert!(!s.about().is_empty() && !s.about().starts_with(' '));
    }
    for c in Condition::ALL {
        assert_eq!(c.as_str().parse::<Condition>(), Ok(*c));
        assert_eq!(serde_json::to_string(c).expect("json"), format!("\"{c}\""));
    }
    assert!(
        "gaming"
            .parse::<Scenario>()
            .unwrap_err()
            .contains("workspace")
    );
    // Every scenario and condition is used by some entry.
    let c = embedded();
    for s in Scenario::ALL {
        assert!(
            c.requirements.iter().any(|r| r.scenario == *s),
            "unused scenario {s}"
        );
    }
    for k in Condition::ALL {
        assert!(
            c.requirements.iter().any(|r| r.conditions.contains(k)),
            "unused condition {k}"
        );
    }
}

#[test]
fn target_json_is_tagged_by_kind() {
    let v = serde_json::to_value(Target::Url {
        host: "h.example".into(),
        path: "/p".into(),
    })
    .expect("json");
    assert_eq!(
        v,
        serde_json::json!({"kind": "url", "host": "h.example", "path": "/p"})
    );
    let v = serde_json::to_value(Enforcement::Network).expect("json");
    assert_eq!(v, serde_json::json!({"kind": "network"}));
}
