//! Prometheus text metrics (`[reports] metrics_listen`), served by `tagwall run` on
//! `GET /metrics` by a minimal HTTP/1.1 server (one request per connection, at most
//! 16 connections at once, 5 s to send the request head). Map reads run on tokio's
//! blocking pool, so a scrape never stalls the DNS proxy sharing the runtime.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, ACTION_PASS},
    names,
    verdict::{is_drop, reason_name},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{
    events::{LogState, dir_name},
    maps::{self, EventCounters},
};
use crate::{
    dataplane::{CT_STAT_NAMES, Counters, FWD_STAT_NAMES},
    dns::{DnsHandle, StatsSnapshot},
    enforcer::Enforcer,
    policy::RuleKind,
    state::PolicyState,
};

/// What one scrape shows (gathered by [`MetricsSource::gather`], rendered by
/// [`render`]).
#[derive(Clone, Debug, Default)]
pub struct MetricsData {
    pub counters: Counters,
    /// Rule id -> (name, kind, requirement).
    pub rules: BTreeMap<u32, (String, String, String)>,
    pub events: EventCounters,
    pub log: Option<LogState>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u32,
    pub top_entries: u64,
    pub top_capacity: u32,
    pub prefixes: usize,
    pub port_sets: usize,
    pub learned_addresses: usize,
    pub reloads: u64,
    pub last_reload_unix: Option<u64>,
    pub last_reload_ok: Option<bool>,
    pub dns: Option<StatsSnapshot>,
    pub start_unix: u64,
}

/// Escape a label value (backslash, double quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, ty: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {ty}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: u64) {
        self.head(name, "gauge", help);
        self.line(name, &[], v);
    }
}

/// The Prometheus text exposition (format 0.0.4).
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn render(d: &MetricsData) -> String {
    let mut o = Out(String::new());
    let c = &d.counters;

    for (metric, help, bytes) in [
        (
            "tagwall_rule_packets_total",
            "Packets credited to a rule: those it allowed and both directions of the flows it opened.",
            false,
        ),
        (
            "tagwall_rule_bytes_total",
            "Bytes credited to a rule.",
            true,
        ),
    ] {
        o.head(metric, "counter", help);
        let mut ids: Vec<u32> = d.rules.keys().copied().collect();
        ids.extend(c.rules.keys().copied().filter(|i| !d.rules.contains_key(i)));
        ids.sort_unstable();
        for id in ids {
            let k = c.rule(id);
            let (name, kind, req) = d.rules.get(&id).cloned().unwrap_or_else(|| {
                if id == 0 {
                    (
                        "gateway:own-traffic".into(),
                        "gateway".into(),
                        String::new(),
                    )
                } else {
                    (format!("rule#{id}"), "unknown".into(), String::new())
                }
            });
            let ids = id.to_string();
            o.line(
                metric,
                &[
                    ("rule", &name),
                    ("rule_id", &ids),
                    ("kind", &kind),
                    ("requirement", &req),
                ],
                if bytes { k.bytes } else { k.packets },
            );
        }
    }

    o.head(
        "tagwall_drops_total",
        "counter",
        "Packets dropped (or, in audit mode, passed although the policy drops them), by reason and direction.",
    );
    for ((dir, reason), k) in &c.reasons {
        if is_drop(*reason) {
            o.line(
                "tagwall_drops_total",
                &[
                    ("reason", reason_name(*reason)),
                    ("direction", dir_name(*dir)),
                ],
                k.packets,
            );
        }
    }
    for (metric, help, bytes) in [
        (
            "tagwall_verdict_packets_total",
            "Packets by verdict reason and direction (every packet has one).",
            false,
        ),
        (
            "tagwall_verdict_bytes_total",
            "Bytes by verdict reason and direction.",
            true,
        ),
    ] {
        o.head(metric, "counter", help);
        for ((dir, reason), k) in &c.reasons {
            o.line(
                metric,
                &[
                    ("reason", reason_name(*reason)),
                    ("direction", dir_name(*dir)),
                ],
                if bytes { k.bytes } else { k.packets },
            );
        }
    }
    for (metric, help, bytes) in [
        (
            "tagwall_action_packets_total",
            "Packets by what happened to them: pass, drop, audit_pass.",
            false,
        ),
        ("tagwall_action_bytes_total", "Bytes by action.", true),
    ] {
        o.head(metric, "counter", help);
        for (n, i) in [
            ("pass", ACTION_PASS),
            ("drop", ACTION_DROP),
            ("audit_pass", ACTION_AUDIT_PASS),
        ] {
            let k = c.actions[i as usize];
            o.line(
                metric,
                &[("action", n)],
                if bytes { k.bytes } else { k.packets },
            );
        }
    }
    o.head(
        "tagwall_conntrack_events_total",
        "counter",
        "Connection tracker events: new, hit, expired, insert_failed, revalidated, revoked, closed, cached (hits served from the per-CPU flow cache).",
    );
    for (n, v) in CT_STAT_NAMES.iter().zip(c.conntrack) {
        o.line("tagwall_conntrack_events_total", &[("event", n)], v);
    }
    o.head(
        "tagwall_fast_forward_packets_total",
        "counter",
        "Allowed packets on a gateway with [fast_forward]: redirected by XDP, or passed to the kernel's stack and why.",
    );
    for (n, k) in FWD_STAT_NAMES.iter().zip(c.fast_forward) {
        o.line(
            "tagwall_fast_forward_packets_total",
            &[("outcome", n)],
            k.packets,
        );
    }
    o.gauge(
        "tagwall_conntrack_entries",
        "Entries in the flow tables (expired ones included until reused or evicted; counted at most every 30 s).",
        d.conntrack_entries,
    );
    o.gauge(
        "tagwall_conntrack_capacity",
        "Capacity of the flow table.",
        u64::from(d.conntrack_capacity),
    );
    o.gauge(
        "tagwall_top_denied_entries",
        "Entries in the top-denied table.",
        d.top_entries,
    );
    o.gauge(
        "tagwall_top_denied_capacity",
        "Capacity of the top-denied table.",
        u64::from(d.top_capacity),
    );
    o.gauge(
        "tagwall_policy_generation",
        "Generation of the applied policy (each reload adds one).",
        u64::from(c.generation),
    );
    o.gauge(
        "tagwall_policy_rules",
        "Rules of the applied policy.",
        d.rules
            .len()
            .saturating_sub(usize::from(d.rules.contains_key(&0))) as u64,
    );
    o.gauge("tagwall_policy_prefixes", "Prefixes written for the applied policy (LPM entries of the active slot, DNS-learned hosts added since not included).", d.prefixes as u64);
    o.gauge(
        "tagwall_policy_port_sets",
        "Port sets of the applied policy.",
        d.port_sets as u64,
    );
    o.gauge(
        "tagwall_audit_mode",
        "1 when the policy is in audit mode.",
        u64::from(c.audit),
    );
    o.head(
        "tagwall_reloads_total",
        "counter",
        "Reloads attempted since the daemon started.",
    );
    o.line("tagwall_reloads_total", &[], d.reloads);
    o.gauge(
        "tagwall_last_reload_timestamp_seconds",
        "Unix time of the last reload attempt (0: none since the daemon started).",
        d.last_reload_unix.unwrap_or(0),
    );
    o.gauge(
        "tagwall_last_reload_success",
        "1 when the last reload was applied, 0 when it was rejected (or none happened).",
        u64::from(d.last_reload_ok.unwrap_or(false)),
    );
    o.gauge(
        "tagwall_start_time_seconds",
        "Unix time the daemon started.",
        d.start_unix,
    );

    o.head(
        "tagwall_denied_events_total",
        "counter",
        "Denied-flow events by outcome in the datapath: emitted into the ring, rate_limited, ring_full.",
    );
    for (n, k) in [
        ("emitted", d.events.emitted),
        ("rate_limited", d.events.rate_limited),
        ("ring_full", d.events.ring_full),
    ] {
        o.line("tagwall_denied_events_total", &[("outcome", n)], k.packets);
    }
    let log = d.log.clone().unwrap_or_default();
    o.head(
        "tagwall_denied_log_lines_total",
        "counter",
        "JSON lines written to the denied-flow log.",
    );
    o.line("tagwall_denied_log_lines_total", &[], log.lines_written);
    o.head(
        "tagwall_denied_log_lost_total",
        "counter",
        "Events read from the ring but not written: write_error (log not writable), decode_error, discarded (no log configured).",
    );
    for (n, v) in [
        ("write_error", log.write_errors),
        ("decode_error", log.decode_errors),
        ("discarded", log.discarded),
    ] {
        o.line("tagwall_denied_log_lost_total", &[("cause", n)], v);
    }

    o.gauge(
        "tagwall_dns_up",
        "1 when the DNS resolver/proxy runs.",
        u64::from(d.dns.is_some()),
    );
    o.gauge(
        "tagwall_dns_learned_addresses",
        "Addresses DNS has allowed in the datapath.",
        d.learned_addresses as u64,
    );
    if let Some(s) = &d.dns {
        for (n, v) in s.pairs() {
            let name = format!("tagwall_dns_{n}_total");
            o.head(
                &name,
                "counter",
                &format!("DNS service counter {n} (see docs/dns.md)."),
            );
            o.line(&name, &[], v);
        }
    }
    o.0
}

/// The daemon's view for scrapes.
pub struct MetricsSource {
    pub pin_dir: PathBuf,
    pub enforcer: Arc<Enforcer>,
    pub state: Arc<Mutex<Option<PolicyState>>>,
    pub dns: Arc<Mutex<Option<DnsHandle>>>,
    pub log: Arc<dyn Fn() -> LogState + Send + Sync>,
    pub start_unix: u64,
    /// Conntrack entry count and when it was taken (counting walks the table).
    pub ct_cache: Mutex<Option<(Instant, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MetricsSource {
    /// Read the maps and the daemon's state.
    ///
    /// # Errors
    /// Map errors (the pinned maps are gone: detached under the daemon).
    pub fn gather(&self) -> Result<MetricsData, String> {
        let state = lock(&self.state).clone();
        let mut rules = BTreeMap::new();
        rules.insert(
            0,
            (
                "gateway:own-traffic".to_owned(),
                "gateway".to_owned(),
                String::new(),
            ),
        );
        if let Some(s) = &state {
            for r in &s.rules {
                let p = s.provenance.iter().find(|p| p.rule_id == r.id);
                let kind = match p.map(|p| p.kind) {
                    Some(RuleKind::Catalog) => "catalog",
                    Some(RuleKind::Management) => "management",
                    Some(RuleKind::User) => "user",
                    None => "unknown",
                };
                rules.insert(
                    r.id,
                    (
                        r.name.clone(),
                        kind.to_owned(),
                        p.and_then(|p| p.requirement.clone()).unwrap_or_default(),
                    ),
                );
            }
        }
        let e = |e: crate::dataplane::DataplaneError| e.to_string();
        // Every rule's counters, so that the reasons keep the packets of rules a reload
        // removed (a Prometheus counter must not go down); only the current rules are
        // listed.
        let mut counters = Counters::from_pins(&self.pin_dir).map_err(e)?;
        counters.rules.retain(|id, _| rules.contains_key(id));
        let ev = maps::open_pinned(&self.pin_dir, names::MAP_EVENT_STATS).map_err(e)?;
        let events = maps::read_events(&ev).map_err(|x| x.to_string())?;
        let top = maps::open_pinned(&self.pin_dir, names::MAP_TOP_DENIED).map_err(e)?;
        let top_entries = maps::count_top(&top).map_err(|x| x.to_string())?;
        let ct4 = maps::open_pinned(&self.pin_dir, names::MAP_CONNTRACK_V4).map_err(e)?;
        let ct6 = maps::open_pinned(&self.pin_dir, names::MAP_CONNTRACK_V6).map_err(e)?;
        let conntrack_entries = {
            let mut cache = lock(&self.ct_cache);
            match *cache {
                Some((at, n)) if at.elapsed() < Duration::from_secs(30) => n,
                _ => {
                    let n = maps::count_flows(&ct4, &ct6).map_err(|x| x.to_string())?;
                    *cache = Some((Instant::now(), n));
                    n
                }
            }
        };
        let last = self.enforcer.last();
        Ok(MetricsData {
            counters,
            rules,
            events,
            log: Some((self.log)()),
            conntrack_entries,
            conntrack_capacity: maps::capacity(&ct4) + maps::capacity(&ct6),
            top_entries,
            top_capacity: maps::capacity(&top),
            prefixes: last.prefixes,
            port_sets: last.sets,
            learned_addresses: self.enforcer.hosts().len(),
            reloads: state.as_ref().map_or(0, |s| s.reloads),
            last_reload_unix: state
                .as_ref()
                .and_then(|s| s.last_reload.as_ref().map(|r| r.at_unix)),
            last_reload_ok: state
                .as_ref()
                .and_then(|s| s.last_reload.as_ref().map(|r| r.ok)),
            dns: lock(&self.dns).as_ref().map(DnsHandle::stats),
            start_unix: self.start_unix,
        })
    }
}

/// Longest request head accepted.
const MAX_HEAD: usize = 8192;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, src: Arc<MetricsSource>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let src = src.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, src).await {
                tracing::debug!("metrics: connection: {e}");
            }
            drop(permit);
        });
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let ct = if status.starts_with("200") && body.starts_with('#') {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

async fn handle(mut sock: TcpStream, src: Arc<MetricsSource>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    };
    let complete = match tokio::time::timeout(Duration::from_secs(5), read_head).await {
        Ok(r) => r?,
        Err(_) => false,
    };
    if !complete {
        return respond(
            &mut sock,
            "400 Bad Request",
            "incomplete or oversized request\n",
            false,
        )
        .await;
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let s = src.clone();
            match tokio::task::spawn_blocking(move || s.gather()).await {
                Ok(Ok(d)) => respond(&mut sock, "200 OK", &render(&d), head_only).await,
                Ok(Err(e)) => {
                    tracing::warn!("metrics: reading the datapath failed: {e}");
                    respond(
                        &mut sock,
                        "500 Internal Server Error",
                        &format!("reading the datapath failed: {e}\n"),
                        head_only,
                    )
                    .await
                }
                Err(e) => {
                    respond(
                        &mut sock,
                        "500 Internal Server Error",
                        &format!("{e}\n"),
                        head_only,
                    )
                    .await
                }
            }
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut sock,
                "200 OK",
                "tagwall: metrics at /metrics\n",
                head_only,
            )
            .await
        }
        (_, "/metrics" | "/") => {
            respond(
                &mut sock,
                "405 Method Not Allowed",
                "GET or HEAD only\n",
                false,
            )
            .await
        }
        _ => {
            respond(
                &mut sock,
                "404 Not Found",
                "not found; metrics are at /metrics\n",
                head_only,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagwall_common::{counters::Counter, verdict::REASON_NO_MATCH};

    #[test]
    fn renders_counters_with_labels() {
        let mut d = MetricsData::default();
        d.rules
            .insert(5, ("aml:x".into(), "catalog".into(), "x\"y".into()));
        d.counters.rules.insert(
            5,
            Counter {
                packets: 7,
                bytes: 700,
            },
        );
        d.counters.reasons.insert(
            (0, REASON_NO_MATCH),
            Counter {
                packets: 3,
                bytes: 180,
            },
        );
        d.events.rate_limited.packets = 9;
        let t = render(&d);
        assert!(
            t.contains("tagwall_rule_packets_total{rule=\"aml:x\",rule_id=\"5\",kind=\"catalog\",requirement=\"x\\\"y\"} 7"),
            "{t}"
        );
        assert!(
            t.contains("tagwall_drops_total{reason=\"no_match\",direction=\"outbound\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("tagwall_denied_events_total{outcome=\"rate_limited\"} 9"),
            "{t}"
        );
        assert!(t.contains("# TYPE tagwall_policy_generation gauge"));
        // Every sample line is `name{labels} value` or `name value`.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<u64>().is_ok(), "{l}");
        }
    }
}
