//! `tessera quilt`: cut (N, C, [Z,] Y, X) arrays into overlapping windows and stitch
//! predictions back with weighted averaging. The kernels are in [`kernel`]; the window
//! placement is [`crate::grid::windows`].

pub mod kernel;
