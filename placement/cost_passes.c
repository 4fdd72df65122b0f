/* The placements a rebalanced run takes, replayed over a trace's passes for
 * the cost model (epm_eval_opts.eplb_interval): the same decisions, from the
 * same counts, by the same functions (rebalance.c) as epmoe run takes them,
 * so that plan eval predicts a rebalanced run as it does a static one. */
#include <stdlib.h>
#include <string.h>

#include "cost_passes.h"
#include "epmoe/plan.h"
#include "trace_internal.h"

void epm_pass_plan_clear(epm_pass_plan *pp)
{
    for (int i = 1; i < pp->n; i++) /* ([0] is the caller's) */
        epm_placement_destroy(pp->pl[i]);
    epm_free(pp->pl);
    epm_free(pp->of);
    memset(pp, 0, sizeof *pp);
}

typedef struct {
    int64_t token;
    int32_t pass;
} ran;

static int by_pass(const void *a, const void *b)
{
    const ran *x = a, *y = b;
    return x->pass != y->pass ? (x->pass < y->pass ? -1 : 1) : (x->token > y->token) - (x->token < y->token);
}

static int rows_empty(const epm_trace *t, int64_t i)
{
    for (int l = 0; l < t->layers; l++)
        if (epm_trace_ids_const(t, l)[(size_t)i * (size_t)t->k] >= 0)
            return 0;
    return 1;
}

static epm_status check_opts(const epm_placement *p, const epm_eval_opts *o, int *slots)
{
    const int E = epm_placement_experts(p), R = epm_placement_ranks(p);
    const int most = epm_placement_max_slots(p), least = (E + R - 1) / R;
    *slots = o->eplb_slots > 0 ? o->eplb_slots : most;
    if (o->eplb_interval < 0 || o->eplb_window < 0 || o->eplb_window > o->eplb_interval)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: online rebalancing every %d passes over a window of %d (an "
                        "interval > 0 and a window from 0 to it)", o->eplb_interval, o->eplb_window);
    if (o->eplb_slots < 0 || *slots < least || *slots > E)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: eplb_slots = %d: %d ranks hold %d experts a layer in %d to %d "
                        "slots each", o->eplb_slots, R, E, least, E);
    if (*slots < most)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: eplb_slots = %d: the placement already has %d experts of a "
                        "layer on one rank", o->eplb_slots, most);
    return EPM_OK;
}

static epm_status push(epm_pass_plan *pp, epm_placement *np)
{
    epm_placement **n = epm_realloc(pp->pl, (size_t)(pp->n + 1) * sizeof *n);
    if (!n) {
        epm_placement_destroy(np);
        return EPM_ERR_NOMEM;
    }
    pp->pl = n;
    pp->pl[pp->n++] = np;
    return EPM_OK;
}

epm_status epm_pass_plan_make(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o,
                              epm_pass_plan *pp)
{
    memset(pp, 0, sizeof *pp);
    const int64_t T = t->tokens;
    const int L = t->layers, K = t->k, E = epm_placement_experts(p), I = o->eplb_interval;
    int slots = 0;
    pp->of = epm_calloc((size_t)(T ? T : 1), sizeof *pp->of);
    pp->pl = epm_malloc(sizeof *pp->pl);
    if (!pp->of || !pp->pl) {
        epm_pass_plan_clear(pp);
        return EPM_ERR_NOMEM;
    }
    pp->pl[0] = (epm_placement *)p;
    pp->n = 1;
    if (I == 0)
        return EPM_OK; /* (every token under p) */
    epm_status st = check_opts(p, o, &slots);
    if (st == EPM_OK && !t->pass_ids)
        st = epm_fail(EPM_ERR_INVALID_ARG, "eval: online rebalancing replays the trace's passes, and the trace has "
                      "no pass_ids (epmoe run --trace-out records them)");
    ran *order = NULL;
    int64_t n = 0, *load = NULL;
    if (st == EPM_OK) {
        order = epm_malloc((size_t)(T ? T : 1) * sizeof *order);
        load = epm_calloc((size_t)L * (size_t)E + 1, sizeof *load);
        st = order && load ? EPM_OK : EPM_ERR_NOMEM;
    }
    for (int64_t i = 0; i < T && st == EPM_OK; i++) {
        if (t->pass_ids[i] >= 0)
            order[n++] = (ran){i, t->pass_ids[i]};
        else if (!rows_empty(t, i))
            st = epm_fail(EPM_ERR_INVALID_ARG, "eval: token %lld chose experts but its pass_ids entry is -1 (a token "
                          "that never ran)", (long long)i);
    }
    if (st == EPM_OK)
        qsort(order, (size_t)n, sizeof *order, by_pass);
    /* Pass b follows pass a (the last that ran a token): a placement is due
     * between them when an interval boundary lies in (a, b]; a second one
     * there would have no counts, which takes nothing (as in the run). */
    int64_t prev = -1;
    for (int64_t s = 0; s < n && st == EPM_OK;) {
        const int32_t b = order[s].pass;
        if (I > 0 && prev >= 0 && b / I != prev / I) {
            epm_placement *np = NULL;
            st = epm_plan_rebalance(pp->pl[pp->n - 1], load, slots, &np);
            if (st == EPM_OK && np) {
                pp->moved += epm_placement_gains(pp->pl[pp->n - 1], np);
                st = push(pp, np);
                memset(load, 0, (size_t)L * (size_t)E * sizeof *load);
            }
        }
        const int counting = epm_eplb_counts(I, o->eplb_window, b);
        for (; s < n && order[s].pass == b; s++) {
            const int64_t i = order[s].token;
            pp->of[i] = pp->n - 1;
            for (int l = 0; l < L && counting; l++)
                for (int j = 0; j < K; j++) {
                    const int32_t e = epm_trace_ids_const(t, l)[(size_t)i * (size_t)K + (size_t)j];
                    if (e >= 0)
                        load[(size_t)l * (size_t)E + (size_t)e]++;
                }
        }
        prev = b;
    }
    epm_free(order);
    epm_free(load);
    if (st != EPM_OK)
        epm_pass_plan_clear(pp);
    return st;
}
