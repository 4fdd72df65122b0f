/* The communicator: MPI start-up, node assignment (real or virtual), the
 * chosen transport, small collectives, error agreement and byte counters. */
#include <stdio.h>
#include <string.h>

#include "comm_internal.h"
#include "mpi_world.h"

epm_status epm_comm_mpi_err(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error code %d", rc);
    return epm_fail(EPM_ERR_MPI, "%s failed: %s", what, msg);
}

#define MPI_TRY(call, what)                                 \
    do {                                                    \
        int rc_ = (call);                                   \
        if (rc_ != MPI_SUCCESS)                             \
            return epm_comm_mpi_err(rc_, what);             \
    } while (0)

void epm_comm_opts_init(epm_comm_opts *o)
{
    memset(o, 0, sizeof *o);
    o->transport = EPM_TRANSPORT_AUTO;
    o->hierarchical = EPM_HIER_AUTO;
}

static const char *const transport_names[] = {"auto", "mpi", "staged", "nccl"};

const char *epm_transport_name(epm_transport_kind t)
{
    return (unsigned)t < 4 ? transport_names[t] : "?";
}

epm_status epm_transport_parse(const char *s, epm_transport_kind *out)
{
    for (int i = 0; i < 4; i++)
        if (s && !strcmp(s, transport_names[i])) {
            *out = (epm_transport_kind)i;
            return EPM_OK;
        }
    return epm_fail(EPM_ERR_INVALID_ARG, "transport: '%s' is not one of auto, mpi, staged, nccl", s ? s : "(null)");
}

/* node id of each rank: virtual blocks, or the shared-memory split numbered by
 * the lowest rank of each node */
static epm_status assign_nodes(epm_comm *c, int virtual_nodes, int *leads)
{
    if (virtual_nodes > 0) {
        if (c->size % virtual_nodes)
            return epm_fail(EPM_ERR_INVALID_ARG, "virtual_nodes: %d does not divide the %d ranks", virtual_nodes,
                            c->size);
        for (int r = 0; r < c->size; r++)
            c->node_of[r] = r / (c->size / virtual_nodes);
        return EPM_OK;
    }
    MPI_Comm shm;
    int lead = c->rank;
    MPI_TRY(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &shm),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
    int rc = MPI_Allreduce(MPI_IN_PLACE, &lead, 1, MPI_INT, MPI_MIN, shm);
    MPI_Comm_free(&shm);
    MPI_TRY(rc, "MPI_Allreduce of node leaders");
    MPI_TRY(MPI_Allgather(&lead, 1, MPI_INT, leads, 1, MPI_INT, c->comm), "MPI_Allgather of node leaders");
    /* node id = how many node leaders come before this rank's leader */
    for (int r = 0; r < c->size; r++) {
        int n = 0;
        for (int q = 0; q < leads[r]; q++)
            n += leads[q] == q;
        c->node_of[r] = n;
    }
    return EPM_OK;
}

static epm_status check_uniform(epm_comm *c)
{
    c->nodes = 0;
    for (int r = 0; r < c->size; r++)
        c->nodes = c->node_of[r] + 1 > c->nodes ? c->node_of[r] + 1 : c->nodes;
    if (c->size % c->nodes)
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "%d ranks on %d nodes: epmoe needs the same number of ranks on every node "
                        "(mpirun --map-by ppr:N:node)", c->size, c->nodes);
    c->per_node = c->size / c->nodes;
    for (int r = 0; r < c->size; r++)
        if (c->node_of[r] != r / c->per_node)
            return epm_fail(EPM_ERR_UNSUPPORTED,
                            "rank %d is on node %d: epmoe needs %d ranks on every node, numbered node by "
                            "node (mpirun --map-by ppr:%d:node)", r, c->node_of[r], c->per_node, c->per_node);
    return EPM_OK;
}

static epm_status pick_transport(epm_comm *c)
{
    epm_transport_kind k = c->opts.transport;
    if (k == EPM_TRANSPORT_AUTO)
        k = !c->opts.device_buffers ? EPM_TRANSPORT_MPI : EPM_HAVE_NCCL && c->size == 1 ? EPM_TRANSPORT_NCCL
                                                                                           : EPM_TRANSPORT_STAGED;
    if (k == EPM_TRANSPORT_MPI && c->opts.device_buffers)
        return epm_fail(EPM_ERR_INVALID_ARG, "transport mpi moves host buffers; device buffers need staged or nccl");
    if (k != EPM_TRANSPORT_MPI && !c->opts.device_buffers)
        return epm_fail(EPM_ERR_INVALID_ARG, "transport %s moves device buffers; set device_buffers",
                        epm_transport_name(k));
    c->kind = k;
    if (k == EPM_TRANSPORT_MPI)
        return epm_transport_mpi_create(&c->comm, c->rank, c->size, &c->tr);
#if EPM_HAVE_CUDA
    if (k == EPM_TRANSPORT_STAGED)
        return epm_transport_staged_create(&c->comm, c->rank, c->size, epm_comm_local_rank(c), &c->tr);
#endif
#if EPM_HAVE_NCCL
    if (k == EPM_TRANSPORT_NCCL)
        return epm_transport_nccl_create(&c->comm, c->rank, c->size, epm_comm_local_rank(c), &c->tr);
#endif
    return epm_fail(EPM_ERR_UNSUPPORTED, "transport %s: this build has no %s", epm_transport_name(k),
                    k == EPM_TRANSPORT_NCCL ? "NCCL" : "CUDA");
}

epm_status epm_comm_create(const epm_comm_opts *o, epm_comm **out)
{
    *out = NULL;
    epm_comm_opts def;
    epm_comm_opts_init(&def);
    if (!o)
        o = &def;
    if (o->virtual_nodes < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "virtual_nodes: %d is negative", o->virtual_nodes);
    if ((unsigned)o->transport > EPM_TRANSPORT_NCCL)
        return epm_fail(EPM_ERR_INVALID_ARG, "transport: %d is not a transport", (int)o->transport);
    if ((unsigned)o->hierarchical > EPM_HIER_OFF)
        return epm_fail(EPM_ERR_INVALID_ARG, "hierarchical: %d is not auto, on or off", (int)o->hierarchical);
    /* the communicator first, then this rank's memory, then one agreement:
     * a rank that cannot allocate must not leave the others in a collective */
    MPI_Comm comm;
    int rank = 0, size = 1;
    EPM_CHECK(epm_mpi_world_dup(&comm, &rank, &size));
    epm_comm *c = epm_calloc(1, sizeof *c);
    int *leads = epm_malloc((size_t)size * sizeof *leads);
    if (c)
        c->node_of = epm_malloc((size_t)size * sizeof *c->node_of);
    epm_status st = c && c->node_of && leads ? EPM_OK : EPM_ERR_NOMEM; /* epm_malloc said which */
    /* a stand-in that epm_comm_agree can use where c itself is missing */
    epm_comm tmp = {.comm = comm, .rank = rank, .size = size};
    st = epm_comm_agree(&tmp, st, NULL);
    if (st != EPM_OK) {
        if (c)
            epm_free(c->node_of);
        epm_free(c);
        epm_free(leads);
        MPI_Comm_free(&comm);
        return st;
    }
    c->opts = *o;
    c->comm = comm;
    c->rank = rank;
    c->size = size;
    st = assign_nodes(c, o->virtual_nodes, leads);
    epm_free(leads);
    if (st == EPM_OK)
        st = check_uniform(c);
    if (st == EPM_OK)
        st = pick_transport(c);
    /* every rank fails together (a transport may fail on one rank only) */
    st = epm_comm_agree(c, st, NULL);
    if (st != EPM_OK)
        goto fail;
    *out = c;
    return EPM_OK;
fail:
    epm_comm_destroy(c);
    return st;
}

void epm_comm_destroy(epm_comm *c)
{
    if (!c)
        return;
    if (c->tr)
        c->tr->ops->destroy(c->tr);
    if (c->comm != MPI_COMM_NULL)
        MPI_Comm_free(&c->comm);
    epm_free(c->node_of);
    epm_free(c->binding);
    epm_free(c);
}

void epm_comm_finalize(void)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Finalize();
}

int epm_comm_rank(const epm_comm *c) { return c->rank; }
int epm_comm_size(const epm_comm *c) { return c->size; }
int epm_comm_node(const epm_comm *c) { return c->node_of[c->rank]; }
int epm_comm_nodes(const epm_comm *c) { return c->nodes; }
int epm_comm_local_rank(const epm_comm *c) { return c->rank % c->per_node; }
int epm_comm_ranks_per_node(const epm_comm *c) { return c->per_node; }
int epm_comm_node_of(const epm_comm *c, int rank) { return rank >= 0 && rank < c->size ? c->node_of[rank] : -1; }
epm_transport_kind epm_comm_transport(const epm_comm *c) { return c->kind; }

epm_link epm_comm_link(const epm_comm *c, int src, int dst)
{
    if (src == dst)
        return EPM_LINK_SELF;
    return c->node_of[src] == c->node_of[dst] ? EPM_LINK_INTRA : EPM_LINK_INTER;
}

void epm_comm_cluster(const epm_comm *c, epm_cluster *out) { epm_cluster_init(out, c->nodes, c->per_node); }

epm_status epm_comm_check_cluster(const epm_comm *c, const epm_cluster *plan)
{
    if (!plan)
        return epm_fail(EPM_ERR_INVALID_ARG, "check_cluster: cluster is NULL");
    if (plan->nodes != c->nodes || plan->gpus_per_node != c->per_node)
        return epm_fail(EPM_ERR_MISMATCH,
                        "the plan's cluster is %d node(s) x %d rank(s) but this run has %d node(s) x %d rank(s)"
                        "%s (%d ranks)", plan->nodes, plan->gpus_per_node, c->nodes, c->per_node,
                        c->opts.virtual_nodes ? " with virtual nodes" : "", c->size);
    return EPM_OK;
}

epm_status epm_comm_agree(epm_comm *c, epm_status local, epm_status *global)
{
    /* lowest failing rank wins; its code and message travel to everyone */
    int mine = local != EPM_OK ? c->rank : c->size, first = c->size;
    if (global)
        *global = EPM_ERR_MPI;
    MPI_TRY(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, c->comm), "MPI_Allreduce while agreeing on errors");
    if (first == c->size) {
        if (global)
            *global = EPM_OK;
        return EPM_OK;
    }
    char msg[1024];
    int code = (int)local;
    memset(msg, 0, sizeof msg);
    if (c->rank == first)
        snprintf(msg, sizeof msg, "%s", epm_last_error());
    MPI_TRY(MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, c->comm), "MPI_Bcast of an error message");
    MPI_TRY(MPI_Bcast(&code, 1, MPI_INT, first, c->comm), "MPI_Bcast of an error code");
    msg[sizeof msg - 1] = '\0';
    epm_status st = (epm_status)code;
    if (local != EPM_OK) {
        /* a rank that failed itself keeps its own code and message */
        char own[1024];
        snprintf(own, sizeof own, "%s", epm_last_error());
        st = local;
        if (strncmp(own, "rank ", 5) != 0)
            epm_fail(st, "rank %d: %s", c->rank, own);
    } else {
        epm_fail(EPM_ERR_REMOTE, "rank %d failed: %s: %s", first, epm_status_str(st), msg);
        st = EPM_ERR_REMOTE;
    }
    if (global)
        *global = st;
    return st;
}

epm_status epm_comm_barrier(epm_comm *c)
{
    MPI_TRY(MPI_Barrier(c->comm), "MPI_Barrier");
    return EPM_OK;
}

epm_status epm_comm_allreduce_sum_i64(epm_comm *c, int64_t *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, c->comm), "MPI_Allreduce(sum)");
    return EPM_OK;
}

epm_status epm_comm_allreduce_max_i64(epm_comm *c, int64_t *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_MAX, c->comm), "MPI_Allreduce(max)");
    return EPM_OK;
}

epm_status epm_comm_allreduce_max_f64(epm_comm *c, double *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, c->comm), "MPI_Allreduce(max)");
    return EPM_OK;
}

epm_status epm_comm_bcast(epm_comm *c, int root, void *buf, size_t bytes)
{
    if (root < 0 || root >= c->size)
        return epm_fail(EPM_ERR_INVALID_ARG, "bcast: root %d is not a rank of %d", root, c->size);
    for (size_t off = 0; off < bytes; off += (size_t)1 << 30) {
        size_t n = bytes - off < ((size_t)1 << 30) ? bytes - off : (size_t)1 << 30;
        MPI_TRY(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, c->comm), "MPI_Bcast");
    }
    return EPM_OK;
}

/* Byte counts that fit MPI's int displacements; larger gathers are refused
 * with a message rather than truncated. */
static epm_status gather_counts(epm_comm *c, size_t bytes, int *cnt, int *disp, size_t *total, const char *what)
{
    if (bytes > (size_t)INT32_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %zu bytes from rank %d exceed 2 GiB", what, bytes, c->rank);
    int mine = (int)bytes;
    MPI_TRY(MPI_Allgather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, c->comm), "MPI_Allgather of byte counts");
    size_t t = 0;
    for (int r = 0; r < c->size; r++) {
        disp[r] = (int)t;
        t += (size_t)cnt[r];
    }
    if (t > (size_t)INT32_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %zu bytes in all exceed 2 GiB", what, t);
    *total = t;
    return EPM_OK;
}

epm_status epm_comm_allgatherv(epm_comm *c, const void *mine, size_t bytes, size_t payload_bytes, void **all,
                               size_t *counts, size_t *total)
{
    *all = NULL;
    *total = 0;
    if (payload_bytes > bytes)
        return epm_fail(EPM_ERR_INVALID_ARG, "allgatherv: payload %zu bytes > message %zu bytes", payload_bytes, bytes);
    int *cnt = epm_malloc((size_t)c->size * sizeof *cnt), *disp = epm_malloc((size_t)c->size * sizeof *disp);
    char *buf = NULL;
    size_t t = 0;
    epm_status st = cnt && disp ? EPM_OK : EPM_ERR_NOMEM;
    if (st == EPM_OK)
        st = gather_counts(c, bytes, cnt, disp, &t, "allgatherv");
    if (st == EPM_OK && !(buf = epm_malloc(t ? t : 1)))
        st = EPM_ERR_NOMEM;
    if (st == EPM_OK) {
        int rc = MPI_Allgatherv(mine, (int)bytes, MPI_BYTE, buf, cnt, disp, MPI_BYTE, c->comm);
        if (rc != MPI_SUCCESS)
            st = epm_comm_mpi_err(rc, "MPI_Allgatherv");
    }
    if (st == EPM_OK) {
        for (int r = 0; r < c->size; r++) {
            if (counts)
                counts[r] = (size_t)cnt[r];
            if (r != c->rank)
                c->stats.model[EPM_PHASE_ALLGATHER][epm_comm_link(c, c->rank, r)] += (int64_t)payload_bytes;
        }
        memcpy(c->stats.wire[EPM_PHASE_ALLGATHER], c->stats.model[EPM_PHASE_ALLGATHER],
               sizeof c->stats.wire[EPM_PHASE_ALLGATHER]);
        c->stats.ops[EPM_PHASE_ALLGATHER]++;
        *all = buf;
        *total = t;
        buf = NULL;
    }
    epm_free(buf);
    epm_free(cnt);
    epm_free(disp);
    return st;
}

epm_status epm_comm_gatherv(epm_comm *c, int root, const void *mine, size_t bytes, void **out, size_t *out_bytes)
{
    *out = NULL;
    *out_bytes = 0;
    if (root < 0 || root >= c->size)
        return epm_fail(EPM_ERR_INVALID_ARG, "gatherv: root %d is not a rank of %d", root, c->size);
    int *cnt = epm_malloc((size_t)c->size * sizeof *cnt), *disp = epm_malloc((size_t)c->size * sizeof *disp);
    char *buf = NULL;
    size_t t = 0;
    epm_status st = cnt && disp ? EPM_OK : EPM_ERR_NOMEM;
    if (st == EPM_OK)
        st = gather_counts(c, bytes, cnt, disp, &t, "gatherv");
    if (st == EPM_OK && c->rank == root && !(buf = epm_malloc(t ? t : 1)))
        st = EPM_ERR_NOMEM;
    /* the root's allocation failing must not leave the others waiting */
    if (cnt && disp && epm_comm_agree(c, st, &st) == EPM_OK) {
        int rc = MPI_Gatherv(mine, (int)bytes, MPI_BYTE, buf, cnt, disp, MPI_BYTE, root, c->comm);
        if (rc != MPI_SUCCESS && st == EPM_OK)
            st = epm_comm_mpi_err(rc, "MPI_Gatherv");
    }
    if (st == EPM_OK && c->rank == root) {
        *out = buf;
        *out_bytes = t;
        buf = NULL;
    }
    epm_free(buf);
    epm_free(cnt);
    epm_free(disp);
    return st;
}

void epm_comm_stats_get(const epm_comm *c, epm_comm_stats *out) { *out = c->stats; }
void epm_comm_stats_reset(epm_comm *c) { memset(&c->stats, 0, sizeof c->stats); }
