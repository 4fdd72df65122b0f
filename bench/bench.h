/* Benchmark entry points, run as `epmoe bench <what>`. Each prints its figure
 * and the baseline measured in the same run, as a ratio, with --csv output. */
#ifndef EPM_BENCH_H
#define EPM_BENCH_H

int epm_bench_plan(int argc, char **argv);    /* bench/bench_plan.c (issue 2) */
int epm_bench_a2a(int argc, char **argv);     /* bench/bench_a2a.c (issue 3) */
int epm_bench_kernels(int argc, char **argv); /* bench/bench_kernels.c (issue 4) */
int epm_bench_attention(int argc, char **argv); /* bench/bench_attention.c (issue 4) */
int epm_bench_run(int argc, char **argv);     /* bench/bench_run.c (issues 5, 8) */
int epm_bench_sampling(int argc, char **argv); /* bench/bench_sampling.c */

/* "# blas: <the BLAS and its kernel set>" on stdout, a header line of the CPU
 * benchmarks: their figures depend on those kernels as much as on epmoe
 * (kernels/blas_info.h). In bench/bench_kernels.c. */
void epm_bench_print_blas(void);

#endif
