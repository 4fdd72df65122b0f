/* epmoe bench kernels: the grouped expert FFN (one SwiGLU GEMM chain per
 * expert over all its rows) beside the ceiling — one SwiGLU GEMM chain of
 * the same total FLOPs over a single weight set — measured in the same run. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "ops.h"

static const char usage[] =
    "usage: epmoe bench kernels [--shape mixtral|dsv3|all] [--tokens LIST] [--reps R] [--backend blas|ref] [--csv]\n"
    "  mixtral: hidden 4096, expert FFN 14336, 8 experts, top-2\n"
    "  dsv3:    hidden 7168, expert FFN 2048, 256 experts, top-8\n"
    "  --tokens LIST  batch sizes (default 1,16,128,512; the CPU default stays small so a 2-core\n"
    "                 machine finishes in minutes; the shapes scale to 16384)\n"
    "Routing spreads tokens evenly over experts (k distinct per token). Expert weights cycle\n"
    "through two distinct float32 buffers, each far larger than any cache, so DeepSeek-V3's 256\n"
    "experts fit in memory; every expert's weights are still read from DRAM.\n";

typedef struct shape {
    const char *name;
    int hidden, ffn, experts, k;
} shape;

static const shape shapes[] = {{"mixtral", 4096, 14336, 8, 2}, {"dsv3", 7168, 2048, 256, 8}};

static double best_of(int reps, const epm_ops *ops, int nexp, const int64_t *rows, const float *x, int H, int F,
                      float *const *w, int nsets, float *scr, float *y)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = epm_now();
        int64_t off = 0;
        for (int e = 0; e < nexp; e++) {
            const float *g = w[e % nsets], *u = g + (size_t)F * H, *d = u + (size_t)F * H;
            ops->swiglu(x + off * H, rows[e], H, F, g, u, d, scr, y + off * H);
            off += rows[e];
        }
        double t = epm_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int epm_bench_kernels(int argc, char **argv)
{
    const char *W = "bench kernels";
    const char *which = "all", *tokens_s = "1,16,128,512", *backend = "blas";
    long reps = 3;
    int csv = 0, c;
    static const struct option opts[] = {{"shape", required_argument, 0, 's'}, {"tokens", required_argument, 0, 't'},
                                         {"reps", required_argument, 0, 'r'},  {"backend", required_argument, 0, 'b'},
                                         {"csv", no_argument, 0, 'c'},         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': which = optarg; break;
        case 't': tokens_s = optarg; break;
        case 'r': if (!cli_parse_int(W, "--reps", optarg, 1, 1000, &reps)) return EPM_EXIT_USAGE; break;
        case 'b': backend = optarg; break;
        case 'c': csv = 1; break;
        case 'h': fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_usage_error(W, "unknown option");
        }
    }
    const epm_ops *ops;
    if (!strcmp(backend, "blas"))
        ops = epm_ops_blas();
    else if (!strcmp(backend, "ref"))
        ops = epm_ops_ref();
    else if (!strcmp(backend, "cuda"))
        return cli_fail(W, epm_fail(EPM_ERR_UNSUPPORTED, "--backend cuda: the CUDA expert FFN is not built into "
                                                         "this benchmark yet"));
    else
        return cli_usage_error(W, "--backend '%s' is not blas or ref", backend);
    printf(csv ? "shape,tokens,grouped_s,grouped_tflops,dense_s,dense_tflops,ratio\n"
               : "%-8s %7s %12s %10s %12s %10s %8s\n",
           "shape", "tokens", "grouped s", "TFLOP/s", "dense s", "TFLOP/s", "ratio");
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        const shape *sh = &shapes[si];
        if (strcmp(which, "all") && strcmp(which, sh->name))
            continue;
        const int H = sh->hidden, F = sh->ffn, E = sh->experts, K = sh->k;
        const int nsets = 2;
        float *w[2];
        uint64_t seed = 5;
        for (int i = 0; i < nsets; i++) {
            size_t n = (size_t)3 * F * H;
            w[i] = malloc(n * sizeof(float));
            if (!w[i])
                return cli_fail(W, epm_fail(EPM_ERR_NOMEM, "cannot allocate %zu weights", n));
            for (size_t j = 0; j < n; j++)
                w[i][j] = (float)(epm_rand_unit(&seed) - 0.5) * 0.02f;
        }
        char list[256];
        snprintf(list, sizeof list, "%s", tokens_s);
        for (char *tk = strtok(list, ","); tk; tk = strtok(NULL, ",")) {
            long T = atol(tk);
            if (T < 1 || T > 1 << 20)
                return cli_usage_error(W, "--tokens: '%s' is not a batch size", tk);
            int64_t *rows = calloc((size_t)E, sizeof *rows);
            for (long t = 0; t < T; t++) /* k distinct experts per token */
                for (int j = 0; j < K; j++)
                    rows[(t * 7919 + (long)j * (E / K)) % E + 0]++;
            int64_t total = T * K, maxrows = 0;
            for (int e = 0; e < E; e++)
                maxrows = rows[e] > maxrows ? rows[e] : maxrows;
            float *x = malloc((size_t)total * H * sizeof *x), *y = malloc((size_t)total * H * sizeof *y);
            float *scr = malloc((size_t)total * 2 * F * sizeof *scr);
            if (!x || !y || !scr)
                return cli_fail(W, epm_fail(EPM_ERR_NOMEM, "cannot allocate buffers for %ld tokens", T));
            for (int64_t i = 0; i < total * H; i++)
                x[i] = (float)(epm_rand_unit(&seed) - 0.5);
            double flops = 6.0 * H * (double)F * (double)total;
            double tg = best_of((int)reps, ops, E, rows, x, H, F, w, nsets, scr, y);
            int64_t all[1] = {total};
            double td = best_of((int)reps, ops, 1, all, x, H, F, w, 1, scr, y);
            printf(csv ? "%s,%ld,%.6f,%.4f,%.6f,%.4f,%.3f\n" : "%-8s %7ld %12.6f %10.4f %12.6f %10.4f %8.3f\n",
                   sh->name, T, tg, flops / tg / 1e12, td, flops / td / 1e12, td / tg);
            fflush(stdout);
            free(rows), free(x), free(y), free(scr);
        }
        for (int i = 0; i < nsets; i++)
            free(w[i]);
    }
    return EPM_EXIT_OK;
}
