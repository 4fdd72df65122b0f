/* Attention in the layer loop: data-parallel, each rank's resident tokens
 * attending their own sequences' caches (follow mode: every rank caches
 * every sequence's rows, all-gathered once a layer), in the model's form or
 * MLA's latent, expanded for prompt rows and absorbed for decode rows. */
#include <string.h>

#include "runtime_internal.h"

/* MLA's prefill from its latent cache: each sequence's rows up to its last
 * query here expanded into keys and values per head, then attended as the
 * expanded form does (q [n][heads][head_dim], att likewise). */
static epm_status mla_attend_expanded(rt *r, int l, int64_t n, const int64_t *g, const float *q, float *att,
                                      float *probs)
{
    const epm_model_config *c = r->c;
    const int nh = c->num_heads, hd = c->head_dim, qd = nh * hd;
    int amod = r->amod_need && r->amod_need[l];
    /* the pass's queries by sequence (a counting sort), and each sequence's last row */
    int64_t *first = epm_calloc((size_t)r->B + 1, sizeof *first), *order = epm_malloc((size_t)(n ? n : 1) * sizeof *order);
    int32_t *last = epm_malloc((size_t)r->B * sizeof *last);
    float *k = NULL, *v = NULL;
    int64_t cap = 0;
    epm_status st = EPM_OK;
    if (!first || !order || !last) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int s = 0; s < r->B; s++)
        last[s] = -1;
    for (int64_t i = 0; i < n; i++) {
        int s = seq_of(r, g[i]), ci = r->cidx[pass_t(r, g[i])];
        last[s] = ci > last[s] ? ci : last[s];
        first[s + 1]++;
    }
    for (int s = 0; s < r->B; s++)
        first[s + 1] += first[s];
    for (int64_t i = 0; i < n; i++) {
        int s = seq_of(r, g[i]);
        order[first[s]++] = i;
    }
    for (int s = r->B; s > 0; s--) /* first[] back to each bucket's start */
        first[s] = first[s - 1];
    first[0] = 0;
    for (int s = 0; st == EPM_OK && s < r->B; s++) {
        if (last[s] < 0)
            continue;
        int64_t len = (int64_t)last[s] + 1;
        if (len > cap) {
            epm_free(k);
            epm_free(v);
            k = epm_malloc((size_t)len * qd * sizeof *k);
            v = epm_malloc((size_t)len * qd * sizeof *v);
            cap = len;
            if (!k || !v) {
                st = epm_fail(EPM_ERR_NOMEM, "rank %d: allocation for %lld expanded MLA rows failed", r->me,
                              (long long)len);
                break;
            }
        }
        st = epm_mla_expand_rows(r, l, r->kc[(size_t)l * r->B + s], kv_rows(r, s), len, k, v);
        for (int64_t j = first[s]; st == EPM_OK && j < first[s + 1]; j++) {
            int64_t i = order[j];
            int ci = r->cidx[pass_t(r, g[i])];
            st = r->ops->attention(q + i * qd, 1, &ci, k, v, r->max_len, nh, nh, hd, att + i * qd, probs);
            if (st == EPM_OK && amod)
                epm_mod_attention_add(r, s, ci, probs);
        }
    }
out:
    epm_free(first);
    epm_free(order);
    epm_free(last);
    epm_free(k);
    epm_free(v);
    return st;
}

/* Attention for n resident tokens (g, h). Under MLA's latent, rows [0, nx)
 * attend expanded (prefill, mla_attend_expanded: the expanded form's cost
 * where queries are many) and rows [nx, n) absorbed (decode: one kv head of
 * the latent row's width); without the latent every row attends in the
 * model's form (nx is n). Their cache rows travel together: one all-gather a
 * layer in follow mode, the exchange plan eval counts. */
static epm_status attend(rt *r, int l, int64_t n, const int64_t *g, float *h, int64_t nx)
{
    const epm_model_config *c = r->c;
    const epm_model_layer *w = &r->dense->layer[l];
    /* per token: cached row width kw (K, or MLA's latent row), value width vw
     * (0 with the latent: its values are its rows); the model's query width qd
     * (nh heads of head_dim) and the absorbed one qda (nh heads of kw) */
    const int H = c->hidden_size, nh = c->num_heads, lat = r->latent;
    const int kw = r->kv_w, vw = lat ? 0 : kw;
    const int qd = nh * c->head_dim, qda = nh * kw;
    nx = lat ? nx : n;
    const int64_t na = n - nx; /* the absorbed rows */
    const size_t rows = (size_t)(n ? n : 1), qn = (size_t)nx * qd + (size_t)na * qda + 1;
    epm_status st = EPM_OK;
    float *x = epm_malloc(rows * H * sizeof *x);
    float *q = epm_malloc(qn * sizeof *q);
    float *kv = epm_malloc(rows * (2 + kw + vw) * sizeof *kv); /* g, k(, v) rows */
    float *att = epm_malloc(qn * sizeof *att);
    float *o = epm_malloc(rows * H * sizeof *o);
    float *k = epm_malloc(rows * kw * sizeof *k), *v = vw ? epm_malloc(rows * vw * sizeof *v) : NULL;
    float *vout = na ? epm_malloc(rows * nh * c->v_head_dim * sizeof *vout) : NULL;
    float *qa = q + (size_t)nx * qd, *atta = att + (size_t)nx * qd; /* the absorbed rows' */
    int32_t *pos = epm_malloc(rows * sizeof *pos);
    float *all = NULL, *probs = NULL;
    /* follow mode all-gathers the cache rows, in bf16 on a bf16 wire: kvw
     * holds one row packed for it, or unpacked from it */
    const int packed = r->o->mode == EPM_MODE_FOLLOW && r->wire16;
    float *kvw = packed ? epm_malloc(((size_t)kw + vw + 1) * sizeof *kvw) : NULL;
    if (!x || !q || !kv || !att || !o || !k || (vw && !v) || (na && !vout) || !pos || (packed && !kvw)) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    double t0 = epm_now();
    r->ref->rmsnorm(h, n, H, w->input_norm, c->rms_norm_eps, x);
    for (int64_t i = 0; i < n; i++)
        pos[i] = pos_of(r, g[i]);
    if (lat) {
        if (nx)
            EPM_CHECK_GOTO(epm_mla_latent_qk(r, l, x, nx, pos, 0, q, k), st, out);
        if (na)
            EPM_CHECK_GOTO(epm_mla_latent_qk(r, l, x + (size_t)nx * H, na, pos + nx, 1, qa, k + (size_t)nx * kw), st, out);
    } else if (c->mla) {
        EPM_CHECK_GOTO(epm_mla_qkv(r, l, x, n, pos, q, k, v), st, out);
    } else {
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->q, w->q_bias, qd, q), st, out);
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->k, w->k_bias, kw, k), st, out);
        EPM_CHECK_GOTO(epm_rt_lin(r, x, n, H, w->v, w->v_bias, vw, v), st, out);
        if (c->qk_norm == EPM_QK_NORM_WHOLE) {
            r->ref->rmsnorm(q, n, qd, w->q_norm, c->rms_norm_eps, q);
            r->ref->rmsnorm(k, n, kw, w->k_norm, c->rms_norm_eps, k);
        } else if (c->qk_norm == EPM_QK_NORM_PER_HEAD) {
            r->ref->rmsnorm(q, n * nh, c->head_dim, w->q_norm, c->rms_norm_eps, q);
            r->ref->rmsnorm(k, n * c->num_kv_heads, c->head_dim, w->k_norm, c->rms_norm_eps, k);
        }
        epm_rt_rope(r, q, n, nh, c->head_dim, pos);
        epm_rt_rope(r, k, n, c->num_kv_heads, c->head_dim, pos);
    }
    int W = 2 + kw + vw;
    for (int64_t i = 0; i < n; i++) {
        put_g(kv + i * W, g[i]);
        memcpy(kv + i * W + 2, k + i * kw, (size_t)kw * sizeof *k);
        if (vw)
            memcpy(kv + i * W + 2 + kw, v + i * vw, (size_t)vw * sizeof *v);
    }
    const float *rows_in = kv;
    int64_t nrows = n;
    /* the width of a cache row as it travels */
    const int RW = packed ? 2 + epm_wire_floats(r, kw + vw) : W;
    if (r->o->mode == EPM_MODE_FOLLOW) {
        /* every rank keeps every sequence's cache: all-gather the new rows,
         * mine among them, so that each rank caches the same values */
        int ml = r->moe_index[l];
        int64_t *cnt = ml >= 0 ? r->kv_local + (size_t)ml * EPM_LINK_COUNT : r->kv_dense_local, sent[EPM_LINK_COUNT] = {0};
        for (int64_t i = 0; i < n && packed; i++) { /* packed in place: a packed row is no wider */
            float *row = kv + i * RW;
            int64_t gi = get_g(kv + i * W);
            epm_wire_put(r, kvw, kw + vw, kv + i * W + 2);
            put_g(row, gi);
            memcpy(row + 2, kvw, (size_t)(RW - 2) * sizeof *row);
        }
        EPM_CHECK_GOTO(epm_rt_ready(r, EPM_OK), st, out);
        epm_xcomm_wire w0, w1;
        epm_xcomm_wire_get(r->x, &w0);
        EPM_CHECK_GOTO(epm_xcomm_allgather(r->x, n, kv, RW, RW - 2, sent, &all, &nrows), st, out);
        epm_xcomm_wire_get(r->x, &w1);
        for (int c = 0; c < EPM_LINK_COUNT && ml < 0; c++) /* (outside plan eval's MoE layers) */
            r->aside_msgs[0][c] += w1.msgs[c] - w0.msgs[c];
        epm_wire_count(RW - 2, epm_wire_bytes(r, kw + vw), sent, cnt);
        rows_in = all;
    }
    /* cache rows follow the MoD rule of runtime_mod.c: without skipping, row = position */
    for (int64_t i = 0; i < nrows; i++) {
        const float *row = rows_in + i * RW;
        int64_t gi = get_g(row);
        int s = seq_of(r, gi), ps = r->cidx[pass_t(r, gi)];
        void *kc = r->kc[(size_t)l * r->B + s], *vc = r->vc[(size_t)l * r->B + s];
        if (!kc) {
            st = epm_fail(EPM_ERR_INTERNAL, "rank %d holds no KV cache for sequence %d", r->me, s);
            goto out;
        }
        const float *kv_in = row + 2;
        if (packed) {
            epm_wire_get(r, row + 2, kw + vw, kvw);
            kv_in = kvw;
        }
        epm_kv_put(r, kc, kv_rows(r, s), (int64_t)ps * kw, kw, kv_in);
        if (vw)
            epm_kv_put(r, vc, kv_rows(r, s), (int64_t)ps * vw, vw, kv_in + kw);
    }
    int amod = r->amod_need && r->amod_need[l];
    if (amod && !(probs = epm_malloc((size_t)nh * r->max_len * sizeof *probs))) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    if (lat && nx)
        EPM_CHECK_GOTO(mla_attend_expanded(r, l, nx, g, q, att, probs), st, out);
    /* the rest row by row: the absorbed latent's, or the model's form */
    const int64_t i0 = lat ? nx : 0;
    const int hd = lat ? kw : c->head_dim, kvh = lat ? 1 : c->num_kv_heads, qw = nh * hd;
    float *qb = lat ? qa : q, *ab = lat ? atta : att;
    for (int64_t i = i0; i < n; i++) {
        int s = seq_of(r, g[i]), ci = r->cidx[pass_t(r, g[i])];
        const void *kc = r->kc[(size_t)l * r->B + s], *vc = lat ? kc : r->vc[(size_t)l * r->B + s];
        const float *qi = qb + (i - i0) * qw;
        float *ai = ab + (i - i0) * qw;
        if (r->kvt == EPM_KV_FP8)
            st = r->ops->attention_w8(qi, 1, &ci, epm_kv_codes(r, kv_rows(r, s), kc), epm_kv_scales(r, kc),
                                      epm_kv_codes(r, kv_rows(r, s), vc), epm_kv_scales(r, vc), r->max_len, nh, kvh, hd,
                                      ai, probs);
        else if (r->kvt == EPM_KV_BF16)
            st = r->ops->attention_w16(qi, 1, &ci, kc, vc, r->max_len, nh, kvh, hd, ai, probs);
        else
            st = r->ops->attention(qi, 1, &ci, kc, vc, r->max_len, nh, kvh, hd, ai, probs);
        if (st != EPM_OK)
            goto out;
        if (amod)
            epm_mod_attention_add(r, s, ci, probs);
    }
    if (amod)
        EPM_CHECK_GOTO(epm_mod_attention_done(r), st, out);
    /* o_proj's input: each head's value (v_head_dim under MLA), row by row */
    const float *oin = att;
    const int vd = c->mla ? nh * c->v_head_dim : qd;
    if (c->mla)
        epm_mla_compact(c, att, nx);
    if (na) {
        memcpy(vout, att, (size_t)nx * vd * sizeof *vout);
        EPM_CHECK_GOTO(epm_mla_latent_out(r, w, atta, na, vout + (size_t)nx * vd), st, out);
        oin = vout;
    }
    EPM_CHECK_GOTO(epm_rt_lin(r, oin, n, vd, w->o, w->o_bias, H, o), st, out);
    for (int64_t i = 0; i < n * H; i++)
        h[i] += o[i];
    r->rep->t_attention += epm_now() - t0;
out:
    epm_free(x);
    epm_free(q);
    epm_free(kv);
    epm_free(att);
    epm_free(o);
    epm_free(k);
    epm_free(v);
    epm_free(vout);
    epm_free(pos);
    epm_free(all);
    epm_free(probs);
    epm_free(kvw);
    return st;
}

/* A layer's attention for the pass's resident tokens (g, h). Under MLA's
 * latent a mixed pass's prompt rows attend expanded and its decode rows
 * absorbed: the prompt rows go first (the pass is the same everywhere, so
 * every rank splits alike). */
epm_status epm_rt_attention(rt *r, int l, int64_t n, const int64_t *g, float *h)
{
    const int64_t npre = r->pf_n, ndec = r->pn - r->pf_n;
    if (!r->latent || npre == 0 || ndec == 0)
        return attend(r, l, n, g, h, r->latent && npre == 0 ? 0 : n);
    /* A-MoD sums its attention scores once per layer (epm_mod_attention_done); its prompts get passes
     * of their own (one pass of the whole batch), so two halves never meet it */
    if (r->amod_need && r->amod_need[l])
        return epm_fail(EPM_ERR_INTERNAL, "MoD attention scores in a mixed pass (layer %d)", l);
    const int H = r->c->hidden_size;
    int64_t *gs = epm_malloc((size_t)(n ? n : 1) * sizeof *gs), *at = epm_malloc((size_t)(n ? n : 1) * sizeof *at);
    float *hs = epm_malloc((size_t)(n ? n : 1) * H * sizeof *hs);
    epm_status st = gs && at && hs ? EPM_OK : EPM_ERR_NOMEM;
    int64_t k = 0, np = 0; /* rows gathered; the prompt rows among them, first */
    for (int dec = 0; dec < 2 && st == EPM_OK; dec++) { /* prompt rows, then decode rows */
        for (int64_t i = 0; i < n; i++)
            if ((g[i] >= r->N) == dec) {
                gs[k] = g[i];
                at[k] = i;
                memcpy(hs + k++ * H, h + i * H, (size_t)H * sizeof *hs);
            }
        if (!dec)
            np = k;
    }
    /* a failure meets the others at their next agreement, whichever it is (see forward) */
    if (st == EPM_OK)
        st = attend(r, l, k, gs, hs, np);
    for (int64_t j = 0; j < k && st == EPM_OK; j++)
        memcpy(h + at[j] * H, hs + j * H, (size_t)H * sizeof *hs);
    epm_free(gs);
    epm_free(at);
    epm_free(hs);
    return st;
}
