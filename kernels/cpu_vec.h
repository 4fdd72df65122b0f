/* For the CPU kernels written in plain C on GCC vectors (internal): the
 * clone attribute and the two settings each of those files wants. Include it
 * after every other header: the settings hold for the rest of the file. */
#ifndef EPM_KERNELS_CPU_VEC_H
#define EPM_KERNELS_CPU_VEC_H

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__) && \
    defined(__GLIBC__)
/* Clones that use FMA and 256-bit registers where the CPU has them, picked
 * once at load (ifunc: glibc; the x86-64-v3/v4 names: GCC 12 and later). */
#define EPM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define EPM_CLONES_ON 1
#else
#define EPM_CLONES
#endif

/* vectors pass between static inline helpers only, never across an ABI
 * boundary: GCC's note that their ABI differs without AVX does not apply */
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__GNUC__) && !defined(__clang__)
/* ISO C mode turns contraction off; the dot products want fused multiply-adds */
#pragma GCC optimize("fp-contract=fast")
#endif

#include <stdint.h>
#include <string.h>

/* 8 bf16 values at p, widened (a bf16 is the top half of its float32): the
 * bf16 panels' and the bf16 K/V cache's */
typedef float epm_vf8 __attribute__((vector_size(32)));
static inline __attribute__((always_inline)) epm_vf8 epm_bf16x8(const uint16_t *p)
{
    typedef uint16_t vh8 __attribute__((vector_size(16)));
    typedef uint32_t vu8 __attribute__((vector_size(32)));
    vh8 h;
    memcpy(&h, p, sizeof h);
    vu8 u = __builtin_convertvector(h, vu8) << 16;
    epm_vf8 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 8 float8 e4m3fn codes at p as the values they stand for, NaN codes
 * included: normal codes rebuilt as float32 bits with the exponent rebiased
 * (e + 120), subnormal ones (exponent 0: m / 512) as 2 x (2^-7 (1 + m / 8))
 * - 2^-6, exactly, so that no float32 subnormal is ever an operand (a
 * microcode assist on some CPUs, zero under DAZ); then the sign */
static inline __attribute__((always_inline)) epm_vf8 epm_f8e4m3x8(const uint8_t *p)
{
    typedef uint8_t vb8 __attribute__((vector_size(8)));
    typedef uint32_t vu8 __attribute__((vector_size(32)));
    vb8 b;
    memcpy(&b, p, sizeof b);
    vu8 c = __builtin_convertvector(b, vu8), mag = c & 0x7fu;
    vu8 bits = (mag << 20) + (120u << 23), sub, is_sub = (vu8)(mag < 8u), is_nan = (vu8)(mag == 0x7fu);
    epm_vf8 f;
    memcpy(&f, &bits, sizeof f);
    f = f * 2.0f - 0.015625f;
    memcpy(&sub, &f, sizeof sub);
    bits = (bits & ~is_sub) | (sub & is_sub);
    bits = (bits & ~is_nan) | (0x7fc00000u & is_nan);
    bits |= (c & 0x80u) << 24;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif
