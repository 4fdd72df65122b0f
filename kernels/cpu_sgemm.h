/* The BLAS's SGEMM on OpenMP's threads (internal). Why: the CPU path has
 * kernels of its own on OpenMP (cpu_gemm_nt.c, the bf16 direct kernel), and
 * two thread pools on the same cores fight: OpenBLAS's pthreads spin for
 * about 0.1 s after each call, so an OpenMP region right after a BLAS call
 * ran at 0.6-0.8 of its speed (a grouped FFN that mixed the two: 0.58 of the
 * dense ceiling against 0.72 with OpenBLAS's spinning cut short). So with a
 * pthreads OpenBLAS the BLAS is set to one thread, once, and each call is
 * split by output features over OpenMP's threads, each slice one BLAS call:
 * OMP_NUM_THREADS is then the one thread count of the CPU path. Measured on
 * a 2-core Zen 5 with OpenBLAS 0.3.21: the same speed as OpenBLAS's own
 * threads from 128 to 4096 rows (bench/README.md). */
#ifndef EPM_KERNELS_CPU_SGEMM_H
#define EPM_KERNELS_CPU_SGEMM_H

#include <stdint.h>

/* y[m][n] (row stride ldy) = x[m][k] . w[n][k]^T, w's rows k apart. */
void epm_cpu_sgemm_nt(const float *x, int64_t m, int k, const float *w, int n, float *y, int64_t ldy);

/* 1 when a BLAS call runs on its calling thread alone (so that OpenMP's
 * threads may each make one at once); 0 when the BLAS has threads of its own. */
int epm_cpu_sgemm_on_caller(void);

/* How the BLAS is threaded, in words: OpenMP slices with the BLAS on one
 * thread, or the BLAS's own threads (not OpenBLAS, or no OpenMP). */
const char *epm_cpu_sgemm_threading(void);

#endif
