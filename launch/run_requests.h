/* The batch `epmoe run` hands the runtime: the input's sequences, or with
 * requests (vLLM's), each request's n samples as sequences of their own,
 * each with its sampling laid over the run's, its output length and whether
 * it asked for logprobs. */
#ifndef EPM_RUN_REQUESTS_H
#define EPM_RUN_REQUESTS_H

#include "epmoe/generate.h"
#include "epmoe/model.h"

typedef struct run_batch {
    int batch;
    int *lens;
    const int32_t **ids; /* the input's buffers, shared by a request's samples */
    int *max_new;        /* [batch] or NULL */
    int *req_of;         /* [batch]: the request of each sequence; NULL without requests */
    int *lp_top;         /* [batch] or NULL: top logprobs shown per sequence, -1 none (logprobs null) */
    int *plp_top;        /* the same for prompt logprobs */
    int owns;            /* lens, ids and max_new are this batch's (else the input's) */
    epm_sampling *own;   /* [batch] or NULL: each sequence's sampling (run_batch_sampling) */
    int32_t *own_stops;
} run_batch;

/* The batch of t: each request's n samples in a row. With requests, logprobs
 * (and prompt logprobs) are on where --logprobs is (flag_top >= 0) or any
 * request asks, with the most top tokens any asks; *top_out and *ptop_out
 * get those (-1: off). */
epm_status run_batch_build(const epm_tokens *t, const char *input, int flag_top, int flag_ptop, run_batch *b,
                           int *top_out, int *ptop_out);

/* Each sequence's sampling: its request's over the run's, its sample index
 * its own_index (see epm_request_sampling_apply for the rest). */
epm_status run_batch_sampling(run_batch *b, const epm_tokens *t, const char *input, const epm_sampling *run,
                              const int32_t *eos, int n_eos, int run_ignore_eos, const int32_t *extra, int n_extra);

void run_batch_free(run_batch *b);

#endif
