// Host harness of the pyramid kernels (build.rs compiles it with the `cc` crate): each
// function runs a whole launch grid on the CPU, one call of the per-voxel body (reduce.cuh)
// per thread index, in index order. src/gpu/harness.rs compares the results bit for bit with
// the CPU kernels (kernel.rs). Compiled with -ffp-contract=off and no fast-math, as the device
// code is with --fmad=false.
#include <cmath>
#include <cstddef>

#include "harness_support.h"
#include "reduce.cuh"

// A host loop over every output value `e` of a reduction (`n` of them): out[e] = EXPR.
#define TESSERA_HOST_REDUCE(NAME, T, EXPR)                                                    \
    extern "C" void NAME(const ReduceGeom* g, const T* in, T* out, i64 n) {                  \
        for (i64 e = 0; e < n; e++) out[e] = EXPR;                                           \
    }

// A host loop over every output value `e` of an axis pass from I to O: out[e] = EXPR.
#define TESSERA_HOST_AXIS_PASS(NAME, I, O, EXPR)                                              \
    extern "C" void NAME(const AxisGeom* g, const i64* first, const i64* count, const i64* at, \
                         const double* weights, const I* in, O* out) {                        \
        const i64 n = g->outer * g->out_len * g->inner;                                      \
        for (i64 e = 0; e < n; e++) out[e] = EXPR;                                           \
    }

// One type's host functions (the Rust side declares them with host_kernels!).
#define TESSERA_HOST_PYRAMID(SUFFIX, T)                                                       \
    TESSERA_HOST_REDUCE(tessera_host_mean_##SUFFIX, T, reduce_mean_out<T>(*g, in, e))         \
    TESSERA_HOST_REDUCE(tessera_host_mode_##SUFFIX, T, reduce_mode_voxel<T>(*g, in, e))       \
    extern "C" void tessera_host_round_##SUFFIX(const double* in, T* out, i64 n) {           \
        for (i64 e = 0; e < n; e++) out[e] = tessera_round_to<T>(in[e]);                     \
    }                                                                                        \
    TESSERA_HOST_AXIS_PASS(tessera_host_gauss_in_##SUFFIX, T, double,                        \
                           weigh_axis_voxel<T>(*g, first, count, at, weights, in, e))        \
    TESSERA_HOST_AXIS_PASS(                                                                  \
        tessera_host_gauss_out_##SUFFIX, double, T,                                          \
        tessera_round_to<T>(weigh_axis_voxel<double>(*g, first, count, at, weights, in, e))) \
    TESSERA_HOST_AXIS_PASS(                                                                  \
        tessera_host_gauss_inout_##SUFFIX, T, T,                                             \
        tessera_round_to<T>(weigh_axis_voxel<T>(*g, first, count, at, weights, in, e)))

TESSERA_HOST_PYRAMID(u8, u8)
TESSERA_HOST_PYRAMID(u16, u16)
TESSERA_HOST_PYRAMID(u32, u32)
TESSERA_HOST_PYRAMID(u64, u64)
TESSERA_HOST_PYRAMID(i8, signed char)
TESSERA_HOST_PYRAMID(i16, short)
TESSERA_HOST_PYRAMID(i32, int)
TESSERA_HOST_PYRAMID(i64, i64)
TESSERA_HOST_PYRAMID(f32, float)
TESSERA_HOST_PYRAMID(f64, double)

TESSERA_HOST_AXIS_PASS(tessera_host_gauss_axis, double, double,
                       weigh_axis_voxel<double>(*g, first, count, at, weights, in, e))

extern "C" void tessera_host_laplacian_diff(const ReduceGeom* g, const float* fine,
                                            const double* up, float* out, i64 n) {
    for (i64 e = 0; e < n; e++) out[e] = laplacian_diff_voxel(*g, fine, up, e);
}

// The difference fused with the last upsampling pass, whose input is I.
#define TESSERA_HOST_DIFF_PASS(SUFFIX, I)                                                     \
    extern "C" void tessera_host_laplacian_diff_pass_##SUFFIX(                               \
        const ReduceGeom* g, const float* fine, const AxisGeom* ga, const i64* first,        \
        const i64* count, const i64* at, const double* weights, const I* in, float* out,     \
        i64 n) {                                                                             \
        for (i64 e = 0; e < n; e++)                                                          \
            out[e] =                                                                         \
                laplacian_diff_pass_voxel<I>(*g, fine, *ga, first, count, at, weights, in, e); \
    }

TESSERA_HOST_DIFF_PASS(f64, double)
TESSERA_HOST_DIFF_PASS(f32, float)

// The geometry structs' layout as C++ sees it: size, then every field's offset.
extern "C" void tessera_host_reduce_geom_layout(i64* out) {
#define R(field) offsetof(ReduceGeom, field)
#define A(field) offsetof(AxisGeom, field)
    tessera_write_layout(out, {sizeof(ReduceGeom), R(ndim), R(factor), R(out_start), R(out_shape),
                               R(in_start), R(in_shape), R(level_shape), sizeof(AxisGeom),
                               A(outer), A(inner), A(in_len), A(out_len)});
#undef R
#undef A
}
