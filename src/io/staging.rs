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

impl Publish {
    fn journal_dir(&self) -> PathBuf {
        match self {
            Publish::Rename { published, .. } => with_suffix(published, ".journal"),
            Publish::Dataset { file, dataset, .. } => {
                with_suffix(file, &format!("{}.journal", dotted(dataset)))
            }
        }
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

    /// Whether `target` is published: its file, store or node exists (the HDF5 dataset, for one
    /// added to an existing file).
    ///
    /// # Errors
    /// An HDF5 file that cannot be read.
    pub fn is_published(target: &Address) -> Result<bool> {
        match Self::names(target).0 {
            Publish::Rename { published, .. } => Ok(published.exists()),
            Publish::Dataset { file, dataset, .. } => dataset_exists(&file, &dataset),
        }
    }

    /// Whether an interrupted run's staging of `target` is on disk.
    pub fn is_staged(target: &Address) -> bool {
        Self::staged_of(target).exists()
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
        self.publish.journal_dir()
    }

    /// The journal directory a run of `target` keeps.
    pub fn journal_of(target: &Address) -> PathBuf {
        Self::names(target).0.journal_dir()
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

    /// Removes the staging area and journal: a run whose output must not be resumed (it read
    /// an input that changed under it, or finished nothing). Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn discard(&self) -> Result<()> {
        match &self.publish {
            Publish::Rename { staged, .. } | Publish::Dataset { staged, .. } => remove_any(staged)?,
        }
        remove_any(&self.journal_dir())
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
        Self::commit_all(std::slice::from_ref(self))
    }

    /// Publishes every output of a run, then removes their journals. A marker in the first
    /// one's journal (`publishing`) says that the run finished every unit: a run killed while
    /// publishing is published by the next run of that output ([`recover_publish`]), so that
    /// no output is left half published and half staged. Rank 0 only, after every rank closed
    /// the outputs.
    ///
    /// # Errors
    /// Filesystem errors with their path.
    pub fn commit_all(stagings: &[Staging]) -> Result<()> {
        let Some(first) = stagings.first() else {
            return Ok(());
        };
        let journal = first.journal_dir();
        std::fs::create_dir_all(&journal).at(&journal)?;
        crate::io::safety::write_bytes(&journal.join(PUBLISHING), true, b"")?;
        for s in stagings {
            s.publish()?;
        }
        crash_point("published");
        for s in stagings {
            remove_any(&s.journal_dir())?;
        }
        Ok(())
    }

    /// Moves the staged output to its final name (see [`Staging::commit_all`]).
    fn publish(&self) -> Result<()> {
        match &self.publish {
            Publish::Rename { published, staged } => {
                if crate::io::finish_staged(&self.target, staged)? {
                    crash_point("finalized");
                }
                // A file is replaced by one rename (atomic). A directory cannot be renamed
                // over a non-empty one: the old one is moved aside first, and
                // `recover_publish` puts it back if the run dies between the two renames.
                let replacing = std::fs::symlink_metadata(published).is_ok_and(|m| m.is_dir());
                let old = with_suffix(published, &format!("{REPLACED}{}", std::process::id()));
                if replacing {
                    std::fs::rename(published, &old).at(published)?;
                    crash_point("moved-aside");
                }
                std::fs::rename(staged, published).at(staged)?;
                crash_point("renamed");
                if replacing {
                    remove_any(&old)?;
                }
            }
            Publish::Dataset {
                file,
                dataset,
                staged,
            } => {
                publish_dataset(file, dataset, staged, &self.journal_dir())?;
                remove_any(staged)?;
            }
        }
        crash_point("published-one");
        Ok(())
    }
}

/// Adds the staged `dataset` to `file` without ever writing into `file` itself: the file is
/// copied (`f.h5.<dataset>.committing`; `copy_file_range`, so file systems that share extents
/// copy nothing), the dataset is copied into the copy, which is synced, and renamed over the
/// file. A kill at any moment leaves either the old file or the new one, never a file whose
/// links point past its end; a marker in the journal (`committing`, written once the copy is
/// complete) tells [`recover_publish`] which of the two it is. Free space for the copy and the
/// dataset is checked first.
///
/// # Errors
/// Too little free space, filesystem and HDF5 failures; the file is untouched and the copy
/// removed.
fn publish_dataset(file: &Path, dataset: &str, staged: &Path, journal: &Path) -> Result<()> {
    let work = committing_copy(file, dataset);
    check_room_for_copy(file, dataset, staged)?;
    let prepared = std::fs::copy(file, &work)
        .at(&work)
        .and_then(|_| copy_dataset(staged, &work, dataset))
        .and_then(|()| {
            crash_point("dataset-copied");
            std::fs::File::open(&work)
                .and_then(|f| f.sync_all())
                .at(&work)
        })
        .and_then(|()| {
            std::fs::create_dir_all(journal).at(journal)?;
            std::fs::write(journal.join(COMMITTING), b"").at(journal)
        });
    if let Err(e) = prepared {
        let _ = std::fs::remove_file(&work);
        return Err(e);
    }
    crash_point("dataset-marked");
    std::fs::rename(&work, file).at(file)?;
    crash_point("dataset-renamed");
    Ok(())
}

/// Fault injection for the crash tests: with `TESSERA_CRASH_AT=<step>`, the process aborts
/// (no cleanup, like `kill -9`) at that step of publishing an output.
fn crash_point(step: &str) {
    if std::env::var("TESSERA_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("TESSERA_CRASH_AT: aborting at {step}");
        std::process::abort();
    }
}

/// The copy of `file` a dataset is added to before it replaces the file.
fn committing_copy(file: &Path, dataset: &str) -> PathBuf {
    with_suffix(file, &format!("{}.committing", dotted(dataset)))
}

/// The journal's marker: every unit is written and finished, the outputs are being published.
const PUBLISHING: &str = "publishing";

/// The journal's marker: the copy is complete, and is being (or was) renamed over the file.
const COMMITTING: &str = "committing";

/// Refuses a commit whose copy of the file and of the dataset would not fit on the file's
/// file system (HDF5 does not fail cleanly when the disk fills under it).
fn check_room_for_copy(file: &Path, dataset: &str, staged: &Path) -> Result<()> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let margin = 16u64 << 20;
    let needed = size(file)
        .saturating_add(size(staged))
        .saturating_add(margin);
    let free = crate::io::safety::free_disk_bytes(file);
    if needed > free {
        let mib = |b: u64| b as f64 / 1048576.0;
        return Err(Error::Io {
            path: file.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "adding {dataset} needs {:.1} MiB free (a copy of the file, the new dataset and a margin), {:.1} MiB are; free some space and rerun with --resume",
                    mib(needed),
                    mib(free)
                ),
            ),
        });
    }
    Ok(())
}

/// The suffix of an old output moved aside while `--overwrite` publishes a new directory.
const REPLACED: &str = ".replaced-";

/// Puts right what a run killed while publishing `target` left, so that the old output or the
/// new one is in place and nothing else lingers. Rank 0, holding the output's lock (so no live
/// job is publishing it).
///
/// - A directory: an old output moved aside (`out.zarr.replaced-PID`) is put back if the new
///   one never took its place (the killed run's staging and journal stay, so `--resume`
///   publishes it again), and removed if it did.
/// - A dataset added to an HDF5 file: a copy of the file not yet renamed over it is removed
///   (the staging stays for `--resume`); once renamed, the staging goes (the journal stays
///   until `--resume` has recognised the finished output, or a fresh run clears it).
///
/// # Errors
/// Filesystem errors with their path.
pub fn recover_publish(targets: &[Address]) -> Result<()> {
    for t in targets {
        recover_one(t)?;
    }
    finish_publishing(targets)
}

/// A run killed while publishing had finished every unit (its journal says `publishing`):
/// what it had not yet published is published now. Its journal stays, so that `--resume`
/// recognises the finished output as this job's; a fresh run clears it.
fn finish_publishing(targets: &[Address]) -> Result<()> {
    let Some(primary) = targets.first() else {
        return Ok(());
    };
    let marker = Staging::journal_of(primary).join(PUBLISHING);
    if !marker.exists() {
        return Ok(());
    }
    for target in targets {
        let (publish, staging) = Staging::names(target);
        let staged = match &publish {
            Publish::Rename { staged, .. } | Publish::Dataset { staged, .. } => staged.clone(),
        };
        if staged.exists() {
            tracing::warn!(
                "publishing {target}: the run that finished it was killed while publishing"
            );
            Staging {
                target: target.clone(),
                staging,
                publish,
                resuming: true,
            }
            .publish()?;
        }
    }
    remove_any(&marker)
}

fn recover_one(target: &Address) -> Result<()> {
    match Staging::names(target).0 {
        Publish::Dataset {
            file,
            dataset,
            staged,
        } => {
            let journal = Staging::journal_of(target);
            let work = committing_copy(&file, &dataset);
            let marker = journal.join(COMMITTING);
            if marker.exists() && !work.exists() {
                tracing::warn!(
                    "{dataset} was added to {} by a run killed before it cleaned up: removing its staging",
                    file.display()
                );
                remove_any(&staged)?;
            } else if work.exists() {
                tracing::warn!(
                    "removing {}: a copy an interrupted run never put in place",
                    work.display()
                );
                remove_any(&work)?;
            }
            remove_any(&marker)
        }
        Publish::Rename { published, .. } => recover_replaced(&published),
    }
}

fn recover_replaced(published: &Path) -> Result<()> {
    let moved_aside = crate::io::safety::pid_siblings(published, REPLACED);
    for (old, _) in moved_aside {
        if published.exists() {
            tracing::warn!(
                "removing {}: the old output an interrupted --overwrite had already replaced",
                old.display()
            );
            remove_any(&old)?;
        } else {
            tracing::warn!(
                "putting back {}: an interrupted --overwrite moved the old output aside and never published the new one",
                published.display()
            );
            std::fs::rename(&old, published).at(&old)?;
        }
    }
    Ok(())
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
        Address::Pt { .. } | Address::Npy { .. } => {
            let (magic, kind, format): (&[u8], _, _) = match target {
                Address::Pt { .. } => (b"PK\x03\x04", ".pt", " (torch.save's zip format)"),
                _ => (b"\x93NUMPY", ".npy", ""),
            };
            if path.is_dir() {
                return Err(refuse(&format!("is a directory, not a {kind} file")));
            }
            let mut found = vec![0u8; magic.len()];
            let read = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut found));
            if read.is_err() || found != magic {
                return Err(refuse(&format!("is not a {kind} file{format}")));
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

/// Whether a run of this process got as far as writing into its staging (an error before
/// that, such as a refused `--resume`, leaves an older run's staging as it found it and must
/// not advise resuming it).
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called by a run once its staging is ready and units are about to be written.
pub fn mark_started() {
    STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn remember_staged(staged: &Path) {
    let mut staged_paths = STAGED.lock().unwrap_or_else(|e| e.into_inner());
    if !staged_paths.iter().any(|p| p == staged) {
        staged_paths.push(staged.to_path_buf());
    }
}

/// The sentence for a failed run's error line when the run left staged outputs behind:
/// where they are and the two ways on. `None` when it left none.
pub fn interrupted_run_hint() -> Option<String> {
    if !STARTED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
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
    fn an_overwrite_killed_between_its_renames_is_put_right() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.zarr");
        let addr = Address::parse(out.to_str().unwrap()).unwrap();
        let aside = dir.path().join("o.zarr.replaced-4242");
        // Killed after moving the old output aside, before publishing the new one.
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("zarr.json"), b"old").unwrap();
        recover_publish(std::slice::from_ref(&addr)).unwrap();
        assert_eq!(std::fs::read(out.join("zarr.json")).unwrap(), b"old");
        assert!(!aside.exists());
        // Killed after publishing the new one, before removing the old.
        std::fs::create_dir(&aside).unwrap();
        recover_publish(std::slice::from_ref(&addr)).unwrap();
        assert!(!aside.exists());
        assert_eq!(std::fs::read(out.join("zarr.json")).unwrap(), b"old");
        // Names that only look alike are left alone.
        std::fs::create_dir(dir.path().join("o.zarr.replaced-notes")).unwrap();
        recover_publish(std::slice::from_ref(&addr)).unwrap();
        assert!(dir.path().join("o.zarr.replaced-notes").exists());
    }

    #[test]
    fn a_file_output_is_replaced_by_one_rename() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.npy");
        std::fs::write(&out, b"\x93NUMPY old").unwrap();
        let addr = Address::parse(out.to_str().unwrap()).unwrap();
        let s = Staging::plan(&addr, true, false).unwrap();
        s.clear_stale().unwrap();
        std::fs::write(dir.path().join("o.npy.partial"), b"new").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
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
