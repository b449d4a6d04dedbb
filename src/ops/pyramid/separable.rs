//! Separable filters on the CPU: the Gaussian levels' and the Laplacian's upsampling passes,
//! one axis at a time over a contiguous f64 box.
//!
//! A box is first gathered from its level (converted to f64), then filtered along each axis
//! in turn. Every output value is `acc = 0.0; acc = acc + w[k] * x[k]` over its taps in order,
//! in f64 (kernel.rs' module docs and reduce.cuh's `weigh_axis_voxel` define the same sums), so
//! how the loops are arranged changes no bit:
//! - along an axis but the last, output rows are sums of whole input rows, taken a tile at a
//!   time so that the tile being summed stays in L1 while the tap rows stream past;
//! - along the last axis, each output is summed from its taps in its row.
//!
//! The two f64 buffers are taken from a small pool and handed back after the box, for the
//! next box on any thread (a fresh large buffer is a fresh mapping that the kernel faults in
//! page by page; units are computed on a new thread each, so per-thread buffers would not
//! outlive one unit).
//! A sum that overflows f64 while its values are finite is taken again with every product
//! halved and doubled back, at most the largest finite f64 (kernel.rs' `saturate_finite`).

use std::ops::Range;
use std::sync::Mutex;

use crate::io::Element;

/// Output values summed per tile along an axis but the last: 4 KiB, a sixteenth of L1.
const TILE: usize = 512;

/// Scratch buffers larger than this are dropped after use, so that an idle process keeps
/// little (a unit's box is usually far smaller).
const KEEP_BYTES: usize = 256 << 20;

/// Buffers kept for the next box: at most this many (two per box being filtered at once).
const KEEP_BUFFERS: usize = 64;

static SCRATCH: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

/// A scratch buffer from the pool (the largest kept), or a new one.
fn take_scratch() -> Vec<f64> {
    let mut pool = SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.pop().unwrap_or_default()
}

/// Hands a scratch buffer back to the pool, largest last.
fn keep_scratch(buf: Vec<f64>) {
    if buf.capacity() * 8 > KEEP_BYTES {
        return;
    }
    let mut pool = SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if pool.len() < KEEP_BUFFERS {
        let at = pool.partition_point(|b| b.capacity() <= buf.capacity());
        pool.insert(at, buf);
    }
}

/// The taps of one axis: output `i` is the sum over `k` of `weights(i)[k] * x[start(i) + k]`,
/// `x` indexed from the start of the box being filtered.
pub struct AxisTaps {
    starts: Vec<usize>,
    bounds: Vec<usize>,
    weights: Vec<f64>,
}

impl AxisTaps {
    /// From (absolute first input index, weights) per output, for a box starting at `box_start`.
    pub fn new(outputs: impl Iterator<Item = (u64, Vec<f64>)>, box_start: u64) -> AxisTaps {
        let mut taps = AxisTaps {
            starts: Vec::new(),
            bounds: vec![0],
            weights: Vec::new(),
        };
        for (first, w) in outputs {
            taps.starts.push((first - box_start) as usize);
            taps.weights.extend_from_slice(&w);
            taps.bounds.push(taps.weights.len());
        }
        taps
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn of(&self, i: usize) -> (usize, &[f64]) {
        (
            self.starts[i],
            &self.weights[self.bounds[i]..self.bounds[i + 1]],
        )
    }

    /// The outputs in runs of consecutive ones with the same number of taps.
    fn runs(&self) -> Vec<Range<usize>> {
        let count = |i: usize| self.bounds[i + 1] - self.bounds[i];
        let mut runs: Vec<Range<usize>> = Vec::new();
        for i in 0..self.len() {
            match runs.last_mut() {
                Some(r) if count(r.start) == count(i) => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    }
}

/// A C-order box of a level: its values, where it starts in the level, and its shape.
pub struct Boxed<'a, T> {
    pub values: &'a [T],
    pub start: &'a [u64],
    pub shape: &'a [usize],
}

/// Gathers `need` (absolute ranges inside `src`) as f64, filters it along each `(axis, taps)`
/// in order, and hands the result (C order) and its shape to `finish`.
pub fn filter<T: Element, R>(
    src: &Boxed<'_, T>,
    need: &[Range<u64>],
    passes: &[(usize, AxisTaps)],
    finish: impl FnOnce(&[f64], &[usize]) -> R,
) -> R {
    let (mut a, mut b) = (take_scratch(), take_scratch());
    let mut shape = gather(src, need, &mut a);
    let values = |buf: &[f64], shape: &[usize]| shape.iter().product::<usize>().min(buf.len());
    for (axis, taps) in passes {
        let len = values(&a, &shape);
        shape = pass(&a[..len], &shape, *axis, taps, &mut b);
        std::mem::swap(&mut a, &mut b);
    }
    let len = values(&a, &shape);
    let result = finish(&a[..len], &shape);
    keep_scratch(a);
    keep_scratch(b);
    result
}

/// The first `len` values of `buf`, whose contents the caller overwrites: grown (zeroed) only
/// past the most it has held, never shrunk, so a reused buffer is not zeroed again.
fn size_to(buf: &mut Vec<f64>, len: usize) -> &mut [f64] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// Copies the box `need` of `src` into `dst` as f64 (C order), a row at a time; returns its
/// shape.
fn gather<T: Element>(src: &Boxed<'_, T>, need: &[Range<u64>], dst: &mut Vec<f64>) -> Vec<usize> {
    let shape: Vec<usize> = need.iter().map(|r| (r.end - r.start) as usize).collect();
    let dst = size_to(dst, shape.iter().product());
    let Some(last) = shape.len().checked_sub(1) else {
        dst[0] = src.values[0].to_f64().unwrap_or(f64::NAN);
        return shape;
    };
    let width = shape[last];
    if width == 0 || dst.is_empty() {
        return shape;
    }
    let strides = crate::grid::row_major_strides(src.shape);
    let lo: Vec<usize> = need
        .iter()
        .zip(src.start)
        .map(|(r, &s)| (r.start - s) as usize)
        .collect();
    let mut at = vec![0usize; last]; // index of the row, leading axes
    for row in dst.chunks_exact_mut(width) {
        let off: usize = (0..last)
            .map(|a| (lo[a] + at[a]) * strides[a])
            .sum::<usize>()
            + lo[last];
        for (y, x) in row.iter_mut().zip(&src.values[off..off + width]) {
            *y = x.to_f64().unwrap_or(f64::NAN);
        }
        for a in (0..last).rev() {
            at[a] += 1;
            if at[a] < shape[a] {
                break;
            }
            at[a] = 0;
        }
    }
    shape
}

/// Filters `src` (C order, `shape`) along `axis` into `dst`; returns the new shape.
fn pass(
    src: &[f64],
    shape: &[usize],
    axis: usize,
    taps: &AxisTaps,
    dst: &mut Vec<f64>,
) -> Vec<usize> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let (n, m) = (shape[axis], taps.len());
    let mut out_shape = shape.to_vec();
    out_shape[axis] = m;
    let dst = size_to(dst, outer * m * inner);
    if dst.is_empty() {
        return out_shape;
    }
    let infinite = if inner == 1 {
        along_rows(src, n, taps, dst)
    } else {
        along_planes(src, (n, inner), taps, dst)
    };
    if infinite {
        redo_infinite(src, (n, inner), taps, dst);
    }
    out_shape
}

/// [`pass`] along the last axis: each output summed from its taps in its row, the outputs
/// taken in runs with the same number of taps (all but a few at the edges), each run's sum
/// unrolled for that number. Returns whether any output is infinite.
fn along_rows(src: &[f64], n: usize, taps: &AxisTaps, dst: &mut [f64]) -> bool {
    let m = taps.len();
    let runs = taps.runs();
    let mut infinite = false;
    for (x, y) in src.chunks_exact(n).zip(dst.chunks_exact_mut(m)) {
        for run in &runs {
            let y = &mut y[run.clone()];
            infinite |= match taps.bounds[run.start + 1] - taps.bounds[run.start] {
                1 => sum_run::<1>(x, taps, run.start, y),
                2 => sum_run::<2>(x, taps, run.start, y),
                3 => sum_run::<3>(x, taps, run.start, y),
                4 => sum_run::<4>(x, taps, run.start, y),
                5 => sum_run::<5>(x, taps, run.start, y),
                6 => sum_run::<6>(x, taps, run.start, y),
                7 => sum_run::<7>(x, taps, run.start, y),
                8 => sum_run::<8>(x, taps, run.start, y),
                _ => sum_any(x, taps, run.start, y),
            };
        }
    }
    infinite
}

/// Outputs `first ..` of a row (`y`), each with `K` taps. Returns whether any is infinite.
fn sum_run<const K: usize>(x: &[f64], taps: &AxisTaps, first: usize, y: &mut [f64]) -> bool {
    let starts = &taps.starts[first..first + y.len()];
    let weights = &taps.weights[taps.bounds[first]..taps.bounds[first] + K * y.len()];
    let mut infinite = false;
    for ((y, &at), w) in y.iter_mut().zip(starts).zip(weights.chunks_exact(K)) {
        let xs = &x[at..at + K];
        let mut acc = 0.0f64;
        for k in 0..K {
            acc += w[k] * xs[k]; // acc = acc + (w * x): no fused multiply-add in Rust
        }
        *y = acc;
        infinite |= acc.is_infinite();
    }
    infinite
}

/// [`sum_run`] for any number of taps.
fn sum_any(x: &[f64], taps: &AxisTaps, first: usize, y: &mut [f64]) -> bool {
    let mut infinite = false;
    for (i, y) in (first..).zip(y.iter_mut()) {
        let (at, w) = taps.of(i);
        let mut acc = 0.0f64;
        for (&wk, &xk) in w.iter().zip(&x[at..at + w.len()]) {
            acc += wk * xk;
        }
        *y = acc;
        infinite |= acc.is_infinite();
    }
    infinite
}

/// [`pass`] along an axis but the last: output row `i` (`inner` values) is the sum of input
/// rows `start(i) + k` times their weights, summed a tile at a time. Returns whether any
/// output is infinite.
fn along_planes(src: &[f64], (n, inner): (usize, usize), taps: &AxisTaps, dst: &mut [f64]) -> bool {
    let m = taps.len();
    let mut infinite = false;
    for (x, y) in src
        .chunks_exact(n * inner)
        .zip(dst.chunks_exact_mut(m * inner))
    {
        for (i, y) in y.chunks_exact_mut(inner).enumerate() {
            let (at, w) = taps.of(i);
            for lo in (0..inner).step_by(TILE) {
                let hi = (lo + TILE).min(inner);
                let y = &mut y[lo..hi];
                let Some((&w0, rest)) = w.split_first() else {
                    y.fill(0.0);
                    continue;
                };
                // The first tap as `0.0 + w * x` (not `w * x`: a -0.0 product sums to +0.0).
                let row = at * inner;
                for (y, &xk) in y.iter_mut().zip(&x[row + lo..row + hi]) {
                    *y = 0.0 + w0 * xk;
                }
                for (k, &wk) in (1..).zip(rest) {
                    let row = (at + k) * inner;
                    for (y, &xk) in y.iter_mut().zip(&x[row + lo..row + hi]) {
                        *y += wk * xk;
                    }
                }
                infinite |= y.iter().fold(false, |f, v| f | v.is_infinite());
            }
        }
    }
    infinite
}

/// Sums again, with every product halved and the sum doubled back, the outputs of a pass
/// that came out infinite (kernel.rs' `saturate_finite`: at most the largest finite f64 when
/// the halved sum is finite; an infinite input keeps its infinity).
fn redo_infinite(src: &[f64], (n, inner): (usize, usize), taps: &AxisTaps, dst: &mut [f64]) {
    let m = taps.len();
    for (e, y) in dst.iter_mut().enumerate() {
        if !y.is_infinite() {
            continue;
        }
        let (o, i, j) = (e / (m * inner), e / inner % m, e % inner);
        let (at, w) = taps.of(i);
        let mut half = 0.0f64;
        for (k, &wk) in w.iter().enumerate() {
            half += wk * src[(o * n + at + k) * inner + j] * 0.5;
        }
        *y = super::kernel::saturate_finite(half * 2.0, half);
    }
}
