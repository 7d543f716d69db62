//! DNS proxy benchmark: added latency per query (proxy vs straight to dnsmasq, the
//! same path through the gateway otherwise) and queries per second, in the
//! [`crate::dnslab`] namespaces. The proxy runs on a current-thread runtime, as in
//! `tagwall run`, with a sink that only counts (the real sink adds a map update per
//! address). Results are Markdown; nothing asserts a time.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use tagwall::dns::{AddressSink, wire};

use crate::dnslab::{DnsLab, GW, UPSTREAM, proxy_config, seed_rules};

/// What to measure.
#[derive(Clone, Debug)]
pub struct DnsBenchOpts {
    /// Sequential queries per latency row.
    pub queries: usize,
    /// Length of each throughput run.
    pub duration: Duration,
    /// Client threads in the throughput runs.
    pub clients: usize,
    /// Queries each client keeps outstanding.
    pub window: usize,
}

impl Default for DnsBenchOpts {
    fn default() -> Self {
        Self {
            queries: 2000,
            duration: Duration::from_secs(3),
            clients: 4,
            window: 8,
        }
    }
}

/// Latency percentiles of one path, microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    pub label: String,
    pub n: usize,
    pub lost: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

/// Sustained rate of one path.
#[derive(Clone, Debug)]
pub struct Rate {
    pub label: String,
    pub qps: f64,
    pub lost: u64,
}

#[derive(Clone, Debug)]
pub struct DnsBenchReport {
    pub opts: DnsBenchOpts,
    pub latency: Vec<Latency>,
    pub rate: Vec<Rate>,
    /// `allow` calls the proxy made (one per address of each matched answer).
    pub allows: u64,
}

struct CountingSink(AtomicU64);

impl AddressSink for CountingSink {
    fn allow(&self, _: std::net::IpAddr, _: &[u32]) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn revoke(&self, _: std::net::IpAddr, _: &[u32]) -> Result<(), String> {
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sequential queries, the paths interleaved so drift hits them equally.
fn latencies(lab: &DnsLab, paths: &[(String, SocketAddr, String)], n: usize) -> Vec<Latency> {
    let paths = paths.to_vec();
    lab.client.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); paths.len()];
        let mut lost = vec![0usize; paths.len()];
        let mut buf = [0u8; 4096];
        // Warm up (ARP, caches).
        for (_, to, name) in &paths {
            let q = wire::build_query(1, name, RecordType::A, false);
            let _ = s.send_to(&q, to);
            let _ = s.recv_from(&mut buf);
        }
        for i in 0..n {
            for (k, (_, to, name)) in paths.iter().enumerate() {
                let id = u16::try_from(i % 65_536).unwrap_or(0);
                let q = wire::build_query(id, name, RecordType::A, false);
                let t = Instant::now();
                s.send_to(&q, to).expect("send");
                loop {
                    match s.recv_from(&mut buf) {
                        Ok((m, _)) if m >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                            samples[k].push(t.elapsed().as_secs_f64() * 1e6);
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            lost[k] += 1;
                            break;
                        }
                    }
                }
            }
        }
        paths
            .iter()
            .zip(samples)
            .zip(lost)
            .map(|(((label, _, _), mut v), lost)| {
                v.sort_by(f64::total_cmp);
                Latency {
                    label: label.clone(),
                    n: v.len(),
                    lost,
                    p50: percentile(&v, 0.5),
                    p90: percentile(&v, 0.9),
                    p99: percentile(&v, 0.99),
                    mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
                }
            })
            .collect()
    })
}

/// `clients` threads, each keeping `window` queries outstanding for `duration`.
fn rate(lab: &DnsLab, to: SocketAddr, name: &str, o: &DnsBenchOpts) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|sc| {
        for c in 0..o.clients {
            let (done, lost, name) = (done.clone(), lost.clone(), name.to_owned());
            let (window, duration) = (o.window, o.duration);
            sc.spawn(move || {
                lab.client.run(move || {
                    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .expect("timeout");
                    let q = wire::build_query(
                        u16::try_from(c).unwrap_or(0),
                        &name,
                        RecordType::A,
                        false,
                    );
                    let mut buf = [0u8; 4096];
                    let mut outstanding = 0;
                    let end = Instant::now() + duration;
                    while Instant::now() < end {
                        while outstanding < window {
                            s.send_to(&q, to).expect("send");
                            outstanding += 1;
                        }
                        match s.recv_from(&mut buf) {
                            Ok(_) => {
                                outstanding -= 1;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                                outstanding = 0;
                            }
                        }
                    }
                });
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        lost.load(Ordering::Relaxed),
    )
}

/// Set up the lab, measure, tear down.
///
/// # Panics
/// If the lab cannot be set up (not root, dnsmasq missing).
#[must_use]
pub fn run(o: &DnsBenchOpts) -> DnsBenchReport {
    let mut lab = DnsLab::new();
    lab.start_dnsmasq(300, &[]);
    let sink = Arc::new(CountingSink(AtomicU64::new(0)));
    let dns = lab.start_dns(proxy_config(), seed_rules(), sink.clone(), None);
    let direct: SocketAddr = SocketAddr::new(UPSTREAM.parse().expect("literal"), 53);
    let proxy: SocketAddr = SocketAddr::new(GW.parse().expect("literal"), 53);
    let paths = vec![
        (
            "direct to dnsmasq".to_owned(),
            direct,
            "pypi.org.".to_owned(),
        ),
        (
            "proxy, matched name (record + allow)".to_owned(),
            proxy,
            "pypi.org.".to_owned(),
        ),
        (
            "proxy, unmatched name".to_owned(),
            proxy,
            "other.example.".to_owned(),
        ),
    ];
    let latency = latencies(&lab, &paths, o.queries);
    let mut rates = Vec::new();
    for (label, to, name) in &paths {
        let (qps, lost) = rate(&lab, *to, name, o);
        rates.push(Rate {
            label: label.clone(),
            qps,
            lost,
        });
    }
    drop(dns);
    DnsBenchReport {
        opts: o.clone(),
        latency,
        rate: rates,
        allows: sink.0.load(Ordering::Relaxed),
    }
}

impl DnsBenchReport {
    /// The report section, Markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## DNS proxy\n");
        let _ = writeln!(
            s,
            "Method: dnsmasq (local zone) in an upstream namespace, the proxy in a gateway namespace (current-thread runtime, counting sink), a client namespace; UDP queries. Latency: {} sequential queries per row, rows interleaved; \"direct\" is routed through the same gateway. Rate: {} clients x {} outstanding for {:.0} s per row.\n",
            self.opts.queries,
            self.opts.clients,
            self.opts.window,
            self.opts.duration.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "| path | queries | lost | p50 µs | p90 µs | p99 µs | mean µs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for l in &self.latency {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                l.label, l.n, l.lost, l.p50, l.p90, l.p99, l.mean
            );
        }
        if let Some(d) = self.latency.first() {
            let _ = writeln!(s);
            for l in &self.latency[1..] {
                let _ = writeln!(
                    s,
                    "- added by the proxy ({}): p50 {:+.0} µs, p99 {:+.0} µs",
                    l.label,
                    l.p50 - d.p50,
                    l.p99 - d.p99
                );
            }
        }
        let _ = writeln!(s, "\n| path | queries/s | lost |");
        let _ = writeln!(s, "|---|---:|---:|");
        for r in &self.rate {
            let _ = writeln!(s, "| {} | {:.0} | {} |", r.label, r.qps, r.lost);
        }
        let _ = writeln!(s, "\n`allow` calls during the run: {}", self.allows);
        s
    }
}
