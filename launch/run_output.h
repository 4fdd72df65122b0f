/* What `epmoe run` writes of its results: logprob entries in JSON, and
 * --output's JSON lines, one per request (vLLM's RequestOutput shape). */
#ifndef EPM_RUN_OUTPUT_H
#define EPM_RUN_OUTPUT_H

#include <stdio.h>

#include "run_requests.h"
#include "runtime.h"

/* a log-probability: -inf (a token the model rules out) as null */
void run_print_lp(FILE *f, float lp);

/* {"token", "logprob", "top": [[id, logprob], ...]} with top of them */
void run_print_token_lp(FILE *f, int32_t token, float lp, const int32_t *top_ids, const float *top_lp, int top);

/* Sequence s's generated tokens' entries, [{...}, ...], each with shown of
 * the top tokens (maxnew: the stride of res->generated). */
void run_print_gen_lp(FILE *f, const epm_run_result *res, int maxnew, int s, int shown);

/* Sequence s's prompt entries, [null, {...}, ...] (vLLM's: nothing comes
 * before the first token), its rows from `first` of res->prompt_lp on. */
void run_print_prompt_lp(FILE *f, const epm_run_result *res, const int32_t *ids, int s, int64_t first, int shown);

/* One line per request (per sequence without requests), written atomically:
 * {"request_index", "prompt_tokens", "outputs": [{"index", "token_ids",
 * "finish_reason", "cumulative_logprob", "logprobs"}, ...], "prompt_logprobs"},
 * logprobs null where the request did not ask for them. maxnew: the run's
 * max_new_tokens (the stride of res->generated). */
epm_status run_output_write(const char *path, const epm_run_result *res, const run_batch *rb, int maxnew);

#endif
