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
    /* rates that would make the cost model's ratios or times infinite (found by fuzzing) */
    epm_cluster_init(&c, 2, 1);
    c.inter_gbps = 1e-308;
    assert_int_equal(epm_cluster_validate(&c), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "inter_node_gbps = 1e-308 is outside [1e-12, 1e+12]"));
    epm_cluster_init(&c, 2, 1);
    c.gpu_tflops = 1e-320;
    assert_int_equal(epm_cluster_validate(&c), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "gpu_tflops"));
    epm_cluster_init(&c, 2, 1);
    c.intra_gbps = 1e13;
    assert_int_equal(epm_placement_create(1, 4, 1, &c, &p), EPM_ERR_INVALID_ARG);
    c.intra_gbps = 1e12; /* (the bounds themselves are in) */
    c.gpu_tflops = 1e-12;
    assert_int_equal(epm_cluster_validate(&c), EPM_OK);
    /* a replica table past 2^28 entries (4 bytes each) is refused before it is allocated */
    epm_cluster_init(&c, 64, 1024);
    assert_int_equal(epm_placement_create(1, 32768, 1, &c, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "1 layers x 32768 experts x 65536 ranks is too large"));
    assert_null(p);
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

static uint64_t next(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* experts of layer l whose replica set differs between p and q, counted per (expert, rank) gained */
static int gained(const epm_placement *p, const epm_placement *q, int l)
{
    int n = 0;
    for (int e = 0; e < epm_placement_experts(p); e++)
        for (int r = 0; r < epm_placement_ranks(p); r++)
            n += epm_placement_has(q, l, e, r) && !epm_placement_has(p, l, e, r);
    return n;
}

/* epm_placement_align (online rebalancing's renaming): a placement whose
 * nodes and ranks within nodes were shuffled, a layer at a time, comes back
 * exactly; any placement comes back with the same replicas per expert and
 * the same experts per rank up to the renaming, never with more experts
 * moved than it had; other shapes are refused. */
static void test_placement_align(void **state)
{
    (void)state;
    uint64_t rng = 3;
    static const int shapes[][3] = {{1, 1, 5}, {1, 4, 8}, {2, 2, 8}, {3, 2, 12}, {4, 3, 6}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int trial = 0; trial < 20; trial++) {
            const int N = shapes[si][0], G = shapes[si][1], E = shapes[si][2], R = N * G, L = 3;
            epm_placement *a = make(L, E, N, G), *b = make(L, E, N, G), *c = make(L, E, N, G);
            for (int l = 0; l < L; l++) {
                int node[8], rank[8], perm[32];
                for (int i = 0; i < N; i++)
                    node[i] = i;
                for (int i = N - 1; i > 0; i--) {
                    int j = (int)(next(&rng) % (uint64_t)(i + 1)), t = node[i];
                    node[i] = node[j], node[j] = t;
                }
                for (int i = 0; i < N; i++) {
                    for (int k = 0; k < G; k++)
                        rank[k] = k;
                    for (int k = G - 1; k > 0; k--) {
                        int j = (int)(next(&rng) % (uint64_t)(k + 1)), t = rank[k];
                        rank[k] = rank[j], rank[j] = t;
                    }
                    for (int k = 0; k < G; k++)
                        perm[i * G + k] = node[i] * G + rank[k];
                }
                for (int e = 0; e < E; e++) { /* one to three replicas each, on distinct ranks */
                    const int reps = 1 + (int)(next(&rng) % 3), first = (int)(next(&rng) % (uint64_t)R);
                    for (int k = 0; k < reps && k < R; k++) {
                        const int q = (first + k * 5) % R;
                        if (!epm_placement_has(a, l, e, q)) {
                            assert_int_equal(epm_placement_add(a, l, e, q), EPM_OK);
                            assert_int_equal(epm_placement_add(b, l, e, perm[q]), EPM_OK);
                        }
                    }
                    assert_int_equal(epm_placement_add(c, l, e, (int)(next(&rng) % (uint64_t)R)), EPM_OK);
                }
            }
            epm_placement *x, *y;
            assert_int_equal(epm_placement_align(a, b, &x), EPM_OK);
            assert_int_equal(epm_placement_align(a, c, &y), EPM_OK);
            for (int l = 0; l < L; l++) {
                assert_int_equal(gained(a, x, l), 0); /* the shuffle undone */
                for (int e = 0; e < E; e++)
                    for (int r = 0; r < R; r++)
                        assert_int_equal(epm_placement_has(x, l, e, r), epm_placement_has(a, l, e, r));
                assert_true(gained(a, y, l) <= gained(a, c, l));
                int cy[32] = {0}, cc[32] = {0};
                for (int e = 0; e < E; e++) {
                    const int *r1, *r2;
                    assert_int_equal(epm_placement_replicas(y, l, e, &r1), epm_placement_replicas(c, l, e, &r2));
                }
                for (int r = 0; r < R; r++) /* the same per-rank counts, renamed */
                    cy[epm_placement_rank_count(y, l, r)]++, cc[epm_placement_rank_count(c, l, r)]++;
                assert_memory_equal(cy, cc, sizeof cy);
            }
            epm_placement_destroy(x);
            epm_placement_destroy(y);
            epm_placement_destroy(a);
            epm_placement_destroy(b);
            epm_placement_destroy(c);
        }
    epm_placement *p = make(2, 4, 1, 2), *q = make(2, 4, 2, 1), *o = (epm_placement *)1;
    assert_int_equal(epm_placement_align(p, q, &o), EPM_ERR_MISMATCH);
    assert_null(o);
    assert_non_null(strstr(epm_last_error(), "on 2 x 1 ranks against 2 x 4 on 1 x 2"));
    assert_int_equal(epm_placement_align(p, NULL, &o), EPM_ERR_INVALID_ARG);
    epm_placement_destroy(p);
    epm_placement_destroy(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_placement_create_shape),       cmocka_unit_test(test_placement_create_rejects),
        cmocka_unit_test(test_placement_add_sorted_unique),  cmocka_unit_test(test_placement_counts_and_validate),
        cmocka_unit_test(test_placement_clone_independent),  cmocka_unit_test(test_placement_quality_names),
        cmocka_unit_test(test_placement_alloc_failures), cmocka_unit_test(test_placement_align),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
