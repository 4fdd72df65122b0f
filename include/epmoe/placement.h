/* epmoe: where experts live. Per MoE layer, each expert has one or more ranks
 * (replicas). Written by `epmoe plan`, read by `epmoe plan eval` and `epmoe run`. */
#ifndef EPMOE_PLACEMENT_H
#define EPMOE_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/cluster.h"
#include "epmoe/status.h"
#include "epmoe/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_PLACEMENT_FORMAT_VERSION 1

typedef struct epm_placement epm_placement;

/* How good the answer is (GLPK's distinction between how a run ended and what it found). */
typedef enum epm_plan_quality {
    EPM_QUALITY_HEURISTIC = 0, /* no bound claimed */
    EPM_QUALITY_OPTIMAL,       /* proven optimal (gap <= requested mip gap) */
    EPM_QUALITY_FEASIBLE,      /* incumbent with a bound and a gap */
    EPM_QUALITY_FALLBACK       /* the solver found nothing in time; best heuristic returned */
} epm_plan_quality;

EPM_API const char *epm_plan_quality_name(epm_plan_quality q);

/* Empty placement (no expert placed). k is the trace's top-k (metadata). */
EPM_API epm_status epm_placement_create(int layers, int experts, int k, const epm_cluster *c,
                                        epm_placement **out);
EPM_API epm_status epm_placement_clone(const epm_placement *p, epm_placement **out);
EPM_API void epm_placement_destroy(epm_placement *p);

EPM_API int epm_placement_layers(const epm_placement *p);
EPM_API int epm_placement_experts(const epm_placement *p);
EPM_API int epm_placement_k(const epm_placement *p);
EPM_API int epm_placement_ranks(const epm_placement *p);
EPM_API const epm_cluster *epm_placement_cluster(const epm_placement *p);

/* Adds rank as a replica of (layer, expert). A rank holds at most one copy of an expert. */
EPM_API epm_status epm_placement_add(epm_placement *p, int layer, int expert, int rank);
/* Removes every replica of a layer. */
EPM_API void epm_placement_clear_layer(epm_placement *p, int layer);
/* Replicas of (layer, expert), sorted ascending; returns their count and sets *ranks. */
EPM_API int epm_placement_replicas(const epm_placement *p, int layer, int expert, const int **ranks);
/* Experts (counting replicas) that rank holds in layer. */
EPM_API int epm_placement_rank_count(const epm_placement *p, int layer, int rank);
/* Largest number of experts any rank holds in any layer (physical slots per rank). */
EPM_API int epm_placement_max_slots(const epm_placement *p);
/* 1 when rank holds a copy of (layer, expert). */
EPM_API int epm_placement_has(const epm_placement *p, int layer, int expert, int rank);

/* p with its nodes, and the ranks within each node, renamed (a layer at a
 * time) so that as many of its replicas as possible stay on ranks that hold
 * them in `to` (an optimal assignment): the same balance and traffic (nodes
 * are alike to the cost model, and a node's ranks), the fewest experts moved
 * between the two; beyond 2048 ranks, a copy of p. Same shape and cluster
 * required (EPM_ERR_MISMATCH). */
EPM_API epm_status epm_placement_align(const epm_placement *to, const epm_placement *p, epm_placement **out);
/* The replicas `to` has that `from` lacks (an expert on a rank that did not
 * hold it): the experts a change of placement reads. Same shape required
 * (EPM_ERR_MISMATCH). */
EPM_API epm_status epm_placement_gains(const epm_placement *from, const epm_placement *to, int64_t *out);
/* One replica a change of placement adds, and the rank it is copied from. */
typedef struct epm_expert_move {
    int layer, expert, from, to;
} epm_expert_move;
/* The replicas `to` has that `from` lacks (as epm_placement_gains counts
 * them), by layer, expert, then gaining rank, each with its source: a rank
 * that holds the expert in `from`, on the gainer's node where one is (the
 * cheaper link), among those the one with the fewest copies assigned to it
 * so far in that layer, then the lowest. epmoe run --eplb-from peers sends
 * them so and plan eval prices them so. moves NULL: the count alone (*n);
 * else cap must hold them all (EPM_ERR_INVALID_ARG). Same shape required. */
EPM_API epm_status epm_placement_moves(const epm_placement *from, const epm_placement *to, epm_expert_move *moves,
                                       int64_t cap, int64_t *n);

/* Checks that every expert of every layer has a replica and, when
 * slots_per_rank > 0, that no rank holds more than slots_per_rank experts. */
EPM_API epm_status epm_placement_validate(const epm_placement *p, int slots_per_rank);

/* Metadata carried in the JSON. */
typedef struct epm_placement_info {
    char method[32];
    epm_mode mode;
    epm_plan_quality quality;
    double objective; /* the method's objective value (planner units) */
    double bound;     /* a lower bound on it, or NaN when none */
    double gap;       /* (objective - bound) / |objective|, or NaN */
    double solve_seconds;
    char note[256];   /* e.g. why a fallback happened */
} epm_placement_info;

EPM_API const epm_placement_info *epm_placement_get_info(const epm_placement *p);
EPM_API void epm_placement_set_info(epm_placement *p, const epm_placement_info *info);

/* JSON, format version EPM_PLACEMENT_FORMAT_VERSION, written atomically. */
EPM_API epm_status epm_placement_save_json(const epm_placement *p, const char *path);
EPM_API epm_status epm_placement_load_json(const char *path, epm_placement **out);
EPM_API epm_status epm_placement_parse_json(const char *text, size_t len, const char *label,
                                            epm_placement **out);
/* EPLB export, the file SGLang's --init-expert-location takes:
 * {"physical_to_logical_map": [layers][R*S]}, rank r owning physical slots
 * [r*S, (r+1)*S) in ascending expert id. Every rank must hold S experts in
 * every layer (EPM_ERR_UNSUPPORTED otherwise, naming the layer and rank):
 * those engines give every rank the same number of physical experts. The
 * rows are the placement's MoE layers; _layers writes one per decoder layer
 * of a model of total_layers whose MoE layers is_moe marks (as SGLang maps
 * them), a dense layer's the trivial map (slot q holds expert q mod E). */
EPM_API epm_status epm_placement_export_eplb(const epm_placement *p, const char *path);
EPM_API epm_status epm_placement_export_eplb_layers(const epm_placement *p, const char *path, int total_layers,
                                                    const uint8_t *is_moe);

/* ---- the replica choice that plan eval and run share ----
 * For a token on rank src choosing experts ids[0..k) (-1 = none) at layer,
 * writes the rank that serves each choice (-1 for none): the replica on the
 * cheapest link from src (self, then same node, then other node); among
 * equally cheap replicas, the one at index (key + slot) mod count, where key is
 * the token's global index — deterministic, computable on any rank, and
 * balanced over tokens. */
EPM_API void epm_route_pick(const epm_placement *p, int layer, const int32_t *ids, int k, int src,
                            uint64_t key, int *ranks_out);

#ifdef __cplusplus
}
#endif
#endif
