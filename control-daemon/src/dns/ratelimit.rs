//! Per-client token buckets: `qps` tokens a second, bursts of up to twice that.
//! Clock-injected (`now` is a monotonic time since any origin).

use std::{collections::HashMap, net::IpAddr, time::Duration};

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

/// See the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    max_clients: usize,
}

impl RateLimiter {
    /// `qps == 0`: unlimited. At most `max_clients` buckets are kept; beyond that,
    /// full (idle) buckets are dropped, and sources that still find no room pass
    /// unlimited (so a spoofed flood cannot lock real clients out).
    #[must_use]
    pub fn new(qps: u32, max_clients: usize) -> Self {
        let qps = f64::from(qps);
        Self {
            qps,
            burst: (qps * 2.0).max(1.0),
            buckets: HashMap::new(),
            max_clients: max_clients.max(1),
        }
    }

    /// May `ip` send one more query at `now`?
    pub fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        if self.qps <= 0.0 {
            return true;
        }
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_clients {
            self.gc(now);
            if self.buckets.len() >= self.max_clients {
                return true;
            }
        }
        let (qps, burst) = (self.qps, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_sub(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * qps).min(burst);
        b.last = now.max(b.last);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drop buckets that have refilled completely (their clients are idle).
    pub fn gc(&mut self, now: Duration) {
        let (qps, burst) = (self.qps, self.burst);
        self.buckets
            .retain(|_, b| b.tokens + now.saturating_sub(b.last).as_secs_f64() * qps < burst);
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_qps_and_caps_at_burst() {
        let mut r = RateLimiter::new(10, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Duration::from_secs(100);
        let ok = (0..25).filter(|_| r.allow(a, t0)).count();
        assert_eq!(ok, 20, "burst of 2 x qps");
        assert!(r.allow(b, t0), "other clients are not affected");
        assert!(!r.allow(a, t0));
        // 0.5 s later: 5 more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| r.allow(a, t1)).count(), 5);
        // Long idle: back to the burst, not more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| r.allow(a, t2)).count(), 20);
        r.gc(t2 + Duration::from_secs(10));
        assert!(r.is_empty());
    }

    #[test]
    fn unlimited_and_full_table() {
        let mut r = RateLimiter::new(0, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| r.allow(a, Duration::ZERO)));
        let mut r = RateLimiter::new(1, 1);
        let t = Duration::from_secs(1);
        assert!(r.allow(a, t));
        assert!(r.allow(a, t));
        assert!(!r.allow(a, t));
        // No room for another bucket while a's is in use: b passes unlimited.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..10).all(|_| r.allow(b, t)));
        assert_eq!(r.len(), 1);
    }
}
