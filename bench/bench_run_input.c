/* `epmoe bench run --input FILE`: the batch of a file, as `epmoe run` reads
 * it (token lists, {"input_ids": ...}, requests as vLLM takes them, .npy,
 * safetensors), so that a bench runs a dataset's prompt and output lengths
 * (a serving benchmark's ShareGPT-like mix) rather than one length for all.
 * Requests' n samples count as sequences; their sampling parameters do not
 * apply: bench run decodes greedily, and says so. */
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "core.h"

epm_status epm_bench_input_load(const char *path, int vocab, int nnew, epm_bench_input *in)
{
    memset(in, 0, sizeof *in);
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
                             int32_t *out)
{
    int64_t g = 0;
    for (int s = 0; s < batch; s++)
        for (int p = 0; p < lens[s]; p++)
            out[g++] = s;
    /* epm_run's schedule: after each step's tokens, each home rank (sequence
     * s's is s mod ranks) admits its waiting sequences into its free places
     * (prefilled: their first token), then a decoding step runs the
     * sequences with a token still to come, in order */
    int *gen = calloc((size_t)batch + 1, sizeof *gen), *places = calloc((size_t)ranks, sizeof *places);
    int *waiting = calloc((size_t)ranks, sizeof *waiting);
    unsigned char *fed = calloc((size_t)batch + 1, 1), *live = calloc((size_t)batch + 1, 1);
    if (!gen || !places || !waiting || !fed || !live) {
        free(gen), free(places), free(waiting), free(fed), free(live);
        return EPM_ERR_NOMEM;
    }
    for (int q = 0; q < ranks; q++) {
        places[q] = epm_run_places(batch, ranks, max_seqs, q);
        waiting[q] = q < batch ? q : batch;
    }
    for (;;) {
        int nlive = 0, wait = 0;
        for (int s = 0; s < batch; s++) {
            const int cap = max_new ? (max_new[s] < nnew ? max_new[s] : nnew) : nnew;
            if (fed[s])
                fed[s] = 0, gen[s]++, live[s] = gen[s] < cap;
            nlive += live[s];
        }
        for (int q = 0; q < ranks; q++)
            wait |= waiting[q] < batch;
        if (nlive == 0 && !wait)
            break;
        for (int q = 0; q < ranks; q++) {
            int on = 0;
            for (int s = q; s < batch; s += ranks)
                on += live[s];
            for (; waiting[q] < batch && on < places[q]; waiting[q] += ranks, on++)
                fed[waiting[q]] = nnew > 0;
        }
        for (int s = 0; s < batch; s++)
            if (live[s])
                out[g++] = s, fed[s] = 1;
    }
    free(gen), free(places), free(waiting), free(fed), free(live);
    return EPM_OK;
}
