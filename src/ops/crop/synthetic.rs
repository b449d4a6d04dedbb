//! `tessera crop --test-mode`: synthetic diffraction patterns, as the guide's test data: an
//! Airy disk `I(r) = I0 (2 J1(k r) / (k r))^2` per pattern with a small random centre offset,
//! Poisson (shot) noise and a low background, seeded and reproducible.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};

use crate::error::{Error, Result};

/// Intensity of an Airy disk at distance `r` for first zero at `r0` (peak 1).
pub fn airy(r: f64, r0: f64) -> f64 {
    // J1's first zero is at 3.8317.
    let x = 3.831_705_970_207_512 * r / r0;
    if x.abs() < 1e-9 {
        1.0
    } else {
        let v = 2.0 * libm::j1(x) / x;
        v * v
    }
}

/// `n` patterns of `size` x `size` float32: peak about 1000 counts, first dark ring at a
/// twentieth of the size, centre within 3 pixels of the middle, Poisson (shot) noise.
pub fn patterns(n: u64, size: u64, seed: u64) -> ArrayD<f32> {
    let s = size as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let r0 = (size as f64 / 20.0).max(1.0);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n as usize, s, s]));
    let flat = out.as_slice_mut().expect("fresh");
    for p in flat.chunks_exact_mut(s * s) {
        let cy = (size as f64 - 1.0) / 2.0 + rng.random_range(-3.0..3.0);
        let cx = (size as f64 - 1.0) / 2.0 + rng.random_range(-3.0..3.0);
        for (i, v) in p.iter_mut().enumerate() {
            let (y, x) = ((i / s) as f64, (i % s) as f64);
            let r = ((y - cy).powi(2) + (x - cx).powi(2)).sqrt();
            let mean = 1000.0 * airy(r, r0);
            *v = if mean > 0.0 {
                Poisson::new(mean).map_or(0.0, |d| d.sample(&mut rng)) as f32
            } else {
                0.0
            };
        }
    }
    out
}

/// Writes synthetic patterns to a `.npy` file.
///
/// # Errors
/// Writing the file.
pub fn write(path: &Path, n: u64, size: u64, seed: u64) -> Result<()> {
    if n == 0 || size < 8 {
        return Err(Error::parameter(
            "test-patterns",
            "synthetic data needs at least 1 pattern of at least 8x8 (--test-patterns, --test-size)",
        ));
    }
    let side = crate::grid::checked_product("test-size", &[size, size, 4])?;
    let bytes = crate::grid::checked_mul("test-patterns", n, side)?;
    crate::exec::memory::check(
        &format!("--test-patterns {n} float32 patterns of --test-size {size}"),
        bytes,
    )?;
    let a = patterns(n, size, seed);
    ndarray_npy::write_npy(path, &a).map_err(|e| Error::bad_file(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airy_peaks_at_one_and_is_dark_at_the_first_zero() {
        assert_eq!(airy(0.0, 5.0), 1.0);
        assert!(airy(5.0, 5.0) < 1e-12);
        assert!(airy(2.5, 5.0) > 0.1);
    }

    #[test]
    fn patterns_are_reproducible_from_their_seed() {
        assert_eq!(patterns(2, 16, 7), patterns(2, 16, 7));
        assert_ne!(patterns(2, 16, 7), patterns(2, 16, 8));
    }
}
