/* Token dispatch and combine under mpirun: every rank checks its rows,
 * expert lists, combined output and byte counts against a single-process
 * reference computed from the same seeded data (tests/mpi/a2a_ref.h).
 * Then the runtime's row exchange (comm/xcomm.h) on every transport, blocking
 * and split-phase, against the seeded reference of tests/mpi/xcomm_ref.h;
 * allgather; error agreement with a failure injected on one rank. */
#include "comm_fixture.h"

#include "a2a_ref.h"
#include "epm_config.h"

static void run(scen s, int split)
{
    s.R = R;
    sc_build(&s);
    epm_comm *c = fx_comm(s.vnodes, EPM_HIER_OFF);
    sc_result r;
    sc_run(&s, c, split, &r);
    sc_result_free(&r);
    epm_comm_destroy(c);
    sc_free(&s);
}

static void test_comm_a2a_identity(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 24, .dt = EPM_DTYPE_F32, .identity = 1, .seed = 1}, 0);
    run((scen){.E = 16, .k = 4, .hidden = 8, .dt = EPM_DTYPE_BF16, .identity = 1, .seed = 2}, 1);
}

static void test_comm_a2a_weighted_f32(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 33, .dt = EPM_DTYPE_F32, .seed = 3}, 0);
    run((scen){.E = 5, .k = 3, .hidden = 1, .dt = EPM_DTYPE_F32, .seed = 4}, 1);
}

static void test_comm_a2a_weighted_bf16(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 17, .dt = EPM_DTYPE_BF16, .seed = 5}, 0);
}

static void test_comm_a2a_empty_ranks(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 16, .dt = EPM_DTYPE_F32, .empty_every = 2, .seed = 6}, 0);
    run((scen){.E = 8, .k = 2, .hidden = 16, .dt = EPM_DTYPE_F32, .empty_every = 1, .seed = 7}, 1); /* none anywhere */
}

static void test_comm_a2a_skewed(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 1, .hidden = 16, .dt = EPM_DTYPE_F32, .skew = 1, .seed = 8}, 0);
}

static void test_comm_a2a_replicas(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 16, .dt = EPM_DTYPE_F32, .replicas = 1, .seed = 9}, 0);
    if (R % 2 == 0)
        run((scen){.E = 8, .k = 3, .hidden = 16, .dt = EPM_DTYPE_BF16, .replicas = 1, .vnodes = 2, .seed = 10}, 1);
}

static void test_comm_a2a_follow(void **state)
{
    (void)state;
    run((scen){.E = 8, .k = 2, .hidden = 16, .dt = EPM_DTYPE_F32, .follow = 1, .seed = 11}, 0);
    run((scen){.E = 12, .k = 3, .hidden = 10, .dt = EPM_DTYPE_BF16, .follow = 1, .replicas = 1, .seed = 12}, 1);
}

/* Two layouts in flight at once (micro-batches overlapping), started in the same order on every rank. */
static void test_comm_a2a_overlap(void **state)
{
    (void)state;
    scen s = {.R = R, .E = 8, .k = 2, .hidden = 8, .dt = EPM_DTYPE_F32, .seed = 13};
    sc_build(&s);
    epm_comm *c = fx_comm(0, EPM_HIER_OFF);
    int64_t n = s.ntok[me], g0 = s.first[me];
    uint64_t *keys;
    void *x;
    sc_local(&s, me, &keys, &x);
    epm_a2a_layout *a, *b;
    assert_int_equal(epm_a2a_layout_create(c, s.p, 0, n, 2, s.ids + g0 * 2, s.w + g0 * 2, keys, NULL, &a), EPM_OK);
    assert_int_equal(epm_a2a_layout_create(c, s.p, 0, n, 2, s.ids + g0 * 2, s.w + g0 * 2, keys, NULL, &b), EPM_OK);
    int64_t nr = epm_a2a_rows(a);
    float *ra = epm_malloc((size_t)(nr + 1) * 8 * sizeof(float)), *rb_ = epm_malloc((size_t)(nr + 1) * 8 * sizeof(float));
    assert_int_equal(epm_a2a_dispatch_start(a, x, EPM_DTYPE_F32, 8, ra), EPM_OK);
    assert_int_equal(epm_a2a_dispatch_start(b, x, EPM_DTYPE_F32, 8, rb_), EPM_OK);
    assert_int_equal(epm_a2a_dispatch_wait(b), EPM_OK);
    assert_int_equal(epm_a2a_dispatch_wait(a), EPM_OK);
    assert_memory_equal(ra, rb_, (size_t)nr * 8 * sizeof(float));
    for (int64_t i = 0; i < nr; i++)
        for (int h = 0; h < 8; h++)
            assert_true(ra[i * 8 + h] == sc_x((int64_t)epm_a2a_row_keys(a)[i], h));
    epm_free(ra);
    epm_free(rb_);
    epm_free(x);
    epm_free(keys);
    epm_a2a_layout_destroy(a);
    epm_a2a_layout_destroy(b);
    epm_comm_destroy(c);
    sc_free(&s);
}

/* A bad id on the last rank only: the same error on every rank, no exchange. */
static void test_comm_a2a_bad_input(void **state)
{
    (void)state;
    scen s = {.R = R, .E = 8, .k = 2, .hidden = 8, .dt = EPM_DTYPE_F32, .seed = 14};
    sc_build(&s);
    epm_comm *c = fx_comm(0, EPM_HIER_OFF);
    int64_t n = s.ntok[me] > 0 ? s.ntok[me] : 0, g0 = s.first[me];
    int32_t ids[128];
    uint64_t *keys;
    sc_local(&s, me, &keys, NULL);
    memcpy(ids, s.ids + g0 * 2, (size_t)n * 2 * sizeof(int32_t));
    int bad = R - 1;
    if (me == bad) {
        if (n == 0)
            n = 1, keys[0] = 0, s.w[0] = 1.0f;
        ids[0] = 8; /* experts are 0..7 */
        ids[1] = 0;
    }
    epm_a2a_layout *l = (epm_a2a_layout *)&l;
    epm_status st = epm_a2a_layout_create(c, s.p, 0, n, 2, ids, me == bad ? s.w : s.w + g0 * 2, keys, NULL, &l);
    assert_null(l);
    fx_error_has("rank %d", bad);
    fx_error_has("expert id 8");
    assert_int_equal(st, me == bad ? EPM_ERR_INVALID_ARG : EPM_ERR_REMOTE);

    /* a placement for a different number of ranks: a mismatch everywhere */
    epm_cluster cl;
    epm_cluster_init(&cl, 1, R + 1);
    epm_placement *p2;
    assert_int_equal(epm_placement_create(1, 8, 2, &cl, &p2), EPM_OK);
    for (int e = 0; e < 8; e++)
        assert_int_equal(epm_placement_add(p2, 0, e, e % (R + 1)), EPM_OK);
    st = epm_a2a_layout_create(c, p2, 0, 0, 2, NULL, NULL, NULL, NULL, &l);
    assert_int_equal(st, EPM_ERR_MISMATCH); /* every rank sees it itself */
    fx_error_has("placement is for");
    epm_placement_destroy(p2);

    /* combine rank out of range on rank 0 */
    int cr[64];
    for (int64_t t = 0; t < s.ntok[me]; t++)
        cr[t] = me == 0 ? R : me;
    if (s.ntok[0] > 0) {
        st = epm_a2a_layout_create(c, s.p, 0, s.ntok[me], 2, s.ids + g0 * 2, s.w + g0 * 2, keys, cr, &l);
        assert_int_equal(st, me == 0 ? EPM_ERR_INVALID_ARG : EPM_ERR_REMOTE);
    }
    /* dtype and hidden checked at the call */
    assert_int_equal(epm_a2a_layout_create(c, s.p, 0, s.ntok[me], 2, s.ids + g0 * 2, s.w + g0 * 2, keys, NULL, &l),
                     EPM_OK);
    assert_int_equal(epm_a2a_dispatch(l, NULL, EPM_DTYPE_F16, 8, NULL), EPM_ERR_UNSUPPORTED);
    assert_int_equal(epm_a2a_dispatch(l, NULL, EPM_DTYPE_F32, 0, NULL), EPM_ERR_INVALID_ARG);
    epm_a2a_layout_destroy(l);
    epm_free(keys);
    epm_comm_destroy(c);
    sc_free(&s);
}

/* ---- the runtime's row exchange (xcomm) ---- */

/* buf: reused from case to case, as a layer loop reuses its buffers */
static void exchange_case(epm_xcomm *x, const xscen *s, int vn, epm_xcomm_buf *buf)
{
    int64_t n;
    int *dest;
    float *rows;
    xs_make(s, R, me, &n, &dest, &rows);
    fx_rows r = {0};
    epm_xcomm_wire_reset(x);
    assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, r.counted, &r.rows, &r.src, &r.n), EPM_OK);
    fx_same_ref(&r, fx_xs_ref(s, vn), FX_SRC | FX_COUNTED);
    int64_t again[EPM_LINK_COUNT] = {0};
    assert_int_equal(epm_xcomm_exchange_buf(x, n, dest, rows, XW, XP, again, buf), EPM_OK);
    fx_rows b = fx_got(buf->rows, buf->src, buf->n, again);
    fx_same_ref(&b, fx_xs_ref(s, vn), FX_SRC | FX_COUNTED);
    epm_xcomm_wire w;
    epm_xcomm_wire_get(x, &w);
    assert_int_equal(w.exchanges, 2);
    for (int c = 0; c < EPM_LINK_COUNT; c++)
        w.bytes[c] /= 2;
    if (!epm_xcomm_hierarchical(x)) /* flat: what crossed each link is what eval.h counts */
        for (int c = 0; c < EPM_LINK_COUNT; c++)
            assert_int_equal(w.bytes[c], r.counted[c]);
    fx_rows_free(&r);
    epm_free(dest);
    epm_free(rows);
}

static const xscen xscens[] = {
    {.seed = 1, .dest = XD_RANDOM, .max_rows = 40},
    {.seed = 2, .dest = XD_RANDOM, .max_rows = 9, .empty_every = 2},
    {.seed = 3, .dest = XD_ONE, .max_rows = 30},
    {.seed = 4, .dest = XD_EVEN, .max_rows = 25, .empty_every = 3},
    {.seed = 5, .dest = XD_RANDOM, .max_rows = 0},
};

static void test_comm_xcomm_exchange(void **state)
{
    (void)state;
    for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++)
        for (int vn = 0; vn <= R; vn++) {
            if (vn && R % vn)
                continue;
            epm_xcomm *x = fx_xcomm(vn, (epm_xcomm_a2a)a, EPM_XHIER_OFF);
            epm_xcomm_buf buf = {0};
            for (size_t i = 0; i < sizeof xscens / sizeof *xscens; i++)
                exchange_case(x, &xscens[i], vn, &buf);
            epm_xcomm_buf_free(&buf);
            epm_xcomm_destroy(x);
        }
}

/* The link classes follow the node assignment: one node makes every move
 * intra-node, one rank per node makes every move inter-node. */
static void test_comm_xcomm_virtual_nodes(void **state)
{
    (void)state;
    const xscen *s = &xscens[0];
    int64_t n, nr, tot[2][EPM_LINK_COUNT] = {{0}};
    int *dest, *src;
    float *rows, *out;
    xs_make(s, R, me, &n, &dest, &rows);
    int vns[2] = {1, R};
    for (int v = 0; v < 2; v++) {
        epm_xcomm *x = fx_xcomm(vns[v], EPM_XA2A_ALLTOALLV, EPM_XHIER_OFF);
        epm_cluster cl;
        epm_xcomm_cluster(x, &cl);
        assert_int_equal(cl.nodes, vns[v]);
        for (int r = 0; r < R; r++)
            assert_int_equal(epm_xcomm_node_of(x, r), vns[v] == 1 ? 0 : r);
        assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, tot[v], &out, &src, &nr), EPM_OK);
        assert_int_equal(epm_xcomm_sum_i64(x, tot[v], EPM_LINK_COUNT), EPM_OK);
        epm_free(out);
        epm_free(src);
        epm_xcomm_destroy(x);
    }
    assert_int_equal(tot[0][EPM_LINK_INTER], 0);
    assert_int_equal(tot[1][EPM_LINK_INTRA], 0);
    assert_int_equal(tot[0][EPM_LINK_INTRA], tot[1][EPM_LINK_INTER]);
    if (R > 1)
        assert_true(tot[0][EPM_LINK_INTRA] > 0);
    epm_free(dest);
    epm_free(rows);
}

/* start / wait: two exchanges in flight, waited in either order, deliver
 * what the blocking call does; rows and dest may be overwritten after start */
static void test_comm_xcomm_split_phase(void **state)
{
    (void)state;
    for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++)
        for (int order = 0; order < 2; order++) {
            int vn = R % 2 ? 0 : 2;
            epm_xcomm *x = fx_xcomm(vn, (epm_xcomm_a2a)a, EPM_XHIER_AUTO);
            const xscen *s[2] = {&xscens[0], &xscens[3]};
            epm_xcomm_req *q[2];
            int64_t counted[2][EPM_LINK_COUNT] = {{0}};
            epm_xcomm_buf buf = {0};
            for (int j = 0; j < 2; j++) {
                int64_t n;
                int *dest;
                float *rows;
                xs_make(s[j], R, me, &n, &dest, &rows);
                if (j == 0) /* fresh output; the second one lands in a caller's buffer */
                    assert_int_equal(epm_xcomm_exchange_start(x, n, dest, rows, XW, XP, counted[j], &q[j]), EPM_OK);
                else
                    assert_int_equal(
                        epm_xcomm_exchange_start_buf(x, n, dest, rows, XW, XP, counted[j], &buf, &q[j]), EPM_OK);
                for (int64_t i = 0; i < n; i++) { /* the request holds its own copy */
                    dest[i] = -7;
                    rows[i * XW] = -1.0f;
                }
                epm_free(dest);
                epm_free(rows);
            }
            for (int k = 0; k < 2; k++) {
                int j = order ? 1 - k : k;
                fx_rows r = fx_got(NULL, NULL, 0, counted[j]);
                if (j == 0) {
                    assert_int_equal(epm_xcomm_exchange_wait(q[j], &r.rows, &r.src, &r.n), EPM_OK);
                    fx_same_ref(&r, fx_xs_ref(s[j], vn), FX_SRC | FX_COUNTED);
                    fx_rows_free(&r);
                } else {
                    assert_int_equal(epm_xcomm_exchange_wait_buf(q[j]), EPM_OK);
                    r = fx_got(buf.rows, buf.src, buf.n, counted[j]);
                    fx_same_ref(&r, fx_xs_ref(s[j], vn), FX_SRC | FX_COUNTED);
                }
            }
            epm_xcomm_buf_free(&buf);
            epm_xcomm_destroy(x);
        }
}

/* start_lent: rows already in destination order are sent from the caller's
 * buffer, kept until the wait, while another exchange runs meanwhile (as an
 * asynchronous rebalance's copies run under the passes): what the blocking
 * call delivers, and what it counts */
static void test_comm_xcomm_start_lent(void **state)
{
    (void)state;
    for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++)
        for (int vn = 0; vn <= (R % 2 ? 0 : 2); vn += 2) {
            epm_xcomm *x = fx_xcomm(vn, (epm_xcomm_a2a)a, EPM_XHIER_AUTO);
            int64_t n, nr, nr2;
            int *dest, *src, *src2;
            float *rows, *out, *out2;
            xs_make(&xscens[3], R, me, &n, &dest, &rows);
            for (int64_t i = 1; i < n; i++) /* (by destination, stable) */
                for (int64_t j = i; j > 0 && dest[j - 1] > dest[j]; j--) {
                    const int d = dest[j];
                    float tmp[XW];
                    dest[j] = dest[j - 1], dest[j - 1] = d;
                    memcpy(tmp, rows + j * XW, sizeof tmp);
                    memcpy(rows + j * XW, rows + (j - 1) * XW, sizeof tmp);
                    memcpy(rows + (j - 1) * XW, tmp, sizeof tmp);
                }
            int64_t c0[EPM_LINK_COUNT] = {0}, c1[EPM_LINK_COUNT] = {0};
            assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, c0, &out, &src, &nr), EPM_OK);
            epm_xcomm_buf buf = {0};
            epm_xcomm_req *q;
            assert_int_equal(epm_xcomm_exchange_start_lent(x, n, dest, rows, XW, XP, c1, &buf, &q), EPM_OK);
            assert_int_equal(epm_xcomm_exchange(x, n, dest, rows, XW, XP, NULL, &out2, &src2, &nr2), EPM_OK);
            assert_int_equal(epm_xcomm_exchange_wait_buf(q), EPM_OK);
            assert_int_equal(buf.n, nr);
            assert_memory_equal(buf.src, src, (size_t)nr * sizeof *src);
            assert_memory_equal(buf.rows, out, (size_t)nr * XW * sizeof *out);
            assert_memory_equal(c1, c0, sizeof c0);
            assert_int_equal(nr2, nr);
            epm_free(out), epm_free(src), epm_free(out2), epm_free(src2);
            epm_free(dest), epm_free(rows);
            epm_xcomm_buf_free(&buf);
            epm_xcomm_destroy(x);
        }
}

static void test_comm_xcomm_bad_input(void **state)
{
    (void)state;
    epm_xcomm_a2a a;
    epm_xcomm_hier h;
    assert_int_equal(epm_xcomm_a2a_parse("p2p", &a), EPM_OK);
    assert_int_equal(a, EPM_XA2A_P2P);
    assert_int_equal(epm_xcomm_a2a_parse("alltoall", &a), EPM_ERR_INVALID_ARG);
    fx_error_has("'alltoall'");
    assert_int_equal(epm_xcomm_hier_parse("sometimes", &h), EPM_ERR_INVALID_ARG);
    fx_error_has("EPM_A2A_HIER");
    epm_xcomm_opts o;
    epm_xcomm_opts_init(&o);
    o.a2a = (epm_xcomm_a2a)9;
    epm_xcomm *x = NULL;
    assert_int_equal(epm_xcomm_create_opts(&o, &x), EPM_ERR_INVALID_ARG);
    assert_null(x);
#if !EPM_HAVE_NCCL
    o.a2a = EPM_XA2A_NCCL; /* fails everywhere; rank 0's error is the one reported */
    assert_int_equal(epm_xcomm_create_opts(&o, &x), me == 0 ? EPM_ERR_UNSUPPORTED : EPM_ERR_REMOTE);
    fx_error_has("no NCCL");
#endif
    /* a caller's bug on the last rank alone (a destination out of range, a
     * rank listed twice) fails the exchange on every rank, with the cause on
     * the others, and the communicator stays usable: flat and hierarchical,
     * single- and multi-destination */
    for (int hier = 0; hier < 2; hier++) {
        if (hier && (R < 2 || R % 2))
            continue;
        x = fx_xcomm(hier ? 2 : 0, EPM_XA2A_ALLTOALLV, hier ? EPM_XHIER_ON : EPM_XHIER_OFF);
        int bad = R - 1;
        int dest[2] = {0, me == bad ? R : 0};
        float rows[2 * XW] = {0};
        epm_xcomm_req *q = (epm_xcomm_req *)&q;
        assert_int_equal(epm_xcomm_exchange_start(x, 2, dest, rows, XW, XP, NULL, &q),
                         me == bad ? EPM_ERR_INVALID_ARG : EPM_ERR_REMOTE);
        assert_null(q);
        if (me == bad)
            fx_error_has("row 1 goes to rank");
        else
            fx_error_has("rank %d: invalid argument: exchange: row 1 goes to rank %d of %d", bad, R, R);
        int mdest[4] = {0, -1, 0, me == bad ? 0 : -1}; /* row 1 lists rank 0 twice on the bad rank */
        float *out;
        int *src;
        int64_t nr;
        assert_int_equal(epm_xcomm_exchange_multi(x, 2, 2, mdest, NULL, rows, XW, XP, NULL, &out, &src, &nr),
                         me == bad ? EPM_ERR_INVALID_ARG : EPM_ERR_REMOTE);
        assert_null(out);
        if (me == bad)
            fx_error_has("lists rank 0 twice");
        /* the next exchange works */
        assert_int_equal(epm_xcomm_exchange(x, 2, (int[]){0, 0}, rows, XW, XP, NULL, &out, &src, &nr), EPM_OK);
        assert_int_equal(nr, me == 0 ? 2 * R : 0);
        epm_free(out);
        epm_free(src);
        epm_xcomm_destroy(x);
    }
}

static void test_comm_xcomm_allgather(void **state)
{
    (void)state;
    int vn = R % 2 ? 0 : 2;
    epm_xcomm *x = fx_xcomm(vn, EPM_XA2A_ALLTOALLV, EPM_XHIER_AUTO);
    /* rows that ride with the counts (small), that outgrow a message on some rank (huge: a step
     * follows), and small again with riding off: the same rows and bytes each way */
    const xscen huge = {.seed = 23, .dest = XD_RANDOM, .max_rows = 60000};
    const xscen *seq[3] = {&xscens[1], &huge, &xscens[1]};
    for (int j = 0; j < 3; j++) {
        const xscen *s = seq[j];
        int64_t n, nr, counted[EPM_LINK_COUNT] = {0}, want[EPM_LINK_COUNT] = {0};
        int *dest;
        float *rows, *out;
        xs_make(s, R, me, &n, &dest, &rows);
        epm_xcomm_set_eager(x, j < 2);
        epm_xcomm_wire_reset(x);
        assert_int_equal(epm_xcomm_allgather(x, n, rows, XW, XP, counted, &out, &nr), EPM_OK);
        int64_t k = 0;
        for (int q = 0; q < R; q++) {
            for (int64_t i = 0; i < xs_rows(s, q); i++, k++)
                for (int c = 0; c < XW; c++)
                    assert_true(out[k * XW + c] == xs_val(q, i, c));
            if (q != me)
                want[xs_link(R, vn, me, q)] += n * XP * (int64_t)sizeof(float);
        }
        assert_int_equal(nr, k);
        for (int c = 0; c < EPM_LINK_COUNT; c++)
            assert_int_equal(counted[c], want[c]);
        epm_xcomm_wire w;
        epm_xcomm_wire_get(x, &w);
        assert_int_equal(w.gathers, 1);
        assert_int_equal(w.gathers_fused, j == 0 || (j == 1 && R == 1) ? 1 : 0);
        epm_free(out);
        epm_free(dest);
        epm_free(rows);
    }
    epm_xcomm_set_eager(x, 1);
    epm_xcomm_destroy(x);
}

/* One exchange of scenario s into buf, its rows and counted bytes checked
 * against the reference; returns the wire it alone made. */
static epm_xcomm_wire xs_exchange_checked(epm_xcomm *x, const xscen *s, int vn, epm_xcomm_buf *buf)
{
    int64_t n;
    int *dest;
    float *rows;
    xs_make(s, R, me, &n, &dest, &rows);
    epm_xcomm_wire_reset(x);
    int64_t counted[EPM_LINK_COUNT] = {0};
    assert_int_equal(epm_xcomm_exchange_buf(x, n, dest, rows, XW, XP, counted, buf), EPM_OK);
    fx_rows b = fx_got(buf->rows, buf->src, buf->n, counted);
    fx_same_ref(&b, fx_xs_ref(s, vn), FX_SRC | FX_COUNTED);
    epm_xcomm_wire w;
    epm_xcomm_wire_get(x, &w);
    epm_free(dest);
    epm_free(rows);
    return w;
}

/* Room offered in the counts phase (epm_xcomm_counts_fit): an exchange into
 * a buffer that already holds room for what all ranks send agrees nothing
 * after its counts, one that outgrew it does, and each gets the same rows.
 * Every rank counts the same hops agreed: the decision is everyone's. */
static void test_comm_xcomm_room(void **state)
{
    (void)state;
    const xscen small = {.seed = 11, .dest = XD_RANDOM, .max_rows = 12},
                big = {.seed = 12, .dest = XD_RANDOM, .max_rows = 400};
    for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++) {
        epm_xcomm *x = fx_xcomm(0, (epm_xcomm_a2a)a, EPM_XHIER_OFF);
        epm_xcomm_set_eager(x, 0); /* (rows riding with the counts would leave no step to agree on) */
        epm_xcomm_buf buf = {0};
        /* small three times, big once, small with the room switched off */
        const xscen *seq[5] = {&small, &small, &small, &big, &small};
        int64_t agreed[5];
        for (int i = 0; i < 5; i++) {
            epm_xcomm_set_room(x, i < 4);
            epm_xcomm_wire w = xs_exchange_checked(x, seq[i], 0, &buf);
            assert_int_equal(w.hops, 1);
            agreed[i] = w.hops_agreed;
            /* (the same on every rank) */
            int64_t all = agreed[i];
            assert_int_equal(epm_xcomm_sum_i64(x, &all, 1), EPM_OK);
            assert_int_equal(all, R * agreed[i]);
        }
        epm_xcomm_set_room(x, 1);
        if (a == EPM_XA2A_P2P) { /* (its steps allocate datatypes after the counts: always agreed) */
            for (int i = 0; i < 5; i++)
                assert_int_equal(agreed[i], 1);
        } else {
            /* the first has only what nobody sent before; the big one outgrew the room the
             * small ones left (R x 400 rows > 1.25 x R x 12) */
            int64_t want[5] = {1, 0, 0, 1, 1};
            for (int i = 0; i < 5; i++)
                assert_int_equal(agreed[i], want[i]);
        }
        epm_xcomm_buf_free(&buf);
        epm_xcomm_destroy(x);
    }
}

/* Rows riding with their counts (epm_xcomm_counts_rows): small exchanges
 * take no step after the counts on any hop, flat or hierarchical; exchanges
 * where some rank's rows for a peer outgrow a counts message take one, with
 * the peers whose rows rode left out of it; with riding off every hop steps.
 * The rows are the reference's in every case, and every rank counts the
 * same fused hops: the decision is everyone's. */
static void test_comm_xcomm_fused(void **state)
{
    (void)state;
    const xscen small = {.seed = 21, .dest = XD_RANDOM, .max_rows = 12},
                huge = {.seed = 22, .dest = XD_RANDOM, .max_rows = 60000}; /* (28-byte rows: 2,340 ride a message) */
    const int vn = R >= 4 && R % 2 == 0 ? 2 : 0;
    for (int a = EPM_XA2A_ALLTOALLV; a <= EPM_XA2A_P2P; a++)
        for (int hier = 0; hier < 1 + (vn > 0); hier++) {
            epm_xcomm *x = fx_xcomm(vn, (epm_xcomm_a2a)a, hier ? EPM_XHIER_ON : EPM_XHIER_OFF);
            epm_xcomm_buf buf = {0};
            /* (the last: riding off on rank 0 alone, a misuse that must still deliver every row) */
            const xscen *seq[5] = {&small, &huge, &small, &huge, &small};
            for (int i = 0; i < 5; i++) {
                epm_xcomm_set_eager(x, i < 2 || (i == 4 && me != 0));
                epm_xcomm_wire w = xs_exchange_checked(x, seq[i], vn, &buf);
                assert_int_equal(w.hops, hier ? 2 : 1);
                if (i >= 2 && R > 1) /* riding off (on rank 0: it has rows that did not ride, so a step follows) */
                    assert_int_equal(w.hops_fused, 0);
                else if (i == 0) /* small: every hop in one phase, nothing to agree after it */
                    assert_int_equal(w.hops_fused, w.hops);
                else if (R > 1) /* huge: some rank's rows for a peer outgrow a message on every hop */
                    assert_int_equal(w.hops_fused, 0);
                if (i == 0)
                    assert_int_equal(w.hops_agreed, 0);
                int64_t all = w.hops_fused;
                assert_int_equal(epm_xcomm_sum_i64(x, &all, 1), EPM_OK);
                assert_int_equal(all, R * w.hops_fused);
            }
            epm_xcomm_set_eager(x, 1);
            epm_xcomm_buf_free(&buf);
            epm_xcomm_destroy(x);
        }
}

/* one failure, on one rank: every rank returns an error that names it */
static void test_comm_xcomm_agree(void **state)
{
    (void)state;
    epm_xcomm *x = fx_xcomm(0, EPM_XA2A_ALLTOALLV, EPM_XHIER_OFF);
    assert_int_equal(epm_xcomm_agree(x, EPM_OK), EPM_OK);
    int bads[2] = {R - 1, R / 2};
    for (int b = 0; b < 2; b++) {
        int bad = bads[b];
        epm_status local = me == bad ? epm_fail(EPM_ERR_IO, "injected failure on rank %d", me) : EPM_OK;
        epm_status st = epm_xcomm_agree(x, local);
        assert_int_equal(st, me == bad ? EPM_ERR_IO : EPM_ERR_REMOTE);
        fx_error_has("rank %d: ", bad);
        fx_error_has("injected failure on rank %d", bad);
    }
    /* several failing ranks: the lowest one is named everywhere */
    epm_status local = me % 2 ? epm_fail(EPM_ERR_FORMAT, "odd rank %d", me) : EPM_OK;
    epm_status st = epm_xcomm_agree(x, local);
    if (R == 1) {
        assert_int_equal(st, EPM_OK);
    } else {
        assert_int_equal(st, me == 1 ? EPM_ERR_FORMAT : EPM_ERR_REMOTE);
        fx_error_has("odd rank 1");
    }
    epm_xcomm_destroy(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        FX_TEST(test_comm_a2a_identity),
        FX_TEST(test_comm_a2a_weighted_f32),
        FX_TEST(test_comm_a2a_weighted_bf16),
        FX_TEST(test_comm_a2a_empty_ranks),
        FX_TEST(test_comm_a2a_skewed),
        FX_TEST(test_comm_a2a_replicas),
        FX_TEST(test_comm_a2a_follow),
        FX_TEST(test_comm_a2a_overlap),
        FX_TEST(test_comm_a2a_bad_input),
        FX_TEST(test_comm_xcomm_exchange),
        FX_TEST(test_comm_xcomm_virtual_nodes),
        FX_TEST(test_comm_xcomm_split_phase),
        FX_TEST(test_comm_xcomm_start_lent),
        FX_TEST(test_comm_xcomm_room),
        FX_TEST(test_comm_xcomm_fused),
        FX_TEST(test_comm_xcomm_bad_input),
        FX_TEST(test_comm_xcomm_allgather),
        FX_TEST(test_comm_xcomm_agree),
    };
    return fx_main(tests);
}
