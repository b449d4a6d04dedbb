//! `tessera pyramid`'s and `pyramid reconstruct`'s parameters: one type per command, filled by the command line
//! (clap), TOML job tables (serde) and, through those, every front end; its serde form is
//! also a run's `--resume` identity. `job/` lists the jobs and reads the files.
//!
//! A field given by its name alone (`codec,`) is a flag several operations share, declared once
//! in [`crate::ops::flags`].

use serde::{Deserialize, Serialize};

use crate::ops::flags::job_params;

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

job_params! {
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
        pub method: super::kernel::Method,
        /// Chunk shape of every level, one value per axis (clipped to each level); default 64 per
        /// spatial axis in 3-D, 512 in 2-D, 1 for channel and time.
        chunks,
        /// Shard shape of every level (a multiple of the chunks).
        shards,
        /// Chunk compression.
        codec,
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
        device,
        /// Device memory this rank may use on a GPU, e.g. 8G (default: 80% of the free memory,
        /// shared by the ranks on that GPU); a unit that does not fit is refused.
        gpu_memory_limit,
        run,
    }
}

job_params! {
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
        chunks,
        /// Chunk compression.
        codec,
        run,
    }
}
