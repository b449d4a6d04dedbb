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
//!   with a histogram of squared distances (1024 bins), then an exact sort of the one bin where
//!   the sum crosses the target; patterns with negative pixels use the full sort (their running
//!   sum is not monotonic). A pattern with total <= 0 has radius 0 and is reported as empty.
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

/// The f64 sum and the intensity-weighted centroid of a pattern (`None` centroid when the sum
/// is not positive).
pub fn total_and_centroid<T: Element>(p: &[T], w: usize) -> (f64, Option<(f64, f64)>) {
    let (mut total, mut sy, mut sx) = (0.0f64, 0.0f64, 0.0f64);
    for (y, row) in p.chunks_exact(w).enumerate() {
        let (mut rs, mut rx) = (0.0f64, 0.0f64);
        for (x, &v) in row.iter().enumerate() {
            let v = f(v);
            rs += v;
            rx += v * x as f64;
        }
        total += rs;
        sy += rs * y as f64;
        sx += rx;
    }
    let centroid = (total > 0.0).then(|| (sy / total, sx / total));
    (total, centroid)
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

/// The retention radius (see the module docs), fast path for non-negative patterns.
pub fn retention_radius<T: Element>(
    p: &[T],
    w: usize,
    centre: (f64, f64),
    target: f64,
    total: f64,
) -> f64 {
    if p.iter().any(|&v| f(v) < 0.0) {
        return radius_by_sort(p, w, centre, target, total);
    }
    radius_non_negative(p, w, centre, target, total)
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

/// Analyses one pattern.
pub fn analyse<T: Element>(
    p: &[T],
    w: usize,
    method: CentreMethod,
    manual: Option<(f64, f64)>,
    target: f64,
) -> Analysis {
    let h = p.len() / w;
    let geometric = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (total, centroid) = total_and_centroid(p, w);
    let centre = match method {
        CentreMethod::Centroid => centroid.unwrap_or(geometric),
        CentreMethod::Center => geometric,
        CentreMethod::Manual => manual.unwrap_or(geometric),
    };
    let kind = if total > 0.0 {
        PatternKind::Normal
    } else if total < 0.0 {
        PatternKind::Negative
    } else {
        PatternKind::Empty
    };
    let radius = if kind == PatternKind::Normal {
        retention_radius(p, w, centre, target, total)
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
        let a = analyse(&p, 9, CentreMethod::Centroid, None, 0.98);
        assert_eq!(a.centre, (2.0, 6.0));
        assert_eq!(a.radius, 0.0);
        // From the geometric centre (3, 4): distance sqrt(1 + 4).
        let g = analyse(&p, 9, CentreMethod::Center, None, 0.98);
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
        let a = analyse(&p, w, CentreMethod::Centroid, None, 1.0);
        assert_eq!(a.centre, (20.0, 20.0));
        assert_eq!(a.radius, 10.0);
        // Half the disk's pixels: the smallest distance whose disk holds at least half.
        let n = p.iter().filter(|&&v| v > 0.0).count() as f64;
        let half = analyse(&p, w, CentreMethod::Centroid, None, 0.5).radius;
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
                assert_eq!(
                    retention_radius(&p, w, centre, target, total),
                    radius_by_sort(&p, w, centre, target, total),
                    "case {case} target {target}"
                );
            }
        }
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
        let a = analyse(&z, 4, CentreMethod::Centroid, None, 0.98);
        assert_eq!(
            (a.kind, a.radius, a.centre),
            (PatternKind::Empty, 0.0, (1.5, 1.5))
        );
        let n = vec![-1.0f32; 16];
        assert_eq!(
            analyse(&n, 4, CentreMethod::Centroid, None, 0.98).kind,
            PatternKind::Negative
        );
    }
}
