// The Debevec merge's per-pixel body, shared by the CUDA kernel (debevec.cu) and the host
// test harness: debevec.rs's merge_pixels and exp_f32 for one pixel, every channel, in the
// same order, so the bits are the same:
//   - f32 sums of the table's (w, v) over the exposures, shortest first;
//   - ln E = v / w, or where no exposure counts (w == 0) the fallback g(z) - ln t of the
//     shortest exposure if it is bright (z >= 128), else of the longest;
//   - radiance exp_f32(ln E): Cody-Waite reduction and the same degree-7 polynomial.
#pragma once
#include "common.cuh"

// Rust's twin: `gpu::hdr::MergeGeom`, #[repr(C)].
struct MergeGeom {
    i64 pixels;     // pixels in this launch
    i64 channels;
    i64 exposures;
};

// debevec.rs's exp_f32, operation for operation (no FMA: --fmad=false / -ffp-contract=off).
TESSERA_HD float tessera_exp_f32(float x) {
    const float LOG2E = 1.44269504088896341f;  // std::f32::consts::LOG2_E
    const float ROUND = 12582912.0f;
    if (x < -87.0f) {
        x = -87.0f;
    }
    if (x > 88.0f) {
        x = 88.0f;
    }
    const float n = (x * LOG2E + ROUND) - ROUND;
    const float r = x - n * 0.6933594f - n * -2.1219444e-4f;
    float q = 1.9875691e-4f;
    q = q * r + 1.3981999e-3f;
    q = q * r + 8.333452e-3f;
    q = q * r + 4.1665796e-2f;
    q = q * r + 1.6666665e-1f;
    q = q * r + 0.5f;
    const float e = q * r * r + r + 1.0f;
    // n is an integer in [-126, 127], or NaN when x is: Rust's `n as i32` and the device's
    // conversion give 0 for NaN, C++'s (int) is undefined there (the host harness), so NaN
    // is sent to 0 explicitly. The result is NaN either way (e is NaN).
    const int ni = n == n ? (int)n : 0;
    return e * tessera_bits_f32(((u32)(ni + 127)) << 23);
}

// Merges pixel i, every channel, into out[i * C + k].
//   planes[(j * C + k) * pixels + i]: exposure j, channel k (8-bit values);
//   tables[((k * E + j) * 256 + z) * 2 + {0, 1}]: (w(z), w(z) (g(z) - ln t_j)) for channel k;
//   fallback[(k * 2 + {0: shortest, 1: longest}) * 256 + z]: g(z) - ln t.
// Returns the channels of this pixel that had no usable exposure.
TESSERA_HD u64 debevec_pixel(const MergeGeom& g, const u8* planes, const float* tables,
                             const float* fallback, float* out, i64 i) {
    const i64 C = g.channels, E = g.exposures, N = g.pixels;
    u64 unusable = 0;
    for (i64 k = 0; k < C; k++) {
        float sw = 0.0f, sv = 0.0f;
        for (i64 j = 0; j < E; j++) {
            const u8 z = planes[(j * C + k) * N + i];
            const float* t = tables + ((k * E + j) * 256 + z) * 2;
            sw += t[0];
            sv += t[1];
        }
        float ln_e;
        if (sw > 0.0f) {
            ln_e = sv / sw;
        } else {
            unusable += 1;
            const u8 short_z = planes[(0 * C + k) * N + i];
            const u8 long_z = planes[((E - 1) * C + k) * N + i];
            ln_e = short_z >= 128 ? fallback[(k * 2 + 0) * 256 + short_z]
                                  : fallback[(k * 2 + 1) * 256 + long_z];
        }
        out[i * C + k] = tessera_exp_f32(ln_e);
    }
    return unusable;
}
