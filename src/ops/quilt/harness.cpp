// Host harness of the quilt kernels (build.rs compiles it with the `cc` crate): each function
// runs a whole launch grid on the CPU, one call of the per-thread body (stitch.cuh,
// unstitch.cuh) per thread index, in index order. src/gpu/harness.rs compares the results
// bit for bit with the CPU kernels (kernel.rs). Compiled with -ffp-contract=off and no
// fast-math, as the device code is with --fmad=false.
#include <cmath>
#include <cstddef>

#include "stitch.cuh"
#include "unstitch.cuh"
#include "harness_support.h"

namespace {

// Every thread of a launch of `blocks` blocks of lanes x rows threads, in index order.
template <typename P, typename O>
u64 host_stitch(const StitchGeom* g, const i64* ranges, const i64* starts, const double* weights,
                const P* patches, const P* variances, O* mean, O* wsum, O* std_out,
                int with_wsum, i64 lanes, i64 rows, i64 blocks) {
    u64 left_out = 0;
    for (i64 b = 0; b < blocks; b++) {
        for (i64 y = 0; y < rows; y++) {
            for (i64 lane = 0; lane < lanes; lane++) {
                left_out += stitch_rows<P, O>(*g, ranges, starts, weights, patches, variances,
                                              mean, with_wsum ? wsum : (O*)0, std_out, lane,
                                              lanes, b * rows + y, blocks * rows);
            }
        }
    }
    return left_out;
}

// Every thread of a launch of `blocks` blocks of lanes x rows threads, in index order.
template <typename T>
void host_cut(const CutGeom* g, const i64* starts, const T* box, T* out, i64 lanes, i64 rows,
              i64 blocks) {
    for (i64 b = 0; b < blocks; b++) {
        for (i64 y = 0; y < rows; y++) {
            for (i64 lane = 0; lane < lanes; lane++) {
                cut_rows<T>(*g, starts, box, out, lane, lanes, b * rows + y, blocks * rows);
            }
        }
    }
}

}  // namespace

#define TESSERA_HOST_STITCH(NAME, P, O)                                                        \
    extern "C" u64 NAME(const StitchGeom* g, const i64* ranges, const i64* starts,             \
                        const double* weights, const P* patches, const P* variances, O* mean,  \
                        O* wsum, O* std_out, int with_wsum, i64 lanes, i64 rows, i64 blocks) { \
        return host_stitch<P, O>(g, ranges, starts, weights, patches, variances, mean, wsum,   \
                                 std_out, with_wsum, lanes, rows, blocks);                     \
    }

TESSERA_HOST_STITCH(tessera_host_stitch_f32_f32, float, float)
TESSERA_HOST_STITCH(tessera_host_stitch_f64_f32, double, float)
TESSERA_HOST_STITCH(tessera_host_stitch_f64_f64, double, double)

#define TESSERA_HOST_CUT(NAME, T)                                                              \
    extern "C" void NAME(const CutGeom* g, const i64* starts, const T* box, T* out, i64 lanes,  \
                         i64 rows, i64 blocks) {                                               \
        host_cut<T>(g, starts, box, out, lanes, rows, blocks);                                 \
    }

TESSERA_HOST_CUT(tessera_host_cut_u8, u8)
TESSERA_HOST_CUT(tessera_host_cut_u16, u16)
TESSERA_HOST_CUT(tessera_host_cut_u32, u32)
TESSERA_HOST_CUT(tessera_host_cut_u64, u64)

// The geometry structs' layout as C++ sees it: size, then every field's offset in declaration
// order, so the Rust twins can be checked field for field.
extern "C" void tessera_host_stitch_geom_layout(i64* out) {
#define F(field) offsetof(StitchGeom, field)
    tessera_write_layout(out, {sizeof(StitchGeom), F(channels), F(window), F(block), F(counts),
                               F(first), F(offsets), F(with_variance), F(band_axis),
                               F(band_rows), F(band_origin), F(band_starts)});
#undef F
}

extern "C" void tessera_host_cut_geom_layout(i64* out) {
#define F(field) offsetof(CutGeom, field)
    tessera_write_layout(out, {sizeof(CutGeom), F(channels), F(window), F(box), F(patches)});
#undef F
}
