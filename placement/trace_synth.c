/* Synthetic routing traces: skewed expert popularity (Zipf) and cross-layer
 * affinity (a token's top-1 expert at l+1 tends to be one of a few preferred
 * successors of its top-1 at l), reproducible from a seed: splitmix64 only,
 * never libc rand, so the same seed gives the same trace on every libc. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace_internal.h"

enum { SYNTH_MAX_K = 256, SYNTH_MAX_LAYERS = 1 << 16, SYNTH_MAX_EXPERTS = 1 << 16, SYNTH_MAX_SUCCESSORS = 256, REJECT_TRIES = 32 };

void epm_trace_synth_opts_init(epm_trace_synth_opts *o)
{
    memset(o, 0, sizeof *o);
    o->layers = 4;
    o->experts = 8;
    o->k = 2;
    o->tokens = 4096;
    o->tokens_per_seq = 0;
    o->zipf_s = 1.0;
    o->affinity = 0.5;
    o->successors = 2;
    o->seed = 1;
    o->with_weights = 0;
}

static epm_status validate(const epm_trace_synth_opts *o)
{
    if (o->layers < 1 || o->layers > SYNTH_MAX_LAYERS)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'layers' = %d is outside [1, %d]", o->layers,
                        SYNTH_MAX_LAYERS);
    if (o->experts < 1 || o->experts > SYNTH_MAX_EXPERTS)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'experts' = %d is outside [1, %d]", o->experts,
                        SYNTH_MAX_EXPERTS);
    if (o->k < 1 || o->k > o->experts || o->k > SYNTH_MAX_K)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'k' = %d is outside [1, min(experts = %d, %d)]",
                        o->k, o->experts, SYNTH_MAX_K);
    if (o->tokens < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'tokens' = %lld is negative", (long long)o->tokens);
    if (o->tokens_per_seq < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'tokens_per_seq' = %lld is negative",
                        (long long)o->tokens_per_seq);
    if (o->tokens_per_seq > 0 && (o->tokens - 1) / o->tokens_per_seq > INT32_MAX)
        return epm_fail(EPM_ERR_INVALID_ARG,
                        "trace synth: option 'tokens_per_seq' = %lld gives more than 2^31 sequences",
                        (long long)o->tokens_per_seq);
    if (!isfinite(o->zipf_s) || o->zipf_s < 0 || o->zipf_s > 16)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'zipf_s' = %g is outside [0, 16]", o->zipf_s);
    if (!(o->affinity >= 0 && o->affinity <= 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'affinity' = %g is outside [0, 1]", o->affinity);
    if (o->successors < 1 || o->successors > o->experts || o->successors > SYNTH_MAX_SUCCESSORS)
        return epm_fail(EPM_ERR_INVALID_ARG,
                        "trace synth: option 'successors' = %d is outside [1, min(experts = %d, %d)]", o->successors,
                        o->experts, SYNTH_MAX_SUCCESSORS);
    if (o->tokens_per_pass < 0 || (o->tokens_per_pass > 0 && (o->tokens - 1) / o->tokens_per_pass > INT32_MAX))
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'tokens_per_pass' = %lld is negative or gives more "
                        "than 2^31 passes", (long long)o->tokens_per_pass);
    if (o->drift_tokens < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'drift_tokens' = %lld is negative",
                        (long long)o->drift_tokens);
    const int G = o->groups > 1 ? o->groups : 1;
    if (o->groups < 0 || o->groups > o->experts || o->experts % G != 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'groups' = %d must divide experts = %d (0: none)",
                        o->groups, o->experts);
    if (o->topk_groups < 0 || o->topk_groups > G)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'topk_groups' = %d is outside [0, groups = %d]",
                        o->topk_groups, G);
    if (o->topk_groups > 0 && (int64_t)o->topk_groups * (o->experts / G) < o->k)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'topk_groups' = %d leaves %d experts to choose k = "
                        "%d from", o->topk_groups, o->topk_groups * (o->experts / G), o->k);
    if (o->with_weights != 0 && o->with_weights != 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: option 'with_weights' = %d is not 0 or 1",
                        o->with_weights);
    return EPM_OK;
}

/* Uniform in [0, n) (n <= 2^32; the bias of a 53-bit fraction is negligible). */
static int32_t uniform_below(uint64_t *rng, int64_t n) { return (int32_t)(epm_rand_unit(rng) * (double)n); }

typedef struct synth_layer {
    double *pop;    /* [experts] popularity weight */
    double *cdf;    /* [experts] cumulative popularity, by expert id */
    int32_t *succ;  /* [experts * successors] preferred successors here of each expert at the previous layer */
    /* group-limited routing: the groups a token may choose from (allow [groups]) */
    int groups, size;
    char *allow;
} synth_layer;

/* 1 when e is one the token may choose: in an allowed group, not chosen yet */
static int open_to(const synth_layer *sl, const int32_t *row, int n, int32_t e);

/* First expert whose cumulative popularity exceeds u * total. */
static int32_t draw_pop(const synth_layer *sl, int E, uint64_t *rng)
{
    double u = epm_rand_unit(rng) * sl->cdf[E - 1];
    int lo = 0, hi = E - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (sl->cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int in_row(const int32_t *row, int n, int32_t e)
{
    for (int j = 0; j < n; j++)
        if (row[j] == e)
            return 1;
    return 0;
}

/* An expert not yet in row[0..n), by popularity. Rejection is fast for the
 * usual k << experts; the exact walk covers heavy skew with k near experts. */
static int32_t draw_fresh(const synth_layer *sl, int E, const int32_t *row, int n, uint64_t *rng)
{
    for (int t = 0; t < REJECT_TRIES; t++) {
        int32_t e = draw_pop(sl, E, rng);
        if (open_to(sl, row, n, e))
            return e;
    }
    double rem = 0;
    int free_n = 0;
    for (int e = 0; e < E; e++)
        if (open_to(sl, row, n, e)) {
            rem += sl->pop[e];
            free_n++;
        }
    if (rem > 0) {
        double u = epm_rand_unit(rng) * rem;
        int32_t last = -1;
        for (int e = 0; e < E; e++) {
            if (!open_to(sl, row, n, e))
                continue;
            last = e;
            if (u < sl->pop[e])
                return e;
            u -= sl->pop[e];
        }
        return last; /* rounding left u just above the last weight */
    }
    /* every remaining weight underflowed to 0: uniform among them */
    int pick = uniform_below(rng, free_n);
    for (int e = 0; e < E; e++)
        if (open_to(sl, row, n, e) && pick-- == 0)
            return e;
    return -1; /* unreachable: k <= the experts of the allowed groups */
}

static int open_to(const synth_layer *sl, const int32_t *row, int n, int32_t e)
{
    return (!sl->allow || sl->allow[e / sl->size]) && !in_row(row, n, e);
}

/* The groups a token whose top-1 is `first` may choose from: its group, then
 * others by their experts' popularity, `limit` in all (DeepSeek's
 * topk_group, here drawn, where its gate scores them) */
static void allow_groups(synth_layer *sl, int32_t first, int limit, uint64_t *rng)
{
    memset(sl->allow, 0, (size_t)sl->groups);
    sl->allow[first / sl->size] = 1;
    for (int n = 1; n < limit; n++) {
        double total = 0;
        for (int g = 0; g < sl->groups; g++)
            for (int e = g * sl->size; e < (g + 1) * sl->size && !sl->allow[g]; e++)
                total += sl->pop[e];
        double u = epm_rand_unit(rng) * total;
        int pick = -1;
        for (int g = 0; g < sl->groups && (pick < 0 || u >= 0); g++) {
            if (sl->allow[g])
                continue;
            pick = g; /* (the last open group takes what rounding leaves) */
            for (int e = g * sl->size; e < (g + 1) * sl->size; e++)
                u -= sl->pop[e];
        }
        sl->allow[pick] = 1;
    }
}

static int32_t draw_successor(const synth_layer *sl, int m, int32_t prev, uint64_t *rng)
{
    const int32_t *s = sl->succ + (size_t)prev * (size_t)m;
    double total = 0;
    for (int j = 0; j < m; j++)
        total += sl->pop[s[j]];
    if (!(total > 0))
        return s[uniform_below(rng, m)];
    double u = epm_rand_unit(rng) * total;
    for (int j = 0; j < m - 1; j++) {
        if (u < sl->pop[s[j]])
            return s[j];
        u -= sl->pop[s[j]];
    }
    return s[m - 1];
}

/* Which experts are hot: a random permutation of the Zipf weights (per
 * layer, so that the hot expert is not expert 0 in every layer). */
static void draw_popularity(const epm_trace_synth_opts *o, synth_layer *sl, int32_t *perm, uint64_t *rng)
{
    const int E = o->experts;
    for (int e = 0; e < E; e++)
        perm[e] = e;
    for (int e = E - 1; e > 0; e--) {
        int j = uniform_below(rng, e + 1);
        int32_t x = perm[e];
        perm[e] = perm[j];
        perm[j] = x;
    }
    for (int r = 0; r < E; r++)
        sl->pop[perm[r]] = pow((double)(r + 1), -o->zipf_s);
    double acc = 0;
    for (int e = 0; e < E; e++)
        sl->cdf[e] = acc += sl->pop[e];
}

/* Draws one layer's popularity and preferred successors. */
static void build_layer(const epm_trace_synth_opts *o, synth_layer *sl, int32_t *perm, uint64_t *rng)
{
    int E = o->experts, m = o->successors;
    draw_popularity(o, sl, perm, rng);
    /* Preferred successors are drawn uniformly, not by popularity: otherwise
     * every expert would prefer the same hot few and affinity would carry no
     * information. A partial shuffle of any arrangement yields a uniform
     * ordered subset, so perm is not reset between experts. */
    for (int a = 0; a < E; a++) {
        for (int j = 0; j < m; j++) {
            int q = j + uniform_below(rng, E - j);
            int32_t x = perm[j];
            perm[j] = perm[q];
            perm[q] = x;
            sl->succ[(size_t)a * (size_t)m + (size_t)j] = perm[j];
        }
    }
}

static int cmp_float_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Softmax-like gate weights: positive, descending, summing to 1. */
static void draw_weights(float *w, int k, uint64_t *rng)
{
    double sum = 0;
    for (int j = 0; j < k; j++) {
        double v = -log(1.0 - epm_rand_unit(rng)) + 1e-3; /* exponential, never 0 */
        w[j] = (float)v;
        sum += (double)w[j];
    }
    qsort(w, (size_t)k, sizeof *w, cmp_float_desc);
    for (int j = 0; j < k; j++)
        w[j] = (float)((double)w[j] / sum);
}

/* a per-token column (seq_ids, pass_ids) numbering blocks of n tokens */
static epm_status set_blocks(epm_trace *t, int64_t n, epm_status (*set)(epm_trace *, const int32_t *))
{
    int32_t *col = epm_malloc((size_t)(t->tokens ? t->tokens : 1) * sizeof *col);
    if (!col)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < t->tokens; i++)
        col[i] = (int32_t)(i / n);
    const epm_status s = set(t, col);
    epm_free(col);
    return s;
}

epm_status epm_trace_synth(const epm_trace_synth_opts *o, epm_trace **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "trace synth: out is NULL");
    *out = NULL;
    epm_trace_synth_opts defaults;
    if (!o) {
        epm_trace_synth_opts_init(&defaults);
        o = &defaults;
    }
    EPM_CHECK(validate(o));
    int L = o->layers, E = o->experts, k = o->k, m = o->successors;
    epm_trace *t = NULL;
    epm_status s = EPM_OK;
    /* One layer's tables at a time: layer l+1 reads the top-1 of layer l
     * back from the trace, so memory stays O(experts x successors). */
    synth_layer sl;
    sl.pop = epm_malloc((size_t)E * sizeof *sl.pop);
    sl.cdf = epm_malloc((size_t)E * sizeof *sl.cdf);
    sl.succ = epm_malloc((size_t)E * (size_t)m * sizeof *sl.succ);
    sl.groups = o->groups > 1 ? o->groups : 1;
    sl.size = E / sl.groups;
    const int limit = o->topk_groups > 0 ? o->topk_groups : sl.groups;
    sl.allow = limit < sl.groups ? epm_malloc((size_t)sl.groups) : NULL; /* (no limit: never drawn) */
    int32_t *perm = epm_malloc((size_t)E * sizeof *perm);
    if (!sl.pop || !sl.cdf || !sl.succ || !perm || (limit < sl.groups && !sl.allow)) {
        s = EPM_ERR_NOMEM;
        goto out;
    }
    EPM_CHECK_GOTO(epm_trace_create(L, o->tokens, k, E, &t), s, out);
    if (o->with_weights)
        EPM_CHECK_GOTO(epm_trace_weights_alloc(t), s, out);

    uint64_t rng = o->seed;
    for (int l = 0; l < L; l++) {
        build_layer(o, &sl, perm, &rng);
        int32_t *ids = epm_trace_ids(t, l);
        const int32_t *prev = l > 0 ? epm_trace_ids_const(t, l - 1) : NULL;
        float *w = epm_trace_weights_mut(t, l);
        for (int64_t tok = 0; tok < o->tokens; tok++) {
            int32_t *row = ids + (size_t)tok * (size_t)k;
            if (o->drift_tokens > 0 && tok > 0 && tok % o->drift_tokens == 0) /* (drawn only when asked: */
                draw_popularity(o, &sl, perm, &rng); /* a trace without drift is the one it always was) */
            if (prev && epm_rand_unit(&rng) < o->affinity)
                row[0] = draw_successor(&sl, m, prev[(size_t)tok * (size_t)k], &rng);
            else
                row[0] = draw_pop(&sl, E, &rng);
            if (sl.allow)
                allow_groups(&sl, row[0], limit, &rng);
            for (int j = 1; j < k; j++)
                row[j] = draw_fresh(&sl, E, row, j, &rng);
            if (w)
                draw_weights(w + (size_t)tok * (size_t)k, k, &rng);
        }
    }
    if (o->tokens_per_seq > 0)
        s = set_blocks(t, o->tokens_per_seq, epm_trace_set_seq_ids);
    if (s == EPM_OK && o->tokens_per_pass > 0)
        s = set_blocks(t, o->tokens_per_pass, epm_trace_set_pass_ids);
out:
    epm_free(sl.pop);
    epm_free(sl.cdf);
    epm_free(sl.succ);
    epm_free(sl.allow);
    epm_free(perm);
    if (s != EPM_OK) {
        epm_trace_destroy(t);
        return s;
    }
    *out = t;
    return EPM_OK;
}
