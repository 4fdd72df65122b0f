/* A trace's tokens in the order its passes ran, and the placements a
 * rebalanced run takes over them, one at a time (cost_passes.c). */
#ifndef EPM_COST_PASSES_H
#define EPM_COST_PASSES_H

#include "core.h"
#include "epmoe/eval.h"

typedef struct epm_pass_token {
    int64_t token;
    int32_t pass;
} epm_pass_token;

typedef struct epm_pass_plan {
    const epm_trace *t;
    const epm_eval_opts *o;
    epm_pass_token *order; /* [tokens]: every token, by pass (-1 first), then token; one pass (0)
                              without pass_ids */
    int64_t at;            /* the next segment's first entry of order */
    const epm_placement *first;
    epm_placement *cur, *next; /* the segment's placement (owned, but first) and the one taken after it */
    int64_t *load;         /* [layers * experts] the window's counts since the last due boundary */
    int slots, started;
    int32_t prev;          /* the last pass that ran a token, -1 before any */
    int taken;             /* placements taken */
    int64_t moved;         /* the replicas they added */
    int64_t move_bytes[EPM_LINK_COUNT]; /* their copies between ranks (epm_eval_opts.expert_bytes each) */
    double t_moves;        /* the modelled seconds of those copies, a boundary's after another's */
    int64_t read_bytes;    /* or their reads from the checkpoint (epm_eval_opts.read_expert_bytes each) */
    double t_reads;        /* and the modelled seconds of those (read_gbps) */
    int32_t boundary_done; /* the pass whose boundary was last decided (-1: none) */
    /* with a lag (epm_eval_opts.eplb_lag): the placement taken, not yet in service from pass switch_at
     * on; taken before order entry decided_at; its copies' and reads' modelled seconds, and those of the
     * passes run since (epm_pass_plan_ran), which they overlap */
    epm_placement *pending;
    int64_t switch_at, decided_at;
    double pending_copy_s, pending_read_s, overlap_s;
} epm_pass_plan;

/* A phase of the cost model (cost_model.c): b [4][ranks] holds each rank's
 * bytes sent intra, sent inter, received intra, received inter; _add counts
 * a transfer from -> to in it, _seconds is its modelled time. */
void epm_cost_phase_add(int64_t *b, int ranks, const epm_cluster *c, int from, int to, int64_t bytes);
double epm_cost_phase_seconds(const int64_t *b, int ranks, const epm_cluster *c);

/* Validates o's rebalancing (none with eplb_interval 0: every token under p)
 * and sorts the trace's tokens by pass. */
epm_status epm_pass_plan_make(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o,
                              epm_pass_plan *pp);
/* The next segment: the entries [*begin, *end) of pp->order, whole passes
 * that run under *pl (valid until the following call); 0 when none is left. */
epm_status epm_pass_plan_next(epm_pass_plan *pp, const epm_placement **pl, int64_t *begin, int64_t *end, int *more);
/* The cost model's modelled seconds for the segment that began at order
 * entry `begin` (its layers'): what a placement waiting for its lag overlaps. */
void epm_pass_plan_ran(epm_pass_plan *pp, int64_t begin, double seconds);
/* The placement of the last segment, handed over (NULL when none was taken). */
epm_placement *epm_pass_plan_take_last(epm_pass_plan *pp);
void epm_pass_plan_clear(epm_pass_plan *pp);

#endif
