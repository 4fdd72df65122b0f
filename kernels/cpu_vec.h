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

#endif
