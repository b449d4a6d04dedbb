//! The one directory walker for user data (image archives, slice directories).
//!
//! The idea: a directory is identified by its (device, inode), not its path, so a symbolic
//! link back up the tree (a loop) or a second link to the same directory is seen for what it
//! is and skipped with a warning, instead of walking the same files forever or twice. Real
//! directories are walked before directories reached through links, so a file that can be
//! reached both directly and through a link is listed under its direct path.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The identity of a directory: the same for every path (link or not) that leads to it.
type DirId = (u64, u64);

fn dir_id(meta: &std::fs::Metadata) -> DirId {
    (meta.dev(), meta.ino())
}

/// Directories still to walk. Those reached through a symbolic link wait until every
/// directory reachable without one has been walked (see the module docs), so a directory is
/// marked visited when it is walked, not when it is found.
#[derive(Default)]
struct Pending {
    direct: Vec<(PathBuf, DirId)>,
    linked: Vec<(PathBuf, DirId)>,
}

impl Pending {
    fn push(&mut self, path: PathBuf, id: DirId, link: bool) {
        if link {
            &mut self.linked
        } else {
            &mut self.direct
        }
        .push((path, id));
    }

    fn next(&mut self) -> Option<(PathBuf, DirId)> {
        self.direct.pop().or_else(|| self.linked.pop())
    }
}

/// What one directory entry turned out to be.
enum Entry {
    File(PathBuf),
    Dir {
        path: PathBuf,
        id: DirId,
        link: bool,
    },
    /// A symbolic link whose target does not exist, or a socket, FIFO or device.
    Other,
}

/// Lists the files under `root` (symbolic links followed), sorted; into subdirectories
/// when `recursive`, each real directory once.
///
/// # Errors
/// [`crate::error::Error::Io`] naming a directory (the root included) that cannot be read,
/// or an entry whose metadata cannot be read.
pub fn files(root: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut pending = Pending::default();
    pending.push(
        root.to_path_buf(),
        dir_id(&std::fs::metadata(root).at(root)?),
        false,
    );
    let mut visited = HashSet::new();
    let mut out = Vec::new();
    while let Some((dir, id)) = pending.next() {
        if !visited.insert(id) {
            tracing::warn!(
                "{}: skipped: it leads to a directory already walked (a symbolic link loop, or a second link to one directory)",
                dir.display()
            );
            continue;
        }
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            match classify(entry.at(&dir)?.path())? {
                Entry::File(path) => out.push(path),
                Entry::Dir { path, id, link } if recursive => pending.push(path, id, link),
                Entry::Dir { .. } | Entry::Other => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

fn classify(path: PathBuf) -> Result<Entry> {
    let own = std::fs::symlink_metadata(&path).at(&path)?;
    let link = own.file_type().is_symlink();
    let target = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if link && e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "{}: skipped: a symbolic link to nothing (dangling)",
                path.display()
            );
            return Ok(Entry::Other);
        }
        Err(e) => return Err(e).at(&path),
    };
    Ok(if target.is_dir() {
        Entry::Dir {
            id: dir_id(&target),
            path,
            link,
        }
    } else if target.is_file() {
        Entry::File(path)
    } else {
        Entry::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    /// The listed files relative to `root`, as strings.
    fn names(root: &Path, recursive: bool) -> Vec<String> {
        files(root, recursive)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn a_loop_is_walked_once() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        touch(&a.join("f.tif"));
        touch(&a.join("sub/g.tif"));
        symlink(&a, a.join("link")).unwrap();
        assert_eq!(names(&a, true), ["f.tif", "sub/g.tif"]);
    }

    #[test]
    fn two_loops_are_each_skipped() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        touch(&a.join("f.tif"));
        symlink(&a, a.join("x")).unwrap();
        symlink(&a, a.join("y")).unwrap();
        // A loop from deeper down, through a relative link, too.
        touch(&a.join("deep/h.tif"));
        symlink("..", a.join("deep/up")).unwrap();
        assert_eq!(names(&a, true), ["deep/h.tif", "f.tif"]);
    }

    #[test]
    fn a_link_to_a_sibling_lists_its_files_once_under_the_direct_path() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        touch(&root.join("real/f.tif"));
        // "alias" sorts before "real" and "b/alias" sits deeper: the direct path still wins.
        symlink(root.join("real"), root.join("alias")).unwrap();
        std::fs::create_dir(root.join("b")).unwrap();
        symlink(root.join("real"), root.join("b/alias")).unwrap();
        assert_eq!(names(root, true), ["real/f.tif"]);
    }

    #[test]
    fn a_link_to_a_directory_outside_is_followed() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("outside/f.tif"));
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(t.path().join("outside"), root.join("in")).unwrap();
        assert_eq!(names(&root, true), ["in/f.tif"]);
        assert!(names(&root, false).is_empty());
    }

    #[test]
    fn a_dangling_link_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("f.tif"));
        symlink(t.path().join("gone"), t.path().join("dead.tif")).unwrap();
        symlink(t.path().join("gone"), t.path().join("dead_dir")).unwrap();
        assert_eq!(names(t.path(), true), ["f.tif"]);
        assert_eq!(names(t.path(), false), ["f.tif"]);
    }

    #[test]
    fn not_recursive_lists_only_the_top_files_sorted() {
        let t = tempfile::tempdir().unwrap();
        for name in ["b.tif", "a.tif", "sub/c.tif"] {
            touch(&t.path().join(name));
        }
        symlink(t.path().join("a.tif"), t.path().join("z_link.tif")).unwrap();
        assert_eq!(names(t.path(), false), ["a.tif", "b.tif", "z_link.tif"]);
        assert_eq!(
            names(t.path(), true),
            ["a.tif", "b.tif", "sub/c.tif", "z_link.tif"]
        );
    }

    #[test]
    fn an_unreadable_root_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("plain");
        touch(&file);
        let e = files(&file, true).unwrap_err().to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        let gone = t.path().join("gone");
        let e = files(&gone, false).unwrap_err().to_string();
        assert!(e.contains(&gone.display().to_string()), "{e}");
    }

    #[test]
    fn an_unreadable_subdirectory_is_an_error_naming_it() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let locked = t.path().join("locked");
        touch(&locked.join("f.tif"));
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read_dir(&locked).is_ok() {
            // root reads any directory whatever its mode: nothing to test here.
            eprintln!("skipping: this user can read a mode-000 directory (root)");
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
            return;
        }
        let e = files(t.path(), true).unwrap_err().to_string();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(e.contains(&locked.display().to_string()), "{e}");
    }
}
