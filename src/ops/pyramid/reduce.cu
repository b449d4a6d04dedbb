// pyramid levels on the GPU: one thread per output voxel (grid-stride), bodies in
// reduce.cuh, for each input type; integers and floats alike are averaged in f64.
#include "reduce.cuh"

#define TESSERA_MEAN_KERNEL(NAME, T)                                                         \
    extern "C" __global__ void NAME(ReduceGeom g, const T* in, T* out, i64 n) {              \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                      \
             e += (i64)gridDim.x * blockDim.x) {                                             \
            out[e] = tessera_round_to<T>(reduce_mean_voxel<T>(g, in, e));                    \
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

#define TESSERA_PYRAMID_TYPE(SUFFIX, T)                                                      \
    TESSERA_MEAN_KERNEL(mean_##SUFFIX, T)                                                    \
    TESSERA_MODE_KERNEL(mode_##SUFFIX, T)                                                    \
    TESSERA_TO_F64_KERNEL(to_f64_##SUFFIX, T)                                                \
    TESSERA_ROUND_KERNEL(round_##SUFFIX, T)

TESSERA_PYRAMID_TYPE(u8, u8)
TESSERA_PYRAMID_TYPE(u16, u16)
TESSERA_PYRAMID_TYPE(u32, u32)
TESSERA_PYRAMID_TYPE(u64, u64)
TESSERA_PYRAMID_TYPE(i8, signed char)
TESSERA_PYRAMID_TYPE(i16, short)
TESSERA_PYRAMID_TYPE(i32, int)
TESSERA_PYRAMID_TYPE(i64, i64)
TESSERA_PYRAMID_TYPE(f32, float)
TESSERA_PYRAMID_TYPE(f64, double)

// One Gaussian pass along an axis (weigh_axis_voxel).
extern "C" __global__ void gauss_axis(AxisGeom g, const i64* first, const i64* count,
                                      const i64* at, const double* weights, const double* in,
                                      double* out) {
    const i64 n = g.outer * g.out_len * g.inner;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (i64)gridDim.x * blockDim.x) {
        out[e] = weigh_axis_voxel(g, first, count, at, weights, in, e);
    }
}
