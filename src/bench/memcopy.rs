//! `tessera bench memcopy` (hidden): the memory-bandwidth reference of `bench scaling`. Every
//! rank copies a buffer of its own (source to destination, on its rayon threads) in lockstep
//! with the others, several times; the job's aggregate rate of the best repetition (bytes of
//! every rank over the slowest rank's time) goes to rank 0. Launched like the operation at each
//! rank count, so its weak-scaling efficiency shows what ranks sharing one memory system can
//! reach at all.

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::comm::{Comm, ReduceOp};
use crate::error::{Error, Result};

/// Parameters of `tessera bench memcopy`.
#[derive(Clone, Debug, clap::Args)]
pub struct MemcopyBench {
    /// MiB each rank copies per repetition (it holds twice that: source and destination).
    #[arg(long, default_value_t = 256)]
    pub mib: u64,
    /// Repetitions; the best (of the slowest rank's times) is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Where rank 0 writes the result (JSON); printed only when absent.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The job's copy rate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyRate {
    pub ranks: usize,
    pub threads_per_rank: usize,
    pub bytes_per_rank: u64,
    /// The best repetition's time of its slowest rank.
    pub seconds: f64,
    /// Bytes copied by all ranks per second (each byte read once and written once).
    pub gb_per_s: f64,
}

/// Pieces the copy is split into among rayon's threads.
const PIECE: usize = 1 << 20;

/// Runs the copy on every rank; rank 0 reports the job's rate.
///
/// # Errors
/// Too little memory, or the result cannot be written.
pub fn run(b: &MemcopyBench, comm: &dyn Comm) -> Result<()> {
    if b.mib == 0 {
        return Err(Error::parameter("mib", "must be at least 1"));
    }
    let bytes = crate::grid::checked_mul("mib", b.mib, 1 << 20)?;
    crate::exec::memory::check(
        &format!("--mib {}: source and destination of the copy", b.mib),
        crate::grid::checked_mul("mib", bytes, 2)?,
    )?;
    let words = crate::grid::to_usize("mib", bytes / 8)?;
    // Both buffers are touched (page faults taken) before the clock runs, on the threads that
    // copy, so that first-touch places the pages where they are used.
    let src: Vec<u64> = (0..words as u64).into_par_iter().collect();
    let mut dst = vec![0u64; words];
    dst.par_chunks_mut(PIECE).for_each(|d| d.fill(1));
    let mut best = f64::INFINITY;
    for _ in 0..b.repeat.max(1) {
        comm.barrier();
        let t = Instant::now();
        dst.par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s));
        let mut slowest = [t.elapsed().as_secs_f64()];
        comm.all_reduce_f64(&mut slowest, ReduceOp::Max);
        best = best.min(slowest[0]);
    }
    std::hint::black_box(&dst);
    if dst[words - 1] != src[words - 1] {
        return Err(Error::parameter("mib", "the copy did not copy"));
    }
    if !comm.is_root() {
        return Ok(());
    }
    let rate = CopyRate {
        ranks: comm.size(),
        threads_per_rank: rayon::current_num_threads(),
        bytes_per_rank: bytes,
        seconds: best,
        gb_per_s: (bytes * comm.size() as u64) as f64 / best.max(1e-9) / 1e9,
    };
    let text = serde_json::to_string_pretty(&rate).unwrap_or_default();
    match &b.json {
        Some(path) => crate::io::safety::write_bytes(path, false, text.as_bytes()),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}
