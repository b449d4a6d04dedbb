//! The GPU kernels' view of the crop, prepared on the host: the `#[repr(C)]` twins of
//! `crop.cuh`'s `CropGeom` and `CropRecord`, and a record back to an [`Analysis`]. No CUDA
//! here (every build has it), so the test harness runs the kernels' bodies on exactly what a
//! GPU launch would get.

use super::kernel::{Analysis, CentreMethod, PatternKind};

/// Twin of `CropGeom` in `crop.cuh` (field for field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CropGeom {
    pub h: i64,
    pub w: i64,
    pub method: i64,
    pub is_float: i64,
    pub manual_y: f64,
    pub manual_x: f64,
    pub target: f64,
}

/// Twin of `CropRecord` in `crop.cuh`: one pattern's findings, all f64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CropRecord {
    pub total: f64,
    pub cy: f64,
    pub cx: f64,
    pub radius: f64,
    pub kind: f64,
    pub scale: f64,
    pub total_q: f64,
    pub on_cpu: f64,
}

#[cfg(feature = "cuda")]
// SAFETY: plain #[repr(C)] structs of i64s and f64s, passed by value or copied as bytes.
unsafe impl crate::gpu::cuda::DeviceRepr for CropGeom {}
#[cfg(feature = "cuda")]
// SAFETY: as above.
unsafe impl crate::gpu::cuda::DeviceRepr for CropRecord {}

/// Blocks of the analysis kernel for `count` patterns of `pattern_bytes`: the kernel reads
/// each pattern four times (extremes, sums, histogram, crossing bin), so the patterns in flight
/// are bounded by half the L2 cache, that those re-reads hit it rather than DRAM; but at least
/// one block per multiprocessor, and at most one per pattern (blocks stride over the rest).
pub fn analysis_blocks(count: u64, pattern_bytes: u64, l2_bytes: u64, multiprocessors: u64) -> u64 {
    let in_l2 = l2_bytes / 2 / pattern_bytes.max(1);
    in_l2
        .max(multiprocessors)
        .min(count)
        .clamp(1, i32::MAX as u64)
}

impl CropGeom {
    /// The geometry of (h, w) patterns analysed with `method` (and `manual`) for `target`.
    pub fn new(
        (h, w): (u64, u64),
        method: CentreMethod,
        manual: Option<(f64, f64)>,
        target: f64,
        is_float: bool,
    ) -> CropGeom {
        // kernel.rs' analyse: a manual method without a centre falls back to the geometric.
        let (method, (my, mx)) = match (method, manual) {
            (CentreMethod::Centroid, _) => (0, (0.0, 0.0)),
            (CentreMethod::Manual, Some(c)) => (2, c),
            _ => (1, (0.0, 0.0)),
        };
        CropGeom {
            h: h as i64,
            w: w as i64,
            method,
            is_float: i64::from(is_float),
            manual_y: my,
            manual_x: mx,
            target,
        }
    }
}

impl CropRecord {
    /// Whether the CPU must analyse this pattern (a negative pixel, or too many pixels in the
    /// crossing bin for the block's memory).
    pub fn on_cpu(&self) -> bool {
        self.on_cpu != 0.0
    }

    /// The record as kernel.rs' [`Analysis`].
    pub fn analysis(&self) -> Analysis {
        let kind = match self.kind as i64 {
            0 => PatternKind::Normal,
            1 => PatternKind::Empty,
            2 => PatternKind::Negative,
            _ => PatternKind::NotFinite,
        };
        Analysis {
            total: self.total,
            centre: (self.cy, self.cx),
            radius: self.radius,
            kind,
            scale: self.scale as i32,
            total_q: self.total_q,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::analysis_blocks;

    #[test]
    fn patterns_in_flight_fit_half_the_l2_but_fill_every_multiprocessor() {
        // H100: 50 MiB L2, 132 SMs. 256 KiB patterns: 100 fit half the L2, but 132 SMs.
        assert_eq!(analysis_blocks(10_000, 256 << 10, 50 << 20, 132), 132);
        // 16 KiB patterns: 1600 fit half the L2.
        assert_eq!(analysis_blocks(10_000, 16 << 10, 50 << 20, 132), 1600);
        // Fewer patterns than that: one block each.
        assert_eq!(analysis_blocks(7, 16 << 10, 50 << 20, 132), 7);
        assert_eq!(analysis_blocks(0, 0, 1, 1), 1);
    }
}
