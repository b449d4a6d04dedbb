//! Pyramid kernels: one level from the one below, over a box, and the upsampling that the
//! Laplacian difference maps are taken against. Pure functions on ndarray arrays.
//!
//! Every function computes the voxels of an output box from a box of its input level that
//! covers everything they depend on ([`input_range`]), and the value of a voxel depends only
//! on the input values and its own position, never on the box: a level is the same, bit for
//! bit, however it is cut into units or ranks.
//!
//! Definitions (per axis, factor `f`, input extent `D`; level shape `ceil(D / f)`):
//! - `mean`: output voxel `i` covers input voxels `f*i .. min(f*(i+1), D)` on each axis; the
//!   value is their sum in f64, taken in C order over the block, divided by their count, then
//!   rounded to the output type (floats: to nearest; integers: to the nearest integer, halves
//!   away from zero). A partial block at the far edge is the mean of the voxels it covers.
//! - `mode`: the most frequent value of the same block; ties go to the smallest value.
//! - `gaussian`: a Gaussian of sigma `f / 3` (scikit-image's `pyramid_reduce`) centred on the
//!   block centre `f*i + (f-1)/2`, truncated at 4 sigma, normalised over the taps inside the
//!   array (no padding, no reflection), applied axis by axis in f64 (axis 0 first), rounded
//!   once at the end. The block centre is the mean's, so both share one OME translation.
//! - upsampling (Laplacian): multilinear interpolation at voxel centres; level `l` voxel `x`
//!   sits at `(x - (f-1)/2) / f` in level `l+1` indices, clamped to the edge voxels.

use std::ops::Range;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use serde::{Deserialize, Serialize};

use crate::grid::{for_each_index, row_major_strides};
use crate::io::Element;

/// How a level is made from the one below.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Mean of the block (pyramid_sampler's method).
    #[default]
    Mean,
    /// Gaussian smoothing (sigma = factor / 3), then subsampling at block centres.
    Gaussian,
    /// Most frequent value of the block (label images); ties to the smallest.
    Mode,
    /// Gaussian levels in f32 plus per-level difference maps that reconstruct level 0.
    Laplacian,
}

/// Gaussian sigma for a factor, in input voxels.
pub fn sigma(f: u64) -> f64 {
    f as f64 / 3.0
}

/// Half-width of the Gaussian support, in input voxels.
fn radius(f: u64) -> f64 {
    4.0 * sigma(f)
}

fn centre(f: u64, i: u64) -> f64 {
    (f * i) as f64 + (f as f64 - 1.0) / 2.0
}

/// Shape of the level above one of shape `shape`.
pub fn next_shape(shape: &[u64], factor: &[u64]) -> Vec<u64> {
    shape
        .iter()
        .zip(factor)
        .map(|(&d, &f)| d.div_ceil(f))
        .collect()
}

/// Input voxels (on one axis) that output voxels `out` depend on, clamped to `0..extent`.
pub fn input_range(method: Method, f: u64, extent: u64, out: &Range<u64>) -> Range<u64> {
    if out.is_empty() {
        return 0..0;
    }
    match method {
        _ if f == 1 => out.clone(),
        Method::Mean | Method::Mode => f * out.start..(f * out.end).min(extent),
        Method::Gaussian | Method::Laplacian => {
            let lo = (centre(f, out.start) - radius(f)).ceil().max(0.0) as u64;
            let hi = (centre(f, out.end - 1) + radius(f)).floor() as u64 + 1;
            lo..hi.min(extent)
        }
    }
}

/// Voxels (on one axis) of the level above that upsampling `out` of this level reads.
pub fn upsample_range(f: u64, coarse_extent: u64, out: &Range<u64>) -> Range<u64> {
    if f == 1 || out.is_empty() {
        return out.clone();
    }
    let pos = |x: u64| ((x as f64 - (f as f64 - 1.0) / 2.0) / f as f64).floor();
    let lo = pos(out.start).max(0.0) as u64;
    let hi = (pos(out.end - 1) + 2.0).max(1.0) as u64;
    lo.min(coarse_extent - 1)..hi.min(coarse_extent)
}

/// Rounds an f64 to an element type: floats to nearest, integers to the nearest integer
/// (halves away from zero). Means and normalised Gaussians of values of a type stay inside
/// its range, so nothing saturates.
pub fn round_to<T: Element>(x: f64) -> T {
    if x.is_nan() {
        // One NaN whatever the payload (f32::NAN / f64::NAN; 0 for integers, which cannot
        // get here): CPUs and GPUs propagate NaN payloads differently.
        return <T as num_traits::NumCast>::from(f64::NAN).unwrap_or_default();
    }
    let x = if T::DTYPE.is_float() { x } else { x.round() };
    <T as num_traits::NumCast>::from(x).unwrap_or_default()
}

/// An input box: values (C order) and where the box starts in its level.
pub struct Source<'a, T> {
    pub values: ArrayViewD<'a, T>,
    pub start: &'a [u64],
    /// The whole level's shape (for edge clamping and partial blocks).
    pub level_shape: &'a [u64],
}

/// Calls `visit(out_row_index, in_rows)` per output row (all axes but the last) of the box
/// `out`, with the flat offsets of the input rows that row's blocks cover, in C order, and
/// the input x range (absolute) the row covers.
fn block_rows<T>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
    mut visit: impl FnMut(&[u64], &[usize], Range<u64>),
) {
    let nd = out.len();
    let last = nd - 1;
    let in_shape: Vec<usize> = src.values.shape().to_vec();
    let st = row_major_strides(&in_shape);
    let xr = input_range(
        Method::Mean,
        factor[last],
        src.level_shape[last],
        &out[last],
    );
    let mut rows = Vec::new();
    for_each_index(&out[..last], |o| {
        let blocks: Vec<Range<u64>> = (0..last)
            .map(|a| {
                input_range(
                    Method::Mean,
                    factor[a],
                    src.level_shape[a],
                    &(o[a]..o[a] + 1),
                )
            })
            .collect();
        rows.clear();
        for_each_index(&blocks, |i| {
            let off: usize = (0..last)
                .map(|a| (i[a] - src.start[a]) as usize * st[a])
                .sum::<usize>()
                + (xr.start - src.start[last]) as usize;
            rows.push(off);
        });
        visit(o, &rows, xr.clone());
    });
}

/// The mean level over the output box `out` (absolute ranges in the new level).
pub fn reduce_mean<T: Element, U: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<U> {
    let nd = out.len();
    let last = nd - 1;
    let shape: Vec<usize> = out.iter().map(|r| (r.end - r.start) as usize).collect();
    let mut result = ArrayD::<U>::default(IxDyn(&shape));
    let values = src
        .values
        .as_slice()
        .expect("pyramid kernels take C-order boxes");
    let fx = factor[last] as usize;
    let width = shape[last];
    let mut sums = vec![0f64; width];
    let mut counts = vec![0usize; width];
    let res = result.as_slice_mut().expect("fresh array");
    let mut row = 0usize;
    block_rows(src, factor, out, |_, rows, xr| {
        sums.fill(0.0);
        counts.fill(0);
        let len = (xr.end - xr.start) as usize;
        for &off in rows {
            for ((s, c), chunk) in sums
                .iter_mut()
                .zip(counts.iter_mut())
                .zip(values[off..off + len].chunks(fx))
            {
                for &v in chunk {
                    *s += v.to_f64().unwrap_or(f64::NAN);
                }
                *c += chunk.len();
            }
        }
        for ((o, &s), &c) in res[row * width..(row + 1) * width]
            .iter_mut()
            .zip(&sums)
            .zip(&counts)
        {
            *o = round_to::<U>(s / c as f64);
        }
        row += 1;
    });
    result
}

/// The mode level over the output box `out`: the most frequent value of each block, ties to
/// the smallest (NaN, if any, counts as one value larger than all numbers).
pub fn reduce_mode<T: Element + PartialOrd>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<T> {
    let nd = out.len();
    let last = nd - 1;
    let shape: Vec<usize> = out.iter().map(|r| (r.end - r.start) as usize).collect();
    let mut result = ArrayD::<T>::default(IxDyn(&shape));
    let values = src
        .values
        .as_slice()
        .expect("pyramid kernels take C-order boxes");
    let fx = factor[last] as usize;
    let width = shape[last];
    let mut buckets: Vec<Vec<T>> = vec![Vec::new(); width];
    let res = result.as_slice_mut().expect("fresh array");
    let mut row = 0usize;
    let order = |a: &T, b: &T| {
        a.partial_cmp(b).unwrap_or_else(|| {
            // NaN last, and equal to itself.
            let (an, bn) = (
                a.to_f64().is_some_and(f64::is_nan),
                b.to_f64().is_some_and(f64::is_nan),
            );
            an.cmp(&bn)
        })
    };
    block_rows(src, factor, out, |_, rows, xr| {
        buckets.iter_mut().for_each(Vec::clear);
        let len = (xr.end - xr.start) as usize;
        for &off in rows {
            for (b, chunk) in buckets.iter_mut().zip(values[off..off + len].chunks(fx)) {
                b.extend_from_slice(chunk);
            }
        }
        for (o, b) in res[row * width..(row + 1) * width]
            .iter_mut()
            .zip(buckets.iter_mut())
        {
            b.sort_by(order);
            let (mut best, mut best_count) = (b[0], 0usize);
            let mut i = 0;
            while i < b.len() {
                let mut j = i + 1;
                while j < b.len() && order(&b[j], &b[i]).is_eq() {
                    j += 1;
                }
                if j - i > best_count {
                    best = b[i];
                    best_count = j - i;
                }
                i = j;
            }
            *o = best;
        }
        row += 1;
    });
    result
}

/// Normalised Gaussian taps for output voxel `i` on an axis: (first input index, weights).
pub(crate) fn taps(f: u64, extent: u64, i: u64) -> (u64, Vec<f64>) {
    let c = centre(f, i);
    let r = input_range(Method::Gaussian, f, extent, &(i..i + 1));
    let s = sigma(f);
    let w: Vec<f64> = r
        .clone()
        .map(|x| (-(x as f64 - c).powi(2) / (2.0 * s * s)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    (r.start, w.into_iter().map(|x| x / total).collect())
}

/// Applies per-output-index weights along `axis`: `out[i] = sum_k w_i[k] * input[first_i + k]`,
/// input indices relative to `in_start`.
fn weigh_axis(
    input: &ArrayD<f64>,
    axis: usize,
    in_start: u64,
    outputs: &[(u64, Vec<f64>)],
) -> ArrayD<f64> {
    let mut shape = input.shape().to_vec();
    shape[axis] = outputs.len();
    let mut out = ArrayD::<f64>::zeros(IxDyn(&shape));
    for (mut o, (first, w)) in out.axis_iter_mut(Axis(axis)).zip(outputs) {
        for (k, &wk) in w.iter().enumerate() {
            let src = input.index_axis(Axis(axis), (first + k as u64 - in_start) as usize);
            o.scaled_add(wk, &src);
        }
    }
    out
}

/// The Gaussian level over the output box `out`, as f64 before rounding.
pub fn reduce_gaussian_f64<T: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<f64> {
    let nd = out.len();
    // The input box the output needs, cut out of what was given.
    let need: Vec<Range<u64>> = (0..nd)
        .map(|a| input_range(Method::Gaussian, factor[a], src.level_shape[a], &out[a]))
        .collect();
    let mut view = src.values.view();
    for (a, r) in need.iter().enumerate() {
        let lo = (r.start - src.start[a]) as usize;
        view.slice_axis_inplace(
            Axis(a),
            ndarray::Slice::from(lo..lo + (r.end - r.start) as usize),
        );
    }
    let mut cur = view.mapv(|v| v.to_f64().unwrap_or(f64::NAN));
    for a in 0..nd {
        if factor[a] == 1 {
            continue;
        }
        let outputs: Vec<(u64, Vec<f64>)> = out[a]
            .clone()
            .map(|i| taps(factor[a], src.level_shape[a], i))
            .collect();
        cur = weigh_axis(&cur, a, need[a].start, &outputs);
    }
    cur
}

/// The Gaussian level over the output box `out`, rounded to `U`.
pub fn reduce_gaussian<T: Element, U: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<U> {
    reduce_gaussian_f64(src, factor, out).mapv(round_to::<U>)
}

/// Linear interpolation of fine voxel `x` from a coarse axis of `coarse_extent` voxels with
/// factor `f` (> 1): the first coarse voxel read (absolute) and the weights of it and the next
/// (one weight where the edge clamps both to the same voxel).
pub(crate) fn upsample_taps(f: u64, coarse_extent: u64, x: u64) -> (u64, Vec<f64>) {
    let top = coarse_extent - 1;
    let u = (x as f64 - (f as f64 - 1.0) / 2.0) / f as f64;
    let i0 = u.floor();
    let t = u - i0;
    let clamp = |i: f64| (i.max(0.0) as u64).min(top);
    let (a0, a1) = (clamp(i0), clamp(i0 + 1.0));
    if a0 == a1 {
        (a0, vec![1.0])
    } else {
        (a0, vec![1.0 - t, t])
    }
}

/// Upsamples the coarse level (box `coarse` starting at `coarse_start`, whole level shape
/// `coarse_shape`) onto the fine-level box `out`, in f64.
pub fn upsample(
    coarse: &ArrayViewD<'_, f32>,
    coarse_start: &[u64],
    coarse_shape: &[u64],
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<f64> {
    let mut cur = coarse.mapv(f64::from);
    for a in 0..out.len() {
        let f = factor[a];
        if f == 1 {
            let lo = (out[a].start - coarse_start[a]) as usize;
            let n = (out[a].end - out[a].start) as usize;
            cur = cur
                .slice_axis(Axis(a), ndarray::Slice::from(lo..lo + n))
                .to_owned();
            continue;
        }
        let outputs: Vec<(u64, Vec<f64>)> = out[a]
            .clone()
            .map(|x| upsample_taps(f, coarse_shape[a], x))
            .collect();
        cur = weigh_axis(&cur, a, coarse_start[a], &outputs);
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src<'a, T>(v: &'a ArrayD<T>, start: &'a [u64], shape: &'a [u64]) -> Source<'a, T> {
        Source {
            values: v.view(),
            start,
            level_shape: shape,
        }
    }

    #[test]
    fn mean_of_odd_sizes_hand_checked() {
        // 3 x 5, factor 2: level shape 2 x 3; edge blocks are partial and not darkened.
        let a = ArrayD::from_shape_vec(
            IxDyn(&[3, 5]),
            vec![
                1.0f32, 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.,
            ],
        )
        .unwrap();
        let m: ArrayD<f32> = reduce_mean(&src(&a, &[0, 0], &[3, 5]), &[2, 2], &[0..2, 0..3]);
        let expect = [
            (1. + 2. + 6. + 7.) / 4.,
            (3. + 4. + 8. + 9.) / 4.,
            (5. + 10.) / 2.,
            (11. + 12.) / 2.,
            (13. + 14.) / 2.,
            15.,
        ];
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), expect);
        assert_eq!(next_shape(&[3, 5], &[2, 2]), vec![2, 3]);
    }

    #[test]
    fn a_nan_result_is_the_one_nan_whatever_its_payload() {
        let odd = f64::from_bits(0xfff8_0000_0000_0123);
        assert_eq!(round_to::<f32>(odd).to_bits(), f32::NAN.to_bits());
        assert_eq!(round_to::<f64>(odd).to_bits(), f64::NAN.to_bits());
        assert_eq!(round_to::<u16>(odd), 0);
    }

    #[test]
    fn integer_means_round_to_nearest_halves_away_from_zero() {
        let a = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![1u8, 2, 2, 2]).unwrap();
        let m: ArrayD<u8> = reduce_mean(&src(&a, &[0, 0], &[1, 4]), &[1, 2], &[0..1, 0..2]);
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), vec![2, 2]); // 1.5 -> 2, 2 -> 2
        let b = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![-1i16, -2, 5]).unwrap();
        let m: ArrayD<i16> = reduce_mean(&src(&b, &[0, 0], &[1, 3]), &[1, 3], &[0..1, 0..1]);
        assert_eq!(m[[0, 0]], 1); // 2/3 -> 1
        let c = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![-1i16, -2]).unwrap();
        let m: ArrayD<i16> = reduce_mean(&src(&c, &[0, 0], &[1, 2]), &[1, 2], &[0..1, 0..1]);
        assert_eq!(m[[0, 0]], -2); // -1.5 -> -2
    }

    #[test]
    fn mode_takes_the_most_frequent_and_ties_to_the_smallest() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 6]), vec![3u16, 3, 5, 5, 9, 1, 3, 7, 5, 1, 1, 9])
            .unwrap();
        let m = reduce_mode(&src(&a, &[0, 0], &[2, 6]), &[2, 2], &[0..1, 0..3]);
        // blocks {3,3,3,7} -> 3; {5,5,5,1} -> 5; {9,1,1,9} tie 1/9 -> 1
        assert_eq!(m.iter().copied().collect::<Vec<_>>(), vec![3, 5, 1]);
    }

    #[test]
    fn a_box_gives_the_same_bits_as_the_whole_level() {
        let shape = [7u64, 9, 11];
        let a = ArrayD::from_shape_fn(IxDyn(&[7, 9, 11]), |i| {
            ((i[0] * 131 + i[1] * 17 + i[2] * 7) % 23) as f32 * 0.37
        });
        let f = [2, 2, 3];
        let up = next_shape(&shape, &f);
        let whole: Vec<Range<u64>> = up.iter().map(|&n| 0..n).collect();
        let boxed = [1..3, 2..5, 1..4];
        for method in [Method::Mean, Method::Gaussian] {
            let run = |out: &[Range<u64>]| -> ArrayD<f32> {
                // Give exactly the input range the box needs.
                let need: Vec<Range<u64>> = (0..3)
                    .map(|a| input_range(method, f[a], shape[a], &out[a]))
                    .collect();
                let mut v = a.view();
                for (ax, r) in need.iter().enumerate() {
                    v.slice_axis_inplace(
                        Axis(ax),
                        ndarray::Slice::from(r.start as usize..r.end as usize),
                    );
                }
                let owned = v.to_owned();
                let start: Vec<u64> = need.iter().map(|r| r.start).collect();
                let s = src(&owned, &start, &shape);
                match method {
                    Method::Mean => reduce_mean(&s, &f, out),
                    _ => reduce_gaussian(&s, &f, out),
                }
            };
            let full = run(&whole);
            let part = run(&boxed);
            let cut = full.slice(ndarray::s![1..3, 2..5, 1..4]).into_dyn();
            assert_eq!(part, cut, "{method:?}");
        }
    }

    #[test]
    fn gaussian_of_a_constant_is_the_constant_and_weights_are_symmetric() {
        let a = ArrayD::from_elem(IxDyn(&[9, 10]), 4.25f64);
        let g = reduce_gaussian_f64(&src(&a, &[0, 0], &[9, 10]), &[2, 2], &[0..5, 0..5]);
        assert!(g.iter().all(|&x| (x - 4.25).abs() < 1e-12));
        let (first, w) = taps(2, 100, 10);
        assert_eq!(first, 18); // centre 20.5, radius 8/3: taps 18..=23
        assert_eq!(w.len(), 6);
        for k in 0..3 {
            assert!((w[k] - w[5 - k]).abs() < 1e-15);
        }
    }

    #[test]
    fn upsampling_interpolates_between_centres_and_clamps_at_edges() {
        let c = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![0.0f32, 4.0, 8.0]).unwrap();
        let u = upsample(&c.view(), &[0, 0], &[1, 3], &[1, 2], &[0..1, 0..6]);
        // fine x at coarse position (x - 0.5) / 2: -0.25, 0.25, 0.75, 1.25, 1.75, 2.25
        assert_eq!(
            u.iter().copied().collect::<Vec<_>>(),
            vec![0.0, 1.0, 3.0, 5.0, 7.0, 8.0]
        );
        assert_eq!(upsample_range(2, 3, &(0..6)), 0..3);
        assert_eq!(upsample_range(2, 3, &(2..4)), 0..3);
        assert_eq!(upsample_range(2, 3, &(4..5)), 1..3);
    }
}
