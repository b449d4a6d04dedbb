//! Host checks of the pyramid kernels' per-voxel bodies (reduce.cuh, run over a whole launch
//! grid by src/ops/pyramid/harness.cpp): on random boxes of random levels, every type the
//! harness is built for, the mean, mode and Gaussian levels equal kernel.rs' bit for bit.

use crate::gpu::harness_support::{assert_c_layout, bits, layout};
use std::ops::Range;

use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::io::Element;
use crate::ops::pyramid::device::{
    diff_geom, gaussian_passes, upsample_passes, AxisGeom, AxisPass, ReduceGeom,
};
use crate::ops::pyramid::kernel::{self, input_range, Method, Source};

type ReduceFn<T> = unsafe extern "C" fn(*const ReduceGeom, *const T, *mut T, i64);
type RoundFn<T> = unsafe extern "C" fn(*const f64, *mut T, i64);
/// A Gaussian pass over a box of I into O: geometry, first, count, at, weights, in, out.
type PassFn<I, O> = unsafe extern "C" fn(
    *const AxisGeom,
    *const i64,
    *const i64,
    *const i64,
    *const f64,
    *const I,
    *mut O,
);
/// The difference fused with the last upsampling pass: diff geometry, fine, pass geometry,
/// first, count, at, weights, the pass's input, out, voxels.
type DiffPassFn<I> = unsafe extern "C" fn(
    *const ReduceGeom,
    *const f32,
    *const AxisGeom,
    *const i64,
    *const i64,
    *const i64,
    *const f64,
    *const I,
    *mut f32,
    i64,
);

/// The host functions of each type `T` (reduce.cu's, named `tessera_host_<kind>_<T>`): the
/// fused Gaussian passes (gauss_in: T to f64, gauss_out: f64 to T, gauss_inout: T to T), the
/// reductions (mean, mode) and the rounding from f64 (round).
macro_rules! host_kernels {
    ($($t:ident)*) => { paste::paste! {
        extern "C" {
            $(
                fn [<tessera_host_gauss_in_ $t>](g: *const AxisGeom, first: *const i64,
                    count: *const i64, at: *const i64, weights: *const f64, input: *const $t,
                    out: *mut f64);
                fn [<tessera_host_gauss_out_ $t>](g: *const AxisGeom, first: *const i64,
                    count: *const i64, at: *const i64, weights: *const f64, input: *const f64,
                    out: *mut $t);
                fn [<tessera_host_gauss_inout_ $t>](g: *const AxisGeom, first: *const i64,
                    count: *const i64, at: *const i64, weights: *const f64, input: *const $t,
                    out: *mut $t);
                fn [<tessera_host_mean_ $t>](g: *const ReduceGeom, input: *const $t,
                    out: *mut $t, n: i64);
                fn [<tessera_host_mode_ $t>](g: *const ReduceGeom, input: *const $t,
                    out: *mut $t, n: i64);
                fn [<tessera_host_round_ $t>](input: *const f64, out: *mut $t, n: i64);
            )*
        }
        $(
            impl GaussPasses for $t {
                const GAUSS_IN: PassFn<$t, f64> = [<tessera_host_gauss_in_ $t>];
                const GAUSS_OUT: PassFn<f64, $t> = [<tessera_host_gauss_out_ $t>];
                const GAUSS_INOUT: PassFn<$t, $t> = [<tessera_host_gauss_inout_ $t>];
            }
            impl HostReduce for $t {
                const MEAN: ReduceFn<$t> = [<tessera_host_mean_ $t>];
                const MODE: ReduceFn<$t> = [<tessera_host_mode_ $t>];
                const ROUND: RoundFn<$t> = [<tessera_host_round_ $t>];
            }
        )*
    } };
}

/// A type's fused Gaussian passes.
trait GaussPasses: Sized {
    const GAUSS_IN: PassFn<Self, f64>;
    const GAUSS_OUT: PassFn<f64, Self>;
    const GAUSS_INOUT: PassFn<Self, Self>;
}

/// A type's host reductions and rounding.
trait HostReduce: Sized {
    const MEAN: ReduceFn<Self>;
    const MODE: ReduceFn<Self>;
    const ROUND: RoundFn<Self>;
}

/// Every element type the harness is built for (harness.cpp instantiates the same), handed to
/// the macro `$m`.
macro_rules! voxel_types {
    ($m:ident) => {
        $m!(u8 u16 u32 u64 i8 i16 i32 i64 f32 f64);
    };
}

voxel_types!(host_kernels);

/// The difference fused with the last upsampling pass, for a pass input of f32 or f64.
macro_rules! host_diff_pass {
    ($($t:ty: $name:ident;)*) => {
        extern "C" {
            $(
                fn $name(g: *const ReduceGeom, fine: *const f32, ga: *const AxisGeom,
                         first: *const i64, count: *const i64, at: *const i64,
                         weights: *const f64, input: *const $t, out: *mut f32, n: i64);
            )*
        }
    };
}

host_diff_pass! {
    f32: tessera_host_laplacian_diff_pass_f32;
    f64: tessera_host_laplacian_diff_pass_f64;
}

extern "C" {
    fn tessera_host_gauss_axis(
        g: *const AxisGeom,
        first: *const i64,
        count: *const i64,
        at: *const i64,
        weights: *const f64,
        input: *const f64,
        out: *mut f64,
    );
    fn tessera_host_laplacian_diff(
        g: *const ReduceGeom,
        fine: *const f32,
        up: *const f64,
        out: *mut f32,
        n: i64,
    );
    fn tessera_host_reduce_geom_layout(out: *mut i64);
}

/// A type the harness is built for: its host functions and a random value (from a few, so
/// that modes have ties, and the type's extremes, so that means and Gaussians meet the
/// 128-bit sums, the saturation and the overflowing f64 sums; floats also get NaN, -0.0 and
/// 0.0).
trait Voxel: Element + PartialOrd + GaussPasses + HostReduce {
    fn random(rng: &mut StdRng) -> Self;
}

macro_rules! integer_voxel {
    ($($t:ty)*) => {
        $(
            impl Voxel for $t {
                fn random(rng: &mut StdRng) -> Self {
                    match rng.random_range(0..10) {
                        0..=3 => rng.random_range(0..4) as $t,
                        4 => <$t>::MAX,
                        5 => <$t>::MAX - 1,
                        6 => <$t>::MIN,
                        7 => <$t>::MIN + 1,
                        _ => rng.random::<$t>(),
                    }
                }
            }
        )*
    };
}
integer_voxel!(u8 u16 u32 u64 i8 i16 i32 i64);

impl Voxel for f32 {
    fn random(rng: &mut StdRng) -> Self {
        match rng.random_range(0..11) {
            0 => f32::NAN,
            // A negative NaN with a payload: results must still be f32::NAN.
            10 => f32::from_bits(0xffc0_0123),
            1 => -0.0,
            2 => 0.0,
            3..=5 => rng.random_range(0..3) as f32 * 0.5,
            6 if rng.random_bool(0.3) => f32::MAX,
            7 if rng.random_bool(0.3) => f32::from_bits(rng.random_range(1..0x0080_0000)),
            _ => (rng.random::<f32>() - 0.3) * 1e3,
        }
    }
}

impl Voxel for f64 {
    fn random(rng: &mut StdRng) -> Self {
        match rng.random_range(0..11) {
            0 => f64::NAN,
            10 => f64::from_bits(0xfff8_0000_0000_0123),
            // Sums past f64's range (taken again, scaled), and subnormals.
            6 if rng.random_bool(0.3) => f64::MAX,
            7 if rng.random_bool(0.3) => -f64::MAX * 0.75,
            8 if rng.random_bool(0.3) => f64::from_bits(rng.random_range(1..1 << 52)),
            1 => -0.0,
            2 => 0.0,
            3..=5 => rng.random_range(0..3) as f64 * 0.25,
            _ => (rng.random::<f64>() - 0.3) * 1e6,
        }
    }
}

/// A random case: a level, factors (at least one above 1), an output box of the next level,
/// and an input box that covers what the output needs (the method's input range) and a little
/// more where the level allows.
struct Case {
    level: Vec<u64>,
    factor: Vec<u64>,
    out: Vec<Range<u64>>,
    in_box: Vec<Range<u64>>,
}

/// A random non-empty box of an array of `shape`.
fn random_box_of(rng: &mut StdRng, shape: &[u64]) -> Vec<Range<u64>> {
    shape
        .iter()
        .map(|&d| {
            let lo = rng.random_range(0..d);
            lo..rng.random_range(lo + 1..=d)
        })
        .collect()
}

fn random_case(rng: &mut StdRng, method: Method) -> Case {
    let nd = rng.random_range(1..=4);
    let level: Vec<u64> = (0..nd).map(|_| rng.random_range(1..=13)).collect();
    let mut factor: Vec<u64> = (0..nd).map(|_| rng.random_range(1..=3)).collect();
    let a = rng.random_range(0..nd);
    factor[a] = factor[a].max(2);
    let next = kernel::next_shape(&level, &factor);
    let out = random_box_of(rng, &next);
    let in_box = (0..nd)
        .map(|a| {
            let need = input_range(method, factor[a], level[a], &out[a]);
            let lo = need.start - rng.random_range(0..=need.start.min(2));
            let hi = need.end + rng.random_range(0..=(level[a] - need.end).min(2));
            lo..hi
        })
        .collect();
    Case {
        level,
        factor,
        out,
        in_box,
    }
}

fn random_box<T: Voxel>(rng: &mut StdRng, case: &Case) -> ArrayD<T> {
    let shape: Vec<usize> = case
        .in_box
        .iter()
        .map(|r| (r.end - r.start) as usize)
        .collect();
    ArrayD::from_shape_simple_fn(IxDyn(&shape), || T::random(rng))
}

fn assert_same_bits<T: Voxel>(what: &str, got: &[T], want: &ArrayD<T>, seed: u64) {
    let want: Vec<u64> = want.iter().map(|&v| bits(v)).collect();
    let got: Vec<u64> = got.iter().map(|&v| bits(v)).collect();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what} ({}), seed {seed}: voxel {i} of {}: host {:#x} vs CPU {:#x}",
            std::any::type_name::<T>(),
            got.len(),
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len());
}

fn check_type<T: Voxel>(cases: u64) {
    for seed in 0..cases {
        let mut rng = StdRng::seed_from_u64(seed);
        for method in [Method::Mean, Method::Mode, Method::Gaussian] {
            let case = random_case(&mut rng, method);
            let values = random_box::<T>(&mut rng, &case);
            let start: Vec<u64> = case.in_box.iter().map(|r| r.start).collect();
            let shape: Vec<u64> = values.shape().iter().map(|&d| d as u64).collect();
            let src = Source {
                values: values.view(),
                start: &start,
                level_shape: &case.level,
            };
            let input = values.as_slice().expect("C order");
            match method {
                Method::Gaussian => {
                    let want: ArrayD<T> = kernel::reduce_gaussian(&src, &case.factor, &case.out);
                    let got = host_gaussian::<T>(input, &start, &shape, &case);
                    assert_same_bits("gaussian", &got, &want, seed);
                    let passes =
                        gaussian_passes(&start, &shape, &case.level, &case.factor, &case.out);
                    let fused = host_gaussian_fused::<T>(input, &passes);
                    assert_same_bits("gaussian (fused passes)", &fused, &want, seed);
                }
                _ => {
                    let g = ReduceGeom::new(&start, &shape, &case.level, &case.factor, &case.out)
                        .expect("at most 4 axes");
                    let mut got = vec![T::default(); g.voxels() as usize];
                    let (run, want): (ReduceFn<T>, ArrayD<T>) = if method == Method::Mean {
                        (T::MEAN, kernel::reduce_mean(&src, &case.factor, &case.out))
                    } else {
                        (T::MODE, kernel::reduce_mode(&src, &case.factor, &case.out))
                    };
                    // SAFETY: the box holds every voxel the geometry reads (its input range),
                    // and `got` one per output voxel.
                    unsafe { run(&g, input.as_ptr(), got.as_mut_ptr(), g.voxels()) };
                    assert_same_bits(&format!("{method:?}"), &got, &want, seed);
                }
            }
        }
    }
}

/// The Gaussian as the GPU runs it: the box as f64, one pass per axis, rounded at the end.
fn host_gaussian<T: Voxel>(input: &[T], start: &[u64], shape: &[u64], case: &Case) -> Vec<T> {
    let mut cur: Vec<f64> = input
        .iter()
        .map(|v| v.to_f64().unwrap_or(f64::NAN))
        .collect();
    cur = host_passes(
        cur,
        &gaussian_passes(start, shape, &case.level, &case.factor, &case.out),
    );
    let mut out = vec![T::default(); cur.len()];
    // SAFETY: equal lengths.
    unsafe { T::ROUND(cur.as_ptr(), out.as_mut_ptr(), cur.len() as i64) };
    out
}

/// One pass by `run` from `input` into a fresh output.
fn host_pass<I, O: Default + Clone>(run: PassFn<I, O>, pass: &AxisPass, input: &[I]) -> Vec<O> {
    let mut out = vec![O::default(); pass.len()];
    // SAFETY: the tables index inside `input` (the passes' contract, checked by the CPU
    // comparisons) and `out` holds the pass's output.
    unsafe {
        run(
            &pass.geom,
            pass.first.as_ptr(),
            pass.count.as_ptr(),
            pass.at.as_ptr(),
            pass.weights.as_ptr(),
            input.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    out
}

/// The Gaussian as the GPU runs it now: the first pass reads the type, the last rounds to it
/// (one pass: both), the others over f64; no passes: widened and rounded.
fn host_gaussian_fused<T: Voxel>(input: &[T], passes: &[AxisPass]) -> Vec<T> {
    match passes {
        [] => {
            let wide: Vec<f64> = input
                .iter()
                .map(|v| v.to_f64().unwrap_or(f64::NAN))
                .collect();
            let mut out = vec![T::default(); wide.len()];
            // SAFETY: equal lengths.
            unsafe { T::ROUND(wide.as_ptr(), out.as_mut_ptr(), wide.len() as i64) };
            out
        }
        [only] => host_pass(T::GAUSS_INOUT, only, input),
        [first, middle @ .., last] => {
            let wide = host_passes(host_pass(T::GAUSS_IN, first, input), middle);
            host_pass(T::GAUSS_OUT, last, &wide)
        }
    }
}

/// The difference map by `run`, the upsampling's last pass `last` reading `input`.
fn host_diff_pass<I>(
    run: DiffPassFn<I>,
    g: &ReduceGeom,
    fine: &[f32],
    last: &AxisPass,
    input: &[I],
) -> Vec<f32> {
    let mut out = vec![0f32; g.voxels() as usize];
    assert_eq!(out.len(), last.len());
    // SAFETY: the fine box holds the block, the tables index inside `input`, `out` holds one
    // value per voxel of the block.
    unsafe {
        run(
            g,
            fine.as_ptr(),
            &last.geom,
            last.first.as_ptr(),
            last.count.as_ptr(),
            last.at.as_ptr(),
            last.weights.as_ptr(),
            input.as_ptr(),
            out.as_mut_ptr(),
            g.voxels(),
        )
    };
    out
}

/// Passes of `gauss_axis` over an f64 box, one after the other.
fn host_passes(mut cur: Vec<f64>, passes: &[AxisPass]) -> Vec<f64> {
    for pass in passes {
        cur = host_pass(tessera_host_gauss_axis, pass, &cur);
    }
    cur
}

/// A random box of `level` around `core` (absolute ranges), with up to 2 voxels more per side.
fn around(rng: &mut StdRng, core: &[Range<u64>], level: &[u64]) -> Vec<Range<u64>> {
    core.iter()
        .zip(level)
        .map(|(r, &n)| {
            let lo = r.start - rng.random_range(0..=r.start.min(2));
            lo..r.end + rng.random_range(0..=(n - r.end).min(2))
        })
        .collect()
}

fn extents(b: &[Range<u64>]) -> Vec<u64> {
    b.iter().map(|r| r.end - r.start).collect()
}

fn random_f32(rng: &mut StdRng, b: &[Range<u64>]) -> ArrayD<f32> {
    let shape: Vec<usize> = b.iter().map(|r| (r.end - r.start) as usize).collect();
    ArrayD::from_shape_simple_fn(IxDyn(&shape), || f32::random(rng))
}

/// The Laplacian's difference map of a random fine block, as the GPU computes it (upsampling
/// passes, then `laplacian_diff`) and as kernel.rs and `build_laplacian` do, bit for bit.
fn check_laplacian_diff(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let case = random_case(&mut rng, Method::Gaussian);
    let (fine_level, factor) = (&case.level, &case.factor);
    let coarse_level = kernel::next_shape(fine_level, factor);
    // The block whose difference map is made, the coarse box its upsampling reads, and the
    // fine box it sits in.
    let block = random_box_of(&mut rng, fine_level);
    let needed: Vec<Range<u64>> = (0..block.len())
        .map(|a| kernel::upsample_range(factor[a], coarse_level[a], &block[a]))
        .collect();
    let coarse_box = around(&mut rng, &needed, &coarse_level);
    let fine_box = around(&mut rng, &block, fine_level);
    let coarse = random_f32(&mut rng, &coarse_box);
    let fine = random_f32(&mut rng, &fine_box);
    let coarse_start: Vec<u64> = coarse_box.iter().map(|r| r.start).collect();
    let fine_start: Vec<u64> = fine_box.iter().map(|r| r.start).collect();
    // The CPU: kernel::upsample, then build_laplacian's difference.
    let up = kernel::upsample(&coarse.view(), &coarse_start, &coarse_level, factor, &block);
    let mut cut = fine.view();
    for (a, r) in block.iter().enumerate() {
        let lo = (r.start - fine_start[a]) as usize;
        cut.slice_axis_inplace(
            ndarray::Axis(a),
            ndarray::Slice::from(lo..lo + (r.end - r.start) as usize),
        );
    }
    let mut want = cut.to_owned();
    ndarray::Zip::from(&mut want)
        .and(&up)
        .for_each(|d, &u| *d = kernel::round_to::<f32>(f64::from(*d) - u));
    // The GPU's way.
    let passes = upsample_passes(
        &coarse_start,
        &extents(&coarse_box),
        &coarse_level,
        factor,
        &block,
    );
    let up = host_passes(coarse.iter().map(|&v| f64::from(v)).collect(), &passes);
    let g = diff_geom(&fine_start, &extents(&fine_box), fine_level, &block).expect("4 axes");
    let mut got = vec![0f32; g.voxels() as usize];
    assert_eq!(up.len(), got.len());
    let fine = fine.as_standard_layout();
    // SAFETY: the fine box holds the block, `up` and `got` one value per voxel of it.
    unsafe {
        tessera_host_laplacian_diff(
            &g,
            fine.as_slice().expect("C order").as_ptr(),
            up.as_ptr(),
            got.as_mut_ptr(),
            g.voxels(),
        )
    };
    assert_same_bits("laplacian difference", &got, &want, seed);
    // The fused way: the last upsampling pass inside the difference, a lone pass reading the
    // coarse f32 level itself.
    let fine = fine.as_slice().expect("C order");
    let coarse = coarse.as_standard_layout();
    let coarse = coarse.as_slice().expect("C order");
    let fused = match passes.as_slice() {
        [only] => host_diff_pass(tessera_host_laplacian_diff_pass_f32, &g, fine, only, coarse),
        [first, middle @ .., last] => {
            let wide = host_passes(host_pass(f32::GAUSS_IN, first, coarse), middle);
            host_diff_pass(tessera_host_laplacian_diff_pass_f64, &g, fine, last, &wide)
        }
        [] => got,
    };
    assert_same_bits("laplacian difference (fused)", &fused, &want, seed);
}

#[test]
fn laplacian_upsampling_and_differences_equal_the_cpu_bit_for_bit() {
    for seed in 0..400 {
        check_laplacian_diff(seed);
    }
}

#[test]
fn laplacian_difference_hand_checked() {
    // Fine level 1 x 4, factor 2, coarse 1 x 2 = [0, 4]: upsampled at x = 0..4 (u = x/2 - 1/4)
    // 0, 1, 3, 4; fine [1, 1, 1, -0.0] minus that: 1, 0, -2, -4.
    let passes = upsample_passes(&[0, 0], &[1, 2], &[1, 2], &[1, 2], &[0..1, 0..4]);
    let up = host_passes(vec![0.0, 4.0], &passes);
    assert_eq!(up, vec![0.0, 1.0, 3.0, 4.0]);
    let g = diff_geom(&[0, 0], &[1, 4], &[1, 4], &[0..1, 0..4]).unwrap();
    let fine = [1.0f32, 1.0, 1.0, -0.0];
    let mut out = [0f32; 4];
    // SAFETY: one value per voxel.
    unsafe { tessera_host_laplacian_diff(&g, fine.as_ptr(), up.as_ptr(), out.as_mut_ptr(), 4) };
    assert_eq!(out, [1.0, 0.0, -2.0, -4.0]);
}

#[test]
fn mean_mode_and_gaussian_levels_equal_the_cpu_kernels_bit_for_bit() {
    macro_rules! check_each {
        ($($t:ident)*) => {
            $(check_type::<$t>(150);)*
        };
    }
    voxel_types!(check_each);
}

#[test]
fn mean_and_mode_hand_checked() {
    // A 1 x 5 level, factor 2: blocks {1, 2}, {2, 2}, {9}; means 1.5, 2, 9; modes 1, 2, 9.
    let level = [1u64, 5];
    let input = [1.0f32, 2.0, 2.0, 2.0, 9.0];
    let g = ReduceGeom::new(&[0, 0], &level, &level, &[1, 2], &[0..1, 0..3]).unwrap();
    let mut out = [0f32; 3];
    // SAFETY: the box is the whole level.
    unsafe { tessera_host_mean_f32(&g, input.as_ptr(), out.as_mut_ptr(), 3) };
    assert_eq!(out, [1.5, 2.0, 9.0]);
    unsafe { tessera_host_mode_f32(&g, input.as_ptr(), out.as_mut_ptr(), 3) };
    assert_eq!(out, [1.0, 2.0, 9.0]);
    // u8 means round halves away from zero: (1 + 2) / 2 = 1.5 -> 2.
    let input = [1u8, 2, 2, 2, 9];
    let mut out = [0u8; 3];
    unsafe { tessera_host_mean_u8(&g, input.as_ptr(), out.as_mut_ptr(), 3) };
    assert_eq!(out, [2, 2, 9]);
}

#[test]
fn the_rust_twin_has_the_c_layout() {
    let mut rust =
        layout!(ReduceGeom; ndim, factor, out_start, out_shape, in_start, in_shape, level_shape);
    rust.extend(layout!(AxisGeom; outer, inner, in_len, out_len));
    // SAFETY: writes 13 values.
    unsafe {
        assert_c_layout(
            "ReduceGeom, AxisGeom",
            tessera_host_reduce_geom_layout,
            &rust,
        )
    };
}
