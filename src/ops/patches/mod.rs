//! `tessera patches`: CT slices to a patch dataset, as the CT patch-extraction notebook makes
//! it for ten slices, for a million on a cluster.
//!
//! Pass 1 (`survey`) reads every slice once, split among the ranks, refuses bad ones before
//! any output exists, and gathers every slice's patch count to every rank, so that each
//! rank knows every patch's position (prefix sums). Pass 2 is an `exec` run over units of
//! whole patch ranges: runs of slices for `.npy` files, runs of whole chunks (or shards) for
//! the Zarr array, so a rank writes only its own files or chunks. Each unit also leaves its
//! manifest lines in the staged output; `finish` concatenates them in unit order into
//! `patch_manifest.csv` (through a temporary name) and writes `patch_meta.json`, once, on rank
//! 0. Every byte but `created` is the same for any rank count and after `--resume`.

pub mod kernel;
pub mod manifest;
pub mod output;
pub mod params;
pub mod source;
pub mod survey;
pub mod verify;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use ndarray::Array3;
use rayon::prelude::*;
use serde_json::{json, Value};

use self::params::{PatchFormat, PatchesJob};
use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};
use crate::exec::{Operation, RunSummary, UnitInfo};
use crate::grid::Region;
use crate::io::safety::{self, Place};
use crate::io::{self, Address, ArrayWriter, Block, CreateSpec, DType};
use output::{PatchMeta, PatchPlace};
use source::{check_split_name, Split};
use survey::{Cutting, SplitLayout};

/// Where each unit leaves its manifest lines inside the staged output, until `finish`.
const PARTS_DIR: &str = ".manifest-parts";

/// Runs `tessera patches` on this rank: the splits, pass 1, then pass 2 through exec.
///
/// # Errors
/// Bad parameters or slices (before anything is written), I/O failures.
pub fn run(job: &PatchesJob, comm: &dyn Comm) -> Result<Vec<RunSummary>> {
    let cut = check_parameters(job)?;
    let splits = resolve_splits(job)?;
    let started = std::time::Instant::now();
    let layouts = survey::survey(&splits, cut, comm)?;
    tracing::debug!(
        "patches pass 1 (survey) took {:.3} s",
        started.elapsed().as_secs_f64()
    );
    if comm.is_root() {
        warn_small_slices(&splits, &layouts, cut.patch);
    }
    let op = PatchesOp::plan(job, cut, splits, layouts)?;
    let summary = crate::exec::run(&op, comm, &job.run)?;
    if comm.is_root() && !job.run.dry_run {
        op.print_summary();
    }
    Ok(vec![summary])
}

/// The numeric flags, checked before any file is read.
fn check_parameters(job: &PatchesJob) -> Result<Cutting> {
    for (flag, v) in [("patch-size", job.patch_size), ("stride", job.stride)] {
        if v == 0 {
            return Err(Error::parameter(flag, "must be at least 1"));
        }
    }
    // A patch's bytes must fit in memory arithmetic (ps * ps * 4).
    let side = crate::grid::checked_mul("patch-size", job.patch_size, job.patch_size)?;
    crate::grid::to_usize(
        "patch-size",
        crate::grid::checked_mul("patch-size", side, 4)?,
    )?;
    if let Some(s) = job.min_std {
        if !s.is_finite() || s < 0.0 {
            return Err(Error::parameter(
                "min-std",
                format!("{s} is not a finite value >= 0"),
            ));
        }
    }
    check_zarr_flags(job)?;
    Ok(Cutting {
        patch: job.patch_size,
        stride: job.stride,
        min_std: job.min_std,
    })
}

/// `--chunks`, `--shards` and `--codec` belong to `--format zarr`.
fn check_zarr_flags(job: &PatchesJob) -> Result<()> {
    let zarr = job.format == PatchFormat::Zarr;
    for (flag, given) in [("chunks", job.chunks), ("shards", job.shards)] {
        match given {
            Some(_) if !zarr => {
                return Err(Error::parameter(flag, "applies to --format zarr only"))
            }
            Some(0) => return Err(Error::parameter(flag, "must be at least 1 patch")),
            _ => {}
        }
    }
    if !zarr && job.codec != io::Codec::Auto {
        return Err(Error::parameter(
            "codec",
            "applies to --format zarr only (.npy patches are stored raw, as np.save does)",
        ));
    }
    Ok(())
}

/// The splits to cut: `--manifest` (one, named `--split-name`), `--split NAME=CSV` (several)
/// or `--input` (one).
fn resolve_splits(job: &PatchesJob) -> Result<Vec<Split>> {
    let given = usize::from(job.manifest.is_some())
        + usize::from(!job.split.is_empty())
        + usize::from(job.input.is_some());
    if given != 1 {
        return Err(Error::parameter(
            "manifest",
            "give exactly one of --manifest CSV, --split NAME=CSV (repeatable) or --input ADDRESS",
        ));
    }
    let root_or = |default: &Path| manifest::data_root(job.data_root.as_deref(), default);
    let parent = |p: &Path| {
        p.parent().map_or_else(
            || PathBuf::from("."),
            |d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            },
        )
    };
    if let Some(m) = &job.manifest {
        check_split_name("split-name", &job.split_name)?;
        return Ok(vec![Split::from_manifest(
            &job.split_name,
            m,
            &root_or(&parent(m)),
        )?]);
    }
    if let Some(input) = &job.input {
        check_split_name("split-name", &job.split_name)?;
        let container = Address::parse(input)
            .map(|a| a.container().to_path_buf())
            .unwrap_or_else(|_| PathBuf::from(input));
        return Ok(vec![Split::from_input(
            &job.split_name,
            input,
            &root_or(&parent(&container)),
        )?]);
    }
    let mut splits: Vec<Split> = Vec::new();
    for text in &job.split {
        let (name, path) = text.split_once('=').ok_or_else(|| {
            Error::parameter(
                "split",
                format!("{text:?} is not NAME=MANIFEST (e.g. train=train_manifest.csv)"),
            )
        })?;
        check_split_name("split", name)?;
        if splits.iter().any(|s| s.name == name) {
            return Err(Error::parameter(
                "split",
                format!("split {name:?} is given twice"),
            ));
        }
        let path = Path::new(path);
        splits.push(Split::from_manifest(name, path, &root_or(&parent(path)))?);
    }
    Ok(splits)
}

/// Rank 0's warning about slices that give no patch (smaller than one).
fn warn_small_slices(splits: &[Split], layouts: &[SplitLayout], patch: u64) {
    for (split, layout) in splits.iter().zip(layouts) {
        let small = layout.small_slices();
        if small.is_empty() {
            continue;
        }
        let named: Vec<String> = small
            .iter()
            .take(10)
            .map(|&i| {
                let f = layout.facts[i];
                format!("{} ({}x{})", split.describe(i), f.height, f.width)
            })
            .collect();
        tracing::warn!(
            "split {}: {} slice(s) smaller than the {patch}x{patch} patch give no patches: {}{}",
            split.name,
            small.len(),
            named.join(", "),
            if small.len() > 10 { ", ..." } else { "" }
        );
    }
}

/// One unit of pass 2: a run of one split's patches, and the slices that hold them.
#[derive(Clone, Debug, PartialEq)]
struct Work {
    split: usize,
    slices: Range<usize>,
    patches: Range<u64>,
}

/// A computed unit: its manifest lines, and the values of patches that were not written as
/// they were cut (a compressed or sharded Zarr array), from its first patch on.
pub struct UnitPatches {
    split: usize,
    /// The values, patch after patch, in pieces: one per Zarr write block (chunk or shard)
    /// of the unit (its patches, their values), each stored whole by `write`. Empty when the
    /// patches are written as they are cut.
    pieces: Vec<(Range<u64>, Vec<f32>)>,
    lines: String,
}

/// Pass 2 as an exec operation.
pub struct PatchesOp {
    cut: Cutting,
    format: PatchFormat,
    splits: Vec<Split>,
    layouts: Vec<SplitLayout>,
    work: Vec<Work>,
    units: Vec<UnitInfo>,
    targets: Vec<Address>,
    /// Each split's output directory relative to its data root (`patch_dir`).
    patch_dirs: Vec<String>,
    /// Each split's Zarr array spec (`--format zarr`).
    zarr: Vec<Option<CreateSpec>>,
    npy_header: Vec<u8>,
    /// Set by `open_output`: each split's staged directory, and its Zarr writer.
    staged: OnceLock<Vec<PathBuf>>,
    /// Read-locked by the units (which write in parallel), taken by `finish`.
    writers: RwLock<Vec<Box<dyn ArrayWriter>>>,
    parameters: Value,
    fingerprint: Value,
}

/// A Zarr unit holds at least this many write blocks (chunks or shards), which its write
/// stores in parallel: with one block per unit, one thread wrote while the others waited.
/// (A fixed number, not the thread count: units must not change with the machine, or a run
/// could not be resumed on another.)
const MIN_BLOCKS_PER_UNIT: u64 = 4;

/// Default Zarr chunk: about 4 MiB of patches.
fn default_chunk(patch_bytes: u64) -> u64 {
    ((4u64 << 20) / patch_bytes).max(1)
}

impl PatchesOp {
    /// Plans pass 2 from the survey: outputs, units, Zarr specs. Creates nothing.
    ///
    /// # Errors
    /// A bad Zarr chunk/shard combination.
    fn plan(
        job: &PatchesJob,
        cut: Cutting,
        splits: Vec<Split>,
        layouts: Vec<SplitLayout>,
    ) -> Result<PatchesOp> {
        let out = PathBuf::from(&job.output);
        let dirs: Vec<PathBuf> = if job.split.is_empty() {
            vec![out]
        } else {
            splits.iter().map(|s| out.join(&s.name)).collect()
        };
        let patch_bytes = cut.patch * cut.patch * 4;
        let zarr = (0..splits.len())
            .map(|s| {
                (job.format == PatchFormat::Zarr)
                    .then(|| zarr_spec(job, cut.patch, layouts[s].patches(), &splits[s]))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let total: u64 = layouts.iter().map(SplitLayout::patches).sum();
        let per_unit = (crate::exec::target_unit_bytes(total * patch_bytes) / patch_bytes).max(1);
        let work = plan_work(&layouts, &zarr, per_unit);
        let units = work
            .iter()
            .map(|w| unit_info(w, &splits, &layouts, patch_bytes))
            .collect();
        let patch_dirs: Vec<String> = dirs
            .iter()
            .zip(&splits)
            .map(|(d, s)| manifest::relative_to(d, &s.root))
            .collect();
        let fingerprint = fingerprint(&splits, &layouts, &patch_dirs);
        Ok(PatchesOp {
            cut,
            format: job.format,
            splits,
            layouts,
            work,
            units,
            targets: dirs
                .into_iter()
                .map(|dir| Address::PatchDir { dir })
                .collect(),
            patch_dirs,
            zarr,
            npy_header: output::npy_header_f32(&[cut.patch, cut.patch]),
            staged: OnceLock::new(),
            writers: RwLock::new(Vec::new()),
            parameters: serde_json::to_value(job).unwrap_or_default(),
            fingerprint,
        })
    }

    /// Cuts slice `i` of split `s` and describes the patches it keeps whose split-wide index
    /// lies in `wanted`, in order, into manifest lines: the k-th of those is cut into
    /// `slots[k]` where there is one (a scratch patch otherwise), then handed to `emit` with
    /// its id. The others are cut for their statistics only (`--min-std` decides what is
    /// kept).
    ///
    /// Pass 1 checked every value of the slice; here only the patches are looked at (their
    /// sums turn NaN or infinite with any such value), so that each slice is scanned once.
    fn cut_slice(
        &self,
        s: usize,
        i: usize,
        wanted: Range<u64>,
        slots: &mut [&mut [f32]],
        mut emit: impl FnMut(&str, &[f32]) -> Result<()>,
    ) -> Result<String> {
        let (split, layout) = (&self.splits[s], &self.layouts[s]);
        let first = layout.first[i];
        let mine = wanted.start.saturating_sub(first)..wanted.end.saturating_sub(first);
        let mut lines = String::new();
        let (mut non_finite, mut failed) = (None, None);
        let kept = split
            .with_slice_unchecked(i, |slice| {
                kernel::cut_kept(
                    slice,
                    self.cut.patch,
                    self.cut.stride,
                    self.cut.min_std,
                    mine.start,
                    slots,
                    |p, values| {
                        if !(p.stats.mean.is_finite() && p.stats.std.is_finite()) {
                            non_finite.get_or_insert((p.row, p.col));
                        }
                        if mine.contains(&p.kept_index) && failed.is_none() {
                            let id = self.describe_patch(s, i, p, &mut lines);
                            failed = emit(&id, values).err();
                        }
                    },
                )
            })
            .map_err(|p| match p {
                source::Problem::Missing => {
                    Error::bad_file(split.describe(i), "disappeared since pass 1")
                }
                source::Problem::Unusable(m) => Error::parameter("manifest", m),
            })?;
        let changed = match non_finite {
            Some((row, col)) => Some(format!(
                "changed since pass 1: the patch at row {row}, column {col} now holds NaN or infinite values"
            )),
            None => (kept != layout.facts[i].kept).then(|| {
                format!(
                    "changed since pass 1 ({} patches then, {kept} now)",
                    layout.facts[i].kept
                )
            }),
        };
        match (changed, failed) {
            (Some(m), _) => Err(Error::bad_file(split.describe(i), m)),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(lines),
        }
    }

    /// Patch `p` of slice `i` of split `s`: its manifest line added to `lines`, its id returned.
    fn describe_patch(
        &self,
        s: usize,
        i: usize,
        p: &kernel::KeptPatch,
        lines: &mut String,
    ) -> String {
        let split = &self.splits[s];
        let id = kernel::patch_id(&split.name, i as u64, p.row, p.col);
        let file = manifest::join_relative(&self.patch_dirs[s], &format!("{id}.npy"));
        let place = match self.format {
            PatchFormat::Npy => PatchPlace::File(&file),
            PatchFormat::Zarr => PatchPlace::ZarrIndex(self.layouts[s].first[i] + p.kept_index),
        };
        lines.push_str(&output::manifest_line(
            &id,
            i as u64,
            split.src_path(i),
            p,
            place,
            &split.carried[i],
        ));
        id
    }

    /// A Zarr unit's pieces: runs of its patches, one per write block (chunk or shard).
    fn pieces(&self, w: &Work) -> Vec<Range<u64>> {
        let spec = self.zarr[w.split].as_ref().expect("a Zarr unit");
        let per_piece = spec.write_block()[0];
        (w.patches.start..w.patches.end)
            .step_by(per_piece as usize)
            .map(|p| p..(p + per_piece).min(w.patches.end))
            .collect()
    }

    /// The array region that holds `patches`.
    fn region_of(&self, patches: &Range<u64>) -> Region {
        let ps = self.cut.patch;
        Region {
            start: vec![patches.start, 0, 0],
            shape: vec![patches.end - patches.start, ps, ps],
        }
    }

    fn staged_dir(&self, split: usize) -> &Path {
        &self.staged.get().expect("open_output ran before write")[split]
    }

    /// A unit's slices that hold some of `patches`, with patches.
    fn slices_holding(&self, s: usize, patches: &Range<u64>) -> Vec<usize> {
        let layout = &self.layouts[s];
        if patches.is_empty() {
            return Vec::new();
        }
        (layout.slice_of(patches.start)..=layout.slice_of(patches.end - 1))
            .filter(|&i| layout.facts[i].kept > 0)
            .collect()
    }

    /// A unit's `.npy` files, each written as its patch is cut (the slices in parallel),
    /// into the staged directory: that directory is the run's temporary name (exec refuses
    /// an existing output without `--overwrite`, checks it against the inputs, and renames it
    /// whole once complete), so each file is written in place, as chunk files are into a
    /// staged store. Returns the manifest lines.
    fn cut_to_files(&self, w: &Work) -> Result<String> {
        let dir = self.staged_dir(w.split);
        let lines = self
            .slices_holding(w.split, &w.patches)
            .into_par_iter()
            .map(|i| {
                self.cut_slice(w.split, i, w.patches.clone(), &mut [], |id, values| {
                    let path = dir.join(format!("{id}.npy"));
                    let body = output::f32_le_bytes(values);
                    safety::write_pieces(&path, &[&self.npy_header, &body]).at(&path)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lines.concat())
    }

    /// A unit's Zarr chunks, each streamed to its file as its patches are cut (the chunks
    /// in parallel), when the array stores them raw ([`ArrayWriter::streams_blocks`]): no
    /// patch is held beyond the one being cut. Returns the manifest lines.
    fn cut_to_chunks(&self, w: &Work, writer: &dyn ArrayWriter) -> Result<String> {
        let lines = self
            .pieces(w)
            .into_par_iter()
            .map(|piece| -> Result<String> {
                let mut sink = writer.block_sink(&self.region_of(&piece))?;
                let mut lines = String::new();
                for i in self.slices_holding(w.split, &piece) {
                    lines += &self.cut_slice(w.split, i, piece.clone(), &mut [], |_, values| {
                        sink.append(&output::f32_le_bytes(values))
                    })?;
                }
                sink.finish()?;
                Ok(lines)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lines.concat())
    }

    /// A unit's patches cut into memory, a piece per Zarr write block, for `write` to store
    /// (a compressed or sharded array).
    fn cut_to_pieces(&self, w: &Work) -> Result<UnitPatches> {
        let n = (self.cut.patch * self.cut.patch) as usize;
        let mut pieces: Vec<(Range<u64>, Vec<f32>)> = self
            .pieces(w)
            .into_iter()
            .map(|r| {
                let values = vec![0.0f32; (r.end - r.start) as usize * n];
                (r, values)
            })
            .collect();
        // One slot per patch, handed to the slices that fill them: each slice its own run.
        let mut slots: Vec<&mut [f32]> = pieces
            .iter_mut()
            .flat_map(|(_, values)| values.chunks_exact_mut(n))
            .collect();
        let layout = &self.layouts[w.split];
        let mut runs: Vec<(usize, Vec<&mut [f32]>)> = Vec::new();
        for i in self.slices_holding(w.split, &w.patches).into_iter().rev() {
            let from = layout.first[i].max(w.patches.start) - w.patches.start;
            runs.push((i, slots.split_off(from as usize)));
        }
        runs.reverse();
        let lines = runs
            .into_par_iter()
            .map(|(i, mut mine)| {
                self.cut_slice(w.split, i, w.patches.clone(), &mut mine, |_, _| Ok(()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UnitPatches {
            split: w.split,
            pieces,
            lines: lines.concat(),
        })
    }

    /// A unit's patches into the split's Zarr array: each piece one whole chunk or shard,
    /// the pieces in parallel.
    fn write_zarr(&self, out: UnitPatches) -> Result<()> {
        let ps = self.cut.patch as usize;
        let writers = self.writers.read().expect("writers lock");
        let writer = &writers[out.split];
        out.pieces
            .into_par_iter()
            .try_for_each(|(patches, values)| {
                let count = (patches.end - patches.start) as usize;
                let block = Array3::from_shape_vec((count, ps, ps), values)
                    .expect("a piece holds whole patches")
                    .into_dyn();
                writer.write_box(Some((&self.region_of(&patches), &Block::F32(block))))
            })
    }

    /// Rank 0, at the end: every split's manifest (its units' lines in order, through a
    /// temporary name) and meta; the units' line files go.
    fn write_tables(&self) -> Result<()> {
        let created = output::local_time_now();
        for s in 0..self.splits.len() {
            let dir = self.staged_dir(s);
            let parts = dir.join(PARTS_DIR);
            let units: Vec<usize> = (0..self.work.len())
                .filter(|&u| self.work[u].split == s)
                .collect();
            let header = output::manifest_header(
                self.format == PatchFormat::Zarr,
                &self.splits[s].carried_header,
            );
            safety::write_file(&dir.join(output::MANIFEST_NAME), true, |tmp| {
                concatenate(tmp, &header, &parts, &units)
            })?;
            crate::io::staging::remove_any(&parts)?;
            let meta = self.meta(s, &created);
            safety::write_bytes(
                &dir.join(output::META_NAME),
                true,
                meta.to_text().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Split `s`'s `patch_meta.json`.
    fn meta(&self, s: usize, created: &str) -> PatchMeta {
        let (split, layout) = (&self.splits[s], &self.layouts[s]);
        let spec = self.zarr[s].as_ref();
        let rel = |p: &Path| manifest::relative_to(p, &split.root);
        PatchMeta {
            num_slices: split.len() as u64,
            num_patches: layout.patches(),
            patch_size: self.cut.patch,
            stride: self.cut.stride,
            source_manifest: split.manifest.as_deref().map(rel),
            patch_dir: self.patch_dirs[s].clone(),
            created: created.to_string(),
            format: format!("{:?}", self.format).to_lowercase(),
            split: split.name.clone(),
            source_input: split.source_input.clone(),
            zarr_array: spec
                .map(|_| manifest::join_relative(&self.patch_dirs[s], output::ZARR_NAME)),
            zarr_chunks: spec.map(|z| z.chunks[0]),
            zarr_shards: spec.and_then(|z| z.shards.as_ref().map(|b| b[0])),
            min_std: self.cut.min_std,
            dropped: output::Dropped {
                small_slices: layout.small_slices().len() as u64,
                low_std_patches: layout.low_std(),
            },
            tessera_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Rank 0's closing line per split.
    fn print_summary(&self) {
        for (s, split) in self.splits.iter().enumerate() {
            let layout = &self.layouts[s];
            println!(
                "patches: split {}: {} slices -> {} patches of {}x{} ({} dropped by --min-std, {} slices smaller than a patch) in {}",
                split.name,
                split.len(),
                layout.patches(),
                self.cut.patch,
                self.cut.patch,
                layout.low_std(),
                layout.small_slices().len(),
                self.targets[s]
            );
        }
    }
}

/// Writes `header` and then every unit's line file, in unit order, to `path` (the temporary
/// name `safety::write_file` gives, renamed onto the manifest when this returns).
fn concatenate(path: &Path, header: &str, parts: &Path, units: &[usize]) -> Result<()> {
    use std::io::Write;
    let file = std::fs::File::create(path).at(path)?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(header.as_bytes()).at(path)?;
    for &u in units {
        let part = part_path(parts, u);
        let mut input = std::fs::File::open(&part).at(&part)?;
        std::io::copy(&mut input, &mut out).at(&part)?;
    }
    out.flush().at(path)
}

fn part_path(parts: &Path, unit: usize) -> PathBuf {
    parts.join(format!("{unit:08}.csv"))
}

/// Split `s`'s Zarr array: (M, ps, ps) float32, chunked along M.
fn zarr_spec(job: &PatchesJob, patch: u64, patches: u64, split: &Split) -> Result<CreateSpec> {
    let chunk = job
        .chunks
        .unwrap_or_else(|| default_chunk(patch * patch * 4));
    let mut attributes = serde_json::Map::new();
    attributes.insert("tessera_operation".into(), json!("patches"));
    attributes.insert("split".into(), json!(split.name));
    attributes.insert("patch_size".into(), json!(patch));
    attributes.insert("stride".into(), json!(job.stride));
    CreateSpec {
        // Chunks only along M: `c.N.0.0`, one file each, no directories.
        flat_chunk_keys: true,
        shape: vec![patches, patch, patch],
        dtype: DType::F32,
        chunks: vec![chunk, patch, patch],
        shards: job.shards.map(|s| vec![s, patch, patch]),
        codec: job.codec.for_format(&Address::Zarr {
            store: PathBuf::from(output::ZARR_NAME),
            node: String::new(),
        })?,
        dimension_names: Some(vec!["patch".into(), "y".into(), "x".into()]),
        attributes,
    }
    .validated()
}

/// Pass 2's units: per split, runs of about `per_unit` patches; whole slices for `.npy`,
/// whole write blocks (chunks or shards) for Zarr.
fn plan_work(layouts: &[SplitLayout], zarr: &[Option<CreateSpec>], per_unit: u64) -> Vec<Work> {
    let mut work = Vec::new();
    for (s, layout) in layouts.iter().enumerate() {
        match &zarr[s] {
            None => work.extend(slice_runs(s, layout, per_unit)),
            Some(spec) => {
                let block = spec.write_block()[0];
                let runs = crate::grid::block_aligned_runs(
                    layout.patches(),
                    block,
                    (per_unit / block).max(MIN_BLOCKS_PER_UNIT),
                );
                work.extend(runs.into_iter().map(|r| Work {
                    split: s,
                    slices: layout.slice_of(r.start)..layout.slice_of(r.end - 1) + 1,
                    patches: r,
                }));
            }
        }
    }
    work
}

/// Runs of whole slices holding at least `per_unit` patches each (the last may hold fewer).
fn slice_runs(split: usize, layout: &SplitLayout, per_unit: u64) -> Vec<Work> {
    let n = layout.facts.len();
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 0..n {
        if layout.first[i + 1] - layout.first[start] >= per_unit || i + 1 == n {
            runs.push(Work {
                split,
                slices: start..i + 1,
                patches: layout.first[start]..layout.first[i + 1],
            });
            start = i + 1;
        }
    }
    runs
}

fn unit_info(w: &Work, splits: &[Split], layouts: &[SplitLayout], patch_bytes: u64) -> UnitInfo {
    let facts = &layouts[w.split].facts[w.slices.clone()];
    UnitInfo {
        label: format!(
            "{} slices {}..{} (patches {}..{})",
            splits[w.split].name, w.slices.start, w.slices.end, w.patches.start, w.patches.end
        ),
        bytes_in: facts.iter().map(|f| f.height * f.width * 4).sum(),
        bytes_out: (w.patches.end - w.patches.start) * patch_bytes,
    }
}

/// What the survey found, for `--resume`: a resumed run whose slices changed is refused.
fn fingerprint(splits: &[Split], layouts: &[SplitLayout], patch_dirs: &[String]) -> Value {
    let splits: Vec<Value> = splits
        .iter()
        .zip(layouts)
        .zip(patch_dirs)
        .map(|((split, layout), dir)| {
            // FNV-1a over every slice's path and facts: one number for a million slices.
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            let mut eat = |bytes: &[u8]| {
                for &b in bytes {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                }
            };
            for (i, f) in layout.facts.iter().enumerate() {
                eat(split.src_path(i).as_bytes());
                for v in [f.height, f.width, f.windows, f.kept] {
                    eat(&v.to_le_bytes());
                }
            }
            json!({
                "name": split.name,
                "slices": split.len(),
                "patches": layout.patches(),
                "patch_dir": dir,
                "digest": format!("{hash:016x}"),
            })
        })
        .collect();
    json!({ "splits": splits })
}

impl Operation for PatchesOp {
    type Output = UnitPatches;
    crate::exec::plan_fields!("patches"; targets, units, parameters, fingerprint);

    fn planned_outputs(&self) -> Vec<crate::exec::disk::PlannedOutput> {
        use crate::exec::disk::PlannedOutput;
        // Patch files take whole file system blocks (4 KiB on most): a header and a patch.
        let file = (self.npy_header.len() as u64 + self.cut.patch * self.cut.patch * 4)
            .div_ceil(4096)
            * 4096;
        self.targets
            .iter()
            .enumerate()
            .map(|(i, target)| match &self.zarr[i] {
                Some(spec) => {
                    let store = Address::Zarr {
                        store: target.container().join(output::ZARR_NAME),
                        node: String::new(),
                    };
                    PlannedOutput::array(&store, spec)
                }
                None => {
                    let patches: u64 = self
                        .work
                        .iter()
                        .filter(|w| w.split == i)
                        .map(|w| w.patches.end - w.patches.start)
                        .sum();
                    PlannedOutput::files(
                        target.container().display().to_string(),
                        target.container(),
                        patches.saturating_mul(file),
                    )
                }
            })
            .collect()
    }

    fn memory_per_unit(&self) -> u64 {
        // The unit's patch values (held only for a compressed or sharded Zarr array: `.npy`
        // files and raw chunks are written as each patch is cut), plus per thread a float32
        // slice (a float32 `.npy` file read into the thread's buffer, or another slice
        // converted) and a scratch patch.
        let out = self.units.iter().map(|u| u.bytes_out).max().unwrap_or(0);
        let slice = self
            .layouts
            .iter()
            .flat_map(|l| &l.facts)
            .map(|f| f.height * f.width * 4)
            .max()
            .unwrap_or(0);
        let patch = self.cut.patch * self.cut.patch * 4;
        out + (slice + patch) * rayon::current_num_threads() as u64
    }

    fn inputs(&self) -> Vec<Place> {
        self.splits.iter().flat_map(Split::places).collect()
    }

    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()> {
        let dirs: Vec<PathBuf> = staging
            .iter()
            .map(|a| a.container().to_path_buf())
            .collect();
        let made = if comm.is_root() {
            dirs.iter().try_for_each(|d| {
                let parts = d.join(PARTS_DIR);
                std::fs::create_dir_all(&parts).at(&parts)
            })
        } else {
            Ok(())
        };
        crate::comm::agree(comm, made)?;
        let mut writers = Vec::new();
        for (dir, spec) in dirs.iter().zip(&self.zarr) {
            if let Some(spec) = spec {
                let address = Address::Zarr {
                    store: dir.join(output::ZARR_NAME),
                    node: String::new(),
                };
                writers.push(io::create(&address, spec, comm, resume)?);
            }
        }
        *self.writers.write().expect("writers lock") = writers;
        let _ = self.staged.set(dirs);
        Ok(())
    }

    fn compute(&self, unit: usize) -> Result<UnitPatches> {
        let w = &self.work[unit];
        let lines = match self.format {
            PatchFormat::Npy => self.cut_to_files(w)?,
            PatchFormat::Zarr => {
                let writers = self.writers.read().expect("writers lock");
                let writer = writers[w.split].as_ref();
                if !writer.streams_blocks() {
                    return self.cut_to_pieces(w);
                }
                self.cut_to_chunks(w, writer)?
            }
        };
        Ok(UnitPatches {
            split: w.split,
            pieces: Vec::new(),
            lines,
        })
    }

    fn write(&self, part: Option<(usize, UnitPatches)>) -> Result<()> {
        let Some((unit, mut out)) = part else {
            return Ok(());
        };
        let parts = self.staged_dir(out.split).join(PARTS_DIR);
        let lines = std::mem::take(&mut out.lines);
        if !out.pieces.is_empty() {
            self.write_zarr(out)?;
        }
        safety::write_bytes(&part_path(&parts, unit), true, lines.as_bytes())
    }

    fn finish(&self, comm: &dyn Comm) -> Result<()> {
        for w in std::mem::take(&mut *self.writers.write().expect("writers lock")) {
            w.close()?;
        }
        if comm.is_root() {
            self.write_tables()
        } else {
            Ok(())
        }
    }
}
