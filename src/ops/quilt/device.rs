//! The GPU kernels' view of a quilt unit, prepared on the host: the `#[repr(C)]` twins of
//! `stitch.cuh`'s `StitchGeom` and `unstitch.cuh`'s `CutGeom`, and the index tables the
//! kernels read. No CUDA here (every build has it), so the test harness runs the kernels'
//! bodies on exactly what a GPU launch would get.

use std::ops::Range;

use crate::grid::windows::WindowGrid;

/// Twin of `StitchGeom` in `stitch.cuh` (field for field; every field is 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StitchGeom {
    pub channels: i64,
    pub window: [i64; 3],
    pub block: [i64; 3],
    pub counts: [i64; 3],
    pub first: i64,
    pub offsets: [i64; 3],
    pub with_variance: i64,
    /// The 3-D axis the bands run along (the image's first spatial axis: 0 in 3-D, 1 in 2-D).
    pub band_axis: i64,
    /// Rows per band (`kernel::Bands::rows`).
    pub band_rows: i64,
    /// The block's first row along `band_axis`, in the image.
    pub band_origin: i64,
    /// Where in `starts` the band-start table begins: for each block row along `band_axis`,
    /// the first row of its band, relative to the block origin.
    pub band_starts: i64,
}

/// Twin of `CutGeom` in `unstitch.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutGeom {
    pub channels: i64,
    pub window: [i64; 3],
    pub r#box: [i64; 3],
    pub patches: i64,
}

#[cfg(feature = "cuda")]
// SAFETY: plain #[repr(C)] structs of i64s, passed by value as kernel arguments.
unsafe impl crate::gpu::cuda::DeviceRepr for StitchGeom {}
#[cfg(feature = "cuda")]
// SAFETY: as above.
unsafe impl crate::gpu::cuda::DeviceRepr for CutGeom {}

/// A stitch launch for one block: the geometry, the tables, and which patches it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct StitchLaunch {
    pub geom: StitchGeom,
    /// Per axis and block position, the covering windows `[lo, hi)` along that axis.
    pub ranges: Vec<i64>,
    /// Per axis, every window's start relative to the block origin.
    pub starts: Vec<i64>,
    /// Window indices (row-major within the image) of the patches the block needs: whole
    /// window rows of the first spatial axis, consecutive in the patch array.
    pub patches: Range<u64>,
}

/// Pads spatial values to 3 axes (a 2-D image gets a leading axis of `fill`).
fn three(values: &[u64], fill: u64) -> [u64; 3] {
    let mut out = [fill; 3];
    out[3 - values.len()..].copy_from_slice(values);
    out
}

/// The launch for the block of rows `rows` (of the first spatial axis, all of the others)
/// of one image with `channels` channels, summed in bands of `band_rows` rows.
pub fn stitch_launch(
    grid: &WindowGrid,
    channels: u64,
    rows: Range<u64>,
    with_variance: bool,
    band_rows: u64,
) -> StitchLaunch {
    let nd = grid.ndim();
    let pad = 3 - nd;
    let image = three(&grid.image, 1);
    let window = three(&grid.window, 1);
    let counts = three(&grid.counts(), 1);
    let mut origin = [0u64; 3];
    origin[pad] = rows.start;
    let mut block = image;
    block[pad] = rows.end - rows.start;
    let starts_of = |a: usize| -> Vec<u64> {
        if a < pad {
            vec![0]
        } else {
            grid.starts(a - pad)
        }
    };
    let (mut ranges, mut starts, mut offsets) = (Vec::new(), Vec::new(), [0i64; 3]);
    for a in 0..3 {
        let s = starts_of(a);
        offsets[a] = starts.len() as i64;
        // ranges and starts share the offset: pad ranges to the longer of the two.
        for i in 0..block[a] {
            let p = origin[a] + i;
            let lo = s.partition_point(|&st| st + window[a] <= p);
            let hi = s.partition_point(|&st| st <= p);
            ranges.push(lo as i64);
            ranges.push(hi.max(lo) as i64);
        }
        starts.extend(s.iter().map(|&st| st as i64 - origin[a] as i64));
        // Keep both tables indexed by the same offset per axis.
        let (r_len, s_len) = (ranges.len() / 2, starts.len());
        let len = r_len.max(s_len);
        ranges.resize(2 * len, 0);
        starts.resize(len, 0);
    }
    let band_origin = rows.start as i64;
    let band_starts = starts.len() as i64;
    starts.extend(band_start_table(rows.clone(), band_rows));
    let rows_of_windows = grid.overlapping(0, rows);
    let per_row = grid.per_image() / grid.counts()[0];
    let first = rows_of_windows.start * per_row;
    StitchLaunch {
        geom: StitchGeom {
            channels: channels as i64,
            window: window.map(|v| v as i64),
            block: block.map(|v| v as i64),
            counts: counts.map(|v| v as i64),
            first: first as i64,
            offsets,
            with_variance: i64::from(with_variance),
            band_axis: pad as i64,
            band_rows: band_rows as i64,
            band_origin,
            band_starts,
        },
        ranges,
        starts,
        patches: first..rows_of_windows.end * per_row,
    }
}

/// For each row of `rows` (image rows along the band axis), the first row of its band of
/// `band_rows` rows, relative to `rows.start` (negative when the band began in an earlier block).
pub fn band_start_table(rows: Range<u64>, band_rows: u64) -> impl Iterator<Item = i64> {
    let origin = rows.start as i64;
    rows.map(move |r| (r / band_rows * band_rows) as i64 - origin)
}

/// The thread shape of a stitch launch with geometry `g`: lanes along x, one row per (z, y).
pub fn stitch_shape(g: &StitchGeom) -> RowShape {
    row_shape(g.block[2] as u64, (g.block[0] * g.block[1]) as u64)
}

/// The launch that cuts patches `windows` (indices within one image, consecutive) out of
/// the box of that image starting at spatial `box_start` with spatial shape `box_shape`:
/// the geometry and each patch's start relative to the box (3 per patch).
pub fn cut_launch(
    grid: &WindowGrid,
    channels: u64,
    windows: Range<u64>,
    box_start: &[u64],
    box_shape: &[u64],
) -> (CutGeom, Vec<i64>) {
    let mut starts = Vec::with_capacity(3 * (windows.end - windows.start) as usize);
    let origin = three(box_start, 0);
    for k in windows.clone() {
        let s = three(&grid.window_start(k), 0);
        starts.extend((0..3).map(|a| (s[a] - origin[a]) as i64));
    }
    let geom = CutGeom {
        channels: channels as i64,
        window: three(&grid.window, 1).map(|v| v as i64),
        r#box: three(box_shape, 1).map(|v| v as i64),
        patches: (windows.end - windows.start) as i64,
    };
    (geom, starts)
}

/// The thread shape of a gather (unstitch.cu): `lanes` threads along a window row (x), `rows`
/// rows per block, `blocks` blocks; 256 threads per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowShape {
    pub lanes: u32,
    pub rows: u32,
    pub blocks: u32,
}

/// Most blocks in one launch: enough to fill any current GPU many times over; a larger
/// launch's threads step through the remaining rows.
const MAX_ROW_BLOCKS: u64 = 1 << 16;

/// The thread shape for `rows` rows of `width` values: lanes the row's width rounded up to a
/// power of two (at most 256), so one warp reads consecutive values of one or more rows.
pub fn row_shape(width: u64, rows: u64) -> RowShape {
    let lanes = width.clamp(1, 256).next_power_of_two() as u32;
    let per_block = 256 / lanes;
    let blocks = rows.div_ceil(u64::from(per_block)).clamp(1, MAX_ROW_BLOCKS) as u32;
    RowShape {
        lanes,
        rows: per_block,
        blocks,
    }
}

/// The thread shape of a cut with geometry `g`.
pub fn cut_shape(g: &CutGeom) -> RowShape {
    let rows = g.patches * g.channels * g.window[0] * g.window[1];
    row_shape(g.window[2] as u64, rows as u64)
}

/// A run of patches (indices into the patch array) grouped by image: (image, window indices
/// within it), in order. Unstitch reads one box per group, on the CPU as on the GPU.
pub fn image_segments(grid: &WindowGrid, run: Range<u64>) -> Vec<(u64, Range<u64>)> {
    let per_image = grid.per_image();
    let mut out = Vec::new();
    let mut m = run.start;
    while m < run.end {
        let n = m / per_image;
        let k1 = (run.end - n * per_image).min(per_image);
        out.push((n, m % per_image..k1));
        m = n * per_image + k1;
    }
    out
}

/// The spatial box `[lo, hi)` holding every window of `windows` (indices within an image).
pub fn bounding_box(grid: &WindowGrid, windows: Range<u64>) -> (Vec<u64>, Vec<u64>) {
    let nd = grid.ndim();
    let (mut lo, mut hi) = (vec![u64::MAX; nd], vec![0; nd]);
    for k in windows {
        for (a, s) in grid.window_start(k).into_iter().enumerate() {
            lo[a] = lo[a].min(s);
            hi[a] = hi[a].max(s + grid.window[a]);
        }
    }
    lo.iter_mut()
        .filter(|l| **l == u64::MAX)
        .for_each(|l| *l = 0);
    (lo, hi)
}

/// Device bytes a stitch of `rows` needs: the patches (and variances) as `patch_size`-byte
/// elements, the outputs as `out_size`-byte elements (mean, std with variances, weight sums),
/// and the launch tables (whose size does not depend on the bands).
pub fn stitch_piece_bytes(
    grid: &WindowGrid,
    channels: u64,
    rows: Range<u64>,
    (patch_size, out_size): (u64, u64),
    with_variance: bool,
    with_weights: bool,
) -> u64 {
    let l = stitch_launch(grid, channels, rows, with_variance, 1);
    let block = l.geom.block.iter().product::<i64>() as u64;
    let patch = channels * grid.window.iter().product::<u64>() * patch_size;
    let patches = (l.patches.end - l.patches.start) * patch * (1 + u64::from(with_variance));
    let outputs =
        block * out_size * (channels * (1 + u64::from(with_variance)) + u64::from(with_weights));
    patches + outputs + 8 * (l.ranges.len() + l.starts.len()) as u64
}

/// Splits `rows` into the fewest equal pieces (doubling their number) that each `fit`; `None`
/// when even single rows do not.
pub fn split_rows(rows: Range<u64>, fits: impl Fn(&Range<u64>) -> bool) -> Option<Vec<Range<u64>>> {
    let total = rows.end - rows.start;
    let mut parts = 1;
    loop {
        let pieces: Vec<Range<u64>> = (0..parts)
            .map(|i| rows.start + total * i / parts..rows.start + total * (i + 1) / parts)
            .filter(|r| !r.is_empty())
            .collect();
        if pieces.iter().all(&fits) {
            return Some(pieces);
        }
        if parts >= total {
            return None;
        }
        parts = (parts * 2).min(total);
    }
}

/// Copies a piece's output (`channels` planes of `piece_rows` rows of `row_bytes`) into the
/// unit's (`channels` planes of `unit_rows` rows), at row `skip` of each plane.
pub fn scatter_rows(
    src: &[u8],
    dst: &mut [u8],
    channels: usize,
    (piece_rows, unit_rows, skip): (usize, usize, usize),
    row_bytes: usize,
) {
    let plane = piece_rows * row_bytes;
    for c in 0..channels {
        let at = (c * unit_rows + skip) * row_bytes;
        dst[at..at + plane].copy_from_slice(&src[c * plane..(c + 1) * plane]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_by_image_and_boxes_hold_their_windows() {
        let grid = WindowGrid {
            image: vec![8, 8],
            window: vec![4, 4],
            step: vec![2, 4],
        };
        // 3 x 2 windows per image.
        assert_eq!(
            image_segments(&grid, 4..14),
            vec![(0, 4..6), (1, 0..6), (2, 0..2)]
        );
        assert_eq!(bounding_box(&grid, 1..4), (vec![0, 0], vec![6, 8]));
        assert_eq!(bounding_box(&grid, 5..6), (vec![4, 4], vec![8, 8]));
    }

    #[test]
    fn row_shapes_cover_a_row_with_one_warp_or_more() {
        let s = row_shape(64, 1000);
        assert_eq!((s.lanes, s.rows, s.blocks), (64, 4, 250));
        let s = row_shape(3, 10);
        assert_eq!((s.lanes, s.rows, s.blocks), (4, 64, 1));
        let s = row_shape(1000, 1 << 30);
        assert_eq!((s.lanes, s.rows, s.blocks), (256, 1, 1 << 16));
        assert_eq!(row_shape(0, 0).blocks, 1);
    }

    #[test]
    fn rows_split_into_the_fewest_pieces_that_fit() {
        let whole = split_rows(0..10, |_| true).unwrap();
        assert_eq!((whole.len(), &whole[0]), (1, &(0..10)));
        assert_eq!(
            split_rows(0..10, |r| r.end - r.start <= 3),
            Some(vec![0..2, 2..5, 5..7, 7..10])
        );
        assert_eq!(
            split_rows(4..7, |r| r.end - r.start <= 1),
            Some(vec![4..5, 5..6, 6..7])
        );
        assert_eq!(split_rows(0..5, |_| false), None);
    }

    #[test]
    fn piece_rows_land_in_their_place_in_every_channel() {
        // Unit: 2 channels x 4 rows x 2 bytes; piece: rows 1..3.
        let mut unit = vec![0u8; 16];
        scatter_rows(&[1, 2, 3, 4, 5, 6, 7, 8], &mut unit, 2, (2, 4, 1), 2);
        assert_eq!(unit, vec![0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0]);
    }

    #[test]
    fn a_piece_needs_its_patches_outputs_and_tables() {
        let grid = WindowGrid {
            image: vec![8, 8],
            window: vec![4, 4],
            step: vec![4, 4],
        };
        // Rows 0..4: window row 0 (2 patches of 16 f32), mean 32 f32, tables.
        let b = stitch_piece_bytes(&grid, 1, 0..4, (4, 4), false, false);
        let l = stitch_launch(&grid, 1, 0..4, false, 4);
        assert_eq!(
            b,
            2 * 16 * 4 + 32 * 4 + 8 * (l.ranges.len() + l.starts.len()) as u64
        );
        let with = stitch_piece_bytes(&grid, 1, 0..4, (4, 4), true, true);
        assert_eq!(with - b, 2 * 16 * 4 + 32 * 4 + 32 * 4);
    }

    #[test]
    fn tables_of_a_hand_checked_2d_block() {
        // 1 x 6 x 4 image, 4 x 2 windows, step 2 x 2: window rows start at 0, 2; columns 0, 2.
        let grid = WindowGrid {
            image: vec![6, 4],
            window: vec![4, 2],
            step: vec![2, 2],
        };
        let l = stitch_launch(&grid, 1, 3..5, false, 4);
        assert_eq!(l.geom.block, [1, 2, 4]);
        // 2-D: the bands run along y, the 3-D axis 1; the block starts at row 3.
        assert_eq!(
            (l.geom.band_axis, l.geom.band_rows, l.geom.band_origin),
            (1, 4, 3)
        );
        assert_eq!(l.geom.counts, [1, 2, 2]);
        // Rows 3 and 4 are covered by window rows 0..2 and 1..2; all window rows needed.
        assert_eq!(l.patches, 0..4);
        assert_eq!(l.geom.first, 0);
        let (oz, oy, ox) = (
            l.geom.offsets[0] as usize,
            l.geom.offsets[1] as usize,
            l.geom.offsets[2] as usize,
        );
        assert_eq!(&l.ranges[2 * oz..2 * oz + 2], &[0, 1]);
        assert_eq!(&l.ranges[2 * oy..2 * oy + 4], &[0, 2, 1, 2]);
        assert_eq!(&l.ranges[2 * ox..2 * ox + 8], &[0, 1, 0, 1, 1, 2, 1, 2]);
        // Window starts relative to the block's origin (row 3).
        assert_eq!(&l.starts[oy..oy + 2], &[-3, -1]);
        assert_eq!(&l.starts[ox..ox + 2], &[0, 2]);
    }

    #[test]
    fn a_block_needs_only_the_window_rows_over_it() {
        let grid = WindowGrid {
            image: vec![10, 8, 8],
            window: vec![4, 4, 4],
            step: vec![2, 4, 4],
        };
        // Window rows along z start at 0, 2, 4, 6: rows 7..10 need rows 2 and 3.
        let l = stitch_launch(&grid, 2, 7..10, true, 4);
        assert_eq!(l.patches, 8..16);
        assert_eq!(l.geom.first, 8);
        assert_eq!(l.geom.with_variance, 1);
        assert_eq!(
            (l.geom.band_axis, l.geom.band_rows, l.geom.band_origin),
            (0, 4, 7)
        );
        let (geom, starts) = cut_launch(&grid, 2, 5..7, &[2, 0, 0], &[4, 8, 8]);
        assert_eq!(geom.patches, 2);
        assert_eq!(geom.r#box, [4, 8, 8]);
        assert_eq!(starts, vec![0, 0, 4, 0, 4, 0]);
    }
}
