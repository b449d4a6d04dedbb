// The crop on the GPU: pass 1 (crop_analyse_*), one block of TESSERA_CROP_THREADS threads per
// pattern, the phases of crop.cuh with a barrier between them; pass 2 (crop_window_*), one
// block per pattern copying its window and summing its q for the retention. Block reductions
// add integers held in f64 (exact in any order) or take maxima, so the results are the CPU's.
#include "crop.cuh"

#define TESSERA_CROP_THREADS 256

// Block-wide reductions through shared memory (every thread gets the result).
__device__ double crop_block_sum(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
        __syncthreads();
    }
    const double out = scratch[0];
    __syncthreads();
    return out;
}

__device__ double crop_block_max(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && scratch[threadIdx.x + half] > scratch[threadIdx.x])
            scratch[threadIdx.x] = scratch[threadIdx.x + half];
        __syncthreads();
    }
    const double out = scratch[0];
    __syncthreads();
    return out;
}

__device__ double crop_block_min(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half && scratch[threadIdx.x + half] < scratch[threadIdx.x])
            scratch[threadIdx.x] = scratch[threadIdx.x + half];
        __syncthreads();
    }
    const double out = scratch[0];
    __syncthreads();
    return out;
}

// Pass 1 for pattern blockIdx.x (grid-stride over patterns): its record.
template <typename T>
__device__ void crop_analyse(const CropGeom& g, const T* patterns, CropRecord* records,
                             i64 count) {
    __shared__ double scratch[TESSERA_CROP_THREADS];
    __shared__ u64 hist[TESSERA_CROP_BINS];
    __shared__ double cand_d[TESSERA_CROP_CAP];
    __shared__ double cand_q[TESSERA_CROP_CAP];
    __shared__ int cand_count;
    const i64 t = threadIdx.x, n = blockDim.x, hw = g.h * g.w;
    for (i64 pat = blockIdx.x; pat < count; pat += gridDim.x) {
        const T* p = patterns + pat * hw;
        double most;
        int negative, not_finite;
        crop_extremes_part<T>(g, p, t, n, &most, &negative, &not_finite);
        most = crop_block_max(most, scratch);
        const int any_negative = __syncthreads_or(negative);
        const int any_bad = __syncthreads_or(not_finite);
        const int s = crop_scale(any_bad ? 0.0 : most, hw, g.h > g.w ? g.h : g.w, g.is_float);
        const CropFixed fixed = crop_fixed(s);
        double sq = 0.0, syq = 0.0, sxq = 0.0;
        if (!any_bad) crop_sums_part<T>(g, p, fixed, t, n, &sq, &syq, &sxq);
        sq = crop_block_sum(sq, scratch);
        syq = crop_block_sum(syq, scratch);
        sxq = crop_block_sum(sxq, scratch);
        CropRecord r;
        crop_record_sums(g, s, any_bad, sq, syq, sxq, &r);
        if (r.kind == 0.0 && any_negative) r.on_cpu = 1.0;
        if (r.kind == 0.0 && !any_negative) {
            const double scale = crop_bin_scale(g, r.cy, r.cx);
            const double goal = ceil(g.target * sq);
            for (i64 b = t; b < TESSERA_CROP_BINS; b += n) hist[b] = 0;
            if (t == 0) cand_count = 0;
            __syncthreads();
            crop_hist_part<T>(g, p, fixed, r.cy, r.cx, scale, t, n, hist);
            __syncthreads();
            double below;
            const i64 k = crop_find_bin(hist, goal, &below);
            if (k < 0) {
                r.radius = crop_farthest(g, r.cy, r.cx);
            } else {
                crop_collect_part<T>(g, p, fixed, r.cy, r.cx, scale, k, t, n, cand_d, cand_q,
                                     &cand_count);
                __syncthreads();
                const int found = cand_count;
                if (found > TESSERA_CROP_CAP) {
                    r.on_cpu = 1.0;
                } else {
                    const double best = crop_block_min(
                        crop_best_part(cand_d, cand_q, found, below, goal, t, n), scratch);
                    r.radius = sqrt(best);
                }
            }
        }
        if (t == 0) records[pat] = r;
        __syncthreads();
    }
}

// Pass 2 for pattern blockIdx.x (grid-stride): its window into out, its q sum into kept.
template <typename T>
__device__ void crop_window(const CropGeom& g, i64 side_h, i64 side_w, const T* patterns,
                           const i64* starts, const int* scales, T* out, double* kept,
                           i64 count) {
    __shared__ double scratch[TESSERA_CROP_THREADS];
    const i64 hw = g.h * g.w, side = side_h * side_w;
    for (i64 pat = blockIdx.x; pat < count; pat += gridDim.x) {
        const CropFixed fixed = crop_fixed(scales[pat]);
        double sum = crop_window_part<T>(g, side_h, side_w, starts[2 * pat], starts[2 * pat + 1],
                                         fixed, patterns + pat * hw, out + pat * side,
                                         threadIdx.x, blockDim.x);
        sum = crop_block_sum(sum, scratch);
        if (threadIdx.x == 0) kept[pat] = sum;
    }
}

// Every kernel name spelled out (tessera's kernel list is checked against this text).
#define TESSERA_CROP_TYPE(ANALYSE, WINDOW, T)                                                 \
    extern "C" __global__ void ANALYSE(CropGeom g, const T* patterns, CropRecord* records,   \
                                       i64 count) {                                          \
        crop_analyse<T>(g, patterns, records, count);                                        \
    }                                                                                        \
    extern "C" __global__ void WINDOW(CropGeom g, i64 side_h, i64 side_w, const T* patterns, \
                                      const i64* starts, const int* scales, T* out,          \
                                      double* kept, i64 count) {                             \
        crop_window<T>(g, side_h, side_w, patterns, starts, scales, out, kept, count);       \
    }

TESSERA_CROP_TYPE(crop_analyse_u8, crop_window_u8, u8)
TESSERA_CROP_TYPE(crop_analyse_u16, crop_window_u16, u16)
TESSERA_CROP_TYPE(crop_analyse_u32, crop_window_u32, u32)
TESSERA_CROP_TYPE(crop_analyse_u64, crop_window_u64, u64)
TESSERA_CROP_TYPE(crop_analyse_i8, crop_window_i8, signed char)
TESSERA_CROP_TYPE(crop_analyse_i16, crop_window_i16, short)
TESSERA_CROP_TYPE(crop_analyse_i32, crop_window_i32, int)
TESSERA_CROP_TYPE(crop_analyse_i64, crop_window_i64, i64)
TESSERA_CROP_TYPE(crop_analyse_f32, crop_window_f32, float)
TESSERA_CROP_TYPE(crop_analyse_f64, crop_window_f64, double)
