//! numpy `.npy` files. Reads go through a read-only memory map (boxes are read without loading
//! the whole file, and kernels may use the mapped elements in place); writes are positioned
//! writes, so that several ranks can fill disjoint boxes of one file.
//!
//! Only C-order, native-endian files are read; anything else is refused with the reason.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayViewD, IxDyn, SliceInfoElem};
use ndarray_npy::ViewNpyExt;
use serde_json::{Map, Value};

use super::{
    check_region, check_write, ArrayMeta, ArrayReader, ArrayWriter, Block, CreateSpec, DType,
    Element,
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

/// [`header`] of a file, as (descr, fortran_order, shape).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(String, bool, Vec<u64>)> {
    let h =
        header(bytes).map_err(|m| Error::bad_file(path, format!("not a valid .npy file: {m}")))?;
    Ok((h.descr, h.fortran_order, h.shape))
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
    DType::from_name(match rest {
        "u1" | "B" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "i1" | "b" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "f4" => "float32",
        "f8" => "float64",
        _ => return None,
    })
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
        let (descr, fortran, shape) = parse_header(path, &map)?;
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
        let meta = ArrayMeta {
            shape,
            dtype,
            chunks: None,
            shards: None,
            codecs: vec![],
            dimension_names: None,
            attributes: Map::new(),
        };
        // Validate the data length now rather than on first read.
        with_dtype!(dtype, T => ArrayViewD::<T>::view_npy(&map).map(|_| ()))
            .map_err(|e| Error::bad_file(path, format!("not a valid .npy file: {e}")))?;
        Ok(NpyReader {
            map,
            meta,
            path: path.to_path_buf(),
        })
    }
}

impl ArrayReader for NpyReader {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn read_box(&self, region: &Region) -> Result<Block> {
        self.read_box_reusing(region, None)
    }

    fn read_box_reusing(&self, region: &Region, spare: Option<Block>) -> Result<Block> {
        check_region(
            &self.path.display().to_string(),
            &self.meta.shape,
            region,
            None,
        )?;
        with_dtype!(self.meta.dtype, T => {
            let view = ArrayViewD::<T>::view_npy(&self.map)
                .map_err(|e| Error::bad_file(&self.path, e.to_string()))?;
            let src = view.slice(slice_info(region).as_slice());
            let part = match spare
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
            };
            Ok(T::into_block(part))
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
        Ok(NpyWriter {
            file,
            data_offset,
            shape: spec.shape.clone(),
            dtype: spec.dtype,
            path: path.to_path_buf(),
        })
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
        check_write(
            &self.path.display().to_string(),
            &self.shape,
            self.dtype,
            region,
            block,
        )?;
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
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not numpy at all").unwrap();
        let e = NpyReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("bad.npy") && e.contains("magic"), "{e}");
    }
}
