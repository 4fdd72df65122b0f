/* Topology and the small collectives under mpirun: node assignment (real
 * and virtual), the shared cluster description and its mismatch message,
 * the hwloc bindings line, error agreement, all-gather with byte counts. */
#include <mpi.h>

#include "comm_fixture.h"

static void test_comm_topology_real_nodes(void **state)
{
    (void)state;
    epm_comm *c = fx_comm(0, EPM_HIER_AUTO);
    assert_int_equal(epm_comm_size(c), R);
    assert_int_equal(epm_comm_rank(c), me);
    /* one machine: one node holding every rank */
    assert_int_equal(epm_comm_nodes(c), 1);
    assert_int_equal(epm_comm_node(c), 0);
    assert_int_equal(epm_comm_ranks_per_node(c), R);
    assert_int_equal(epm_comm_local_rank(c), me);
    assert_int_equal(epm_comm_transport(c), EPM_TRANSPORT_MPI);
    epm_cluster cl;
    epm_comm_cluster(c, &cl);
    assert_int_equal(cl.nodes, 1);
    assert_int_equal(cl.gpus_per_node, R);
    assert_int_equal(epm_comm_check_cluster(c, &cl), EPM_OK);
    epm_comm_destroy(c);
}

static void test_comm_topology_virtual_nodes(void **state)
{
    (void)state;
    for (int v = 1; v <= R; v++) {
        if (R % v)
            continue;
        epm_comm *c = fx_comm(v, EPM_HIER_AUTO);
        int P = R / v;
        assert_int_equal(epm_comm_nodes(c), v);
        assert_int_equal(epm_comm_ranks_per_node(c), P);
        assert_int_equal(epm_comm_node(c), me / P);
        assert_int_equal(epm_comm_local_rank(c), me % P);
        epm_cluster cl;
        epm_comm_cluster(c, &cl);
        for (int a = 0; a < R; a++)
            for (int b = 0; b < R; b++)
                assert_int_equal(epm_comm_link(c, a, b), epm_cluster_link(&cl, a, b));
        /* a plan for another shape: the message names both views */
        epm_cluster other;
        epm_cluster_init(&other, v + 1, P);
        assert_int_equal(epm_comm_check_cluster(c, &other), EPM_ERR_MISMATCH);
        fx_error_has("%d node(s) x %d rank(s) but this run has %d node(s) x %d rank(s)", v + 1, P, v, P);
        epm_comm_destroy(c);
    }
    /* a count that does not divide the ranks fails on every rank */
    epm_comm_opts o;
    epm_comm_opts_init(&o);
    o.virtual_nodes = R + 1;
    epm_comm *c = (epm_comm *)&o;
    assert_int_equal(epm_comm_create(&o, &c), EPM_ERR_INVALID_ARG);
    assert_null(c);
    fx_error_has("does not divide");
    o.virtual_nodes = -1;
    assert_int_equal(epm_comm_create(&o, &c), EPM_ERR_INVALID_ARG);
}

static void test_comm_topology_binding(void **state)
{
    (void)state;
    epm_comm *c = fx_comm(0, EPM_HIER_AUTO);
    const char *b = epm_comm_binding(c);
    char want[32];
    snprintf(want, sizeof want, "rank %d: node 0 of 1", me);
    assert_non_null(strstr(b, want));
    assert_non_null(strstr(b, "NUMA"));
    /* either a GPU is named with its index, or the line says there is none */
    assert_true(strstr(b, "no GPU (CPU-only)") != NULL ? epm_comm_gpu(c) == -1 : epm_comm_gpu(c) >= 0);
    assert_ptr_equal(epm_comm_binding(c), b); /* computed once */
    epm_comm_destroy(c);
}

static void test_comm_topology_transport_opts(void **state)
{
    (void)state;
    epm_transport_kind k;
    assert_int_equal(epm_transport_parse("staged", &k), EPM_OK);
    assert_int_equal(k, EPM_TRANSPORT_STAGED);
    assert_int_equal(epm_transport_parse("gloo", &k), EPM_ERR_INVALID_ARG);
    fx_error_has("'gloo'");
    epm_comm_opts o;
    epm_comm_opts_init(&o);
    o.transport = EPM_TRANSPORT_NCCL; /* host buffers cannot go through NCCL */
    epm_comm *c;
    assert_int_equal(epm_comm_create(&o, &c), EPM_ERR_INVALID_ARG);
    fx_error_has("device_buffers");
    o.transport = EPM_TRANSPORT_MPI;
    o.device_buffers = 1;
    assert_int_equal(epm_comm_create(&o, &c), EPM_ERR_INVALID_ARG);
}

static void test_comm_topology_agree(void **state)
{
    (void)state;
    epm_comm *c = fx_comm(0, EPM_HIER_AUTO);
    epm_status g;
    assert_int_equal(epm_comm_agree(c, EPM_OK, &g), EPM_OK);
    assert_int_equal(g, EPM_OK);
    /* the two highest ranks fail; the lowest of them is reported everywhere */
    int bad = R > 1 ? R - 2 : 0;
    epm_status local = EPM_OK;
    if (me >= bad)
        local = epm_fail(EPM_ERR_FORMAT, "trace.safetensors: topk_ids.%d has %d columns", me, me + 2);
    /* a failing rank keeps its own error; the others report the lowest failing rank's */
    assert_int_equal(epm_comm_agree(c, local, &g), me >= bad ? EPM_ERR_FORMAT : EPM_ERR_REMOTE);
    assert_int_equal(g, me >= bad ? EPM_ERR_FORMAT : EPM_ERR_REMOTE);
    int who = me >= bad ? me : bad;
    fx_error_has("rank %d", who);
    fx_error_has("topk_ids.%d has %d columns", who, who + 2);
    epm_comm_destroy(c);
}

static void test_comm_topology_collectives(void **state)
{
    (void)state;
    epm_comm *c = fx_comm(R % 2 == 0 ? 2 : 1, EPM_HIER_AUTO);
    /* rank r contributes r+1 rows of 3 floats, the last one metadata */
    float mine[16 * 3];
    for (int i = 0; i <= me; i++)
        for (int j = 0; j < 3; j++)
            mine[i * 3 + j] = (float)(me * 100 + i * 10 + j);
    void *all;
    size_t counts[16], total;
    epm_comm_stats_reset(c);
    size_t bytes = (size_t)(me + 1) * 3 * sizeof(float);
    assert_int_equal(epm_comm_allgatherv(c, mine, bytes, bytes / 3 * 2, &all, counts, &total), EPM_OK);
    size_t off = 0;
    for (int r = 0; r < R; r++) {
        assert_int_equal(counts[r], (size_t)(r + 1) * 3 * sizeof(float));
        const float *f = (const float *)((const char *)all + off);
        for (int i = 0; i <= r; i++)
            for (int j = 0; j < 3; j++)
                assert_true(f[i * 3 + j] == (float)(r * 100 + i * 10 + j));
        off += counts[r];
    }
    assert_int_equal(total, off);
    epm_free(all);
    epm_comm_stats st;
    epm_comm_stats_get(c, &st);
    int P = epm_comm_ranks_per_node(c);
    int64_t payload = (int64_t)(bytes / 3 * 2);
    assert_int_equal(st.model[EPM_PHASE_ALLGATHER][EPM_LINK_SELF], 0);
    assert_int_equal(st.model[EPM_PHASE_ALLGATHER][EPM_LINK_INTRA], payload * (P - 1));
    assert_int_equal(st.model[EPM_PHASE_ALLGATHER][EPM_LINK_INTER], payload * (R - P));
    assert_int_equal(st.ops[EPM_PHASE_ALLGATHER], 1);
    epm_comm_stats_reset(c);
    epm_comm_stats_get(c, &st);
    assert_int_equal(st.model[EPM_PHASE_ALLGATHER][EPM_LINK_INTER], 0);

    int64_t v[2] = {me, 1};
    assert_int_equal(epm_comm_allreduce_sum_i64(c, v, 2), EPM_OK);
    assert_int_equal(v[0], (int64_t)R * (R - 1) / 2);
    assert_int_equal(v[1], R);
    int64_t m = me * 3;
    assert_int_equal(epm_comm_allreduce_max_i64(c, &m, 1), EPM_OK);
    assert_int_equal(m, (R - 1) * 3);
    double d = me == 0 ? 2.5 : 1.0;
    assert_int_equal(epm_comm_allreduce_max_f64(c, &d, 1), EPM_OK);
    assert_true(d == 2.5);
    char word[8] = "";
    if (me == R - 1)
        strcpy(word, "epmoe");
    assert_int_equal(epm_comm_bcast(c, R - 1, word, sizeof word), EPM_OK);
    assert_string_equal(word, "epmoe");
    void *g;
    size_t gb;
    assert_int_equal(epm_comm_gatherv(c, 0, &me, sizeof me, &g, &gb), EPM_OK);
    if (me == 0) {
        assert_int_equal(gb, (size_t)R * sizeof(int));
        for (int r = 0; r < R; r++)
            assert_int_equal(((int *)g)[r], r);
    } else {
        assert_null(g);
    }
    epm_free(g);
    assert_int_equal(epm_comm_barrier(c), EPM_OK);
    epm_comm_destroy(c);
}

/* The n-th allocation of epm_comm_create fails on the last rank only, for
 * every n: every rank must come back with an error (the failing rank's own,
 * the others naming it) instead of waiting in a collective it left, and a
 * create after that must work. Virtual nodes and the shared-memory split
 * allocate at different points, so both are swept. */
static void test_comm_topology_alloc_sweep(void **state)
{
    (void)state;
    int F = R - 1;
    for (int vn = 0; vn <= (R % 2 == 0 ? 2 : 0); vn += 2) {
        epm_comm_opts o;
        epm_comm_opts_init(&o);
        o.virtual_nodes = vn;
        uint64_t n = 1;
        for (;; n++) {
            epm_comm *c = (epm_comm *)0x1;
            if (me == F)
                epm_fault_fail_nth_alloc(n);
            epm_status st = epm_comm_create(&o, &c);
            unsigned long long made = epm_fault_alloc_count();
            epm_fault_fail_nth_alloc(0);
            MPI_Bcast(&made, 1, MPI_UNSIGNED_LONG_LONG, F, MPI_COMM_WORLD);
            if (made < n) { /* no n-th allocation: every point has been failed */
                assert_int_equal(st, EPM_OK);
                epm_comm_destroy(c);
                break;
            }
            assert_int_not_equal(st, EPM_OK);
            assert_null(c);
            if (me == F) {
                assert_int_equal(st, EPM_ERR_NOMEM);
                fx_error_has("allocation");
            } else {
                assert_int_equal(st, EPM_ERR_REMOTE);
                fx_error_has("rank %d", F);
            }
        }
        assert_true(n > 2); /* the sweep reached the allocations it is about */
        if (me == F)
            fprintf(stderr, "epm_comm_create, %d virtual node(s): %llu allocation points failed cleanly\n", vn,
                    (unsigned long long)(n - 1));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        FX_TEST(test_comm_topology_real_nodes), FX_TEST(test_comm_topology_virtual_nodes),
        FX_TEST(test_comm_topology_binding),    FX_TEST(test_comm_topology_transport_opts),
        FX_TEST(test_comm_topology_agree),      FX_TEST(test_comm_topology_collectives),
        FX_TEST(test_comm_topology_alloc_sweep),
    };
    return fx_main(tests);
}
