/* Transports: how one step of rows moves between ranks. The layout code
 * describes a step as, per peer, a list of source rows (anywhere in memory)
 * and a contiguous receive range; a transport moves those bytes. MPI sends
 * straight from the scattered rows with an hindexed datatype; the staged and
 * NCCL transports work on device buffers. */
#ifndef EPM_COMM_TRANSPORT_H
#define EPM_COMM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "epmoe/comm.h"

typedef struct epm_transport epm_transport;

/* One step: send rows src_rows[send_off[p] .. send_off[p+1]) to peer p,
 * receive recv_off[p+1]-recv_off[p] rows from peer p at recv + recv_off[p]
 * * row_bytes. Self entries are ignored: the caller copies its own rows. */
typedef struct epm_xfer {
    size_t row_bytes;
    const char *const *src_rows; /* row start addresses */
    const int64_t *send_off;     /* [size + 1] */
    char *recv;
    const int64_t *recv_off;     /* [size + 1] */
    char *const *dst_rows;       /* NULL, or a destination address per received row (then recv is unused) */
    /* scratch the caller owns, for transports that pack: send_off[size]
     * rows and, when dst_rows is set, recv_off[size] rows (may be NULL) */
    char *pack_send, *pack_recv;
    /* NULL, or [size]: 1 where the rows to (from) that peer already rode with
     * the counts (epm_xcomm_counts_rows), so the step moves none there; host
     * transports only */
    const unsigned char *skip_send, *skip_recv;
    int tag;
} epm_xfer;

typedef struct epm_xfer_req epm_xfer_req;

typedef struct epm_transport_ops {
    const char *name;
    int device; /* rows are device memory */
    /* A step in three calls, so that a failure on one rank alone never
     * leaves its peers waiting inside a transfer: prepare does everything
     * that can fail locally (allocations, datatypes, staging copies) and
     * sends nothing; the caller agrees with its peers that every rank
     * prepared, then posts (or releases), unless every rank reserved (below)
     * and had room, when no prepare can fail. x need not outlive prepare. */
    epm_status (*prepare)(epm_transport *t, const epm_xfer *x, epm_xfer_req **req);
    /* Optional (NULL: no such promise): once it succeeds, the next prepare
     * cannot fail for lack of memory, so that an exchange whose ranks all
     * hold room for what they receive needs no agreement after its counts. */
    epm_status (*reserve)(epm_transport *t);
    /* Starts the transfer; NULL when it runs in wait. Frees req on failure. */
    epm_status (*post)(epm_transport *t, epm_xfer_req *req);
    /* Completes a posted step and frees it. */
    epm_status (*wait)(epm_transport *t, epm_xfer_req *req);
    /* Frees a prepared step that will not be posted. */
    void (*release)(epm_transport *t, epm_xfer_req *req);
    /* device transports: copy between host and the device (NULL for host ones) */
    epm_status (*to_host)(epm_transport *t, void *host, const void *dev, size_t bytes);
    epm_status (*to_device)(epm_transport *t, void *dev, const void *host, size_t bytes);
    /* host staging memory (pinned for device transports); NULL: epm_malloc */
    void *(*host_alloc)(epm_transport *t, size_t bytes);
    void (*host_free)(epm_transport *t, void *p);
    void (*destroy)(epm_transport *t);
} epm_transport_ops;

struct epm_transport {
    const epm_transport_ops *ops;
    void *mpi_comm; /* MPI_Comm * of the owning epm_comm */
    int rank, size;
};

/* Deadline of a device transport's wait for its peers (process-wide; 0 =
 * none): NCCL's wait polls the communicator's asynchronous error and gives
 * up past it, aborting the communicator, instead of blocking forever on a
 * peer that died. epm_xcomm_set_timeout sets it too. */
void epm_transport_set_timeout(double seconds);
double epm_transport_timeout(void);

/* prepare then post, for callers that agree on failures afterwards */
static inline epm_status epm_transport_start(epm_transport *t, const epm_xfer *x, epm_xfer_req **req)
{
    epm_status st = t->ops->prepare(t, x, req);
    if (st == EPM_OK && t->ops->post && (st = t->ops->post(t, *req)) != EPM_OK)
        *req = NULL;
    return st;
}

/* The MPI exchange on host rows, shared by the staged transport. */
epm_status epm_transport_mpi_prepare(epm_transport *t, const epm_xfer *x, epm_xfer_req **req);
epm_status epm_transport_mpi_post(epm_transport *t, epm_xfer_req *req);
epm_status epm_transport_mpi_wait(epm_transport *t, epm_xfer_req *req);
void epm_transport_mpi_release(epm_transport *t, epm_xfer_req *req);
epm_status epm_transport_mpi_create(void *mpi_comm, int rank, int size, epm_transport **out);
/* One MPI_Alltoallv per step, run in wait; send rows packed by peer (xcomm). */
epm_status epm_transport_alltoallv_create(void *mpi_comm, int rank, int size, epm_transport **out);
#if EPM_HAVE_CUDA
epm_status epm_transport_staged_create(void *mpi_comm, int rank, int size, int local_rank, epm_transport **out);
#endif
#if EPM_HAVE_NCCL
epm_status epm_transport_nccl_create(void *mpi_comm, int rank, int size, int local_rank, epm_transport **out);
#endif

#endif
