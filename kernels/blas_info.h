/* Which BLAS the CPU kernels call and which kernel set it runs. Why: an
 * OpenBLAS built with DYNAMIC_ARCH picks its kernels ("core") for the CPU
 * when it loads, and OPENBLAS_CORETYPE overrides that choice; on an AVX-512
 * machine its AVX2 set (Haswell) runs SGEMM at about half the speed of its
 * AVX-512 one (bench/README.md), so a CPU figure means little without it. */
#ifndef EPM_BLAS_INFO_H
#define EPM_BLAS_INFO_H

#include <stddef.h>

/* One line, e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY
 * Cooperlake MAX_THREADS=64" (OpenBLAS's own words, which name the core in
 * use), with " (OPENBLAS_CORETYPE=X)" added when the variable chose it. */
void epm_blas_describe(char *buf, size_t cap);

#endif
