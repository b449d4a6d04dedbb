//! The command line: clap types and the dispatch from a parsed command to the library.
//! Only this module knows about flags; everything below it takes plain parameter structs.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exec::report::write_report;
use crate::exec::RunSummary;
use crate::io::{self, Address};
use crate::job::{ConvertJob, Job, JobFile};

/// tessera: batch processing of large scientific images, on a laptop or many MPI ranks.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: every rank logs at info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `tessera pyramid [reconstruct]`: building flags, or the `reconstruct` subcommand.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PyramidCli {
    #[command(subcommand)]
    pub which: Option<PyramidCommand>,
    #[command(flatten)]
    pub job: crate::job::PyramidJob,
}

#[derive(Debug, Subcommand)]
pub enum PyramidCommand {
    /// Level 0 back from a Laplacian pyramid (coarsest level + difference maps).
    Reconstruct(crate::job::ReconstructJob),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert a directory of image files (TIFF, PNG, JPEG) into one Zarr/HDF5/.npy array per stack.
    Convert(ConvertJob),
    /// Cut arrays into overlapping windows and stitch predictions back (qlty at cluster scale).
    Quilt {
        #[command(subcommand)]
        which: QuiltCommand,
    },
    /// Two-pass automatic cropping of 4D-STEM diffraction patterns (keeps a target fraction of
    /// each pattern's intensity).
    Crop(crate::job::CropJob),
    /// Multiscale pyramid (OME-Zarr 0.5) of an array: mean, Gaussian, mode or Laplacian.
    Pyramid(PyramidCli),
    /// All-sky camera exposure brackets: Debevec response calibration, ln E range, HDR merge.
    Hdr {
        #[command(subcommand)]
        which: HdrCommand,
    },
    /// Print an array's shape, dtype, chunking, codecs and attributes.
    Info {
        /// Array address: file.npy, store.zarr[/group/array] or file.h5:/dataset.
        address: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a job described by a TOML file (see configs/).
    Run {
        /// The job file.
        job: PathBuf,
        /// Finish an interrupted run (as `[run] resume = true`), e.g. when resubmitting a job
        /// that hit its time limit.
        #[arg(long)]
        resume: bool,
        /// Replace an existing output (as `[run] overwrite = true`).
        #[arg(long)]
        overwrite: bool,
        /// Print the plan and write nothing (as `[run] dry_run = true`).
        #[arg(long)]
        dry_run: bool,
    },
    /// Generate a small synthetic image stack, convert it, and show how to look at the result.
    Demo {
        /// Where to put the demo data.
        #[arg(long, default_value = "tessera-demo")]
        dir: PathBuf,
    },
    /// Developer checks (used by the test suite).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        which: DebugCommand,
    },
    /// Benchmarks (throughput against a measured reference in the same run).
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuiltCommand {
    /// (N, C, [Z,] Y, X) -> (M, C, *window) patches, with the geometry as attributes.
    Unstitch(crate::job::UnstitchJob),
    /// Patches -> weighted-mean image (and optionally weight sums and std).
    Stitch(crate::job::StitchJob),
    /// Drop (input, label) patch pairs whose labels are all missing outside the border band.
    Weed(crate::job::WeedJob),
    /// Write the border mask (1 inside, 0 in the border band) of a window as uint8.
    BorderMask {
        /// Output array address.
        #[arg(long)]
        output: String,
        /// Window size per spatial axis.
        #[arg(long, value_delimiter = ',', required = true)]
        window: Vec<u64>,
        /// Border width (one value or one per axis).
        #[arg(long, value_delimiter = ',')]
        border: Vec<u64>,
        /// Replace an existing output.
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Exercise every collective with self-checking data; exits non-zero on a mismatch.
    CommCheck,
}

#[derive(Debug, Subcommand)]
pub enum HdrCommand {
    /// Debevec camera-response calibration from a spread of brackets -> response.npz + plot.
    Calibrate(crate::ops::hdr::CalibrateJob),
    /// The global (min ln E, max ln E) over every bracket, for consistent normalisation.
    LneRange(crate::ops::hdr::RangeJob),
    /// One radiance (Debevec) or fused (Mertens) image per bracket: OpenEXR, .npy or Zarr.
    Merge(crate::ops::hdr::MergeJob),
    /// Write example brackets (a random sky through a gamma 2.2 camera) to try the others on.
    Synthetic(crate::ops::hdr::SyntheticJob),
}

/// `tessera bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Convert throughput against a plain copy of the same files.
    Convert(crate::bench::ConvertBench),
    /// Quilt kernels (unstitch, stitch) against a memory copy of the patch bytes.
    Quilt(crate::bench::QuiltBench),
    /// A whole pyramid of a 512^3 f32 Zarr, with I/O, against a memory copy of the base bytes.
    Pyramid(crate::bench::pyramid::PyramidBench),
    /// The whole crop pipeline on 1000 x 256x256 f32 patterns against a memory copy.
    Crop(crate::bench::crop::CropBench),
    /// HDR merge of 5 x 512x512 RGB 8-bit brackets against a memory copy of the bracket bytes.
    Hdr(crate::bench::hdr::HdrBench),
    /// One operation at several rank counts (mpirun/srun): time, GB/s, efficiency, phases.
    Scaling(crate::bench::scaling::ScalingBench),
}

/// Runs a parsed command on this rank.
///
/// # Errors
/// Whatever the command fails with; `main` prints it on one line.
pub fn dispatch(cli: Cli, comm: &dyn Comm) -> Result<()> {
    match cli.command {
        Command::Convert(job) => run_job(Job::Convert(job), comm),
        Command::Crop(job) => run_job(Job::Crop(job), comm),
        Command::Hdr { which } => hdr(which, comm),
        Command::Pyramid(PyramidCli { which, job }) => match which {
            Some(PyramidCommand::Reconstruct(job)) => run_job(Job::Reconstruct(job), comm),
            None if job.input.is_empty() || job.output.is_empty() => {
                Err(crate::error::Error::parameter(
                    if job.input.is_empty() {
                        "input"
                    } else {
                        "output"
                    },
                    "required: tessera pyramid --input ARRAY --output OUT.zarr (see --help)",
                ))
            }
            None => run_job(Job::Pyramid(job), comm),
        },
        Command::Run {
            job,
            resume,
            overwrite,
            dry_run,
        } => {
            let mut job = JobFile::load(&job)?;
            // Flags add to the file's [run] table; they never switch an option off.
            let run = job.run_options_mut();
            run.resume |= resume;
            run.overwrite |= overwrite;
            run.dry_run |= dry_run;
            run_job(job, comm)
        }
        Command::Quilt { which } => match which {
            QuiltCommand::Unstitch(job) => run_job(Job::Unstitch(job), comm),
            QuiltCommand::Stitch(job) => run_job(Job::Stitch(job), comm),
            QuiltCommand::Weed(job) => run_job(Job::Weed(job), comm),
            QuiltCommand::BorderMask {
                output,
                window,
                border,
                overwrite,
            } => {
                let made = if comm.is_root() {
                    crate::ops::quilt::write_border_mask(&output, &window, &border, overwrite)
                } else {
                    Ok(())
                };
                crate::exec::agree(comm, made)
            }
        },
        Command::Info { address, json } => {
            if comm.is_root() {
                info(&address, json)?;
            }
            Ok(())
        }
        Command::Debug {
            which: DebugCommand::CommCheck,
        } => {
            let failures = crate::comm::selfcheck::run(comm);
            for f in &failures {
                eprintln!("{f}");
            }
            let failed = comm.any_failed(!failures.is_empty());
            if comm.is_root() && failed.is_none() {
                println!(
                    "comm-check: all collectives agree on {} rank(s)",
                    comm.size()
                );
            }
            match failed {
                Some(rank) => Err(Error::PeerFailed { rank }),
                None => Ok(()),
            }
        }
        Command::Demo { dir } => crate::demo::run(&dir, comm),
        Command::Bench { which } => match which {
            BenchCommand::Convert(b) => crate::bench::convert(&b, comm),
            BenchCommand::Quilt(b) => crate::bench::quilt(&b, comm),
            BenchCommand::Pyramid(b) => crate::bench::pyramid::run(&b, comm),
            BenchCommand::Crop(b) => crate::bench::crop::run(&b, comm),
            BenchCommand::Hdr(b) => crate::bench::hdr::run(&b, comm),
            BenchCommand::Scaling(b) => crate::bench::scaling::run(&b, comm),
        },
    }
}

/// `tessera hdr ...`.
fn hdr(which: HdrCommand, comm: &dyn Comm) -> Result<()> {
    use crate::ops::hdr;
    match which {
        HdrCommand::Calibrate(job) => hdr::calibrate(&job, comm).map(|_| ()),
        HdrCommand::Synthetic(job) if comm.is_root() => hdr::write_synthetic(&job),
        HdrCommand::Synthetic(_) => Ok(()),
        HdrCommand::LneRange(job) => {
            let (lo, hi) = hdr::lne_range(&job, comm)?;
            if comm.is_root() {
                println!("{lo} {hi}");
            }
            Ok(())
        }
        HdrCommand::Merge(job) => {
            let summaries = hdr::merge(&job, comm)?;
            finish(
                "hdr merge",
                &job.output,
                &job.run,
                parameters(&job),
                &summaries,
                comm,
            )
        }
    }
}

/// Default report path: beside the output (`out.zarr` -> `out.zarr.report.json`).
fn default_report(output: &Path) -> PathBuf {
    let text = output.to_string_lossy();
    let container = match Address::parse(&text) {
        Ok(a) => a.container().to_path_buf(),
        Err(_) => output.to_path_buf(),
    };
    let mut name = container.into_os_string();
    name.push(".report.json");
    PathBuf::from(name)
}

/// Runs a job and writes its report.
///
/// # Errors
/// The job's failure.
pub fn run_job(job: Job, comm: &dyn Comm) -> Result<()> {
    use crate::ops::{convert, crop, pyramid, quilt};
    // What each job runs, and the report that names it: (command, output, parameters,
    // summaries).
    let (command, output, params, summaries) = match &job {
        Job::Convert(j) => {
            let out = j.output.to_string_lossy().into_owned();
            ("convert", out, parameters(j), convert::run(j, comm)?)
        }
        Job::Crop(j) => ("crop", j.output.clone(), parameters(j), crop::run(j, comm)?),
        Job::Unstitch(j) => {
            let s = run_op(&quilt::UnstitchOp::plan(j)?, comm, &j.run)?;
            ("quilt unstitch", j.output.clone(), parameters(j), s)
        }
        Job::Weed(j) => {
            let s = run_op(&quilt::weed::WeedOp::plan(j, comm)?, comm, &j.run)?;
            ("quilt weed", j.output.clone(), parameters(j), s)
        }
        Job::Stitch(j) => {
            let s = run_op(&quilt::StitchOp::plan(j)?, comm, &j.run)?;
            ("quilt stitch", j.output.clone(), parameters(j), s)
        }
        Job::Pyramid(j) => {
            let s = run_op(&pyramid::PyramidOp::plan(j)?, comm, &j.run)?;
            ("pyramid", j.output.clone(), parameters(j), s)
        }
        Job::Reconstruct(j) => {
            let s = run_op(&pyramid::reconstruct::ReconstructOp::plan(j)?, comm, &j.run)?;
            ("pyramid reconstruct", j.output.clone(), parameters(j), s)
        }
    };
    finish(
        command,
        Path::new(&output),
        job.run_options(),
        params,
        &summaries,
        comm,
    )
}

/// Runs one planned operation; its summary as the report wants it.
fn run_op<O: crate::exec::Operation>(
    op: &O,
    comm: &dyn Comm,
    run: &crate::exec::RunOptions,
) -> Result<Vec<RunSummary>> {
    Ok(vec![crate::exec::run(op, comm, run)?])
}

/// Job parameters as JSON for the report.
fn parameters<T: serde::Serialize>(job: &T) -> serde_json::Value {
    serde_json::to_value(job).unwrap_or_default()
}

fn finish(
    command: &str,
    output: &Path,
    run: &crate::exec::RunOptions,
    parameters: serde_json::Value,
    summaries: &[RunSummary],
    comm: &dyn Comm,
) -> Result<()> {
    if run.dry_run || !comm.is_root() {
        return Ok(());
    }
    let report = run.report.clone().unwrap_or_else(|| default_report(output));
    write_report(&report, command, parameters, summaries)?;
    for s in summaries {
        println!(
            "wrote {} ({:.1} MiB, {:.1} MiB on disk) in {:.2} s on {} rank{}: {:.0} MB/s",
            s.output,
            s.bytes_written as f64 / 1048576.0,
            s.bytes_on_disk as f64 / 1048576.0,
            s.seconds,
            s.ranks,
            if s.ranks == 1 { "" } else { "s" },
            s.throughput_mb_per_s
        );
    }
    println!("report: {}", report.display());
    Ok(())
}

/// `tessera info`.
///
/// # Errors
/// The address does not lead to a readable array.
pub fn info(address: &str, json: bool) -> Result<()> {
    let addr = Address::parse(address)?;
    let reader = io::open(&addr)?;
    let meta = reader.meta();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(meta)
                .map_err(|e| Error::address(address, e.to_string()))?
        );
        return Ok(());
    }
    let dims = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
    println!("{addr} ({})", addr.kind());
    println!("  shape:  {}", dims(&meta.shape));
    println!("  dtype:  {}", meta.dtype);
    println!(
        "  chunks: {}",
        meta.chunks
            .as_deref()
            .map_or("none (contiguous)".into(), dims)
    );
    if let Some(shards) = &meta.shards {
        println!("  shards: {}", dims(shards));
    }
    println!(
        "  codecs: {}",
        if meta.codecs.is_empty() {
            "none".into()
        } else {
            meta.codecs.join(" -> ")
        }
    );
    if let Some(names) = &meta.dimension_names {
        println!("  dimension names: {}", names.join(", "));
    }
    let bytes = meta.shape.iter().product::<u64>() * meta.dtype.size() as u64;
    println!("  size:   {:.1} MiB uncompressed", bytes as f64 / 1048576.0);
    if meta.attributes.is_empty() {
        println!("  attributes: none");
    } else {
        println!("  attributes:");
        for (k, v) in &meta.attributes {
            let text = match v {
                serde_json::Value::Array(a) if a.len() > 8 => {
                    let head: Vec<String> = a.iter().take(3).map(|x| x.to_string()).collect();
                    format!("[{}, ... {} items]", head.join(", "), a.len())
                }
                other => other.to_string(),
            };
            println!("    {k}: {text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn pyramid_parses_with_and_without_its_subcommand() {
        let cli = Cli::try_parse_from([
            "tessera", "pyramid", "--input", "a.npy", "--output", "o.zarr",
        ])
        .unwrap();
        match cli.command {
            Command::Pyramid(PyramidCli { which: None, job }) => assert_eq!(job.input, "a.npy"),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "tessera",
            "pyramid",
            "reconstruct",
            "--input",
            "p.zarr",
            "--output",
            "o.npy",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Pyramid(PyramidCli { which: Some(_), .. })
        ));
    }
}
