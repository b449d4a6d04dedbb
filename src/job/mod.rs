//! What to do: the parameters of every command, as one set of types that both the command
//! line (clap) and TOML job files (serde) fill in. `tessera run job.toml` reads a file with
//! an optional `[run]` table (the run options: overwrite, resume, dry_run, report) and one
//! table naming the operation, e.g. `[convert]`, holding exactly the command's flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod run;
pub use run::{default_report, info, run_hdr_merge, run_job};

use crate::error::{Error, Result};
use crate::exec::RunOptions;
use crate::io::{Codec, DType};

/// The default file-name pattern: `<name>_<index>.<ext>`.
pub const DEFAULT_PATTERN: &str = r"(.+)_(\d+)\.[A-Za-z0-9]+$";

/// How channels and slices are arranged in a multi-channel stack's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum AxisOrder {
    /// (Z, C, Y, X): one slice after another, channels inside each slice.
    #[default]
    #[value(name = "ZCYX")]
    #[serde(rename = "ZCYX")]
    Zcyx,
    /// (C, Z, Y, X): one channel volume after another.
    #[value(name = "CZYX")]
    #[serde(rename = "CZYX")]
    Czyx,
}

/// Output format when `--output` names a directory (several stacks, or no suffix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `<dir>/<stack>.zarr`
    #[default]
    Zarr,
    /// `<dir>/<stack>.h5:/data`
    Hdf5,
    /// `<dir>/<stack>.npy`
    Npy,
}

/// `tessera convert`: a directory of image files to one array per stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConvertJob {
    /// Directory holding the image files.
    #[arg(long)]
    pub input: PathBuf,
    /// Regular expression matched at the start of each file name: group 1 names the stack,
    /// group 2 is the slice index (an integer).
    #[arg(long, default_value = DEFAULT_PATTERN)]
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// Output array address (`out.zarr`, `out.h5:/data`, `out.npy`), or a directory that
    /// receives `<stack>.zarr` per stack (always a directory when there are several stacks).
    #[arg(long)]
    pub output: PathBuf,
    /// Only files with this extension (e.g. `.tif`); default: every TIFF, PNG and JPEG file.
    #[arg(long)]
    #[serde(default)]
    pub extension: Option<String>,
    /// Axis order of multi-channel stacks (single-channel stacks are always Z, Y, X).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub axis_order: AxisOrder,
    /// Chunk shape, one value per output axis; default 1 slice of up to 512x512 (all channels
    /// for ZCYX).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub chunks: Option<Vec<u64>>,
    /// Shard shape (Zarr only), a multiple of the chunk shape on every axis.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub shards: Option<Vec<u64>>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    /// Output element type (default: the files' own); values that do not fit are an error.
    /// Float slices going to an integer type are rounded to the nearest integer (0.4 -> 0,
    /// 0.6 -> 1): scale them first if they hold fractions such as 0..1; a run that rounds
    /// any away warns once per stack, naming the file and the first such value.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub dtype: Option<DType>,
    /// Format of the per-stack outputs when `--output` is a directory.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub format: OutputFormat,
    /// Write each stack as an OME-Zarr pyramid with this many levels (`auto`: until every
    /// axis fits in one chunk), as `tessera pyramid` would from the converted array.
    #[arg(long)]
    #[serde(default)]
    pub pyramid_levels: Option<String>,
    /// Pyramid method (with --pyramid-levels).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub pyramid_method: crate::ops::pyramid::kernel::Method,
    /// Pyramid factor per spatial axis, e.g. 1,2,2 for per-slice 2-D pyramids (default 2).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub pyramid_factor: Option<Vec<u64>>,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

fn default_pattern() -> String {
    DEFAULT_PATTERN.to_string()
}

fn default_border_weight() -> f64 {
    0.1
}

fn default_sigma() -> f64 {
    0.125
}

/// Window geometry flags shared by the quilt commands (spatial axes only: `[Z,]Y,X`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GeometryArgs {
    /// Window size per spatial axis, e.g. 128,128 or 64,64,64.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub window: Vec<u64>,
    /// Step between windows per spatial axis (at most the window unless --allow-gaps).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub step: Vec<u64>,
    /// Border band width: one value, or one per spatial axis; 0 means none.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub border: Vec<u64>,
    /// Weight of pixels in the border band, in [0, 1] (raised to at least 1e-8).
    #[arg(long, default_value_t = 0.1)]
    #[serde(default = "default_border_weight")]
    pub border_weight: f64,
    /// Window weighting when stitching.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub blend: crate::ops::quilt::kernel::Blend,
    /// Gaussian sigma as a fraction of the window (with --blend gaussian).
    #[arg(long, default_value_t = 0.125)]
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// Accept steps larger than the window (pixels between windows are then not covered).
    #[arg(long)]
    #[serde(default)]
    pub allow_gaps: bool,
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

/// Geometry flags of `quilt stitch`. The window placement (`--window`, `--step`, `--border`)
/// is the patches' own when they carry a `quilt` attribute: a flag that contradicts it is
/// refused, never ignored. The weighting (`--blend`, `--sigma`, `--border-weight`) may
/// differ from unstitch's: given, it replaces the attribute's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct StitchGeometryArgs {
    /// Window size per spatial axis (patches without a `quilt` attribute; else must match it).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub window: Vec<u64>,
    /// Step between windows per spatial axis (as --window).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub step: Vec<u64>,
    /// Border band width, one value or one per spatial axis (as --window).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub border: Vec<u64>,
    /// Weight of border-band pixels in [0, 1] (default: the patches' own, else 0.1).
    #[arg(long)]
    #[serde(default)]
    pub border_weight: Option<f64>,
    /// Window weighting (default: the patches' own, else border).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub blend: Option<crate::ops::quilt::kernel::Blend>,
    /// Gaussian sigma as a fraction of the window (default: the patches' own, else 0.125).
    #[arg(long)]
    #[serde(default)]
    pub sigma: Option<f64>,
    /// Accept steps larger than the window (patches without a `quilt` attribute).
    #[arg(long)]
    #[serde(default)]
    pub allow_gaps: bool,
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
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
    /// part of the output: a run may resume on another device and gives the same bytes.
    #[arg(long, default_value_t, value_name = "auto|cpu|cuda|cuda:N")]
    #[serde(default, skip_serializing)]
    pub device: crate::gpu::DeviceChoice,
    /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
    /// shared by the ranks on that GPU); larger units are done in pieces.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub gpu_memory_limit: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

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
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub chunks: Option<Vec<u64>>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    /// Memory per rank for stitching, e.g. 512M or 4G (two blocks in flight per rank).
    #[arg(long, default_value = "2G")]
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
    /// part of the output: a run may resume on another device and gives the same bytes.
    #[arg(long, default_value_t, value_name = "auto|cpu|cuda|cuda:N")]
    #[serde(default, skip_serializing)]
    pub device: crate::gpu::DeviceChoice,
    /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
    /// shared by the ranks on that GPU); larger units are done in pieces.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub gpu_memory_limit: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

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
    /// Border band to ignore (default: the `border` of the patches' `quilt` attribute, else none).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub border: Vec<u64>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

fn default_missing_label() -> f64 {
    -1.0
}

fn default_memory_limit() -> String {
    "2G".into()
}

/// Where the levels of a pyramid go in its Zarr store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PyramidLayout {
    /// OME-Zarr 0.5: one group, arrays `0..L`, `multiscales` metadata.
    #[default]
    Ome,
    /// pyramid_sampler's `<store>/<field>/<level>` (give the output as `store.zarr/field`).
    PyramidSampler,
}

/// `tessera pyramid`: a multiscale pyramid of an array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PyramidJob {
    /// Input array address (level 0). Required.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub input: String,
    /// Output Zarr store (`out.zarr`; `store.zarr/field` with `--layout pyramid-sampler`).
    /// Required.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub output: String,
    /// Axis names, one letter per axis from t, c, z, y, x (e.g. `czyx`); default: every axis
    /// spatial (up to 3), or the input's own OME-Zarr axes.
    #[arg(long)]
    #[serde(default)]
    pub axes: Option<String>,
    /// Reduction factor per spatial axis (one value for all); non-spatial axes keep 1.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub factor: Option<Vec<u64>>,
    /// Number of levels including level 0; default: until every reduced axis fits in one chunk.
    #[arg(long)]
    #[serde(default)]
    pub levels: Option<u64>,
    /// How a level is made from the one below.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub method: crate::ops::pyramid::kernel::Method,
    /// Chunk shape of every level, one value per axis (clipped to each level); default 64 per
    /// spatial axis in 3-D, 512 in 2-D, 1 for channel and time.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub chunks: Option<Vec<u64>>,
    /// Shard shape of every level (a multiple of the chunks).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub shards: Option<Vec<u64>>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    /// Store layout.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub layout: PyramidLayout,
    /// Level-0 voxel size per spatial axis (one value for all), for the OME scale transforms.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub voxel_size: Option<Vec<f64>>,
    /// Unit of the voxel size (an OME/UDUNITS name, e.g. micrometer).
    #[arg(long)]
    #[serde(default)]
    pub unit: Option<String>,
    /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
    /// part of the output: every method gives the same bytes on both, so a run may resume on
    /// another device.
    #[arg(long, default_value_t, value_name = "auto|cpu|cuda|cuda:N")]
    #[serde(default, skip_serializing)]
    pub device: crate::gpu::DeviceChoice,
    /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
    /// shared by the ranks on that GPU); a unit that does not fit is refused.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub gpu_memory_limit: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

/// `tessera pyramid reconstruct`: level 0 back from a Laplacian pyramid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ReconstructJob {
    /// The Laplacian pyramid (the Zarr store `tessera pyramid --method laplacian` wrote).
    #[arg(long)]
    pub input: String,
    /// Output array address (level 0, in level 0's element type).
    #[arg(long)]
    pub output: String,
    /// Output chunk shape (default: level 0's).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub chunks: Option<Vec<u64>>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

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
    pub center: crate::ops::crop::kernel::CentreMethod,
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
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub seed: u64,
    /// Where to run the kernels: auto (a GPU when there is one), cpu, cuda, or cuda:N. Not
    /// part of the output: the analysis and the crop are the same bytes on both.
    #[arg(long, default_value_t, value_name = "auto|cpu|cuda|cuda:N")]
    #[serde(default, skip_serializing)]
    pub device: crate::gpu::DeviceChoice,
    /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
    /// shared by the ranks on that GPU); patterns are sent in batches of half of it.
    #[arg(long)]
    #[serde(default, skip_serializing)]
    pub gpu_memory_limit: Option<String>,
    /// Chunk compression (Zarr/HDF5 outputs).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

/// `tessera pairs`: displaced patch pairs of (N, C, [Z,] Y, X) images for self-supervised
/// training, written as the Zarr group qlty's `ZarrPatchPairDataset` reads (or, with
/// `--metadata-only`, a table of where each pair sits and its statistics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PairsJob {
    /// Images, (N, C, Y, X) or (N, C, Z, Y, X). Required.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub input: String,
    /// The pairs' Zarr group (`pairs.zarr`); with --metadata-only, the metadata array
    /// (`meta.npy`, `meta.zarr`, `meta.h5:/pairs`). Required.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub output: String,
    /// Patch size per spatial axis, e.g. 64,64 or 32,32,32. Required.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub window: Vec<u64>,
    /// Pairs drawn from every image (M = N x P pairs, image-major).
    #[arg(long, default_value_t = 16)]
    #[serde(default = "default_pairs_per_image")]
    pub pairs_per_image: u64,
    /// LOW,HIGH: the displacement's length |d| lies in [LOW, HIGH], with
    /// max(window)//4 <= LOW <= HIGH <= 3*max(window)//4. Required.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub delta_range: Vec<f64>,
    /// Seed of the sampling (each image has its own stream from it).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub seed: u64,
    /// Quarter turns the second patch may get, one chosen uniformly per pair (2-D; e.g.
    /// 0,1,2,3); default none.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub rotations: Vec<u8>,
    /// Also write `positions1`/`positions2`: each patch's corner [y, x] or [z, y, x].
    #[arg(long)]
    #[serde(default)]
    pub positions: bool,
    /// With --positions, put the image index first: [n, y, x].
    #[arg(long, requires = "positions")]
    #[serde(default)]
    pub include_n: bool,
    /// Also write the pixels both patches see: `overlap1`, `overlap2` (K, C) and
    /// `overlap_offsets` (M+1).
    #[arg(long)]
    #[serde(default)]
    pub overlaps: bool,
    /// Write only per-pair metadata (positions, displacement, turns, mean and sigma of both
    /// patches), for `tessera pairs select` and `tessera pairs extract`.
    #[arg(long, conflicts_with_all = ["positions", "overlaps"])]
    #[serde(default)]
    pub metadata_only: bool,
    /// Pairs per chunk of the output arrays (default: about 4 MiB of first patches).
    #[arg(long)]
    #[serde(default)]
    pub pairs_per_chunk: Option<u64>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

fn default_pairs_per_image() -> u64 {
    16
}

/// `tessera pairs extract`: the pixels of chosen pairs of a metadata table, as `tessera pairs`
/// would have written them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PairsExtractJob {
    /// The images the metadata was drawn from.
    #[arg(long)]
    pub input: String,
    /// The metadata array (`tessera pairs --metadata-only`).
    #[arg(long)]
    pub metadata: String,
    /// The chosen pair indices (`tessera pairs select`); default every pair.
    #[arg(long)]
    #[serde(default)]
    pub select: Option<String>,
    /// The pairs' Zarr group.
    #[arg(long)]
    pub output: String,
    /// Patch size (default: the metadata's own `pairs` attribute).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub window: Vec<u64>,
    /// Also write `positions1`/`positions2`.
    #[arg(long)]
    #[serde(default)]
    pub positions: bool,
    /// With --positions, put the image index first.
    #[arg(long, requires = "positions")]
    #[serde(default)]
    pub include_n: bool,
    /// Also write the pixels both patches see.
    #[arg(long)]
    #[serde(default)]
    pub overlaps: bool,
    /// Pairs per chunk of the output arrays.
    #[arg(long)]
    #[serde(default)]
    pub pairs_per_chunk: Option<u64>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

/// `tessera pairs select`: a stratified sample of pairs from their metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PairsSelectJob {
    /// The metadata array (`tessera pairs --metadata-only`).
    #[arg(long)]
    pub metadata: String,
    /// Where to write the chosen pair indices (int64, ascending).
    #[arg(long)]
    pub output: String,
    /// How (mean, sigma) bins are cut.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub by: crate::ops::pairs::select::Strata,
    /// Bins per statistic (bins x bins cells).
    #[arg(long, default_value_t = 20)]
    #[serde(default = "default_bins")]
    pub bins: u64,
    /// Pairs drawn from each cell (all of a cell that holds fewer).
    #[arg(long, default_value_t = 10)]
    #[serde(default = "default_per_bin")]
    pub per_bin: u64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub seed: u64,
    /// Replace an existing output.
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
}

fn default_bins() -> u64 {
    20
}

fn default_per_bin() -> u64 {
    10
}

/// `tessera tokens`: pre-tokenized 2-D patch pairs with token overlaps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TokensJob {
    /// A pairs group (`tessera pairs` or `pairs extract`).
    #[arg(long)]
    pub input: String,
    /// The tokens' Zarr group.
    #[arg(long)]
    pub output: String,
    /// Token side T (at most the patch side).
    #[arg(long)]
    pub token_size: u64,
    /// Step between tokens (default T/2; at most T).
    #[arg(long)]
    #[serde(default)]
    pub token_stride: Option<u64>,
    /// Pairs per chunk of the output arrays (default: about 4 MiB of first tokens).
    #[arg(long)]
    #[serde(default)]
    pub pairs_per_chunk: Option<u64>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

fn default_split_name() -> String {
    "train".into()
}
fn default_patch_size() -> u64 {
    128
}
fn default_stride() -> u64 {
    64
}

/// How `tessera patches` stores the patches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PatchFormat {
    /// One `{patch_id}.npy` (float32, (ps, ps)) per patch: the notebook's layout.
    #[default]
    Npy,
    /// One array `patches.zarr` of shape (M, ps, ps), chunked along M (for file systems that
    /// suffer from millions of small files); the manifest gives each patch's `zarr_index`.
    Zarr,
}

/// `tessera patches`: CT slices (a manifest of slice files, or a volume) cut into square
/// patches on a stride grid, with a manifest and provenance, as the CT patch notebook does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PatchesJob {
    /// CSV with a `path` column (slice files relative to --data-root, `/` or `\`); row i is
    /// slice i; its other columns are carried into the patch manifest as `src_<name>`.
    #[arg(long)]
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Name of the --manifest split (the first part of every patch id).
    #[arg(long, default_value = "train")]
    #[serde(default = "default_split_name")]
    pub split_name: String,
    /// Several splits in one run, NAME=MANIFEST each (repeat the flag): each split is written
    /// to OUTPUT/NAME/ as a dataset of its own.
    #[arg(long = "split")]
    #[serde(default)]
    pub split: Vec<String>,
    /// The directory manifest paths are relative to (and the manifest's and patches' paths in
    /// the outputs); default: the manifest's directory, or with --input the input's.
    #[arg(long)]
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// Instead of a manifest: a 3-D volume (file.npy, store.zarr, file.h5:/dataset) whose axis
    /// 0 indexes the slices, or a directory of image files read as `convert` reads a stack.
    #[arg(long)]
    #[serde(default)]
    pub input: Option<String>,
    /// Output directory (the patches, patch_manifest.csv, patch_meta.json). Required.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub output: String,
    /// Patch side in pixels.
    #[arg(long, default_value_t = default_patch_size())]
    #[serde(default = "default_patch_size")]
    pub patch_size: u64,
    /// Step between patch origins. Origins are r*stride for r in 0..=(H-patch)/stride on each
    /// axis, row-major, nothing padded: a window that would cross the far edge is dropped
    /// (unlike quilt, whose last window is moved flush with the edge).
    #[arg(long, default_value_t = default_stride())]
    #[serde(default = "default_stride")]
    pub stride: u64,
    /// npy: one file per patch; zarr: one (M, ps, ps) array.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub format: PatchFormat,
    /// Drop patches whose standard deviation is below this (low-variance background).
    #[arg(long)]
    #[serde(default)]
    pub min_std: Option<f64>,
    /// Patches per Zarr chunk (--format zarr; default: about 4 MiB per chunk).
    #[arg(long)]
    #[serde(default)]
    pub chunks: Option<u64>,
    /// Patches per Zarr shard, a multiple of --chunks (--format zarr).
    #[arg(long)]
    #[serde(default)]
    pub shards: Option<u64>,
    /// Chunk compression (--format zarr).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

/// A TOML job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default)]
    pub run: RunOptions,
    #[serde(default)]
    pub convert: Option<ConvertJob>,
    #[serde(default)]
    pub unstitch: Option<UnstitchJob>,
    #[serde(default)]
    pub stitch: Option<StitchJob>,
    #[serde(default)]
    pub weed: Option<WeedJob>,
    #[serde(default)]
    pub pyramid: Option<PyramidJob>,
    #[serde(default)]
    pub crop: Option<CropJob>,
    #[serde(default)]
    pub pairs: Option<PairsJob>,
    #[serde(default)]
    pub pairs_extract: Option<PairsExtractJob>,
    #[serde(default)]
    pub tokens: Option<TokensJob>,
    pub patches: Option<PatchesJob>,
}

/// A job to run, whichever way it was given.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Convert(ConvertJob),
    Unstitch(UnstitchJob),
    Stitch(StitchJob),
    Weed(WeedJob),
    Pyramid(PyramidJob),
    Reconstruct(ReconstructJob),
    Crop(CropJob),
    Pairs(PairsJob),
    PairsExtract(PairsExtractJob),
    Tokens(TokensJob),
    Patches(PatchesJob),
}

impl Job {
    /// The output as the user named it (a report goes beside it by default).
    pub fn output(&self) -> PathBuf {
        match self {
            Job::Convert(j) => j.output.clone(),
            Job::Unstitch(j) => j.output.clone().into(),
            Job::Stitch(j) => j.output.clone().into(),
            Job::Weed(j) => j.output.clone().into(),
            Job::Pyramid(j) => j.output.clone().into(),
            Job::Reconstruct(j) => j.output.clone().into(),
            Job::Crop(j) => j.output.clone().into(),
            Job::Pairs(j) => j.output.clone().into(),
            Job::PairsExtract(j) => j.output.clone().into(),
            Job::Tokens(j) => j.output.clone().into(),
            Job::Patches(j) => j.output.clone().into(),
        }
    }

    /// The run options (`[run]` table, or the command's flags) of this job.
    pub fn run_options(&self) -> &RunOptions {
        match self {
            Job::Convert(j) => &j.run,
            Job::Unstitch(j) => &j.run,
            Job::Stitch(j) => &j.run,
            Job::Weed(j) => &j.run,
            Job::Pyramid(j) => &j.run,
            Job::Reconstruct(j) => &j.run,
            Job::Crop(j) => &j.run,
            Job::Pairs(j) => &j.run,
            Job::PairsExtract(j) => &j.run,
            Job::Tokens(j) => &j.run,
            Job::Patches(j) => &j.run,
        }
    }

    /// [`Job::run_options`], to change (`tessera run --resume` and friends).
    pub fn run_options_mut(&mut self) -> &mut RunOptions {
        match self {
            Job::Convert(j) => &mut j.run,
            Job::Unstitch(j) => &mut j.run,
            Job::Stitch(j) => &mut j.run,
            Job::Weed(j) => &mut j.run,
            Job::Pyramid(j) => &mut j.run,
            Job::Reconstruct(j) => &mut j.run,
            Job::Crop(j) => &mut j.run,
            Job::Pairs(j) => &mut j.run,
            Job::PairsExtract(j) => &mut j.run,
            Job::Tokens(j) => &mut j.run,
            Job::Patches(j) => &mut j.run,
        }
    }
}

/// The dotted key of the first date or time value in a TOML table.
fn datetime_key(table: &toml::Table) -> Option<String> {
    fn within(value: &toml::Value, key: String) -> Option<String> {
        match value {
            toml::Value::Datetime(_) => Some(key),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| within(v, format!("{key}.{k}"))),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| within(v, format!("{key}[{i}]"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| within(v, k.clone()))
}

impl JobFile {
    /// Reads and checks a TOML job file: exactly one operation table.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong in it.
    pub fn parse(path: &Path, text: &str) -> Result<Job> {
        // No job field is a date: an unquoted one is a path or name that TOML read as a
        // date (serde would only say "invalid type: map").
        if let Some(key) = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| datetime_key(&t))
        {
            return Err(Error::Config {
                path: path.into(),
                message: format!(
                    "{key}: TOML read this value as a date or time; put paths and names in quotes"
                ),
            });
        }
        let file: JobFile = toml::from_str(text).map_err(|e| Error::Config {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        // Relative paths in a job file are relative to the file, not the caller; a job read
        // from a pipe or device (`/dev/stdin`) has no directory of its own: the working one.
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let base = if special {
            PathBuf::new()
        } else {
            path.parent().unwrap_or(Path::new("")).to_path_buf()
        };
        let rel = |p: &str| base.join(p).to_string_lossy().into_owned();
        let report = file.run.report.as_ref().map(|r| base.join(r));
        let mut run = file.run.clone();
        run.report = report;
        let tables = usize::from(file.convert.is_some())
            + usize::from(file.unstitch.is_some())
            + usize::from(file.stitch.is_some())
            + usize::from(file.weed.is_some())
            + usize::from(file.pyramid.is_some())
            + usize::from(file.crop.is_some())
            + usize::from(file.pairs.is_some())
            + usize::from(file.pairs_extract.is_some())
            + usize::from(file.tokens.is_some())
            + usize::from(file.patches.is_some());
        if tables != 1 {
            return Err(Error::Config {
                path: path.into(),
                message: format!(
                    "expected exactly one operation table ([convert], [unstitch], [stitch], [weed], [pyramid], [crop], [pairs], [pairs_extract], [tokens] or [patches]), found {tables}"
                ),
            });
        }
        if let Some(job) = Self::pairs_job(&file, &run, &rel) {
            return Ok(job);
        }
        if let Some(mut convert) = file.convert {
            convert.run = run;
            convert.input = base.join(&convert.input);
            convert.output = base.join(&convert.output);
            return Ok(Job::Convert(convert));
        }
        if let Some(mut job) = file.unstitch {
            job.run = run;
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            job.positions = job.positions.as_deref().map(rel);
            return Ok(Job::Unstitch(job));
        }
        if let Some(mut job) = file.crop {
            job.run = run;
            job.input = job.input.as_deref().map(rel);
            job.output = rel(&job.output);
            return Ok(Job::Crop(job));
        }
        if let Some(mut job) = file.patches {
            job.run = run;
            job.manifest = job.manifest.as_ref().map(|p| base.join(p));
            job.data_root = job.data_root.as_ref().map(|p| base.join(p));
            job.input = job.input.as_deref().map(rel);
            job.output = rel(&job.output);
            job.split = job
                .split
                .iter()
                .map(|s| match s.split_once('=') {
                    Some((name, path)) => format!("{name}={}", rel(path)),
                    None => s.clone(),
                })
                .collect();
            return Ok(Job::Patches(job));
        }
        if let Some(mut job) = file.pyramid {
            job.run = run;
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            return Ok(Job::Pyramid(job));
        }
        if let Some(mut job) = file.weed {
            job.run = run;
            job.input = rel(&job.input);
            job.labels = rel(&job.labels);
            job.output = rel(&job.output);
            job.labels_output = rel(&job.labels_output);
            job.mask = rel(&job.mask);
            return Ok(Job::Weed(job));
        }
        let mut job = file.stitch.expect("one table is present");
        job.run = run;
        job.input = rel(&job.input);
        job.output = rel(&job.output);
        job.weights = job.weights.as_deref().map(rel);
        job.variance = job.variance.as_deref().map(rel);
        job.std = job.std.as_deref().map(rel);
        Ok(Job::Stitch(job))
    }

    /// The `[pairs]`, `[pairs_extract]` or `[tokens]` table as a job, paths made relative to
    /// the file.
    fn pairs_job(file: &JobFile, run: &RunOptions, rel: &dyn Fn(&str) -> String) -> Option<Job> {
        if let Some(job) = &file.pairs {
            let mut job = job.clone();
            job.run = run.clone();
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            return Some(Job::Pairs(job));
        }
        if let Some(job) = &file.pairs_extract {
            let mut job = job.clone();
            job.run = run.clone();
            job.input = rel(&job.input);
            job.metadata = rel(&job.metadata);
            job.select = job.select.as_deref().map(rel);
            job.output = rel(&job.output);
            return Some(Job::PairsExtract(job));
        }
        let mut job = file.tokens.clone()?;
        job.run = run.clone();
        job.input = rel(&job.input);
        job.output = rel(&job.output);
        Some(Job::Tokens(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_take_a_device() {
        let job: StitchJob =
            toml::from_str("input = \"p.zarr\"\noutput = \"o.zarr\"\ndevice = \"cuda:1\"").unwrap();
        assert_eq!(job.device, crate::gpu::DeviceChoice::Cuda(Some(1)));
        let e = toml::from_str::<StitchJob>(
            "input = \"p.zarr\"\noutput = \"o.zarr\"\ndevice = \"gpu7\"",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("expected auto, cpu, cuda or cuda:N"),
            "{e}"
        );
        // Not part of the resume identity (the job's serde form).
        assert!(serde_json::to_value(&job).unwrap().get("device").is_none());
    }

    #[test]
    fn parses_a_convert_job_relative_to_the_file() {
        let job = JobFile::parse(
            Path::new("/cfg/job.toml"),
            "[run]\noverwrite = true\n[convert]\ninput = \"in\"\noutput = \"/abs/o.zarr\"\ncodec = \"gzip\"\nchunks = [1, 64, 64]\naxis_order = \"CZYX\"\n",
        )
        .unwrap();
        let Job::Convert(c) = job else {
            panic!("a convert job")
        };
        assert_eq!(c.input, PathBuf::from("/cfg/in"));
        assert_eq!(c.output, PathBuf::from("/abs/o.zarr"));
        assert_eq!(c.codec, Codec::Gzip);
        assert_eq!(c.chunks, Some(vec![1, 64, 64]));
        assert_eq!(c.axis_order, AxisOrder::Czyx);
        assert_eq!(c.pattern, DEFAULT_PATTERN);
        assert!(c.run.overwrite);
    }

    #[test]
    fn rejects_unknown_keys_and_missing_tables() {
        let e = JobFile::parse(
            Path::new("j.toml"),
            "[convert]\ninput=\"a\"\noutput=\"b\"\nchunk=[1]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("j.toml") && e.contains("chunk"), "{e}");
        assert!(JobFile::parse(Path::new("j.toml"), "[run]\n").is_err());
        assert!(JobFile::parse(Path::new("j.toml"), "not toml [").is_err());
    }
}

/// The `--resume` identity covers every flag of every resumable command: the parameters are
/// the job's serde form, so each flag must appear in it, and changing any one of them must be
/// refused with a message naming that flag.
#[cfg(test)]
mod resume_identity {
    use clap::{CommandFactory, Parser};
    use serde_json::{json, Value};

    use crate::cli::{
        Cli, Command, HdrCommand, PairsCli, PairsCommand, PatchesCli, PyramidCli, PyramidCommand,
        QuiltCommand,
    };

    /// Flags that are not parameters of the output: run options and logging.
    const NOT_PARAMETERS: [&str; 12] = [
        "threads",
        // Where the kernels run: the same bytes on every device, so a run may resume on another.
        "device",
        "gpu_memory_limit",
        "overwrite",
        "resume",
        "dry_run",
        "report",
        "verbose",
        "quiet",
        "log_format",
        "help",
        "version",
    ];

    /// (command path, a minimal command line, its job as JSON).
    fn jobs() -> Vec<(Vec<&'static str>, Value)> {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        let value = |c: Command| -> Value {
            match c {
                Command::Convert(j) => serde_json::to_value(j),
                Command::Crop(j) => serde_json::to_value(j),
                Command::Patches(PatchesCli { which: None, job }) => serde_json::to_value(job),
                Command::Pyramid(PyramidCli { which: None, job }) => serde_json::to_value(job),
                Command::Pyramid(PyramidCli {
                    which: Some(PyramidCommand::Reconstruct(j)),
                    ..
                }) => serde_json::to_value(j),
                Command::Quilt { which } => match which {
                    QuiltCommand::Unstitch(j) => serde_json::to_value(j),
                    QuiltCommand::Stitch(j) => serde_json::to_value(j),
                    QuiltCommand::Weed(j) => serde_json::to_value(j),
                    other => panic!("not resumable: {other:?}"),
                },
                Command::Hdr {
                    which: HdrCommand::Merge(j),
                } => serde_json::to_value(j),
                Command::Pairs(PairsCli { which: None, job }) => serde_json::to_value(job),
                Command::Pairs(PairsCli {
                    which: Some(PairsCommand::Extract(j)),
                    ..
                }) => serde_json::to_value(j),
                Command::Tokens(j) => serde_json::to_value(j),
                other => panic!("not resumable: {other:?}"),
            }
            .unwrap()
        };
        let io = ["--input", "in.npy", "--output", "out.zarr"];
        let with = |path: &[&'static str], extra: &[&str]| {
            let mut args = vec!["tessera"];
            args.extend(path);
            args.extend(extra);
            (path.to_vec(), value(parse(&args)))
        };
        vec![
            with(&["convert"], &io),
            with(&["crop"], &io),
            with(&["pyramid"], &io),
            with(&["pyramid", "reconstruct"], &io),
            with(&["quilt", "unstitch"], &io),
            with(&["quilt", "stitch"], &io),
            with(
                &["quilt", "weed"],
                &[
                    "--input",
                    "i.npy",
                    "--labels",
                    "l.npy",
                    "--output",
                    "o.npy",
                    "--labels-output",
                    "lo.npy",
                    "--mask",
                    "m.npy",
                ],
            ),
            with(&["hdr", "merge"], &io),
            with(&["pairs"], &io),
            with(
                &["pairs", "extract"],
                &[
                    "--input",
                    "i.npy",
                    "--metadata",
                    "m.npy",
                    "--output",
                    "o.zarr",
                ],
            ),
            with(
                &["tokens"],
                &[
                    "--input",
                    "p.zarr",
                    "--output",
                    "t.zarr",
                    "--token-size",
                    "8",
                ],
            ),
            with(&["patches"], &["--manifest", "m.csv", "--output", "out"]),
        ]
    }

    /// Every leaf of a JSON object, by dotted path.
    fn leaves(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(x, &path, out);
                }
            }
            other => out.push((at.to_string(), other.clone())),
        }
    }

    fn changed(v: &Value) -> Value {
        match v {
            Value::Null => json!("x"),
            Value::Bool(b) => json!(!b),
            Value::Number(n) => json!(n.as_f64().unwrap() + 1.0),
            Value::String(s) => json!(format!("{s}x")),
            Value::Array(a) => {
                let mut a = a.clone();
                a.push(json!(1));
                Value::Array(a)
            }
            Value::Object(_) => unreachable!("leaves are not objects"),
        }
    }

    #[test]
    fn every_flag_is_part_of_the_identity() {
        let cli = Cli::command();
        for (path, job) in jobs() {
            let mut command = &cli;
            for name in &path {
                command = command.find_subcommand(name).unwrap();
            }
            let mut keys = Vec::new();
            leaves(&job, "", &mut keys);
            let keys: Vec<String> = keys
                .into_iter()
                .map(|(k, _)| k.rsplit('.').next().unwrap().to_string())
                .collect();
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if NOT_PARAMETERS.contains(&id) || arg.is_positional() {
                    continue;
                }
                assert!(
                    keys.iter().any(|k| k == id),
                    "{path:?}: flag --{} is not in the resume identity {job}",
                    arg.get_long().unwrap_or(id)
                );
            }
        }
    }

    #[test]
    fn changing_any_parameter_is_refused_by_name() {
        let cli = Cli::command();
        for (path, job) in jobs() {
            let mut command = &cli;
            for name in &path {
                command = command.find_subcommand(name).unwrap();
            }
            let mut fields = Vec::new();
            leaves(&job, "", &mut fields);
            let before = json!({"parameters": job, "plan": {"units": 3}});
            assert!(crate::exec::journal::check_same(&before, &before).is_ok());
            for (field, value) in fields {
                let mut after = before.clone();
                let mut slot = &mut after["parameters"];
                for part in field.split('.') {
                    slot = &mut slot[part];
                }
                *slot = changed(&value);
                let e = crate::exec::journal::check_same(&before, &after)
                    .unwrap_err()
                    .to_string();
                let leaf = field.rsplit('.').next().unwrap();
                let long = command
                    .get_arguments()
                    .find(|a| a.get_id().as_str() == leaf)
                    .and_then(|a| a.get_long())
                    .unwrap_or_else(|| panic!("{path:?}: {field} is not a flag"));
                assert!(
                    e.starts_with("--resume:") && e.contains(&format!("--{long} (was ")),
                    "{path:?}: changing {field} gave: {e}"
                );
            }
        }
    }
}
