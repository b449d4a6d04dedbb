// The unstitch kernel's per-element body, shared by the CUDA kernel (unstitch.cu) and the
// host test harness: where output element `e` of a run of patches comes from in the box of
// the image that was read (kernel.rs's cut_window, for a whole run at once). A copy, so the
// GPU's output is the CPU's by construction once the index is right.
#pragma once
#include "common.cuh"

// Rust's twin: `gpu::quilt::CutGeom`, #[repr(C)].
struct CutGeom {
    i64 channels;
    i64 window[3];  // window shape (z, y, x)
    i64 box[3];     // shape of the image box read (z, y, x); channels outermost
    i64 patches;    // patches in this launch
};

// Index into the box (C, bz, by, bx) of element `e` of the patches (M, C, wz, wy, wx);
// starts[3 m + a]: patch m's window start along axis a, relative to the box.
TESSERA_HD i64 cut_source(const CutGeom& g, const i64* starts, i64 e) {
    const i64 wz = g.window[0], wy = g.window[1], wx = g.window[2];
    const i64 ox = e % wx;
    const i64 oy = (e / wx) % wy;
    const i64 oz = (e / (wx * wy)) % wz;
    const i64 c = (e / (wx * wy * wz)) % g.channels;
    const i64 m = e / (wx * wy * wz * g.channels);
    const i64* s = starts + 3 * m;
    return ((c * g.box[0] + s[0] + oz) * g.box[1] + s[1] + oy) * g.box[2] + s[2] + ox;
}
