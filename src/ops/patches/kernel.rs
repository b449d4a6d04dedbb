//! The CT patch notebook's arithmetic, as pure functions: where patches start, how one is
//! cut out of a float32 slice, and its statistics.
//!
//! The one idea: origins are `r * stride` for `r in 0..=(extent - patch) / stride` on each
//! axis, row-major, and nothing is padded, so a window that would cross the far edge is
//! dropped (362x362 at 128/64 gives 4x4 patches and leaves 42 pixels uncovered). quilt moves
//! its last window flush with the edge instead; this is not that rule.

use ndarray::ArrayView2;

/// Patch origins along one axis of `extent` pixels: `r * stride` for every `r` whose window
/// fits; none when the axis is shorter than a patch. `patch` and `stride` are positive.
pub fn origins(extent: u64, patch: u64, stride: u64) -> Vec<u64> {
    if extent < patch {
        return Vec::new();
    }
    (0..=(extent - patch) / stride)
        .map(|r| r * stride)
        .collect()
}

/// Every patch's top-left (row, col) in a `height` x `width` slice, row-major.
pub fn coordinates(height: u64, width: u64, patch: u64, stride: u64) -> Vec<(u64, u64)> {
    let cols = origins(width, patch, stride);
    origins(height, patch, stride)
        .into_iter()
        .flat_map(|r| cols.iter().map(move |&c| (r, c)))
        .collect()
}

/// How many patches a `height` x `width` slice gives.
pub fn patch_count(height: u64, width: u64, patch: u64, stride: u64) -> u64 {
    origins(height, patch, stride).len() as u64 * origins(width, patch, stride).len() as u64
}

/// `{split}_{slice:06}_{row:03}_{col:03}`: the notebook's patch id (and file stem). Numbers
/// wider than the minimum width are written in full.
pub fn patch_id(split: &str, slice: u64, row: u64, col: u64) -> String {
    format!("{split}_{slice:06}_{row:03}_{col:03}")
}

/// Statistics of one float32 patch, as the manifest records them: min and max of the
/// float32 values, mean and standard deviation (ddof 0) summed in f64 (see [`lane_sum`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchStats {
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
}

/// How many partial sums the statistics keep: value `k` of a patch (row-major) goes to lane
/// `k % SUM_LANES`. Independent lanes let the sums run in vector registers, about eight
/// times the speed of one running sum; the order is fixed, so the bits do not depend on the
/// machine, the threads or the ranks.
pub const SUM_LANES: usize = 8;

/// The f64 sum of `f(v)` over `values` by the one fixed order of the manifest's statistics:
/// lane `l` sums values `l, l + 8, l + 16, ...` one after another, and the lanes are added as
/// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
#[inline(always)]
pub fn lane_sum(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; SUM_LANES];
    let mut chunks = values.chunks_exact(SUM_LANES);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(f64::from(v));
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(f64::from(v));
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// An f32's place in IEEE 754 total order, as an i32 (`-0.0` just below `0.0`): finite values
/// compare as numbers, and the integer minimum and maximum vectorise where float ones with a
/// fixed answer for `-0.0` against `0.0` do not.
fn order_key(v: f32) -> i32 {
    let bits = v.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// [`order_key`] undone.
fn from_order_key(key: i32) -> f32 {
    f32::from_bits((key ^ (((key >> 31) as u32) >> 1) as i32) as u32)
}

/// The first pass of a patch's statistics, lane by lane (value `k` into lane `k % 8`): the
/// extremes as [`order_key`]s, so that they follow IEEE total order (`-0.0` below `0.0`) and
/// vectorise, and the sum.
#[derive(Clone, Copy)]
struct FirstPass {
    lo: [i32; SUM_LANES],
    hi: [i32; SUM_LANES],
    sum: [f64; SUM_LANES],
}

impl FirstPass {
    const EMPTY: FirstPass = FirstPass {
        lo: [i32::MAX; SUM_LANES],
        hi: [i32::MIN; SUM_LANES],
        sum: [0.0; SUM_LANES],
    };

    /// The next 8 values, one per lane.
    #[inline(always)]
    fn add8(&mut self, values: &[f32; SUM_LANES]) {
        for (l, &v) in values.iter().enumerate() {
            self.add_one(l, v);
        }
    }

    /// Value `v` into lane `l`.
    #[inline(always)]
    fn add_one(&mut self, l: usize, v: f32) {
        let key = order_key(v);
        self.lo[l] = self.lo[l].min(key);
        self.hi[l] = self.hi[l].max(key);
        self.sum[l] += f64::from(v);
    }

    /// Whole groups of 8 from a run that starts on lane 0, then what is left to the first
    /// lanes.
    #[inline(always)]
    fn add(&mut self, values: &[f32]) {
        let mut groups = values.chunks_exact(SUM_LANES);
        for group in &mut groups {
            self.add8(group.try_into().expect("chunks of SUM_LANES"));
        }
        for (l, &v) in groups.remainder().iter().enumerate() {
            self.add_one(l, v);
        }
    }

    /// The statistics of `values`, which this pass has seen: extremes, mean, then the
    /// squared deviations by [`lane_sum`].
    #[inline(always)]
    fn finish(self, values: &[f32]) -> PatchStats {
        let min = self.lo.into_iter().min().expect("SUM_LANES > 0");
        let max = self.hi.into_iter().max().expect("SUM_LANES > 0");
        let s = self.sum;
        let n = values.len() as f64;
        let mean = (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) / n;
        let squares = lane_sum(values, |v| {
            let d = v - mean;
            d * d
        });
        PatchStats {
            min: from_order_key(min),
            max: from_order_key(max),
            mean,
            std: (squares / n).sqrt(),
        }
    }
}

/// Runs `$body` compiled for AVX2 where the CPU has it (twice the vector width of the x86-64
/// baseline), else as built. The same operations in the same order either way, and no fused
/// multiply-add (Rust never contracts, and FMA is not enabled): the same bits.
macro_rules! widest {
    ($name:ident, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            fn $name<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                unsafe { $name(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// The statistics of one patch's values (row-major, contiguous). Two passes: extremes and
/// sum, then the squared deviations from the mean, each summed by the lanes of [`lane_sum`].
pub fn patch_stats(values: &[f32]) -> PatchStats {
    widest!(stats_avx2, {
        let mut first = FirstPass::EMPTY;
        first.add(values);
        first.finish(values)
    })
}

/// The window at (`row`, `col`) copied out, row-major, into `out` (`patch * patch` values),
/// and its [`patch_stats`]: the first pass runs over each row as it lands (while it is in
/// the nearest cache), the second over `out`.
pub fn cut_window(
    slice: ArrayView2<'_, f32>,
    row: usize,
    col: usize,
    patch: usize,
    out: &mut [f32],
) -> PatchStats {
    widest!(cut_avx2, {
        let mut first = FirstPass::EMPTY;
        // `done` values (a multiple of 8, so lanes stay aligned with the patch) are summed.
        let mut done = 0;
        for i in 0..patch {
            copy_row(slice, row + i, col, &mut out[i * patch..(i + 1) * patch]);
            let ready = (i + 1) * patch / SUM_LANES * SUM_LANES;
            first.add(&out[done..ready]);
            done = ready;
        }
        first.add(&out[done..]);
        first.finish(out)
    })
}

/// Row `row` of `slice` from column `col` on, into `dst`.
#[inline(always)]
fn copy_row(slice: ArrayView2<'_, f32>, row: usize, col: usize, dst: &mut [f32]) {
    let src = slice.row(row);
    match src.as_slice() {
        Some(line) => dst.copy_from_slice(&line[col..col + dst.len()]),
        None => dst
            .iter_mut()
            .zip(src.iter().skip(col))
            .for_each(|(d, &s)| *d = s),
    }
}

/// Whether a patch with `stats` is kept under `--min-std` (kept when its std is at least
/// the threshold; every patch without one).
pub fn keeps(stats: &PatchStats, min_std: Option<f64>) -> bool {
    min_std.is_none_or(|s| stats.std >= s)
}

/// The (row, col) of the first NaN or infinite value of a slice, row-major.
pub fn first_non_finite(slice: ArrayView2<'_, f32>) -> Option<(usize, usize)> {
    // A branch-free scan first (vectorised: every slice is checked, few fail), then the
    // search for the place only when something is there.
    let clean = |values: &[f32]| {
        values.iter().fold(true, |ok, v| {
            ok & (v.to_bits() & 0x7f80_0000 != 0x7f80_0000)
        })
    };
    let all_finite = match slice.as_slice() {
        Some(values) => widest!(scan_avx2, values.chunks(1 << 12).all(clean)),
        None => slice
            .rows()
            .into_iter()
            .all(|row| row.iter().all(|v| v.is_finite())),
    };
    if all_finite {
        return None;
    }
    slice
        .indexed_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|(at, _)| at)
}

/// A kept patch of one slice: its index among the slice's kept patches, its origin and
/// statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeptPatch {
    pub kept_index: u64,
    pub row: u64,
    pub col: u64,
    pub stats: PatchStats,
}

/// Visits the patches a slice keeps, in row-major order: each one's place and statistics,
/// and its values (`patch * patch`, row-major). Returns how many were kept.
pub fn for_each_kept(
    slice: ArrayView2<'_, f32>,
    patch: u64,
    stride: u64,
    min_std: Option<f64>,
    visit: impl FnMut(&KeptPatch, &[f32]),
) -> u64 {
    cut_kept(slice, patch, stride, min_std, 0, &mut [], visit)
}

/// [`for_each_kept`], cutting each kept patch straight into its place: the `k`-th kept
/// patch into `dest[k - skip]` where that exists, into a scratch patch otherwise (its
/// statistics decide whether it is kept). `visit` sees each kept patch's values in place.
pub fn cut_kept(
    slice: ArrayView2<'_, f32>,
    patch: u64,
    stride: u64,
    min_std: Option<f64>,
    skip: u64,
    dest: &mut [&mut [f32]],
    mut visit: impl FnMut(&KeptPatch, &[f32]),
) -> u64 {
    let (h, w) = slice.dim();
    let ps = patch as usize;
    let mut scratch = Vec::new();
    let mut kept = 0u64;
    for (row, col) in coordinates(h as u64, w as u64, patch, stride) {
        let slot = kept
            .checked_sub(skip)
            .and_then(|k| dest.get_mut(usize::try_from(k).ok()?));
        let window: &mut [f32] = match slot {
            Some(slot) => slot,
            None => {
                scratch.resize(ps * ps, 0.0);
                &mut scratch
            }
        };
        let stats = cut_window(slice, row as usize, col as usize, ps, window);
        if keeps(&stats, min_std) {
            let p = KeptPatch {
                kept_index: kept,
                row,
                col,
                stats,
            };
            visit(&p, window);
            kept += 1;
        }
    }
    kept
}

/// The patches a slice keeps, in row-major order, with their statistics, and their values
/// one after another (`patch * patch` each).
pub fn kept_patches(
    slice: ArrayView2<'_, f32>,
    patch: u64,
    stride: u64,
    min_std: Option<f64>,
) -> (Vec<KeptPatch>, Vec<f32>) {
    let (mut kept, mut values) = (Vec::new(), Vec::new());
    for_each_kept(slice, patch, stride, min_std, |p, v| {
        kept.push(*p);
        values.extend_from_slice(v);
    });
    (kept, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn the_notebooks_examples() {
        assert_eq!(coordinates(512, 512, 128, 64).len(), 49);
        assert_eq!(coordinates(480, 512, 128, 64).len(), 42);
        assert_eq!(coordinates(362, 362, 128, 64).len(), 16);
        assert_eq!(
            coordinates(512, 512, 128, 64)[..3],
            [(0, 0), (0, 64), (0, 128)]
        );
        assert_eq!(patch_count(480, 512, 128, 64), 42);
    }

    #[test]
    fn no_padding_and_nothing_for_small_slices() {
        assert_eq!(origins(362, 128, 64), vec![0, 64, 128, 192]);
        assert_eq!(origins(128, 128, 64), vec![0]);
        assert!(origins(127, 128, 64).is_empty());
        assert!(coordinates(100, 512, 128, 64).is_empty());
        // A stride larger than the patch leaves gaps; still no window past the edge.
        assert_eq!(origins(300, 100, 150), vec![0, 150]);
        assert_eq!(origins(249, 100, 150), vec![0]);
    }

    #[test]
    fn ids_have_minimum_widths() {
        assert_eq!(patch_id("train", 123, 64, 192), "train_000123_064_192");
        assert_eq!(patch_id("val", 1234567, 1024, 0), "val_1234567_1024_000");
    }

    #[test]
    fn zeros_give_zero_statistics() {
        let slice = Array2::<f32>::zeros((512, 512));
        let (kept, values) = kept_patches(slice.view(), 128, 64, None);
        assert_eq!(kept.len(), 49);
        assert_eq!(values.len(), 49 * 128 * 128);
        for p in &kept {
            assert_eq!(
                p.stats,
                PatchStats {
                    min: 0.0,
                    max: 0.0,
                    mean: 0.0,
                    std: 0.0
                }
            );
        }
        // Every zero patch has std 0: --min-std drops them all.
        assert!(kept_patches(slice.view(), 128, 64, Some(1e-6)).0.is_empty());
    }

    #[test]
    fn statistics_and_copies_of_a_window() {
        let slice = Array2::from_shape_fn((6, 7), |(y, x)| (y * 7 + x) as f32);
        let values: Vec<f64> = (1..4)
            .flat_map(|y| (2..5).map(move |x| (y * 7 + x) as f64))
            .collect();
        let mut out = vec![0.0; 9];
        copy_window(slice.view(), 1, 2, 3, &mut out);
        assert_eq!(out, values.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let s = patch_stats(&out);
        let mean = values.iter().sum::<f64>() / 9.0;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 9.0;
        assert_eq!((s.min, s.max), (9.0, 25.0));
        assert_eq!(s.mean, mean);
        assert_eq!(s.std, var.sqrt());
    }

    #[test]
    fn sums_run_in_the_documented_lanes() {
        // One running sum loses both ones against 2^53; lane 1 adds them first.
        let big = 2f32.powi(53);
        let mut values = vec![0.0f32; 10];
        (values[0], values[1], values[9]) = (big, 1.0, 1.0);
        assert_eq!(lane_sum(&values, |v| v), 2f64.powi(53) + 2.0);
        let sequential: f64 = values.iter().map(|&v| f64::from(v)).sum();
        assert_eq!(sequential, 2f64.powi(53));
        // A remainder shorter than a lane set goes to the first lanes.
        assert_eq!(lane_sum(&[1.0, 2.0, 3.0], |v| v * v), 14.0);
    }

    #[test]
    fn extremes_follow_total_order() {
        for values in [vec![0.0f32, -0.0], vec![-0.0, 0.0]] {
            let mut long = vec![1.0f32; 17];
            long[3] = values[0];
            long[12] = values[1];
            let s = patch_stats(&long);
            assert_eq!((s.min.to_bits(), s.max), ((-0.0f32).to_bits(), 1.0));
            let s = patch_stats(&values);
            assert_eq!(
                (s.min.to_bits(), s.max.to_bits()),
                ((-0.0f32).to_bits(), 0.0f32.to_bits())
            );
        }
        let s = patch_stats(&[-3.5, 2.0, f32::MAX, -f32::MAX, 1e-45]);
        assert_eq!((s.min, s.max), (-f32::MAX, f32::MAX));
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            -1e-45,
            f32::MAX,
            f32::MIN,
        ] {
            assert_eq!(from_order_key(order_key(v)).to_bits(), v.to_bits());
        }
    }

    /// The window at (`row`, `col`) copied out, row-major, into `out` (`patch * patch` values):
    /// the plain copy that [`cut_window`] is checked against.
    fn copy_window(
        slice: ArrayView2<'_, f32>,
        row: usize,
        col: usize,
        patch: usize,
        out: &mut [f32],
    ) {
        for (i, dst) in out.chunks_exact_mut(patch).enumerate() {
            copy_row(slice, row + i, col, dst);
        }
    }

    /// The statistics by their definition, one value at a time: extremes in total order,
    /// sums by [`lane_sum`].
    fn plain_stats(values: &[f32]) -> PatchStats {
        let min = values.iter().copied().min_by(f32::total_cmp).unwrap();
        let max = values.iter().copied().max_by(f32::total_cmp).unwrap();
        let n = values.len() as f64;
        let mean = lane_sum(values, |v| v) / n;
        let squares = lane_sum(values, |v| (v - mean) * (v - mean));
        PatchStats {
            min,
            max,
            mean,
            std: (squares / n).sqrt(),
        }
    }

    #[test]
    fn cut_and_statistics_in_one_go_equal_their_definition() {
        // Patch sides that are and are not multiples of the 8 lanes (rows then start on other
        // lanes), values of every magnitude and sign, zeros of both signs.
        let mut next = crate::grid::xorshift(0x9e37_79b9_7f4a_7c15);
        let slice = Array2::from_shape_fn((40, 37), |_| {
            let state = next();
            match state % 11 {
                0 => 0.0,
                1 => -0.0,
                k => (state >> 11) as f32 / (1u64 << 53) as f32 * 10f32.powi(k as i32 - 6) - 0.3,
            }
        });
        for ps in [1usize, 3, 5, 8, 13, 16, 24] {
            for (row, col) in [(0, 0), (3, 7), (40 - ps, 37 - ps)] {
                let mut copied = vec![0.0f32; ps * ps];
                copy_window(slice.view(), row, col, ps, &mut copied);
                let mut out = vec![f32::NAN; ps * ps];
                let got = cut_window(slice.view(), row, col, ps, &mut out);
                assert_eq!(out, copied);
                let want = plain_stats(&copied);
                let bits = |s: PatchStats| {
                    (
                        s.min.to_bits(),
                        s.max.to_bits(),
                        s.mean.to_bits(),
                        s.std.to_bits(),
                    )
                };
                assert_eq!(bits(got), bits(want), "{ps} at {row},{col}");
                assert_eq!(bits(patch_stats(&copied)), bits(want));
            }
        }
    }

    #[test]
    fn a_patch_cut_in_place_equals_the_scratch_cut() {
        let slice = Array2::from_shape_fn((9, 11), |(y, x)| ((y * 31 + x * 7) % 13) as f32);
        let (kept, values) = kept_patches(slice.view(), 4, 3, Some(3.0));
        let n = 16;
        // Kept patches 1..3 into slots; the others only visited.
        let mut store = vec![0.0f32; 2 * n];
        let mut slots: Vec<&mut [f32]> = store.chunks_exact_mut(n).collect();
        let mut seen = Vec::new();
        let count = cut_kept(slice.view(), 4, 3, Some(3.0), 1, &mut slots, |p, v| {
            seen.push((*p, v.to_vec()));
        });
        assert_eq!(count, kept.len() as u64);
        assert_eq!(&store[..], &values[n..3 * n]);
        for (k, (p, v)) in seen.iter().enumerate() {
            assert_eq!(*p, kept[k]);
            assert_eq!(&v[..], &values[k * n..(k + 1) * n]);
        }
    }

    #[test]
    fn min_std_keeps_at_or_above_the_threshold() {
        let mut slice = Array2::<f32>::zeros((4, 8));
        slice[[0, 5]] = 4.0; // only the right window varies
        let (kept, values) = kept_patches(slice.view(), 4, 4, Some(0.5));
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].kept_index, kept[0].row, kept[0].col), (0, 0, 4));
        assert_eq!(values[1], 4.0);
        let std = kept[0].stats.std;
        assert_eq!(kept_patches(slice.view(), 4, 4, Some(std)).0.len(), 1);
        assert!(kept_patches(slice.view(), 4, 4, Some(std * (1.0 + 1e-12)))
            .0
            .is_empty());
    }

    #[test]
    fn statistics_at_float32s_extremes_are_finite_and_exact_where_they_can_be() {
        // Two passes in f64: f32::MAX squared (1.2e77) is far inside f64, and subnormals are
        // f64 normals; nothing overflows or flushes to zero.
        let big = [f32::MAX, -f32::MAX, f32::MAX, -f32::MAX];
        let s = patch_stats(&big);
        assert_eq!((s.min, s.max, s.mean), (-f32::MAX, f32::MAX, 0.0));
        assert_eq!(s.std, f64::from(f32::MAX));
        let top = [f32::MAX; 9];
        let s = patch_stats(&top);
        assert_eq!((s.mean, s.std), (f64::from(f32::MAX), 0.0));
        let tiny = f32::from_bits(1);
        let sub = [tiny, 0.0, tiny, 0.0];
        let s = patch_stats(&sub);
        assert_eq!(s.mean, f64::from(tiny) / 2.0);
        assert_eq!(s.std, f64::from(tiny) / 2.0);
        assert!(keeps(&s, Some(1e-46)));
    }

    #[test]
    fn finds_the_first_non_finite_value() {
        let mut slice = Array2::<f32>::zeros((3, 3));
        assert_eq!(first_non_finite(slice.view()), None);
        slice[[2, 0]] = f32::NEG_INFINITY;
        slice[[1, 2]] = f32::NAN;
        assert_eq!(first_non_finite(slice.view()), Some((1, 2)));
    }
}
