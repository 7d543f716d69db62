//! The `[reports]` section of the config.
//!
//! ```toml
//! [reports]
//! denied_log = "/var/log/tagwall/denied.jsonl" # JSON lines of denied flows; default: off
//! events_per_second = 100       # in-kernel rate limit of denied-flow events (all CPUs)
//! events_burst = 1000           # bucket size: events allowed at once after a quiet spell
//! top_denied_entries = 4096     # LRU of top denied destinations (set at first load)
//! metrics_listen = "127.0.0.1:9464" # Prometheus text on GET /metrics; default: off
//! ```

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;
use tagwall_common::reports::{
    DEFAULT_TOP_DENIED_ENTRIES, REPORT_F_EVENTS, REPORT_F_SLOTS, REPORT_F_TOP, ReportConfig,
};

/// Whether the daemon's machine keeps the order the datapath's top-denied slots
/// rely on (`tagwall_common::reports`, "Top denied"): x86-64 makes a CPU's stores
/// visible in program order. A weakly ordered CPU (arm64) could show a reader the
/// old batch added to the table before the slot taken, and the reader would count
/// the batch twice; there each drop goes to the table itself.
pub const SLOTS_ORDER_HOLDS: bool = cfg!(target_arch = "x86_64");

/// Largest accepted rate and burst (events per second / events).
pub const MAX_EVENTS_PER_SECOND: u32 = 1_000_000;
/// Largest accepted `top_denied_entries`.
pub const MAX_TOP_DENIED_ENTRIES: u32 = 1 << 20;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    /// Append one JSON line per denied flow event here (absolute path). `None`: no
    /// events are emitted at all.
    pub denied_log: Option<PathBuf>,
    /// Events per second the datapath may emit, all CPUs together (each CPU gets an
    /// equal share). Drops beyond it are counted as rate-limited, not logged.
    pub events_per_second: u32,
    /// Events that may be emitted at once after a quiet spell (all CPUs together).
    pub events_burst: u32,
    /// Capacity of the top-denied table (LRU: the least recently denied entry goes);
    /// 0 turns the table off (BENCHMARKS.md, "top-denied" rows: what it adds to a
    /// dropped packet, 10-15 ns, or about 40 without the slots). The size is read
    /// when the datapath is first loaded; a restart that adopts it keeps its size.
    pub top_denied_entries: u32,
    /// Serve Prometheus text metrics on `GET /metrics` at this address. `None`: off.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            // Off: a log file is a decision about disk space the operator makes.
            denied_log: None,
            // A flood of drops must not become a flood of log lines.
            events_per_second: 100,
            events_burst: 1000,
            top_denied_entries: DEFAULT_TOP_DENIED_ENTRIES,
            metrics_listen: None,
        }
    }
}

impl ReportsConfig {
    /// What is wrong with the section, as `field: message`.
    ///
    /// # Errors
    /// The first problem.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.denied_log {
            if p.as_os_str().is_empty() {
                return Err(
                    "field `reports.denied_log`: empty path; omit it to turn events off".into(),
                );
            }
            if p.is_relative() {
                return Err(format!(
                    "field `reports.denied_log`: {} is relative; give an absolute path (e.g. /var/log/tagwall/denied.jsonl)",
                    p.display()
                ));
            }
        }
        for (name, v) in [
            ("events_per_second", self.events_per_second),
            ("events_burst", self.events_burst),
        ] {
            if v == 0 || v > MAX_EVENTS_PER_SECOND {
                return Err(format!(
                    "field `reports.{name}`: {v} is out of range (1 to {MAX_EVENTS_PER_SECOND})"
                ));
            }
        }
        if self.top_denied_entries > MAX_TOP_DENIED_ENTRIES {
            return Err(format!(
                "field `reports.top_denied_entries`: {} is out of range (0 to {MAX_TOP_DENIED_ENTRIES}; 0 is off)",
                self.top_denied_entries
            ));
        }
        Ok(())
    }

    /// The datapath's settings for `cpus` CPUs: top-denied counting unless its size
    /// is 0 (with the slots in front of the table where [`SLOTS_ORDER_HOLDS`]),
    /// events when a log is configured (nobody would read them otherwise).
    #[must_use]
    pub fn datapath(&self, cpus: u32) -> ReportConfig {
        let mut flags = 0;
        if self.top_denied_entries > 0 {
            flags |= REPORT_F_TOP;
            if SLOTS_ORDER_HOLDS {
                flags |= REPORT_F_SLOTS;
            }
        }
        if self.denied_log.is_some() {
            flags |= REPORT_F_EVENTS;
        }
        ReportConfig::new(flags, self.events_per_second, self.events_burst, cpus)
    }
}

/// Online CPUs (the ones packets are processed on): the rate limit's divisor.
#[must_use]
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_split_between_cpus_and_burst_holds_at_least_one_event() {
        let rc = ReportConfig::new(REPORT_F_EVENTS, 100, 1000, 2);
        // 50 events/s per CPU: 20 ms of refill per event; 10 s of refill = 500 events.
        assert_eq!(rc.cost_ns, 20_000_000);
        assert_eq!(rc.burst_ns, 10_000_000_000);
        let rc = ReportConfig::new(REPORT_F_EVENTS, 10, 1, 4);
        assert_eq!(rc.burst_ns, rc.cost_ns);
    }

    #[test]
    fn check_names_the_field() {
        let c = ReportsConfig {
            denied_log: Some("denied.jsonl".into()),
            ..ReportsConfig::default()
        };
        assert!(c.check().unwrap_err().contains("reports.denied_log"));
        let c = ReportsConfig {
            events_per_second: 0,
            ..ReportsConfig::default()
        };
        assert!(c.check().unwrap_err().contains("reports.events_per_second"));
        let c = ReportsConfig {
            top_denied_entries: MAX_TOP_DENIED_ENTRIES + 1,
            ..ReportsConfig::default()
        };
        assert!(c.check().unwrap_err().contains("top_denied_entries"));
        let off = ReportsConfig {
            top_denied_entries: 0,
            ..ReportsConfig::default()
        };
        assert!(off.check().is_ok());
        assert_eq!(off.datapath(2).flags, 0);
        assert!(ReportsConfig::default().check().is_ok());
        assert_eq!(
            ReportsConfig::default().datapath(2).flags & !REPORT_F_SLOTS,
            REPORT_F_TOP
        );
    }

    #[test]
    fn slots_only_where_the_order_holds_and_only_with_the_table() {
        let on = ReportsConfig::default().datapath(2).flags;
        assert_eq!(on & REPORT_F_SLOTS != 0, cfg!(target_arch = "x86_64"));
        let off = ReportsConfig {
            top_denied_entries: 0,
            ..ReportsConfig::default()
        };
        assert_eq!(off.datapath(2).flags & REPORT_F_SLOTS, 0);
    }
}
