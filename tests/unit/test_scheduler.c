/* The pass scheduler of epmoe run (dist/scheduler.c): two schedules worked out
 * by hand (mixed and separate prefill), and on random batches the rules
 * every schedule keeps: each prompt token prefilled once, in order; a
 * rank's prompt tokens in a pass within its chunk (less its decode tokens
 * where the budget counts them); a rank's sequences held
 * within its places, admitted in order; a sequence decodes in the pass
 * after its prompt's last piece and each pass after until it ends, once
 * per token; with separate prefill no pass holds both kinds; with arrivals,
 * none admitted before it arrives, none left waiting that arrived and has a
 * place, and an empty pass only when nothing is held; with a K/V pool,
 * the held sequences' reserves within it and none left waiting that would
 * fit (nor, in a shared pool, behind none that does not). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "scheduler.h"

/* After pass p: each sequence that made a token (its prompt's last piece,
 * or a decode step) counts it, and those that reach caps[s] end (ended[s]
 * set where given). */
static void count_tokens(epm_sched *s, const epm_sched_pass *p, const int *lens, const int *caps, int *gen,
                         int *ended)
{
    for (int i = 0; i < p->n_pre + p->n_dec; i++) {
        const int q = i < p->n_pre ? p->pre[i].seq : p->dec[i - p->n_pre];
        if (i < p->n_pre && p->pre[i].to < lens[q])
            continue;
        if (++gen[q] >= caps[q]) {
            epm_sched_end(s, q);
            if (ended)
                ended[q] = 1;
        }
    }
}

/* Runs a schedule to its end, sequence s ending after caps[s] tokens (its
 * prompt's last piece gives the first), and writes each pass as
 * "a<admitted> p<seq>:<from>-<to> d<decoding>;" into out. Each pass takes
 * one second; an empty one (nothing arrived) is "w<wake>;" and the clock
 * jumps there. */
static int describe(const epm_sched_opts *o, const int *caps, char *out, size_t cap)
{
    epm_sched *s = NULL;
    assert_int_equal(epm_sched_create(o, &s), EPM_OK);
    int gen[64] = {0}, passes = 0;
    size_t at = 0;
    double now = 0;
    out[0] = 0;
    epm_sched_pass p;
    while (epm_sched_next(s, now, &p)) {
        if (p.n_pre == 0 && p.n_dec == 0) {
            assert_true(o->arrival && p.n_admitted == 0 && p.wake > now);
            at += (size_t)snprintf(out + at, cap - at, "w%g;", p.wake);
            now = p.wake;
            assert_int_equal(p.index, passes);
            continue;
        }
        now += 1;
        at += (size_t)snprintf(out + at, cap - at, "a");
        for (int i = 0; i < p.n_admitted; i++) {
            if (i)
                at += (size_t)snprintf(out + at, cap - at, ",");
            for (int e = p.evict_from[i]; e < p.evict_from[i + 1]; e++) /* kept rows dropped for it: "-seq," */
                at += (size_t)snprintf(out + at, cap - at, "-%d,", p.evicted[e]);
            at += (size_t)snprintf(out + at, cap - at, "%d", p.admitted[i]);
            if (p.cached[i] > 0) /* a prefix copied: "(positions of donor)" */
                at += (size_t)snprintf(out + at, cap - at, "(%d of %d)", p.cached[i], p.donor[i]);
            else
                assert_int_equal(p.donor[i], -1);
        }
        for (int i = 0; i < p.n_pre; i++)
            at += (size_t)snprintf(out + at, cap - at, " p%d:%d-%d", p.pre[i].seq, p.pre[i].from, p.pre[i].to);
        at += (size_t)snprintf(out + at, cap - at, " d");
        for (int i = 0; i < p.n_dec; i++)
            at += (size_t)snprintf(out + at, cap - at, "%s%d", i ? "," : "", p.dec[i]);
        at += (size_t)snprintf(out + at, cap - at, ";");
        count_tokens(s, &p, o->lens, caps, gen, NULL);
        assert_int_equal(p.index, passes++);
        assert_true(passes < 1000);
    }
    epm_sched_destroy(s);
    return passes;
}

/* One rank, two places, chunks of 2: sequence 0 decodes in the passes of
 * sequence 1's chunks, and sequence 2 takes the place of both once they end. */
static void test_mixed_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 3, 2}, caps[] = {3, 1, 1};
    const epm_sched_opts o = {3, lens, 1, 2, 2, 0, NULL, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    char got[512];
    assert_int_equal(describe(&o, caps, got, sizeof got), 4);
    assert_string_equal(got, "a0,1 p0:0-2 d;a p1:0-2 d0;a p1:2-3 d0;a2 p2:0-2 d;");
}

/* The same batch with a budget that counts decode tokens (vLLM's
 * max_num_batched_tokens): sequence 0's decode token leaves one of the two
 * to sequence 1's chunks, which take a pass more. */
static void test_budget_counts_decode_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 3, 2}, caps[] = {3, 1, 1};
    const epm_sched_opts o = {3, lens, 1, 2, 2, 0, NULL, 1, NULL, 0, 0, NULL, 0, NULL, 0};
    char got[512];
    assert_int_equal(describe(&o, caps, got, sizeof got), 5);
    assert_string_equal(got, "a0,1 p0:0-2 d;a p1:0-1 d0;a p1:1-2 d0;a2 p1:2-3 p2:0-1 d;a p2:1-2 d;");
}

/* The same batch with separate prefill: decoding waits for sequence 1's
 * chunks, and for sequence 2's, admitted as sequence 1 ends. */
static void test_separate_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 3, 2}, caps[] = {3, 1, 1};
    const epm_sched_opts o = {3, lens, 1, 2, 2, 1, NULL, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    char got[512];
    assert_int_equal(describe(&o, caps, got, sizeof got), 6);
    assert_string_equal(got, "a0,1 p0:0-2 d;a p1:0-2 d;a p1:2-3 d;a2 p2:0-2 d;a d0;a d0;");
}

/* Two ranks, one place each (max_num_seqs 2), chunks of 2: rank 1's
 * sequence 1 ends at its first token and sequence 3 is admitted at once;
 * rank 0's sequence 2 waits for sequence 0. Whole prompts without a chunk. */
static void test_two_ranks_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {3, 2, 4, 1}, caps[] = {2, 1, 3, 2};
    epm_sched_opts o = {4, lens, 2, 2, 2, 0, NULL, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    char got[512];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-2 p1:0-2 d;a3 p0:2-3 p3:0-1 d;a d0,3;a2 p2:0-2 d;a p2:2-4 d;a d2;a d2;");
    o.chunk = 0;
    o.max_num_seqs = 0; /* all at once, whole prompts */
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1,2,3 p0:0-3 p1:0-2 p2:0-4 p3:0-1 d;a d0,2,3;a d2;");
}

/* Arrivals, one rank, one place: sequence 1 arrives while 0 decodes and
 * waits for its place; sequence 2 arrives after both ended, and the run
 * idles until then. */
static void test_arrivals_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 3, 1}, caps[] = {3, 1, 2};
    static const double arrival[] = {0, 1.5, 10};
    const epm_sched_opts o = {3, lens, 1, 1, 0, 0, arrival, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-2 d;a d0;a d0;a1 p1:0-3 d;w10;a2 p2:0-1 d;a d2;");
    /* two places: sequence 1 is admitted in the first pass that begins after it arrives */
    const epm_sched_opts o2 = {3, lens, 1, 2, 0, 0, arrival, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    describe(&o2, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-2 d;a d0;a1 p1:0-3 d0;w10;a2 p2:0-1 d;a d2;");
}

/* A K/V pool (reserves: prompt + output cap), one rank holding all three:
 * of 9, sequences 0 and 1 fit and 2 takes 1's positions once it ends; of
 * 8, sequence 1 does not fit beside 0 and holds back 2 (first come, first
 * served) until 0 ends. */
static void test_pool_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 3, 2}, caps[] = {3, 1, 1};
    static const int64_t reserve[] = {5, 4, 3};
    epm_sched_opts o = {3, lens, 1, 0, 0, 0, NULL, 0, reserve, 9, 0, NULL, 0, NULL, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-2 p1:0-3 d;a2 p2:0-2 d0;a d0;");
    o.pool = 8;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-2 d;a d0;a d0;a1,2 p1:0-3 p2:0-2 d;");
}

/* Two ranks, each homing two sequences, pools of 8: in home mode rank 1
 * holds both of its own while rank 0's second (5) waits for its first (4);
 * follow mode's one pool holds 0 and 1, and 2, which does not fit beside 0,
 * holds back 3, which would (first come, first served across the ranks),
 * until 0 ends. */
static void test_shared_pool_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {2, 2, 2, 2}, caps[] = {2, 1, 3, 1};
    static const int64_t reserve[] = {4, 3, 5, 3};
    epm_sched_opts o = {4, lens, 2, 0, 0, 0, NULL, 0, reserve, 8, 0, NULL, 0, NULL, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1,3 p0:0-2 p1:0-2 p3:0-2 d;a d0;a2 p2:0-2 d;a d2;a d2;");
    o.shared_pool = 1;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-2 p1:0-2 d;a d0;a2,3 p2:0-2 p3:0-2 d;a d2;a d2;");
}

/* Prefix caching, one rank, two places: sequence 2 is admitted as 1 ends
 * and copies 5 of its 6 prompt positions from 0 (its last is computed for
 * its first token's logits); 1's shorter shared prefix loses to 0's. */
static void test_prefix_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {6, 5, 6}, caps[] = {5, 1, 1};
    static const int32_t p0[] = {1, 2, 3, 4, 5, 6}, p1[] = {1, 2, 3, 9, 9}, p2[] = {1, 2, 3, 4, 5, 6};
    static const int32_t *const prompts[] = {p0, p1, p2};
    static const int64_t reserve[] = {11, 6, 7}; /* (prompts and outputs: 18 positions for the two places) */
    epm_sched_opts o = {3, lens, 1, 2, 0, 0, NULL, 0, reserve, 0, 0, prompts, 0, NULL, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-6 p1:0-5 d;a2 p2:0-6 d0;a d0;a d0;a d0;");
    /* (1 ended and keeps its 5 rows, which 2's reserve needs: they are dropped for it) */
    o.prefix_caching = 1;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-6 p1:0-5 d;a-1,2(5 of 0) p2:5-6 d0;a d0;a d0;a d0;");
}

/* Two ranks, arrivals a second apart: home mode's donors are the
 * sequence's rank's (2 takes 4 positions of 0, 3 two of 1); follow mode's
 * (shared caches) any rank's, 2 taking 6 of 1 and 3 two of 0 (the first of
 * equals). */
static void test_prefix_two_ranks_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {4, 6, 7, 3}, caps[] = {3, 3, 1, 1};
    static const int32_t p0[] = {1, 2, 3, 4}, p1[] = {1, 2, 3, 4, 5, 6}, p2[] = {1, 2, 3, 4, 5, 6, 7}, p3[] = {1, 2, 9};
    static const int32_t *const prompts[] = {p0, p1, p2, p3};
    static const double arrival[] = {0, 0, 1, 1};
    static const int64_t reserve[] = {7, 9, 8, 4};
    epm_sched_opts o = {4, lens, 2, 0, 0, 0, arrival, 0, reserve, 0, 0, prompts, 1, NULL, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-4 p1:0-6 d;a2(4 of 0),3(2 of 1) p2:4-7 p3:2-3 d0,1;a d0,1;");
    o.shared_pool = 1;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1 p0:0-4 p1:0-6 d;a2(6 of 1),3(2 of 0) p2:6-7 p3:2-3 d0,1;a d0,1;");
}

/* A conversation's turns, one place: 0 ends after feeding two of its
 * outputs and keeps those 6 rows; 1 (its next turn: its prompt and those
 * outputs, then more) needs the room they take, so it takes them over as
 * its first 6 positions; 2 shares 4 with 1's kept rows and takes them
 * over likewise. Without the outputs, only prompts are matched. */
static void test_prefix_kept_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {4, 8, 5}, caps[] = {3, 1, 1};
    static const int32_t p0[] = {1, 2, 3, 4}, p1[] = {1, 2, 3, 4, 7, 8, 5, 6}, p2[] = {1, 2, 3, 4, 9};
    static const int32_t o0[] = {7, 8, 9}, o1[] = {0}, o2[] = {0};
    static const int32_t *const prompts[] = {p0, p1, p2}, *const outputs[] = {o0, o1, o2};
    static const int64_t reserve[] = {7, 9, 6};
    epm_sched_opts o = {3, lens, 1, 1, 0, 0, NULL, 0, reserve, 0, 0, prompts, 1, outputs, 0};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-4 d;a d0;a d0;a-0,1(6 of 0) p1:6-8 d;a-1,2(4 of 1) p2:4-5 d;");
    o.outputs = NULL;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-4 d;a d0;a d0;a-0,1(4 of 0) p1:4-8 d;a-1,2(4 of 1) p2:4-5 d;");
}

/* In-batch prefix caching (defer_min 3): 1 shares 5 prompt positions with
 * 0, which is admitted in the same pass and has prefilled none: 1 waits a
 * pass for them, holding back 2, and then copies them. Without the wait
 * all three prefill at once; on two ranks home mode's 1 has another home
 * than 0 and cannot wait for it, while follow mode's (shared) waits and
 * holds back every later one. In chunks, 1 waits for the whole span. */
static void test_prefix_defer_by_hand(void **state)
{
    (void)state;
    static const int lens[] = {6, 6, 3}, caps[] = {2, 1, 1};
    static const int32_t p0[] = {1, 2, 3, 4, 5, 6}, p1[] = {1, 2, 3, 4, 5, 7}, p2[] = {9, 9, 9};
    static const int32_t *const prompts[] = {p0, p1, p2};
    static const int64_t reserve[] = {8, 7, 4};
    epm_sched_opts o = {3, lens, 1, 3, 0, 0, NULL, 0, reserve, 0, 0, prompts, 1, NULL, 3};
    char got[256];
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-6 d;a1(5 of 0),2 p1:5-6 p2:0-3 d0;");
    o.defer_min = 6; /* (more than it would gain) */
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1,2 p0:0-6 p1:0-6 p2:0-3 d;a d0;");
    o.defer_min = 3, o.ranks = 2, o.max_num_seqs = 0;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0,1,2 p0:0-6 p1:0-6 p2:0-3 d;a d0;");
    o.shared_pool = 1;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-6 d;a1(5 of 0),2 p1:5-6 p2:0-3 d0;");
    /* in chunks of 2, one rank: 1 waits until 0 has prefilled all 5 shared positions, not only until
     * fewer than 3 are left to come */
    o.shared_pool = 0, o.ranks = 1, o.max_num_seqs = 3, o.chunk = 2;
    describe(&o, caps, got, sizeof got);
    assert_string_equal(got, "a0 p0:0-2 d;a p0:2-4 d;a p0:4-6 d;a1(5 of 0),2 p1:5-6 p2:0-1 d0;a p2:1-3 d;");
}

static unsigned lcg(unsigned *x)
{
    *x = *x * 1103515245u + 12345u;
    return (*x >> 16) & 0x7fff;
}

/* The random batches' state as the rules see it (the scheduler's, kept apart) */
typedef struct world {
    int B, R, shared, with_outs;
    const int *lens;
    int32_t (*toks)[36]; /* prompts, then (from each one's length) its fed outputs */
    const int32_t (*outs)[6];
    const int *done, *fed, *admitted, *ended, *kept;
} world;

/* the longest prefix of a's prompt, short of its last token, that the rows of a held or kept sequence (its
 * rank's, or any with shared caches) give: what it prefilled, then the outputs it fed where they are given
 * (settled: not one still prefilling) */
static int best_prefix(const world *w, int a, int settled)
{
    int best = 0;
    for (int j = 0; j < w->B; j++) {
        if (j == a || !w->admitted[j] || (w->ended[j] && !w->kept[j]) || (!w->shared && j % w->R != a % w->R) ||
            (settled && !w->ended[j] && w->done[j] < w->lens[j]))
            continue;
        for (int k = 0; k < w->fed[j]; k++)
            w->toks[j][w->lens[j] + k] = w->outs[j][k];
        const int has = w->with_outs ? w->done[j] + w->fed[j] : w->done[j];
        int k = 0, most = w->lens[a] - 1 < has ? w->lens[a] - 1 : has;
        while (k < most && w->toks[a][k] == w->toks[j][k])
            k++;
        best = k > best ? k : best;
    }
    return best;
}

/* how many prompt positions more a would find once a held sequence still prefilling them has than those
 * done prefilling give it (so a waiting sequence waits for the whole shared span) */
static int wait_gain_of(const world *w, int a)
{
    int most = 0;
    for (int j = 0; j < w->B; j++) {
        if (j == a || !w->admitted[j] || w->ended[j] || w->done[j] == w->lens[j] ||
            (!w->shared && j % w->R != a % w->R))
            continue;
        const int lim = w->lens[a] - 1 < w->lens[j] ? w->lens[a] - 1 : w->lens[j];
        int k = 0;
        while (k < lim && w->toks[a][k] == w->toks[j][k])
            k++;
        most = k > w->done[j] && k > most ? k : most;
    }
    return most > 0 ? most - best_prefix(w, a, 1) : 0;
}

static void test_rules_on_random_batches(void **state)
{
    (void)state;
    unsigned seed = 7;
    for (int trial = 0; trial < 2000; trial++) {
        int lens[40], caps[40], B = 1 + (int)(lcg(&seed) % 40), R = 1 + (int)(lcg(&seed) % 8);
        for (int i = 0; i < B; i++) {
            lens[i] = 1 + (int)(lcg(&seed) % 30);
            caps[i] = 1 + (int)(lcg(&seed) % 6);
        }
        double arr[40], t = 0; /* every other batch arrives over time, in steps of 0-7 passes */
        for (int i = 0; i < B; i++)
            arr[i] = t += i ? (double)(lcg(&seed) % 8) : 0;
        /* (drawn one by one: the order of calls inside an initializer is unspecified) */
        const int max_seqs = (int)(lcg(&seed) % 12);
        const int64_t chunk = lcg(&seed) % 3 ? lcg(&seed) % 20 : 0;
        const int separate = (int)(lcg(&seed) % 2), counts = (int)(lcg(&seed) % 2);
        /* a K/V pool on two batches in three, each sequence reserving its prompt, its output cap
         * and up to 3 positions more (epm_run reserves exactly the first two); every sequence
         * fits alone, and on half of them follow mode's one pool for all ranks */
        int64_t reserve[40], most = 0;
        for (int i = 0; i < B; i++) {
            reserve[i] = lens[i] + caps[i] + lcg(&seed) % 4;
            most = reserve[i] > most ? reserve[i] : most;
        }
        const int64_t pool = lcg(&seed) % 3 ? most + lcg(&seed) % 40 : 0;
        const int shared = (int)(lcg(&seed) % 2);
        /* prompts in three families sharing a prefix of random length, then random tokens of two kinds (so
         * that prefixes also meet by chance); prefix caching on half the batches */
        int32_t toks[40][36], outs[40][6];
        const int32_t *prompts[40], *outputs[40];
        for (int i = 0; i < B; i++) {
            const int fam = (int)(lcg(&seed) % 3), split = (int)(lcg(&seed) % 31);
            for (int k = 0; k < lens[i]; k++)
                toks[i][k] = k < split ? fam * 100 + k : (int32_t)(lcg(&seed) % 2);
            for (int k = 0; k < caps[i]; k++) /* outputs of the same two kinds */
                outs[i][k] = (int32_t)(lcg(&seed) % 2);
            prompts[i] = toks[i];
            outputs[i] = outs[i];
        }
        /* prefix caching on half the batches, with the outputs (which the kept and decoding sequences'
         * rows extend prefixes with) on two thirds of those */
        const int prefix = (int)(lcg(&seed) % 2), with_outs = prefix && lcg(&seed) % 3;
        /* and on half of those, a sequence waits for 1 to 4 prompt positions more in flight */
        const int defer = prefix && lcg(&seed) % 2 ? 1 + (int)(lcg(&seed) % 4) : 0;
        const epm_sched_opts o = {B,     lens,   R,      max_seqs, chunk,  separate, trial % 2 ? arr : NULL, counts,
                                  reserve, pool, shared, prompts,  prefix, with_outs ? outputs : NULL, defer};
        /* the room of held reserves and kept rows: the pool, else a rank's places' largest reserves (shared:
         * all ranks') */
        int64_t room[8] = {0};
        for (int q = 0; q < R; q++) {
            int64_t v[40];
            int n = 0;
            for (int i = q; i < B; i += R)
                v[n++] = reserve[i];
            room[shared ? 0 : q] += tu_largest_sum(v, n, epm_run_places(B, R, max_seqs, q));
        }
        for (int q = 0; q < R && pool > 0; q++) /* (a pool: all of it) */
            room[q] = pool;
        int kept[40] = {0}, fed[40] = {0};
        int64_t last_use[40] = {0}, tick = 0, kept_rows[8] = {0};
        epm_sched *s = NULL;
        assert_int_equal(epm_sched_create(&o, &s), EPM_OK);
        int done[40] = {0}, gen[40] = {0}, ended[40] = {0}, admitted[40] = {0}, last_piece[40], next_adm[8];
        for (int i = 0; i < B; i++)
            last_piece[i] = -2;
        for (int q = 0; q < R; q++)
            next_adm[q] = q;
        epm_sched_pass p;
        int64_t pass = 0;
        double now = 0; /* a pass takes a second */
        while (epm_sched_next(s, now, &p)) {
            int64_t tok[8] = {0};
            int held[8] = {0};
            const world w = {B, R, shared, with_outs, lens, toks, (const int32_t (*)[6])outs, done, fed, admitted, ended,
                             kept};
            int64_t used_now[8] = {0}; /* the held sequences' reserves, as admissions come */
            for (int i = 0; i < B; i++)
                used_now[shared ? 0 : i % R] += admitted[i] && !ended[i] ? reserve[i] : 0;
            for (int i = 0; i < p.n_admitted; i++) { /* in order, each rank's next, once it arrived */
                const int a = p.admitted[i], q = a % R;
                assert_int_equal(a, next_adm[q]);
                assert_true(!o.arrival || o.arrival[a] <= now);
                next_adm[q] += R;
                /* a prefix copied from the held or kept sequence that shares the longest of the rows it
                 * has (those admitted before it in this pass hold what they copied); not one that waits
                 * for more in flight */
                const int best = prefix ? best_prefix(&w, a, 0) : 0;
                assert_int_equal(p.cached[i], best);
                assert_true(!defer || wait_gain_of(&w, a) < defer);
                const int d = p.donor[i];
                if (best > 0) {
                    assert_true(d >= 0 && d < B && admitted[d] && (!ended[d] || kept[d]) && (shared || d % R == q));
                    const int has = with_outs ? done[d] + fed[d] : done[d];
                    assert_true(best <= has && memcmp(toks[a], toks[d], (size_t)best * sizeof **toks) == 0);
                } else {
                    assert_int_equal(p.donor[i], -1);
                }
                /* kept rows dropped for it only while its reserve does not fit beside them and the held
                 * ones: its donor's first where kept (handed over), then the least recently used (ended,
                 * or last giving a prefix); a kept donor that is all prefix is handed over in any case */
                const int qq = shared ? 0 : q;
                const int whole = best > 0 && kept[d] && best == done[d] + fed[d];
                assert_true(!whole || (p.evict_from[i + 1] > p.evict_from[i] && p.evicted[p.evict_from[i]] == d));
                for (int e = p.evict_from[i]; e < p.evict_from[i + 1]; e++) {
                    const int x = p.evicted[e];
                    assert_true(prefix && x >= 0 && x < B && kept[x] && (shared || x % R == q));
                    assert_true(used_now[qq] + kept_rows[qq] + reserve[a] > room[qq] || (x == d && whole));
                    assert_true(x == d || best == 0 || !kept[d]);
                    for (int j = 0; j < B && x != d; j++)
                        if (kept[j] && j != x && (shared || j % R == q))
                            assert_true(last_use[j] > last_use[x]);
                    kept[x] = 0;
                    kept_rows[qq] -= done[x] + fed[x];
                }
                if (prefix) {
                    assert_true(used_now[qq] + kept_rows[qq] + reserve[a] <= room[qq]);
                    used_now[qq] += reserve[a];
                }
                if (best > 0)
                    last_use[d] = ++tick;
                done[a] = best;
                admitted[a] = 1;
            }
            assert_int_equal(p.evict_from[0], 0);
            for (int i = 0; i < p.n_admitted; i++) /* (each admission's in order, none skipped) */
                assert_true(p.evict_from[i] <= p.evict_from[i + 1]);
            int64_t used[8] = {0}; /* the pool's positions the held sequences reserve (shared: used[0]) */
            for (int i = 0; i < B; i++) {
                held[i % R] += admitted[i] && !ended[i];
                used[shared ? 0 : i % R] += admitted[i] && !ended[i] ? reserve[i] : 0;
            }
            for (int q = 0; q < R && pool > 0; q++)
                assert_true(used[q] <= pool);
            /* a rank's next sequence that arrived and has a place yet waits only for the pool or for a
             * prefix in flight: it does not fit or waits, or (a shared pool) one before it that arrived
             * and has a place does */
            int blocked = INT32_MAX; /* the first such */
            for (int q = 0; q < R; q++) {
                const int n = next_adm[q], places = epm_run_places(B, R, o.max_num_seqs, q);
                if (n < B && !(o.arrival && o.arrival[n] > now) && held[q] < places &&
                    ((pool > 0 && used[shared ? 0 : q] + reserve[n] > pool) || (defer && wait_gain_of(&w, n) >= defer)) &&
                    n < blocked)
                    blocked = n;
            }
            for (int i = 0; i < p.n_admitted && shared; i++) /* none admitted behind one that does not fit */
                assert_true(p.admitted[i] < blocked);
            for (int q = 0; q < R; q++) { /* a rank admits what arrived while it has places and pool */
                const int n = next_adm[q], places = epm_run_places(B, R, o.max_num_seqs, q);
                assert_true(held[q] <= places);
                assert_true(n >= B || (o.arrival && o.arrival[n] > now) || held[q] == places ||
                            (pool > 0 && used[shared ? 0 : q] + reserve[n] > pool) || (shared && blocked < n) ||
                            (defer && wait_gain_of(&w, n) >= defer));
            }
            if (p.n_pre == 0 && p.n_dec == 0) { /* idle: nothing held, the next arrival wakes the run */
                double first = INFINITY;
                for (int q = 0; q < R; q++) {
                    assert_int_equal(held[q], 0);
                    if (next_adm[q] < B && o.arrival[next_adm[q]] < first)
                        first = o.arrival[next_adm[q]];
                }
                assert_true(o.arrival && p.wake > now && p.wake == first && p.index == pass);
                now = p.wake;
                continue;
            }
            now += 1;
            int64_t left[8] = {0}; /* a rank's prompt tokens left to prefill as the pass begins */
            for (int i = 0; i < B; i++)
                left[i % R] += admitted[i] && !ended[i] ? lens[i] - done[i] : 0;
            int64_t pt = 0;
            for (int i = 0; i < p.n_pre; i++) {
                const epm_sched_piece *c = &p.pre[i];
                assert_true(i == 0 || c->seq > p.pre[i - 1].seq);
                assert_true(admitted[c->seq] && !ended[c->seq]);
                assert_int_equal(c->from, done[c->seq]); /* in order, each token once */
                assert_true(c->to > c->from && c->to <= lens[c->seq]);
                done[c->seq] = c->to;
                tok[c->seq % R] += c->to - c->from;
                pt += c->to - c->from;
                if (c->to == lens[c->seq])
                    last_piece[c->seq] = (int)pass;
            }
            assert_int_equal(pt, p.pre_tokens);
            int64_t ndec[8] = {0}; /* a rank's decode tokens, which come first in a budget that counts them */
            for (int i = 0; i < p.n_dec; i++)
                ndec[p.dec[i] % R] += o.chunk_counts_decode;
            for (int q = 0; q < R; q++) { /* all the budget can take: no less, no more */
                const int64_t cap = o.chunk == 0 ? INT64_MAX : o.chunk > ndec[q] ? o.chunk - ndec[q] : 0;
                assert_int_equal(tok[q], left[q] < cap ? left[q] : cap);
            }
            assert_true(!(o.separate_prefill && p.n_pre > 0 && p.n_dec > 0));
            /* who decodes: every sequence whose prompt is done and that has not ended (mixed, or no prompt
             * pieces in the pass) */
            int want = 0;
            for (int i = 0; i < B; i++)
                want += done[i] == lens[i] && last_piece[i] < pass && !ended[i];
            assert_int_equal(p.n_dec, p.n_pre > 0 && o.separate_prefill ? 0 : want);
            for (int i = 0; i < p.n_dec; i++) {
                assert_true(i == 0 || p.dec[i] > p.dec[i - 1]);
                assert_true(done[p.dec[i]] == lens[p.dec[i]] && last_piece[p.dec[i]] < pass && !ended[p.dec[i]]);
            }
            for (int i = 0; i < p.n_dec; i++)
                fed[p.dec[i]]++;
            /* as count_tokens, and an ended sequence keeps its rows with prefix caching */
            for (int i = 0; i < p.n_pre + p.n_dec; i++) {
                const int q = i < p.n_pre ? p.pre[i].seq : p.dec[i - p.n_pre];
                if ((i < p.n_pre && p.pre[i].to < lens[q]) || ++gen[q] < caps[q])
                    continue;
                const int rows = epm_sched_end(s, q);
                ended[q] = 1;
                assert_int_equal(rows, prefix ? done[q] + fed[q] : 0);
                if (prefix) {
                    kept[q] = 1;
                    last_use[q] = ++tick;
                    kept_rows[shared ? 0 : q % R] += rows;
                }
            }
            assert_int_equal(p.index, pass++);
            assert_true(pass < 100000);
        }
        for (int i = 0; i < B; i++) /* every sequence ran to its end */
            assert_true(ended[i] && gen[i] == caps[i] && done[i] == lens[i]);
        epm_sched_destroy(s);
    }
}

static void test_bad_batches(void **state)
{
    (void)state;
    static const int lens[] = {3, 0};
    epm_sched *s = (epm_sched *)&s;
    epm_sched_opts o = {2, lens, 1, 0, 0, 0, NULL, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_null(s);
    assert_non_null(strstr(epm_last_error(), "sequence 1 is empty"));
    o.batch = 0;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    o.batch = 1;
    o.chunk = -1;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    o.chunk = 0;
    o.max_num_seqs = -2;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "max_num_seqs -2"));
    static const int two[] = {1, 1};
    static const double late_first[] = {2, 1}, nan_first[] = {NAN, 1};
    o = (epm_sched_opts){2, two, 1, 0, 0, 0, late_first, 0, NULL, 0, 0, NULL, 0, NULL, 0};
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "sequence 1 arrives at 1 s, before sequence 0"));
    o.arrival = nan_first;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "sequence 0 arrives at nan s (a finite time"));
    /* a pool: each reserve within it and at least its prompt, and reserves given */
    static const int64_t fits[] = {2, 4}, short_of_prompt[] = {0, 1};
    o = (epm_sched_opts){2, two, 1, 0, 0, 0, NULL, 0, fits, 3, 0, NULL, 0, NULL, 0};
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "sequence 1 reserves 4 positions, more than the pool holds"));
    o.reserve = short_of_prompt;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "sequence 0 reserves 0 positions, fewer than its prompt"));
    o.reserve = NULL;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "pool 3 without reserves"));
    o.reserve = fits, o.pool = 4;
    assert_int_equal(epm_sched_create(&o, &s), EPM_OK);
    epm_sched_destroy(s);
    /* prefix caching keeps rows within the reserves: it needs them (and the prompts) */
    static const int32_t one[] = {1};
    static const int32_t *const both[] = {one, one};
    o.pool = 0, o.reserve = NULL, o.prompts = both, o.prefix_caching = 1;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "pool 0 without reserves"));
    o.reserve = fits, o.prompts = NULL;
    assert_int_equal(epm_sched_create(&o, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "prefix caching without prompts"));
    assert_int_equal(epm_sched_end(NULL, 0), -1); /* nothing */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_by_hand),
        cmocka_unit_test(test_separate_by_hand),
        cmocka_unit_test(test_budget_counts_decode_by_hand),
        cmocka_unit_test(test_two_ranks_by_hand),
        cmocka_unit_test(test_arrivals_by_hand),
        cmocka_unit_test(test_pool_by_hand),
        cmocka_unit_test(test_shared_pool_by_hand),
        cmocka_unit_test(test_prefix_by_hand),
        cmocka_unit_test(test_prefix_two_ranks_by_hand),
        cmocka_unit_test(test_prefix_kept_by_hand),
        cmocka_unit_test(test_prefix_defer_by_hand),
        cmocka_unit_test(test_rules_on_random_batches),
        cmocka_unit_test(test_bad_batches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
