//! The running DNS service: shared state, the tasks (proxy servers, resolver, sweeper,
//! state writer), start and shutdown.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{Semaphore, watch},
    task::JoinSet,
};

use super::{
    config::{DnsConfig, DnsConfigError, DnsMode},
    matcher::Matcher,
    proxy,
    ratelimit::RateLimiter,
    report::DnsState,
    resolver,
    sink::AddressSink,
    stats::{Stats, StatsSnapshot},
    table::{AddrRules, AddressTable, InUse},
    wire::Matched,
};
use crate::policy::FqdnRule;

/// A monotonic clock with a wall-clock anchor (for the state file).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_unix_ms: u64,
}

impl Clock {
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            origin_unix_ms: unix_ms_now(),
        }
    }

    /// Monotonic time since the clock was made.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Wall-clock milliseconds of a `now()` value.
    #[must_use]
    pub fn unix_ms(&self, at: Duration) -> u64 {
        self.origin_unix_ms
            .saturating_add(u64::try_from(at.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
#[must_use]
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why the DNS service could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Config(#[from] DnsConfigError),
    #[error(
        "DNS proxy cannot listen on {addr} ({proto}): {source}; is the address configured on this host and the port free?"
    )]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("DNS task ended unexpectedly: {0}")]
    Task(String),
}

/// State shared by the tasks.
pub(crate) struct Shared {
    pub cfg: DnsConfig,
    pub mode: DnsMode,
    pub matcher: Matcher,
    pub table: Mutex<AddressTable>,
    pub sink: Arc<dyn AddressSink>,
    pub stats: Stats,
    pub clock: Clock,
    pub limiter: Mutex<RateLimiter>,
    /// Revocations that failed, retried on the next sweep.
    pub retry: Mutex<AddrRules>,
    /// The proxy's bound sockets (actual ports when 0 was asked for).
    pub bound: Vec<SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop DNS: the data behind these locks stays valid
    // between statements.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn table(&self) -> MutexGuard<'_, AddressTable> {
        lock(&self.table)
    }

    pub fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        lock(&self.limiter)
    }

    /// Record good answers, then program the datapath for every address of them, all
    /// with the table locked. `hit`: count a client query for each name with
    /// addresses.
    ///
    /// # Errors
    /// The first failed `allow` (every address is still attempted).
    pub fn apply(&self, matched: &[Matched], hit: bool) -> Result<(), String> {
        let now = self.clock.now();
        let mut t = self.table();
        let mut addrs: BTreeSet<IpAddr> = BTreeSet::new();
        let mut revoke = Vec::new();
        for m in matched {
            let c = t.record(now, &m.name, &m.rules, &m.addrs);
            addrs.extend(c.allow.into_iter().map(|(a, _)| a));
            revoke.extend(c.revoke);
            if hit && !m.addrs.is_empty() {
                t.hit(&m.name);
            }
        }
        let mut failed = None;
        for a in addrs {
            let rules = t.live_rules(&a);
            match self.sink.allow(a, &rules) {
                Ok(()) => Stats::inc(&self.stats.sink_allows),
                Err(e) => {
                    Stats::inc(&self.stats.sink_errors);
                    tracing::warn!(addr = %a, ?rules, "datapath allow failed: {e}");
                    failed.get_or_insert(format!("allow {a}: {e}"));
                }
            }
        }
        self.revoke_locked(revoke);
        failed.map_or(Ok(()), Err)
    }

    /// Call `revoke` for each entry; failures are kept for the next sweep. Call with
    /// the table locked.
    fn revoke_locked(&self, list: AddrRules) {
        for (a, rules) in list {
            match self.sink.revoke(a, &rules) {
                Ok(()) => {
                    Stats::inc(&self.stats.sink_revokes);
                    tracing::debug!(addr = %a, ?rules, "address revoked");
                }
                Err(e) => {
                    Stats::inc(&self.stats.sink_errors);
                    tracing::warn!(addr = %a, ?rules, "datapath revoke failed (retried on the next sweep): {e}");
                    lock(&self.retry).push((a, rules));
                }
            }
        }
    }

    /// Remove what has run out and revoke it (and retry failed revocations).
    pub fn sweep(&self) {
        let now = self.clock.now();
        let mut t = self.table();
        let mut list = t.sweep(now);
        let retries = std::mem::take(&mut *lock(&self.retry));
        for (a, mut rules) in retries {
            let live = t.live_rules(&a);
            rules.retain(|r| !live.contains(r));
            if !rules.is_empty() {
                list.push((a, rules));
            }
        }
        self.revoke_locked(list);
        drop(t);
        self.limiter().gc(now);
    }

    /// Refreshes of `names` failed: keep their last good answers (bounded by
    /// max_stale).
    pub fn fail(&self, names: &[String], error: &str) {
        let now = self.clock.now();
        let mut t = self.table();
        for n in names {
            if t.record_failure(now, n, error) {
                let kept = t.address_count(n);
                if kept == 0 {
                    tracing::warn!(name = %n, "DNS lookup failed, nothing is allowed for it yet (retrying): {error}");
                } else {
                    tracing::warn!(
                        name = %n,
                        addresses = kept,
                        max_stale_s = self.cfg.max_stale,
                        "DNS refresh failed, its last good addresses stay allowed up to max_stale past expiry: {error}"
                    );
                }
            }
        }
    }

    /// The state file's content.
    pub fn state(&self) -> DnsState {
        let now = self.clock.now();
        let t = self.table();
        let (names, held) = t.snapshot(now);
        let (evicted, over_cap) = t.cap_counts();
        drop(t);
        DnsState::new(
            self,
            self.clock.unix_ms(now),
            names,
            held,
            evicted,
            over_cap,
        )
    }
}

/// A cheap, cloneable view of a running service (for `tagwall explain`, tests and
/// the daemon).
#[derive(Clone)]
pub struct DnsHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsHandle")
            .field("mode", &self.shared.mode)
            .field("bound", &self.shared.bound)
            .finish_non_exhaustive()
    }
}

impl DnsHandle {
    /// The mode in effect (`auto` decided).
    #[must_use]
    pub fn mode(&self) -> DnsMode {
        self.shared.mode
    }

    /// The proxy's bound addresses (UDP and TCP share each), in `listen` order.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.shared.bound.clone()
    }

    #[must_use]
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The names (and rule ids) through which `addr` is allowed now.
    #[must_use]
    pub fn who(&self, addr: &IpAddr) -> Vec<(String, u32)> {
        self.shared.table().who(addr)
    }

    /// What `tagwall dns` shows, now.
    #[must_use]
    pub fn state(&self) -> DnsState {
        self.shared.state()
    }

    /// Install the "address used by a tracked connection" hook (conntrack): expired
    /// addresses it reports are not revoked until it stops reporting them. It is
    /// called with the table locked, during sweeps: keep it to a lookup.
    pub fn set_in_use(&self, f: InUse) {
        self.shared.table().set_in_use(f);
    }

    /// Run a sweep now (normally every `tuning.sweep_interval`).
    pub fn sweep_now(&self) {
        self.shared.sweep();
    }
}

/// A started DNS service. Dropping it aborts its tasks; [`DnsService::shutdown`]
/// stops them in order and writes the state file one last time.
pub struct DnsService {
    handle: DnsHandle,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    inflight: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    state_file: Option<PathBuf>,
}

impl DnsService {
    /// Validate `cfg`, bind the proxy's sockets (errors here, not later), build the
    /// resolver, install the exact names, and spawn the tasks on the current tokio
    /// runtime:
    /// - proxy (mode proxy/both): one UDP and one TCP server per `listen` address;
    /// - resolver (mode resolver/both): one task per exact host name, re-resolving on
    ///   TTL expiry (wildcards cannot be enumerated: they need the proxy; logged);
    /// - sweeper: every `tuning.sweep_interval`, revoke what has run out;
    /// - state writer (if `state_file`): every `tuning.state_interval`, atomically.
    ///
    /// # Errors
    /// [`DnsError`]: invalid config, a listen address that cannot be bound, a resolver
    /// that cannot be built.
    pub async fn start(
        cfg: DnsConfig,
        rules: &[FqdnRule],
        sink: Arc<dyn AddressSink>,
        state_file: Option<PathBuf>,
    ) -> Result<Self, DnsError> {
        cfg.check()?;
        let matcher = Matcher::new(rules);
        let mode = cfg.mode.effective(!matcher.is_empty());
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut bound = Vec::new();
        if mode.proxy() {
            for &addr in &cfg.listen {
                let u = UdpSocket::bind(addr)
                    .await
                    .map_err(|source| DnsError::Bind {
                        addr,
                        proto: "udp",
                        source,
                    })?;
                let local = u.local_addr().map_err(|source| DnsError::Bind {
                    addr,
                    proto: "udp",
                    source,
                })?;
                // Same port for TCP (matters when 0 asked for any port).
                let t = TcpListener::bind(local)
                    .await
                    .map_err(|source| DnsError::Bind {
                        addr: local,
                        proto: "tcp",
                        source,
                    })?;
                udp.push(Arc::new(u));
                tcp.push(t);
                bound.push(local);
            }
        }
        let resolver = if mode.resolver() {
            Some(Arc::new(
                resolver::build(&cfg).map_err(|e| DnsError::Resolver(e.to_string()))?,
            ))
        } else {
            None
        };
        let mut table = AddressTable::new(cfg.table());
        let exact: Vec<String> = matcher
            .exact_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if mode.resolver() {
            for n in &exact {
                table.pin(n, &matcher.matches(n));
            }
            let wild = matcher.wildcard_patterns();
            if !wild.is_empty() && !mode.proxy() {
                tracing::warn!(
                    patterns = ?wild,
                    "wildcard host-name rules cannot be resolved ahead of time: they stay denied unless the DNS proxy runs (mode = \"proxy\" or \"both\")"
                );
            }
        }
        let limiter = RateLimiter::new(cfg.rate_limit_qps, 65_536);
        let tuning = cfg.tuning;
        let shared = Arc::new(Shared {
            mode,
            matcher,
            table: Mutex::new(table),
            sink,
            stats: Stats::default(),
            clock: Clock::new(),
            limiter: Mutex::new(limiter),
            retry: Mutex::new(Vec::new()),
            bound,
            cfg,
        });
        let (stop, stop_rx) = watch::channel(false);
        let inflight = Arc::new(Semaphore::new(tuning.max_inflight.max(1)));
        let tcp_conns = Arc::new(Semaphore::new(tuning.max_tcp_connections.max(1)));
        let mut tasks = JoinSet::new();
        for sock in udp {
            tasks.spawn(proxy::udp_server(
                shared.clone(),
                sock,
                inflight.clone(),
                stop_rx.clone(),
            ));
        }
        for l in tcp {
            tasks.spawn(proxy::tcp_server(
                shared.clone(),
                l,
                tcp_conns.clone(),
                stop_rx.clone(),
            ));
        }
        if let Some(r) = resolver {
            for n in exact {
                tasks.spawn(resolver::refresh_loop(
                    shared.clone(),
                    r.clone(),
                    n,
                    stop_rx.clone(),
                ));
            }
        }
        if mode != DnsMode::Off {
            let sh = shared.clone();
            let mut rx = stop_rx.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(tuning.sweep_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => sh.sweep(),
                        _ = rx.changed() => return,
                    }
                }
            });
        }
        if let Some(path) = state_file.clone() {
            let sh = shared.clone();
            let mut rx = stop_rx.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(tuning.state_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => write_state(&sh, &path).await,
                        _ = rx.changed() => return,
                    }
                }
            });
        }
        tracing::info!(
            mode = mode.as_str(),
            listen = ?shared.bound,
            upstreams = ?shared.cfg.upstreams,
            names = shared.matcher.exact_names().len(),
            wildcards = shared.matcher.wildcard_patterns().len(),
            "DNS started"
        );
        Ok(Self {
            handle: DnsHandle { shared },
            tasks,
            stop,
            inflight,
            tcp_conns,
            state_file,
        })
    }

    #[must_use]
    pub fn handle(&self) -> DnsHandle {
        self.handle.clone()
    }

    /// Wait until a task ends on its own, which only happens on a bug (a panic), and
    /// return [`DnsError::Task`] describing it: the daemon should treat it as fatal.
    /// Pending forever while all is well; cancel-safe (use it in `select!`).
    pub async fn failed(&mut self) -> DnsError {
        match self.tasks.join_next().await {
            Some(Ok(())) => DnsError::Task("a task returned".into()),
            Some(Err(e)) => DnsError::Task(e.to_string()),
            None => std::future::pending().await,
        }
    }

    /// Stop accepting queries, let queries in flight finish (bounded by the upstream
    /// timeouts), stop the resolver and sweeper, write the state file a last time.
    /// Nothing is revoked: the datapath's lifetime is the daemon's business.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let sh = self.handle.shared.clone();
        let wait = sh.cfg.upstream_timeout() * u32::try_from(sh.cfg.upstreams.len()).unwrap_or(1)
            + Duration::from_secs(1);
        let drain = async {
            while self.tasks.join_next().await.is_some() {}
            let n = u32::try_from(sh.cfg.tuning.max_inflight.max(1)).unwrap_or(u32::MAX);
            let _ = self.inflight.acquire_many(n).await;
            let n = u32::try_from(sh.cfg.tuning.max_tcp_connections.max(1)).unwrap_or(u32::MAX);
            let _ = self.tcp_conns.acquire_many(n).await;
        };
        if tokio::time::timeout(wait, drain).await.is_err() {
            tracing::warn!("DNS shutdown: some queries were still in flight; abandoned");
            self.tasks.abort_all();
        }
        if let Some(p) = &self.state_file {
            write_state(&sh, p).await;
        }
        tracing::info!("DNS stopped");
    }
}

async fn write_state(sh: &Shared, path: &std::path::Path) {
    let state = sh.state();
    let p = path.to_path_buf();
    let r = tokio::task::spawn_blocking(move || state.save(&p)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(path = %path.display(), "writing the DNS state file: {e}"),
        Err(e) => tracing::warn!(path = %path.display(), "writing the DNS state file: {e}"),
    }
}

/// Run the DNS service until `shutdown` resolves: [`DnsService::start`], wait, then
/// [`DnsService::shutdown`].
///
/// `rules` are the policy's host-name rules ([`crate::policy::Effective::fqdns`]);
/// `sink` programs the datapath; `state_file` (normally [`super::state_path`]) is
/// rewritten every few seconds for `tagwall dns`.
///
/// # Errors
/// Start-up failures ([`DnsError`]), or a task that died (a bug).
pub async fn serve(
    cfg: DnsConfig,
    rules: Vec<FqdnRule>,
    sink: Arc<dyn AddressSink>,
    state_file: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut svc = DnsService::start(cfg, &rules, sink, state_file).await?;
    let failed = tokio::select! {
        () = shutdown => None,
        e = svc.failed() => Some(e),
    };
    svc.shutdown().await;
    match failed {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}
