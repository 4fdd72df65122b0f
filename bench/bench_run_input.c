/* `epmoe bench run --input FILE`: the batch of a file, as `epmoe run` reads
 * it (token lists, {"input_ids": ...}, requests as vLLM takes them, .npy,
 * safetensors), so that a bench runs a dataset's prompt and output lengths
 * (a serving benchmark's ShareGPT-like mix) rather than one length for all.
 * Requests' n samples count as sequences; their sampling parameters do not
 * apply: bench run decodes greedily, and says so. A serving trace (.csv:
 * Azure's or BurstGPT's) gives lengths and arrival times, no tokens: its
 * prompts are drawn (Mooncake's: each 512-token block from its hash, so
 * that shared prefixes stay shared). */
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "core.h"
#include "serving_trace.h"

/* A serving trace's first num_prompts requests (0: all): prompts of its
 * lengths, each token drawn from the vocabulary (seeded: the same on every
 * rank; a hashed block's from its hash), its output lengths, and its
 * arrivals. */
static epm_status trace_load(const char *path, int vocab, int num_prompts, epm_bench_input *in)
{
    EPM_CHECK(epm_serving_trace_load(path, &in->trace));
    const epm_serving_trace *t = in->trace;
    if (t->n > INT32_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %lld requests, more than a run takes (--num-prompts)", path,
                        (long long)t->n);
    const int n = num_prompts > 0 && num_prompts < t->n ? num_prompts : (int)t->n;
    int most = 0; /* the longest output: every run's result holds n of them */
    for (int s = 0; s < n; s++)
        most = t->output_len[s] > most ? t->output_len[s] : most;
    if ((int64_t)n * most > INT32_MAX)
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %d requests of up to %d output tokens, more than 2^31 token "
                        "places; take fewer (--num-prompts)", path, n, most);
    in->trace_lens = calloc((size_t)n, sizeof *in->trace_lens);
    in->trace_prompts = calloc((size_t)n, sizeof *in->trace_prompts);
    in->max_new = calloc((size_t)n, sizeof *in->max_new);
    if (!in->trace_lens || !in->trace_prompts || !in->max_new)
        return EPM_ERR_NOMEM;
    in->batch = n; /* (what epm_bench_input_free frees, from here on) */
    uint64_t rng = 4242;
    for (int s = 0; s < n; s++) {
        in->trace_lens[s] = t->prompt_len[s];
        in->max_new[s] = t->output_len[s];
        if (!(in->trace_prompts[s] = malloc((size_t)t->prompt_len[s] * sizeof **in->trace_prompts)))
            return EPM_ERR_NOMEM;
        /* a Mooncake block hash names its 512 tokens: drawn from the hash, so that prompts that share
         * hashes share those tokens (the trace's prefix sharing); other tokens from the run's draw */
        const int64_t h0 = t->hash_off ? t->hash_off[s] : 0, nh = t->hash_off ? t->hash_off[s + 1] - h0 : 0;
        for (int p = 0; p < t->prompt_len[s]; p++) {
            const int64_t blk = p / EPM_TRACE_HASH_BLOCK;
            uint64_t hr = blk < nh ? (uint64_t)t->hash_ids[h0 + blk] * 0x9E3779B97F4A7C15u + (uint64_t)p : 0;
            in->trace_prompts[s][p] = (int32_t)(epm_splitmix64(blk < nh ? &hr : &rng) % (uint64_t)vocab);
        }
    }
    in->lens = in->trace_lens;
    in->prompts = (const int32_t *const *)in->trace_prompts;
    in->arrival = t->arrival;
    return EPM_OK;
}

epm_status epm_bench_input_load(const char *path, int vocab, int nnew, int num_prompts, epm_bench_input *in)
{
    memset(in, 0, sizeof *in);
    if (epm_serving_trace_is(path)) {
        epm_status st = trace_load(path, vocab, num_prompts, in);
        if (st != EPM_OK)
            epm_bench_input_free(in);
        return st;
    }
    if (num_prompts > 0)
        return epm_fail(EPM_ERR_INVALID_ARG, "--num-prompts %d: takes the first requests of a serving trace (a "
                        ".csv), not of %s", num_prompts, path);
    EPM_CHECK(epm_tokens_load(path, vocab, &in->tok));
    int top, ptop;
    epm_status st = run_batch_build(in->tok, path, -1, -1, &in->rb, &top, &ptop);
    if (st != EPM_OK) {
        epm_bench_input_free(in);
        return st;
    }
    in->batch = in->rb.batch;
    in->lens = in->rb.lens;
    in->prompts = in->rb.ids;
    in->max_new = in->rb.max_new;
    const unsigned kept = EPM_REQ_N | EPM_REQ_LOGPROBS | EPM_REQ_PROMPT_LOGPROBS; /* what bench run does not need */
    for (int r = 0; in->tok->req && r < in->tok->batch; r++)
        in->sampled |= (in->tok->req[r].set & ~kept) != 0 || in->tok->req[r].n_stop > 0;
    for (int s = 0; in->max_new && s < in->batch; s++) /* a request without max_tokens: --new */
        if (!in->max_new[s])
            in->max_new[s] = nnew;
    return EPM_OK;
}

void epm_bench_input_free(epm_bench_input *in)
{
    if (in->trace) { /* its own arrays, not a run_batch's */
        for (int s = 0; in->trace_prompts && s < in->batch; s++)
            free(in->trace_prompts[s]);
        free(in->trace_prompts);
        free(in->trace_lens);
        free(in->max_new);
        epm_serving_trace_destroy(in->trace);
    }
    run_batch_free(&in->rb);
    epm_tokens_destroy(in->tok);
    memset(in, 0, sizeof *in);
}

int64_t epm_bench_decode_tokens(int batch, const int *max_new, int nnew)
{
    int64_t n = 0;
    for (int s = 0; s < batch; s++)
        n += (max_new ? (max_new[s] < nnew ? max_new[s] : nnew) : nnew) - 1;
    return n;
}

epm_status epm_bench_seq_ids(int batch, const int *lens, const int *max_new, int nnew, int max_seqs, int ranks,
                             int64_t chunk, int counts_decode, int separate_prefill, int64_t pool, int shared_pool,
                             int32_t *out)
{
    int64_t g = 0;
    for (int s = 0; s < batch; s++)
        for (int p = 0; p < lens[s]; p++)
            out[g++] = s;
    /* epm_run's passes (scheduler.h): a sequence's first token comes with its
     * prompt's last piece, each decode token numbered in the order of its
     * pass; it ends after its output length */
    epm_sched *sc = NULL;
    int *gen = calloc((size_t)batch + 1, sizeof *gen);
    int64_t *reserve = calloc((size_t)batch + 1, sizeof *reserve); /* as epm_run's: prompt and output cap */
    epm_status st = gen && reserve ? EPM_OK : EPM_ERR_NOMEM;
    for (int s = 0; st == EPM_OK && s < batch; s++) {
        const int cap = max_new && max_new[s] < nnew ? max_new[s] : nnew;
        reserve[s] = lens[s] + (int64_t)cap;
        if (pool > 0 && reserve[s] > pool) /* (as epm_run refuses it, named before the scheduler's wording) */
            st = epm_fail(EPM_ERR_INVALID_ARG, "--max-total-tokens %lld: sequence %d needs %lld K/V positions (a "
                          "prompt of %d tokens and up to %d new), more than the pool holds", (long long)pool, s,
                          (long long)reserve[s], lens[s], cap);
    }
    const epm_sched_opts so = {batch,           lens,          ranks,   max_seqs, chunk, separate_prefill,
                               NULL,            counts_decode, reserve, pool,     shared_pool, NULL, 0, NULL, 0};
    if (st == EPM_OK)
        st = epm_sched_create(&so, &sc);
    epm_sched_pass p;
    while (st == EPM_OK && epm_sched_next(sc, 0, &p)) {
        for (int i = 0; i < p.n_pre; i++) {
            const int s = p.pre[i].seq, cap = max_new && max_new[s] < nnew ? max_new[s] : nnew;
            if (p.pre[i].to == lens[s] && ++gen[s] >= cap)
                epm_sched_end(sc, s);
        }
        for (int i = 0; i < p.n_dec; i++) {
            const int s = p.dec[i], cap = max_new && max_new[s] < nnew ? max_new[s] : nnew;
            out[g++] = s;
            if (++gen[s] >= cap)
                epm_sched_end(sc, s);
        }
    }
    epm_sched_destroy(sc);
    free(gen);
    free(reserve);
    return st;
}
