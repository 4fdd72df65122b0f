/* The cost model, checked on cases small enough to count by hand. */
#include "test_util.h"

#include "hier_route.h"

#include <math.h>
#include <string.h>

#include "epmoe/epmoe.h"

/* 2 nodes x 2 ranks; 4 experts, expert e on rank e; k = 2; one layer or two. */
static epm_placement *identity_placement(int layers, int experts, int nodes, int gpn)
{
    epm_cluster c;
    epm_cluster_init(&c, nodes, gpn);
    epm_placement *p;
    assert_int_equal(epm_placement_create(layers, experts, 2, &c, &p), EPM_OK);
    for (int l = 0; l < layers; l++)
        for (int e = 0; e < experts; e++)
            assert_int_equal(epm_placement_add(p, l, e, e % (nodes * gpn)), EPM_OK);
    return p;
}

static epm_trace *make_trace(int layers, int tokens, int k, int experts, const int32_t *ids)
{
    epm_trace *t;
    assert_int_equal(epm_trace_create(layers, tokens, k, experts, &t), EPM_OK);
    for (int l = 0; l < layers; l++)
        memcpy(epm_trace_ids(t, l), ids + (size_t)l * tokens * k, (size_t)tokens * k * sizeof *ids);
    return t;
}

static epm_eval_opts opts(epm_mode m)
{
    epm_eval_opts o;
    epm_eval_opts_init(&o);
    o.mode = m;
    o.hidden_bytes = 10;
    o.kv_row_bytes = 3;
    o.flops_per_assignment = 1;
    return o;
}

static void test_eval_home_counts(void **state)
{
    (void)state;
    /* tokens 0..3 live on ranks 0..3 (seq id = token id, 4 ranks) */
    const int32_t ids[] = {
        0, 1, /* tok 0 on r0: r0 local, r1 intra: out+back intra */
        2, 3, /* tok 1 on r1: r2 inter, r3 inter */
        1, -1, /* tok 2 on r2: r1 inter; dynamic k */
        -1, -1, /* tok 3 skipped */
    };
    epm_trace *t = make_trace(1, 4, 2, 4, ids);
    epm_placement *p = identity_placement(1, 4, 2, 2);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_SELF], 0);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 2 * 10);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTER], (2 + 2 + 2) * 10);
    assert_int_equal(r->layer[0].transfers[EPM_LINK_INTER], 6);
    assert_int_equal(r->layer[0].kv_bytes[EPM_LINK_INTRA] + r->layer[0].kv_bytes[EPM_LINK_INTER], 0);
    /* loads: r0 1, r1 2, r2 1, r3 1 */
    assert_int_equal(r->rank_load[0], 1);
    assert_int_equal(r->rank_load[1], 2);
    assert_int_equal(r->layer[0].max_load, 2);
    assert_int_equal(r->layer[0].sum_load, 5);
    /* r1 sends tok 1 to r2 and r3 (20), and combines tok 0 to r0 and tok 2 to r2 (20) */
    assert_int_equal(r->send_bytes[1], 40);
    assert_int_equal(r->recv_bytes[1], 40); /* tok 0 and tok 2 in, tok 1 back from r2 and r3 */
    assert_int_equal(r->gather_bytes[EPM_LINK_INTER], 0);
    epm_eval_result_destroy(r);
    /* fp8 dispatch (dispatch_bytes): dispatched rows of 7 bytes, combined ones of 10 */
    o.dispatch_bytes = 7;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 7 + 10);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTER], 3 * (7 + 10));
    assert_int_equal(r->send_bytes[1], 2 * 7 + 2 * 10); /* tok 1 out to r2 and r3; tok 0 and 2 back */
    assert_int_equal(r->recv_bytes[1], 2 * 7 + 2 * 10);
    assert_int_equal(r->send_bytes[0], 7);
    assert_int_equal(r->recv_bytes[0], 10);
    epm_eval_result_destroy(r);
    o.dispatch_bytes = -2;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "dispatch_bytes = -2"));
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_dedup_same_rank(void **state)
{
    (void)state;
    /* 2 ranks, 4 experts: e0,e2 on r0, e1,e3 on r1. Token on r0 choosing e1 and e3: one transfer. */
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    epm_placement *p;
    assert_int_equal(epm_placement_create(1, 4, 2, &c, &p), EPM_OK);
    for (int e = 0; e < 4; e++)
        assert_int_equal(epm_placement_add(p, 0, e, e % 2), EPM_OK);
    const int32_t ids[] = {1, 3};
    epm_trace *t = make_trace(1, 1, 2, 4, ids);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 20); /* out and back once */
    assert_int_equal(r->rank_load[1], 2);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_follow_counts(void **state)
{
    (void)state;
    /* 4 ranks in 2 nodes, expert e on rank e, 2 layers, one token at home r0. */
    const int32_t ids[] = {
        2, 0, /* layer 0: at r0; dispatch r0->r2 (inter); combine at r2: r0->r2 (inter) */
        3, 2, /* layer 1: at r2; dispatch r2->r3 (intra); combine at r3: r2->r3 (intra) */
    };
    epm_trace *t = make_trace(2, 1, 2, 4, ids);
    epm_placement *p = identity_placement(2, 4, 2, 2);
    epm_eval_opts o = opts(EPM_MODE_FOLLOW);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTER], 20);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 0);
    assert_int_equal(r->layer[1].bytes[EPM_LINK_INTRA], 20);
    assert_int_equal(r->layer[1].bytes[EPM_LINK_INTER], 0);
    /* K/V rows: layer 0 from r0 (1 intra, 2 inter), layer 1 from r2 (1 intra, 2 inter) */
    assert_int_equal(r->layer[0].kv_bytes[EPM_LINK_INTRA], 3);
    assert_int_equal(r->layer[0].kv_bytes[EPM_LINK_INTER], 6);
    assert_int_equal(r->layer[1].kv_bytes[EPM_LINK_INTER], 6);
    /* ends on r3, home r0: one inter-node gather */
    assert_int_equal(r->gather_bytes[EPM_LINK_INTER], 10);
    assert_int_equal(r->total_bytes[EPM_LINK_INTER], 20 + 6 + 6 + 10);
    assert_true(r->kv_cache_factor == 4.0);
    epm_eval_result_destroy(r);

    /* home mode on the same trace: both layers from r0 */
    o = opts(EPM_MODE_HOME);
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[1].bytes[EPM_LINK_INTER], 40); /* r0 <-> r2, r0 <-> r3 */
    assert_int_equal(r->gather_bytes[EPM_LINK_INTER], 0);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_follow_skip_stays(void **state)
{
    (void)state;
    const int32_t ids[] = {1, -1, /* layer 0: moves to r1 */ -1, -1, /* layer 1 skipped: stays on r1 */
                           1, -1 /* layer 2: expert on r1 itself: nothing moves */};
    epm_trace *t = make_trace(3, 1, 2, 2, ids);
    epm_placement *p = identity_placement(3, 2, 1, 2);
    epm_eval_opts o = opts(EPM_MODE_FOLLOW);
    o.kv_row_bytes = 0;
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 10); /* dispatch only: combine is at r1 */
    assert_int_equal(r->layer[1].bytes[EPM_LINK_INTRA], 0);
    assert_int_equal(r->layer[2].bytes[EPM_LINK_INTRA], 0);
    assert_int_equal(r->gather_bytes[EPM_LINK_INTRA], 10);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_replica_prefers_cheap_link(void **state)
{
    (void)state;
    /* expert 0 on r0 and r2 (other node); tokens at r2 and r3 use r2's copy */
    epm_cluster c;
    epm_cluster_init(&c, 2, 2);
    epm_placement *p;
    assert_int_equal(epm_placement_create(1, 2, 1, &c, &p), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 0), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 2), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 1, 1), EPM_OK);
    const int32_t ids[] = {0, 0, 0, 0};
    epm_trace *t = make_trace(1, 4, 1, 2, ids);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    /* tok0 r0 self; tok1 r1 -> r0 intra (tie r0 vs - : r0 is the only intra); tok2 self; tok3 -> r2 intra */
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTER], 0);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 40);
    assert_int_equal(r->rank_load[0], 2);
    assert_int_equal(r->rank_load[2], 2);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_mismatch(void **state)
{
    (void)state;
    const int32_t ids[] = {0, 1};
    epm_trace *t = make_trace(2, 1, 1, 2, ids);
    epm_placement *p = identity_placement(1, 2, 1, 2);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r = NULL;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "2 MoE layers"));
    assert_null(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}


/* Units chosen so that seconds are bytes: intra 1 byte/s, inter 0.5 byte/s,
 * 1 FLOP/s and 1 FLOP per assignment. */
static void slow_cluster(epm_placement *p, epm_placement **out)
{
    epm_cluster c = *epm_placement_cluster(p);
    c.intra_gbps = 1e-9;
    c.inter_gbps = 0.5e-9;
    c.gpu_tflops = 1e-12;
    assert_int_equal(epm_placement_create(epm_placement_layers(p), epm_placement_experts(p), 2, &c, out), EPM_OK);
    for (int l = 0; l < epm_placement_layers(p); l++)
        for (int e = 0; e < epm_placement_experts(p); e++) {
            const int *r;
            int n = epm_placement_replicas(p, l, e, &r);
            for (int j = 0; j < n; j++)
                assert_int_equal(epm_placement_add(*out, l, e, r[j]), EPM_OK);
        }
}

static void test_eval_modelled_time_home(void **state)
{
    (void)state;
    const int32_t ids[] = {0, 1, 2, 3, 1, -1, -1, -1}; /* as in test_eval_home_counts */
    epm_trace *t = make_trace(1, 4, 2, 4, ids);
    epm_placement *p0 = identity_placement(1, 4, 2, 2), *p;
    slow_cluster(p0, &p);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    /* busiest rank r1: sends 10 intra (tok 0 back) + 30 inter (tok 1 out twice, tok 2 back)
     * = 10 + 60 s; receives 10 intra + 30 inter, also 70 s */
    assert_true(fabs(r->layer[0].t_comm - 70.0) < 1e-6);
    assert_true(fabs(r->layer[0].t_compute - 2.0) < 1e-9); /* max load 2 */
    assert_true(fabs(r->t_total - 72.0) < 1e-6);
    assert_int_equal(r->layer[0].max_send_bytes, 40);
    assert_int_equal(r->layer[0].max_recv_bytes, 40);
    assert_true(r->kv_cache_factor == 1.0);
    /* mean over layers of max / mean load: 2 / (5 / 4) */
    assert_true(fabs(r->max_over_mean_load - 1.6) < 1e-12);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_placement_destroy(p0);
    epm_trace_destroy(t);
}

static void test_eval_modelled_time_follow(void **state)
{
    (void)state;
    const int32_t ids[] = {2, 0, 3, 2}; /* as in test_eval_follow_counts */
    epm_trace *t = make_trace(2, 1, 2, 4, ids);
    epm_placement *p0 = identity_placement(2, 4, 2, 2), *p;
    slow_cluster(p0, &p);
    epm_eval_opts o = opts(EPM_MODE_FOLLOW);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    /* layer 0: r0 sends 20 inter (dispatch + combine to r2): 40 s; K/V from r0:
     * 3 intra + 6 inter = 3 + 12 s; phases add */
    assert_true(fabs(r->layer[0].t_comm - 55.0) < 1e-6);
    /* layer 1 from r2: 20 intra to r3 (20 s) + K/V 3 intra + 6 inter (15 s) */
    assert_true(fabs(r->layer[1].t_comm - 35.0) < 1e-6);
    assert_int_equal(r->layer[0].max_send_bytes, 29); /* r0: 20 + 9 of K/V */
    /* + 1 s compute per layer + the gather r3 -> r0 (10 inter bytes, 20 s) */
    assert_true(fabs(r->t_total - (55 + 1 + 35 + 1 + 20)) < 1e-6);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_placement_destroy(p0);
    epm_trace_destroy(t);
}

static void test_eval_bad_opts(void **state)
{
    (void)state;
    const int32_t ids[] = {0};
    epm_trace *t = make_trace(1, 1, 1, 2, ids);
    epm_placement *p = identity_placement(1, 2, 1, 2);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    o.hidden_bytes = -1;
    epm_eval_result *r = NULL;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "hidden_bytes = -1"));
    o = opts((epm_mode)7);
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "mode = 7"));
    assert_null(r);
    epm_placement_destroy(p);
    /* an unplaced expert is refused, not routed to rank -1 */
    epm_cluster c;
    epm_cluster_init(&c, 1, 2);
    assert_int_equal(epm_placement_create(1, 2, 1, &c, &p), EPM_OK);
    assert_int_equal(epm_placement_add(p, 0, 0, 0), EPM_OK);
    o = opts(EPM_MODE_HOME);
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_ERR_MISMATCH);
    assert_non_null(strstr(epm_last_error(), "expert 1 is on no rank"));
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

static void test_eval_seq_ids_home(void **state)
{
    (void)state;
    /* 4 tokens of 2 sequences (ids 5, 5, 6, 6) on 2 ranks: homes r1, r1, r0, r0 */
    const int32_t ids[] = {0, 0, 0, 0};
    epm_trace *t = make_trace(1, 4, 1, 2, ids);
    const int32_t seq[] = {5, 5, 6, 6};
    assert_int_equal(epm_trace_set_seq_ids(t, seq), EPM_OK);
    epm_placement *p = identity_placement(1, 2, 1, 2);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    /* expert 0 on r0: tokens 0, 1 go out and back from r1 */
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTRA], 40);
    assert_int_equal(r->send_bytes[1], 20);
    assert_int_equal(r->recv_bytes[1], 20);
    assert_int_equal(r->rank_load[0], 4);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

/* One token of r0 (node 0: r0, r1; node 1: r2, r3) choosing experts 2 and 3
 * (ranks 2, 3) on the slow cluster. */
static void one_token_2x2(epm_trace **t, epm_placement **p0, epm_placement **p)
{
    const int32_t ids[] = {2, 3};
    *t = make_trace(1, 1, 2, 4, ids);
    *p0 = identity_placement(1, 4, 2, 2);
    slow_cluster(*p0, p);
}

/* o on the flat path (f), then on the hierarchical one (h) */
static void eval_both_paths(const epm_trace *t, const epm_placement *p, epm_eval_opts o, epm_eval_result **f,
                            epm_eval_result **h)
{
    o.hierarchical = 0;
    assert_int_equal(epm_eval(t, p, &o, f), EPM_OK);
    o.hierarchical = 1;
    assert_int_equal(epm_eval(t, p, &o, h), EPM_OK);
}

/* The hierarchical path (comm/hier_route.h): the counted bytes stay the
 * model's, the wire and the modelled time are the path's (one_token_2x2). */
static void test_eval_hierarchical_wire(void **state)
{
    (void)state;
    epm_trace *t;
    epm_placement *p0, *p;
    one_token_2x2(&t, &p0, &p);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    epm_eval_result *f, *h;
    eval_both_paths(t, p, o, &f, &h);
    /* flat: out to r2 and r3 and back, between nodes; its wire is what is counted */
    assert_int_equal(f->layer[0].bytes[EPM_LINK_INTER], 40);
    assert_int_equal(f->wire_bytes[EPM_LINK_INTER], 40);
    assert_int_equal(f->wire_bytes[EPM_LINK_INTRA], 0);
    assert_int_equal(f->layer_wire[EPM_LINK_INTER], 40);
    /* hierarchical: r0's local index is r2's, so r0 sends once to r2, which fans
     * out to r3; r2 returns straight, r3 through r2 (r0's local index on node 1) */
    assert_memory_equal(h->layer[0].bytes, f->layer[0].bytes, sizeof f->layer[0].bytes);
    assert_int_equal(h->wire_bytes[EPM_LINK_INTER], 30);
    assert_int_equal(h->wire_bytes[EPM_LINK_INTRA], 20);
    assert_int_equal(h->layer_wire[EPM_LINK_INTRA], 20);
    assert_int_equal(h->layer_wire[EPM_LINK_INTER], 30);
    /* time: flat, r0 sends and receives 20 inter bytes (40 s at 2 s a byte); hierarchical,
     * r2 sends 10 intra (fan-out, 10 s) and 20 inter (both combines, 40 s) */
    assert_true(fabs(f->layer[0].t_comm - 40.0) < 1e-6);
    assert_true(fabs(h->layer[0].t_comm - 50.0) < 1e-6);
    epm_eval_result_destroy(f);
    epm_eval_result_destroy(h);
    /* follow: the combine on r2 (top-1), r3's partial within node 1; K/V all-gathered flat from
     * r0 (3 bytes to r1, r2, r3); the final gather r2 -> r0 between nodes either way */
    o = opts(EPM_MODE_FOLLOW);
    eval_both_paths(t, p, o, &f, &h);
    assert_int_equal(f->wire_bytes[EPM_LINK_INTRA], 13);
    assert_int_equal(f->wire_bytes[EPM_LINK_INTER], 36);
    assert_int_equal(h->wire_bytes[EPM_LINK_INTRA], 23);
    assert_int_equal(h->wire_bytes[EPM_LINK_INTER], 26);
    assert_int_equal(h->layer_wire[EPM_LINK_INTRA], 23);
    assert_int_equal(h->layer_wire[EPM_LINK_INTER], 16);
    for (int c = 0; c < EPM_LINK_COUNT; c++) {
        assert_int_equal(h->total_bytes[c], f->total_bytes[c]);
        assert_int_equal(f->wire_bytes[c], f->total_bytes[c]);
    }
    epm_eval_result_destroy(f);
    epm_eval_result_destroy(h);
    /* one node: no path between nodes to take */
    epm_placement *one = identity_placement(1, 4, 1, 4);
    o.hierarchical = 1;
    assert_int_equal(epm_eval(t, one, &o, &h), EPM_OK);
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        assert_int_equal(h->wire_bytes[c], h->total_bytes[c]);
    epm_eval_result_destroy(h);
    epm_placement_destroy(one);
    epm_placement_destroy(p);
    epm_placement_destroy(p0);
    epm_trace_destroy(t);
}

/* Where no choice is free the gateway rotates with the token's number, and a
 * later node reuses a gateway's copy: 3 nodes of 3, two tokens of r0 choosing
 * r4, r5 (node 1, local 1 and 2) and r7 (node 2, local 1). Token 0 gathers on
 * r2 for node 1 ((0 + 1) mod 2: r5's local index) and on r1 for node 2; token 1
 * on r1 for both ((1 + 1) mod 2: r4's), one copy. */
static void test_eval_hierarchical_gateways(void **state)
{
    (void)state;
    const int32_t ids[] = {4, 5, 7, 4, 5, 7};
    epm_trace *t = make_trace(1, 2, 3, 9, ids);
    const int32_t seq[] = {0, 0};
    assert_int_equal(epm_trace_set_seq_ids(t, seq), EPM_OK);
    epm_placement *p = identity_placement(1, 9, 3, 3);
    epm_eval_opts o = opts(EPM_MODE_HOME);
    o.hierarchical = 1;
    epm_eval_result *r;
    assert_int_equal(epm_eval(t, p, &o, &r), EPM_OK);
    assert_int_equal(r->layer[0].bytes[EPM_LINK_INTER], 120);
    /* intra: gathering 2 + 1 copies, fan-out r5 -> r4 and r4 -> r5, each partial to its node's
     * rank of r0's local index (r3, r3, r6) twice; inter: a copy a node and a partial a rank */
    assert_int_equal(r->wire_bytes[EPM_LINK_INTRA], 110);
    assert_int_equal(r->wire_bytes[EPM_LINK_INTER], 100);
    /* messages (one exchange: no passes): hop 0 r0 -> r1, r0 -> r2; hop 1 r2 -> r5, r1 -> r7, r1 -> r4;
     * hop 2 r5 -> r4, r4 -> r5; combine r4 -> r3, r5 -> r3, r7 -> r6, then r3 -> r0, r6 -> r0 */
    assert_true(r->msgs_counted);
    assert_int_equal(r->wire_msgs[EPM_LINK_INTRA], 2 + 2 + 3);
    assert_int_equal(r->wire_msgs[EPM_LINK_INTER], 3 + 2);
    epm_eval_result_destroy(r);
    epm_placement_destroy(p);
    epm_trace_destroy(t);
}

/* A latency a message (the alpha of an alpha-beta model) on both its ends, in the phase of
 * test_eval_hierarchical_wire (4 ranks, 2 nodes). Every hop starts with its counts messages, one to
 * each other rank (1 intra-node, 2 inter-node), whatever it moves: flat 2 hops, hierarchical 5, so
 * 2 x (0.5 + 2) and 5 x 2.5 on every rank over the bandwidth alone. Rows of 10 bytes ride in those
 * messages; rows beyond what rides (comm/hier_route.h, epm_ride_max) are a message of their own:
 * flat, r0 sends 2 and receives 2 between nodes. The wire's messages are counted as before. */
static void test_eval_message_latency(void **state)
{
    (void)state;
    epm_trace *t;
    epm_placement *p0, *p;
    one_token_2x2(&t, &p0, &p);
    for (int big = 0; big < 2; big++) {
        epm_eval_opts o = opts(EPM_MODE_HOME);
        if (big)
            o.hidden_bytes = (int64_t)epm_ride_max(4) + 1;
        epm_eval_result *f0, *h0, *f, *h;
        eval_both_paths(t, p, o, &f0, &h0);
        o.intra_latency_s = 0.5;
        o.inter_latency_s = 1;
        eval_both_paths(t, p, o, &f, &h);
        assert_int_equal(f->wire_msgs[EPM_LINK_INTER], 4);
        assert_int_equal(f->wire_msgs[EPM_LINK_INTRA], 0);
        assert_int_equal(h->wire_msgs[EPM_LINK_INTER], 2);
        assert_int_equal(h->wire_msgs[EPM_LINK_INTRA], 2);
        assert_memory_equal(f->wire_bytes, f0->wire_bytes, sizeof f->wire_bytes);
        /* r0, the busiest rank on both paths' bandwidth, with its own messages where rows do not ride:
         * flat 2 out and 2 back between nodes; hierarchical (r0 -> r2 -> r3, back r2 -> r0, r3 -> r1 -> r0)
         * 1 out between nodes, and back 1 between nodes and 1 within its node (its receiving side: 1.5) */
        assert_true(fabs(f->layer[0].t_comm - (f0->layer[0].t_comm + 5.0 + (big ? 2.0 : 0.0))) < 1e-6);
        assert_true(fabs(h->layer[0].t_comm - (h0->layer[0].t_comm + 12.5 + (big ? 1.5 : 0.0))) < 1e-6);
        epm_eval_result_destroy(f0);
        epm_eval_result_destroy(h0);
        epm_eval_result_destroy(f);
        epm_eval_result_destroy(h);
    }
    epm_eval_opts o = opts(EPM_MODE_HOME);
    o.inter_latency_s = -1;
    epm_eval_result *f;
    assert_int_equal(epm_eval(t, p, &o, &f), EPM_ERR_INVALID_ARG);
    assert_non_null(strstr(epm_last_error(), "inter_latency_s = -1"));
    epm_placement_destroy(p);
    epm_placement_destroy(p0);
    epm_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_home_counts),       cmocka_unit_test(test_eval_dedup_same_rank),
        cmocka_unit_test(test_eval_follow_counts),     cmocka_unit_test(test_eval_follow_skip_stays),
        cmocka_unit_test(test_eval_replica_prefers_cheap_link), cmocka_unit_test(test_eval_mismatch),
        cmocka_unit_test(test_eval_modelled_time_home), cmocka_unit_test(test_eval_modelled_time_follow),
        cmocka_unit_test(test_eval_bad_opts), cmocka_unit_test(test_eval_seq_ids_home),
        cmocka_unit_test(test_eval_hierarchical_wire), cmocka_unit_test(test_eval_hierarchical_gateways),
        cmocka_unit_test(test_eval_message_latency),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
