//! Crash-safe file writes for the data dir.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is
/// written and fsynced, then renamed over `path`, then the folder is fsynced.
/// A crash leaves either the old or the new content, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename is only durable once the directory entry is on disk.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes the temporary files [`write_atomic`] leaves for `path` when a
/// process dies between writing and renaming (`<name>.tmp.<pid>`). Call it
/// at start-up, before anything writes `path`; returns how many it removed.
pub fn remove_stale_temp_files(path: &Path) -> std::io::Result<usize> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut prefix = path.file_name().unwrap_or_default().to_os_string();
    prefix.push(".tmp.");
    let prefix = prefix.to_string_lossy().to_string();
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        write_atomic(&path, b"{}").unwrap();
        fs::write(dir.path().join("catalog.json.tmp.123"), b"torn").unwrap();
        fs::write(dir.path().join("catalog.json.tmp.456"), b"torn").unwrap();
        fs::write(dir.path().join("other.json.tmp.1"), b"keep").unwrap();
        assert_eq!(remove_stale_temp_files(&path).unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["catalog.json", "other.json.tmp.1"]);
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
