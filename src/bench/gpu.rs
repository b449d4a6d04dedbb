//! `tessera bench quilt|hdr|pyramid|crop --device cuda`: each GPU kernel on data already on the device, as
//! a fraction of a device-to-device copy of the kernel's input bytes measured in the same run
//! (a copy reads and writes them once; both timed with CUDA events, best of the repeats), and
//! whether the GPU's output has the CPU kernel's bits. End-to-end runs (disk, PCIe, kernels)
//! are `scripts/gpu-check.sh`'s.

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::gpu::cuda::Gpu;
use crate::ops::crop::cuda::bench_analyse;
use crate::ops::hdr::{self, debevec::WeightType};
use crate::ops::pyramid::{cuda::bench_levels, kernel::Method};
use crate::ops::quilt::cuda::{bench_stitch, bench_unstitch};

/// Opens the GPU a bench asked for.
///
/// # Errors
/// No usable GPU.
pub fn open(choice: crate::gpu::DeviceChoice) -> Result<Arc<Gpu>> {
    let ordinal = match choice {
        crate::gpu::DeviceChoice::Cuda(n) => n,
        _ => None,
    };
    Gpu::open(ordinal, 0, 1, None)
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn row(name: &str, bytes: u64, copy: f64, kernel: f64, same: bool) {
    println!(
        "| {name} | {:.1} | {:.3} | {:.3} | {:.2} | {:.0} | {} |",
        bytes as f64 / 1048576.0,
        copy * 1e3,
        kernel * 1e3,
        copy / kernel,
        bytes as f64 / kernel / 1e9,
        if same { "yes" } else { "NO" }
    );
}

/// [`row`], then an error when the GPU's bits are not the CPU's.
fn checked_row(name: &str, bytes: u64, copy: f64, kernel: f64, same: bool) -> Result<()> {
    row(name, bytes, copy, kernel, same);
    if same {
        Ok(())
    } else {
        Err(Error::gpu(format!(
            "GPU output differs from the CPU's: {name}"
        )))
    }
}

fn header(what: &str, gpu: &Gpu, repeat: usize) {
    let r = gpu.report_template();
    println!(
        "bench {what} on {} ({}, compute {}): kernels on resident data, best of {repeat}; fraction = device copy of the input bytes / kernel",
        r.device, r.name, r.compute_capability
    );
    println!();
    println!("| kernel | input MiB | d2d copy ms | kernel ms | fraction of copy | input GB/s | bits = CPU |");
    println!("|---|---|---|---|---|---|---|");
}

/// The quilt kernels on the bench's cases.
///
/// # Errors
/// Device failures; a GPU result that differs from the CPU's.
pub fn quilt(
    cases: &[crate::bench::quilt::QuiltCase],
    repeat: usize,
    gpu: &Arc<Gpu>,
) -> Result<()> {
    header("quilt", gpu, repeat);
    let mut differ = Vec::new();
    for case in cases {
        let image = case.image();
        let grid = case.grid();
        let weights = case.weights();
        let (n, c) = (case.shape[0] as u64, case.shape[1] as u64);
        let mut patches = ArrayD::<f32>::zeros(IxDyn(&case.patch_shape()));
        crate::bench::quilt::unstitch_into(&image, &grid, &mut patches);
        let mut acc = crate::bench::quilt::accumulator(case);
        let mut cpu_mean = ArrayD::<f32>::zeros(IxDyn(&case.shape));
        crate::bench::quilt::stitch_into(&patches, case, &weights, &mut acc, &mut cpu_mean);
        let patch_bytes = (patches.len() * 4) as u64;
        let image_bytes = (image.len() * 4) as u64;
        let image_s = image.as_standard_layout();
        let (cut_s, cut) = bench_unstitch(
            gpu,
            &grid,
            c,
            n,
            image_s.as_slice().expect("standard layout"),
            repeat,
        )?;
        let p = patches.as_slice().expect("standard layout");
        let (stitch_s, mean) = bench_stitch(gpu, &grid, &weights, c, n, p, repeat)?;
        let name = format!("{} w{} s{}", case.name, case.window, case.step);
        let cut_same = same_bits(&cut, p);
        let mean_same = same_bits(&mean, cpu_mean.as_slice().expect("standard layout"));
        // Unstitch reads the image and writes the patches: the yardstick copies the patch bytes
        // (what it writes); stitch reads the patches.
        row(
            &format!("unstitch {name}"),
            image_bytes.max(patch_bytes),
            gpu.copy_seconds(patch_bytes as usize, repeat)?,
            cut_s,
            cut_same,
        );
        row(
            &format!("stitch {name}"),
            patch_bytes,
            gpu.copy_seconds(patch_bytes as usize, repeat)?,
            stitch_s,
            mean_same,
        );
        if !cut_same {
            differ.push(format!("unstitch {name}"));
        }
        if !mean_same {
            differ.push(format!("stitch {name}"));
        }
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::gpu(format!(
            "GPU output differs from the CPU's: {}",
            differ.join(", ")
        )))
    }
}

/// The Debevec kernel on the bench's bracket.
///
/// # Errors
/// Device failures; a GPU result that differs from the CPU's.
pub fn hdr(size: usize, exposures: usize, repeat: usize, gpu: &Arc<Gpu>) -> Result<()> {
    header("hdr", gpu, repeat);
    let (images, ln_t) = hdr::synthetic_bracket(size, size, exposures, 1);
    let g: Vec<f64> = (0..256)
        .map(|z| ((f64::from(z).max(0.5) / 255.0).powf(2.2) / 8.0).ln())
        .collect();
    let g = vec![g.clone(), g.clone(), g];
    let cpu = hdr::merge_debevec(&images, &ln_t, &g, WeightType::Triangle);
    let (seconds, out) =
        hdr::cuda::bench_debevec(gpu, &images, &ln_t, &g, WeightType::Triangle, repeat)?;
    let bytes = (exposures * size * size * 3) as u64;
    let same = same_bits(&out, &cpu.data);
    row(
        &format!("debevec {exposures} x {size}^2 x 3 u8"),
        bytes,
        gpu.copy_seconds(bytes as usize, repeat)?,
        seconds,
        same,
    );
    if same {
        Ok(())
    } else {
        Err(Error::gpu("GPU Debevec radiance differs from the CPU's"))
    }
}

/// Every level of a size^3 f32 volume (seeded random values) built on the device, as a
/// fraction of a device copy of the base level's bytes.
///
/// # Errors
/// Device failures; a GPU result that differs from the CPU's.
pub fn pyramid(
    size: u64,
    method: Method,
    levels: usize,
    repeat: usize,
    gpu: &Arc<Gpu>,
) -> Result<()> {
    header("pyramid", gpu, repeat);
    let n = size as usize;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let volume = ArrayD::from_shape_simple_fn(IxDyn(&[n, n, n]), || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    });
    let base = (volume.len() * 4) as u64;
    let (kernel_s, same) = bench_levels(gpu, &volume, method, levels, repeat)?;
    let name = format!("{method:?} {size}^3, {levels} levels").to_lowercase();
    checked_row(
        &name,
        base,
        gpu.copy_seconds(base as usize, repeat)?,
        kernel_s,
        same,
    )
}

/// Crop's pass 1 on `count` synthetic size x size f32 Airy patterns (seed 1), as a fraction of
/// a device copy of the pattern bytes.
///
/// # Errors
/// Device failures; a GPU record that differs from the CPU's.
pub fn crop(count: u64, size: u64, repeat: usize, gpu: &Arc<Gpu>) -> Result<()> {
    header("crop", gpu, repeat);
    let patterns = crate::ops::crop::synthetic::patterns(count, size, 1);
    let flat = patterns.as_slice().expect("standard layout");
    let bytes = std::mem::size_of_val(flat) as u64;
    let n = size as usize;
    let (kernel_s, same, on_cpu) = bench_analyse(gpu, flat, (n, n), 0.98, repeat)?;
    let name = format!("crop pass 1, {count} x {size}^2 f32 ({on_cpu} sent to the CPU)");
    checked_row(
        &name,
        bytes,
        gpu.copy_seconds(bytes as usize, repeat)?,
        kernel_s,
        same,
    )
}
