//! quilt's GPU path (feature `cuda`). Stitch: a unit's patches are read by the CPU in batches
//! into two pinned buffers in turn, each sent on the copy stream while the CPU fills the other;
//! the kernel of `stitch.cu` runs on the compute stream once they are there, and its outputs are
//! copied back on that stream. A unit larger than half the rank's device memory share is done
//! in pieces of rows, two in flight: the CPU reads the next piece while the GPU works on the
//! last. Unstitch: one image box per image touched, sent, gathered by `unstitch.cu`, copied
//! back, in parts that fit. Output bits equal the CPU kernels' (`kernel.rs`): the harness checks
//! the kernels' bodies on the CPU; `tests/gpu.rs` checks whole runs on a GPU.

use std::ops::Range;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use super::device::{
    bounding_box, cut_launch, cut_shape, image_segments, scatter_rows, split_rows, stitch_launch,
    stitch_piece_bytes, stitch_shape, RowShape, StitchLaunch,
};
use crate::error::{Error, Result};
use crate::gpu::cuda::{
    block_from_bytes, launch_error, write_block_bytes, CudaSlice, Gpu, HostPhase, LaunchConfig,
    Phase, PinnedHostSlice, PushKernelArg,
};
use crate::gpu::kernels;
use crate::grid::windows::WindowGrid;
use crate::grid::Region;
use crate::io::{ArrayReader, Block, DType};

/// Bytes of one f32/f64 element of the patch type the kernel reads.
fn patch_type(patches: DType, variance: Option<DType>) -> DType {
    if patches == DType::F32 && variance.is_none_or(|v| v == DType::F32) {
        DType::F32
    } else {
        DType::F64
    }
}

/// The first `len` bytes of a pinned buffer in a fresh device buffer (copy stream, async).
fn upload(gpu: &Gpu, pinned: &PinnedHostSlice<u8>, len: usize) -> Result<CudaSlice<u8>> {
    let mut dev = gpu.alloc::<u8>(gpu.copy_stream(), len)?;
    gpu.send(pinned, len, &mut dev)?;
    Ok(dev)
}

/// Reads patches `range` (of the patch array) in batches into `pinned` as `as_type` (f32 or
/// f64, C order, one after the other).
fn read_patches(
    gpu: &Gpu,
    reader: &dyn ArrayReader,
    range: Range<u64>,
    batch: u64,
    as_type: DType,
    pinned: &mut [u8],
    check: impl Fn(&Block, u64) -> Result<()>,
) -> Result<usize> {
    let mut region = Region::whole(&reader.meta().shape);
    let mut at = 0;
    let mut m = range.start;
    while m < range.end {
        let end = (m + batch.max(1)).min(range.end);
        region.start[0] = m;
        region.shape[0] = end - m;
        let block = gpu.host_timed(HostPhase::Read, || reader.read_box(&region))?;
        check(&block, m)?;
        let staging = std::time::Instant::now();
        // Into the pinned buffer directly (f32 as read; every other type as f64, as the CPU
        // path accumulates it).
        let mut put = |src: &[u8]| {
            pinned[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        };
        match (as_type, block) {
            (DType::F32, Block::F32(a)) => match a.as_slice() {
                Some(s) => put(bytemuck::cast_slice(s)),
                None => put(bytemuck::cast_slice(
                    &a.iter().copied().collect::<Vec<f32>>(),
                )),
            },
            (_, b) => {
                let a = b.to_f64();
                match a.as_slice() {
                    Some(s) => put(bytemuck::cast_slice(s)),
                    None => put(bytemuck::cast_slice(
                        &a.iter().copied().collect::<Vec<f64>>(),
                    )),
                }
            }
        }
        gpu.add_host_seconds(HostPhase::Stage, staging.elapsed().as_secs_f64());
        m = end;
    }
    Ok(at)
}

/// Bytes read and sent per batch when streaming patches to the device (two in flight).
const STAGING_BYTES: u64 = 32 << 20;

/// The GPU half of `StitchOp`: the window weights on the device, and what a piece needs.
pub struct StitchGpu {
    gpu: Arc<Gpu>,
    weights: CudaSlice<f64>,
    grid: WindowGrid,
    channels: u64,
    patch_elems: u64,
    /// Patches read per `read_box` (the CPU path's batch).
    batch: u64,
    /// Rows per band of the summation rule (`kernel::Bands`).
    band_rows: u64,
    /// Float64 values the sums hold (checked as patches are read, as on the CPU).
    limits: super::ValueLimits,
}

/// One image's block of rows, stitched: mean (C, rows, ...), weight sums (rows, ...) and std,
/// in the output type; NaN values left out.
pub struct Stitched {
    pub mean: Block,
    pub weights: Option<Block>,
    pub std: Option<Block>,
    pub left_out: u64,
    /// Patch and variance bytes read (as stored): every window overlapping the unit's rows.
    pub bytes_read: u64,
}

/// A piece in flight: its rows, and per output (mean, weight sums, std) the pinned buffer it
/// is being copied into and its length in bytes (0: not asked for).
struct InFlight {
    rows: Range<u64>,
    outs: Vec<(Option<PinnedHostSlice<u8>>, usize)>,
    left_out: CudaSlice<u64>,
    /// Device buffers the piece's work still uses (freed once it is collected).
    _device: Vec<CudaSlice<u8>>,
}

impl StitchGpu {
    /// Uploads the window weights (once per run).
    ///
    /// # Errors
    /// Device memory.
    pub fn new(
        gpu: Arc<Gpu>,
        window_weights: &ArrayD<f64>,
        grid: WindowGrid,
        channels: u64,
        batch: u64,
        band_rows: u64,
        limits: super::ValueLimits,
    ) -> Result<StitchGpu> {
        let w = window_weights.as_standard_layout();
        let weights = gpu.upload(gpu.compute_stream(), w.as_slice().expect("standard layout"))?;
        let patch_elems = channels * grid.window.iter().product::<u64>();
        Ok(StitchGpu {
            gpu,
            weights,
            grid,
            channels,
            patch_elems,
            batch,
            band_rows,
            limits,
        })
    }

    /// Splits `rows` into pieces that fit half the device memory share each (two in flight).
    fn pieces(
        &self,
        rows: Range<u64>,
        sizes: (u64, u64),
        var: bool,
        with_w: bool,
    ) -> Result<Vec<Range<u64>>> {
        let budget = self.gpu.memory_limit() / 2;
        let bytes = |r: &Range<u64>| {
            stitch_piece_bytes(&self.grid, self.channels, r.clone(), sizes, var, with_w)
        };
        split_rows(rows.clone(), |r| bytes(r) <= budget).ok_or_else(|| {
            let one = bytes(&(rows.start..rows.start + 1));
            Error::parameter(
                "gpu-memory-limit",
                format!(
                    "{} is too small: one output row and its patches need {} on the device, two in flight {}",
                    crate::units::human_bytes(self.gpu.memory_limit()),
                    crate::units::human_bytes(one),
                    crate::units::human_bytes(2 * one)
                ),
            )
        })
    }

    /// A piece's outputs (mean, std, weight sums: bytes of `out_dtype`) as blocks of `nrows`
    /// rows: (1, C, rows, ...) and (1, rows, ...).
    fn blocks(
        &self,
        out_dtype: DType,
        nrows: u64,
        (mean, std, wsum): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    ) -> (Block, Option<Block>, Option<Block>) {
        let rest = self.grid.image[1..].iter().map(|&d| d as usize);
        let mut shape = vec![1, self.channels as usize, nrows as usize];
        shape.extend(rest.clone());
        let mut wshape = vec![1, nrows as usize];
        wshape.extend(rest);
        let block = |bytes: Vec<u8>, shape: &[usize]| -> Block {
            match out_dtype {
                DType::F64 => Block::F64(
                    ArrayD::from_shape_vec(IxDyn(shape), bytemuck::pod_collect_to_vec(&bytes))
                        .expect("sizes match"),
                ),
                _ => Block::F32(
                    ArrayD::from_shape_vec(IxDyn(shape), bytemuck::pod_collect_to_vec(&bytes))
                        .expect("sizes match"),
                ),
            }
        };
        (
            block(mean, &shape),
            std.map(|s| block(s, &shape)),
            wsum.map(|w| block(w, &wshape)),
        )
    }

    /// Stitches image `n`'s rows `rows` from `patches` (and `variance`), as
    /// `StitchOp::compute` does on the CPU, into `out_dtype` (f32 or f64).
    ///
    /// # Errors
    /// Reading the patches, device failures.
    pub fn stitch(
        &self,
        patches: &dyn ArrayReader,
        variance: Option<&dyn ArrayReader>,
        n: u64,
        rows: Range<u64>,
        out_dtype: DType,
        with_weights: bool,
    ) -> Result<Stitched> {
        let p_type = patch_type(patches.meta().dtype, variance.map(|v| v.meta().dtype));
        let (p_size, o_size) = (p_type.size() as u64, out_dtype.size() as u64);
        let var = variance.is_some();
        let pieces = self.pieces(rows.clone(), (p_size, o_size), var, with_weights)?;
        let function = match (p_type, out_dtype) {
            (DType::F32, _) => "stitch_f32_f32",
            (_, DType::F64) => "stitch_f64_f64",
            _ => "stitch_f64_f32",
        };
        let kernel = self.gpu.function(&kernels::STITCH, function)?;

        let rest: Vec<u64> = self.grid.image[1..].to_vec();
        let row_elems: u64 = rest.iter().product();
        let nrows = rows.end - rows.start;
        let mut mean = vec![0u8; (self.channels * nrows * row_elems * o_size) as usize];
        let mut std = var.then(|| vec![0u8; mean.len()]);
        let mut wsum = with_weights.then(|| vec![0u8; (nrows * row_elems * o_size) as usize]);
        let mut left_out = 0u64;
        let mut bytes_read = 0u64;
        let stored = patches.meta().dtype.size() as u64
            + variance.map_or(0, |v| v.meta().dtype.size() as u64);
        let per_image = self.grid.per_image();

        let mut collect = |done| {
            self.collect(
                done,
                &rows,
                row_elems,
                o_size,
                &mut mean,
                std.as_deref_mut(),
                wsum.as_deref_mut(),
            )
        };
        // Two pieces in flight: the last one is collected once the next one is launched.
        let mut in_flight: Option<InFlight> = None;
        for piece in &pieces {
            let launch = stitch_launch(
                &self.grid,
                self.channels,
                piece.clone(),
                var,
                self.band_rows,
            );
            let range = n * per_image + launch.patches.start..n * per_image + launch.patches.end;
            bytes_read += (range.end - range.start) * self.patch_elems * stored;
            // Read (CPU) while the previous piece computes, sent batch by batch.
            let dev_p = self.stream_patches(patches, range.clone(), p_type, false)?;
            let dev_v = match variance {
                Some(v) => Some(self.stream_patches(v, range, p_type, true)?),
                None => None,
            };
            let flight = self.launch(
                &launch,
                &kernel,
                dev_p,
                dev_v,
                piece.clone(),
                row_elems,
                o_size,
                with_weights,
            )?;
            if let Some(done) = in_flight.replace(flight) {
                left_out += collect(done)?;
            }
        }
        if let Some(done) = in_flight {
            left_out += collect(done)?;
        }
        self.gpu.settle()?;
        let (mean, std, weights) = self.gpu.host_timed(HostPhase::Unpack, || {
            self.blocks(out_dtype, nrows, (mean, std, wsum))
        });
        Ok(Stitched {
            mean,
            std,
            weights,
            left_out,
            bytes_read,
        })
    }

    /// Patches `range` on the device as `as_type`: read by the CPU in batches of about
    /// [`STAGING_BYTES`] into two pinned buffers in turn, each sent (asynchronously, copy
    /// stream) while the CPU fills the other.
    ///
    /// # Errors
    /// Reading, device memory.
    fn stream_patches(
        &self,
        reader: &dyn ArrayReader,
        range: Range<u64>,
        as_type: DType,
        variances: bool,
    ) -> Result<CudaSlice<u8>> {
        let gpu = &self.gpu;
        let patch = (self.patch_elems * as_type.size() as u64) as usize;
        let count = range.end - range.start;
        let mut dev = gpu.alloc::<u8>(gpu.copy_stream(), count as usize * patch)?;
        let per_batch = (STAGING_BYTES / patch as u64).clamp(1, count.max(1));
        let staging = [
            gpu.pinned(per_batch as usize * patch)?,
            gpu.pinned(per_batch as usize * patch)?,
        ];
        let mut staging = staging.map(Some);
        let mut m = range.start;
        let mut turn = 0;
        while m < range.end {
            let end = (m + per_batch).min(range.end);
            let pin = staging[turn].as_mut().expect("both buffers are held");
            // Waits only for this buffer's own previous send (two batches ago).
            let host = pin.as_mut_slice().map_err(launch_error("pinned buffer"))?;
            let len = read_patches(
                &self.gpu,
                reader,
                m..end,
                self.batch,
                as_type,
                host,
                |b, first| self.limits.check(b, first, variances),
            )?;
            let at = (m - range.start) as usize * patch;
            gpu.send(pin, len, &mut dev.slice_mut(at..at + len))?;
            m = end;
            turn = 1 - turn;
        }
        for pin in staging.into_iter().flatten() {
            gpu.give_back(pin);
        }
        Ok(dev)
    }

    /// Enqueues one piece's kernel and the copy of its outputs back to pinned memory.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        l: &StitchLaunch,
        kernel: &crate::gpu::cuda::CudaFunction,
        dev_p: CudaSlice<u8>,
        dev_v: Option<CudaSlice<u8>>,
        rows: Range<u64>,
        row_elems: u64,
        o_size: u64,
        with_weights: bool,
    ) -> Result<InFlight> {
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let ranges = gpu.upload(s, &l.ranges)?;
        let starts = gpu.upload(s, &l.starts)?;
        let block = (rows.end - rows.start) * row_elems;
        let c = self.channels;
        let var = dev_v.is_some();
        let mean_bytes = (c * block * o_size) as usize;
        let w_bytes = (block * o_size) as usize;
        let mut mean = gpu.alloc::<u8>(s, mean_bytes)?;
        let mut wsum = gpu.alloc::<u8>(s, if with_weights { w_bytes } else { 1 })?;
        let mut std = gpu.alloc::<u8>(s, if var { mean_bytes } else { 1 })?;
        let mut left = gpu.zeros::<u64>(s, 1)?;
        let dev_v = match dev_v {
            Some(v) => v,
            None => gpu.alloc::<u8>(s, 1)?,
        };
        let with_w = i64::from(with_weights);
        gpu.inputs_sent()?;
        gpu.timed(Phase::Kernel, 0, s, || {
            let mut b = s.launch_builder(kernel);
            b.arg(&l.geom)
                .arg(&ranges)
                .arg(&starts)
                .arg(&self.weights)
                .arg(&dev_p)
                .arg(&dev_v)
                .arg(&mut mean)
                .arg(&mut wsum)
                .arg(&mut std)
                .arg(&mut left)
                .arg(&with_w);
            // SAFETY: the arguments match stitch.cu's signature; every buffer holds what the
            // geometry says (sized above), and the kernel writes only inside the block.
            unsafe { b.launch(row_config(stitch_shape(&l.geom))) }
                .map(|_| ())
                .map_err(launch_error("stitch kernel"))
        })?;
        let sizes = [
            mean_bytes,
            if with_weights { w_bytes } else { 0 },
            if var { mean_bytes } else { 0 },
        ];
        let mut outs = Vec::new();
        for (buf, len) in [(&mean, sizes[0]), (&wsum, sizes[1]), (&std, sizes[2])] {
            if len == 0 {
                outs.push((None, 0));
                continue;
            }
            let host = gpu.receive(s, buf, len)?;
            outs.push((Some(host), len));
        }
        Ok(InFlight {
            rows,
            outs,
            left_out: left,
            _device: vec![dev_p, dev_v, mean, wsum, std],
        })
    }

    /// Waits for a piece and copies its outputs into the unit's buffers.
    #[allow(clippy::too_many_arguments)]
    fn collect(
        &self,
        done: InFlight,
        rows: &Range<u64>,
        row_elems: u64,
        o_size: u64,
        mean: &mut [u8],
        std: Option<&mut [u8]>,
        wsum: Option<&mut [u8]>,
    ) -> Result<u64> {
        let s = self.gpu.compute_stream();
        let left = s
            .clone_dtoh(&done.left_out)
            .map_err(launch_error("copy from the device"))?[0];
        let nrows = (rows.end - rows.start) as usize;
        let prow = (done.rows.end - done.rows.start) as usize;
        let row_bytes = (row_elems * o_size) as usize;
        let skip = (done.rows.start - rows.start) as usize;
        let c = self.channels as usize;
        let targets = [(Some(mean), c), (wsum, 1), (std, c)];
        for ((host, len), (target, channels)) in done.outs.into_iter().zip(targets) {
            let (Some(host), Some(dst)) = (host, target) else {
                continue;
            };
            let src = &host.as_slice().map_err(launch_error("pinned buffer"))?[..len];
            self.gpu.host_timed(HostPhase::Unpack, || {
                scatter_rows(src, dst, channels, (prow, nrows, skip), row_bytes)
            });
            self.gpu.give_back(host);
        }
        Ok(left)
    }
}

/// The launch of a gather of rows (unstitch.cu): lanes along x, rows along y.
fn row_config(shape: RowShape) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (shape.blocks, 1, 1),
        block_dim: (shape.lanes, shape.rows, 1),
        shared_mem_bytes: 0,
    }
}

/// The GPU half of `UnstitchOp`: patches cut by a gather on the device.
pub struct UnstitchGpu {
    gpu: Arc<Gpu>,
    grid: WindowGrid,
    channels: u64,
}

impl UnstitchGpu {
    pub fn new(gpu: Arc<Gpu>, grid: WindowGrid, channels: u64) -> UnstitchGpu {
        UnstitchGpu {
            gpu,
            grid,
            channels,
        }
    }

    /// Cuts patches `run` (of the patch array) out of `input`, reading one box per image as
    /// the CPU path does, into a block (M, C, *window) of the input's type. A run whose patches
    /// do not fit half the device memory share is cut in parts.
    ///
    /// # Errors
    /// Reading the input, device failures, a device memory share too small for one patch.
    pub fn cut(&self, input: &dyn ArrayReader, run: Range<u64>) -> Result<Block> {
        let dtype = input.meta().dtype;
        let patch_bytes =
            self.channels * self.grid.window.iter().product::<u64>() * dtype.size() as u64;
        // Half the share for the patches of a part, half for the image box they come from.
        let budget = self.gpu.memory_limit() / 2;
        let per_part = (budget / 2 / patch_bytes.max(1)).max(1);
        let mut bytes = Vec::with_capacity(((run.end - run.start) * patch_bytes) as usize);
        let mut m = run.start;
        while m < run.end {
            let end = (m + per_part).min(run.end);
            bytes.extend(self.cut_part(input, m..end, patch_bytes, budget / 2)?);
            m = end;
        }
        let mut shape = vec![(run.end - run.start) as usize, self.channels as usize];
        shape.extend(self.grid.window.iter().map(|&w| w as usize));
        Ok(block_from_bytes(dtype, &shape, &bytes))
    }

    /// One part of [`UnstitchGpu::cut`]: its patches' bytes.
    fn cut_part(
        &self,
        input: &dyn ArrayReader,
        run: Range<u64>,
        patch_bytes: u64,
        box_budget: u64,
    ) -> Result<Vec<u8>> {
        let size = input.meta().dtype.size() as u64;
        let function = match size {
            1 => "cut_u8",
            2 => "cut_u16",
            4 => "cut_u32",
            _ => "cut_u64",
        };
        let kernel = self.gpu.function(&kernels::UNSTITCH, function)?;
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let total = ((run.end - run.start) * patch_bytes) as usize;
        let mut out = gpu.alloc::<u8>(s, total)?;
        for (n, windows) in image_segments(&self.grid, run.clone()) {
            let (lo, hi) = bounding_box(&self.grid, windows.clone());
            let box_shape: Vec<u64> = lo.iter().zip(&hi).map(|(l, h)| h - l).collect();
            let box_bytes = self.channels * box_shape.iter().product::<u64>() * size;
            if box_bytes > box_budget {
                return Err(Error::parameter(
                    "gpu-memory-limit",
                    format!(
                        "{} is too small: the image box the patches are cut from takes {} on the device",
                        crate::units::human_bytes(gpu.memory_limit()),
                        crate::units::human_bytes(box_bytes)
                    ),
                ));
            }
            let mut start = vec![n, 0];
            start.extend(&lo);
            let mut shape = vec![1, self.channels];
            shape.extend(&box_shape);
            let block =
                gpu.host_timed(HostPhase::Read, || input.read_box(&Region { start, shape }))?;
            let mut pin = gpu.pinned(box_bytes as usize)?;
            let host = pin.as_mut_slice().map_err(launch_error("pinned buffer"))?;
            let len = gpu.host_timed(HostPhase::Stage, || write_block_bytes(&block, host));
            let dev_box = upload(gpu, &pin, len)?;
            gpu.give_back(pin);
            let (geom, starts) =
                cut_launch(&self.grid, self.channels, windows.clone(), &lo, &box_shape);
            let dev_starts = gpu.upload(s, &starts)?;
            let at =
                ((n * self.grid.per_image() + windows.start - run.start) * patch_bytes) as usize;
            let len = ((windows.end - windows.start) * patch_bytes) as usize;
            let mut view = out.slice_mut(at..at + len);
            gpu.inputs_sent()?;
            gpu.timed(Phase::Kernel, 0, s, || {
                let mut b = s.launch_builder(&kernel);
                b.arg(&geom).arg(&dev_starts).arg(&dev_box).arg(&mut view);
                // SAFETY: arguments match unstitch.cu; the box holds every window of the
                // segment (its bounding box) and `view` exactly its patches.
                unsafe { b.launch(row_config(cut_shape(&geom))) }
                    .map(|_| ())
                    .map_err(launch_error("unstitch kernel"))
            })?;
        }
        let host = gpu.receive(s, &out, total)?;
        let pinned = &host.as_slice().map_err(launch_error("pinned buffer"))?[..total];
        let bytes = gpu.host_timed(HostPhase::Unpack, || pinned.to_vec());
        gpu.give_back(host);
        gpu.settle()?;
        Ok(bytes)
    }
}

/// `tessera bench quilt --device cuda`: stitches whole images of resident f32 patches (one
/// launch per image, as one block), returning the kernel seconds (best of `repeats`, CUDA
/// events) and the means (N, C, *image) to compare with the CPU's.
///
/// # Errors
/// Device failures.
pub fn bench_stitch(
    gpu: &Arc<Gpu>,
    grid: &WindowGrid,
    weights: &ArrayD<f64>,
    channels: u64,
    images: u64,
    patches: &[f32],
    repeats: usize,
) -> Result<(f64, Vec<f32>)> {
    let s = gpu.compute_stream();
    let w = weights.as_standard_layout();
    let dev_w = gpu.upload(s, w.as_slice().expect("standard layout"))?;
    let dev_p = gpu.upload(s, patches)?;
    // One band (as high as the image): the summation order of one accumulator over the
    // whole image, which is what the bench's CPU stitch does.
    let l = stitch_launch(grid, channels, 0..grid.image[0], false, grid.image[0]);
    let (ranges, starts) = (gpu.upload(s, &l.ranges)?, gpu.upload(s, &l.starts)?);
    let block = l.geom.block.iter().product::<i64>() as usize;
    let per_image = patches.len() / images as usize;
    let per_out = channels as usize * block;
    let mut mean = gpu.alloc::<f32>(s, images as usize * per_out)?;
    let mut spare = gpu.alloc::<f32>(s, 1)?;
    let mut spare2 = gpu.alloc::<f32>(s, 1)?;
    let mut left = gpu.zeros::<u64>(s, 1)?;
    let kernel = gpu.function(&kernels::STITCH, "stitch_f32_f32")?;
    let no = 0i64;
    let seconds = gpu.kernel_seconds(repeats, || {
        for n in 0..images as usize {
            let p = dev_p.slice(n * per_image..(n + 1) * per_image);
            let mut m = mean.slice_mut(n * per_out..(n + 1) * per_out);
            let mut b = s.launch_builder(&kernel);
            b.arg(&l.geom)
                .arg(&ranges)
                .arg(&starts)
                .arg(&dev_w)
                .arg(&p)
                .arg(&p)
                .arg(&mut m)
                .arg(&mut spare)
                .arg(&mut spare2)
                .arg(&mut left)
                .arg(&no);
            // SAFETY: as in StitchGpu::launch: the buffers match the geometry.
            unsafe { b.launch(row_config(stitch_shape(&l.geom))) }
                .map_err(launch_error("stitch kernel"))?;
        }
        Ok(())
    })?;
    let host = s
        .clone_dtoh(&mean)
        .map_err(launch_error("copy from the device"))?;
    Ok((seconds, host))
}

/// `tessera bench quilt --device cuda`: cuts every window of resident f32 images (one launch
/// per image); kernel seconds and the patches.
///
/// # Errors
/// Device failures.
pub fn bench_unstitch(
    gpu: &Arc<Gpu>,
    grid: &WindowGrid,
    channels: u64,
    images: u64,
    image: &[f32],
    repeats: usize,
) -> Result<(f64, Vec<f32>)> {
    let s = gpu.compute_stream();
    let bits: Vec<u32> = image.iter().map(|x| x.to_bits()).collect();
    let dev_i = gpu.upload(s, &bits)?;
    let per_image = grid.per_image();
    let origin = vec![0; grid.ndim()];
    let (geom, starts) = cut_launch(grid, channels, 0..per_image, &origin, &grid.image);
    let dev_s = gpu.upload(s, &starts)?;
    let image_elems = image.len() / images as usize;
    let patch_elems = (geom.patches * geom.channels * geom.window.iter().product::<i64>()) as usize;
    let mut out = gpu.alloc::<u32>(s, images as usize * patch_elems)?;
    let kernel = gpu.function(&kernels::UNSTITCH, "cut_u32")?;
    let seconds = gpu.kernel_seconds(repeats, || {
        for n in 0..images as usize {
            let src = dev_i.slice(n * image_elems..(n + 1) * image_elems);
            let mut dst = out.slice_mut(n * patch_elems..(n + 1) * patch_elems);
            let mut b = s.launch_builder(&kernel);
            b.arg(&geom).arg(&dev_s).arg(&src).arg(&mut dst);
            // SAFETY: the box is the whole image, which holds every window.
            unsafe { b.launch(row_config(cut_shape(&geom))) }
                .map_err(launch_error("unstitch kernel"))?;
        }
        Ok(())
    })?;
    let host = s
        .clone_dtoh(&out)
        .map_err(launch_error("copy from the device"))?;
    Ok((seconds, host.into_iter().map(f32::from_bits).collect()))
}
