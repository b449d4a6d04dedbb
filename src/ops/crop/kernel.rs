//! Diffraction-pattern cropping kernels: centre, retention radius, crop window, retention.
//! Pure functions on one (H, W) pattern given as a C-order slice.
//!
//! Definitions (users check these):
//! - Total: the f64 sum of the pattern.
//! - Centre: `centroid` = intensity-weighted mean pixel index (f64, (y, x)); `center` =
//!   ((H-1)/2, (W-1)/2); `manual` = given. A pattern whose total is not positive has no
//!   centroid and uses the geometric centre.
//! - Retention radius: the smallest r such that the f64 sum of the pixels at distance <= r from
//!   the centre reaches `target * total` (pixels at equal distance enter together). Computed
//!   from the previous pattern's radius where it can be: the disk inside a ring of +-3 pixels
//!   around it is summed by row spans, and if the crossing lies in the ring only the ring's
//!   pixels are ordered. Otherwise a histogram of squared distances (1024 bins), then an exact
//!   sort of the one bin where the sum crosses the target. Patterns with negative pixels use
//!   the full sort (their running sum is not monotonic). A pattern with total <= 0 has radius
//!   0 and is reported as empty.
//! - Crop: a square window of side `min(2R + 1, size)` per axis whose centre pixel is
//!   `floor(c + 0.5)`, shifted inside the image where it would cross an edge.

use crate::io::Element;

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
}

/// How the centre of each pattern is found.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
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
/// and the compiler can vectorise them. The order is fixed, so the bits are too.
const SUM_LANES: usize = 8;

/// The f64 sum of a slice, in [`SUM_LANES`] partial sums.
fn sum_f64<T: Element>(s: &[T]) -> f64 {
    let mut acc = [0.0f64; SUM_LANES];
    let mut chunks = s.chunks_exact(SUM_LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

/// The f64 sum and the intensity-weighted centroid of a pattern (`None` centroid when the sum
/// is not positive). A pattern holding NaN or an infinity has a non-finite sum.
pub fn total_and_centroid<T: Element>(p: &[T], w: usize) -> (f64, Option<(f64, f64)>) {
    let m = moments(p, w);
    (m.total, m.centroid)
}

/// What one read of a pattern tells.
struct Moments {
    total: f64,
    centroid: Option<(f64, f64)>,
    /// Some pixel is below zero.
    negative: bool,
}

fn moments<T: Element>(p: &[T], w: usize) -> Moments {
    let (mut total, mut sy, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    let mut low = [0.0f64; SUM_LANES];
    for (y, row) in p.chunks_exact(w).enumerate() {
        let (mut s, mut m) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
        let mut chunks = row.chunks_exact(SUM_LANES);
        let mut base = 0.0f64;
        for c in &mut chunks {
            for (k, &v) in c.iter().enumerate() {
                let v = f(v);
                s[k] += v;
                m[k] += v * (base + k as f64);
                low[k] = low[k].min(v);
            }
            base += SUM_LANES as f64;
        }
        let (mut rs, mut rx) = (s.iter().sum::<f64>(), m.iter().sum::<f64>());
        for (k, &v) in chunks.remainder().iter().enumerate() {
            let v = f(v);
            rs += v;
            rx += v * (base + k as f64);
            low[0] = low[0].min(v);
        }
        total += rs;
        sy += rs * y as f64;
        sx += rx;
    }
    let centroid = (total > 0.0).then(|| (sy / total, sx / total));
    Moments {
        total,
        centroid,
        negative: low.iter().any(|&l| l < 0.0),
    }
}

/// Histogram bins of squared distance (the crossing bin is then sorted exactly).
const BINS: usize = 1024;
/// Interleaved partial histograms: consecutive pixels land in different copies, so the
/// read-modify-write of one bin does not wait on the previous pixel's (a store-forwarding
/// chain that took a third of the analysis time).
const LANES: usize = 4;

/// The retention radius by the exact definition: sort all pixels by squared distance.
pub fn radius_by_sort<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    target: f64,
    total: f64,
) -> f64 {
    let mut px: Vec<(f64, f64)> = p
        .iter()
        .enumerate()
        .map(|(i, &v)| (d2(i, w, centre), f(v)))
        .collect();
    first_reaching(&mut px, 0.0, target * total)
}

/// Sorts `(squared distance, value)` pixels by distance and returns the distance at which
/// `start` plus the running sum first reaches `goal` (pixels at one distance enter together);
/// the farthest pixel when rounding keeps the sum a hair below the goal.
fn first_reaching(px: &mut [(f64, f64)], start: f64, goal: f64) -> f64 {
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
            return px[i].0.sqrt();
        }
        i = j;
    }
    px.last().map_or(0.0, |q| q.0.sqrt())
}

fn d2(i: usize, w: usize, (cy, cx): (f64, f64)) -> f64 {
    let (dy, dx) = ((i / w) as f64 - cy, (i % w) as f64 - cx);
    dy * dy + dx * dx
}

/// The retention radius (see the module docs), fast path for non-negative patterns. `guess`,
/// a radius expected to be close (the previous pattern's), lets most patterns skip the full
/// histogram: only the ring within [`GUESS_SLACK`] pixels of it is sorted, after checking that
/// the crossing lies inside that ring; the result is the same either way.
pub fn retention_radius<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    target: f64,
    total: f64,
    guess: Option<f64>,
) -> f64 {
    let negative = p.iter().any(|&v| f(v) < 0.0);
    radius_of(p, w, centre, target, total, guess, negative)
}

/// [`retention_radius`] when whether the pattern has negative pixels is known.
fn radius_of<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    target: f64,
    total: f64,
    guess: Option<f64>,
    negative: bool,
) -> f64 {
    if negative {
        return radius_by_sort(p, w, centre, target, total);
    }
    guess
        .and_then(|g| radius_near(p, w, centre, target * total, g))
        .unwrap_or_else(|| radius_non_negative(p, w, centre, target, total))
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
    goal: f64,
    guess: f64,
) -> Option<f64> {
    let lo = (guess - GUESS_SLACK).max(0.0);
    let hi = guess + GUESS_SLACK;
    let (lo2, hi2) = (lo * lo, hi * hi);
    let dx2: Vec<f64> = (0..w).map(|x| (x as f64 - cx).powi(2)).collect();
    let mut inner = 0.0;
    let mut ring: Vec<(f64, f64)> = Vec::new();
    for (y, row) in p.chunks_exact(w).enumerate() {
        let dy2 = (y as f64 - cy).powi(2);
        let (ha, hb) = span(&dx2, dy2, hi2, cx);
        if ha == hb {
            continue;
        }
        let (la, lb) = span(&dx2, dy2, lo2, cx);
        let (la, lb) = if la == lb { (ha, ha) } else { (la, lb) };
        inner += sum_f64(&row[la..lb]);
        for x in (ha..la).chain(lb..hb) {
            ring.push((dy2 + dx2[x], f(row[x])));
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
    for &(d, v) in px.iter() {
        hist[bin(d)] += v;
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
    Some(first_reaching(&mut last, below, goal))
}

/// [`retention_radius`] for a pattern known to have no negative pixel.
fn radius_non_negative<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    target: f64,
    total: f64,
) -> f64 {
    let h = p.len() / w;
    // Largest squared distance: to the farthest corner.
    let far = |c: f64, n: usize| c.abs().max((n as f64 - 1.0 - c).abs());
    let max_d2 = far(centre.0, h).powi(2) + far(centre.1, w).powi(2);
    let scale = (BINS as f64 - 1.0) / max_d2.max(f64::MIN_POSITIVE);
    let bin = |d: f64| ((d * scale) as usize).min(BINS - 1);
    let dx2: Vec<f64> = (0..w).map(|x| (x as f64 - centre.1).powi(2)).collect();
    let mut lanes = vec![0.0f64; BINS * LANES];
    for (y, row) in p.chunks_exact(w).enumerate() {
        let dy2 = (y as f64 - centre.0).powi(2);
        for (x, (&v, &d)) in row.iter().zip(&dx2).enumerate() {
            lanes[(x % LANES) * BINS + bin(dy2 + d)] += f(v);
        }
    }
    let hist: Vec<f64> = (0..BINS)
        .map(|b| (0..LANES).map(|l| lanes[l * BINS + b]).sum())
        .collect();
    let goal = target * total;
    let mut below = 0.0;
    let mut k = BINS - 1;
    for (b, &s) in hist.iter().enumerate() {
        if below + s >= goal {
            k = b;
            break;
        }
        below += s;
    }
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
                    px.push((d, f(row[x])));
                }
            }
            last_end = last_end.max(end);
        }
    }
    first_reaching(&mut px, below, goal)
}

/// Analyses one pattern; `guess` as in [`retention_radius`]. A pattern holding NaN or an
/// infinity (or whose f64 sum overflows) is [`PatternKind::NotFinite`].
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
    let Moments {
        total,
        centroid,
        negative,
    } = moments(p, w);
    let centre = match method {
        CentreMethod::Centroid => centroid.unwrap_or(geometric),
        CentreMethod::Center => geometric,
        CentreMethod::Manual => manual.unwrap_or(geometric),
    };
    let kind = if !total.is_finite() {
        PatternKind::NotFinite
    } else if total > 0.0 {
        PatternKind::Normal
    } else if total < 0.0 {
        PatternKind::Negative
    } else {
        PatternKind::Empty
    };
    let radius = if kind == PatternKind::Normal {
        radius_of(p, w, centre, target, total, guess, negative)
    } else {
        0.0
    };
    Analysis {
        total,
        centre,
        radius,
        kind,
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

/// Copies the crop of `p` (H x W) into `out` (side_h x side_w) and returns the f64 sum of it.
pub fn crop_into<T: Element>(
    p: &[T],
    w: usize,
    (y0, x0): (usize, usize),
    side_w: usize,
    out: &mut [T],
) -> f64 {
    let mut sum = 0.0;
    for (r, o) in out.chunks_exact_mut(side_w).enumerate() {
        let row = &p[(y0 + r) * w + x0..(y0 + r) * w + x0 + side_w];
        o.copy_from_slice(row);
        sum += row.iter().map(|&v| f(v)).sum::<f64>();
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

    #[test]
    fn the_histogram_path_equals_the_full_sort_on_random_patterns() {
        let mut s = 12345u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / 16_777_216.0
        };
        for case in 0..40 {
            let (h, w) = (17 + case % 5, 23 + case % 7);
            let p: Vec<f32> = (0..h * w).map(|_| next().powi(3) * 100.0).collect();
            let (total, c) = total_and_centroid(&p, w);
            let centre = c.unwrap();
            for target in [0.5, 0.9, 0.98, 1.0] {
                let exact = radius_by_sort(&p, w, centre, target, total);
                // Without a guess, with the right one, with near and far ones (the ring
                // misses the crossing on either side, or reaches past the image).
                for guess in [None, Some(exact), Some(exact + 1.7), Some(exact - 2.9)]
                    .into_iter()
                    .chain([0.0, 2.5, 6.0, 40.0].map(Some))
                {
                    assert_eq!(
                        retention_radius(&p, w, centre, target, total, guess),
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
