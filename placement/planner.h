/* Internal interface between the planner's parts: the heuristics, the ILP and
 * the objective they all report, so that "best heuristic" and "ILP incumbent"
 * are compared in one unit. */
#ifndef EPM_PLANNER_H
#define EPM_PLANNER_H

#include "core.h"
#include "epmoe/eval.h"
#include "epmoe/plan.h"

/* o with the automatic balance weight resolved for cluster c (see plan.h). */
void epm_plan_resolve(const epm_plan_opts *o, const epm_cluster *c, epm_plan_opts *out);

/* Slots per rank actually used: o->slots_per_rank, or ceil(E / R) when 0.
 * Fails when R * slots < E (the experts do not fit). */
epm_status epm_plan_slots(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, int *slots);

/* contiguous, round-robin, greedy or eplb (not ilp). The result's info has
 * method, quality HEURISTIC and the objective below. */
epm_status epm_plan_heuristic(epm_method m, const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                              epm_placement **out);

/* A copy of base whose spare slots (up to `slots` a rank) hold replicas as
 * eplb adds them: each layer's replica counts by load per replica (load
 * [L * E]), base's copies where they are, the added ones heaviest per
 * replica first onto the least-loaded rank with room that lacks the expert.
 * The ILP's alternative to its greedy replicas. */
epm_status epm_plan_fill_replicas(const epm_placement *base, const int64_t *load, int slots, epm_placement **out);

/* Improves p, whose ranks hold at most `slots` experts each, by moving,
 * swapping and re-assigning copies within each layer
 * (placement/replica_search.c). A move is kept where it lowers a model of
 * epm_eval's time (per layer, the busiest rank's load and communication,
 * summed over `folds` folds of the tokens, or a trace's passes where it has
 * pass_ids: epm_plan_folds) and leaves epm_plan_objective at
 * or below its value at the start. At most max_moves proposals from a fixed
 * seed, or until deadline. *obj receives epm_plan_objective of the result,
 * *kept the moves kept. */
epm_status epm_plan_replica_search(const epm_trace *t, const epm_plan_opts *o, int slots, int folds,
                                   int64_t max_moves, double deadline, epm_placement *p, double *obj, int64_t *kept);
/* Test hook: when set, the search compares every sum it keeps with a fresh
 * count after each move (kept or undone) and fails with EPM_ERR_INTERNAL
 * naming the first that differs. Fails with EPM_ERR_TIMEOUT (p unchanged)
 * when the deadline comes during its setup. */
extern int epm_replica_search_test_check;
/* What the search minimises for p (tests): the sum over layers and folds of
 * balance_weight x the busiest load plus traffic_weight x the busiest
 * rank's communication units, and in follow mode the return home's. */
epm_status epm_plan_replica_model(const epm_trace *t, const epm_plan_opts *o, int slots, int folds,
                                  epm_placement *p, double *model);

/* Fills every free slot of p (up to `slots` a rank, or the experts): each
 * with a copy of the expert, not yet on that rank, with the most load per
 * copy once added. *added: the copies added. What SGLang and vLLM deploy has
 * no empty slot; the ILP's result with spare slots is completed so. */
epm_status epm_plan_complete_slots(epm_placement *p, const int64_t *load, int slots, int *added);

/* The folds the searches' models sum over (placement/plan_folds.c):
 * fold_of[T] (epm_malloc'd) and their count. A trace with pass_ids is
 * folded by its passes, as epm_eval times it: past max_folds passes, a
 * sample of max_folds evenly spread, the others' tokens in fold -1 (out of
 * the model); with fewer passes than folds, each split into parts.
 * Otherwise token i is in fold i mod folds. */
epm_status epm_plan_folds(const epm_trace *t, int folds, int max_folds, int32_t **fold_of, int *nfolds);
/* Test hook: when > 0, max_folds is at most this (the searches' sampled passes on small traces). */
extern int epm_plan_folds_test_cap;

/* One term of epm_plan_objective: balance_weight x a layer's busiest load
 * plus traffic_weight x its link-cost-weighted bytes (bytes[EPM_LINK_COUNT],
 * dispatch/combine and K/V together) over denom = hidden bytes x ranks; the
 * final gather is a term of busiest load 0. One piece of arithmetic for
 * epm_plan_objective and the replica search's incremental sums, so that
 * the two agree bit for bit. */
static inline double epm_plan_objective_term(double bw, double tw, double denom, const double *cost, int64_t busiest,
                                             const int64_t *bytes)
{
    double traffic = 0;
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        traffic += cost[k] * (double)bytes[k];
    return bw * (double)busiest + tw * traffic / denom;
}

/* The planner's objective, in units of "one intra-node hidden-vector transfer":
 *   sum over layers l of
 *       balance_weight * max_r load_l(r)
 *     + traffic_weight * (sum_c cost(c) * (bytes_l[c] + kv_bytes_l[c])) / (hidden_bytes * R)
 *   + traffic_weight * (sum_c cost(c) * gather_bytes[c]) / (hidden_bytes * R)
 * with loads and bytes exactly as epm_eval counts them in mode o->mode (so the
 * objective of any placement is what plan eval would model), cost(c) from
 * epm_cluster_link_cost, hidden_bytes = o->hidden * 2 and kv_row_bytes =
 * kv_dim * 2 (kv_dim = o->kv_dim or hidden / 2). Dividing traffic by R puts it
 * per rank, beside a per-rank (straggler) load. */
epm_status epm_plan_objective(const epm_trace *t, const epm_placement *p, const epm_plan_opts *o, double *obj);

/* The GLPK MIP (placement/ilp.c). Never returns a worse objective than the
 * best heuristic: that is its warm start and its fallback. Where the MIP does
 * not prove optimality, its local search spends the slack between that start
 * and its result on a sample average of epm_eval's busiest-rank time, which
 * carries over to held-out traces better than the planning sample's own
 * straggler does (placement/ilp_search.c). */
epm_status epm_plan_ilp(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o, epm_placement **out);

#endif
