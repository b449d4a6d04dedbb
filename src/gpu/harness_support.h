// What the kernels' host harnesses (ops/*/harness.cpp) share; their Rust side is
// harness_support.rs. Host only: NVRTC never sees this file.
#pragma once

#include <cstddef>
#include <initializer_list>

#include "common.cuh"

// A struct's layout as the Rust twin checks it (harness_support.rs' assert_c_layout): `values`
// (its size, then each field's offset in declaration order; several structs one after the
// other) written to `out`.
inline void tessera_write_layout(i64* out, std::initializer_list<size_t> values) {
    for (size_t v : values) *out++ = (i64)v;
}
