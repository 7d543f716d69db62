//! Network namespaces, veth pairs and bpffs mounts that tests create and always
//! remove (RAII guards, cleanup in `Drop`). Names carry the process id and a counter,
//! so parallel tests never collide. Traffic only ever goes to addresses inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique name: `tw<pid % 10000><seq><tag>` (interface names are limited to 15
/// bytes).
#[must_use]
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let s = format!("tw{}{}{tag}", std::process::id() % 10_000, n);
    assert!(s.len() <= 15, "name too long for an interface: {s}");
    s
}

/// Fail loudly (never skip) when not root: kernel tests are real tests.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kernel tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run `cargo xtask test` as root"
    );
}

/// Run a command; panic with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A command inside the namespace.
    #[must_use]
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run a command inside; panic on failure.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Run `f` on a thread that has entered this namespace (sockets it opens live here).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_netns(&name);
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

/// Move the calling thread into network namespace `name`.
///
/// # Panics
/// If the namespace cannot be opened or entered.
pub fn enter_netns(name: &str) {
    let path = format!("/var/run/netns/{name}");
    let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: valid netns fd; setns affects only this thread.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Create a veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), addresses assigned, up.
pub fn veth(ns_a: &Netns, a: &str, addrs_a: &[&str], ns_b: &Netns, b: &str, addrs_b: &[&str]) {
    sh(&[
        "ip", "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ]);
    for (ns, dev, addrs) in [(ns_a, a, addrs_a), (ns_b, b, addrs_b)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// A private bpffs mount in a temporary directory, unmounted and removed on drop.
/// (`ip netns exec` hides /sys/fs/bpf, so tests use their own.)
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    #[must_use]
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique("bpf"));
        std::fs::create_dir_all(&path).expect("mkdir bpffs dir");
        sh(&[
            "mount",
            "-t",
            "bpf",
            "bpf",
            path.to_str().expect("utf-8 path"),
        ]);
        Self { path }
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub child: Option<Child>,
}

impl ChildGuard {
    /// Spawn with stdout/stderr captured to files under `log_dir` (read by [`Self::logs`]).
    pub fn spawn(mut cmd: Command, log: &Path) -> Self {
        let out = File::create(log).expect("create log file");
        let err = out.try_clone().expect("dup log file");
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Self { child: Some(child) }
    }

    /// SIGTERM and wait up to `timeout`; returns the exit status if it exited.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Has it exited already?
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start dnsmasq in `ns`: foreground, no config file, resolv.conf, hosts file or
/// cache, logging to `log`, bound to the `--listen-address`es among `args` (which
/// also carry what it serves). Returns once `@server` answers `probe` with an answer
/// containing `expect`.
///
/// # Panics
/// If dnsmasq does not answer within 10 s (its log is in the message).
#[must_use]
pub fn spawn_dnsmasq(
    ns: &Netns,
    log: &Path,
    args: &[String],
    (server, probe, expect): (&str, &str, &str),
) -> ChildGuard {
    let mut cmd = ns.cmd("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        "--cache-size=0",
    ])
    .args(args);
    let guard = ChildGuard::spawn(cmd, log);
    let up = wait_for(Duration::from_secs(10), || {
        let out = ns
            .cmd("dig")
            .args([
                &format!("@{server}"),
                probe,
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(expect)
            .then_some(())
    });
    assert!(
        up.is_some(),
        "dnsmasq did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    guard
}

/// Poll `f` until it returns `Some` or `timeout` passes (for readiness, not timing).
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Turn on GRO (legacy ethtool ioctl): it gives veth a NAPI receive path, which
/// XDP frames sent to it (XDP_TX from its peer, or XDP_REDIRECT to its peer) need
/// when no XDP program is attached on the receiving side.
///
/// # Errors
/// The ioctl's error.
pub fn set_gro(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    ethtool_set(ns, dev, ETHTOOL_SGRO, 1)
}

/// Turn transmit checksum offload off: the packets `dev` sends carry complete
/// checksums. On veth a locally generated TCP/UDP packet otherwise carries only the
/// pseudo-header sum (CHECKSUM_PARTIAL), which the stack completes on forwarding but
/// an XDP redirect (a frame, no skb metadata) does not; frames from a real wire are
/// always complete.
///
/// # Errors
/// The ioctl's error.
pub fn tx_checksum_off(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    ethtool_set(ns, dev, ETHTOOL_STXCSUM, 0)
}

const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// One legacy ethtool "set value" ioctl (`struct ethtool_value`) on `dev` in `ns`.
fn ethtool_set(ns: &Netns, dev: &str, cmd: u32, value: u32) -> anyhow::Result<()> {
    let dev = dev.to_owned();
    ns.run(move || -> anyhow::Result<()> {
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        let mut val: [u32; 2] = [cmd, value];
        // SAFETY: plain socket for the ioctl, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: zeroed ifreq with a NUL-terminated name and a pointer to `val`,
        // which outlives the call.
        let rc = unsafe {
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
                *d = s as libc::c_char;
            }
            ifr.ifr_ifru.ifru_data = val.as_mut_ptr().cast();
            let rc = libc::ioctl(fd, SIOCETHTOOL, &mut ifr);
            libc::close(fd);
            rc
        };
        anyhow::ensure!(
            rc == 0,
            "ethtool command {cmd:#x} on {dev}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })
}
