//! `tessera bench pairs`: `tessera pairs` end to end (read the images, cut both patches of
//! every pair, turn the second, write the group uncompressed) on 64 float32 images of
//! 1024x1024 x 3 channels, 256 pairs each, window 64 (issue 18), as a multiple of a plain
//! memory copy of the written pair bytes taken in the same run (target: at most 3x). The input
//! is a `.npy` kept in `--dir` between runs; `--size` shrinks the images for quick runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use crate::comm::Comm;
use crate::error::{IoContext, Result};
use crate::exec::RunOptions;
use crate::grid::Region;
use crate::io::{self, Address, Block, Codec, DType};
use crate::job::PairsJob;
use crate::ops::pairs::PairsOp;

/// Parameters of `tessera bench pairs`.
#[derive(Clone, Debug, clap::Args)]
pub struct PairsBench {
    /// Working directory (the input images are kept and reused between runs).
    #[arg(long, default_value = "tessera-bench")]
    pub dir: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
    pub images: u64,
    /// Image side (images are channels x size x size float32).
    #[arg(long, default_value_t = 1024)]
    pub size: u64,
    /// Channels per image.
    #[arg(long, default_value_t = 3)]
    pub channels: u64,
    /// Pairs per image.
    #[arg(long, default_value_t = 256)]
    pub pairs_per_image: u64,
    /// Patch side.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Where to write the JSON result.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct PairsResult {
    images: u64,
    size: u64,
    channels: u64,
    pairs_per_image: u64,
    window: u64,
    ranks: usize,
    threads: usize,
    pair_bytes: u64,
    memcpy_s: f64,
    pairs_s: f64,
    multiple_of_memcpy: f64,
}

/// Writes the images (a smooth pattern plus hash noise) unless they are already there; through
/// a temporary name, so a killed bench leaves no half-written input to reuse.
fn make_input(b: &PairsBench, path: &Path) -> Result<()> {
    let shape = vec![b.images, b.channels, b.size, b.size];
    let address = Address::Npy {
        path: path.to_path_buf(),
    };
    if io::open(&address).is_ok_and(|r| r.meta().shape == shape) {
        return Ok(());
    }
    // The bench's own cached input, replaced when it has another shape.
    crate::io::safety::write_file(path, true, |tmp| write_images(b, tmp, &shape))
}

/// The bench's images into a new `.npy` at `path`, one image at a time.
fn write_images(b: &PairsBench, path: &Path, shape: &[u64]) -> Result<()> {
    let spec = crate::ops::plain_spec(shape.to_vec(), DType::F32, shape.to_vec(), Codec::None);
    let writer = io::create(
        &Address::Npy {
            path: path.to_path_buf(),
        },
        &spec,
        &crate::comm::Local,
        false,
    )?;
    let n = b.size as usize;
    for image in 0..b.images {
        let pixels = ArrayD::from_shape_fn(IxDyn(&[1, b.channels as usize, n, n]), |i| {
            let h = (image as usize * 7_919)
                ^ (i[1] * 104_729)
                ^ (i[2] * 19_349_663)
                ^ (i[3] * 83_492_791);
            ((i[2] + 2 * i[3]) as f32 * 0.01).sin() + (h % 1000) as f32 * 1e-4
        });
        let region = Region {
            start: vec![image, 0, 0, 0],
            shape: vec![1, b.channels, b.size, b.size],
        };
        writer.write_box(Some((&region, &Block::F32(pixels))))?;
    }
    writer.close()
}

fn job(b: &PairsBench, input: &Path, output: &Path) -> PairsJob {
    PairsJob {
        input: input.display().to_string(),
        output: output.display().to_string(),
        window: vec![b.window, b.window],
        pairs_per_image: b.pairs_per_image,
        delta_range: vec![(b.window / 4) as f64, (3 * b.window / 4) as f64],
        seed: 1,
        rotations: vec![0, 1, 2, 3],
        positions: false,
        include_n: false,
        overlaps: false,
        metadata_only: false,
        pairs_per_chunk: None,
        codec: Codec::None,
        run: RunOptions {
            overwrite: true,
            ..RunOptions::default()
        },
    }
}

/// Runs the benchmark and prints a Markdown table on rank 0.
///
/// # Errors
/// Creating the input or running the pairs.
pub fn run(b: &PairsBench, comm: &dyn Comm) -> Result<()> {
    std::fs::create_dir_all(&b.dir).at(&b.dir)?;
    let input = b.dir.join(format!(
        "pairs-input-{}x{}x{}.npy",
        b.images, b.channels, b.size
    ));
    let made = if comm.is_root() {
        make_input(b, &input)
    } else {
        Ok(())
    };
    crate::comm::agree(comm, made)?;
    let output = b.dir.join("pairs-output.zarr");
    let job = job(b, &input, &output);
    let (mut copy, mut pairs, mut bytes) = (f64::INFINITY, f64::INFINITY, 0);
    for _ in 0..b.repeat.max(1) {
        if comm.is_root() {
            io::staging::remove_any(&output)?;
        }
        comm.barrier();
        let t = Instant::now();
        let op = PairsOp::plan(&job)?;
        let summary = crate::exec::run(&op, comm, &job.run)?;
        pairs = pairs.min(t.elapsed().as_secs_f64());
        bytes = summary.bytes_written;
        if comm.is_root() {
            copy = copy.min(memcpy_seconds(bytes));
        }
    }
    if comm.is_root() {
        let _ = io::staging::remove_any(&output);
        report(
            b,
            comm,
            PairsResult {
                images: b.images,
                size: b.size,
                channels: b.channels,
                pairs_per_image: b.pairs_per_image,
                window: b.window,
                ranks: comm.size(),
                threads: rayon::current_num_threads(),
                pair_bytes: bytes,
                memcpy_s: copy,
                pairs_s: pairs,
                multiple_of_memcpy: pairs / copy,
            },
        )?;
    }
    Ok(())
}

/// Seconds to copy `bytes` from one buffer to another (both touched first, so page faults
/// are not counted).
fn memcpy_seconds(bytes: u64) -> f64 {
    let src = vec![1u8; bytes as usize];
    let mut dst = vec![0u8; bytes as usize];
    let t = Instant::now();
    dst.copy_from_slice(&src);
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(&dst);
    seconds
}

fn report(b: &PairsBench, comm: &dyn Comm, r: PairsResult) -> Result<()> {
    println!(
        "bench pairs: {} images of {}x{}x{} float32 (.npy), {} pairs each, window {}, turns 0-3, uncompressed Zarr, {} rank(s) x {} threads, best of {}",
        r.images, r.channels, r.size, r.size, r.pairs_per_image, r.window, comm.size(), r.threads, b.repeat.max(1)
    );
    println!();
    println!("| pair bytes MiB | memcpy s | pairs s | pairs / memcpy |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} | {:.3} | {:.3} | {:.2}x |",
        r.pair_bytes as f64 / 1048576.0,
        r.memcpy_s,
        r.pairs_s,
        r.multiple_of_memcpy
    );
    if let Some(path) = &b.json {
        let text = serde_json::to_string_pretty(&r).unwrap_or_default();
        io::safety::write_bytes(path, true, text.as_bytes())?;
    }
    Ok(())
}
