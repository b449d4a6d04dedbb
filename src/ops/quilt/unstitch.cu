// quilt unstitch on the GPU: a gather of window rows, for each element size (the values are
// moved, never converted). A block is lanes (x) by rows (y) threads; block b's row y starts at
// row b * blockDim.y + y and steps by every row of the grid (cut_rows in unstitch.cuh).
#include "unstitch.cuh"

#define TESSERA_CUT_KERNEL(NAME, T)                                                          \
    extern "C" __global__ void NAME(CutGeom g, const i64* starts, const T* box, T* out) {   \
        cut_rows<T>(g, starts, box, out, threadIdx.x, blockDim.x,                          \
                    (i64)blockIdx.x * blockDim.y + threadIdx.y,                             \
                    (i64)gridDim.x * blockDim.y);                                           \
    }

TESSERA_CUT_KERNEL(cut_u8, u8)
TESSERA_CUT_KERNEL(cut_u16, u16)
TESSERA_CUT_KERNEL(cut_u32, u32)
TESSERA_CUT_KERNEL(cut_u64, u64)
