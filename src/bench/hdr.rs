//! `tessera bench hdr`: the Debevec merge of synthetic brackets of 5 x 512x512 RGB 8-bit
//! exposures (decoded, in memory), as a multiple of a plain memory copy of the bracket bytes in
//! the same run (issue 6: at most 15x on a 2-core machine; OpenCV's MergeDebevec takes about
//! 75x). Mertens fusion of the same bracket is timed alongside.

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
        return Err(crate::error::Error::NotCompiled {
            what: "bench hdr --device cuda".into(),
            feature: "cuda",
        });
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
    Ok(())
}
