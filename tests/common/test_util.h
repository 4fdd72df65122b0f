/* Helpers shared by the cmocka suites. */
#ifndef EPM_TEST_UTIL_H
#define EPM_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka needs the three headers above first */
#include <cmocka.h>

/* Directory of the bundled fixtures (tests/fixtures), from $EPM_FIXTURES. */
const char *tu_fixtures(void);

/* The sum of the k largest of v[0, n) (v is reordered): a rank's room of
 * K/V positions, its places' largest reserves (dist/scheduler.c). */
int64_t tu_largest_sum(int64_t *v, int n, int k);
/* A fresh temporary directory for this test process (removed at exit). */
const char *tu_tmpdir(void);
/* tu_path("x.json") -> "<tmpdir>/x.json" in a static rotating buffer. */
const char *tu_path(const char *name);
/* n floats uniform in [-1, 1) from the seed (epm_rand_unit), malloc'd (at
 * least one); fails the test when out of memory. */
float *tu_rnd(size_t n, uint64_t *seed);
/* Writes bytes to a file under the temporary directory and returns its path. */
const char *tu_write(const char *name, const void *data, size_t n);

struct epm_trace;
/* A synthetic top-k trace for the planner's tests: Zipf 1 load skew,
 * cross-layer affinity 0.7, sequences of 5 tokens; fails the test if
 * synthesis fails. */
struct epm_trace *tu_synth_trace(int layers, int experts, int k, int64_t tokens, uint64_t seed);
/* The same with Zipf exponent zipf_s and sequences of tokens_per_seq tokens (0 = no sequence ids). */
struct epm_trace *tu_synth_trace_skew(int layers, int experts, int k, int64_t tokens, uint64_t seed, double zipf_s,
                                      int64_t tokens_per_seq);

/* What a search's model sees of t where it samples passes (epm_plan_folds,
 * under epm_plan_folds_test_cap; the test fails unless they are `folds`): a
 * copy of t whose other tokens are skipped at every layer (rows -1), their
 * numbers (which pick among an expert's copies) kept. */
struct epm_trace *tu_trace_sampled(const struct epm_trace *t, int folds);

struct epm_plan_opts;
/* Planner options of the planner's tests: the method, mode and slots
 * given, hidden 4096, KV width 1024, the MIP's time limit and gap. */
void tu_plan_opts(struct epm_plan_opts *o, int method, int mode, int slots, double time_limit_s, double mip_gap);

#endif
