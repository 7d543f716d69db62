//! A DNS lab: an upstream namespace running dnsmasq with test zones, a gateway
//! namespace running tagwall's DNS service in-process (a thread that entered the
//! namespace, with its own tokio runtime, like `tagwall run`), and a client
//! namespace. Everything is removed on drop; traffic stays inside the namespaces.
//!
//! ```text
//!  client ns               gateway ns                 upstream ns
//!  10.53.1.2, .3  ------  10.53.1.1 | 10.53.0.1  ------  10.53.0.2 (dnsmasq :53)
//!  fd53:1::2      veth    fd53:1::1 | fd53::1     veth   fd53::2
//! ```
//! The gateway forwards IP too, so a client can also query dnsmasq directly (the
//! benchmark's baseline).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tagwall::{
    dns::{AddressSink, DnsConfig, DnsHandle, DnsMode, DnsService, Tuning},
    policy::FqdnRule,
    rules::{Direction, PortRange, Proto},
};

use crate::netns::{ChildGuard, Netns, spawn_dnsmasq, unique, veth};

pub const GW_UP: &str = "10.53.0.1";
pub const UPSTREAM: &str = "10.53.0.2";
pub const GW: &str = "10.53.1.1";
pub const CLIENT: &str = "10.53.1.2";
/// A second address on the client's interface, outside the proxy's `clients`.
pub const OUTSIDER: &str = "10.53.1.3";
pub const GW6: &str = "fd53:1::1";
pub const CLIENT6: &str = "fd53:1::2";
pub const UPSTREAM6: &str = "fd53::2";

/// The test zone: name -> what dnsmasq serves (all A/AAAA under 10.99/16, fd99::/16,
/// 10.98/16).
pub const ZONE_DOC: &str = "pypi.org A 10.99.0.1 AAAA fd99::1; files.pythonhosted.org A 10.99.0.2; \
conda.anaconda.org CNAME mid.cdn.example CNAME x.cdn.example A 10.99.0.5 AAAA fd99::5; \
graph.windows.net A 10.99.0.3; alias.example CNAME graph.windows.net; \
foo.blob.core.windows.net A 10.99.0.4; blob.core.windows.net A 10.99.0.9; \
other.example A 10.99.0.7; big.example 60 x A 10.98.0.1-60";

/// dnsmasq arguments serving [`ZONE_DOC`] with every record's TTL `ttl`.
#[must_use]
pub fn zone_args(ttl: u32) -> Vec<String> {
    let mut v: Vec<String> = [
        "pypi.org,10.99.0.1,fd99::1",
        "files.pythonhosted.org,10.99.0.2",
        "x.cdn.example,10.99.0.5,fd99::5",
        "graph.windows.net,10.99.0.3",
        "foo.blob.core.windows.net,10.99.0.4",
        "blob.core.windows.net,10.99.0.9",
        "other.example,10.99.0.7",
    ]
    .iter()
    .map(|r| format!("--host-record={r},{ttl}"))
    .collect();
    v.extend([
        format!("--cname=conda.anaconda.org,mid.cdn.example,{ttl}"),
        format!("--cname=mid.cdn.example,x.cdn.example,{ttl}"),
        format!("--cname=alias.example,graph.windows.net,{ttl}"),
    ]);
    v.extend((1..=60).map(|i| format!("--host-record=big.example,10.98.0.{i},{ttl}")));
    v
}

/// Host-name rules from `(pattern, rule id)`: outbound TCP 443.
#[must_use]
pub fn fqdn_rules(patterns: &[(&str, u32)]) -> Vec<FqdnRule> {
    patterns
        .iter()
        .map(|(p, id)| FqdnRule {
            rule_id: *id,
            pattern: (*p).to_owned(),
            direction: Direction::Outbound,
            protocol: Proto::TCP,
            ports: vec![PortRange::single(443)],
        })
        .collect()
}

/// The rules most tests use.
#[must_use]
pub fn seed_rules() -> Vec<FqdnRule> {
    fqdn_rules(&[
        ("pypi.org", 1),
        ("files.pythonhosted.org", 2),
        ("*.anaconda.org", 3),
        ("graph.windows.net", 4),
        ("*.blob.core.windows.net", 5),
        ("big.example", 6),
    ])
}

/// A proxy config for the lab: listens on the gateway's client-side v4 and v6
/// addresses, serves [`CLIENT`] and [`CLIENT6`], forwards to dnsmasq; short sweep and
/// state intervals.
#[must_use]
pub fn proxy_config() -> DnsConfig {
    let mut c = DnsConfig::default();
    c.mode = DnsMode::Proxy;
    c.listen = vec![
        SocketAddr::new(GW.parse().expect("literal"), 53),
        SocketAddr::new(GW6.parse().expect("literal"), 53),
    ];
    c.clients = vec![
        format!("{CLIENT}/32").parse().expect("literal"),
        format!("{CLIENT6}/128").parse().expect("literal"),
    ];
    c.upstreams = vec![SocketAddr::new(UPSTREAM.parse().expect("literal"), 53)];
    c.upstream_timeout_ms = 1000;
    c.rate_limit_qps = 0;
    c.tuning = Tuning {
        sweep_interval: Duration::from_millis(100),
        state_interval: Duration::from_millis(200),
        ..Tuning::default()
    };
    c
}

/// See the module documentation.
pub struct DnsLab {
    pub client: Netns,
    pub gw: Netns,
    pub up: Netns,
    pub dir: PathBuf,
    dnsmasq: Option<ChildGuard>,
}

impl DnsLab {
    /// Namespaces, veths, addresses, routes; dnsmasq not started yet.
    #[must_use]
    pub fn new() -> Self {
        crate::netns::require_root();
        let client = Netns::new("c");
        let gw = Netns::new("g");
        let up = Netns::new("u");
        let (c_if, gc_if, gu_if, u_if) = (unique("c"), unique("gc"), unique("gu"), unique("u"));
        veth(
            &client,
            &c_if,
            &[
                &format!("{CLIENT}/24"),
                &format!("{OUTSIDER}/24"),
                &format!("{CLIENT6}/64"),
            ],
            &gw,
            &gc_if,
            &[&format!("{GW}/24"), &format!("{GW6}/64")],
        );
        veth(
            &gw,
            &gu_if,
            &[&format!("{GW_UP}/24"), "fd53::1/64"],
            &up,
            &u_if,
            &[&format!("{UPSTREAM}/24"), &format!("{UPSTREAM6}/64")],
        );
        client.ip(&["route", "add", "default", "via", GW]);
        client.ip(&["-6", "route", "add", "default", "via", GW6]);
        up.ip(&["route", "add", "default", "via", GW_UP]);
        up.ip(&["-6", "route", "add", "default", "via", "fd53::1"]);
        gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        gw.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let dir = std::env::temp_dir().join(unique("dns"));
        std::fs::create_dir_all(&dir).expect("mkdir lab dir");
        Self {
            client,
            gw,
            up,
            dir,
            dnsmasq: None,
        }
    }

    /// Start dnsmasq serving [`zone_args`]`(ttl)` (plus `extra` arguments) on the
    /// upstream's addresses; returns once it answers.
    pub fn start_dnsmasq(&mut self, ttl: u32, extra: &[&str]) {
        self.stop_dnsmasq();
        let mut args = vec![
            "--log-queries".to_owned(),
            format!("--listen-address={UPSTREAM}"),
            format!("--listen-address={UPSTREAM6}"),
            format!("--local-ttl={ttl}"),
        ];
        args.extend(zone_args(ttl));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.dnsmasq = Some(spawn_dnsmasq(
            &self.up,
            &self.dir.join("dnsmasq.log"),
            &args,
            (UPSTREAM, "pypi.org", "10.99.0.1"),
        ));
    }

    /// Kill dnsmasq (the upstream goes dark: queries time out).
    pub fn stop_dnsmasq(&mut self) {
        if let Some(mut g) = self.dnsmasq.take() {
            let _ = g.terminate(Duration::from_secs(5));
        }
    }

    /// dnsmasq's log so far.
    #[must_use]
    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Start tagwall's DNS service in the gateway namespace.
    ///
    /// # Panics
    /// If it does not start.
    #[must_use]
    pub fn start_dns(
        &self,
        cfg: DnsConfig,
        rules: Vec<FqdnRule>,
        sink: Arc<dyn AddressSink>,
        state_file: Option<PathBuf>,
    ) -> DnsGuard {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns = format!("/var/run/netns/{}", self.gw.name);
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                match DnsService::start(cfg, &rules, sink, state_file).await {
                    Ok(svc) => {
                        let _ = ready_tx.send(Ok(svc.handle()));
                        let _ = stop_rx.await;
                        svc.shutdown().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let handle = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => panic!("DNS service did not start: {e}"),
            Err(e) => panic!("DNS service did not report: {e}"),
        };
        DnsGuard {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `dig` in the client namespace (`+tries=1 +time=3` unless given).
    #[must_use]
    pub fn dig(&self, args: &[&str]) -> Dig {
        let out = self
            .client
            .cmd("dig")
            .args(["+tries=1", "+time=3"])
            .args(args)
            .output()
            .expect("spawn dig");
        Dig::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `dig @GW name type` (+ extra args) from the client.
    #[must_use]
    pub fn ask(&self, name: &str, qtype: &str, extra: &[&str]) -> Dig {
        let server = format!("@{GW}");
        let mut a = vec![server.as_str(), name, qtype];
        a.extend_from_slice(extra);
        self.dig(&a)
    }
}

impl Default for DnsLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DnsLab {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn enter(ns_path: &str) {
    let f = std::fs::File::open(ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
    // SAFETY: valid netns fd; setns affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {ns_path}: {}",
        std::io::Error::last_os_error()
    );
}

/// A DNS service running in the gateway; stopped (shutdown, then joined) on drop.
pub struct DnsGuard {
    pub handle: DnsHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DnsGuard {
    /// Shut down and wait.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnsGuard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What dig printed.
#[derive(Clone, Debug, Default)]
pub struct Dig {
    /// NOERROR, REFUSED, SERVFAIL, FORMERR, ... ("" if no answer).
    pub status: String,
    /// Header flags (`qr rd ra tc` ...).
    pub flags: Vec<String>,
    /// Answer records: (owner, ttl, type, data).
    pub answers: Vec<(String, u32, String, String)>,
    pub raw: String,
}

impl Dig {
    #[must_use]
    pub fn parse(out: &str) -> Self {
        let mut d = Self {
            raw: out.to_owned(),
            ..Self::default()
        };
        let mut in_answer = false;
        for line in out.lines() {
            if let Some(i) = line.find("status: ") {
                d.status = line[i + 8..]
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
            }
            if let Some(i) = line.find(";; flags: ") {
                d.flags = line[i + 10..]
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            if line.starts_with(";; ANSWER SECTION") {
                in_answer = true;
                continue;
            }
            if in_answer {
                if line.trim().is_empty() || line.starts_with(";;") {
                    in_answer = false;
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 5 {
                    d.answers.push((
                        f[0].trim_end_matches('.').to_ascii_lowercase(),
                        f[1].parse().unwrap_or(0),
                        f[3].to_owned(),
                        f[4..].join(" "),
                    ));
                }
            }
        }
        d
    }

    /// A and AAAA data of the answer.
    #[must_use]
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.answers
            .iter()
            .filter(|a| a.2 == "A" || a.2 == "AAAA")
            .filter_map(|a| a.3.parse().ok())
            .collect()
    }

    #[must_use]
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// Send `payload` over UDP from namespace `ns` (optionally from `src`) to `server`
/// and wait up to `timeout` for a datagram back: (when it arrived, its bytes).
#[must_use]
pub fn udp_query(
    ns: &Netns,
    src: Option<IpAddr>,
    server: SocketAddr,
    payload: Vec<u8>,
    timeout: Duration,
) -> Option<(Instant, Vec<u8>)> {
    ns.run(move || {
        let bind: SocketAddr = match (src, server.is_ipv4()) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, true) => "0.0.0.0:0".parse().expect("literal"),
            (None, false) => "[::]:0".parse().expect("literal"),
        };
        let s = UdpSocket::bind(bind).expect("bind client socket");
        s.set_read_timeout(Some(timeout)).expect("timeout");
        s.send_to(&payload, server).expect("send query");
        let mut buf = vec![0u8; 65_535];
        match s.recv_from(&mut buf) {
            Ok((n, _)) => Some((Instant::now(), buf[..n].to_vec())),
            Err(_) => None,
        }
    })
}

/// Send a length-prefixed message over TCP and read one answer (`None`: closed or
/// timed out).
#[must_use]
pub fn tcp_query(
    ns: &Netns,
    server: SocketAddr,
    payload: Vec<u8>,
    timeout: Duration,
) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&server, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut msg = u16::try_from(payload.len()).ok()?.to_be_bytes().to_vec();
        msg.extend_from_slice(&payload);
        s.write_all(&msg).ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).ok()?;
        Some(buf)
    })
}

/// `tagwall ARGS` (in the test's own namespace), output.
#[must_use]
pub fn tagwall(args: &[&str]) -> std::process::Output {
    Command::new(crate::lab::tagwall_bin())
        .args(args)
        .output()
        .expect("spawn tagwall")
}
