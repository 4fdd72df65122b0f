/* The exact search behind the follow-mode decomposition (ilp_decompose.c),
 * for one expert a rank and E <= 8 (Mixtral's 8 experts; 8! = 40320
 * permutations).
 *
 * The decomposition's gap is closed by a search over the chain's end map
 * tau (which last-layer expert shares a rank with which layer-0 expert):
 * the savings are
 *   sum_l max D_l + max over tau of [HG(tau) - V(tau)],
 * HG(tau) = max over pi_0 of H + G given tau (an assignment problem), V(tau)
 * = the least total loss (max D_l - D_l(sigma_l), integer token counts) of a
 * chain of sigma_l composing to tau. Every quantity is a count of tokens, so
 * only chains losing less than the incumbent's slack (max H + max G - its HG)
 * can win: the search enumerates each layer's assignments within that loss
 * and runs a shortest-path dynamic programme over the n! end maps, stopping
 * early when every end map is reached at no loss (few tokens: many ties). It
 * gives up at the deadline, leaving the incumbent and the weaker bound. Few
 * planning tokens are where the MIP stalls (a 64-token Mixtral trace: 1.2e-4
 * gap after 40 s; the root LP alone takes 10 s on two cores). */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ilp_internal.h"

enum { EXACT_MAX_N = 8 };

/* Lehmer rank of a permutation of 0..n-1: lexicographic order */
static int perm_rank(const uint8_t *p, int n, const int *fact)
{
    unsigned used = 0;
    int r = 0;
    for (int i = 0; i < n; i++) {
        r += __builtin_popcount(~used & ((1u << p[i]) - 1u)) * fact[n - 1 - i];
        used |= 1u << p[i];
    }
    return r;
}

static int next_perm(uint8_t *p, int n)
{
    int i = n - 2;
    while (i >= 0 && p[i] >= p[i + 1])
        i--;
    if (i < 0)
        return 0;
    int j = n - 1;
    while (p[j] <= p[i])
        j--;
    uint8_t t = p[i];
    p[i] = p[j];
    p[j] = t;
    for (int a = i + 1, b = n - 1; a < b; a++, b--)
        t = p[a], p[a] = p[b], p[b] = t;
    return 1;
}

typedef struct cand {
    int loss, perm;
} cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    return x->loss != y->loss ? (x->loss < y->loss ? -1 : 1) : (x->perm > y->perm) - (x->perm < y->perm);
}

/* The search's tables. An end map tau is a permutation (tau[a] = the
 * layer-l expert on the rank of layer-0 expert a), indexed by its rank. */
typedef struct chain {
    int n, L, N, fact[EXACT_MAX_N + 1];
    uint8_t *perms;       /* [N][n], in rank order */
    cand *cands;          /* each layer's assignments within the loss limit, cheapest first */
    int *cand_at, *ncand; /* [L] */
    int *V, *V2;          /* [N] least loss reaching each end map; INT_MAX: none within the limit */
    int32_t *from, *via;  /* [L][N] the end map and assignment each one was reached from */
    int full_at;          /* the layer after which every end map costs 0 (L: none) */
    double deadline;
} chain;

static void chain_free(chain *c)
{
    epm_free(c->perms);
    epm_free(c->cands);
    epm_free(c->cand_at);
    epm_free(c->ncand);
    epm_free(c->V);
    epm_free(c->V2);
    epm_free(c->from);
    epm_free(c->via);
}

/* Tables and each layer's assignments losing at most B; sum of the layers'
 * best D in *sum_dmax. *ok = 0 at the deadline. */
static epm_status chain_init(chain *c, int n, int L, const double *w, int B, double deadline, double *sum_dmax,
                             int *ok)
{
    memset(c, 0, sizeof *c);
    *ok = 0;
    c->n = n, c->L = L, c->deadline = deadline;
    c->fact[0] = 1;
    for (int i = 1; i <= n; i++)
        c->fact[i] = c->fact[i - 1] * i;
    int N = c->N = c->fact[n];
    size_t nn = (size_t)n * (size_t)n;
    c->perms = epm_malloc((size_t)N * (size_t)n);
    c->cand_at = epm_calloc((size_t)L, sizeof *c->cand_at);
    c->ncand = epm_calloc((size_t)L, sizeof *c->ncand);
    c->V = epm_malloc((size_t)N * sizeof *c->V);
    c->V2 = epm_malloc((size_t)N * sizeof *c->V2);
    c->from = epm_malloc((size_t)L * (size_t)N * sizeof *c->from);
    c->via = epm_malloc((size_t)L * (size_t)N * sizeof *c->via);
    cand *one = epm_malloc((size_t)N * sizeof *one);
    size_t cap = (size_t)N, total = 0;
    c->cands = epm_malloc(cap * sizeof *c->cands);
    if (!c->perms || !c->cand_at || !c->ncand || !c->V || !c->V2 || !c->from || !c->via || !one || !c->cands) {
        epm_free(one);
        return EPM_ERR_NOMEM;
    }
    uint8_t p[EXACT_MAX_N];
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)i;
    for (int q = 0; q < N; q++, next_perm(p, n))
        memcpy(c->perms + (size_t)q * n, p, (size_t)n);
    *sum_dmax = 0.0;
    for (int l = 1; l < L; l++) {
        const double *wl = w + (size_t)l * nn;
        long dmax = LONG_MIN;
        for (int q = 0; q < N; q++) { /* loss holds D_l(q) until dmax is known */
            const uint8_t *s = c->perms + (size_t)q * n;
            double d = 0.0;
            for (int a = 0; a < n; a++)
                d += wl[a * n + s[a]];
            one[q] = (cand){.loss = (int)lround(d), .perm = q};
            dmax = one[q].loss > dmax ? one[q].loss : dmax;
        }
        *sum_dmax += (double)dmax;
        int k = 0;
        for (int q = 0; q < N; q++)
            if (dmax - one[q].loss <= B)
                one[k++] = (cand){.loss = (int)(dmax - one[q].loss), .perm = one[q].perm};
        qsort(one, (size_t)k, sizeof *one, cand_cmp);
        if (total + (size_t)k > cap) {
            while (total + (size_t)k > cap)
                cap *= 2;
            cand *na = epm_realloc(c->cands, cap * sizeof *na);
            if (!na) {
                epm_free(one);
                return EPM_ERR_NOMEM;
            }
            c->cands = na;
        }
        memcpy(c->cands + total, one, (size_t)k * sizeof *one);
        c->cand_at[l] = (int)total;
        c->ncand[l] = k;
        total += (size_t)k;
        if (epm_now() > deadline) {
            epm_free(one);
            return EPM_OK;
        }
    }
    epm_free(one);
    *ok = 1;
    return EPM_OK;
}

/* Least loss (at most B) to every end map, layer by layer; stops early when
 * every end map costs 0 (the rest of the chain can then be the layers'
 * optimal assignments). Returns 0 at the deadline. */
static int chain_dp(chain *c, int B)
{
    int n = c->n, L = c->L, N = c->N;
    for (int q = 0; q < N; q++)
        c->V[q] = INT_MAX;
    c->V[0] = 0; /* the identity: layer 0 */
    c->full_at = L;
    unsigned steps = 0;
    for (int l = 1; l < L && c->full_at == L; l++) {
        const cand *cd = c->cands + c->cand_at[l];
        int *V = c->V, *V2 = c->V2;
        int32_t *from = c->from + (size_t)l * N, *via = c->via + (size_t)l * N;
        for (int q = 0; q < N; q++)
            V2[q] = INT_MAX;
        for (int s0 = 0; s0 < N; s0++) {
            if (V[s0] > B)
                continue;
            const uint8_t *ts = c->perms + (size_t)s0 * n;
            for (int i = 0; i < c->ncand[l] && V[s0] + cd[i].loss <= B; i++) {
                const uint8_t *sg = c->perms + (size_t)cd[i].perm * n;
                uint8_t t[EXACT_MAX_N];
                for (int a = 0; a < n; a++)
                    t[a] = sg[ts[a]];
                int r = perm_rank(t, n, c->fact), v = V[s0] + cd[i].loss;
                if (v < V2[r]) {
                    V2[r] = v;
                    from[r] = s0;
                    via[r] = cd[i].perm;
                }
            }
            if ((++steps & 255) == 0 && epm_now() > c->deadline)
                return 0;
        }
        c->V = V2;
        c->V2 = V;
        int all_zero = 1;
        for (int q = 0; q < N && all_zero; q++)
            all_zero = c->V[q] == 0;
        if (all_zero)
            c->full_at = l;
    }
    return 1;
}

/* The last layer's end map maximising HG - V, with B as the limit of V. */
static epm_status chain_best(chain *c, int B, const double *h0, const double *g, double *hg, int *tmp, int *best_t,
                             double *best, int *ok)
{
    int n = c->n;
    *best_t = -1;
    *best = -INFINITY;
    *ok = 0;
    for (int q = 0; q < c->N; q++) {
        if (c->V[q] > B)
            continue;
        const uint8_t *tq = c->perms + (size_t)q * n;
        for (int a = 0; a < n; a++)
            for (int r = 0; r < n; r++)
                hg[a * n + r] = h0[a * n + r] + g[tq[a] * n + r];
        double val;
        EPM_CHECK(epm_ilp_assign_max(n, hg, tmp, &val));
        if (val - c->V[q] > *best) {
            *best = val - c->V[q];
            *best_t = q;
        }
        if ((q & 1023) == 1023 && epm_now() > c->deadline)
            return EPM_OK;
    }
    *ok = 1;
    return EPM_OK;
}

/* sig of the chain that reaches end map t at the last layer: past full_at
 * the layers' optimal assignments (already in sig) walked backwards, then
 * the recorded steps. */
static epm_status chain_walk(const chain *c, int t, int *sig)
{
    int n = c->n, L = c->L;
    uint8_t cur[EXACT_MAX_N], inv[EXACT_MAX_N];
    memcpy(cur, c->perms + (size_t)t * n, (size_t)n);
    int end = c->full_at < L ? c->full_at : L - 1;
    for (int l = L - 1; l > end; l--) {
        for (int a = 0; a < n; a++)
            inv[sig[l * n + a]] = (uint8_t)a;
        for (int a = 0; a < n; a++)
            cur[a] = inv[cur[a]];
    }
    int at = perm_rank(cur, n, c->fact);
    for (int l = end; l >= 1; l--) {
        const uint8_t *sg = c->perms + (size_t)c->via[(size_t)l * c->N + at] * n;
        for (int a = 0; a < n; a++)
            sig[l * n + a] = sg[a];
        at = c->from[(size_t)l * c->N + at];
    }
    return at == 0 ? EPM_OK : epm_fail(EPM_ERR_INTERNAL, "ilp decompose: the exact chain does not start at layer 0");
}

/* declared in ilp_internal.h */
epm_status epm_ilp_chain_hg(int n, int L, const int *sig, const double *h0, const double *g, double *hg, int *pi0,
                            double *val)
{
    for (int a = 0; a < n; a++) {
        int e = a;
        for (int l = 1; l < L; l++)
            e = sig[l * n + e];
        for (int r = 0; r < n; r++)
            hg[a * n + r] = h0[a * n + r] + g[e * n + r];
    }
    return epm_ilp_assign_max(n, hg, pi0, val);
}

/* The search of the top comment (declared in ilp_internal.h). */
epm_status epm_ilp_exact_chain(int n, int L, const double *w, const double *h0, const double *g, int *sig, int *pi0,
                               double deadline, double *savings, int *done)
{
    *done = 0;
    if (n > EXACT_MAX_N || n < 1 || L < 2)
        return EPM_OK;
    size_t nn = (size_t)n * (size_t)n;
    double *hg = epm_malloc(nn * sizeof *hg);
    int *tmp = epm_malloc((size_t)n * sizeof *tmp), *sig2 = epm_malloc((size_t)L * (size_t)n * sizeof *sig2);
    chain c;
    memset(&c, 0, sizeof c);
    epm_status st = EPM_OK;
    if (!hg || !tmp || !sig2) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    double hmax, gmax, hg_inc, sum_dmax, best;
    int ok, best_t;
    EPM_CHECK_GOTO(epm_ilp_assign_max(n, h0, tmp, &hmax), st, out);
    EPM_CHECK_GOTO(epm_ilp_assign_max(n, g, tmp, &gmax), st, out);
    EPM_CHECK_GOTO(epm_ilp_chain_hg(n, L, sig, h0, g, hg, tmp, &hg_inc), st, out);
    long slack = lround(hmax + gmax - hg_inc); /* counts of tokens: integers */
    if (slack <= 0) /* the incumbent meets the simple bound already */
        goto out;
    int B = slack - 1 > 1 << 20 ? 1 << 20 : (int)(slack - 1); /* a better chain loses at most B */
    EPM_CHECK_GOTO(chain_init(&c, n, L, w, B, deadline, &sum_dmax, &ok), st, out);
    if (!ok)
        goto out;
    /* first the chains that lose nothing: with few tokens the layers' ties
     * usually reach every end map, and then max H + max G is attained */
    memcpy(sig2, sig, (size_t)L * (size_t)n * sizeof *sig2);
    if (!chain_dp(&c, 0))
        goto out;
    EPM_CHECK_GOTO(chain_best(&c, 0, h0, g, hg, tmp, &best_t, &best, &ok), st, out);
    if (!ok || best_t < 0)
        goto out;
    EPM_CHECK_GOTO(chain_walk(&c, best_t, sig2), st, out);
    long left = lround(hmax + gmax - best);
    if (left > 0) { /* then the chains that lose less than what is left */
        int B2 = (int)(left - 1 < B ? left - 1 : B);
        memcpy(sig2, sig, (size_t)L * (size_t)n * sizeof *sig2);
        if (!chain_dp(&c, B2))
            goto out;
        EPM_CHECK_GOTO(chain_best(&c, B2, h0, g, hg, tmp, &best_t, &best, &ok), st, out);
        if (!ok || best_t < 0)
            goto out;
        EPM_CHECK_GOTO(chain_walk(&c, best_t, sig2), st, out);
    }
    /* the chain walked must have the value the programme found, and (as the
     * incumbent's chain loses nothing) at least the incumbent's */
    double got, d = 0.0;
    EPM_CHECK_GOTO(epm_ilp_chain_hg(n, L, sig2, h0, g, hg, tmp, &got), st, out);
    for (int l = 1; l < L; l++)
        for (int a = 0; a < n; a++)
            d += w[(size_t)l * nn + (size_t)a * n + (size_t)sig2[l * n + a]];
    if (fabs(d + got - (sum_dmax + best)) > 0.5 || best + 0.5 < hg_inc) {
        st = epm_fail(EPM_ERR_INTERNAL, "ilp decompose: the exact chain's savings %g, expected %g (incumbent %g)",
                      d + got, sum_dmax + best, sum_dmax + hg_inc);
        goto out;
    }
    memcpy(sig, sig2, (size_t)L * (size_t)n * sizeof *sig);
    memcpy(pi0, tmp, (size_t)n * sizeof *pi0);
    *savings = sum_dmax + best;
    *done = 1;
out:
    chain_free(&c);
    epm_free(hg);
    epm_free(tmp);
    epm_free(sig2);
    return st;
}

