/* The cost model of include/epmoe/eval.h: what `plan eval` predicts and what
 * `epmoe run` must count, transfer for transfer. Kept deliberately literal —
 * one pass over tokens, layer by layer, in the order the runtime moves them. */
#include <math.h>
#include <string.h>

#include "placement_internal.h"
#include "epmoe/eval.h"
#include "epmoe/trace.h"

void epm_eval_opts_init(epm_eval_opts *o)
{
    o->mode = EPM_MODE_HOME;
    o->hidden_bytes = 4096 * 2;
    o->kv_row_bytes = 8 * 128 * 2 * 2;
    o->flops_per_assignment = 6.0 * 4096.0 * 14336.0;
}

void epm_eval_result_destroy(epm_eval_result *r)
{
    if (!r)
        return;
    epm_free(r->layer);
    epm_free(r->rank_load);
    epm_free(r->send_bytes);
    epm_free(r->recv_bytes);
    epm_free(r);
}

typedef struct {
    epm_eval_result *r;
    const epm_cluster *c;
    int l, R;
} acc;

static void move(acc *a, int from, int to, int64_t bytes, int kv)
{
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
    a->r->send_bytes[(size_t)a->l * (size_t)a->R + (size_t)from] += bytes;
    a->r->recv_bytes[(size_t)a->l * (size_t)a->R + (size_t)to] += bytes;
}

static double rank_seconds(const epm_cluster *c, int64_t intra, int64_t inter)
{
    return (double)intra / (c->intra_gbps * 1e9) + (double)inter / (c->inter_gbps * 1e9);
}

/* Modelled communication time of a layer: the all-to-all ends when its
 * busiest rank has sent and received its bytes (MoETuner's max-pair idea at
 * rank granularity). Per rank, send and receive overlap (full duplex). */
static double layer_comm_seconds(const epm_cluster *c, int R, const int64_t *snd_intra, const int64_t *snd_inter,
                                 const int64_t *rcv_intra, const int64_t *rcv_inter)
{
    double worst = 0;
    for (int r = 0; r < R; r++) {
        double s = rank_seconds(c, snd_intra[r], snd_inter[r]);
        double v = rank_seconds(c, rcv_intra[r], rcv_inter[r]);
        double t = s > v ? s : v;
        worst = t > worst ? t : worst;
    }
    return worst;
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
    if (o->hidden_bytes < 0 || o->kv_row_bytes < 0 || !(o->flops_per_assignment >= 0))
        return epm_fail(EPM_ERR_INVALID_ARG, "eval: hidden_bytes, kv_row_bytes and flops must be >= 0");
    EPM_CHECK(epm_placement_validate(p, 0));

    const int L = p->layers, R = p->ranks, K = epm_trace_k(t);
    const int64_t T = epm_trace_tokens(t);
    const epm_cluster *c = &p->cluster;
    epm_status st = EPM_OK;
    epm_eval_result *r = epm_calloc(1, sizeof *r);
    int *where = NULL, *dst = NULL, *distinct = NULL;
    int64_t *split = NULL;
    if (!r)
        return EPM_ERR_NOMEM;
    size_t lr = (size_t)L * (size_t)R;
    r->layers = L;
    r->ranks = R;
    r->mode = o->mode;
    r->layer = epm_calloc((size_t)L, sizeof *r->layer);
    r->rank_load = epm_calloc(lr, sizeof *r->rank_load);
    r->send_bytes = epm_calloc(lr, sizeof *r->send_bytes);
    r->recv_bytes = epm_calloc(lr, sizeof *r->recv_bytes);
    where = epm_malloc((size_t)(T ? T : 1) * sizeof *where);
    dst = epm_malloc((size_t)K * sizeof *dst);
    distinct = epm_malloc((size_t)K * sizeof *distinct);
    /* [4][R]: bytes sent intra, sent inter, received intra, received inter */
    split = epm_calloc((size_t)R * 4, sizeof *split);
    if (!r->layer || !r->rank_load || !r->send_bytes || !r->recv_bytes || !where || !dst || !distinct || !split) {
        st = EPM_ERR_NOMEM;
        goto fail;
    }
    for (int64_t i = 0; i < T; i++)
        where[i] = (int)(epm_trace_seq_of(t, i) % R);

    acc a = {r, c, 0, R};
    const double flops = c->gpu_tflops * 1e12;
    for (int l = 0; l < L; l++) {
        a.l = l;
        const int32_t *ids = epm_trace_ids_const(t, l);
        epm_eval_layer *ly = &r->layer[l];
        int64_t *load = r->rank_load + (size_t)l * (size_t)R;
        memset(split, 0, (size_t)R * 4 * sizeof *split);
        for (int64_t i = 0; i < T; i++) {
            const int32_t *row = ids + (size_t)i * (size_t)K;
            if (row[0] < 0)
                continue; /* skipped: stays, sends nothing */
            int src = where[i];
            epm_route_pick(p, l, row, K, src, (uint64_t)i, dst);
            int nd = 0;
            for (int j = 0; j < K; j++) {
                if (dst[j] < 0)
                    continue;
                load[dst[j]]++;
                int seen = 0;
                for (int q = 0; q < nd; q++)
                    seen |= distinct[q] == dst[j];
                if (!seen)
                    distinct[nd++] = dst[j];
            }
            int comb = o->mode == EPM_MODE_FOLLOW ? dst[0] : src;
            for (int q = 0; q < nd; q++) {
                int d = distinct[q];
                int64_t hb = o->hidden_bytes;
                if (d != src) {
                    move(&a, src, d, hb, 0);
                    int cls = epm_cluster_link(c, src, d) == EPM_LINK_INTER;
                    split[(size_t)cls * R + (size_t)src] += hb;
                    split[(size_t)(2 + cls) * R + (size_t)d] += hb;
                }
                if (d != comb) {
                    move(&a, d, comb, hb, 0);
                    int cls = epm_cluster_link(c, d, comb) == EPM_LINK_INTER;
                    split[(size_t)cls * R + (size_t)d] += hb;
                    split[(size_t)(2 + cls) * R + (size_t)comb] += hb;
                }
            }
            if (o->mode == EPM_MODE_FOLLOW) {
                /* the new K/V row of this token, computed where its attention ran */
                for (int q = 0; q < R; q++)
                    move(&a, src, q, o->kv_row_bytes, 1);
                where[i] = comb;
            }
        }
        for (int q = 0; q < R; q++) {
            ly->sum_load += load[q];
            ly->max_load = load[q] > ly->max_load ? load[q] : ly->max_load;
            int64_t s = r->send_bytes[(size_t)l * (size_t)R + (size_t)q];
            int64_t v = r->recv_bytes[(size_t)l * (size_t)R + (size_t)q];
            ly->max_send_bytes = s > ly->max_send_bytes ? s : ly->max_send_bytes;
            ly->max_recv_bytes = v > ly->max_recv_bytes ? v : ly->max_recv_bytes;
        }
        /* all-to-all time from dispatch + combine only; the K/V all-gather is
         * added below as its own phase */
        ly->t_comm = layer_comm_seconds(c, R, split, split + R, split + 2 * R, split + 3 * R);
        if (o->mode == EPM_MODE_FOLLOW && R > 1) {
            /* all-gather: every rank sends its rows to R-1 others; the
             * slowest rank sends its share over both link classes */
            double per_rank_intra = (double)ly->kv_bytes[EPM_LINK_INTRA] / R;
            double per_rank_inter = (double)ly->kv_bytes[EPM_LINK_INTER] / R;
            ly->t_comm += per_rank_intra / (c->intra_gbps * 1e9) + per_rank_inter / (c->inter_gbps * 1e9);
        }
        ly->t_compute = (double)ly->max_load * o->flops_per_assignment / flops;
        r->t_total += ly->t_comm + ly->t_compute;
        if (ly->sum_load > 0)
            r->max_over_mean_load += (double)ly->max_load * R / (double)ly->sum_load;
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            r->total_bytes[k] += ly->bytes[k] + ly->kv_bytes[k];
    }
    r->max_over_mean_load /= L;
    if (o->mode == EPM_MODE_FOLLOW) {
        for (int64_t i = 0; i < T; i++) {
            int home = (int)(epm_trace_seq_of(t, i) % R);
            if (where[i] != home)
                r->gather_bytes[epm_cluster_link(c, where[i], home)] += o->hidden_bytes;
        }
        for (int k = 0; k < EPM_LINK_COUNT; k++)
            r->total_bytes[k] += r->gather_bytes[k];
        r->t_total += rank_seconds(c, r->gather_bytes[EPM_LINK_INTRA], r->gather_bytes[EPM_LINK_INTER]) / R;
    }
    r->kv_cache_factor = o->mode == EPM_MODE_FOLLOW ? (double)R : 1.0;
    epm_free(where);
    epm_free(dst);
    epm_free(distinct);
    epm_free(split);
    *out = r;
    return EPM_OK;
fail:
    epm_free(where);
    epm_free(dst);
    epm_free(distinct);
    epm_free(split);
    epm_eval_result_destroy(r);
    return st;
}
