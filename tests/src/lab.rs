//! A small lab of network namespaces, shared by the end-to-end test and the demo:
//!
//! ```text
//!  client ──veth── gateway (tagwall XDP on its client-facing veth) ──veth── inet-a
//!                                                                └─veth── inet-b
//! ```
//!
//! The gateway forwards; tagwall runs there as the real `tagwall` binary with a
//! private bpffs and state directory. Echo servers and probes use real sockets opened
//! inside the namespaces. Everything is removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::{Bpffs, ChildGuard, Netns, spawn_dnsmasq, unique, veth, wait_for};

pub const CLIENT_V4: &str = "10.77.1.2";
pub const GW_V4: &str = "10.77.1.1";
pub const INET_A_V4: &str = "10.77.2.2";
pub const INET_B_V4: &str = "10.77.3.2";
pub const CLIENT_V6: &str = "fd77:1::2";
pub const GW_V6: &str = "fd77:1::1";
pub const INET_A_V6: &str = "fd77:2::2";
pub const INET_B_V6: &str = "fd77:3::2";

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub struct Lab {
    // Field order is drop order: daemons and sockets go before the namespaces.
    pub client: Netns,
    pub gw: Netns,
    pub inet_a: Netns,
    pub inet_b: Netns,
    /// The gateway's client-facing interface, where tagwall attaches.
    pub gw_in: String,
    /// The gateway's interfaces toward inet-a and inet-b (where return traffic
    /// arrives; `--also-iface` puts the datapath there too).
    pub gw_a: String,
    pub gw_b: String,
    /// The client's interface (host mode attaches here).
    pub c0: String,
    /// inet-a's end of its veth to the gateway.
    pub a0: String,
    pub bpffs: Bpffs,
    pub dir: TempDir,
}

impl Lab {
    /// Build the namespaces, links, addresses and routes; IPv4 and IPv6 forwarding on
    /// the gateway.
    #[must_use]
    pub fn new() -> Self {
        crate::netns::require_root();
        let (client, gw, inet_a, inet_b) = (
            Netns::new("c"),
            Netns::new("g"),
            Netns::new("a"),
            Netns::new("b"),
        );
        let (c0, gw_in) = (unique("c0"), unique("gi"));
        let (ga, a0) = (unique("ga"), unique("a0"));
        let (gb, b0) = (unique("gb"), unique("b0"));
        veth(
            &client,
            &c0,
            &[&format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64")],
            &gw,
            &gw_in,
            &[&format!("{GW_V4}/24"), &format!("{GW_V6}/64")],
        );
        veth(
            &gw,
            &ga,
            &["10.77.2.1/24", "fd77:2::1/64"],
            &inet_a,
            &a0,
            &[&format!("{INET_A_V4}/24"), &format!("{INET_A_V6}/64")],
        );
        veth(
            &gw,
            &gb,
            &["10.77.3.1/24", "fd77:3::1/64"],
            &inet_b,
            &b0,
            &[&format!("{INET_B_V4}/24"), &format!("{INET_B_V6}/64")],
        );
        client.ip(&["route", "add", "default", "via", GW_V4]);
        client.ip(&["-6", "route", "add", "default", "via", GW_V6]);
        inet_a.ip(&["route", "add", "default", "via", "10.77.2.1"]);
        inet_a.ip(&["-6", "route", "add", "default", "via", "fd77:2::1"]);
        inet_b.ip(&["route", "add", "default", "via", "10.77.3.1"]);
        inet_b.ip(&["-6", "route", "add", "default", "via", "fd77:3::1"]);
        gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        gw.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Self {
            client,
            gw,
            inet_a,
            inet_b,
            gw_in,
            gw_a: ga,
            gw_b: gb,
            c0,
            a0,
            bpffs: Bpffs::new(),
            dir: TempDir::new("lab"),
        }
    }

    /// Give inet-a another address (e.g. one inside a real service tag) and route it
    /// from the gateway; traffic stays inside the lab.
    pub fn add_inet_a_address(&self, ip: &str) {
        let v6 = ip.contains(':');
        let host = format!("{ip}/{}", if v6 { 128 } else { 32 });
        let mut args = vec!["addr", "add", &host, "dev", &self.a0];
        if v6 {
            args.push("nodad");
        }
        self.inet_a.ip(&args);
        let via = if v6 { INET_A_V6 } else { INET_A_V4 };
        self.gw.ip(&[
            if v6 { "-6" } else { "-4" },
            "route",
            "add",
            &host,
            "via",
            via,
        ]);
    }

    /// Start dnsmasq on inet-b ([`INET_B_V4`]:53) serving `records` (name, IPv4
    /// address, TTL) and nothing else; returns once the first record resolves.
    ///
    /// # Panics
    /// If no record is given or dnsmasq does not answer within 10 s (its log is in the
    /// message).
    #[must_use]
    pub fn start_dnsmasq(&self, records: &[(&str, &str, u32)]) -> ChildGuard {
        let (probe_name, probe_addr, _) = *records.first().expect("at least one record");
        let mut args = vec![format!("--listen-address={INET_B_V4}")];
        args.extend(
            records
                .iter()
                .map(|(name, addr, ttl)| format!("--host-record={name},{addr},{ttl}")),
        );
        spawn_dnsmasq(
            &self.inet_b,
            &self.dir.path.join("dnsmasq.log"),
            &args,
            (INET_B_V4, probe_name, probe_addr),
        )
    }

    /// Write a policy file into the lab directory.
    #[must_use]
    pub fn write_policy(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.dir.path.join(name);
        std::fs::write(&p, toml).expect("write policy");
        p
    }

    fn location_args(&self) -> Vec<String> {
        self.location_args_for(&self.gw_in)
    }

    fn location_args_for(&self, iface: &str) -> Vec<String> {
        vec![
            "--iface".into(),
            iface.to_owned(),
            "--bpffs".into(),
            self.bpffs.path.display().to_string(),
            "--state-dir".into(),
            self.dir.path.join("state").display().to_string(),
        ]
    }

    /// Start `tagwall run` in the gateway namespace and wait until it has attached.
    ///
    /// # Panics
    /// If it exits or does not attach within 30 s (its log is in the message).
    #[must_use]
    pub fn start_tagwall(&self, policy: &Path, extra: &[&str]) -> Daemon {
        self.start_tagwall_in(&self.gw, &self.gw_in, policy, extra)
    }

    /// Start `tagwall run --iface IFACE` in namespace `ns` (e.g. host mode on the
    /// client) and wait until it has attached.
    ///
    /// # Panics
    /// As [`Lab::start_tagwall`].
    #[must_use]
    pub fn start_tagwall_in(
        &self,
        ns: &Netns,
        iface: &str,
        policy: &Path,
        extra: &[&str],
    ) -> Daemon {
        let log = self.dir.path.join(format!("{}.log", unique("d")));
        let mut cmd = ns.cmd(tagwall_bin().to_str().expect("utf-8 path"));
        cmd.arg("run")
            .args(self.location_args_for(iface))
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .env("TAGWALL_LOG", "info");
        let mut guard = ChildGuard::spawn(cmd, &log);
        let attached = wait_for(Duration::from_secs(30), || {
            if let Some(st) = guard.exited() {
                panic!(
                    "tagwall run exited early ({st}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&log)
                .ok()
                .filter(|s| s.contains("tagwall ready"))
        });
        assert!(
            attached.is_some(),
            "tagwall did not attach within 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Daemon { guard, log }
    }

    /// `tagwall run` with `policy` (and `extra` flags) in the gateway namespace,
    /// expected to fail before attaching: its stderr.
    ///
    /// # Panics
    /// If it cannot be spawned or succeeds.
    #[must_use]
    pub fn run_rejected(&self, policy: &Path, extra: &[&str]) -> String {
        let out = self
            .gw
            .cmd(tagwall_bin().to_str().expect("utf-8 path"))
            .arg("run")
            .args(self.location_args())
            .arg("--policy")
            .arg(policy)
            .args(extra)
            .output()
            .expect("spawn tagwall");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "tagwall run accepted it: {err}");
        err
    }

    /// Run a `tagwall` subcommand that takes the location flags (e.g. `counters`).
    #[must_use]
    pub fn tagwall(&self, verb: &str, extra: &[&str]) -> std::process::Output {
        let out = Command::new(tagwall_bin())
            .arg(verb)
            .args(self.location_args())
            .args(extra)
            .output()
            .expect("spawn tagwall");
        assert!(
            out.status.success(),
            "tagwall {verb} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Run a `tagwall` subcommand for `iface` and return its output, whatever the
    /// exit status.
    #[must_use]
    pub fn tagwall_raw(&self, iface: &str, verb: &str, extra: &[&str]) -> std::process::Output {
        Command::new(tagwall_bin())
            .arg(verb)
            .args(self.location_args_for(iface))
            .args(extra)
            .output()
            .expect("spawn tagwall")
    }

    /// `tagwall counters --format json` of `iface`'s instance, parsed.
    #[must_use]
    pub fn counters_of(&self, iface: &str) -> serde_json::Value {
        let out = self.tagwall_raw(iface, "counters", &["--format", "json"]);
        assert!(
            out.status.success(),
            "tagwall counters failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("counters JSON")
    }

    /// `tagwall counters --format json`, parsed.
    #[must_use]
    pub fn counters(&self) -> serde_json::Value {
        let out = self.tagwall("counters", &["--format", "json"]);
        serde_json::from_slice(&out.stdout).expect("counters JSON")
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `tagwall run`.
pub struct Daemon {
    pub guard: ChildGuard,
    pub log: PathBuf,
}

impl Daemon {
    /// SIGKILL, no chance to clean up; returns its log.
    pub fn kill9(mut self) -> String {
        self.guard.kill9();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; returns its log. Panics if it does not exit cleanly.
    pub fn stop(mut self) -> String {
        let st = self.guard.terminate(Duration::from_secs(10));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        match st {
            Some(st) if st.success() => log,
            other => panic!("tagwall did not stop cleanly ({other:?}):\n{log}"),
        }
    }
}

/// The `tagwall` binary, built on demand by cargo (a no-op when up to date), so the
/// test always drives the current code.
#[must_use]
pub fn tagwall_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TAGWALL_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        // The same profile as the caller (the benchmarks measure a release daemon).
        let profile: &[&str] = if cfg!(debug_assertions) {
            &[]
        } else {
            &["--release"]
        };
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "tagwall", "--bin", "tagwall"])
            .args(profile)
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--message-format", "json"])
            .output()
            .expect("spawn cargo build");
        assert!(
            out.status.success(),
            "cargo build -p tagwall failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "tagwall")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no tagwall executable")
    })
    .clone()
}

/// The lab's own Service Tags file (same schema as Microsoft's): the tags the demo's
/// catalog selection (workspace, compute; westus2) uses, AzureMachineLearning on
/// inet-a's network, the rest on documentation ranges.
#[must_use]
pub fn lab_service_tags() -> String {
    let tags = [
        ("AzureMachineLearning", "", "10.77.2.0/24", "fd77:2::/64"),
        (
            "AzureActiveDirectory",
            "",
            "192.0.2.0/28",
            "2001:db8:1::/48",
        ),
        (
            "AzureResourceManager",
            "",
            "192.0.2.16/28",
            "2001:db8:2::/48",
        ),
        (
            "Storage.WestUS2",
            "westus2",
            "192.0.2.32/28",
            "2001:db8:3::/48",
        ),
        (
            "AzureFrontDoor.Frontend",
            "",
            "192.0.2.48/28",
            "2001:db8:4::/48",
        ),
        (
            "AzureKeyVault.WestUS2",
            "westus2",
            "192.0.2.64/28",
            "2001:db8:5::/48",
        ),
        (
            "AzureContainerRegistry.WestUS2",
            "westus2",
            "192.0.2.80/28",
            "2001:db8:6::/48",
        ),
        (
            "MicrosoftContainerRegistry",
            "",
            "192.0.2.96/28",
            "2001:db8:7::/48",
        ),
        (
            "MicrosoftContainerRegistry.WestUS2",
            "westus2",
            "192.0.2.112/28",
            "2001:db8:8::/48",
        ),
        (
            "BatchNodeManagement",
            "",
            "192.0.2.128/28",
            "2001:db8:9::/48",
        ),
        (
            "BatchNodeManagement.WestUS2",
            "westus2",
            "192.0.2.144/28",
            "2001:db8:a::/48",
        ),
        ("AzureMonitor", "", "192.0.2.160/28", "2001:db8:b::/48"),
        (
            "AzureFrontDoor.FirstParty",
            "",
            "192.0.2.176/28",
            "2001:db8:c::/48",
        ),
    ];
    tagwall::servicetags::lab_file_json("Public", 1, &tags)
}

/// A server thread stopped and joined on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// Connections accepted (TCP) or datagrams received (UDP).
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TCP echo server on `addr` inside `ns`.
#[must_use]
pub fn tcp_echo(ns: &Netns, addr: SocketAddr) -> Server {
    let listener = ns.run(move || TcpListener::bind(addr).expect("bind tcp"));
    listener.set_nonblocking(true).expect("nonblocking");
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, h) = (stop.clone(), hits.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    h.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 2048];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Server {
        addr,
        hits,
        stop,
        thread: Some(thread),
    }
}

/// UDP echo server on `addr` inside `ns`.
#[must_use]
pub fn udp_echo(ns: &Netns, addr: SocketAddr) -> Server {
    let sock = ns.run(move || UdpSocket::bind(addr).expect("bind udp"));
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let (stop, hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (s, h) = (stop.clone(), hits.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                h.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    Server {
        addr,
        hits,
        stop,
        thread: Some(thread),
    }
}

/// Connect from `ns`, send a line, expect it echoed. `Err` says what failed.
///
/// # Errors
/// Connection refused/timed out, or a wrong echo.
pub fn tcp_exchange(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<(), String> {
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let msg = b"hello through tagwall\n";
        s.write_all(msg).map_err(|e| format!("write {to}: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .map_err(|e| format!("read {to}: {e}"))?;
        if back == msg {
            Ok(())
        } else {
            Err(format!("bad echo from {to}: {back:?}"))
        }
    })
}

/// Send `count` datagrams of `len` bytes from `ns`; returns how many echoes came back.
#[must_use]
pub fn udp_exchange(
    ns: &Netns,
    to: SocketAddr,
    count: usize,
    len: usize,
    timeout: Duration,
) -> usize {
    ns.run(move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("literal");
        let s = UdpSocket::bind(bind).expect("bind client udp");
        s.set_read_timeout(Some(timeout)).expect("timeout");
        let payload = vec![0x5a; len];
        let mut echoed = 0;
        for _ in 0..count {
            s.send_to(&payload, to).expect("send_to");
            let mut buf = [0u8; 2048];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                echoed += usize::from(n == len);
            }
        }
        echoed
    })
}

/// A stream of numbered UDP datagrams from a namespace to an echo server, counting
/// the echoes, until stopped.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl UdpStream {
    /// Send one datagram every `interval` from `ns` to `to`.
    #[must_use]
    pub fn start(ns: &Netns, to: SocketAddr, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_name = ns.name.clone();
        let thread = std::thread::spawn(move || {
            crate::netns::enter_netns(&ns_name);
            let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .expect("literal");
            let s = UdpSocket::bind(bind).expect("bind stream socket");
            s.set_read_timeout(Some(Duration::from_millis(1)))
                .expect("timeout");
            tx.send(()).expect("started");
            let (mut sent, mut echoed) = (0u64, 0u64);
            let mut buf = [0u8; 64];
            let mut next = std::time::Instant::now();
            while !st.load(Ordering::Relaxed) {
                if std::time::Instant::now() >= next {
                    let _ = s.send_to(&sent.to_be_bytes(), to);
                    sent += 1;
                    next += interval;
                }
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    echoed += u64::from(n == 8);
                }
            }
            // Collect the echoes still in flight.
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                echoed += u64::from(n == 8);
            }
            (sent, echoed)
        });
        rx.recv().expect("stream started");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop; returns (sent, echoed).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("stream thread")
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
