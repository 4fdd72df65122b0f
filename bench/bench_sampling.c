/* epmoe bench sampling: what choosing a token costs per sequence and step
 * (dist/sampler.c), at the vocabularies of Mixtral, OLMoE, DeepSeek-V3 and
 * Qwen, for greedy decoding (the baseline: one pass for the largest logit)
 * and for the samplers users set, beside a nucleus sampler that sorts the
 * whole vocabulary (what top-p costs done the obvious way), timed in the same
 * run. Logits are normal with a few large ones, as a language model's are. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../launch/cli.h"
#include "bench.h"
#include "core.h"
#include "epmoe/generate.h"

static const char usage[] =
    "usage: epmoe bench sampling [--vocabs LIST] [--reps R] [--csv]\n"
    "  --vocabs LIST  vocabulary sizes (default 32000,50304,129280,151936: Mixtral, OLMoE,\n"
    "                 DeepSeek-V3, Qwen)\n"
    "  --reps R       tokens drawn per configuration (steps 0 .. R-1; default 200)\n"
    "Prints microseconds per token, vs_greedy = its time / greedy's, and for top-p\n"
    "vs_sort = a full-sort nucleus sampler's time / epmoe's, same logits, same run.\n";

typedef struct cfg {
    const char *name;
    epm_sampling s;
} cfg;

/* the obvious nucleus sampler: softmax, sort all ids, cut, draw */
static const double *sort_w;
static int by_w(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_w[i] != sort_w[j])
        return sort_w[i] > sort_w[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static int32_t sort_nucleus(const float *lg, int V, double temp, double top_p, double u, double *w, int32_t *idx)
{
    double mx = -INFINITY, tot = 0;
    for (int i = 0; i < V; i++)
        mx = lg[i] > mx ? lg[i] : mx;
    for (int i = 0; i < V; i++) {
        w[i] = exp((lg[i] - mx) / temp);
        tot += w[i];
        idx[i] = i;
    }
    sort_w = w;
    qsort(idx, (size_t)V, sizeof *idx, by_w);
    double acc = 0;
    int m = 0;
    while (m < V && acc < top_p * tot)
        acc += w[idx[m++]];
    double t = u * acc, c = 0;
    for (int i = 0; i < m; i++)
        if ((c += w[idx[i]]) > t)
            return idx[i];
    return idx[m - 1];
}

int epm_bench_sampling(int argc, char **argv)
{
    const char *W = "bench sampling";
    int vocabs[16] = {32000, 50304, 129280, 151936}, nv = 4, csv = 0;
    long reps = 200;
    enum { O_V = 256, O_R, O_CSV, O_H };
    static const struct option lo[] = {{"vocabs", required_argument, 0, O_V},
                                       {"reps", required_argument, 0, O_R},
                                       {"csv", no_argument, 0, O_CSV},
                                       {"help", no_argument, 0, O_H},
                                       {0, 0, 0, 0}};
    int c;
    if (cli_exact_options(W, argc, argv, lo, 0) != EPM_EXIT_OK)
        return EPM_EXIT_USAGE;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_V:
        {
            long lv[16];
            if (!cli_parse_int_list(W, "--vocabs", optarg, 2, 1 << 24, "vocabulary sizes", lv, 16, &nv))
                return EPM_EXIT_USAGE;
            for (int i = 0; i < nv; i++)
                vocabs[i] = (int)lv[i];
            break;
        }
        case O_R: if (!cli_parse_int(W, "--reps", optarg, 1, 1000000, &reps)) return EPM_EXIT_USAGE; break;
        case O_CSV: csv = 1; break;
        case O_H: fputs(usage, stdout); return EPM_EXIT_OK;
        default: return cli_option_error(W, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(W, "unexpected argument '%s'", argv[optind]);
    const cfg cfgs[] = {
        {"greedy", {.temperature = 0}},
        {"temperature=1", {.temperature = 1}},
        {"top_k=50", {.temperature = 0.7, .top_k = 50}},
        {"top_p=0.9", {.temperature = 0.7, .top_p = 0.9}},
        {"top_p=0.95,min_p=0.05", {.temperature = 1, .top_p = 0.95, .min_p = 0.05}},
        {"qwen:k=20,p=0.8,rp=1.05", {.temperature = 0.7, .top_k = 20, .top_p = 0.8, .repetition_penalty = 1.05}},
    };
    const int nc = (int)(sizeof cfgs / sizeof *cfgs);
    const int HIST = 1024; /* the sequence so far, for the repetition penalty */
    if (csv)
        printf("vocab,config,us_per_token,vs_greedy,sort_us_per_token,vs_sort\n");
    else
        printf("%8s  %-26s %12s %10s %14s %8s\n", "vocab", "config", "us/token", "vs_greedy", "sort us/token",
               "vs_sort");
    int rc = EPM_EXIT_OK;
    for (int vi = 0; vi < nv && rc == EPM_EXIT_OK; vi++) {
        const int V = vocabs[vi];
        float *lg = epm_malloc((size_t)V * sizeof *lg);
        double *w = epm_malloc((size_t)V * sizeof *w);
        int32_t *idx = epm_malloc((size_t)V * sizeof *idx), hist[1024];
        if (!lg || !w || !idx) {
            epm_free(lg), epm_free(w), epm_free(idx);
            fprintf(stderr, "epmoe bench sampling: out of memory\n");
            return EPM_EXIT_FAIL;
        }
        uint64_t x = 88172645463325252u + (uint64_t)V;
        for (int i = 0; i < V; i++) { /* Box-Muller on xorshift: N(0, 2), and 1 in 1000 raised by 8 */
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            double u1 = ((x >> 11) + 1) * 0x1.0p-53;
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            double u2 = (x >> 11) * 0x1.0p-53;
            lg[i] = (float)(2 * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2) + (i % 1000 == 7 ? 8 : 0));
        }
        for (int i = 0; i < HIST; i++)
            hist[i] = (int32_t)((uint64_t)i * 2654435761u % (uint64_t)V);
        double greedy_us = 0;
        for (int ci = 0; ci < nc && rc == EPM_EXIT_OK; ci++) {
            epm_sampler *s;
            if (epm_sampler_create(&cfgs[ci].s, V, &s) != EPM_OK) {
                rc = cli_fail(W, EPM_ERR_NOMEM);
                break;
            }
            int32_t t;
            int64_t sum = 0;
            epm_sampler_next(s, lg, hist, HIST, NULL, 0, 0, 0, &t); /* first touch */
            double t0 = epm_now();
            for (long r = 0; r < reps; r++) {
                epm_sampler_next(s, lg, hist, HIST, NULL, 0, 0, r, &t);
                sum += t;
            }
            double us = (epm_now() - t0) / (double)reps * 1e6;
            epm_sampler_destroy(s);
            if (ci == 0)
                greedy_us = us;
            double sort_us = 0;
            int nucleus = cfgs[ci].s.top_p > 0 && cfgs[ci].s.top_k == 0 && cfgs[ci].s.min_p == 0;
            if (nucleus) {
                double t1 = epm_now();
                for (long r = 0; r < reps; r++)
                    sum += sort_nucleus(lg, V, cfgs[ci].s.temperature, cfgs[ci].s.top_p, (double)r / (double)reps, w,
                                        idx);
                sort_us = (epm_now() - t1) / (double)reps * 1e6;
            }
            if (csv)
                /* (quoted: a configuration's name holds commas, "top_p=0.95,min_p=0.05") */
                printf("%d,\"%s\",%.3f,%.3f,%.3f,%.3f\n", V, cfgs[ci].name, us, us / greedy_us, sort_us,
                       nucleus ? sort_us / us : 0);
            else if (nucleus)
                printf("%8d  %-26s %12.1f %10.2f %14.1f %8.2f\n", V, cfgs[ci].name, us, us / greedy_us, sort_us,
                       sort_us / us);
            else
                printf("%8d  %-26s %12.1f %10.2f %14s %8s\n", V, cfgs[ci].name, us, us / greedy_us, "-", "-");
            fflush(stdout);
            if (sum == INT64_MIN) /* keeps the draws alive */
                puts("");
        }
        epm_free(lg);
        epm_free(w);
        epm_free(idx);
    }
    return rc;
}
