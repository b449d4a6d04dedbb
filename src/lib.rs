//! tessera: a batch processor for large scientific image data.
pub mod comm;
pub mod error;
pub mod grid;
pub mod io;
