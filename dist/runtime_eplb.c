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
#include "runtime_internal.h"

void epm_eplb_window(rt *r, int64_t pass)
{
    const int I = r->o->eplb_interval, W = r->o->eplb_window > 0 ? r->o->eplb_window : I;
    r->eplb_counting = I > 0 && pass % I >= I - W;
}

int epm_eplb_due(const rt *r, int64_t pass)
{
    return r->o->eplb_interval > 0 && pass > 0 && pass % r->o->eplb_interval == 0;
}

/* Matches the n new places (nodes, or the ranks of a node) of a layer to
 * old ones, most shared experts first: to[i] is the old place new place
 * i's experts go to. share: [n][n] experts both hold. */
static void match(const int *share, int n, int *to)
{
    int used_new[64] = {0}, used_old[64] = {0};
    for (int k = 0; k < n; k++) {
        int bi = -1, bj = -1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n && !used_new[i]; j++)
                if (!used_old[j] && (bi < 0 || share[i * n + j] > share[bi * n + bj]))
                    bi = i, bj = j;
        to[bi] = bj;
        used_new[bi] = used_old[bj] = 1;
    }
}

/* How many experts of layer ml the ranks [a0, a0 + g) of p and [b0, b0 + g)
 * of q both hold, as sets. */
static int shared(const epm_placement *p, int a0, const epm_placement *q, int b0, int g, int ml, int E)
{
    int n = 0;
    for (int e = 0; e < E; e++) {
        int in_a = 0, in_b = 0;
        for (int k = 0; k < g; k++) {
            in_a |= epm_placement_has(p, ml, e, a0 + k);
            in_b |= epm_placement_has(q, ml, e, b0 + k);
        }
        n += in_a && in_b;
    }
    return n;
}

/* The new placement with its nodes, and the ranks within each, renamed to
 * keep as many experts where they are as a greedy matching finds: nodes and
 * the ranks of a node are alike to the cost model, so balance and traffic
 * are unchanged, and a rebalance moves what changed rather than every
 * expert the packing happened to put elsewhere. */
static epm_status keep_in_place(const rt *r, const epm_placement *np, epm_placement **out)
{
    const epm_cluster *cl = epm_placement_cluster(np);
    const int N = cl->nodes, G = cl->gpus_per_node, E = r->c->num_experts, L = r->moe_layers;
    *out = NULL;
    if (N > 64 || G > 64) /* (as planned) */
        return epm_placement_clone(np, out);
    int *share = epm_malloc((size_t)64 * 64 * sizeof *share), node_to[64], rank_to[64];
    int *perm = epm_malloc((size_t)N * G * sizeof *perm);
    epm_status st = share && perm ? epm_placement_create(L, E, r->c->top_k, cl, out) : EPM_ERR_NOMEM;
    for (int ml = 0; ml < L && st == EPM_OK; ml++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                share[i * N + j] = shared(np, i * G, r->p, j * G, G, ml, E);
        match(share, N, node_to);
        for (int i = 0; i < N; i++) {
            for (int a = 0; a < G; a++)
                for (int b = 0; b < G; b++)
                    share[a * G + b] = shared(np, i * G + a, r->p, node_to[i] * G + b, 1, ml, E);
            match(share, G, rank_to);
            for (int a = 0; a < G; a++)
                perm[i * G + a] = node_to[i] * G + rank_to[a];
        }
        for (int e = 0; e < E && st == EPM_OK; e++) {
            const int *reps;
            const int n = epm_placement_replicas(np, ml, e, &reps);
            for (int k = 0; k < n && st == EPM_OK; k++)
                st = epm_placement_add(*out, ml, e, perm[reps[k]]);
        }
    }
    if (st == EPM_OK)
        epm_placement_set_info(*out, epm_placement_get_info(np));
    epm_free(share);
    epm_free(perm);
    if (st != EPM_OK) {
        epm_placement_destroy(*out);
        *out = NULL;
    }
    return st;
}

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
    int64_t total = 0;
    for (int i = 0; i < L * E; i++)
        total += r->eplb_load[i];
    epm_status st = EPM_OK;
    epm_placement *np = NULL;
    int *gain = NULL, *lose = NULL;
    int64_t moved = 0, read = -epm_model_bytes_loaded(r->m);
    if (total == 0) /* (the window ran no MoE token: nothing to go by) */
        goto out;
    epm_placement *packed = NULL;
    st = epm_plan_from_loads(EPM_METHOD_EPLB, r->eplb_load, L, E, c->top_k, epm_placement_cluster(r->p),
                             r->eplb_slots, &packed);
    if (st == EPM_OK)
        st = keep_in_place(r, packed, &np);
    epm_placement_destroy(packed);
    gain = epm_malloc((size_t)E * sizeof *gain);
    lose = epm_malloc((size_t)E * sizeof *lose);
    st = st == EPM_OK && (!gain || !lose) ? EPM_ERR_NOMEM : st;
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++) {
        const int ml = r->moe_index[l];
        if (ml < 0)
            continue;
        for (int e = 0; e < E; e++) /* (every rank's gains, which every rank can tell) */
            for (int q = 0; q < r->R; q++)
                moved += epm_placement_has(np, ml, e, q) && !epm_placement_has(r->p, ml, e, q);
        int ng, nl;
        diff(r, np, ml, gain, &ng, lose, &nl);
        /* dropped first: a rank never holds more than its slots */
        st = epm_model_drop_experts(r->m, l, lose, nl);
        if (st == EPM_OK)
            st = epm_model_load_experts(r->m, l, gain, ng, NULL);
    }
out:
    read += epm_model_bytes_loaded(r->m);
    epm_free(gain);
    epm_free(lose);
    st = epm_rt_sync(r, st);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, &read, 1);
    if (st != EPM_OK || !np) {
        epm_placement_destroy(np);
        return st;
    }
    epm_placement_destroy(r->owned_p);
    r->p = r->owned_p = np;
    r->rep->eplb_rebalances++;
    r->rep->eplb_moved += moved;
    r->rep->eplb_bytes += read;
    memset(r->eplb_load, 0, (size_t)L * E * sizeof *r->eplb_load);
    r->rep->t_eplb += epm_now() - t0;
    return EPM_OK;
}
