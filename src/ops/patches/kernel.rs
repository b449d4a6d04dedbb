//! The CT patch notebook's arithmetic, as pure functions: where patches start, how one is
//! cut out of a float32 slice, and its statistics.
//!
//! The one idea: origins are `r * stride` for `r in 0..=(extent - patch) / stride` on each
//! axis, row-major, and nothing is padded, so a window that would cross the far edge is
//! dropped (362x362 at 128/64 gives 4x4 patches and leaves 42 pixels uncovered). quilt moves
//! its last window flush with the edge instead; this is not that rule.

use ndarray::{Array2, ArrayView2};

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
/// float32 values, mean and standard deviation (ddof 0) summed in f64 in row-major order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchStats {
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
}

/// The statistics of one patch's values (row-major, contiguous). Two passes: the mean, then
/// the squared deviations from it.
pub fn patch_stats(values: &[f32]) -> PatchStats {
    let (mut min, mut max, mut sum) = (f32::INFINITY, f32::NEG_INFINITY, 0.0f64);
    for &v in values {
        min = min.min(v);
        max = max.max(v);
        sum += f64::from(v);
    }
    let n = values.len() as f64;
    let mean = sum / n;
    let squares: f64 = values
        .iter()
        .map(|&v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum();
    PatchStats {
        min,
        max,
        mean,
        std: (squares / n).sqrt(),
    }
}

/// Whether a patch with `stats` is kept under `--min-std` (kept when its std is at least
/// the threshold; every patch without one).
pub fn keeps(stats: &PatchStats, min_std: Option<f64>) -> bool {
    min_std.is_none_or(|s| stats.std >= s)
}

/// The window at (`row`, `col`) copied out, row-major, into `out` (`patch * patch` values).
pub fn copy_window(
    slice: ArrayView2<'_, f32>,
    row: usize,
    col: usize,
    patch: usize,
    out: &mut [f32],
) {
    for (i, dst) in out.chunks_exact_mut(patch).enumerate() {
        let src = slice.row(row + i);
        match src.as_slice() {
            Some(line) => dst.copy_from_slice(&line[col..col + patch]),
            None => dst
                .iter_mut()
                .zip(src.iter().skip(col))
                .for_each(|(d, &s)| *d = s),
        }
    }
}

/// The (row, col) of the first NaN or infinite value of a slice, row-major.
pub fn first_non_finite(slice: ArrayView2<'_, f32>) -> Option<(usize, usize)> {
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

/// The patches a slice keeps, in row-major order, with their statistics, and their values
/// one after another (`patch * patch` each).
pub fn kept_patches(
    slice: &Array2<f32>,
    patch: u64,
    stride: u64,
    min_std: Option<f64>,
) -> (Vec<KeptPatch>, Vec<f32>) {
    let (h, w) = slice.dim();
    let ps = patch as usize;
    let coords = coordinates(h as u64, w as u64, patch, stride);
    let mut values = vec![0.0f32; coords.len() * ps * ps];
    let mut kept = Vec::with_capacity(coords.len());
    for (row, col) in coords {
        let at = kept.len() * ps * ps;
        let window = &mut values[at..at + ps * ps];
        copy_window(slice.view(), row as usize, col as usize, ps, window);
        let stats = patch_stats(window);
        if keeps(&stats, min_std) {
            kept.push(KeptPatch {
                kept_index: kept.len() as u64,
                row,
                col,
                stats,
            });
        }
    }
    values.truncate(kept.len() * ps * ps);
    (kept, values)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (kept, values) = kept_patches(&slice, 128, 64, None);
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
        assert!(kept_patches(&slice, 128, 64, Some(1e-6)).0.is_empty());
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
    fn min_std_keeps_at_or_above_the_threshold() {
        let mut slice = Array2::<f32>::zeros((4, 8));
        slice[[0, 5]] = 4.0; // only the right window varies
        let (kept, values) = kept_patches(&slice, 4, 4, Some(0.5));
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].kept_index, kept[0].row, kept[0].col), (0, 0, 4));
        assert_eq!(values[1], 4.0);
        let std = kept[0].stats.std;
        assert_eq!(kept_patches(&slice, 4, 4, Some(std)).0.len(), 1);
        assert!(kept_patches(&slice, 4, 4, Some(std * (1.0 + 1e-12)))
            .0
            .is_empty());
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
