/* Online rebalancing's decisions (placement/rebalance.c) and their replay in
 * the cost model (epm_eval_opts.eplb_interval): the pass arithmetic worked
 * out by hand; a rebalance keeps the layers no token went through and
 * moves no more than the plain eplb placement would; and plan eval over a
 * trace's passes equals, number for number, a literal replay written here
 * pass by pass (every pass number, not only those that ran a token) that
 * evaluates each placement's tokens alone and sums. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "epmoe/eval.h"
#include "epmoe/plan.h"

/* every 4 passes over the last 1, the last 4 (window 0) and the last 3; a
 * rebalance comes before passes 4, 8, ..., never before the first; an
 * interval of 0 is off */
static void test_eplb_window(void **state)
{
    (void)state;
    static const struct {
        int interval, window;
        const char *counts; /* passes 0 .. 11 */
    } cases[] = {{4, 1, "000100010001"}, {4, 0, "111111111111"}, {4, 3, "011101110111"}, {1, 1, "111111111111"},
                 {0, 0, "000000000000"}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
        for (int pass = 0; pass < 12; pass++) {
            assert_int_equal(epm_eplb_counts(cases[c].interval, cases[c].window, pass), cases[c].counts[pass] == '1');
            const int due = cases[c].interval > 0 && pass > 0 && pass % cases[c].interval == 0;
            assert_int_equal(epm_eplb_due(cases[c].interval, pass), due);
        }
    assert_true(epm_eplb_due(4, 8));
    assert_false(epm_eplb_due(4, 0));
    assert_false(epm_eplb_due(4, 6));
}

static epm_placement *contiguous(const epm_trace *t, int nodes, int per_node)
{
    epm_cluster c;
    epm_cluster_init(&c, nodes, per_node);
    epm_plan_opts o;
    epm_plan_opts_init(&o);
    o.method = EPM_METHOD_CONTIGUOUS;
    epm_placement *p;
    assert_int_equal(epm_plan(t, &c, &o, &p), EPM_OK);
    return p;
}

static int64_t gains(const epm_placement *a, const epm_placement *b)
{
    int64_t n = 0;
    for (int l = 0; l < epm_placement_layers(a); l++)
        for (int e = 0; e < epm_placement_experts(a); e++)
            for (int q = 0; q < epm_placement_ranks(a); q++)
                n += epm_placement_has(b, l, e, q) && !epm_placement_has(a, l, e, q);
    return n;
}

/* layer l's busiest rank's (token, expert) pairs under p, an expert's shared by its replicas */
static double busiest_share(const epm_placement *p, int l, const int64_t *load)
{
    double per[64] = {0}, most = 0;
    const int E = epm_placement_experts(p);
    for (int e = 0; e < E; e++) {
        const int *reps;
        const int n = epm_placement_replicas(p, l, e, &reps);
        for (int i = 0; i < n; i++)
            per[reps[i]] += (double)load[l * E + e] / n;
    }
    for (int q = 0; q < epm_placement_ranks(p); q++)
        most = per[q] > most ? per[q] : most;
    return most;
}

static void assert_same_placement(const epm_placement *a, const epm_placement *b)
{
    for (int l = 0; l < epm_placement_layers(a); l++)
        for (int e = 0; e < epm_placement_experts(a); e++)
            for (int q = 0; q < epm_placement_ranks(a); q++)
                assert_int_equal(epm_placement_has(a, l, e, q), epm_placement_has(b, l, e, q));
}

static void test_plan_rebalance(void **state)
{
    (void)state;
    enum { L = 3, E = 8, K = 2 };
    epm_trace *t = tu_synth_trace_skew(L, E, K, 2000, 3, 1.2, 0);
    epm_placement *cur = contiguous(t, 2, 2);
    int64_t load[L * E] = {0};
    for (int l = 0; l < L; l++)
        for (int64_t i = 0; i < epm_trace_tokens(t) * K; i++)
            if (l != 1) /* (layer 1: no token went through it) */
                load[l * E + epm_trace_ids(t, l)[i]]++;
    epm_placement *np = NULL, *plain = NULL, *none = (epm_placement *)1;
    assert_int_equal(epm_plan_rebalance(cur, load, 3, 0, 0, &np), EPM_OK);
    assert_non_null(np);
    assert_int_equal(epm_placement_validate(np, 3), EPM_OK);
    assert_string_equal(epm_placement_get_info(np)->method, "eplb");
    assert_int_equal(epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, K, epm_placement_cluster(cur), 3, 0, &plain),
                     EPM_OK);
    for (int e = 0; e < E; e++) /* the layer without tokens is cur's */
        for (int q = 0; q < 4; q++)
            assert_int_equal(epm_placement_has(np, 1, e, q), epm_placement_has(cur, 1, e, q));
    /* the others: plain eplb's up to renaming, which moves no more than plain eplb would */
    for (int l = 0; l < L; l += 2)
        for (int q = 0; q < 4; q++)
            assert_int_equal(epm_placement_rank_count(np, l, q) > 0, 1);
    int64_t g_np, g_plain, g_self;
    assert_int_equal(epm_placement_gains(cur, np, &g_np), EPM_OK);
    assert_int_equal(epm_placement_gains(cur, plain, &g_plain), EPM_OK);
    assert_int_equal(epm_placement_gains(np, np, &g_self), EPM_OK);
    assert_true(g_np <= g_plain);
    assert_int_equal(g_np, gains(cur, np));
    assert_int_equal(g_self, 0);
    assert_true(g_np > 0); /* (4 spare slots a layer fill with replicas) */
    /* other shapes are refused, not read past */
    epm_trace *t2 = tu_synth_trace_skew(2, E, K, 100, 3, 1.2, 0);
    epm_placement *other = contiguous(t2, 2, 2);
    assert_int_equal(epm_placement_gains(cur, other, &g_self), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "3 layers x 8 experts on 4 ranks against 2 x 8 on 4"));
    /* fewer slots than cur already fills: a layer without counts could not keep its placement */
    assert_int_equal(epm_plan_rebalance(np, load, 2, 0, 0, &none), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "2 slots a rank, and the placement already has 3 experts"));
    assert_null(none);
    epm_placement_destroy(other);
    epm_trace_destroy(t2);
    /* min_gain: a layer whose busiest rank the new placement relieves by less keeps cur's */
    double gain[L] = {0};
    for (int l = 0; l < L; l += 2) /* (layer 1 has no counts) */
        gain[l] = 1 - busiest_share(np, l, load) / busiest_share(cur, l, load);
    const int lo = gain[0] < gain[2] ? 0 : 2, hi = 2 - lo;
    assert_true(gain[hi] > gain[lo] && gain[lo] > 0); /* (layers 0 and 2 gain, by different shares) */
    epm_placement *some = NULL;
    assert_int_equal(epm_plan_rebalance(cur, load, 3, (gain[lo] + gain[hi]) / 2, 0, &some), EPM_OK);
    assert_non_null(some);
    for (int e = 0; e < E; e++)
        for (int q = 0; q < 4; q++) {
            assert_int_equal(epm_placement_has(some, hi, e, q), epm_placement_has(np, hi, e, q));
            assert_int_equal(epm_placement_has(some, lo, e, q), epm_placement_has(cur, lo, e, q));
        }
    epm_placement_destroy(some);
    some = (epm_placement *)1; /* more than any layer gains: nothing taken */
    assert_int_equal(epm_plan_rebalance(cur, load, 3, gain[hi] + 0.01, 0, &some), EPM_OK);
    assert_null(some);
    assert_int_equal(epm_plan_rebalance(cur, load, 3, 1.0, 0, &some), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "min_gain = 1 is outside [0, 1)"));
    assert_int_equal(epm_plan_rebalance(cur, load, 3, -0.1, 0, &some), EPM_ERR_INVALID_ARG);
    /* nothing counted: nothing taken */
    int64_t zero[L * E] = {0};
    assert_int_equal(epm_plan_rebalance(cur, zero, 3, 0, 0, &none), EPM_OK);
    assert_null(none);
    /* refusals: too few slots (the planner's words), a negative load, no loads */
    assert_int_equal(epm_plan_rebalance(cur, load, 1, 0, 0, &none), EPM_ERR_INVALID_ARG);
    assert_null(none);
    zero[5] = -1;
    assert_int_equal(epm_plan_rebalance(cur, zero, 3, 0, 0, &none), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "has load -1"));
    assert_int_equal(epm_plan_rebalance(cur, NULL, 3, 0, 0, &none), EPM_ERR_INVALID_ARG);
    epm_placement_destroy(plain);
    epm_placement_destroy(np);
    epm_placement_destroy(cur);
    epm_trace_destroy(t);
}

/* Where each gained replica is copied from: a holder on the gainer's node
 * before one elsewhere, the holder with the fewest sends in the layer
 * before the others, the lowest rank last; the count alone; refusals; and
 * the change priced (epm_eval_moves). */
static void test_placement_moves(void **state)
{
    (void)state;
    epm_cluster c;
    epm_cluster_init(&c, 2, 2); /* ranks 0 1 | 2 3 */
    epm_placement *a, *b;
    assert_int_equal(epm_placement_create(2, 4, 1, &c, &a), EPM_OK);
    assert_int_equal(epm_placement_create(2, 4, 1, &c, &b), EPM_OK);
    /* layer 0: a holds 0 on {0, 2}, 1 on {0, 1}, 2 on {3}, 3 on {1}; b adds 0 to 1 and 3, 1 to 2 and 3, 2 to 0 */
    const int ha[4][3] = {{0, 2, -1}, {0, 1, -1}, {3, -1, -1}, {1, -1, -1}};
    const int hb[4][4] = {{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 3, -1, -1}, {1, -1, -1, -1}};
    for (int e = 0; e < 4; e++) {
        for (int i = 0; i < 3 && ha[e][i] >= 0; i++)
            assert_int_equal(epm_placement_add(a, 0, e, ha[e][i]), EPM_OK);
        for (int i = 0; i < 4 && hb[e][i] >= 0; i++)
            assert_int_equal(epm_placement_add(b, 0, e, hb[e][i]), EPM_OK);
        assert_int_equal(epm_placement_add(a, 1, e, e), EPM_OK); /* layer 1: the same in both */
        assert_int_equal(epm_placement_add(b, 1, e, e), EPM_OK);
    }
    int64_t n;
    assert_int_equal(epm_placement_moves(a, b, NULL, 0, &n), EPM_OK);
    assert_int_equal(n, 5);
    epm_expert_move m[16], one[1];
    assert_int_equal(epm_placement_moves(a, b, one, 1, &n), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_placement_moves(a, b, m, 5, &n), EPM_OK);
    const epm_expert_move want[5] = {
        {0, 0, 0, 1}, /* (holders 0 and 2: 0 is on rank 1's node) */
        {0, 0, 2, 3}, /* (2 is on rank 3's node) */
        {0, 1, 1, 2}, /* (holders 0 and 1, both elsewhere: 0 has sent one, 1 none) */
        {0, 1, 0, 3}, /* (each has sent one: the lowest) */
        {0, 2, 3, 0}, /* (the only holder, across nodes) */
    };
    for (int i = 0; i < 5; i++) {
        assert_int_equal(m[i].layer, want[i].layer);
        assert_int_equal(m[i].expert, want[i].expert);
        assert_int_equal(m[i].from, want[i].from);
        assert_int_equal(m[i].to, want[i].to);
    }
    /* priced (epm_eval_moves): 10 bytes each, two within a node and three across; ranks 0 and 3
     * each send (receive) one of each, the phase's busiest */
    epm_move_cost mc;
    assert_int_equal(epm_eval_moves(a, b, 10, &mc), EPM_OK);
    assert_int_equal(mc.moved, 5);
    assert_int_equal(mc.bytes[EPM_LINK_INTRA], 20);
    assert_int_equal(mc.bytes[EPM_LINK_INTER], 30);
    assert_int_equal(mc.max_send_bytes, 20);
    assert_int_equal(mc.max_recv_bytes, 20);
    const double want_s = 10 / (c.intra_gbps * 1e9) + 10 / (c.inter_gbps * 1e9);
    assert_true(fabs(mc.seconds - want_s) <= 1e-9 * want_s);
    assert_int_equal(mc.max_gained, 2); /* (rank 3 gains 0 and 1; the others one each) */
    assert_true(fabs(mc.seconds_whole - want_s) <= 1e-9 * want_s); /* (one layer moves: one phase either way) */
    /* on the hierarchical path (the run's synchronous copies take it): 1 -> 2 through 0, 0 -> 3
     * through 1, 3 -> 0 through 2, the others direct; rank 0 sends 20 intra (to 1, twice) and 10 inter
     * (1's to 2), the busiest; the counted bytes are the same */
    epm_move_cost mh;
    assert_int_equal(epm_eval_moves_path(a, b, 10, 1, &mh), EPM_OK);
    assert_int_equal(mh.moved, 5);
    assert_int_equal(mh.bytes[EPM_LINK_INTRA], 20);
    assert_int_equal(mh.bytes[EPM_LINK_INTER], 30);
    assert_int_equal(mh.max_send_bytes, 30);
    assert_int_equal(mh.max_recv_bytes, 20);
    const double want_h = 20 / (c.intra_gbps * 1e9) + 10 / (c.inter_gbps * 1e9);
    assert_true(fabs(mh.seconds - want_h) <= 1e-9 * want_h);
    assert_true(fabs(mh.seconds_whole - want_h) <= 1e-9 * want_h);
    assert_int_equal(epm_eval_moves_path(a, b, 10, 0, &mh), EPM_OK); /* (flat: epm_eval_moves) */
    assert_true(mh.seconds == mc.seconds && mh.max_send_bytes == mc.max_send_bytes);
    assert_int_equal(epm_eval_moves(a, b, -1, &mc), EPM_ERR_INVALID_ARG);
    assert_int_equal(epm_placement_moves(b, b, m, 5, &n), EPM_OK);
    assert_int_equal(n, 0);
    epm_placement *other;
    epm_cluster_init(&c, 1, 4);
    assert_int_equal(epm_placement_create(2, 4, 1, &c, &other), EPM_OK);
    assert_int_equal(epm_placement_moves(a, other, m, 5, &n), EPM_OK); /* (same shape: 4 ranks) */
    assert_int_equal(epm_placement_moves(other, b, m, 16, &n), EPM_ERR_INVALID_ARG); /* (nothing to copy from) */
    assert_non_null(strstr(epm_last_error(), "no replica to copy from"));
    epm_placement_destroy(other);
    assert_int_equal(epm_placement_create(2, 5, 1, &c, &other), EPM_OK);
    assert_int_equal(epm_placement_moves(a, other, m, 5, &n), EPM_ERR_MISMATCH);
    assert_int_equal(epm_placement_moves(NULL, b, m, 5, &n), EPM_ERR_INVALID_ARG);
    epm_placement_destroy(other);
    epm_placement_destroy(a);
    epm_placement_destroy(b);
    epm_clear_error();
}

/* tokens 0..T-1 of a drifting trace: the second half's experts shifted by 3,
 * passes out of token order and with gaps, a few tokens that never ran, and
 * tokens that skip every layer, alone in the last passes (whose boundary
 * still takes a placement) */
static epm_trace *passes_trace(int L, int E, int K, int64_t T)
{
    epm_trace *t = tu_synth_trace_skew(L, E, K, T, 9, 1.2, 40);
    int32_t *pass = malloc((size_t)T * sizeof *pass);
    assert_non_null(pass);
    for (int64_t i = 0; i < T; i++) {
        pass[i] = (int32_t)((i % 7) * 3 + (i / 100) * 25 + (i % 5 == 0)); /* (numbers 0 .. ~150, many unused) */
        for (int l = 0; l < L && i >= T / 2; l++)
            for (int j = 0; j < K; j++) {
                int32_t *id = &epm_trace_ids(t, l)[i * K + j];
                *id = *id < 0 ? *id : (*id + 3) % E;
            }
        if (i % 97 == 13 || i % 89 == 7) { /* never ran, or skipped every layer in the last passes */
            pass[i] = i % 97 == 13 ? -1 : 200 + (int32_t)(i % 3);
            for (int l = 0; l < L; l++)
                for (int j = 0; j < K; j++)
                    epm_trace_ids(t, l)[i * K + j] = -1;
        }
    }
    assert_int_equal(epm_trace_set_pass_ids(t, pass), EPM_OK);
    free(pass);
    return t;
}

/* The replay as the run lives it: pass by pass, every number from 0. */
static void expect_replay(const epm_trace *t, const epm_placement *p0, const epm_eval_opts *o, const epm_eval_result *got)
{
    const int L = epm_trace_layers(t), E = epm_placement_experts(p0), K = epm_trace_k(t), R = epm_placement_ranks(p0);
    const int64_t T = epm_trace_tokens(t);
    const int32_t *pass = epm_trace_pass_ids(t);
    const int I = o->eplb_interval, W = o->eplb_window ? o->eplb_window : I;
    const int slots = o->eplb_slots ? o->eplb_slots : epm_placement_max_slots(p0);
    int32_t top = 0;
    for (int64_t i = 0; i < T; i++)
        top = pass[i] > top ? pass[i] : top;
    epm_placement *pl[256];
    int n = 1, *seg = calloc((size_t)top + 1, sizeof *seg);
    int64_t *load = calloc((size_t)L * E, sizeof *load), moved = 0;
    assert_true(seg && load);
    pl[0] = (epm_placement *)p0;
    /* with a lag, placement s serves from pass from[s], taken before pass took[s]; the one in service */
    int32_t took[256], from[256];
    int cur = 0;
    took[0] = from[0] = 0;
    for (int32_t q = 0; q <= top; q++) {
        if (cur < n - 1 && q >= from[n - 1]) /* (a lagging placement comes into service) */
            cur = n - 1;
        int64_t any = 0;
        for (int i = 0; i < L * E; i++)
            any += load[i];
        if (q > 0 && q % I == 0) { /* (the window's counts are spent, a placement taken or not) */
            assert_true(n < 256);
            pl[n] = NULL;
            if (any > 0)
                assert_int_equal(epm_plan_rebalance(pl[n - 1], load, slots, o->eplb_min_gain, o->eplb_groups, &pl[n]), EPM_OK);
            if (pl[n]) {
                moved += gains(pl[n - 1], pl[n]);
                took[n] = q;
                from[n] = q + o->eplb_lag;
                cur = o->eplb_lag == 0 ? n : cur;
                n++;
            }
            memset(load, 0, (size_t)L * E * sizeof *load);
        }
        seg[q] = cur;
        if (q % I < I - W)
            continue;
        for (int64_t i = 0; i < T; i++)
            for (int l = 0; l < L && pass[i] == q; l++)
                for (int j = 0; j < K; j++)
                    if (epm_trace_ids_const(t, l)[i * K + j] >= 0)
                        load[l * E + epm_trace_ids_const(t, l)[i * K + j]]++;
    }
    assert_int_equal(got->rebalances, n - 1);
    assert_int_equal(got->moved, moved);
    if (n > 1) {
        assert_non_null(got->last);
        assert_same_placement(got->last, pl[n - 1]);
        assert_int_equal(epm_placement_get_info(got->last)->mode, o->mode);
    } else {
        assert_null(got->last);
    }
    /* each placement's tokens alone (the others skip every layer: they move nothing), summed */
    epm_eval_opts so = *o;
    so.eplb_interval = so.eplb_window = so.eplb_slots = so.eplb_lag = so.eplb_groups = 0;
    double t_segments = 0;
    int64_t *bytes = calloc((size_t)L * 2 * EPM_LINK_COUNT + EPM_LINK_COUNT, sizeof *bytes);
    int64_t *rl = calloc((size_t)L * R * 3, sizeof *rl);
    assert_true(bytes && rl);
    for (int s = 0; s < n; s++) {
        epm_trace *u;
        assert_int_equal(epm_trace_slice(t, 0, T, &u), EPM_OK);
        for (int64_t i = 0; i < T; i++)
            if (pass[i] < 0 || seg[pass[i]] != s)
                for (int l = 0; l < L; l++)
                    for (int j = 0; j < K; j++)
                        epm_trace_ids(u, l)[i * K + j] = -1;
        epm_eval_result *ev;
        assert_int_equal(epm_eval(u, pl[s], &so, &ev), EPM_OK);
        t_segments += ev->t_total;
        for (int l = 0; l < L; l++)
            for (int c = 0; c < EPM_LINK_COUNT; c++) {
                bytes[(l * 2) * EPM_LINK_COUNT + c] += ev->layer[l].bytes[c];
                bytes[(l * 2 + 1) * EPM_LINK_COUNT + c] += ev->layer[l].kv_bytes[c];
            }
        for (int c = 0; c < EPM_LINK_COUNT; c++)
            bytes[L * 2 * EPM_LINK_COUNT + c] += ev->gather_bytes[c];
        for (int i = 0; i < L * R; i++) {
            rl[i] += ev->rank_load[i];
            rl[L * R + i] += ev->send_bytes[i];
            rl[2 * L * R + i] += ev->recv_bytes[i];
        }
        epm_eval_result_destroy(ev);
        epm_trace_destroy(u);
    }
    for (int l = 0; l < L; l++)
        for (int c = 0; c < EPM_LINK_COUNT; c++) {
            assert_int_equal(got->layer[l].bytes[c], bytes[(l * 2) * EPM_LINK_COUNT + c]);
            assert_int_equal(got->layer[l].kv_bytes[c], bytes[(l * 2 + 1) * EPM_LINK_COUNT + c]);
        }
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        assert_int_equal(got->gather_bytes[c], bytes[L * 2 * EPM_LINK_COUNT + c]);
    for (int i = 0; i < L * R; i++) {
        assert_int_equal(got->rank_load[i], rl[i]);
        assert_int_equal(got->send_bytes[i], rl[L * R + i]);
        assert_int_equal(got->recv_bytes[i], rl[2 * L * R + i]);
    }
    /* the copies, as a literal reading of epm_placement_moves' rule charges them: per gained
     * replica, from a holder on its node if any, the fewest sends in the layer so far, the lowest */
    int64_t mb[EPM_LINK_COUNT] = {0};
    double tm = 0, cost[256] = {0}, over[256] = {0};
    const epm_cluster *cl = epm_placement_cluster(p0);
    /* a lagging placement's copies or reads overlap the passes from its boundary to its service (to the
     * trace's end for one taken after the last pass): those passes' layers' modelled seconds */
    for (int s = 1; s < n && o->eplb_lag > 0; s++) {
        epm_trace *u;
        assert_int_equal(epm_trace_slice(t, 0, T, &u), EPM_OK);
        for (int64_t i = 0; i < T; i++)
            if (pass[i] < took[s] || pass[i] >= from[s]) /* (none is past the last pass: taken at the end) */
                for (int l = 0; l < L; l++)
                    for (int j = 0; j < K; j++)
                        epm_trace_ids(u, l)[i * K + j] = -1;
        epm_eval_result *ev;
        assert_int_equal(epm_eval(u, pl[s - 1], &so, &ev), EPM_OK);
        for (int l = 0; l < L; l++)
            over[s] += ev->layer[l].t_compute + ev->layer[l].t_comm;
        epm_eval_result_destroy(ev);
        epm_trace_destroy(u);
    }
    for (int s = 1; s < n && o->expert_bytes > 0; s++) {
        int64_t *ph = calloc((size_t)4 * R, sizeof *ph), *sends = calloc((size_t)R, sizeof *sends);
        int64_t *whole = calloc((size_t)4 * R, sizeof *whole); /* (with a lag, every layer's in one exchange) */
        assert_true(ph && sends && whole);
        for (int l = 0; l < L; l++) { /* (a layer's copies one phase, the layers one after another) */
            memset(sends, 0, (size_t)R * sizeof *sends);
            memset(ph, 0, (size_t)4 * R * sizeof *ph);
            for (int e = 0; e < E; e++)
                for (int q = 0; q < R; q++) {
                    if (!epm_placement_has(pl[s], l, e, q) || epm_placement_has(pl[s - 1], l, e, q))
                        continue;
                    int from = -1;
                    for (int near = 1; near >= 0 && from < 0; near--)
                        for (int h = 0; h < R; h++)
                            if (epm_placement_has(pl[s - 1], l, e, h) &&
                                (h / cl->gpus_per_node == q / cl->gpus_per_node) == near &&
                                (from < 0 || sends[h] < sends[from]))
                                from = h;
                    assert_true(from >= 0);
                    sends[from]++;
                    const int P = cl->gpus_per_node, inter = from / P != q / P;
                    mb[inter ? EPM_LINK_INTER : EPM_LINK_INTRA] += o->expert_bytes;
                    /* on the wire: direct, or (synchronous copies on the hierarchical path) across nodes
                     * through the rank of q's local index on from's node, as the run's exchange sends them */
                    int hop[3] = {from, q, -1};
                    if (inter && o->hierarchical && o->eplb_lag == 0)
                        hop[1] = from / P * P + q % P, hop[2] = q;
                    for (int h = 0; h < 2 && hop[h + 1] >= 0; h++) {
                        if (hop[h] == hop[h + 1])
                            continue;
                        const int x = hop[h] / P != hop[h + 1] / P;
                        ph[x * R + hop[h]] += o->expert_bytes;
                        ph[(2 + x) * R + hop[h + 1]] += o->expert_bytes;
                        whole[x * R + hop[h]] += o->expert_bytes;
                        whole[(2 + x) * R + hop[h + 1]] += o->expert_bytes;
                    }
                }
            double worst = 0;
            for (int q = 0; q < R; q++)
                for (int d = 0; d < 2; d++) {
                    const double v = (double)ph[2 * d * R + q] / (cl->intra_gbps * 1e9) +
                                     (double)ph[(2 * d + 1) * R + q] / (cl->inter_gbps * 1e9);
                    worst = v > worst ? v : worst;
                }
            cost[s] += o->eplb_lag > 0 ? 0 : worst;
        }
        for (int q = 0; q < R && o->eplb_lag > 0; q++)
            for (int d = 0; d < 2; d++) {
                const double v = (double)whole[2 * d * R + q] / (cl->intra_gbps * 1e9) +
                                 (double)whole[(2 * d + 1) * R + q] / (cl->inter_gbps * 1e9);
                cost[s] = v > cost[s] ? v : cost[s];
            }
        free(ph);
        free(whole);
        free(sends);
        tm += cost[s] > over[s] ? cost[s] - over[s] : 0;
    }
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        assert_int_equal(got->move_bytes[c], mb[c]);
    assert_true(fabs(got->t_moves - tm) <= 1e-12 + 1e-9 * tm);
    /* or read from the checkpoint: every gained replica by its rank, the boundary waiting for the rank
     * that gains most over all layers */
    int64_t rb = 0;
    double tr = 0;
    for (int s = 1; s < n && o->read_expert_bytes > 0; s++) {
        int64_t most = 0;
        for (int q = 0; q < R; q++) {
            int64_t g = 0;
            for (int l = 0; l < L; l++)
                for (int e = 0; e < E; e++)
                    g += epm_placement_has(pl[s], l, e, q) && !epm_placement_has(pl[s - 1], l, e, q);
            rb += g * o->read_expert_bytes;
            most = g > most ? g : most;
        }
        const double rs = o->read_gbps > 0 ? (double)(most * o->read_expert_bytes) / (o->read_gbps * 1e9) : 0;
        tr += rs > over[s] ? rs - over[s] : 0;
    }
    assert_int_equal(got->read_bytes, rb);
    assert_true(fabs(got->t_reads - tr) <= 1e-12 + 1e-9 * tr);
    assert_true(o->read_expert_bytes == 0 || n == 1 || rb > 0);
    assert_true(fabs(got->t_total - got->t_moves - got->t_reads - t_segments) <= 1e-12 + 1e-9 * got->t_total);
    for (int s = 1; s < n; s++)
        epm_placement_destroy(pl[s]);
    free(bytes);
    free(rl);
    free(seg);
    free(load);
}

static void test_eval_rebalanced(void **state)
{
    (void)state;
    enum { L = 3, E = 8, K = 2 };
    epm_trace *t = passes_trace(L, E, K, 1500);
    epm_placement *p = contiguous(t, 2, 2);
    /* (groups: 4 groups of 2 experts, kept whole on the 2 nodes) */
    static const struct {
        int interval, window, slots;
        double min_gain;
        int lag, groups;
    } cfg[] = {{2, 0, 3, 0, 0, 0}, {3, 1, 3, 0, 0, 0}, {1, 1, 0, 0, 0, 0}, {5, 2, 4, 0, 0, 0}, {1000, 0, 3, 0, 0, 0},
               {4, 4, 8, 0, 0, 0}, {2, 0, 3, 0.05, 0, 0}, {1, 1, 3, 0.3, 0, 0}, {2, 0, 3, 0, 1, 0}, {5, 2, 4, 0, 4, 0},
               {4, 4, 8, 0, 2, 0}, {3, 1, 3, 0.05, 1, 0}, {2, 0, 3, 0, 0, 4}, {3, 1, 3, 0.05, 1, 4},
               {1, 1, 3, 0, 0, 2}};
    for (int mode = 0; mode < 2; mode++)
        for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
            epm_eval_opts o;
            epm_eval_opts_init(&o);
            o.mode = (epm_mode)mode;
            o.hidden_bytes = 512;
            o.kv_row_bytes = 96;
            o.dispatch_bytes = c == 3 ? 260 : 0;
            /* (1, 6 and 10: a run that reads the file, priced at 2 GB/s a rank, or only counted) */
            const int reads = c == 1 || c == 6 || c == 10;
            o.expert_bytes = reads ? 0 : 3000 + 1000 * (int64_t)c;
            o.read_expert_bytes = reads ? 5000 + (int64_t)c : 0;
            o.read_gbps = c == 1 || c == 10 ? 2 : 0;
            o.eplb_interval = cfg[c].interval;
            o.eplb_window = cfg[c].window;
            o.eplb_slots = cfg[c].slots;
            o.eplb_min_gain = cfg[c].min_gain;
            o.eplb_lag = cfg[c].lag;
            o.eplb_groups = cfg[c].groups;
            o.hierarchical = c % 2; /* (synchronous copies through gateways; a lag's flat: 9, 11, 13) */
            epm_eval_result *got;
            assert_int_equal(epm_eval(t, p, &o, &got), EPM_OK);
            expect_replay(t, p, &o, got);
            if (cfg[c].interval == 1000) /* (no boundary among the passes: the static placement's figures) */
                assert_int_equal(got->rebalances, 0);
            else
                assert_true(got->rebalances >= 3);
            if (cfg[c].min_gain > 0) { /* fewer experts move than without it, over fewer placements */
                epm_eval_opts ao = o;
                ao.eplb_min_gain = 0;
                epm_eval_result *always;
                assert_int_equal(epm_eval(t, p, &ao, &always), EPM_OK);
                assert_true(got->moved < always->moved);
                assert_true(got->rebalances <= always->rebalances);
                epm_eval_result_destroy(always);
            }
            /* spare slots after the drift: a better balance than the static placement's */
            epm_eval_opts so = o;
            so.eplb_interval = so.eplb_window = so.eplb_slots = so.eplb_lag = so.eplb_groups = 0;
            epm_eval_result *st;
            assert_int_equal(epm_eval(t, p, &so, &st), EPM_OK);
            if (cfg[c].slots >= 3 && cfg[c].interval < 1000)
                assert_true(got->max_over_mean_load < st->max_over_mean_load);
            epm_eval_result_destroy(st);
            epm_eval_result_destroy(got);
        }
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void expect_refused(const epm_trace *t, const epm_placement *p, int interval, int window, int slots,
                           const char *needle)
{
    epm_eval_opts o;
    epm_eval_opts_init(&o);
    o.eplb_interval = interval;
    o.eplb_window = window;
    o.eplb_slots = slots;
    epm_eval_result *r = (epm_eval_result *)1;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_INVALID_ARG);
    assert_null(r);
    if (!strstr(epm_last_error(), needle))
        fail_msg("expected '%s' in: %s", needle, epm_last_error());
}

static void test_eval_rebalanced_refusals(void **state)
{
    (void)state;
    epm_trace *t = passes_trace(2, 8, 2, 300);
    epm_placement *p = contiguous(t, 1, 4);
    expect_refused(t, p, -1, 0, 0, "every -1 passes");
    expect_refused(t, p, 2, 3, 0, "a window of 3");
    expect_refused(t, p, 2, -1, 0, "a window of -1");
    expect_refused(t, p, 2, 0, 1, "eplb_slots = 1: 4 ranks hold 8 experts a layer in 2 to 8");
    expect_refused(t, p, 2, 0, 9, "eplb_slots = 9");
    int32_t *pass = malloc(300 * sizeof *pass);
    assert_non_null(pass);
    memcpy(pass, epm_trace_pass_ids(t), 300 * sizeof *pass);
    pass[4] = -1; /* (token 4 chose experts) */
    epm_trace *u;
    assert_int_equal(epm_trace_slice(t, 0, 300, &u), EPM_OK);
    assert_int_equal(epm_trace_set_pass_ids(u, pass), EPM_OK);
    expect_refused(u, p, 2, 0, 0, "token 4 chose experts but its pass_ids entry is -1");
    assert_int_equal(epm_trace_set_pass_ids(u, NULL), EPM_OK);
    expect_refused(u, p, 2, 0, 0, "the trace has no pass_ids (epmoe run --trace-out records them)");
    /* without rebalancing, neither matters */
    epm_eval_opts o;
    epm_eval_opts_init(&o);
    epm_eval_result *r;
    assert_int_equal(epm_eval(u, p, &o, &r), EPM_OK);
    assert_int_equal(r->rebalances, 0);
    epm_eval_result_destroy(r);
    /* a run takes its gains one way, copied or read; no negative size or speed; a lag below the
     * interval, and only with one */
    const struct {
        int interval, lag;
        int64_t copied, read;
        double gbps;
        const char *needle;
    } bad[] = {{2, 0, 8, 8, 0, "a run takes gained experts one way"},
               {2, 0, 0, -1, 0, "read_expert_bytes = -1 and read_gbps = 0 must be >= 0"},
               {2, 0, 0, 8, -2, "read_gbps = -2"},
               {2, 0, 0, 8, NAN, "read_gbps = nan"},
               {2, 2, 0, 0, 0, "eval: eplb_lag = 2: from 0 to the interval's 2 passes less one"},
               {3, -1, 0, 0, 0, "eval: eplb_lag = -1"},
               {0, 1, 0, 0, 0, "eval: eplb_lag = 1 is online rebalancing's, and eplb_interval is 0"},
               {2, 0, 0, 0, 0, "eval: eplb_groups = 3: expert groups must divide the 8 experts"},
               {0, 0, 0, 0, 0, "eval: eplb_groups = 2 is online rebalancing's, and eplb_interval is 0"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        epm_eval_opts_init(&o);
        o.eplb_interval = bad[i].interval;
        o.eplb_lag = bad[i].lag;
        o.eplb_groups = strstr(bad[i].needle, "eplb_groups = 3") ? 3 : strstr(bad[i].needle, "eplb_groups = 2") ? 2 : 0;
        o.expert_bytes = bad[i].copied;
        o.read_expert_bytes = bad[i].read;
        o.read_gbps = bad[i].gbps;
        r = (epm_eval_result *)1;
        assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_INVALID_ARG);
        assert_null(r);
        if (!strstr(epm_last_error(), bad[i].needle))
            fail_msg("expected '%s' in: %s", bad[i].needle, epm_last_error());
    }
    /* a placement that already uses 3 slots on a rank: fewer is refused */
    epm_placement *q;
    epm_cluster c;
    epm_cluster_init(&c, 1, 4);
    epm_plan_opts po;
    epm_plan_opts_init(&po);
    po.method = EPM_METHOD_EPLB;
    po.slots_per_rank = 3;
    assert_int_equal(epm_plan(t, &c, &po, &q), EPM_OK);
    expect_refused(t, q, 2, 0, 2, "the placement already has 3 experts of a layer on one rank");
    epm_placement_destroy(q);
    free(pass);
    epm_trace_destroy(u);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eplb_window),
        cmocka_unit_test(test_plan_rebalance), cmocka_unit_test(test_placement_moves),
        cmocka_unit_test(test_eval_rebalanced),
        cmocka_unit_test(test_eval_rebalanced_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
