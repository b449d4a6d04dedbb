//! Quilting kernels: window weights, cutting windows out of an image, and the weighted
//! accumulation that stitches patches back. Pure functions on ndarray views.
//!
//! Summation order (documented because results must not depend on the rank count): every
//! output pixel is the sum, in f64, of its contributions taken in ascending patch order
//! (image-major, then row-major window order), divided by the f64 sum of the weights in the
//! same order, then rounded once to the output type. A block of the output is always built
//! from all the windows that overlap it, in that order, so the bits do not depend on how the
//! output is split into blocks or among ranks.

use crate::grid::row_major_strides;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn, Slice, Zip};
use serde::{Deserialize, Serialize};

/// Smallest weight a pixel of a window may have, so every covered pixel has a defined mean.
pub const MIN_WEIGHT: f64 = 1e-8;

/// How the pixels of a window are weighted when stitching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// qlty's: weight 1 inside, `border_weight` in a band of `border` pixels at each edge.
    #[default]
    Border,
    /// A Gaussian centred on the window, sigma = `sigma` x window size per axis (MONAI-style).
    Gaussian,
    /// A Hann window, positive up to the edges (endpoints excluded).
    Hann,
}

/// Everything that decides a window's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Weighting {
    pub blend: Blend,
    /// Border band width per spatial axis (0: none).
    pub border: Vec<u64>,
    /// Weight in the border band, in [0, 1]; raised to [`MIN_WEIGHT`].
    pub border_weight: f64,
    /// Gaussian sigma as a fraction of the window size.
    pub sigma: f64,
}

/// The weight of every pixel of a window (spatial shape only; channels share it).
pub fn weights(window: &[u64], w: &Weighting) -> ArrayD<f64> {
    let shape: Vec<usize> = window.iter().map(|&n| n as usize).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let value = match w.blend {
            Blend::Border => {
                let in_band = (0..shape.len()).any(|a| {
                    let (p, n, b) = (idx[a] as u64, window[a], w.border[a]);
                    b > 0 && (p < b || p >= n - b)
                });
                if in_band {
                    w.border_weight
                } else {
                    1.0
                }
            }
            Blend::Gaussian => (0..shape.len())
                .map(|a| {
                    let n = window[a] as f64;
                    let centre = (n - 1.0) / 2.0;
                    let sigma = (w.sigma * n).max(1e-12);
                    (-(idx[a] as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp()
                })
                .product(),
            Blend::Hann => (0..shape.len())
                .map(|a| {
                    let n = window[a] as f64;
                    0.5 - 0.5
                        * (2.0 * std::f64::consts::PI * (idx[a] as f64 + 1.0) / (n + 1.0)).cos()
                })
                .product(),
        };
        value.max(MIN_WEIGHT)
    })
}

/// qlty's border tensor: 1 inside, 0 in the border band (all 1 without a border).
pub fn border_mask(window: &[u64], border: &[u64]) -> ArrayD<u8> {
    let shape: Vec<usize> = window.iter().map(|&n| n as usize).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let in_band = (0..shape.len()).any(|a| {
            let (p, n, b) = (idx[a] as u64, window[a], border[a]);
            b > 0 && (p < b || p >= n - b)
        });
        u8::from(!in_band)
    })
}

/// Copies the window at spatial `start` out of an image laid out as (C, *spatial).
pub fn cut_window<T: Clone>(image: &ArrayViewD<'_, T>, start: &[u64], window: &[u64]) -> ArrayD<T> {
    let mut view = image.view();
    for (a, (&s, &w)) in start.iter().zip(window).enumerate() {
        view.slice_axis_inplace(Axis(a + 1), Slice::from(s as usize..(s + w) as usize));
    }
    view.to_owned()
}

/// True when any value of a row is NaN (a branch-free scan, so it vectorises).
fn row_has_nan<T: Copy + Into<f64>>(row: &[T]) -> bool {
    row.iter().fold(false, |any, &x| any | x.into().is_nan())
}

/// A patch of a batch that overlaps the block, ready for the row loop: C-order values (and
/// variances), the overlap `lo..hi` in block coordinates per axis, and the flat offset of
/// block pixel 0 in window coordinates (may be negative; only overlap pixels are read).
struct Overlap<'a, T: Clone> {
    values: std::borrow::Cow<'a, [T]>,
    variances: Option<std::borrow::Cow<'a, [T]>>,
    lo: Vec<usize>,
    hi: Vec<usize>,
    base: isize,
}

/// C-order contents of a view, borrowed when it already is C-order.
fn c_order<'a, T: Clone>(v: &ArrayViewD<'a, T>) -> std::borrow::Cow<'a, [T]> {
    match v.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.iter().cloned().collect()),
    }
}

/// Flat buffers of an accumulator and the constants of one batch, for [`add_row`].
struct Target<'a> {
    weights: &'a mut [f64],
    sums: &'a mut [f64],
    second_moments: Option<&'a mut [f64]>,
    channels: usize,
    block_size: usize,
    window_size: usize,
}

/// Adds one row segment of one patch: `len` pixels at flat block offset `boff` from flat
/// window offset `woff`, every channel. Pixels where any channel (or variance) is NaN are left
/// out of the sums and the weight; returns how many values were left out.
fn add_row<T: Copy + Into<f64>>(
    t: &mut Target<'_>,
    p: &[T],
    var: Option<&[T]>,
    w: &[f64],
    boff: usize,
    woff: usize,
    len: usize,
) -> u64 {
    let (bsize, wsize) = (t.block_size, t.window_size);
    let wrow = &w[woff..woff + len];
    let prow = |c: usize| &p[c * wsize + woff..c * wsize + woff + len];
    let vrow = |c: usize| var.map(|v| &v[c * wsize + woff..c * wsize + woff + len]);
    let nan = (0..t.channels).any(|c| row_has_nan(prow(c)) || vrow(c).is_some_and(row_has_nan));
    if !nan {
        for (s, &wt) in t.weights[boff..boff + len].iter_mut().zip(wrow) {
            *s += wt;
        }
        for c in 0..t.channels {
            let srow = &mut t.sums[c * bsize + boff..c * bsize + boff + len];
            for ((s, &x), &wt) in srow.iter_mut().zip(prow(c)).zip(wrow) {
                *s += wt * x.into();
            }
            if let (Some(m2), Some(vr)) = (t.second_moments.as_deref_mut(), vrow(c)) {
                let mrow = &mut m2[c * bsize + boff..c * bsize + boff + len];
                for (((m, &x), &v), &wt) in mrow.iter_mut().zip(prow(c)).zip(vr).zip(wrow) {
                    let (x, v): (f64, f64) = (x.into(), v.into());
                    *m += wt * (v + x * x);
                }
            }
        }
        return 0;
    }
    // Rare: a pixel with a NaN in any channel is left out of every channel and of the weight,
    // so channels share one weight map and a NaN never spreads to its neighbours' means.
    let mut valid = vec![true; len];
    for c in 0..t.channels {
        for (ok, &x) in valid.iter_mut().zip(prow(c)) {
            *ok &= !x.into().is_nan();
        }
        if let Some(vr) = vrow(c) {
            for (ok, &x) in valid.iter_mut().zip(vr) {
                *ok &= !x.into().is_nan();
            }
        }
    }
    for (i, &ok) in valid.iter().enumerate() {
        if !ok {
            continue;
        }
        t.weights[boff + i] += wrow[i];
        for c in 0..t.channels {
            let x: f64 = prow(c)[i].into();
            t.sums[c * bsize + boff + i] += wrow[i] * x;
            if let (Some(m2), Some(vr)) = (t.second_moments.as_deref_mut(), vrow(c)) {
                let v: f64 = vr[i].into();
                m2[c * bsize + boff + i] += wrow[i] * (v + x * x);
            }
        }
    }
    (valid.iter().filter(|&&ok| !ok).count() * t.channels) as u64
}

/// Weighted sums over one block of the output of one image: (C, *block) sums of `w * patch`,
/// (*block) sums of `w`, and optionally sums of `w * (variance + patch^2)` for the std.
#[derive(Clone, Debug)]
pub struct Accumulator {
    /// Spatial start of the block in the image.
    pub origin: Vec<u64>,
    pub sums: ArrayD<f64>,
    pub weights: ArrayD<f64>,
    pub second_moments: Option<ArrayD<f64>>,
    /// Patch pixels that were NaN and so left out (value and weight).
    pub nan_pixels: u64,
}

impl Accumulator {
    /// An empty accumulator for a block of `channels` x `block` at spatial `origin`.
    pub fn new(channels: usize, origin: &[u64], block: &[u64], with_variance: bool) -> Self {
        let spatial: Vec<usize> = block.iter().map(|&n| n as usize).collect();
        let mut full = vec![channels];
        full.extend(&spatial);
        Accumulator {
            origin: origin.to_vec(),
            sums: ArrayD::zeros(IxDyn(&full)),
            weights: ArrayD::zeros(IxDyn(&spatial)),
            second_moments: with_variance.then(|| ArrayD::zeros(IxDyn(&full))),
            nan_pixels: 0,
        }
    }

    /// Adds one patch (C, *window) whose window starts at spatial `start`, with weights `w`
    /// (*window). Only the part of the window inside the block is used. NaN pixels are left
    /// out and counted. `variance` (same shape as the patch) feeds the std.
    pub fn add<T: Copy + Into<f64>>(
        &mut self,
        patch: &ArrayViewD<'_, T>,
        variance: Option<&ArrayViewD<'_, T>>,
        start: &[u64],
        w: &ArrayD<f64>,
    ) {
        self.add_batch(
            &[(patch.view(), variance.map(|v| v.view()), start.to_vec())],
            w,
        );
    }

    /// Adds a batch of patches, in the order given. The work is done output row by output
    /// row (a row along the last axis), each row taking its segments from every patch that
    /// covers it in batch order: the row's sums stay in L1 cache while the patches stream
    /// through once. Each pixel still receives its contributions in patch order, so the bits
    /// are those of adding the patches one after the other.
    pub fn add_batch<T: Copy + Into<f64>>(&mut self, patches: &[PatchRef<'_, T>], w: &ArrayD<f64>) {
        let nd = w.ndim();
        let wshape = w.shape().to_vec();
        let bshape = self.weights.shape().to_vec();
        let (bstr, wstr) = (row_major_strides(&bshape), row_major_strides(&wshape));
        let mut items = Vec::with_capacity(patches.len());
        'patches: for (p, v, start) in patches {
            let (mut lo, mut hi) = (Vec::with_capacity(nd), Vec::with_capacity(nd));
            let mut base = 0isize;
            for a in 0..nd {
                let l = start[a].max(self.origin[a]);
                let h = (start[a] + wshape[a] as u64).min(self.origin[a] + bshape[a] as u64);
                if l >= h {
                    continue 'patches;
                }
                lo.push((l - self.origin[a]) as usize);
                hi.push((h - self.origin[a]) as usize);
                base += (self.origin[a] as isize - start[a] as isize) * wstr[a] as isize;
            }
            items.push(Overlap {
                values: c_order(p),
                variances: v.as_ref().map(c_order),
                lo,
                hi,
                base,
            });
        }
        if items.is_empty() {
            return;
        }
        let wflat = c_order(&w.view());
        let channels = self.sums.shape()[0];
        let mut target = Target {
            block_size: bshape.iter().product(),
            window_size: wshape.iter().product(),
            channels,
            weights: self
                .weights
                .as_slice_mut()
                .expect("accumulators are C-order"),
            sums: self.sums.as_slice_mut().expect("accumulators are C-order"),
            second_moments: self
                .second_moments
                .as_mut()
                .map(|m| m.as_slice_mut().expect("accumulators are C-order")),
        };
        // Odometer over the rows (every axis but the last) of the patches' bounding box.
        let outer = nd - 1;
        let box_lo: Vec<usize> = (0..outer)
            .map(|a| items.iter().map(|it| it.lo[a]).min().unwrap_or(0))
            .collect();
        let box_hi: Vec<usize> = (0..outer)
            .map(|a| items.iter().map(|it| it.hi[a]).max().unwrap_or(0))
            .collect();
        let mut idx = box_lo.clone();
        let mut nan = 0;
        // covering[a + 1]: the patches (in batch order) that contain idx[0..=a]; refreshed
        // from the first axis the odometer moved, so each row tests only its neighbours.
        let mut covering: Vec<Vec<usize>> = vec![(0..items.len()).collect(); outer + 1];
        let mut moved = 0;
        loop {
            for a in moved..outer {
                let (done, rest) = covering.split_at_mut(a + 1);
                rest[0].clear();
                rest[0].extend(
                    done[a]
                        .iter()
                        .filter(|&&i| items[i].lo[a] <= idx[a] && idx[a] < items[i].hi[a]),
                );
            }
            let brow: usize = (0..outer).map(|a| idx[a] * bstr[a]).sum();
            let wrow: isize = (0..outer).map(|a| (idx[a] * wstr[a]) as isize).sum();
            for &i in &covering[outer] {
                let it = &items[i];
                let x0 = it.lo[outer];
                let woff = (it.base + wrow + x0 as isize) as usize;
                nan += add_row(
                    &mut target,
                    &it.values,
                    it.variances.as_deref(),
                    &wflat,
                    brow + x0,
                    woff,
                    it.hi[outer] - x0,
                );
            }
            let mut a = outer;
            loop {
                if a == 0 {
                    self.nan_pixels += nan;
                    return;
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < box_hi[a] {
                    break;
                }
                idx[a] = box_lo[a];
            }
            moved = a;
        }
    }

    /// The weighted mean (C, *block); NaN where no valid contribution arrived.
    pub fn mean(&self) -> ArrayD<f64> {
        self.mean_with(|x| x)
    }

    /// The weighted mean, each value passed through `convert` (e.g. rounding to f32) as it is
    /// computed, with no f64 copy of the block.
    pub fn mean_with<T: Clone + Default>(&self, convert: impl Fn(f64) -> T) -> ArrayD<T> {
        let mut out = ArrayD::<T>::default(self.sums.raw_dim());
        self.mean_into(out.view_mut(), convert);
        out
    }

    /// The weighted mean written into `out` (C, *block), e.g. a slice of a larger buffer.
    pub fn mean_into<T>(&self, mut out: ArrayViewMutD<'_, T>, convert: impl Fn(f64) -> T) {
        for (mut o, s) in out.axis_iter_mut(Axis(0)).zip(self.sums.axis_iter(Axis(0))) {
            Zip::from(&mut o)
                .and(&s)
                .and(&self.weights)
                .for_each(|o, &x, &w| {
                    *o = convert(if w > 0.0 { x / w } else { f64::NAN });
                });
        }
    }

    /// The weighted standard deviation of the mixture of the patches' predictions:
    /// `sqrt(sum(w (var + p^2)) / sum(w) - mean^2)`, clamped at 0 against rounding.
    pub fn std(&self) -> Option<ArrayD<f64>> {
        let m2 = self.second_moments.as_ref()?;
        let mean = self.mean();
        let mut out = m2.clone();
        for (mut c, mc) in out.axis_iter_mut(Axis(0)).zip(mean.axis_iter(Axis(0))) {
            Zip::from(&mut c)
                .and(&mc)
                .and(&self.weights)
                .for_each(|x, &mu, &w| {
                    *x = if w > 0.0 {
                        // Not f64::max: this exact expression is in the GPU kernel too.
                        let q = *x / w - mu * mu;
                        let q = if q > 0.0 { q } else { 0.0 };
                        q.sqrt()
                    } else {
                        f64::NAN
                    };
                });
        }
        Some(out)
    }
}

/// One patch for [`SplitAccumulator::add_all`]: values, optional variances, window start.
pub type PatchRef<'a, T> = (ArrayViewD<'a, T>, Option<ArrayViewD<'a, T>>, Vec<u64>);

/// An [`Accumulator`] cut into consecutive row ranges (along the first spatial axis) that are
/// filled in parallel. Every pixel belongs to one part and receives its contributions in patch
/// order there, so the bits are those of a single accumulator.
#[derive(Clone, Debug)]
pub struct SplitAccumulator {
    pub parts: Vec<Accumulator>,
}

impl SplitAccumulator {
    pub fn new(
        channels: usize,
        origin: &[u64],
        block: &[u64],
        with_variance: bool,
        parts: usize,
    ) -> Self {
        let rows = block[0];
        let parts = (parts.max(1) as u64).min(rows.max(1));
        let parts = (0..parts)
            .map(|i| {
                let (lo, hi) = (rows * i / parts, rows * (i + 1) / parts);
                let mut o = origin.to_vec();
                o[0] += lo;
                let mut b = block.to_vec();
                b[0] = hi - lo;
                Accumulator::new(channels, &o, &b, with_variance)
            })
            .collect();
        SplitAccumulator { parts }
    }

    /// Adds patches, in the order given, to every part (in parallel over parts).
    pub fn add_all<T: Copy + Into<f64> + Sync>(
        &mut self,
        patches: &[PatchRef<'_, T>],
        w: &ArrayD<f64>,
    ) {
        use rayon::prelude::*;
        self.parts
            .par_iter_mut()
            .for_each(|acc| acc.add_batch(patches, w));
    }

    /// The spatial block shape this accumulator covers (all parts together).
    pub fn block_shape(&self) -> Vec<u64> {
        let mut shape: Vec<u64> = self.parts[0]
            .weights
            .shape()
            .iter()
            .map(|&n| n as u64)
            .collect();
        shape[0] = self.parts.iter().map(|p| p.weights.shape()[0] as u64).sum();
        shape
    }

    /// Empties the sums and moves the block to spatial `origin` (same shape), for reuse.
    pub fn reset_at(&mut self, origin: &[u64]) {
        self.reset();
        let mut row = origin[0];
        for p in &mut self.parts {
            p.origin = origin.to_vec();
            p.origin[0] = row;
            row += p.weights.shape()[0] as u64;
        }
    }

    pub fn nan_pixels(&self) -> u64 {
        self.parts.iter().map(|p| p.nan_pixels).sum()
    }

    /// Empties the sums for reuse on another image of the same block (no reallocation: freeing
    /// and mapping large buffers while threads run costs TLB shootdowns, dear on VMs).
    pub fn reset(&mut self) {
        for p in &mut self.parts {
            p.sums.fill(0.0);
            p.weights.fill(0.0);
            if let Some(m) = p.second_moments.as_mut() {
                m.fill(0.0);
            }
            p.nan_pixels = 0;
        }
    }

    fn join<T: Clone>(pieces: Vec<ArrayD<T>>, axis: usize) -> ArrayD<T> {
        let views: Vec<_> = pieces.iter().map(|a| a.view()).collect();
        ndarray::concatenate(Axis(axis), &views).expect("parts share every other axis")
    }

    pub fn mean(&self) -> ArrayD<f64> {
        self.mean_with(|x| x)
    }

    pub fn mean_with<T: Clone + Default>(&self, convert: impl Fn(f64) -> T + Copy) -> ArrayD<T> {
        let mut shape = self.parts[0].sums.shape().to_vec();
        shape[1] = self.parts.iter().map(|p| p.sums.shape()[1]).sum();
        let mut out = ArrayD::<T>::default(IxDyn(&shape));
        self.mean_into(out.view_mut(), convert);
        out
    }

    /// The weighted mean written into `out` (C, *block), each part into its rows.
    pub fn mean_into<T>(&self, mut out: ArrayViewMutD<'_, T>, convert: impl Fn(f64) -> T + Copy) {
        for p in &self.parts {
            let rows = p.sums.shape()[1];
            let (here, rest) = out.split_at(Axis(1), rows);
            p.mean_into(here, convert);
            out = rest;
        }
    }

    pub fn weights(&self) -> ArrayD<f64> {
        Self::join(self.parts.iter().map(|p| p.weights.clone()).collect(), 0)
    }

    pub fn std(&self) -> Option<ArrayD<f64>> {
        let parts: Option<Vec<_>> = self.parts.iter().map(Accumulator::std).collect();
        parts.map(|p| Self::join(p, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::windows::WindowGrid;

    fn border(b: u64, bw: f64) -> Weighting {
        Weighting {
            blend: Blend::Border,
            border: vec![b, b],
            border_weight: bw,
            sigma: 0.125,
        }
    }

    #[test]
    fn border_weights_and_mask_hand_checked() {
        let w = weights(&[4, 5], &border(1, 0.1));
        assert_eq!(w[[0, 0]], 0.1);
        assert_eq!(w[[1, 1]], 1.0);
        assert_eq!(w[[2, 3]], 1.0);
        assert_eq!(w[[2, 4]], 0.1);
        assert_eq!(w[[3, 2]], 0.1);
        let zero = weights(&[4, 4], &border(1, 0.0));
        assert_eq!(zero[[0, 0]], MIN_WEIGHT);
        let none = weights(&[3, 3], &border(0, 0.1));
        assert!(none.iter().all(|&x| x == 1.0));
        let m = border_mask(&[4, 5], &[1, 1]);
        assert_eq!(m.sum(), 2 * 3);
        assert_eq!(m[[1, 1]], 1);
        assert_eq!(m[[0, 2]], 0);
    }

    #[test]
    fn smooth_blends_peak_in_the_middle_and_stay_positive() {
        for blend in [Blend::Gaussian, Blend::Hann] {
            let w = weights(
                &[9, 9],
                &Weighting {
                    blend,
                    border: vec![0, 0],
                    border_weight: 0.1,
                    sigma: 0.125,
                },
            );
            assert!(w.iter().all(|&x| x >= MIN_WEIGHT));
            assert!((w[[4, 4]] - 1.0).abs() < 1e-12, "{blend:?}");
            assert!(w[[0, 4]] < w[[2, 4]] && w[[2, 4]] < w[[4, 4]]);
            assert!((w[[1, 4]] - w[[7, 4]]).abs() < 1e-12, "symmetric");
        }
    }

    #[test]
    fn cut_window_hand_checked() {
        let img = ArrayD::from_shape_fn(IxDyn(&[2, 5, 6]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as u16
        });
        let w = cut_window(&img.view(), &[1, 2], &[3, 2]);
        assert_eq!(w.shape(), &[2, 3, 2]);
        assert_eq!(w[[0, 0, 0]], 12);
        assert_eq!(w[[1, 2, 1]], 133);
    }

    /// Cuts every window of one image, the straightforward way.
    fn unstitch(img: &ArrayD<f64>, grid: &WindowGrid) -> Vec<(Vec<u64>, ArrayD<f64>)> {
        (0..grid.per_image())
            .map(|k| {
                let s = grid.window_start(k);
                let p = cut_window(&img.view(), &s, &grid.window);
                (s, p)
            })
            .collect()
    }

    #[test]
    fn stitching_constant_patches_returns_the_constant() {
        let grid = WindowGrid::new(&[13, 11], &[5, 4], &[3, 2], false).unwrap();
        let w = weights(&grid.window, &border(1, 0.1));
        let mut acc = Accumulator::new(2, &[0, 0], &grid.image, false);
        for k in 0..grid.per_image() {
            let p = ArrayD::from_elem(IxDyn(&[2, 5, 4]), 0.7);
            acc.add(&p.view(), None, &grid.window_start(k), &w);
        }
        assert!(acc.mean().iter().all(|&x| (x - 0.7).abs() < 1e-15));
        assert!(acc.weights.iter().all(|&x| x > 0.0));
    }

    #[test]
    fn unstitch_then_stitch_returns_the_input_and_blocks_do_not_change_bits() {
        let grid = WindowGrid::new(&[9, 10, 12], &[4, 5, 6], &[3, 2, 5], false).unwrap();
        let img = ArrayD::from_shape_fn(IxDyn(&[2, 9, 10, 12]), |i| {
            ((i[0] * 7 + i[1] * 13 + i[2] * 3 + i[3]) as f64 * 0.37).sin()
        });
        let wt = weights(
            &grid.window,
            &Weighting {
                blend: Blend::Gaussian,
                border: vec![0; 3],
                border_weight: 0.1,
                sigma: 0.2,
            },
        );
        let patches = unstitch(&img, &grid);
        let mut whole = Accumulator::new(2, &[0, 0, 0], &grid.image, false);
        for (s, p) in &patches {
            whole.add(&p.view(), None, s, &wt);
        }
        let mean = whole.mean();
        assert!(mean
            .iter()
            .zip(img.iter())
            .all(|(a, b)| (a - b).abs() < 1e-12));
        // Built as two z-blocks, each from the windows overlapping it, the bits are the same.
        for split in [1u64, 4, 8] {
            for (z0, z1) in [(0, split), (split, 9)] {
                let mut part = Accumulator::new(2, &[z0, 0, 0], &[z1 - z0, 10, 12], false);
                for k in grid.overlapping(0, z0..z1) {
                    // z is the slowest axis: windows of z-index k are a contiguous run.
                    let per_z = grid.per_image() / grid.counts()[0];
                    for (s, p) in &patches[(k * per_z) as usize..((k + 1) * per_z) as usize] {
                        part.add(&p.view(), None, s, &wt);
                    }
                }
                let pm = part.mean();
                let expect = mean.slice_axis(Axis(1), Slice::from(z0 as usize..z1 as usize));
                assert!(pm
                    .iter()
                    .zip(expect.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn unstitch_then_stitch_is_the_identity_for_any_geometry(
            y in 1u64..40, x in 1u64..40, wy in 1u64..12, wx in 1u64..12, sy in 1u64..12, sx in 1u64..12,
            b in 0u64..3, blend in 0usize..3, parts in 1usize..4,
        ) {
            proptest::prop_assume!(wy <= y && wx <= x && sy <= wy && sx <= wx);
            proptest::prop_assume!(b == 0 || (2 * b < wy && 2 * b < wx));
            let grid = WindowGrid::new(&[y, x], &[wy, wx], &[sy, sx], false).unwrap();
            let blend = [Blend::Border, Blend::Gaussian, Blend::Hann][blend];
            let wt = weights(&grid.window, &Weighting { blend, border: vec![b, b], border_weight: 0.1, sigma: 0.125 });
            let img = ArrayD::from_shape_fn(IxDyn(&[2, y as usize, x as usize]), |i| ((i[0] * 131 + i[1] * 17 + i[2]) as f64 * 0.71).cos());
            let patches: Vec<(Vec<u64>, ArrayD<f64>)> = (0..grid.per_image())
                .map(|k| { let s = grid.window_start(k); let p = cut_window(&img.view(), &s, &grid.window); (s, p) })
                .collect();
            let refs: Vec<PatchRef<'_, f64>> = patches.iter().map(|(s, p)| (p.view(), None, s.clone())).collect();
            let mut acc = SplitAccumulator::new(2, &[0, 0], &grid.image, false, parts);
            acc.add_all(&refs, &wt);
            let mean = acc.mean();
            proptest::prop_assert!(mean.iter().zip(img.iter()).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    #[test]
    fn a_split_accumulator_gives_the_same_bits() {
        let grid = WindowGrid::new(&[23, 19], &[6, 5], &[3, 2], false).unwrap();
        let wt = weights(&grid.window, &border(1, 0.1));
        let mut one = Accumulator::new(2, &[0, 0], &grid.image, false);
        let mut split = SplitAccumulator::new(2, &[0, 0], &grid.image, false, 3);
        let patches: Vec<ArrayD<f32>> = (0..grid.per_image())
            .map(|k| {
                ArrayD::from_shape_fn(IxDyn(&[2, 6, 5]), |i| {
                    ((k as usize * 31 + i[0] * 7 + i[1] * 3 + i[2]) as f32 * 0.37).sin()
                })
            })
            .collect();
        let refs: Vec<PatchRef<'_, f32>> = patches
            .iter()
            .enumerate()
            .map(|(k, p)| (p.view(), None, grid.window_start(k as u64)))
            .collect();
        for (p, _, s) in &refs {
            one.add(p, None, s, &wt);
        }
        split.add_all(&refs, &wt);
        let (a, b) = (one.mean(), split.mean());
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(one.weights, split.weights());
    }

    #[test]
    fn a_batch_of_views_in_any_memory_order_gives_the_bits_of_one_by_one_adds() {
        // 3-D, two channels, a variance, NaN in one channel, a block in the middle, and
        // patches given as transposed-back views (not C-order in memory): the row gather must
        // match adding the same patches one at a time, bit for bit.
        let grid = WindowGrid::new(&[6, 7, 9], &[3, 4, 5], &[2, 3, 2], false).unwrap();
        let w = weights(
            &grid.window,
            &Weighting {
                border: vec![1, 1, 1],
                ..border(1, 0.3)
            },
        );
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = grid.per_image() as usize;
        let patches: Vec<ArrayD<f64>> = (0..n)
            .map(|k| {
                let mut p = ArrayD::from_shape_simple_fn(IxDyn(&[2, 3, 4, 5]), &mut next);
                if k == 3 {
                    p[[1, 2, 1, 4]] = f64::NAN; // image (2, 4, 4), inside the block
                }
                // Stored as (x, y, z, c) and viewed back: same values, Fortran-like layout.
                p.reversed_axes().as_standard_layout().to_owned()
            })
            .collect();
        let var: Vec<ArrayD<f64>> = (0..n)
            .map(|_| ArrayD::from_shape_simple_fn(IxDyn(&[5, 4, 3, 2]), &mut next))
            .collect();
        let views: Vec<PatchRef<'_, f64>> = (0..n)
            .map(|k| {
                (
                    patches[k].view().reversed_axes(),
                    Some(var[k].view().reversed_axes()),
                    grid.window_start(k as u64),
                )
            })
            .collect();
        assert!(views[0].0.as_slice().is_none(), "the views are not C-order");
        let mut batch = Accumulator::new(2, &[1, 2, 3], &[4, 4, 5], true);
        batch.add_batch(&views, &w);
        let mut single = Accumulator::new(2, &[1, 2, 3], &[4, 4, 5], true);
        for (p, v, s) in &views {
            let (p, v) = (p.to_owned(), v.as_ref().unwrap().to_owned());
            single.add(&p.view(), Some(&v.view()), s, &w);
        }
        let bits = |a: &ArrayD<f64>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&batch.sums), bits(&single.sums));
        assert_eq!(bits(&batch.weights), bits(&single.weights));
        assert_eq!(
            bits(batch.second_moments.as_ref().unwrap()),
            bits(single.second_moments.as_ref().unwrap())
        );
        assert_eq!(batch.nan_pixels, single.nan_pixels);
        assert!(batch.nan_pixels > 0, "the NaN pixel lies inside the block");
        assert!(batch.mean().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn nan_pixels_are_left_out_and_counted() {
        let grid = WindowGrid::new(&[4, 4], &[2, 2], &[1, 1], false).unwrap();
        let w = weights(&grid.window, &border(0, 0.1));
        let mut acc = Accumulator::new(1, &[0, 0], &[4, 4], false);
        for k in 0..grid.per_image() {
            let mut p = ArrayD::from_elem(IxDyn(&[1, 2, 2]), 2.0);
            if k == 0 {
                p[[0, 1, 1]] = f64::NAN; // pixel (1, 1) of the image, also covered by others
            }
            acc.add(&p.view(), None, &grid.window_start(k), &w);
        }
        assert_eq!(acc.nan_pixels, 1);
        assert!(
            acc.mean().iter().all(|&x| x == 2.0),
            "neighbours not poisoned"
        );
        // A pixel only NaN patches cover comes out NaN, not a number made up.
        let mut lone = Accumulator::new(1, &[0, 0], &[2, 2], false);
        let p = ArrayD::from_elem(IxDyn(&[1, 2, 2]), f64::NAN);
        lone.add(&p.view(), None, &[0, 0], &w);
        assert!(lone.mean().iter().all(|x| x.is_nan()));
    }

    #[test]
    fn std_of_a_mixture_hand_checked() {
        // Two windows over one pixel with weights 1 and 1: predictions 1 and 3, variances 0
        // and 2 -> mean 2, second moment (1 + 0 + 9 + 2) / 2 = 6, std sqrt(6 - 4) = sqrt 2.
        let w = ArrayD::from_elem(IxDyn(&[1, 1]), 1.0);
        let mut acc = Accumulator::new(1, &[0, 0], &[1, 1], true);
        for (x, v) in [(1.0, 0.0), (3.0, 2.0)] {
            let p = ArrayD::from_elem(IxDyn(&[1, 1, 1]), x);
            let var = ArrayD::from_elem(IxDyn(&[1, 1, 1]), v);
            acc.add(&p.view(), Some(&var.view()), &[0, 0], &w);
        }
        assert_eq!(acc.mean()[[0, 0, 0]], 2.0);
        assert!((acc.std().unwrap()[[0, 0, 0]] - 2f64.sqrt()).abs() < 1e-15);
    }
}
