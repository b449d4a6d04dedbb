// The unstitch kernel's per-thread body, shared by the CUDA kernel (unstitch.cu) and the
// host test harness: a gather of whole window rows (kernel.rs's cut_window, for a run of
// patches at once). A copy, so the GPU's output is the CPU's by construction once the index
// is right.
//
// The patches (M, C, wz, wy, wx) are rows of wx values. A thread owns lane `lane` of the rows
// `row, row + step, ...`: it copies x = lane, lane + lanes, ... of each. The row's coordinates
// (m, c, oz, oy) are kept as mixed-radix digits and advanced by the step's digits with a
// carry, so the only divisions are the two decompositions at the thread's start (a 64-bit
// division per element was most of the old kernel's time).
#pragma once
#include "common.cuh"

// Rust's twin: `gpu::quilt::CutGeom`, #[repr(C)].
struct CutGeom {
    i64 channels;
    i64 window[3];  // window shape (z, y, x)
    i64 box[3];     // shape of the image box read (z, y, x); channels outermost
    i64 patches;    // patches in this launch
};

// A row index as digits: row = ((m * C + c) * wz + oz) * wy + oy.
struct CutRow {
    i64 m, c, oz, oy;
};

TESSERA_HD CutRow cut_row_digits(const CutGeom& g, i64 row) {
    CutRow r;
    r.oy = row % g.window[1];
    row /= g.window[1];
    r.oz = row % g.window[0];
    row /= g.window[0];
    r.c = row % g.channels;
    r.m = row / g.channels;
    return r;
}

// r += d, digit by digit (each digit of both is below its radix, so one carry each).
TESSERA_HD void cut_row_advance(const CutGeom& g, CutRow& r, const CutRow& d) {
    r.oy += d.oy;
    i64 carry = r.oy >= g.window[1];
    r.oy -= carry * g.window[1];
    r.oz += d.oz + carry;
    carry = r.oz >= g.window[0];
    r.oz -= carry * g.window[0];
    r.c += d.c + carry;
    carry = r.c >= g.channels;
    r.c -= carry * g.channels;
    r.m += d.m + carry;
}

// Copies this thread's share of the patches (see the top of the file); starts[3 m + a]:
// patch m's window start along axis a, relative to the box.
template <typename T>
TESSERA_HD void cut_rows(const CutGeom& g, const i64* starts, const T* box, T* out, i64 lane,
                         i64 lanes, i64 row, i64 step) {
    const i64 wx = g.window[2];
    const i64 rows = g.patches * g.channels * g.window[0] * g.window[1];
    if (row >= rows || lane >= wx) {
        return;
    }
    CutRow at = cut_row_digits(g, row);
    const CutRow by = cut_row_digits(g, step);
    for (; row < rows; row += step) {
        const i64* s = starts + 3 * at.m;
        const T* src = box + ((at.c * g.box[0] + s[0] + at.oz) * g.box[1] + s[1] + at.oy) *
                                 g.box[2] + s[2];
        T* dst = out + row * wx;
        for (i64 x = lane; x < wx; x += lanes) {
            dst[x] = src[x];
        }
        cut_row_advance(g, at, by);
    }
}
