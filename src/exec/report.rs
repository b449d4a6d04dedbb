//! The run report (JSON): parameters, versions, rank count, bytes, seconds per phase and
//! throughput, with each rank's own numbers inside. Also the `--dry-run` plan text.

use super::UnitInfo;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Operation;
use crate::comm::Comm;
use crate::error::Result;
use crate::io::staging::Staging;

/// Seconds spent per phase on one rank. Compute and write overlap (they run on two threads),
/// so the phases may add up to more than the wall time.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PhaseTimes {
    /// Creating or reopening the output.
    pub setup: f64,
    /// Reading and decoding inputs, where an operation times it apart from its kernels
    /// (hdr merge's image decoding); otherwise part of `compute`.
    #[serde(default)]
    pub read: f64,
    /// Reading inputs and running kernels.
    pub compute: f64,
    /// Writing results.
    pub write: f64,
    /// Waiting for other ranks (agreement and progress collectives).
    pub sync: f64,
    /// Attributes, close, publish.
    pub finalize: f64,
}

/// One rank's numbers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RankStats {
    pub rank: usize,
    pub host: String,
    pub units: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub phases: PhaseTimes,
    /// Width of this rank's thread pool (exec::threads).
    #[serde(default)]
    pub threads: usize,
    /// The device this rank ran the kernels on, and (GPU) where its time went: transfers and
    /// kernels, seconds and bytes. Absent for operations without a `--device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::gpu::DeviceReport>,
}

/// The outcome of one `exec::run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub operation: String,
    pub output: String,
    pub ranks: usize,
    pub units_total: usize,
    pub units_resumed: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Bytes the published output takes on disk (after compression).
    pub bytes_on_disk: u64,
    /// Wall time of the slowest rank.
    pub seconds: f64,
    /// Uncompressed bytes written per second of wall time.
    pub throughput_mb_per_s: f64,
    pub per_rank: Vec<RankStats>,
    pub dry_run: bool,
    /// The run's identity (the job's parameters and what the plan derived from the inputs),
    /// by which `--resume` recognises a finished output as this job's.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub identity: Value,
    /// `--resume` found the output already complete, made with the same identity: nothing ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_complete: bool,
}

impl RunSummary {
    pub fn dry_run(operation: &str, output: &dyn std::fmt::Display, ranks: usize) -> Self {
        RunSummary {
            operation: operation.into(),
            output: output.to_string(),
            ranks,
            units_total: 0,
            units_resumed: 0,
            bytes_read: 0,
            bytes_written: 0,
            bytes_on_disk: 0,
            seconds: 0.0,
            throughput_mb_per_s: 0.0,
            per_rank: vec![],
            dry_run: true,
            identity: Value::Null,
            already_complete: false,
        }
    }
}

pub(super) fn summarize<Op: Operation>(
    op: &Op,
    comm: &dyn Comm,
    stats: RankStats,
    stagings: &[Staging],
    resumed: usize,
) -> RunSummary {
    let published: Vec<&Path> = stagings.iter().map(Staging::published_path).collect();
    RunSummary {
        identity: super::identity(op),
        ..gather_summary(
            op.name(),
            op.targets()[0].to_string(),
            comm,
            stats,
            (op.units().len(), resumed),
            &published,
        )
    }
}

/// The summary of a run that `--resume` found already complete (nothing ran).
pub(super) fn already_complete<Op: Operation>(op: &Op, comm: &dyn Comm) -> RunSummary {
    let units = op.units().len();
    RunSummary {
        identity: super::identity(op),
        already_complete: true,
        ..gather_summary(
            op.name(),
            op.targets()[0].to_string(),
            comm,
            RankStats::default(),
            (units, units),
            &[],
        )
    }
}

/// The run summary of one rank's `stats`, gathered from every rank (collective): `units` is
/// (total, resumed), `published` the paths whose disk usage is the output's (measured on rank
/// 0). For runs outside [`super::run`] too (hdr's per-bracket files).
pub fn gather_summary(
    operation: &str,
    output: String,
    comm: &dyn Comm,
    mut stats: RankStats,
    (units_total, units_resumed): (usize, usize),
    published: &[&Path],
) -> RunSummary {
    stats.rank = comm.rank();
    stats.host = crate::comm::hostname();
    let mine = serde_json::to_vec(&stats).unwrap_or_default();
    let per_rank: Vec<RankStats> = comm
        .all_gather(&mine)
        .iter()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    let seconds = per_rank.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let bytes_written: u64 = per_rank.iter().map(|r| r.bytes_written).sum();
    RunSummary {
        operation: operation.into(),
        output,
        ranks: comm.size(),
        units_total,
        units_resumed,
        bytes_read: per_rank.iter().map(|r| r.bytes_read).sum(),
        bytes_written,
        bytes_on_disk: if comm.is_root() {
            published.iter().map(|p| disk_usage(p)).sum()
        } else {
            0
        },
        seconds,
        throughput_mb_per_s: bytes_written as f64 / 1e6 / seconds.max(1e-9),
        per_rank,
        dry_run: false,
        identity: Value::Null,
        already_complete: false,
    }
}

fn disk_usage(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| disk_usage(&e.path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// The library versions a report records.
pub fn versions() -> Value {
    #[cfg_attr(not(any(feature = "hdf5", feature = "mpi")), allow(unused_mut))]
    let mut v = serde_json::json!({
        "tessera": env!("CARGO_PKG_VERSION"),
        "features": {
            "mpi": cfg!(feature = "mpi"),
            "hdf5": cfg!(feature = "hdf5"),
        },
    });
    #[cfg(feature = "hdf5")]
    {
        let h = hdf5::library_version();
        v["hdf5_library"] = Value::String(format!("{}.{}.{}", h.0, h.1, h.2));
    }
    #[cfg(feature = "mpi")]
    {
        if let Ok(lib) = mpi::environment::library_version() {
            v["mpi_library"] = Value::String(lib.lines().next().unwrap_or("").trim().to_string());
        }
    }
    v
}

/// How the job was launched, as rank 0 sees it: rayon threads per rank and, under Slurm, the
/// job's id, name, nodes and task layout (so a report can be matched to `sacct`/`squeue` and to
/// the job's log file).
pub fn launch() -> Value {
    let plan = super::threads::plan();
    let mut v = serde_json::json!({
        "threads_per_rank": plan.threads,
        "threads": plan,
    });
    for var in [
        "SLURM_JOB_ID",
        "SLURM_JOB_NAME",
        "SLURM_JOB_NODELIST",
        "SLURM_JOB_NUM_NODES",
        "SLURM_NTASKS",
        "SLURM_CPUS_PER_TASK",
        "SLURM_STEP_ID",
        "SLURM_CLUSTER_NAME",
    ] {
        if let Ok(value) = std::env::var(var) {
            v[var.to_ascii_lowercase()] = Value::String(value);
        }
    }
    v
}

/// Writes the report for a command (rank 0 only): refused if present unless `overwrite`,
/// temporary name, then rename.
///
/// # Errors
/// Filesystem errors with the path.
pub fn write_report(
    path: &Path,
    overwrite: bool,
    command: &str,
    parameters: Value,
    runs: &[RunSummary],
) -> Result<()> {
    let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    let bytes_written: u64 = runs.iter().map(|r| r.bytes_written).sum();
    let report = serde_json::json!({
        "command": command,
        "parameters": parameters,
        "versions": versions(),
        "launch": launch(),
        "ranks": runs.first().map_or(1, |r| r.ranks),
        "finished_unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "seconds": seconds,
        "bytes_read": runs.iter().map(|r| r.bytes_read).sum::<u64>(),
        "bytes_written": bytes_written,
        "throughput_mb_per_s": bytes_written as f64 / 1e6 / seconds.max(1e-9),
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    crate::io::safety::write_bytes(path, overwrite, text.as_bytes())
}

/// The `--dry-run` text: units per rank, bytes, memory.
pub(super) fn describe_plan<Op: Operation>(
    op: &Op,
    assignment: &[Vec<usize>],
    stagings: &[Staging],
) -> String {
    use std::fmt::Write;
    let units = op.units();
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut s = String::new();
    let total_in: u64 = units.iter().map(|u| u.bytes_in).sum();
    let total_out: u64 = units.iter().map(|u| u.bytes_out).sum();
    let _ = writeln!(
        s,
        "plan: {} -> {} ({} units, {:.1} MiB in, {:.1} MiB out, {} rank{})",
        op.name(),
        op.targets()[0],
        units.len(),
        mib(total_in),
        mib(total_out),
        assignment.len(),
        if assignment.len() == 1 { "" } else { "s" }
    );
    for staging in stagings {
        let _ = writeln!(
            s,
            "  {} staged at {} until complete{}",
            staging.target,
            staging.staging,
            if staging.resuming { " (resuming)" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "  memory: about {:.2} MiB per rank (two units in flight: one computing, one writing){}",
        mib(2 * op.memory_per_unit()),
        if op.write_lanes() > 1 {
            "; more while writes run in lanes (up to one per thread, as memory allows)"
        } else {
            ""
        }
    );
    for (rank, ids) in assignment.iter().enumerate() {
        let mine: Vec<&UnitInfo> = ids.iter().map(|&u| &units[u]).collect();
        let first = mine.first().map_or("-".into(), |u| u.label.clone());
        let last = mine.last().map_or("-".into(), |u| u.label.clone());
        let _ = writeln!(
            s,
            "  rank {rank}: {} units ({first} .. {last}), {:.1} MiB in, {:.1} MiB out",
            mine.len(),
            mib(mine.iter().map(|u| u.bytes_in).sum()),
            mib(mine.iter().map(|u| u.bytes_out).sum()),
        );
    }
    s
}
