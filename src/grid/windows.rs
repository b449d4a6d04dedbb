//! Window placement for quilting: where the overlapping windows of an N-D image start.
//!
//! Per spatial axis of extent `D`, window `W`, step `S`: `full = (D - W) div S`; there are
//! `full + 2` windows when `D > full*S + W` (a last window flush with the far edge), else
//! `full + 1`; window `i` starts at `min(i*S, D - W)`. Nothing is padded or dropped. Windows of
//! one image are numbered row-major over their positions (slowest axis first); patches of a
//! batch are image-major.

use std::ops::Range;

/// The windows of one image's spatial axes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowGrid {
    /// Spatial extent per axis ((Y, X) or (Z, Y, X)).
    pub image: Vec<u64>,
    pub window: Vec<u64>,
    pub step: Vec<u64>,
}

/// A parameter problem, named by its flag, for the caller to wrap in its error type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeometryError {
    pub parameter: &'static str,
    pub message: String,
}

fn geometry_error(parameter: &'static str, message: String) -> GeometryError {
    GeometryError { parameter, message }
}

/// Number of windows along one axis.
pub fn axis_count(extent: u64, window: u64, step: u64) -> u64 {
    let full = (extent - window) / step;
    if extent > full * step + window {
        full + 2
    } else {
        full + 1
    }
}

/// Start of window `i` along one axis.
pub fn axis_start(i: u64, extent: u64, window: u64, step: u64) -> u64 {
    (i * step).min(extent - window)
}

const AXIS_NAMES_2D: [&str; 2] = ["y", "x"];
const AXIS_NAMES_3D: [&str; 3] = ["z", "y", "x"];

/// The name of spatial axis `axis` of an image with `ndim` spatial axes.
pub fn axis_name(ndim: usize, axis: usize) -> &'static str {
    if ndim == 3 {
        AXIS_NAMES_3D[axis]
    } else {
        AXIS_NAMES_2D.get(axis).copied().unwrap_or("?")
    }
}

impl WindowGrid {
    /// Checks a geometry. Steps larger than the window leave pixels no window covers; they are
    /// refused unless `allow_gaps`.
    ///
    /// # Errors
    /// The first parameter that does not fit, with its axis and values.
    pub fn new(
        image: &[u64],
        window: &[u64],
        step: &[u64],
        allow_gaps: bool,
    ) -> Result<Self, GeometryError> {
        let ndim = image.len();
        if !(ndim == 2 || ndim == 3) {
            return Err(geometry_error(
                "window",
                format!("quilting needs 2 or 3 spatial axes, the image has {ndim}"),
            ));
        }
        for (name, values) in [("window", window), ("step", step)] {
            if values.len() != ndim {
                return Err(geometry_error(
                    if name == "window" { "window" } else { "step" },
                    format!(
                        "has {} values but the image has {ndim} spatial axes",
                        values.len()
                    ),
                ));
            }
        }
        for axis in 0..ndim {
            let name = axis_name(ndim, axis);
            if window[axis] == 0 {
                return Err(geometry_error("window", format!("is zero on axis {name}")));
            }
            if window[axis] > image[axis] {
                return Err(geometry_error(
                    "window",
                    format!(
                        "{} on axis {name} is larger than the image ({})",
                        window[axis], image[axis]
                    ),
                ));
            }
            if step[axis] == 0 {
                return Err(geometry_error(
                    "step",
                    format!("must be positive (is 0 on axis {name})"),
                ));
            }
            if step[axis] > window[axis] && !allow_gaps {
                return Err(geometry_error(
                    "step",
                    format!(
                        "{} on axis {name} is larger than the window ({}): pixels between windows would be dropped; pass --allow-gaps to accept that",
                        step[axis], window[axis]
                    ),
                ));
            }
        }
        Ok(WindowGrid {
            image: image.to_vec(),
            window: window.to_vec(),
            step: step.to_vec(),
        })
    }

    pub fn ndim(&self) -> usize {
        self.image.len()
    }

    /// Windows per axis.
    pub fn counts(&self) -> Vec<u64> {
        (0..self.ndim())
            .map(|a| axis_count(self.image[a], self.window[a], self.step[a]))
            .collect()
    }

    /// Windows per image.
    pub fn per_image(&self) -> u64 {
        self.counts().iter().product()
    }

    /// Start of each window along `axis`.
    pub fn starts(&self, axis: usize) -> Vec<u64> {
        let n = axis_count(self.image[axis], self.window[axis], self.step[axis]);
        (0..n)
            .map(|i| axis_start(i, self.image[axis], self.window[axis], self.step[axis]))
            .collect()
    }

    /// Spatial start of window `index` (row-major over window positions) of an image.
    pub fn window_start(&self, index: u64) -> Vec<u64> {
        let counts = self.counts();
        let mut rest = index;
        let mut position = vec![0; self.ndim()];
        for axis in (0..self.ndim()).rev() {
            position[axis] = rest % counts[axis];
            rest /= counts[axis];
        }
        (0..self.ndim())
            .map(|a| axis_start(position[a], self.image[a], self.window[a], self.step[a]))
            .collect()
    }

    /// Along `axis`, the window indices whose windows overlap `range` of pixels.
    pub fn overlapping(&self, axis: usize, range: Range<u64>) -> Range<u64> {
        let starts = self.starts(axis);
        let w = self.window[axis];
        // Starts never decrease, so both ends are partition points.
        let first = starts.partition_point(|&s| s + w <= range.start) as u64;
        let end = starts.partition_point(|&s| s < range.end) as u64;
        first..end.max(first)
    }
}

/// Border width per axis: one value for every axis, or one per axis; 0 or none means none.
///
/// # Errors
/// A wrong number of values, or a border that leaves no interior (`2 * border >= window`).
pub fn check_border(border: &[u64], window: &[u64]) -> Result<Vec<u64>, GeometryError> {
    let ndim = window.len();
    let border = match border.len() {
        0 => vec![0; ndim],
        1 => vec![border[0]; ndim],
        n if n == ndim => border.to_vec(),
        n => {
            return Err(geometry_error(
                "border",
                format!("has {n} values; give one, or one per spatial axis ({ndim})"),
            ))
        }
    };
    for axis in 0..ndim {
        if border[axis] > 0 && border[axis] >= window[axis].div_ceil(2) {
            return Err(geometry_error(
                "border",
                format!(
                    "{} on axis {} is half the window ({}) or more: no pixel would keep full weight",
                    border[axis],
                    axis_name(ndim, axis),
                    window[axis]
                ),
            ));
        }
    }
    Ok(border)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_checked_placement() {
        // D=11, W=4, S=3: full=2, 11 > 2*3+4 -> 4 windows at 0, 3, 6 and flush 7.
        assert_eq!(axis_count(11, 4, 3), 4);
        let g = WindowGrid::new(&[11, 11], &[4, 4], &[3, 3], false).unwrap();
        assert_eq!(g.starts(0), vec![0, 3, 6, 7]);
        // D=10, W=4, S=3: 10 == 2*3+4 -> 3 windows, the last exactly flush.
        assert_eq!(axis_count(10, 4, 3), 3);
        // D=10, W=4, S=2: full=3, 10 == 3*2+4 -> 4 windows, the last exactly flush.
        assert_eq!(
            WindowGrid::new(&[10, 8], &[4, 4], &[2, 4], false)
                .unwrap()
                .starts(0),
            vec![0, 2, 4, 6]
        );
        // One window when W == D.
        assert_eq!(axis_count(7, 7, 3), 1);
        let g = WindowGrid::new(&[5, 7, 9], &[2, 7, 4], &[1, 3, 4], false).unwrap();
        assert_eq!(g.counts(), vec![4, 1, 3]);
        assert_eq!(g.window_start(0), vec![0, 0, 0]);
        assert_eq!(g.window_start(2), vec![0, 0, 5]);
        assert_eq!(g.window_start(3), vec![1, 0, 0]);
        assert_eq!(g.per_image(), 12);
    }

    #[test]
    fn refuses_bad_geometry() {
        let e = WindowGrid::new(&[10, 10], &[12, 4], &[2, 2], false).unwrap_err();
        assert_eq!(e.parameter, "window");
        assert!(e.message.contains("larger than the image"));
        assert_eq!(
            WindowGrid::new(&[10, 10], &[4, 4], &[0, 2], false)
                .unwrap_err()
                .parameter,
            "step"
        );
        assert!(WindowGrid::new(&[10, 10], &[4, 4], &[5, 2], false)
            .unwrap_err()
            .message
            .contains("--allow-gaps"));
        assert!(WindowGrid::new(&[10, 10], &[4, 4], &[5, 2], true).is_ok());
        assert!(WindowGrid::new(&[10], &[4], &[2], false).is_err());
        assert!(WindowGrid::new(&[10, 10], &[4, 4, 4], &[2, 2], false).is_err());
        assert_eq!(check_border(&[2], &[4, 8]).unwrap_err().parameter, "border");
        assert_eq!(check_border(&[1], &[4, 8]).unwrap(), vec![1, 1]);
        assert_eq!(check_border(&[], &[4, 8]).unwrap(), vec![0, 0]);
        assert!(check_border(&[1, 2, 3], &[4, 8]).is_err());
    }

    #[test]
    fn overlapping_windows_hand_checked() {
        let g = WindowGrid::new(&[11, 11], &[4, 4], &[3, 3], false).unwrap(); // starts 0,3,6,7
        assert_eq!(g.overlapping(0, 0..1), 0..1);
        assert_eq!(g.overlapping(0, 3..4), 0..2);
        assert_eq!(g.overlapping(0, 10..11), 3..4);
        assert_eq!(g.overlapping(0, 9..10), 2..4);
        assert_eq!(g.overlapping(0, 0..11), 0..4);
    }

    proptest! {
        #[test]
        fn windows_cover_every_pixel_and_end_flush(d in 1u64..300, w in 1u64..64, s in 1u64..64) {
            prop_assume!(w <= d && s <= w);
            let n = axis_count(d, w, s);
            let starts: Vec<u64> = (0..n).map(|i| axis_start(i, d, w, s)).collect();
            prop_assert_eq!(starts[0], 0);
            prop_assert_eq!(*starts.last().unwrap() + w, d);
            // Strictly increasing (no duplicate window) and no gap between windows.
            for pair in starts.windows(2) {
                prop_assert!(pair[1] > pair[0] && pair[1] <= pair[0] + w);
            }
        }

        #[test]
        fn overlapping_matches_brute_force(d in 1u64..120, w in 1u64..30, s in 1u64..30, a in 0u64..120, len in 1u64..40) {
            prop_assume!(w <= d && s <= w && a < d);
            let g = WindowGrid::new(&[d, d], &[w, w], &[s, s], false).unwrap();
            let end = (a + len).min(d);
            let got = g.overlapping(0, a..end);
            let brute: Vec<u64> = g.starts(0).iter().enumerate()
                .filter(|(_, &st)| st < end && st + w > a).map(|(i, _)| i as u64).collect();
            prop_assert_eq!(got.collect::<Vec<_>>(), brute);
        }
    }
}
