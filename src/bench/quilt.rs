//! `tessera bench quilt`: the quilting kernels in memory, against a plain memory copy of the
//! same patch bytes in the same run (the copy and the unstitch on one thread; the stitch on
//! rayon's threads, as `quilt stitch` runs it), on the two shapes of issue 3: (8,3,1024,1024) f32 with window 128, step 64,
//! border 16, and (2,1,256,256,256) f32 with window 64, step 32, border 8.

use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use serde::Serialize;

use crate::grid::windows::WindowGrid;
use crate::ops::quilt::kernel::{self, Blend, PatchRef, SplitAccumulator, Weighting};

/// One benchmark shape.
#[derive(Clone, Debug, Serialize)]
pub struct QuiltCase {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub window: u64,
    pub step: u64,
    pub border: u64,
}

/// The two shapes the issue names.
pub fn cases() -> Vec<QuiltCase> {
    vec![
        QuiltCase {
            name: "2d (8,3,1024,1024)",
            shape: vec![8, 3, 1024, 1024],
            window: 128,
            step: 64,
            border: 16,
        },
        QuiltCase {
            name: "3d (2,1,256,256,256)",
            shape: vec![2, 1, 256, 256, 256],
            window: 64,
            step: 32,
            border: 8,
        },
    ]
}

impl QuiltCase {
    pub fn grid(&self) -> WindowGrid {
        let spatial: Vec<u64> = self.shape[2..].iter().map(|&n| n as u64).collect();
        let nd = spatial.len();
        WindowGrid::new(
            &spatial,
            &vec![self.window; nd],
            &vec![self.step; nd],
            false,
        )
        .expect("valid case")
    }

    pub fn weights(&self) -> ArrayD<f64> {
        let nd = self.shape.len() - 2;
        kernel::weights(
            &vec![self.window; nd],
            &Weighting {
                blend: Blend::Border,
                border: vec![self.border; nd],
                border_weight: 0.1,
                sigma: 0.125,
            },
        )
    }

    pub fn image(&self) -> ArrayD<f32> {
        let mut next = crate::grid::xorshift(0x2545_F491_4F6C_DD1D);
        ArrayD::from_shape_simple_fn(IxDyn(&self.shape), || crate::grid::unit_f32(next()))
    }

    pub fn patch_shape(&self) -> Vec<usize> {
        let g = self.grid();
        let mut s = vec![self.shape[0] * g.per_image() as usize, self.shape[1]];
        s.extend(std::iter::repeat_n(
            self.window as usize,
            self.shape.len() - 2,
        ));
        s
    }
}

/// Cuts every window of every image into `patches` (the unstitch kernel, in patch order).
pub fn unstitch_into(image: &ArrayD<f32>, grid: &WindowGrid, patches: &mut ArrayD<f32>) {
    let per = grid.per_image();
    for (m, mut out) in patches.axis_iter_mut(Axis(0)).enumerate() {
        let n = m / per as usize;
        let start = grid.window_start(m as u64 % per);
        let img = image.index_axis(Axis(0), n);
        let mut view = img.view();
        for (a, (&s, &w)) in start.iter().zip(&grid.window).enumerate() {
            view.slice_axis_inplace(
                Axis(a + 1),
                ndarray::Slice::from(s as usize..(s + w) as usize),
            );
        }
        out.assign(&view);
    }
}

/// An accumulator for a whole image of `case`, split over rayon's threads.
pub fn accumulator(case: &QuiltCase) -> SplitAccumulator {
    let spatial: Vec<u64> = case.shape[2..].iter().map(|&n| n as u64).collect();
    let origin = vec![0; spatial.len()];
    SplitAccumulator::new(
        case.shape[1],
        &origin,
        &spatial,
        false,
        rayon::current_num_threads(),
    )
}

/// Stitches all patches back into `out`, image by image, the way `quilt stitch` does per
/// band, here one band as high as the image (f32 patches accumulated in f64 in patch order,
/// normalised, rounded to f32). The
/// accumulator and the output are reused between runs, as the memcpy reuses its destination.
pub fn stitch_into(
    patches: &ArrayD<f32>,
    case: &QuiltCase,
    weights: &ArrayD<f64>,
    acc: &mut SplitAccumulator,
    out: &mut ArrayD<f32>,
) {
    let grid = case.grid();
    let per = grid.per_image() as usize;
    for n in 0..case.shape[0] {
        acc.reset();
        let refs: Vec<PatchRef<'_, f32>> = (0..per)
            .map(|k| {
                (
                    patches.index_axis(Axis(0), n * per + k),
                    None,
                    grid.window_start(k as u64),
                )
            })
            .collect();
        acc.add_all(&refs, weights);
        acc.mean_into(out.index_axis_mut(Axis(0), n), |x| x as f32);
    }
}

#[derive(Debug, Serialize)]
pub struct QuiltResult {
    pub case: QuiltCase,
    pub patch_bytes: u64,
    pub memcpy_s: f64,
    pub unstitch_s: f64,
    pub stitch_s: f64,
    pub unstitch_fraction: f64,
    pub stitch_fraction: f64,
}

fn best(times: &mut [f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Measures one case, best of `repeat`.
pub fn measure(case: &QuiltCase, repeat: usize) -> QuiltResult {
    let image = case.image();
    let grid = case.grid();
    let weights = case.weights();
    let mut patches = ArrayD::<f32>::zeros(IxDyn(&case.patch_shape()));
    let reference = ArrayD::<f32>::ones(IxDyn(&case.patch_shape()));
    let mut acc = accumulator(case);
    let mut stitched = ArrayD::<f32>::zeros(IxDyn(&case.shape));
    let (mut copy, mut cut, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        patches
            .as_slice_mut()
            .expect("standard layout")
            .copy_from_slice(reference.as_slice().expect("standard layout"));
        copy.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        unstitch_into(&image, &grid, &mut patches);
        cut.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        stitch_into(&patches, case, &weights, &mut acc, &mut stitched);
        back.push(t.elapsed().as_secs_f64());
        assert!(
            stitched
                .iter()
                .zip(image.iter())
                .all(|(a, b)| (a - b).abs() <= 1e-6),
            "round trip"
        );
    }
    let memcpy_s = best(&mut copy);
    let unstitch_s = best(&mut cut);
    let stitch_s = best(&mut back);
    QuiltResult {
        case: case.clone(),
        patch_bytes: (patches.len() * 4) as u64,
        memcpy_s,
        unstitch_s,
        stitch_s,
        unstitch_fraction: memcpy_s / unstitch_s,
        stitch_fraction: memcpy_s / stitch_s,
    }
}
