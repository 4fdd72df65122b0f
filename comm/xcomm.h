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

/* How exchange moves rows. Every transport gives the same rows in the same
 * order; they differ in how (and whether) the transfer overlaps the caller. */
typedef enum epm_xcomm_a2a {
    EPM_XA2A_ALLTOALLV = 0, /* counts (small hops' rows riding with them), MPI_Alltoallv of the rest (in _wait) */
    EPM_XA2A_P2P,           /* MPI_Irecv/MPI_Isend per peer, posted in _start */
    EPM_XA2A_STAGED,        /* the staged transport (CUDA builds): MPI from pinned host memory */
    EPM_XA2A_NCCL           /* ncclSend/ncclRecv between GPUs (NCCL builds; one rank per GPU) */
} epm_xcomm_a2a;

/* Hierarchical exchange between nodes (Tutel's 2DH idea): a row for local
 * rank l of another node first goes to local rank l of this node, which
 * sends all its node's rows for local rank l of each other node in one
 * message: P times fewer, larger messages between nodes (P ranks per node),
 * at the price of one intra-node hop. */
typedef enum epm_xcomm_hier {
    EPM_XHIER_AUTO = 0, /* epmoe's choice: the flat path (see epm_xcomm_hier_takes) */
    EPM_XHIER_ON,       /* whenever nodes > 1 */
    EPM_XHIER_OFF
} epm_xcomm_hier;

typedef struct epm_xcomm_opts {
    int virtual_nodes; /* 0: real nodes (MPI_COMM_TYPE_SHARED); N > 0: N contiguous pretend nodes */
    epm_xcomm_a2a a2a;
    epm_xcomm_hier hier;
} epm_xcomm_opts;

/* 1 when exchanges between `nodes` nodes of per_node ranks take the
 * hierarchical path under h (what a communicator resolves at creation; plan
 * eval prices the same path). */
int epm_xcomm_hier_takes(epm_xcomm_hier h, int nodes, int per_node);

/* Defaults: real nodes, alltoallv, hier auto. */
void epm_xcomm_opts_init(epm_xcomm_opts *o);
/* Overrides a2a and hier from EPM_A2A=alltoallv|p2p|staged|nccl and
 * EPM_A2A_HIER=auto|on|off; an unknown value is an error naming it. */
epm_status epm_xcomm_opts_from_env(epm_xcomm_opts *o);
/* The same with a command line's --a2a and --hier (NULL: not given), which
 * win: a variable is read only where its flag is absent, and an error names
 * whichever gave the bad value. */
epm_status epm_xcomm_opts_resolve(epm_xcomm_opts *o, const char *a2a, const char *hier);
const char *epm_xcomm_a2a_name(epm_xcomm_a2a a);
epm_status epm_xcomm_a2a_parse(const char *s, epm_xcomm_a2a *out);
epm_status epm_xcomm_hier_parse(const char *s, epm_xcomm_hier *out);

/* Collective; MPI_Init when needed. o NULL = defaults (the environment is not read). */
epm_status epm_xcomm_create_opts(const epm_xcomm_opts *o, epm_xcomm **out);
/* The job's rank and size, MPI up if it was not: what a command checks its
 * options against (--virtual-nodes must divide the ranks) before any
 * collective, so that every rank refuses alike. */
epm_status epm_xcomm_world(int *rank, int *size);
/* MPI_Init when needed. virtual_nodes = 0: real nodes (MPI_COMM_TYPE_SHARED);
 * N > 0: ranks split into N contiguous pretend nodes (N must divide size).
 * Transport and hierarchical mode from the environment (epm_xcomm_opts_from_env). */
epm_status epm_xcomm_create(int virtual_nodes, epm_xcomm **out);
void epm_xcomm_destroy(epm_xcomm *x);
int epm_xcomm_rank(const epm_xcomm *x);
int epm_xcomm_size(const epm_xcomm *x);
/* The cluster description of this run (nodes x ranks per node, uniform). */
void epm_xcomm_cluster(const epm_xcomm *x, epm_cluster *c);

/* Sends row i (width floats, the first payload_floats of which are counted as
 * payload) to rank dest[i]; rows to oneself are delivered without MPI.
 * Received rows come ordered by source rank, then send order.
 * Failures: invalid arguments or an allocation that fails on one rank before
 * or between the hops fail the exchange on every rank (the others get
 * EPM_ERR_REMOTE naming it). One that fails after the last transfer (while
 * merging what arrived) is returned on that rank alone: callers agree on
 * their status afterwards (epm_xcomm_agree), as the runtime does. */
epm_status epm_xcomm_exchange(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                              int payload_floats, int64_t counted[EPM_LINK_COUNT], float **out_rows,
                              int **out_src, int64_t *out_n);

/* Split phase: _start validates, packs, exchanges the counts and posts the
 * transfer (p2p posts every message; alltoallv and the hierarchical path's
 * second hop run in _wait); the caller may compute, then _wait delivers what
 * epm_xcomm_exchange would have, bit for bit. rows and dest may be reused once
 * _start returns. Exchanges in flight complete in any order, but every rank
 * must start and wait them in the same order. _wait frees the request, also
 * on error; epm_xcomm_exchange_cancel frees one that will not be waited for
 * (after the MPI requests finish: collective in effect). */
typedef struct epm_xcomm_req epm_xcomm_req;
epm_status epm_xcomm_exchange_start(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                    int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_req **req);
epm_status epm_xcomm_exchange_wait(epm_xcomm_req *req, float **out_rows, int **out_src, int64_t *out_n);
void epm_xcomm_exchange_cancel(epm_xcomm_req *req);

/* Reusable output of an exchange: the caller keeps one per use site (a
 * layer loop's dispatch, its combine), so that buffers grow to their peak
 * once and later exchanges touch no fresh pages (a fresh multi-MiB
 * allocation per exchange costs more in page faults than the transfer).
 * Zero-initialise; epm_xcomm_buf_free releases. */
typedef struct epm_xcomm_buf {
    float *rows;  /* [n][width] */
    int *src;     /* [n] source rank of each row */
    int64_t n;
    size_t rows_cap, src_cap; /* bytes allocated */
} epm_xcomm_buf;
void epm_xcomm_buf_free(epm_xcomm_buf *b);
/* Frees the scratch blocks no exchange in flight holds: after an exchange of
 * unusual size (online rebalancing's experts), which would otherwise keep
 * its blocks until the communicator ends; later exchanges regrow theirs. */
void epm_xcomm_pool_trim(epm_xcomm *x);
/* As epm_xcomm_exchange / _start + _wait, received rows landing in *out
 * (which must stay untouched until the wait). */
epm_status epm_xcomm_exchange_buf(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                  int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out);
epm_status epm_xcomm_exchange_start_buf(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                        int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out,
                                        epm_xcomm_req **req);
epm_status epm_xcomm_exchange_wait_buf(epm_xcomm_req *req);
/* As _start_buf, but rows already in destination order are sent from rows
 * itself (on the flat path), not copied into the exchange's scratch: rows
 * must stay untouched until the wait (a long exchange's rows, which a copy
 * would double). */
epm_status epm_xcomm_exchange_start_lent(epm_xcomm *x, int64_t n, const int *dest, const float *rows, int width,
                                         int payload_floats, int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out,
                                         epm_xcomm_req **req);

/* Multi-destination exchange: row i (width floats, the first payload_floats
 * of which are counted as payload) goes to every rank listed in
 * dest[i * slots .. i * slots + slots): -1 entries are skipped (anywhere,
 * not only trailing), the others must be ranks of the communicator and
 * distinct within the row (else EPM_ERR_INVALID_ARG before any transfer on
 * the ranks that made the mistake, and EPM_ERR_REMOTE naming the lowest of
 * them on the others: no rank is left waiting). The caller's own rank
 * may be listed: that copy is delivered without MPI, as epm_xcomm_exchange
 * delivers rows to oneself. A row with no rank listed is not sent. slots
 * may differ between ranks (0 = nothing sent). keys[i] (keys NULL: i)
 * picks among the gateways of row i on the hierarchical path where no
 * choice is free (epm_hier_gateways, hier_route.h); what is delivered does
 * not depend on it, only which ranks forward it.
 *
 * Every rank receives exactly what epm_xcomm_exchange would deliver had the
 * caller replicated row i once per listed rank: the same rows, ordered by
 * source rank, then by row index at the source; out_src the same. counted
 * also adds what that replicated exchange would count (the eval.h model:
 * payload bytes per row and listed rank other than the caller's, under the
 * link class of (caller, rank)), so plan and run agree whichever path runs.
 *
 * Flat path: one copy per listed rank, packed from the caller's rows; the
 * wire bytes equal the counted ones. Hierarchical path (three hops): a row
 * crosses between nodes once per destination node, to a rank of that node
 * it is destined for, which fans it out to the row's other ranks there;
 * the wire counts the gathering hop and the fan-out as intra and the hop
 * between nodes as inter (see comm/xcomm_a2a.c). The split-phase and
 * buffer variants mirror epm_xcomm_exchange's: the same request and waits
 * (epm_xcomm_exchange_wait, _wait_buf, _cancel); the hierarchical path runs
 * its second and third hops in the wait. */
epm_status epm_xcomm_exchange_multi(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                    const float *rows, int width, int payload_floats, int64_t counted[EPM_LINK_COUNT],
                                    float **out_rows, int **out_src, int64_t *out_n);
epm_status epm_xcomm_exchange_multi_start(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                          const float *rows, int width, int payload_floats,
                                          int64_t counted[EPM_LINK_COUNT], epm_xcomm_req **req);
epm_status epm_xcomm_exchange_multi_buf(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                        const float *rows, int width, int payload_floats,
                                        int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out);
epm_status epm_xcomm_exchange_multi_start_buf(epm_xcomm *x, int64_t n, int slots, const int *dest, const uint64_t *keys,
                                              const float *rows, int width, int payload_floats,
                                              int64_t counted[EPM_LINK_COUNT], epm_xcomm_buf *out, epm_xcomm_req **req);

/* What really went over the links, per link class of each hop: payload bytes
 * (payload_floats * 4 per row per hop) and messages (one per non-empty
 * per-peer block). On the flat path bytes equal the counted (eval.h) bytes;
 * the hierarchical path counts its gathering hop as intra and its hop
 * between nodes as inter, while `counted` keeps the eval.h model
 * (source rank -> destination rank) so that plan and run still agree.
 * exchange_multi's hierarchical path adds its fan-out hop to intra; its
 * inter bytes are one payload per (row, destination node other than the
 * caller's), below the counted inter bytes whenever a row has several
 * destination ranks on one other node. */
typedef struct epm_xcomm_wire {
    int64_t bytes[EPM_LINK_COUNT];
    int64_t msgs[EPM_LINK_COUNT];
    int64_t exchanges, hier_exchanges;
    int64_t hops, hops_agreed; /* hops (one a flat exchange), and those that agreed again after their counts
                                  because some rank had no room for what all sent (epm_xcomm_counts_fit) */
    int64_t hops_fused;        /* hops whose rows all rode with their counts: no step after them */
    int64_t gathers, gathers_fused; /* all-gathers, and those whose rows all rode with their counts */
} epm_xcomm_wire;
void epm_xcomm_wire_get(const epm_xcomm *x, epm_xcomm_wire *out);
void epm_xcomm_wire_reset(epm_xcomm *x);
/* 1 when exchanges take the hierarchical path on this communicator. */
int epm_xcomm_hierarchical(const epm_xcomm *x);
epm_xcomm_a2a epm_xcomm_transport(const epm_xcomm *x);
int epm_xcomm_node_of(const epm_xcomm *x, int rank);
/* The ranks on this rank's machine (MPI's shared-memory split; real, also under virtual nodes). */
int epm_xcomm_local_ranks(const epm_xcomm *x);
/* Bytes the communicator holds for its life: the counts messages' slots, each way. */
size_t epm_xcomm_held_bytes(const epm_xcomm *x);

/* Every rank receives every rank's rows, in rank order. Counted as one copy
 * to each other rank. */
epm_status epm_xcomm_allgather(epm_xcomm *x, int64_t n, const float *rows, int width, int payload_floats,
                               int64_t counted[EPM_LINK_COUNT], float **out_rows, int64_t *out_n);

/* Collective agreement on failure: every rank returns the first failing
 * rank's status, and the detail names that rank and its message. It is the
 * counts phase that every exchange and all-gather starts with (below), so a
 * rank that failed on its own meets the others in whichever of them they
 * reach next: callers need no agreement of their own just before one. */
epm_status epm_xcomm_agree(epm_xcomm *x, epm_status local);
/* The counts phase (collective): send[r] >= 0 to rank r, recv[r] from it;
 * with local != EPM_OK (send ignored) this rank's failure instead. Returns
 * as epm_xcomm_agree does: any rank's failure fails it on every rank. send
 * NULL: zeros; recv NULL: scratch (a bare agreement). */
epm_status epm_xcomm_counts(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv);
/* ... and with cap, the rows this rank can receive without allocating (-1:
 * none): *fit (may be NULL) = 1 on every rank alike when every rank's cap
 * covers the rows that all ranks send (*all, may be NULL), so that no rank
 * can fail to hold what it receives and the exchange needs no agreement
 * after its counts. */
epm_status epm_xcomm_counts_fit(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv, int64_t cap,
                                int *fit, int64_t *all);
/* on = 0: exchanges and all-gathers offer no room in their counts phase, so
 * that each agrees again after it that every rank could allocate (as before
 * the room was offered; bench a2a's baseline). Default 1. */
void epm_xcomm_set_room(epm_xcomm *x, int on);
/* Rows riding in the counts messages (on by default): off, every hop's rows
 * wait for the step after its counts, as before (bench a2a's baseline).
 * Collective in effect: every rank of x must make the same call before its
 * next exchange (each decides what it sends by its own setting). */
void epm_xcomm_set_eager(epm_xcomm *x, int on);
/* 1 once an agreement or a counts phase has failed (every rank knows it),
 * timed out or met an MPI error (no rank can count on the others): a caller
 * on its way out owes no further agreement. */
int epm_xcomm_failed(const epm_xcomm *x);
/* Deadline of every agreement (process-wide; 0 = none): past it, agree
 * returns EPM_ERR_TIMEOUT instead of waiting for a stalled or dead rank. */
void epm_xcomm_set_timeout(double seconds);
/* 1 once an agreement of this process gave up on a silent rank: whether this
 * rank's error is EPM_ERR_TIMEOUT (it names the silent rank) or
 * EPM_ERR_REMOTE (another live rank does), the job must end by
 * epm_xcomm_abort, not MPI_Finalize, whose fence would wait for that rank. */
int epm_xcomm_timed_out(void);
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
