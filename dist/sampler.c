/* The next token from a row of logits: transformers' processors in their
 * order (repetition penalty, temperature, top-k, top-p, min-p), then a draw
 * whose uniform comes from (seed, sequence, step) alone. Everything after the
 * penalty is in double, and top-k and top-p select by quickselect rather than
 * sorting the vocabulary (129280 ids for DeepSeek-V3, every step). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "epmoe/generate.h"

struct epm_sampler {
    epm_sampling p;
    int V;
    double *z;     /* [V] the processed logits, then their exponentials */
    int32_t *idx;  /* [V] candidate ids */
    uint8_t *seen; /* [V] repetition-penalty marks, cleared after each token */
};

static int penalised(const epm_sampling *s) { return s->repetition_penalty > 0 && s->repetition_penalty != 1; }

int epm_sampling_random(const epm_sampling *s) { return s && s->temperature > 0; }

epm_status epm_sampling_validate(const epm_sampling *s)
{
    if (!s)
        return EPM_OK;
    if (!(s->temperature >= 0 && isfinite(s->temperature)))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: temperature = %g: must be a finite number >= 0 (0: greedy)",
                        s->temperature);
    if (s->top_k < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: top_k = %d: must be >= 0 (0: off)", s->top_k);
    if (!(s->top_p >= 0 && s->top_p <= 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: top_p = %g: must be in (0, 1] (0 or 1: off)", s->top_p);
    if (!(s->min_p >= 0 && s->min_p < 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: min_p = %g: must be in [0, 1) (0: off)", s->min_p);
    if (!(s->repetition_penalty >= 0 && isfinite(s->repetition_penalty)))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: repetition_penalty = %g: must be a finite number > 0 "
                        "(1: off)", s->repetition_penalty);
    return EPM_OK;
}

epm_status epm_sampler_create(const epm_sampling *s, int vocab, epm_sampler **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_create: NULL argument");
    *out = NULL;
    if (vocab < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_create: vocab = %d", vocab);
    EPM_CHECK(epm_sampling_validate(s));
    epm_sampler *r = epm_calloc(1, sizeof *r);
    if (!r)
        return EPM_ERR_NOMEM;
    if (s)
        r->p = *s;
    r->V = vocab;
    r->z = epm_malloc((size_t)vocab * sizeof *r->z);
    r->idx = epm_malloc((size_t)vocab * sizeof *r->idx);
    r->seen = epm_calloc((size_t)vocab, 1);
    if (!r->z || !r->idx || !r->seen) {
        epm_sampler_destroy(r);
        return EPM_ERR_NOMEM;
    }
    *out = r;
    return EPM_OK;
}

void epm_sampler_destroy(epm_sampler *s)
{
    if (!s)
        return;
    epm_free(s->z);
    epm_free(s->idx);
    epm_free(s->seen);
    epm_free(s);
}

/* splitmix64's finaliser: a bijection whose outputs pass BigCrush as a counter hash */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* uniform in [0, 1) */
static double uniform(uint64_t seed, int64_t seq, int64_t step)
{
    uint64_t x = mix(mix(mix(seed) ^ (uint64_t)seq) ^ (uint64_t)step);
    return (double)(x >> 11) * 0x1.0p-53;
}

/* the candidates' order: larger key first, then lower id (a total order) */
static inline int first(const double *key, int32_t a, int32_t b) { return key[a] > key[b] || (key[a] == key[b] && a < b); }

static inline void swap32(int32_t *v, int64_t i, int64_t j)
{
    int32_t t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* Partitions idx[lo, hi) around a median-of-three pivot: [lo, a) come before
 * it, the pivot lands at a, [a + 1, hi) after. Returns a. */
static int64_t partition(const double *key, int32_t *idx, int64_t lo, int64_t hi)
{
    int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (first(key, idx[mid], idx[lo]))
        swap32(idx, mid, lo);
    if (first(key, idx[last], idx[lo]))
        swap32(idx, last, lo);
    if (first(key, idx[last], idx[mid]))
        swap32(idx, last, mid);
    swap32(idx, mid, last); /* the median is the pivot, parked at the end */
    int32_t pv = idx[last];
    int64_t a = lo;
    for (int64_t i = lo; i < last; i++)
        if (first(key, idx[i], pv))
            swap32(idx, i, a++);
    swap32(idx, a, last);
    return a;
}

static void insertion_sort(const double *key, int32_t *idx, int64_t lo, int64_t hi)
{
    for (int64_t i = lo + 1; i < hi; i++)
        for (int64_t j = i; j > lo && first(key, idx[j], idx[j - 1]); j--)
            swap32(idx, j, j - 1);
}

/* Reorders idx[0, n) so that idx[k - 1] is the k-th in order (quickselect). */
static void select_kth(const double *key, int32_t *idx, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n;
    while (hi - lo > 16) {
        int64_t a = partition(key, idx, lo, hi);
        if (a == k - 1)
            return;
        if (a < k - 1)
            lo = a + 1;
        else
            hi = a;
    }
    insertion_sort(key, idx, lo, hi);
}

/* The nucleus: reorders idx[0, n) and returns m such that idx[0, m) are the
 * tokens, in order, whose preceding mass (w) is below `mass` (> 0). */
static int64_t nucleus(const double *w, int32_t *idx, int64_t n, double mass)
{
    int64_t lo = 0, hi = n;
    double acc = 0; /* the mass of idx[0, lo), all kept; acc < mass */
    while (hi - lo > 16) {
        int64_t a = partition(w, idx, lo, hi);
        double before = acc;
        for (int64_t i = lo; i < a; i++)
            before += w[idx[i]];
        if (before >= mass) { /* the pivot, and all after it, are out */
            hi = a;
            continue;
        }
        acc = before + w[idx[a]];
        lo = a + 1;
        if (acc >= mass)
            return lo;
    }
    insertion_sort(w, idx, lo, hi);
    for (int64_t i = lo; i < hi; i++) {
        if (acc >= mass)
            return i;
        acc += w[idx[i]];
    }
    return hi;
}

epm_status epm_sampler_next(epm_sampler *s, const float *logits, const int32_t *prompt, int64_t nprompt,
                            const int32_t *generated, int64_t ngen, int64_t seq, int64_t step, int32_t *token)
{
    if (!s || !logits || !token || (nprompt > 0 && !prompt) || (ngen > 0 && !generated))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_next: NULL argument");
    const int V = s->V;
    const epm_sampling *p = &s->p;
    double *z = s->z;
    for (int i = 0; i < V; i++)
        z[i] = isnan(logits[i]) ? -INFINITY : (double)logits[i];
    if (penalised(p)) {
        const double rp = p->repetition_penalty;
        for (int part = 0; part < 2; part++) {
            const int32_t *ids = part ? generated : prompt;
            for (int64_t i = 0, n = part ? ngen : nprompt; i < n; i++)
                if (ids[i] >= 0 && ids[i] < V && !s->seen[ids[i]]) {
                    s->seen[ids[i]] = 1;
                    z[ids[i]] = z[ids[i]] < 0 ? z[ids[i]] * rp : z[ids[i]] / rp;
                }
        }
        for (int part = 0; part < 2; part++) {
            const int32_t *ids = part ? generated : prompt;
            for (int64_t i = 0, n = part ? ngen : nprompt; i < n; i++)
                if (ids[i] >= 0 && ids[i] < V)
                    s->seen[ids[i]] = 0;
        }
    }
    int best = 0;
    for (int i = 1; i < V; i++)
        if (z[i] > z[best])
            best = i;
    if (!(z[best] > -INFINITY) || z[best] == INFINITY)
        return epm_fail(EPM_ERR_FORMAT, "sampling: the logits of sequence %lld at step %lld %s", (long long)seq,
                        (long long)step, z[best] == INFINITY ? "hold +inf" : "hold no finite value");
    if (!epm_sampling_random(p)) {
        *token = best;
        return EPM_OK;
    }
    /* candidates: the finite logits, then the top k of them (ties kept) */
    int64_t n = 0;
    for (int i = 0; i < V; i++)
        if (z[i] > -INFINITY)
            s->idx[n++] = i;
    if (p->top_k > 0 && p->top_k < n) {
        select_kth(z, s->idx, n, p->top_k);
        const double kth = z[s->idx[p->top_k - 1]];
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (z[s->idx[i]] >= kth)
                s->idx[m++] = s->idx[i];
        n = m;
    }
    /* probabilities relative to the top one (which is always kept), after
     * temperature: the difference first, so that no temperature overflows */
    const double zbest = z[best];
    double mass = 0;
    for (int64_t i = 0; i < n; i++) {
        double w = exp((z[s->idx[i]] - zbest) / p->temperature);
        z[s->idx[i]] = w;
        mass += w;
    }
    if (p->top_p > 0 && p->top_p < 1)
        n = nucleus(z, s->idx, n, p->top_p * mass);
    if (p->min_p > 0) { /* after top-p, as transformers orders them; min-p's ratio is to the top one, w = 1 */
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (z[s->idx[i]] >= p->min_p)
                s->idx[m++] = s->idx[i];
        n = m;
    }
    double total = 0;
    for (int64_t i = 0; i < n; i++)
        total += z[s->idx[i]];
    const double target = uniform(p->seed, seq, step) * total;
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += z[s->idx[i]];
        if (acc > target) {
            *token = s->idx[i];
            return EPM_OK;
        }
    }
    *token = s->idx[n - 1]; /* target rounded up to the total */
    return EPM_OK;
}
