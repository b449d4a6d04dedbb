//! `tessera convert`: a directory of image files (one file per slice) to one array per stack.
//!
//! Files are grouped by the pattern's first capture group (the stack name) and ordered by its
//! second (the slice index). Every file's header is checked before any output exists. The
//! work unit is a run of slices covering whole write blocks (chunks, or shards) along the
//! stacking axis and the whole of every other axis, so ranks never share a chunk and the
//! chunk files are the same bytes whatever the rank count.

pub mod kernel;
pub mod params;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde_json::{json, Map, Value};

use self::params::{AxisOrder, ConvertJob, OutputFormat};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::{Operation, UnitInfo};
use crate::grid::{self, Region};
use crate::io::images::{self, ImageInfo};
use crate::io::safety::Place;
use crate::io::{self, Address, ArrayWriter, Block, CreateSpec, DType, Element};
use crate::{with_block, with_dtype};

/// Image files tessera reads when no `--extension` is given.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["tif", "tiff", "png", "jpg", "jpeg"];

/// One stack found in the input directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub name: String,
    /// (index, file), sorted by index.
    pub files: Vec<(u64, PathBuf)>,
    /// Indices between the first and last that have no file.
    pub missing: Vec<u64>,
}

/// Finds the stacks in `dir`.
///
/// # Errors
/// A missing or empty directory, a bad pattern, no matching file, a non-integer or
/// duplicated index.
pub fn scan(dir: &Path, pattern: &str, extension: Option<&str>) -> Result<Vec<Stack>> {
    check_input_dir(dir)?;
    let regex = slice_pattern(pattern)?;
    let extension = extension.map(|e| e.trim_start_matches('.').to_ascii_lowercase());
    let names: Vec<String> = io::walk::files(dir, false)?
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Err(Error::parameter(
            "input",
            format!("{} holds no files", dir.display()),
        ));
    }
    let wanted = |name: &str| {
        let ext = Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match &extension {
            Some(want) => &ext == want,
            None => IMAGE_EXTENSIONS.contains(&ext.as_str()),
        }
    };
    let stacks = group_slices(dir, &names, &regex, pattern, &wanted)?;
    if stacks.is_empty() {
        let sample: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        return Err(Error::parameter(
            "pattern",
            format!(
                "no file in {} matches {pattern:?}{} (files there include: {})",
                dir.display(),
                extension.map_or(String::new(), |e| format!(" with extension .{e}")),
                sample.join(", ")
            ),
        ));
    }
    Ok(stacks
        .into_iter()
        .map(|(name, files)| {
            let indices: Vec<u64> = files.keys().copied().collect();
            let (first, last) = (indices[0], indices[indices.len() - 1]);
            let missing = (first..=last).filter(|i| !files.contains_key(i)).collect();
            Stack {
                name,
                files: files.into_iter().collect(),
                missing,
            }
        })
        .collect())
}

/// Refuses an input that is not a directory, saying whether it exists.
fn check_input_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::parameter(
            "input",
            format!(
                "{} {}",
                dir.display(),
                if dir.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                }
            ),
        ));
    }
    Ok(())
}

/// The file-name pattern as a regular expression anchored at the start, refusing one without
/// the two groups (stack name, slice index).
fn slice_pattern(pattern: &str) -> Result<regex::Regex> {
    let regex = regex::Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
        Error::parameter(
            "pattern",
            format!("{pattern:?} is not a valid regular expression: {e}"),
        )
    })?;
    if regex.captures_len() < 3 {
        return Err(Error::parameter(
            "pattern",
            format!(
                "{pattern:?} has {} capture group(s); it needs two: the stack name, then the slice index, e.g. (.+)_(\\d+)\\.tif$",
                regex.captures_len() - 1
            ),
        ));
    }
    Ok(regex)
}

/// The wanted files among `names` grouped into stacks by the pattern's first group, keyed by
/// the slice index of its second; two files with one index in a stack are refused.
fn group_slices(
    dir: &Path,
    names: &[String],
    regex: &regex::Regex,
    pattern: &str,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, BTreeMap<u64, PathBuf>>> {
    let mut stacks: BTreeMap<String, BTreeMap<u64, PathBuf>> = BTreeMap::new();
    for name in names.iter().filter(|n| wanted(n)) {
        let Some(caps) = regex.captures(name) else {
            continue;
        };
        let (Some(stack), Some(index)) = (caps.get(1), caps.get(2)) else {
            continue;
        };
        let index: u64 = index.as_str().parse().map_err(|_| {
            Error::parameter(
                "pattern",
                format!("group 2 of {pattern:?} matched {:?} in {name}, which is not a slice index (a non-negative integer)", index.as_str()),
            )
        })?;
        let files = stacks.entry(stack.as_str().to_string()).or_default();
        if let Some(previous) = files.insert(index, dir.join(name)) {
            return Err(Error::parameter(
                "pattern",
                format!(
                    "{} and {name} both have slice index {index} in stack {:?}",
                    previous.file_name().unwrap_or_default().to_string_lossy(),
                    stack.as_str()
                ),
            ));
        }
    }
    Ok(stacks)
}

/// Probes every file's header, split among the ranks, and checks that all slices agree.
///
/// # Errors
/// The first unreadable file, or the first slice whose shape or dtype differs from the first.
fn probe_all(stack: &Stack, comm: &dyn Comm) -> Result<ImageInfo> {
    let share = grid::partition_contiguous(stack.files.len(), comm.size())[comm.rank()].clone();
    let probed: Vec<std::result::Result<(Vec<u64>, String), String>> = stack.files[share]
        .par_iter()
        .map(|(_, path)| {
            images::probe(path)
                .map(|i| (i.shape, i.dtype.name().to_string()))
                .map_err(|e| match e {
                    // The path is added back below, on whichever rank reports it.
                    Error::BadFile { message, .. } => message,
                    Error::Io { source, .. } => source.to_string(),
                    other => other.to_string(),
                })
        })
        .collect();
    let mine = serde_json::to_vec(&probed).unwrap_or_default();
    let all: Vec<std::result::Result<(Vec<u64>, String), String>> = comm
        .all_gather(&mine)
        .iter()
        .flat_map(|b| serde_json::from_slice::<Vec<_>>(b).unwrap_or_default())
        .collect();
    if all.len() != stack.files.len() {
        return Err(Error::mismatch(
            "probed slice count",
            stack.files.len(),
            all.len(),
        ));
    }
    let describe =
        |shape: &[u64], dtype: &str| format!("{} {dtype}", crate::grid::join_with(shape, "x"));
    let mut first: Option<(Vec<u64>, String)> = None;
    for ((_, path), outcome) in stack.files.iter().zip(all) {
        let (shape, dtype) = outcome.map_err(|message| Error::bad_file(path, message))?;
        match &first {
            None => first = Some((shape, dtype)),
            Some((s, d)) if *s != shape || *d != dtype => {
                return Err(Error::mismatch(
                    format!("slice {}", path.display()),
                    format!(
                        "{} like {}",
                        describe(s, d),
                        stack.files[0]
                            .1
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                    ),
                    describe(&shape, &dtype),
                ))
            }
            Some(_) => {}
        }
    }
    let (shape, dtype) = first.expect("a stack has at least one file");
    Ok(ImageInfo {
        shape,
        dtype: DType::from_name(&dtype).expect("probe returns known dtypes"),
    })
}

/// Where a stack's array goes.
fn output_address(job: &ConvertJob, stack: &str, several: bool) -> Result<Address> {
    let text = job.output.to_string_lossy();
    if !several {
        if let Ok(address) = Address::parse(&text) {
            return Ok(address);
        }
    } else if Address::parse(&text).is_ok() && !job.output.is_dir() {
        return Err(Error::parameter(
            "output",
            format!("{text} names one array, but the input holds several stacks; give a directory"),
        ));
    }
    let path = match job.format {
        OutputFormat::Zarr => format!("{}.zarr", job.output.join(stack).display()),
        OutputFormat::Hdf5 => format!("{}.h5:/data", job.output.join(stack).display()),
        OutputFormat::Npy => format!("{}.npy", job.output.join(stack).display()),
        OutputFormat::Pt => format!("{}.pt", job.output.join(stack).display()),
    };
    Address::parse(&path)
}

/// The convert operation for one stack.
pub struct ConvertOp {
    /// The one output (a slice, as `Operation::targets` wants).
    targets: [Address; 1],
    files: Vec<PathBuf>,
    slice: ImageInfo,
    spec: CreateSpec,
    stack_axis: usize,
    runs: Vec<Range<u64>>,
    units: Vec<UnitInfo>,
    attributes: Map<String, Value>,
    writer: Mutex<Option<Box<dyn ArrayWriter>>>,
    /// Slabs whose unit was written, reused for the next units.
    spare_slabs: crate::exec::Spares<Block>,
    /// The job, for `--resume` (`Operation::parameters`).
    parameters: Value,
    input_dir: PathBuf,
    /// Set once a float -> integer conversion rounded a fraction away and this was said.
    rounding_warned: std::sync::Once,
}

impl ConvertOp {
    /// Plans the conversion of one stack: validates every input and parameter; creates nothing.
    ///
    /// # Errors
    /// Bad inputs or parameters, each naming the file or flag.
    pub fn plan(
        job: &ConvertJob,
        stack: &Stack,
        several: bool,
        comm: &dyn Comm,
    ) -> Result<ConvertOp> {
        let target = output_address(job, &stack.name, several)?;
        let slice = probe_all(stack, comm)?;
        let nz = stack.files.len() as u64;
        let (shape, names, stack_axis): (Vec<u64>, Vec<&str>, usize) =
            match (&slice.shape[..], job.axis_order) {
                ([y, x], _) => (vec![nz, *y, *x], vec!["z", "y", "x"], 0),
                ([c, y, x], AxisOrder::Zcyx) => (vec![nz, *c, *y, *x], vec!["z", "c", "y", "x"], 0),
                ([c, y, x], AxisOrder::Czyx) => (vec![*c, nz, *y, *x], vec!["c", "z", "y", "x"], 1),
                _ => unreachable!("images are 2-D or 3-D"),
            };
        let ndim = shape.len();
        let chunks = job.chunks.clone().unwrap_or_else(|| {
            let mut c: Vec<u64> = shape.iter().map(|&d| d.clamp(1, 512)).collect();
            c[stack_axis] = 1;
            if ndim == 4 && stack_axis == 1 {
                c[0] = 1; // CZYX: one channel of one slice per chunk
            }
            c
        });
        let spec = CreateSpec {
            flat_chunk_keys: false,
            shape: shape.clone(),
            dtype: job.dtype.unwrap_or(slice.dtype),
            chunks,
            shards: job.shards.clone(),
            // Resolved here: a refusal comes before staging, and the fingerprint (checked on
            // --resume) names the codec written, as it did before `auto` existed.
            codec: job.codec.for_format(&target)?,
            dimension_names: Some(names.iter().map(|s| s.to_string()).collect()),
            attributes: Map::new(),
        };
        let spec = spec.validated()?;
        if let (Address::Npy { .. } | Address::Pt { .. }, Some(_)) = (&target, &job.shards) {
            return Err(Error::parameter(
                "shards",
                "sharding is a Zarr feature; .npy and .pt outputs have no chunks",
            ));
        }
        let block = spec.write_block()[stack_axis];
        let slice_bytes = shape.iter().product::<u64>() / nz * spec.dtype.size() as u64;
        let runs = crate::exec::unit_runs(nz, block, slice_bytes);
        let in_bytes = slice.shape.iter().product::<u64>() * slice.dtype.size() as u64;
        let units = runs
            .iter()
            .map(|r| UnitInfo {
                label: format!("slices {}..{}", r.start, r.end),
                bytes_in: in_bytes * (r.end - r.start),
                bytes_out: slice_bytes * (r.end - r.start),
            })
            .collect();
        let attributes = provenance(job, stack, &names, slice.dtype);
        Ok(ConvertOp {
            targets: [target],
            files: stack.files.iter().map(|(_, p)| p.clone()).collect(),
            slice,
            spec,
            stack_axis,
            runs,
            units,
            attributes,
            writer: Mutex::new(None),
            spare_slabs: Default::default(),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            input_dir: job.input.clone(),
            rounding_warned: std::sync::Once::new(),
        })
    }

    /// Decodes slice `index` into `target` (converting to the output dtype if asked).
    fn read_slice<T: Element>(
        &self,
        index: usize,
        target: ndarray::ArrayViewMutD<'_, T>,
    ) -> Result<()> {
        let path = &self.files[index];
        if let Some(value) = images::read_into(path, &self.slice, target)? {
            self.rounding_warned.call_once(|| {
                tracing::warn!(
                    "{}: float value {value} has a fractional part, rounded to {}; --dtype {} rounds every such value to the nearest integer (warned once per stack)",
                    path.display(),
                    value.round(),
                    self.spec.dtype
                )
            });
        }
        Ok(())
    }
}

/// The output's provenance attributes: tessera's version and operation, the source directory,
/// pattern, stack, files, index range and missing indices, axis order and source type.
fn provenance(
    job: &ConvertJob,
    stack: &Stack,
    names: &[&str],
    source: DType,
) -> Map<String, Value> {
    let indices: Vec<u64> = stack.files.iter().map(|(i, _)| *i).collect();
    let mut attributes = Map::new();
    attributes.insert("tessera_version".into(), json!(env!("CARGO_PKG_VERSION")));
    attributes.insert("tessera_operation".into(), json!("convert"));
    let directory = std::fs::canonicalize(&job.input).unwrap_or_else(|_| job.input.clone());
    attributes.insert(
        "source_directory".into(),
        json!(directory.display().to_string()),
    );
    attributes.insert("source_pattern".into(), json!(job.pattern));
    attributes.insert("source_stack".into(), json!(stack.name));
    attributes.insert(
        "source_files".into(),
        json!(stack
            .files
            .iter()
            .map(|(_, p)| p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned())
            .collect::<Vec<_>>()),
    );
    attributes.insert(
        "index_range".into(),
        json!([indices[0], indices[indices.len() - 1]]),
    );
    attributes.insert("missing_indices".into(), json!(stack.missing));
    attributes.insert("axis_order".into(), json!(names.join("").to_uppercase()));
    attributes.insert("source_dtype".into(), json!(source.name()));
    attributes
}

impl ConvertOp {
    /// The chunks of a slab when the output keeps them raw (uncompressed Zarr, unsharded) and
    /// each is whole but at the array's tail: they are then written straight from the slab,
    /// in parallel, with no copy (zarrs would copy the slab, then each chunk, and write them).
    fn raw_chunks(&self, writer: &dyn ArrayWriter, region: &Region) -> Option<Vec<Region>> {
        if !(writer.streams_blocks() && cfg!(target_endian = "little")) {
            return None;
        }
        kernel::raw_chunk_boxes(&self.spec.shape, &self.spec.chunks, region)
    }
}

/// Writes each chunk of `slab` (covering `region`) to its file row by row, the chunks on the
/// rank's threads; the bytes are zarrs' own (little-endian elements, C order, the tail padded).
///
/// # Errors
/// The first write failure, in chunk order.
fn write_raw_chunks<T: Element>(
    writer: &dyn ArrayWriter,
    region: &Region,
    slab: &ndarray::ArrayD<T>,
    chunks: &[Region],
) -> Result<()> {
    let written: Vec<Result<()>> = chunks
        .par_iter()
        .map(|chunk| {
            let mut sink = writer.block_sink(chunk)?;
            for row in kernel::chunk_view(slab, region, chunk).rows() {
                match row.as_slice() {
                    Some(values) => sink.append(bytemuck::cast_slice(values))?,
                    None => sink.append(bytemuck::cast_slice(&row.to_vec()))?,
                }
            }
            sink.finish()
        })
        .collect();
    written.into_iter().collect()
}

impl Operation for ConvertOp {
    type Output = (Region, Block);
    crate::exec::plan_fields!("convert"; targets, units, parameters, spec);

    fn memory_per_unit(&self) -> u64 {
        // The slab, plus one decoded slice per thread.
        let slice = self.units.first().map_or(0, |u| {
            u.bytes_in / (self.runs[0].end - self.runs[0].start).max(1)
        });
        self.units.iter().map(|u| u.bytes_out).max().unwrap_or(0)
            + slice * rayon::current_num_threads() as u64
    }

    fn inputs(&self) -> Vec<Place> {
        vec![Place::Directory(self.input_dir.clone())]
    }

    fn fingerprint(&self) -> Value {
        json!({
            "files": self.files,
            "shape": self.spec.shape,
            "dtype": self.spec.dtype,
            "chunks": self.spec.chunks,
            "shards": self.spec.shards,
            "codec": self.spec.codec,
            "units": self.runs.len(),
        })
    }

    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let writer = io::create(&staging[0], &self.spec, comm, resume)?;
        *self.writer.lock().expect("writer lock") = Some(writer);
        Ok(())
    }

    fn compute(&self, unit: usize) -> Result<(Region, Block)> {
        let run = self.runs[unit].clone();
        let region = Region::slab(&self.spec.shape, self.stack_axis, run.clone());
        let first = run.start as usize;
        let spare = self.spare_slabs.take(|b| b.shape() == region.shape);
        let block = with_dtype!(self.spec.dtype, T => {
            // Every element is overwritten by fill_slab, so a reused slab needs no clearing.
            let mut slab = spare
                .and_then(|b| b.into_array::<T>())
                .unwrap_or_else(|| ndarray::ArrayD::<T>::default(region.shape_usize()));
            kernel::fill_slab(&mut slab, self.stack_axis, |i, target| self.read_slice::<T>(first + i, target))?;
            T::into_block(slab)
        });
        Ok((region, block))
    }

    fn write(&self, part: Option<(usize, (Region, Block))>) -> Result<()> {
        let guard = self.writer.lock().expect("writer lock");
        let writer = guard.as_ref().expect("open_output ran before write");
        match part {
            Some((_, (region, block))) => {
                match self.raw_chunks(writer.as_ref(), &region) {
                    Some(chunks) => {
                        with_block!(&block, a => write_raw_chunks(writer.as_ref(), &region, a, &chunks))?
                    }
                    None => writer.write_box(Some((&region, &block)))?,
                }
                self.spare_slabs.keep(block);
                Ok(())
            }
            None => writer.write_box(None),
        }
    }

    fn finish(&self, _comm: &dyn Comm) -> Result<()> {
        let writer = self
            .writer
            .lock()
            .expect("writer lock")
            .take()
            .expect("open_output ran");
        writer.set_attributes(&self.attributes)?;
        writer.close()
    }
}

/// Points each stack's conversion at a temporary level-0 store and returns the pyramid job
/// that turns it into the requested output.
fn plan_pyramids(
    job: &ConvertJob,
    levels: &str,
    ops: &mut [ConvertOp],
) -> Result<Vec<crate::ops::pyramid::params::PyramidJob>> {
    let levels = match levels {
        "auto" => None,
        n => Some(n.parse::<u64>().map_err(|_| {
            Error::parameter(
                "pyramid-levels",
                format!("`{n}` is neither a number nor `auto`"),
            )
        })?),
    };
    let mut jobs = Vec::new();
    for op in ops.iter_mut() {
        let target = op.targets[0].clone();
        let Address::Zarr { store, node } = &target else {
            return Err(Error::parameter(
                "pyramid-levels",
                format!(
                    "{target} is not a Zarr store: pyramids are OME-Zarr (give --output name.zarr)"
                ),
            ));
        };
        let axes = match (op.spec.shape.len(), job.axis_order) {
            (3, _) => "zyx",
            (4, AxisOrder::Czyx) => "czyx",
            _ => {
                return Err(Error::parameter(
                    "pyramid-levels",
                    "OME-Zarr orders channels before z: convert multi-channel stacks with --axis-order czyx",
                ))
            }
        };
        // Refuse an existing output now, before converting anything.
        crate::io::staging::Staging::plan(&target, job.run.overwrite, job.run.resume)?;
        let mut temp = store.clone().into_os_string();
        temp.push(".level0-tmp.zarr");
        op.targets[0] = Address::Zarr {
            store: std::path::PathBuf::from(temp),
            node: node.clone(),
        };
        jobs.push(crate::ops::pyramid::params::PyramidJob {
            input: op.targets[0].to_string(),
            output: target.to_string(),
            axes: Some(axes.into()),
            factor: job.pyramid_factor.clone(),
            levels,
            method: job.pyramid_method,
            chunks: None,
            shards: None,
            codec: job.codec,
            layout: crate::ops::pyramid::params::PyramidLayout::Ome,
            voxel_size: None,
            unit: None,
            device: crate::gpu::DeviceChoice::Cpu,
            gpu_memory_limit: None,
            run: job.run.clone(),
        });
        // Levels and factors are checked now, against the level 0 about to be written, not
        // after converting it.
        let level0 = PlannedLevel0(crate::io::ArrayMeta {
            chunks: Some(op.spec.chunks.clone()),
            shards: op.spec.shards.clone(),
            dimension_names: op.spec.dimension_names.clone(),
            ..crate::io::ArrayMeta::contiguous(op.spec.shape.clone(), op.spec.dtype)
        });
        let planned = &jobs[jobs.len() - 1];
        crate::ops::pyramid::PyramidOp::plan_from(
            planned,
            op.targets[0].clone(),
            Box::new(level0),
        )?;
    }
    Ok(jobs)
}

/// The level 0 that `convert --pyramid-levels` is about to write, as far as planning its
/// pyramid needs it: the metadata. Nothing reads it.
struct PlannedLevel0(crate::io::ArrayMeta);

impl crate::io::ArrayReader for PlannedLevel0 {
    fn meta(&self) -> &crate::io::ArrayMeta {
        &self.0
    }
    fn read_box_reusing(
        &self,
        _region: &Region,
        _spare: Option<crate::io::Block>,
    ) -> Result<crate::io::Block> {
        Err(Error::parameter(
            "pyramid-levels",
            "level 0 is read before it is written (a bug)",
        ))
    }
}

/// Runs `tessera convert`: scans the input, then converts each stack in turn (every rank
/// takes part in each). Gaps in the index sequence are warned about, with the missing indices.
///
/// # Errors
/// The first failure, naming its file or parameter; stacks already converted stay published.
pub fn run(job: &ConvertJob, comm: &dyn Comm) -> Result<Vec<crate::exec::RunSummary>> {
    let stacks = scan(&job.input, &job.pattern, job.extension.as_deref())?;
    let several = stacks.len() > 1;
    // Plan every stack before writing any, so a bad slice in the last stack stops the run
    // before the first output exists.
    let mut ops = stacks
        .iter()
        .map(|stack| ConvertOp::plan(job, stack, several, comm))
        .collect::<Result<Vec<_>>>()?;
    // With --pyramid-levels each stack is converted to a temporary level-0 store beside its
    // output, then `pyramid` writes the OME-Zarr group there (and the temporary goes).
    let pyramids = match &job.pyramid_levels {
        Some(levels) => Some(plan_pyramids(job, levels, &mut ops)?),
        None => None,
    };
    let mut summaries = Vec::new();
    for (i, (stack, op)) in stacks.iter().zip(&ops).enumerate() {
        if comm.is_root() {
            if !stack.missing.is_empty() {
                tracing::warn!(
                    "stack {:?}: {} missing slice index(es) between {} and {}: {}",
                    stack.name,
                    stack.missing.len(),
                    stack.files[0].0,
                    stack.files[stack.files.len() - 1].0,
                    grid::describe_ranges(&stack.missing)
                );
            }
            tracing::info!(
                "stack {:?}: {} slices of {:?} {} -> {} {:?} {} (chunks {:?}{})",
                stack.name,
                stack.files.len(),
                op.slice.shape,
                op.slice.dtype,
                op.targets[0],
                op.spec.shape,
                op.spec.dtype,
                op.spec.chunks,
                op.spec
                    .shards
                    .as_ref()
                    .map_or(String::new(), |s| format!(", shards {s:?}"))
            );
        }
        let mut run = job.run.clone();
        if pyramids.is_some() {
            // The level-0 temporary is always rebuilt; the options apply to the pyramid.
            run = crate::exec::RunOptions {
                overwrite: true,
                resume: false,
                report: None,
                ..run
            };
        }
        summaries.push(crate::exec::run(op, comm, &run)?);
        if let Some(p) = &pyramids {
            let pjob = &p[i];
            if !job.run.dry_run {
                let pop = crate::ops::pyramid::PyramidOp::plan(pjob)?;
                summaries.push(crate::exec::run(&pop, comm, &pjob.run)?);
            }
            crate::comm::on_root(comm, || {
                crate::io::staging::remove_any(Path::new(&pjob.input))
            })?;
        }
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        for n in names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
    }

    #[test]
    fn scan_groups_orders_and_reports_gaps() {
        let d = tempfile::tempdir().unwrap();
        touch(
            d.path(),
            &[
                "a_10.tif",
                "a_2.tif",
                "a_3.tif",
                "b_0.tif",
                "notes.txt",
                "a_5.png",
            ],
        );
        let stacks = scan(d.path(), r"(.+)_(\d+)\.tif$", None).unwrap();
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].name, "a");
        let idx: Vec<u64> = stacks[0].files.iter().map(|f| f.0).collect();
        assert_eq!(idx, vec![2, 3, 10]);
        assert_eq!(stacks[0].missing, vec![4, 5, 6, 7, 8, 9]);
        let stacks = scan(d.path(), r"(.+)_(\d+)\.\w+$", Some(".png")).unwrap();
        assert_eq!(stacks[0].files.len(), 1);
    }

    #[test]
    fn scan_errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let e = scan(d.path(), r"(.+)_(\d+)", None).unwrap_err().to_string();
        assert!(e.contains("holds no files"), "{e}");
        touch(d.path(), &["x_1.tif", "x_01.tif"]);
        let e = scan(d.path(), r"(.+)_(\d+)", None).unwrap_err().to_string();
        assert!(e.contains("both have slice index 1"), "{e}");
        let e = scan(d.path(), r"(.+)\.tif", None).unwrap_err().to_string();
        assert!(e.contains("1 capture group"), "{e}");
        let e = scan(d.path(), r"(.+)_(\d+", None).unwrap_err().to_string();
        assert!(e.contains("not a valid regular expression"), "{e}");
        let e = scan(d.path(), r"(y)_(\d+)", None).unwrap_err().to_string();
        assert!(e.contains("no file") && e.contains("x_01.tif"), "{e}");
        let e = scan(d.path(), r"(x)_(.+)\.tif", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a slice index") || e.contains("both have"),
            "{e}"
        );
        let e = scan(&d.path().join("nope"), r"(.+)_(\d+)", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
