//! tessera: a batch processor for large scientific image data.
//!
//! One process on a laptop, many MPI ranks on a cluster, the same code. Data flows down
//! through the layers; nothing flows back up:
//!
//! - [`job`]: what to do (the same serde + clap types for flags and TOML job files);
//! - [`exec`]: the generic runner (units per rank, rounds, journal, progress, report);
//! - [`ops`]: one folder per operation: its plan and its pure kernels;
//! - [`io`]: arrays in Zarr, HDF5, `.npy` and image files, behind one pair of traits;
//! - [`gpu`]: device selection and the CUDA layer (kernels compiled at run time by NVRTC);
//! - [`comm`]: collectives over one process or MPI ranks;
//! - [`grid`]: boxes, chunk-aligned runs, partitions (pure).
//!
//! `cli` (in the binary's library half) parses the command line and calls these.

pub mod bench;
pub mod cli;
pub mod comm;
pub mod demo;
pub mod error;
pub mod exec;
pub mod gpu;
pub mod grid;
pub mod io;
pub mod job;
pub mod launch;
pub mod ops;
pub mod units;

pub use error::{Error, Result};
