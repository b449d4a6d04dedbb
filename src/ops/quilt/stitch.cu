// quilt stitch on the GPU: a block is lanes (x) by rows (y) threads; block b's row y starts at
// block row b * blockDim.y + y and steps by every row of the grid; each thread computes its
// pixels (all channels) with the body in stitch.cuh (shared with the host test harness).
// Left-out NaN values are counted with an integer atomic (order-independent, so exact).
// 256 threads a block (device.rs' row_shape), two blocks an SM at least: at most 128 registers.
#include "stitch.cuh"

#define TESSERA_STITCH_KERNEL(NAME, P, O)                                                     \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(StitchGeom g, const i64* ranges, const i64* starts,       \
                                    const double* weights, const P* patches,                  \
                                    const P* variances, O* mean, O* wsum, O* std_out,         \
                                    u64* left_out, i64 with_wsum) {                           \
        const u64 n = stitch_rows<P, O>(g, ranges, starts, weights, patches, variances, mean, \
                                        with_wsum ? wsum : (O*)0, std_out, threadIdx.x,       \
                                        blockDim.x, (i64)blockIdx.x * blockDim.y + threadIdx.y, \
                                        (i64)gridDim.x * blockDim.y);                         \
        if (n) {                                                                              \
            atomicAdd(left_out, n);                                                           \
        }                                                                                     \
    }

TESSERA_STITCH_KERNEL(stitch_f32_f32, float, float)
TESSERA_STITCH_KERNEL(stitch_f64_f32, double, float)
TESSERA_STITCH_KERNEL(stitch_f64_f64, double, double)
