//! `tessera quilt`: cut (N, C, [Z,] Y, X) arrays into overlapping windows (`unstitch`) and
//! stitch per-window predictions back with weighted averaging (`stitch`). Window placement
//! is [`crate::grid::windows`]; the pure kernels are in [`kernel`].
//!
//! Distribution. Unstitch units are runs of whole patch-array chunks; each reads the bounding
//! box of its windows. Stitch units are runs of whole *bands* (kernel.rs: fixed row bands of
//! the output's slowest spatial axis, at least a window high) of one image. A unit reads only
//! the windows whose origin lies in its bands, band by band: each band's sums over the first
//! rows of the next band are carried to it, inside the unit and from one unit to the next on
//! the same rank (`StitchOp::carry`). Across ranks this is DESIGN.md's reverse halo exchange:
//! a rank holds its first band (its sums without the band before's) while it works through
//! its other units; when the stage ends, each rank sends its last band's carry to the rank
//! after, which adds it, writes the held band and only then journals that unit (`assign`,
//! `held`, `settle`). So every window is read once, by one rank. Only where the unit before
//! is not computed in this run (a resumed run whose journal has it) or on a GPU rank are the
//! windows of the band before re-read. The summation rule is fixed by the bands alone, so
//! the output is bit-identical for any unit size, memory limit and rank count. A unit's size
//! follows `--memory-limit` (and `TESSERA_UNIT_BYTES`), so memory is bounded by a band (and
//! the held one), not the volume.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
#[cfg(test)]
mod harness;
pub mod kernel;
pub mod memory;
pub mod params;
pub mod weed;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use self::params::{GeometryArgs, StitchJob, UnstitchJob};
use crate::comm::{Comm, ReduceOp};
use crate::error::{Error, Result};
use crate::exec::{Operation, UnitInfo};
use crate::grid::windows::{check_border, GeometryError, WindowGrid};
use crate::grid::{self, Region};
use crate::io::safety::Place;
use crate::io::{
    self, Address, ArrayReader, ArrayWriter, Block, Codec, CreateSpec, DType, Element,
};
use crate::with_dtype;
use kernel::{Accumulator, Bands, Blend, PatchRef, SplitAccumulator, Weighting};

/// The geometry a patch array carries in its `quilt` attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuiltGeometry {
    /// N, C, [Z,] Y, X of the images the patches come from.
    pub image_shape: Vec<u64>,
    pub window: Vec<u64>,
    pub step: Vec<u64>,
    /// Per spatial axis; 0 means none.
    pub border: Vec<u64>,
    pub border_weight: f64,
    pub blend: Blend,
    pub sigma: f64,
}

fn from_geometry_error(e: GeometryError) -> Error {
    Error::parameter(e.parameter, e.message)
}

impl QuiltGeometry {
    /// Validates flags against an image shape.
    ///
    /// # Errors
    /// Wrong rank, window larger than the image, bad step, border or weights; each names its flag.
    pub fn new(image_shape: &[u64], args: &GeometryArgs) -> Result<(QuiltGeometry, WindowGrid)> {
        if !(image_shape.len() == 4 || image_shape.len() == 5) {
            return Err(Error::parameter(
                "input",
                format!("quilting takes (N, C, Y, X) or (N, C, Z, Y, X) arrays; this one has shape {image_shape:?}"),
            ));
        }
        if args.window.is_empty() || args.step.is_empty() {
            return Err(Error::parameter(
                "window",
                "--window and --step are required",
            ));
        }
        let spatial = &image_shape[2..];
        let window = broadcast(&args.window, spatial.len());
        let step = broadcast(&args.step, spatial.len());
        let grid = WindowGrid::new(spatial, &window, &step, args.allow_gaps)
            .map_err(from_geometry_error)?;
        let border = check_border(&args.border, &window).map_err(from_geometry_error)?;
        // Every later size (patch count, patch bytes, f64 accumulators) is a product of these;
        // checked once here with room for 16 bytes per element, so plain arithmetic after is safe.
        let patches = crate::grid::checked_mul(
            "shape",
            image_shape[0],
            crate::grid::checked_product("window", &grid.counts())?,
        )?;
        let mut patch_shape = vec![patches, image_shape[1]];
        patch_shape.extend(&window);
        for (flag, shape) in [("shape", image_shape), ("window", &patch_shape[..])] {
            crate::grid::checked_mul(flag, crate::grid::checked_product(flag, shape)?, 16)?;
        }
        if !(0.0..=1.0).contains(&args.border_weight) {
            return Err(Error::parameter(
                "border-weight",
                format!("must be in [0, 1], got {}", args.border_weight),
            ));
        }
        if !(args.sigma.is_finite() && args.sigma > 0.0) {
            return Err(Error::parameter(
                "sigma",
                format!(
                    "must be a positive fraction of the window, got {}",
                    args.sigma
                ),
            ));
        }
        let geometry = QuiltGeometry {
            image_shape: image_shape.to_vec(),
            window,
            step,
            border,
            border_weight: args.border_weight,
            blend: args.blend,
            sigma: args.sigma,
        };
        Ok((geometry, grid))
    }

    pub fn grid(&self) -> WindowGrid {
        WindowGrid {
            image: self.image_shape[2..].to_vec(),
            window: self.window.clone(),
            step: self.step.clone(),
        }
    }

    pub fn weighting(&self) -> Weighting {
        Weighting {
            blend: self.blend,
            border: self.border.clone(),
            border_weight: self.border_weight,
            sigma: self.sigma,
        }
    }

    pub fn channels(&self) -> u64 {
        self.image_shape[1]
    }

    /// (M, C, *window).
    pub fn patch_shape(&self) -> Vec<u64> {
        let mut s = vec![
            self.image_shape[0] * self.grid().per_image(),
            self.channels(),
        ];
        s.extend(&self.window);
        s
    }
}

/// One value for every axis, or one per axis.
fn broadcast(values: &[u64], ndim: usize) -> Vec<u64> {
    if values.len() == 1 {
        vec![values[0]; ndim]
    } else {
        values.to_vec()
    }
}

/// The default positions address: `<output name>_positions.npy` beside the output.
fn default_positions(output: &Address) -> Result<Address> {
    let container = output.container();
    let stem = container
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let inner = match output {
        Address::Zarr { node, .. } => node.rsplit('/').next().unwrap_or("").to_string(),
        Address::Hdf5 { dataset, .. } => dataset.rsplit('/').next().unwrap_or("").to_string(),
        Address::Pt { key: Some(key), .. } => key.clone(),
        Address::Npy { .. } | Address::Pt { .. } | Address::PatchDir { .. } => String::new(),
    };
    let name = if inner.is_empty() {
        format!("{stem}_positions.npy")
    } else {
        format!("{stem}_{inner}_positions.npy")
    };
    Address::parse(&container.with_file_name(name).to_string_lossy())
}

/// Patches per chunk of a patch array: about 4 MiB of patches, at least one.
pub(crate) fn patches_per_chunk(patch_bytes: u64) -> u64 {
    ((4u64 << 20) / patch_bytes.max(1)).max(1)
}

/// `tessera quilt unstitch`.
pub struct UnstitchOp {
    targets: [Address; 2],
    input: Box<dyn ArrayReader>,
    geometry: QuiltGeometry,
    grid: WindowGrid,
    spec: CreateSpec,
    positions_spec: CreateSpec,
    runs: Vec<Range<u64>>,
    units: Vec<UnitInfo>,
    writers: RwLock<Vec<Box<dyn ArrayWriter>>>,
    /// The job and what it reads, for `--resume` and the output checks.
    parameters: Value,
    inputs: Vec<Place>,
    /// This rank's device (`--device`), and its GPU half when it is a GPU.
    device: crate::gpu::Selected,
    #[cfg(feature = "cuda")]
    gpu: Option<cuda::UnstitchGpu>,
}

impl UnstitchOp {
    /// Runs the kernels on `device` (the CPU unless told otherwise).
    pub fn use_device(&mut self, device: crate::gpu::Selected) {
        #[cfg(feature = "cuda")]
        if let crate::gpu::Backend::Cuda(gpu) = &device.backend {
            self.gpu = Some(cuda::UnstitchGpu::new(
                gpu.clone(),
                self.grid.clone(),
                self.geometry.channels(),
            ));
        }
        self.device = device;
    }

    /// Validates input and geometry; creates nothing.
    ///
    /// # Errors
    /// Missing input, wrong shape, bad geometry, bad output address.
    pub fn plan(job: &UnstitchJob) -> Result<UnstitchOp> {
        let input_addr = Address::parse(&job.input)?;
        let input = io::open(&input_addr)?;
        let meta = input.meta().clone();
        let (geometry, grid) = QuiltGeometry::new(&meta.shape, &job.geometry)?;
        let output = Address::parse(&job.output)?;
        let positions = match &job.positions {
            Some(p) => Address::parse(p)?,
            None => default_positions(&output)?,
        };
        let patch_shape = geometry.patch_shape();
        let m = patch_shape[0];
        let patch_bytes = patch_shape[1..].iter().product::<u64>() * meta.dtype.size() as u64;
        let per_chunk = job
            .patches_per_chunk
            .unwrap_or_else(|| patches_per_chunk(patch_bytes))
            .clamp(1, m.max(1));
        let mut chunks = vec![per_chunk];
        chunks.extend(&patch_shape[1..]);
        let mut attributes = Map::new();
        attributes.insert(
            "quilt".into(),
            serde_json::to_value(&geometry).unwrap_or(Value::Null),
        );
        attributes.insert("tessera_version".into(), json!(env!("CARGO_PKG_VERSION")));
        attributes.insert("source".into(), json!(job.input));
        let spec = CreateSpec {
            flat_chunk_keys: false,
            shape: patch_shape.clone(),
            dtype: meta.dtype,
            chunks,
            shards: None,
            codec: job.codec.for_format(&output)?,
            dimension_names: None,
            attributes,
        };
        let npos = 1 + grid.ndim() as u64;
        // A small index table: its format's own codec, whatever --codec says for patches.
        let positions_spec = crate::ops::plain_spec(
            vec![m, npos],
            DType::I64,
            vec![per_chunk, npos],
            Codec::Auto,
        );
        let runs = crate::exec::unit_runs(m, per_chunk, patch_bytes);
        let units = runs
            .iter()
            .map(|r| UnitInfo {
                label: format!("patches {}..{}", r.start, r.end),
                bytes_in: (r.end - r.start) * patch_bytes,
                bytes_out: (r.end - r.start) * patch_bytes,
            })
            .collect();
        Ok(UnstitchOp {
            targets: [output, positions],
            input,
            geometry,
            grid,
            spec,
            positions_spec,
            runs,
            units,
            writers: RwLock::new(Vec::new()),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            inputs: vec![Place::Array(input_addr)],
            device: crate::gpu::Selected::cpu("--device cpu"),
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// Cuts patches `run` out of the input, reading one bounding box per image touched.
    fn cut<T: Element>(&self, run: &Range<u64>) -> Result<Block> {
        let channels = self.geometry.channels();
        let mut shape = vec![(run.end - run.start) as usize, channels as usize];
        shape.extend(self.geometry.window.iter().map(|&w| w as usize));
        let mut out = ArrayD::<T>::default(IxDyn(&shape));
        let per_image = self.grid.per_image();
        for (n, windows) in device::image_segments(&self.grid, run.clone()) {
            let (lo, hi) = device::bounding_box(&self.grid, windows.clone());
            let mut start = vec![n, 0];
            start.extend(&lo);
            let mut bshape = vec![1, channels];
            bshape.extend(lo.iter().zip(&hi).map(|(l, h)| h - l));
            let block = self.input.read_box(&Region {
                start,
                shape: bshape,
            })?;
            let image = block.into_array::<T>().expect("input dtype");
            let image = image.index_axis(Axis(0), 0);
            for k in windows {
                let rel: Vec<u64> = self
                    .grid
                    .window_start(k)
                    .iter()
                    .zip(&lo)
                    .map(|(s, l)| s - l)
                    .collect();
                let patch = kernel::cut_window(&image, &rel, &self.geometry.window);
                out.index_axis_mut(Axis(0), (n * per_image + k - run.start) as usize)
                    .assign(&patch);
            }
        }
        Ok(T::into_block(out))
    }
}

impl Operation for UnstitchOp {
    type Output = Vec<(Region, Block)>;
    crate::exec::plan_fields!("quilt unstitch"; targets, units, parameters);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        vec![
            crate::exec::disk::PlannedOutput::array(&self.targets[0], &self.spec),
            crate::exec::disk::PlannedOutput::array(&self.targets[1], &self.positions_spec),
        ]
    }
    fn memory_per_unit(&self) -> u64 {
        // The unit's patches, plus the bounding boxes read (at most one image's worth).
        let image: u64 =
            self.geometry.image_shape[1..].iter().product::<u64>() * self.spec.dtype.size() as u64;
        self.units.iter().map(|u| u.bytes_out).max().unwrap_or(0) + image
    }
    fn fingerprint(&self) -> Value {
        json!({"geometry": self.geometry, "spec": format!("{:?}", self.spec), "units": self.runs.len()})
    }
    fn inputs(&self) -> Vec<Place> {
        self.inputs.clone()
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let patches = io::create(&staging[0], &self.spec, comm, resume)?;
        let positions = io::create(&staging[1], &self.positions_spec, comm, resume)?;
        *self.writers.write().expect("writers") = vec![patches, positions];
        Ok(())
    }
    /// A unit is whole chunks of patches and positions: with Zarr (or `.npy`) outputs, one
    /// unit's chunks are compressed while the next's are.
    fn write_lanes(&self) -> usize {
        crate::exec::lane_per_thread(&self.targets)
    }
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        Some(self.device.report())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let run = &self.runs[unit];
        #[cfg(feature = "cuda")]
        let patches = match &self.gpu {
            Some(gpu) => gpu.cut(self.input.as_ref(), run.clone())?,
            None => with_dtype!(self.spec.dtype, T => self.cut::<T>(run)?),
        };
        #[cfg(not(feature = "cuda"))]
        let patches = with_dtype!(self.spec.dtype, T => self.cut::<T>(run)?);
        let per_image = self.grid.per_image();
        let npos = 1 + self.grid.ndim();
        // One row [n, z?, y, x] per patch, each window's start computed once.
        let rows: Vec<i64> = run
            .clone()
            .flat_map(|m| {
                let start = self.grid.window_start(m % per_image);
                std::iter::once((m / per_image) as i64).chain(start.into_iter().map(|s| s as i64))
            })
            .collect();
        let positions =
            ArrayD::from_shape_vec(IxDyn(&[(run.end - run.start) as usize, npos]), rows)
                .expect("one row of 1 + ndim values per patch");
        let region = Region::slab(&self.spec.shape, 0, run.clone());
        let prow = Region {
            start: vec![run.start, 0],
            shape: vec![run.end - run.start, npos as u64],
        };
        Ok(vec![(region, patches), (prow, Block::I64(positions))])
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writers = self.writers.read().expect("writers");
        io::write_parts(&writers, part.as_ref().map(|(_, p)| p.as_slice()))
    }
    fn finish(&self, _comm: &dyn Comm) -> Result<()> {
        let writers = std::mem::take(&mut *self.writers.write().expect("writers"));
        let mut it = writers.into_iter();
        if let Some(patches) = it.next() {
            patches.set_attributes(&self.spec.attributes)?;
            patches.close()?;
        }
        for w in it {
            w.close()?;
        }
        Ok(())
    }
}

/// The border per axis of a border mask of `window`, once the mask is known to be possible
/// and to fit in memory.
///
/// # Errors
/// A border of half the window or more, a window with a zero size, a mask too large for the
/// memory.
fn mask_border(window: &[u64], border: &[u64]) -> Result<Vec<u64>> {
    let border = check_border(border, window).map_err(from_geometry_error)?;
    if window.is_empty() || window.contains(&0) {
        return Err(Error::parameter(
            "window",
            "needs positive sizes, e.g. 128,128",
        ));
    }
    let bytes = crate::grid::checked_product("window", window)?;
    crate::grid::to_usize("window", bytes)?;
    crate::exec::memory::check(
        &format!("a uint8 mask of --window {}", crate::grid::join(window)),
        bytes,
    )?;
    Ok(border)
}

/// `tessera quilt border-mask`: a small array, written whole by one process, staged like any
/// output.
///
/// # Errors
/// A bad window/border, or an output problem.
pub fn write_border_mask(
    output: &str,
    window: &[u64],
    border: &[u64],
    overwrite: bool,
) -> Result<()> {
    let border = mask_border(window, border)?;
    let target = Address::parse(output)?;
    let spec = crate::ops::plain_spec(
        window.to_vec(),
        crate::io::DType::U8,
        window.to_vec(),
        crate::io::Codec::Auto,
    );
    crate::exec::disk::check_outputs(
        &[crate::exec::disk::PlannedOutput::array(&target, &spec)],
        crate::io::safety::free_disk_bytes,
    )?;
    let mask = kernel::border_mask(window, &border);
    let staging = crate::io::staging::Staging::plan(&target, overwrite, false)?;
    staging.clear_stale()?;
    let writer = crate::io::create(&staging.staging, &spec, &crate::comm::Local, false)?;
    writer.write_box(Some((
        &crate::grid::Region::whole(window),
        &crate::io::Block::U8(mask),
    )))?;
    let mut attrs = serde_json::Map::new();
    attrs.insert("border".into(), serde_json::json!(border));
    writer.set_attributes(&attrs)?;
    writer.close()?;
    staging.commit()?;
    println!("wrote {target}");
    Ok(())
}

/// `tessera quilt stitch`.
pub struct StitchOp {
    targets: Vec<Address>,
    patches: Box<dyn ArrayReader>,
    variance: Option<Box<dyn ArrayReader>>,
    geometry: QuiltGeometry,
    grid: WindowGrid,
    window_weights: ArrayD<f64>,
    /// The largest finite |value| of float64 patches and variances the f64 sums hold.
    limits: ValueLimits,
    mean_spec: CreateSpec,
    weights_spec: Option<CreateSpec>,
    std_spec: Option<CreateSpec>,
    /// (image, rows of its slowest spatial axis) per unit: whole bands.
    slabs: Vec<(u64, Range<u64>)>,
    /// The bands that fix the summation order (kernel.rs).
    bands: Bands,
    /// Window starts along the first spatial axis.
    starts: Vec<u64>,
    /// The last unit's carry, for this rank's next unit (units run one at a time, in order),
    /// or after the last, for the rank after (`settle`).
    carry: Mutex<Option<Carry>>,
    /// Which carries cross a rank boundary in this run (`assign`).
    handover: OnceLock<Handover>,
    /// Whether `--memory-limit` leaves room for a held band beside two units in flight;
    /// if not, no band is held and carries across ranks are re-read.
    holds_band: bool,
    /// This rank's first band, summed without the band before, until that band's carry
    /// arrives from the rank before (`settle`).
    held_band: Mutex<Option<Held>>,
    /// Patch (and variance) bytes this rank has read.
    read_bytes: AtomicU64,
    units: Vec<UnitInfo>,
    memory_per_unit: u64,
    /// `--memory-limit`, bytes: bounds the units in flight, write lanes included.
    memory_limit: u64,
    /// Patches read at once (a band's windows, or fewer when memory is tight).
    batch: u64,
    writers: RwLock<Vec<Box<dyn ArrayWriter>>>,
    nan_values: AtomicU64,
    /// Accumulators and mean blocks of finished units, reused (a third of the stitch time
    /// went to faulting in fresh ones).
    spare_accumulators: crate::exec::Spares<SplitAccumulator>,
    spare_means: crate::exec::Spares<Block>,
    /// Read batches of patches and variances, reused (fresh ones were a quarter of the
    /// stitch's time in page faults, measured).
    spare_batches: crate::exec::Spares<Block>,
    parameters: Value,
    inputs: Vec<Place>,
    /// This rank's device (`--device`), and its GPU half when it is a GPU.
    device: crate::gpu::Selected,
    #[cfg(feature = "cuda")]
    gpu: Option<cuda::StitchGpu>,
}

/// The carries between ranks: this rank's first unit waits for one, its last sends one.
#[derive(Debug, Default, PartialEq, Eq)]
struct Handover {
    /// (unit, rank): this rank's first unit, whose first band needs the carry of the unit
    /// before, which that rank computes.
    hold: Option<(usize, usize)>,
    /// (unit, rank): this rank's last unit, whose carry the rank after needs.
    send: Option<(usize, usize)>,
}

impl Handover {
    /// Rank `rank`'s carries, given every rank's units in this run (`pending[rank][stage]`)
    /// and which units follow on from the one before (same image: `joined(u)` for units
    /// `u - 1` and `u`).
    fn of(rank: usize, pending: &[Vec<Vec<usize>>], joined: impl Fn(usize) -> bool) -> Handover {
        let owner = |u: usize| {
            pending
                .iter()
                .position(|stages| stages.iter().any(|ids| ids.contains(&u)))
        };
        let mine = pending[rank].concat();
        let other = |u: usize| owner(u).filter(|&q| q != rank);
        Handover {
            hold: mine
                .first()
                .filter(|&&u| u > 0 && joined(u))
                .and_then(|&u| other(u - 1).map(|q| (u, q))),
            send: mine
                .last()
                .filter(|&&v| joined(v + 1))
                .and_then(|&v| other(v + 1).map(|q| (v, q))),
        }
    }
}

/// A rank's first band, waiting for its carry (the band's sums over the rows it reaches).
struct Held {
    image: u64,
    band: u64,
    sums: SplitAccumulator,
}

/// Band `band - 1`'s partial sums over the first rows of band `band` of image `image`.
struct Carry {
    image: u64,
    band: u64,
    sums: Accumulator,
}

/// The largest finite |value| of float64 patches (and variances) whose weighted f64 sums
/// stay finite: every pixel sums at most `overlap` windows (the product over axes of
/// ceil(window / step)), each weighted at most the largest window weight; with `--std` the
/// second moments add weighted squares. Smaller types cannot reach these limits (float32's
/// largest times 2^900 windows is still an f64), so only float64 batches are looked at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueLimits {
    /// Patch values (the square root of the variances' limit with `--std`).
    pub patches: f64,
    /// Variance values, and every sum.
    pub sums: f64,
}

impl ValueLimits {
    pub fn new(geometry: &QuiltGeometry, window_weights: &ArrayD<f64>, with_std: bool) -> Self {
        let overlap = geometry
            .window
            .iter()
            .zip(&geometry.step)
            .fold(1f64, |k, (&w, &s)| k * w.div_ceil(s.max(1)) as f64);
        let heaviest = window_weights.iter().fold(1f64, |m, &w| m.max(w));
        let sums = f64::MAX / (overlap * heaviest);
        ValueLimits {
            patches: if with_std { sums.sqrt() } else { sums },
            sums,
        }
    }

    /// Refuses a float64 batch of patches (or of `variances`) whose first patch is number
    /// `first` holding a finite value beyond the limit (NaN and infinities are the
    /// accumulator's to handle: left out, or an infinite mean).
    ///
    /// # Errors
    /// [`Error::Parameter`] naming `--input` (or `--variance`), the patch, the value and the
    /// limit.
    pub fn check(&self, batch: &Block, first: u64, variances: bool) -> Result<()> {
        match batch {
            Block::F64(a) => self.check_f64(&a.view(), first, variances),
            _ => Ok(()),
        }
    }

    /// [`ValueLimits::check`] on a float64 batch seen as a view (in-memory patches,
    /// [`memory`]).
    ///
    /// # Errors
    /// As [`ValueLimits::check`].
    pub fn check_f64(
        &self,
        a: &ndarray::ArrayViewD<'_, f64>,
        first: u64,
        variances: bool,
    ) -> Result<()> {
        let limit = if variances { self.sums } else { self.patches };
        let Some((i, v)) = a
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_finite() && v.abs() > limit)
        else {
            return Ok(());
        };
        let per_patch = a.len() / a.shape().first().copied().unwrap_or(1).max(1);
        Err(Error::parameter(
            if variances { "variance" } else { "input" },
            format!(
                "patch {} holds {v:e}, beyond {limit:.4e}: the float64 sums of the windows \
                 that overlap a pixel{} would overflow; scale the patches down",
                first + (i / per_patch.max(1)) as u64,
                if variances || self.patches == self.sums {
                    ""
                } else {
                    " (squared, for --std)"
                }
            ),
        ))
    }
}

/// The output element types (f32, f64): each value rounded once from its f64.
pub trait OutElement: Element {
    fn from_f64(x: f64) -> Self;
}

impl OutElement for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl OutElement for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// Bytes per row (of the first spatial axis) of what a stitch unit holds.
struct RowBytes {
    /// f64 accumulators: sums (and second moments) per channel, weight sums.
    accumulator: u64,
    /// Outputs: mean and std per channel in the output type, weight sums.
    output: u64,
}

/// What `StitchOp::plan` opened: the patch array (and variances), the run's input places,
/// the geometry, and the patches' type.
struct StitchInputs {
    patches: Box<dyn ArrayReader>,
    variance: Option<Box<dyn ArrayReader>>,
    inputs: Vec<Place>,
    geometry: QuiltGeometry,
    dtype: DType,
}

/// Opens the patches (and variances), refusing arrays whose shape is not the geometry's.
fn open_stitch_inputs(job: &StitchJob) -> Result<StitchInputs> {
    let patches_addr = Address::parse(&job.input)?;
    let patches = io::open(&patches_addr)?;
    let mut inputs = vec![Place::Array(patches_addr.clone())];
    let pmeta = patches.meta().clone();
    let geometry = stitch_geometry(&patches_addr, &pmeta, job)?;
    let expected = geometry.patch_shape();
    if pmeta.shape != expected {
        return Err(Error::mismatch(
            format!("patch array {patches_addr}: shape"),
            format!("{expected:?} (from its geometry)"),
            format!("{:?}", pmeta.shape),
        ));
    }
    let variance = match &job.variance {
        Some(v) => {
            let addr = Address::parse(v)?;
            let r = io::open(&addr)?;
            inputs.push(Place::Array(addr.clone()));
            if r.meta().shape != expected {
                return Err(Error::mismatch(
                    format!("variance {addr}: shape"),
                    format!("{expected:?}"),
                    format!("{:?}", r.meta().shape),
                ));
            }
            Some(r)
        }
        None => None,
    };
    Ok(StitchInputs {
        patches,
        variance,
        inputs,
        geometry,
        dtype: pmeta.dtype,
    })
}

/// The stitch's per-row and per-patch byte counts, from which its memory plan is made.
struct StitchSizes {
    /// Spatial shape of an image.
    spatial: Vec<u64>,
    channels: u64,
    /// Elements of one output row (every spatial axis but the first).
    row_elems: u64,
    row_bytes: RowBytes,
    /// One patch (and its variance) as read and as f64.
    patch_bytes_f64: u64,
    /// One patch as stored.
    patch_bytes: u64,
    with_var: u64,
    out_size: u64,
    /// Elements of the whole output (every image, channel and voxel).
    image_elems: u64,
}

impl StitchSizes {
    fn new(geometry: &QuiltGeometry, dtype: DType, out_dtype: DType, variance: bool) -> Self {
        let spatial = geometry.image_shape[2..].to_vec();
        let c = geometry.channels();
        let row_elems: u64 = spatial[1..].iter().product();
        let patch_elems: u64 = c * geometry.window.iter().product::<u64>();
        let with_var = u64::from(variance);
        StitchSizes {
            channels: c,
            row_elems,
            row_bytes: RowBytes {
                accumulator: row_elems * 8 * (c * (1 + with_var) + 1),
                output: row_elems * (c * (out_dtype.size() as u64) * 2 + 8),
            },
            // Patches are read in batches (a whole window row when memory allows), as read and
            // as f64 (values, and variances when asked).
            patch_bytes_f64: patch_elems * (dtype.size() as u64 + 8) * (1 + with_var),
            patch_bytes: patch_elems * dtype.size() as u64,
            with_var,
            out_size: out_dtype.size() as u64,
            image_elems: geometry.image_shape.iter().product(),
            spatial,
        }
    }

    /// Default chunk rows: up to 64 (3-D) or 256 (2-D), halved until one unit fits `limit`.
    fn default_chunk_rows(&self, limit: u64) -> u64 {
        let slab_bytes = |rows: u64| rows * (self.row_bytes.accumulator + self.row_bytes.output);
        let ndim = self.spatial.len();
        let mut rows = self.spatial[0].min(if ndim == 3 { 64 } else { 256 });
        while rows > 1 && 2 * (slab_bytes(rows) + self.patch_bytes_f64) > limit {
            rows /= 2;
        }
        rows
    }
}

/// The stitch's outputs: addresses (mean, then weights and std when asked) and specs.
struct StitchOutputs {
    targets: Vec<Address>,
    mean: CreateSpec,
    weights: Option<CreateSpec>,
    std: Option<CreateSpec>,
}

/// The outputs' specs (chunks from the job, else `default_rows` rows of whole planes up to
/// 512), every codec refused before staging if an output's format cannot take it.
fn stitch_outputs(
    job: &StitchJob,
    geometry: &QuiltGeometry,
    out_dtype: DType,
    default_rows: u64,
) -> Result<StitchOutputs> {
    let image = &geometry.image_shape;
    let spatial = &image[2..];
    let chunks = job.chunks.clone().unwrap_or_else(|| {
        let mut c = vec![1, 1, default_rows];
        c.extend(spatial[1..].iter().map(|&d| d.min(512)));
        c
    });
    let mean_spec = crate::ops::plain_spec(image.clone(), out_dtype, chunks, job.codec);
    let mean_spec = mean_spec.validated()?;
    let chunks = mean_spec.chunks.clone();
    let mut spatial_spec = mean_spec.clone();
    spatial_spec.shape = std::iter::once(image[0])
        .chain(spatial.iter().copied())
        .collect();
    spatial_spec.chunks = std::iter::once(1)
        .chain(chunks[2..].iter().copied())
        .collect();
    let weights_spec = job.weights.as_ref().map(|_| spatial_spec.clone());
    let std_spec = job.std.as_ref().map(|_| mean_spec.clone());
    let mut targets = vec![Address::parse(&job.output)?];
    for extra in [&job.weights, &job.std].into_iter().flatten() {
        targets.push(Address::parse(extra)?);
    }
    // Refused before staging; each output's own format resolves `auto` in io::create.
    for target in &targets {
        job.codec.for_format(target)?;
    }
    Ok(StitchOutputs {
        targets,
        mean: mean_spec,
        weights: weights_spec,
        std: std_spec,
    })
}

/// How a stitch uses its memory: patches per batch, bands per unit, the held band's bytes
/// (when there is room to hold one), and a unit's bytes.
struct StitchMemory {
    batch: u64,
    blocks: u64,
    hold: Option<u64>,
    unit_memory: u64,
}

/// Sizes batches and units so that two units in flight fit `limit` (the held band first, when
/// two one-band units still fit beside it), refusing a limit too small for one band.
fn plan_stitch_memory(
    job: &StitchJob,
    grid: &WindowGrid,
    bands: &Bands,
    starts: &[u64],
    sizes: &StitchSizes,
    limit: u64,
) -> Result<StitchMemory> {
    let spatial = &sizes.spatial;
    let row_bytes = &sizes.row_bytes;
    let patch_bytes_f64 = sizes.patch_bytes_f64;
    let per_row_windows = grid.per_image() / grid.counts()[0];
    // A unit of k bands holds its k bands of output rows, one band's accumulator (the band
    // and the rows its windows reach into the next), the carry, and a batch of patches.
    let reach = bands.reach(0);
    let band_memory = (reach.end - reach.start + bands.window - 1) * row_bytes.accumulator;
    let output_memory = |k: u64| (k * bands.rows).min(spatial[0]) * row_bytes.output;
    let one_band = output_memory(1) + band_memory;
    let room = (limit / 2).saturating_sub(one_band);
    if room < patch_bytes_f64 {
        return Err(Error::parameter(
            "memory-limit",
            format!(
                "{} is too small: one band of {} output rows (the output's chunk rows, at least a window high) with its accumulator and carry, and one patch, need {:.2} MiB per unit, two units in flight {:.2} MiB; raise it or use smaller --chunks",
                job.memory_limit,
                bands.rows.min(spatial[0]),
                (one_band + patch_bytes_f64) as f64 / 1048576.0,
                2.0 * (one_band + patch_bytes_f64) as f64 / 1048576.0
            ),
        ));
    }
    // A held band (its own rows' f64 sums, waiting for the rank before's carry) comes off
    // the top when what is left still holds two units of one band; else no band is held
    // and a rank's first unit re-reads the windows of the band before.
    let held_memory = bands.rows.min(spatial[0]) * row_bytes.accumulator;
    let left = (limit.saturating_sub(held_memory) / 2).saturating_sub(one_band);
    let hold = (left >= patch_bytes_f64).then_some(held_memory);
    let limit = limit - hold.unwrap_or(0);
    let room = (limit / 2).saturating_sub(one_band);
    // A band's windows in one batch when memory allows: then every row part of the
    // accumulator (one per thread) has windows to add; a batch of one window row covers
    // only a window's height of the band's rows, leaving the other threads idle.
    let band_windows = (0..bands.count())
        .map(|g| bands.windows(starts, g))
        .map(|r| (r.end - r.start) * per_row_windows)
        .max()
        .unwrap_or(1);
    let batch = (room / patch_bytes_f64).clamp(1, band_windows.max(1));
    let unit_memory = |k: u64| output_memory(k) + band_memory + batch * patch_bytes_f64;
    // Units also stay near the target unit size (mean bytes written), as other ops' do.
    let mean_bytes = |k: u64| {
        (k * bands.rows).min(spatial[0]) * sizes.row_elems * sizes.channels * sizes.out_size
    };
    let target = crate::exec::target_unit_bytes(sizes.image_elems * sizes.out_size);
    let mut blocks = 1;
    while blocks * bands.rows < spatial[0]
        && 2 * unit_memory(blocks + 1) <= limit
        && mean_bytes(blocks + 1) <= target
    {
        blocks += 1;
    }
    Ok(StitchMemory {
        batch,
        blocks,
        hold,
        unit_memory: unit_memory(blocks),
    })
}

/// The stitch's units: runs of `blocks` bands of each image, with what each reads and writes.
fn stitch_units(
    geometry: &QuiltGeometry,
    bands: &Bands,
    starts: &[u64],
    sizes: &StitchSizes,
    blocks: u64,
) -> (Vec<(u64, Range<u64>)>, Vec<UnitInfo>) {
    let image = &geometry.image_shape;
    let grid = geometry.grid();
    let per_row_windows = grid.per_image() / grid.counts()[0];
    let rows_runs = grid::block_aligned_runs(sizes.spatial[0], bands.rows, blocks);
    let mut slabs = Vec::new();
    for n in 0..image[0] {
        slabs.extend(rows_runs.iter().map(|r| (n, r.clone())));
    }
    let units = slabs
        .iter()
        .map(|(n, r)| {
            // The windows of the unit's bands: what it reads (unless it re-reads a carry).
            let first = bands.windows(starts, bands.of_row(r.start)).start;
            let end = bands.windows(starts, bands.of_row(r.end - 1)).end;
            UnitInfo {
                label: format!("image {n} rows {}..{}", r.start, r.end),
                bytes_in: (end - first)
                    * per_row_windows
                    * sizes.patch_bytes
                    * (1 + sizes.with_var),
                bytes_out: (r.end - r.start) * sizes.row_elems * sizes.channels * sizes.out_size,
            }
        })
        .collect();
    (slabs, units)
}

/// A unit's outputs in the output type, filled band by band.
struct UnitOutputs<O> {
    first_row: u64,
    /// (1, C, rows, ...)
    mean: ArrayD<O>,
    /// (1, rows, ...)
    weights: Option<ArrayD<O>>,
    /// (1, C, rows, ...)
    std: Option<ArrayD<O>>,
}

impl<O: OutElement> UnitOutputs<O> {
    /// Writes the final rows `band` (absolute) of `acc`.
    fn fill(&mut self, acc: &SplitAccumulator, band: Range<u64>) {
        let at = Slice::from(
            (band.start - self.first_row) as usize..(band.end - self.first_row) as usize,
        );
        let mut mean = self.mean.index_axis_mut(Axis(0), 0);
        mean.slice_axis_inplace(Axis(1), at);
        acc.mean_rows_into(band.clone(), mean, O::from_f64);
        if let Some(w) = self.weights.as_mut() {
            let mut w = w.index_axis_mut(Axis(0), 0);
            w.slice_axis_inplace(Axis(0), at);
            acc.weights_rows_into(band.clone(), w, O::from_f64);
        }
        if let Some(std) = self.std.as_mut() {
            let mut std = std.index_axis_mut(Axis(0), 0);
            std.slice_axis_inplace(Axis(1), at);
            acc.std_rows_into(band, std, O::from_f64);
        }
    }
}

/// The geometry to stitch with: the patches' `quilt` attribute, with the weighting flags the
/// user gave, or (bare patches) `--shape` and the geometry flags. A placement flag that
/// contradicts the attribute is refused.
fn stitch_geometry(
    patches: &Address,
    meta: &io::ArrayMeta,
    job: &StitchJob,
) -> Result<QuiltGeometry> {
    let Some(attribute) = meta.attributes.get("quilt") else {
        let Some(shape) = &job.shape else {
            return Err(Error::address(
                patches.to_string(),
                "has no `quilt` geometry attribute; give --shape N,C,[Z,]Y,X and the --window/--step/--border flags used to unstitch",
            ));
        };
        return Ok(QuiltGeometry::new(shape, &job.geometry.over(&GeometryArgs::default()))?.0);
    };
    let g: QuiltGeometry = serde_json::from_value(attribute.clone()).map_err(|e| {
        Error::address(
            patches.to_string(),
            format!("corrupt `quilt` attribute: {e}"),
        )
    })?;
    let ndim = g.window.len();
    let given = &job.geometry;
    let placement = [
        ("window", &given.window, &g.window),
        ("step", &given.step, &g.step),
        ("border", &given.border, &g.border),
    ];
    for (flag, mine, theirs) in placement {
        if !mine.is_empty() && &broadcast(mine, ndim) != theirs {
            return Err(Error::parameter(
                flag,
                format!(
                    "{} contradicts the patches' own {flag} {} (their `quilt` attribute); leave the flag out",
                    grid::join(mine),
                    grid::join(theirs)
                ),
            ));
        }
    }
    if let Some(shape) = job.shape.as_ref().filter(|s| **s != g.image_shape) {
        return Err(Error::parameter(
            "shape",
            format!(
                "{} contradicts the patches' image shape {} (their `quilt` attribute); leave the flag out",
                grid::join(shape),
                grid::join(&g.image_shape)
            ),
        ));
    }
    // Re-validated (attributes can be edited by hand), with the weighting flags applied.
    let attribute_args = GeometryArgs {
        window: g.window.clone(),
        step: g.step.clone(),
        border: g.border.clone(),
        border_weight: g.border_weight,
        blend: g.blend,
        sigma: g.sigma,
        allow_gaps: true,
    };
    let args = given.over(&attribute_args);
    if args.blend != g.blend {
        tracing::info!(
            "stitching with --blend {} (the patches were cut with {})",
            format!("{:?}", args.blend).to_lowercase(),
            format!("{:?}", g.blend).to_lowercase()
        );
    }
    Ok(QuiltGeometry::new(&g.image_shape, &args)?.0)
}

impl StitchOp {
    /// Validates patches, geometry and outputs; sizes the slabs from the memory limit.
    ///
    /// # Errors
    /// Missing geometry, patch count or shape that does not match it, bad flags.
    pub fn plan(job: &StitchJob) -> Result<StitchOp> {
        let StitchInputs {
            patches,
            variance,
            inputs,
            geometry,
            dtype,
        } = open_stitch_inputs(job)?;
        let grid = geometry.grid();
        let out_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let limit = crate::units::parse_size(&job.memory_limit)
            .map_err(|m| Error::parameter("memory-limit", m))?;
        let sizes = StitchSizes::new(&geometry, dtype, out_dtype, variance.is_some());
        let outputs = stitch_outputs(job, &geometry, out_dtype, sizes.default_chunk_rows(limit))?;
        let spatial = &geometry.image_shape[2..];
        let bands = Bands::new(
            outputs.mean.chunks[2].min(spatial[0]),
            geometry.window[0],
            spatial[0],
        );
        let starts = grid.starts(0);
        let memory = plan_stitch_memory(job, &grid, &bands, &starts, &sizes, limit)?;
        let (slabs, units) = stitch_units(&geometry, &bands, &starts, &sizes, memory.blocks);
        let StitchOutputs {
            targets,
            mean: mean_spec,
            weights: weights_spec,
            std: std_spec,
        } = outputs;
        let (batch, hold_memory) = (memory.batch, memory.hold);
        let unit_memory = memory.unit_memory;
        let window_weights = kernel::weights(&geometry.window, &geometry.weighting());
        let limits = ValueLimits::new(&geometry, &window_weights, std_spec.is_some());
        Ok(StitchOp {
            targets,
            patches,
            variance,
            // A held band, when there is room for it, shared out over the two units in flight.
            memory_per_unit: unit_memory + hold_memory.map_or(0, |m| m.div_ceil(2)),
            memory_limit: limit,
            holds_band: hold_memory.is_some(),
            batch,
            geometry,
            grid,
            window_weights,
            limits,
            mean_spec,
            weights_spec,
            std_spec,
            slabs,
            bands,
            starts,
            carry: Mutex::new(None),
            handover: OnceLock::new(),
            held_band: Mutex::new(None),
            read_bytes: AtomicU64::new(0),
            units,
            writers: RwLock::new(Vec::new()),
            nan_values: AtomicU64::new(0),
            spare_accumulators: Default::default(),
            spare_means: Default::default(),
            spare_batches: Default::default(),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            inputs,
            device: crate::gpu::Selected::cpu("--device cpu"),
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// The box of the output (1, C, rows, ...) that unit (image `n`, `rows`) writes.
    fn slab_region(&self, n: u64, rows: &Range<u64>) -> Region {
        let mut r = Region::whole(&self.geometry.image_shape);
        r.start[0] = n;
        r.shape[0] = 1;
        r.start[2] = rows.start;
        r.shape[2] = rows.end - rows.start;
        r
    }

    /// Runs the kernels on `device` (the CPU unless told otherwise).
    ///
    /// # Errors
    /// Device memory for the window weights.
    pub fn use_device(&mut self, device: crate::gpu::Selected) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let crate::gpu::Backend::Cuda(gpu) = &device.backend {
            self.gpu = Some(cuda::StitchGpu::new(
                gpu.clone(),
                &self.window_weights,
                self.grid.clone(),
                self.geometry.channels(),
                self.batch,
                self.bands.rows,
                self.limits,
            )?);
        }
        self.device = device;
        Ok(())
    }

    /// One unit on the GPU: the same outputs as the CPU path, from the stitch kernel.
    #[cfg(feature = "cuda")]
    fn compute_gpu(&self, gpu: &cuda::StitchGpu, unit: usize) -> Result<Vec<(Region, Block)>> {
        let (n, rows) = self.slabs[unit].clone();
        let done = gpu.stitch(
            self.patches.as_ref(),
            self.variance.as_deref(),
            n,
            rows.clone(),
            self.mean_spec.dtype,
            self.weights_spec.is_some(),
        )?;
        self.nan_values.fetch_add(done.left_out, Ordering::Relaxed);
        self.read_bytes
            .fetch_add(done.bytes_read, Ordering::Relaxed);
        let mean_region = self.slab_region(n, &rows);
        let mut out = vec![(mean_region.clone(), done.mean)];
        if let Some(w) = done.weights {
            let mut r = Region::whole(&w.shape());
            r.start[0] = n;
            r.start[1] = rows.start;
            out.push((r, w));
        }
        if let Some(std) = done.std {
            out.push((mean_region, std));
        }
        Ok(out)
    }
}

impl StitchOp {
    /// One unit on the CPU, band by band: each band's windows read once and summed over the
    /// rows they reach, the carry from the band before added, the band's rows written out,
    /// the rest carried on (kernel.rs' banded rule).
    /// A unit that waits for the rank before's carry writes all but its first band, which it
    /// holds (`settle` writes it).
    fn compute_cpu<O: OutElement>(&self, unit: usize) -> Result<Vec<(Region, Block)>> {
        let (n, rows) = self.slabs[unit].clone();
        let (first, last) = (
            self.bands.of_row(rows.start),
            self.bands.of_row(rows.end - 1),
        );
        let holding = self.held(unit);
        let written = if holding {
            self.bands.rows_of(first).end.min(rows.end)..rows.end
        } else {
            rows.clone()
        };
        let mut out = self.unit_outputs::<O>(&written);
        let mut carry = if holding {
            None
        } else {
            self.carry_into(n, first)?
        };
        for g in first..=last {
            let mut acc = self.accumulate_band(n, g)?;
            if let Some(c) = &carry {
                acc.add_rows(c);
            }
            let band = self.bands.rows_of(g);
            carry = Some(acc.copy_rows(band.end..acc.rows().end));
            if holding && g == first {
                // Only the band's own rows wait; its reach into the next is carried on above.
                *self.held_band.lock().expect("held band") = Some(Held {
                    image: n,
                    band: g,
                    sums: SplitAccumulator {
                        parts: vec![acc.copy_rows(band)],
                    },
                });
                self.spare_accumulators.keep(acc);
            } else {
                out.fill(&acc, band);
                self.spare_accumulators.keep(acc);
            }
        }
        *self.carry.lock().expect("carry") = carry.map(|sums| Carry {
            image: n,
            band: last + 1,
            sums,
        });
        if written.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.unit_parts(n, &written, out))
    }

    /// The empty carry into band `g` (band g - 1's sums over band g's first rows).
    fn empty_carry(&self, g: u64) -> Accumulator {
        let rows = self.bands.rows_of(g).start..self.bands.reach(g - 1).end;
        let (origin, block) = self.rows_box(&rows);
        Accumulator::new(
            self.geometry.channels() as usize,
            &origin,
            &block,
            self.variance.is_some(),
        )
    }

    /// The carry this rank's last unit `unit` left, as bytes for the rank after.
    fn outgoing_carry(&self, unit: usize) -> Result<Vec<u8>> {
        let (n, rows) = &self.slabs[unit];
        let next = self.bands.of_row(rows.end - 1) + 1;
        let kept = self.carry.lock().expect("carry").take();
        kept.filter(|c| c.image == *n && c.band == next)
            .map(|c| c.sums.to_bytes())
            .ok_or_else(|| {
                Error::parameter(
                    "internal",
                    format!("unit {unit} left no carry for the rank after"),
                )
            })
    }

    /// The held first band completed with the carry `bytes` from the rank before: its output
    /// parts (the rest of its unit was written when computed).
    fn complete_held(&self, bytes: Option<&Vec<u8>>) -> Result<Vec<(Region, Block)>> {
        let missing = |what: &str| Error::parameter("internal", format!("stitch: {what}"));
        let mut held = self
            .held_band
            .lock()
            .expect("held band")
            .take()
            .ok_or_else(|| missing("no band held for the carry of the rank before"))?;
        let bytes = bytes.ok_or_else(|| missing("no carry came from the rank before"))?;
        let mut carry = self.empty_carry(held.band);
        if !carry.set_from_bytes(bytes) {
            return Err(missing("the carry from the rank before has the wrong size"));
        }
        held.sums.add_rows(&carry);
        let rows = self.bands.rows_of(held.band);
        let parts = match self.mean_spec.dtype {
            DType::F64 => self.band_parts::<f64>(held.image, &held.sums, rows),
            _ => self.band_parts::<f32>(held.image, &held.sums, rows),
        };
        Ok(parts)
    }

    /// The output parts of `rows` (one band) of image `n` from finished sums.
    fn band_parts<O: OutElement>(
        &self,
        n: u64,
        sums: &SplitAccumulator,
        rows: Range<u64>,
    ) -> Vec<(Region, Block)> {
        let mut out = self.unit_outputs::<O>(&rows);
        out.fill(sums, rows.clone());
        self.unit_parts(n, &rows, out)
    }

    /// Whether any part of this rank computes on a GPU (whose stitch re-reads instead).
    fn on_gpu(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            return true;
        }
        false
    }

    /// The sums of band `g` of image `n`: its windows (origin in the band), each read once,
    /// over the rows they reach. Their NaN values are counted here, once.
    fn accumulate_band(&self, n: u64, g: u64) -> Result<SplitAccumulator> {
        let windows = self.bands.windows(&self.starts, g);
        let mut acc = self.accumulator(self.bands.reach(g), &windows);
        self.add_windows(&mut acc, n, windows)?;
        self.nan_values
            .fetch_add(acc.nan_pixels(), Ordering::Relaxed);
        Ok(acc)
    }

    /// The carry into band `g` of image `n` (band g - 1's sums over band g's first rows): the
    /// one this rank's previous unit left when it ended just before, else re-read from the
    /// windows of band g - 1 that reach into band g.
    fn carry_into(&self, n: u64, g: u64) -> Result<Option<Accumulator>> {
        let kept = self.carry.lock().expect("carry").take();
        if g == 0 {
            return Ok(None);
        }
        if let Some(carry) = kept.filter(|c| c.image == n && c.band == g) {
            return Ok(Some(carry.sums));
        }
        let rows = self.bands.rows_of(g).start..self.bands.reach(g - 1).end;
        let windows = self.bands.overhanging(&self.starts, g - 1);
        let mut acc = self.accumulator(rows.clone(), &windows);
        // Their NaN values were counted with band g - 1, by whichever unit computed it.
        self.add_windows(&mut acc, n, windows)?;
        Ok(Some(acc.copy_rows(rows)))
    }

    /// An empty accumulator over `rows` of an image for the windows (indices along the first
    /// axis) `windows`, one part per thread, cut so that each part has the same work (a kept
    /// one when one has that shape and those cuts).
    fn accumulator(&self, rows: Range<u64>, windows: &Range<u64>) -> SplitAccumulator {
        let (origin, block) = self.rows_box(&rows);
        let cuts = SplitAccumulator::balanced_cuts(
            &kernel::coverage(&self.starts, self.geometry.window[0], &rows, windows),
            rayon::current_num_threads(),
        );
        let spare = self
            .spare_accumulators
            .take(|a| a.block_shape() == block && a.cuts() == cuts);
        SplitAccumulator::reused_or_new(
            spare,
            self.geometry.channels() as usize,
            &origin,
            &block,
            self.variance.is_some(),
            &cuts,
        )
    }

    /// The spatial origin and shape of `rows` (first spatial axis) of an image, whole along
    /// the other axes: what an accumulator over those rows covers.
    fn rows_box(&self, rows: &Range<u64>) -> (Vec<u64>, Vec<u64>) {
        let spatial = &self.geometry.image_shape[2..];
        let mut origin = vec![rows.start];
        origin.extend(std::iter::repeat_n(0, spatial.len() - 1));
        let mut block = vec![rows.end - rows.start];
        block.extend(&spatial[1..]);
        (origin, block)
    }

    /// Adds the windows of image `n` whose indices along the first axis are `window_rows`,
    /// read in batches, in ascending patch order (the summation order).
    fn add_windows(
        &self,
        acc: &mut SplitAccumulator,
        n: u64,
        window_rows: Range<u64>,
    ) -> Result<()> {
        let per_image = self.grid.per_image();
        let per_row = per_image / self.grid.counts()[0];
        let end = window_rows.end * per_row;
        let mut region = Region::whole(&self.geometry.patch_shape());
        let mut first = window_rows.start * per_row;
        // float32 patches stored uncompressed in one mapped piece (.npy, .pt) are summed
        // where they lie, with no copy (the kernel only reads them); float32 needs no value
        // check.
        let mapped = match self.variance {
            None => crate::io::mapped_elements::<f32>(self.patches.as_ref()),
            Some(_) => None,
        };
        let patch_shape: Vec<usize> = region.shape_usize();
        while first < end {
            let next = (first + self.batch).min(end);
            region.start[0] = n * per_image + first;
            region.shape[0] = next - first;
            if let Some(all) = mapped {
                let all = ndarray::ArrayViewD::from_shape(IxDyn(&patch_shape), all)
                    .expect("a mapped array holds its elements");
                let rows = region.start[0] as usize..(region.start[0] + region.shape[0]) as usize;
                self.read_bytes.fetch_add(
                    (rows.len() * all.len() / patch_shape[0] * 4) as u64,
                    Ordering::Relaxed,
                );
                self.add_batch(
                    acc,
                    &all.slice_axis(Axis(0), Slice::from(rows)),
                    None,
                    first,
                );
                first = next;
                continue;
            }
            let patches = self.read(self.patches.as_ref(), &region)?;
            self.limits.check(&patches, region.start[0], false)?;
            let variances = match &self.variance {
                Some(v) => Some(self.read(v.as_ref(), &region)?),
                None => None,
            };
            if let Some(v) = &variances {
                self.limits.check(v, region.start[0], true)?;
            }
            match (patches, variances) {
                // f32 and f64 patches are accumulated as they are; other types via f64.
                (Block::F32(p), None) => {
                    self.add_batch(acc, &p.view(), None, first);
                    self.spare_batches.keep(Block::F32(p));
                }
                (Block::F32(p), Some(Block::F32(v))) => {
                    self.add_batch(acc, &p.view(), Some(&v.view()), first);
                    self.spare_batches.keep(Block::F32(p));
                    self.spare_batches.keep(Block::F32(v));
                }
                (p, v) => {
                    let (p, v) = (p.to_f64(), v.map(Block::to_f64));
                    self.add_batch(acc, &p.view(), v.as_ref().map(|v| v.view()).as_ref(), first);
                }
            }
            first = next;
        }
        Ok(())
    }

    /// Reads `region` of an input, counting the bytes (as stored, uncompressed).
    fn read(&self, reader: &dyn ArrayReader, region: &Region) -> Result<Block> {
        let spare = self
            .spare_batches
            .take(|b| b.shape() == region.shape && b.dtype() == reader.meta().dtype);
        let block = reader.read_box_reusing(region, spare)?;
        let bytes = region.shape.iter().product::<u64>() * reader.meta().dtype.size() as u64;
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(block)
    }

    /// Adds a batch of consecutive patches, the first being window `first` of its image.
    fn add_batch<T: Copy + Into<f64> + Sync>(
        &self,
        acc: &mut SplitAccumulator,
        patches: &ndarray::ArrayViewD<'_, T>,
        variances: Option<&ndarray::ArrayViewD<'_, T>>,
        first: u64,
    ) {
        let refs: Vec<PatchRef<'_, T>> = (0..patches.shape()[0])
            .map(|j| {
                let start = self.grid.window_start(first + j as u64);
                (
                    patches.index_axis(Axis(0), j),
                    variances.map(|v| v.index_axis(Axis(0), j)),
                    start,
                )
            })
            .collect();
        acc.add_all(&refs, &self.window_weights);
    }

    /// Empty outputs for a unit of `rows` (the mean block a kept one: every value of it is
    /// written).
    fn unit_outputs<O: OutElement>(&self, rows: &Range<u64>) -> UnitOutputs<O> {
        let mean_region = self.slab_region(0, rows);
        let mean = self
            .spare_means
            .take(|b| b.shape() == mean_region.shape)
            .and_then(|b| b.into_array::<O>())
            .unwrap_or_else(|| ArrayD::default(mean_region.shape_usize()));
        let mut spatial = mean_region.shape_usize();
        spatial.remove(1);
        UnitOutputs {
            first_row: rows.start,
            mean,
            weights: self
                .weights_spec
                .as_ref()
                .map(|_| ArrayD::default(IxDyn(&spatial))),
            std: self
                .std_spec
                .as_ref()
                .map(|_| ArrayD::default(mean_region.shape_usize())),
        }
    }

    /// A unit's outputs with the regions they go to: mean, then weight sums and std if asked.
    fn unit_parts<O: OutElement>(
        &self,
        n: u64,
        rows: &Range<u64>,
        out: UnitOutputs<O>,
    ) -> Vec<(Region, Block)> {
        let mean_region = self.slab_region(n, rows);
        let mut parts = vec![(mean_region.clone(), O::into_block(out.mean))];
        if let Some(w) = out.weights {
            let mut r = Region::whole(&w.shape().iter().map(|&d| d as u64).collect::<Vec<_>>());
            r.start[0] = n;
            r.start[1] = rows.start;
            parts.push((r, O::into_block(w)));
        }
        if let Some(std) = out.std {
            parts.push((mean_region, O::into_block(std)));
        }
        parts
    }
}

impl Operation for StitchOp {
    type Output = Vec<(Region, Block)>;
    crate::exec::plan_fields!("quilt stitch"; targets, units, memory_per_unit, parameters);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        let specs = [
            Some(&self.mean_spec),
            self.weights_spec.as_ref(),
            self.std_spec.as_ref(),
        ];
        specs
            .into_iter()
            .flatten()
            .zip(&self.targets)
            .map(|(spec, t)| crate::exec::disk::PlannedOutput::array(t, spec))
            .collect()
    }
    fn fingerprint(&self) -> Value {
        json!({"geometry": self.geometry, "units": self.slabs.len(), "chunks": self.mean_spec.chunks, "band_rows": self.bands.rows})
    }
    fn inputs(&self) -> Vec<Place> {
        self.inputs.clone()
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let mut writers = vec![io::create(&staging[0], &self.mean_spec, comm, resume)?];
        let extra = [&self.weights_spec, &self.std_spec].into_iter().flatten();
        for (spec, address) in extra.zip(&staging[1..]) {
            writers.push(io::create(address, spec, comm, resume)?);
        }
        *self.writers.write().expect("writers") = writers;
        Ok(())
    }
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        Some(self.device.report())
    }
    fn bytes_read(&self) -> Option<u64> {
        Some(self.read_bytes.load(Ordering::Relaxed))
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return self.compute_gpu(gpu, unit);
        }
        match self.mean_spec.dtype {
            DType::F64 => self.compute_cpu::<f64>(unit),
            _ => self.compute_cpu::<f32>(unit),
        }
    }
    /// A unit is whole bands, and a band is the outputs' chunk rows: units share no chunk.
    /// One lane per thread, as many as `--memory-limit` holds beside the unit being computed.
    fn write_lanes(&self) -> usize {
        let room = self.memory_limit / self.memory_per_unit.max(1);
        crate::exec::lane_per_thread(&self.targets).min(room.saturating_sub(1) as usize)
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writers = self.writers.read().expect("writers");
        io::write_parts(&writers, part.as_ref().map(|(_, p)| p.as_slice()))?;
        if let Some((_, mut parts)) = part {
            if !parts.is_empty() {
                self.spare_means.keep(parts.swap_remove(0).1);
            }
        }
        Ok(())
    }
    /// Carries cross rank boundaries only when every rank computes on the CPU (the GPU
    /// stitch re-reads the windows of the band before instead) and `--memory-limit` has room
    /// for the held band; all ranks decide alike.
    fn assign(&self, comm: &dyn Comm, pending: &[Vec<Vec<usize>>]) -> Result<()> {
        let mut gpu = [u64::from(self.on_gpu())];
        comm.all_reduce_u64(&mut gpu, ReduceOp::Max);
        let handover = if gpu[0] > 0 || !self.holds_band {
            Handover::default()
        } else {
            let joined = |u: usize| u < self.slabs.len() && self.slabs[u - 1].0 == self.slabs[u].0;
            Handover::of(comm.rank(), pending, joined)
        };
        self.handover
            .set(handover)
            .map_err(|_| Error::parameter("internal", "stitch units assigned twice"))
    }
    fn held(&self, unit: usize) -> bool {
        self.handover
            .get()
            .and_then(|h| h.hold)
            .is_some_and(|(u, _)| u == unit)
    }
    /// Each rank sends its last band's carry to the rank after (one exchange), and completes
    /// and writes the band it held. Every rank writes once, so collective writes match.
    fn settle(&self, comm: &dyn Comm, _stage: usize) -> Result<Vec<usize>> {
        let Some(handover) = self.handover.get() else {
            return Ok(Vec::new());
        };
        let outgoing = handover
            .send
            .map(|(v, to)| self.outgoing_carry(v).map(|bytes| (to, bytes)))
            .transpose();
        let (sends, sent) = match outgoing {
            Ok(send) => (send.into_iter().collect(), Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        let received = comm.exchange(sends);
        let completed = handover.hold.map(|(unit, from)| {
            let bytes = received.iter().find(|(p, _)| *p == from).map(|(_, b)| b);
            self.complete_held(bytes).map(|parts| (unit, parts))
        });
        let (part, outcome) = match completed.transpose() {
            Ok(part) => (part, Ok(())),
            Err(e) => (None, Err(e)),
        };
        let units = part.iter().map(|(u, _)| *u).collect();
        let written = self.write(part);
        sent.and(outcome).and(written).map(|()| units)
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        let mut nan = [self.nan_values.load(Ordering::Relaxed)];
        comm.all_reduce_u64(&mut nan, ReduceOp::Sum);
        if nan[0] > 0 && comm.is_root() {
            tracing::warn!(
                "{} NaN patch values were left out of the weighted means (not spread to neighbours); pixels that only NaN values covered are NaN",
                nan[0]
            );
        }
        let mut attributes = Map::new();
        attributes.insert(
            "quilt".into(),
            serde_json::to_value(&self.geometry).unwrap_or(Value::Null),
        );
        attributes.insert("quilt_nan_values_left_out".into(), json!(nan[0]));
        attributes.insert("tessera_version".into(), json!(env!("CARGO_PKG_VERSION")));
        let writers = std::mem::take(&mut *self.writers.write().expect("writers"));
        for w in writers {
            w.set_attributes(&attributes)?;
            w.close()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_cross_rank_boundaries_within_an_image_only() {
        // Units 0..6: image 0 is units 0..4, image 1 units 4..6.
        let joined = |u: usize| u < 6 && u != 4;
        let pending = vec![vec![vec![0, 1]], vec![vec![2, 3]], vec![vec![4, 5]]];
        let of = |rank| Handover::of(rank, &pending, joined);
        assert_eq!(
            of(0),
            Handover {
                hold: None,
                send: Some((1, 1))
            }
        );
        assert_eq!(
            of(1),
            Handover {
                hold: Some((2, 0)),
                send: None
            }
        );
        assert_eq!(of(2), Handover::default());
        // Resumed: unit 1 is finished (not in this run), so rank 1's unit 2 re-reads instead;
        // an empty rank neither holds nor sends; a one-unit rank does both.
        let pending = vec![vec![vec![0]], vec![vec![2]], vec![vec![]], vec![vec![3]]];
        let of = |rank| Handover::of(rank, &pending, joined);
        assert_eq!(of(0), Handover::default());
        assert_eq!(
            of(1),
            Handover {
                hold: None,
                send: Some((2, 3))
            }
        );
        assert_eq!(of(2), Handover::default());
        assert_eq!(
            of(3),
            Handover {
                hold: Some((3, 1)),
                send: None
            }
        );
        let pending = vec![vec![vec![0]], vec![vec![1]], vec![vec![2]]];
        assert_eq!(
            Handover::of(1, &pending, joined),
            Handover {
                hold: Some((1, 0)),
                send: Some((1, 2))
            }
        );
        // One rank: nothing crosses.
        let pending = vec![vec![vec![0, 1, 2, 3, 4, 5]]];
        assert_eq!(Handover::of(0, &pending, joined), Handover::default());
    }

    #[test]
    fn geometry_checks_name_their_flag() {
        let args = |w: &[u64], s: &[u64]| GeometryArgs {
            window: w.to_vec(),
            step: s.to_vec(),
            ..Default::default()
        };
        assert!(QuiltGeometry::new(&[1, 1, 10, 10], &args(&[4], &[2])).is_ok());
        let e = QuiltGeometry::new(&[1, 1, 10, 10], &args(&[12], &[2]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--window") && e.contains("larger than the image"),
            "{e}"
        );
        let e = QuiltGeometry::new(&[10, 10], &args(&[4], &[2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(N, C, Y, X)"), "{e}");
        let mut a = args(&[4], &[2]);
        a.border_weight = 1.5;
        assert!(QuiltGeometry::new(&[1, 1, 10, 10], &a)
            .unwrap_err()
            .to_string()
            .starts_with("--border-weight"));
        let mut a = args(&[4], &[2]);
        a.border = vec![2];
        assert!(QuiltGeometry::new(&[1, 1, 10, 10], &a)
            .unwrap_err()
            .to_string()
            .starts_with("--border"));
    }

    #[test]
    fn default_positions_sit_beside_the_output() {
        let p = |s: &str| {
            default_positions(&Address::parse(s).unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(p("/d/p.zarr"), "/d/p_positions.npy");
        assert_eq!(p("/d/f.h5:/g/patches"), "/d/f_patches_positions.npy");
        assert_eq!(p("/d/x.npy"), "/d/x_positions.npy");
    }
}
