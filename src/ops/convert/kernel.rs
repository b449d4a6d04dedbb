//! The convert kernel: place decoded slices into a slab of the output. Pure: the caller hands
//! in a function producing each slice; nothing here reads files or talks to other ranks.

use ndarray::{ArrayD, ArrayViewMutD, Axis};
use rayon::prelude::*;

use crate::error::Result;

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
