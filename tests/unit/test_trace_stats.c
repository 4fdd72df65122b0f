/* Trace statistics against small cases computed by hand. */
#include "test_util.h"

#include <math.h>
#include <string.h>

#include "core.h"
#include "epmoe/trace.h"

/* cmocka 1.1's assert_float_equal rounds to float; these are doubles. */
#define assert_near(a, b, eps)                                                               \
    do {                                                                                     \
        double a_ = (a), b_ = (b);                                                           \
        if (!(fabs(a_ - b_) <= (eps)))                                                       \
            fail_msg("%s = %.15g, expected %.15g", #a, a_, b_);                             \
    } while (0)

static epm_trace *make(int layers, int64_t tokens, int k, int experts, const int32_t *ids)
{
    epm_trace *t;
    assert_int_equal(epm_trace_create(layers, tokens, k, experts, &t), EPM_OK);
    for (int l = 0; l < layers; l++)
        memcpy(epm_trace_ids(t, l), ids + (size_t)l * (size_t)tokens * (size_t)k,
               (size_t)tokens * (size_t)k * sizeof(int32_t));
    return t;
}

static epm_trace_stats *stats(const epm_trace *t, int m)
{
    epm_trace_stats *s;
    epm_status st = epm_trace_stats_compute(t, m, &s);
    if (st != EPM_OK)
        fail_msg("stats failed: %s", epm_last_error());
    return s;
}

static void test_trace_stats_deterministic_successor(void **state)
{
    (void)state;
    /* layer 1's expert is always (layer 0's + 1) mod 4: nothing left to guess */
    const int32_t ids[16] = {0, 0, 1, 1, 2, 2, 3, 3, /* */ 1, 1, 2, 2, 3, 3, 0, 0};
    epm_trace *t = make(2, 8, 1, 4, ids);
    epm_trace_stats *s = stats(t, 1);
    assert_int_equal(s->layers, 2);
    assert_int_equal(s->experts, 4);
    assert_int_equal(s->top_m, 1);
    assert_true(s->layer[0].cond_entropy == 0.0);
    assert_near(s->layer[0].topm_share, 1.0, 1e-12);
    assert_near(s->layer[0].imbalance, 1.0, 1e-12);
    assert_int_equal(s->layer[0].max_load, 2);
    for (int e = 0; e < 4; e++)
        assert_int_equal(s->load[e], 2);
    assert_true(s->layer[1].cond_entropy == 0.0 && s->layer[1].topm_share == 0.0); /* last layer */
    assert_int_equal(s->layer[0].transitions, 8);
    assert_int_equal(s->layer[1].transitions, 0);
    assert_int_equal(s->affinity_layers, 1);
    assert_near(s->mean_cond_entropy, 0.0, 1e-12);
    assert_near(s->mean_topm_share, 1.0, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
}

/* Mixture-of-Depths skipped every token at layer 1: no transition 0 -> 1 or
 * 1 -> 2 to measure. Those layers say so and the means are over layer 2 ->
 * 3 alone (the last layer has none either). */
static void test_trace_stats_no_transitions(void **state)
{
    (void)state;
    const int32_t ids[16] = {0, 1, 2, 3, /* */ -1, -1, -1, -1, /* */ 0, 0, 1, 1, /* */ 2, 3, 2, 3};
    epm_trace *t = make(4, 4, 1, 4, ids);
    epm_trace_stats *s = stats(t, 1);
    assert_int_equal(s->layer[0].transitions, 0);
    assert_int_equal(s->layer[1].transitions, 0);
    assert_int_equal(s->layer[2].transitions, 4);
    assert_int_equal(s->layer[3].transitions, 0);
    assert_int_equal(s->affinity_layers, 1);
    /* 0 -> {2, 3} and 1 -> {2, 3}: one bit, the top-1 share one half */
    assert_near(s->layer[2].cond_entropy, 1.0, 1e-12);
    assert_near(s->mean_cond_entropy, 1.0, 1e-12);
    assert_near(s->mean_topm_share, 0.5, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
}

static void test_trace_stats_uniform_successor(void **state)
{
    (void)state;
    /* every expert at layer 0 is followed by each of the 4 experts once: log2(4) bits */
    int32_t ids[32];
    for (int i = 0; i < 16; i++) {
        ids[i] = i / 4;
        ids[16 + i] = i % 4;
    }
    epm_trace *t = make(2, 16, 1, 4, ids);
    epm_trace_stats *s = stats(t, 1);
    assert_near(s->layer[0].cond_entropy, 2.0, 1e-12);
    assert_near(s->layer[0].topm_share, 0.25, 1e-12);
    epm_trace_stats_destroy(s);
    s = stats(t, 3);
    assert_near(s->layer[0].topm_share, 0.75, 1e-12);
    epm_trace_stats_destroy(s);
    s = stats(t, 100); /* m beyond the experts: everything is a top-m successor */
    assert_near(s->layer[0].topm_share, 1.0, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
}

static void test_trace_stats_top2_with_skips(void **state)
{
    (void)state;
    /* k = 2, 3 experts, 4 tokens; token 2 is skipped at layer 0, token 1
     * has one expert at layer 1.
     * pairs (top-1 at 0 -> each chosen at 1): expert 0 -> {1, 2, 1}, expert 1 -> {2, 0}
     * H = [2 log2(3/2) + log2(3) + 2 log2(2)] / 5 pairs */
    const int32_t ids[16] = {0, 1, 0, 2, -1, -1, 1, 0, /* */ 1, 2, 1, -1, 0, 1, 2, 0};
    epm_trace *t = make(2, 4, 2, 3, ids);
    epm_trace_stats *s = stats(t, 1);
    double h = (2 * log2(1.5) + log2(3.0) + 2.0) / 5.0;
    assert_near(s->layer[0].cond_entropy, h, 1e-12);
    /* top-1 transitions: 0 -> 1 twice, 1 -> 2 once: the top-1 successor covers all */
    assert_near(s->layer[0].topm_share, 1.0, 1e-12);
    const int64_t load0[3] = {3, 2, 1}, load1[3] = {2, 3, 2};
    assert_memory_equal(s->load, load0, sizeof load0);
    assert_memory_equal(s->load + 3, load1, sizeof load1);
    assert_int_equal(s->layer[0].max_load, 3);
    assert_near(s->layer[0].imbalance, 1.5, 1e-12);
    assert_near(s->layer[1].imbalance, 9.0 / 7.0, 1e-12);
    assert_near(s->layer[0].skipped_share, 0.25, 1e-12);
    assert_near(s->layer[1].skipped_share, 0.0, 1e-12);
    assert_near(s->mean_imbalance, (1.5 + 9.0 / 7.0) / 2, 1e-12);
    assert_near(s->mean_cond_entropy, h, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
}

static void test_trace_stats_topm_counts_most_frequent(void **state)
{
    (void)state;
    /* expert 0 is followed by 3 (x3), 1 (x2), 2 (x1): top-1 covers 3/6, top-2 5/6 */
    const int32_t ids[12] = {0, 0, 0, 0, 0, 0, /* */ 1, 3, 2, 3, 1, 3};
    epm_trace *t = make(2, 6, 1, 4, ids);
    epm_trace_stats *s = stats(t, 1);
    assert_near(s->layer[0].topm_share, 0.5, 1e-12);
    assert_near(s->layer[0].imbalance, 4.0, 1e-12);
    double h = -(0.5 * log2(0.5) + (2.0 / 6) * log2(2.0 / 6) + (1.0 / 6) * log2(1.0 / 6));
    assert_near(s->layer[0].cond_entropy, h, 1e-12);
    epm_trace_stats_destroy(s);
    s = stats(t, 2);
    assert_near(s->layer[0].topm_share, 5.0 / 6, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
}

static void test_trace_stats_edge_cases(void **state)
{
    (void)state;
    /* one layer: no transitions */
    const int32_t one[4] = {0, 1, 1, 1};
    epm_trace *t = make(1, 4, 1, 2, one);
    epm_trace_stats *s = stats(t, 2);
    assert_near(s->layer[0].imbalance, 1.5, 1e-12);
    assert_true(s->mean_cond_entropy == 0.0 && s->mean_topm_share == 0.0);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);

    /* no tokens and an all-skipped layer: balanced by convention, nothing skipped of nothing */
    assert_int_equal(epm_trace_create(2, 0, 2, 4, &t), EPM_OK);
    s = stats(t, 1);
    assert_near(s->layer[0].imbalance, 1.0, 1e-12);
    assert_near(s->layer[0].skipped_share, 0.0, 1e-12);
    assert_near(s->layer[0].cond_entropy, 0.0, 1e-12);
    epm_trace_stats_destroy(s);
    epm_trace_destroy(t);
    assert_int_equal(epm_trace_create(2, 3, 2, 4, &t), EPM_OK); /* all -1 */
    s = stats(t, 1);
    assert_near(s->layer[1].skipped_share, 1.0, 1e-12);
    assert_int_equal(s->layer[1].max_load, 0);
    epm_trace_stats_destroy(s);

    /* bad arguments and a caller-built trace with an invalid id */
    assert_int_equal(epm_trace_stats_compute(t, 0, &s), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "top_m"));
    assert_null(s);
    epm_trace_ids(t, 1)[0] = 4;
    assert_int_equal(epm_trace_stats_compute(t, 1, &s), EPM_ERR_FORMAT);
    assert_non_null(strstr(epm_last_error(), "topk_ids.1[0][0] = 4"));
    epm_trace_destroy(t);
    epm_trace_stats_destroy(NULL);
}

static void test_trace_stats_alloc_failures(void **state)
{
    (void)state;
    const int32_t ids[16] = {0, 1, 0, 2, -1, -1, 1, 0, /* */ 1, 2, 1, -1, 0, 1, 2, 0};
    epm_trace *t = make(2, 4, 2, 3, ids);
    int failures = 0;
    for (uint64_t nth = 1; nth < 100; nth++) {
        epm_trace_stats *s = NULL;
        epm_fault_fail_nth_alloc(nth);
        epm_status st = epm_trace_stats_compute(t, 2, &s);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            epm_trace_stats_destroy(s);
            break;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(s);
        failures++;
    }
    assert_true(failures >= 3);
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_stats_deterministic_successor),
        cmocka_unit_test(test_trace_stats_uniform_successor),
        cmocka_unit_test(test_trace_stats_no_transitions),
        cmocka_unit_test(test_trace_stats_top2_with_skips),
        cmocka_unit_test(test_trace_stats_topm_counts_most_frequent),
        cmocka_unit_test(test_trace_stats_edge_cases),
        cmocka_unit_test(test_trace_stats_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
