//! Inputs that change while a job reads them.
//!
//! Locks guard outputs; nothing stops another program (or another tessera job publishing an
//! output with `--overwrite`) from replacing what a job reads. A job would then mix old and
//! new data and publish it as if it were whole. So rank 0 records every input's files (size,
//! modification time, inode) before the first unit and looks again just before publishing: a
//! change fails the run with one line naming the file, and nothing is published. A job also
//! refuses to start reading an input that a live tessera job is writing (its output lock is
//! on the input or on a directory around it).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::safety::Place;

/// What a file looked like: size, modification time (ns) and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified_ns: i128,
    inode: (u64, u64),
}

impl Seen {
    fn of(meta: &std::fs::Metadata) -> Seen {
        Seen {
            len: meta.len(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// The files of a run's inputs as they were when it started.
#[derive(Debug)]
pub struct InputWatch {
    places: Vec<Watched>,
}

#[derive(Debug)]
struct Watched {
    place: Place,
    root: PathBuf,
    /// Only the files directly inside (a directory of images read flat, where outputs may
    /// also go), not its subdirectories; files that are not there at the start are ignored.
    flat: bool,
    /// Names (relative to `root`) that the run itself writes (its outputs, locks, reports).
    own: Vec<PathBuf>,
    files: BTreeMap<PathBuf, Seen>,
}

impl InputWatch {
    /// Records the inputs' files. `writes` are the paths the run writes (outputs, side
    /// files, the report): anything whose name starts with one of their names (`o.zarr`,
    /// `o.zarr.lock`, `o.zarr.partial`, ...) is the run's own and not watched.
    ///
    /// # Errors
    /// An input that a live tessera job is writing.
    pub fn start(inputs: &[Place], writes: &[PathBuf]) -> Result<InputWatch> {
        let mut places = Vec::new();
        for place in inputs {
            let root = crate::io::safety::canonical(&place.footprint());
            refuse_if_being_written(place, &root)?;
            let flat = matches!(place, Place::Directory(_));
            let own = writes
                .iter()
                .map(|w| crate::io::safety::canonical(w))
                .filter_map(|w| w.strip_prefix(&root).ok().map(Path::to_path_buf))
                .collect();
            let mut watched = Watched {
                place: place.clone(),
                root,
                flat,
                own,
                files: BTreeMap::new(),
            };
            watched.files = watched.look();
            places.push(watched);
        }
        Ok(InputWatch { places })
    }

    /// Looks at the inputs again.
    ///
    /// # Errors
    /// [`Error::InputChanged`] naming the first file that changed, appeared or went.
    pub fn check(&self) -> Result<()> {
        for w in &self.places {
            let now = w.look();
            let changed = |path: &Path, how: &str| Error::InputChanged {
                input: w.place.to_string(),
                message: format!("{} {how} while this job read it", path.display()),
            };
            for (name, before) in &w.files {
                let path = w.root.join(name);
                match now.get(name) {
                    None => return Err(changed(&path, "went away")),
                    Some(after) if after != before => {
                        return Err(changed(&path, "was rewritten"));
                    }
                    Some(_) => {}
                }
            }
            if !w.flat {
                if let Some(name) = now.keys().find(|n| !w.files.contains_key(*n)) {
                    return Err(changed(&w.root.join(name), "appeared"));
                }
            }
        }
        Ok(())
    }
}

impl Watched {
    /// The input's files now (a file input is one entry, under the empty name).
    fn look(&self) -> BTreeMap<PathBuf, Seen> {
        let mut files = BTreeMap::new();
        let Ok(meta) = std::fs::metadata(&self.root) else {
            return files;
        };
        if !meta.is_dir() {
            files.insert(PathBuf::new(), Seen::of(&meta));
            return files;
        }
        // The directory itself: replacing a store by a rename changes its inode.
        files.insert(
            PathBuf::from("."),
            Seen {
                modified_ns: 0,
                len: 0,
                ..Seen::of(&meta)
            },
        );
        self.walk(Path::new(""), &mut files);
        files
    }

    fn walk(&self, relative: &Path, files: &mut BTreeMap<PathBuf, Seen>) {
        let Ok(entries) = std::fs::read_dir(self.root.join(relative)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = relative.join(entry.file_name());
            if self.is_own(&name) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                if !self.flat {
                    self.walk(&name, files);
                }
            } else if meta.is_file() {
                files.insert(name, Seen::of(&meta));
            }
        }
    }

    fn is_own(&self, name: &Path) -> bool {
        let name = name.to_string_lossy();
        self.own
            .iter()
            .any(|own| name.starts_with(own.to_string_lossy().as_ref()))
    }
}

/// Refuses an input that a live tessera job is writing: an output lock on the input's path
/// or on a directory around it (a store being replaced, or an array being added to it).
fn refuse_if_being_written(place: &Place, root: &Path) -> Result<()> {
    for path in root.ancestors() {
        if path.parent().is_none() {
            break;
        }
        if let Some(owner) = crate::io::lock::live_owner(path) {
            return Err(Error::InputChanged {
                input: place.to_string(),
                message: format!(
                    "is being written by another tessera job (host {}, pid {}, lock {}); run this one after it",
                    owner.host,
                    owner.pid,
                    crate::io::lock::lock_path(path).display()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_missing_or_new_file_is_a_change() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s.zarr");
        std::fs::create_dir_all(store.join("c/0")).unwrap();
        std::fs::write(store.join("zarr.json"), b"{}").unwrap();
        std::fs::write(store.join("c/0/0"), b"chunk").unwrap();
        let place = Place::Path(store.clone());
        let watch = InputWatch::start(std::slice::from_ref(&place), &[]).unwrap();
        watch.check().unwrap();
        // Rewritten with the same size: the time or the inode tells.
        std::fs::write(store.join("c/0/0.tmp"), b"CHUNK").unwrap();
        std::fs::rename(store.join("c/0/0.tmp"), store.join("c/0/0")).unwrap();
        let e = watch.check().unwrap_err().to_string();
        assert!(e.contains("c/0/0 was rewritten"), "{e}");
        let watch = InputWatch::start(std::slice::from_ref(&place), &[]).unwrap();
        std::fs::write(store.join("c/0/1"), b"new").unwrap();
        assert!(watch.check().unwrap_err().to_string().contains("appeared"));
        let watch = InputWatch::start(std::slice::from_ref(&place), &[]).unwrap();
        std::fs::remove_file(store.join("c/0/1")).unwrap();
        assert!(watch.check().unwrap_err().to_string().contains("went away"));
        // The whole store replaced by a rename (what --overwrite does).
        let watch = InputWatch::start(std::slice::from_ref(&place), &[]).unwrap();
        let copy = d.path().join("copy.zarr");
        std::fs::rename(&store, &copy).unwrap();
        std::fs::create_dir(&store).unwrap();
        assert!(watch.check().is_err());
    }

    #[test]
    fn a_flat_directory_ignores_new_files_and_the_runs_own() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a_000.tif"), b"x").unwrap();
        let place = Place::Directory(d.path().to_path_buf());
        let out = d.path().join("o.zarr");
        let watch =
            InputWatch::start(std::slice::from_ref(&place), std::slice::from_ref(&out)).unwrap();
        std::fs::create_dir(d.path().join("o.zarr.partial")).unwrap();
        std::fs::write(d.path().join("o.zarr.lock"), b"{}").unwrap();
        std::fs::write(d.path().join("notes.txt"), b"new").unwrap();
        watch.check().unwrap();
        std::fs::write(d.path().join("a_000.tif"), b"yy").unwrap();
        assert!(watch.check().unwrap_err().to_string().contains("a_000.tif"));
    }

    #[test]
    fn an_input_under_a_live_writers_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s.zarr");
        std::fs::create_dir_all(store.join("a")).unwrap();
        let lock = crate::io::lock::OutputLock::acquire(&store).unwrap();
        let place =
            Place::Array(crate::io::Address::parse(&format!("{}/a", store.display())).unwrap());
        let e = InputWatch::start(std::slice::from_ref(&place), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("being written by another tessera job"), "{e}");
        drop(lock);
        InputWatch::start(&[place], &[]).unwrap();
    }
}
