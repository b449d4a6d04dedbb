//! Pure kernels of `tessera pairs`: cutting both patches of a pair out of an image box, the
//! second one turned as numpy's `rot90(k)` on the last two axes; the pixels both patches see;
//! per-patch statistics. Views throughout: a turned patch is a strided view that is copied
//! once, into its slot of the output.

use std::ops::Range;

use ndarray::{ArrayViewD, Axis, Slice};
use num_traits::ToPrimitive;

use super::sampler::Pair;

/// `a` turned by `k` quarter turns on its last two axes, as `numpy.rot90(a, k, axes=(-2, -1))`:
/// k=1 flips the last axis then swaps the two, k=2 flips both, k=3 swaps then flips the last.
pub fn rot90_view<'a, T>(a: ArrayViewD<'a, T>, k: u8) -> ArrayViewD<'a, T> {
    let mut v = a;
    let nd = v.ndim();
    let (h, w) = (Axis(nd - 2), Axis(nd - 1));
    match k % 4 {
        1 => {
            v.invert_axis(w);
            v.swap_axes(nd - 2, nd - 1);
        }
        2 => {
            v.invert_axis(h);
            v.invert_axis(w);
        }
        3 => {
            v.swap_axes(nd - 2, nd - 1);
            v.invert_axis(w);
        }
        _ => {}
    }
    v
}

/// The window at `start` (image coordinates, array order) of an image box `(C, spatial..)`
/// whose first pixel sits at `origin`.
pub fn window_view<'a, T>(
    image: &ArrayViewD<'a, T>,
    origin: &[u64],
    start: &[u64],
    window: &[u64],
) -> ArrayViewD<'a, T> {
    let mut v = image.clone();
    for (a, ((&s, &o), &w)) in start.iter().zip(origin).zip(window).enumerate() {
        let from = (s - o) as usize;
        v.slice_axis_inplace(Axis(a + 1), Slice::from(from..from + w as usize));
    }
    v
}

/// Both patches of `pair`, as stored: the first as cut, the second cut and turned.
pub fn pair_views<'a, T>(
    image: &ArrayViewD<'a, T>,
    origin: &[u64],
    pair: &Pair,
    window: &[u64],
) -> (ArrayViewD<'a, T>, ArrayViewD<'a, T>) {
    let first = window_view(image, origin, &pair.first, window);
    let second = window_view(image, origin, &pair.second, window);
    (first, rot90_view(second, pair.rotation))
}

/// The box of image pixels both patches of `pair` cover (array order), `None` when disjoint.
pub fn overlap_box(pair: &Pair, window: &[u64]) -> Option<Vec<Range<u64>>> {
    let ranges: Vec<Range<u64>> = (0..window.len())
        .map(|a| {
            let lo = pair.first[a].max(pair.second[a]);
            let hi = (pair.first[a] + window[a]).min(pair.second[a] + window[a]);
            lo..hi.max(lo)
        })
        .collect();
    ranges.iter().all(|r| !r.is_empty()).then_some(ranges)
}

/// Number of pixels both patches of `pair` see.
pub fn overlap_count(pair: &Pair, window: &[u64]) -> u64 {
    overlap_box(pair, window).map_or(0, |b| b.iter().map(|r| r.end - r.start).product())
}

/// The pixels both patches see, appended to `rows1` and `rows2` as C values per pixel,
/// pixels row-major over the overlap: from the first patch as stored, and from the second as
/// stored with its turn undone (`patch2` is the stored, turned patch).
pub fn overlap_rows<T: Copy>(
    patch1: &ArrayViewD<'_, T>,
    patch2: &ArrayViewD<'_, T>,
    pair: &Pair,
    window: &[u64],
    rows1: &mut Vec<T>,
    rows2: &mut Vec<T>,
) {
    let Some(region) = overlap_box(pair, window) else {
        return;
    };
    let unturned = rot90_view(patch2.clone(), (4 - pair.rotation % 4) % 4);
    push_pixels(patch1, &region, &pair.first, rows1);
    push_pixels(&unturned, &region, &pair.second, rows2);
}

/// Appends the pixels of `region` (image coordinates) of a patch at `corner`, channel values
/// together, pixels in row-major order.
fn push_pixels<T: Copy>(
    patch: &ArrayViewD<'_, T>,
    region: &[Range<u64>],
    corner: &[u64],
    out: &mut Vec<T>,
) {
    let mut v = patch.clone();
    for (a, (r, &c)) in region.iter().zip(corner).enumerate() {
        v.slice_axis_inplace(
            Axis(a + 1),
            Slice::from((r.start - c) as usize..(r.end - c) as usize),
        );
    }
    // (C, spatial..) -> (spatial.., C): logical order is then pixel-major.
    let nd = v.ndim();
    let order: Vec<usize> = (1..nd).chain(std::iter::once(0)).collect();
    out.extend(v.permuted_axes(order).iter().copied());
}

/// Mean and sample standard deviation (divisor n - 1, as torch's `std`; 0 for one value) of
/// every value of a patch, all channels together, in f64.
pub fn patch_stats<T: Copy + ToPrimitive>(patch: &ArrayViewD<'_, T>) -> (f64, f64) {
    let value = |v: T| v.to_f64().unwrap_or(f64::NAN);
    let n = patch.len() as f64;
    let mean = patch.iter().map(|&v| value(v)).sum::<f64>() / n;
    if patch.len() < 2 {
        return (mean, 0.0);
    }
    let squares: f64 = patch
        .iter()
        .map(|&v| {
            let d = value(v) - mean;
            d * d
        })
        .sum();
    (mean, (squares / (n - 1.0)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, Dimension, IxDyn};

    /// numpy.rot90 the straightforward way, one pixel at a time.
    fn rot90_reference(a: &ArrayD<i32>, k: u8) -> ArrayD<i32> {
        let mut out = a.clone();
        for _ in 0..k {
            let s = out.shape().to_vec();
            let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
            let mut shape = s.clone();
            let nd = s.len();
            shape[nd - 2] = w;
            shape[nd - 1] = h;
            let src = out.clone();
            out = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
                let mut from = ix.slice().to_vec();
                let (i, j) = (from[nd - 2], from[nd - 1]);
                // numpy: rot90(m)[i, j] = m[j, W - 1 - i]
                from[nd - 2] = j;
                from[nd - 1] = w - 1 - i;
                src[IxDyn(&from)]
            });
        }
        out
    }

    #[test]
    fn rot90_matches_numpy_on_square_and_oblong_patches() {
        for shape in [[2usize, 3, 3], [1, 4, 6], [3, 5, 2]] {
            let a =
                ArrayD::from_shape_fn(IxDyn(&shape), |i| (i[0] * 100 + i[1] * 10 + i[2]) as i32);
            for k in 0..4u8 {
                let got = rot90_view(a.view(), k).to_owned();
                assert_eq!(got, rot90_reference(&a, k), "shape {shape:?} k {k}");
            }
        }
        // numpy.rot90([[1, 2], [3, 4]]) == [[2, 4], [1, 3]]
        let m = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1, 2, 3, 4]).unwrap();
        assert_eq!(
            rot90_view(m.view(), 1).iter().copied().collect::<Vec<_>>(),
            vec![2, 4, 1, 3]
        );
    }

    #[test]
    fn overlap_rows_hold_the_same_image_pixels_from_both_patches() {
        // Pixel value = its image position, so a row says where it came from.
        let (c, h, w) = (2usize, 30usize, 30usize);
        let image = ArrayD::from_shape_fn(IxDyn(&[c, h, w]), |i| {
            (i[0] * 10_000 + i[1] * 100 + i[2]) as i32
        });
        let window = [8u64, 8];
        for (first, second, k) in [
            ([3u64, 4u64], [6u64, 1u64], 0u8),
            ([10, 10], [5, 14], 1),
            ([0, 0], [7, 7], 3),
            ([20, 2], [14, 9], 2),
            ([0, 0], [9, 0], 1),
        ] {
            let pair = Pair {
                image: 0,
                first: first.to_vec(),
                second: second.to_vec(),
                rotation: k,
            };
            let (p1, p2) = pair_views(&image.view(), &[0, 0], &pair, &window);
            let (mut r1, mut r2) = (Vec::new(), Vec::new());
            overlap_rows(&p1, &p2, &pair, &window, &mut r1, &mut r2);
            // Brute force: every image pixel inside both boxes, row-major.
            let mut expected = Vec::new();
            for y in 0..h as u64 {
                for x in 0..w as u64 {
                    let inside = |s: &[u64; 2]| {
                        (s[0]..s[0] + 8).contains(&y) && (s[1]..s[1] + 8).contains(&x)
                    };
                    if inside(&first) && inside(&second) {
                        for ch in 0..c {
                            expected.push(image[[ch, y as usize, x as usize]]);
                        }
                    }
                }
            }
            assert_eq!(r1, expected, "{pair:?}");
            assert_eq!(r2, expected, "{pair:?}");
            assert_eq!(overlap_count(&pair, &window) as usize * c, expected.len());
        }
    }

    #[test]
    fn statistics_are_mean_and_sample_deviation() {
        let a = ArrayD::from_shape_vec(IxDyn(&[1, 2, 2]), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let (m, s) = patch_stats(&a.view());
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        let one = ArrayD::from_elem(IxDyn(&[1, 1, 1]), 7u8);
        assert_eq!(patch_stats(&one.view()), (7.0, 0.0));
    }
}
