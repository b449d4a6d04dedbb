//! Pre-tokenization of 2-D patch pairs (pure): tokens are quilt windows of a patch (the flush
//! last window of [`crate::grid::windows`]), numbered row-major, each flattened channel-major
//! to `C*T*T` values; and, per pair, which token of the second patch each token of the first
//! overlaps most.
//!
//! Overlap geometry on continuous corner coordinates `(row, col)`: a token box of patch 1 moves
//! into the unturned patch 2 by subtracting the displacement `(dy, dx)`, then into the stored
//! (turned) patch 2 by numpy's `rot90(k)` map of an `H x W` patch: k=1 `(r, c) -> (W - c, r)`,
//! k=2 `(H - r, W - c)`, k=3 `(c, H - r)` (the formulas, read as (row, col) pairs).
//! Intersections are whole pixels, so areas are exact integers.

use ndarray::{ArrayViewD, ArrayViewMut2, Axis};

use crate::error::{Error, Result};
use crate::grid::windows::WindowGrid;

/// The token windows of an `(U, V)` patch: size `t`, stride `s` (default `t/2`, at least 1).
///
/// # Errors
/// [`Error::Parameter`] naming `--token-size` or `--token-stride`.
pub fn token_grid(patch: [u64; 2], t: u64, s: Option<u64>) -> Result<WindowGrid> {
    let side = patch[0].min(patch[1]);
    if t == 0 || t > side {
        return Err(Error::parameter(
            "token-size",
            format!(
                "{t} does not fit the {}x{} patches (1 to {side})",
                patch[0], patch[1]
            ),
        ));
    }
    let s = s.unwrap_or((t / 2).max(1));
    if s == 0 || s > t {
        return Err(Error::parameter(
            "token-stride",
            format!("{s} must be between 1 and the token size {t}"),
        ));
    }
    WindowGrid::new(&patch, &[t, t], &[s, s], false)
        .map_err(|e| Error::parameter(e.parameter, e.message))
}

/// Top-left corner `(y, x)` of every token, row-major.
pub fn token_coords(grid: &WindowGrid) -> Vec<[u64; 2]> {
    (0..grid.per_image())
        .map(|k| {
            let s = grid.window_start(k);
            [s[0], s[1]]
        })
        .collect()
}

/// Writes the tokens of one `(C, U, V)` patch into `out` (`L x C*T*T`), channel-major.
pub fn tokenize_into<T: Copy>(
    patch: &ArrayViewD<'_, T>,
    coords: &[[u64; 2]],
    t: u64,
    out: &mut ArrayViewMut2<'_, T>,
) {
    let t = t as usize;
    for (mut row, &[y, x]) in out.axis_iter_mut(Axis(0)).zip(coords) {
        let (y, x) = (y as usize, x as usize);
        let mut slots = row.iter_mut();
        for channel in patch.axis_iter(Axis(0)) {
            for r in y..y + t {
                for c in x..x + t {
                    *slots.next().expect("C*T*T slots") = channel[[r, c]];
                }
            }
        }
    }
}

/// A box on continuous coordinates: rows `r0..r1`, columns `c0..c1`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Box2 {
    r0: i64,
    r1: i64,
    c0: i64,
    c1: i64,
}

impl Box2 {
    fn token(corner: [u64; 2], t: u64) -> Box2 {
        let (r, c, t) = (corner[0] as i64, corner[1] as i64, t as i64);
        Box2 {
            r0: r,
            r1: r + t,
            c0: c,
            c1: c + t,
        }
    }

    fn area_with(&self, o: &Box2) -> i64 {
        let h = (self.r1.min(o.r1) - self.r0.max(o.r0)).max(0);
        let w = (self.c1.min(o.c1) - self.c0.max(o.c0)).max(0);
        h * w
    }
}

/// A point of the unturned `h x w` patch 2 in the stored patch, turned `k` times.
fn turn_point(r: i64, c: i64, k: u8, h: i64, w: i64) -> (i64, i64) {
    match k % 4 {
        1 => (w - c, r),
        2 => (h - r, w - c),
        3 => (c, h - r),
        _ => (r, c),
    }
}

/// Token box `b` of patch 1 in the stored patch 2's frame.
fn into_second(b: Box2, delta: [i64; 2], k: u8, patch: [u64; 2]) -> Box2 {
    let (h, w) = (patch[0] as i64, patch[1] as i64);
    let moved = [
        (b.r0 - delta[0], b.c0 - delta[1]),
        (b.r1 - delta[0], b.c1 - delta[1]),
    ];
    let (a, z) = (
        turn_point(moved[0].0, moved[0].1, k, h, w),
        turn_point(moved[1].0, moved[1].1, k, h, w),
    );
    Box2 {
        r0: a.0.min(z.0),
        r1: a.0.max(z.0),
        c0: a.1.min(z.1),
        c1: a.1.max(z.1),
    }
}

/// Token overlaps of one pair, each `L` long.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenOverlaps {
    /// For token i of patch 1: the token j of patch 2 with the largest intersection (the first
    /// on ties), -1 when it meets none.
    pub index_1to2: Vec<i64>,
    /// That intersection's area over `T^2`.
    pub fraction: Vec<f32>,
    /// For token j of patch 2: the first i whose choice is j, -1 when none chose it.
    pub index_2to1: Vec<i64>,
}

impl TokenOverlaps {
    /// The overlaps from patch 1's side: `index_2to1` is `index_1to2` turned round (each token
    /// of patch 2 to the first token of patch 1 that chose it).
    fn from_first(index_1to2: Vec<i64>, fraction: Vec<f32>) -> TokenOverlaps {
        let mut index_2to1 = vec![-1i64; index_1to2.len()];
        for (i, &j) in index_1to2.iter().enumerate() {
            if j >= 0 && index_2to1[j as usize] < 0 {
                index_2to1[j as usize] = i as i64;
            }
        }
        TokenOverlaps {
            index_1to2,
            fraction,
            index_2to1,
        }
    }
}

/// The overlaps of the tokens of a pair whose second patch sits at `delta` = `(dy, dx)` from
/// the first and is turned `k` times; `patch` is `(U, V)`.
pub fn token_overlaps(
    coords: &[[u64; 2]],
    t: u64,
    delta: [i64; 2],
    k: u8,
    patch: [u64; 2],
) -> TokenOverlaps {
    let seconds: Vec<Box2> = coords.iter().map(|&c| Box2::token(c, t)).collect();
    let area = (t * t) as f32;
    let mut index_1to2 = vec![-1i64; coords.len()];
    let mut fraction = vec![0f32; coords.len()];
    for (i, &c) in coords.iter().enumerate() {
        let mapped = into_second(Box2::token(c, t), delta, k, patch);
        let mut best = 0;
        for (j, s) in seconds.iter().enumerate() {
            let a = mapped.area_with(s);
            if a > best {
                best = a;
                index_1to2[i] = j as i64;
            }
        }
        fraction[i] = best as f32 / area;
    }
    TokenOverlaps::from_first(index_1to2, fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pairs::kernel::pair_views;
    use crate::ops::pairs::sampler::{Pair, Stream};
    use ndarray::{Array2, ArrayD, IxDyn};

    #[test]
    fn tokens_are_flush_quilt_windows_flattened_channel_major() {
        let grid = token_grid([10, 10], 4, Some(3)).unwrap();
        let coords = token_coords(&grid);
        // Starts 0, 3, 6 along each axis (6 + 4 = 10 is flush).
        assert_eq!(coords.len(), 9);
        assert_eq!(coords[1], [0, 3]);
        assert_eq!(coords[8], [6, 6]);
        let grid = token_grid([10, 10], 4, Some(4)).unwrap();
        // 0, 4 and the flush 6.
        assert_eq!(token_coords(&grid)[2], [0, 6]);
        let patch = ArrayD::from_shape_fn(IxDyn(&[2, 10, 10]), |i| {
            (i[0] * 1000 + i[1] * 10 + i[2]) as u16
        });
        let mut out = Array2::<u16>::zeros((9, 2 * 16));
        let coords = token_coords(&token_grid([10, 10], 4, Some(3)).unwrap());
        tokenize_into(&patch.view(), &coords, 4, &mut out.view_mut());
        // Token 4 starts at (3, 3): value c*1000 + (3+r)*10 + (3+q) at c*16 + r*4 + q.
        assert_eq!(out[[4, 0]], 33);
        assert_eq!(out[[4, 5]], 44);
        assert_eq!(out[[4, 16 + 15]], 1066);
    }

    #[test]
    fn bad_token_sizes_name_their_flag() {
        let e = token_grid([8, 8], 9, None).unwrap_err().to_string();
        assert!(e.starts_with("--token-size:"), "{e}");
        let e = token_grid([8, 8], 0, None).unwrap_err().to_string();
        assert!(e.starts_with("--token-size:"), "{e}");
        let e = token_grid([8, 8], 4, Some(5)).unwrap_err().to_string();
        assert!(e.starts_with("--token-stride:"), "{e}");
        let e = token_grid([8, 8], 4, Some(0)).unwrap_err().to_string();
        assert!(e.starts_with("--token-stride:"), "{e}");
        assert_eq!(token_grid([8, 8], 1, None).unwrap().step, vec![1, 1]);
    }

    /// Brute force on pixels: an image of distinct labels, both patches cut (the second turned
    /// as stored), and every token pair's intersection counted as shared labels.
    fn brute_force(pair: &Pair, window: u64, t: u64, coords: &[[u64; 2]]) -> TokenOverlaps {
        let side = 64usize;
        let image = ArrayD::from_shape_fn(IxDyn(&[1, side, side]), |i| (i[1] * side + i[2]) as i64);
        let (p1, p2) = pair_views(&image.view(), &[0, 0], pair, &[window, window]);
        let labels = |p: &ArrayViewD<'_, i64>, c: [u64; 2]| -> std::collections::HashSet<i64> {
            let mut s = std::collections::HashSet::new();
            for r in c[0]..c[0] + t {
                for q in c[1]..c[1] + t {
                    s.insert(p[[0, r as usize, q as usize]]);
                }
            }
            s
        };
        let firsts: Vec<_> = coords.iter().map(|&c| labels(&p1, c)).collect();
        let seconds: Vec<_> = coords.iter().map(|&c| labels(&p2, c)).collect();
        let mut index_1to2 = vec![-1i64; coords.len()];
        let mut fraction = vec![0f32; coords.len()];
        for (i, a) in firsts.iter().enumerate() {
            let mut best = 0;
            for (j, b) in seconds.iter().enumerate() {
                let n = a.intersection(b).count();
                if n > best {
                    best = n;
                    index_1to2[i] = j as i64;
                }
            }
            fraction[i] = best as f32 / (t * t) as f32;
        }
        TokenOverlaps::from_first(index_1to2, fraction)
    }

    #[test]
    fn token_overlaps_match_a_pixel_brute_force_on_random_geometries() {
        let mut rng = Stream::new(7, 0);
        let mut with_overlap = 0;
        for case in 0..300 {
            let window = 6 + rng.below(11);
            let t = 1 + rng.below(window);
            let s = 1 + rng.below(t);
            let reach = window as i64;
            let first = vec![reach as u64 + rng.below(10), reach as u64 + rng.below(10)];
            let d: Vec<i64> = (0..2)
                .map(|_| rng.below(2 * reach as u64 + 1) as i64 - reach)
                .collect();
            let second = vec![
                (first[0] as i64 + d[0]) as u64,
                (first[1] as i64 + d[1]) as u64,
            ];
            let pair = Pair {
                image: 0,
                first,
                second,
                rotation: rng.below(4) as u8,
            };
            let coords = token_coords(&token_grid([window, window], t, Some(s)).unwrap());
            let got = token_overlaps(&coords, t, [d[0], d[1]], pair.rotation, [window, window]);
            let expected = brute_force(&pair, window, t, &coords);
            assert_eq!(
                got, expected,
                "case {case}: {pair:?} window {window} t {t} s {s}"
            );
            with_overlap += usize::from(got.index_1to2.iter().any(|&j| j >= 0));
        }
        assert!(
            with_overlap > 100,
            "too few overlapping cases: {with_overlap}"
        );
    }
}
