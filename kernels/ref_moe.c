/* The C reference of the MoE kernels: router and top-k, the stable grouping
 * of (token, slot) pairs by expert, permute / weighted un-permute, and the
 * SwiGLU expert FFN. The CUDA and BLAS kernels are checked against these. */
#include <math.h>
#include <string.h>

#include "epmoe/kernels.h"
#include "kcheck.h"
#include "ops.h"

void epm_router_opts_init(epm_router_opts *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->k = 2;
    o->score = EPM_SCORE_SOFTMAX;
}

/* Selection by repeated scan: O(d k), and the tie rule (lower index first)
 * is plain to see. */
static void topk_loop(const float *scores, int d, int k, int32_t *ids, float *vals)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < d; e++) {
            int taken = 0;
            for (int q = 0; q < j; q++)
                taken |= ids[q] == e;
            if (!taken && (best < 0 || scores[e] > scores[best] || (isnan(scores[best]) && !isnan(scores[e]))))
                best = e;
        }
        ids[j] = best;
        vals[j] = best >= 0 ? scores[best] : 0.0f;
    }
}

/* The unchecked form the runtime's own gate calls (ops.h): a NaN score is
 * never chosen over a number there, rather than refused. */
void epm_topk(const float *scores, int d, int k, int32_t *ids, float *vals) { topk_loop(scores, d, k, ids, vals); }

void epm_group_limit(float *scores, int d, int groups, int keep, int by_max, float *gs)
{
    int per = d / groups;
    for (int g = 0; g < groups; g++) {
        float a = -INFINITY, b = -INFINITY; /* the group's best two */
        for (int e = g * per; e < (g + 1) * per; e++) {
            if (scores[e] > a) {
                b = a;
                a = scores[e];
            } else if (scores[e] > b) {
                b = scores[e];
            }
        }
        gs[g] = per > 1 && !by_max ? a + b : a;
    }
    for (int g = 0; g < groups; g++) {
        int above = 0; /* groups ranked before g: higher, or equal and earlier */
        for (int o = 0; o < groups; o++)
            above += gs[o] > gs[g] || (gs[o] == gs[g] && o < g);
        if (above >= keep)
            for (int e = g * per; e < (g + 1) * per; e++)
                scores[e] = -INFINITY;
    }
}

epm_status epm_ref_topk(const float *scores, int d, int k, int32_t *ids, float *vals)
{
    KREQ(d >= 1, "topk: d = %d", d);
    KREQ(k >= 1 && k <= d, "topk: k = %d with d = %d (need 1 <= k <= d)", k, d);
    KPTR("topk", scores, 1);
    KPTR("topk", ids, 1);
    KPTR("topk", vals, 1);
    for (int e = 0; e < d; e++)
        KREQ(!isnan(scores[e]), "topk: scores[%d] is NaN", e);
    topk_loop(scores, d, k, ids, vals);
    return EPM_OK;
}

void epm_topk_p(const float *probs, int d, int k, float p, int32_t *ids, float *vals)
{
    topk_loop(probs, d, k, ids, vals);
    /* the mass in double, so that p = 1 is not missed by float rounding of
     * the partial sums; the first expert is always kept (a token must go
     * somewhere) */
    double mass = 0;
    for (int j = 0; j < k; j++) {
        if (j > 0 && mass >= p) {
            ids[j] = -1;
            vals[j] = 0.0f;
            continue;
        }
        mass += vals[j];
    }
}

epm_status epm_ref_router(const float *logits, int64_t n, int experts, const epm_router_opts *o, int32_t *ids,
                          float *wts)
{
    KREQ(o != NULL, "router: options are NULL");
    KREQ(n >= 0, "router: n = %lld", (long long)n);
    KREQ(experts >= 1, "router: experts = %d", experts);
    KREQ(o->k >= 1 && o->k <= experts, "router: k = %d with %d experts (need 1 <= k <= experts)", o->k, experts);
    KREQ(o->score == EPM_SCORE_SOFTMAX || o->score == EPM_SCORE_SIGMOID, "router: score = %d", (int)o->score);
    KREQ(o->top_p >= 0 && !isnan(o->top_p), "router: top_p = %g", (double)o->top_p);
    int use_p = o->top_p > 0 && o->top_p < 1;
    KREQ(!(use_p && o->score == EPM_SCORE_SIGMOID),
         "router: top_p = %g needs softmax scores (sigmoid scores do not sum to 1)", (double)o->top_p);
    KPTR("router", logits, n);
    KPTR("router", ids, n);
    KPTR("router", wts, n);
    int k = o->k;
    float *p = epm_malloc((size_t)experts * sizeof *p);
    if (!p)
        return epm_fail(EPM_ERR_NOMEM, "router: %d experts", experts);
    for (int64_t t = 0; t < n; t++) {
        const float *l = logits + t * experts;
        int32_t *id = ids + t * k;
        float *w = wts + t * k;
        for (int e = 0; e < experts; e++) {
            if (isnan(l[e])) {
                epm_free(p);
                return epm_fail(EPM_ERR_INVALID_ARG, "router: logits[%lld][%d] is NaN", (long long)t, e);
            }
        }
        if (o->score == EPM_SCORE_SIGMOID)
            epm_ref_sigmoid(l, experts, p);
        else
            epm_ref_softmax(l, 1, experts, p);
        if (use_p)
            epm_topk_p(p, experts, k, o->top_p, id, w);
        else
            topk_loop(p, experts, k, id, w);
        if (o->renorm) {
            double z = 0;
            for (int j = 0; j < k; j++)
                z += w[j];
            for (int j = 0; j < k && z > 0; j++)
                w[j] = (float)(w[j] / z);
        }
    }
    epm_free(p);
    return EPM_OK;
}

epm_status epm_ref_route(const int32_t *ids, int64_t n, int k, int experts, int64_t *offsets, int32_t *row_src,
                         int32_t *row_of)
{
    KREQ(n >= 0, "route: n = %lld", (long long)n);
    KREQ(k >= 1, "route: k = %d", k);
    KREQ(experts >= 1, "route: experts = %d", experts);
    KREQ(n <= INT32_MAX / k, "route: n * k = %lld * %d overflows the int32 row maps", (long long)n, k);
    KPTR("route", ids, n);
    KPTR("route", offsets, 1);
    KPTR("route", row_src, n);
    KPTR("route", row_of, n);
    for (int64_t i = 0; i < n * k; i++)
        KREQ(ids[i] >= -1 && ids[i] < experts, "route: ids[token %lld][slot %d] = %d is outside [-1, %d)",
             (long long)(i / k), (int)(i % k), ids[i], experts);
    int64_t *at = epm_malloc((size_t)experts * sizeof *at);
    if (!at)
        return epm_fail(EPM_ERR_NOMEM, "route: %d experts", experts);
    memset(offsets, 0, (size_t)(experts + 1) * sizeof *offsets);
    for (int64_t i = 0; i < n * k; i++)
        if (ids[i] >= 0)
            offsets[ids[i] + 1]++;
    for (int e = 0; e < experts; e++)
        offsets[e + 1] += offsets[e];
    memcpy(at, offsets, (size_t)experts * sizeof *at);
    /* the second pass in token order keeps each expert's rows in token
     * order: what makes the grouping identical on every backend */
    for (int64_t i = 0; i < n * k; i++) {
        if (ids[i] < 0) {
            row_of[i] = -1;
            continue;
        }
        int64_t r = at[ids[i]]++;
        row_src[r] = (int32_t)(i / k);
        row_of[i] = (int32_t)r;
    }
    epm_free(at);
    return EPM_OK;
}

epm_status epm_ref_permute(const float *x, int hidden, const int32_t *row_src, int64_t rows, float *out)
{
    KREQ(hidden >= 1, "permute: hidden = %d", hidden);
    KREQ(rows >= 0, "permute: rows = %lld", (long long)rows);
    KPTR("permute", x, rows);
    KPTR("permute", row_src, rows);
    KPTR("permute", out, rows);
    for (int64_t r = 0; r < rows; r++) {
        KREQ(row_src[r] >= 0, "permute: row_src[%lld] = %d", (long long)r, row_src[r]);
        memcpy(out + r * hidden, x + (int64_t)row_src[r] * hidden, (size_t)hidden * sizeof *out);
    }
    return EPM_OK;
}

epm_status epm_ref_unpermute(const float *y, int hidden, const int32_t *row_of, const float *w, int64_t n, int k,
                             float *out)
{
    KREQ(hidden >= 1, "unpermute: hidden = %d", hidden);
    KREQ(n >= 0, "unpermute: n = %lld", (long long)n);
    KREQ(k >= 1, "unpermute: k = %d", k);
    KPTR("unpermute", row_of, n);
    KPTR("unpermute", w, n);
    KPTR("unpermute", out, n);
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * hidden;
        memset(o, 0, (size_t)hidden * sizeof *o);
        for (int j = 0; j < k; j++) {
            int32_t r = row_of[t * k + j];
            if (r < 0)
                continue;
            KPTR("unpermute", y, 1);
            float wt = w[t * k + j];
            for (int h = 0; h < hidden; h++)
                o[h] += wt * y[(int64_t)r * hidden + h];
        }
    }
    return EPM_OK;
}

/* One row at a time through gate/up (double sums), silu(g) * u rounded to
 * float as a float32 framework stores it, then down. */
static void ffn_rows(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                     const float *down, float *h, float *y)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * hidden;
        for (int f = 0; f < ffn; f++) {
            double g = 0, u = 0;
            for (int j = 0; j < hidden; j++) {
                g += (double)xr[j] * gate[(int64_t)f * hidden + j];
                u += (double)xr[j] * up[(int64_t)f * hidden + j];
            }
            float gf = (float)g, uf = (float)u;
            h[f] = (float)((double)gf / (1.0 + exp(-(double)gf)) * uf);
        }
        for (int o = 0; o < hidden; o++) {
            double s = 0;
            for (int f = 0; f < ffn; f++)
                s += (double)h[f] * down[(int64_t)o * ffn + f];
            y[i * hidden + o] = (float)s;
        }
    }
}

epm_status epm_ref_expert_ffn(const float *x, int64_t n, int hidden, int ffn, const float *gate, const float *up,
                              const float *down, float *y)
{
    KREQ(n >= 0, "expert_ffn: n = %lld", (long long)n);
    KREQ(hidden >= 1, "expert_ffn: hidden = %d", hidden);
    KREQ(ffn >= 1, "expert_ffn: ffn = %d", ffn);
    KPTR("expert_ffn", x, n);
    KPTR("expert_ffn", gate, n);
    KPTR("expert_ffn", up, n);
    KPTR("expert_ffn", down, n);
    KPTR("expert_ffn", y, n);
    if (n == 0)
        return EPM_OK;
    float *h = epm_malloc((size_t)ffn * sizeof *h);
    if (!h)
        return epm_fail(EPM_ERR_NOMEM, "expert_ffn: ffn %d", ffn);
    ffn_rows(x, n, hidden, ffn, gate, up, down, h, y);
    epm_free(h);
    return EPM_OK;
}

epm_status epm_ref_check_offsets(const char *fn, const int64_t *offsets, int experts)
{
    KREQ(experts >= 1, "%s: experts = %d", fn, experts);
    KREQ(offsets != NULL, "%s: offsets is NULL", fn);
    KREQ(offsets[0] == 0, "%s: offsets[0] = %lld (must be 0)", fn, (long long)offsets[0]);
    for (int e = 0; e < experts; e++)
        KREQ(offsets[e + 1] >= offsets[e], "%s: offsets[%d] = %lld < offsets[%d] = %lld", fn, e + 1,
             (long long)offsets[e + 1], e, (long long)offsets[e]);
    return EPM_OK;
}

/* The oracle of the grouped op is the per-expert op, so the two can never
 * disagree about what an expert computes. */
epm_status epm_ref_grouped_ffn(const float *x, const int64_t *offsets, int experts, int hidden, int ffn,
                               const float *const *gate, const float *const *up, const float *const *down,
                               float *y)
{
    EPM_CHECK(epm_ref_check_offsets("grouped_ffn", offsets, experts));
    KREQ(gate && up && down, "grouped_ffn: a weight pointer array is NULL");
    KPTR("grouped_ffn", x, offsets[experts]);
    KPTR("grouped_ffn", y, offsets[experts]);
    for (int e = 0; e < experts; e++) {
        int64_t m = offsets[e + 1] - offsets[e];
        if (m == 0)
            continue;
        KREQ(gate[e] && up[e] && down[e], "grouped_ffn: expert %d has %lld rows but no weights", e, (long long)m);
        EPM_CHECK(epm_ref_expert_ffn(x + offsets[e] * hidden, m, hidden, ffn, gate[e], up[e], down[e],
                                     y + offsets[e] * hidden));
    }
    return EPM_OK;
}
