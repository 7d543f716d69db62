//! `tagwall tags ...`: validate, store, fetch, list and show Azure Service Tags, and list an
//! outbound-network-dependencies response. See `docs/servicetags.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::cli::Format;
use crate::deps;
use crate::servicetags::fetch::{self, FetchRequest};
use crate::servicetags::{ServiceTags, store};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Validate a ServiceTags_<Cloud>_<date>.json file and store it.
    Update(UpdateArgs),
    /// Download the current service tags from Azure Resource Manager, validate and store them.
    Fetch(FetchArgs),
    /// List the tags of a file or of the newest stored file.
    List(ListArgs),
    /// Show one tag (case-insensitive, docs aliases allowed) and its prefixes.
    Show(ShowArgs),
    /// List the endpoints of an outbound-network-dependencies API response.
    Deps(DepsArgs),
}

/// Store directory option shared by the verbs.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArg {
    /// Service tags store directory.
    #[arg(long = "store", env = "TAGWALL_TAGS_DIR", default_value = store::DEFAULT_DIR)]
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// ServiceTags JSON file (downloadable-file or API schema).
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// Subscription ID the request is made in (any subscription of the cloud).
    #[arg(long)]
    pub subscription: String,
    /// Any region of the cloud, e.g. westus2 (the answer covers all regions).
    #[arg(long)]
    pub location: String,
    /// ARM bearer token; `az account get-access-token --resource https://management.azure.com`.
    #[arg(long, env = "AZURE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Azure Resource Manager endpoint.
    #[arg(long, default_value = fetch::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Microsoft.Network API version.
    #[arg(long, default_value = fetch::DEFAULT_API_VERSION)]
    pub api_version: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// Where `list`/`show` read tags from.
#[derive(clap::Args, Debug, Clone)]
pub struct Source {
    /// Read this file instead of the store.
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Cloud (Public, AzureGovernment, China); needed when the store holds several.
    #[arg(long)]
    pub cloud: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub source: Source,
    /// Only tags of this region (e.g. westus2), case-insensitive.
    #[arg(long)]
    pub region: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Tag name, e.g. Storage.westus2 or Keyvault.westus2.
    pub name: String,
    #[command(flatten)]
    pub source: Source,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct DepsArgs {
    /// Response body, its value array, or an azure-rest-api-specs example file.
    pub file: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// Runs a `tags` verb, printing to stdout.
///
/// # Errors
/// Invalid input, unknown tags, store or network failures; the message says what to do.
pub fn run(cmd: &Cmd) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run_to(cmd, &mut out) {
        // `tagwall tags list | head`: the reader went away, which is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// [`run`] writing to `out`.
///
/// # Errors
/// As [`run`].
pub fn run_to(cmd: &Cmd, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        Cmd::Update(a) => update(a, out),
        Cmd::Fetch(a) => fetch_cmd(a, out),
        Cmd::List(a) => list(a, out),
        Cmd::Show(a) => show(a, out),
        Cmd::Deps(a) => deps_cmd(a, out),
    }
}

fn report_stored(out: &mut dyn Write, path: &Path, tags: &ServiceTags) -> anyhow::Result<()> {
    let (v4, v6) = tags.total_prefixes();
    writeln!(out, "cloud:        {}", tags.cloud)?;
    writeln!(out, "changeNumber: {}", tags.change_number)?;
    writeln!(out, "tags:         {}", tags.tags.len())?;
    writeln!(out, "prefixes:     {v4} IPv4, {v6} IPv6")?;
    writeln!(out, "stored:       {}", path.display())?;
    Ok(())
}

fn update(a: &UpdateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let (path, tags) = store::save(&a.store.dir, &bytes, &a.file.display().to_string())?;
    report_stored(out, &path, &tags)
}

fn fetch_cmd(a: &FetchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let req = FetchRequest {
        endpoint: a.endpoint.clone(),
        subscription: a.subscription.clone(),
        location: a.location.clone(),
        token: a.token.clone().unwrap_or_default(),
        api_version: a.api_version.clone(),
    };
    let bytes = fetch::fetch(&req)?;
    let origin = req.url()?;
    let (path, tags) = store::save(&a.store.dir, &bytes, &origin)?;
    report_stored(out, &path, &tags)
}

/// Loads the tags `list`/`show` work on.
///
/// # Errors
/// Unreadable/invalid file, cloud mismatch, empty or ambiguous store.
pub fn load_source(src: &Source) -> anyhow::Result<ServiceTags> {
    if let Some(file) = &src.file {
        let tags = ServiceTags::load(file)?;
        if let Some(c) = &src.cloud
            && !c.eq_ignore_ascii_case(&tags.cloud)
        {
            bail!("{} is for cloud {}, not {c}", file.display(), tags.cloud);
        }
        return Ok(tags);
    }
    let dir = &src.store.dir;
    let cloud = match &src.cloud {
        Some(c) => c.clone(),
        None => {
            let mut clouds: Vec<String> =
                store::list(dir)?.into_iter().map(|(c, _, _)| c).collect();
            clouds.dedup();
            match clouds.as_slice() {
                [] => bail!(
                    "no service tags stored in {}; run `tagwall tags update --file <ServiceTags.json>` \
                     or `tagwall tags fetch`, or pass --file",
                    dir.display()
                ),
                [one] => one.clone(),
                many => bail!(
                    "{} holds several clouds ({}); choose one with --cloud",
                    dir.display(),
                    many.join(", ")
                ),
            }
        }
    };
    match store::load_latest(dir, &cloud)? {
        Some((_, tags)) => Ok(tags),
        None => bail!(
            "no service tags for cloud {cloud} stored in {}; run `tagwall tags update --file ...`",
            dir.display()
        ),
    }
}

fn features(f: Option<&Vec<String>>) -> String {
    f.map_or_else(
        || "-".to_string(),
        |v| {
            if v.is_empty() {
                "-".into()
            } else {
                v.join(",")
            }
        },
    )
}

fn list(a: &ListArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let tags = load_source(&a.source)?;
    let region = a.region.as_ref().map(|r| r.to_ascii_lowercase());
    if let Some(r) = &region
        && !tags.regions().contains(r)
    {
        bail!(
            "region {r} does not occur in {} (cloud {}); its regions are: {}",
            tags.origin(),
            tags.cloud,
            tags.regions().into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let selected: Vec<_> = tags
        .tags
        .iter()
        .filter(|t| region.is_none() || t.region == region)
        .collect();
    match a.format {
        Format::Json => {
            let rows: Vec<_> = selected
                .iter()
                .map(|t| {
                    let (v4, v6) = t.prefix_counts();
                    json!({"name": t.name, "region": t.region, "systemService": t.system_service,
                           "changeNumber": t.change_number, "ipv4": v4, "ipv6": v6,
                           "networkFeatures": t.network_features})
                })
                .collect();
            let doc = json!({"cloud": tags.cloud, "changeNumber": tags.change_number,
                             "origin": tags.origin(), "tags": rows});
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Format::Table => {
            writeln!(
                out,
                "# {} ({}); {} of {} tags",
                tags.summary(),
                tags.origin(),
                selected.len(),
                tags.tags.len()
            )?;
            let w = selected
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            writeln!(
                out,
                "{:<w$}  {:<20}  {:>5}  {:>5}  FEATURES",
                "NAME", "REGION", "IPV4", "IPV6"
            )?;
            for t in selected {
                let (v4, v6) = t.prefix_counts();
                writeln!(
                    out,
                    "{:<w$}  {:<20}  {v4:>5}  {v6:>5}  {}",
                    t.name,
                    t.region.as_deref().unwrap_or("-"),
                    features(t.network_features.as_ref())
                )?;
            }
        }
    }
    Ok(())
}

fn show(a: &ShowArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let tags = load_source(&a.source)?;
    let r = tags.resolve(&a.name)?;
    let t = r.tag;
    match a.format {
        Format::Json => {
            let doc = json!({"requested": r.requested, "resolvedName": r.resolved_name,
                             "alias": r.alias, "cloud": tags.cloud,
                             "fileChangeNumber": tags.change_number, "origin": tags.origin(),
                             "tag": t});
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        Format::Table => {
            writeln!(out, "name:           {}", t.name)?;
            if let Some(al) = r.alias {
                writeln!(
                    out,
                    "alias:          {} -> {} ({}); asked for {:?}",
                    al.doc_name, al.file_name, al.why, r.requested
                )?;
            } else if r.requested != t.name {
                writeln!(
                    out,
                    "asked for:      {:?} (names are case-insensitive)",
                    r.requested
                )?;
            }
            let (v4, v6) = t.prefix_counts();
            writeln!(
                out,
                "cloud:          {} (changeNumber {})",
                tags.cloud, tags.change_number
            )?;
            writeln!(
                out,
                "region:         {}",
                t.region.as_deref().unwrap_or("- (global)")
            )?;
            writeln!(
                out,
                "systemService:  {}",
                t.system_service.as_deref().unwrap_or("-")
            )?;
            writeln!(out, "changeNumber:   {}", t.change_number)?;
            writeln!(
                out,
                "features:       {}",
                features(t.network_features.as_ref())
            )?;
            writeln!(out, "prefixes:       {v4} IPv4, {v6} IPv6")?;
            for p in &t.prefixes {
                writeln!(out, "  {p}")?;
            }
        }
    }
    Ok(())
}

fn deps_cmd(a: &DepsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let doc = deps::load_doc(&a.file)?;
    match a.format {
        Format::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&doc.endpoints)?)?;
        }
        Format::Table => {
            writeln!(
                out,
                "# {}: {} entries, {} endpoints ({} after merging){}",
                a.file.display(),
                doc.entries,
                doc.raw_endpoints,
                doc.endpoints.len(),
                if doc.next_link.is_some() {
                    "; FIRST PAGE ONLY (nextLink set)"
                } else {
                    ""
                }
            )?;
            let wc = doc
                .endpoints
                .iter()
                .map(|e| e.category.len())
                .max()
                .unwrap_or(8)
                .max(8);
            let wd = doc
                .endpoints
                .iter()
                .map(|e| e.domain.len())
                .max()
                .unwrap_or(6)
                .max(6);
            writeln!(
                out,
                "{:<wc$}  {:<wd$}  {:<14}  PROTOCOLS",
                "CATEGORY", "DOMAIN", "PORTS"
            )?;
            for e in &doc.endpoints {
                let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
                writeln!(
                    out,
                    "{:<wc$}  {:<wd$}  {:<14}  {}",
                    e.category,
                    e.domain,
                    ports.join(","),
                    if e.protocols.is_empty() {
                        "-".into()
                    } else {
                        e.protocols.join(",")
                    }
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        cmd: Cmd,
    }

    fn run_args(args: &[&str]) -> anyhow::Result<String> {
        let t = T::try_parse_from(std::iter::once("tags").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        run_to(&t.cmd, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tagwall-cli-tags-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const FILE: &str = r#"{"changeNumber": 5, "cloud": "China", "values": [
      {"name": "AzureKeyVault.ChinaEast2", "id": "AzureKeyVault.ChinaEast2", "properties": {"changeNumber": 2,
       "region": "chinaeast2", "regionId": 1, "platform": "Azure", "systemService": "AzureKeyVault",
       "addressPrefixes": ["40.73.0.0/24", "2406:e500:5500::/48"], "networkFeatures": null}},
      {"name": "AzureCloud", "id": "AzureCloud", "properties": {"changeNumber": 9, "region": "",
       "regionId": 0, "platform": "Azure", "systemService": "", "addressPrefixes": ["42.159.0.0/16"],
       "networkFeatures": ["API", "NSG"]}}]}"#;

    #[test]
    fn update_list_show_via_store() {
        let dir = temp_dir("store");
        let file = dir.join("in.json");
        std::fs::write(&file, FILE).unwrap();
        let store = dir.join("store");
        let s = store.to_str().unwrap();
        let o = run_args(&["update", "--file", file.to_str().unwrap(), "--store", s]).unwrap();
        assert!(o.contains("cloud:        China"), "{o}");
        assert!(o.contains("prefixes:     2 IPv4, 1 IPv6"), "{o}");
        assert!(store.join("servicetags-china-5.json").is_file());

        let o = run_args(&["list", "--store", s, "--region", "ChinaEast2"]).unwrap();
        assert!(o.contains("AzureKeyVault.ChinaEast2"), "{o}");
        assert!(!o.contains("AzureCloud "), "{o}");
        let o = run_args(&["list", "--store", s, "--format", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v["tags"].as_array().unwrap().len(), 2);
        assert!(run_args(&["list", "--store", s, "--region", "westus2"]).is_err());

        let o = run_args(&[
            "show",
            "keyvault.chinaeast2",
            "--store",
            s,
            "--cloud",
            "china",
        ])
        .unwrap();
        assert!(
            o.contains("alias:          Keyvault.* -> AzureKeyVault.*"),
            "{o}"
        );
        assert!(o.contains("  2406:e500:5500::/48"), "{o}");
        let o = run_args(&["show", "azurecloud", "--store", s, "--format", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v["resolvedName"], "AzureCloud");
        assert_eq!(v["alias"], serde_json::Value::Null);
        assert_eq!(v["tag"]["prefixes"][0], "42.159.0.0/16");
        let e = run_args(&["show", "AzureClod", "--store", s])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean AzureCloud"), "{e}");
        let e = run_args(&["show", "AzureCloud", "--store", s, "--cloud", "Public"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no service tags for cloud Public"), "{e}");
        let e = run_args(&[
            "list",
            "--file",
            file.to_str().unwrap(),
            "--cloud",
            "Public",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("not Public"), "{e}");

        // An invalid file stores nothing.
        let bad = dir.join("bad.json");
        std::fs::write(&bad, FILE.replace("40.73.0.0/24", "40.73.0.1/24")).unwrap();
        let e = run_args(&["update", "--file", bad.to_str().unwrap(), "--store", s]).unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
        assert_eq!(store::list(&store).unwrap().len(), 1);
        let e = run_args(&["list", "--store", dir.join("none").to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("no service tags stored"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deps_table_and_json() {
        let dir = temp_dir("deps");
        let f = dir.join("d.json");
        std::fs::write(
            &f,
            r#"{"value":[{"category":"time-sync","endpoints":[{"domainName":"ntp.ubuntu.com",
                "endpointDetails":[{"port":123,"protocol":"UDP"}]}]}]}"#,
        )
        .unwrap();
        let o = run_args(&["deps", f.to_str().unwrap()]).unwrap();
        assert!(
            o.lines().any(|l| l.starts_with("time-sync")
                && l.contains("ntp.ubuntu.com")
                && l.contains("123")
                && l.ends_with("UDP")),
            "{o}"
        );
        let o = run_args(&["deps", f.to_str().unwrap(), "--format", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&o).unwrap();
        assert_eq!(v[0]["ports"][0], 123);
        assert_eq!(v[0]["protocols"][0], "UDP");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fetch_without_token_explains() {
        let dir = temp_dir("fetch");
        // AZURE_TOKEN may be set in the environment; an empty --token still wins.
        let e = run_args(&[
            "fetch",
            "--subscription",
            "s",
            "--location",
            "westus",
            "--token",
            "",
            "--endpoint",
            "http://127.0.0.1:9",
            "--store",
            dir.to_str().unwrap(),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("az account get-access-token"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
