// quilt stitch on the GPU: one thread per output pixel of the block (all channels), the body
// in stitch.cuh (shared with the host test harness). Left-out NaN values are counted with an
// integer atomic (order-independent, so the count is exact).
#include "stitch.cuh"

#define TESSERA_STITCH_KERNEL(NAME, P, O)                                                     \
    extern "C" __global__ void NAME(StitchGeom g, const i64* ranges, const i64* starts,       \
                                    const double* weights, const P* patches,                  \
                                    const P* variances, O* mean, O* wsum, O* std_out,         \
                                    u64* left_out, i64 with_wsum) {                           \
        const i64 p = (i64)blockIdx.x * blockDim.x + threadIdx.x;                             \
        if (p >= g.block[0] * g.block[1] * g.block[2]) {                                      \
            return;                                                                           \
        }                                                                                     \
        const u64 n = stitch_pixel<P, O>(g, ranges, starts, weights, patches, variances, mean, \
                                         with_wsum ? wsum : (O*)0, std_out, p);               \
        if (n) {                                                                              \
            atomicAdd(left_out, n);                                                           \
        }                                                                                     \
    }

TESSERA_STITCH_KERNEL(stitch_f32_f32, float, float)
TESSERA_STITCH_KERNEL(stitch_f64_f32, double, float)
TESSERA_STITCH_KERNEL(stitch_f64_f64, double, double)
