//! Quilting kernels: window weights, cutting windows out of an image, and the weighted
//! accumulation that stitches patches back. Pure functions on ndarray views.
//!
//! Summation order (documented because results must not depend on the rank count): every
//! output pixel is the sum, in f64, of its contributions taken in ascending patch order
//! (image-major, then row-major window order), divided by the f64 sum of the weights in the
//! same order, then rounded once to the output type. A block of the output is always built
//! from all the windows that overlap it, in that order, so the bits do not depend on how the
//! output is split into blocks or among ranks.

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

/// True when any value is NaN (a branch-free scan when the view is contiguous).
fn has_nan<T: Copy + Into<f64>>(v: &ArrayViewD<'_, T>) -> bool {
    let scan = |s: &[T]| s.iter().fold(false, |any, &x| any | x.into().is_nan());
    match v.as_slice_memory_order() {
        Some(s) => scan(s),
        // A window cut by the block edge: rows are still contiguous.
        None => v
            .lanes(Axis(v.ndim() - 1))
            .into_iter()
            .any(|row| match row.as_slice() {
                Some(s) => scan(s),
                None => row.iter().any(|&x| x.into().is_nan()),
            }),
    }
}

/// Applies `f` to matching rows (lanes along the last axis) of two same-shape arrays, as
/// slices when both rows are contiguous.
fn rows2<A: Copy>(
    mut dst: ArrayViewMutD<'_, f64>,
    src: ArrayViewD<'_, A>,
    f: impl Fn(&mut [f64], &[A]),
) {
    let last = Axis(dst.ndim() - 1);
    for (mut d, s) in dst.lanes_mut(last).into_iter().zip(src.lanes(last)) {
        match (d.as_slice_mut(), s.as_slice()) {
            (Some(d), Some(s)) => f(d, s),
            (_, _) => {
                let s: Vec<A> = s.iter().copied().collect();
                let mut dv: Vec<f64> = d.iter().copied().collect();
                f(&mut dv, &s);
                d.iter_mut().zip(dv).for_each(|(o, v)| *o = v);
            }
        }
    }
}

/// [`rows2`] with a second source.
fn rows3<A: Copy, B: Copy>(
    mut dst: ArrayViewMutD<'_, f64>,
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, B>,
    f: impl Fn(&mut [f64], &[A], &[B]),
) {
    let last = Axis(dst.ndim() - 1);
    for ((mut d, x), y) in dst
        .lanes_mut(last)
        .into_iter()
        .zip(a.lanes(last))
        .zip(b.lanes(last))
    {
        match (d.as_slice_mut(), x.as_slice(), y.as_slice()) {
            (Some(d), Some(x), Some(y)) => f(d, x, y),
            (_, _, _) => {
                let x: Vec<A> = x.iter().copied().collect();
                let y: Vec<B> = y.iter().copied().collect();
                let mut dv: Vec<f64> = d.iter().copied().collect();
                f(&mut dv, &x, &y);
                d.iter_mut().zip(dv).for_each(|(o, v)| *o = v);
            }
        }
    }
}

/// Narrows a view to `ranges` on the axes starting at `offset`.
fn narrowed<'a, T>(
    mut v: ArrayViewD<'a, T>,
    ranges: &[std::ops::Range<usize>],
    offset: usize,
) -> ArrayViewD<'a, T> {
    for (a, r) in ranges.iter().enumerate() {
        v.slice_axis_inplace(Axis(a + offset), Slice::from(r.clone()));
    }
    v
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
        let ndim = start.len();
        let block: Vec<u64> = self.weights.shape().iter().map(|&n| n as u64).collect();
        // Overlap of the window with the block, in window and in block coordinates.
        let mut window_ranges = Vec::with_capacity(ndim);
        let mut block_ranges = Vec::with_capacity(ndim);
        for a in 0..ndim {
            let lo = start[a].max(self.origin[a]);
            let hi = (start[a] + w.shape()[a] as u64).min(self.origin[a] + block[a]);
            if lo >= hi {
                return;
            }
            window_ranges.push((lo - start[a]) as usize..(hi - start[a]) as usize);
            block_ranges.push((lo - self.origin[a]) as usize..(hi - self.origin[a]) as usize);
        }
        let w_part = narrowed(w.view(), &window_ranges, 0);
        let p = narrowed(patch.view(), &window_ranges, 1);
        let var = variance.map(|v| narrowed(v.view(), &window_ranges, 1));
        if has_nan(&p) || var.as_ref().is_some_and(has_nan) {
            // Rare: leave NaN pixels out of every channel and of the weight (so channels share
            // one weight map and a NaN never spreads), on cleaned f64 copies.
            let channels = p.shape()[0];
            let mut valid = ArrayD::from_elem(w_part.raw_dim(), true);
            for c in 0..channels {
                Zip::from(&mut valid)
                    .and(&p.index_axis(Axis(0), c))
                    .for_each(|ok, &x| *ok &= !x.into().is_nan());
                if let Some(v) = &var {
                    Zip::from(&mut valid)
                        .and(&v.index_axis(Axis(0), c))
                        .for_each(|ok, &x| *ok &= !x.into().is_nan());
                }
            }
            self.nan_pixels += valid.iter().filter(|&&ok| !ok).count() as u64 * channels as u64;
            let clean = |a: &ArrayViewD<'_, T>| {
                let mut out = a.mapv(Into::<f64>::into);
                for mut c in out.axis_iter_mut(Axis(0)) {
                    Zip::from(&mut c).and(&valid).for_each(|x, &ok| {
                        if !ok {
                            *x = 0.0;
                        }
                    });
                }
                out
            };
            let mut w_eff = w_part.to_owned();
            Zip::from(&mut w_eff).and(&valid).for_each(|wt, &ok| {
                if !ok {
                    *wt = 0.0;
                }
            });
            let (p, var) = (clean(&p), var.as_ref().map(clean));
            self.accumulate(
                &block_ranges,
                &p.view(),
                var.as_ref().map(|v| v.view()).as_ref(),
                &w_eff.view(),
            );
        } else if let (Some(pf), Some(wf)) = (patch.as_slice(), w.as_slice()) {
            let vf = variance.and_then(|v| v.as_slice());
            if variance.is_none() || vf.is_some() {
                let win_lo: Vec<usize> = window_ranges.iter().map(|r| r.start).collect();
                let blk_lo: Vec<usize> = block_ranges.iter().map(|r| r.start).collect();
                let part: Vec<usize> = window_ranges.iter().map(|r| r.len()).collect();
                self.accumulate_contiguous(pf, vf, wf, w.shape(), &win_lo, &blk_lo, &part);
                return;
            }
            self.accumulate(&block_ranges, &p, var.as_ref(), &w_part);
        } else {
            self.accumulate(&block_ranges, &p, var.as_ref(), &w_part);
        }
    }

    /// [`Accumulator::accumulate`] for C-order patches: rows located by index arithmetic on
    /// the flat buffers (ndarray's N-D lane iterators cost more than the arithmetic here).
    #[allow(clippy::too_many_arguments)]
    fn accumulate_contiguous<T: Copy + Into<f64>>(
        &mut self,
        p: &[T],
        var: Option<&[T]>,
        w: &[f64],
        wshape: &[usize],
        win_lo: &[usize],
        blk_lo: &[usize],
        part: &[usize],
    ) {
        let nd = part.len();
        let bshape: Vec<usize> = self.weights.shape().to_vec();
        let row_major = |shape: &[usize]| {
            let mut st = vec![1usize; shape.len()];
            for a in (0..shape.len().saturating_sub(1)).rev() {
                st[a] = st[a + 1] * shape[a + 1];
            }
            st
        };
        let (bstr, wstr) = (row_major(&bshape), row_major(wshape));
        let (bsize, wsize): (usize, usize) = (bshape.iter().product(), wshape.iter().product());
        let len = part[nd - 1];
        let channels = p.len() / wsize;
        let weights = self
            .weights
            .as_slice_mut()
            .expect("accumulators are C-order");
        let sums = self.sums.as_slice_mut().expect("accumulators are C-order");
        let mut m2 = self
            .second_moments
            .as_mut()
            .map(|m| m.as_slice_mut().expect("C-order"));
        let mut idx = vec![0usize; nd - 1];
        loop {
            let boff: usize = (0..nd)
                .map(|a| (blk_lo[a] + idx.get(a).copied().unwrap_or(0)) * bstr[a])
                .sum();
            let woff: usize = (0..nd)
                .map(|a| (win_lo[a] + idx.get(a).copied().unwrap_or(0)) * wstr[a])
                .sum();
            let wrow = &w[woff..woff + len];
            for (s, &wt) in weights[boff..boff + len].iter_mut().zip(wrow) {
                *s += wt;
            }
            for c in 0..channels {
                let prow = &p[c * wsize + woff..c * wsize + woff + len];
                let srow = &mut sums[c * bsize + boff..c * bsize + boff + len];
                for ((s, &x), &wt) in srow.iter_mut().zip(prow).zip(wrow) {
                    *s += wt * x.into();
                }
                if let (Some(m2), Some(var)) = (m2.as_mut(), var) {
                    let vrow = &var[c * wsize + woff..c * wsize + woff + len];
                    let mrow = &mut m2[c * bsize + boff..c * bsize + boff + len];
                    for (((m, &x), &v), &wt) in mrow.iter_mut().zip(prow).zip(vrow).zip(wrow) {
                        let (x, v): (f64, f64) = (x.into(), v.into());
                        *m += wt * (v + x * x);
                    }
                }
            }
            // Next row: odometer over every axis but the last.
            let mut a = nd - 1;
            loop {
                if a == 0 {
                    return;
                }
                a -= 1;
                idx[a] += 1;
                if idx[a] < part[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }

    /// The hot loop: row by row along the last axis, where every operand is contiguous.
    /// Each pixel gets `+= w * x` once per patch, so the summation order is the patch order.
    fn accumulate<T: Copy + Into<f64>>(
        &mut self,
        block_ranges: &[std::ops::Range<usize>],
        p: &ArrayViewD<'_, T>,
        var: Option<&ArrayViewD<'_, T>>,
        w: &ArrayViewD<'_, f64>,
    ) {
        let mut weight_sum = self.weights.view_mut();
        for (a, r) in block_ranges.iter().enumerate() {
            weight_sum.slice_axis_inplace(Axis(a), Slice::from(r.clone()));
        }
        rows2(weight_sum, w.view(), |s, wt| {
            for (s, &wt) in s.iter_mut().zip(wt) {
                *s += wt;
            }
        });
        for c in 0..p.shape()[0] {
            let pc = p.index_axis(Axis(0), c);
            let mut sc = self.sums.index_axis_mut(Axis(0), c);
            for (a, r) in block_ranges.iter().enumerate() {
                sc.slice_axis_inplace(Axis(a), Slice::from(r.clone()));
            }
            rows3(sc, pc.view(), w.view(), |s, x, wt| {
                for ((s, &x), &wt) in s.iter_mut().zip(x).zip(wt) {
                    *s += wt * x.into();
                }
            });
            if let (Some(m2), Some(var)) = (self.second_moments.as_mut(), var) {
                let vc = var.index_axis(Axis(0), c);
                let mut mc = m2.index_axis_mut(Axis(0), c);
                for (a, r) in block_ranges.iter().enumerate() {
                    mc.slice_axis_inplace(Axis(a), Slice::from(r.clone()));
                }
                Zip::from(&mut mc)
                    .and(&pc)
                    .and(&vc)
                    .and(w)
                    .for_each(|m, &x, &v, &wt| {
                        let (x, v): (f64, f64) = (x.into(), v.into());
                        *m += wt * (v + x * x);
                    });
            }
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
        for (mut o, s) in out.axis_iter_mut(Axis(0)).zip(self.sums.axis_iter(Axis(0))) {
            Zip::from(&mut o)
                .and(&s)
                .and(&self.weights)
                .for_each(|o, &x, &w| {
                    *o = convert(if w > 0.0 { x / w } else { f64::NAN });
                });
        }
        out
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
                        (*x / w - mu * mu).max(0.0).sqrt()
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
        self.parts.par_iter_mut().for_each(|acc| {
            for (p, v, start) in patches {
                acc.add(p, v.as_ref(), start, w);
            }
        });
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
        Self::join(self.parts.iter().map(|p| p.mean_with(convert)).collect(), 1)
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
