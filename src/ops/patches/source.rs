//! Where slices come from: a split is a list of 2-D slices, read from files named by a
//! manifest (or found in an image directory), or from axis 0 of a volume. Whatever the
//! format or element type, a slice comes out as a float32 (H, W) array, as the notebook's
//! `np.load(p).astype(np.float32)` gives it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Ix2};
use serde::{Deserialize, Serialize};

use super::manifest::{relative_slice_path, relative_to, SliceManifest};
use crate::error::{Error, Result};
use crate::grid::Region;
use crate::io::{self, images, Address, ArrayReader, Block};
use crate::with_block;

/// Why a slice cannot be used. `Missing` is kept apart so that every missing file can be
/// listed at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Problem {
    /// The file does not exist.
    Missing,
    /// Anything else, as one sentence naming the slice.
    Unusable(String),
}

/// The slices of one split.
pub enum Slices {
    /// One file per slice: the data root and each file's path relative to it (with `/`).
    Files { root: PathBuf, paths: Vec<String> },
    /// Axis 0 of a 3-D array; every slice's source path is the array's.
    Volume {
        reader: Arc<dyn ArrayReader>,
        address: Address,
        src_path: String,
    },
}

/// A named list of slices, with the manifest columns carried into the patch manifest.
pub struct Split {
    pub name: String,
    /// The data root that paths in the outputs are relative to.
    pub root: PathBuf,
    /// The manifest it came from (`None` for `--input`).
    pub manifest: Option<PathBuf>,
    /// `--input` relative to the data root (`None` with a manifest).
    pub source_input: Option<String>,
    pub slices: Slices,
    /// `src_<column>` names of the manifest's other columns, and each slice's values.
    pub carried_header: Vec<String>,
    pub carried: Vec<Vec<String>>,
}

/// Checks that a split name can be a file-name part (it starts every patch id and, with
/// several splits, names a directory).
///
/// # Errors
/// [`Error::Parameter`] naming `flag`.
pub fn check_split_name(flag: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::parameter(
            flag,
            format!("{name:?} is not a valid file-name part: use letters, digits, `_`, `-` and `.` (not first)"),
        ))
    }
}

impl Split {
    /// A split read from a slice manifest: paths checked (relative, inside `root`), other
    /// columns kept.
    ///
    /// # Errors
    /// The manifest's refusals ([`SliceManifest::read`]), or a bad path with its row.
    pub fn from_manifest(name: &str, manifest: &Path, root: &Path) -> Result<Split> {
        let table = SliceManifest::read(manifest)?;
        let paths = table
            .slice_paths()
            .map_err(|m| Error::bad_file(manifest, m))?;
        let (carried_header, carried) = table.carried();
        Ok(Split {
            name: name.to_string(),
            root: root.to_path_buf(),
            manifest: Some(manifest.to_path_buf()),
            source_input: None,
            slices: Slices::Files {
                root: root.to_path_buf(),
                paths,
            },
            carried_header,
            carried,
        })
    }

    /// A split from `--input`: a directory of images (one stack, as `convert` reads it) or a
    /// 3-D array.
    ///
    /// # Errors
    /// A directory with no stack or several, an array that is not 3-D, an input outside
    /// `root`.
    pub fn from_input(name: &str, input: &str, root: &Path) -> Result<Split> {
        let (slices, source_input) = if Path::new(input).is_dir() && Address::parse(input).is_err()
        {
            (
                stack_files(input, root)?,
                inside_root(Path::new(input), root)?,
            )
        } else {
            let v = volume(input, root)?;
            let Slices::Volume { src_path, .. } = &v else {
                unreachable!("volume() returns a volume")
            };
            let src = src_path.clone();
            (v, src)
        };
        let n = match &slices {
            Slices::Files { paths, .. } => paths.len(),
            Slices::Volume { reader, .. } => reader.meta().shape[0] as usize,
        };
        Ok(Split {
            name: name.to_string(),
            root: root.to_path_buf(),
            manifest: None,
            source_input: Some(source_input),
            slices,
            carried_header: Vec::new(),
            carried: vec![Vec::new(); n],
        })
    }

    pub fn len(&self) -> usize {
        self.carried.len()
    }

    pub fn is_empty(&self) -> bool {
        self.carried.is_empty()
    }

    /// Slice `i`'s path relative to the data root, as the patch manifest's `src_path`.
    pub fn src_path(&self, i: usize) -> &str {
        match &self.slices {
            Slices::Files { paths, .. } => &paths[i],
            Slices::Volume { src_path, .. } => src_path,
        }
    }

    /// Slice `i` for messages: its file, or the volume and index.
    pub fn describe(&self, i: usize) -> String {
        match &self.slices {
            Slices::Files { root, paths } => root.join(&paths[i]).display().to_string(),
            Slices::Volume { address, .. } => format!("{address} slice {i}"),
        }
    }

    /// Runs `f` on slice `i` as a float32 (H, W) view, refusing one that is missing,
    /// unreadable, not 2-D, or holds NaN or infinite values. A float32 `.npy` file is read
    /// into the thread's reused buffer and seen there; anything else is read and converted
    /// first.
    ///
    /// # Errors
    /// The [`Problem`].
    pub fn with_slice<R>(
        &self,
        i: usize,
        f: impl FnOnce(ArrayView2<'_, f32>) -> R,
    ) -> std::result::Result<R, Problem> {
        self.viewed(i, true, f)
    }

    /// [`Split::with_slice`] without the scan for NaN and infinite values (pass 2: pass 1
    /// scanned every slice).
    ///
    /// # Errors
    /// A slice that is missing, unreadable or not 2-D.
    pub fn with_slice_unchecked<R>(
        &self,
        i: usize,
        f: impl FnOnce(ArrayView2<'_, f32>) -> R,
    ) -> std::result::Result<R, Problem> {
        self.viewed(i, false, f)
    }

    fn viewed<R>(
        &self,
        i: usize,
        check: bool,
        f: impl FnOnce(ArrayView2<'_, f32>) -> R,
    ) -> std::result::Result<R, Problem> {
        SLICE_BUFFER.with_borrow_mut(|buf| {
            let values = self.values(i, buf)?;
            let view = match &values {
                SliceValues::InBuffer(v) => v.view(),
                SliceValues::Converted(a) => a.view(),
            };
            self.checked(i, check, view).map(|()| f(view))
        })
    }

    /// Slice `i`'s values: a float32 `.npy` file read into `buf`, anything else read and
    /// converted.
    fn values<'a>(
        &self,
        i: usize,
        buf: &'a mut Vec<f32>,
    ) -> std::result::Result<SliceValues<'a>, Problem> {
        let unusable = |e: crate::error::Error| Problem::Unusable(e.to_string());
        let block = match &self.slices {
            Slices::Files { root, paths } => {
                let path = root.join(&paths[i]);
                match open_file(&path)? {
                    SliceFile::Npy => {
                        if let Some((shape, at)) =
                            io::npy::read_f32_into(&path, buf).map_err(unusable)?
                        {
                            let view = float_view(&shape, &buf[at])
                                .ok_or_else(|| self.not_2d(i, &shape))?;
                            return Ok(SliceValues::InBuffer(view));
                        }
                        // Another dtype (converted below) or a malformed file (the reader says
                        // what is wrong).
                        io::npy::NpyReader::open(&path).and_then(|r| read_whole(&r))
                    }
                    SliceFile::Image => images::read(&path),
                }
                .map_err(unusable)?
            }
            Slices::Volume { reader, .. } => {
                read_volume_slice(reader.as_ref(), i).map_err(unusable)?
            }
        };
        as_float_slice(block)
            .map(SliceValues::Converted)
            .map_err(|shape| self.not_2d_text(i, &shape))
    }

    fn not_2d(&self, i: usize, shape: &[u64]) -> Problem {
        self.not_2d_text(i, &crate::grid::join_with(shape, "x"))
    }

    fn not_2d_text(&self, i: usize, shape: &str) -> Problem {
        Problem::Unusable(format!(
            "{}: not a 2-D slice (shape {shape}); each slice must be one (H, W) image",
            self.describe(i)
        ))
    }

    /// Refuses a slice holding NaN or infinite values, naming the first (when `check`).
    fn checked(
        &self,
        i: usize,
        check: bool,
        slice: ArrayView2<'_, f32>,
    ) -> std::result::Result<(), Problem> {
        if !check {
            return Ok(());
        }
        match super::kernel::first_non_finite(slice) {
            None => Ok(()),
            Some((y, x)) => Err(Problem::Unusable(format!(
                "{}: holds NaN or infinite values as float32 (first at row {y}, column {x}); clean the slice first",
                self.describe(i)
            ))),
        }
    }

    /// What the run reads, for the output safety checks: the manifest, and every directory
    /// slice files are read from (or the volume).
    pub fn places(&self) -> Vec<crate::io::safety::Place> {
        use crate::io::safety::Place;
        let mut places: Vec<Place> = self.manifest.iter().cloned().map(Place::Path).collect();
        match &self.slices {
            Slices::Files { root, paths } => {
                let dirs: std::collections::BTreeSet<PathBuf> = paths
                    .iter()
                    .map(|p| {
                        root.join(p)
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()
                    })
                    .collect();
                places.extend(dirs.into_iter().map(Place::Directory));
            }
            Slices::Volume { address, .. } => places.push(Place::Array(address.clone())),
        }
        places
    }
}

/// A directory of image files holding one stack, slice i = the i-th file in index order.
fn stack_files(input: &str, root: &Path) -> Result<Slices> {
    let stacks = crate::ops::convert::scan(
        Path::new(input),
        crate::ops::convert::params::DEFAULT_PATTERN,
        None,
    )?;
    if stacks.len() != 1 {
        return Err(Error::parameter(
            "input",
            format!(
                "{input} holds {} stacks ({}); give one stack per run",
                stacks.len(),
                stacks
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let paths = stacks[0]
        .files
        .iter()
        .map(|(_, p)| inside_root(p, root))
        .collect::<Result<Vec<_>>>()?;
    Ok(Slices::Files {
        root: root.to_path_buf(),
        paths,
    })
}

/// A 3-D array whose axis 0 indexes the slices.
fn volume(input: &str, root: &Path) -> Result<Slices> {
    let address = Address::parse(input)?;
    let reader = io::open(&address)?;
    let shape = reader.meta().shape.clone();
    if shape.len() != 3 {
        return Err(Error::address(
            input,
            format!(
                "has shape {} but --input needs a 3-D volume (slices, H, W) or a directory of 2-D images",
                crate::grid::join(&shape)
            ),
        ));
    }
    let mut src_path = inside_root(address.container(), root)?;
    if let Address::Zarr { node, .. } = &address {
        if !node.is_empty() {
            src_path = format!("{src_path}/{node}");
        }
    }
    if let Address::Hdf5 { dataset, .. } = &address {
        src_path = format!("{src_path}:{dataset}");
    }
    Ok(Slices::Volume {
        reader: Arc::from(reader),
        address,
        src_path,
    })
}

/// `path` relative to `root`, refused where it lies outside (outputs name it relatively).
fn inside_root(path: &Path, root: &Path) -> Result<String> {
    let rel = relative_to(path, root);
    relative_slice_path(&rel).map_err(|_| {
        Error::parameter(
            "data-root",
            format!(
                "{} lies outside the data root {}; give a --data-root that holds the input",
                path.display(),
                root.display()
            ),
        )
    })
}

/// A slice's float32 values: in the thread's buffer, or converted from another type.
enum SliceValues<'a> {
    InBuffer(ArrayView2<'a, f32>),
    Converted(Array2<f32>),
}

/// A slice file: `.npy` (read whole into the thread's [`SLICE_BUFFER`] when float32), or an
/// image (TIFF, PNG, JPEG), decoded whole when read.
enum SliceFile {
    Npy,
    Image,
}

thread_local! {
    /// Each thread's buffer for float32 `.npy` slices: one `read` into it per slice (see
    /// `io::npy::read_f32_into`). It holds the largest slice the thread has read, and stays for
    /// the thread's life.
    static SLICE_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What kind of slice file `path` is, telling a missing file from an unusable one.
fn open_file(path: &Path) -> std::result::Result<SliceFile, Problem> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::Missing),
        Err(e) => return Err(Problem::Unusable(format!("{}: {e}", path.display()))),
        Ok(m) if m.is_dir() => {
            return Err(Problem::Unusable(format!(
                "{}: is a directory, not a slice file",
                path.display()
            )))
        }
        Ok(_) => {}
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        Ok(SliceFile::Npy)
    } else {
        Ok(SliceFile::Image)
    }
}

/// Float32 elements of an (H, W) or (1, H, W) shape as an (H, W) view (as
/// [`as_float_slice`] takes them); `None` for any other shape.
fn float_view<'a>(shape: &[u64], values: &'a [f32]) -> Option<ArrayView2<'a, f32>> {
    let (&[h, w] | &[1, h, w]) = shape else {
        return None;
    };
    ArrayView2::from_shape((usize::try_from(h).ok()?, usize::try_from(w).ok()?), values).ok()
}

/// Every element of an array, as one block.
fn read_whole(reader: &dyn ArrayReader) -> Result<Block> {
    let shape = reader.meta().shape.clone();
    reader.read_box(&Region::whole(&shape))
}

/// Slice `i` of a 3-D array, as a (1, H, W) block.
fn read_volume_slice(reader: &dyn ArrayReader, i: usize) -> Result<Block> {
    let shape = &reader.meta().shape;
    reader.read_box(&Region::slab(shape, 0, i as u64..i as u64 + 1))
}

/// Any block of one 2-D slice ((H, W), or a volume's (1, H, W)) as float32, converted as
/// numpy's `astype(np.float32)` does; otherwise the shape, for the message.
fn as_float_slice(block: Block) -> std::result::Result<Array2<f32>, String> {
    let shape = block.shape();
    // `as` is numpy's astype: nearest for wide integers and f64; float32 is taken as it is.
    #[allow(clippy::unnecessary_cast)]
    let values = match block {
        Block::F32(a) => a,
        other => with_block!(other, a => a.mapv(|v| v as f32)),
    };
    let values = match shape.len() {
        3 if shape[0] == 1 => values.index_axis_move(ndarray::Axis(0), 0),
        _ => values,
    };
    values
        .into_dimensionality::<Ix2>()
        .map_err(|_| crate::grid::join_with(&shape, "x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of slice file through `with_slice`, twice on one thread (the reused buffer):
    /// float32 (H, W) and (1, H, W) as they are, uint16 converted, the rest refused.
    #[test]
    fn slice_files_are_seen_as_float32_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = ndarray::Array2::from_shape_fn((4, 6), |(y, x)| (y * 6 + x) as f32 * 0.25);
        let mut nan = a.clone();
        nan[[2, 3]] = f32::NAN;
        ndarray_npy::write_npy(dir.path().join("a.npy"), &a).unwrap();
        ndarray_npy::write_npy(
            dir.path().join("one.npy"),
            &a.clone().insert_axis(ndarray::Axis(0)),
        )
        .unwrap();
        ndarray_npy::write_npy(dir.path().join("u.npy"), &a.mapv(|v| (v * 4.0) as u16)).unwrap();
        ndarray_npy::write_npy(
            dir.path().join("cube.npy"),
            &ndarray::Array3::<f32>::zeros((2, 4, 6)),
        )
        .unwrap();
        ndarray_npy::write_npy(dir.path().join("nan.npy"), &nan).unwrap();
        std::fs::write(dir.path().join("bad.npy"), b"\x93NUMPY garbage").unwrap();
        let manifest = dir.path().join("m.csv");
        std::fs::write(
            &manifest,
            "path\na.npy\none.npy\nu.npy\ncube.npy\nnan.npy\nbad.npy\nmissing.npy\na.npy\n",
        )
        .unwrap();
        let split = Split::from_manifest("train", &manifest, dir.path()).unwrap();
        let seen = |i: usize| split.with_slice(i, |v| v.to_owned());
        for i in [0, 1, 7, 1, 0] {
            assert_eq!(seen(i).ok().unwrap(), a, "slice {i}");
        }
        assert_eq!(seen(2).ok().unwrap(), a.mapv(|v| (v * 4.0) as u16 as f32));
        let unusable = |i: usize| match seen(i) {
            Err(Problem::Unusable(m)) => m,
            _ => panic!("slice {i} should be unusable"),
        };
        assert!(
            unusable(3).contains("not a 2-D slice (shape 2x4x6)"),
            "{}",
            unusable(3)
        );
        assert!(
            unusable(4).contains("NaN or infinite values as float32 (first at row 2, column 3)")
        );
        assert!(unusable(5).contains("bad.npy") && unusable(5).contains("not a valid .npy"));
        assert!(matches!(seen(6), Err(Problem::Missing)));
        // Pass 2 skips the scan: the NaN slice is seen as it is.
        let v = split
            .with_slice_unchecked(4, |v| v.to_owned())
            .ok()
            .unwrap();
        assert!(v[[2, 3]].is_nan() && v[[0, 1]] == 0.25);
    }

    #[test]
    fn split_names_are_file_name_parts() {
        for good in ["train", "val-2", "test_a", "v1.0"] {
            assert!(check_split_name("split", good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a\\b", "x y", "..", "é"] {
            let e = check_split_name("split", bad).unwrap_err().to_string();
            assert!(e.starts_with("--split:"), "{e}");
        }
    }

    #[test]
    fn every_dtype_becomes_float32_and_3d_is_refused() {
        let u =
            Block::U16(ndarray::ArrayD::from_shape_vec(vec![2, 2], vec![0, 1, 65535, 7]).unwrap());
        let f = as_float_slice(u).unwrap();
        assert_eq!(f.into_raw_vec_and_offset().0, vec![0.0, 1.0, 65535.0, 7.0]);
        let big = Block::F64(ndarray::ArrayD::from_elem(vec![1, 2, 3], 0.1f64));
        assert_eq!(as_float_slice(big).unwrap()[[1, 2]], 0.1f32);
        let cube = Block::U8(ndarray::ArrayD::zeros(vec![3, 4, 5]));
        assert_eq!(as_float_slice(cube).unwrap_err(), "3x4x5");
    }
}
