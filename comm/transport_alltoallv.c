/* MPI_Alltoallv transport on host rows: one collective per step, run in
 * wait (prepare only records the step; there is nothing to post), so a split-phase caller overlaps
 * nothing but gets the MPI library's tuned all-to-all. The rows of a step
 * must be packed by peer in one buffer (xcomm packs them). */
#include <limits.h>

#include "comm_internal.h"

struct epm_xfer_req {
    int *cnt; /* send counts, displacements, receive counts, displacements: [4][size] */
    const char *sbuf;
    char *rbuf;
    size_t row_bytes;
};

/* Steps done are kept for the next (a few: split-phase callers have several
 * in flight), which is also what reserve sets aside. */
enum { SPARES = 4 };
typedef struct {
    epm_transport t;
    epm_xfer_req *spare[SPARES];
    int nspare;
} a_transport;

static epm_xfer_req *req_new(int R)
{
    epm_xfer_req *q = epm_calloc(1, sizeof *q);
    int *c = epm_malloc(4 * (size_t)R * sizeof *c);
    if (!q || !c) {
        epm_free(q);
        epm_free(c);
        return NULL;
    }
    q->cnt = c;
    return q;
}

static void req_done(epm_transport *t, epm_xfer_req *q)
{
    a_transport *a = (a_transport *)t;
    if (!q)
        return;
    if (a->nspare < SPARES) {
        a->spare[a->nspare++] = q;
        return;
    }
    epm_free(q->cnt);
    epm_free(q);
}

static epm_status a_reserve(epm_transport *t)
{
    a_transport *a = (a_transport *)t;
    if (a->nspare)
        return EPM_OK;
    epm_xfer_req *q = req_new(t->size);
    if (!q)
        return epm_fail(EPM_ERR_NOMEM, "transport alltoallv: allocation of a step");
    a->spare[a->nspare++] = q;
    return EPM_OK;
}

static epm_status a_prepare(epm_transport *t, const epm_xfer *x, epm_xfer_req **out)
{
    int R = t->size;
    int64_t ns = x->send_off[R], nr = x->recv_off[R];
    if (ns > INT_MAX || nr > INT_MAX || x->row_bytes > INT_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED,
                        "transport alltoallv: %lld rows out, %lld in of %zu bytes exceed MPI's int counts",
                        (long long)ns, (long long)nr, x->row_bytes);
    const char *base = ns ? x->src_rows[0] : NULL;
    for (int64_t j = 1; j < ns; j++)
        if (x->src_rows[j] != base + (size_t)j * x->row_bytes)
            return epm_fail(EPM_ERR_INTERNAL, "transport alltoallv: row %lld of the step is not packed", (long long)j);
    a_transport *a = (a_transport *)t;
    epm_xfer_req *q = a->nspare ? a->spare[--a->nspare] : req_new(R);
    if (!q)
        return EPM_ERR_NOMEM;
    int *c = q->cnt;
    for (int p = 0; p < R; p++) {
        /* the caller copies its own rows */
        c[p] = p == t->rank || (x->skip_send && x->skip_send[p]) ? 0 : (int)(x->send_off[p + 1] - x->send_off[p]);
        c[R + p] = (int)x->send_off[p];
        c[2 * R + p] =
            p == t->rank || (x->skip_recv && x->skip_recv[p]) ? 0 : (int)(x->recv_off[p + 1] - x->recv_off[p]);
        c[3 * R + p] = (int)x->recv_off[p];
    }
    q->sbuf = base;
    q->rbuf = x->recv;
    q->row_bytes = x->row_bytes;
    *out = q;
    return EPM_OK;
}

static epm_status a_wait(epm_transport *t, epm_xfer_req *q)
{
    int R = t->size;
    int *c = q->cnt;
    MPI_Datatype row;
    int rc = MPI_Type_contiguous((int)q->row_bytes, MPI_BYTE, &row);
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_commit(&row);
    if (rc == MPI_SUCCESS) {
        rc = MPI_Alltoallv(q->sbuf, c, c + R, row, q->rbuf, c + 2 * R, c + 3 * R, row, *(MPI_Comm *)t->mpi_comm);
        MPI_Type_free(&row);
    }
    req_done(t, q);
    return rc == MPI_SUCCESS ? EPM_OK : epm_comm_mpi_err(rc, "MPI_Alltoallv of token rows");
}

static void a_release(epm_transport *t, epm_xfer_req *q) { req_done(t, q); }

static void a_destroy(epm_transport *t)
{
    a_transport *a = (a_transport *)t;
    for (int i = 0; i < a->nspare; i++) {
        epm_free(a->spare[i]->cnt);
        epm_free(a->spare[i]);
    }
    epm_free(a);
}

static const epm_transport_ops alltoallv_ops = {
    .name = "alltoallv", .device = 0, .prepare = a_prepare, .reserve = a_reserve, .wait = a_wait, .release = a_release,
    .destroy = a_destroy,
};

epm_status epm_transport_alltoallv_create(void *mpi_comm, int rank, int size, epm_transport **out)
{
    a_transport *a = epm_calloc(1, sizeof *a);
    if (!a)
        return EPM_ERR_NOMEM;
    epm_transport *t = &a->t;
    t->ops = &alltoallv_ops;
    t->mpi_comm = mpi_comm;
    t->rank = rank;
    t->size = size;
    *out = t;
    return EPM_OK;
}
