//! `tessera bench pyramid`: a whole pyramid of a size^3 f32 Zarr (uncompressed chunks), end to
//! end with I/O, as a multiple of a plain memory copy of the base level's bytes taken in the
//! same run (issue 4: at most 5x on a 2-core machine; pyramid_sampler about 47x). Runs on
//! every rank of the job (the pyramid is distributed; the copy is timed on rank 0).

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use crate::comm::Comm;
use crate::error::{IoContext, Result};
use crate::exec::RunOptions;
use crate::grid::Region;
use crate::io::{self, Address, Block, Codec, DType};
use crate::job::{PyramidJob, PyramidLayout};
use crate::ops::pyramid::{kernel::Method, PyramidOp};

/// Parameters of `tessera bench pyramid`.
#[derive(Clone, Debug, clap::Args)]
pub struct PyramidBench {
    /// Working directory (the input volume is kept and reused between runs).
    #[arg(long, default_value = "tessera-bench")]
    pub dir: PathBuf,
    /// Volume side (the base level is size^3 float32).
    #[arg(long, default_value_t = 512)]
    pub size: u64,
    /// Chunk side of input and output.
    #[arg(long, default_value_t = 64)]
    pub chunk: u64,
    /// How levels are made.
    #[arg(long, value_enum, default_value_t)]
    pub method: Method,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Where to write the JSON result.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu (the default) or cuda[:N]: first the GPU kernels on a resident volume against a
    /// device copy (bits checked against the CPU), then the end-to-end run on the GPU.
    #[arg(long, default_value = "cpu")]
    pub device: crate::gpu::DeviceChoice,
}

#[derive(Debug, Serialize)]
struct PyramidResult {
    size: u64,
    chunk: u64,
    method: Method,
    ranks: usize,
    base_bytes: u64,
    bytes_read: u64,
    memcpy_s: f64,
    /// Writing the output's bytes as plain 1 MiB files into the same directory: the floor
    /// this filesystem sets on any tool that writes the pyramid.
    file_write_s: f64,
    pyramid_s: f64,
    /// This process's CPU time (user and system, every thread) during the fastest pyramid
    /// run, over its wall time: the cores it kept busy (rank 0's).
    cores_busy: f64,
    multiple_of_memcpy: f64,
    multiple_of_file_write: f64,
    read_over_base: f64,
}

/// Writes the input volume (a smooth pattern plus hash noise) unless it is already there.
fn make_input(b: &PyramidBench, address: &Address, comm: &dyn Comm) -> Result<()> {
    if let Ok(r) = io::open(address) {
        if r.meta().shape == vec![b.size; 3] && r.meta().chunks == Some(vec![b.chunk; 3]) {
            return Ok(());
        }
    }
    let spec = crate::ops::plain_spec(vec![b.size; 3], DType::F32, vec![b.chunk; 3], Codec::None);
    let writer = io::create(address, &spec, comm, false)?;
    if comm.is_root() {
        let n = b.size as usize;
        for z0 in (0..b.size).step_by(b.chunk as usize) {
            let depth = b.chunk.min(b.size - z0) as usize;
            let slab = ArrayD::from_shape_fn(IxDyn(&[depth, n, n]), |i| {
                let z = i[0] + z0 as usize;
                let h = (z * 73_856_093) ^ (i[1] * 19_349_663) ^ (i[2] * 83_492_791);
                ((z + i[1] + i[2]) as f32 * 0.01).sin() + (h % 1000) as f32 * 1e-4
            });
            let region = Region {
                start: vec![z0, 0, 0],
                shape: vec![depth as u64, b.size, b.size],
            };
            writer.write_box(Some((&region, &Block::F32(slab))))?;
        }
    }
    comm.barrier();
    Ok(())
}

/// `--device cuda`: the kernels on a resident volume of the bench's size (rank 0), as many
/// levels as the end-to-end pyramid has.
fn kernels_on_the_gpu(b: &PyramidBench, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    {
        // The default of `tessera pyramid`: halve until the level fits in one chunk.
        let (mut levels, mut side) = (1, b.size);
        while side > b.chunk && side > 1 {
            side = side.div_ceil(2);
            levels += 1;
        }
        let gpu = crate::bench::gpu::open(b.device)?;
        crate::bench::gpu::pyramid(b.size, b.method, levels, b.repeat.max(1), &gpu)?;
        println!();
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    Err(crate::error::Error::without_cuda(format!(
        "bench pyramid --device {}",
        b.device
    )))
}

/// Writes `bytes` as 1 MiB files under `dir` (removed afterwards); returns the seconds taken.
/// The yardstick of a plain file write, so written plainly, into the bench's scratch directory.
fn write_files(dir: &std::path::Path, bytes: u64, data: &[f32]) -> Result<f64> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).at(dir)?;
    let chunk: &[u8] = bytemuck::cast_slice(&data[..(1 << 18).min(data.len())]);
    let t = Instant::now();
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        let n = (chunk.len() as u64).min(left) as usize;
        let path = dir.join(i.to_string());
        std::fs::write(&path, &chunk[..n]).at(&path)?;
        left -= n as u64;
        i += 1;
    }
    let seconds = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(dir);
    Ok(seconds)
}

/// Runs the benchmark and prints a Markdown table on rank 0.
///
/// # Errors
/// Creating the input or running the pyramid.
pub fn run(b: &PyramidBench, comm: &dyn Comm) -> Result<()> {
    if let crate::gpu::DeviceChoice::Cuda(_) = b.device {
        kernels_on_the_gpu(b, comm)?;
    }
    std::fs::create_dir_all(&b.dir).at(&b.dir)?;
    let input = Address::parse(&format!(
        "{}/pyramid-input-{}.zarr",
        b.dir.display(),
        b.size
    ))?;
    make_input(b, &input, comm)?;
    let base_bytes = b.size.pow(3) * 4;
    let output = format!("{}/pyramid-output.zarr", b.dir.display());
    let t = time_pyramid(b, &input, &output, comm)?;
    if !comm.is_root() {
        return Ok(());
    }
    let r = PyramidResult {
        size: b.size,
        chunk: b.chunk,
        method: b.method,
        ranks: comm.size(),
        base_bytes,
        bytes_read: t.read,
        memcpy_s: t.copy,
        file_write_s: t.floor,
        pyramid_s: t.pyramid,
        cores_busy: t.cpu / t.pyramid,
        multiple_of_memcpy: t.pyramid / t.copy,
        multiple_of_file_write: t.pyramid / t.floor,
        read_over_base: t.read as f64 / base_bytes as f64,
    };
    print_pyramid(b, &r);
    if let Some(path) = &b.json {
        super::write_result(path, &serde_json::to_string_pretty(&r).unwrap_or_default())?;
    }
    Ok(())
}

/// [`time_pyramid`]'s figures: the best of each timing (seconds), the process's CPU seconds
/// in the fastest pyramid run, and the bytes the pyramid read.
struct Timings {
    copy: f64,
    pyramid: f64,
    cpu: f64,
    floor: f64,
    read: u64,
}

/// The best of `b.repeat` runs of: a memory copy of the base level's bytes, the pyramid end to
/// end, and (rank 0) a plain write of the pyramid's bytes into files; and the bytes the
/// pyramid read.
fn time_pyramid(
    b: &PyramidBench,
    input: &Address,
    output: &str,
    comm: &dyn Comm,
) -> Result<Timings> {
    let base_bytes = b.size.pow(3) * 4;
    let output = output.to_string();
    let (mut copy, mut pyr, mut cpu, mut read) = (f64::INFINITY, f64::INFINITY, 0.0, 0);
    let mut floor = f64::INFINITY;
    let src = vec![1.0f32; (base_bytes / 4) as usize];
    let mut dst = vec![0.0f32; src.len()];
    for _ in 0..b.repeat.max(1) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        copy = copy.min(t.elapsed().as_secs_f64());
        let job = PyramidJob {
            input: input.to_string(),
            output: output.clone(),
            axes: None,
            factor: None,
            levels: None,
            method: b.method,
            chunks: Some(vec![b.chunk; 3]),
            shards: None,
            codec: Codec::None,
            layout: PyramidLayout::Ome,
            voxel_size: None,
            unit: None,
            device: b.device,
            gpu_memory_limit: None,
            run: RunOptions {
                overwrite: true,
                ..RunOptions::default()
            },
        };
        if comm.is_root() {
            io::staging::remove_any(std::path::Path::new(&output))?;
        }
        comm.barrier();
        let t = Instant::now();
        let cpu_before = super::process_cpu_seconds();
        let mut op = PyramidOp::plan(&job)?;
        let device = crate::gpu::select(b.device, None, comm, "pyramid", true)?;
        crate::comm::agree(comm, op.use_device(device))?;
        let summary = crate::exec::run(&op, comm, &job.run)?;
        let (wall, used) = (
            t.elapsed().as_secs_f64(),
            super::process_cpu_seconds() - cpu_before,
        );
        if wall < pyr {
            (pyr, cpu) = (wall, used);
        }
        read = summary.bytes_read;
        let written = summary.bytes_written;
        if comm.is_root() {
            floor = floor.min(write_files(
                &b.dir.join("pyramid-write-floor"),
                written,
                &src,
            )?);
        }
    }
    std::hint::black_box(&dst);
    Ok(Timings {
        copy,
        pyramid: pyr,
        cpu,
        floor,
        read,
    })
}

/// The bench's table (rank 0).
fn print_pyramid(b: &PyramidBench, r: &PyramidResult) {
    let base_bytes = r.base_bytes;
    println!(
        "bench pyramid: {s}^3 f32 Zarr, chunks {c}^3, uncompressed, all levels, end to end with I/O (page cache warm), {} rank(s) x {} rayon threads, best of {}",
        r.ranks,
        rayon::current_num_threads(),
        b.repeat.max(1),
        s = b.size,
        c = b.chunk
    );
    println!();
    println!("| method | base MiB | memcpy s | plain file write of the output s | pyramid s | cores busy | pyramid / memcpy | pyramid / file write | bytes read / base |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {:?} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1}x | {:.1}x | {:.3} |",
        r.method,
        base_bytes as f64 / 1048576.0,
        r.memcpy_s,
        r.file_write_s,
        r.pyramid_s,
        r.cores_busy,
        r.multiple_of_memcpy,
        r.multiple_of_file_write,
        r.read_over_base
    );
}
