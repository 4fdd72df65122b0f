/* DeepSeek's multi-head latent attention (MLA), in two forms.
 *
 * Latent (the default, what vLLM and SGLang run): the cache holds, per token
 * and layer, the normalised kv latent c (kv_lora_rank) and the roped key part
 * k_r (qk_rope_head_dim) shared by all heads: 576 floats for DeepSeek-V3,
 * not 2 x 128 heads x 192. kv_b_proj's key half is absorbed into the query
 * and its value half applied after attention:
 *   q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c
 *   sum_t p_t (W_UV_h c_t) = W_UV_h (sum_t p_t c_t)
 * so attention is multi-query attention (one kv head) over rows [c | k_r] of
 * width kv_lora_rank + qk_rope, with values the rows' first kv_lora_rank
 * entries: the run's attention kernels, unchanged. That is decode's form: per
 * key and head it reads the one shared row. Prefill expands each sequence's
 * cached rows through kv_b_proj and attends them as the expanded form does,
 * which costs qk + v_head per key and head rather than 2 kv_lora + qk_rope,
 * where queries are many (vLLM's split too).
 *
 * Expanded (--mla-cache expanded; transformers' eager arithmetic): the latent
 * goes through kv_b_proj into a key and a value per head (the prefill path's
 * rows, as they come), cached and attended as any model's (kv heads = heads,
 * head_dim = r->c->head_dim). Per head h, with qk = qk_nope + qk_rope and
 * hd = head_dim >= qk, v_head_dim:
 *   query = [q_nope_h | rope(q_rot_h) | 0...]     from q_proj, or q_b(norm(q_a x))
 *   key   = [k_nope_h | rope(k_rot)   | 0...]     k_rot: one vector for all heads
 *   value = [v_h      | 0...]                     k_nope_h, v_h from kv_b(norm(latent))
 * The zeros add nothing to q.k or to the output.
 *
 * Both: the attention kernel scales q.k by 1/sqrt(its head width), so q is
 * scaled to leave transformers' 1/sqrt(qk) (times YaRN's softmax factor). */
#include <math.h>

#include "core.h"
#include "runtime_internal.h"

/* transformers builds q_a_layernorm and kv_a_layernorm with the RMSNorm
 * class's default eps, not the config's rms_norm_eps */
#define LORA_NORM_EPS 1e-6f

/* The rope part of each of `heads` vectors (stride `stride`, rope part at
 * `at`) into out [n][heads][rope], un-interleaved when the checkpoint's
 * rope pairs are (2j, 2j+1): transformers moves them to (j, j + rope/2)
 * before rotating, and the rotated values stay in that order. */
static void gather_rope(const epm_model_config *c, const float *src, int64_t n, int heads, int stride, int at,
                        float *out)
{
    int d = c->qk_rope_dim;
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < heads; h++) {
            const float *x = src + (i * heads + h) * (int64_t)stride + at;
            float *y = out + (i * heads + h) * (int64_t)d;
            for (int j = 0; j < d / 2; j++) {
                y[j] = c->rope_interleave ? x[2 * j] : x[j];
                y[d / 2 + j] = c->rope_interleave ? x[2 * j + 1] : x[d / 2 + j];
            }
        }
}

/* What both forms start from: qt [n][heads][qk] (q_nope in front), the
 * normalised latent lat [n][KL], and the roped parts rq [n][heads][rope],
 * rk [n][rope]. */
typedef struct mla_parts {
    float *qt, *lat, *rq, *rk;
} mla_parts;

static void parts_free(mla_parts *p)
{
    epm_free(p->qt);
    epm_free(p->lat);
    epm_free(p->rq);
    epm_free(p->rk);
}

static epm_status project(rt *r, const epm_model_layer *w, const float *x, int64_t n, const int32_t *pos,
                          mla_parts *p)
{
    const epm_model_config *c = r->c;
    const int H = c->hidden_size, nh = c->num_heads, rope = c->qk_rope_dim, qk = c->qk_nope_dim + rope,
              QL = c->q_lora_rank, KL = c->kv_lora_rank;
    size_t rows = (size_t)(n ? n : 1);
    memset(p, 0, sizeof *p);
    p->qt = epm_malloc(rows * nh * qk * sizeof *p->qt);
    p->lat = epm_malloc(rows * KL * sizeof *p->lat);
    p->rq = epm_malloc(rows * nh * rope * sizeof *p->rq);
    p->rk = epm_malloc(rows * rope * sizeof *p->rk);
    float *qa = QL ? epm_malloc(rows * QL * sizeof *qa) : NULL;
    float *kva = epm_malloc(rows * (KL + rope) * sizeof *kva);
    epm_status st = EPM_OK;
    if (!p->qt || !p->lat || !p->rq || !p->rk || (QL && !qa) || !kva) {
        st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's projections of %lld tokens failed", r->me,
                      (long long)n);
        goto out;
    }
    if (QL) {
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->q_a, w->q_a_bias, QL, qa), st, out);
        r->ref->rmsnorm(qa, n, QL, w->q_a_norm, LORA_NORM_EPS, qa);
        EPM_CHECK_GOTO(epm_rt_lin(r, qa, n, QL, w->q_b, NULL, nh * qk, p->qt), st, out);
    } else {
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->q, NULL, nh * qk, p->qt), st, out);
    }
    EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->kv_a, w->kv_a_bias, KL + rope, kva), st, out);
    for (int64_t i = 0; i < n; i++)
        memcpy(p->lat + i * KL, kva + i * (KL + rope), (size_t)KL * sizeof *p->lat);
    r->ref->rmsnorm(p->lat, n, KL, w->kv_a_norm, LORA_NORM_EPS, p->lat);
    gather_rope(c, p->qt, n, nh, qk, c->qk_nope_dim, p->rq);
    gather_rope(c, kva, n, 1, KL + rope, KL, p->rk);
    epm_rt_rope(r, p->rq, n, nh, rope, pos);
    epm_rt_rope(r, p->rk, n, 1, rope, pos);
out:
    epm_free(qa);
    epm_free(kva);
    if (st != EPM_OK)
        parts_free(p);
    return st;
}

/* YaRN's softmax factor (1 without), over sqrt(qk), for a kernel that
 * divides by sqrt(width) */
static float q_scale(const rt *r, int width)
{
    const epm_model_config *c = r->c;
    return (float)(r->softmax_scale * sqrt((double)width / (c->qk_nope_dim + c->qk_rope_dim)));
}

epm_status epm_mla_qkv(rt *r, int l, const float *x, int64_t n, const int32_t *pos, float *q, float *k, float *v)
{
    const epm_model_config *c = r->c;
    float *krow = epm_malloc((size_t)(n ? n : 1) * (c->kv_lora_rank + c->qk_rope_dim) * sizeof *krow);
    if (!krow)
        return epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's latent rows of %lld tokens failed", r->me,
                        (long long)n);
    /* the latent form's prefill queries, and its rows expanded as they come */
    epm_status st = epm_mla_latent_qk(r, l, x, n, pos, 0, q, krow);
    if (st == EPM_OK)
        st = epm_mla_expand_rows(r, l, krow, 0, n, k, v); /* float32 rows, not a cache */
    epm_free(krow);
    return st;
}

void epm_mla_compact(const epm_model_config *c, float *att, int64_t n)
{
    const int nh = c->num_heads, hd = c->head_dim, vd = c->v_head_dim;
    for (int64_t i = 0; i < n * nh; i++)
        memmove(att + i * vd, att + i * hd, (size_t)vd * sizeof *att);
}

double epm_mla_setup_bytes(const rt *r)
{
    const epm_model_config *c = r->c;
    if (!r->latent)
        return 0;
    return (double)c->num_heads * c->kv_lora_rank * c->qk_nope_dim * (r->d16 ? 2.0 : 4.0);
}

epm_status epm_mla_setup(rt *r)
{
    const epm_model_config *c = r->c;
    if (!r->latent)
        return EPM_OK;
    const int nh = c->num_heads, nope = c->qk_nope_dim, KL = c->kv_lora_rank, kvb = nope + c->v_head_dim;
    if (!(r->mla_ukt = epm_calloc((size_t)c->num_layers, sizeof *r->mla_ukt)))
        return epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's absorbed key projections failed", r->me);
    for (int l = 0; l < c->num_layers; l++) {
        epm_weight kb = r->dense->layer[l].kv_b;
        int b16 = kb.dtype == EPM_DTYPE_BF16;
        size_t el = b16 ? 2 : 4;
        uint8_t *t = epm_malloc((size_t)nh * KL * nope * el);
        if (!t)
            return epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's absorbed key projections failed", r->me);
        r->mla_ukt[l].data = t;
        r->mla_ukt[l].dtype = kb.dtype;
        /* [h][j][t] of kv_b's rows h*kvb + j (j < nope) -> [h][t][j] */
        for (int h = 0; h < nh; h++)
            for (int j = 0; j < nope; j++) {
                const uint8_t *src = (const uint8_t *)kb.data + ((size_t)h * kvb + j) * KL * el;
                for (int u = 0; u < KL; u++)
                    memcpy(t + (((size_t)h * KL + u) * nope + j) * el, src + (size_t)u * el, el);
            }
    }
    return EPM_OK;
}

void epm_mla_teardown(rt *r)
{
    for (int l = 0; r->mla_ukt && l < r->c->num_layers; l++)
        epm_free((void *)r->mla_ukt[l].data);
    epm_free(r->mla_ukt);
    r->mla_ukt = NULL;
}

/* Head h's width entries at column at of each row of a [n][heads][stride]
 * array, into a contiguous [n][width] one (gather), or back (scatter). */
static void gather_head(float *packed, const float *strided, int64_t n, int heads, int h, int stride, int at,
                        int width)
{
    for (int64_t i = 0; i < n; i++)
        memcpy(packed + i * width, strided + (i * heads + h) * (int64_t)stride + at, (size_t)width * sizeof *packed);
}

static void scatter_head(const float *packed, float *strided, int64_t n, int heads, int h, int stride, int at,
                         int width)
{
    for (int64_t i = 0; i < n; i++)
        memcpy(strided + (i * heads + h) * (int64_t)stride + at, packed + i * width, (size_t)width * sizeof *packed);
}

epm_status epm_mla_latent_qk(rt *r, int l, const float *x, int64_t n, const int32_t *pos, int absorbed, float *q,
                             float *krow)
{
    const epm_model_config *c = r->c;
    const epm_model_layer *w = &r->dense->layer[l];
    const int nh = c->num_heads, nope = c->qk_nope_dim, rope = c->qk_rope_dim, qk = nope + rope,
              KL = c->kv_lora_rank, D = KL + rope;
    mla_parts p;
    EPM_CHECK(project(r, w, x, n, pos, &p));
    size_t rows = (size_t)(n ? n : 1);
    float *qn = NULL, *ql = NULL;
    epm_status st = EPM_OK;
    for (int64_t i = 0; i < n; i++) {
        memcpy(krow + i * D, p.lat + i * KL, (size_t)KL * sizeof *krow);
        memcpy(krow + i * D + KL, p.rk + i * rope, (size_t)rope * sizeof *krow);
    }
    if (!absorbed) { /* the expanded form's queries: [q_nope | q_rope | 0...] of head_dim */
        const int hd = c->head_dim;
        float qe = q_scale(r, hd);
        for (int64_t i = 0; i < n * nh; i++) {
            float *qo = q + i * hd;
            memset(qo, 0, (size_t)hd * sizeof *qo);
            for (int j = 0; j < nope; j++)
                qo[j] = qe * p.qt[i * qk + j];
            for (int j = 0; j < rope; j++)
                qo[nope + j] = qe * p.rq[i * rope + j];
        }
        goto out;
    }
    qn = epm_malloc(rows * nope * sizeof *qn);
    ql = epm_malloc(rows * KL * sizeof *ql);
    if (!qn || !ql) {
        st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's absorbed queries of %lld tokens failed", r->me,
                      (long long)n);
        goto out;
    }
    float qs = q_scale(r, D);
    for (int64_t i = 0; i < n * nh * qk; i++)
        p.qt[i] *= qs;
    for (int64_t i = 0; i < n * nh * rope; i++)
        p.rq[i] *= qs;
    size_t el = r->mla_ukt[l].dtype == EPM_DTYPE_BF16 ? 2 : 4;
    for (int h = 0; h < nh; h++) {
        /* q_lat = W_UK_h^T q_nope_h, with W_UK_h^T [KL][nope] held as a linear layer's weight */
        epm_weight uk = {.data = (const uint8_t *)r->mla_ukt[l].data + (size_t)h * KL * nope * el,
                         .dtype = r->mla_ukt[l].dtype};
        gather_head(qn, p.qt, n, nh, h, qk, 0, nope);
        EPM_CHECK_GOTO(epm_rt_lin(r, qn, n, nope, uk, NULL, KL, ql), st, out);
        scatter_head(ql, q, n, nh, h, D, 0, KL);
    }
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < nh; h++)
            memcpy(q + (i * nh + h) * D + KL, p.rq + (i * nh + h) * rope, (size_t)rope * sizeof *q);
out:
    epm_free(qn);
    epm_free(ql);
    parts_free(&p);
    return st;
}

epm_status epm_mla_latent_out(rt *r, const epm_model_layer *w, const float *att, int64_t n, float *out)
{
    const epm_model_config *c = r->c;
    const int nh = c->num_heads, nope = c->qk_nope_dim, vd = c->v_head_dim, KL = c->kv_lora_rank,
              kvb = nope + vd, D = KL + c->qk_rope_dim;
    size_t rows = (size_t)(n ? n : 1);
    float *ol = epm_malloc(rows * KL * sizeof *ol), *vh = epm_malloc(rows * vd * sizeof *vh);
    epm_status st = EPM_OK;
    if (!ol || !vh) {
        st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's value projection of %lld tokens failed", r->me,
                      (long long)n);
        goto out;
    }
    size_t el = w->kv_b.dtype == EPM_DTYPE_BF16 ? 2 : 4;
    for (int h = 0; h < nh; h++) {
        /* W_UV_h: kv_b's rows h*kvb + nope .. + vd, a [vd][KL] matrix of its own */
        epm_weight uv = {.data = (const uint8_t *)w->kv_b.data + ((size_t)h * kvb + nope) * KL * el,
                         .dtype = w->kv_b.dtype};
        gather_head(ol, att, n, nh, h, D, 0, KL);
        EPM_CHECK_GOTO(epm_rt_lin(r, ol, n, KL, uv, NULL, vd, vh), st, out);
        scatter_head(vh, out, n, nh, h, vd, 0, vd);
    }
out:
    epm_free(ol);
    epm_free(vh);
    return st;
}

/* float32 rows (cached 0), or those of a cache of cached rows in r->kvt */
static void rows_get(const rt *r, const void *krow, int64_t cached, int64_t off, int n, float *dst)
{
    if (cached)
        epm_kv_get(r, krow, cached, off, n, dst);
    else
        memcpy(dst, (const float *)krow + off, (size_t)n * sizeof *dst);
}

epm_status epm_mla_expand_rows(rt *r, int l, const void *krow, int64_t cached, int64_t len, float *k, float *v)
{
    const epm_model_config *c = r->c;
    const int nh = c->num_heads, hd = c->head_dim, nope = c->qk_nope_dim, rope = c->qk_rope_dim,
              vd = c->v_head_dim, KL = c->kv_lora_rank, kvb = nope + vd, D = KL + rope;
    size_t rows = (size_t)(len ? len : 1);
    float *lat = epm_malloc(rows * KL * sizeof *lat), *kvo = epm_malloc(rows * nh * kvb * sizeof *kvo);
    epm_status st = EPM_OK;
    if (!lat || !kvo) {
        st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for expanding %lld MLA cache rows failed", r->me,
                      (long long)len);
        goto out;
    }
    for (int64_t t = 0; t < len; t++)
        rows_get(r, krow, cached, t * D, KL, lat + t * KL);
    EPM_CHECK_GOTO(epm_rt_lin(r, lat, len, KL, r->dense->layer[l].kv_b, NULL, nh * kvb, kvo), st, out);
    for (int64_t t = 0; t < len; t++)
        for (int h = 0; h < nh; h++) {
            float *ko = k + (t * nh + h) * hd, *vo = v + (t * nh + h) * hd;
            const float *kv = kvo + (t * nh + h) * kvb;
            memset(ko, 0, (size_t)hd * sizeof *ko);
            memset(vo, 0, (size_t)hd * sizeof *vo);
            memcpy(ko, kv, (size_t)nope * sizeof *ko);
            rows_get(r, krow, cached, t * D + KL, rope, ko + nope);
            memcpy(vo, kv + nope, (size_t)vd * sizeof *vo);
        }
out:
    epm_free(lat);
    epm_free(kvo);
    return st;
}
