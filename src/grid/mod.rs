//! Which pixels: N-D boxes, chunk-aligned runs and the split of work among ranks.
//!
//! Pure functions with no I/O. The one idea: every piece of work that writes an output is a
//! run of whole write-blocks (chunks, or shards when sharding) along one axis, so no block is
//! ever written by two units, and therefore never by two ranks.

use std::ops::Range;

use crate::error::Error;

pub mod windows;

/// An axis-aligned box in an N-D array: `start[i] .. start[i] + shape[i]` on each axis.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub start: Vec<u64>,
    pub shape: Vec<u64>,
}

impl Region {
    /// The whole of an array of `shape`.
    pub fn whole(shape: &[u64]) -> Self {
        Region {
            start: vec![0; shape.len()],
            shape: shape.to_vec(),
        }
    }

    /// The whole of `shape` except along `axis`, where it covers `range`.
    pub fn slab(shape: &[u64], axis: usize, range: Range<u64>) -> Self {
        let mut region = Region::whole(shape);
        region.start[axis] = range.start;
        region.shape[axis] = range.end - range.start;
        region
    }

    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    pub fn end(&self) -> Vec<u64> {
        self.start
            .iter()
            .zip(&self.shape)
            .map(|(s, n)| s + n)
            .collect()
    }

    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.start
            .iter()
            .zip(&self.shape)
            .map(|(&s, &n)| s..s + n)
            .collect()
    }

    /// True when the box lies inside an array of `shape`.
    pub fn fits_in(&self, shape: &[u64]) -> bool {
        self.ndim() == shape.len() && self.end().iter().zip(shape).all(|(e, d)| e <= d)
    }

    pub fn shape_usize(&self) -> Vec<usize> {
        self.shape.iter().map(|&n| n as usize).collect()
    }
}

/// Splits `0..extent` into runs whose boundaries are multiples of `block` (the last run ends
/// at `extent`), each made of `blocks_per_run` whole blocks.
pub fn block_aligned_runs(extent: u64, block: u64, blocks_per_run: u64) -> Vec<Range<u64>> {
    assert!(
        block > 0 && blocks_per_run > 0,
        "block and run length are positive"
    );
    let step = block * blocks_per_run;
    (0..extent.div_ceil(step))
        .map(|i| i * step..((i + 1) * step).min(extent))
        .collect()
}

/// How many whole blocks of `block_bytes` make a run of about `target_bytes` (at least one).
pub fn blocks_for_target(block_bytes: u64, target_bytes: u64) -> u64 {
    (target_bytes / block_bytes.max(1)).max(1)
}

/// Splits `n` units among `parts` ranks in contiguous runs whose lengths differ by at most one;
/// the first `n % parts` ranks get the longer runs. Rank `r` gets `result[r]`.
pub fn partition_contiguous(n: usize, parts: usize) -> Vec<Range<usize>> {
    assert!(parts > 0, "at least one part");
    let base = n / parts;
    let extra = n % parts;
    let mut start = 0;
    (0..parts)
        .map(|r| {
            let len = base + usize::from(r < extra);
            let run = start..start + len;
            start += len;
            run
        })
        .collect()
}

/// The product of sizes the user gave (a shape, a window, a count times a size), or an
/// [`Error::Parameter`] naming `flag` when it does not fit in 64 bits. Size arithmetic on user
/// values goes through these helpers, never through `*`/`+`, which wrap in release builds.
///
/// # Errors
/// The product overflows `u64`.
pub fn checked_product(flag: &str, values: &[u64]) -> Result<u64, Error> {
    values
        .iter()
        .try_fold(1u64, |acc, &v| acc.checked_mul(v))
        .ok_or_else(|| {
            Error::parameter(
                flag,
                format!(
                    "{} is too large (the product does not fit in 64 bits)",
                    join(values)
                ),
            )
        })
}

/// `a * b` for sizes from `flag`.
///
/// # Errors
/// The product overflows `u64`.
pub fn checked_mul(flag: &str, a: u64, b: u64) -> Result<u64, Error> {
    a.checked_mul(b)
        .ok_or_else(|| Error::parameter(flag, format!("{a} x {b} does not fit in 64 bits")))
}

/// `a + b` for sizes from `flag`.
///
/// # Errors
/// The sum overflows `u64`.
pub fn checked_add(flag: &str, a: u64, b: u64) -> Result<u64, Error> {
    a.checked_add(b)
        .ok_or_else(|| Error::parameter(flag, format!("{a} + {b} does not fit in 64 bits")))
}

/// A size from `flag` as `usize` (for an allocation or an index), refused where it does not
/// fit instead of truncated.
///
/// # Errors
/// The value exceeds `usize::MAX`.
pub fn to_usize(flag: &str, value: u64) -> Result<usize, Error> {
    usize::try_from(value)
        .map_err(|_| Error::parameter(flag, format!("{value} is too large for this machine")))
}

/// A chunk (or shard) shape clipped to the array: a block longer than its axis holds nothing
/// more than the whole axis would, but writers allocate whole blocks, so `--chunks 2^40` on a
/// 16-pixel axis means one chunk of 16. Shards stay multiples of the (clipped) chunks.
pub fn clip_blocks(shape: &[u64], chunks: &mut [u64], shards: Option<&mut [u64]>) {
    for (c, &s) in chunks.iter_mut().zip(shape) {
        *c = (*c).min(s.max(1));
    }
    if let Some(shards) = shards {
        for ((b, &c), &s) in shards.iter_mut().zip(chunks.iter()).zip(shape) {
            if c > 0 {
                *b = (*b).min(s.max(1).div_ceil(c) * c);
            }
        }
    }
}

/// Checks a chunk (or shard) shape against an array's rank: same length, no zero.
///
/// # Errors
/// Returns a message naming the mismatch, for the caller to attach to its parameter.
pub fn check_block_shape(block: &[u64], ndim: usize) -> Result<(), String> {
    if block.len() != ndim {
        return Err(format!(
            "has {} values ({}) but the array has {} dimensions",
            block.len(),
            join(block),
            ndim
        ));
    }
    if let Some(axis) = block.iter().position(|&b| b == 0) {
        return Err(format!("is zero on axis {axis} ({})", join(block)));
    }
    Ok(())
}

/// Formats a shape as `a,b,c`, the way the command line takes it.
pub fn join(values: &[u64]) -> String {
    join_with(values, ",")
}

/// Formats a shape with `separator` between the values (`16x16`, `(2, 3)`'s inside).
pub fn join_with(values: &[u64], separator: &str) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

/// Describes a sorted list of missing integers compactly: `3, 7-9, 12`.
pub fn describe_ranges(sorted: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// A xorshift64 stream (shifts 13, 7, 17) from `seed` (not 0): the cheap, fixed sequence that
/// synthetic bench inputs and tests draw from, the same values on every machine.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A value in [0, 1) from the top 24 bits of `bits` (exact in f32).
pub fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 / 16_777_216.0
}

/// `views` joined along `axis` (they agree on every other axis), in C order: joined along a
/// later axis, ndarray may keep another memory order, and the kernels read C-order boxes.
///
/// # Panics
/// When the views differ along another axis (a caller's bug).
pub fn join_c_order<T: Clone>(
    axis: usize,
    views: &[ndarray::ArrayViewD<'_, T>],
) -> ndarray::ArrayD<T> {
    let joined = ndarray::concatenate(ndarray::Axis(axis), views)
        .expect("views differ only along the axis they are joined on");
    if joined.is_standard_layout() {
        joined
    } else {
        joined.as_standard_layout().into_owned()
    }
}

/// Row-major (C-order) strides of a shape, in elements.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        st[a] = st[a + 1] * shape[a + 1];
    }
    st
}

/// Calls `f(index)` for every index of the box `ranges` in C order (nothing for an empty box;
/// once with an empty index for zero axes).
pub fn for_each_index(ranges: &[Range<u64>], mut f: impl FnMut(&[u64])) {
    if ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let mut idx: Vec<u64> = ranges.iter().map(|r| r.start).collect();
    loop {
        f(&idx);
        let mut a = ranges.len();
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < ranges[a].end {
                break;
            }
            idx[a] = ranges[a].start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_hand_checked() {
        assert_eq!(block_aligned_runs(10, 4, 1), vec![0..4, 4..8, 8..10]);
        assert_eq!(block_aligned_runs(10, 4, 2), vec![0..8, 8..10]);
        assert_eq!(block_aligned_runs(8, 4, 2), vec![0..8]);
        assert_eq!(block_aligned_runs(0, 4, 2), Vec::<Range<u64>>::new());
    }

    #[test]
    fn partition_hand_checked() {
        assert_eq!(partition_contiguous(5, 2), vec![0..3, 3..5]);
        assert_eq!(partition_contiguous(2, 4), vec![0..1, 1..2, 2..2, 2..2]);
    }

    #[test]
    fn ranges_described() {
        assert_eq!(describe_ranges(&[3, 7, 8, 9, 12]), "3, 7-9, 12");
        assert_eq!(describe_ranges(&[]), "");
    }

    #[test]
    fn block_shape_checked() {
        assert!(check_block_shape(&[1, 2, 3], 3).is_ok());
        assert!(check_block_shape(&[1, 2], 3)
            .unwrap_err()
            .contains("2 values"));
        assert!(check_block_shape(&[1, 0, 3], 3)
            .unwrap_err()
            .contains("axis 1"));
    }

    proptest! {
        #[test]
        fn runs_cover_exactly_and_align(extent in 0u64..10_000, block in 1u64..300, k in 1u64..8) {
            let runs = block_aligned_runs(extent, block, k);
            let mut next = 0;
            for run in &runs {
                prop_assert_eq!(run.start, next);
                prop_assert_eq!(run.start % block, 0);
                prop_assert!(run.end == extent || run.end % block == 0);
                prop_assert!(run.end > run.start);
                next = run.end;
            }
            prop_assert_eq!(next, extent);
        }

        #[test]
        fn partition_covers_in_order(n in 0usize..5000, parts in 1usize..64) {
            let split = partition_contiguous(n, parts);
            prop_assert_eq!(split.len(), parts);
            let mut next = 0;
            for run in &split {
                prop_assert_eq!(run.start, next);
                next = run.end;
            }
            prop_assert_eq!(next, n);
            let lens: Vec<usize> = split.iter().map(|r| r.len()).collect();
            prop_assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
    }
}
