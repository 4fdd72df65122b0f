/* epmoe: the offline placement planner (`epmoe plan`). */
#ifndef EPMOE_PLAN_H
#define EPMOE_PLAN_H

#include "epmoe/cluster.h"
#include "epmoe/placement.h"
#include "epmoe/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum epm_method {
    EPM_METHOD_CONTIGUOUS = 0, /* experts [r*E/R, (r+1)*E/R) on rank r (DeepSpeed, Megatron) */
    EPM_METHOD_ROUND_ROBIN,    /* expert e on rank e mod R */
    EPM_METHOD_GREEDY,         /* hottest expert first onto the least-loaded rank with a free slot */
    EPM_METHOD_EPLB,           /* DeepSeek EPLB idea: replicate hot experts into spare slots, pack
                                  replicas so nodes, then ranks, are balanced; with expert groups
                                  that divide over the nodes, each group whole on one node (its
                                  hierarchical policy) */
    EPM_METHOD_ILP,            /* GLPK MIP: straggler load + topology-weighted traffic */
    EPM_METHOD_COUNT
} epm_method;

EPM_API const char *epm_method_name(epm_method m);
EPM_API epm_status epm_method_parse(const char *s, epm_method *out);

typedef void (*epm_progress_fn)(void *user, const char *message);

typedef struct epm_plan_opts {
    epm_method method;
    epm_mode mode;          /* which cost model the ILP minimises */
    int slots_per_rank;     /* experts a rank can hold per layer; 0 = ceil(E / R) (no spares).
                               Spare slots (R*S > E) are filled with replicas by eplb and ilp. */
    double balance_weight;  /* weight of the straggler's load in the objective; < 0 (default)
                               = auto: modelled seconds of one (token, expert) FFN over those of
                               one intra-node hidden-vector transfer, from hidden, ffn and the
                               cluster's gpu_tflops and intra_gbps (about 16 for Mixtral on H100) */
    double traffic_weight;  /* weight of the topology-weighted traffic */
    double time_limit_s;    /* wall-clock budget of the whole ILP solve */
    double mip_gap;         /* relative gap at which the MIP stops as optimal */
    int hidden;             /* hidden size, for the K/V all-gather term of follow (bytes ratio) */
    int kv_dim;             /* K+V row width per token per layer (follow mode); 0 = hidden/2 */
    int ffn;                /* expert FFN width, for the automatic balance weight */
    epm_progress_fn progress; /* NULL = quiet; called at most about once a second */
    void *progress_user;
    int expert_groups;      /* the groups of group-limited routing (DeepSeek's n_group: experts
                               [g*E/n, (g+1)*E/n) form group g); 0 or 1 = none. eplb keeps each
                               group on one node where they divide over the nodes */
} epm_plan_opts;

/* Defaults: contiguous, home, spares 0, balance weight auto, traffic weight 1, 60 s,
 * gap 1e-4, hidden 4096, ffn 14336, no expert groups. */
EPM_API void epm_plan_opts_init(epm_plan_opts *o);

/* Plans a placement for the trace's shape on cluster c. Deterministic for a
 * given input. The result's info carries method, objective, bound and gap. */
EPM_API epm_status epm_plan(const epm_trace *t, const epm_cluster *c, const epm_plan_opts *o,
                            epm_placement **out);

/* A placement from counted loads rather than a trace (online rebalancing,
 * vLLM's and SGLang's EPLB): load[l * experts + e] is the (token, expert)
 * pairs expert e of MoE layer l served; slots experts a rank holds a layer
 * (spares: replicas of the hottest, with eplb and greedy); groups as
 * epm_plan_opts.expert_groups. Heuristic methods only; deterministic, so
 * every rank computes the same one from the same loads. Its info has no
 * objective (NaN). */
EPM_API epm_status epm_plan_from_loads(epm_method m, const int64_t *load, int layers, int experts, int k,
                                       const epm_cluster *c, int slots, int groups, epm_placement **out);

/* 1 when eplb takes DeepSeek's hierarchical policy for `groups` expert
 * groups on cluster c: more than one group and one node, the groups dividing
 * the experts and dividing over the nodes. Otherwise (as DeepSeek's EPLB
 * does) the global one. */
EPM_API int epm_eplb_hierarchical(int groups, int experts, const epm_cluster *c);
/* groups is 0 (none) or divides experts; the error names `what` */
EPM_API epm_status epm_expert_groups_check(int groups, int experts, const char *what);
/* The slots a rank holds when `redundant` physical experts are added to the
 * `experts` of a layer over `ranks` ranks (vLLM's num_redundant_experts,
 * SGLang's ep_num_redundant_experts): (experts + redundant) / ranks. Fails
 * naming `what` and the nearest counts that work where they do not divide,
 * as those engines require. */
EPM_API epm_status epm_redundant_slots(int experts, int ranks, int redundant, const char *what, int *slots);

/* Online rebalancing every `interval` passes (0: never), counting the
 * (token, expert) pairs of the last `window` passes before each (0: all
 * `interval` of them). Passes are numbered from 0 in the order they run. */
/* 1 when pass `pass` (0-based) counts towards the next placement */
EPM_API int epm_eplb_counts(int interval, int window, int64_t pass);
/* 1 when a placement is taken before pass `pass` runs */
EPM_API int epm_eplb_due(int interval, int64_t pass);
/* The placement taken after cur from the counted loads (load[l * experts +
 * e], as for epm_plan_from_loads): eplb's for `slots` experts a rank, with
 * nodes and ranks renamed to keep as many replicas in place as possible
 * (epm_placement_align); a layer whose loads are all zero keeps cur's (so
 * slots below cur's most experts on a rank are refused); groups as
 * epm_plan_opts.expert_groups (a renaming keeps a group on one node). min_gain in (0, 1):
 * a layer also keeps cur's unless the new one lowers its busiest rank's
 * count by at least min_gain of it, so that a rebalance moves only what
 * pays. The estimate assumes an expert's count is shared evenly by its
 * replicas, as eplb's packing does; epm_route_pick prefers a replica on the
 * token's own rank, then on its node, so a run can fall short of it.
 * min_gain 0 compares nothing: every layer takes the new placement, even an
 * identical one (DeepSeek's and vLLM's EPLB). *out = NULL when every load is
 * zero, or with min_gain > 0 when every layer kept cur's (nothing taken). */
EPM_API epm_status epm_plan_rebalance(const epm_placement *cur, const int64_t *load, int slots, double min_gain,
                                      int groups, epm_placement **out);

#ifdef __cplusplus
}
#endif
#endif
