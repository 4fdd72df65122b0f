/* The next token from a row of logits: transformers' processors in their
 * order (repetition penalty, temperature, top-k, top-p, min-p), then a draw
 * whose uniform comes from (seed, sequence, step) alone. Everything after the
 * penalty is in double; top-k finds its threshold with a heap of k values and
 * top-p its nucleus by quickselect, rather than sorting the vocabulary (129280
 * ids for DeepSeek-V3, every step). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "epmoe/generate.h"

typedef struct cand {
    double key; /* the logit, then its weight: exp((logit - top) / temperature) */
    int32_t id;
} cand;

struct epm_sampler {
    epm_sampling p;
    int V;
    double *z;     /* [V] the logits after the penalty, NaN as -inf */
    cand *c;       /* [V] the candidates */
    double *heap;  /* [min(k, V)] top-k's threshold search */
    uint8_t *seen; /* [V] repetition-penalty marks, cleared after each token */
    int32_t *cnt;  /* [V] times generated, for the frequency penalty, cleared likewise */
    int32_t *stop; /* [n_stop] the stop tokens min_tokens holds back */
    int stop_cap, heap_cap; /* what stop and heap have room for */
};

static int penalised(const epm_sampling *s) { return s->repetition_penalty > 0 && s->repetition_penalty != 1; }

static int counted(const epm_sampling *s) { return s->presence_penalty != 0 || s->frequency_penalty != 0; }

/* the row is changed before the choice (penalties, stop tokens held back): not read as it is */
static int changed(const epm_sampling *s) { return penalised(s) || counted(s) || (s->min_tokens > 0 && s->n_stop > 0); }

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
    if (!(s->repetition_penalty == 0 || (s->repetition_penalty >= EPM_REPETITION_PENALTY_MIN &&
                                         s->repetition_penalty <= EPM_REPETITION_PENALTY_MAX)))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: repetition_penalty = %g: must be in [1e-06, 1e+06] "
                        "(1 or 0: off)", s->repetition_penalty);
    if (!(s->presence_penalty >= -2 && s->presence_penalty <= 2))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: presence_penalty = %g: must be in [-2, 2] (0: off)",
                        s->presence_penalty);
    if (!(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: frequency_penalty = %g: must be in [-2, 2] (0: off)",
                        s->frequency_penalty);
    if (s->min_tokens < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: min_tokens = %d: must be >= 0", s->min_tokens);
    if (s->n_stop < 0 || (s->n_stop > 0 && !s->stop_ids))
        return epm_fail(EPM_ERR_INVALID_ARG, "sampling: %d stop ids, %s", s->n_stop, s->stop_ids ? "set" : "NULL");
    return EPM_OK;
}

epm_status epm_sampler_create(const epm_sampling *s, int vocab, epm_sampler **out)
{
    if (!out)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_create: NULL argument");
    *out = NULL;
    if (vocab < 1)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_create: vocab = %d", vocab);
    epm_sampler *r = epm_calloc(1, sizeof *r);
    if (!r)
        return EPM_ERR_NOMEM;
    r->V = vocab;
    const epm_sampling greedy = {0};
    epm_status st = epm_sampler_set(r, s ? s : &greedy);
    if (st != EPM_OK) {
        epm_sampler_destroy(r);
        return st;
    }
    *out = r;
    return EPM_OK;
}

epm_status epm_sampler_set(epm_sampler *r, const epm_sampling *s)
{
    if (!r || !s)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_set: NULL argument");
    EPM_CHECK(epm_sampling_validate(s));
    const int V = r->V;
    if (s->n_stop > r->stop_cap) {
        int32_t *stop = epm_realloc(r->stop, (size_t)s->n_stop * sizeof *stop);
        if (!stop)
            return EPM_ERR_NOMEM;
        r->stop = stop, r->stop_cap = s->n_stop;
    }
    /* greedy reads the row as it is; anything else works on a copy */
    if ((changed(s) || epm_sampling_random(s)) && !r->z) {
        r->z = epm_malloc((size_t)V * sizeof *r->z);
        r->c = epm_malloc((size_t)V * sizeof *r->c);
        r->seen = epm_calloc((size_t)V, 1);
        r->cnt = epm_calloc((size_t)V, sizeof *r->cnt);
        if (!r->z || !r->c || !r->seen || !r->cnt) {
            epm_free(r->z), epm_free(r->c), epm_free(r->seen), epm_free(r->cnt);
            r->z = NULL, r->c = NULL, r->seen = NULL, r->cnt = NULL;
            return EPM_ERR_NOMEM;
        }
    }
    int heap = s->top_k > 0 && s->top_k < V ? s->top_k : 1;
    if (heap > r->heap_cap) {
        double *h = epm_realloc(r->heap, (size_t)heap * sizeof *h);
        if (!h)
            return EPM_ERR_NOMEM;
        r->heap = h, r->heap_cap = heap;
    }
    if (s->n_stop > 0)
        memcpy(r->stop, s->stop_ids, (size_t)s->n_stop * sizeof *r->stop);
    r->p = *s;
    r->p.stop_ids = NULL;
    return EPM_OK;
}

void epm_sampler_destroy(epm_sampler *s)
{
    if (!s)
        return;
    epm_free(s->z);
    epm_free(s->c);
    epm_free(s->heap);
    epm_free(s->seen);
    epm_free(s->cnt);
    epm_free(s->stop);
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

/* exp(x) for x in [-37.5, 0], to within 2 ulp, in a loop
 * the compiler vectorises (glibc's exp is a call per value, 7 ns): 2^k e^r
 * with k = round(x / ln 2), r = x - k ln 2 in two parts, e^r by its Taylor
 * series to r^13 (|r| <= ln 2 / 2: the next term is below 2^-57), and 2^k
 * built in the exponent bits. */
static double exp_weights(cand *c, int64_t n, double zbest, double t)
{
    /* 1 / t is infinite for a subnormal t (and 0 x inf a NaN): capped, a tie
     * with the top one still weighs 1 */
    const double inv_t = 1 / t < DBL_MAX ? 1 / t : DBL_MAX;
    double mass = 0;
    const double log2e = 1.4426950408889634, ln2_hi = 0.693147180369123816490, ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 0x1.8p52;
#if defined(__clang__) /* clang's UBSan instrumentation can keep it from vectorising: not an error */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpass-failed"
#endif
#pragma omp simd reduction(+ : mass)
    for (int64_t i = 0; i < n; i++) {
        /* x >= -37.5: a candidate is within NEGLIGIBLE x t of the top one,
         * inv_t <= 1 / t, and with t so large that zcut overflowed, logits
         * (floats) are within 2^129 of each other while t > 2^1000 */
        double x = (c[i].key - zbest) * inv_t;
        double kd = x * log2e + shifter; /* round to nearest, k in the low bits */
        int64_t kb;
        memcpy(&kb, &kd, sizeof kb);
        kd -= shifter;
        double r = (x - kd * ln2_hi) - kd * ln2_lo;
        double e = 1.0 / 6227020800.0;
        e = e * r + 1.0 / 479001600.0;
        e = e * r + 1.0 / 39916800.0;
        e = e * r + 1.0 / 3628800.0;
        e = e * r + 1.0 / 362880.0;
        e = e * r + 1.0 / 40320.0;
        e = e * r + 1.0 / 5040.0;
        e = e * r + 1.0 / 720.0;
        e = e * r + 1.0 / 120.0;
        e = e * r + 1.0 / 24.0;
        e = e * r + 1.0 / 6.0;
        e = e * r + 0.5;
        e = e * r + 1.0;
        e = e * r + 1.0;
        int64_t bits = (int64_t)((uint64_t)(kb + 1023) << 52); /* 2^k: k in [-55, 0], a normal number */
        double two_k;
        memcpy(&two_k, &bits, sizeof two_k);
        c[i].key = e * two_k;
        mass += c[i].key;
    }
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
    return mass;
}

/* the candidates' order: larger key first, then lower id (a total order) */
static inline int first(cand a, cand b) { return a.key > b.key || (a.key == b.key && a.id < b.id); }

static inline void swap_c(cand *v, int64_t i, int64_t j)
{
    cand t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* Partitions c[lo, hi) around a median-of-three pivot: [lo, a) come before
 * it, the pivot lands at a, [a + 1, hi) after. Returns a. */
static int64_t partition(cand *c, int64_t lo, int64_t hi)
{
    int64_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (first(c[mid], c[lo]))
        swap_c(c, mid, lo);
    if (first(c[last], c[lo]))
        swap_c(c, last, lo);
    if (first(c[last], c[mid]))
        swap_c(c, last, mid);
    swap_c(c, mid, last); /* the median is the pivot, parked at the end */
    const cand pv = c[last];
    int64_t a = lo;
    for (int64_t i = lo; i < last; i++)
        if (first(c[i], pv))
            swap_c(c, i, a++);
    swap_c(c, a, last);
    return a;
}

static void insertion_sort(cand *c, int64_t lo, int64_t hi)
{
    for (int64_t i = lo + 1; i < hi; i++)
        for (int64_t j = i; j > lo && first(c[j], c[j - 1]); j--)
            swap_c(c, j, j - 1);
}

/* The k-th largest key of c[0, n), 0 < k < n: a min-heap of the k largest
 * seen, which most keys pass with one comparison. */
static double kth_largest(const cand *c, int64_t n, int k, double *heap)
{
    for (int i = 0; i < k; i++) { /* heapify the first k */
        int j = i;
        heap[j] = c[i].key;
        while (j > 0 && heap[(j - 1) / 2] > heap[j]) {
            double t = heap[j];
            heap[j] = heap[(j - 1) / 2];
            heap[(j - 1) / 2] = t;
            j = (j - 1) / 2;
        }
    }
    for (int64_t i = k; i < n; i++) {
        if (!(c[i].key > heap[0]))
            continue;
        double v = c[i].key;
        int j = 0;
        for (;;) { /* sift v down from the root */
            int l = 2 * j + 1, m = l + 1 < k && heap[l + 1] < heap[l] ? l + 1 : l;
            if (l >= k || heap[m] >= v)
                break;
            heap[j] = heap[m];
            j = m;
        }
        heap[j] = v;
    }
    return heap[0];
}

/* The nucleus: reorders c[0, n) and returns m such that c[0, m) are the
 * tokens, in order, whose preceding mass is below `mass` (> 0). */
static int64_t nucleus(cand *c, int64_t n, double mass)
{
    int64_t lo = 0, hi = n;
    double acc = 0; /* the mass of c[0, lo), all kept; acc < mass */
    while (hi - lo > 16) {
        int64_t a = partition(c, lo, hi);
        double before = acc;
        for (int64_t i = lo; i < a; i++)
            before += c[i].key;
        if (before >= mass) { /* the pivot, and all after it, are out */
            hi = a;
            continue;
        }
        acc = before + c[a].key;
        lo = a + 1;
        if (acc >= mass)
            return lo;
    }
    insertion_sort(c, lo, hi);
    for (int64_t i = lo; i < hi; i++) {
        if (acc >= mass)
            return i;
        acc += c[i].key;
    }
    return hi;
}

static epm_status no_token(int64_t seq, int64_t step, int pinf)
{
    return epm_fail(EPM_ERR_FORMAT, "sampling: the logits of sequence %lld at step %lld %s", (long long)seq,
                    (long long)step, pinf ? "hold +inf" : "hold no finite value");
}

/* A weight below 2^-54 of the top token's cannot change a double sum that
 * holds the top token's 1: such tokens are left out of sampling (each one's
 * chance of being drawn would be below 2^-54; all of them, at most V 2^-54 of
 * the mass, 7e-12 at 129280 tokens). exp(-54 ln 2) = 2^-54. */
#define NEGLIGIBLE (54 * 0.69314718055994530942)

epm_status epm_sampler_next(epm_sampler *s, const float *logits, const int32_t *prompt, int64_t nprompt,
                            const int32_t *generated, int64_t ngen, int64_t seq, int64_t step, int32_t *token)
{
    if (!s || !logits || !token || (nprompt > 0 && !prompt) || (ngen > 0 && !generated))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_sampler_next: NULL argument");
    const int V = s->V;
    const epm_sampling *p = &s->p;
    if (!changed(p) && !epm_sampling_random(p)) { /* greedy, straight from the row */
        int best = -1;
        float bv = -INFINITY;
        for (int i = 0; i < V; i++)
            if (logits[i] > bv) /* NaN never is */
                bv = logits[i], best = i;
        if (best < 0 || bv == INFINITY)
            return no_token(seq, step, bv == INFINITY);
        *token = best;
        return EPM_OK;
    }
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
    if (counted(p)) { /* vLLM's order: after the repetition penalty, over the generated tokens */
        for (int64_t i = 0; i < ngen; i++)
            if (generated[i] >= 0 && generated[i] < V)
                s->cnt[generated[i]]++;
        for (int64_t i = 0; i < ngen; i++)
            if (generated[i] >= 0 && generated[i] < V && s->cnt[generated[i]] > 0) {
                z[generated[i]] -= p->frequency_penalty * s->cnt[generated[i]] + p->presence_penalty;
                s->cnt[generated[i]] = 0;
            }
    }
    for (int j = 0; step < p->min_tokens && j < p->n_stop; j++)
        if (s->stop[j] >= 0 && s->stop[j] < V)
            z[s->stop[j]] = -INFINITY;
    int best = 0;
    for (int i = 1; i < V; i++)
        if (z[i] > z[best])
            best = i;
    if (!(z[best] > -INFINITY) || z[best] == INFINITY)
        return no_token(seq, step, z[best] == INFINITY);
    if (!epm_sampling_random(p)) {
        *token = best;
        return EPM_OK;
    }
    /* candidates: the logits within reach of the top one, then the top k of them (ties kept) */
    const double zbest = z[best], zcut = zbest - NEGLIGIBLE * p->temperature;
    cand *c = s->c;
    int64_t n = 0;
    for (int i = 0; i < V; i++)
        if (z[i] >= zcut && z[i] > -INFINITY) /* zcut is -inf where the temperature is huge */
            c[n++] = (cand){z[i], i};
    if (p->top_k > 0 && p->top_k < n) {
        const double kth = kth_largest(c, n, p->top_k, s->heap);
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (c[i].key >= kth)
                c[m++] = c[i];
        n = m;
    }
    /* probabilities relative to the top one (which is always kept), after
     * temperature: the difference first, so that no temperature overflows */
    double mass = exp_weights(c, n, zbest, p->temperature), total = mass;
    const int64_t all = n;
    if (p->top_p > 0 && p->top_p < 1)
        n = nucleus(c, n, p->top_p * mass);
    if (p->min_p > 0) { /* after top-p, as transformers orders them; min-p's ratio is to the top one, w = 1 */
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (c[i].key >= p->min_p)
                c[m++] = c[i];
        n = m;
    }
    if (n < all) { /* top-p or min-p left some out */
        total = 0;
        for (int64_t i = 0; i < n; i++)
            total += c[i].key;
    }
    const double target = uniform(p->seed, p->own_seed ? p->own_index : seq, step) * total;
    double acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].key;
        if (acc > target) {
            *token = c[i].id;
            return EPM_OK;
        }
    }
    if (n < 1) /* the top token has weight 1 and passes every filter */
        return epm_fail(EPM_ERR_INTERNAL, "sampling: no candidate left for sequence %lld at step %lld", (long long)seq,
                        (long long)step);
    *token = c[n - 1].id; /* target rounded up to the total */
    return EPM_OK;
}

epm_status epm_logprobs(const float *logits, int vocab, int32_t token, int n, float *lp, int32_t *top_ids,
                        float *top_lp)
{
    if (!logits || !lp || (n > 0 && (!top_ids || !top_lp)))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_logprobs: NULL argument");
    if (vocab < 1 || token < 0 || token >= vocab || n < 0 || n > EPM_MAX_LOGPROBS)
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_logprobs: token %d of vocab %d, n = %d (0 .. %d)", (int)token, vocab,
                        n, EPM_MAX_LOGPROBS);
    n = n < vocab ? n : vocab;
    float mx = -INFINITY;
    for (int i = 0; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    if (!(mx > -INFINITY) || mx == INFINITY)
        return epm_fail(EPM_ERR_FORMAT, "logprobs: the logits %s", mx == INFINITY ? "hold +inf" : "hold no finite value");
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += logits[i] > -INFINITY ? exp((double)logits[i] - mx) : 0; /* NaN fails the test too */
    const double lse = mx + log(sum);
#define LP(i) (logits[i] > -INFINITY ? (double)logits[i] - lse : -INFINITY)
    *lp = (float)LP(token);
    /* the n best by insertion into a short sorted list (n <= 20) */
#define VAL(i) (isnan(logits[i]) ? -INFINITY : logits[i])
    int m = 0;
    for (int i = 0; i < vocab && n > 0; i++) {
        float v = VAL(i);
        if (m == n && !(v > VAL(top_ids[m - 1])))
            continue; /* equals stay behind the lower ids before them */
        int j = m < n ? m++ : m - 1;
        for (; j > 0 && v > VAL(top_ids[j - 1]); j--)
            top_ids[j] = top_ids[j - 1];
        top_ids[j] = i;
    }
#undef VAL
    for (int j = 0; j < m; j++)
        top_lp[j] = (float)LP(top_ids[j]);
#undef LP
    return EPM_OK;
}
