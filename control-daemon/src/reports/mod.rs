//! Reports and observability (see `docs/reports.md`):
//!
//! - [`events`]: denied-flow events from the datapath's ring buffer, written as JSON
//!   lines (`[reports] denied_log`), with their losses counted;
//! - [`maps`]: the top-denied table, event counters and map occupancy;
//! - [`report`]: `tagwall report` (per requirement and rule, drops, top denied,
//!   coverage, suggestions; totals and deltas);
//! - [`metrics`]: Prometheus text on `[reports] metrics_listen`;
//! - [`daemon`]: how `tagwall run` starts, reconfigures and stops all of it.

pub mod config;
pub mod daemon;
pub mod events;
pub mod maps;
pub mod metrics;
pub mod report;
pub mod time;

pub use config::ReportsConfig;
pub use daemon::Observability;
