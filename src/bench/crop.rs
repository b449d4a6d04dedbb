//! `tessera bench crop`: the whole crop pipeline (analysis, global radius, crop and write,
//! validation, results, plot) on N synthetic 256x256 float32 Airy patterns in a `.npy` (page
//! cache warm), as a multiple of a plain memory copy of the input bytes in the same run
//! (issue 5: at most 6x on a 2-core machine).

use std::path::PathBuf;
use std::time::Instant;

use crate::comm::Comm;
use crate::error::{IoContext, Result};
use crate::exec::RunOptions;
use crate::job::{CropJob, Recenter};

/// Parameters of `tessera bench crop`.
#[derive(Clone, Debug, clap::Args)]
pub struct CropBench {
    /// Working directory (the synthetic input is kept and reused).
    #[arg(long, default_value = "tessera-bench")]
    pub dir: PathBuf,
    /// Number of patterns.
    #[arg(long, default_value_t = 1000)]
    pub patterns: u64,
    /// Pattern side.
    #[arg(long, default_value_t = 256)]
    pub size: u64,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// cpu (the default), cuda[:N] or auto: where the crop's kernels run (end to end, against
    /// the same memcpy).
    #[arg(long, default_value = "cpu")]
    pub device: crate::gpu::DeviceChoice,
}

/// Runs the benchmark and prints a Markdown table on rank 0.
///
/// # Errors
/// Creating the input or running the crop.
pub fn run(b: &CropBench, comm: &dyn Comm) -> Result<()> {
    if let crate::gpu::DeviceChoice::Cuda(_) = b.device {
        kernel_on_the_gpu(b, comm)?;
    }
    std::fs::create_dir_all(&b.dir).at(&b.dir)?;
    let input = b
        .dir
        .join(format!("crop-input-{}x{}.npy", b.patterns, b.size));
    let bytes = b.patterns * b.size * b.size * 4;
    let ready = std::fs::metadata(&input).is_ok_and(|m| m.len() >= bytes);
    let made = if comm.is_root() && !ready {
        // The bench's own cached input, replaced when it has another size; renamed into
        // place, so a killed bench leaves no half-written one.
        crate::io::safety::write_file(&input, true, |tmp| {
            crate::ops::crop::synthetic::write(tmp, b.patterns, b.size, 1)
        })
    } else {
        Ok(())
    };
    crate::comm::agree(comm, made)?;
    let src = vec![1.0f32; (bytes / 4) as usize];
    let mut dst = vec![0.0f32; src.len()];
    let (mut copy, mut crop) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..b.repeat.max(1) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        copy = copy.min(t.elapsed().as_secs_f64());
        let job = CropJob {
            input: Some(input.to_string_lossy().into_owned()),
            output: b.dir.join("crop-output.npy").to_string_lossy().into_owned(),
            target_retention: 0.98,
            min_retention: 0.95,
            margin_pixels: 3,
            percentile: 100.0,
            center: Default::default(),
            manual_center: None,
            recenter: Recenter::Each,
            chunk_size: 1000,
            no_visualization: false,
            strict: false,
            test_mode: false,
            test_patterns: 0,
            test_size: 0,
            seed: 0,
            codec: Default::default(),
            device: b.device,
            gpu_memory_limit: None,
            run: RunOptions {
                overwrite: true,
                ..RunOptions::default()
            },
        };
        comm.barrier();
        let t = Instant::now();
        crate::ops::crop::run(&job, comm)?;
        crop = crop.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    if comm.is_root() {
        println!(
            "bench crop: {} x {}x{} float32 patterns (.npy, page cache warm), whole pipeline incl. results and plot, {} rank(s) x {} rayon threads, best of {}",
            b.patterns, b.size, b.size, comm.size(), rayon::current_num_threads(), b.repeat.max(1)
        );
        println!();
        println!("| input MiB | memcpy s | crop s | crop / memcpy |");
        println!("|---|---|---|---|");
        println!(
            "| {:.0} | {:.3} | {:.3} | {:.1}x |",
            bytes as f64 / 1048576.0,
            copy,
            crop,
            crop / copy
        );
    }
    Ok(())
}

/// `--device cuda`: pass 1's kernel on the bench's patterns, resident (rank 0).
fn kernel_on_the_gpu(b: &CropBench, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    #[cfg(feature = "cuda")]
    {
        let gpu = crate::bench::gpu::open(b.device)?;
        crate::bench::gpu::crop(b.patterns, b.size, b.repeat.max(1), &gpu)?;
        println!();
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    Err(crate::error::Error::without_cuda(format!(
        "bench crop --device {}",
        b.device
    )))
}
