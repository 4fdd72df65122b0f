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
    epm_status st = o->eplb_interval != 0 ? epm_eplb_check(p, o->eplb_interval, o->eplb_window, o->eplb_slots,
                                                           o->eplb_min_gain, 1, &pp->slots)
                                          : EPM_OK;
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

/* The copies that take cur to np, as the run makes them (epm_eval_moves),
 * or the reads from the checkpoint instead: what the ranks wait for at the
 * boundary, the copies layer by layer, the reads rank by rank side by side. */
static epm_status charge_moves(epm_pass_plan *pp, const epm_placement *cur, const epm_placement *np)
{
    const int64_t copied = pp->o->expert_bytes, read = pp->o->read_expert_bytes;
    if (copied == 0 && read == 0)
        return EPM_OK;
    epm_move_cost mc;
    EPM_CHECK(epm_eval_moves(cur, np, copied, &mc));
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        pp->move_bytes[k] += mc.bytes[k];
    pp->t_moves += mc.seconds;
    pp->read_bytes += mc.moved * read;
    if (pp->o->read_gbps > 0)
        pp->t_reads += (double)(mc.max_gained * read) / (pp->o->read_gbps * 1e9);
    return EPM_OK;
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
    const int I = pp->o->eplb_interval;
    *more = 0;
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
    int64_t s = pp->at;
    for (; s < T && pp->order[s].pass < 0; s++) /* (never ran: nothing to count) */
        ;
    /* Pass b follows pass a (the last that ran a token): a placement is due
     * between them when an interval boundary lies in (a, b]; a second one
     * there would have no counts, which takes nothing (as in the run). */
    while (s < T) {
        const int32_t b = pp->order[s].pass;
        if (I > 0 && pp->prev >= 0 && b / I != pp->prev / I && s > *begin) {
            epm_placement *np = NULL;
            EPM_CHECK(epm_plan_rebalance(pp->cur, pp->load, pp->slots, pp->o->eplb_min_gain, &np));
            /* the window's counts are spent, taken or not (as in the run) */
            memset(pp->load, 0, (size_t)pp->t->layers * (size_t)epm_placement_experts(pp->first) * sizeof *pp->load);
            if (np) {
                int64_t gained = 0;
                epm_status st = epm_placement_gains(pp->cur, np, &gained);
                if (st == EPM_OK)
                    st = charge_moves(pp, pp->cur, np);
                if (st != EPM_OK) {
                    epm_placement_destroy(np);
                    return st;
                }
                pp->moved += gained;
                pp->taken++;
                pp->next = np;
                break; /* (pass b starts the next segment) */
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
