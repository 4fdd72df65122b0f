/* epmoe: choosing the next token — greedy or sampled — and when a sequence stops.
 *
 * The sampler follows transformers' logits processors, in their order:
 * repetition penalty over the sequence so far (prompt and generated), vLLM's
 * presence and frequency penalties over what was generated, stop tokens held
 * back until min_tokens, then temperature, top-k, top-p (nucleus) and min-p,
 * then a draw from what is
 * left. Its randomness is a counter-based hash of (seed, sequence, step), not
 * a stream, so a token depends on the seed, the sequence's index in the batch,
 * its step and its logits alone: the same at any rank count, placement or
 * batch split, and reproducible from a run's seed.
 *
 * generation_config.json is the checkpoint's decoding defaults as transformers'
 * generate() reads them: eos_token_id (else config.json's), do_sample and,
 * where it is true, temperature, top_k, top_p, min_p; repetition_penalty
 * either way. */
#ifndef EPMOE_GENERATE_H
#define EPMOE_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "epmoe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EPM_MAX_STOP_IDS 64

/* A repetition penalty's range (0 and 1 aside): one near 0 divides a logit past the largest double. */
#define EPM_REPETITION_PENALTY_MIN 1e-6
#define EPM_REPETITION_PENALTY_MAX 1e6

/* Zero everywhere is greedy decoding: the highest logit, the lowest id among equals. */
typedef struct epm_sampling {
    double temperature;        /* 0: greedy; > 0: sample from softmax(logits / temperature) */
    int top_k;                 /* 0: off; else keep the tokens whose logit reaches the k-th highest
                                  (ties at the k-th all kept, as transformers' TopKLogitsWarper) */
    double top_p;              /* 0 or 1: off; else (0, 1): keep tokens, most probable first (equal
                                  probabilities: lower id first), while the mass before them is < top_p */
    double min_p;              /* 0: off; else [0, 1): drop tokens less probable than min_p x the top one */
    double repetition_penalty; /* 0 or 1: off; else in [EPM_REPETITION_PENALTY_MIN, _MAX]: a logit of a token
                                  already in the sequence is divided by it where positive, multiplied
                                  where negative (CTRL's rule);
                                  applies to greedy decoding too */
    double presence_penalty;   /* vLLM's and OpenAI's, in [-2, 2], 0 off: subtracted from the logit of */
    double frequency_penalty;  /* each token generated so far, once, and once per time it was */
    int min_tokens;            /* vLLM's min_tokens (transformers' min_new_tokens): the stop tokens are
                                  ruled out (-inf) at steps before this one */
    const int32_t *stop_ids;   /* those stop tokens (copied by epm_sampler_create; epm_run sets them
                                  from its own stop_ids) */
    int n_stop;
    uint64_t seed;
    int own_seed;              /* 1: the draws depend on (seed, own_index, step) alone, as sequence
                                  own_index's would: a request's own seed (vLLM's SamplingParams.seed),
                                  which gives the same tokens wherever the request sits in a batch */
    int own_index;             /* which of the request's n samples (0 .. n - 1) */
} epm_sampling;

/* NULL is greedy. An error names the parameter and its value. */
EPM_API epm_status epm_sampling_validate(const epm_sampling *s);

/* 1 when s draws at random (temperature > 0), 0 when it takes the top logit. */
EPM_API int epm_sampling_random(const epm_sampling *s);

typedef struct epm_sampler epm_sampler;

EPM_API epm_status epm_sampler_create(const epm_sampling *s, int vocab, epm_sampler **out);
EPM_API void epm_sampler_destroy(epm_sampler *s);

/* New parameters for the next tokens (a batch whose requests each have
 * their own): validated, stop ids copied, buffers grown where needed. On
 * an error the sampler keeps its old parameters. */
EPM_API epm_status epm_sampler_set(epm_sampler *s, const epm_sampling *p);

/* The next token of sequence `seq` at generation step `step` (0 for the
 * first generated token) from its logits [vocab]. The sequence so far is
 * prompt[0 .. nprompt) then generated[0 .. ngen) (read only by the repetition
 * penalty; ids outside [0, vocab) are not penalised). NaN logits count as
 * -inf; a row with no finite logit, or with +inf, is an error naming seq and
 * step. The token depends on the parameters, (seed, seq, step) and the
 * logits only: logits equal to the bit give the same token (with the same
 * build: the weights' sum is vectorised as the compiler chooses). */
EPM_API epm_status epm_sampler_next(epm_sampler *s, const float *logits, const int32_t *prompt, int64_t nprompt,
                                    const int32_t *generated, int64_t ngen, int64_t seq, int64_t step,
                                    int32_t *token);

#define EPM_MAX_LOGPROBS 20 /* as OpenAI's API and vLLM's default max_logprobs */

/* Log-probabilities under the model's own distribution, log_softmax(logits)
 * (vLLM's default "raw" logprobs: before penalty, temperature and
 * truncation), in double: the chosen token's into *lp, and the n (0 ..
 * EPM_MAX_LOGPROBS) most likely tokens, most likely first, lower id first
 * among equals, into top_ids/top_lp[0, n). NaN logits count as -inf. */
EPM_API epm_status epm_logprobs(const float *logits, int vocab, int32_t token, int n, float *lp, int32_t *top_ids,
                                float *top_lp);

/* One request's own decoding parameters, under vLLM's SamplingParams names
 * (temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
 * frequency_penalty, min_tokens, seed, stop_token_ids, ignore_eos; n,
 * logprobs, prompt_logprobs): each one the request gives replaces the run's
 * (flags over the generation config); the rest are the run's. */
enum {
    EPM_REQ_TEMPERATURE = 1 << 0,
    EPM_REQ_TOP_K = 1 << 1,
    EPM_REQ_TOP_P = 1 << 2,
    EPM_REQ_MIN_P = 1 << 3,
    EPM_REQ_REPETITION = 1 << 4,
    EPM_REQ_PRESENCE = 1 << 5,
    EPM_REQ_FREQUENCY = 1 << 6,
    EPM_REQ_MIN_TOKENS = 1 << 7,
    EPM_REQ_SEED = 1 << 8,
    EPM_REQ_IGNORE_EOS = 1 << 9,
    EPM_REQ_N = 1 << 10,
    EPM_REQ_LOGPROBS = 1 << 11,
    EPM_REQ_PROMPT_LOGPROBS = 1 << 12,
};

#define EPM_MAX_REQUEST_N 1024 /* samples of one request (vLLM's n) at most */

typedef struct epm_request_sampling {
    unsigned set;   /* EPM_REQ_* of the fields the request gives */
    epm_sampling s; /* their values (its stop_ids and n_stop unused) */
    int ignore_eos;
    int n_stop;     /* stop_token_ids: stop tokens beyond the run's (vLLM: beside the EOS) */
    int32_t stop[EPM_MAX_STOP_IDS];
    int n;               /* samples of the prompt, [1, EPM_MAX_REQUEST_N] (EPM_REQ_N) */
    int logprobs;        /* the top logprobs of each generated token, [0, EPM_MAX_LOGPROBS] */
    int prompt_logprobs; /* and of each prompt token (EPM_REQ_LOGPROBS, EPM_REQ_PROMPT_LOGPROBS) */
} epm_request_sampling;

/* The sampling of one request over the run's: `run` as resolved (a greedy
 * run's has no top-k, top-p or min-p), the checkpoint's EOS ids and the
 * run's other stop ids (with run_ignore_eos the EOS ids are not the run's
 * stop tokens). A request that decodes greedily drops top-k, top-p and
 * min-p (as vLLM does); one that samples over a greedy run has none unless
 * it gives them (vLLM's defaults). With its own seed, its draws depend on
 * (seed, step) alone (own_seed; the caller numbers a request's n samples in
 * own_index). The stop tokens, each once, go to
 * stop[0, *n_stop) (room for n_eos + n_extra + rq's n_stop) and out->stop_ids
 * points there. An error names `label` (the request) and the field. */
EPM_API epm_status epm_request_sampling_apply(const epm_request_sampling *rq, const epm_sampling *run,
                                              const int32_t *eos, int n_eos, int run_ignore_eos,
                                              const int32_t *extra, int n_extra, const char *label,
                                              epm_sampling *out, int32_t *stop, int *n_stop);

typedef struct epm_generation_config {
    epm_sampling sampling; /* greedy unless do_sample is true (a repetition_penalty applies either way) */
    int do_sample;         /* as written (0 when absent) */
    epm_sampling if_sampled; /* the file's sampling values whatever do_sample says (transformers'
                                defaults, temperature 1 and top_k 50, where it is silent): what
                                generate(do_sample=True) would use, and `run --temperature` over
                                a greedy file starts from */
    int n_eos;
    int32_t eos[EPM_MAX_STOP_IDS]; /* stop tokens: eos_token_id, an id or a list of ids */
} epm_generation_config;

/* generation_config.json's text (label names it in errors). Fields other than
 * those above are ignored, as transformers ignores those it does not use. */
EPM_API epm_status epm_generation_config_parse(const char *text, size_t len, const char *label,
                                               epm_generation_config *out);

/* A checkpoint's defaults: the generation config at `path`, or with path
 * NULL DIR/generation_config.json where it exists (else transformers'
 * defaults: greedy, and if_sampled at temperature 1 and top_k 50); its
 * eos_token_id, or where it names none, DIR/config.json's. An absent or null
 * eos_token_id is no stop token. */
EPM_API epm_status epm_generation_config_load(const char *model_dir, const char *path, epm_generation_config *out);

/* Only DIR/config.json's eos_token_id into out->eos and out->n_eos (the rest untouched). */
EPM_API epm_status epm_generation_config_eos(const char *model_dir, epm_generation_config *out);

#ifdef __cplusplus
}
#endif

#endif
