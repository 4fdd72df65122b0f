/* Latency distributions for the run report (runtime.h). */
#include <math.h>
#include <stdlib.h>

#include "runtime.h"

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile's default: linear between the closest ranks */
static double percentile(const double *sorted, int64_t n, double q)
{
    const double at = q / 100.0 * (double)(n - 1);
    const int64_t lo = (int64_t)floor(at), hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - (double)lo);
}

void epm_token_gaps(const double *t, const int *n, int batch, int stride, double *gaps)
{
    for (int s = 0; s < batch; s++)
        for (int j = 0; j < stride; j++)
            gaps[(size_t)s * stride + j] =
                j > 0 && j < n[s] ? t[(size_t)s * stride + j] - t[(size_t)s * stride + j - 1] : NAN;
}

epm_status epm_latency_of(const double *v, int64_t n, epm_latency *out)
{
    *out = (epm_latency){0, 0, 0, 0, 0, 0};
    double *w = epm_malloc((size_t)(n > 0 ? n : 1) * sizeof *w), sum = 0;
    if (!w)
        return EPM_ERR_NOMEM;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(v[i]))
            w[m++] = v[i], sum += v[i];
    if (m > 0) {
        qsort(w, (size_t)m, sizeof *w, by_double);
        *out = (epm_latency){sum / (double)m, percentile(w, m, 50), percentile(w, m, 90), percentile(w, m, 99),
                             w[m - 1], m};
    }
    epm_free(w);
    return EPM_OK;
}
