// Host harness of the pyramid kernels (build.rs compiles it with the `cc` crate): each
// function runs a whole launch grid on the CPU, one call of the per-voxel body (reduce.cuh)
// per thread index, in index order. src/gpu/harness.rs compares the results bit for bit with
// the CPU kernels (kernel.rs). Compiled with -ffp-contract=off and no fast-math, as the device
// code is with --fmad=false.
#include <cmath>
#include <cstddef>

#include "reduce.cuh"

#define TESSERA_HOST_PYRAMID(SUFFIX, T)                                                       \
    extern "C" void tessera_host_mean_##SUFFIX(const ReduceGeom* g, const T* in, T* out,     \
                                               i64 n) {                                      \
        for (i64 e = 0; e < n; e++) out[e] = reduce_mean_out<T>(*g, in, e);              \
    }                                                                                        \
    extern "C" void tessera_host_mode_##SUFFIX(const ReduceGeom* g, const T* in, T* out,     \
                                               i64 n) {                                      \
        for (i64 e = 0; e < n; e++) out[e] = reduce_mode_voxel<T>(*g, in, e);                \
    }                                                                                        \
    extern "C" void tessera_host_round_##SUFFIX(const double* in, T* out, i64 n) {           \
        for (i64 e = 0; e < n; e++) out[e] = tessera_round_to<T>(in[e]);                     \
    }                                                                                        \
    extern "C" void tessera_host_gauss_in_##SUFFIX(const AxisGeom* g, const i64* first,      \
                                                   const i64* count, const i64* at,          \
                                                   const double* weights, const T* in,       \
                                                   double* out) {                            \
        const i64 n = g->outer * g->out_len * g->inner;                                      \
        for (i64 e = 0; e < n; e++)                                                          \
            out[e] = weigh_axis_voxel<T>(*g, first, count, at, weights, in, e);              \
    }                                                                                        \
    extern "C" void tessera_host_gauss_out_##SUFFIX(const AxisGeom* g, const i64* first,     \
                                                    const i64* count, const i64* at,         \
                                                    const double* weights, const double* in, \
                                                    T* out) {                                \
        const i64 n = g->outer * g->out_len * g->inner;                                      \
        for (i64 e = 0; e < n; e++)                                                          \
            out[e] = tessera_round_to<T>(                                                    \
                weigh_axis_voxel<double>(*g, first, count, at, weights, in, e));             \
    }                                                                                        \
    extern "C" void tessera_host_gauss_inout_##SUFFIX(const AxisGeom* g, const i64* first,   \
                                                      const i64* count, const i64* at,       \
                                                      const double* weights, const T* in,    \
                                                      T* out) {                              \
        const i64 n = g->outer * g->out_len * g->inner;                                      \
        for (i64 e = 0; e < n; e++)                                                          \
            out[e] =                                                                         \
                tessera_round_to<T>(weigh_axis_voxel<T>(*g, first, count, at, weights, in, e)); \
    }

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

extern "C" void tessera_host_gauss_axis(const AxisGeom* g, const i64* first, const i64* count,
                                        const i64* at, const double* weights, const double* in,
                                        double* out) {
    const i64 n = g->outer * g->out_len * g->inner;
    for (i64 e = 0; e < n; e++)
        out[e] = weigh_axis_voxel<double>(*g, first, count, at, weights, in, e);
}

extern "C" void tessera_host_laplacian_diff(const ReduceGeom* g, const float* fine,
                                            const double* up, float* out, i64 n) {
    for (i64 e = 0; e < n; e++) out[e] = laplacian_diff_voxel(*g, fine, up, e);
}

extern "C" void tessera_host_laplacian_diff_pass_f64(const ReduceGeom* g, const float* fine,
                                                     const AxisGeom* ga, const i64* first,
                                                     const i64* count, const i64* at,
                                                     const double* weights, const double* in,
                                                     float* out, i64 n) {
    for (i64 e = 0; e < n; e++)
        out[e] = laplacian_diff_pass_voxel<double>(*g, fine, *ga, first, count, at, weights, in, e);
}

extern "C" void tessera_host_laplacian_diff_pass_f32(const ReduceGeom* g, const float* fine,
                                                     const AxisGeom* ga, const i64* first,
                                                     const i64* count, const i64* at,
                                                     const double* weights, const float* in,
                                                     float* out, i64 n) {
    for (i64 e = 0; e < n; e++)
        out[e] = laplacian_diff_pass_voxel<float>(*g, fine, *ga, first, count, at, weights, in, e);
}

// The geometry structs' layout as C++ sees it: size, then every field's offset.
extern "C" void tessera_host_reduce_geom_layout(i64* out) {
    out[0] = sizeof(ReduceGeom);
    out[1] = offsetof(ReduceGeom, ndim);
    out[2] = offsetof(ReduceGeom, factor);
    out[3] = offsetof(ReduceGeom, out_start);
    out[4] = offsetof(ReduceGeom, out_shape);
    out[5] = offsetof(ReduceGeom, in_start);
    out[6] = offsetof(ReduceGeom, in_shape);
    out[7] = offsetof(ReduceGeom, level_shape);
    out[8] = sizeof(AxisGeom);
    out[9] = offsetof(AxisGeom, outer);
    out[10] = offsetof(AxisGeom, inner);
    out[11] = offsetof(AxisGeom, in_len);
    out[12] = offsetof(AxisGeom, out_len);
}
