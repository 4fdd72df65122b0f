/* The layer loop's FFN block: gate, dispatch, the local experts in one
 * grouped call and combine, for a MoE layer (home or follow mode); a dense
 * layer's MLP; shared experts; and a MoD layer's block for the tokens it
 * selected, the others waiting on the residual stream. */
#include <math.h>
#include <string.h>

#include "runtime_internal.h"

static epm_status record_trace(rt *r, int ml, int64_t g, const int32_t *ids)
{
    const int K = r->c->top_k, W = 2 + K;
    if (r->n_rec == r->cap_rec) {
        int64_t cap = r->cap_rec ? 2 * r->cap_rec : 1024;
        int32_t *n = epm_realloc(r->trace_rec, (size_t)cap * (size_t)W * sizeof *n);
        if (!n)
            return EPM_ERR_NOMEM;
        r->trace_rec = n;
        r->cap_rec = cap;
    }
    int32_t *rec = r->trace_rec + r->n_rec++ * W;
    rec[0] = ml;
    rec[1] = (int32_t)g;
    memcpy(rec + 2, ids, (size_t)K * sizeof *ids);
    return EPM_OK;
}

/* An FP8 MLP's three matrices as the kernels take them. */
static void mlp_w8(const epm_model_mlp *w, epm_w8 *gate, epm_w8 *up, epm_w8 *down)
{
    *gate = (epm_w8){w->gate, w->scale[0], w->block[0], w->block[1]};
    *up = (epm_w8){w->up, w->scale[1], w->block[0], w->block[1]};
    *down = (epm_w8){w->down, w->scale[2], w->block[0], w->block[1]};
}

/* The FFN scratch kept from layer to layer (runtime_internal.h says why),
 * grown to hold `floats`; NULL when it cannot grow. */
static float *ffn_scratch(rt *r, int64_t floats)
{
    floats = floats ? floats : 1;
    if (floats > r->ffn_scr_n) {
        epm_free(r->ffn_scr);
        r->ffn_scr = epm_malloc((size_t)floats * sizeof *r->ffn_scr);
        r->ffn_scr_n = r->ffn_scr ? floats : 0;
    }
    return r->ffn_scr;
}

/* A shared expert or dense MLP (one expert of n rows). */
static epm_status mlp(rt *r, const epm_model_mlp *w, const float *x, int64_t n, float *y)
{
    const int H = r->c->hidden_size;
    const int64_t off[2] = {0, n};
    float *scr = ffn_scratch(r, scratch_floats(w->dtype, off, 1, H, w->ffn));
    if (!scr)
        return EPM_ERR_NOMEM;
    if (w->dtype == EPM_DTYPE_F8_E4M3) {
        epm_w8 g, u, d;
        mlp_w8(w, &g, &u, &d);
        return r->ops->grouped_swiglu_w8(x, off, 1, H, w->ffn, &g, &u, &d, scr, y);
    }
    if (w->dtype == EPM_DTYPE_BF16) {
        const uint16_t *g = w->gate, *u = w->up, *d = w->down;
        return r->ops->grouped_swiglu_w16(x, off, 1, H, w->ffn, &g, &u, &d, scr, y);
    }
    r->ops->swiglu(x, n, H, w->ffn, w->gate, w->up, w->down, scr, y);
    return EPM_OK;
}

/* Link cost from rank src to the nearest replica of expert e (TA-MoE's bias). */
static double nearest_cost(const rt *r, int ml, int e, int src)
{
    const int *reps;
    int n = epm_placement_replicas(r->p, ml, e, &reps);
    const epm_cluster *cl = epm_placement_cluster(r->p);
    double best = 1e300;
    for (int q = 0; q < n; q++) {
        double v = epm_cluster_link_cost(cl, epm_cluster_link(cl, src, reps[q]));
        best = v < best ? v : best;
    }
    return best;
}

/* Whether expert e's nearest replica from this rank is on another node. */
static int off_node(const rt *r, int ml, int e) { return nearest_cost(r, ml, e, r->me) > 1.0; }

/* node_only: TA-MoE's cap on the share of tokens leaving the node is
 * reached for this layer, so only experts with a replica on this node may
 * be chosen (when there are k of them). scr: [4 * experts] floats.
 *
 * Scores: the softmax of the router's logits, or DeepSeek-V3's sigmoid of
 * each logit. The choice is made on the scores (softmax: their logs, when
 * TA-MoE biases them), V3's plus e_score_correction_bias; TA-MoE's bias and
 * node mask come before DeepSeek's group limit, so that groups are ranked
 * on what TA-MoE made of their experts. The weights are always the scores
 * of the chosen. */
static void gate(rt *r, const epm_model_layer *w, int ml, const float *x2, int64_t g, int32_t *ids, float *wts,
                 float *scr, int node_only)
{
    const epm_model_config *c = r->c;
    int E = c->num_experts, K = c->top_k, sig = c->router_sigmoid;
    float *probs = scr, *choice = scr + E, *masked = scr + 2 * E, *gs = scr + 3 * E;
    r->ref->linear(x2, 1, c->hidden_size, w->router, NULL, E, probs);
    if (sig) {
        for (int e = 0; e < E; e++) {
            probs[e] = epm_sigmoid(probs[e]);
            choice[e] = probs[e] + (w->router_bias ? w->router_bias[e] : 0.0f);
        }
    } else {
        epm_softmax(probs, E);
        memcpy(choice, probs, (size_t)E * sizeof *choice);
    }
    int ta = !r->o->route_from && (r->o->ta_strength > 0 || r->o->top_p > 0 || node_only);
    for (int e = 0; e < E && ta; e++) {
        if (!sig)
            choice[e] = logf(probs[e] > 1e-30f ? probs[e] : 1e-30f);
        if (r->o->ta_strength > 0)
            choice[e] -= (float)(r->o->ta_strength * nearest_cost(r, ml, e, r->me));
    }
    float *sel = choice;
    if (ta && node_only) { /* the node's experts, when k of them survive the group limit */
        int left = 0;
        for (int e = 0; e < E; e++)
            masked[e] = off_node(r, ml, e) ? -INFINITY : choice[e];
        if (c->n_group > 1)
            epm_group_limit(masked, E, c->n_group, c->topk_group, c->group_max, gs);
        for (int e = 0; e < E; e++)
            left += masked[e] > -INFINITY;
        sel = left >= K ? masked : choice;
    }
    if (sel == choice && c->n_group > 1)
        epm_group_limit(choice, E, c->n_group, c->topk_group, c->group_max, gs);
    if (ta) {
        epm_topk(sel, E, K, ids, wts);
        double mass = 0; /* top-p: softmax routers only (setup refuses the others) */
        for (int j = 0; j < K; j++) {
            if (r->o->top_p > 0 && j > 0 && mass >= r->o->top_p) {
                ids[j] = -1;
                wts[j] = 0;
                continue;
            }
            wts[j] = probs[ids[j]];
            mass += wts[j];
        }
    } else if (r->o->route_from) {
        const int32_t *row = epm_trace_ids_const(r->o->route_from, ml) +
                             g * epm_trace_k(r->o->route_from);
        for (int j = 0; j < K; j++) {
            ids[j] = row[j];
            wts[j] = row[j] >= 0 ? probs[row[j]] : 0.0f;
        }
    } else {
        epm_topk(choice, E, K, ids, wts);
        for (int j = 0; j < K; j++)
            wts[j] = probs[ids[j]];
    }
    if (c->norm_topk_prob) {
        double s = c->mla ? 1e-20 : 0; /* DeepSeek's denominator */
        for (int j = 0; j < K; j++)
            s += wts[j];
        for (int j = 0; j < K && s > 0; j++)
            wts[j] = (float)(wts[j] / s);
    }
    for (int j = 0; j < K && c->routed_scaling != 1.0f; j++)
        wts[j] *= c->routed_scaling;
}

static epm_status shared_expert(rt *r, const epm_model_layer *w, const float *x2, int64_t n, float *h, float *y)
{
    const epm_model_config *c = r->c;
    if (!w->shared.gate || n == 0)
        return EPM_OK;
    EPM_CHECK(mlp(r, &w->shared, x2, n, y));
    for (int64_t i = 0; i < n; i++) {
        float gl = 0, sg = 1; /* DeepSeek-V3's shared experts have no gate */
        if (w->shared_gate) {
            r->ref->linear(x2 + i * c->hidden_size, 1, c->hidden_size, w->shared_gate, NULL, 1, &gl);
            sg = epm_sigmoid(gl);
        }
        for (int j = 0; j < c->hidden_size; j++)
            h[i * c->hidden_size + j] += sg * y[i * c->hidden_size + j];
    }
    return EPM_OK;
}

/* One MoE (or dense MLP) block over the resident tokens (g, h). In follow mode
 * the resident set changes: *pn, *pg, *ph are replaced. */
epm_status epm_rt_moe_block(rt *r, int l, int64_t *pn, int64_t **pg, float **ph)
{
    const epm_model_config *c = r->c;
    const epm_model_layer *w = &r->dense->layer[l];
    const int H = c->hidden_size, K = c->top_k, E = c->num_experts, ml = r->moe_index[l];
    int64_t n = *pn;
    int64_t *g = *pg;
    float *h = *ph;
    epm_status st = EPM_OK;
    float *x2 = epm_malloc((size_t)(n ? n : 1) * H * sizeof *x2);
    if (!x2)
        return EPM_ERR_NOMEM;
    /* a bf16 wire in follow mode: the residual streams travel with their
     * tokens, so every token's is rounded, whether it moves or not */
    if (ml >= 0 && r->o->mode == EPM_MODE_FOLLOW)
        epm_wire_round(r, h, n * H);
    r->ref->rmsnorm(h, n, H, w->post_attn_norm, c->rms_norm_eps, x2);
    if (ml < 0) { /* dense MLP layer: no experts, no traffic */
        float *y = epm_malloc((size_t)(n ? n : 1) * H * sizeof *y);
        st = y ? mlp(r, &w->mlp, x2, n, y) : EPM_ERR_NOMEM;
        for (int64_t i = 0; st == EPM_OK && i < n * H; i++)
            h[i] += y[i];
        epm_free(y);
        epm_free(x2);
        return st;
    }
    /* a dispatch row: g, the residual stream (P floats: the wire's dtype;
     * fp8: the expert input instead), then the token's K expert ids and K
     * weights */
    const int P = epm_wire_dispatch_floats(r, H), W = 2 + P + 2 * K;
    float *rows = epm_malloc((size_t)(n ? n : 1) * (K + 1) * W * sizeof *rows);
    int *dest = epm_malloc((size_t)(n ? n : 1) * (K + 1) * sizeof *dest);
    uint64_t *keys = epm_malloc((size_t)(n ? n : 1) * sizeof *keys); /* (the hierarchical path's: hier_route.h) */
    float *probs = epm_malloc((size_t)4 * E * sizeof *probs); /* gate's scratch */
    int32_t *ids = epm_malloc((size_t)(n ? n : 1) * K * sizeof *ids);
    float *wts = epm_malloc((size_t)(n ? n : 1) * K * sizeof *wts);
    int *dst = epm_malloc((size_t)K * sizeof *dst);
    float *recv = NULL, *part = NULL, *precv = NULL, *xin = NULL, *y = NULL, *scr = NULL, *sx = NULL;
    int *rsrc = NULL, *psrc = NULL, *pdest = NULL, *elist = NULL, *ecount = NULL;
    float *prow = NULL;
    int64_t nrecv = 0, npr = 0;
    int64_t *ng = NULL;
    float *nh = NULL;
    if (!rows || !dest || !keys || !probs || !ids || !wts || !dst) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    /* gate, then one dispatch row per token with the distinct ranks other than
     * mine that hold its experts: the exchange delivers it to each (once per
     * remote node on the hierarchical path, fanned out there) */
    double t0 = epm_now();
    int64_t nsend = 0;
    /* TA-MoE's target dispatch distribution, as a cap: at most
     * floor(cap * n) of this rank's tokens of the layer may leave the node */
    int64_t left = 0, may_leave = r->o->ta_node_cap_on ? (int64_t)floor(r->o->ta_node_cap * (double)n) : n;
    for (int64_t i = 0; i < n; i++) {
        gate(r, w, ml, x2 + i * H, g[i], ids + i * K, wts + i * K, probs, !r->o->route_from && left >= may_leave);
        for (int j = 0; j < K && r->eplb_counting; j++)
            if (ids[i * K + j] >= 0) /* (a skipped token chose none) */
                r->eplb_load[(size_t)ml * E + ids[i * K + j]]++;
        int leaves = 0;
        for (int j = 0; j < K; j++)
            leaves |= ids[i * K + j] >= 0 && off_node(r, ml, ids[i * K + j]);
        left += leaves;
        EPM_CHECK_GOTO(record_trace(r, ml, g[i], ids + i * K), st, out);
    }
    r->rep->t_gate += epm_now() - t0;
    t0 = epm_now();
    for (int64_t i = 0; i < n; i++) {
        if (ids[i * K] < 0)
            continue;
        epm_route_pick(r->p, ml, ids + i * K, K, r->me, (uint64_t)g[i], dst);
        int nd = 0;
        for (int j = 0; j < K; j++) {
            int d = dst[j], seen = d < 0 || d == r->me;
            for (int q = 0; q < j && !seen; q++)
                seen = dst[q] == d;
            if (!seen)
                dest[nsend * K + nd++] = d;
        }
        if (nd == 0)
            continue;
        for (int j = nd; j < K; j++)
            dest[nsend * K + j] = -1;
        float *row = rows + nsend * W;
        keys[nsend] = (uint64_t)g[i];
        put_g(row, g[i]);
        epm_wire_dispatch_put(r, row + 2, H, h + i * H, x2 + i * H);
        for (int q = 0; q < K; q++) {
            row[2 + P + q] = (float)ids[i * K + q];
            row[2 + P + K + q] = wts[i * K + q];
        }
        nsend++;
    }
    int64_t *cnt = r->bytes_local + (size_t)ml * EPM_LINK_COUNT, sent[EPM_LINK_COUNT] = {0};
    EPM_CHECK_GOTO(epm_rt_ready(r, EPM_OK), st, out);
    EPM_CHECK_GOTO(epm_xcomm_exchange_multi(r->x, nsend, K, dest, keys, rows, W, P, sent, &recv, &rsrc, &nrecv), st, out);
    epm_wire_count(P, epm_wire_dispatch_bytes(r, H), sent, cnt);
    r->rep->t_dispatch += epm_now() - t0;

    /* the work of this rank: my own tokens with an expert here, then received rows */
    t0 = epm_now();
    int64_t nw = 0;
    int64_t cap = n + nrecv;
    float *wrows = epm_malloc((size_t)(cap ? cap : 1) * W * sizeof *wrows);
    int *wsrc = epm_malloc((size_t)(cap ? cap : 1) * sizeof *wsrc);
    xin = epm_malloc((size_t)(cap ? cap : 1) * H * sizeof *xin);
    part = epm_calloc((size_t)(cap ? cap : 1) * H, sizeof *part);
    elist = epm_malloc((size_t)(cap ? cap : 1) * K * 2 * sizeof *elist);
    ecount = epm_calloc((size_t)E + 1, sizeof *ecount);
    if (!wrows || !wsrc || !xin || !part || !elist || !ecount) {
        epm_free(wrows);
        epm_free(wsrc);
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        if (ids[i * K] < 0)
            continue;
        epm_route_pick(r->p, ml, ids + i * K, K, r->me, (uint64_t)g[i], dst);
        int here = 0;
        for (int j = 0; j < K; j++)
            here |= dst[j] == r->me;
        if (!here)
            continue;
        float *row = wrows + nw * W;
        put_g(row, g[i]);
        epm_wire_dispatch_put(r, row + 2, H, h + i * H, x2 + i * H);
        for (int q = 0; q < K; q++) {
            row[2 + P + q] = (float)ids[i * K + q];
            row[2 + P + K + q] = wts[i * K + q];
        }
        /* with a bf16 or fp8 wire, my own tokens' experts see what a
         * remote expert would: the rounded state, normalised */
        if (r->wire16) {
            epm_wire_dispatch_input(r, row + 2, H, w->post_attn_norm, xin + nw * H);
        } else {
            memcpy(xin + nw * H, x2 + i * H, (size_t)H * sizeof *xin);
        }
        wsrc[nw++] = r->me;
    }
    int64_t nlocal = nw;
    memcpy(wrows + nw * W, recv, (size_t)nrecv * W * sizeof *wrows);
    memcpy(wsrc + nw, rsrc, (size_t)nrecv * sizeof *wsrc);
    for (int64_t i = 0; i < nrecv; i++) {
        epm_wire_dispatch_input(r, recv + i * W + 2, H, w->post_attn_norm, xin + (nw + i) * H);
    }
    nw += nrecv;
    /* group (row, slot) pairs by local expert, stable */
    int64_t npairs = 0;
    int32_t rid[64];
    for (int64_t i = 0; i < nw; i++) {
        const float *row = wrows + i * W;
        for (int q = 0; q < K; q++)
            rid[q] = (int32_t)row[2 + P + q];
        epm_route_pick(r->p, ml, rid, K, wsrc[i], (uint64_t)get_g(row), dst);
        for (int q = 0; q < K; q++)
            if (dst[q] == r->me) {
                ecount[rid[q] + 1]++;
                npairs++;
            }
    }
    for (int e = 0; e < E; e++)
        ecount[e + 1] += ecount[e];
    {
        int64_t *fill = epm_calloc((size_t)E, sizeof *fill);
        if (!fill) {
            epm_free(wrows);
            epm_free(wsrc);
            st = EPM_ERR_NOMEM;
            goto out;
        }
        for (int64_t i = 0; i < nw; i++) {
            const float *row = wrows + i * W;
            for (int q = 0; q < K; q++)
                rid[q] = (int32_t)row[2 + P + q];
            epm_route_pick(r->p, ml, rid, K, wsrc[i], (uint64_t)get_g(row), dst);
            for (int q = 0; q < K; q++)
                if (dst[q] == r->me) {
                    int64_t at = ecount[rid[q]] + fill[rid[q]]++;
                    elist[2 * at] = (int)i;
                    elist[2 * at + 1] = q;
                }
        }
        epm_free(fill);
    }
    r->load_local[(size_t)ml * r->R + r->me] += npairs;
    /* all local experts in one grouped call: rows grouped by expert */
    int F = c->moe_ffn;
    int64_t *goff = epm_malloc(((size_t)E + 1) * sizeof *goff);
    /* the weight arrays in the type the experts are held in */
    const float **gw = epm_malloc(3 * (size_t)E * sizeof *gw);
    const uint16_t **gh = epm_malloc(3 * (size_t)E * sizeof *gh);
    epm_w8 *g8 = epm_malloc(3 * (size_t)E * sizeof *g8);
    sx = epm_malloc((size_t)(npairs ? npairs : 1) * H * sizeof *sx);
    y = epm_malloc((size_t)(npairs ? npairs : 1) * H * sizeof *y);
    if (!goff || !gw || !gh || !g8 || !sx || !y) {
        epm_free(goff);
        epm_free(gw);
        epm_free(gh);
        epm_free(g8);
        epm_free(wrows);
        epm_free(wsrc);
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int e = 0; e <= E; e++)
        goff[e] = ecount[e];
    for (int e = 0; e < E && st == EPM_OK; e++) {
        gw[e] = gw[E + e] = gw[2 * E + e] = NULL;
        gh[e] = gh[E + e] = gh[2 * E + e] = NULL;
        g8[e] = g8[E + e] = g8[2 * E + e] = (epm_w8){0};
        if (goff[e + 1] == goff[e])
            continue;
        const epm_model_mlp *ex = epm_model_expert(r->m, l, e);
        if (!ex || !ex->gate) {
            st = epm_fail(EPM_ERR_INTERNAL, "rank %d received tokens for expert %d of layer %d, not loaded here",
                          r->me, e, l);
            break;
        }
        if (ex->dtype != experts_dtype(r)) {
            st = epm_fail(EPM_ERR_INTERNAL, "expert %d of layer %d is held as %s, the run's experts as %s", e, l,
                          epm_dtype_name(ex->dtype), epm_dtype_name(experts_dtype(r)));
            break;
        }
        if (ex->dtype == EPM_DTYPE_F8_E4M3)
            mlp_w8(ex, &g8[e], &g8[E + e], &g8[2 * E + e]);
        else if (ex->dtype == EPM_DTYPE_BF16)
            gh[e] = ex->gate, gh[E + e] = ex->up, gh[2 * E + e] = ex->down;
        else
            gw[e] = ex->gate, gw[E + e] = ex->up, gw[2 * E + e] = ex->down;
    }
    if (st == EPM_OK &&
        !(scr = ffn_scratch(r, scratch_floats(experts_dtype(r), goff, E, H, F))))
        st = EPM_ERR_NOMEM;
    if (st == EPM_OK) {
        for (int64_t a = 0; a < npairs; a++)
            memcpy(sx + a * H, xin + (int64_t)elist[2 * a] * H, (size_t)H * sizeof *sx);
        if (r->w8)
            st = r->ops->grouped_swiglu_w8(sx, goff, E, H, F, g8, g8 + E, g8 + 2 * E, scr, y);
        else if (r->w16)
            st = r->ops->grouped_swiglu_w16(sx, goff, E, H, F, gh, gh + E, gh + 2 * E, scr, y);
        else
            r->ops->grouped_swiglu(sx, goff, E, H, F, gw, gw + E, gw + 2 * E, scr, y);
    }
    if (st != EPM_OK) {
        epm_free(goff);
        epm_free(gw);
        epm_free(gh);
        epm_free(g8);
        epm_free(wrows);
        epm_free(wsrc);
        goto out;
    }
    for (int64_t a = 0; a < npairs; a++) {
        int64_t i = elist[2 * a];
        float wt = wrows[i * W + 2 + P + K + elist[2 * a + 1]];
        for (int j = 0; j < H; j++)
            part[i * H + j] += wt * y[a * H + j];
    }
    epm_free(goff);
    epm_free(gw);
    epm_free(gh);
    epm_free(g8);
    r->rep->t_experts += epm_now() - t0;

    /* combine: partial sums travel to the token's combine rank */
    t0 = epm_now();
    const int PC = epm_wire_floats(r, H), PW = 2 + PC;
    prow = epm_malloc((size_t)(nw ? nw : 1) * PW * sizeof *prow);
    pdest = epm_malloc((size_t)(nw ? nw : 1) * sizeof *pdest);
    if (!prow || !pdest) {
        epm_free(wrows);
        epm_free(wsrc);
        st = EPM_ERR_NOMEM;
        goto out;
    }
    int64_t np = 0;
    for (int64_t i = 0; i < nw; i++) {
        const float *row = wrows + i * W;
        int comb = wsrc[i];
        if (r->o->mode == EPM_MODE_FOLLOW) {
            for (int q = 0; q < K; q++)
                rid[q] = (int32_t)row[2 + P + q];
            epm_route_pick(r->p, ml, rid, K, wsrc[i], (uint64_t)get_g(row), dst);
            comb = dst[0];
        }
        put_g(prow + np * PW, get_g(row));
        epm_wire_put(r, prow + np * PW + 2, H, part + i * H);
        pdest[np++] = comb;
    }
    EPM_CHECK_GOTO(epm_rt_ready(r, EPM_OK), st, out_w);
    memset(sent, 0, sizeof sent);
    EPM_CHECK_GOTO(epm_xcomm_exchange(r->x, np, pdest, prow, PW, PC, sent, &precv, &psrc, &npr), st, out_w);
    epm_wire_count(PC, epm_wire_bytes(r, H), sent, cnt);

    /* the tokens living here after this layer and their residual streams */
    int64_t nn = 0, capn = n + nw;
    ng = epm_malloc((size_t)(capn ? capn : 1) * sizeof *ng);
    nh = epm_malloc((size_t)(capn ? capn : 1) * H * sizeof *nh);
    if (!ng || !nh) {
        st = EPM_ERR_NOMEM;
        goto out_w;
    }
    for (int64_t i = 0; i < n; i++) {
        int stay = 1;
        if (r->o->mode == EPM_MODE_FOLLOW && ids[i * K] >= 0) {
            epm_route_pick(r->p, ml, ids + i * K, K, r->me, (uint64_t)g[i], dst);
            stay = dst[0] == r->me;
        }
        if (!stay)
            continue;
        ng[nn] = g[i];
        memcpy(nh + nn * H, h + i * H, (size_t)H * sizeof *nh);
        nn++;
    }
    if (r->o->mode == EPM_MODE_FOLLOW) {
        for (int64_t i = nlocal; i < nw; i++) {
            const float *row = wrows + i * W;
            for (int q = 0; q < K; q++)
                rid[q] = (int32_t)row[2 + P + q];
            epm_route_pick(r->p, ml, rid, K, wsrc[i], (uint64_t)get_g(row), dst);
            if (dst[0] != r->me)
                continue;
            ng[nn] = get_g(row);
            epm_wire_get(r, row + 2, H, nh + nn * H);
            nn++;
        }
    }
    /* add the partial sums, in a fixed order: source rank ascending (my own
     * partial in its rank's place), so results do not depend on timing */
    {
        /* index of each g among the new residents */
        int64_t *slot = epm_malloc((size_t)r->total * sizeof *slot);
        if (!slot) {
            st = EPM_ERR_NOMEM;
            goto out_w;
        }
        for (int64_t i = 0; i < nn; i++)
            slot[ng[i]] = i;
        float *acc = epm_calloc((size_t)(nn ? nn : 1) * H, sizeof *acc);
        if (!acc) {
            epm_free(slot);
            st = EPM_ERR_NOMEM;
            goto out_w;
        }
        for (int64_t i = 0; i < npr; i++) {
            int64_t s = slot[get_g(precv + i * PW)];
            epm_wire_add(r, precv + i * PW + 2, H, acc + s * H);
        }
        for (int64_t i = 0; i < nn * H; i++)
            nh[i] += acc[i];
        epm_free(acc);
        epm_free(slot);
    }
    r->rep->t_combine += epm_now() - t0;
    /* Qwen2-MoE's shared expert runs where the token now lives */
    if (w->shared.gate && nn > 0) {
        float *sx2 = epm_malloc((size_t)nn * H * sizeof *sx2);
        float *sy = epm_malloc((size_t)nn * H * sizeof *sy);
        float *hpre = epm_malloc((size_t)nn * H * sizeof *hpre);
        if (!sx2 || !sy || !hpre) {
            st = EPM_ERR_NOMEM;
        } else {
            /* the shared expert sees the pre-MoE hidden state of each resident */
            int64_t *slot_old = epm_malloc((size_t)r->total * sizeof *slot_old);
            if (!slot_old) {
                st = EPM_ERR_NOMEM;
            } else {
                for (int64_t i = 0; i < r->total; i++)
                    slot_old[i] = -1;
                for (int64_t i = 0; i < n; i++)
                    slot_old[g[i]] = i;
                for (int64_t i = 0; i < nn; i++) {
                    int64_t o = slot_old[ng[i]];
                    if (o >= 0) {
                        memcpy(hpre + i * H, h + o * H, (size_t)H * sizeof *hpre);
                    } else {
                        for (int64_t q = nlocal; q < nw; q++)
                            if (get_g(wrows + q * W) == ng[i]) {
                                epm_wire_get(r, wrows + q * W + 2, H, hpre + i * H);
                                break;
                            }
                    }
                }
                r->ref->rmsnorm(hpre, nn, H, w->post_attn_norm, c->rms_norm_eps, sx2);
                st = shared_expert(r, w, sx2, nn, nh, sy);
                epm_free(slot_old);
            }
        }
        epm_free(sx2);
        epm_free(sy);
        epm_free(hpre);
    }
    if (st == EPM_OK) {
        epm_free(*pg);
        epm_free(*ph);
        *pg = ng;
        *ph = nh;
        *pn = nn;
        ng = NULL;
        nh = NULL;
    }
out_w:
    epm_free(wrows);
    epm_free(wsrc);
out:
    epm_free(x2);
    epm_free(rows);
    epm_free(dest);
    epm_free(keys);
    epm_free(probs);
    epm_free(ids);
    epm_free(wts);
    epm_free(dst);
    epm_free(recv);
    epm_free(rsrc);
    epm_free(part);
    epm_free(precv);
    epm_free(psrc);
    epm_free(pdest);
    epm_free(prow);
    epm_free(xin);
    epm_free(y);
    epm_free(sx);
    epm_free(elist);
    epm_free(ecount);
    epm_free(ng);
    epm_free(nh);
    return st;
}

/* A MoD layer: the selected residents run the block, the others wait on
 * the residual stream, where they are, and rejoin the residents after it. */
epm_status epm_rt_skip_block(rt *r, int l, int64_t *pn, int64_t **pg, float **ph)
{
    const int H = r->c->hidden_size;
    int64_t n = *pn, nrun = 0, nskip = 0;
    int64_t *grun = epm_malloc((size_t)(n ? n : 1) * sizeof *grun);
    int64_t *gskip = epm_malloc((size_t)(n ? n : 1) * sizeof *gskip);
    float *hrun = epm_malloc((size_t)(n ? n : 1) * H * sizeof *hrun);
    float *hskip = epm_malloc((size_t)(n ? n : 1) * H * sizeof *hskip);
    epm_status st = grun && gskip && hrun && hskip ? EPM_OK : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        int run = r->sel[pass_t(r, (*pg)[i])];
        int64_t j = run ? nrun++ : nskip++;
        (run ? grun : gskip)[j] = (*pg)[i];
        memcpy((run ? hrun : hskip) + j * H, *ph + i * H, (size_t)H * sizeof *hrun);
    }
    if (st == EPM_OK)
        st = epm_rt_attention(r, l, nrun, grun, hrun);
    if (st == EPM_OK) /* a failure above meets the others at their next agreement (see forward) */
        st = epm_rt_moe_block(r, l, &nrun, &grun, &hrun);
    if (st == EPM_OK) {
        int64_t nn = nrun + nskip;
        int64_t *ng = epm_realloc(grun, (size_t)(nn ? nn : 1) * sizeof *ng);
        if (ng)
            grun = ng;
        float *nh = ng ? epm_realloc(hrun, (size_t)(nn ? nn : 1) * H * sizeof *nh) : NULL;
        if (nh)
            hrun = nh;
        if (ng && nh) {
            memcpy(grun + nrun, gskip, (size_t)nskip * sizeof *grun);
            memcpy(hrun + nrun * H, hskip, (size_t)nskip * H * sizeof *hrun);
            epm_free(*pg);
            epm_free(*ph);
            *pg = grun;
            *ph = hrun;
            *pn = nn;
            grun = NULL;
            hrun = NULL;
        } else {
            st = EPM_ERR_NOMEM;
        }
    }
    epm_free(grun);
    epm_free(gskip);
    epm_free(hrun);
    epm_free(hskip);
    return st;
}
