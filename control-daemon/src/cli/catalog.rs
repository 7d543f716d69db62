//! `tagwall catalog`: list the built-in requirements catalog for one cloud and edition.
//!
//! The table is for people (one line per requirement, at most [`TABLE_WIDTH`] columns,
//! long targets and condition lists shortened with `…`); `--format json` is the stable,
//! complete form (schema [`JSON_SCHEMA`], documented in docs/catalog.md).

use std::{fmt::Write as _, io::Write};

use serde::Serialize;

use crate::{
    catalog::{
        Catalog, Cloud, Condition, Edition, Enforcement, Requirement, Scenario, Source, Target,
    },
    cli::Format,
    rules::{Direction, PortRange, Proto},
};

/// The `schema` value of the JSON output.
pub const JSON_SCHEMA: &str = "tagwall.catalog/v1";
/// Maximum width of a table line, in characters.
pub const TABLE_WIDTH: usize = 120;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Azure cloud: public, government or china; the Azure cloud names (as in
    /// `az cloud list`) are accepted too.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Cloud::Public)]
    pub cloud: Cloud,
    /// Catalog edition: 2021 (the 2021 documents) or 2026 (2021 plus later changes).
    #[arg(long, value_enum, default_value_t = Edition::LATEST)]
    pub edition: Edition,
    /// Only requirements of this scenario (repeatable; default: all).
    #[arg(long = "scenario", value_enum, value_name = "SCENARIO")]
    pub scenarios: Vec<Scenario>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// The JSON document (`tagwall.catalog/v1`).
#[derive(Serialize)]
struct JsonCatalog<'a> {
    schema: &'static str,
    cloud: Cloud,
    edition: Edition,
    requirements: Vec<JsonRequirement<'a>>,
}

#[derive(Serialize)]
struct JsonRequirement<'a> {
    id: &'a str,
    edition: Edition,
    replaces: &'a [String],
    scenario: Scenario,
    direction: Direction,
    clouds: &'a [Cloud],
    target: &'a Target,
    protocol: Proto,
    ports: &'a [PortRange],
    conditions: &'a [Condition],
    enforcement: Enforcement,
    source: &'a Source,
    description: &'a str,
}

impl<'a> From<&'a Requirement> for JsonRequirement<'a> {
    fn from(r: &'a Requirement) -> Self {
        Self {
            id: &r.id,
            edition: r.edition,
            replaces: &r.replaces,
            scenario: r.scenario,
            direction: r.direction,
            clouds: &r.clouds,
            target: &r.target,
            protocol: r.proto,
            ports: &r.ports,
            conditions: &r.conditions,
            enforcement: r.enforcement(),
            source: &r.source,
            description: &r.description,
        }
    }
}

/// The selected requirements, in catalog order.
fn selection<'c>(catalog: &'c Catalog, args: &Args) -> Vec<&'c Requirement> {
    catalog
        .select(args.cloud, args.edition)
        .into_iter()
        .filter(|r| args.scenarios.is_empty() || args.scenarios.contains(&r.scenario))
        .collect()
}

/// Render the listing `args` asks for from `catalog`.
///
/// # Errors
/// Only if JSON serialization fails (it does not for these types).
pub fn render(catalog: &Catalog, args: &Args) -> anyhow::Result<String> {
    let reqs = selection(catalog, args);
    match args.format {
        Format::Json => {
            let doc = JsonCatalog {
                schema: JSON_SCHEMA,
                cloud: args.cloud,
                edition: args.edition,
                requirements: reqs.into_iter().map(JsonRequirement::from).collect(),
            };
            let mut s = serde_json::to_string_pretty(&doc)?;
            s.push('\n');
            Ok(s)
        }
        Format::Table => Ok(table(&reqs, args)),
    }
}

/// # Errors
/// If stdout cannot be written.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let out = render(Catalog::embedded(), args)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn join<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// `s` cut to `width` characters, the last one `…` if anything was cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One line per requirement, grouped under a line per scenario:
/// `ID DIR PROTO PORTS ENF TARGET CONDITIONS`, at most [`TABLE_WIDTH`] characters.
fn table(reqs: &[&Requirement], args: &Args) -> String {
    const HEAD: [&str; 7] = ["ID", "DIR", "PROTO", "PORTS", "ENF", "TARGET", "CONDITIONS"];
    let cells = |r: &Requirement| -> [String; 7] {
        [
            r.id.clone(),
            match r.direction {
                Direction::Outbound => "out".to_owned(),
                Direction::Inbound => "in".to_owned(),
                Direction::Local => "local".to_owned(),
            },
            r.proto.to_string(),
            join(&r.ports, ","),
            match r.enforcement() {
                Enforcement::Network => "net".to_owned(),
                Enforcement::HostLevel { .. } => "host".to_owned(),
            },
            r.target.to_string(),
            if r.conditions.is_empty() {
                "-".to_owned()
            } else {
                join(&r.conditions, ",")
            },
        ]
    };
    let rows: Vec<(Scenario, [String; 7])> = reqs.iter().map(|r| (r.scenario, cells(r))).collect();
    let natural = |i: usize| {
        rows.iter()
            .map(|(_, c)| c[i].chars().count())
            .chain([HEAD[i].len()])
            .max()
            .unwrap_or(0)
    };
    // ID, DIR, PROTO, PORTS, ENF at natural width (ports at most 16); the target gets
    // what is left after 20 for the conditions, which take the rest of the line.
    let mut widths: Vec<usize> = (0..5).map(natural).collect();
    widths[3] = widths[3].min(16);
    let fixed: usize = widths.iter().map(|w| w + 1).sum();
    widths.push(
        natural(5)
            .min(TABLE_WIDTH.saturating_sub(fixed + 1 + 20))
            .max(12),
    );
    let cond_w = TABLE_WIDTH.saturating_sub(fixed + widths[5] + 1).max(1);

    let line = |cells: [&str; 7]| {
        let mut l = String::from("  ");
        for (cell, w) in cells.iter().zip(&widths) {
            let cell = fit(cell, *w);
            let pad = w.saturating_sub(cell.chars().count()) + 1;
            l.push_str(&cell);
            l.push_str(&" ".repeat(pad));
        }
        l.push_str(&fit(cells[6], cond_w.saturating_sub(2)));
        let mut l = l.trim_end().to_owned();
        l.push('\n');
        l
    };
    let mut out = line(HEAD);
    for scenario in Scenario::ALL {
        let group: Vec<&[String; 7]> = rows
            .iter()
            .filter(|(s, _)| s == scenario)
            .map(|(_, c)| c)
            .collect();
        if group.is_empty() {
            continue;
        }
        out.push_str(&fit(
            &format!("{scenario}: {}", scenario.about()),
            TABLE_WIDTH,
        ));
        out.push('\n');
        for c in group {
            out.push_str(&line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6]]));
        }
    }
    let host_level = reqs
        .iter()
        .filter(|r| matches!(r.enforcement(), Enforcement::HostLevel { .. }))
        .count();
    let _ = writeln!(
        out,
        "{} requirements (cloud {}, edition {}); --format json gives every field",
        reqs.len(),
        args.cloud,
        args.edition
    );
    if host_level > 0 {
        let note = format!(
            "ENF host ({host_level}): URL rows; {}",
            crate::catalog::URL_HOST_LEVEL_REASON
        );
        out.push_str(&wrap(&note, TABLE_WIDTH));
    }
    out
}

/// `text` broken at spaces into lines of at most `width` characters (longer words
/// stay whole), each ending in a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(format: Format) -> Args {
        Args {
            cloud: Cloud::Public,
            edition: Edition::E2026,
            scenarios: Vec::new(),
            format,
        }
    }

    #[test]
    fn table_lines_fit_and_cover_the_selection() {
        for cloud in Cloud::ALL {
            for edition in Edition::ALL {
                let a = Args {
                    cloud,
                    edition,
                    ..args(Format::Table)
                };
                let out = render(Catalog::embedded(), &a).expect("render");
                let sel = Catalog::embedded().select(cloud, edition);
                let lines: Vec<&str> = out.lines().collect();
                for l in &lines {
                    assert!(l.chars().count() <= TABLE_WIDTH, "too wide: {l}");
                }
                assert!(lines[0].starts_with("  ID "));
                // Requirement lines are indented, scenario lines are not.
                let rows: Vec<&str> = lines[1..]
                    .iter()
                    .copied()
                    .filter(|l| l.starts_with("  "))
                    .collect();
                assert_eq!(rows.len(), sel.len());
                for r in &sel {
                    let (i, _) = lines
                        .iter()
                        .enumerate()
                        .find(|(_, l)| l.starts_with(&format!("  {} ", r.id)))
                        .unwrap_or_else(|| panic!("{} not listed", r.id));
                    // Its scenario line is the nearest unindented line above it.
                    let head = lines[..i].iter().rev().find(|l| !l.starts_with("  "));
                    assert!(
                        head.is_some_and(|h| h.starts_with(&format!("{}: ", r.scenario))),
                        "{}",
                        r.id
                    );
                }
                assert!(out.contains(&format!("{} requirements (cloud {cloud}", sel.len())));
            }
        }
    }

    #[test]
    fn scenario_filter_applies() {
        let a = Args {
            scenarios: vec![Scenario::Python, Scenario::R],
            ..args(Format::Json)
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(Catalog::embedded(), &a).expect("render")).expect("json");
        let reqs = v["requirements"].as_array().expect("array");
        assert!(!reqs.is_empty());
        assert!(
            reqs.iter()
                .all(|r| r["scenario"] == "python" || r["scenario"] == "r")
        );
        assert!(reqs.iter().any(|r| r["scenario"] == "r"));
    }

    #[test]
    fn fit_marks_cuts_and_wrap_breaks_at_spaces() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(wrap("aa bb cc", 5), "aa bb\ncc\n");
        assert_eq!(wrap("abcdefg h", 3), "abcdefg\nh\n");
    }
}
