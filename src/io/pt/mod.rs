//! PyTorch `.pt` files: what `torch.save` writes (the zip format of torch >= 1.6) as arrays.
//!
//! `x.pt` is a file holding one tensor; `x.pt:key` names a tensor in a dict (a state dict, an
//! `OrderedDict`) or, by its index, in a list or tuple. Reading maps the file and reads the
//! pickle as data ([`pickle`]; nothing in it is run): every tensor dtype tessera has, `bool`
//! as uint8, float16 and bfloat16 as float32 (exactly), strided views and storage offsets.
//! A contiguous tensor of a native type is used in place, like a `.npy`. Legacy files (torch <
//! 1.6, not zip) and compressed records are refused with the reason.
//!
//! Writing makes a file that `torch.load(path, weights_only=True)` returns as a plain tensor
//! (or a one-entry dict for `x.pt:key`) of the array's dtype and shape; see [`archive`] for how
//! several ranks write one.

pub mod archive;
pub mod pickle;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Map, Value as Json};

use self::pickle::{Tensor, Value};
use super::npy::NpyWriter;
use super::{check_read, ArrayMeta, ArrayReader, ArrayWriter, Block, CreateSpec, DType, Element};
use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};
use crate::grid::Region;
use crate::with_dtype;

/// How a storage's elements become tessera's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stored {
    /// The same bytes as tessera's type.
    Native(DType),
    /// torch.bool: one byte, read as uint8 0/1.
    Bool,
    /// IEEE half, read as float32.
    Half,
    /// bfloat16, read as float32.
    BFloat16,
}

impl Stored {
    fn of(torch_dtype: &str) -> Option<Stored> {
        Some(match torch_dtype {
            "bool" => Stored::Bool,
            "float16" | "half" => Stored::Half,
            "bfloat16" => Stored::BFloat16,
            "uint8" => Stored::Native(DType::U8),
            "int8" => Stored::Native(DType::I8),
            "int16" | "short" => Stored::Native(DType::I16),
            "int32" | "int" => Stored::Native(DType::I32),
            "int64" | "long" => Stored::Native(DType::I64),
            "uint16" => Stored::Native(DType::U16),
            "uint32" => Stored::Native(DType::U32),
            "uint64" => Stored::Native(DType::U64),
            "float32" | "float" => Stored::Native(DType::F32),
            "float64" | "double" => Stored::Native(DType::F64),
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Stored::Native(d) => d.size(),
            Stored::Bool => 1,
            Stored::Half | Stored::BFloat16 => 2,
        }
    }

    /// The type tessera reads it as.
    fn dtype(self) -> DType {
        match self {
            Stored::Native(d) => d,
            Stored::Bool => DType::U8,
            Stored::Half | Stored::BFloat16 => DType::F32,
        }
    }
}

/// Reads one tensor of a `.pt` file through a read-only memory map.
pub struct PtReader {
    map: Mmap,
    meta: ArrayMeta,
    path: PathBuf,
    stored: Stored,
    /// The storage record's bytes in the file.
    storage: std::ops::Range<usize>,
    offset: u64,
    stride: Vec<u64>,
}

impl PtReader {
    /// # Errors
    /// A file that is not a `.pt` torch >= 1.6 writes, a key it does not hold, a dtype tessera
    /// cannot read, or a tensor reaching past its storage; each naming the file.
    pub fn open(path: &Path, key: Option<&str>) -> Result<Self> {
        let file = File::open(path).at(path)?;
        // SAFETY: read-only map of an input tessera never writes while reading.
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let bad = |m: String| Error::bad_file(path, m);
        check_magic(&map).map_err(bad)?;
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&map[..])).map_err(|e| {
            bad(format!(
                "not a readable zip archive ({e}); is it truncated?"
            ))
        })?;
        let (folder, value) = load_pickle(&mut zip).map_err(bad)?;
        let tensor = select(value, key).map_err(bad)?;
        let stored = Stored::of(&tensor.dtype).ok_or_else(|| {
            bad(format!(
                "tensor dtype {} is not supported (bool, uint8..uint64, int8..int64, float16, bfloat16, float32, float64)",
                tensor.dtype
            ))
        })?;
        let storage = storage_range(&mut zip, &folder, &tensor, stored, map.len()).map_err(bad)?;
        if stored != Stored::Native(stored.dtype()) {
            tracing::info!(
                "{}: {} tensor read as {}",
                path.display(),
                tensor.dtype,
                stored.dtype().name()
            );
        }
        let meta = ArrayMeta::contiguous(tensor.size.clone(), stored.dtype());
        Ok(PtReader {
            map,
            meta,
            path: path.to_path_buf(),
            stored,
            storage,
            offset: tensor.offset,
            stride: tensor.stride,
        })
    }

    /// The tensor's strides when it is laid out in C order (size-1 axes may have any stride).
    fn is_c_contiguous(&self) -> bool {
        let mut expected = 1u64;
        for (&n, &s) in self.meta.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }

    /// Element `i` of the storage as `T` (converting bool, half and bfloat16).
    fn element<T: Element>(&self, bytes: &[u8], i: u64) -> T {
        let size = self.stored.size();
        let at = i as usize * size;
        let b = &bytes[at..at + size];
        let as_f32 = |v: f32| num_traits::cast::<f32, T>(v).expect("read as float32");
        match self.stored {
            Stored::Native(_) => bytemuck::pod_read_unaligned(b),
            Stored::Bool => num_traits::cast::<u8, T>(u8::from(b[0] != 0)).expect("read as u8"),
            Stored::Half => as_f32(half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            Stored::BFloat16 => as_f32(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        }
    }

    /// The region's elements in C order, gathered through the tensor's strides.
    fn gather<T: Element>(&self, region: &Region) -> Vec<T> {
        let bytes = &self.map[self.storage.clone()];
        let nd = region.shape.len();
        let mut out = Vec::with_capacity(region.shape.iter().product::<u64>() as usize);
        if nd == 0 {
            out.push(self.element(bytes, self.offset));
            return out;
        }
        let ranges = region.ranges();
        let (last, last_stride) = (&ranges[nd - 1], self.stride[nd - 1]);
        crate::grid::for_each_index(&ranges[..nd - 1], |idx| {
            let row: u64 = self.offset
                + idx
                    .iter()
                    .zip(&self.stride)
                    .map(|(&i, &s)| i * s)
                    .sum::<u64>();
            for x in last.clone() {
                out.push(self.element(bytes, row + x * last_stride));
            }
        });
        out
    }
}

fn check_magic(map: &[u8]) -> std::result::Result<(), String> {
    if map.starts_with(b"PK\x03\x04") {
        return Ok(());
    }
    // The legacy format is a pickle stream of its own: protocol 2 and a magic number.
    if map.starts_with(&[0x80, 0x02]) || map.starts_with(&[0x80, 0x04]) {
        return Err("a legacy torch.save file (torch < 1.6, not zip); load and save it again with a newer torch".into());
    }
    Err("not a .pt file (torch.save's zip format starts with PK\\x03\\x04)".into())
}

type Zip<'a> = zip::ZipArchive<std::io::Cursor<&'a [u8]>>;

/// The archive's folder (`archive/`) and its pickled object.
fn load_pickle(zip: &mut Zip<'_>) -> std::result::Result<(String, Value), String> {
    let name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or("no data.pkl record: not a torch.save archive")?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut zip.by_name(&name).map_err(|e| format!("{name}: {e}"))?,
        &mut bytes,
    )
    .map_err(|e| format!("{name}: {e} (the file is damaged)"))?;
    let value = pickle::load(&bytes).map_err(|m| format!("{name}: {m}"))?;
    let folder = name.trim_end_matches("data.pkl").to_string();
    Ok((folder, value))
}

/// The tensor at `key` of the pickled object.
fn select(value: Value, key: Option<&str>) -> std::result::Result<Tensor, String> {
    let describe = |v: &Value| match v {
        Value::Tensor(t) => format!("a tensor of shape {:?}", t.size),
        Value::Opaque(name) => format!("an object tessera does not read ({name})"),
        other => format!("a {}", kind(other)),
    };
    match (value, key) {
        (Value::Tensor(t), None) => Ok(t),
        (Value::Tensor(_), Some(k)) => Err(format!(
            "holds one tensor, not a dict or list: drop ':{k}' from the address"
        )),
        (Value::Dict(items), None) => Err(format!(
            "holds a dict; name the tensor: file.pt:KEY (its tensors: {})",
            tensor_keys(&items).join(", ")
        )),
        (Value::List(items) | Value::Tuple(items), None) => Err(format!(
            "holds a list of {}; name the tensor by its index: file.pt:0",
            items.len()
        )),
        (Value::Dict(items), Some(k)) => {
            let keys = tensor_keys(&items).join(", ");
            let found = items.into_iter().find(|(name, _)| match name {
                Value::Str(s) => s == k,
                Value::Int(i) => i.to_string() == k,
                _ => false,
            });
            match found {
                Some((_, Value::Tensor(t))) => Ok(t),
                Some((_, other)) => Err(format!(
                    "key {k:?} holds {}, not a tensor",
                    describe(&other)
                )),
                None => Err(format!("no key {k:?} (its tensors: {keys})")),
            }
        }
        (Value::List(items) | Value::Tuple(items), Some(k)) => {
            let n = items.len();
            match k
                .parse::<usize>()
                .ok()
                .and_then(|i| items.into_iter().nth(i))
            {
                Some(Value::Tensor(t)) => Ok(t),
                Some(other) => Err(format!("item {k} holds {}, not a tensor", describe(&other))),
                None => Err(format!("no item {k:?} in a list of {n}")),
            }
        }
        (other, _) => Err(format!("holds {}, not a tensor", describe(&other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global name",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::Opaque(_) => "object",
    }
}

fn tensor_keys(items: &[(Value, Value)]) -> Vec<String> {
    let keys: Vec<String> = items
        .iter()
        .filter(|(_, v)| matches!(v, Value::Tensor(_)))
        .map(|(k, _)| match k {
            Value::Str(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    if keys.is_empty() {
        vec!["none".into()]
    } else {
        keys
    }
}

/// Where the tensor's storage lies in the file, checked to hold every element the tensor
/// reaches.
fn storage_range(
    zip: &mut Zip<'_>,
    folder: &str,
    t: &Tensor,
    stored: Stored,
    file_len: usize,
) -> std::result::Result<std::ops::Range<usize>, String> {
    let name = format!("{folder}data/{}", t.storage.key);
    let index = zip
        .index_for_name(&name)
        .ok_or_else(|| format!("the storage record {name} is missing"))?;
    let entry = zip
        .by_index_raw(index)
        .map_err(|e| format!("{name}: {e}"))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(format!(
            "{name} is compressed ({}); torch.save stores tensors uncompressed: save it again with torch",
            entry.compression()
        ));
    }
    let start = entry
        .data_start()
        .ok_or_else(|| format!("{name}: no data offset"))?;
    let len = entry.size();
    let range = start
        .checked_add(len)
        .and_then(|end| Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
        .filter(|r| r.end <= file_len)
        .ok_or_else(|| format!("{name} reaches past the end of the file (truncated?)"))?;
    let size = stored.size() as u64;
    // The last element the tensor reaches, +1 (none when an axis is empty).
    let reach = if t.size.contains(&0) {
        Some(0)
    } else {
        t.size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| {
                (n - 1).checked_mul(s).and_then(|d| acc.checked_add(d))
            })
            .and_then(|last| last.checked_add(1))
    };
    match reach.and_then(|n| n.checked_mul(size)) {
        Some(bytes) if bytes <= len => Ok(range),
        _ => Err(format!(
            "the tensor (shape {:?}, stride {:?}, offset {}) reaches past its storage {name} of {len} bytes",
            t.size, t.stride, t.offset
        )),
    }
}

impl ArrayReader for PtReader {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    /// A contiguous tensor of a native type is sliced from the map as a `.npy` is; any other
    /// (a view, a converted type) is gathered element by element through its strides.
    fn read_box_reusing(&self, region: &Region, spare: Option<Block>) -> Result<Block> {
        check_read(&self.path, &self.meta.shape, region)?;
        with_dtype!(self.meta.dtype, T => {
            let part = match crate::io::mapped_elements::<T>(self) {
                Some(values) => super::npy::box_of(values, &self.meta.shape, region, spare),
                None => ndarray::ArrayD::from_shape_vec(region.shape_usize(), self.gather::<T>(region))
                    .expect("gathered the region's elements"),
            };
            Ok(T::into_block(part))
        })
    }

    fn mapped_bytes(&self) -> Option<&[u8]> {
        if !matches!(self.stored, Stored::Native(_)) || !self.is_c_contiguous() {
            return None;
        }
        let size = self.stored.size() as u64;
        let n: u64 = self.meta.shape.iter().product();
        let start = self.storage.start + usize::try_from(self.offset * size).ok()?;
        self.map.get(start..start + usize::try_from(n * size).ok()?)
    }
}

/// The pickle of one C-order tensor of `dtype` and `shape` (in a one-entry dict under `key`),
/// as `torch.save` writes it.
fn tensor_pickle(dtype: DType, shape: &[u64], key: Option<&str>) -> Vec<u8> {
    let mut w = pickle::Writer::new();
    if let Some(k) = key {
        w.op(pickle::EMPTY_DICT);
        w.str(k);
    }
    // torch writes uint16/32/64 through an untyped storage (numel in bytes) and names the
    // dtype; the others through the typed storage classes.
    let typed = pickle::storage_class(dtype.name());
    let numel: u64 = shape.iter().product();
    w.global(
        "torch._utils",
        if typed.is_some() {
            "_rebuild_tensor_v2"
        } else {
            "_rebuild_tensor_v3"
        },
    );
    w.op(pickle::MARK);
    w.op(pickle::MARK);
    w.str("storage");
    match typed {
        Some(class) => w.global("torch", class),
        None => w.global("torch.storage", "UntypedStorage"),
    }
    w.str("0");
    w.str("cpu");
    w.int(if typed.is_some() {
        numel
    } else {
        numel * dtype.size() as u64
    });
    w.op(pickle::TUPLE);
    w.op(pickle::BINPERSID);
    w.int(0);
    w.int_tuple(shape);
    let mut stride = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1] * shape[i + 1].max(1);
    }
    w.int_tuple(&stride);
    w.bool(false);
    w.global("collections", "OrderedDict");
    w.op(pickle::MARK);
    w.op(pickle::TUPLE);
    w.op(pickle::REDUCE);
    if typed.is_none() {
        w.global("torch", dtype.name());
    }
    w.op(pickle::TUPLE);
    w.op(pickle::REDUCE);
    if key.is_some() {
        w.op(pickle::SETITEM);
    }
    w.finish()
}

/// Writes a `.pt` file: rank 0 lays out the archive up to the tensor and sizes the file, every
/// rank writes its boxes in place (as for `.npy`), and the archive is completed when the output
/// is published ([`archive::finalize`]).
pub struct PtWriter {
    inner: NpyWriter,
}

impl PtWriter {
    /// # Errors
    /// A failure creating the file, or (on resume) a staged file that is not this run's.
    pub fn create(
        path: &Path,
        key: Option<&str>,
        spec: &CreateSpec,
        comm: &dyn Comm,
        resume: bool,
    ) -> Result<Self> {
        let data_len = spec.shape.iter().product::<u64>() * spec.dtype.size() as u64;
        let layout = archive::layout(&tensor_pickle(spec.dtype, &spec.shape, key), data_len);
        let mut result = Ok(());
        if comm.is_root() {
            result = lay_out(path, &layout, resume && path.exists());
        }
        if let Some(rank) = comm.any_failed(result.is_err()) {
            result?;
            return Err(Error::PeerFailed { rank });
        }
        let file = OpenOptions::new().write(true).open(path).at(path)?;
        Ok(PtWriter {
            inner: NpyWriter::at(file, layout.data_offset, spec, path),
        })
    }
}

/// Writes `layout`'s prefix and sizes the file to hold the tensor. A resumed file keeps its
/// tensor bytes, and must have been laid out the same way.
fn lay_out(path: &Path, layout: &archive::Layout, resume: bool) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let mut file = if resume {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .at(path)?;
        let mut head = vec![0u8; layout.prefix.len()];
        let same = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).is_ok()
            && same_but_crc(&head, layout);
        if !same {
            return Err(Error::bad_file(
                path,
                "an interrupted run left a .pt laid out for another tensor; start over with --overwrite",
            ));
        }
        file
    } else {
        File::create(path).at(path)?
    };
    file.write_all(&layout.prefix).at(path)?;
    file.set_len(layout.data_offset + layout.data_len).at(path)
}

/// `head` is `layout`'s prefix but perhaps for the storage's CRC, which [`archive::finalize`]
/// fills in.
fn same_but_crc(head: &[u8], layout: &archive::Layout) -> bool {
    let crc = layout.storage_header + 14..layout.storage_header + 18;
    head.len() == layout.prefix.len()
        && head
            .iter()
            .zip(&layout.prefix)
            .enumerate()
            .all(|(i, (a, b))| a == b || crc.contains(&i))
}

impl ArrayWriter for PtWriter {
    fn write_box(&self, part: Option<(&Region, &Block)>) -> Result<()> {
        self.inner.write_box(part)
    }

    fn set_attributes(&self, _attributes: &Map<String, Json>) -> Result<()> {
        // A tensor file has no attributes; the run report beside it keeps the provenance.
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
