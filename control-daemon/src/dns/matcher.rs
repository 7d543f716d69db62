//! Host-name rules -> rule ids. Exact names and `*.suffix` wildcards (one or more
//! extra labels; the apex `suffix` itself is not matched unless listed on its own).
//! Matching is case-insensitive and tolerates one trailing dot. A lookup costs one
//! hash probe for the exact name plus one per label boundary, allocation-free for
//! lowercase input.

use std::{borrow::Cow, collections::HashMap};

use crate::policy::FqdnRule;

/// Compiled host-name patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    exact: HashMap<Box<str>, Vec<u32>>,
    /// `*.a.b` is stored under `a.b`.
    wildcard: HashMap<Box<str>, Vec<u32>>,
}

/// Lowercase `name` without its trailing dot; `None` if it is not a plausible host
/// name (empty, empty labels, bytes outside letters/digits/`-`/`_`).
#[must_use]
pub fn normalize(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut upper = false;
    let mut label_len = 0usize;
    for b in name.bytes() {
        match b {
            b'.' => {
                if label_len == 0 {
                    return None;
                }
                label_len = 0;
            }
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_len += 1,
            b'A'..=b'Z' => {
                upper = true;
                label_len += 1;
            }
            _ => return None,
        }
        if label_len > 63 {
            return None;
        }
    }
    if label_len == 0 {
        return None;
    }
    Some(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

fn push_id(map: &mut HashMap<Box<str>, Vec<u32>>, key: &str, id: u32) {
    let v = map.entry(key.into()).or_default();
    if let Err(i) = v.binary_search(&id) {
        v.insert(i, id);
    }
}

impl Matcher {
    /// Compile the policy's host-name rules. Patterns that are not host names
    /// (`config::check_fqdn` rejects those at load time) are skipped with a warning.
    #[must_use]
    pub fn new(rules: &[FqdnRule]) -> Self {
        Self::from_patterns(rules.iter().map(|r| (r.pattern.as_str(), r.rule_id)))
    }

    /// Compile `(pattern, rule id)` pairs.
    pub fn from_patterns<'a>(patterns: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut m = Self::default();
        for (pattern, id) in patterns {
            let (wild, body) = match pattern.strip_prefix("*.") {
                Some(b) => (true, b),
                None => (false, pattern),
            };
            let Some(body) = normalize(body) else {
                tracing::warn!(%pattern, rule_id = id, "not a host-name pattern; ignored by DNS");
                continue;
            };
            if wild {
                push_id(&mut m.wildcard, &body, id);
            } else {
                push_id(&mut m.exact, &body, id);
            }
        }
        m
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The exact names (what resolver mode can look up), sorted.
    #[must_use]
    pub fn exact_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.exact.keys().map(AsRef::as_ref).collect();
        v.sort_unstable();
        v
    }

    /// The wildcard patterns (`*.suffix`), sorted.
    #[must_use]
    pub fn wildcard_patterns(&self) -> Vec<String> {
        let mut v: Vec<String> = self.wildcard.keys().map(|s| format!("*.{s}")).collect();
        v.sort_unstable();
        v
    }

    /// The rule ids whose patterns match `name` (sorted, deduplicated; empty: none).
    #[must_use]
    pub fn matches(&self, name: &str) -> Vec<u32> {
        let Some(name) = normalize(name) else {
            return Vec::new();
        };
        let name: &str = &name;
        let mut out: Vec<u32> = Vec::new();
        if let Some(ids) = self.exact.get(name) {
            out.extend(ids);
        }
        if !self.wildcard.is_empty() {
            // Every proper suffix that starts after a dot: `a.b.c` -> `b.c`, `c`.
            for (i, _) in name.match_indices('.') {
                if let Some(ids) = self.wildcard.get(&name[i + 1..]) {
                    out.extend(ids);
                }
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    /// Does any pattern match `name`?
    #[must_use]
    pub fn is_match(&self, name: &str) -> bool {
        !self.matches(name).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn m(p: &[(&str, u32)]) -> Matcher {
        Matcher::from_patterns(p.iter().copied())
    }

    #[test]
    fn exact_and_wildcard() {
        let m = m(&[
            ("pypi.org", 1),
            ("*.anaconda.org", 2),
            ("anaconda.org", 3),
            ("*.core.windows.net", 4),
            ("*.blob.core.windows.net", 5),
            ("graph.windows.net", 6),
        ]);
        assert_eq!(m.matches("pypi.org"), [1]);
        assert_eq!(m.matches("PyPI.Org."), [1]);
        assert!(m.matches("www.pypi.org").is_empty());
        assert!(m.matches("pypi.org.evil.com").is_empty());
        assert!(m.matches("xpypi.org").is_empty());
        assert_eq!(m.matches("conda.anaconda.org"), [2]);
        assert_eq!(m.matches("a.b.conda.anaconda.org"), [2]);
        assert_eq!(m.matches("anaconda.org"), [3], "apex only via its own rule");
        assert!(m.matches("xanaconda.org").is_empty());
        assert_eq!(m.matches("foo.blob.core.windows.net"), [4, 5]);
        assert_eq!(m.matches("blob.core.windows.net"), [4]);
        assert!(m.matches("core.windows.net").is_empty());
        assert!(m.matches("windows.net").is_empty());
        assert_eq!(m.matches("graph.windows.net"), [6]);
        assert_eq!(
            m.exact_names(),
            ["anaconda.org", "graph.windows.net", "pypi.org"]
        );
        assert_eq!(
            m.wildcard_patterns(),
            [
                "*.anaconda.org",
                "*.blob.core.windows.net",
                "*.core.windows.net"
            ]
        );
    }

    #[test]
    fn odd_input_never_matches() {
        let m = m(&[("*.org", 1), ("pypi.org", 2)]);
        for bad in [
            "",
            ".",
            "..",
            ".pypi.org",
            "pypi..org",
            "pypi.org..",
            "py pi.org",
            "pypi.org\0",
            "ä.org",
            "*.org",
        ] {
            assert!(m.matches(bad).is_empty(), "{bad:?}");
        }
        assert!(m.matches(&format!("{}.org", "a".repeat(64))).is_empty());
        assert_eq!(m.matches(&format!("{}.org", "a".repeat(63))), [1]);
        assert_eq!(m.matches("x.pypi.org"), [1], "*.org covers deeper names");
        assert_eq!(m.matches("pypi.org"), [1, 2]);
    }

    #[test]
    fn duplicates_and_shared_patterns() {
        let m = m(&[("pypi.org", 3), ("PYPI.org", 1), ("pypi.org.", 3)]);
        assert_eq!(m.matches("pypi.org"), [1, 3]);
        assert!(m.exact_names() == ["pypi.org"]);
        assert!(Matcher::default().matches("pypi.org").is_empty());
        assert!(Matcher::default().is_empty());
    }

    /// The definition, label by label.
    fn reference(patterns: &[(String, u32)], name: &str) -> Vec<u32> {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let labels: Vec<&str> = name.split('.').collect();
        if labels.iter().any(|l| l.is_empty()) {
            return vec![];
        }
        let mut out = vec![];
        for (p, id) in patterns {
            let p = p.to_ascii_lowercase();
            let hit = match p.strip_prefix("*.") {
                Some(suffix) => {
                    let sl: Vec<&str> = suffix.split('.').collect();
                    labels.len() > sl.len() && labels[labels.len() - sl.len()..] == sl[..]
                }
                None => p == name,
            };
            if hit {
                out.push(*id);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn label(rng: &mut StdRng) -> String {
        // A small alphabet so random names collide with random patterns often.
        const ALPHA: &[u8] = b"abAB-_1";
        let n = rng.random_range(1..=3);
        (0..n)
            .map(|_| ALPHA[rng.random_range(0..ALPHA.len())] as char)
            .collect()
    }

    fn name(rng: &mut StdRng, labels: usize) -> String {
        (0..labels)
            .map(|_| label(rng))
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn agrees_with_the_label_by_label_definition() {
        let mut rng = StdRng::seed_from_u64(0x0d15_ea5e);
        for round in 0..300 {
            let patterns: Vec<(String, u32)> = (0..rng.random_range(1..12))
                .map(|i| {
                    let n = rng.random_range(1..=3);
                    let body = name(&mut rng, n);
                    let p = if rng.random_bool(0.5) {
                        format!("*.{body}")
                    } else {
                        body
                    };
                    (p, i)
                })
                .collect();
            let m = Matcher::from_patterns(patterns.iter().map(|(p, i)| (p.as_str(), *i)));
            for _ in 0..200 {
                // Names built from the patterns (prefix labels added) and random ones.
                let n = if rng.random_bool(0.5) {
                    let (p, _) = &patterns[rng.random_range(0..patterns.len())];
                    let body = p.strip_prefix("*.").unwrap_or(p);
                    let extra = rng.random_range(0..3);
                    if extra == 0 {
                        body.to_owned()
                    } else {
                        format!("{}.{body}", name(&mut rng, extra))
                    }
                } else {
                    let n = rng.random_range(1..5);
                    name(&mut rng, n)
                };
                let n = if rng.random_bool(0.3) {
                    n.to_ascii_uppercase()
                } else {
                    n
                };
                let n = if rng.random_bool(0.3) {
                    format!("{n}.")
                } else {
                    n
                };
                assert_eq!(
                    m.matches(&n),
                    reference(&patterns, &n),
                    "round {round}: {n:?} against {patterns:?}"
                );
            }
        }
    }
}
