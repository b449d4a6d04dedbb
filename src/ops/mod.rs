//! Operations, one folder each: `mod.rs` implements [`crate::exec::Operation`] (parameters,
//! plan, what is exchanged), `kernel.rs` holds the pure CPU kernels.

pub mod convert;
pub mod crop;
pub mod flags;
pub mod hdr;
pub mod pairs;
pub mod patches;
pub mod pyramid;
pub mod quilt;

/// An array of `shape` in `chunks` with nothing else set: the default chunk keys, no shards,
/// no dimension names, no attributes.
pub fn plain_spec(
    shape: Vec<u64>,
    dtype: crate::io::DType,
    chunks: Vec<u64>,
    codec: crate::io::Codec,
) -> crate::io::CreateSpec {
    crate::io::CreateSpec {
        flat_chunk_keys: false,
        shape,
        dtype,
        chunks,
        shards: None,
        codec,
        dimension_names: None,
        attributes: serde_json::Map::new(),
    }
}
