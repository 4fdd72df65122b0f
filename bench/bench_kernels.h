/* What bench_kernels.c shares with bench_kernels_fp8.c (epmoe bench kernels
 * --dtype fp8): a layer shape, the parsed options, the random routing. */
#ifndef EPM_BENCH_KERNELS_H
#define EPM_BENCH_KERNELS_H

#include <stdint.h>

#include "../launch/cli.h"

typedef struct epm_bench_shape {
    const char *name;
    int hidden, ffn, experts, k;
} epm_bench_shape;

typedef struct epm_bench_kernels_args {
    const long *tokens;
    int ntokens, reps, csv;
    int ref; /* the reference table instead of the CPU fast path */
    double weight_gb;
} epm_bench_kernels_args;

/* k distinct experts per token, uniform (partial Fisher-Yates per token):
 * ids [T][K]; perm is scratch of E entries. */
void epm_bench_route_random(int64_t T, int E, int K, uint64_t *seed, int32_t *ids, int32_t *perm);

/* One shape's rows of --dtype fp8; an EPM_EXIT_* code. */
int epm_bench_kernels_fp8(const epm_bench_kernels_args *a, const epm_bench_shape *sh, uint64_t *seed);

#endif
