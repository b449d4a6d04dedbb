// The Debevec merge's per-thread body, shared by the CUDA kernel (debevec.cu) and the host
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

// Pixels merged by one thread: four consecutive pixels are one 4-byte load per plane and,
// for up to four channels, 4 C consecutive floats of output (C 16-byte stores).
#define TESSERA_DEBEVEC_RUN 4

// One plane's bytes of pixels i0 .. i0 + 3: one aligned 4-byte load (little-endian on both
// sides) when `whole`, else byte by byte (past `count`: 0, never used).
TESSERA_HD void debevec_bytes(const u8* plane, i64 i0, i64 count, bool whole,
                              u8 z[TESSERA_DEBEVEC_RUN]) {
    if (whole) {
#if defined(__CUDACC__)
        const u32 word = *(const u32*)(plane + i0);
#else
        u32 word = 0;
        for (int b = 0; b < 4; b++) word |= (u32)plane[i0 + b] << (8 * b);
#endif
        TESSERA_UNROLL
        for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) z[p] = (u8)(word >> (8 * p));
    } else {
        TESSERA_UNROLL
        for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) z[p] = p < count ? plane[i0 + p] : 0;
    }
}

// Merges channel k of pixels i0 .. i0 + count - 1 into r[p] (p < count).
//   planes[(j * C + k) * pixels + i]: exposure j, channel k (8-bit values);
//   tables[((k * E + j) * 256 + z) * 2 + {0, 1}]: (w(z), w(z) (g(z) - ln t_j)) for channel k;
//   fallback[(k * 2 + {0: shortest, 1: longest}) * 256 + z]: g(z) - ln t.
// Each pixel's arithmetic is the one-pixel merge's, in its order. Returns the pixels that
// had no usable exposure.
TESSERA_HD u64 debevec_channel(const MergeGeom& g, const u8* planes, const float* tables,
                               const float* fallback, i64 i0, i64 count, bool whole, i64 k,
                               float r[TESSERA_DEBEVEC_RUN]) {
    const i64 C = g.channels, E = g.exposures, N = g.pixels;
    float sw[TESSERA_DEBEVEC_RUN], sv[TESSERA_DEBEVEC_RUN];
    TESSERA_UNROLL
    for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) {
        sw[p] = 0.0f;
        sv[p] = 0.0f;
    }
    for (i64 j = 0; j < E; j++) {
        u8 z[TESSERA_DEBEVEC_RUN];
        debevec_bytes(planes + (j * C + k) * N, i0, count, whole, z);
        const float* t = tables + (k * E + j) * 256 * 2;
        TESSERA_UNROLL
        for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) {
            sw[p] += t[2 * z[p]];
            sv[p] += t[2 * z[p] + 1];
        }
    }
    u8 short_z[TESSERA_DEBEVEC_RUN], long_z[TESSERA_DEBEVEC_RUN];
    debevec_bytes(planes + (0 * C + k) * N, i0, count, whole, short_z);
    debevec_bytes(planes + ((E - 1) * C + k) * N, i0, count, whole, long_z);
    u64 unusable = 0;
    TESSERA_UNROLL
    for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) {
        float ln_e;
        if (sw[p] > 0.0f) {
            ln_e = sv[p] / sw[p];
        } else {
            unusable += p < count;
            ln_e = short_z[p] >= 128 ? fallback[(k * 2 + 0) * 256 + short_z[p]]
                                     : fallback[(k * 2 + 1) * 256 + long_z[p]];
        }
        r[p] = tessera_exp_f32(ln_e);
    }
    return unusable;
}

// A whole run of CC (compile-time) channels: the 4 CC floats, pixel-major, in CC 16-byte
// stores (out + i0 * CC is 16-byte aligned: i0 is a multiple of 4).
template <int CC>
TESSERA_HD u64 debevec_run_vector(const MergeGeom& g, const u8* planes, const float* tables,
                                  const float* fallback, float* out, i64 i0) {
    float kept[CC][TESSERA_DEBEVEC_RUN];
    u64 unusable = 0;
    TESSERA_UNROLL
    for (int k = 0; k < CC; k++) {
        unusable += debevec_channel(g, planes, tables, fallback, i0, TESSERA_DEBEVEC_RUN, true,
                                    k, kept[k]);
    }
    TESSERA_UNROLL
    for (int q = 0; q < CC; q++) {
        // Float f of the run is pixel f / CC, channel f % CC.
#if defined(__CUDACC__)
        *(float4*)(out + i0 * CC + 4 * q) =
            make_float4(kept[(4 * q) % CC][(4 * q) / CC], kept[(4 * q + 1) % CC][(4 * q + 1) / CC],
                        kept[(4 * q + 2) % CC][(4 * q + 2) / CC],
                        kept[(4 * q + 3) % CC][(4 * q + 3) / CC]);
#else
        for (int e = 0; e < 4; e++) out[i0 * CC + 4 * q + e] = kept[(4 * q + e) % CC][(4 * q + e) / CC];
#endif
    }
    return unusable;
}

// Merges pixels i0 .. i0 + 3 (those below g.pixels), every channel, into out[i * C + k].
// Returns the (pixel, channel) pairs that had no usable exposure.
TESSERA_HD u64 debevec_run(const MergeGeom& g, const u8* planes, const float* tables,
                           const float* fallback, float* out, i64 i0) {
    const i64 C = g.channels, N = g.pixels;
    const i64 count = N - i0 < TESSERA_DEBEVEC_RUN ? N - i0 : TESSERA_DEBEVEC_RUN;
    // Whole words: every plane starts 4-byte aligned (N a multiple of 4, an aligned base)
    // and the run is complete.
    const bool whole = count == TESSERA_DEBEVEC_RUN && N % 4 == 0 && i0 % 4 == 0 &&
                       ((u64)planes & 3) == 0;
    if (whole && ((u64)out & 15) == 0) {
        switch (C) {
            case 1: return debevec_run_vector<1>(g, planes, tables, fallback, out, i0);
            case 2: return debevec_run_vector<2>(g, planes, tables, fallback, out, i0);
            case 3: return debevec_run_vector<3>(g, planes, tables, fallback, out, i0);
            case 4: return debevec_run_vector<4>(g, planes, tables, fallback, out, i0);
            default: break;
        }
    }
    u64 unusable = 0;
    for (i64 k = 0; k < C; k++) {
        float r[TESSERA_DEBEVEC_RUN];
        unusable += debevec_channel(g, planes, tables, fallback, i0, count, whole, k, r);
        TESSERA_UNROLL
        for (int p = 0; p < TESSERA_DEBEVEC_RUN; p++) {
            if (p < count) out[(i0 + p) * C + k] = r[p];
        }
    }
    return unusable;
}
