// hdr merge (Debevec) on the GPU: one thread per pixel, every channel, the body in
// debevec.cuh (shared with the host test harness). Pixels without a usable exposure are
// counted per warp and added with one integer atomic (exact, order-independent).
#include "debevec.cuh"

extern "C" __global__ void debevec_merge(MergeGeom g, const u8* planes, const float* tables,
                                         const float* fallback, float* out, u64* unusable) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 n = 0;
    if (i < g.pixels) {
        n = debevec_pixel(g, planes, tables, fallback, out, i);
    }
    // Sum over the warp (every lane takes part, in range or not), one atomic per warp.
    for (int d = 16; d > 0; d /= 2) {
        n += __shfl_down_sync(0xffffffffu, n, d);
    }
    if ((threadIdx.x & 31) == 0 && n) {
        atomicAdd(unusable, n);
    }
}
