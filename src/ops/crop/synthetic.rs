//! `tessera crop --test-mode`: synthetic diffraction patterns, as the guide's test data: an
//! Airy disk `I(r) = I0 (2 J1(k r) / (k r))^2` per pattern with a small random centre offset,
//! Poisson (shot) noise and a low background, seeded and reproducible: each pattern has its own
//! random stream, so they are made in parallel and a smaller set is a prefix of a larger one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};

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

/// The mean counts `1000 airy(r, r0)` of a pattern of `size`, tabulated every 1/64 pixel of
/// `r` and interpolated: evaluating the Bessel function per pixel was two thirds of the time.
/// The interpolation is off by under 0.01 counts, far below the Poisson noise.
struct Profile {
    table: Vec<f64>,
}

impl Profile {
    const PER_PIXEL: f64 = 64.0;

    fn new(size: u64) -> Profile {
        let r0 = (size as f64 / 20.0).max(1.0);
        // The farthest corner from a centre at most 3 pixels off the middle.
        let far = (size as f64 / 2.0 + 4.0) * std::f64::consts::SQRT_2;
        let n = (far * Self::PER_PIXEL).ceil() as usize + 2;
        Profile {
            table: (0..n)
                .map(|i| 1000.0 * airy(i as f64 / Self::PER_PIXEL, r0))
                .collect(),
        }
    }

    fn mean(&self, r: f64) -> f64 {
        let at = r * Self::PER_PIXEL;
        let i = (at as usize).min(self.table.len() - 2);
        let f = at - i as f64;
        self.table[i] + (self.table[i + 1] - self.table[i]) * f
    }
}

/// Pattern `index` of the set of `seed`: its own random stream (seed and index mixed), so
/// patterns are made in parallel, in any order, and the first `n` patterns of a larger set are
/// the set of `n`.
fn pattern_into(out: &mut [f32], size: u64, profile: &Profile, seed: u64, index: u64) {
    let s = size as usize;
    let stream = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream);
    let cy = (size as f64 - 1.0) / 2.0 + rng.random_range(-3.0..3.0);
    let cx = (size as f64 - 1.0) / 2.0 + rng.random_range(-3.0..3.0);
    for (i, v) in out.iter_mut().enumerate() {
        let (y, x) = ((i / s) as f64, (i % s) as f64);
        let mean = profile.mean(((y - cy).powi(2) + (x - cx).powi(2)).sqrt());
        *v = if mean > 0.0 {
            Poisson::new(mean).map_or(0.0, |d| d.sample(&mut rng)) as f32
        } else {
            0.0
        };
    }
}

/// `n` patterns of `size` x `size` float32: peak about 1000 counts, first dark ring at a
/// twentieth of the size, centre within 3 pixels of the middle, Poisson (shot) noise. Made in
/// parallel (rayon), one pattern per task, from a tabulated Airy profile (a Bessel function
/// per pixel made one thread take minutes over thousands of patterns).
pub fn patterns(n: u64, size: u64, seed: u64) -> ArrayD<f32> {
    patterns_from(0, n, size, seed)
}

/// Patterns `first..first + n` of the set of `seed` (see [`patterns`]).
fn patterns_from(first: u64, n: u64, size: u64, seed: u64) -> ArrayD<f32> {
    let s = size as usize;
    let profile = Profile::new(size);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n as usize, s, s]));
    out.as_slice_mut()
        .expect("fresh")
        .par_chunks_exact_mut(s * s)
        .enumerate()
        .for_each(|(k, p)| pattern_into(p, size, &profile, seed, first + k as u64));
    out
}

/// Patterns made and written per batch: the file is streamed, not held in memory whole.
const BATCH: u64 = 256;

/// Writes synthetic patterns to a `.npy` file, in batches made in parallel. `path` is created
/// or truncated: callers pass a temporary name (`io::safety::write_file`).
///
/// # Errors
/// Bad sizes, or writing the file.
pub fn write(path: &Path, n: u64, size: u64, seed: u64) -> Result<()> {
    if n == 0 || size < 8 {
        return Err(Error::parameter(
            "test-patterns",
            "synthetic data needs at least 1 pattern of at least 8x8 (--test-patterns, --test-size)",
        ));
    }
    let side = crate::grid::checked_product("test-size", &[size, size, 4])?;
    let bytes = crate::grid::checked_mul("test-patterns", n, side)?;
    // Streamed, so memory does not bound it: the disk must (a test input that fills it would
    // run for hours and then fail).
    let free = crate::io::safety::free_disk_bytes(path);
    if bytes > free {
        return Err(Error::parameter(
            "test-patterns",
            format!(
                "{n} float32 patterns of --test-size {size} need {} on disk, {} free under {}",
                crate::units::human_bytes(bytes),
                crate::units::human_bytes(free),
                path.parent().unwrap_or(path).display()
            ),
        ));
    }
    let batch = BATCH.min(n);
    crate::exec::memory::check(
        &format!("a batch of {batch} float32 synthetic patterns of --test-size {size}"),
        crate::grid::checked_mul("test-size", batch, side)?,
    )?;
    let file = std::fs::File::create(path).at(path)?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(&npy_header(&[n, size, size])).at(path)?;
    let mut first = 0;
    while first < n {
        let k = batch.min(n - first);
        let a = patterns_from(first, k, size, seed);
        let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes).at(path)?;
        first += k;
    }
    w.flush().at(path)
}

/// A `.npy` (version 1.0) header for little-endian float32 of `shape`, padded to 64 bytes.
fn npy_header(shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let dims = if dims.len() == 1 {
        format!("{},", dims[0])
    } else {
        dims.join(", ")
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h
}

/// Writes the first `n` patterns of the synthetic set in `source` (a `.npy` of [`write`]) to
/// `path` (created or truncated: callers pass a temporary name, as for [`write`]): the same
/// file [`write`] would make for `n`, without making the patterns again.
///
/// # Errors
/// `source` is not such a file or has fewer patterns; writing `path`.
pub fn write_prefix(source: &Path, path: &Path, n: u64) -> Result<()> {
    let mut from = std::fs::File::open(source).at(source)?;
    let mut head = vec![0u8; 4096];
    let got = from.read(&mut head).at(source)?;
    let h = crate::io::npy::header(&head[..got]).map_err(|e| Error::bad_file(source, e))?;
    if h.descr != "<f4" || h.shape.len() != 3 || h.shape[0] < n || n == 0 {
        return Err(Error::bad_file(
            source,
            format!("not {n} or more float32 patterns (shape {:?})", h.shape),
        ));
    }
    let bytes = n * h.shape[1] * h.shape[2] * 4;
    from.seek(SeekFrom::Start(h.data_start as u64)).at(source)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).at(path)?);
    w.write_all(&npy_header(&[n, h.shape[1], h.shape[2]]))
        .at(path)?;
    let copied = std::io::copy(&mut (&mut from).take(bytes), &mut w).at(path)?;
    if copied != bytes {
        return Err(Error::bad_file(source, "shorter than its header says"));
    }
    w.flush().at(path)
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
    fn the_tabulated_profile_is_within_a_hundredth_of_a_count() {
        let p = Profile::new(256);
        let r0 = 256.0 / 20.0;
        let worst = (0..20_000)
            .map(|i| i as f64 * 0.0093)
            .map(|r| (p.mean(r) - 1000.0 * airy(r, r0)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.01, "{worst}");
    }

    #[test]
    fn patterns_are_reproducible_from_their_seed() {
        assert_eq!(patterns(2, 16, 7), patterns(2, 16, 7));
        assert_ne!(patterns(2, 16, 7), patterns(2, 16, 8));
    }

    #[test]
    fn a_smaller_set_is_the_prefix_of_a_larger_one() {
        let five = patterns(5, 16, 3);
        let three = patterns(3, 16, 3);
        assert_eq!(
            three.view(),
            five.slice(ndarray::s![0..3, .., ..]).into_dyn()
        );
        assert_ne!(
            five.slice(ndarray::s![0, .., ..]),
            five.slice(ndarray::s![1, .., ..])
        );
    }

    #[test]
    fn the_written_file_and_its_prefix_read_back_as_the_patterns() {
        let d = tempfile::tempdir().unwrap();
        let (big, small) = (d.path().join("big.npy"), d.path().join("small.npy"));
        // More than one batch, and a last batch that is not full.
        let n = BATCH + 3;
        write(&big, n, 8, 5).unwrap();
        let read: ArrayD<f32> = ndarray_npy::read_npy(&big).unwrap();
        assert_eq!(read, patterns(n, 8, 5));
        write_prefix(&big, &small, 4).unwrap();
        let read: ArrayD<f32> = ndarray_npy::read_npy(&small).unwrap();
        assert_eq!(read, patterns(4, 8, 5));
        let mut direct = d.path().join("direct.npy");
        write(&direct, 4, 8, 5).unwrap();
        assert_eq!(
            std::fs::read(&direct).unwrap(),
            std::fs::read(&small).unwrap()
        );
        direct.set_extension("x");
        assert!(write_prefix(&big, &direct, n + 1).is_err());
    }
}
