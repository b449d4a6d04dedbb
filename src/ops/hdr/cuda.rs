//! The Debevec merge on the GPU (feature `cuda`): exposures are decoded by the CPU (image
//! files), gathered band by band into pinned memory as (exposure, channel, pixel) planes, sent
//! on the copy stream, merged by `debevec.cu` on the compute stream and copied back; two bands
//! are in flight, so the CPU gathers the next while the GPU merges one. The per-exposure tables
//! are the CPU's (`debevec::merge_tables`), so the bits are the CPU kernel's.

use std::sync::Arc;

use super::debevec::{self, WeightType};
use super::{Image, Merged};
use crate::error::{Error, Result};
use crate::gpu::cuda::{
    launch_error, sys, CudaFunction, CudaSlice, CudaStream, DeviceRepr, Gpu, HostPhase,
    LaunchConfig, Phase, PinnedHostSlice, PushKernelArg,
};
use crate::gpu::kernels;

use super::debevec::MergeGeom;

// SAFETY: a plain #[repr(C)] struct of i64s, passed by value as a kernel argument.
unsafe impl DeviceRepr for MergeGeom {}

/// The merge's tables as the kernel reads them: (w, v) per channel, exposure and value, and
/// the fallbacks (shortest, longest exposure) per channel.
pub fn tables(ln_t: &[f64], g: &[Vec<f64>], kind: WeightType) -> (Vec<f32>, Vec<f32>) {
    let mut tables = Vec::new();
    let mut fallback = Vec::new();
    for gk in g {
        for t in debevec::merge_tables(gk, ln_t, kind) {
            tables.extend(t.iter().flat_map(|&(w, v)| [w, v]));
        }
        fallback.extend(debevec::single_exposure(gk, ln_t[0]));
        fallback.extend(debevec::single_exposure(gk, ln_t[ln_t.len() - 1]));
    }
    (tables, fallback)
}

/// Pixels merged by one thread (TESSERA_DEBEVEC_RUN in debevec.cuh).
const RUN: u64 = 4;
/// Threads per block of the merge.
const THREADS: u32 = 256;
/// Shared memory every CUDA device gives a block without opting in.
const DEFAULT_SHARED: u64 = 48 << 10;

/// The merge's launch: blocks, and the table floats copied into shared memory (0: the tables
/// are read where they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeLaunch {
    pub blocks: u32,
    pub shared_floats: u64,
}

/// The launch for `pixels` pixels of `channels` x `exposures` tables, on a device with
/// `multiprocessors` SMs that lets a block have `shared_limit` bytes of shared memory. Tables
/// that fit are copied into shared memory by each block, so the blocks are then few (4 per
/// SM, striding over the pixels) for that copy to be small beside the pixels' bytes.
pub fn merge_launch(
    pixels: u64,
    channels: u64,
    exposures: u64,
    multiprocessors: u64,
    shared_limit: u64,
) -> MergeLaunch {
    let floats = channels * exposures * 256 * 2;
    let needed = pixels.div_ceil(RUN).div_ceil(u64::from(THREADS)).max(1);
    if floats * 4 <= shared_limit {
        MergeLaunch {
            blocks: needed.min(4 * multiprocessors.max(1)) as u32,
            shared_floats: floats,
        }
    } else {
        MergeLaunch {
            blocks: needed.min(1 << 20) as u32,
            shared_floats: 0,
        }
    }
}

impl MergeLaunch {
    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (self.shared_floats * 4) as u32,
        }
    }
}

/// The launch of `kernel` for a merge on `gpu`; asks the driver for more than the default
/// shared memory where the tables need it and the device allows it (else the tables stay in
/// global memory: the same results).
fn prepared_launch(gpu: &Gpu, kernel: &CudaFunction, geom: &MergeGeom) -> MergeLaunch {
    let needed = (geom.channels * geom.exposures) as u64 * 256 * 2 * 4;
    let mut limit = DEFAULT_SHARED;
    if needed > DEFAULT_SHARED && needed <= gpu.shared_per_block_optin() {
        let attribute = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        if kernel.set_attribute(attribute, needed as i32).is_ok() {
            limit = needed;
        }
    }
    merge_launch(
        geom.pixels as u64,
        geom.channels as u64,
        geom.exposures as u64,
        gpu.multiprocessors(),
        limit,
    )
}

/// Pixels per band: what two bands in flight fit in the device share (`per_pixel` bytes each),
/// but at most a quarter of the image (so that sending one band overlaps merging another),
/// at least 1 Mi pixels (launches worth their overhead), a multiple of 4 (whole words).
pub fn band_pixels(pixels: u64, per_pixel: u64, memory: u64) -> u64 {
    let fits = (memory / 2) / per_pixel.max(1);
    let quarter = pixels.div_ceil(4).max(1 << 20);
    let band = fits.min(quarter).min(pixels);
    if band >= 4 && band < pixels {
        band / 4 * 4
    } else {
        band
    }
}

/// A band in flight: its pixels, the pinned buffer its radiance comes back into, its count.
struct Band {
    pixels: std::ops::Range<usize>,
    out: PinnedHostSlice<u8>,
    unusable: CudaSlice<u64>,
    _device: Vec<CudaSlice<u8>>,
}

/// The GPU Debevec merge of one rank.
pub struct DebevecGpu {
    gpu: Arc<Gpu>,
}

impl DebevecGpu {
    pub fn new(gpu: Arc<Gpu>) -> DebevecGpu {
        DebevecGpu { gpu }
    }

    /// `super::merge_debevec` on the GPU: the same `Merged`, bit for bit.
    ///
    /// # Errors
    /// Device failures, or a device memory share too small for one row.
    pub fn merge(
        &self,
        images: &[Image],
        ln_t: &[f64],
        g: &[Vec<f64>],
        kind: WeightType,
    ) -> Result<Merged> {
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let (c, h, w) = (images[0].channels, images[0].height, images[0].width);
        let e = images.len();
        let n = h * w;
        let (tables, fallback) = tables(ln_t, g, kind);
        let dev_tables = gpu.upload(s, &tables)?;
        let dev_fallback = gpu.upload(s, &fallback)?;
        let kernel = gpu.function(&kernels::DEBEVEC, "debevec_merge")?;
        // Per pixel: e * c bytes in, 4 c bytes out; two bands in flight.
        let per_pixel = (e * c + 4 * c) as u64;
        let band = band_pixels(n as u64, per_pixel, gpu.memory_limit()) as usize;
        if band < w.min(n) {
            return Err(Error::parameter(
                "gpu-memory-limit",
                format!(
                    "{} is too small to merge one row of {w} pixels x {e} exposures",
                    crate::units::human_bytes(gpu.memory_limit())
                ),
            ));
        }
        let mut data = vec![0.0f32; n * c];
        let mut unusable = 0;
        let mut in_flight: Option<Band> = None;
        let mut i0 = 0;
        while i0 < n {
            let i1 = (i0 + band).min(n);
            let m = i1 - i0;
            // Gather (exposure, channel, pixel) planes of the band into pinned memory.
            let mut pin = gpu.pinned(e * c * m)?;
            let dst = pin.as_mut_slice().map_err(launch_error("pinned buffer"))?;
            gpu.host_timed(HostPhase::Stage, || {
                for (j, img) in images.iter().enumerate() {
                    for k in 0..c {
                        let at = (j * c + k) * m;
                        dst[at..at + m].copy_from_slice(&img.plane_u8(k)[i0..i1]);
                    }
                }
            });
            let mut planes = gpu.alloc::<u8>(gpu.copy_stream(), e * c * m)?;
            gpu.send(&pin, e * c * m, &mut planes)?;
            gpu.give_back(pin);
            let mut out = gpu.alloc::<u8>(s, 4 * c * m)?;
            let mut count = gpu.zeros::<u64>(s, 1)?;
            let geom = MergeGeom::of(m, c, e);
            let launch = prepared_launch(gpu, &kernel, &geom);
            let tables = (&dev_tables, &dev_fallback);
            gpu.inputs_sent()?;
            gpu.timed(Phase::Kernel, 0, s, || {
                launch_merge(
                    s, &kernel, &geom, launch, &planes, tables, &mut out, &mut count,
                )
            })?;
            let host = gpu.receive(s, &out, 4 * c * m)?;
            let next = Band {
                pixels: i0..i1,
                out: host,
                unusable: count,
                _device: vec![planes, out],
            };
            if let Some(done) = in_flight.replace(next) {
                unusable += self.collect(done, c, &mut data)?;
            }
            i0 = i1;
        }
        if let Some(done) = in_flight.take() {
            unusable += self.collect(done, c, &mut data)?;
        }
        gpu.settle()?;
        Ok(Merged {
            height: h,
            width: w,
            channels: c,
            data,
            unusable,
        })
    }

    /// Waits for a band and copies its radiance into place.
    fn collect(&self, done: Band, c: usize, data: &mut [f32]) -> Result<u64> {
        let s = self.gpu.compute_stream();
        let count = s
            .clone_dtoh(&done.unusable)
            .map_err(launch_error("copy from the device"))?[0];
        let m = done.pixels.end - done.pixels.start;
        let bytes = &done.out.as_slice().map_err(launch_error("pinned buffer"))?[..4 * c * m];
        let dst = &mut data[done.pixels.start * c..done.pixels.end * c];
        self.gpu.host_timed(HostPhase::Unpack, || {
            dst.copy_from_slice(&bytemuck::pod_collect_to_vec::<u8, f32>(bytes))
        });
        self.gpu.give_back(done.out);
        Ok(count)
    }
}

/// Launches `debevec_merge` on `s` for `geom`: `planes` (exposure, channel, pixel) u8 values,
/// the `(tables, fallbacks)` of [`tables`], the radiance into `out` (4 bytes per pixel and
/// channel, as bytes or floats) and the unusable values counted into `count`.
///
/// # Errors
/// Buffers smaller than `geom` needs (a bug); a failed launch.
#[allow(clippy::too_many_arguments)]
fn launch_merge<O: DeviceRepr>(
    s: &Arc<CudaStream>,
    kernel: &CudaFunction,
    geom: &MergeGeom,
    launch: MergeLaunch,
    planes: &CudaSlice<u8>,
    (tables, fallback): (&CudaSlice<f32>, &CudaSlice<f32>),
    out: &mut CudaSlice<O>,
    count: &mut CudaSlice<u64>,
) -> Result<()> {
    let (m, c, e) = (
        geom.pixels as usize,
        geom.channels as usize,
        geom.exposures as usize,
    );
    let fits = [
        planes.len() >= e * c * m,
        tables.len() >= c * e * 256 * 2,
        fallback.len() >= c * 2 * 256,
        out.len() * std::mem::size_of::<O>() >= 4 * c * m,
        !count.is_empty(),
    ];
    if fits.contains(&false) {
        return Err(Error::gpu(format!(
            "Debevec kernel: buffers too small for {m} pixels of {c} channel(s) x {e} exposures"
        )));
    }
    let shared = launch.shared_floats as i64;
    let mut b = s.launch_builder(kernel);
    b.arg(geom)
        .arg(planes)
        .arg(tables)
        .arg(fallback)
        .arg(out)
        .arg(count)
        .arg(&shared);
    // SAFETY: arguments match debevec.cu, at least as large as it reads and writes them
    // (checked above): planes e x c x m values, the tables c x e x 256 pairs (shared_floats
    // of them fit the block's shared memory: prepared_launch), the fallbacks c x 2 x 256, out
    // m x c floats.
    unsafe { b.launch(launch.config()) }
        .map(|_| ())
        .map_err(launch_error("Debevec kernel"))
}

/// `tessera bench hdr --device cuda`: the Debevec kernel on a resident bracket (planes
/// (exposure, channel, pixel)); kernel seconds (best of `repeats`) and the radiance.
///
/// # Errors
/// Device failures.
pub fn bench_debevec(
    gpu: &Arc<Gpu>,
    images: &[Image],
    ln_t: &[f64],
    g: &[Vec<f64>],
    kind: WeightType,
    repeats: usize,
) -> Result<(f64, Vec<f32>)> {
    let s = gpu.compute_stream();
    let (c, n, e) = (
        images[0].channels,
        images[0].height * images[0].width,
        images.len(),
    );
    let mut planes = Vec::with_capacity(e * c * n);
    for img in images {
        for k in 0..c {
            planes.extend_from_slice(img.plane_u8(k));
        }
    }
    let dev_planes = gpu.upload(s, &planes)?;
    let (tables, fallback) = tables(ln_t, g, kind);
    let dev_tables = gpu.upload(s, &tables)?;
    let dev_fallback = gpu.upload(s, &fallback)?;
    let mut out = gpu.alloc::<f32>(s, n * c)?;
    let mut count = gpu.zeros::<u64>(s, 1)?;
    let kernel = gpu.function(&kernels::DEBEVEC, "debevec_merge")?;
    let geom = MergeGeom::of(n, c, e);
    let launch = prepared_launch(gpu, &kernel, &geom);
    let tables = (&dev_tables, &dev_fallback);
    let seconds = gpu.kernel_seconds(repeats, || {
        launch_merge(
            s,
            &kernel,
            &geom,
            launch,
            &dev_planes,
            tables,
            &mut out,
            &mut count,
        )
    })?;
    let host = s
        .clone_dtoh(&out)
        .map_err(launch_error("copy from the device"))?;
    Ok((seconds, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_go_to_shared_memory_when_they_fit() {
        // 3 channels x 7 exposures: 42 KiB of tables, within 48 KiB; 4 blocks per SM.
        let l = merge_launch(64 << 20, 3, 7, 132, DEFAULT_SHARED);
        assert_eq!(
            l,
            MergeLaunch {
                blocks: 528,
                shared_floats: 3 * 7 * 512
            }
        );
        // 3 x 15 (90 KiB) without opting in: global tables, a block per 1024 pixels.
        let l = merge_launch(1 << 20, 3, 15, 132, DEFAULT_SHARED);
        assert_eq!(
            l,
            MergeLaunch {
                blocks: 1024,
                shared_floats: 0
            }
        );
        // A tiny image: one block.
        assert_eq!(merge_launch(3, 1, 2, 132, DEFAULT_SHARED).blocks, 1);
    }

    #[test]
    fn bands_overlap_and_hold_whole_words() {
        // Plenty of memory: a quarter of a 64 Mi-pixel image per band.
        assert_eq!(band_pixels(64 << 20, 60, 1 << 36), 16 << 20);
        // Small images are one band.
        assert_eq!(band_pixels(1000, 60, 1 << 36), 1000);
        // Memory-bound: what fits, rounded down to whole words.
        assert_eq!(band_pixels(64 << 20, 60, 2 * 60 * 1_000_003), 1_000_000);
    }

    #[test]
    fn tables_are_laid_out_channel_exposure_value() {
        let g = vec![
            (0..256).map(|z| z as f64 / 64.0 - 2.0).collect::<Vec<_>>(),
            (0..256).map(|z| z as f64 / 32.0 - 4.0).collect::<Vec<_>>(),
        ];
        let ln_t = [-2.0, 0.5];
        let (t, f) = tables(&ln_t, &g, WeightType::Triangle);
        assert_eq!(t.len(), 2 * 2 * 256 * 2);
        assert_eq!(f.len(), 2 * 2 * 256);
        let cpu = debevec::merge_tables(&g[1], &ln_t, WeightType::Triangle);
        // Channel 1, exposure 1, value 100: (w, v).
        let at = ((2 + 1) * 256 + 100) * 2;
        assert_eq!((t[at], t[at + 1]), cpu[1][100]);
        // Channel 1's fallback for the longest exposure, value 7.
        assert_eq!(f[(2 + 1) * 256 + 7], (g[1][7] - 0.5) as f32);
    }
}
