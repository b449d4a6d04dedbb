//! crop's GPU path (feature `cuda`). Pass 1: a run of patterns goes to the device through a
//! pinned buffer (in batches that fit half the rank's device memory share), `crop_analyse_*`
//! makes one record per pattern (one block each), and the records come back; the patterns the
//! kernel marks (a negative pixel, or a crossing bin too full for the block) are analysed by
//! the CPU kernel. Pass 2: `crop_window_*` copies each pattern's window and sums its fixed-point
//! values for the retention. Every sum is exact (kernel.rs' fixed point), so the results are
//! the CPU's bit for bit (the harness checks the kernels' phases on the CPU; `tests/gpu.rs`
//! whole runs on a GPU).

use std::sync::Arc;

use super::device::{analysis_blocks, CropGeom, CropRecord};
use super::kernel::{self, Analysis, CentreMethod};
use crate::error::{Error, Result};
use crate::gpu::cuda::{
    launch_error, type_suffix, CudaSlice, Gpu, HostPhase, LaunchConfig, Phase, PushKernelArg,
};
use crate::gpu::kernels;
use crate::io::Element;

/// Threads per block (crop.cu's TESSERA_CROP_THREADS).
const THREADS: u32 = 256;

/// The GPU half of crop: the device, and how patterns are analysed.
pub struct CropGpu {
    gpu: Arc<Gpu>,
    method: CentreMethod,
    manual: Option<(f64, f64)>,
    target: f64,
}

/// One block per pattern, at most 2^31 - 1 blocks (the kernels stride over the rest).
fn per_pattern(count: usize) -> LaunchConfig {
    blocks(count as u64)
}

/// `n` blocks of the crop kernels' threads.
fn blocks(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.clamp(1, i32::MAX as u64) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The analysis of `count` patterns of `pattern_bytes` on `gpu`: as many in flight as half
/// its L2 holds (device::analysis_blocks).
fn analysis_config(gpu: &Gpu, count: usize, pattern_bytes: usize) -> LaunchConfig {
    blocks(analysis_blocks(
        count as u64,
        pattern_bytes as u64,
        gpu.l2_bytes(),
        gpu.multiprocessors(),
    ))
}

impl CropGpu {
    pub fn new(
        gpu: Arc<Gpu>,
        method: CentreMethod,
        manual: Option<(f64, f64)>,
        target: f64,
    ) -> CropGpu {
        CropGpu {
            gpu,
            method,
            manual,
            target,
        }
    }

    /// Patterns per batch: half the device memory share, in patterns (at least one).
    fn batch(&self, pattern_bytes: usize) -> Result<usize> {
        let budget = (self.gpu.memory_limit() / 2) as usize;
        if pattern_bytes > budget {
            return Err(Error::parameter(
                "gpu-memory-limit",
                format!(
                    "{} is too small: one pattern takes {} on the device",
                    crate::units::human_bytes(self.gpu.memory_limit()),
                    crate::units::human_bytes(pattern_bytes as u64)
                ),
            ));
        }
        Ok((budget / pattern_bytes.max(1)).max(1))
    }

    /// The launch geometry of (h, w) patterns of `T` under this run's method and target.
    fn geom<T: Element>(&self, h: usize, w: usize) -> CropGeom {
        CropGeom::new(
            (h as u64, w as u64),
            self.method,
            self.manual,
            self.target,
            T::DTYPE.is_float(),
        )
    }

    /// Sends patterns (C order) to the device through a pinned buffer.
    fn send<T: Element>(&self, patterns: &[T]) -> Result<CudaSlice<u8>> {
        let bytes: &[u8] = bytemuck::cast_slice(patterns);
        self.gpu
            .stage(bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// Pass 1 of the patterns of `flat` ((h, w) each), in order: kernel.rs' analyses.
    ///
    /// # Errors
    /// Device failures; a device memory share smaller than one pattern.
    pub fn analyse<T: Element>(&self, flat: &[T], (h, w): (usize, usize)) -> Result<Vec<Analysis>> {
        let hw = h * w;
        let geom = self.geom::<T>(h, w);
        let per = self.batch(hw * std::mem::size_of::<T>())?;
        let mut out = Vec::with_capacity(flat.len() / hw.max(1));
        for batch in flat.chunks(per * hw) {
            let records = self.records(&geom, batch, hw)?;
            for (rec, p) in records.iter().zip(batch.chunks_exact(hw)) {
                out.push(if rec.on_cpu() {
                    kernel::analyse(p, w, self.method, self.manual, self.target, None)
                } else {
                    rec.analysis()
                });
            }
        }
        Ok(out)
    }

    /// The kernel's records of one batch.
    fn records<T: Element>(
        &self,
        geom: &CropGeom,
        batch: &[T],
        hw: usize,
    ) -> Result<Vec<CropRecord>> {
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let count = batch.len() / hw.max(1);
        let patterns = self.send(batch)?;
        let mut records = gpu.alloc::<CropRecord>(s, count)?;
        let kernel = gpu.function(
            &kernels::CROP,
            &format!("crop_analyse_{}", type_suffix(T::DTYPE)),
        )?;
        let n = count as i64;
        gpu.timed(Phase::Kernel, 0, s, || {
            let mut b = s.launch_builder(&kernel);
            b.arg(geom).arg(&patterns).arg(&mut records).arg(&n);
            // SAFETY: the arguments match crop.cu's crop_analyse_*; `patterns` holds `count`
            // patterns of geom.h x geom.w and `records` one record each.
            unsafe { b.launch(analysis_config(gpu, count, hw * size_of::<T>())) }
                .map(|_| ())
                .map_err(launch_error("crop analysis kernel"))
        })?;
        let mut host = vec![CropRecord::default(); count];
        gpu.timed(
            Phase::DeviceToHost,
            (count * std::mem::size_of::<CropRecord>()) as u64,
            s,
            || {
                s.memcpy_dtoh(&records, &mut host)
                    .map_err(launch_error("copy from the device"))
            },
        )?;
        gpu.settle()?;
        Ok(host)
    }

    /// Pass 2 of the patterns of `flat` ((h, w) each): each one's window of `side` at its
    /// start into `out` (side_h x side_w per pattern), and its retention sum (fixed point of
    /// its `scale`), in order.
    ///
    /// # Errors
    /// Device failures.
    pub fn crop<T: Element>(
        &self,
        flat: &[T],
        (h, w): (usize, usize),
        (side_h, side_w): (usize, usize),
        starts: &[(u64, u64)],
        scales: &[i32],
        out: &mut [T],
    ) -> Result<Vec<f64>> {
        let (hw, side) = (h * w, side_h * side_w);
        let geom = self.geom::<T>(h, w);
        let per = self.batch((hw + side) * std::mem::size_of::<T>())?;
        let mut kept = Vec::with_capacity(starts.len());
        for (b, batch) in flat.chunks(per * hw).enumerate() {
            let first = b * per;
            let count = batch.len() / hw.max(1);
            let dst = &mut out[first * side..(first + count) * side];
            kept.extend(self.crop_batch(
                &geom,
                batch,
                (side_h, side_w),
                &starts[first..first + count],
                &scales[first..first + count],
                dst,
            )?);
        }
        Ok(kept)
    }

    fn crop_batch<T: Element>(
        &self,
        geom: &CropGeom,
        batch: &[T],
        (side_h, side_w): (usize, usize),
        starts: &[(u64, u64)],
        scales: &[i32],
        dst: &mut [T],
    ) -> Result<Vec<f64>> {
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let count = starts.len();
        let patterns = self.send(batch)?;
        let flat_starts: Vec<i64> = starts
            .iter()
            .flat_map(|&(y, x)| [y as i64, x as i64])
            .collect();
        let dev_starts = gpu.upload(s, &flat_starts)?;
        let dev_scales = gpu.upload(s, scales)?;
        let mut windows = gpu.alloc::<u8>(s, std::mem::size_of_val(dst))?;
        let mut kept = gpu.alloc::<f64>(s, count)?;
        let kernel = gpu.function(
            &kernels::CROP,
            &format!("crop_window_{}", type_suffix(T::DTYPE)),
        )?;
        let (sh, sw, n) = (side_h as i64, side_w as i64, count as i64);
        gpu.timed(Phase::Kernel, 0, s, || {
            let mut b = s.launch_builder(&kernel);
            b.arg(geom)
                .arg(&sh)
                .arg(&sw)
                .arg(&patterns)
                .arg(&dev_starts)
                .arg(&dev_scales)
                .arg(&mut windows)
                .arg(&mut kept)
                .arg(&n);
            // SAFETY: the arguments match crop.cu's crop_window_*; every window lies inside
            // its pattern (kernel::window), `windows` holds count x side_h x side_w values.
            unsafe { b.launch(per_pattern(count)) }
                .map(|_| ())
                .map_err(launch_error("crop window kernel"))
        })?;
        let bytes = std::mem::size_of_val(dst);
        let host = gpu.receive(s, &windows, bytes)?;
        let mut sums = vec![0.0f64; count];
        s.memcpy_dtoh(&kept, &mut sums)
            .map_err(launch_error("copy from the device"))?;
        gpu.settle()?;
        let dst_bytes: &mut [u8] = bytemuck::cast_slice_mut(dst);
        let src = &host.as_slice().map_err(launch_error("pinned buffer"))?[..bytes];
        gpu.host_timed(HostPhase::Unpack, || dst_bytes.copy_from_slice(src));
        gpu.give_back(host);
        Ok(sums)
    }
}

/// `tessera bench crop --device cuda`: pass 1's kernel on resident f32 patterns (h, w): the
/// device seconds (CUDA events, best of `repeat`) and whether every record the kernel keeps on
/// the device equals the CPU's analysis bit for bit (and how many it sent to the CPU).
///
/// # Errors
/// Device failures.
pub fn bench_analyse(
    gpu: &Arc<Gpu>,
    flat: &[f32],
    (h, w): (usize, usize),
    target: f64,
    repeat: usize,
) -> Result<(f64, bool, usize)> {
    let c = CropGpu::new(gpu.clone(), CentreMethod::Centroid, None, target);
    let geom = CropGeom::new((h as u64, w as u64), c.method, None, target, true);
    let count = flat.len() / (h * w).max(1);
    let s = gpu.compute_stream();
    let patterns = c.send(flat)?;
    let mut records = gpu.alloc::<CropRecord>(s, count)?;
    let kernel = gpu.function(&kernels::CROP, "crop_analyse_f32")?;
    let n = count as i64;
    let seconds = gpu.kernel_seconds(repeat, || {
        let mut b = s.launch_builder(&kernel);
        b.arg(&geom).arg(&patterns).arg(&mut records).arg(&n);
        // SAFETY: as in CropGpu::records.
        unsafe { b.launch(analysis_config(gpu, count, h * w * 4)) }
            .map(|_| ())
            .map_err(launch_error("crop analysis kernel"))
    })?;
    let mut host = vec![CropRecord::default(); count];
    s.memcpy_dtoh(&records, &mut host)
        .map_err(launch_error("copy from the device"))?;
    gpu.settle()?;
    let on_cpu = host.iter().filter(|r| r.on_cpu()).count();
    let same = host
        .iter()
        .zip(flat.chunks_exact(h * w))
        .filter(|(r, _)| !r.on_cpu())
        .all(|(r, p)| {
            let want = kernel::analyse(p, w, CentreMethod::Centroid, None, target, None);
            let got = r.analysis();
            got.kind == want.kind
                && got.radius.to_bits() == want.radius.to_bits()
                && got.centre.0.to_bits() == want.centre.0.to_bits()
                && got.centre.1.to_bits() == want.centre.1.to_bits()
                && got.total_q.to_bits() == want.total_q.to_bits()
        });
    Ok((seconds, same, on_cpu))
}
