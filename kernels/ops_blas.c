/* The CPU fast path: every linear layer and each expert's FFN as one SGEMM
 * over all rows the expert received (the grouped-GEMM idea on a CPU). */
#include <cblas.h>

#include "ops.h"

static void blas_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    if (n == 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[i * out + o] += b[o];
}

static void blas_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                        const float *down, float *scratch, float *y)
{
    if (n == 0)
        return;
    float *g = scratch, *u = scratch + n * ffn;
    blas_linear(x, n, hidden, gate, NULL, ffn, g);
    blas_linear(x, n, hidden, up, NULL, ffn, u);
    for (int64_t i = 0; i < n * ffn; i++)
        g[i] = epm_silu(g[i]) * u[i];
    blas_linear(g, n, ffn, down, NULL, hidden, y);
}

static const epm_ops blas_ops;

const epm_ops *epm_ops_blas(void) { return &blas_ops; }

static const epm_ops blas_ops = {"blas", blas_linear, NULL, blas_swiglu};
