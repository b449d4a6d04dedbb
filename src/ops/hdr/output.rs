//! Where merged brackets go: one file per bracket (OpenEXR or `.npy`, named by the bracket's
//! timestamp in the input's directory layout, each written under a temporary name and renamed
//! when complete), or one Zarr group for the archive (`radiance` (T, Y, X, C) float32, chunked
//! by frame, and `timestamps` (T,) int64 seconds, through the exec runner: staging, journal,
//! `--resume`). Previews (8-bit PNG) go beside the per-bracket files, or into
//! `<store>.previews/` for Zarr.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::files::{format_time, Bracket};
use super::{Format, MergeJob, Merged, Merger, Method};
use crate::comm::{Comm, ReduceOp};
use crate::error::{Error, IoContext, Result};
use crate::exec::report::{gather_summary, RankStats};
use crate::exec::{Operation, RunSummary, UnitInfo};
use crate::grid::{partition_contiguous, Region};
use crate::io::safety::{self, Place, Written};
use crate::io::{self, Address, Block, CreateSpec, DType};

/// One merge to write: the job, the brackets found, the response (Debevec) and the merger
/// that runs on the chosen device.
#[derive(Clone, Copy)]
pub struct Merge<'a> {
    pub job: &'a MergeJob,
    pub brackets: &'a [Bracket],
    pub g: Option<&'a [Vec<f64>]>,
    pub merger: &'a Merger,
}

/// Writes every bracket; the run summary for the report.
///
/// # Errors
/// Bad inputs or output; on several ranks, any rank's failure.
pub fn write(merge: Merge<'_>, comm: &dyn Comm) -> Result<Vec<RunSummary>> {
    let Merge { job, brackets, .. } = merge;
    let (summary, unusable) = match job.format {
        Format::Zarr => zarr(merge, comm)?,
        Format::Exr | Format::Npy => per_bracket(merge, comm)?,
    };
    if comm.is_root() {
        let what = match job.method {
            Method::Debevec => "radiance (Debevec)",
            Method::Mertens => "fusion (Mertens)",
        };
        println!(
            "hdr merge: {} bracket(s) -> {what} in {}",
            brackets.len(),
            job.output.display()
        );
        if unusable > 0 {
            println!(
                "hdr merge: {unusable} pixel(s) black or saturated in every exposure: taken from the longest (black) or shortest (saturated) exposure alone"
            );
        }
    }
    Ok(vec![summary])
}

fn extension(format: Format) -> &'static str {
    match format {
        Format::Exr => "exr",
        Format::Npy => "npy",
        Format::Zarr => "zarr",
    }
}

/// The merged image as an OpenEXR file (RGB, or Y for one channel; exr's default encoding).
fn write_exr(path: &Path, m: &Merged) -> Result<()> {
    use exr::prelude::*;
    let (w, c) = (m.width, m.channels);
    let at = |x: usize, y: usize, k: usize| m.data[(y * w + x) * c + k];
    let done = if c == 3 {
        let pixels = SpecificChannels::rgb(|p: Vec2<usize>| {
            (at(p.0, p.1, 0), at(p.0, p.1, 1), at(p.0, p.1, 2))
        });
        write_exr_image(path, &Image::from_channels((m.width, m.height), pixels))
    } else {
        let pixels = SpecificChannels::build()
            .with_channel("Y")
            .with_pixel_fn(|p: Vec2<usize>| (at(p.0, p.1, 0),));
        write_exr_image(path, &Image::from_channels((m.width, m.height), pixels))
    };
    done.map_err(|e| crate::error::Error::bad_file(path, format!("writing OpenEXR: {e}")))
}

/// Writes `image` as exr's one-thread writer does (the same blocks, each compressed the same
/// way, stored in the same order: the same bytes) but compresses the blocks on the rank's
/// threads. exr's own parallel writer uses a pool of its own, as wide as the machine whatever
/// the rank's threads, and stores blocks in the order they finish, so its files' bytes
/// changed from run to run. `path` is [`safety::write_file`]'s temporary name, renamed into
/// place by it when the file is whole.
fn write_exr_image<'img, L>(
    path: &Path,
    image: &'img exr::image::Image<L>,
) -> exr::error::UnitResult
where
    L: exr::image::write::layers::WritableLayers<'img>,
{
    use exr::block::writer::ChunksWriter;
    use exr::image::write::layers::LayersWriter;
    use exr::image::write::WritableImage;
    use rayon::prelude::*;
    let headers = image.write().infer_meta_data();
    let layers = image.layer_data.create_writer(&headers);
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    exr::block::write(file, headers, true, |meta, chunks| {
        let blocks: Vec<(usize, exr::block::UncompressedBlock)> = meta
            .collect_ordered_block_data(|block| {
                layers.extract_uncompressed_block(&meta.headers, block)
            })
            .collect();
        let compressed = blocks
            .into_par_iter()
            .map(|(at, block)| Ok((at, block.compress_to_chunk(&meta.headers)?)))
            .collect::<exr::error::Result<Vec<_>>>()?;
        for (at, chunk) in compressed {
            chunks.write_chunk(at, chunk)?;
        }
        Ok(())
    })
}

fn write_npy(path: &Path, m: &Merged) -> Result<()> {
    use ndarray_npy::WriteNpyExt;
    let a = ndarray::Array3::from_shape_vec((m.height, m.width, m.channels), m.data.clone())
        .expect("merged size");
    let file = std::fs::File::create(path).at(path)?;
    a.write_npy(std::io::BufWriter::new(file))
        .map_err(|e| Error::bad_file(path, e.to_string()))
}

/// An 8-bit display version. Debevec radiance: scaled so that the log-average luminance maps
/// to 0.18, then `L / (1 + L)` (Reinhard's global operator) and gamma 2.2. Mertens: clamped
/// to [0, 1] and scaled.
pub fn preview(m: &Merged, method: Method) -> Vec<u8> {
    use rayon::prelude::*;
    // Each value mapped by one thread; the log-average is summed in pixel order on one.
    match method {
        Method::Mertens => m
            .data
            .par_iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
        Method::Debevec => {
            let c = m.channels;
            let lum = |p: &[f32]| p.iter().sum::<f32>() / c as f32;
            let n = m.data.len() / c;
            let log_avg = (m
                .data
                .chunks_exact(c)
                .map(|p| f64::from(lum(p).max(1e-12)).ln())
                .sum::<f64>()
                / n.max(1) as f64)
                .exp() as f32;
            let scale = 0.18 / log_avg.max(1e-12);
            m.data
                .par_iter()
                .map(|&v| {
                    let l = (v * scale).max(0.0);
                    let t = l / (1.0 + l);
                    (t.powf(1.0 / 2.2) * 255.0).round() as u8
                })
                .collect()
        }
    }
}

/// Writes the 8-bit preview PNG to `path` (callers write it under a temporary name).
fn write_preview(path: &Path, m: &Merged, method: Method) -> Result<()> {
    let bytes = preview(m, method);
    let (w, h) = (m.width as u32, m.height as u32);
    let color = if m.channels == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let file = std::fs::File::create(path).at(path)?;
    use image::ImageEncoder;
    image::codecs::png::PngEncoder::new(std::io::BufWriter::new(file))
        .write_image(&bytes, w, h, color)
        .map_err(|e| Error::bad_file(path, e.to_string()))
}

fn input_bytes(b: &Bracket) -> u64 {
    b.frames
        .iter()
        .filter_map(|f| std::fs::metadata(&f.path).ok())
        .map(|m| m.len())
        .sum()
}

/// The parameters that made a directory of per-bracket files (`<output>/.tessera-merge.json`):
/// `--resume` fills in missing brackets only with the same ones.
fn identity_file(out: &Path) -> PathBuf {
    out.join(".tessera-merge.json")
}

/// Checks the output directory before a per-bracket merge and records the run's parameters in
/// it: a file is refused; a directory with files needs `--resume` (same parameters as the run
/// that wrote them) or `--overwrite`; the report is refused if present unless `--overwrite` or
/// resuming. Every rank calls it; rank 0 looks and writes.
fn prepare_directory(job: &MergeJob, brackets: usize, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    let out = &job.output;
    if out.exists() && !out.is_dir() {
        return Err(Error::parameter(
            "output",
            format!("{} exists and is not a directory", out.display()),
        ));
    }
    let busy = out.is_dir() && std::fs::read_dir(out).at(out)?.next().is_some();
    if busy && !job.run.resume && !job.run.overwrite {
        return Err(Error::parameter(
            "output",
            format!(
                "{} exists and is not empty; --resume to finish it or --overwrite to replace its files",
                out.display()
            ),
        ));
    }
    // The output's own path is left out: the file lives there, and the same merge written to
    // two directories (on different rank counts) leaves identical directories.
    let mut parameters = serde_json::to_value(job).unwrap_or_default();
    if let Some(p) = parameters.as_object_mut() {
        p.remove("output");
    }
    let identity = serde_json::json!({
        "parameters": parameters,
        "plan": {"brackets": brackets},
    });
    let marker = identity_file(out);
    let resuming = busy && job.run.resume && !job.run.overwrite;
    if resuming {
        let previous = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(previous) = previous else {
            return Err(Error::parameter(
                "resume",
                format!("cannot tell which parameters made the files in {} (no {}); use --overwrite to start over", out.display(), marker.display()),
            ));
        };
        crate::exec::journal::check_same(&previous, &identity)?;
    } else {
        crate::exec::check_side_files(&[], &job.run, false)?;
    }
    safety::write_bytes(&marker, true, identity.to_string().as_bytes())
}

/// The bytes of the per-bracket files still to write (float32 pixels of each bracket's first
/// frame, as its header shows; files a `--resume` keeps left out): each rank probes its share
/// of the brackets, the sum is every rank's.
///
/// # Errors
/// A first frame whose header cannot be read.
fn planned_bytes(job: &MergeJob, brackets: &[Bracket], comm: &dyn Comm) -> Result<u64> {
    let mine = partition_contiguous(brackets.len(), comm.size())[comm.rank()].clone();
    let resuming = job.run.resume && !job.run.overwrite;
    let mut bytes = 0u64;
    let mut failed = Ok(());
    for b in &brackets[mine] {
        let target = job
            .output
            .join(b.stem())
            .with_extension(extension(job.format));
        if resuming && target.exists() {
            continue;
        }
        let Some(first) = b.frames.first() else {
            continue;
        };
        match super::frame_shape(&first.path) {
            Ok((c, h, w)) => {
                let pixels = (c as u64).saturating_mul(h as u64).saturating_mul(w as u64);
                bytes = bytes.saturating_add(pixels.saturating_mul(4).saturating_add(128));
            }
            Err(e) => {
                failed = Err(e);
                break;
            }
        }
    }
    let failed = crate::comm::agree(comm, failed);
    let mut total = [bytes];
    comm.all_reduce_u64(&mut total, ReduceOp::Sum);
    failed.map(|()| total[0])
}

/// What a rank's written brackets add up to, for its report.
#[derive(Default)]
struct Tally {
    unusable: u64,
    units: u64,
    read: u64,
    written: u64,
    write_seconds: f64,
}

impl Tally {
    fn add(&mut self, b: &Bracket, m: &Merged, write_seconds: f64) {
        self.unusable += m.unusable;
        self.units += 1;
        self.read += input_bytes(b);
        self.written += (m.data.len() * 4) as u64;
        self.write_seconds += write_seconds;
    }
}

/// One file per bracket.
fn per_bracket(merge: Merge<'_>, comm: &dyn Comm) -> Result<(RunSummary, u64)> {
    let (job, brackets, merger) = (merge.job, merge.brackets, merge.merger);
    let started = Instant::now();
    let out = &job.output;
    check_bracket_outputs(job, brackets, comm)?;
    if job.run.dry_run {
        if comm.is_root() {
            print_dry_run(job, brackets, comm.size());
        }
        return Ok((
            RunSummary::dry_run("hdr merge", &out.display(), comm.size()),
            0,
        ));
    }
    // The phases as exec::run records them: setup (lock, output directory), read (decoding),
    // compute (merging), write (files and previews), sync (waiting for the other ranks).
    let setup = Instant::now();
    // One job per output directory (see io::lock), held until this function returns.
    let _lock = crate::exec::lock_output(out, comm)?;
    crate::comm::agree(comm, prepare_directory(job, brackets.len(), comm))?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    let mine = partition_contiguous(brackets.len(), comm.size())[comm.rank()].clone();
    let resuming = job.run.resume && !job.run.overwrite;
    let paths = |b: &Bracket| bracket_paths(job, b);
    // A bracket whose files a --resume keeps is not decoded again.
    let todo: Vec<&Bracket> = brackets[mine.clone()]
        .iter()
        .filter(|b| {
            let (target, preview) = paths(b);
            !(resuming && target.exists() && (job.preview.is_none() || preview.exists()))
        })
        .collect();
    let resumed = mine.len() - todo.len();
    let (tally, result) = merge_brackets(job, &todo, merge.g, merger, comm.is_root(), started);
    let Tally {
        unusable,
        units,
        read,
        written,
        write_seconds,
    } = tally;
    let sync = Instant::now();
    crate::comm::agree(comm, result)?;
    let mut counts = [unusable, resumed as u64];
    comm.all_reduce_u64(&mut counts, ReduceOp::Sum);
    let sync_seconds = sync.elapsed().as_secs_f64();
    let s = gather_summary(
        "hdr merge",
        out.display().to_string(),
        comm,
        RankStats {
            units,
            bytes_read: read,
            bytes_written: written,
            seconds: started.elapsed().as_secs_f64(),
            phases: crate::exec::PhaseTimes {
                setup: setup_seconds,
                read: merger.seconds().0,
                compute: merger.seconds().1,
                write: write_seconds,
                sync: sync_seconds,
                finalize: 0.0,
            },
            device: Some(merger.device.report()),
            ..Default::default()
        },
        (brackets.len(), counts[1] as usize),
        &[out.as_path()],
    );
    Ok((s, counts[0]))
}

/// A bracket's output file and preview.
fn bracket_paths(job: &MergeJob, b: &Bracket) -> (PathBuf, PathBuf) {
    let base = job.output.join(b.stem());
    (
        base.with_extension(extension(job.format)),
        base.with_extension("png"),
    )
}

/// Refuses outputs that overlap an input or are not tessera's to replace, and bracket files
/// the output's file system has no room for (collective).
fn check_bracket_outputs(job: &MergeJob, brackets: &[Bracket], comm: &dyn Comm) -> Result<()> {
    let out = &job.output;
    let inputs = super::merge_inputs(job);
    let output = Written::new("output", Place::Path(out.clone()));
    crate::comm::agree(comm, safety::check_places(&inputs, &[output]))?;
    let planned = crate::comm::agree(comm, planned_bytes(job, brackets, comm))?;
    let planned = crate::exec::disk::PlannedOutput {
        name: format!(
            "{} ({} .{} bracket files)",
            out.display(),
            brackets.len(),
            extension(job.format)
        ),
        path: out.clone(),
        bytes: planned,
        uncompressed: job.format == Format::Npy,
    };
    crate::comm::agree(
        comm,
        crate::exec::disk::check_outputs(&[planned], safety::free_disk_bytes),
    )?;
    Ok(())
}

/// `--dry-run`: which brackets each rank would merge (rank 0 prints).
fn print_dry_run(job: &MergeJob, brackets: &[Bracket], ranks: usize) {
    println!(
        "hdr merge (dry run): {} bracket(s) into {}, {} file(s) each; per rank:",
        brackets.len(),
        job.output.display(),
        if job.preview.is_some() { 2 } else { 1 }
    );
    for (r, range) in partition_contiguous(brackets.len(), ranks)
        .into_iter()
        .enumerate()
    {
        println!("  rank {r}: brackets {range:?}");
    }
}

/// Decodes, merges and writes this rank's brackets to do: bracket k's files written while
/// bracket k+1 merges (and k+2 decodes), since the EXR is compressed on one thread, which would
/// otherwise hold the others up. Returns what was done and the first error.
fn merge_brackets(
    job: &MergeJob,
    todo: &[&Bracket],
    g: Option<&[Vec<f64>]>,
    merger: &Merger,
    is_root: bool,
    started: Instant,
) -> (Tally, Result<()>) {
    let mut tally = Tally::default();
    let share = todo.len();
    let decode = |b: &Bracket| merger.decode(b);
    // Seconds spent writing one bracket's files.
    let write_one = |b: &Bracket, m: &Merged| -> Result<f64> {
        let (target, preview_path) = bracket_paths(job, b);
        let t = Instant::now();
        match job.format {
            Format::Exr => safety::write_file(&target, true, |t| write_exr(t, m))?,
            _ => safety::write_file(&target, true, |t| write_npy(t, m))?,
        }
        if job.preview.is_some() {
            safety::write_file(&preview_path, true, |t| write_preview(t, m, job.method))?;
        }
        tracing::debug!("bracket {} -> {}", b.stem().display(), target.display());
        Ok(t.elapsed().as_secs_f64())
    };
    let mut pending: Option<(&Bracket, Merged)> = None;
    let result = super::each_decoded(todo, &decode, |done_here, images| {
        if is_root && share >= 20 && done_here % (share / 10) == 0 && done_here > 0 {
            tracing::info!(
                "hdr merge: {done_here}/{share} of rank 0's brackets to do ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        let b = todo[done_here];
        let previous = pending.take();
        let (wrote, merged) = rayon::join(
            || {
                previous
                    .as_ref()
                    .map(|(pb, m)| write_one(pb, m))
                    .transpose()
            },
            || merger.merge_decoded(job, b, &images, g),
        );
        if let (Some(seconds), Some((pb, m))) = (wrote?, &previous) {
            tally.add(pb, m, seconds);
        }
        pending = Some((b, merged?));
        Ok(())
    });
    // The last bracket (or the one merged before a later bracket failed to decode) is
    // written; an error of an earlier bracket comes first.
    let flushed = pending.take().map_or(Ok(()), |(b, m)| {
        write_one(b, &m).map(|seconds| tally.add(b, &m, seconds))
    });
    let result = flushed.and(result);
    (tally, result)
}

/// The archive as one Zarr group, through the exec runner.
fn zarr(merge: Merge<'_>, comm: &dyn Comm) -> Result<(RunSummary, u64)> {
    let (job, brackets) = (merge.job, merge.brackets);
    let address = Address::parse(&job.output.to_string_lossy())?;
    if !matches!(address, Address::Zarr { .. }) {
        return Err(Error::parameter(
            "output",
            "--format zarr needs a Zarr store (out.zarr)",
        ));
    }
    // The frame size comes from the first bracket's first image (all must agree).
    let (c, h, w) = super::frame_shape(&brackets[0].frames[0].path)?;
    let (h, w, c) = (h as u64, w as u64, c as u64);
    let t = brackets.len() as u64;
    let frame_bytes = h * w * c * 4;
    let op = ZarrOp {
        job,
        brackets,
        g: merge.g,
        merger: merge.merger,
        targets: vec![address],
        spec: CreateSpec {
            flat_chunk_keys: false,
            shape: vec![t, h, w, c],
            dtype: DType::F32,
            chunks: vec![1, h, w, c],
            shards: None,
            codec: Default::default(),
            dimension_names: Some(["t", "y", "x", "c"].map(String::from).to_vec()),
            attributes: Default::default(),
        },
        units: brackets
            .iter()
            .map(|b| UnitInfo {
                label: format!("bracket {}", b.stem().display()),
                bytes_in: frame_bytes / 4 * b.frames.len() as u64,
                bytes_out: frame_bytes,
            })
            .collect(),
        writers: Mutex::new(None),
        unusable: Mutex::new(0),
    };
    let summary = crate::exec::run(&op, comm, &job.run)?;
    let mut unusable = [*op.unusable.lock().expect("count")];
    comm.all_reduce_u64(&mut unusable, ReduceOp::Sum);
    Ok((summary, unusable[0]))
}

/// The open writers of the Zarr group: radiance, timestamps, and the staged store and node.
type Opened = (
    Box<dyn io::ArrayWriter>,
    Box<dyn io::ArrayWriter>,
    PathBuf,
    String,
);

struct ZarrOp<'a> {
    job: &'a MergeJob,
    brackets: &'a [Bracket],
    g: Option<&'a [Vec<f64>]>,
    merger: &'a Merger,
    targets: Vec<Address>,
    spec: CreateSpec,
    units: Vec<UnitInfo>,
    /// (radiance, timestamps, staged store and node) once opened.
    writers: Mutex<Option<Opened>>,
    unusable: Mutex<u64>,
}

impl ZarrOp<'_> {
    /// `<store>.previews/<bracket>.png`.
    fn preview_path(&self, b: &Bracket) -> PathBuf {
        let mut dir = self.job.output.as_os_str().to_owned();
        dir.push(".previews");
        PathBuf::from(dir).join(b.stem()).with_extension("png")
    }
}

impl Operation for ZarrOp<'_> {
    type Output = (usize, Merged);
    crate::exec::plan_fields!("hdr merge"; targets, units);
    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        vec![crate::exec::disk::PlannedOutput::child(
            &self.targets[0],
            "radiance",
            &self.spec,
        )]
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::to_value(self.job).unwrap_or_default()
    }
    fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({"brackets": self.brackets.len(), "shape": self.spec.shape})
    }
    fn inputs(&self) -> Vec<Place> {
        super::merge_inputs(self.job)
    }
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        Some(self.merger.device.report())
    }
    fn side_files(&self) -> Vec<PathBuf> {
        match self.job.preview {
            Some(_) => self.brackets.iter().map(|b| self.preview_path(b)).collect(),
            None => Vec::new(),
        }
    }
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let Address::Zarr { store, node } = &staging[0] else {
            unreachable!("checked before planning");
        };
        let child = |name: &str| Address::Zarr {
            store: store.clone(),
            node: io::zarr::child_node(node, name),
        };
        let radiance = io::create(&child("radiance"), &self.spec, comm, resume)?;
        let t = self.brackets.len() as u64;
        let times = CreateSpec {
            flat_chunk_keys: false,
            shape: vec![t],
            dtype: DType::I64,
            chunks: vec![t.max(1)],
            shards: None,
            codec: Default::default(),
            dimension_names: Some(vec!["t".into()]),
            attributes: serde_json::json!({
                "units": "seconds since 1970-01-01 00:00:00, camera civil time as in the file names"
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        };
        let timestamps = io::create(&child("timestamps"), &times, comm, resume)?;
        *self.writers.lock().expect("writers") =
            Some((radiance, timestamps, store.clone(), node.clone()));
        Ok(())
    }
    fn compute(&self, unit: usize) -> Result<Self::Output> {
        let b = &self.brackets[unit];
        let m = self.merger.merge_bracket(self.job, b, self.g)?;
        let want = (self.spec.shape[1], self.spec.shape[2], self.spec.shape[3]);
        let got = (m.height as u64, m.width as u64, m.channels as u64);
        if got != want {
            return Err(Error::bad_file(
                &b.frames[0].path,
                format!("{got:?} (height, width, channels), but the archive's first bracket is {want:?}: one Zarr array needs one frame size"),
            ));
        }
        if self.job.preview.is_some() {
            // Checked before the run (`side_files`); a resumed run replaces its own.
            let replace = self.job.run.overwrite || self.job.run.resume;
            let path = self.preview_path(b);
            safety::write_file(&path, replace, |tmp| {
                write_preview(tmp, &m, self.job.method)
            })?;
        }
        *self.unusable.lock().expect("count") += m.unusable;
        Ok((unit, m))
    }
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()> {
        let writers = self.writers.lock().expect("writers");
        let (radiance, _, _, _) = writers.as_ref().expect("opened");
        match part {
            Some((_, (unit, m))) => {
                let region = Region {
                    start: vec![unit as u64, 0, 0, 0],
                    shape: vec![1, m.height as u64, m.width as u64, m.channels as u64],
                };
                let block = Block::F32(
                    ndarray::ArrayD::from_shape_vec(region.shape_usize(), m.data)
                        .expect("merged size"),
                );
                radiance.write_box(Some((&region, &block)))
            }
            None => radiance.write_box(None),
        }
    }
    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        let Some((radiance, timestamps, store, node)) = self.writers.lock().expect("w").take()
        else {
            return Ok(());
        };
        let t = self.brackets.len();
        let times: Vec<i64> = self.brackets.iter().map(|b| b.time).collect();
        let part = comm.is_root().then(|| {
            (
                Region {
                    start: vec![0],
                    shape: vec![t as u64],
                },
                Block::I64(ndarray::ArrayD::from_shape_vec(vec![t], times).expect("t")),
            )
        });
        timestamps.write_box(part.as_ref().map(|(r, b)| (r, b)))?;
        radiance.close()?;
        timestamps.close()?;
        if comm.is_root() {
            let attrs = serde_json::json!({
                "tessera": {
                    "operation": "hdr merge",
                    "method": self.job.method,
                    "response": self.job.response,
                    "weight_type": self.job.weight_type,
                    "input": self.job.scan.input,
                    "brackets": self.brackets.iter().map(|b| b.stem().display().to_string()).collect::<Vec<_>>(),
                    "timestamps": self.brackets.iter().map(|b| format_time(b.time)).collect::<Vec<_>>(),
                    "version": env!("CARGO_PKG_VERSION"),
                }
            });
            io::zarr::write_group(&store, &node, attrs.as_object().expect("object"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EXR compressed on the rank's threads is, byte for byte, the file exr's one-thread
    /// writer makes of the same image (RGB and one-channel, edge tiles, values RLE packs and
    /// values it cannot), at 1 thread and at 3.
    #[test]
    fn exr_blocks_compressed_in_parallel_are_exrs_own_file() {
        use exr::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let mut next = crate::grid::xorshift(0x2545_f491_4f6c_dd1d);
        for channels in [3usize, 1] {
            let (width, height) = (131, 70);
            let data: Vec<f32> = (0..width * height * channels)
                .map(|i| {
                    if (i / 97) % 3 == 0 {
                        1.5 // runs RLE packs
                    } else {
                        (next() % 100_000) as f32 / 77.0
                    }
                })
                .collect();
            let m = Merged {
                height,
                width,
                channels,
                data,
                unusable: 0,
            };
            let at = |x: usize, y: usize, k: usize| m.data[(y * width + x) * channels + k];
            let theirs = dir.path().join(format!("exr-{channels}.exr"));
            let written = if channels == 3 {
                let px = SpecificChannels::rgb(|p: Vec2<usize>| {
                    (at(p.0, p.1, 0), at(p.0, p.1, 1), at(p.0, p.1, 2))
                });
                Image::from_channels((width, height), px)
                    .write()
                    .non_parallel()
                    .to_file(&theirs)
            } else {
                let px = SpecificChannels::build()
                    .with_channel("Y")
                    .with_pixel_fn(|p: Vec2<usize>| (at(p.0, p.1, 0),));
                Image::from_channels((width, height), px)
                    .write()
                    .non_parallel()
                    .to_file(&theirs)
            };
            written.unwrap();
            for threads in [1, 3] {
                let ours = dir.path().join(format!("ours-{channels}-{threads}.exr"));
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| write_exr(&ours, &m))
                    .unwrap();
                assert!(
                    std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
                    "{channels} channel(s), {threads} thread(s)"
                );
            }
        }
    }
}
