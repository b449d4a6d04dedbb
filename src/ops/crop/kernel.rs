//! Diffraction-pattern cropping kernels: centre, retention radius, crop window, retention.
//! Pure functions on one (H, W) pattern given as a C-order slice.
//!
//! Definitions (users check these):
//! - Fixed point: every sum below is exact, of integers. A pattern's value v counts as
//!   q = round_half_even(v * 2^s), with one scale s per pattern: the largest that keeps
//!   |q| <= 2^B, B = min(50, 53 - ceil(log2 H*W) - ceil(log2 max(H, W))), so that every
//!   sum (of q, y*q, x*q) stays below 2^53 and is exact in f64 ([`Fixed`]). Integer data keep
//!   s <= 0: they are counted exactly unless a pattern's values are too large for that (2^29
//!   and above for 256x256 patterns, 2^23 for 1024x1024). Floats keep B bits below their
//!   largest value (29 for 256x256), whatever its magnitude: s runs from -1022 (values near
//!   f64's largest) to 1123 (a largest value of 2^-1074, the smallest subnormal), so the
//!   analysis does not depend on the pattern's scale (a pattern times a power of two has the
//!   same q); 2^s is applied as two factors where it is beyond f64's range. Exact sums do not
//!   depend on their order, so the GPU's parallel sums (f64 atomics) give the same bits as
//!   the CPU's.
//! - Total: the sum of q, reported as f64 (times 2^-s).
//! - Centre: `centroid` = intensity-weighted mean pixel index ((y, x): the sums of y*q and
//!   x*q over the sum of q, as f64); `center` = ((H-1)/2, (W-1)/2); `manual` = given. A
//!   pattern whose total is not positive has no centroid and uses the geometric centre.
//! - Retention radius: the smallest r such that the sum of q over the pixels at distance <= r
//!   from the centre reaches `ceil(target * total_q)` (pixels at equal distance enter
//!   together; squared distances `dy*dy + dx*dx` in f64). Computed from the previous
//!   pattern's radius where it can be: the disk inside a ring of +-3 pixels around it is
//!   summed by row spans, and if the crossing lies in the ring only the ring's pixels are
//!   ordered. Otherwise a histogram of squared distances (1024 bins), then an exact sort of
//!   the one bin where the sum crosses the target. Patterns with negative pixels use the full
//!   sort (their running sum is not monotonic). Every path gives the same radius (the sums
//!   are exact). A pattern with total <= 0 has radius 0 and is reported as empty.
//! - Crop: a square window of side `min(2R + 1, size)` per axis whose centre pixel is
//!   `floor(c + 0.5)`, shifted inside the image where it would cross an edge; its retention
//!   is the sum of q inside over the total's, as f64.

use crate::io::Element;
use serde::{Deserialize, Serialize};

/// A pixel as f64.
#[inline]
fn f<T: Element>(v: T) -> f64 {
    v.to_f64().unwrap_or(f64::NAN)
}

/// Patterns whose sums are not positive get this kind instead of a radius.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    Normal,
    /// Sum exactly 0 (or no pixels).
    Empty,
    /// Negative sum.
    Negative,
    /// NaN or infinite values (or a sum beyond f64): rejected by the caller.
    NotFinite,
}

/// Per-pattern result of the analysis pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Analysis {
    pub total: f64,
    pub centre: (f64, f64),
    pub radius: f64,
    pub kind: PatternKind,
    /// The pattern's fixed-point scale s and its total in q units (as f64).
    pub scale: i32,
    pub total_q: f64,
}

/// How the centre of each pattern is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CentreMethod {
    /// Intensity-weighted centroid (pixel indices).
    #[default]
    Centroid,
    /// Geometric centre of the image.
    Center,
    /// The same given (y, x) for every pattern.
    Manual,
}

/// Independent partial sums per row: the adds of one lane do not wait on the previous pixel's,
/// and the compiler can vectorise them.
const SUM_LANES: usize = 8;

/// Bits the largest |q| of a pattern may use at most (|q| <= 2^51 keeps the rounding of
/// [`round_even`] exact).
const MAX_BITS: i32 = 50;

/// `x` rounded to the nearest integer, ties to even, for |x| <= 2^51: adding and removing
/// 1.5 * 2^52 leaves no fraction bits (one IEEE addition each way; the GPU does the same).
#[inline]
fn round_even(x: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    (x + MAGIC) - MAGIC
}

/// 2^e for e in -1022..=1023, exactly.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((e + 1023) as u64) << 52)
}

/// ceil(log2 n) for n >= 1.
fn ceil_log2(n: u64) -> i32 {
    (64 - n.max(1).saturating_sub(1).leading_zeros()) as i32
}

/// A pattern's fixed-point scale (module docs): its values count as `q = round(v * 2^s)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fixed {
    pub s: i32,
    /// 2^s as `low * high`, `low = 2^min(s, 1022)`: `high` is 1.0 except for patterns whose
    /// largest value is below about 2^-990 (2^s is then past f64's range).
    low: f64,
    high: f64,
}

/// The largest scale one factor holds (2^1022; 2^1023 is f64's largest power of two, kept
/// out so that `Fixed::value` can split -s in two halves).
const ONE_FACTOR: i32 = 1022;

/// Exponent e with `x < 2^e` (and `x >= 2^(e-1)`) for a finite x > 0, subnormals included.
fn exponent_above(x: f64) -> i32 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal: x = m * 2^-1074, below 2^(bit length of m - 1074).
        (64 - (bits & ((1 << 52) - 1)).leading_zeros()) as i32 - 1074
    } else {
        biased - 1022
    }
}

impl Fixed {
    /// The scale of a pattern of `pixels` pixels, `longest` along its longer side, whose
    /// largest |value| is `max_abs` (finite); integer data (`float` false) keep s <= 0.
    pub fn of(max_abs: f64, pixels: u64, longest: u64, float: bool) -> Fixed {
        let bits = (53 - ceil_log2(pixels) - ceil_log2(longest)).clamp(1, MAX_BITS);
        // max_abs < 2^e; then |v * 2^(bits - e)| < 2^bits.
        let e = if max_abs > 0.0 {
            exponent_above(max_abs)
        } else {
            bits
        };
        let mut s = (bits - e).max(-1022);
        if !float {
            s = s.min(0);
        }
        Fixed::from_scale(s)
    }

    /// The fixed point of scale `s` (an analysis' `scale`), -1022..=1123.
    pub fn from_scale(s: i32) -> Fixed {
        let low = s.min(ONE_FACTOR);
        Fixed {
            s,
            low: pow2(low),
            high: pow2(s - low),
        }
    }

    /// A value in fixed point (an integer, as f64): `v * 2^s` exactly (both factors are
    /// powers of two and v * low is not rounded: v has at most 53 significant bits and
    /// |v * 2^s| < 2^50), rounded once.
    #[inline]
    pub fn q(&self, v: f64) -> f64 {
        round_even(v * self.low * self.high)
    }

    /// A fixed-point sum as a value (times 2^-s).
    pub fn value(&self, q: f64) -> f64 {
        // Two steps: 2^-s alone may be out of range where s is near its bounds.
        q * pow2(-self.s / 2) * pow2(-self.s + self.s / 2)
    }
}

/// The sum of the q of a slice, in [`SUM_LANES`] independent partial sums (vectorised; exact,
/// so the split does not change it).
fn sum_q<T: Element>(s: &[T], fixed: Fixed) -> f64 {
    let mut acc = [0.0f64; SUM_LANES];
    let mut chunks = s.chunks_exact(SUM_LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += fixed.q(f(v));
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| fixed.q(f(v))).sum();
    acc.iter().sum::<f64>() + tail
}

/// A pattern's largest |value|, whether some value is below zero, and whether all are finite.
fn extremes<T: Element>(p: &[T]) -> (f64, bool, bool) {
    // Lanes of maxima and minima (vectorised); NaN and infinities are counted apart.
    let (mut most, mut low) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
    let mut finite = true;
    let mut chunks = p.chunks_exact(SUM_LANES);
    for c in &mut chunks {
        for (k, &v) in c.iter().enumerate() {
            let v = f(v);
            finite &= v.is_finite();
            let a = v.abs();
            most[k] = if a > most[k] { a } else { most[k] };
            low[k] = if v < low[k] { v } else { low[k] };
        }
    }
    for &v in chunks.remainder() {
        let v = f(v);
        finite &= v.is_finite();
        let a = v.abs();
        most[0] = if a > most[0] { a } else { most[0] };
        low[0] = if v < low[0] { v } else { low[0] };
    }
    let most = most.iter().fold(0.0f64, |m, &a| if a > m { a } else { m });
    (most, low.iter().any(|&l| l < 0.0), finite)
}

/// The fixed-point scale and total of a pattern, and the sum target `target` asks for:
/// `ceil(target * total)` in q units.
pub fn goal(target: f64, total_q: f64) -> f64 {
    (target * total_q).ceil()
}

/// The total and the intensity-weighted centroid of a pattern (`None` centroid when the
/// total is not positive); a pattern holding NaN or an infinity has a NaN total.
pub fn total_and_centroid<T: Element>(p: &[T], w: usize) -> (f64, Option<(f64, f64)>) {
    let m = moments(p, w);
    (m.total, m.centroid)
}

/// What two reads of a pattern tell.
struct Moments {
    fixed: Fixed,
    /// The sum of q (an integer below 2^53).
    total_q: f64,
    total: f64,
    centroid: Option<(f64, f64)>,
    /// Some pixel is below zero.
    negative: bool,
    finite: bool,
}

fn moments<T: Element>(p: &[T], w: usize) -> Moments {
    let h = p.len() / w.max(1);
    let (most, negative, finite) = extremes(p);
    let fixed = Fixed::of(
        if finite { most } else { 0.0 },
        p.len() as u64,
        h.max(w) as u64,
        T::DTYPE.is_float(),
    );
    if !finite {
        return Moments {
            fixed,
            total_q: 0.0,
            total: f64::NAN,
            centroid: None,
            negative,
            finite,
        };
    }
    let (mut total, mut sy, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    for (y, row) in p.chunks_exact(w).enumerate() {
        // Lanes of independent sums (vectorised); exact, so their order does not matter.
        let (mut s, mut m) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
        let mut chunks = row.chunks_exact(SUM_LANES);
        let mut base = 0.0f64;
        for c in &mut chunks {
            for (k, &v) in c.iter().enumerate() {
                let q = fixed.q(f(v));
                s[k] += q;
                m[k] += q * (base + k as f64);
            }
            base += SUM_LANES as f64;
        }
        let (mut rs, mut rx) = (s.iter().sum::<f64>(), m.iter().sum::<f64>());
        for (k, &v) in chunks.remainder().iter().enumerate() {
            let q = fixed.q(f(v));
            rs += q;
            rx += q * (base + k as f64);
        }
        total += rs;
        sy += rs * y as f64;
        sx += rx;
    }
    let centroid = (total > 0.0).then(|| (sy / total, sx / total));
    Moments {
        fixed,
        total_q: total,
        total: fixed.value(total),
        centroid,
        negative,
        finite,
    }
}

/// Histogram bins of squared distance (the crossing bin is then sorted exactly).
const BINS: usize = 1024;
/// Interleaved partial histograms: consecutive pixels land in different copies, so the
/// read-modify-write of one bin does not wait on the previous pixel's (a store-forwarding
/// chain that took a third of the analysis time).
const LANES: usize = 4;

/// The retention radius by the definition: every pixel sorted by squared distance.
pub fn radius_by_sort<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    fixed: Fixed,
    goal: f64,
) -> f64 {
    let mut px: Vec<(f64, f64)> = p
        .iter()
        .enumerate()
        .map(|(i, &v)| (d2(i, w, centre), fixed.q(f(v))))
        .collect();
    first_reaching(&mut px, 0.0, goal).unwrap_or_else(|| farthest(p.len() / w, w, centre))
}

/// Sorts `(squared distance, q)` pixels by distance and returns the distance at which `start`
/// plus the running sum first reaches `goal` (pixels at one distance enter together); `None`
/// when it never does.
fn first_reaching(px: &mut [(f64, f64)], start: f64, goal: f64) -> Option<f64> {
    px.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut sum = start;
    let mut i = 0;
    while i < px.len() {
        let mut j = i;
        while j < px.len() && px[j].0 == px[i].0 {
            sum += px[j].1;
            j += 1;
        }
        if sum >= goal {
            return Some(px[i].0.sqrt());
        }
        i = j;
    }
    None
}

fn d2(i: usize, w: usize, (cy, cx): (f64, f64)) -> f64 {
    let (dy, dx) = ((i / w) as f64 - cy, (i % w) as f64 - cx);
    dy * dy + dx * dx
}

/// The distance of the farthest pixel (a corner): the radius when the goal is never reached
/// (a goal rounded above the total).
pub fn farthest(h: usize, w: usize, (cy, cx): (f64, f64)) -> f64 {
    let corner = |y: usize, x: usize| {
        let (dy, dx) = (y as f64 - cy, x as f64 - cx);
        dy * dy + dx * dx
    };
    let (y1, x1) = (h.saturating_sub(1), w.saturating_sub(1));
    corner(0, 0)
        .max(corner(0, x1))
        .max(corner(y1, 0))
        .max(corner(y1, x1))
        .sqrt()
}

/// The retention radius (see the module docs) of a pattern in fixed point `fixed`, for the
/// sum `goal` (in q units). `guess`, a radius expected to be close (the previous pattern's),
/// lets most patterns skip the full histogram: only the ring within [`GUESS_SLACK`] pixels of
/// it is sorted, after checking that the crossing lies inside that ring; the result is the
/// same either way (the sums are exact).
pub fn retention_radius<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    fixed: Fixed,
    goal: f64,
    guess: Option<f64>,
) -> f64 {
    let negative = p.iter().any(|&v| f(v) < 0.0);
    radius_of(p, w, centre, fixed, goal, guess, negative)
}

/// [`retention_radius`] when whether the pattern has negative pixels is known.
fn radius_of<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    fixed: Fixed,
    goal: f64,
    guess: Option<f64>,
    negative: bool,
) -> f64 {
    if negative {
        return radius_by_sort(p, w, centre, fixed, goal);
    }
    guess
        .and_then(|g| radius_near(p, w, centre, fixed, goal, g))
        .unwrap_or_else(|| radius_non_negative(p, w, centre, fixed, goal))
}

/// Half-width, in pixels, of the ring searched around a guessed radius.
pub const GUESS_SLACK: f64 = 3.0;

/// The columns `x` of a row with `dy2 + dx2[x] <= limit` (computed exactly so, in f64): an
/// interval around the centre column `cx`, since `dx2` falls and then rises.
fn span(dx2: &[f64], dy2: f64, limit: f64, cx: f64) -> (usize, usize) {
    let w = dx2.len();
    let inside = |x: usize| dy2 + dx2[x] <= limit;
    let t = limit - dy2;
    if t.is_nan() || t < 0.0 || w == 0 {
        return (0, 0);
    }
    let h = t.sqrt();
    let mut a = ((cx - h).ceil().max(0.0) as usize).min(w);
    let mut b = (((cx + h).floor() + 1.0).max(0.0) as usize).min(w);
    if a >= b {
        let c = (cx.round().max(0.0) as usize).min(w - 1);
        if !inside(c) {
            return (0, 0);
        }
        (a, b) = (c, c + 1);
    }
    while a > 0 && inside(a - 1) {
        a -= 1;
    }
    while a < b && !inside(a) {
        a += 1;
    }
    while b < w && inside(b) {
        b += 1;
    }
    while b > a && !inside(b - 1) {
        b -= 1;
    }
    (a, b)
}

/// The radius when it lies in the ring `guess +- GUESS_SLACK`: the disk inside the ring is
/// summed by row spans, the ring's pixels are ordered, and `None` says the crossing is
/// elsewhere (the caller then takes the full histogram).
fn radius_near<T: Element>(
    p: &[T],
    w: usize,
    (cy, cx): (f64, f64),
    fixed: Fixed,
    goal: f64,
    guess: f64,
) -> Option<f64> {
    let lo = (guess - GUESS_SLACK).max(0.0);
    let hi = guess + GUESS_SLACK;
    let (lo2, hi2) = (lo * lo, hi * hi);
    let dx2: Vec<f64> = (0..w).map(|x| (x as f64 - cx).powi(2)).collect();
    let mut inner = 0.0f64;
    let mut ring: Vec<(f64, f64)> = Vec::new();
    for (y, row) in p.chunks_exact(w).enumerate() {
        let dy2 = (y as f64 - cy).powi(2);
        let (ha, hb) = span(&dx2, dy2, hi2, cx);
        if ha == hb {
            continue;
        }
        let (la, lb) = span(&dx2, dy2, lo2, cx);
        let (la, lb) = if la == lb { (ha, ha) } else { (la, lb) };
        inner += sum_q(&row[la..lb], fixed);
        for x in (ha..la).chain(lb..hb) {
            ring.push((dy2 + dx2[x], fixed.q(f(row[x]))));
        }
    }
    if inner >= goal {
        return None;
    }
    crossing(&mut ring, inner, goal, lo2, hi2)
}

/// [`first_reaching`] for many pixels with squared distances in `[lo2, hi2]`: a fine histogram
/// finds the bin where the running sum crosses, and only that bin is sorted. `None` when the
/// pixels do not bring `start` up to `goal`.
fn crossing(px: &mut [(f64, f64)], start: f64, goal: f64, lo2: f64, hi2: f64) -> Option<f64> {
    const FINE: usize = 64;
    let scale = FINE as f64 / (hi2 - lo2).max(f64::MIN_POSITIVE);
    let bin = |d: f64| (((d - lo2).max(0.0) * scale) as usize).min(FINE - 1);
    let mut hist = [0.0f64; FINE];
    for &(d, q) in px.iter() {
        hist[bin(d)] += q;
    }
    let mut below = start;
    let mut k = None;
    for (b, &s) in hist.iter().enumerate() {
        if below + s >= goal {
            k = Some(b);
            break;
        }
        below += s;
    }
    let k = k?;
    let mut last: Vec<(f64, f64)> = px.iter().copied().filter(|q| bin(q.0) == k).collect();
    first_reaching(&mut last, below, goal)
}

/// The histogram's scale: bin of squared distance d is `(d * scale)` truncated, at most
/// `BINS - 1`; `scale = (BINS - 1) / (largest squared distance)` (the GPU's formula too).
pub fn bin_scale(h: usize, w: usize, centre: (f64, f64)) -> f64 {
    let far = |c: f64, n: usize| c.abs().max((n as f64 - 1.0 - c).abs());
    let max_d2 = far(centre.0, h).powi(2) + far(centre.1, w).powi(2);
    (BINS as f64 - 1.0) / max_d2.max(f64::MIN_POSITIVE)
}

/// [`retention_radius`] for a pattern known to have no negative pixel: a histogram of q by
/// squared distance finds the bin where the running sum reaches the goal, then that bin's
/// pixels are sorted.
fn radius_non_negative<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    fixed: Fixed,
    goal: f64,
) -> f64 {
    let h = p.len() / w;
    let scale = bin_scale(h, w, centre);
    let bin = |d: f64| ((d * scale) as usize).min(BINS - 1);
    let dx2: Vec<f64> = (0..w).map(|x| (x as f64 - centre.1).powi(2)).collect();
    let mut lanes = vec![0.0f64; BINS * LANES];
    for (y, row) in p.chunks_exact(w).enumerate() {
        let dy2 = (y as f64 - centre.0).powi(2);
        for (x, (&v, &d)) in row.iter().zip(&dx2).enumerate() {
            lanes[(x % LANES) * BINS + bin(dy2 + d)] += fixed.q(f(v));
        }
    }
    let mut below = 0.0f64;
    let mut k = None;
    for b in 0..BINS {
        let s: f64 = (0..LANES).map(|l| lanes[l * BINS + b]).sum();
        if below + s >= goal {
            k = Some(b);
            break;
        }
        below += s;
    }
    let Some(k) = k else {
        return farthest(h, w, centre);
    };
    // Exact within bin k: its pixels sorted by distance, added to the bins below. Only the
    // columns whose squared distance can fall in bin k are visited (with one column of slack
    // each side against rounding; the bin test itself is exact).
    let lo = k as f64 / scale;
    let hi = (k + 1) as f64 / scale;
    let mut px: Vec<(f64, f64)> = Vec::new();
    for (y, row) in p.chunks_exact(w).enumerate() {
        let dy2 = (y as f64 - centre.0).powi(2);
        if dy2 > hi {
            continue;
        }
        let outer = (hi - dy2).sqrt();
        let inner = (lo - dy2).max(0.0).sqrt();
        let ranges = [
            (centre.1 - outer - 1.0, centre.1 - inner + 1.0),
            (centre.1 + inner - 1.0, centre.1 + outer + 1.0),
        ];
        let mut last_end = 0usize;
        for (a, b) in ranges {
            let start = (a.floor().max(0.0) as usize).max(last_end);
            let end = ((b.ceil() + 1.0).max(0.0) as usize).min(w);
            for x in start..end {
                let d = dy2 + dx2[x];
                if bin(d) == k {
                    px.push((d, fixed.q(f(row[x]))));
                }
            }
            last_end = last_end.max(end);
        }
    }
    first_reaching(&mut px, below, goal).expect("the crossing lies in bin k: the sums are exact")
}

/// Analyses one pattern; `guess` as in [`retention_radius`]. A pattern holding NaN or an
/// infinity is [`PatternKind::NotFinite`].
pub fn analyse<T: Element>(
    p: &[T],
    w: usize,
    method: CentreMethod,
    manual: Option<(f64, f64)>,
    target: f64,
    guess: Option<f64>,
) -> Analysis {
    let h = p.len() / w;
    let geometric = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let m = moments(p, w);
    let centre = match method {
        CentreMethod::Centroid => m.centroid.unwrap_or(geometric),
        CentreMethod::Center => geometric,
        CentreMethod::Manual => manual.unwrap_or(geometric),
    };
    let kind = if !m.finite {
        PatternKind::NotFinite
    } else if m.total_q > 0.0 {
        PatternKind::Normal
    } else if m.total_q < 0.0 {
        PatternKind::Negative
    } else {
        PatternKind::Empty
    };
    let radius = if kind == PatternKind::Normal {
        let goal = goal(target, m.total_q);
        radius_of(p, w, centre, m.fixed, goal, guess, m.negative)
    } else {
        0.0
    };
    Analysis {
        total: m.total,
        centre,
        radius,
        kind,
        scale: m.fixed.s,
        total_q: m.total_q,
    }
}

/// Percentile `q` (0..=100) with linear interpolation between order statistics (numpy's
/// default). `values` must be non-empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Crop window start and side on one axis of extent `n`, around centre `c` with radius `r`.
pub fn window(c: f64, r: u64, n: u64) -> (u64, u64) {
    // A radius of n or more already covers the whole axis (and keeps the arithmetic in range).
    let r = r.min(n);
    let side = (2 * r + 1).min(n);
    let centre = (c + 0.5).floor() as i64;
    let start = (centre - r as i64).clamp(0, (n - side) as i64) as u64;
    (start, side)
}

/// Copies the crop of `p` (H x W) into `out` (side_h x side_w) and returns the sum of its q
/// (fixed point `fixed`, as the pattern's analysis).
pub fn crop_into<T: Element>(
    p: &[T],
    w: usize,
    (y0, x0): (usize, usize),
    side_w: usize,
    fixed: Fixed,
    out: &mut [T],
) -> f64 {
    let mut sum = 0.0f64;
    for (r, o) in out.chunks_exact_mut(side_w).enumerate() {
        let row = &p[(y0 + r) * w + x0..(y0 + r) * w + x0 + side_w];
        o.copy_from_slice(row);
        sum += sum_q(row, fixed);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_bright_pixel_has_radius_zero_at_its_position() {
        let mut p = vec![0.0f32; 7 * 9];
        p[2 * 9 + 6] = 5.0;
        let a = analyse(&p, 9, CentreMethod::Centroid, None, 0.98, None);
        assert_eq!(a.centre, (2.0, 6.0));
        assert_eq!(a.radius, 0.0);
        // From the geometric centre (3, 4): distance sqrt(1 + 4).
        let g = analyse(&p, 9, CentreMethod::Center, None, 0.98, None);
        assert_eq!(g.radius, 5f64.sqrt());
    }

    #[test]
    fn a_uniform_disk_needs_the_distance_that_holds_the_target_fraction() {
        // Disk of radius 10 (pixels with d^2 <= 100) around (20, 20) in 41 x 41.
        let w = 41;
        let p: Vec<f32> = (0..w * w)
            .map(|i| {
                if d2(i, w, (20.0, 20.0)) <= 100.0 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let a = analyse(&p, w, CentreMethod::Centroid, None, 1.0, None);
        assert_eq!(a.centre, (20.0, 20.0));
        assert_eq!(a.radius, 10.0);
        // Half the disk's pixels: the smallest distance whose disk holds at least half.
        let n = p.iter().filter(|&&v| v > 0.0).count() as f64;
        let half = analyse(&p, w, CentreMethod::Centroid, None, 0.5, None).radius;
        let inside = |r: f64| {
            (0..w * w)
                .filter(|&i| d2(i, w, (20.0, 20.0)) <= r * r + 1e-9)
                .count() as f64
        };
        assert!(inside(half) >= n / 2.0);
        let smaller: f64 = (0..w * w)
            .map(|i| d2(i, w, (20.0, 20.0)))
            .filter(|&d| d < half * half - 1e-9)
            .fold(0.0, f64::max);
        assert!(inside(smaller.sqrt()) < n / 2.0);
    }

    /// Values in [0, 1) from a xorshift stream seeded with `seed`.
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut bits = crate::grid::xorshift(seed);
        move || crate::grid::unit_f32(bits())
    }

    #[test]
    fn the_histogram_path_equals_the_full_sort_on_random_patterns() {
        let mut next = uniform(12345);
        for case in 0..40 {
            let (h, w) = (17 + case % 5, 23 + case % 7);
            let p: Vec<f32> = (0..h * w).map(|_| next().powi(3) * 100.0).collect();
            let m = moments(&p, w);
            let centre = m.centroid.unwrap();
            for target in [0.5, 0.9, 0.98, 1.0] {
                let goal = goal(target, m.total_q);
                let exact = radius_by_sort(&p, w, centre, m.fixed, goal);
                // Without a guess, with the right one, with near and far ones (the ring
                // misses the crossing on either side, or reaches past the image).
                for guess in [None, Some(exact), Some(exact + 1.7), Some(exact - 2.9)]
                    .into_iter()
                    .chain([0.0, 2.5, 6.0, 40.0].map(Some))
                {
                    assert_eq!(
                        retention_radius(&p, w, centre, m.fixed, goal, guess),
                        exact,
                        "case {case} target {target} guess {guess:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn row_spans_match_a_scan_of_the_row() {
        for w in [1usize, 2, 7, 16] {
            for cx in [0.0, 0.4, 0.5, 3.25, w as f64 - 1.0] {
                let dx2: Vec<f64> = (0..w).map(|x| (x as f64 - cx).powi(2)).collect();
                for dy2 in [0.0, 0.3, 2.0, 9.0] {
                    for limit in [0.0, 0.1, 0.25, 1.0, 2.0, 2.25, 9.0, 10.0, 50.0, 400.0] {
                        let inside: Vec<usize> =
                            (0..w).filter(|&x| dy2 + dx2[x] <= limit).collect();
                        let (a, b) = span(&dx2, dy2, limit, cx);
                        let got: Vec<usize> = (a..b).collect();
                        assert_eq!(got, inside, "w {w} cx {cx} dy2 {dy2} limit {limit}");
                    }
                }
            }
        }
    }

    #[test]
    fn fixed_point_hand_checked() {
        // 4 x 4 f32, largest 1.0: 47 bits (53 - 4 - 2), 1.0 < 2^1, so s = 46.
        let f = Fixed::of(1.0, 16, 4, true);
        assert_eq!(f.s, 46);
        assert_eq!(f.q(1.0), 2f64.powi(46));
        assert_eq!(f.q(-0.5), -(2f64.powi(45)));
        assert_eq!(f.value(3.0 * 2f64.powi(45)), 1.5);
        // Ties go to even: 2^-47 is half a unit.
        assert_eq!(f.q(2f64.powi(-47)), 0.0);
        assert_eq!(f.q(3.0 * 2f64.powi(-47)), 2.0);
        // Integers keep s = 0 (exact) while they fit: 256 x 256 leaves 29 bits.
        let u = Fixed::of(65535.0, 65536, 256, false);
        assert_eq!((u.s, u.q(65535.0)), (0, 65535.0));
        // Beyond 2^29 they are divided (ties to even): 2^40 - 1 < 2^40, s = 29 - 40.
        let big = Fixed::of((1u64 << 40) as f64 - 1.0, 65536, 256, false);
        assert_eq!(big.s, -11);
        assert_eq!(big.q(3072.0), 2.0);
        assert_eq!(big.q(5120.0), 2.0);
        assert_eq!(big.q(7168.0), 4.0);
        // An all-zero pattern.
        assert_eq!(Fixed::of(0.0, 16, 4, true).q(0.0), 0.0);
        assert_eq!(goal(0.9, 10.0), 9.0);
        assert_eq!(goal(0.91, 10.0), 10.0);
    }

    /// The analysis by brute force: q of every pixel, i128 sums, every distinct distance
    /// ([`reference_f64`] of the values, which f64 holds exactly).
    fn reference(p: &[f32], w: usize, target: f64) -> (f64, (f64, f64), f64) {
        let wide: Vec<f64> = p.iter().map(|&v| f64::from(v)).collect();
        reference_f64(&wide, w, target)
    }

    #[test]
    fn the_analysis_equals_a_brute_force_reference_on_random_patterns() {
        let mut next = uniform(777);
        for case in 0..30 {
            let (h, w) = (9 + case % 4, 11 + case % 6);
            // Wide dynamic range; some patterns with negative pixels.
            let p: Vec<f32> = (0..h * w)
                .map(|_| {
                    let v = next().powi(4) * 1e3;
                    if case % 3 == 0 && next() < 0.2 {
                        -v * 0.1
                    } else {
                        v
                    }
                })
                .collect();
            for target in [0.5, 0.9, 0.98, 1.0] {
                let a = analyse(&p, w, CentreMethod::Centroid, None, target, None);
                let (total, c, r) = reference(&p, w, target);
                assert_eq!((a.total, a.centre, a.radius), (total, c, r), "case {case}");
                let guessed = analyse(&p, w, CentreMethod::Centroid, None, target, Some(r + 1.0));
                assert_eq!(guessed.radius, r, "case {case} with a guess");
            }
        }
    }

    /// A smooth spot with a slowly falling halo on an h x w grid (every value a normal f64).
    fn halo(h: usize, w: usize) -> Vec<f64> {
        (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f64 - 30.3, (i % w) as f64 - 33.6);
                let r2 = y * y + x * x;
                1.0 / (1.0 + r2 / 40.0).powi(2) + 1e-3
            })
            .collect()
    }

    #[test]
    fn the_analysis_does_not_depend_on_the_patterns_scale() {
        // Scales 2^s beyond 2^1022 are two factors: patterns near or in the subnormals keep
        // B bits. A power-of-two scale gives the very same q, so the same bits everywhere.
        let (h, w) = (64, 70);
        let p = halo(h, w);
        let base = analyse(&p, w, CentreMethod::Centroid, None, 0.9, None);
        assert!(base.radius > 10.0, "{base:?}");
        // (Down to 2^-1000 every value stays a normal f64: the same significands.)
        for k in [-1000, -990, -900, 0, 900, 1000] {
            let scaled: Vec<f64> = p.iter().map(|&v| v * 2f64.powi(k)).collect();
            let a = analyse(&scaled, w, CentreMethod::Centroid, None, 0.9, None);
            assert_eq!(
                (a.radius, a.centre, a.total_q, a.kind),
                (base.radius, base.centre, base.total_q, base.kind),
                "2^{k}"
            );
            assert_eq!(a.scale, base.scale - k, "2^{k}");
            let g = analyse(
                &scaled,
                w,
                CentreMethod::Centroid,
                None,
                0.9,
                Some(base.radius),
            );
            assert_eq!(g.radius, base.radius, "2^{k} with a guess");
        }
        // Decimal scales round each q differently (and 1e-310 leaves the faintest values
        // about 34 significant bits), not the radius beyond that (they gave 12 and 9, and
        // 1e-310 summed to zero, when 2^s stopped at 2^1022).
        for by in [1e-307, 3e-308, 1e-310, 1e300] {
            let scaled: Vec<f64> = p.iter().map(|&v| v * by).collect();
            let a = analyse(&scaled, w, CentreMethod::Centroid, None, 0.9, None);
            assert_eq!(a.kind, PatternKind::Normal, "{by:e}");
            assert!(
                (a.radius - base.radius).abs() < 1e-6,
                "{by:e}: {}",
                a.radius
            );
            assert!((a.centre.0 - base.centre.0).abs() < 1e-6, "{by:e}");
            let (total, c, r) = reference_f64(&scaled, w, 0.9);
            assert_eq!((a.total, a.centre, a.radius), (total, c, r), "{by:e}");
        }
        // The smallest subnormal as the largest value: 2^s = 2^1123 - bits... still counted.
        let mut dot = vec![0.0f64; 25];
        dot[12] = f64::from_bits(1);
        let a = analyse(&dot, 5, CentreMethod::Centroid, None, 0.9, None);
        assert_eq!(
            (a.kind, a.centre, a.radius),
            (PatternKind::Normal, (2.0, 2.0), 0.0)
        );
        // Values that underflowed to zero are an empty pattern (refused by the caller).
        let gone: Vec<f64> = p.iter().map(|&v| v * 1e-300 * 1e-30).collect();
        assert!(gone.iter().all(|&v| v == 0.0));
        let a = analyse(&gone, w, CentreMethod::Centroid, None, 0.9, None);
        assert_eq!(a.kind, PatternKind::Empty);
    }

    #[test]
    fn fixed_point_scales_past_one_factor_hand_checked() {
        // 4 x 4: 47 bits. Largest 2^-1070 (subnormal): s = 47 + 1069 = 1116 = 1022 + 94.
        let tiny = f64::from_bits(1 << 4);
        let f = Fixed::of(tiny, 16, 4, true);
        assert_eq!(f.s, 1116);
        assert_eq!(f.q(tiny), 2f64.powi(46));
        assert_eq!(f.q(f64::from_bits(1)), 2f64.powi(42));
        assert_eq!(f.value(2f64.powi(46)), tiny);
        assert_eq!(Fixed::from_scale(f.s), f);
        // The largest subnormal: below 2^-1022, s = 47 + 1022.
        assert_eq!(
            Fixed::of(f64::from_bits((1 << 52) - 1), 16, 4, true).s,
            1069
        );
        // Near f64's largest: s = 47 - 1024.
        assert_eq!(Fixed::of(f64::MAX, 16, 4, true).s, -977);
        assert_eq!(
            Fixed::of(f64::MAX, 16, 4, true).q(f64::MAX),
            (2f64.powi(47) - 2f64.powi(-6)).round_ties_even()
        );
    }

    /// [`reference`] for f64 patterns: q = round_half_even(v * 2^s), 2^s as exact powers.
    fn reference_f64(p: &[f64], w: usize, target: f64) -> (f64, (f64, f64), f64) {
        let h = p.len() / w;
        let most = p.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
        let fx = Fixed::of(most, p.len() as u64, h.max(w) as u64, true);
        // v * 2^s by exponent arithmetic on exact values (no factor past f64's range).
        let times = |v: f64, s: i32| {
            let (mut v, mut s) = (v, s);
            while s > 0 {
                let k = s.min(1000);
                v *= 2f64.powi(k);
                s -= k;
            }
            while s < 0 {
                let k = (-s).min(1000);
                v *= 2f64.powi(-k);
                s += k;
            }
            v
        };
        let q: Vec<i128> = p
            .iter()
            .map(|&v| times(v, fx.s).round_ties_even() as i128)
            .collect();
        let total: i128 = q.iter().sum();
        let sy: i128 = (0..p.len()).map(|i| (i / w) as i128 * q[i]).sum();
        let sx: i128 = (0..p.len()).map(|i| (i % w) as i128 * q[i]).sum();
        let c = (sy as f64 / total as f64, sx as f64 / total as f64);
        let goal = (target * total as f64).ceil() as i128;
        let mut ds: Vec<f64> = (0..p.len()).map(|i| d2(i, w, c)).collect();
        ds.sort_by(f64::total_cmp);
        ds.dedup();
        let r = ds
            .iter()
            .find(|&&d| {
                (0..p.len())
                    .filter(|&i| d2(i, w, c) <= d)
                    .map(|i| q[i])
                    .sum::<i128>()
                    >= goal
            })
            .map_or(farthest(h, w, c), |d| d.sqrt());
        (times(total as f64, -fx.s), c, r)
    }

    #[test]
    fn integer_patterns_are_counted_exactly() {
        let p: Vec<u16> = (0..64u32).map(|i| (i * 977 % 65_536) as u16).collect();
        let a = analyse(&p, 8, CentreMethod::Centroid, None, 0.9, None);
        let total: u64 = p.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(a.total, total as f64);
        assert_eq!(a.scale, 0);
        assert_eq!(a.total_q, total as f64);
        let sy: u64 = (0..64).map(|i| (i / 8) as u64 * u64::from(p[i])).sum();
        assert_eq!(a.centre.0, sy as f64 / total as f64);
    }

    #[test]
    fn sums_are_nan_for_nan_patterns() {
        let mut p = vec![1.0f32; 30];
        p[17] = f32::NAN;
        assert_eq!(
            analyse(&p, 6, CentreMethod::Centroid, None, 0.9, None).kind,
            PatternKind::NotFinite
        );
        p[17] = f32::INFINITY;
        assert!(!total_and_centroid(&p, 6).0.is_finite());
    }

    #[test]
    fn windows_stay_inside_and_keep_their_size() {
        assert_eq!(window(50.4, 10, 100), (40, 21));
        assert_eq!(window(50.5, 10, 100), (41, 21));
        assert_eq!(window(3.0, 10, 100), (0, 21));
        assert_eq!(window(98.0, 10, 100), (79, 21));
        assert_eq!(window(5.0, 60, 100), (0, 100));
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 90.0) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn empty_and_negative_patterns_are_flagged_not_nan() {
        let z = vec![0.0f32; 16];
        let a = analyse(&z, 4, CentreMethod::Centroid, None, 0.98, None);
        assert_eq!(
            (a.kind, a.radius, a.centre),
            (PatternKind::Empty, 0.0, (1.5, 1.5))
        );
        let n = vec![-1.0f32; 16];
        assert_eq!(
            analyse(&n, 4, CentreMethod::Centroid, None, 0.98, None).kind,
            PatternKind::Negative
        );
    }
}
