//! Quilting kernels: window weights, cutting windows out of an image, and the weighted
//! accumulation that stitches patches back. Pure functions on ndarray views.
//!
//! Summation order (documented because results must not depend on how the output is split
//! into units or among ranks): the rows of each image along its first spatial axis (Z in
//! 3-D, Y in 2-D) are cut into fixed *bands* ([`Bands`]) of `chunk_rows * ceil(window /
//! chunk_rows)` rows (the output's chunk rows, rounded up to at least one window height; only
//! an image's last band may be shorter). A window belongs to the band its first row (origin)
//! lies in. As a band is at least a window high, a pixel of band g is covered only by
//! windows of band g and band g - 1. Per pixel and per accumulated quantity (weighted sum per
//! channel, weight sum, second moment), `S_b` is the f64 sum, starting from 0, of the
//! contributions of the covering windows of band b in ascending patch order (row-major
//! window order); the pixel's total is `S_{g-1} + S_g` (one f64 addition, commutative, so it
//! does not matter which side adds; without windows of band g - 1 it is `S_g`). The mean is
//! the total sum over the total weight, rounded once to the output type. Only the output's
//! chunking fixes the bands, so the bits do not depend on the unit size, the memory limit or
//! the rank count, and a band's windows can be read once: their sums over the next band's
//! first rows are carried to it ([`SplitAccumulator::copy_rows`], [`SplitAccumulator::add_rows`]).

use std::ops::Range;

use crate::grid::row_major_strides;
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn, Slice, Zip};
use serde::{Deserialize, Serialize};

/// The fixed bands of rows (first spatial axis) that fix the summation order; see the module
/// header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bands {
    /// Rows per band (the last band of an image may be shorter); at least `window`.
    pub rows: u64,
    /// The image's rows.
    pub extent: u64,
    /// The window's rows.
    pub window: u64,
}

impl Bands {
    /// Bands of `chunk_rows` (the output's chunk rows) rounded up to whole chunks of at least
    /// one `window`, over `extent` rows.
    pub fn new(chunk_rows: u64, window: u64, extent: u64) -> Bands {
        let chunk_rows = chunk_rows.max(1);
        Bands {
            rows: chunk_rows * window.max(1).div_ceil(chunk_rows),
            extent,
            window: window.max(1),
        }
    }

    pub fn count(&self) -> u64 {
        self.extent.div_ceil(self.rows)
    }

    /// The band row `row` lies in.
    pub fn of_row(&self, row: u64) -> u64 {
        row / self.rows
    }

    /// The rows of band `g`.
    pub fn rows_of(&self, g: u64) -> Range<u64> {
        (g * self.rows).min(self.extent)..((g + 1) * self.rows).min(self.extent)
    }

    /// The rows band `g`'s windows cover at most: its own and up to `window - 1` of the next.
    pub fn reach(&self, g: u64) -> Range<u64> {
        let end = ((g + 1) * self.rows + self.window - 1).min(self.extent);
        (g * self.rows).min(self.extent)..end
    }

    /// The windows (indices along the first axis, whose ascending `starts` are given) of band
    /// `g`: those whose origin lies in it.
    pub fn windows(&self, starts: &[u64], g: u64) -> Range<u64> {
        let (lo, hi) = (g * self.rows, (g + 1) * self.rows);
        let first = starts.partition_point(|&s| s < lo) as u64;
        let end = starts.partition_point(|&s| s < hi) as u64;
        first..end.max(first)
    }

    /// Of band `g`'s windows, those that reach into band `g + 1` (what its carry is made of).
    pub fn overhanging(&self, starts: &[u64], g: u64) -> Range<u64> {
        let mine = self.windows(starts, g);
        let next = (g + 1) * self.rows;
        let first = starts.partition_point(|&s| s + self.window <= next) as u64;
        first.clamp(mine.start, mine.end)..mine.end
    }
}

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

impl Weighting {
    /// A Gaussian blend of `sigma` over `ndim` spatial axes, without a border band.
    pub fn gaussian(ndim: usize, sigma: f64) -> Weighting {
        Weighting {
            blend: Blend::Gaussian,
            border: vec![0; ndim],
            // Unused without a band; the command line's default.
            border_weight: 0.1,
            sigma,
        }
    }
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

/// Zeros of `shape`, written rather than mapped. `ArrayD::zeros` takes fresh pages from the
/// allocator that stay the shared zero page until written, and the accumulation reads each
/// value before writing it: every page took a read fault, then a copy-on-write fault whose
/// TLB flush interrupts every other CPU running the process (about 10% of a 2-thread
/// stitch's samples, in `perf`). Written here, each page takes one plain fault.
fn written_zeros(shape: &[usize]) -> ArrayD<f64> {
    let n = shape.iter().product();
    let mut values = Vec::with_capacity(n);
    values.resize(n, 0.0);
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("one value per element")
}

impl Accumulator {
    /// An empty accumulator for a block of `channels` x `block` at spatial `origin`.
    pub fn new(channels: usize, origin: &[u64], block: &[u64], with_variance: bool) -> Self {
        let spatial: Vec<usize> = block.iter().map(|&n| n as usize).collect();
        let mut full = vec![channels];
        full.extend(&spatial);
        Accumulator {
            origin: origin.to_vec(),
            sums: written_zeros(&full),
            weights: written_zeros(&spatial),
            second_moments: with_variance.then(|| written_zeros(&full)),
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
    ///
    /// Long on purpose: it is the stitch's inner loop, whose row setup, segment walk and
    /// per-pixel sums share a dozen locals that named steps would have to pass around in the
    /// hottest code of the operation.
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
    pub fn mean_into<T>(&self, out: ArrayViewMutD<'_, T>, convert: impl Fn(f64) -> T) {
        self.mean_rows_into(0..self.weights.shape()[0], out, convert);
    }

    /// Rows `rows` (local, along the first spatial axis) of the weight sums.
    fn weight_rows(&self, rows: Range<usize>) -> ArrayViewD<'_, f64> {
        self.weights.slice_axis(Axis(0), Slice::from(rows))
    }

    /// The weighted mean of local rows `rows` written into `out` (C, rows, ...).
    pub fn mean_rows_into<T>(
        &self,
        rows: Range<usize>,
        mut out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T,
    ) {
        let weights = self.weight_rows(rows.clone());
        let sums = self.sums.slice_axis(Axis(1), Slice::from(rows));
        for (mut o, s) in out.axis_iter_mut(Axis(0)).zip(sums.axis_iter(Axis(0))) {
            Zip::from(&mut o)
                .and(&s)
                .and(&weights)
                .for_each(|o, &x, &w| {
                    *o = convert(if w > 0.0 { x / w } else { f64::NAN });
                });
        }
    }

    /// The weight sums of local rows `rows` written into `out` (rows, ...).
    pub fn weights_rows_into<T>(
        &self,
        rows: Range<usize>,
        mut out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T,
    ) {
        Zip::from(&mut out)
            .and(&self.weight_rows(rows))
            .for_each(|o, &w| *o = convert(w));
    }

    /// The std ([`Accumulator::std`]) of local rows `rows` written into `out` (C, rows, ...);
    /// false (nothing written) without variances.
    pub fn std_rows_into<T>(
        &self,
        rows: Range<usize>,
        mut out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T,
    ) -> bool {
        let Some(m2) = self.second_moments.as_ref() else {
            return false;
        };
        let weights = self.weight_rows(rows.clone());
        let sums = self.sums.slice_axis(Axis(1), Slice::from(rows.clone()));
        let m2 = m2.slice_axis(Axis(1), Slice::from(rows));
        for ((mut o, s), m) in out
            .axis_iter_mut(Axis(0))
            .zip(sums.axis_iter(Axis(0)))
            .zip(m2.axis_iter(Axis(0)))
        {
            Zip::from(&mut o)
                .and(&s)
                .and(&m)
                .and(&weights)
                .for_each(|o, &x, &m, &w| {
                    *o = convert(if w > 0.0 {
                        let mu = x / w;
                        // Not f64::max: this exact expression is in the GPU kernel too.
                        let q = m / w - mu * mu;
                        let q = if q > 0.0 { q } else { 0.0 };
                        q.sqrt()
                    } else {
                        f64::NAN
                    });
                });
        }
        true
    }

    /// The values (sums, weights, second moments, in that order, each in logical order) as
    /// little-endian bytes: a carry sent to another rank. [`Accumulator::set_from_bytes`] on
    /// an accumulator of the same shape is the inverse, bit for bit.
    pub fn to_bytes(&self) -> Vec<u8> {
        let arrays = [
            Some(&self.sums),
            Some(&self.weights),
            self.second_moments.as_ref(),
        ];
        let mut out =
            Vec::with_capacity(8 * arrays.iter().flatten().map(|a| a.len()).sum::<usize>());
        for a in arrays.into_iter().flatten() {
            for x in a {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Sets every value from [`Accumulator::to_bytes`]' layout; false (nothing changed) when
    /// `bytes` is not exactly this accumulator's size.
    pub fn set_from_bytes(&mut self, bytes: &[u8]) -> bool {
        let count = self.sums.len()
            + self.weights.len()
            + self.second_moments.as_ref().map_or(0, |m| m.len());
        if bytes.len() != 8 * count {
            return false;
        }
        let mut values = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")));
        let arrays = [
            Some(&mut self.sums),
            Some(&mut self.weights),
            self.second_moments.as_mut(),
        ];
        for a in arrays.into_iter().flatten() {
            for (x, v) in a.iter_mut().zip(&mut values) {
                *x = v;
            }
        }
        true
    }

    /// The rows (absolute, first spatial axis) this accumulator covers.
    pub fn rows(&self) -> Range<u64> {
        self.origin[0]..self.origin[0] + self.weights.shape()[0] as u64
    }

    /// Applies `f(mine, theirs)` to every value (sums, weights, second moments) of the rows
    /// both accumulators cover; they must cover the same extent on every other axis.
    fn zip_rows(&mut self, other: &Accumulator, f: impl Fn(&mut f64, f64) + Copy) {
        let (mine, theirs) = (self.rows(), other.rows());
        let (lo, hi) = (mine.start.max(theirs.start), mine.end.min(theirs.end));
        if lo >= hi {
            return;
        }
        let local = |r: &Range<u64>| Slice::from((lo - r.start) as usize..(hi - r.start) as usize);
        let (a, b) = (local(&mine), local(&theirs));
        let pairs = [
            (&mut self.sums, &other.sums, 1),
            (&mut self.weights, &other.weights, 0),
        ];
        for (dst, src, axis) in pairs {
            Zip::from(dst.slice_axis_mut(Axis(axis), a))
                .and(src.slice_axis(Axis(axis), b))
                .for_each(|x, &y| f(x, y));
        }
        if let (Some(dst), Some(src)) = (self.second_moments.as_mut(), &other.second_moments) {
            Zip::from(dst.slice_axis_mut(Axis(1), a))
                .and(src.slice_axis(Axis(1), b))
                .for_each(|x, &y| f(x, y));
        }
    }

    /// The weighted standard deviation of the mixture of the patches' predictions:
    /// `sqrt(sum(w (var + p^2)) / sum(w) - mean^2)`, clamped at 0 against rounding.
    pub fn std(&self) -> Option<ArrayD<f64>> {
        let mut out = ArrayD::zeros(self.second_moments.as_ref()?.raw_dim());
        self.std_rows_into(0..self.weights.shape()[0], out.view_mut(), |x| x);
        Some(out)
    }
}

/// How many of the windows `windows` (indices along the first axis, starting at `starts`,
/// `window` rows high) cover each of `rows`: the work per row that
/// [`SplitAccumulator::balanced_cuts`] shares out.
pub fn coverage(starts: &[u64], window: u64, rows: &Range<u64>, windows: &Range<u64>) -> Vec<u64> {
    let mut delta = vec![0i64; (rows.end - rows.start) as usize + 1];
    for &start in &starts[windows.start as usize..windows.end as usize] {
        let (lo, hi) = (start.max(rows.start), (start + window).min(rows.end));
        if lo < hi {
            delta[(lo - rows.start) as usize] += 1;
            delta[(hi - rows.start) as usize] -= 1;
        }
    }
    let mut level = 0i64;
    delta[..delta.len() - 1]
        .iter()
        .map(|d| {
            level += d;
            level as u64
        })
        .collect()
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
    /// `parts` parts of (nearly) equal rows.
    pub fn new(
        channels: usize,
        origin: &[u64],
        block: &[u64],
        with_variance: bool,
        parts: usize,
    ) -> Self {
        let rows = block[0];
        let parts = (parts.max(1) as u64).min(rows.max(1));
        let cuts: Vec<u64> = (1..parts).map(|i| rows * i / parts).collect();
        Self::with_cuts(channels, origin, block, with_variance, &cuts)
    }

    /// `spare` emptied and moved to `origin` when it has `block`'s shape and `cuts` (no fresh
    /// pages to fault in), else a new accumulator ([`SplitAccumulator::with_cuts`]).
    pub fn reused_or_new(
        spare: Option<SplitAccumulator>,
        channels: usize,
        origin: &[u64],
        block: &[u64],
        with_variance: bool,
        cuts: &[u64],
    ) -> SplitAccumulator {
        match spare.filter(|a| a.block_shape() == block && a.cuts() == cuts) {
            Some(mut a) => {
                a.reset_at(origin);
                a
            }
            None => SplitAccumulator::with_cuts(channels, origin, block, with_variance, cuts),
        }
    }

    /// Parts that start at the block's first row and at each of `cuts` (row offsets inside
    /// the block, ascending, each in 1..rows).
    pub fn with_cuts(
        channels: usize,
        origin: &[u64],
        block: &[u64],
        with_variance: bool,
        cuts: &[u64],
    ) -> Self {
        let bounds: Vec<u64> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .chain(std::iter::once(block[0]))
            .collect();
        let parts = bounds
            .windows(2)
            .map(|r| {
                let mut o = origin.to_vec();
                o[0] += r[0];
                let mut b = block.to_vec();
                b[0] = r[1] - r[0];
                Accumulator::new(channels, &o, &b, with_variance)
            })
            .collect();
        SplitAccumulator { parts }
    }

    /// Where the parts after the first start (row offsets inside the block).
    pub fn cuts(&self) -> Vec<u64> {
        let first = self.rows().start;
        self.parts[1..]
            .iter()
            .map(|p| p.rows().start - first)
            .collect()
    }

    /// Cuts that share the work evenly among `parts` parts, when `coverage[r]` is the work of
    /// row r (the windows covering it): a part per thread then finishes with the others. An
    /// even split of rows is not even work: a band's accumulator reaches a window's height into
    /// the next band, where few of its windows are. At most `parts - 1` cuts, ascending, each
    /// in 1..rows; even rows when there is no work at all.
    pub fn balanced_cuts(coverage: &[u64], parts: usize) -> Vec<u64> {
        let rows = coverage.len() as u64;
        let parts = (parts.max(1) as u64).min(rows.max(1));
        let total: u64 = coverage.iter().sum();
        if total == 0 {
            return (1..parts).map(|i| rows * i / parts).collect();
        }
        let mut cuts = Vec::new();
        let mut done = 0u64;
        let mut next = 1u64;
        for (r, &c) in coverage.iter().enumerate() {
            // Cut before row r once the rows before it hold the next share of the work.
            while next < parts && done * parts >= total * next {
                if r > 0 && cuts.last() != Some(&(r as u64)) {
                    cuts.push(r as u64);
                }
                next += 1;
            }
            done += c;
        }
        cuts
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
        use rayon::prelude::*;
        self.parts.par_iter_mut().for_each(|p| {
            p.sums.fill(0.0);
            p.weights.fill(0.0);
            if let Some(m) = p.second_moments.as_mut() {
                m.fill(0.0);
            }
            p.nan_pixels = 0;
        });
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

    /// The rows (absolute) this accumulator covers.
    pub fn rows(&self) -> Range<u64> {
        let first = self.parts[0].rows().start;
        first..self.parts.last().map_or(first, |p| p.rows().end)
    }

    /// Adds another band's partial sums (`other`, e.g. a carry) into the rows both cover:
    /// one f64 addition per value, `S_g + S_{g-1}` of the module header.
    pub fn add_rows(&mut self, other: &Accumulator) {
        use rayon::prelude::*;
        self.parts
            .par_iter_mut()
            .for_each(|p| p.zip_rows(other, |x, y| *x += y));
    }

    /// A copy of rows `rows` (absolute, inside [`SplitAccumulator::rows`]) as one accumulator,
    /// with no NaN count: the partial sums a band carries into the next.
    ///
    /// The parts' rows are joined straight into the copy (one pass; zeros written first and
    /// then overwritten were a second pass over a whole band on the stitch's path).
    pub fn copy_rows(&self, rows: Range<u64>) -> Accumulator {
        let first = &self.parts[0];
        let mut origin = first.origin.clone();
        origin[0] = rows.start;
        let pieces: Vec<(&Accumulator, Range<usize>, usize)> =
            self.parts_in(rows.clone()).collect();
        if pieces.is_empty() {
            let mut block: Vec<u64> = first.weights.shape().iter().map(|&n| n as u64).collect();
            block[0] = 0;
            let channels = first.sums.shape()[0];
            return Accumulator::new(channels, &origin, &block, first.second_moments.is_some());
        }
        // Rows are axis 1 of sums and second moments (C, rows, ...), axis 0 of weights.
        let join = |of: &dyn Fn(&Accumulator) -> &ArrayD<f64>, axis: usize| {
            let views: Vec<_> = pieces
                .iter()
                .map(|(p, local, _)| of(p).slice_axis(Axis(axis), Slice::from(local.clone())))
                .collect();
            // Accumulators are C-order.
            crate::grid::join_c_order(axis, &views)
        };
        Accumulator {
            origin,
            sums: join(&|p| &p.sums, 1),
            weights: join(&|p| &p.weights, 0),
            second_moments: first.second_moments.as_ref().map(|_| {
                join(
                    &|p| p.second_moments.as_ref().expect("every part has them"),
                    1,
                )
            }),
            nan_pixels: 0,
        }
    }

    /// For each part meeting rows `rows` (absolute): the part, its local rows, and where they
    /// start within `rows`.
    fn parts_in(
        &self,
        rows: Range<u64>,
    ) -> impl Iterator<Item = (&Accumulator, Range<usize>, usize)> + '_ {
        self.parts.iter().filter_map(move |p| {
            let r = p.rows();
            let (lo, hi) = (r.start.max(rows.start), r.end.min(rows.end));
            (lo < hi).then(|| {
                let local = (lo - r.start) as usize..(hi - r.start) as usize;
                (p, local, (lo - rows.start) as usize)
            })
        })
    }

    /// Fills `out` (whose axis `axis` runs over rows `rows`, absolute) part by part in
    /// parallel: `fill(part, its local rows, its piece of out)`; true if any fill was.
    fn fill_rows<'a, T: Send>(
        &'a self,
        rows: Range<u64>,
        out: ArrayViewMutD<'a, T>,
        axis: usize,
        fill: impl Fn(&Accumulator, Range<usize>, ArrayViewMutD<'a, T>) -> bool + Sync,
    ) -> bool {
        use rayon::prelude::*;
        let mut rest = out;
        let mut pieces = Vec::with_capacity(self.parts.len());
        for (p, local, _) in self.parts_in(rows) {
            // Parts are consecutive, so each piece starts where the one before ended.
            let (piece, tail) = rest.split_at(Axis(axis), local.len());
            pieces.push((p, local, piece));
            rest = tail;
        }
        pieces
            .into_par_iter()
            .map(|(p, local, v)| fill(p, local, v))
            .reduce(|| false, |a, b| a | b)
    }

    /// The weighted mean of rows `rows` (absolute) written into `out` (C, rows, ...).
    pub fn mean_rows_into<T: Send>(
        &self,
        rows: Range<u64>,
        out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T + Copy + Send + Sync,
    ) {
        self.fill_rows(rows, out, 1, |p, local, v| {
            p.mean_rows_into(local, v, convert);
            true
        });
    }

    /// The weight sums of rows `rows` (absolute) written into `out` (rows, ...).
    pub fn weights_rows_into<T: Send>(
        &self,
        rows: Range<u64>,
        out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T + Copy + Send + Sync,
    ) {
        self.fill_rows(rows, out, 0, |p, local, v| {
            p.weights_rows_into(local, v, convert);
            true
        });
    }

    /// The std of rows `rows` (absolute) written into `out` (C, rows, ...); false without
    /// variances.
    pub fn std_rows_into<T: Send>(
        &self,
        rows: Range<u64>,
        out: ArrayViewMutD<'_, T>,
        convert: impl Fn(f64) -> T + Copy + Send + Sync,
    ) -> bool {
        self.fill_rows(rows, out, 1, |p, local, v| {
            p.std_rows_into(local, v, convert)
        })
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
    use ndarray::Dimension;

    fn border(b: u64, bw: f64) -> Weighting {
        Weighting {
            blend: Blend::Border,
            border: vec![b, b],
            border_weight: bw,
            sigma: 0.125,
        }
    }

    #[test]
    fn balanced_cuts_share_the_work() {
        // A band of 8 rows reaching 4 into the next: windows of 4 at 0, 2, 4, 6 cover
        // 1,1,2,2,2,2,2,2 then 1,1,0,0 (hand-counted); 16 in all, 8 per part.
        let coverage = [1, 1, 2, 2, 2, 2, 2, 2, 1, 1, 0, 0];
        assert_eq!(SplitAccumulator::balanced_cuts(&coverage, 2), vec![5]);
        assert_eq!(SplitAccumulator::balanced_cuts(&coverage, 4), vec![3, 5, 7]);
        assert_eq!(
            SplitAccumulator::balanced_cuts(&coverage, 1),
            Vec::<u64>::new()
        );
        // No work: even rows. More parts than rows: one row each.
        assert_eq!(SplitAccumulator::balanced_cuts(&[0; 6], 3), vec![2, 4]);
        assert_eq!(SplitAccumulator::balanced_cuts(&[1, 1], 5), vec![1]);
        // All the work in one row: that row can only be one part's.
        let cuts = SplitAccumulator::balanced_cuts(&[0, 0, 9, 0], 3);
        assert!(cuts.windows(2).all(|w| w[0] < w[1]) && cuts.iter().all(|&c| (1..4).contains(&c)));
        // Cut accumulators cover the block, in order, and report their cuts.
        let acc = SplitAccumulator::with_cuts(1, &[10, 0], &[12, 3], false, &[5]);
        assert_eq!(acc.rows(), 10..22);
        assert_eq!(acc.cuts(), vec![5]);
        assert_eq!(acc.parts[1].rows(), 15..22);
    }

    #[test]
    fn a_carry_crosses_ranks_as_bytes_bit_for_bit() {
        for with_variance in [false, true] {
            let mut a = Accumulator::new(2, &[5, 0], &[3, 4], with_variance);
            let mut x = 0.1_f64;
            let next = |x: &mut f64| {
                *x = (*x * 3.7 + 0.13).fract() - 0.5;
                *x * 1e-300_f64.powf(*x)
            };
            a.sums.iter_mut().for_each(|v| *v = next(&mut x));
            a.weights.iter_mut().for_each(|v| *v = next(&mut x));
            if let Some(m) = a.second_moments.as_mut() {
                m.iter_mut().for_each(|v| *v = next(&mut x));
            }
            a.sums[[1, 2, 3]] = f64::NAN;
            let bytes = a.to_bytes();
            assert_eq!(
                bytes.len(),
                8 * (24 + 12 + if with_variance { 24 } else { 0 })
            );
            let mut b = Accumulator::new(2, &[5, 0], &[3, 4], with_variance);
            assert!(b.set_from_bytes(&bytes));
            let bits = |a: &ArrayD<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.sums), bits(&b.sums));
            assert_eq!(bits(&a.weights), bits(&b.weights));
            if with_variance {
                assert_eq!(
                    bits(a.second_moments.as_ref().unwrap()),
                    bits(b.second_moments.as_ref().unwrap())
                );
            }
            // The wrong size changes nothing.
            let mut c = Accumulator::new(2, &[5, 0], &[2, 4], with_variance);
            assert!(!c.set_from_bytes(&bytes));
            assert!(c.sums.iter().all(|&v| v == 0.0));
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
        let wt = weights(&grid.window, &Weighting::gaussian(3, 0.2));
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

    /// The banded rule the straightforward way: per pixel, one partial sum over the covering
    /// windows of its band and one over those of the band before, each in patch order from 0,
    /// added at the end; the mean (C, *image) and the weight sums.
    fn banded_reference(
        grid: &WindowGrid,
        band_rows: u64,
        patches: &[(Vec<u64>, ArrayD<f64>)],
        w: &ArrayD<f64>,
        channels: usize,
    ) -> (ArrayD<f64>, ArrayD<f64>) {
        let spatial: Vec<usize> = grid.image.iter().map(|&n| n as usize).collect();
        let mut weights = ArrayD::<f64>::zeros(IxDyn(&spatial));
        let mut full = vec![channels];
        full.extend(&spatial);
        let mut mean = ArrayD::<f64>::zeros(IxDyn(&full));
        for (pix, total) in weights.indexed_iter_mut() {
            let pix = pix.slice();
            let band = pix[0] as u64 / band_rows;
            let (mut ws, mut sums) = ([0.0f64; 2], vec![[0.0f64; 2]; channels]);
            for (start, p) in patches {
                let inside = (0..pix.len()).all(|a| {
                    start[a] <= pix[a] as u64 && (pix[a] as u64) < start[a] + grid.window[a]
                });
                if !inside {
                    continue;
                }
                let rel: Vec<usize> = (0..pix.len()).map(|a| pix[a] - start[a] as usize).collect();
                let b = usize::from(start[0] / band_rows == band);
                let wt = w[IxDyn(&rel)];
                ws[b] += wt;
                for (c, s) in sums.iter_mut().enumerate() {
                    let mut at = vec![c];
                    at.extend(&rel);
                    s[b] += wt * p[IxDyn(&at)];
                }
            }
            *total = ws[0] + ws[1];
            for (c, s) in sums.iter().enumerate() {
                let mut at = vec![c];
                at.extend(pix);
                mean[IxDyn(&at)] = (s[0] + s[1]) / *total;
            }
        }
        (mean, weights)
    }

    #[test]
    fn bands_are_whole_chunks_at_least_a_window_high() {
        let b = Bands::new(4, 10, 30);
        assert_eq!((b.rows, b.count()), (12, 3));
        assert_eq!(b.rows_of(2), 24..30);
        assert_eq!(b.reach(0), 0..21);
        assert_eq!(b.reach(2), 24..30);
        assert_eq!(Bands::new(16, 10, 30).rows, 16);
        assert_eq!(Bands::new(3, 3, 9).rows, 3);
        // Windows of 10 rows at 0, 4, 8, 12, 16, 20 (the last flush with row 30).
        let starts = [0, 4, 8, 12, 16, 20];
        assert_eq!(b.windows(&starts, 0), 0..3);
        assert_eq!(b.windows(&starts, 1), 3..6);
        assert_eq!(b.windows(&starts, 2), 6..6);
        // Of band 0's windows, those at 4 and 8 reach into band 1 (row 12 on).
        assert_eq!(b.overhanging(&starts, 0), 1..3);
        // Of band 1's (12, 16, 20), those at 16 and 20 reach past row 24.
        assert_eq!(b.overhanging(&starts, 1), 4..6);
    }

    /// Units of any number of bands, carries kept between units or re-read from the
    /// overhanging windows: the same bits as the straightforward banded reference.
    #[test]
    fn banded_units_match_the_reference_for_any_unit_size() {
        let grid = WindowGrid::new(&[23, 7, 6], &[5, 4, 3], &[2, 3, 2], false).unwrap();
        let wt = weights(&grid.window, &Weighting::gaussian(3, 0.3));
        let per_row = (grid.per_image() / grid.counts()[0]) as usize;
        let starts = grid.starts(0);
        let patches: Vec<(Vec<u64>, ArrayD<f64>)> = (0..grid.per_image())
            .map(|k| {
                let p = ArrayD::from_shape_fn(IxDyn(&[2, 5, 4, 3]), |i| {
                    ((k as usize * 37 + i[0] * 11 + i[1] * 5 + i[2] * 3 + i[3]) as f64 * 0.61).sin()
                        * 1e3
                });
                (grid.window_start(k), p)
            })
            .collect();
        let window_rows = |rows: Range<u64>| -> Vec<PatchRef<'_, f64>> {
            patches[rows.start as usize * per_row..rows.end as usize * per_row]
                .iter()
                .map(|(s, p)| (p.view(), None, s.clone()))
                .collect()
        };
        for chunk in [1u64, 2, 5, 7, 23] {
            let bands = Bands::new(chunk, 5, 23);
            let (mean, wsum) = banded_reference(&grid, bands.rows, &patches, &wt, 2);
            let whole = |rows: Range<u64>| {
                SplitAccumulator::new(
                    2,
                    &[rows.start, 0, 0],
                    &[rows.end - rows.start, 7, 6],
                    false,
                    3,
                )
            };
            if chunk == 1 {
                // The rule matters: one sum per pixel in patch order gives other bits.
                let mut one = whole(0..23);
                one.add_all(&window_rows(0..grid.counts()[0]), &wt);
                let bits = |a: &ArrayD<f64>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_ne!(bits(&one.mean()), bits(&mean));
            }
            for unit_bands in [1u64, 2, 5] {
                for keep_carry in [true, false] {
                    let mut got = ArrayD::<f64>::zeros(IxDyn(&[2, 23, 7, 6]));
                    let mut got_w = ArrayD::<f64>::zeros(IxDyn(&[23, 7, 6]));
                    let mut carry: Option<Accumulator> = None;
                    for g in 0..bands.count() {
                        if g % unit_bands == 0 && !keep_carry {
                            // A unit starting here on a fresh rank: re-read the carry.
                            carry = (g > 0).then(|| {
                                let rows = bands.rows_of(g).start..bands.reach(g - 1).end;
                                let mut acc = whole(rows.clone());
                                acc.add_all(&window_rows(bands.overhanging(&starts, g - 1)), &wt);
                                acc.copy_rows(rows)
                            });
                        }
                        let mut acc = whole(bands.reach(g));
                        acc.add_all(&window_rows(bands.windows(&starts, g)), &wt);
                        if let Some(c) = &carry {
                            acc.add_rows(c);
                        }
                        let band = bands.rows_of(g);
                        carry = Some(acc.copy_rows(band.end..acc.rows().end));
                        let at = Slice::from(band.start as usize..band.end as usize);
                        acc.mean_rows_into(band.clone(), got.slice_axis_mut(Axis(1), at), |x| x);
                        acc.weights_rows_into(band, got_w.slice_axis_mut(Axis(0), at), |x| x);
                    }
                    let bits = |a: &ArrayD<f64>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let ctx = (chunk, unit_bands, keep_carry);
                    assert_eq!(bits(&got), bits(&mean), "{ctx:?}");
                    assert_eq!(bits(&got_w), bits(&wsum), "{ctx:?}");
                }
            }
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
