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

// Every kernel name spelled out (tessera's kernel list is checked against this text).
#define TESSERA_PYRAMID_TYPE(MEAN, MODE, TO_F64, ROUND, T)                                   \
    TESSERA_MEAN_KERNEL(MEAN, T)                                                             \
    TESSERA_MODE_KERNEL(MODE, T)                                                             \
    TESSERA_TO_F64_KERNEL(TO_F64, T)                                                         \
    TESSERA_ROUND_KERNEL(ROUND, T)

TESSERA_PYRAMID_TYPE(mean_u8, mode_u8, to_f64_u8, round_u8, u8)
TESSERA_PYRAMID_TYPE(mean_u16, mode_u16, to_f64_u16, round_u16, u16)
TESSERA_PYRAMID_TYPE(mean_u32, mode_u32, to_f64_u32, round_u32, u32)
TESSERA_PYRAMID_TYPE(mean_u64, mode_u64, to_f64_u64, round_u64, u64)
TESSERA_PYRAMID_TYPE(mean_i8, mode_i8, to_f64_i8, round_i8, signed char)
TESSERA_PYRAMID_TYPE(mean_i16, mode_i16, to_f64_i16, round_i16, short)
TESSERA_PYRAMID_TYPE(mean_i32, mode_i32, to_f64_i32, round_i32, int)
TESSERA_PYRAMID_TYPE(mean_i64, mode_i64, to_f64_i64, round_i64, i64)
TESSERA_PYRAMID_TYPE(mean_f32, mode_f32, to_f64_f32, round_f32, float)
TESSERA_PYRAMID_TYPE(mean_f64, mode_f64, to_f64_f64, round_f64, double)

// One pass along an axis (weigh_axis_voxel): the Gaussian's, and the Laplacian's upsampling.
extern "C" __global__ void gauss_axis(AxisGeom g, const i64* first, const i64* count,
                                      const i64* at, const double* weights, const double* in,
                                      double* out) {
    const i64 n = g.outer * g.out_len * g.inner;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        out[e] = weigh_axis_voxel(g, first, count, at, weights, in, e);
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
