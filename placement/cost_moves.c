/* What a change of placement costs in copies of experts: the replicas the
 * new one adds, each from the rank epm_placement_moves names (the source an
 * online rebalance copies it from), priced by the cost model's phase (a
 * phase ends with its busiest rank), one phase a layer as the run exchanges
 * them; and the most replicas one rank gains, which prices the run's
 * other source, reading them from the checkpoint (each rank its own). plan
 * eval's replay charges every placement it takes so; `plan moves` prices
 * one change. */
#include <string.h>

#include "cost_passes.h"
#include "epmoe/eval.h"
#include "hier_route.h"

/* A copy in the phase: direct, or on the hierarchical path through the
 * gateway on from's node (the run's synchronous copies take its tokens'
 * exchange, comm/xcomm_a2a.c), whose bytes pass through that rank too. */
static void copy_add(int64_t *ph, int R, const epm_cluster *c, int hier, int from, int to, int64_t bytes)
{
    const int g = hier ? epm_hier_gateway(from, c->gpus_per_node, to) : to;
    if (g != from)
        epm_cost_phase_add(ph, R, c, from, g, bytes);
    if (g != to)
        epm_cost_phase_add(ph, R, c, g, to, bytes);
}

epm_status epm_eval_moves(const epm_placement *from, const epm_placement *to, int64_t expert_bytes,
                          epm_move_cost *out)
{
    return epm_eval_moves_path(from, to, expert_bytes, 0, out);
}

epm_status epm_eval_moves_path(const epm_placement *from, const epm_placement *to, int64_t expert_bytes, int hier,
                               epm_move_cost *out)
{
    if (!from || !to || !out || expert_bytes < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval moves: placements and out are required, expert_bytes = %lld >= 0",
                        (long long)expert_bytes);
    memset(out, 0, sizeof *out);
    int64_t n;
    EPM_CHECK(epm_placement_moves(from, to, NULL, 0, &n));
    const int R = epm_placement_ranks(from);
    const epm_cluster *c = epm_placement_cluster(from);
    epm_expert_move *mv = epm_malloc((size_t)(n ? n : 1) * sizeof *mv);
    /* [0]: this layer's phase, [1]: the whole change's; each sent intra, inter, received intra, inter;
     * then each rank's replicas gained */
    int64_t *ph = epm_calloc((size_t)9 * (size_t)R, sizeof *ph), *all = ph ? ph + 4 * (size_t)R : NULL;
    int64_t *gained = ph ? ph + 8 * (size_t)R : NULL;
    epm_status st = mv && ph ? epm_placement_moves(from, to, mv, n, &n) : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        gained[mv[i].to]++;
        out->bytes[epm_cluster_link(c, mv[i].from, mv[i].to)] += expert_bytes;
        copy_add(ph, R, c, hier, mv[i].from, mv[i].to, expert_bytes);
        copy_add(all, R, c, hier, mv[i].from, mv[i].to, expert_bytes);
        if (i + 1 == n || mv[i + 1].layer != mv[i].layer) { /* (the moves come by layer) */
            out->seconds += epm_cost_phase_seconds(ph, R, c);
            memset(ph, 0, (size_t)4 * (size_t)R * sizeof *ph);
        }
    }
    if (st == EPM_OK) {
        out->moved = n;
        out->seconds_whole = epm_cost_phase_seconds(all, R, c);
        for (int q = 0; q < R; q++) {
            const int64_t s = all[q] + all[(size_t)R + q], v = all[2 * (size_t)R + q] + all[3 * (size_t)R + q];
            out->max_send_bytes = s > out->max_send_bytes ? s : out->max_send_bytes;
            out->max_recv_bytes = v > out->max_recv_bytes ? v : out->max_recv_bytes;
            out->max_gained = gained[q] > out->max_gained ? gained[q] : out->max_gained;
        }
    }
    epm_free(mv);
    epm_free(ph);
    return st;
}
