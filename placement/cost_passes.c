/* A trace's passes for the cost model: its tokens in the order the passes
 * ran them (each pass waits for its own busiest rank), and the placements a
 * rebalanced run takes over them (epm_eval_opts.eplb_interval): the same
 * decisions, from the same counts, by the same functions (rebalance.c) as
 * epmoe run takes them, so that plan eval predicts a rebalanced run as it
 * does a static one. The placements come one segment at a time, so that a
 * long run's thousands of them are never held at once. */
#include <stdlib.h>
#include <string.h>

#include "cost_passes.h"
#include "epmoe/plan.h"
#include "rebalance.h"
#include "trace_internal.h"

void epm_pass_plan_clear(epm_pass_plan *pp)
{
    if (pp->cur != pp->first)
        epm_placement_destroy(pp->cur);
    epm_placement_destroy(pp->next);
    epm_placement_destroy(pp->pending);
    epm_free(pp->order);
    epm_free(pp->load);
    memset(pp, 0, sizeof *pp);
}

static int by_pass(const void *a, const void *b)
{
    const epm_pass_token *x = a, *y = b;
    return x->pass != y->pass ? (x->pass < y->pass ? -1 : 1) : (x->token > y->token) - (x->token < y->token);
}

static int rows_empty(const epm_trace *t, int64_t i)
{
    for (int l = 0; l < t->layers; l++)
        if (epm_trace_ids_const(t, l)[(size_t)i * (size_t)t->k] >= 0)
            return 0;
    return 1;
}

epm_status epm_pass_plan_make(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o,
                              epm_pass_plan *pp)
{
    memset(pp, 0, sizeof *pp);
    const int64_t T = t->tokens;
    pp->t = t;
    pp->o = o;
    pp->first = p;
    pp->cur = (epm_placement *)p;
    pp->prev = -1;
    pp->boundary_done = -1;
    epm_status st = o->eplb_interval != 0 ? epm_eplb_check(p, o->eplb_interval, o->eplb_window, o->eplb_slots,
                                                           o->eplb_min_gain, o->eplb_lag, 1, &pp->slots)
                                          : EPM_OK;
    if (st == EPM_OK && o->eplb_interval != 0)
        st = epm_expert_groups_check(o->eplb_groups, epm_placement_experts(p), "eval: eplb_groups");
    if (st == EPM_OK && o->eplb_interval != 0 && !t->pass_ids)
        st = epm_fail(EPM_ERR_INVALID_ARG, "eval: online rebalancing replays the trace's passes, and the trace has "
                      "no pass_ids (epmoe run --trace-out records them)");
    if (st != EPM_OK)
        return st;
    pp->order = epm_malloc((size_t)(T ? T : 1) * sizeof *pp->order);
    if (o->eplb_interval > 0)
        pp->load = epm_calloc((size_t)t->layers * (size_t)epm_placement_experts(p) + 1, sizeof *pp->load);
    if (!pp->order || (o->eplb_interval > 0 && !pp->load)) {
        epm_pass_plan_clear(pp);
        return EPM_ERR_NOMEM;
    }
    /* by pass, then token (-1 first: tokens that never ran, whose rows a run leaves empty) */
    for (int64_t i = 0; i < T; i++)
        pp->order[i] = (epm_pass_token){i, t->pass_ids ? t->pass_ids[i] : 0};
    if (t->pass_ids)
        qsort(pp->order, (size_t)T, sizeof *pp->order, by_pass);
    for (int64_t s = 0; s < T && o->eplb_interval > 0 && pp->order[s].pass < 0 && st == EPM_OK; s++)
        if (!rows_empty(t, pp->order[s].token))
            st = epm_fail(EPM_ERR_INVALID_ARG, "eval: token %lld chose experts but its pass_ids entry is -1 (a token "
                          "that never ran)", (long long)pp->order[s].token);
    if (st != EPM_OK)
        epm_pass_plan_clear(pp);
    return st;
}

/* The copies that take cur to np, as the run makes them (epm_eval_moves_path),
 * or the reads from the checkpoint instead, counted; *copy_s and *read_s
 * their modelled seconds: what the ranks wait for at the boundary (at the
 * switch, less the passes between, with a lag), the copies layer by layer,
 * the reads rank by rank side by side. */
static epm_status charge_moves(epm_pass_plan *pp, const epm_placement *cur, const epm_placement *np, double *copy_s,
                               double *read_s)
{
    const int64_t copied = pp->o->expert_bytes, read = pp->o->read_expert_bytes;
    *copy_s = *read_s = 0;
    if (copied == 0 && read == 0)
        return EPM_OK;
    epm_move_cost mc;
    /* (a lag's copies go on their own communicator, flat, under the passes; the synchronous ones on
     * the tokens', whose path the run takes) */
    EPM_CHECK(epm_eval_moves_path(cur, np, copied, pp->o->hierarchical && pp->o->eplb_lag == 0, &mc));
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        pp->move_bytes[k] += mc.bytes[k];
    *copy_s = pp->o->eplb_lag > 0 ? mc.seconds_whole : mc.seconds; /* (with a lag, one exchange of them all) */
    pp->read_bytes += mc.moved * read;
    if (pp->o->read_gbps > 0)
        *read_s = (double)(mc.max_gained * read) / (pp->o->read_gbps * 1e9);
    return EPM_OK;
}

/* The placement waiting for its lag comes into service: what its copies or
 * reads took beyond the passes that ran meanwhile is waited for. */
static void switch_pending(epm_pass_plan *pp)
{
    const double over = pp->overlap_s;
    pp->t_moves += pp->pending_copy_s > over ? pp->pending_copy_s - over : 0;
    pp->t_reads += pp->pending_read_s > over ? pp->pending_read_s - over : 0;
    if (pp->cur != pp->first)
        epm_placement_destroy(pp->cur);
    pp->cur = pp->pending;
    pp->pending = NULL;
}

void epm_pass_plan_ran(epm_pass_plan *pp, int64_t begin, double seconds)
{
    if (pp->pending && begin >= pp->decided_at)
        pp->overlap_s += seconds;
}

/* the counts of pass b's tokens, order[s, e), when the window counts it */
static void count_pass(epm_pass_plan *pp, int64_t s, int64_t e)
{
    const epm_trace *t = pp->t;
    const int L = t->layers, K = t->k, E = epm_placement_experts(pp->first);
    for (; s < e; s++)
        for (int l = 0; l < L; l++)
            for (int j = 0; j < K; j++) {
                const int32_t id = epm_trace_ids_const(t, l)[(size_t)pp->order[s].token * (size_t)K + (size_t)j];
                if (id >= 0)
                    pp->load[(size_t)l * (size_t)E + (size_t)id]++;
            }
}

epm_status epm_pass_plan_next(epm_pass_plan *pp, const epm_placement **pl, int64_t *begin, int64_t *end, int *more)
{
    const int64_t T = pp->t->tokens;
    const int I = pp->o->eplb_interval, lag = pp->o->eplb_lag;
    *more = 0;
    int64_t s = pp->at;
    for (; s < T && pp->order[s].pass < 0; s++) /* (never ran: nothing to count) */
        ;
    /* a placement waiting for its lag serves from the first pass at or after its number, or after the
     * last pass where none is left (as the run takes it when its passes end) */
    if (pp->pending && pp->started && (s >= T || pp->order[s].pass >= pp->switch_at))
        switch_pending(pp);
    if (pp->at >= T && pp->started)
        return EPM_OK;
    if (pp->next) { /* (the segment before ended where this placement was taken) */
        if (pp->cur != pp->first)
            epm_placement_destroy(pp->cur);
        pp->cur = pp->next;
        pp->next = NULL;
    }
    pp->started = 1;
    *begin = pp->at;
    /* Pass b follows pass a (the last that ran a token): a placement is due
     * between them when an interval boundary lies in (a, b]; a second one
     * there would have no counts, which takes nothing (as in the run). A
     * segment ends where the placement changes, and with a lag also where
     * one is taken, so that the passes it overlaps are segments of their own. */
    while (s < T) {
        const int32_t b = pp->order[s].pass;
        if (pp->pending && b >= pp->switch_at) /* (s > begin: the call's start switched it otherwise) */
            break;
        if (I > 0 && pp->prev >= 0 && b / I != pp->prev / I && pp->boundary_done != b) {
            pp->boundary_done = b;
            epm_placement *np = NULL;
            EPM_CHECK(epm_plan_rebalance(pp->cur, pp->load, pp->slots, pp->o->eplb_min_gain, pp->o->eplb_groups, &np));
            /* the window's counts are spent, taken or not (as in the run) */
            memset(pp->load, 0, (size_t)pp->t->layers * (size_t)epm_placement_experts(pp->first) * sizeof *pp->load);
            if (np) {
                int64_t gained = 0;
                double copy_s = 0, read_s = 0;
                epm_status st = epm_placement_gains(pp->cur, np, &gained);
                if (st == EPM_OK)
                    st = charge_moves(pp, pp->cur, np, &copy_s, &read_s);
                if (st != EPM_OK) {
                    epm_placement_destroy(np);
                    return st;
                }
                pp->moved += gained;
                pp->taken++;
                if (lag == 0) {
                    pp->t_moves += copy_s;
                    pp->t_reads += read_s;
                    pp->next = np;
                    break; /* (pass b starts the next segment) */
                }
                pp->pending = np;
                pp->pending_copy_s = copy_s;
                pp->pending_read_s = read_s;
                pp->overlap_s = 0;
                /* (from the first boundary after a, where the run took it, not b's: passes that ran no token
                 * lie between) */
                pp->switch_at = (int64_t)(pp->prev / I + 1) * I + lag;
                pp->decided_at = s;
                if (s > *begin)
                    break; /* (the passes from b on overlap its fetching; or b serves under it) */
                if (b >= pp->switch_at) /* (at the segment's start: in service already, nothing overlapped) */
                    switch_pending(pp);
            }
        }
        int64_t e = s;
        while (e < T && pp->order[e].pass == b)
            e++;
        if (I > 0 && epm_eplb_counts(I, pp->o->eplb_window, b))
            count_pass(pp, s, e);
        pp->prev = b;
        s = e;
    }
    pp->at = s;
    *end = s;
    *pl = pp->cur;
    *more = 1;
    return EPM_OK;
}

epm_placement *epm_pass_plan_take_last(epm_pass_plan *pp)
{
    if (pp->cur == pp->first)
        return NULL;
    epm_placement *p = pp->cur;
    pp->cur = (epm_placement *)pp->first;
    return p;
}
