//! Zarr (v3 written, v2 and v3 read) through `zarrs` on a filesystem store.
//!
//! Writers never share a chunk: callers hand `write_box` boxes made of whole write blocks
//! (chunks, or whole shards when sharded), which zarrs encodes without reading anything back.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayD;
use serde_json::{Map, Value};
use zarrs::array::{codec, data_type, Array, ArrayBuilder, ArraySubset, DataType};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::GroupBuilder;
use zarrs::storage::byte_range::ByteRangeIterator;
use zarrs::storage::{
    Bytes, MaybeBytesIterator, OffsetBytesIterator, ReadableStorageTraits, StorageError, StoreKey,
    StorePrefix, WritableStorageTraits,
};

use super::{
    check_read, check_write, ArrayMeta, ArrayReader, ArrayWriter, Block, Codec, CreateSpec, DType,
};
use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};
use crate::grid::Region;
use crate::{with_block, with_dtype};

fn zarr_err(store: &Path, node: &str, e: impl std::fmt::Display) -> Error {
    let place = if node.is_empty() {
        store.display().to_string()
    } else {
        format!("{}/{node}", store.display())
    };
    Error::Zarr {
        store: place,
        message: e.to_string(),
    }
}

/// tessera writes its own provenance; zarrs' `_zarrs` attribute would only add noise (and
/// make outputs differ between zarrs versions).
fn configure_zarrs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        zarrs::config::global_config_mut().set_include_zarrs_metadata(false);
    });
}

fn open_store(store: &Path) -> Result<Arc<FilesystemStore>> {
    configure_zarrs();
    FilesystemStore::new(store)
        .map(Arc::new)
        .map_err(|e| zarr_err(store, "", e))
}

/// The store the writer uses: zarrs' filesystem store for everything except whole-key writes,
/// which are plain writes without zarrs' `fsync` per key. Syncing every chunk made convert
/// bound by disk latency (about 1 ms per chunk file here); like `cp` and zarr-python, tessera
/// leaves flushing to the OS. A killed process loses nothing its journal records (the page
/// cache survives it); after a machine crash, rerun with `--overwrite`.
pub struct ChunkFileStore {
    inner: FilesystemStore,
    base: PathBuf,
}

impl ChunkFileStore {
    fn new(base: &Path) -> Result<Self> {
        configure_zarrs();
        Ok(ChunkFileStore {
            inner: FilesystemStore::new(base).map_err(|e| zarr_err(base, "", e))?,
            base: base.to_path_buf(),
        })
    }
}

impl ReadableStorageTraits for ChunkFileStore {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> std::result::Result<MaybeBytesIterator<'a>, StorageError> {
        self.inner.get_partial_many(key, byte_ranges)
    }
    fn size_key(&self, key: &StoreKey) -> std::result::Result<Option<u64>, StorageError> {
        self.inner.size_key(key)
    }
    fn supports_get_partial(&self) -> bool {
        self.inner.supports_get_partial()
    }
}

impl WritableStorageTraits for ChunkFileStore {
    fn set(&self, key: &StoreKey, value: Bytes) -> std::result::Result<(), StorageError> {
        let path = self.base.join(key.as_str());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::io::safety::write_pieces(&path, &[&value])?;
        Ok(())
    }
    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> std::result::Result<(), StorageError> {
        self.inner.set_partial_many(key, offset_values)
    }
    fn erase(&self, key: &StoreKey) -> std::result::Result<(), StorageError> {
        self.inner.erase(key)
    }
    fn erase_prefix(&self, prefix: &StorePrefix) -> std::result::Result<(), StorageError> {
        self.inner.erase_prefix(prefix)
    }
    fn supports_set_partial(&self) -> bool {
        self.inner.supports_set_partial()
    }
}

/// `name` inside the Zarr node `node` (`""` is the store's root).
pub fn child_node(node: &str, name: &str) -> String {
    if node.is_empty() {
        name.to_string()
    } else {
        format!("{node}/{name}")
    }
}

fn node_path(node: &str) -> String {
    format!("/{node}")
}

/// Reads a Zarr array.
pub struct ZarrReader {
    array: Array<FilesystemStore>,
    meta: ArrayMeta,
    /// The chunk shape, when every chunk file holds its elements as they are in memory
    /// ([`raw_chunk_shape`]): such chunks are read by [`ZarrReader::read_raw`], not zarrs.
    raw_chunks: Option<Vec<u64>>,
    store: PathBuf,
    node: String,
}

impl ZarrReader {
    /// Opens the array at `node` of the store at `store`.
    ///
    /// # Errors
    /// No array there (missing, or a group), corrupt metadata, or an unsupported data type.
    pub fn open(store: &Path, node: &str) -> Result<Self> {
        let dir = store.join(node);
        let v3 = dir.join("zarr.json");
        let shown = if node.is_empty() {
            store.display().to_string()
        } else {
            format!("{}/{node}", store.display())
        };
        if v3.is_file() {
            let text = std::fs::read_to_string(&v3).map_err(|e| Error::Io {
                path: v3.clone(),
                source: e,
            })?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| Error::bad_file(&v3, format!("corrupt Zarr metadata: {e}")))?;
            if json.get("node_type").and_then(Value::as_str) == Some("group") {
                let children = list_children(&dir);
                return Err(Error::address(
                    shown,
                    format!(
                        "is a Zarr group, not an array (its children: {})",
                        if children.is_empty() {
                            "none".into()
                        } else {
                            children.join(", ")
                        }
                    ),
                ));
            }
        } else if !dir.join(".zarray").is_file() {
            return Err(Error::address(
                shown,
                if dir.exists() {
                    "is not a Zarr array (no zarr.json)"
                } else {
                    "does not exist"
                },
            ));
        }
        let storage = open_store(store)?;
        let array = Array::open(storage, &node_path(node)).map_err(|e| {
            if v3.is_file() {
                Error::bad_file(&v3, format!("corrupt Zarr metadata: {e}"))
            } else {
                zarr_err(store, node, e)
            }
        })?;
        let meta = describe(&array).map_err(|m| Error::bad_file(dir.join("zarr.json"), m))?;
        let raw_chunks = serde_json::to_value(array.metadata())
            .ok()
            .and_then(|json| raw_chunk_shape(&json));
        Ok(ZarrReader {
            array,
            meta,
            raw_chunks,
            store: store.to_path_buf(),
            node: node.to_string(),
        })
    }
}

fn list_children(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("zarr.json").is_file() || e.path().join(".zarray").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads shape, dtype, chunking and codecs from an array's metadata.
fn describe(array: &Array<FilesystemStore>) -> std::result::Result<ArrayMeta, String> {
    let json = serde_json::to_value(array.metadata()).map_err(|e| e.to_string())?;
    let dtype = match json.get("data_type").or_else(|| json.get("dtype")) {
        Some(Value::String(name)) => {
            DType::from_name(name).or_else(|| numpy_typestr(name)).ok_or_else(|| {
                format!("data type {name} is not supported (expected one of u8..u64, i8..i64, f32, f64)")
            })?
        }
        other => return Err(format!("data type {other:?} is not supported")),
    };
    let grid_chunks = json
        .pointer("/chunk_grid/configuration/chunk_shape")
        .or_else(|| json.get("chunks"))
        .and_then(|v| serde_json::from_value::<Vec<u64>>(v.clone()).ok());
    let mut codecs = Vec::new();
    let mut chunks = grid_chunks.clone();
    let mut shards = None;
    let codec_list = json
        .get("codecs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &codec_list {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        if name == "sharding_indexed" {
            shards = grid_chunks.clone();
            chunks = c
                .pointer("/configuration/chunk_shape")
                .and_then(|v| serde_json::from_value(v.clone()).ok());
            let inner: Vec<String> = c
                .pointer("/configuration/codecs")
                .and_then(Value::as_array)
                .map(|l| l.iter().map(codec_text).collect())
                .unwrap_or_default();
            codecs.push(format!("sharding_indexed[{}]", inner.join(", ")));
        } else {
            codecs.push(codec_text(c));
        }
    }
    if let Some(Value::Object(comp)) = json.get("compressor") {
        codecs.push(
            comp.get("id")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
        );
    }
    let dimension_names = json
        .get("dimension_names")
        .and_then(|v| serde_json::from_value::<Vec<Option<String>>>(v.clone()).ok())
        .map(|names| names.into_iter().map(Option::unwrap_or_default).collect());
    Ok(ArrayMeta {
        shape: array.shape().to_vec(),
        dtype,
        chunks,
        shards,
        codecs,
        dimension_names,
        attributes: array.attributes().clone(),
    })
}

fn codec_text(c: &Value) -> String {
    let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
    match name {
        "zstd" => format!(
            "zstd(level={})",
            c.pointer("/configuration/level").unwrap_or(&Value::Null)
        ),
        "gzip" => format!(
            "gzip(level={})",
            c.pointer("/configuration/level").unwrap_or(&Value::Null)
        ),
        "blosc" => format!(
            "blosc({}, clevel={})",
            c.pointer("/configuration/cname")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            c.pointer("/configuration/clevel").unwrap_or(&Value::Null)
        ),
        "bytes" => format!(
            "bytes({})",
            c.pointer("/configuration/endian")
                .and_then(Value::as_str)
                .unwrap_or("-")
        ),
        other => other.to_string(),
    }
}

/// Zarr v2 numpy type strings (`<u2`, `|u1`, `<f4`); only little-endian or byte-sized.
fn numpy_typestr(s: &str) -> Option<DType> {
    let (order, rest) = s.split_at(1);
    if order == ">" && !rest.ends_with('1') {
        return None;
    }
    DType::from_numpy_code(rest)
}

impl ArrayReader for ZarrReader {
    fn meta(&self) -> &ArrayMeta {
        &self.meta
    }

    fn read_box_reusing(&self, region: &Region, spare: Option<Block>) -> Result<Block> {
        check_read(&self.store, &self.meta.shape, region)?;
        let subset = ArraySubset::new_with_ranges(&region.ranges());
        with_dtype!(self.meta.dtype, T => {
            // Decoded straight into the block's memory: retrieving an ndarray would decode
            // into bytes and copy them into a second fresh allocation.
            let mut a = spare
                .filter(|b| b.shape() == region.shape)
                .and_then(|b| b.into_array::<T>())
                .filter(|a| a.is_standard_layout())
                .unwrap_or_else(|| ArrayD::<T>::zeros(region.shape_usize()));
            let shape = region.shape.clone();
            let bytes: &mut [u8] =
                bytemuck::cast_slice_mut(a.as_slice_mut().expect("C-order checked above"));
            if let Some(chunks) = &self.raw_chunks {
                self.read_raw(chunks, region, std::mem::size_of::<T>(), bytes)?;
                return Ok(<T as super::Element>::into_block(a));
            }
            let cells = unsafe_cell_slice::UnsafeCellSlice::new(bytes);
            // SAFETY: one view over the whole buffer, so no two views overlap.
            let mut view = unsafe {
                zarrs::array::ArrayBytesFixedDisjointView::new(
                    cells,
                    std::mem::size_of::<T>(),
                    &shape,
                    ArraySubset::new_with_shape(shape.clone()),
                )
            }
            .map_err(|e| zarr_err(&self.store, &self.node, e))?;
            self.array
                .retrieve_array_subset_into(
                    &subset,
                    zarrs::array::ArrayBytesDecodeIntoTarget::Fixed(&mut view),
                )
                .map_err(|e| self.read_error(&subset, e))?;
            Ok(<T as super::Element>::into_block(a))
        })
    }
}

/// What [`ZarrReader::read_raw`] reads for every chunk: the array's chunk shape, the box
/// (and its end), the element size, the box's and a chunk's C-order strides (in elements), a
/// chunk file's size, and the fill value's bytes.
struct RawGeometry<'a> {
    chunks: &'a [u64],
    region: &'a Region,
    end: &'a [u64],
    size: usize,
    box_strides: Vec<usize>,
    chunk_strides: Vec<usize>,
    chunk_bytes: usize,
    fill: Vec<u8>,
}

/// The chunk shape of an array whose chunk files hold their elements as they are in this
/// machine's memory: Zarr v3, a regular grid, the `bytes` codec alone (little-endian, on a
/// little-endian machine), no storage transformer.
fn raw_chunk_shape(json: &Value) -> Option<Vec<u64>> {
    let codecs = json.get("codecs")?.as_array()?;
    let [only] = codecs.as_slice() else {
        return None;
    };
    let endian = only
        .pointer("/configuration/endian")
        .and_then(Value::as_str);
    let raw = cfg!(target_endian = "little")
        && json.get("zarr_format").and_then(Value::as_u64) == Some(3)
        && json
            .get("storage_transformers")
            .and_then(Value::as_array)
            .is_none_or(|t| t.is_empty())
        && json.pointer("/chunk_grid/name").and_then(Value::as_str) == Some("regular")
        && only.get("name").and_then(Value::as_str) == Some("bytes")
        && matches!(endian, None | Some("little"));
    let chunks: Vec<u64> = serde_json::from_value(
        json.pointer("/chunk_grid/configuration/chunk_shape")?
            .clone(),
    )
    .ok()?;
    (raw && !chunks.is_empty()).then_some(chunks)
}

impl ZarrReader {
    /// Reads `region` of an array with raw chunks (`chunks`, elements of `size` bytes) into
    /// `dst` (C order), chunk by chunk ([`Self::read_raw_chunk`]); a chunk with no file is the
    /// fill value, as Zarr defines. The same bytes as zarrs' partial decoding, which reads
    /// every row of a partial chunk on its own.
    fn read_raw(&self, chunks: &[u64], region: &Region, size: usize, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let end = region.end();
        let touched: Vec<std::ops::Range<u64>> = (0..chunks.len())
            .map(|a| region.start[a] / chunks[a]..(end[a] - 1) / chunks[a] + 1)
            .collect();
        let chunk_shape: Vec<usize> = chunks.iter().map(|&c| c as usize).collect();
        let geometry = RawGeometry {
            chunks,
            region,
            end: &end,
            size,
            box_strides: crate::grid::row_major_strides(&region.shape_usize()),
            chunk_strides: crate::grid::row_major_strides(&chunk_shape),
            chunk_bytes: chunk_shape.iter().product::<usize>() * size,
            fill: self.array.fill_value().as_ne_bytes().to_vec(),
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut failed = None;
        crate::grid::for_each_index(&touched, |chunk| {
            if failed.is_none() {
                failed = self.read_raw_chunk(&geometry, chunk, &mut buf, dst).err();
            }
        });
        failed.map_or(Ok(()), Err)
    }

    /// [`Self::read_raw`]'s part of the box in one chunk. The part is copied in runs that
    /// are contiguous both in the chunk file and in the box: a row, or several axes' worth
    /// where the part spans the chunk and the box along every axis after the first. A part
    /// that is one run (whole chunks of a box that spans them, as a stitch reads patches) is
    /// read from the file straight into the box; otherwise the chunk's span is read into `buf`
    /// with one positioned read and its runs copied.
    fn read_raw_chunk(
        &self,
        g: &RawGeometry<'_>,
        chunk: &[u64],
        buf: &mut Vec<u8>,
        dst: &mut [u8],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let nd = chunk.len();
        let corner: Vec<u64> = (0..nd).map(|a| chunk[a] * g.chunks[a]).collect();
        let lo: Vec<u64> = (0..nd).map(|a| g.region.start[a].max(corner[a])).collect();
        let hi: Vec<u64> = (0..nd)
            .map(|a| g.end[a].min(corner[a] + g.chunks[a]))
            .collect();
        let in_chunk = |at: &[u64]| -> usize {
            (0..nd)
                .map(|a| (at[a] - corner[a]) as usize * g.chunk_strides[a])
                .sum::<usize>()
                * g.size
        };
        let in_box = |at: &[u64]| -> usize {
            (0..nd)
                .map(|a| (at[a] - g.region.start[a]) as usize * g.box_strides[a])
                .sum::<usize>()
                * g.size
        };
        // The first axis of a run: every axis after it is spanned whole by the part, in the
        // chunk and in the box alike.
        let mut first = nd - 1;
        while first > 0
            && hi[first] - lo[first] == g.chunks[first]
            && hi[first] - lo[first] == g.region.shape[first]
        {
            first -= 1;
        }
        let run = (first..nd)
            .map(|a| (hi[a] - lo[a]) as usize)
            .product::<usize>()
            * g.size;
        let runs: Vec<std::ops::Range<u64>> = (0..nd)
            .map(|a| {
                if a < first {
                    lo[a]..hi[a]
                } else {
                    lo[a]..lo[a] + 1
                }
            })
            .collect();
        let path = self.store.join(self.array.chunk_key(chunk).as_str());
        let file = match std::fs::File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::grid::for_each_index(&runs, |at| {
                    let to = in_box(at);
                    for v in dst[to..to + run].chunks_exact_mut(g.size) {
                        v.copy_from_slice(&g.fill);
                    }
                });
                return Ok(());
            }
            Err(e) => return Err(Error::Io { path, source: e }),
            Ok(file) => file,
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != g.chunk_bytes as u64 {
            let key = self.array.chunk_key_encoding().encode(chunk);
            return Err(zarr_err(
                &self.store,
                &self.node,
                format!(
                    "chunk {} (file {}): {len} bytes where an uncompressed chunk has {}",
                    key.as_str(),
                    path.display(),
                    g.chunk_bytes
                ),
            ));
        }
        let last: Vec<u64> = hi.iter().map(|&h| h - 1).collect();
        let span = in_chunk(&lo)..in_chunk(&last) + g.size;
        if first == 0 {
            // One run, as long as the span: no copy through `buf`.
            let to = in_box(&lo);
            return file
                .read_exact_at(&mut dst[to..to + run], span.start as u64)
                .map_err(|e| Error::Io { path, source: e });
        }
        buf.resize(span.len(), 0);
        file.read_exact_at(buf, span.start as u64)
            .map_err(|e| Error::Io { path, source: e })?;
        crate::grid::for_each_index(&runs, |at| {
            let (to, from) = (in_box(at), in_chunk(at) - span.start);
            dst[to..to + run].copy_from_slice(&buf[from..from + run]);
        });
        Ok(())
    }

    /// A failed read, naming the chunk (or shard) key and its file when one chunk is to blame:
    /// zarrs' decode errors say what failed but not where, and a user with a corrupt chunk
    /// needs to know which file to restore.
    fn read_error(&self, subset: &ArraySubset, e: impl std::fmt::Display) -> Error {
        match self.failing_chunk(subset) {
            Some((key, file)) => zarr_err(
                &self.store,
                &self.node,
                format!("chunk {key} (file {}): {e}", file.display()),
            ),
            None => zarr_err(&self.store, &self.node, e),
        }
    }

    /// The first chunk of `subset` that cannot be read on its own: (key inside the array,
    /// file). Only called after a read failed, so reading chunk by chunk costs nothing in
    /// the common case.
    fn failing_chunk(&self, subset: &ArraySubset) -> Option<(String, PathBuf)> {
        let chunks = self.array.chunks_in_array_subset(subset).ok()??;
        let bad = chunks.indices().into_iter().find(|chunk| {
            self.array
                .retrieve_chunk::<zarrs::array::ArrayBytes<'static>>(chunk)
                .is_err()
        })?;
        let key = self.array.chunk_key_encoding().encode(&bad);
        let file = self.store.join(self.array.chunk_key(&bad).as_str());
        Some((key.as_str().to_string(), file))
    }
}

/// Writes a Zarr v3 array.
pub struct ZarrWriter {
    array: Array<ChunkFileStore>,
    /// The chunk shape, when a chunk's stored bytes are its elements as they are in memory:
    /// no sharding, no compression, and a little-endian machine (the `bytes` codec's order);
    /// such chunks are streamed by `block_sink`.
    raw_chunks: Option<Vec<u64>>,
    shape: Vec<u64>,
    dtype: DType,
    store: PathBuf,
    node: String,
    is_root: bool,
}

fn zarr_data_type(dtype: DType) -> DataType {
    match dtype {
        DType::U8 => data_type::uint8(),
        DType::U16 => data_type::uint16(),
        DType::U32 => data_type::uint32(),
        DType::U64 => data_type::uint64(),
        DType::I8 => data_type::int8(),
        DType::I16 => data_type::int16(),
        DType::I32 => data_type::int32(),
        DType::I64 => data_type::int64(),
        DType::F32 => data_type::float32(),
        DType::F64 => data_type::float64(),
    }
}

fn bytes_codecs(
    codec: Codec,
    dtype: DType,
) -> Result<Vec<Arc<dyn zarrs::array::codec::api::BytesToBytesCodecTraits>>> {
    Ok(match codec {
        Codec::Auto => {
            return Err(Error::parameter(
                "codec",
                "auto reached the Zarr writer unresolved (io::create resolves it: a bug)",
            ))
        }
        Codec::None => vec![],
        Codec::Zstd => vec![Arc::new(codec::ZstdCodec::new(3, false))],
        Codec::Gzip => vec![Arc::new(
            codec::GzipCodec::new(5).map_err(|e| Error::parameter("codec", e.to_string()))?,
        )],
        Codec::Blosc => vec![Arc::new(
            codec::BloscCodec::new(
                codec::bytes_to_bytes::blosc::BloscCompressor::LZ4,
                5u8.try_into()
                    .map_err(|_| Error::parameter("codec", "blosc level"))?,
                None,
                codec::bytes_to_bytes::blosc::BloscShuffleMode::Shuffle,
                Some(dtype.size()),
            )
            .map_err(|e| Error::parameter("codec", e.to_string()))?,
        )],
    })
}

impl ZarrWriter {
    /// Builds the array; rank 0 stores its metadata (and any missing parent groups), then all
    /// ranks wait, so no chunk lands before the metadata.
    ///
    /// # Errors
    /// An invalid spec for Zarr or a store failure.
    pub fn create(
        store: &Path,
        node: &str,
        spec: &CreateSpec,
        comm: &dyn Comm,
        _resume: bool,
    ) -> Result<Self> {
        configure_zarrs();
        let mut builder = with_dtype!(spec.dtype, T => ArrayBuilder::new(
            spec.shape.clone(),
            spec.write_block().to_vec(),
            zarr_data_type(spec.dtype),
            T::default(),
        ));
        if spec.shards.is_some() {
            builder.subchunk_shape(spec.chunks.clone());
            // zarrs places subchunks in a shard in the order they finish encoding unless told
            // otherwise; C order makes shard bytes independent of threads and ranks.
            use zarrs::array::codec::{ShardingCodecOptions, SubchunkWriteOrder};
            builder.codec_specific_options(
                zarrs::array::codec::api::CodecSpecificOptions::default().with_option(
                    ShardingCodecOptions::default()
                        .with_subchunk_write_order(SubchunkWriteOrder::C),
                ),
            );
        }
        if spec.flat_chunk_keys {
            builder.chunk_key_encoding_default_separator(zarrs::array::ChunkKeySeparator::Dot);
        }
        builder.bytes_to_bytes_codecs(bytes_codecs(spec.codec, spec.dtype)?);
        builder.attributes(spec.attributes.clone());
        if let Some(names) = &spec.dimension_names {
            builder.dimension_names(Some(names.clone()));
        }
        let mut result = Ok(());
        if comm.is_root() {
            result = (|| {
                std::fs::create_dir_all(store).map_err(|e| Error::Io {
                    path: store.to_path_buf(),
                    source: e,
                })?;
                let storage = open_store(store)?;
                // Parent groups first, so that zarr-python can walk down to the array.
                let parts: Vec<&str> = node.split('/').filter(|p| !p.is_empty()).collect();
                for depth in 0..parts.len() {
                    let group_path = format!("/{}", parts[..depth].join("/"));
                    let dir = store.join(parts[..depth].join("/"));
                    if !dir.join("zarr.json").is_file() {
                        GroupBuilder::new()
                            .build(storage.clone(), &group_path)
                            .and_then(|g| g.store_metadata().map_err(Into::into))
                            .map_err(|e| zarr_err(store, &group_path, e))?;
                    }
                }
                let array = builder
                    .build(storage, &node_path(node))
                    .map_err(|e| zarr_err(store, node, e))?;
                array.store_metadata().map_err(|e| zarr_err(store, node, e))
            })();
        }
        if let Some(rank) = comm.any_failed(result.is_err()) {
            result?;
            return Err(Error::PeerFailed { rank });
        }
        let storage = Arc::new(ChunkFileStore::new(store)?);
        let array = builder
            .build(storage, &node_path(node))
            .map_err(|e| zarr_err(store, node, e))?;
        let raw =
            spec.shards.is_none() && spec.codec == Codec::None && cfg!(target_endian = "little");
        Ok(ZarrWriter {
            array,
            raw_chunks: raw.then(|| spec.chunks.clone()),
            shape: spec.shape.clone(),
            dtype: spec.dtype,
            store: store.to_path_buf(),
            node: node.to_string(),
            is_root: comm.is_root(),
        })
    }
}

/// The chunk `region` covers, and that chunk's element count, when a sink can stream it: it
/// starts on a chunk and is one whole chunk, or an edge chunk clipped on the first axis only
/// (so its elements in C order are the padded chunk's first ones).
fn streamed_chunk(chunks: &[u64], shape: &[u64], region: &Region) -> Option<(Vec<u64>, u64)> {
    let n = chunks.len();
    let fits = region.start.len() == n
        && region.shape.len() == n
        && region.start.iter().zip(chunks).all(|(s, c)| s % c == 0)
        && region.shape[1..] == chunks[1..]
        && region
            .shape
            .first()
            .zip(chunks.first())
            .is_some_and(|(&r, &c)| r == c || (r < c && region.start[0] + r == shape[0]));
    fits.then(|| {
        let chunk = region
            .start
            .iter()
            .zip(chunks)
            .map(|(s, c)| s / c)
            .collect();
        (chunk, chunks.iter().product())
    })
}

/// A [`RawChunkFile`] gathers appends smaller than this into one write; larger ones (a
/// 128x128 float32 patch is 64 KiB) go to the file as they are, without a copy.
const SINK_BUFFER: usize = 64 << 10;

/// A raw Zarr chunk written as it is made ([`ZarrWriter::block_sink`]).
struct RawChunkFile {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// Bytes still to come, the fill value's padding at the far edge included.
    left: u64,
    all_zero: bool,
}

impl super::BlockSink for RawChunkFile {
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        if bytes.len() as u64 > self.left {
            return Err(Error::parameter(
                "output",
                format!(
                    "{}: {} more bytes than the chunk holds (a bug)",
                    self.path.display(),
                    bytes.len() as u64 - self.left
                ),
            ));
        }
        // Real data stops this at its first non-zero byte.
        self.all_zero = self.all_zero && bytes.iter().all(|&b| b == 0);
        self.left -= bytes.len() as u64;
        // Pieces of a patch or more go straight to the file, smaller ones gather in the buffer.
        bytes
            .chunks(crate::io::safety::WRITE_PIECE)
            .try_for_each(|piece| self.file.write_all(piece))
            .at(&self.path)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        use std::io::Write;
        let zeros = [0u8; 1 << 12];
        while self.left > 0 {
            let n = self.left.min(zeros.len() as u64) as usize;
            self.file.write_all(&zeros[..n]).at(&self.path)?;
            self.left -= n as u64;
        }
        let RawChunkFile {
            file,
            path,
            all_zero,
            ..
        } = *self;
        file.into_inner().map_err(|e| e.into_error()).at(&path)?;
        // zarrs does not store a chunk of nothing but the fill value (`store_empty_chunks`
        // off); neither does this.
        if all_zero {
            std::fs::remove_file(&path).at(&path)?;
        }
        Ok(())
    }
}

impl ArrayWriter for ZarrWriter {
    fn write_box(&self, part: Option<(&Region, &Block)>) -> Result<()> {
        let Some((region, block)) = part else {
            return Ok(());
        };
        check_write(&self.store, &self.shape, self.dtype, region, block)?;
        let subset = ArraySubset::new_with_ranges(&region.ranges());
        // In a write lane the lanes are the parallelism: this box's blocks on this thread.
        let mut options = zarrs::array::CodecOptions::default();
        if super::in_write_lane() {
            options = options.with_concurrent_target(1);
        }
        with_block!(block, a => self.array.store_array_subset_opt(&subset, a, &options))
            .map_err(|e| zarr_err(&self.store, &self.node, e))
    }

    fn streams_blocks(&self) -> bool {
        self.raw_chunks.is_some()
    }

    /// The chunk's file, written in place: a chunk whose elements are only zero bytes is
    /// removed at the end, as zarrs does not store it (directories made for nested keys stay).
    /// An edge chunk may be short on the first axis only (its padding is then the file's
    /// tail).
    fn block_sink(&self, region: &Region) -> Result<Box<dyn super::BlockSink>> {
        let chunk = self
            .raw_chunks
            .as_ref()
            .and_then(|chunks| streamed_chunk(chunks, &self.shape, region));
        let Some((chunk, bytes)) = chunk else {
            return Err(Error::parameter(
                "output",
                format!(
                    "{}: no raw chunk at {} of shape {} (a bug)",
                    self.store.display(),
                    crate::grid::join(&region.start),
                    crate::grid::join(&region.shape)
                ),
            ));
        };
        // Straight into the store, as `ChunkFileStore::set` and zarrs write a chunk: the
        // store is the run's staged output (exec's temporary name, renamed when complete).
        let path = self.store.join(self.array.chunk_key(&chunk).as_str());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        let file = std::fs::File::create(&path).at(&path)?;
        Ok(Box::new(RawChunkFile {
            file: std::io::BufWriter::with_capacity(SINK_BUFFER, file),
            path,
            left: bytes * self.dtype.size() as u64,
            all_zero: true,
        }))
    }

    fn set_attributes(&self, attributes: &Map<String, Value>) -> Result<()> {
        if !self.is_root {
            return Ok(());
        }
        let storage = open_store(&self.store)?;
        let mut array = Array::open(storage, &node_path(&self.node))
            .map_err(|e| zarr_err(&self.store, &self.node, e))?;
        array.attributes_mut().extend(attributes.clone());
        array
            .store_metadata()
            .map_err(|e| zarr_err(&self.store, &self.node, e))
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Stores group metadata with `attributes` at `node` of `store` (replacing the group's
/// attributes). Call on one rank.
///
/// # Errors
/// A store failure.
pub fn write_group(store: &Path, node: &str, attributes: &Map<String, Value>) -> Result<()> {
    let storage = open_store(store)?;
    let mut builder = GroupBuilder::new();
    builder.attributes(attributes.clone());
    builder
        .build(storage, &node_path(node))
        .and_then(|g| g.store_metadata().map_err(Into::into))
        .map_err(|e| zarr_err(store, node, e))
}

/// Whether the directory holds a Zarr array (v3 `zarr.json` with `node_type` "array", or v2
/// `.zarray`): an array cannot hold other nodes.
pub fn is_array(dir: &Path) -> bool {
    if dir.join(".zarray").is_file() {
        return true;
    }
    std::fs::read(dir.join("zarr.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["node_type"] == "array")
}

/// The attributes of the group at `node` of `store`, or `None` when there is no group there.
pub fn group_attributes(store: &Path, node: &str) -> Option<Map<String, Value>> {
    let path = store.join(node).join("zarr.json");
    let json: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if json.get("node_type").and_then(Value::as_str) != Some("group") {
        return None;
    }
    json.get("attributes")
        .and_then(Value::as_object)
        .cloned()
        .or_else(|| Some(Map::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{ArrayWriter, Block, Codec, CreateSpec, DType};

    /// Every file under `dir` with its bytes, by relative path.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn streamed_chunks_equal_zarrs_own_encoding() {
        let dir = tempfile::tempdir().unwrap();
        // 10 x 3 x 4 in chunks of 4: a whole chunk, an all-zero one (not stored), and the
        // short edge chunk of 2 (padded), with nested and flat chunk keys.
        let values: Vec<f32> = (0..120).map(|i| i as f32 * 0.25 - 3.0).collect();
        let mut whole = ndarray::Array3::from_shape_vec((10, 3, 4), values).unwrap();
        whole.slice_mut(ndarray::s![4..8, .., ..]).fill(0.0);
        for flat in [false, true] {
            let spec = CreateSpec {
                flat_chunk_keys: flat,
                shape: vec![10, 3, 4],
                dtype: DType::F32,
                chunks: vec![4, 3, 4],
                shards: None,
                codec: Codec::None,
                dimension_names: None,
                attributes: Map::new(),
            };
            let write = |name: &str, streamed: bool| {
                let store = dir.path().join(format!("{name}-{flat}.zarr"));
                let w = ZarrWriter::create(&store, "", &spec, &crate::comm::Local, false).unwrap();
                assert!(w.streams_blocks());
                for r in [0usize..4, 4..8, 8..10] {
                    let region = Region {
                        start: vec![r.start as u64, 0, 0],
                        shape: vec![(r.end - r.start) as u64, 3, 4],
                    };
                    let part = whole.slice(ndarray::s![r, .., ..]).to_owned();
                    if streamed {
                        let mut sink = w.block_sink(&region).unwrap();
                        // In uneven appends: one value, then the rest.
                        let values = part.as_slice().unwrap();
                        sink.append(bytemuck::cast_slice(&values[..1])).unwrap();
                        sink.append(bytemuck::cast_slice(&values[1..])).unwrap();
                        sink.finish().unwrap();
                    } else {
                        w.write_box(Some((&region, &Block::F32(part.into_dyn()))))
                            .unwrap();
                    }
                }
                Box::new(w).close().unwrap();
                tree(&store)
            };
            let (theirs, ours) = (write("zarrs", false), write("streamed", true));
            assert_eq!(ours, theirs);
            let first = if flat { "c.0.0.0" } else { "c/0/0/0" };
            assert!(ours.iter().any(|(p, _)| p.ends_with(first)));
            assert_eq!(ours.len(), 3, "zarr.json and two chunks: {ours:?}");
        }
    }

    /// Raw chunks read by tessera give zarrs' own decoding, bit for bit, for boxes anywhere
    /// (inside one chunk, across several, at the padded edge chunks, over a chunk left
    /// unstored because it holds only the fill value), with nested and flat keys; a
    /// compressed array is not read raw; a raw chunk of the wrong size is named by key and
    /// file.
    #[test]
    fn raw_chunk_reads_equal_zarrs_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [10usize, 7, 9];
        let mut whole = ndarray::Array3::from_shape_fn(shape, |(z, y, x)| {
            (z * 1000 + y * 37 + x * 3 + 1) as u16
        });
        whole.slice_mut(ndarray::s![4..8, 3..6, 0..4]).fill(0);
        for (flat, codec) in [
            (false, Codec::None),
            (true, Codec::None),
            (false, Codec::Zstd),
        ] {
            let spec = CreateSpec {
                flat_chunk_keys: flat,
                shape: shape.iter().map(|&n| n as u64).collect(),
                dtype: DType::U16,
                chunks: vec![4, 3, 4],
                shards: None,
                codec,
                dimension_names: None,
                attributes: Map::new(),
            };
            let store = dir.path().join(format!("a-{flat}-{codec:?}.zarr"));
            let w = ZarrWriter::create(&store, "", &spec, &crate::comm::Local, false).unwrap();
            let all = Region::whole(&spec.shape);
            w.write_box(Some((&all, &Block::U16(whole.clone().into_dyn()))))
                .unwrap();
            Box::new(w).close().unwrap();
            let raw = ZarrReader::open(&store, "").unwrap();
            assert_eq!(raw.raw_chunks.is_some(), codec == Codec::None, "{codec:?}");
            let mut zarrs = ZarrReader::open(&store, "").unwrap();
            zarrs.raw_chunks = None;
            let mut next = crate::grid::xorshift(0x9e37_79b9_7f4a_7c15);
            let mut regions: Vec<Region> = (0..60)
                .map(|_| {
                    let (mut start, mut size) = (Vec::new(), Vec::new());
                    for &n in &shape {
                        let state = next();
                        let a = state % n as u64;
                        let b = (state >> 20) % (n as u64 - a) + 1;
                        start.push(a);
                        size.push(b);
                    }
                    Region { start, shape: size }
                })
                .collect();
            // Parts that are one run (read straight into the box): whole chunks of boxes as
            // wide as a chunk, a part short along the first axis only, the all-fill chunk;
            // parts merged along the last axes only; the whole array.
            for (start, size) in [
                ([4, 3, 4], [4, 3, 4]),
                ([0, 3, 4], [8, 3, 4]),
                ([2, 3, 4], [5, 3, 4]),
                ([4, 3, 0], [4, 3, 4]),
                ([0, 0, 4], [10, 5, 4]),
                ([1, 0, 0], [6, 6, 9]),
                ([0, 0, 0], [10, 7, 9]),
            ] {
                regions.push(Region {
                    start: start.to_vec(),
                    shape: size.to_vec(),
                });
            }
            for region in &regions {
                let (got, expect) = (
                    raw.read_box(region).unwrap(),
                    zarrs.read_box(region).unwrap(),
                );
                assert!(got == expect, "{region:?}");
            }
            if codec == Codec::None {
                let key = if flat { "c.1.1.0" } else { "c/1/1/0" };
                assert!(
                    !store.join(key).exists(),
                    "the all-fill chunk is not stored"
                );
                let key = if flat { "c.2.0.1" } else { "c/2/0/1" };
                std::fs::write(store.join(key), b"short").unwrap();
                let e = raw.read_box(&all).unwrap_err().to_string();
                assert!(e.contains(&format!("chunk {key}")), "{e}");
                assert!(e.contains(&store.join(key).display().to_string()), "{e}");
            }
        }
    }

    #[test]
    fn a_sink_refuses_what_is_not_one_chunk_or_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CreateSpec {
            flat_chunk_keys: true,
            shape: vec![10, 6],
            dtype: DType::U16,
            chunks: vec![4, 3],
            shards: None,
            codec: Codec::None,
            dimension_names: None,
            attributes: Map::new(),
        };
        let store = dir.path().join("a.zarr");
        let w = ZarrWriter::create(&store, "", &spec, &crate::comm::Local, false).unwrap();
        let region = |start: [u64; 2], shape: [u64; 2]| Region {
            start: start.to_vec(),
            shape: shape.to_vec(),
        };
        // Not aligned; short on an inner axis; short on the first axis but not at the edge.
        for (start, shape) in [([1, 0], [4, 3]), ([0, 0], [4, 2]), ([4, 0], [2, 3])] {
            assert!(
                w.block_sink(&region(start, shape)).is_err(),
                "{start:?} {shape:?}"
            );
        }
        let mut sink = w.block_sink(&region([8, 3], [2, 3])).unwrap();
        let err = sink.append(&[1u8; 25]).unwrap_err().to_string();
        assert!(err.contains("more bytes than the chunk holds"), "{err}");
        // Compressed chunks are not streamed.
        spec.codec = Codec::Zstd;
        let store = dir.path().join("b.zarr");
        let w = ZarrWriter::create(&store, "", &spec, &crate::comm::Local, false).unwrap();
        assert!(!w.streams_blocks());
        assert!(w.block_sink(&region([0, 0], [4, 3])).is_err());
    }
}
