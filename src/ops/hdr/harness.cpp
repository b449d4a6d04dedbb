// Host harness of the Debevec merge kernel (build.rs compiles it with the `cc` crate): runs a
// whole launch grid on the CPU, one call of debevec_run per run of pixels, in index order.
// src/gpu/harness.rs compares the results bit for bit with debevec.rs. Compiled with
// -ffp-contract=off and no fast-math, as the device code is with --fmad=false.
#include <cmath>
#include <cstddef>

#include "debevec.cuh"
#include "harness_support.h"

extern "C" u64 tessera_host_debevec(const MergeGeom* g, const u8* planes, const float* tables,
                                    const float* fallback, float* out) {
    // Every run of the launch, in index order.
    u64 unusable = 0;
    for (i64 i0 = 0; i0 < g->pixels; i0 += TESSERA_DEBEVEC_RUN) {
        unusable += debevec_run(*g, planes, tables, fallback, out, i0);
    }
    return unusable;
}

extern "C" float tessera_host_exp_f32(float x) { return tessera_exp_f32(x); }

// MergeGeom's layout as C++ sees it: size, then each field's offset in declaration order.
extern "C" void tessera_host_merge_geom_layout(i64* out) {
#define F(field) offsetof(MergeGeom, field)
    tessera_write_layout(out, {sizeof(MergeGeom), F(pixels), F(channels), F(exposures)});
#undef F
}
