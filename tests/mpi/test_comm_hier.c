/* The hierarchical all-to-all (one gateway per node pair, Tutel's 2DH idea)
 * against the flat one under virtual nodes: the same rows, expert lists and
 * combined outputs bit for bit, the same eval.h model bytes, and fewer
 * inter-node bytes on the wire when tokens choose several ranks of a node.
 * Then the runtime's row exchange (comm/xcomm.h): hierarchical (2DH) ==
 * flat bit for bit on every transport, with fewer messages between nodes. */
#include "comm_fixture.h"

#include "a2a_ref.h"

static void compare(scen s, int vnodes)
{
    s.R = R;
    s.vnodes = vnodes;
    sc_build(&s);
    epm_comm *cf = fx_comm(vnodes, EPM_HIER_OFF), *ch = fx_comm(vnodes, EPM_HIER_ON),
             *ca = fx_comm(vnodes, EPM_HIER_AUTO);
    sc_result f, h, a;
    sc_run(&s, cf, 0, &f);
    sc_run(&s, ch, 1, &h);
    sc_run(&s, ca, 0, &a);
    int can = vnodes > 1 && R / vnodes > 1;
    assert_int_equal(f.hier, 0);
    assert_int_equal(h.hier, can);
    size_t rb = (size_t)s.hidden * epm_dtype_size(s.dt);
    assert_int_equal(f.nrows, h.nrows);
    assert_int_equal(f.nout, h.nout);
    assert_memory_equal(f.rows, h.rows, (size_t)f.nrows * rb);
    assert_memory_equal(f.out, h.out, (size_t)f.nout * rb);
    assert_memory_equal(f.out_keys, h.out_keys, (size_t)f.nout * sizeof(uint64_t));
    assert_memory_equal(f.out, a.out, (size_t)f.nout * rb);
    assert_memory_equal(f.stats.model, h.stats.model, sizeof f.stats.model);
    /* on the wire, summed over ranks: the hierarchical dispatch crosses
     * between nodes once per (token, node) instead of once per (token, rank) */
    int64_t w[4] = {f.stats.wire[EPM_PHASE_DISPATCH][EPM_LINK_INTER], h.stats.wire[EPM_PHASE_DISPATCH][EPM_LINK_INTER],
                    f.stats.wire[EPM_PHASE_COMBINE][EPM_LINK_INTER], h.stats.wire[EPM_PHASE_COMBINE][EPM_LINK_INTER]};
    assert_int_equal(epm_comm_allreduce_sum_i64(cf, w, 4), EPM_OK);
    if (can) {
        assert_true(w[1] <= w[0]);
        assert_int_equal(w[3], w[2]); /* combine rows are not merged: the sum order stays fixed */
        if (s.k > 1 && R / vnodes > 1 && !s.skew)
            assert_true(w[1] < w[0]);
        assert_int_equal(h.stats.hier_ops, 2);
    } else {
        assert_int_equal(w[1], w[0]);
    }
    sc_result_free(&f);
    sc_result_free(&h);
    sc_result_free(&a);
    epm_comm_destroy(cf);
    epm_comm_destroy(ch);
    epm_comm_destroy(ca);
    sc_free(&s);
}

static void each_vnodes(scen s)
{
    for (int v = 1; v <= R; v++)
        if (R % v == 0)
            compare(s, v);
}

static void test_comm_hier_home(void **state)
{
    (void)state;
    each_vnodes((scen){.E = 16, .k = 4, .hidden = 12, .dt = EPM_DTYPE_F32, .seed = 21});
    each_vnodes((scen){.E = 8, .k = 2, .hidden = 9, .dt = EPM_DTYPE_BF16, .empty_every = 3, .seed = 22});
}

static void test_comm_hier_follow(void **state)
{
    (void)state;
    each_vnodes((scen){.E = 16, .k = 3, .hidden = 12, .dt = EPM_DTYPE_F32, .follow = 1, .seed = 23});
    each_vnodes((scen){.E = 8, .k = 2, .hidden = 5, .dt = EPM_DTYPE_BF16, .follow = 1, .replicas = 1, .seed = 24});
}

static void test_comm_hier_skewed(void **state)
{
    (void)state;
    each_vnodes((scen){.E = 8, .k = 1, .hidden = 8, .dt = EPM_DTYPE_F32, .skew = 1, .seed = 25});
}

/* ---- the runtime's row exchange (xcomm) ---- */

/* one blocking exchange on a fresh communicator; r's wire summed over ranks */
static void xrun(const xscen *s, int vn, epm_xcomm_a2a a2a, epm_xcomm_hier hier, int want_hier, fx_rows *r)
{
    epm_xcomm *x = fx_xcomm(vn, a2a, hier);
    assert_int_equal(epm_xcomm_hierarchical(x), want_hier);
    int64_t n;
    int *dest;
    float *rows;
    xs_make(s, R, me, &n, &dest, &rows);
    *r = (fx_rows){0};
    assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, r->counted, &r->rows, &r->src, &r->n), EPM_OK);
    fx_wire_sum(x, r);
    assert_int_equal(r->wire.hier_exchanges, want_hier);
    epm_free(dest);
    epm_free(rows);
    epm_xcomm_destroy(x);
}

static void xcompare(const xscen *s, int vn, epm_xcomm_a2a a2a)
{
    int P = R / vn;
    fx_rows f, h, a;
    xrun(s, vn, a2a, EPM_XHIER_OFF, 0, &f);
    xrun(s, vn, a2a, EPM_XHIER_ON, 1, &h);
    xrun(s, vn, a2a, EPM_XHIER_AUTO, 0, &a); /* (auto: the flat path) */
    /* the same rows from the same sources in the same order, and the same model bytes */
    fx_same(&h, &f, FX_SRC | FX_COUNTED);
    fx_same(&a, &f, FX_ROWS);
    /* and what the reference says they are */
    fx_same_ref(&h, fx_xs_ref(s, vn), FX_ROWS);
    /* every row crosses between nodes once either way, but the hierarchical
     * path does it in at most one message per rank and other node (flat:
     * one per rank and rank of another node); gathering shows up as
     * intra-node bytes */
    assert_int_equal(h.wire.bytes[EPM_LINK_INTER], f.wire.bytes[EPM_LINK_INTER]);
    assert_true(h.wire.msgs[EPM_LINK_INTER] <= (int64_t)R * (vn - 1));
    assert_true(f.wire.msgs[EPM_LINK_INTER] <= (int64_t)R * (R - P));
    assert_true(h.wire.bytes[EPM_LINK_INTRA] >= f.wire.bytes[EPM_LINK_INTRA]);
    if (s->dest == XD_RANDOM && s->max_rows >= 40 && !s->empty_every)
        assert_true(h.wire.msgs[EPM_LINK_INTER] < f.wire.msgs[EPM_LINK_INTER]);
    fx_rows_free(&f);
    fx_rows_free(&h);
    fx_rows_free(&a);
}

static void test_comm_hier_xcomm(void **state)
{
    (void)state;
    static const xscen sc[] = {
        {.seed = 11, .dest = XD_RANDOM, .max_rows = 60},
        {.seed = 12, .dest = XD_RANDOM, .max_rows = 20, .empty_every = 2},
        {.seed = 13, .dest = XD_ONE, .max_rows = 30},
        {.seed = 14, .dest = XD_EVEN, .max_rows = 25, .empty_every = 3},
        {.seed = 15, .dest = XD_RANDOM, .max_rows = 0},
    };
    int splits = 0;
    for (int vn = 2; vn < R; vn++) {
        if (R % vn || R / vn < 2)
            continue; /* a useful split: several nodes of several ranks */
        splits++;
        for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++)
            for (size_t i = 0; i < sizeof sc / sizeof *sc; i++)
                xcompare(&sc[i], vn, (epm_xcomm_a2a)a);
    }
    if (!splits && me == 0)
        printf("xcomm hierarchical: %d rank(s) have no split into several nodes of several ranks: nothing to compare\n",
               R);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        FX_TEST(test_comm_hier_home),
        FX_TEST(test_comm_hier_follow),
        FX_TEST(test_comm_hier_skewed),
        FX_TEST(test_comm_hier_xcomm),
    };
    return fx_main(tests);
}
