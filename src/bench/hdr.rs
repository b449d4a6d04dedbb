//! `tessera bench hdr`: the Debevec merge of synthetic brackets of 5 x 512x512 RGB 8-bit
//! exposures (decoded, in memory), as a multiple of a plain memory copy of the bracket bytes in
//! the same run (issue 6: at most 15x on a 2-core machine; OpenCV's MergeDebevec takes about
//! 75x). Mertens fusion of the same bracket is timed alongside.
//!
//! With `--jpeg-brackets N` (default 4), N such brackets are also written as JPEG files
//! (`hdr synthetic --format jpeg`) and timed as `hdr merge` takes them: decoded (each exposure
//! by one thread, the next bracket while this one merges) and merged, files not written.
//! Run it with `--threads 1` and `--threads 2` to see the rank's threads at work.

use std::time::Instant;

use crate::comm::Comm;
use crate::error::Result;
use crate::ops::hdr::{self, debevec::WeightType, Pixels};

/// Parameters of `tessera bench hdr`.
#[derive(Clone, Debug, clap::Args)]
pub struct HdrBench {
    /// Image side.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Exposures per bracket.
    #[arg(long, default_value_t = 5)]
    pub exposures: usize,
    /// Repetitions; the best is reported.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// JPEG brackets decoded and merged as `hdr merge` does (0: none).
    #[arg(long, default_value_t = 4)]
    pub jpeg_brackets: usize,
    /// Directory for the JPEG brackets (made; files of the same names replaced).
    #[arg(long, default_value = "tessera-bench-hdr")]
    pub dir: std::path::PathBuf,
    /// cpu (the default) or cuda[:N]: the GPU kernel on a resident bracket against a device
    /// copy of its bytes.
    #[arg(long, default_value = "cpu")]
    pub device: crate::gpu::DeviceChoice,
}

fn best(repeat: usize, mut f: impl FnMut()) -> f64 {
    (0..repeat.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs the benchmark and prints a Markdown table on rank 0.
///
/// # Errors
/// None in practice (kept for the bench interface).
pub fn run(b: &HdrBench, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    if let crate::gpu::DeviceChoice::Cuda(_) = b.device {
        #[cfg(feature = "cuda")]
        return crate::bench::gpu::hdr(
            b.size,
            b.exposures,
            b.repeat,
            &crate::bench::gpu::open(b.device)?,
        );
        #[cfg(not(feature = "cuda"))]
        return Err(crate::error::Error::without_cuda("bench hdr --device cuda"));
    }
    let (images, ln_t) = hdr::synthetic_bracket(b.size, b.size, b.exposures, 1);
    // The synthetic camera's inverse (gamma 2.2, scale 8) as the response.
    let g: Vec<f64> = (0..256)
        .map(|z| ((f64::from(z).max(0.5) / 255.0).powf(2.2) / 8.0).ln())
        .collect();
    let g = vec![g.clone(), g.clone(), g];
    let bytes: Vec<u8> = images
        .iter()
        .flat_map(|i| match &i.pixels {
            Pixels::U8(v) => v.clone(),
            Pixels::U16(_) => unreachable!("8-bit synthetic bracket"),
        })
        .collect();
    let mut copy = vec![0u8; bytes.len()];
    copy.copy_from_slice(&bytes);
    let memcpy = best(b.repeat, || {
        copy.copy_from_slice(std::hint::black_box(&bytes));
        std::hint::black_box(&copy);
    });
    let mut unusable = 0;
    let debevec = best(b.repeat, || {
        let m = hdr::merge_debevec(&images, &ln_t, &g, WeightType::Triangle);
        unusable = m.unusable;
        std::hint::black_box(&m.data);
    });
    let mertens = best(b.repeat.min(3), || {
        std::hint::black_box(hdr::merge_mertens(&images).data);
    });
    println!(
        "bench hdr: {} x {}x{} RGB 8-bit bracket ({:.1} MiB), {} rayon threads, best of {}; {} pixel(s) unusable in every exposure",
        b.exposures,
        b.size,
        b.size,
        bytes.len() as f64 / 1048576.0,
        rayon::current_num_threads(),
        b.repeat,
        unusable
    );
    println!();
    println!("| merge | memcpy s | merge s | merge / memcpy |");
    println!("|---|---|---|---|");
    println!(
        "| debevec | {memcpy:.5} | {debevec:.5} | {:.1}x |",
        debevec / memcpy
    );
    println!(
        "| mertens | {memcpy:.5} | {mertens:.5} | {:.1}x |",
        mertens / memcpy
    );
    if b.jpeg_brackets > 0 {
        jpeg_brackets(b, &g)?;
    }
    Ok(())
}

/// Writes the JPEG brackets and times decoding them, and decoding with the Debevec merge as
/// `hdr merge` runs them ([`hdr::each_decoded`]); prints one more table.
fn jpeg_brackets(b: &HdrBench, g: &[Vec<f64>]) -> Result<()> {
    hdr::write_synthetic(&hdr::SyntheticJob {
        output: b.dir.clone(),
        brackets: b.jpeg_brackets,
        exposures: b.exposures,
        size: b.size,
        seed: 1,
        format: hdr::SyntheticFormat::Jpeg,
        overwrite: true,
    })?;
    let scan = hdr::files::scan(&b.dir, false, 30, hdr::files::ExposureUnit::Us)?;
    let brackets: Vec<&hdr::files::Bracket> = scan.brackets.iter().collect();
    let repeat = b.repeat.clamp(1, 3);
    let decode = best(repeat, || {
        for bracket in &brackets {
            std::hint::black_box(hdr::load_bracket(bracket).expect("bench JPEG decodes"));
        }
    });
    let merge = best(repeat, || {
        hdr::each_decoded(&brackets, &hdr::load_bracket, |k, images| {
            let ln_t: Vec<f64> = brackets[k].frames.iter().map(|f| f.seconds.ln()).collect();
            let m = hdr::merge_debevec(&images, &ln_t, g, WeightType::Triangle);
            std::hint::black_box(&m.data);
            Ok(())
        })
        .expect("bench JPEG brackets merge");
    });
    let n = brackets.len();
    println!();
    println!(
        "JPEG brackets: {n} x {} exposures of {}x{} RGB (quality 90) in {}, {} rayon threads, best of {repeat}",
        b.exposures,
        b.size,
        b.size,
        b.dir.display(),
        rayon::current_num_threads()
    );
    println!();
    println!("| step | s | s per bracket |");
    println!("|---|---|---|");
    println!("| decode | {decode:.4} | {:.4} |", decode / n as f64);
    println!(
        "| decode + debevec (as hdr merge) | {merge:.4} | {:.4} |",
        merge / n as f64
    );
    Ok(())
}
