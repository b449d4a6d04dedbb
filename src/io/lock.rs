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
    /// # Errors
    /// [`Error::OutputExists`] naming the owner when another live job holds it; filesystem
    /// errors with their path.
    pub fn acquire(output: &Path) -> Result<OutputLock> {
        let path = lock_path(output);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let me = serde_json::to_vec(&Owner::me()).unwrap_or_default();
                    f.write_all(&me).at(&path)?;
                    return Ok(OutputLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match serde_json::from_str::<Owner>(&text) {
                        Ok(owner) if owner.may_be_alive() => {
                            return Err(Error::OutputExists {
                                path: path.clone(),
                                message: format!(
                                    "another tessera job (host {}, pid {}, started {} s ago) is writing this output; wait for it, or remove this file if that job is gone",
                                    owner.host,
                                    owner.pid,
                                    Owner::me().started.saturating_sub(owner.started)
                                ),
                            });
                        }
                        Ok(owner) => tracing::warn!(
                            "stale lock {} (pid {} on this host is gone): taking it over",
                            path.display(),
                            owner.pid
                        ),
                        // A lock being written this instant, or garbage: an unreadable
                        // lock is not trusted to be stale.
                        Err(_) if text.is_empty() => {
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            continue;
                        }
                        Err(_) => {
                            return Err(Error::OutputExists {
                                path: path.clone(),
                                message: "an unreadable lock file; remove it if no job is writing this output".into(),
                            })
                        }
                    }
                    std::fs::remove_file(&path).at(&path)?;
                }
                Err(e) => return Err(e).at(&path),
            }
        }
        Err(Error::OutputExists {
            path,
            message: "another job keeps taking this lock".into(),
        })
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
        assert!(OutputLock::acquire(&out)
            .unwrap_err()
            .to_string()
            .contains("unreadable"));
    }
}
