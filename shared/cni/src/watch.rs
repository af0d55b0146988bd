//! The network configuration in use, kept current by watching its directory.
//!
//! [`current`] answers the network [`NetworkConfig::load`] would, without reading the directory
//! on every call: the first call for a directory loads it and starts a watch (inotify, on a
//! thread of its own that blocks in `read`), and every change in the directory (a file
//! written, closed, moved in or out, removed; the directory itself moved or removed) reloads it.
//! So a configuration added later is in use at once, with no restart. A call also compares the
//! modification times of the directory and of the file in use with those of the last load (two
//! `stat`s) and reloads at once when they differ, so a change is in use even before the watch's
//! thread has seen its event. While the directory holds
//! no valid network, or cannot be watched, each call loads it afresh (its error is then current
//! too). The watch lives as long as the process.

use super::{CniError, NetworkConfig};
use rustix::fs::inotify::{self, WatchFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The last load of one watched directory, with the modification times it was made at.
type Cached = Arc<RwLock<Option<Loaded>>>;

#[derive(Clone)]
struct Loaded {
    network: NetworkConfig,
    stamp: Stamp,
}

/// The modification times of the directory and of the network's file.
type Stamp = (Option<std::time::SystemTime>, Option<std::time::SystemTime>);

fn stamp(dir: &Path, source: &Path) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(dir), mtime(source))
}

/// Loads `dir`, with the stamp taken before reading it (a change while reading is seen next time).
fn load(dir: &Path) -> Option<Loaded> {
    let before = std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    let network = NetworkConfig::load(dir).ok()?;
    let mut stamp = stamp(dir, &network.source);
    stamp.0 = before;
    Some(Loaded { network, stamp })
}

fn watches() -> &'static Mutex<HashMap<PathBuf, Cached>> {
    static WATCHES: OnceLock<Mutex<HashMap<PathBuf, Cached>>> = OnceLock::new();
    WATCHES.get_or_init(Default::default)
}

/// The network in `dir`, as [`NetworkConfig::load`] finds it, from the watched copy.
pub fn current(dir: &Path) -> Result<NetworkConfig, CniError> {
    let cached = {
        let Ok(mut watches) = watches().lock() else { return NetworkConfig::load(dir) };
        match watches.get(dir) {
            Some(cached) => cached.clone(),
            None => match watch(dir) {
                Ok(cached) => {
                    watches.insert(dir.to_path_buf(), cached.clone());
                    cached
                }
                Err(err) => {
                    tracing::debug!(dir = %dir.display(), error = %err, "CNI configuration directory not watched");
                    return NetworkConfig::load(dir);
                }
            },
        }
    };
    if let Ok(guard) = cached.read()
        && let Some(loaded) = guard.as_ref()
        && loaded.stamp == stamp(dir, &loaded.network.source)
    {
        return Ok(loaded.network.clone());
    }
    let loaded = load(dir);
    if let Ok(mut guard) = cached.write() {
        guard.clone_from(&loaded);
    }
    match loaded {
        Some(loaded) => Ok(loaded.network),
        // The error, as it is now.
        None => NetworkConfig::load(dir),
    }
}

/// Starts watching `dir`, loads it, and reloads it on every change.
fn watch(dir: &Path) -> std::io::Result<Cached> {
    let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
    let flags = WatchFlags::CLOSE_WRITE
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF;
    inotify::add_watch(&fd, dir, flags)?;
    // Loaded after the watch is set: a change from here on is seen.
    let cached: Cached = Arc::new(RwLock::new(load(dir)));
    let (shared, dir) = (cached.clone(), dir.to_path_buf());
    std::thread::Builder::new().name("cni-conf-watch".into()).spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(&fd, &mut buf) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "CNI configuration watch ended");
                    // Without a watch, every call loads the directory.
                    if let Ok(mut guard) = shared.write() {
                        *guard = None;
                    }
                    if let Ok(mut watches) = watches().lock() {
                        watches.remove(&dir);
                    }
                    return;
                }
            }
            let loaded = load(&dir);
            tracing::info!(
                dir = %dir.display(),
                network = loaded.as_ref().map(|l| l.network.name.as_str()).unwrap_or("(none)"),
                "CNI configuration directory changed: reloaded"
            );
            if let Ok(mut guard) = shared.write() {
                *guard = loaded;
            }
            // The directory itself went away: its watch is gone with it.
            if !dir.is_dir() {
                if let Ok(mut watches) = watches().lock() {
                    watches.remove(&dir);
                }
                return;
            }
        }
    })?;
    Ok(cached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn eventually(mut check: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_configuration_written_later_or_replaced_or_removed_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(current(dir.path()), Err(CniError::NoConfig { .. })));
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert!(eventually(|| current(dir.path()).is_ok_and(|n| n.name == "a")));
        std::fs::write(dir.path().join("05-b.conf"), r#"{"cniVersion":"1.0.0","name":"b","type":"ptp"}"#).unwrap();
        assert!(eventually(|| current(dir.path()).is_ok_and(|n| n.name == "b")));
        std::fs::remove_file(dir.path().join("05-b.conf")).unwrap();
        std::fs::remove_file(dir.path().join("10-a.conflist")).unwrap();
        assert!(eventually(|| current(dir.path()).is_err()));
    }

    #[test]
    fn a_directory_that_is_not_there_is_loaded_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("net.d");
        assert!(matches!(current(&absent), Err(CniError::ReadDir { .. })));
        std::fs::create_dir(&absent).unwrap();
        std::fs::write(absent.join("a.conf"), r#"{"cniVersion":"1.0.0","name":"a","type":"ptp"}"#).unwrap();
        assert_eq!(current(&absent).unwrap().name, "a");
    }
}
