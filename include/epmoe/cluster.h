/* epmoe: the one cluster description that the planner and the runtime share.
 * A rank is one expert-parallel worker (one GPU, or one process on a CPU).
 * Ranks are numbered node-major: rank r lives on node r / gpus_per_node. */
#ifndef EPMOE_CLUSTER_H
#define EPMOE_CLUSTER_H

#include <stddef.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum epm_link {
    EPM_LINK_SELF = 0,  /* same rank: free */
    EPM_LINK_INTRA = 1, /* another rank of the same node (NVLink, shared memory) */
    EPM_LINK_INTER = 2, /* another node (InfiniBand, Ethernet) */
    EPM_LINK_COUNT = 3
} epm_link;

typedef struct epm_cluster {
    int nodes;
    int gpus_per_node;
    double intra_gbps;  /* GB/s per rank inside a node */
    double inter_gbps;  /* GB/s per rank between nodes */
    double gpu_tflops;  /* dense throughput per rank, for modelled compute time */
} epm_cluster;

/* Defaults: 1 node of 8, NVLink-class 150 GB/s inside (measured H100 all-to-all
 * busbw range), 25 GB/s between nodes (one 200 Gb/s NIC per GPU), 400 TFLOP/s. */
EPM_API void epm_cluster_init(epm_cluster *c, int nodes, int gpus_per_node);
EPM_API epm_status epm_cluster_validate(const epm_cluster *c);
/* {"nodes": 2, "gpus_per_node": 8, "intra_node_gbps": 150, "inter_node_gbps": 25,
 *  "gpu_tflops": 400}; absent fields keep their defaults. */
EPM_API epm_status epm_cluster_load_json(const char *path, epm_cluster *out);
EPM_API epm_status epm_cluster_parse_json(const char *text, size_t len, const char *label, epm_cluster *out);

static inline int epm_cluster_ranks(const epm_cluster *c) { return c->nodes * c->gpus_per_node; }
static inline int epm_cluster_node_of(const epm_cluster *c, int rank) { return rank / c->gpus_per_node; }
static inline epm_link epm_cluster_link(const epm_cluster *c, int a, int b)
{
    if (a == b)
        return EPM_LINK_SELF;
    return epm_cluster_node_of(c, a) == epm_cluster_node_of(c, b) ? EPM_LINK_INTRA : EPM_LINK_INTER;
}
/* Relative cost per byte of a link class: 0 for self, 1 inside a node,
 * intra_gbps / inter_gbps between nodes. */
EPM_API double epm_cluster_link_cost(const epm_cluster *c, epm_link l);
EPM_API const char *epm_link_name(epm_link l);

#ifdef __cplusplus
}
#endif
#endif
