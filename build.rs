//! Compiles the GPU kernels' per-thread bodies (the `.cuh` headers) for the host, through small C++
//! harnesses that loop over a whole launch grid on the CPU. The tests in
//! `src/gpu/harness.rs` check them bit for bit against the CPU kernels, so CI verifies the
//! kernels' arithmetic without a GPU.
//!
//! The flags keep host arithmetic IEEE like the device's (NVRTC with --fmad=false): no FMA
//! contraction, no fast-math, and no -march=native (which could bring FMA instructions in).

fn main() {
    const INCLUDES: [&str; 5] = [
        "src/gpu",
        "src/ops/quilt",
        "src/ops/hdr",
        "src/ops/pyramid",
        "src/ops/crop",
    ];
    const SOURCES: [&str; 4] = [
        "src/ops/quilt/harness.cpp",
        "src/ops/hdr/harness.cpp",
        "src/ops/pyramid/harness.cpp",
        "src/ops/crop/harness.cpp",
    ];
    const HEADERS: [&str; 7] = [
        "src/gpu/common.cuh",
        "src/gpu/harness_support.h",
        "src/ops/quilt/stitch.cuh",
        "src/ops/quilt/unstitch.cuh",
        "src/ops/hdr/debevec.cuh",
        "src/ops/pyramid/reduce.cuh",
        "src/ops/crop/crop.cuh",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    for path in SOURCES.iter().chain(&HEADERS) {
        println!("cargo:rerun-if-changed={path}");
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true);
    for dir in INCLUDES {
        build.include(dir);
    }
    if build.get_compiler().is_like_msvc() {
        build.flag("/std:c++14").flag("/fp:strict");
    } else {
        build
            .std("c++14")
            .flag("-ffp-contract=off")
            .flag("-fno-fast-math");
    }
    build.files(SOURCES).compile("tessera_kernels_host");
}
