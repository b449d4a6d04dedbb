//! The command line: clap types and the dispatch from a parsed command to the library.
//! Only this module knows about flags; everything below it takes plain parameter structs.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::job::{ConvertJob, Job, JobFile, PatchesJob, PyramidJob};

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
    /// Threads per rank (default: the CPUs this rank may run on, divided among the ranks of its
    /// node that may run on them too; RAYON_NUM_THREADS also sets it).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
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

/// `tessera pairs [select|extract]`: sampling flags, or a subcommand.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PairsCli {
    #[command(subcommand)]
    pub which: Option<PairsCommand>,
    #[command(flatten)]
    pub job: crate::job::PairsJob,
}

#[derive(Debug, Subcommand)]
pub enum PairsCommand {
    /// A stratified sample of pairs from their metadata: up to --per-bin pairs from every
    /// (mean, sigma) cell.
    Select(crate::job::PairsSelectJob),
    /// The pixels of chosen pairs of a metadata table, as a pairs group.
    Extract(crate::job::PairsExtractJob),
}

/// `tessera patches [verify]`: extraction flags, or the `verify` subcommand.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PatchesCli {
    #[command(subcommand)]
    pub which: Option<PatchesCommand>,
    #[command(flatten)]
    pub job: crate::job::PatchesJob,
}

#[derive(Debug, Subcommand)]
pub enum PatchesCommand {
    /// The notebook's integrity checks on every patch of an output: counts, dtype, value
    /// range, relative paths, files and shapes, statistics. Exits non-zero with a list.
    Verify(crate::ops::patches::verify::VerifyArgs),
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
    /// Displaced patch pairs for self-supervised training, as qlty's ZarrPatchPairDataset reads
    /// them (or their metadata, for `pairs select` and `pairs extract`).
    Pairs(PairsCli),
    /// Pre-tokenized 2-D patch pairs (quilt windows of each patch) with token overlaps.
    Tokens(crate::job::TokensJob),
    /// CT slices (a manifest of slice files, or a volume) to a patch dataset: square patches
    /// on a stride grid (no padding), patch_manifest.csv and patch_meta.json, as the CT patch
    /// notebook makes them.
    Patches(PatchesCli),
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
    /// GPUs: what this machine has (driver, devices, NVRTC), and compiling every kernel.
    Gpu {
        #[command(subcommand)]
        which: GpuCommand,
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
pub enum GpuCommand {
    /// The CUDA driver, NVRTC and each visible device (name, UUID, compute capability, memory),
    /// and which operations have GPU kernels.
    Info,
    /// Compile every CUDA kernel with NVRTC (no GPU needed, only libnvrtc.so.13); exits
    /// non-zero with the compiler's log if one does not compile.
    Compile {
        /// Virtual architectures to compile for.
        #[arg(long, value_delimiter = ',', default_values_t = crate::gpu::kernels::CHECKED_ARCHITECTURES.iter().map(|s| s.to_string()))]
        arch: Vec<String>,
        /// Compile machine code for these architectures (compute_90 and sm_90 both mean the
        /// H100's) into the kernel cache (TESSERA_KERNEL_CACHE, else ~/.cache/tessera/kernels),
        /// which every later job on this node loads instead of compiling.
        #[arg(long)]
        cache: bool,
    },
    /// ptxas' report of every kernel function (registers, stack frame, spills) for real
    /// architectures, through NVRTC (no GPU needed).
    Resources {
        /// Real architectures to compile for.
        #[arg(long, value_delimiter = ',', default_values_t = crate::gpu::REPORTED_ARCHITECTURES.iter().map(|s| s.to_string()))]
        arch: Vec<String>,
        /// Exit non-zero when a kernel keeps anything in local memory (stack frame, spills).
        #[arg(long)]
        check: bool,
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
    /// tessera pairs on 64 images of 1024x1024x3, 256 pairs each, window 64, against a memory
    /// copy of the written pair bytes.
    Pairs(crate::bench::pairs::PairsBench),
    /// Patch extraction of 362x362 float32 slices (npy and zarr) against a plain copy of the
    /// same bytes into as many files (npy) or one file (zarr).
    Patches(crate::bench::patches::PatchesBench),
    /// One operation at several rank counts (mpirun/srun): time, GB/s, efficiency, phases.
    Scaling(crate::bench::scaling::ScalingBench),
    /// bench scaling's memory-bandwidth reference: every rank copies a buffer, rank 0 reports
    /// the job's rate.
    #[command(hide = true)]
    Memcopy(crate::bench::memcopy::MemcopyBench),
}

/// Runs a parsed command on this rank.
///
/// # Errors
/// Whatever the command fails with; `main` prints it on one line.
pub fn dispatch(cli: Cli, comm: &dyn Comm) -> Result<()> {
    match cli.command {
        Command::Convert(job) => crate::job::run_job(Job::Convert(job), comm),
        Command::Crop(job) => crate::job::run_job(Job::Crop(job), comm),
        Command::Hdr { which } => hdr(which, comm),
        Command::Patches(PatchesCli { which, job }) => patches(which, job, comm),
        Command::Pyramid(PyramidCli { which, job }) => pyramid(which, job, comm),
        Command::Pairs(PairsCli { which, job }) => match which {
            Some(PairsCommand::Select(job)) => crate::ops::pairs::select(&job, comm),
            Some(PairsCommand::Extract(job)) => crate::job::run_job(Job::PairsExtract(job), comm),
            None => crate::job::run_job(Job::Pairs(job), comm),
        },
        Command::Tokens(job) => crate::job::run_job(Job::Tokens(job), comm),
        Command::Run {
            job,
            resume,
            overwrite,
            dry_run,
        } => run_file(&job, (resume, overwrite, dry_run), comm),
        Command::Quilt { which } => quilt(which, comm),
        Command::Info { address, json } => {
            if comm.is_root() {
                crate::job::info(&address, json)?;
            }
            Ok(())
        }
        Command::Debug {
            which: DebugCommand::CommCheck,
        } => comm_check(comm),
        Command::Demo { dir } => crate::demo::run(&dir, comm),
        Command::Gpu { which } if comm.is_root() => gpu(which),
        Command::Gpu { .. } => Ok(()),
        Command::Bench { which } => bench(which, comm),
    }
}

/// `tessera patches` and `patches verify`.
fn patches(which: Option<PatchesCommand>, job: PatchesJob, comm: &dyn Comm) -> Result<()> {
    match which {
        Some(PatchesCommand::Verify(args)) => crate::ops::patches::verify::run(&args, comm),
        None if job.output.is_empty() => Err(Error::parameter(
            "output",
            "required: tessera patches --manifest CSV --output DIR (see --help)",
        )),
        None => crate::job::run_job(Job::Patches(job), comm),
    }
}

/// `tessera pyramid` and `pyramid reconstruct`.
fn pyramid(which: Option<PyramidCommand>, job: PyramidJob, comm: &dyn Comm) -> Result<()> {
    match which {
        Some(PyramidCommand::Reconstruct(job)) => crate::job::run_job(Job::Reconstruct(job), comm),
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
        None => crate::job::run_job(Job::Pyramid(job), comm),
    }
}

/// `tessera run JOB.toml`: the file's job; the flags add to its `[run]` table, they never switch
/// an option off.
fn run_file(
    job: &Path,
    (resume, overwrite, dry_run): (bool, bool, bool),
    comm: &dyn Comm,
) -> Result<()> {
    let mut job = JobFile::load(job)?;
    let run = job.run_options_mut();
    run.resume |= resume;
    run.overwrite |= overwrite;
    run.dry_run |= dry_run;
    crate::job::run_job(job, comm)
}

/// `tessera quilt unstitch|stitch|weed|border-mask`.
fn quilt(which: QuiltCommand, comm: &dyn Comm) -> Result<()> {
    match which {
        QuiltCommand::Unstitch(job) => crate::job::run_job(Job::Unstitch(job), comm),
        QuiltCommand::Stitch(job) => crate::job::run_job(Job::Stitch(job), comm),
        QuiltCommand::Weed(job) => crate::job::run_job(Job::Weed(job), comm),
        QuiltCommand::BorderMask {
            output,
            window,
            border,
            overwrite,
        } => crate::comm::on_root(comm, || {
            crate::ops::quilt::write_border_mask(&output, &window, &border, overwrite)
        }),
    }
}

/// `tessera gpu info|compile|resources` (rank 0).
fn gpu(which: GpuCommand) -> Result<()> {
    match which {
        GpuCommand::Info => crate::gpu::info(),
        GpuCommand::Compile { arch, cache } => crate::gpu::compile_all(&arch, cache),
        GpuCommand::Resources { arch, check } => crate::gpu::resources_all(&arch, check),
    }
}

/// `tessera bench ...`.
fn bench(which: BenchCommand, comm: &dyn Comm) -> Result<()> {
    match which {
        BenchCommand::Convert(b) => crate::bench::convert(&b, comm),
        BenchCommand::Quilt(b) => crate::bench::quilt(&b, comm),
        BenchCommand::Pyramid(b) => crate::bench::pyramid::run(&b, comm),
        BenchCommand::Crop(b) => crate::bench::crop::run(&b, comm),
        BenchCommand::Hdr(b) => crate::bench::hdr::run(&b, comm),
        BenchCommand::Pairs(b) => crate::bench::pairs::run(&b, comm),
        BenchCommand::Patches(b) => crate::bench::patches::run(&b, comm),
        BenchCommand::Scaling(b) => crate::bench::scaling::run(&b, comm),
        BenchCommand::Memcopy(b) => crate::bench::memcopy::run(&b, comm),
    }
}

/// `tessera debug comm-check`: every collective, and where each rank runs.
fn comm_check(comm: &dyn Comm) -> Result<()> {
    use crate::comm::selfcheck;
    let mut failures = selfcheck::run(comm);
    let placed = selfcheck::placements(comm, crate::exec::threads::plan().threads);
    if comm.is_root() {
        failures.extend(selfcheck::misplaced(&placed));
    }
    for f in &failures {
        eprintln!("{f}");
    }
    let failed = comm.any_failed(!failures.is_empty());
    if comm.is_root() && failed.is_none() {
        for p in &placed {
            println!("placement: {p}");
        }
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
        HdrCommand::Merge(job) => crate::job::run_hdr_merge(job, comm),
    }
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
