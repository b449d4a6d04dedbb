//! `tessera pairs` and `tessera tokens`: displaced patch pairs for self-supervised training
//! (qlty's patch pairs), their metadata, stratified selection and extraction, and
//! pre-tokenized pairs with token overlaps.
//!
//! Where the pairs sit is decided by [`sampler`] (one random stream per image, so any rank
//! can place any image's pairs alone) or read from a metadata table ([`metadata`]). Units are
//! runs of whole chunks of the pair axis (whole images where an image's pairs fit a unit);
//! a unit reads one box per image it touches, the union of its pairs' patches, and cuts
//! every patch out of it ([`kernel`]). `--overlaps` adds units that are runs of whole chunks
//! of the overlap rows: each finds its pairs by the offsets (known while planning, since only
//! geometry decides them) and reads them again. Nothing is exchanged between ranks, and every
//! chunk is written by the one unit that owns it, so the bytes do not depend on the rank
//! count or on `--resume`.

pub mod kernel;
pub mod metadata;
pub mod params;
pub mod sampler;
pub mod select;
pub mod tokens;
mod tokens_op;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use rayon::prelude::*;
use serde_json::{json, Map, Value};

use self::params::{PairsExtractJob, PairsJob, PairsSelectJob};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::disk::PlannedOutput;
use crate::exec::{Operation, UnitInfo};
use crate::grid::{self, Region};
use crate::io::safety::Place;
use crate::io::{
    self, Address, ArrayReader, ArrayWriter, Block, Codec, CreateSpec, DType, Element,
};
use crate::with_dtype;
use sampler::{Pair, Sampler, SamplerSpec};
pub use tokens_op::TokensOp;

/// Where the pairs come from: drawn per image, or listed (a metadata table's chosen rows).
enum PairSource {
    Sampled(Sampler, u64),
    Listed(Vec<Pair>),
}

impl PairSource {
    fn len(&self) -> u64 {
        match self {
            PairSource::Sampled(s, images) => images * s.pairs_per_image,
            PairSource::Listed(p) => p.len() as u64,
        }
    }

    fn pairs(&self, range: Range<u64>) -> Vec<Pair> {
        match self {
            PairSource::Sampled(s, _) => s.pairs(range),
            PairSource::Listed(p) => p[range.start as usize..range.end as usize].to_vec(),
        }
    }

    /// Where the pair count comes from, for messages: the flags that set it.
    fn origin(&self) -> String {
        match self {
            PairSource::Sampled(s, images) => {
                format!("--pairs-per-image {} x {images} images", s.pairs_per_image)
            }
            PairSource::Listed(p) => format!("{} rows of --metadata/--select", p.len()),
        }
    }

    /// Pairs per image when every image has the same run of pairs (units then align to images).
    fn per_image(&self) -> Option<u64> {
        match self {
            PairSource::Sampled(s, _) => Some(s.pairs_per_image),
            PairSource::Listed(_) => None,
        }
    }
}

/// What a run writes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Content {
    /// The pairs group: patches, deltas, rotations, and optionally positions and overlaps.
    Pixels {
        positions: bool,
        include_n: bool,
        overlaps: bool,
    },
    /// The metadata table (one array).
    Metadata,
}

/// The images, as the plan needs them.
struct Images {
    address: Address,
    reader: Box<dyn ArrayReader>,
    /// N, C, [Z,] Y, X.
    shape: Vec<u64>,
    dtype: DType,
}

impl Images {
    /// Opens (N, C, Y, X) or (N, C, Z, Y, X) images.
    ///
    /// # Errors
    /// A missing input or one of another rank.
    fn open(input: &str) -> Result<Images> {
        if input.is_empty() {
            return Err(Error::parameter(
                "input",
                "required: the images to draw pairs from",
            ));
        }
        let address = Address::parse(input)?;
        let reader = io::open(&address)?;
        let meta = reader.meta().clone();
        if !(meta.shape.len() == 4 || meta.shape.len() == 5) || meta.shape.contains(&0) {
            return Err(Error::address(
                address.to_string(),
                format!("has shape {:?}; pairs are drawn from (N, C, Y, X) or (N, C, Z, Y, X) images with no empty axis", meta.shape),
            ));
        }
        Ok(Images {
            address,
            reader,
            shape: meta.shape,
            dtype: meta.dtype,
        })
    }

    fn spatial(&self) -> &[u64] {
        &self.shape[2..]
    }

    fn channels(&self) -> u64 {
        self.shape[1]
    }
}

/// One array of the output group, by name.
struct Array {
    name: &'static str,
    spec: CreateSpec,
}

/// Overlap rows: per-pair offsets and the units' row runs.
struct OverlapPlan {
    /// `offsets[i]..offsets[i + 1]` are pair i's rows; M + 1 values.
    offsets: Vec<u64>,
    runs: Vec<Range<u64>>,
}

/// `tessera pairs` (and `pairs extract`): the pairs group, or the metadata table.
pub struct PairsOp {
    name: &'static str,
    parameters: Value,
    provenance: Value,
    targets: Vec<Address>,
    inputs: Vec<Place>,
    images: Images,
    window: Vec<u64>,
    source: PairSource,
    content: Content,
    arrays: Vec<Array>,
    pair_runs: Vec<Range<u64>>,
    overlap: Option<OverlapPlan>,
    units: Vec<UnitInfo>,
    memory_per_unit: u64,
    writers: Mutex<Vec<Box<dyn ArrayWriter>>>,
    staged: Mutex<Option<(PathBuf, String)>>,
}

/// Patches per chunk: the flag, else about 4 MiB of first patches, made to divide the pairs of
/// an image (or be a multiple of them) so that chunks, and so units, can follow images.
fn pairs_per_chunk(
    given: Option<u64>,
    patch_bytes: u64,
    per_image: Option<u64>,
    m: u64,
) -> Result<u64> {
    if given == Some(0) {
        return Err(Error::parameter("pairs-per-chunk", "must be at least 1"));
    }
    let fit = crate::ops::quilt::patches_per_chunk(patch_bytes);
    let chosen = given.unwrap_or_else(|| match per_image {
        Some(p) if fit >= p => fit / p * p,
        Some(p) => largest_divisor_at_most(p, fit),
        None => fit,
    });
    Ok(chosen.clamp(1, m.max(1)))
}

fn largest_divisor_at_most(n: u64, limit: u64) -> u64 {
    (1..=limit.min(n))
        .rev()
        .find(|&d| n.is_multiple_of(d))
        .unwrap_or(1)
}

/// Bytes a unit takes while it is planned and run, at most: its run, its `UnitInfo` and label,
/// the runner's per-rank lists and journal entry. Plans check `units x` this against the
/// memory available before they list their units.
const PLAN_BYTES_PER_UNIT: u64 = 192;

/// Refuses a plan of `units` units (of `pairs` pairs from `origin`) whose lists would not fit
/// in memory, before they are made.
fn check_unit_count(units: u64, pairs: u64, origin: &str) -> Result<()> {
    crate::exec::memory::check(
        &format!("the plan's list of {units} units of {pairs} pairs ({origin})"),
        units.saturating_mul(PLAN_BYTES_PER_UNIT),
    )
}

/// Runs of pairs, one per unit: whole chunks, and whole images when one image's pairs fit the
/// unit size limit (each image box is then read once); within an image, runs never straddle
/// two images.
///
/// # Errors
/// A list of runs too long for the memory available (`origin` names the flags).
fn plan_pair_runs(
    m: u64,
    per_chunk: u64,
    pair_bytes: u64,
    per_image: Option<u64>,
    origin: &str,
) -> Result<Vec<Range<u64>>> {
    let mut target = crate::exec::target_unit_bytes(m.saturating_mul(pair_bytes));
    let cap = crate::exec::target_unit_bytes(u64::MAX);
    let mut blocks = grid::blocks_for_target(per_chunk * pair_bytes, target);
    if let Some(p) = per_image {
        let image_bytes = p.saturating_mul(pair_bytes);
        if image_bytes <= cap {
            target = target.max(image_bytes);
            blocks = grid::blocks_for_target(per_chunk * pair_bytes, target);
        }
        if per_chunk < p && p.is_multiple_of(per_chunk) {
            let per = p / per_chunk;
            blocks = if blocks >= per {
                blocks / per * per
            } else {
                largest_divisor_at_most(per, blocks)
            };
        }
    }
    if m == 0 {
        return Ok(Vec::new());
    }
    check_unit_count(m.div_ceil(per_chunk.saturating_mul(blocks)), m, origin)?;
    Ok(grid::block_aligned_runs(m, per_chunk, blocks))
}

/// The specs of the pairs group's arrays (all chunked `per_chunk` pairs along the first axis).
fn pixel_arrays(
    m: u64,
    images: &Images,
    window: &[u64],
    content: Content,
    per_chunk: u64,
    codec: Codec,
    overlap_rows: Option<(u64, u64)>,
) -> Result<Vec<Array>> {
    let Content::Pixels {
        positions,
        include_n,
        ..
    } = content
    else {
        unreachable!("pixel arrays of a pixel run");
    };
    let nd = window.len() as u64;
    let spec = |shape: Vec<u64>, dtype: DType, first: u64| -> Result<CreateSpec> {
        let mut chunks = shape.clone();
        chunks[0] = first;
        crate::ops::plain_spec(shape, dtype, chunks, codec).validated()
    };
    let mut patch = vec![m, images.channels()];
    patch.extend(window);
    let mut arrays = vec![
        Array {
            name: "patches1",
            spec: spec(patch.clone(), images.dtype, per_chunk)?,
        },
        Array {
            name: "patches2",
            spec: spec(patch, images.dtype, per_chunk)?,
        },
        Array {
            name: "deltas",
            spec: spec(vec![m, nd], DType::F32, per_chunk)?,
        },
        Array {
            name: "rotations",
            spec: spec(vec![m], DType::I64, per_chunk)?,
        },
    ];
    if positions {
        let width = nd + u64::from(include_n);
        for name in ["positions1", "positions2"] {
            arrays.push(Array {
                name,
                spec: spec(vec![m, width], DType::I64, per_chunk)?,
            });
        }
    }
    if let Some((k, rows_per_chunk)) = overlap_rows {
        arrays.push(Array {
            name: "overlap_offsets",
            spec: spec(vec![m + 1], DType::I64, per_chunk)?,
        });
        for name in ["overlap1", "overlap2"] {
            arrays.push(Array {
                name,
                spec: spec(vec![k, images.channels()], images.dtype, rows_per_chunk)?,
            });
        }
    }
    Ok(arrays)
}

/// The pairs group's attributes, as qlty's `extract_patches_to_zarr` writes them, and
/// tessera's provenance.
fn group_attributes(
    window: &[u64],
    m: u64,
    channels: u64,
    provenance: &Value,
) -> Map<String, Value> {
    let mut attrs = Map::new();
    attrs.insert("window".into(), json!(window));
    attrs.insert("num_patches".into(), json!(m));
    attrs.insert("num_channels".into(), json!(channels));
    attrs.insert("patch_shape".into(), json!(window));
    attrs.insert("pairs".into(), provenance.clone());
    attrs
}

/// Offsets of every pair's overlap rows, and runs of whole overlap chunks per unit.
fn plan_overlaps(
    source: &PairSource,
    window: &[u64],
    row_bytes: u64,
) -> Result<(OverlapPlan, u64)> {
    let m = source.len();
    crate::exec::memory::check(
        &format!(
            "the overlap offsets of {m} pairs (--overlaps, {})",
            source.origin()
        ),
        m.saturating_add(1).saturating_mul(8),
    )?;
    let mut offsets = Vec::with_capacity(grid::to_usize("pairs-per-image", m + 1)?);
    offsets.push(0u64);
    // Image by image, so memory stays one image's pairs.
    let step = source.per_image().unwrap_or(m.max(1));
    let mut at = 0;
    while at < m {
        let end = (at + step).min(m);
        for pair in source.pairs(at..end) {
            let last = *offsets.last().expect("offsets start at 0");
            offsets.push(last + kernel::overlap_count(&pair, window));
        }
        at = end;
    }
    let k = *offsets.last().expect("offsets start at 0");
    let rows_per_chunk = crate::ops::quilt::patches_per_chunk(row_bytes).clamp(1, k.max(1));
    let target = crate::exec::target_unit_bytes(k.saturating_mul(row_bytes));
    let blocks = grid::blocks_for_target(rows_per_chunk * row_bytes, target);
    let runs = if k == 0 {
        Vec::new()
    } else {
        check_unit_count(
            k.div_ceil(rows_per_chunk.saturating_mul(blocks)),
            m,
            &format!("{k} overlap rows, {}", source.origin()),
        )?;
        grid::block_aligned_runs(k, rows_per_chunk, blocks)
    };
    Ok((OverlapPlan { offsets, runs }, rows_per_chunk))
}

/// Everything `plan` and `plan_extract` share once the pairs are known.
struct Assembly {
    name: &'static str,
    parameters: Value,
    provenance: Value,
    output: Address,
    extra_inputs: Vec<Place>,
    images: Images,
    window: Vec<u64>,
    source: PairSource,
    content: Content,
    pairs_per_chunk: Option<u64>,
    codec: Codec,
    /// The run's options: the outputs are checked against the free disk space before the
    /// units are listed (a list of millions takes seconds and gigabytes).
    run: crate::exec::RunOptions,
}

impl PairsOp {
    /// Plans `tessera pairs`: checks every flag against the images; creates nothing.
    ///
    /// # Errors
    /// Bad flags (named), images too small, an output of the wrong kind.
    pub fn plan(job: &PairsJob) -> Result<PairsOp> {
        let images = Images::open(&job.input)?;
        if job.window.is_empty() || job.delta_range.is_empty() {
            return Err(Error::parameter(
                if job.window.is_empty() {
                    "window"
                } else {
                    "delta-range"
                },
                "required: tessera pairs --window U,V --delta-range LOW,HIGH (see --help)",
            ));
        }
        let sampler = Sampler::new(&SamplerSpec {
            image: images.spatial(),
            window: &job.window,
            delta_range: &job.delta_range,
            rotations: &job.rotations,
            pairs_per_image: job.pairs_per_image,
            seed: job.seed,
        })?;
        grid::checked_mul("pairs-per-image", images.shape[0], job.pairs_per_image)?;
        let content = if job.metadata_only {
            Content::Metadata
        } else {
            Content::Pixels {
                positions: job.positions,
                include_n: job.include_n,
                overlaps: job.overlaps,
            }
        };
        let provenance = json!({
            "command": "tessera pairs",
            "input": job.input,
            "image_shape": images.shape,
            "window": job.window,
            "delta_range": job.delta_range,
            "pairs_per_image": job.pairs_per_image,
            "seed": job.seed,
            "rotations": sampler.rotations,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let n = images.shape[0];
        Self::assemble(Assembly {
            name: "pairs",
            parameters: serde_json::to_value(job).unwrap_or_default(),
            provenance,
            output: output_address(&job.output, content)?,
            extra_inputs: Vec::new(),
            window: job.window.clone(),
            images,
            source: PairSource::Sampled(sampler, n),
            content,
            pairs_per_chunk: job.pairs_per_chunk,
            codec: job.codec,
            run: job.run.clone(),
        })
    }

    /// Plans `tessera pairs extract`: the chosen rows of a metadata table, checked against
    /// the images; creates nothing.
    ///
    /// # Errors
    /// A table or selection that does not fit the images, bad flags, an output of the wrong kind.
    pub fn plan_extract(job: &PairsExtractJob) -> Result<PairsOp> {
        let images = Images::open(&job.input)?;
        let table_address = Address::parse(&job.metadata)?;
        let table = metadata::Table::read(&table_address)?;
        let nd = images.spatial().len();
        if table.ndim != nd {
            return Err(Error::parameter(
                "metadata",
                format!(
                    "{table_address} holds {}-D pairs but the images have {nd} spatial axes",
                    table.ndim
                ),
            ));
        }
        let window = extract_window(job, &table)?;
        let chosen = match &job.select {
            Some(s) => metadata::read_selection(&Address::parse(s)?, table.rows)?,
            None => (0..table.rows).collect(),
        };
        // Each chosen row becomes a pair held while planning (two corners of `nd` axes).
        let per_pair = std::mem::size_of::<Pair>() as u64 + 2 * nd as u64 * 8 + 32;
        crate::exec::memory::check(
            &format!("the {} pairs chosen from {table_address}", chosen.len()),
            (chosen.len() as u64).saturating_mul(per_pair),
        )?;
        let pairs = chosen
            .iter()
            .map(|&i| {
                table
                    .pair(i)
                    .and_then(|p| check_listed(&p, i, &images, &window, &table_address).map(|()| p))
            })
            .collect::<Result<Vec<Pair>>>()?;
        let mut extra_inputs = vec![Place::Array(table_address.clone())];
        if let Some(s) = &job.select {
            extra_inputs.push(Place::Array(Address::parse(s)?));
        }
        let provenance = json!({
            "command": "tessera pairs extract",
            "input": job.input,
            "metadata": job.metadata,
            "select": job.select,
            "image_shape": images.shape,
            "window": window,
            "sampled": table.attributes.get("pairs"),
            "version": env!("CARGO_PKG_VERSION"),
        });
        let content = Content::Pixels {
            positions: job.positions,
            include_n: job.include_n,
            overlaps: job.overlaps,
        };
        Self::assemble(Assembly {
            name: "pairs extract",
            parameters: serde_json::to_value(job).unwrap_or_default(),
            provenance,
            output: output_address(&job.output, content)?,
            extra_inputs,
            images,
            window,
            source: PairSource::Listed(pairs),
            content,
            pairs_per_chunk: job.pairs_per_chunk,
            codec: job.codec,
            run: job.run.clone(),
        })
    }

    fn assemble(a: Assembly) -> Result<PairsOp> {
        a.codec.for_format(&a.output)?;
        let m = a.source.len();
        let channels = a.images.channels();
        let element = a.images.dtype.size() as u64;
        let patch_bytes = grid::checked_mul(
            "window",
            channels * element,
            grid::checked_product("window", &a.window)?,
        )?;
        let per_chunk = pairs_per_chunk(a.pairs_per_chunk, patch_bytes, a.source.per_image(), m)?;
        let (arrays, overlap, pair_bytes) = match a.content {
            Content::Metadata => {
                let cols = metadata::columns(a.window.len()).len() as u64;
                let shape = vec![m, cols];
                let spec = CreateSpec {
                    attributes: metadata_attributes(a.window.len(), &a.provenance),
                    ..crate::ops::plain_spec(shape, DType::F64, vec![per_chunk, cols], a.codec)
                }
                .validated()?;
                (vec![Array { name: "", spec }], None, cols * 8)
            }
            Content::Pixels { overlaps, .. } => {
                let plan = overlaps
                    .then(|| plan_overlaps(&a.source, &a.window, channels * element))
                    .transpose()?;
                let rows = plan
                    .as_ref()
                    .map(|(p, rpc)| (*p.offsets.last().expect("M + 1 offsets"), *rpc));
                let arrays =
                    pixel_arrays(m, &a.images, &a.window, a.content, per_chunk, a.codec, rows)?;
                (arrays, plan.map(|(p, _)| p), 2 * patch_bytes + 64)
            }
        };
        let planned = match a.content {
            Content::Metadata => vec![PlannedOutput::array(&a.output, &arrays[0].spec)],
            Content::Pixels { .. } => arrays
                .iter()
                .map(|array| PlannedOutput::child(&a.output, array.name, &array.spec))
                .collect(),
        };
        crate::exec::disk::check_planned(std::slice::from_ref(&a.output), planned, &a.run)?;
        let pair_runs = plan_pair_runs(
            m,
            per_chunk,
            pair_bytes,
            a.source.per_image(),
            &a.source.origin(),
        )?;
        let image_bytes = a.images.shape[1..].iter().product::<u64>() * element;
        let (units, memory_per_unit) = describe_units(
            &pair_runs,
            overlap.as_ref(),
            pair_bytes,
            patch_bytes,
            channels * element,
            image_bytes,
        );
        let mut inputs = vec![Place::Array(a.images.address.clone())];
        inputs.extend(a.extra_inputs);
        Ok(PairsOp {
            name: a.name,
            parameters: a.parameters,
            provenance: a.provenance,
            targets: vec![a.output],
            inputs,
            images: a.images,
            window: a.window,
            source: a.source,
            content: a.content,
            arrays,
            pair_runs,
            overlap,
            units,
            memory_per_unit,
            writers: Mutex::new(Vec::new()),
            staged: Mutex::new(None),
        })
    }

    /// Pairs M.
    pub fn pair_count(&self) -> u64 {
        self.source.len()
    }

    /// Bytes of the pair arrays written (patches, deltas, rotations, positions, overlaps).
    pub fn pair_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes_out).sum()
    }
}

/// The output: a Zarr group for pixels, any array for metadata.
fn output_address(output: &str, content: Content) -> Result<Address> {
    if output.is_empty() {
        return Err(Error::parameter(
            "output",
            "required: where to write the pairs",
        ));
    }
    let address = Address::parse(output)?;
    if content != Content::Metadata && !matches!(address, Address::Zarr { .. }) {
        return Err(Error::parameter(
            "output",
            format!("{address} is not a Zarr store: pairs are written as a Zarr group (`pairs.zarr`), the layout qlty's ZarrPatchPairDataset reads"),
        ));
    }
    Ok(address)
}

fn metadata_attributes(ndim: usize, provenance: &Value) -> Map<String, Value> {
    let mut attrs = Map::new();
    attrs.insert("columns".into(), json!(metadata::columns(ndim)));
    attrs.insert("pairs".into(), provenance.clone());
    attrs
}

/// `--window`, else the metadata's own; refused when they differ or neither says.
fn extract_window(job: &PairsExtractJob, table: &metadata::Table) -> Result<Vec<u64>> {
    let window = match (job.window.is_empty(), table.window()) {
        (false, Some(w)) if w != job.window => {
            return Err(Error::parameter(
                "window",
                format!(
                    "{} differs from the window {} the metadata was sampled with",
                    grid::join(&job.window),
                    grid::join(&w)
                ),
            ))
        }
        (false, _) => job.window.clone(),
        (true, Some(w)) => w,
        (true, None) => {
            return Err(Error::parameter(
                "window",
                format!(
                "required: {} does not say which window it was sampled with (no `pairs` attribute)",
                table.address
            ),
            ))
        }
    };
    sampler::check_window(&window, table.ndim)?;
    Ok(window)
}

/// A listed pair must lie inside the images, and its turn must be one the patch array holds.
fn check_listed(
    pair: &Pair,
    row: usize,
    images: &Images,
    window: &[u64],
    table: &Address,
) -> Result<()> {
    let bad = |what: String| Error::parameter("metadata", format!("{table}: row {row}: {what}"));
    if pair.image >= images.shape[0] {
        return Err(bad(format!(
            "image {} is outside the {} images of {}",
            pair.image, images.shape[0], images.address
        )));
    }
    for corner in [&pair.first, &pair.second] {
        if corner
            .iter()
            .zip(window)
            .zip(images.spatial())
            .any(|((&c, &w), &e)| c + w > e)
        {
            return Err(bad(format!(
                "a patch at {} of window {} does not fit the images {}",
                grid::join(corner),
                grid::join(window),
                grid::join(images.spatial())
            )));
        }
    }
    if pair.rotation != 0 {
        sampler::check_rotations(&[pair.rotation], window)
            .map_err(|e| bad(format!("rotation {}: {e}", pair.rotation)))?;
    }
    Ok(())
}

/// One unit per run of pairs: both patches of each pair read, `pair_bytes` written per pair.
fn pair_units(runs: &[Range<u64>], pair_bytes: u64, patch_bytes: u64) -> Vec<UnitInfo> {
    runs.iter()
        .map(|r| UnitInfo {
            label: format!("pairs {}..{}", r.start, r.end),
            bytes_in: (r.end - r.start) * 2 * patch_bytes,
            bytes_out: (r.end - r.start) * pair_bytes,
        })
        .collect()
}

/// Unit descriptions (pair runs, then overlap row runs) and the memory one unit needs: its
/// output and one image box.
fn describe_units(
    pair_runs: &[Range<u64>],
    overlap: Option<&OverlapPlan>,
    pair_bytes: u64,
    patch_bytes: u64,
    row_bytes: u64,
    image_bytes: u64,
) -> (Vec<UnitInfo>, u64) {
    let mut units = pair_units(pair_runs, pair_bytes, patch_bytes);
    if let Some(o) = overlap {
        units.extend(o.runs.iter().map(|r| UnitInfo {
            label: format!("overlap rows {}..{}", r.start, r.end),
            bytes_in: (r.end - r.start) * row_bytes,
            bytes_out: (r.end - r.start) * 2 * row_bytes,
        }));
    }
    let largest = units.iter().map(|u| u.bytes_out * 2).max().unwrap_or(0);
    (units, largest + image_bytes)
}

/// Contiguous runs of pairs of one image: `(image, index range into the slice)`.
fn image_groups(pairs: &[Pair]) -> Vec<(u64, Range<usize>)> {
    let mut groups: Vec<(u64, Range<usize>)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        match groups.last_mut() {
            Some((n, r)) if *n == p.image => r.end = i + 1,
            _ => groups.push((p.image, i..i + 1)),
        }
    }
    groups
}

/// The box of one image covering both patches of every pair: (origin, region to read).
fn covering_box(pairs: &[Pair], window: &[u64], channels: u64) -> (Vec<u64>, Region) {
    let nd = window.len();
    let mut lo = vec![u64::MAX; nd];
    let mut hi = vec![0u64; nd];
    for p in pairs {
        for corner in [&p.first, &p.second] {
            for a in 0..nd {
                lo[a] = lo[a].min(corner[a]);
                hi[a] = hi[a].max(corner[a] + window[a]);
            }
        }
    }
    let mut start = vec![pairs[0].image, 0];
    start.extend(&lo);
    let mut shape = vec![1, channels];
    shape.extend(lo.iter().zip(&hi).map(|(l, h)| h - l));
    (lo, Region { start, shape })
}

/// A unit's result: (array index, box, block) for each array it writes.
type Parts = Vec<(usize, Region, Block)>;

impl PairsOp {
    fn array_index(&self, name: &str) -> usize {
        self.arrays
            .iter()
            .position(|a| a.name == name)
            .expect("a planned array")
    }

    /// Reads the box of each image the pairs touch and hands it to `each` with the group's
    /// pairs and their index range.
    fn for_each_image<T: Element>(
        &self,
        pairs: &[Pair],
        mut each: impl FnMut(&ArrayViewD<'_, T>, &[u64], Range<usize>) -> Result<()>,
    ) -> Result<()> {
        for (_, range) in image_groups(pairs) {
            let (origin, region) =
                covering_box(&pairs[range.clone()], &self.window, self.images.channels());
            let block = self.images.reader.read_box(&region)?;
            let image = block.into_array::<T>().expect("reader dtype");
            each(&image.index_axis(Axis(0), 0), &origin, range)?;
        }
        Ok(())
    }

    /// Both patch arrays of a run of pairs.
    fn cut_patches<T: Element>(&self, pairs: &[Pair]) -> Result<(Block, Block)> {
        let mut shape = vec![pairs.len(), self.images.channels() as usize];
        shape.extend(self.window.iter().map(|&w| w as usize));
        let mut first = ArrayD::<T>::default(IxDyn(&shape));
        let mut second = ArrayD::<T>::default(IxDyn(&shape));
        self.for_each_image::<T>(pairs, |image, origin, range| {
            let slot = Slice::from(range.clone());
            first
                .slice_axis_mut(Axis(0), slot)
                .axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(second.slice_axis_mut(Axis(0), slot).axis_iter_mut(Axis(0)))
                .zip(&pairs[range])
                .for_each(|((mut a, mut b), pair)| {
                    let (p1, p2) = kernel::pair_views(image, origin, pair, &self.window);
                    a.assign(&p1);
                    b.assign(&p2);
                });
            Ok(())
        })?;
        Ok((T::into_block(first), T::into_block(second)))
    }

    /// The metadata rows of a run of pairs.
    fn metadata_rows<T: Element>(&self, pairs: &[Pair]) -> Result<Block> {
        let cols = metadata::columns(self.window.len()).len();
        let mut values = vec![0f64; pairs.len() * cols];
        self.for_each_image::<T>(pairs, |image, origin, range| {
            let rows: Vec<Vec<f64>> = pairs[range.clone()]
                .par_iter()
                .map(|pair| {
                    let p1 = kernel::window_view(image, origin, &pair.first, &self.window);
                    let p2 = kernel::window_view(image, origin, &pair.second, &self.window);
                    metadata::row(pair, [kernel::patch_stats(&p1), kernel::patch_stats(&p2)])
                })
                .collect();
            for (i, r) in range.zip(rows) {
                values[i * cols..(i + 1) * cols].copy_from_slice(&r);
            }
            Ok(())
        })?;
        Ok(Block::F64(
            ArrayD::from_shape_vec(IxDyn(&[pairs.len(), cols]), values).expect("rows x columns"),
        ))
    }

    /// Deltas (x first), rotations and, when asked, positions of a run of pairs.
    fn geometry_parts(&self, pairs: &[Pair], run: &Range<u64>) -> Parts {
        let n = pairs.len();
        let nd = self.window.len();
        let deltas: Vec<f32> = pairs
            .iter()
            .flat_map(|p| p.delta().into_iter().rev().map(|d| d as f32))
            .collect();
        let rotations: Vec<i64> = pairs.iter().map(|p| i64::from(p.rotation)).collect();
        let rows = |shape: &[u64]| {
            let mut r = Region::whole(shape);
            r.start[0] = run.start;
            r.shape[0] = run.end - run.start;
            r
        };
        let mut parts = vec![
            (
                self.array_index("deltas"),
                rows(&[0, nd as u64]),
                Block::F32(ArrayD::from_shape_vec(IxDyn(&[n, nd]), deltas).expect("n x nd")),
            ),
            (
                self.array_index("rotations"),
                rows(&[0]),
                Block::I64(ArrayD::from_shape_vec(IxDyn(&[n]), rotations).expect("n")),
            ),
        ];
        if let Content::Pixels {
            positions: true,
            include_n,
            ..
        } = self.content
        {
            let width = nd + usize::from(include_n);
            for (name, second) in [("positions1", false), ("positions2", true)] {
                let values: Vec<i64> = pairs
                    .iter()
                    .flat_map(|p| {
                        let corner = if second { &p.second } else { &p.first };
                        let n = include_n.then_some(p.image as i64);
                        n.into_iter()
                            .chain(corner.iter().map(|&c| c as i64))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let block = Block::I64(
                    ArrayD::from_shape_vec(IxDyn(&[n, width]), values).expect("n x width"),
                );
                parts.push((self.array_index(name), rows(&[0, width as u64]), block));
            }
        }
        parts
    }

    /// This run's slice of the offsets: pairs `run`, and the final total with the last run.
    fn offset_part(&self, run: &Range<u64>) -> Option<(usize, Region, Block)> {
        let plan = self.overlap.as_ref()?;
        let m = self.source.len();
        let end = if run.end == m { m + 1 } else { run.end };
        let values: Vec<i64> = plan.offsets[run.start as usize..end as usize]
            .iter()
            .map(|&o| o as i64)
            .collect();
        let block =
            Block::I64(ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).expect("1-D"));
        Some((
            self.array_index("overlap_offsets"),
            Region {
                start: vec![run.start],
                shape: vec![end - run.start],
            },
            block,
        ))
    }

    fn compute_pairs(&self, run: &Range<u64>) -> Result<Parts> {
        let pairs = self.source.pairs(run.clone());
        let dtype = self.images.dtype;
        if self.content == Content::Metadata {
            let rows = with_dtype!(dtype, T => self.metadata_rows::<T>(&pairs)?);
            let cols = metadata::columns(self.window.len()).len() as u64;
            return Ok(vec![(
                0,
                Region {
                    start: vec![run.start, 0],
                    shape: vec![run.end - run.start, cols],
                },
                rows,
            )]);
        }
        let (first, second) = with_dtype!(dtype, T => self.cut_patches::<T>(&pairs)?);
        let mut shape = vec![self.source.len(), self.images.channels()];
        shape.extend(&self.window);
        let patch_region = Region::slab(&shape, 0, run.clone());
        let mut parts = vec![
            (self.array_index("patches1"), patch_region.clone(), first),
            (self.array_index("patches2"), patch_region, second),
        ];
        parts.extend(self.geometry_parts(&pairs, run));
        parts.extend(self.offset_part(run));
        Ok(parts)
    }

    /// Overlap rows `rows` (a run of whole chunks): the pairs that own them, read again.
    fn compute_overlaps(&self, rows: &Range<u64>) -> Result<Parts> {
        let plan = self
            .overlap
            .as_ref()
            .expect("overlap units only with --overlaps");
        let m = self.source.len() as usize;
        let first = plan.offsets[1..].partition_point(|&o| o <= rows.start);
        let last = plan.offsets[..m].partition_point(|&o| o < rows.end);
        let pairs = self.source.pairs(first as u64..last as u64);
        let skip = (rows.start - plan.offsets[first]) as usize;
        let (a, b) = with_dtype!(self.images.dtype, T => self.overlap_blocks::<T>(&pairs, skip, (rows.end - rows.start) as usize)?);
        let region = Region {
            start: vec![rows.start, 0],
            shape: vec![rows.end - rows.start, self.images.channels()],
        };
        Ok(vec![
            (self.array_index("overlap1"), region.clone(), a),
            (self.array_index("overlap2"), region, b),
        ])
    }

    /// Both overlaps' rows of `pairs`, `count` of them after the first `skip`.
    fn overlap_blocks<T: Element>(
        &self,
        pairs: &[Pair],
        skip: usize,
        count: usize,
    ) -> Result<(Block, Block)> {
        let c = self.images.channels() as usize;
        let (mut rows1, mut rows2) = (Vec::new(), Vec::new());
        self.for_each_image::<T>(pairs, |image, origin, range| {
            let per_pair: Vec<(Vec<T>, Vec<T>)> = pairs[range]
                .par_iter()
                .map(|pair| {
                    let (p1, p2) = kernel::pair_views(image, origin, pair, &self.window);
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    kernel::overlap_rows(&p1, &p2, pair, &self.window, &mut a, &mut b);
                    (a, b)
                })
                .collect();
            for (a, b) in per_pair {
                rows1.extend(a);
                rows2.extend(b);
            }
            Ok(())
        })?;
        let cut = |rows: Vec<T>| {
            let values = rows[skip * c..(skip + count) * c].to_vec();
            T::into_block(ArrayD::from_shape_vec(IxDyn(&[count, c]), values).expect("rows x C"))
        };
        Ok((cut(rows1), cut(rows2)))
    }
}

impl Operation for PairsOp {
    type Output = Parts;
    crate::exec::plan_fields!(targets, units, memory_per_unit, parameters);

    fn name(&self) -> &'static str {
        self.name
    }
    fn checked_disk(&self) -> bool {
        true
    }
    fn planned_outputs(&self) -> Vec<PlannedOutput> {
        if self.content == Content::Metadata {
            return vec![PlannedOutput::array(&self.targets[0], &self.arrays[0].spec)];
        }
        self.arrays
            .iter()
            .map(|a| PlannedOutput::child(&self.targets[0], a.name, &a.spec))
            .collect()
    }
    fn fingerprint(&self) -> Value {
        let specs: Vec<String> = self
            .arrays
            .iter()
            .map(|a| format!("{}: {:?}", a.name, a.spec))
            .collect();
        json!({"images": self.images.shape, "dtype": self.images.dtype.name(), "arrays": specs, "units": self.units.len()})
    }
    fn inputs(&self) -> Vec<Place> {
        self.inputs.clone()
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let writers = if self.content == Content::Metadata {
            vec![io::create(&staging[0], &self.arrays[0].spec, comm, resume)?]
        } else {
            let (store, node) = zarr_parts(&staging[0])?;
            *self.staged.lock().expect("staged") = Some((store.clone(), node.clone()));
            create_children(&store, &node, &self.arrays, comm, resume)?
        };
        *self.writers.lock().expect("writers") = writers;
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        match self.pair_runs.get(unit) {
            Some(run) => self.compute_pairs(run),
            None => {
                let plan = self.overlap.as_ref().expect("an overlap unit");
                self.compute_overlaps(&plan.runs[unit - self.pair_runs.len()])
            }
        }
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        write_indexed(&self.writers, part)
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        let attrs = group_attributes(
            &self.window,
            self.source.len(),
            self.images.channels(),
            &self.provenance,
        );
        close_group(&self.writers, &self.staged, comm, &attrs)
    }
}

/// The store and node of a Zarr address.
fn zarr_parts(address: &Address) -> Result<(PathBuf, String)> {
    match address {
        Address::Zarr { store, node } => Ok((store.clone(), node.clone())),
        other => Err(Error::parameter(
            "output",
            format!("{other} is not a Zarr group"),
        )),
    }
}

/// Creates each array as a child of the group `node` (collective).
fn create_children(
    store: &std::path::Path,
    node: &str,
    arrays: &[Array],
    comm: &dyn Comm,
    resume: bool,
) -> Result<Vec<Box<dyn ArrayWriter>>> {
    arrays
        .iter()
        .map(|a| {
            let address = Address::Zarr {
                store: store.to_path_buf(),
                node: io::zarr::child_node(node, a.name),
            };
            io::create(&address, &a.spec, comm, resume)
        })
        .collect()
}

/// Writes a unit's parts, each to its array's writer.
fn write_indexed(
    writers: &Mutex<Vec<Box<dyn ArrayWriter>>>,
    part: Option<(usize, Parts)>,
) -> Result<()> {
    let writers = writers.lock().expect("writers");
    if let Some((_, parts)) = part {
        for (w, region, block) in &parts {
            writers[*w].write_box(Some((region, block)))?;
        }
    }
    Ok(())
}

/// Closes every writer and, for a group, has rank 0 store the group's attributes.
fn close_group(
    writers: &Mutex<Vec<Box<dyn ArrayWriter>>>,
    staged: &Mutex<Option<(PathBuf, String)>>,
    comm: &dyn Comm,
    attributes: &Map<String, Value>,
) -> Result<()> {
    for w in std::mem::take(&mut *writers.lock().expect("writers")) {
        w.close()?;
    }
    let staged = staged.lock().expect("staged").clone();
    if let (true, Some((store, node))) = (comm.is_root(), staged) {
        io::zarr::write_group(&store, &node, attributes)?;
    }
    Ok(())
}

/// `tessera pairs select`: rank 0 reads the table, draws the stratified sample and writes the
/// indices (a small array, staged and renamed like any output); the other ranks wait.
///
/// # Errors
/// A bad table or flag, an existing output.
pub fn select(job: &PairsSelectJob, comm: &dyn Comm) -> Result<()> {
    crate::comm::on_root(comm, || select_on_root(job))
}

fn select_on_root(job: &PairsSelectJob) -> Result<()> {
    if job.bins == 0 || job.bins > 10_000 {
        return Err(Error::parameter(
            "bins",
            format!("must be 1 to 10000, got {}", job.bins),
        ));
    }
    if job.per_bin == 0 {
        return Err(Error::parameter("per-bin", "must be at least 1"));
    }
    let table_address = Address::parse(&job.metadata)?;
    let target = Address::parse(&job.output)?;
    crate::io::safety::check_places(
        &[Place::Array(table_address.clone())],
        &[crate::io::safety::Written::new(
            "output",
            Place::Array(target.clone()),
        )],
    )?;
    let staging = crate::io::staging::Staging::plan(&target, job.overwrite, false)?;
    let table = metadata::Table::read(&table_address)?;
    let chosen = select::stratified(
        &table.column("mean1"),
        &table.column("sigma1"),
        job.by,
        job.bins as usize,
        grid::to_usize("per-bin", job.per_bin)?,
        job.seed,
    );
    let count = chosen.len();
    let values: Vec<i64> = chosen.into_iter().map(|i| i as i64).collect();
    let mut attrs = Map::new();
    attrs.insert("selected_from".into(), json!(job.metadata));
    attrs.insert(
        "selection".into(),
        serde_json::to_value(job).unwrap_or_default(),
    );
    write_small(
        &staging,
        Block::I64(ArrayD::from_shape_vec(IxDyn(&[count]), values).expect("1-D")),
        &attrs,
    )?;
    println!("selected {count} of {} pairs -> {target}", table.rows);
    Ok(())
}

/// One small array written whole by this process, staged and renamed.
fn write_small(
    staging: &crate::io::staging::Staging,
    block: Block,
    attributes: &Map<String, Value>,
) -> Result<()> {
    staging.clear_stale()?;
    let shape = block.shape();
    let spec = crate::ops::plain_spec(
        shape.clone(),
        block.dtype(),
        shape.iter().map(|&s| s.max(1)).collect(),
        Codec::Auto,
    );
    let writer = io::create(&staging.staging, &spec, &crate::comm::Local, false)?;
    if shape.iter().all(|&s| s > 0) {
        writer.write_box(Some((&Region::whole(&shape), &block)))?;
    }
    writer.set_attributes(attributes)?;
    writer.close()?;
    staging.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_images_and_units_never_straddle_them() {
        // 4 MiB of 48 KiB patches is 85: the largest divisor of 256 below is 64.
        assert_eq!(
            pairs_per_chunk(None, 49_152, Some(256), 1 << 20).unwrap(),
            64
        );
        assert_eq!(
            pairs_per_chunk(None, 1024, Some(100), 1 << 20).unwrap(),
            4000
        );
        assert_eq!(
            pairs_per_chunk(Some(7), 1024, Some(100), 1 << 20).unwrap(),
            7
        );
        assert!(pairs_per_chunk(Some(0), 1024, None, 10).is_err());
        for (m, pc, p) in [
            (1000u64, 10u64, 50u64),
            (1024, 64, 256),
            (90, 30, 30),
            (97, 5, 20),
        ] {
            let runs = plan_pair_runs(m, pc, 100_000, Some(p), "test").unwrap();
            assert_eq!(runs.first().unwrap().start, 0);
            assert_eq!(runs.last().unwrap().end, m);
            for r in &runs {
                assert!(r.start % pc == 0, "{r:?}");
                assert_eq!(
                    r.start / p,
                    (r.end - 1) / p,
                    "{r:?} straddles images of {p}"
                );
            }
        }
    }

    #[test]
    fn image_groups_and_covering_boxes() {
        let pair = |image, first: Vec<u64>, second: Vec<u64>| Pair {
            image,
            first,
            second,
            rotation: 0,
        };
        let pairs = vec![
            pair(0, vec![1, 2], vec![3, 0]),
            pair(0, vec![5, 5], vec![2, 8]),
            pair(2, vec![0, 0], vec![1, 1]),
        ];
        assert_eq!(image_groups(&pairs), vec![(0, 0..2), (2, 2..3)]);
        let (origin, region) = covering_box(&pairs[..2], &[4, 4], 3);
        assert_eq!(origin, vec![1, 0]);
        assert_eq!(region.start, vec![0, 0, 1, 0]);
        assert_eq!(region.shape, vec![1, 3, 8, 12]);
    }
}
