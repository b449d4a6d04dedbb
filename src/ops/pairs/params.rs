//! The parameters of `pairs`, `pairs extract`, `pairs select` and `tokens`: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

job_params! {
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
        window,
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
        seed,
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
        include_n,
        /// Also write the pixels both patches see: `overlap1`, `overlap2` (K, C) and
        /// `overlap_offsets` (M+1).
        overlaps,
        /// Write only per-pair metadata (positions, displacement, turns, mean and sigma of both
        /// patches), for `tessera pairs select` and `tessera pairs extract`.
        #[arg(long, conflicts_with_all = ["positions", "overlaps"])]
        #[serde(default)]
        pub metadata_only: bool,
        /// Pairs per chunk of the output arrays (default: about 4 MiB of first patches).
        pairs_per_chunk,
        /// Chunk compression.
        codec,
        run,
    }
}

fn default_pairs_per_image() -> u64 {
    16
}

job_params! {
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
        window,
        /// Also write `positions1`/`positions2`.
        #[arg(long)]
        #[serde(default)]
        pub positions: bool,
        /// With --positions, put the image index first.
        include_n,
        /// Also write the pixels both patches see.
        overlaps,
        /// Pairs per chunk of the output arrays.
        pairs_per_chunk,
        /// Chunk compression.
        codec,
        run,
    }
}

job_params! {
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
        pub by: super::select::Strata,
        /// Bins per statistic (bins x bins cells).
        #[arg(long, default_value_t = 20)]
        #[serde(default = "default_bins")]
        pub bins: u64,
        /// Pairs drawn from each cell (all of a cell that holds fewer).
        #[arg(long, default_value_t = 10)]
        #[serde(default = "default_per_bin")]
        pub per_bin: u64,
        /// Seed of the draws.
        seed,
        /// Replace an existing output.
        #[arg(long)]
        #[serde(default)]
        pub overwrite: bool,
    }
}

fn default_bins() -> u64 {
    20
}

fn default_per_bin() -> u64 {
    10
}

job_params! {
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
        pairs_per_chunk,
        /// Chunk compression.
        codec,
        run,
    }
}
