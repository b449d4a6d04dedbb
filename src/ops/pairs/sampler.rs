//! Where the patches of each pair sit: a seeded, rank-independent sampler.
//!
//! For every pair of image `n`: an integer displacement `d` drawn uniformly from the lattice
//! points of the annulus `LOW <= |d| <= HIGH` (listed once, in C order over `(dz,) dy, dx`
//! from `-floor(HIGH)` to `floor(HIGH)`), then the first patch's corner uniformly from the
//! positions where both patches fit (per axis `max(0, -d) ..= extent - window - max(0, d)`),
//! then a quarter-turn count uniformly from `--rotations`. Each image has its own random stream
//! ([`Stream`], from the seed and the image index), so any rank can sample any image alone and
//! the output does not depend on how images are split among ranks.
//!
//! Spatial vectors here are in array order (`[z,] y, x`); the output's `deltas` reverse them
//! (`dx, dy[, dz]`, x first, as qlty writes them).

use std::ops::Range;

use crate::error::{Error, Result};
use crate::grid::windows::axis_name;

/// A small, fully specified random stream (SplitMix64): the same numbers on every machine and
/// every version of tessera, which a library generator does not promise.
#[derive(Clone, Debug)]
pub struct Stream(u64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Stream {
    /// The stream of item `index` (an image, a selection cell) under `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        Stream(mix(seed ^ mix(index.wrapping_add(GOLDEN))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// One pair: the image it comes from, both patches' corners (array order) and the quarter
/// turns of the second patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub image: u64,
    pub first: Vec<u64>,
    pub second: Vec<u64>,
    pub rotation: u8,
}

impl Pair {
    /// `second - first`, array order.
    pub fn delta(&self) -> Vec<i64> {
        self.first
            .iter()
            .zip(&self.second)
            .map(|(&a, &b)| b as i64 - a as i64)
            .collect()
    }
}

/// The sampling parameters as the flags give them.
#[derive(Clone, Debug)]
pub struct SamplerSpec<'a> {
    /// Spatial extent of every image (`[Z,] Y, X`).
    pub image: &'a [u64],
    pub window: &'a [u64],
    pub delta_range: &'a [f64],
    pub rotations: &'a [u8],
    pub pairs_per_image: u64,
    pub seed: u64,
}

/// A checked sampler, ready to place the pairs of any image.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub image: Vec<u64>,
    pub window: Vec<u64>,
    /// Every admissible displacement, array order, in the fixed order draws index.
    pub annulus: Vec<Vec<i64>>,
    pub rotations: Vec<u8>,
    pub pairs_per_image: u64,
    pub seed: u64,
}

/// `(LOW, HIGH)` from `--delta-range`, checked against the window as qlty checks it:
/// `max(window)//4 <= LOW <= HIGH <= 3*max(window)//4`.
///
/// # Errors
/// [`Error::Parameter`] naming `--delta-range`.
pub fn check_delta_range(range: &[f64], window: &[u64]) -> Result<(f64, f64)> {
    let [low, high] = range else {
        return Err(Error::parameter(
            "delta-range",
            format!("takes two values LOW,HIGH, got {}", range.len()),
        ));
    };
    let (low, high) = (*low, *high);
    let largest = window.iter().copied().max().unwrap_or(0);
    let (lo, hi) = (largest / 4, 3 * largest / 4);
    if !(low.is_finite() && high.is_finite()) || low > high {
        return Err(Error::parameter(
            "delta-range",
            format!("needs finite LOW <= HIGH, got {low},{high}"),
        ));
    }
    if low < lo as f64 || high > hi as f64 {
        return Err(Error::parameter(
            "delta-range",
            format!(
                "{low},{high} is outside {lo} <= LOW <= HIGH <= {hi} (max(window)//4 and 3*max(window)//4 for --window {})",
                crate::grid::join(window)
            ),
        ));
    }
    Ok((low, high))
}

/// Every image axis must hold the window plus `floor(HIGH)`, so every displacement fits.
///
/// # Errors
/// [`Error::Parameter`] naming `--window` and the axis.
pub fn check_extent(image: &[u64], window: &[u64], high: f64) -> Result<()> {
    let reach = high.floor() as u64;
    for (axis, (&extent, &w)) in image.iter().zip(window).enumerate() {
        if extent < w.saturating_add(reach) {
            return Err(Error::parameter(
                "window",
                format!(
                    "the images are {extent} pixels along {}, fewer than window {w} + floor(HIGH) {reach} = {} (image {}, --delta-range up to {high})",
                    axis_name(image.len(), axis),
                    w.saturating_add(reach),
                    crate::grid::join(image)
                ),
            ));
        }
    }
    Ok(())
}

/// Quarter-turn choices: each 0..3, no repeats, 2-D only, odd turns only for square windows
/// (a turned non-square patch would not fit the patch array). Empty means none (`[0]`).
///
/// # Errors
/// [`Error::Parameter`] naming `--rotations`.
pub fn check_rotations(rotations: &[u8], window: &[u64]) -> Result<Vec<u8>> {
    if rotations.is_empty() {
        return Ok(vec![0]);
    }
    let refuse = |m: String| Err(Error::parameter("rotations", m));
    if window.len() != 2 {
        return refuse(format!(
            "quarter turns are for 2-D pairs; these images have {} spatial axes (leave --rotations out)",
            window.len()
        ));
    }
    for (i, &k) in rotations.iter().enumerate() {
        if k > 3 {
            return refuse(format!("{k} is not a quarter-turn count (0, 1, 2 or 3)"));
        }
        if rotations[..i].contains(&k) {
            return refuse(format!("{k} is listed twice"));
        }
        if k % 2 == 1 && window[0] != window[1] {
            return refuse(format!(
                "{k} quarter turn(s) of a {}x{} patch do not fit a {}x{} patch array; use a square --window or only 0,2",
                window[0], window[1], window[0], window[1]
            ));
        }
    }
    Ok(rotations.to_vec())
}

/// The integer points `d` with `LOW <= |d| <= HIGH` (`|d|` as `sqrt` of the integer `|d|^2`,
/// exact for perfect squares), C order over array axes.
pub fn annulus(ndim: usize, low: f64, high: f64) -> Vec<Vec<i64>> {
    let reach = high.floor() as i64;
    let side = (2 * reach + 1) as usize;
    let total = side.pow(ndim as u32);
    (0..total)
        .filter_map(|mut flat| {
            let mut d = vec![0i64; ndim];
            for slot in d.iter_mut().rev() {
                *slot = (flat % side) as i64 - reach;
                flat /= side;
            }
            let length = (d.iter().map(|v| v * v).sum::<i64>() as f64).sqrt();
            (low <= length && length <= high).then_some(d)
        })
        .collect()
}

impl Sampler {
    /// Checks every parameter against the images and lists the annulus.
    ///
    /// # Errors
    /// [`Error::Parameter`] naming the flag at fault.
    pub fn new(spec: &SamplerSpec) -> Result<Sampler> {
        let ndim = spec.image.len();
        check_window(spec.window, ndim)?;
        let (low, high) = check_delta_range(spec.delta_range, spec.window)?;
        check_extent(spec.image, spec.window, high)?;
        let rotations = check_rotations(spec.rotations, spec.window)?;
        if spec.pairs_per_image == 0 {
            return Err(Error::parameter("pairs-per-image", "must be at least 1"));
        }
        let annulus = annulus(ndim, low, high);
        if annulus.is_empty() {
            return Err(Error::parameter(
                "delta-range",
                format!("no integer displacement has {low} <= |d| <= {high}; widen the range"),
            ));
        }
        Ok(Sampler {
            image: spec.image.to_vec(),
            window: spec.window.to_vec(),
            annulus,
            rotations,
            pairs_per_image: spec.pairs_per_image,
            seed: spec.seed,
        })
    }

    /// The pairs of image `n`, in order.
    pub fn image_pairs(&self, n: u64) -> Vec<Pair> {
        let mut stream = Stream::new(self.seed, n);
        (0..self.pairs_per_image)
            .map(|_| self.draw(n, &mut stream))
            .collect()
    }

    fn draw(&self, n: u64, stream: &mut Stream) -> Pair {
        let d = &self.annulus[stream.below(self.annulus.len() as u64) as usize];
        let first: Vec<u64> = (0..self.image.len())
            .map(|a| {
                let room = (self.image[a] - self.window[a]) as i64;
                let (lo, hi) = ((-d[a]).max(0), room - d[a].max(0));
                (lo + stream.below((hi - lo + 1) as u64) as i64) as u64
            })
            .collect();
        let second = first
            .iter()
            .zip(d)
            .map(|(&f, &da)| (f as i64 + da) as u64)
            .collect();
        let rotation = self.rotations[stream.below(self.rotations.len() as u64) as usize];
        Pair {
            image: n,
            first,
            second,
            rotation,
        }
    }

    /// Pairs `range` of the whole set (image-major, `pairs_per_image` per image). The pairs of
    /// an image before the range are drawn and dropped one at a time, never held: a unit's
    /// memory is its own pairs, whatever `--pairs-per-image` (a whole image's pairs, collected
    /// first, were 2^46 bytes for 2^40 pairs per image).
    pub fn pairs(&self, range: Range<u64>) -> Vec<Pair> {
        if range.is_empty() {
            return Vec::new();
        }
        let p = self.pairs_per_image;
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for n in range.start / p..=(range.end - 1) / p {
            let skip = range.start.saturating_sub(n * p);
            let take = range.end.min((n + 1) * p) - (n * p).max(range.start);
            let mut stream = Stream::new(self.seed, n);
            for _ in 0..skip {
                self.draw(n, &mut stream);
            }
            out.extend((0..take).map(|_| self.draw(n, &mut stream)));
        }
        out
    }
}

/// A window with one positive size per spatial axis.
///
/// # Errors
/// [`Error::Parameter`] naming `--window`.
pub fn check_window(window: &[u64], ndim: usize) -> Result<()> {
    if window.len() != ndim {
        return Err(Error::parameter(
            "window",
            format!(
                "has {} values ({}) but the images have {ndim} spatial axes",
                window.len(),
                crate::grid::join(window)
            ),
        ));
    }
    if let Some(axis) = window.iter().position(|&w| w == 0) {
        return Err(Error::parameter(
            "window",
            format!("is zero along {}", axis_name(ndim, axis)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(image: &[u64], window: &[u64], range: &[f64], rot: &[u8], seed: u64) -> Sampler {
        sampler_of(image, window, range, rot, 200, seed)
    }

    /// A sampler drawing `pairs` pairs per image.
    fn sampler_of(
        image: &[u64],
        window: &[u64],
        range: &[f64],
        rot: &[u8],
        pairs: u64,
        seed: u64,
    ) -> Sampler {
        Sampler::new(&SamplerSpec {
            image,
            window,
            delta_range: range,
            rotations: rot,
            pairs_per_image: pairs,
            seed,
        })
        .unwrap()
    }

    fn length(d: &[i64]) -> f64 {
        (d.iter().map(|v| v * v).sum::<i64>() as f64).sqrt()
    }

    #[test]
    fn every_pair_has_its_distance_in_range_and_both_patches_inside() {
        for seed in 0..40 {
            for (image, window, range) in [
                (&[40u64, 52][..], &[16u64, 16][..], [4.0, 12.0]),
                (&[30, 24][..], &[16, 12][..], [4.5, 7.25]),
                (&[20, 22, 25][..], &[8, 8, 12][..], [3.0, 9.0]),
            ] {
                let s = sampler(image, window, &range, &[], seed);
                for n in 0..3 {
                    for p in s.image_pairs(n) {
                        let l = length(&p.delta());
                        assert!(range[0] <= l && l <= range[1], "{p:?}");
                        for a in 0..image.len() {
                            assert!(p.first[a] + window[a] <= image[a], "{p:?}");
                            assert!(p.second[a] + window[a] <= image[a], "{p:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_annulus_is_exactly_the_lattice_points_in_range_and_each_is_reached() {
        let pts = annulus(2, 4.0, 6.0);
        let brute: Vec<Vec<i64>> = (-6..=6i64)
            .flat_map(|y| (-6..=6i64).map(move |x| vec![y, x]))
            .filter(|d| (16..=36).contains(&(d[0] * d[0] + d[1] * d[1])))
            .collect();
        assert_eq!(pts, brute);
        let s = sampler_of(&[64, 64], &[16, 16], &[4.0, 6.0], &[], 500, 3);
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..20 {
            seen.extend(s.image_pairs(n).iter().map(Pair::delta));
        }
        assert_eq!(seen.len(), pts.len(), "every lattice point drawn");
    }

    #[test]
    fn rotation_counts_are_uniform_within_a_chi_square_bound() {
        let s = sampler(&[48, 48], &[16, 16], &[4.0, 12.0], &[0, 1, 2, 3], 11);
        let mut counts = [0f64; 4];
        for n in 0..100 {
            for p in s.image_pairs(n) {
                counts[p.rotation as usize] += 1.0;
            }
        }
        let expected = counts.iter().sum::<f64>() / 4.0;
        let chi2: f64 = counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum();
        // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
        assert!(chi2 < 16.27, "chi-square {chi2} for {counts:?}");
        for seed in 0..30 {
            let s = sampler(&[48, 48], &[16, 16], &[4.0, 12.0], &[1, 3], seed);
            let pairs = s.image_pairs(0);
            let ones = pairs.iter().filter(|p| p.rotation == 1).count() as f64;
            let n = pairs.len() as f64;
            // Binomial(200, 1/2): 5 standard deviations either side.
            assert!((ones - n / 2.0).abs() < 5.0 * (n / 4.0).sqrt(), "{ones}");
            assert!(pairs.iter().all(|p| p.rotation == 1 || p.rotation == 3));
        }
    }

    #[test]
    fn first_corners_cover_every_admissible_position() {
        // A 20x10 image, window 8x8, |d| exactly 2: corners along y span 0..=12 less d.
        let s = sampler_of(&[20, 10], &[8, 8], &[2.0, 2.0], &[], 400, 5);
        let mut ys = std::collections::BTreeMap::new();
        for p in s.image_pairs(0) {
            let d = p.delta();
            *ys.entry((d.clone(), p.first[0])).or_insert(0) += 1;
            let lo = (-d[0]).max(0) as u64;
            let hi = (12 - d[0].max(0)) as u64;
            assert!((lo..=hi).contains(&p.first[0]));
        }
        for d0 in [-2i64, 2] {
            let lo = (-d0).max(0) as u64;
            for y in lo..=(12 - d0.max(0)) as u64 {
                assert!(ys.contains_key(&(vec![d0, 0], y)), "d {d0} y {y}");
            }
        }
    }

    #[test]
    fn pairs_of_a_range_are_those_of_the_whole_set() {
        let s = sampler(&[40, 40], &[16, 16], &[4.0, 12.0], &[0, 2], 9);
        let whole = s.pairs(0..1000);
        assert_eq!(whole.len(), 1000);
        for (a, b) in [(0, 1), (199, 201), (37, 654), (999, 1000), (400, 400)] {
            assert_eq!(s.pairs(a..b), whole[a as usize..b as usize]);
        }
        assert_eq!(s.pairs(0..200), s.image_pairs(0));
    }

    #[test]
    fn bad_parameters_are_refused_by_flag() {
        let err = |image: &[u64], window: &[u64], range: &[f64], rot: &[u8]| {
            Sampler::new(&SamplerSpec {
                image,
                window,
                delta_range: range,
                rotations: rot,
                pairs_per_image: 1,
                seed: 0,
            })
            .unwrap_err()
            .to_string()
        };
        let e = err(&[64, 64], &[16, 16], &[3.0, 8.0], &[]);
        assert!(
            e.starts_with("--delta-range:") && e.contains("4 <= LOW"),
            "{e}"
        );
        let e = err(&[64, 64], &[16, 16], &[4.0, 13.0], &[]);
        assert!(e.contains("<= 12"), "{e}");
        let e = err(&[64, 64], &[16, 16], &[8.0, 5.0], &[]);
        assert!(e.starts_with("--delta-range:"), "{e}");
        let e = err(&[64, 64], &[16, 16], &[8.0], &[]);
        assert!(e.contains("two values"), "{e}");
        let e = err(&[64, 27], &[16, 16], &[4.0, 12.0], &[]);
        assert!(e.starts_with("--window:") && e.contains("along x"), "{e}");
        let e = err(&[64, 64], &[16, 16], &[4.0, 12.0], &[4]);
        assert!(e.starts_with("--rotations:") && e.contains('4'), "{e}");
        let e = err(&[64, 64], &[16, 12], &[4.0, 12.0], &[1]);
        assert!(e.starts_with("--rotations:") && e.contains("square"), "{e}");
        let e = err(&[64, 64], &[16, 16], &[4.0, 12.0], &[2, 2]);
        assert!(e.contains("twice"), "{e}");
        let e = err(&[64, 64, 64], &[16, 16, 16], &[4.0, 12.0], &[0]);
        assert!(e.starts_with("--rotations:") && e.contains("2-D"), "{e}");
        let e = err(&[64, 64], &[16, 16, 16], &[4.0, 12.0], &[]);
        assert!(e.starts_with("--window:"), "{e}");
        let e = err(&[64, 64], &[16, 16], &[5.5, 5.5], &[]);
        assert!(e.contains("no integer displacement"), "{e}");
        // Within range but 2-D rotations of a square window are fine; 2 of any window too.
        sampler(&[64, 64], &[16, 12], &[4.0, 12.0], &[0, 2], 0);
    }

    #[test]
    fn the_stream_is_fixed_and_unbiased_enough() {
        let mut a = Stream::new(42, 7);
        let first: Vec<u64> = (0..3).map(|_| a.next_u64()).collect();
        let mut b = Stream::new(42, 7);
        assert_eq!(first, (0..3).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(Stream::new(42, 8).next_u64(), first[0]);
        let mut s = Stream::new(1, 1);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[s.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
