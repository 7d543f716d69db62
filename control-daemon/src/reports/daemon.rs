//! The daemon's side of reports: the datapath's report settings, the denied-flow
//! log reader, and the metrics endpoint, started by `tagwall run` and updated on
//! reloads.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;

use super::{
    config::{ReportsConfig, online_cpus},
    events::{self, EventLog, NameLookup},
    metrics::{self, MetricsSource},
};
use crate::{
    dns::DnsHandle,
    enforcer::Enforcer,
    state::{Paths, PolicyState},
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reports for one running daemon.
pub struct Observability {
    cfg: Mutex<ReportsConfig>,
    cpus: u32,
    log: EventLog,
    dns: Arc<Mutex<Option<DnsHandle>>>,
    state: Arc<Mutex<Option<PolicyState>>>,
    pin_dir: PathBuf,
    enforcer: Arc<Enforcer>,
    metrics: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Observability {
    /// Write the datapath's report settings and start the event reader.
    ///
    /// # Errors
    /// Map errors; the ring buffer was taken already; no thread.
    pub fn start(
        cfg: &ReportsConfig,
        enforcer: &Arc<Enforcer>,
        paths: &Paths,
        iface: &str,
    ) -> anyhow::Result<Self> {
        let cpus = online_cpus();
        let ring = {
            let mut dp = enforcer.dataplane_mut();
            dp.set_report_config(cfg.datapath(cpus))
                .context("writing the report settings into the datapath")?;
            dp.take_events()
                .context("opening the denied-flow event ring")?
        };
        let dns: Arc<Mutex<Option<DnsHandle>>> = Arc::new(Mutex::new(None));
        let d = dns.clone();
        let names: NameLookup = Arc::new(move |a: &IpAddr| {
            lock(&d)
                .as_ref()
                .and_then(|h| h.who(a).into_iter().next().map(|(n, _)| n))
        });
        let log = EventLog::start(
            ring,
            cfg.denied_log.clone(),
            iface,
            names,
            events::state_path(paths),
        )
        .context("starting the denied-flow log reader")?;
        match &cfg.denied_log {
            Some(p) => tracing::info!(
                path = %p.display(),
                rate = cfg.events_per_second,
                burst = cfg.events_burst,
                "denied-flow log on"
            ),
            None => tracing::info!("denied-flow log off ([reports] denied_log not set)"),
        }
        Ok(Self {
            cfg: Mutex::new(cfg.clone()),
            cpus,
            log,
            dns,
            state: Arc::new(Mutex::new(None)),
            pin_dir: paths.pin_dir.clone(),
            enforcer: enforcer.clone(),
            metrics: Mutex::new(None),
        })
    }

    /// Bind `[reports] metrics_listen` (if set) and serve it. Call inside the runtime.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn serve_metrics(&self) -> anyhow::Result<()> {
        let Some(addr) = lock(&self.cfg).metrics_listen else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding [reports] metrics_listen {addr}"))?;
        let src = Arc::new(MetricsSource {
            pin_dir: self.pin_dir.clone(),
            enforcer: self.enforcer.clone(),
            state: self.state.clone(),
            dns: self.dns.clone(),
            log: self.log.state_fn(),
            start_unix: crate::dns::unix_ms_now() / 1000,
            ct_cache: Mutex::new(None),
        });
        tracing::info!(%addr, "metrics served at http://{addr}/metrics");
        *lock(&self.metrics) = Some(tokio::spawn(metrics::serve(listener, src)));
        Ok(())
    }

    /// The DNS service now running (names in events, DNS metrics).
    pub fn set_dns(&self, h: Option<DnsHandle>) {
        *lock(&self.dns) = h;
    }

    /// The state the daemon just wrote (rule names and provenance, reloads).
    pub fn publish(&self, s: &PolicyState) {
        *lock(&self.state) = Some(s.clone());
    }

    /// After a reload (applied or not): reopen the log (logrotate), and on an applied
    /// config take its `[reports]` settings that can change without a restart.
    pub fn reload(&self, new: Option<&ReportsConfig>) {
        self.log.reopen();
        let Some(new) = new else { return };
        let mut cur = lock(&self.cfg);
        if new.metrics_listen != cur.metrics_listen {
            tracing::warn!(
                "[reports] metrics_listen changed: takes effect when the daemon restarts"
            );
        }
        if new.top_denied_entries != cur.top_denied_entries {
            if new.top_denied_entries == 0 {
                tracing::info!("[reports] top_denied_entries = 0: top-denied counting off");
            } else {
                tracing::warn!(
                    "[reports] top_denied_entries changed: counting is on, but the table keeps \
                     the size it was loaded with until `tagwall detach` and a new `tagwall run`"
                );
            }
        }
        if let Err(e) = self
            .enforcer
            .dataplane_mut()
            .set_report_config(new.datapath(self.cpus))
        {
            tracing::error!("writing the report settings into the datapath: {e}");
            return;
        }
        if new.denied_log != cur.denied_log {
            tracing::info!(
                path = ?new.denied_log.as_ref().map(|p| p.display().to_string()),
                "denied-flow log switched"
            );
        }
        self.log.set_path(new.denied_log.clone());
        let listen = cur.metrics_listen;
        *cur = new.clone();
        // The listener stays as it is until a restart.
        cur.metrics_listen = listen;
    }

    /// Stop serving metrics, drain the ring once more, stop the reader.
    pub fn stop(self) {
        if let Some(t) = lock(&self.metrics).take() {
            t.abort();
        }
        self.log.stop();
    }
}
