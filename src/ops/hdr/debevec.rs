//! Debevec & Malik (1997) camera-response calibration and radiance merge, for 8-bit images.
//!
//! The response `g(z)`, z = 0..255, per channel, is the least-squares solution of
//! - data rows `w(z_ij) (g(z_ij) - ln E_i) = w(z_ij) ln t_j` for every sample i and exposure j
//!   whose value lies in [low_clip, high_clip],
//! - the anchor `g(128) = 0`,
//! - smoothness rows `lambda w(z) (g(z-1) - 2 g(z) + g(z+1)) = 0`, z = 1..254.
//!
//! The unknown `ln E_i` of each sample enter only that sample's rows, so they are eliminated
//! exactly (each sample's rows are projected onto the complement of its weight vector): the
//! minimiser for `g` is the same as that of the full system, which has 256 + P unknowns and
//! cannot be held densely for the 10^4..10^5 samples of an archive. The reduced 256 x 256
//! normal equations are solved by SVD (`nalgebra`, f64), which also gives the least-norm
//! answer where the data leave a level undetermined.
//!
//! Merge: `ln E = sum_j w(z_j) (g(z_j) - ln t_j) / sum_j w(z_j)` per pixel and channel. Where
//! every weight is zero (the pixel is black or saturated in every exposure), the shortest
//! exposure is used when the pixel is at least 128 in it (saturated), else the longest (black).

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// Weighting of pixel values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightType {
    /// `z` for z <= 127, `255 - z` above (zero at 0 and 255, as OpenCV's).
    #[default]
    Triangle,
    /// `sin(pi z / 255)`.
    Sine,
}

/// The weight of value `z`.
pub fn weight(kind: WeightType, z: u8) -> f64 {
    match kind {
        WeightType::Triangle if z <= 127 => f64::from(z),
        WeightType::Triangle => f64::from(255 - z),
        WeightType::Sine => (std::f64::consts::PI * f64::from(z) / 255.0).sin(),
    }
}

/// One sampled pixel position of one channel: its (value, ln exposure time) in the exposures
/// where the value lies inside the clip range.
pub type Sample = Vec<(u8, f64)>;

/// The calibration system's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Solve {
    pub smoothness: f64,
    pub weight: WeightType,
}

/// Solves for `g` of one channel from its samples (see the module docs).
pub fn solve_channel(samples: &[Sample], p: Solve) -> Vec<f64> {
    const N: usize = 256;
    let mut a = DMatrix::<f64>::zeros(N, N);
    let mut b = DVector::<f64>::zeros(N);
    for s in samples {
        let w: Vec<f64> = s.iter().map(|&(z, _)| weight(p.weight, z)).collect();
        let norm2: f64 = w.iter().map(|x| x * x).sum();
        if s.len() < 2 || norm2 == 0.0 {
            continue;
        }
        // Rows (I - u u^T) diag(w) [g(z_j)] = (I - u u^T) (w_j ln t_j), u = w / |w|.
        let wl: f64 = s.iter().zip(&w).map(|(&(_, lt), &wj)| wj * wj * lt).sum();
        for (j, &(zj, ltj)) in s.iter().enumerate() {
            let (zj, wj) = (zj as usize, w[j]);
            for (k, &(zk, _)) in s.iter().enumerate() {
                let delta = if j == k { 1.0 } else { 0.0 };
                a[(zj, zk as usize)] += wj * w[k] * (delta - wj * w[k] / norm2);
            }
            b[zj] += wj * (wj * ltj - wj * wl / norm2);
        }
    }
    a[(128, 128)] += 1.0;
    for z in 1..N - 1 {
        let l = p.smoothness * weight(p.weight, z as u8);
        let v = [(z - 1, l), (z, -2.0 * l), (z + 1, l)];
        for &(i, vi) in &v {
            for &(j, vj) in &v {
                a[(i, j)] += vi * vj;
            }
        }
    }
    let svd = a.clone().svd(true, true);
    let eps = svd.singular_values.max() * 1e-13;
    let solve = |rhs: &DVector<f64>| {
        svd.solve(rhs, eps)
            .expect("both singular vector sets were computed")
    };
    // Normal equations square the condition number; two steps of iterative refinement (the
    // residual in f64, solved again) take back the digits that costs.
    let mut g = solve(&b);
    for _ in 0..2 {
        let r = &b - &a * &g;
        g += solve(&r);
    }
    g.iter().copied().collect()
}

/// Per-exposure lookup tables for the merge of one channel: `(w(z), w(z) (g(z) - ln t))`.
pub fn merge_tables(g: &[f64], ln_t: &[f64], kind: WeightType) -> Vec<[(f32, f32); 256]> {
    ln_t.iter()
        .map(|&lt| {
            let mut t = [(0.0f32, 0.0f32); 256];
            for (z, e) in t.iter_mut().enumerate() {
                let w = weight(kind, z as u8);
                *e = (w as f32, (w * (g[z] - lt)) as f32);
            }
            t
        })
        .collect()
}

/// Per-channel inputs of the merge: exposure j's values of some pixels (shortest exposure
/// first), the lookup tables of [`merge_tables`], and the fallbacks of [`single_exposure`]
/// for the shortest and the longest exposure.
pub struct ChannelMerge<'a> {
    pub planes: Vec<&'a [u8]>,
    pub tables: &'a [[(f32, f32); 256]],
    pub fallback: (&'a [f32; 256], &'a [f32; 256]),
}

/// Merges pixels into `out` ((pixel, channel) interleaved): radiance `exp(ln E)`. Returns
/// how many (pixel, channel) values had no usable exposure.
pub fn merge_pixels(channels: &[ChannelMerge], out: &mut [f32]) -> u64 {
    /// Pixels summed together: their sums are independent, so the adds of one exposure do
    /// not wait on the previous exposure's (pixel by pixel, every add waited on the last).
    const LANES: usize = 8;
    let c = channels.len();
    let mut unusable = 0;
    for (k, ch) in channels.iter().enumerate() {
        let (short, long) = (ch.planes[0], ch.planes[ch.planes.len() - 1]);
        let n = short.len();
        let mut i0 = 0;
        while i0 < n {
            let m = LANES.min(n - i0);
            let (mut sw, mut sv) = ([0.0f32; LANES], [0.0f32; LANES]);
            for (p, t) in ch.planes.iter().zip(ch.tables) {
                let zs = &p[i0..i0 + m];
                for l in 0..m {
                    let (w, v) = t[zs[l] as usize];
                    sw[l] += w;
                    sv[l] += v;
                }
            }
            for l in 0..m {
                let i = i0 + l;
                out[i * c + k] = if sw[l] > 0.0 {
                    sv[l] / sw[l]
                } else {
                    unusable += 1;
                    if short[i] >= 128 {
                        ch.fallback.0[short[i] as usize]
                    } else {
                        ch.fallback.1[long[i] as usize]
                    }
                };
            }
            i0 += m;
        }
    }
    for v in out.iter_mut() {
        *v = exp_f32(*v);
    }
    unusable
}

/// `e^x` in f32 without branches (so that loops over it vectorise): Cody-Waite reduction by
/// ln 2 and Cephes' degree-7 polynomial for `e^r`, |r| <= ln 2 / 2; within 2 ulp of the exact
/// value for x in [-87, 88], clamped outside (radiance never gets there).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in plain SSE2.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Twin of `MergeGeom` in `debevec.cuh` (the GPU merge's launch geometry; checked against
/// C's layout by the host harness).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeGeom {
    pub pixels: i64,
    pub channels: i64,
    pub exposures: i64,
}

impl MergeGeom {
    /// The merge of `pixels` pixels of `channels` channels in `exposures` exposures.
    pub fn of(pixels: usize, channels: usize, exposures: usize) -> MergeGeom {
        MergeGeom {
            pixels: pixels as i64,
            channels: channels as i64,
            exposures: exposures as i64,
        }
    }
}

/// `g(z) - ln t` for every z: the fallback ln E of a pixel in one exposure.
pub fn single_exposure(g: &[f64], ln_t: f64) -> [f32; 256] {
    std::array::from_fn(|z| (g[z] - ln_t) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_exponential_is_within_two_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn weights_match_their_definitions() {
        let t = |z| weight(WeightType::Triangle, z);
        assert_eq!(
            (t(0), t(1), t(127), t(128), t(254), t(255)),
            (0.0, 1.0, 127.0, 127.0, 1.0, 0.0)
        );
        let s = |z| weight(WeightType::Sine, z);
        assert!(s(0).abs() < 1e-15 && s(255).abs() < 1e-12);
        assert!((s(128) - (std::f64::consts::PI * 128.0 / 255.0).sin()).abs() < 1e-15);
    }

    /// A curve with curvature everywhere (so smoothness would bend it): recovered exactly when
    /// the samples connect every level and lambda = 0.
    #[test]
    fn a_nonlinear_curve_is_recovered_from_consistent_samples() {
        let g_true: Vec<f64> = (0..256)
            .map(|z| {
                let x = (z as f64 + 0.5) / 256.0;
                x.powf(0.45).ln() - (128.5f64 / 256.0).powf(0.45).ln()
            })
            .collect();
        let mut samples = Vec::new();
        let mut state = 7u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) % n
        };
        // Neighbouring pairs link every level 1..254; random triples add redundancy.
        for z in 1..254u8 {
            let ln_e = 0.3 * f64::from(z).sin();
            samples.push(vec![
                (z, g_true[z as usize] - ln_e),
                (z + 1, g_true[z as usize + 1] - ln_e),
            ]);
        }
        for _ in 0..500 {
            let ln_e = next(1000) as f64 / 500.0 - 1.0;
            let s: Sample = (0..3)
                .map(|_| {
                    let z = 1 + next(254) as u8;
                    (z, g_true[z as usize] - ln_e)
                })
                .collect();
            samples.push(s);
        }
        for kind in [WeightType::Triangle, WeightType::Sine] {
            let g = solve_channel(
                &samples,
                Solve {
                    smoothness: 0.0,
                    weight: kind,
                },
            );
            for z in 1..255 {
                assert!(
                    (g[z] - g_true[z]).abs() < 1e-8,
                    "{kind:?} z {z}: {} vs {}",
                    g[z],
                    g_true[z]
                );
            }
        }
    }

    #[test]
    fn the_merge_weights_exposures_and_falls_back_where_none_counts() {
        let g: Vec<f64> = (0..256).map(|z| (f64::from(z) - 128.0) / 32.0).collect();
        let ln_t = [0.0, 1.0];
        let tables = merge_tables(&g, &ln_t, WeightType::Triangle);
        let fb = (&single_exposure(&g, ln_t[0]), &single_exposure(&g, ln_t[1]));
        // Pixel 0: consistent values (z=100 and 132 both say ln E = -0.875).
        // Pixel 1: saturated in both -> shortest; pixel 2: black in both -> longest.
        let short = [100u8, 255, 0];
        let long = [132u8, 255, 0];
        let mut out = [0.0f32; 3];
        let ch = ChannelMerge {
            planes: vec![&short, &long],
            tables: &tables,
            fallback: fb,
        };
        let n = merge_pixels(&[ch], &mut out);
        assert_eq!(n, 2);
        assert!((out[0].ln() + 0.875).abs() < 1e-6, "{}", out[0].ln());
        assert!((out[1].ln() - (127.0 / 32.0)).abs() < 1e-5);
        assert!((out[2].ln() - (-128.0 / 32.0 - 1.0)).abs() < 1e-5);
    }
}
