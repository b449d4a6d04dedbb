//! Pyramid kernels: one level from the one below, over a box, and the upsampling that the
//! Laplacian difference maps are taken against. Pure functions on ndarray arrays.
//!
//! Every function computes the voxels of an output box from a box of its input level that
//! covers everything they depend on ([`input_range`]), and the value of a voxel depends only
//! on the input values and its own position, never on the box: a level is the same, bit for
//! bit, however it is cut into units or ranks.
//!
//! Definitions (per axis, factor `f`, input extent `D`; level shape `ceil(D / f)`):
//! - `mean`: output voxel `i` covers input voxels `f*i .. min(f*(i+1), D)` on each axis. For
//!   integer types the value is the exact mean: the block's sum as a 128-bit integer divided
//!   by its count, rounded to the nearest integer with halves away from zero (for sums below
//!   2^52 this is the f64 mean's rounding bit for bit, so ordinary levels keep their bytes;
//!   beyond that the f64 sum dropped low bits and turned blocks at the type's maximum into 0).
//!   For floats it is their sum in f64, taken in C order over the block, divided by their
//!   count, then rounded to nearest; a sum that overflows f64 while every value is finite is
//!   taken again with every value times 2^-64 (exact, the same roundings) and the mean scaled
//!   back, at most the largest finite f64. A partial block at the far edge is the mean of the
//!   voxels it covers.
//! - `mode`: the most frequent value of the same block; ties go to the smallest value.
//! - `gaussian`: a Gaussian of sigma `f / 3` (scikit-image's `pyramid_reduce`) centred on the
//!   block centre `f*i + (f-1)/2`, truncated at 4 sigma, normalised over the taps inside the
//!   array (no padding, no reflection), applied axis by axis in f64 (axis 0 first), rounded
//!   once at the end (integers: saturated to the type's range, where f64 rounding of values
//!   near a 64-bit maximum lands just past it; 64-bit integers beyond 2^53 keep f64's 53
//!   significant bits, as the definition's f64 says). A tap sum that overflows f64 while its
//!   values are finite is taken again with every product halved and doubled back, at most
//!   the largest finite f64. The block centre is the mean's, so both share one OME
//!   translation.
//! - upsampling (Laplacian): multilinear interpolation at voxel centres; level `l` voxel `x`
//!   sits at `(x - (f-1)/2) / f` in level `l+1` indices, clamped to the edge voxels.

use std::ops::Range;

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::grid::{for_each_index, row_major_strides};
use crate::io::Element;

use super::separable::{self, AxisTaps};

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
/// (halves away from zero), saturated to the type's range. A normalised Gaussian of values of
/// a type stays inside its range, but in f64 a value near a 64-bit integer's maximum rounds
/// to 2^63 or 2^64, one past it: that is the maximum, not a failed cast's 0.
pub fn round_to<T: Element>(x: f64) -> T {
    if x.is_nan() {
        // One NaN whatever the payload (f32::NAN / f64::NAN; 0 for integers, which cannot
        // get here): CPUs and GPUs propagate NaN payloads differently.
        return <T as num_traits::NumCast>::from(f64::NAN).unwrap_or_default();
    }
    let x = if T::DTYPE.is_float() { x } else { x.round() };
    <T as num_traits::NumCast>::from(x).unwrap_or_else(|| {
        if x > 0.0 {
            T::max_value()
        } else {
            T::min_value()
        }
    })
}

/// The exact mean of an integer block from its sum and count: the quotient rounded to the
/// nearest integer, halves away from zero (reduce.cuh's `tessera_mean_round` twin).
pub fn integer_mean(sum: i128, count: u64) -> i128 {
    let n = i128::from(count.max(1));
    let (q, r) = (sum / n, sum % n);
    if r.unsigned_abs() >= n.unsigned_abs() - r.unsigned_abs() {
        q + sum.signum()
    } else {
        q
    }
}

/// The mean of `count` finite-or-not f64 values whose plain sum `sum` overflowed: the values
/// are summed again times 2^-64 (exact for all but values below 2^-958, whose bits cannot
/// reach a sum beyond f64's range), divided by the count and scaled back; a result past
/// f64's range is the largest finite f64 of its sign. Values holding an infinity keep the
/// infinite (or NaN) mean they had.
fn mean_past_overflow(values: impl Iterator<Item = f64>, count: usize) -> f64 {
    const DOWN: f64 = 1.0 / 18_446_744_073_709_551_616.0; // 2^-64
    const UP: f64 = 18_446_744_073_709_551_616.0;
    let mut scaled = 0.0f64;
    for v in values {
        scaled += v * DOWN;
    }
    saturate_finite(scaled / count as f64 * UP, scaled)
}

/// `x`, except that where `x` is infinite only because it was scaled back from the finite
/// `scaled` it is the largest finite f64 of its sign.
pub(super) fn saturate_finite(x: f64, scaled: f64) -> f64 {
    if x.is_infinite() && scaled.is_finite() {
        f64::MAX.copysign(x)
    } else {
        x
    }
}

/// Computes a level over the output box `out` in slabs along one of its axes but the last
/// (rows stay whole), on the rayon pool, and joins the slabs in order. Each kernel computes
/// every output voxel from its own block or taps, whatever box it is asked for, so a voxel is
/// computed by one thread exactly as in a single call over the whole box: the bits do not
/// depend on the thread count. Two slabs per thread even out uneven slabs.
pub fn in_slabs<U: Clone + Send + Sync>(
    out: &[Range<u64>],
    level: impl Fn(&[Range<u64>]) -> ArrayD<U> + Sync,
) -> ArrayD<U> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    // The first axis long enough for two slabs per thread (passes along earlier axes would be
    // repeated for every slab), else the longest; never the last (rows stay whole).
    let leading = 0..out.len().saturating_sub(1);
    let extent_of = |a: usize| out[a].end - out[a].start;
    let axis = leading
        .clone()
        .find(|&a| extent_of(a) >= 2 * threads as u64)
        .or_else(|| leading.max_by_key(|&a| (extent_of(a), std::cmp::Reverse(a))));
    let Some(axis) = axis.filter(|_| threads > 1) else {
        return level(out);
    };
    let extent = out[axis].end - out[axis].start;
    let parts = (2 * threads as u64).min(extent);
    if parts < 2 {
        return level(out);
    }
    let slabs: Vec<Vec<Range<u64>>> = (0..parts)
        .map(|p| {
            let mut slab = out.to_vec();
            let start = out[axis].start;
            slab[axis] = start + extent * p / parts..start + extent * (p + 1) / parts;
            slab
        })
        .collect();
    let pieces: Vec<ArrayD<U>> = slabs.par_iter().map(|slab| level(slab)).collect();
    let views: Vec<ArrayViewD<'_, U>> = pieces.iter().map(|p| p.view()).collect();
    // The next level's kernels read C-order boxes.
    crate::grid::join_c_order(axis, &views)
}

/// An input box: values (C order) and where the box starts in its level.
pub struct Source<'a, T> {
    pub values: ArrayViewD<'a, T>,
    pub start: &'a [u64],
    /// The whole level's shape (for edge clamping and partial blocks).
    pub level_shape: &'a [u64],
}

impl<T> Source<'_, T> {
    /// The values, in C order (how every pyramid kernel takes its box).
    fn c_order(&self) -> &[T] {
        self.values
            .as_slice()
            .expect("pyramid kernels take C-order boxes")
    }

    /// The box as the separable passes take it.
    fn boxed(&self) -> separable::Boxed<'_, T> {
        separable::Boxed {
            values: self.c_order(),
            start: self.start,
            shape: self.values.shape(),
        }
    }
}

/// Sums the values of each block of the input rows at offsets `rows` (each `len` values,
/// blocks `fx` wide along them) into `sums` with `add`, and counts them into `counts`.
fn sum_blocks<T: Copy, S: Default + Clone>(
    values: &[T],
    (rows, len, fx): (&[usize], usize, usize),
    sums: &mut [S],
    counts: &mut [usize],
    add: impl Fn(&mut S, T),
) {
    sums.fill(S::default());
    counts.fill(0);
    for &off in rows {
        for ((s, c), chunk) in sums
            .iter_mut()
            .zip(counts.iter_mut())
            .zip(values[off..off + len].chunks(fx))
        {
            for &v in chunk {
                add(s, v);
            }
            *c += chunk.len();
        }
    }
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

/// The mean level over the output box `out` (absolute ranges in the new level): exact for
/// integer types, f64 for floats (module docs). In slabs on the thread pool ([`in_slabs`]).
pub fn reduce_mean<T: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<T> {
    in_slabs(out, |slab| reduce_mean_box(src, factor, slab))
}

fn reduce_mean_box<T: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<T> {
    if !T::DTYPE.is_float() {
        // 128-bit sums (no integer type's block can overflow them: a block has fewer than 2^63
        // voxels of at most 2^64), the exact rounded quotient.
        let add = |s: &mut i128, v: T| *s += v.to_i128().expect("integer elements fit in i128");
        return mean_by_sums(src, factor, out, add, |res, sums, counts, _, _| {
            for ((o, &s), &c) in res.iter_mut().zip(sums).zip(counts) {
                *o = <T as num_traits::NumCast>::from(integer_mean(s, c as u64))
                    .expect("the mean of a type's values is of that type");
            }
        });
    }
    // Floats: f64 sums in C order, taken again scaled where one overflows.
    let values = src.c_order();
    let fx = factor[out.len() - 1] as usize;
    let as_f64 = |v: T| v.to_f64().unwrap_or(f64::NAN);
    let add = |s: &mut f64, v: T| *s += as_f64(v);
    mean_by_sums(src, factor, out, add, |res, sums, counts, rows, len| {
        for (x, ((o, &s), &c)) in res.iter_mut().zip(sums).zip(counts).enumerate() {
            let mean = if s.is_infinite() {
                let block = rows
                    .iter()
                    .flat_map(|&off| values[off + x * fx..off + (x * fx + fx).min(len)].iter());
                mean_past_overflow(block.map(|&v| as_f64(v)), c)
            } else {
                s / c as f64
            };
            *o = round_to::<T>(mean);
        }
    })
}

/// The mean level of the box `out` through per-block sums of type `S`: `add` sums each value
/// of a block in, and `finish(row's output voxels, sums, counts, the row's input offsets, their
/// length)` turns an output row's sums into its values. The values of output voxel x's block
/// are the chunks `fx` wide at x in every input row of the row's offsets.
fn mean_by_sums<T: Element, S: Default + Clone>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
    add: impl Fn(&mut S, T),
    mut finish: impl FnMut(&mut [T], &[S], &[usize], &[usize], usize),
) -> ArrayD<T> {
    let values = src.c_order();
    let last = out.len() - 1;
    let fx = factor[last] as usize;
    let shape: Vec<usize> = out.iter().map(|r| (r.end - r.start) as usize).collect();
    let mut result = ArrayD::<T>::default(IxDyn(&shape));
    let width = shape[last];
    let mut sums = vec![S::default(); width];
    let mut counts = vec![0usize; width];
    let res = result.as_slice_mut().expect("fresh array");
    let mut row = 0usize;
    block_rows(src, factor, out, |_, rows, xr| {
        let len = (xr.end - xr.start) as usize;
        sum_blocks(values, (rows, len, fx), &mut sums, &mut counts, &add);
        finish(
            &mut res[row * width..(row + 1) * width],
            &sums,
            &counts,
            rows,
            len,
        );
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
    in_slabs(out, |slab| reduce_mode_box(src, factor, slab))
}

fn reduce_mode_box<T: Element + PartialOrd>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<T> {
    let nd = out.len();
    let last = nd - 1;
    let shape: Vec<usize> = out.iter().map(|r| (r.end - r.start) as usize).collect();
    let mut result = ArrayD::<T>::default(IxDyn(&shape));
    let values = src.c_order();
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

/// The Gaussian level over the output box `out`, as f64 before rounding.
pub fn reduce_gaussian_f64<T: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<f64> {
    gaussian_box(src, factor, out, |values, shape| {
        ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).expect("one value per voxel")
    })
}

/// The Gaussian level over the output box `out`, rounded to `U`.
pub fn reduce_gaussian<T: Element, U: Element>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<U> {
    in_slabs(out, |slab| {
        gaussian_box(src, factor, slab, |values, shape| {
            let rounded = values.iter().map(|&x| round_to::<U>(x)).collect();
            ArrayD::from_shape_vec(IxDyn(shape), rounded).expect("one value per voxel")
        })
    })
}

/// The Gaussian level over the output box `out` in f64, handed to `finish` (C order, shape):
/// the input box the output needs, filtered along every axis with a factor above 1.
fn gaussian_box<T: Element, R>(
    src: &Source<'_, T>,
    factor: &[u64],
    out: &[Range<u64>],
    finish: impl FnOnce(&[f64], &[usize]) -> R,
) -> R {
    let need: Vec<Range<u64>> = (0..out.len())
        .map(|a| input_range(Method::Gaussian, factor[a], src.level_shape[a], &out[a]))
        .collect();
    let passes: Vec<(usize, AxisTaps)> = (0..out.len())
        .filter(|&a| factor[a] > 1)
        .map(|a| {
            let outputs = out[a]
                .clone()
                .map(|i| taps(factor[a], src.level_shape[a], i));
            (a, AxisTaps::new(outputs, need[a].start))
        })
        .collect();
    separable::filter(&src.boxed(), &need, &passes, finish)
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

/// A coarse level's box (`values`, C order, starting at `start`) and the whole level's shape.
pub struct Coarse<'a> {
    pub values: &'a ArrayViewD<'a, f32>,
    pub start: &'a [u64],
    pub level_shape: &'a [u64],
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
    let coarse = Coarse {
        values: coarse,
        start: coarse_start,
        level_shape: coarse_shape,
    };
    in_slabs(out, |slab| {
        upsample_box(&coarse, factor, slab, |values, shape| {
            ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).expect("one value per voxel")
        })
    })
}

/// The Laplacian's difference map over the fine-level box `out`: `fine - upsample(coarse)`,
/// in f64, rounded once to f32. `fine` is a box of the fine level starting at `fine_start`
/// that covers `out`.
pub fn laplacian_difference(
    fine: &ArrayViewD<'_, f32>,
    fine_start: &[u64],
    coarse: &Coarse<'_>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<f32> {
    with_upsampled(fine, fine_start, coarse, factor, out, |f, u| {
        round_to::<f32>(f64::from(f) - u)
    })
}

/// `pyramid reconstruct`'s step over the fine-level box `out`: `difference +
/// upsample(coarse)`, in f64, then `as f32` (a NaN keeps its payload). `difference` is a box
/// of the fine level's difference map starting at `fine_start` that covers `out`.
pub fn laplacian_sum(
    difference: &ArrayViewD<'_, f32>,
    fine_start: &[u64],
    coarse: &Coarse<'_>,
    factor: &[u64],
    out: &[Range<u64>],
) -> ArrayD<f32> {
    with_upsampled(difference, fine_start, coarse, factor, out, |d, u| {
        (f64::from(d) + u) as f32
    })
}

/// `combine(fine value, upsampled value)` over the fine-level box `out`, taken row by row as
/// each slab's upsampling finishes (no f64 copy of the upsampled box). `fine` is a box
/// starting at `fine_start` that covers `out`.
fn with_upsampled(
    fine: &ArrayViewD<'_, f32>,
    fine_start: &[u64],
    coarse: &Coarse<'_>,
    factor: &[u64],
    out: &[Range<u64>],
    combine: impl Fn(f32, f64) -> f32 + Sync,
) -> ArrayD<f32> {
    let fine_values = fine.as_slice().expect("pyramid kernels take C-order boxes");
    let strides = crate::grid::row_major_strides(fine.shape());
    in_slabs(out, |slab| {
        upsample_box(coarse, factor, slab, |up, shape| {
            let mut combined = Vec::with_capacity(up.len());
            let width = shape.last().copied().unwrap_or(1);
            let mut row_start = Vec::with_capacity(shape.len());
            crate::grid::for_each_index(&slab[..slab.len().saturating_sub(1)], |at| {
                row_start.clear();
                row_start.extend(at.iter().copied());
                row_start.push(slab.last().map_or(0, |r| r.start));
                let off: usize = row_start
                    .iter()
                    .zip(fine_start)
                    .zip(&strides)
                    .map(|((&x, &s), &st)| (x - s) as usize * st)
                    .sum();
                let up_row = &up[combined.len()..combined.len() + width];
                combined.extend(
                    up_row
                        .iter()
                        .zip(&fine_values[off..off + width])
                        .map(|(&u, &f)| combine(f, u)),
                );
            });
            ArrayD::from_shape_vec(IxDyn(shape), combined).expect("one value per voxel")
        })
    })
}

/// The upsampling of `coarse` over the fine-level box `out` in f64, handed to `finish` (C
/// order, shape): the coarse box it reads, filtered along every axis with a factor above 1
/// (taken as it is along the others).
fn upsample_box<R>(
    coarse: &Coarse<'_>,
    factor: &[u64],
    out: &[Range<u64>],
    finish: impl FnOnce(&[f64], &[usize]) -> R,
) -> R {
    let need: Vec<Range<u64>> = (0..out.len())
        .map(|a| upsample_range(factor[a], coarse.level_shape[a], &out[a]))
        .collect();
    let passes: Vec<(usize, AxisTaps)> = (0..out.len())
        .filter(|&a| factor[a] > 1)
        .map(|a| {
            let f = factor[a];
            let outputs = out[a]
                .clone()
                .map(|x| upsample_taps(f, coarse.level_shape[a], x));
            (a, AxisTaps::new(outputs, need[a].start))
        })
        .collect();
    let values = coarse
        .values
        .as_slice()
        .expect("pyramid kernels take C-order boxes");
    let boxed = separable::Boxed {
        values,
        start: coarse.start,
        shape: coarse.values.shape(),
    };
    separable::filter(&boxed, &need, &passes, finish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;

    fn src<'a, T>(v: &'a ArrayD<T>, start: &'a [u64], shape: &'a [u64]) -> Source<'a, T> {
        Source {
            values: v.view(),
            start,
            level_shape: shape,
        }
    }

    fn bits32(a: &ArrayD<f32>) -> Vec<u32> {
        a.iter().map(|x| x.to_bits()).collect()
    }

    fn bits64(a: &ArrayD<f64>) -> Vec<u64> {
        a.iter().map(|x| x.to_bits()).collect()
    }

    /// The definition, plainly: `out[i] = 0.0 + w_i[0] * x[first_i] + ...` along `axis`,
    /// whole (hyper)planes at a time, the overflowing sums taken again halved. The reference
    /// for the separable passes (and the arithmetic reduce.cuh's harness is checked against).
    fn weigh_axis_reference(
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
        for (mut at, x) in out.indexed_iter_mut() {
            if x.is_infinite() {
                let (first, w) = &outputs[at[axis]];
                let mut half = 0.0f64;
                for (k, &wk) in w.iter().enumerate() {
                    at[axis] = (first + k as u64 - in_start) as usize;
                    half += wk * input[&at] * 0.5;
                }
                *x = saturate_finite(half * 2.0, half);
            }
        }
        out
    }

    /// The separable passes give the reference's bits along every axis, for Gaussian and
    /// upsampling taps: signed zeros, subnormals, infinities, NaN, sums that overflow f64,
    /// rows longer than a tile, a box starting inside its level and a sub-box gathered from
    /// a larger one.
    #[test]
    fn separable_passes_give_the_definitions_bits() {
        let mut next = crate::grid::xorshift(0x2545_f491_4f6c_dd1d);
        let special = [
            0.0,
            -0.0,
            5e-324,
            -1e-310,
            1.7e308,
            -1.7e308,
            f64::INFINITY,
            f64::NAN,
            1.0 / 3.0,
        ];
        for shape in [
            [3usize, 4, 17],
            [1, 1, 9],
            [2, 5, 2],
            [7, 3, 600],
            [9, 2, 3],
        ] {
            let input = ArrayD::from_shape_fn(IxDyn(&shape), |_| match next() % 4 {
                0 => special[(next() % special.len() as u64) as usize],
                _ => (next() % 2001) as f64 / 7.0 - 140.0,
            });
            let start = [3u64, 1, 2];
            // A sub-box one voxel in from the front of the first axis, when it has room.
            let skip = usize::from(shape[0] > 1);
            let need: Vec<Range<u64>> = (0..3)
                .map(|a| start[a] + (a == 0) as u64 * skip as u64..start[a] + shape[a] as u64)
                .collect();
            let sub = input
                .slice_axis(Axis(0), ndarray::Slice::from(skip..))
                .to_owned();
            for axis in 0..3 {
                let extent = sub.shape()[axis] as u64;
                let (lo, level) = (need[axis].start, need[axis].end + 5);
                let gaussian: Vec<(u64, Vec<f64>)> = (0..level.div_ceil(2))
                    .map(|i| taps(2, level, i))
                    .filter(|(first, w)| *first >= lo && first + w.len() as u64 <= lo + extent)
                    .collect();
                let up: Vec<(u64, Vec<f64>)> = (0..2 * extent)
                    .map(|x| upsample_taps(2, extent, x))
                    .map(|(first, w)| (first + lo, w))
                    .collect();
                for outputs in [&gaussian, &up] {
                    let expect = weigh_axis_reference(&sub, axis, lo, outputs);
                    let taps = AxisTaps::new(outputs.iter().cloned(), lo);
                    let boxed = separable::Boxed {
                        values: input.as_slice().unwrap(),
                        start: &start,
                        shape: &shape,
                    };
                    let got = separable::filter(&boxed, &need, &[(axis, taps)], |v, s| {
                        ArrayD::from_shape_vec(IxDyn(s), v.to_vec()).unwrap()
                    });
                    assert_eq!(got.shape(), expect.shape(), "{shape:?} axis {axis}");
                    assert_eq!(bits64(&got), bits64(&expect), "{shape:?} axis {axis}");
                }
            }
        }
    }

    /// Every level kernel gives the same bits on 1 thread and on 3 (slabs of a sub-box of a
    /// level, partial blocks at the far edge, uneven slabs).
    #[test]
    fn levels_do_not_depend_on_the_thread_count() {
        let shape = [9u64, 13, 11];
        let dims: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
        let mut next = crate::grid::xorshift(0x9e37_79b9_7f4a_7c15);
        let ints = ArrayD::from_shape_fn(IxDyn(&dims), |_| (next() % 7) as u16);
        let floats = ArrayD::from_shape_fn(IxDyn(&dims), |_| (next() % 1000) as f32 / 7.0);
        let factor = [2u64, 2, 2];
        let start = [0u64, 0, 0];
        let coarse = next_shape(&shape, &factor);
        let out: Vec<Range<u64>> = coarse.iter().map(|&n| 0..n).collect();
        let fine: Vec<Range<u64>> = vec![1..9, 0..13, 2..11];
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let i = src(&ints, &start, &shape);
                let f = src(&floats, &start, &shape);
                let mean_i: ArrayD<u16> = reduce_mean(&i, &factor, &out);
                let mean_f: ArrayD<f32> = reduce_mean(&f, &factor, &out);
                let mode_i: ArrayD<u16> = reduce_mode(&i, &factor, &out);
                let gauss_f: ArrayD<f32> = reduce_gaussian(&f, &factor, &out);
                let gauss_i: ArrayD<u16> = reduce_gaussian(&i, &factor, &out);
                let level: ArrayD<f32> = reduce_gaussian(&f, &factor, &out);
                let up = upsample(&level.view(), &[0, 0, 0], &coarse, &factor, &fine);
                (mean_i, mean_f, mode_i, gauss_f, gauss_i, up)
            })
        };
        let one = run(1);
        let three = run(3);
        assert_eq!(one.0, three.0, "mean u16");
        assert_eq!(bits32(&one.1), bits32(&three.1), "mean f32");
        assert_eq!(one.2, three.2, "mode u16");
        assert_eq!(bits32(&one.3), bits32(&three.3), "gaussian f32");
        assert_eq!(one.4, three.4, "gaussian u16");
        assert_eq!(bits64(&one.5), bits64(&three.5), "upsample");
        assert_eq!(one.5.shape(), &[8, 13, 9]);
        // One plane thick: slabs along a later axis, joined in C order (the next level's
        // kernels read C-order boxes).
        let thin: Vec<Range<u64>> = vec![0..1, 0..7, 0..6];
        let slabbed = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| reduce_mean::<f32>(&src(&floats, &start, &shape), &factor, &thin));
        assert!(slabbed.is_standard_layout());
        let whole = reduce_mean_box::<f32>(&src(&floats, &start, &shape), &factor, &thin);
        assert_eq!(bits32(&slabbed), bits32(&whole));
    }

    /// `pyramid reconstruct`'s fused step gives the bits of the plain one (upsample to f64,
    /// add the difference, `as f32`) on 1 thread and on 3, for a sub-box of the fine level
    /// and a NaN with a payload in the difference map (kept, as `as f32` keeps it).
    #[test]
    fn laplacian_sum_is_upsample_then_add() {
        let shape = [9u64, 13, 11];
        let factor = [2u64, 1, 2];
        let coarse_shape = next_shape(&shape, &factor);
        let cdims: Vec<usize> = coarse_shape.iter().map(|&n| n as usize).collect();
        let dims: Vec<usize> = shape.iter().map(|&n| n as usize).collect();
        let mut next = crate::grid::xorshift(0x51ed_270b_a3c4_1f09);
        let coarse = ArrayD::from_shape_fn(IxDyn(&cdims), |_| (next() % 1000) as f32 / 3.0);
        let mut diff = ArrayD::from_shape_fn(IxDyn(&dims), |_| (next() % 200) as f32 / 7.0 - 14.0);
        diff[[2, 3, 4]] = f32::from_bits(0x7fc0_1234);
        let origin = [0u64; 3];
        let out: Vec<Range<u64>> = vec![1..9, 0..13, 2..11];
        let plain = {
            let up = upsample(&coarse.view(), &origin, &coarse_shape, &factor, &out);
            let mut sum = diff
                .slice(ndarray::s![1..9, 0..13, 2..11])
                .to_owned()
                .into_dyn();
            ndarray::Zip::from(&mut sum)
                .and(&up)
                .for_each(|d, &u| *d = (f64::from(*d) + u) as f32);
            sum
        };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let fused = pool.install(|| {
                let c = Coarse {
                    values: &coarse.view(),
                    start: &origin,
                    level_shape: &coarse_shape,
                };
                laplacian_sum(&diff.view(), &origin, &c, &factor, &out)
            });
            assert_eq!(bits32(&fused), bits32(&plain), "{threads} thread(s)");
            assert_eq!(
                fused[[1, 3, 2]].to_bits(),
                0x7fc0_1234,
                "the NaN's payload kept"
            );
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

    /// Mean of one block of `values` (a 1 x n level, factor n), through reduce_mean.
    fn block_mean<T: Element>(values: &[T]) -> T {
        let n = values.len() as u64;
        let a = ArrayD::from_shape_vec(IxDyn(&[1, values.len()]), values.to_vec()).unwrap();
        reduce_mean(&src(&a, &[0, 0], &[1, n]), &[1, n], &[0..1, 0..1])[[0, 0]]
    }

    /// The exact mean, rounded half away from zero, by another formula:
    /// floor((2|s| + n) / 2n) with the sign put back.
    fn reference_mean(values: &[i128]) -> i128 {
        let (s, n) = (values.iter().sum::<i128>(), values.len() as i128);
        let m = (2 * s.abs() + n) / (2 * n);
        if s < 0 {
            -m
        } else {
            m
        }
    }

    macro_rules! integer_extremes {
        ($($t:ty),*) => {$({
            let (lo, hi) = (<$t>::MIN, <$t>::MAX);
            let mut blocks: Vec<Vec<$t>> = vec![
                vec![hi; 4],
                vec![hi, hi - 1],
                vec![hi, hi - 1, hi - 1],
                vec![hi - 1; 3],
                vec![lo; 8],
                vec![lo, lo + 1],
                vec![lo, hi],
                vec![lo, hi, hi],
                vec![hi, 0, 0],
                vec![0, 1, 1, 0],
            ];
            if std::mem::size_of::<$t>() == 8 {
                let big = ((1u64 << 53) + 1) as $t;
                blocks.push(vec![big; 8]);
                blocks.push(vec![big, big + 2]);
                blocks.push(vec![hi; 27]);
            }
            for b in &blocks {
                let wide: Vec<i128> = b.iter().map(|&v| v as i128).collect();
                let want = reference_mean(&wide);
                assert_eq!(block_mean(b) as i128, want, "{} {b:?}", stringify!($t));
            }
        })*};
    }

    #[test]
    fn integer_means_are_exact_at_every_types_extremes() {
        // f64 sums turned blocks at a 64-bit maximum into 0 and 2^53 + 1 into 2^53.
        integer_extremes!(u8, u16, u32, u64, i8, i16, i32, i64);
        let big = (1u64 << 53) + 1;
        assert_eq!(block_mean(&[big; 4]), big);
        assert_eq!(block_mean(&[u64::MAX; 4]), u64::MAX);
        assert_eq!(block_mean(&[i64::MAX, i64::MAX - 1]), i64::MAX); // .5 away from zero
        assert_eq!(block_mean(&[i64::MIN, i64::MIN + 1]), i64::MIN);
        assert_eq!(block_mean(&[i64::MIN, i64::MAX]), -1); // -0.5
    }

    #[test]
    fn integer_means_keep_the_f64_means_bits_for_ordinary_values() {
        // Sums below 2^52: the exact mean rounds as the f64 sum / count did.
        let mut next = crate::grid::xorshift(99);
        for case in 0..2000 {
            let n = 1 + (next() % 27) as usize;
            let small = case % 2 == 0;
            let vals: Vec<i64> = (0..n)
                .map(|_| {
                    let v = next() as i64;
                    if small {
                        v % 7
                    } else {
                        v >> 33
                    }
                })
                .collect();
            let old = |v: &[i64]| {
                let sum: f64 = v.iter().map(|&x| x as f64).sum();
                (sum / v.len() as f64).round()
            };
            let i32s: Vec<i32> = vals.iter().map(|&v| v as i32).collect();
            assert_eq!(f64::from(block_mean(&i32s)), old(&vals), "{vals:?}");
            let u16s: Vec<u16> = vals.iter().map(|&v| v as u16).collect();
            let as_i64: Vec<i64> = u16s.iter().map(|&v| i64::from(v)).collect();
            assert_eq!(f64::from(block_mean(&u16s)), old(&as_i64), "{u16s:?}");
        }
    }

    #[test]
    fn float_means_past_f64s_range_and_in_the_subnormals() {
        let max = f64::MAX;
        // The plain sum overflows; every value is finite, so the mean is.
        assert_eq!(block_mean(&[max; 4]), max);
        assert_eq!(block_mean(&[-max; 8]), -max);
        // Not powers of two: the f64 sum and division round (as for any values), finite.
        for n in [3, 5, 7] {
            let m = block_mean(&vec![max; n]);
            assert!(m.is_finite() && (max - m) <= max * 1e-15, "{n}: {m}");
        }
        assert_eq!(block_mean(&[max, max, -max, -max]), 0.0);
        assert_eq!(block_mean(&[max, max * 0.5]), max * 0.75);
        // Infinities and NaN keep the mean their definition gives.
        assert_eq!(block_mean(&[max, f64::INFINITY]), f64::INFINITY);
        assert!(block_mean(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert!(block_mean(&[max, max, f64::NAN]).is_nan());
        // Subnormals: the f64 sum is exact, the division rounds once.
        let tiny = f64::from_bits(1);
        assert_eq!(block_mean(&[tiny * 3.0, tiny]), tiny * 2.0);
        assert_eq!(
            block_mean(&[f64::MIN_POSITIVE, tiny]),
            (f64::MIN_POSITIVE + tiny) / 2.0
        );
        assert_eq!(block_mean(&[f32::MAX; 3]), f32::MAX);
        let t32 = f32::from_bits(1);
        assert_eq!(block_mean(&[t32 * 5.0, t32 * 3.0]), t32 * 4.0);
    }

    /// The Gaussian level of a constant 9 x 10 box, every voxel.
    fn gaussian_of_constant<T: Element>(v: T) -> Vec<T> {
        let a = ArrayD::from_elem(IxDyn(&[9, 10]), v);
        let g: ArrayD<T> = reduce_gaussian(&src(&a, &[0, 0], &[9, 10]), &[2, 2], &[0..5, 0..5]);
        g.into_iter().collect()
    }

    #[test]
    fn gaussians_saturate_at_the_types_extremes_instead_of_wrapping() {
        // f64 rounding of weights summing to 1 +- an ulp put 2^63 and 2^64 one past the
        // maximum, which the failed cast made 0.
        macro_rules! constant {
            ($($t:ty),*) => {$(
                for v in [<$t>::MIN, <$t>::MAX, <$t>::MAX - 1, 0 as $t, 1 as $t] {
                    let want = round_to::<$t>(v as f64);
                    let got = gaussian_of_constant(v);
                    if std::mem::size_of::<$t>() < 8 {
                        assert!(got.iter().all(|&g| g == v), "{} {v}: {got:?}", stringify!($t));
                    }
                    // 64-bit: f64's 53 bits, saturated; never 0 for a large value.
                    for g in got {
                        let diff = (g as i128 - want as i128).abs();
                        assert!(diff <= 4096, "{} {v}: {g}", stringify!($t));
                    }
                }
            )*};
        }
        constant!(u8, u16, u32, u64, i8, i16, i32, i64);
        assert!(gaussian_of_constant(u64::MAX)
            .iter()
            .all(|&g| g >= u64::MAX - 4096));
        assert!(gaussian_of_constant(i64::MAX)
            .iter()
            .all(|&g| g >= i64::MAX - 4096));
        assert!(gaussian_of_constant(i64::MIN)
            .iter()
            .all(|&g| g <= i64::MIN + 4096));
        // 2^53 + 1 is not an f64: the Gaussian, an f64 computation, sees 2^53 (documented).
        let big = (1u64 << 53) + 1;
        assert!(gaussian_of_constant(big)
            .iter()
            .all(|&g| g.abs_diff(big) <= 2));
        // Huge floats: every weighted sum that overflows is taken again, halved.
        for v in [f64::MAX, -f64::MAX, f64::MAX * 0.999] {
            let got = gaussian_of_constant(v);
            assert!(
                got.iter()
                    .all(|&g| g.is_finite() && (g - v).abs() <= v.abs() * 1e-15),
                "{v}: {got:?}"
            );
        }
        assert!(gaussian_of_constant(f64::INFINITY)
            .iter()
            .all(|&g| g == f64::INFINITY));
        assert!(gaussian_of_constant(f32::MAX)
            .iter()
            .all(|&g| g == f32::MAX));
        let tiny = f64::from_bits(3);
        assert!(gaussian_of_constant(tiny)
            .iter()
            .all(|&g| g > 0.0 && g < 1e-320));
    }

    #[test]
    fn rounding_saturates_to_the_type() {
        assert_eq!(round_to::<i64>(9_223_372_036_854_775_808.0), i64::MAX);
        assert_eq!(round_to::<i64>(-9_223_372_036_854_775_808.0), i64::MIN);
        assert_eq!(round_to::<i64>(-1e300), i64::MIN);
        assert_eq!(round_to::<u64>(18_446_744_073_709_551_616.0), u64::MAX);
        assert_eq!(round_to::<u64>(-3.0), 0);
        assert_eq!(round_to::<u8>(255.4), 255);
        assert_eq!(round_to::<u8>(255.5), 255);
        assert_eq!(round_to::<i8>(-128.5), -128);
        assert_eq!(round_to::<i16>(2.5), 3);
        assert_eq!(round_to::<i16>(-2.5), -3);
        assert_eq!(round_to::<f32>(1e300), f32::INFINITY);
    }

    #[test]
    fn modes_at_the_types_extremes() {
        let mode = |v: &[i64]| {
            let a = ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v.to_vec()).unwrap();
            let n = v.len() as u64;
            reduce_mode(&src(&a, &[0, 0], &[1, n]), &[1, n], &[0..1, 0..1])[[0, 0]]
        };
        assert_eq!(mode(&[i64::MAX, i64::MAX, i64::MIN, 0]), i64::MAX);
        assert_eq!(mode(&[i64::MAX, i64::MIN]), i64::MIN);
        assert_eq!(mode(&[i64::MAX - 1, i64::MAX, i64::MAX - 1]), i64::MAX - 1);
        let big = (1i64 << 53) + 1;
        assert_eq!(mode(&[big, big - 1, big]), big);
        let a = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![u64::MAX, 0, u64::MAX]).unwrap();
        assert_eq!(
            reduce_mode(&src(&a, &[0, 0], &[1, 3]), &[1, 3], &[0..1, 0..1])[[0, 0]],
            u64::MAX
        );
        let f = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![f64::NAN, f64::MAX, f64::NAN, 0.0])
            .unwrap();
        assert!(reduce_mode(&src(&f, &[0, 0], &[1, 4]), &[1, 4], &[0..1, 0..1])[[0, 0]].is_nan());
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
