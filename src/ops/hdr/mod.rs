//! `tessera hdr`: all-sky camera exposure brackets to calibrated radiance.
//!
//! - `calibrate`: Debevec response curve from a spread of brackets (each rank samples its share
//!   of the chosen brackets, rank 0 solves, the curve is broadcast), saved as `response.npz`
//!   (`response` (256, C) in the log domain, `metadata` JSON) with `response_curve.png`.
//! - `lne-range`: the global (min ln E, max ln E) over every bracket.
//! - `merge`: one radiance image per bracket (Debevec, or Mertens exposure fusion), as OpenEXR
//!   or `.npy` files named by timestamp in the input's directory layout, or one Zarr array.
//!
//! Brackets are the units: split among ranks in contiguous runs, each processed whole.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod debevec;
pub mod files;
#[cfg(test)]
mod harness;
pub mod mertens;
pub mod npz;
pub mod output;
pub mod params;
pub mod plot;

use std::path::{Path, PathBuf};

use rand::seq::index;
use rand::{Rng, SeedableRng};

use crate::comm::{Comm, ReduceOp};
use crate::error::{Error, Result};
use crate::grid::partition_contiguous;
use crate::io::safety::{self, Place, Written};
use crate::io::Block;
use debevec::{Sample, WeightType};
use files::Bracket;
pub use params::{
    CalibrateJob, Format, MergeJob, Method, Preview, RangeJob, ScanOptions, SyntheticFormat,
    SyntheticJob, Technique,
};

/// The response plot written beside a response file: `<stem>_curve.png`, so the default
/// `response.npz` gets the original tool's `response_curve.png`, and two responses calibrated
/// into one directory keep a plot each.
fn response_plot(response: &std::path::Path) -> PathBuf {
    let stem = response.file_stem().unwrap_or_default().to_string_lossy();
    response.with_file_name(format!("{stem}_curve.png"))
}

/// What a scan reads: the directory's files, or with `--recursive` the whole tree (no output
/// may go inside it, where a later scan would find it).
pub fn scan_input(scan: &ScanOptions) -> Place {
    if scan.recursive {
        Place::Path(scan.input.clone())
    } else {
        Place::Directory(scan.input.clone())
    }
}

/// Everything `hdr merge` reads.
pub fn merge_inputs(job: &MergeJob) -> Vec<Place> {
    let mut inputs = vec![scan_input(&job.scan)];
    inputs.extend(job.response.iter().map(|r| Place::Path(r.clone())));
    inputs
}

/// The brackets of `scan`, with what was left out reported.
///
/// # Errors
/// A bad directory or `--round-ts-to`, or no usable bracket.
pub fn find_brackets(scan: &ScanOptions, comm: &dyn Comm) -> Result<Vec<Bracket>> {
    // Rank 0 walks the tree and sends the brackets: one listing of a large archive on the
    // shared file system, not one per rank.
    let mut bytes = Vec::new();
    crate::comm::on_root(comm, || {
        scan_on_root(scan).map(|b| bytes = serde_json::to_vec(&b).unwrap_or_default())
    })?;
    comm.broadcast(&mut bytes, 0);
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_file(&scan.input, format!("bracket list from rank 0: {e}")))
}

/// [`files::scan`] with what was left out reported; an error when no bracket remains.
fn scan_on_root(scan: &ScanOptions) -> Result<Vec<Bracket>> {
    let round = files::parse_round(&scan.round_ts_to)?;
    let found = files::scan(&scan.input, scan.recursive, round, scan.exposure_unit)?;
    if !found.unparsed.is_empty() {
        let shown: Vec<String> = found
            .unparsed
            .iter()
            .take(20)
            .map(|p| p.display().to_string())
            .collect();
        tracing::warn!(
            "{} image file(s) not named YYYYmmddHHMMSS_<EXPO>.<ext>, left out: {}{}",
            found.unparsed.len(),
            shown.join(", "),
            if found.unparsed.len() > 20 {
                ", ..."
            } else {
                ""
            }
        );
    }
    for (path, why) in &found.impossible {
        tracing::warn!(
            "{}: left out: its name has an impossible date or time, {why}",
            path.display()
        );
    }
    for (stem, why) in &found.skipped {
        tracing::warn!("bracket {} skipped: {why}", stem.display());
    }
    if found.brackets.is_empty() {
        return Err(Error::bad_file(
            &scan.input,
            format!(
                "no bracket of 2 or more exposures ({} skipped, {} unparsed names, {} names with impossible dates)",
                found.skipped.len(),
                found.unparsed.len(),
                found.impossible.len()
            ),
        ));
    }
    Ok(found.brackets)
}

/// One decoded exposure, planar (C, Y, X), C = 1 or 3 (alpha dropped).
pub enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Pixels,
}

impl Image {
    fn plane_u8(&self, c: usize) -> &[u8] {
        let n = self.height * self.width;
        match &self.pixels {
            Pixels::U8(v) => &v[c * n..(c + 1) * n],
            Pixels::U16(_) => unreachable!("8-bit checked by the caller"),
        }
    }
    fn bits(&self) -> u32 {
        match self.pixels {
            Pixels::U8(_) => 8,
            Pixels::U16(_) => 16,
        }
    }
}

/// (channels kept, height, width) of an image of `shape` ((Y, X) or (C, Y, X)): grey or RGB,
/// an alpha channel dropped.
fn kept_shape(path: &Path, shape: &[u64]) -> Result<(usize, usize, usize)> {
    let (c, h, w) = match shape[..] {
        [h, w] => (1, h as usize, w as usize),
        [c, h, w] => (c as usize, h as usize, w as usize),
        _ => return Err(Error::bad_file(path, "not a 2-D image")),
    };
    let keep = match c {
        1 | 2 => 1,
        3 | 4 => 3,
        _ => {
            return Err(Error::bad_file(
                path,
                format!("{c} channels (grey or RGB expected)"),
            ))
        }
    };
    Ok((keep, h, w))
}

/// (channels, height, width) of an exposure as [`load`] gives it, from its header only.
///
/// # Errors
/// As [`load`], for what the header shows.
pub fn frame_shape(path: &Path) -> Result<(usize, usize, usize)> {
    kept_shape(path, &crate::io::images::probe(path)?.shape)
}

/// Decodes one exposure.
///
/// # Errors
/// Unreadable or corrupt files, and pixel types other than 8/16-bit grey or RGB(A).
pub fn load(path: &Path) -> Result<Image> {
    let block = crate::io::images::read(path)?;
    let (keep, h, w) = kept_shape(path, &block.shape())?;
    let n = keep * h * w;
    let pixels = match block {
        Block::U8(a) => Pixels::U8(a.as_slice().expect("C-order")[..n].to_vec()),
        Block::U16(a) => Pixels::U16(a.as_slice().expect("C-order")[..n].to_vec()),
        other => {
            return Err(Error::bad_file(
                path,
                format!("{} pixels (8- or 16-bit integers expected)", other.dtype()),
            ))
        }
    };
    Ok(Image {
        channels: keep,
        height: h,
        width: w,
        pixels,
    })
}

/// Decodes a bracket's exposures and checks that they agree in size, channels and depth.
///
/// # Errors
/// As [`load`], and exposures that differ.
pub fn load_bracket(b: &Bracket) -> Result<Vec<Image>> {
    use rayon::prelude::*;
    // Each exposure decoded by one thread of the rank's pool; kept in frame order, so the
    // first bad frame is the one reported, as when they were decoded one after another.
    let decoded: Vec<Result<Image>> = b.frames.par_iter().map(|f| load(&f.path)).collect();
    let images = decoded.into_iter().collect::<Result<Vec<_>>>()?;
    let first = &images[0];
    for (img, f) in images.iter().zip(&b.frames).skip(1) {
        let a = (first.channels, first.height, first.width, first.bits());
        let o = (img.channels, img.height, img.width, img.bits());
        if a != o {
            return Err(Error::bad_file(
                &f.path,
                format!(
                    "differs from {} in its bracket: {}x{}x{} {}-bit against {}x{}x{} {}-bit (channels x height x width)",
                    b.frames[0].path.display(),
                    o.0, o.1, o.2, o.3, a.0, a.1, a.2, a.3
                ),
            ));
        }
    }
    Ok(images)
}

fn require_8bit(images: &[Image], b: &Bracket, what: &str) -> Result<()> {
    if images[0].bits() != 8 {
        return Err(Error::bad_file(
            &b.frames[0].path,
            format!("16-bit images given to {what}, which has 256 levels; use 8-bit images or --method mertens"),
        ));
    }
    Ok(())
}

/// Hands each bracket's decoded exposures to `each`, in order, stopping at the first error.
/// The next bracket is decoded on the rank's threads while `each` works on the current one:
/// a bracket has few exposures (5 on 2 threads take 3 rounds), so decoding one bracket at a
/// time leaves threads idle. At most two brackets are decoded at once.
///
/// # Errors
/// The first decoding or `each` error, in bracket order.
pub fn each_decoded<E>(
    brackets: &[&Bracket],
    decode: &(dyn Fn(&Bracket) -> Result<Vec<Image>> + Sync),
    mut each: E,
) -> Result<()>
where
    E: FnMut(usize, Vec<Image>) -> Result<()> + Send,
{
    let mut next = brackets.first().map(|b| decode(b));
    for i in 0..brackets.len() {
        let current = next.take().expect("decoded one bracket ahead")?;
        let (ahead, done) = rayon::join(
            || brackets.get(i + 1).map(|b| decode(b)),
            || each(i, current),
        );
        done?;
        next = ahead;
    }
    Ok(())
}

/// The brackets calibration uses: all of them, or `max` spread evenly.
fn chosen(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        (0..n).collect()
    } else {
        (0..max).map(|i| i * n / max).collect()
    }
}

/// Sample positions of one bracket (seeded by the seed and the bracket's index).
fn positions(job: &CalibrateJob, images: &[Image], which: usize) -> Vec<usize> {
    let n = images[0].height * images[0].width;
    let want = job.samples_per_image.min(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        job.seed ^ (which as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    match job.sample_technique {
        Technique::Random => index::sample(&mut rng, n, want).into_vec(),
        Technique::Histogram => {
            // Buckets of the middle exposure's grey value inside the clip range, visited in
            // turn, a random unused position from each.
            let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); 256];
            for (i, grey) in grey_values(&images[images.len() / 2])
                .into_iter()
                .enumerate()
            {
                if (job.low_clip..=job.high_clip).contains(&grey) {
                    buckets[grey as usize].push(i);
                }
            }
            let mut out = Vec::with_capacity(want);
            while out.len() < want && buckets.iter().any(|b| !b.is_empty()) {
                for b in buckets.iter_mut().filter(|b| !b.is_empty()) {
                    if out.len() == want {
                        break;
                    }
                    let k = rng.random_range(0..b.len());
                    out.push(b.swap_remove(k));
                }
            }
            out
        }
    }
}

/// Each pixel's grey value (the rounded mean of its channels), in rows on the rank's threads.
fn grey_values(image: &Image) -> Vec<u8> {
    use rayon::prelude::*;
    let c = image.channels;
    let planes: Vec<&[u8]> = (0..c).map(|k| image.plane_u8(k)).collect();
    let mut grey = vec![0u8; image.height * image.width];
    grey.par_chunks_mut(image.width.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let start = row * image.width;
            for (j, g) in out.iter_mut().enumerate() {
                let sum: u32 = planes.iter().map(|p| u32::from(p[start + j])).sum();
                *g = ((sum + c as u32 / 2) / c as u32) as u8;
            }
        });
    grey
}

/// Calibration samples of one decoded bracket, per channel.
fn sample_bracket(
    job: &CalibrateJob,
    b: &Bracket,
    images: &[Image],
    which: usize,
) -> Result<Vec<Vec<Sample>>> {
    require_8bit(images, b, "the Debevec calibration")?;
    let ln_t: Vec<f64> = b.frames.iter().map(|f| f.seconds.ln()).collect();
    Ok(sample_images(job, images, &ln_t, which))
}

/// Calibration samples of one bracket's 8-bit exposures (shortest first, `ln_t` their log
/// times), the `which`-th of the archive, per channel.
fn sample_images(
    job: &CalibrateJob,
    images: &[Image],
    ln_t: &[f64],
    which: usize,
) -> Vec<Vec<Sample>> {
    let pos = positions(job, images, which);
    let clip = job.low_clip..=job.high_clip;
    (0..images[0].channels)
        .map(|c| {
            pos.iter()
                .map(|&i| {
                    images
                        .iter()
                        .zip(ln_t)
                        .map(|(img, &lt)| (img.plane_u8(c)[i], lt))
                        .filter(|(z, _)| clip.contains(z))
                        .collect::<Sample>()
                })
                .filter(|s| s.len() >= 2)
                .collect()
        })
        .collect()
}

/// The response (256 x C, log domain) of brackets held in memory, as [`calibrate`] computes
/// it from an archive of the same brackets in the same order: the same brackets chosen, the
/// same positions sampled, the same solve. `brackets[i]` is the i-th bracket's 8-bit
/// exposures, shortest first, with their log exposure times. `job`'s scan and response
/// fields are not used.
///
/// # Errors
/// Bad parameters (as `tessera hdr calibrate`), brackets that differ in channels or sizes
/// within a bracket, or no usable samples.
pub fn calibrate_images(
    job: &CalibrateJob,
    brackets: &[(Vec<Image>, Vec<f64>)],
) -> Result<Vec<Vec<f64>>> {
    check_calibration(job)?;
    let bad = |m: String| Error::parameter("brackets", m);
    if brackets.is_empty() {
        return Err(bad("no brackets".into()));
    }
    for (i, (images, ln_t)) in brackets.iter().enumerate() {
        let first = images
            .first()
            .ok_or_else(|| bad(format!("bracket {i} has no exposures")))?;
        if images.len() != ln_t.len() {
            return Err(bad(format!(
                "bracket {i}: {} exposures but {} times",
                images.len(),
                ln_t.len()
            )));
        }
        let same = |im: &Image| {
            (im.channels, im.height, im.width, im.bits())
                == (first.channels, first.height, first.width, 8)
        };
        if !images.iter().all(same) {
            return Err(bad(format!(
                "bracket {i}: its exposures must all be 8-bit images of one size"
            )));
        }
        if first.channels != brackets[0].0[0].channels {
            return Err(bad(
                "the brackets mix grey and RGB images; calibrate each camera on its own".into(),
            ));
        }
    }
    let use_ = chosen(brackets.len(), job.max_processed_groups);
    let channels = brackets[0].0[0].channels;
    let mut all: Vec<Vec<Sample>> = vec![Vec::new(); channels];
    for &i in &use_ {
        let (images, ln_t) = &brackets[i];
        for (c, s) in sample_images(job, images, ln_t, i).into_iter().enumerate() {
            all[c].extend(s);
        }
    }
    if all.iter().any(Vec::is_empty) {
        return Err(bad(format!(
            "no usable samples (values inside [{}, {}] in at least 2 exposures)",
            job.low_clip, job.high_clip
        )));
    }
    Ok(solve_channels(job, &all))
}

/// The response of each channel from its samples, the channels solved in parallel.
fn solve_channels(job: &CalibrateJob, samples: &[Vec<Sample>]) -> Vec<Vec<f64>> {
    use rayon::prelude::*;
    let solve = debevec::Solve {
        smoothness: job.smoothness,
        weight: job.weight_type,
    };
    samples
        .par_iter()
        .map(|s| debevec::solve_channel(s, solve))
        .collect()
}

/// Samples as bytes: channels, then per channel the sample count and each sample's
/// observations (count, then z and ln t).
fn pack(per_channel: &[Vec<Sample>]) -> Vec<u8> {
    let mut out = (per_channel.len() as u32).to_le_bytes().to_vec();
    for samples in per_channel {
        out.extend((samples.len() as u32).to_le_bytes());
        for s in samples {
            out.extend((s.len() as u32).to_le_bytes());
            for &(z, lt) in s {
                out.push(z);
                out.extend(lt.to_le_bytes());
            }
        }
    }
    out
}

fn unpack(bytes: &[u8]) -> Vec<Vec<Sample>> {
    let mut at = 0usize;
    let count = |at: &mut usize| {
        let v = u32::from_le_bytes(bytes[*at..*at + 4].try_into().expect("4 bytes"));
        *at += 4;
        v as usize
    };
    let channels = count(&mut at);
    (0..channels)
        .map(|_| {
            let n = count(&mut at);
            (0..n)
                .map(|_| {
                    let k = count(&mut at);
                    (0..k)
                        .map(|_| {
                            let z = bytes[at];
                            let lt =
                                f64::from_le_bytes(bytes[at + 1..at + 9].try_into().expect("8"));
                            at += 9;
                            (z, lt)
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The calibration's parameters checked, naming their flags.
///
/// # Errors
/// [`Error::Parameter`] for the first bad one.
fn check_calibration(job: &CalibrateJob) -> Result<()> {
    if job.low_clip >= job.high_clip {
        return Err(Error::parameter(
            "low-clip",
            format!(
                "{} must be below --high-clip {}",
                job.low_clip, job.high_clip
            ),
        ));
    }
    if job.samples_per_image == 0 || job.max_processed_groups == 0 {
        return Err(Error::parameter(
            if job.samples_per_image == 0 {
                "samples-per-image"
            } else {
                "max-processed-groups"
            },
            "must be at least 1",
        ));
    }
    if !(job.smoothness >= 0.0 && job.smoothness.is_finite()) {
        return Err(Error::parameter("smoothness", "must be finite and >= 0"));
    }
    Ok(())
}

/// `tessera hdr calibrate`: returns the response (256 x C, log domain) on every rank.
///
/// # Errors
/// Bad parameters, inputs or output (see the module and [`files`] docs).
pub fn calibrate(job: &CalibrateJob, comm: &dyn Comm) -> Result<Vec<Vec<f64>>> {
    check_calibration(job)?;
    let writes = [job.response.clone(), response_plot(&job.response)];
    let written: Vec<Written> = writes
        .iter()
        .map(|w| Written::new("response", Place::Path(w.clone())))
        .collect();
    safety::check_places(&[scan_input(&job.scan)], &written)?;
    for w in &writes {
        safety::check_side_file(w, job.overwrite)?;
    }
    let started = std::time::Instant::now();
    let brackets = find_brackets(&job.scan, comm)?;
    let use_ = chosen(brackets.len(), job.max_processed_groups);
    let mine = &use_[partition_contiguous(use_.len(), comm.size())[comm.rank()].clone()];
    let to_sample: Vec<&Bracket> = mine.iter().map(|&i| &brackets[i]).collect();
    let mut sampled: Vec<Vec<Vec<Sample>>> = Vec::with_capacity(mine.len());
    let sampling = each_decoded(&to_sample, &load_bracket, |k, images| {
        sampled.push(sample_bracket(job, to_sample[k], &images, mine[k])?);
        Ok(())
    });
    crate::comm::agree(comm, sampling)?;
    // Every bracket must have the same channel count.
    let channels: Vec<usize> = sampled.iter().map(Vec::len).collect();
    let mut c_range = [
        channels.iter().copied().min().unwrap_or(usize::MAX) as u64,
        channels.iter().copied().max().unwrap_or(0) as u64,
    ];
    comm.all_reduce_u64(&mut c_range[..1], ReduceOp::Min);
    comm.all_reduce_u64(&mut c_range[1..], ReduceOp::Max);
    if c_range[0] != c_range[1] {
        return Err(Error::bad_file(
            &job.scan.input,
            "the chosen brackets mix grey and RGB images; calibrate each camera on its own",
        ));
    }
    let channels = c_range[0] as usize;
    let mut mine_packed: Vec<Vec<Sample>> = vec![Vec::new(); channels];
    for per_bracket in sampled {
        for (c, s) in per_bracket.into_iter().enumerate() {
            mine_packed[c].extend(s);
        }
    }
    let gathered = comm.gather(&pack(&mine_packed), 0);
    let mut bytes = Vec::new();
    let mut result = Ok(());
    if let Some(parts) = gathered {
        let mut all: Vec<Vec<Sample>> = vec![Vec::new(); channels];
        for part in parts {
            for (c, s) in unpack(&part).into_iter().enumerate() {
                all[c].extend(s);
            }
        }
        let n_samples: Vec<usize> = all.iter().map(Vec::len).collect();
        let response = solve_channels(job, &all);
        result = save_response(job, &brackets, &use_, &n_samples, &response, started);
        for g in &response {
            for v in g {
                bytes.extend(v.to_le_bytes());
            }
        }
    }
    crate::comm::agree(comm, result)?;
    comm.broadcast(&mut bytes, 0);
    let flat: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    Ok(flat.chunks_exact(256).map(<[f64]>::to_vec).collect())
}

fn save_response(
    job: &CalibrateJob,
    brackets: &[Bracket],
    used: &[usize],
    samples: &[usize],
    response: &[Vec<f64>],
    started: std::time::Instant,
) -> Result<()> {
    if samples.contains(&0) {
        return Err(Error::bad_file(
            &job.scan.input,
            format!(
                "no usable samples (values inside [{}, {}] in at least 2 exposures) in the chosen brackets",
                job.low_clip, job.high_clip
            ),
        ));
    }
    let c = response.len();
    let array = ndarray::Array2::from_shape_fn((256, c), |(z, k)| response[k][z]);
    let metadata = serde_json::json!({
        "created": chrono_like_now(),
        "input_directory": job.scan.input.display().to_string(),
        "groups_used": used.iter().map(|&i| brackets[i].stem().display().to_string()).collect::<Vec<_>>(),
        "n_groups_total": brackets.len(),
        "samples_per_image": job.samples_per_image,
        "samples_per_channel": samples,
        "sample_technique": job.sample_technique,
        "smoothness": job.smoothness,
        "weight_type": job.weight_type,
        "low_clip": job.low_clip,
        "high_clip": job.high_clip,
        "seed": job.seed,
        "round_ts_to": job.scan.round_ts_to,
        "exposure_unit": job.scan.exposure_unit,
        "algorithm": "debevec",
        "domain": "log",
        "seconds": started.elapsed().as_secs_f64(),
        "tessera_version": env!("CARGO_PKG_VERSION"),
    });
    safety::write_file(&job.response, job.overwrite, |tmp| {
        npz::write_response(tmp, array.view(), &metadata)
            .map_err(|e| Error::bad_file(&job.response, e.to_string()))
    })?;
    let plot_path = response_plot(&job.response);
    safety::write_file(&plot_path, job.overwrite, |tmp| {
        plot::response(tmp, response)
    })?;
    println!(
        "hdr calibrate: {} bracket(s) of {}, {} samples per channel -> {} and {}",
        used.len(),
        brackets.len(),
        samples[0],
        job.response.display(),
        plot_path.display()
    );
    Ok(())
}

/// UTC now as `YYYY-mm-ddTHH:MM:SSZ`.
fn chrono_like_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t = files::format_time(secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &t[0..4],
        &t[4..6],
        &t[6..8],
        &t[8..10],
        &t[10..12],
        &t[12..14]
    )
}

/// Reads and checks a response file: (256, C) finite values.
///
/// # Errors
/// Missing file, wrong keys, shape or values.
pub fn read_response(path: &Path) -> Result<Vec<Vec<f64>>> {
    let (r, _) = npz::read_response(path).map_err(|e| Error::bad_file(path, e.to_string()))?;
    if r.ncols() != 1 && r.ncols() != 3 {
        return Err(Error::bad_file(
            path,
            format!(
                "'response' has shape {:?}; (256, 1) or (256, 3) expected",
                r.shape()
            ),
        ));
    }
    if r.iter().any(|v| !v.is_finite()) {
        return Err(Error::bad_file(
            path,
            "'response' holds NaN or infinite values",
        ));
    }
    Ok((0..r.ncols()).map(|c| r.column(c).to_vec()).collect())
}

/// `tessera hdr lne-range`: (min ln E, max ln E) over every bracket, the bounds of what the
/// Debevec merge can give: min over z and channels of g(z), minus ln of the longest exposure;
/// max of g(z) minus ln of the shortest.
///
/// # Errors
/// Bad inputs or response file.
pub fn lne_range(job: &RangeJob, comm: &dyn Comm) -> Result<(f64, f64)> {
    let response = read_response(&job.response)?;
    let brackets = find_brackets(&job.scan, comm)?;
    let g_min = response
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let g_max = response
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let mine = partition_contiguous(brackets.len(), comm.size())[comm.rank()].clone();
    let mut lo = [f64::INFINITY];
    let mut hi = [f64::NEG_INFINITY];
    for b in &brackets[mine] {
        let short = b.frames[0].seconds.ln();
        let long = b.frames[b.frames.len() - 1].seconds.ln();
        lo[0] = lo[0].min(g_min - long);
        hi[0] = hi[0].max(g_max - short);
    }
    comm.all_reduce_f64(&mut lo, ReduceOp::Min);
    comm.all_reduce_f64(&mut hi, ReduceOp::Max);
    Ok((lo[0], hi[0]))
}

/// One bracket merged: (Y, X, C) float32, interleaved, and how many (pixel, channel) values
/// had no usable exposure (Debevec).
pub struct Merged {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
    pub unusable: u64,
}

/// Debevec merge of decoded 8-bit exposures (shortest first) with response `g` per channel.
pub fn merge_debevec(images: &[Image], ln_t: &[f64], g: &[Vec<f64>], kind: WeightType) -> Merged {
    use rayon::prelude::*;
    let (c, h, w) = (images[0].channels, images[0].height, images[0].width);
    let n = h * w;
    let per_channel: Vec<_> = (0..c)
        .map(|k| {
            let tables = debevec::merge_tables(&g[k], ln_t, kind);
            let short = debevec::single_exposure(&g[k], ln_t[0]);
            let long = debevec::single_exposure(&g[k], ln_t[ln_t.len() - 1]);
            (tables, short, long)
        })
        .collect();
    let mut data = vec![0.0f32; n * c];
    const ROWS: usize = 16;
    let unusable: u64 = data
        .par_chunks_mut(ROWS * w * c)
        .enumerate()
        .map(|(block, out)| {
            let start = block * ROWS * w;
            let end = (start + ROWS * w).min(n);
            let channels: Vec<debevec::ChannelMerge> = per_channel
                .iter()
                .enumerate()
                .map(|(k, (tables, short, long))| debevec::ChannelMerge {
                    planes: images
                        .iter()
                        .map(|img| &img.plane_u8(k)[start..end])
                        .collect(),
                    tables,
                    fallback: (short, long),
                })
                .collect();
            debevec::merge_pixels(&channels, out)
        })
        .sum::<u64>();
    Merged {
        height: h,
        width: w,
        channels: c,
        data,
        unusable,
    }
}

/// Mertens fusion of decoded exposures (8 or 16 bit, scaled to [0, 1]).
pub fn merge_mertens(images: &[Image]) -> Merged {
    use rayon::prelude::*;
    let (c, h, w) = (images[0].channels, images[0].height, images[0].width);
    // One exposure per thread (each scaled and interleaved whole by it).
    let scaled: Vec<ndarray::Array3<f32>> = images
        .par_iter()
        .map(|img| {
            let planar: Vec<f32> = match &img.pixels {
                Pixels::U8(v) => v.iter().map(|&x| f32::from(x) / 255.0).collect(),
                Pixels::U16(v) => v.iter().map(|&x| f32::from(x) / 65535.0).collect(),
            };
            ndarray::Array3::from_shape_vec((c, h, w), planar)
                .expect("sizes checked")
                .permuted_axes([1, 2, 0])
                .as_standard_layout()
                .into_owned()
        })
        .collect();
    let views: Vec<_> = scaled.iter().map(|a| a.view()).collect();
    let fused = mertens::fuse(&views, mertens::MertensParams::default());
    Merged {
        height: h,
        width: w,
        channels: c,
        data: fused.as_standard_layout().iter().copied().collect(),
        unusable: 0,
    }
}

/// Where one rank merges brackets: its device (`--device`), the GPU merge when that is a GPU
/// (Debevec; Mertens always runs on the CPU), and the seconds spent decoding and merging.
#[derive(Default)]
pub struct Merger {
    pub device: crate::gpu::Selected,
    #[cfg(feature = "cuda")]
    gpu: Option<cuda::DebevecGpu>,
    seconds: std::sync::Mutex<(f64, f64)>,
}

impl Merger {
    pub fn new(device: crate::gpu::Selected) -> Merger {
        Merger {
            #[cfg(feature = "cuda")]
            gpu: match &device.backend {
                crate::gpu::Backend::Cuda(gpu) => Some(cuda::DebevecGpu::new(gpu.clone())),
                crate::gpu::Backend::Cpu => None,
            },
            device,
            seconds: Default::default(),
        }
    }

    /// Seconds spent decoding images and merging them, so far.
    pub fn seconds(&self) -> (f64, f64) {
        *self.seconds.lock().expect("seconds")
    }

    fn debevec(
        &self,
        images: &[Image],
        ln_t: &[f64],
        g: &[Vec<f64>],
        kind: WeightType,
    ) -> Result<Merged> {
        #[cfg(feature = "cuda")]
        if let Some(gpu) = &self.gpu {
            return gpu.merge(images, ln_t, g, kind);
        }
        Ok(merge_debevec(images, ln_t, g, kind))
    }

    /// Merges one bracket as the job asks.
    ///
    /// # Errors
    /// Bad images, images that do not fit the response, device failures.
    pub fn merge_bracket(
        &self,
        job: &MergeJob,
        b: &Bracket,
        g: Option<&[Vec<f64>]>,
    ) -> Result<Merged> {
        let images = self.decode(b)?;
        self.merge_decoded(job, b, &images, g)
    }

    /// Decodes a bracket's exposures ([`load_bracket`]), counting the seconds as decoding.
    ///
    /// # Errors
    /// As [`load_bracket`].
    pub fn decode(&self, b: &Bracket) -> Result<Vec<Image>> {
        let t = std::time::Instant::now();
        let images = load_bracket(b);
        self.seconds.lock().expect("seconds").0 += t.elapsed().as_secs_f64();
        images
    }

    /// Merges one decoded bracket as the job asks.
    ///
    /// # Errors
    /// Images that do not fit the response, device failures.
    pub fn merge_decoded(
        &self,
        job: &MergeJob,
        b: &Bracket,
        images: &[Image],
        g: Option<&[Vec<f64>]>,
    ) -> Result<Merged> {
        let t = std::time::Instant::now();
        let merged = match (job.method, g) {
            (Method::Debevec, Some(g)) => {
                require_8bit(images, b, "an 8-bit response")?;
                if images[0].channels != g.len() {
                    return Err(Error::bad_file(
                        &b.frames[0].path,
                        format!(
                            "{} channel(s), but the response has {}",
                            images[0].channels,
                            g.len()
                        ),
                    ));
                }
                let ln_t: Vec<f64> = b.frames.iter().map(|f| f.seconds.ln()).collect();
                self.debevec(images, &ln_t, g, job.weight_type)
            }
            (Method::Debevec, None) => Err(Error::parameter(
                "response",
                "required by --method debevec (make one with tessera hdr calibrate)",
            )),
            (Method::Mertens, _) => Ok(merge_mertens(images)),
        };
        self.seconds.lock().expect("seconds").1 += t.elapsed().as_secs_f64();
        merged
    }
}

/// `tessera hdr merge`.
///
/// # Errors
/// Bad parameters, inputs or output.
pub fn merge(job: &MergeJob, comm: &dyn Comm) -> Result<Vec<crate::exec::RunSummary>> {
    let g = match (job.method, &job.response) {
        (Method::Debevec, Some(path)) => Some(read_response(path)?),
        (Method::Debevec, None) => {
            return Err(Error::parameter(
                "response",
                "required by --method debevec (make one with tessera hdr calibrate)",
            ))
        }
        (Method::Mertens, _) => None,
    };
    let device = crate::gpu::select(
        job.device,
        job.gpu_memory_limit.as_deref(),
        comm,
        "hdr merge",
        job.method == Method::Debevec,
    )?;
    let brackets = find_brackets(&job.scan, comm)?;
    let merge = output::Merge {
        job,
        brackets: &brackets,
        g: g.as_deref(),
        merger: &Merger::new(device),
    };
    output::write(merge, comm)
}

impl SyntheticFormat {
    fn extension(self) -> &'static str {
        match self {
            SyntheticFormat::Png => "png",
            SyntheticFormat::Jpeg => "jpg",
        }
    }

    /// Writes interleaved 8-bit RGB as this format.
    fn write(self, path: &Path, rgb: &[u8], width: usize, height: usize) -> image::ImageResult<()> {
        let (w, h, rgb8) = (width as u32, height as u32, image::ExtendedColorType::Rgb8);
        match self {
            SyntheticFormat::Png => image::save_buffer(path, rgb, w, h, rgb8),
            SyntheticFormat::Jpeg => std::fs::File::create(path)
                .map_err(image::ImageError::IoError)
                .and_then(|f| {
                    let sink = std::io::BufWriter::new(f);
                    image::codecs::jpeg::JpegEncoder::new_with_quality(sink, 90)
                        .encode(rgb, w, h, rgb8)
                }),
        }
    }
}

/// Writes the brackets of [`synthetic_bracket`] as RGB PNG or JPEG files.
///
/// # Errors
/// Bad sizes, or the files cannot be written.
pub fn write_synthetic(job: &SyntheticJob) -> Result<()> {
    if job.brackets == 0 || job.exposures < 2 || job.size == 0 {
        return Err(Error::parameter(
            "exposures",
            "need at least 1 bracket of 2 exposures and a size of 1 or more",
        ));
    }
    // One bracket is made in memory at a time (f64 radiance, u8 exposures); every bracket
    // goes to disk. Both are checked before anything is made or written.
    let grid = |flag| crate::grid::checked_product(flag, &[job.size as u64, job.size as u64, 3]);
    let pixels = grid("size")?;
    let bracket = crate::grid::checked_mul("exposures", pixels, job.exposures as u64)?;
    let memory = crate::grid::checked_add("size", bracket, pixels.saturating_mul(8))?;
    crate::exec::memory::check(
        &format!(
            "one bracket of --exposures {} RGB images of --size {}",
            job.exposures, job.size
        ),
        memory,
    )?;
    let disk = crate::grid::checked_mul("brackets", bracket, job.brackets as u64)?;
    let free = crate::io::safety::free_disk_bytes(&job.output);
    if disk > free {
        return Err(Error::parameter(
            "brackets",
            format!(
                "{} brackets need up to {} on disk, {} free under {}",
                job.brackets,
                crate::units::human_bytes(disk),
                crate::units::human_bytes(free),
                job.output.display()
            ),
        ));
    }
    std::fs::create_dir_all(&job.output)
        .map_err(|e| Error::bad_file(&job.output, e.to_string()))?;
    let start = files::parse_time("20240601120000").expect("valid time");
    let path_of = |b: usize, expo: u64| {
        let name = format!(
            "{}_{expo}.{}",
            files::format_time(start + 30 * b as i64),
            job.format.extension()
        );
        job.output.join(name)
    };
    // The exposure times are the same in every bracket (only the sky changes with the seed).
    let ln_times = synthetic_bracket(1, 1, job.exposures, 0).1;
    let exposure = |lt: f64| (lt.exp() * 1e6).round() as u64;
    // Every name is checked before the first file is written.
    for b in 0..job.brackets {
        for &lt in &ln_times {
            safety::check_side_file(&path_of(b, exposure(lt)), job.overwrite)?;
        }
    }
    for b in 0..job.brackets {
        let (images, ln_t) = synthetic_bracket(
            job.size,
            job.size,
            job.exposures,
            job.seed.wrapping_add(b as u64),
        );
        for (img, lt) in images.iter().zip(&ln_t) {
            let path = path_of(b, exposure(*lt));
            let Pixels::U8(planar) = &img.pixels else {
                unreachable!("8-bit synthetic images")
            };
            let n = img.height * img.width;
            let rgb: Vec<u8> = (0..n * 3).map(|i| planar[(i % 3) * n + i / 3]).collect();
            safety::write_file(&path, job.overwrite, |tmp| {
                job.format
                    .write(tmp, &rgb, img.width, img.height)
                    .map_err(|e| Error::bad_file(&path, e.to_string()))
            })?;
        }
    }
    println!(
        "hdr synthetic: {} bracket(s) of {} exposures ({}x{} RGB, gamma 2.2 camera) in {}",
        job.brackets,
        job.exposures,
        job.size,
        job.size,
        job.output.display()
    );
    Ok(())
}

/// A synthetic bracket (RGB, shortest exposure first, x4 steps from 1 ms) of a random scene
/// seen through a gamma 2.2 camera, and its ln exposure times: the bench's input.
pub fn synthetic_bracket(
    height: usize,
    width: usize,
    exposures: usize,
    seed: u64,
) -> (Vec<Image>, Vec<f64>) {
    // A sky: a vertical gradient, a sun (2^6 brighter) off centre, a blue tint and a little
    // noise; radiance spans about 2^10, seen through a gamma 2.2 camera.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (sun_y, sun_x) = (
        height as f64 * 0.3,
        width as f64 * (0.3 + 0.4 * rng.random::<f64>()),
    );
    let sigma = 0.06 * height.min(width) as f64;
    let tint = [0.8, 0.9, 1.2];
    let radiance: Vec<f64> = (0..height * width * 3)
        .map(|i| {
            let (c, p) = (i / (height * width), i % (height * width));
            let (y, x) = ((p / width) as f64, (p % width) as f64);
            let d2 = (y - sun_y).powi(2) + (x - sun_x).powi(2);
            let stops = -4.0 + 3.0 * y / height as f64 + 6.0 * (-d2 / (2.0 * sigma * sigma)).exp();
            tint[c] * 2f64.powf(stops + rng.random_range(-0.1..0.1))
        })
        .collect();
    let ln_t: Vec<f64> = (0..exposures)
        .map(|j| (1e-3 * 4f64.powi(j as i32)).ln())
        .collect();
    let images = ln_t
        .iter()
        .map(|&lt| {
            let mut planar = vec![0u8; 3 * height * width];
            for (i, v) in planar.iter_mut().enumerate() {
                let x = (radiance[i] * lt.exp() * 8.0).min(1.0);
                *v = (255.0 * x.powf(1.0 / 2.2)).round() as u8;
            }
            Image {
                channels: 3,
                height,
                width,
                pixels: Pixels::U8(planar),
            }
        })
        .collect();
    (images, ln_t)
}
