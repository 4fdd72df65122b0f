/* epmoe trace stats: how skewed each layer's expert load is, and how much a
 * token's top-1 expert at layer l says about its experts at layer l+1 — the
 * structure a follow-mode placement can exploit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace_internal.h"

typedef struct scratch {
    int64_t *first;   /* [experts + 1] start of each top-1 group in order[] */
    int64_t *order;   /* [tokens] tokens grouped by their top-1 at l */
    int64_t *pairs;   /* [experts] (top-1 at l, chosen expert at l+1) counts of one group */
    int64_t *top;     /* [experts] (top-1 at l, top-1 at l+1) counts of one group */
    int32_t *touched; /* [experts] experts seen at l+1 by the group */
    int64_t *vals;    /* [experts] the group's top counts, to rank */
} scratch;

static void scratch_free(scratch *s)
{
    epm_free(s->first);
    epm_free(s->order);
    epm_free(s->pairs);
    epm_free(s->top);
    epm_free(s->touched);
    epm_free(s->vals);
}

static epm_status scratch_alloc(scratch *s, int experts, int64_t tokens)
{
    size_t e = (size_t)experts;
    s->first = epm_calloc(e + 1, sizeof *s->first);
    s->order = epm_malloc((size_t)(tokens ? tokens : 1) * sizeof *s->order);
    s->pairs = epm_calloc(e, sizeof *s->pairs);
    s->top = epm_calloc(e, sizeof *s->top);
    s->touched = epm_malloc(e * sizeof *s->touched);
    s->vals = epm_malloc(e * sizeof *s->vals);
    if (!s->first || !s->order || !s->pairs || !s->top || !s->touched || !s->vals) {
        scratch_free(s);
        return EPM_ERR_NOMEM;
    }
    return EPM_OK;
}

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Conditional entropy and top-m share between layer l (ids a) and l+1 (ids b). */
static void transition(const epm_trace *t, const int32_t *a, const int32_t *b, int top_m, scratch *s,
                       epm_trace_layer_stats *ls)
{
    int E = t->experts, k = t->k;
    /* Counting sort of tokens by their top-1 at l: one pass, no E x E table,
     * so that 256-expert models cost O(tokens + experts) memory. */
    memset(s->first, 0, (size_t)(E + 1) * sizeof *s->first);
    for (int64_t i = 0; i < t->tokens; i++)
        if (a[i * k] >= 0)
            s->first[a[i * k] + 1]++;
    for (int e = 0; e < E; e++)
        s->first[e + 1] += s->first[e];
    /* pairs is reused as the fill cursor before it counts */
    memcpy(s->pairs, s->first, (size_t)E * sizeof *s->pairs);
    for (int64_t i = 0; i < t->tokens; i++)
        if (a[i * k] >= 0)
            s->order[s->pairs[a[i * k]]++] = i;
    memset(s->pairs, 0, (size_t)E * sizeof *s->pairs);

    double h_sum = 0; /* sum over pairs of -log2 p(b | a) */
    int64_t n_pairs = 0, n_top = 0, n_topm = 0;
    for (int e = 0; e < E; e++) {
        int ntouched = 0;
        int64_t group_pairs = 0;
        for (int64_t g = s->first[e]; g < s->first[e + 1]; g++) {
            const int32_t *row = b + s->order[g] * k;
            for (int j = 0; j < k && row[j] >= 0; j++) {
                if (s->pairs[row[j]] == 0) /* top-1 is among the chosen, so this sees every expert */
                    s->touched[ntouched++] = row[j];
                s->pairs[row[j]]++;
                group_pairs++;
            }
            if (row[0] >= 0)
                s->top[row[0]]++;
        }
        int nv = 0;
        int64_t group_top = 0;
        for (int q = 0; q < ntouched; q++) {
            int32_t x = s->touched[q];
            if (s->pairs[x])
                h_sum -= (double)s->pairs[x] * log2((double)s->pairs[x] / (double)group_pairs);
            if (s->top[x]) {
                s->vals[nv++] = s->top[x];
                group_top += s->top[x];
            }
            s->pairs[x] = 0;
            s->top[x] = 0;
        }
        qsort(s->vals, (size_t)nv, sizeof *s->vals, cmp_desc);
        for (int q = 0; q < nv && q < top_m; q++)
            n_topm += s->vals[q];
        n_pairs += group_pairs;
        n_top += group_top;
    }
    ls->cond_entropy = n_pairs ? h_sum / (double)n_pairs : 0.0;
    if (ls->cond_entropy < 0) /* -0.0 and rounding below zero for a deterministic successor */
        ls->cond_entropy = 0.0;
    ls->topm_share = n_top ? (double)n_topm / (double)n_top : 0.0;
    ls->transitions = n_top;
}

epm_status epm_trace_stats_compute(const epm_trace *t, int top_m, epm_trace_stats **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace stats: out is NULL");
    *out = NULL;
    if (!t)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace stats: trace is NULL");
    if (top_m < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace stats: top_m = %d must be >= 1", top_m);
    /* A caller-built trace has not been through the loader's checks, and every
     * id below indexes an array. */
    EPM_CHECK(epm_trace_check_ids(t, "trace stats"));
    int L = t->layers, E = t->experts, k = t->k;
    epm_trace_stats *s = epm_calloc(1, sizeof *s);
    if (!s)
        return EPM_ERR_NOMEM;
    s->layers = L;
    s->experts = E;
    s->top_m = top_m;
    s->load = epm_calloc((size_t)L * (size_t)E, sizeof *s->load);
    s->layer = epm_calloc((size_t)L, sizeof *s->layer);
    scratch sc = {0};
    if (!s->load || !s->layer || (L > 1 && scratch_alloc(&sc, E, t->tokens) != EPM_OK)) {
        epm_trace_stats_destroy(s);
        return EPM_ERR_NOMEM;
    }
    for (int l = 0; l < L; l++) {
        const int32_t *ids = epm_trace_ids_const(t, l);
        int64_t *load = s->load + (size_t)l * (size_t)E;
        int64_t skipped = 0, total = 0;
        for (int64_t i = 0; i < t->tokens; i++) {
            const int32_t *row = ids + i * k;
            if (row[0] < 0)
                skipped++;
            for (int j = 0; j < k && row[j] >= 0; j++) {
                load[row[j]]++;
                total++;
            }
        }
        epm_trace_layer_stats *ls = &s->layer[l];
        for (int e = 0; e < E; e++)
            if (load[e] > ls->max_load)
                ls->max_load = load[e];
        /* A layer with no load at all is as balanced as it gets. */
        ls->imbalance = total ? (double)ls->max_load * (double)E / (double)total : 1.0;
        ls->skipped_share = t->tokens ? (double)skipped / (double)t->tokens : 0.0;
        if (l + 1 < L)
            transition(t, ids, epm_trace_ids_const(t, l + 1), top_m, &sc, ls);
        s->mean_imbalance += ls->imbalance / L;
        if (ls->transitions > 0) {
            s->mean_cond_entropy += ls->cond_entropy;
            s->mean_topm_share += ls->topm_share;
            s->affinity_layers++;
        }
    }
    if (s->affinity_layers > 0) {
        s->mean_cond_entropy /= s->affinity_layers;
        s->mean_topm_share /= s->affinity_layers;
    }
    if (L > 1)
        scratch_free(&sc);
    *out = s;
    return EPM_OK;
}

void epm_trace_stats_destroy(epm_trace_stats *s)
{
    if (!s)
        return;
    epm_free(s->load);
    epm_free(s->layer);
    epm_free(s);
}
