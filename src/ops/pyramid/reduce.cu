// pyramid levels on the GPU: one thread per output voxel (grid-stride), bodies in
// reduce.cuh, for each input type; integer means exact (128-bit sums), float means in f64.
#include "reduce.cuh"

#define TESSERA_MEAN_KERNEL(NAME, T)                                                         \
    extern "C" __global__ void NAME(ReduceGeom g, const T* in, T* out, i64 n) {              \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = reduce_mean_out<T>(g, in, e);                                           \
        }                                                                                    \
    }

#define TESSERA_MODE_KERNEL(NAME, T)                                                         \
    extern "C" __global__ void NAME(ReduceGeom g, const T* in, T* out, i64 n) {              \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = reduce_mode_voxel<T>(g, in, e);                                         \
        }                                                                                    \
    }

// The Gaussian's first step: the input box as f64; and its last: rounding to the type.
#define TESSERA_TO_F64_KERNEL(NAME, T)                                                       \
    extern "C" __global__ void NAME(const T* in, double* out, i64 n) {                       \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = (double)in[e];                                                          \
        }                                                                                    \
    }
#define TESSERA_ROUND_KERNEL(NAME, T)                                                        \
    extern "C" __global__ void NAME(const double* in, T* out, i64 n) {                       \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = tessera_round_to<T>(in[e]);                                             \
        }                                                                                    \
    }

// A Gaussian pass over a box of IN values into OUT values: the first pass reads the level's
// own type (no widened copy), the last rounds to it (no f64 box to round), a lone pass both.
#define TESSERA_GAUSS_KERNEL(NAME, IN, OUT, CONVERT)                                         \
    extern "C" __global__ void NAME(AxisGeom g, const i64* first, const i64* count,          \
                                    const i64* at, const double* weights, const IN* in,      \
                                    OUT* out) {                                              \
        const i64 n = g.outer * g.out_len * g.inner;                                         \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = CONVERT(weigh_axis_voxel<IN>(g, first, count, at, weights, in, e));     \
        }                                                                                    \
    }
#define TESSERA_AS_F64(x) (x)

// Every kernel name spelled out (tessera's kernel list is checked against this text).
#define TESSERA_PYRAMID_TYPE(MEAN, MODE, TO_F64, ROUND, GIN, GOUT, GINOUT, T)               \
    TESSERA_MEAN_KERNEL(MEAN, T)                                                             \
    TESSERA_MODE_KERNEL(MODE, T)                                                             \
    TESSERA_TO_F64_KERNEL(TO_F64, T)                                                         \
    TESSERA_ROUND_KERNEL(ROUND, T)                                                           \
    TESSERA_GAUSS_KERNEL(GIN, T, double, TESSERA_AS_F64)                                     \
    TESSERA_GAUSS_KERNEL(GOUT, double, T, tessera_round_to<T>)                               \
    TESSERA_GAUSS_KERNEL(GINOUT, T, T, tessera_round_to<T>)

TESSERA_PYRAMID_TYPE(mean_u8, mode_u8, to_f64_u8, round_u8, gauss_in_u8,
                     gauss_out_u8, gauss_inout_u8, u8)
TESSERA_PYRAMID_TYPE(mean_u16, mode_u16, to_f64_u16, round_u16, gauss_in_u16,
                     gauss_out_u16, gauss_inout_u16, u16)
TESSERA_PYRAMID_TYPE(mean_u32, mode_u32, to_f64_u32, round_u32, gauss_in_u32,
                     gauss_out_u32, gauss_inout_u32, u32)
TESSERA_PYRAMID_TYPE(mean_u64, mode_u64, to_f64_u64, round_u64, gauss_in_u64,
                     gauss_out_u64, gauss_inout_u64, u64)
TESSERA_PYRAMID_TYPE(mean_i8, mode_i8, to_f64_i8, round_i8, gauss_in_i8,
                     gauss_out_i8, gauss_inout_i8, signed char)
TESSERA_PYRAMID_TYPE(mean_i16, mode_i16, to_f64_i16, round_i16, gauss_in_i16,
                     gauss_out_i16, gauss_inout_i16, short)
TESSERA_PYRAMID_TYPE(mean_i32, mode_i32, to_f64_i32, round_i32, gauss_in_i32,
                     gauss_out_i32, gauss_inout_i32, int)
TESSERA_PYRAMID_TYPE(mean_i64, mode_i64, to_f64_i64, round_i64, gauss_in_i64,
                     gauss_out_i64, gauss_inout_i64, i64)
TESSERA_PYRAMID_TYPE(mean_f32, mode_f32, to_f64_f32, round_f32, gauss_in_f32,
                     gauss_out_f32, gauss_inout_f32, float)
TESSERA_PYRAMID_TYPE(mean_f64, mode_f64, to_f64_f64, round_f64, gauss_in_f64,
                     gauss_out_f64, gauss_inout_f64, double)

// One pass along an axis (weigh_axis_voxel): the Gaussian's, and the Laplacian's upsampling.
extern "C" __global__ void gauss_axis(AxisGeom g, const i64* first, const i64* count,
                                      const i64* at, const double* weights, const double* in,
                                      double* out) {
    const i64 n = g.outer * g.out_len * g.inner;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        out[e] = weigh_axis_voxel<double>(g, first, count, at, weights, in, e);
    }
}

// The Laplacian's difference map: the finer level minus the upsampled coarser one.
extern "C" __global__ void laplacian_diff(ReduceGeom g, const float* fine, const double* up,
                                          float* out, i64 n) {
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        out[e] = laplacian_diff_voxel(g, fine, up, e);
    }
}

// The difference map fused with the upsampling's last pass over an f64 box (several passes)
// or over the coarser f32 level itself (a lone pass).
#define TESSERA_DIFF_PASS_KERNEL(NAME, IN)                                                   \
    extern "C" __global__ void NAME(ReduceGeom g, const float* fine, AxisGeom ga,            \
                                    const i64* first, const i64* count, const i64* at,       \
                                    const double* weights, const IN* in, float* out, i64 n) { \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = laplacian_diff_pass_voxel<IN>(g, fine, ga, first, count, at, weights,   \
                                                   in, e);                                   \
        }                                                                                    \
    }

TESSERA_DIFF_PASS_KERNEL(laplacian_diff_pass_f64, double)
TESSERA_DIFF_PASS_KERNEL(laplacian_diff_pass_f32, float)
