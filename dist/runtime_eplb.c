/* Online expert rebalancing (epm_run_opts.eplb_interval): vLLM's and
 * SGLang's EPLB while serving. Each rank counts the experts its gate chose
 * in the window's passes; at a rebalance the ranks sum the counts and each
 * computes the same eplb placement from them (the method is deterministic),
 * drops the experts it loses and takes those it gains: from the checkpoint,
 * which every rank maps (the default: this runtime holds experts in host
 * memory, where the file's pages are the cheaper source on a node, as
 * bench/README measured), or copied from a rank that holds them
 * (eplb_from_peers: epm_placement_moves names which, as vLLM and SGLang copy
 * them between GPUs, where their weights live). */
#include <limits.h>
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

/* Layer l's (MoE layer ml's) copies between ranks: this rank packs those it
 * sends, [mv, mv + n) being the layer's moves, and the exchange delivers
 * those it receives into *in (by source rank, then in the moves' order: the
 * order the senders packed them). Collective. */
static epm_status send_layer(rt *r, int l, const epm_expert_move *mv, int64_t n, int64_t packed, epm_xcomm_buf *in,
                             int64_t counted[EPM_LINK_COUNT])
{
    int64_t ns = 0;
    for (int64_t i = 0; i < n; i++)
        ns += mv[i].from == r->me;
    float *rows = epm_malloc(ns ? (size_t)ns * (size_t)packed : 1);
    int *dest = epm_malloc((size_t)(ns ? ns : 1) * sizeof *dest);
    epm_status st = rows && dest ? EPM_OK : EPM_ERR_NOMEM;
    /* by destination, then in the moves' order (what each receiver expects from this rank): on the
     * flat path rows in destination order are sent from this buffer, not copied into the exchange's
     * scratch (the hierarchical path copies them: the rebalance trims that scratch after) */
    int64_t k = 0;
    for (int to = 0; to < r->R; to++)
        for (int64_t i = 0; i < n && st == EPM_OK; i++)
            if (mv[i].from == r->me && mv[i].to == to) {
                dest[k] = to;
                st = epm_model_pack_expert(r->m, l, mv[i].expert, (char *)rows + (size_t)k * (size_t)packed, packed);
                k++;
            }
    const int width = (int)(packed / (int64_t)sizeof(float));
    st = epm_rt_sync(r, st); /* (a rank that could not pack is known to all, by its own message) */
    if (st == EPM_OK)
        st = epm_xcomm_exchange_buf(r->x, ns, dest, rows, width, width, counted, in);
    epm_free(rows);
    epm_free(dest);
    return st;
}

/* what this rank received of layer l: row j of *in is the j-th of its
 * moves ordered by source, then in the moves' order */
static epm_status take_layer(rt *r, int l, const epm_expert_move *mv, int64_t n, int64_t packed,
                             const epm_xcomm_buf *in)
{
    int64_t j = 0;
    for (int src = 0; src < r->R; src++)
        for (int64_t i = 0; i < n; i++) {
            if (mv[i].to != r->me || mv[i].from != src)
                continue;
            if (j >= in->n || in->src[j] != src)
                return epm_fail(EPM_ERR_INTERNAL, "online rebalancing: expert %d of layer %d was due from rank %d, "
                                "and %s arrived", mv[i].expert, l, src, j >= in->n ? "nothing" : "another rank's");
            EPM_CHECK(epm_model_unpack_expert(r->m, l, mv[i].expert, (const char *)in->rows + (size_t)j * (size_t)packed,
                                              packed));
            j++;
        }
    if (j != in->n)
        return epm_fail(EPM_ERR_INTERNAL, "online rebalancing: %lld experts of layer %d arrived, %lld were due",
                        (long long)in->n, l, (long long)j);
    return EPM_OK;
}

epm_status epm_eplb_rebalance(rt *r)
{
    const double t0 = epm_now();
    const epm_model_config *c = r->c;
    const int L = r->moe_layers, E = c->num_experts;
    const int peers = r->o->eplb_from_peers;
    EPM_CHECK(epm_xcomm_sum_i64(r->x, r->eplb_load, L * E));
    epm_placement *np = NULL;
    int *gain = NULL, *lose = NULL;
    const void **gone = NULL;
    epm_expert_move *mv = NULL;
    epm_xcomm_buf in = {0};
    int64_t moved = 0, nmv = 0, read = -epm_model_bytes_loaded(r->m), counted[EPM_LINK_COUNT] = {0};
    const int64_t packed = epm_model_expert_packed_bytes(r->m);
    epm_status st = epm_plan_rebalance(r->p, r->eplb_load, r->eplb_slots, r->o->eplb_min_gain, &np);
    /* (a row of the exchange: its transports send at most INT_MAX bytes a row, a hierarchical hop's
     * header of 8 included) */
    if (st == EPM_OK && np && peers && packed > (int64_t)INT_MAX - 8)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "online rebalancing: an expert of %lld bytes is more than one row between "
                      "ranks can carry (2 GiB; --eplb-from checkpoint reads it instead)", (long long)packed);
    memset(r->eplb_load, 0, (size_t)L * E * sizeof *r->eplb_load); /* (the window's counts are spent) */
    if (st != EPM_OK || !np) /* (nothing to take: no MoE token in the window, or no layer worth moving) */
        goto out;
    st = epm_placement_gains(r->p, np, &moved);
    gain = epm_malloc((size_t)E * sizeof *gain);
    lose = epm_malloc((size_t)E * sizeof *lose);
    gone = epm_malloc((size_t)3 * E * sizeof *gone);
    mv = peers ? epm_malloc((size_t)(moved ? moved : 1) * sizeof *mv) : NULL;
    st = st == EPM_OK && (!gain || !lose || !gone || (peers && !mv)) ? EPM_ERR_NOMEM : st;
    if (st == EPM_OK && peers)
        st = epm_placement_moves(r->p, np, mv, moved, &nmv);
    epm_xcomm_wire w0, w1;
    epm_xcomm_wire_get(r->x, &w0);
    if (peers) /* (every rank takes part in every layer's exchange: a failure is known to all first) */
        st = epm_rt_sync(r, st);
    int64_t at = 0; /* the moves are by layer */
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++) {
        const int ml = r->moe_index[l];
        if (ml < 0)
            continue;
        int64_t n = 0;
        while (peers && at + n < nmv && mv[at + n].layer == ml)
            n++;
        /* the copies first, while their senders still hold them. Beyond its slots a rank holds, for
         * the exchange, the layer's experts it sends (packed) and those it receives; the memory check
         * counts a layer's slots' worth of each */
        if (n > 0) /* (every rank knows n: a layer nothing moves in has no exchange) */
            st = send_layer(r, l, mv + at, n, packed, &in, counted);
        at += n;
        int ng, nl;
        diff(r, np, ml, gain, &ng, lose, &nl);
        /* dropped before the gains are held; on a GPU their device copies first (its weight cache would
         * keep them, and could take a gained expert at a freed address for one) */
        for (int i = 0; i < nl && r->cuda && st == EPM_OK; i++) {
            const epm_model_mlp *w = epm_model_expert(r->m, l, lose[i]);
            gone[3 * i] = w ? w->gate : NULL, gone[3 * i + 1] = w ? w->up : NULL, gone[3 * i + 2] = w ? w->down : NULL;
        }
        if (st == EPM_OK && r->cuda && nl > 0)
            st = epm_ops_cuda_forget(gone, 3 * nl);
        if (st == EPM_OK)
            st = epm_model_drop_experts(r->m, l, lose, nl);
        if (st == EPM_OK)
            st = !peers ? epm_model_load_experts(r->m, l, gain, ng, NULL)
                 : n > 0 ? take_layer(r, l, mv + at - n, n, packed, &in) : EPM_OK;
        if (peers) /* (before the next layer's exchange) */
            st = epm_rt_sync(r, st);
    }
    /* (the copies' own wire bytes, which the report keeps apart from the tokens') */
    epm_xcomm_wire_get(r->x, &w1);
    for (int k = 0; k < EPM_LINK_COUNT; k++) {
        r->eplb_wire.bytes[k] += w1.bytes[k] - w0.bytes[k];
        r->eplb_wire.msgs[k] += w1.msgs[k] - w0.msgs[k];
    }
out:
    read += epm_model_bytes_loaded(r->m);
    epm_xcomm_buf_free(&in);
    if (nmv > 0) /* (the exchanges' scratch grew to a layer's experts: not kept for the run) */
        epm_xcomm_pool_trim(r->x);
    epm_free(mv);
    epm_free(gain);
    epm_free(lose);
    epm_free(gone);
    st = epm_rt_sync(r, st);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, &read, 1);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, counted, EPM_LINK_COUNT);
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
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        r->rep->eplb_peer_bytes[k] += counted[k];
    return EPM_OK;
}
