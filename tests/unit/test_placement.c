/* The placement object: replicas kept sorted and unique, per-rank counts,
 * validation, clone, and argument checks. */
#include "test_util.h"

#include <math.h>
#include <string.h>

#include "core.h"
#include "epmoe/epmoe.h"

static epm_placement *make(int layers, int experts, int nodes, int gpn)
{
    epm_cluster c;
    epm_cluster_init(&c, nodes, gpn);
    epm_placement *p = NULL;
    assert_int_equal(epm_placement_create(layers, experts, 2, &c, &p), EPM_OK);
    assert_non_null(p);
    return p;
}

static void test_placement_create_shape(void **state)
{
    (void)state;
    epm_placement *p = make(3, 5, 2, 4);
    assert_int_equal(epm_placement_layers(p), 3);
    assert_int_equal(epm_placement_experts(p), 5);
    assert_int_equal(epm_placement_k(p), 2);
    assert_int_equal(epm_placement_ranks(p), 8);
    assert_int_equal(epm_placement_cluster(p)->gpus_per_node, 4);
    assert_int_equal(epm_placement_max_slots(p), 0);
    const epm_placement_info *in = epm_placement_get_info(p);
    assert_string_equal(in->method, "manual");
    assert_true(isnan(in->objective) && isnan(in->bound) && isnan(in->gap));
    /* empty: every expert unplaced */
    assert_int_equal(epm_placement_validate(p, 0), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "layer 0 expert 0 is on no rank"));
    epm_placement_destroy(p);
    epm_placement_destroy(NULL);
}

static void test_placement_create_rejects(void **state)
{
    (void)state;
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_placement *p = (epm_placement *)&c; /* must be reset to NULL on failure */
    assert_int_equal(epm_placement_create(0, 4, 1, &c, &p), EPM_ERR_INVALID_ARG);
    assert_null(p);
    assert_non_null(strstr(epm_last_error(), "layers=0"));
    assert_int_equal(epm_placement_create(1, 4, 5, &c, &p), EPM_ERR_INVALID_ARG); /* k > experts */
    assert_non_null(strstr(epm_last_error(), "k=5"));
    c.gpus_per_node = 0;
    assert_int_equal(epm_placement_create(1, 4, 1, &c, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "gpus_per_node = 0"));
}

static void test_placement_add_sorted_unique(void **state)
{
    (void)state;
    epm_placement *p = make(2, 3, 1, 4);
    assert_int_equal(epm_placement_add(p, 1, 2, 3), EPM_OK);
    assert_int_equal(epm_placement_add(p, 1, 2, 0), EPM_OK);
    assert_int_equal(epm_placement_add(p, 1, 2, 2), EPM_OK);
    const int *r;
    assert_int_equal(epm_placement_replicas(p, 1, 2, &r), 3);
    assert_int_equal(r[0], 0);
    assert_int_equal(r[1], 2);
    assert_int_equal(r[2], 3);
    /* a rank holds at most one copy */
    assert_int_equal(epm_placement_add(p, 1, 2, 2), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "already has a replica on rank 2"));
    assert_int_equal(epm_placement_replicas(p, 1, 2, &r), 3);
    /* out of range, each coordinate */
    assert_int_equal(epm_placement_add(p, 2, 0, 0), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_placement_add(p, 0, 3, 0), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_placement_add(p, 0, 0, 4), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_placement_add(p, 0, 0, -1), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "rank -1"));
    assert_true(epm_placement_has(p, 1, 2, 3));
    assert_false(epm_placement_has(p, 1, 2, 1));
    assert_false(epm_placement_has(p, 0, 2, 3));
    epm_placement_destroy(p);
}

static void test_placement_counts_and_validate(void **state)
{
    (void)state;
    epm_placement *p = make(2, 4, 1, 2);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 4; e++)
            assert_int_equal(epm_placement_add(p, l, e, e % 2), EPM_OK);
    assert_int_equal(epm_placement_add(p, 1, 0, 1), EPM_OK); /* replica: rank 1 holds 3 in layer 1 */
    assert_int_equal(epm_placement_rank_count(p, 0, 0), 2);
    assert_int_equal(epm_placement_rank_count(p, 1, 1), 3);
    assert_int_equal(epm_placement_max_slots(p), 3);
    assert_int_equal(epm_placement_validate(p, 0), EPM_OK);
    assert_int_equal(epm_placement_validate(p, 3), EPM_OK);
    assert_int_equal(epm_placement_validate(p, 2), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "layer 1 rank 1 holds 3 experts, slots are 2"));

    epm_placement_clear_layer(p, 1);
    assert_int_equal(epm_placement_rank_count(p, 1, 1), 0);
    assert_int_equal(epm_placement_rank_count(p, 0, 1), 2); /* other layers untouched */
    const int *r;
    assert_int_equal(epm_placement_replicas(p, 1, 0, &r), 0);
    assert_int_equal(epm_placement_validate(p, 0), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "layer 1 expert 0"));
    epm_placement_destroy(p);
}

static void test_placement_clone_independent(void **state)
{
    (void)state;
    epm_placement *p = make(1, 2, 2, 1), *q;
    assert_int_equal(epm_placement_add(p, 0, 0, 0), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 1, 1), EPM_OK);
    epm_placement_info in = *epm_placement_get_info(p);
    in.objective = 3.5;
    in.quality = EPM_QUALITY_OPTIMAL;
    epm_placement_set_info(p, &in);
    assert_int_equal(epm_placement_clone(p, &q), EPM_OK);
    assert_true(epm_placement_has(q, 0, 1, 1));
    assert_true(epm_placement_get_info(q)->objective == 3.5);
    assert_int_equal(epm_placement_get_info(q)->quality, EPM_QUALITY_OPTIMAL);
    assert_int_equal(epm_placement_add(q, 0, 1, 0), EPM_OK);
    assert_false(epm_placement_has(p, 0, 1, 0)); /* deep copy */
    assert_int_equal(epm_placement_rank_count(p, 0, 0), 1);
    assert_int_equal(epm_placement_rank_count(q, 0, 0), 2);
    epm_placement_destroy(q);
    epm_placement_destroy(p);
}

static void test_placement_quality_names(void **state)
{
    (void)state;
    assert_string_equal(epm_plan_quality_name(EPM_QUALITY_HEURISTIC), "heuristic");
    assert_string_equal(epm_plan_quality_name(EPM_QUALITY_OPTIMAL), "optimal");
    assert_string_equal(epm_plan_quality_name(EPM_QUALITY_FEASIBLE), "feasible");
    assert_string_equal(epm_plan_quality_name(EPM_QUALITY_FALLBACK), "fallback");
}

static void test_placement_alloc_failures(void **state)
{
    (void)state;
    epm_cluster c;
    epm_cluster_init(&c, 1, 4);
    for (uint64_t n = 1; n < 10; n++) {
        epm_placement *p = NULL;
        epm_fault_fail_nth_alloc(n);
        epm_status st = epm_placement_create(2, 8, 2, &c, &p);
        epm_fault_fail_nth_alloc(0);
        if (st == EPM_OK) {
            epm_placement_destroy(p);
            assert_true(n > 1);
            return;
        }
        assert_int_equal(st, EPM_ERR_NOMEM);
        assert_null(p);
    }
    fail();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement_create_shape),       cmocka_unit_test(test_placement_create_rejects),
        cmocka_unit_test(test_placement_add_sorted_unique),  cmocka_unit_test(test_placement_counts_and_validate),
        cmocka_unit_test(test_placement_clone_independent),  cmocka_unit_test(test_placement_quality_names),
        cmocka_unit_test(test_placement_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
