//! Host checks of the Debevec merge kernel's per-thread body (debevec.cuh), run by
//! harness.cpp (build.rs compiles it for the host) and compared bit for bit with debevec.rs,
//! so CI checks the kernel's arithmetic and indexing without a GPU.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::debevec::{self, ChannelMerge, MergeGeom, WeightType};
use super::{merge_debevec, Image, Pixels};
use crate::gpu::harness_support::{assert_c_layout, assert_same_bits, layout};

extern "C" {
    fn tessera_host_debevec(
        g: *const MergeGeom,
        planes: *const u8,
        tables: *const f32,
        fallback: *const f32,
        out: *mut f32,
    ) -> u64;
    fn tessera_host_exp_f32(x: f32) -> f32;
    fn tessera_host_merge_geom_layout(out: *mut i64);
}

#[test]
fn the_rust_twin_has_the_c_layout() {
    let rust = layout!(MergeGeom; pixels, channels, exposures);
    // SAFETY: writes 4 values.
    unsafe { assert_c_layout("MergeGeom", tessera_host_merge_geom_layout, &rust) };
}

// ---------------------------------------------------------------------------------------------
// Debevec merge

/// Counts of what one merge comparison exercised.
#[derive(Debug, Default)]
struct MergeStats {
    values: u64,
    unusable: u64,
    fallback_short: u64,
    fallback_long: u64,
    clamped: u64,
}

/// A response curve like a real one: increasing with small wiggles, g(128) = 0; `spread` sets
/// its range (large ones push ln E past exp_f32's clamps).
fn random_response(rng: &mut StdRng, spread: f64) -> Vec<f64> {
    let mut g = Vec::with_capacity(256);
    let mut v = 0.0;
    for _ in 0..256 {
        g.push(v);
        let step = rng.random_range(-0.2..1.0) * spread / 128.0;
        v += step;
    }
    let anchor = g[128];
    g.iter().map(|x| x - anchor).collect()
}

/// Pixel values of one bracket, planes[(j * C + k) * N + i]: random, with whole pixels black
/// or saturated in every exposure and channel, and pixels of only 0 and 255.
fn random_planes(rng: &mut StdRng, e: usize, c: usize, n: usize) -> Vec<u8> {
    let mut planes = vec![0u8; e * c * n];
    for i in 0..n {
        let kind = rng.random_range(0..10);
        for j in 0..e {
            for k in 0..c {
                planes[(j * c + k) * n + i] = match kind {
                    0 => 255,
                    1 => 0,
                    2 => [0, 255][rng.random_range(0..2)],
                    3 => [0, 1, 127, 128, 254, 255][rng.random_range(0..6)],
                    _ => rng.random(),
                };
            }
        }
    }
    planes
}

/// debevec.cuh's body on the host (its output first filled with `fill`) and
/// debevec::merge_pixels, on `planes` (e x c x n) with each channel's `tables` and `fallbacks`:
/// (host radiance, host unusable count, CPU radiance, CPU unusable count).
fn host_and_cpu(
    planes: &[u8],
    tables: &[Vec<[(f32, f32); 256]>],
    fallbacks: &[([f32; 256], [f32; 256])],
    (e, c, n): (usize, usize, usize),
    fill: f32,
) -> (Vec<f32>, u64, Vec<f32>, u64) {
    // The kernel's layouts (debevec.cuh).
    let tables_flat: Vec<f32> = tables
        .iter()
        .flatten()
        .flat_map(|t| t.iter().flat_map(|&(w, v)| [w, v]))
        .collect();
    let fallback_flat: Vec<f32> = fallbacks
        .iter()
        .flat_map(|(s, l)| s.iter().chain(l.iter()).copied())
        .collect();
    assert_eq!(tables_flat.len(), c * e * 256 * 2);
    let geom = MergeGeom::of(n, c, e);
    let mut got = vec![fill; n * c];
    // SAFETY: every buffer has the size debevec.cuh documents for this geometry.
    let got_unusable = unsafe {
        tessera_host_debevec(
            &geom,
            planes.as_ptr(),
            tables_flat.as_ptr(),
            fallback_flat.as_ptr(),
            got.as_mut_ptr(),
        )
    };
    let channels: Vec<ChannelMerge> = (0..c)
        .map(|k| ChannelMerge {
            planes: (0..e)
                .map(|j| &planes[(j * c + k) * n..(j * c + k + 1) * n])
                .collect(),
            tables: &tables[k],
            fallback: (&fallbacks[k].0, &fallbacks[k].1),
        })
        .collect();
    let mut want = vec![0.0f32; n * c];
    let want_unusable = debevec::merge_pixels(&channels, &mut want);
    (got, got_unusable, want, want_unusable)
}

/// Compares the host merge with debevec::merge_pixels (and merge_debevec on Images). Long on
/// purpose: one random case built, run three ways (host kernel, merge_pixels, merge_debevec)
/// and compared, with the coverage counted, reads best in one place.
fn check_debevec(
    rng: &mut StdRng,
    c: usize,
    e: usize,
    kind: WeightType,
    spread: f64,
    stats: &mut MergeStats,
) {
    let (height, width) = (rng.random_range(1..=40), rng.random_range(1..=12));
    let n = height * width;
    let g: Vec<Vec<f64>> = (0..c).map(|_| random_response(rng, spread)).collect();
    let mut ln_t: Vec<f64> = (0..e).map(|_| rng.random_range(-9.0..2.0)).collect();
    ln_t.sort_by(f64::total_cmp);
    let planes = random_planes(rng, e, c, n);
    let tables: Vec<_> = g
        .iter()
        .map(|gk| debevec::merge_tables(gk, &ln_t, kind))
        .collect();
    let fallbacks: Vec<_> = g
        .iter()
        .map(|gk| {
            (
                debevec::single_exposure(gk, ln_t[0]),
                debevec::single_exposure(gk, ln_t[e - 1]),
            )
        })
        .collect();
    let (got, got_unusable, want, want_unusable) = host_and_cpu(
        &planes,
        &tables,
        &fallbacks,
        (e, c, n),
        f32::from_bits(0x7fa5_a5a5),
    );
    let bits = |v: &[f32]| v.iter().map(|x| u64::from(x.to_bits())).collect::<Vec<_>>();
    let ctx: &dyn std::fmt::Debug = &(c, e, kind, spread, &ln_t);
    assert_same_bits("radiance", &bits(&got), &bits(&want), ctx);
    assert_eq!(got_unusable, want_unusable, "unusable; {ctx:?}");

    // The whole-image path (rayon blocks of 16 rows): planar (C, H, W) images.
    let images: Vec<Image> = (0..e)
        .map(|j| Image {
            channels: c,
            height,
            width,
            pixels: Pixels::U8(planes[j * c * n..(j + 1) * c * n].to_vec()),
        })
        .collect();
    let merged = merge_debevec(&images, &ln_t, &g, kind);
    assert_same_bits("merge_debevec", &bits(&got), &bits(&merged.data), ctx);
    assert_eq!(got_unusable, merged.unusable);

    stats.values += (n * c) as u64;
    stats.unusable += got_unusable;
    for k in 0..c {
        for i in 0..n {
            let sw: f32 = (0..e)
                .map(|j| tables[k][j][planes[(j * c + k) * n + i] as usize].0)
                .sum();
            if sw > 0.0 {
                let ln_e = got[i * c + k].ln();
                stats.clamped += u64::from(!(-86.9..87.9).contains(&ln_e));
            } else if planes[k * n + i] >= 128 {
                stats.fallback_short += 1;
            } else {
                stats.fallback_long += 1;
            }
        }
    }
}

#[test]
fn debevec_merge_matches_the_cpu_merge_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0xDEBE7EC);
    let mut stats = MergeStats::default();
    let mut cases = 0;
    for kind in [WeightType::Triangle, WeightType::Sine] {
        for c in [1, 3] {
            for e in 1..=8 {
                for spread in [3.0, 12.0, 300.0] {
                    check_debevec(&mut rng, c, e, kind, spread, &mut stats);
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 8 * 3);
    assert!(stats.values > 10_000, "{stats:?}");
    // Both fallbacks ran (for Sine only the dark one can: sin(pi) as f32 is not 0, so 255
    // keeps a tiny weight), and radiances reached exp_f32's clamps.
    assert!(stats.fallback_short > 100, "{stats:?}");
    assert!(stats.fallback_long > 100, "{stats:?}");
    assert_eq!(stats.unusable, stats.fallback_short + stats.fallback_long);
    assert!(stats.clamped > 10, "{stats:?}");
}

/// Tables made up at random, most weights zero: the fallback runs at every value, so its
/// choice of exposure is checked at z = 127 and 128 too (real weights are positive there).
#[test]
fn debevec_merge_with_synthetic_tables_matches() {
    let mut rng = StdRng::seed_from_u64(0x7AB1E);
    let (mut edges, mut values) = (0, 0);
    for _ in 0..60 {
        let c = [1, 3][rng.random_range(0..2)];
        let e = rng.random_range(1..=4);
        let n = rng.random_range(1..=200);
        let table = |rng: &mut StdRng| -> [(f32, f32); 256] {
            std::array::from_fn(|_| {
                let w = if rng.random_bool(0.7) {
                    0.0
                } else {
                    rng.random_range(0.0..2.0)
                };
                (w, rng.random_range(-20.0..20.0))
            })
        };
        let tables: Vec<Vec<[(f32, f32); 256]>> = (0..c)
            .map(|_| (0..e).map(|_| table(&mut rng)).collect())
            .collect();
        let fallbacks: Vec<([f32; 256], [f32; 256])> = (0..c)
            .map(|_| {
                (
                    std::array::from_fn(|_| rng.random_range(-90.0..90.0)),
                    std::array::from_fn(|_| rng.random_range(-90.0..90.0)),
                )
            })
            .collect();
        let planes: Vec<u8> = (0..e * c * n)
            .map(|_| {
                if rng.random_bool(0.3) {
                    rng.random_range(126..=129)
                } else {
                    rng.random()
                }
            })
            .collect();
        let (got, got_unusable, want, want_unusable) =
            host_and_cpu(&planes, &tables, &fallbacks, (e, c, n), 0.0);
        let bits = |v: &[f32]| v.iter().map(|x| u64::from(x.to_bits())).collect::<Vec<_>>();
        assert_same_bits("radiance", &bits(&got), &bits(&want), &(c, e, n));
        assert_eq!(got_unusable, want_unusable);
        values += n * c;
        for k in 0..c {
            for i in 0..n {
                let sw: f32 = (0..e)
                    .map(|j| tables[k][j][planes[(j * c + k) * n + i] as usize].0)
                    .sum();
                edges += usize::from(sw == 0.0 && (127..=128).contains(&planes[k * n + i]));
            }
        }
    }
    assert!(values > 5000);
    assert!(edges > 50, "fallbacks at the 127/128 edge: {edges}");
}

#[test]
fn debevec_merge_hand_checked() {
    // debevec.rs's the_merge_weights_exposures_and_falls_back_where_none_counts, through the
    // kernel: pixel 0 is consistent (ln E = -0.875), pixel 1 saturated (shortest exposure's
    // g(255) - 0), pixel 2 black (longest exposure's g(0) - 1).
    let g: Vec<f64> = (0..256).map(|z| (f64::from(z) - 128.0) / 32.0).collect();
    let ln_t = [0.0, 1.0];
    let tables = debevec::merge_tables(&g, &ln_t, WeightType::Triangle);
    let tables_flat: Vec<f32> = tables
        .iter()
        .flat_map(|t| t.iter().flat_map(|&(w, v)| [w, v]))
        .collect();
    let fallback: Vec<f32> = [
        debevec::single_exposure(&g, ln_t[0]),
        debevec::single_exposure(&g, ln_t[1]),
    ]
    .concat();
    let planes = [100u8, 255, 0, 132, 255, 0];
    let geom = MergeGeom::of(3, 1, 2);
    let mut out = [0.0f32; 3];
    // SAFETY: sizes as the geometry says.
    let n = unsafe {
        tessera_host_debevec(
            &geom,
            planes.as_ptr(),
            tables_flat.as_ptr(),
            fallback.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    assert_eq!(n, 2);
    assert_eq!(out[0].to_bits(), debevec::exp_f32(-0.875).to_bits());
    assert_eq!(out[1].to_bits(), debevec::exp_f32(127.0 / 32.0).to_bits());
    assert_eq!(
        out[2].to_bits(),
        debevec::exp_f32(-128.0 / 32.0 - 1.0).to_bits()
    );
}

#[test]
fn exp_f32_matches_bit_for_bit() {
    let host = |x: f32| {
        // SAFETY: a pure function of a float.
        unsafe { tessera_host_exp_f32(x) }
    };
    let mut xs: Vec<f32> = (0..=400_000)
        .map(|i| -100.0 + 200.0 * i as f32 / 400_000.0)
        .collect();
    for edge in [-88.0f32, -87.0, 0.0, 88.0, 89.0] {
        let b = edge.to_bits();
        for d in 0..=8u32 {
            xs.extend([f32::from_bits(b + d), f32::from_bits(b.wrapping_sub(d))]);
        }
    }
    xs.extend([
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(0x7f80_0001), // signalling
        f32::from_bits(0xffc0_0042),
        // Halfway points of the rounding to n: (k + 0.5) ln 2.
        0.5 * std::f32::consts::LN_2,
        -0.5 * std::f32::consts::LN_2,
        1.5 * std::f32::consts::LN_2,
        -60.5 * std::f32::consts::LN_2,
    ]);
    let mut rng = StdRng::seed_from_u64(0xE4F);
    xs.extend((0..200_000).map(|_| f32::from_bits(rng.random())));
    let got: Vec<u64> = xs.iter().map(|&x| u64::from(host(x).to_bits())).collect();
    let want: Vec<u64> = xs
        .iter()
        .map(|&x| u64::from(debevec::exp_f32(x).to_bits()))
        .collect();
    assert_same_bits("exp_f32", &got, &want, &"sweep");
    // The clamps: below -87 every x gives exp_f32(-87), above 88 exp_f32(88).
    assert_eq!(host(-1000.0).to_bits(), debevec::exp_f32(-87.0).to_bits());
    assert_eq!(host(f32::NEG_INFINITY).to_bits(), host(-87.0).to_bits());
    assert_eq!(host(f32::INFINITY).to_bits(), host(88.0).to_bits());
    assert!(host(f32::NAN).is_nan());
    assert_eq!(host(0.0), 1.0);
}
