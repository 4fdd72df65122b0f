/* epm_route_pick, the replica choice shared by plan eval and run: self first,
 * then the same node, then another node; ties spread by (key + slot). */
#include "test_util.h"

#include <string.h>

#include "epmoe/epmoe.h"

/* 2 nodes x 3 ranks: node 0 = r0..r2, node 1 = r3..r5. */
static epm_placement *cluster_2x3(int experts)
{
    epm_cluster c;
    epm_cluster_init(&c, 2, 3);
    epm_placement *p;
    assert_int_equal(epm_placement_create(1, experts, 1, &c, &p), EPM_OK);
    return p;
}

static int pick1(const epm_placement *p, int expert, int src, uint64_t key)
{
    int32_t ids[1] = {expert};
    int out[1] = {-2};
    epm_route_pick(p, 0, ids, 1, src, key, out);
    return out[0];
}

static void test_route_self_first(void **state)
{
    (void)state;
    epm_placement *p = cluster_2x3(1);
    for (int r = 0; r < 6; r++)
        assert_int_equal(epm_placement_add(p, 0, 0, r), EPM_OK);
    for (int src = 0; src < 6; src++)
        for (uint64_t key = 0; key < 7; key++)
            assert_int_equal(pick1(p, 0, src, key), src);
    epm_placement_destroy(p);
}

static void test_route_node_before_other_node(void **state)
{
    (void)state;
    epm_placement *p = cluster_2x3(1);
    /* copies on r2 (node 0) and r3, r4 (node 1) */
    assert_int_equal(epm_placement_add(p, 0, 0, 4), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 2), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 3), EPM_OK);
    for (uint64_t key = 0; key < 10; key++) {
        assert_int_equal(pick1(p, 0, 0, key), 2); /* the only intra-node copy, whatever the key */
        assert_int_equal(pick1(p, 0, 1, key), 2);
        assert_int_equal(pick1(p, 0, 5, key), key % 2 == 0 ? 3 : 4); /* two intra copies: by key */
    }
    assert_int_equal(pick1(p, 0, 4, 1), 4); /* self beats the intra copy r3 */
    epm_placement_destroy(p);
}

static void test_route_other_node_tie_by_key_and_slot(void **state)
{
    (void)state;
    epm_placement *p = cluster_2x3(2);
    /* expert 0 only on node 1 (r3, r4, r5); expert 1 only on r1 */
    for (int r = 3; r < 6; r++)
        assert_int_equal(epm_placement_add(p, 0, 0, r), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 1, 1), EPM_OK);
    /* from r0: all three copies are inter-node; index (key + slot) mod 3 in ascending rank order */
    int32_t ids[2] = {1, 0};
    int out[2];
    epm_route_pick(p, 0, ids, 2, 0, 0, out);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 4); /* key 0 + slot 1 -> second copy */
    epm_route_pick(p, 0, ids, 2, 0, 2, out);
    assert_int_equal(out[1], 3); /* (2 + 1) mod 3 = 0 */
    /* spread over tokens: 3000 consecutive keys give each copy exactly 1000 */
    int hits[6] = {0};
    for (uint64_t key = 0; key < 3000; key++)
        hits[pick1(p, 0, 0, key)]++;
    assert_int_equal(hits[3], 1000);
    assert_int_equal(hits[4], 1000);
    assert_int_equal(hits[5], 1000);
    /* large keys do not overflow into a bad index */
    int r = pick1(p, 0, 0, UINT64_MAX);
    assert_true(r >= 3 && r <= 5);
    epm_placement_destroy(p);
}

static void test_route_none_and_out_of_range(void **state)
{
    (void)state;
    epm_placement *p = cluster_2x3(3);
    assert_int_equal(epm_placement_add(p, 0, 0, 5), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 1, 0), EPM_OK);
    /* expert 2 is on no rank */
    int32_t ids[4] = {-1, 0, 7, 2};
    int out[4] = {9, 9, 9, 9};
    epm_route_pick(p, 0, ids, 4, 0, 0, out);
    assert_int_equal(out[0], -1);
    assert_int_equal(out[1], 5); /* a single copy is taken over any link */
    assert_int_equal(out[2], -1);
    assert_int_equal(out[3], -1);
    epm_placement_destroy(p);
}

static void test_route_same_answer_from_eval(void **state)
{
    (void)state;
    /* eval must route exactly as epm_route_pick with key = token index: a
     * replicated expert on r3 and r4 seen from home r0 (tokens 0, 6, 12 have
     * sequence id = token id, so home 0 on 6 ranks) */
    epm_placement *p = cluster_2x3(1);
    assert_int_equal(epm_placement_add(p, 0, 0, 3), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 4), EPM_OK);
    epm_trace *t;
    assert_int_equal(epm_trace_create(1, 13, 1, 1, &t), EPM_OK);
    int32_t *ids = epm_trace_ids(t, 0);
    for (int i = 0; i < 13; i++)
        ids[i] = i % 6 == 0 ? 0 : -1;
    epm_eval_opts o;
    epm_eval_opts_init(&o);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    /* keys 0, 6, 12 are all even: every one goes to the first copy, r3 */
    assert_int_equal(r->rank_load[3], 3);
    assert_int_equal(r->rank_load[4], 0);
    epm_eval_result_destroy(r);
    epm_trace_destroy(t);
    epm_placement_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_self_first),
        cmocka_unit_test(test_route_node_before_other_node),
        cmocka_unit_test(test_route_other_node_tie_by_key_and_slot),
        cmocka_unit_test(test_route_none_and_out_of_range),
        cmocka_unit_test(test_route_same_answer_from_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
