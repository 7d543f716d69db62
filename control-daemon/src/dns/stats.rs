//! Counters of the DNS proxy and resolver (lock-free; a snapshot is serializable and
//! goes into the state file).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct StatsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Stats {
            #[must_use]
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl StatsSnapshot {
            /// `(name, value)` pairs in declaration order (for tables).
            #[must_use]
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Messages received by the proxy (UDP datagrams and TCP messages).
    queries,
    /// Of which over TCP.
    tcp_queries,
    /// Upstream answers relayed to clients (any response code).
    answered,
    /// REFUSED: the source is not in `clients`.
    refused_client,
    /// REFUSED: no rule matches the name and `unmatched = "refuse"`.
    refused_unmatched,
    /// REFUSED or NOTIMP: well-formed but not served (class, zone transfer, opcode).
    refused_other,
    /// Malformed queries (FORMERR sent when the header allows it, else dropped).
    malformed,
    /// Answers where the query name or a CNAME-chain name matched a rule.
    matched,
    /// Answers where nothing matched.
    unmatched,
    /// Upstream failures (timeout, connection, bad answer) per upstream attempt.
    upstream_errors,
    /// Of which timeouts.
    upstream_timeouts,
    /// Datagrams from the upstream that were not the awaited answer (ignored).
    upstream_mismatched,
    /// SERVFAIL sent to clients (all upstreams failed, or the datapath refused an allow).
    servfail,
    /// Truncated (TC) answers passed to clients.
    truncated,
    /// Dropped: over the client's rate limit.
    rate_limited,
    /// Dropped: too many queries or TCP connections in flight.
    busy,
    /// Successful `allow` calls.
    sink_allows,
    /// Successful `revoke` calls.
    sink_revokes,
    /// Failed `allow`/`revoke` calls.
    sink_errors,
    /// Resolver lookups (one per name and record type).
    resolver_lookups,
    /// Resolver lookups that failed (not counting "no such name/record").
    resolver_failures,
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
