//! The CUDA C sources of every kernel, as NVRTC compiles them: each `.cu` file with the
//! headers it includes pasted in (NVRTC sees no files). Plain strings, so they are here in
//! every build; `tessera gpu compile` and the CI test compile each one for the architectures
//! tessera supports.

/// One compilation unit: a `.cu` file and the kernels (`extern "C" __global__`) it defines.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// `op/file`, e.g. `quilt/stitch`; the module's name in the cache and in messages.
    pub name: &'static str,
    pub cu: &'static str,
    /// Headers the `.cu` (or another header) includes by file name.
    pub headers: &'static [(&'static str, &'static str)],
    pub functions: &'static [&'static str],
}

const COMMON: (&str, &str) = ("common.cuh", include_str!("common.cuh"));

pub const STITCH: KernelSource = KernelSource {
    name: "quilt/stitch",
    cu: include_str!("../ops/quilt/stitch.cu"),
    headers: &[
        COMMON,
        ("stitch.cuh", include_str!("../ops/quilt/stitch.cuh")),
    ],
    functions: &["stitch_f32_f32", "stitch_f64_f32", "stitch_f64_f64"],
};

pub const UNSTITCH: KernelSource = KernelSource {
    name: "quilt/unstitch",
    cu: include_str!("../ops/quilt/unstitch.cu"),
    headers: &[
        COMMON,
        ("unstitch.cuh", include_str!("../ops/quilt/unstitch.cuh")),
    ],
    functions: &["cut_u8", "cut_u16", "cut_u32", "cut_u64"],
};

pub const DEBEVEC: KernelSource = KernelSource {
    name: "hdr/debevec",
    cu: include_str!("../ops/hdr/debevec.cu"),
    headers: &[
        COMMON,
        ("debevec.cuh", include_str!("../ops/hdr/debevec.cuh")),
    ],
    functions: &["debevec_merge"],
};

/// The pyramid's reductions, one kernel per input type and step, and the Laplacian's
/// difference maps.
pub const PYRAMID: KernelSource = KernelSource {
    name: "pyramid/reduce",
    cu: include_str!("../ops/pyramid/reduce.cu"),
    headers: &[
        COMMON,
        ("reduce.cuh", include_str!("../ops/pyramid/reduce.cuh")),
    ],
    functions: &[
        "mean_u8",
        "mean_u16",
        "mean_u32",
        "mean_u64",
        "mean_i8",
        "mean_i16",
        "mean_i32",
        "mean_i64",
        "mean_f32",
        "mean_f64",
        "mode_u8",
        "mode_u16",
        "mode_u32",
        "mode_u64",
        "mode_i8",
        "mode_i16",
        "mode_i32",
        "mode_i64",
        "mode_f32",
        "mode_f64",
        "to_f64_u8",
        "to_f64_u16",
        "to_f64_u32",
        "to_f64_u64",
        "to_f64_i8",
        "to_f64_i16",
        "to_f64_i32",
        "to_f64_i64",
        "to_f64_f32",
        "to_f64_f64",
        "round_u8",
        "round_u16",
        "round_u32",
        "round_u64",
        "round_i8",
        "round_i16",
        "round_i32",
        "round_i64",
        "round_f32",
        "round_f64",
        "gauss_in_u8",
        "gauss_in_u16",
        "gauss_in_u32",
        "gauss_in_u64",
        "gauss_in_i8",
        "gauss_in_i16",
        "gauss_in_i32",
        "gauss_in_i64",
        "gauss_in_f32",
        "gauss_in_f64",
        "gauss_out_u8",
        "gauss_out_u16",
        "gauss_out_u32",
        "gauss_out_u64",
        "gauss_out_i8",
        "gauss_out_i16",
        "gauss_out_i32",
        "gauss_out_i64",
        "gauss_out_f32",
        "gauss_out_f64",
        "gauss_inout_u8",
        "gauss_inout_u16",
        "gauss_inout_u32",
        "gauss_inout_u64",
        "gauss_inout_i8",
        "gauss_inout_i16",
        "gauss_inout_i32",
        "gauss_inout_i64",
        "gauss_inout_f32",
        "gauss_inout_f64",
        "gauss_axis",
        "laplacian_diff",
        "laplacian_diff_pass_f64",
        "laplacian_diff_pass_f32",
    ],
};

/// The crop's two passes, one kernel per input type and pass.
pub const CROP: KernelSource = KernelSource {
    name: "crop/crop",
    cu: include_str!("../ops/crop/crop.cu"),
    headers: &[COMMON, ("crop.cuh", include_str!("../ops/crop/crop.cuh"))],
    functions: &[
        "crop_analyse_u8",
        "crop_analyse_u16",
        "crop_analyse_u32",
        "crop_analyse_u64",
        "crop_analyse_i8",
        "crop_analyse_i16",
        "crop_analyse_i32",
        "crop_analyse_i64",
        "crop_analyse_f32",
        "crop_analyse_f64",
        "crop_window_u8",
        "crop_window_u16",
        "crop_window_u32",
        "crop_window_u64",
        "crop_window_i8",
        "crop_window_i16",
        "crop_window_i32",
        "crop_window_i64",
        "crop_window_f32",
        "crop_window_f64",
    ],
};

/// Every kernel source tessera has.
pub const ALL: &[KernelSource] = &[STITCH, UNSTITCH, DEBEVEC, PYRAMID, CROP];

/// The architectures CI compiles every kernel for (A100 and H100 class).
pub const CHECKED_ARCHITECTURES: &[&str] = &["compute_80", "compute_90"];

impl KernelSource {
    /// The source NVRTC compiles: `#include "x"` lines replaced by header x's text, once each
    /// (the headers are `#pragma once`), recursively.
    pub fn source(&self) -> String {
        let mut seen = Vec::new();
        self.expand(self.cu, &mut seen)
    }

    fn expand(&self, text: &str, seen: &mut Vec<&'static str>) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let included = line
                .trim()
                .strip_prefix("#include")
                .map(|rest| rest.trim().trim_matches('"'));
            match included.and_then(|f| self.headers.iter().find(|(name, _)| *name == f)) {
                Some((name, body)) => {
                    if !seen.contains(name) {
                        seen.push(name);
                        out.push_str(&self.expand(body, seen));
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_include_their_headers_once_and_name_their_kernels() {
        for k in ALL {
            let src = k.source();
            assert!(!src.contains("#include"), "{}: an include was left", k.name);
            assert_eq!(src.matches("#define TESSERA_HD").count(), 2, "{}", k.name);
            for f in k.functions {
                assert!(src.contains(f), "{}: no kernel {f}", k.name);
            }
        }
    }
}
