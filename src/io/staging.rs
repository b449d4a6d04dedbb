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
    publish: Publish,
    /// True when this run resumes an interrupted one.
    pub resuming: bool,
}

/// How a staged output becomes the published one.
#[derive(Clone, Debug)]
enum Publish {
    /// The file or directory `staged` is renamed to `published`.
    Rename { published: PathBuf, staged: PathBuf },
    /// A dataset added to an existing HDF5 file: written to a staging file of its own
    /// (`staged`), copied into `file` at commit; the file's other datasets are never touched,
    /// and a crash while writing cannot corrupt the file.
    Dataset {
        file: PathBuf,
        dataset: String,
        staged: PathBuf,
    },
}

/// `/g/x` -> `.g.x`, for names beside a file.
fn dotted(dataset: &str) -> String {
    dataset.replace('/', ".")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn exists_error(what: impl std::fmt::Display, path: PathBuf) -> Error {
    Error::OutputExists {
        path,
        message: format!("{what}exists; pass --overwrite to replace it"),
    }
}

fn interrupted_error(path: PathBuf) -> Error {
    Error::OutputExists {
        path,
        message:
            "an interrupted run left this; pass --resume to finish it or --overwrite to start over"
                .into(),
    }
}

impl Staging {
    /// Decides where to write `target`, checking it against what is already on disk.
    ///
    /// # Errors
    /// [`Error::OutputExists`] when the output exists without `overwrite`, or an interrupted
    /// run's staging exists without `resume` or `overwrite`; with `overwrite`, an existing
    /// path that is not an array of the output's kind (see [`check_replaceable`]); a new Zarr
    /// node inside an array.
    pub fn plan(target: &Address, overwrite: bool, resume: bool) -> Result<Staging> {
        let (publish, staging) = Self::names(target);
        let staged_exists = match &publish {
            Publish::Rename { published, staged } => {
                if published.exists() {
                    if !overwrite {
                        return Err(exists_error("", published.clone()));
                    }
                    check_replaceable(target, published)?;
                }
                if let Address::Zarr { store, node } = target {
                    check_zarr_parents(store, node)?;
                }
                staged.exists()
            }
            Publish::Dataset {
                file,
                dataset,
                staged,
            } => {
                if dataset_exists(file, dataset)? && !overwrite {
                    return Err(exists_error(format!("dataset {dataset} "), file.clone()));
                }
                staged.exists()
            }
        };
        if staged_exists && !resume && !overwrite {
            return Err(interrupted_error(match &publish {
                Publish::Rename { staged, .. } | Publish::Dataset { staged, .. } => staged.clone(),
            }));
        }
        let resuming = staged_exists && resume;
        remember_staged(match &publish {
            Publish::Rename { staged, .. } | Publish::Dataset { staged, .. } => staged,
        });
        if resume && !staged_exists {
            tracing::warn!("--resume: no interrupted run of {target}; starting from the beginning");
        }
        Ok(Staging {
            target: target.clone(),
            staging,
            publish,
            resuming,
        })
    }

    /// The path published when `target` is complete (file, store, or an array's directory in
    /// an existing store; the HDF5 file a dataset is added to): what a run locks.
    pub fn published_of(target: &Address) -> PathBuf {
        match Self::names(target).0 {
            Publish::Rename { published, .. } => published,
            Publish::Dataset { file, .. } => file,
        }
    }

    /// The path `target` is staged at (what `--resume` finishes).
    pub fn staged_of(target: &Address) -> PathBuf {
        match Self::names(target).0 {
            Publish::Rename { staged, .. } | Publish::Dataset { staged, .. } => staged,
        }
    }

    /// How `target` is staged, and the staging address.
    fn names(target: &Address) -> (Publish, Address) {
        let container = target.container().to_path_buf();
        match target {
            Address::Zarr { store, node } if !node.is_empty() && store.is_dir() => {
                // A new array inside an existing store: stage the array's directory.
                let node_dir = store.join(node);
                let staged = with_suffix(&node_dir, ".partial");
                let staged_node = format!("{node}.partial");
                (
                    Publish::Rename {
                        published: node_dir,
                        staged,
                    },
                    Address::Zarr {
                        store: store.clone(),
                        node: staged_node,
                    },
                )
            }
            Address::Hdf5 { file, dataset } if file.is_file() => {
                let staged = with_suffix(file, &format!("{}.partial", dotted(dataset)));
                (
                    Publish::Dataset {
                        file: file.clone(),
                        dataset: dataset.clone(),
                        staged: staged.clone(),
                    },
                    Address::Hdf5 {
                        file: staged,
                        dataset: dataset.clone(),
                    },
                )
            }
            _ => {
                let staged = with_suffix(&container, ".partial");
                (
                    Publish::Rename {
                        published: container.clone(),
                        staged: staged.clone(),
                    },
                    target.with_container(staged),
                )
            }
        }
    }

    /// The directory that holds the run's journal of finished units.
    pub fn journal_dir(&self) -> PathBuf {
        match &self.publish {
            Publish::Rename { published, .. } => with_suffix(published, ".journal"),
            Publish::Dataset { file, dataset, .. } => {
                with_suffix(file, &format!("{}.journal", dotted(dataset)))
            }
        }
    }

    /// The path published at commit (the file or directory that appears when done; the HDF5
    /// file a dataset is added to).
    pub fn published_path(&self) -> &Path {
        match &self.publish {
            Publish::Rename { published, .. } => published,
            Publish::Dataset { file, .. } => file,
        }
    }

    /// True when this output is a dataset added to an existing HDF5 file (several such
    /// outputs may share the file).
    pub fn in_existing_file(&self) -> bool {
        matches!(self.publish, Publish::Dataset { .. })
    }

    /// Removes a stale staging area and journal (a fresh run that is not resuming). Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn clear_stale(&self) -> Result<()> {
        if !self.resuming {
            match &self.publish {
                Publish::Rename { staged, .. } => remove_any(staged)?,
                Publish::Dataset { staged, .. } => remove_any(staged)?,
            }
            remove_any(&self.journal_dir())?;
        }
        Ok(())
    }

    /// Publishes the staged output under its final name, replacing an older one (only
    /// reachable with `--overwrite`) after the new one is in place. Rank 0 only, after every
    /// rank closed the output.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn commit(&self) -> Result<()> {
        match &self.publish {
            Publish::Rename { published, staged } => {
                let old = with_suffix(published, &format!(".replaced-{}", std::process::id()));
                let replacing = published.exists();
                if replacing {
                    std::fs::rename(published, &old).at(published)?;
                }
                std::fs::rename(staged, published).at(staged)?;
                if replacing {
                    remove_any(&old)?;
                }
            }
            Publish::Dataset {
                file,
                dataset,
                staged,
            } => {
                copy_dataset(staged, file, dataset)?;
                remove_any(staged)?;
            }
        }
        remove_any(&self.journal_dir())
    }
}

/// Refuses to replace (with `--overwrite`) something that is not an array of the output's
/// kind: a `.npy` output replaces only a `.npy` file, a Zarr output only a Zarr node (a
/// directory with `zarr.json`, or v2 metadata), never a directory of other files.
///
/// # Errors
/// [`Error::OutputExists`] saying what is there.
pub fn check_replaceable(target: &Address, path: &Path) -> Result<()> {
    let refuse = |found: &str| Error::OutputExists {
        path: path.into(),
        message: format!(
            "{found}; --overwrite replaces only {} outputs, so remove it yourself if it should go",
            target.kind()
        ),
    };
    match target {
        Address::Npy { .. } => {
            if path.is_dir() {
                return Err(refuse("is a directory, not a .npy file"));
            }
            let mut magic = [0u8; 6];
            let read = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
            if read.is_err() || &magic != b"\x93NUMPY" {
                return Err(refuse("is not a .npy file"));
            }
        }
        Address::Zarr { .. } => {
            if !path.is_dir() {
                return Err(refuse("is a file, not a Zarr store"));
            }
            let zarr = ["zarr.json", ".zarray", ".zgroup"];
            if !zarr.iter().any(|m| path.join(m).is_file()) {
                return Err(refuse(
                    "is a directory without Zarr metadata (no zarr.json)",
                ));
            }
        }
        // Whole HDF5 files are replaced only when tessera made them from scratch; datasets
        // inside an existing file are staged and swapped one by one.
        Address::Hdf5 { .. } => {
            if path.is_dir() {
                return Err(refuse("is a directory, not an HDF5 file"));
            }
        }
        // Only a directory that tessera patches made (it holds patch_meta.json), never a
        // directory of other files.
        Address::PatchDir { .. } => {
            if !path.is_dir() {
                return Err(refuse("is a file, not a patch directory"));
            }
            if !path.join("patch_meta.json").is_file() {
                return Err(refuse(
                    "is a directory without patch_meta.json (not a tessera patches output)",
                ));
            }
        }
    }
    Ok(())
}

/// A new node inside an existing store must not go inside an array (a Zarr array has no
/// children; zarr-python would not see the new node).
fn check_zarr_parents(store: &Path, node: &str) -> Result<()> {
    let mut dir = store.to_path_buf();
    let parts: Vec<&str> = node.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts {
        if crate::io::zarr::is_array(&dir) {
            return Err(Error::OutputExists {
                path: dir,
                message: format!("is a Zarr array, which cannot hold another node ({part}); write to a group or another store"),
            });
        }
        dir.push(part);
    }
    Ok(())
}

#[cfg(feature = "hdf5")]
fn dataset_exists(file: &Path, dataset: &str) -> Result<bool> {
    crate::io::hdf5::links::exists(file, dataset)
}
#[cfg(feature = "hdf5")]
fn copy_dataset(staged: &Path, file: &Path, dataset: &str) -> Result<()> {
    crate::io::hdf5::links::copy_in(staged, file, dataset)
}
#[cfg(not(feature = "hdf5"))]
fn dataset_exists(file: &Path, _: &str) -> Result<bool> {
    Err(not_compiled(file))
}
#[cfg(not(feature = "hdf5"))]
fn copy_dataset(_: &Path, file: &Path, _: &str) -> Result<()> {
    Err(not_compiled(file))
}
#[cfg(not(feature = "hdf5"))]
fn not_compiled(file: &Path) -> Error {
    Error::NotCompiled {
        what: format!("writing into {}", file.display()),
        feature: "hdf5",
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
        std::fs::write(&out, b"\x93NUMPY old").unwrap();
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
