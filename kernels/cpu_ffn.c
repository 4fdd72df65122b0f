/* The CPU fast path: linear layers and the grouped expert FFN as SGEMMs
 * through CBLAS (OpenBLAS threads each call). Each expert's rows go through
 * gate, up and down as one GEMM each (the grouped-GEMM idea by loop), in
 * chunks of at most CHUNK rows so that scratch stays bounded at 16k tokens x
 * top-8 while each GEMM stays large enough to run at the BLAS's full rate.
 * Gate and up are not packed into one [2 ffn][hidden] matrix: that needs a
 * second copy of every expert's weights, and at the sizes where the call
 * overhead it saves matters (a few rows) the GEMMs are bound by reading the
 * weights, which packing does not change. */
#include <cblas.h>
#include <math.h>

#include "backend.h"
#include "kcheck.h"

enum { CHUNK = EPM_CPU_FFN_CHUNK };

static void sgemm_rows(const float *x, int64_t m, int in, const float *w, int out, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

epm_status epm_cpu_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    KREQ(n >= 0 && n <= INT32_MAX, "cpu linear: n = %lld", (long long)n);
    KREQ(in >= 1 && out >= 1, "cpu linear: in = %d, out = %d", in, out);
    KPTR("cpu linear", x, n);
    KPTR("cpu linear", w, 1);
    KPTR("cpu linear", y, n);
    if (n == 0)
        return EPM_OK;
    sgemm_rows(x, n, in, w, out, y);
    if (b)
        for (int64_t i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[i * out + o] += b[o];
    return EPM_OK;
}

size_t epm_cpu_ffn_scratch_bytes(int64_t rows, int hidden, int ffn)
{
    (void)hidden;
    int64_t m = rows < CHUNK ? rows : CHUNK;
    return (size_t)(2 * m * ffn) * sizeof(float);
}

epm_status epm_cpu_ffn_check(const char *fn, const void *x, const int64_t *offsets, int experts, int hidden,
                             int ffn, const void *const *gate, const void *const *up, const void *const *down,
                             const void *scratch, const void *y)
{
    EPM_CHECK(epm_ref_check_offsets(fn, offsets, experts));
    KREQ(hidden >= 1 && ffn >= 1, "%s: hidden = %d, ffn = %d", fn, hidden, ffn);
    KREQ(gate && up && down, "%s: a weight pointer array is NULL", fn);
    KREQ(x || offsets[experts] == 0, "%s: x is NULL", fn);
    KREQ(y || offsets[experts] == 0, "%s: y is NULL", fn);
    KREQ(scratch || offsets[experts] == 0, "%s: scratch is NULL", fn);
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        KREQ(m == 0 || (gate[e] && up[e] && down[e]), "%s: expert %d has %lld rows but no weights", fn, e,
             (long long)m);
    }
    return EPM_OK;
}

epm_status epm_cpu_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y)
{
    EPM_CHECK(epm_cpu_ffn_check("cpu grouped_ffn", x, offsets, experts, hidden, ffn, (const void *const *)gate,
                                (const void *const *)up, (const void *const *)down, scratch, y));
    for (int e = 0; e < experts; e++) {
        for (int64_t r0 = offsets[e]; r0 < offsets[e + 1]; r0 += CHUNK) {
            int64_t m = offsets[e + 1] - r0 < CHUNK ? offsets[e + 1] - r0 : CHUNK;
            float *g = scratch, *u = scratch + m * ffn;
            sgemm_rows(x + r0 * hidden, m, hidden, gate[e], ffn, g);
            sgemm_rows(x + r0 * hidden, m, hidden, up[e], ffn, u);
            for (int64_t i = 0; i < m * ffn; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            sgemm_rows(g, m, ffn, down[e], hidden, y + r0 * hidden);
        }
    }
    return EPM_OK;
}
