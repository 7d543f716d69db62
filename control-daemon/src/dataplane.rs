//! Loading the embedded eBPF object, writing compiled policies into its maps,
//! attaching it, and reading its counters back.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
    programs::{Xdp, XdpMode},
};
use tagwall_common::{
    counters::{ACTION_MAX, Counter, DIR_MAX, MAX_RULES, reason_index},
    names,
    policy::{
        Config as DpConfig, DEFAULT_MAX_PREFIXES, DEFAULT_SETS_PER_SLOT, KEY_HDR_BITS,
        MAX_PORT_RULES, PolicyKeyV4, PolicyKeyV6, PolicyValue, PortSet,
    },
    verdict::ALL_REASONS,
};

use crate::{compile::CompiledPolicy, rules::Direction};

/// The datapath object, built by build.rs from `dataplane-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tagwall-dataplane"));

/// Time between switching the active slot and deleting the old slot's entries. An XDP
/// program run lasts microseconds; a packet that read the old slot number finishes its
/// lookups long before this.
pub const OLD_SLOT_GRACE: Duration = Duration::from_millis(5);

/// Maps pinned in bpffs (so `tagwall counters` and a restarted daemon find them).
pub const PINNED_MAPS: [&str; 7] = [
    names::MAP_POLICY_V4,
    names::MAP_POLICY_V6,
    names::MAP_PORT_SETS,
    names::MAP_CONFIG,
    names::MAP_RULE_STATS,
    names::MAP_REASON_STATS,
    names::MAP_ACTION_STATS,
];

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "the embedded eBPF object is empty (built with AYA_BUILD_SKIP=1?): rebuild with \
         `cargo build` after `cargo xtask setup`"
    )]
    EmptyObject,
    #[error("loading the eBPF object failed: {0}; are you root (CAP_BPF, CAP_NET_ADMIN)?")]
    Load(#[source] aya::EbpfError),
    #[error("the kernel rejected the XDP program: {0}")]
    Verifier(#[source] aya::programs::ProgramError),
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
         restart with a larger `limits.port_sets`"
    )]
    SetsFull { needed: usize, have: u32 },
    #[error("cannot attach XDP to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pin directory {path}: {source}; is bpffs mounted there (`mount -t bpf bpf DIR`)?")]
    PinDir {
        path: String,
        #[source]
        source: std::io::Error,
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

/// Load-time options.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Pin (and reuse) the maps in this bpffs directory.
    pub pin_dir: Option<PathBuf>,
    pub max_prefixes: u32,
    pub sets_per_slot: u32,
    /// aya-log level in the datapath (0 off .. 5 trace).
    pub log_level: u8,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: None,
            max_prefixes: DEFAULT_MAX_PREFIXES,
            sets_per_slot: DEFAULT_SETS_PER_SLOT,
            log_level: 0,
        }
    }
}

/// What [`Dataplane::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyStats {
    pub slot: u8,
    pub generation: u32,
    pub prefixes: usize,
    pub sets: usize,
    pub removed_old: usize,
}

/// A loaded datapath.
pub struct Dataplane {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    sets_per_slot: u32,
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
                PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::MAP_POLICY_V4, opts.max_prefixes)
            .map_max_entries(names::MAP_POLICY_V6, opts.max_prefixes)
            .map_max_entries(names::MAP_PORT_SETS, 2 * opts.sets_per_slot)
            .override_global(aya_log::LEVEL, &opts.log_level, false);
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
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_XDP)
            .expect("tagwall_xdp in the object")
            .try_into()
            .map_err(DataplaneError::Verifier)?;
        prog.load().map_err(DataplaneError::Verifier)?;
        Ok(Self {
            ebpf,
            logger,
            sets_per_slot: opts.sets_per_slot,
        })
    }

    /// The XDP program (for attaching elsewhere and for BPF_PROG_TEST_RUN).
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
            .map_err(DataplaneError::Verifier)?;
        if prog.fd().is_err() {
            prog.load().map_err(DataplaneError::Verifier)?;
        }
        Ok(prog)
    }

    /// Take the aya-log ring buffer so the caller can drain it (e.g. in a task).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Attach to `iface`. Returns the mode that worked.
    ///
    /// # Errors
    /// [`DataplaneError::Attach`] with the kernel's reason.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode> {
        let prog = self.xdp();
        let attach = |prog: &mut Xdp, m: XdpMode| {
            prog.attach(iface, m)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_owned(),
                    source,
                })
        };
        match mode {
            AttachMode::Native => attach(prog, XdpMode::Driver).map(|_| XdpMode::Driver),
            AttachMode::Generic => attach(prog, XdpMode::Skb).map(|_| XdpMode::Skb),
            AttachMode::Auto => match attach(prog, XdpMode::Driver) {
                Ok(_) => Ok(XdpMode::Driver),
                Err(e) => {
                    tracing::warn!(
                        "native XDP attach to {iface} failed ({e}); falling back to generic \
                         (SKB) mode, which is slower"
                    );
                    attach(prog, XdpMode::Skb).map(|_| XdpMode::Skb)
                }
            },
        }
    }

    fn config(&self) -> Result<DpConfig> {
        let map = self
            .ebpf
            .map(names::MAP_CONFIG)
            .ok_or(DataplaneError::MissingMap {
                name: names::MAP_CONFIG,
            })?;
        let arr: Array<&MapData, DpConfig> =
            Array::try_from(map).map_err(map_err(names::MAP_CONFIG))?;
        arr.get(&0, 0).map_err(map_err(names::MAP_CONFIG))
    }

    /// Write `policy` into the inactive slot, switch to it in one map write, then
    /// remove the old slot's entries. Packets see the old or the new policy, never a mix.
    ///
    /// # Errors
    /// Map errors, or [`DataplaneError::SetsFull`] (nothing is switched then).
    pub fn apply(&mut self, policy: &CompiledPolicy, audit: bool) -> Result<ApplyStats> {
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
                let mut set = PortSet::default();
                debug_assert!(entries.len() <= MAX_PORT_RULES);
                set.count = u32::try_from(entries.len()).expect("small");
                set.rules[..entries.len()].copy_from_slice(entries);
                let idx = base + u32::try_from(i).expect("sets fit u32");
                sets.set(idx, set, 0)
                    .map_err(map_err(names::MAP_PORT_SETS))?;
            }
        }
        {
            let map = self.map_mut(names::MAP_POLICY_V4)?;
            let mut trie: LpmTrie<&mut MapData, PolicyKeyV4, PolicyValue> =
                LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V4))?;
            for (dir, net, set) in &policy.v4 {
                let key = Key::new(
                    KEY_HDR_BITS + u32::from(net.prefix_len()),
                    PolicyKeyV4 {
                        slot: new,
                        dir: dir_code(*dir),
                        _pad: [0; 2],
                        addr: net.network().octets(),
                    },
                );
                trie.insert(
                    &key,
                    PolicyValue {
                        set_id: base + set,
                        flags: 0,
                    },
                    0,
                )
                .map_err(map_err(names::MAP_POLICY_V4))?;
            }
        }
        {
            let map = self.map_mut(names::MAP_POLICY_V6)?;
            let mut trie: LpmTrie<&mut MapData, PolicyKeyV6, PolicyValue> =
                LpmTrie::try_from(map).map_err(map_err(names::MAP_POLICY_V6))?;
            for (dir, net, set) in &policy.v6 {
                let key = Key::new(
                    KEY_HDR_BITS + u32::from(net.prefix_len()),
                    PolicyKeyV6 {
                        slot: new,
                        dir: dir_code(*dir),
                        _pad: [0; 2],
                        addr: net.network().octets(),
                    },
                );
                trie.insert(
                    &key,
                    PolicyValue {
                        set_id: base + set,
                        flags: 0,
                    },
                    0,
                )
                .map_err(map_err(names::MAP_POLICY_V6))?;
            }
        }
        let generation = cur.generation.wrapping_add(1);
        {
            let map = self.map_mut(names::MAP_CONFIG)?;
            let mut arr: Array<&mut MapData, DpConfig> =
                Array::try_from(map).map_err(map_err(names::MAP_CONFIG))?;
            arr.set(
                0,
                DpConfig {
                    slot: u32::from(new),
                    audit: u32::from(audit),
                    generation,
                    _reserved: 0,
                },
                0,
            )
            .map_err(map_err(names::MAP_CONFIG))?;
        }
        std::thread::sleep(OLD_SLOT_GRACE);
        let removed_old = self.clear_slot(old)?;
        Ok(ApplyStats {
            slot: new,
            generation,
            prefixes: policy.prefixes(),
            sets: policy.sets.len(),
            removed_old,
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    /// Remove every LPM entry of `slot`. Port sets need no clearing: only LPM entries
    /// point at them, and a set index is rewritten before any entry names it.
    fn clear_slot(&mut self, slot: u8) -> Result<usize> {
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
        self.counters_for(1..MAX_RULES)
    }

    /// Current counters, reading only the given rules' counters (cheaper than all).
    ///
    /// # Errors
    /// Map errors.
    pub fn counters_for(&self, rule_ids: impl IntoIterator<Item = u32>) -> Result<Counters> {
        let arr = |name: &'static str| -> Result<PerCpuArray<&MapData, Counter>> {
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?;
            PerCpuArray::try_from(map).map_err(map_err(name))
        };
        Counters::read(
            &arr(names::MAP_RULE_STATS)?,
            &arr(names::MAP_REASON_STATS)?,
            &arr(names::MAP_ACTION_STATS)?,
            self.config()?,
            rule_ids,
        )
    }
}

const fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Outbound => tagwall_common::counters::DIR_EGRESS,
        Direction::Inbound => tagwall_common::counters::DIR_INGRESS,
    }
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Rule id -> counter, only rules that saw packets.
    pub rules: BTreeMap<u32, Counter>,
    /// (direction, reason) -> counter, only non-zero.
    pub reasons: BTreeMap<(u8, u8), Counter>,
    /// `ACTION_*` index -> counter.
    pub actions: [Counter; ACTION_MAX as usize],
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

impl Counters {
    fn read<T: Borrow<MapData>>(
        rules: &PerCpuArray<T, Counter>,
        reasons: &PerCpuArray<T, Counter>,
        actions: &PerCpuArray<T, Counter>,
        cfg: DpConfig,
        rule_ids: impl IntoIterator<Item = u32>,
    ) -> Result<Self> {
        let mut out = Self {
            generation: cfg.generation,
            audit: cfg.audit != 0,
            ..Self::default()
        };
        for id in rule_ids {
            let c = sum_percpu(rules, id).map_err(map_err(names::MAP_RULE_STATS))?;
            if c.packets != 0 {
                out.rules.insert(id, c);
            }
        }
        for dir in 0..u8::try_from(DIR_MAX).expect("small") {
            for reason in ALL_REASONS {
                let c = sum_percpu(reasons, reason_index(dir, reason))
                    .map_err(map_err(names::MAP_REASON_STATS))?;
                if c.packets != 0 {
                    out.reasons.insert((dir, reason), c);
                }
            }
        }
        for (i, slot) in out.actions.iter_mut().enumerate() {
            *slot = sum_percpu(actions, u32::try_from(i).expect("small"))
                .map_err(map_err(names::MAP_ACTION_STATS))?;
        }
        Ok(out)
    }

    /// Read the counters of a running datapath from its pinned maps.
    ///
    /// # Errors
    /// [`DataplaneError::NotPinned`] when nothing is pinned at `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        let open = |name: &'static str| -> Result<MapData> {
            MapData::from_pin(pin_dir.join(name)).map_err(|source| DataplaneError::NotPinned {
                path: pin_dir.join(name).display().to_string(),
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
            &arr(names::MAP_RULE_STATS)?,
            &arr(names::MAP_REASON_STATS)?,
            &arr(names::MAP_ACTION_STATS)?,
            cfg,
            1..MAX_RULES,
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
