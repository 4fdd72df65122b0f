/* The ILP planner: its optimum equals brute-force enumeration scored with
 * epm_plan_objective, its model agrees with that objective on every
 * single-copy placement, its bound is below every placement, it never loses
 * to the heuristics, falls back honestly, survives GLPK failing inside, is
 * deterministic, and proves the Mixtral shape optimal. The local search's
 * sample-average model is epm_eval's busiest-rank time, and the search never
 * lets epm_plan_objective rise while it lowers that model. */
#include "test_util.h"

#include <math.h>
#include <string.h>

#include "ilp_internal.h"

static void opts_for(epm_plan_opts *o, epm_mode mode, int slots)
{
    tu_plan_opts(o, EPM_METHOD_ILP, mode, slots, 30, 1e-9);
}

static int close_to(double a, double b) { return fabs(a - b) <= 1e-9 * (fabs(a) + fabs(b) + 1.0); }

/* ---- brute force over single-copy placements ---- */
typedef struct {
    const epm_trace *t;
    const epm_cluster *c;
    const epm_plan_opts *o;
    int L, E, R, S;
    int *rank_of;
    double best;
} brute;

static void brute_rec(brute *b, int idx)
{
    if (idx == b->L * b->E) {
        epm_placement *p;
        assert_int_equal(epm_placement_create(b->L, b->E, epm_trace_k(b->t), b->c, &p), EPM_OK);
        for (int i = 0; i < idx; i++)
            assert_int_equal(epm_placement_add(p, i / b->E, i % b->E, b->rank_of[i]), EPM_OK);
        double v;
        assert_int_equal(epm_plan_objective(b->t, p, b->o, &v), EPM_OK);
        epm_placement_destroy(p);
        if (v < b->best)
            b->best = v;
        return;
    }
    int l = idx / b->E;
    for (int r = 0; r < b->R; r++) {
        int used = 0;
        for (int i = l * b->E; i < idx; i++)
            used += b->rank_of[i] == r;
        if (used >= b->S)
            continue;
        b->rank_of[idx] = r;
        brute_rec(b, idx + 1);
    }
}

static epm_placement *plan_ilp(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o)
{
    epm_placement *p = NULL;
    epm_status st = epm_plan_ilp(t, c, o, &p);
    if (st != EPM_OK)
        fail_msg("epm_plan_ilp: %s: %s", epm_status_str(st), epm_last_error());
    return p;
}

typedef struct {
    int nodes, gpn, slots, layers, experts;
} shape;

static const shape small_shapes[] = {
    {1, 2, 2, 3, 4}, /* two ranks, two slots each */
    {2, 1, 2, 3, 4}, /* two nodes: the inter-node cost matters */
    {2, 2, 1, 3, 4}, /* one expert a rank, two nodes */
    {1, 4, 1, 3, 4}, /* Mixtral-like: one expert a rank, one node */
    {1, 3, 2, 2, 5}, /* a spare slot left empty */
};

static void test_ilp_optimum_equals_brute_force(void **state)
{
    (void)state;
    for (size_t s = 0; s < sizeof small_shapes / sizeof *small_shapes; s++)
        for (int mode = 0; mode < 2; mode++) {
            const shape *sh = &small_shapes[s];
            epm_trace *t = tu_synth_trace(sh->layers, sh->experts, 2, 60, 11 + s);
            epm_cluster c;
            epm_cluster_init(&c, sh->nodes, sh->gpn);
            epm_plan_opts o;
            opts_for(&o, (epm_mode)mode, sh->slots);
            int rank_of[64];
            brute b = {t, &c, &o, sh->layers, sh->experts, sh->nodes * sh->gpn, sh->slots, rank_of, INFINITY};
            brute_rec(&b, 0);
            epm_placement *p = plan_ilp(t, &c, &o);
            const epm_placement_info *in = epm_placement_get_info(p);
            double v;
            assert_int_equal(epm_plan_objective(t, p, &o, &v), EPM_OK);
            int spares = sh->nodes * sh->gpn * sh->slots > sh->experts;
            /* with a spare slot a replica may beat every single-copy placement */
            if ((spares ? v > b.best + 1e-9 * fabs(b.best) : !close_to(v, b.best)) || !close_to(in->objective, v))
                fail_msg("shape %zu mode %d: ilp %.9g (reported %.9g), brute force %.9g", s, mode, v, in->objective,
                         b.best);
            if (!spares) {
                assert_true(in->bound <= b.best + 1e-9 * fabs(b.best));
                assert_int_equal(in->quality, EPM_QUALITY_OPTIMAL);
            }
            epm_placement_destroy(p);
            epm_trace_destroy(t);
        }
}

/* The MIP's objective at any single-copy placement, the fast evaluator and
 * epm_plan_objective are the same number: what makes the ILP's optimum and
 * bound statements about the planner's objective. Includes skipped tokens. */
static void test_ilp_model_equals_objective(void **state)
{
    (void)state;
    static const shape shapes[] = {{1, 2, 2, 3, 4}, {2, 2, 1, 3, 4}, {2, 2, 2, 3, 6}, {2, 1, 3, 2, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int mode = 0; mode < 2; mode++) {
            const shape *sh = &shapes[s];
            epm_trace *t = tu_synth_trace(sh->layers, sh->experts, 2, 50, 3 + s);
            /* a few skipped tokens and a top-1-only token */
            for (int l = 0; l < sh->layers; l++) {
                int32_t *ids = epm_trace_ids(t, l);
                ids[2 * (5 + l)] = ids[2 * (5 + l) + 1] = -1;
                ids[2 * 9 + 1] = -1;
            }
            epm_cluster c;
            epm_cluster_init(&c, sh->nodes, sh->gpn);
            epm_plan_opts o;
            opts_for(&o, (epm_mode)mode, sh->slots);
            epm_ilp_ctx x;
            assert_int_equal(epm_ilp_ctx_init(&x, t, &c, &o, sh->slots), EPM_OK);
            epm_mip m;
            int col_x[512];
            assert_int_equal(epm_ilp_build(&x, 100000, &m, col_x), EPM_OK);
            double *v = test_calloc((size_t)m.ncols, sizeof *v);
            int rank_of[64];
            uint64_t rng = 5;
            for (int it = 0; it < 20; it++) {
                int R = x.R;
                for (int l = 0; l < x.L; l++)
                    for (int e = 0; e < x.E; e++) {
                        int r, used;
                        do {
                            r = (int)(epm_splitmix64(&rng) % (uint64_t)R);
                            used = 0;
                            for (int f = 0; f < e; f++)
                                used += rank_of[l * x.E + f] == r;
                        } while (used >= sh->slots);
                        rank_of[l * x.E + e] = r;
                    }
                epm_placement *p;
                assert_int_equal(epm_ilp_to_placement(&x, rank_of, 2, &p), EPM_OK);
                double obj, bound;
                assert_int_equal(epm_plan_objective(t, p, &o, &obj), EPM_OK);
                memset(v, 0, (size_t)m.ncols * sizeof *v);
                epm_ilp_start(&x, col_x, rank_of, v);
                assert_int_equal(epm_mip_complete(&m, v), EPM_OK);
                double model = epm_mip_value(&m, v), fast = epm_ilp_total(&x, rank_of);
                if (!close_to(model, obj) || !close_to(fast, obj))
                    fail_msg("shape %zu mode %d: objective %.9g, MIP %.9g, evaluator %.9g", s, mode, obj, model, fast);
                assert_int_equal(epm_ilp_bound(&x, 0, &bound), EPM_OK);
                assert_true(bound <= obj + 1e-9 * fabs(obj));
                assert_int_equal(epm_ilp_bound(&x, 1, &bound), EPM_OK);
                assert_true(bound <= obj + 1e-9 * fabs(obj));
                epm_placement_destroy(p);
            }
            test_free(v);
            epm_mip_free(&m);
            epm_ilp_ctx_free(&x);
            epm_trace_destroy(t);
        }
}

/* ---- replicas: all placements with every expert at least once ---- */
typedef struct {
    const epm_trace *t;
    const epm_cluster *c;
    const epm_plan_opts *o;
    int L, E, R, S;
    int *mask; /* [L][R] expert subsets */
    double best;
} rbrute;

static void rbrute_rec(rbrute *b, int idx)
{
    if (idx == b->L * b->R) {
        epm_placement *p;
        assert_int_equal(epm_placement_create(b->L, b->E, epm_trace_k(b->t), b->c, &p), EPM_OK);
        for (int i = 0; i < idx; i++)
            for (int e = 0; e < b->E; e++)
                if (b->mask[i] >> e & 1)
                    assert_int_equal(epm_placement_add(p, i / b->R, e, i % b->R), EPM_OK);
        double v;
        assert_int_equal(epm_plan_objective(b->t, p, b->o, &v), EPM_OK);
        epm_placement_destroy(p);
        if (v < b->best)
            b->best = v;
        return;
    }
    int l = idx / b->R, r = idx % b->R;
    for (int m = 1; m < 1 << b->E; m++) {
        if (__builtin_popcount((unsigned)m) > b->S)
            continue;
        b->mask[idx] = m;
        if (r == b->R - 1) {
            int all = 0;
            for (int q = 0; q < b->R; q++)
                all |= b->mask[l * b->R + q];
            if (all != (1 << b->E) - 1)
                continue;
        }
        rbrute_rec(b, idx + 1);
    }
}

static void test_ilp_replicas_between_bound_and_heuristics(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        epm_trace *t = tu_synth_trace(2, 4, 2, 40, 21);
        epm_cluster c;
        epm_cluster_init(&c, 1, 2);
        epm_plan_opts o;
        opts_for(&o, (epm_mode)mode, 3); /* 6 slots for 4 experts */
        int mask[4];
        rbrute b = {t, &c, &o, 2, 4, 2, 3, mask, INFINITY};
        rbrute_rec(&b, 0);
        epm_placement *p = plan_ilp(t, &c, &o);
        const epm_placement_info *in = epm_placement_get_info(p);
        assert_int_equal(epm_placement_validate(p, 3), EPM_OK);
        assert_true(in->bound <= b.best + 1e-9 * fabs(b.best));
        assert_true(in->objective >= b.best - 1e-9 * fabs(b.best));
        for (int m = 0; m < EPM_METHOD_ILP; m++) {
            epm_placement *h;
            double hv;
            assert_int_equal(epm_plan_heuristic((epm_method)m, t, &c, &o, &h), EPM_OK);
            assert_int_equal(epm_plan_objective(t, h, &o, &hv), EPM_OK);
            assert_true(in->objective <= hv + 1e-9 * fabs(hv));
            epm_placement_destroy(h);
        }
        epm_placement_destroy(p);
        epm_trace_destroy(t);
    }
}

/* The follow-mode decomposition for one expert a rank (E = R) on its own,
 * no MIP: its placement's objective and its bound both equal brute force,
 * from a handful of tokens (many ties between the layers' assignments: the
 * chains that lose nothing reach every end map) to enough that the optimal
 * assignments are few (the search over chains that lose a little). */
static void test_ilp_decompose_exact(void **state)
{
    (void)state;
    static const struct {
        int L, E;
        int64_t tokens;
        uint64_t seed;
    } cases[] = {{3, 4, 6, 1}, {3, 4, 12, 2}, {3, 4, 40, 3}, {3, 4, 200, 4}, {4, 3, 10, 5}, {5, 3, 30, 6},
                 {3, 3, 25, 7}, {2, 4, 50, 8}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        epm_trace *t = tu_synth_trace(cases[i].L, cases[i].E, 2, cases[i].tokens, cases[i].seed);
        epm_cluster c;
        epm_cluster_init(&c, 1, cases[i].E);
        epm_plan_opts o;
        opts_for(&o, EPM_MODE_FOLLOW, 1);
        epm_ilp_ctx x;
        assert_int_equal(epm_ilp_ctx_init(&x, t, &c, &o, 1), EPM_OK);
        assert_true(epm_ilp_decompose_applies(&x));
        int rank_of[64], bf[64];
        double lb;
        assert_int_equal(epm_ilp_decompose(&x, epm_now() + 30, rank_of, &lb), EPM_OK);
        double v = epm_ilp_total(&x, rank_of);
        brute b = {t, &c, &o, cases[i].L, cases[i].E, cases[i].E, 1, bf, INFINITY};
        brute_rec(&b, 0);
        if (!close_to(v, b.best) || !close_to(lb, b.best))
            fail_msg("case %zu (L %d, E %d, %lld tokens): decomposition %.9g, bound %.9g, brute force %.9g", i,
                     cases[i].L, cases[i].E, (long long)cases[i].tokens, v, lb, b.best);
        epm_ilp_ctx_free(&x);
        epm_trace_destroy(t);
    }
}

/* At a size where one MIP is too large, the decomposition still never loses
 * to a heuristic and reports a bound below its objective. */
static void test_ilp_never_worse_than_heuristics(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        epm_trace *t = tu_synth_trace(4, 32, 4, 400, 8);
        epm_cluster c;
        epm_cluster_init(&c, 2, 4);
        epm_plan_opts o;
        opts_for(&o, (epm_mode)mode, 0);
        /* 4 s: with 1, a loaded machine under ASan (CI's second pass beside
         * another test) ran out of time before the root LP of a part, and
         * the plan fell back; the decomposition stops sooner where it can */
        o.time_limit_s = 4;
        o.mip_gap = 1e-4;
        epm_placement *p = plan_ilp(t, &c, &o);
        const epm_placement_info *in = epm_placement_get_info(p);
        double v;
        assert_int_equal(epm_plan_objective(t, p, &o, &v), EPM_OK);
        assert_true(close_to(v, in->objective));
        assert_true(in->bound <= v);
        assert_true(in->gap >= 0 && in->gap < 1);
        if (in->quality != EPM_QUALITY_OPTIMAL && in->quality != EPM_QUALITY_FEASIBLE)
            fail_msg("mode %d: quality %s: %s", mode, epm_plan_quality_name(in->quality), in->note);
        for (int m = 0; m < EPM_METHOD_ILP; m++) {
            epm_placement *h;
            double hv;
            assert_int_equal(epm_plan_heuristic((epm_method)m, t, &c, &o, &h), EPM_OK);
            assert_int_equal(epm_plan_objective(t, h, &o, &hv), EPM_OK);
            assert_true(v <= hv + 1e-9 * fabs(hv));
            epm_placement_destroy(h);
        }
        epm_placement_destroy(p);
        epm_trace_destroy(t);
    }
}

static double best_heuristic_objective(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o)
{
    double best = INFINITY;
    for (int m = 0; m < EPM_METHOD_ILP; m++) {
        epm_placement *h;
        double hv;
        assert_int_equal(epm_plan_heuristic((epm_method)m, t, c, o, &h), EPM_OK);
        assert_int_equal(epm_plan_objective(t, h, o, &hv), EPM_OK);
        best = hv < best ? hv : best;
        epm_placement_destroy(h);
    }
    return best;
}

static void test_ilp_fallback_without_time(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(3, 4, 2, 60, 2);
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_plan_opts o;
    opts_for(&o, EPM_MODE_FOLLOW, 2);
    o.time_limit_s = 0;
    epm_placement *p = plan_ilp(t, &c, &o);
    const epm_placement_info *in = epm_placement_get_info(p);
    assert_int_equal(in->quality, EPM_QUALITY_FALLBACK);
    assert_non_null(strstr(in->note, "fallback"));
    assert_non_null(strstr(in->note, "time limit"));
    assert_true(close_to(in->objective, best_heuristic_objective(t, &c, &o)));
    assert_true(in->bound <= in->objective);
    assert_string_equal(in->method, "ilp");
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_ilp_rejects_bad_options(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(2, 4, 2, 20, 2);
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_plan_opts o;
    opts_for(&o, EPM_MODE_HOME, 2);
    o.mip_gap = -1;
    epm_placement *p = NULL;
    assert_int_equal(epm_plan_ilp(t, &c, &o, &p), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "mip_gap"));
    assert_null(p);
    epm_trace_destroy(t);
}

/* GLPK failing inside its own code (misuse injected by the test hook) must
 * come back as EPM_ERR_SOLVER from the boundary and as a fallback from the
 * planner, and GLPK must work again afterwards. */
static void test_ilp_glpk_failure_is_contained(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(3, 4, 2, 60, 4);
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_plan_opts o;
    opts_for(&o, EPM_MODE_HOME, 2);

    epm_ilp_ctx x;
    assert_int_equal(epm_ilp_ctx_init(&x, t, &c, &o, 2), EPM_OK);
    epm_mip m;
    int col_x[64];
    assert_int_equal(epm_ilp_build(&x, 100000, &m, col_x), EPM_OK);
    double *sol = test_calloc((size_t)m.ncols, sizeof *sol);
    epm_mip_result r = {.x = sol};
    epm_ilp_test_glpk_fault = 1;
    assert_int_equal(epm_mip_solve(&m, NULL, 10, 1e-6, NULL, NULL, &r), EPM_ERR_SOLVER);
    assert_non_null(strstr(epm_last_error(), "GLPK"));
    epm_placement *p = plan_ilp(t, &c, &o);
    epm_ilp_test_glpk_fault = 0;
    /* the search may still improve on the heuristics; the note says why GLPK did not */
    assert_int_not_equal(epm_placement_get_info(p)->quality, EPM_QUALITY_OPTIMAL);
    assert_non_null(strstr(epm_placement_get_info(p)->note, "GLPK failed"));
    epm_placement_destroy(p);

    r.x = sol;
    assert_int_equal(epm_mip_solve(&m, NULL, 10, 1e-6, NULL, NULL, &r), EPM_OK);
    assert_true(r.found && r.optimal);
    test_free(sol);
    epm_mip_free(&m);
    epm_ilp_ctx_free(&x);
    epm_trace_destroy(t);
}

static void test_ilp_deterministic(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(4, 32, 4, 400, 6);
    epm_cluster c;
    epm_cluster_init(&c, 2, 4);
    epm_plan_opts o;
    opts_for(&o, EPM_MODE_FOLLOW, 0);
    o.mip_gap = 1e-4;
    epm_placement *a = plan_ilp(t, &c, &o), *b = plan_ilp(t, &c, &o);
    for (int l = 0; l < 4; l++)
        for (int e = 0; e < 16; e++) {
            const int *ra, *rb;
            int na = epm_placement_replicas(a, l, e, &ra), nb = epm_placement_replicas(b, l, e, &rb);
            assert_int_equal(na, nb);
            for (int i = 0; i < na; i++)
                assert_int_equal(ra[i], rb[i]);
        }
    assert_true(epm_placement_get_info(a)->objective == epm_placement_get_info(b)->objective);
    assert_true(epm_placement_get_info(a)->bound == epm_placement_get_info(b)->bound);
    epm_placement_destroy(a);
    epm_placement_destroy(b);
    epm_trace_destroy(t);
}

/* Mixtral-8x7B shape: 32 layers, 8 experts, top-2, 8 ranks in one node. */
static void test_ilp_mixtral_shape_optimal(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(32, 8, 2, 1024, 42);
    epm_cluster c;
    epm_cluster_init(&c, 1, 8);
    for (int mode = 0; mode < 2; mode++) {
        epm_plan_opts o;
        opts_for(&o, (epm_mode)mode, 0);
        o.mip_gap = 1e-4;
        o.time_limit_s = 60;
        epm_placement *p = plan_ilp(t, &c, &o);
        const epm_placement_info *in = epm_placement_get_info(p);
        if (in->quality != EPM_QUALITY_OPTIMAL)
            fail_msg("mode %d: quality %s, gap %g, note %s", mode, epm_plan_quality_name(in->quality), in->gap,
                     in->note);
        assert_true(in->gap <= 1e-4);
        assert_true(in->objective <= best_heuristic_objective(t, &c, &o));
        epm_placement_destroy(p);
    }
    epm_trace_destroy(t);
}

/* The bench's weights: both terms in modelled microseconds, as plan eval. */
static void eval_weights(epm_plan_opts *o, epm_eval_opts *eo, const epm_cluster *c)
{
    epm_eval_opts_init(eo);
    eo->mode = o->mode;
    eo->hidden_bytes = (int64_t)o->hidden * 2;
    eo->kv_row_bytes = (int64_t)o->kv_dim * 2;
    o->balance_weight = eo->flops_per_assignment / (c->gpu_tflops * 1e12) * 1e6;
    o->traffic_weight = (double)eo->hidden_bytes / (c->intra_gbps * 1e9) * 1e6;
}

/* With one fold the search's model is epm_eval's per-layer modelled time in
 * follow mode (busiest rank's compute, all-to-all and K/V phases), and in
 * home mode the same with each token's home averaged over all ranks
 * (computed here the long way: every home, every transfer). A trace with
 * passes is folded by them, and the model is epm_eval's pass by pass
 * (follow mode, where homes do not enter), or that of the tokens of the
 * passes it samples. */
static void test_ilp_search_model_is_eval_time(void **state)
{
    (void)state;
    static const epm_method heur[] = {EPM_METHOD_CONTIGUOUS, EPM_METHOD_ROUND_ROBIN, EPM_METHOD_GREEDY,
                                      EPM_METHOD_EPLB};
    epm_trace *t = tu_synth_trace(4, 16, 3, 300, 5);
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    const int L = 4, E = 16, K = 3, R = 4;
    for (int mode = 0; mode < 4; mode++)
        for (size_t m = 0; m < sizeof heur / sizeof *heur; m++) {
            if (mode == 2 && m == 0) { /* 7 passes of 43 tokens, ids out of order */
                int32_t pass[300];
                for (int i = 0; i < 300; i++)
                    pass[i] = (i / 43) * 5 % 7;
                assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
            }
            /* 3 of the 7 passes sampled: the model is epm_eval's of their tokens */
            epm_plan_folds_test_cap = mode == 3 ? 3 : 0;
            epm_trace *seen = NULL;
            if (mode == 3)
                seen = tu_trace_sampled(t, 3);
            epm_plan_opts o;
            opts_for(&o, mode ? EPM_MODE_FOLLOW : EPM_MODE_HOME, 4);
            epm_eval_opts eo;
            eval_weights(&o, &eo, &c);
            epm_placement *p;
            assert_int_equal(epm_plan_heuristic(heur[m], t, &c, &o, &p), EPM_OK);
            epm_ilp_ctx x;
            assert_int_equal(epm_ilp_ctx_init(&x, t, &c, &o, 4), EPM_OK);
            int rank_of[64];
            epm_ilp_from_placement(&x, p, rank_of);
            double model;
            assert_int_equal(epm_ilp_search_model(&x, rank_of, 1, &model), EPM_OK);
            epm_eval_result *r;
            assert_int_equal(epm_eval(seen ? seen : t, p, &eo, &r), EPM_OK);
            double want = 0.0;
            if (mode) {
                for (int l = 0; l < L; l++)
                    want += (r->layer[l].t_compute + r->layer[l].t_comm) * 1e6;
            } else {
                double unit = o.traffic_weight; /* one intra-node hidden vector */
                for (int l = 0; l < L; l++) {
                    double units[4] = {0, 0, 0, 0};
                    const int32_t *ids = epm_trace_ids_const(t, l);
                    for (int64_t tok = 0; tok < epm_trace_tokens(t); tok++)
                        for (int h = 0; h < R; h++) {
                            int seen[4] = {0, 0, 0, 0};
                            for (int j = 0; j < K; j++) {
                                int d = rank_of[l * E + ids[tok * K + j]];
                                if (seen[d]++ || d == h)
                                    continue;
                                double cost = epm_cluster_link_cost(&c, epm_cluster_link(&c, h, d));
                                units[h] += cost / R; /* dispatch sent, combine received */
                                units[d] += cost / R;
                            }
                        }
                    double mx = 0.0;
                    for (int q = 0; q < R; q++)
                        mx = units[q] > mx ? units[q] : mx;
                    want += r->layer[l].t_compute * 1e6 + unit * mx;
                }
            }
            if (!close_to(model, want))
                fail_msg("mode %d, %s: model %.12g, eval %.12g", mode, epm_method_name(heur[m]), model, want);
            epm_eval_result_destroy(r);
            epm_ilp_ctx_free(&x);
            epm_placement_destroy(p);
            epm_trace_destroy(seen);
        }
    epm_plan_folds_test_cap = 0;
    epm_trace_destroy(t);
}

/* The search with folds lowers its model and never raises
 * epm_plan_objective above the start's, in both modes, with token folds, a
 * trace's passes, a sample of them and two split in parts; the terms it
 * keeps per (layer, fold), recomputed only where a move's tokens are,
 * equal a fresh setup (the test hook, every 7th move). */
static void test_ilp_search_keeps_objective(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(4, 32, 4, 1024, 9);
    epm_cluster c;
    epm_cluster_init(&c, 2, 4);
    epm_ilp_search_test_check = 7; /* (every 7th move: a fresh setup each time) */
    for (int run = 0; run < 8; run++) {
        const int mode = run % 2, kind = run / 2;
        if (kind == 1 || kind == 3) { /* 41 passes, the last one short, then 5 of them sampled; 2 split in 4 */
            int32_t pass[1024];
            for (int i = 0; i < 1024; i++)
                pass[i] = kind == 1 ? i / 25 : i / 512;
            assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
        }
        epm_plan_folds_test_cap = kind == 2 ? 5 : 0;
        epm_plan_opts o;
        opts_for(&o, (epm_mode)mode, 0);
        epm_placement *p;
        assert_int_equal(epm_plan_heuristic(EPM_METHOD_GREEDY, t, &c, &o, &p), EPM_OK);
        epm_ilp_ctx x;
        assert_int_equal(epm_ilp_ctx_init(&x, t, &c, &o, 4), EPM_OK);
        int rank_of[128], start[128];
        epm_ilp_from_placement(&x, p, rank_of);
        memcpy(start, rank_of, sizeof start);
        double obj0 = epm_ilp_total(&x, rank_of), model0, model1, obj;
        assert_int_equal(epm_ilp_search_model(&x, rank_of, 8, &model0), EPM_OK);
        if (epm_ilp_search(&x, rank_of, (int64_t)40 * 4 * 32 * 4, epm_now() + 600, 8, NULL, NULL, &obj) != EPM_OK)
            fail_msg("mode %d, folds %d: %s", mode, kind, epm_last_error());
        assert_int_equal(epm_ilp_search_model(&x, rank_of, 8, &model1), EPM_OK);
        double obj1 = epm_ilp_total(&x, rank_of);
        print_message("mode %d, folds %d: objective %.9g -> %.9g, model %.9g -> %.9g\n", mode, kind, obj0, obj1,
                      model0, model1);
        assert_true(close_to(obj, obj1));
        assert_true(obj1 <= obj0 + 1e-12 * fabs(obj0));
        assert_true(model1 < model0 * (1 - 1e-3));
        for (int l = 0; l < 4; l++) { /* still a placement within capacity */
            int used[8] = {0};
            for (int e = 0; e < 32; e++)
                assert_true(++used[rank_of[l * 32 + e]] <= 4);
        }
        assert_memory_not_equal(start, rank_of, sizeof start);
        epm_ilp_ctx_free(&x);
        epm_placement_destroy(p);
    }
    epm_ilp_search_test_check = 0;
    epm_plan_folds_test_cap = 0;
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ilp_optimum_equals_brute_force),
        cmocka_unit_test(test_ilp_decompose_exact),
        cmocka_unit_test(test_ilp_model_equals_objective),
        cmocka_unit_test(test_ilp_replicas_between_bound_and_heuristics),
        cmocka_unit_test(test_ilp_never_worse_than_heuristics),
        cmocka_unit_test(test_ilp_fallback_without_time),
        cmocka_unit_test(test_ilp_rejects_bad_options),
        cmocka_unit_test(test_ilp_glpk_failure_is_contained),
        cmocka_unit_test(test_ilp_deterministic),
        cmocka_unit_test(test_ilp_mixtral_shape_optimal),
        cmocka_unit_test(test_ilp_search_model_is_eval_time),
        cmocka_unit_test(test_ilp_search_keeps_objective),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
