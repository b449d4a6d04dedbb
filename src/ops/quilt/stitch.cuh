// The stitch kernel's per-pixel body, shared by the CUDA kernel (stitch.cu) and the host test
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
};

// Channels accumulated together in registers; more channels take more passes over the
// windows (each pass re-reads the others only to test them for NaN).
#define TESSERA_STITCH_GROUP 4

// Computes output pixel `p` (flat index in the block, row-major z, y, x).
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
                            O* mean, O* wsum, O* std_out, i64 p) {
    const i64 bx = g.block[2], by = g.block[1], bz = g.block[0];
    const i64 x = p % bx, y = (p / bx) % by, z = p / (bx * by);
    const i64 wz = g.window[0], wy = g.window[1], wx = g.window[2];
    const i64 wsize = wz * wy * wx, bsize = bz * by * bx, C = g.channels;
    const i64* rz = ranges + 2 * g.offsets[0] + 2 * z;
    const i64* ry = ranges + 2 * g.offsets[1] + 2 * y;
    const i64* rx = ranges + 2 * g.offsets[2] + 2 * x;
    const i64* sz = starts + g.offsets[0];
    const i64* sy = starts + g.offsets[1];
    const i64* sx = starts + g.offsets[2];
    // The pixel's band; a window's band is its origin's along the band axis (b = 1: the
    // pixel's band, b = 0: the one before).
    const i64 band = (g.band_origin + (g.band_axis == 0 ? z : y)) / g.band_rows;
    u64 left_out = 0;
    for (i64 c0 = 0; c0 < C; c0 += TESSERA_STITCH_GROUP) {
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
                const i64 origin = g.band_origin + (g.band_axis == 0 ? sz[kz] : sy[ky]);
                const bool this_band = origin / g.band_rows == band;
                for (i64 kx = rx[0]; kx < rx[1]; kx++) {
                    const i64 k = (kz * g.counts[1] + ky) * g.counts[2] + kx - g.first;
                    const i64 woff = ((z - sz[kz]) * wy + (y - sy[ky])) * wx + (x - sx[kx]);
                    const P* pv = patches + k * C * wsize + woff;
                    const P* vv = g.with_variance ? variances + k * C * wsize + woff : pv;
                    bool valid = true;
                    for (i64 c = 0; c < C; c++) {
                        const P a = pv[c * wsize];
                        const P b = vv[c * wsize];
                        valid = valid && a == a && b == b;
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
                        if (c0 + j >= C) break;
                        const double xv = (double)pv[(c0 + j) * wsize];
                        const double xm =
                            g.with_variance ? (double)vv[(c0 + j) * wsize] + xv * xv : 0.0;
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
            if (c0 + j >= C) break;
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
