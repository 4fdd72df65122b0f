/* The internal epm_ops table of the C reference and the unchecked helpers of
 * ops.h, both thin layers over the public epm_ref_* kernels (ref_dense.c,
 * ref_moe.c), so there is one reference implementation of each op. */
#include "epmoe/kernels.h"
#include "ops.h"

static void ref_linear(const float *x, int64_t n, int in, const float *w, const float *b, int out, float *y)
{
    (void)epm_ref_linear(x, n, in, w, b, out, y);
}

static void ref_rmsnorm(const float *x, int64_t n, int d, const float *w, float eps, float *y)
{
    (void)epm_ref_rmsnorm(x, n, d, w, eps, y);
}

static void ref_swiglu(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                       const float *down, float *scratch, float *y)
{
    (void)scratch;
    (void)epm_ref_expert_ffn(x, n, hidden, ffn, gate, up, down, y);
}

static void ref_grouped_swiglu(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *scratch, float *y)
{
    (void)scratch;
    (void)epm_ref_grouped_ffn(x, offsets, experts, hidden, ffn, gate, up, down, y);
}

static const epm_ops ref_ops = {"ref", ref_linear, ref_rmsnorm, ref_swiglu, ref_grouped_swiglu};

const epm_ops *epm_ops_ref(void) { return &ref_ops; }

int64_t epm_grouped_scratch(const int64_t *offsets, int experts, int ffn)
{
    int64_t most = 0;
    for (int e = 0; e < experts; e++)
        most = offsets[e + 1] - offsets[e] > most ? offsets[e + 1] - offsets[e] : most;
    return 2 * most * ffn;
}

void epm_rope(float *x, int64_t n, int heads, int hd, const int32_t *pos, double theta)
{
    (void)epm_ref_rope(x, n, heads, hd, pos, theta);
}

epm_status epm_attention(const float *q, int64_t n, const int32_t *pos, const float *kc, const float *vc, int heads,
                         int kv_heads, int hd, float *out, float *probs, int64_t cache_len)
{
    return epm_ref_attention(q, n, pos, kc, vc, cache_len, heads, kv_heads, hd, out, probs);
}

void epm_softmax(float *x, int d) { (void)epm_ref_softmax(x, 1, d, x); }

epm_status epm_router(const float *logits, int64_t n, int experts, int k, int sigmoid, float top_p, int renorm,
                      int32_t *ids, float *wts)
{
    epm_router_opts o = {.k = k, .score = sigmoid ? EPM_SCORE_SIGMOID : EPM_SCORE_SOFTMAX, .renorm = renorm,
                         .top_p = top_p};
    return epm_ref_router(logits, n, experts, &o, ids, wts);
}

epm_status epm_moe_route(const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets, int32_t *row_src,
                         int32_t *row_of)
{
    return epm_ref_route(ids, n, k, experts, offsets, row_src, row_of);
}

void epm_permute(const float *x, int hidden, const int32_t *row_src, int64_t rows, float *out)
{
    (void)epm_ref_permute(x, hidden, row_src, rows, out);
}

void epm_unpermute(const float *y, int hidden, const int32_t *row_of, const float *w, int64_t n, int k, float *out)
{
    (void)epm_ref_unpermute(y, hidden, row_of, w, n, k, out);
}
