/* epmoe: one command line, one subcommand per job. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

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
    {"trace", epm_cli_trace, "routing traces: stats, synth, convert"},
    {"plan", epm_cli_plan, "place experts on ranks; plan eval compares placements on a trace"},
    {"run", epm_cli_run, "distributed MoE inference of a Hugging Face checkpoint (under mpirun)"},
    {"launch", epm_cli_launch, "build and run the mpirun line for a hostfile, a model and a placement"},
    {"model", epm_cli_model, "model checkpoints: synth (random weights in the Hub layout), info"},
    {"bench", epm_cli_bench, "benchmarks: plan, a2a, kernels, run (figure beside its baseline)"},
    {"version", NULL, "print the version and the optional parts built in"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: epmoe <command> [options]   (epmoe <command> --help)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
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
