//! Resolver mode: look up every exact host-name rule (A and AAAA; CNAME chains are
//! followed by hickory and kept in the answer), record the addresses, and look up
//! again when the earliest of them expires. Failures keep the last good answer
//! (bounded by `max_stale`) and retry with a doubling interval (1 s up to
//! `tuning.max_retry`).

use std::{sync::Arc, time::Duration};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::{Name, RecordType},
};
use tokio::sync::watch;

use super::{config::DnsConfig, service::Shared, stats::Stats, wire};

/// A resolver asking exactly the configured upstreams (no /etc/resolv.conf, no hosts
/// file, no search domains), UDP with TCP fallback on truncation.
///
/// # Errors
/// From hickory's builder.
pub(crate) fn build(cfg: &DnsConfig) -> Result<TokioResolver, hickory_resolver::net::NetError> {
    let servers: Vec<NameServerConfig> = cfg
        .upstreams
        .iter()
        .map(|u| {
            let mut ns = NameServerConfig::udp_and_tcp(u.ip());
            for c in &mut ns.connections {
                c.port = u.port();
            }
            ns
        })
        .collect();
    let mut o = ResolverOpts::default();
    o.timeout = cfg.upstream_timeout();
    o.attempts = 1;
    o.use_hosts_file = ResolveHosts::Never;
    o.ndots = 0;
    // Every refresh asks the upstream: the table, not hickory's cache, keeps answers.
    o.cache_size = 0;
    o.positive_max_ttl = Some(Duration::from_secs(cfg.max_ttl.into()));
    o.preserve_intermediates = true;
    o.try_tcp_on_error = true;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(o)
    .build()
}

/// Keep `name` (an exact rule, lowercase, no trailing dot) resolved until `stop`.
pub(crate) async fn refresh_loop(
    shared: Arc<Shared>,
    resolver: Arc<TokioResolver>,
    name: String,
    mut stop: watch::Receiver<bool>,
) {
    let fqdn = match Name::from_ascii(format!("{name}.")) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%name, "not resolvable as a DNS name: {e}");
            return;
        }
    };
    let tuning = shared.cfg.tuning;
    let mut failures: u32 = 0;
    loop {
        let (a, aaaa) = tokio::join!(
            resolver.lookup(fqdn.clone(), RecordType::A),
            resolver.lookup(fqdn.clone(), RecordType::AAAA)
        );
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for (t, r) in [("A", a), ("AAAA", aaaa)] {
            Stats::inc(&shared.stats.resolver_lookups);
            match r {
                Ok(l) => answers.extend(l.answers().iter().cloned()),
                Err(e) if e.is_no_records_found() => {}
                Err(e) => {
                    Stats::inc(&shared.stats.resolver_failures);
                    errors.push(format!("{t}: {e}"));
                }
            }
        }
        let matched = wire::matched_names(&shared.matcher, &fqdn, &answers);
        if let Err(e) = shared.apply(&matched, false) {
            // Retried at the next refresh; the failure is logged and counted.
            tracing::warn!(%name, "resolver could not program the datapath: {e}");
        }
        let next = if errors.is_empty() {
            failures = 0;
            let ttl = matched
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.addrs.iter().map(|a| a.1).min());
            match ttl {
                Some(ttl) => {
                    let t = shared.table();
                    t.deadline(Duration::ZERO, ttl)
                }
                None => {
                    let c = shared.cfg.table();
                    tuning
                        .negative_ttl
                        .clamp(c.min_ttl, c.max_ttl.max(c.min_ttl))
                }
            }
        } else {
            failures = failures.saturating_add(1);
            shared.fail(std::slice::from_ref(&name), &errors.join("; "));
            tracing::debug!(%name, failures, "resolver lookup failed: {}", errors.join("; "));
            Duration::from_secs(1u64 << failures.min(16).saturating_sub(1)).min(tuning.max_retry)
        };
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = stop.changed() => return,
        }
    }
}
