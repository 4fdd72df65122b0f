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
    int64_t *poison;   /* [8 * size]: the headers a counts phase received, 4 a peer (epm_xcomm_counts_rows);
                          the all-gather's offsets from 4 * size and counts from 6 * size */
    epm_xcomm_a2a a2a;
    int hier;          /* resolved: exchanges take the hierarchical path */
    epm_transport *tr;
    unsigned seq;      /* exchanges started: tags of concurrent ones differ */
    int failed;        /* a counts phase (an agreement) failed on every rank, or timed out here */
    epm_xcomm_wire wire;
    epm_xcomm_room hop_room, ag_room; /* what exchanges' hops and all-gathers set aside before their counts */
    int no_room;       /* epm_xcomm_set_room(x, 0): offer none (every exchange agrees after its counts) */
    /* The counts phase's own messages (epm_xcomm_counts_rows): one to each
     * peer, on a communicator of their own so that no row transfer's tag
     * can match them; a hop's rows for a peer ride in it up to emax bytes */
    MPI_Comm ctl;
    size_t emax;       /* row bytes a counts message may carry (0: none) */
    char *esend, *erecv;         /* [size] slots of EPM_XCOMM_EHDR + emax bytes */
    MPI_Request *ereq;           /* [2 * size] */
    MPI_Status *estat;           /* [size] the receives' */
    int epending;      /* a counts phase gave up with its messages in flight (a timeout, or MPI_ERR_* when
                          negative): their buffers are left to MPI */
    int no_eager;      /* epm_xcomm_set_eager(x, 0): rows never ride with the counts */
    /* scratch kept between exchanges (see epm_xcomm_buf for why) */
    struct {
        void *p;
        size_t cap;
        int used;
    } pool[16];
};

/* A counts message: a peer's row count, the sender's total, its room (-1:
 * none) and whether it has rows that did not ride with their counts. */
#define EPM_XCOMM_EHDR (4 * sizeof(int64_t))
/* The rows a counts phase carries, packed by destination (off: [size + 1]
 * rows) of rb bytes each. */
typedef struct epm_xcomm_rows {
    const char *buf;
    const int64_t *off;
    size_t rb;
} epm_xcomm_rows;
/* epm_xcomm_counts_fit whose messages carry, to each peer p, its rows where
 * they fit (send[p] * rb <= emax: rode[p] = 1); after it, peer p's rows to
 * this rank are at epm_xcomm_rode_rows(x, p) when got[p] is set. *data: some
 * rank has rows that did not ride (every rank learns the same), so the
 * step that moves the rest runs; 0: the hop is done. rows NULL: none ride. */
epm_status epm_xcomm_counts_rows(epm_xcomm *x, epm_status local, const int64_t *send, int64_t *recv, int64_t cap,
                                 const epm_xcomm_rows *rows, unsigned char *rode, unsigned char *got, int *fit,
                                 int64_t *all, int *data);
static inline const char *epm_xcomm_rode_rows(const epm_xcomm *x, int p)
{
    return x->erecv + (size_t)p * (EPM_XCOMM_EHDR + x->emax) + EPM_XCOMM_EHDR;
}

void epm_xcomm_pool_release(epm_xcomm *x);

epm_status epm_xcomm_mpi_err(int rc, const char *what);

static inline epm_link epm_xcomm_link(const epm_xcomm *x, int a, int b)
{
    if (a == b)
        return EPM_LINK_SELF;
    return x->node_of[a] == x->node_of[b] ? EPM_LINK_INTRA : EPM_LINK_INTER;
}

#endif
