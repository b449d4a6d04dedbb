//! Quilt's parameters (unstitch, stitch, weed) and its geometry groups: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

fn default_border_weight() -> f64 {
    0.1
}

fn default_sigma() -> f64 {
    0.125
}

job_params! {
    /// Window geometry flags shared by the quilt commands (spatial axes only: `[Z,]Y,X`).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct GeometryArgs {
        /// Window size per spatial axis, e.g. 128,128 or 64,64,64.
        window,
        /// Step between windows per spatial axis (at most the window unless --allow-gaps).
        step,
        /// Border band width: one value, or one per spatial axis; 0 means none.
        border,
        /// Weight of pixels in the border band, in [0, 1] (raised to at least 1e-8).
        #[arg(long, default_value_t = 0.1)]
        #[serde(default = "default_border_weight")]
        pub border_weight: f64,
        /// Window weighting when stitching.
        #[arg(long, value_enum, default_value_t)]
        #[serde(default)]
        pub blend: super::kernel::Blend,
        /// Gaussian sigma as a fraction of the window (with --blend gaussian).
        #[arg(long, default_value_t = 0.125)]
        #[serde(default = "default_sigma")]
        pub sigma: f64,
        /// Accept steps larger than the window (pixels between windows are then not covered).
        #[arg(long)]
        #[serde(default)]
        pub allow_gaps: bool,
    }
}

impl Default for GeometryArgs {
    fn default() -> Self {
        GeometryArgs {
            window: vec![],
            step: vec![],
            border: vec![],
            border_weight: default_border_weight(),
            blend: Default::default(),
            sigma: default_sigma(),
            allow_gaps: false,
        }
    }
}

job_params! {
    /// Geometry flags of `quilt stitch`. The window placement (`--window`, `--step`, `--border`)
    /// is the patches' own when they carry a `quilt` attribute: a flag that contradicts it is
    /// refused, never ignored. The weighting (`--blend`, `--sigma`, `--border-weight`) may
    /// differ from unstitch's: given, it replaces the attribute's.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct StitchGeometryArgs {
        /// Window size per spatial axis (patches without a `quilt` attribute; else must match it).
        window,
        /// Step between windows per spatial axis (as --window).
        step,
        /// Border band width, one value or one per spatial axis (as --window).
        border,
        /// Weight of border-band pixels in [0, 1] (default: the patches' own, else 0.1).
        #[arg(long)]
        #[serde(default)]
        pub border_weight: Option<f64>,
        /// Window weighting (default: the patches' own, else border).
        #[arg(long, value_enum)]
        #[serde(default)]
        pub blend: Option<super::kernel::Blend>,
        /// Gaussian sigma as a fraction of the window (default: the patches' own, else 0.125).
        #[arg(long)]
        #[serde(default)]
        pub sigma: Option<f64>,
        /// Accept steps larger than the window (patches without a `quilt` attribute).
        #[arg(long)]
        #[serde(default)]
        pub allow_gaps: bool,
    }
}

impl StitchGeometryArgs {
    /// The flags as unstitch's, the weighting taken from `base` where not given.
    pub fn over(&self, base: &GeometryArgs) -> GeometryArgs {
        let pick = |mine: &Vec<u64>, theirs: &Vec<u64>| {
            if mine.is_empty() {
                theirs.clone()
            } else {
                mine.clone()
            }
        };
        GeometryArgs {
            window: pick(&self.window, &base.window),
            step: pick(&self.step, &base.step),
            border: pick(&self.border, &base.border),
            border_weight: self.border_weight.unwrap_or(base.border_weight),
            blend: self.blend.unwrap_or(base.blend),
            sigma: self.sigma.unwrap_or(base.sigma),
            allow_gaps: self.allow_gaps || base.allow_gaps,
        }
    }
}

job_params! {
    /// `tessera quilt unstitch`: an (N, C, [Z,] Y, X) array to (M, C, *window) patches.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct UnstitchJob {
        /// Input array address.
        #[arg(long)]
        pub input: String,
        /// Patch array address.
        #[arg(long)]
        pub output: String,
        /// In a job file: the `[unstitch.geometry]` table.
        #[command(flatten)]
        pub geometry: GeometryArgs,
        /// Where to write each patch's start `[n, z?, y, x]` as an (M, 1 + ndim) int64 array;
        /// default `<output name>_positions.npy` beside the output.
        #[arg(long)]
        #[serde(default)]
        pub positions: Option<String>,
        /// Patches per chunk of the patch array (default: about 4 MiB of patches).
        #[arg(long)]
        #[serde(default)]
        pub patches_per_chunk: Option<u64>,
        /// Chunk compression.
        codec,
        /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
        /// part of the output: a run may resume on another device and gives the same bytes.
        device,
        /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
        /// shared by the ranks on that GPU); larger units are done in pieces.
        gpu_memory_limit,
        run,
    }
}

job_params! {
    /// `tessera quilt stitch`: (M, C, *window) patches back to (N, C, [Z,] Y, X).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct StitchJob {
        /// Patch array address (its `quilt` attribute holds the geometry).
        #[arg(long)]
        pub input: String,
        /// Output array address (the weighted mean).
        #[arg(long)]
        pub output: String,
        /// Also write the per-pixel sum of weights (qlty's `norma`), shape (N, [Z,] Y, X).
        #[arg(long)]
        #[serde(default)]
        pub weights: Option<String>,
        /// Per-patch variances, same shape as the patches (with --std).
        #[arg(long, requires = "std")]
        #[serde(default)]
        pub variance: Option<String>,
        /// Write the weighted standard deviation here (with --variance).
        #[arg(long, requires = "variance")]
        #[serde(default)]
        pub std: Option<String>,
        /// Image shape N,C,[Z,]Y,X, for patch arrays without a `quilt` attribute (bare .npy);
        /// then --window and --step are required too. With the attribute, must match it.
        #[arg(long, value_delimiter = ',')]
        #[serde(default)]
        pub shape: Option<Vec<u64>>,
        /// In a job file: the `[stitch.geometry]` table.
        #[command(flatten)]
        #[serde(default)]
        pub geometry: StitchGeometryArgs,
        /// Output chunk shape (default 1,1,rows,512,512 clipped to the image).
        chunks,
        /// Chunk compression.
        codec,
        /// Memory per rank for stitching, e.g. 512M or 4G (two blocks in flight per rank).
        #[arg(long, default_value = "2G")]
        #[serde(default = "default_memory_limit")]
        pub memory_limit: String,
        /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
        /// part of the output: a run may resume on another device and gives the same bytes.
        device,
        /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
        /// shared by the ranks on that GPU); larger units are done in pieces.
        gpu_memory_limit,
        run,
    }
}

job_params! {
    /// `tessera quilt weed`: drop (input, label) patch pairs whose labels are all missing outside
    /// the border band (qlty's `weed_sparse_classification_training_pairs`).
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    pub struct WeedJob {
        /// Input patches (M, C, *window).
        #[arg(long)]
        pub input: String,
        /// Label patches (M, C', *window), same M and window.
        #[arg(long)]
        pub labels: String,
        /// The label value that means "not annotated".
        #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
        #[serde(default = "default_missing_label")]
        pub missing_label: f64,
        /// Kept input patches.
        #[arg(long)]
        pub output: String,
        /// Kept label patches.
        #[arg(long)]
        pub labels_output: String,
        /// Where to write the (M,) uint8 mask: 1 for a removed pair, 0 for a kept one.
        #[arg(long)]
        pub mask: String,
        /// Border band to ignore (default: the `border` of the patches' `quilt` attribute, else
        /// none).
        border,
        /// Chunk compression.
        codec,
        run,
    }
}

fn default_missing_label() -> f64 {
    -1.0
}

fn default_memory_limit() -> String {
    "2G".into()
}
