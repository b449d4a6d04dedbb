//! Whether the outputs a plan implies fit on their file systems, checked before anything is
//! created (the lock and the staging included), `--dry-run` too. The idea: an output stored
//! as it is computed (`.npy`, uncompressed Zarr chunks, HDF5 without a filter) takes a size
//! known at planning, and one larger than the free space of its file system fails at some
//! write hours later (or at the first, where a file system caps a file's size) instead of
//! being a one-line refusal now. A compressed output's size is not known until written, so it
//! is never refused on its uncompressed size: beyond the free space it is a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{Address, Codec, CreateSpec};

use crate::units::human_bytes;

/// One output as the plan sees it: where it is stored, the bytes it takes uncompressed, and
/// whether it is stored uncompressed (so that this is its size on disk).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedOutput {
    /// What the user named (the address as text), for the message.
    pub name: String,
    /// A path on the output's file system (the file, store or directory; it need not exist).
    pub path: PathBuf,
    /// Bytes stored, uncompressed (saturating: a size past u64 is "more than any disk").
    pub bytes: u64,
    /// False for outputs whose codec compresses: their `bytes` are an upper bound only.
    pub uncompressed: bool,
}

impl PlannedOutput {
    /// An array created from `spec` at `address`: elements in whole chunks (Zarr pads edge
    /// chunks to the chunk shape when it stores them raw), compressed unless the codec the
    /// format resolves `spec.codec` to is none (`.npy` never is).
    pub fn array(address: &Address, spec: &CreateSpec) -> PlannedOutput {
        let element = spec.dtype.size() as u64;
        let elements = match address {
            Address::Zarr { .. } => {
                let grain = spec.shards.as_ref().unwrap_or(&spec.chunks);
                spec.shape
                    .iter()
                    .zip(grain)
                    .map(|(&n, &c)| n.div_ceil(c.max(1)).saturating_mul(c))
                    .fold(1u64, u64::saturating_mul)
            }
            _ => spec.shape.iter().fold(1u64, |a, &n| a.saturating_mul(n)),
        };
        let uncompressed = matches!(address, Address::Npy { .. } | Address::Pt { .. })
            || spec.codec.for_format(address).unwrap_or(spec.codec) == Codec::None;
        PlannedOutput {
            name: address.to_string(),
            path: address.container().to_path_buf(),
            bytes: elements.saturating_mul(element),
            uncompressed,
        }
    }

    /// Array `name` of the Zarr group at `group`, created from `spec`.
    pub fn child(group: &Address, name: &str, spec: &CreateSpec) -> PlannedOutput {
        let address = match group {
            Address::Zarr { store, node } => Address::Zarr {
                store: store.clone(),
                node: crate::io::zarr::child_node(node, name),
            },
            other => other.clone(),
        };
        PlannedOutput::array(&address, spec)
    }

    /// Files of `bytes` in all, written as they are, under `path`.
    pub fn files(name: impl Into<String>, path: &Path, bytes: u64) -> PlannedOutput {
        PlannedOutput {
            name: name.into(),
            path: path.to_path_buf(),
            bytes,
            uncompressed: true,
        }
    }
}

/// The device of the nearest existing ancestor of `path` (`None` where it cannot be asked).
fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let existing = crate::io::safety::existing_ancestor(path)?;
    std::fs::metadata(existing).ok().map(|m| m.dev())
}

/// Refuses outputs stored uncompressed whose bytes, added up per file system, exceed its free
/// space (`free(path)` bytes); warns for compressed ones whose uncompressed bytes do.
///
/// # Errors
/// [`Error::Parameter`] naming `output`: the outputs, the bytes they need, the free space and
/// the file system's directory.
pub fn check_outputs(outputs: &[PlannedOutput], free: impl Fn(&Path) -> u64) -> Result<()> {
    check_outputs_warning(outputs, free, true)
}

/// [`check_outputs`], warning about compressed outputs only when `warn` (a plan checked twice
/// warns once).
fn check_outputs_warning(
    outputs: &[PlannedOutput],
    free: impl Fn(&Path) -> u64,
    warn: bool,
) -> Result<()> {
    // Per file system: (a path on it, uncompressed bytes and names, compressed bytes and names).
    type Need = (PathBuf, u64, Vec<String>, u64, Vec<String>);
    let mut by_device: BTreeMap<Option<u64>, Need> = BTreeMap::new();
    for (i, o) in outputs.iter().enumerate() {
        // Where the device is unknown each output counts alone.
        let key = device_of(&o.path).or(Some(u64::MAX - i as u64));
        let need = by_device
            .entry(key)
            .or_insert_with(|| (o.path.clone(), 0, Vec::new(), 0, Vec::new()));
        if o.uncompressed {
            need.1 = need.1.saturating_add(o.bytes);
            need.2.push(o.name.clone());
        } else {
            need.3 = need.3.saturating_add(o.bytes);
            need.4.push(o.name.clone());
        }
    }
    for (path, raw, raw_names, packed, packed_names) in by_device.into_values() {
        let free = free(&path);
        let place = crate::io::safety::existing_ancestor(&path)
            .map(|p| {
                if p.is_dir() {
                    p
                } else {
                    p.parent().unwrap_or(Path::new("."))
                }
            })
            .unwrap_or(Path::new("."));
        let place = std::fs::canonicalize(place)
            .unwrap_or_else(|_| place.to_path_buf())
            .display()
            .to_string();
        if raw > free {
            return Err(Error::parameter(
                "output",
                format!(
                    "{} {} {} on disk (stored uncompressed), {} free on the file system of {place}: free space there, or write a smaller output",
                    raw_names.join(", "),
                    if raw_names.len() == 1 { "needs" } else { "need" },
                    sized(raw),
                    sized(free)
                ),
            ));
        }
        if warn && raw.saturating_add(packed) > free {
            tracing::warn!(
                "{} {} {} uncompressed, {} free on the file system of {place}: the run fails if compression leaves more than {}",
                packed_names.join(", "),
                if packed_names.len() == 1 { "holds" } else { "hold" },
                sized(packed),
                sized(free),
                sized(free - raw)
            );
        }
    }
    Ok(())
}

/// `human_bytes` with the exact count for sizes past a tebibyte or so, where a rounded
/// figure hides how far past the limit it is.
fn sized(bytes: u64) -> String {
    if bytes == u64::MAX {
        "more than 16 EiB".to_string()
    } else if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else if bytes >= 1 << 40 {
        format!("{:.1} TiB", bytes as f64 / (1u64 << 40) as f64)
    } else {
        human_bytes(bytes)
    }
}

/// The runner's check of an operation's outputs ([`super::Operation::planned_outputs`]),
/// against the free space of each file system. An output whose interrupted run is resumed
/// (`--resume` with its staging present) is left out: part of it is on disk already. An
/// output that exists without `--overwrite` is left out too: staging refuses it by name.
///
/// # Errors
/// As [`check_outputs`].
pub fn check_run<Op: super::Operation + ?Sized>(
    op: &Op,
    options: &super::RunOptions,
) -> Result<()> {
    let planned = kept(op.targets(), op.planned_outputs(), options);
    check_outputs_warning(
        &planned,
        crate::io::safety::free_disk_bytes,
        !op.checked_disk(),
    )
}

/// [`check_run`] for a plan that is not made yet: an operation whose list of units takes long
/// to make checks its outputs first (`targets` are what it will publish).
///
/// # Errors
/// As [`check_outputs`].
pub fn check_planned(
    targets: &[Address],
    planned: Vec<PlannedOutput>,
    options: &super::RunOptions,
) -> Result<()> {
    check_outputs(
        &kept(targets, planned, options),
        crate::io::safety::free_disk_bytes,
    )
}

/// The planned outputs the check counts (see [`check_run`]).
fn kept(
    targets: &[Address],
    planned: Vec<PlannedOutput>,
    options: &super::RunOptions,
) -> Vec<PlannedOutput> {
    planned
        .into_iter()
        .filter(|o| !left_out(targets, o, options))
        .collect()
}

fn left_out(targets: &[Address], o: &PlannedOutput, options: &super::RunOptions) -> bool {
    targets.iter().any(|t| {
        let published = crate::io::staging::Staging::published_of(t);
        let staged = crate::io::staging::Staging::staged_of(t);
        let mine = o.path.starts_with(t.container()) || t.container().starts_with(&o.path);
        mine && ((options.resume && staged.exists()) || (published.exists() && !options.overwrite))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DType;

    fn spec(shape: &[u64], chunks: &[u64], codec: Codec) -> CreateSpec {
        CreateSpec {
            flat_chunk_keys: false,
            shape: shape.to_vec(),
            dtype: DType::F64,
            chunks: chunks.to_vec(),
            shards: None,
            codec,
            dimension_names: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn planned_bytes_count_whole_chunks_and_know_which_outputs_compress() {
        let npy = Address::parse("/x/m.npy").unwrap();
        let p = PlannedOutput::array(&npy, &spec(&[10, 12], &[3, 12], Codec::Auto));
        assert_eq!((p.bytes, p.uncompressed), (960, true));
        let raw = Address::parse("/x/a.zarr").unwrap();
        let p = PlannedOutput::array(&raw, &spec(&[10, 12], &[3, 5], Codec::None));
        // 4 x 3 chunks of 3 x 5.
        assert_eq!((p.bytes, p.uncompressed), (12 * 15 * 8, true));
        let p = PlannedOutput::array(&raw, &spec(&[10, 12], &[3, 5], Codec::Auto));
        assert!(!p.uncompressed);
        let h5 = Address::parse("/x/f.h5:/d").unwrap();
        assert!(!PlannedOutput::array(&h5, &spec(&[4], &[4], Codec::Auto)).uncompressed);
        assert!(PlannedOutput::array(&h5, &spec(&[4], &[4], Codec::None)).uncompressed);
        // Sizes past u64 saturate: more than any disk.
        let huge = PlannedOutput::array(&npy, &spec(&[u64::MAX, 12], &[1, 12], Codec::Auto));
        assert_eq!(huge.bytes, u64::MAX);
    }

    #[test]
    fn uncompressed_outputs_beyond_the_free_space_are_refused_compressed_ones_warned() {
        let dir = tempfile::tempdir().unwrap();
        let out = |name: &str, bytes: u64, uncompressed: bool| PlannedOutput {
            name: name.into(),
            path: dir.path().join(name),
            bytes,
            uncompressed,
        };
        let free = |_: &Path| 1000u64;
        assert!(check_outputs(&[out("a.npy", 1000, true)], free).is_ok());
        // Two outputs on one file system add up.
        let e = check_outputs(&[out("a.npy", 600, true), out("b.npy", 600, true)], free)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--output: "), "{e}");
        assert!(e.contains("a.npy, b.npy need 1200 bytes on disk"), "{e}");
        assert!(e.contains("1000 bytes free on the file system of"), "{e}");
        // Compressed: never refused on its uncompressed size.
        assert!(check_outputs(&[out("c.zarr", u64::MAX, false)], free).is_ok());
        assert!(
            check_outputs(&[out("c.zarr", 5000, false), out("a.npy", 900, true)], free).is_ok()
        );
        let e = check_outputs(&[out("big.npy", u64::MAX, true)], free)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 16 EiB"), "{e}");
    }
}
