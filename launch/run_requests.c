/* Requests into the runtime's batch: a request of n samples becomes n
 * sequences with one prompt (prefilled n times: no prefix is shared), told
 * apart by their draws, (seed, sample, step) with a seed of the request's
 * own, (run seed, sequence, step) without. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "run_requests.h"

enum { MAX_SEQUENCES = 1 << 20 }; /* as many as an input may hold */

/* a request's samples: its n, else one */
static int samples(const epm_request_sampling *q) { return q->set & EPM_REQ_N ? q->n : 1; }

void run_batch_free(run_batch *b)
{
    if (b->owns) { /* (without requests the arrays are the input's) */
        free(b->lens);
        free(b->ids);
        free(b->max_new);
    }
    free(b->req_of);
    free(b->lp_top);
    free(b->plp_top);
    free(b->own);
    free(b->own_stops);
    memset(b, 0, sizeof *b);
}

epm_status run_batch_build(const epm_tokens *t, const char *input, int flag_top, int flag_ptop, run_batch *b,
                           int *top_out, int *ptop_out)
{
    memset(b, 0, sizeof *b);
    *top_out = flag_top, *ptop_out = flag_ptop;
    if (!t->req) {
        b->batch = t->batch;
        b->lens = t->lens;
        b->ids = (const int32_t **)t->ids;
        b->max_new = t->max_new;
        return EPM_OK;
    }
    int64_t n = 0;
    for (int r = 0; r < t->batch; r++)
        n += samples(&t->req[r]);
    if (n > MAX_SEQUENCES)
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: the requests ask for %lld samples in all; at most %d", input,
                        (long long)n, MAX_SEQUENCES);
    b->batch = (int)n;
    b->owns = 1;
    b->lens = malloc((size_t)n * sizeof *b->lens);
    b->ids = malloc((size_t)n * sizeof *b->ids);
    b->max_new = malloc((size_t)n * sizeof *b->max_new);
    b->req_of = malloc((size_t)n * sizeof *b->req_of);
    b->lp_top = malloc((size_t)n * sizeof *b->lp_top);
    b->plp_top = malloc((size_t)n * sizeof *b->plp_top);
    if (!b->lens || !b->ids || !b->max_new || !b->req_of || !b->lp_top || !b->plp_top) {
        run_batch_free(b);
        return EPM_ERR_NOMEM;
    }
    int s = 0;
    for (int r = 0; r < t->batch; r++) {
        const epm_request_sampling *q = &t->req[r];
        const int lp = q->set & EPM_REQ_LOGPROBS ? q->logprobs : flag_top;
        const int plp = q->set & EPM_REQ_PROMPT_LOGPROBS ? q->prompt_logprobs : flag_ptop;
        *top_out = lp > *top_out ? lp : *top_out;
        *ptop_out = plp > *ptop_out ? plp : *ptop_out;
        for (int j = 0; j < samples(q); j++, s++) {
            b->lens[s] = t->lens[r];
            b->ids[s] = t->ids[r];
            b->max_new[s] = t->max_new[r];
            b->req_of[s] = r;
            b->lp_top[s] = lp;
            b->plp_top[s] = plp;
        }
    }
    return EPM_OK;
}

epm_status run_batch_sampling(run_batch *b, const epm_tokens *t, const char *input, const epm_sampling *run,
                              const int32_t *eos, int n_eos, int run_ignore_eos, const int32_t *extra, int n_extra)
{
    if (!b->req_of)
        return EPM_OK;
    const size_t room = (size_t)n_eos + (size_t)n_extra + EPM_MAX_STOP_IDS;
    b->own = malloc((size_t)b->batch * sizeof *b->own);
    b->own_stops = malloc((size_t)b->batch * room * sizeof *b->own_stops);
    if (!b->own || !b->own_stops)
        return EPM_ERR_NOMEM;
    for (int s = 0, j = 0; s < b->batch; s++) {
        const int r = b->req_of[s];
        j = s > 0 && b->req_of[s - 1] == r ? j + 1 : 0;
        char label[PATH_MAX + 32];
        snprintf(label, sizeof label, "%s: request %d", input, r);
        int n;
        EPM_CHECK(epm_request_sampling_apply(&t->req[r], run, eos, n_eos, run_ignore_eos, extra, n_extra, label,
                                             &b->own[s], b->own_stops + (size_t)s * room, &n));
        b->own[s].own_index = j;
    }
    return EPM_OK;
}
