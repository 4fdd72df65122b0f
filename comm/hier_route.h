/* The routes of the hierarchical exchange (xcomm_a2a.c), written once for
 * the exchange that takes them and for the cost model (placement/
 * cost_model.c) that predicts their wire bytes, so that `plan eval` prices
 * the path a run takes transfer for transfer. Pure functions of ranks:
 * nodes of P ranks numbered node * P + local index, which the communicator
 * checks when it is created. */
#ifndef EPM_HIER_ROUTE_H
#define EPM_HIER_ROUTE_H

#include <stddef.h>
#include <stdint.h>

/* The rows a hop sends one peer ride in the message that carries their
 * count (comm/xcomm_mpi.c, epm_xcomm_counts_rows) up to this many bytes:
 * 64 KiB, fewer past 128 ranks (8 MiB of rows each way in all). The cost
 * model prices a pair above it as a message of its own. */
static inline size_t epm_ride_max(int ranks)
{
    if (ranks < 2)
        return 0;
    const size_t share = ((size_t)8 << 20) / (size_t)ranks;
    return share < ((size_t)64 << 10) ? share : (size_t)64 << 10;
}

/* A row from src to dst: the rank of src's node its gathering hop reaches
 * (dst itself on src's node; else local rank dst % P of src's node, which
 * sends it between nodes straight to dst). */
int epm_hier_gateway(int src, int P, int dst);

/* A row from src for the ranks dest[0..n) (distinct; -1 slots skipped; src
 * itself may be listed, its copy staying there): gw[j] = the rank of src's
 * node that dest[j]'s copy reaches in the gathering hop (-1 for a skipped
 * slot); one copy goes to each distinct gw other than src. dest[j] on src's
 * node: itself.
 * On another node m: one gateway for all of the row's ranks there, local
 * rank c of src's node, c being the local index of one of them, so that the
 * hop between nodes goes from (src's node, c) to (m, c), itself a
 * destination, which fans the row out to the rest. Nodes are taken in the
 * order of their first slot. c is src's own local index when one of them
 * has it (no gathering copy); else that of the first of them, in slot
 * order, whose rank of src's node already receives the row in this hop (a
 * local destination, or an earlier node's gateway); else the
 * ((key + m) mod count)-th of them, so that rows spread over the gateways.
 * The runtime keys a token's row by its token number, which plan eval knows
 * too. */
void epm_hier_gateways(int src, int P, int n, const int *dest, uint64_t key, int *gw);

#endif
