// The pyramid kernels' per-voxel bodies, shared by the CUDA kernels (reduce.cu) and the host
// test harness (harness.cpp): one output voxel of a level from a box of the level below,
// computed with the same operations in the same order as kernel.rs, so the GPU's level is
// the CPU's bit for bit.
//
// - mean: the block's values summed in f64 in C order from 0.0, divided by their count,
//   rounded once to the output type (reduce_mean_voxel, then tessera_round_to).
// - mode: the most frequent value of the block, ties to the smallest, NaN one value larger
//   than every number (reduce_mode_voxel; counting instead of kernel.rs' sort, same result).
// - gaussian: one axis at a time over f64 boxes, `acc = acc + w[k] * x[first + k]` from 0.0
//   (weigh_axis_voxel; the taps are computed on the host, as kernel.rs' `taps`), rounded
//   once at the end.
// - laplacian: Gaussian levels in f32; the upsampling is passes of weigh_axis_voxel too (taps
//   from kernel.rs' `upsample_taps`), and the difference map `(f64)fine - up` rounded once to
//   f32 (laplacian_diff_voxel).
#pragma once
#include "common.cuh"

#define TESSERA_PYRAMID_AXES 6

// Rust twin: ops::pyramid::device::ReduceGeom (#[repr(C)]); axes beyond `ndim` are unused.
struct ReduceGeom {
    i64 ndim;
    i64 factor[TESSERA_PYRAMID_AXES];
    i64 out_start[TESSERA_PYRAMID_AXES];    // the output box's start in the new level
    i64 out_shape[TESSERA_PYRAMID_AXES];    // the output box's shape
    i64 in_start[TESSERA_PYRAMID_AXES];     // the input box's start in its level
    i64 in_shape[TESSERA_PYRAMID_AXES];     // the input box's shape (C order)
    i64 level_shape[TESSERA_PYRAMID_AXES];  // the whole input level's shape
};

// a / b, and a % b into *rem (a >= 0, b > 0): in 32 bits when both fit, as they nearly always
// do (a GPU emulates 64-bit division in tens of instructions). Integers: the same on both sides.
TESSERA_HD i64 tessera_divmod(i64 a, i64 b, i64* rem) {
    if (((a | b) >> 31) == 0) {
        const u32 q = (u32)a / (u32)b;
        *rem = a - (i64)q * b;
        return (i64)q;
    }
    const i64 q = a / b;
    *rem = a - q * b;
    return q;
}

// The block of output voxel `e` (flat, C order in the output box): per axis [lo, hi) in
// input-box coordinates (`f*o .. min(f*(o+1), level)`); returns its number of voxels.
TESSERA_HD i64 reduce_block(const ReduceGeom& g, i64 e, i64* lo, i64* hi) {
    i64 rest = e;
    i64 count = 1;
    for (i64 a = g.ndim - 1; a >= 0; a--) {
        i64 r;
        rest = tessera_divmod(rest, g.out_shape[a], &r);
        const i64 o = g.out_start[a] + r;
        const i64 f = g.factor[a];
        i64 end = f * (o + 1);
        if (end > g.level_shape[a]) end = g.level_shape[a];
        lo[a] = f * o - g.in_start[a];
        hi[a] = end - g.in_start[a];
        count *= hi[a] - lo[a];
    }
    return count;
}

// The flat offset in the input box of the k-th voxel (C order) of the block lo..hi.
TESSERA_HD i64 block_offset(const ReduceGeom& g, const i64* lo, const i64* hi, i64 k) {
    i64 off = 0;
    i64 stride = 1;
    for (i64 a = g.ndim - 1; a >= 0; a--) {
        i64 r;
        k = tessera_divmod(k, hi[a] - lo[a], &r);
        off += (lo[a] + r) * stride;
        stride *= g.in_shape[a];
    }
    return off;
}

// The voxels of a block lo..hi of the input box in C order, by offset: an odometer that moves
// the offset by strides (no division per voxel).
struct BlockWalk {
    i64 ndim;
    i64 off;
    i64 idx[TESSERA_PYRAMID_AXES];
    i64 lo[TESSERA_PYRAMID_AXES];
    i64 hi[TESSERA_PYRAMID_AXES];
    i64 stride[TESSERA_PYRAMID_AXES];
};

TESSERA_HD BlockWalk block_walk(const ReduceGeom& g, const i64* lo, const i64* hi) {
    BlockWalk w;
    w.ndim = g.ndim;
    w.off = 0;
    i64 stride = 1;
    for (i64 a = g.ndim - 1; a >= 0; a--) {
        w.idx[a] = lo[a];
        w.lo[a] = lo[a];
        w.hi[a] = hi[a];
        w.stride[a] = stride;
        w.off += lo[a] * stride;
        stride *= g.in_shape[a];
    }
    return w;
}

// Moves to the next voxel of the block (past the last one it wraps to the first).
TESSERA_HD void block_step(BlockWalk& w) {
    for (i64 a = w.ndim - 1; a >= 0; a--) {
        w.idx[a]++;
        w.off += w.stride[a];
        if (w.idx[a] < w.hi[a]) return;
        w.off -= (w.hi[a] - w.lo[a]) * w.stride[a];
        w.idx[a] = w.lo[a];
    }
}

// The mean of voxel e's block, before rounding: summed in C order from 0.0.
template <typename T>
TESSERA_HD double reduce_mean_voxel(const ReduceGeom& g, const T* in, i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    const i64 n = reduce_block(g, e, lo, hi);
    BlockWalk w = block_walk(g, lo, hi);
    double s = 0.0;
    for (i64 k = 0; k < n; k++) {
        s += (double)in[w.off];
        block_step(w);
    }
    return s / (double)n;
}

// kernel.rs' round_to: floats to nearest, integers to the nearest integer with halves away
// from zero (NaN, which integer inputs cannot give, to 0 like Rust's failed cast). A NaN
// result is Rust's f32::NAN / f64::NAN whatever its payload: the GPU and the CPU propagate
// payloads differently.
template <typename U> TESSERA_HD U tessera_round_to(double x);
template <> TESSERA_HD float tessera_round_to<float>(double x) {
    return x != x ? tessera_nan_f32() : (float)x;
}
template <> TESSERA_HD double tessera_round_to<double>(double x) {
    return x != x ? tessera_nan_f64() : x;
}
#define TESSERA_ROUND_INT(T)                                                                 \
    template <> TESSERA_HD T tessera_round_to<T>(double x) {                                 \
        return x != x ? (T)0 : (T)round(x);                                                  \
    }
TESSERA_ROUND_INT(u8)
TESSERA_ROUND_INT(u16)
TESSERA_ROUND_INT(u32)
TESSERA_ROUND_INT(u64)
TESSERA_ROUND_INT(signed char)
TESSERA_ROUND_INT(short)
TESSERA_ROUND_INT(int)
TESSERA_ROUND_INT(i64)

// kernel.rs' order for the mode: numbers by value, NaN after every number and equal to itself
// (-0.0 and 0.0 are one value, as partial_cmp says).
template <typename T> TESSERA_HD bool mode_same(T a, T b) {
    return (a != a) ? (b != b) : a == b;
}
template <typename T> TESSERA_HD bool mode_less(T a, T b) {
    const bool an = a != a, bn = b != b;
    if (an || bn) return !an && bn;
    return a < b;
}

// Blocks up to this many voxels are gathered into registers for the mode (4x4x4); larger ones
// are read in place.
#define TESSERA_MODE_GATHER 64

// The most frequent of the n values at[0..n] (C order); ties to the smallest. A value's group
// is represented by its first voxel in C order, which is the one kernel.rs' stable sort puts
// first.
template <typename T, typename Get>
TESSERA_HD T mode_of(i64 n, Get at) {
    T best = at(0);
    i64 best_count = 0;
    for (i64 k = 0; k < n; k++) {
        const T v = at(k);
        i64 count = 0;
        bool seen = false;
        for (i64 j = 0; j < n; j++) {
            if (mode_same(at(j), v)) {
                if (j < k) {
                    seen = true;
                    break;
                }
                count++;
            }
        }
        if (seen) continue;
        if (count > best_count || (count == best_count && mode_less(v, best))) {
            best = v;
            best_count = count;
        }
    }
    return best;
}

// The most frequent value of voxel e's block; ties to the smallest.
template <typename T>
TESSERA_HD T reduce_mode_voxel(const ReduceGeom& g, const T* in, i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    const i64 n = reduce_block(g, e, lo, hi);
    if (n <= TESSERA_MODE_GATHER) {
        T values[TESSERA_MODE_GATHER] = {};
        BlockWalk w = block_walk(g, lo, hi);
        for (i64 k = 0; k < n; k++) {
            values[k] = in[w.off];
            block_step(w);
        }
        return mode_of<T>(n, [&](i64 k) { return values[k]; });
    }
    return mode_of<T>(n, [&](i64 k) { return in[block_offset(g, lo, hi, k)]; });
}

// Rust twin: ops::pyramid::device::AxisGeom. One Gaussian pass along `axis` of an f64 box
// of shape in_shape (outer, in_shape[axis], inner): output index i along the axis reads input
// indices first[i] .. first[i] + count[i] (relative to the box), weights from weights[at[i]].
struct AxisGeom {
    i64 outer;
    i64 inner;
    i64 in_len;   // the input box's extent along the axis
    i64 out_len;  // the output's extent along the axis
};

// Output element e (flat, C order, shape (outer, out_len, inner)) of one Gaussian pass.
TESSERA_HD double weigh_axis_voxel(const AxisGeom& g, const i64* first, const i64* count,
                                   const i64* at, const double* weights, const double* in,
                                   i64 e) {
    i64 in_idx, i;
    const i64 row = tessera_divmod(e, g.inner, &in_idx);
    const i64 o = tessera_divmod(row, g.out_len, &i);
    double acc = 0.0;
    for (i64 k = 0; k < count[i]; k++) {
        const double x = in[(o * g.in_len + first[i] + k) * g.inner + in_idx];
        acc = acc + weights[at[i] + k] * x;
    }
    return acc;
}

// Voxel e (flat, C order) of the Laplacian's difference map over the block g.out: the finer
// level's value there (its computed box is g.in_*; g's factors are 1) minus the upsampled
// coarser level `up` (shape g.out_shape), in f64, rounded once to f32 (NaN: f32::NAN).
TESSERA_HD float laplacian_diff_voxel(const ReduceGeom& g, const float* fine, const double* up,
                                      i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    reduce_block(g, e, lo, hi);
    return tessera_round_to<float>((double)fine[block_offset(g, lo, hi, 0)] - up[e]);
}
