//! `tessera crop`: two-pass automatic cropping of 4D-STEM diffraction patterns.

pub mod kernel;
