/* Online expert rebalancing (epm_run_opts.eplb_interval): vLLM's and
 * SGLang's EPLB while serving. Each rank counts the experts its gate chose
 * in the window's passes; at a rebalance the ranks sum the counts and each
 * computes the same eplb placement from them (the method is deterministic),
 * drops the experts it loses and takes those it gains: from the checkpoint,
 * which every rank maps (the default: this runtime holds experts in host
 * memory, where the file's pages are the cheaper source on a node, as
 * bench/README measured), or copied from a rank that holds them
 * (eplb_from_peers: epm_placement_moves names which, as vLLM and SGLang copy
 * them between GPUs, where their weights live).
 *
 * With eplb_lag (vLLM's asynchronous EPLB) the placement taken at a boundary
 * comes into service that many passes later, and the passes between run
 * under the one before while its experts are fetched: the checkpoint's pages
 * read ahead by the kernel, or every layer's copies posted at once and
 * waited for at the switch. The switch is at a fixed pass, not when the
 * copies happen to land, so that plan eval replays the run number for
 * number. */
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

/* The model layer of MoE layer ml */
static int layer_of(const rt *r, int ml)
{
    for (int l = 0; l < r->c->num_layers; l++)
        if (r->moe_index[l] == ml)
            return l;
    return -1;
}

/* The copies this rank sends of moves [mv, mv + n), packed by destination,
 * then in the moves' order (what each receiver expects from this rank): on
 * the flat path rows in destination order are sent from this buffer, not
 * copied into the exchange's scratch. *rows: a fresh buffer (NULL in), or
 * the caller's grown to fit (*cap its bytes); *rows and *dest are the
 * caller's to free, also on failure. */
static epm_status pack_sends(const rt *r, const epm_expert_move *mv, int64_t n, int64_t packed, float **rows,
                             size_t *cap, int **dest, int64_t *ns)
{
    *ns = 0;
    for (int64_t i = 0; i < n; i++)
        *ns += mv[i].from == r->me;
    const size_t need = *ns ? (size_t)*ns * (size_t)packed : 1;
    if (!*rows || need > *cap) { /* (kept from one change to the next: a fresh one's pages fault in) */
        epm_free(*rows);
        *rows = epm_malloc(need);
        *cap = *rows ? need : 0;
    }
    *dest = epm_malloc((size_t)(*ns ? *ns : 1) * sizeof **dest);
    epm_status st = *rows && *dest ? EPM_OK : EPM_ERR_NOMEM;
    int64_t k = 0;
    for (int to = 0; to < r->R; to++)
        for (int64_t i = 0; i < n && st == EPM_OK; i++)
            if (mv[i].from == r->me && mv[i].to == to) {
                (*dest)[k] = to;
                st = epm_model_pack_expert(r->m, layer_of(r, mv[i].layer), mv[i].expert,
                                           (char *)*rows + (size_t)k * (size_t)packed, packed);
                k++;
            }
    return st;
}

/* Layer l's (MoE layer ml's) copies between ranks, blocking: this rank sends
 * its share of [mv, mv + n), the layer's moves, and the exchange delivers
 * those it receives into *in (by source rank, then in the moves' order: the
 * order the senders packed them). Collective. */
static epm_status send_layer(rt *r, const epm_expert_move *mv, int64_t n, int64_t packed, epm_xcomm_buf *in,
                             int64_t counted[EPM_LINK_COUNT])
{
    float *rows = NULL;
    int *dest;
    int64_t ns;
    size_t cap = 0;
    epm_status st = pack_sends(r, mv, n, packed, &rows, &cap, &dest, &ns);
    const int width = (int)(packed / (int64_t)sizeof(float));
    st = epm_rt_ready(r, st); /* (a rank that could not pack is known to all, by its own message) */
    if (st == EPM_OK)
        st = epm_xcomm_exchange_buf(r->x, ns, dest, rows, width, width, counted, in);
    epm_free(rows);
    epm_free(dest);
    return st;
}

/* What this rank received of moves [mv, mv + n): row j of *in is the j-th
 * of its moves ordered by source, then in the moves' order. */
static epm_status take_copies(rt *r, const epm_expert_move *mv, int64_t n, int64_t packed, const epm_xcomm_buf *in)
{
    int64_t j = 0;
    for (int src = 0; src < r->R; src++)
        for (int64_t i = 0; i < n; i++) {
            if (mv[i].to != r->me || mv[i].from != src)
                continue;
            if (j >= in->n || in->src[j] != src)
                return epm_fail(EPM_ERR_INTERNAL, "online rebalancing: expert %d of MoE layer %d was due from rank "
                                "%d, and %s arrived", mv[i].expert, mv[i].layer, src,
                                j >= in->n ? "nothing" : "another rank's");
            EPM_CHECK(epm_model_unpack_expert(r->m, layer_of(r, mv[i].layer), mv[i].expert,
                                              (const char *)in->rows + (size_t)j * (size_t)packed, packed));
            j++;
        }
    if (j != in->n)
        return epm_fail(EPM_ERR_INTERNAL, "online rebalancing: %lld experts arrived, %lld were due", (long long)in->n,
                        (long long)j);
    return EPM_OK;
}

/* Drops the experts of layer l (MoE layer ml) this rank loses to np; on a
 * GPU their device copies first (its weight cache would keep them, and
 * could take a gained expert at a freed address for one). gone: [3 * E];
 * gain[0..*ng) receives those it gains. */
static epm_status drop_lost(rt *r, const epm_placement *np, int l, int ml, int *gain, int *ng, int *lose,
                            const void **gone)
{
    int nl;
    diff(r, np, ml, gain, ng, lose, &nl);
    for (int i = 0; i < nl && r->cuda; i++) {
        const epm_model_mlp *w = epm_model_expert(r->m, l, lose[i]);
        gone[3 * i] = w ? w->gate : NULL, gone[3 * i + 1] = w ? w->up : NULL, gone[3 * i + 2] = w ? w->down : NULL;
    }
    if (r->cuda && nl > 0)
        EPM_CHECK(epm_ops_cuda_forget(gone, 3 * nl));
    return epm_model_drop_experts(r->m, l, lose, nl);
}

/* np is in service: the report counts it */
static void take_placement(rt *r, epm_placement *np, int64_t moved, int64_t read, const int64_t counted[EPM_LINK_COUNT])
{
    epm_placement_destroy(r->owned_p);
    r->p = r->owned_p = np;
    r->rep->eplb_rebalances++;
    r->rep->eplb_moved += moved;
    r->rep->eplb_bytes += read;
    for (int k = 0; k < EPM_LINK_COUNT; k++)
        r->rep->eplb_peer_bytes[k] += counted[k];
}

static void wire_since(rt *r, const epm_xcomm_wire *w0)
{
    epm_xcomm_wire w1;
    epm_xcomm_wire_get(r->x, &w1);
    for (int k = 0; k < EPM_LINK_COUNT; k++) {
        r->eplb_wire.bytes[k] += w1.bytes[k] - w0->bytes[k];
        r->eplb_wire.msgs[k] += w1.msgs[k] - w0->msgs[k];
    }
}

/* The rest of a change to np once its copies (if any) have arrived: per
 * layer, the lost experts dropped, then the gained ones taken (copies in
 * *in, all layers', or read from the checkpoint). Collective where it
 * copies (syncs). */
static epm_status apply(rt *r, const epm_placement *np, const epm_expert_move *mv, int64_t nmv, int64_t packed,
                        const epm_xcomm_buf *in, int copied_already)
{
    const int E = r->c->num_experts, peers = r->o->eplb_from_peers;
    int *gain = epm_malloc((size_t)E * sizeof *gain), *lose = epm_malloc((size_t)E * sizeof *lose);
    const void **gone = epm_malloc((size_t)3 * E * sizeof *gone);
    epm_status st = gain && lose && gone ? EPM_OK : EPM_ERR_NOMEM;
    if (peers && !copied_already) /* (every rank takes part in every layer's exchange: a failure is known first) */
        st = epm_rt_sync(r, st);
    int64_t at = 0; /* the moves are by layer */
    epm_xcomm_buf layer_in = {0};
    for (int l = 0; l < r->c->num_layers && st == EPM_OK; l++) {
        const int ml = r->moe_index[l];
        if (ml < 0)
            continue;
        int64_t n = 0;
        while (peers && at + n < nmv && mv[at + n].layer == ml)
            n++;
        /* blocking: the copies first, while their senders still hold them. Beyond its slots a rank holds,
         * for the exchange, the layer's experts it sends (packed) and those it receives; the memory check
         * counts a layer's slots' worth of each */
        if (n > 0 && !copied_already) /* (every rank knows n: a layer nothing moves in has no exchange) */
            st = send_layer(r, mv + at, n, packed, &layer_in, r->eplb_counted);
        at += n;
        int ng = 0;
        if (st == EPM_OK)
            st = drop_lost(r, np, l, ml, gain, &ng, lose, gone);
        if (st == EPM_OK && !peers)
            st = epm_model_load_experts(r->m, l, gain, ng, NULL);
        if (st == EPM_OK && n > 0 && !copied_already)
            st = take_copies(r, mv + at - n, n, packed, &layer_in);
        if (peers && !copied_already) /* (before the next layer's exchange) */
            st = epm_rt_sync(r, st);
    }
    /* (arrived already: taken after the drops, whose memory they may reuse) */
    if (copied_already && st == EPM_OK)
        st = take_copies(r, mv, nmv, packed, in);
    epm_xcomm_buf_free(&layer_in);
    epm_free(gain);
    epm_free(lose);
    epm_free(gone);
    return st;
}

/* The placement the window's counts call for (NULL: none, as plan eval
 * takes none), with its gains counted and, copying, their moves. Collective. */
static epm_status decide(rt *r, epm_placement **np, int64_t *moved, epm_expert_move **mv, int64_t *nmv)
{
    const int L = r->moe_layers, E = r->c->num_experts;
    const int64_t packed = epm_model_expert_packed_bytes(r->m);
    *np = NULL, *mv = NULL, *moved = *nmv = 0;
    EPM_CHECK(epm_xcomm_sum_i64(r->x, r->eplb_load, L * E));
    epm_status st = epm_plan_rebalance(r->p, r->eplb_load, r->eplb_slots, r->o->eplb_min_gain, r->eplb_groups, np);
    memset(r->eplb_load, 0, (size_t)L * E * sizeof *r->eplb_load); /* (the window's counts are spent) */
    /* (a row of the exchange: its transports send at most INT_MAX bytes a row, a hierarchical hop's
     * header of 8 included) */
    if (st == EPM_OK && *np && r->o->eplb_from_peers && packed > (int64_t)INT_MAX - 8)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "online rebalancing: an expert of %lld bytes is more than one row between "
                      "ranks can carry (2 GiB; --eplb-from checkpoint reads it instead)", (long long)packed);
    if (st == EPM_OK && *np)
        st = epm_placement_gains(r->p, *np, moved);
    if (st == EPM_OK && *np && r->o->eplb_from_peers) {
        *mv = epm_malloc((size_t)(*moved ? *moved : 1) * sizeof **mv);
        st = *mv ? epm_placement_moves(r->p, *np, *mv, *moved, nmv) : EPM_ERR_NOMEM;
    }
    if (st != EPM_OK) {
        epm_placement_destroy(*np);
        epm_free(*mv);
        *np = NULL, *mv = NULL;
    }
    return st;
}

/* Asynchronous: np's experts start towards this rank (the kernel reads the
 * file's pages ahead; every layer's copies are posted in one exchange,
 * which the passes' own exchanges progress). */
static epm_status fetch_ahead(rt *r, const epm_placement *np, const epm_expert_move *mv, int64_t nmv)
{
    const int64_t packed = epm_model_expert_packed_bytes(r->m);
    if (!r->o->eplb_from_peers) {
        const int E = r->c->num_experts;
        int *gain = epm_malloc((size_t)E * sizeof *gain), *lose = epm_malloc((size_t)E * sizeof *lose);
        epm_status st = gain && lose ? EPM_OK : EPM_ERR_NOMEM;
        for (int l = 0; l < r->c->num_layers && st == EPM_OK; l++) {
            int ng, nl;
            if (r->moe_index[l] < 0)
                continue;
            diff(r, np, r->moe_index[l], gain, &ng, lose, &nl);
            st = epm_model_prefetch_experts(r->m, l, gain, ng);
        }
        epm_free(gain);
        epm_free(lose);
        return st;
    }
    int *dest;
    int64_t ns;
    epm_status st = pack_sends(r, mv, nmv, packed, &r->eplb_rows, &r->eplb_rows_cap, &dest, &ns);
    const int width = (int)(packed / (int64_t)sizeof(float));
    st = epm_rt_sync(r, st);
    r->eplb_in.n = 0; /* (the last change's rows are kept, not due: a change that copies nothing has none) */
    /* (on the copies' own communicator, flat p2p: posted now, moving under the passes, whose MPI calls
     * progress them; sent from rows, which stay until the switch) */
    if (st == EPM_OK && nmv > 0)
        st = epm_xcomm_exchange_start_lent(r->xc, ns, dest, r->eplb_rows, width, width, r->eplb_counted,
                                           &r->eplb_in, &r->eplb_req);
    epm_free(dest); /* (the report takes the copies' communicator's whole wire as theirs) */
    return st;
}

/* The end of a change, collective: its outcome agreed, its reads and
 * copies summed, its time counted, and np (NULL: none taken) in service or
 * dropped. */
static epm_status conclude(rt *r, epm_status st, epm_placement *np, int64_t moved, int64_t read, double t0)
{
    st = epm_rt_sync(r, st);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, &read, 1);
    if (st == EPM_OK)
        st = epm_xcomm_sum_i64(r->x, r->eplb_counted, EPM_LINK_COUNT);
    r->rep->t_eplb += epm_now() - t0; /* (a boundary that takes nothing paid for its sum and its plan too) */
    if (st == EPM_OK && np)
        take_placement(r, np, moved, read, r->eplb_counted);
    else
        epm_placement_destroy(np);
    memset(r->eplb_counted, 0, sizeof r->eplb_counted);
    return st;
}

/* The placement in flight comes into service: its copies waited for, then
 * taken, the lost experts dropped, the gained ones read. Collective. */
static epm_status switch_in(rt *r)
{
    const double t0 = epm_now();
    const int64_t packed = epm_model_expert_packed_bytes(r->m);
    int64_t read = -epm_model_bytes_loaded(r->m);
    epm_status st = EPM_OK;
    if (r->eplb_req) {
        st = epm_xcomm_exchange_wait_buf(r->eplb_req); /* (frees the request, also on failure) */
        r->eplb_req = NULL;
    }
    st = epm_rt_sync(r, st);
    if (st == EPM_OK)
        st = apply(r, r->eplb_next, r->eplb_mv, r->eplb_nmv, packed, &r->eplb_in, r->o->eplb_from_peers);
    read += epm_model_bytes_loaded(r->m);
    /* (the rows sent and received stay for the next change: the memory check counts them, and fresh
     * ones would fault their pages in again) */
    if (r->eplb_nmv > 0) /* (the exchange's scratch grew to the change's experts: not kept for the run) */
        epm_xcomm_pool_trim(r->xc);
    epm_free(r->eplb_mv);
    r->eplb_mv = NULL;
    epm_placement *np = r->eplb_next;
    r->eplb_next = NULL;
    return conclude(r, st, np, r->eplb_moved_next, read, t0);
}

/* A boundary: the next placement taken, and with a lag set on its way. */
static epm_status rebalance(rt *r)
{
    const double t0 = epm_now();
    epm_placement *np;
    epm_expert_move *mv;
    int64_t moved, nmv;
    epm_status st = epm_rt_sync(r, decide(r, &np, &moved, &mv, &nmv)); /* (then every rank has the same np) */
    if (st == EPM_OK && np && r->o->eplb_lag > 0) {
        r->eplb_next = np, r->eplb_mv = mv, r->eplb_nmv = nmv, r->eplb_moved_next = moved;
        st = fetch_ahead(r, np, mv, nmv);
        r->rep->t_eplb += epm_now() - t0;
        return epm_rt_sync(r, st); /* (a failure leaves the pending change to epm_eplb_teardown) */
    }
    const int64_t packed = epm_model_expert_packed_bytes(r->m);
    int64_t read = -epm_model_bytes_loaded(r->m);
    epm_xcomm_wire w0;
    epm_xcomm_wire_get(r->x, &w0);
    if (st == EPM_OK && np)
        st = apply(r, np, mv, nmv, packed, NULL, 0);
    wire_since(r, &w0); /* (the copies' own wire bytes, which the report keeps apart from the tokens') */
    read += epm_model_bytes_loaded(r->m);
    if (nmv > 0) /* (the exchanges' scratch grew to a layer's experts: not kept for the run) */
        epm_xcomm_pool_trim(r->x);
    epm_free(mv);
    return conclude(r, st, np, moved, read, t0);
}

epm_status epm_eplb_pass(rt *r, int64_t pass)
{
    if (r->eplb_next && pass >= r->eplb_switch_at)
        EPM_CHECK(switch_in(r));
    if (!epm_eplb_due(r->o->eplb_interval, pass))
        return EPM_OK;
    /* (the boundary's number: a lag counts the passes from it, as plan eval's replay does) */
    r->eplb_switch_at = pass + r->o->eplb_lag;
    return rebalance(r);
}

epm_status epm_eplb_end(rt *r) { return r->eplb_next ? switch_in(r) : EPM_OK; }

void epm_eplb_teardown(rt *r)
{
    if (r->eplb_req) /* (a failed run: every rank leaves its passes, and cancels alike) */
        epm_xcomm_exchange_cancel(r->eplb_req);
    r->eplb_req = NULL;
    epm_free(r->eplb_rows); /* (after the cancel: the exchange sent from them) */
    r->eplb_rows = NULL;
    r->eplb_rows_cap = 0;
    epm_xcomm_buf_free(&r->eplb_in);
    epm_placement_destroy(r->eplb_next);
    r->eplb_next = NULL;
    epm_free(r->eplb_mv);
    r->eplb_mv = NULL;
}
