//! The GPU kernels' view of a pyramid unit, prepared on the host: the `#[repr(C)]` twins of
//! `reduce.cuh`'s `ReduceGeom` and `AxisGeom`, and the Gaussian's per-axis tap tables. No
//! CUDA here (every build has it), so the test harness runs the kernels' bodies on exactly
//! what a GPU launch would get.

use std::ops::Range;

use super::kernel;

/// Axes the kernels take (`TESSERA_PYRAMID_AXES` in reduce.cuh).
pub const MAX_AXES: usize = 6;

/// Twin of `ReduceGeom` in `reduce.cuh` (field for field; axes beyond `ndim` are 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReduceGeom {
    pub ndim: i64,
    pub factor: [i64; MAX_AXES],
    pub out_start: [i64; MAX_AXES],
    pub out_shape: [i64; MAX_AXES],
    pub in_start: [i64; MAX_AXES],
    pub in_shape: [i64; MAX_AXES],
    pub level_shape: [i64; MAX_AXES],
}

/// Twin of `AxisGeom` in `reduce.cuh`: one Gaussian pass along an axis of an f64 box seen as
/// (outer, in_len, inner).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AxisGeom {
    pub outer: i64,
    pub inner: i64,
    pub in_len: i64,
    pub out_len: i64,
}

#[cfg(feature = "cuda")]
// SAFETY: plain #[repr(C)] structs of i64s, passed by value as kernel arguments.
unsafe impl crate::gpu::cuda::DeviceRepr for ReduceGeom {}
#[cfg(feature = "cuda")]
// SAFETY: as above.
unsafe impl crate::gpu::cuda::DeviceRepr for AxisGeom {}

fn padded(values: impl Iterator<Item = u64>) -> [i64; MAX_AXES] {
    let mut out = [0i64; MAX_AXES];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v as i64;
    }
    out
}

impl ReduceGeom {
    /// The mean or mode of the output box `out` (absolute ranges in the new level) from an
    /// input box starting at `in_start` with shape `in_shape`, in a level of `level_shape`;
    /// `None` beyond [`MAX_AXES`] axes.
    pub fn new(
        in_start: &[u64],
        in_shape: &[u64],
        level_shape: &[u64],
        factor: &[u64],
        out: &[Range<u64>],
    ) -> Option<ReduceGeom> {
        let nd = out.len();
        (nd <= MAX_AXES).then(|| ReduceGeom {
            ndim: nd as i64,
            factor: padded(factor.iter().copied()),
            out_start: padded(out.iter().map(|r| r.start)),
            out_shape: padded(out.iter().map(|r| r.end - r.start)),
            in_start: padded(in_start.iter().copied()),
            in_shape: padded(in_shape.iter().copied()),
            level_shape: padded(level_shape.iter().copied()),
        })
    }

    /// Output voxels of a launch.
    pub fn voxels(&self) -> i64 {
        self.out_shape[..self.ndim as usize].iter().product()
    }
}

/// One Gaussian pass of a launch: the geometry and the tables `gauss_axis` reads.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisPass {
    pub geom: AxisGeom,
    /// Per output index along the axis: first input index (relative to the box), tap count,
    /// and where its weights start in `weights`.
    pub first: Vec<i64>,
    pub count: Vec<i64>,
    pub at: Vec<i64>,
    pub weights: Vec<f64>,
}

impl AxisPass {
    /// Elements the pass writes.
    pub fn len(&self) -> usize {
        (self.geom.outer * self.geom.out_len * self.geom.inner) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Gaussian level of the output box `out` as passes over the input box (as f64), one per
/// axis in axis order: kernel.rs' normalised taps along axes with a factor above 1, and along
/// the others a tap of weight 1 that cuts the box to `out` (kernel.rs cuts it before its
/// passes; a weight-1 tap turns -0.0 into 0.0 there, which no later pass can tell apart, and
/// every level has at least one axis with a factor above 1).
pub fn gaussian_passes(
    in_start: &[u64],
    in_shape: &[u64],
    level_shape: &[u64],
    factor: &[u64],
    out: &[Range<u64>],
) -> Vec<AxisPass> {
    axis_passes(in_start, in_shape, out, |a, i| {
        if factor[a] > 1 {
            kernel::taps(factor[a], level_shape[a], i)
        } else {
            (i, vec![1.0])
        }
    })
}

/// The Laplacian's upsampling of a coarse box (starting at `coarse_start`, shape
/// `coarse_box`, in a level of `coarse_shape`) onto the fine box `out`, as passes over the
/// coarse box (as f64): kernel.rs' `upsample_taps` along axes with a factor above 1, a tap of
/// weight 1 along the others (kernel.rs slices those; the difference is -0.0 against 0.0,
/// which the pass along an axis with a factor above 1 makes 0.0 either way).
pub fn upsample_passes(
    coarse_start: &[u64],
    coarse_box: &[u64],
    coarse_shape: &[u64],
    factor: &[u64],
    out: &[Range<u64>],
) -> Vec<AxisPass> {
    axis_passes(coarse_start, coarse_box, out, |a, x| {
        if factor[a] > 1 {
            kernel::upsample_taps(factor[a], coarse_shape[a], x)
        } else {
            (x, vec![1.0])
        }
    })
}

/// Passes along every axis in order, from the box at `in_start` of shape `in_shape` to the
/// box `out`: `taps(axis, i)` gives output index i's first input index (absolute) and weights.
fn axis_passes(
    in_start: &[u64],
    in_shape: &[u64],
    out: &[Range<u64>],
    taps: impl Fn(usize, u64) -> (u64, Vec<f64>),
) -> Vec<AxisPass> {
    let mut shape: Vec<u64> = in_shape.to_vec();
    let mut passes = Vec::with_capacity(out.len());
    for a in 0..out.len() {
        let mut pass = AxisPass {
            geom: AxisGeom {
                outer: shape[..a].iter().product::<u64>() as i64,
                inner: shape[a + 1..].iter().product::<u64>() as i64,
                in_len: shape[a] as i64,
                out_len: (out[a].end - out[a].start) as i64,
            },
            first: Vec::new(),
            count: Vec::new(),
            at: Vec::new(),
            weights: Vec::new(),
        };
        for i in out[a].clone() {
            let (first, w) = taps(a, i);
            pass.first.push((first - in_start[a]) as i64);
            pass.count.push(w.len() as i64);
            pass.at.push(pass.weights.len() as i64);
            pass.weights.extend(w);
        }
        shape[a] = out[a].end - out[a].start;
        passes.push(pass);
    }
    passes
}

/// The geometry of the Laplacian's difference map over the block `out` of a level whose
/// computed box starts at `fine_start` with shape `fine_box` (`laplacian_diff` in reduce.cu
/// reads voxel e of `out` from it: a `ReduceGeom` with factor 1).
pub fn diff_geom(
    fine_start: &[u64],
    fine_box: &[u64],
    level_shape: &[u64],
    out: &[Range<u64>],
) -> Option<ReduceGeom> {
    ReduceGeom::new(fine_start, fine_box, level_shape, &vec![1; out.len()], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_pads_and_counts_hand_checked() {
        let g = ReduceGeom::new(&[2, 0], &[4, 9], &[10, 9], &[2, 3], &[1..3, 0..3]).unwrap();
        assert_eq!(g.ndim, 2);
        assert_eq!(g.factor, [2, 3, 0, 0, 0, 0]);
        assert_eq!(g.out_shape, [2, 3, 0, 0, 0, 0]);
        assert_eq!(g.in_start, [2, 0, 0, 0, 0, 0]);
        assert_eq!(g.voxels(), 6);
        assert!(ReduceGeom::new(&[0; 7], &[1; 7], &[1; 7], &[1; 7], &vec![0..1; 7]).is_none());
    }

    #[test]
    fn gaussian_passes_cut_axes_with_factor_one() {
        // Axis 0 (factor 1): outputs 3..5 of a box starting at 2 read one tap each at 1, 2.
        let passes = gaussian_passes(&[2, 0], &[6, 12], &[8, 12], &[1, 2], &[3..5, 0..6]);
        assert_eq!(passes[0].first, vec![1, 2]);
        assert_eq!(passes[0].count, vec![1, 1]);
        assert_eq!(passes[0].weights, vec![1.0, 1.0]);
        assert_eq!(
            passes[0].geom,
            AxisGeom {
                outer: 1,
                inner: 12,
                in_len: 6,
                out_len: 2
            }
        );
        // Axis 1 sees the cut box (2 rows); its taps sum to 1 and stay inside the level.
        assert_eq!(passes[1].geom.outer, 2);
        assert_eq!(passes[1].geom.out_len, 6);
        for i in 0..6 {
            let (at, n) = (passes[1].at[i] as usize, passes[1].count[i] as usize);
            let sum: f64 = passes[1].weights[at..at + n].iter().sum();
            assert!((sum - 1.0).abs() < 1e-12);
            assert!(passes[1].first[i] >= 0 && passes[1].first[i] as usize + n <= 12);
        }
    }
}
