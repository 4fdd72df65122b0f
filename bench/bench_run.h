/* The parts of `epmoe bench run` in files of their own (internal). */
#ifndef EPM_BENCH_RUN_H
#define EPM_BENCH_RUN_H

#include "runtime.h"
#include "xcomm.h"

/* --prefill-chunks: base's run in one prefill pass, then in passes of each
 * of chunk[0, nchunk) (at most 8), alternated reps times; rank 0 prints the
 * table (CSV with csv). Collective; an EPM_EXIT_* code. */
int epm_bench_run_chunks(epm_xcomm *x, const epm_run_opts *base, int batch, const int *lens, int32_t **prompts,
                         const long *chunk, int nchunk, int reps, int csv);

/* max |b - a| / max |a| over n logits (0 where a is all zeros), and the
 * share of n generated tokens that a and b agree on (1 for none): the
 * deviation columns, each run against its baseline's. In bench_run.c. */
double epm_bench_logit_err(const float *a, const float *b, int64_t n);
double epm_bench_token_agreement(const int32_t *a, const int32_t *b, int n);

#endif
