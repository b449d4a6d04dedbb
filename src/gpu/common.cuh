// Shared by every tessera kernel, on the device (NVRTC) and on the host (the test harness,
// compiled by the `cc` crate): fixed-width types, the host/device marker, and the few
// bit-level helpers whose results must be the same on both sides.
//
// NVRTC has no system headers, so nothing here includes one. Arithmetic must follow IEEE
// round-to-nearest with no contraction of a*b+c into FMA on both sides: the device code is
// compiled with --fmad=false (and NVRTC's default --prec-div=true, --ftz=false), the host
// harness with -ffp-contract=off.
#pragma once

#if defined(__CUDACC__)
#define TESSERA_HD __host__ __device__ __forceinline__
#else
#define TESSERA_HD inline
#endif

// Loops over a compile-time bound that must be unrolled, so that the arrays they index are
// indexed by constants and live in registers (a runtime index puts an array in local
// memory). The host compiler unrolls or not as it likes: the results are the same.
#if defined(__CUDACC__)
#define TESSERA_UNROLL _Pragma("unroll")
#else
#define TESSERA_UNROLL
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// A float and a double from their bits.
TESSERA_HD float tessera_bits_f32(u32 bits) {
#if defined(__CUDACC__)
    return __uint_as_float(bits);
#else
    union { u32 u; float f; } v;
    v.u = bits;
    return v.f;
#endif
}

TESSERA_HD double tessera_bits_f64(u64 bits) {
#if defined(__CUDACC__)
    return __longlong_as_double((long long)bits);
#else
    union { u64 u; double d; } v;
    v.u = bits;
    return v.d;
#endif
}

// Quiet NaNs with Rust's bit patterns (f64::NAN, f32::NAN), written by bits: 0.0/0.0 gives
// a different payload on x86 (negative) and on the GPU (canonical 0x7fffffff).
TESSERA_HD double tessera_nan_f64() { return tessera_bits_f64(0x7ff8000000000000ULL); }

TESSERA_HD float tessera_nan_f32() { return tessera_bits_f32(0x7fc00000u); }

TESSERA_HD u64 tessera_f64_bits(double x) {
#if defined(__CUDACC__)
    return (u64)__double_as_longlong(x);
#else
    union { u64 u; double d; } v;
    v.d = x;
    return v.u;
#endif
}

// NaN of the output type, by bits (see above).
template <typename O> TESSERA_HD O tessera_nan();
template <> TESSERA_HD float tessera_nan<float>() { return tessera_nan_f32(); }
template <> TESSERA_HD double tessera_nan<double>() { return tessera_nan_f64(); }

// max(x, 0) with NaN and -0.0 giving +0.0; the CPU kernels use the same expression
// (`if x > 0.0 { x } else { 0.0 }`), not f64::max, whose treatment of signed zeros is unspecified.
TESSERA_HD double tessera_max0(double x) { return x > 0.0 ? x : 0.0; }
