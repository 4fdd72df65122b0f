/* The run's up-front checks, before any pass: what this rank will hold
 * against the memory it may use, and the scheduling options (prefill chunk,
 * places, the K/V pool, prefix caching) against the run, refused with a
 * message that names the option to change. */
#include <stdio.h>
#include <stdlib.h>

#include "model_internal.h"
#include "runtime_internal.h"

typedef struct mem_count {
    const rt *r;
    double bytes;
} mem_count;

static epm_status count_tensor(void *ctx, const epm_model_tensor_info *t)
{
    mem_count *m = ctx;
    /* (online rebalancing: whichever experts, its slots' worth) */
    if (t->expert >= 0 && (m->r->o->eplb_interval > 0 ? t->expert >= m->r->eplb_slots
                           : !epm_placement_has(m->r->p, m->r->moe_index[t->layer], t->expert, m->r->me)))
        return EPM_OK;
    int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
    int held16 = t->matrix && (t->expert >= 0 ? m->r->w16 : m->r->d16);
    if (t->fp8ok && (t->expert >= 0 ? m->r->w8 : m->r->d8)) { /* a byte per weight, a float per block */
        const int *b = m->r->c->fp8_block;
        m->bytes += (double)n + 4.0 * (double)((t->shape[0] + b[0] - 1) / b[0]) * (double)((t->shape[1] + b[1] - 1) / b[1]);
        return EPM_OK;
    }
    m->bytes += (held16 ? 2.0 : 4.0) * (double)n;
    return EPM_OK;
}

/* Bytes available to each rank of this node: MemAvailable over the ranks
 * sharing the machine (mpirun tells each rank how many there are). */
static double machine_share(const rt *r)
{
    double avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &avail) == 1) {
            avail *= 1024;
            break;
        }
    if (f)
        fclose(f);
    const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int local = ls && atoi(ls) > 0 ? atoi(ls) : r->R;
    return avail > 0 ? avail / local : 0;
}

/* The FFN scratch the run keeps between layers (ffn_scratch) at its
 * largest: one expert or MLP given a whole chunk of rows (the CPU FFN's
 * 1024) in the dtype it is held in. */
static double ffn_scratch_bytes(const rt *r)
{
    const epm_model_config *c = r->c;
    const int H = c->hidden_size;
    const int64_t off[2] = {0, 1024};
    const int widths[3] = {epm_model_config_moe_layers(c) > 0 ? c->moe_ffn : 0, c->shared_ffn,
                           epm_model_config_moe_layers(c) < c->num_layers ? c->dense_ffn : 0};
    double most = 0;
    for (int k = 0; k < 3; k++) {
        int64_t f = widths[k] > 0 ? scratch_floats(k ? dense_dtype(r) : experts_dtype(r), off, 1, H, widths[k]) : 0;
        most = (double)f > most ? (double)f : most;
    }
    return most * sizeof(float);
}

/* The option that sets a pass's chunk, for messages: vLLM's budget counts
 * decode tokens (--max-num-batched-tokens), SGLang's chunk does not. */
static const char *chunk_option(const epm_run_opts *o)
{
    return o->chunk_counts_decode ? "--max-num-batched-tokens" : "--prefill-chunk";
}

/* The most K/V bytes a layer's caches (K or V, or the latent) of rank q's
 * sequences hold at once: those of its places' largest. */
static double kv_most(const rt *r, int q)
{
    /* its places' largest, in order of size then sequence: no allocation, so no failure */
    double bytes = 0;
    int64_t pv = INT64_MAX;
    int ps = -1;
    for (int k = 0; k < r->places[q]; k++) {
        int best = -1;
        int64_t bv = 0;
        for (int s = q; s < r->B; s += r->R) {
            const int64_t v = kv_rows(r, s);
            if (v > pv || (v == pv && s <= ps)) /* taken already */
                continue;
            if (best < 0 || v > bv)
                best = s, bv = v;
        }
        if (best < 0)
            break;
        bytes += (double)epm_kv_cache_bytes(r, bv);
        pv = bv, ps = best;
    }
    return bytes;
}

/* What this rank will hold, as loaded: every tensor it reads in float32
 * (bf16/f16 checkpoints are converted; float32 ones are mapped, which the
 * page cache must hold all the same), weight matrices in bf16 (or FP8) where
 * they are kept so, plus its KV caches, its FFN scratch and the
 * activations of its largest prefill pass (an estimate). */
epm_status epm_rt_memory_check(rt *r)
{
    const epm_model_config *c = r->c;
    mem_count m = {.r = r};
    EPM_CHECK(epm_model_tensors(c, count_tensor, &m));
    /* whose caches it holds at once: its places' (follow: every rank's), each sized for its own sequence */
    const int seqs = r->o->mode == EPM_MODE_FOLLOW ? r->max_seqs : r->places[r->me];
    double w = m.bytes + (double)c->num_layers * epm_mla_setup_bytes(r), held = 0;
    /* online rebalancing that copies experts between ranks holds, at a boundary, a layer's packed sends
     * and the rows it received beside its experts (an estimate: its slots' worth of each), or with a
     * lag every layer's, all in flight at once */
    if (r->o->eplb_interval > 0 && r->o->eplb_from_peers)
        w += 2.0 * r->eplb_slots * (r->o->eplb_lag > 0 ? r->moe_layers : 1) *
             (double)epm_model_expert_packed_bytes(r->m);
    for (int q = 0; q < r->R; q++)
        held += r->o->mode == EPM_MODE_FOLLOW || q == r->me ? kv_most(r, q) : 0;
    /* K and V (or the latent alone) */
    /* the pool's, where fewer (or with prefix caching, whose kept rows may fill it): its positions in one
     * cache */
    const int pooled = r->o->max_total_tokens > 0 &&
                       ((double)epm_kv_cache_bytes(r, r->o->max_total_tokens) < held || r->o->prefix_caching);
    held = pooled ? (double)epm_kv_cache_bytes(r, r->o->max_total_tokens) : held;
    double kv = (double)c->num_layers * (r->latent ? 1 : 2) * held;
    double scr = ffn_scratch_bytes(r);
    /* a prefill pass's activation rows, which its largest pass holds at
     * once: per token the residual and normalised input, K + 1 dispatch
     * rows out and up to min(K, R) in, and per expert slot its input,
     * output and combine rows both ways; and the logits kept (or a pass's
     * every row's, which prompt logprobs read) */
    const int64_t mine = r->mine_most, most = r->o->prefill_chunk > 0 && r->o->prefill_chunk < mine ? r->o->prefill_chunk : mine;
    /* and beside them the decode tokens of a mixed pass: every place but the prompt's (within the
     * budget, where it counts them); with separate prefill a decoding pass's, one a place */
    const int64_t places = r->places[r->me];
    int64_t dec = r->o->separate_prefill ? (places > most ? places - most : 0) : places > 0 ? places - 1 : 0;
    if (r->o->chunk_counts_decode && r->o->prefill_chunk > 0 && most + dec > r->o->prefill_chunk)
        dec = r->o->prefill_chunk > most ? r->o->prefill_chunk - most : 0;
    const int K = c->top_k, in = K < r->R ? K : r->R;
    double act = (double)(most + dec) * c->hidden_size * (3.0 + 5.0 * K + in) * sizeof(float);
    const double rows = r->o->keep_logits ? (double)mine + (r->me == 0) * r->N /* every prompt row's, kept */
                        : r->o->drop_logits ? r->places[r->me] /* an admission's last rows, sampled */
                                            : r->B;             /* each sequence's last, kept */
    act += rows * c->vocab_size * 2 * sizeof(float);
    /* the exchanges' counts messages, whose slots each communicator holds (rows ride in them) */
    act += (double)epm_xcomm_held_bytes(r->x) + (r->xc ? (double)epm_xcomm_held_bytes(r->xc) : 0.0);
    if (r->o->prompt_logprobs_on && !r->o->keep_logits) /* a pass's logits, every row's */
        act += (double)most * c->vocab_size * sizeof(float);
    double limit = r->o->max_memory > 0 ? r->o->max_memory : machine_share(r);
    char kv_what[96];
    if (pooled)
        snprintf(kv_what, sizeof kv_what, "a pool of %lld positions", (long long)r->o->max_total_tokens);
    else
        snprintf(kv_what, sizeof kv_what, "%d sequences of up to %d positions", seqs, r->max_len);
    if (limit > 0 && w + kv + scr + act > limit)
        return epm_fail(EPM_ERR_NOMEM, "would hold %.4g GB (weights %.4g GB, routed experts as %s, dense matrices "
                        "as %s, %s KV cache %.4g GB for %s, FFN scratch %.4g GB, "
                        "activations of %lld prompt tokens a pass and %lld decode tokens about %.4g GB) but %s %.4g GB; "
                        "use more ranks, "
                        "fewer or shorter sequences%s%s%s%s, or another placement",
                        (w + kv + scr + act) / 1e9, w / 1e9, r->w8 ? "fp8" : r->w16 ? "bf16" : "float32",
                        r->d8 ? "fp8 and bf16" : r->d16 ? "bf16" : "float32", kv_name(r), kv / 1e9,
                        kv_what, scr / 1e9, (long long)most, (long long)dec, act / 1e9,
                        r->o->max_memory > 0 ? "--max-memory allows" : "the machine has, per rank,",
                        limit / 1e9, r->kvt == EPM_KV_FP8 ? "" : r->kvt == EPM_KV_BF16 ? ", --kv-dtype fp8" :
                        ", --kv-dtype bf16 or fp8", act > 0.25 * limit ? ", a smaller " : "",
                        act > 0.25 * limit ? chunk_option(r->o) : "",
                        kv > 0.25 * limit && seqs > 1 ? (pooled ? ", a smaller --max-total-tokens"
                                                                : ", a smaller --max-num-seqs or --max-total-tokens")
                                                      : "");
    return EPM_OK;
}

static int by_int_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

/* --max-total-tokens against the run: each sequence's reserve (its caches'
 * positions) must fit the pool alone, and a scored MoD source's decode
 * thresholds need the whole batch prefilled at once, so its pool must hold
 * every sequence (each home rank's, or follow's all). */
static epm_status pool_check(rt *r)
{
    const epm_run_opts *o = r->o;
    const int64_t P = o->max_total_tokens;
    if (P < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "--max-total-tokens %lld: must be at least 1 (0: no pool)", (long long)P);
    if (P == 0)
        return EPM_OK;
    r->reserve = epm_malloc((size_t)r->B * sizeof *r->reserve);
    if (!r->reserve)
        return EPM_ERR_NOMEM;
    const int follow = o->mode == EPM_MODE_FOLLOW;
    int64_t worst = 0, total = 0;
    for (int s = 0; s < r->B; s++) {
        r->reserve[s] = kv_rows(r, s);
        if (r->reserve[s] > P)
            return epm_fail(EPM_ERR_INVALID_ARG, "--max-total-tokens %lld: sequence %d needs %lld K/V positions "
                            "(a prompt of %d tokens and up to %d new), more than the pool holds", (long long)P, s,
                            (long long)r->reserve[s], r->lens[s], seq_cap(r, s));
    }
    for (int q = 0; q < (follow ? 1 : r->R); q++, total = 0) {
        for (int s = follow ? 0 : q; s < r->B; s += follow ? 1 : r->R)
            total += r->reserve[s];
        if (total > worst)
            worst = total;
    }
    if ((o->mod == EPM_MOD_ROUTER || o->mod == EPM_MOD_ATTENTION) && worst > P)
        return epm_fail(EPM_ERR_UNSUPPORTED, "--max-total-tokens %lld with --mod %s: decoding's skip thresholds "
                        "are calibrated on the prompts of the whole batch, whose %s sequences reserve %lld "
                        "positions (--mod schedule admits in turns)", (long long)P,
                        o->mod == EPM_MOD_ROUTER ? "router" : "attention", follow ? "batch's" : "rank's",
                        (long long)worst);
    return EPM_OK;
}

/* --enable-prefix-caching against the run: the copied positions' rows must
 * be positions' (no MoD skipping) and their outputs are not computed (no
 * all-logits or prompt logprobs), and a replay's trace numbers every
 * prompt token. */
static epm_status prefix_check(rt *r)
{
    const epm_run_opts *o = r->o;
    if (!o->prefix_caching)
        return EPM_OK;
    const char *with = o->mod != EPM_MOD_OFF ? "--mod: a skipping layer's cache rows are not positions"
                       : o->route_from ? "a routing replay: its trace numbers every prompt token"
                       : o->keep_logits ? "all logits: the copied positions compute none"
                       : o->prompt_logprobs_on ? "prompt logprobs: the copied positions compute none"
                                               : NULL;
    if (with)
        return epm_fail(EPM_ERR_UNSUPPORTED, "--enable-prefix-caching with %s", with);
    r->cached = epm_calloc((size_t)r->B, sizeof *r->cached);
    r->kv_kept = epm_calloc((size_t)r->B, sizeof *r->kv_kept);
    r->outputs = epm_calloc((size_t)r->B, sizeof *r->outputs);
    if (!r->reserve && (r->reserve = epm_malloc((size_t)r->B * sizeof *r->reserve)))
        for (int s = 0; s < r->B; s++) /* (the scheduler keeps ended sequences' rows within their reserves) */
            r->reserve[s] = kv_rows(r, s);
    return r->cached && r->kv_kept && r->outputs && r->reserve ? EPM_OK : EPM_ERR_NOMEM;
}

/* --prefill-chunk and --max-num-seqs against the run; each home rank's
 * places (max_num_seqs shared out, at least one each: every rank homes its
 * own sequences, as data-parallel attention does), and the most prompt
 * tokens of this rank's one admission can bring (the memory check's): its
 * places' worth of its longest home sequences. */
epm_status epm_rt_prefill_check(rt *r)
{
    const epm_run_opts *o = r->o;
    const int64_t T = o->prefill_chunk;
    const int scored = o->mod == EPM_MOD_ROUTER || o->mod == EPM_MOD_ATTENTION;
    const char *mod = o->mod == EPM_MOD_ROUTER ? "router" : "attention";
    const char *chunk_opt = chunk_option(o);
    if (T < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s %lld: must be at least 1 (0: one pass)", chunk_opt, (long long)T);
    if (T > 0 && scored)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s with --mod %s: prefill picks each prompt's top tokens "
                        "over the whole prompt, which a chunk does not hold (--mod schedule chunks)", chunk_opt, mod);
    if (o->max_num_seqs < 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "--max-num-seqs %d: must be at least 1 (0: every sequence at once)",
                        o->max_num_seqs);
    r->places = epm_malloc((size_t)r->R * sizeof *r->places);
    r->adm = epm_malloc((size_t)r->B * sizeof *r->adm);
    int *home = epm_malloc((size_t)r->B * sizeof *home), n = 0;
    if (!r->places || !r->adm || !home) {
        epm_free(home);
        return EPM_ERR_NOMEM;
    }
    r->max_seqs = 0;
    for (int q = 0; q < r->R; q++) {
        r->places[q] = epm_run_places(r->B, r->R, o->max_num_seqs, q);
        r->max_seqs += r->places[q];
    }
    /* a scored source's decode thresholds are the prompts' rate: one prefill of the whole batch sets them */
    if (r->max_seqs < r->B && scored) {
        epm_free(home);
        return epm_fail(EPM_ERR_UNSUPPORTED, "--max-num-seqs %d with --mod %s: decoding's skip thresholds are "
                        "calibrated on the prompts of the whole batch, which admission in turns does not prefill "
                        "at once (--mod schedule admits in turns; or at least %d)", o->max_num_seqs, mod, r->B);
    }
    /* a scored source's thresholds again, and a replay's recorded pass order: arrivals' timing
     * changes which pass admits each sequence */
    if (o->arrival && (scored || o->route_from)) {
        epm_free(home);
        return epm_fail(EPM_ERR_UNSUPPORTED, "request arrivals (--request-rate or --arrivals-from) with %s%s: %s",
                        scored ? "--mod " : "", scored ? mod : "a routing replay",
                        scored ? "decoding's skip thresholds are calibrated on one prefill of the whole batch"
                               : "the replay follows the recorded order of passes, which arrival times change");
    }
    /* vLLM's rule: a budget that decode tokens alone could fill would stall an admitted prompt */
    for (int q = 0; q < r->R && T > 0 && o->chunk_counts_decode; q++)
        if (T < r->places[q]) {
            epm_free(home);
            return epm_fail(EPM_ERR_INVALID_ARG, "%s %lld: below rank %d's %d places (--max-num-seqs), whose "
                            "decode tokens come first in its budget", chunk_opt, (long long)T, q, r->places[q]);
        }
    for (int s = r->me; s < r->B; s += r->R)
        home[n++] = r->lens[s];
    qsort(home, (size_t)n, sizeof *home, by_int_desc);
    r->mine_most = 0;
    for (int i = 0; i < n && i < r->places[r->me]; i++)
        r->mine_most += home[i];
    epm_free(home);
    EPM_CHECK(pool_check(r));
    EPM_CHECK(prefix_check(r));
    const epm_sched_opts so = {r->B,
                               r->lens,
                               r->R,
                               o->max_num_seqs,
                               T,
                               o->separate_prefill,
                               o->arrival,
                               o->chunk_counts_decode,
                               r->reserve,
                               o->max_total_tokens,
                               o->mode == EPM_MODE_FOLLOW,
                               r->prompts,
                               o->prefix_caching,
                               r->outputs,
                               o->prefix_defer < 0 ? 0 : o->prefix_defer > 0 ? o->prefix_defer : 32};
    return epm_sched_create(&so, &r->sched);
}
