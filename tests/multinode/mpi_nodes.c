/* Prints, in rank order, each rank's host name, its node as MPI's
 * shared-memory split sees it, and its binding; exits 1 when the two views of
 * "node" disagree (one host name in two shared-memory groups, or the reverse)
 * or when ranks are not numbered node-major as the cluster description needs. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "epmoe/launch.h"

#define LINE 256

typedef struct {
    char host[64];
    int node;
    char line[LINE];
} rank_info;

/* hwloc's PCI plugin (dlopen'ed, then closed) leaves allocations that LSan
 * only attributes to libhwloc (suppressed in tests/lsan.supp) with the slow
 * unwinder; the fast one stops in the unloaded module. Read by ASan builds only. */
const char *__asan_default_options(void);
__attribute__((visibility("default"))) const char *__asan_default_options(void) { return "fast_unwind_on_malloc=0"; }

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size, lrank, lsize, node = 0, leaders_n = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm shm, leaders;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &shm);
    MPI_Comm_rank(shm, &lrank);
    MPI_Comm_size(shm, &lsize);
    MPI_Comm_split(MPI_COMM_WORLD, lrank == 0 ? 0 : MPI_UNDEFINED, rank, &leaders);
    if (leaders != MPI_COMM_NULL) {
        MPI_Comm_rank(leaders, &node);
        MPI_Comm_size(leaders, &leaders_n);
        MPI_Comm_free(&leaders);
    }
    MPI_Bcast(&node, 1, MPI_INT, 0, shm);
    MPI_Bcast(&leaders_n, 1, MPI_INT, 0, shm);

    rank_info me;
    memset(&me, 0, sizeof me);
    gethostname(me.host, sizeof me.host - 1);
    me.node = node;
    /* Binding as epmoe run does it: local rank from MPI, GPU map from the launch. */
    int map[256];
    epm_binding_opts o;
    epm_binding_opts_init(&o);
    epm_hwtopo *topo = NULL;
    epm_binding b;
    epm_status st = epm_binding_opts_from_env(&o, map, 256);
    o.rank = rank;
    o.local_rank = lrank;
    o.local_size = lsize;
    o.node = me.host;
    if (st == EPM_OK)
        st = epm_hwtopo_load(&topo);
    if (st == EPM_OK)
        st = epm_binding_plan(topo, &o, &b);
    if (st == EPM_OK) {
        epm_status ap = epm_binding_apply(topo, &b);
        int n = epm_binding_format(&b, me.line, LINE);
        if (ap != EPM_OK && n > 0 && n < LINE)
            snprintf(me.line + n, LINE - (size_t)n, " (not bound: %s)", epm_last_error());
    } else {
        snprintf(me.line, LINE, "rank %d binding failed: %s", rank, epm_last_error());
    }
    epm_hwtopo_destroy(topo);

    rank_info *all = rank == 0 ? calloc((size_t)size, sizeof *all) : NULL;
    MPI_Gather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, 0, MPI_COMM_WORLD);
    int bad = 0;
    if (rank == 0) {
        for (int r = 0; r < size; r++) {
            printf("rank %d of %d host %s shmnode %d\n", r, size, all[r].host, all[r].node);
            if (getenv("EPM_REPORT_BINDINGS"))
                printf("binding: %s\n", all[r].line);
            for (int q = 0; q < r; q++)
                if ((all[q].node == all[r].node) != !strcmp(all[q].host, all[r].host)) {
                    printf("error: ranks %d (host %s, node %d) and %d (host %s, node %d) disagree on nodes\n", q,
                           all[q].host, all[q].node, r, all[r].host, all[r].node);
                    bad = 1;
                }
            if (r > 0 && all[r].node < all[r - 1].node) {
                printf("error: rank %d on node %d after rank %d on node %d: not node-major\n", r, all[r].node,
                       r - 1, all[r - 1].node);
                bad = 1;
            }
        }
        printf("nodes %d ranks %d\n", leaders_n, size);
        fflush(stdout);
        free(all);
    }
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Comm_free(&shm);
    MPI_Finalize();
    return bad;
}
