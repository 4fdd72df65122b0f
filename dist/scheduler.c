/* The pass scheduler of `epmoe run` (scheduler.h). */
#include "scheduler.h"

#include <math.h>
#include <stdlib.h>

enum { WAITING, PREFILLING, DECODING, KEPT, ENDED }; /* KEPT: ended, its rows kept for prefixes */

struct epm_sched {
    epm_sched_opts o;
    uint8_t *state;     /* [batch] */
    int *done;          /* [batch] prompt tokens prefilled */
    int *places;        /* [ranks] */
    int *held;          /* [ranks] sequences prefilling or decoding */
    int *waiting;       /* [ranks] first sequence not yet admitted (batch: none) */
    int64_t *budget;    /* [ranks] prompt tokens left to a pass */
    int64_t *used;      /* [ranks] pool positions the held sequences reserve (shared pool: [0]) */
    int *decodes;       /* [batch] decode passes run: output tokens fed */
    int64_t *kept;      /* [ranks] rows the kept sequences hold (shared pool: [0]) */
    int64_t *cap;       /* [ranks] what held reserves and kept rows may take (shared pool: [0]) */
    int64_t *last_use;  /* [batch] when a kept sequence ended or last gave a prefix (tick) */
    int64_t tick;
    int32_t *admitted, *dec, *cached, *donor, *evicted, *evict_from;
    epm_sched_piece *pre;
    int64_t index;
};

int epm_run_places(int batch, int ranks, int max_num_seqs, int q)
{
    const int homes = batch / ranks + (q < batch % ranks), M = max_num_seqs;
    int p = M > 0 ? M / ranks + (q < M % ranks) : homes;
    p = p < 1 ? 1 : p;
    return p > homes ? homes : p;
}

void epm_sched_destroy(epm_sched *s)
{
    if (!s)
        return;
    epm_free(s->state);
    epm_free(s->done);
    epm_free(s->places);
    epm_free(s->held);
    epm_free(s->waiting);
    epm_free(s->budget);
    epm_free(s->used);
    epm_free(s->decodes);
    epm_free(s->kept);
    epm_free(s->cap);
    epm_free(s->last_use);
    epm_free(s->evicted);
    epm_free(s->evict_from);
    epm_free(s->admitted);
    epm_free(s->cached);
    epm_free(s->donor);
    epm_free(s->dec);
    epm_free(s->pre);
    epm_free(s);
}

static int by_size_down(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

/* What a rank's held reserves and kept rows may take: its pool (vLLM's
 * blocks, whose free ones keep their rows until taken), else the reserves
 * of its places' largest sequences (a shared pool's: every rank's): the
 * K/V memory epm_run checks for. */
static epm_status keep_caps(epm_sched *s)
{
    const int B = s->o.batch, R = s->o.ranks;
    int64_t *v = epm_malloc(((size_t)B / (size_t)R + 1) * sizeof *v);
    if (!v)
        return EPM_ERR_NOMEM;
    for (int q = 0; q < R; q++) {
        int n = 0;
        for (int i = q; i < B; i += R)
            v[n++] = s->o.reserve[i];
        qsort(v, (size_t)n, sizeof *v, by_size_down);
        int64_t most = 0;
        for (int k = 0; k < s->places[q] && k < n; k++)
            most += v[k];
        s->cap[s->o.shared_pool ? 0 : q] += most;
    }
    for (int q = 0; q < R && s->o.pool > 0; q++)
        s->cap[q] = s->o.pool;
    epm_free(v);
    return EPM_OK;
}

epm_status epm_sched_create(const epm_sched_opts *o, epm_sched **out)
{
    *out = NULL;
    if (o->batch < 1 || o->ranks < 1 || !o->lens || o->max_num_seqs < 0 || o->chunk < 0 || o->pool < 0 ||
        ((o->pool > 0 || o->prefix_caching) && !o->reserve) || (o->prefix_caching && !o->prompts))
        return epm_fail(EPM_ERR_INVALID_ARG, "scheduler: batch %d, ranks %d, max_num_seqs %d, chunk %lld, pool %lld%s",
                        o->batch, o->ranks, o->max_num_seqs, (long long)o->chunk, (long long)o->pool,
                        (o->pool > 0 || o->prefix_caching) && !o->reserve ? " without reserves"
                        : o->prefix_caching && !o->prompts ? ", prefix caching without prompts" : "");
    epm_sched *s = epm_calloc(1, sizeof *s);
    if (!s)
        return EPM_ERR_NOMEM;
    const size_t B = (size_t)o->batch, R = (size_t)o->ranks;
    s->o = *o;
    s->state = epm_calloc(B, 1);
    s->done = epm_calloc(B, sizeof *s->done);
    s->places = epm_malloc(R * sizeof *s->places);
    s->held = epm_calloc(R, sizeof *s->held);
    s->waiting = epm_malloc(R * sizeof *s->waiting);
    s->budget = epm_malloc(R * sizeof *s->budget);
    s->used = epm_calloc(R, sizeof *s->used);
    s->admitted = epm_malloc(B * sizeof *s->admitted);
    s->cached = epm_malloc(B * sizeof *s->cached);
    s->donor = epm_malloc(B * sizeof *s->donor);
    s->dec = epm_malloc(B * sizeof *s->dec);
    s->pre = epm_malloc(B * sizeof *s->pre);
    s->decodes = epm_calloc(B, sizeof *s->decodes);
    s->kept = epm_calloc(R, sizeof *s->kept);
    s->cap = epm_calloc(R, sizeof *s->cap);
    s->last_use = epm_calloc(B, sizeof *s->last_use);
    s->evicted = epm_malloc(B * sizeof *s->evicted);
    s->evict_from = epm_malloc((B + 1) * sizeof *s->evict_from);
    if (!s->state || !s->done || !s->places || !s->held || !s->waiting || !s->budget || !s->used || !s->admitted ||
        !s->cached || !s->donor || !s->dec || !s->pre || !s->decodes || !s->kept || !s->cap || !s->last_use ||
        !s->evicted || !s->evict_from) {
        epm_sched_destroy(s);
        return EPM_ERR_NOMEM;
    }
    for (int q = 0; q < o->ranks; q++) {
        s->places[q] = epm_run_places(o->batch, o->ranks, o->max_num_seqs, q);
        s->waiting[q] = q < o->batch ? q : o->batch;
    }
    for (int i = 0; i < o->batch; i++) {
        if (o->lens[i] < 1) {
            epm_sched_destroy(s);
            return epm_fail(EPM_ERR_INVALID_ARG, "scheduler: sequence %d is empty", i);
        }
        if (o->pool > 0 && !(o->reserve[i] >= o->lens[i] && o->reserve[i] <= o->pool)) {
            const long long need = (long long)o->reserve[i];
            epm_sched_destroy(s);
            return epm_fail(EPM_ERR_INVALID_ARG, "scheduler: sequence %d reserves %lld positions, %s", i, need,
                            need > o->pool ? "more than the pool holds" : "fewer than its prompt");
        }
        if (o->arrival && !(isfinite(o->arrival[i]) && o->arrival[i] >= (i ? o->arrival[i - 1] : 0))) {
            const double a = o->arrival[i];
            epm_sched_destroy(s);
            if (i == 0 || !isfinite(a))
                return epm_fail(EPM_ERR_INVALID_ARG, "scheduler: sequence %d arrives at %g s (a finite time >= 0)",
                                i, a);
            return epm_fail(EPM_ERR_INVALID_ARG, "scheduler: sequence %d arrives at %g s, before sequence %d "
                            "(arrivals are in order)", i, a, i - 1);
        }
    }
    if (o->prefix_caching && keep_caps(s) != EPM_OK) {
        epm_sched_destroy(s);
        return EPM_ERR_NOMEM;
    }
    *out = s;
    return EPM_OK;
}

/* the K/V rows sequence j has from earlier passes: its prompt's, then its fed outputs' */
static int rows_of(const epm_sched *s, int j) { return s->done[j] + s->decodes[j]; }

/* Sequence i's longest prompt prefix whose K/V rows a held or kept
 * sequence (its rank's, or any with shared caches) has from earlier passes,
 * short of i's last token (settled: not one still prefilling); its donor
 * in *donor (-1: none). Ties: the first. */
static int prefix_donor(const epm_sched *s, int i, int settled, int *donor)
{
    const int B = s->o.batch, R = s->o.ranks, *lens = s->o.lens;
    const int32_t *a = s->o.prompts[i];
    int best = 0;
    *donor = -1;
    for (int j = s->o.shared_pool ? 0 : i % R; j < B; j += s->o.shared_pool ? 1 : R) {
        if (j == i || (s->state[j] != PREFILLING && s->state[j] != DECODING && s->state[j] != KEPT) ||
            (settled && s->state[j] == PREFILLING))
            continue;
        /* (its outputs only where the caller gives them) */
        const int has = s->o.outputs ? rows_of(s, j) : s->done[j];
        const int most = lens[i] - 1 < has ? lens[i] - 1 : has, lj = lens[j];
        const int32_t *b = s->o.prompts[j], *out = s->o.outputs ? s->o.outputs[j] : NULL;
        int k = 0;
        while (k < most && a[k] == (k < lj ? b[k] : out[k - lj]))
            k++;
        if (k > best)
            best = k, *donor = j;
    }
    return best;
}

/* With prefix caching: how many more prompt positions sequence i would
 * find once a held sequence that is still prefilling them has (its
 * rank's, or any with shared caches) than the sequences done prefilling
 * give it. Measured against those, not against the part in flight, a
 * sequence that waits goes on waiting until the whole shared span is
 * there, and then computes none of it. */
static int wait_gain(const epm_sched *s, int i)
{
    const int B = s->o.batch, R = s->o.ranks, *lens = s->o.lens;
    const int32_t *a = s->o.prompts[i];
    int donor, most = 0;
    for (int j = s->o.shared_pool ? 0 : i % R; j < B; j += s->o.shared_pool ? 1 : R) {
        if (j == i || s->state[j] != PREFILLING)
            continue;
        const int32_t *b = s->o.prompts[j];
        const int lim = lens[i] - 1 < lens[j] ? lens[i] - 1 : lens[j];
        int k = 0;
        while (k < lim && a[k] == b[k])
            k++;
        most = k > s->done[j] && k > most ? k : most; /* (still to come) */
    }
    return most > 0 ? most - prefix_donor(s, i, 1, &donor) : 0;
}

/* Room for a reserve of need positions in what rank q's (or the shared)
 * held and kept sequences may take. A kept donor goes first: its rows are
 * handed over (the admitted sequence's caches grow from them), so its
 * prefix stays, now held; then the least recently used kept sequences. A
 * kept donor that is all prefix (a conversation's last turn) is handed
 * over whether room is short or not: nothing of it is lost. */
static void make_room(epm_sched *s, int q, int64_t need, int donor, int cached, int *ne)
{
    const int B = s->o.batch, R = s->o.ranks, qq = s->o.shared_pool ? 0 : q;
    int whole = donor >= 0 && s->state[donor] == KEPT && cached == rows_of(s, donor);
    while (whole || (s->used[qq] + s->kept[qq] + need > s->cap[qq] && s->kept[qq] > 0)) {
        const int handed = donor >= 0 && s->state[donor] == KEPT;
        whole = 0;
        int lru = handed ? donor : -1;
        for (int j = s->o.shared_pool ? 0 : q; j < B && !handed; j += s->o.shared_pool ? 1 : R)
            if (s->state[j] == KEPT && (lru < 0 || s->last_use[j] < s->last_use[lru]))
                lru = j;
        s->state[lru] = ENDED;
        s->kept[qq] -= rows_of(s, lru);
        s->evicted[(*ne)++] = lru;
    }
}

int epm_sched_end(epm_sched *s, int seq)
{
    if (!s || seq < 0 || seq >= s->o.batch || (s->state[seq] != PREFILLING && s->state[seq] != DECODING))
        return -1;
    const int qq = s->o.shared_pool ? 0 : seq % s->o.ranks;
    s->held[seq % s->o.ranks]--;
    if (s->o.pool > 0 || s->o.prefix_caching)
        s->used[qq] -= s->o.reserve[seq];
    if (!s->o.prefix_caching) {
        s->state[seq] = ENDED;
        return 0;
    }
    s->state[seq] = KEPT;
    s->kept[qq] += rows_of(s, seq);
    s->last_use[seq] = ++s->tick;
    return rows_of(s, seq);
}

int epm_sched_next(epm_sched *s, double now, epm_sched_pass *p)
{
    const int B = s->o.batch, R = s->o.ranks;
    const int *lens = s->o.lens;
    /* the prompts whose last piece ran decode from now on */
    int left = 0;
    for (int i = 0; i < B; i++) {
        if (s->state[i] == PREFILLING && s->done[i] == lens[i])
            s->state[i] = DECODING;
        left |= s->state[i] != ENDED && s->state[i] != KEPT;
    }
    if (!left)
        return 0;
    /* each home rank fills its free places with its next waiting sequences that have arrived, in
     * order (ascending, as the pass's arrays are), as far as its pool allows: a rank's next one
     * that does not fit, or that waits for a prefix in flight, holds back its later ones (first
     * come, first served); a shared pool's, every later one */
    const double *arr = s->o.arrival;
    int na = 0, ne = 0;
    for (int i = 0; i < B; i++) {
        const int q = i % R;
        if (i == s->waiting[q] && s->held[q] < s->places[q] && (!arr || arr[i] <= now)) {
            int64_t *u = &s->used[s->o.shared_pool ? 0 : q];
            if (s->o.pool > 0 && *u + s->o.reserve[i] > s->o.pool) { /* (kept rows never hold one back) */
                if (s->o.shared_pool)
                    break;
                continue;
            }
            int donor = -1, cached = 0;
            s->evict_from[na] = ne; /* (its evictions from here; rewritten by the next if it waits) */
            if (s->o.prefix_caching) {
                if (s->o.defer_min > 0 && wait_gain(s, i) >= s->o.defer_min) { /* it waits for them */
                    if (s->o.shared_pool)
                        break;
                    continue;
                }
                cached = prefix_donor(s, i, 0, &donor);
                make_room(s, q, s->o.reserve[i], donor, cached, &ne);
                if (donor >= 0)
                    s->last_use[donor] = ++s->tick;
            }
            if (s->o.pool > 0 || s->o.prefix_caching)
                *u += s->o.reserve[i];
            s->state[i] = PREFILLING;
            s->done[i] = cached;
            s->cached[na] = cached;
            s->donor[na] = donor;
            s->admitted[na++] = i;
            s->waiting[q] += R;
            s->held[q]++;
        }
    }
    s->evict_from[na] = ne;
    /* each rank's prefilling sequences, in order, take up to its chunk of prompt tokens */
    for (int q = 0; q < R; q++)
        s->budget[q] = s->o.chunk > 0 ? s->o.chunk : INT64_MAX;
    if (s->o.chunk > 0 && s->o.chunk_counts_decode && !s->o.separate_prefill)
        for (int i = 0; i < B; i++) /* (a rank whose decode tokens fill its budget prefills nothing this pass) */
            if (s->state[i] == DECODING && s->budget[i % R] > 0)
                s->budget[i % R]--;
    int np = 0, nd = 0;
    int64_t pt = 0;
    for (int i = 0; i < B; i++) {
        int64_t *b = &s->budget[i % R];
        if (s->state[i] != PREFILLING || *b == 0)
            continue;
        int take = lens[i] - s->done[i];
        take = *b < take ? (int)*b : take;
        s->pre[np++] = (epm_sched_piece){i, s->done[i], s->done[i] + take};
        s->done[i] += take;
        *b -= take;
        pt += take;
    }
    for (int i = 0; i < B && (np == 0 || !s->o.separate_prefill); i++)
        if (s->state[i] == DECODING) {
            s->dec[nd++] = i;
            s->decodes[i]++;
        }
    double wake = 0;
    if (np == 0 && nd == 0) { /* all that is left has yet to arrive: the first of it wakes the run */
        wake = INFINITY;
        for (int q = 0; q < R; q++)
            if (arr && s->waiting[q] < B && arr[s->waiting[q]] < wake)
                wake = arr[s->waiting[q]];
    }
    *p = (epm_sched_pass){s->admitted, na, s->cached, s->donor, s->evicted, s->evict_from, s->pre, np, pt, s->dec, nd,
                          s->index, wake};
    s->index += np > 0 || nd > 0;
    return 1;
}
