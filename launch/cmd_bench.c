/* epmoe bench <what>: the benchmark programs of bench/, each printing its
 * figure beside the baseline measured in the same run. */
#include <stdio.h>
#include <string.h>

#include "../bench/bench.h"
#include "cli.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} bench_entry;

static const bench_entry benches[] = {
    {"help", NULL, "list the benchmarks"},
    {"plan", epm_bench_plan, "planner: solve time, gap, held-out eval vs contiguous"},
    {"kernels", epm_bench_kernels, "grouped expert FFN vs dense GEMM of the same FLOPs (cpu, ref, cuda)"},
    {"attention", epm_bench_attention, "causal GQA attention of a backend vs the C reference (cpu, cuda)"},
    {"run", epm_bench_run, "epmoe run tokens/s and bytes per link class, per mode and placement"},
    {"a2a", epm_bench_a2a, "dispatch+combine vs raw MPI_Alltoallv (nccl-tests style)"},
    {"sampling", epm_bench_sampling, "choosing a token: greedy, temperature, top-k/p, min-p vs a full sort"},
};

int epm_cli_bench(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        printf("usage: epmoe bench <what> [options]   (epmoe bench <what> --help)\n\nbenchmarks:\n");
        for (size_t i = 0; i < sizeof benches / sizeof *benches; i++)
            if (benches[i].fn)
                printf("  %-8s %s\n", benches[i].name, benches[i].summary);
        return argc < 2 ? EPM_EXIT_USAGE : EPM_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof benches / sizeof *benches; i++)
        if (benches[i].fn && !strcmp(argv[1], benches[i].name))
            return benches[i].fn(argc - 1, argv + 1);
    return cli_usage_error("bench", "unknown benchmark '%s'", argv[1]);
}
