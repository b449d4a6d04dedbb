//! `tessera hdr`'s parameters (calibrate, lne-range, merge, synthetic, and the scan options
//! three of them share): one type per command, filled by the command line (clap); merge's
//! serde form is also its `--resume` identity. No job file holds an `hdr` command.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::debevec::WeightType;
use super::files::ExposureUnit;
use crate::ops::flags::job_params;

/// Where the brackets come from (shared by every `hdr` command).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct ScanOptions {
    /// Directory of images named `YYYYmmddHHMMSS_<EXPO>.<ext>` (JPEG, PNG, TIFF).
    #[arg(long)]
    pub input: PathBuf,
    /// Also look in subdirectories (outputs keep the relative layout).
    #[arg(long)]
    #[serde(default)]
    pub recursive: bool,
    /// Files whose timestamps round down to the same multiple of this form one bracket
    /// (`30s`, `1min`, `2h`).
    #[arg(long, default_value = "30s")]
    #[serde(default = "default_round")]
    pub round_ts_to: String,
    /// Unit of the exposure number in the file names.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub exposure_unit: ExposureUnit,
}

fn default_round() -> String {
    "30s".into()
}

/// How calibration samples are picked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Technique {
    /// Uniformly random positions.
    #[default]
    Random,
    /// Positions spread over the intensity range of the middle exposure.
    Histogram,
}

/// `tessera hdr calibrate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct CalibrateJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub scan: ScanOptions,
    /// The response file to write (`.npz`); its plot goes beside it (`response_curve.png` for
    /// `response.npz`, else `<name>_curve.png`).
    #[arg(long)]
    pub response: PathBuf,
    /// Pixel positions sampled per bracket.
    #[arg(long, default_value_t = 1000)]
    pub samples_per_image: usize,
    #[arg(long, value_enum, default_value_t)]
    pub sample_technique: Technique,
    /// Brackets used, spread evenly over the archive.
    #[arg(long, default_value_t = 10)]
    pub max_processed_groups: usize,
    /// Weight of the smoothness rows (lambda).
    #[arg(long, default_value_t = 50.0)]
    pub smoothness: f64,
    #[arg(long, value_enum, default_value_t)]
    pub weight_type: WeightType,
    /// Values below this are not sampled.
    #[arg(long, default_value_t = 5)]
    pub low_clip: u8,
    /// Values above this are not sampled.
    #[arg(long, default_value_t = 250)]
    pub high_clip: u8,
    /// Seed of the sampling (fixed by default, so that runs repeat).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace an existing response file.
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
}

/// `tessera hdr lne-range`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct RangeJob {
    #[command(flatten)]
    #[serde(flatten)]
    pub scan: ScanOptions,
    /// Response file from `tessera hdr calibrate`.
    #[arg(long)]
    pub response: PathBuf,
}

/// Merge methods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Radiance from the response curve (needs --response).
    #[default]
    Debevec,
    /// Mertens exposure fusion (display values, no response needed).
    Mertens,
}

/// Output formats of `merge`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One OpenEXR file (float32) per bracket.
    #[default]
    Exr,
    /// One `.npy` (Y, X, C) float32 per bracket.
    Npy,
    /// One (T, Y, X, C) float32 Zarr array for the archive, with a `timestamps` array.
    Zarr,
}

/// Preview formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preview {
    Png,
}

job_params! {
    /// `tessera hdr merge`.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    pub struct MergeJob {
        #[command(flatten)]
        #[serde(flatten)]
        pub scan: ScanOptions,
        /// Response file from `tessera hdr calibrate` (Debevec only).
        #[arg(long)]
        pub response: Option<PathBuf>,
        /// Output directory (exr, npy) or Zarr store (zarr).
        #[arg(long)]
        pub output: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        pub method: Method,
        #[arg(long, value_enum, default_value_t)]
        pub format: Format,
        /// Also write an 8-bit tone-mapped preview per bracket.
        #[arg(long, value_enum)]
        pub preview: Option<Preview>,
        /// Weighting of the Debevec merge.
        #[arg(long, value_enum, default_value_t)]
        pub weight_type: WeightType,
        /// Where to run the Debevec merge: auto (a GPU when there is one), cpu, cuda, or cuda:N
        /// (same bytes on each). Mertens fusion runs on the CPU.
        device,
        /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
        /// shared by the ranks on that GPU); larger images are merged in bands.
        gpu_memory_limit,
        run,
    }
}

/// `tessera hdr synthetic`: example brackets to try the commands on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct SyntheticJob {
    /// Directory to write `YYYYmmddHHMMSS_<EXPO>.png` (or `.jpg`) files into.
    #[arg(long)]
    pub output: PathBuf,
    /// Brackets (30 s apart from 2024-06-01 12:00:00).
    #[arg(long, default_value_t = 4)]
    pub brackets: usize,
    /// Exposures per bracket (1 ms, then x4 steps).
    #[arg(long, default_value_t = 5)]
    pub exposures: usize,
    /// Image side.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// File format of the exposures: png (lossless) or jpeg (quality 90, as cameras write).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub format: SyntheticFormat,
    /// Replace image files of the same names already in the directory.
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
}

/// File formats of `hdr synthetic`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SyntheticFormat {
    #[default]
    Png,
    Jpeg,
}
