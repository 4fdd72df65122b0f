/* Sampling and generation_config.json: greedy choice, the repetition
 * penalty, the counter-based draw (determinism, frequencies), top-k, top-p
 * against a naive oracle, min-p, their combination, parameter checks, and
 * the generation config parser and loader. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"
#include "epmoe/generate.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = (rng_state += 0x9e3779b97f4a7c15u);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static double rng_unit(void) { return (double)(rng_next() >> 11) * 0x1.0p-53; }

static void expect_msg(const char *what)
{
    const char *e = epm_last_error();
    if (!strstr(e, what))
        fail_msg("error message \"%s\" does not name \"%s\"", e, what);
}

static epm_sampler *mk(const epm_sampling *p, int V)
{
    epm_sampler *s = NULL;
    if (epm_sampler_create(p, V, &s) != EPM_OK)
        fail_msg("epm_sampler_create: %s", epm_last_error());
    assert_non_null(s);
    return s;
}

static int32_t next_pen(epm_sampler *s, int V, const float *lg, const int32_t *prompt, int64_t np, const int32_t *gen,
                        int64_t ng, int64_t seq, int64_t step)
{
    int32_t t = -1;
    epm_status st = epm_sampler_next(s, lg, prompt, np, gen, ng, seq, step, &t);
    if (st != EPM_OK)
        fail_msg("epm_sampler_next(seq %lld, step %lld): %s", (long long)seq, (long long)step, epm_last_error());
    if (t < 0 || t >= V)
        fail_msg("token %d outside [0, %d)", t, V);
    return t;
}

static int32_t next_tok(epm_sampler *s, int V, const float *lg, int64_t seq, int64_t step)
{
    return next_pen(s, V, lg, NULL, 0, NULL, 0, seq, step);
}

static int32_t greedy1(const epm_sampling *p, const float *lg, int V, const int32_t *prompt, int64_t np,
                       const int32_t *gen, int64_t ng)
{
    epm_sampler *s = mk(p, V);
    int32_t t = next_pen(s, V, lg, prompt, np, gen, ng, 0, 0);
    epm_sampler_destroy(s);
    return t;
}

/* counts over steps [0, n) of sequence seq */
static void histogram(epm_sampler *s, int V, const float *lg, int64_t seq, int64_t n, int64_t *count)
{
    memset(count, 0, (size_t)V * sizeof *count);
    for (int64_t k = 0; k < n; k++)
        count[next_tok(s, V, lg, seq, k)]++;
}

/* every count within 5 standard deviations of n p (and zero where p is 0) */
static void check_freq(const int64_t *count, const double *p, int V, int64_t n)
{
    for (int i = 0; i < V; i++) {
        if (p[i] == 0) {
            if (count[i] != 0)
                fail_msg("token %d has probability 0 but was drawn %lld times", i, (long long)count[i]);
            continue;
        }
        double mu = (double)n * p[i], sd = sqrt((double)n * p[i] * (1 - p[i]));
        if (fabs((double)count[i] - mu) > 5 * sd)
            fail_msg("token %d drawn %lld times in %lld, expected %.1f +- %.1f (p = %g)", i, (long long)count[i],
                     (long long)n, mu, 5 * sd, p[i]);
    }
}

/* ---- extreme temperatures (a review found both broke the sampler) ---- */

/* A subnormal temperature (a config file may say 1e-310) leaves the tied top
 * tokens, each drawn about half the time, min-p or not; a huge one never
 * draws a -inf or NaN logit. */
static void test_extreme_temperature(void **state)
{
    (void)state;
    const float tied[3] = {1, 1, 0};
    const double half[3] = {0.5, 0.5, 0};
    for (int mp = 0; mp < 2; mp++) {
        epm_sampling p = {.temperature = 1e-310, .min_p = mp ? 0.1 : 0};
        epm_sampler *s = mk(&p, 3);
        int64_t count[3];
        histogram(s, 3, tied, 0, 2000, count);
        check_freq(count, half, 3, 2000);
        epm_sampler_destroy(s);
    }
    const float odd[4] = {0, 1, NAN, -INFINITY};
    const double even[4] = {0.5, 0.5, 0, 0};
    for (int k = 0; k < 3; k++) {
        epm_sampling p = {.temperature = k == 0 ? 1e300 : k == 1 ? 1e307 : 1.7e308};
        epm_sampler *s = mk(&p, 4);
        int64_t count[4];
        histogram(s, 4, odd, 1, 2000, count);
        check_freq(count, even, 4, 2000);
        epm_sampler_destroy(s);
    }
}

/* ---- logprobs ---- */

static void test_logprobs(void **state)
{
    (void)state;
    /* log_softmax, the top n most likely first and lower ids first among equals */
    const float lg[8] = {1, 3, NAN, 3, -INFINITY, 0.5f, 3, 2};
    double sum = 3 * exp(0.0) + exp(-1.0) + exp(-2.0) + exp(-2.5);
    double lse = 3 + log(sum);
    float lp, tlp[20];
    int32_t tid[20];
    assert_int_equal(epm_logprobs(lg, 8, 7, 5, &lp, tid, tlp), EPM_OK);
    assert_true(fabs(lp - (2 - lse)) < 1e-6);
    const int32_t want[5] = {1, 3, 6, 7, 0};
    for (int q = 0; q < 5; q++) {
        assert_int_equal(tid[q], want[q]);
        assert_true(fabs(tlp[q] - (lg[want[q]] - lse)) < 1e-6);
    }
    /* more than the finite ones: NaN and -inf last, at -inf, in id order */
    assert_int_equal(epm_logprobs(lg, 8, 0, 8, &lp, tid, tlp), EPM_OK);
    assert_int_equal(tid[6], 2);
    assert_int_equal(tid[7], 4);
    assert_true(isinf(tlp[6]) && tlp[6] < 0 && isinf(tlp[7]) && tlp[7] < 0);
    assert_true(fabs(tlp[5] - (0.5 - lse)) < 1e-6);
    /* n 0: only the token's; n above the vocabulary: the vocabulary */
    assert_int_equal(epm_logprobs(lg, 8, 4, 0, &lp, NULL, NULL), EPM_OK);
    assert_true(isinf(lp) && lp < 0);
    const float two[2] = {0, 0};
    assert_int_equal(epm_logprobs(two, 2, 1, 20, &lp, tid, tlp), EPM_OK);
    assert_true(fabs(lp - log(0.5)) < 1e-7);
    assert_int_equal(tid[0], 0);
    assert_int_equal(tid[1], 1);
    /* the probabilities of a large row sum to 1 */
    enum { V = 5000 };
    static float big[V];
    for (int i = 0; i < V; i++)
        big[i] = (float)((i * 7919) % 1000) / 50.0f - 10;
    double tot = 0;
    for (int i = 0; i < V; i++) {
        assert_int_equal(epm_logprobs(big, V, i, 0, &lp, NULL, NULL), EPM_OK);
        tot += exp(lp);
    }
    assert_true(fabs(tot - 1) < 1e-4);
    /* errors */
    assert_int_equal(epm_logprobs(lg, 8, 8, 0, &lp, NULL, NULL), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "token 8 of vocab 8"));
    assert_int_equal(epm_logprobs(lg, 8, 0, 21, &lp, tid, tlp), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_logprobs(lg, 8, 0, 2, &lp, NULL, NULL), EPM_ERR_INVALID_ARG);
    const float none[2] = {NAN, -INFINITY}, pinf[2] = {0, INFINITY};
    assert_int_equal(epm_logprobs(none, 2, 0, 0, &lp, NULL, NULL), EPM_ERR_FORMAT);
    assert_int_equal(epm_logprobs(pinf, 2, 0, 0, &lp, NULL, NULL), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "+inf"));
}

/* ---- greedy ---- */

static void test_greedy(void **state)
{
    (void)state;
    epm_sampling zero;
    memset(&zero, 0, sizeof zero);
    assert_int_equal(epm_sampling_validate(NULL), EPM_OK);
    assert_int_equal(epm_sampling_validate(&zero), EPM_OK);
    assert_int_equal(epm_sampling_random(NULL), 0);
    assert_int_equal(epm_sampling_random(&zero), 0);

    const float a[6] = {1, 3, -2, 3, 2.9f, 3};
    assert_int_equal(greedy1(NULL, a, 6, NULL, 0, NULL, 0), 1);
    assert_int_equal(greedy1(&zero, a, 6, NULL, 0, NULL, 0), 1);
    const float one[1] = {-7};
    assert_int_equal(greedy1(NULL, one, 1, NULL, 0, NULL, 0), 0);
    /* the greedy choice does not depend on seed, seq or step */
    epm_sampling g = zero;
    g.seed = 12345;
    epm_sampler *s = mk(&g, 6);
    for (int k = 0; k < 50; k++)
        assert_int_equal(next_tok(s, 6, a, k, 1000 + k), 1);
    epm_sampler_destroy(s);
    /* top-k/p and min-p do not change a greedy choice */
    g.top_k = 3;
    g.top_p = 0.5;
    g.min_p = 0.5;
    assert_int_equal(epm_sampling_random(&g), 0);
    assert_int_equal(greedy1(&g, a, 6, NULL, 0, NULL, 0), 1);

    /* NaN counts as -inf, wherever it is */
    const float b[5] = {NAN, 0.5f, NAN, 0.7f, NAN};
    assert_int_equal(greedy1(NULL, b, 5, NULL, 0, NULL, 0), 3);
    const float c[4] = {NAN, -100, -INFINITY, -99};
    assert_int_equal(greedy1(NULL, c, 4, NULL, 0, NULL, 0), 3);
    const float d[3] = {0.25f, NAN, 0.125f};
    assert_int_equal(greedy1(NULL, d, 3, NULL, 0, NULL, 0), 0);
    const float e[3] = {-INFINITY, -1e30f, -INFINITY};
    assert_int_equal(greedy1(NULL, e, 3, NULL, 0, NULL, 0), 1);

    /* no finite logit, or +inf: an error naming sequence and step */
    const float ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const float nans[4] = {NAN, NAN, NAN, NAN};
    const float mixed[4] = {NAN, -INFINITY, NAN, -INFINITY};
    const float pinf[4] = {0, INFINITY, 1, 2};
    const float *bad[4] = {ninf, nans, mixed, pinf};
    epm_sampling t1;
    memset(&t1, 0, sizeof t1);
    t1.temperature = 1;
    for (int r = 0; r < 2; r++) {
        s = mk(r ? &t1 : NULL, 4);
        for (int i = 0; i < 4; i++) {
            int32_t tok = 77;
            epm_clear_error();
            assert_int_not_equal(epm_sampler_next(s, bad[i], NULL, 0, NULL, 0, 7001, 12345, &tok), EPM_OK);
            expect_msg("7001");
            expect_msg("12345");
            expect_msg("sequence");
            expect_msg("step");
            if (i == 3)
                expect_msg("inf");
        }
        /* and the sampler works afterwards */
        const float good[4] = {0, -1, 3, -INFINITY};
        int32_t t = next_tok(s, 4, good, 7, 12);
        assert_true(r ? t != 3 : t == 2);
        epm_sampler_destroy(s);
    }
    /* NULL arguments */
    s = mk(NULL, 4);
    int32_t tok;
    assert_int_not_equal(epm_sampler_next(s, NULL, NULL, 0, NULL, 0, 0, 0, &tok), EPM_OK);
    assert_int_not_equal(epm_sampler_next(s, a, NULL, 0, NULL, 0, 0, 0, NULL), EPM_OK);
    assert_int_not_equal(epm_sampler_next(s, a, NULL, 2, NULL, 0, 0, 0, &tok), EPM_OK);
    assert_int_not_equal(epm_sampler_next(s, a, NULL, 0, NULL, 1, 0, 0, &tok), EPM_OK);
    assert_int_not_equal(epm_sampler_next(NULL, a, NULL, 0, NULL, 0, 0, 0, &tok), EPM_OK);
    epm_sampler_destroy(s);
    epm_sampler_destroy(NULL);
}

/* ---- repetition penalty ---- */

static void test_repetition_penalty(void **state)
{
    (void)state;
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.repetition_penalty = 2;
    const int32_t id0[1] = {0};
    /* positive logit divided: 2 -> 1 < 1.5 */
    const float pos[4] = {2.0f, 1.5f, -1, -1.2f};
    assert_int_equal(greedy1(NULL, pos, 4, id0, 1, NULL, 0), 0);
    assert_int_equal(greedy1(&p, pos, 4, NULL, 0, NULL, 0), 0);
    assert_int_equal(greedy1(&p, pos, 4, id0, 1, NULL, 0), 1);
    assert_int_equal(greedy1(&p, pos, 4, NULL, 0, id0, 1), 1); /* generated counts too */
    /* negative logit multiplied: -1 -> -2 < -1.5 (divided, -0.5, it would stay first) */
    const float neg[3] = {-1.0f, -1.5f, -3};
    assert_int_equal(greedy1(&p, neg, 3, NULL, 0, NULL, 0), 0);
    assert_int_equal(greedy1(&p, neg, 3, id0, 1, NULL, 0), 1);
    /* zero stays zero */
    const float zer[2] = {0, -0.001f};
    assert_int_equal(greedy1(&p, zer, 2, id0, 1, id0, 1), 0);

    /* once per distinct token: 3 / 1.4 = 2.14 > 2 but 3 / 1.96 = 1.53 < 2 */
    p.repetition_penalty = 1.4;
    const int32_t many0[5] = {0, 0, 0, 0, 0};
    const float once_pos[2] = {3.0f, 2.0f};
    const float once_neg[2] = {-1.0f, -1.5f}; /* -1.4 > -1.5 but -1.96 < -1.5 */
    assert_int_equal(greedy1(&p, once_pos, 2, many0, 5, many0, 3), 0);
    assert_int_equal(greedy1(&p, once_neg, 2, many0, 5, many0, 3), 0);
    assert_int_equal(greedy1(&p, once_pos, 2, NULL, 0, many0, 5), 0);
    assert_int_equal(greedy1(&p, once_neg, 2, NULL, 0, many0, 5), 0);
    /* (twice, as a check on the crafted values) */
    p.repetition_penalty = 1.96;
    assert_int_equal(greedy1(&p, once_pos, 2, many0, 1, NULL, 0), 1);
    assert_int_equal(greedy1(&p, once_neg, 2, many0, 1, NULL, 0), 1);

    /* ids outside [0, vocab) are ignored, not a crash */
    p.repetition_penalty = 2;
    const int32_t out[6] = {-1, 4, 100, INT32_MIN, INT32_MAX, -4};
    assert_int_equal(greedy1(&p, pos, 4, out, 6, out, 6), 0);
    const int32_t mixed[3] = {-1, 0, 4};
    assert_int_equal(greedy1(&p, pos, 4, mixed, 3, NULL, 0), 1);

    /* a penalty below 1 raises a repeated token; 1 and 0 are off */
    const float up[2] = {1.0f, 1.5f};
    p.repetition_penalty = 0.5;
    assert_int_equal(greedy1(&p, up, 2, id0, 1, NULL, 0), 0);
    p.repetition_penalty = 1;
    assert_int_equal(greedy1(&p, pos, 4, id0, 1, NULL, 0), 0);
    p.repetition_penalty = 0;
    assert_int_equal(greedy1(&p, pos, 4, id0, 1, NULL, 0), 0);

    /* the exact value, seen through frequencies: logits {2, 0}, penalty 2 on
     * token 0 gives {1, 0}: P(0) = e / (1 + e) (undivided: e^2 / (1 + e^2)) */
    p.repetition_penalty = 2;
    p.temperature = 1;
    p.seed = 99;
    const float two[2] = {2, 0};
    epm_sampler *s = mk(&p, 2);
    int64_t cnt[2] = {0, 0};
    const int64_t N = 20000;
    for (int64_t k = 0; k < N; k++)
        cnt[next_pen(s, 2, two, id0, 1, NULL, 0, 0, k)]++;
    double e1 = exp(1.0), pr[2] = {e1 / (1 + e1), 1 / (1 + e1)};
    check_freq(cnt, pr, 2, N);
    /* and negative: logits {-1, 0}, penalty 2 gives {-2, 0}: P(0) = 1 / (1 + e^2) */
    const float neg2[2] = {-1, 0};
    cnt[0] = cnt[1] = 0;
    for (int64_t k = 0; k < N; k++)
        cnt[next_pen(s, 2, neg2, NULL, 0, id0, 1, 0, k)]++;
    double e2 = exp(2.0), pn[2] = {1 / (1 + e2), e2 / (1 + e2)};
    check_freq(cnt, pn, 2, N);
    epm_sampler_destroy(s);
}

/* ---- determinism ---- */

static void test_determinism(void **state)
{
    (void)state;
    enum { V = 100, N = 2000 };
    float lg[V];
    rng_state = 1;
    for (int i = 0; i < V; i++)
        lg[i] = (float)(rng_unit() * 0.5); /* nearly flat: agreement by chance about 1 / V */
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.temperature = 1;
    p.seed = 42;
    epm_sampler *a = mk(&p, V), *b = mk(&p, V);
    p.seed = 43;
    epm_sampler *c = mk(&p, V);
    int same_seed = 0, same_step = 0, same_seq = 0, swapped = 0;
    uint8_t seen[V] = {0};
    for (int k = 0; k < N; k++) {
        int32_t t = next_tok(a, V, lg, 3, k);
        assert_int_equal(next_tok(a, V, lg, 3, k), t); /* same call, same token */
        assert_int_equal(next_tok(b, V, lg, 3, k), t); /* another sampler, same token */
        seen[t] = 1;
        same_seed += next_tok(c, V, lg, 3, k) == t;
        same_step += next_tok(a, V, lg, 3, k + 1) == t;
        same_seq += next_tok(a, V, lg, 4, k) == t;
        swapped += next_tok(a, V, lg, k, 3) == t; /* (seq, step) swapped */
    }
    int distinct = 0;
    for (int i = 0; i < V; i++)
        distinct += seen[i];
    /* expected about N / V = 20 agreements each; 100 is far beyond chance */
    if (same_seed > 100 || same_step > 100 || same_seq > 100 || swapped > 100)
        fail_msg("draws correlated: same token with another seed %d, next step %d, next sequence %d, "
                 "(seq, step) swapped %d times in %d",
                 same_seed, same_step, same_seq, swapped, N);
    assert_true(distinct >= 95);
    /* the seed is a full 64-bit value: seeds differing only in the high bits */
    p.seed = 42 | ((uint64_t)1 << 63);
    epm_sampler *h = mk(&p, V);
    int same_hi = 0;
    for (int k = 0; k < N; k++)
        same_hi += next_tok(h, V, lg, 3, k) == next_tok(a, V, lg, 3, k);
    assert_true(same_hi < 100);
    epm_sampler_destroy(h);
    epm_sampler_destroy(a);
    epm_sampler_destroy(b);
    epm_sampler_destroy(c);

    /* scratch does not leak between calls: a penalised call, then calls
     * without a sequence (or another one), give what a fresh sampler gives */
    enum { W = 40 };
    float x[W], y[W];
    for (int i = 0; i < W; i++) {
        x[i] = (float)(rng_unit() * 2);
        y[i] = (float)(rng_unit() * 2);
    }
    int32_t hist[8];
    for (int mode = 0; mode < 3; mode++) {
        memset(&p, 0, sizeof p);
        p.repetition_penalty = 3;
        p.seed = 5;
        if (mode >= 1)
            p.temperature = 1;
        if (mode == 2) {
            p.top_k = 7;
            p.top_p = 0.9;
            p.min_p = 0.05;
        }
        epm_sampler *used = mk(&p, W);
        for (int k = 0; k < 300; k++) {
            for (int j = 0; j < 8; j++)
                hist[j] = (int32_t)(rng_next() % W);
            const float *lx = (k & 1) ? x : y;
            int32_t t1 = next_pen(used, W, lx, hist, 4, hist + 4, 4, 1, k);
            epm_sampler *fresh = mk(&p, W);
            int32_t t2 = next_pen(fresh, W, lx, hist, 4, hist + 4, 4, 1, k);
            int32_t u1 = next_tok(used, W, lx, 1, k); /* no sequence: no penalty */
            epm_sampler_destroy(fresh);
            fresh = mk(&p, W);
            int32_t u2 = next_tok(fresh, W, lx, 1, k);
            epm_sampler_destroy(fresh);
            if (t1 != t2 || u1 != u2)
                fail_msg("mode %d step %d: reused sampler %d/%d, fresh %d/%d", mode, k, t1, u1, t2, u2);
        }
        epm_sampler_destroy(used);
    }
    /* a crafted leak check: token 0 penalised once must not stay penalised */
    memset(&p, 0, sizeof p);
    p.repetition_penalty = 10;
    const float lz[3] = {1, 0.5f, 0};
    const int32_t id0[1] = {0}, id2[1] = {2};
    epm_sampler *s = mk(&p, 3);
    assert_int_equal(next_pen(s, 3, lz, id0, 1, NULL, 0, 0, 0), 1);
    assert_int_equal(next_pen(s, 3, lz, id2, 1, NULL, 0, 0, 1), 0);
    assert_int_equal(next_tok(s, 3, lz, 0, 2), 0);
    epm_sampler_destroy(s);
}

/* ---- frequencies ---- */

static void test_distribution(void **state)
{
    (void)state;
    const double p0[4] = {0.5, 0.25, 0.125, 0.125};
    float lg[4];
    for (int i = 0; i < 4; i++)
        lg[i] = (float)(log(p0[i]) + 3); /* a shift changes nothing */
    const int64_t N = 20000;
    int64_t cnt[4];
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.temperature = 1;
    p.seed = 2024;
    epm_sampler *s = mk(&p, 4);
    histogram(s, 4, lg, 0, N, cnt);
    check_freq(cnt, p0, 4, N);
    histogram(s, 4, lg, 11, N, cnt); /* another sequence */
    check_freq(cnt, p0, 4, N);
    epm_sampler_destroy(s);
    /* temperature 0.5: p^2 / sum p^2; 2: sqrt(p) / sum sqrt(p) */
    const double temps[2] = {0.5, 2};
    for (int t = 0; t < 2; t++) {
        p.temperature = temps[t];
        double q[4], sum = 0;
        for (int i = 0; i < 4; i++)
            sum += q[i] = pow(p0[i], 1 / temps[t]);
        for (int i = 0; i < 4; i++)
            q[i] /= sum;
        s = mk(&p, 4);
        histogram(s, 4, lg, 1, N, cnt);
        check_freq(cnt, q, 4, N);
        epm_sampler_destroy(s);
    }
    /* NaN and -inf never drawn; the rest in proportion */
    const float nf[6] = {NAN, (float)log(0.5), -INFINITY, (float)log(0.25), (float)log(0.25), NAN};
    const double pn[6] = {0, 0.5, 0, 0.25, 0.25, 0};
    p.temperature = 1;
    s = mk(&p, 6);
    int64_t c6[6];
    histogram(s, 6, nf, 2, N, c6);
    check_freq(c6, pn, 6, N);
    epm_sampler_destroy(s);
    /* a very low temperature is greedy in effect, without overflow */
    p.temperature = 1e-30;
    const float hi[3] = {3e38f, -3e38f, 2.9e38f};
    s = mk(&p, 3);
    for (int k = 0; k < 200; k++)
        assert_int_equal(next_tok(s, 3, hi, 0, k), 0);
    epm_sampler_destroy(s);
    /* a very high one is near uniform */
    p.temperature = 1e6;
    s = mk(&p, 4);
    histogram(s, 4, lg, 0, N, cnt);
    const double u4[4] = {0.25, 0.25, 0.25, 0.25};
    check_freq(cnt, u4, 4, N);
    epm_sampler_destroy(s);
}

/* ---- the oracle: weights as the sampler computes them, then a full sort ---- */

static const double *sort_key;

static int by_key(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (sort_key[a] != sort_key[b])
        return sort_key[a] > sort_key[b] ? -1 : 1;
    return (a > b) - (a < b);
}

/* relative weights after temperature (0 for -inf / NaN), as the sampler has them */
static void weights(const float *lg, int V, double T, double *w)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if ((double)lg[i] > (double)lg[best] || isnan(lg[best]))
            best = i;
    for (int i = 0; i < V; i++)
        w[i] = isnan(lg[i]) || lg[i] == -INFINITY ? 0 : exp(((double)lg[i] - (double)lg[best]) / T);
}

/* keep[i] for top-k over the logits (ties at the k-th kept); returns the number kept */
static int oracle_top_k(const float *lg, int V, int k, uint8_t *keep)
{
    double *z = malloc((size_t)V * sizeof *z);
    int32_t *ord = malloc((size_t)V * sizeof *ord);
    assert_non_null(z);
    assert_non_null(ord);
    int n = 0;
    for (int i = 0; i < V; i++) {
        z[i] = isnan(lg[i]) ? -INFINITY : lg[i];
        if (z[i] > -INFINITY)
            ord[n++] = i;
    }
    sort_key = z;
    qsort(ord, (size_t)n, sizeof *ord, by_key);
    double kth = (k > 0 && k < n) ? z[ord[k - 1]] : -INFINITY;
    int m = 0;
    for (int i = 0; i < V; i++) {
        keep[i] = z[i] > -INFINITY && z[i] >= kth;
        m += keep[i];
    }
    free(z);
    free(ord);
    return m;
}

/* keep[i] &= top-p over weights w restricted to keep[]: sorted (w desc, id
 * asc), kept while the mass before < top_p x the total. Returns the number
 * kept, or -1 when a token's preceding mass is within 1e-9 of the bound (the
 * sampler's summation order may round either way). */
static int oracle_top_p(const double *w, int V, double top_p, uint8_t *keep)
{
    int32_t *ord = malloc((size_t)V * sizeof *ord);
    assert_non_null(ord);
    int n = 0;
    double total = 0;
    for (int i = 0; i < V; i++)
        if (keep[i]) {
            ord[n++] = i;
            total += w[i];
        }
    sort_key = w;
    qsort(ord, (size_t)n, sizeof *ord, by_key);
    const double bound = top_p * total;
    double before = 0;
    int m = 0;
    for (int j = 0; j < n; j++) {
        if (j > 0 && fabs(before - bound) <= 1e-9 * total) { /* the first token's 0 is exact */
            free(ord);
            return -1;
        }
        keep[ord[j]] = before < bound;
        m += keep[ord[j]];
        before += w[ord[j]];
    }
    free(ord);
    return m;
}

/* Draws until every kept token is likely seen (when affordable), checking
 * that each draw is kept; returns 1 when it checked coverage as well. */
static int check_kept(const epm_sampling *p, const float *lg, int V, const double *w, const uint8_t *keep, int64_t seq,
                      int64_t budget)
{
    double kept = 0, wmin = INFINITY;
    for (int i = 0; i < V; i++)
        if (keep[i]) {
            kept += w[i];
            wmin = fmin(wmin, w[i]);
        }
    assert_true(kept > 0);
    const double pmin = wmin / kept;
    int64_t need = (int64_t)ceil(32 / pmin) + 1;
    int64_t cap = budget / V > 50 ? budget / V : 50;
    int cover = pmin > 1e-3 && need <= cap;
    int64_t draws = cover ? need : (cap / 2 < 400 ? (cap / 2 > 50 ? cap / 2 : 50) : 400);
    epm_sampler *s = mk(p, V);
    uint8_t *drawn = calloc((size_t)V, 1);
    assert_non_null(drawn);
    for (int64_t k = 0; k < draws; k++) {
        int32_t t = next_tok(s, V, lg, seq, k);
        if (!keep[t])
            fail_msg("V %d top_k %d top_p %.17g min_p %g T %g seq %lld step %lld: drew token %d (w %.17g), not in "
                     "the oracle's set",
                     V, p->top_k, p->top_p, p->min_p, p->temperature, (long long)seq, (long long)k, t, w[t]);
        drawn[t] = 1;
    }
    if (cover)
        for (int i = 0; i < V; i++)
            if (keep[i] && !drawn[i])
                fail_msg("V %d top_k %d top_p %.17g min_p %g: token %d (p %g) kept by the oracle, never drawn in "
                         "%lld draws",
                         V, p->top_k, p->top_p, p->min_p, i, w[i] / kept, (long long)draws);
    free(drawn);
    epm_sampler_destroy(s);
    return cover;
}

/* logits of kind 0: uniform; 1: a few high among a low tail; 2: few distinct values (ties) */
static void make_logits(float *lg, int V, int kind)
{
    for (int i = 0; i < V; i++) {
        if (kind == 0)
            lg[i] = (float)(rng_unit() * 6 - 3);
        else if (kind == 1)
            lg[i] = (float)(rng_unit() * 2 - 1);
        else
            lg[i] = 0.5f * (float)(rng_next() % 5);
    }
    if (kind == 1)
        for (int h = 0; h < 6 && h < V; h++)
            lg[rng_next() % (uint64_t)V] = (float)(9 + 2 * rng_unit());
}

/* ---- top-k ---- */

static void test_top_k(void **state)
{
    (void)state;
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.temperature = 1;
    p.seed = 77;
    /* ties at the k-th: 10 is best, 3, 20 and 29 tie second */
    enum { V = 30 };
    float lg[V];
    rng_state = 9;
    for (int i = 0; i < V; i++)
        lg[i] = (float)rng_unit();
    lg[10] = 5;
    lg[3] = lg[20] = lg[29] = 4.5f;
    const int tied[4] = {10, 3, 20, 29};
    for (int k = 2; k <= 4; k++) {
        p.top_k = k;
        epm_sampler *s = mk(&p, V);
        int64_t cnt[V];
        histogram(s, V, lg, k, 4000, cnt);
        int64_t in = 0;
        for (int j = 0; j < 4; j++) {
            if (cnt[tied[j]] == 0)
                fail_msg("top_k %d: tied token %d never drawn", k, tied[j]);
            in += cnt[tied[j]];
        }
        assert_int_equal(in, 4000);
        epm_sampler_destroy(s);
    }
    /* k = 5 adds exactly the next best */
    int fifth = -1;
    for (int i = 0; i < V; i++)
        if (i != 10 && i != 3 && i != 20 && i != 29 && (fifth < 0 || lg[i] > lg[fifth]))
            fifth = i;
    p.top_k = 5;
    epm_sampler *s = mk(&p, V);
    int64_t cnt[V];
    histogram(s, V, lg, 0, 4000, cnt);
    for (int i = 0; i < V; i++)
        if (i != 10 && i != 3 && i != 20 && i != 29 && i != fifth)
            assert_int_equal(cnt[i], 0);
    assert_true(cnt[fifth] > 0);
    epm_sampler_destroy(s);
    /* top_k 1 with two maxima keeps both (ties at the k-th); exact frequencies */
    float two[20];
    for (int i = 0; i < 20; i++)
        two[i] = (float)i * 0.01f;
    two[17] = two[4] = 3;
    p.top_k = 1;
    s = mk(&p, 20);
    int64_t c20[20];
    histogram(s, 20, two, 0, 20000, c20);
    double p20[20] = {0};
    p20[17] = p20[4] = 0.5;
    check_freq(c20, p20, 20, 20000);
    epm_sampler_destroy(s);
    /* k beyond the finite logits: only those */
    float fin[25];
    for (int i = 0; i < 25; i++)
        fin[i] = (i % 8 == 1) ? (float)i / 25 : (i % 2 ? NAN : -INFINITY);
    p.top_k = 10;
    s = mk(&p, 25);
    int64_t c25[25];
    histogram(s, 25, fin, 0, 3000, c25);
    for (int i = 0; i < 25; i++)
        assert_true((i % 8 == 1) == (c25[i] > 0));
    epm_sampler_destroy(s);

    /* against the oracle: random, tail-heavy and tied logits */
    const int vs[5] = {1, 2, 17, 100, 1000};
    const int ks[6] = {1, 2, 3, 10, 50, 1000000};
    uint8_t *keep = malloc(1000);
    float *l = malloc(1000 * sizeof *l);
    double *w = malloc(1000 * sizeof *w);
    assert_non_null(keep);
    assert_non_null(l);
    assert_non_null(w);
    int64_t seq = 0;
    for (int vi = 0; vi < 5; vi++)
        for (int kind = 0; kind < 3; kind++) {
            make_logits(l, vs[vi], kind);
            weights(l, vs[vi], 1, w);
            for (int ki = 0; ki < 6; ki++) {
                p.top_k = ks[ki];
                oracle_top_k(l, vs[vi], ks[ki], keep);
                check_kept(&p, l, vs[vi], w, keep, seq++, 1000000);
            }
        }
    free(keep);
    free(l);
    free(w);
}

/* ---- top-p ---- */

static void test_top_p_oracle(void **state)
{
    (void)state;
    enum { VMAX = 5000 };
    const int vs[6] = {1, 2, 17, 100, 1000, 5000};
    const double ps[13] = {1e-12, 0.01, 0.05, 0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 0.8, 0.9, 0.95, 0.999};
    float *lg = malloc(VMAX * sizeof *lg);
    double *w = malloc(VMAX * sizeof *w);
    uint8_t *keep = malloc(VMAX);
    assert_non_null(lg);
    assert_non_null(w);
    assert_non_null(keep);
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.seed = 31337;
    rng_state = 4;
    int64_t seq = 0;
    int cases = 0, covered = 0, skipped = 0;
    for (int vi = 0; vi < 6; vi++) {
        const int V = vs[vi];
        for (int kind = 0; kind < 3; kind++) {
            make_logits(lg, V, kind);
            for (int ti = 0; ti < (V >= 5000 ? 1 : 2); ti++) { /* T 0.7 too, but for the largest vocabulary */
                p.temperature = ti ? 0.7 : 1;
                weights(lg, V, p.temperature, w);
                for (int pi = 0; pi < 13; pi++) {
                    p.top_p = ps[pi];
                    memset(keep, 1, (size_t)V);
                    int m = oracle_top_p(w, V, ps[pi], keep);
                    if (m < 0) {
                        skipped++;
                        continue;
                    }
                    assert_true(m >= 1);
                    cases++;
                    covered += check_kept(&p, lg, V, w, keep, seq++, V >= 1000 ? 1000000 : 400000);
                }
            }
        }
    }
    /* the test must mostly have run, with coverage in a good share */
    assert_true(cases > 400);
    assert_true(covered > 300);
    assert_true(skipped < 20);

    /* all equal: lower ids first, exactly ceil-ish: 100 x 1, top_p 0.305 keeps
     * the tokens whose preceding mass j < 30.5, ids 0..30 */
    for (int i = 0; i < 100; i++)
        lg[i] = 1.25f;
    p.temperature = 1;
    p.top_p = 0.305;
    epm_sampler *s = mk(&p, 100);
    int64_t cnt[100];
    histogram(s, 100, lg, 0, 20000, cnt);
    double pu[100];
    for (int i = 0; i < 100; i++)
        pu[i] = i <= 30 ? 1.0 / 31 : 0;
    check_freq(cnt, pu, 100, 20000);
    epm_sampler_destroy(s);
    /* an exact boundary: n equal weights of 1 and a bound top_p x n that is an
     * integer m: token m's preceding mass is exactly m, not < m: ids 0..m-1 */
    const struct {
        int V;
        double top_p;
    } ex[] = {{8, 0.25}, {12, 0.25}, {12, 0.5}, {16, 0.75}, {24, 0.5}, {100, 0.25}, {100, 0.75}, {128, 0.5},
              {1024, 0.015625}, {1024, 0.125}, {1000, 0.125}};
    for (size_t e = 0; e < sizeof ex / sizeof ex[0]; e++) {
        const int V = ex[e].V, m = (int)(ex[e].top_p * V);
        for (int i = 0; i < V; i++)
            lg[i] = -0.75f;
        p.top_p = ex[e].top_p;
        memset(keep, 0, (size_t)V);
        memset(keep, 1, (size_t)m);
        weights(lg, V, 1, w);
        check_kept(&p, lg, V, w, keep, 100 + (int64_t)e, 5000000);
    }
    /* tiny top_p: only the top token, the lowest id among tied maxima */
    for (int i = 0; i < 64; i++)
        lg[i] = (float)(rng_unit());
    lg[40] = lg[13] = lg[50] = 2;
    p.top_p = 1e-9;
    s = mk(&p, 64);
    for (int k = 0; k < 500; k++)
        assert_int_equal(next_tok(s, 64, lg, 0, k), 13);
    epm_sampler_destroy(s);
    /* top_p 1 and 0 are off: a token of tiny probability is drawn eventually */
    const float lo[3] = {0, 0, -3};
    for (int r = 0; r < 2; r++) {
        p.top_p = r ? 1 : 0;
        s = mk(&p, 3);
        int64_t c3[3];
        histogram(s, 3, lo, 0, 20000, c3);
        double e3 = exp(-3.0), p3[3] = {1 / (2 + e3), 1 / (2 + e3), e3 / (2 + e3)};
        check_freq(c3, p3, 3, 20000);
        epm_sampler_destroy(s);
    }
    /* the nucleus is over probabilities after temperature: at T 1, w = {1, 0.5, 0.25}
     * and top_p 0.6 keeps {0, 1} (the mass before token 1 is 1 / 1.75 = 0.571 < 0.6);
     * at T 0.5, w = {1, 0.25, 0.0625}: 1 / 1.3125 = 0.762 >= 0.6, only {0} */
    const float t3[3] = {0, (float)log(0.5), (float)log(0.25)};
    p.top_p = 0.6;
    for (int r = 0; r < 2; r++) {
        p.temperature = r ? 0.5 : 1;
        s = mk(&p, 3);
        int64_t c3[3];
        histogram(s, 3, t3, 0, 4000, c3);
        assert_true(c3[0] > 0);
        assert_true(r ? c3[1] == 0 : c3[1] > 0);
        assert_int_equal(c3[2], 0);
        epm_sampler_destroy(s);
    }
    free(lg);
    free(w);
    free(keep);
}

/* ---- min-p ---- */

static void test_min_p(void **state)
{
    (void)state;
    enum { V = 50 };
    float lg[V];
    double w[V];
    uint8_t keep[V];
    epm_sampling p;
    memset(&p, 0, sizeof p);
    p.seed = 8;
    rng_state = 12;
    const double mps[5] = {0.01, 0.1, 0.3, 0.6, 0.99};
    int64_t seq = 0;
    for (int r = 0; r < 4; r++) {
        for (int i = 0; i < V; i++)
            lg[i] = (float)(rng_unit() * 4);
        if (r == 3) /* ties with the top */
            lg[7] = lg[33] = lg[41] = 5;
        for (int ti = 0; ti < 2; ti++) {
            p.temperature = ti ? 0.5 : 1;
            weights(lg, V, p.temperature, w);
            for (int mi = 0; mi < 5; mi++) {
                p.min_p = mps[mi];
                int near = 0;
                for (int i = 0; i < V; i++) {
                    keep[i] = w[i] >= mps[mi];
                    near |= fabs(w[i] - mps[mi]) < 1e-12;
                }
                if (near)
                    continue;
                check_kept(&p, lg, V, w, keep, seq++, 1000000);
            }
        }
    }
    /* by hand: w = {1, 0.5, 0.2, 0.05}, min_p 0.3: {0, 1} in proportion 2 : 1 */
    const float h[4] = {0, (float)log(0.5), (float)log(0.2), (float)log(0.05)};
    p.temperature = 1;
    p.min_p = 0.3;
    epm_sampler *s = mk(&p, 4);
    int64_t cnt[4];
    histogram(s, 4, h, 0, 20000, cnt);
    const double ph[4] = {2.0 / 3, 1.0 / 3, 0, 0};
    check_freq(cnt, ph, 4, 20000);
    epm_sampler_destroy(s);
}

/* ---- the weights' precision, through min-p's exact threshold ---- */

/* Token 0 has logit 0 (weight 1); tokens 1..m tie at z (weight w = exp(z / T),
 * m w about 4, so that they are most draws). min_p = w (1 + 1e-9) must drop
 * all of them, min_p = w (1 - 1e-9) keep them: the sampler's weights must be
 * exp to better than 1e-9 over the range the polynomial and the 2^k cover. */
static void test_weight_precision(void **state)
{
    (void)state;
    enum { MMAX = 2000 };
    float *lg = malloc((MMAX + 1) * sizeof *lg);
    assert_non_null(lg);
    rng_state = 77;
    const double temps[3] = {1, 0.7, 2.5};
    for (int c = 0; c < 120; c++) {
        const double T = temps[c % 3], x = -6 * rng_unit();
        const float z = (float)(x * T);
        const double w = exp((double)z / T);
        const int m = (int)ceil(4 / w);
        assert_true(m >= 1 && m <= MMAX);
        lg[0] = 0;
        for (int i = 1; i <= m; i++)
            lg[i] = z;
        for (int side = 0; side < 2; side++) {
            epm_sampling p;
            memset(&p, 0, sizeof p);
            p.temperature = T;
            p.min_p = w * (side ? 1 - 1e-9 : 1 + 1e-9);
            p.seed = (uint64_t)c;
            epm_sampler *s = mk(&p, m + 1);
            int others = 0;
            for (int k = 0; k < 24; k++)
                others += next_tok(s, m + 1, lg, c, k) != 0;
            epm_sampler_destroy(s);
            if (side ? others == 0 : others != 0)
                fail_msg("T %g, logit %.9g (w %.17g), min_p %.17g: %d of 24 draws took a tied token", T, (double)z, w,
                         p.min_p, others);
        }
    }
    free(lg);
}

/* ---- top-k, then top-p over what top-k left, then min-p: by hand ---- */

static void test_combined(void **state)
{
    (void)state;
    /* weights: 0: 0.3, 1: 1.0, 2: 0.5, 3: 0.05, 4: 0.5, 5: 0.9, 6: 0.01, 7: 0.3, 8..19: 0.2 */
    enum { V = 20 };
    double w[V] = {0.3, 1.0, 0.5, 0.05, 0.5, 0.9, 0.01, 0.3};
    for (int i = 8; i < V; i++)
        w[i] = 0.2;
    float lg[V];
    for (int i = 0; i < V; i++)
        lg[i] = (float)log(w[i]) + 1;
    struct {
        double T;
        int k;
        double top_p, min_p;
        double expect[V]; /* unnormalised */
    } cases[] = {
        /* top_k 6 keeps {1, 5, 2, 4, 0, 7} (0 and 7 tie sixth), mass 3.5; top_p 0.6 bounds the
         * mass before at 2.1: 1 (0), 5 (1), 2 (1.9) kept, 4 (2.4) out, although it ties 2;
         * min_p 0.05 drops nothing more. (Without top-k the total would be 5.96, the bound
         * 3.576 and the nucleus {1, 5, 2, 4, 0, 7, 8}.) */
        {1, 6, 0.6, 0.05, {[1] = 1.0, [5] = 0.9, [2] = 0.5}},
        /* top_p 0.75 (bound 2.625): {1, 5, 2, 4}; min_p 0.6 then drops 2 and 4 */
        {1, 6, 0.75, 0.6, {[1] = 1.0, [5] = 0.9}},
        /* top_p 0.75 and min_p 0.45: {1, 5, 2, 4} */
        {1, 6, 0.75, 0.45, {[1] = 1.0, [5] = 0.9, [2] = 0.5, [4] = 0.5}},
        /* T 0.5 squares the weights: top_k 6 gives {1: 1, 5: .81, 2: .25, 4: .25, 0: .09, 7: .09},
         * mass 2.49, bound 0.8 x 2.49 = 1.992: 1 (0), 5 (1), 2 (1.81) kept, 4 (2.06) out;
         * min_p 0.2: 0.25 stays */
        {0.5, 6, 0.8, 0.2, {[1] = 1.0, [5] = 0.81, [2] = 0.25}},
        /* top_k 3 ties at the third: {1, 5, 2, 4}; top_p 0.9 (bound 2.61 of 2.9): all four (mass
         * before 4 = 2.4); min_p 0.55 drops 2 and 4 */
        {1, 3, 0.9, 0.55, {[1] = 1.0, [5] = 0.9}},
        /* no top-k: total 5.96, top_p 0.5 (2.98): 1, 5, 2, 4 (2.4), 0 (2.9) kept, 7 (3.2) out */
        {1, 0, 0.5, 0, {[1] = 1.0, [5] = 0.9, [2] = 0.5, [4] = 0.5, [0] = 0.3}},
    };
    const int64_t N = 20000;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        epm_sampling p;
        memset(&p, 0, sizeof p);
        p.temperature = cases[c].T;
        p.top_k = cases[c].k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        p.seed = 1000 + c;
        double q[V], sum = 0;
        for (int i = 0; i < V; i++)
            sum += cases[c].expect[i];
        for (int i = 0; i < V; i++)
            q[i] = cases[c].expect[i] / sum;
        epm_sampler *s = mk(&p, V);
        int64_t cnt[V];
        histogram(s, V, lg, (int64_t)c, N, cnt);
        for (int i = 0; i < V; i++)
            if ((q[i] > 0) != (cnt[i] > 0))
                fail_msg("case %zu: token %d drawn %lld times, expected p %g", c, i, (long long)cnt[i], q[i]);
        check_freq(cnt, q, V, N);
        epm_sampler_destroy(s);
    }
}

/* ---- parameter checks ---- */

static void test_validate(void **state)
{
    (void)state;
    struct {
        const char *name;
        double temperature;
        int top_k;
        double top_p, min_p, rp;
        const char *value;
    } bad[] = {
        {"temperature", -1, 0, 0, 0, 0, "-1"},
        {"temperature", NAN, 0, 0, 0, 0, "nan"},
        {"temperature", INFINITY, 0, 0, 0, 0, "inf"},
        {"top_k", 1, -1, 0, 0, 0, "-1"},
        {"top_p", 1, 0, 1.5, 0, 0, "1.5"},
        {"top_p", 1, 0, -0.1, 0, 0, "-0.1"},
        {"top_p", 1, 0, NAN, 0, 0, "nan"},
        {"min_p", 1, 0, 0, 1, 0, "1"},
        {"min_p", 1, 0, 0, -0.5, 0, "-0.5"},
        {"min_p", 1, 0, 0, NAN, 0, "nan"},
        {"repetition_penalty", 1, 0, 0, 0, -1, "-1"},
        {"repetition_penalty", 1, 0, 0, 0, INFINITY, "inf"},
        {"repetition_penalty", 0, 0, 0, 0, NAN, "nan"},
        {"repetition_penalty", 0, 0, 0, 0, 1e-308, "1e-308"}, /* (a seen logit over it: +inf, found by fuzz_generation) */
        {"repetition_penalty", 0, 0, 0, 0, 2e6, "2e+06"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        epm_sampling p;
        memset(&p, 0, sizeof p);
        p.temperature = bad[i].temperature;
        p.top_k = bad[i].top_k;
        p.top_p = bad[i].top_p;
        p.min_p = bad[i].min_p;
        p.repetition_penalty = bad[i].rp;
        epm_clear_error();
        assert_int_equal(epm_sampling_validate(&p), EPM_ERR_INVALID_ARG);
        expect_msg(bad[i].name);
        expect_msg(bad[i].value);
        epm_sampler *s = (epm_sampler *)&p; /* must be reset to NULL */
        epm_clear_error();
        assert_int_not_equal(epm_sampler_create(&p, 10, &s), EPM_OK);
        assert_null(s);
        expect_msg(bad[i].name);
        expect_msg(bad[i].value);
    }
    /* vocab */
    const int vocabs[2] = {0, -3};
    for (int i = 0; i < 2; i++) {
        epm_sampler *s = NULL;
        epm_clear_error();
        assert_int_not_equal(epm_sampler_create(NULL, vocabs[i], &s), EPM_OK);
        assert_null(s);
        expect_msg("vocab");
        expect_msg(i ? "-3" : "0");
    }
    assert_int_not_equal(epm_sampler_create(NULL, 4, NULL), EPM_OK);
    /* the edges that are allowed */
    epm_sampling ok;
    memset(&ok, 0, sizeof ok);
    ok.top_p = 1;
    ok.min_p = 0.999;
    ok.repetition_penalty = 1e-3;
    ok.top_k = 2147483647;
    ok.temperature = 1e-300;
    assert_int_equal(epm_sampling_validate(&ok), EPM_OK);
    epm_sampler *s = mk(&ok, 1);
    const float one[1] = {0};
    assert_int_equal(next_tok(s, 1, one, 0, 0), 0);
    epm_sampler_destroy(s);
}

/* ---- generation_config.json ---- */

static epm_generation_config gc_ok(const char *text)
{
    epm_generation_config g;
    memset(&g, 0x5a, sizeof g);
    if (epm_generation_config_parse(text, strlen(text), "gen.json", &g) != EPM_OK)
        fail_msg("%s: unexpected failure: %s", text, epm_last_error());
    if (epm_sampling_validate(&g.sampling) != EPM_OK)
        fail_msg("%s: parsed sampling invalid: %s", text, epm_last_error());
    return g;
}

/* a refused text: the status, and the message names label, field and value */
static void gc_bad(const char *text, epm_status code, const char *field, const char *value)
{
    epm_generation_config g;
    memset(&g, 0x5a, sizeof g);
    epm_clear_error();
    epm_status st = epm_generation_config_parse(text, strlen(text), "my_gen.json", &g);
    if (st == EPM_OK)
        fail_msg("%s: accepted", text);
    if (code != EPM_OK && st != code)
        fail_msg("%s: status %d (%s), expected %d", text, st, epm_last_error(), code);
    expect_msg("my_gen.json");
    if (field)
        expect_msg(field);
    if (value)
        expect_msg(value);
    /* the output is cleared */
    epm_generation_config z;
    memset(&z, 0, sizeof z);
    assert_memory_equal(&g, &z, sizeof g);
}

static void test_generation_config_parse(void **state)
{
    (void)state;
    epm_generation_config g;
    /* eos: an id, a list, null, absent */
    g = gc_ok("{\"eos_token_id\": 2}");
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 2);
    g = gc_ok("{\"eos_token_id\": [151645, 151643]}");
    assert_int_equal(g.n_eos, 2);
    assert_int_equal(g.eos[0], 151645);
    assert_int_equal(g.eos[1], 151643);
    g = gc_ok("{\"eos_token_id\": 0}");
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 0);
    g = gc_ok("{\"eos_token_id\": null}");
    assert_int_equal(g.n_eos, 0);
    g = gc_ok("{\"bos_token_id\": 1}");
    assert_int_equal(g.n_eos, 0);
    g = gc_ok("{}");
    assert_int_equal(g.n_eos, 0);
    assert_int_equal(g.do_sample, 0);
    assert_int_equal(epm_sampling_random(&g.sampling), 0);
    assert_true(g.sampling.top_k == 0 && g.sampling.top_p == 0 && g.sampling.min_p == 0);
    /* 64 ids fit, 65 do not */
    char big[1024];
    int o = snprintf(big, sizeof big, "{\"eos_token_id\": [");
    for (int i = 0; i < 64; i++)
        o += snprintf(big + o, sizeof big - (size_t)o, "%s%d", i ? ", " : "", 1000 + i);
    snprintf(big + o, sizeof big - (size_t)o, "]}");
    g = gc_ok(big);
    assert_int_equal(g.n_eos, 64);
    assert_int_equal(g.eos[63], 1063);
    snprintf(big + o, sizeof big - (size_t)o, ", 7]}");
    gc_bad(big, EPM_OK, "eos_token_id", "1000");
    /* bad ids */
    gc_bad("{\"eos_token_id\": -1}", EPM_ERR_FORMAT, "eos_token_id", "-1");
    gc_bad("{\"eos_token_id\": \"2\"}", EPM_ERR_FORMAT, "eos_token_id", "\"2\"");
    gc_bad("{\"eos_token_id\": 2.0}", EPM_ERR_FORMAT, "eos_token_id", "2.0");
    gc_bad("{\"eos_token_id\": 2.5}", EPM_ERR_FORMAT, "eos_token_id", "2.5");
    gc_bad("{\"eos_token_id\": [1, -7]}", EPM_ERR_FORMAT, "eos_token_id", "-7");
    gc_bad("{\"eos_token_id\": [1, \"x\"]}", EPM_ERR_FORMAT, "eos_token_id", "\"x\"");
    gc_bad("{\"eos_token_id\": [[1]]}", EPM_ERR_FORMAT, "eos_token_id", "[[1]]");
    gc_bad("{\"eos_token_id\": true}", EPM_ERR_FORMAT, "eos_token_id", "true");
    gc_bad("{\"eos_token_id\": 4294967296}", EPM_ERR_FORMAT, "eos_token_id", "4294967296");
    gc_bad("{\"eos_token_id\": {\"a\": 1}}", EPM_ERR_FORMAT, "eos_token_id", NULL);

    /* do_sample false or absent: greedy, whatever else the file says, but the penalty stays */
    const char *greedy[2] = {
        "{\"do_sample\": false, \"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8, \"min_p\": 0.1, "
        "\"repetition_penalty\": 1.1}",
        "{\"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.8, \"repetition_penalty\": 1.1, \"typical_p\": 0.9}",
    };
    for (int i = 0; i < 2; i++) {
        g = gc_ok(greedy[i]);
        assert_int_equal(g.do_sample, 0);
        assert_int_equal(epm_sampling_random(&g.sampling), 0);
        assert_true(g.sampling.temperature == 0);
        assert_int_equal(g.sampling.top_k, 0);
        assert_true(g.sampling.top_p == 0 && g.sampling.min_p == 0);
        assert_true(g.sampling.repetition_penalty == 1.1);
    }
    /* do_sample with nothing else: transformers' defaults, T 1 and top_k 50 */
    g = gc_ok("{\"do_sample\": true}");
    assert_int_equal(g.do_sample, 1);
    assert_int_equal(epm_sampling_random(&g.sampling), 1);
    assert_true(g.sampling.temperature == 1);
    assert_int_equal(g.sampling.top_k, 50);
    assert_true(g.sampling.top_p == 0 || g.sampling.top_p == 1); /* off */
    assert_true(g.sampling.min_p == 0);
    assert_true(g.sampling.repetition_penalty == 0 || g.sampling.repetition_penalty == 1);
    /* Qwen3's */
    g = gc_ok("{\"bos_token_id\": 151643, \"do_sample\": true, \"eos_token_id\": [151645, 151643], "
              "\"pad_token_id\": 151643, \"temperature\": 0.6, \"top_k\": 20, \"top_p\": 0.95, "
              "\"transformers_version\": \"4.51.0\"}");
    assert_true(g.sampling.temperature == 0.6 && g.sampling.top_k == 20 && g.sampling.top_p == 0.95);
    assert_int_equal(g.n_eos, 2);
    g = gc_ok("{\"do_sample\": true, \"temperature\": 0.7, \"top_p\": 0.8, \"top_k\": 20, "
              "\"repetition_penalty\": 1.05, \"min_p\": 0.05, \"eos_token_id\": [151645, 151643]}");
    assert_true(g.sampling.temperature == 0.7 && g.sampling.top_k == 20 && g.sampling.top_p == 0.8 &&
                g.sampling.min_p == 0.05 && g.sampling.repetition_penalty == 1.05);
    /* top_k null: off; 0: off */
    g = gc_ok("{\"do_sample\": true, \"top_k\": null}");
    assert_int_equal(g.sampling.top_k, 0);
    g = gc_ok("{\"do_sample\": true, \"top_k\": 0}");
    assert_int_equal(g.sampling.top_k, 0);
    /* temperature 0 with do_sample: greedy; null temperature: the default */
    g = gc_ok("{\"do_sample\": true, \"temperature\": 0}");
    assert_int_equal(epm_sampling_random(&g.sampling), 0);
    g = gc_ok("{\"do_sample\": true, \"temperature\": null}");
    assert_true(g.sampling.temperature == 1);
    g = gc_ok("{\"do_sample\": true, \"temperature\": 2}"); /* an integer is a number */
    assert_true(g.sampling.temperature == 2);
    /* neutral values of refused methods are fine */
    g = gc_ok("{\"do_sample\": true, \"num_beams\": 1, \"no_repeat_ngram_size\": 0, \"typical_p\": 1.0, "
              "\"epsilon_cutoff\": 0.0, \"eta_cutoff\": 0, \"penalty_alpha\": null}");
    assert_int_equal(g.do_sample, 1);
    /* unknown fields are ignored */
    g = gc_ok("{\"foo\": [1, {\"bar\": null}], \"max_new_tokens\": 2048, \"transformers_version\": \"4.46.0\", "
              "\"_from_model_config\": true, \"use_cache\": true, \"eos_token_id\": 5}");
    assert_int_equal(g.eos[0], 5);
    /* a NULL label names generation_config.json */
    epm_clear_error();
    assert_int_not_equal(epm_generation_config_parse("[]", 2, NULL, &g), EPM_OK);
    expect_msg("generation_config.json");
    assert_int_not_equal(epm_generation_config_parse(NULL, 0, "x", &g), EPM_OK);
    assert_int_not_equal(epm_generation_config_parse("{}", 2, "x", NULL), EPM_OK);

    /* bad values */
    gc_bad("{\"do_sample\": true, \"top_p\": 0}", EPM_ERR_FORMAT, "top_p", "0");
    gc_bad("{\"do_sample\": true, \"top_p\": 1.5}", EPM_ERR_FORMAT, "top_p", "1.5");
    gc_bad("{\"top_p\": -0.5}", EPM_ERR_FORMAT, "top_p", "-0.5");
    gc_bad("{\"do_sample\": true, \"temperature\": -1}", EPM_ERR_FORMAT, "temperature", "-1");
    gc_bad("{\"do_sample\": true, \"temperature\": \"0.7\"}", EPM_ERR_FORMAT, "temperature", "\"0.7\"");
    gc_bad("{\"do_sample\": true, \"min_p\": 1}", EPM_ERR_FORMAT, "min_p", "1");
    gc_bad("{\"repetition_penalty\": 0}", EPM_ERR_FORMAT, "repetition_penalty", "0");
    gc_bad("{\"repetition_penalty\": -1.25}", EPM_ERR_FORMAT, "repetition_penalty", "-1.25");
    gc_bad("{\"repetition_penalty\": 1e-300}", EPM_ERR_FORMAT, "repetition_penalty", "e-300");
    gc_bad("{\"do_sample\": true, \"top_k\": -1}", EPM_ERR_FORMAT, "top_k", "-1");
    gc_bad("{\"do_sample\": true, \"top_k\": 20.5}", EPM_ERR_FORMAT, "top_k", "20.5");
    gc_bad("{\"do_sample\": true, \"top_k\": \"20\"}", EPM_ERR_FORMAT, "top_k", "\"20\"");
    gc_bad("{\"do_sample\": \"yes\"}", EPM_ERR_FORMAT, "do_sample", "\"yes\"");
    gc_bad("{\"do_sample\": 1}", EPM_ERR_FORMAT, "do_sample", "1");
    /* methods epmoe does not run (values exact in binary: jansson prints the
     * real with %.17g, 0.6 as 0.59999999999999998) */
    gc_bad("{\"num_beams\": 4}", EPM_ERR_UNSUPPORTED, "num_beams", "4");
    gc_bad("{\"do_sample\": true, \"num_beams\": 2}", EPM_ERR_UNSUPPORTED, "num_beams", "2");
    gc_bad("{\"no_repeat_ngram_size\": 3}", EPM_ERR_UNSUPPORTED, "no_repeat_ngram_size", "3");
    gc_bad("{\"penalty_alpha\": 0.625, \"top_k\": 4}", EPM_ERR_UNSUPPORTED, "penalty_alpha", "0.625");
    gc_bad("{\"do_sample\": true, \"typical_p\": 0.875}", EPM_ERR_UNSUPPORTED, "typical_p", "0.875");
    gc_bad("{\"do_sample\": true, \"epsilon_cutoff\": 0.00048828125}", EPM_ERR_UNSUPPORTED, "epsilon_cutoff",
           "0.00048828125");
    gc_bad("{\"do_sample\": true, \"eta_cutoff\": 0.0009765625}", EPM_ERR_UNSUPPORTED, "eta_cutoff", "0.0009765625");
    /* ... each accepted without do_sample where transformers ignores it */
    g = gc_ok("{\"do_sample\": false, \"typical_p\": 0.9, \"epsilon_cutoff\": 0.0003, \"eta_cutoff\": 0.0009}");
    assert_int_equal(epm_sampling_random(&g.sampling), 0);
    /* not JSON, not an object */
    gc_bad("{", EPM_ERR_FORMAT, NULL, NULL);
    gc_bad("", EPM_ERR_FORMAT, NULL, NULL);
    gc_bad("{\"do_sample\": true,}", EPM_ERR_FORMAT, NULL, NULL);
    gc_bad("{\"eos_token_id\": 1, \"eos_token_id\": 2}", EPM_ERR_FORMAT, NULL, NULL);
    gc_bad("[1, 2]", EPM_ERR_FORMAT, NULL, "object");
    gc_bad("42", EPM_ERR_FORMAT, NULL, NULL); /* jansson wants an array or object at the top */
    gc_bad("null", EPM_ERR_FORMAT, NULL, NULL);
    /* the length bounds the text: the first 2 bytes of "{}garbage" */
    assert_int_equal(epm_generation_config_parse("{}garbage", 2, "x", &g), EPM_OK);
}

/* ---- epm_generation_config_load / _eos ---- */

static void put(const char *dir, const char *name, const char *text)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *newdir(void)
{
    static char dirs[8][512];
    static int next;
    char *d = dirs[next++ % 8];
    snprintf(d, 512, "%s/model.XXXXXX", tu_tmpdir());
    if (!mkdtemp(d))
        fail_msg("mkdtemp %s", d);
    return d;
}

static void test_generation_config_load(void **state)
{
    (void)state;
    epm_generation_config g;
    const char *cfg = "{\"model_type\": \"qwen3_moe\", \"eos_token_id\": 151645, \"bos_token_id\": 151643}";
    /* eos from generation_config.json */
    const char *d = newdir();
    put(d, "config.json", cfg);
    put(d, "generation_config.json", "{\"do_sample\": true, \"temperature\": 0.6, \"eos_token_id\": [7, 8, 9]}");
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    assert_int_equal(g.n_eos, 3);
    assert_int_equal(g.eos[2], 9);
    assert_true(g.sampling.temperature == 0.6);
    assert_int_equal(g.sampling.top_k, 50);
    /* generation_config.json without eos: config.json's */
    d = newdir();
    put(d, "config.json", cfg);
    put(d, "generation_config.json", "{\"do_sample\": true, \"top_p\": 0.9, \"repetition_penalty\": 1.2}");
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 151645);
    assert_true(g.sampling.top_p == 0.9 && g.sampling.repetition_penalty == 1.2);
    /* no generation_config.json: greedy, config.json's eos (a list) */
    d = newdir();
    put(d, "config.json", "{\"eos_token_id\": [1, 106, 2]}");
    memset(&g, 0x77, sizeof g);
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    assert_int_equal(g.n_eos, 3);
    assert_int_equal(g.eos[0], 1);
    assert_int_equal(g.eos[1], 106);
    assert_int_equal(g.eos[2], 2);
    assert_int_equal(g.do_sample, 0);
    assert_int_equal(epm_sampling_random(&g.sampling), 0);
    assert_true(g.sampling.top_k == 0 && g.sampling.top_p == 0 && g.sampling.min_p == 0);
    assert_true(g.sampling.repetition_penalty == 0 || g.sampling.repetition_penalty == 1);
    /* ... and should a flag turn sampling on, transformers' defaults (as
     * generate(do_sample=True) without a file): top_k 50, temperature 1 */
    assert_int_equal(g.if_sampled.top_k, 50);
    assert_true(g.if_sampled.temperature == 1 && g.if_sampled.top_p == 1);
    /* config.json without eos, or null: none */
    d = newdir();
    put(d, "config.json", "{\"model_type\": \"mixtral\"}");
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    assert_int_equal(g.n_eos, 0);
    put(d, "config.json", "{\"eos_token_id\": null}");
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    assert_int_equal(g.n_eos, 0);
    /* an explicit path elsewhere; config.json's eos where it names none */
    const char *other = newdir();
    put(other, "mine.json", "{\"do_sample\": true, \"top_k\": 5}");
    put(other, "mine_eos.json", "{\"eos_token_id\": 42}");
    d = newdir();
    put(d, "config.json", cfg);
    put(d, "generation_config.json", "{\"num_beams\": 4}"); /* not read when a path is given */
    char path[600];
    snprintf(path, sizeof path, "%s/mine.json", other);
    assert_int_equal(epm_generation_config_load(d, path, &g), EPM_OK);
    assert_int_equal(g.sampling.top_k, 5);
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 151645);
    snprintf(path, sizeof path, "%s/mine_eos.json", other);
    assert_int_equal(epm_generation_config_load(d, path, &g), EPM_OK);
    assert_int_equal(g.n_eos, 1);
    assert_int_equal(g.eos[0], 42);
    /* ... and the default one here is refused, naming its path and field */
    epm_clear_error();
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_ERR_UNSUPPORTED);
    expect_msg("generation_config.json");
    expect_msg("num_beams");
    expect_msg(d);
    /* a missing explicit path: an error naming it, the output cleared */
    snprintf(path, sizeof path, "%s/absent.json", other);
    memset(&g, 0x33, sizeof g);
    epm_clear_error();
    assert_int_not_equal(epm_generation_config_load(d, path, &g), EPM_OK);
    expect_msg(path);
    epm_generation_config z;
    memset(&z, 0, sizeof z);
    assert_memory_equal(&g, &z, sizeof g);
    /* errors in config.json's eos name config.json */
    d = newdir();
    put(d, "config.json", "{\"eos_token_id\": \"</s>\"}");
    epm_clear_error();
    assert_int_not_equal(epm_generation_config_load(d, NULL, &g), EPM_OK);
    expect_msg("config.json");
    expect_msg("eos_token_id");
    expect_msg("</s>");
    /* invalid JSON in generation_config.json: its path */
    d = newdir();
    put(d, "config.json", cfg);
    put(d, "generation_config.json", "{\"do_sample\": tru}");
    epm_clear_error();
    assert_int_equal(epm_generation_config_load(d, NULL, &g), EPM_ERR_FORMAT);
    expect_msg("generation_config.json");

    /* epm_generation_config_eos: only eos, the rest untouched */
    d = newdir();
    put(d, "config.json", "{\"eos_token_id\": [3, 4]}");
    memset(&g, 0, sizeof g);
    g.sampling.temperature = 0.25;
    g.do_sample = 1;
    g.n_eos = 1;
    g.eos[0] = 99;
    assert_int_equal(epm_generation_config_eos(d, &g), EPM_OK);
    assert_int_equal(g.n_eos, 2);
    assert_int_equal(g.eos[0], 3);
    assert_int_equal(g.eos[1], 4);
    assert_true(g.sampling.temperature == 0.25);
    assert_int_equal(g.do_sample, 1);
    put(d, "config.json", "[3]");
    epm_clear_error();
    assert_int_not_equal(epm_generation_config_eos(d, &g), EPM_OK);
    expect_msg("config.json");
    d = newdir(); /* no config.json */
    epm_clear_error();
    assert_int_not_equal(epm_generation_config_eos(d, &g), EPM_OK);
    expect_msg("config.json");
    assert_int_not_equal(epm_generation_config_eos(NULL, &g), EPM_OK);
    assert_int_not_equal(epm_generation_config_load(NULL, NULL, &g), EPM_OK);
}

/* ---- presence and frequency penalties, min_tokens ---- */

static void test_penalties_and_min_tokens(void **state)
{
    (void)state;
    float lg[4] = {2.0f, 1.9f, 0, -1};
    const int32_t twice[2] = {0, 0}, out_of_range[2] = {-3, 9};
    /* frequency: per time generated; presence: once; over the generated tokens only */
    struct {
        double pres, freq;
        int want;
    } cases[] = {{0, 0.1, 1}, {0, 0.04, 0}, {0.2, 0, 1}, {0.05, 0, 0}, {0.03, 0.03, 0}, {0.05, 0.03, 1},
                 {-0.5, 0.2, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        epm_sampling p = {.presence_penalty = cases[i].pres, .frequency_penalty = cases[i].freq};
        int32_t t = greedy1(&p, lg, 4, NULL, 0, twice, 2);
        if (t != cases[i].want)
            fail_msg("presence %g, frequency %g: token %d, expected %d", cases[i].pres, cases[i].freq, t,
                     cases[i].want);
        assert_int_equal(greedy1(&p, lg, 4, twice, 2, NULL, 0), 0); /* the prompt is not counted */
        assert_int_equal(greedy1(&p, lg, 4, NULL, 0, out_of_range, 2), 0);
    }
    /* a negative frequency penalty raises a token: 0.5 x 2 lifts token 1 past token 0 */
    epm_sampling up = {.frequency_penalty = -0.5};
    const int32_t ones[2] = {1, 1};
    assert_int_equal(greedy1(&up, lg, 4, NULL, 0, ones, 2), 1);
    /* the counts do not leak from one call to the next */
    epm_sampling f = {.frequency_penalty = 0.04};
    epm_sampler *s = mk(&f, 4);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(next_pen(s, 4, lg, NULL, 0, twice, 2, 0, 2), 0);
        assert_int_equal(next_pen(s, 4, lg, NULL, 0, NULL, 0, 0, 0), 0);
    }
    epm_sampler_destroy(s);
    /* min_tokens: the stop tokens are out before that step, in greedy and sampled decoding; the
     * ids are copied at creation; ids outside the vocabulary are ignored */
    int32_t stops[3] = {0, 77, -1};
    for (int sampled = 0; sampled < 2; sampled++) {
        epm_sampling p = {.temperature = sampled ? 0.01 : 0, .min_tokens = 2, .stop_ids = stops, .n_stop = 3};
        epm_sampler *m = mk(&p, 4);
        stops[0] = 1; /* after creation: no effect */
        for (int step = 0; step < 4; step++)
            for (int seq = 0; seq < 20; seq++) {
                int32_t t = next_pen(m, 4, lg, NULL, 0, NULL, 0, seq, step);
                if (step < 2 && t == 0)
                    fail_msg("min_tokens 2: stop token drawn at step %d", step);
                if (step >= 2 && !sampled && t != 0)
                    fail_msg("min_tokens 2: step %d took %d, not the top token", step, t);
            }
        epm_sampler_destroy(m);
        stops[0] = 0;
    }
    /* only stop tokens left before min_tokens: no token, named */
    const float only[2] = {1, -INFINITY};
    int32_t stop0 = 0, t;
    epm_sampling p = {.min_tokens = 1, .stop_ids = &stop0, .n_stop = 1};
    epm_sampler *m = mk(&p, 2);
    assert_int_equal(epm_sampler_next(m, only, NULL, 0, NULL, 0, 4, 0, &t), EPM_ERR_FORMAT);
    expect_msg("sequence 4 at step 0");
    epm_sampler_destroy(m);
    /* parameters named */
    epm_sampling bad = {.presence_penalty = 2.5};
    assert_int_equal(epm_sampling_validate(&bad), EPM_ERR_INVALID_ARG);
    expect_msg("presence_penalty = 2.5");
    bad = (epm_sampling){.frequency_penalty = NAN};
    assert_int_equal(epm_sampling_validate(&bad), EPM_ERR_INVALID_ARG);
    expect_msg("frequency_penalty");
    bad = (epm_sampling){.min_tokens = -1};
    assert_int_equal(epm_sampling_validate(&bad), EPM_ERR_INVALID_ARG);
    expect_msg("min_tokens = -1");
    bad = (epm_sampling){.n_stop = 3};
    assert_int_equal(epm_sampling_validate(&bad), EPM_ERR_INVALID_ARG);
    /* generation_config.json's min_new_tokens, sampling or not; min_length refused */
    epm_generation_config g = gc_ok("{\"min_new_tokens\": 5}");
    assert_int_equal(g.sampling.min_tokens, 5);
    g = gc_ok("{\"do_sample\": true, \"min_new_tokens\": 3}");
    assert_int_equal(g.sampling.min_tokens, 3);
    assert_int_equal(g.if_sampled.min_tokens, 3);
    gc_bad("{\"min_new_tokens\": -1}", EPM_ERR_FORMAT, "min_new_tokens", "-1");
    gc_bad("{\"min_new_tokens\": 1.5}", EPM_ERR_FORMAT, "min_new_tokens", "1.5");
    gc_bad("{\"min_length\": 10}", EPM_ERR_UNSUPPORTED, "min_length", "10");
}

/* ---- per-request parameters: epm_sampler_set, own_seed, epm_request_sampling_apply ---- */

enum { SV = 64, SETS = 6 };

/* The parameter sets a batch's requests may bring: greedy, top-k sampled,
 * penalised (greedy and sampled), stop ids held back by min_tokens, min-p. */
static int32_t set_stops[SETS][8];
static epm_sampling param_set(int i)
{
    epm_sampling p;
    memset(&p, 0, sizeof p);
    switch (i) {
    case 0: break; /* greedy */
    case 1: p = (epm_sampling){.temperature = 0.8, .top_k = 5, .seed = 7}; break;
    case 2: p = (epm_sampling){.repetition_penalty = 1.8, .frequency_penalty = 0.7, .seed = 8}; break;
    case 3:
        p = (epm_sampling){.temperature = 1.3, .top_k = 40, .top_p = 0.9, .repetition_penalty = 1.5,
                           .presence_penalty = 0.5, .seed = 9};
        break;
    case 4: { /* the stop ids are the best tokens: held back before step 3 */
        static const int32_t st[5] = {3, 17, 40, 63, 200};
        memcpy(set_stops[i], st, sizeof st);
        p = (epm_sampling){.temperature = 0.05, .top_k = 20, .min_tokens = 3, .seed = 10, .n_stop = 5,
                           .stop_ids = set_stops[i]};
        break;
    }
    default: {
        set_stops[i][0] = 11;
        p = (epm_sampling){.temperature = 2, .min_p = 0.2, .seed = 11, .min_tokens = 2, .n_stop = 1,
                           .stop_ids = set_stops[i]};
        break;
    }
    }
    return p;
}

/* logits at random, the stop ids of set 4 and 5 on top */
static void rand_logits(float *lg)
{
    for (int i = 0; i < SV; i++)
        lg[i] = (float)(rng_unit() * 4 - 2);
    lg[3] = lg[17] = lg[40] = lg[63] = 6 + (float)rng_unit();
    lg[11] = 3;
}

/* One sampler whose parameters change between calls gives, bit for bit, the
 * tokens a fresh sampler with each set gives; a refused set leaves the old. */
static void test_sampler_set(void **state)
{
    (void)state;
    rng_state = 77;
    epm_sampler *sw = mk(NULL, SV);
    /* every switch between two sets, growing and shrinking the stop ids and top-k's heap */
    const int order[] = {0, 1, 3, 1, 4, 0, 5, 4, 2, 3, 0, 2, 5, 1, 4, 3, 5, 0, 3, 2, 4, 5, 2, 1, 0, 4, 1, 5, 3, 4,
                         2, 0, 1, 2, 3, 5};
    int differ[SETS] = {0}; /* the sets do differ from the greedy one */
    float lg[SV];
    int32_t hist[12];
    for (size_t r = 0; r < sizeof order / sizeof order[0]; r++) {
        const int i = order[r];
        epm_sampling p = param_set(i);
        int32_t scratch[8];
        if (p.n_stop) { /* the ids are copied: scribbled over after the set */
            memcpy(scratch, p.stop_ids, (size_t)p.n_stop * sizeof *scratch);
            p.stop_ids = scratch;
        }
        if (epm_sampler_set(sw, &p) != EPM_OK)
            fail_msg("epm_sampler_set(set %d): %s", i, epm_last_error());
        for (int j = 0; j < 8; j++)
            scratch[j] = 0;
        epm_sampling q = param_set(i);
        epm_sampler *fresh = mk(&q, SV), *greedy = mk(NULL, SV);
        for (int step = 0; step < 6; step++) {
            rand_logits(lg);
            for (int j = 0; j < 12; j++)
                hist[j] = (int32_t)(rng_next() % SV);
            const int64_t seq = (int64_t)(rng_next() % 5);
            int32_t a = next_pen(sw, SV, lg, hist, 6, hist + 6, 6, seq, step);
            int32_t b = next_pen(fresh, SV, lg, hist, 6, hist + 6, 6, seq, step);
            if (a != b)
                fail_msg("switch %zu to set %d, step %d: %d after epm_sampler_set, %d from a fresh sampler", r, i,
                         step, a, b);
            differ[i] += a != next_pen(greedy, SV, lg, hist, 6, hist + 6, 6, seq, step);
        }
        epm_sampler_destroy(fresh);
        epm_sampler_destroy(greedy);
    }
    for (int i = 1; i < SETS; i++)
        if (differ[i] == 0)
            fail_msg("set %d never differs from greedy decoding: the test cannot tell them apart", i);
    /* refused parameters: the status, named, and the sampler keeps set 4 (stop ids, min_tokens) */
    epm_sampling p4 = param_set(4);
    assert_int_equal(epm_sampler_set(sw, &p4), EPM_OK);
    epm_sampler *ref = mk(&p4, SV);
    int32_t big[70];
    for (int j = 0; j < 70; j++)
        big[j] = 30 + j; /* 30 .. 63 in the vocabulary, the rest beyond it */
    epm_sampling bad[5];
    for (int b = 0; b < 5; b++)
        bad[b] = (epm_sampling){.temperature = 1, .top_k = 60, .n_stop = 70, .stop_ids = big};
    bad[0].temperature = -1;
    bad[1].top_p = 1.5;
    bad[2].stop_ids = NULL;
    bad[3].min_p = NAN;
    bad[4].top_k = -3;
    const char *named[5] = {"temperature = -1", "top_p = 1.5", "stop ids", "min_p", "top_k = -3"};
    for (int b = 0; b < 5; b++) {
        epm_clear_error();
        assert_int_equal(epm_sampler_set(sw, &bad[b]), EPM_ERR_INVALID_ARG);
        expect_msg(named[b]);
        for (int step = 0; step < 5; step++) {
            rand_logits(lg);
            const int64_t seq = (int64_t)(rng_next() % 5);
            assert_int_equal(next_tok(sw, SV, lg, seq, step), next_tok(ref, SV, lg, seq, step));
        }
        int32_t t0 = next_tok(sw, SV, lg, 0, 0);
        assert_true(t0 != 3 && t0 != 17 && t0 != 40 && t0 != 63); /* still held back at step 0 */
    }
    assert_int_equal(epm_sampler_set(NULL, &p4), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_sampler_set(sw, NULL), EPM_ERR_INVALID_ARG);
    /* out of memory part way (stop ids grown, then the scratch or heap refused): the old parameters */
    epm_sampler *g = mk(NULL, SV);
    epm_sampling p3 = param_set(3);
    p3.n_stop = 70;
    p3.stop_ids = big;
    p3.min_tokens = 100;
    for (uint64_t k = 1;; k++) {
        epm_fault_fail_nth_alloc(k);
        epm_status st = epm_sampler_set(g, &p3);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            assert_true(k > 2);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        for (int step = 0; step < 3; step++) {
            rand_logits(lg);
            int32_t t = next_tok(g, SV, lg, 1, step), best = 0;
            for (int j = 1; j < SV; j++)
                best = lg[j] > lg[best] ? j : best;
            assert_int_equal(t, best);
        }
        assert_true(k < 20);
    }
    epm_sampler *f3 = mk(&p3, SV);
    for (int step = 0; step < 6; step++) {
        rand_logits(lg);
        for (int j = 0; j < 12; j++)
            hist[j] = (int32_t)(rng_next() % SV);
        assert_int_equal(next_pen(g, SV, lg, hist, 6, hist + 6, 6, 2, step),
                         next_pen(f3, SV, lg, hist, 6, hist + 6, 6, 2, step));
    }
    epm_sampler_destroy(f3);
    epm_sampler_destroy(g);
    epm_sampler_destroy(ref);
    epm_sampler_destroy(sw);
}

/* own_seed: the draws of (seed, step) alone, sequence 0's, wherever it sits */
static void test_own_seed(void **state)
{
    (void)state;
    enum { V = 100, N = 400 };
    float lg[V];
    rng_state = 3;
    for (int i = 0; i < V; i++)
        lg[i] = (float)(rng_unit() * 0.5); /* nearly flat: agreement by chance about 1 / V */
    const epm_sampling kinds[3] = {{.temperature = 1, .seed = 1234},
                                   {.temperature = 0.7, .top_k = 50, .top_p = 0.95, .seed = 99},
                                   {.temperature = 1.5, .min_p = 0.5, .seed = 5, .repetition_penalty = 1.2}};
    for (int kk = 0; kk < 3; kk++) {
        epm_sampling run = kinds[kk], own = run;
        own.own_seed = 1;
        epm_sampler *a = mk(&run, V), *b = mk(&own, V);
        int same5 = 0;
        for (int step = 0; step < N; step++) {
            const int32_t t0 = next_tok(a, V, lg, 0, step);
            const int64_t seqs[4] = {0, 1, 5, 1000003};
            for (int j = 0; j < 4; j++)
                if (next_tok(b, V, lg, seqs[j], step) != t0)
                    fail_msg("kind %d step %d: own_seed at sequence %lld differs from sequence 0", kk, step,
                             (long long)seqs[j]);
            same5 += next_tok(a, V, lg, 5, step) == t0;
        }
        /* without own_seed, sequence 5 draws otherwise (about N / 100 agreements by chance) */
        if (same5 > N / 4)
            fail_msg("kind %d: sequence 5 drew sequence 0's token %d times in %d", kk, same5, N);
        /* a request's sample j (own_index) draws as sequence j, wherever it sits */
        epm_sampling sj = own;
        sj.own_index = 5;
        epm_sampler *e = mk(&sj, V);
        for (int step = 0; step < N; step++)
            if (next_tok(e, V, lg, 77, step) != next_tok(a, V, lg, 5, step))
                fail_msg("kind %d step %d: own_index 5 at sequence 77 differs from sequence 5", kk, step);
        epm_sampler_destroy(e);
        /* own_seed also keeps the seed: another seed draws otherwise */
        own.seed ^= 0x5555;
        epm_sampler *c = mk(&own, V);
        int same_seed = 0;
        for (int step = 0; step < N; step++)
            same_seed += next_tok(c, V, lg, 3, step) == next_tok(b, V, lg, 3, step);
        assert_true(same_seed < N / 4);
        epm_sampler_destroy(a);
        epm_sampler_destroy(b);
        epm_sampler_destroy(c);
    }
    /* through epm_sampler_set too */
    epm_sampling run = kinds[0], own = run;
    own.own_seed = 1;
    epm_sampler *a = mk(&run, V), *b = mk(&run, V);
    assert_int_equal(epm_sampler_set(b, &own), EPM_OK);
    int same = 0;
    for (int step = 0; step < 50; step++) {
        assert_int_equal(next_tok(b, V, lg, 7, step), next_tok(a, V, lg, 0, step));
        same += next_tok(a, V, lg, 7, step) == next_tok(a, V, lg, 0, step);
    }
    assert_true(same < 25);
    epm_sampler_destroy(a);
    epm_sampler_destroy(b);
}

static void ids_equal(const int32_t *got, int n, const int32_t *want, int m)
{
    if (n != m)
        fail_msg("%d stop ids, expected %d", n, m);
    for (int i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("stop id %d is %d, expected %d", i, got[i], want[i]);
}

static void test_request_sampling_apply(void **state)
{
    (void)state;
    const epm_sampling run = {.temperature = 0.6, .top_k = 20, .top_p = 0.9, .min_p = 0.1, .repetition_penalty = 1.1,
                              .presence_penalty = 0.2, .frequency_penalty = 0.3, .min_tokens = 2, .seed = 42};
    const int32_t eos[2] = {2, 7}, extra[2] = {9, 2};
    int32_t stop[2 + 2 + EPM_MAX_STOP_IDS];
    int n = -1;
    epm_sampling out;
    /* nothing given: the run's, and the EOS and the run's extra ids, each once */
    epm_request_sampling rq;
    memset(&rq, 0, sizeof rq);
    rq.s.temperature = 5; /* values without their bit are not read */
    rq.s.top_k = 3;
    rq.s.seed = 1;
    rq.ignore_eos = 1;
    for (int null_rq = 0; null_rq < 2; null_rq++) {
        memset(&out, 0x5a, sizeof out);
        assert_int_equal(epm_request_sampling_apply(null_rq ? NULL : &rq, &run, eos, 2, 0, extra, 2, "r0", &out, stop,
                                                    &n),
                         EPM_OK);
        assert_true(out.temperature == 0.6 && out.top_k == 20 && out.top_p == 0.9 && out.min_p == 0.1);
        assert_true(out.repetition_penalty == 1.1 && out.presence_penalty == 0.2 && out.frequency_penalty == 0.3);
        assert_int_equal(out.min_tokens, 2);
        assert_true(out.seed == 42);
        assert_int_equal(out.own_seed, 0);
        const int32_t want[3] = {2, 7, 9};
        ids_equal(stop, n, want, 3);
        assert_ptr_equal(out.stop_ids, stop);
        assert_int_equal(out.n_stop, 3);
    }
    /* every field given: each replaces the run's */
    memset(&rq, 0, sizeof rq);
    rq.set = EPM_REQ_TEMPERATURE | EPM_REQ_TOP_K | EPM_REQ_TOP_P | EPM_REQ_MIN_P | EPM_REQ_REPETITION |
             EPM_REQ_PRESENCE | EPM_REQ_FREQUENCY | EPM_REQ_MIN_TOKENS | EPM_REQ_SEED;
    rq.s = (epm_sampling){.temperature = 1.5, .top_k = 0, .top_p = 1, .min_p = 0, .repetition_penalty = 1,
                          .presence_penalty = -1, .frequency_penalty = 0, .min_tokens = 0, .seed = 0};
    rq.n_stop = 3;
    rq.stop[0] = 11, rq.stop[1] = 7, rq.stop[2] = 11;
    assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, extra, 2, "r1", &out, stop, &n), EPM_OK);
    assert_true(out.temperature == 1.5 && out.top_k == 0 && out.top_p == 1 && out.min_p == 0);
    assert_true(out.repetition_penalty == 1 && out.presence_penalty == -1 && out.frequency_penalty == 0);
    assert_int_equal(out.min_tokens, 0);
    assert_true(out.seed == 0); /* seed 0 is a seed */
    assert_int_equal(out.own_seed, 1);
    const int32_t want1[4] = {2, 7, 9, 11};
    ids_equal(stop, n, want1, 4);
    assert_ptr_equal(out.stop_ids, stop);
    assert_int_equal(out.n_stop, 4);
    /* one field at a time: that one changes, the rest are the run's */
    for (int bit = 0; bit < 9; bit++) {
        memset(&rq, 0, sizeof rq);
        rq.set = 1u << bit;
        rq.s = (epm_sampling){.temperature = 0.25, .top_k = 4, .top_p = 0.5, .min_p = 0.3, .repetition_penalty = 2,
                              .presence_penalty = 1, .frequency_penalty = -1, .min_tokens = 9, .seed = 77};
        assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, NULL, 0, "r", &out, stop, &n), EPM_OK);
        assert_true(out.temperature == (rq.set == EPM_REQ_TEMPERATURE ? 0.25 : 0.6));
        assert_int_equal(out.top_k, rq.set == EPM_REQ_TOP_K ? 4 : 20);
        assert_true(out.top_p == (rq.set == EPM_REQ_TOP_P ? 0.5 : 0.9));
        assert_true(out.min_p == (rq.set == EPM_REQ_MIN_P ? 0.3 : 0.1));
        assert_true(out.repetition_penalty == (rq.set == EPM_REQ_REPETITION ? 2 : 1.1));
        assert_true(out.presence_penalty == (rq.set == EPM_REQ_PRESENCE ? 1 : 0.2));
        assert_true(out.frequency_penalty == (rq.set == EPM_REQ_FREQUENCY ? -1 : 0.3));
        assert_int_equal(out.min_tokens, rq.set == EPM_REQ_MIN_TOKENS ? 9 : 2);
        assert_true(out.seed == (rq.set == EPM_REQ_SEED ? 77 : 42));
        assert_int_equal(out.own_seed, rq.set == EPM_REQ_SEED);
        ids_equal(stop, n, eos, 2);
    }
    /* greedy (the request's temperature 0, or the run's kept): no top-k, top-p or min-p; penalties stay */
    memset(&rq, 0, sizeof rq);
    rq.set = EPM_REQ_TEMPERATURE | EPM_REQ_TOP_K | EPM_REQ_MIN_P;
    rq.s.temperature = 0, rq.s.top_k = 5, rq.s.min_p = 0.5;
    assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, NULL, 0, "g", &out, stop, &n), EPM_OK);
    assert_true(out.temperature == 0);
    assert_true(out.top_k == 0 && out.top_p == 0 && out.min_p == 0);
    assert_true(out.repetition_penalty == 1.1 && out.presence_penalty == 0.2 && out.frequency_penalty == 0.3);
    assert_int_equal(out.min_tokens, 2);
    /* truncation on a request that is greedy because the run is: refused by name, as the run's flags are
     * (vLLM would sample at temperature 1); top_p 1 truncates nothing and passes */
    const epm_sampling greedy_run = {.repetition_penalty = 1.3, .seed = 4};
    rq.set = EPM_REQ_TOP_P;
    rq.s.top_p = 0.5;
    epm_clear_error();
    assert_int_equal(epm_request_sampling_apply(&rq, &greedy_run, NULL, 0, 0, NULL, 0, "g", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
    expect_msg("g: top_k, top_p and min_p shape sampling");
    rq.s.top_p = 1;
    assert_int_equal(epm_request_sampling_apply(&rq, &greedy_run, NULL, 0, 0, NULL, 0, "g", &out, stop, &n), EPM_OK);
    assert_true(out.temperature == 0 && out.top_p == 0 && out.repetition_penalty == 1.3);
    assert_int_equal(n, 0);
    assert_int_equal(out.n_stop, 0);
    rq.s.top_p = 0.5;
    /* sampling over a greedy run: what the request gives, nothing more */
    rq.set = EPM_REQ_TEMPERATURE | EPM_REQ_TOP_P;
    rq.s.temperature = 0.9;
    assert_int_equal(epm_request_sampling_apply(&rq, &greedy_run, NULL, 0, 0, NULL, 0, "g", &out, stop, &n), EPM_OK);
    assert_true(out.temperature == 0.9 && out.top_p == 0.5 && out.top_k == 0 && out.min_p == 0);
    assert_true(out.seed == 4);
    assert_int_equal(out.own_seed, 0);
    /* ignore_eos: the request's over the run's, either way; the run's extra and the request's ids stay */
    const int32_t more[2] = {7, 30};
    struct {
        int run_ignore, given, req_ignore;
        int32_t want[5];
        int n;
    } ig[] = {
        {0, 0, 0, {2, 7, 9, 30}, 4},  {1, 0, 0, {9, 2, 7, 30}, 4}, {0, 1, 1, {9, 2, 7, 30}, 4},
        {1, 1, 0, {2, 7, 9, 30}, 4},  {1, 1, 1, {9, 2, 7, 30}, 4}, {0, 1, 0, {2, 7, 9, 30}, 4},
    };
    for (size_t i = 0; i < sizeof ig / sizeof ig[0]; i++) {
        memset(&rq, 0, sizeof rq);
        rq.set = ig[i].given ? EPM_REQ_IGNORE_EOS : 0;
        rq.ignore_eos = ig[i].req_ignore;
        rq.n_stop = 2;
        memcpy(rq.stop, more, sizeof more);
        assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, ig[i].run_ignore, extra, 2, "ig", &out, stop,
                                                    &n),
                         EPM_OK);
        /* the EOS ids go where ignored; 2 and 7 come back as the run's extra and the request's own */
        int32_t sorted[8];
        memcpy(sorted, stop, (size_t)n * sizeof *stop);
        for (int a = 0; a < n; a++)
            for (int b = a + 1; b < n; b++)
                if (sorted[b] < sorted[a]) {
                    int32_t x = sorted[a];
                    sorted[a] = sorted[b], sorted[b] = x;
                }
        const int32_t all[4] = {2, 7, 9, 30};
        ids_equal(sorted, n, all, 4);
        const int ignored = ig[i].given ? ig[i].req_ignore : ig[i].run_ignore;
        ids_equal(stop, n, ig[i].want, ig[i].n);
        assert_int_equal(ignored, stop[0] == 9);
        assert_ptr_equal(out.stop_ids, stop);
        assert_int_equal(out.n_stop, n);
    }
    /* ignored EOS, nothing else: no stop tokens */
    memset(&rq, 0, sizeof rq);
    rq.set = EPM_REQ_IGNORE_EOS;
    rq.ignore_eos = 1;
    assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, NULL, 0, "ig", &out, stop, &n), EPM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(out.n_stop, 0);
    /* the most there is room for: EOS, extra and 64 of the request's, all distinct */
    memset(&rq, 0, sizeof rq);
    rq.n_stop = EPM_MAX_STOP_IDS;
    for (int i = 0; i < EPM_MAX_STOP_IDS; i++)
        rq.stop[i] = 100 + i;
    const int32_t x2[2] = {50, 51};
    assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, x2, 2, "max", &out, stop, &n), EPM_OK);
    assert_int_equal(n, 4 + EPM_MAX_STOP_IDS);
    assert_int_equal(stop[3], 51);
    assert_int_equal(stop[4 + EPM_MAX_STOP_IDS - 1], 100 + EPM_MAX_STOP_IDS - 1);
    /* invalid values (a caller's own struct): refused, naming the label and the field; out untouched */
    memset(&rq, 0, sizeof rq);
    rq.set = EPM_REQ_TEMPERATURE;
    rq.s.temperature = -2;
    memset(&out, 0x5a, sizeof out);
    epm_sampling before = out;
    epm_clear_error();
    assert_int_equal(epm_request_sampling_apply(&rq, &run, eos, 2, 0, NULL, 0, "in.jsonl: request 3", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
    expect_msg("in.jsonl: request 3");
    expect_msg("temperature = -2");
    assert_memory_equal(&out, &before, sizeof out);
    rq.set = EPM_REQ_TOP_K;
    rq.s.top_k = -5;
    assert_int_equal(epm_request_sampling_apply(&rq, &run, NULL, 0, 0, NULL, 0, "rq", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
    expect_msg("top_k = -5");
    /* NULL arguments */
    assert_int_equal(epm_request_sampling_apply(&rq, NULL, NULL, 0, 0, NULL, 0, "x", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_request_sampling_apply(&rq, &run, NULL, 0, 0, NULL, 0, "x", NULL, stop, &n),
                     EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_request_sampling_apply(&rq, &run, NULL, 0, 0, NULL, 0, "x", &out, NULL, &n),
                     EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_request_sampling_apply(&rq, &run, NULL, 2, 0, NULL, 0, "x", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_request_sampling_apply(&rq, &run, NULL, 0, 0, NULL, 1, "x", &out, stop, &n),
                     EPM_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),         cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_determinism),    cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_top_k),          cmocka_unit_test(test_top_p_oracle),
        cmocka_unit_test(test_min_p),          cmocka_unit_test(test_weight_precision),
        cmocka_unit_test(test_combined),
        cmocka_unit_test(test_validate),       cmocka_unit_test(test_generation_config_parse),
        cmocka_unit_test(test_generation_config_load), cmocka_unit_test(test_extreme_temperature),
        cmocka_unit_test(test_logprobs),       cmocka_unit_test(test_penalties_and_min_tokens),
        cmocka_unit_test(test_sampler_set),    cmocka_unit_test(test_own_seed),
        cmocka_unit_test(test_request_sampling_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
