// The pyramid kernels' per-voxel bodies, shared by the CUDA kernels (reduce.cu) and the host
// test harness (harness.cpp): one output voxel of a level from a box of the level below,
// computed with the same operations in the same order as kernel.rs, so the GPU's level is
// the CPU's bit for bit.
//
// - mean: integer types exactly, the block's sum in 128 bits (two 64-bit words) divided by
//   its count and rounded to the nearest integer, halves away from zero (reduce_mean_int_voxel;
//   kernel.rs' i128 sums); floats summed in f64 in C order from 0.0, divided by their count,
//   rounded once to the output type (reduce_mean_voxel, then tessera_round_to), a sum that
//   overflows taken again times 2^-64 and scaled back, at most the largest finite f64.
// - mode: the most frequent value of the block, ties to the smallest, NaN one value larger
//   than every number (reduce_mode_voxel; counting instead of kernel.rs' sort, same result).
// - gaussian: one axis at a time over f64 boxes, `acc = acc + w[k] * x[first + k]` from 0.0
//   (weigh_axis_voxel; the taps are computed on the host, as kernel.rs' `taps`; a sum that
//   overflows taken again with halved products), rounded once at the end, integers saturated
//   to their type's range.
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

// Every per-axis loop below runs over the compile-time TESSERA_PYRAMID_AXES, last axis first,
// skipping the axes past ndim, and is unrolled (TESSERA_UNROLL): the per-axis arrays are then
// indexed by constants and stay in registers. A loop up to the runtime ndim would put them in
// local memory (ptxas: 512 B of stack per thread for the mean), whose traffic, not the
// volume's bytes, bounded the kernels.

// The block of output voxel `e` (flat, C order in the output box): per axis [lo, hi) in
// input-box coordinates (`f*o .. min(f*(o+1), level)`); returns its number of voxels.
TESSERA_HD i64 reduce_block(const ReduceGeom& g, i64 e, i64* lo, i64* hi) {
    i64 rest = e;
    i64 count = 1;
    TESSERA_UNROLL
    for (int j = 0; j < TESSERA_PYRAMID_AXES; j++) {
        const int a = TESSERA_PYRAMID_AXES - 1 - j;
        if (a >= g.ndim) {
            lo[a] = 0;
            hi[a] = 1;
            continue;
        }
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

// The flat offset in the input box of the first voxel (C order) of the block lo..hi.
TESSERA_HD i64 block_start(const ReduceGeom& g, const i64* lo) {
    i64 off = 0;
    i64 stride = 1;
    TESSERA_UNROLL
    for (int j = 0; j < TESSERA_PYRAMID_AXES; j++) {
        const int a = TESSERA_PYRAMID_AXES - 1 - j;
        if (a >= g.ndim) continue;
        off += lo[a] * stride;
        stride *= g.in_shape[a];
    }
    return off;
}

// The voxels of a block lo..hi of the input box in C order, by offset: an odometer that moves
// the offset by strides (no division per voxel). `at` counts from 0 to `extent` per axis.
struct BlockWalk {
    i64 ndim;
    i64 off;
    i64 at[TESSERA_PYRAMID_AXES];
    i64 extent[TESSERA_PYRAMID_AXES];
    i64 stride[TESSERA_PYRAMID_AXES];
};

TESSERA_HD BlockWalk block_walk(const ReduceGeom& g, const i64* lo, const i64* hi) {
    BlockWalk w;
    w.ndim = g.ndim;
    w.off = 0;
    i64 stride = 1;
    TESSERA_UNROLL
    for (int j = 0; j < TESSERA_PYRAMID_AXES; j++) {
        const int a = TESSERA_PYRAMID_AXES - 1 - j;
        w.at[a] = 0;
        w.extent[a] = hi[a] - lo[a];
        w.stride[a] = 0;
        if (a >= g.ndim) continue;
        w.stride[a] = stride;
        w.off += lo[a] * stride;
        stride *= g.in_shape[a];
    }
    return w;
}

// Moves to the next voxel of the block (past the last one it wraps to the first).
TESSERA_HD void block_step(BlockWalk& w) {
    bool carry = true;
    TESSERA_UNROLL
    for (int j = 0; j < TESSERA_PYRAMID_AXES; j++) {
        const int a = TESSERA_PYRAMID_AXES - 1 - j;
        if (!carry || a >= w.ndim) continue;
        w.at[a]++;
        w.off += w.stride[a];
        if (w.at[a] < w.extent[a]) {
            carry = false;
        } else {
            w.off -= w.extent[a] * w.stride[a];
            w.at[a] = 0;
        }
    }
}

#define TESSERA_F64_MAX 1.7976931348623157e308

// kernel.rs' saturate_finite: x, or the largest finite f64 of its sign where x is infinite
// only because it was scaled back from the finite `scaled`.
TESSERA_HD double tessera_saturate_finite(double x, double scaled) {
    const bool x_inf = x > TESSERA_F64_MAX || x < -TESSERA_F64_MAX;
    const bool scaled_finite = scaled <= TESSERA_F64_MAX && scaled >= -TESSERA_F64_MAX;
    if (x_inf && scaled_finite) return x > 0.0 ? TESSERA_F64_MAX : -TESSERA_F64_MAX;
    return x;
}

// The mean of voxel e's block, before rounding: summed in C order from 0.0; a sum that
// overflows is taken again with every value times 2^-64 (kernel.rs' mean_past_overflow).
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
    if (s > TESSERA_F64_MAX || s < -TESSERA_F64_MAX) {
        const double down = 5.421010862427522e-20;  // 2^-64
        const double up = 18446744073709551616.0;   // 2^64
        double scaled = 0.0;
        w = block_walk(g, lo, hi);
        for (i64 k = 0; k < n; k++) {
            scaled += (double)in[w.off] * down;
            block_step(w);
        }
        return tessera_saturate_finite(scaled / (double)n * up, scaled);
    }
    return s / (double)n;
}

// Whether an element is below zero, per type (no comparison of an unsigned value with 0).
TESSERA_HD bool tessera_below_zero(u8) { return false; }
TESSERA_HD bool tessera_below_zero(u16) { return false; }
TESSERA_HD bool tessera_below_zero(u32) { return false; }
TESSERA_HD bool tessera_below_zero(u64) { return false; }
TESSERA_HD bool tessera_below_zero(signed char v) { return v < 0; }
TESSERA_HD bool tessera_below_zero(short v) { return v < 0; }
TESSERA_HD bool tessera_below_zero(int v) { return v < 0; }
TESSERA_HD bool tessera_below_zero(i64 v) { return v < 0; }

// A 128-bit two's complement integer as two words (NVRTC has no portable __int128): the sum
// of an integer block, which no block of any integer type can overflow.
struct TesseraWide {
    u64 lo;
    u64 hi;
};

// s += v, v sign-extended to 128 bits.
template <typename T> TESSERA_HD void tessera_wide_add(TesseraWide& s, T v) {
    const bool negative = tessera_below_zero(v);
    const u64 bits = negative ? (u64)(i64)v : (u64)v;
    const u64 lo = s.lo + bits;
    s.hi += (lo < bits ? 1ull : 0ull) + (negative ? ~0ull : 0ull);
    s.lo = lo;
}

// kernel.rs' integer_mean: sum / n rounded to the nearest integer, halves away from zero,
// as the magnitude's quotient and remainder (|sum| < n * 2^64, so the quotient fits 64 bits
// and the high word is below n) with the sign put back; two's complement bits of the result.
TESSERA_HD u64 tessera_mean_round(TesseraWide s, u64 n) {
    const bool negative = (s.hi >> 63) != 0;
    u64 lo = s.lo, hi = s.hi;
    if (negative) {
        lo = ~lo + 1ull;
        hi = ~hi + (lo == 0 ? 1ull : 0ull);
    }
    u64 q, r;
    if (hi == 0) {
        if ((lo >> 32) == 0 && (n >> 32) == 0) {
            q = (u64)((u32)lo / (u32)n);  // 32-bit division where it fits: a GPU emulates 64
        } else {
            q = lo / n;
        }
        r = lo - q * n;
    } else {
        // Long division of hi:lo by n, one bit at a time (r < n <= 2^63 keeps 2r + 1 in 64 bits).
        q = 0;
        r = hi;
        for (int b = 63; b >= 0; b--) {
            r = (r << 1) | ((lo >> b) & 1ull);
            q <<= 1;
            if (r >= n) {
                r -= n;
                q |= 1ull;
            }
        }
    }
    if (r >= n - r) q += 1ull;
    return negative ? 0ull - q : q;
}

// The exact mean of voxel e's block for integer types (already rounded).
template <typename T>
TESSERA_HD T reduce_mean_int_voxel(const ReduceGeom& g, const T* in, i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    const i64 n = reduce_block(g, e, lo, hi);
    BlockWalk w = block_walk(g, lo, hi);
    TesseraWide s = {0ull, 0ull};
    for (i64 k = 0; k < n; k++) {
        tessera_wide_add<T>(s, in[w.off]);
        block_step(w);
    }
    return (T)tessera_mean_round(s, (u64)n);
}

// kernel.rs' round_to: floats to nearest, integers to the nearest integer with halves away
// from zero, saturated to the type's range (NaN, which integer inputs cannot give, to 0 like
// Rust's failed cast). A NaN result is Rust's f32::NAN / f64::NAN whatever its payload: the
// GPU and the CPU propagate payloads differently.
template <typename U> TESSERA_HD U tessera_round_to(double x);
template <> TESSERA_HD float tessera_round_to<float>(double x) {
    return x != x ? tessera_nan_f32() : (float)x;
}
template <> TESSERA_HD double tessera_round_to<double>(double x) {
    return x != x ? tessera_nan_f64() : x;
}
// LO: the type's minimum, END: its maximum plus one, both exact in f64.
#define TESSERA_ROUND_INT(T, LO, END, MIN, MAX)                                              \
    template <> TESSERA_HD T tessera_round_to<T>(double x) {                                 \
        if (x != x) return (T)0;                                                             \
        const double r = round(x);                                                           \
        if (r >= END) return MAX;                                                            \
        if (r < LO) return MIN;                                                              \
        return (T)r;                                                                         \
    }
TESSERA_ROUND_INT(u8, 0.0, 256.0, (u8)0, (u8)255)
TESSERA_ROUND_INT(u16, 0.0, 65536.0, (u16)0, (u16)65535)
TESSERA_ROUND_INT(u32, 0.0, 4294967296.0, 0u, 4294967295u)
TESSERA_ROUND_INT(u64, 0.0, 18446744073709551616.0, 0ull, 18446744073709551615ull)
TESSERA_ROUND_INT(signed char, -128.0, 128.0, (signed char)-128, (signed char)127)
TESSERA_ROUND_INT(short, -32768.0, 32768.0, (short)-32768, (short)32767)
TESSERA_ROUND_INT(int, -2147483648.0, 2147483648.0, (int)(-2147483647 - 1), 2147483647)
TESSERA_ROUND_INT(i64, -9223372036854775808.0, 9223372036854775808.0,
                  (i64)(-9223372036854775807ll - 1), 9223372036854775807ll)

// Output voxel e of a mean level (kernel.rs' reduce_mean): exact for integer types, the f64
// mean rounded once for floats.
template <typename T> TESSERA_HD T reduce_mean_out(const ReduceGeom& g, const T* in, i64 e) {
    return reduce_mean_int_voxel<T>(g, in, e);
}
template <>
TESSERA_HD float reduce_mean_out<float>(const ReduceGeom& g, const float* in, i64 e) {
    return tessera_round_to<float>(reduce_mean_voxel<float>(g, in, e));
}
template <>
TESSERA_HD double reduce_mean_out<double>(const ReduceGeom& g, const double* in, i64 e) {
    return tessera_round_to<double>(reduce_mean_voxel<double>(g, in, e));
}

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

// The most frequent value of voxel e's block; ties to the smallest. A value's group is
// represented by its first voxel in C order, which is the one kernel.rs' stable sort puts
// first: for each voxel k, a second walk over the block counts its value and notices an
// earlier voxel of the same value (then k's group was counted already). Both walks read the
// block in place (it is small and stays in the L1 cache): no per-thread array, so nothing in
// local memory.
template <typename T>
TESSERA_HD T reduce_mode_voxel(const ReduceGeom& g, const T* in, i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    const i64 n = reduce_block(g, e, lo, hi);
    const BlockWalk first = block_walk(g, lo, hi);
    T best = in[first.off];
    i64 best_count = 0;
    BlockWalk wk = first;
    for (i64 k = 0; k < n; k++, block_step(wk)) {
        const T v = in[wk.off];
        i64 count = 0;
        bool seen = false;
        BlockWalk wj = first;
        for (i64 j = 0; j < n; j++, block_step(wj)) {
            if (mode_same(in[wj.off], v)) {
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

// Rust twin: ops::pyramid::device::AxisGeom. One Gaussian pass along `axis` of an f64 box
// of shape in_shape (outer, in_shape[axis], inner): output index i along the axis reads input
// indices first[i] .. first[i] + count[i] (relative to the box), weights from weights[at[i]].
struct AxisGeom {
    i64 outer;
    i64 inner;
    i64 in_len;   // the input box's extent along the axis
    i64 out_len;  // the output's extent along the axis
};

// Output element e (flat, C order, shape (outer, out_len, inner)) of one Gaussian pass over
// a box of I values, each read as f64 (for I = double the box of the pass before; for the
// first pass the level's own values, which is what widening the box first would give).
template <typename I>
TESSERA_HD double weigh_axis_voxel(const AxisGeom& g, const i64* first, const i64* count,
                                   const i64* at, const double* weights, const I* in, i64 e) {
    i64 in_idx, i;
    const i64 row = tessera_divmod(e, g.inner, &in_idx);
    const i64 o = tessera_divmod(row, g.out_len, &i);
    double acc = 0.0;
    for (i64 k = 0; k < count[i]; k++) {
        const double x = (double)in[(o * g.in_len + first[i] + k) * g.inner + in_idx];
        acc = acc + weights[at[i] + k] * x;
    }
    if (acc > TESSERA_F64_MAX || acc < -TESSERA_F64_MAX) {
        // kernel.rs' weigh_axis: halved products, doubled back.
        double half = 0.0;
        for (i64 k = 0; k < count[i]; k++) {
            const double x = (double)in[(o * g.in_len + first[i] + k) * g.inner + in_idx];
            half = half + weights[at[i] + k] * x * 0.5;
        }
        acc = tessera_saturate_finite(half * 2.0, half);
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
    return tessera_round_to<float>((double)fine[block_start(g, lo)] - up[e]);
}

// The difference map fused with the upsampling's last pass: `up[e]` computed in place by
// that pass (geometry `ga`, tables, over its input box `in`), the same value as the pass
// would have stored, so the same bits without the f64 box in between.
template <typename I>
TESSERA_HD float laplacian_diff_pass_voxel(const ReduceGeom& g, const float* fine,
                                           const AxisGeom& ga, const i64* first, const i64* count,
                                           const i64* at, const double* weights, const I* in,
                                           i64 e) {
    i64 lo[TESSERA_PYRAMID_AXES], hi[TESSERA_PYRAMID_AXES];
    reduce_block(g, e, lo, hi);
    const double up = weigh_axis_voxel<I>(ga, first, count, at, weights, in, e);
    return tessera_round_to<float>((double)fine[block_start(g, lo)] - up);
}
