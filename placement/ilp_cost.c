/* The planner's objective for single-copy placements, computed directly from
 * the trace so that the ILP's local search can re-score one layer at a time,
 * and a lower bound that holds for every placement. Both follow the cost
 * model of eval.h; test_ilp checks them against epm_plan_objective. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ilp_internal.h"

epm_status epm_ilp_ctx_init(epm_ilp_ctx *x, const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                            int slots)
{
    memset(x, 0, sizeof *x);
    x->t = t;
    x->c = c;
    x->mode = o->mode;
    x->L = epm_trace_layers(t);
    x->E = epm_trace_experts(t);
    x->K = epm_trace_k(t);
    x->T = epm_trace_tokens(t);
    x->R = epm_cluster_ranks(c);
    x->N = c->nodes;
    x->gpn = c->gpus_per_node;
    x->S = slots;
    x->rho = x->N > 1 ? epm_cluster_link_cost(c, EPM_LINK_INTER) : 1.0;
    int hidden = o->hidden;
    int kv_dim = o->kv_dim > 0 ? o->kv_dim : hidden / 2;
    x->kv_ratio = hidden > 0 ? (double)kv_dim / (double)hidden : 0.0;
    x->kv_fan = (double)(x->gpn - 1) + x->rho * (double)(x->R - x->gpn);
    epm_plan_opts resolved;
    epm_plan_resolve(o, c, &resolved);
    x->bw = resolved.balance_weight;
    x->tw = resolved.traffic_weight / (double)x->R;

    size_t T = (size_t)x->T, L = (size_t)x->L, E = (size_t)x->E;
    x->home = epm_malloc((T ? T : 1) * sizeof *x->home);
    x->src = epm_malloc((L * T + 1) * sizeof *x->src);
    x->last = epm_malloc((T ? T : 1) * sizeof *x->last);
    x->load = epm_calloc(L * E, sizeof *x->load);
    x->active = epm_calloc(L, sizeof *x->active);
    if (!x->home || !x->src || !x->last || !x->load || !x->active) {
        epm_ilp_ctx_free(x);
        return EPM_ERR_NOMEM;
    }
    for (size_t tok = 0; tok < T; tok++) {
        int64_t s = epm_trace_seq_of(t, (int64_t)tok) % x->R;
        x->home[tok] = (int32_t)(s < 0 ? s + x->R : s);
        x->last[tok] = -1;
    }
    for (int l = 0; l < x->L; l++) {
        const int32_t *ids = epm_trace_ids_const(t, l);
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            x->src[(size_t)l * T + tok] = x->last[tok] >= 0 ? x->last[tok] : -(x->home[tok] + 1);
            if (row[0] < 0) {
                x->has_skips = 1;
                continue;
            }
            x->active[l]++;
            for (int j = 0; j < x->K && row[j] >= 0; j++)
                x->load[(size_t)l * E + (size_t)row[j]]++;
            x->last[tok] = (int32_t)((size_t)l * E + (size_t)row[0]);
        }
    }
    /* the K/V all-gather goes from wherever the token is to every other
     * rank: in a cluster where every rank sees the same link classes that
     * costs the same from any source, so no placement changes it */
    if (x->mode == EPM_MODE_FOLLOW)
        for (int l = 0; l < x->L; l++)
            x->constant += x->tw * x->kv_ratio * x->kv_fan * (double)x->active[l];
    return EPM_OK;
}

void epm_ilp_ctx_free(epm_ilp_ctx *x)
{
    epm_free(x->home);
    epm_free(x->src);
    epm_free(x->last);
    epm_free(x->load);
    epm_free(x->active);
    x->home = x->src = x->last = NULL;
    x->load = x->active = NULL;
}

/* Distinct ranks of a token's experts; returns their count. */
static int distinct_ranks(const epm_ilp_ctx *x, const int *rank_of, int l, const int32_t *row, int *d)
{
    int n = 0;
    for (int j = 0; j < x->K && row[j] >= 0; j++) {
        int r = rank_of[(size_t)l * (size_t)x->E + (size_t)row[j]];
        int seen = 0;
        for (int q = 0; q < n; q++)
            seen |= d[q] == r;
        if (!seen)
            d[n++] = r;
    }
    return n;
}

double epm_ilp_layer_cost(const epm_ilp_ctx *x, const int *rank_of, int l)
{
    int64_t ld[1024];
    int64_t mx = 0;
    size_t E = (size_t)x->E, T = (size_t)x->T;
    /* ranks are at most a few thousand; fall back to a scan when more */
    if (x->R <= 1024) {
        memset(ld, 0, (size_t)x->R * sizeof *ld);
        for (size_t e = 0; e < E; e++)
            ld[rank_of[l * E + e]] += x->load[l * E + e];
        for (int r = 0; r < x->R; r++)
            mx = ld[r] > mx ? ld[r] : mx;
    } else {
        for (int r = 0; r < x->R; r++) {
            int64_t s = 0;
            for (size_t e = 0; e < E; e++)
                s += rank_of[l * E + e] == r ? x->load[l * E + e] : 0;
            mx = s > mx ? s : mx;
        }
    }
    int d[256];
    double traffic = 0.0;
    const int32_t *ids = epm_trace_ids_const(x->t, l);
    for (size_t tok = 0; tok < T; tok++) {
        const int32_t *row = ids + tok * (size_t)x->K;
        if (row[0] < 0)
            continue;
        int n = distinct_ranks(x, rank_of, l, row, d);
        if (x->mode == EPM_MODE_HOME) {
            int h = x->home[tok];
            for (int q = 0; q < n; q++)
                traffic += 2.0 * epm_ilp_cost(x, h, d[q]);
        } else {
            int32_t s = x->src[(size_t)l * T + tok];
            int sr = s < 0 ? -s - 1 : rank_of[s];
            int cr = rank_of[l * E + (size_t)row[0]];
            for (int q = 0; q < n; q++)
                traffic += epm_ilp_cost(x, sr, d[q]) + epm_ilp_cost(x, d[q], cr);
        }
    }
    if (x->mode == EPM_MODE_FOLLOW && l == x->L - 1)
        for (size_t tok = 0; tok < T; tok++)
            if (x->last[tok] >= 0)
                traffic += epm_ilp_cost(x, rank_of[x->last[tok]], x->home[tok]);
    return x->bw * (double)mx + x->tw * traffic;
}

double epm_ilp_total(const epm_ilp_ctx *x, const int *rank_of)
{
    double s = x->constant;
    for (int l = 0; l < x->L; l++)
        s += epm_ilp_layer_cost(x, rank_of, l);
    return s;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x > y ? -1 : x < y;
}

/* The q-th largest of v[0..n) clipped at 0 (0 when fewer than q are
 * positive), using tmp[n]. */
static double kth_pos(const double *v, int n, int q, double *tmp)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > 0)
            tmp[m++] = v[i];
    if (q <= 0 || m < q)
        return 0.0;
    qsort(tmp, (size_t)m, sizeof *tmp, cmp_desc);
    return tmp[q - 1];
}

enum { DUAL_ROUNDS = 12 };

/* Upper bound on max sum w[e][f] z[e,f] over pairs e < f of a symmetric
 * n x n matrix, with every e in at most deg pairs (z in [0, 1]): any dual
 * point y >= 0 gives deg * sum y + sum_{e<f} (w - y_e - y_f)^+, and
 * coordinate descent (each y_e set to its one-dimensional minimiser, the
 * deg-th largest (w[e][f] - y_f)^+) only lowers it. Experts sharing a rank
 * (deg = S - 1) or a node (deg = S gpn - 1) are such pairs. */
static double pair_bound(const double *w, int n, int deg, double *y, double *v, double *tmp)
{
    if (deg <= 0)
        return 0.0;
    memset(y, 0, (size_t)n * sizeof *y);
    for (int round = 0; round < DUAL_ROUNDS; round++)
        for (int e = 0; e < n; e++) {
            for (int f = 0; f < n; f++)
                v[f] = f == e ? 0.0 : w[(size_t)e * (size_t)n + (size_t)f] - y[f];
            y[e] = kth_pos(v, n, deg, tmp);
        }
    double b = 0.0;
    for (int e = 0; e < n; e++) {
        b += deg * y[e];
        for (int f = e + 1; f < n; f++) {
            double s = w[(size_t)e * (size_t)n + (size_t)f] - y[e] - y[f];
            b += s > 0 ? s : 0.0;
        }
    }
    return b;
}

/* The same for a bipartite rows x cols matrix, each row in at most rcap
 * pairs and each column in at most ccap. */
static double bip_bound(const double *w, int rows, int cols, int rcap, int ccap, double *a, double *bcol, double *v,
                        double *tmp)
{
    memset(a, 0, (size_t)rows * sizeof *a);
    memset(bcol, 0, (size_t)cols * sizeof *bcol);
    for (int round = 0; round < DUAL_ROUNDS; round++) {
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++)
                v[j] = w[(size_t)i * (size_t)cols + (size_t)j] - bcol[j];
            a[i] = kth_pos(v, cols, rcap, tmp);
        }
        for (int j = 0; j < cols; j++) {
            for (int i = 0; i < rows; i++)
                v[i] = w[(size_t)i * (size_t)cols + (size_t)j] - a[i];
            bcol[j] = kth_pos(v, rows, ccap, tmp);
        }
    }
    double b = 0.0;
    for (int i = 0; i < rows; i++)
        b += rcap * a[i];
    for (int j = 0; j < cols; j++)
        b += ccap * bcol[j];
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double s = w[(size_t)i * (size_t)cols + (size_t)j] - a[i] - bcol[j];
            b += s > 0 ? s : 0.0;
        }
    return b;
}

/* Savings bounds of one layer for a placement with one copy per expert:
 * a token's distinct ranks |D| = m - (experts sharing a rank with another of
 * its experts, counted once per extra), and the experts sharing a rank with
 * expert e are at most S - 1 others, so the pairs a rank co-hosts save at
 * most half the sum over e of its S - 1 largest co-selection counts; a source
 * rank (home, or the previous top-1's rank) holds at most S experts, so it
 * saves at most its S most chosen ones; likewise per node with S * gpn. */
typedef struct {
    double pair_r, pair_n, src_r, src_n;
} savings;

static epm_status layer_savings(const epm_ilp_ctx *x, int l, savings *sv)
{
    size_t E = (size_t)x->E, R = (size_t)x->R, T = (size_t)x->T;
    int per_node = x->S * x->gpn;
    /* sources: homes (R rows) then previous top-1 experts (E rows) */
    double *c = epm_calloc(E * E, sizeof *c), *hs = epm_calloc((R + E) * E, sizeof *hs);
    double *ns = epm_calloc(E, sizeof *ns), *tmp = epm_malloc(E * sizeof *tmp);
    double *cnt = epm_calloc(R + E, sizeof *cnt);
    if (!c || !hs || !ns || !tmp || !cnt) {
        epm_free(c);
        epm_free(hs);
        epm_free(ns);
        epm_free(tmp);
        epm_free(cnt);
        return EPM_ERR_NOMEM;
    }
    memset(sv, 0, sizeof *sv);
    double untracked = 0.0; /* tokens whose source we do not index: saving <= 1 each */
    const int32_t *ids = epm_trace_ids_const(x->t, l);
    for (size_t tok = 0; tok < T; tok++) {
        const int32_t *row = ids + tok * (size_t)x->K;
        int m = 0;
        while (m < x->K && row[m] >= 0)
            m++;
        if (!m)
            continue;
        for (int i = 0; i < m; i++)
            for (int j = i + 1; j < m; j++) {
                c[(size_t)row[i] * E + (size_t)row[j]] += 1.0;
                c[(size_t)row[j] * E + (size_t)row[i]] += 1.0;
            }
        int32_t s = x->mode == EPM_MODE_HOME ? -(x->home[tok] + 1) : x->src[(size_t)l * T + tok];
        size_t src;
        if (s < 0)
            src = (size_t)(-s - 1);
        else if ((size_t)s / E == (size_t)l - 1)
            src = R + (size_t)s % E;
        else {
            untracked += 1.0;
            continue;
        }
        cnt[src] += 1.0;
        for (int i = 0; i < m; i++)
            hs[src * E + (size_t)row[i]] += 1.0;
    }
    size_t big = (R + E > E ? R + E : E) + 1;
    double *y = epm_malloc(big * sizeof *y), *y2 = epm_malloc(big * sizeof *y2), *v = epm_malloc(big * sizeof *v),
           *tmp2 = epm_malloc(big * sizeof *tmp2), *nw = epm_calloc((size_t)x->N * E, sizeof *nw);
    if (!y || !y2 || !v || !tmp2 || !nw) {
        epm_free(y);
        epm_free(y2);
        epm_free(v);
        epm_free(tmp2);
        epm_free(nw);
        epm_free(c);
        epm_free(hs);
        epm_free(ns);
        epm_free(tmp);
        epm_free(cnt);
        return EPM_ERR_NOMEM;
    }
    sv->pair_r = pair_bound(c, x->E, x->S - 1, y, v, tmp2);
    sv->pair_n = x->N > 1 ? pair_bound(c, x->E, per_node - 1, y, v, tmp2) : 0.0;
    /* homes: rank h holds S experts, an expert sits on one rank; previous
     * top-1 a: its rank holds S experts of this layer, each beside at most
     * S experts of the last layer */
    double home_n = 0.0, home_c = 0.0, prev_c = 0.0;
    for (size_t q = 0; q < R; q++)
        home_c += cnt[q];
    for (size_t q = R; q < R + E; q++)
        prev_c += cnt[q];
    double hb = bip_bound(hs, x->R, x->E, x->S, 1, y, y2, v, tmp2);
    double pb = prev_c > 0 ? bip_bound(hs + R * E, x->E, x->E, x->S, x->S, y, y2, v, tmp2) : 0.0;
    sv->src_r = (hb < home_c ? hb : home_c) + (pb < prev_c ? pb : prev_c);
    if (x->N > 1) {
        for (int n = 0; n < x->N; n++)
            for (int r = n * x->gpn; r < (n + 1) * x->gpn; r++)
                for (size_t e = 0; e < E; e++)
                    nw[(size_t)n * E + e] += hs[(size_t)r * E + e];
        home_n = bip_bound(nw, x->N, x->E, per_node, 1, y, y2, v, tmp2);
        double pn = prev_c > 0 ? bip_bound(hs + R * E, x->E, x->E, per_node, per_node, y, y2, v, tmp2) : 0.0;
        sv->src_n = (home_n < home_c ? home_n : home_c) + (pn < prev_c ? pn : prev_c);
    } else {
        sv->src_n = sv->src_r;
    }
    epm_free(y);
    epm_free(y2);
    epm_free(v);
    epm_free(tmp2);
    epm_free(nw);
    sv->src_r += untracked;
    sv->src_n += untracked;
    epm_free(c);
    epm_free(hs);
    epm_free(ns);
    epm_free(tmp);
    epm_free(cnt);
    return EPM_OK;
}

epm_status epm_ilp_bound(const epm_ilp_ctx *x, int spares, double *out)
{
    double b = x->constant;
    size_t E = (size_t)x->E, T = (size_t)x->T;
    int per_node = x->S * x->gpn;
    for (int l = 0; l < x->L; l++) {
        int64_t total = 0, mx = 0;
        for (size_t e = 0; e < E; e++) {
            total += x->load[l * E + e];
            mx = x->load[l * E + e] > mx ? x->load[l * E + e] : mx;
        }
        int64_t lb = (total + x->R - 1) / x->R;
        /* one copy per expert: the hottest expert's rank carries all of it */
        if (!spares && mx > lb)
            lb = mx;
        /* a token's m experts need ceil(m / S) ranks in ceil(m / (S gpn))
         * nodes; from any rank, all but itself cost >= 1 and those in other
         * nodes >= rho more: both ways (home) or dispatch and combine
         * (follow) pay that */
        double M = 0.0, act = 0.0, sr = 0.0, sn = 0.0;
        const int32_t *ids = epm_trace_ids_const(x->t, l);
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            int m = 0;
            while (m < x->K && row[m] >= 0)
                m++;
            if (!m)
                continue;
            int mr = (m + x->S - 1) / x->S, mn = (m + per_node - 1) / per_node;
            M += m;
            act += 1.0;
            sr += mr - 1;
            sn += mn - 1;
        }
        /* sum over tokens of (|D| - [src in D]) + (rho - 1)(|nodes| - [src node in them])
         * bounds the way out; of (|D| - 1) + (rho - 1)(|nodes| - 1) the combine */
        double out_r = sr, out_n = sn, back_r = sr, back_n = sn;
        if (!spares) {
            savings sv;
            EPM_CHECK(layer_savings(x, l, &sv));
            double v;
            v = M - sv.pair_r - sv.src_r;
            out_r = v > out_r ? v : out_r;
            v = M - sv.pair_n - sv.src_n;
            out_n = v > out_n ? v : out_n;
            v = M - act - sv.pair_r;
            back_r = v > back_r ? v : back_r;
            v = M - act - sv.pair_n;
            back_n = v > back_n ? v : back_n;
        }
        double traffic = x->mode == EPM_MODE_HOME ? 2.0 * (out_r + (x->rho - 1.0) * out_n)
                                                  : out_r + back_r + (x->rho - 1.0) * (out_n + back_n);
        b += x->bw * (double)lb + x->tw * traffic;
    }
    *out = b;
    return EPM_OK;
}

epm_status epm_ilp_to_placement(const epm_ilp_ctx *x, const int *rank_of, int k, epm_placement **out)
{
    epm_placement *p = NULL;
    EPM_CHECK(epm_placement_create(x->L, x->E, k, x->c, &p));
    for (int l = 0; l < x->L; l++)
        for (int e = 0; e < x->E; e++) {
            epm_status st = epm_placement_add(p, l, e, rank_of[(size_t)l * (size_t)x->E + (size_t)e]);
            if (st != EPM_OK) {
                epm_placement_destroy(p);
                return st;
            }
        }
    *out = p;
    return EPM_OK;
}

void epm_ilp_from_placement(const epm_ilp_ctx *x, const epm_placement *p, int *rank_of)
{
    for (int l = 0; l < x->L; l++)
        for (int e = 0; e < x->E; e++) {
            const int *r;
            int n = epm_placement_replicas(p, l, e, &r);
            rank_of[(size_t)l * (size_t)x->E + (size_t)e] = n > 0 ? r[0] : 0;
        }
}
