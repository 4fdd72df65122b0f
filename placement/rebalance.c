/* Online rebalancing's decisions (vLLM's and SGLang's EPLB while serving):
 * when a placement is taken, which passes count towards it, and which it is.
 * The runtime takes them as it runs and `plan eval` replays them over a
 * trace's passes, so both arrive at the same placements by the same code. */
#include <string.h>

#include "epmoe/plan.h"
#include "rebalance.h"

int epm_eplb_counts(int interval, int window, int64_t pass)
{
    const int W = window > 0 ? window : interval;
    return interval > 0 && pass % interval >= interval - W;
}

int epm_eplb_due(int interval, int64_t pass) { return interval > 0 && pass > 0 && pass % interval == 0; }

epm_status epm_eplb_check(const epm_placement *p, int interval, int window, int slots, double min_gain, int lag,
                          int fields, int *slots_out)
{
    const int f = fields == 1;
    const char *pre = f ? "eval: " : "",
               *slots_name = f ? "eval: eplb_slots =" : fields == 2 ? "the slots of --redundant-experts," : "--eplb-slots",
               *gain_name = f ? "eval: eplb_min_gain =" : "--eplb-min-gain", *lag_name = f ? "eval: eplb_lag =" : "--eplb-lag";
    const int E = epm_placement_experts(p), R = epm_placement_ranks(p);
    const int most = epm_placement_max_slots(p), least = (E + R - 1) / R;
    *slots_out = slots > 0 ? slots : most;
    if (interval < 0 || window < 0 || window > interval)
        return epm_fail(EPM_ERR_INVALID_ARG, "%sonline rebalancing: every %d passes over a window of %d (an interval "
                        "> 0 and a window from 0 to it)", pre, interval, window);
    if (slots < 0 || *slots_out < least || *slots_out > E)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: %d ranks hold %d experts a layer in %d to %d slots each",
                        slots_name, slots, R, E, least, E);
    if (*slots_out < most)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: the placement already has %d experts of a layer on one rank",
                        slots_name, slots, most);
    if (!(min_gain >= 0 && min_gain < 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %g: a share in [0, 1)", gain_name, min_gain);
    if (lag < 0 || lag >= interval) /* (one placement in flight: in service before the next boundary) */
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %d: from 0 to the interval's %d passes less one", lag_name, lag,
                        interval);
    return EPM_OK;
}

/* Layer l's busiest rank under p, each expert's count shared evenly by its
 * replicas (as eplb's packing assumes; plan.h says where a run differs);
 * per: [ranks]. */
static double busiest(const epm_placement *p, int l, const int64_t *load, double *per)
{
    const int E = epm_placement_experts(p), R = epm_placement_ranks(p);
    for (int q = 0; q < R; q++)
        per[q] = 0;
    for (int e = 0; e < E; e++) {
        const int *reps;
        const int n = epm_placement_replicas(p, l, e, &reps);
        for (int i = 0; i < n; i++)
            per[reps[i]] += (double)load[(size_t)l * (size_t)E + (size_t)e] / n;
    }
    double most = 0;
    for (int q = 0; q < R; q++)
        most = per[q] > most ? per[q] : most;
    return most;
}

/* np's layer l becomes cur's */
static epm_status keep_layer(epm_placement *np, const epm_placement *cur, int l)
{
    epm_placement_clear_layer(np, l);
    for (int e = 0; e < epm_placement_experts(cur); e++) {
        const int *reps;
        const int n = epm_placement_replicas(cur, l, e, &reps);
        for (int q = 0; q < n; q++)
            EPM_CHECK(epm_placement_add(np, l, e, reps[q]));
    }
    return EPM_OK;
}

epm_status epm_plan_rebalance(const epm_placement *cur, const int64_t *load, int slots, double min_gain,
                              int groups, epm_placement **out)
{
    if (!out || !cur || !load)
        return epm_fail(EPM_ERR_INVALID_ARG, "rebalance: placement, loads and out are required");
    *out = NULL;
    if (!(min_gain >= 0 && min_gain < 1))
        return epm_fail(EPM_ERR_INVALID_ARG, "rebalance: min_gain = %g is outside [0, 1)", min_gain);
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
                                        epm_placement_cluster(cur), slots, groups, &packed);
    if (st == EPM_OK)
        st = epm_placement_align(cur, packed, &np); /* (a rebalance moves what changed) */
    epm_placement_destroy(packed);
    /* a layer no token went through stays; with min_gain, so does one whose busiest rank the new
     * placement would relieve by less than that share of its counts */
    double *per = epm_malloc((size_t)epm_placement_ranks(cur) * sizeof *per);
    st = st == EPM_OK && !per ? EPM_ERR_NOMEM : st;
    int kept = 0;
    for (int l = 0; l < L && st == EPM_OK; l++) {
        int64_t in = 0;
        for (int e = 0; e < E; e++)
            in += load[(size_t)l * E + e];
        const double was = in > 0 && min_gain > 0 ? busiest(cur, l, load, per) : 0;
        if (in > 0 && (min_gain == 0 || was - busiest(np, l, load, per) >= min_gain * was))
            continue;
        st = keep_layer(np, cur, l);
        kept++;
    }
    epm_free(per);
    if (st != EPM_OK || (min_gain > 0 && kept == L)) { /* (no layer worth moving: nothing taken) */
        epm_placement_destroy(np);
        return st;
    }
    *out = np;
    return EPM_OK;
}

static epm_status same_shape(const char *what, const epm_placement *from, const epm_placement *to)
{
    const int L = epm_placement_layers(to), E = epm_placement_experts(to), R = epm_placement_ranks(to);
    if (epm_placement_layers(from) != L || epm_placement_experts(from) != E || epm_placement_ranks(from) != R)
        return epm_fail(EPM_ERR_MISMATCH, "%s: %d layers x %d experts on %d ranks against %d x %d on %d", what,
                        epm_placement_layers(from), epm_placement_experts(from), epm_placement_ranks(from), L, E, R);
    return EPM_OK;
}

epm_status epm_placement_gains(const epm_placement *from, const epm_placement *to, int64_t *out)
{
    if (!from || !to || !out)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement gains: placements and out are required");
    *out = 0;
    EPM_CHECK(same_shape("placement gains", from, to));
    const int L = epm_placement_layers(to), E = epm_placement_experts(to), R = epm_placement_ranks(to);
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            for (int q = 0; q < R; q++)
                *out += epm_placement_has(to, l, e, q) && !epm_placement_has(from, l, e, q);
    return EPM_OK;
}

epm_status epm_placement_moves(const epm_placement *from, const epm_placement *to, epm_expert_move *moves,
                               int64_t cap, int64_t *n)
{
    if (!from || !to || !n)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement moves: placements and n are required");
    EPM_CHECK(epm_placement_gains(from, to, n));
    if (!moves)
        return EPM_OK;
    if (cap < *n)
        return epm_fail(EPM_ERR_INVALID_ARG, "placement moves: %lld moves and room for %lld", (long long)*n,
                        (long long)cap);
    const int L = epm_placement_layers(to), E = epm_placement_experts(to), R = epm_placement_ranks(to);
    const epm_cluster *c = epm_placement_cluster(from);
    int64_t *sends = epm_calloc((size_t)R, sizeof *sends); /* this layer's, per rank */
    if (!sends)
        return EPM_ERR_NOMEM;
    int64_t m = 0;
    for (int l = 0; l < L; l++) {
        memset(sends, 0, (size_t)R * sizeof *sends);
        for (int e = 0; e < E; e++) {
            const int *had;
            const int nh = epm_placement_replicas(from, l, e, &had);
            for (int q = 0; q < R; q++) {
                if (!epm_placement_has(to, l, e, q) || epm_placement_has(from, l, e, q))
                    continue;
                int best = -1, best_near = 0; /* (a valid placement has a replica of every expert) */
                for (int i = 0; i < nh; i++) {
                    const int near = epm_cluster_node_of(c, had[i]) == epm_cluster_node_of(c, q);
                    if (best < 0 || near > best_near || (near == best_near && sends[had[i]] < sends[best]))
                        best = had[i], best_near = near;
                }
                if (best < 0) {
                    epm_free(sends);
                    return epm_fail(EPM_ERR_INVALID_ARG, "placement moves: expert %d of layer %d has no replica to "
                                    "copy from", e, l);
                }
                sends[best]++;
                moves[m++] = (epm_expert_move){l, e, best, q};
            }
        }
    }
    epm_free(sends);
    return EPM_OK;
}
