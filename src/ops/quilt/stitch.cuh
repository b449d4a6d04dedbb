// The stitch kernel's per-thread body, shared by the CUDA kernel (stitch.cu) and the host test
// harness (harness.cpp). It is the CPU kernel's arithmetic (kernel.rs, Accumulator::add_batch,
// mean_into, std) for one output pixel, in the same order, so the bits are the same:
//   - the banded rule of kernel.rs: two partial sums per quantity, one over the covering
//     windows whose origin lies in the pixel's band, one over those of the band before, each
//     in ascending patch order (window index, row-major over the grid) from 0, added at the
//     end (the CPU adds the earlier band's carry to the later band's sums: the same addition);
//   - a (patch, pixel) with a NaN in any channel (or variance) is left out of every channel
//     and of the weight, and counted once per channel;
//   - f64 sums `w += wt`, `s += wt * x`, `m += wt * (v + x * x)`; mean `s / w`, rounded once
//     to the output type; std `sqrt(max(m / w - mean^2, 0))`; NaN where `w == 0`.
// The block and the window are always 3-D here (a 2-D image has a leading axis of length 1).
#pragma once
#include "common.cuh"

// Everything about one unit's geometry; a kernel argument (by value), so its layout is fixed
// (Rust's twin is `gpu::quilt::StitchGeom`, #[repr(C)]).
struct StitchGeom {
    i64 channels;
    i64 window[3];   // window shape (z, y, x)
    i64 block[3];    // output block shape (z, y, x)
    i64 counts[3];   // windows per axis of the image's grid
    i64 first;       // grid index (row-major) of the first patch in `patches`
    i64 offsets[3];  // where each axis' part of `ranges` and `starts` begins
    i64 with_variance;
    i64 band_axis;    // 3-D axis of the image's first spatial axis (0 in 3-D, 1 in 2-D)
    i64 band_rows;    // rows per band along it
    i64 band_origin;  // the block's first row along it, in the image
    i64 band_starts;  // where in `starts` the first row of each block row's band begins
};

// Channels accumulated together in registers; more channels take more passes over the
// windows (each pass re-reads the others only to test them for NaN). Each channel's sums are
// its own, so the grouping changes no bit. f64 patches take half as many: with their values
// kept in registers, four would pass the 128-register cap (stitch.cu) and spill.
#define TESSERA_STITCH_GROUP 4
template <typename P> struct StitchGroup { static const int size = TESSERA_STITCH_GROUP; };
template <> struct StitchGroup<double> { static const int size = TESSERA_STITCH_GROUP / 2; };

// Computes output pixel (z, y, x) of the block, whose band begins at row `band_start` along
// the band axis (relative to the block origin, as window starts are).
//   ranges[offsets[a] * 2 + 2 i + {0, 1}]: the windows along axis a covering block position i;
//   starts[offsets[a] + k]: window k's start along axis a, relative to the block origin;
//   weights: the window's weights (z, y, x), f64;
//   patches / variances: (M, C, wz, wy, wx) from grid index `first` on;
//   mean, std: (C, block) outputs; wsum: (block) output. std, variances may be null when
//   with_variance is 0; wsum may be null.
// Returns the NaN values left out at this pixel (channels x left-out patches).
template <typename P, typename O>
TESSERA_HD u64 stitch_pixel(const StitchGeom& g, const i64* ranges, const i64* starts,
                            const double* weights, const P* patches, const P* variances,
                            O* mean, O* wsum, O* std_out, i64 z, i64 y, i64 x, i64 band_start) {
    const i64 bx = g.block[2], by = g.block[1], bz = g.block[0];
    const i64 p = (z * by + y) * bx + x;
    const i64 wz = g.window[0], wy = g.window[1], wx = g.window[2];
    const i64 wsize = wz * wy * wx, bsize = bz * by * bx, C = g.channels;
    const i64* rz = ranges + 2 * g.offsets[0] + 2 * z;
    const i64* ry = ranges + 2 * g.offsets[1] + 2 * y;
    const i64* rx = ranges + 2 * g.offsets[2] + 2 * x;
    const i64* sz = starts + g.offsets[0];
    const i64* sy = starts + g.offsets[1];
    const i64* sx = starts + g.offsets[2];
    // A window is in the pixel's band (b = 1) when its origin along the band axis is at or
    // after the band's first row, else in the band before (b = 0): the same test as
    // comparing (band_origin + start) / band_rows, without a division per window.
    u64 left_out = 0;
    const int G = StitchGroup<P>::size;
    for (i64 c0 = 0; c0 < C; c0 += G) {
        // Each band's sums in registers of their own (w0/s0/m0: the band before, w1/s1/m1:
        // the pixel's), indexed by unrolled constants only: an array indexed by the runtime
        // band would live in local memory.
        double w0 = 0.0, w1 = 0.0;
        double s0[TESSERA_STITCH_GROUP], s1[TESSERA_STITCH_GROUP];
        double m0[TESSERA_STITCH_GROUP], m1[TESSERA_STITCH_GROUP];
        TESSERA_UNROLL
        for (int j = 0; j < TESSERA_STITCH_GROUP; j++) {
            s0[j] = 0.0;
            s1[j] = 0.0;
            m0[j] = 0.0;
            m1[j] = 0.0;
        }
        for (i64 kz = rz[0]; kz < rz[1]; kz++) {
            for (i64 ky = ry[0]; ky < ry[1]; ky++) {
                const bool this_band = (g.band_axis == 0 ? sz[kz] : sy[ky]) >= band_start;
                for (i64 kx = rx[0]; kx < rx[1]; kx++) {
                    const i64 k = (kz * g.counts[1] + ky) * g.counts[2] + kx - g.first;
                    const i64 woff = ((z - sz[kz]) * wy + (y - sy[ky])) * wx + (x - sx[kx]);
                    const P* pv = patches + k * C * wsize + woff;
                    const P* vv = g.with_variance ? variances + k * C * wsize + woff : pv;
                    // The group's channels are loaded once, kept for the sums; the others
                    // only tested for NaN.
                    P a[TESSERA_STITCH_GROUP], b[TESSERA_STITCH_GROUP];
                    bool valid = true;
                    TESSERA_UNROLL
                    for (int j = 0; j < TESSERA_STITCH_GROUP; j++) {
                        if (j < G && c0 + j < C) {
                            a[j] = pv[(c0 + j) * wsize];
                            b[j] = g.with_variance ? vv[(c0 + j) * wsize] : a[j];
                            valid = valid && a[j] == a[j] && b[j] == b[j];
                        }
                    }
                    for (i64 c = 0; c < C && valid; c++) {
                        if (c >= c0 && c < c0 + G) {
                            continue;
                        }
                        const P ao = pv[c * wsize];
                        const P bo = vv[c * wsize];
                        valid = ao == ao && bo == bo;
                    }
                    if (!valid) {
                        if (c0 == 0) {
                            left_out += (u64)C;
                        }
                        continue;
                    }
                    const double wt = weights[woff];
                    if (this_band) {
                        w1 += wt;
                    } else {
                        w0 += wt;
                    }
                    TESSERA_UNROLL
                    for (int j = 0; j < TESSERA_STITCH_GROUP; j++) {
                        if (j >= G || c0 + j >= C) break;
                        const double xv = (double)a[j];
                        const double xm = g.with_variance ? (double)b[j] + xv * xv : 0.0;
                        if (this_band) {
                            s1[j] += wt * xv;
                            if (g.with_variance) m1[j] += wt * xm;
                        } else {
                            s0[j] += wt * xv;
                            if (g.with_variance) m0[j] += wt * xm;
                        }
                    }
                }
            }
        }
        // The two bands' partial sums: one addition each (x + 0.0 == x for these sums,
        // which start at +0.0 and so are never -0.0).
        const double wt = w0 + w1;
        if (c0 == 0 && wsum) {
            wsum[p] = (O)wt;
        }
        TESSERA_UNROLL
        for (int j = 0; j < TESSERA_STITCH_GROUP; j++) {
            if (j >= G || c0 + j >= C) break;
            const i64 at = (c0 + j) * bsize + p;
            if (wt > 0.0) {
                const double mu = (s0[j] + s1[j]) / wt;
                mean[at] = (O)mu;
                if (g.with_variance) {
                    std_out[at] = (O)sqrt(tessera_max0((m0[j] + m1[j]) / wt - mu * mu));
                }
            } else {
                mean[at] = tessera_nan<O>();
                if (g.with_variance) {
                    std_out[at] = tessera_nan<O>();
                }
            }
        }
    }
    return left_out;
}

// The block's rows (z, y) as digits: row = z * by + y.
struct StitchRow {
    i64 z, y;
};

// Computes this thread's pixels: x = lane, lane + lanes, ... of block rows row, row + step,
// ... (a row is one (z, y) of the block). The row's coordinates advance by the step's with a
// carry, so no pixel needs a division. Returns the NaN values left out at those pixels.
template <typename P, typename O>
TESSERA_HD u64 stitch_rows(const StitchGeom& g, const i64* ranges, const i64* starts,
                           const double* weights, const P* patches, const P* variances,
                           O* mean, O* wsum, O* std_out, i64 lane, i64 lanes, i64 row, i64 step) {
    const i64 by = g.block[1], bx = g.block[2];
    const i64 rows = g.block[0] * by;
    u64 left_out = 0;
    if (row >= rows || lane >= bx) {
        return 0;
    }
    StitchRow at = {row / by, row % by};
    const StitchRow d = {step / by, step % by};
    const i64* band_starts = starts + g.band_starts;
    for (; row < rows; row += step) {
        const i64 band_start = band_starts[g.band_axis == 0 ? at.z : at.y];
        for (i64 x = lane; x < bx; x += lanes) {
            left_out += stitch_pixel<P, O>(g, ranges, starts, weights, patches, variances, mean,
                                           wsum, std_out, at.z, at.y, x, band_start);
        }
        at.y += d.y;
        const i64 carry = at.y >= by;
        at.y -= carry * by;
        at.z += d.z + carry;
    }
    return left_out;
}
