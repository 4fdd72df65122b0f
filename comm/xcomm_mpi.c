#include <mpi.h>
#include <time.h>
#include <stdio.h>
#include <string.h>

#include "xcomm.h"

struct epm_xcomm {
    MPI_Comm comm;
    int rank, size, nodes, per_node;
    int *node_of;
};

static epm_status mpi_err(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return epm_fail(EPM_ERR_MPI, "%s failed: %s", what, msg);
}

#define MPI_TRY(call)                                   \
    do {                                                \
        int rc_ = (call);                               \
        if (rc_ != MPI_SUCCESS)                         \
            return mpi_err(rc_, #call);                 \
    } while (0)

epm_status epm_xcomm_create(int virtual_nodes, epm_xcomm **out)
{
    *out = NULL;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return epm_fail(EPM_ERR_MPI, "MPI_Init_thread failed");
    }
    epm_xcomm *x = epm_calloc(1, sizeof *x);
    if (!x)
        return EPM_ERR_NOMEM;
    MPI_Comm_dup(MPI_COMM_WORLD, &x->comm);
    /* errors come back as codes; the runtime turns them into one message on every rank */
    MPI_Comm_set_errhandler(x->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(x->comm, &x->rank);
    MPI_Comm_size(x->comm, &x->size);
    x->node_of = epm_malloc((size_t)x->size * sizeof *x->node_of);
    if (!x->node_of) {
        epm_xcomm_destroy(x);
        return EPM_ERR_NOMEM;
    }
    epm_status st = EPM_OK;
    if (virtual_nodes > 0) {
        if (x->size % virtual_nodes)
            st = epm_fail(EPM_ERR_INVALID_ARG, "--virtual-nodes %d does not divide the %d ranks", virtual_nodes,
                          x->size);
        for (int r = 0; r < x->size && st == EPM_OK; r++)
            x->node_of[r] = r / (x->size / virtual_nodes);
    } else {
        /* real nodes: the shared-memory split, numbered by their lowest rank */
        MPI_Comm shm;
        int lead = x->rank;
        MPI_Comm_split_type(x->comm, MPI_COMM_TYPE_SHARED, x->rank, MPI_INFO_NULL, &shm);
        MPI_Allreduce(MPI_IN_PLACE, &lead, 1, MPI_INT, MPI_MIN, shm);
        MPI_Comm_free(&shm);
        int *leads = epm_malloc((size_t)x->size * sizeof *leads);
        if (!leads) {
            epm_xcomm_destroy(x);
            return EPM_ERR_NOMEM;
        }
        MPI_Allgather(&lead, 1, MPI_INT, leads, 1, MPI_INT, x->comm);
        /* node id = how many node leaders come before this rank's leader */
        for (int r = 0; r < x->size; r++) {
            int id = 0;
            for (int q = 0; q < leads[r]; q++)
                id += leads[q] == q;
            x->node_of[r] = id;
        }
        epm_free(leads);
    }
    if (st == EPM_OK) {
        x->nodes = x->node_of[x->size - 1] + 1;
        x->per_node = x->size / x->nodes;
        for (int r = 0; r < x->size && st == EPM_OK; r++)
            if (x->node_of[r] != r / x->per_node)
                st = epm_fail(EPM_ERR_UNSUPPORTED,
                              "rank %d is on node %d; epmoe needs the same number of ranks on every node, "
                              "numbered node by node (mpirun --map-by ppr:N:node)", r, x->node_of[r]);
    }
    if (st != EPM_OK) {
        epm_xcomm_destroy(x);
        return st;
    }
    *out = x;
    return EPM_OK;
}

void epm_xcomm_destroy(epm_xcomm *x)
{
    if (!x)
        return;
    if (x->comm != MPI_COMM_NULL)
        MPI_Comm_free(&x->comm);
    epm_free(x->node_of);
    epm_free(x);
}

int epm_xcomm_rank(const epm_xcomm *x) { return x->rank; }
int epm_xcomm_size(const epm_xcomm *x) { return x->size; }

void epm_xcomm_cluster(const epm_xcomm *x, epm_cluster *c)
{
    epm_cluster_init(c, x->nodes, x->per_node);
}

static epm_link link_of(const epm_xcomm *x, int a, int b)
{
    if (a == b)
        return EPM_LINK_SELF;
    return x->node_of[a] == x->node_of[b] ? EPM_LINK_INTRA : EPM_LINK_INTER;
}

/* MPI counts are int: large exchanges go as contiguous row types of width floats. */
epm_status epm_xcomm_exchange(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                              int payload_floats, int64_t counted[EPM_LINK_COUNT], float **out_rows, int **out_src,
                              int64_t *out_n)
{
    int R = x->size;
    epm_status st = EPM_OK;
    int *scount = epm_calloc((size_t)R, sizeof(int)), *rcount = epm_calloc((size_t)R, sizeof(int));
    int *sdisp = epm_calloc((size_t)R, sizeof(int)), *rdisp = epm_calloc((size_t)R, sizeof(int));
    int64_t *fill = epm_calloc((size_t)R, sizeof(int64_t));
    float *sbuf = NULL, *rbuf = NULL;
    int *src = NULL;
    *out_rows = NULL;
    *out_src = NULL;
    *out_n = 0;
    if (!scount || !rcount || !sdisp || !rdisp || !fill) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        if (dest[i] < 0 || dest[i] >= R) {
            st = epm_fail(EPM_ERR_INTERNAL, "exchange: row %lld goes to rank %d of %d", (long long)i, dest[i], R);
            goto out;
        }
        scount[dest[i]]++;
    }
    for (int r = 1; r < R; r++)
        sdisp[r] = sdisp[r - 1] + scount[r - 1];
    sbuf = epm_malloc((size_t)(n ? n : 1) * (size_t)width * sizeof *sbuf);
    if (!sbuf) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        int d = dest[i];
        memcpy(sbuf + ((int64_t)sdisp[d] + fill[d]++) * width, rows + i * width, (size_t)width * sizeof *sbuf);
        if (counted && d != x->rank) /* staying on the rank moves nothing (eval.h) */
            counted[link_of(x, x->rank, d)] += (int64_t)payload_floats * 4;
    }
    int rc = MPI_Alltoall(scount, 1, MPI_INT, rcount, 1, MPI_INT, x->comm);
    if (rc != MPI_SUCCESS) {
        st = mpi_err(rc, "MPI_Alltoall of row counts");
        goto out;
    }
    int64_t total = 0;
    for (int r = 0; r < R; r++) {
        rdisp[r] = (int)total;
        total += rcount[r];
    }
    rbuf = epm_malloc((size_t)(total ? total : 1) * (size_t)width * sizeof *rbuf);
    src = epm_malloc((size_t)(total ? total : 1) * sizeof *src);
    if (!rbuf || !src) {
        st = EPM_ERR_NOMEM;
        goto out;
    }
    MPI_Datatype row;
    MPI_Type_contiguous(width, MPI_FLOAT, &row);
    MPI_Type_commit(&row);
    rc = MPI_Alltoallv(sbuf, scount, sdisp, row, rbuf, rcount, rdisp, row, x->comm);
    MPI_Type_free(&row);
    if (rc != MPI_SUCCESS) {
        st = mpi_err(rc, "MPI_Alltoallv of token rows");
        goto out;
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < rcount[r]; j++)
            src[rdisp[r] + j] = r;
    *out_rows = rbuf;
    *out_src = src;
    *out_n = total;
    rbuf = NULL;
    src = NULL;
out:
    epm_free(scount);
    epm_free(rcount);
    epm_free(sdisp);
    epm_free(rdisp);
    epm_free(fill);
    epm_free(sbuf);
    epm_free(rbuf);
    epm_free(src);
    return st;
}

epm_status epm_xcomm_allgather(epm_xcomm *x, int64_t n, const float *rows, int width, int payload_floats,
                               int64_t counted[EPM_LINK_COUNT], float **out_rows, int64_t *out_n)
{
    int R = x->size;
    int cnt = (int)n;
    int *counts = epm_malloc((size_t)R * sizeof *counts), *disp = epm_malloc((size_t)R * sizeof *disp);
    *out_rows = NULL;
    if (!counts || !disp) {
        epm_free(counts);
        epm_free(disp);
        return EPM_ERR_NOMEM;
    }
    int rc = MPI_Allgather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, x->comm);
    int64_t total = 0;
    for (int r = 0; r < R; r++) {
        disp[r] = (int)total;
        total += counts[r];
    }
    float *buf = rc == MPI_SUCCESS ? epm_malloc((size_t)(total ? total : 1) * (size_t)width * sizeof *buf) : NULL;
    epm_status st = EPM_OK;
    if (rc != MPI_SUCCESS) {
        st = mpi_err(rc, "MPI_Allgather of row counts");
    } else if (!buf) {
        st = EPM_ERR_NOMEM;
    } else {
        MPI_Datatype row;
        MPI_Type_contiguous(width, MPI_FLOAT, &row);
        MPI_Type_commit(&row);
        rc = MPI_Allgatherv(rows, cnt, row, buf, counts, disp, row, x->comm);
        MPI_Type_free(&row);
        if (rc != MPI_SUCCESS)
            st = mpi_err(rc, "MPI_Allgatherv of rows");
    }
    if (st == EPM_OK && counted)
        for (int r = 0; r < R; r++)
            if (r != x->rank)
                counted[link_of(x, x->rank, r)] += (int64_t)n * payload_floats * 4;
    if (st == EPM_OK) {
        *out_rows = buf;
        *out_n = total;
    } else {
        epm_free(buf);
    }
    epm_free(counts);
    epm_free(disp);
    return st;
}

static double agree_timeout_s; /* 0 = wait forever */

void epm_xcomm_set_timeout(double seconds) { agree_timeout_s = seconds > 0 ? seconds : 0; }

void epm_xcomm_abort(epm_xcomm *x, int code) { MPI_Abort(x ? x->comm : MPI_COMM_WORLD, code); }

epm_status epm_xcomm_agree(epm_xcomm *x, epm_status local)
{
    /* lowest failing rank wins; its message travels to everyone. The wait has
     * a deadline: a rank that stalled or died must not hold the others forever */
    int mine = local != EPM_OK ? x->rank : x->size, first = x->size;
    MPI_Request req;
    if (MPI_Iallreduce(&mine, &first, 1, MPI_INT, MPI_MIN, x->comm, &req) != MPI_SUCCESS)
        return epm_fail(EPM_ERR_MPI, "MPI_Iallreduce while agreeing on errors failed");
    double t0 = epm_now();
    for (int done = 0; !done;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return epm_fail(EPM_ERR_MPI, "MPI_Test while agreeing on errors failed");
        if (done)
            break;
        if (agree_timeout_s > 0 && epm_now() - t0 > agree_timeout_s)
            return epm_fail(EPM_ERR_TIMEOUT,
                            "rank %d waited %.0f s (--timeout) for the other ranks: one of them stalled or died",
                            x->rank, agree_timeout_s);
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    if (first == x->size)
        return EPM_OK;
    char msg[1024];
    int code = (int)local;
    if (x->rank == first)
        snprintf(msg, sizeof msg, "%s", epm_last_error());
    MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, x->comm);
    MPI_Bcast(&code, 1, MPI_INT, first, x->comm);
    msg[sizeof msg - 1] = '\0';
    if (x->rank == first)
        return epm_fail((epm_status)code, "rank %d: %s", first, msg);
    return epm_fail(EPM_ERR_REMOTE, "rank %d: %s: %s", first, epm_status_str((epm_status)code), msg);
}

epm_status epm_xcomm_sum_i64(epm_xcomm *x, int64_t *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, x->comm));
    return EPM_OK;
}

epm_status epm_xcomm_max_f64(epm_xcomm *x, double *v, int n)
{
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_MAX, x->comm));
    return EPM_OK;
}

epm_status epm_xcomm_gather_bytes(epm_xcomm *x, const void *buf, int64_t n, void **out, int64_t *out_n)
{
    int R = x->size, cnt = (int)n;
    *out = NULL;
    *out_n = 0;
    int *counts = epm_malloc((size_t)R * sizeof *counts), *disp = epm_malloc((size_t)R * sizeof *disp);
    if (!counts || !disp) {
        epm_free(counts);
        epm_free(disp);
        return EPM_ERR_NOMEM;
    }
    epm_status st = EPM_OK;
    int rc = MPI_Gather(&cnt, 1, MPI_INT, counts, 1, MPI_INT, 0, x->comm);
    char *all = NULL;
    int64_t total = 0;
    if (rc != MPI_SUCCESS) {
        st = mpi_err(rc, "MPI_Gather of sizes");
    } else if (x->rank == 0) {
        for (int r = 0; r < R; r++) {
            disp[r] = (int)total;
            total += counts[r];
        }
        all = epm_malloc((size_t)(total ? total : 1));
        if (!all)
            st = EPM_ERR_NOMEM;
    }
    if (rc == MPI_SUCCESS) {
        rc = MPI_Gatherv(buf, cnt, MPI_BYTE, all, counts, disp, MPI_BYTE, 0, x->comm);
        if (rc != MPI_SUCCESS && st == EPM_OK)
            st = mpi_err(rc, "MPI_Gatherv");
    }
    epm_free(counts);
    epm_free(disp);
    if (st != EPM_OK) {
        epm_free(all);
        return st;
    }
    *out = all;
    *out_n = total;
    return EPM_OK;
}

void epm_xcomm_barrier(epm_xcomm *x) { MPI_Barrier(x->comm); }

void epm_xcomm_finalize(void)
{
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin)
        MPI_Finalize();
}
