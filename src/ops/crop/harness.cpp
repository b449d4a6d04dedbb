// Host harness of the crop kernels (build.rs compiles it with the `cc` crate): each function
// runs crop.cu's block for every pattern on the CPU, each phase of crop.cuh for every thread
// index in turn (one valid schedule; the sums are exact, so every schedule gives these bits),
// with the block reductions done here. src/gpu/harness_crop.rs compares the records with
// kernel.rs' analysis. Compiled with -ffp-contract=off and no fast-math, as the device code is
// with --fmad=false.
#include <cmath>
#include <cstddef>
#include <vector>

#include "crop.cuh"
#include "harness_support.h"

template <typename T>
static void host_analyse(const CropGeom* gp, const T* patterns, CropRecord* records, i64 count,
                         i64 n) {
    const CropGeom& g = *gp;
    const i64 hw = g.h * g.w;
    std::vector<u64> hist(TESSERA_CROP_BINS);
    std::vector<double> cand_d(TESSERA_CROP_CAP), cand_q(TESSERA_CROP_CAP);
    for (i64 pat = 0; pat < count; pat++) {
        const T* p = patterns + pat * hw;
        double most = 0.0;
        int any_negative = 0, any_bad = 0;
        for (i64 t = 0; t < n; t++) {
            double m;
            int neg, bad;
            crop_extremes_part<T>(g, p, t, n, &m, &neg, &bad);
            if (m > most) most = m;
            any_negative |= neg;
            any_bad |= bad;
        }
        const int s = crop_scale(any_bad ? 0.0 : most, hw, g.h > g.w ? g.h : g.w, g.is_float);
        const CropFixed fixed = crop_fixed(s);
        double sq = 0.0, syq = 0.0, sxq = 0.0;
        for (i64 t = 0; t < n && !any_bad; t++) {
            double a, b, c;
            crop_sums_part<T>(g, p, fixed, t, n, &a, &b, &c);
            sq += a;
            syq += b;
            sxq += c;
        }
        CropRecord r;
        crop_record_sums(g, s, any_bad, sq, syq, sxq, &r);
        if (r.kind == 0.0 && any_negative) r.on_cpu = 1.0;
        if (r.kind == 0.0 && !any_negative) {
            const double scale = crop_bin_scale(g, r.cy, r.cx);
            const double goal = ceil(g.target * sq);
            for (u64& b : hist) b = 0;
            for (i64 t = 0; t < n; t++)
                crop_hist_part<T>(g, p, fixed, r.cy, r.cx, scale, t, n, hist.data());
            double below;
            const i64 k = crop_find_bin(hist.data(), goal, &below);
            if (k < 0) {
                r.radius = crop_farthest(g, r.cy, r.cx);
            } else {
                int found = 0;
                for (i64 t = 0; t < n; t++)
                    crop_collect_part<T>(g, p, fixed, r.cy, r.cx, scale, k, t, n,
                                         cand_d.data(), cand_q.data(), &found);
                if (found > TESSERA_CROP_CAP) {
                    r.on_cpu = 1.0;
                } else {
                    double best = 1.0 / 0.0;
                    for (i64 t = 0; t < n; t++) {
                        const double b = crop_best_part(cand_d.data(), cand_q.data(), found,
                                                        below, goal, t, n);
                        if (b < best) best = b;
                    }
                    r.radius = sqrt(best);
                }
            }
        }
        records[pat] = r;
    }
}

template <typename T>
static void host_window(const CropGeom* g, i64 side_h, i64 side_w, const T* patterns,
                        const i64* starts, const int* scales, T* out, double* kept, i64 count) {
    const i64 hw = g->h * g->w, side = side_h * side_w;
    for (i64 pat = 0; pat < count; pat++) {
        // An odd number of threads, so that rows and the stride do not line up.
        const i64 threads = 7;
        double sum = 0.0;
        for (i64 t = 0; t < threads; t++) {
            sum += crop_window_part<T>(*g, side_h, side_w, starts[2 * pat], starts[2 * pat + 1],
                                       crop_fixed(scales[pat]), patterns + pat * hw,
                                       out + pat * side, t, threads);
        }
        kept[pat] = sum;
    }
}

#define TESSERA_HOST_CROP(SUFFIX, T)                                                          \
    extern "C" void tessera_host_crop_analyse_##SUFFIX(const CropGeom* g, const T* patterns, \
                                                       CropRecord* records, i64 count,       \
                                                       i64 threads) {                        \
        host_analyse<T>(g, patterns, records, count, threads);                               \
    }                                                                                        \
    extern "C" void tessera_host_crop_window_##SUFFIX(                                       \
        const CropGeom* g, i64 side_h, i64 side_w, const T* patterns, const i64* starts,     \
        const int* scales, T* out, double* kept, i64 count) {                                \
        host_window<T>(g, side_h, side_w, patterns, starts, scales, out, kept, count);       \
    }

TESSERA_HOST_CROP(u8, u8)
TESSERA_HOST_CROP(u16, u16)
TESSERA_HOST_CROP(u32, u32)
TESSERA_HOST_CROP(i16, short)
TESSERA_HOST_CROP(f32, float)
TESSERA_HOST_CROP(f64, double)

// The structs' layout as C++ sees it: size, then every field's offset.
extern "C" void tessera_host_crop_layout(i64* out) {
#define F(field) offsetof(CropGeom, field)
    tessera_write_layout(out, {sizeof(CropGeom), F(h), F(w), F(method), F(is_float), F(manual_y),
                               F(manual_x), F(target), sizeof(CropRecord)});
#undef F
}
