//! Output safety: no command may write over, or inside, what it reads, or replace something
//! that is not its kind of output.
//!
//! Every path a run will write (arrays, side files such as `_results.json` or the response
//! plot, the run report) and every path it reads are compared as *canonical* paths (symlinks
//! resolved, `.`/`..` removed, the part that does not exist yet appended to the canonical form
//! of the part that does) before anything is created. Side files are written by
//! [`write_file`]: refused if present unless `--overwrite`, written under a temporary name and
//! renamed, like array outputs (`io::staging`).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::io::Address;

/// Something a run reads or writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// An array (its file, its Zarr node directory, or its HDF5 file and dataset).
    Array(Address),
    /// A plain file or directory (a side file, the report, a tree read recursively).
    Path(PathBuf),
    /// A directory whose files (not subdirectories) are read: an output may go inside it,
    /// never on it or around it.
    Directory(PathBuf),
}

impl Place {
    /// The path on disk that holds this place: the file, or the directory of a Zarr node.
    pub fn footprint(&self) -> PathBuf {
        match self {
            Place::Array(Address::Npy { path } | Address::Pt { path, .. }) => path.clone(),
            Place::Array(Address::Zarr { store, node }) if node.is_empty() => store.clone(),
            Place::Array(Address::Zarr { store, node }) => store.join(node),
            Place::Array(Address::Hdf5 { file, .. }) => file.clone(),
            Place::Array(Address::PatchDir { dir }) => dir.clone(),
            Place::Path(p) | Place::Directory(p) => p.clone(),
        }
    }

    fn hdf5_dataset(&self) -> Option<&str> {
        match self {
            Place::Array(Address::Hdf5 { dataset, .. }) => Some(dataset),
            _ => None,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Array(a) => write!(f, "{a}"),
            Place::Path(p) | Place::Directory(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `path` as an absolute path with symlinks resolved as far as it exists, and the rest
/// normalised lexically (`a/./b/../c` -> `a/c`).
pub fn canonical(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    // The longest existing prefix is resolved by the OS; the rest is appended by hand.
    let components: Vec<Component> = absolute.components().collect();
    let (mut out, rest) = (1..=components.len())
        .rev()
        .find_map(|k| {
            let prefix: PathBuf = components[..k].iter().collect();
            prefix.canonicalize().ok().map(|c| (c, &components[k..]))
        })
        .unwrap_or_else(|| (PathBuf::from("/"), &components[..]));
    for c in rest {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

/// What a path is when it is neither a regular file nor a directory (nor a link to one):
/// `Some("a FIFO")` and the like; `None` for files, directories and paths that do not exist.
pub fn special_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

/// The system's own trees, never an output: device nodes and kernel interfaces. `/dev/shm`
/// is a plain memory file system (tmpfs) that HPC users stage data in, so it is allowed.
fn system_tree(canonical: &Path) -> Option<&'static str> {
    if canonical.starts_with("/dev/shm") {
        return None;
    }
    ["/dev", "/proc", "/sys"]
        .into_iter()
        .find(|root| canonical.starts_with(root))
}

/// Refuses an output path that tessera must never create or replace, with or without
/// `--overwrite`: anything under `/dev` (but `/dev/shm`), `/proc` or `/sys`, and an existing
/// device node, FIFO or socket (through symlinks too: `canonical` resolves them).
///
/// # Errors
/// [`Error::Parameter`] naming the flag and what the path is.
pub fn check_output_path(what: &str, path: &Path) -> Result<()> {
    refuse_special_output(what, path, &canonical(path))
}

/// [`check_output_path`] with the canonical form already at hand.
fn refuse_special_output(what: &str, path: &Path, resolved: &Path) -> Result<()> {
    if let Some(kind) = special_kind(resolved) {
        return Err(Error::parameter(
            what,
            format!(
                "{} is {kind}; tessera writes only regular files and directories",
                path.display()
            ),
        ));
    }
    if let Some(root) = system_tree(resolved) {
        return Err(Error::parameter(
            what,
            format!(
                "{} is under {root}, the system's device and kernel files; write it somewhere else",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses an input that is a FIFO, device or socket before anything opens it (opening a
/// FIFO blocks until a writer comes; a device streams forever).
///
/// # Errors
/// [`Error::Parameter`] naming the flag and what the path is.
pub fn check_input_path(what: &str, path: &Path) -> Result<()> {
    match special_kind(path) {
        Some(kind) => Err(Error::parameter(
            what,
            format!(
                "{} is {kind}; tessera reads only regular files and directories",
                path.display()
            ),
        )),
        None => Ok(()),
    }
}

/// How two places relate on disk.
#[derive(Debug, PartialEq, Eq)]
enum Overlap {
    Same,
    /// The first lies inside the second.
    Inside,
    /// The second lies inside the first.
    Contains,
}

fn overlap(a: &Path, b: &Path) -> Option<Overlap> {
    if a == b {
        Some(Overlap::Same)
    } else if a.starts_with(b) {
        Some(Overlap::Inside)
    } else if b.starts_with(a) {
        Some(Overlap::Contains)
    } else {
        None
    }
}

/// Whether two existing paths are one file under two names (hard links, bind mounts):
/// the same device and inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// One thing a run writes, with the name a user knows it by (`--report`, `output`).
#[derive(Clone, Debug)]
pub struct Written {
    pub what: String,
    pub place: Place,
}

impl Written {
    pub fn new(what: impl Into<String>, place: Place) -> Self {
        Written {
            what: what.into(),
            place,
        }
    }
}

/// Refuses a plan that writes over or inside an input, that puts an input inside something it
/// writes, or that writes two things to one place. Nothing is created here.
///
/// Two datasets of one HDF5 file are distinct outputs (each is staged inside the file), but
/// a file read and written by the same run is refused: HDF5 cannot hold one file open for
/// reading and for writing in one process.
///
/// # Errors
/// [`Error::Parameter`] naming the output and the input (or the two outputs).
pub fn check_places(inputs: &[Place], writes: &[Written]) -> Result<()> {
    for input in inputs {
        check_input_path("input", &input.footprint())?;
    }
    let inputs: Vec<(&Place, PathBuf)> = inputs
        .iter()
        .map(|p| (p, canonical(&p.footprint())))
        .collect();
    let writes: Vec<(&Written, PathBuf)> = writes
        .iter()
        .map(|w| (w, canonical(&w.place.footprint())))
        .collect();
    for (w, resolved) in &writes {
        refuse_special_output(&w.what, &w.place.footprint(), resolved)?;
    }
    for (w, wp) in &writes {
        for (input, ip) in &inputs {
            let refuse = |how: &str| {
                Err(Error::parameter(
                    &w.what,
                    format!(
                        "{} {how} the input {input}; write it somewhere else",
                        w.place
                    ),
                ))
            };
            let same_hdf5 = w.place.hdf5_dataset().is_some() && input.hdf5_dataset().is_some();
            let how = overlap(wp, ip).or_else(|| same_file(wp, ip).then_some(Overlap::Same));
            match how {
                Some(Overlap::Same) if same_hdf5 && w.place.hdf5_dataset() != input.hdf5_dataset() => {
                    return refuse("is in the same HDF5 file as")
                }
                Some(Overlap::Same) => return refuse("is"),
                Some(Overlap::Inside) if matches!(input, Place::Directory(_)) => {}
                Some(Overlap::Inside) => return refuse("lies inside"),
                Some(Overlap::Contains) => {
                    return Err(Error::parameter(
                        &w.what,
                        format!(
                            "{} contains the input {input} (replacing it would delete the input); write it somewhere else",
                            w.place
                        ),
                    ))
                }
                None => {}
            }
        }
    }
    for (i, (a, ap)) in writes.iter().enumerate() {
        for (b, bp) in &writes[..i] {
            let both_hdf5 = a.place.hdf5_dataset().is_some() && b.place.hdf5_dataset().is_some();
            let how = match overlap(ap, bp) {
                None => continue,
                Some(Overlap::Same)
                    if both_hdf5 && a.place.hdf5_dataset() != b.place.hdf5_dataset() =>
                {
                    continue
                }
                Some(Overlap::Same) => "is also",
                Some(Overlap::Inside) => "lies inside",
                Some(Overlap::Contains) => "contains",
            };
            return Err(Error::parameter(
                &a.what,
                format!(
                    "{} {how} {} {}; give them different paths",
                    a.place, b.what, b.place
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a side file (a report, a plot, a per-pattern `.npy`) that exists, unless
/// `overwrite`; even then, only a file, never a directory.
///
/// # Errors
/// [`Error::OutputExists`] naming the path.
pub fn check_side_file(path: &Path, overwrite: bool) -> Result<()> {
    check_output_path("output", path)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
        Ok(m) if m.is_dir() => Err(Error::OutputExists {
            path: path.into(),
            message: "is a directory; tessera replaces only files it writes".into(),
        }),
        Ok(_) if overwrite => Ok(()),
        Ok(_) => Err(Error::OutputExists {
            path: path.into(),
            message: "exists; pass --overwrite to replace it".into(),
        }),
    }
}

/// Writes a side file: refused if present unless `overwrite` ([`check_side_file`]), written
/// by `write` to a temporary sibling (`name.tmp-<pid>`) and renamed into place, so a reader
/// never sees a half-written file and a failed write leaves the old one untouched.
///
/// # Errors
/// The refusal, or `write`'s or the rename's failure (the temporary file is removed).
pub fn write_file(
    path: &Path,
    overwrite: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    check_side_file(path, overwrite)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = temporary_sibling(path);
    let written = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).at(path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `dir/name.tmp-<pid>.ext` for `dir/name.ext`: the extension is kept, since some writers
/// (plotters, image) choose the format by it.
fn temporary_sibling(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!(
            "{stem}.tmp-{}.{}",
            std::process::id(),
            ext.to_string_lossy()
        ),
        None => format!("{stem}.tmp-{}", std::process::id()),
    };
    path.with_file_name(name)
}

/// [`write_file`] of bytes.
///
/// # Errors
/// As [`write_file`].
pub fn write_bytes(path: &Path, overwrite: bool, bytes: &[u8]) -> Result<()> {
    write_file(path, overwrite, |tmp| write_pieces(tmp, &[bytes]).at(tmp))
}

/// The most bytes handed to one `write(2)` by [`write_pieces`].
///
/// Measured on the development VM (Linux 6.18, ext4; 250 new files of 4 MiB, best and median
/// of 5): one 4 MiB `write` per file took 0.92 / 1.1 s, 1 MiB pieces 0.83 / 1.0 s, 256 KiB
/// pieces 0.28 / 0.34 s, 64 KiB pieces 0.34 / 0.36 s. Larger writes let the kernel build
/// large page-cache folios, which cost far more to allocate than they save; the extra calls
/// of smaller pieces cost nothing measurable.
pub const WRITE_PIECE: usize = 256 << 10;

/// Creates (or truncates) `path` and writes `parts` one after the other, in `write(2)` calls
/// of at most [`WRITE_PIECE`] bytes. What `std::fs::write` does, without the slow large
/// writes, and without gathering the parts (a header and a body) into one buffer first.
///
/// It writes `path` itself: give it [`write_file`]'s temporary name, or a file inside a
/// staged output (a store or patch directory under exec's temporary name), never a user's
/// path.
///
/// # Errors
/// Creating or writing the file.
pub fn write_pieces(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for part in parts {
        for piece in part.chunks(WRITE_PIECE) {
            file.write_all(piece)?;
        }
    }
    Ok(())
}

/// The nearest ancestor of `path` that exists (itself included); a relative path's last
/// ancestor, the empty path, is the current directory.
pub fn existing_ancestor(path: &std::path::Path) -> Option<&std::path::Path> {
    path.ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
}

/// The siblings of `path` named `<path's name><infix><pid>` (a process's leftovers: a lock's
/// temporary, an old output moved aside), with that PID, sorted by path.
pub fn pid_siblings(path: &Path, infix: &str) -> Vec<(PathBuf, u32)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}{infix}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let pid = e
                .file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((e.path(), pid))
        })
        .collect();
    found.sort();
    found
}

/// Free bytes on the file system that holds `path` (or its nearest existing ancestor);
/// `u64::MAX` when it cannot be asked.
pub fn free_disk_bytes(path: &std::path::Path) -> u64 {
    let Some(existing) = existing_ancestor(path) else {
        return u64::MAX;
    };
    let Ok(c) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return u64::MAX;
    };
    // SAFETY: statvfs reads a NUL-terminated path and fills one plain struct that we own.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return u64::MAX;
    }
    (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(s: &str) -> Place {
        Place::Array(Address::parse(s).unwrap())
    }

    #[test]
    fn canonical_resolves_what_exists_and_normalises_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        assert_eq!(
            canonical(&real.join("link/new/../x.npy")),
            real.join("a/x.npy")
        );
        assert_eq!(canonical(&real.join("a/./b")), real.join("a/b"));
    }

    #[test]
    fn refuses_outputs_on_or_inside_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("in.zarr")).unwrap();
        std::fs::write(d.join("in.npy"), b"x").unwrap();
        let p = |s: &str| d.join(s).to_string_lossy().into_owned();
        let input = [arr(&p("in.zarr")), arr(&p("in.npy"))];
        let check = |out: &str| check_places(&input, &[Written::new("output", arr(out))]);
        let e = check(&p("in.npy")).unwrap_err().to_string();
        assert!(
            e.starts_with("--output:") && e.contains(" is the input "),
            "{e}"
        );
        assert!(check(&format!("{}/./", p("in.zarr"))).is_err());
        let e = check(&p("in.zarr/c")).unwrap_err().to_string();
        assert!(e.contains("lies inside the input"), "{e}");
        // Through a symlink to the input's directory.
        std::os::unix::fs::symlink(&d, d.join("alias")).unwrap();
        assert!(check(&p("alias/in.npy")).is_err());
        assert!(check(&p("out.npy")).is_ok());
        assert!(check(&p("other.zarr/c")).is_ok());
    }

    #[test]
    fn refuses_an_output_that_contains_an_input() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s.zarr");
        std::fs::create_dir(&store).unwrap();
        let input = [arr(&format!("{}/a", store.display()))];
        let e = check_places(
            &input,
            &[Written::new("output", arr(store.to_str().unwrap()))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("contains the input"), "{e}");
        // A sibling array in the same store is fine.
        let sibling = arr(&format!("{}/b", store.display()));
        assert!(check_places(&input, &[Written::new("output", sibling)]).is_ok());
        // A report path that is the input.
        let e = check_places(
            &[Place::Path(store.clone())],
            &[Written::new("report", Place::Path(store.clone()))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--report:"), "{e}");
    }

    #[test]
    fn outputs_may_go_inside_a_directory_of_images() {
        let d = tempfile::tempdir().unwrap();
        let images = [Place::Directory(d.path().join("imgs"))];
        let out = |s: &str| {
            [Written::new(
                "output",
                arr(&d.path().join(s).to_string_lossy()),
            )]
        };
        assert!(check_places(&images, &out("imgs/o.zarr")).is_ok());
        let on = [Written::new("output", Place::Path(d.path().join("imgs")))];
        assert!(check_places(&images, &on).is_err());
        let recursive = [Place::Path(d.path().join("imgs"))];
        assert!(check_places(&recursive, &out("imgs/o.zarr")).is_err());
    }

    #[test]
    fn hdf5_datasets_of_one_file() {
        let input = [arr("f.h5:/in")];
        let e = check_places(&input, &[Written::new("output", arr("f.h5:/out"))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("same HDF5 file"), "{e}");
        assert!(check_places(&input, &[Written::new("output", arr("f.h5:/in"))]).is_err());
        // Two outputs in one file are distinct; one written twice is not.
        let two = [
            Written::new("output", arr("g.h5:/a")),
            Written::new("weights", arr("g.h5:/b")),
        ];
        assert!(check_places(&input, &two).is_ok());
        let twice = [
            Written::new("output", arr("g.h5:/a")),
            Written::new("weights", arr("g.h5:/a")),
        ];
        assert!(check_places(&input, &twice).is_err());
    }

    #[test]
    fn refuses_two_writes_to_one_place() {
        let writes = [
            Written::new("output", arr("o.zarr")),
            Written::new("report", Place::Path("o.zarr/r.json".into())),
        ];
        let e = check_places(&[], &writes).unwrap_err().to_string();
        assert!(
            e.contains("--report") && e.contains("lies inside output"),
            "{e}"
        );
    }

    #[test]
    fn special_files_and_system_trees_are_never_outputs() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for overwrite in [false, true] {
            let e = check_side_file(&fifo, overwrite).unwrap_err().to_string();
            assert!(e.contains("FIFO"), "{e}");
            let e = check_side_file(Path::new("/dev/null"), overwrite)
                .unwrap_err()
                .to_string();
            assert!(e.contains("character device"), "{e}");
        }
        // A symlink to a device is the device.
        std::os::unix::fs::symlink("/dev/null", d.path().join("null.json")).unwrap();
        let e = check_output_path("report", &d.path().join("null.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--report:") && e.contains("device"), "{e}");
        for p in ["/dev/new.json", "/proc/self/x.npy", "/sys/x.zarr"] {
            let e = check_output_path("output", Path::new(p))
                .unwrap_err()
                .to_string();
            assert!(e.contains("system's device and kernel files"), "{p}: {e}");
        }
        assert!(check_output_path("output", Path::new("/dev/shm/x.zarr")).is_ok());
        assert!(check_output_path("output", &d.path().join("o.zarr")).is_ok());
        // Inputs: a FIFO or a device is refused before anything opens it.
        let e = check_places(&[Place::Path(fifo.clone())], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("FIFO") && e.contains("reads only"), "{e}");
        assert!(check_input_path("input", Path::new("/dev/zero")).is_err());
        // Through check_places, for every kind of write.
        let writes = [Written::new("output", arr("/dev/x.zarr"))];
        assert!(check_places(&[], &writes).is_err());
    }

    #[test]
    fn a_hard_link_of_the_input_is_the_input() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.h5");
        std::fs::write(&input, b"x").unwrap();
        let link = d.path().join("out.h5");
        std::fs::hard_link(&input, &link).unwrap();
        let e = check_places(
            &[arr(&format!("{}:/a", input.display()))],
            &[Written::new(
                "output",
                arr(&format!("{}:/b", link.display())),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("same HDF5 file"), "{e}");
        let e = check_places(
            &[Place::Path(input.clone())],
            &[Written::new("report", Place::Path(link))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(" is the input"), "{e}");
    }

    #[test]
    fn side_files_are_refused_then_replaced_atomically() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.json");
        write_bytes(&f, false, b"one").unwrap();
        let e = write_bytes(&f, false, b"two").unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"one");
        write_bytes(&f, true, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        // A failed write leaves the old file and no temporary.
        let failed = write_file(&f, true, |_| Err(Error::parameter("x", "fails")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // A directory is never replaced.
        std::fs::create_dir(d.path().join("dir")).unwrap();
        assert!(write_bytes(&d.path().join("dir"), true, b"x").is_err());
    }
}
