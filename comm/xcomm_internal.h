/* What the xcomm files share: the communicator. */
#ifndef EPM_XCOMM_INTERNAL_H
#define EPM_XCOMM_INTERNAL_H

#include <mpi.h>

#include "transport.h"
#include "xcomm.h"

/* The room a hop or an all-gather sets aside to receive into before its
 * counts (epm_xcomm_counts_fit): as much as the last 8 moved in all, plus a
 * quarter. Above ROOM_MAX (prefill's) a receive is not foreseen: it
 * allocates after the counts and every rank agrees that it could. */
enum { EPM_XCOMM_ROOM_LAST = 8 };
#define EPM_XCOMM_ROOM_MAX ((size_t)64 << 20)
typedef struct epm_xcomm_room {
    size_t last[EPM_XCOMM_ROOM_LAST];
    unsigned n;
} epm_xcomm_room;

static inline size_t epm_xcomm_room_want(const epm_xcomm_room *m)
{
    size_t want = 0;
    for (int i = 0; i < EPM_XCOMM_ROOM_LAST; i++)
        want = m->last[i] > want ? m->last[i] : want;
    return want + want / 4;
}

static inline void epm_xcomm_room_note(epm_xcomm_room *m, size_t bytes)
{
    m->last[m->n++ % EPM_XCOMM_ROOM_LAST] = bytes <= EPM_XCOMM_ROOM_MAX ? bytes : 0;
}

struct epm_xcomm {
    MPI_Comm comm;
    int rank, size, nodes, per_node;
    int local_ranks;   /* ranks on this machine (MPI's shared-memory split), also under virtual nodes */
    int *node_of;
    int64_t *poison;   /* [8 * size]: what a counts phase sends and receives, 3 a peer (see epm_xcomm_counts_fit);
                          the all-gather's counts beside them */
    epm_xcomm_a2a a2a;
    int hier;          /* resolved: exchanges take the hierarchical path */
    epm_transport *tr;
    unsigned seq;      /* exchanges started: tags of concurrent ones differ */
    int failed;        /* a counts phase (an agreement) failed on every rank, or timed out here */
    epm_xcomm_wire wire;
    epm_xcomm_room hop_room, ag_room; /* what exchanges' hops and all-gathers set aside before their counts */
    int no_room;       /* epm_xcomm_set_room(x, 0): offer none (every exchange agrees after its counts) */
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
