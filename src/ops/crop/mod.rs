//! `tessera crop`: two-pass automatic cropping of 4D-STEM diffraction patterns, streaming.
//!
//! Pass 1 (analysis): each rank streams its run of patterns in chunks of `--chunk-size` and
//! finds every pattern's total, centre and retention radius (`kernel`); the per-pattern
//! results (32 bytes each) are gathered to every rank, and the global radius is the exact
//! percentile of the radii plus the margin. Pass 2 (crop, an `exec` run): each rank crops its
//! chunks and writes its part of the output; retention per pattern (cropped / total) is
//! gathered to rank 0, which writes the statistics, the per-pattern arrays, the results JSON
//! and the plot. Per-pattern values do not depend on the rank count, and statistics are
//! computed from the gathered arrays in pattern order, so the outputs are identical for any
//! number of ranks.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
#[cfg(test)]
mod harness;
pub mod kernel;
pub mod params;
pub mod plot;
pub mod synthetic;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

use self::params::{CropJob, Recenter};
use crate::comm::{Comm, ReduceOp};
use crate::error::{Error, Result};
use crate::exec::{check_writes, Operation, RunSummary, UnitInfo};
use crate::grid::{partition_contiguous, Region};
use crate::io::safety::{self, Place};
use crate::io::{self, Address, ArrayReader, ArrayWriter, Block, CreateSpec, Element};
use kernel::{Analysis, CentreMethod, PatternKind};

/// Where the files beside the output go: `<output stem>_results.json` and friends.
pub fn side_file(output: &Address, suffix: &str) -> PathBuf {
    let container = output.container();
    let stem = container
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crop".into());
    container.with_file_name(format!("{stem}{suffix}"))
}

/// Every file crop writes beside its output (the `_test_input.npy` of `--test-mode` aside).
fn side_files(output: &Address, no_visualization: bool) -> Vec<PathBuf> {
    let mut suffixes = vec![
        "_radii.npy",
        "_retention.npy",
        "_centers.npy",
        "_results.json",
    ];
    if !no_visualization {
        suffixes.push("_visualization.png");
    }
    suffixes.into_iter().map(|s| side_file(output, s)).collect()
}

/// The input's layout: leading axes (kept) and pattern size.
#[derive(Clone, Debug)]
struct Layout {
    shape: Vec<u64>,
    /// Patterns per index of axis 0.
    per_row: u64,
    h: u64,
    w: u64,
}

impl Layout {
    fn n(&self) -> u64 {
        self.shape[0] * self.per_row
    }
    /// The region of rows `rows` of axis 0 (all patterns of them).
    fn rows(&self, rows: &Range<u64>) -> Region {
        Region::slab(&self.shape, 0, rows.clone())
    }
}

fn check_layout(address: &str, shape: &[u64]) -> Result<Layout> {
    let nd = shape.len();
    if !(3..=4).contains(&nd) {
        return Err(Error::address(
            address,
            format!("has {nd} axes {shape:?}; expected patterns (N, H, W), (N, 1, H, W) or a scan (Sy, Sx, H, W)"),
        ));
    }
    if shape.contains(&0) {
        return Err(Error::address(
            address,
            format!("has an empty axis: {shape:?}"),
        ));
    }
    Ok(Layout {
        shape: shape.to_vec(),
        per_row: shape[1..nd - 2].iter().product(),
        h: shape[nd - 2],
        w: shape[nd - 1],
    })
}

/// Refuses bad flags (all of them, the manual centre against the patterns' size); returns the
/// manual centre.
fn check_parameters(job: &CropJob, layout: &Layout) -> Result<Option<(f64, f64)>> {
    check_flags(job)?;
    check_centre(job, layout)
}

/// Refuses bad flags that need no input: retention targets, percentile, chunk size.
fn check_flags(job: &CropJob) -> Result<()> {
    let t = job.target_retention;
    if !(t > 0.0 && t <= 1.0) {
        return Err(Error::parameter(
            "target-retention",
            format!("{t} is outside (0, 1]"),
        ));
    }
    let m = job.min_retention;
    if !(m > 0.0 && m <= 1.0) {
        return Err(Error::parameter(
            "min-retention",
            format!("{m} is outside (0, 1]"),
        ));
    }
    if m > t {
        return Err(Error::parameter(
            "min-retention",
            format!("{m} is above --target-retention {t}"),
        ));
    }
    if !(0.0..=100.0).contains(&job.percentile) {
        return Err(Error::parameter(
            "percentile",
            format!("{} is outside [0, 100]", job.percentile),
        ));
    }
    if job.chunk_size == 0 {
        return Err(Error::parameter("chunk-size", "0 patterns per chunk"));
    }
    Ok(())
}

/// The manual centre (`--center manual`), checked against the patterns' size, and a margin
/// whose crop side (2R + 1, R at most H + W plus the margin) fits in 64 bits.
fn check_centre(job: &CropJob, layout: &Layout) -> Result<Option<(f64, f64)>> {
    let widest = crate::grid::checked_add("margin-pixels", layout.h + layout.w, job.margin_pixels)?;
    crate::grid::checked_mul("margin-pixels", widest, 2)
        .and_then(|d| crate::grid::checked_add("margin-pixels", d, 1))?;
    match (job.center, &job.manual_center) {
        (CentreMethod::Manual, None) => Err(Error::parameter(
            "manual-center",
            "--center manual needs --manual-center Y,X",
        )),
        (CentreMethod::Manual, Some(c)) => {
            if c.len() != 2 {
                return Err(Error::parameter("manual-center", "give two values, Y,X"));
            }
            let (y, x) = (c[0], c[1]);
            let inside = |v: f64, n: u64| v.is_finite() && v >= 0.0 && v <= (n - 1) as f64;
            if !inside(y, layout.h) || !inside(x, layout.w) {
                return Err(Error::parameter(
                    "manual-center",
                    format!(
                        "({y}, {x}) is outside the {}x{} pattern",
                        layout.h, layout.w
                    ),
                ));
            }
            Ok(Some((y, x)))
        }
        (_, Some(_)) => Err(Error::parameter(
            "manual-center",
            "only with --center manual",
        )),
        (_, None) => Ok(None),
    }
}

/// Adds each pattern of `flat` (patterns of `hw` values) into `sum`, in order. An empty `sum`
/// starts as the first pattern: a fresh zeroed buffer would be read before it is written, and
/// each of its pages would then take a second fault and a TLB shootdown across threads.
fn add_patterns<T: Element>(flat: &[T], hw: usize, sum: &mut Vec<f64>) {
    let mut patterns = flat.chunks_exact(hw);
    if sum.is_empty() {
        let Some(p) = patterns.next() else { return };
        sum.extend(p.iter().map(|&v| v.to_f64().unwrap_or(0.0)));
    }
    for p in patterns {
        for (a, &v) in sum.iter_mut().zip(p) {
            *a += v.to_f64().unwrap_or(0.0);
        }
    }
}

/// Adds `part` into `sum` (an empty `part` holds nothing).
fn add_into(sum: &mut [f64], part: &[f64]) {
    sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
}

/// This rank's device for crop: the selection (for the report) and, on a GPU, its kernels.
#[derive(Clone, Default)]
struct CropDevice {
    selected: crate::gpu::Selected,
    #[cfg(feature = "cuda")]
    gpu: Option<std::sync::Arc<cuda::CropGpu>>,
}

impl CropDevice {
    fn new(selected: crate::gpu::Selected, job: &CropJob, manual: Option<(f64, f64)>) -> Self {
        #[cfg(feature = "cuda")]
        let gpu = match &selected.backend {
            crate::gpu::Backend::Cuda(g) => Some(std::sync::Arc::new(cuda::CropGpu::new(
                g.clone(),
                job.center,
                manual,
                job.target_retention,
            ))),
            _ => None,
        };
        #[cfg(not(feature = "cuda"))]
        let _ = (job, manual);
        CropDevice {
            selected,
            #[cfg(feature = "cuda")]
            gpu,
        }
    }

    /// Pass 1 of the patterns of `flat` on the GPU; `None` on the CPU.
    fn analyse<T: Element>(&self, flat: &[T], hw: (usize, usize)) -> Option<Result<Vec<Analysis>>> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return Some(gpu.analyse(flat, hw));
        }
        let _ = (flat, hw);
        None
    }

    /// Pass 2 of the patterns of `flat` on the GPU (windows into `out`, their retention sums
    /// returned); `None` on the CPU.
    fn crop<T: Element>(
        &self,
        flat: &[T],
        hw: (usize, usize),
        side: (usize, usize),
        (starts, scales): (&[(u64, u64)], &[i32]),
        out: &mut [T],
    ) -> Option<Result<Vec<f64>>> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return Some(gpu.crop(flat, hw, side, starts, scales, out));
        }
        let _ = (flat, hw, side, starts, scales, out);
        None
    }
}

/// Patterns analysed in sequence by one task: each starts its radius search from the
/// previous pattern's radius (neighbouring scan positions look alike).
const GUESS_RUN: usize = 8;

/// Analyses the patterns of `flat` (runs of patterns in parallel, results in pattern order)
/// and, when `sum` is given, adds them into it (the split into pieces per thread makes the last
/// bits of that sum depend on the thread count, which only the plot sees). Returns the index within `flat` of the first pattern
/// holding NaN or infinite values instead.
fn analyse_flat<T: Element>(
    flat: &[T],
    (hw, w): (usize, usize),
    job: &CropJob,
    manual: Option<(f64, f64)>,
    sum: Option<&mut [f64]>,
    device: &CropDevice,
) -> Result<std::result::Result<Vec<Analysis>, usize>> {
    let out = match device.analyse(flat, (hw / w.max(1), w)) {
        Some(done) => {
            let done = done?;
            if let Some(sum) = sum {
                let mut part = Vec::new();
                add_patterns(flat, hw, &mut part);
                add_into(sum, &part);
            }
            done
        }
        None => analyse_on_cpu(flat, (hw, w), job, manual, sum),
    };
    Ok(
        match out.iter().position(|a| a.kind == PatternKind::NotFinite) {
            Some(i) => Err(i),
            None => Ok(out),
        },
    )
}

/// [`analyse_flat`] on the CPU: runs of patterns in parallel, each run starting its radius
/// search from the previous pattern's radius.
fn analyse_on_cpu<T: Element>(
    flat: &[T],
    (hw, w): (usize, usize),
    job: &CropJob,
    manual: Option<(f64, f64)>,
    sum: Option<&mut [f64]>,
) -> Vec<Analysis> {
    use rayon::prelude::*;
    let plot = sum.is_some();
    let threads = rayon::current_num_threads();
    // Runs short enough for every thread to get one: a unit is often a few patterns (4 of
    // 256x256 float32 in a 1 MiB unit), which runs of GUESS_RUN left to one thread. A radius
    // does not depend on its guess (kernel tests), so neither do the analyses on the split.
    let patterns = flat.len() / hw.max(1);
    let run_len = GUESS_RUN.min(patterns.div_ceil(threads)).max(1);
    // A few pieces per thread, each with one sum for the plot.
    let runs = patterns.div_ceil(run_len).max(1);
    let per_piece = runs.div_ceil(2 * threads).max(1);
    let pieces: Vec<(Vec<Analysis>, Vec<f64>)> = flat
        .par_chunks(hw * run_len * per_piece)
        .map(|piece| {
            let mut part = Vec::new();
            let mut out = Vec::with_capacity(piece.len() / hw);
            for run in piece.chunks(hw * run_len) {
                let mut guess = None;
                for p in run.chunks_exact(hw) {
                    let a = kernel::analyse(p, w, job.center, manual, job.target_retention, guess);
                    if a.kind == PatternKind::Normal {
                        guess = Some(a.radius);
                    }
                    out.push(a);
                }
                if plot {
                    add_patterns(run, hw, &mut part);
                }
            }
            (out, part)
        })
        .collect();
    let mut out = Vec::with_capacity(flat.len() / hw.max(1));
    let mut sum = sum;
    for (done, part) in pieces {
        out.extend(done);
        if let Some(sum) = sum.as_deref_mut() {
            add_into(sum, &part);
        }
    }
    out
}

/// Pass 2: crop units (runs of axis-0 rows) into the output.
struct CropOp {
    input: Box<dyn ArrayReader>,
    layout: Layout,
    targets: Vec<Address>,
    spec: CreateSpec,
    chunks: Vec<Range<u64>>,
    units: Vec<UnitInfo>,
    /// Crop window start (y, x) per pattern.
    starts: Vec<(u64, u64)>,
    side: (u64, u64),
    /// Per pattern: the fixed-point scale and the total in q units (retention is exact).
    scales: Vec<i32>,
    totals_q: Vec<f64>,
    device: CropDevice,
    writer: Mutex<Option<Box<dyn ArrayWriter>>>,
    /// Retention per pattern of the units this rank cropped, by unit.
    retention: Mutex<BTreeMap<usize, Vec<f64>>>,
    /// Sum of this rank's cropped patterns (for the plot), when a plot is drawn.
    sum_after: Option<Mutex<Vec<f64>>>,
    /// Input blocks of finished units, reused for the next reads.
    spares: crate::exec::Spares<Block>,
    /// Output blocks already written, reused for the next crops.
    out_spares: crate::exec::Spares<Block>,
    /// `--resume` identity: the job, and the radius and shape pass 1 found.
    parameters: Value,
    fingerprint: Value,
    input_address: Address,
    side_files: Vec<PathBuf>,
}

impl CropOp {
    /// Crops the patterns of `flat` (patterns `first..` of the input) into a block of
    /// `region`'s shape, and records their retention (and their sum, for the plot).
    fn crop_flat<T: Element>(
        &self,
        unit: usize,
        flat: &[T],
        first: usize,
        region: &Region,
    ) -> Result<Block> {
        let (h, w) = (self.layout.h as usize, self.layout.w as usize);
        let (sh, sw) = (self.side.0 as usize, self.side.1 as usize);
        let shape = region.shape_usize();
        let mut out = self
            .out_spares
            .take(|b| b.shape() == region.shape)
            .and_then(|b| b.into_array::<T>())
            .unwrap_or_else(|| ArrayD::from_elem(IxDyn(&shape), T::default()));
        let dst = out.as_slice_mut().expect("C-order");
        let count = flat.len() / (h * w).max(1);
        let kept = match self.device.crop(
            flat,
            (h, w),
            (sh, sw),
            (
                &self.starts[first..first + count],
                &self.scales[first..first + count],
            ),
            dst,
        ) {
            Some(kept) => kept?,
            None => self.crop_on_cpu(flat, first, dst),
        };
        let retention = kept
            .iter()
            .zip(&self.totals_q[first..first + count])
            .map(|(&k, &total)| if total > 0.0 { k / total } else { f64::NAN })
            .collect();
        if let Some(sum) = &self.sum_after {
            let mut part = Vec::new();
            add_patterns(dst, sh * sw, &mut part);
            add_into(&mut sum.lock().expect("sum"), &part);
        }
        self.retention
            .lock()
            .expect("retention")
            .insert(unit, retention);
        Ok(Element::into_block(out))
    }

    /// [`CropOp::crop_flat`] on the CPU: each pattern's window into `dst`, in parallel; the
    /// windows' sums in q units.
    fn crop_on_cpu<T: Element>(&self, flat: &[T], first: usize, dst: &mut [T]) -> Vec<f64> {
        use rayon::prelude::*;
        let (hw, w) = (
            (self.layout.h * self.layout.w) as usize,
            self.layout.w as usize,
        );
        let (sh, sw) = (self.side.0 as usize, self.side.1 as usize);
        flat.par_chunks_exact(hw)
            .zip(dst.par_chunks_exact_mut(sh * sw))
            .enumerate()
            .map(|(i, (p, o))| {
                let (y0, x0) = self.starts[first + i];
                let fixed = kernel::Fixed::from_scale(self.scales[first + i]);
                kernel::crop_into(p, w, (y0 as usize, x0 as usize), sw, fixed, o)
            })
            .collect()
    }
}

impl Operation for CropOp {
    type Output = (Region, Block);

    fn name(&self) -> &'static str {
        "crop"
    }
    fn targets(&self) -> &[Address] {
        &self.targets
    }
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        vec![crate::exec::disk::PlannedOutput::array(
            &self.targets[0],
            &self.spec,
        )]
    }
    fn units(&self) -> &[UnitInfo] {
        &self.units
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn fingerprint(&self) -> Value {
        self.fingerprint.clone()
    }
    fn inputs(&self) -> Vec<Place> {
        vec![Place::Array(self.input_address.clone())]
    }
    fn side_files(&self) -> Vec<PathBuf> {
        self.side_files.clone()
    }
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        Some(self.device.selected.report())
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        *self.writer.lock().expect("writer") =
            Some(io::create(&staging[0], &self.spec, comm, resume)?);
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let rows = self.chunks[unit].clone();
        let hw = (self.layout.h * self.layout.w) as usize;
        let first = (rows.start * self.layout.per_row) as usize;
        let count = ((rows.end - rows.start) * self.layout.per_row) as usize;
        let mut region = self.layout.rows(&rows);
        let nd = region.shape.len();
        region.shape[nd - 2] = self.side.0;
        region.shape[nd - 1] = self.side.1;
        // In place from a memory-mapped input: only the window's rows are touched.
        let mapped = crate::with_dtype!(self.input.meta().dtype, T =>
            io::mapped_elements::<T>(self.input.as_ref())
                .map(|all| self.crop_flat(unit, &all[first * hw..][..count * hw], first, &region)));
        if let Some(out) = mapped {
            return Ok((region, out?));
        }
        let spare = self.spares.take(|_| true);
        let block = self
            .input
            .read_box_reusing(&self.layout.rows(&rows), spare)?;
        let out = crate::with_block!(&block, a => {
            self.crop_flat(unit, a.as_slice().expect("blocks are C-order"), first, &region)
        });
        self.spares.keep(block);
        Ok((region, out?))
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writer = self.writer.lock().expect("writer");
        writer
            .as_ref()
            .expect("opened")
            .write_box(part.as_ref().map(|(_, (r, b))| (r, b)))?;
        if let Some((_, (_, block))) = part {
            self.out_spares.keep(block);
        }
        Ok(())
    }
    fn finish(&self, _comm: &dyn Comm) -> Result<()> {
        let writer = self.writer.lock().expect("writer").take();
        writer.map_or(Ok(()), |w| w.close())
    }
}

fn to_bytes(v: &[f64]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}
fn from_bytes(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Mean, min, max, population std of `v` (in order).
fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max, var.sqrt())
}

/// Pass 1's findings, the same on every rank: per pattern, in pattern order, its total,
/// centre and retention radius, and which patterns can be cropped by their own centre.
struct Survey {
    n: usize,
    cys: Vec<f64>,
    cxs: Vec<f64>,
    radii: Vec<f64>,
    /// Fixed-point scale and total in q units (kernel::Fixed).
    scales: Vec<i32>,
    totals_q: Vec<f64>,
    /// The patterns that sum to more than zero (the others are left out of the statistics).
    normal: Vec<usize>,
    empty: usize,
    negative: usize,
}

impl Survey {
    fn normal_radii(&self) -> Vec<f64> {
        self.normal.iter().map(|&i| self.radii[i]).collect()
    }
}

/// The crop every pattern gets.
struct Window {
    /// The `--percentile` of the normal patterns' radii, before the margin.
    chosen: f64,
    /// The global radius R (chosen, rounded up, plus the margin).
    radius: u64,
    /// The cropped pattern's (height, width): 2R + 1, or the full size where that does not fit.
    side: (u64, u64),
    /// The mean centre of the normal patterns (`--recenter common`, and the plot's circle).
    common: (f64, f64),
    /// Crop window start (y, x) per pattern.
    starts: Vec<(u64, u64)>,
}

/// What the run settled before cropping: the input, the output and pass 1's findings.
struct Plan {
    input_text: String,
    output: Address,
    layout: Layout,
    survey: Survey,
    window: Window,
}

/// Runs `tessera crop` on this rank: the input (or `--test-mode`'s synthetic one), pass 1
/// (`survey`), the global window, pass 2 through exec (`CropOp`), then the validation and the
/// files beside the output on rank 0 (`report`).
///
/// # Errors
/// Bad input or parameters (naming them), I/O failures; with `--strict`, a pattern below
/// `--min-retention` (after the outputs are written).
pub fn run(job: &CropJob, comm: &dyn Comm) -> Result<Vec<RunSummary>> {
    let started = Instant::now();
    let output = Address::parse(&job.output)?;
    check_flags(job)?;
    // --test-mode writes its input: `--device cuda` where no GPU can be used must stop the run
    // before that (auto and cpu cannot fail). Otherwise the device is chosen once the
    // parameters are checked, so that a bad flag is one error line before the device's log.
    let select = || {
        crate::gpu::select(
            job.device,
            job.gpu_memory_limit.as_deref(),
            comm,
            "crop",
            true,
        )
    };
    let cuda = matches!(job.device, crate::gpu::DeviceChoice::Cuda(_));
    let early = if job.test_mode && cuda {
        Some(select()?)
    } else {
        None
    };
    let Some(input_text) = resolve_input(job, comm, &output)? else {
        return Ok(vec![RunSummary::dry_run("crop", &output, comm.size())]);
    };
    let input_addr = Address::parse(&input_text)?;
    let input = io::open(&input_addr)?;
    let layout = check_layout(&input_text, &input.meta().shape)?;
    let manual = check_parameters(job, &layout)?;
    let (rows_per_chunk, chunks) = plan_chunks(job, &layout, input.as_ref());
    let selected = match early {
        Some(selected) => selected,
        None => select()?,
    };
    let device = CropDevice::new(selected, job, manual);

    let pass1 = Pass1 {
        input: input.as_ref(),
        layout: &layout,
        chunks: &chunks,
        job,
        manual,
        device: &device,
    };
    let (survey, sum_before) = pass1.survey(comm, &input_text)?;
    tracing::debug!(
        "crop pass 1 (analysis) took {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let window = choose_window(job, &layout, &survey)?;
    if comm.is_root() {
        warn_about(&layout, &survey, &window);
    }
    let plan = Plan {
        input_text,
        output,
        layout,
        survey,
        window,
    };

    let op = crop_op(
        job,
        &plan,
        (input, input_addr),
        chunks,
        rows_per_chunk,
        device,
    )?;
    let summary = crate::exec::run(&op, comm, &job.run)?;
    if summary.already_complete {
        // A requeued job that had finished: its side files are the finished run's.
        return Ok(vec![summary]);
    }
    if job.run.resume && !job.run.dry_run {
        recrop_finished_units(&op, comm)?;
    }
    tracing::debug!(
        "crop pass 2 (crop, write) done at {:.3} s",
        started.elapsed().as_secs_f64()
    );
    if job.run.dry_run {
        return Ok(vec![summary]);
    }
    report(job, comm, &op, &plan, sum_before, started)?;
    Ok(vec![summary])
}

/// The input to crop: `--input`, or with `--test-mode` the synthetic patterns, written once
/// by rank 0 beside the output (and reused by `--resume`). `None`: a dry run of
/// `--test-mode`, which writes nothing and only says what it would do.
fn resolve_input(job: &CropJob, comm: &dyn Comm, output: &Address) -> Result<Option<String>> {
    match (&job.input, job.test_mode) {
        (Some(_), true) => Err(Error::parameter(
            "test-mode",
            "--test-mode makes its own input; drop --input",
        )),
        (Some(i), false) => Ok(Some(i.clone())),
        (None, true) if job.run.dry_run => {
            // A dry run writes nothing, not even the synthetic input it would crop.
            if comm.is_root() {
                println!(
                    "crop (dry run): --test-mode would write {} ({} patterns of {}x{} float32), then crop it into {output}",
                    side_file(output, "_test_input.npy").display(),
                    job.test_patterns,
                    job.test_size,
                    job.test_size
                );
            }
            Ok(None)
        }
        (None, true) => {
            let path = side_file(output, "_test_input.npy");
            // A resumed run crops the same synthetic patterns (their parameters are checked
            // with the others'): they are written once.
            let reuse = job.run.resume && path.is_file();
            let made = if comm.is_root() && !reuse {
                let mut written = side_files(output, job.no_visualization);
                written.push(path.clone());
                check_writes(&[], std::slice::from_ref(output), &written, &job.run).and_then(|()| {
                    safety::write_file(&path, job.run.overwrite, |tmp| {
                        synthetic::write(tmp, job.test_patterns, job.test_size, job.seed)
                    })
                })
            } else {
                Ok(())
            };
            crate::comm::agree(comm, made)?;
            Ok(Some(path.to_string_lossy().into_owned()))
        }
        (None, false) => Err(Error::parameter(
            "input",
            "required (or --test-mode for synthetic patterns)",
        )),
    }
}

/// Units of both passes: runs of axis-0 rows holding at most --chunk-size patterns, and no
/// more than the unit budget (TESSERA_UNIT_BYTES, 64 MiB) so that reading, cropping and writing
/// overlap. Returns (rows per run, the runs).
fn plan_chunks(job: &CropJob, layout: &Layout, input: &dyn ArrayReader) -> (u64, Vec<Range<u64>>) {
    let pattern_bytes = layout.h * layout.w * input.meta().dtype.size() as u64;
    let target = crate::exec::target_unit_bytes(pattern_bytes * layout.n());
    let budget = crate::grid::blocks_for_target(pattern_bytes, target);
    let rows_per_chunk = (job.chunk_size.min(budget) / layout.per_row).max(1);
    let chunks = crate::grid::block_aligned_runs(layout.shape[0], rows_per_chunk, 1);
    (rows_per_chunk, chunks)
}

/// Pass 1 over this rank's chunks (the same split as pass 2, which exec makes).
struct Pass1<'a> {
    input: &'a dyn ArrayReader,
    layout: &'a Layout,
    chunks: &'a [Range<u64>],
    job: &'a CropJob,
    manual: Option<(f64, f64)>,
    device: &'a CropDevice,
}

impl Pass1<'_> {
    /// Analyses this rank's patterns, refuses (on every rank) an input with a NaN or infinite
    /// pattern, and gathers every pattern's findings to every rank. Also returns this rank's
    /// sum of its patterns, for the plot (zeros with `--no-visualization`).
    fn survey(&self, comm: &dyn Comm, input_text: &str) -> Result<(Survey, Vec<f64>)> {
        let (analyses, first_bad, sum_before) = crate::comm::agree(comm, self.analyse_mine(comm))?;
        let mut bad = [first_bad];
        comm.all_reduce_u64(&mut bad, ReduceOp::Min);
        if bad[0] != u64::MAX {
            return Err(Error::address(
                input_text,
                format!("pattern {} (flat index over the leading axes) holds NaN or infinite values; clean or mask it first", bad[0]),
            ));
        }
        let survey = gather_survey(comm, &analyses, self.layout.n() as usize);
        if survey.normal.is_empty() {
            return Err(Error::address(
                input_text,
                format!(
                    "every pattern sums to zero or less ({} zero, {} negative): nothing to crop",
                    survey.empty, survey.negative
                ),
            ));
        }
        Ok((survey, sum_before))
    }

    /// Analyses rows `rows` of the input (in place when it is memory-mapped, else read into
    /// `spare`) and adds them into `sum`; returns the per-pattern analyses, or the flat index of the
    /// first pattern with a NaN or infinite value.
    fn analyse_rows(
        &self,
        rows: &Range<u64>,
        sum: &mut [f64],
        spare: &mut Option<Block>,
    ) -> Result<std::result::Result<Vec<Analysis>, u64>> {
        let (input, layout, job, manual, device) =
            (self.input, self.layout, self.job, self.manual, self.device);
        let (hw, w) = ((layout.h * layout.w) as usize, layout.w as usize);
        let first = rows.start * layout.per_row;
        let count = ((rows.end - rows.start) * layout.per_row) as usize;
        let mut sum = (!job.no_visualization).then_some(sum);
        let mapped = crate::with_dtype!(input.meta().dtype, T => io::mapped_elements::<T>(input)
        .map(|all| {
            let flat = &all[first as usize * hw..][..count * hw];
            analyse_flat(flat, (hw, w), job, manual, sum.as_deref_mut(), device)
        }));
        let result = match mapped {
            Some(done) => done,
            None => {
                let block = input.read_box_reusing(&layout.rows(rows), spare.take())?;
                let block = spare.insert(block);
                crate::with_block!(&*block, a => {
                    let flat = a.as_slice().expect("blocks are C-order");
                    analyse_flat(flat, (hw, w), job, manual, sum, device)
                })
            }
        };
        Ok(result?.map_err(|i| first + i as u64))
    }

    /// This rank's analyses in pattern order, the flat index of its first NaN or infinite
    /// pattern (`u64::MAX` when none; analysis stops there), and its patterns' sum.
    fn analyse_mine(&self, comm: &dyn Comm) -> Result<(Vec<Analysis>, u64, Vec<f64>)> {
        let mine = partition_contiguous(self.chunks.len(), comm.size())[comm.rank()].clone();
        let mut analyses = Vec::new();
        let mut sum_before = vec![0.0f64; (self.layout.h * self.layout.w) as usize];
        let mut spare = None;
        for c in mine {
            match self.analyse_rows(&self.chunks[c], &mut sum_before, &mut spare)? {
                Ok(a) => analyses.extend(a),
                Err(bad) => return Ok((analyses, bad, sum_before)),
            }
        }
        Ok((analyses, u64::MAX, sum_before))
    }
}

/// Every pattern's (cy, cx, radius, kind, scale, total in q units), gathered from every rank to every rank.
fn gather_survey(comm: &dyn Comm, analyses: &[Analysis], n: usize) -> Survey {
    let packed: Vec<f64> = analyses
        .iter()
        .flat_map(|a| {
            let kind = match a.kind {
                PatternKind::Normal => 0.0,
                PatternKind::Empty => 1.0,
                PatternKind::Negative => 2.0,
                PatternKind::NotFinite => unreachable!("rejected above"),
            };
            [
                a.centre.0,
                a.centre.1,
                a.radius,
                kind,
                f64::from(a.scale),
                a.total_q,
            ]
        })
        .collect();
    let all: Vec<f64> = comm
        .all_gather(&to_bytes(&packed))
        .iter()
        .flat_map(|b| from_bytes(b))
        .collect();
    const FIELDS: usize = 6;
    debug_assert_eq!(all.len(), n * FIELDS);
    let field = |k: usize| -> Vec<f64> { all.chunks_exact(FIELDS).map(|r| r[k]).collect() };
    let kinds = field(3);
    Survey {
        n,
        cys: field(0),
        cxs: field(1),
        radii: field(2),
        scales: field(4).into_iter().map(|s| s as i32).collect(),
        totals_q: field(5),
        normal: (0..n).filter(|&i| kinds[i] == 0.0).collect(),
        empty: kinds.iter().filter(|&&k| k == 1.0).count(),
        negative: kinds.iter().filter(|&&k| k == 2.0).count(),
    }
}

/// The global radius (the `--percentile` of the normal patterns' radii plus the margin), the
/// cropped size and each pattern's window (`--recenter`).
fn choose_window(job: &CropJob, layout: &Layout, survey: &Survey) -> Result<Window> {
    let chosen = kernel::percentile(&survey.normal_radii(), job.percentile);
    // Checked: a huge --margin-pixels must be refused, not wrap to a small crop.
    let radius =
        crate::grid::checked_add("margin-pixels", chosen.ceil() as u64, job.margin_pixels)?;
    let diameter = crate::grid::checked_mul("margin-pixels", radius, 2)
        .and_then(|d| crate::grid::checked_add("margin-pixels", d, 1))?;
    let side = (diameter.min(layout.h), diameter.min(layout.w));
    let common = {
        let k = survey.normal.len() as f64;
        (
            survey.normal.iter().map(|&i| survey.cys[i]).sum::<f64>() / k,
            survey.normal.iter().map(|&i| survey.cxs[i]).sum::<f64>() / k,
        )
    };
    let starts = (0..survey.n)
        .map(|i| {
            let (cy, cx) = match job.recenter {
                Recenter::Each => (survey.cys[i], survey.cxs[i]),
                Recenter::Common => common,
            };
            (
                kernel::window(cy, radius, layout.h).0,
                kernel::window(cx, radius, layout.w).0,
            )
        })
        .collect();
    Ok(Window {
        chosen,
        radius,
        side,
        common,
        starts,
    })
}

/// Rank 0's warnings about the window: a crop larger than the patterns, and patterns that
/// sum to zero or less.
fn warn_about(layout: &Layout, survey: &Survey, window: &Window) {
    let diameter = 2 * window.radius + 1;
    if diameter > layout.h.min(layout.w) {
        tracing::warn!(
            "the crop needs 2R+1 = {} pixels but patterns are {}x{}: cropping to {}x{} (the full size where it does not fit)",
            diameter, layout.h, layout.w, window.side.0, window.side.1
        );
    }
    if survey.empty + survey.negative > 0 {
        tracing::warn!(
            "{} pattern(s) sum to zero and {} to less than zero: cropped around the geometric centre, left out of the statistics",
            survey.empty, survey.negative
        );
    }
}

/// Pass 2 as an exec operation: the output's spec (the input's leading axes and dtype, the
/// cropped size) and one unit per chunk of pass 1.
fn crop_op(
    job: &CropJob,
    plan: &Plan,
    (input, input_address): (Box<dyn ArrayReader>, Address),
    chunks: Vec<Range<u64>>,
    rows_per_chunk: u64,
    device: CropDevice,
) -> Result<CropOp> {
    let layout = &plan.layout;
    let (side_h, side_w) = plan.window.side;
    let nd = layout.shape.len();
    let mut out_shape = layout.shape.clone();
    out_shape[nd - 2] = side_h;
    out_shape[nd - 1] = side_w;
    let mut chunk_shape = out_shape.clone();
    chunk_shape[0] = rows_per_chunk.min(layout.shape[0]);
    let dtype = input.meta().dtype;
    let spec = CreateSpec {
        flat_chunk_keys: false,
        shape: out_shape.clone(),
        dtype,
        chunks: chunk_shape,
        shards: None,
        codec: job.codec.for_format(&plan.output)?,
        dimension_names: None,
        attributes: serde_json::Map::from_iter([
            ("crop_radius".to_string(), json!(plan.window.radius)),
            ("crop_source".to_string(), json!(plan.input_text)),
        ]),
    };
    spec.validate()?;
    let pattern_bytes = layout.h * layout.w * dtype.size() as u64;
    let units = chunks
        .iter()
        .map(|r| UnitInfo {
            label: format!("rows {}..{}", r.start, r.end),
            bytes_in: (r.end - r.start) * layout.per_row * pattern_bytes,
            bytes_out: (r.end - r.start) * layout.per_row * side_h * side_w * dtype.size() as u64,
        })
        .collect();
    Ok(CropOp {
        input,
        layout: layout.clone(),
        targets: vec![plan.output.clone()],
        spec,
        chunks,
        units,
        starts: plan.window.starts.clone(),
        side: plan.window.side,
        scales: plan.survey.scales.clone(),
        totals_q: plan.survey.totals_q.clone(),
        device,
        writer: Mutex::new(None),
        retention: Mutex::new(BTreeMap::new()),
        spares: Default::default(),
        out_spares: Default::default(),
        sum_after: (!job.no_visualization)
            .then(|| Mutex::new(vec![0.0; (side_h * side_w) as usize])),
        parameters: serde_json::to_value(job).unwrap_or_default(),
        fingerprint: json!({"radius": plan.window.radius, "shape": out_shape}),
        input_address,
        side_files: side_files(&plan.output, job.no_visualization),
    })
}

/// After `--resume`: the units an interrupted run finished were skipped, so their retention
/// (needed for the validation) is recomputed here by cropping them again, without writing.
fn recrop_finished_units(op: &CropOp, comm: &dyn Comm) -> Result<()> {
    let mine = partition_contiguous(op.chunks.len(), comm.size())[comm.rank()].clone();
    let missing: Vec<usize> = {
        let have = op.retention.lock().expect("retention");
        mine.filter(|u| !have.contains_key(u)).collect()
    };
    let redone = missing.iter().try_for_each(|&u| op.compute(u).map(drop));
    crate::comm::agree(comm, redone)
}

/// The validation: retention gathered to rank 0 in pattern order (and the pattern sums
/// reduced, for the plot); rank 0 writes the per-pattern arrays, the results JSON and the
/// plot, and prints the summary. With `--strict`, patterns below `--min-retention` fail the
/// run after everything is written.
fn report(
    job: &CropJob,
    comm: &dyn Comm,
    op: &CropOp,
    plan: &Plan,
    mut sum_before: Vec<f64>,
    started: Instant,
) -> Result<()> {
    let mine: Vec<f64> = op
        .retention
        .lock()
        .expect("retention")
        .values()
        .flatten()
        .copied()
        .collect();
    let gathered = comm.gather(&to_bytes(&mine), 0);
    let mut sum_after = op
        .sum_after
        .as_ref()
        .map(|m| m.lock().expect("sum").clone())
        .unwrap_or_default();
    if !job.no_visualization {
        comm.all_reduce_f64(&mut sum_before, ReduceOp::Sum);
        comm.all_reduce_f64(&mut sum_after, ReduceOp::Sum);
    }
    let written = match gathered {
        Some(parts) => {
            let retention: Vec<f64> = parts.iter().flat_map(|b| from_bytes(b)).collect();
            let sums = (sum_before, sum_after);
            write_results(job, plan, &retention, &sums, started)
        }
        None => Ok(()),
    };
    // Rank 0's failure (a write, or --strict) stops every rank.
    crate::comm::agree(comm, written)
}

/// Rank 0: the per-pattern arrays, the results JSON and the plot, the summary line, and
/// `--strict`'s verdict.
fn write_results(
    job: &CropJob,
    plan: &Plan,
    retention: &[f64],
    (sum_before, sum_after): &(Vec<f64>, Vec<f64>),
    started: Instant,
) -> Result<()> {
    let (survey, window, layout) = (&plan.survey, &plan.window, &plan.layout);
    let kept: Vec<f64> = survey.normal.iter().map(|&i| retention[i]).collect();
    let (mean, min, _, _) = stats(&kept);
    let passes_min = kept.iter().filter(|&&r| r >= job.min_retention).count();
    let files = write_per_pattern(job, plan, retention)?;
    let results = results_json(job, plan, &kept, &files, started);
    let path = side_file(&plan.output, "_results.json");
    safety::write_bytes(
        &path,
        job.run.overwrite,
        serde_json::to_string_pretty(&results)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    if !job.no_visualization {
        let plot_path = side_file(&plan.output, "_visualization.png");
        let inputs = plot::Inputs {
            mean_before: mean_of(sum_before, survey.n, layout.h, layout.w),
            mean_after: mean_of(sum_after, survey.n, window.side.0, window.side.1),
            radius: window.radius,
            centre: window.common,
            radii: survey.normal_radii(),
            retention: kept.clone(),
            min_retention: job.min_retention,
            target_retention: job.target_retention,
        };
        safety::write_file(&plot_path, job.run.overwrite, |tmp| {
            plot::write(tmp, &inputs)
        })?;
        tracing::debug!(
            "crop results and plot written at {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "crop: radius {} (percentile {} of {} radii: {:.2}, + {} margin) -> {}x{}; retention mean {mean:.4}, min {min:.4}; {passes_min}/{} at or above --min-retention {}",
        window.radius,
        job.percentile,
        survey.normal.len(),
        window.chosen,
        job.margin_pixels,
        window.side.0,
        window.side.1,
        kept.len(),
        job.min_retention
    );
    if passes_min < kept.len() {
        let msg = format!(
            "{} of {} patterns keep less than --min-retention {} (lowest {min:.4}); see {}",
            kept.len() - passes_min,
            kept.len(),
            job.min_retention,
            path.display()
        );
        tracing::warn!("{msg}");
        if job.strict {
            return Err(Error::parameter("strict", msg));
        }
    }
    Ok(())
}

/// Rank 0: `_radii.npy`, `_retention.npy` and `_centers.npy` (every pattern, in pattern
/// order); returns their file names by key (`radii`, `retention`, `centers`).
fn write_per_pattern(
    job: &CropJob,
    plan: &Plan,
    retention: &[f64],
) -> Result<serde_json::Map<String, Value>> {
    let (n, survey) = (plan.survey.n, &plan.survey);
    let arrays = [
        (
            "_radii.npy",
            ArrayD::from_shape_vec(IxDyn(&[n]), survey.radii.clone()),
        ),
        (
            "_retention.npy",
            ArrayD::from_shape_vec(IxDyn(&[n]), retention.to_vec()),
        ),
        (
            "_centers.npy",
            ArrayD::from_shape_vec(
                IxDyn(&[n, 2]),
                survey
                    .cys
                    .iter()
                    .zip(&survey.cxs)
                    .flat_map(|(&y, &x)| [y, x])
                    .collect(),
            ),
        ),
    ];
    let mut files = serde_json::Map::new();
    for (suffix, a) in arrays {
        let path = side_file(&plan.output, suffix);
        let a = a.expect("lengths match");
        safety::write_file(&path, job.run.overwrite, |tmp| {
            ndarray_npy::write_npy(tmp, &a).map_err(|e| Error::bad_file(&path, e.to_string()))
        })?;
        files.insert(
            suffix
                .trim_start_matches('_')
                .trim_end_matches(".npy")
                .into(),
            json!(path.file_name().map(|f| f.to_string_lossy().into_owned())),
        );
    }
    Ok(files)
}

/// The results JSON: the analysis (radius, radii statistics, shapes, counts), the validation
/// (retention statistics of the normal patterns, `kept`), the time and the configuration.
fn results_json(
    job: &CropJob,
    plan: &Plan,
    kept: &[f64],
    files: &serde_json::Map<String, Value>,
    started: Instant,
) -> Value {
    let (survey, window, layout) = (&plan.survey, &plan.window, &plan.layout);
    let normal_radii = survey.normal_radii();
    let (mean, min, max, std) = stats(kept);
    let (rmean, rmin, rmax, rstd) = stats(&normal_radii);
    let mut cropped_shape = layout.shape.clone();
    let nd = cropped_shape.len();
    cropped_shape[nd - 2] = window.side.0;
    cropped_shape[nd - 1] = window.side.1;
    let mut config = serde_json::to_value(job).unwrap_or_default();
    if let Some(c) = config.as_object_mut() {
        c.insert("input".into(), json!(plan.input_text));
    }
    json!({
        "analysis": {
            "global_radius": window.radius,
            "radius_percentile_value": window.chosen,
            "retention_radii": files.get("radii"),
            "centers": files.get("centers"),
            "retention_stats": {"mean": rmean, "min": rmin, "max": rmax, "std": rstd, "median": kernel::percentile(&normal_radii, 50.0), "percentile": job.percentile},
            "original_shape": layout.shape,
            "cropped_shape": cropped_shape,
            "n_patterns": survey.n,
            "empty_patterns": survey.empty,
            "negative_patterns": survey.negative,
            "center_method": job.center,
            "recenter": job.recenter,
        },
        "validation": {
            "mean_retention": mean,
            "min_retention": min,
            "max_retention": max,
            "std_retention": std,
            "passes_min_threshold": kept.iter().filter(|&&r| r >= job.min_retention).count(),
            "passes_target_threshold": kept.iter().filter(|&&r| r >= job.target_retention).count(),
            "n_patterns": kept.len(),
            "retention": files.get("retention"),
        },
        "processing_time": started.elapsed().as_secs_f64(),
        "config": config,
    })
}

/// The mean pattern (H x W) from the sum of `n` patterns.
fn mean_of(sum: &[f64], n: usize, h: u64, w: u64) -> ArrayD<f64> {
    ArrayD::from_shape_vec(
        IxDyn(&[h as usize, w as usize]),
        sum.iter().map(|s| s / n as f64).collect(),
    )
    .expect("sizes match")
}
