//! `tessera pyramid`: multiscale pyramids (mean, Gaussian, mode, Laplacian) of any array,
//! written as OME-Zarr 0.5 (or pyramid_sampler's layout), in one pass over the base level.
//!
//! Plan. The write granule is the shard (or chunk) shape, the same at every level. A unit is a
//! block of the source level whose extent is the granule times `factor^k`, at a multiple of
//! that extent: from it a rank builds `k` levels in memory, and every level's part of the
//! block is whole granules, so no chunk or shard is written by two ranks. `k` is as large as
//! the unit budget (`TESSERA_UNIT_BYTES`, 64 MiB) allows. When levels remain, a next stage
//! takes the last level written as its source (read back from the staged output: 1/f^k of the
//! base, e.g. 1/64 for 2x2x2 with k = 2), with fewer units, until one unit on one rank
//! finishes the coarsest levels. Blocks are read with the halo their filters need (Gaussian,
//! Laplacian), never recomputed from neighbours, and kernels give each voxel the same bits
//! whatever the box (see `kernel`), so the output does not depend on the rank count.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
#[cfg(test)]
mod harness;
pub mod kernel;
pub mod params;
pub mod reconstruct;
mod separable;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use ndarray::{ArrayD, Axis, Slice};
use serde_json::{json, Map, Value};

use self::params::{PyramidJob, PyramidLayout};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::{target_unit_bytes, Operation, UnitInfo};
use crate::grid::Region;
use crate::io::safety::Place;
use crate::io::{self, Address, ArrayReader, ArrayWriter, Block, CreateSpec, DType, Element};
use kernel::{input_range, next_shape, upsample_range, Method, Source};

/// One axis of the array, as OME-Zarr describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisInfo {
    pub name: String,
    /// `space`, `channel` or `time`.
    pub kind: &'static str,
    pub unit: Option<String>,
}

/// OME-Zarr 0.5's spatial units (UDUNITS-2 names).
const SPACE_UNITS: [&str; 26] = [
    "angstrom",
    "attometer",
    "centimeter",
    "decimeter",
    "exameter",
    "femtometer",
    "foot",
    "gigameter",
    "hectometer",
    "inch",
    "kilometer",
    "megameter",
    "meter",
    "micrometer",
    "mile",
    "millimeter",
    "nanometer",
    "parsec",
    "petameter",
    "picometer",
    "terameter",
    "yard",
    "yoctometer",
    "yottameter",
    "zeptometer",
    "zettameter",
];

/// Parses `--axes` (letters from t, c, z, y, x).
fn parse_axes(text: &str, ndim: usize) -> Result<Vec<AxisInfo>> {
    let bad = |m: String| Error::parameter("axes", m);
    if text.chars().count() != ndim {
        return Err(bad(format!(
            "`{text}` names {} axes; the input has {ndim}",
            text.chars().count()
        )));
    }
    let mut axes = Vec::new();
    for ch in text.chars() {
        let kind = match ch.to_ascii_lowercase() {
            't' => "time",
            'c' => "channel",
            'z' | 'y' | 'x' => "space",
            other => {
                return Err(bad(format!(
                    "`{other}` is not an axis name (use t, c, z, y, x)"
                )))
            }
        };
        let name = ch.to_ascii_lowercase().to_string();
        if axes.iter().any(|a: &AxisInfo| a.name == name) {
            return Err(bad(format!("`{name}` appears twice in `{text}`")));
        }
        axes.push(AxisInfo {
            name,
            kind,
            unit: None,
        });
    }
    Ok(axes)
}

/// Axes and level-0 voxel size from an OME-Zarr group holding the input array, if any.
fn ome_axes(input: &Address) -> Option<(Vec<AxisInfo>, Option<Vec<f64>>)> {
    let Address::Zarr { store, node } = input else {
        return None;
    };
    let (parent, name) = match node.rsplit_once('/') {
        Some((p, n)) => (p.to_string(), n.to_string()),
        None => (String::new(), node.clone()),
    };
    let attrs = io::zarr::group_attributes(store, &parent)?;
    let ms = attrs
        .get("ome")
        .and_then(|o| o.get("multiscales"))
        .or_else(|| attrs.get("multiscales"))?
        .get(0)?;
    let axes = ms
        .get("axes")?
        .as_array()?
        .iter()
        .map(|a| {
            let name = a.get("name")?.as_str()?.to_string();
            let kind = match a.get("type").and_then(Value::as_str) {
                Some("time") => "time",
                Some("channel") => "channel",
                _ => "space",
            };
            let unit = a.get("unit").and_then(Value::as_str).map(str::to_string);
            Some(AxisInfo { name, kind, unit })
        })
        .collect::<Option<Vec<_>>>()?;
    let scale = ms.get("datasets")?.as_array()?.iter().find_map(|d| {
        if d.get("path")?.as_str()? != name {
            return None;
        }
        d.get("coordinateTransformations")?
            .as_array()?
            .iter()
            .find(|t| t.get("type").and_then(Value::as_str) == Some("scale"))?
            .get("scale")?
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect::<Option<Vec<f64>>>()
    });
    Some((axes, scale))
}

/// Units of one stage: blocks of `extent` over level `source`, each building `k` levels.
#[derive(Clone, Debug)]
struct Stage {
    source: usize,
    k: usize,
    extent: Vec<u64>,
}

/// The pyramid operation.
pub struct PyramidOp {
    /// Provenance: the parameters as resolved (factor, levels, chunks), without the output.
    parameters: Value,
    /// The job as given, and its input, for `--resume` and the output checks.
    job: Value,
    input_address: Address,
    targets: Vec<Address>,
    input: Box<dyn ArrayReader>,
    method: Method,
    layout: PyramidLayout,
    axes: Vec<AxisInfo>,
    factor: Vec<u64>,
    voxel: Vec<f64>,
    /// Shape of every level, level 0 first.
    shapes: Vec<Vec<u64>>,
    /// Array specs: the levels, then (Laplacian) the difference maps of levels 0..L-1.
    specs: Vec<CreateSpec>,
    stages: Vec<Stage>,
    plan: Vec<(usize, Vec<u64>)>,
    stage_ends: Vec<usize>,
    units: Vec<UnitInfo>,
    memory_per_unit: u64,
    writers: RwLock<Vec<Box<dyn ArrayWriter>>>,
    /// The staged store and group node, once open (later stages read levels back from it).
    staged: Mutex<Option<(PathBuf, String)>>,
    /// Readers of levels written by earlier stages, opened once per level.
    level_readers: Mutex<std::collections::HashMap<usize, std::sync::Arc<io::zarr::ZarrReader>>>,
    /// Level-0 blocks already written, reused as read buffers for the next units.
    spare_blocks: crate::exec::Spares<Block>,
    /// This rank's device (`--device`), and its GPU half when it is a GPU.
    device: crate::gpu::Selected,
    #[cfg(feature = "cuda")]
    gpu: Option<cuda::PyramidGpu>,
}

fn ranges_of(region: &[Range<u64>]) -> Region {
    Region {
        start: region.iter().map(|r| r.start).collect(),
        shape: extents(region),
    }
}

/// The extent of a box along each axis.
fn extents(region: &[Range<u64>]) -> Vec<u64> {
    region.iter().map(|r| r.end - r.start).collect()
}

fn union(a: &Range<u64>, b: &Range<u64>) -> Range<u64> {
    a.start.min(b.start)..a.end.max(b.end)
}

/// `inner` (absolute ranges) cut out of an array that covers `outer`.
fn crop<T: Clone>(array: &ArrayD<T>, outer: &[Range<u64>], inner: &[Range<u64>]) -> ArrayD<T> {
    let mut v = array.view();
    for (a, (o, i)) in outer.iter().zip(inner).enumerate() {
        let lo = (i.start - o.start) as usize;
        v.slice_axis_inplace(Axis(a), Slice::from(lo..lo + (i.end - i.start) as usize));
    }
    // Row by row (whole runs of the last axis), not element by element.
    let Some(last) = v.ndim().checked_sub(1) else {
        return v.to_owned();
    };
    let mut data = Vec::with_capacity(v.len());
    for lane in v.lanes(Axis(last)) {
        match lane.as_slice() {
            Some(row) => data.extend_from_slice(row),
            None => data.extend(lane.iter().cloned()),
        }
    }
    ArrayD::from_shape_vec(v.raw_dim(), data).expect("one value per voxel")
}

/// `inner` of an array covering `outer`: the array itself when they are the same box.
fn take_block<T: Clone>(array: ArrayD<T>, outer: &[Range<u64>], inner: &[Range<u64>]) -> ArrayD<T> {
    if outer == inner && array.is_standard_layout() {
        array
    } else {
        crop(&array, outer, inner)
    }
}

impl PyramidOp {
    /// Validates input and parameters and plans levels, stages and units; creates nothing.
    ///
    /// # Errors
    /// Bad parameters (naming the flag), an input that is not an array, an output that is
    /// not a Zarr store.
    pub fn plan(job: &PyramidJob) -> Result<PyramidOp> {
        let input_addr = Address::parse(&job.input)?;
        let input = io::open(&input_addr)?;
        Self::plan_from(job, input_addr, input)
    }

    /// [`PyramidOp::plan`] from an opened input: `convert --pyramid-levels` plans with the
    /// metadata of a level 0 that does not exist yet, so that bad levels or factors are
    /// refused before anything is converted.
    ///
    /// # Errors
    /// As [`PyramidOp::plan`].
    pub fn plan_from(
        job: &PyramidJob,
        input_addr: Address,
        input: Box<dyn io::ArrayReader>,
    ) -> Result<PyramidOp> {
        let meta = input.meta().clone();
        let ndim = meta.shape.len();
        let output = check_input_and_output(job, &input_addr, &meta.shape)?;
        let ResolvedAxes {
            mut axes,
            spatial,
            ome_scale,
        } = resolve_axes(job, &input_addr, ndim)?;
        check_layout_axes(job.layout, &axes, spatial.len())?;
        let factor = factor_per_axis(job, &axes, &spatial)?;
        let (chunks, granule) = chunks_and_granule(job, &meta, &axes, &spatial)?;
        let shapes = level_shapes(job, &meta.shape, &factor, &chunks)?;
        warn_mode_on_floats(job.method, meta.dtype);
        let voxel = voxel_size(job, ome_scale.as_deref(), &spatial, ndim)?;
        set_space_unit(job, &mut axes, &spatial)?;
        let types = LevelTypes {
            method: job.method,
            input: meta.dtype,
        };
        let specs = level_specs(job, &axes, &shapes, &chunks, types)?;
        let stages = plan_stages(types, &shapes, &factor, &granule);
        let PlannedUnits {
            plan,
            stage_ends,
            units,
            memory_per_unit,
        } = plan_units(types, &factor, &shapes, &stages);
        let parameters = resolved_parameters(job, &factor, shapes.len(), &chunks);
        Ok(PyramidOp {
            parameters,
            job: serde_json::to_value(job).unwrap_or_default(),
            input_address: input_addr.clone(),
            targets: vec![output],
            input,
            method: job.method,
            layout: job.layout,
            axes,
            factor,
            voxel,
            shapes,
            specs,
            stages,
            plan,
            stage_ends,
            units,
            memory_per_unit,
            writers: RwLock::new(Vec::new()),
            staged: Mutex::new(None),
            spare_blocks: Default::default(),
            device: crate::gpu::Selected::cpu("--device cpu"),
            #[cfg(feature = "cuda")]
            gpu: None,
            level_readers: Default::default(),
        })
    }

    /// Number of levels, level 0 included.
    pub fn levels(&self) -> usize {
        self.shapes.len()
    }

    /// A unit's levels from its source box, on the rank's GPU when it has one (counting the
    /// `read` seconds as the GPU path's reading) or on its CPU threads.
    fn build_levels(
        &self,
        block: Block,
        st: &Stage,
        u: &UnitPlan,
        read: f64,
    ) -> Result<Vec<(usize, Region, Block)>> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            gpu.note_read(read);
            return gpu.build(self.levels_of(), block, st, u);
        }
        let _ = read;
        crate::with_block!(block, a => self.levels_of().build(a, st, u))
    }

    /// The pyramid's shape, for building units.
    fn levels_of(&self) -> Levels<'_> {
        Levels {
            method: self.method,
            factor: &self.factor,
            shapes: &self.shapes,
        }
    }

    /// The group attributes: OME-Zarr `multiscales` (OME layout) and tessera's provenance.
    fn group_attributes(&self) -> Map<String, Value> {
        let mut attrs = Map::new();
        let mut prov = self.parameters.clone();
        if let Some(p) = prov.as_object_mut() {
            p.insert("tessera_version".into(), json!(env!("CARGO_PKG_VERSION")));
            p.insert("shapes".into(), json!(self.shapes));
            if self.method == Method::Laplacian {
                p.insert(
                    "difference_maps".into(),
                    json!((0..self.levels() - 1)
                        .map(|l| format!("diff_{l}"))
                        .collect::<Vec<_>>()),
                );
                p.insert(
                    "reconstruction".into(),
                    json!("level l = diff_l + upsample(level l+1), from the coarsest level down (tessera pyramid reconstruct)"),
                );
            }
        }
        attrs.insert("tessera".into(), prov);
        if self.layout == PyramidLayout::Ome {
            let axes: Vec<Value> = self
                .axes
                .iter()
                .map(|a| {
                    let mut v = json!({"name": a.name, "type": a.kind});
                    if let Some(u) = &a.unit {
                        v["unit"] = json!(u);
                    }
                    v
                })
                .collect();
            let datasets: Vec<Value> = (0..self.levels())
                .map(|l| {
                    let scale: Vec<f64> = (0..self.axes.len())
                        .map(|a| self.voxel[a] * (self.factor[a] as f64).powi(l as i32))
                        .collect();
                    let translation: Vec<f64> = (0..self.axes.len())
                        .map(|a| {
                            self.voxel[a] * ((self.factor[a] as f64).powi(l as i32) - 1.0) / 2.0
                        })
                        .collect();
                    let mut t = vec![json!({"type": "scale", "scale": scale})];
                    if translation.iter().any(|&x| x != 0.0) {
                        t.push(json!({"type": "translation", "translation": translation}));
                    }
                    json!({"path": l.to_string(), "coordinateTransformations": t})
                })
                .collect();
            let kind = match self.method {
                Method::Mean => "mean",
                Method::Gaussian | Method::Laplacian => "gaussian",
                Method::Mode => "mode",
            };
            attrs.insert(
                "ome".into(),
                json!({
                    "version": "0.5",
                    "multiscales": [{
                        "name": self.targets[0]
                            .container()
                            .file_stem()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        "axes": axes,
                        "datasets": datasets,
                        "type": kind,
                        "metadata": {"method": format!("tessera pyramid --method {kind}"), "version": env!("CARGO_PKG_VERSION")},
                    }]
                }),
            );
        }
        attrs
    }

    fn level_reader(&self, level: usize) -> Result<std::sync::Arc<io::zarr::ZarrReader>> {
        let mut readers = self.level_readers.lock().expect("readers");
        if let Some(r) = readers.get(&level) {
            return Ok(r.clone());
        }
        let staged = self.staged.lock().expect("staged").clone();
        let (store, node) = staged.ok_or_else(|| {
            Error::parameter("internal", "a later stage ran before the output was opened")
        })?;
        let reader = std::sync::Arc::new(io::zarr::ZarrReader::open(
            &store,
            &io::zarr::child_node(&node, &level.to_string()),
        )?);
        readers.insert(level, reader.clone());
        Ok(reader)
    }

    /// Whether the GPU kernels take this pyramid (at most `device::MAX_AXES` axes).
    pub fn has_gpu_kernel(&self) -> bool {
        self.factor.len() <= device::MAX_AXES
    }

    /// Runs the kernels on `device` (the CPU unless told otherwise).
    ///
    /// # Errors
    /// A device memory share too small for the largest unit (`--gpu-memory-limit`).
    pub fn use_device(&mut self, device: crate::gpu::Selected) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let crate::gpu::Backend::Cuda(gpu) = &device.backend {
            let gpu = cuda::PyramidGpu::new(gpu.clone());
            self.check_device_memory(gpu.memory_limit())?;
            self.gpu = Some(gpu);
        }
        self.device = device;
        Ok(())
    }

    /// Refuses a device memory share smaller than what the largest unit needs there.
    #[cfg(feature = "cuda")]
    fn check_device_memory(&self, limit: u64) -> Result<()> {
        let dtype = self.input.meta().dtype;
        let most = self
            .plan
            .iter()
            .map(|(si, origin)| {
                let st = &self.stages[*si];
                let u = UnitPlan::new(self.method, &self.factor, &self.shapes, st, origin);
                cuda::unit_device_bytes(dtype, &u)
            })
            .max()
            .unwrap_or(0);
        if most > limit {
            return Err(Error::parameter(
                "gpu-memory-limit",
                format!(
                    "{} is too small: the largest unit needs {} on the device (lower \
                     TESSERA_UNIT_BYTES for smaller units, or run with --device cpu)",
                    crate::units::human_bytes(limit),
                    crate::units::human_bytes(most)
                ),
            ));
        }
        Ok(())
    }
}

/// What building a unit's levels needs of a pyramid: the method, the factors and every
/// level's shape (the CPU path here, the GPU's in `cuda.rs`).
#[derive(Clone, Copy)]
pub struct Levels<'a> {
    pub method: Method,
    pub factor: &'a [u64],
    pub shapes: &'a [Vec<u64>],
}

impl Levels<'_> {
    /// Builds the levels of one unit from its source block (typed): the Laplacian's levels
    /// and difference maps, or the levels of the other methods.
    fn build<T: Element + PartialOrd>(
        &self,
        source: ArrayD<T>,
        st: &Stage,
        u: &UnitPlan,
    ) -> Result<Vec<(usize, Region, Block)>> {
        Ok(match self.method {
            Method::Laplacian => self.build_laplacian(source, st, u)?,
            method => self.build_reduced(method, source, st, u),
        })
    }

    /// The Laplacian's part of one unit: Gaussian levels in f32 from the source block (which
    /// is written as read when it is level 0), then each level's difference map, the level
    /// minus the next one upsampled.
    fn build_laplacian<T: Element + PartialOrd>(
        &self,
        source: ArrayD<T>,
        st: &Stage,
        u: &UnitPlan,
    ) -> Result<Vec<(usize, Region, Block)>> {
        let s = st.source;
        let mut out = Vec::new();
        let (level0, source) = laplacian_level0(source, &u.needed_start(0))?;
        let mut levels: Vec<ArrayD<f32>> = vec![level0];
        for j in 1..=st.k {
            let start = u.needed_start(j - 1);
            let src = Source {
                values: levels[j - 1].view(),
                start: &start,
                level_shape: &self.shapes[s + j - 1],
            };
            let next: ArrayD<f32> = kernel::reduce_gaussian(&src, self.factor, &u.needed[j]);
            out.push((
                s + j,
                ranges_of(&u.blocks[j]),
                Block::F32(crop(&next, &u.needed[j], &u.blocks[j])),
            ));
            levels.push(next);
        }
        for j in 0..st.k {
            let coarse = levels[j + 1].view();
            let coarse = kernel::Coarse {
                values: &coarse,
                start: &u.needed_start(j + 1),
                level_shape: &self.shapes[s + j + 1],
            };
            let diff = kernel::laplacian_difference(
                &levels[j].view(),
                &u.needed_start(j),
                &coarse,
                self.factor,
                &u.blocks[j],
            );
            out.push((
                self.shapes.len() + s + j,
                ranges_of(&u.blocks[j]),
                Block::F32(diff),
            ));
        }
        // Level 0 first, as read (the f32 level itself when the source is f32).
        let mut all = Vec::with_capacity(out.len() + 1);
        match source {
            Some(source) => push_level0(&mut all, st, u, source),
            None => push_level0(&mut all, st, u, levels.swap_remove(0)),
        }
        all.extend(out);
        Ok(all)
    }

    /// One unit's levels by mean, Gaussian or mode (`method`): each level reduced from the one
    /// before, starting from the source block (which is written as read when it is level 0).
    fn build_reduced<T: Element + PartialOrd>(
        &self,
        method: Method,
        source: ArrayD<T>,
        st: &Stage,
        u: &UnitPlan,
    ) -> Vec<(usize, Region, Block)> {
        let s = st.source;
        let mut out = Vec::new();
        let mut prev = source;
        if st.k == 0 {
            push_level0(&mut out, st, u, prev);
            return out;
        }
        for j in 1..=st.k {
            let start = u.needed_start(j - 1);
            let src = Source {
                values: prev.view(),
                start: &start,
                level_shape: &self.shapes[s + j - 1],
            };
            let next: ArrayD<T> = match method {
                Method::Mode => kernel::reduce_mode(&src, self.factor, &u.needed[j]),
                Method::Gaussian => kernel::reduce_gaussian(&src, self.factor, &u.needed[j]),
                _ => kernel::reduce_mean(&src, self.factor, &u.needed[j]),
            };
            let done = std::mem::replace(&mut prev, next);
            if j == 1 {
                push_level0(&mut out, st, u, done);
            }
            // The last level is moved out; earlier ones stay as the next one's source.
            let block = if j == st.k {
                take_block(std::mem::take(&mut prev), &u.needed[j], &u.blocks[j])
            } else {
                crop(&prev, &u.needed[j], &u.blocks[j])
            };
            out.push((s + j, ranges_of(&u.blocks[j]), T::into_block(block)));
        }
        out
    }
}

/// Finite values the Laplacian takes: its levels and difference maps are f32, and the
/// difference of two values within +-(f32::MAX / 2) is always an f32 (the levels, weighted
/// means, stay within the values' range).
const LAPLACIAN_LIMIT: f64 = f32::MAX as f64 / 2.0;

/// The Laplacian's source level as f32 (its levels and differences are f32 whatever the
/// input type), from a box starting at `start` of its level.
///
/// # Errors
/// A finite value beyond [`LAPLACIAN_LIMIT`] (float data only: no integer reaches it):
/// float32 would turn it, or the difference maps around it, into an infinity.
fn laplacian_source<T: Element>(source: &ArrayD<T>, start: &[u64]) -> Result<ArrayD<f32>> {
    check_laplacian_range(source, start)?;
    Ok(source.mapv(|v| v.to_f32().unwrap_or(f32::NAN)))
}

/// [`laplacian_source`], taking the box: an f32 box is its own level (checked, not copied);
/// a box of another type comes back beside its f32 level, to be written as read.
type LaplacianLevel0<T> = (ArrayD<f32>, Option<ArrayD<T>>);
fn laplacian_level0<T: Element>(source: ArrayD<T>, start: &[u64]) -> Result<LaplacianLevel0<T>> {
    match (Box::new(source) as Box<dyn std::any::Any>).downcast::<ArrayD<f32>>() {
        Ok(level) => {
            check_laplacian_range(&level, start)?;
            Ok((*level, None))
        }
        Err(other) => {
            let source = *other
                .downcast::<ArrayD<T>>()
                .expect("the box is an ArrayD<T>");
            Ok((laplacian_source(&source, start)?, Some(source)))
        }
    }
}

/// Refuses a source level with a finite value beyond [`LAPLACIAN_LIMIT`] (naming the first
/// such voxel; `start`: the box's origin).
fn check_laplacian_range<T: Element>(source: &ArrayD<T>, start: &[u64]) -> Result<()> {
    use rayon::prelude::*;
    // No integer reaches the limit (u64's largest is 1.8e19): only floats are looked at.
    if !T::DTYPE.is_float() {
        return Ok(());
    }
    let beyond = |v: &T| {
        let x = v.to_f64().unwrap_or(f64::NAN);
        x.is_finite() && x.abs() > LAPLACIAN_LIMIT
    };
    // Blocks of values on the rank's threads, each scanned without an early exit (which the
    // compiler vectorises; the one-thread scan with `position` was 5.6% of a one-thread
    // Laplacian), then the first block with such a value searched for the voxel, which is
    // worked out only for the message (indexed_iter builds a dynamic index per voxel).
    const BLOCK: usize = 1 << 16;
    let found = match source.as_slice() {
        Some(values) => values
            .par_chunks(BLOCK)
            .position_first(|block| block.iter().fold(false, |any, v| any | beyond(v)))
            .and_then(|b| {
                let first = values[b * BLOCK..].iter().position(beyond)?;
                Some(b * BLOCK + first)
            }),
        None => source.iter().position(beyond),
    };
    if let Some(flat) = found {
        let v = source.iter().nth(flat).expect("found there");
        // As its own type prints it (float32's -3e38, not -3.0000000054977558e38).
        let value = match T::DTYPE {
            DType::F32 => format!("{:e}", v.to_f32().unwrap_or(f32::NAN)),
            _ => format!("{:e}", v.to_f64().unwrap_or(f64::NAN)),
        };
        let voxel: Vec<u64> = c_order_index(flat, source.shape())
            .into_iter()
            .zip(start)
            .map(|(i, &s)| s + i)
            .collect();
        return Err(Error::parameter(
            "method",
            format!(
                "laplacian keeps its levels and difference maps in float32, which holds them \
                 only for values within +-{LAPLACIAN_LIMIT:.4e} (half of float32's largest): \
                 the source level holds {value} at voxel {voxel:?}; scale the data down or \
                 use --method gaussian"
            ),
        ));
    }
    Ok(())
}

/// The index of the `flat`-th element of a C-order walk of `shape`.
fn c_order_index(mut flat: usize, shape: &[usize]) -> Vec<u64> {
    let mut index = vec![0u64; shape.len()];
    for (i, &n) in index.iter_mut().zip(shape).rev() {
        *i = (flat % n.max(1)) as u64;
        flat /= n.max(1);
    }
    index
}

/// Adds a unit's level-0 block to its output when its source is level 0. Level 0 is written
/// as read (moved, not copied, when there is no halo), once the levels that need it are built.
fn push_level0<T: Element>(
    out: &mut Vec<(usize, Region, Block)>,
    st: &Stage,
    u: &UnitPlan,
    a: ArrayD<T>,
) {
    if st.source == 0 {
        out.push((
            0,
            ranges_of(&u.blocks[0]),
            T::into_block(take_block(a, &u.needed[0], &u.blocks[0])),
        ));
    }
}

// Planning steps of `PyramidOp::plan_from`, in the order it takes them.

/// Refuses an input with an axis of size 0, then an output that is not a Zarr store; returns
/// the output's address.
fn check_input_and_output(
    job: &PyramidJob,
    input_addr: &Address,
    shape: &[u64],
) -> Result<Address> {
    if let Some(a) = shape.iter().position(|&d| d == 0) {
        return Err(Error::address(
            input_addr.to_string(),
            format!(
                "axis {a} has size 0 (shape {:?}): nothing to downsample",
                shape
            ),
        ));
    }
    let output = Address::parse(&job.output)?;
    if !matches!(output, Address::Zarr { .. }) {
        return Err(Error::parameter(
            "output",
            format!("{output} is not a Zarr store: pyramids are written to `name.zarr`"),
        ));
    }
    Ok(output)
}

/// The input's axes and which of them are spatial.
struct ResolvedAxes {
    axes: Vec<AxisInfo>,
    /// Indices of the spatial axes (the ones a factor may reduce).
    spatial: Vec<usize>,
    /// Level-0 voxel size from the input's OME metadata, when the axes came from it.
    ome_scale: Option<Vec<f64>>,
}

/// Resolves the axes (`--axes`, else the input's OME metadata, else all spatial) and their
/// spatial ones; refuses an array with no spatial axis.
fn resolve_axes(job: &PyramidJob, input_addr: &Address, ndim: usize) -> Result<ResolvedAxes> {
    // Axes: --axes, else the input's OME metadata, else all spatial.
    // The input's OME metadata is only looked at when --axes does not say.
    let from_ome = job.axes.is_none().then(|| ome_axes(input_addr)).flatten();
    let (axes, ome_scale) = match (&job.axes, from_ome) {
        (Some(text), _) => (parse_axes(text, ndim)?, None),
        (None, Some((axes, scale))) if axes.len() == ndim => (axes, scale),
        (None, _) if ndim <= 3 => (parse_axes(&"zyx"[3 - ndim..], ndim)?, None),
        (None, _) => {
            return Err(Error::parameter(
                "axes",
                format!(
                    "the input has {ndim} axes; name them, e.g. --axes {}",
                    &"tczyx"[5 - ndim.min(5)..]
                ),
            ))
        }
    };
    let spatial: Vec<usize> = (0..ndim).filter(|&a| axes[a].kind == "space").collect();
    if spatial.is_empty() {
        return Err(Error::parameter(
            "axes",
            "no spatial axis (z, y or x) to downsample",
        ));
    }
    Ok(ResolvedAxes {
        axes,
        spatial,
        ome_scale,
    })
}

/// Refuses, for the OME layout, axes that OME-Zarr 0.5 cannot describe: other than 2 to 5 axes
/// with 2 or 3 spatial, or not ordered time, channel, space.
fn check_layout_axes(layout: PyramidLayout, axes: &[AxisInfo], spatial: usize) -> Result<()> {
    let ndim = axes.len();
    if layout == PyramidLayout::Ome {
        if !(2..=5).contains(&ndim) || !(2..=3).contains(&spatial) {
            return Err(Error::parameter(
                "axes",
                format!(
                    "OME-Zarr 0.5 takes 2 to 5 axes with 2 or 3 of them spatial; got {} ({}); use --layout pyramid-sampler for other arrays",
                    ndim,
                    axes.iter().map(|a| a.name.as_str()).collect::<String>()
                ),
            ));
        }
        let rank = |k: &str| match k {
            "time" => 0,
            "channel" => 1,
            _ => 2,
        };
        if axes.windows(2).any(|w| rank(w[0].kind) > rank(w[1].kind)) {
            return Err(Error::parameter(
                "axes",
                format!(
                    "OME-Zarr 0.5 orders axes time, channel, then space; `{}` does not (convert with --axis-order czyx, or use --layout pyramid-sampler)",
                    axes.iter().map(|a| a.name.as_str()).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// The reduction factor of every axis: `--factor` (one value, or one per spatial axis;
/// default 2) on the spatial axes, 1 on the others; refuses factors of 0 and all factors 1.
fn factor_per_axis(job: &PyramidJob, axes: &[AxisInfo], spatial: &[usize]) -> Result<Vec<u64>> {
    let ndim = axes.len();
    let given = job.factor.clone().unwrap_or_else(|| vec![2]);
    let per_spatial = match given.len() {
        1 => vec![given[0]; spatial.len()],
        n if n == spatial.len() => given.clone(),
        n => {
            return Err(Error::parameter(
                "factor",
                format!(
                    "{n} values for {} spatial axes ({}); give one value or one per spatial axis",
                    spatial.len(),
                    spatial
                        .iter()
                        .map(|&a| axes[a].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };
    if per_spatial.contains(&0) {
        return Err(Error::parameter(
            "factor",
            "a factor of 0 (factors are integers >= 1)",
        ));
    }
    if per_spatial.iter().all(|&f| f == 1) {
        return Err(Error::parameter(
            "factor",
            "every factor is 1: no axis is reduced",
        ));
    }
    let mut factor = vec![1u64; ndim];
    for (&a, &f) in spatial.iter().zip(&per_spatial) {
        factor[a] = f;
    }
    Ok(factor)
}

/// The chunk shape of every level (`--chunks`, else 64 per spatial axis in 3-D and 512 in
/// 2-D, at most the input's size, and 1 on other axes), checked with `--shards` against
/// level 0, and the write granule that units are cut in (the shard, else the chunk).
fn chunks_and_granule(
    job: &PyramidJob,
    meta: &io::ArrayMeta,
    axes: &[AxisInfo],
    spatial: &[usize],
) -> Result<(Vec<u64>, Vec<u64>)> {
    let ndim = axes.len();
    let chunks = match &job.chunks {
        Some(c) => c.clone(),
        None => (0..ndim)
            .map(|a| match axes[a].kind {
                "space" => meta.shape[a].min(if spatial.len() == 3 { 64 } else { 512 }),
                _ => 1,
            })
            .collect(),
    };
    let probe = CreateSpec {
        flat_chunk_keys: false,
        shape: meta.shape.clone(),
        dtype: meta.dtype,
        chunks: chunks.clone(),
        shards: job.shards.clone(),
        codec: job.codec,
        dimension_names: None,
        attributes: Map::new(),
    };
    probe.validate()?;
    let granule = probe.write_block().to_vec();
    Ok((chunks, granule))
}

/// The shape of every level, level 0 first: `--levels` of them (refused when a level before
/// the last is already 1 voxel along every reduced axis), else until every reduced axis fits
/// in one chunk.
fn level_shapes(
    job: &PyramidJob,
    shape: &[u64],
    factor: &[u64],
    chunks: &[u64],
) -> Result<Vec<Vec<u64>>> {
    let ndim = factor.len();
    let reduced: Vec<usize> = (0..ndim).filter(|&a| factor[a] > 1).collect();
    let mut shapes = vec![shape.to_vec()];
    match job.levels {
        Some(0) => {
            return Err(Error::parameter(
                "levels",
                "0 levels (level 0 is the input; give at least 1)",
            ))
        }
        Some(n) => {
            while (shapes.len() as u64) < n {
                let last = shapes.last().expect("level 0");
                if reduced.iter().all(|&a| last[a] == 1) {
                    return Err(Error::parameter(
                        "levels",
                        format!(
                            "{n} levels asked, but level {} is already 1 voxel along every reduced axis (at most {} levels)",
                            shapes.len() - 1,
                            shapes.len()
                        ),
                    ));
                }
                shapes.push(next_shape(last, factor));
            }
        }
        None => loop {
            let last = shapes.last().expect("level 0");
            if reduced
                .iter()
                .all(|&a| last[a] <= chunks[a] || last[a] == 1)
            {
                break;
            }
            shapes.push(next_shape(last, factor));
        },
    }
    Ok(shapes)
}

/// Warns that `--method mode` on float data counts every distinct value as a label.
fn warn_mode_on_floats(method: Method, dtype: DType) {
    if method == Method::Mode && dtype.is_float() {
        tracing::warn!(
            "--method mode on {} data: mode is meant for label images; every distinct float value counts as its own label",
            dtype.name()
        );
    }
}

/// The level-0 voxel size of every axis: `--voxel-size` (one value, or one per spatial axis),
/// else the input's OME scale, else 1, on the spatial axes, and 1 on the others; refuses
/// sizes that are not positive numbers.
fn voxel_size(
    job: &PyramidJob,
    ome_scale: Option<&[f64]>,
    spatial: &[usize],
    ndim: usize,
) -> Result<Vec<f64>> {
    let voxel_spatial = match (&job.voxel_size, ome_scale) {
        (Some(v), _) if v.len() == 1 => vec![v[0]; spatial.len()],
        (Some(v), _) if v.len() == spatial.len() => v.clone(),
        (Some(v), _) => {
            return Err(Error::parameter(
                "voxel-size",
                format!("{} values for {} spatial axes", v.len(), spatial.len()),
            ))
        }
        (None, Some(s)) if s.len() == ndim => spatial.iter().map(|&a| s[a]).collect(),
        (None, _) => vec![1.0; spatial.len()],
    };
    if voxel_spatial.iter().any(|&v| !(v.is_finite() && v > 0.0)) {
        return Err(Error::parameter(
            "voxel-size",
            "voxel sizes must be positive numbers",
        ));
    }
    let mut voxel = vec![1.0; ndim];
    for (&a, &v) in spatial.iter().zip(&voxel_spatial) {
        voxel[a] = v;
    }
    Ok(voxel)
}

/// Checks `--unit` against OME-Zarr's space units and gives it to every spatial axis.
fn set_space_unit(job: &PyramidJob, axes: &mut [AxisInfo], spatial: &[usize]) -> Result<()> {
    if let Some(unit) = &job.unit {
        if !SPACE_UNITS.contains(&unit.as_str()) {
            return Err(Error::parameter(
                "unit",
                format!("`{unit}` is not an OME-Zarr space unit (e.g. micrometer, nanometer, millimeter)"),
            ));
        }
        for &a in spatial {
            axes[a].unit = Some(unit.clone());
        }
    }
    Ok(())
}

/// Element types of the levels, which follow from the method and the input's type.
#[derive(Clone, Copy)]
struct LevelTypes {
    method: Method,
    /// The input's (level 0's) element type.
    input: DType,
}

impl LevelTypes {
    /// Element type of level `l`: f32 above level 0 for the Laplacian, else the input's.
    fn dtype(self, l: usize) -> DType {
        if self.method == Method::Laplacian && l > 0 {
            DType::F32
        } else {
            self.input
        }
    }

    /// Memory per voxel of a unit's source block at level `l`: the element, plus 16 bytes
    /// for the Gaussian and Laplacian methods.
    fn per_voxel(self, l: usize) -> u64 {
        let size = self.dtype(l).size() as u64;
        match self.method {
            Method::Mean | Method::Mode => size,
            Method::Gaussian | Method::Laplacian => size + 16,
        }
    }
}

/// One array spec per level, then (Laplacian) per difference map of levels 0..L-1: the chunks
/// and shards clipped to the level, the axis names as dimension names; each one validated.
fn level_specs(
    job: &PyramidJob,
    axes: &[AxisInfo],
    shapes: &[Vec<u64>],
    chunks: &[u64],
    types: LevelTypes,
) -> Result<Vec<CreateSpec>> {
    let levels = shapes.len();
    let names: Vec<String> = axes.iter().map(|a| a.name.clone()).collect();
    let level_spec = |shape: &[u64], dtype: DType| {
        let c: Vec<u64> = chunks.iter().zip(shape).map(|(&c, &d)| c.min(d)).collect();
        let shards = job.shards.as_ref().map(|s| {
            s.iter()
                .zip(shape)
                .zip(&c)
                .map(|((&s, &d), &c)| s.min(d.div_ceil(c) * c))
                .collect()
        });
        CreateSpec {
            flat_chunk_keys: false,
            shape: shape.to_vec(),
            dtype,
            chunks: c,
            shards,
            codec: job.codec,
            dimension_names: Some(names.clone()),
            attributes: Map::new(),
        }
    };
    let mut specs: Vec<CreateSpec> = shapes
        .iter()
        .enumerate()
        .map(|(l, s)| level_spec(s, types.dtype(l)))
        .collect();
    if job.method == Method::Laplacian {
        specs.extend(
            shapes[..levels - 1]
                .iter()
                .map(|s| level_spec(s, DType::F32)),
        );
    }
    for s in &specs {
        s.validate()?;
    }
    Ok(specs)
}

/// The stages: from level `source`, units that each build the next `k` levels, `k` as large
/// as the unit budget allows (at least 1), until the last level; with level 0 alone, one stage
/// that copies it.
fn plan_stages(
    types: LevelTypes,
    shapes: &[Vec<u64>],
    factor: &[u64],
    granule: &[u64],
) -> Vec<Stage> {
    let ndim = factor.len();
    let levels = shapes.len();
    let budget = target_unit_bytes(shapes[0].iter().product::<u64>() * types.per_voxel(0));
    let mut stages = Vec::new();
    let mut source = 0;
    loop {
        let remaining = levels - 1 - source;
        let extent_for = |k: usize| -> Vec<u64> {
            (0..ndim)
                .map(|a| {
                    let grow = factor[a].saturating_pow(k as u32);
                    granule[a].saturating_mul(grow)
                })
                .collect()
        };
        let bytes = |k: usize| -> u64 {
            let e = extent_for(k);
            (0..ndim)
                .map(|a| e[a].min(shapes[source][a]))
                .product::<u64>()
                * types.per_voxel(source)
        };
        let mut k = remaining;
        while k > 1 && bytes(k) > budget {
            k -= 1;
        }
        let extent = if remaining == 0 {
            // Level 0 only: copy in blocks of whole granules that fit the budget.
            level0_copy_extent(granule, &shapes[0], types.per_voxel(0), budget)
        } else {
            extent_for(k)
        };
        stages.push(Stage { source, k, extent });
        source += k;
        if source >= levels - 1 {
            break;
        }
    }
    stages
}

/// Extent of the units that copy level 0 alone: the granule, doubled along the last axes
/// first while a block stays inside the level (rounded up to whole granules) and twice its
/// bytes fit the budget.
fn level0_copy_extent(granule: &[u64], shape: &[u64], per_voxel: u64, budget: u64) -> Vec<u64> {
    let ndim = shape.len();
    let mut e = granule.to_vec();
    for a in (0..ndim).rev() {
        while e[a] < shape[a]
            && (0..ndim).map(|b| e[b].min(shape[b])).product::<u64>() * 2 * per_voxel <= budget
        {
            e[a] = (e[a] * 2).min(shape[a].div_ceil(granule[a]) * granule[a]);
        }
    }
    e
}

/// Every unit of every stage, in order: which stage and origin it is (`plan`), where each
/// stage's units end, what each reads and writes, and the memory of the largest.
struct PlannedUnits {
    plan: Vec<(usize, Vec<u64>)>,
    stage_ends: Vec<usize>,
    units: Vec<UnitInfo>,
    memory_per_unit: u64,
}

/// The units of the stages: per stage, one per origin of its extent over the source level,
/// sized from its blocks and halos, labelled with its source level, origin and levels built.
fn plan_units(
    types: LevelTypes,
    factor: &[u64],
    shapes: &[Vec<u64>],
    stages: &[Stage],
) -> PlannedUnits {
    let mut plan = Vec::new();
    let mut stage_ends = Vec::new();
    let mut units = Vec::new();
    let mut memory_per_unit = 0;
    for (si, st) in stages.iter().enumerate() {
        for origin in unit_origins(st, &shapes[st.source]) {
            let op_units = UnitPlan::new(types.method, factor, shapes, st, &origin);
            let UnitBytes {
                read,
                written,
                memory,
            } = unit_bytes(types, st, &op_units);
            memory_per_unit = memory_per_unit.max(memory);
            units.push(UnitInfo {
                label: format!(
                    "level {} block at {} -> levels {}..={}",
                    st.source,
                    crate::grid::join(&origin),
                    st.source + usize::from(st.k > 0),
                    st.source + st.k
                ),
                bytes_in: read,
                bytes_out: written,
            });
            plan.push((si, origin));
        }
        stage_ends.push(plan.len());
    }
    PlannedUnits {
        plan,
        stage_ends,
        units,
        memory_per_unit,
    }
}

/// Origins of a stage's units: the multiples of its extent inside the source level, in C
/// order.
fn unit_origins(st: &Stage, shape: &[u64]) -> Vec<Vec<u64>> {
    let ndim = shape.len();
    let counts: Vec<u64> = (0..ndim).map(|a| shape[a].div_ceil(st.extent[a])).collect();
    let ranges: Vec<Range<u64>> = counts.iter().map(|&n| 0..n).collect();
    let mut origins = Vec::new();
    crate::grid::for_each_index(&ranges, |idx| {
        origins.push(
            (0..ndim)
                .map(|a| idx[a] * st.extent[a])
                .collect::<Vec<u64>>(),
        )
    });
    origins
}

/// What one unit moves and holds, in bytes.
struct UnitBytes {
    /// Its source block, halo included.
    read: u64,
    /// Its blocks of the levels it writes (and of the Laplacian's difference maps).
    written: u64,
    /// Its source block at the memory per voxel of the method, plus what it writes.
    memory: u64,
}

/// Sizes one unit from its blocks (`op_units`): bytes read, bytes written (level 0 when it is
/// the source, the levels it builds, the Laplacian's difference maps) and memory.
fn unit_bytes(types: LevelTypes, st: &Stage, op_units: &UnitPlan) -> UnitBytes {
    let read: u64 = op_units.needed[0]
        .iter()
        .map(|r| r.end - r.start)
        .product::<u64>()
        * types.dtype(st.source).size() as u64;
    let mut written = 0;
    if st.source == 0 {
        written += op_units.blocks[0]
            .iter()
            .map(|r| r.end - r.start)
            .product::<u64>()
            * types.input.size() as u64;
    }
    for j in 1..=st.k {
        written += op_units.blocks[j]
            .iter()
            .map(|r| r.end - r.start)
            .product::<u64>()
            * types.dtype(st.source + j).size() as u64;
    }
    if types.method == Method::Laplacian {
        for j in 0..st.k {
            written += op_units.blocks[j]
                .iter()
                .map(|r| r.end - r.start)
                .product::<u64>()
                * 4;
        }
    }
    let memory = read / types.dtype(st.source).size() as u64 * types.per_voxel(st.source) + written;
    UnitBytes {
        read,
        written,
        memory,
    }
}

/// The resolved parameters, for provenance and the fingerprint: the job without its output,
/// with the factor of every axis, the number of levels and the chunks as planned.
fn resolved_parameters(job: &PyramidJob, factor: &[u64], levels: usize, chunks: &[u64]) -> Value {
    let mut parameters = serde_json::to_value(job).unwrap_or_default();
    if let Some(p) = parameters.as_object_mut() {
        // Provenance that does not depend on where the output was written.
        p.remove("output");
        p.insert("factor".into(), json!(factor));
        p.insert("levels".into(), json!(levels));
        p.insert("chunks".into(), json!(chunks));
    }
    parameters
}

/// What one unit writes (`blocks[j]`: its part of level source+j) and what it must compute
/// (`needed[j]`: the blocks plus the halo the next levels' filters read), absolute ranges.
struct UnitPlan {
    blocks: Vec<Vec<Range<u64>>>,
    needed: Vec<Vec<Range<u64>>>,
}

impl UnitPlan {
    fn new(
        method: Method,
        factor: &[u64],
        shapes: &[Vec<u64>],
        st: &Stage,
        origin: &[u64],
    ) -> Self {
        let nd = factor.len();
        let s = st.source;
        let b0: Vec<Range<u64>> = (0..nd)
            .map(|a| origin[a]..(origin[a] + st.extent[a]).min(shapes[s][a]))
            .collect();
        let mut blocks = vec![b0.clone()];
        for j in 1..=st.k {
            blocks.push(
                (0..nd)
                    .map(|a| {
                        let p = factor[a].pow(j as u32);
                        b0[a].start / p..b0[a].end.div_ceil(p)
                    })
                    .collect(),
            );
        }
        let mut needed = blocks.clone();
        if method == Method::Laplacian {
            for j in 0..st.k {
                for a in 0..nd {
                    let up = upsample_range(factor[a], shapes[s + j + 1][a], &blocks[j][a]);
                    needed[j + 1][a] = union(&needed[j + 1][a], &up);
                }
            }
        }
        for j in (0..st.k).rev() {
            for a in 0..nd {
                let r = input_range(method, factor[a], shapes[s + j][a], &needed[j + 1][a]);
                needed[j][a] = union(&needed[j][a], &r);
            }
        }
        UnitPlan { blocks, needed }
    }

    /// Start of `needed[j]`: where the computed block of level source+j begins.
    fn needed_start(&self, j: usize) -> Vec<u64> {
        self.needed[j].iter().map(|r| r.start).collect()
    }
}

impl Operation for PyramidOp {
    type Output = Vec<(usize, Region, Block)>;
    crate::exec::plan_fields!("pyramid"; targets, units, memory_per_unit);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        let levels = self.levels();
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = if i < levels {
                    i.to_string()
                } else {
                    format!("diff_{}", i - levels)
                };
                crate::exec::disk::PlannedOutput::child(&self.targets[0], &name, spec)
            })
            .collect()
    }
    fn parameters(&self) -> Value {
        self.job.clone()
    }
    fn inputs(&self) -> Vec<Place> {
        vec![Place::Array(self.input_address.clone())]
    }
    fn fingerprint(&self) -> Value {
        json!({"resolved": self.parameters, "units": self.units.len()})
    }
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        Some(self.device.report())
    }
    fn stage_ends(&self) -> Vec<usize> {
        self.stage_ends.clone()
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let Address::Zarr { store, node } = &staging[0] else {
            return Err(Error::parameter(
                "output",
                "pyramids are written to Zarr stores",
            ));
        };
        let levels = self.levels();
        let mut writers = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let name = if i < levels {
                i.to_string()
            } else {
                format!("diff_{}", i - levels)
            };
            let address = Address::Zarr {
                store: store.clone(),
                node: io::zarr::child_node(node, &name),
            };
            writers.push(io::create(&address, spec, comm, resume)?);
        }
        *self.writers.write().expect("writers") = writers;
        *self.staged.lock().expect("staged") = Some((store.clone(), node.clone()));
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let (si, origin) = &self.plan[unit];
        let st = &self.stages[*si];
        let u = UnitPlan::new(self.method, &self.factor, &self.shapes, st, origin);
        let region = ranges_of(&u.needed[0]);
        let t = std::time::Instant::now();
        let block = if st.source == 0 {
            let spare = self.spare_blocks.take(|b| b.shape() == region.shape);
            self.input.read_box_reusing(&region, spare)?
        } else {
            self.level_reader(st.source)?.read_box(&region)?
        };
        let read = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let out = self.build_levels(block, st, &u, read)?;
        tracing::debug!(
            "pyramid unit {unit}: read {read:.3} s, levels built in {:.3} s",
            t.elapsed().as_secs_f64()
        );
        Ok(out)
    }
    /// A unit writes whole chunks of each level (as ranks do), so units may be written at once.
    fn write_lanes(&self) -> usize {
        crate::exec::lane_per_thread(&self.targets)
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writers = self.writers.read().expect("writers");
        if let Some((_, parts)) = part {
            for (w, region, block) in &parts {
                writers[*w].write_box(Some((region, block)))?;
            }
            for (w, _, block) in parts {
                if w == 0 {
                    self.spare_blocks.keep(block);
                }
            }
        }
        Ok(())
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        for w in std::mem::take(&mut *self.writers.write().expect("writers")) {
            w.close()?;
        }
        if comm.is_root() {
            let (store, node) = self
                .staged
                .lock()
                .expect("staged")
                .clone()
                .ok_or_else(|| Error::parameter("internal", "output never opened"))?;
            io::zarr::write_group(&store, &node, &self.group_attributes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_position_is_its_c_order_index() {
        let shape = [3usize, 4, 5];
        let a = ndarray::Array3::<u8>::zeros(shape);
        for (flat, (at, _)) in a.indexed_iter().enumerate() {
            assert_eq!(
                c_order_index(flat, &shape),
                [at.0, at.1, at.2].map(|i| i as u64)
            );
        }
    }

    #[test]
    fn axes_parse_and_refuse_nonsense() {
        let a = parse_axes("czyx", 4).unwrap();
        assert_eq!(a[0].kind, "channel");
        assert_eq!(a[3].kind, "space");
        assert!(parse_axes("zyx", 4).is_err());
        assert!(parse_axes("zzx", 3).is_err());
        assert!(parse_axes("qyx", 3).is_err());
    }

    #[test]
    fn unit_blocks_map_to_whole_granules_and_halos_cover_the_filters() {
        let shapes = vec![vec![100, 70], vec![50, 35], vec![25, 18]];
        let st = Stage {
            source: 0,
            k: 2,
            extent: vec![32, 32],
        };
        let u = UnitPlan::new(Method::Mean, &[2, 2], &shapes, &st, &[32, 64]);
        assert_eq!(u.blocks[0], vec![32..64, 64..70]);
        assert_eq!(u.blocks[1], vec![16..32, 32..35]);
        assert_eq!(u.blocks[2], vec![8..16, 16..18]);
        assert_eq!(u.needed, u.blocks, "the mean needs no halo");
        let g = UnitPlan::new(Method::Gaussian, &[2, 2], &shapes, &st, &[32, 0]);
        assert!(g.needed[0][0].start < 32 && g.needed[0][0].end > 64);
        assert_eq!(g.needed[0][1].start, 0);
    }
}
