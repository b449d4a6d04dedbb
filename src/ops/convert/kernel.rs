//! The convert kernel: place decoded slices into a slab of the output, and cut a slab into
//! the chunks a raw Zarr store keeps. Pure: the caller hands in a function producing each
//! slice; nothing here reads files or talks to other ranks.

use std::ops::Range;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Slice};
use rayon::prelude::*;

use crate::error::Result;
use crate::grid::Region;

/// Fills `slab` slice by slice along `stack_axis` (in parallel): `slice(i, target)` writes the
/// i-th slice into `target`, a view shaped like `slab` without that axis.
///
/// # Errors
/// The first error any `slice` call returns, in slice order.
pub fn fill_slab<T, F>(slab: &mut ArrayD<T>, stack_axis: usize, slice: F) -> Result<()>
where
    T: Copy + Send + Sync,
    F: Fn(usize, ArrayViewMutD<'_, T>) -> Result<()> + Sync,
{
    let outcomes: Vec<Result<()>> = slab
        .axis_iter_mut(Axis(stack_axis))
        .into_par_iter()
        .enumerate()
        .map(|(i, target)| slice(i, target))
        .collect();
    outcomes.into_iter().collect()
}

/// The chunk boxes of `region` (inside an array of `shape`), in C order, when each can be
/// written as a raw chunk file: `region` starts on chunk boundaries, every box is a whole
/// chunk along every axis but the first, and along the first a whole chunk or the array's
/// tail (the rule of `io::zarr`'s streamed chunks). `None` when one is not.
pub fn raw_chunk_boxes(shape: &[u64], chunks: &[u64], region: &Region) -> Option<Vec<Region>> {
    let per_axis: Option<Vec<Vec<Range<u64>>>> = (0..shape.len())
        .map(|k| {
            let (start, end, c) = (region.start[k], region.end()[k], chunks[k]);
            if c == 0 || start % c != 0 {
                return None;
            }
            let pieces: Vec<Range<u64>> = (start..end)
                .step_by(c as usize)
                .map(|s| s..(s + c).min(end))
                .collect();
            let whole = |r: &Range<u64>| r.end - r.start == c || (k == 0 && r.end == shape[0]);
            pieces.iter().all(whole).then_some(pieces)
        })
        .collect();
    let per_axis = per_axis?;
    let counts: Vec<Range<u64>> = per_axis.iter().map(|p| 0..p.len() as u64).collect();
    let mut boxes = Vec::new();
    crate::grid::for_each_index(&counts, |i| {
        let pieces = i.iter().zip(&per_axis).map(|(&j, p)| p[j as usize].clone());
        let (start, shape) = pieces.map(|r| (r.start, r.end - r.start)).unzip();
        boxes.push(Region { start, shape });
    });
    Some(boxes)
}

/// The part of `slab` (which covers `region`) that `chunk` covers.
pub fn chunk_view<'a, T>(
    slab: &'a ArrayD<T>,
    region: &Region,
    chunk: &Region,
) -> ArrayViewD<'a, T> {
    slab.slice_each_axis(|ax| {
        let k = ax.axis.index();
        let from = (chunk.start[k] - region.start[k]) as usize;
        Slice::from(from..from + chunk.shape[k] as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn slices_land_on_their_axis() {
        // (C=2, Z=3, Y=1, X=2): CZYX, stacking axis 1.
        let mut slab = ArrayD::<u16>::zeros(IxDyn(&[2, 3, 1, 2]));
        fill_slab(&mut slab, 1, |i, mut target| {
            target.assign(&ArrayD::from_shape_fn(IxDyn(&[2, 1, 2]), |c| {
                (100 * i + 10 * c[0] + c[2]) as u16
            }));
            Ok(())
        })
        .unwrap();
        assert_eq!(slab[[1, 2, 0, 1]], 211);
        assert_eq!(slab[[0, 1, 0, 0]], 100);
    }

    #[test]
    fn raw_chunk_boxes_cover_a_slab_in_c_order() {
        let region = |start: Vec<u64>, shape: Vec<u64>| Region { start, shape };
        // (10, 4, 6) in chunks (4, 2, 3): the slab of slices 8..10 is the short tail.
        let tail = raw_chunk_boxes(
            &[10, 4, 6],
            &[4, 2, 3],
            &region(vec![8, 0, 0], vec![2, 4, 6]),
        );
        let tail = tail.unwrap();
        assert_eq!(tail.len(), 4);
        assert_eq!(tail[1], region(vec![8, 0, 3], vec![2, 2, 3]));
        assert_eq!(tail[2], region(vec![8, 2, 0], vec![2, 2, 3]));
        // A short chunk along an axis but the first is not a raw chunk; nor is a misaligned start.
        assert!(raw_chunk_boxes(
            &[8, 5, 6],
            &[4, 2, 3],
            &region(vec![0, 0, 0], vec![4, 5, 6])
        )
        .is_none());
        assert!(raw_chunk_boxes(
            &[8, 4, 6],
            &[4, 2, 3],
            &region(vec![2, 0, 0], vec![4, 4, 6])
        )
        .is_none());
        // The view of a chunk is the slab's part it covers.
        let slab = ArrayD::from_shape_fn(IxDyn(&[2, 4, 6]), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as u16
        });
        let v = chunk_view(&slab, &region(vec![8, 0, 0], vec![2, 4, 6]), &tail[2]);
        assert_eq!(v.shape(), &[2, 2, 3]);
        assert_eq!(v[[1, 1, 2]], 132);
    }

    #[test]
    fn first_error_in_slice_order_wins() {
        let mut slab = ArrayD::<u8>::zeros(IxDyn(&[4, 2]));
        let e = fill_slab(&mut slab, 0, |i, _| {
            if i >= 2 {
                Err(crate::error::Error::parameter("x", format!("slice {i}")))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("slice 2"));
    }
}
