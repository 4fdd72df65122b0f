/* MPI transport on host rows: non-blocking point-to-point, one message per
 * peer. Sends go straight from the scattered rows through an hindexed
 * datatype (no packing copy of ours; the MPI library copies once into its
 * shared-memory or network buffers, as it would for a packed buffer). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "comm_internal.h"

struct epm_xfer_req {
    MPI_Comm comm;
    int tag;
    MPI_Request *reqs;
    MPI_Datatype *types;
    /* one message per peer and direction, each with its own datatype */
    struct post {
        char *buf; /* MPI_BOTTOM for rows at absolute addresses */
        int count, peer, send;
    } *posts;
    int nreq, ntypes;
    /* packed receive to scatter in wait */
    const char *unpack;
    char *const *dst_rows;
    int64_t *ranges; /* [2 * peers]: received row ranges that were packed */
    int nranges;
    size_t row_bytes;
};

/* Scattered rows go as a derived datatype by default (MPI copies them once,
 * as it would a packed buffer); EPM_MPI_PACK=1 packs them into contiguous
 * scratch first, which can let MPI use a single-copy path (CMA/XPMEM) at the
 * price of our own copy. Runs of adjacent rows always go as plain buffers. */
static int pack_policy(void)
{
    static int policy = -1;
    if (policy < 0) {
        const char *e = getenv("EPM_MPI_PACK");
        policy = e && !strcmp(e, "1"); /* (epm_transport_mpi_create refuses other values) */
    }
    return policy;
}

static void req_free(epm_xfer_req *q)
{
    if (!q)
        return;
    for (int i = 0; i < q->ntypes; i++)
        MPI_Type_free(&q->types[i]);
    epm_free(q->reqs);
    epm_free(q->types);
    epm_free(q->posts);
    epm_free(q->ranges);
    epm_free(q);
}

/* A datatype of n rows at absolute addresses (sent from MPI_BOTTOM). Runs of
 * adjacent rows are merged into one block, so packed input costs one block. */
static int rows_type(const char *const *rows, int64_t n, size_t row_bytes, MPI_Datatype *out)
{
    MPI_Aint *disp = epm_malloc((size_t)n * sizeof *disp);
    int *len = epm_malloc((size_t)n * sizeof *len);
    if (!disp || !len) {
        epm_free(disp);
        epm_free(len);
        return MPI_ERR_NO_MEM;
    }
    MPI_Datatype row;
    int rc = MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row);
    int nb = 0;
    for (int64_t i = 0; i < n && rc == MPI_SUCCESS; i++) {
        if (nb > 0 && rows[i] == rows[i - 1] + row_bytes && len[nb - 1] < INT_MAX) {
            len[nb - 1]++;
            continue;
        }
        MPI_Get_address(rows[i], &disp[nb]);
        len[nb++] = 1;
    }
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_create_hindexed(nb, len, disp, row, out);
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_commit(out);
    MPI_Type_free(&row);
    epm_free(disp);
    epm_free(len);
    return rc;
}

/* 1 when the n rows follow each other in memory */
static int contiguous(const char *const *rows, int64_t n, size_t row_bytes)
{
    for (int64_t i = 1; i < n; i++)
        if (rows[i] != rows[i - 1] + row_bytes)
            return 0;
    return 1;
}

/* Datatypes and packing: all this rank can fail at alone, before it posts. */
epm_status epm_transport_mpi_prepare(epm_transport *t, const epm_xfer *x, epm_xfer_req **out)
{
    int R = t->size;
    *out = NULL;
    if (x->row_bytes > INT_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED, "transport mpi: rows of %zu bytes exceed 2 GiB", x->row_bytes);
    epm_xfer_req *q = epm_calloc(1, sizeof *q);
    if (!q)
        return EPM_ERR_NOMEM;
    q->comm = *(MPI_Comm *)t->mpi_comm;
    q->tag = x->tag;
    q->reqs = epm_malloc((size_t)(2 * R) * sizeof *q->reqs);
    q->types = epm_malloc((size_t)(2 * R) * sizeof *q->types);
    q->posts = epm_malloc((size_t)(2 * R) * sizeof *q->posts);
    q->ranges = epm_malloc((size_t)(2 * R) * sizeof *q->ranges);
    if (!q->reqs || !q->types || !q->posts || !q->ranges) {
        req_free(q);
        return EPM_ERR_NOMEM;
    }
    int rc = MPI_SUCCESS;
    /* receives first, so that eager sends find them posted */
    for (int p = 0; p < R && rc == MPI_SUCCESS; p++) {
        int64_t n = x->recv_off[p + 1] - x->recv_off[p];
        if (n == 0 || p == t->rank || (x->skip_recv && x->skip_recv[p]))
            continue;
        MPI_Datatype *ty = &q->types[q->ntypes];
        struct post *po = &q->posts[q->ntypes];
        *po = (struct post){.count = (int)n, .peer = p, .send = 0};
        int flat = !x->dst_rows || contiguous((const char *const *)x->dst_rows + x->recv_off[p], n, x->row_bytes);
        if (!flat && x->pack_recv && pack_policy()) {
            rc = MPI_Type_contiguous((int)x->row_bytes, MPI_BYTE, ty);
            if (rc == MPI_SUCCESS && (rc = MPI_Type_commit(ty)) != MPI_SUCCESS)
                MPI_Type_free(ty);
            po->buf = x->pack_recv + x->recv_off[p] * (int64_t)x->row_bytes;
            q->unpack = x->pack_recv;
            q->dst_rows = x->dst_rows;
            q->row_bytes = x->row_bytes;
            q->ranges[2 * q->nranges] = x->recv_off[p];
            q->ranges[2 * q->nranges + 1] = x->recv_off[p + 1];
            q->nranges++;
        } else if (!flat) { /* scattered straight to where the rows are used */
            rc = rows_type((const char *const *)x->dst_rows + x->recv_off[p], n, x->row_bytes, ty);
            po->buf = MPI_BOTTOM;
            po->count = 1;
        } else {
            rc = n > INT_MAX ? MPI_ERR_COUNT : MPI_Type_contiguous((int)x->row_bytes, MPI_BYTE, ty);
            if (rc == MPI_SUCCESS && (rc = MPI_Type_commit(ty)) != MPI_SUCCESS)
                MPI_Type_free(ty);
            po->buf = !x->dst_rows ? x->recv + x->recv_off[p] * (int64_t)x->row_bytes : x->dst_rows[x->recv_off[p]];
        }
        q->ntypes += rc == MPI_SUCCESS;
    }
    for (int p = 0; p < R && rc == MPI_SUCCESS; p++) {
        int64_t n = x->send_off[p + 1] - x->send_off[p];
        if (n == 0 || p == t->rank || (x->skip_send && x->skip_send[p]))
            continue;
        MPI_Datatype *ty = &q->types[q->ntypes];
        struct post *po = &q->posts[q->ntypes];
        *po = (struct post){.count = (int)n, .peer = p, .send = 1};
        int flat = contiguous(x->src_rows + x->send_off[p], n, x->row_bytes);
        if (flat || (x->pack_send && pack_policy())) {
            const char *b = x->src_rows[x->send_off[p]];
            if (!flat) {
                char *pk = x->pack_send + x->send_off[p] * (int64_t)x->row_bytes;
                for (int64_t j = 0; j < n; j++)
                    memcpy(pk + j * (int64_t)x->row_bytes, x->src_rows[x->send_off[p] + j], x->row_bytes);
                b = pk;
            }
            rc = n > INT_MAX ? MPI_ERR_COUNT : MPI_Type_contiguous((int)x->row_bytes, MPI_BYTE, ty);
            if (rc == MPI_SUCCESS && (rc = MPI_Type_commit(ty)) != MPI_SUCCESS)
                MPI_Type_free(ty);
            po->buf = (char *)b;
        } else {
            rc = rows_type(x->src_rows + x->send_off[p], n, x->row_bytes, ty);
            po->buf = MPI_BOTTOM;
            po->count = 1;
        }
        q->ntypes += rc == MPI_SUCCESS;
    }
    if (rc != MPI_SUCCESS) {
        req_free(q);
        return rc == MPI_ERR_NO_MEM ? epm_fail(EPM_ERR_NOMEM, "transport mpi: datatype of scattered rows")
                                    : epm_comm_mpi_err(rc, "MPI datatype of token rows");
    }
    *out = q;
    return EPM_OK;
}

epm_status epm_transport_mpi_post(epm_transport *t, epm_xfer_req *q)
{
    (void)t;
    int rc = MPI_SUCCESS;
    for (int i = 0; i < q->ntypes && rc == MPI_SUCCESS; i++) {
        const struct post *po = &q->posts[i];
        rc = po->send ? MPI_Isend(po->buf, po->count, q->types[i], po->peer, q->tag, q->comm, &q->reqs[q->nreq])
                      : MPI_Irecv(po->buf, po->count, q->types[i], po->peer, q->tag, q->comm, &q->reqs[q->nreq]);
        q->nreq += rc == MPI_SUCCESS;
    }
    if (rc != MPI_SUCCESS) {
        /* what was posted must complete before its buffers go away */
        for (int i = 0; i < q->nreq; i++)
            MPI_Cancel(&q->reqs[i]);
        MPI_Waitall(q->nreq, q->reqs, MPI_STATUSES_IGNORE);
        req_free(q);
        return epm_comm_mpi_err(rc, "MPI_Isend/MPI_Irecv of token rows");
    }
    return EPM_OK;
}

void epm_transport_mpi_release(epm_transport *t, epm_xfer_req *q)
{
    (void)t;
    req_free(q);
}

epm_status epm_transport_mpi_wait(epm_transport *t, epm_xfer_req *q)
{
    (void)t;
    int rc = MPI_Waitall(q->nreq, q->reqs, MPI_STATUSES_IGNORE);
    for (int i = 0; rc == MPI_SUCCESS && i < q->nranges; i++)
        for (int64_t j = q->ranges[2 * i]; j < q->ranges[2 * i + 1]; j++)
            memcpy(q->dst_rows[j], q->unpack + j * (int64_t)q->row_bytes, q->row_bytes);
    req_free(q);
    return rc == MPI_SUCCESS ? EPM_OK : epm_comm_mpi_err(rc, "MPI_Waitall of token rows");
}

static double transport_timeout_s;
void epm_transport_set_timeout(double seconds) { transport_timeout_s = seconds > 0 ? seconds : 0; }
double epm_transport_timeout(void) { return transport_timeout_s; }

static void mpi_destroy(epm_transport *t) { epm_free(t); }

static const epm_transport_ops mpi_ops = {
    .name = "mpi", .device = 0, .prepare = epm_transport_mpi_prepare, .post = epm_transport_mpi_post,
    .wait = epm_transport_mpi_wait, .release = epm_transport_mpi_release, .destroy = mpi_destroy,
};

epm_status epm_transport_mpi_create(void *mpi_comm, int rank, int size, epm_transport **out)
{
    const char *e = getenv("EPM_MPI_PACK");
    if (e && *e && strcmp(e, "0") && strcmp(e, "1"))
        return epm_fail(EPM_ERR_INVALID_ARG, "environment EPM_MPI_PACK='%s' is not 0 or 1", e);
    epm_transport *t = epm_calloc(1, sizeof *t);
    if (!t)
        return EPM_ERR_NOMEM;
    t->ops = &mpi_ops;
    t->mpi_comm = mpi_comm;
    t->rank = rank;
    t->size = size;
    *out = t;
    return EPM_OK;
}
