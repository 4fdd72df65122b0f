/* A request's own decoding parameters, read from its JSON object under
 * vLLM's SamplingParams names and laid over the run's. Unknown fields are
 * refused by name: a misspelt "temprature" that changed nothing would be
 * worse than an error. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "json_show.h"
#include "request.h"

static epm_status bad(const char *label, const char *where, const char *key, json_t *v, const char *why)
{
    char b[96];
    return epm_fail(EPM_ERR_FORMAT, "%s: %s: field '%s' = %s: %s", label, where, key, epm_json_show(v, b, sizeof b),
                    why);
}

/* a number in [lo, hi] (open at an end where lo_open / hi_open) */
static int in_range(json_t *v, double lo, int lo_open, double hi, int hi_open, double *out)
{
    if (!json_is_number(v))
        return 0;
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo) || (hi_open && x == hi))
        return 0;
    *out = x;
    return 1;
}

static epm_status int_ids(json_t *v, const char *label, const char *where, const char *key, int64_t hi, int max_n,
                          int32_t *out, int *n)
{
    if (!json_is_array(v) || json_array_size(v) > (size_t)max_n)
        return bad(label, where, key, v, max_n < 1000 ? "expected a list of at most 64 token ids"
                                                       : "expected a list of token ids");
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= hi) {
            char b[64], k[64];
            snprintf(k, sizeof k, "%s[%zu]", key, i);
            snprintf(b, sizeof b, "expected a token id in [0, %lld)", (long long)hi);
            return bad(label, where, k, e, b);
        }
        out[i] = (int32_t)json_integer_value(e);
    }
    *n = (int)json_array_size(v);
    return EPM_OK;
}

/* the sampling fields: those that are numbers in a range, their bit and slot */
typedef struct num_field {
    const char *key;
    unsigned bit;
    double lo, hi;
    int lo_open, hi_open;
    const char *why;
} num_field;

static const num_field NUMS[] = {
    {"temperature", EPM_REQ_TEMPERATURE, 0, 1e30, 0, 0, "expected a number >= 0 (0: greedy)"},
    {"top_p", EPM_REQ_TOP_P, 0, 1, 1, 0, "expected a number in (0, 1] (1: off)"},
    {"min_p", EPM_REQ_MIN_P, 0, 1, 0, 1, "expected a number in [0, 1) (0: off)"},
    {"repetition_penalty", EPM_REQ_REPETITION, EPM_REPETITION_PENALTY_MIN, EPM_REPETITION_PENALTY_MAX, 0, 0,
     "expected a number in [1e-06, 1e+06] (1: off)"},
    {"presence_penalty", EPM_REQ_PRESENCE, -2, 2, 0, 0, "expected a number in [-2, 2] (0: off)"},
    {"frequency_penalty", EPM_REQ_FREQUENCY, -2, 2, 0, 0, "expected a number in [-2, 2] (0: off)"},
};

static double *num_slot(epm_sampling *s, unsigned bit)
{
    switch (bit) {
    case EPM_REQ_TEMPERATURE: return &s->temperature;
    case EPM_REQ_TOP_P: return &s->top_p;
    case EPM_REQ_MIN_P: return &s->min_p;
    case EPM_REQ_REPETITION: return &s->repetition_penalty;
    case EPM_REQ_PRESENCE: return &s->presence_penalty;
    default: return &s->frequency_penalty;
    }
}

/* a request's fields (the message of an unknown one lists them; any of
 * them makes an object a request) */
static const char *const FIELDS[] = {"prompt_token_ids", "max_tokens", "temperature", "top_k", "top_p", "min_p",
                                     "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
                                     "seed", "stop_token_ids", "ignore_eos", "n", "logprobs", "prompt_logprobs"};
enum { N_FIELDS = sizeof FIELDS / sizeof FIELDS[0] };

/* vLLM's fields that would change the tokens in ways epmoe does not run:
 * refused by name, unless at their default (null, false, 0, "", [] or {}) */
static const char *unsupported(const char *key)
{
    static const char *const why[][2] = {
        {"best_of", "best-of-n is not run (n samples are: use n)"},
        {"use_beam_search", "beam search is not run"},
        {"stop", "stop strings need a tokenizer, which epmoe does not have: give stop_token_ids"},
        {"include_stop_str_in_output", "stop strings need a tokenizer, which epmoe does not have"},
        {"bad_words", "bad words need a tokenizer, which epmoe does not have"},
        {"logit_bias", "logit bias is not applied"},
        {"allowed_token_ids", "allowed token ids are not applied"},
        {"guided_decoding", "guided decoding is not run"},
        {"truncate_prompt_tokens", "prompts are not truncated"},
        {"length_penalty", "beam search is not run"},
    };
    for (size_t i = 0; i < sizeof why / sizeof why[0]; i++)
        if (!strcmp(key, why[i][0]))
            return why[i][1];
    return NULL;
}

static int at_default(const char *key, json_t *v)
{
    if (!strcmp(key, "length_penalty") && json_is_number(v) && json_number_value(v) == 1) /* vLLM's default */
        return 1;
    return json_is_false(v) || (json_is_integer(v) && json_integer_value(v) == 0) ||
           (json_is_string(v) && json_string_length(v) == 0) || (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

/* a field of vLLM's that epmoe does not run, given a value other than its default */
static epm_status not_run(const char *label, const char *where, const char *key, json_t *v)
{
    char b[96];
    return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %s: field '%s' = %s: %s", label, where, key, epm_json_show(v, b, sizeof b),
                    unsupported(key));
}

static epm_status field(const char *key, json_t *v, const char *label, const char *where, epm_request_sampling *rq,
                        int *max_new)
{
    for (size_t i = 0; i < sizeof NUMS / sizeof NUMS[0]; i++)
        if (!strcmp(key, NUMS[i].key)) {
            const num_field *f = &NUMS[i];
            if (!in_range(v, f->lo, f->lo_open, f->hi, f->hi_open, num_slot(&rq->s, f->bit)))
                return bad(label, where, key, v, f->why);
            rq->set |= f->bit;
            return EPM_OK;
        }
    if (!strcmp(key, "top_k")) { /* vLLM's -1 (and 0) is off */
        if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > INT32_MAX)
            return bad(label, where, key, v, "expected an integer >= 1, or -1 or 0 (off)");
        rq->s.top_k = json_integer_value(v) < 0 ? 0 : (int)json_integer_value(v);
        rq->set |= EPM_REQ_TOP_K;
    } else if (!strcmp(key, "min_tokens")) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 20))
            return bad(label, where, key, v, "expected an integer in [0, 1048576]");
        rq->s.min_tokens = (int)json_integer_value(v);
        rq->set |= EPM_REQ_MIN_TOKENS;
    } else if (!strcmp(key, "seed")) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return bad(label, where, key, v, "expected an integer >= 0");
        rq->s.seed = (uint64_t)json_integer_value(v);
        rq->set |= EPM_REQ_SEED;
    } else if (!strcmp(key, "ignore_eos")) {
        if (!json_is_boolean(v))
            return bad(label, where, key, v, "expected true or false");
        rq->ignore_eos = json_is_true(v);
        rq->set |= EPM_REQ_IGNORE_EOS;
    } else if (!strcmp(key, "stop_token_ids")) {
        return int_ids(v, label, where, key, (int64_t)INT32_MAX + 1, EPM_MAX_STOP_IDS, rq->stop, &rq->n_stop);
    } else if (!strcmp(key, "max_tokens") || !strcmp(key, "max_new_tokens")) {
        if (*max_new)
            return epm_fail(EPM_ERR_FORMAT, "%s: %s: both 'max_tokens' and 'max_new_tokens' are given; they are one "
                            "field", label, where);
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > (1 << 20))
            return bad(label, where, key, v, "expected an integer in [1, 1048576]");
        *max_new = (int)json_integer_value(v);
    } else if (!strcmp(key, "n") || !strcmp(key, "logprobs") || !strcmp(key, "prompt_logprobs")) {
        const int is_n = key[0] == 'n', hi = is_n ? EPM_MAX_REQUEST_N : EPM_MAX_LOGPROBS;
        if (!json_is_integer(v) || json_integer_value(v) < is_n || json_integer_value(v) > hi) {
            char why[64];
            snprintf(why, sizeof why, "expected an integer in [%d, %d]", is_n, hi);
            return bad(label, where, key, v, why);
        }
        const int x = (int)json_integer_value(v);
        if (is_n)
            rq->n = x, rq->set |= EPM_REQ_N;
        else if (key[0] == 'l')
            rq->logprobs = x, rq->set |= EPM_REQ_LOGPROBS;
        else
            rq->prompt_logprobs = x, rq->set |= EPM_REQ_PROMPT_LOGPROBS;
    } else if (!strcmp(key, "detokenize") || !strcmp(key, "skip_special_tokens") ||
               !strcmp(key, "spaces_between_special_tokens")) {
        if (!json_is_boolean(v)) /* text options: the output is token ids, which they do not change */
            return bad(label, where, key, v, "expected true or false");
    } else if (unsupported(key)) {
        if (!at_default(key, v))
            return not_run(label, where, key, v);
    } else if (!strcmp(key, "prompt")) {
        return epm_fail(EPM_ERR_UNSUPPORTED, "%s: %s: field 'prompt' is text, and epmoe has no tokenizer: give the "
                        "ids your model's tokenizer makes of it as 'prompt_token_ids'", label, where);
    } else {
        char list[256] = "";
        for (int i = 0; i < N_FIELDS; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", FIELDS[i]);
        return epm_fail(EPM_ERR_FORMAT, "%s: %s: unknown field '%s' (a request has %s)", label, where, key, list);
    }
    return EPM_OK;
}

int epm_request_like(json_t *obj)
{
    if (!json_is_object(obj))
        return 0;
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        for (int i = 0; i < N_FIELDS; i++) /* (max_new_tokens is not one: {"input_ids", "max_new_tokens"} is not) */
            if (!strcmp(key, FIELDS[i]))
                return 1;
        if (!strcmp(key, "prompt") || unsupported(key))
            return 1;
    }
    return 0;
}

epm_status epm_request_from_json(json_t *obj, const char *label, const char *where, int vocab, int max_seq,
                                 int32_t **ids, int *len, int *max_new, epm_request_sampling *rq)
{
    char b[64];
    *ids = NULL, *len = 0, *max_new = 0;
    memset(rq, 0, sizeof *rq);
    if (!json_is_object(obj))
        return epm_fail(EPM_ERR_FORMAT, "%s: %s is %s, not a request object {\"prompt_token_ids\": [...], ...}",
                        label, where, epm_json_show(obj, b, sizeof b));
    json_t *pt = json_object_get(obj, "prompt_token_ids"), *ii = json_object_get(obj, "input_ids");
    pt = json_is_null(pt) ? NULL : pt;
    ii = json_is_null(ii) ? NULL : ii;
    if (pt && ii)
        return epm_fail(EPM_ERR_FORMAT, "%s: %s: both 'prompt_token_ids' and 'input_ids' are given; they are one "
                        "field", label, where);
    const char *pkey = pt ? "prompt_token_ids" : "input_ids";
    json_t *p = pt ? pt : ii;
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!strcmp(key, "prompt_token_ids") || !strcmp(key, "input_ids") || !strcmp(key, "best_of") ||
            json_is_null(v))
            continue; /* null: unset, as Python writes None; best_of below, beside n */
        EPM_CHECK(field(key, v, label, where, rq, max_new));
    }
    json_t *best = json_object_get(obj, "best_of"); /* vLLM's best_of equal to n is n samples */
    if (best && !json_is_null(best) &&
        !(json_is_integer(best) && json_integer_value(best) == (rq->set & EPM_REQ_N ? rq->n : 1)))
        return not_run(label, where, "best_of", best);
    if (!p)
        return epm_fail(EPM_ERR_FORMAT, "%s: %s has no 'prompt_token_ids'", label, where);
    if (*max_new && (rq->set & EPM_REQ_MIN_TOKENS) && rq->s.min_tokens > *max_new) /* as vLLM refuses it */
        return epm_fail(EPM_ERR_FORMAT, "%s: %s: min_tokens = %d is more than max_tokens = %d", label, where,
                        rq->s.min_tokens, *max_new);
    if (!json_is_array(p) || json_array_size(p) == 0 || json_array_size(p) > (size_t)max_seq)
        return bad(label, where, pkey, p, "expected a non-empty list of token ids");
    int32_t *t = epm_malloc(json_array_size(p) * sizeof *t);
    if (!t)
        return EPM_ERR_NOMEM;
    int n;
    epm_status st = int_ids(p, label, where, pkey, vocab > 0 ? vocab : (int64_t)INT32_MAX + 1, max_seq, t, &n);
    if (st != EPM_OK) {
        epm_free(t);
        return st;
    }
    *ids = t, *len = n;
    return EPM_OK;
}

epm_status epm_request_sampling_apply(const epm_request_sampling *rq, const epm_sampling *run, const int32_t *eos,
                                      int n_eos, int run_ignore_eos, const int32_t *extra, int n_extra,
                                      const char *label, epm_sampling *out, int32_t *stop, int *n_stop)
{
    if (!run || !out || !stop || !n_stop || (n_eos > 0 && !eos) || (n_extra > 0 && !extra))
        return epm_fail(EPM_ERR_INVALID_ARG, "epm_request_sampling_apply: NULL argument");
    if (rq && (rq->n_stop < 0 || rq->n_stop > EPM_MAX_STOP_IDS))
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: %d stop_token_ids: at most %d", label ? label : "request",
                        rq->n_stop, EPM_MAX_STOP_IDS);
    epm_sampling s = *run, given = rq ? rq->s : s;
    const unsigned set = rq ? rq->set : 0;
    for (size_t i = 0; i < sizeof NUMS / sizeof NUMS[0]; i++)
        if (set & NUMS[i].bit)
            *num_slot(&s, NUMS[i].bit) = *num_slot(&given, NUMS[i].bit);
    if (set & EPM_REQ_TOP_K)
        s.top_k = rq->s.top_k;
    if (set & EPM_REQ_MIN_TOKENS)
        s.min_tokens = rq->s.min_tokens;
    if (set & EPM_REQ_SEED)
        s.seed = rq->s.seed, s.own_seed = 1;
    /* truncation given to a request that decodes greedily because the run
     * does: refused, as the run's flags are (vLLM would sample at its default
     * temperature 1); with the request's own temperature 0 it means nothing,
     * and vLLM drops it likewise */
    const int truncates = ((set & EPM_REQ_TOP_K) && s.top_k > 0) || ((set & EPM_REQ_TOP_P) && s.top_p < 1) ||
                          ((set & EPM_REQ_MIN_P) && s.min_p > 0);
    if (truncates && !epm_sampling_random(&s) && !(set & EPM_REQ_TEMPERATURE))
        return epm_fail(EPM_ERR_INVALID_ARG, "%s: top_k, top_p and min_p shape sampling, but this request decodes "
                        "greedily as the run does: give it a temperature > 0", label ? label : "request");
    if (!epm_sampling_random(&s)) /* greedy: truncation means nothing (vLLM resets it likewise) */
        s.top_k = 0, s.top_p = 0, s.min_p = 0;
    const int ignore = set & EPM_REQ_IGNORE_EOS ? rq->ignore_eos : run_ignore_eos;
    const int n_rq = rq ? rq->n_stop : 0;
    int n = 0;
    for (int i = 0; i < n_eos + n_extra + n_rq; i++) {
        int32_t id = i < n_eos ? eos[i] : i < n_eos + n_extra ? extra[i - n_eos] : rq->stop[i - n_eos - n_extra];
        int dup = i < n_eos && ignore;
        for (int j = 0; j < n && !dup; j++)
            dup = stop[j] == id;
        if (!dup)
            stop[n++] = id;
    }
    s.stop_ids = stop;
    s.n_stop = n;
    if (epm_sampling_validate(&s) != EPM_OK)
        return epm_fail_context(EPM_ERR_INVALID_ARG, "%s", label ? label : "request");
    *out = s;
    *n_stop = n;
    return EPM_OK;
}
