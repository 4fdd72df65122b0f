/* Online rebalancing's decisions (vLLM's and SGLang's EPLB while serving):
 * when a placement is taken, which passes count towards it, and which it is.
 * The runtime takes them as it runs and `plan eval` replays them over a
 * trace's passes, so both arrive at the same placements by the same code. */
#include <string.h>

#include "epmoe/plan.h"
#include "core.h"

int epm_eplb_counts(int interval, int window, int64_t pass)
{
    const int W = window > 0 ? window : interval;
    return interval > 0 && pass % interval >= interval - W;
}

int epm_eplb_due(int interval, int64_t pass) { return interval > 0 && pass > 0 && pass % interval == 0; }

epm_status epm_plan_rebalance(const epm_placement *cur, const int64_t *load, int slots, epm_placement **out)
{
    if (!out || !cur || !load)
        return epm_fail(EPM_ERR_INVALID_ARG, "rebalance: placement, loads and out are required");
    *out = NULL;
    const int L = epm_placement_layers(cur), E = epm_placement_experts(cur);
    if (slots < epm_placement_max_slots(cur)) /* (a layer without counts keeps cur's) */
        return epm_fail(EPM_ERR_INVALID_ARG, "rebalance: %d slots a rank, and the placement already has %d experts "
                        "of a layer on one rank", slots, epm_placement_max_slots(cur));
    int any = 0; /* (a negative load is epm_plan_from_loads' to refuse) */
    for (size_t i = 0; i < (size_t)L * (size_t)E; i++)
        any |= load[i] != 0;
    if (!any) /* (nothing to go by) */
        return EPM_OK;
    epm_placement *packed = NULL, *np = NULL;
    epm_status st = epm_plan_from_loads(EPM_METHOD_EPLB, load, L, E, epm_placement_k(cur),
                                        epm_placement_cluster(cur), slots, &packed);
    if (st == EPM_OK)
        st = epm_placement_align(cur, packed, &np); /* (a rebalance moves what changed) */
    epm_placement_destroy(packed);
    for (int l = 0; l < L && st == EPM_OK; l++) { /* a layer no token went through stays */
        int64_t in = 0;
        for (int e = 0; e < E; e++)
            in += load[(size_t)l * E + e];
        if (in > 0)
            continue;
        epm_placement_clear_layer(np, l);
        for (int e = 0; e < E && st == EPM_OK; e++) {
            const int *reps;
            const int n = epm_placement_replicas(cur, l, e, &reps);
            for (int q = 0; q < n && st == EPM_OK; q++)
                st = epm_placement_add(np, l, e, reps[q]);
        }
    }
    if (st != EPM_OK) {
        epm_placement_destroy(np);
        return st;
    }
    *out = np;
    return EPM_OK;
}

epm_status epm_placement_gains(const epm_placement *from, const epm_placement *to, int64_t *out)
{
    if (!from || !to || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement gains: placements and out are required");
    *out = 0;
    const int L = epm_placement_layers(to), E = epm_placement_experts(to), R = epm_placement_ranks(to);
    if (epm_placement_layers(from) != L || epm_placement_experts(from) != E || epm_placement_ranks(from) != R)
        return epm_fail(EPM_ERR_MISMATCH, "placement gains: %d layers x %d experts on %d ranks against %d x %d on %d",
                        epm_placement_layers(from), epm_placement_experts(from), epm_placement_ranks(from), L, E, R);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            for (int q = 0; q < R; q++)
                *out += epm_placement_has(to, l, e, q) && !epm_placement_has(from, l, e, q);
    return EPM_OK;
}
