//! Host checks of the crop kernels (crop.cuh's phases, run for every thread index by
//! src/ops/crop/harness.cpp): on random patterns of every type the harness is built for, with
//! NaN, negative pixels, empty patterns, every centre method and several block sizes, each
//! record equals kernel.rs' analysis bit for bit (or asks for the CPU where kernel.rs takes
//! its full sort), and each window and its retention sum equal `crop_into`'s.

use crate::gpu::harness_support::{assert_c_layout, layout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::io::Element;
use crate::ops::crop::device::{CropGeom, CropRecord};
use crate::ops::crop::kernel::{self, CentreMethod, Fixed, PatternKind};

type AnalyseFn<T> = unsafe extern "C" fn(*const CropGeom, *const T, *mut CropRecord, i64, i64);
type WindowFn<T> = unsafe extern "C" fn(
    *const CropGeom,
    i64,
    i64,
    *const T,
    *const i64,
    *const i32,
    *mut T,
    *mut f64,
    i64,
);

macro_rules! host_fns {
    ($($analyse:ident, $window:ident, $t:ty;)*) => {
        extern "C" {
            $(
                fn $analyse(
                    g: *const CropGeom,
                    p: *const $t,
                    r: *mut CropRecord,
                    count: i64,
                    threads: i64,
                );
                fn $window(
                    g: *const CropGeom,
                    side_h: i64,
                    side_w: i64,
                    p: *const $t,
                    starts: *const i64,
                    scales: *const i32,
                    out: *mut $t,
                    kept: *mut f64,
                    count: i64,
                );
            )*
            fn tessera_host_crop_layout(out: *mut i64);
        }
    };
}
host_fns! {
    tessera_host_crop_analyse_u8, tessera_host_crop_window_u8, u8;
    tessera_host_crop_analyse_u16, tessera_host_crop_window_u16, u16;
    tessera_host_crop_analyse_u32, tessera_host_crop_window_u32, u32;
    tessera_host_crop_analyse_i16, tessera_host_crop_window_i16, i16;
    tessera_host_crop_analyse_f32, tessera_host_crop_window_f32, f32;
    tessera_host_crop_analyse_f64, tessera_host_crop_window_f64, f64;
}

/// A type the harness is built for: its host functions and a random pixel.
trait Pixel: Element {
    const ANALYSE: AnalyseFn<Self>;
    const WINDOW: WindowFn<Self>;
    /// A pixel: mostly small (a dark background), some bright; `odd` allows negatives (signed
    /// and float types) and, for floats, NaN.
    fn random(rng: &mut StdRng, odd: bool) -> Self;
}

/// An unsigned pixel: any value with probability `any`, else a dark one, below `dark`.
fn dark_or_any<T>(rng: &mut StdRng, any: f64, dark: T) -> T
where
    T: Default + rand::distr::uniform::SampleUniform + PartialOrd,
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    if rng.random_bool(any) {
        rng.random()
    } else {
        rng.random_range(T::default()..dark)
    }
}

macro_rules! pixel {
    ($t:ty, $analyse:ident, $window:ident, |$rng:ident, $odd:ident| $body:expr) => {
        impl Pixel for $t {
            const ANALYSE: AnalyseFn<Self> = $analyse;
            const WINDOW: WindowFn<Self> = $window;
            fn random($rng: &mut StdRng, $odd: bool) -> Self {
                $body
            }
        }
    };
}
pixel!(
    u8,
    tessera_host_crop_analyse_u8,
    tessera_host_crop_window_u8,
    |rng, _odd| dark_or_any(rng, 0.1, 4)
);
pixel!(
    u16,
    tessera_host_crop_analyse_u16,
    tessera_host_crop_window_u16,
    |rng, _odd| dark_or_any(rng, 0.1, 40)
);
pixel!(
    u32,
    tessera_host_crop_analyse_u32,
    tessera_host_crop_window_u32,
    // Values beyond 2^29 make the scale negative (rounded counts) for large patterns.
    |rng, _odd| dark_or_any(rng, 0.05, 1000)
);
pixel!(
    i16,
    tessera_host_crop_analyse_i16,
    tessera_host_crop_window_i16,
    |rng, odd| {
        let v: i16 = rng.random_range(0..300);
        if odd && rng.random_bool(0.1) {
            -v
        } else {
            v
        }
    }
);
pixel!(
    f32,
    tessera_host_crop_analyse_f32,
    tessera_host_crop_window_f32,
    |rng, odd| {
        let v = rng.random::<f32>().powi(4) * 1e4;
        match rng.random_range(0..200) {
            0 if odd => f32::NAN,
            1..=20 if odd => -v * 0.01,
            _ => v,
        }
    }
);
pixel!(
    f64,
    tessera_host_crop_analyse_f64,
    tessera_host_crop_window_f64,
    |rng, odd| {
        let v = rng.random::<f64>().powi(6) * 1e-3;
        if odd && rng.random_bool(0.05) {
            -v
        } else {
            v
        }
    }
);

fn host_records<T: Pixel>(g: &CropGeom, flat: &[T], count: usize, threads: i64) -> Vec<CropRecord> {
    let mut out = vec![CropRecord::default(); count];
    assert_eq!(flat.len(), count * (g.h * g.w) as usize);
    // SAFETY: `flat` holds `count` patterns of g.h x g.w, `out` one record per pattern.
    unsafe { T::ANALYSE(g, flat.as_ptr(), out.as_mut_ptr(), count as i64, threads) };
    out
}

fn check_type<T: Pixel>(cases: u64) {
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        let (h, w) = (rng.random_range(1..40usize), rng.random_range(1..40usize));
        let odd = rng.random_bool(0.3);
        let count = 3;
        let mut flat: Vec<T> = (0..count * h * w)
            .map(|_| T::random(&mut rng, odd))
            .collect();
        if rng.random_bool(0.2) {
            // An empty pattern.
            flat[..h * w].iter_mut().for_each(|v| *v = T::default());
        }
        if T::DTYPE == crate::io::DType::F64 && rng.random_bool(0.5) {
            // Patterns scaled near and into the subnormals, or near f64's largest: their scale
            // passes 2^1022 (two factors) or goes down to 2^-1022.
            let by = [1e-307, 3e-308, 1e-310, 4e-320, 1e305][rng.random_range(0..5)];
            for v in &mut flat {
                *v = <T as num_traits::NumCast>::from(v.to_f64().unwrap() * by).unwrap();
            }
        }
        let method = [
            CentreMethod::Centroid,
            CentreMethod::Center,
            CentreMethod::Manual,
        ][rng.random_range(0..3)];
        let manual = (method == CentreMethod::Manual).then(|| {
            (
                rng.random_range(0.0..h as f64),
                rng.random_range(0.0..w as f64),
            )
        });
        let target = [0.5, 0.9, 0.98, 1.0][rng.random_range(0..4)];
        let g = CropGeom::new(
            (h as u64, w as u64),
            method,
            manual,
            target,
            T::DTYPE.is_float(),
        );
        let threads = [1, 7, 256][rng.random_range(0..3)];
        let records = host_records(&g, &flat, count, threads);
        for (i, rec) in records.iter().enumerate() {
            let p = &flat[i * h * w..(i + 1) * h * w];
            let want = kernel::analyse(p, w, method, manual, target, None);
            let got = rec.analysis();
            let what = format!("{} seed {seed} pattern {i}", std::any::type_name::<T>());
            assert_eq!(got.kind, want.kind, "{what}");
            if want.kind == PatternKind::NotFinite {
                continue;
            }
            assert_eq!(
                (got.centre.0.to_bits(), got.centre.1.to_bits()),
                (want.centre.0.to_bits(), want.centre.1.to_bits()),
                "{what}: centre {:?} vs {:?}",
                got.centre,
                want.centre
            );
            assert_eq!(
                (got.scale, got.total_q.to_bits()),
                (want.scale, want.total_q.to_bits()),
                "{what}"
            );
            assert_eq!(got.total.to_bits(), want.total.to_bits(), "{what}");
            let negative = p.iter().any(|v| v.to_f64().unwrap() < 0.0);
            if rec.on_cpu() {
                assert!(
                    negative && want.kind == PatternKind::Normal,
                    "{what}: sent to the CPU"
                );
            } else {
                assert_eq!(
                    got.radius.to_bits(),
                    want.radius.to_bits(),
                    "{what}: radius {} vs {}",
                    got.radius,
                    want.radius
                );
            }
        }
    }
}

#[test]
fn pass_1_records_equal_the_cpu_analysis_bit_for_bit() {
    check_type::<u8>(120);
    check_type::<u16>(120);
    check_type::<u32>(120);
    check_type::<i16>(120);
    check_type::<f32>(200);
    check_type::<f64>(120);
}

/// The geometry of (h, w) integer patterns, centred by centroid, cropped to `target` retention.
fn centroid_geom(h: usize, w: usize, target: f64) -> CropGeom {
    CropGeom::new(
        (h as u64, w as u64),
        CentreMethod::Centroid,
        None,
        target,
        false,
    )
}

#[test]
fn a_crossing_bin_beyond_the_block_memory_goes_to_the_cpu() {
    // 1200 x 1200 uniform, half the total: the crossing ring (r about 480, inside the square)
    // of the 1024 bins holds about 2200 pixels (> 1536).
    let (h, w) = (1200usize, 1200usize);
    let flat = vec![3u16; h * w];
    let g = centroid_geom(h, w, 0.5);
    let r = host_records(&g, &flat, 1, 256)[0];
    assert!(r.on_cpu(), "{r:?}");
    assert_eq!(r.analysis().centre, (599.5, 599.5));
    // At 64 x 64 the bins are small: a point source stays on the device.
    let (h, w) = (64usize, 64usize);
    let mut point = vec![0u16; h * w];
    point[40 * w + 10] = 9;
    let g = centroid_geom(h, w, 0.98);
    let r = host_records(&g, &point, 1, 256)[0];
    assert!(!r.on_cpu(), "{r:?}");
    assert_eq!((r.radius, r.cy, r.cx), (0.0, 40.0, 10.0));
}

fn check_windows<T: Pixel>(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (h, w) = (rng.random_range(1..30usize), rng.random_range(1..30usize));
    let (sh, sw) = (rng.random_range(1..=h), rng.random_range(1..=w));
    let count = 4;
    let mut flat: Vec<T> = (0..count * h * w)
        .map(|_| T::random(&mut rng, true))
        .collect();
    let starts: Vec<i64> = (0..count)
        .flat_map(|_| {
            [
                rng.random_range(0..=h - sh) as i64,
                rng.random_range(0..=w - sw) as i64,
            ]
        })
        .collect();
    let mut scales: Vec<i32> = (0..count).map(|_| rng.random_range(-3..40)).collect();
    if T::DTYPE == crate::io::DType::F64 {
        // Patterns near the subnormals and their scales (beyond 2^1022: two factors); the
        // values times 2^s stay below 2^50, as Fixed::of makes them.
        for (i, s) in scales.iter_mut().enumerate() {
            if rng.random_bool(0.5) {
                let by = [1e-307, 3e-308, 1e-310, 4e-320][rng.random_range(0..4)];
                let pattern = &mut flat[i * h * w..(i + 1) * h * w];
                for v in pattern.iter_mut() {
                    *v = <T as num_traits::NumCast>::from(v.to_f64().unwrap() * by).unwrap();
                }
                let most = pattern
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.to_f64().unwrap().abs()));
                *s = Fixed::of(most, (h * w) as u64, h.max(w) as u64, true).s;
            }
        }
    }
    let g = CropGeom::new((h as u64, w as u64), CentreMethod::Center, None, 0.9, true);
    let mut out = vec![T::default(); count * sh * sw];
    let mut kept = vec![0.0f64; count];
    // SAFETY: the windows lie inside the patterns; out and kept are sized for every pattern.
    unsafe {
        T::WINDOW(
            &g,
            sh as i64,
            sw as i64,
            flat.as_ptr(),
            starts.as_ptr(),
            scales.as_ptr(),
            out.as_mut_ptr(),
            kept.as_mut_ptr(),
            count as i64,
        )
    };
    for i in 0..count {
        let mut want = vec![T::default(); sh * sw];
        let sum = kernel::crop_into(
            &flat[i * h * w..(i + 1) * h * w],
            w,
            (starts[2 * i] as usize, starts[2 * i + 1] as usize),
            sw,
            Fixed::from_scale(scales[i]),
            &mut want,
        );
        let same = want
            .iter()
            .zip(&out[i * sh * sw..(i + 1) * sh * sw])
            .all(|(a, b)| a.to_f64().unwrap().to_bits() == b.to_f64().unwrap().to_bits());
        assert!(same, "seed {seed} pattern {i}: window");
        if sum.is_finite() {
            assert_eq!(
                kept[i].to_bits(),
                sum.to_bits(),
                "seed {seed} pattern {i}: kept"
            );
        }
    }
}

#[test]
fn pass_2_windows_and_their_sums_equal_crop_into() {
    for seed in 0..60 {
        check_windows::<u8>(seed);
        check_windows::<u16>(seed);
        check_windows::<f32>(seed);
        check_windows::<f64>(seed);
    }
}

#[test]
fn the_rust_twins_have_the_c_layout() {
    let mut rust = layout!(CropGeom; h, w, method, is_float, manual_y, manual_x, target);
    rust.push(std::mem::size_of::<CropRecord>());
    // SAFETY: writes 9 values.
    unsafe { assert_c_layout("CropGeom, CropRecord", tessera_host_crop_layout, &rust) };
}
