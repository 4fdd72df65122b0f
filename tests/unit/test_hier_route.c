/* comm/hier_route.h: the hierarchical exchange's gateways, which the exchange
 * takes and plan eval prices (tests/mpi/test_comm_multi.c checks the former
 * at 9 ranks, test_eval and test_run the latter). By hand, then the rules
 * over random rows. */
#include "test_util.h"

#include <stdlib.h>

#include "hier_route.h"

static void gws(int src, int P, int n, const int *dest, uint64_t key, int *gw)
{
    epm_hier_gateways(src, P, n, dest, key, gw);
}

static void test_by_hand(void **state)
{
    (void)state;
    int gw[4];
    /* 4 ranks a node, src r1 (node 0, local 1) */
    gws(1, 4, 2, (const int[]){5, 6}, 0, gw); /* r5 has src's local index: no gathering copy */
    assert_int_equal(gw[0], 1);
    assert_int_equal(gw[1], 1);
    gws(1, 4, 2, (const int[]){6, 7}, 0, gw); /* none free: the ((0 + node 1) mod 2)-th, r7: local 3 */
    assert_int_equal(gw[0], 3);
    assert_int_equal(gw[1], 3);
    gws(1, 4, 2, (const int[]){6, 7}, 1, gw); /* another key, the other: r6, local 2 */
    assert_int_equal(gw[0], 2);
    assert_int_equal(gw[1], 2);
    gws(1, 4, 3, (const int[]){2, -1, 6}, 5, gw); /* r2 receives the row anyway: r6's gateway */
    assert_int_equal(gw[0], 2);
    assert_int_equal(gw[1], -1);
    assert_int_equal(gw[2], 2);
    gws(1, 4, 3, (const int[]){9, 6, 10}, 0, gw); /* node 2 through src itself (r9), node 1 by rotation */
    assert_int_equal(gw[0], 1);
    assert_int_equal(gw[1], 2);
    assert_int_equal(gw[2], 1);
    /* several already receive: the first of the node's slots whose local index one has */
    gws(0, 4, 4, (const int[]){2, 3, 6, 7}, 0, gw);
    assert_int_equal(gw[2], 2);
    assert_int_equal(gw[3], 2);
    gws(0, 4, 4, (const int[]){2, 3, 7, 6}, 0, gw);
    assert_int_equal(gw[2], 3);
    assert_int_equal(gw[3], 3);
    /* src listed: its copy stays; it receives the row, so a node with its local index gathers on it */
    gws(1, 4, 2, (const int[]){1, 5}, 3, gw);
    assert_int_equal(gw[0], 1);
    assert_int_equal(gw[1], 1);
    /* 3 ranks a node, src r0: node 1's gateway (local 1) serves node 2 too */
    gws(0, 3, 2, (const int[]){4, 7}, 0, gw);
    assert_int_equal(gw[0], 1);
    assert_int_equal(gw[1], 1);
    /* one rank a node: every gateway is src */
    gws(2, 1, 3, (const int[]){0, 1, 3}, 7, gw);
    for (int j = 0; j < 3; j++)
        assert_int_equal(gw[j], 2);
}

static void test_rules(void **state)
{
    (void)state;
    srand(7);
    enum { S = 8 };
    for (int it = 0; it < 20000; it++) {
        int P = 1 + rand() % 5, N = 1 + rand() % 5, R = P * N, src = rand() % R, n = rand() % (S + 1);
        int dest[S], gw[S];
        for (int j = 0; j < n; j++) { /* distinct ranks, not src, some slots skipped */
            int d, dup;
            do {
                d = rand() % 4 == 0 ? -1 : rand() % R;
                dup = d == src;
                for (int a = 0; a < j && d >= 0; a++)
                    dup |= dest[a] == d;
            } while (dup && R > 1 + j);
            dest[j] = dup ? -1 : d;
        }
        uint64_t key = (uint64_t)rand();
        gws(src, P, n, dest, key, gw);
        for (int j = 0; j < n; j++) {
            if (dest[j] < 0) {
                assert_int_equal(gw[j], -1);
                continue;
            }
            assert_int_equal(gw[j] / P, src / P); /* on src's node */
            if (dest[j] / P == src / P) {
                assert_int_equal(gw[j], dest[j]);
                continue;
            }
            int mine = 0, among = 0;
            for (int a = 0; a < n; a++)
                if (dest[a] >= 0 && dest[a] / P == dest[j] / P) {
                    assert_int_equal(gw[a], gw[j]); /* one gateway a node */
                    mine |= dest[a] % P == src % P;
                    among |= dest[a] % P == gw[j] % P; /* so the hop between nodes reaches a destination */
                }
            assert_true(among);
            if (mine)
                assert_int_equal(gw[j], src);
        }
    }
}

/* Rows with no free choice spread over their candidates as the key runs. */
static void test_rotation_spreads(void **state)
{
    (void)state;
    const int dest[] = {13, 14, 15}; /* node 3 of 4-rank nodes, locals 1..3; src r4 (local 0) */
    int seen[4] = {0}, gw[3];
    for (uint64_t key = 0; key < 30; key++) {
        gws(4, 4, 3, dest, key, gw);
        seen[gw[0] % 4]++;
    }
    assert_int_equal(seen[0], 0);
    assert_int_equal(seen[1], 10);
    assert_int_equal(seen[2], 10);
    assert_int_equal(seen[3], 10);
    /* single destination: a row for another node goes to src's node's rank of its local index */
    assert_int_equal(epm_hier_gateway(1, 4, 6), 2);
    assert_int_equal(epm_hier_gateway(1, 4, 2), 2);
    assert_int_equal(epm_hier_gateway(1, 4, 5), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_by_hand),
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_rotation_spreads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
