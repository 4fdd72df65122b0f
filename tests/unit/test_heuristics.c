/* Every baseline method: each expert placed, slots respected, replicas
 * counted, determinism, and the balancing methods actually balance. */
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "epmoe/epmoe.h"
#include "planner.h"

/* Zipf 1.2 load skew, no sequence ids */
static epm_trace *skewed(int layers, int experts, int k, int64_t tokens, uint64_t seed)
{
    return tu_synth_trace_skew(layers, experts, k, tokens, seed, 1.2, 0);
}

static double mean_imbalance(const epm_trace *t, const epm_placement *p)
{
    epm_eval_opts eo;
    epm_eval_opts_init(&eo);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &eo, &r), EPM_OK);
    double v = r->max_over_mean_load;
    epm_eval_result_destroy(r);
    return v;
}

static void check_invariants(const epm_placement *p, int slots, int expect_total)
{
    assert_int_equal(epm_placement_validate(p, slots), EPM_OK);
    for (int l = 0; l < epm_placement_layers(p); l++) {
        int total = 0;
        for (int e = 0; e < epm_placement_experts(p); e++) {
            const int *r;
            int n = epm_placement_replicas(p, l, e, &r);
            assert_true(n >= 1);
            for (int j = 1; j < n; j++)
                assert_true(r[j] > r[j - 1]); /* sorted, no rank twice */
            total += n;
        }
        assert_int_equal(total, expect_total);
    }
}

static void test_heuristics_invariants(void **state)
{
    (void)state;
    epm_trace *t = skewed(3, 12, 2, 4000, 5);
    epm_cluster c;
    epm_cluster_init(&c, 2, 2); /* 4 ranks */
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    for (int m = EPM_METHOD_CONTIGUOUS; m <= EPM_METHOD_EPLB; m++) {
        for (int slots = 3; slots <= 5; slots++) {
            o.slots_per_rank = slots;
            epm_placement *p;
            assert_int_equal(epm_plan_heuristic((epm_method)m, t, &c, &o, &p), EPM_OK);
            int total = m == EPM_METHOD_EPLB ? 4 * slots : 12;
            check_invariants(p, slots, total);
            const epm_placement_info *in = epm_placement_get_info(p);
            assert_string_equal(in->method, epm_method_name((epm_method)m));
            assert_int_equal(in->quality, EPM_QUALITY_HEURISTIC);
            assert_true(isfinite(in->objective) && in->objective > 0);
            assert_true(isnan(in->bound));
            /* determinism: the same input gives the same placement */
            epm_placement *q;
            assert_int_equal(epm_plan_heuristic((epm_method)m, t, &c, &o, &q), EPM_OK);
            for (int l = 0; l < 3; l++)
                for (int e = 0; e < 12; e++)
                    for (int r = 0; r < 4; r++)
                        assert_int_equal(epm_placement_has(p, l, e, r), epm_placement_has(q, l, e, r));
            epm_placement_destroy(q);
            epm_placement_destroy(p);
        }
    }
    epm_trace_destroy(t);
}

static void test_heuristics_layouts(void **state)
{
    (void)state;
    epm_trace *t = skewed(1, 8, 2, 100, 1);
    epm_cluster c;
    epm_cluster_init(&c, 1, 4);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    epm_placement *p;
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_CONTIGUOUS, t, &c, &o, &p), EPM_OK);
    for (int e = 0; e < 8; e++)
        assert_true(epm_placement_has(p, 0, e, e / 2));
    epm_placement_destroy(p);
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_ROUND_ROBIN, t, &c, &o, &p), EPM_OK);
    for (int e = 0; e < 8; e++)
        assert_true(epm_placement_has(p, 0, e, e % 4));
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_heuristics_balance(void **state)
{
    (void)state;
    epm_trace *t = skewed(4, 16, 2, 20000, 9);
    epm_cluster c;
    epm_cluster_init(&c, 2, 4);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    epm_placement *contig, *greedy, *eplb;
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_CONTIGUOUS, t, &c, &o, &contig), EPM_OK);
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_GREEDY, t, &c, &o, &greedy), EPM_OK);
    o.slots_per_rank = 3; /* 8 spare slots for replicas */
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_EPLB, t, &c, &o, &eplb), EPM_OK);
    double ic = mean_imbalance(t, contig), ig = mean_imbalance(t, greedy), ie = mean_imbalance(t, eplb);
    assert_true(ig < ic);
    assert_true(ie < ig);
    /* the hottest expert got the most replicas */
    epm_trace_stats *s;
    assert_int_equal(epm_trace_stats_compute(t, 2, &s), EPM_OK);
    int hot = 0;
    for (int e = 1; e < 16; e++)
        if (s->load[e] > s->load[hot])
            hot = e;
    const int *r;
    int nhot = epm_placement_replicas(eplb, 0, hot, &r);
    for (int e = 0; e < 16; e++)
        assert_true(epm_placement_replicas(eplb, 0, e, &r) <= nhot);
    assert_true(nhot >= 2);
    epm_trace_stats_destroy(s);
    epm_placement_destroy(contig);
    epm_placement_destroy(greedy);
    epm_placement_destroy(eplb);
    epm_trace_destroy(t);
}

static void test_heuristics_bad_slots(void **state)
{
    (void)state;
    epm_trace *t = skewed(1, 8, 2, 100, 1);
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    o.slots_per_rank = 3; /* 2 x 3 < 8 */
    epm_placement *p = NULL;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "slots_per_rank = 3"));
    assert_null(p);
    o.slots_per_rank = 0;
    o.mip_gap = 2;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "mip_gap"));
    epm_trace_destroy(t);
}

static void test_objective_matches_eval(void **state)
{
    (void)state;
    /* one token, 2 ranks in 2 nodes (link cost = intra/inter ratio 6) */
    epm_trace *t;
    assert_int_equal(epm_trace_create(1, 1, 1, 2, &t), EPM_OK);
    epm_trace_ids(t, 0)[0] = 1;
    epm_cluster c;
    epm_cluster_init(&c, 2, 1);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    o.balance_weight = 1;
    epm_placement *p;
    assert_int_equal(epm_plan_heuristic(EPM_METHOD_CONTIGUOUS, t, &c, &o, &p), EPM_OK);
    /* max load 1; traffic: out and back inter = 2 transfers x cost 6 / 2 ranks = 6 */
    assert_true(fabs(epm_placement_get_info(p)->objective - 7.0) < 1e-9);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}


/* Every method on every small shape, with extreme and random skew: never an
 * error for a feasible slot count, and the invariants hold. */
static void test_heuristics_sweep(void **state)
{
    (void)state;
    uint64_t x = 88172645463325252ull;
    int cases = 0;
    for (int nodes = 1; nodes <= 3; nodes++)
        for (int gpn = 1; gpn <= 3; gpn++)
            for (int E = 1; E <= 9; E++) {
                int R = nodes * gpn, need = (E + R - 1) / R;
                for (int slots = need; slots <= E && slots <= need + 2; slots++)
                    for (int skew = 0; skew < 3; skew++) {
                        int k = E < 2 ? 1 : 2;
                        epm_trace *t;
                        assert_int_equal(epm_trace_create(2, 40, k, E, &t), EPM_OK);
                        for (int l = 0; l < 2; l++) {
                            int32_t *ids = epm_trace_ids(t, l);
                            for (int i = 0; i < 40; i++) {
                                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                                int a = skew == 0 ? 0 : skew == 1 ? (int)(x % (uint64_t)E) : (int)((x % 97) * (x % 97) % (uint64_t)E);
                                ids[i * k] = a;
                                if (k == 2)
                                    ids[i * k + 1] = (a + 1 + (int)((x >> 20) % (uint64_t)(E - 1))) % E;
                            }
                        }
                        epm_cluster c;
                        epm_cluster_init(&c, nodes, gpn);
                        epm_plan_opts o;
                        epm_plan_opts_init(&o);
                        o.slots_per_rank = slots;
                        for (int m = EPM_METHOD_CONTIGUOUS; m <= EPM_METHOD_EPLB; m++) {
                            epm_placement *p = NULL;
                            epm_status st = epm_plan_heuristic((epm_method)m, t, &c, &o, &p);
                            if (st != EPM_OK)
                                fprintf(stderr, "method %d nodes %d gpn %d E %d slots %d skew %d: %s\n", m, nodes, gpn, E, slots, skew, epm_last_error());
                            assert_int_equal(st, EPM_OK);
                            int total = E;
                            if (m == EPM_METHOD_EPLB)
                                total = R * slots < E * R ? R * slots : E * R;
                            check_invariants(p, slots, total);
                            epm_placement_destroy(p);
                            cases++;
                        }
                        epm_trace_destroy(t);
                    }
            }
    assert_true(cases > 500);
}

/* epm_plan_from_loads (online rebalancing's planner): from a trace's own
 * per-expert loads it places exactly what epm_plan does from the trace, for
 * every heuristic method; it replicates the hottest expert; bad shapes,
 * slots, negative loads and the ILP are refused with the value named. */
static void test_plan_from_loads(void **state)
{
    (void)state;
    const int L = 3, E = 12, K = 2;
    epm_trace *t = skewed(L, E, K, 3000, 5);
    int64_t load[3 * 12] = {0};
    for (int l = 0; l < L; l++)
        for (int64_t i = 0; i < epm_trace_tokens(t) * K; i++)
            load[l * E + epm_trace_ids(t, l)[i]]++;
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    for (int m = 0; m < EPM_METHOD_ILP; m++) {
        epm_plan_opts o;
        epm_plan_opts_init(&o);
        o.method = (epm_method)m;
        o.slots_per_rank = m == EPM_METHOD_EPLB || m == EPM_METHOD_GREEDY ? 4 : 3;
        epm_placement *a, *b;
        assert_int_equal(epm_plan(t, &c, &o, &a), EPM_OK);
        assert_int_equal(epm_plan_from_loads((epm_method)m, load, L, E, K, &c, o.slots_per_rank, 0, &b), EPM_OK);
        check_invariants(b, o.slots_per_rank, m == EPM_METHOD_EPLB ? 16 : E);
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++)
                for (int r = 0; r < 4; r++)
                    assert_int_equal(epm_placement_has(a, l, e, r), epm_placement_has(b, l, e, r));
        assert_string_equal(epm_placement_get_info(b)->method, epm_method_name((epm_method)m));
        assert_true(isnan(epm_placement_get_info(b)->objective));
        if (m == EPM_METHOD_EPLB) { /* the hottest expert of each layer has more than one replica */
            for (int l = 0; l < L; l++) {
                int hot = 0;
                for (int e = 1; e < E; e++)
                    hot = load[l * E + e] > load[l * E + hot] ? e : hot;
                const int *reps;
                assert_true(epm_placement_replicas(b, l, hot, &reps) > 1);
            }
        }
        epm_placement_destroy(a);
        epm_placement_destroy(b);
    }
    epm_placement *p = (epm_placement *)1;
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, K, &c, 2, 0, &p), EPM_ERR_INVALID_ARG);
    assert_null(p);
    assert_non_null(strstr(epm_last_error(), "2 slots a rank on 4 ranks for 12 experts (from 3 to 12)"));
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, K, &c, 13, 0, &p), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_ILP, load, L, E, K, &c, 4, 0, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "'ilp' is not a heuristic method"));
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, 13, &c, 4, 0, &p), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, NULL, L, E, K, &c, 4, 0, &p), EPM_ERR_INVALID_ARG);
    load[E + 5] = -3;
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, K, &c, 4, 0, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "expert 5 of layer 1 has load -3"));
    epm_trace_destroy(t);
}

/* eplb with expert groups (DeepSeek EPLB's hierarchical policy) on a
 * group-limited trace (64 experts in 8 groups, a token's 4 within 2): each
 * group whole on one node, two groups a node, every slot of every rank
 * filled, and so no token reaches more nodes than its groups, where the
 * global policy spreads a group's experts and tokens reach more; balance
 * stays near the global policy's and well below contiguous's. Groups that
 * do not divide over the nodes fall back to the global policy, as
 * DeepSeek's does; groups that do not divide the experts are refused. */
static void test_eplb_hierarchical(void **state)
{
    (void)state;
    epm_trace_synth_opts so;
    epm_trace_synth_opts_init(&so);
    so.layers = 3, so.experts = 64, so.k = 4, so.tokens = 6000, so.zipf_s = 1.0, so.seed = 3;
    so.groups = 8, so.topk_groups = 2, so.tokens_per_seq = 50;
    epm_trace *t;
    assert_int_equal(epm_trace_synth(&so, &t), EPM_OK);
    epm_cluster c;
    epm_cluster_init(&c, 4, 4);
    assert_true(epm_eplb_hierarchical(8, 64, &c));
    assert_false(epm_eplb_hierarchical(1, 64, &c));
    assert_false(epm_eplb_hierarchical(6, 64, &c)); /* (6 does not divide 64) */
    assert_false(epm_eplb_hierarchical(2, 64, &c)); /* (2 groups over 4 nodes) */
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    o.method = EPM_METHOD_EPLB;
    o.slots_per_rank = 5;
    epm_placement *global, *grouped, *contig;
    assert_int_equal(epm_plan(t, &c, &o, &global), EPM_OK);
    o.expert_groups = 8;
    assert_int_equal(epm_plan(t, &c, &o, &grouped), EPM_OK);
    o.method = EPM_METHOD_CONTIGUOUS, o.slots_per_rank = 0;
    assert_int_equal(epm_plan(t, &c, &o, &contig), EPM_OK);
    check_invariants(grouped, 5, 80);
    for (int l = 0; l < 3; l++) {
        int groups_on[4] = {0};
        for (int q = 0; q < 16; q++)
            assert_int_equal(epm_placement_rank_count(grouped, l, q), 5);
        for (int g = 0; g < 8; g++) {
            int node = -1;
            for (int e = 8 * g; e < 8 * g + 8; e++) {
                const int *reps;
                const int n = epm_placement_replicas(grouped, l, e, &reps);
                for (int i = 0; i < n; i++) {
                    if (node < 0)
                        node = epm_cluster_node_of(&c, reps[i]);
                    assert_int_equal(epm_cluster_node_of(&c, reps[i]), node);
                }
            }
            groups_on[node]++;
        }
        for (int d = 0; d < 4; d++)
            assert_int_equal(groups_on[d], 2);
    }
    epm_eval_opts eo;
    epm_eval_opts_init(&eo);
    epm_eval_result *rg, *rb, *rc;
    assert_int_equal(epm_eval(t, grouped, &eo, &rg), EPM_OK);
    assert_int_equal(epm_eval(t, global, &eo, &rb), EPM_OK);
    assert_int_equal(epm_eval(t, contig, &eo, &rc), EPM_OK);
    assert_int_equal(rg->routed, 3 * 6000);
    assert_int_equal(rg->max_nodes_reached, 2);
    assert_true(rb->max_nodes_reached > 2);
    assert_true(rg->nodes_reached < rb->nodes_reached && rg->node_dispatches < rb->node_dispatches);
    assert_true(rg->node_dispatches <= rg->nodes_reached);
    fprintf(stderr, "hierarchical: %.3f nodes a token, max/mean %.3f; global %.3f, %.3f; contiguous max/mean %.3f\n",
            (double)rg->nodes_reached / rg->routed, rg->max_over_mean_load, (double)rb->nodes_reached / rb->routed,
            rb->max_over_mean_load, rc->max_over_mean_load);
    assert_true(rg->max_over_mean_load < rc->max_over_mean_load);
    assert_true(rg->max_over_mean_load < 1.5 * rb->max_over_mean_load);
    epm_eval_result_destroy(rg);
    epm_eval_result_destroy(rb);
    epm_eval_result_destroy(rc);
    /* 8 groups over 3 nodes: the global policy, the placement without groups */
    epm_cluster c3;
    epm_cluster_init(&c3, 3, 4);
    epm_placement *a, *b;
    o.method = EPM_METHOD_EPLB, o.slots_per_rank = 6, o.expert_groups = 8;
    assert_int_equal(epm_plan(t, &c3, &o, &a), EPM_OK);
    o.expert_groups = 0;
    assert_int_equal(epm_plan(t, &c3, &o, &b), EPM_OK);
    for (int l = 0; l < 3; l++)
        for (int e = 0; e < 64; e++)
            for (int q = 0; q < 12; q++)
                assert_int_equal(epm_placement_has(a, l, e, q), epm_placement_has(b, l, e, q));
    epm_placement *p = (epm_placement *)1;
    o.expert_groups = 6;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_ERR_INVALID_ARG);
    assert_null(p);
    assert_non_null(strstr(epm_last_error(), "expert_groups = 6: expert groups must divide the 64 experts"));
    o.expert_groups = -2;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_ERR_INVALID_ARG);
    int64_t load[64] = {1};
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, 1, 64, 4, &c, 5, 5, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "groups = 5"));
    epm_placement_destroy(a);
    epm_placement_destroy(b);
    epm_placement_destroy(global);
    epm_placement_destroy(grouped);
    epm_placement_destroy(contig);
    epm_trace_destroy(t);
}

/* epm_plan_fill_replicas (the ILP's replicas by load per replica): the
 * base's copies stay, every spare slot is filled, no rank holds an expert
 * twice, the hottest expert of each layer gets the most replicas, and the
 * balance improves on the base's. */
static void test_fill_replicas(void **state)
{
    (void)state;
    const int L = 3, E = 16;
    epm_trace *t = skewed(L, E, 2, 4000, 9);
    epm_cluster c;
    epm_cluster_init(&c, 2, 4);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    o.method = EPM_METHOD_CONTIGUOUS;
    epm_placement *base, *filled;
    assert_int_equal(epm_plan(t, &c, &o, &base), EPM_OK);
    int64_t load[3 * 16] = {0};
    for (int l = 0; l < L; l++)
        for (int64_t i = 0; i < epm_trace_tokens(t) * 2; i++)
            load[l * E + epm_trace_ids(t, l)[i]]++;
    assert_int_equal(epm_plan_fill_replicas(base, load, 3, &filled), EPM_OK);
    check_invariants(filled, 3, 24);
    for (int l = 0; l < L; l++) {
        int hot = 0, most = 0;
        for (int e = 0; e < E; e++) {
            hot = load[l * E + e] > load[l * E + hot] ? e : hot;
            const int *reps;
            const int n = epm_placement_replicas(filled, l, e, &reps);
            most = n > most ? n : most;
            for (int q = 0; q < 8; q++) /* (base's copy where it was) */
                assert_true(!epm_placement_has(base, l, e, q) || epm_placement_has(filled, l, e, q));
        }
        for (int q = 0; q < 8; q++)
            assert_int_equal(epm_placement_rank_count(filled, l, q), 3);
        const int *reps;
        assert_int_equal(epm_placement_replicas(filled, l, hot, &reps), most);
        assert_true(most > 1);
    }
    assert_true(mean_imbalance(t, filled) < mean_imbalance(t, base));
    epm_placement_destroy(base);
    epm_placement_destroy(filled);
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heuristics_invariants), cmocka_unit_test(test_heuristics_layouts),
        cmocka_unit_test(test_heuristics_balance),    cmocka_unit_test(test_heuristics_bad_slots),
        cmocka_unit_test(test_objective_matches_eval), cmocka_unit_test(test_heuristics_sweep),
        cmocka_unit_test(test_plan_from_loads),      cmocka_unit_test(test_eplb_hierarchical),
        cmocka_unit_test(test_fill_replicas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
