/* DeepSeek-V3's multi-head latent attention (MLA), run expanded: the
 * compressed latent goes through kv_b_proj into a key and a value per head
 * here, so the layer loop caches and attends them as it does any model's
 * (kv heads = heads, head_dim = r->c->head_dim). That is transformers'
 * eager arithmetic; the absorbed form that caches only the latent (what
 * makes MLA's cache small) is not implemented, so the cache costs
 * 2 * heads * head_dim floats per token and layer.
 *
 * Per head h, with qk = qk_nope + qk_rope and hd = head_dim >= qk, v_head_dim:
 *   query = [q_nope_h | rope(q_rot_h) | 0...]     from q_proj, or q_b(norm(q_a x))
 *   key   = [k_nope_h | rope(k_rot)   | 0...]     k_rot: one vector for all heads
 *   value = [v_h      | 0...]                     k_nope_h, v_h from kv_b(norm(latent))
 * The zeros add nothing to q.k or to the output; the attention kernel scales
 * by 1/sqrt(hd), so q is scaled by sqrt(hd / qk) where hd > qk, leaving
 * transformers' 1/sqrt(qk). */
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

epm_status epm_mla_qkv(rt *r, const epm_model_layer *w, const float *x, int64_t n, const int32_t *pos, float *q,
                       float *k, float *v)
{
    const epm_model_config *c = r->c;
    const int H = c->hidden_size, nh = c->num_heads, hd = c->head_dim, nope = c->qk_nope_dim,
              rope = c->qk_rope_dim, vd = c->v_head_dim, qk = nope + rope, QL = c->q_lora_rank,
              KL = c->kv_lora_rank, kvb = nope + vd;
    size_t rows = (size_t)(n ? n : 1);
    float *qt = epm_malloc(rows * nh * qk * sizeof *qt);
    float *qa = QL ? epm_malloc(rows * QL * sizeof *qa) : NULL;
    float *kva = epm_malloc(rows * (KL + rope) * sizeof *kva);
    float *lat = epm_malloc(rows * KL * sizeof *lat);
    float *kvo = epm_malloc(rows * nh * kvb * sizeof *kvo);
    float *rq = epm_malloc(rows * nh * rope * sizeof *rq), *rk = epm_malloc(rows * rope * sizeof *rk);
    epm_status st = EPM_OK;
    if (!qt || (QL && !qa) || !kva || !lat || !kvo || !rq || !rk) {
        st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for MLA's projections of %lld tokens failed", r->me,
                      (long long)n);
        goto out;
    }
    if (QL) {
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->q_a, w->q_a_bias, QL, qa), st, out);
        r->ref->rmsnorm(qa, n, QL, w->q_a_norm, LORA_NORM_EPS, qa);
        EPM_CHECK_GOTO(epm_rt_lin(r, qa, n, QL, w->q_b, NULL, nh * qk, qt), st, out);
    } else {
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->q, NULL, nh * qk, qt), st, out);
    }
    EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->kv_a, w->kv_a_bias, KL + rope, kva), st, out);
    for (int64_t i = 0; i < n; i++)
        memcpy(lat + i * KL, kva + i * (KL + rope), (size_t)KL * sizeof *lat);
    r->ref->rmsnorm(lat, n, KL, w->kv_a_norm, LORA_NORM_EPS, lat);
    EPM_CHECK_GOTO(epm_rt_lin(r, lat, n, KL, w->kv_b, NULL, nh * kvb, kvo), st, out);
    gather_rope(c, qt, n, nh, qk, nope, rq);
    gather_rope(c, kva, n, 1, KL + rope, KL, rk);
    epm_rt_rope(r, rq, n, nh, rope, pos);
    epm_rt_rope(r, rk, n, 1, rope, pos);
    /* YaRN's softmax factor (1 without), and 1/sqrt(qk) where the kernel divides by sqrt(hd) */
    float qs = (float)(r->softmax_scale * (hd > qk ? sqrt((double)hd / qk) : 1.0));
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            float *qo = q + (i * nh + h) * hd, *ko = k + (i * nh + h) * hd, *vo = v + (i * nh + h) * hd;
            const float *qi = qt + (i * nh + h) * qk, *kv = kvo + (i * nh + h) * kvb;
            memset(qo, 0, (size_t)hd * sizeof *qo);
            memset(ko, 0, (size_t)hd * sizeof *ko);
            memset(vo, 0, (size_t)hd * sizeof *vo);
            for (int j = 0; j < nope; j++)
                qo[j] = qs * qi[j];
            for (int j = 0; j < rope; j++)
                qo[nope + j] = qs * rq[(i * nh + h) * rope + j];
            memcpy(ko, kv, (size_t)nope * sizeof *ko);
            memcpy(ko + nope, rk + i * rope, (size_t)rope * sizeof *ko);
            memcpy(vo, kv + nope, (size_t)vd * sizeof *vo);
        }
out:
    epm_free(qt);
    epm_free(qa);
    epm_free(kva);
    epm_free(lat);
    epm_free(kvo);
    epm_free(rq);
    epm_free(rk);
    return st;
}

void epm_mla_compact(const epm_model_config *c, float *att, int64_t n)
{
    const int nh = c->num_heads, hd = c->head_dim, vd = c->v_head_dim;
    for (int64_t i = 0; i < n * nh; i++)
        memmove(att + i * vd, att + i * hd, (size_t)vd * sizeof *att);
}
