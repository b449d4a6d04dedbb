//! pyramid's GPU path (feature `cuda`): a unit's source block goes to the device once, through
//! a pinned buffer; each level 1..k is reduced there from the level before it, which stays on
//! the device, and each is copied back once. The Laplacian's Gaussian levels, upsampling and
//! difference maps are all made on the device from the one f32 upload of its source. The
//! kernels (`reduce.cu`) do kernel.rs' operations in kernel.rs' order, so every level and
//! difference map is the CPU's bit for bit (the harness checks the bodies on the CPU;
//! `tests/gpu.rs` checks whole runs on a GPU).

use std::ops::Range;
use std::sync::Arc;

use super::device::{diff_geom, gaussian_passes, upsample_passes, AxisPass, ReduceGeom};
use super::kernel::Method;
use super::{
    check_laplacian_range, extents, laplacian_source, push_level0, ranges_of, take_block, Levels,
    Stage, UnitPlan,
};
use crate::error::{Error, Result};
use crate::gpu::cuda::{
    block_from_bytes, launch_config, launch_error, type_suffix, write_block_bytes, CudaFunction,
    CudaSlice, DeviceRepr, Gpu, HostPhase, LaunchArgs, Phase, PushKernelArg,
};
use crate::gpu::kernels;
use crate::grid::Region;
use crate::io::{Block, DType, Element};

/// The GPU half of `PyramidOp`.
pub struct PyramidGpu {
    gpu: Arc<Gpu>,
}

/// A level's computed box on the device (`needed[j]`), as bytes of its type.
struct Level {
    data: CudaSlice<u8>,
    dtype: DType,
}

/// One output of a unit being copied back: where it goes and the box it was computed over.
struct Fetch {
    target: usize,
    dtype: DType,
    computed: Vec<Range<u64>>,
    block: Vec<Range<u64>>,
    data: CudaSlice<u8>,
}

fn voxels(b: &[Range<u64>]) -> u64 {
    b.iter().map(|r| r.end - r.start).product()
}

/// Device bytes a unit needs at most: every level's computed box (the Laplacian keeps them all
/// for its differences; the others keep two) in the largest of its type and f32, and three f64
/// boxes of the source's size for the Gaussian passes and the upsampling.
pub(super) fn unit_device_bytes(dtype: DType, u: &UnitPlan) -> u64 {
    let size = dtype.size().max(4) as u64;
    let levels: u64 = u.needed.iter().map(|b| voxels(b) * size).sum();
    levels + 3 * 8 * voxels(&u.needed[0])
}

impl PyramidGpu {
    pub fn new(gpu: Arc<Gpu>) -> PyramidGpu {
        PyramidGpu { gpu }
    }

    /// Device memory this rank may use.
    pub fn memory_limit(&self) -> u64 {
        self.gpu.memory_limit()
    }

    /// One unit's outputs from its source block, as `PyramidOp::build` makes them on the CPU.
    ///
    /// # Errors
    /// Device failures (memory, a failed launch or copy).
    /// Counts `seconds` of reading a unit's source as the GPU path's read phase.
    pub(super) fn note_read(&self, seconds: f64) {
        self.gpu.add_host_seconds(HostPhase::Read, seconds);
    }

    pub(super) fn build(
        &self,
        p: Levels<'_>,
        source: Block,
        st: &Stage,
        u: &UnitPlan,
    ) -> Result<Vec<(usize, Region, Block)>> {
        let level0 = match (p.method, &source) {
            // f32 is the Laplacian's type already: checked, then sent as read.
            (Method::Laplacian, Block::F32(a)) => {
                check_laplacian_range(a, &u.needed_start(0))?;
                self.send(&source)?
            }
            (Method::Laplacian, _) => self.send(&Block::F32(
                crate::with_block!(&source, a => laplacian_source(a, &u.needed_start(0)))?,
            ))?,
            _ => self.send(&source)?,
        };
        let fetches = self.outputs(p, &level0, st, u)?;
        let mut out = Vec::new();
        crate::with_block!(source, a => push_level0(&mut out, st, u, a));
        self.collect(fetches, &mut out)?;
        Ok(out)
    }

    /// A unit's outputs on the device from its source level (as f32 for the Laplacian): levels
    /// source+1..source+k, then (Laplacian) the difference maps of levels source..source+k-1.
    fn outputs(
        &self,
        p: Levels<'_>,
        level0: &Level,
        st: &Stage,
        u: &UnitPlan,
    ) -> Result<Vec<Fetch>> {
        let reduce = match p.method {
            Method::Laplacian => Method::Gaussian,
            m => m,
        };
        let coarser = self.coarser(p, reduce, level0, st, u)?;
        let mut diffs = Vec::new();
        if p.method == Method::Laplacian {
            for j in 0..st.k {
                let fine = if j == 0 { level0 } else { &coarser[j - 1] };
                diffs.push(Fetch {
                    target: p.shapes.len() + st.source + j,
                    dtype: DType::F32,
                    computed: u.blocks[j].clone(),
                    block: u.blocks[j].clone(),
                    data: self.difference(p, fine, &coarser[j], st, u, j)?,
                });
            }
        }
        let mut fetches = level_fetches(coarser, st, u);
        fetches.extend(diffs);
        Ok(fetches)
    }

    /// Levels source+1..source+k on the device, each from the one before.
    fn coarser(
        &self,
        p: Levels<'_>,
        method: Method,
        level0: &Level,
        st: &Stage,
        u: &UnitPlan,
    ) -> Result<Vec<Level>> {
        let mut levels: Vec<Level> = Vec::with_capacity(st.k);
        for j in 1..=st.k {
            let prev = if j == 1 { level0 } else { &levels[j - 2] };
            let next = self.next_level(p, method, prev, st, u, j)?;
            levels.push(next);
        }
        Ok(levels)
    }

    /// The computed box of level source+j from that of level source+j-1.
    fn next_level(
        &self,
        p: Levels<'_>,
        method: Method,
        prev: &Level,
        st: &Stage,
        u: &UnitPlan,
        j: usize,
    ) -> Result<Level> {
        let in_start = u.needed_start(j - 1);
        let in_shape = extents(&u.needed[j - 1]);
        let level_shape = &p.shapes[st.source + j - 1];
        if method == Method::Gaussian {
            let passes = gaussian_passes(&in_start, &in_shape, level_shape, p.factor, &u.needed[j]);
            return self.gaussian(prev, &passes);
        }
        let g = ReduceGeom::new(&in_start, &in_shape, level_shape, p.factor, &u.needed[j])
            .ok_or_else(too_many_axes)?;
        let name = match method {
            Method::Mode => "mode",
            _ => "mean",
        };
        let n = g.voxels() as usize;
        let s = self.gpu.compute_stream();
        let mut data = self.gpu.alloc::<u8>(s, n * prev.dtype.size())?;
        let n64 = n as i64;
        let kernel = self.function(&format!("{name}_{}", type_suffix(prev.dtype)))?;
        self.launch(&format!("pyramid {name}"), n, &kernel, |b| {
            b.arg(&g).arg(&prev.data).arg(&mut data).arg(&n64);
        })?;
        Ok(Level {
            data,
            dtype: prev.dtype,
        })
    }

    /// A Gaussian level: the passes in f64 from the level's own values, rounded once to the
    /// type by the last (the first pass reads the type, the last writes it: no widened or
    /// unrounded box of the whole level in between).
    fn gaussian(&self, prev: &Level, passes: &[AxisPass]) -> Result<Level> {
        let t = type_suffix(prev.dtype);
        let s = self.gpu.compute_stream();
        let size = prev.dtype.size();
        let data = match passes {
            [] => {
                let wide = self.to_f64(prev)?;
                self.rounded(&wide, prev.dtype)?
            }
            [only] => {
                let mut out = self.gpu.alloc::<u8>(s, only.len() * size)?;
                self.pass(&format!("gauss_inout_{t}"), only, &prev.data, &mut out)?;
                out
            }
            [first, middle @ .., last] => {
                let mut wide = self.gpu.alloc::<f64>(s, first.len())?;
                self.pass(&format!("gauss_in_{t}"), first, &prev.data, &mut wide)?;
                let wide = self.passes(wide, middle)?;
                let mut out = self.gpu.alloc::<u8>(s, last.len() * size)?;
                self.pass(&format!("gauss_out_{t}"), last, &wide, &mut out)?;
                out
            }
        };
        Ok(Level {
            data,
            dtype: prev.dtype,
        })
    }

    /// An f64 box rounded to `dtype`, as bytes.
    fn rounded(&self, wide: &CudaSlice<f64>, dtype: DType) -> Result<CudaSlice<u8>> {
        let n = wide.len();
        let mut data = self
            .gpu
            .alloc::<u8>(self.gpu.compute_stream(), n * dtype.size())?;
        let n64 = n as i64;
        let kernel = self.function(&format!("round_{}", type_suffix(dtype)))?;
        self.launch("pyramid rounding", n, &kernel, |b| {
            b.arg(wide).arg(&mut data).arg(&n64);
        })?;
        Ok(data)
    }

    /// A level's box as f64.
    fn to_f64(&self, level: &Level) -> Result<CudaSlice<f64>> {
        let n = level.data.len() / level.dtype.size();
        let s = self.gpu.compute_stream();
        let mut wide = self.gpu.alloc::<f64>(s, n)?;
        let n64 = n as i64;
        let kernel = self.function(&format!("to_f64_{}", type_suffix(level.dtype)))?;
        self.launch("pyramid widening", n, &kernel, |b| {
            b.arg(&level.data).arg(&mut wide).arg(&n64);
        })?;
        Ok(wide)
    }

    /// The taps of one pass on the device: first, count, at, weights.
    fn tap_tables(&self, pass: &AxisPass) -> Result<[CudaSlice<u8>; 4]> {
        let s = self.gpu.compute_stream();
        Ok([
            self.gpu
                .upload(s, bytemuck::cast_slice::<i64, u8>(&pass.first))?,
            self.gpu
                .upload(s, bytemuck::cast_slice::<i64, u8>(&pass.count))?,
            self.gpu
                .upload(s, bytemuck::cast_slice::<i64, u8>(&pass.at))?,
            self.gpu
                .upload(s, bytemuck::cast_slice::<f64, u8>(&pass.weights))?,
        ])
    }

    /// One pass of kernel `name` (a `gauss_*` of reduce.cu) from `input` into `output`.
    fn pass<I: DeviceRepr, O: DeviceRepr>(
        &self,
        name: &str,
        pass: &AxisPass,
        input: &CudaSlice<I>,
        output: &mut CudaSlice<O>,
    ) -> Result<()> {
        let kernel = self.function(name)?;
        let [first, count, at, weights] = self.tap_tables(pass)?;
        self.launch("pyramid pass", pass.len(), &kernel, |b| {
            b.arg(&pass.geom)
                .arg(&first)
                .arg(&count)
                .arg(&at)
                .arg(&weights)
                .arg(input)
                .arg(output);
        })
    }

    /// Passes of `gauss_axis` one after the other (f64 to f64).
    fn passes(&self, mut cur: CudaSlice<f64>, passes: &[AxisPass]) -> Result<CudaSlice<f64>> {
        let s = self.gpu.compute_stream();
        for pass in passes {
            let mut next = self.gpu.alloc::<f64>(s, pass.len())?;
            self.pass("gauss_axis", pass, &cur, &mut next)?;
            cur = next;
        }
        Ok(cur)
    }

    /// The difference map of level source+j over its block: the level minus level source+j+1
    /// upsampled, as f32 bytes. The upsampling's last pass is fused with the difference (and
    /// a lone pass reads the coarser level as it is), so no f64 box of the block is stored.
    fn difference(
        &self,
        p: Levels<'_>,
        fine: &Level,
        coarse: &Level,
        st: &Stage,
        u: &UnitPlan,
        j: usize,
    ) -> Result<CudaSlice<u8>> {
        let s = st.source;
        let passes = upsample_passes(
            &u.needed_start(j + 1),
            &extents(&u.needed[j + 1]),
            &p.shapes[s + j + 1],
            p.factor,
            &u.blocks[j],
        );
        let g = diff_geom(
            &u.needed_start(j),
            &extents(&u.needed[j]),
            &p.shapes[s + j],
            &u.blocks[j],
        )
        .ok_or_else(too_many_axes)?;
        let n = g.voxels() as usize;
        let mut diff = self.gpu.alloc::<u8>(self.gpu.compute_stream(), n * 4)?;
        match passes.as_slice() {
            [only] if coarse.dtype == DType::F32 => {
                self.diff_pass(
                    "laplacian_diff_pass_f32",
                    &g,
                    fine,
                    only,
                    &coarse.data,
                    &mut diff,
                )?;
            }
            [first, middle @ .., last] => {
                let c = self.gpu.compute_stream();
                let mut wide = self.gpu.alloc::<f64>(c, first.len())?;
                let t = type_suffix(coarse.dtype);
                self.pass(&format!("gauss_in_{t}"), first, &coarse.data, &mut wide)?;
                let wide = self.passes(wide, middle)?;
                self.diff_pass("laplacian_diff_pass_f64", &g, fine, last, &wide, &mut diff)?;
            }
            _ => {
                let up = self.passes(self.to_f64(coarse)?, &passes)?;
                let n64 = n as i64;
                let kernel = self.function("laplacian_diff")?;
                self.launch("pyramid difference", n, &kernel, |b| {
                    b.arg(&g).arg(&fine.data).arg(&up).arg(&mut diff).arg(&n64);
                })?;
            }
        }
        Ok(diff)
    }

    /// The difference map by kernel `name`, the upsampling's last pass `last` reading `input`.
    fn diff_pass<I: DeviceRepr>(
        &self,
        name: &str,
        g: &ReduceGeom,
        fine: &Level,
        last: &AxisPass,
        input: &CudaSlice<I>,
        diff: &mut CudaSlice<u8>,
    ) -> Result<()> {
        let n = g.voxels() as usize;
        debug_assert_eq!(n, last.len(), "the last pass writes the block");
        let n64 = n as i64;
        let kernel = self.function(name)?;
        let [first, count, at, weights] = self.tap_tables(last)?;
        self.launch("pyramid difference", n, &kernel, |b| {
            b.arg(g)
                .arg(&fine.data)
                .arg(&last.geom)
                .arg(&first)
                .arg(&count)
                .arg(&at)
                .arg(&weights)
                .arg(input)
                .arg(diff)
                .arg(&n64);
        })
    }

    /// A host block on the device: through a pinned buffer on the copy stream, the compute
    /// stream then waiting for it.
    fn send(&self, block: &Block) -> Result<Level> {
        let dtype = block.dtype();
        let len = block.shape().iter().product::<u64>() as usize * dtype.size();
        let data = self.gpu.stage(len, |dst| {
            write_block_bytes(block, dst);
        })?;
        Ok(Level { data, dtype })
    }

    /// Copies every fetch back (one copy each, enqueued after all the unit's kernels), waits,
    /// and adds each output's block, cut out of its computed box, to `out`.
    fn collect(&self, fetches: Vec<Fetch>, out: &mut Vec<(usize, Region, Block)>) -> Result<()> {
        let gpu = &self.gpu;
        let s = gpu.compute_stream();
        let mut copies = Vec::with_capacity(fetches.len());
        for f in fetches {
            let len = f.data.len();
            let host = gpu.receive(s, &f.data, len)?;
            copies.push((f, host));
        }
        gpu.wait(s)?;
        gpu.settle()?;
        for (f, host) in copies {
            let shape: Vec<usize> = extents(&f.computed).iter().map(|&d| d as usize).collect();
            let len = f.data.len();
            let bytes = &host.as_slice().map_err(launch_error("pinned buffer"))?[..len];
            let block = gpu.host_timed(HostPhase::Unpack, || {
                let computed = block_from_bytes(f.dtype, &shape, bytes);
                crate::with_block!(computed, a =>
                    Element::into_block(take_block(a, &f.computed, &f.block)))
            });
            gpu.give_back(host);
            out.push((f.target, ranges_of(&f.block), block));
        }
        Ok(())
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        self.gpu.function(&kernels::PYRAMID, name)
    }

    /// Launches `kernel` over `n` threads on the compute stream, timed as kernel time, with
    /// the arguments `args` pushes (which must match reduce.cu).
    fn launch<'a>(
        &'a self,
        what: &str,
        n: usize,
        kernel: &'a CudaFunction,
        args: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<()> {
        let s = self.gpu.compute_stream();
        self.gpu.timed(Phase::Kernel, 0, s, || {
            let mut b = s.launch_builder(kernel);
            args(&mut b);
            // SAFETY: the caller's arguments match the kernel's signature in reduce.cu, and
            // every buffer holds what its geometry reads or writes (the harness checks the
            // geometries against kernel.rs on the CPU).
            unsafe { b.launch(launch_config((n as u64).min(1 << 24))) }
                .map(|_| ())
                .map_err(launch_error(what))
        })
    }
}

/// Levels source+1..source+k (`levels[j - 1]` is source+j), to be copied back.
fn level_fetches(levels: Vec<Level>, st: &Stage, u: &UnitPlan) -> Vec<Fetch> {
    levels
        .into_iter()
        .zip(1..)
        .map(|(level, j)| Fetch {
            target: st.source + j,
            dtype: level.dtype,
            computed: u.needed[j].clone(),
            block: u.blocks[j].clone(),
            data: level.data,
        })
        .collect()
}

fn too_many_axes() -> Error {
    Error::gpu(format!(
        "the pyramid kernels take at most {} axes",
        super::device::MAX_AXES
    ))
}

/// `tessera bench pyramid --device cuda`: every level of a resident f32 volume (and, for the
/// Laplacian, every difference map) built on the device as one unit, factor 2 on every axis,
/// `levels` levels. Returns the device seconds (CUDA events, best of `repeat`; the Gaussian's
/// small tap tables are uploaded inside the timing, as a run does) and whether every output
/// has the CPU path's bits.
///
/// # Errors
/// Device failures.
pub fn bench_levels(
    gpu: &Arc<Gpu>,
    volume: &ndarray::ArrayD<f32>,
    method: Method,
    levels: usize,
    repeat: usize,
) -> Result<(f64, bool)> {
    let base: Vec<u64> = volume.shape().iter().map(|&d| d as u64).collect();
    let factor = vec![2u64; base.len()];
    let mut shapes = vec![base.clone()];
    while shapes.len() < levels.max(2) {
        let next = super::kernel::next_shape(&shapes[shapes.len() - 1], &factor);
        shapes.push(next);
    }
    let p = Levels {
        method,
        factor: &factor,
        shapes: &shapes,
    };
    let st = Stage {
        source: 0,
        k: shapes.len() - 1,
        extent: base.clone(),
    };
    let u = UnitPlan::new(method, &factor, &shapes, &st, &vec![0; base.len()]);
    let pg = PyramidGpu::new(gpu.clone());
    let level0 = pg.send(&Block::F32(volume.clone()))?;
    let seconds = gpu.kernel_seconds(repeat, || pg.outputs(p, &level0, &st, &u).map(|_| ()))?;
    let mut got = Vec::new();
    pg.collect(pg.outputs(p, &level0, &st, &u)?, &mut got)?;
    let want = p.build(volume.clone(), &st, &u)?;
    let bits = |b: &Block| {
        crate::with_block!(b, a => {
            let a = a.as_standard_layout();
            bytemuck::cast_slice::<_, u8>(a.as_slice().expect("standard layout")).to_vec()
        })
    };
    // The CPU's outputs include level 0 as read; the device's are the rest.
    let same = got.len() + 1 == want.len()
        && want
            .iter()
            .filter(|(t, _, _)| *t > 0)
            .all(|(t, region, block)| {
                got.iter()
                    .any(|(g, r, b)| g == t && r == region && bits(b) == bits(block))
            });
    Ok((seconds, same))
}
