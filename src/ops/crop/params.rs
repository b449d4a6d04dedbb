//! `tessera crop`'s parameters: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

/// Which centre each pattern is cropped around.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recenter {
    /// Each pattern around its own centre (removes beam shifts).
    #[default]
    Each,
    /// Every pattern around the mean centre (keeps beam shifts).
    Common,
}

fn default_target_retention() -> f64 {
    0.98
}
fn default_min_retention() -> f64 {
    0.95
}
fn default_margin() -> u64 {
    3
}
fn default_percentile() -> f64 {
    100.0
}
fn default_chunk_size() -> u64 {
    1000
}
fn default_test_patterns() -> u64 {
    1000
}
fn default_test_size() -> u64 {
    256
}

job_params! {
    /// `tessera crop`: two-pass automatic cropping of diffraction patterns.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct CropJob {
        /// Patterns (N, H, W), (N, 1, H, W) or a 4D-STEM scan (Sy, Sx, H, W). Not with --test-mode.
        #[arg(long)]
        #[serde(default)]
        pub input: Option<String>,
        /// Output array address (leading axes kept, (H, W) replaced by the crop).
        #[arg(long)]
        pub output: String,
        /// Fraction of each pattern's intensity the crop must keep.
        #[arg(long, default_value_t = default_target_retention())]
        #[serde(default = "default_target_retention")]
        pub target_retention: f64,
        /// Lowest acceptable retention of any pattern (validation).
        #[arg(long, default_value_t = default_min_retention())]
        #[serde(default = "default_min_retention")]
        pub min_retention: f64,
        /// Pixels added to the radius.
        #[arg(long, default_value_t = default_margin())]
        #[serde(default = "default_margin")]
        pub margin_pixels: u64,
        /// Percentile of the per-pattern radii used for the global radius (100 = max).
        #[arg(long, default_value_t = default_percentile())]
        #[serde(default = "default_percentile")]
        pub percentile: f64,
        /// How each pattern's centre is found.
        #[arg(long, value_enum, default_value_t)]
        #[serde(default)]
        pub center: super::kernel::CentreMethod,
        /// The centre for --center manual, as Y,X (pixels).
        #[arg(long, value_delimiter = ',')]
        #[serde(default)]
        pub manual_center: Option<Vec<f64>>,
        /// Crop each pattern around its own centre, or all around the mean centre.
        #[arg(long, value_enum, default_value_t)]
        #[serde(default)]
        pub recenter: Recenter,
        /// Patterns read at once per rank (memory is bounded by this, not by N).
        #[arg(long, default_value_t = default_chunk_size())]
        #[serde(default = "default_chunk_size")]
        pub chunk_size: u64,
        /// Skip the PNG.
        #[arg(long)]
        #[serde(default)]
        pub no_visualization: bool,
        /// Exit non-zero when any pattern keeps less than --min-retention.
        #[arg(long)]
        #[serde(default)]
        pub strict: bool,
        /// Synthesise Airy-disk patterns with Poisson noise and crop those.
        #[arg(long)]
        #[serde(default)]
        pub test_mode: bool,
        /// Number of synthetic patterns.
        #[arg(long, default_value_t = default_test_patterns())]
        #[serde(default = "default_test_patterns")]
        pub test_patterns: u64,
        /// Side of the synthetic patterns.
        #[arg(long, default_value_t = default_test_size())]
        #[serde(default = "default_test_size")]
        pub test_size: u64,
        /// Seed of the synthetic data.
        seed,
        /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
        /// part of the output: the analysis and the crop are the same bytes on both.
        device,
        /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
        /// shared by the ranks on that GPU); patterns are sent in batches of half of it.
        gpu_memory_limit,
        /// Chunk compression (Zarr/HDF5 outputs).
        codec,
        run,
    }
}
