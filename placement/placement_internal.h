/* The placement object's layout, shared by the files of placement/. */
#ifndef EPM_PLACEMENT_INTERNAL_H
#define EPM_PLACEMENT_INTERNAL_H

#include "core.h"
#include "epmoe/placement.h"

struct epm_placement {
    int layers, experts, k, ranks;
    epm_cluster cluster;
    int *reps;         /* [layers][experts][ranks]: replica ranks, ascending, first count[] valid */
    int *count;        /* [layers][experts] */
    int *rank_count;   /* [layers][ranks] experts held */
    epm_placement_info info;
};

static inline size_t epm_pl_le(const epm_placement *p, int l, int e) { return (size_t)l * (size_t)p->experts + (size_t)e; }

/* Drops expert's replica on rank (none there: nothing). The planner's
 * searches only; a placement a user holds gains copies, never loses them. */
void epm_placement_remove(epm_placement *p, int layer, int expert, int rank);

#endif
