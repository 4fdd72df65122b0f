/* Synthetic traces: reproducible, valid, and with the skew and affinity asked for. */
#include "test_util.h"

#include <math.h>
#include <string.h>

#include "core.h"
#include "epmoe/trace.h"

static epm_trace *synth(const epm_trace_synth_opts *o)
{
    epm_trace *t;
    epm_status st = epm_trace_synth(o, &t);
    if (st != EPM_OK)
        fail_msg("synth failed: %s", epm_last_error());
    return t;
}

/* Every row: k distinct experts in range, no padding. */
static void check_valid(const epm_trace *t)
{
    int k = epm_trace_k(t), E = epm_trace_experts(t);
    for (int l = 0; l < epm_trace_layers(t); l++) {
        const int32_t *ids = epm_trace_ids_const(t, l);
        for (int64_t i = 0; i < epm_trace_tokens(t); i++)
            for (int j = 0; j < k; j++) {
                int32_t e = ids[i * k + j];
                assert_true(e >= 0 && e < E);
                for (int q = 0; q < j; q++)
                    assert_int_not_equal(ids[i * k + q], e);
            }
    }
}

static epm_trace_stats *stats(const epm_trace *t, int m)
{
    epm_trace_stats *s;
    assert_int_equal(epm_trace_stats_compute(t, m, &s), EPM_OK);
    return s;
}

static void test_trace_synth_deterministic(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.layers = 3;
    o.experts = 16;
    o.k = 4;
    o.tokens = 500;
    o.tokens_per_seq = 64;
    o.with_weights = 1;
    o.seed = 42;
    epm_trace *a = synth(&o), *b = synth(&o);
    check_valid(a);
    size_t n = 500 * 4;
    for (int l = 0; l < 3; l++) {
        assert_memory_equal(epm_trace_ids_const(a, l), epm_trace_ids_const(b, l), n * sizeof(int32_t));
        assert_memory_equal(epm_trace_weights(a, l), epm_trace_weights(b, l), n * sizeof(float));
    }
    assert_memory_equal(epm_trace_seq_ids(a), epm_trace_seq_ids(b), 500 * sizeof(int32_t));
    /* pinned: a change to the generator changes every bundled benchmark's input */
    uint64_t h = 1469598103934665603ull; /* FNV-1a over every id */
    for (int l = 0; l < 3; l++)
        for (size_t i = 0; i < n; i++) {
            h ^= (uint64_t)(uint32_t)epm_trace_ids_const(a, l)[i];
            h *= 1099511628211ull;
        }
    const int32_t first_row[4] = {5, 12, 15, 8};
    assert_memory_equal(epm_trace_ids_const(a, 0), first_row, sizeof first_row);
    assert_true(h == 7425636179875064908ull);
    o.seed = 43;
    epm_trace *c = synth(&o);
    assert_true(memcmp(epm_trace_ids_const(a, 0), epm_trace_ids_const(c, 0), n * sizeof(int32_t)) != 0);
    epm_trace_destroy(a);
    epm_trace_destroy(b);
    epm_trace_destroy(c);
}

static void test_trace_synth_weights_and_seq_ids(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.experts = 8;
    o.k = 3;
    o.tokens = 100;
    o.tokens_per_seq = 7;
    o.with_weights = 1;
    epm_trace *t = synth(&o);
    for (int l = 0; l < o.layers; l++) {
        const float *w = epm_trace_weights(t, l);
        assert_non_null(w);
        for (int i = 0; i < 100; i++) {
            double sum = 0;
            for (int j = 0; j < 3; j++) {
                assert_true(w[i * 3 + j] > 0);
                if (j)
                    assert_true(w[i * 3 + j] <= w[i * 3 + j - 1]);
                sum += w[i * 3 + j];
            }
            assert_true(fabs(sum - 1) < 1e-5);
        }
    }
    const int32_t *seq = epm_trace_seq_ids(t);
    assert_non_null(seq);
    for (int i = 0; i < 100; i++)
        assert_int_equal(seq[i], i / 7);
    epm_trace_destroy(t);
    o.with_weights = 0;
    o.tokens_per_seq = 0;
    t = synth(&o);
    assert_null(epm_trace_weights(t, 0));
    assert_null(epm_trace_seq_ids(t));
    epm_trace_destroy(t);
}

static void test_trace_synth_zipf_raises_imbalance(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.layers = 2;
    o.experts = 16;
    o.k = 2;
    o.tokens = 8000;
    o.affinity = 0;
    o.zipf_s = 0;
    epm_trace *flat = synth(&o);
    o.zipf_s = 1.5;
    epm_trace *skew = synth(&o);
    check_valid(skew);
    epm_trace_stats *a = stats(flat, 2), *b = stats(skew, 2);
    assert_true(a->mean_imbalance < 1.15);
    assert_true(b->mean_imbalance > 2.5);
    /* the hot expert differs between layers (a random permutation each) or not,
     * but each layer has exactly one clear favourite */
    for (int l = 0; l < 2; l++) {
        int64_t first = 0, second = 0;
        for (int e = 0; e < 16; e++) {
            int64_t v = b->load[l * 16 + e];
            if (v > first) {
                second = first;
                first = v;
            } else if (v > second) {
                second = v;
            }
        }
        assert_true(first > second);
    }
    epm_trace_stats_destroy(a);
    epm_trace_stats_destroy(b);
    epm_trace_destroy(flat);
    epm_trace_destroy(skew);
}

static void test_trace_synth_affinity_raises_topm_share(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.layers = 4;
    o.experts = 16;
    o.k = 2;
    o.tokens = 8000;
    o.zipf_s = 0.5;
    o.successors = 2;
    o.affinity = 0;
    epm_trace *none = synth(&o);
    o.affinity = 0.9;
    epm_trace *strong = synth(&o);
    o.affinity = 1;
    o.successors = 1;
    epm_trace *total = synth(&o);
    check_valid(strong);
    epm_trace_stats *a = stats(none, 2), *b = stats(strong, 2), *c = stats(total, 1);
    assert_true(b->mean_topm_share > a->mean_topm_share + 0.4);
    assert_true(b->mean_topm_share > 0.85);
    assert_true(b->mean_cond_entropy < a->mean_cond_entropy - 0.5);
    /* affinity 1 with one successor: the top-1 at l+1 is a function of the top-1 at l */
    assert_true(c->mean_topm_share == 1.0);
    epm_trace_stats_destroy(a);
    epm_trace_stats_destroy(b);
    epm_trace_stats_destroy(c);
    epm_trace_destroy(none);
    epm_trace_destroy(strong);
    epm_trace_destroy(total);
}

static void test_trace_synth_k_equals_experts(void **state)
{
    (void)state;
    /* heavy skew with every expert chosen: the rejection sampler must fall back */
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.experts = 8;
    o.k = 8;
    o.tokens = 200;
    o.zipf_s = 16;
    o.successors = 8;
    epm_trace *t = synth(&o);
    check_valid(t);
    epm_trace_destroy(t);
    o.tokens = 0;
    t = synth(&o);
    assert_int_equal(epm_trace_tokens(t), 0);
    epm_trace_destroy(t);
}

/* the most chosen expert of layer l among tokens [a, b) */
static int hottest(const epm_trace *t, int l, int64_t a, int64_t b)
{
    int64_t n[64] = {0};
    const int k = epm_trace_k(t);
    for (int64_t i = a * k; i < b * k; i++)
        n[epm_trace_ids_const(t, l)[i]]++;
    int h = 0;
    for (int e = 1; e < epm_trace_experts(t); e++)
        h = n[e] > n[h] ? e : h;
    return h;
}

/* pass_ids in blocks; drift draws other hot experts every so many tokens
 * and nothing else: without it (or beyond the trace) the trace is the same */
static void test_trace_synth_passes_and_drift(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.layers = 3;
    o.experts = 32;
    o.k = 2;
    o.tokens = 4000;
    o.zipf_s = 1.5;
    o.seed = 5;
    epm_trace *plain = synth(&o);
    assert_null(epm_trace_pass_ids(plain));
    o.tokens_per_pass = 300;
    o.drift_tokens = 4000; /* (no boundary inside the trace) */
    epm_trace *same = synth(&o);
    for (int l = 0; l < 3; l++)
        assert_memory_equal(epm_trace_ids_const(same, l), epm_trace_ids_const(plain, l), 4000 * 2 * sizeof(int32_t));
    const int32_t *pass = epm_trace_pass_ids(same);
    assert_non_null(pass);
    for (int64_t i = 0; i < 4000; i++)
        assert_int_equal(pass[i], i / 300);
    o.drift_tokens = 1000;
    epm_trace *drift = synth(&o);
    check_valid(drift);
    /* before the first boundary: the same draws (in layer 0; the later layers' come after its redraws) */
    assert_memory_equal(epm_trace_ids_const(drift, 0), epm_trace_ids_const(plain, 0), 1000 * 2 * sizeof(int32_t));
    int moved = 0; /* the hottest expert changes between blocks, somewhere (32 experts, 4 x 3 blocks) */
    for (int l = 0; l < 3; l++)
        for (int b = 1; b < 4; b++)
            moved += hottest(drift, l, b * 1000, (b + 1) * 1000) != hottest(drift, l, (b - 1) * 1000, b * 1000);
    assert_true(moved >= 6);
    for (int l = 0; l < 3; l++) /* and stays put without drift */
        for (int b = 1; b < 4; b++)
            assert_int_equal(hottest(plain, l, b * 1000, (b + 1) * 1000), hottest(plain, l, 0, 1000));
    epm_trace_destroy(plain);
    epm_trace_destroy(same);
    epm_trace_destroy(drift);
}

/* Group-limited routing (DeepSeek's n_group, topk_group): every token's k
 * experts within topk_groups groups, its top-1's among them, and the
 * groups it may not choose from empty of its experts; without a limit a
 * token's experts spread over more groups. Asking for groups without a
 * limit draws nothing more: the trace of no groups. */
static void test_trace_synth_group_limited(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.layers = 3, o.experts = 64, o.k = 6, o.tokens = 3000, o.zipf_s = 0.8, o.seed = 11;
    epm_trace *free_t, *grouped, *unlimited;
    assert_int_equal(epm_trace_synth(&o, &free_t), EPM_OK);
    o.groups = 8;
    assert_int_equal(epm_trace_synth(&o, &unlimited), EPM_OK);
    o.topk_groups = 3;
    assert_int_equal(epm_trace_synth(&o, &grouped), EPM_OK);
    check_valid(grouped);
    int most = 0, free_most = 0;
    for (int l = 0; l < 3; l++) {
        assert_memory_equal(epm_trace_ids(unlimited, l), epm_trace_ids(free_t, l), 3000 * 6 * sizeof(int32_t));
        for (int64_t t = 0; t < 3000; t++)
            for (int pass = 0; pass < 2; pass++) {
                const int32_t *row = epm_trace_ids(pass ? free_t : grouped, l) + t * 6;
                int seen[8] = {0}, n = 0;
                for (int j = 0; j < 6; j++) {
                    n += !seen[row[j] / 8];
                    seen[row[j] / 8] = 1;
                }
                if (pass)
                    free_most = n > free_most ? n : free_most;
                else
                    most = n > most ? n : most;
            }
    }
    assert_int_equal(most, 3); /* (3000 tokens: some reach all three) */
    assert_true(free_most > 3);
    epm_trace_destroy(free_t);
    epm_trace_destroy(unlimited);
    epm_trace_destroy(grouped);
}

static void expect_bad(epm_trace_synth_opts o, const char *option)
{
    epm_trace *t = (epm_trace *)1;
    assert_int_equal(epm_trace_synth(&o, &t), EPM_ERR_INVALID_ARG);
    assert_null(t);
    if (!strstr(epm_last_error(), option))
        fail_msg("error does not name '%s': %s", option, epm_last_error());
}

static void test_trace_synth_validates_options(void **state)
{
    (void)state;
    epm_trace_synth_opts d, o;
    epm_trace_synth_opts_init(&d);
    o = d, o.layers = 0, expect_bad(o, "'layers'");
    o = d, o.experts = 0, expect_bad(o, "'experts'");
    o = d, o.k = 0, expect_bad(o, "'k'");
    o = d, o.k = d.experts + 1, expect_bad(o, "'k'");
    o = d, o.tokens = -1, expect_bad(o, "'tokens'");
    o = d, o.tokens_per_seq = -5, expect_bad(o, "'tokens_per_seq'");
    o = d, o.zipf_s = -0.1, expect_bad(o, "'zipf_s'");
    o = d, o.zipf_s = NAN, expect_bad(o, "'zipf_s'");
    o = d, o.affinity = 1.5, expect_bad(o, "'affinity'");
    o = d, o.affinity = NAN, expect_bad(o, "'affinity'");
    o = d, o.successors = 0, expect_bad(o, "'successors'");
    o = d, o.successors = d.experts + 1, expect_bad(o, "'successors'");
    o = d, o.with_weights = 2, expect_bad(o, "'with_weights'");
    o = d, o.tokens_per_pass = -1, expect_bad(o, "'tokens_per_pass'");
    o = d, o.tokens = (int64_t)1 << 32, o.tokens_per_pass = 1, expect_bad(o, "more than 2^31 passes");
    o = d, o.drift_tokens = -1, expect_bad(o, "'drift_tokens'");
    o = d, o.groups = 3, expect_bad(o, "'groups' = 3 must divide experts = 8");
    o = d, o.groups = -1, expect_bad(o, "'groups'");
    o = d, o.groups = 4, o.topk_groups = 5, expect_bad(o, "'topk_groups' = 5 is outside [0, groups = 4]");
    o = d, o.k = 3, o.groups = 4, o.topk_groups = 1, expect_bad(o, "leaves 2 experts to choose k = 3 from");
    o = d, o.topk_groups = 2, expect_bad(o, "'topk_groups' = 2 is outside [0, groups = 1]");
    /* NULL options mean the defaults */
    epm_trace *t;
    assert_int_equal(epm_trace_synth(NULL, &t), EPM_OK);
    assert_int_equal(epm_trace_layers(t), d.layers);
    assert_int_equal(epm_trace_tokens(t), d.tokens);
    epm_trace_destroy(t);
}

static void test_trace_synth_alloc_failures(void **state)
{
    (void)state;
    epm_trace_synth_opts o;
    epm_trace_synth_opts_init(&o);
    o.tokens = 50;
    o.tokens_per_seq = 10;
    o.with_weights = 1;
    int failures = 0;
    for (uint64_t nth = 1; nth < 100; nth++) {
        epm_trace *t = NULL;
        epm_fault_fail_nth_alloc(nth);
        epm_status st = epm_trace_synth(&o, &t);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            epm_trace_destroy(t);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(t);
        failures++;
    }
    assert_true(failures >= 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_synth_deterministic),
        cmocka_unit_test(test_trace_synth_weights_and_seq_ids),
        cmocka_unit_test(test_trace_synth_zipf_raises_imbalance),
        cmocka_unit_test(test_trace_synth_affinity_raises_topm_share),
        cmocka_unit_test(test_trace_synth_k_equals_experts),
        cmocka_unit_test(test_trace_synth_passes_and_drift),
        cmocka_unit_test(test_trace_synth_group_limited),
        cmocka_unit_test(test_trace_synth_validates_options),
        cmocka_unit_test(test_trace_synth_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
