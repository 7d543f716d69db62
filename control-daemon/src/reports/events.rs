//! Denied-flow events: decoding the datapath's `EVENTS` ring buffer and writing them
//! as JSON lines (`[reports] denied_log`).
//!
//! One line per event, with the fields of Azure Firewall's network-rule log
//! (`AZFWNetworkRule`): time, source, source port, destination, destination port,
//! protocol, action, rule, plus tagwall's direction, reason, host name and size.
//! See `docs/reports.md` for the schema.
//!
//! The reader is a thread of its own, so a slow disk delays neither the DNS proxy
//! (which shares the daemon's async runtime) nor, ever, the datapath: the kernel side
//! never waits, it counts what it could not hand over (`EVENT_STATS`). What the
//! reader could not write is counted here (`write_errors`), never dropped silently.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, DIR_EGRESS},
    policy::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP},
    reports::DenyEvent,
    verdict::reason_name,
};

use super::{maps::key_addr, time::WallClock};

/// Schema of the events state file (`events.json` beside `policy.json`).
pub const STATE_SCHEMA: &str = "tagwall.events/v1";

/// A decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub time_ns: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub reason: u8,
    /// `ACTION_DROP` or `ACTION_AUDIT_PASS`.
    pub action: u8,
    pub len: u32,
}

impl Event {
    /// The remote end, the address a rule names: destination outbound, source
    /// inbound.
    #[must_use]
    pub fn remote(&self) -> IpAddr {
        if self.dir == DIR_EGRESS {
            self.dst
        } else {
            self.src
        }
    }
}

/// Decode one ring record; `None` if its size is not an event's.
#[must_use]
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() != size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: the length matches and DenyEvent is plain data (any bit pattern).
    let e: DenyEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let v6 = e.v6 != 0;
    Some(Event {
        time_ns: e.time_ns,
        src: key_addr(&e.src, v6),
        dst: key_addr(&e.dst, v6),
        sport: e.sport,
        dport: e.dport,
        proto: e.proto,
        dir: e.dir,
        reason: e.reason,
        action: e.action,
        len: e.len,
    })
}

/// Protocol as Azure Firewall logs spell it (`TCP`, `UDP`, `ICMP`, `ICMPv6`), else
/// the number.
#[must_use]
pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_ICMP => "ICMP".into(),
        PROTO_ICMPV6 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// `outbound` / `inbound`.
#[must_use]
pub fn dir_name(d: u8) -> &'static str {
    if d == DIR_EGRESS {
        "outbound"
    } else {
        "inbound"
    }
}

/// `Deny`, or `Audit` for a packet audit mode passed although the policy denies it.
#[must_use]
pub fn action_name(a: u8) -> &'static str {
    if u32::from(a) == ACTION_AUDIT_PASS {
        "Audit"
    } else {
        "Deny"
    }
}

/// One JSON line (with its newline). `fqdn`: the host name DNS resolved to the remote
/// address, if it knows one.
#[must_use]
pub fn json_line(ev: &Event, clock: &WallClock, iface: &str, fqdn: Option<&str>) -> String {
    let v = serde_json::json!({
        "time": clock.rfc3339(ev.time_ns),
        "iface": iface,
        "direction": dir_name(ev.dir),
        "protocol": proto_name(ev.proto),
        "source": ev.src.to_string(),
        "source_port": ev.sport,
        "destination": ev.dst.to_string(),
        "destination_port": ev.dport,
        "action": action_name(ev.action),
        "rule": format!("default deny ({})", reason_name(ev.reason)),
        "reason": reason_name(ev.reason),
        "fqdn": fqdn,
        "bytes": ev.len,
    });
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Host name of an address, if DNS knows one.
pub type NameLookup = Arc<dyn Fn(&IpAddr) -> Option<String> + Send + Sync>;

/// The reader's counters.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records taken from the ring.
    pub read: AtomicU64,
    /// Lines written to the log.
    pub lines: AtomicU64,
    /// Events lost because the log could not be opened or written.
    pub write_errors: AtomicU64,
    /// Records of the wrong size (a datapath of another version).
    pub decode_errors: AtomicU64,
    /// Events read while no log is configured (left in the ring by an earlier run).
    pub discarded: AtomicU64,
}

/// What `events.json` holds (the reader's counters for `tagwall report`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogState {
    pub schema: String,
    pub path: Option<PathBuf>,
    pub read: u64,
    pub lines_written: u64,
    pub write_errors: u64,
    pub decode_errors: u64,
    pub discarded: u64,
    pub updated_unix_ms: u64,
}

impl LogStats {
    #[must_use]
    pub fn state(&self, path: Option<PathBuf>) -> LogState {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogState {
            schema: STATE_SCHEMA.into(),
            path,
            read: l(&self.read),
            lines_written: l(&self.lines),
            write_errors: l(&self.write_errors),
            decode_errors: l(&self.decode_errors),
            discarded: l(&self.discarded),
            updated_unix_ms: crate::dns::unix_ms_now(),
        }
    }
}

impl LogState {
    /// # Errors
    /// I/O or JSON errors, or another schema.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        crate::state::load_schema(path, STATE_SCHEMA, |s: &Self| s.schema.as_str())
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::state::save_json(self, path)
    }
}

/// `events.json` beside the interface's `policy.json`.
#[must_use]
pub fn state_path(paths: &crate::state::Paths) -> PathBuf {
    paths.state_file.with_file_name("events.json")
}

struct Control {
    path: Option<PathBuf>,
    reopen: bool,
}

/// The running reader (a thread). [`EventLog::stop`] drains the ring once more and
/// writes the state file a last time.
pub struct EventLog {
    stop: Arc<AtomicBool>,
    ctl: Arc<Mutex<Control>>,
    stats: Arc<LogStats>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Open the log for appending (mode 0640), creating its directory.
fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

struct Reader {
    ring: RingBuf<MapData>,
    iface: String,
    names: NameLookup,
    state_file: PathBuf,
    ctl: Arc<Mutex<Control>>,
    stats: Arc<LogStats>,
    out: Option<File>,
    clock: WallClock,
    clock_at: Instant,
    last_error_log: Option<Instant>,
}

impl Reader {
    /// Take everything in the ring; write it in one append. Returns records read.
    fn drain(&mut self) -> u64 {
        let (path, reopen) = {
            let mut c = lock(&self.ctl);
            (c.path.clone(), std::mem::take(&mut c.reopen))
        };
        if reopen {
            self.out = None;
        }
        if self.clock_at.elapsed() > Duration::from_secs(10) {
            self.clock = WallClock::now();
            self.clock_at = Instant::now();
        }
        let mut buf = String::new();
        let (mut n, mut read) = (0u64, 0u64);
        loop {
            let decoded = {
                let Some(item) = self.ring.next() else { break };
                decode(&item)
            };
            read += 1;
            let Some(ev) = decoded else {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if path.is_none() {
                self.stats.discarded.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let name = (self.names)(&ev.remote());
            buf.push_str(&json_line(&ev, &self.clock, &self.iface, name.as_deref()));
            n += 1;
            // Bound the batch: a full ring is 4096 events, ~1 MiB of text.
            if buf.len() > 1 << 20 {
                self.write(path.as_deref(), &buf, n);
                buf.clear();
                n = 0;
            }
        }
        self.stats.read.fetch_add(read, Ordering::Relaxed);
        if n > 0 {
            self.write(path.as_deref(), &buf, n);
        }
        read
    }

    fn write(&mut self, path: Option<&Path>, buf: &str, n: u64) {
        let Some(path) = path else { return };
        if self.out.is_none() {
            match open_log(path) {
                Ok(f) => self.out = Some(f),
                Err(e) => {
                    self.fail(
                        n,
                        &format!("opening the denied-flow log {}: {e}", path.display()),
                    );
                    return;
                }
            }
        }
        let f = self.out.as_mut().expect("opened above");
        match f.write_all(buf.as_bytes()) {
            Ok(()) => {
                self.stats.lines.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.out = None;
                self.fail(
                    n,
                    &format!("writing the denied-flow log {}: {e}", path.display()),
                );
            }
        }
    }

    fn fail(&mut self, n: u64, msg: &str) {
        self.stats.write_errors.fetch_add(n, Ordering::Relaxed);
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            tracing::error!(
                "{msg}; {n} event(s) lost (counted as write_errors; logged once a minute)"
            );
            self.last_error_log = Some(Instant::now());
        }
    }

    fn save_state(&self) {
        let path = lock(&self.ctl).path.clone();
        if let Err(e) = self.stats.state(path).save(&self.state_file) {
            tracing::warn!("writing {}: {e}", self.state_file.display());
        }
    }
}

impl EventLog {
    /// Start reading `ring`; lines go to `path` (none: events are counted as
    /// discarded). `names` names remote addresses; `state_file` receives the
    /// counters about once a second.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(
        ring: RingBuf<MapData>,
        path: Option<PathBuf>,
        iface: &str,
        names: NameLookup,
        state_file: PathBuf,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ctl = Arc::new(Mutex::new(Control {
            path,
            reopen: false,
        }));
        let stats = Arc::new(LogStats::default());
        let mut r = Reader {
            ring,
            iface: iface.to_owned(),
            names,
            state_file,
            ctl: ctl.clone(),
            stats: stats.clone(),
            out: None,
            clock: WallClock::now(),
            clock_at: Instant::now(),
            last_error_log: None,
        };
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tagwall-events".into())
            .spawn(move || {
                let fd = r.ring.as_raw_fd();
                let mut saved = Instant::now() - Duration::from_secs(10);
                let mut dirty = true;
                while !st.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd lives as long as `r.ring`.
                    unsafe { libc::poll(&raw mut p, 1, 200) };
                    dirty |= r.drain() > 0;
                    if dirty && saved.elapsed() >= Duration::from_secs(1) {
                        r.save_state();
                        saved = Instant::now();
                        dirty = false;
                    }
                }
                r.drain();
                r.save_state();
            })?;
        Ok(Self {
            stop,
            ctl,
            stats,
            thread: Some(thread),
        })
    }

    /// Switch to another log path (or none); the file is opened on the next event.
    pub fn set_path(&self, path: Option<PathBuf>) {
        let mut c = lock(&self.ctl);
        if c.path != path {
            c.path = path;
            c.reopen = true;
        }
    }

    /// Close and reopen the log on the next event (after logrotate moved it).
    pub fn reopen(&self) {
        lock(&self.ctl).reopen = true;
    }

    /// The reader's counters.
    #[must_use]
    pub fn state(&self) -> LogState {
        self.stats.state(lock(&self.ctl).path.clone())
    }

    /// A reader of the counters for other threads (metrics).
    #[must_use]
    pub fn state_fn(&self) -> Arc<dyn Fn() -> LogState + Send + Sync> {
        let (stats, ctl) = (self.stats.clone(), self.ctl.clone());
        Arc::new(move || stats.state(lock(&ctl).path.clone()))
    }

    /// Drain once more, write the state file, stop the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_formats_an_event() {
        let mut raw = DenyEvent {
            time_ns: 5_000_000_000,
            src: [
                0,
                0,
                tagwall_common::ct::V4_MAPPED_WORD,
                u32::from_ne_bytes([10, 77, 1, 2]),
            ],
            dst: [
                0,
                0,
                tagwall_common::ct::V4_MAPPED_WORD,
                u32::from_ne_bytes([10, 77, 3, 2]),
            ],
            len: 60,
            sport: 40000,
            dport: 5300,
            proto: PROTO_UDP,
            dir: DIR_EGRESS,
            reason: tagwall_common::verdict::REASON_NO_MATCH,
            action: 1,
            v6: 0,
            _pad: [0; 3],
        };
        // SAFETY: plain data.
        let bytes: [u8; 56] = unsafe { std::mem::transmute(raw) };
        let ev = decode(&bytes).unwrap();
        assert_eq!(ev.src, "10.77.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(ev.remote(), "10.77.3.2".parse::<IpAddr>().unwrap());
        assert!(decode(&bytes[..55]).is_none());
        let line = json_line(&ev, &WallClock::with_offset(0), "eth1", Some("x.example"));
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:05.000000Z");
        assert_eq!(v["protocol"], "UDP");
        assert_eq!(v["destination_port"], 5300);
        assert_eq!(v["action"], "Deny");
        assert_eq!(v["reason"], "no_match");
        assert_eq!(v["fqdn"], "x.example");
        raw.v6 = 1;
        raw.action = u8::try_from(ACTION_AUDIT_PASS).unwrap();
        // SAFETY: plain data.
        let bytes: [u8; 56] = unsafe { std::mem::transmute(raw) };
        let ev = decode(&bytes).unwrap();
        assert!(ev.src.is_ipv6());
        assert_eq!(action_name(ev.action), "Audit");
    }
}
