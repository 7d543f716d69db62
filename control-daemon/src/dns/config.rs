//! The `[dns]` section of the policy/config file.
//!
//! ```toml
//! [dns]
//! mode = "auto"                  # auto | off | resolver | proxy | both
//! listen = ["10.0.0.1:53"]       # proxy: where to serve UDP and TCP (port default 53)
//! clients = ["10.0.0.0/16"]      # proxy: who may query (others: REFUSED)
//! upstreams = ["168.63.129.16:53"] # where to forward/resolve (default: Azure DNS)
//! min_ttl = 30                   # seconds; TTLs below are raised (table only)
//! max_ttl = 3600                 # seconds; TTLs above are lowered (table and answers)
//! grace = 60                     # seconds an address stays allowed after expiry
//! max_stale = 3600               # seconds past expiry the last good answer is kept
//!                                # while its refreshes fail
//! max_ips_per_name = 64          # oldest addresses of a name evicted beyond this
//! unmatched = "answer"           # proxy, names matching no rule: answer | refuse
//! rate_limit_qps = 200           # proxy, per client address; 0 = unlimited
//! upstream_timeout_ms = 2000     # per upstream attempt
//! ```
//!
//! `mode = "auto"` (the default) runs the resolver when the policy has host-name rules
//! and nothing otherwise; the proxy is never started implicitly, because it needs
//! `listen` and `clients`, which only the operator knows.

use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::table::TableConfig;
use crate::config::{ConfigError, Origin};

/// Azure's platform DNS (the VNet default resolver).
pub const AZURE_DNS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)), 53);

/// Which DNS components run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsMode {
    /// `resolver` when the policy has host-name rules, `off` otherwise.
    #[default]
    Auto,
    Off,
    /// Resolve every exact host-name rule, re-resolve on TTL expiry.
    Resolver,
    /// Serve DNS to clients, allow the addresses of matching answers before answering.
    Proxy,
    /// Resolver and proxy.
    Both,
}

impl DnsMode {
    /// `Auto` decided: never returns `Auto`.
    #[must_use]
    pub fn effective(self, has_fqdn_rules: bool) -> Self {
        match self {
            Self::Auto if has_fqdn_rules => Self::Resolver,
            Self::Auto => Self::Off,
            m => m,
        }
    }

    #[must_use]
    pub fn resolver(self) -> bool {
        matches!(self, Self::Resolver | Self::Both)
    }

    #[must_use]
    pub fn proxy(self) -> bool {
        matches!(self, Self::Proxy | Self::Both)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::Resolver => "resolver",
            Self::Proxy => "proxy",
            Self::Both => "both",
        }
    }
}

/// What the proxy does with queries whose name matches no rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Forward and answer normally (no addresses are allowed for them).
    #[default]
    Answer,
    /// Answer REFUSED without forwarding.
    Refuse,
}

/// Internal limits that are not config keys (tests shorten them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// How often expired addresses are swept and revoked.
    pub sweep_interval: Duration,
    /// How often the state file is rewritten.
    pub state_interval: Duration,
    /// UDP queries being served at once; more are dropped (counted `busy`).
    pub max_inflight: usize,
    /// TCP connections at once; more are closed (counted `busy`).
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle: Duration,
    /// Resolver: how long a negative answer (no such name/record) stands before the
    /// next lookup (clamped to min_ttl..max_ttl).
    pub negative_ttl: Duration,
    /// Resolver: longest retry interval after failures (doubling from 1 s).
    pub max_retry: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            sweep_interval: Duration::from_secs(1),
            state_interval: Duration::from_secs(5),
            max_inflight: 1024,
            max_tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(60),
            max_retry: Duration::from_secs(30),
        }
    }
}

/// Byte ranges of the keys as written (for error lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spans {
    mode: Option<Range<usize>>,
    listen: Option<Range<usize>>,
    clients: Option<Range<usize>>,
    upstreams: Option<Range<usize>>,
    min_ttl: Option<Range<usize>>,
    max_ttl: Option<Range<usize>>,
    max_ips_per_name: Option<Range<usize>>,
    upstream_timeout_ms: Option<Range<usize>>,
}

/// A problem found while reading the section: field, where, what.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    field: &'static str,
    span: Option<Range<usize>>,
    message: String,
}

/// The `[dns]` section, validated (see the module documentation for the keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    pub mode: DnsMode,
    pub listen: Vec<SocketAddr>,
    pub clients: Vec<IpNet>,
    pub upstreams: Vec<SocketAddr>,
    /// Seconds.
    pub min_ttl: u32,
    /// Seconds.
    pub max_ttl: u32,
    /// Seconds.
    pub grace: u32,
    /// Seconds.
    pub max_stale: u32,
    pub max_ips_per_name: u32,
    pub unmatched: Unmatched,
    /// Per client address; 0: unlimited.
    pub rate_limit_qps: u32,
    pub upstream_timeout_ms: u32,
    #[serde(skip)]
    pub tuning: Tuning,
    #[serde(skip)]
    spans: Spans,
    /// Values that did not parse (reported by `validate`/`check`).
    #[serde(skip)]
    problems: Vec<Problem>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            mode: DnsMode::Auto,
            listen: Vec::new(),
            clients: Vec::new(),
            upstreams: vec![AZURE_DNS],
            // Raising short TTLs bounds the re-resolution rate and keeps an address
            // allowed at least this long after an answer.
            min_ttl: 30,
            // A name that is no longer asked for stops being allowed within the hour.
            max_ttl: 3600,
            // Covers the client's own resolution-to-connect delay and clock skew.
            grace: 60,
            // An hour of upstream outage does not cut clients off names they had.
            max_stale: 3600,
            // CDNs rotate addresses; a name's set stays bounded.
            max_ips_per_name: 64,
            unmatched: Unmatched::Answer,
            rate_limit_qps: 200,
            upstream_timeout_ms: 2000,
            tuning: Tuning::default(),
            spans: Spans::default(),
            problems: Vec::new(),
        }
    }
}

/// The `[dns]` section is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid [dns] config: field `dns.{field}`: {message}")]
pub struct DnsConfigError {
    pub field: String,
    pub message: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawDns {
    mode: Option<Spanned<DnsMode>>,
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    clients: Option<Spanned<Vec<Spanned<String>>>>,
    upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    min_ttl: Option<Spanned<u32>>,
    max_ttl: Option<Spanned<u32>>,
    grace: Option<u32>,
    max_stale: Option<u32>,
    max_ips_per_name: Option<Spanned<u32>>,
    unmatched: Option<Unmatched>,
    rate_limit_qps: Option<u32>,
    upstream_timeout_ms: Option<Spanned<u32>>,
}

/// `IP:port`, `[IPv6]:port`, or a bare IP (port 53).
///
/// # Errors
/// What is wrong.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("{s:?}: port 0"));
        }
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not an address: give an IP (port 53) or IP:port, IPv6 as [addr]:port"
    ))
}

/// A prefix (`10.0.0.0/16`) or a single address; host bits must be clear.
///
/// # Errors
/// What is wrong.
pub fn parse_client(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{s:?} is not a prefix (10.0.0.0/16) or an address")),
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl<'de> Deserialize<'de> for DnsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawDns::deserialize(d)?;
        Ok(Self::from_raw(raw))
    }
}

impl DnsConfig {
    fn from_raw(raw: RawDns) -> Self {
        let mut c = Self::default();
        let mut problems = Vec::new();
        let mut list = |field: &'static str,
                        v: Option<Spanned<Vec<Spanned<String>>>>,
                        spans: &mut Option<Range<usize>>|
         -> Option<Vec<Spanned<String>>> {
            let v = v?;
            *spans = span(&v);
            let items = v.into_inner();
            if items.is_empty() && field == "upstreams" {
                problems.push(Problem {
                    field,
                    span: spans.clone(),
                    message: "empty; omit it for the default 168.63.129.16:53 (Azure DNS)".into(),
                });
            }
            Some(items)
        };
        let listen = list("listen", raw.listen, &mut c.spans.listen);
        let clients = list("clients", raw.clients, &mut c.spans.clients);
        let upstreams = list("upstreams", raw.upstreams, &mut c.spans.upstreams);
        if let Some(v) = listen {
            c.listen = v
                .iter()
                .filter_map(|s| match parse_socket_addr(s.get_ref()) {
                    Ok(a) => Some(a),
                    Err(message) => {
                        problems.push(Problem {
                            field: "listen",
                            span: span(s),
                            message,
                        });
                        None
                    }
                })
                .collect();
            for (i, a) in c.listen.iter().enumerate() {
                if c.listen[..i].contains(a) {
                    problems.push(Problem {
                        field: "listen",
                        span: span(&v[i]),
                        message: format!("{a} is listed twice"),
                    });
                }
            }
        }
        if let Some(v) = clients {
            c.clients = v
                .iter()
                .filter_map(|s| match parse_client(s.get_ref()) {
                    Ok(n) => Some(n),
                    Err(message) => {
                        problems.push(Problem {
                            field: "clients",
                            span: span(s),
                            message,
                        });
                        None
                    }
                })
                .collect();
        }
        if let Some(v) = upstreams {
            c.upstreams = v
                .iter()
                .filter_map(|s| match parse_socket_addr(s.get_ref()) {
                    Ok(a) => Some(a),
                    Err(message) => {
                        problems.push(Problem {
                            field: "upstreams",
                            span: span(s),
                            message,
                        });
                        None
                    }
                })
                .collect();
        }
        if let Some(m) = raw.mode {
            c.spans.mode = span(&m);
            c.mode = m.into_inner();
        }
        if let Some(v) = raw.min_ttl {
            c.spans.min_ttl = span(&v);
            c.min_ttl = v.into_inner();
        }
        if let Some(v) = raw.max_ttl {
            c.spans.max_ttl = span(&v);
            c.max_ttl = v.into_inner();
        }
        if let Some(v) = raw.max_ips_per_name {
            c.spans.max_ips_per_name = span(&v);
            c.max_ips_per_name = v.into_inner();
        }
        if let Some(v) = raw.upstream_timeout_ms {
            c.spans.upstream_timeout_ms = span(&v);
            c.upstream_timeout_ms = v.into_inner();
        }
        c.grace = raw.grace.unwrap_or(c.grace);
        c.max_stale = raw.max_stale.unwrap_or(c.max_stale);
        c.unmatched = raw.unmatched.unwrap_or(c.unmatched);
        c.rate_limit_qps = raw.rate_limit_qps.unwrap_or(c.rate_limit_qps);
        c.problems = problems;
        c
    }

    /// Every problem: unparsable values first, then inconsistent settings.
    fn problems(&self) -> Vec<Problem> {
        let mut p = self.problems.clone();
        let sp = &self.spans;
        let mut add = |field, span: &Option<Range<usize>>, message: String| {
            p.push(Problem {
                field,
                span: span.clone(),
                message,
            });
        };
        if self.mode.proxy() {
            if self.listen.is_empty() && self.problems.iter().all(|x| x.field != "listen") {
                add(
                    "listen",
                    &sp.mode,
                    format!(
                        "mode = \"{}\" runs the DNS proxy, which needs `listen` (e.g. [\"10.0.0.1:53\"], addresses of this host)",
                        self.mode.as_str()
                    ),
                );
            }
            if self.clients.is_empty() && self.problems.iter().all(|x| x.field != "clients") {
                add(
                    "clients",
                    &sp.mode,
                    format!(
                        "mode = \"{}\" runs the DNS proxy, which needs `clients` (the prefixes allowed to query, e.g. [\"10.0.0.0/16\"])",
                        self.mode.as_str()
                    ),
                );
            }
        } else if !self.listen.is_empty() {
            add(
                "listen",
                &sp.listen,
                format!(
                    "`listen` is set but mode = \"{}\" does not run the proxy: set mode = \"proxy\" or \"both\"",
                    self.mode.as_str()
                ),
            );
        }
        if self.upstreams.is_empty() && self.problems.iter().all(|x| x.field != "upstreams") {
            add("upstreams", &sp.upstreams, "no upstream DNS server".into());
        }
        if self.max_ttl == 0 {
            add("max_ttl", &sp.max_ttl, "must be at least 1 second".into());
        }
        if self.min_ttl > self.max_ttl {
            add(
                "min_ttl",
                &sp.min_ttl,
                format!(
                    "min_ttl ({}) is larger than max_ttl ({})",
                    self.min_ttl, self.max_ttl
                ),
            );
        }
        if self.max_ips_per_name == 0 {
            add(
                "max_ips_per_name",
                &sp.max_ips_per_name,
                "must be at least 1".into(),
            );
        }
        if self.upstream_timeout_ms == 0 || self.upstream_timeout_ms > 60_000 {
            add(
                "upstream_timeout_ms",
                &sp.upstream_timeout_ms,
                format!("{} ms: give 1 to 60000", self.upstream_timeout_ms),
            );
        }
        p
    }

    /// Check the section, naming file, line and field (called by `Config::parse`).
    ///
    /// # Errors
    /// The first problem.
    pub fn validate(&self, origin: &Origin) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(p) => Err(ConfigError::Invalid {
                path: origin.name.clone(),
                message: match p.span {
                    Some(s) => format!(
                        "line {}, field `dns.{}`: {}",
                        origin.line(s.start),
                        p.field,
                        p.message
                    ),
                    None => format!("field `dns.{}`: {}", p.field, p.message),
                },
            }),
        }
    }

    /// Check a configuration built in code.
    ///
    /// # Errors
    /// The first problem.
    pub fn check(&self) -> Result<(), DnsConfigError> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(p) => Err(DnsConfigError {
                field: p.field.to_owned(),
                message: p.message,
            }),
        }
    }

    /// The table's limits.
    #[must_use]
    pub fn table(&self) -> TableConfig {
        TableConfig {
            min_ttl: Duration::from_secs(self.min_ttl.into()),
            max_ttl: Duration::from_secs(self.max_ttl.into()),
            grace: Duration::from_secs(self.grace.into()),
            max_stale: Duration::from_secs(self.max_stale.into()),
            max_ips_per_name: self.max_ips_per_name.max(1) as usize,
        }
    }

    #[must_use]
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms.into())
    }

    /// Is `ip` one of the proxy's clients?
    #[must_use]
    pub fn is_client(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.clients.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn defaults_when_absent() {
        let c = Config::parse("audit = false\n", "t.toml").unwrap();
        assert_eq!(c.dns, DnsConfig::default());
        assert_eq!(c.dns.mode.effective(true), DnsMode::Resolver);
        assert_eq!(c.dns.mode.effective(false), DnsMode::Off);
        assert_eq!(c.dns.upstreams, [AZURE_DNS]);
        c.dns.check().unwrap();
    }

    #[test]
    fn parses_a_full_section() {
        let c = Config::parse(
            r#"
[dns]
mode = "both"
listen = ["10.0.0.1:53", "10.0.0.1:5353", "fd00::1"]
clients = ["10.0.0.0/16", "10.1.2.3", "fd00::/64"]
upstreams = ["168.63.129.16", "[fd00::53]:5300"]
min_ttl = 5
max_ttl = 600
grace = 10
max_stale = 120
max_ips_per_name = 8
unmatched = "refuse"
rate_limit_qps = 0
upstream_timeout_ms = 500
"#,
            "t.toml",
        )
        .unwrap();
        let d = &c.dns;
        assert_eq!(d.mode, DnsMode::Both);
        assert_eq!(d.listen[2], "[fd00::1]:53".parse().unwrap());
        assert_eq!(d.clients[1], "10.1.2.3/32".parse().unwrap());
        assert_eq!(d.upstreams[1], "[fd00::53]:5300".parse().unwrap());
        assert_eq!(d.unmatched, Unmatched::Refuse);
        assert_eq!(d.table().max_ips_per_name, 8);
        assert_eq!(d.upstream_timeout(), Duration::from_millis(500));
        assert!(d.is_client("10.0.9.9".parse().unwrap()));
        assert!(d.is_client("::ffff:10.0.9.9".parse().unwrap()));
        assert!(!d.is_client("10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err("[dns]\nmode = \"proxi\"\n");
        assert!(
            e.contains("t.toml") && e.contains("line 2") && e.contains("proxi"),
            "{e}"
        );
        let e = err("[dns]\nbogus = 1\n");
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        let e = err(
            "[dns]\nmode = \"proxy\"\nclients = [\"10.0.0.0/8\"]\nlisten = [\"10.0.0.1:53\", \"10.0.0.300\"]\n",
        );
        assert!(
            e.contains("line 4") && e.contains("dns.listen") && e.contains("10.0.0.300"),
            "{e}"
        );
        let e = err("[dns]\nmode = \"proxy\"\nlisten = [\"10.0.0.1\"]\n");
        assert!(e.contains("line 2") && e.contains("dns.clients"), "{e}");
        let e = err("[dns]\nmode = \"proxy\"\nclients = [\"10.0.0.0/8\"]\n");
        assert!(
            e.contains("dns.listen") && e.contains("needs `listen`"),
            "{e}"
        );
        let e = err("[dns]\n\nlisten = [\"10.0.0.1\"]\n");
        assert!(
            e.contains("line 3") && e.contains("does not run the proxy"),
            "{e}"
        );
        let e = err("[dns]\nclients = [\"10.0.0.1/16\"]\n");
        assert!(
            e.contains("line 2") && e.contains("host bits") && e.contains("10.0.0.0/16"),
            "{e}"
        );
        let e = err("[dns]\nupstreams = []\n");
        assert!(e.contains("line 2") && e.contains("empty"), "{e}");
        let e = err("[dns]\nupstreams = [\"1.2.3.4:0\"]\n");
        assert!(e.contains("port 0"), "{e}");
        let e = err("[dns]\nmin_ttl = 100\nmax_ttl = 10\n");
        assert!(
            e.contains("line 2") && e.contains("larger than max_ttl"),
            "{e}"
        );
        let e = err("[dns]\nmax_ips_per_name = 0\n");
        assert!(e.contains("line 2") && e.contains("at least 1"), "{e}");
        let e = err("[dns]\nmin_ttl = -1\n");
        assert!(e.contains("line 2") && e.contains("min_ttl"), "{e}");
        let e = err("[dns]\nupstream_timeout_ms = 0\n");
        assert!(
            e.contains("line 2") && e.contains("upstream_timeout_ms"),
            "{e}"
        );
        let e = err(
            "[dns]\nmode = \"proxy\"\nclients = [\"10.0.0.0/8\"]\nlisten = [\"10.0.0.1\", \"10.0.0.1:53\"]\n",
        );
        assert!(e.contains("line 4") && e.contains("twice"), "{e}");
    }

    #[test]
    fn check_reports_programmatic_mistakes() {
        let c = DnsConfig {
            mode: DnsMode::Proxy,
            ..DnsConfig::default()
        };
        let e = c.check().unwrap_err();
        assert_eq!(e.field, "listen");
        assert!(e.to_string().contains("dns.listen"), "{e}");
    }
}
