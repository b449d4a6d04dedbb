//! `tessera bench patches`: patch extraction of float32 slices (LoDoPaB's 362x362 by
//! default) to `.npy` files and to one Zarr array, each against a plain copy of the same
//! bytes in the same run: the input slices read, and the patch bytes written into as many
//! files (npy) or into one file (zarr), in parallel, with no extraction, statistics or
//! manifest. That copy is the least any patch writer must do.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::{measure, Measured};
use crate::comm::agree;
use crate::comm::Comm;
use crate::error::{IoContext, Result};
use crate::exec::RunOptions;
use crate::io::{safety, staging::remove_any, Codec};
use crate::job::{PatchFormat, PatchesJob};
use crate::ops::patches::{kernel, output};

/// Parameters of `tessera bench patches`.
#[derive(Clone, Debug, clap::Args)]
pub struct PatchesBench {
    /// Working directory (the input slices are kept there and reused between runs).
    #[arg(long, default_value = "tessera-bench")]
    pub dir: PathBuf,
    /// Number of slices.
    #[arg(long, default_value_t = 10_000)]
    pub slices: usize,
    /// Slice side (slices are size x size float32 in [0, 1)).
    #[arg(long, default_value_t = 362)]
    pub size: usize,
    /// Patch side.
    #[arg(long, default_value_t = 128)]
    pub patch_size: u64,
    /// Step between patches.
    #[arg(long, default_value_t = 64)]
    pub stride: u64,
    /// Which output format(s) to measure.
    #[arg(long, value_parser = ["npy", "zarr", "both"], default_value = "both")]
    pub format: String,
    /// Patches per Zarr chunk (default: tessera patches' own, about 4 MiB).
    #[arg(long)]
    pub chunks: Option<u64>,
    /// Codec of the Zarr output (none: the copy is not compressed either).
    #[arg(long, value_enum, default_value_t = Codec::None)]
    pub codec: Codec,
    /// Repetitions; the best of each is reported (and the median).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the JSON result (default: `<dir>/bench-patches.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One slice file's name.
fn slice_name(i: usize) -> String {
    format!("slices/slice_{i:06}.npy")
}

/// The input: `n` slices of `size`x`size` float32 with varied values in [0, 1), and their
/// manifest; slices already present at the right size are reused. Every file is written
/// under a temporary name and renamed (a killed run leaves no half slice to reuse).
fn make_input(root: &Path, n: usize, size: usize) -> Result<PathBuf> {
    let header = output::npy_header_f32(&[size as u64, size as u64]);
    let expected = (header.len() + size * size * 4) as u64;
    (0..n).into_par_iter().try_for_each(|i| -> Result<()> {
        let path = root.join(slice_name(i));
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == expected) {
            return Ok(());
        }
        let mut next = crate::grid::xorshift((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let values: Vec<f32> = (0..size * size)
            .map(|_| crate::grid::unit_f32(next()))
            .collect();
        safety::write_bytes(&path, true, &output::npy_patch_bytes(&header, &values))
    })?;
    let manifest = root.join("train_manifest.csv");
    let mut text = String::from("index,path\n");
    for i in 0..n {
        text.push_str(&format!("{i},{}\n", slice_name(i)));
    }
    safety::write_bytes(&manifest, true, text.as_bytes())?;
    Ok(manifest)
}

/// The reference: this rank's slices read, and `per_slice` patches' worth of bytes each
/// written, into a file per patch (npy, with a `.npy` header) or at its place in one file
/// (zarr), in parallel. Plain writes on purpose, into the bench's own scratch name under
/// `--dir` (see [`clear`]): the yardstick is what any writer must do at the least.
fn plain_copy(
    root: &Path,
    to: &Path,
    share: std::ops::Range<usize>,
    per_slice: u64,
    patch: u64,
    one_file: bool,
) -> Result<()> {
    let header = output::npy_header_f32(&[patch, patch]);
    let patch_bytes = (patch * patch * 4) as usize;
    let file = if one_file {
        Some(std::fs::OpenOptions::new().write(true).open(to).at(to)?)
    } else {
        None
    };
    share.into_par_iter().try_for_each(|i| -> Result<()> {
        let from = root.join(slice_name(i));
        let data = std::fs::read(&from).at(&from)?;
        for k in 0..per_slice as usize {
            let at = (k * patch_bytes) % (data.len() - patch_bytes).max(1);
            let bytes = &data[at..at + patch_bytes];
            let index = i * per_slice as usize + k;
            match &file {
                Some(f) => {
                    use std::os::unix::fs::FileExt;
                    f.write_all_at(bytes, (index * patch_bytes) as u64).at(to)?;
                }
                None => {
                    let path = to.join(format!("{index:09}.npy"));
                    let mut out = Vec::with_capacity(header.len() + bytes.len());
                    out.extend_from_slice(&header);
                    out.extend_from_slice(bytes);
                    std::fs::write(&path, out).at(&path)?;
                }
            }
        }
        Ok(())
    })
}

/// Rank 0 clears `path` (and for the one-file copy creates it at its full size) while the
/// others wait. Only the bench's own scratch names under `--dir` come here; the copy they hold
/// is the yardstick, a plain write by definition, so it does not go through the output rules.
fn clear(path: &Path, one_file_len: Option<u64>, dir: bool, comm: &dyn Comm) -> Result<()> {
    crate::comm::on_root(comm, || {
        remove_any(path).and_then(|()| match (one_file_len, dir) {
            (Some(len), _) => std::fs::File::create(path)
                .and_then(|f| f.set_len(len))
                .at(path),
            (None, true) => std::fs::create_dir_all(path).at(path),
            (None, false) => Ok(()),
        })
    })
}

/// Flushes every dirty page before a timed phase (rank 0; the others wait), so that neither
/// contender is throttled by the other's writeback: the page cache holds the outputs of
/// earlier repetitions until the kernel writes them out.
fn settle_disk(comm: &dyn Comm) {
    if comm.is_root() {
        // SAFETY: sync(2) takes no arguments and always succeeds.
        unsafe { libc::sync() };
    }
    comm.barrier();
}

/// One format's timings: the copy and the extraction, `repeat` times each, alternating.
fn measure_format(
    b: &PatchesBench,
    comm: &dyn Comm,
    format: PatchFormat,
    manifest: &Path,
    total: u64,
) -> Result<(Measured, Measured)> {
    let root = manifest
        .parent()
        .expect("manifest in the input directory")
        .to_path_buf();
    let name = format!("{format:?}").to_lowercase();
    let copy_to = b.dir.join(format!("patches-copy-{name}"));
    let out = b.dir.join(format!("patches-out-{name}"));
    let per_slice = kernel::patch_count(b.size as u64, b.size as u64, b.patch_size, b.stride);
    let share = crate::grid::partition_contiguous(b.slices, comm.size())[comm.rank()].clone();
    let one_file = format == PatchFormat::Zarr;
    let job = PatchesJob {
        manifest: Some(manifest.to_path_buf()),
        split_name: "train".into(),
        split: Vec::new(),
        data_root: Some(root.clone()),
        input: None,
        output: out.to_string_lossy().into_owned(),
        patch_size: b.patch_size,
        stride: b.stride,
        format,
        min_std: None,
        chunks: if one_file { b.chunks } else { None },
        shards: None,
        codec: if one_file { b.codec } else { Codec::Auto },
        run: RunOptions {
            overwrite: true,
            ..RunOptions::default()
        },
    };
    let (mut copy_times, mut run_times) = (Vec::new(), Vec::new());
    for _ in 0..b.repeat.max(1) {
        clear(&copy_to, one_file.then_some(total), true, comm)?;
        settle_disk(comm);
        let t = Instant::now();
        let copied = plain_copy(
            &root,
            &copy_to,
            share.clone(),
            per_slice,
            b.patch_size,
            one_file,
        );
        agree(comm, copied)?;
        copy_times.push(t.elapsed().as_secs_f64());
        clear(&copy_to, None, false, comm)?;

        clear(&out, None, false, comm)?;
        settle_disk(comm);
        let t = Instant::now();
        crate::ops::patches::run(&job, comm)?;
        comm.barrier();
        run_times.push(t.elapsed().as_secs_f64());
    }
    clear(&out, None, false, comm)?;
    Ok((
        measure(&mut copy_times, total),
        measure(&mut run_times, total),
    ))
}

/// Runs the benchmark and prints a Markdown table (rank 0).
///
/// # Errors
/// Filesystem or extraction failures.
pub fn run(b: &PatchesBench, comm: &dyn Comm) -> Result<()> {
    let root = b.dir.join("patches-input");
    crate::comm::on_root(comm, || make_input(&root, b.slices, b.size).map(|_| ()))?;
    let manifest = root.join("train_manifest.csv");
    // Warm the page cache so both contenders read from memory.
    let share = crate::grid::partition_contiguous(b.slices, comm.size())[comm.rank()].clone();
    share.into_par_iter().for_each(|i| {
        let _ = std::fs::read(root.join(slice_name(i)));
    });
    let per_slice = kernel::patch_count(b.size as u64, b.size as u64, b.patch_size, b.stride);
    let total = b.slices as u64 * per_slice * b.patch_size * b.patch_size * 4;
    let formats: Vec<PatchFormat> = match b.format.as_str() {
        "npy" => vec![PatchFormat::Npy],
        "zarr" => vec![PatchFormat::Zarr],
        _ => vec![PatchFormat::Npy, PatchFormat::Zarr],
    };
    let mut results = Vec::new();
    for f in formats {
        let (copy, run) = measure_format(b, comm, f, &manifest, total)?;
        results.push((f, copy, run));
    }
    if comm.is_root() {
        print_results(b, comm, total, per_slice, &results)?;
    }
    Ok(())
}

fn print_results(
    b: &PatchesBench,
    comm: &dyn Comm,
    total: u64,
    per_slice: u64,
    results: &[(PatchFormat, Measured, Measured)],
) -> Result<()> {
    println!(
        "bench patches: {} slices of {}x{} float32 -> {} patches of {}x{} (stride {}, {:.1} MiB), zarr codec {:?}, chunks {}, {} rank(s), {} thread(s) per rank, best of {}",
        b.slices, b.size, b.size, b.slices as u64 * per_slice, b.patch_size, b.patch_size, b.stride,
        total as f64 / 1048576.0, b.codec, b.chunks.map_or("default".into(), |c| c.to_string()), comm.size(), rayon::current_num_threads(), b.repeat.max(1)
    );
    println!();
    println!("| format | copy s (best) | patches s (best) | patches s (median) | patches MB/s | fraction of copy |");
    println!("|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (f, copy, run) in results {
        let fraction = run.best_mb_per_s / copy.best_mb_per_s;
        let target = if *f == PatchFormat::Npy { 0.5 } else { 0.8 };
        println!(
            "| {f:?} ({}) | {:.3} | {:.3} | {:.3} | {:.0} | {fraction:.2} |",
            if *f == PatchFormat::Npy {
                "one file per patch vs as many files"
            } else {
                "one array vs one file"
            },
            copy.best_seconds,
            run.best_seconds,
            run.median_seconds,
            run.best_mb_per_s
        );
        json.push(serde_json::json!({
            "format": format!("{f:?}").to_lowercase(), "copy": copy, "patches": run,
            "fraction_of_copy": fraction, "target_fraction": target,
        }));
    }
    let result = serde_json::json!({
        "benchmark": "patches", "slices": b.slices, "size": b.size, "patch_size": b.patch_size,
        "stride": b.stride, "codec": b.codec, "zarr_chunks": b.chunks, "ranks": comm.size(),
        "threads_per_rank": rayon::current_num_threads(), "bytes": total, "results": json,
        "host": crate::comm::hostname(),
    });
    let path = b
        .json
        .clone()
        .unwrap_or_else(|| b.dir.join("bench-patches.json"));
    safety::write_bytes(
        &path,
        true,
        serde_json::to_string_pretty(&result)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    println!();
    println!("json: {}", path.display());
    Ok(())
}
