// quilt unstitch on the GPU: a gather, one thread per output element, for each element size
// (the values are moved, never converted). The index is cut_source in unstitch.cuh.
#include "unstitch.cuh"

#define TESSERA_CUT_KERNEL(NAME, T)                                                          \
    extern "C" __global__ void NAME(CutGeom g, const i64* starts, const T* box, T* out) {   \
        const i64 n = g.patches * g.channels * g.window[0] * g.window[1] * g.window[2];     \
        for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;                     \
             e += (i64)gridDim.x * blockDim.x) {                                            \
            out[e] = box[cut_source(g, starts, e)];                                         \
        }                                                                                   \
    }

TESSERA_CUT_KERNEL(cut_u8, u8)
TESSERA_CUT_KERNEL(cut_u16, u16)
TESSERA_CUT_KERNEL(cut_u32, u32)
TESSERA_CUT_KERNEL(cut_u64, u64)
