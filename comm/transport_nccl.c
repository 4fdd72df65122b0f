/* NCCL transport: rows move GPU to GPU with ncclSend/ncclRecv inside one
 * group per step. The a2a layer gathers and sums rows on the host (staged
 * like the staged transport), so each step packs its rows into a device send
 * buffer and unpacks the device receive buffer; device-side gather and sum
 * kernels would remove those copies. NCCL needs one rank per GPU. */
#include <cuda_runtime.h>
#include <mpi.h>
/* nccl.h declares ncclGroupStart() without (void) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_internal.h"

typedef struct nccl_tr {
    epm_transport base;
    int device;
    ncclComm_t comm;
    cudaStream_t stream;
    char *dsend, *drecv, *hsend, *hrecv; /* device send/recv, pinned host pack/unpack buffers */
    size_t send_cap, recv_cap, hsend_cap, hrecv_cap;
    int in_flight; /* steps prepared and not yet waited for: the buffers above serve one */
    /* Test hooks, so that the poll-and-abort path of stream_wait runs with
     * one rank on one GPU (NCCL refuses two ranks there, so no real peer can
     * die): EPM_TEST_NCCL_HOLD_SECONDS keeps each posted step's stream busy
     * that long (a host function that sleeps), as a peer that never sends
     * would; EPM_TEST_NCCL_ASYNC_ERROR=1 makes the poll see ncclRemoteError,
     * as after a peer's death. Read once, at create. */
    double test_hold;
    int test_async_error;
} nccl_tr;

struct epm_xfer_req {
    char *recv;
    char *const *dst_rows;
    size_t bytes, row_bytes;
    size_t self_lo, self_hi; /* this rank's own receive range, in bytes: the caller's, left alone */
    int64_t *off;            /* [2][size + 1]: send, receive row offsets, for post */
};

static epm_status cuda_err(cudaError_t e, const char *what)
{
    return epm_fail(EPM_ERR_CUDA, "%s failed: %s", what, cudaGetErrorString(e));
}

static epm_status nccl_err(ncclResult_t r, const char *what)
{
    return epm_fail(EPM_ERR_NCCL, "%s failed: %s", what, ncclGetErrorString(r));
}

static epm_status dgrow(char **p, size_t *cap, size_t need, int pinned)
{
    if (need <= *cap)
        return EPM_OK;
    if (*p)
        pinned ? cudaFreeHost(*p) : cudaFree(*p);
    *p = NULL;
    *cap = 0;
    cudaError_t e = pinned ? cudaMallocHost((void **)p, need) : cudaMalloc((void **)p, need);
    if (e != cudaSuccess)
        return cuda_err(e, pinned ? "cudaMallocHost (nccl staging)" : "cudaMalloc (nccl buffers)");
    *cap = need;
    return EPM_OK;
}

static void n_release(epm_transport *t, epm_xfer_req *q)
{
    if (!q)
        return;
    ((nccl_tr *)t)->in_flight--;
    epm_free(q->off);
    epm_free(q);
}

/* Buffers and the copy to the device: what can fail on this rank alone. */
static epm_status n_prepare(epm_transport *t, const epm_xfer *x, epm_xfer_req **out)
{
    nccl_tr *n = (nccl_tr *)t;
    int R = t->size;
    size_t rb = x->row_bytes;
    size_t sbytes = (size_t)x->send_off[R] * rb, rbytes = (size_t)x->recv_off[R] * rb;
    *out = NULL;
    if (!n->comm)
        return epm_fail(EPM_ERR_NCCL, "transport nccl: the communicator was aborted after an earlier failure");
    if (n->in_flight)
        return epm_fail(EPM_ERR_UNSUPPORTED, "transport nccl: one step at a time (its device buffers serve one)");
    epm_xfer_req *q = epm_calloc(1, sizeof *q);
    int64_t *off = epm_malloc(2 * ((size_t)R + 1) * sizeof *off);
    if (!q || !off) {
        epm_free(q);
        epm_free(off);
        return EPM_ERR_NOMEM;
    }
    q->off = off;
    n->in_flight++;
    memcpy(off, x->send_off, ((size_t)R + 1) * sizeof *off);
    memcpy(off + R + 1, x->recv_off, ((size_t)R + 1) * sizeof *off);
    cudaError_t e = cudaSetDevice(n->device);
    epm_status st = e == cudaSuccess ? EPM_OK : cuda_err(e, "cudaSetDevice (nccl transport)");
    if (st == EPM_OK)
        st = dgrow(&n->hsend, &n->hsend_cap, sbytes ? sbytes : 1, 1);
    if (st == EPM_OK)
        st = dgrow(&n->dsend, &n->send_cap, sbytes ? sbytes : 1, 0);
    if (st == EPM_OK)
        st = dgrow(&n->drecv, &n->recv_cap, rbytes ? rbytes : 1, 0);
    if (st == EPM_OK && x->dst_rows)
        st = dgrow(&n->hrecv, &n->hrecv_cap, rbytes ? rbytes : 1, 1);
    if (st == EPM_OK) {
        for (int64_t j = 0; j < x->send_off[R]; j++)
            memcpy(n->hsend + (size_t)j * rb, x->src_rows[j], rb);
        e = cudaMemcpyAsync(n->dsend, n->hsend, sbytes, cudaMemcpyHostToDevice, n->stream);
        if (e != cudaSuccess)
            st = cuda_err(e, "cudaMemcpyAsync of rows to send");
    }
    if (st != EPM_OK) {
        n_release(t, q);
        return st;
    }
    q->recv = x->dst_rows ? n->hrecv : x->recv;
    q->dst_rows = x->dst_rows;
    q->row_bytes = rb;
    q->bytes = rbytes;
    q->self_lo = (size_t)x->recv_off[t->rank] * rb;
    q->self_hi = (size_t)x->recv_off[t->rank + 1] * rb;
    *out = q;
    return EPM_OK;
}

static void CUDART_CB test_hold_fn(void *arg)
{
    double s = *(const double *)arg;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static epm_status n_post(epm_transport *t, epm_xfer_req *q)
{
    nccl_tr *n = (nccl_tr *)t;
    int R = t->size;
    size_t rb = q->row_bytes;
    const int64_t *so = q->off, *ro = q->off + R + 1;
    ncclResult_t r = ncclGroupStart();
    for (int p = 0; p < R && r == ncclSuccess; p++) {
        size_t ns = (size_t)(so[p + 1] - so[p]) * rb;
        size_t nr = (size_t)(ro[p + 1] - ro[p]) * rb;
        if (ns && p != t->rank)
            r = ncclSend(n->dsend + (size_t)so[p] * rb, ns, ncclUint8, p, n->comm, n->stream);
        if (nr && p != t->rank && r == ncclSuccess)
            r = ncclRecv(n->drecv + (size_t)ro[p] * rb, nr, ncclUint8, p, n->comm, n->stream);
    }
    ncclResult_t r2 = ncclGroupEnd();
    if (r == ncclSuccess)
        r = r2;
    if (r != ncclSuccess) {
        n_release(t, q);
        return nccl_err(r, "ncclSend/ncclRecv group");
    }
    if (n->test_hold > 0) {
        cudaError_t e = cudaLaunchHostFunc(n->stream, test_hold_fn, &n->test_hold);
        if (e != cudaSuccess) {
            n_release(t, q);
            return cuda_err(e, "cudaLaunchHostFunc (EPM_TEST_NCCL_HOLD_SECONDS)");
        }
    }
    return EPM_OK;
}

/* Waits for the stream without blocking in CUDA: a peer that died leaves
 * ncclRecv pending forever, so the communicator's asynchronous error is
 * polled, and past the deadline (epm_transport_timeout) the communicator is
 * aborted and the wait fails instead of hanging. */
static epm_status stream_wait(nccl_tr *n)
{
    double limit = epm_transport_timeout(), t0 = epm_now();
    long nap_ns = 0;
    for (;;) {
        cudaError_t e = cudaStreamQuery(n->stream);
        if (e == cudaSuccess)
            return EPM_OK;
        if (e != cudaErrorNotReady)
            return cuda_err(e, "the NCCL exchange's stream");
        ncclResult_t ae = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(n->comm, &ae);
        if (n->test_async_error && r == ncclSuccess && ae == ncclSuccess)
            ae = ncclRemoteError;
        if (r != ncclSuccess || ae != ncclSuccess) {
            ncclCommAbort(n->comm);
            n->comm = NULL;
            return nccl_err(r != ncclSuccess ? r : ae, "NCCL exchange (communicator aborted)");
        }
        if (limit > 0 && epm_now() - t0 > limit) {
            ncclCommAbort(n->comm);
            n->comm = NULL;
            return epm_fail(EPM_ERR_TIMEOUT, "NCCL exchange on rank %d did not complete within %.0f s (--timeout): "
                            "a peer stalled or died; communicator aborted", n->base.rank, limit);
        }
        /* a long exchange is still running after 2 ms: its end is noticed
         * within 50 us (the GPU does the work; the core is the rank's own) */
        nap_ns = epm_backoff(epm_now() - t0, nap_ns, 50000);
    }
}

static epm_status n_wait(epm_transport *t, epm_xfer_req *q)
{
    nccl_tr *n = (nccl_tr *)t;
    /* the pieces before and after this rank's own range; copying that range
     * too would overwrite the rows the caller put there with stale bytes */
    cudaError_t e = q->self_lo ? cudaMemcpyAsync(q->recv, n->drecv, q->self_lo, cudaMemcpyDeviceToHost, n->stream)
                               : cudaSuccess;
    if (e == cudaSuccess && q->bytes > q->self_hi)
        e = cudaMemcpyAsync(q->recv + q->self_hi, n->drecv + q->self_hi, q->bytes - q->self_hi,
                            cudaMemcpyDeviceToHost, n->stream);
    epm_status st = e == cudaSuccess ? stream_wait(n) : cuda_err(e, "cudaMemcpyAsync of received rows");
    if (st == EPM_OK && q->dst_rows)
        for (size_t j = 0; j < q->bytes / q->row_bytes; j++)
            if (j * q->row_bytes < q->self_lo || j * q->row_bytes >= q->self_hi)
                memcpy(q->dst_rows[j], q->recv + j * q->row_bytes, q->row_bytes);
    n_release(t, q);
    return st;
}

static epm_status n_to_host(epm_transport *t, void *host, const void *dev, size_t bytes)
{
    cudaError_t e = cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, ((nccl_tr *)t)->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(((nccl_tr *)t)->stream);
    return e == cudaSuccess ? EPM_OK : cuda_err(e, "cudaMemcpy device -> host (nccl transport)");
}

static epm_status n_to_device(epm_transport *t, void *dev, const void *host, size_t bytes)
{
    cudaError_t e = cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, ((nccl_tr *)t)->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(((nccl_tr *)t)->stream);
    return e == cudaSuccess ? EPM_OK : cuda_err(e, "cudaMemcpy host -> device (nccl transport)");
}

static void *n_host_alloc(epm_transport *t, size_t bytes)
{
    (void)t;
    void *p = NULL;
    return cudaMallocHost(&p, bytes) == cudaSuccess ? p : NULL;
}

static void n_host_free(epm_transport *t, void *p)
{
    (void)t;
    cudaFreeHost(p);
}

static void n_destroy(epm_transport *t)
{
    nccl_tr *n = (nccl_tr *)t;
    if (n->comm)
        ncclCommDestroy(n->comm);
    if (n->stream)
        cudaStreamDestroy(n->stream);
    if (n->dsend)
        cudaFree(n->dsend);
    if (n->drecv)
        cudaFree(n->drecv);
    if (n->hsend)
        cudaFreeHost(n->hsend);
    if (n->hrecv)
        cudaFreeHost(n->hrecv);
    epm_free(n);
}

static const epm_transport_ops nccl_ops = {
    .name = "nccl",
    .device = 1,
    .prepare = n_prepare,
    .post = n_post,
    .wait = n_wait,
    .release = n_release,
    .to_host = n_to_host,
    .to_device = n_to_device,
    .host_alloc = n_host_alloc,
    .host_free = n_host_free,
    .destroy = n_destroy,
};

epm_status epm_transport_nccl_create(void *mpi_comm, int rank, int size, int local_rank, epm_transport **out)
{
    MPI_Comm comm = *(MPI_Comm *)mpi_comm;
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    /* the unique id travels even when this rank has no GPU, so that no rank waits forever */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = ncclSuccess;
    if (rank == 0)
        r = ncclGetUniqueId(&id);
    int rc = MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, comm);
    if (rc != MPI_SUCCESS)
        return epm_comm_mpi_err(rc, "MPI_Bcast of the NCCL unique id");
    if (r != ncclSuccess)
        return nccl_err(r, "ncclGetUniqueId");
    if (e != cudaSuccess || ndev == 0)
        return epm_fail(EPM_ERR_CUDA, "transport nccl: no CUDA device on rank %d (%s)", rank,
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    nccl_tr *n = epm_calloc(1, sizeof *n);
    if (!n)
        return EPM_ERR_NOMEM;
    n->base.ops = &nccl_ops;
    n->base.mpi_comm = mpi_comm;
    n->base.rank = rank;
    n->base.size = size;
    n->device = local_rank % ndev;
    const char *th = getenv("EPM_TEST_NCCL_HOLD_SECONDS"), *ta = getenv("EPM_TEST_NCCL_ASYNC_ERROR");
    n->test_hold = th && *th ? atof(th) : 0;
    n->test_async_error = ta && *ta && strcmp(ta, "0");
    epm_status st = EPM_OK;
    if ((e = cudaSetDevice(n->device)) != cudaSuccess || (e = cudaStreamCreate(&n->stream)) != cudaSuccess)
        st = cuda_err(e, "cudaSetDevice/cudaStreamCreate (nccl transport)");
    if (st == EPM_OK && (r = ncclCommInitRank(&n->comm, size, id, rank)) != ncclSuccess) {
        n->comm = NULL;
        st = nccl_err(r, size > ndev ? "ncclCommInitRank (NCCL needs one rank per GPU; use --transport staged)"
                                     : "ncclCommInitRank");
    }
    if (st != EPM_OK) {
        n_destroy(&n->base);
        return st;
    }
    *out = &n->base;
    return EPM_OK;
}
