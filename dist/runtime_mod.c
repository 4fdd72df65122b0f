/* Mixture-of-Depths in the layer loop: per MoD layer, which tokens of the
 * pass run the block (attention + MoE) and which pass through on the
 * residual stream. A skipped token is not a query, writes no K/V row at that
 * layer and is not dispatched, so it costs neither compute nor traffic.
 *
 * The KV cache rule: each sequence's cache at layer l holds the rows of the
 * tokens that ran layer l, compacted in position order (RoPE is applied with
 * the true positions before caching, so relative positions stay right). A
 * token that skipped layer l is never a key there, for itself or for any
 * later token: the same rule in prefill and in decoding, and on every rank.
 *
 * Scores (higher runs first):
 *  - router: w_l . h, w_l the checkpoint's model.layers.{l}.mod_router.weight
 *    and h the block's input residual stream (Raposo et al.);
 *  - attention (A-MoD, Gadhikar et al.): token j's score at layer l is
 *      a_j = 1 / (heads * |Q_j|) * sum_{h} sum_{i in Q_j} n_i A_h[i, j]
 *    over the most recent earlier layer where j ran attention, Q_j the
 *    queries of j's own forward pass that attended j there (j itself and
 *    the later tokens of its sequence that ran that layer), A_h the softmax
 *    attention of head h and n_i the number of keys query i saw. The factor
 *    n_i measures attention against the uniform share 1/n_i: without it a
 *    causal model's scores fall with position (a query spreads one unit of
 *    attention over more keys), and decoding, which sees only late tokens,
 *    would skip everything. In decoding Q_j = {j}, so the decode-time score
 *    is n_j A[j, j], the attention j pays itself; prefill calibrates its
 *    threshold on that same self term of every prompt token;
 *  - schedule: token at position p runs MoD layer l iff
 *    floor((p + l + 1) c) > floor((p + l) c), c the capacity: a density-c
 *    comb staggered by layer, with no scores at all.
 * Selection: in prefill the top ceil(c * len) tokens of each sequence (ties
 * to the earlier position); in decoding a token runs iff its score reaches
 * the layer's threshold, the (ceil(c * N))-th largest decode-time score of
 * the N prompt tokens, so that decoding skips at the rate prefill did.
 * Capacity 1 runs everything. Scores travel between ranks (a token's
 * sequence may be spread over ranks in follow mode) as 16-byte rows that the
 * traffic counters, which count expert traffic, leave out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime_internal.h"

/* fixed point for the attention sums: integer addition is associative, so
 * the scores do not depend on how the queries are spread over ranks */
#define AMOD_ONE 16777216.0 /* 2^24 */

static epm_status parse_layers(rt *r, const char *spec)
{
    const int L = r->c->num_layers;
    if (!spec) {
        for (int l = 1; l < L; l++)
            r->mod_on[l] = 1;
        return EPM_OK;
    }
    const char *p = spec;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p)
            return epm_fail(EPM_ERR_INVALID_ARG, "--mod-layers '%s': expected layer numbers like 1-5,7 at '%s'",
                            spec, p);
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1)
                return epm_fail(EPM_ERR_INVALID_ARG, "--mod-layers '%s': a range needs an end at '%s'", spec, p);
            p = end;
        }
        if (a < 0 || b >= L || a > b)
            return epm_fail(EPM_ERR_INVALID_ARG, "--mod-layers '%s': %ld-%ld is not within the model's layers 0-%d",
                            spec, a, b, L - 1);
        for (long l = a; l <= b; l++)
            r->mod_on[l] = 1;
        if (*p == ',')
            p++;
        else if (*p)
            return epm_fail(EPM_ERR_INVALID_ARG, "--mod-layers '%s': unexpected '%c'", spec, *p);
    }
    return EPM_OK;
}

epm_status epm_mod_setup(rt *r)
{
    const epm_run_opts *o = r->o;
    const int L = r->c->num_layers;
    int64_t P = (int64_t)r->N + r->B; /* the largest pass: prompt tokens and a decode token each */
    r->kv_n = epm_calloc((size_t)L * r->B, sizeof *r->kv_n);
    r->kv_base = epm_calloc((size_t)r->B, sizeof *r->kv_base);
    r->sel_first = epm_calloc((size_t)r->B, sizeof *r->sel_first);
    r->sel = epm_calloc((size_t)P, sizeof *r->sel);
    r->cidx = epm_calloc((size_t)P, sizeof *r->cidx);
    r->sel_list = epm_calloc((size_t)P, sizeof *r->sel_list);
    r->mod_on = epm_calloc((size_t)L, 1);
    r->layer_tokens = epm_calloc((size_t)L, sizeof *r->layer_tokens);
    if (!r->kv_n || !r->kv_base || !r->sel_first || !r->sel || !r->cidx || !r->sel_list || !r->mod_on ||
        !r->layer_tokens)
        return EPM_ERR_NOMEM;
    if (o->mod == EPM_MOD_OFF)
        return EPM_OK;
    if ((unsigned)o->mod > EPM_MOD_SCHEDULE)
        return epm_fail(EPM_ERR_INVALID_ARG, "--mod: unknown source %d", (int)o->mod);
    if (!(o->mod_capacity >= 0 && o->mod_capacity <= 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "--mod-capacity %g: must be in (0, 1]", o->mod_capacity);
    EPM_CHECK(parse_layers(r, o->mod_layers));
    if (o->mod == EPM_MOD_ATTENTION && r->mod_on[0])
        return epm_fail(EPM_ERR_INVALID_ARG, "--mod attention: layer 0 has no earlier attention map to take scores "
                        "from; leave it out of --mod-layers");
    for (int l = 0; l < L && o->mod == EPM_MOD_ROUTER; l++)
        if (r->mod_on[l] && !r->dense->layer[l].mod_router)
            return epm_fail(EPM_ERR_FORMAT, "--mod router: %s has no tensor model.layers.%d.mod_router.weight "
                            "([1, hidden]) for MoD layer %d", o->model_dir, l, l);
    r->tau = epm_calloc((size_t)L, sizeof *r->tau);
    r->sc_tmp = epm_calloc((size_t)2 * P, sizeof *r->sc_tmp);
    if (!r->tau || !r->sc_tmp)
        return EPM_ERR_NOMEM;
    if (o->mod == EPM_MOD_ATTENTION) {
        int last = -1;
        for (int l = 0; l < L; l++)
            if (r->mod_on[l])
                last = l;
        r->amod_need = epm_calloc((size_t)L, 1);
        r->sc_att = epm_calloc((size_t)r->total, sizeof *r->sc_att);
        r->sc_diag = epm_calloc((size_t)r->total, sizeof *r->sc_diag);
        r->acc = epm_calloc((size_t)3 * P, sizeof *r->acc);
        if (!r->amod_need || !r->sc_att || !r->sc_diag || !r->acc)
            return EPM_ERR_NOMEM;
        for (int l = 0; l < last; l++)
            r->amod_need[l] = 1;
    }
    return EPM_OK;
}

void epm_mod_teardown(rt *r)
{
    epm_free(r->kv_n);
    epm_free(r->kv_base);
    epm_free(r->sel_first);
    epm_free(r->sel);
    epm_free(r->cidx);
    epm_free(r->sel_list);
    epm_free(r->mod_on);
    epm_free(r->layer_tokens);
    epm_free(r->tau);
    epm_free(r->sc_tmp);
    epm_free(r->amod_need);
    epm_free(r->sc_att);
    epm_free(r->sc_diag);
    epm_free(r->acc);
}

static double capacity(const rt *r) { return r->o->mod_capacity > 0 ? r->o->mod_capacity : 1.0; }

static const float *sort_key; /* qsort has no context argument; the loop is single-threaded */

/* descending score, then ascending index */
static int by_score(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_key[i] != sort_key[j])
        return sort_key[i] > sort_key[j] ? -1 : 1;
    return (i > j) - (i < j);
}

/* Every pass token's scores on every rank: [0, P) the selection score,
 * [P, 2P) the decode-time score. */
static epm_status gather_scores(rt *r, int l, int64_t n, const int64_t *g, const float *h)
{
    const int H = r->c->hidden_size;
    const int64_t P = r->pn;
    float *rows = epm_malloc((size_t)(n ? n : 1) * 4 * sizeof *rows), *all = NULL;
    if (!rows)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        float s, d;
        if (r->o->mod == EPM_MOD_ROUTER) {
            double acc = 0;
            const float *w = r->dense->layer[l].mod_router;
            for (int j = 0; j < H; j++)
                acc += (double)w[j] * h[i * H + j];
            s = d = (float)acc;
        } else {
            s = (float)r->sc_att[g[i]];
            d = (float)r->sc_diag[g[i]];
        }
        put_g(rows + 4 * i, g[i]);
        rows[4 * i + 2] = s;
        rows[4 * i + 3] = d;
    }
    int64_t na = 0;
    epm_status st = epm_rt_ready(r, EPM_OK);
    epm_xcomm_wire w0, w1;
    epm_xcomm_wire_get(r->x, &w0);
    if (st == EPM_OK)
        st = epm_xcomm_allgather(r->x, n, rows, 4, 2, r->mod_local, &all, &na);
    epm_xcomm_wire_get(r->x, &w1);
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        r->aside_msgs[1][c] += w1.msgs[c] - w0.msgs[c];
    epm_free(rows);
    if (st != EPM_OK)
        return st;
    if (na != r->pass_n) {
        epm_free(all);
        return epm_fail(EPM_ERR_INTERNAL, "MoD: %lld tokens resident on all ranks, the pass has %lld", (long long)na,
                        (long long)r->pass_n);
    }
    for (int64_t i = 0; i < na; i++) {
        int64_t t = pass_t(r, get_g(all + 4 * i));
        r->sc_tmp[t] = all[4 * i + 2];
        r->sc_tmp[P + t] = all[4 * i + 3];
    }
    epm_free(all);
    return EPM_OK;
}

static epm_status select_scored(rt *r, int l)
{
    const int64_t P = r->pn;
    const double c = capacity(r);
    if (!r->prefill) {
        for (int64_t t = 0; t < P; t++)
            r->sel[t] = r->sc_tmp[P + t] >= r->tau[l];
        return EPM_OK;
    }
    if (r->pf_n != P) /* the scheduler gives scored sources whole prompts, in one pass of their own */
        return epm_fail(EPM_ERR_INTERNAL, "MoD: a pass of %lld prompt and %lld decode tokens", (long long)r->pf_n,
                        (long long)(P - r->pf_n));
    int32_t *idx = epm_malloc((size_t)P * sizeof *idx);
    if (!idx)
        return EPM_ERR_NOMEM;
    /* top ceil(c * len) of each sequence (a prefill pass holds whole prompts, in order) */
    sort_key = r->sc_tmp;
    memset(r->sel, 0, (size_t)P);
    for (int i = 0; i < r->nadm; i++) {
        const int s = r->adm[i];
        int len = r->lens[s], keep = (int)ceil(c * len - 1e-9);
        keep = keep < 1 ? 1 : keep;
        for (int p = 0; p < len; p++)
            idx[p] = (int32_t)pass_t(r, r->offset[s] + p);
        qsort(idx, (size_t)len, sizeof *idx, by_score);
        for (int q = 0; q < keep; q++)
            r->sel[idx[q]] = 1;
    }
    /* the decode threshold: the same rate over the prompt tokens' decode-time scores */
    for (int64_t t = 0; t < P; t++)
        idx[t] = (int32_t)t;
    sort_key = r->sc_tmp + P;
    qsort(idx, (size_t)P, sizeof *idx, by_score);
    int64_t kth = (int64_t)ceil(c * (double)P - 1e-9);
    kth = kth < 1 ? 1 : kth;
    r->tau[l] = r->sc_tmp[P + idx[kth - 1]];
    sort_key = NULL;
    epm_free(idx);
    return EPM_OK;
}

epm_status epm_mod_select(rt *r, int l, int64_t n, const int64_t *g, const float *h, int *all)
{
    const int64_t P = r->pn;
    const double c = capacity(r);
    *all = 1;
    const int ml = r->moe_index[l];
    const int replay = r->o->route_from && ml >= 0; /* (the trace decides, below: MoD's selection is not made) */
    if (r->mod_on[l] && c < 1 && !replay) {
        *all = 0;
        if (r->o->mod == EPM_MOD_SCHEDULE) {
            for (int64_t t = 0; t < P; t++) {
                int p = pos_of(r, pass_g(r, t));
                r->sel[t] = floor((p + l + 1) * c) > floor((p + l) * c);
            }
        } else {
            EPM_CHECK(gather_scores(r, l, n, g, h));
            EPM_CHECK(select_scored(r, l));
        }
    } else {
        memset(r->sel, 1, (size_t)P);
    }
    /* a routing replay runs what its trace ran and skips where it skipped (a row that starts with -1:
     * DESIGN.md's skip, as a MoD run records it and plan eval reads it), block and all: no attention,
     * K/V row or dispatch. With MoD on too, the trace decides, not MoD's selection: plan eval of the
     * trace counts the trace's */
    if (replay) {
        const int K = epm_trace_k(r->o->route_from);
        const int32_t *ids = epm_trace_ids_const(r->o->route_from, ml);
        for (int64_t t = 0; t < P; t++)
            r->sel[t] = ids[pass_g(r, t) * K] >= 0;
    }
    /* only the pass's prompt tokens: its pieces' (its decode tokens are all its own) */
    for (int64_t t = 0; t < r->pf_n; t++)
        r->sel[t] &= r->pass_of[r->g0 + t] == r->chunk;
    for (int64_t t = 0; t < P && replay && *all; t++) /* (a skipped row of the pass: not all run) */
        *all = r->sel[t] || (t < r->pf_n && r->pass_of[r->g0 + t] != r->chunk);
    /* cache rows: each sequence's selected tokens, in order, after its rows so far */
    int32_t *kv = r->kv_n + (size_t)l * r->B;
    memcpy(r->kv_base, kv, (size_t)r->B * sizeof *kv);
    for (int s = 0; s < r->B; s++)
        r->sel_first[s] = -1;
    int64_t ns = 0;
    for (int64_t t = 0; t < P; t++) {
        r->cidx[t] = -1;
        if (!r->sel[t])
            continue;
        int s = seq_of(r, pass_g(r, t));
        if (r->sel_first[s] < 0)
            r->sel_first[s] = (int32_t)ns;
        r->sel_list[ns++] = (int32_t)t;
        r->cidx[t] = kv[s]++;
    }
    r->layer_tokens[l] += (int64_t)ns * (r->me == 0); /* the pass is global: count it once */
    if (r->amod_need && r->amod_need[l])
        memset(r->acc, 0, (size_t)3 * P * sizeof *r->acc);
    return EPM_OK;
}

void epm_mod_attention_add(rt *r, int s, int ci, const float *probs)
{
    const int64_t P = r->pn;
    const int heads = r->c->num_heads;
    int base = r->kv_base[s];
    for (int row = base; row <= ci; row++) {
        double sum = 0;
        for (int hh = 0; hh < heads; hh++)
            sum += probs[(size_t)hh * r->max_len + row];
        int64_t t = r->sel_list[r->sel_first[s] + (row - base)];
        int64_t fx = llround(sum * (ci + 1) * AMOD_ONE); /* relative to uniform attention over ci + 1 keys */
        r->acc[t] += fx;
        if (row == ci)
            r->acc[P + t] += fx;
        r->acc[2 * P + t]++;
    }
}

epm_status epm_mod_attention_done(rt *r)
{
    const int64_t P = r->pn;
    EPM_CHECK(epm_rt_sync(r, EPM_OK));
    EPM_CHECK(epm_xcomm_sum_i64(r->x, r->acc, (int)(3 * P)));
    const double heads = r->c->num_heads;
    for (int64_t t = 0; t < P; t++) {
        if (!r->sel[t] || r->acc[2 * P + t] == 0)
            continue;
        r->sc_att[pass_g(r, t)] = (double)r->acc[t] / (AMOD_ONE * heads * (double)r->acc[2 * P + t]);
        r->sc_diag[pass_g(r, t)] = (double)r->acc[P + t] / (AMOD_ONE * heads);
    }
    return EPM_OK;
}
