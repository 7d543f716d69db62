//! FQDN enforcement: host-name rules become allowed addresses through DNS.
//!
//! Two ways in, one table:
//! - **resolver** ([`config::DnsMode::Resolver`]): the daemon resolves every exact
//!   host-name rule itself (A and AAAA, CNAME chains followed) and re-resolves when
//!   the answer expires. Wildcards cannot be enumerated and stay denied. Clients use
//!   their own DNS, so a CDN may hand them addresses the daemon has not seen.
//! - **proxy** ([`config::DnsMode::Proxy`]): clients use the gateway as their DNS
//!   server. For every answer whose name (or any name of its CNAME chain) matches a
//!   rule, each A/AAAA address is recorded and [`AddressSink::allow`]ed *before* the
//!   answer leaves, so the client's first packet to the address is already allowed.
//!   Exact and wildcard rules both work.
//!
//! Both feed the [`table::AddressTable`]: expiry = TTL clamped to `min_ttl..max_ttl`
//! plus `grace`, the last good answer kept up to `max_stale` while refreshes fail, at
//! most `max_ips_per_name` per name, and an address revoked for a rule only when no
//! live name of that rule maps to it and no tracked connection uses it.
//!
//! The daemon calls [`serve`] (or [`DnsService::start`] for a handle), passing the
//! `[dns]` config, the policy's [`crate::policy::FqdnRule`]s, its [`AddressSink`] on
//! the real maps, and the state file ([`state_path`]) that `tagwall dns` reads.
//! See `docs/dns.md` for the guarantees and limits.

pub mod config;
pub mod matcher;
mod proxy;
pub mod ratelimit;
pub mod report;
mod resolver;
mod service;
pub mod sink;
pub mod stats;
pub mod table;
pub mod wire;

pub use config::{DnsConfig, DnsConfigError, DnsMode, Tuning, Unmatched};
pub use matcher::Matcher;
pub use report::{DnsState, state_path};
pub use service::{Clock, DnsError, DnsHandle, DnsService, serve, unix_ms_now};
pub use sink::{AddressSink, RecordingSink, SinkEvent, SinkOp};
pub use stats::StatsSnapshot;
pub use table::{AddressTable, InUse, TableConfig};
