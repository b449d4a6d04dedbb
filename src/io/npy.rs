//! numpy `.npy` files. Reads go through a read-only memory map (boxes are read without loading
//! the whole file, and kernels may use the mapped elements in place); writes are positioned
//! writes, so that several ranks can fill disjoint boxes of one file.
//!
//! Only C-order, native-endian files are read; anything else is refused with the reason.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayViewD, IxDyn, SliceInfoElem};
use serde_json::{Map, Value};

use super::{
    check_read, check_write, ArrayMeta, ArrayReader, ArrayWriter, Block, CreateSpec, DType, Element,
};
use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};
use crate::grid::Region;
use crate::{with_block, with_dtype};

/// The fields of a `.npy` header, and where its data starts.
#[derive(Debug, PartialEq)]
pub struct Header {
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    pub data_start: usize,
}

/// Parses the header of `.npy` bytes (format versions 1-3). The error says what is wrong, for
/// the caller to name its file or entry.
///
/// # Errors
/// No magic, an unknown version, a truncated header, or a missing or malformed field.
pub fn header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unknown format version {v}")),
    };
    let header = bytes.get(start..start + len).ok_or("truncated header")?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    // A quoted string (numpy writes single quotes; double ones are valid Python too). A
    // structured dtype (a list) has none.
    let descr = field("descr")
        .and_then(|r| {
            let q = r.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
            r[1..].split(q).next().map(String::from)
        })
        .ok_or("no 'descr' string in header (structured dtypes are not supported)")?;
    let fortran_order = field("fortran_order")
        .map(|r| r.starts_with("True"))
        .ok_or("no 'fortran_order' in header")?;
    let shape_text = field("shape")
        .and_then(|r| {
            r.strip_prefix('(')
                .and_then(|r| r.split(')').next())
                .map(String::from)
        })
        .ok_or("no 'shape' in header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header {
        descr,
        fortran_order,
        shape,
        data_start: start + len,
    })
}

/// [`header`] of a file, as (descr, fortran_order, shape, data_start).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(String, bool, Vec<u64>, usize)> {
    let h =
        header(bytes).map_err(|m| Error::bad_file(path, format!("not a valid .npy file: {m}")))?;
    Ok((h.descr, h.fortran_order, h.shape, h.data_start))
}

/// The data of a `.npy` file's bytes: exactly the elements its shape needs, from `data_start`
/// to the end, aligned for `dtype`; else what is wrong.
fn elements_of<'a>(
    bytes: &'a [u8],
    data_start: usize,
    shape: &[u64],
    dtype: DType,
) -> std::result::Result<&'a [u8], String> {
    let data = bytes.get(data_start..).unwrap_or_default();
    let needed = shape
        .iter()
        .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d));
    if needed != Some(data.len() as u64) {
        return Err(format!(
            "not a valid .npy file: {} bytes of data where shape {shape:?} of {} needs {}",
            data.len(),
            dtype.name(),
            needed.map_or("more than 2^64".to_string(), |n| n.to_string())
        ));
    }
    if !(data.as_ptr() as usize).is_multiple_of(dtype.size()) {
        return Err(format!(
            "not a valid .npy file: its data starts at byte {data_start}, not aligned for {}",
            dtype.name()
        ));
    }
    Ok(data)
}

/// A native-endian float32 C-order `.npy` file read whole into `buf` (grown as needed, never
/// shrunk, so that one buffer serves a run of slices): its shape and where its elements lie in
/// `buf`. `None` when the file is anything else, or malformed: open it with [`NpyReader`],
/// which says what is wrong.
///
/// One `read` into a reused buffer instead of a fresh memory map for each file: for many small
/// files the map's page faults, `munmap` and TLB shootdowns across threads cost more than the
/// copy.
///
/// # Errors
/// The file cannot be opened or read.
pub fn read_f32_into(
    path: &Path,
    buf: &mut Vec<f32>,
) -> Result<Option<(Vec<u64>, std::ops::Range<usize>)>> {
    use std::io::Read;
    let mut file = File::open(path).at(path)?;
    let len = usize::try_from(file.metadata().at(path)?.len())
        .map_err(|_| Error::bad_file(path, "too large for this machine's memory"))?;
    let words = len.div_ceil(4);
    if buf.len() < words {
        buf.resize(words, 0.0);
    }
    let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(buf.as_mut_slice())[..len];
    file.read_exact(bytes).at(path)?;
    let Ok(h) = header(bytes) else {
        return Ok(None);
    };
    if h.fortran_order || descr_dtype(&h.descr) != Some(DType::F32) {
        return Ok(None);
    }
    if elements_of(bytes, h.data_start, &h.shape, DType::F32).is_err() {
        return Ok(None);
    }
    let first = h.data_start / 4;
    let n = (len - h.data_start) / 4;
    Ok(Some((h.shape, first..first + n)))
}

fn descr_dtype(descr: &str) -> Option<DType> {
    let native = if cfg!(target_endian = "little") {
        '<'
    } else {
        '>'
    };
    // The first character, not byte: a corrupt header may start with a multi-byte one.
    let order = descr.chars().next()?;
    let rest = &descr[order.len_utf8()..];
    let size_one = rest.ends_with('1');
    if !(order == native || order == '|' || (order == '=') || size_one) {
        return None;
    }
    // numpy's one-letter codes for bytes, else kind and size.
    match rest {
        "B" => Some(DType::U8),
        "b" => Some(DType::I8),
        _ => DType::from_numpy_code(rest),
    }
}

fn slice_info(region: &Region) -> Vec<SliceInfoElem> {
    region
        .ranges()
        .into_iter()
        .map(|r| SliceInfoElem::Slice {
            start: r.start as isize,
            end: Some(r.end as isize),
            step: 1,
        })
        .collect()
}

/// `region` of a C-order array of `shape` whose elements are `values` (a mapped file's), copied
/// into `spare` when it has the region's shape and type (its memory reused), else into a new
/// array. Shared by the readers of mapped formats (`.npy`, `.pt`).
pub(super) fn box_of<T: Element>(
    values: &[T],
    shape: &[u64],
    region: &Region,
    spare: Option<Block>,
) -> ndarray::ArrayD<T> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let view = ArrayViewD::<T>::from_shape(IxDyn(&shape), values)
        .expect("a mapped array holds its shape's elements");
    let src = view.slice(slice_info(region).as_slice());
    match spare
        .filter(|b| b.shape() == region.shape)
        .and_then(|b| b.into_array::<T>())
    {
        Some(mut a) => {
            match (a.as_slice_mut(), src.as_slice()) {
                (Some(dst), Some(from)) => dst.copy_from_slice(from),
                _ => a.assign(&src),
            }
            a
        }
        None => src.to_owned(),
    }
}

/// Reads a `.npy` file through a read-only memory map.
pub struct NpyReader {
    map: Mmap,
    meta: ArrayMeta,
    path: PathBuf,
}

impl NpyReader {
    /// # Errors
    /// Unreadable file, corrupt header, Fortran order, foreign byte order or unsupported dtype.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        // SAFETY: the map is read-only; tessera never writes an input while reading it. Another
        // process truncating the file under us would fault, as with any mmap reader.
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let (descr, fortran, shape, data_start) = parse_header(path, &map)?;
        if fortran {
            return Err(Error::bad_file(
                path,
                "Fortran-order .npy is not supported; save it in C order (np.ascontiguousarray)",
            ));
        }
        let dtype = descr_dtype(&descr).ok_or_else(|| {
            Error::bad_file(
                path,
                format!(
                    "dtype {descr} is not supported (native-endian u8..u64, i8..i64, f32, f64)"
                ),
            )
        })?;
        // The data length and alignment now rather than on first read.
        elements_of(&map, data_start, &shape, dtype).map_err(|m| Error::bad_file(path, m))?;
        Ok(NpyReader {
            map,
            meta: ArrayMeta::contiguous(shape, dtype),
            path: path.to_path_buf(),
        })
    }
}

impl ArrayReader for NpyReader {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn read_box_reusing(&self, region: &Region, spare: Option<Block>) -> Result<Block> {
        check_read(&self.path, &self.meta.shape, region)?;
        with_dtype!(self.meta.dtype, T => {
            let values: &[T] = crate::io::mapped_elements(self)
                .ok_or_else(|| Error::bad_file(&self.path, "data not aligned for its type"))?;
            Ok(T::into_block(box_of(values, &self.meta.shape, region, spare)))
        })
    }

    fn mapped_bytes(&self) -> Option<&[u8]> {
        // The data runs to the end of the file (`open` checked its length).
        let n: u64 = self.meta.shape.iter().product::<u64>() * self.meta.dtype.size() as u64;
        let n = usize::try_from(n).ok()?;
        self.map.get(self.map.len().checked_sub(n)?..)
    }
}

/// Writes a `.npy` file: rank 0 creates it full of zeros with its header, then every rank
/// writes its own boxes with positioned writes, one per contiguous run of the file.
///
/// (Writes through a shared mapping were slower: every first store to a page took a
/// write-protect fault and a TLB shootdown across the process's threads. As with the Zarr store,
/// flushing to disk is left to the operating system.)
pub struct NpyWriter {
    file: File,
    /// Byte offset of the data (the header's length).
    data_offset: u64,
    shape: Vec<u64>,
    dtype: DType,
    path: PathBuf,
}

impl NpyWriter {
    /// # Errors
    /// A failure creating or opening the file, or a file (on resume) of another size.
    pub fn create(path: &Path, spec: &CreateSpec, comm: &dyn Comm, resume: bool) -> Result<Self> {
        let mut result = Ok(());
        if comm.is_root() && !(resume && path.exists()) {
            result = (|| {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).at(parent)?;
                }
                let file = File::create(path).at(path)?;
                let shape: Vec<usize> = spec.shape.iter().map(|&n| n as usize).collect();
                with_dtype!(spec.dtype, T => ndarray_npy::write_zeroed_npy::<T, _>(&file, IxDyn(&shape)))
                    .map_err(|e| Error::bad_file(path, e.to_string()))
            })();
        }
        if let Some(rank) = comm.any_failed(result.is_err()) {
            result?;
            return Err(Error::PeerFailed { rank });
        }
        let file = OpenOptions::new().write(true).open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        let bytes = spec.shape.iter().product::<u64>() * spec.dtype.size() as u64;
        let data_offset = len.checked_sub(bytes).ok_or_else(|| {
            Error::bad_file(
                path,
                format!("{len} bytes, fewer than the {bytes} bytes of data it should hold"),
            )
        })?;
        Ok(NpyWriter::at(file, data_offset, spec, path))
    }

    /// A writer of `spec`'s array stored raw in C order from `data_offset` of `file` (which
    /// is already that long): a `.npy`'s data, or a `.pt`'s storage.
    pub fn at(file: File, data_offset: u64, spec: &CreateSpec, path: &Path) -> Self {
        NpyWriter {
            file,
            data_offset,
            shape: spec.shape.clone(),
            dtype: spec.dtype,
            path: path.to_path_buf(),
        }
    }

    fn write_runs<T: Element>(&self, region: &Region, block: &ndarray::ArrayD<T>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let standard = block.as_standard_layout();
        let data = standard.as_slice().expect("standard layout");
        let nd = self.shape.len();
        if nd == 0 {
            let bytes = bytemuck::cast_slice(data);
            return self
                .file
                .write_all_at(bytes, self.data_offset)
                .at(&self.path);
        }
        // The file is contiguous over the trailing axes the region spans whole, and over the
        // axis before them: one write per index of the axes before that one.
        let mut j = nd - 1;
        while j > 0 && region.start[j] == 0 && region.shape[j] == self.shape[j] {
            j -= 1;
        }
        let shape: Vec<usize> = self.shape.iter().map(|&n| n as usize).collect();
        let strides = crate::grid::row_major_strides(&shape);
        let run = region.shape[j..].iter().product::<u64>() as usize;
        let size = std::mem::size_of::<T>() as u64;
        let ranges = region.ranges();
        let mut done = 0usize;
        let mut failed = Ok(());
        crate::grid::for_each_index(&ranges[..j], |idx| {
            if failed.is_err() {
                return;
            }
            let element: u64 = idx
                .iter()
                .zip(&strides)
                .map(|(&i, &s)| i * s as u64)
                .sum::<u64>()
                + region.start[j] * strides[j] as u64;
            let bytes = bytemuck::cast_slice(&data[done..done + run]);
            failed = self
                .file
                .write_all_at(bytes, self.data_offset + element * size)
                .at(&self.path);
            done += run;
        });
        failed
    }
}

impl ArrayWriter for NpyWriter {
    fn write_box(&self, part: Option<(&Region, &Block)>) -> Result<()> {
        let Some((region, block)) = part else {
            return Ok(());
        };
        check_write(&self.path, &self.shape, self.dtype, region, block)?;
        with_block!(block, a => self.write_runs(region, a))
    }

    fn set_attributes(&self, _attributes: &Map<String, Value>) -> Result<()> {
        // .npy has no attributes; the run report beside the output keeps the provenance.
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Local;

    #[test]
    fn descrs_with_odd_characters_are_refused_not_panicking() {
        assert_eq!(descr_dtype("\u{fffd}<u2"), None);
        assert_eq!(descr_dtype(""), None);
        assert_eq!(descr_dtype("<u2"), Some(DType::U16));
    }

    #[test]
    fn write_then_read_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let spec = CreateSpec {
            flat_chunk_keys: false,
            shape: vec![4, 3],
            dtype: DType::I16,
            chunks: vec![4, 3],
            shards: None,
            codec: super::super::Codec::None,
            dimension_names: None,
            attributes: Map::new(),
        };
        let w = Box::new(NpyWriter::create(&path, &spec, &Local, false).unwrap());
        let region = Region {
            start: vec![1, 1],
            shape: vec![2, 2],
        };
        let block = Block::I16(
            ndarray::ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1, -2, 3, -4]).unwrap(),
        );
        w.write_box(Some((&region, &block))).unwrap();
        w.close().unwrap();
        let r = NpyReader::open(&path).unwrap();
        assert_eq!(r.meta().shape, vec![4, 3]);
        assert_eq!(r.read_box(&region).unwrap(), block);
        let all = r
            .read_box(&Region::whole(&[4, 3]))
            .unwrap()
            .into_array::<i16>()
            .unwrap();
        assert_eq!(
            all.iter().copied().collect::<Vec<_>>(),
            vec![0, 0, 0, 0, 1, -2, 0, 3, -4, 0, 0, 0]
        );
    }

    #[test]
    fn float32_files_are_read_whole_into_a_reused_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let f32_path = dir.path().join("a.npy");
        let a = ndarray::Array2::from_shape_fn((3, 5), |(y, x)| (y * 5 + x) as f32 - 4.5);
        ndarray_npy::write_npy(&f32_path, &a).unwrap();
        let mut buf = vec![7.0f32; 100];
        let (shape, at) = read_f32_into(&f32_path, &mut buf).unwrap().unwrap();
        assert_eq!(shape, vec![3, 5]);
        assert_eq!(&buf[at], a.as_slice().unwrap());
        assert_eq!(buf.len(), 100, "a large enough buffer is not resized");
        // A larger file grows it; a smaller one after that reads into the front.
        let big = ndarray::Array3::from_shape_fn((1, 20, 30), |(_, y, x)| (y + x) as f32);
        let big_path = dir.path().join("big.npy");
        ndarray_npy::write_npy(&big_path, &big).unwrap();
        let (shape, at) = read_f32_into(&big_path, &mut buf).unwrap().unwrap();
        assert_eq!(
            (shape, &buf[at]),
            (vec![1, 20, 30], big.as_slice().unwrap())
        );
        let (_, at) = read_f32_into(&f32_path, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[at], a.as_slice().unwrap());
        // Other dtypes, Fortran order and malformed files are left to NpyReader.
        let u16_path = dir.path().join("u.npy");
        ndarray_npy::write_npy(&u16_path, &ndarray::Array2::<u16>::zeros((2, 2))).unwrap();
        assert!(read_f32_into(&u16_path, &mut buf).unwrap().is_none());
        let fortran = dir.path().join("f.npy");
        ndarray_npy::write_npy(&fortran, &a.t()).unwrap();
        assert!(read_f32_into(&fortran, &mut buf).unwrap().is_none());
        let short = dir.path().join("short.npy");
        let bytes = std::fs::read(&f32_path).unwrap();
        std::fs::write(&short, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_f32_into(&short, &mut buf).unwrap().is_none());
        let e = NpyReader::open(&short).err().unwrap().to_string();
        assert!(
            e.contains("short.npy")
                && e.contains("56 bytes of data where shape [3, 5] of float32 needs 60"),
            "{e}"
        );
        let long = dir.path().join("long.npy");
        std::fs::write(&long, [&bytes[..], &[0u8; 4]].concat()).unwrap();
        assert!(read_f32_into(&long, &mut buf).unwrap().is_none());
        assert!(NpyReader::open(&long).is_err());
        let e = read_f32_into(&dir.path().join("none.npy"), &mut buf).unwrap_err();
        assert!(e.to_string().contains("none.npy"), "{e}");
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not numpy at all").unwrap();
        let e = NpyReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("bad.npy") && e.contains("magic"), "{e}");
    }
}
