// hdr merge (Debevec) on the GPU: each thread merges runs of TESSERA_DEBEVEC_RUN pixels, every
// channel (debevec_run in debevec.cuh, shared with the host test harness), striding over the
// launch. When `shared_floats` > 0 the block first copies the tables (that many floats) into
// shared memory, where the divergent lookups of a warp cost one access each, not a cache line
// each. Pixels without a usable exposure are counted per warp and added with one integer
// atomic (exact, order-independent).
#include "debevec.cuh"

extern "C" __global__ void debevec_merge(MergeGeom g, const u8* planes, const float* tables,
                                         const float* fallback, float* out, u64* unusable,
                                         i64 shared_floats) {
    extern __shared__ float shared_tables[];
    const float* t = tables;
    if (shared_floats > 0) {
        for (i64 f = threadIdx.x; f < shared_floats; f += blockDim.x) {
            shared_tables[f] = tables[f];
        }
        __syncthreads();
        t = shared_tables;
    }
    const i64 runs = (g.pixels + TESSERA_DEBEVEC_RUN - 1) / TESSERA_DEBEVEC_RUN;
    u64 n = 0;
    for (i64 r = (i64)blockIdx.x * blockDim.x + threadIdx.x; r < runs;
         r += (i64)gridDim.x * blockDim.x) {
        n += debevec_run(g, planes, t, fallback, out, r * TESSERA_DEBEVEC_RUN);
    }
    // Sum over the warp (every lane takes part, in range or not), one atomic per warp.
    for (int d = 16; d > 0; d /= 2) {
        n += __shfl_down_sync(0xffffffffu, n, d);
    }
    if ((threadIdx.x & 31) == 0 && n) {
        atomicAdd(unusable, n);
    }
}
