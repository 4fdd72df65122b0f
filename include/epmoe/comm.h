/* epmoe: token dispatch and combine between expert-parallel ranks, with the
 * cluster topology (nodes, local ranks, NUMA/GPU locality).
 *
 * One epm_comm per process group. Per MoE layer the runtime builds an
 * epm_a2a_layout from the gate's top-k choice (collective), then moves hidden
 * rows with dispatch and partial expert outputs back with combine. Transports
 * (MPI on host buffers, MPI staged through pinned host memory for device
 * buffers, NCCL) sit behind the same calls; the caller does not change.
 *
 * Row order contract (everything below is deterministic and identical on
 * every transport and on the flat and hierarchical paths):
 *  - dispatch output rows: first this rank's own tokens that have at least one
 *    expert on this rank (ascending token index), then received rows ordered
 *    by source rank, then source token index.
 *  - combine output rows: the tokens whose combine rank is this rank, ordered
 *    by source rank, then source token index; in home mode (combine_rank NULL)
 *    exactly the local tokens in their original order. Each output row is the
 *    sum of the partial rows of the token's serving ranks, added in ascending
 *    rank order (f32 accumulation, one rounding for bf16).
 *  - a token whose ids are all -1 moves nothing; it stays on its own rank and
 *    its combine output row is zero (its combine_rank entry is ignored).
 *
 * Byte accounting follows include/epmoe/eval.h: per payload row hidden *
 * dtype size, dispatch src -> d for each distinct serving rank d != src,
 * combine d -> c for each serving rank d != c. The "model" counters are
 * exactly those; the "wire" counters are what was really sent (they differ
 * only on the hierarchical path, which forwards rows through gateways). */
#ifndef EPMOE_COMM_H
#define EPMOE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/cluster.h"
#include "epmoe/placement.h"
#include "epmoe/status.h"
#include "epmoe/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct epm_comm epm_comm;
typedef struct epm_a2a_layout epm_a2a_layout;

typedef enum epm_transport_kind {
    EPM_TRANSPORT_AUTO = 0, /* nccl for device buffers with one rank per GPU, staged for shared GPUs, else mpi */
    EPM_TRANSPORT_MPI,      /* MPI point-to-point on host buffers */
    EPM_TRANSPORT_STAGED,   /* device buffers staged through pinned host memory, then MPI */
    EPM_TRANSPORT_NCCL      /* ncclSend/ncclRecv on device buffers */
} epm_transport_kind;

typedef enum epm_hier_mode {
    EPM_HIER_AUTO = 0, /* per layout: hierarchical when nodes > 1 and it moves fewer cost-weighted bytes
                        * (intra + inter x intra/inter bandwidth of the default cluster, forwards included) */
    EPM_HIER_ON,       /* whenever nodes > 1 and ranks per node > 1 */
    EPM_HIER_OFF
} epm_hier_mode;

typedef struct epm_comm_opts {
    epm_transport_kind transport;
    int virtual_nodes;      /* 0: real nodes (shared-memory split); N: N contiguous pretend nodes */
    epm_hier_mode hierarchical;
    int device_buffers;     /* hidden/partial/output buffers are CUDA device memory */
} epm_comm_opts;

EPM_API void epm_comm_opts_init(epm_comm_opts *o);
EPM_API const char *epm_transport_name(epm_transport_kind t);
EPM_API epm_status epm_transport_parse(const char *s, epm_transport_kind *out);

/* Collective over MPI_COMM_WORLD (MPI_Init_thread(FUNNELED) when MPI is not
 * up). MPI errors are returned, never fatal. o NULL = defaults. */
EPM_API epm_status epm_comm_create(const epm_comm_opts *o, epm_comm **out);
/* Local; accepts NULL. Does not finalize MPI. */
EPM_API void epm_comm_destroy(epm_comm *c);
/* MPI_Finalize if MPI is up and not finalized (once, at process exit). */
EPM_API void epm_comm_finalize(void);

EPM_API int epm_comm_rank(const epm_comm *c);
EPM_API int epm_comm_size(const epm_comm *c);
EPM_API int epm_comm_node(const epm_comm *c);        /* this rank's node */
EPM_API int epm_comm_nodes(const epm_comm *c);
EPM_API int epm_comm_local_rank(const epm_comm *c);
EPM_API int epm_comm_ranks_per_node(const epm_comm *c);
EPM_API int epm_comm_node_of(const epm_comm *c, int rank);
EPM_API epm_link epm_comm_link(const epm_comm *c, int src, int dst);
EPM_API epm_transport_kind epm_comm_transport(const epm_comm *c);

/* The run's cluster (nodes x ranks per node, default bandwidths), so plan and run agree. */
EPM_API void epm_comm_cluster(const epm_comm *c, epm_cluster *out);
/* EPM_ERR_MISMATCH naming both views when a plan's cluster differs from this run's. Local. */
EPM_API epm_status epm_comm_check_cluster(const epm_comm *c, const epm_cluster *plan);

/* Where this rank runs (hwloc): node, local rank, NUMA node, bound CPUs and
 * the nearest GPU, or "no GPU (CPU-only)". Local; computed on first use. */
EPM_API const char *epm_comm_binding(epm_comm *c);
/* GPU index this rank should use (local rank mod visible GPUs), -1 without a GPU. */
EPM_API int epm_comm_gpu(epm_comm *c);

/* Error agreement (collective): every rank returns EPM_OK, or the status of
 * the lowest failing rank (EPM_ERR_REMOTE on the others), with a detail that
 * names that rank and carries its message. global may be NULL. */
EPM_API epm_status epm_comm_agree(epm_comm *c, epm_status local, epm_status *global);

EPM_API epm_status epm_comm_barrier(epm_comm *c);
EPM_API epm_status epm_comm_allreduce_sum_i64(epm_comm *c, int64_t *v, int n);
EPM_API epm_status epm_comm_allreduce_max_i64(epm_comm *c, int64_t *v, int n);
EPM_API epm_status epm_comm_allreduce_max_f64(epm_comm *c, double *v, int n);
/* Every rank's bytes, concatenated in rank order, into *all (epm_free-able,
 * host memory); counts [size] (may be NULL) receives each rank's byte count.
 * payload_bytes (<= bytes) of mine are counted under EPM_PHASE_ALLGATHER as
 * one copy to each other rank (metadata in the rest is not counted). */
EPM_API epm_status epm_comm_allgatherv(epm_comm *c, const void *mine, size_t bytes, size_t payload_bytes,
                                       void **all, size_t *counts, size_t *total);
/* Rank root receives every rank's bytes in rank order (epm_free-able buffer); others get NULL. Not counted. */
EPM_API epm_status epm_comm_gatherv(epm_comm *c, int root, const void *mine, size_t bytes, void **out,
                                    size_t *out_bytes);
EPM_API epm_status epm_comm_bcast(epm_comm *c, int root, void *buf, size_t bytes);

/* ---- byte accounting ---- */
typedef enum epm_comm_phase {
    EPM_PHASE_DISPATCH = 0,
    EPM_PHASE_COMBINE,
    EPM_PHASE_ALLGATHER,
    EPM_PHASE_COUNT
} epm_comm_phase;

typedef struct epm_comm_stats {
    /* bytes this rank sent, per phase and link class: the eval.h model ... */
    int64_t model[EPM_PHASE_COUNT][EPM_LINK_COUNT];
    /* ... and what went over the wire (hierarchical forwards included) */
    int64_t wire[EPM_PHASE_COUNT][EPM_LINK_COUNT];
    int64_t rows[EPM_PHASE_COUNT];      /* payload rows sent (model) */
    int64_t ops[EPM_PHASE_COUNT];       /* completed operations */
    int64_t hier_ops;                   /* operations that took the hierarchical path */
} epm_comm_stats;

/* This rank's counters (sum them over ranks with allreduce for a total). */
EPM_API void epm_comm_stats_get(const epm_comm *c, epm_comm_stats *out);
EPM_API void epm_comm_stats_reset(epm_comm *c);

/* ---- layout: who sends which token where (collective) ----
 * ids/weights [ntok * k] (id -1 = no expert), keys [ntok] global token
 * indices (replica choice: epm_route_pick(p, layer, ids + t*k, k, rank,
 * keys[t])), combine_rank [ntok] or NULL (home mode: combine on this rank).
 * Every rank must pass a placement with the same rank count as the comm and
 * the same k; ids are validated before anything is exchanged, and a bad
 * input on one rank fails on every rank. ntok may be 0. The layout borrows
 * nothing: ids, weights, keys and combine_rank may be freed afterwards. */
EPM_API epm_status epm_a2a_layout_create(epm_comm *c, const epm_placement *p, int layer, int64_t ntok, int k,
                                         const int32_t *ids, const float *weights, const uint64_t *keys,
                                         const int *combine_rank, epm_a2a_layout **out);
EPM_API void epm_a2a_layout_destroy(epm_a2a_layout *l);

/* Dispatch output rows on this rank (see the row order above), and how many
 * of them are this rank's own tokens (the first ones). */
EPM_API int64_t epm_a2a_rows(const epm_a2a_layout *l);
EPM_API int64_t epm_a2a_local_rows(const epm_a2a_layout *l);
/* Key (global token index) and source rank of each dispatch output row. */
EPM_API const uint64_t *epm_a2a_row_keys(const epm_a2a_layout *l);
EPM_API const int *epm_a2a_row_src(const epm_a2a_layout *l);
/* Experts of this rank that receive rows in this layer: their global ids, ascending. */
EPM_API int epm_a2a_experts(const epm_a2a_layout *l, const int32_t **expert_ids);
/* For local expert i (index into epm_a2a_experts): its rows (indices into
 * the dispatch output, ascending) and the gate weight of each. A row can
 * feed several local experts. Returns the count. */
EPM_API int64_t epm_a2a_expert_rows(const epm_a2a_layout *l, int i, const int64_t **rows, const float **weights);
/* Combine output rows on this rank and their keys / source ranks. */
EPM_API int64_t epm_a2a_out_rows(const epm_a2a_layout *l);
EPM_API const uint64_t *epm_a2a_out_keys(const epm_a2a_layout *l);
EPM_API const int *epm_a2a_out_src(const epm_a2a_layout *l);
/* 1 when this layout takes the hierarchical path (same answer on every rank). */
EPM_API int epm_a2a_hierarchical(const epm_a2a_layout *l);

/* Dispatch: hidden_in [ntok x hidden] this rank's tokens -> rows_out
 * [epm_a2a_rows x hidden]. dt: EPM_DTYPE_F32 or EPM_DTYPE_BF16. Collective
 * over the layout's ranks (every rank calls with the same dt and hidden).
 * Buffers must stay valid and untouched between _start and _wait. One
 * operation in flight per layout; several layouts may be in flight at once
 * (micro-batches) when every rank starts them in the same order. The
 * hierarchical path's second step runs inside _wait. */
EPM_API epm_status epm_a2a_dispatch(epm_a2a_layout *l, const void *hidden_in, epm_dtype dt, int hidden,
                                    void *rows_out);
EPM_API epm_status epm_a2a_dispatch_start(epm_a2a_layout *l, const void *hidden_in, epm_dtype dt, int hidden,
                                          void *rows_out);
EPM_API epm_status epm_a2a_dispatch_wait(epm_a2a_layout *l);

/* Combine: partial [epm_a2a_rows x hidden] (per dispatch row, the sum over
 * this rank's experts of weight * expert(row)) -> out [epm_a2a_out_rows x
 * hidden], summed over serving ranks in ascending rank order. out_keys
 * (may be NULL) receives epm_a2a_out_keys. */
EPM_API epm_status epm_a2a_combine(epm_a2a_layout *l, const void *partial, epm_dtype dt, int hidden, void *out,
                                   uint64_t *out_keys);
EPM_API epm_status epm_a2a_combine_start(epm_a2a_layout *l, const void *partial, epm_dtype dt, int hidden,
                                         void *out, uint64_t *out_keys);
EPM_API epm_status epm_a2a_combine_wait(epm_a2a_layout *l);

#ifdef __cplusplus
}
#endif
#endif
