//! `tessera convert`'s parameters: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

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
    /// `<dir>/<stack>.pt` (a tensor file for torch.load)
    Pt,
}

job_params! {
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
        chunks,
        /// Shard shape (Zarr only), a multiple of the chunk shape on every axis.
        shards,
        /// Chunk compression.
        codec,
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
        run,
    }
}

impl ConvertJob {
    /// The `.tif` slices in `input` whose names match `pattern` to one ZCYX Zarr array at
    /// `output` (replaced if there), no pyramid; chunks, shards and codec to be set.
    pub fn tifs_to_zarr(input: PathBuf, pattern: &str, output: PathBuf) -> ConvertJob {
        ConvertJob {
            input,
            pattern: pattern.into(),
            output,
            extension: Some(".tif".into()),
            axis_order: AxisOrder::Zcyx,
            chunks: None,
            shards: None,
            codec: Codec::default(),
            dtype: None,
            format: OutputFormat::Zarr,
            pyramid_levels: None,
            pyramid_method: Default::default(),
            pyramid_factor: None,
            run: RunOptions {
                overwrite: true,
                ..RunOptions::default()
            },
        }
    }
}

fn default_pattern() -> String {
    DEFAULT_PATTERN.to_string()
}
