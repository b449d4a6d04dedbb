// The crop's per-pattern analysis and window copy, in phases, shared by the CUDA kernels
// (crop.cu: one block per pattern, a barrier between phases) and the host test harness
// (harness.cpp: each phase run for every thread index in turn). Every sum is of integers below
// 2^53 held in f64 (kernel.rs' fixed point), so it is exact in any order: atomics and block
// reductions give kernel.rs' bits. Each phase takes the thread index `t` of `n` threads and
// strides over the pattern's pixels.
#pragma once
#include "common.cuh"

#define TESSERA_CROP_BINS 1024
// Pixels of the crossing bin a block keeps in shared memory; a pattern with more (or with a
// negative pixel, whose running sum is not monotonic) is analysed on the CPU.
#define TESSERA_CROP_CAP 1536

// Rust twin: ops::crop::device::CropGeom (#[repr(C)]).
struct CropGeom {
    i64 h;
    i64 w;
    i64 method;    // 0 centroid, 1 geometric centre, 2 manual
    i64 is_float;  // integer data keep s <= 0
    double manual_y;
    double manual_x;
    double target;
};

// Rust twin: ops::crop::device::CropRecord: one pattern's findings. kind: 0 normal, 1 empty,
// 2 negative total, 3 NaN or infinite values. on_cpu: 1 when the CPU must analyse it.
struct CropRecord {
    double total;
    double cy;
    double cx;
    double radius;
    double kind;
    double scale;
    double total_q;
    double on_cpu;
};

// kernel.rs' round_even: ties to even for |x| <= 2^51.
TESSERA_HD double crop_round_even(double x) {
    const double magic = 6755399441055744.0;
    return (x + magic) - magic;
}

// 2^e for e in -1022..=1023, by bits.
TESSERA_HD double crop_pow2(int e) { return tessera_bits_f64((u64)(e + 1023) << 52); }

// ceil(log2 n) for n >= 1: the bit length of n - 1.
TESSERA_HD int crop_ceil_log2(u64 n) {
    u64 v = n > 0 ? n - 1 : 0;
    int b = 0;
    while (v) {
        b++;
        v >>= 1;
    }
    return b;
}

// kernel.rs' exponent_above: e with x < 2^e for a finite x > 0, subnormals included.
TESSERA_HD int crop_exponent_above(double x) {
    const u64 bits = tessera_f64_bits(x);
    const int biased = (int)((bits >> 52) & 0x7ff);
    if (biased != 0) return biased - 1022;
    u64 m = bits & ((1ull << 52) - 1);
    int len = 0;
    while (m) {
        len++;
        m >>= 1;
    }
    return len - 1074;
}

// kernel.rs' Fixed::of: the pattern's scale s (-1022..=1123).
TESSERA_HD int crop_scale(double max_abs, i64 pixels, i64 longest, i64 is_float) {
    int bits = 53 - crop_ceil_log2((u64)pixels) - crop_ceil_log2((u64)longest);
    if (bits < 1) bits = 1;
    if (bits > 50) bits = 50;
    int e = bits;
    if (max_abs > 0.0) e = crop_exponent_above(max_abs);
    int s = bits - e;
    if (s < -1022) s = -1022;
    if (!is_float && s > 0) s = 0;
    return s;
}

// kernel.rs' Fixed: 2^s as low * high, low = 2^min(s, 1022) (high is 1.0 but for patterns of
// values near the subnormals, whose 2^s is past f64's range).
struct CropFixed {
    double low;
    double high;
};

TESSERA_HD CropFixed crop_fixed(int s) {
    const int low = s < 1022 ? s : 1022;
    CropFixed f;
    f.low = crop_pow2(low);
    f.high = crop_pow2(s - low);
    return f;
}

// kernel.rs' Fixed::q: a value in fixed point.
TESSERA_HD double crop_q(const CropFixed& f, double v) {
    return crop_round_even(v * f.low * f.high);
}

// A fixed-point sum as a value (kernel.rs' Fixed::value).
TESSERA_HD double crop_value(double q, int s) {
    return q * crop_pow2(-s / 2) * crop_pow2(-s + s / 2);
}

// A thread's pixels i = t, t + n, ... of an h x w pattern with their row and column: the
// position advances by the stride's (n / w, n % w) with a carry, so no pixel needs a
// division (three 64-bit divisions per pixel and phase were most of the analysis' time).
struct CropWalk {
    i64 i, y, x;
    i64 dy, dx;
};

TESSERA_HD CropWalk crop_walk_of(i64 w, i64 t, i64 n) {
    CropWalk k;
    k.i = t;
    k.y = t / w;
    k.x = t % w;
    k.dy = n / w;
    k.dx = n % w;
    return k;
}

TESSERA_HD void crop_walk_step(CropWalk& k, i64 w, i64 n) {
    k.i += n;
    k.x += k.dx;
    const i64 carry = k.x >= w;
    k.x -= carry * w;
    k.y += k.dy + carry;
}

TESSERA_HD CropWalk crop_walk(const CropGeom& g, i64 t, i64 n) { return crop_walk_of(g.w, t, n); }

TESSERA_HD void crop_walk_next(const CropGeom& g, CropWalk& k, i64 n) { crop_walk_step(k, g.w, n); }

// Phase 1: this thread's share of the largest |value|, and whether a value is below zero or
// not finite.
template <typename T>
TESSERA_HD void crop_extremes_part(const CropGeom& g, const T* p, i64 t, i64 n, double* most,
                                   int* negative, int* not_finite) {
    double m = 0.0;
    int neg = 0, bad = 0;
    for (i64 i = t; i < g.h * g.w; i += n) {
        const double v = (double)p[i];
        const double a = v < 0.0 ? -v : v;
        if (!(a <= 1.7976931348623157e308)) bad = 1;  // NaN or infinite
        else if (a > m) m = a;
        if (v < 0.0) neg = 1;
    }
    *most = m;
    *negative = neg;
    *not_finite = bad;
}

// Phase 2: this thread's share of the sums of q, y*q and x*q.
template <typename T>
TESSERA_HD void crop_sums_part(const CropGeom& g, const T* p, const CropFixed& fixed, i64 t,
                               i64 n, double* sq, double* syq, double* sxq) {
    double a = 0.0, b = 0.0, c = 0.0;
    for (CropWalk k = crop_walk(g, t, n); k.i < g.h * g.w; crop_walk_next(g, k, n)) {
        const double q = crop_q(fixed, (double)p[k.i]);
        a += q;
        b += q * (double)k.y;
        c += q * (double)k.x;
    }
    *sq = a;
    *syq = b;
    *sxq = c;
}

// The centre (kernel.rs' analyse): the centroid when asked for and the total is positive,
// the manual one when given, else the geometric centre.
TESSERA_HD void crop_centre(const CropGeom& g, double total_q, double sy, double sx, double* cy,
                            double* cx) {
    *cy = ((double)g.h - 1.0) / 2.0;
    *cx = ((double)g.w - 1.0) / 2.0;
    if (g.method == 0 && total_q > 0.0) {
        *cy = sy / total_q;
        *cx = sx / total_q;
    } else if (g.method == 2) {
        *cy = g.manual_y;
        *cx = g.manual_x;
    }
}

// kernel.rs' bin_scale: bin of squared distance d = (d * scale) truncated, at most BINS - 1.
TESSERA_HD double crop_bin_scale(const CropGeom& g, double cy, double cx) {
    double fy = cy < 0.0 ? -cy : cy;
    double oy = (double)g.h - 1.0 - cy;
    oy = oy < 0.0 ? -oy : oy;
    if (oy > fy) fy = oy;
    double fx = cx < 0.0 ? -cx : cx;
    double ox = (double)g.w - 1.0 - cx;
    ox = ox < 0.0 ? -ox : ox;
    if (ox > fx) fx = ox;
    double max_d2 = fy * fy + fx * fx;
    if (max_d2 < 2.2250738585072014e-308) max_d2 = 2.2250738585072014e-308;
    return ((double)TESSERA_CROP_BINS - 1.0) / max_d2;
}

TESSERA_HD i64 crop_bin(double d, double scale) {
    const i64 b = (i64)(d * scale);
    return b < TESSERA_CROP_BINS - 1 ? b : TESSERA_CROP_BINS - 1;
}

// The squared distance of the pixel at row y, column x (kernel.rs' d2).
TESSERA_HD double crop_d2(i64 y, i64 x, double cy, double cx) {
    const double dy = (double)y - cy;
    const double dx = (double)x - cx;
    return dy * dy + dx * dx;
}

// The distance of the farthest pixel, a corner (kernel.rs' farthest).
TESSERA_HD double crop_farthest(const CropGeom& g, double cy, double cx) {
    double best = 0.0;
    for (int a = 0; a < 2; a++) {
        for (int b = 0; b < 2; b++) {
            const double dy = (a ? (double)(g.h - 1) : 0.0) - cy;
            const double dx = (b ? (double)(g.w - 1) : 0.0) - cx;
            const double d = dy * dy + dx * dx;
            if (d > best) best = d;
        }
    }
    return sqrt(best);
}

// Phase 3: this thread's pixels into the histogram of q by squared distance. The q are
// integers >= 0 here (a pattern with a negative value goes to the CPU) whose sum is below
// 2^53, so the bins are u64: an integer atomic on the GPU (a plain addition in the harness)
// where f64 atomics were, the same values.
#if defined(__CUDACC__)
#define TESSERA_CROP_ADD(at, v) atomicAdd((at), (v))
#define TESSERA_CROP_NEXT(at) atomicAdd((at), 1)
#else
#define TESSERA_CROP_ADD(at, v) (*(at) += (v))
#define TESSERA_CROP_NEXT(at) ((*(at))++)
#endif

template <typename T>
TESSERA_HD void crop_hist_part(const CropGeom& g, const T* p, const CropFixed& fixed,
                               double cy, double cx, double scale, i64 t, i64 n, u64* hist) {
    for (CropWalk k = crop_walk(g, t, n); k.i < g.h * g.w; crop_walk_next(g, k, n)) {
        const double q = crop_q(fixed, (double)p[k.i]);
        if (q != 0.0) TESSERA_CROP_ADD(&hist[crop_bin(crop_d2(k.y, k.x, cy, cx), scale)], (u64)q);
    }
}

// Phase 4 (one thread): the first bin where the running sum reaches the goal (-1: none), and
// the sum of the bins before it (each bin, and every sum, below 2^53: exact in f64).
TESSERA_HD i64 crop_find_bin(const u64* hist, double goal, double* below) {
    double sum = 0.0;
    for (i64 b = 0; b < TESSERA_CROP_BINS; b++) {
        if (sum + (double)hist[b] >= goal) {
            *below = sum;
            return b;
        }
        sum += (double)hist[b];
    }
    *below = sum;
    return -1;
}

// Phase 5: this thread's pixels of bin k into the candidates (squared distance, q); `count`
// counts them all, also past the capacity.
template <typename T>
TESSERA_HD void crop_collect_part(const CropGeom& g, const T* p, const CropFixed& fixed,
                                  double cy, double cx, double scale, i64 k, i64 t, i64 n,
                                  double* cand_d, double* cand_q, int* count) {
    for (CropWalk w = crop_walk(g, t, n); w.i < g.h * g.w; crop_walk_next(g, w, n)) {
        const double d = crop_d2(w.y, w.x, cy, cx);
        if (crop_bin(d, scale) != k) continue;
        const int at = TESSERA_CROP_NEXT(count);
        if (at < TESSERA_CROP_CAP) {
            cand_d[at] = d;
            cand_q[at] = crop_q(fixed, (double)p[w.i]);
        }
    }
}

// Phase 6: the smallest candidate distance whose running sum (the bins below, then every
// candidate at that distance or nearer) reaches the goal; +inf where this thread has none.
TESSERA_HD double crop_best_part(const double* cand_d, const double* cand_q, i64 count,
                                 double below, double goal, i64 t, i64 n) {
    double best = 1.0 / 0.0;
    for (i64 i = t; i < count; i += n) {
        double sum = below;
        for (i64 j = 0; j < count; j++) {
            if (cand_d[j] <= cand_d[i]) sum += cand_q[j];
        }
        if (sum >= goal && cand_d[i] < best) best = cand_d[i];
    }
    return best;
}

// The record of a pattern from its reduced sums (every phase but the radius).
TESSERA_HD void crop_record_sums(const CropGeom& g, int s, int not_finite, double total_q,
                                 double sy, double sx, CropRecord* r) {
    crop_centre(g, total_q, sy, sx, &r->cy, &r->cx);
    r->scale = (double)s;
    r->total_q = total_q;
    r->total = crop_value(total_q, s);
    r->radius = 0.0;
    r->on_cpu = 0.0;
    if (not_finite) {
        r->kind = 3.0;
        r->total = tessera_nan_f64();
    } else if (total_q > 0.0) {
        r->kind = 0.0;
    } else if (total_q < 0.0) {
        r->kind = 2.0;
    } else {
        r->kind = 1.0;
    }
}

// Pass 2, this thread's elements of a pattern's crop: elements e = t, t + n, ... (C order in
// the side_h x side_w window at y0, x0) are copied, and the sum of their q returned for the
// retention sum (integers below 2^53: exact in any order).
template <typename T>
TESSERA_HD double crop_window_part(const CropGeom& g, i64 side_h, i64 side_w, i64 y0, i64 x0,
                                   const CropFixed& fixed, const T* p, T* out, i64 t, i64 n) {
    double sum = 0.0;
    for (CropWalk k = crop_walk_of(side_w, t, n); k.i < side_h * side_w;
         crop_walk_step(k, side_w, n)) {
        const T v = p[(y0 + k.y) * g.w + x0 + k.x];
        out[k.i] = v;
        sum += crop_q(fixed, (double)v);
    }
    return sum;
}
