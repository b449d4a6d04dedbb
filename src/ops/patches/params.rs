//! `tessera patches`' parameters: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

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

job_params! {
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
        codec,
        run,
    }
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
