/* epmoe: one command line, one subcommand per job. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "blas_info.h"
#include "cpu_gemm_nt.h"
#include "cli.h"
#include "epm_config.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"trace", epm_cli_trace, "routing traces: stats, synth, split, convert"},
    {"plan", epm_cli_plan, "place experts on ranks; plan eval compares placements on a trace; plan moves prices a change"},
    {"run", epm_cli_run, "distributed MoE inference of a Hugging Face checkpoint (under mpirun)"},
    {"launch", epm_cli_launch, "build and run the mpirun line for a hostfile, a model and a placement"},
    {"model", epm_cli_model, "model checkpoints: synth (random weights in the Hub layout), info"},
    {"bench", epm_cli_bench, "benchmarks: plan, a2a, kernels, attention, sampling, run (figure beside its baseline)"},
    {"version", NULL, "print the version and the optional parts built in"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: epmoe <command> [options]   (epmoe <command> --help)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
}

/* The layer loop allocates its activation buffers afresh for every layer.
 * Under glibc's defaults a buffer over the mmap threshold (dynamic, at most
 * 32 MiB) is a fresh mapping each time, its pages faulted in again, and a
 * freed heap top goes back to the kernel only to be asked for again by the
 * next layer. Keeping them made a one-pass prefill of 8192 prompt tokens
 * 1.2-1.4x faster on a 2-core VM (bench/README.md), for about 5% more peak
 * memory; chunked prefill and decoding are unchanged. A process policy, so
 * the command line's and not the library's; the user's own thresholds
 * (GLIBC_TUNABLES) win. */
static void malloc_policy(void)
{
#ifdef __GLIBC__
    const char *t = getenv("GLIBC_TUNABLES");
    if (t && (strstr(t, "glibc.malloc.mmap_threshold") || strstr(t, "glibc.malloc.trim_threshold")))
        return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

int main(int argc, char **argv)
{
    malloc_policy();
    opterr = 0; /* the subcommands say what was wrong (cli_option_error) */
    if (argc < 2) {
        usage(stderr);
        return EPM_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EPM_EXIT_OK;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        char blas[256];
        epm_blas_describe(blas, sizeof blas);
        printf("epmoe %s (cuda: %s, nccl: %s)\nblas: %s\ncpu gemm (up to %d rows): %s\n", EPM_VERSION,
               EPM_HAVE_CUDA ? "yes" : "no", EPM_HAVE_NCCL ? "yes" : "no", blas, EPM_GEMM_NT_MAX_ROWS,
               epm_cpu_isa_name(epm_cpu_isa_active()));
        return EPM_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (commands[i].fn && !strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "epmoe: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return EPM_EXIT_USAGE;
}
