//! Outputs are written under a temporary name and published by a rename when complete.
//!
//! The unit that is renamed is the smallest thing that holds the new array: the `.npy` file,
//! the HDF5 file, the Zarr store, or (when writing a new array into an existing Zarr store)
//! the array's own directory. Its staging twin is the same path with `.partial` appended; the
//! run's journal sits beside it (`.journal`). So an interrupted run leaves `out.zarr.partial`
//! and never an `out.zarr` that looks complete.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::io::Address;

/// The plan for publishing one output.
#[derive(Clone, Debug)]
pub struct Staging {
    /// Where the user asked the array to go.
    pub target: Address,
    /// Where it is written until complete.
    pub staging: Address,
    /// The path renamed at commit (file or directory) and its staging twin.
    published: PathBuf,
    staged: PathBuf,
    /// True when this run resumes an interrupted one.
    pub resuming: bool,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Staging {
    /// Decides where to write `target`, checking it against what is already on disk.
    ///
    /// # Errors
    /// [`Error::OutputExists`] when the output exists without `overwrite`, or an interrupted
    /// run's staging exists without `resume` or `overwrite`.
    pub fn plan(target: &Address, overwrite: bool, resume: bool) -> Result<Staging> {
        let (published, staged, staging) = Self::names(target);
        if published.exists() && !overwrite {
            return Err(Error::OutputExists {
                path: published,
                message: "exists; pass --overwrite to replace it".into(),
            });
        }
        let staged_exists = staged.exists();
        if staged_exists && !resume && !overwrite {
            return Err(Error::OutputExists {
                path: staged,
                message: "an interrupted run left this; pass --resume to finish it or --overwrite to start over".into(),
            });
        }
        let resuming = staged_exists && resume;
        remember_staged(&staged);
        if resume && !staged_exists {
            tracing::warn!(
                "--resume: no interrupted run at {}; starting from the beginning",
                staged.display()
            );
        }
        Ok(Staging {
            target: target.clone(),
            staging,
            published,
            staged,
            resuming,
        })
    }

    /// The path published when `target` is complete (file, store, or an array's directory in
    /// an existing store): what a run locks.
    pub fn published_of(target: &Address) -> PathBuf {
        Self::names(target).0
    }

    /// (published path, its staging twin, the staging address) of `target`.
    fn names(target: &Address) -> (PathBuf, PathBuf, Address) {
        let container = target.container().to_path_buf();
        match target {
            Address::Zarr { store, node } if !node.is_empty() && store.is_dir() => {
                // A new array inside an existing store: stage the array's directory.
                let node_dir = store.join(node);
                let staged = with_suffix(&node_dir, ".partial");
                let staged_node = format!("{node}.partial");
                (
                    node_dir,
                    staged,
                    Address::Zarr {
                        store: store.clone(),
                        node: staged_node,
                    },
                )
            }
            _ => {
                let staged = with_suffix(&container, ".partial");
                (
                    container.clone(),
                    staged.clone(),
                    target.with_container(staged),
                )
            }
        }
    }

    /// The directory that holds the run's journal of finished units.
    pub fn journal_dir(&self) -> PathBuf {
        with_suffix(&self.published, ".journal")
    }

    /// The path published at commit (the file or directory that appears when done).
    pub fn published_path(&self) -> &Path {
        &self.published
    }

    /// Removes a stale staging area and journal (a fresh run that is not resuming). Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn clear_stale(&self) -> Result<()> {
        if !self.resuming {
            remove_any(&self.staged)?;
            remove_any(&self.journal_dir())?;
        }
        Ok(())
    }

    /// Publishes the staged output under its final name, replacing an older one (only
    /// reachable with `--overwrite`) after the new one is in place. Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn commit(&self) -> Result<()> {
        let old = with_suffix(
            &self.published,
            &format!(".replaced-{}", std::process::id()),
        );
        let replacing = self.published.exists();
        if replacing {
            std::fs::rename(&self.published, &old).at(&self.published)?;
        }
        std::fs::rename(&self.staged, &self.published).at(&self.staged)?;
        if replacing {
            remove_any(&old)?;
        }
        remove_any(&self.journal_dir())
    }
}

/// Every staging path this process planned. Process state, because the one place that prints
/// a failed run's error (`main`) knows nothing of the outputs the command chose (several per
/// operation, one per stack of a convert, any job file's).
static STAGED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remember_staged(staged: &Path) {
    let mut staged_paths = STAGED.lock().unwrap_or_else(|e| e.into_inner());
    if !staged_paths.iter().any(|p| p == staged) {
        staged_paths.push(staged.to_path_buf());
    }
}

/// The sentence for a failed run's error line when the run left staged outputs behind:
/// where they are and the two ways on. `None` when it left none.
pub fn interrupted_run_hint() -> Option<String> {
    let staged_paths = STAGED.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<String> = staged_paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    (!left.is_empty()).then(|| {
        format!(
            "an interrupted run's output is at {}: rerun with --resume to finish it, or --overwrite to start over",
            left.join(", ")
        )
    })
}

/// A temporary sibling name for a small file written then renamed (`name.tmp-<pid>`).
pub fn temporary_name(path: &Path) -> PathBuf {
    with_suffix(path, &format!(".tmp-{}", std::process::id()))
}

/// Removes a file or a directory tree if it exists.
///
/// # Errors
/// Filesystem errors with their path.
pub fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).at(path),
        Ok(_) => std::fs::remove_file(path).at(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_and_interrupted_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.npy");
        let addr = Address::parse(out.to_str().unwrap()).unwrap();
        let s = Staging::plan(&addr, false, false).unwrap();
        assert_eq!(s.staging.container(), dir.path().join("o.npy.partial"));
        std::fs::write(dir.path().join("o.npy.partial"), b"x").unwrap();
        let e = Staging::plan(&addr, false, false).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
        assert!(Staging::plan(&addr, false, true).unwrap().resuming);
        std::fs::write(&out, b"y").unwrap();
        assert!(Staging::plan(&addr, false, false)
            .unwrap_err()
            .to_string()
            .contains("--overwrite"));
        let s = Staging::plan(&addr, true, false).unwrap();
        s.clear_stale().unwrap();
        std::fs::write(dir.path().join("o.npy.partial"), b"new").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert!(!dir.path().join("o.npy.partial").exists());
    }

    #[test]
    fn stages_new_array_inside_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.zarr");
        std::fs::create_dir(&store).unwrap();
        let addr = Address::parse(store.join("g/a").to_str().unwrap()).unwrap();
        let s = Staging::plan(&addr, false, false).unwrap();
        assert_eq!(
            s.staging,
            Address::Zarr {
                store: store.clone(),
                node: "g/a.partial".into()
            }
        );
        assert_eq!(s.published_path(), store.join("g/a"));
    }
}
