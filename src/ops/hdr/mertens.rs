//! Mertens exposure fusion (Mertens, Kautz and Van Reeth, 2007), following the
//! behaviour of OpenCV's `MergeMertens`.
//!
//! Several exposures of one scene are blended into a single image by giving
//! every pixel of every exposure a quality weight and mixing the exposures
//! band by band in a multi-resolution (pyramid) fashion, which hides seams.
//!
//! # Quality measures
//! For each exposure and pixel:
//! * **contrast**: absolute response of the 3x3 Laplacian `[0,1,0; 1,-4,1; 0,1,0]`
//!   applied to the grey image (the mean of the three channels, or the single
//!   channel itself for grey input);
//! * **saturation**: population standard deviation of the three channel values
//!   (for grey input it is fixed at 1, so it does not influence anything);
//! * **well-exposedness**: product over the channels of a Gaussian bump centred
//!   on 0.5 with sigma 0.2, i.e. `exp(-(v - 0.5)^2 / 0.08)`.
//!
//! The raw weight is `contrast^wc * saturation^ws * wellexp^we + 1e-12`; the tiny
//! constant keeps the weights positive, so each pixel's weights can always be
//! divided by their sum over the exposures (they then add up to one).
//!
//! # Blending
//! With `levels = floor(log2(min(Y, X))) + 1`, each normalised weight map gets a
//! Gaussian pyramid and each image channel a Laplacian pyramid. Level by level,
//! the products `weight * laplacian` are summed over the exposures, and the
//! resulting pyramid is collapsed (upsample the coarsest level, add the next
//! finer one, and so on). The output is not clamped, so it may stray a little
//! outside `[0, 1]`.
//!
//! Downsampling blurs with the separable 5-tap kernel `[1, 4, 6, 4, 1] / 16` and
//! keeps even rows and columns (giving `ceil(n / 2)` samples). Upsampling an
//! axis of `m` samples to `n` (`n` is `2m` or `2m - 1`) places the samples at
//! even positions and zeros at odd ones on a grid of `2m`, blurs with
//! `[1, 4, 6, 4, 1] / 8`, and keeps the first `n` results. Mirroring over the
//! full `2m` grid before cropping is what OpenCV's `pyrUp` does; it only
//! matters at the far edge of an odd-sized axis. All borders mirror around the
//! edge pixel without repeating it ("reflect-101"); an axis of length one maps
//! onto itself.

use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, Axis, Zip};
use rayon::prelude::*;

/// Parameters of the fusion (OpenCV's defaults: 1, 1, 0).
#[derive(Clone, Copy, Debug)]
pub struct MertensParams {
    /// Exponent of the contrast measure.
    pub contrast_weight: f32,
    /// Exponent of the saturation measure.
    pub saturation_weight: f32,
    /// Exponent of the well-exposedness measure.
    pub exposure_weight: f32,
}

impl Default for MertensParams {
    fn default() -> Self {
        Self {
            contrast_weight: 1.0,
            saturation_weight: 1.0,
            exposure_weight: 0.0,
        }
    }
}

/// The 5-tap binomial kernel shared by pyramid down and up (unnormalised).
const KERNEL: [f32; 5] = [1.0, 4.0, 6.0, 4.0, 1.0];

/// Maps a possibly out-of-range index into `0..n` by reflect-101 mirroring.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m >= n as isize { period - m } else { m }) as usize
}

/// 1-D pyramid-down step: blur with `KERNEL / 16` and keep even samples.
fn down_1d(src: ArrayView1<f32>, mut dst: ArrayViewMut1<f32>) {
    let n = src.len();
    for (i, d) in dst.iter_mut().enumerate() {
        let c = 2 * i as isize;
        let s: f32 = (0..5)
            .map(|t| KERNEL[t] * src[reflect(c + t as isize - 2, n)])
            .sum();
        *d = s / 16.0;
    }
}

/// 1-D pyramid-up step: zero-insert onto a grid of `2 * src.len()`, blur with
/// `KERNEL / 8` (mirroring at that grid's ends) and keep the first `dst.len()`.
fn up_1d(src: ArrayView1<f32>, mut dst: ArrayViewMut1<f32>) {
    let n = 2 * src.len();
    for (x, d) in dst.iter_mut().enumerate() {
        let s: f32 = (0..5)
            .map(|t| {
                let j = reflect(x as isize + t as isize - 2, n);
                if j & 1 == 0 {
                    KERNEL[t] * src[j / 2]
                } else {
                    0.0
                }
            })
            .sum();
        *d = s / 8.0;
    }
}

/// Applies a 1-D resampling step along X (rows) then along Y (columns),
/// producing an `(ny, nx)` plane. Rows and columns are processed in parallel.
fn separable(
    src: ArrayView2<f32>,
    (ny, nx): (usize, usize),
    step: fn(ArrayView1<f32>, ArrayViewMut1<f32>),
) -> Array2<f32> {
    let mut tmp = Array2::zeros((src.nrows(), nx));
    Zip::from(tmp.rows_mut())
        .and(src.rows())
        .par_for_each(|d, s| step(s, d));
    let mut out = Array2::zeros((ny, nx));
    Zip::from(out.columns_mut())
        .and(tmp.columns())
        .par_for_each(|d, s| step(s, d));
    out
}

/// Blurs and halves a plane (each axis becomes `ceil(n / 2)` long).
fn pyr_down(src: ArrayView2<f32>) -> Array2<f32> {
    let (ny, nx) = src.dim();
    separable(src, (ny.div_ceil(2), nx.div_ceil(2)), down_1d)
}

/// Upsamples a plane to `(ny, nx)`, which must halve (rounding up) to its size.
fn pyr_up(src: ArrayView2<f32>, (ny, nx): (usize, usize)) -> Array2<f32> {
    assert_eq!(src.dim(), (ny.div_ceil(2), nx.div_ceil(2)), "pyr_up size");
    separable(src, (ny, nx), up_1d)
}

/// Number of pyramid levels for a `ny x nx` image: `floor(log2(min)) + 1`.
fn num_levels(ny: usize, nx: usize) -> usize {
    (usize::BITS - ny.min(nx).leading_zeros()) as usize
}

/// Gaussian pyramid with `levels` levels, finest first.
fn gaussian_pyramid(img: ArrayView2<f32>, levels: usize) -> Vec<Array2<f32>> {
    let mut pyr = vec![img.to_owned()];
    for _ in 1..levels {
        let next = pyr_down(pyr.last().unwrap().view());
        pyr.push(next);
    }
    pyr
}

/// Laplacian pyramid: `G_k - up(G_{k+1})`, and the coarsest Gaussian level last.
fn laplacian_pyramid(img: ArrayView2<f32>, levels: usize) -> Vec<Array2<f32>> {
    let mut pyr = gaussian_pyramid(img, levels);
    for k in 0..levels - 1 {
        let up = pyr_up(pyr[k + 1].view(), pyr[k].dim());
        pyr[k] -= &up;
    }
    pyr
}

/// Rebuilds a plane from a Laplacian pyramid (coarsest level upsampled and added).
fn collapse(pyr: &[Array2<f32>]) -> Array2<f32> {
    let mut acc = pyr.last().expect("empty pyramid").clone();
    for level in pyr.iter().rev().skip(1) {
        acc = pyr_up(acc.view(), level.dim()) + level;
    }
    acc
}

/// Raw (unnormalised) weight map of one exposure, including the `1e-12` offset.
fn weight_map(img: ArrayView3<f32>, p: MertensParams) -> Array2<f32> {
    let (ny, nx, nc) = img.dim();
    let grey = img.mean_axis(Axis(2)).expect("image has no channels");
    let mut w = Array2::zeros((ny, nx));
    Zip::indexed(&mut w).par_for_each(|(y, x), w| {
        let g = |dy: isize, dx: isize| {
            grey[[reflect(y as isize + dy, ny), reflect(x as isize + dx, nx)]]
        };
        let lap = g(-1, 0) + g(1, 0) + g(0, -1) + g(0, 1) - 4.0 * g(0, 0);
        let px = img.slice(ndarray::s![y, x, ..]);
        let saturation = if nc == 3 {
            let mean = px.sum() / 3.0;
            (px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0).sqrt()
        } else {
            1.0
        };
        let wellexp: f32 = px
            .iter()
            .map(|v| (-(v - 0.5).powi(2) / 0.08).exp())
            .product();
        *w = lap.abs().powf(p.contrast_weight)
            * saturation.powf(p.saturation_weight)
            * wellexp.powf(p.exposure_weight)
            + 1e-12;
    });
    w
}

/// Fuses exposures (each (Y, X, C) f32 in [0, 1], C = 1 or 3, all the same shape,
/// at least one) into one (Y, X, C) f32 image.
///
/// # Panics
/// Panics if `images` is empty, if the shapes differ, if C is not 1 or 3, or if
/// an image has zero rows or columns.
pub fn fuse(images: &[ArrayView3<f32>], p: MertensParams) -> Array3<f32> {
    assert!(!images.is_empty(), "mertens::fuse: no images given");
    let (ny, nx, nc) = images[0].dim();
    assert!(
        nc == 1 || nc == 3,
        "mertens::fuse: need 1 or 3 channels, got {nc}"
    );
    assert!(ny > 0 && nx > 0, "mertens::fuse: empty image ({ny}x{nx})");
    for (i, im) in images.iter().enumerate() {
        assert_eq!(
            im.dim(),
            (ny, nx, nc),
            "mertens::fuse: image {i} differs in shape from image 0"
        );
    }
    let levels = num_levels(ny, nx);

    // Per-exposure weights, normalised to sum to one at each pixel.
    let mut weights: Vec<Array2<f32>> = images
        .par_iter()
        .map(|im| weight_map(im.view(), p))
        .collect();
    let total = weights
        .iter()
        .fold(Array2::zeros((ny, nx)), |acc, w| acc + w);
    weights.par_iter_mut().for_each(|w| *w /= &total);

    // Blended Laplacian pyramid, indexed [channel][level], summed over exposures in their
    // order (rayon's reduce would add them in an order that depends on the thread count, and
    // f32 sums would change with it). Each exposure's pyramid is built by one thread.
    let per_exposure: Vec<Vec<Vec<Array2<f32>>>> = images
        .par_iter()
        .zip(weights.par_iter())
        .map(|(im, w)| {
            let wp = gaussian_pyramid(w.view(), levels);
            (0..nc)
                .map(|c| {
                    let mut lp = laplacian_pyramid(im.index_axis(Axis(2), c), levels);
                    lp.iter_mut().zip(&wp).for_each(|(l, w)| *l *= w);
                    lp
                })
                .collect()
        })
        .collect();
    let blended = per_exposure
        .into_iter()
        .reduce(|mut a, b| {
            for (ca, cb) in a.iter_mut().zip(&b) {
                ca.iter_mut().zip(cb).for_each(|(la, lb)| *la += lb);
            }
            a
        })
        .expect("at least one image");

    let mut out = Array3::zeros((ny, nx, nc));
    for (c, pyr) in blended.iter().enumerate() {
        out.index_axis_mut(Axis(2), c).assign(&collapse(pyr));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array};

    /// Deterministic pseudo-random image in [0, 1] (simple LCG).
    fn random_image(shape: (usize, usize, usize), seed: u64) -> Array3<f32> {
        let mut s = seed;
        Array::from_shape_fn(shape, |_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
    }

    fn max_abs_diff(a: &Array3<f32>, b: &Array3<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn fusion_bits_do_not_depend_on_the_thread_count() {
        let images: Vec<Array3<f32>> = (0..5).map(|k| random_image((37, 29, 3), k)).collect();
        let views: Vec<_> = images.iter().map(|a| a.view()).collect();
        let fused = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let out = pool.install(|| fuse(&views, MertensParams::default()));
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let one = fused(1);
        assert_eq!(fused(2), one);
        assert_eq!(fused(3), one);
    }

    #[test]
    fn pyramid_down_up_of_constant_is_constant() {
        for &(ny, nx) in &[(9, 14), (10, 13), (2, 2), (3, 8), (16, 16)] {
            let c = Array2::from_elem((ny, nx), 0.7f32);
            let down = pyr_down(c.view());
            assert_eq!(down.dim(), (ny.div_ceil(2), nx.div_ceil(2)));
            assert!(
                down.iter().all(|v| (v - 0.7).abs() < 1e-6),
                "down {ny}x{nx}"
            );
            let up = pyr_up(down.view(), (ny, nx));
            assert!(up.iter().all(|v| (v - 0.7).abs() < 1e-6), "up {ny}x{nx}");
        }
    }

    #[test]
    fn pyramid_up_odd_edge_mirrors_on_even_grid() {
        // [a, b] -> grid [a, 0, b, 0]; the last kept sample mirrors onto b itself.
        let src = array![[1.0f32, 3.0]];
        let up = pyr_up(src.view(), (1, 3));
        let want = [
            (6.0 + 2.0 * 3.0) / 8.0,
            (4.0 + 4.0 * 3.0) / 8.0,
            (1.0 + 7.0 * 3.0) / 8.0,
        ];
        for (got, want) in up.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{up:?}");
        }
    }

    #[test]
    fn laplacian_pyramid_collapse_reconstructs() {
        let img = random_image((37, 53, 3), 1);
        let levels = num_levels(37, 53);
        assert_eq!(levels, 6);
        for c in 0..3 {
            let plane = img.index_axis(Axis(2), c);
            let rec = collapse(&laplacian_pyramid(plane, levels));
            let err = rec
                .iter()
                .zip(plane)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "channel {c}: error {err}");
        }
    }

    #[test]
    fn fusing_identical_copies_returns_the_image() {
        for &(shape, seed) in &[((37, 53, 3), 2), ((20, 17, 1), 3)] {
            let img = random_image(shape, seed);
            let views = vec![img.view(); 3];
            let out = fuse(&views, MertensParams::default());
            let err = max_abs_diff(&out, &img);
            assert!(err < 1e-5, "shape {shape:?}: error {err}");
        }
    }

    #[test]
    fn weights_hand_checked_grey_3x3() {
        let img = array![[0.0f32, 0.2, 0.0], [0.4, 0.6, 0.3], [0.0, 0.1, 0.0]];
        let img = img.insert_axis(Axis(2));
        let only = |wc, we| MertensParams {
            contrast_weight: wc,
            saturation_weight: 1.0,
            exposure_weight: we,
        };
        // Centre: Laplacian = 0.2 + 0.1 + 0.4 + 0.3 - 4 * 0.6 = -1.4.
        let contrast = weight_map(img.view(), only(1.0, 0.0));
        assert!((contrast[[1, 1]] - 1.4).abs() < 1e-6);
        // Corner (0, 0) mirrors onto (1, 0) and (0, 1): 2 * 0.4 + 2 * 0.2 - 0 = 1.2.
        assert!((contrast[[0, 0]] - 1.2).abs() < 1e-6);
        // Centre well-exposedness: exp(-(0.6 - 0.5)^2 / 0.08) = exp(-0.125).
        let wellexp = weight_map(img.view(), only(0.0, 1.0));
        assert!((wellexp[[1, 1]] - (-0.125f32).exp()).abs() < 1e-6);
        let both = weight_map(img.view(), only(1.0, 1.0));
        assert!((both[[1, 1]] - 1.4 * (-0.125f32).exp()).abs() < 1e-6);
    }

    #[test]
    fn well_exposed_image_dominates_black_one() {
        // Flat images have zero contrast (and zero saturation for C = 3), so only
        // the well-exposedness term is switched on here.
        let p = MertensParams {
            contrast_weight: 0.0,
            saturation_weight: 0.0,
            exposure_weight: 1.0,
        };
        for nc in [1, 3] {
            let grey = Array3::from_elem((12, 9, nc), 0.5f32);
            let black = Array3::zeros((12, 9, nc));
            let out = fuse(&[grey.view(), black.view()], p);
            assert_eq!(out.dim(), (12, 9, nc));
            assert!(out.iter().all(|&v| (v - 0.5).abs() < v.abs()), "C = {nc}");
        }
    }

    #[test]
    fn odd_and_tiny_sizes_keep_shape() {
        for &(ny, nx) in &[(1, 1), (1, 7), (5, 1), (2, 3), (7, 5), (33, 2)] {
            for nc in [1, 3] {
                let a = random_image((ny, nx, nc), 4);
                let b = random_image((ny, nx, nc), 5);
                let out = fuse(&[a.view(), b.view()], MertensParams::default());
                assert_eq!(out.dim(), (ny, nx, nc));
                assert!(out.iter().all(|v| v.is_finite()));
                let same = fuse(&[a.view(), a.view()], MertensParams::default());
                assert!(max_abs_diff(&same, &a) < 1e-5, "{ny}x{nx}x{nc}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "differs in shape")]
    fn mismatched_shapes_panic() {
        let a = Array3::<f32>::zeros((4, 4, 3));
        let b = Array3::<f32>::zeros((4, 5, 3));
        fuse(&[a.view(), b.view()], MertensParams::default());
    }
}
