//! `tessera bench scaling`: one operation at several rank counts (each a fresh `mpirun -n R`
//! of this binary, or `srun -n R` inside an allocation), strong or weak, with the time,
//! throughput, parallel efficiency, bytes per rank and per-phase times (from each run's report:
//! setup, compute = read + kernel, write, sync = waiting for other ranks, finalize) as CSV,
//! Markdown and a PNG plot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use plotters::prelude::*;

use crate::comm::Comm;
use crate::error::{Error, IoContext, Result};

/// Operations the benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalingOp {
    Quilt,
    Pyramid,
    Crop,
    Hdr,
}

/// Strong: the same problem at every rank count. Weak: the problem grows with the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Strong,
    Weak,
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
    /// Problem size per rank-count unit: patterns (crop), volume side (pyramid), images of
    /// 1024x1024 (quilt), brackets (hdr). Weak scaling multiplies it by the rank count.
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    #[arg(long, value_enum, default_value = "mpirun")]
    pub launcher: Launcher,
    /// Extra arguments for the launcher (e.g. "--oversubscribe").
    #[arg(long, allow_hyphen_values = true)]
    pub launcher_args: Option<String>,
    /// Working directory (inputs, outputs, reports, the table and plot).
    #[arg(long, default_value = "tessera-scaling")]
    pub dir: PathBuf,
}

/// One rank count's numbers.
#[derive(Clone, Debug, Default)]
struct Row {
    ranks: usize,
    /// Wall time of the launch, start-up included.
    wall: f64,
    /// The runs' own time (slowest rank, from the report).
    seconds: f64,
    bytes: u64,
    read_per_rank: u64,
    written_per_rank: u64,
    /// Slowest rank's (setup, compute, write, sync, finalize).
    phases: [f64; 5],
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

/// Writes the input for a problem of `size` units; returns the operation's arguments.
fn prepare(b: &ScalingBench, size: usize, dir: &Path) -> Result<Vec<String>> {
    let exe = std::env::current_exe().at("tessera executable")?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    Ok(match b.op {
        ScalingOp::Crop => {
            let input = dir.join(format!("crop-{size}.npy"));
            if !input.exists() {
                crate::ops::crop::synthetic::write(&input, (size * 125) as u64, 256, 1)?;
            }
            ["crop", "--input", &s(&input), "--no-visualization"]
                .map(String::from)
                .to_vec()
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
            [
                "pyramid",
                "--input",
                &s(&input),
                "--levels",
                "4",
                "--chunks",
                "32,64,64",
            ]
            .map(String::from)
            .to_vec()
        }
        ScalingOp::Quilt => {
            let input = dir.join(format!("images-{size}.npy"));
            if !input.exists() {
                let a =
                    ndarray::Array4::<f32>::from_shape_fn((size, 1, 1024, 1024), |(n, _, y, x)| {
                        ((n * 13 + y * 7 + x) % 997) as f32
                    });
                ndarray_npy::write_npy(&input, &a)
                    .map_err(|e| Error::bad_file(&input, e.to_string()))?;
            }
            [
                "quilt",
                "unstitch",
                "--input",
                &s(&input),
                "--window",
                "128,128",
                "--step",
                "64,64",
            ]
            .map(String::from)
            .to_vec()
        }
        ScalingOp::Hdr => {
            let sky = dir.join(format!("sky-{size}"));
            if !sky.exists() {
                run_cmd(
                    Command::new(&exe)
                        .args(["hdr", "synthetic", "--output", &s(&sky), "--size", "512"])
                        .args(["--brackets", &size.to_string()])
                        .env("TESSERA_MPI", "0"),
                    "hdr synthetic",
                )?;
            }
            let response = dir.join("response.npz");
            if !response.exists() {
                run_cmd(
                    Command::new(&exe)
                        .args([
                            "hdr",
                            "calibrate",
                            "--input",
                            &s(&sky),
                            "--response",
                            &s(&response),
                        ])
                        .env("TESSERA_MPI", "0"),
                    "hdr calibrate",
                )?;
            }
            [
                "hdr",
                "merge",
                "--input",
                &s(&sky),
                "--response",
                &s(&response),
                "--format",
                "npy",
            ]
            .map(String::from)
            .to_vec()
        }
    })
}

/// Each rank count writes into its own fresh directory (outputs and their side files).
fn output_of(op: ScalingOp, dir: &Path, ranks: usize) -> PathBuf {
    dir.join(format!("run-{ranks}")).join(match op {
        ScalingOp::Crop => "out.npy",
        ScalingOp::Pyramid | ScalingOp::Quilt => "out.zarr",
        ScalingOp::Hdr => "out",
    })
}

fn measure(b: &ScalingBench, ranks: usize, dir: &Path) -> Result<Row> {
    let size = match b.mode {
        Mode::Strong => b.size,
        Mode::Weak => b.size * ranks,
    };
    let mut args = prepare(b, size, dir)?;
    let out = output_of(b.op, dir, ranks);
    let report = dir.join(format!("report-{ranks}.json"));
    let run_dir = out.parent().expect("inside the run directory");
    crate::io::staging::remove_any(run_dir)?;
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    args.extend(["--output".into(), out.to_string_lossy().into_owned()]);
    args.extend(["--report".into(), report.to_string_lossy().into_owned()]);
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
    cmd.arg(&exe).args(&args).env_remove("TESSERA_MPI");
    let t = Instant::now();
    run_cmd(&mut cmd, &format!("{:?} on {ranks} rank(s)", b.op))?;
    let wall = t.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).at(&report)?)
        .map_err(|e| Error::bad_file(&report, e.to_string()))?;
    let runs = json["runs"].as_array().cloned().unwrap_or_default();
    let mut row = Row {
        ranks,
        wall,
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
        for (i, k) in ["setup", "compute", "write", "sync", "finalize"]
            .iter()
            .enumerate()
        {
            row.phases[i] += per_rank
                .iter()
                .map(|r| r["phases"][k].as_f64().unwrap_or(0.0))
                .fold(0.0, f64::max);
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
    if b.ranks.is_empty() || b.ranks.contains(&0) || b.size == 0 {
        return Err(Error::parameter(
            "ranks",
            "rank counts and --size must be at least 1",
        ));
    }
    std::fs::create_dir_all(&b.dir).at(&b.dir)?;
    let rows: Vec<Row> = b
        .ranks
        .iter()
        .map(|&r| measure(b, r, &b.dir))
        .collect::<Result<_>>()?;
    let base = &rows[0];
    let efficiency = |r: &Row| match b.mode {
        Mode::Strong => base.seconds * base.ranks as f64 / (r.seconds * r.ranks as f64),
        Mode::Weak => base.seconds / r.seconds,
    };
    let stem = format!("scaling-{:?}-{:?}", b.op, b.mode).to_lowercase();
    let mut csv = String::from("ranks,wall_seconds,seconds,gb_per_s,efficiency,read_per_rank,written_per_rank,setup,compute,write,sync,finalize\n");
    let mut md = String::from(
        "| ranks | wall s (with launch) | run s | GB/s | efficiency | read/rank MiB | written/rank MiB | setup | compute | write | sync | finalize |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let gbs = r.bytes as f64 / r.seconds / 1e9;
        let p = r.phases;
        csv.push_str(&format!(
            "{},{:.4},{:.4},{:.3},{},{},{:.4},{:.4},{:.4},{:.4},{:.4}\n",
            r.ranks,
            r.seconds,
            gbs,
            efficiency(r),
            r.read_per_rank,
            r.written_per_rank,
            p[0],
            p[1],
            p[2],
            p[3],
            p[4]
        ));
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.ranks,
            r.wall,
            r.seconds,
            gbs,
            efficiency(r),
            r.read_per_rank as f64 / 1048576.0,
            r.written_per_rank as f64 / 1048576.0,
            p[0], p[1], p[2], p[3], p[4]
        ));
    }
    let csv_path = b.dir.join(format!("{stem}.csv"));
    let md_path = b.dir.join(format!("{stem}.md"));
    std::fs::write(&csv_path, &csv).at(&csv_path)?;
    std::fs::write(&md_path, &md).at(&md_path)?;
    let png = b.dir.join(format!("{stem}.png"));
    plot(
        &png,
        b,
        &rows,
        &rows.iter().map(efficiency).collect::<Vec<_>>(),
    )?;
    println!(
        "bench scaling: {:?} {:?}, size {}, on {} ({} CPUs); efficiency and GB/s from the runs' own time (slowest rank; crop: its crop-and-write pass)\n",
        b.op,
        b.mode,
        b.size,
        crate::comm::hostname(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("{md}");
    println!(
        "\n{} {} {}",
        csv_path.display(),
        md_path.display(),
        png.display()
    );
    Ok(())
}

fn plot(path: &Path, b: &ScalingBench, rows: &[Row], eff: &[f64]) -> Result<()> {
    crate::ops::crop::plot::register();
    let err = |e: String| Error::bad_file(path, format!("drawing the scaling plot: {e}"));
    let root = BitMapBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);
    let max_r = rows.iter().map(|r| r.ranks).max().unwrap_or(1) as f64;
    let max_t = rows.iter().map(|r| r.seconds).fold(0.0, f64::max) * 1.1;
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
            .x_desc("ranks")
            .y_desc("seconds")
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.ranks as f64, r.seconds)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
        c.draw_series(
            rows.iter()
                .map(|r| Circle::new((r.ranks as f64, r.seconds), 4, BLUE.filled())),
        )
        .map_err(|e| e.to_string())?;
        let mut e = ChartBuilder::on(&right)
            .caption("parallel efficiency", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.5..max_r + 0.5, 0.0..1.2)
            .map_err(|e| e.to_string())?;
        e.configure_mesh()
            .x_desc("ranks")
            .y_desc("efficiency")
            .draw()
            .map_err(|e| e.to_string())?;
        e.draw_series(LineSeries::new(
            rows.iter().zip(eff).map(|(r, &v)| (r.ranks as f64, v)),
            RED.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
        e.draw_series(
            rows.iter()
                .zip(eff)
                .map(|(r, &v)| Circle::new((r.ranks as f64, v), 4, RED.filled())),
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    };
    draw().map_err(err)?;
    root.present().map_err(|e| err(e.to_string()))
}
