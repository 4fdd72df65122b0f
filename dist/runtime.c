/* The layer loop of `epmoe run`: data-parallel attention, expert-parallel
 * MoE, in mode home or follow. Token rows carry their global index g so that
 * any rank knows a token's sequence and position without asking. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_gemm_nt.h"
#include "cpu_omp.h"
#include "epm_config.h"
#include "half.h"
#include "epmoe/plan.h"
#include "ops_cuda_host.h"
#include "rebalance.h"
#include "ops_gpu.h"
#include "model_internal.h"
#include "cpu_threads.h"
#include "runtime_internal.h"

static int home_of(const rt *r, int64_t g) { return seq_of(r, g) % r->R; }

epm_status epm_rt_sync(rt *r, epm_status st)
{
    /* after an agreed failure every rank is on its way out: one more
     * collective would pair with nothing on a rank that failed alone */
    if (epm_xcomm_failed(r->x))
        return st != EPM_OK ? st : EPM_ERR_INTERNAL;
    if (st == EPM_OK && r->cuda)
        st = epm_ops_cuda_error(); /* the GPU ops return void: their first failure waits here */
    return epm_xcomm_agree(r->x, st);
}

epm_status epm_rt_ready(rt *r, epm_status st)
{
    /* (success is agreed by the exchange that follows; anything else as epm_rt_sync agrees it) */
    if (st == EPM_OK && r->cuda && !epm_xcomm_failed(r->x))
        st = epm_ops_cuda_error();
    return st == EPM_OK && !epm_xcomm_failed(r->x) ? EPM_OK : epm_rt_sync(r, st);
}

static epm_status sync(rt *r, epm_status st) { return epm_rt_sync(r, st); }

/* ---- dense layers over weights as held ---- */

epm_status epm_rt_lin(rt *r, const float *x, int64_t n, int in, epm_weight w, const float *b, int out, float *y)
{
    if (w.dtype == EPM_DTYPE_BF16)
        return r->ops->linear_w16(x, n, in, w.data, b, out, y);
    if (w.dtype == EPM_DTYPE_F8_E4M3) {
        const epm_w8 w8 = {w.data, w.scale, w.block[0], w.block[1]};
        return r->ops->linear_w8(x, n, in, &w8, b, out, y);
    }
    r->ops->linear(x, n, in, w.data, b, out, y);
    return EPM_OK;
}

typedef struct {
    int64_t g, at;
} g_at;

static int by_g(const void *a, const void *b)
{
    int64_t x = ((const g_at *)a)->g, y = ((const g_at *)b)->g;
    return (x > y) - (x < y);
}

/* One forward pass over the tokens this rank starts with (at their home).
 * On return (g, h) are the same tokens, back home, after the final norm. */
static epm_status forward(rt *r, int64_t *pn, int64_t **pg, float **ph)
{
    const epm_model_config *c = r->c;
    epm_status st = EPM_OK;
    const char *stall = getenv("EPM_TEST_STALL_RANK");
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++) {
        if (stall && atoi(stall) == r->me && l == 1) {
            /* test hook: this rank stalls, the others must give up at --timeout */
            const char *secs = getenv("EPM_TEST_STALL_SECONDS");
            struct timespec ts = {secs ? atoi(secs) : 60, 0};
            nanosleep(&ts, NULL);
        }
        /* No agreement between the steps: every collective of a layer has
         * one just before it (epm_rt_sync), or is an exchange whose counts
         * phase is one (epm_rt_ready), and those agreements are
         * interchangeable, so a rank that fails here meets the others at
         * the next one they reach (its caller's, after the loop) and every
         * rank learns the failure there. A layer used to end each step
         * with one: three more per layer, most of a decode step's time;
         * then each exchange had its own before its counts: two more. */
        int all = 1;
        st = epm_mod_select(r, l, *pn, *pg, *ph, &all);
        if (st == EPM_OK && all) {
            st = epm_rt_attention(r, l, *pn, *pg, *ph);
            if (st == EPM_OK)
                st = epm_rt_moe_block(r, l, pn, pg, ph);
        } else if (st == EPM_OK) {
            st = epm_rt_skip_block(r, l, pn, pg, ph);
        }
    }
    if (st != EPM_OK)
        return st;
    if (r->o->mode == EPM_MODE_FOLLOW) {
        /* tokens return to their home rank for the logits */
        int H = c->hidden_size, P = epm_wire_floats(r, H), W = 2 + P;
        int64_t n = *pn, nr = 0;
        float *rows = epm_malloc((size_t)(n ? n : 1) * W * sizeof *rows), *recv = NULL;
        int *dest = epm_malloc((size_t)(n ? n : 1) * sizeof *dest), *src = NULL;
        if (!rows || !dest) {
            epm_free(rows);
            epm_free(dest);
            return sync(r, EPM_ERR_NOMEM);
        }
        for (int64_t i = 0; i < n; i++) {
            put_g(rows + i * W, (*pg)[i]);
            epm_wire_put(r, rows + i * W + 2, H, *ph + i * H);
            dest[i] = home_of(r, (*pg)[i]);
        }
        int64_t sent[EPM_LINK_COUNT] = {0};
        st = epm_rt_ready(r, EPM_OK);
        if (st == EPM_OK)
            st = epm_xcomm_exchange(r->x, n, dest, rows, W, P, sent, &recv, &src, &nr);
        if (st == EPM_OK)
            epm_wire_count(P, epm_wire_bytes(r, H), sent, r->gather_local);
        epm_free(rows);
        epm_free(dest);
        if (st != EPM_OK)
            return st;
        /* residents in ascending g: the order of home mode */
        int64_t *ng = epm_malloc((size_t)(nr ? nr : 1) * sizeof *ng);
        float *nh = epm_malloc((size_t)(nr ? nr : 1) * H * sizeof *nh);
        g_at *ord = epm_malloc((size_t)(nr ? nr : 1) * sizeof *ord);
        if (ng && nh && ord) {
            for (int64_t i = 0; i < nr; i++)
                ord[i] = (g_at){get_g(recv + i * W), i};
            qsort(ord, (size_t)nr, sizeof *ord, by_g);
            for (int64_t i = 0; i < nr; i++) {
                ng[i] = ord[i].g;
                epm_wire_get(r, recv + ord[i].at * W + 2, H, nh + i * H);
            }
        }
        epm_free(recv);
        epm_free(src);
        if (!ng || !nh || !ord) {
            epm_free(ord);
            epm_free(ng);
            epm_free(nh);
            return EPM_ERR_NOMEM;
        }
        epm_free(ord);
        epm_free(*pg);
        epm_free(*ph);
        *pg = ng;
        *ph = nh;
        *pn = nr;
    }
    r->ref->rmsnorm(*ph, *pn, c->hidden_size, r->dense->final_norm, c->rms_norm_eps, *ph);
    return EPM_OK;
}

/* logits of the resident (home) tokens; rows [n][vocab] */
static epm_status logits(rt *r, int64_t n, const float *h, float **out)
{
    const epm_model_config *c = r->c;
    float *lg = epm_malloc((size_t)(n ? n : 1) * c->vocab_size * sizeof *lg);
    if (!lg)
        return EPM_ERR_NOMEM;
    epm_status st = epm_rt_lin(r, h, n, c->hidden_size, r->dense->lm_head, NULL, c->vocab_size, lg);
    if (st != EPM_OK) {
        epm_free(lg);
        return st;
    }
    *out = lg;
    return EPM_OK;
}

static epm_status embed(rt *r, int64_t n, const int64_t *g, const int32_t *tok, float *h)
{
    const epm_model_config *c = r->c;
    for (int64_t i = 0; i < n; i++) {
        if (tok[i] < 0 || tok[i] >= c->vocab_size)
            return epm_fail(EPM_ERR_INVALID_ARG, "token id %d of sequence %d position %d is outside [0, %d)", tok[i],
                            seq_of(r, g[i]), pos_of(r, g[i]), c->vocab_size);
        int64_t at = (int64_t)tok[i] * c->hidden_size;
        if (r->dense->embed.dtype == EPM_DTYPE_BF16)
            for (int j = 0; j < c->hidden_size; j++)
                h[i * c->hidden_size + j] = epm_bf16_to_f32(((const uint16_t *)r->dense->embed.data)[at + j]);
        else
            memcpy(h + i * c->hidden_size, (const float *)r->dense->embed.data + at,
                   (size_t)c->hidden_size * sizeof *h);
    }
    return EPM_OK;
}

/* Sequence s's K/V caches on this rank (home keeps its own sequences',
 * follow every sequence's; MLA's latent: one row per token in kc, no vc):
 * taken when it is admitted, given back when it ends, so that with
 * max_num_seqs the caches held are those of the sequences decoding. */
static epm_status kv_acquire(rt *r, int s)
{
    if (r->o->mode == EPM_MODE_HOME && s % r->R != r->me)
        return EPM_OK;
    const size_t cache_bytes = epm_kv_cache_bytes(r, kv_rows(r, s));
    for (int l = 0; l < r->c->num_layers; l++) {
        size_t i = (size_t)l * r->B + s;
        r->kc[i] = epm_calloc(cache_bytes, 1);
        if (!r->latent)
            r->vc[i] = epm_calloc(cache_bytes, 1);
        if (!r->kc[i] || (!r->latent && !r->vc[i]))
            return EPM_ERR_NOMEM;
        r->kv_cache_bytes += (int64_t)cache_bytes * (r->latent ? 1 : 2);
    }
    r->kv_cache_peak = r->kv_cache_bytes > r->kv_cache_peak ? r->kv_cache_bytes : r->kv_cache_peak;
    r->kv_positions += kv_rows(r, s);
    r->kv_positions_peak = r->kv_positions > r->kv_positions_peak ? r->kv_positions : r->kv_positions_peak;
    return EPM_OK;
}

/* the rows sequence s's caches have room for here: its own, or once ended
 * and kept for prefix caching, those it fed */
static int64_t kv_held(const rt *r, int s) { return r->kv_kept && r->kv_kept[s] ? r->kv_kept[s] : kv_rows(r, s); }

/* Prefix caching: sequence s starts with n positions' K/V rows, as every rank counts them */
static void kv_prefix_rows(rt *r, int s, int n)
{
    r->cached[s] = n;
    r->cached_tokens += n;
    for (int l = 0; l < r->c->num_layers; l++) /* (runtime_mod.c's count) */
        r->kv_n[(size_t)l * r->B + s] = n;
}

/* Prefix caching: sequence s's first n positions' K/V rows copied from its
 * donor's, on the ranks that hold both (the donor's home is s's, or every
 * rank holds every cache). */
static void kv_copy_prefix(rt *r, int s, int donor, int n)
{
    kv_prefix_rows(r, s, n);
    if (r->o->mode == EPM_MODE_HOME && s % r->R != r->me)
        return;
    for (int l = 0; l < r->c->num_layers; l++) {
        const size_t i = (size_t)l * r->B + s, j = (size_t)l * r->B + donor;
        epm_kv_copy_rows(r, r->kc[i], kv_rows(r, s), r->kc[j], kv_held(r, donor), n);
        if (!r->latent)
            epm_kv_copy_rows(r, r->vc[i], kv_rows(r, s), r->vc[j], kv_held(r, donor), n);
    }
}

/* Sequence from's caches (had rows) made caches of rows rows, held as
 * sequence to's (from's are left empty; from == to: in place), on the
 * ranks that hold them, with the bytes and positions counted. Only a growth
 * can fail (NOMEM: the caches not yet moved stay from's). */
static epm_status kv_move(rt *r, int from, int to, int64_t had, int64_t rows)
{
    if (!r->kc[(size_t)from]) /* (home mode: another rank's sequence) */
        return EPM_OK;
    const int64_t delta = (int64_t)epm_kv_cache_bytes(r, rows) - (int64_t)epm_kv_cache_bytes(r, had);
    for (int l = 0; l < r->c->num_layers; l++)
        for (int v = 0; v < (r->latent ? 1 : 2); v++) {
            void **c = v ? r->vc : r->kc, *p = epm_kv_resize(r, c[(size_t)l * r->B + from], had, rows);
            if (!p)
                return EPM_ERR_NOMEM;
            c[(size_t)l * r->B + from] = NULL;
            c[(size_t)l * r->B + to] = p;
            r->kv_cache_bytes += delta;
        }
    r->kv_positions += rows - had;
    r->kv_cache_peak = r->kv_cache_bytes > r->kv_cache_peak ? r->kv_cache_bytes : r->kv_cache_peak;
    r->kv_positions_peak = r->kv_positions > r->kv_positions_peak ? r->kv_positions : r->kv_positions_peak;
    return EPM_OK;
}

/* Prefix caching: sequence s takes over the caches of the kept donor that
 * the scheduler drops to make room for it, grown to s's rows, the first n
 * its prefix (vLLM's blocks of an evicted prefix, reused where they lie). */
static epm_status kv_take(rt *r, int s, int donor, int n)
{
    kv_prefix_rows(r, s, n);
    const int64_t had = kv_held(r, donor);
    r->kv_kept[donor] = 0;
    return kv_move(r, donor, s, had, kv_rows(r, s));
}

static void kv_release(rt *r, int s)
{
    const int64_t rows = kv_held(r, s);
    const size_t cache_bytes = epm_kv_cache_bytes(r, rows);
    if (r->kc[(size_t)s]) /* held: layer 0's cache, as every layer's */
        r->kv_positions -= rows;
    if (r->kv_kept)
        r->kv_kept[s] = 0;
    for (int l = 0; l < r->c->num_layers; l++) {
        size_t i = (size_t)l * r->B + s;
        if (r->kc[i])
            r->kv_cache_bytes -= (int64_t)cache_bytes;
        if (r->vc[i])
            r->kv_cache_bytes -= (int64_t)cache_bytes;
        epm_free(r->kc[i]);
        epm_free(r->vc[i]);
        r->kc[i] = r->vc[i] = NULL;
    }
}

/* Sequence s ended: with prefix caching the scheduler may keep its fed
 * rows (prompt and outputs) to give prefixes until an admission needs the
 * room, its caches cut to those rows; else its caches are freed. */
static void kv_end(rt *r, int s)
{
    const int rows = epm_sched_end(r->sched, s);
    if (rows <= 0) { /* (-1: not held, nothing to free; never here) */
        if (rows == 0)
            kv_release(r, s);
        return;
    }
    r->kv_kept[s] = rows;
    (void)kv_move(r, s, s, kv_rows(r, s), rows); /* (a cut: cannot fail) */
}

static epm_status setup(rt *r, const epm_run_opts *o, int batch, const int *lens)
{
    epm_status st = epm_model_open(o->model_dir, &r->m);
    /* every rank opens the same files; a failure anywhere stops everyone */
    EPM_CHECK(sync(r, st));
    r->c = epm_model_get_config(r->m);
    const epm_model_config *c = r->c;
    r->latent = c->mla && !o->mla_expanded;
    r->kvt = o->kv_fp8 ? EPM_KV_FP8 : o->kv_bf16 ? EPM_KV_BF16 : EPM_KV_F32;
    r->wire8 = o->wire_fp8 != 0;
    r->wire16 = o->wire_bf16 || r->wire8; /* fp8's combine is bf16 */
    if (o->wire_bf16 && o->wire_fp8)
        return sync(r, epm_fail(EPM_ERR_INVALID_ARG, "the wire's dtype is bf16 or fp8, not both"));
    /* follow mode's rows carry the residual streams, which fp8 would round
     * to 3 mantissa bits for good: DeepEP's fp8 dispatch is for home mode */
    if (r->wire8 && o->mode == EPM_MODE_FOLLOW)
        return sync(r, epm_fail(EPM_ERR_UNSUPPORTED, "--wire-dtype fp8 is for home mode: in follow mode the rows "
                                "carry the residual streams, which e4m3 would round to 3 mantissa bits (use bf16)"));
    if (o->kv_bf16 && o->kv_fp8)
        return sync(r, epm_fail(EPM_ERR_INVALID_ARG, "the K/V cache's dtype is bf16 or fp8, not both"));
    if ((r->kvt == EPM_KV_BF16 && !r->ops->attention_w16) || (r->kvt == EPM_KV_FP8 && !r->ops->attention_w8))
        return sync(r, epm_fail(EPM_ERR_UNSUPPORTED, "--kv-dtype %s: the %s kernels have no attention over a "
                                "%s cache", kv_name(r), r->ops->name, kv_name(r)));
    r->B = batch;
    r->lens = lens;
    r->steps = o->max_new_tokens > 0 ? o->max_new_tokens - 1 : 0;
    r->offset = epm_malloc((size_t)batch * sizeof *r->offset);
    r->moe_index = epm_malloc((size_t)c->num_layers * sizeof *r->moe_index);
    if (!r->offset || !r->moe_index)
        return sync(r, EPM_ERR_NOMEM);
    r->softmax_scale = 1;
    if (c->yarn_factor > 0) {
        int dim = c->mla ? c->qk_rope_dim : c->head_dim;
        r->rope_inv = epm_malloc((size_t)(dim / 2) * sizeof *r->rope_inv);
        if (!r->rope_inv)
            return sync(r, EPM_ERR_NOMEM);
        epm_model_rope_freqs(c, dim, r->rope_inv, &r->rope_cs, &r->softmax_scale);
    }
    int maxlen = 0;
    for (int s = 0; s < batch; s++) {
        r->offset[s] = r->N;
        r->N += lens[s];
        maxlen = lens[s] > maxlen ? lens[s] : maxlen;
    }
    r->max_len = maxlen + r->steps + 1;
    EPM_CHECK(sync(r, epm_rt_prefill_check(r)));
    r->kv_w = r->latent ? epm_model_kv_floats(c, 0) : epm_model_kv_floats(c, 1) / 2;
    r->kv_grp = r->latent ? r->kv_w : c->head_dim;
    r->total = r->N + (int64_t)r->steps * batch;
    r->dec_base = r->N;
    r->fed = epm_calloc((size_t)batch, 1);
    r->dec_seq = epm_malloc((size_t)(r->steps ? r->steps : 1) * batch * sizeof *r->dec_seq);
    r->dec_pos = epm_malloc((size_t)(r->steps ? r->steps : 1) * batch * sizeof *r->dec_pos);
    r->pass_of = epm_malloc((size_t)(r->total ? r->total : 1) * sizeof *r->pass_of);
    if (!r->fed || !r->dec_seq || !r->dec_pos || !r->pass_of)
        return sync(r, EPM_ERR_NOMEM);
    for (int64_t g = 0; g < r->total; g++)
        r->pass_of[g] = -1; /* (none yet; never, for a prompt position prefix caching copied) */
    for (int l = 0; l < c->num_layers; l++)
        r->moe_index[l] = c->moe_layer[l] ? r->moe_layers++ : -1;
    if (r->moe_layers == 0)
        return sync(r, epm_fail(EPM_ERR_UNSUPPORTED, "%s/config.json: the model has no MoE layer; epmoe runs "
                                                     "mixture-of-experts models", o->model_dir));
    /* the placement must be for this model and this run's ranks */
    epm_cluster cl;
    epm_xcomm_cluster(r->x, &cl);
    st = EPM_OK;
    if (!o->placement) {
        st = epm_placement_create(r->moe_layers, c->num_experts, c->top_k, &cl, &r->owned_p);
        for (int l = 0; l < r->moe_layers && st == EPM_OK; l++)
            for (int e = 0; e < c->num_experts && st == EPM_OK; e++)
                st = epm_placement_add(r->owned_p, l, e, (int)((int64_t)e * r->R / c->num_experts));
        if (st == EPM_OK) {
            epm_placement_info info = {.quality = EPM_QUALITY_HEURISTIC, .objective = NAN, .bound = NAN, .gap = NAN};
            snprintf(info.method, sizeof info.method, "contiguous");
            epm_placement_set_info(r->owned_p, &info);
        }
        r->p = r->owned_p;
    } else {
        r->p = o->placement;
        const epm_cluster *pc = epm_placement_cluster(r->p);
        const char *pl = o->placement_label ? o->placement_label : "", *sep = o->placement_label ? ": " : "";
        if (epm_placement_ranks(r->p) != r->R)
            st = epm_fail(EPM_ERR_MISMATCH, "%s%sthe placement is for %d ranks (%d node%s x %d), this run has %d "
                          "ranks", pl, sep, epm_placement_ranks(r->p), pc->nodes, pc->nodes == 1 ? "" : "s",
                          pc->gpus_per_node, r->R);
        else if (pc->nodes != cl.nodes)
            st = epm_fail(EPM_ERR_MISMATCH, "%s%sthe placement is for %d node%s x %d ranks, this run has %d node%s x "
                          "%d (use --virtual-nodes or plan for this cluster)", pl, sep, pc->nodes,
                          pc->nodes == 1 ? "" : "s", pc->gpus_per_node, cl.nodes, cl.nodes == 1 ? "" : "s",
                          cl.gpus_per_node);
        else if (epm_placement_layers(r->p) != r->moe_layers || epm_placement_experts(r->p) != c->num_experts)
            st = epm_fail(EPM_ERR_MISMATCH, "%s%sthe placement has %d MoE layers x %d experts, the model %s %d x %d",
                          pl, sep, epm_placement_layers(r->p), epm_placement_experts(r->p), o->model_dir,
                          r->moe_layers, c->num_experts);
        else
            st = epm_placement_validate(r->p, 0);
    }
    int eplb_slots = o->eplb_slots;
    if (st == EPM_OK && o->eplb_interval != 0 && o->eplb_redundant_given)
        st = o->eplb_slots ? epm_fail(EPM_ERR_INVALID_ARG, "--eplb-slots %d and --redundant-experts %d: each sets the "
                                      "slots a rank holds; give one", o->eplb_slots, o->eplb_redundant)
                           : epm_redundant_slots(c->num_experts, r->R, o->eplb_redundant, "--redundant-experts",
                                                 &eplb_slots);
    if (st == EPM_OK && o->eplb_interval != 0) /* (plan eval's replay checks them alike) */
        st = epm_eplb_check(r->p, o->eplb_interval, o->eplb_window, eplb_slots, o->eplb_min_gain, o->eplb_lag,
                            o->eplb_redundant_given ? 2 : 0, &r->eplb_slots);
    if (st == EPM_OK && o->eplb_interval == 0 && o->eplb_lag != 0)
        st = epm_fail(EPM_ERR_INVALID_ARG, "--eplb-lag %d is online rebalancing's, and --eplb-interval is not given",
                      o->eplb_lag);
    if (st == EPM_OK && o->eplb_interval == 0 && (o->eplb_redundant_given || o->eplb_slots))
        st = epm_fail(EPM_ERR_INVALID_ARG, "%s is online rebalancing's, and --eplb-interval is not given",
                      o->eplb_slots ? "--eplb-slots" : "--redundant-experts");
    if (st == EPM_OK && o->eplb_interval == 0 && o->eplb_groups != 0)
        st = epm_fail(EPM_ERR_INVALID_ARG, "--expert-groups %d is online rebalancing's, and --eplb-interval is not "
                      "given", o->eplb_groups);
    /* (the model's groups are its config's, checked there) */
    r->eplb_groups = o->eplb_groups > 0 ? o->eplb_groups : c->n_group > 1 ? c->n_group : 0;
    if (st == EPM_OK && o->eplb_groups != 0)
        st = epm_expert_groups_check(o->eplb_groups, c->num_experts, "--expert-groups");
    if (st == EPM_OK && o->route_from) {
        const epm_trace *t = o->route_from;
        /* with stop tokens the run's length is known only as it goes: each step checks its own */
        int stops = !o->seq_sampling && o->n_stop > 0; /* seq_sampling replaces the run's stops */
        for (int s = 0; o->seq_sampling && s < batch; s++)
            stops |= o->seq_sampling[s].n_stop > 0;
        int64_t need = stops ? r->N : r->total;
        for (int s = 0; !stops && o->max_new_per_seq && s < batch; s++) /* sequences that end early */
            need -= r->steps + 1 - (o->max_new_per_seq[s] < r->steps + 1 ? o->max_new_per_seq[s] : r->steps + 1);
        if (epm_trace_layers(t) != r->moe_layers || epm_trace_tokens(t) < need || epm_trace_k(t) != c->top_k ||
            epm_trace_experts(t) > c->num_experts)
            st = epm_fail(EPM_ERR_MISMATCH,
                          "--route-from-trace: the trace has %d layers x %lld tokens x k=%d (experts < %d); this run "
                          "needs %d x %lld x k=%d (experts < %d)", epm_trace_layers(t), (long long)epm_trace_tokens(t),
                          epm_trace_k(t), epm_trace_experts(t), r->moe_layers, (long long)need, c->top_k, c->num_experts);
        /* a prompt position that the recording run copied from a cached prefix never ran there (pass -1,
         * rows of -1); a replay computes every prompt position, and its rows would skip every block as
         * MoD's skips do (epm_mod_select): neither is the recorded run */
        const int32_t *pid = st == EPM_OK ? epm_trace_pass_ids(t) : NULL;
        for (int64_t g = 0; pid && g < r->N && st == EPM_OK; g++)
            if (pid[g] < 0)
                st = epm_fail(EPM_ERR_MISMATCH, "--route-from-trace: the trace's token %lld, a prompt position of "
                              "sequence %d, never ran in the run that recorded it (pass_ids -1: copied from a cached "
                              "prefix, --enable-prefix-caching); a replay computes every prompt position: record the "
                              "trace without prefix caching", (long long)g, seq_of(r, g));
    }
    if (st == EPM_OK && c->sliding_window > 0 && c->sliding_window < r->max_len)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "%s/config.json: sliding_window = %d is shorter than this run's %d "
                      "positions; epmoe attends to the full context", o->model_dir, c->sliding_window, r->max_len);
    if (st == EPM_OK && c->top_k > 64) /* the exchange's per-token expert lists (rid) */
        st = epm_fail(EPM_ERR_UNSUPPORTED, "%s/config.json: num_experts_per_tok = %d; epmoe runs up to 64 experts per "
                      "token", o->model_dir, c->top_k);
    if (st == EPM_OK && c->head_dim > 512)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "%s/config.json: head_dim = %d; epmoe supports up to 512", o->model_dir,
                      c->head_dim);
    if (st == EPM_OK && o->ta_node_cap_on && !(o->ta_node_cap >= 0 && o->ta_node_cap <= 1))
        st = epm_fail(EPM_ERR_INVALID_ARG, "--ta-node-cap %g: must be in [0, 1]", o->ta_node_cap);
    if (st == EPM_OK && o->top_p > 0 && c->router_sigmoid)
        st = epm_fail(EPM_ERR_UNSUPPORTED, "--top-p %g: %s scores experts by sigmoid, not by a distribution whose mass "
                      "top-p could cut", o->top_p, epm_model_arch_class(c->arch));
    if (st == EPM_OK && (o->ta_strength < 0 || o->top_p < 0 || o->top_p > 1))
        st = epm_fail(EPM_ERR_INVALID_ARG, "ta_strength = %g must be >= 0 and top_p = %g in [0, 1]", o->ta_strength,
                      o->top_p);
    /* routed experts stay as stored where the kernels take them so: bf16
     * (half of float32's memory) or FP8 (half of bf16's), the same values */
    if (st == EPM_OK && r->ops->grouped_swiglu_w16 && !o->experts_f32) {
        epm_dtype held = EPM_DTYPE_F32;
        int fp8 = r->ops->grouped_swiglu_w8 && !o->experts_bf16;
        st = epm_model_set_expert_dtype(r->m, fp8 ? EPM_DTYPE_F8_E4M3 : EPM_DTYPE_BF16, &held);
        r->w16 = held == EPM_DTYPE_BF16;
        r->w8 = held == EPM_DTYPE_F8_E4M3;
    }
    /* the dense matrices too, where the kernels have a bf16 linear; an FP8
     * checkpoint's attention projections and shared and dense MLPs FP8 where
     * they have an FP8 one */
    if (st == EPM_OK && r->ops->linear_w16 && r->ops->grouped_swiglu_w16 && !o->dense_f32) {
        epm_dtype held = EPM_DTYPE_F32;
        int fp8 = r->ops->linear_w8 && r->ops->grouped_swiglu_w8 && !o->dense_bf16;
        st = epm_model_set_dense_dtype(r->m, fp8 ? EPM_DTYPE_F8_E4M3 : EPM_DTYPE_BF16, &held);
        r->d8 = held == EPM_DTYPE_F8_E4M3;
        r->d16 = held == EPM_DTYPE_BF16 || r->d8;
    }
    EPM_CHECK(sync(r, st));
    /* refuse before loading what will not fit */
    if (st == EPM_OK)
        st = epm_rt_memory_check(r);
    EPM_CHECK(sync(r, st));
    /* each rank reads the dense weights and only the experts placed on it */
    st = epm_model_load_dense(r->m, &r->dense);
    if (st == EPM_OK)
        st = epm_mla_setup(r);
    int *mine = epm_malloc((size_t)c->num_experts * sizeof *mine);
    if (st == EPM_OK && !mine)
        st = EPM_ERR_NOMEM;
    for (int l = 0; l < c->num_layers && st == EPM_OK; l++) {
        if (r->moe_index[l] < 0)
            continue;
        int n = 0;
        for (int e = 0; e < c->num_experts; e++)
            if (epm_placement_has(r->p, r->moe_index[l], e, r->me))
                mine[n++] = e;
        st = epm_model_load_experts(r->m, l, mine, n, NULL);
    }
    epm_free(mine);
    EPM_CHECK(sync(r, st));
    /* KV caches: each sequence's as it is admitted (kv_acquire) */
    r->kc = epm_calloc((size_t)c->num_layers * batch, sizeof *r->kc);
    r->vc = epm_calloc((size_t)c->num_layers * batch, sizeof *r->vc);
    st = r->kc && r->vc ? EPM_OK : EPM_ERR_NOMEM;
    if (st == EPM_OK)
        st = epm_mod_setup(r);
    r->bytes_local = epm_calloc((size_t)r->moe_layers * EPM_LINK_COUNT, sizeof(int64_t));
    r->kv_local = epm_calloc((size_t)r->moe_layers * EPM_LINK_COUNT, sizeof(int64_t));
    r->load_local = epm_calloc((size_t)r->moe_layers * r->R, sizeof(int64_t));
    if (o->eplb_interval > 0 && !(r->eplb_load = epm_calloc((size_t)r->moe_layers * c->num_experts, sizeof(int64_t))))
        st = EPM_ERR_NOMEM;
    if (!r->bytes_local || !r->kv_local || !r->load_local)
        st = EPM_ERR_NOMEM;
    return sync(r, st);
}

static void teardown(rt *r)
{
    if (r->cuda) /* its weight cache points into the model's tensors */
        epm_ops_cuda_close();
    epm_mla_teardown(r);
    for (size_t i = 0; r->c && i < (size_t)r->c->num_layers * r->B; i++) {
        if (r->kc)
            epm_free(r->kc[i]);
        if (r->vc)
            epm_free(r->vc[i]);
    }
    epm_free(r->kc);
    epm_free(r->vc);
    epm_free(r->ffn_scr);
    epm_free(r->offset);
    epm_free(r->moe_index);
    epm_free(r->rope_inv);
    epm_free(r->trace_rec);
    epm_free(r->fed);
    epm_free(r->dec_seq);
    epm_free(r->pass_of);
    epm_free(r->dec_pos);
    epm_free(r->adm);
    epm_free(r->places);
    epm_sched_destroy(r->sched);
    epm_free(r->reserve);
    epm_free(r->kv_kept);
    epm_free(r->outputs);
    epm_free(r->cached);
    epm_free(r->bytes_local);
    epm_free(r->kv_local);
    epm_free(r->load_local);
    epm_free(r->eplb_load);
    epm_eplb_teardown(r);
    epm_mod_teardown(r);
    epm_placement_destroy(r->owned_p);
    epm_model_close(r->m);
}

void epm_run_result_destroy(epm_run_result *res)
{
    if (!res)
        return;
    epm_free(res->lens);
    epm_free(res->generated);
    epm_free(res->gen_len);
    epm_free(res->stopped);
    epm_free(res->logprob);
    epm_free(res->top_ids);
    epm_free(res->top_lp);
    epm_free(res->logits);
    epm_free(res->prompt_lp);
    epm_free(res->prompt_top_ids);
    epm_free(res->prompt_top_lp);
    epm_free(res->t_arrive);
    epm_free(res->t_admit);
    epm_free(res->t_first);
    epm_free(res->t_done);
    epm_free(res->t_token);
    epm_trace_destroy(res->trace);
    epm_placement_destroy(res->placement);
    epm_free(res->report.bytes);
    epm_free(res->report.kv_bytes);
    epm_free(res->report.rank_load);
    epm_free(res->report.layer_tokens);
    epm_free(res);
}

/* Samplers, one per OpenMP thread (each holds a few MB of scratch at a large
 * vocabulary), no more than this rank has home sequences. */
typedef struct samplers {
    epm_sampler **s;
    int n;
} samplers;

static epm_status samplers_create(const epm_sampling *p, int vocab, int homes, samplers *out)
{
    int n = epm_omp_threads_for(homes, 2);
    n = n < homes ? n : homes;
    n = n < 1 ? 1 : n;
    out->s = epm_calloc((size_t)n, sizeof *out->s);
    out->n = 0;
    if (!out->s)
        return EPM_ERR_NOMEM;
    for (; out->n < n; out->n++)
        EPM_CHECK(epm_sampler_create(p, vocab, &out->s[out->n]));
    return EPM_OK;
}

static void samplers_destroy(samplers *ss)
{
    for (int i = 0; ss->s && i < ss->n; i++)
        epm_sampler_destroy(ss->s[i]);
    epm_free(ss->s);
}

/* A step's record of one sequence, as int64s that the ranks sum (only its
 * home rank's is not zero): the token, then with logprobs its logprob and
 * the top ids and their logprobs (floats as their bits). */
static int rec_width(const epm_run_opts *o) { return 1 + (o->logprobs_on ? 1 + 2 * o->top_logprobs : 0); }

static int64_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f(int64_t b)
{
    uint32_t u = (uint32_t)b;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The next token of rows[0, nrows) (rows of lg, sequence seqs[j]) into its
 * record rec[seq], at its generation step (its gen_len), over the threads. A failure's
 * message is the first failing row's (the error detail is per thread). */
static epm_status sample_rows(const epm_run_opts *o, const samplers *ss, const float *lg, int V, int nrows,
                              const int64_t *rows, const int *seqs, const int32_t *const *prompts, const int *lens,
                              const int32_t *gen, const int *gen_len, int maxnew, int64_t *rec)
{
    const int W = rec_width(o), top = o->top_logprobs;
    epm_status first = EPM_OK;
    int first_j = nrows;
    char why[512] = "";
    EPM_OMP("omp parallel for schedule(dynamic, 1) num_threads(ss->n) if (nrows > 1 && ss->n > 1)")
    for (int j = 0; j < nrows; j++) {
        int s = seqs[j], step = gen_len[s];
        int32_t t = 0;
        epm_sampler *smp = ss->s[epm_omp_me()];
        epm_status st = o->seq_sampling ? epm_sampler_set(smp, &o->seq_sampling[s]) : EPM_OK;
        if (st == EPM_OK)
            st = epm_sampler_next(smp, lg + rows[j] * V, prompts[s], lens[s], gen + (size_t)s * maxnew, step, s, step,
                                  &t);
        int64_t *w = rec + (size_t)s * W;
        w[0] = t;
        if (st == EPM_OK && o->logprobs_on) {
            float lp, tlp[EPM_MAX_LOGPROBS];
            int32_t tid[EPM_MAX_LOGPROBS];
            st = epm_logprobs(lg + rows[j] * V, V, t, top, &lp, tid, tlp);
            w[1] = f_bits(lp);
            for (int q = 0; q < top && st == EPM_OK; q++) {
                w[2 + q] = tid[q];
                w[2 + top + q] = f_bits(tlp[q]);
            }
        }
        if (st != EPM_OK) {
            EPM_OMP("omp critical(epm_sample_rows)")
            if (j < first_j) { /* the lowest row's, whichever thread gets here first */
                first = st, first_j = j;
                snprintf(why, sizeof why, "%s", epm_last_error());
            }
        }
    }
    return first == EPM_OK ? EPM_OK : epm_fail(first, "%s", why);
}

/* rank 0 assembles the routing trace from every rank's records */
static epm_status collect_trace(rt *r, epm_run_result *res)
{
    int K = r->c->top_k;
    void *all = NULL;
    int64_t nb = 0;
    const int W = 2 + K;
    EPM_CHECK(epm_xcomm_gather_bytes(r->x, r->trace_rec, r->n_rec * W * (int64_t)sizeof(int32_t), &all, &nb));
    if (r->me != 0)
        return EPM_OK;
    /* prefill and every decoded token (a prompt position prefix caching copied is never recorded: its
     * row stays -1, which plan eval skips, its pass -1, and every token keeps its index, which picks its
     * replica); the passes from the schedule, which every rank builds alike (a token that skips every MoE
     * layer leaves no record, and its pass still counts towards rebalancing) */
    const int64_t total = r->dec_base;
    epm_status st = epm_trace_create(r->moe_layers, total, K, r->c->num_experts, &res->trace);
    int32_t *seq = epm_malloc((size_t)(total ? total : 1) * sizeof *seq);
    if (st == EPM_OK && seq) {
        const int32_t *rec = all;
        int64_t nrec = nb / (int64_t)(W * sizeof(int32_t));
        for (int64_t i = 0; i < nrec; i++, rec += W)
            memcpy(epm_trace_ids(res->trace, rec[0]) + (int64_t)rec[1] * K, rec + 2, (size_t)K * sizeof *rec);
        for (int64_t gi = 0; gi < total; gi++)
            seq[gi] = gi < r->N ? seq_of(r, gi) : r->dec_seq[gi - r->N];
        st = epm_trace_set_seq_ids(res->trace, seq);
        if (st == EPM_OK)
            st = epm_trace_set_pass_ids(res->trace, r->pass_of);
    } else if (st == EPM_OK) {
        st = EPM_ERR_NOMEM;
    }
    epm_free(seq);
    epm_free(all);
    return st;
}

/* Prompt token g is its sequence's last: its logits give the first new token. */
static int prompt_last(const rt *r, int64_t g) { return pos_of(r, g) == r->lens[seq_of(r, g)] - 1; }

/* Where a pass's new tokens go: their records (one per sequence, summed
 * over ranks at the next decoding step), sampled on this rank's samplers
 * over rows srow of the logits, sequences sseq (scratch of homes entries). */
typedef struct {
    const samplers *smp;
    int64_t *srow;
    int *sseq;
    int homes, maxnew;
    int64_t *nt;
} pass_out;

/* (g, h) sized for a pass of n tokens (forward leaves them sized for the last one's). */
static epm_status pass_buffers(const rt *r, int64_t n, int64_t **g, float **h)
{
    epm_free(*g);
    epm_free(*h);
    *g = epm_malloc((size_t)(n ? n : 1) * sizeof **g);
    *h = epm_malloc((size_t)(n ? n : 1) * r->c->hidden_size * sizeof **h);
    return *g && *h ? EPM_OK : EPM_ERR_NOMEM;
}

/* A prompt logprob's record as it travels to rank 0: the g of the token
 * it scores, its logprob, the top ids (their bits) and logprobs. */
static int prompt_rec_width(const epm_run_opts *o) { return 3 + 2 * o->prompt_top_logprobs; }

/* The records of rows [0, n) of a pass's logits lg (tokens g, at home):
 * each row but a sequence's last scores the prompt's next token. */
static epm_status prompt_records(rt *r, const int32_t *const *prompts, const int64_t *g, int64_t n, const float *lg,
                                 float *rec, int64_t *nrec)
{
    const epm_run_opts *o = r->o;
    const int V = r->c->vocab_size, top = o->prompt_top_logprobs, PW = prompt_rec_width(o);
    int64_t *at = epm_malloc((size_t)(n ? n : 1) * sizeof *at), m = 0;
    if (!at)
        return EPM_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++)
        if (!prompt_last(r, g[i]))
            at[m++] = i;
    int bad = 0;
    EPM_OMP("omp parallel for schedule(static) reduction(|:bad) if (m > 64)")
    for (int64_t j = 0; j < m; j++) {
        const int64_t i = at[j];
        const int s = seq_of(r, g[i]), p = pos_of(r, g[i]);
        float *w = rec + (*nrec + j) * PW, tlp[EPM_MAX_LOGPROBS];
        int32_t tid[EPM_MAX_LOGPROBS];
        bad |= epm_logprobs(lg + i * V, V, prompts[s][p + 1], top, &w[2], tid, tlp) != EPM_OK;
        put_g(w, g[i] + 1);
        for (int q = 0; q < top; q++) {
            memcpy(&w[3 + q], &tid[q], sizeof tid[q]);
            w[3 + top + q] = tlp[q];
        }
    }
    *nrec += m;
    epm_free(at);
    return bad ? epm_fail(EPM_ERR_INTERNAL, "prompt logprobs: a row's log_softmax failed") : EPM_OK;
}

/* Rank 0 files every rank's records by the token they score. */
static epm_status prompt_gather(rt *r, const float *rec, int64_t nrec, epm_run_result *res)
{
    const int top = r->o->prompt_top_logprobs, PW = prompt_rec_width(r->o);
    void *all = NULL;
    int64_t nb = 0;
    EPM_CHECK(epm_xcomm_gather_bytes(r->x, rec, nrec * PW * (int64_t)sizeof *rec, &all, &nb));
    epm_status st = EPM_OK;
    if (r->me == 0 && !res->prompt_lp) { /* the first admission's */
        res->prompt_top = top;
        res->prompt_lp = epm_malloc((size_t)(r->N ? r->N : 1) * sizeof *res->prompt_lp);
        res->prompt_top_ids = epm_malloc((size_t)(r->N * top + 1) * sizeof *res->prompt_top_ids);
        res->prompt_top_lp = epm_malloc((size_t)(r->N * top + 1) * sizeof *res->prompt_top_lp);
        st = res->prompt_lp && res->prompt_top_ids && res->prompt_top_lp ? EPM_OK : EPM_ERR_NOMEM;
        for (int64_t t = 0; t < r->N && st == EPM_OK; t++) { /* each sequence's first token: none */
            res->prompt_lp[t] = NAN;
            for (int q = 0; q < top; q++)
                res->prompt_top_ids[t * top + q] = -1, res->prompt_top_lp[t * top + q] = NAN;
        }
    }
    if (r->me == 0 && st == EPM_OK) {
        const float *a = all;
        for (int64_t i = 0; i < nb / (int64_t)(PW * sizeof *a) && st == EPM_OK; i++, a += PW) {
            int64_t t = get_g(a);
            res->prompt_lp[t] = a[2];
            for (int q = 0; q < top; q++) {
                memcpy(&res->prompt_top_ids[t * top + q], &a[3 + q], sizeof(int32_t));
                res->prompt_top_lp[t * top + q] = a[3 + top + q];
            }
        }
    }
    epm_free(all);
    return st;
}

/* One pass of the schedule (scheduler.h): its prompt pieces (each rank's home
 * sequences', up to its chunk) and, mixed with them unless
 * separate_prefill, one decode token of every decoding sequence. Decode
 * tokens are numbered on from dec_base in the order of the pass (their
 * trace index). The LM head runs on the rows anyone reads; sequences whose
 * prompt ends here and every decoding one are sampled, their records summed
 * at the next pass. A pass with prompt tokens files its kept logits and
 * prompt logprobs on rank 0 (res->logits, res->prompt_lp). */
/* in: this rank's status from before the pass (its admissions'), not yet
 * agreed: it joins the pass's first agreement */
static epm_status run_pass(rt *r, const epm_sched_pass *sp, const int32_t *const *prompts, const pass_out *po,
                           int trace_of_run, epm_run_result *res, epm_status in)
{
    const epm_run_opts *o = r->o;
    const epm_model_config *c = r->c;
    const int V = c->vocab_size, H = c->hidden_size, maxnew = po->maxnew;
    epm_status st = in;
    /* the pass's windows: its prompt tokens' (the pieces' among them), then its decode tokens */
    int64_t g0 = r->N, gend = 0;
    r->chunk = (int)sp->index;
    r->nadm = sp->n_pre;
    for (int i = 0; i < sp->n_pre; i++) {
        const epm_sched_piece *pc = &sp->pre[i];
        const int64_t a = r->offset[pc->seq] + pc->from, b = r->offset[pc->seq] + pc->to;
        for (int64_t gi = a; gi < b; gi++)
            r->pass_of[gi] = r->chunk;
        g0 = a < g0 ? a : g0;
        gend = b > gend ? b : gend;
        r->adm[i] = pc->seq;
    }
    r->g0 = sp->n_pre ? g0 : 0;
    r->pf_n = sp->n_pre ? gend - g0 : 0;
    r->dg0 = r->dec_base;
    r->pn = r->pf_n + sp->n_dec;
    r->pass_n = sp->pre_tokens + sp->n_dec;
    r->prefill = sp->n_pre > 0;
    for (int i = 0; i < sp->n_dec; i++) {
        const int s = sp->dec[i];
        r->dec_seq[r->dec_base + i - r->N] = s;
        r->pass_of[r->dec_base + i] = r->chunk;
        r->dec_pos[r->dec_base + i - r->N] = r->lens[s] + res->gen_len[s] - 1; /* where its last token goes */
    }
    /* a replayed trace's decoded tokens must be this run's: a trace recorded
     * with other stop tokens (or none, or another --max-num-seqs) numbers them otherwise */
    const int64_t trace_len = o->route_from ? epm_trace_tokens(o->route_from) : INT64_MAX;
    const int32_t *tseq = trace_of_run ? epm_trace_seq_ids(o->route_from) : NULL;
    if (r->dec_base + sp->n_dec > trace_len)
        st = epm_fail(EPM_ERR_MISMATCH, "--route-from-trace: the trace ends at token %lld; pass %lld needs up to "
                      "token %lld", (long long)trace_len, (long long)sp->index + 1,
                      (long long)(r->dec_base + sp->n_dec));
    for (int i = 0; i < sp->n_dec && tseq && st == EPM_OK; i++)
        if (tseq[r->dec_base + i] != sp->dec[i])
            st = epm_fail(EPM_ERR_MISMATCH, "--route-from-trace: token %lld of the trace is sequence %d's, this "
                          "run's pass %lld has sequence %d's there: the trace was recorded with other stop tokens "
                          "(or --ignore-eos, or none), or another --max-num-seqs, --prefill-chunk, "
                          "--max-num-batched-tokens, --max-total-tokens, --separate-prefill, rank count or "
                          "arrivals (--request-rate, --arrivals-from)", (long long)(r->dec_base + i), (int)tseq[r->dec_base + i],
                          (long long)sp->index + 1, sp->dec[i]);
    /* ... and ran in the passes they ran in there (pass_ids: plan eval times
     * a trace's passes, and online rebalancing counts them): a trace recorded
     * with other chunks or another prefill policy numbers the same tokens'
     * passes otherwise */
    const int32_t *tpass = trace_of_run ? epm_trace_pass_ids(o->route_from) : NULL;
    for (int i = 0; i < sp->n_pre + sp->n_dec && tpass && st == EPM_OK; i++) {
        const int64_t a = i < sp->n_pre ? r->offset[sp->pre[i].seq] + sp->pre[i].from : r->dec_base + i - sp->n_pre;
        const int64_t b = i < sp->n_pre ? r->offset[sp->pre[i].seq] + sp->pre[i].to : a + 1;
        for (int64_t gi = a; gi < b && st == EPM_OK; gi++)
            if (tpass[gi] != r->chunk)
                st = epm_fail(EPM_ERR_MISMATCH, "--route-from-trace: token %lld of the trace ran in its pass %d, in "
                              "this run's pass %d: the trace was recorded with another --prefill-chunk, "
                              "--separate-prefill, --max-num-batched-tokens, --max-total-tokens, --max-num-seqs, "
                              "rank count or arrivals (plan eval of it times its own passes)", (long long)gi, (int)tpass[gi], r->chunk);
    }
    /* this rank's tokens: its prompt pieces', then its decoding sequences' (ascending g) */
    int64_t n = 0, *g = NULL;
    for (int i = 0; i < sp->n_pre; i++)
        n += sp->pre[i].seq % r->R == r->me ? sp->pre[i].to - sp->pre[i].from : 0;
    for (int i = 0; i < sp->n_dec; i++)
        n += sp->dec[i] % r->R == r->me;
    float *h = NULL, *lg = NULL, *rows = NULL, *prec = NULL;
    int32_t *tok = epm_malloc((size_t)(n ? n : 1) * sizeof *tok);
    if (st == EPM_OK)
        st = pass_buffers(r, n, &g, &h);
    if (st == EPM_OK && !tok)
        st = EPM_ERR_NOMEM;
    n = 0;
    for (int i = 0; i < sp->n_pre && st == EPM_OK; i++)
        for (int s = sp->pre[i].seq, p = sp->pre[i].from; s % r->R == r->me && p < sp->pre[i].to; p++) {
            g[n] = r->offset[s] + p;
            tok[n++] = prompts[s][p];
        }
    for (int i = 0; i < sp->n_dec && st == EPM_OK; i++)
        if (sp->dec[i] % r->R == r->me) {
            const int s = sp->dec[i];
            g[n] = r->dec_base + i;
            tok[n++] = res->generated[(size_t)s * maxnew + res->gen_len[s] - 1];
        }
    if (st == EPM_OK)
        st = embed(r, n, g, tok, h);
    /* forward's first collective starts with a counts phase (an exchange or
     * an all-gather), where a rank that failed meets the others with its
     * failure: an agreement here only where this rank failed */
    if ((st = epm_rt_ready(r, st)) != EPM_OK)
        goto out;
    /* forward's failures after its last agreement (follow mode's way home)
     * are this rank's alone: they join the logits' agreement */
    st = forward(r, &n, &g, &h);
    /* the LM head runs on the rows anyone reads: each prompt's last (its
     * first token, its logits in the result), or all prompt rows with
     * keep_logits or prompt logprobs; and every decode row. Prompt rows
     * [0, kp), then decode rows [kp, keep) */
    int64_t keep = 0, kp = 0;
    int apart = 0; /* a decode row before a prompt row: forward may leave them in any order */
    for (int64_t i = 0; i < n && st == EPM_OK; i++) {
        if (g[i] >= r->N || o->keep_logits || o->prompt_logprobs_on || prompt_last(r, g[i]))
            keep++, kp += g[i] < r->N;
        apart |= i > 0 && g[i - 1] >= r->N && g[i] < r->N;
    }
    if (st == EPM_OK && (keep < n || apart)) {
        int64_t *gk = epm_malloc((size_t)(keep ? keep : 1) * sizeof *gk), j = 0;
        float *hk = epm_malloc((size_t)(keep ? keep : 1) * H * sizeof *hk);
        for (int dec = 0; dec < 2 && gk && hk; dec++)
            for (int64_t i = 0; i < n; i++)
                if ((g[i] >= r->N) == dec && (dec || o->keep_logits || o->prompt_logprobs_on || prompt_last(r, g[i]))) {
                    gk[j] = g[i];
                    memcpy(hk + j++ * H, h + i * H, (size_t)H * sizeof *hk);
                }
        st = gk && hk ? EPM_OK : EPM_ERR_NOMEM;
        epm_free(st == EPM_OK ? g : gk);
        epm_free(st == EPM_OK ? h : hk);
        if (st == EPM_OK)
            g = gk, h = hk;
    }
    if (st == EPM_OK)
        st = logits(r, keep, h, &lg);
    /* a failure from here on is this rank's (nothing below is collective
     * until the sampling's agreement, which has it) */
    rows = st == EPM_OK && res->logits_kept ? epm_malloc((size_t)(kp ? kp : 1) * (2 + V) * sizeof *rows) : NULL;
    const int PW = prompt_rec_width(o);
    prec = st == EPM_OK && o->prompt_logprobs_on ? epm_malloc((size_t)(kp ? kp : 1) * PW * sizeof *prec) : NULL;
    if (st == EPM_OK && ((res->logits_kept && !rows) || (o->prompt_logprobs_on && !prec)))
        st = EPM_ERR_NOMEM;
    /* sampled: each prompt's last row (when tokens are asked for) and every decode row */
    int nsample = 0;
    int64_t kept = 0, nrec = 0;
    for (int64_t i = 0; i < keep && st == EPM_OK; i++) {
        const int s = seq_of(r, g[i]), last = i >= kp || prompt_last(r, g[i]);
        if (last && (i >= kp || o->max_new_tokens > 0)) {
            if (nsample == po->homes) {
                st = epm_fail(EPM_ERR_INTERNAL, "pass %lld: more tokens to sample came home to rank %d than its %d "
                              "sequences", (long long)sp->index, r->me, po->homes);
                break;
            }
            po->srow[nsample] = i, po->sseq[nsample++] = s;
        }
        if (i >= kp || !rows || (!o->keep_logits && !last))
            continue;
        put_g(rows + kept * (2 + V), o->keep_logits ? g[i] : s);
        memcpy(rows + kept * (2 + V) + 2, lg + i * V, (size_t)V * sizeof *rows);
        kept++;
    }
    if (st == EPM_OK)
        st = sample_rows(o, po->smp, lg, V, nsample, po->srow, po->sseq, prompts, r->lens, res->generated,
                         res->gen_len, maxnew, po->nt);
    if (st == EPM_OK && prec)
        st = prompt_records(r, prompts, g, kp, lg, prec, &nrec);
    st = sync(r, st);
    /* rank 0 files the prompt rows' logits it was asked to keep, and their prompt logprobs */
    void *all = NULL;
    int64_t nb = 0;
    const int gathered = st == EPM_OK && sp->n_pre && (res->logits_kept || prec);
    if (st == EPM_OK && sp->n_pre && res->logits_kept)
        st = epm_xcomm_gather_bytes(r->x, rows, kept * (2 + V) * (int64_t)sizeof(float), &all, &nb);
    if (st == EPM_OK && sp->n_pre && prec)
        st = prompt_gather(r, prec, nrec, res);
    if (st == EPM_OK && r->me == 0 && sp->n_pre && res->logits_kept) {
        const float *a = all;
        for (int64_t i = 0; i < nb / (int64_t)((2 + V) * sizeof(float)); i++)
            memcpy(res->logits + get_g(a + i * (2 + V)) * V, a + i * (2 + V) + 2, (size_t)V * sizeof(float));
    }
    epm_free(all);
    if (gathered) /* (rank 0's filing may fail alone; a pass that gathered nothing has agreed above) */
        st = sync(r, st);
    if (st != EPM_OK)
        goto out;
    /* every rank follows every sequence: who has a token in the next sum, who is done */
    for (int i = 0; i < sp->n_pre; i++) {
        const int s = sp->pre[i].seq;
        if (sp->pre[i].to < r->lens[s])
            continue;
        r->fed[s] = o->max_new_tokens > 0;
        if (!r->fed[s]) /* nothing to decode: done */
            kv_end(r, s);
    }
    for (int i = 0; i < sp->n_dec; i++)
        r->fed[sp->dec[i]] = 1;
    r->dec_base += sp->n_dec;
    epm_run_report *rep = &res->report;
    rep->prefill_tokens += sp->pre_tokens;
    rep->prefill_passes += sp->n_pre > 0;
    rep->decode_tokens += sp->n_dec;
    rep->decode_steps += sp->n_dec > 0;
    rep->mixed_passes += sp->n_pre > 0 && sp->n_dec > 0;
out:
    epm_free(g);
    epm_free(h);
    epm_free(lg);
    epm_free(tok);
    epm_free(rows);
    epm_free(prec);
    return st;
}

/* Rank 0's time since the run's start into *now on every rank: arrivals
 * admit by one clock, so that all ranks build the same passes. */
static epm_status shared_clock(rt *r, double *now)
{
    int64_t ns = r->me == 0 ? (int64_t)(*now * 1e9) : 0;
    EPM_CHECK(epm_xcomm_sum_i64(r->x, &ns, 1));
    *now = (double)ns * 1e-9;
    return EPM_OK;
}

/* Sleeps s seconds (none if s <= 0); a signal's interruption resumes the rest. */
static void wait_s(double s)
{
    if (!(s > 0))
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)}, left;
    while (nanosleep(&ts, &left) != 0 && errno == EINTR)
        ts = left;
}

epm_status epm_run(const epm_run_opts *o, int batch, const int *lens, const int32_t *const *prompts,
                   epm_run_result **out)
{
    *out = NULL;
    if (batch <= 0 || !lens)
        return epm_fail(EPM_ERR_INVALID_ARG, "run: the batch is empty");
    for (int s = 0; s < batch; s++)
        if (lens[s] <= 0)
            return epm_fail(EPM_ERR_INVALID_ARG, "run: sequence %d is empty", s);
    for (int s = 0; o->max_new_per_seq && s < batch; s++)
        if (o->max_new_per_seq[s] < 1)
            return epm_fail(EPM_ERR_INVALID_ARG, "run: sequence %d may generate %d tokens (at least 1)", s,
                            o->max_new_per_seq[s]);
    for (int s = 0; o->seq_sampling && s < batch; s++)
        if (epm_sampling_validate(&o->seq_sampling[s]) != EPM_OK)
            return epm_fail_context(EPM_ERR_INVALID_ARG, "run: sequence %d", s);
    if (o->prompt_logprobs_on && (o->prompt_top_logprobs < 0 || o->prompt_top_logprobs > EPM_MAX_LOGPROBS))
        return epm_fail(EPM_ERR_INVALID_ARG, "run: prompt top logprobs = %d: must be in [0, %d]",
                        o->prompt_top_logprobs, EPM_MAX_LOGPROBS);
    if (o->logprobs_on && (o->top_logprobs < 0 || o->top_logprobs > EPM_MAX_LOGPROBS))
        return epm_fail(EPM_ERR_INVALID_ARG, "run: top logprobs = %d: must be in [0, %d]", o->top_logprobs,
                        EPM_MAX_LOGPROBS);
    rt r;
    memset(&r, 0, sizeof r);
    r.o = o;
    r.ref = epm_ops_ref();
    if (o->ops && strcmp(o->ops, "ref") && strcmp(o->ops, "blas") && strcmp(o->ops, "cuda"))
        return epm_fail(EPM_ERR_INVALID_ARG, "--kernels %s: expected ref, blas or cuda", o->ops);
    r.ops = o->ops && !strcmp(o->ops, "ref") ? epm_ops_ref() : epm_ops_blas();
    epm_cpu_isa isa; /* a bad EPM_CPU_ISA fails the run by name rather than quietly turning the kernel off */
    if (!o->ops || strcmp(o->ops, "ref"))
        EPM_CHECK(epm_cpu_isa_from_env(&isa));
    epm_xcomm_set_timeout(o->timeout_s);
    epm_xcomm_opts xo;
    epm_xcomm_opts_init(&xo);
    xo.virtual_nodes = o->virtual_nodes;
    epm_status st = epm_xcomm_opts_resolve(&xo, o->a2a, o->a2a_hier);
    if (st == EPM_OK && !o->a2a && !getenv("EPM_A2A") && o->ops && !strcmp(o->ops, "cuda")) {
        /* GPU kernels and no transport asked for: NCCL with one rank per GPU, MPI
         * through pinned host memory where ranks share a GPU (NCCL refuses that).
         * Every node has the same ranks and GPUs, so every rank chooses alike. */
        const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
        const epm_gpu_ops *G = epm_gpu_ops_cuda();
        int local = ls ? atoi(ls) : 1, ndev = G ? G->device_count() : 0;
        if (ndev > 0)
            xo.a2a = local <= ndev && EPM_HAVE_NCCL ? EPM_XA2A_NCCL : EPM_XA2A_STAGED;
    }
    if (st == EPM_OK)
        st = epm_xcomm_create_opts(&xo, &r.x);
    if (st != EPM_OK)
        return st;
    epm_xcomm_set_room(r.x, !o->exchange_no_room);
    epm_xcomm_set_eager(r.x, !o->exchange_no_eager);
    /* OMP_NUM_THREADS, else this rank's share of its machine's cores: OpenMP's own default, every core,
     * gives each of several ranks on a machine a team as large as the machine (kernels/cpu_threads.c) */
    const int cpu_threads = epm_cpu_threads_share(epm_xcomm_local_ranks(r.x));
    /* asynchronous copies of experts between ranks get a communicator of their own, flat and posted at
     * once (p2p), so that they move under the passes whatever the passes' transport: the hierarchical
     * path's second hop and alltoallv would move them only at the switch, and NCCL's transport serves
     * one step at a time. Host rows: MPI's. */
    if (o->eplb_interval > 0 && o->eplb_lag > 0 && o->eplb_from_peers) {
        epm_xcomm_opts co = xo;
        co.a2a = EPM_XA2A_P2P;
        co.hier = EPM_XHIER_OFF;
        st = epm_xcomm_agree(r.x, epm_xcomm_create_opts(&co, &r.xc));
        if (st != EPM_OK) {
            epm_xcomm_destroy(r.xc);
            epm_xcomm_destroy(r.x);
            return st;
        }
    }
    /* from here on every failure is agreed before anyone returns */
    epm_run_result *res = epm_calloc(1, sizeof *res);
    st = sync(&r, res ? EPM_OK : EPM_ERR_NOMEM);
    if (st != EPM_OK) {
        epm_free(res);
        epm_xcomm_destroy(r.xc);
        epm_xcomm_destroy(r.x);
        return st;
    }
    r.rep = &res->report;
    if (o->ops && !strcmp(o->ops, "cuda")) {
        /* local rank -> GPU; ranks beyond the GPU count share them (NCCL could not, MPI can) */
        epm_cluster cl;
        epm_xcomm_cluster(r.x, &cl);
        const epm_gpu_ops *G = epm_gpu_ops_cuda();
        int ndev = G ? G->device_count() : 0, local = r.me % (cl.gpus_per_node > 0 ? cl.gpus_per_node : 1);
        st = epm_ops_cuda_open(ndev > 0 ? local % ndev : 0, &r.ops);
        r.cuda = st == EPM_OK;
        if (st != EPM_OK)
            r.ops = epm_ops_blas();
        st = sync(&r, st);
        if (st != EPM_OK) {
            if (r.cuda)
                epm_ops_cuda_close();
            epm_free(res);
            epm_xcomm_destroy(r.xc);
            epm_xcomm_destroy(r.x);
            return st;
        }
    }
    r.me = epm_xcomm_rank(r.x);
    r.R = epm_xcomm_size(r.x);
    r.prompts = prompts;
    EPM_CHECK_GOTO(setup(&r, o, batch, lens), st, fail);
    const epm_model_config *c = r.c;
    res->batch = batch;
    res->vocab = c->vocab_size;
    res->lens = epm_malloc((size_t)batch * sizeof *res->lens);
    const int maxnew = o->max_new_tokens > 0 ? o->max_new_tokens : 1;
    res->generated = epm_malloc((size_t)batch * (size_t)maxnew * sizeof *res->generated);
    res->gen_len = epm_calloc((size_t)batch, sizeof *res->gen_len);
    for (int q = 0; q < batch && r.outputs && res->generated; q++) /* (prefix caching reads them) */
        r.outputs[q] = res->generated + (size_t)q * maxnew;
    res->stopped = epm_calloc((size_t)batch, sizeof *res->stopped);
    res->t_arrive = epm_malloc((size_t)batch * sizeof *res->t_arrive);
    res->t_admit = epm_malloc((size_t)batch * sizeof *res->t_admit);
    res->t_first = epm_malloc((size_t)batch * sizeof *res->t_first);
    res->t_done = epm_malloc((size_t)batch * sizeof *res->t_done);
    res->t_token = epm_malloc((size_t)batch * maxnew * sizeof *res->t_token);
    const int W = rec_width(o);
    int64_t *nt = epm_calloc((size_t)batch * W, sizeof *nt); /* a step's records, every rank's summed */
    if (o->logprobs_on && nt) {
        res->top_logprobs = o->top_logprobs;
        res->logprob = epm_malloc((size_t)batch * maxnew * sizeof *res->logprob);
        res->top_ids = epm_malloc((size_t)batch * maxnew * (o->top_logprobs ? o->top_logprobs : 1) * sizeof *res->top_ids);
        res->top_lp = epm_malloc((size_t)batch * maxnew * (o->top_logprobs ? o->top_logprobs : 1) * sizeof *res->top_lp);
        if (!res->logprob || !res->top_ids || !res->top_lp)
            epm_free(nt), nt = NULL;
    }
    samplers smp = {NULL, 0};
    int homes = batch / r.R + (r.me < batch % r.R);
    int64_t *srow = epm_malloc((size_t)(homes ? homes : 1) * sizeof *srow); /* the rows sampled in a pass */
    int *sseq = epm_malloc((size_t)(homes ? homes : 1) * sizeof *sseq);
    st = res->lens && res->generated && res->gen_len && res->stopped && nt && srow && sseq && res->t_admit &&
                 res->t_arrive && res->t_first && res->t_done && res->t_token ? EPM_OK : EPM_ERR_NOMEM;
    {
        epm_sampling sp = o->sampling; /* min_tokens holds back the run's stop tokens */
        sp.stop_ids = o->stop_ids;
        sp.n_stop = o->n_stop;
        if (st == EPM_OK)
            st = samplers_create(&sp, c->vocab_size, homes, &smp);
    }
    if (st == EPM_OK) {
        memcpy(res->lens, lens, (size_t)batch * sizeof *lens);
        for (size_t i = 0; i < (size_t)batch * (size_t)maxnew; i++)
            res->generated[i] = -1, res->t_token[i] = NAN;
        for (int q = 0; q < batch; q++) {
            res->t_admit[q] = res->t_first[q] = res->t_done[q] = NAN;
            res->t_arrive[q] = o->arrival ? o->arrival[q] : 0;
        }
    }
    EPM_CHECK_GOTO(sync(&r, st), st, fail_gen);
    const pass_out po = {&smp, srow, sseq, homes, maxnew, nt};
    res->logits_kept = o->keep_logits || !o->drop_logits;
    if (st == EPM_OK && r.me == 0 && res->logits_kept) { /* the prefill's logits: each sequence's last, or all */
        res->logits = epm_malloc((size_t)(o->keep_logits ? r.N : batch) * c->vocab_size * sizeof(float));
        st = res->logits ? EPM_OK : EPM_ERR_NOMEM;
    }
    EPM_CHECK_GOTO(sync(&r, st), st, fail_gen);
    /* a replayed trace that a run of this batch recorded (its prompt tokens
     * are numbered as here) has its decoded tokens checked step by step */
    int trace_of_run = o->route_from && epm_trace_seq_ids(o->route_from);
    for (int64_t gi = 0; gi < r.N && trace_of_run; gi++)
        trace_of_run = epm_trace_seq_ids(o->route_from)[gi] == seq_of(&r, gi);
    /* The scheduler (scheduler.h) admits each home rank's sequences in order
     * while it has places (all at once without max_num_seqs): their K/V
     * caches are taken and their prompts prefilled, a chunk a pass, which
     * gives each its first token; then they decode, one new token per pass,
     * caches growing, in the passes of the others' prompt chunks too unless
     * separate_prefill. A sequence leaves at a stop token or its length,
     * gives its caches back, and its rank's next waiting sequence takes its
     * place (vLLM's continuous batching). Every rank learns every new token
     * (one small sum per pass), so all build the same passes. */
    const double t_start = epm_now(); /* the arrivals' clock starts (an offline batch: all arrive now) */
    for (;;) {
        const double t0 = epm_now();
        int lo = batch, hi = 0; /* the sequences fed since the last sum: those between lo and hi - 1 */
        for (int s = 0; s < batch; s++)
            if (r.fed[s])
                lo = s < lo ? s : lo, hi = s + 1;
        /* the tokens of the last pass (of many waiting sequences, only those that ran) */
        if (lo < hi)
            EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, nt + (size_t)lo * W, (hi - lo) * W), st, fail_gen);
        for (int s = lo; s < hi; s++) {
            if (!r.fed[s])
                continue;
            r.fed[s] = 0;
            const int64_t *w = nt + (size_t)s * W;
            const int32_t t = (int32_t)w[0];
            const size_t at = (size_t)s * maxnew + res->gen_len[s], top = (size_t)o->top_logprobs;
            if (o->logprobs_on) {
                res->logprob[at] = bits_f(w[1]);
                for (size_t q = 0; q < top; q++) {
                    res->top_ids[at * top + q] = (int32_t)w[2 + q];
                    res->top_lp[at * top + q] = bits_f(w[2 + top + q]);
                }
            }
            res->generated[(size_t)s * maxnew + res->gen_len[s]++] = t;
            const epm_sampling *own = o->seq_sampling ? &o->seq_sampling[s] : NULL;
            for (int j = 0, ns = own ? own->n_stop : o->n_stop; j < ns; j++)
                if (t == (own ? own->stop_ids : o->stop_ids)[j])
                    res->stopped[s] = 1;
            if (res->stopped[s] || res->gen_len[s] >= seq_cap(&r, s))
                kv_end(&r, s);
            memset(nt + (size_t)s * W, 0, (size_t)W * sizeof *nt);
        }
        /* the time the scheduler admits by: rank 0's, which every rank takes with arrivals */
        double now = epm_now() - t_start;
        if (o->arrival)
            EPM_CHECK_GOTO(shared_clock(&r, &now), st, fail_gen);
        epm_sched_pass sp;
        if (!epm_sched_next(r.sched, now, &sp))
            break;
        if (sp.n_pre == 0 && sp.n_dec == 0) { /* nothing has arrived to run: every rank waits for the next */
            wait_s(sp.wake - now);
            res->report.t_wait += sp.wake - now > 0 ? sp.wake - now : 0;
            continue;
        }
        for (int i = 0; i < sp.n_admitted && st == EPM_OK; i++) { /* (in order: a donor copied before it gives) */
            const int s = sp.admitted[i], d = sp.donor[i];
            int taken = 0; /* its donor dropped to make room for it hands its rows over */
            for (int e = sp.evict_from[i]; e < sp.evict_from[i + 1]; e++)
                if (sp.evicted[e] == d)
                    taken = 1;
                else
                    kv_release(&r, sp.evicted[e]);
            res->t_admit[s] = now;
            st = taken ? kv_take(&r, s, d, sp.cached[i]) : kv_acquire(&r, s);
            if (st == EPM_OK && sp.cached[i] > 0 && !taken)
                kv_copy_prefix(&r, s, d, sp.cached[i]);
        }
        /* the admissions' failures join the pass's first agreement, unless rebalancing's collectives
         * come first (the pass's number counts the non-empty ones, which online rebalancing counts) */
        if (o->eplb_interval > 0) {
            EPM_CHECK_GOTO(sync(&r, st), st, fail_gen);
            EPM_CHECK_GOTO(epm_eplb_pass(&r, sp.index), st, fail_gen);
        }
        r.eplb_counting = epm_eplb_counts(o->eplb_interval, o->eplb_window, sp.index);
        EPM_CHECK_GOTO(run_pass(&r, &sp, prompts, &po, trace_of_run, res, st), st, fail_gen);
        /* a mixed pass's seconds are shared out by its tokens */
        const double t1 = epm_now(), dt = t1 - t0, pre = (double)sp.pre_tokens / (double)(sp.pre_tokens + sp.n_dec);
        res->report.t_prefill += dt * pre;
        res->report.t_decode += dt * (1 - pre);
        /* its tokens' times: a prompt's first, each decoding sequence's next */
        for (int i = 0; i < sp.n_pre; i++)
            if (sp.pre[i].to == lens[sp.pre[i].seq]) {
                const int q = sp.pre[i].seq;
                res->t_done[q] = t1 - t_start;
                if (o->max_new_tokens > 0)
                    res->t_first[q] = res->t_token[(size_t)q * maxnew] = t1 - t_start;
            }
        for (int i = 0; i < sp.n_dec; i++) { /* (its token's index: gen_len, which the next sum raises) */
            const int q = sp.dec[i];
            res->t_done[q] = res->t_token[(size_t)q * maxnew + res->gen_len[q]] = t1 - t_start;
        }
    }
    if (o->eplb_interval > 0) /* (a placement still in flight comes into service, as plan eval takes it) */
        EPM_CHECK_GOTO(epm_eplb_end(&r), st, fail_gen);
    {
        double *tpot = epm_malloc((size_t)batch * sizeof *tpot);
        double *gaps = epm_malloc((size_t)batch * maxnew * sizeof *gaps); /* the inter-token latencies */
        st = tpot && gaps ? EPM_OK : EPM_ERR_NOMEM;
        for (int q = 0; q < batch && st == EPM_OK; q++)
            tpot[q] = res->gen_len[q] > 1 ? (res->t_done[q] - res->t_first[q]) / (res->gen_len[q] - 1) : NAN;
        if (st == EPM_OK)
            st = epm_latency_of(tpot, batch, &res->report.tpot);
        /* time to first token and end to end count from each sequence's arrival */
        double *since = epm_malloc((size_t)batch * sizeof *since);
        st = st == EPM_OK && !since ? EPM_ERR_NOMEM : st;
        for (int k = 0; k < 2 && st == EPM_OK; k++) {
            for (int q = 0; q < batch; q++)
                since[q] = (k ? res->t_done[q] : res->t_first[q]) - res->t_arrive[q];
            st = epm_latency_of(since, batch, k ? &res->report.e2e : &res->report.ttft);
        }
        epm_free(since);
        if (st == EPM_OK) {
            epm_token_gaps(res->t_token, res->gen_len, batch, maxnew, gaps);
            st = epm_latency_of(gaps, (int64_t)batch * maxnew, &res->report.itl);
        }
        epm_free(tpot);
        epm_free(gaps);
        EPM_CHECK_GOTO(sync(&r, st), st, fail_gen);
    }
    res->report.max_num_seqs = r.max_seqs;
    res->report.route_from_run = trace_of_run;
    EPM_CHECK_GOTO(sync(&r, epm_placement_clone(r.p, &res->placement)), st, fail_gen);
    {
        epm_placement_info info = *epm_placement_get_info(res->placement);
        info.mode = o->mode;
        epm_placement_set_info(res->placement, &info);
    }
    EPM_CHECK_GOTO(collect_trace(&r, res), st, fail_gen);
    /* the report: counted bytes and loads summed over ranks */
    epm_run_report *rep = &res->report;
    rep->ranks = r.R;
    rep->moe_layers = r.moe_layers;
    epm_cluster cl;
    epm_xcomm_cluster(r.x, &cl);
    rep->nodes = cl.nodes;
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.bytes_local, r.moe_layers * EPM_LINK_COUNT), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.kv_local, r.moe_layers * EPM_LINK_COUNT), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.load_local, r.moe_layers * r.R), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.gather_local, EPM_LINK_COUNT), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.kv_dense_local, EPM_LINK_COUNT), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.mod_local, EPM_LINK_COUNT), st, fail_gen);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.aside_msgs[0], 2 * EPM_LINK_COUNT), st, fail_gen);
    memcpy(rep->dense_kv_msgs, r.aside_msgs[0], sizeof rep->dense_kv_msgs);
    memcpy(rep->mod_score_msgs, r.aside_msgs[1], sizeof rep->mod_score_msgs);
    memcpy(rep->dense_kv_bytes, r.kv_dense_local, sizeof rep->dense_kv_bytes);
    memcpy(rep->mod_score_bytes, r.mod_local, sizeof rep->mod_score_bytes);
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, r.layer_tokens, c->num_layers), st, fail_gen);
    {
        epm_xcomm_wire wire, copies = {0};
        epm_xcomm_wire_get(r.x, &wire);
        rep->cpu_threads = cpu_threads;
        rep->hops = wire.hops;
        rep->hops_agreed = wire.hops_agreed;
        rep->hops_fused = wire.hops_fused;
        if (r.xc) /* (asynchronous copies' communicator: all of its wire is theirs) */
            epm_xcomm_wire_get(r.xc, &copies);
        int64_t wv[4 * EPM_LINK_COUNT]; /* the tokens' bytes and messages, and the experts' copies' */
        for (int k = 0; k < EPM_LINK_COUNT; k++) {
            wv[k] = wire.bytes[k] - r.eplb_wire.bytes[k];
            wv[EPM_LINK_COUNT + k] = wire.msgs[k] - r.eplb_wire.msgs[k];
            wv[2 * EPM_LINK_COUNT + k] = r.eplb_wire.bytes[k] + copies.bytes[k];
            wv[3 * EPM_LINK_COUNT + k] = r.eplb_wire.msgs[k] + copies.msgs[k];
        }
        EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, wv, 4 * EPM_LINK_COUNT), st, fail_gen);
        memcpy(rep->wire_bytes, wv, sizeof rep->wire_bytes);
        memcpy(rep->wire_msgs, wv + EPM_LINK_COUNT, sizeof rep->wire_msgs);
        memcpy(rep->eplb_wire_bytes, wv + 2 * EPM_LINK_COUNT, sizeof rep->eplb_wire_bytes);
        memcpy(rep->eplb_wire_msgs, wv + 3 * EPM_LINK_COUNT, sizeof rep->eplb_wire_msgs);
        rep->eplb_expert_bytes = o->eplb_interval > 0 && o->eplb_from_peers ? epm_model_expert_packed_bytes(r.m) : 0;
        rep->eplb_lag = o->eplb_interval > 0 ? o->eplb_lag : 0;
        rep->eplb_groups = o->eplb_interval > 0 && r.eplb_groups > 1 ? r.eplb_groups : 0;
        rep->eplb_hierarchical = rep->eplb_groups > 1 &&
                                 epm_eplb_hierarchical(rep->eplb_groups, c->num_experts, epm_placement_cluster(r.p));
        rep->hierarchical = epm_xcomm_hierarchical(r.x);
        rep->transport = epm_xcomm_a2a_name(epm_xcomm_transport(r.x));
    }
    rep->num_layers = c->num_layers;
    rep->layer_tokens = r.layer_tokens;
    r.layer_tokens = NULL;
    int64_t wb[2] = {epm_model_bytes_loaded(r.m), epm_model_bytes_loaded(r.m)};
    EPM_CHECK_GOTO(epm_xcomm_sum_i64(r.x, wb, 1), st, fail_gen);
    double wmax = (double)epm_model_bytes_loaded(r.m);
    double times[7] = {rep->t_prefill, rep->t_decode, rep->t_attention, rep->t_gate, rep->t_dispatch, rep->t_experts,
                       rep->t_combine};
    EPM_CHECK_GOTO(epm_xcomm_max_f64(r.x, &wmax, 1), st, fail_gen);
    double kvm[2] = {(double)r.kv_cache_peak, (double)r.kv_positions_peak};
    EPM_CHECK_GOTO(epm_xcomm_max_f64(r.x, kvm, 2), st, fail_gen);
    rep->kv_cache_bytes_max = (int64_t)kvm[0];
    rep->kv_positions_max = (int64_t)kvm[1];
    rep->cached_prompt_tokens = r.cached_tokens;
    EPM_CHECK_GOTO(epm_xcomm_max_f64(r.x, times, 7), st, fail_gen);
    rep->t_prefill = times[0], rep->t_decode = times[1], rep->t_attention = times[2], rep->t_gate = times[3];
    rep->t_dispatch = times[4], rep->t_experts = times[5], rep->t_combine = times[6];
    rep->weight_bytes_sum = wb[0];
    rep->weight_bytes_max = (int64_t)wmax;
    rep->expert_dtype = experts_dtype(&r);
    rep->dense_dtype = dense_dtype(&r);
    rep->kv_cache = !r.c->mla ? "keys-values" : r.latent ? "mla-latent" : "mla-expanded";
    rep->kv_row_floats = epm_model_kv_floats(r.c, !r.latent);
    rep->kv_dtype = r.kvt == EPM_KV_FP8 ? EPM_DTYPE_F8_E4M3 : r.kvt == EPM_KV_BF16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    rep->wire_dtype = r.wire8 ? EPM_DTYPE_F8_E4M3 : r.wire16 ? EPM_DTYPE_BF16 : EPM_DTYPE_F32;
    rep->bytes = r.bytes_local;
    rep->kv_bytes = r.kv_local;
    rep->rank_load = r.load_local;
    memcpy(rep->gather_bytes, r.gather_local, sizeof rep->gather_bytes);
    r.bytes_local = r.kv_local = r.load_local = NULL;
    epm_free(nt);
    samplers_destroy(&smp);
    epm_free(srow);
    epm_free(sseq);
    teardown(&r);
    epm_xcomm_destroy(r.xc);
    epm_xcomm_destroy(r.x);
    *out = res;
    return EPM_OK;
fail_gen:
    epm_free(nt);
    samplers_destroy(&smp);
    epm_free(srow);
    epm_free(sseq);
fail:
    teardown(&r);
    epm_xcomm_destroy(r.xc);
    epm_xcomm_destroy(r.x);
    epm_run_result_destroy(res);
    return st;
}
