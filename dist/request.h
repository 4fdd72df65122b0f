/* One request object of `epmoe run`'s input, in vLLM's terms: its prompt
 * token ids, its output length and its SamplingParams (internal; the token
 * reader calls it for each object of a request list or JSON-lines file). */
#ifndef EPM_REQUEST_H
#define EPM_REQUEST_H

#include <jansson.h>

#include "epmoe/generate.h"

/* `where` names the request in errors ("requests[3]", "line 4"), after
 * label (the file). *ids is allocated; *max_new is 0 where the request sets
 * no max_tokens. vocab > 0: every id must be below it. */
epm_status epm_request_from_json(json_t *obj, const char *label, const char *where, int vocab, int max_seq,
                                 int32_t **ids, int *len, int *max_new, epm_request_sampling *rq);

/* 1 for an object that reads as a request: prompt_token_ids (or a text
 * prompt), or any SamplingParams field or max_tokens beside input_ids (which
 * a tokenizer's {"input_ids", "attention_mask", ...} output never has) */
int epm_request_like(json_t *obj);

#endif
