/* The placement MIP: exact for single-copy placements (each expert on one
 * rank, at most S experts a rank), so its optimum is the optimum of
 * epm_plan_objective over them and its bound is a bound on that objective.
 *
 * x[l,e,r] = 1 when expert e of layer l sits on rank r; T_l >= the expert
 * load of every rank in layer l. Traffic, per token and layer (eval.h), over
 * the distinct ranks D of its experts:
 *   home:   2 sum_{d in D} cost(h, d)                   (h fixed: linear)
 *   follow: sum_{d in D} cost(s, d) + cost(d, c)        (s = rank of the
 *           token's previous top-1 expert, or its home; c = rank of its top-1)
 * and in follow the final way home, cost(rank of the last top-1, home).
 *
 * Two exact linearisations:
 *  - one expert a rank (S = 1, e.g. Mixtral: 8 experts on 8 ranks): experts
 *    of a layer are on distinct ranks, so D's terms split into pairs:
 *    cost(rank a, rank e) = rho - [same rank] - (rho - 1) [same node],
 *    with y <= x_a, y <= x_e per rank and z per node, tightened by the
 *    RLT rows sum_e y[a,e,r] <= x[a,r] (one expert of the next layer per
 *    rank), which make the LP of each layer pair an assignment polytope.
 *  - otherwise tokens are grouped by (source, top-1, expert set), and a
 *    group has u[d] = [d in D] (u >= x[e,d]), p[d] = u[d] x[a,d] and
 *    q[n] = U_n X[a,n] for the source's rank and node, q'[n] for the
 *    combine's node: cost(s, d) summed over D = rho |D| - u_s - (rho-1) U_node(s).
 * Sizes grow with distinct token patterns; callers fall back to the search
 * when the model would be too large. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ilp_internal.h"

/* ---- a small insertion-ordered map from pair keys to weights ---- */
typedef struct {
    uint64_t *keys;
    double *w;
    int64_t *slot; /* [cap] index into keys, or -1 */
    size_t n, cap_items, cap;
} pair_map;

static void pm_free(pair_map *m)
{
    epm_free(m->keys);
    epm_free(m->w);
    epm_free(m->slot);
    memset(m, 0, sizeof *m);
}

static uint64_t pm_hash(uint64_t k)
{
    uint64_t s = k;
    return epm_splitmix64(&s);
}

static epm_status pm_add(pair_map *m, uint64_t key, double w)
{
    if (2 * (m->n + 1) > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 1024;
        int64_t *slot = epm_malloc(cap * sizeof *slot);
        if (!slot)
            return EPM_ERR_NOMEM;
        for (size_t i = 0; i < cap; i++)
            slot[i] = -1;
        for (size_t i = 0; i < m->n; i++) {
            size_t h = pm_hash(m->keys[i]) & (cap - 1);
            while (slot[h] >= 0)
                h = (h + 1) & (cap - 1);
            slot[h] = (int64_t)i;
        }
        epm_free(m->slot);
        m->slot = slot;
        m->cap = cap;
    }
    size_t h = pm_hash(key) & (m->cap - 1);
    while (m->slot[h] >= 0) {
        if (m->keys[m->slot[h]] == key) {
            m->w[m->slot[h]] += w;
            return EPM_OK;
        }
        h = (h + 1) & (m->cap - 1);
    }
    if (m->n == m->cap_items) {
        size_t c = m->cap_items ? 2 * m->cap_items : 1024;
        uint64_t *k = epm_realloc(m->keys, c * sizeof *k);
        if (!k)
            return EPM_ERR_NOMEM;
        m->keys = k;
        double *ww = epm_realloc(m->w, c * sizeof *ww);
        if (!ww)
            return EPM_ERR_NOMEM;
        m->w = ww;
        m->cap_items = c;
    }
    m->keys[m->n] = key;
    m->w[m->n] = w;
    m->slot[h] = (int64_t)m->n++;
    return EPM_OK;
}

/* ---- the builder ---- */
static int colx(const epm_ilp_ctx *x, const int *col_x, int le, int r)
{
    return col_x[(size_t)le * (size_t)x->R + (size_t)r];
}

/* row: owner - sum_{r in node n} coef * x[le, r] <= 0 */
static epm_status row_le_node(const epm_ilp_ctx *x, epm_mip *m, const int *col_x, int owner, int le, int n,
                              double coef)
{
    int row = epm_mip_row(m, EPM_MIP_LE, 0.0, owner);
    EPM_CHECK(epm_mip_coef(m, row, owner, 1.0));
    for (int r = n * x->gpn; r < (n + 1) * x->gpn; r++)
        EPM_CHECK(epm_mip_coef(m, row, colx(x, col_x, le, r), -coef));
    return EPM_OK;
}

static epm_status row_le_x(const epm_ilp_ctx *x, epm_mip *m, const int *col_x, int owner, int le, int r)
{
    int row = epm_mip_row(m, EPM_MIP_LE, 0.0, owner);
    EPM_CHECK(epm_mip_coef(m, row, owner, 1.0));
    return epm_mip_coef(m, row, colx(x, col_x, le, r), -1.0);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Every rank holds exactly one expert of every layer (E = R, S = 1): the
 * co-location of layer l-1 and layer l is a permutation, and per rank
 * y[a,e,r] = x[l-1,a,r] x[l,e,r] is a transportation polytope:
 *   sum_e y[a,e,r] = x[l-1,a,r],  sum_a y[a,e,r] = x[l,e,r].
 * Its LP already gives the sum of the layer pairs' assignment optima, with
 * far fewer rows than y <= x for each pair. */
static epm_status build_flow(const epm_ilp_ctx *x, epm_mip *m, const int *col_x, const pair_map *cross, int *zcol)
{
    size_t E = (size_t)x->E, R = (size_t)x->R;
    double rho = x->rho;
    double *w = epm_calloc(E * E, sizeof *w);
    int *y = epm_malloc(E * E * R * sizeof *y);
    epm_status st = EPM_OK;
    if (!w || !y) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int l = 1; l < x->L; l++) {
        memset(w, 0, E * E * sizeof *w);
        for (size_t q = 0; q < cross->n; q++) {
            size_t i = (size_t)(cross->keys[q] >> 32), j = (size_t)(cross->keys[q] & 0xffffffffu);
            if (j / E != (size_t)l)
                continue;
            w[(i % E) * E + j % E] += cross->w[q];
            double wt = x->tw * cross->w[q];
            m->obj_const += wt * rho;
            for (int n = 0; n < x->N && x->N > 1; n++) {
                int z = epm_mip_col(m, 0.0, 1.0, 0, -wt * (rho - 1.0));
                zcol[q * (size_t)x->N + (size_t)n] = z;
                EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, (int)i, n, 1.0), st, out);
                EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, (int)j, n, 1.0), st, out);
            }
        }
        for (size_t a = 0; a < E; a++)
            for (size_t e = 0; e < E; e++)
                for (size_t r = 0; r < R; r++)
                {
                    int c = epm_mip_col(m, 0.0, 1.0, 0, -x->tw * w[a * E + e]);
                    y[(a * E + e) * R + r] = c;
                    epm_mip_col_product(m, c, colx(x, col_x, (int)((size_t)(l - 1) * E + a), (int)r),
                                        colx(x, col_x, (int)((size_t)l * E + e), (int)r));
                }
        for (size_t r = 0; r < R; r++)
            for (int side = 0; side < 2; side++)
                for (size_t a = 0; a < E; a++) {
                    int row = epm_mip_row(m, EPM_MIP_EQ, 0.0, -1);
                    for (size_t e = 0; e < E; e++)
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, side ? y[(e * E + a) * R + r] : y[(a * E + e) * R + r], 1.0),
                                       st, out);
                    int le = (int)((size_t)(side ? l : l - 1) * E + a);
                    EPM_CHECK_GOTO(epm_mip_coef(m, row, colx(x, col_x, le, (int)r), -1.0), st, out);
                }
    }
out:
    epm_free(w);
    epm_free(y);
    return st;
}

/* Unit slots: pair terms. cross holds keys (i << 32 | j), i = ls*E+a source,
 * j = l*E+e; comb holds same-layer pairs. */
static epm_status build_pairs(const epm_ilp_ctx *x, epm_mip *m, const int *col_x, double *lin, int64_t max_cols)
{
    pair_map cross = {0}, comb = {0};
    epm_status st = EPM_OK;
    size_t T = (size_t)x->T, E = (size_t)x->E, R = (size_t)x->R;
    int *ycol = NULL, *zcol = NULL;
    uint64_t *order = NULL;
    for (int l = 0; l < x->L; l++) {
        const int32_t *ids = epm_trace_ids_const(x->t, l);
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            if (row[0] < 0)
                continue;
            int32_t s = x->src[(size_t)l * T + tok];
            for (int j = 0; j < x->K && row[j] >= 0; j++) {
                size_t le = (size_t)l * E + (size_t)row[j];
                if (x->mode == EPM_MODE_HOME || s < 0) {
                    int h = x->mode == EPM_MODE_HOME ? x->home[tok] : -s - 1;
                    double f = x->mode == EPM_MODE_HOME ? 2.0 : 1.0;
                    for (size_t r = 0; r < R; r++)
                        lin[le * R + r] += f * epm_ilp_cost(x, h, (int)r);
                } else {
                    EPM_CHECK_GOTO(pm_add(&cross, (uint64_t)s << 32 | le, 1.0), st, out);
                }
                if (x->mode == EPM_MODE_FOLLOW && j > 0) {
                    size_t c = (size_t)l * E + (size_t)row[0];
                    size_t a = c < le ? c : le, b = c < le ? le : c;
                    EPM_CHECK_GOTO(pm_add(&comb, (uint64_t)a << 32 | b, 1.0), st, out);
                }
            }
        }
    }
    int64_t need = (int64_t)m->ncols + (int64_t)cross.n * (int64_t)(x->R + (x->N > 1 ? x->N : 0)) +
                   (int64_t)comb.n * (x->N > 1 ? x->N : 0);
    if (need > max_cols) {
        st = epm_fail(EPM_ERR_UNSUPPORTED, "ilp: pair model needs %lld columns (limit %lld)", (long long)need,
                      (long long)max_cols);
        goto out;
    }
    ycol = epm_malloc((cross.n ? cross.n : 1) * R * sizeof *ycol);
    zcol = epm_malloc((cross.n ? cross.n : 1) * (size_t)x->N * sizeof *zcol);
    order = epm_malloc((cross.n ? cross.n : 1) * sizeof *order);
    if (!ycol || !zcol || !order) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    double rho = x->rho;
    if (x->mode == EPM_MODE_FOLLOW && x->E == x->R && !x->has_skips) {
        st = build_flow(x, m, col_x, &cross, zcol);
        if (st != EPM_OK)
            goto out;
        goto combine;
    }
    for (size_t q = 0; q < cross.n; q++) {
        int i = (int)(cross.keys[q] >> 32), j = (int)(cross.keys[q] & 0xffffffffu);
        double w = x->tw * cross.w[q];
        m->obj_const += w * rho;
        for (int r = 0; r < x->R; r++) {
            int y = epm_mip_col(m, 0.0, 1.0, 0, -w);
            ycol[q * R + (size_t)r] = y;
            EPM_CHECK_GOTO(row_le_x(x, m, col_x, y, i, r), st, out);
            EPM_CHECK_GOTO(row_le_x(x, m, col_x, y, j, r), st, out);
        }
        for (int n = 0; n < x->N && x->N > 1; n++) {
            int z = epm_mip_col(m, 0.0, 1.0, 0, -w * (rho - 1.0));
            zcol[q * (size_t)x->N + (size_t)n] = z;
            EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, i, n, 1.0), st, out);
            EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, j, n, 1.0), st, out);
        }
    }
    /* RLT: a rank holds one expert of a layer, a node gpn of them, so the
     * pairs of one source with one target layer share x[source] */
    for (int side = 0; side < 2; side++) {
        for (size_t q = 0; q < cross.n; q++) {
            uint64_t i = cross.keys[q] >> 32, j = cross.keys[q] & 0xffffffffu;
            uint64_t own = side ? j : i, other_layer = (side ? i : j) / E;
            order[q] = (own * (uint64_t)x->L + other_layer) << 24 | q;
        }
        if (cross.n >= (1u << 24)) {
            st = epm_fail(EPM_ERR_UNSUPPORTED, "ilp: too many pairs (%zu)", cross.n);
            goto out;
        }
        qsort(order, cross.n, sizeof *order, cmp_u64);
        for (size_t a = 0; a < cross.n;) {
            size_t b = a;
            while (b < cross.n && order[b] >> 24 == order[a] >> 24)
                b++;
            if (b - a > 1) {
                size_t q0 = order[a] & 0xffffffu;
                int own = (int)(side ? cross.keys[q0] & 0xffffffffu : cross.keys[q0] >> 32);
                for (int r = 0; r < x->R; r++) {
                    int row = epm_mip_row(m, EPM_MIP_LE, 0.0, -1);
                    for (size_t g = a; g < b; g++)
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, ycol[(order[g] & 0xffffffu) * R + (size_t)r], 1.0), st,
                                       out);
                    EPM_CHECK_GOTO(epm_mip_coef(m, row, colx(x, col_x, own, r), -(double)x->S), st, out);
                }
                for (int n = 0; n < x->N && x->N > 1; n++) {
                    int row = epm_mip_row(m, EPM_MIP_LE, 0.0, -1);
                    for (size_t g = a; g < b; g++)
                        EPM_CHECK_GOTO(
                            epm_mip_coef(m, row, zcol[(order[g] & 0xffffffu) * (size_t)x->N + (size_t)n], 1.0), st,
                            out);
                    for (int r = n * x->gpn; r < (n + 1) * x->gpn; r++)
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, colx(x, col_x, own, r), -(double)(x->S * x->gpn)), st,
                                       out);
                }
            }
            a = b;
        }
    }
combine:
    /* combine pairs of one layer: never on one rank (S = 1), so only the
     * node term varies */
    for (size_t q = 0; q < comb.n; q++) {
        int i = (int)(comb.keys[q] >> 32), j = (int)(comb.keys[q] & 0xffffffffu);
        double w = x->tw * comb.w[q];
        m->obj_const += w * rho;
        for (int n = 0; n < x->N && x->N > 1; n++) {
            int z = epm_mip_col(m, 0.0, 1.0, 0, -w * (rho - 1.0));
            EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, i, n, 1.0), st, out);
            EPM_CHECK_GOTO(row_le_node(x, m, col_x, z, j, n, 1.0), st, out);
        }
    }
out:
    pm_free(&cross);
    pm_free(&comb);
    epm_free(ycol);
    epm_free(zcol);
    epm_free(order);
    return st;
}

/* ---- groups of tokens with the same (source, top-1, expert set) ---- */
static _Thread_local const int32_t *g_keys;
static _Thread_local int g_width;

static int cmp_tok(const void *a, const void *b)
{
    const int32_t *x = g_keys + (size_t)*(const int64_t *)a * (size_t)g_width;
    const int32_t *y = g_keys + (size_t)*(const int64_t *)b * (size_t)g_width;
    for (int i = 0; i < g_width; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    int64_t p = *(const int64_t *)a, q = *(const int64_t *)b;
    return p < q ? -1 : p > q;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* keys[tok] = (source code, top-1, other experts ascending, -1 padding) */
static void layer_keys(const epm_ilp_ctx *x, int l, int32_t *keys)
{
    int w = x->K + 1;
    size_t T = (size_t)x->T;
    const int32_t *ids = epm_trace_ids_const(x->t, l);
    for (size_t tok = 0; tok < T; tok++) {
        const int32_t *row = ids + tok * (size_t)x->K;
        int32_t *k = keys + tok * (size_t)w;
        k[0] = x->mode == EPM_MODE_HOME ? -(x->home[tok] + 1) : x->src[(size_t)l * T + tok];
        int m = 0;
        while (m < x->K && row[m] >= 0)
            m++;
        for (int j = 0; j < x->K; j++)
            k[1 + j] = j < m ? row[j] : -1;
        if (m > 2)
            qsort(k + 2, (size_t)(m - 1), sizeof *k, cmp_i32);
    }
}

static epm_status build_groups(const epm_ilp_ctx *x, epm_mip *m, const int *col_x, int64_t max_cols)
{
    size_t T = (size_t)x->T, E = (size_t)x->E;
    int w = x->K + 1;
    int32_t *keys = epm_malloc((T ? T : 1) * (size_t)w * sizeof *keys);
    int64_t *ord = epm_malloc((T ? T : 1) * sizeof *ord);
    int *u = epm_malloc((size_t)x->R * sizeof *u);
    epm_status st = EPM_OK;
    if (!keys || !ord || !u) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    double rho = x->rho;
    int multi = x->N > 1;
    /* first pass: count columns so that a hopeless model is refused early */
    int64_t need = m->ncols;
    for (int pass = 0; pass < 2; pass++) {
        for (int l = 0; l < x->L; l++) {
            layer_keys(x, l, keys);
            for (size_t tok = 0; tok < T; tok++)
                ord[tok] = (int64_t)tok;
            g_keys = keys;
            g_width = w;
            qsort(ord, T, sizeof *ord, cmp_tok);
            for (size_t a = 0; a < T;) {
                const int32_t *k = keys + (size_t)ord[a] * (size_t)w;
                size_t b = a + 1;
                while (b < T && !memcmp(keys + (size_t)ord[b] * (size_t)w, k, (size_t)w * sizeof *k))
                    b++;
                double n = (double)(b - a);
                a = b;
                if (k[1] < 0)
                    continue; /* skipped tokens send nothing */
                int nexp = 0;
                while (nexp < x->K && k[1 + nexp] >= 0)
                    nexp++;
                int fixed = k[0] < 0;
                int h = fixed ? -k[0] - 1 : -1;
                if (pass == 0) {
                    need += x->R;
                    if (!fixed)
                        need += x->R + (multi ? x->N : 0);
                    if (x->mode == EPM_MODE_FOLLOW && multi)
                        need += x->N;
                    if (need > max_cols) {
                        st = epm_fail(EPM_ERR_UNSUPPORTED, "ilp: group model needs over %lld columns",
                                      (long long)max_cols);
                        goto out;
                    }
                    continue;
                }
                double tw = x->tw * n;
                int M = nexp < x->gpn ? nexp : x->gpn;
                size_t c = (size_t)l * E + (size_t)k[1];
                /* u[d] = [some expert of the group on d] */
                for (int d = 0; d < x->R; d++) {
                    double coef;
                    if (x->mode == EPM_MODE_HOME)
                        coef = 2.0 * epm_ilp_cost(x, h, d);
                    else
                        coef = (fixed ? epm_ilp_cost(x, h, d) : rho) + rho;
                    u[d] = epm_mip_col(m, 0.0, 1.0, 0, tw * coef);
                    for (int j = 0; j < nexp; j++) {
                        int row = epm_mip_row(m, EPM_MIP_GE, 0.0, u[d]);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, u[d], 1.0), st, out);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, colx(x, col_x, (int)((size_t)l * E + (size_t)k[1 + j]), d),
                                                    -1.0),
                                       st, out);
                    }
                    if (x->mode == EPM_MODE_FOLLOW) {
                        /* u <= sum x keeps the savings below honest in the LP */
                        int row = epm_mip_row(m, EPM_MIP_LE, 0.0, u[d]);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, u[d], 1.0), st, out);
                        for (int j = 0; j < nexp; j++)
                            EPM_CHECK_GOTO(
                                epm_mip_coef(m, row, colx(x, col_x, (int)((size_t)l * E + (size_t)k[1 + j]), d), -1.0),
                                st, out);
                    }
                }
                if (x->mode == EPM_MODE_HOME)
                    continue;
                m->obj_const -= tw; /* the combine skips the top-1's own rank */
                if (!fixed) {
                    int src = k[0];
                    for (int d = 0; d < x->R; d++) {
                        int p = epm_mip_col(m, 0.0, 1.0, 0, -tw);
                        int row = epm_mip_row(m, EPM_MIP_LE, 0.0, p);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, p, 1.0), st, out);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, u[d], -1.0), st, out);
                        EPM_CHECK_GOTO(row_le_x(x, m, col_x, p, src, d), st, out);
                    }
                    for (int nd = 0; nd < x->N && multi; nd++) {
                        int q = epm_mip_col(m, 0.0, (double)M, 0, -tw * (rho - 1.0));
                        int row = epm_mip_row(m, EPM_MIP_LE, 0.0, q);
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, q, 1.0), st, out);
                        for (int d = nd * x->gpn; d < (nd + 1) * x->gpn; d++)
                            EPM_CHECK_GOTO(epm_mip_coef(m, row, u[d], -1.0), st, out);
                        EPM_CHECK_GOTO(row_le_node(x, m, col_x, q, src, nd, (double)M), st, out);
                    }
                }
                for (int nd = 0; nd < x->N && multi; nd++) {
                    int q = epm_mip_col(m, 0.0, (double)M, 0, -tw * (rho - 1.0));
                    int row = epm_mip_row(m, EPM_MIP_LE, 0.0, q);
                    EPM_CHECK_GOTO(epm_mip_coef(m, row, q, 1.0), st, out);
                    for (int d = nd * x->gpn; d < (nd + 1) * x->gpn; d++)
                        EPM_CHECK_GOTO(epm_mip_coef(m, row, u[d], -1.0), st, out);
                    EPM_CHECK_GOTO(row_le_node(x, m, col_x, q, (int)c, nd, (double)M), st, out);
                }
            }
        }
    }
out:
    epm_free(keys);
    epm_free(ord);
    epm_free(u);
    return st;
}

epm_status epm_ilp_build(const epm_ilp_ctx *x, int64_t max_cols, epm_mip *m, int *col_x)
{
    size_t L = (size_t)x->L, E = (size_t)x->E, R = (size_t)x->R, T = (size_t)x->T;
    epm_status st = EPM_OK;
    epm_mip_init(m);
    if ((int64_t)(L * E * R) > max_cols)
        return epm_fail(EPM_ERR_UNSUPPORTED, "ilp: %zu placement variables exceed the model limit %lld", L * E * R,
                        (long long)max_cols);
    double *lin = epm_calloc(L * E * R, sizeof *lin);
    if (!lin)
        return EPM_ERR_NOMEM;
    m->obj_const = x->constant;
    for (size_t le = 0; le < L * E; le++)
        for (size_t r = 0; r < R; r++)
            col_x[le * R + r] = epm_mip_col(m, 0.0, 1.0, 1, 0.0);
    for (size_t l = 0; l < L; l++) {
        /* one copy per expert: the hottest expert's rank carries all of its
         * load, and someone carries the average; integral at the optimum */
        int64_t total = 0, hot = 0;
        for (size_t e = 0; e < E; e++) {
            total += x->load[l * E + e];
            hot = x->load[l * E + e] > hot ? x->load[l * E + e] : hot;
        }
        int64_t tlb = (total + x->R - 1) / x->R;
        int tcol = epm_mip_col(m, (double)(hot > tlb ? hot : tlb), INFINITY, 1, x->bw);
        for (size_t e = 0; e < E; e++) {
            int row = epm_mip_row(m, EPM_MIP_EQ, 1.0, -1);
            for (size_t r = 0; r < R; r++)
                EPM_CHECK_GOTO(epm_mip_coef(m, row, col_x[(l * E + e) * R + r], 1.0), st, fail);
        }
        for (size_t r = 0; r < R; r++) {
            int cap = epm_mip_row(m, EPM_MIP_LE, (double)x->S, -1);
            int bal = epm_mip_row(m, EPM_MIP_LE, 0.0, tcol);
            EPM_CHECK_GOTO(epm_mip_coef(m, bal, tcol, -1.0), st, fail);
            for (size_t e = 0; e < E; e++) {
                EPM_CHECK_GOTO(epm_mip_coef(m, cap, col_x[(l * E + e) * R + r], 1.0), st, fail);
                if (x->load[l * E + e])
                    EPM_CHECK_GOTO(epm_mip_coef(m, bal, col_x[(l * E + e) * R + r], (double)x->load[l * E + e]), st,
                                   fail);
            }
        }
    }
    /* the final way home (follow) is linear: the home rank is fixed */
    if (x->mode == EPM_MODE_FOLLOW)
        for (size_t tok = 0; tok < T; tok++)
            if (x->last[tok] >= 0)
                for (size_t r = 0; r < R; r++)
                    lin[(size_t)x->last[tok] * R + r] += epm_ilp_cost(x, (int)r, x->home[tok]);
    if (x->S == 1)
        EPM_CHECK_GOTO(build_pairs(x, m, col_x, lin, max_cols), st, fail);
    else
        EPM_CHECK_GOTO(build_groups(x, m, col_x, max_cols), st, fail);
    for (size_t q = 0; q < L * E * R; q++)
        m->obj[col_x[q]] += x->tw * lin[q];
    epm_free(lin);
    return EPM_OK;
fail:
    epm_free(lin);
    epm_mip_free(m);
    return st;
}

void epm_ilp_start(const epm_ilp_ctx *x, const int *col_x, const int *rank_of, double *v)
{
    size_t LE = (size_t)x->L * (size_t)x->E, R = (size_t)x->R;
    for (size_t le = 0; le < LE; le++)
        for (size_t r = 0; r < R; r++)
            v[col_x[le * R + r]] = rank_of[le] == (int)r ? 1.0 : 0.0;
}

void epm_ilp_read(const epm_ilp_ctx *x, const int *col_x, const double *v, int *rank_of)
{
    size_t LE = (size_t)x->L * (size_t)x->E, R = (size_t)x->R;
    for (size_t le = 0; le < LE; le++) {
        int best = 0;
        for (size_t r = 1; r < R; r++)
            if (v[col_x[le * R + r]] > v[col_x[le * R + (size_t)best]])
                best = (int)r;
        rank_of[le] = best;
    }
}
