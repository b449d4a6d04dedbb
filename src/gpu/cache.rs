//! Compiled kernels cached on disk, so that a second process on a node does not compile them
//! again (NVRTC and ptxas took about 6 s for the pyramid's module on a 2-core machine, in
//! every process and every rank).
//!
//! An entry is the machine code (cubin) of one kernel source for one real architecture,
//! named by a SHA-256 of everything that decides its bytes: the expanded source, the
//! architecture, the compile options and NVRTC's version. Its file holds a header (magic,
//! the key again, the payload's length and SHA-256) before the payload, so an entry that is
//! truncated, corrupt or written by something else is recompiled with a warning, never
//! trusted. Entries are written under a temporary name and renamed, so concurrent ranks
//! filling one cache see whole entries or none.
//!
//! Where: `TESSERA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/tessera/kernels`, else
//! `~/.cache/tessera/kernels`; `TESSERA_KERNEL_CACHE=off` turns it off.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 16] = b"tessera-kernel1\n";

/// The cache directory, or `None` when turned off or when no home is known.
pub fn directory() -> Option<PathBuf> {
    match std::env::var_os("TESSERA_KERNEL_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("tessera").join("kernels")),
    }
}

/// The key of a compiled kernel: hex SHA-256 of what decides its bytes.
pub fn key(source: &str, arch: &str, options: &[String], compiler: &str) -> String {
    let mut h = Sha256::new();
    for part in [source, arch, &options.join("\u{1f}"), compiler] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file of an entry: `<kernel>-<arch>-<first 16 hex digits of the key>.cubin`.
pub fn entry_path(dir: &Path, kernel: &str, arch: &str, key: &str) -> PathBuf {
    let safe_kernel = kernel.replace('/', "_");
    dir.join(format!(
        "{safe_kernel}-{arch}-{}.cubin",
        &key[..16.min(key.len())]
    ))
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    Missing,
    /// An entry that is not a whole entry for this key (truncated, corrupt, another key's
    /// or another program's file): the reason, for the warning.
    Bad(String),
}

/// Reads the entry of `key` at `path`.
pub fn read(path: &Path, key: &str) -> Lookup {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(e) => return Lookup::Bad(e.to_string()),
    };
    let header = MAGIC.len() + 64 + 8 + 32;
    if bytes.len() < header || &bytes[..MAGIC.len()] != MAGIC {
        return Lookup::Bad("not a tessera kernel cache entry".into());
    }
    let mut at = MAGIC.len();
    if &bytes[at..at + 64] != key.as_bytes() {
        return Lookup::Bad("an entry for other sources or options".into());
    }
    at += 64;
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[at..at + 8]);
    let len = u64::from_le_bytes(len) as usize;
    at += 8;
    let digest = &bytes[at..at + 32];
    at += 32;
    let payload = &bytes[at..];
    if payload.len() != len {
        return Lookup::Bad(format!("{} bytes where {len} were written", payload.len()));
    }
    if Sha256::digest(payload).as_slice() != digest {
        return Lookup::Bad("its checksum does not match".into());
    }
    Lookup::Hit(payload.to_vec())
}

/// Writes the entry of `key` at `path` (temporary name, then rename; the directory made).
/// The cache is tessera's own state, not a user's output: an entry is replaced without
/// `--overwrite` (only ever by the same key's bytes, or over one that failed its checks).
///
/// # Errors
/// Filesystem errors (the caller warns: a cache that cannot be written costs only time).
pub fn write(path: &Path, key: &str, payload: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = Vec::with_capacity(MAGIC.len() + 104 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(payload));
    bytes.extend_from_slice(payload);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The cached bytes of `key`, or `compile()`'s (then stored). A bad entry is replaced, with
/// a warning; a cache that cannot be written is warned about once per entry and skipped.
/// Returns the bytes and whether they came from the cache.
///
/// # Errors
/// `compile`'s.
pub fn get_or_compile<E>(
    dir: Option<&Path>,
    kernel: &str,
    arch: &str,
    key: &str,
    compile: impl FnOnce() -> Result<Vec<u8>, E>,
) -> Result<(Vec<u8>, bool), E> {
    let Some(dir) = dir else {
        return compile().map(|b| (b, false));
    };
    let path = entry_path(dir, kernel, arch, key);
    match read(&path, key) {
        Lookup::Hit(bytes) => return Ok((bytes, true)),
        Lookup::Missing => {}
        Lookup::Bad(why) => tracing::warn!(
            "kernel cache entry {} is not usable ({why}): compiling again",
            path.display()
        ),
    }
    let bytes = compile()?;
    if let Err(e) = write(&path, key, &bytes) {
        tracing::warn!(
            "cannot write the kernel cache entry {}: {e}",
            path.display()
        );
    }
    Ok((bytes, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_everything_that_decides_the_bytes() {
        let opts = vec!["--fmad=false".to_string()];
        let k = key("src", "sm_90", &opts, "nvrtc 13.0");
        assert_eq!(k.len(), 64);
        assert_eq!(k, key("src", "sm_90", &opts, "nvrtc 13.0"));
        assert_ne!(k, key("src2", "sm_90", &opts, "nvrtc 13.0"));
        assert_ne!(k, key("src", "sm_80", &opts, "nvrtc 13.0"));
        assert_ne!(k, key("src", "sm_90", &[], "nvrtc 13.0"));
        assert_ne!(k, key("src", "sm_90", &opts, "nvrtc 13.1"));
        // Parts are length-prefixed: moving a boundary changes the key.
        assert_ne!(key("ab", "c", &[], ""), key("a", "bc", &[], ""));
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_recompiled() {
        let d = tempfile::tempdir().unwrap();
        let k = key("src", "sm_90", &[], "nvrtc");
        let compiled = std::cell::Cell::new(0);
        let compile = || -> Result<Vec<u8>, ()> {
            compiled.set(compiled.get() + 1);
            Ok(b"\x7fELF cubin".to_vec())
        };
        let (bytes, hit) =
            get_or_compile(Some(d.path()), "pyramid/reduce", "sm_90", &k, compile).unwrap();
        assert_eq!((bytes.as_slice(), hit), (&b"\x7fELF cubin"[..], false));
        let (_, hit) =
            get_or_compile(Some(d.path()), "pyramid/reduce", "sm_90", &k, compile).unwrap();
        assert!(hit);
        assert_eq!(compiled.get(), 1);
        let path = entry_path(d.path(), "pyramid/reduce", "sm_90", &k);
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pyramid_reduce-sm_90-"));
        // Truncated, flipped, foreign: each recompiled, then whole again.
        let whole = std::fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for bad in [
            whole[..whole.len() - 3].to_vec(),
            flipped,
            b"garbage".to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(matches!(read(&path, &k), Lookup::Bad(_)));
            let (bytes, hit) =
                get_or_compile(Some(d.path()), "pyramid/reduce", "sm_90", &k, compile).unwrap();
            assert!(!hit && bytes == b"\x7fELF cubin");
            assert_eq!(std::fs::read(&path).unwrap(), whole);
        }
        // Another key's entry under this name is not trusted.
        let other = key("other", "sm_90", &[], "nvrtc");
        assert!(matches!(read(&path, &other), Lookup::Bad(_)));
        // Off: always compiled, nothing written.
        let before = compiled.get();
        get_or_compile(None, "x", "sm_90", &k, compile).unwrap();
        assert_eq!(compiled.get(), before + 1);
    }

    #[test]
    fn an_unwritable_cache_costs_only_time() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let k = key("s", "sm_90", &[], "n");
        let (bytes, hit) =
            get_or_compile(Some(&file), "k", "sm_90", &k, || Ok::<_, ()>(vec![1, 2])).unwrap();
        assert_eq!((bytes, hit), (vec![1, 2], false));
    }
}
