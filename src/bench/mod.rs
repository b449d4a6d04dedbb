//! `tessera bench ...`: throughput measured against a reference taken in the same run on the
//! same bytes, because absolute times on shared machines are not comparable between runs.
//!
//! `bench convert`: a stack of uint16 TIFF files converted to Zarr, against a plain parallel
//! copy of the same files (read each file, write it elsewhere): the least any converter must do.

pub mod crop;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod hdr;
pub mod memcopy;
pub mod pairs;
pub mod patches;
pub mod pyramid;
pub mod quilt;
pub mod scaling;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use serde::Serialize;

use crate::comm::{Comm, ReduceOp};
use crate::error::{IoContext, Result};
use crate::io::{images, staging::remove_any, Block, Codec};
use crate::job::ConvertJob;

/// CPU seconds this process has used so far (user and system, all threads): a run's CPU time
/// over its wall time is how many cores it kept busy, which bounds what more threads can
/// give it (a run that already keeps 1.3 cores busy at `--threads 1` can be at most 2/1.3
/// times faster on 2 cores).
pub(crate) fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Parameters of `tessera bench convert`.
#[derive(Clone, Debug, clap::Args)]
pub struct ConvertBench {
    /// Working directory (input stack, copies and outputs; reused between runs).
    #[arg(long, default_value = "tessera-bench")]
    pub dir: PathBuf,
    /// Number of slices.
    #[arg(long, default_value_t = 256)]
    pub slices: usize,
    /// Slice side (slices are size x size uint16).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Codec of the Zarr output.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    pub codec: Codec,
    /// Chunk shape of the Zarr output (default: tessera convert's, 1,512,512).
    #[arg(long, value_delimiter = ',')]
    pub chunks: Option<Vec<u64>>,
    /// Shard shape of the Zarr output.
    #[arg(long, value_delimiter = ',')]
    pub shards: Option<Vec<u64>>,
    /// Repetitions; the best of each is reported (and the median).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where to write the JSON result (default: `<dir>/bench-convert.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Writes a bench's result file (JSON, CSV, Markdown table): its own file, rewritten on every
/// run as before, but through a temporary name and a rename, and never onto a special file.
pub(crate) fn write_result(path: &Path, text: &str) -> Result<()> {
    crate::io::safety::write_file(path, true, |tmp| std::fs::write(tmp, text).at(tmp))
}

#[derive(Debug, Serialize)]
struct Measured {
    best_seconds: f64,
    median_seconds: f64,
    best_mb_per_s: f64,
}

fn measure(times: &mut [f64], bytes: u64) -> Measured {
    times.sort_by(f64::total_cmp);
    Measured {
        best_seconds: times[0],
        median_seconds: times[times.len() / 2],
        best_mb_per_s: bytes as f64 / 1e6 / times[0],
    }
}

/// Writes `n` slices of `size`x`size` uint16 with varied content (not trivially compressible).
fn make_stack(dir: &Path, n: usize, size: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).at(dir)?;
    (0..n)
        .into_par_iter()
        .map(|z| {
            let path = dir.join(format!("bench_{z:05}.tif"));
            let expected = (size * size * 2) as u64;
            let fresh = std::fs::metadata(&path)
                .map(|m| m.len() >= expected)
                .unwrap_or(false);
            if !fresh {
                let mut next =
                    crate::grid::xorshift((z as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let slice = ArrayD::from_shape_fn(IxDyn(&[size, size]), |i| {
                    ((i[0] * 7 + i[1] * 3 + z * 11) as u16).wrapping_add((next() & 0x3ff) as u16)
                });
                images::write_tiff(&path, &Block::U16(slice))?;
            }
            Ok(path)
        })
        .collect()
}

/// Runs the convert benchmark and prints a Markdown table.
///
/// # Errors
/// Filesystem or conversion failures.
pub fn convert(b: &ConvertBench, comm: &dyn Comm) -> Result<()> {
    let input = b.dir.join("input");
    let (files, bytes) = convert_inputs(b, &input, comm)?;
    let share = crate::grid::partition_contiguous(files.len(), comm.size())[comm.rank()].clone();
    let (mut copy_times, mut convert_times) =
        time_copy_and_convert(b, &input, &files[share], comm)?;
    let copy = measure(&mut copy_times, bytes);
    let conv = measure(&mut convert_times, bytes);
    if comm.is_root() {
        report_convert(b, comm, bytes, &copy, &conv)?;
        remove_any(&b.dir.join("copy"))?;
    }
    Ok(())
}

/// The bench's TIFF stack (made by rank 0), every rank's list of its files, and the stack's
/// bytes; each rank's share read once so both contenders read from the page cache.
fn convert_inputs(b: &ConvertBench, input: &Path, comm: &dyn Comm) -> Result<(Vec<PathBuf>, u64)> {
    let made = if comm.is_root() {
        make_stack(input, b.slices, b.size)
    } else {
        Ok(vec![])
    };
    let files = crate::comm::agree(comm, made)?;
    let files: Vec<PathBuf> = if comm.is_root() {
        files
    } else {
        (0..b.slices)
            .map(|z| input.join(format!("bench_{z:05}.tif")))
            .collect()
    };
    let share = crate::grid::partition_contiguous(files.len(), comm.size())[comm.rank()].clone();
    let mut bytes = [files[share.clone()]
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()];
    comm.all_reduce_u64(&mut bytes, ReduceOp::Sum);
    let bytes = bytes[0];
    // Warm the page cache so both contenders read from memory.
    files[share.clone()].par_iter().for_each(|f| {
        let _ = std::fs::read(f);
    });
    Ok((files, bytes))
}

/// `b.repeat` timings of a plain parallel copy of `files` (this rank's share) and of
/// `tessera convert` of the whole stack, each after removing the last one's output.
fn time_copy_and_convert(
    b: &ConvertBench,
    input: &Path,
    files: &[PathBuf],
    comm: &dyn Comm,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let copy_dir = b.dir.join("copy");
    let output = b.dir.join("out.zarr");
    let job = ConvertJob {
        chunks: b.chunks.clone(),
        shards: b.shards.clone(),
        codec: b.codec,
        ..ConvertJob::tifs_to_zarr(input.to_path_buf(), r"(bench)_(\d+)\.tif$", output.clone())
    };
    let (mut copy_times, mut convert_times) = (Vec::new(), Vec::new());
    for _ in 0..b.repeat.max(1) {
        let cleared = if comm.is_root() {
            remove_any(&copy_dir).and_then(|()| std::fs::create_dir_all(&copy_dir).at(&copy_dir))
        } else {
            Ok(())
        };
        crate::comm::agree(comm, cleared)?;
        let t = Instant::now();
        // The yardstick: a plain read and write of each file into the bench's own scratch
        // directory (cleared above), as any copy would do it.
        let copied = files.par_iter().try_for_each(|f| -> Result<()> {
            let data = std::fs::read(f).at(f)?;
            let to = copy_dir.join(f.file_name().unwrap_or_default());
            std::fs::write(&to, data).at(&to)
        });
        crate::comm::agree(comm, copied)?;
        copy_times.push(t.elapsed().as_secs_f64());

        let removed = if comm.is_root() {
            remove_any(&output)
        } else {
            Ok(())
        };
        crate::comm::agree(comm, removed)?;
        let t = Instant::now();
        crate::ops::convert::run(&job, comm)?;
        comm.barrier();
        convert_times.push(t.elapsed().as_secs_f64());
    }
    Ok((copy_times, convert_times))
}

/// The table and JSON of `bench convert` (rank 0).
fn report_convert(
    b: &ConvertBench,
    comm: &dyn Comm,
    bytes: u64,
    copy: &Measured,
    conv: &Measured,
) -> Result<()> {
    let fraction = conv.best_mb_per_s / copy.best_mb_per_s;
    let layout = format!(
        "chunks {}{}",
        b.chunks
            .as_deref()
            .map_or("default".into(), crate::grid::join),
        b.shards.as_deref().map_or(String::new(), |s| format!(
            ", shards {}",
            crate::grid::join(s)
        ))
    );
    println!("bench convert: {} slices of {}x{} uint16 TIFF ({:.1} MiB), codec {:?}, {layout}, {} rank(s), {} thread(s) per rank, best of {}",
        b.slices, b.size, b.size, bytes as f64 / 1048576.0, b.codec, comm.size(), rayon::current_num_threads(), b.repeat.max(1));
    println!();
    println!("| what | best s | median s | MB/s (best) | fraction of copy |");
    println!("|---|---|---|---|---|");
    println!(
        "| plain file copy (read + write) | {:.3} | {:.3} | {:.0} | 1.00 |",
        copy.best_seconds, copy.median_seconds, copy.best_mb_per_s
    );
    println!(
        "| tessera convert -> Zarr | {:.3} | {:.3} | {:.0} | {:.2} |",
        conv.best_seconds, conv.median_seconds, conv.best_mb_per_s, fraction
    );
    let json = serde_json::json!({
        "benchmark": "convert",
        "slices": b.slices, "size": b.size, "codec": b.codec, "ranks": comm.size(),
        "chunks": b.chunks, "shards": b.shards,
        "threads_per_rank": rayon::current_num_threads(),
        "bytes": bytes, "copy": copy, "convert": conv, "fraction_of_copy": fraction,
        "host": crate::comm::hostname(),
    });
    let path = b
        .json
        .clone()
        .unwrap_or_else(|| b.dir.join("bench-convert.json"));
    write_result(
        &path,
        &serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    println!();
    println!("json: {}", path.display());

    Ok(())
}

/// Parameters of `tessera bench quilt`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuiltBench {
    /// Repetitions; the best of each is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Only the 2-D or only the 3-D case.
    #[arg(long, value_parser = ["2d", "3d", "both"], default_value = "both")]
    pub case: String,
    /// Where to write the JSON result.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu (the default) or cuda[:N]: the GPU kernels on resident data against a device copy.
    #[arg(long, default_value = "cpu")]
    pub device: crate::gpu::DeviceChoice,
}

/// Runs the quilt kernel benchmark and prints a Markdown table (rank 0 only; in memory).
///
/// # Errors
/// Writing the JSON result.
pub fn quilt(b: &QuiltBench, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    let cases: Vec<_> = quilt::cases()
        .into_iter()
        .filter(|c| b.case == "both" || c.name.starts_with(b.case.as_str()))
        .collect();
    if let crate::gpu::DeviceChoice::Cuda(_) = b.device {
        #[cfg(feature = "cuda")]
        return gpu::quilt(&cases, b.repeat.max(1), &gpu::open(b.device)?);
        #[cfg(not(feature = "cuda"))]
        return Err(crate::error::Error::without_cuda(
            "bench quilt --device cuda",
        ));
    }
    println!(
        "bench quilt: in-memory kernels (copy and unstitch on one thread, stitch on {} rayon threads), best of {}, fraction of a memcpy of the patch bytes",
        rayon::current_num_threads(),
        b.repeat.max(1)
    );
    println!();
    println!("| case | patch MiB | memcpy s | unstitch s | unstitch / memcpy | stitch s | stitch / memcpy |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for case in &cases {
        let r = quilt::measure(case, b.repeat);
        println!(
            "| {} w{} s{} b{} | {:.0} | {:.3} | {:.3} | {:.2} | {:.3} | {:.2} |",
            case.name,
            case.window,
            case.step,
            case.border,
            r.patch_bytes as f64 / 1048576.0,
            r.memcpy_s,
            r.unstitch_s,
            r.unstitch_fraction,
            r.stitch_s,
            r.stitch_fraction
        );
        results.push(r);
    }
    if let Some(path) = &b.json {
        write_result(
            path,
            &serde_json::to_string_pretty(&results).unwrap_or_default(),
        )?;
    }
    Ok(())
}
