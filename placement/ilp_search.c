/* Local search over single-copy placements, used where the MIP is too large
 * (DeepSeek shapes) and to polish an unfinished MIP incumbent. A move swaps
 * two experts of one layer between ranks, or moves one into a free slot; its
 * exact change of epm_plan_objective is computed from the tokens it touches
 * only (inverted indexes), so millions of moves fit in a minute. Candidate
 * moves come from a fixed-seed generator and the budget is counted in moves,
 * so the result depends on the input alone unless the deadline cuts it. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ilp_internal.h"

typedef struct {
    const epm_ilp_ctx *x;
    int *rank_of;
    int64_t *rload;       /* [L * R] */
    int *rcount;          /* [L * R] experts held */
    int *expert_at;       /* [L * R * S] experts held, -1 empty */
    int64_t *occ_start;   /* [L*E + 1] tokens choosing (l, e) */
    int32_t *occ;
    int64_t *use_start;   /* [L*E + 1] (layer, token) whose source is (l, e) */
    int64_t *use;         /* l' * T + tok */
    int64_t *gat_start;   /* [L*E + 1] tokens whose last top-1 is (l, e) */
    int32_t *gat;
    uint32_t *stamp;      /* [T] */
    uint32_t epoch;
} search;

static double tok_traffic(const epm_ilp_ctx *x, const int *rank_of, int l, size_t tok)
{
    const int32_t *row = epm_trace_ids_const(x->t, l) + tok * (size_t)x->K;
    if (row[0] < 0)
        return 0.0;
    int d[256], n = 0;
    size_t E = (size_t)x->E;
    for (int j = 0; j < x->K && row[j] >= 0; j++) {
        int r = rank_of[(size_t)l * E + (size_t)row[j]], seen = 0;
        for (int q = 0; q < n; q++)
            seen |= d[q] == r;
        if (!seen)
            d[n++] = r;
    }
    double s = 0.0;
    if (x->mode == EPM_MODE_HOME) {
        for (int q = 0; q < n; q++)
            s += 2.0 * epm_ilp_cost(x, x->home[tok], d[q]);
    } else {
        int32_t src = x->src[(size_t)l * (size_t)x->T + tok];
        int sr = src < 0 ? -src - 1 : rank_of[src];
        int cr = rank_of[(size_t)l * E + (size_t)row[0]];
        for (int q = 0; q < n; q++)
            s += epm_ilp_cost(x, sr, d[q]) + epm_ilp_cost(x, d[q], cr);
    }
    return s;
}

/* Traffic of every token whose cost depends on where the experts le[0..n) are. */
static double touched(search *s, const int *le, int n)
{
    const epm_ilp_ctx *x = s->x;
    double sum = 0.0;
    size_t T = (size_t)x->T;
    s->epoch++;
    if (!s->epoch) {
        memset(s->stamp, 0, T * sizeof *s->stamp);
        s->epoch = 1;
    }
    int l = le[0] / x->E;
    for (int i = 0; i < n; i++)
        for (int64_t q = s->occ_start[le[i]]; q < s->occ_start[le[i] + 1]; q++) {
            int32_t tok = s->occ[q];
            if (s->stamp[tok] == s->epoch)
                continue;
            s->stamp[tok] = s->epoch;
            sum += tok_traffic(x, s->rank_of, l, (size_t)tok);
        }
    if (x->mode != EPM_MODE_FOLLOW)
        return sum;
    for (int i = 0; i < n; i++) {
        for (int64_t q = s->use_start[le[i]]; q < s->use_start[le[i] + 1]; q++) {
            int64_t v = s->use[q];
            sum += tok_traffic(x, s->rank_of, (int)(v / (int64_t)T), (size_t)(v % (int64_t)T));
        }
        for (int64_t q = s->gat_start[le[i]]; q < s->gat_start[le[i] + 1]; q++) {
            int32_t tok = s->gat[q];
            sum += epm_ilp_cost(x, s->rank_of[le[i]], x->home[tok]);
        }
    }
    return sum;
}

static int64_t layer_max(const search *s, int l)
{
    int64_t mx = 0;
    const int64_t *ld = s->rload + (size_t)l * (size_t)s->x->R;
    for (int r = 0; r < s->x->R; r++)
        mx = ld[r] > mx ? ld[r] : mx;
    return mx;
}

static void place(search *s, int le, int r, int add)
{
    const epm_ilp_ctx *x = s->x;
    int l = le / x->E;
    size_t lr = (size_t)l * (size_t)x->R + (size_t)r;
    s->rload[lr] += add ? x->load[le] : -x->load[le];
    int *slots = s->expert_at + lr * (size_t)x->S;
    if (add) {
        for (int q = 0; q < x->S; q++)
            if (slots[q] < 0) {
                slots[q] = le % x->E;
                break;
            }
        s->rcount[lr]++;
        s->rank_of[le] = r;
    } else {
        for (int q = 0; q < x->S; q++)
            if (slots[q] == le % x->E) {
                slots[q] = -1;
                break;
            }
        s->rcount[lr]--;
    }
}

static epm_status csr(size_t n, const int64_t *count, int64_t **start)
{
    *start = epm_malloc((n + 1) * sizeof **start);
    if (!*start)
        return EPM_ERR_NOMEM;
    (*start)[0] = 0;
    for (size_t i = 0; i < n; i++)
        (*start)[i + 1] = (*start)[i] + count[i];
    return EPM_OK;
}

static void search_free(search *s)
{
    epm_free(s->rload);
    epm_free(s->rcount);
    epm_free(s->expert_at);
    epm_free(s->occ_start);
    epm_free(s->occ);
    epm_free(s->use_start);
    epm_free(s->use);
    epm_free(s->gat_start);
    epm_free(s->gat);
    epm_free(s->stamp);
}

static epm_status search_init(search *s, const epm_ilp_ctx *x, int *rank_of)
{
    memset(s, 0, sizeof *s);
    s->x = x;
    s->rank_of = rank_of;
    size_t L = (size_t)x->L, E = (size_t)x->E, R = (size_t)x->R, T = (size_t)x->T, LE = L * E;
    int64_t *cnt = epm_calloc(LE, sizeof *cnt), *cnt2 = epm_calloc(LE, sizeof *cnt2),
            *cnt3 = epm_calloc(LE, sizeof *cnt3);
    s->rload = epm_calloc(L * R, sizeof *s->rload);
    s->rcount = epm_calloc(L * R, sizeof *s->rcount);
    s->expert_at = epm_malloc(L * R * (size_t)x->S * sizeof *s->expert_at);
    s->stamp = epm_calloc(T ? T : 1, sizeof *s->stamp);
    epm_status st = EPM_OK;
    if (!cnt || !cnt2 || !cnt3 || !s->rload || !s->rcount || !s->expert_at || !s->stamp) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < L * R * (size_t)x->S; i++)
        s->expert_at[i] = -1;
    for (size_t le = 0; le < LE; le++)
        place(s, (int)le, rank_of[le], 1);
    for (size_t l = 0; l < L; l++) {
        const int32_t *ids = epm_trace_ids_const(x->t, (int)l);
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            for (int j = 0; j < x->K && row[j] >= 0; j++)
                cnt[l * E + (size_t)row[j]]++;
            int32_t src = x->src[l * T + tok];
            if (src >= 0 && row[0] >= 0)
                cnt2[src]++;
        }
    }
    for (size_t tok = 0; tok < T; tok++)
        if (x->last[tok] >= 0)
            cnt3[x->last[tok]]++;
    EPM_CHECK_GOTO(csr(LE, cnt, &s->occ_start), st, out);
    EPM_CHECK_GOTO(csr(LE, cnt2, &s->use_start), st, out);
    EPM_CHECK_GOTO(csr(LE, cnt3, &s->gat_start), st, out);
    s->occ = epm_malloc(((size_t)s->occ_start[LE] + 1) * sizeof *s->occ);
    s->use = epm_malloc(((size_t)s->use_start[LE] + 1) * sizeof *s->use);
    s->gat = epm_malloc(((size_t)s->gat_start[LE] + 1) * sizeof *s->gat);
    if (!s->occ || !s->use || !s->gat) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    memset(cnt, 0, LE * sizeof *cnt);
    memset(cnt2, 0, LE * sizeof *cnt2);
    memset(cnt3, 0, LE * sizeof *cnt3);
    for (size_t l = 0; l < L; l++) {
        const int32_t *ids = epm_trace_ids_const(x->t, (int)l);
        for (size_t tok = 0; tok < T; tok++) {
            const int32_t *row = ids + tok * (size_t)x->K;
            for (int j = 0; j < x->K && row[j] >= 0; j++) {
                size_t le = l * E + (size_t)row[j];
                s->occ[s->occ_start[le] + cnt[le]++] = (int32_t)tok;
            }
            int32_t src = x->src[l * T + tok];
            if (src >= 0 && row[0] >= 0)
                s->use[s->use_start[src] + cnt2[src]++] = (int64_t)(l * T + tok);
        }
    }
    for (size_t tok = 0; tok < T; tok++)
        if (x->last[tok] >= 0)
            s->gat[s->gat_start[x->last[tok]] + cnt3[x->last[tok]]++] = (int32_t)tok;
out:
    epm_free(cnt);
    epm_free(cnt2);
    epm_free(cnt3);
    if (st != EPM_OK)
        search_free(s);
    return st;
}

/* Tries moving le1 to rank r2 and, when le2 >= 0, le2 to le1's rank; keeps
 * the change when it lowers the objective. Returns the change kept. */
static double try_move(search *s, int le1, int le2, int r2)
{
    const epm_ilp_ctx *x = s->x;
    int l = le1 / x->E, r1 = s->rank_of[le1];
    int le[2] = {le1, le2};
    int n = le2 >= 0 ? 2 : 1;
    double before = x->bw * (double)layer_max(s, l) + x->tw * touched(s, le, n);
    place(s, le1, r1, 0);
    if (n == 2)
        place(s, le2, r2, 0);
    place(s, le1, r2, 1);
    if (n == 2)
        place(s, le2, r1, 1);
    double after = x->bw * (double)layer_max(s, l) + x->tw * touched(s, le, n);
    double delta = after - before;
    if (delta < -1e-9 * (fabs(before) + 1.0))
        return delta;
    place(s, le1, r2, 0);
    if (n == 2)
        place(s, le2, r1, 0);
    place(s, le1, r1, 1);
    if (n == 2)
        place(s, le2, r2, 1);
    return 0.0;
}

epm_status epm_ilp_search(const epm_ilp_ctx *x, int *rank_of, int64_t max_evals, double deadline,
                          epm_progress_fn progress, void *progress_user, double *obj)
{
    search s;
    EPM_CHECK(search_init(&s, x, rank_of));
    double cur = epm_ilp_total(x, rank_of);
    uint64_t rng = 0x5eedULL ^ ((uint64_t)x->L << 40) ^ ((uint64_t)x->E << 20) ^ (uint64_t)x->R;
    int64_t evals = 0;
    double last_report = epm_now();
    int E = x->E, R = x->R;
    for (int pass = 0; evals < max_evals; pass++) {
        double gained = 0.0;
        for (int l = 0; l < x->L && evals < max_evals; l++) {
            for (int e = 0; e < E && evals < max_evals; e++) {
                /* a few partners per expert and pass: any expert of another
                 * rank, or a free slot */
                for (int tries = 0; tries < 4; tries++, evals++) {
                    int le1 = l * E + e;
                    int r2 = (int)(epm_splitmix64(&rng) % (uint64_t)R);
                    if (r2 == rank_of[le1])
                        continue;
                    size_t lr = (size_t)l * (size_t)R + (size_t)r2;
                    double d;
                    if (s.rcount[lr] < x->S && (epm_splitmix64(&rng) & 1)) {
                        d = try_move(&s, le1, -1, r2);
                    } else {
                        int f = s.expert_at[lr * (size_t)x->S + epm_splitmix64(&rng) % (uint64_t)x->S];
                        if (f < 0)
                            continue;
                        d = try_move(&s, le1, l * E + f, r2);
                    }
                    cur += d;
                    gained += d;
                }
                if ((evals & 1023) == 0) {
                    double now = epm_now();
                    if (now >= deadline) {
                        evals = max_evals;
                        break;
                    }
                    if (progress && now - last_report >= 1.0) {
                        char msg[160];
                        snprintf(msg, sizeof msg, "ilp search: pass %d, layer %d, objective %.6g", pass, l, cur);
                        progress(progress_user, msg);
                        last_report = now;
                    }
                }
            }
        }
        if (gained > -1e-12 * (fabs(cur) + 1.0) && pass > 8)
            break; /* a whole pass without gain: a local optimum for these moves */
    }
    search_free(&s);
    *obj = epm_ilp_total(x, rank_of);
    return EPM_OK;
}
