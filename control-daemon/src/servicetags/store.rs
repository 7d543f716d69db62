//! On-disk store of validated Service Tags files.
//!
//! Layout: one file per cloud and change number, `<dir>/servicetags-<cloud>-<changeNumber>.json`
//! (cloud lower-cased: `servicetags-public-370.json`), holding the bytes exactly as given (a
//! downloaded file, or the normalised API response from [`super::fetch`]). Files are written to
//! a hidden temporary name in the same directory, synced and renamed into place, so a reader
//! never sees half a file. Anything else in the directory is ignored.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ServiceTags, TagsError};

/// Default store directory of the CLI (`TAGWALL_TAGS_DIR` overrides it).
pub const DEFAULT_DIR: &str = "/var/lib/tagwall/servicetags";

const PREFIX: &str = "servicetags-";
const SUFFIX: &str = ".json";

/// Store file name for `cloud` at `change`.
#[must_use]
pub fn file_name(cloud: &str, change: u64) -> String {
    format!("{PREFIX}{}-{change}{SUFFIX}", cloud.to_ascii_lowercase())
}

/// Parses a store file name back into (cloud lower-case, change number).
fn parse_file_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (cloud, change) = stem.rsplit_once('-')?;
    let valid_cloud = !cloud.is_empty()
        && cloud
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_cloud || change.is_empty() || !change.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((cloud.to_string(), change.parse().ok()?))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TagsError + '_ {
    move |source| TagsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Validates `bytes` and stores them; returns the stored path and the parsed tags.
/// Nothing is written when validation fails. Storing an older `changeNumber` than the newest
/// already stored for the cloud is allowed (rollback) but logged as a warning.
///
/// # Errors
/// Validation errors of [`ServiceTags::parse`]; [`TagsError::Io`] when the directory or file
/// cannot be written.
pub fn save(dir: &Path, bytes: &[u8], origin: &str) -> Result<(PathBuf, ServiceTags), TagsError> {
    let tags = ServiceTags::parse(bytes, origin)?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    if let Some((_, latest, latest_path)) = list(dir)?
        .into_iter()
        .filter(|(c, _, _)| c.eq_ignore_ascii_case(&tags.cloud))
        .max_by_key(|(_, n, _)| *n)
        && latest > tags.change_number
    {
        tracing::warn!(
            cloud = %tags.cloud,
            saving = tags.change_number,
            newest = latest,
            newest_path = %latest_path.display(),
            "storing an OLDER service tags changeNumber than the newest already stored; \
             load_latest will keep using the newer one"
        );
    }
    let final_path = dir.join(file_name(&tags.cloud, tags.change_number));
    write_atomic(dir, &final_path, bytes)?;
    Ok((final_path, tags))
}

fn write_atomic(dir: &Path, final_path: &Path, bytes: &[u8]) -> Result<(), TagsError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = final_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("servicetags");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, final_path).map_err(io(final_path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Ok(d) = fs::File::open(dir) {
        // Make the rename durable; not fatal where directories cannot be synced.
        let _ = d.sync_all();
    }
    result
}

/// All stored files: (cloud lower-case, changeNumber, path), sorted by cloud then change.
/// A missing directory is an empty store.
///
/// # Errors
/// [`TagsError::Io`] when the directory exists but cannot be read.
pub fn list(dir: &Path) -> Result<Vec<(String, u64, PathBuf)>, TagsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some((cloud, change)) = parse_file_name(&name)
            && entry.file_type().map(|t| t.is_file()).unwrap_or(false)
        {
            out.push((cloud, change, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the stored file with the highest changeNumber for `cloud` (case-insensitive), or
/// `None` when nothing is stored for it.
///
/// # Errors
/// [`TagsError::Io`]; validation errors if the stored file is damaged; [`TagsError::Store`]
/// if its content does not match its name (renamed by hand).
pub fn load_latest(dir: &Path, cloud: &str) -> Result<Option<(PathBuf, ServiceTags)>, TagsError> {
    let Some((_, change, path)) = list(dir)?
        .into_iter()
        .filter(|(c, _, _)| c.eq_ignore_ascii_case(cloud))
        .max_by_key(|(_, n, _)| *n)
    else {
        return Ok(None);
    };
    let tags = ServiceTags::load(&path)?;
    if !tags.cloud.eq_ignore_ascii_case(cloud) || tags.change_number != change {
        return Err(TagsError::Store {
            dir: dir.to_path_buf(),
            msg: format!(
                "{} holds cloud {} changeNumber {}, not what its name says; remove it and run \
                 `tagwall tags update` again",
                path.display(),
                tags.cloud,
                tags.change_number
            ),
        });
    }
    Ok(Some((path, tags)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            file_name("AzureGovernment", 402),
            "servicetags-azuregovernment-402.json"
        );
        assert_eq!(
            parse_file_name("servicetags-public-370.json"),
            Some(("public".into(), 370))
        );
        assert_eq!(parse_file_name("servicetags-public-.json"), None);
        assert_eq!(parse_file_name("servicetags--3.json"), None);
        assert_eq!(parse_file_name(".servicetags-public-3.json.tmp-1-0"), None);
        assert_eq!(parse_file_name("servicetags-Public-3.json"), None);
        assert_eq!(parse_file_name("servicetags-public-3x.json"), None);
    }
}
