//! Operations, one folder each: `mod.rs` implements [`crate::exec::Operation`] (parameters,
//! plan, what is exchanged), `kernel.rs` holds the pure CPU kernels.

pub mod convert;
pub mod crop;
pub mod hdr;
pub mod pairs;
pub mod patches;
pub mod pyramid;
pub mod quilt;
