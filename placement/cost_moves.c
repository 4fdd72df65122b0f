/* What a change of placement costs in copies of experts: the replicas the
 * new one adds, each from the rank epm_placement_moves names (the source an
 * online rebalance copies it from), priced by the cost model's phase (a
 * phase ends with its busiest rank). plan eval's replay charges every
 * placement it takes so; `plan moves` prices one change. */
#include <string.h>

#include "cost_passes.h"
#include "epmoe/eval.h"

epm_status epm_eval_moves(const epm_placement *from, const epm_placement *to, int64_t expert_bytes,
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
    int64_t *ph = epm_calloc((size_t)4 * (size_t)R, sizeof *ph); /* sent intra, inter, received intra, inter */
    epm_status st = mv && ph ? epm_placement_moves(from, to, mv, n, &n) : EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        const epm_link k = epm_cluster_link(c, mv[i].from, mv[i].to);
        const size_t inter = k == EPM_LINK_INTER;
        out->bytes[k] += expert_bytes;
        ph[inter * (size_t)R + (size_t)mv[i].from] += expert_bytes;
        ph[(2 + inter) * (size_t)R + (size_t)mv[i].to] += expert_bytes;
    }
    if (st == EPM_OK) {
        out->moved = n;
        for (int q = 0; q < R; q++) {
            const int64_t s = ph[q] + ph[(size_t)R + q], v = ph[2 * (size_t)R + q] + ph[3 * (size_t)R + q];
            out->max_send_bytes = s > out->max_send_bytes ? s : out->max_send_bytes;
            out->max_recv_bytes = v > out->max_recv_bytes ? v : out->max_recv_bytes;
        }
        out->seconds = epm_cost_phase_seconds(ph, R, c);
    }
    epm_free(mv);
    epm_free(ph);
    return st;
}
