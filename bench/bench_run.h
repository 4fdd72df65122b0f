/* The parts of `epmoe bench run` in files of their own (internal). */
#ifndef EPM_BENCH_RUN_H
#define EPM_BENCH_RUN_H

#include "../launch/run_requests.h"
#include "epmoe/model.h"
#include "runtime.h"
#include "xcomm.h"

/* --input FILE: its sequences (a request's n samples each one), their
 * prompts and output lengths (max_new NULL: --new for all; a request
 * without max_tokens gets --new); sampled: some request gives sampling
 * parameters, which bench run does not apply. In bench_run_input.c. */
typedef struct epm_bench_input {
    int batch;
    const int *lens;
    const int32_t *const *prompts;
    int *max_new;
    int sampled;
    epm_tokens *tok;
    run_batch rb;
    /* a serving trace (a .csv: serving_trace.h): its first num_prompts requests (0: all), prompts
     * of its lengths drawn from the vocabulary (seeded), outputs of its lengths, and arrival (NULL
     * otherwise): each request's time from the first */
    struct epm_serving_trace *trace;
    const double *arrival;
    int32_t **trace_prompts;
    int *trace_lens;
} epm_bench_input;

epm_status epm_bench_input_load(const char *path, int vocab, int nnew, int num_prompts, epm_bench_input *in);
void epm_bench_input_free(epm_bench_input *in);

/* The decoded tokens of a greedy run without stop tokens, each sequence
 * min(max_new[s], nnew) - 1 (max_new NULL: nnew for all), and the sequence
 * of each token a run's trace numbers: the prompts', then each pass's
 * decoding sequences in order (total prompt tokens + that many), with
 * max_seqs places (0: all) shared out over the ranks, prompt chunks of
 * chunk tokens (0: whole; with counts_decode a rank's budget, its decode
 * tokens first), separate_prefill and a K/V pool of pool positions (0: none;
 * shared_pool: follow mode's, one for all ranks) as epm_run schedules them. */
int64_t epm_bench_decode_tokens(int batch, const int *max_new, int nnew);
epm_status epm_bench_seq_ids(int batch, const int *lens, const int *max_new, int nnew, int max_seqs, int ranks,
                             int64_t chunk, int counts_decode, int separate_prefill, int64_t pool, int shared_pool,
                             int32_t *out);

/* --prefill-chunks: base's run in one prefill pass, then in passes of each
 * of chunk[0, nchunk) (at most 8), alternated reps times; rank 0 prints the
 * table (CSV with csv). Collective; an EPM_EXIT_* code. */
int epm_bench_run_chunks(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens, const int32_t *const *prompts,
                         const long *chunk, int nchunk, int reps, int csv);

/* max |b - a| / max |a| over n logits (0 where a is all zeros), and the
 * share of n generated tokens that a and b agree on (1 for none): the
 * deviation columns, each run against its baseline's. In bench_run.c. */
double epm_bench_logit_err(const float *a, const float *b, int64_t n);
double epm_bench_token_agreement(const int32_t *a, const int32_t *b, int n);

/* --continuous: for each of seqs[0, nseqs) (at most 8), base's run in static
 * batches of that many sequences one after another (the baseline), then
 * with that many at most decoding at once (max_num_seqs), with separate
 * prefill passes and in mixed batches, alternated reps times; sequence s
 * generates max_new[s] tokens at most. Rank 0 prints the
 * table (CSV with csv). Collective; an EPM_EXIT_* code. */
int epm_bench_run_continuous(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                             const int32_t *const *prompts, const int *max_new, const long *seqs, int nseqs, int reps,
                             int csv);

/* --prefix-caching: base without prefix caching (the baseline) and with it,
 * alternated reps times; rank 0 prints the table (CSV with csv). In
 * bench_run_prefix.c. Collective; an EPM_EXIT_* code. */
int epm_bench_run_prefix(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                         const int32_t *const *prompts, int reps, int csv);

/* --turns: convs conversations of turns turns, as one batch in turn order
 * (turn t of conversation c is sequence t * convs + c, homed where its
 * last turn was when convs is a multiple of the ranks): the first turns'
 * prompts are first's (seq tokens each); a later turn's is the last
 * turn's prompt and outputs (as base runs that turn alone, greedy), then
 * more tokens drawn from the vocabulary (seeded). Into *lens, *prompts
 * (malloc'd, each prompt too). In bench_run_prefix.c. Collective. */
epm_status epm_bench_prefix_turns(epm_xcomm *x, const epm_run_opts *base, int convs, int seq, const int32_t *const *first,
                                  int turns, int more, int vocab, int **lens, int32_t ***prompts);

/* --request-rates: the batch offline (the baseline), then arriving at each of
 * rates[0, nrates) requests/s (finite, at most 8; gamma intervals of shape
 * burstiness, seed 0), as base runs it (its max_num_seqs, mixed batches),
 * and, with trace (a serving trace's arrivals, scaled: NULL for none), as
 * they arrived there, alternated reps times; rank 0 prints the repetition of
 * (lower) median duration (CSV with csv). Collective; an EPM_EXIT_* code. */
int epm_bench_run_rates(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens,
                        const int32_t *const *prompts, const double *rates, int nrates, double burstiness,
                        const double *trace, int reps, int csv);

#endif
