/* The placement each token of a trace runs under (cost_passes.c). */
#ifndef EPM_COST_PASSES_H
#define EPM_COST_PASSES_H

#include "core.h"
#include "epmoe/eval.h"

typedef struct epm_pass_plan {
    epm_placement **pl; /* [n]: [0] the caller's, then each one taken, in order (owned) */
    int n;
    int *of;            /* [tokens]: index into pl of the placement token i runs under */
    int64_t moved;      /* replicas the placements taken added */
} epm_pass_plan;

/* Without rebalancing (o->eplb_* all 0) every token runs under p. */
epm_status epm_pass_plan_make(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o,
                              epm_pass_plan *pp);
void epm_pass_plan_clear(epm_pass_plan *pp);

#endif
