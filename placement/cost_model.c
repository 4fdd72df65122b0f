/* The cost model of include/epmoe/eval.h: what `plan eval` predicts and what
 * `epmoe run` must count, transfer for transfer. Kept deliberately literal —
 * one pass over tokens, layer by layer, in the order the runtime moves them. */
#include <math.h>
#include <string.h>

#include "cost_passes.h"
#include "hier_route.h"
#include "placement_internal.h"
#include "epmoe/eval.h"
#include "epmoe/trace.h"

void epm_eval_opts_init(epm_eval_opts *o)
{
    o->mode = EPM_MODE_HOME;
    o->hidden_bytes = 4096 * 2;
    o->kv_row_bytes = 8 * 128 * 2 * 2;
    o->dispatch_bytes = 0;
    o->flops_per_assignment = 6.0 * 4096.0 * 14336.0;
    o->eplb_interval = o->eplb_window = o->eplb_slots = 0;
    o->eplb_min_gain = 0;
    o->expert_bytes = 0;
    o->read_expert_bytes = 0;
    o->read_gbps = 0;
    o->eplb_lag = 0;
    o->eplb_groups = 0;
    o->hierarchical = 0;
    o->intra_latency_s = o->inter_latency_s = 0;
}

void epm_eval_result_destroy(epm_eval_result *r)
{
    if (!r)
        return;
    epm_free(r->layer);
    epm_free(r->rank_load);
    epm_free(r->send_bytes);
    epm_free(r->recv_bytes);
    epm_free(r->layer_wire);
    epm_placement_destroy(r->last);
    epm_free(r);
}

/* Per-rank bytes of one communication phase, split by direction and link
 * class: [0] sent intra, [1] sent inter, [2] received intra, [3] received
 * inter, each [R]; m the same for its messages (a rank's per-peer blocks of
 * a hop). */
typedef struct phase {
    int64_t *b, *m;
    int R;
} phase;

void epm_cost_phase_add(int64_t *b, int ranks, const epm_cluster *c, int from, int to, int64_t bytes)
{
    size_t inter = epm_cluster_link(c, from, to) == EPM_LINK_INTER;
    b[inter * (size_t)ranks + (size_t)from] += bytes;
    b[(2 + inter) * (size_t)ranks + (size_t)to] += bytes;
}

static void phase_add(phase *ph, const epm_cluster *c, int from, int to, int64_t bytes)
{
    epm_cost_phase_add(ph->b, ph->R, c, from, to, bytes);
}

static void phase_add_msg(phase *ph, const epm_cluster *c, int from, int to)
{
    epm_cost_phase_add(ph->m, ph->R, c, from, to, 1);
}

static double rank_seconds(const epm_cluster *c, int64_t intra, int64_t inter)
{
    return (double)intra / (c->intra_gbps * 1e9) + (double)inter / (c->inter_gbps * 1e9);
}

/* A phase ends when its busiest rank has sent and received its bytes
 * (MoETuner's max-pair idea at rank granularity): per rank, send and receive
 * overlap (full duplex) and the two link classes share the rank's time;
 * with messages m (NULL: none), each message's latency (lat[0] intra, lat[1]
 * inter) on the rank that sends it and on the one that receives it. */
static double phase_time(const int64_t *b, const int64_t *m, const double *lat, int ranks, const epm_cluster *c)
{
    const size_t R = (size_t)ranks;
    double worst = 0;
    for (size_t r = 0; r < R; r++) {
        double s = rank_seconds(c, b[r], b[R + r]);
        double v = rank_seconds(c, b[2 * R + r], b[3 * R + r]);
        if (m) {
            s += (double)m[r] * lat[0] + (double)m[R + r] * lat[1];
            v += (double)m[2 * R + r] * lat[0] + (double)m[3 * R + r] * lat[1];
        }
        double t = s > v ? s : v;
        worst = t > worst ? t : worst;
    }
    return worst;
}

double epm_cost_phase_seconds(const int64_t *b, int ranks, const epm_cluster *c)
{
    return phase_time(b, NULL, NULL, ranks, c);
}

static double phase_seconds(const phase *ph, const epm_cluster *c, const double lat[2])
{
    return phase_time(ph->b, lat[0] != 0 || lat[1] != 0 ? ph->m : NULL, lat, ph->R, c);
}

/* a phase starts empty: bytes and messages */
static void phase_clear(phase *ph)
{
    memset(ph->b, 0, (size_t)ph->R * 4 * sizeof *ph->b);
    memset(ph->m, 0, (size_t)ph->R * 4 * sizeof *ph->m);
}

/* The hops of a layer's exchanges (and the final gather's), each a set of
 * messages: dispatch's up to 3, combine's and the gather's up to 2 (the
 * hierarchical path), the K/V all-gather's 1. */
enum { HOP_D0, HOP_D1, HOP_D2, HOP_C0, HOP_C1, HOP_KV, HOP_G0, HOP_G1, HOPS };
enum { MSG_RANKS_MAX = 1024 }; /* (messages are counted up to this many ranks: [HOPS][R][R] stamps) */

typedef struct {
    epm_eval_result *r;
    const epm_cluster *c;
    int l, R;
    int hier, P;   /* the hierarchical path, P ranks a node */
    int *dd, *gw;  /* [K] scratch: a dispatch's ranks other than its source, their gateways */
    phase a2a, kv; /* this layer's dispatch + combine, and its K/V all-gather */
    uint32_t *stamp, epoch; /* [HOPS][R][R]: the exchange (epoch) a hop last sent from -> to in; NULL: not counted */
    /* with a latency: [HOPS][R][R] a pair's bytes in this exchange's hop (NULL: none), and what rides in
     * the counts messages (epm_ride_max): a pair's rows are a message of their own only beyond it */
    int64_t *pair;
    int64_t ride;
    int follow;
} acc;

/* A transfer on the wire in hop h (of layer l; -1: the final gather), which
 * the modelled time's phase sees: its bytes, and a message when it is the
 * first from -> to of this exchange's hop (a transport sends a peer's rows
 * in one block). */
static void wire(acc *a, phase *ph, int h, int l, int from, int to, int64_t bytes)
{
    if (from == to)
        return;
    epm_link k = epm_cluster_link(a->c, from, to);
    a->r->wire_bytes[k] += bytes;
    if (l >= 0)
        a->r->layer_wire[(size_t)l * EPM_LINK_COUNT + k] += bytes;
    phase_add(ph, a->c, from, to, bytes);
    const size_t at = ((size_t)h * (size_t)a->R + (size_t)from) * (size_t)a->R + (size_t)to;
    uint32_t *st = a->stamp ? a->stamp + at : NULL;
    if (st && *st != a->epoch) {
        *st = a->epoch;
        a->r->wire_msgs[k]++;
        if (a->pair)
            a->pair[at] = 0;
    }
    if (a->pair) { /* (the modelled time's messages: the pair's rows once they no longer ride) */
        const int64_t before = a->pair[at];
        a->pair[at] += bytes;
        if (before <= a->ride && a->pair[at] > a->ride)
            phase_add_msg(ph, a->c, from, to);
    }
}

/* Each hop of an exchange and each all-gather starts with its counts
 * messages, one to every other rank, whatever it moves (and carrying the
 * rows that ride): with a latency, hops of them on every rank, both ways. */
static void counts_msgs(acc *a, phase *ph, int hops)
{
    if (!a->pair)
        return;
    const size_t R = (size_t)a->R;
    const int64_t intra = a->c->nodes > 1 ? a->P - 1 : a->R - 1, inter = a->R - 1 - intra;
    for (size_t q = 0; q < R; q++) {
        ph->m[q] += hops * intra;
        ph->m[R + q] += hops * inter;
        ph->m[2 * R + q] += hops * intra;
        ph->m[3 * R + q] += hops * inter;
    }
}

/* A counted transfer (hop: HOP_D0 dispatch, HOP_C0 combine, HOP_KV); on the
 * flat path, the wire's too. */
static void move(acc *a, int from, int to, int64_t bytes, int hop)
{
    const int kv = hop == HOP_KV;
    if (from == to)
        return;
    epm_link k = epm_cluster_link(a->c, from, to);
    epm_eval_layer *ly = &a->r->layer[a->l];
    if (kv) {
        ly->kv_bytes[k] += bytes;
    } else {
        ly->bytes[k] += bytes;
        ly->transfers[k]++;
    }
    if (kv || !a->hier)
        wire(a, kv ? &a->kv : &a->a2a, hop, a->l, from, to, bytes);
    a->r->send_bytes[(size_t)a->l * (size_t)a->R + (size_t)from] += bytes;
    a->r->recv_bytes[(size_t)a->l * (size_t)a->R + (size_t)to] += bytes;
}

/* The hierarchical path's wire of a row from src to c (a combine: hop
 * HOP_C0, the final gather: HOP_G0; then the next). */
static void hier_single(acc *a, phase *ph, int h, int l, int src, int c, int64_t bytes)
{
    int g = epm_hier_gateway(src, a->P, c);
    wire(a, ph, h, l, src, g, bytes);
    wire(a, ph, h + 1, l, g, c, bytes);
}

/* ... and of a dispatch from src to its distinct ranks d[0..n) (src among
 * them or not), keyed by its token: the gathering hop's copies (one a rank
 * of src's node), the hop between nodes (one a destination node) and the
 * fan-out there, as comm/xcomm_a2a.c sends them. */
static void hier_dispatch(acc *a, int src, const int *d, int n, uint64_t key, int64_t bytes)
{
    const int P = a->P;
    int m = 0;
    for (int q = 0; q < n; q++)
        if (d[q] != src)
            a->dd[m++] = d[q];
    epm_hier_gateways(src, P, m, a->dd, key, a->gw);
    for (int j = 0; j < m; j++) {
        int first = 1, lead = 1;
        for (int b = 0; b < j; b++) {
            first &= a->gw[b] != a->gw[j];
            lead &= a->dd[b] / P != a->dd[j] / P;
        }
        if (first)
            wire(a, &a->a2a, HOP_D0, a->l, src, a->gw[j], bytes);
        if (a->dd[j] / P == src / P)
            continue;
        int t = a->dd[j] / P * P + a->gw[j] % P; /* (the node's rank that takes it between nodes) */
        if (lead)
            wire(a, &a->a2a, HOP_D1, a->l, a->gw[j], t, bytes);
        wire(a, &a->a2a, HOP_D2, a->l, t, a->dd[j], bytes);
    }
}

/* A pass ends: its phases and its busiest rank's experts are waited for
 * (spf: modelled seconds per (token, expert)); the next starts empty. */
static void close_pass(acc *a, int64_t *pass_load, double spf, epm_eval_layer *ly, const double lat[2])
{
    const int R = a->R;
    /* dispatch and combine: one hop each flat; hierarchical 3 (gathering, between nodes, fan-out) and 2 */
    counts_msgs(a, &a->a2a, a->hier ? 5 : 2);
    if (a->follow)
        counts_msgs(a, &a->kv, 1);
    ly->t_comm += phase_seconds(&a->a2a, a->c, lat) + phase_seconds(&a->kv, a->c, lat);
    int64_t most = 0;
    for (int q = 0; q < R; q++)
        most = pass_load[q] > most ? pass_load[q] : most;
    ly->t_compute += (double)most * spf;
    phase_clear(&a->a2a);
    phase_clear(&a->kv);
    a->epoch++;
    memset(pass_load, 0, (size_t)R * sizeof *pass_load);
}

epm_status epm_eval(const epm_trace *t, const epm_placement *p, const epm_eval_opts *o, epm_eval_result **out)
{
    *out = NULL;
    if (epm_trace_layers(t) != p->layers)
        return epm_fail(EPM_ERR_MISMATCH, "eval: the trace has %d MoE layers, the placement %d",
                        epm_trace_layers(t), p->layers);
    if (epm_trace_experts(t) > p->experts)
        return epm_fail(EPM_ERR_MISMATCH, "eval: the trace names experts up to %d, the placement has %d",
                        epm_trace_experts(t) - 1, p->experts);
    if (o->mode != EPM_MODE_HOME && o->mode != EPM_MODE_FOLLOW)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: mode = %d is not home or follow", (int)o->mode);
    if (o->hidden_bytes < 0 || o->kv_row_bytes < 0 || o->dispatch_bytes < 0 || o->expert_bytes < 0 ||
        !(o->flops_per_assignment >= 0) || !isfinite(o->flops_per_assignment))
        return epm_fail(EPM_ERR_INVALID_ARG,
                        "eval: hidden_bytes = %lld, kv_row_bytes = %lld, dispatch_bytes = %lld, expert_bytes = %lld and "
                        "flops_per_assignment = %g must be >= 0",
                        (long long)o->hidden_bytes, (long long)o->kv_row_bytes, (long long)o->dispatch_bytes,
                        (long long)o->expert_bytes, o->flops_per_assignment);
    if (o->read_expert_bytes < 0 || !(o->read_gbps >= 0) || !isfinite(o->read_gbps))
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: read_expert_bytes = %lld and read_gbps = %g must be >= 0",
                        (long long)o->read_expert_bytes, o->read_gbps);
    if (!(o->intra_latency_s >= 0) || !isfinite(o->intra_latency_s) || !(o->inter_latency_s >= 0) ||
        !isfinite(o->inter_latency_s))
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: intra_latency_s = %g and inter_latency_s = %g must be >= 0",
                        o->intra_latency_s, o->inter_latency_s);
    if ((o->intra_latency_s > 0 || o->inter_latency_s > 0) && p->ranks > MSG_RANKS_MAX)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: a message latency needs the messages, counted up to %d ranks; "
                        "the placement has %d", MSG_RANKS_MAX, p->ranks);
    if (o->eplb_lag != 0 && o->eplb_interval == 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: eplb_lag = %d is online rebalancing's, and eplb_interval is 0",
                        o->eplb_lag);
    if (o->eplb_groups != 0 && o->eplb_interval == 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: eplb_groups = %d is online rebalancing's, and eplb_interval is "
                        "0", o->eplb_groups);
    if (o->expert_bytes > 0 && o->read_expert_bytes > 0) /* (one source per run: --eplb-from) */
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: expert_bytes = %lld (copied between ranks) and read_expert_bytes "
                        "= %lld (read from the checkpoint): a run takes gained experts one way, give one",
                        (long long)o->expert_bytes, (long long)o->read_expert_bytes);
    EPM_CHECK(epm_placement_validate(p, 0));
    epm_pass_plan pp;
    EPM_CHECK(epm_pass_plan_make(t, p, o, &pp));

    const int L = p->layers, R = p->ranks, K = epm_trace_k(t);
    const int64_t T = epm_trace_tokens(t);
    const epm_cluster *c = &p->cluster;
    epm_status st = EPM_OK;
    epm_eval_result *r = epm_calloc(1, sizeof *r);
    int *where = NULL, *dst = NULL, *distinct = NULL;
    int64_t *split = NULL, *pass_load = NULL;
    uint32_t *stamp = NULL;
    int64_t *pair = NULL;
    if (!r) {
        epm_pass_plan_clear(&pp);
        return EPM_ERR_NOMEM;
    }
    size_t lr = (size_t)L * (size_t)R;
    r->layers = L;
    r->ranks = R;
    r->mode = o->mode;
    r->layer = epm_calloc((size_t)L, sizeof *r->layer);
    r->rank_load = epm_calloc(lr, sizeof *r->rank_load);
    r->send_bytes = epm_calloc(lr, sizeof *r->send_bytes);
    r->recv_bytes = epm_calloc(lr, sizeof *r->recv_bytes);
    r->layer_wire = epm_calloc((size_t)L * EPM_LINK_COUNT, sizeof *r->layer_wire);
    where = epm_malloc((size_t)(T ? T : 1) * sizeof *where);
    dst = epm_malloc((size_t)K * sizeof *dst);
    distinct = epm_malloc((size_t)K * 3 * sizeof *distinct); /* (and acc's dd, gw) */
    /* one pass's two phases: bytes [2][4][R], then messages [2][4][R]; and its ranks' loads */
    split = epm_calloc((size_t)R * 16, sizeof *split);
    stamp = R <= MSG_RANKS_MAX ? epm_calloc((size_t)HOPS * (size_t)R * (size_t)R, sizeof *stamp) : NULL;
    const int latent = o->intra_latency_s > 0 || o->inter_latency_s > 0; /* (validated below: R within the limit) */
    pair = latent && stamp ? epm_calloc((size_t)HOPS * (size_t)R * (size_t)R, sizeof *pair) : NULL;
    pass_load = epm_calloc((size_t)R, sizeof *pass_load);
    if (!r->layer || !r->rank_load || !r->send_bytes || !r->recv_bytes || !r->layer_wire || !where || !dst ||
        !distinct || !split || (R <= MSG_RANKS_MAX && !stamp) || (latent && stamp && !pair) || !pass_load) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    for (int64_t i = 0; i < T; i++)
        where[i] = (int)(epm_trace_seq_of(t, i) % R);

    acc a = {r,     c, 0, R, o->hierarchical && c->nodes > 1, c->gpus_per_node, distinct + K, distinct + 2 * K,
             {split, split + 8 * (size_t)R, R}, {split + 4 * (size_t)R, split + 12 * (size_t)R, R}, stamp, 1,
             pair, (int64_t)epm_ride_max(R), o->mode == EPM_MODE_FOLLOW};
    const double lat[2] = {o->intra_latency_s, o->inter_latency_s};
    r->msgs_counted = stamp != NULL;
    const double spf = o->flops_per_assignment / (c->gpu_tflops * 1e12); /* modelled seconds a (token, expert) */
    /* A segment is the passes a placement ran (the whole trace without
     * rebalancing): its tokens through every layer, then the next's. A
     * token's counts never depend on another's, so the sums are those of
     * the layer-by-layer order a run takes. */
    for (;;) {
        const epm_placement *pl;
        int64_t begin, end;
        int more;
        EPM_CHECK_GOTO(epm_pass_plan_next(&pp, &pl, &begin, &end, &more), st, fail);
        if (!more)
            break;
        double seg_s = 0; /* (the segment's layers' modelled seconds: what a lagging placement overlaps) */
        for (int l = 0; l < L; l++)
            seg_s -= r->layer[l].t_compute + r->layer[l].t_comm;
        for (int l = 0; l < L; l++) {
            a.l = l;
            const int32_t *ids = epm_trace_ids_const(t, l);
            epm_eval_layer *ly = &r->layer[l];
            int64_t *load = r->rank_load + (size_t)l * (size_t)R;
            for (int64_t s = begin; s < end; s++) {
                const int64_t i = pp.order[s].token;
                if (s > begin && pp.order[s].pass != pp.order[s - 1].pass)
                    close_pass(&a, pass_load, spf, ly, lat);
                const int32_t *row = ids + (size_t)i * (size_t)K;
                if (row[0] < 0)
                    continue; /* skipped: stays, sends nothing */
                int src = where[i];
                epm_route_pick(pl, l, row, K, src, (uint64_t)i, dst);
                int nd = 0;
                for (int j = 0; j < K; j++) {
                    if (dst[j] < 0)
                        continue;
                    load[dst[j]]++;
                    pass_load[dst[j]]++;
                    int seen = 0;
                    for (int q = 0; q < nd; q++)
                        seen |= distinct[q] == dst[j];
                    if (!seen)
                        distinct[nd++] = dst[j];
                }
                /* (the nodes it reaches: its ranks' by number, K small) */
                int nn = 0, remote = 0;
                for (int q = 0; q < nd; q++) {
                    const int node = epm_cluster_node_of(c, distinct[q]);
                    int seen = 0;
                    for (int u = 0; u < q && !seen; u++)
                        seen = epm_cluster_node_of(c, distinct[u]) == node;
                    nn += !seen;
                    remote += !seen && node != epm_cluster_node_of(c, src);
                }
                if (nd > 0) {
                    r->routed++;
                    r->nodes_reached += nn;
                    r->node_dispatches += remote;
                    r->max_nodes_reached = nn > r->max_nodes_reached ? nn : r->max_nodes_reached;
                }
                int comb = o->mode == EPM_MODE_FOLLOW ? dst[0] : src;
                const int64_t db = o->dispatch_bytes ? o->dispatch_bytes : o->hidden_bytes;
                for (int q = 0; q < nd; q++) {
                    move(&a, src, distinct[q], db, HOP_D0);
                    move(&a, distinct[q], comb, o->hidden_bytes, HOP_C0);
                }
                if (a.hier) {
                    hier_dispatch(&a, src, distinct, nd, (uint64_t)i, db);
                    for (int q = 0; q < nd; q++)
                        if (distinct[q] != comb)
                            hier_single(&a, &a.a2a, HOP_C0, l, distinct[q], comb, o->hidden_bytes);
                }
                if (o->mode == EPM_MODE_FOLLOW) {
                    /* the new K/V row of this token, computed where its attention ran */
                    for (int q = 0; q < R; q++)
                        move(&a, src, q, o->kv_row_bytes, HOP_KV);
                    where[i] = comb;
                }
            }
            close_pass(&a, pass_load, spf, ly, lat); /* (a segment ends with a whole pass) */
        }
        for (int l = 0; l < L; l++)
            seg_s += r->layer[l].t_compute + r->layer[l].t_comm;
        epm_pass_plan_ran(&pp, begin, seg_s);
    }
    for (int l = 0; l < L; l++) {
        epm_eval_layer *ly = &r->layer[l];
        const int64_t *load = r->rank_load + (size_t)l * (size_t)R;
        for (int q = 0; q < R; q++) {
            ly->sum_load += load[q];
            ly->max_load = load[q] > ly->max_load ? load[q] : ly->max_load;
            int64_t s = r->send_bytes[(size_t)l * (size_t)R + (size_t)q];
            int64_t v = r->recv_bytes[(size_t)l * (size_t)R + (size_t)q];
            ly->max_send_bytes = s > ly->max_send_bytes ? s : ly->max_send_bytes;
            ly->max_recv_bytes = v > ly->max_recv_bytes ? v : ly->max_recv_bytes;
        }
        r->t_total += ly->t_comm + ly->t_compute;
        if (ly->sum_load > 0)
            r->max_over_mean_load += (double)ly->max_load * R / (double)ly->sum_load;
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            r->total_bytes[k] += ly->bytes[k] + ly->kv_bytes[k];
    }
    r->max_over_mean_load /= L;
    if (o->mode == EPM_MODE_FOLLOW) { /* each pass's tokens return home after its last layer */
        for (int64_t s = 0; s < T; s++) {
            const int64_t i = pp.order[s].token;
            if (s > 0 && pp.order[s].pass != pp.order[s - 1].pass) {
                counts_msgs(&a, &a.a2a, a.hier ? 2 : 1);
                r->t_total += phase_seconds(&a.a2a, c, lat);
                phase_clear(&a.a2a);
                a.epoch++;
            }
            int home = (int)(epm_trace_seq_of(t, i) % R);
            if (where[i] != home) {
                r->gather_bytes[epm_cluster_link(c, where[i], home)] += o->hidden_bytes;
                if (a.hier)
                    hier_single(&a, &a.a2a, HOP_G0, -1, where[i], home, o->hidden_bytes);
                else
                    wire(&a, &a.a2a, HOP_G0, -1, where[i], home, o->hidden_bytes);
            }
        }
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            r->total_bytes[k] += r->gather_bytes[k];
        counts_msgs(&a, &a.a2a, a.hier ? 2 : 1);
        r->t_total += phase_seconds(&a.a2a, c, lat);
    }
    r->kv_cache_factor = o->mode == EPM_MODE_FOLLOW ? (double)R : 1.0;
    r->rebalances = pp.taken;
    r->moved = pp.moved;
    memcpy(r->move_bytes, pp.move_bytes, sizeof r->move_bytes);
    r->t_moves = pp.t_moves;
    r->read_bytes = pp.read_bytes;
    r->t_reads = pp.t_reads;
    r->t_total += pp.t_moves + pp.t_reads;
    if ((r->last = epm_pass_plan_take_last(&pp)) != NULL) {
        epm_placement_info info = *epm_placement_get_info(r->last);
        info.mode = o->mode;
        epm_placement_set_info(r->last, &info);
    }
    epm_pass_plan_clear(&pp);
    epm_free(pass_load);
    epm_free(where);
    epm_free(dst);
    epm_free(distinct);
    epm_free(split);
    epm_free(stamp);
    epm_free(pair);
    *out = r;
    return EPM_OK;
fail:
    epm_pass_plan_clear(&pp);
    epm_free(pass_load);
    epm_free(where);
    epm_free(dst);
    epm_free(distinct);
    epm_free(split);
    epm_free(stamp);
    epm_free(pair);
    epm_eval_result_destroy(r);
    return st;
}
