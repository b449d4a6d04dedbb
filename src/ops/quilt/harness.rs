//! Host checks of the quilt kernels' per-thread bodies (stitch.cuh, unstitch.cuh), run over a
//! whole launch grid by harness.cpp (build.rs compiles it for the host): fed the inputs the GPU
//! path would get, compared bit for bit with the CPU kernels (kernel.rs), so CI checks the
//! kernels' arithmetic and indexing without a GPU.

use std::ops::Range;
use std::os::raw::c_int;

use ndarray::{ArrayD, Axis, IxDyn};
use num_traits::AsPrimitive;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::device::{band_start_table, cut_shape, stitch_shape, CutGeom, RowShape, StitchGeom};
use super::kernel::{self, Blend, PatchRef, SplitAccumulator, Weighting};
use super::OutElement;
use crate::gpu::harness_support::{assert_c_layout, assert_same_bits, bits, layout};
use crate::grid::windows::WindowGrid;

/// A host stitch: the whole block, returning the left-out NaN values.
type StitchFn<P, O> = unsafe extern "C" fn(
    *const StitchGeom,
    *const i64,
    *const i64,
    *const f64,
    *const P,
    *const P,
    *mut O,
    *mut O,
    *mut O,
    c_int,
    i64,
    i64,
    i64,
) -> u64;

/// A host gather of a run of patches out of a box, by every thread of a launch of
/// (lanes, rows per block, blocks).
type CutFn<T> = unsafe extern "C" fn(*const CutGeom, *const i64, *const T, *mut T, i64, i64, i64);

/// The host stitch `tessera_host_stitch_<P>_<O>` for each (patch type, output type) pair, and
/// the host gather `tessera_host_cut_<T>` for each element type (harness.cpp's instantiations).
macro_rules! host_kernels {
    (stitch $($p:ident => $o:ident)*; cut $($t:ident)*) => { paste::paste! {
        extern "C" {
            $(
                fn [<tessera_host_stitch_ $p _ $o>](g: *const StitchGeom, ranges: *const i64,
                    starts: *const i64, weights: *const f64, patches: *const $p,
                    variances: *const $p, mean: *mut $o, wsum: *mut $o, std: *mut $o,
                    with_wsum: c_int, lanes: i64, rows: i64, blocks: i64) -> u64;
            )*
            $(
                fn [<tessera_host_cut_ $t>](g: *const CutGeom, starts: *const i64, bx: *const $t,
                    out: *mut $t, lanes: i64, rows: i64, blocks: i64);
            )*
        }
    } };
}

host_kernels!(stitch f32 => f32 f64 => f32 f64 => f64; cut u8 u16 u32 u64);

extern "C" {
    fn tessera_host_stitch_geom_layout(out: *mut i64);
    fn tessera_host_cut_geom_layout(out: *mut i64);
}

#[test]
fn the_rust_twins_have_the_c_layouts() {
    let stitch = layout!(StitchGeom; channels, window, block, counts, first, offsets,
        with_variance, band_axis, band_rows, band_origin, band_starts);
    let cut = layout!(CutGeom; channels, window, r#box, patches);
    // SAFETY: each function writes as many values as its `layout!` has.
    unsafe {
        assert_c_layout("StitchGeom", tessera_host_stitch_geom_layout, &stitch);
        assert_c_layout("CutGeom", tessera_host_cut_geom_layout, &cut);
    }
    assert_eq!(stitch[0], 19 * 8, "nineteen i64 fields");
}

/// The launch tables the GPU path builds (`device::stitch_launch`) are the ones these tests
/// check the kernel with (`stitch_unit`), entry for entry where the kernel reads.
#[test]
fn the_production_launch_tables_are_the_checked_ones() {
    let mut rng = StdRng::seed_from_u64(77);
    for _ in 0..300 {
        let case = random_stitch_case(&mut rng);
        let grid = &WindowGrid {
            image: case.image.clone(),
            window: case.window.clone(),
            step: case.step.clone(),
        };
        let (r0, r1) = (case.rows.start, case.rows.end);
        let (var, c) = (case.with_variance, case.channels);
        let bands = case.band_rows;
        let launch = crate::ops::quilt::device::stitch_launch(grid, c as u64, r0..r1, var, bands);
        let unit = stitch_unit(grid, r0..r1, c, var, [0; 3], bands);
        assert_eq!(launch.geom, unit.geom, "{grid:?} rows {r0}..{r1}");
        assert_eq!(launch.patches, unit.first..unit.first + unit.patches);
        for a in 0..3 {
            let o = launch.geom.offsets[a] as usize;
            let positions = launch.geom.block[a] as usize;
            let windows = launch.geom.counts[a] as usize;
            assert_eq!(
                &launch.ranges[2 * o..2 * (o + positions)],
                &unit.ranges[2 * o..2 * (o + positions)]
            );
            assert_eq!(&launch.starts[o..o + windows], &unit.starts[o..o + windows]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stitch

/// Patch element types the stitch kernels take (f32, f64), made from f64 values.
trait PatchValue: OutElement + Into<f64> {}

impl<T: OutElement + Into<f64>> PatchValue for T {}

/// The kernel's inputs for one CPU stitch unit: one image, rows `rows` of its first spatial
/// axis (the whole of the others), every window overlapping those rows, as stitch.cuh
/// documents them. A 2-D grid is a 3-D one with a leading axis of length 1.
#[derive(Debug)]
struct StitchUnit {
    geom: StitchGeom,
    ranges: Vec<i64>,
    starts: Vec<i64>,
    /// Spatial origin and shape of the block (the grid's axes).
    origin: Vec<u64>,
    block: Vec<u64>,
    /// Grid index of the first patch, and how many patches.
    first: u64,
    patches: u64,
}

/// Builds a unit's geometry, summed in bands of `band_rows`; `pad[a]` unused entries are left
/// after axis a's part of `ranges` and `starts`, so the kernel must honour `offsets`.
fn stitch_unit(
    grid: &WindowGrid,
    rows: Range<u64>,
    channels: usize,
    with_variance: bool,
    pad: [usize; 3],
    band_rows: u64,
) -> StitchUnit {
    let nd = grid.ndim();
    let lead = 3 - nd;
    let counts = grid.counts();
    let mut origin = vec![0u64; nd];
    origin[0] = rows.start;
    let mut block = grid.image.clone();
    block[0] = rows.end - rows.start;
    let mut geom = StitchGeom {
        channels: channels as i64,
        with_variance: i64::from(with_variance),
        band_axis: lead as i64,
        band_rows: band_rows as i64,
        band_origin: rows.start as i64,
        ..StitchGeom::default()
    };
    let (mut ranges, mut starts) = (Vec::new(), Vec::new());
    for (a3, &pad) in pad.iter().enumerate() {
        geom.offsets[a3] = starts.len() as i64;
        // (windows covering each block position, each window's start relative to the block)
        let (part_ranges, part_starts): (Vec<(i64, i64)>, Vec<i64>) = if a3 < lead {
            geom.window[a3] = 1;
            geom.block[a3] = 1;
            geom.counts[a3] = 1;
            (vec![(0, 1)], vec![0])
        } else {
            let a = a3 - lead;
            geom.window[a3] = grid.window[a] as i64;
            geom.block[a3] = block[a] as i64;
            geom.counts[a3] = counts[a] as i64;
            let o = origin[a];
            let r = (0..block[a])
                .map(|i| {
                    let w = grid.overlapping(a, o + i..o + i + 1);
                    (w.start as i64, w.end as i64)
                })
                .collect();
            let s = grid
                .starts(a)
                .iter()
                .map(|&s| s as i64 - o as i64)
                .collect();
            (r, s)
        };
        // Both parts begin at offsets[a] (ranges in pairs), so each takes the longer length.
        let len = part_ranges.len().max(part_starts.len()) + pad;
        for (lo, hi) in &part_ranges {
            ranges.extend([*lo, *hi]);
        }
        let mut s = part_starts;
        // Padding that would change results if read: empty ranges (-1, -1), starts 0.
        s.resize(len, 0);
        starts.extend(s);
        ranges.resize(2 * starts.len(), -1);
    }
    geom.band_starts = starts.len() as i64;
    starts.extend(band_start_table(rows.clone(), band_rows));
    let windows = grid.overlapping(0, rows);
    let per_row = grid.per_image() / counts[0];
    let first = windows.start * per_row;
    geom.first = first as i64;
    StitchUnit {
        geom,
        ranges,
        starts,
        origin,
        block,
        first,
        patches: (windows.end - windows.start) * per_row,
    }
}

/// What one stitch comparison exercised, for the coverage checks.
#[derive(Debug, Default)]
struct StitchStats {
    cases: u64,
    pixels: u64,
    left_out: u64,
    uncovered: u64,
    snapped: u64,
    with_std: u64,
    grouped: u64,
    /// Units with rows past their image's first band (two bands' sums meet there).
    banded: u64,
}

/// One random stitch problem.
#[derive(Clone, Debug)]
struct StitchCase {
    image: Vec<u64>,
    window: Vec<u64>,
    step: Vec<u64>,
    allow_gaps: bool,
    rows: Range<u64>,
    channels: usize,
    weighting: Weighting,
    with_variance: bool,
    with_wsum: bool,
    /// Probability of a NaN at each patch value and at each variance.
    nan_rate: f64,
    /// Parts of the CPU's SplitAccumulator.
    parts: usize,
    /// Rows per band (`kernel::Bands`, from a random chunk height).
    band_rows: u64,
    pad: [usize; 3],
    /// Patch values are uniform in [-scale, scale].
    scale: f64,
}

fn random_stitch_case(rng: &mut StdRng) -> StitchCase {
    let nd = if rng.random_bool(0.5) { 2 } else { 3 };
    let max_extent = if nd == 2 { 20 } else { 9 };
    let image: Vec<u64> = (0..nd).map(|_| rng.random_range(1..=max_extent)).collect();
    let window: Vec<u64> = image.iter().map(|&d| rng.random_range(1..=d)).collect();
    let allow_gaps = rng.random_bool(0.1);
    let step: Vec<u64> = window
        .iter()
        .map(|&w| {
            if allow_gaps {
                rng.random_range(1..=w + 2)
            } else {
                rng.random_range(1..=w)
            }
        })
        .collect();
    let d0 = image[0];
    let len = rng.random_range(1..=d0);
    let rows = match rng.random_range(0..4) {
        0 => 0..len,
        1 => d0 - len..d0,
        2 => {
            let s = rng.random_range(0..=d0 - len);
            s..s + len
        }
        _ => 0..d0,
    };
    let blend = [Blend::Border, Blend::Gaussian, Blend::Hann][rng.random_range(0..3)];
    let border = window
        .iter()
        .map(|&w| {
            // check_border's rule: 0, or less than half the window.
            let most = w.div_ceil(2) - 1;
            if most == 0 || rng.random_bool(0.3) {
                0
            } else {
                rng.random_range(1..=most)
            }
        })
        .collect();
    let border_weight = if rng.random_bool(0.2) {
        0.0
    } else {
        rng.random::<f64>()
    };
    StitchCase {
        band_rows: kernel::Bands::new(rng.random_range(1..=d0), window[0], d0).rows,
        image,
        window,
        step,
        allow_gaps,
        rows,
        channels: [1, 2, 3, 5][rng.random_range(0..4)],
        weighting: Weighting {
            blend,
            border,
            border_weight,
            sigma: rng.random_range(0.05..0.6),
        },
        with_variance: rng.random_bool(0.5),
        with_wsum: rng.random_bool(0.8),
        nan_rate: [0.0, 0.01, 0.05, 0.3][rng.random_range(0..4)],
        parts: rng.random_range(1..=3),
        pad: [
            rng.random_range(0..3),
            rng.random_range(0..3),
            rng.random_range(0..3),
        ],
        scale: 10f64.powi(rng.random_range(-3..4)),
    }
}

/// Results of one stitch, flat: mean (C, block), weights (block), std (C, block).
#[derive(Clone)]
struct StitchOut<O> {
    mean: Vec<O>,
    wsum: Vec<O>,
    std: Vec<O>,
    left_out: u64,
}

impl<O: OutElement> StitchOut<O> {
    /// Every output bit for bit, and the count.
    fn same_bits(&self, other: &Self) -> bool {
        let all_bits = |v: &[O]| v.iter().map(|&x| bits(x)).collect::<Vec<u64>>();
        all_bits(&self.mean) == all_bits(&other.mean)
            && all_bits(&self.wsum) == all_bits(&other.wsum)
            && all_bits(&self.std) == all_bits(&other.std)
            && self.left_out == other.left_out
    }
}

/// Runs the host kernel on a unit, every output pre-filled with a sentinel.
#[allow(clippy::too_many_arguments)]
fn host_stitch<P: PatchValue, O: OutElement>(
    host: StitchFn<P, O>,
    unit: &StitchUnit,
    weights: &[f64],
    patches: &[P],
    variances: Option<&[P]>,
    with_wsum: bool,
    sentinel: O,
) -> StitchOut<O> {
    let g = &unit.geom;
    let bsize = (g.block[0] * g.block[1] * g.block[2]) as usize;
    let c = g.channels as usize;
    let wsize = (g.window[0] * g.window[1] * g.window[2]) as usize;
    assert_eq!(weights.len(), wsize);
    assert_eq!(patches.len(), unit.patches as usize * c * wsize);
    assert_eq!(variances.is_some(), g.with_variance != 0);
    let out = StitchOut {
        mean: vec![sentinel; c * bsize],
        wsum: vec![sentinel; bsize],
        std: vec![sentinel; if variances.is_some() { c * bsize } else { 0 }],
        left_out: 0,
    };
    let null = |v: &mut Vec<O>| {
        if v.is_empty() {
            std::ptr::null_mut()
        } else {
            v.as_mut_ptr()
        }
    };
    // The launch's own thread shape, then a narrow one whose threads step through the rows
    // (the digits' carries) and along them: the same outputs.
    let shapes = [
        stitch_shape(g),
        RowShape {
            lanes: 3,
            rows: 2,
            blocks: 2,
        },
    ];
    let mut first: Option<StitchOut<O>> = None;
    for shape in shapes {
        let mut o = out.clone();
        let std_ptr = null(&mut o.std);
        // SAFETY: the buffers have the sizes stitch.cuh documents for this geometry, ranges and
        // starts were built for it (stitch_unit), and std is null only without variances.
        o.left_out = unsafe {
            host(
                g,
                unit.ranges.as_ptr(),
                unit.starts.as_ptr(),
                weights.as_ptr(),
                patches.as_ptr(),
                variances.map_or(std::ptr::null(), |v| v.as_ptr()),
                o.mean.as_mut_ptr(),
                o.wsum.as_mut_ptr(),
                std_ptr,
                c_int::from(with_wsum),
                i64::from(shape.lanes),
                i64::from(shape.rows),
                i64::from(shape.blocks),
            )
        };
        match &first {
            None => first = Some(o),
            Some(f) => assert!(f.same_bits(&o), "thread shape {shape:?} changed the output"),
        }
    }
    first.expect("two shapes")
}

/// Random patches (M, C, *window) with NaN sprinkled at `nan_rate`, and variances (>= 0).
fn random_patches<P: PatchValue>(
    rng: &mut StdRng,
    shape: &[usize],
    nan_rate: f64,
    scale: f64,
) -> (ArrayD<P>, ArrayD<P>) {
    let mut value = |variance: bool| {
        if nan_rate > 0.0 && rng.random_bool(nan_rate) {
            return P::from_f64(f64::NAN);
        }
        let u: f64 = rng.random();
        P::from_f64(if variance {
            u * scale * scale
        } else {
            (2.0 * u - 1.0) * scale
        })
    };
    let p = ArrayD::from_shape_simple_fn(IxDyn(shape), || value(false));
    let v = ArrayD::from_shape_simple_fn(IxDyn(shape), || value(true));
    (p, v)
}

/// The CPU's outputs for a unit, in the output type.
struct CpuStitch<O> {
    mean: ArrayD<O>,
    wsum: ArrayD<O>,
    std: Option<ArrayD<O>>,
}

/// The CPU's banded stitch of a unit's rows (kernel.rs' rule) with the kernel's own pieces:
/// per band g meeting the rows, a split accumulator of band g's windows plus, added row by
/// row, the sums of band g - 1's windows; only the windows covering the unit are given, which
/// are all that reach its pixels.
fn cpu_banded<P: PatchValue, O: OutElement>(
    case: &StitchCase,
    grid: &WindowGrid,
    unit: &StitchUnit,
    refs: &[PatchRef<'_, P>],
    w: &ArrayD<f64>,
) -> CpuStitch<O> {
    let bands = kernel::Bands {
        rows: case.band_rows,
        extent: grid.image[0],
        window: grid.window[0],
    };
    let starts = grid.starts(0);
    let per_row = grid.per_image() / grid.counts()[0];
    let band_refs = |g: u64| -> Vec<PatchRef<'_, P>> {
        let rows = bands.windows(&starts, g);
        (0..refs.len())
            .filter(|&j| rows.contains(&((unit.first + j as u64) / per_row)))
            .map(|j| refs[j].clone())
            .collect()
    };
    let c = case.channels;
    let block: Vec<usize> = unit.block.iter().map(|&n| n as usize).collect();
    let mut full = vec![c];
    full.extend(&block);
    let mut out = CpuStitch {
        mean: ArrayD::<O>::default(IxDyn(&full)),
        wsum: ArrayD::<O>::default(IxDyn(&block)),
        std: case
            .with_variance
            .then(|| ArrayD::<O>::default(IxDyn(&full))),
    };
    let rows = unit.origin[0]..unit.origin[0] + unit.block[0];
    for g in bands.of_row(rows.start)..=bands.of_row(rows.end - 1) {
        let band = bands.rows_of(g);
        let r = band.start.max(rows.start)..band.end.min(rows.end);
        let mut origin = unit.origin.clone();
        origin[0] = r.start;
        let mut shape = unit.block.clone();
        shape[0] = r.end - r.start;
        let mut acc = SplitAccumulator::new(c, &origin, &shape, case.with_variance, case.parts);
        acc.add_all(&band_refs(g), w);
        if g > 0 {
            let mut prev = SplitAccumulator::new(c, &origin, &shape, case.with_variance, 1);
            prev.add_all(&band_refs(g - 1), w);
            acc.add_rows(&prev.copy_rows(r.clone()));
        }
        let at =
            ndarray::Slice::from((r.start - rows.start) as usize..(r.end - rows.start) as usize);
        acc.mean_rows_into(r.clone(), out.mean.slice_axis_mut(Axis(1), at), O::from_f64);
        acc.weights_rows_into(r.clone(), out.wsum.slice_axis_mut(Axis(0), at), O::from_f64);
        if let Some(std) = out.std.as_mut() {
            acc.std_rows_into(r, std.slice_axis_mut(Axis(1), at), O::from_f64);
        }
    }
    out
}

/// Compares the host stitch of one random case with the CPU's banded stitch, bit for bit.
fn check_stitch<P: PatchValue, O: OutElement>(
    rng: &mut StdRng,
    case: &StitchCase,
    host: StitchFn<P, O>,
    stats: &mut StitchStats,
) {
    let grid = WindowGrid::new(&case.image, &case.window, &case.step, case.allow_gaps)
        .expect("valid geometry");
    let unit = stitch_unit(
        &grid,
        case.rows.clone(),
        case.channels,
        case.with_variance,
        case.pad,
        case.band_rows,
    );
    let w = kernel::weights(&grid.window, &case.weighting);
    let wflat: Vec<f64> = w.iter().copied().collect();
    let mut shape = vec![unit.patches as usize, case.channels];
    shape.extend(grid.window.iter().map(|&n| n as usize));
    let (patches, variances) = random_patches::<P>(rng, &shape, case.nan_rate, case.scale);
    let pflat: Vec<P> = patches.iter().copied().collect();
    let vflat: Vec<P> = variances.iter().copied().collect();
    let sentinel = O::from_f64(-123_456.5);
    let got = host_stitch(
        host,
        &unit,
        &wflat,
        &pflat,
        case.with_variance.then_some(&vflat[..]),
        case.with_wsum,
        sentinel,
    );

    // The CPU stitch unit: the same patches, in grid order, by the banded rule; the NaN count
    // (an integer, order-free) and coverage from all of them in one accumulator.
    let refs: Vec<PatchRef<'_, P>> = (0..unit.patches as usize)
        .map(|j| {
            (
                patches.index_axis(Axis(0), j),
                case.with_variance.then(|| variances.index_axis(Axis(0), j)),
                grid.window_start(unit.first + j as u64),
            )
        })
        .collect();
    let mut acc = SplitAccumulator::new(
        case.channels,
        &unit.origin,
        &unit.block,
        case.with_variance,
        case.parts,
    );
    acc.add_all(&refs, &w);
    let cpu = cpu_banded::<P, O>(case, &grid, &unit, &refs, &w);
    let all_bits = |v: &[O]| v.iter().map(|&x| bits(x)).collect::<Vec<_>>();
    let cpu_bits = |a: &ArrayD<O>| a.iter().map(|&x| bits(x)).collect::<Vec<_>>();
    let ctx: &dyn std::fmt::Debug = &(case, &unit.geom);
    assert_same_bits("mean", &all_bits(&got.mean), &cpu_bits(&cpu.mean), ctx);
    let weights = acc.weights();
    if case.with_wsum {
        assert_same_bits("weights", &all_bits(&got.wsum), &cpu_bits(&cpu.wsum), ctx);
    } else {
        assert!(
            got.wsum.iter().all(|x| bits(*x) == bits(sentinel)),
            "weights written without with_wsum; {ctx:?}"
        );
    }
    match &cpu.std {
        Some(std) => assert_same_bits("std", &all_bits(&got.std), &cpu_bits(std), ctx),
        None => assert!(got.std.is_empty()),
    }
    assert_eq!(got.left_out, acc.nan_pixels(), "left-out count; {ctx:?}");

    stats.cases += 1;
    stats.pixels += weights.len() as u64;
    stats.left_out += got.left_out;
    stats.uncovered += weights.iter().filter(|&&x| x == 0.0).count() as u64;
    let snapped = (0..grid.ndim()).any(|a| {
        let s = grid.starts(a);
        s.len() > 1 && s[s.len() - 1] != (s.len() as u64 - 1) * grid.step[a]
    });
    stats.snapped += u64::from(snapped);
    stats.with_std += u64::from(case.with_variance);
    stats.grouped += u64::from(case.channels > 4 && unit.patches > 0);
    stats.banded += u64::from(case.rows.end > case.band_rows);
}

#[test]
fn stitch_matches_the_cpu_accumulator_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0x5717C4);
    let mut stats = StitchStats::default();
    for _ in 0..160 {
        let case = random_stitch_case(&mut rng);
        check_stitch::<f32, f32>(&mut rng, &case, tessera_host_stitch_f32_f32, &mut stats);
        check_stitch::<f64, f32>(&mut rng, &case, tessera_host_stitch_f64_f32, &mut stats);
        check_stitch::<f64, f64>(&mut rng, &case, tessera_host_stitch_f64_f64, &mut stats);
    }
    // The random cases reached every path: NaN left out, pixels no valid patch covers (mean
    // NaN), snapped last windows, the std, and a second channel group.
    assert_eq!(stats.cases, 480);
    assert!(stats.left_out > 1000, "{stats:?}");
    assert!(stats.uncovered > 50, "{stats:?}");
    assert!(stats.snapped > 50, "{stats:?}");
    assert!(stats.with_std > 100, "{stats:?}");
    assert!(stats.grouped > 50, "{stats:?}");
    assert!(stats.banded > 100, "{stats:?}");
}

/// Larger 3-D and 2-D units of five channels with a std, NaN in patches and variances, in the
/// top, middle and bottom of the image: the cases the GPU path meets most.
#[test]
fn stitch_of_slabs_matches_for_five_channels_with_std() {
    let mut rng = StdRng::seed_from_u64(0x51AB5);
    let mut stats = StitchStats::default();
    let geometries: [(&[u64], &[u64], &[u64]); 3] = [
        (&[11, 13, 17], &[4, 5, 6], &[3, 4, 4]),
        (&[37, 29], &[8, 7], &[5, 3]),
        (&[7, 9, 8], &[7, 3, 3], &[2, 2, 2]),
    ];
    for (image, window, step) in geometries {
        let d0 = image[0];
        for rows in [0..3, d0 / 2 - 1..d0 / 2 + 2, d0 - 4..d0, 0..d0] {
            for blend in [Blend::Border, Blend::Gaussian, Blend::Hann] {
                let case = StitchCase {
                    image: image.to_vec(),
                    window: window.to_vec(),
                    step: step.to_vec(),
                    allow_gaps: false,
                    rows: rows.clone(),
                    channels: 5,
                    weighting: Weighting {
                        blend,
                        border: vec![1; image.len()],
                        border_weight: 0.25,
                        sigma: 0.2,
                    },
                    with_variance: true,
                    with_wsum: true,
                    nan_rate: 0.02,
                    parts: 2,
                    // Output chunks of 2 rows: bands of the window rounded up to even.
                    band_rows: kernel::Bands::new(2, window[0], image[0]).rows,
                    pad: [1, 0, 2],
                    scale: 3.0,
                };
                check_stitch::<f32, f32>(&mut rng, &case, tessera_host_stitch_f32_f32, &mut stats);
                check_stitch::<f64, f32>(&mut rng, &case, tessera_host_stitch_f64_f32, &mut stats);
                check_stitch::<f64, f64>(&mut rng, &case, tessera_host_stitch_f64_f64, &mut stats);
            }
        }
    }
    assert_eq!(stats.cases, 3 * 4 * 3 * 3);
    assert!(stats.left_out > 0 && stats.grouped == stats.cases);
}

/// A 1-channel 4x4 image as the CPU kernel's numbers say it, worked out by hand. Long on
/// purpose: each case's hand-worked table is written out beside its assertion.
#[test]
fn stitch_hand_checked() {
    let flat = |a: &[[f64; 4]]| a.iter().flatten().copied().collect::<Vec<f64>>();
    let uniform = Weighting {
        blend: Blend::Border,
        border: vec![0, 0],
        border_weight: 0.5,
        sigma: 0.125,
    };
    let w = kernel::weights(&[2, 2], &uniform);
    assert!(w.iter().all(|&x| x == 1.0));
    let wflat: Vec<f64> = w.iter().copied().collect();
    // The f64 stitch with the weights, writing the weight sums, -1 where nothing lands.
    let stitch_f64 = |unit: &StitchUnit, patches: &[f64], variances: Option<&[f64]>| {
        host_stitch(
            tessera_host_stitch_f64_f64,
            unit,
            &wflat,
            patches,
            variances,
            true,
            -1.0,
        )
    };

    // Step 2: four windows that tile the image; window k = 2 ky + kx holds 10 k + 2 i + j
    // at its pixel (i, j), so each pixel is its one patch's value with weight 1.
    let grid = WindowGrid::new(&[4, 4], &[2, 2], &[2, 2], false).unwrap();
    let unit = stitch_unit(&grid, 0..4, 1, false, [0; 3], 2);
    let patches: Vec<f64> = (0..4)
        .flat_map(|k| (0..4).map(move |p| f64::from(10 * k + p)))
        .collect();
    let got = stitch_f64(&unit, &patches, None);
    let expect = flat(&[
        [0.0, 1.0, 10.0, 11.0],
        [2.0, 3.0, 12.0, 13.0],
        [20.0, 21.0, 30.0, 31.0],
        [22.0, 23.0, 32.0, 33.0],
    ]);
    assert_eq!(got.mean, expect);
    assert_eq!(got.wsum, vec![1.0; 16]);
    assert_eq!(got.left_out, 0);

    // Step 1: nine windows at (ky, kx) in {0, 1, 2}^2; window k = 3 ky + kx is the constant
    // k with variance 1. Along an axis the windows over pixels 0..4 are {0}, {0, 1}, {1, 2},
    // {2}: means a = (0, 0.5, 1.5, 2) and variances v = (0, 0.25, 0.25, 0), so pixel (y, x)
    // has mean 3 a(y) + a(x), weight n(y) n(x) with n = (1, 2, 2, 1), and std^2 (the mixture
    // variance) 1 + 9 v(y) + v(x).
    let grid = WindowGrid::new(&[4, 4], &[2, 2], &[1, 1], false).unwrap();
    let unit = stitch_unit(&grid, 0..4, 1, true, [0; 3], 2);
    // The documented layout: z first (one block position, one window), then y and x, each part
    // max(block, windows) = 4 long.
    assert_eq!(unit.geom.offsets, [0, 1, 5]);
    assert_eq!(unit.geom.counts, [1, 3, 3]);
    assert_eq!(unit.geom.block, [1, 4, 4]);
    assert_eq!(unit.geom.window, [1, 2, 2]);
    assert_eq!((unit.geom.first, unit.patches), (0, 9));
    let yx = [0, 1, 0, 2, 1, 3, 2, 3];
    assert_eq!(unit.ranges[..2], [0, 1]);
    assert_eq!(unit.ranges[2..10], yx);
    assert_eq!(unit.ranges[10..18], yx);
    assert_eq!(unit.starts[..4], [0, 0, 1, 2]);
    assert_eq!(unit.starts[5..8], [0, 1, 2]);
    let patches: Vec<f64> = (0..9)
        .flat_map(|k| std::iter::repeat_n(f64::from(k), 4))
        .collect();
    let variances = vec![1.0; 36];
    let got = stitch_f64(&unit, &patches, Some(&variances));
    let mean = flat(&[
        [0.0, 0.5, 1.5, 2.0],
        [1.5, 2.0, 3.0, 3.5],
        [4.5, 5.0, 6.0, 6.5],
        [6.0, 6.5, 7.5, 8.0],
    ]);
    let wsum = flat(&[
        [1.0, 2.0, 2.0, 1.0],
        [2.0, 4.0, 4.0, 2.0],
        [2.0, 4.0, 4.0, 2.0],
        [1.0, 2.0, 2.0, 1.0],
    ]);
    let std2 = flat(&[
        [1.0, 1.25, 1.25, 1.0],
        [3.25, 3.5, 3.5, 3.25],
        [3.25, 3.5, 3.5, 3.25],
        [1.0, 1.25, 1.25, 1.0],
    ]);
    // Every intermediate is a small multiple of 1/4, so the f64 sums are exact and std is the
    // correctly rounded square root.
    let std: Vec<f64> = std2.iter().map(|x| x.sqrt()).collect();
    assert_eq!(got.mean, mean);
    assert_eq!(got.wsum, wsum);
    assert_eq!(got.std, std);
    assert_eq!(got.left_out, 0);

    // The CPU kernel says the same.
    let mut acc = kernel::Accumulator::new(1, &[0, 0], &[4, 4], true);
    for k in 0..9u64 {
        let p = ArrayD::from_elem(IxDyn(&[1, 2, 2]), k as f64);
        let v = ArrayD::from_elem(IxDyn(&[1, 2, 2]), 1.0);
        acc.add(&p.view(), Some(&v.view()), &grid.window_start(k), &w);
    }
    assert_eq!(acc.mean().iter().copied().collect::<Vec<_>>(), mean);
    assert_eq!(acc.weights.iter().copied().collect::<Vec<_>>(), wsum);
    assert_eq!(acc.std().unwrap().iter().copied().collect::<Vec<_>>(), std);

    // A NaN at pixel (0, 0) of the centre window (k = 4, image pixel (1, 1)) leaves that
    // pixel with windows 0, 1, 3: mean 4/3, weight 3, second moment (1 + 2 + 10) / 3, one
    // value left out; no other pixel changes.
    let mut with_nan = patches.clone();
    with_nan[4 * 4] = f64::NAN;
    let got = stitch_f64(&unit, &with_nan, Some(&variances));
    let mut mean_nan = mean.clone();
    mean_nan[5] = 4.0 / 3.0;
    let mut wsum_nan = wsum.clone();
    wsum_nan[5] = 3.0;
    let mut std_nan = std.clone();
    std_nan[5] = (13.0f64 / 3.0 - (4.0 / 3.0) * (4.0 / 3.0)).sqrt();
    assert!((std_nan[5] - 23f64.sqrt() / 3.0).abs() < 1e-15);
    assert_eq!(got.mean, mean_nan);
    assert_eq!(got.wsum, wsum_nan);
    assert_eq!(got.std, std_nan);
    assert_eq!(got.left_out, 1);

    // The middle rows 1..3 as a unit of their own: windows start at -1, 0, 1 relative to
    // it, all nine overlap it, and the numbers are rows 1 and 2 of the whole.
    let unit = stitch_unit(&grid, 1..3, 1, true, [0; 3], 2);
    assert_eq!(unit.ranges[2..6], [0, 2, 1, 3]);
    assert_eq!(unit.starts[1..4], [-1, 0, 1]);
    assert_eq!((unit.geom.first, unit.patches), (0, 9));
    let got = stitch_f64(&unit, &patches, Some(&variances));
    assert_eq!(got.mean, mean[4..12]);
    assert_eq!(got.wsum, wsum[4..12]);
    assert_eq!(got.std, std[4..12]);

    // The bottom row alone: only window row 2 overlaps it (first = 2 x 3 windows per row).
    let unit = stitch_unit(&grid, 3..4, 1, false, [0; 3], 2);
    assert_eq!((unit.geom.first, unit.patches), (6, 3));
    let got = stitch_f64(&unit, &patches[6 * 4..], None);
    assert_eq!(got.mean, mean[12..]);
    assert_eq!(got.wsum, wsum[12..]);
}

// ---------------------------------------------------------------------------------------------
// unstitch

/// Runs a host gather of the windows at `starts` (3 per patch) out of `bx` into `out` with the
/// launch `shape`.
fn host_cut<T>(
    host: CutFn<T>,
    geom: &CutGeom,
    starts: &[i64],
    bx: &[T],
    out: &mut [T],
    shape: RowShape,
) {
    let windows = (geom.patches * geom.channels * geom.window.iter().product::<i64>()) as usize;
    assert_eq!(starts.len(), 3 * geom.patches as usize);
    assert_eq!(
        bx.len(),
        (geom.channels * geom.r#box.iter().product::<i64>()) as usize
    );
    assert_eq!(out.len(), windows);
    // SAFETY: out holds patches x channels x window elements, starts 3 per patch, the box
    // its elements (checked above); the callers' windows lie inside the box.
    unsafe {
        host(
            geom,
            starts.as_ptr(),
            bx.as_ptr(),
            out.as_mut_ptr(),
            i64::from(shape.lanes),
            i64::from(shape.rows),
            i64::from(shape.blocks),
        )
    };
}

/// Compares one random gather with kernel::cut_window per patch; returns the elements checked.
fn check_cut<T>(rng: &mut StdRng, host: CutFn<T>) -> usize
where
    T: Copy + PartialEq + std::fmt::Debug + 'static,
    u64: AsPrimitive<T>,
{
    let nd = if rng.random_bool(0.5) { 2 } else { 3 };
    let channels = rng.random_range(1..=4usize);
    let bx: Vec<u64> = (0..nd).map(|_| rng.random_range(1..=12)).collect();
    let window: Vec<u64> = bx.iter().map(|&d| rng.random_range(1..=d)).collect();
    let m = rng.random_range(1..=6usize);
    let starts: Vec<Vec<u64>> = (0..m)
        .map(|_| {
            bx.iter()
                .zip(&window)
                .map(|(&d, &w)| rng.random_range(0..=d - w))
                .collect()
        })
        .collect();
    let mut shape = vec![channels];
    shape.extend(bx.iter().map(|&n| n as usize));
    let image = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.random::<u64>().as_());
    let lift = |v: &[u64], fill: u64| {
        let mut out = [fill as i64; 3];
        for (o, &x) in out[3 - v.len()..].iter_mut().zip(v) {
            *o = x as i64;
        }
        out
    };
    let geom = CutGeom {
        channels: channels as i64,
        window: lift(&window, 1),
        r#box: lift(&bx, 1),
        patches: m as i64,
    };
    let flat_starts: Vec<i64> = starts.iter().flat_map(|s| lift(s, 0)).collect();
    let boxflat: Vec<T> = image.iter().copied().collect();
    let wsize: u64 = window.iter().product();
    let sentinel: T = 0xA5A5_A5A5_A5A5_A5A5u64.as_();
    let expect: Vec<T> = starts
        .iter()
        .flat_map(|s| {
            let p = kernel::cut_window(&image.view(), s, &window);
            p.iter().copied().collect::<Vec<T>>()
        })
        .collect();
    // The launch's own shape, and a random narrower one whose threads step through the rows
    // (the digits' carries) and along them.
    let own = cut_shape(&geom);
    let narrow = RowShape {
        lanes: rng.random_range(1..=4),
        rows: rng.random_range(1..=3),
        blocks: rng.random_range(1..=3),
    };
    for shape in [own, narrow] {
        let mut out = vec![sentinel; m * channels * wsize as usize];
        host_cut(host, &geom, &flat_starts, &boxflat, &mut out, shape);
        assert_eq!(out, expect, "{geom:?} starts {starts:?} {shape:?}");
    }
    expect.len()
}

#[test]
fn unstitch_gather_matches_cut_window() {
    let mut rng = StdRng::seed_from_u64(0xC07);
    let mut elements = 0;
    for _ in 0..100 {
        elements += check_cut::<u8>(&mut rng, tessera_host_cut_u8);
        elements += check_cut::<u16>(&mut rng, tessera_host_cut_u16);
        elements += check_cut::<u32>(&mut rng, tessera_host_cut_u32);
        elements += check_cut::<u64>(&mut rng, tessera_host_cut_u64);
    }
    assert!(elements > 10_000);
}

#[test]
fn unstitch_gather_hand_checked() {
    // kernel.rs's cut_window_hand_checked, through the gather: a (2, 5, 6) box holding
    // 100 c + 10 y + x, the 3 x 2 window at (1, 2), then a second one at (2, 4).
    let image: Vec<u16> = (0..2)
        .flat_map(|c| (0..5).flat_map(move |y| (0..6).map(move |x| 100 * c + 10 * y + x)))
        .collect();
    let geom = CutGeom {
        channels: 2,
        window: [1, 3, 2],
        r#box: [1, 5, 6],
        patches: 2,
    };
    let starts = [0i64, 1, 2, 0, 2, 4];
    let mut out = vec![0u16; 2 * 2 * 6];
    host_cut(
        tessera_host_cut_u16,
        &geom,
        &starts,
        &image,
        &mut out,
        cut_shape(&geom),
    );
    #[rustfmt::skip]
    let expect = [
        12, 13, 22, 23, 32, 33, 112, 113, 122, 123, 132, 133,
        24, 25, 34, 35, 44, 45, 124, 125, 134, 135, 144, 145,
    ];
    assert_eq!(out, expect);
}
