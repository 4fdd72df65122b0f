/* The internal epm_ops table of the CPU fast path (the runtime's), over the
 * same BLAS kernels as the public "cpu" backend (cpu_ffn.c). */
#include "backend.h"
#include "ops.h"

static void blas_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    (void)epm_cpu_linear(x, n, in, w, b, out, y);
}

static void blas_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                        const float *down, float *scratch, float *y)
{
    const int64_t off[2] = {0, n};
    (void)epm_cpu_grouped_ffn(x, off, 1, hidden, ffn, &gate, &up, &down, scratch, y);
}

static void blas_grouped_swiglu(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                                const float *const *gate, const float *const *up, const float *const *down,
                                float *scratch, float *y)
{
    (void)epm_cpu_grouped_ffn(x, offsets, experts, hidden, ffn, gate, up, down, scratch, y);
}

static const epm_ops blas_ops = {"blas", blas_linear, NULL, blas_swiglu, blas_grouped_swiglu,
                                 epm_cpu_grouped_ffn_w16, epm_cpu_linear_w16, epm_cpu_attention,
                                 epm_cpu_grouped_ffn_w8, epm_cpu_linear_w8, epm_cpu_attention_bf16,
                                 epm_cpu_attention_fp8};

/* the BLAS path's needs cover the reference's (none) */
int64_t epm_swiglu_scratch(int64_t n, int hidden, int ffn)
{
    return (int64_t)(epm_cpu_ffn_scratch_bytes(n, hidden, ffn) / sizeof(float));
}

int64_t epm_grouped_scratch(const int64_t *offsets, int experts, int hidden, int ffn)
{
    return epm_swiglu_scratch(epm_busiest_rows(offsets, experts), hidden, ffn);
}

int64_t epm_grouped_scratch_w16(const int64_t *offsets, int experts, int hidden, int ffn)
{
    return (int64_t)epm_cpu_ffn_w16_scratch_floats(epm_busiest_rows(offsets, experts), hidden, ffn, 0);
}

int64_t epm_grouped_scratch_w8(const int64_t *offsets, int experts, int hidden, int ffn)
{
    return (int64_t)epm_cpu_ffn_w8_scratch_floats(epm_busiest_rows(offsets, experts), hidden, ffn);
}

const epm_ops *epm_ops_blas(void) { return &blas_ops; }
