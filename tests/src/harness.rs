//! Load the real datapath, apply rules, run frames through it with
//! BPF_PROG_TEST_RUN, and observe each verdict through the counters it records.

use aya::programs::{TestRun, TestRunOptions};
use tagwall::{
    compile::compile,
    dataplane::{Counters, Dataplane, LoadOptions, Settings},
    rules::Rule,
};
use tagwall_common::{
    counters::{ACTION_AUDIT_PASS, ACTION_DROP, ACTION_PASS, DIR_MAX},
    names,
    policy::DEFAULT_SETS_PER_SLOT,
    verdict::ALL_REASONS,
};

/// Which entry program a frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// Gateway mode.
    Xdp,
    /// Host mode, leaving the host.
    TcEgress,
    /// Host mode, arriving at the host.
    TcIngress,
    /// Gateway mode, the gateway's own outbound traffic (TC egress).
    TcLocal,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// TC return code of a dropped packet.
pub const TC_ACT_SHOT: u32 = 2;

/// What one packet did, as the datapath reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// XDP return code.
    pub action: u32,
    /// The reason whose counter moved (exactly one must).
    pub reason: u8,
    /// The rule whose counter moved (0: none).
    pub rule_id: u32,
    /// Which action counter moved (`ACTION_*`, summed from REASON_STATS).
    pub action_slot: u32,
}

pub struct Harness {
    pub dp: Dataplane,
    pub rules: Vec<Rule>,
    ids: Vec<u32>,
}

impl Harness {
    /// Load a fresh (unpinned) datapath with `rules` applied.
    ///
    /// # Panics
    /// On any load/compile/apply failure.
    #[must_use]
    pub fn new(rules: Vec<Rule>, audit: bool) -> Self {
        Self::with(rules, &Settings::stateless(audit))
    }

    /// Load a fresh (unpinned) datapath with `rules` and `settings` applied.
    ///
    /// # Panics
    /// On any load/compile/apply failure.
    #[must_use]
    pub fn with(rules: Vec<Rule>, settings: &Settings) -> Self {
        Self::with_load(rules, settings, &LoadOptions::default())
    }

    /// Like [`Harness::with`], loading the datapath with `opts` (e.g. a lookup table
    /// too small for the policy, to test the LPM fallback).
    ///
    /// # Panics
    /// On any load/compile/apply failure.
    #[must_use]
    pub fn with_load(rules: Vec<Rule>, settings: &Settings, opts: &LoadOptions) -> Self {
        crate::netns::require_root();
        let mut dp = Dataplane::load(opts).expect("load datapath");
        let policy = compile(&rules, DEFAULT_SETS_PER_SLOT as usize).expect("compile");
        dp.apply(&policy, settings).expect("apply");
        let ids = rules.iter().map(|r| r.id).collect();
        Self { dp, rules, ids }
    }

    /// Replace the policy and settings (same datapath, slot switch).
    pub fn reapply_with(&mut self, rules: Vec<Rule>, settings: &Settings) {
        let policy = compile(&rules, DEFAULT_SETS_PER_SLOT as usize).expect("compile");
        self.dp.apply(&policy, settings).expect("apply");
        self.ids = rules.iter().map(|r| r.id).collect();
        self.rules = rules;
    }

    /// Replace the policy (same datapath, slot switch).
    pub fn reapply(&mut self, rules: Vec<Rule>, audit: bool) {
        let policy = compile(&rules, DEFAULT_SETS_PER_SLOT as usize).expect("compile");
        self.dp
            .apply(&policy, &Settings::stateless(audit))
            .expect("apply");
        self.ids = rules.iter().map(|r| r.id).collect();
        self.rules = rules;
    }

    /// The counters of the harness's rules and of rule 0 (the gateway's own
    /// traffic): the packets a rule allowed count in the reasons only through the
    /// rules read (`Dataplane::counters_for`).
    pub fn snapshot(&self) -> Counters {
        self.dp
            .counters_for(std::iter::once(0).chain(self.ids.iter().copied()))
            .expect("read counters")
    }

    /// Run one frame through the program (repeat = 1).
    ///
    /// # Panics
    /// If the test run fails, or the counters do not show exactly one reason and at
    /// most one rule moving by one packet of the frame's length.
    pub fn run(&mut self, frame: &[u8]) -> Observed {
        self.run_on(Prog::Xdp, frame)
    }

    /// Run one frame through one of the entry programs (see [`Harness::run`]).
    ///
    /// # Panics
    /// As [`Harness::run`].
    pub fn run_on(&mut self, prog: Prog, frame: &[u8]) -> Observed {
        let before = self.snapshot();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let ret = match prog {
            Prog::Xdp => self.dp.xdp().test_run(opts),
            Prog::TcEgress => self.dp.tc(names::PROG_TC_EGRESS).test_run(opts),
            Prog::TcIngress => self.dp.tc(names::PROG_TC_INGRESS).test_run(opts),
            Prog::TcLocal => self.dp.tc(names::PROG_TC_LOCAL).test_run(opts),
        }
        .expect("BPF_PROG_TEST_RUN")
        .return_value;
        let after = self.snapshot();
        let len = frame.len() as u64;
        let mut reasons = Vec::new();
        for dir in 0..u8::try_from(DIR_MAX).expect("small") {
            for r in ALL_REASONS {
                let (b, a) = (before.reason(dir, r), after.reason(dir, r));
                if a != b {
                    assert_eq!(
                        (a.packets - b.packets, a.bytes - b.bytes),
                        (1, len),
                        "reason {r} moved oddly"
                    );
                    reasons.push(r);
                }
            }
        }
        assert_eq!(
            reasons.len(),
            1,
            "exactly one reason counter must move, moved: {reasons:?}"
        );
        let mut rules = Vec::new();
        for id in &self.ids {
            let (b, a) = (before.rule(*id), after.rule(*id));
            if a != b {
                assert_eq!(
                    (a.packets - b.packets, a.bytes - b.bytes),
                    (1, len),
                    "rule {id} moved oddly"
                );
                rules.push(*id);
            }
        }
        assert!(
            rules.len() <= 1,
            "at most one rule counter may move: {rules:?}"
        );
        let mut slots = Vec::new();
        for slot in [ACTION_PASS, ACTION_DROP, ACTION_AUDIT_PASS] {
            if after.actions[slot as usize] != before.actions[slot as usize] {
                slots.push(slot);
            }
        }
        assert_eq!(
            slots.len(),
            1,
            "exactly one action counter must move: {slots:?}"
        );
        Observed {
            action: ret,
            reason: reasons[0],
            rule_id: rules.first().copied().unwrap_or(0),
            action_slot: slots[0],
        }
    }
}

/// Set every stamp of the flow tables' presence filter (`tagwall_common::ct`,
/// "Presence filter"): `u64::MAX` as if a live flow held every slot, 0 as if no flow
/// had ever been stamped.
///
/// # Errors
/// The map is missing or a write fails.
pub fn stamp_ct_filter(dp: &Dataplane, stamp: u64) -> anyhow::Result<()> {
    use aya::maps::{Array, Map, MapData};
    let Some(Map::Array(m)) = dp.map(names::MAP_CT_FILTER) else {
        anyhow::bail!("no {} array map", names::MAP_CT_FILTER);
    };
    let map = MapData::from_id(m.info()?.id())?;
    let mut filter: Array<MapData, u64> = Array::try_from(Map::Array(map))?;
    for i in 0..filter.len() {
        filter.set(i, stamp, 0)?;
    }
    Ok(())
}

/// Keep this thread (and so its BPF_PROG_TEST_RUNs) on one CPU: the flow cache and the
/// top-denied slots are per CPU, and the scheduler may move a thread between runs.
pub fn pin_to_first_allowed_cpu() {
    let cpus = allowed_cpus().expect("sched_getaffinity");
    pin_to(cpus[0]).expect("sched_setaffinity");
}

/// The CPUs the calling thread may run on (its affinity mask), in order.
///
/// # Errors
/// `sched_getaffinity` failing, or an empty mask.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t filled in by the kernel for this thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    // SAFETY: reading bits of an initialised set, below its size.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(std::io::Error::other("an empty CPU affinity mask"));
    }
    Ok(cpus)
}

/// Pin the calling thread to CPU `cpu`.
///
/// # Errors
/// `sched_setaffinity` failing (e.g. a CPU outside the cpuset).
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The `TOP_SLOTS` slot (`tagwall_common::reports::top_slot`) of the top-denied key
/// of an outbound UDP drop to `remote` port `port`.
#[must_use]
pub fn udp_top_slot(remote: std::net::Ipv4Addr, port: u16) -> u32 {
    tagwall_common::reports::top_slot(&tagwall_common::reports::TopKey {
        addr: tagwall_common::ct::CtKey::words(&remote.to_ipv6_mapped().octets()),
        port,
        proto: 17,
        dir: tagwall_common::counters::DIR_EGRESS,
        ..Default::default()
    })
}
