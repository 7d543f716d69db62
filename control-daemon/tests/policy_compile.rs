//! The policy compiler without a kernel: golden AML policies per cloud, the flattened
//! LPM against a naive scan of all rules, and bad input that must be rejected with the
//! file, line and field.
//!
//! Golden files live in tests/golden/; regenerate with `TAGWALL_UPDATE_GOLDEN=1` and
//! review the diff.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tagwall::{
    catalog::Catalog,
    cli::policy::{explain_text, parse_target},
    compile::{CompiledPolicy, lookup},
    config::Config,
    policy::{self, Effective, PolicyError, Summary},
    rules::{Direction, Proto},
    servicetags::ServiceTags,
};

fn testdata(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel);
    assert!(
        p.exists(),
        "test data missing: {} (the shared testdata must be beside the repo)",
        p.display()
    );
    p
}

fn public() -> ServiceTags {
    ServiceTags::load(&testdata("servicetags/ServiceTags_Public_20250908.json")).unwrap()
}

fn government() -> ServiceTags {
    ServiceTags::load(&testdata(
        "servicetags/ServiceTags_AzureGovernment_20260720.json",
    ))
    .unwrap()
}

/// No China file is public in the test data: a small synthetic one in the same schema
/// (documentation address ranges), enough to compile the China selection.
fn china() -> ServiceTags {
    let tags = [
        (
            "AzureActiveDirectory",
            "",
            "198.51.100.0/28",
            "2001:db8:1::/48",
        ),
        (
            "AzureMachineLearning",
            "",
            "198.51.100.16/28",
            "2001:db8:2::/48",
        ),
        (
            "AzureResourceManager",
            "",
            "198.51.100.32/28",
            "2001:db8:3::/48",
        ),
        (
            "Storage.ChinaEast2",
            "chinaeast2",
            "198.51.100.48/28",
            "2001:db8:4::/48",
        ),
        (
            "AzureContainerRegistry.ChinaEast2",
            "chinaeast2",
            "198.51.100.64/28",
            "2001:db8:5::/48",
        ),
        (
            "MicrosoftContainerRegistry",
            "",
            "198.51.100.80/28",
            "2001:db8:6::/48",
        ),
        (
            "MicrosoftContainerRegistry.ChinaEast2",
            "chinaeast2",
            "198.51.100.96/28",
            "2001:db8:7::/48",
        ),
        (
            "AzureKeyVault.ChinaEast2",
            "chinaeast2",
            "198.51.100.112/28",
            "2001:db8:8::/48",
        ),
        (
            "BatchNodeManagement.ChinaEast2",
            "chinaeast2",
            "198.51.100.128/28",
            "2001:db8:9::/48",
        ),
        ("AzureMonitor", "", "198.51.100.144/28", "2001:db8:a::/48"),
        (
            "AzureFrontDoor.Frontend",
            "",
            "198.51.100.160/28",
            "2001:db8:b::/48",
        ),
        (
            "AzureFrontDoor.FirstParty",
            "",
            "198.51.100.176/28",
            "2001:db8:c::/48",
        ),
    ];
    let json = tagwall::servicetags::lab_file_json("China", 7, &tags);
    ServiceTags::parse(json.as_bytes(), "synthetic-china.json").unwrap()
}

fn config(text: &str) -> Config {
    Config::parse(text, "aml.toml").unwrap()
}

fn aml(cloud: &str, region: &str) -> Config {
    config(&format!(
        "internal_prefixes = [\"10.0.0.0/16\"]\n[azureml]\ncloud = \"{cloud}\"\nregion = \"{region}\"\nstorage_accounts = [\"mystorage\"]\ncontainer_registries = [\"myacr\"]\nworkspace_id = \"0c6b1c2d-1111-2222-3333-444455556666\"\nconditions = [\"hbi-workspace\", \"custom-images\", \"private-endpoint\", \"compute-public-ip\"]\n"
    ))
}

fn build(cfg: &Config, tags: &ServiceTags) -> (Effective, CompiledPolicy) {
    let eff = policy::build(
        cfg,
        Catalog::embedded(),
        Some(tags),
        &["10.0.0.4".parse().unwrap()],
    )
    .unwrap();
    let compiled = eff.compile(1 << 16).unwrap();
    (eff, compiled)
}

/// FNV-1a over the flattened entries: the golden file pins the exact layout without
/// copying prefixes out of Microsoft's files.
fn digest(c: &CompiledPolicy) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: String| {
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (d, n, s) in &c.v4 {
        eat(format!("{d:?}{n}{:?}", c.sets[*s as usize]));
    }
    for (d, n, s) in &c.v6 {
        eat(format!("{d:?}{n}{:?}", c.sets[*s as usize]));
    }
    h
}

fn golden_text(eff: &Effective, c: &CompiledPolicy) -> String {
    let mut s = String::new();
    let (cloud, change, _) = eff.tags.clone().unwrap();
    let _ = writeln!(s, "tags cloud {cloud} changeNumber {change}");
    let _ = writeln!(s, "{}", Summary::new(eff, c));
    let _ = writeln!(s, "layout digest {:016x}", digest(c));
    let _ = writeln!(
        s,
        "\n# rules: id name direction protocol ports prefixes tags"
    );
    for (r, p) in eff.rules.iter().zip(&eff.provenance) {
        let ports: Vec<String> = r.ports.iter().map(ToString::to_string).collect();
        let tags: Vec<String> = p.service_tags.iter().map(|t| t.resolved.clone()).collect();
        let _ = writeln!(
            s,
            "{} {} {:?} {} {} {} [{}]",
            r.id,
            r.name,
            r.direction,
            r.proto,
            ports.join(","),
            r.prefixes.len(),
            tags.join(",")
        );
    }
    let _ = writeln!(s, "\n# host names");
    for f in &eff.fqdns {
        let _ = writeln!(s, "{} {}", f.rule_id, f.pattern);
    }
    let _ = writeln!(s, "\n# host level");
    for h in &eff.host_level {
        let _ = writeln!(s, "{} {}", h.requirement, h.url);
    }
    let _ = writeln!(s, "\n# not applied");
    for n in &eff.not_applied {
        let _ = writeln!(s, "{}: {}", n.requirement, n.why);
    }
    s
}

fn check_golden(name: &str, text: &str) {
    // Messages name the tags file by path; the checkout can live anywhere,
    // so the golden spells the test-data directory as <testdata>.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    let text = text.replace(&dir.display().to_string(), "<testdata>");
    let text = text.as_str();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("TAGWALL_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate with TAGWALL_UPDATE_GOLDEN=1 and review)",
            path.display()
        )
    });
    if want != text {
        let diff: Vec<String> = want
            .lines()
            .zip(text.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(10)
            .map(|(i, (a, b))| format!("line {}:\n  golden: {a}\n  now:    {b}", i + 1))
            .collect();
        panic!(
            "{name}: compiled policy differs from {} ({} vs {} lines):\n{}",
            path.display(),
            want.lines().count(),
            text.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn golden_public() {
    let (eff, c) = build(&aml("public", "westus2"), &public());
    // AzureMachineLearning, Storage.westus2, AzureFrontDoor.Frontend all present.
    let names: Vec<&str> = eff
        .provenance
        .iter()
        .flat_map(|p| p.service_tags.iter().map(|t| t.resolved.as_str()))
        .collect();
    for t in [
        "AzureMachineLearning",
        "Storage.WestUS2",
        "AzureFrontDoor.Frontend",
        "AzureActiveDirectory",
        "AzureResourceManager",
    ] {
        assert!(
            names.contains(&t),
            "{t} missing from the public AML policy: {names:?}"
        );
    }
    check_golden("public-westus2", &golden_text(&eff, &c));
}

#[test]
fn golden_government() {
    let (eff, c) = build(&aml("government", "usgovvirginia"), &government());
    check_golden("government-usgovvirginia", &golden_text(&eff, &c));
}

#[test]
fn golden_china_has_no_front_door() {
    let (eff, c) = build(&aml("china", "chinaeast2"), &china());
    let front_door = eff
        .provenance
        .iter()
        .flat_map(|p| &p.service_tags)
        .any(|t| t.resolved.eq_ignore_ascii_case("AzureFrontDoor.Frontend"));
    assert!(!front_door, "Azure China needs no AzureFrontDoor.FrontEnd");
    check_golden("china-chinaeast2", &golden_text(&eff, &c));
}

/// The flattened LPM (one entry per address, carrying the union of covering rules)
/// gives the same verdict as scanning every rule, for random addresses in and around
/// the policy's prefixes and random protocols/ports.
#[test]
fn flattened_lpm_equals_naive_scan_on_the_public_aml_policy() {
    let (eff, c) = build(&aml("public", "westus2"), &public());
    let mut rng = StdRng::seed_from_u64(0xa11);
    let all: Vec<IpNet> = eff
        .rules
        .iter()
        .flat_map(|r| r.prefixes.iter().copied())
        .collect();
    let (mut allowed, mut denied) = (0, 0);
    for _ in 0..4000 {
        let net = all[rng.random_range(0..all.len())];
        let ip = match net {
            IpNet::V4(n) => {
                let span = u32::MAX >> n.prefix_len().min(31);
                let a = u32::from(n.network())
                    .wrapping_add(rng.random_range(0..=span))
                    .wrapping_add(if rng.random_bool(0.2) {
                        span.wrapping_add(1)
                    } else {
                        0
                    });
                IpAddr::V4(Ipv4Addr::from(a))
            }
            IpNet::V6(n) => {
                let span = u128::MAX >> n.prefix_len().min(127);
                let a = u128::from(n.network()).wrapping_add(rng.random::<u128>() & span);
                IpAddr::V6(Ipv6Addr::from(a))
            }
        };
        let proto = [Proto::TCP, Proto::TCP, Proto::UDP, Proto::ICMP][rng.random_range(0..4)];
        let port = proto.has_ports().then(|| {
            [80u16, 443, 444, 445, 5831, 8787, 18881, 29876, 44224, 1][rng.random_range(0..10)]
        });
        let got = lookup(&c, Direction::Outbound, ip, proto.0, port);
        let naive = eff
            .rules
            .iter()
            .find(|r| {
                r.direction == Direction::Outbound
                    && r.prefixes.iter().any(|n| n.contains(&ip))
                    && r.allows(proto.0, port)
            })
            .map(|r| r.id);
        let covered = eff.rules.iter().any(|r| {
            r.direction == Direction::Outbound && r.prefixes.iter().any(|n| n.contains(&ip))
        });
        match (got, naive) {
            (Some(Ok(_)), Some(_)) => allowed += 1,
            (Some(Err(())), None) if covered => denied += 1,
            (None, None) if !covered => denied += 1,
            other => panic!(
                "{ip} {proto} {port:?}: LPM {:?} vs naive {:?} (covered {covered})",
                other.0, other.1
            ),
        }
    }
    assert!(
        allowed > 200 && denied > 500,
        "generator too one-sided: {allowed} allowed, {denied} denied"
    );
}

#[test]
fn explain_names_the_catalog_row_and_tag() {
    let (eff, c) = build(&aml("public", "westus2"), &public());
    let (ip, port, proto) = parse_target("4.171.27.70:443/tcp").unwrap();
    let text = explain_text(&eff, &c, ip, port, proto, Direction::Outbound);
    assert!(text.starts_with("ALLOWED"), "{text}");
    assert!(
        text.contains("service tag AzureMachineLearning")
            && text.contains("catalog requirement")
            && text.contains("seeds/"),
        "{text}"
    );
    let (ip, port, proto) = parse_target("4.171.27.70:444").unwrap();
    assert!(
        explain_text(&eff, &c, ip, port, proto, Direction::Outbound).starts_with("DENIED (port)")
    );
    let (ip, port, proto) = parse_target("[2001:db8::1]:443/udp").unwrap();
    assert_eq!((port, proto), (Some(443), Proto::UDP));
    assert!(
        explain_text(&eff, &c, ip, port, proto, Direction::Outbound)
            .starts_with("DENIED (no_match)")
    );
    assert!(parse_target("4.171.27.70:99999").is_err());
    assert!(parse_target("nonsense").is_err());
}

fn build_err(text: &str, tags: Option<&ServiceTags>) -> String {
    let cfg = match Config::parse(text, "bad.toml") {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    match policy::build(&cfg, Catalog::embedded(), tags, &[]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_is_rejected_with_file_line_and_field() {
    let t = public();
    let cases: &[(&str, &[&str])] = &[
        (
            "[azureml]\nregion = \"westus2\"\nbogus = 1\n",
            &["bad.toml", "line 3", "bogus"],
        ),
        (
            "[azureml]\ncloud = \"mars\"\nregion = \"westus2\"\n",
            &["bad.toml", "line 2", "mars"],
        ),
        (
            "[azureml]\nregion = \"westus9\"\n",
            &["bad.toml", "line 2", "azureml.region", "westus9"],
        ),
        (
            "[azureml]\nregion = \"west us\"\n",
            &["line 2", "azureml.region"],
        ),
        (
            "[azureml]\nregion = \"westus2\"\nconditions = [\"sunny\"]\n",
            &["line 3", "sunny"],
        ),
        (
            "[azureml]\nregion = \"westus2\"\nexclude = [\"no-such-row\"]\n",
            &["line 3", "azureml.exclude", "no-such-row"],
        ),
        (
            "[[rules]]\nname = \"x\"\nservice_tags = [\"AzureMachineLearnin\"]\n",
            &[
                "bad.toml",
                "line 3",
                "rules[0].service_tags",
                "AzureMachineLearning",
            ],
        ),
        (
            "[[rules]]\nname = \"x\"\nto = [\"10.0.0.1/8\"]\n",
            &["line 3", "rules[0].to", "host bits", "10.0.0.0/8"],
        ),
        (
            "[[rules]]\nname = \"x\"\nto = [\"10.0.0.0/8\"]\nports = [0]\n",
            &["line 4", "port 0"],
        ),
        (
            "[[rules]]\nname = \"x\"\nfqdns = [\"*.\"]\n",
            &["line 3", "rules[0].fqdns"],
        ),
        (
            "[[rules]]\nname = \"x\"\nfqdns = [\"pypi..org\"]\n",
            &["line 3", "rules[0].fqdns"],
        ),
        (
            "\n[[rules]]\nname = \"x\"\n",
            &["line 3", "no destinations"],
        ),
        (
            "internal_prefixes = [\"10.0.0.0/33\"]\n",
            &["line 1", "internal_prefixes"],
        ),
    ];
    for (text, needles) in cases {
        let e = build_err(text, Some(&t));
        for n in *needles {
            assert!(e.contains(n), "error for\n{text}\nlacks {n:?}: {e}");
        }
    }
    // Tags of the wrong cloud, and no tags at all, are refused with what to do.
    let e = build_err(
        "[azureml]\ncloud = \"government\"\nregion = \"usgovvirginia\"\n",
        Some(&t),
    );
    assert!(
        e.contains("AzureGovernment") || e.contains("government"),
        "{e}"
    );
    assert!(matches!(
        policy::build(
            &config("[azureml]\nregion = \"westus2\"\n"),
            Catalog::embedded(),
            None,
            &[]
        ),
        Err(PolicyError::NoTags { .. })
    ));
}

#[test]
fn editions_and_scenarios_change_the_policy() {
    let t = public();
    let e2021 = build(
        &config("[azureml]\nregion = \"westus2\"\nedition = \"2021\"\n"),
        &t,
    )
    .0;
    let e2026 = build(
        &config("[azureml]\nregion = \"westus2\"\nedition = \"2026\"\n"),
        &t,
    )
    .0;
    let udp5831 = |e: &Effective| {
        e.rules
            .iter()
            .any(|r| r.proto == Proto::UDP && r.ports.iter().any(|p| p.contains(5831)))
    };
    assert!(
        !udp5831(&e2021) && udp5831(&e2026),
        "UDP 5831 is a 2026 requirement"
    );
    let python_only = build(
        &config("[azureml]\nregion = \"westus2\"\nscenarios = [\"python\"]\n"),
        &t,
    )
    .0;
    assert!(python_only.fqdns.iter().any(|f| f.pattern == "pypi.org"));
    assert!(
        python_only
            .rules
            .iter()
            .all(|r| !r.name.contains("azuremachinelearning"))
    );
    assert!(
        python_only
            .not_applied
            .iter()
            .any(|n| n.why.contains("scenario"))
    );
}

#[test]
fn outbound_dependencies_become_host_name_rules() {
    let dir = std::env::temp_dir().join(format!("tw-deps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    let deps = testdata("deps/aks_OutboundNetworkDependenciesEndpointsList_2022-01-01.json");
    std::fs::write(
        &cfg,
        format!(
            "outbound_dependencies = [{:?}]\n",
            deps.display().to_string()
        ),
    )
    .unwrap();
    let (_, eff) = tagwall::cli::policy::load(&cfg, None, &dir, &[]).unwrap();
    let endpoints = tagwall::deps::load(&deps).unwrap();
    assert!(!endpoints.is_empty());
    for ep in &endpoints {
        assert!(
            eff.fqdns.iter().any(|f| f.pattern == ep.domain),
            "{} missing",
            ep.domain
        );
    }
    // AKS lists NTP over UDP 123: a UDP rule, not TCP.
    assert!(
        eff.rules
            .iter()
            .any(|r| r.proto == Proto::UDP && r.ports.iter().any(|p| p.contains(123))),
        "{:?}",
        eff.rules.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    std::fs::write(&cfg, "outbound_dependencies = [\"missing.json\"]\n").unwrap();
    let e = format!(
        "{:#}",
        tagwall::cli::policy::load(&cfg, None, &dir, &[]).unwrap_err()
    );
    assert!(
        e.contains("outbound_dependencies") && e.contains("missing.json"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
