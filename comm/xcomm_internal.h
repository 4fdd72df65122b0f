/* What the xcomm files share: the communicator. */
#ifndef EPM_XCOMM_INTERNAL_H
#define EPM_XCOMM_INTERNAL_H

#include <mpi.h>

#include "transport.h"
#include "xcomm.h"

struct epm_xcomm {
    MPI_Comm comm;
    int rank, size, nodes, per_node;
    int *node_of;
    int64_t *poison;   /* [2 * size]: what a counts phase sends and receives (see epm_xcomm_counts) */
    epm_xcomm_a2a a2a;
    int hier;          /* resolved: exchanges take the hierarchical path */
    epm_transport *tr;
    unsigned seq;      /* exchanges started: tags of concurrent ones differ */
    int failed;        /* a counts phase (an agreement) failed on every rank, or timed out here */
    epm_xcomm_wire wire;
    /* scratch kept between exchanges (see epm_xcomm_buf for why) */
    struct {
        void *p;
        size_t cap;
        int used;
    } pool[16];
};

void epm_xcomm_pool_release(epm_xcomm *x);

epm_status epm_xcomm_mpi_err(int rc, const char *what);

static inline epm_link epm_xcomm_link(const epm_xcomm *x, int a, int b)
{
    if (a == b)
        return EPM_LINK_SELF;
    return x->node_of[a] == x->node_of[b] ? EPM_LINK_INTRA : EPM_LINK_INTER;
}

#endif
