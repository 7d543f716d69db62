//! One module per CLI verb (bpfman style). Each has `Args` (clap) and `run`.

use std::path::PathBuf;

use crate::state::{DEFAULT_BPFFS, DEFAULT_STATE_DIR, Paths};

pub mod catalog;
pub mod counters;
pub mod dns;
pub mod lifecycle;
pub mod policy;
pub mod report;
pub mod run;
pub mod tags;

/// Where the state of one attached interface lives.
#[derive(clap::Args, Clone, Debug)]
pub struct Location {
    /// Interface the datapath is (to be) attached to.
    #[arg(long)]
    pub iface: String,
    /// bpffs mount under which maps are pinned (`<bpffs>/tagwall/<iface>/`).
    #[arg(long, env = "TAGWALL_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Directory for the applied-policy description (`<dir>/<iface>/policy.json`).
    #[arg(long, env = "TAGWALL_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl Location {
    #[must_use]
    pub fn paths(&self) -> Paths {
        Paths::new(&self.bpffs, &self.state_dir, &self.iface)
    }
}

/// Output format of listing commands.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}
