/* The BLAS's SGEMM split over OpenMP's threads (cpu_sgemm.h says why). */
#include "cpu_sgemm.h"

#include <cblas.h>

#include "cpu_omp.h"
#include "epm_config.h"

enum {
    SLICE_MIN = 64,         /* output features per slice, at least */
    PAR_MIN_WORK = 1 << 20  /* multiply-adds below which one call does it all */
};

/* 1 when each BLAS call runs on the calling thread only: a pthreads OpenBLAS
 * set to one thread here, a sequential one, or an OpenMP one (which runs
 * single-threaded inside a parallel region). 0 for any other BLAS, and in a
 * build without OpenMP, where OpenBLAS's threads are the only ones. */
static int blas_on_caller(void)
{
    static int state = -1; /* every thread works out the same answer; a race only repeats it */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s < 0) {
#if EPM_HAVE_OPENBLAS && defined(_OPENMP)
        if (openblas_get_parallel() == 1)
            openblas_set_num_threads(1);
        s = 1;
#else
        s = 0;
#endif
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s;
}

int epm_cpu_sgemm_on_caller(void) { return blas_on_caller(); }

const char *epm_cpu_sgemm_threading(void)
{
    return blas_on_caller() ? "openmp slices, the blas on one thread" : "the blas's own";
}

static void sgemm(const float *x, int64_t m, int k, const float *w, int n, float *y, int64_t ldy)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, n, k, 1.0f, x, k, w, k, 0.0f, y, (int)ldy);
}

void epm_cpu_sgemm_nt(const float *x, int64_t m, int k, const float *w, int n, float *y, int64_t ldy)
{
    if (m <= 0 || n <= 0)
        return;
    int nt = blas_on_caller() ? epm_omp_threads_for(m * n * (int64_t)k, PAR_MIN_WORK) : 1;
    if (nt > n / SLICE_MIN)
        nt = n / SLICE_MIN > 0 ? n / SLICE_MIN : 1;
    if (nt <= 1) {
        sgemm(x, m, k, w, n, y, ldy);
        return;
    }
    /* slices of whole 16-feature groups: every slice's y columns start on the same 64-byte phase */
EPM_OMP("omp parallel num_threads(nt)")
    {
        int64_t c0, c1;
        epm_omp_share(n, 16, &c0, &c1);
        if (c1 > c0)
            sgemm(x, m, k, w + c0 * k, (int)(c1 - c0), y + c0, ldy);
    }
}
