/* The exact decomposition of follow mode when every rank of one node holds
 * exactly one expert of every layer (E = R, S = 1: Mixtral-8x7B on 8 GPUs).
 *
 * Then every layer's placement is a permutation pi_l, the straggler load is
 * the hottest expert's whatever the permutation, every token's combine
 * crosses |experts| - 1 links, and the objective is a constant minus three
 * kinds of savings:
 *   H(pi_0):           tokens whose home holds one of their layer-0 experts;
 *   D_l(sigma_l):      tokens whose layer-(l-1) top-1 shares a rank with one
 *                      of their layer-l experts, where sigma_l = which layer-l
 *                      expert shares a rank with which layer-(l-1) expert;
 *   G(pi_{L-1}):       tokens whose last top-1 sits on their home rank.
 * The sigma_l are free and independent (any chain of them is realised by
 * some pi_0), so  max H + sum_l max D_l + max G  (linear assignment problems,
 * solved exactly) bounds the savings from above: a valid lower bound on the
 * objective. The incumbent takes the optimal sigma_l and then the pi_0 that
 * maximises H + G given them (one more assignment problem); only that last
 * coupling can leave a gap. That gap is closed exactly, where the chain's
 * end maps can be searched (E <= 8), by epm_ilp_exact_chain (ilp_chain.c). */
#include <math.h>
#include <string.h>

#include "ilp_internal.h"

/* Maximum-weight perfect assignment of an n x n matrix w (row -> column),
 * Hungarian method with potentials, O(n^3). Exact for integer weights. */
epm_status epm_ilp_assign_max(int n, const double *w, int *col_of_row, double *value)
{
    size_t N = (size_t)n + 1;
    double *u = epm_calloc(N, sizeof *u), *v = epm_calloc(N, sizeof *v), *minv = epm_malloc(N * sizeof *minv);
    int *p = epm_calloc(N, sizeof *p), *way = epm_calloc(N, sizeof *way);
    char *used = epm_malloc(N);
    if (!u || !v || !minv || !p || !way || !used) {
        epm_free(u);
        epm_free(v);
        epm_free(minv);
        epm_free(p);
        epm_free(way);
        epm_free(used);
        return EPM_ERR_NOMEM;
    }
    /* minimise cost = -w; rows 1..n, columns 1..n, p[j] = row of column j */
    for (int i = 1; i <= n; i++) {
        p[0] = i;
        int j0 = 0;
        for (size_t j = 0; j < N; j++)
            minv[j] = INFINITY;
        memset(used, 0, N);
        do {
            used[j0] = 1;
            int i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (int j = 1; j <= n; j++)
                if (!used[j]) {
                    double cur = -w[(size_t)(i0 - 1) * (size_t)n + (size_t)(j - 1)] - u[i0] - v[j];
                    if (cur < minv[j]) {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if (minv[j] < delta) {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            for (int j = 0; j <= n; j++)
                if (used[j]) {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            j0 = j1;
        } while (p[j0] != 0);
        do {
            int j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    double total = 0.0;
    for (int j = 1; j <= n; j++) {
        col_of_row[p[j] - 1] = j - 1;
        total += w[(size_t)(p[j] - 1) * (size_t)n + (size_t)(j - 1)];
    }
    *value = total;
    epm_free(u);
    epm_free(v);
    epm_free(minv);
    epm_free(p);
    epm_free(way);
    epm_free(used);
    return EPM_OK;
}

int epm_ilp_decompose_applies(const epm_ilp_ctx *x)
{
    return x->mode == EPM_MODE_FOLLOW && x->S == 1 && x->E == x->R && x->N == 1 && !x->has_skips && x->L >= 1;
}

epm_status epm_ilp_decompose(const epm_ilp_ctx *x, double deadline, int *rank_of, double *lb)
{
    size_t E = (size_t)x->E, T = (size_t)x->T, L = (size_t)x->L;
    /* w: [L][E][E], layer l's pair savings (layer 0 unused; w[0] is scratch below) */
    double *w = epm_calloc(L * E * E, sizeof *w), *h0 = epm_calloc(E * E, sizeof *h0), *g = epm_calloc(E * E, sizeof *g);
    int *sig = epm_malloc(L * E * sizeof *sig); /* sig[l*E + a] = layer-l expert beside layer-(l-1) a */
    int *pi0 = epm_malloc(E * sizeof *pi0), *tmp = epm_malloc(E * sizeof *tmp);
    epm_status st = EPM_OK;
    if (!w || !h0 || !g || !sig || !pi0 || !tmp) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    double base = x->constant, saving = 0.0, val;
    for (size_t l = 0; l < L; l++) {
        int64_t hot = 0;
        for (size_t e = 0; e < E; e++)
            hot = x->load[l * E + e] > hot ? x->load[l * E + e] : hot;
        base += x->bw * (double)hot;
        const int32_t *ids = epm_trace_ids_const(x->t, (int)l);
        double *wl = w + l * E * E;
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            int m = 0;
            while (m < x->K && row[m] >= 0)
                m++;
            if (!m)
                continue;
            base += x->tw * (double)(2 * m - 1);
            for (int j = 0; j < m; j++) {
                if (l == 0)
                    h0[(size_t)row[j] * E + (size_t)x->home[tok]] += 1.0;
                else
                    wl[(size_t)(x->src[l * T + tok] % x->E) * E + (size_t)row[j]] += 1.0;
            }
        }
        if (l > 0) {
            EPM_CHECK_GOTO(epm_ilp_assign_max(x->E, wl, sig + l * E, &val), st, out);
            saving += val;
        }
    }
    for (size_t tok = 0; tok < T; tok++)
        if (x->last[tok] >= 0) {
            base += x->tw;
            g[(size_t)(x->last[tok] % x->E) * E + (size_t)x->home[tok]] += 1.0;
        }
    EPM_CHECK_GOTO(epm_ilp_assign_max(x->E, h0, pi0, &val), st, out);
    saving += val;
    EPM_CHECK_GOTO(epm_ilp_assign_max(x->E, g, tmp, &val), st, out);
    saving += val;
    *lb = base - x->tw * saving;

    /* pi_0 maximising H + G given the chain (layer 0's w as scratch) */
    EPM_CHECK_GOTO(epm_ilp_chain_hg(x->E, x->L, sig, h0, g, w, pi0, &val), st, out);
    /* close the coupling's gap exactly where the end maps can be searched */
    int done = 0;
    double exact = 0.0;
    /* half the time left at most: the search and the MIP may need the rest */
    double now = epm_now();
    EPM_CHECK_GOTO(
        epm_ilp_exact_chain(x->E, x->L, w, h0, g, sig, pi0, now + 0.5 * (deadline - now), &exact, &done), st, out);
    if (done)
        *lb = base - x->tw * exact;
    for (size_t a = 0; a < E; a++)
        rank_of[a] = pi0[a];
    for (size_t l = 1; l < L; l++)
        for (size_t a = 0; a < E; a++)
            rank_of[l * E + (size_t)sig[l * E + a]] = rank_of[(l - 1) * E + a];
out:
    epm_free(w);
    epm_free(h0);
    epm_free(g);
    epm_free(sig);
    epm_free(pi0);
    epm_free(tmp);
    return st;
}
