//! Array storage: where arrays come from and go to.
//!
//! Every format implements the same two traits: [`ArrayReader`] (shape, dtype, chunking,
//! attributes, `read_box`) and [`ArrayWriter`] (`write_box`, attributes, close). Operations
//! never see which format they talk to. Outputs are created under a temporary name and
//! renamed when complete ([`staging`]), so a run that dies leaves nothing that looks finished.

pub mod address;
pub mod block;
#[cfg(feature = "hdf5")]
pub mod hdf5;
pub mod images;
pub mod lock;
pub mod npy;
pub mod pt;
pub mod safety;
pub mod staging;
pub mod walk;
pub mod watch;
pub mod zarr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use address::Address;
pub use block::{Block, DType, Element};

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::grid::Region;

/// What a reader knows about an array before reading any of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArrayMeta {
    pub shape: Vec<u64>,
    pub dtype: DType,
    /// Chunk shape (the inner chunk when sharded); `None` for contiguous storage.
    pub chunks: Option<Vec<u64>>,
    /// Shard shape, when the array is sharded.
    pub shards: Option<Vec<u64>>,
    /// Codecs / filters, outermost last, as short descriptions.
    pub codecs: Vec<String>,
    pub dimension_names: Option<Vec<String>>,
    pub attributes: Map<String, Value>,
}

impl ArrayMeta {
    /// An array stored in one uncompressed piece, with no dimension names or attributes
    /// (`.npy`, `.pt`); other stores set what they have over it.
    pub fn contiguous(shape: Vec<u64>, dtype: DType) -> ArrayMeta {
        ArrayMeta {
            shape,
            dtype,
            chunks: None,
            shards: None,
            codecs: vec![],
            dimension_names: None,
            attributes: Map::new(),
        }
    }
}

/// Compression of chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The output format's own default: zstd for Zarr, gzip for HDF5, none for .npy.
    #[default]
    Auto,
    /// Zstandard, level 3 (Zarr only).
    Zstd,
    /// Blosc with LZ4 and byte shuffle (Zarr only).
    Blosc,
    /// gzip / deflate level 5 (the one HDF5 filter every reader has).
    Gzip,
    /// No compression.
    None,
}

impl Codec {
    /// The codec an output at `address` gets: [`Codec::Auto`] resolved per format, any other
    /// codec as given if the format can store it. The one place that knows which codec suits
    /// which format: [`create`] resolves every spec through it, and operations call it while
    /// planning so that a refusal comes before anything is staged.
    /// HDF5 gets gzip because it is the one filter every HDF5 reader (h5py included) has
    /// without plugins; `.npy` stores raw elements (a given codec is ignored there).
    ///
    /// # Errors
    /// [`Error::Parameter`] naming `--codec` for zstd or blosc with an HDF5 output.
    pub fn for_format(self, address: &Address) -> Result<Codec> {
        match (self, address) {
            (Codec::Auto, Address::Zarr { .. }) => Ok(Codec::Zstd),
            (Codec::Auto, Address::Hdf5 { .. }) => Ok(Codec::Gzip),
            (Codec::Auto, Address::Npy { .. } | Address::Pt { .. }) => Ok(Codec::None),
            (Codec::Zstd | Codec::Blosc, Address::Hdf5 { .. }) => Err(Error::parameter(
                "codec",
                format!(
                    "{} is not available for the HDF5 output {address} (h5py could not read it without plugins); use gzip or none (auto, the default, gives gzip for HDF5)",
                    format!("{self:?}").to_lowercase()
                ),
            )),
            (given, _) => Ok(given),
        }
    }
}

/// Everything needed to create an output array.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateSpec {
    pub shape: Vec<u64>,
    pub dtype: DType,
    pub chunks: Vec<u64>,
    pub shards: Option<Vec<u64>>,
    pub codec: Codec,
    pub dimension_names: Option<Vec<String>>,
    /// Attributes stored at creation; more may be added by [`ArrayWriter::set_attributes`].
    pub attributes: Map<String, Value>,
    /// Zarr only: chunk (or shard) files named `c.i.j` in the array's directory, instead of
    /// the default `c/i/j` (a directory per index but the last). For arrays of many chunks
    /// along one axis (`patches`), this makes one file per chunk instead of a file and two
    /// directories; readers take the naming from `zarr.json`.
    pub flat_chunk_keys: bool,
}

impl CreateSpec {
    /// The blocks that a single writer must own whole: shards when sharded, else chunks.
    pub fn write_block(&self) -> &[u64] {
        self.shards.as_deref().unwrap_or(&self.chunks)
    }

    /// Checks chunk and shard shapes against the array.
    ///
    /// # Errors
    /// [`Error::Parameter`] naming `--chunks` or `--shards`.
    pub fn validate(&self) -> Result<()> {
        let ndim = self.shape.len();
        crate::grid::check_block_shape(&self.chunks, ndim)
            .map_err(|m| Error::parameter("chunks", m))?;
        if let Some(shards) = &self.shards {
            crate::grid::check_block_shape(shards, ndim)
                .map_err(|m| Error::parameter("shards", m))?;
            if let Some(axis) = (0..ndim).find(|&i| shards[i] % self.chunks[i] != 0) {
                return Err(Error::parameter(
                    "shards",
                    format!(
                        "shard shape {} is not a multiple of chunk shape {} on axis {axis}",
                        crate::grid::join(shards),
                        crate::grid::join(&self.chunks)
                    ),
                ));
            }
        }
        let bytes = [
            crate::grid::checked_product("chunks", &self.chunks)?,
            crate::grid::checked_product("shards", self.write_block())?,
        ];
        for (flag, b) in ["chunks", "shards"].into_iter().zip(bytes) {
            crate::grid::checked_mul(flag, b, self.dtype.size() as u64)?;
        }
        Ok(())
    }

    /// Chunks and shards clipped to the array ([`crate::grid::clip_blocks`]), then
    /// [`CreateSpec::validate`]d: what planners use, so that units and writers agree.
    ///
    /// # Errors
    /// As [`CreateSpec::validate`].
    pub fn validated(mut self) -> Result<Self> {
        let CreateSpec {
            shape,
            chunks,
            shards,
            ..
        } = &mut self;
        crate::grid::clip_blocks(shape, chunks, shards.as_deref_mut());
        self.validate()?;
        Ok(self)
    }
}

/// One write block being written as it is made ([`ArrayWriter::block_sink`]).
pub trait BlockSink: Send {
    /// The next elements of the block, in C order, as their little-endian bytes.
    ///
    /// # Errors
    /// A write failure naming the file, or more bytes than the block holds.
    fn append(&mut self, bytes: &[u8]) -> Result<()>;

    /// Completes the block: what was not appended is the fill value.
    ///
    /// # Errors
    /// A write failure naming the file.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Reads boxes of an existing array.
pub trait ArrayReader: Send + Sync {
    fn meta(&self) -> &ArrayMeta;

    /// Reads `region`, which must lie inside the array.
    ///
    /// # Errors
    /// Region outside the array, or a read/decode failure naming the store.
    fn read_box(&self, region: &Region) -> Result<Block> {
        self.read_box_reusing(region, None)
    }

    /// Reads `region` into `spare` when it has the region's shape and the array's type
    /// (reusing its memory: a fresh large buffer is a fresh mapping the kernel faults in page
    /// by page), else into a new block (a store that cannot decode into given memory always
    /// makes a new one).
    ///
    /// # Errors
    /// As [`ArrayReader::read_box`].
    fn read_box_reusing(&self, region: &Region, spare: Option<Block>) -> Result<Block>;

    /// The whole array's elements as native-endian C-order bytes, when the store keeps them
    /// uncompressed in one memory-mapped piece (`.npy`): kernels that read each element once
    /// can use them in place instead of copying boxes out. `None` for other stores.
    fn mapped_bytes(&self) -> Option<&[u8]> {
        None
    }
}

/// [`ArrayReader::mapped_bytes`] as elements of `T` (`None` when the store has no mapped
/// form, the type differs, or the mapping is not aligned for `T`).
pub fn mapped_elements<T: Element>(reader: &dyn ArrayReader) -> Option<&[T]> {
    if reader.meta().dtype != T::DTYPE {
        return None;
    }
    bytemuck::try_cast_slice(reader.mapped_bytes()?).ok()
}

thread_local! {
    static IN_WRITE_LANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a unit's write) as one of several writes in flight on their own threads
/// (`exec`'s write lanes): a writer then encodes a box's blocks one after another on this
/// thread instead of on the rank's rayon pool. The lanes are the parallelism; encoding on the
/// pool as well would queue the kernels' tasks behind long compressions (a stitch on 2 threads
/// was slower than on 1 that way).
pub fn as_write_lane<R>(f: impl FnOnce() -> R) -> R {
    IN_WRITE_LANE.with(|lane| lane.set(true));
    let result = f();
    IN_WRITE_LANE.with(|lane| lane.set(false));
    result
}

/// Whether this thread is one of exec's write lanes ([`as_write_lane`]).
pub fn in_write_lane() -> bool {
    IN_WRITE_LANE.with(std::cell::Cell::get)
}

/// Writes boxes of an array being created.
///
/// Under MPI, `write_box` may be collective (parallel HDF5): every rank calls it the same
/// number of times, and a rank with nothing to write in that round passes `None`.
pub trait ArrayWriter: Send + Sync {
    /// # Errors
    /// Block and region disagree, or a write failure naming the store.
    fn write_box(&self, part: Option<(&Region, &Block)>) -> Result<()>;

    /// Whether [`ArrayWriter::block_sink`] is there: whole write blocks can be written as
    /// they are made, without holding one in memory (an uncompressed, unsharded Zarr array
    /// on a little-endian machine).
    fn streams_blocks(&self) -> bool {
        false
    }

    /// A sink for the whole write block at `region` (chunk-aligned; an edge block may be
    /// short, and is completed with the fill value), to be filled in C order by
    /// [`BlockSink::append`] and closed by [`BlockSink::finish`]. Not collective.
    ///
    /// # Errors
    /// No [`ArrayWriter::streams_blocks`], a region that is not one whole block, or a failure
    /// creating the block's file.
    fn block_sink(&self, region: &Region) -> Result<Box<dyn BlockSink>> {
        Err(Error::parameter(
            "output",
            format!(
                "this writer cannot stream blocks (asked for {}): a bug",
                crate::grid::join(&region.start)
            ),
        ))
    }

    /// Adds attributes. Every rank calls it with the same values; the format decides who
    /// writes (rank 0 for Zarr, all ranks together for parallel HDF5).
    ///
    /// # Errors
    /// A write failure naming the store.
    fn set_attributes(&self, attributes: &Map<String, Value>) -> Result<()>;

    /// Flushes and closes. Every rank calls it.
    ///
    /// # Errors
    /// A flush failure naming the store.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Opens an existing array for reading.
///
/// # Errors
/// [`Error::Address`] when nothing (or no array) is there; format errors otherwise.
pub fn open(address: &Address) -> Result<Box<dyn ArrayReader>> {
    check_container_kind(address)?;
    match address {
        Address::Npy { path } => Ok(Box::new(npy::NpyReader::open(path)?)),
        Address::Pt { path, key } => Ok(Box::new(pt::PtReader::open(path, key.as_deref())?)),
        Address::Zarr { store, node } => Ok(Box::new(zarr::ZarrReader::open(store, node)?)),
        #[cfg(feature = "hdf5")]
        Address::Hdf5 { file, dataset } => Ok(Box::new(hdf5::Hdf5Reader::open(file, dataset)?)),
        #[cfg(not(feature = "hdf5"))]
        Address::Hdf5 { .. } => Err(Error::NotCompiled {
            what: format!("reading {address}"),
            feature: "hdf5",
        }),
        Address::PatchDir { .. } => Err(not_an_array(address)),
    }
}

/// Refuses a container of the wrong kind before a format library sees it (and answers with
/// its own puzzling message): a Zarr store is a directory with metadata at its root, a `.npy`
/// or HDF5 file is a file.
///
/// # Errors
/// [`Error::Address`] saying what is there instead.
fn check_container_kind(address: &Address) -> Result<()> {
    let path = address.container();
    let Ok(found) = std::fs::metadata(path) else {
        return Err(Error::address(address.to_string(), "does not exist"));
    };
    if let Some(kind) = safety::special_kind(path) {
        return Err(Error::address(
            address.to_string(),
            format!("is {kind}; tessera reads only regular files and directories"),
        ));
    }
    let wrong = match address {
        Address::Zarr { .. } if !found.is_dir() => {
            Some("is a file, not a Zarr store (a directory)")
        }
        Address::Zarr { node, .. } if node.is_empty() && !has_zarr_metadata(path) => {
            Some("is a directory but not a Zarr store (no zarr.json, nor Zarr v2 .zarray/.zgroup)")
        }
        Address::Npy { .. } if found.is_dir() => Some("is a directory, not a .npy file"),
        Address::Pt { .. } if found.is_dir() => Some("is a directory, not a .pt file"),
        Address::Hdf5 { .. } if found.is_dir() => Some("is a directory, not an HDF5 file"),
        _ => None,
    };
    wrong.map_or(Ok(()), |message| {
        Err(Error::address(address.to_string(), message))
    })
}

fn has_zarr_metadata(dir: &std::path::Path) -> bool {
    ["zarr.json", ".zarray", ".zgroup"]
        .iter()
        .any(|name| dir.join(name).is_file())
}

/// Creates (or, with `resume`, reopens) an output array. Collective: every rank calls it.
///
/// # Errors
/// Invalid spec for the format, or a failure creating the store.
pub fn create(
    address: &Address,
    spec: &CreateSpec,
    comm: &dyn Comm,
    resume: bool,
) -> Result<Box<dyn ArrayWriter>> {
    spec.validate()?;
    let spec = &CreateSpec {
        codec: spec.codec.for_format(address)?,
        ..spec.clone()
    };
    match address {
        Address::Npy { path } => Ok(Box::new(npy::NpyWriter::create(path, spec, comm, resume)?)),
        Address::Pt { path, key } => Ok(Box::new(pt::PtWriter::create(
            path,
            key.as_deref(),
            spec,
            comm,
            resume,
        )?)),
        Address::Zarr { store, node } => Ok(Box::new(zarr::ZarrWriter::create(
            store, node, spec, comm, resume,
        )?)),
        #[cfg(feature = "hdf5")]
        Address::Hdf5 { file, dataset } => Ok(Box::new(hdf5::Hdf5Writer::create(
            file, dataset, spec, comm, resume,
        )?)),
        #[cfg(not(feature = "hdf5"))]
        Address::Hdf5 { .. } => Err(Error::NotCompiled {
            what: format!("writing {address}"),
            feature: "hdf5",
        }),
        Address::PatchDir { .. } => Err(not_an_array(address)),
    }
}

/// Completes a staged output whose format needs a last step once every rank has written and
/// closed it (rank 0, before it is published): a `.pt` gets its CRC and zip directory
/// ([`pt::archive::finalize`], which may run again on a file it finished). True when there was
/// such a step.
///
/// # Errors
/// The format's failure, naming the file.
pub fn finish_staged(target: &Address, staged: &std::path::Path) -> Result<bool> {
    match target {
        Address::Pt { .. } => pt::archive::finalize(staged).map(|()| true),
        _ => Ok(false),
    }
}

/// A patch directory holds many arrays (one file each, or one Zarr store inside); it is
/// staged like an array but never opened as one.
fn not_an_array(address: &Address) -> Error {
    Error::address(
        address.to_string(),
        "is a patch directory (tessera patches), not an array; open the files inside it",
    )
}

/// Checks that a region fits an array and a block fits the region.
///
/// # Errors
/// [`Error::Mismatch`] naming `what`.
pub fn check_region(
    what: &str,
    shape: &[u64],
    region: &Region,
    block: Option<&Block>,
) -> Result<()> {
    if !region.fits_in(shape) {
        return Err(Error::mismatch(
            format!("{what}: box {:?}+{:?}", region.start, region.shape),
            format!("a box inside shape {shape:?}"),
            "a box outside it",
        ));
    }
    if let Some(block) = block {
        if block.shape() != region.shape {
            return Err(Error::mismatch(
                format!("{what}: block for box {:?}", region.start),
                format!("shape {:?}", region.shape),
                format!("{:?}", block.shape()),
            ));
        }
    }
    Ok(())
}

/// Checks that a box to read lies inside the array of `shape` stored at `path` (every reader
/// calls it first).
///
/// # Errors
/// [`Error::Mismatch`] naming the path.
pub fn check_read(path: &std::path::Path, shape: &[u64], region: &Region) -> Result<()> {
    check_region(&path.display().to_string(), shape, region, None)
}

/// Checks a block about to be written: inside the array, shaped like its box, of the array's
/// dtype. Every writer calls it first.
///
/// # Errors
/// [`Error::Mismatch`] naming the array's path.
pub fn check_write(
    path: &std::path::Path,
    shape: &[u64],
    dtype: DType,
    region: &Region,
    block: &Block,
) -> Result<()> {
    let what = path.display().to_string();
    check_region(&what, shape, region, Some(block))?;
    if block.dtype() != dtype {
        return Err(Error::mismatch(
            format!("{what}: block dtype"),
            dtype,
            block.dtype(),
        ));
    }
    Ok(())
}

/// Writes one unit's boxes to their writers (the i-th box to the i-th writer), or, with no
/// part, takes part in each writer's (possibly collective) write with nothing. For operations
/// with several outputs.
///
/// # Errors
/// The first writer's failure.
pub fn write_parts(
    writers: &[Box<dyn ArrayWriter>],
    part: Option<&[(Region, Block)]>,
) -> Result<()> {
    match part {
        // Nothing to write still takes part (collective writes).
        Some(parts) if !parts.is_empty() => writers
            .iter()
            .zip(parts)
            .try_for_each(|(w, (r, b))| w.write_box(Some((r, b)))),
        _ => writers.iter().try_for_each(|w| w.write_box(None)),
    }
}
