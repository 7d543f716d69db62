//! Where resolved addresses go: the datapath (implemented by the daemon on the real
//! maps) or, in tests, a [`RecordingSink`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

/// Where resolved addresses go. `allow` must have programmed the datapath when it
/// returns (the proxy answers only after it returns). Implementations are cheap to call
/// repeatedly.
///
/// Semantics the DNS module relies on, per address:
/// - `allow(addr, ids)`: afterwards `addr` is allowed for at least the rules `ids`
///   (each with that rule's protocol and ports). It adds; it never removes other rule
///   ids of `addr`. The DNS module passes every rule id that is live for `addr` at the
///   time of the call, so an implementation that *replaces* the set is also correct.
///   Called again for addresses that are already allowed (every matching answer).
/// - `revoke(addr, ids)`: afterwards `addr` is no longer allowed for the rules `ids`;
///   other rule ids of `addr` stay. The DNS module never revokes an id that is still
///   live for `addr` through another name.
///
/// Both are called with the address table locked, so calls are never concurrent with
/// each other and never reordered against the table's view. Keep them quick (a map
/// update, not a network round trip).
pub trait AddressSink: Send + Sync {
    /// # Errors
    /// Why the datapath could not be programmed (the proxy then answers SERVFAIL).
    fn allow(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String>;
    /// # Errors
    /// Why the entry could not be removed (the DNS module retries on its next sweep).
    fn revoke(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String>;
}

/// What a [`RecordingSink`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkOp {
    Allow,
    Revoke,
}

/// One call to a [`RecordingSink`].
#[derive(Clone, Debug)]
pub struct SinkEvent {
    /// When the call returned (after recording).
    pub at: Instant,
    pub op: SinkOp,
    pub addr: IpAddr,
    pub rule_ids: Vec<u32>,
    /// Whether the call reported success.
    pub ok: bool,
}

/// A test double: records every call with a timestamp and keeps the resulting
/// allowed set. [`RecordingSink::set_failing`] makes calls fail (and records them as
/// failed).
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<SinkEvent>>,
    failing: AtomicBool,
}

impl RecordingSink {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Make every following call fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every call so far, in order.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn events(&self) -> Vec<SinkEvent> {
        self.events.lock().expect("sink lock").clone()
    }

    /// The allowed set the successful calls leave: address -> rule ids.
    #[must_use]
    pub fn allowed(&self) -> BTreeMap<IpAddr, BTreeSet<u32>> {
        let mut out: BTreeMap<IpAddr, BTreeSet<u32>> = BTreeMap::new();
        for e in self.events().iter().filter(|e| e.ok) {
            match e.op {
                SinkOp::Allow => out.entry(e.addr).or_default().extend(&e.rule_ids),
                SinkOp::Revoke => {
                    if let Some(s) = out.get_mut(&e.addr) {
                        for r in &e.rule_ids {
                            s.remove(r);
                        }
                        if s.is_empty() {
                            out.remove(&e.addr);
                        }
                    }
                }
            }
        }
        out
    }

    /// The first successful call of `op` for `addr`, if any.
    #[must_use]
    pub fn first(&self, op: SinkOp, addr: IpAddr) -> Option<SinkEvent> {
        self.events()
            .into_iter()
            .find(|e| e.ok && e.op == op && e.addr == addr)
    }

    fn record(&self, op: SinkOp, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        let ok = !self.failing.load(Ordering::SeqCst);
        self.events.lock().expect("sink lock").push(SinkEvent {
            at: Instant::now(),
            op,
            addr,
            rule_ids: rule_ids.to_vec(),
            ok,
        });
        if ok {
            Ok(())
        } else {
            Err(format!("recording sink set to fail ({op:?} {addr})"))
        }
    }
}

impl AddressSink for RecordingSink {
    fn allow(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        self.record(SinkOp::Allow, addr, rule_ids)
    }

    fn revoke(&self, addr: IpAddr, rule_ids: &[u32]) -> Result<(), String> {
        self.record(SinkOp::Revoke, addr, rule_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_sink_tracks_the_allowed_set() {
        let s = RecordingSink::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        s.allow(a, &[1, 2]).unwrap();
        s.revoke(a, &[1]).unwrap();
        assert_eq!(s.allowed()[&a], BTreeSet::from([2]));
        s.set_failing(true);
        assert!(s.revoke(a, &[2]).is_err());
        assert_eq!(s.allowed()[&a], BTreeSet::from([2]));
        s.set_failing(false);
        s.revoke(a, &[2]).unwrap();
        assert!(s.allowed().is_empty());
        assert_eq!(s.events().len(), 4);
        assert!(s.first(SinkOp::Allow, a).is_some());
    }
}
