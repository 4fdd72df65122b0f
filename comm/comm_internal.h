/* What the comm/ files share: the communicator and the layout. */
#ifndef EPM_COMM_INTERNAL_H
#define EPM_COMM_INTERNAL_H

#include <mpi.h>

#include "core.h"
#include "epm_config.h"
#include "epmoe/comm.h"
#include "transport.h"

struct epm_comm {
    MPI_Comm comm;
    int rank, size, nodes, per_node;
    int *node_of;
    epm_comm_opts opts;
    epm_transport_kind kind;
    epm_transport *tr;
    epm_comm_stats stats;
    char *binding;
    int gpu, gpu_known;
};

epm_status epm_comm_mpi_err(int rc, const char *what);

/* Rows are staged through host memory when the transport cannot move
 * device rows itself (see a2a.c). */
#define EPM_A2A_MAX_STEPS 2

/* One step of a route: rows of the pool go to peers; rows from peers are
 * appended to the pool (peer ascending, then sender's order). */
typedef struct a2a_step {
    int64_t *send_off;  /* [size + 1] */
    int64_t *send_idx;  /* pool indices, grouped by peer */
    int64_t *recv_off;  /* [size + 1] */
    int tag;
} a2a_step;

/* A phase (dispatch or combine): the pool starts with n0 rows (the input),
 * each step appends its received rows. */
typedef struct a2a_route {
    int nsteps;
    a2a_step step[EPM_A2A_MAX_STEPS];
    int64_t n0, pool; /* initial rows, rows after every step */
    /* per received row (pool index - n0): the output row it lands in
     * directly (the transport scatters it there), or -1 (kept in pool_buf) */
    int64_t *direct;
    int64_t wire[EPM_LINK_COUNT], model[EPM_LINK_COUNT], model_rows;
} a2a_route;

struct epm_a2a_layout {
    epm_comm *c;
    int hier;
    /* dispatch: pool = input tokens + received rows */
    a2a_route disp;
    int64_t nrows, nlocal;
    int64_t *row_pool;   /* [nrows] pool index of each output row */
    uint64_t *row_key;
    int *row_src;
    int nexp;
    int32_t *exp_ids;
    int64_t *exp_off;    /* [nexp + 1] */
    int64_t *exp_rows;
    float *exp_w;
    /* combine: pool = partial rows + received rows */
    a2a_route comb;
    int64_t nout;
    uint64_t *out_key;
    int *out_src;
    int64_t *out_off;    /* [nout + 1] into out_pool: contributions, rank ascending */
    int64_t *out_pool;
    /* an operation in flight */
    int busy; /* 0 none, 1 dispatch, 2 combine */
    int cur_step;
    const char *in;
    char *out;
    void *dev_out; /* device output when staging */
    epm_dtype dt;
    int hidden;
    uint64_t *out_keys_dst;
    char *pool_buf;     /* received rows (and host staging) */
    size_t pool_cap;
    const char **src_ptrs;
    size_t src_cap;
    char **dst_ptrs;
    size_t dst_cap;
    char *pack_send, *pack_recv; /* transport scratch */
    size_t pack_send_cap, pack_recv_cap;
    char *host_in, *host_out;
    size_t host_in_cap, host_out_cap;
    epm_xfer_req *req;
};

#endif
