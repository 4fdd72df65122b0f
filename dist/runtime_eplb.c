/* Online expert rebalancing (epm_run_opts.eplb_interval): vLLM's and
 * SGLang's EPLB while serving. Each rank counts the experts its gate chose
 * in the window's passes; at a rebalance the ranks sum the counts and each
 * computes the same eplb placement from them (the method is deterministic),
 * drops the experts it loses and reads those it gains. They come from the
 * checkpoint, which every rank maps, not from the rank that held them:
 * vLLM sends them between GPUs because GPU memory is where they live. */
#include <stdlib.h>
#include <string.h>

#include "epmoe/plan.h"
#include "ops_cuda_host.h"
#include "runtime_internal.h"

/* the experts of MoE layer ml this rank gains (new has, old lacks) and loses */
static void diff(const rt *r, const epm_placement *np, int ml, int *gain, int *ng, int *lose, int *nl)
{
    *ng = *nl = 0;
    for (int e = 0; e < r->c->num_experts; e++) {
        const int now = epm_placement_has(np, ml, e, r->me), was = epm_placement_has(r->p, ml, e, r->me);
        if (now && !was)
            gain[(*ng)++] = e;
        if (was && !now)
            lose[(*nl)++] = e;
    }
}

epm_status epm_eplb_rebalance(rt *r)
{
    const double t0 = epm_now();
    const epm_model_config *c = r->c;
    const int L = r->moe_layers, E = c->num_experts;
    EPM_CHECK(epm_xcomm_sum_i64(r->x, r->eplb_load, L * E));
    epm_placement *np = NULL;
    int *gain = NULL, *lose = NULL;
    const void **gone = NULL;
    int64_t moved = 0, read = -epm_model_bytes_loaded(r->m);
    epm_status st = epm_plan_rebalance(r->p, r->eplb_load, r->eplb_slots, r->o->eplb_min_gain, &np);
    memset(r->eplb_load, 0, (size_t)L * E * sizeof *r->eplb_load); /* (the window's counts are spent) */
    if (st != EPM_OK || !np) /* (nothing to take: no MoE token in the window, or no layer worth moving) */
        goto out;
    st = epm_placement_gains(r->p, np, &moved);
    gain = epm_malloc((size_t)E * sizeof *gain);
    lose = epm_malloc((size_t)E * sizeof *lose);
    gone = epm_malloc((size_t)3 * E * sizeof *gone);
    st = st == EPM_OK && (!gain || !lose || !gone) ? EPM_ERR_NOMEM : st;
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++) {
        const int ml = r->moe_index[l];
        if (ml < 0)
            continue;
        int ng, nl;
        diff(r, np, ml, gain, &ng, lose, &nl);
        /* dropped first: a rank never holds more than its slots; and on a GPU their device copies first
         * (its weight cache would keep them, and could take a gained expert at a freed address for one) */
        for (int i = 0; i < nl && r->cuda; i++) {
            const epm_model_mlp *w = epm_model_expert(r->m, l, lose[i]);
            gone[3 * i] = w ? w->gate : NULL, gone[3 * i + 1] = w ? w->up : NULL, gone[3 * i + 2] = w ? w->down : NULL;
        }
        if (r->cuda && nl > 0)
            st = epm_ops_cuda_forget(gone, 3 * nl);
        if (st == EPM_OK)
            st = epm_model_drop_experts(r->m, l, lose, nl);
        if (st == EPM_OK)
            st = epm_model_load_experts(r->m, l, gain, ng, NULL);
    }
out:
    read += epm_model_bytes_loaded(r->m);
    epm_free(gain);
    epm_free(lose);
    epm_free(gone);
    st = epm_rt_sync(r, st);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, &read, 1);
    r->rep->t_eplb += epm_now() - t0; /* (a boundary that takes nothing paid for its sum and its plan too) */
    if (st != EPM_OK || !np) {
        epm_placement_destroy(np);
        return st;
    }
    epm_placement_destroy(r->owned_p);
    r->p = r->owned_p = np;
    r->rep->eplb_rebalances++;
    r->rep->eplb_moved += moved;
    r->rep->eplb_bytes += read;
    return EPM_OK;
}
