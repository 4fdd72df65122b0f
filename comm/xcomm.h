/* Row exchange between ranks over MPI (host memory): the primitive the
 * runtime's dispatch, combine, K/V all-gather and final gather are built on.
 * Every payload byte is counted per link class (self, same node, other node),
 * with nodes from MPI's shared-memory split or from --virtual-nodes, so the
 * runtime reports exactly what include/epmoe/eval.h models. */
#ifndef EPM_XCOMM_H
#define EPM_XCOMM_H

#include "core.h"
#include "epmoe/cluster.h"

typedef struct epm_xcomm epm_xcomm;

/* MPI_Init when needed. virtual_nodes = 0: real nodes (MPI_COMM_TYPE_SHARED);
 * N > 0: ranks split into N contiguous pretend nodes (N must divide size). */
epm_status epm_xcomm_create(int virtual_nodes, epm_xcomm **out);
void epm_xcomm_destroy(epm_xcomm *x);
int epm_xcomm_rank(const epm_xcomm *x);
int epm_xcomm_size(const epm_xcomm *x);
/* The cluster description of this run (nodes x ranks per node, uniform). */
void epm_xcomm_cluster(const epm_xcomm *x, epm_cluster *c);

/* Sends row i (width floats, the first payload_floats of which are counted as
 * payload) to rank dest[i]; rows to oneself are delivered without MPI.
 * Received rows come ordered by source rank, then send order. */
epm_status epm_xcomm_exchange(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                              int payload_floats, int64_t counted[EPM_LINK_COUNT], float **out_rows,
                              int **out_src, int64_t *out_n);

/* Every rank receives every rank's rows, in rank order. Counted as one copy
 * to each other rank. */
epm_status epm_xcomm_allgather(epm_xcomm *x, int64_t n, const float *rows, int width, int payload_floats,
                               int64_t counted[EPM_LINK_COUNT], float **out_rows, int64_t *out_n);

/* Collective agreement on failure: every rank returns the first failing
 * rank's status, and the detail names that rank and its message. */
epm_status epm_xcomm_agree(epm_xcomm *x, epm_status local);
/* Deadline of every agreement (process-wide; 0 = none): past it, agree
 * returns EPM_ERR_TIMEOUT instead of waiting for a stalled or dead rank. */
void epm_xcomm_set_timeout(double seconds);
/* Ends every rank of the job (MPI_Abort): the caller's last resort after a
 * timeout, when the others may be blocked where no message reaches them. */
void epm_xcomm_abort(epm_xcomm *x, int code);

epm_status epm_xcomm_sum_i64(epm_xcomm *x, int64_t *v, int n);
epm_status epm_xcomm_max_f64(epm_xcomm *x, double *v, int n);
/* Rank 0 receives every rank's n_i bytes concatenated in rank order (others get NULL). */
epm_status epm_xcomm_gather_bytes(epm_xcomm *x, const void *buf, int64_t n, void **out, int64_t *out_n);
void epm_xcomm_barrier(epm_xcomm *x);
/* MPI_Finalize if MPI is up: once, at process exit (MPI cannot start twice). */
void epm_xcomm_finalize(void);

#endif
