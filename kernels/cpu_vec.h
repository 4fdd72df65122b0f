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

#endif
