//! Where tagwall keeps its state: maps pinned in bpffs, and a JSON file describing the
//! applied policy (rule ids and names) so other commands can label counters.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rules::Rule;

/// Default bpffs mount.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/tagwall";

/// Paths for one attached interface.
#[derive(Clone, Debug)]
pub struct Paths {
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
}

impl Paths {
    #[must_use]
    pub fn new(bpffs: &Path, state_dir: &Path, iface: &str) -> Self {
        Self {
            pin_dir: bpffs.join("tagwall").join(iface),
            state_file: state_dir.join(iface).join("policy.json"),
        }
    }
}

/// The applied policy, as recorded for other commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyState {
    /// The interface that names this instance (pins and state live under it).
    pub iface: String,
    /// Every interface the datapath is attached to (the first is `iface`).
    #[serde(default)]
    pub ifaces: Vec<String>,
    /// Host mode (TC) rather than gateway mode (XDP).
    #[serde(default)]
    pub host: bool,
    /// The daemon's pid while it runs; `None` after it exited (the datapath may still
    /// be enforcing: it is pinned).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The config the daemon reads on reload, and where its tags come from.
    #[serde(default)]
    pub policy_path: PathBuf,
    #[serde(default)]
    pub tags: Option<PathBuf>,
    #[serde(default)]
    pub tags_dir: PathBuf,
    pub generation: u32,
    pub audit: bool,
    pub rules: Vec<Rule>,
    /// Reloads attempted since the daemon started.
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    /// Where each rule came from (catalog requirement, user rule, management), so
    /// reports can group counters by requirement. Empty in state files of older
    /// daemons.
    #[serde(default)]
    pub provenance: Vec<crate::policy::Provenance>,
    /// Catalog requirements of the selection that did not become rules, and why.
    #[serde(default)]
    pub not_applied: Vec<crate::policy::NotApplied>,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    pub at_unix: u64,
    pub ok: bool,
    /// Why the new policy was rejected (the old one stayed in force).
    pub error: Option<String>,
    /// Time from reading the config to the switched policy, in microseconds.
    pub micros: u64,
}

/// Write `value` as pretty JSON atomically (temp file + rename), creating the
/// directory: readers never see a half-written state file.
///
/// # Errors
/// I/O or JSON errors.
pub fn save_json<T: Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Read a JSON state file.
///
/// # Errors
/// I/O or JSON errors.
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
}

/// Read a JSON state file that names its schema; a file of another schema is an error.
///
/// # Errors
/// I/O or JSON errors, or `schema(&value) != expected`.
pub fn load_schema<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &str,
    schema: impl Fn(&T) -> &str,
) -> std::io::Result<T> {
    let value: T = load_json(path)?;
    let found = schema(&value);
    if found != expected {
        return Err(std::io::Error::other(format!(
            "{}: schema {found:?}, expected {expected:?}",
            path.display()
        )));
    }
    Ok(value)
}

impl PolicyState {
    /// Write atomically (temp file + rename).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        save_json(self, path)
    }

    /// # Errors
    /// I/O or JSON errors.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        load_json(path)
    }
}

/// Is `dir` on a bpffs mount?
#[must_use]
pub fn is_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == BPF_FS_MAGIC
}

/// Mount bpffs at `dir` if it is not one already.
///
/// # Errors
/// The mount error, with what to do.
pub fn ensure_bpffs(dir: &Path) -> Result<(), String> {
    if is_bpffs(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("bad path {}", dir.display()))?;
    // SAFETY: valid C strings; mounting needs CAP_SYS_ADMIN.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "{} is not bpffs and mounting it failed ({}); run as root or mount it: \
             mount -t bpf bpf {}",
            dir.display(),
            std::io::Error::last_os_error(),
            dir.display()
        ));
    }
    Ok(())
}
