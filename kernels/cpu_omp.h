/* OpenMP for the CPU kernels (internal), so that each kernel reads the same
 * with and without it: a build without OpenMP runs every region on one
 * thread. All CPU kernels share OpenMP's one pool (cpu_sgemm.h says why). */
#ifndef EPM_KERNELS_CPU_OMP_H
#define EPM_KERNELS_CPU_OMP_H

#include <math.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#define EPM_OMP(directive) _Pragma(directive)
#else
#define EPM_OMP(directive)
#endif

/* Threads for a region of `work` multiply-adds: all of OpenMP's when there
 * are at least min_work, else 1. */
static inline int epm_omp_threads_for(int64_t work, int64_t min_work)
{
#ifdef _OPENMP
    return work < min_work ? 1 : omp_get_max_threads();
#else
    (void)work, (void)min_work;
    return 1;
#endif
}

/* The calling thread's number in its team (0 outside a region). */
static inline int epm_omp_me(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* The calling thread's share [*c0, *c1) of n items, inside a region: the
 * team splits them evenly in whole units of `unit` (the last share ends at
 * n), so that every share but the last starts and ends on a unit. */
static inline void epm_omp_share(int64_t n, int64_t unit, int64_t *c0, int64_t *c1)
{
    int t = 0, T = 1;
#ifdef _OPENMP
    t = omp_get_thread_num(), T = omp_get_num_threads();
#endif
    int64_t units = (n + unit - 1) / unit;
    *c0 = units * t / T * unit, *c1 = units * (t + 1) / T * unit;
    *c0 = *c0 < n ? *c0 : n, *c1 = *c1 < n ? *c1 : n;
}

/* g[i] = silu(g[i]) * u[i] for i < n, the SwiGLU between an expert's GEMMs:
 * one expf per element, on every thread when there are enough (single-
 * threaded it was 5-10% of a 128-row Mixtral expert). */
static inline void epm_swiglu_inplace(float *g, const float *u, int64_t n)
{
    int nt = epm_omp_threads_for(n, 1 << 15);
    (void)nt;
EPM_OMP("omp parallel for num_threads(nt) schedule(static)")
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#endif
