//! Quilting arrays held in memory (the Python package's quilt objects): `quilt unstitch` and
//! `quilt stitch` with no files in between. The one idea: the same kernels in the same order.
//! Windows are cut as [`super::UnstitchOp`] cuts them, and patches are summed band by band
//! under kernel.rs' rule, with the bands `quilt stitch` would use for the same image (its
//! default output chunk rows, or the ones given), so every value has the CLI's bits for the
//! same parameters. The whole image is one unit here: memory is the caller's arrays, their
//! outputs and one band's f64 sums.

use std::ops::Range;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use rayon::prelude::*;

use super::kernel::{self, Accumulator, Bands, PatchRef, SplitAccumulator};
use super::params::GeometryArgs;
use super::{OutElement, QuiltGeometry, StitchSizes, ValueLimits};
use crate::error::{Error, Result};
use crate::io::DType;

/// `quilt stitch`'s default `--memory-limit`, whose default output chunk rows fix the bands.
pub const DEFAULT_MEMORY_LIMIT: &str = "2G";

/// Patches cut from images: (M, C, *window) in the images' type, and each patch's
/// `[n, z?, y, x]` as `quilt unstitch` writes them to its positions array.
pub struct Unstitched<T> {
    pub geometry: QuiltGeometry,
    pub patches: ArrayD<T>,
    pub positions: ArrayD<i64>,
}

/// Cuts every window of every image of `images` (N, C, [Z,] Y, X): patches in image-major,
/// then row-major window order (the patch array of `quilt unstitch`).
///
/// # Errors
/// The geometry errors of `quilt unstitch`, naming its flags.
pub fn unstitch<T: Copy + Send + Sync>(
    images: &ArrayViewD<'_, T>,
    args: &GeometryArgs,
) -> Result<Unstitched<T>> {
    let shape: Vec<u64> = images.shape().iter().map(|&d| d as u64).collect();
    let (geometry, grid) = QuiltGeometry::new(&shape, args)?;
    let patch_shape: Vec<usize> = geometry.patch_shape().iter().map(|&d| d as usize).collect();
    let per_image = grid.per_image();
    let ndim = grid.ndim();
    let m = patch_shape[0];
    let mut first = Vec::with_capacity(m);
    let mut rows = Vec::with_capacity(m * (1 + ndim));
    for p in 0..m as u64 {
        let start = grid.window_start(p % per_image);
        rows.push((p / per_image) as i64);
        rows.extend(start.iter().map(|&s| s as i64));
        first.push(start);
    }
    let positions = ArrayD::from_shape_vec(IxDyn(&[m, 1 + ndim]), rows)
        .expect("one row of 1 + ndim values per patch");
    let patches = cut_windows(images, &patch_shape, &first, per_image as usize)?;
    Ok(Unstitched {
        geometry,
        patches,
        positions,
    })
}

/// The windows starting at `first` (patch p of image p / `per_image`) of the C-order
/// `images`, as one (M, C, *window) array: each window row copied whole, the patches filled
/// in parallel, no pass over the output before it is written.
fn cut_windows<T: Copy + Send + Sync>(
    images: &ArrayViewD<'_, T>,
    patch_shape: &[usize],
    first: &[Vec<u64>],
    per_image: usize,
) -> Result<ArrayD<T>> {
    let standard = images.as_standard_layout();
    let src = standard.as_slice().expect("standard layout");
    let shape = images.shape();
    // (channels, [z,] y, x) of an image and of a window; rows are the last axis.
    let (image, window) = (&shape[1..], &patch_shape[1..]);
    let strides = crate::grid::row_major_strides(image);
    let image_len: usize = image.iter().product();
    let patch_len: usize = window.iter().product();
    let row = *window.last().unwrap_or(&1);
    let mut out: Vec<T> = Vec::with_capacity(patch_len * first.len());
    let spare = &mut out.spare_capacity_mut()[..patch_len * first.len()];
    if patch_len > 0 && row > 0 {
        spare
            .par_chunks_mut(patch_len)
            .zip(first.par_iter())
            .enumerate()
            .for_each(|(p, (dst, start))| {
                let base = (p / per_image) * image_len;
                // Rows of the window in C order: an index over every axis but the last.
                for (r, dst_row) in dst.chunks_mut(row).enumerate() {
                    let mut rest = r;
                    let mut at = base;
                    for a in (0..window.len() - 1).rev() {
                        let i = rest % window[a];
                        rest /= window[a];
                        // Axis 0 of a window is the channel: windows span all channels.
                        let s = if a == 0 { 0 } else { start[a - 1] as usize };
                        at += (s + i) * strides[a];
                    }
                    at += start[start.len() - 1] as usize;
                    for (d, &v) in dst_row.iter_mut().zip(&src[at..at + row]) {
                        d.write(v);
                    }
                }
            });
    }
    // SAFETY: every element of the first patch_len * M was written above (each patch's rows
    // cover it exactly), or there are none.
    unsafe { out.set_len(patch_len * first.len()) };
    ArrayD::from_shape_vec(IxDyn(patch_shape), out)
        .map_err(|e| Error::parameter("window", format!("cannot cut these windows: {e}")))
}

/// What a stitch gives back: the weighted mean (N, C, *spatial), the weight sums (N, *spatial),
/// the std when variances were given, in the output type (f64 for f64 patches, else f32),
/// and how many NaN patch values were left out.
pub struct Stitched<O> {
    pub mean: ArrayD<O>,
    pub weights: ArrayD<O>,
    pub std: Option<ArrayD<O>>,
    pub nan_values: u64,
}

/// A patch element the stitch sums: f32 and f64 as they are (other types are converted to
/// f64 first, as `quilt stitch` does); f64 batches are checked against [`ValueLimits`].
pub trait PatchValue: Copy + Into<f64> + Send + Sync {
    const DTYPE: DType;
    /// The values as f64, when they are (only those can overflow the sums).
    fn as_f64<'a>(view: &ArrayViewD<'a, Self>) -> Option<ArrayViewD<'a, f64>>;
}

impl PatchValue for f32 {
    const DTYPE: DType = DType::F32;
    fn as_f64<'a>(_: &ArrayViewD<'a, f32>) -> Option<ArrayViewD<'a, f64>> {
        None
    }
}

impl PatchValue for f64 {
    const DTYPE: DType = DType::F64;
    fn as_f64<'a>(view: &ArrayViewD<'a, f64>) -> Option<ArrayViewD<'a, f64>> {
        Some(view.clone())
    }
}

/// The geometry of `patches` (M, C, *window) cut from images of `images` (N) with `args`:
/// the image shape is N, C, then `spatial`.
///
/// # Errors
/// Bad geometry, or a patch array whose shape is not the geometry's.
pub fn stitch_geometry(
    patch_shape: &[usize],
    images: u64,
    spatial: &[u64],
    args: &GeometryArgs,
) -> Result<QuiltGeometry> {
    let channels = patch_shape.get(1).copied().unwrap_or(0) as u64;
    let mut image_shape = vec![images, channels];
    image_shape.extend(spatial);
    let (geometry, _) = QuiltGeometry::new(&image_shape, args)?;
    let expected = geometry.patch_shape();
    let found: Vec<u64> = patch_shape.iter().map(|&d| d as u64).collect();
    if found != expected {
        return Err(Error::mismatch(
            "patches: shape",
            format!("{expected:?} (from the geometry)"),
            format!("{found:?}"),
        ));
    }
    Ok(geometry)
}

/// The rows of `quilt stitch`'s output chunks for `geometry` when `--chunks` is not given
/// and `--memory-limit` is `memory_limit`: what fixes the summation bands.
///
/// # Errors
/// A memory limit that does not parse.
pub fn default_chunk_rows(
    geometry: &QuiltGeometry,
    dtype: DType,
    with_variance: bool,
    memory_limit: &str,
) -> Result<u64> {
    let out = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let limit =
        crate::units::parse_size(memory_limit).map_err(|m| Error::parameter("memory-limit", m))?;
    Ok(StitchSizes::new(geometry, dtype, out, with_variance).default_chunk_rows(limit))
}

/// Stitches `patches` (M, C, *window, in `quilt unstitch`'s order) back into the images of
/// `geometry`: the weighted mean, weight sums and (with `variances`) the std, summed under
/// the bands of output chunks `chunk_rows` rows high (`quilt stitch --chunks 1,1,R,...`;
/// [`default_chunk_rows`] for its default). Patches of types other than f32 and f64 are
/// given here as f64, as `quilt stitch` converts them.
///
/// # Errors
/// A shape that is not the geometry's, zero chunk rows, float64 values the sums cannot hold.
pub fn stitch<T: PatchValue, O: OutElement + Send>(
    patches: &ArrayViewD<'_, T>,
    variances: Option<&ArrayViewD<'_, T>>,
    geometry: &QuiltGeometry,
    chunk_rows: u64,
) -> Result<Stitched<O>> {
    let expected: Vec<usize> = geometry.patch_shape().iter().map(|&d| d as usize).collect();
    for (what, a) in std::iter::once(("patches", Some(patches))).chain([("variance", variances)]) {
        if let Some(a) = a.filter(|a| a.shape() != expected.as_slice()) {
            return Err(Error::mismatch(
                format!("{what}: shape"),
                format!("{expected:?}"),
                format!("{:?}", a.shape()),
            ));
        }
    }
    if chunk_rows == 0 {
        return Err(Error::parameter("chunks", "chunk rows must be at least 1"));
    }
    let window_weights = kernel::weights(&geometry.window, &geometry.weighting());
    let limits = ValueLimits::new(geometry, &window_weights, variances.is_some());
    if let Some(p) = T::as_f64(patches) {
        limits.check_f64(&p, 0, false)?;
    }
    if let Some(v) = variances.and_then(T::as_f64) {
        limits.check_f64(&v, 0, true)?;
    }
    let image = &geometry.image_shape;
    let spatial = &image[2..];
    let grid = geometry.grid();
    let bands = Bands::new(chunk_rows.min(spatial[0]), geometry.window[0], spatial[0]);
    let starts = grid.starts(0);
    let per_image = grid.per_image();
    let per_row = per_image / grid.counts()[0];
    let image_usize: Vec<usize> = image.iter().map(|&d| d as usize).collect();
    let mut spatial_shape = image_usize.clone();
    spatial_shape.remove(1);
    let mut out = Stitched {
        mean: ArrayD::<O>::default(IxDyn(&image_usize)),
        weights: ArrayD::<O>::default(IxDyn(&spatial_shape)),
        std: variances.map(|_| ArrayD::<O>::default(IxDyn(&image_usize))),
        nan_values: 0,
    };
    let channels = geometry.channels() as usize;
    let mut spare: Option<SplitAccumulator> = None;
    for n in 0..image[0] {
        let mut carry: Option<Accumulator> = None;
        for g in 0..bands.count() {
            let windows = bands.windows(&starts, g);
            let reach = bands.reach(g);
            let mut origin = vec![reach.start];
            origin.extend(std::iter::repeat_n(0, spatial.len() - 1));
            let mut block = vec![reach.end - reach.start];
            block.extend(&spatial[1..]);
            let cuts = SplitAccumulator::balanced_cuts(
                &kernel::coverage(&starts, geometry.window[0], &reach, &windows),
                rayon::current_num_threads(),
            );
            // One accumulator for every band and image of the call, emptied between them:
            // fresh ones cost a page fault per 4 KiB, most of a stitch's time.
            let mut acc = SplitAccumulator::reused_or_new(
                spare.take(),
                channels,
                &origin,
                &block,
                variances.is_some(),
                &cuts,
            );
            let first = n * per_image + windows.start * per_row;
            let refs: Vec<PatchRef<'_, T>> = (first..n * per_image + windows.end * per_row)
                .map(|p| {
                    (
                        patches.index_axis(Axis(0), p as usize),
                        variances.map(|v| v.index_axis(Axis(0), p as usize)),
                        grid.window_start(p % per_image),
                    )
                })
                .collect();
            acc.add_all(&refs, &window_weights);
            out.nan_values += acc.nan_pixels();
            if let Some(c) = &carry {
                acc.add_rows(c);
            }
            let band = bands.rows_of(g);
            carry = Some(acc.copy_rows(band.end..acc.rows().end));
            fill(&mut out, n as usize, &acc, band);
            spare = Some(acc);
        }
    }
    if out.nan_values > 0 {
        tracing::warn!(
            "{} NaN patch values were left out of the weighted means (not spread to neighbours); pixels that only NaN values covered are NaN",
            out.nan_values
        );
    }
    Ok(out)
}

/// Writes rows `band` (absolute) of image `n` from finished sums, as `quilt stitch` does.
fn fill<O: OutElement + Send>(
    out: &mut Stitched<O>,
    n: usize,
    acc: &SplitAccumulator,
    band: Range<u64>,
) {
    let at = Slice::from(band.start as usize..band.end as usize);
    let mut mean = out.mean.index_axis_mut(Axis(0), n);
    mean.slice_axis_inplace(Axis(1), at);
    acc.mean_rows_into(band.clone(), mean, O::from_f64);
    let mut weights = out.weights.index_axis_mut(Axis(0), n);
    weights.slice_axis_inplace(Axis(0), at);
    acc.weights_rows_into(band.clone(), weights, O::from_f64);
    if let Some(std) = out.std.as_mut() {
        let mut std = std.index_axis_mut(Axis(0), n);
        std.slice_axis_inplace(Axis(1), at);
        acc.std_rows_into(band, std, O::from_f64);
    }
}

/// qlty's border tensor for a window (1 inside, 0 in the border band): the array `quilt
/// border-mask` writes, with its checks.
///
/// # Errors
/// A border of half the window or more, a window with a zero size, a mask too large for the
/// memory.
pub fn border_mask(window: &[u64], border: &[u64]) -> Result<ArrayD<u8>> {
    let border = super::mask_border(window, border)?;
    Ok(kernel::border_mask(window, &border))
}

/// The weight of every pixel of a window (what each patch is multiplied by when stitching),
/// for `geometry`'s window and weighting.
pub fn window_weights(geometry: &QuiltGeometry) -> ArrayD<f64> {
    kernel::weights(&geometry.window, &geometry.weighting())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array;

    fn args(window: u64, step: u64, border: u64) -> GeometryArgs {
        GeometryArgs {
            window: vec![window],
            step: vec![step],
            border: vec![border],
            ..GeometryArgs::default()
        }
    }

    #[test]
    fn unstitch_then_stitch_gives_the_image_back() {
        let image = Array::from_shape_fn(IxDyn(&[2, 3, 37, 29]), |i| {
            (i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) as f32 / 10.0
        });
        let cut = unstitch(&image.view(), &args(8, 5, 2)).unwrap();
        assert_eq!(cut.patches.shape()[1..], [3, 8, 8]);
        let (n, ys, xs) = (2, 7, 6);
        assert_eq!(cut.patches.shape()[0], n * ys * xs);
        // The last window is flush with the far edge.
        let last = cut
            .positions
            .index_axis(Axis(0), ys * xs - 1)
            .iter()
            .copied()
            .collect::<Vec<_>>();
        assert_eq!(last, vec![0, 29, 21]);
        for rows in [1, 8, 11, 64] {
            let back: Stitched<f32> =
                stitch(&cut.patches.view(), None, &cut.geometry, rows).unwrap();
            for (a, b) in back.mean.iter().zip(image.iter()) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
            }
            assert!(back.weights.iter().all(|&w| w > 0.0));
        }
    }

    #[test]
    fn bands_change_only_where_two_bands_meet() {
        // Sums under bands of 8 rows and under one band agree to rounding.
        let image = Array::from_shape_fn(IxDyn(&[1, 1, 40, 16]), |i| {
            ((i[2] * 16 + i[3]) as f64).sin()
        });
        let cut = unstitch(&image.view(), &args(8, 3, 1)).unwrap();
        let a: Stitched<f64> = stitch(&cut.patches.view(), None, &cut.geometry, 8).unwrap();
        let b: Stitched<f64> = stitch(&cut.patches.view(), None, &cut.geometry, 40).unwrap();
        for (x, y) in a.mean.iter().zip(b.mean.iter()) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn wrong_shapes_and_sizes_are_refused_with_their_flag() {
        let image = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 16, 16]));
        let e = unstitch(&image.view(), &args(32, 8, 0)).err().unwrap();
        assert!(e.to_string().starts_with("--window"), "{e}");
        let e = unstitch(&image.view(), &args(8, 0, 0)).err().unwrap();
        assert!(e.to_string().starts_with("--step"), "{e}");
        let flat = ArrayD::<f32>::zeros(IxDyn(&[16, 16]));
        assert!(unstitch(&flat.view(), &args(8, 8, 0)).is_err());
        let cut = unstitch(&image.view(), &args(8, 8, 0)).unwrap();
        let e = stitch::<f32, f32>(&cut.patches.view(), None, &cut.geometry, 0).err();
        assert!(e.unwrap().to_string().starts_with("--chunks"));
        let e = stitch_geometry(&[3, 1, 8, 8], 1, &[16, 16], &args(8, 8, 0)).err();
        assert!(e.unwrap().to_string().contains("shape"));
    }
}
