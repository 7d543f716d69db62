//! Loading the embedded eBPF object, writing compiled policies into its maps,
//! attaching it, and reading its counters back.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues,
        lpm_trie::Key,
    },
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use ipnet::IpNet;
use tagwall_common::{
    counters::{
        ACTION_MAX, ACTION_PASS, Counter, DIR_MAX, KEY_DIR_INTERNAL, KEY_DIR_LOCAL, MAX_RULES,
        RuleCounter, action_of, class_of, reason_index,
    },
    ct::{
        CtKey, CtKeyV4, CtKeyV6, CtTimeouts, CtValue, DEFAULT_CT_MAX_ENTRIES, FLOW_CACHE_ENTRIES,
        FlowCacheEntry,
    },
    names,
    policy::{
        CONFIG_F_CONNTRACK, CONFIG_F_DIRECTIONAL, CONFIG_F_FAST_FORWARD, CONFIG_F_GATEWAY_OWN,
        CONFIG_F_LOCAL_RULES, CONFIG_F_LPM_FALLBACK, Config as DpConfig, DEFAULT_MAX_PREFIXES,
        DEFAULT_SETS_PER_SLOT, KEY_HDR_BITS, MAP_LAYOUT, MAX_PORT_RULES, PolicyKeyV4, PolicyKeyV6,
        PolicyValue, PortSet,
    },
    verdict::ALL_REASONS,
};

use crate::{compile::CompiledPolicy, rules::Direction, stride};

/// The datapath object, built by build.rs from `dataplane-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tagwall-dataplane"));

/// Time between switching the active slot and deleting the old slot's entries. An XDP
/// program run lasts microseconds; a packet that read the old slot number finishes its
/// lookups long before this.
pub const OLD_SLOT_GRACE: Duration = Duration::from_millis(5);

/// Maps pinned in bpffs (so `tagwall counters` and a restarted daemon find them).
/// `FACTS` is a program's own scratch since one program runs both stages; it stays
/// pinned, as when it joined two programs, so that an earlier run's pin is checked
/// and adopted, not left behind. A pin directory written by a version with the
/// stages in two programs also holds their tail-call tables (`JUMP_XDP`,
/// `JUMP_TC`): this list leaves them alone, as the programs of such a run, when a
/// restart adopts their links, still jump through them; [`remove_pins`] removes
/// them with the rest.
pub const PINNED_MAPS: [&str; 21] = [
    names::MAP_POLICY_V4,
    names::MAP_POLICY_V6,
    names::MAP_LOOKUP,
    names::MAP_PORT_SETS,
    names::MAP_CONFIG,
    names::MAP_RULE_STATS,
    names::MAP_REASON_STATS,
    names::MAP_CONNTRACK_V4,
    names::MAP_CONNTRACK_V6,
    names::MAP_CT_STATS,
    names::MAP_FLOW_CACHE,
    names::MAP_CT_FILTER,
    names::MAP_FWD_PORTS,
    names::MAP_FWD_STATS,
    names::MAP_FACTS,
    names::MAP_EVENTS,
    names::MAP_EVENT_STATS,
    names::MAP_EVENT_BUCKET,
    names::MAP_REPORT_CONFIG,
    names::MAP_TOP_DENIED,
    names::MAP_TOP_SLOTS,
];

/// Prefix of pinned link files: `link-xdp-<iface>`, `link-tc-egress-<iface>`, ...
pub const LINK_PIN_PREFIX: &str = "link-";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("fast forwarding: {detail}")]
    FastForward { detail: String },
    #[error(
        "the embedded eBPF object is empty (built with AYA_BUILD_SKIP=1?): rebuild with \
         `cargo build` after `cargo xtask setup`"
    )]
    EmptyObject,
    #[error("loading the eBPF object failed: {0}; are you root (CAP_BPF, CAP_NET_ADMIN)?")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel rejected program {prog}: {source}")]
    Verifier {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the policy needs {needed} port sets but each slot of PORT_SETS holds {have}; \
         raise `datapath.port_sets`, then `tagwall detach` and `tagwall run` (pinned \
         tables keep their size across restarts)"
    )]
    SetsFull { needed: usize, have: u32 },
    #[error(
        "no room for {addr} in the active slot's lookup table ({source}); applying the \
         policy again moves it to the LPM tries"
    )]
    LookupFull {
        addr: std::net::IpAddr,
        #[source]
        source: stride::Full,
    },
    #[error(
        "the active policy slot was built by another process, so this one cannot add \
         {addr} to it; apply a policy first"
    )]
    LookupUnknown { addr: std::net::IpAddr },
    #[error("mapping the lookup table into memory: {0}")]
    LookupMmap(#[source] std::io::Error),
    #[error("cannot attach {what} to {iface}: {source}")]
    Attach {
        what: &'static str,
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning the {what} link of {iface} at {path}: {detail}")]
    PinLink {
        what: &'static str,
        iface: String,
        path: String,
        detail: String,
    },
    #[error("pin directory {path}: {source}; is bpffs mounted there (`mount -t bpf bpf DIR`)?")]
    PinDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the map pinned at {path} has {found}, this tagwall's {name} has {expected}: it was \
         made by another tagwall version, whose maps this one cannot adopt; run `tagwall \
         detach` for the interface (it removes the pins), then start again"
    )]
    IncompatiblePin {
        name: &'static str,
        path: String,
        found: String,
        expected: String,
    },
    #[error(
        "no tagwall maps pinned at {path}: is `tagwall run` attached with this --bpffs and \
         --iface? ({source})"
    )]
    NotPinned {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (SKB) mode with a logged reason.
    Auto,
    Native,
    Generic,
}

/// Which of the object's programs [`Dataplane::load`] loads. The verifier takes
/// about half a second over each (BENCHMARKS.md, "Verifier headroom", has their
/// sizes), so the daemon loads only its mode's; attaching loads a program that is
/// not loaded yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Programs {
    /// Every hook's program (tests and benchmarks run them all).
    #[default]
    All,
    /// Gateway mode: XDP, and the TC program for the gateway's own traffic.
    Gateway,
    /// Host mode: the TC programs for the host's egress and ingress.
    Host,
}

/// Load-time options.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin (and reuse) the maps in this bpffs directory.
    pub pin_dir: Option<PathBuf>,
    pub max_prefixes: u32,
    pub sets_per_slot: u32,
    /// Capacity of each connection-tracking table (LRU; IPv4 and IPv6 have one each).
    pub ct_max_entries: u32,
    /// aya-log level in the datapath (0 off .. 5 trace).
    pub log_level: u8,
    /// Capacity of the top-denied table (LRU).
    pub top_denied_entries: u32,
    /// Nodes of the multibit trie (`LOOKUP`, 1 KiB each) to use, at most
    /// `LOOKUP_NODES`; a policy that does not fit half of them (one slot) is looked up
    /// in the LPM tries instead. Fewer only to test that fallback.
    pub lookup_nodes: u32,
    /// The programs to load now.
    pub programs: Programs,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: None,
            max_prefixes: DEFAULT_MAX_PREFIXES,
            sets_per_slot: DEFAULT_SETS_PER_SLOT,
            ct_max_entries: DEFAULT_CT_MAX_ENTRIES,
            log_level: 0,
            top_denied_entries: tagwall_common::reports::DEFAULT_TOP_DENIED_ENTRIES,
            lookup_nodes: tagwall_common::stride::LOOKUP_NODES,
            programs: Programs::All,
        }
    }
}

/// Per-policy datapath settings, switched together with the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Count what would be dropped, but pass it.
    pub audit: bool,
    /// The protected network's prefixes. Non-empty: the XDP program decides a
    /// packet's direction by its source (internal: outbound; else inbound).
    pub internal: Vec<IpNet>,
    /// Connection tracking with these timeouts; `None`: stateless.
    pub conntrack: Option<CtTimeouts>,
    /// Gateway mode: allow (and track) the gateway's own outbound traffic.
    pub gateway_own: bool,
    /// Gateway fast forwarding: ifindexes of the egress interfaces XDP may redirect
    /// allowed packets to (`[fast_forward] interfaces`); empty: off.
    pub fast_forward: Vec<u32>,
}

impl Settings {
    /// Stateless, enforcing, no internal prefixes.
    #[must_use]
    pub fn stateless(audit: bool) -> Self {
        Self {
            audit,
            ..Self::default()
        }
    }
}

/// How a program came to be attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Attached now, in this XDP mode.
    Xdp(XdpMode),
    /// TC (TCX link) attached now.
    Tc,
    /// A pinned link from an earlier run was found and kept (no gap, no reattach).
    Adopted,
}

/// What [`Dataplane::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyStats {
    pub slot: u8,
    pub generation: u32,
    pub prefixes: usize,
    pub sets: usize,
    /// LPM entries removed with the old slot (only a slot that fell back has any).
    pub removed_old: usize,
    /// Multibit-trie nodes the new slot uses; `None`: it did not fit, the slot is in
    /// the LPM tries.
    pub lookup_nodes: Option<u32>,
}

/// A shared mapping of the `LOOKUP` array map, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Map `LOOKUP` (every node) into this process.
fn map_lookup(ebpf: &Ebpf) -> Result<(Mapping, &'static [std::sync::atomic::AtomicU32])> {
    use std::os::fd::{AsFd, AsRawFd};
    let name = names::MAP_LOOKUP;
    let Some(Map::Array(data)) = ebpf.map(name) else {
        return Err(DataplaneError::MissingMap { name });
    };
    let info = data.info().map_err(map_err(name))?;
    let len = info.max_entries() as usize * info.value_size() as usize;
    let entries = len / std::mem::size_of::<u32>();
    let fd = data.fd().as_fd().as_raw_fd();
    // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length
    // against the map (created with BPF_F_MMAPABLE).
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(DataplaneError::LookupMmap(std::io::Error::last_os_error()));
    }
    let mapping = Mapping { ptr, len };
    // SAFETY: `len` bytes of writable shared memory, u32-aligned (page-aligned), that
    // live as long as `mapping`; `Dataplane` drops the table before the mapping.
    // AtomicU32 has the layout of u32.
    let slice =
        unsafe { std::slice::from_raw_parts(ptr.cast::<std::sync::atomic::AtomicU32>(), entries) };
    Ok((mapping, slice))
}

/// A loaded datapath.
pub struct Dataplane {
    /// Borrows from `_mapping` (declared first, so dropped first).
    table: stride::Table<'static>,
    _mapping: Mapping,
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sets_per_slot: u32,
    pin_dir: Option<PathBuf>,
    /// Links this process attached or adopted, pinned (dropping them keeps them).
    links: Vec<PinnedLink>,
}

/// `Config::ct_filter_from_ns` for `next`, about to replace `prev` at `now_ns`
/// (`tagwall_common::ct`, "Presence filter"). Flows stamped under shorter timeouts
/// than `next`'s, or not stamped at all (`unstamped`), may outlive their stamps;
/// every one of them was last seen before `now_ns`, so all are dead under `next`'s
/// timeouts by `now_ns` plus the longest of them (and a second for the coarse
/// clock's tick). Never moves back: an earlier raise may still need its time.
#[must_use]
fn filter_from_ns(prev: &DpConfig, next: &DpConfig, unstamped: bool, now_ns: u64) -> u64 {
    let prev_written = prev.written();
    let from = if prev_written {
        prev.ct_filter_from_ns
    } else {
        0
    };
    if unstamped || (prev_written && next.ct.raises(&prev.ct)) {
        from.max(now_ns + next.ct.max_ns() + 1_000_000_000)
    } else {
        from
    }
}

/// Load an XDP program of the object, unless it is loaded.
fn load_xdp(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(verifier(name))?;
    if prog.fd().is_ok() {
        return Ok(());
    }
    prog.load().map_err(verifier(name))
}

/// Load a TC program of the object, unless it is loaded.
fn load_tc(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(verifier(name))?;
    if prog.fd().is_ok() {
        return Ok(());
    }
    prog.load().map_err(verifier(name))
}

/// The maps whose number of entries `Dataplane::load` sets from its options, and
/// that number (a pinned one keeps its own).
fn sized_at_load(opts: &LoadOptions) -> [(&'static str, u32); 6] {
    [
        (names::MAP_POLICY_V4, opts.max_prefixes),
        (names::MAP_POLICY_V6, opts.max_prefixes),
        (names::MAP_PORT_SETS, 2 * opts.sets_per_slot),
        (names::MAP_CONNTRACK_V4, opts.ct_max_entries),
        (names::MAP_CONNTRACK_V6, opts.ct_max_entries),
        (names::MAP_TOP_DENIED, opts.top_denied_entries.max(1)),
    ]
}

/// Refuse pinned maps whose key or value size (or, for maps of a fixed size, number
/// of entries) differs from the embedded object's
/// (an upgrade across a layout change): aya would adopt them as they are, and the
/// programs would then fail verification or misread them.
///
/// Returns the pinned settings, if there are any: the load carries them through.
fn check_pins(pins: &[(&'static str, PathBuf)], sized: &[(&str, u32)]) -> Result<Option<DpConfig>> {
    if !pins.iter().any(|(_, path)| path.exists()) {
        return Ok(None);
    }
    let Ok(obj) = aya_obj::Object::parse(EBPF_OBJECT) else {
        // The loader parses it again and reports what is wrong.
        return Ok(None);
    };
    for (name, path) in pins {
        let (Some(def), true) = (obj.maps.get(*name), path.exists()) else {
            continue;
        };
        let Ok(info) = aya::maps::MapInfo::from_pin(path) else {
            // Not a map (or unreadable): the loader reports it with its own error.
            continue;
        };
        // A map sized at load time keeps its pinned size (`Dataplane::load` says so);
        // any other map's number of entries is part of the layout (a counter array
        // that grew would drop the new indices' counts).
        let fixed = !sized.iter().any(|(n, _)| n == name);
        let sizes = |k: u32, v: u32, n: u32| {
            if fixed {
                format!("{k}-byte keys, {v}-byte values and {n} entries")
            } else {
                format!("{k}-byte keys and {v}-byte values")
            }
        };
        let (found, expected) = (
            sizes(info.key_size(), info.value_size(), info.max_entries()),
            sizes(def.key_size(), def.value_size(), def.max_entries()),
        );
        if found != expected {
            return Err(DataplaneError::IncompatiblePin {
                name,
                path: path.display().to_string(),
                found,
                expected,
            });
        }
    }
    let Some((_, path)) = pins.iter().find(|(n, _)| *n == names::MAP_CONFIG) else {
        return Ok(None);
    };
    // Not pinned yet (or unreadable: the loader reports it): nothing to check or carry.
    let Some(cfg) = pinned_config(path) else {
        return Ok(None);
    };
    check_layout(&cfg, path)?;
    Ok(Some(cfg))
}

/// The value of the settings pinned at `path`, if there are any.
fn pinned_config(path: &Path) -> Option<DpConfig> {
    let map = MapData::from_pin(path).ok()?;
    let cfg = Array::<MapData, DpConfig>::try_from(Map::Array(map)).ok()?;
    cfg.get(&0, 0).ok()
}

/// Refuse a pinned `CONFIG` written by a tagwall whose map contents mean something
/// else (`MAP_LAYOUT`), although every size matches.
fn check_layout(cfg: &DpConfig, path: &Path) -> Result<()> {
    if cfg.written() && cfg.layout != MAP_LAYOUT {
        return Err(DataplaneError::IncompatiblePin {
            name: names::MAP_CONFIG,
            path: path.display().to_string(),
            found: format!("map layout {}", cfg.layout),
            expected: format!("map layout {MAP_LAYOUT}"),
        });
    }
    Ok(())
}

fn verifier(prog: &'static str) -> impl Fn(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Verifier { prog, source }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Load the embedded object (maps created or re-opened from pins; program loaded,
    /// not attached).
    ///
    /// # Errors
    /// [`DataplaneError`] saying what failed and what to check.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::EmptyObject);
        }
        let pins: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                PINNED_MAPS
                    .iter()
                    .map(|n| (*n, dir.join(names::pin_file(n))))
                    .collect()
            }
            None => Vec::new(),
        };
        let sized = sized_at_load(opts);
        // `CONFIG` is a global: the loader writes the object's value into its map,
        // also into a pinned one it adopts, where the attached programs would read
        // zero settings (slot 0, stateless) until the daemon writes them again.
        // Loaded with the pinned value (`carried`), the write changes nothing.
        let carried = check_pins(&pins, &sized)?;
        let pinned = |name: &str| pins.iter().any(|(n, p)| *n == name && p.exists());
        let ct_unstamped = (pinned(names::MAP_CONNTRACK_V4) || pinned(names::MAP_CONNTRACK_V6))
            && !pinned(names::MAP_CT_FILTER);
        let mut loader = EbpfLoader::new();
        // TAGWALL_VERIFIER_LOG=1: full verifier logs in load errors (debugging).
        if std::env::var_os("TAGWALL_VERIFIER_LOG").is_some() {
            loader
                .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        for (name, entries) in sized {
            loader.map_max_entries(name, entries);
        }
        loader.override_global(aya_log::LEVEL, &opts.log_level, false);
        if let Some(cfg) = &carried {
            loader.override_global(names::GLOBAL_CONFIG, cfg, true);
        }
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!("aya-log not initialised: {e}");
                None
            }
        };
        let (gateway, host) = match opts.programs {
            Programs::All => (true, true),
            Programs::Gateway => (true, false),
            Programs::Host => (false, true),
        };
        if gateway {
            load_xdp(&mut ebpf, names::PROG_XDP)?;
            load_tc(&mut ebpf, names::PROG_TC_LOCAL)?;
        }
        if host {
            load_tc(&mut ebpf, names::PROG_TC_EGRESS)?;
            load_tc(&mut ebpf, names::PROG_TC_INGRESS)?;
        }
        let (mapping, entries) = map_lookup(&ebpf)?;
        let use_nodes = opts.lookup_nodes.clamp(
            tagwall_common::stride::FIRST_NODE + 2,
            tagwall_common::stride::LOOKUP_NODES,
        ) as usize;
        let entries = &entries[..entries
            .len()
            .min(use_nodes * tagwall_common::stride::FANOUT)];
        // Pinned maps from an earlier run keep their size, whatever `opts` asks for.
        let sets_per_slot = match ebpf.map(names::MAP_PORT_SETS) {
            Some(Map::Array(d)) => {
                d.info()
                    .map_err(map_err(names::MAP_PORT_SETS))?
                    .max_entries()
                    / 2
            }
            _ => {
                return Err(DataplaneError::MissingMap {
                    name: names::MAP_PORT_SETS,
                });
            }
        };
        if sets_per_slot != opts.sets_per_slot {
            tracing::warn!(
                pinned = sets_per_slot,
                asked = opts.sets_per_slot,
                "the pinned PORT_SETS keeps its size; `tagwall detach` first to resize it"
            );
        }
        let mut dp = Self {
            table: stride::Table::new(entries),
            _mapping: mapping,
            ebpf,
            logger,
            sets_per_slot,
            pin_dir: opts.pin_dir.clone(),
            links: Vec::new(),
        };
        if ct_unstamped {
            // Before any packet meets the new, empty filter.
            tracing::warn!(
                "pinned flow tables without a presence filter: every tracked packet looks \
                 the tables up until their flows' timeouts have passed"
            );
            let cfg = dp.config()?;
            dp.store_config(cfg, true)?;
        }
        Ok(dp)
    }

    /// The XDP program (for attaching elsewhere and for BPF_PROG_TEST_RUN; loaded
    /// unless the load's [`Programs`] were `Host`).
    ///
    /// # Panics
    /// Never: the program is in the object and of type XDP (checked at load).
    pub fn xdp(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROG_XDP)
            .expect("tagwall_xdp in the object")
            .try_into()
            .expect("tagwall_xdp is XDP")
    }

    /// A program of the object as its type `P` (`Xdp`, `SchedClassifier`), shared
    /// (BPF_PROG_TEST_RUN from several threads).
    ///
    /// # Panics
    /// If `name` is not a program of the object of type `P`.
    #[must_use]
    pub fn program_shared<'a, P>(&'a self, name: &'static str) -> &'a P
    where
        &'a P: TryFrom<&'a aya::programs::Program>,
    {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .unwrap_or_else(|_| panic!("{name} of the type asked for"))
    }

    /// A TC program of the object (for BPF_PROG_TEST_RUN; loaded if the load's
    /// [`Programs`] include its mode).
    ///
    /// # Panics
    /// If `name` is not one of the object's TC programs.
    pub fn tc(&mut self, name: &'static str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} in the object"))
            .try_into()
            .unwrap_or_else(|_| panic!("{name} is a TC program"))
    }

    /// Instructions the verifier processed to load each loaded program, by name
    /// (its limit is 1,000,000 per program; the benchmark report shows the headroom).
    /// `None` where the kernel does not say.
    #[must_use]
    pub fn verified_insns(&self) -> Vec<(String, Option<u32>)> {
        let mut out: Vec<_> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_owned(), info.verified_instruction_count()))
            })
            .collect();
        out.sort();
        out
    }

    /// The TC benchmark floor program (TC_ACT_OK only), loaded on first use.
    ///
    /// # Errors
    /// The verifier rejected it (it should not).
    pub fn tc_floor(&mut self) -> Result<&mut SchedClassifier> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::PROG_TC_FLOOR)
            .ok_or(DataplaneError::MissingProgram {
                name: names::PROG_TC_FLOOR,
            })?
            .try_into()
            .map_err(verifier(names::PROG_TC_FLOOR))?;
        if prog.fd().is_err() {
            prog.load().map_err(verifier(names::PROG_TC_FLOOR))?;
        }
        Ok(prog)
    }

    /// The benchmark floor program (XDP_PASS only), loaded on first use.
    ///
    /// # Errors
    /// The verifier rejected it (it should not).
    pub fn floor(&mut self) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_FLOOR)
            .expect("tagwall_floor in the object")
            .try_into()
            .map_err(verifier(names::PROG_FLOOR))?;
        if prog.fd().is_err() {
            prog.load().map_err(verifier(names::PROG_FLOOR))?;
        }
        Ok(prog)
    }

    /// Write the report settings (events, their rate limit, top-denied counting);
    /// takes effect with the next packet.
    ///
    /// # Errors
    /// Map errors.
    pub fn set_report_config(&mut self, rc: tagwall_common::reports::ReportConfig) -> Result<()> {
        let map = self.map_mut(names::MAP_REPORT_CONFIG)?;
        let mut arr: Array<&mut MapData, tagwall_common::reports::ReportConfig> =
            Array::try_from(map).map_err(map_err(names::MAP_REPORT_CONFIG))?;
        arr.set(0, rc, 0).map_err(map_err(names::MAP_REPORT_CONFIG))
    }

    /// Take the denied-flow event ring buffer (one reader: the first caller).
    ///
    /// # Errors
    /// [`DataplaneError::MissingMap`] when it was taken already.
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let name = names::MAP_EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        aya::maps::RingBuf::try_from(map).map_err(map_err(name))
    }

    /// A map of the object, for readers that work on pinned and unpinned maps alike
    /// (`crate::reports::maps`).
    #[must_use]
    pub fn map(&self, name: &str) -> Option<&Map> {
        self.ebpf.map(name)
    }

    /// Take the aya-log ring buffer so the caller can drain it (e.g. in a task).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Attach XDP to `iface` (gateway mode), and the TC program that tracks the
    /// gateway's own outbound traffic on its egress. With a pin directory the links
    /// are pinned there, and links pinned by an earlier run are adopted instead.
    ///
    /// # Errors
    /// [`DataplaneError::Attach`] with the kernel's reason.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        self.attach_tc_one(
            iface,
            names::PROG_TC_LOCAL,
            "TC egress (gateway's own traffic)",
            TcAttachType::Egress,
            "tc-local",
        )?;
        let pin = self.link_pin("xdp", iface);
        if let Some(link) = adopt(pin.as_deref()) {
            self.links.push(link);
            return Ok(Attached::Adopted);
        }
        load_xdp(&mut self.ebpf, names::PROG_XDP)?;
        let prog = self.xdp();
        let attach = |prog: &mut Xdp, m: XdpMode| {
            prog.attach(iface, m)
                .map_err(|source| DataplaneError::Attach {
                    what: "XDP",
                    iface: iface.to_owned(),
                    source,
                })
        };
        let (id, used) = match mode {
            AttachMode::Native => (attach(prog, XdpMode::Driver)?, XdpMode::Driver),
            AttachMode::Generic => (attach(prog, XdpMode::Skb)?, XdpMode::Skb),
            AttachMode::Auto => match attach(prog, XdpMode::Driver) {
                Ok(id) => (id, XdpMode::Driver),
                Err(e) => {
                    tracing::warn!(
                        "native XDP attach to {iface} failed ({e}); falling back to generic \
                         (SKB) mode, which is slower"
                    );
                    (attach(prog, XdpMode::Skb)?, XdpMode::Skb)
                }
            },
        };
        if let Some(path) = pin {
            let link = self
                .xdp()
                .take_link(id)
                .map_err(|source| DataplaneError::Attach {
                    what: "XDP",
                    iface: iface.to_owned(),
                    source,
                })?;
            let fd = FdLink::try_from(link).map_err(|e| pin_err("XDP", iface, &path, &e))?;
            self.links.push(pin_link(fd, "XDP", iface, &path)?);
        }
        Ok(Attached::Xdp(used))
    }

    /// Attach the TC programs to `iface`'s egress and ingress (host mode), pinned and
    /// adopted like [`Self::attach`].
    ///
    /// # Errors
    /// [`DataplaneError::Attach`] with the kernel's reason.
    pub fn attach_tc(&mut self, iface: &str) -> Result<Attached> {
        let e = self.attach_tc_one(
            iface,
            names::PROG_TC_EGRESS,
            "TC egress",
            TcAttachType::Egress,
            "tc-egress",
        )?;
        let i = self.attach_tc_one(
            iface,
            names::PROG_TC_INGRESS,
            "TC ingress",
            TcAttachType::Ingress,
            "tc-ingress",
        )?;
        Ok(if e && i {
            Attached::Adopted
        } else {
            Attached::Tc
        })
    }

    /// Attach (or adopt) one TC program; returns whether it was adopted.
    fn attach_tc_one(
        &mut self,
        iface: &str,
        name: &'static str,
        what: &'static str,
        ty: TcAttachType,
        tag: &str,
    ) -> Result<bool> {
        let pin = self.link_pin(tag, iface);
        if let Some(link) = adopt(pin.as_deref()) {
            self.links.push(link);
            return Ok(true);
        }
        load_tc(&mut self.ebpf, name)?;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(verifier(name))?;
        let err = |source| DataplaneError::Attach {
            what,
            iface: iface.to_owned(),
            source,
        };
        let id = prog.attach(iface, ty).map_err(err)?;
        if let Some(path) = pin {
            let link = prog.take_link(id).map_err(err)?;
            let fd = FdLink::try_from(link).map_err(|e| pin_err(what, iface, &path, &e))?;
            self.links.push(pin_link(fd, what, iface, &path)?);
        }
        Ok(false)
    }

    fn link_pin(&self, tag: &str, iface: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join(format!("{LINK_PIN_PREFIX}{tag}-{iface}")))
    }

    fn config(&self) -> Result<DpConfig> {
        let map = self.map_ref(names::MAP_CONFIG)?;
        let arr: Array<&MapData, DpConfig> =
            Array::try_from(map).map_err(map_err(names::MAP_CONFIG))?;
        arr.get(&0, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Write `CONFIG[0]` (one map update: the datapath sees the old or the new value).
    fn write_config(&mut self, cfg: DpConfig) -> Result<()> {
        self.store_config(cfg, false)
    }

    /// [`Dataplane::write_config`]; `unstamped`: the flow tables hold flows the
    /// presence filter has not seen (adopted without its pin).
    fn store_config(&mut self, cfg: DpConfig, unstamped: bool) -> Result<()> {
        let prev = self.config()?;
        let ct_filter_from_ns =
            filter_from_ns(&prev, &cfg, unstamped, crate::reports::time::monotonic_ns());
        // Whatever the caller read back: this build's layout from now on.
        let cfg = DpConfig {
            layout: MAP_LAYOUT,
            ct_filter_from_ns,
            ..cfg
        };
        let map = self.map_mut(names::MAP_CONFIG)?;
        let mut arr: Array<&mut MapData, DpConfig> =
            Array::try_from(map).map_err(map_err(names::MAP_CONFIG))?;
        arr.set(0, cfg, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Write `policy` into the inactive slot, switch to it in one map write, then
    /// remove the old slot's entries. Packets see the old or the new policy, never a mix.
    ///
    /// # Errors
    /// Map errors, or [`DataplaneError::SetsFull`] (nothing is switched then).
    pub fn apply(&mut self, policy: &CompiledPolicy, settings: &Settings) -> Result<ApplyStats> {
        if policy.sets.len() > self.sets_per_slot as usize {
            return Err(DataplaneError::SetsFull {
                needed: policy.sets.len(),
                have: self.sets_per_slot,
            });
        }
        let cur = self.config()?;
        let old = (cur.slot & 1) as u8;
        let new = old ^ 1;
        // Leftovers in the target slot (e.g. from a crashed reload) go first.
        self.clear_slot(new)?;
        let base = u32::from(new) * self.sets_per_slot;
        {
            let map = self.map_mut(names::MAP_PORT_SETS)?;
            let mut sets: Array<&mut MapData, PortSet> =
                Array::try_from(map).map_err(map_err(names::MAP_PORT_SETS))?;
            for (i, entries) in policy.sets.iter().enumerate() {
                let set = port_set(entries);
                let idx = base + u32::try_from(i).expect("sets fit u32");
                sets.set(idx, set, 0)
                    .map_err(map_err(names::MAP_PORT_SETS))?;
            }
        }
        // (key direction, prefix, port-set index); internal prefixes name no set.
        let mut entries: Vec<(u8, IpNet, u32)> = policy
            .v4
            .iter()
            .map(|(d, n, set)| (dir_code(*d), IpNet::V4(*n), base + set))
            .chain(
                policy
                    .v6
                    .iter()
                    .map(|(d, n, set)| (dir_code(*d), IpNet::V6(*n), base + set)),
            )
            .chain(settings.internal.iter().map(|n| (KEY_DIR_INTERNAL, *n, 0)))
            .collect();
        let has_local = entries.iter().any(|(d, _, _)| *d == KEY_DIR_LOCAL);
        // Shortest first, as the multibit trie needs.
        entries.sort_by_key(|(_, n, _)| n.prefix_len());
        let lookup_nodes = self.build_slot(new, &entries)?;
        let generation = cur.generation.wrapping_add(1);
        let mut flags = 0;
        if !settings.internal.is_empty() {
            flags |= CONFIG_F_DIRECTIONAL;
        }
        if settings.conntrack.is_some() {
            flags |= CONFIG_F_CONNTRACK;
        }
        if settings.gateway_own {
            flags |= CONFIG_F_GATEWAY_OWN;
        }
        if has_local {
            flags |= CONFIG_F_LOCAL_RULES;
        }
        if lookup_nodes.is_none() {
            flags |= CONFIG_F_LPM_FALLBACK;
        }
        if !settings.fast_forward.is_empty() {
            flags |= CONFIG_F_FAST_FORWARD;
        }
        // New egress interfaces go in before the switch, stale ones out after it.
        let stale = self.add_fast_forward(&settings.fast_forward)?;
        self.write_config(DpConfig {
            slot: u32::from(new),
            audit: u32::from(settings.audit),
            generation,
            flags,
            ct: settings.conntrack.unwrap_or_default(),
            // The layout and the filter's from-time: write_config's.
            ..DpConfig::default()
        })?;
        self.remove_fast_forward(&stale)?;
        std::thread::sleep(OLD_SLOT_GRACE);
        let removed_old = self.clear_slot(old)?;
        Ok(ApplyStats {
            slot: new,
            generation,
            prefixes: policy.prefixes(),
            sets: policy.sets.len(),
            removed_old,
            lookup_nodes,
        })
    }

    fn fwd_ports(&mut self) -> Result<DevMapHash<&mut MapData>> {
        let map = self.map_mut(names::MAP_FWD_PORTS)?;
        DevMapHash::try_from(map).map_err(map_err(names::MAP_FWD_PORTS))
    }

    /// Put `ifindexes` into `FWD_PORTS`; returns the entries that are there but not
    /// wanted (for [`Self::remove_fast_forward`] once the new config is live).
    fn add_fast_forward(&mut self, ifindexes: &[u32]) -> Result<Vec<u32>> {
        let mut ports = self.fwd_ports()?;
        let have = ports
            .keys()
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(map_err(names::MAP_FWD_PORTS))?;
        for &i in ifindexes {
            ports.insert(i, i, None, 0).map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(source) => DataplaneError::Map {
                    name: names::MAP_FWD_PORTS,
                    source,
                },
                // Only with a chained program, which tagwall never passes.
                other => DataplaneError::FastForward {
                    detail: other.to_string(),
                },
            })?;
        }
        Ok(have
            .into_iter()
            .filter(|i| !ifindexes.contains(i))
            .collect())
    }

    fn remove_fast_forward(&mut self, ifindexes: &[u32]) -> Result<()> {
        let mut ports = self.fwd_ports()?;
        for &i in ifindexes {
            ports.remove(i).map_err(map_err(names::MAP_FWD_PORTS))?;
        }
        Ok(())
    }

    /// Write `entries` (sorted shortest first) into the inactive `slot`, emptied by
    /// `clear_slot`: the multibit trie when they fit (`Some(nodes used)`), else the
    /// LPM tries (`None`).
    fn build_slot(&mut self, slot: u8, entries: &[(u8, IpNet, u32)]) -> Result<Option<u32>> {
        let mut full = None;
        for (dir, net, set) in entries {
            if let Err(e) = self.table.insert(slot, *dir, *net, *set) {
                full = Some(e);
                break;
            }
        }
        let Some(e) = full else {
            let shortcuts = self.table.index_shortcuts(slot);
            tracing::debug!(
                slot,
                written = shortcuts.written,
                collided = shortcuts.collided,
                "IPv6 shortcut records"
            );
            return Ok(self.table.used(slot));
        };
        tracing::warn!(
            prefixes = entries.len(),
            "the policy does not fit the lookup table ({e}): using the kernel's LPM tries \
             for it, which cost more per packet"
        );
        self.table.clear(slot);
        for (dir, net, set) in entries {
            let value = PolicyValue {
                set_id: *set,
                flags: 0,
            };
            self.insert_prefix(slot, *dir, *net, value)?;
        }
        Ok(None)
    }

    /// The active policy slot and the first `PORT_SETS` index of it.
    ///
    /// # Errors
    /// Map errors.
    pub fn active_slot(&self) -> Result<(u8, u32)> {
        let slot = (self.config()?.slot & 1) as u8;
        Ok((slot, u32::from(slot) * self.sets_per_slot))
    }

    /// Port sets per slot (indices `0..sets_per_slot()` within a slot).
    #[must_use]
    pub fn sets_per_slot(&self) -> u32 {
        self.sets_per_slot
    }

    /// Write port set `index` of the active slot. Only for indices no LPM entry names
    /// yet (past the compiled policy's sets), or with the same content.
    ///
    /// # Errors
    /// Map errors; [`DataplaneError::SetsFull`] past the slot.
    pub fn write_active_set(
        &mut self,
        index: u32,
        entries: &[tagwall_common::policy::PortRule],
    ) -> Result<()> {
        if index >= self.sets_per_slot || entries.len() > MAX_PORT_RULES {
            return Err(DataplaneError::SetsFull {
                needed: index as usize + 1,
                have: self.sets_per_slot,
            });
        }
        let (_, base) = self.active_slot()?;
        let set = port_set(entries);
        let map = self.map_mut(names::MAP_PORT_SETS)?;
        let mut sets: Array<&mut MapData, PortSet> =
            Array::try_from(map).map_err(map_err(names::MAP_PORT_SETS))?;
        sets.set(base + index, set, 0)
            .map_err(map_err(names::MAP_PORT_SETS))
    }

    /// Insert (or replace) the host entry `addr` (/32 or /128) of direction `dir` in
    /// the active slot, naming port set `index` of that slot. One map update: a
    /// packet sees the old or the new entry.
    ///
    /// # Errors
    /// Map errors.
    pub fn put_active_host(
        &mut self,
        dir: Direction,
        addr: std::net::IpAddr,
        index: u32,
    ) -> Result<()> {
        let (slot, base) = self.active_slot()?;
        let mut cfg = self.config()?;
        if cfg.flags & CONFIG_F_LPM_FALLBACK != 0 {
            let value = PolicyValue {
                set_id: base + index,
                flags: 0,
            };
            self.insert_prefix(slot, dir_code(dir), IpNet::from(addr), value)?;
        } else {
            if self.table.used(slot).is_none() {
                return Err(DataplaneError::LookupUnknown { addr });
            }
            self.table
                .insert(slot, dir_code(dir), IpNet::from(addr), base + index)
                .map_err(|source| DataplaneError::LookupFull { addr, source })?;
        }
        if dir == Direction::Local {
            // The first local entry of the slot: the datapath skips local lookups
            // until the flag says there are some (generation unchanged: no flow needs
            // checking again, an added entry only allows more).
            if cfg.flags & CONFIG_F_LOCAL_RULES == 0 {
                cfg.flags |= CONFIG_F_LOCAL_RULES;
                self.write_config(cfg)?;
            }
        }
        Ok(())
    }

    /// Insert (or replace) one LPM entry: `net` under the key header `[slot, dir]`.
    fn insert_prefix(&mut self, slot: u8, dir: u8, net: IpNet, value: PolicyValue) -> Result<()> {
        match net {
            IpNet::V4(n) => {
                let map = self.map_mut(names::MAP_POLICY_V4)?;
                let mut trie: LpmTrie<&mut MapData, PolicyKeyV4, PolicyValue> =
                    LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V4))?;
                let key = Key::new(
                    KEY_HDR_BITS + u32::from(n.prefix_len()),
                    PolicyKeyV4 {
                        slot,
                        dir,
                        _pad: [0; 2],
                        addr: n.network().octets(),
                    },
                );
                trie.insert(&key, value, 0)
                    .map_err(map_err(names::MAP_POLICY_V4))
            }
            IpNet::V6(n) => {
                let map = self.map_mut(names::MAP_POLICY_V6)?;
                let mut trie: LpmTrie<&mut MapData, PolicyKeyV6, PolicyValue> =
                    LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V6))?;
                let key = Key::new(
                    KEY_HDR_BITS + u32::from(n.prefix_len()),
                    PolicyKeyV6 {
                        slot,
                        dir,
                        _pad: [0; 2],
                        addr: n.network().octets(),
                    },
                );
                trie.insert(&key, value, 0)
                    .map_err(map_err(names::MAP_POLICY_V6))
            }
        }
    }

    /// The tracked flows of both tables (for listings and tests).
    ///
    /// # Errors
    /// Map errors.
    pub fn flows(&self) -> Result<Vec<(CtKey, CtValue)>> {
        let v4 = self.ct_table::<CtKeyV4>(names::MAP_CONNTRACK_V4)?;
        let v6 = self.ct_table::<CtKeyV6>(names::MAP_CONNTRACK_V6)?;
        let v4 = v4
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(k, v)| (CtKey::from_v4(&k, v.proto), v));
        let v6 = v6
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(k, v)| (CtKey::from_v6(&k, v.proto), v));
        Ok(v4.chain(v6).collect())
    }

    fn ct_table<K: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<&MapData, K, CtValue>> {
        BpfHashMap::try_from(self.map_ref(name)?).map_err(map_err(name))
    }

    /// Forget every tracked flow (tests): both tables, then every CPU's flow cache
    /// (which would otherwise serve a cleared flow for a little longer).
    ///
    /// # Errors
    /// Map errors.
    pub fn clear_flows(&mut self) -> Result<usize> {
        let n = self.clear_ct_table::<CtKeyV4>(names::MAP_CONNTRACK_V4)?
            + self.clear_ct_table::<CtKeyV6>(names::MAP_CONNTRACK_V6)?;
        let name = names::MAP_FLOW_CACHE;
        let mut cache: PerCpuArray<&mut MapData, FlowCacheEntry> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        // As many values as the kernel has possible CPUs: the length of a read.
        let ncpus = cache.get(&0, 0).map_err(map_err(name))?.len();
        for i in 0..FLOW_CACHE_ENTRIES {
            let empty = PerCpuValues::try_from(vec![FlowCacheEntry::default(); ncpus])
                .expect("one value per possible CPU, as read");
            cache.set(i, empty, 0).map_err(map_err(name))?;
        }
        Ok(n)
    }

    fn clear_ct_table<K: aya::Pod>(&mut self, name: &'static str) -> Result<usize> {
        let mut ct: BpfHashMap<&mut MapData, K, CtValue> =
            BpfHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let keys: Vec<K> = ct.keys().filter_map(std::result::Result::ok).collect();
        for k in &keys {
            let _ = ct.remove(k);
        }
        Ok(keys.len())
    }

    fn map_ref(&self, name: &'static str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    /// Remove every entry of `slot` (multibit trie and LPM tries). Port sets need no
    /// clearing: only these entries point at them, and a set index is rewritten
    /// before any entry names it. Returns the LPM entries removed.
    fn clear_slot(&mut self, slot: u8) -> Result<usize> {
        self.table.clear(slot);
        let mut removed = 0;
        {
            let map = self.map_mut(names::MAP_POLICY_V4)?;
            let mut trie: LpmTrie<&mut MapData, PolicyKeyV4, PolicyValue> =
                LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V4))?;
            let keys: Vec<Key<PolicyKeyV4>> = trie
                .keys()
                .filter_map(std::result::Result::ok)
                .filter(|k| k.data().slot == slot)
                .collect();
            for k in &keys {
                trie.remove(k).map_err(map_err(names::MAP_POLICY_V4))?;
            }
            removed += keys.len();
        }
        {
            let map = self.map_mut(names::MAP_POLICY_V6)?;
            let mut trie: LpmTrie<&mut MapData, PolicyKeyV6, PolicyValue> =
                LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V6))?;
            let keys: Vec<Key<PolicyKeyV6>> = trie
                .keys()
                .filter_map(std::result::Result::ok)
                .filter(|k| k.data().slot == slot)
                .collect();
            for k in &keys {
                trie.remove(k).map_err(map_err(names::MAP_POLICY_V6))?;
            }
            removed += keys.len();
        }
        Ok(removed)
    }

    /// Current counters.
    ///
    /// # Errors
    /// Map errors.
    pub fn counters(&self) -> Result<Counters> {
        self.read_counters(None)
    }

    /// Current counters, reading only the given rules' counters (cheaper than all:
    /// the `allowed` and `established` reasons then cover these rules' packets only).
    ///
    /// # Errors
    /// Map errors.
    pub fn counters_for(&self, rule_ids: impl IntoIterator<Item = u32>) -> Result<Counters> {
        self.read_counters(Some(rule_ids.into_iter().collect()))
    }

    fn read_counters(&self, rule_ids: Option<Vec<u32>>) -> Result<Counters> {
        let arr = |name: &'static str| -> Result<PerCpuArray<&MapData, Counter>> {
            PerCpuArray::try_from(self.map_ref(name)?).map_err(map_err(name))
        };
        Counters::read(
            self.map_ref(names::MAP_RULE_STATS)?,
            &arr(names::MAP_REASON_STATS)?,
            &arr(names::MAP_CT_STATS)?,
            &arr(names::MAP_FWD_STATS)?,
            self.config()?,
            rule_ids,
        )
    }
}

/// A `PORT_SETS` value from at most `MAX_PORT_RULES` entries; the rest stay zero (rule
/// id 0, which the datapath never credits).
fn port_set(entries: &[tagwall_common::policy::PortRule]) -> PortSet {
    assert!(entries.len() <= MAX_PORT_RULES, "compiler bounds set sizes");
    let mut rules = PortSet::default().rules;
    rules[..entries.len()].copy_from_slice(entries);
    PortSet {
        count: u32::try_from(entries.len()).expect("small"),
        rules,
    }
}

/// Re-open a link pinned by an earlier run, if there is one and it is still attached.
fn adopt(path: Option<&Path>) -> Option<PinnedLink> {
    let path = path?;
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(link) => Some(link),
        Err(e) => {
            tracing::warn!(
                "pinned link {} cannot be opened ({e}); removing it and attaching anew",
                path.display()
            );
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn pin_err(
    what: &'static str,
    iface: &str,
    path: &Path,
    e: &dyn std::fmt::Display,
) -> DataplaneError {
    DataplaneError::PinLink {
        what,
        iface: iface.to_owned(),
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

fn pin_link(fd: FdLink, what: &'static str, iface: &str, path: &Path) -> Result<PinnedLink> {
    fd.pin(path).map_err(|e| pin_err(what, iface, path, &e))
}

/// Remove everything pinned under `pin_dir`: links first (which detaches the programs
/// once no process holds them), then maps. Returns the links removed.
///
/// # Errors
/// I/O errors other than "not found".
pub fn remove_pins(pin_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut links = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(links),
        Err(e) => return Err(e),
    };
    let mut maps = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PIN_PREFIX) {
            std::fs::remove_file(e.path())?;
            links.push(name);
        } else {
            maps.push(e.path());
        }
    }
    for m in maps {
        std::fs::remove_file(m)?;
    }
    std::fs::remove_dir(pin_dir)?;
    Ok(links)
}

const fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Outbound => tagwall_common::counters::DIR_EGRESS,
        Direction::Inbound => tagwall_common::counters::DIR_INGRESS,
        Direction::Local => tagwall_common::counters::KEY_DIR_LOCAL,
    }
}

/// Names of the `CT_STATS` counters, by index.
pub const CT_STAT_NAMES: [&str; 8] = [
    "new",
    "hit",
    "expired",
    "insert_failed",
    "revalidated",
    "revoked",
    "closed",
    "cached",
];

/// Names of the `FWD_STATS` counters (gateway fast forwarding), by index.
pub const FWD_STAT_NAMES: [&str; 7] = [
    "redirected",
    "not_forwarded",
    "no_neighbor",
    "frag_needed",
    "ttl_expiring",
    "other_interface",
    "unsupported",
];

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Rule id -> counter, only rules that saw packets.
    pub rules: BTreeMap<u32, Counter>,
    /// (direction, reason) -> counter, only non-zero.
    pub reasons: BTreeMap<(u8, u8), Counter>,
    /// `ACTION_*` index -> counter (summed from the reasons, see `counters`).
    pub actions: [Counter; ACTION_MAX as usize],
    /// Connection tracker events (`CT_*` index -> packets), see [`CT_STAT_NAMES`].
    pub conntrack: [u64; CT_STAT_NAMES.len()],
    /// Fast-forwarding outcomes (`FWD_*` index -> counter), see [`FWD_STAT_NAMES`].
    pub fast_forward: [Counter; FWD_STAT_NAMES.len()],
    pub generation: u32,
    pub audit: bool,
}

fn sum_percpu<T: Borrow<MapData>>(
    arr: &PerCpuArray<T, Counter>,
    idx: u32,
) -> Result<Counter, aya::maps::MapError> {
    Ok(arr
        .get(&idx, 0)?
        .iter()
        .fold(Counter::default(), |acc, c| acc.add(*c)))
}

/// A rule's per-CPU counters, summed.
fn sum_cpus(per_cpu: &[RuleCounter]) -> RuleCounter {
    per_cpu
        .iter()
        .fold(RuleCounter::default(), |acc, c| acc.plus(c))
}

/// Every rule's counters in `RULE_STATS`, summed over the CPUs, read in chunks with
/// `BPF_MAP_LOOKUP_BATCH`: a read covers all `MAX_RULES` ids (see
/// [`Counters::read`]), 16,384 syscalls with a lookup per id and 16 in batches of
/// 1,024.
fn read_rule_stats(map: &MapData) -> std::io::Result<Vec<RuleCounter>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    /// `union bpf_attr`, the part `BPF_MAP_*_BATCH` reads (`include/uapi/linux/bpf.h`).
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const CHUNK: usize = 1024;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd()).map_err(std::io::Error::other)?;
    let mut out = vec![RuleCounter::default(); MAX_RULES as usize];
    let mut keys = vec![0u32; CHUNK];
    // A per-CPU map's batch holds each key's value once per possible CPU, each
    // rounded up to 8 bytes (a `RuleCounter` is 64).
    let mut values = vec![RuleCounter::default(); CHUNK * cpus];
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&token_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at buffers of `count` keys and `count * cpus`
        // values of the map's value size, which outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(CHUNK);
        for (key, per_cpu) in keys[..n].iter().zip(values.chunks(cpus)) {
            if let Some(slot) = out.get_mut(*key as usize) {
                *slot = sum_cpus(per_cpu);
            }
        }
        match err {
            // The last batch: what it read is in `count`.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
            None if n == 0 => break,
            None => {}
        }
        token_in = token_out;
        first = false;
    }
    Ok(out)
}

impl Counters {
    /// The packets a rule allowed are counted by their rule only
    /// (`tagwall_common::counters`), so the `allowed` and `established` reasons are
    /// the sums over the rules read: every rule (`rule_ids` `None`, one batch syscall
    /// per 1,024 ids), so that a rule a reload removed keeps its share, or only the
    /// listed ones (a syscall each).
    fn read<T: Borrow<MapData>>(
        rules: &Map,
        reasons: &PerCpuArray<T, Counter>,
        ct: &PerCpuArray<T, Counter>,
        fwd: &PerCpuArray<T, Counter>,
        cfg: DpConfig,
        rule_ids: Option<Vec<u32>>,
    ) -> Result<Self> {
        let mut out = Self {
            generation: cfg.generation,
            audit: cfg.audit != 0,
            ..Self::default()
        };
        let per_rule: Vec<(u32, RuleCounter)> = if let Some(ids) = rule_ids {
            let arr: PerCpuArray<&MapData, RuleCounter> =
                PerCpuArray::try_from(rules).map_err(map_err(names::MAP_RULE_STATS))?;
            let ids: BTreeSet<u32> = ids.into_iter().collect();
            let mut v = Vec::with_capacity(ids.len());
            for id in ids {
                let per_cpu = arr.get(&id, 0).map_err(map_err(names::MAP_RULE_STATS))?;
                v.push((id, sum_cpus(&per_cpu)));
            }
            v
        } else {
            let Map::PerCpuArray(data) = rules else {
                return Err(DataplaneError::MissingMap {
                    name: names::MAP_RULE_STATS,
                });
            };
            let all = read_rule_stats(data).map_err(|source| DataplaneError::Map {
                name: names::MAP_RULE_STATS,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: source,
                }),
            })?;
            (0..).zip(all).collect()
        };
        for (id, c) in per_rule {
            let total = c.total();
            if total.packets == 0 {
                continue;
            }
            out.rules.insert(id, total);
            for (class, k) in c.classes.iter().enumerate() {
                out.tally(class_of(class), ACTION_PASS, *k);
            }
        }
        // Every other packet is counted once, by reason, direction and audit mode;
        // the action follows from the reason and the mode.
        for audit in [false, true] {
            for dir in 0..u8::try_from(DIR_MAX).expect("small") {
                for reason in ALL_REASONS {
                    let c = sum_percpu(reasons, reason_index(dir, reason, audit))
                        .map_err(map_err(names::MAP_REASON_STATS))?;
                    out.tally((dir, reason), action_of(reason, audit), c);
                }
            }
        }
        for (i, slot) in out.conntrack.iter_mut().enumerate() {
            *slot = sum_percpu(ct, u32::try_from(i).expect("small"))
                .map_err(map_err(names::MAP_CT_STATS))?
                .packets;
        }
        for (i, slot) in out.fast_forward.iter_mut().enumerate() {
            *slot = sum_percpu(fwd, u32::try_from(i).expect("small"))
                .map_err(map_err(names::MAP_FWD_STATS))?;
        }
        Ok(out)
    }

    /// Add `c` (when it counted packets) to the reason `(dir, reason)` and to `action`.
    fn tally(&mut self, key: (u8, u8), action: u32, c: Counter) {
        if c.packets != 0 {
            let r = self.reasons.entry(key).or_default();
            *r = r.add(c);
            let a = &mut self.actions[action as usize];
            *a = a.add(c);
        }
    }

    /// Read the counters of a running datapath from its pinned maps (every rule's).
    ///
    /// # Errors
    /// [`DataplaneError::NotPinned`] when nothing is pinned at `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<MapData> {
            let path = pin_dir.join(names::pin_file(name));
            MapData::from_pin(&path).map_err(|source| DataplaneError::NotPinned {
                path: path.display().to_string(),
                source,
            })
        };
        let arr = |name: &'static str| -> Result<PerCpuArray<MapData, Counter>> {
            PerCpuArray::try_from(Map::PerCpuArray(open(name)?)).map_err(map_err(name))
        };
        let cfg: Array<MapData, DpConfig> = Array::try_from(Map::Array(open(names::MAP_CONFIG)?))
            .map_err(map_err(names::MAP_CONFIG))?;
        let cfg = cfg.get(&0, 0).map_err(map_err(names::MAP_CONFIG))?;
        Self::read(
            &Map::PerCpuArray(open(names::MAP_RULE_STATS)?),
            &arr(names::MAP_REASON_STATS)?,
            &arr(names::MAP_CT_STATS)?,
            &arr(names::MAP_FWD_STATS)?,
            cfg,
            None,
        )
    }

    /// The counter of one (direction, reason).
    #[must_use]
    pub fn reason(&self, dir: u8, reason: u8) -> Counter {
        self.reasons
            .get(&(dir, reason))
            .copied()
            .unwrap_or_default()
    }

    #[must_use]
    pub fn rule(&self, id: u32) -> Counter {
        self.rules.get(&id).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tagwall_common::ct::CtTimeouts;

    const S: u64 = 1_000_000_000;

    /// The embedded object is generated for the instruction set the build script
    /// asked for: 32-bit conditional jumps (instruction class `BPF_JMP32`) exist from
    /// v3 on, and LLVM emits them for the packet's 32-bit fields. Fails when the
    /// flag stops reaching bpf-linker (the object silently falls back to `generic`).
    #[test]
    fn object_is_built_for_the_requested_instruction_set() {
        const BPF_JMP32: u8 = 0x06;
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let (mut jmp32, mut all) = (0usize, 0usize);
        for f in obj.functions.values() {
            all += f.instructions.len();
            jmp32 += f
                .instructions
                .iter()
                .filter(|i| i.code & 0x07 == BPF_JMP32)
                .count();
        }
        assert!(all > 1000, "only {all} instructions in the object");
        let cpu = env!("TAGWALL_EBPF_CPU_BUILT");
        if cpu == "v3" || cpu == "v4" {
            assert!(
                jmp32 * 20 > all,
                "{cpu}: {jmp32} of {all} instructions are 32-bit jumps"
            );
        } else {
            assert_eq!(jmp32, 0, "{cpu}: 32-bit jumps in a pre-v3 object");
        }
    }

    fn written(ct: CtTimeouts, from: u64) -> DpConfig {
        DpConfig {
            generation: 3,
            ct,
            layout: MAP_LAYOUT,
            ct_filter_from_ns: from,
            ..DpConfig::default()
        }
    }

    #[test]
    fn the_filter_is_ignored_after_a_raise_or_an_unstamped_adoption_only() {
        let d = CtTimeouts::default();
        let now = 5000 * S;
        let after = now + d.max_ns() + S;
        let next = written(d, 0);
        // A fresh CONFIG (fresh tables): trusted at once.
        assert_eq!(filter_from_ns(&DpConfig::default(), &next, false, now), 0);
        // Same or shorter timeouts: whatever the last write said stays.
        assert_eq!(filter_from_ns(&written(d, 0), &next, false, now), 0);
        assert_eq!(filter_from_ns(&written(d, 77), &next, false, now), 77);
        let longer = CtTimeouts {
            udp_replied: d.udp_replied + 1,
            ..d
        };
        assert_eq!(filter_from_ns(&written(longer, 0), &next, false, now), 0);
        // A raise, or tables the filter has not seen.
        assert_eq!(
            filter_from_ns(&written(d, 0), &written(longer, 0), false, now),
            after
        );
        assert_eq!(
            filter_from_ns(&DpConfig::default(), &next, true, now),
            after
        );
        assert_eq!(filter_from_ns(&written(d, 0), &next, true, now), after);
        // Never earlier than an earlier raise asked for.
        let far = after + 10 * S;
        assert_eq!(
            filter_from_ns(&written(d, far), &written(longer, 0), false, now),
            far
        );
    }
}
