//! One job per output: `<output>.lock`, created exclusively by rank 0 before anything is
//! checked or cleared, holding the owner's host, PID and start time, and removed when the run
//! ends (completed or failed). A second job finds it and is refused, naming the owner. A lock
//! left by a killed job on this host (its PID is gone) is stale: it is taken over with a
//! warning. One left by a job on another host cannot be checked from here; the message says
//! how to remove it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Owner {
    fn me() -> Owner {
        Owner {
            host: crate::comm::hostname(),
            pid: std::process::id(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Whether the owner may still be running: always for another host; on this host, while a
    /// process with its PID exists.
    fn may_be_alive(&self) -> bool {
        if self.host != crate::comm::hostname() {
            return true;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        let exists = r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        // A killed rank whose launcher is gone can stay a zombie (exited, never reaped, e.g.
        // under a container's init): it still answers signal 0 but holds nothing.
        exists && !is_zombie(self.pid)
    }
}

/// Whether `/proc` says the process has exited but not been reaped (state Z or X).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(false)
}

/// The owner of `output`'s lock if a job that may still be running holds it.
pub fn live_owner(output: &Path) -> Option<Owner> {
    let text = std::fs::read_to_string(lock_path(output)).ok()?;
    serde_json::from_str::<Owner>(&text)
        .ok()
        .filter(Owner::may_be_alive)
}

/// A held lock; removed on drop.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
}

/// The lock file of an output (file, store or directory).
pub fn lock_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl OutputLock {
    /// Takes the lock of `output` for this process.
    ///
    /// The owner is written to a temporary file first and hard-linked to the lock's name (an
    /// atomic create that fails if the name exists), so a lock file always holds its owner:
    /// a job killed while taking it leaves at most its temporary, which the next job on this
    /// host removes. Where the file system has no hard links, the lock is created and then
    /// written, and an empty lock older than [`EMPTY_LOCK_GRACE`] is taken to be a killed
    /// job's.
    ///
    /// # Errors
    /// [`Error::OutputExists`] naming the owner when another live job holds it, or saying
    /// which file to remove; filesystem errors with their path.
    pub fn acquire(output: &Path) -> Result<OutputLock> {
        let path = lock_path(output);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        remove_stale_temporaries(&path);
        let me = serde_json::to_vec(&Owner::me()).unwrap_or_default();
        for _ in 0..3 {
            match create_holding(&path, &me) {
                Ok(()) => return Ok(OutputLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !held_by_nobody(&path)? {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                    remove_lock(&path)?;
                }
                Err(e) => return Err(e).at(&path),
            }
        }
        Err(Error::OutputExists {
            message: format!(
                "other jobs keep taking and dropping this lock; if no tessera job is writing this output, remove {}",
                path.display()
            ),
            path,
        })
    }
}

/// How old an empty lock must be before it is taken for a killed job's (only file systems
/// without hard links can leave one: elsewhere a lock is never seen empty).
pub const EMPTY_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates `path` holding `owner`, failing with `AlreadyExists` if it exists.
fn create_holding(path: &Path, owner: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_of(path, &crate::comm::hostname(), std::process::id());
    if let Err(e) = std::fs::write(&tmp, owner) {
        // A full disk: no half-written temporary left behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            // No hard links here (some FUSE and object-store mounts): create, then write.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)?;
            f.write_all(owner).inspect_err(|_| {
                let _ = std::fs::remove_file(path);
            })
        }
        other => other,
    }
}

/// `out.zarr.lock.tmp-<host>-<pid>`: a lock being written.
fn temporary_of(lock: &Path, host: &str, pid: u32) -> PathBuf {
    let mut name = lock.as_os_str().to_owned();
    name.push(format!(".tmp-{host}-{pid}"));
    PathBuf::from(name)
}

/// Removes the temporaries that jobs of this host killed while taking this lock left behind.
fn remove_stale_temporaries(lock: &Path) {
    let host = crate::comm::hostname();
    for (tmp, pid) in crate::io::safety::pid_siblings(lock, &format!(".tmp-{host}-")) {
        let owner = Owner {
            host: host.clone(),
            pid,
            started: 0,
        };
        if !owner.may_be_alive() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Looks at an existing lock: `Ok(true)` when its owner is gone (the caller takes it over),
/// `Ok(false)` when it is being written this instant (look again); a live owner, or a lock
/// that cannot be judged, is refused with what to do.
fn held_by_nobody(path: &Path) -> Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // Removed between our create and our read: free again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).at(path),
    };
    match serde_json::from_str::<Owner>(&text) {
        Ok(owner) if owner.may_be_alive() => Err(Error::OutputExists {
            path: path.into(),
            message: format!(
                "another tessera job (host {}, pid {}, started {} s ago) is writing this output; wait for it, or remove this file if that job is gone",
                owner.host,
                owner.pid,
                Owner::me().started.saturating_sub(owner.started)
            ),
        }),
        Ok(owner) => {
            tracing::warn!(
                "stale lock {} (pid {} on this host is gone): taking it over",
                path.display(),
                owner.pid
            );
            Ok(true)
        }
        Err(_) if text.is_empty() => {
            let age = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age < EMPTY_LOCK_GRACE {
                return Ok(false);
            }
            tracing::warn!(
                "empty lock {} ({} s old: a job killed while taking it): taking it over",
                path.display(),
                age.as_secs()
            );
            Ok(true)
        }
        Err(_) => Err(Error::OutputExists {
            path: path.into(),
            message: "is not a lock tessera wrote (unreadable); remove it if no job is writing this output".into(),
        }),
    }
}

fn remove_lock(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_holds_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not yet waited for: a zombie.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(is_zombie(pid));
        let owner = Owner {
            host: crate::comm::hostname(),
            pid,
            started: 0,
        };
        assert!(!owner.may_be_alive());
        child.wait().unwrap();
        assert!(!is_zombie(std::process::id()));
    }

    #[test]
    fn a_second_holder_is_refused_and_a_dead_one_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out.zarr");
        let held = OutputLock::acquire(&out).unwrap();
        let e = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(
            e.contains("another tessera job") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        assert!(!lock_path(&out).exists());
        // A lock left by a process of this host that no longer exists.
        let dead = Owner {
            host: crate::comm::hostname(),
            pid: i32::MAX as u32 - 7,
            started: 0,
        };
        std::fs::write(lock_path(&out), serde_json::to_vec(&dead).unwrap()).unwrap();
        let taken = OutputLock::acquire(&out).unwrap();
        let now: Owner = serde_json::from_slice(&std::fs::read(lock_path(&out)).unwrap()).unwrap();
        assert_eq!(now.pid, std::process::id());
        drop(taken);
        // Another host's lock cannot be checked: refused.
        let remote = Owner {
            host: "elsewhere-node-17".into(),
            pid: 1,
            started: 0,
        };
        std::fs::write(lock_path(&out), serde_json::to_vec(&remote).unwrap()).unwrap();
        let e = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(e.contains("elsewhere-node-17"), "{e}");
        std::fs::write(lock_path(&out), b"{not json").unwrap();
        let e = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(e.contains("unreadable") && e.contains("remove it"), "{e}");
    }

    #[test]
    fn leftovers_of_a_job_killed_while_locking_are_cleared() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out.zarr");
        let lock = lock_path(&out);
        // Killed between creating the lock and writing it (the old protocol, or a file
        // system without hard links): an empty lock, old enough to be a dead job's.
        let f = std::fs::File::create(&lock).unwrap();
        let old = std::time::SystemTime::now() - EMPTY_LOCK_GRACE * 2;
        f.set_modified(old).unwrap();
        drop(f);
        // Killed between writing the temporary and linking it.
        let host = crate::comm::hostname();
        let dead_tmp = temporary_of(&lock, &host, i32::MAX as u32 - 9);
        std::fs::write(&dead_tmp, b"{}").unwrap();
        let live_tmp = temporary_of(&lock, &host, std::process::id());
        let taken = OutputLock::acquire(&out).unwrap();
        assert!(!dead_tmp.exists());
        let owner: Owner = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        assert_eq!(owner.pid, std::process::id());
        assert!(!live_tmp.exists(), "the lock's own temporary is removed");
        drop(taken);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // A fresh empty lock (a job writing it this instant) is waited for, then refused
        // with what to do.
        std::fs::File::create(&lock).unwrap();
        let e = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(e.contains(&format!("remove {}", lock.display())), "{e}");
    }
}
