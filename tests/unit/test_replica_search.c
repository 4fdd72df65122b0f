/* The search over placements with copies (placement/replica_search.c): the
 * objective it reports is epm_plan_objective's of what it returns, exactly,
 * after thousands of kept and undone moves, in both modes, over one and
 * several nodes, with skipped tokens and dynamic k; it never raises the
 * objective, keeps every expert and the slot limit, is deterministic, and
 * finds what eplb's balance-only packing leaves: tokens' consecutive experts
 * together in follow mode. The ILP with spare slots returns it. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "planner.h"
#include "placement_internal.h"

static epm_cluster cluster_of(int nodes, int gpn)
{
    epm_cluster c;
    epm_cluster_init(&c, nodes, gpn);
    return c;
}

static epm_placement *eplb(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o)
{
    epm_plan_opts h = *o;
    h.method = EPM_METHOD_EPLB;
    epm_placement *p = NULL;
    assert_int_equal(epm_plan(t, c, &h, &p), EPM_OK);
    return p;
}

static void same_placement(const epm_placement *a, const epm_placement *b)
{
    for (int l = 0; l < epm_placement_layers(a); l++)
        for (int e = 0; e < epm_placement_experts(a); e++) {
            const int *ra, *rb;
            int na = epm_placement_replicas(a, l, e, &ra), nb = epm_placement_replicas(b, l, e, &rb);
            assert_int_equal(na, nb);
            assert_memory_equal(ra, rb, (size_t)na * sizeof *ra);
        }
}

static void check_valid(const epm_placement *p, int slots)
{
    assert_int_equal(epm_placement_validate(p, slots), EPM_OK);
}

/* Skips (row[0] = -1) on every 7th token at odd layers and a dynamic k
 * (the last choice dropped) on every 5th. */
static void roughen(epm_trace *t)
{
    const int K = epm_trace_k(t);
    for (int l = 0; l < epm_trace_layers(t); l++) {
        int32_t *ids = epm_trace_ids(t, l);
        for (int64_t i = 0; i < epm_trace_tokens(t); i++) {
            int32_t *row = ids + (size_t)i * (size_t)K;
            if (l % 2 == 1 && i % 7 == 3)
                for (int j = 0; j < K; j++)
                    row[j] = -1;
            else if (K > 1 && i % 5 == 1)
                row[K - 1] = -1;
        }
    }
}

typedef struct {
    int nodes, gpn, layers, experts, k, slots;
    int rough;
} shape;

static void test_exact_and_never_worse(void **state)
{
    (void)state;
    static const shape shapes[] = {
        {1, 3, 4, 8, 2, 4, 0}, /* odd ranks, one node */
        {2, 2, 5, 8, 2, 3, 1}, /* two nodes, skips and dynamic k */
        {3, 1, 3, 6, 3, 3, 1}, /* three one-rank nodes */
        {2, 4, 4, 16, 4, 3, 0}, {1, 2, 3, 4, 1, 3, 0}, /* k = 1, free slots */
    };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const shape *sh = &shapes[si];
        for (int mode = 0; mode < 2; mode++) {
            epm_trace *t = tu_synth_trace(sh->layers, sh->experts, sh->k, 600, 11 + si);
            if (sh->rough)
                roughen(t);
            epm_cluster c = cluster_of(sh->nodes, sh->gpn);
            epm_plan_opts o;
            tu_plan_opts(&o, EPM_METHOD_ILP, mode ? EPM_MODE_FOLLOW : EPM_MODE_HOME, sh->slots, 5, 1e-4);
            epm_placement *p = eplb(t, &c, &o);
            double start, v, exact;
            int64_t kept;
            assert_int_equal(epm_plan_objective(t, p, &o, &start), EPM_OK);
            assert_int_equal(epm_plan_replica_search(t, &o, sh->slots, 1 + 2 * (int)(si % 2), 8000, 1e30, p, &v, &kept), EPM_OK);
            assert_int_equal(epm_plan_objective(t, p, &o, &exact), EPM_OK);
            if (v != exact)
                fail_msg("shape %zu mode %d: search says %.17g, epm_plan_objective %.17g", si, mode, v, exact);
            assert_true(v <= start);
            assert_true(kept > 0);
            check_valid(p, sh->slots);
            epm_placement_destroy(p);
            epm_trace_destroy(t);
        }
    }
}

/* Every sum the search keeps equals a fresh count after each move, kept or
 * undone (the test hook): both modes, one and several nodes, skips, dynamic
 * k, a duplicated expert in a row, a rank with a free slot, 1 and 3 folds,
 * and a trace's passes as folds: all of them, split, or a sample. */
static void test_every_move_exact(void **state)
{
    (void)state;
    static const shape shapes[] = {
        {2, 2, 4, 6, 3, 3, 1}, {1, 3, 3, 5, 2, 3, 0}, {3, 2, 3, 8, 2, 2, 1},
    };
    epm_replica_search_test_check = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const shape *sh = &shapes[si];
        for (int mode = 0; mode < 2; mode++) {
            epm_trace *t = tu_synth_trace(sh->layers, sh->experts, sh->k, 150, 31 + si);
            if (sh->rough)
                roughen(t);
            int32_t *row = epm_trace_ids(t, 0) + 2 * sh->k; /* (token 2 takes its first expert twice) */
            if (row[0] >= 0)
                row[1] = row[0];
            /* folded by passes: shape 0 two of 75 tokens (split in two for 3 folds), shape 1 eight of
             * 20, the last one short, and shape 2 a sample of 3 of those */
            int32_t pass[150];
            for (int i = 0; i < 150; i++)
                pass[i] = si == 0 ? i / 75 : i / 20;
            assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
            epm_plan_folds_test_cap = si == 2 ? 3 : 0;
            epm_cluster c = cluster_of(sh->nodes, sh->gpn);
            epm_plan_opts o;
            tu_plan_opts(&o, EPM_METHOD_ILP, mode ? EPM_MODE_FOLLOW : EPM_MODE_HOME, sh->slots, 5, 1e-4);
            epm_placement *p = eplb(t, &c, &o);
            /* a free slot: drop one copy of an expert that has several */
            for (int e = 0, done = 0; e < sh->experts && !done; e++) {
                const int *rr;
                if (epm_placement_replicas(p, 1, e, &rr) > 1) {
                    epm_placement_remove(p, 1, e, rr[0]);
                    done = 1;
                }
            }
            double v;
            int64_t kept;
            epm_status st = epm_plan_replica_search(t, &o, sh->slots, 1 + 2 * mode, 600, 1e30, p, &v, &kept);
            if (st != EPM_OK)
                fail_msg("shape %zu mode %d: %s", si, mode, epm_last_error());
            assert_true(kept > 0);
            epm_placement_destroy(p);
            epm_trace_destroy(t);
        }
    }
    epm_replica_search_test_check = 0;
    epm_plan_folds_test_cap = 0;
}

/* The deadline during the setup: a clear timeout, the placement as it was. */
static void test_no_time(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(3, 8, 2, 200, 2);
    epm_cluster c = cluster_of(1, 4);
    epm_plan_opts o;
    tu_plan_opts(&o, EPM_METHOD_ILP, EPM_MODE_FOLLOW, 3, 5, 1e-4);
    epm_placement *p = eplb(t, &c, &o), *q = eplb(t, &c, &o);
    double v;
    int64_t kept;
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 1, 1000, 0.0, p, &v, &kept), EPM_ERR_TIMEOUT);
    assert_non_null(strstr(epm_last_error(), "replica search: no time left"));
    assert_int_equal(kept, 0);
    same_placement(p, q);
    epm_placement_destroy(p);
    epm_placement_destroy(q);
    epm_trace_destroy(t);
}

static void test_deterministic(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(4, 8, 2, 500, 3);
    epm_cluster c = cluster_of(2, 2);
    epm_plan_opts o;
    tu_plan_opts(&o, EPM_METHOD_ILP, EPM_MODE_FOLLOW, 3, 5, 1e-4);
    epm_placement *a = eplb(t, &c, &o), *b = eplb(t, &c, &o);
    double va, vb;
    int64_t ka, kb;
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 4, 5000, 1e30, a, &va, &ka), EPM_OK);
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 4, 5000, 1e30, b, &vb, &kb), EPM_OK);
    assert_true(va == vb);
    assert_int_equal(ka, kb);
    same_placement(a, b);
    epm_placement_destroy(a);
    epm_placement_destroy(b);
    epm_trace_destroy(t);
}

/* A trace where a token's expert at each layer is a fixed permutation of its
 * expert at the one before (affinity 1): in follow mode the best placement
 * puts each chain's copies on the same ranks layer after layer, which eplb's
 * packing, blind to the order of layers, does not. */
static void test_finds_affinity(void **state)
{
    (void)state;
    const int L = 4, E = 8, T = 800;
    epm_trace *t;
    assert_int_equal(epm_trace_create(L, T, 1, E, &t), EPM_OK);
    uint64_t rng = 7;
    for (int64_t i = 0; i < T; i++) {
        int e = (int)(epm_splitmix64(&rng) % (uint64_t)E);
        for (int l = 0; l < L; l++) {
            if (l > 0) /* a permutation of the last expert, or one at random */
                e = epm_splitmix64(&rng) % 4 ? (e * 3 + 5) % E : (int)(epm_splitmix64(&rng) % (uint64_t)E);
            epm_trace_ids(t, l)[i] = e;
        }
    }
    epm_cluster c = cluster_of(1, 4);
    epm_plan_opts o;
    tu_plan_opts(&o, EPM_METHOD_ILP, EPM_MODE_FOLLOW, 3, 5, 1e-4);
    o.balance_weight = 0.01; /* (traffic first: what eplb cannot see) */
    epm_placement *p = eplb(t, &c, &o);
    double start, v;
    int64_t kept;
    assert_int_equal(epm_plan_objective(t, p, &o, &start), EPM_OK);
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 1, 40000, 1e30, p, &v, &kept), EPM_OK);
    if (!(v < 0.9 * start)) /* (the K/V all-gather, the same for all, is most of what is left) */
        fail_msg("eplb %g, searched %g", start, v);
    /* a quarter of the tokens change chains, so some traffic stays: the layers' dispatch and combine
     * and the return home at most 0.8 of eplb's, and the modelled time below 0.95 of its */
    epm_eval_opts eo;
    epm_eval_opts_init(&eo);
    eo.mode = EPM_MODE_FOLLOW;
    epm_eval_result *r0, *r1;
    epm_placement *p0 = eplb(t, &c, &o);
    assert_int_equal(epm_eval(t, p0, &eo, &r0), EPM_OK);
    assert_int_equal(epm_eval(t, p, &eo, &r1), EPM_OK);
    int64_t b0 = r0->gather_bytes[EPM_LINK_INTRA], b1 = r1->gather_bytes[EPM_LINK_INTRA];
    for (int l = 0; l < L; l++) {
        b0 += r0->layer[l].bytes[EPM_LINK_INTRA];
        b1 += r1->layer[l].bytes[EPM_LINK_INTRA];
    }
    assert_true(b0 > 0);
    if (!(b1 * 10 <= b0 * 8) || !(r1->t_total < 0.95 * r0->t_total))
        fail_msg("intra bytes: eplb %lld, searched %lld; modelled time %g against %g", (long long)b0, (long long)b1,
                 r0->t_total, r1->t_total);
    epm_eval_result_destroy(r0);
    epm_eval_result_destroy(r1);
    epm_placement_destroy(p0);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

/* The ILP with spare slots returns the search's result: never above eplb's
 * objective, below it on an affinity trace, and named ilp. */
static void test_ilp_with_spares(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        epm_trace *t = tu_synth_trace(4, 8, 2, 800, 5);
        epm_cluster c = cluster_of(2, 2);
        epm_plan_opts o;
        tu_plan_opts(&o, EPM_METHOD_ILP, mode ? EPM_MODE_FOLLOW : EPM_MODE_HOME, 3, 2, 1e-4);
        epm_placement *e = eplb(t, &c, &o), *p = NULL;
        assert_int_equal(epm_plan(t, &c, &o, &p), EPM_OK);
        double ve, vp;
        assert_int_equal(epm_plan_objective(t, e, &o, &ve), EPM_OK);
        assert_int_equal(epm_plan_objective(t, p, &o, &vp), EPM_OK);
        const epm_placement_info *in = epm_placement_get_info(p);
        if (!(vp < ve))
            fail_msg("mode %d: eplb %.17g, ilp %.17g (%s)", mode, ve, vp, in->note);
        assert_string_equal(in->method, "ilp");
        assert_int_not_equal(in->quality, EPM_QUALITY_FALLBACK);
        assert_true(fabs(in->objective - vp) <= 1e-9 * fabs(vp));
        assert_non_null(strstr(in->note, "replica search"));
        check_valid(p, 3);
        for (int l = 0; l < 4; l++) /* every slot a copy, as SGLang and vLLM deploy them */
            for (int r = 0; r < 4; r++)
                assert_int_equal(epm_placement_rank_count(p, l, r), 3);
        epm_placement_destroy(e);
        epm_placement_destroy(p);
        epm_trace_destroy(t);
    }
}

/* The ILP with redundant experts on more ranks than experts (the README
 * tour: 8 experts, 8 ranks, 2 slots), where greedy replicas leave slots
 * empty: every slot filled, so that the EPLB map exports. */
static void test_ilp_fills_every_slot(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(3, 8, 2, 600, 9);
    epm_cluster c = cluster_of(2, 4);
    epm_plan_opts o;
    tu_plan_opts(&o, EPM_METHOD_ILP, EPM_MODE_HOME, 2, 2, 1e-4);
    epm_placement *p = NULL;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_OK);
    for (int l = 0; l < 3; l++)
        for (int r = 0; r < 8; r++)
            assert_int_equal(epm_placement_rank_count(p, l, r), 2);
    assert_int_equal(epm_placement_export_eplb(p, tu_path("full.json")), EPM_OK);
    /* and the completion itself: a rank's free slot takes the expert with the most load per copy */
    epm_placement *q = NULL;
    assert_int_equal(epm_placement_create(1, 3, 1, &c, &q), EPM_OK);
    for (int e = 0; e < 3; e++)
        assert_int_equal(epm_placement_add(q, 0, e, e), EPM_OK);
    const int64_t load[3] = {10, 90, 30};
    int added = 0;
    assert_int_equal(epm_plan_complete_slots(q, load, 1, &added), EPM_OK);
    assert_int_equal(added, 5); /* ranks 3-7 */
    assert_true(epm_placement_has(q, 0, 1, 3)); /* 90 / 2 */
    assert_true(epm_placement_has(q, 0, 1, 4)); /* 90 / 3 = 30 against 30 / 2 */
    epm_placement_destroy(q);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_refusals(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(3, 8, 2, 100, 1);
    epm_cluster c = cluster_of(1, 4);
    epm_plan_opts o;
    tu_plan_opts(&o, EPM_METHOD_ILP, EPM_MODE_HOME, 3, 5, 1e-4);
    epm_placement *p = eplb(t, &c, &o);
    double v;
    int64_t kept;
    assert_int_equal(epm_plan_replica_search(t, &o, 0, 1, 10, 1e30, p, &v, &kept), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 0, 10, 1e30, p, &v, &kept), EPM_ERR_INVALID_ARG);
    /* a rank holding more than the slots given */
    assert_int_equal(epm_plan_replica_search(t, &o, 1, 1, 10, 1e30, p, &v, &kept), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "experts, slots are 1"));
    epm_trace *t2 = tu_synth_trace(2, 8, 2, 100, 1);
    assert_int_equal(epm_plan_replica_search(t2, &o, 3, 1, 10, 1e30, p, &v, &kept), EPM_ERR_MISMATCH);
    epm_trace_destroy(t2);
    /* an expert on no rank */
    const int *rr;
    while (epm_placement_replicas(p, 2, 5, &rr) > 0)
        epm_placement_remove(p, 2, 5, rr[0]);
    assert_int_equal(epm_plan_replica_search(t, &o, 3, 1, 10, 1e30, p, &v, &kept), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "layer 2 expert 5 is on no rank"));
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

/* Folds: token i mod F without passes (or none but -1); a trace's passes,
 * by id, where it has pass_ids (a token of pass -1 out of them), a sample of
 * max_folds passes evenly spread past max_folds (the others' tokens in fold
 * -1), each pass split (its tokens in turn) where there are fewer passes
 * than folds asked. */
static void test_folds(void **state)
{
    (void)state;
    epm_trace *t = tu_synth_trace(2, 4, 1, 7, 1);
    int32_t *f = NULL;
    int n = 0;
    assert_int_equal(epm_plan_folds(t, 3, 100, &f, &n), EPM_OK);
    assert_int_equal(n, 3);
    for (int i = 0; i < 7; i++)
        assert_int_equal(f[i], i % 3);
    epm_free(f);
    const int32_t pass[7] = {5, 5, -1, 9, 2, 2, 9};
    assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
    assert_int_equal(epm_plan_folds(t, 2, 100, &f, &n), EPM_OK);
    assert_int_equal(n, 3);
    const int32_t want[7] = {1, 1, -1, 2, 0, 0, 2};
    assert_memory_equal(f, want, sizeof want);
    epm_free(f);
    assert_int_equal(epm_plan_folds(t, 1, 2, &f, &n), EPM_OK); /* passes 5 and 9 sampled */
    assert_int_equal(n, 2);
    const int32_t want2[7] = {0, 0, -1, 1, -1, -1, 1};
    assert_memory_equal(f, want2, sizeof want2);
    epm_free(f);
    assert_int_equal(epm_plan_folds(t, 5, 100, &f, &n), EPM_OK); /* 2 folds a pass */
    assert_int_equal(n, 6);
    const int32_t want3[7] = {2, 3, -1, 4, 0, 1, 5};
    assert_memory_equal(f, want3, sizeof want3);
    epm_free(f);
    assert_int_equal(epm_plan_folds(t, 8, 7, &f, &n), EPM_OK); /* at most 7: still 2 a pass */
    assert_int_equal(n, 6);
    epm_free(f);
    const int32_t none[7] = {-1, -1, -1, -1, -1, -1, -1};
    assert_int_equal(epm_trace_set_pass_ids(t, none), EPM_OK);
    assert_int_equal(epm_plan_folds(t, 3, 100, &f, &n), EPM_OK);
    assert_int_equal(n, 3);
    for (int i = 0; i < 7; i++)
        assert_int_equal(f[i], i % 3);
    epm_free(f);
    assert_int_equal(epm_plan_folds(t, 0, 2, &f, &n), EPM_ERR_INVALID_ARG);
    assert_null(f);
    epm_trace_destroy(t);
}

/* The folds' invariants over random traces: every fold in [-1, nfolds); a
 * token of pass -1 in none; without passes, or with none but -1, i mod
 * folds; each pass's tokens in its own folds (none shared with another
 * pass); past max_folds, exactly max_folds passes in the model, whole; with
 * fewer passes than folds asked, every pass split into the same number of
 * parts (at most max_folds in all), each part nonempty where the pass has
 * tokens enough. */
static void test_folds_random(void **state)
{
    (void)state;
    uint64_t rng = 99;
    for (int round = 0; round < 300; round++) {
        const int64_t T = 1 + (int64_t)(epm_splitmix64(&rng) % 200);
        const int folds = 1 + (int)(epm_splitmix64(&rng) % 12), maxf = 1 + (int)(epm_splitmix64(&rng) % 40);
        const int span = 1 + (int)(epm_splitmix64(&rng) % 60); /* pass ids in [-1, span) */
        epm_trace *t;
        assert_int_equal(epm_trace_create(1, T, 1, 2, &t), EPM_OK);
        int32_t *pass = malloc((size_t)T * sizeof *pass);
        assert_non_null(pass);
        for (int64_t i = 0; i < T; i++)
            pass[i] = (int32_t)(epm_splitmix64(&rng) % (uint64_t)(span + 1)) - 1;
        if (round % 5 == 0) /* (no pass_ids at all) */
            assert_int_equal(epm_trace_set_pass_ids(t, NULL), EPM_OK);
        else
            assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
        int32_t *f;
        int n;
        assert_int_equal(epm_plan_folds(t, folds, maxf, &f, &n), EPM_OK);
        int64_t d;
        assert_int_equal(epm_trace_passes(t, &d), EPM_OK);
        if (d == 0) {
            assert_int_equal(n, folds);
            for (int64_t i = 0; i < T; i++)
                assert_int_equal(f[i], (int32_t)(i % folds));
        } else {
            assert_true(n >= 1 && n <= (maxf > folds ? maxf : folds));
            int32_t owner[64];
            for (int q = 0; q < n; q++)
                owner[q] = -2;
            int in_model[61] = {0};
            for (int64_t i = 0; i < T; i++) {
                assert_true(f[i] >= -1 && f[i] < n);
                if (pass[i] < 0) {
                    assert_int_equal(f[i], -1);
                    continue;
                }
                if (f[i] < 0)
                    continue;
                in_model[pass[i]] = 1;
                if (owner[f[i]] == -2)
                    owner[f[i]] = pass[i];
                assert_int_equal(owner[f[i]], pass[i]); /* a fold holds one pass's tokens */
            }
            int64_t sampled = 0;
            for (int p = 0; p < span; p++)
                sampled += in_model[p];
            for (int64_t i = 0; i < T; i++) /* a pass is in the model whole, or not at all */
                if (pass[i] >= 0)
                    assert_int_equal(f[i] >= 0, in_model[pass[i]]);
            if (d > maxf) {
                assert_int_equal(sampled, maxf);
                assert_int_equal(n, maxf);
            } else {
                /* m parts a pass: enough for the folds asked, fewer where max_folds bounds them */
                int64_t m = d >= folds ? 1 : (folds + d - 1) / d;
                if (m * d > maxf)
                    m = maxf / d > 1 ? maxf / d : 1;
                assert_int_equal(sampled, d);
                assert_int_equal(n, d * m);
                int64_t used = 0, want = 0, count[61] = {0};
                for (int q = 0; q < n; q++)
                    used += owner[q] != -2;
                for (int64_t i = 0; i < T; i++)
                    count[pass[i] + 1]++;
                for (int p = 0; p < span; p++)
                    want += count[p + 1] < m ? count[p + 1] : m;
                assert_int_equal(used, want); /* each part of a pass nonempty where it has m tokens */
            }
        }
        epm_free(f);
        free(pass);
        epm_trace_destroy(t);
    }
}

static int close_to(double a, double b) { return fabs(a - b) <= 1e-9 * (fabs(a) + fabs(b) + 1.0); }

/* With one fold, or a trace's passes, what the search minimises is
 * epm_eval's modelled time (both terms in microseconds, as plan eval weighs
 * them): per layer the busiest rank's compute, dispatch/combine and (follow)
 * K/V phases, and follow mode's return home, pass by pass where the trace
 * has passes, and that of the sampled passes' tokens where it samples; over
 * two nodes, with copies, skips and dynamic k. */
static void test_model_is_eval_time(void **state)
{
    (void)state;
    epm_cluster c = cluster_of(2, 2);
    for (int passes = 0; passes < 3; passes++)
        for (int mode = 0; mode < 2; mode++) {
            epm_trace *t = tu_synth_trace(4, 8, 3, 300, 11);
            roughen(t);
            if (passes) { /* 9 passes of 37 tokens, numbered out of order; then 4 of them sampled */
                int32_t pass[300];
                for (int i = 0; i < 300; i++)
                    pass[i] = 100 - 7 * (i / 37);
                assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
            }
            epm_plan_folds_test_cap = passes == 2 ? 4 : 0;
            epm_trace *sampled = NULL; /* what the model sees: the sampled passes' tokens */
            if (passes == 2)
                sampled = tu_trace_sampled(t, 4);
            epm_plan_opts o;
            tu_plan_opts(&o, EPM_METHOD_ILP, mode ? EPM_MODE_FOLLOW : EPM_MODE_HOME, 3, 5, 1e-4);
            epm_eval_opts eo;
            epm_eval_opts_init(&eo);
            eo.mode = o.mode;
            eo.hidden_bytes = (int64_t)o.hidden * 2;
            eo.kv_row_bytes = (int64_t)o.kv_dim * 2;
            o.balance_weight = eo.flops_per_assignment / (c.gpu_tflops * 1e12) * 1e6;
            o.traffic_weight = (double)eo.hidden_bytes / (c.intra_gbps * 1e9) * 1e6;
            epm_placement *p = eplb(t, &c, &o);
            double model;
            assert_int_equal(epm_plan_replica_model(t, &o, 3, 1, p, &model), EPM_OK);
            epm_eval_result *r;
            assert_int_equal(epm_eval(sampled ? sampled : t, p, &eo, &r), EPM_OK);
            if (!close_to(model, r->t_total * 1e6))
                fail_msg("passes %d, mode %d: model %.12g, eval %.12g", passes, mode, model, r->t_total * 1e6);
            epm_eval_result_destroy(r);
            epm_placement_destroy(p);
            epm_trace_destroy(sampled);
            epm_trace_destroy(t);
        }
    epm_plan_folds_test_cap = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_and_never_worse), cmocka_unit_test(test_every_move_exact),
        cmocka_unit_test(test_no_time),               cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_finds_affinity),        cmocka_unit_test(test_ilp_with_spares),
        cmocka_unit_test(test_ilp_fills_every_slot), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_folds),                 cmocka_unit_test(test_folds_random),
        cmocka_unit_test(test_model_is_eval_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
