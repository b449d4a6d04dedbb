//! `tessera bench scaling`: one operation at several rank counts (each a fresh `mpirun -n R`
//! of this binary, or `srun -n R` inside an allocation), strong or weak, with the time,
//! throughput, parallel efficiency, bytes per rank and the slowest rank's per-phase times (from
//! each run's report: setup, read (decoding, where timed apart), compute, write, sync = waiting
//! for other ranks, finalize; the slowest rank is the one with the most time outside sync) as CSV, Markdown and a PNG plot. At each rank count the same launcher also runs a
//! plain parallel memory copy (`bench memcopy`, every rank its own buffer): its weak-scaling
//! efficiency is what ranks sharing one memory system can reach, and `vs_memcopy` is the
//! operation's efficiency divided by it.
//!
//! `--mode threads` sweeps the threads of one process instead (`--threads T` at each of
//! `--thread-counts`, no launcher): the operation's speed-up over the first count beside the
//! memory copy's own speed-up at the same thread count, measured in the same sweep, so
//! `vs_memcopy` shows how much of what the memory system allows the operation reaches.
//!
//! Inputs are made once per size, before and outside the timed runs, and kept in `--dir`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use plotters::prelude::*;

use super::memcopy::CopyRate;
use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};

/// Operations the benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalingOp {
    /// quilt unstitch of 1024x1024 f32 images (window 128, step 64).
    Quilt,
    /// quilt stitch of the patches quilt unstitch makes of those images.
    Stitch,
    Pyramid,
    Crop,
    Hdr,
}

/// Strong: the same problem at every rank count. Weak: the problem grows with the ranks.
/// Threads: the same problem in one process at every thread count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Strong,
    Weak,
    Threads,
}

/// How ranks are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Launcher {
    Mpirun,
    Srun,
}

/// Parameters of `tessera bench scaling`.
#[derive(Clone, Debug, clap::Args)]
pub struct ScalingBench {
    #[arg(long, value_enum)]
    pub op: ScalingOp,
    /// Rank counts, e.g. 1,2,4.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub ranks: Vec<usize>,
    #[arg(long, value_enum, default_value = "strong")]
    pub mode: Mode,
    /// Thread counts of `--mode threads` (default: 1, 2, 4 ... and this machine's CPUs).
    #[arg(long, value_delimiter = ',')]
    pub thread_counts: Option<Vec<usize>>,
    /// Problem size per rank-count unit: 125 patterns of 256x256 (crop), 32 x 256x256 slices
    /// (pyramid), images of 1024x1024 (quilt, stitch), brackets of 5 x 512x512 (hdr). Weak
    /// scaling multiplies it by the rank count.
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    #[arg(long, value_enum, default_value = "mpirun")]
    pub launcher: Launcher,
    /// Extra arguments for the launcher (e.g. "--oversubscribe").
    #[arg(long, allow_hyphen_values = true)]
    pub launcher_args: Option<String>,
    /// MiB each rank copies in the memory-bandwidth reference (best of 5 copies).
    #[arg(long, default_value_t = 256)]
    pub memcopy_mib: u64,
    /// Working directory (inputs, outputs, reports, the table and plot).
    #[arg(long, default_value = "tessera-scaling")]
    pub dir: PathBuf,
    /// Runs at each count, the fastest kept (by the run's own time); the copy's rate is the
    /// best of those runs' copies too. Before the sweep the first count runs once untimed, so
    /// that it is not the only count that finds the machine cold.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
}

/// The phases of a run report, in the order of the table.
const PHASES: [&str; 6] = ["setup", "read", "compute", "write", "sync", "finalize"];

/// One rank count's (or, `--mode threads`, thread count's) numbers.
#[derive(Clone, Debug, Default)]
struct Row {
    /// Ranks, or threads of the one process.
    count: usize,
    /// Wall time of the launch, start-up included.
    wall: f64,
    /// The runs' own time (slowest rank, from the report).
    seconds: f64,
    bytes: u64,
    read_per_rank: u64,
    written_per_rank: u64,
    /// The slowest rank's seconds per phase (see [`PHASES`]): the rank with the most time
    /// outside sync.
    phases: [f64; 6],
    /// The job's memory-copy rate at this count (GB/s, all ranks together).
    copy_gb_per_s: f64,
}

/// A row's efficiencies against the first row (the smallest rank count); in `--mode
/// threads`, its speed-ups against the first row.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Efficiency {
    /// The operation's: strong, T1 R1 / (T R); weak and threads, T1 / T.
    op: f64,
    /// The memory copy's: its rate per rank against the first row's (weak-scaling efficiency;
    /// threads: its rate against the first row's, the copy's speed-up).
    copy: f64,
}

impl Efficiency {
    fn vs_copy(&self) -> f64 {
        self.op / self.copy
    }
}

fn efficiencies(rows: &[Row], mode: Mode) -> Vec<Efficiency> {
    let base = &rows[0];
    // One process whatever its threads: the whole rate is the one rank's.
    let ranks = |r: &Row| if mode == Mode::Threads { 1 } else { r.count };
    let per_rank = |r: &Row| r.copy_gb_per_s / ranks(r) as f64;
    rows.iter()
        .map(|r| Efficiency {
            op: match mode {
                Mode::Strong => base.seconds * base.count as f64 / (r.seconds * r.count as f64),
                Mode::Weak | Mode::Threads => base.seconds / r.seconds,
            },
            copy: per_rank(r) / per_rank(base),
        })
        .collect()
}

/// One column of the tables: its CSV name, its Markdown heading and a row's value in each.
struct Cell {
    csv_name: &'static str,
    md_name: &'static str,
    csv: String,
    md: String,
}

/// A row's cells. The CSV header and the Markdown heading come from the same list, so a
/// column cannot go missing from the rows alone. `--mode threads` names its counts threads
/// and its efficiencies speed-ups.
fn cells(r: &Row, e: &Efficiency, mode: Mode) -> Vec<Cell> {
    let threads = mode == Mode::Threads;
    let pick = |rank_name, thread_name| if threads { thread_name } else { rank_name };
    let cell = |csv_name, md_name, csv: String, md: String| Cell {
        csv_name,
        md_name,
        csv,
        md,
    };
    let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    let gbs = r.bytes as f64 / r.seconds / 1e9;
    let mut v = vec![
        cell(
            pick("ranks", "threads"),
            pick("ranks", "threads"),
            r.count.to_string(),
            r.count.to_string(),
        ),
        cell(
            "wall_seconds",
            "wall s (with launch)",
            format!("{:.4}", r.wall),
            format!("{:.3}", r.wall),
        ),
        cell(
            "seconds",
            "run s",
            format!("{:.4}", r.seconds),
            format!("{:.3}", r.seconds),
        ),
        cell("gb_per_s", "GB/s", format!("{gbs:.3}"), format!("{gbs:.3}")),
        cell(
            pick("efficiency", "speedup"),
            pick("efficiency", "speed-up"),
            format!("{:.4}", e.op),
            format!("{:.2}", e.op),
        ),
        cell(
            "memcopy_gb_per_s",
            "memcopy GB/s",
            format!("{:.3}", r.copy_gb_per_s),
            format!("{:.1}", r.copy_gb_per_s),
        ),
        cell(
            pick("memcopy_efficiency", "memcopy_speedup"),
            pick("memcopy efficiency", "memcopy speed-up"),
            format!("{:.4}", e.copy),
            format!("{:.2}", e.copy),
        ),
        cell(
            "vs_memcopy",
            "vs memcopy",
            format!("{:.4}", e.vs_copy()),
            format!("{:.2}", e.vs_copy()),
        ),
        cell(
            "read_per_rank",
            "read/rank MiB",
            r.read_per_rank.to_string(),
            mib(r.read_per_rank),
        ),
        cell(
            "written_per_rank",
            "written/rank MiB",
            r.written_per_rank.to_string(),
            mib(r.written_per_rank),
        ),
    ];
    for (name, t) in PHASES.iter().zip(r.phases) {
        v.push(cell(name, name, format!("{t:.4}"), format!("{t:.3}")));
    }
    v
}

/// The CSV and Markdown tables of `rows`.
fn tables(rows: &[Row], mode: Mode) -> (String, String) {
    let all: Vec<Vec<Cell>> = rows
        .iter()
        .zip(efficiencies(rows, mode))
        .map(|(r, e)| cells(r, &e, mode))
        .collect();
    let names = cells(&Row::default(), &Efficiency { op: 0.0, copy: 1.0 }, mode);
    let line =
        |f: &dyn Fn(&Cell) -> &str, sep: &str| names.iter().map(f).collect::<Vec<_>>().join(sep);
    let mut csv = line(&|c| c.csv_name, ",") + "\n";
    let mut md = format!(
        "| {} |\n|{}\n",
        line(&|c| c.md_name, " | "),
        "---|".repeat(names.len())
    );
    for row in &all {
        csv += &row
            .iter()
            .map(|c| c.csv.as_str())
            .collect::<Vec<_>>()
            .join(",");
        csv += "\n";
        md += &format!(
            "| {} |\n",
            row.iter()
                .map(|c| c.md.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    (csv, md)
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::parameter("launcher", format!("{what}: {e}")))?;
    if !out.status.success() {
        // tessera's own error lines, else the launcher's last words.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        if lines.is_empty() {
            lines = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            lines = lines.split_off(lines.len().saturating_sub(4));
        }
        return Err(Error::parameter(
            "op",
            format!("{what} failed: {}", lines.join(" / ")),
        ));
    }
    Ok(())
}

/// This binary, run alone (no MPI) to make an input.
fn single(args: &[String], what: &str) -> Result<()> {
    let exe = std::env::current_exe().at("tessera executable")?;
    run_cmd(Command::new(&exe).args(args).env("TESSERA_MPI", "0"), what)
}

fn text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `size` images of 1024x1024 f32 (quilt's and stitch's input), made once.
fn images(dir: &Path, size: usize) -> Result<PathBuf> {
    let input = dir.join(format!("images-{size}.npy"));
    if !input.exists() {
        let a = ndarray::Array4::<f32>::from_shape_fn((size, 1, 1024, 1024), |(n, _, y, x)| {
            ((n * 13 + y * 7 + x) % 997) as f32
        });
        ndarray_npy::write_npy(&input, &a).map_err(|e| Error::bad_file(&input, e.to_string()))?;
    }
    Ok(input)
}

/// quilt's window and step (flags) for the quilt and stitch runs.
const QUILT_GEOMETRY: [&str; 4] = ["--window", "128,128", "--step", "64,64"];

/// Crop's synthetic patterns for `size`: the largest set any rank count needs (`largest`) is
/// made once (in parallel), and each smaller one is its prefix (each pattern has its own
/// random stream, so the prefix is the set itself).
fn crop_input(dir: &Path, size: usize, largest: usize) -> Result<PathBuf> {
    let file = |n: usize| dir.join(format!("crop-{n}x256.npy"));
    let (n, all) = ((size * 125) as u64, (largest.max(size) * 125) as u64);
    let input = file(n as usize);
    if input.exists() {
        return Ok(input);
    }
    let source = file(all as usize);
    if !source.exists() {
        let t = Instant::now();
        // Under a temporary name: a killed bench must not leave a half-written input that
        // the next run takes for a finished one (it reuses what exists).
        crate::io::safety::write_file(&source, false, |tmp| {
            crate::ops::crop::synthetic::write(tmp, all, 256, 1)
        })?;
        println!(
            "bench scaling: made {all} synthetic 256x256 patterns in {:.1} s ({} threads)",
            t.elapsed().as_secs_f64(),
            rayon::current_num_threads()
        );
    }
    if n < all {
        crate::io::safety::write_file(&input, false, |tmp| {
            crate::ops::crop::synthetic::write_prefix(&source, tmp, n)
        })?;
    }
    Ok(input)
}

/// Writes the input for a problem of `size` units (`largest`: the largest size of this
/// benchmark); returns the operation's arguments.
fn prepare(b: &ScalingBench, size: usize, largest: usize, dir: &Path) -> Result<Vec<String>> {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(match b.op {
        ScalingOp::Crop => {
            let input = crop_input(dir, size, largest)?;
            args(&["crop", "--input", &text(&input), "--no-visualization"])
        }
        ScalingOp::Pyramid => {
            let input = dir.join(format!("volume-{size}.npy"));
            if !input.exists() {
                let n = 32 * size;
                let a = ndarray::Array3::<f32>::from_shape_fn((n, 256, 256), |(z, y, x)| {
                    ((z * 31 + y * 7 + x) % 1000) as f32
                });
                ndarray_npy::write_npy(&input, &a)
                    .map_err(|e| Error::bad_file(&input, e.to_string()))?;
            }
            args(&[
                "pyramid",
                "--input",
                &text(&input),
                "--levels",
                "4",
                "--chunks",
                "32,64,64",
            ])
        }
        ScalingOp::Quilt => {
            let input = images(dir, size)?;
            let mut a = args(&["quilt", "unstitch", "--input", &text(&input)]);
            a.extend(args(&QUILT_GEOMETRY));
            a
        }
        ScalingOp::Stitch => {
            let patches = dir.join(format!("patches-{size}.zarr"));
            if !patches.exists() {
                let input = images(dir, size)?;
                let report = dir.join(format!("patches-{size}.report.json"));
                let mut a = args(&["quilt", "unstitch", "--input", &text(&input)]);
                a.extend(args(&QUILT_GEOMETRY));
                a.extend(args(&["--output", &text(&patches), "--codec", "none"]));
                a.extend(args(&["--report", &text(&report), "--overwrite"]));
                single(&a, "quilt unstitch (the patches to stitch)")?;
            }
            args(&["quilt", "stitch", "--input", &text(&patches)])
        }
        ScalingOp::Hdr => {
            let sky = dir.join(format!("sky-{size}"));
            if !sky.exists() {
                single(
                    &args(&[
                        "hdr",
                        "synthetic",
                        "--output",
                        &text(&sky),
                        "--size",
                        "512",
                        "--brackets",
                        &size.to_string(),
                    ]),
                    "hdr synthetic",
                )?;
            }
            let response = dir.join("response.npz");
            if !response.exists() {
                single(
                    &args(&[
                        "hdr",
                        "calibrate",
                        "--input",
                        &text(&sky),
                        "--response",
                        &text(&response),
                    ]),
                    "hdr calibrate",
                )?;
            }
            args(&[
                "hdr",
                "merge",
                "--input",
                &text(&sky),
                "--response",
                &text(&response),
                "--format",
                "npy",
            ])
        }
    })
}

/// Each count writes into its own fresh directory (outputs and their side files).
fn output_of(op: ScalingOp, dir: &Path, count: usize) -> PathBuf {
    dir.join(format!("run-{count}")).join(match op {
        ScalingOp::Crop => "out.npy",
        ScalingOp::Pyramid | ScalingOp::Quilt | ScalingOp::Stitch => "out.zarr",
        ScalingOp::Hdr => "out",
    })
}

/// Runs this binary with `args` on `ranks` ranks through the launcher; the wall time.
fn launch(b: &ScalingBench, ranks: usize, args: &[String], what: &str) -> Result<f64> {
    let exe = std::env::current_exe().at("tessera executable")?;
    let mut cmd = match b.launcher {
        Launcher::Mpirun => Command::new("mpirun"),
        Launcher::Srun => Command::new("srun"),
    };
    cmd.arg("-n").arg(ranks.to_string());
    if let Some(extra) = &b.launcher_args {
        cmd.args(extra.split_whitespace());
    }
    // The ranks start MPI even when this launching process was told not to.
    cmd.arg(&exe).args(args).env_remove("TESSERA_MPI");
    let t = Instant::now();
    run_cmd(&mut cmd, &format!("{what} on {ranks} rank(s)"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs this binary with `args` as one process of `threads` threads (`--mode threads`); the
/// wall time.
fn threaded(threads: usize, args: &[String], what: &str) -> Result<f64> {
    let exe = std::env::current_exe().at("tessera executable")?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--threads")
        .arg(threads.to_string())
        .args(args)
        .env("TESSERA_MPI", "0");
    let t = Instant::now();
    run_cmd(&mut cmd, &format!("{what} on {threads} thread(s)"))?;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs this binary with `args` at one count of the sweep: ranks through the launcher, or
/// threads of one process; the wall time.
fn start(b: &ScalingBench, count: usize, args: &[String], what: &str) -> Result<f64> {
    match b.mode {
        Mode::Threads => threaded(count, args, what),
        Mode::Strong | Mode::Weak => launch(b, count, args, what),
    }
}

/// The memory-bandwidth reference at `count` (GB/s of the whole job).
fn memcopy(b: &ScalingBench, count: usize, dir: &Path) -> Result<f64> {
    let json = dir.join(format!("memcopy-{count}.json"));
    crate::io::staging::remove_any(&json)?;
    let args = [
        "bench",
        "memcopy",
        "--mib",
        &b.memcopy_mib.to_string(),
        "--json",
        &text(&json),
    ]
    .map(String::from);
    start(b, count, &args, "memcopy")?;
    let rate: CopyRate = serde_json::from_slice(&std::fs::read(&json).at(&json)?)
        .map_err(|e| Error::bad_file(&json, e.to_string()))?;
    Ok(rate.gb_per_s)
}

/// The fastest of `b.repeat` runs at `count` ([`measure_once`]), with the best of their
/// copies' rates; `report-<count>.json` is that run's report.
fn measure(b: &ScalingBench, count: usize, largest: usize, dir: &Path) -> Result<Row> {
    let report = report_of(dir, count);
    // The fastest run's report waits in memory while the others run (each run replaces the
    // file, as `measure_once` removes it first), and is put back as the sweep's report.
    let mut best: Option<(Row, Vec<u8>)> = None;
    let mut copy = 0.0f64;
    for _ in 0..b.repeat.max(1) {
        let row = measure_once(b, count, largest, dir)?;
        copy = copy.max(row.copy_gb_per_s);
        if best.as_ref().is_none_or(|(r, _)| row.seconds < r.seconds) {
            best = Some((row, std::fs::read(&report).at(&report)?));
        }
    }
    let (mut row, bytes) = best.expect("at least one run");
    // The bench's own report in its working directory, replaced like the others there.
    crate::io::safety::write_bytes(&report, true, &bytes)?;
    row.copy_gb_per_s = copy;
    Ok(row)
}

/// Where the run at `count` writes its report.
fn report_of(dir: &Path, count: usize) -> PathBuf {
    dir.join(format!("report-{count}.json"))
}

/// One run at `count`: the memory copy, then the operation; its numbers from the report.
fn measure_once(b: &ScalingBench, count: usize, largest: usize, dir: &Path) -> Result<Row> {
    let size = match b.mode {
        Mode::Strong | Mode::Threads => b.size,
        Mode::Weak => b.size * count,
    };
    let mut args = prepare(b, size, largest, dir)?;
    let out = output_of(b.op, dir, count);
    let report = report_of(dir, count);
    let run_dir = out.parent().expect("inside the run directory");
    crate::io::staging::remove_any(run_dir)?;
    crate::io::staging::remove_any(&report)?;
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    args.extend(["--output".into(), text(&out)]);
    args.extend(["--report".into(), text(&report)]);
    let copy_gb_per_s = memcopy(b, count, dir)?;
    let wall = start(b, count, &args, &format!("{:?}", b.op))?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).at(&report)?)
        .map_err(|e| Error::bad_file(&report, e.to_string()))?;
    let runs = json["runs"].as_array().cloned().unwrap_or_default();
    let mut row = Row {
        count,
        wall,
        copy_gb_per_s,
        ..Row::default()
    };
    for run in &runs {
        let per_rank = run["per_rank"].as_array().cloned().unwrap_or_default();
        let max_of = |k: &str| {
            per_rank
                .iter()
                .map(|r| r[k].as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        row.bytes += run["bytes_written"].as_u64().unwrap_or(0);
        row.seconds += run["seconds"].as_f64().unwrap_or(0.0);
        row.read_per_rank += max_of("bytes_read");
        row.written_per_rank += max_of("bytes_written");
        let phase = |r: &serde_json::Value, k: &str| r["phases"][k].as_f64().unwrap_or(0.0);
        // The slowest rank: the most time not spent waiting for the others (every rank
        // ends a run together, so its total says nothing). Its sync is what the job's
        // coordination costs; a faster rank's is the imbalance it waits out.
        let busy = |r: &serde_json::Value| r["seconds"].as_f64().unwrap_or(0.0) - phase(r, "sync");
        if let Some(slowest) = per_rank.iter().max_by(|a, b| busy(a).total_cmp(&busy(b))) {
            for (i, k) in PHASES.iter().enumerate() {
                row.phases[i] += phase(slowest, k);
            }
        }
    }
    Ok(row)
}

/// Runs the benchmark (rank 0 of a plain process; it launches the ranks itself).
///
/// # Errors
/// A failing launch or run, or unwritable results.
pub fn run(b: &ScalingBench, comm: &dyn Comm) -> Result<()> {
    if !comm.is_root() {
        return Ok(());
    }
    let counts = counts(b)?;
    std::fs::create_dir_all(&b.dir).at(&b.dir)?;
    let largest = match b.mode {
        Mode::Strong | Mode::Threads => b.size,
        Mode::Weak => b.size * counts.iter().max().copied().unwrap_or(1),
    };
    // Untimed: the first count's run would otherwise be the only one to meet cold caches
    // (a quilt sweep's first 1-thread run took 0.09 s, its second 0.05 s).
    measure_once(b, counts[0], largest, &b.dir)?;
    let rows: Vec<Row> = counts
        .iter()
        .map(|&c| measure(b, c, largest, &b.dir))
        .collect::<Result<_>>()?;
    let stem = format!("scaling-{:?}-{:?}", b.op, b.mode).to_lowercase();
    let (csv, md) = tables(&rows, b.mode);
    let csv_path = b.dir.join(format!("{stem}.csv"));
    let md_path = b.dir.join(format!("{stem}.md"));
    super::write_result(&csv_path, &csv)?;
    super::write_result(&md_path, &md)?;
    let png = b.dir.join(format!("{stem}.png"));
    plot(&png, b, &rows, &efficiencies(&rows, b.mode))?;
    let how = match b.mode {
        Mode::Threads => "one process at each thread count; speed-ups against the first count from the runs' own time; memcopy: the copy's speed-up at the same thread count",
        Mode::Strong | Mode::Weak => "efficiency and GB/s from the runs' own time (slowest rank; crop: its crop-and-write pass); memcopy: same launcher",
    };
    println!(
        "bench scaling: {:?} {:?}, size {}, on {} ({} CPUs); {how}; fastest of {} run(s) per count after one untimed run; memcopy {} MiB per rank, best of 5",
        b.op,
        b.mode,
        b.size,
        crate::comm::hostname(),
        cpus(),
        b.repeat.max(1),
        b.memcopy_mib
    );
    println!();
    print!("{md}");
    println!(
        "\n{} {} {}",
        csv_path.display(),
        md_path.display(),
        png.display()
    );
    Ok(())
}

/// This machine's CPUs (0 where unknown).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// 1, 2, 4 ... below `cpus`, then `cpus`: the default thread counts.
fn doubling_up_to(cpus: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n < cpus)
        .collect();
    v.push(cpus.max(1));
    v
}

/// The sweep's counts (ranks, or threads in `--mode threads`), checked.
fn counts(b: &ScalingBench) -> Result<Vec<usize>> {
    if b.size == 0 || b.memcopy_mib == 0 {
        return Err(Error::parameter(
            "size",
            "--size and --memcopy-mib must be at least 1",
        ));
    }
    let (flag, counts) = match (b.mode, &b.thread_counts) {
        (Mode::Threads, Some(t)) => ("thread-counts", t.clone()),
        (Mode::Threads, None) => ("thread-counts", doubling_up_to(cpus())),
        (_, Some(_)) => {
            return Err(Error::parameter(
                "thread-counts",
                "is for --mode threads (strong and weak sweep --ranks)",
            ))
        }
        (_, None) => ("ranks", b.ranks.clone()),
    };
    if counts.is_empty() || counts.contains(&0) {
        return Err(Error::parameter(flag, "every count must be at least 1"));
    }
    Ok(counts)
}

fn plot(path: &Path, b: &ScalingBench, rows: &[Row], eff: &[Efficiency]) -> Result<()> {
    crate::ops::crop::plot::register();
    let err = |e: String| Error::bad_file(path, format!("drawing the scaling plot: {e}"));
    let root = BitMapBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);
    let max_r = rows.iter().map(|r| r.count).max().unwrap_or(1) as f64;
    let (x_desc, y_desc, caption) = match b.mode {
        Mode::Threads => ("threads", "speed-up", "speed-up (red), memcopy's (green)"),
        Mode::Strong | Mode::Weak => (
            "ranks",
            "efficiency",
            "parallel efficiency (red), memcopy's (green)",
        ),
    };
    let max_t = rows.iter().map(|r| r.seconds).fold(0.0, f64::max) * 1.1;
    let max_e = eff
        .iter()
        .flat_map(|e| [e.op, e.copy])
        .filter(|v| v.is_finite())
        .fold(1.2, f64::max);
    let draw = || -> std::result::Result<(), String> {
        let mut c = ChartBuilder::on(&left)
            .caption(
                format!("{:?} ({:?}): time", b.op, b.mode),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..max_r + 0.5, 0.0..max_t.max(1e-3))
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_desc("seconds")
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.count as f64, r.seconds)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
        c.draw_series(
            rows.iter()
                .map(|r| Circle::new((r.count as f64, r.seconds), 4, BLUE.filled())),
        )
        .map_err(|e| e.to_string())?;
        let mut e = ChartBuilder::on(&right)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..max_r + 0.5, 0.0..max_e)
            .map_err(|e| e.to_string())?;
        e.configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        // The operation's efficiency (red) and the memory copy's (green, the reference).
        for (colour, of) in [
            (RED, (|e: &Efficiency| e.op) as fn(&Efficiency) -> f64),
            (GREEN, |e: &Efficiency| e.copy),
        ] {
            e.draw_series(LineSeries::new(
                rows.iter().zip(eff).map(|(r, v)| (r.count as f64, of(v))),
                colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
            e.draw_series(
                rows.iter()
                    .zip(eff)
                    .map(|(r, v)| Circle::new((r.count as f64, of(v)), 4, colour.filled())),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    draw().map_err(err)?;
    root.present().map_err(|e| err(e.to_string()))
}

/// A CSV table this bench wrote, as (column, value) pairs per row; `None` when a line is not as
/// wide as the header (a value with a comma in it, or a column left out).
pub fn read_table(csv: &str) -> Option<Vec<Vec<(String, String)>>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields.len() == header.len()).then(|| {
                header
                    .iter()
                    .zip(fields)
                    .map(|(h, f)| (h.to_string(), f.to_string()))
                    .collect()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                count: 1,
                wall: 1.5,
                seconds: 1.0,
                bytes: 2_000_000_000,
                read_per_rank: 3 << 20,
                written_per_rank: 4 << 20,
                phases: [0.01, 0.02, 0.5, 0.4, 0.0, 0.03],
                copy_gb_per_s: 10.0,
            },
            Row {
                count: 2,
                wall: 1.25,
                seconds: 0.8,
                bytes: 2_000_000_000,
                read_per_rank: 5 << 20,
                written_per_rank: 6 << 20,
                phases: [0.11, 0.12, 0.13, 0.14, 0.15, 0.16],
                copy_gb_per_s: 16.0,
            },
        ]
    }

    /// The CSV as (name, value) pairs per row, every line as wide as the header.
    fn parse(csv: &str) -> Vec<Vec<(String, String)>> {
        read_table(csv).unwrap_or_else(|| panic!("a line is not as wide as the header:\n{csv}"))
    }

    fn get<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
        &row.iter().find(|(h, _)| h == name).unwrap().1
    }

    #[test]
    fn every_csv_value_sits_under_its_name() {
        let (csv, md) = tables(&rows(), Mode::Weak);
        let parsed = parse(&csv);
        assert_eq!(parsed.len(), 2);
        let names: Vec<&str> = parsed[0].iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            names,
            [
                "ranks",
                "wall_seconds",
                "seconds",
                "gb_per_s",
                "efficiency",
                "memcopy_gb_per_s",
                "memcopy_efficiency",
                "vs_memcopy",
                "read_per_rank",
                "written_per_rank",
                "setup",
                "read",
                "compute",
                "write",
                "sync",
                "finalize"
            ]
        );
        let r = &parsed[1];
        let num = |name| get(r, name).parse::<f64>().unwrap();
        assert_eq!(get(r, "ranks"), "2");
        assert_eq!(num("wall_seconds"), 1.25);
        assert_eq!(num("seconds"), 0.8);
        assert_eq!(num("gb_per_s"), 2.5);
        // Weak: T1 / T = 1.25. The copy: 8 GB/s per rank against 10: 0.8.
        assert_eq!(num("efficiency"), 1.25);
        assert_eq!(num("memcopy_gb_per_s"), 16.0);
        assert_eq!(num("memcopy_efficiency"), 0.8);
        assert!((num("vs_memcopy") - 1.5625).abs() < 1e-4);
        assert_eq!(get(r, "read_per_rank"), (5u64 << 20).to_string());
        assert_eq!(get(r, "written_per_rank"), (6u64 << 20).to_string());
        for (name, want) in PHASES.iter().zip([0.11, 0.12, 0.13, 0.14, 0.15, 0.16]) {
            assert_eq!(num(name), want, "{name}");
        }
        let base = &parsed[0];
        assert_eq!(get(base, "efficiency").parse::<f64>().unwrap(), 1.0);
        assert_eq!(get(base, "vs_memcopy").parse::<f64>().unwrap(), 1.0);
        // The Markdown table: a heading, its rule and one line per row, all as wide.
        let widths: Vec<usize> = md.lines().map(|l| l.matches('|').count()).collect();
        assert_eq!(widths, vec![names.len() + 1; 4], "{md}");
        assert!(
            md.lines()
                .nth(3)
                .unwrap()
                .starts_with("| 2 | 1.250 | 0.800 |"),
            "{md}"
        );
    }

    #[test]
    fn threads_mode_puts_each_speed_up_beside_the_copys() {
        let (csv, md) = tables(&rows(), Mode::Threads);
        let parsed = parse(&csv);
        let names: Vec<&str> = parsed[0].iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            names[..8],
            [
                "threads",
                "wall_seconds",
                "seconds",
                "gb_per_s",
                "speedup",
                "memcopy_gb_per_s",
                "memcopy_speedup",
                "vs_memcopy"
            ]
        );
        let r = &parsed[1];
        let num = |name| get(r, name).parse::<f64>().unwrap();
        assert_eq!(get(r, "threads"), "2");
        // 1 s -> 0.8 s: 1.25x. The copy, one process: 10 -> 16 GB/s, 1.6x (not per thread).
        assert_eq!(num("speedup"), 1.25);
        assert_eq!(num("memcopy_speedup"), 1.6);
        assert!((num("vs_memcopy") - 0.78125).abs() < 1e-4);
        assert!(md.starts_with("| threads |"), "{md}");
        assert!(md.contains("| speed-up |"), "{md}");
    }

    #[test]
    fn default_thread_counts_double_up_to_the_cpus() {
        assert_eq!(doubling_up_to(0), [1]);
        assert_eq!(doubling_up_to(1), [1]);
        assert_eq!(doubling_up_to(2), [1, 2]);
        assert_eq!(doubling_up_to(6), [1, 2, 4, 6]);
        assert_eq!(doubling_up_to(16), [1, 2, 4, 8, 16]);
    }

    #[test]
    fn strong_efficiency_counts_the_ranks() {
        let e = efficiencies(&rows(), Mode::Strong);
        // 1 s on 1 rank, 0.8 s on 2: 1 / 1.6.
        assert_eq!(e[1].op, 0.625);
        assert_eq!(e[1].copy, 0.8);
        assert!((e[1].vs_copy() - 0.78125).abs() < 1e-12);
    }
}
